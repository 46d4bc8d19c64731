//! Offline carriage, the gateway's half: a device's pending changes as one
//! signed file (an eBag on a USB stick; format in [`protocol::bundle`]),
//! checked in as if the device were online.
//!
//! The gateway accepts a bundle only if the certificate was issued by its
//! device CA and was valid when the bundle was made, the device is enrolled
//! and unrevoked, the certificate's attestation is from its current
//! enrollment, the signature verifies with the certificate's key, and the
//! device subscribes to the image. Importing the same bundle twice changes
//! nothing the second time (three-way merge against the same base).

use serde_json::Value;

pub use protocol::bundle::{parse, BundleError, Header, Parsed, MAGIC, MAX_BUNDLE};

fn err(m: impl Into<String>) -> BundleError {
    BundleError(m.into())
}

/// How long after its certificate expired a bundle is still taken: the
/// time a device may have been offline before it was carried in.
pub const OFFLINE_ALLOWANCE_S: i64 = 7 * 24 * 3600;

/// The certificate is judged by when the gateway receives the bundle
/// (`now`, seconds), not by the `created` time the bundle claims (which the
/// device writes): it must have started, and expired no more than
/// [`OFFLINE_ALLOWANCE_S`] ago. A `created` time outside the certificate's
/// validity, or in the future, is refused as well.
fn check_validity(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    created_ms: i64,
    now: i64,
) -> Result<(), BundleError> {
    let (from, until) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
    );
    if now > until.saturating_add(OFFLINE_ALLOWANCE_S) {
        return Err(err(format!(
            "the certificate expired {} days ago, more than the {} days a device may stay offline; attest again",
            (now - until) / 86_400,
            OFFLINE_ALLOWANCE_S / 86_400
        )));
    }
    let made = created_ms / 1000;
    if now < from || made < from || made > until || made > now + 300 {
        return Err(err(
            "the certificate was not valid when the bundle says it was made",
        ));
    }
    Ok(())
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
    let who = check_signed(&p, device_ca_pem)?;
    let device = admitted(db, policy, h, &who).await?;
    store_chunks(images, db, &device, p.frames).await?;
    let mut answers = Vec::new();
    for ci in h.checkins.clone() {
        let layer = ci.layer;
        match crate::routes::sync::checkin(images, db, manifest_key, audit, &device, &h.image, ci)
            .await
        {
            crate::reply::Reply::Json { status: 200, body } => answers.push(body),
            crate::reply::Reply::Json { body, .. } => {
                return Err(err(format!(
                    "{layer}: {}",
                    body["detail"].as_str().unwrap_or("refused")
                )))
            }
            _ => return Err(err("unexpected answer")),
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

/// The certificate is from this gateway's device CA, valid now (see
/// [`check_validity`]) and names the bundle's device, and the signature
/// verifies with its key: whom it names.
fn check_signed(
    p: &Parsed<'_>,
    device_ca_pem: &str,
) -> Result<crate::server::DeviceIdentity, BundleError> {
    let h = &p.header;
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
    check_validity(&cert, h.created, audit::batch::now_ms() / 1000)?;
    let who = crate::server::identity(cert_der.as_ref())
        .filter(|w| w.role == crate::server::Role::Device && w.device_id == h.device_id)
        .ok_or_else(|| err("the certificate does not name the bundle's device"))?;
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        cert.public_key().subject_public_key.data.as_ref(),
    );
    key.verify(p.signed, p.signature)
        .map_err(|_| err("the signature does not verify with the device certificate"))?;
    Ok(who)
}

/// The device, now: enrolled, unrevoked, the certificate's attestation
/// from its current enrollment, subscribed to the image.
async fn admitted(
    db: &crate::state::Db,
    policy: &policy::FastPolicy,
    h: &Header,
    who: &crate::server::DeviceIdentity,
) -> Result<crate::state::Device, BundleError> {
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
    let asked = policy::Request::Image {
        name: h.image.clone(),
    };
    let subject = format!("device:{}", device.device_id);
    if !policy
        .decide_with_groups(&subject, &device.groups, &asked)
        .allow
    {
        return Err(err(format!(
            "device {:?} does not subscribe to {:?}",
            h.device_id, h.image
        )));
    }
    Ok(device)
}

/// Store the bundle's chunks, each checked against its id, durably, as
/// the device's uploads.
async fn store_chunks(
    images: &crate::images::Images,
    db: &crate::state::Db,
    device: &crate::state::Device,
    frames: &[u8],
) -> Result<(), BundleError> {
    let frames = sync::wire::read_frames(frames).map_err(|e| err(e.to_string()))?;
    let ids: Vec<sync::ChunkId> = frames.iter().map(|(id, _)| *id).collect();
    let frames = frames
        .into_iter()
        .map(|(id, data)| (id, data.to_vec()))
        .collect();
    images
        .chunks
        .put_compressed(frames)
        .await
        .map_err(|e| err(e.to_string()))?;
    db.record_uploads(&device.device_id, &ids)
        .await
        .map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;

    /// A certificate valid from `from` to `until` (seconds since the epoch).
    fn cert(from: i64, until: i64) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let at = |s: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
        p.not_before = at(from).into();
        p.not_after = at(until).into();
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    /// Regression (issue 22, item 3): a bundle whose certificate expired
    /// long ago is refused, however far back its own `created` time is set.
    #[test]
    fn validity_is_judged_by_the_time_of_import() {
        let now = 1_800_000_000;
        let check = |from: i64, until: i64, created: i64| {
            let der = cert(from, until);
            let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
            check_validity(&c, created * 1000, now)
        };
        // Expired 30 days ago, the bundle backdated into its validity: refused.
        let e = check(now - 40 * DAY, now - 30 * DAY, now - 35 * DAY).unwrap_err();
        assert!(e.to_string().contains("expired 30 days ago"), "{e}");
        // Expired 2 days ago, made while valid: within the offline allowance.
        assert!(check(now - 10 * DAY, now - 2 * DAY, now - 5 * DAY).is_ok());
        // Valid now, made now: fine; claimed before the certificate or in
        // the future: refused.
        assert!(check(now - DAY, now + DAY, now).is_ok());
        assert!(check(now - DAY, now + DAY, now - 2 * DAY).is_err());
        assert!(check(now - DAY, now + DAY, now + 3600).is_err());
        // A certificate that has not started yet.
        assert!(check(now + DAY, now + 2 * DAY, now + DAY).is_err());
    }
}
