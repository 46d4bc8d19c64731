//! Offline carriage, the device's half: this device's pending changes as
//! one signed file (format: [`protocol::bundle`]), for a USB stick when
//! there is no network. The gateway checks it in as if the device were
//! online (`satchel gateway import-bundle`).

use std::path::Path;

use protocol::bundle::{Header, MAGIC};
use protocol::sync::CheckIn;
use rustls::pki_types::pem::PemObject as _;
use sync::ChunkStore;

use crate::identity::DeviceDir;
use crate::sync::SyncError;

fn local(e: &dyn std::fmt::Display) -> SyncError {
    SyncError::Local(e.to_string())
}

/// Write a bundle of `root`'s pending changes to `out`, signed with the
/// device key in `cdir`. The number of layers it carries.
pub fn export(cdir: &Path, image: &str, root: &Path, out: &Path) -> Result<usize, SyncError> {
    let dir = DeviceDir(cdir.to_owned());
    let store = ChunkStore::open_packed(cdir.join("chunks")).map_err(|e| local(&e))?;
    let certificate = std::fs::read_to_string(dir.certificate())
        .map_err(|e| SyncError::Local(format!("device.crt: {e} (attest first)")))?;
    let device_id = rustls::pki_types::CertificateDer::from_pem_slice(certificate.as_bytes())
        .ok()
        .and_then(|c| protocol::certificate::identity(c.as_ref()))
        .ok_or_else(|| SyncError::Local("device.crt is not a device certificate".to_owned()))?
        .device_id;
    let (checkins, frames) = pending_checkins(cdir, image, root, &store)?;
    let checkins_n = checkins.len();
    let header = Header {
        device_id,
        image: image.to_owned(),
        created: audit::batch::now_ms(),
        certificate,
        checkins,
    };
    let mut bytes = unsigned(&header, &frames)?;
    let signature = sign(&dir.key(), &bytes)?;
    bytes.extend_from_slice(&u32::try_from(signature.len()).unwrap_or(0).to_be_bytes());
    bytes.extend_from_slice(&signature);
    persist::write_atomic(out, &bytes).map_err(|e| local(&e))?;
    Ok(checkins_n)
}

/// One check-in per changed layer, and the frames of their new chunks.
fn pending_checkins(
    cdir: &Path,
    image: &str,
    root: &Path,
    store: &ChunkStore,
) -> Result<(Vec<CheckIn>, Vec<u8>), SyncError> {
    let mut checkins = Vec::new();
    let mut frames = Vec::new();
    for p in crate::sync::pending(cdir, image, root, None, store)? {
        for id in &p.new_chunks {
            let bytes = store.get_compressed(*id).map_err(|e| local(&e))?;
            sync::wire::write_frame(&mut frames, *id, &bytes);
        }
        checkins.push(CheckIn {
            layer: p.layer,
            base_digest: Some(p.base_digest),
            entries: p.entries,
        });
    }
    Ok((checkins, frames))
}

/// Magic, header and frames: the bytes the signature covers.
fn unsigned(header: &Header, frames: &[u8]) -> Result<Vec<u8>, SyncError> {
    let header = serde_json::to_vec(header).map_err(|e| local(&e))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(
        &u32::try_from(header.len())
            .map_err(|e| local(&e))?
            .to_be_bytes(),
    );
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(frames.len() as u64).to_be_bytes());
    bytes.extend_from_slice(frames);
    Ok(bytes)
}

/// An ECDSA P-256 (SHA-256, ASN.1 DER) signature by the device key at `key`.
fn sign(key: &Path, bytes: &[u8]) -> Result<Vec<u8>, SyncError> {
    let pem = std::fs::read(key).map_err(|e| SyncError::Local(format!("device.key: {e}")))?;
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&pem)
        .map_err(|e| SyncError::Local(format!("device.key: {e}")))?;
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_der(),
        &rng,
    )
    .map_err(|e| SyncError::Local(format!("device.key is not a P-256 key: {e}")))?;
    let sig = pair.sign(&rng, bytes).map_err(|e| local(&e))?;
    Ok(sig.as_ref().to_vec())
}
