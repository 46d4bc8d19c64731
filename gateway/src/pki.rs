//! The gateway's keys and certificates, kept in its data directory:
//!
//! | file | what |
//! |---|---|
//! | `ca.crt`, `ca.key` | the gateway CA: clients pin `ca.crt`; it signs the server certificate |
//! | `server.crt`, `server.key` | the TLS server certificate (`localhost`, `127.0.0.1`, `::1` and any extra names) |
//! | `device-ca.crt`, `device-ca.key` | the device CA: signs the short-lived device certificates the gateway issues after an attestation |
//! | `admin-ca.crt`, `admin-ca.key` | the admin CA: signs admin client certificates (`satchel gateway admin-cert`) |
//!
//! The TLS server accepts client certificates from the device CA and the
//! admin CA only; which of the two issued a certificate decides its role.
//!
//! Keys are ECDSA P-256, written 0600, never overwritten. Made on first
//! start, reused afterwards.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

pub use protocol::certificate::{ADMIN_CA_NAME, ATTESTATION_OID, DEVICE_CA_NAME};

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A key or certificate cannot be written.
    #[error(transparent)]
    Write(#[from] persist::FileError),
    /// A key or certificate cannot be made or read.
    #[error("{what}: {source}")]
    Cert {
        /// What was being made or read.
        what: String,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_owned(),
        source,
    }
}

fn cert_err(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> PkiError {
    let what = what.into();
    move |source| PkiError::Cert { what, source }
}

/// A CA: its certificate (PEM) and key.
pub struct Ca {
    /// The certificate, PEM.
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// Everything the TLS side needs.
#[derive(Debug)]
pub struct Pki {
    /// The gateway CA.
    pub ca: Ca,
    /// The device CA.
    pub device_ca: Ca,
    /// The admin CA.
    pub admin_ca: Ca,
    /// The web proxy's interception CA (`proxy-ca.crt`): devices trust it
    /// (the image build puts it in the image's trust store) for the HTTPS
    /// sites whose requests the proxy decides one by one.
    pub proxy_ca: Ca,
    /// The server certificate, PEM.
    pub server_cert_pem: String,
    /// The server key, PEM.
    pub server_key_pem: String,
}

/// Write `bytes` to a new file with `mode` (never over an existing one), durably.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    persist::write_new(path, bytes, mode).map_err(PkiError::from)
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(io(path))
}

fn ca_params(name: &str) -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err(name))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationName, "Satchel gateway");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = SystemTime::now().into();
    p.not_after = (SystemTime::now() + Duration::from_secs(20 * 365 * 86400)).into();
    Ok(p)
}

impl Ca {
    /// Load `NAME.crt`/`NAME.key` from `dir`, or make them.
    fn load_or_make(dir: &Path, name: &str, common_name: &str) -> Result<Ca, PkiError> {
        let (crt, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if crt.exists() && key.exists() {
            let key_pem = read(&key)?;
            return Ok(Ca {
                cert_pem: read(&crt)?,
                key: KeyPair::from_pem(&key_pem).map_err(cert_err(key.display().to_string()))?,
            });
        }
        let kp = KeyPair::generate().map_err(cert_err(common_name))?;
        let cert = ca_params(common_name)?
            .self_signed(&kp)
            .map_err(cert_err(common_name))?;
        write_new(&key, kp.serialize_pem().as_bytes(), 0o600)?;
        write_new(&crt, cert.pem().as_bytes(), 0o644)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key: kp,
        })
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Issuer::from_ca_cert_pem(&self.cert_pem, &self.key).map_err(cert_err("loading a CA"))
    }
}

/// A device certificate request: who, for how long, and which attestation.
#[derive(Debug, Clone)]
pub struct DeviceCertRequest<'a, K> {
    /// The device id (the certificate's CN and a `urn:satchel:device:ID` URI SAN).
    pub device_id: &'a str,
    /// The device's public key (from its verified CSR).
    pub public_key: &'a K,
    /// Validity from now.
    pub lifetime: Duration,
    /// The attestation it is bound to (its audit sequence number or id).
    pub attestation_id: &'a str,
    /// When the attestation was verified (ms since the epoch).
    pub attested_at_ms: i64,
}

