//! The client-certificate profile both sides read: which CA issued it
//! (device or admin), the device id (subject CN), and the attestation it
//! records (a UTF8String of JSON under [`ATTESTATION_OID`]). Reading a
//! certificate here never verifies it: the TLS layer or the bundle check
//! does that first.

/// The OID arc of Satchel's certificate extensions (a private-use arc).
pub const ATTESTATION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 58888, 1, 1];
/// The device CA's common name.
pub const DEVICE_CA_NAME: &str = "Satchel device CA";
/// The admin CA's common name.
pub const ADMIN_CA_NAME: &str = "Satchel admin CA";

/// What a client certificate's holder may do: which CA issued it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A device certificate (device CA), issued after an attestation.
    Device,
    /// An admin certificate (admin CA).
    Admin,
}

/// The device (or admin) a client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device id (for an admin, the admin's name).
    pub device_id: String,
    /// Device or admin.
    pub role: Role,
    /// When its attestation was verified (ms since the epoch), from the
    /// certificate's Satchel extension.
    pub attested_at_ms: Option<i64>,
    /// When the certificate expires (seconds since the epoch).
    pub cert_expires: i64,
    /// When it was issued (ms since the epoch): the Satchel extension's
    /// `issued_at_ms`, else its attestation's time, else `notBefore`.
    pub issued_at_ms: i64,
}

/// The device a certificate (DER) names, if it is a Satchel client certificate.
pub fn identity(der: &[u8]) -> Option<DeviceIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let role = match first_cn(cert.issuer())?.as_str() {
        DEVICE_CA_NAME => Role::Device,
        ADMIN_CA_NAME => Role::Admin,
        _ => return None,
    };
    let attested_at_ms = extension_ms(&cert, "attested_at_ms");
    let not_before_ms = cert.validity().not_before.timestamp().saturating_mul(1000);
    Some(DeviceIdentity {
        device_id: first_cn(cert.subject())?,
        role,
        attested_at_ms,
        cert_expires: cert.validity().not_after.timestamp(),
        issued_at_ms: extension_ms(&cert, "issued_at_ms")
            .or(attested_at_ms)
            .unwrap_or(not_before_ms),
    })
}

fn first_cn(name: &x509_parser::x509::X509Name<'_>) -> Option<String> {
    Some(name.iter_common_name().next()?.as_str().ok()?.to_owned())
}

/// The member `name` (ms since the epoch) of the Satchel extension, if present.
fn extension_ms(cert: &x509_parser::certificate::X509Certificate<'_>, name: &str) -> Option<i64> {
    let oid = x509_parser::oid_registry::Oid::from(ATTESTATION_OID).ok()?;
    let ext = cert.extensions().iter().find(|e| e.oid == oid)?;
    let (_, s) = x509_parser::der_parser::der::parse_der_utf8string(ext.value).ok()?;
    serde_json::from_str::<serde_json::Value>(s.as_str().ok()?).ok()?[name].as_i64()
}
