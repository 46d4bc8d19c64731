//! Offline carriage: a device's pending changes as one signed file (an
//! eBag on a USB stick), checked in at the gateway as if it were online.
//!
//! Layout: the magic line `SATCHEL-SYNC-BUNDLE-1\n`; a big-endian u32 and
//! that many bytes of JSON header (`device_id`, `image`, `created`,
//! `certificate`: the device certificate PEM, `checkins`: one per changed
//! layer, as `POST .../checkin` takes it); a big-endian u64 and that many
//! bytes of chunk frames ([`sync::wire`]); a big-endian u32 and an ECDSA
//! P-256 signature (ASN.1 DER, SHA-256) by the device key over everything
//! before it.
//!
//! The gateway accepts a bundle only if the certificate was issued by its
//! device CA and was valid when the bundle was made, the device is enrolled
//! and unrevoked, the certificate's attestation is from its current
//! enrollment, the signature verifies with the certificate's key, and the
//! device subscribes to the image. Importing the same bundle twice changes
//! nothing the second time (three-way merge against the same base).

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync::ChunkStore;

use crate::sync_api::CheckIn;
use crate::sync_client::SyncError;

/// The first bytes of every bundle.
pub const MAGIC: &[u8] = b"SATCHEL-SYNC-BUNDLE-1\n";
/// Largest bundle read.
pub const MAX_BUNDLE: u64 = 1 << 30;
/// Largest header.
const MAX_HEADER: usize = 256 << 20;

/// The header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The device.
    pub device_id: String,
    /// The image.
    pub image: String,
    /// When it was made (ms since the epoch).
    pub created: i64,
    /// The device certificate (PEM).
    pub certificate: String,
    /// One per changed layer.
    pub checkins: Vec<CheckIn>,
}

/// A bundle that does not parse or verify.
#[derive(Debug, thiserror::Error)]
#[error("sync bundle: {0}")]
pub struct BundleError(pub String);

fn err(m: impl Into<String>) -> BundleError {
    BundleError(m.into())
}

/// A parsed bundle (signature not yet checked).
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header.
    pub header: Header,
    /// The chunk frames.
    pub frames: &'a [u8],
    /// The signed bytes.
    pub signed: &'a [u8],
    /// The signature.
    pub signature: &'a [u8],
}

/// Split a bundle into its parts (bounded; never panics).
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, BundleError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("not a sync bundle (bad magic)"))?;
    let take = |rest: &[u8], n: usize| -> Result<(usize, usize), BundleError> {
        if rest.len() < n {
            return Err(err("cut short"));
        }
        let mut v = 0usize;
        for b in &rest[..n] {
            v = v
                .checked_mul(256)
                .ok_or_else(|| err("a length overflows"))?
                + usize::from(*b);
        }
        Ok((v, n))
    };
    let (hlen, n) = take(rest, 4)?;
    if hlen > MAX_HEADER || rest.len() < n + hlen {
        return Err(err("the header is cut short or too large"));
    }
    let header: Header =
        serde_json::from_slice(&rest[n..n + hlen]).map_err(|e| err(format!("header: {e}")))?;
    let rest2 = &rest[n + hlen..];
    let (flen, n2) = take(rest2, 8)?;
    if rest2.len() < n2 || rest2.len() - n2 < flen {
        return Err(err("the chunks are cut short"));
    }
    let frames = &rest2[n2..n2 + flen];
    let rest3 = &rest2[n2 + flen..];
    let (slen, n3) = take(rest3, 4)?;
    if rest3.len() != n3 + slen || slen > 256 {
        return Err(err(
            "the signature is cut short or the file has trailing bytes",
        ));
    }
    let signed_len = bytes.len() - rest3.len();
    Ok(Parsed {
        header,
        frames,
        signed: &bytes[..signed_len],
        signature: &rest3[n3..],
    })
}

/// Write a bundle of `root`'s pending changes to `out`, signed with the
/// device key in `cdir`. The number of layers it carries.
pub fn export(cdir: &Path, image: &str, root: &Path, out: &Path) -> Result<usize, SyncError> {
    let local = |e: &dyn std::fmt::Display| SyncError::Local(e.to_string());
    let store = ChunkStore::open_packed(cdir.join("chunks")).map_err(|e| local(&e))?;
    let certificate = std::fs::read_to_string(cdir.join("device.crt"))
        .map_err(|e| SyncError::Local(format!("device.crt: {e} (attest first)")))?;
    let device_key = std::fs::read(cdir.join("device.key"))
        .map_err(|e| SyncError::Local(format!("device.key: {e}")))?;
    let identity = rustls::pki_types::CertificateDer::from_pem_slice(certificate.as_bytes())
        .ok()
        .and_then(|c| crate::server::identity(c.as_ref()))
        .ok_or_else(|| SyncError::Local("device.crt is not a device certificate".to_owned()))?;
    let mut checkins = Vec::new();
    let mut frames = Vec::new();
    for p in crate::sync_client::pending(cdir, image, root, None, &store)? {
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
    let header = Header {
        device_id: identity.device_id,
        image: image.to_owned(),
        created: audit::batch::now_ms(),
        certificate,
        checkins,
    };
    let header = serde_json::to_vec(&header).map_err(|e| local(&e))?;
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(
        &u32::try_from(header.len())
            .map_err(|e| local(&e))?
            .to_be_bytes(),
    );
    bytes.extend_from_slice(&header);
    bytes.extend_from_slice(&(frames.len() as u64).to_be_bytes());
    bytes.extend_from_slice(&frames);
    let der = rustls::pki_types::PrivateKeyDer::from_pem_slice(&device_key)
        .map_err(|e| SyncError::Local(format!("device.key: {e}")))?;
    let rng = ring::rand::SystemRandom::new();
    let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        der.secret_der(),
        &rng,
    )
    .map_err(|e| SyncError::Local(format!("device.key is not a P-256 key: {e}")))?;
    let sig = pair.sign(&rng, &bytes).map_err(|e| local(&e))?;
    bytes.extend_from_slice(&u32::try_from(sig.as_ref().len()).unwrap_or(0).to_be_bytes());
    bytes.extend_from_slice(sig.as_ref());
    let n = header_count(&bytes);
    persist::write_atomic(out, &bytes).map_err(|e| local(&e))?;
    Ok(n)
}