/// A name as certificates hold it: DNS names in lower case without a
/// trailing dot, IP addresses in their canonical form.
fn normalise_name(name: &str) -> String {
    match name.trim().parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => name.trim().trim_end_matches('.').to_ascii_lowercase(),
    }
}

/// Whether the key file holds the key of the certificate (a crash between
/// replacing one and the other leaves a pair that does not match).
fn key_matches(cert_pem: &str, key_pem: &str) -> bool {
    let Ok(kp) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    p.parse_x509().is_ok_and(|c| {
        c.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&kp).as_slice()
    })
}

/// The DNS names and IP addresses a PEM server certificate is for.
fn server_cert_names(pem: &str) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, p)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return Vec::new();
    };
    let Ok(cert) = p.parse_x509() else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some(normalise_name(d)),
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| std::net::IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Replace `path` durably, with `mode`.
fn replace(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    persist::file::write_mode(path, bytes, mode).map_err(PkiError::from)
}

impl Pki {
    /// Load the PKI from `dir`, making what is missing. `server_names`
    /// adds DNS names or IP addresses to the server certificate.
    pub fn init(dir: &Path, server_names: &[String]) -> Result<Pki, PkiError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = Ca::load_or_make(dir, "ca", "Satchel gateway CA")?;
        let device_ca = Ca::load_or_make(dir, "device-ca", DEVICE_CA_NAME)?;
        let admin_ca = Ca::load_or_make(dir, "admin-ca", ADMIN_CA_NAME)?;
        let proxy_ca = Ca::load_or_make(dir, "proxy-ca", PROXY_CA_NAME)?;
        let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
        let held = if crt.exists() && key.exists() {
            let pem = read(&crt)?;
            let key_pem = read(&key)?;
            let names = server_cert_names(&pem);
            let paired = key_matches(&pem, &key_pem);
            Some((pem, key_pem, names, paired))
        } else {
            None
        };
        let wanted: Vec<String> = server_names.iter().map(|n| normalise_name(n)).collect();
        let covered = |names: &[String]| wanted.iter().all(|n| names.contains(n));
        let (server_cert_pem, server_key_pem) = if let Some((pem, key_pem, _, _)) = held
            .as_ref()
            .filter(|(_, _, names, paired)| *paired && covered(names))
        {
            (pem.clone(), key_pem.clone())
        } else {
            // First start, or a name asked for that the certificate lacks:
            // a new server certificate from the same CA (clients pin the CA,
            // so nothing changes for them).
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            for n in held
                .iter()
                .flat_map(|(_, _, names, _)| names)
                .chain(&wanted)
            {
                if !names.contains(n) {
                    names.push(n.clone());
                }
            }
            let mut p = CertificateParams::new(names).map_err(cert_err("server certificate"))?;
            p.distinguished_name
                .push(DnType::CommonName, "Satchel gateway");
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            p.not_before = SystemTime::now().into();
            p.not_after = (SystemTime::now() + Duration::from_secs(5 * 365 * 86400)).into();
            let kp = KeyPair::generate().map_err(cert_err("server key"))?;
            let cert = p
                .signed_by(&kp, &ca.issuer()?)
                .map_err(cert_err("server certificate"))?;
            if held.is_some() {
                replace(&key, kp.serialize_pem().as_bytes(), 0o600)?;
                replace(&crt, cert.pem().as_bytes(), 0o644)?;
            } else {
                write_new(&key, kp.serialize_pem().as_bytes(), 0o600)?;
                write_new(&crt, cert.pem().as_bytes(), 0o644)?;
            }
            (cert.pem(), kp.serialize_pem())
        };
        Ok(Pki {
            ca,
            device_ca,
            admin_ca,
            proxy_ca,
            server_cert_pem,
            server_key_pem,
        })
    }

    /// Issue a device certificate (PEM) from the device CA.
    pub fn issue_device_cert<K: rcgen::PublicKeyData>(
        &self,
        req: &DeviceCertRequest<'_, K>,
    ) -> Result<String, PkiError> {
        let what = format!("device certificate for {}", req.device_id);
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err(what.clone()))?;
        p.distinguished_name.push(DnType::CommonName, req.device_id);
        p.subject_alt_names = vec![SanType::URI(
            format!("urn:satchel:device:{}", req.device_id)
                .try_into()
                .map_err(cert_err(what.clone()))?,
        )];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + req.lifetime).into();
        let content = serde_json::json!({
            "attestation": req.attestation_id,
            "attested_at_ms": req.attested_at_ms,
        })
        .to_string();
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            ATTESTATION_OID,
            der_utf8(&content),
        )];
        let cert = p
            .signed_by(req.public_key, &self.device_ca.issuer()?)
            .map_err(cert_err(what))?;
        Ok(cert.pem())
    }
}