fn header_count(bytes: &[u8]) -> usize {
    parse(bytes).map_or(0, |p| p.header.checkins.len())
}

use rustls::pki_types::pem::PemObject as _;

/// Check a bundle and check it in. The answer of each layer's check-in.
pub async fn import(
    images: &crate::images::Images,
    manifest_key: &ed25519_dalek::SigningKey,
    audit: &audit::store::Store,
    db: &crate::state::Db,
    device_ca_pem: &str,
    policy: &policy::FastPolicy,
    bytes: &[u8],
) -> Result<Vec<Value>, BundleError> {
    let p = parse(bytes)?;
    let h = &p.header;
    // The certificate: from our device CA, valid when the bundle was made.
    let cert_der = rustls::pki_types::CertificateDer::from_pem_slice(h.certificate.as_bytes())
        .map_err(|e| err(format!("certificate: {e}")))?;
    let ca_der = rustls::pki_types::CertificateDer::from_pem_slice(device_ca_pem.as_bytes())
        .map_err(|e| err(format!("device CA: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der.as_ref())
        .map_err(|e| err(format!("certificate: {e}")))?;
    let (_, ca) = x509_parser::parse_x509_certificate(ca_der.as_ref())
        .map_err(|e| err(format!("device CA: {e}")))?;
    cert.verify_signature(Some(ca.public_key()))
        .map_err(|_| err("the certificate was not issued by this gateway's device CA"))?;
    let made = h.created / 1000;
    if made < cert.validity().not_before.timestamp()
        || made > cert.validity().not_after.timestamp()
        || h.created > audit::batch::now_ms() + 300_000
    {
        return Err(err(
            "the certificate was not valid when the bundle was made",
        ));
    }
    let who = crate::server::identity(cert_der.as_ref())
        .filter(|w| w.role == crate::server::Role::Device && w.device_id == h.device_id)
        .ok_or_else(|| err("the certificate does not name the bundle's device"))?;
    // The signature.
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(p.signed, p.signature)
        .map_err(|_| err("the signature does not verify with the device certificate"))?;
    // The device, now.
    let device = db
        .device(&h.device_id)
        .await
        .map_err(|e| err(e.to_string()))?
        .filter(|d| d.revoked_ms.is_none())
        .ok_or_else(|| {
            err(format!(
                "device {:?} is not enrolled or was revoked",
                h.device_id
            ))
        })?;
    if who.attested_at_ms.is_none_or(|at| at < device.enrolled_ms) {
        return Err(err(
            "the certificate predates the device's current enrollment",
        ));
    }
    let subscribed = policy
        .decide_with_groups(
            &format!("device:{}", device.device_id),
            &device.groups,
            &policy::Request::Image {
                name: h.image.clone(),
            },
        )
        .allow;
    if !subscribed {
        return Err(err(format!(
            "device {:?} does not subscribe to {:?}",
            h.device_id, h.image
        )));
    }
    // The chunks, each checked against its id.
    let frames = sync::wire::read_frames(p.frames).map_err(|e| err(e.to_string()))?;
    for (id, data) in frames {
        images
            .chunks
            .put_compressed(id, data)
            .map_err(|e| err(e.to_string()))?;
    }
    images.chunks.sync().map_err(|e| err(e.to_string()))?;
    let mut answers = Vec::new();
    for ci in h.checkins.clone() {
        let layer = ci.layer;
        match crate::sync_api::checkin(images, manifest_key, audit, &device, &h.image, ci).await {
            crate::sync_api::SyncAnswer::Json(a) if a.status == 200 => answers.push(a.body),
            crate::sync_api::SyncAnswer::Json(a) => {
                return Err(err(format!(
                    "{layer}: {}",
                    a.body["detail"].as_str().unwrap_or("refused")
                )))
            }
            crate::sync_api::SyncAnswer::Frames(_) => return Err(err("unexpected answer")),
        }
    }
    let entry = audit::entry::NewEntry {
        kind: "sync".to_owned(),
        actor: h.device_id.clone(),
        subject: h.image.clone(),
        decision: "bundle-import".to_owned(),
        details: serde_json::json!({"created": h.created, "layers": answers.len()}),
    };
    audit
        .append(vec![entry], audit::batch::now_ms())
        .await
        .map_err(|e| err(e.to_string()))?;
    Ok(answers)
}