/// An admin client certificate and its new key (both PEM).
#[derive(Debug)]
pub struct AdminCert {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (write it 0600).
    pub key_pem: String,
}

impl Pki {
    /// Issue an admin client certificate for `name`, with a fresh key.
    pub fn issue_admin_cert(&self, name: &str, lifetime: Duration) -> Result<AdminCert, PkiError> {
        let what = format!("admin certificate for {name}");
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err(what.clone()))?;
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(60)).into();
        p.not_after = (now + lifetime).into();
        // The exact issue time: a revocation of NAME covers the
        // certificates issued before it, not the replacement made after.
        let issued_at_ms = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        let content = serde_json::json!({ "issued_at_ms": issued_at_ms }).to_string();
        p.custom_extensions = vec![rcgen::CustomExtension::from_oid_content(
            ATTESTATION_OID,
            der_utf8(&content),
        )];
        let kp = KeyPair::generate().map_err(cert_err(what.clone()))?;
        let cert = p
            .signed_by(&kp, &self.admin_ca.issuer()?)
            .map_err(cert_err(what))?;
        Ok(AdminCert {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
        })
    }
}

/// The common name of the proxy's interception CA.
pub const PROXY_CA_NAME: &str = "Satchel web proxy CA";

impl Pki {
    /// A certificate for `host` (a DNS name or an IP literal) from the proxy
    /// CA, with a fresh key: what the proxy shows a device for a site it
    /// intercepts. Valid from an hour ago (clock skew) for a day.
    pub fn issue_site_cert(&self, host: &str) -> Result<AdminCert, PkiError> {
        let what = format!("site certificate for {host}");
        let mut p =
            CertificateParams::new(vec![host.to_owned()]).map_err(cert_err(what.clone()))?;
        p.distinguished_name.push(DnType::CommonName, host);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = SystemTime::now();
        p.not_before = (now - Duration::from_secs(3600)).into();
        p.not_after = (now + Duration::from_secs(86400)).into();
        let kp = KeyPair::generate().map_err(cert_err(what.clone()))?;
        let cert = p
            .signed_by(&kp, &self.proxy_ca.issuer()?)
            .map_err(cert_err(what))?;
        Ok(AdminCert {
            cert_pem: cert.pem(),
            key_pem: kp.serialize_pem(),
        })
    }
}

/// A DER UTF8String.
fn der_utf8(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = vec![0x0c];
    if b.len() < 128 {
        out.push(b.len() as u8);
    } else {
        let len = b.len().to_be_bytes();
        let len = &len[len.iter().take_while(|&&x| x == 0).count()..];
        out.push(0x80 | len.len() as u8);
        out.extend_from_slice(len);
    }
    out.extend_from_slice(b);
    out
}
