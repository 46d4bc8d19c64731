//! Endorsement-key certificates: check that an EK certificate chains to a
//! CA the operator trusts (a directory of PEM or DER certificates: the TPM
//! vendors' roots and intermediates, or swtpm's local CA in tests), and
//! take the EK's public key from it for MakeCredential.

use std::path::{Path, PathBuf};

use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey as X509Key;

/// Longest chain followed (EK, intermediates, root).
const MAX_DEPTH: usize = 8;

/// Why an EK certificate is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EkError {
    /// The certificate does not parse.
    #[error("the EK certificate does not parse: {0}")]
    Parse(String),
    /// The CA directory cannot be read, or holds nothing usable.
    #[error("CA directory {path}: {problem}")]
    CaDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// No trusted CA issued a certificate in the chain.
    #[error("no CA in the trusted set issued {subject:?} (issuer {issuer:?})")]
    UnknownIssuer {
        /// The certificate without a known issuer.
        subject: String,
        /// Its issuer's name.
        issuer: String,
    },
    /// A signature in the chain does not verify.
    #[error("the signature on {subject:?} does not verify with {issuer:?}'s key")]
    BadSignature {
        /// The certificate.
        subject: String,
        /// The CA whose key was tried.
        issuer: String,
    },
    /// A certificate outside its validity period.
    #[error("{subject:?} is not valid now (valid {not_before} to {not_after})")]
    Expired {
        /// The certificate.
        subject: String,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// An issuer that is not a CA.
    #[error("{0:?} issued a certificate but is not a CA")]
    NotCa(String),
    /// The chain is longer than [`MAX_DEPTH`] or loops.
    #[error("the chain is longer than {MAX_DEPTH} certificates")]
    TooDeep,
    /// The EK is not an RSA key.
    #[error("the EK certificate's key is not RSA (only RSA 2048 EKs are supported)")]
    NotRsa,
}

/// A checked endorsement key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endorsement {
    /// The certificate's subject (often empty for EK certificates).
    pub subject: String,
    /// The issuing CA's subject.
    pub issuer: String,
    /// RSA modulus, big-endian.
    pub n: Vec<u8>,
    /// RSA exponent, big-endian.
    pub e: Vec<u8>,
}

/// The trusted CA certificates (DER), read from a directory.
#[derive(Debug, Clone, Default)]
pub struct CaSet {
    certs: Vec<Vec<u8>>,
}

impl CaSet {
    /// Every certificate in every `*.pem`, `*.crt`, `*.cer` and `*.der` file
    /// of `dir` (PEM files may hold several).
    pub fn from_dir(dir: &Path) -> Result<CaSet, EkError> {
        let err = |problem: String| EkError::CaDir {
            path: dir.to_owned(),
            problem,
        };
        let mut certs = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| err(e.to_string()))?;
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for p in paths {
            let ext = p.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !matches!(ext, "pem" | "crt" | "cer" | "der") {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
            certs.extend(der_certs(&bytes));
        }
        if certs.is_empty() {
            return Err(err(
                "no certificates (*.pem, *.crt, *.cer, *.der)".to_owned()
            ));
        }
        Ok(CaSet { certs })
    }

    /// A set from DER certificates.
    pub fn from_der(certs: Vec<Vec<u8>>) -> CaSet {
        CaSet { certs }
    }

    /// Check `ek_der` chains to a certificate of this set, every link
    /// signed, valid now and issued by a CA.
    pub fn check(&self, ek_der: &[u8]) -> Result<Endorsement, EkError> {
        let (_, ek) =
            X509Certificate::from_der(ek_der).map_err(|e| EkError::Parse(e.to_string()))?;
        let cas: Vec<X509Certificate<'_>> = self
            .certs
            .iter()
            .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .collect();
        let mut current = &ek;
        for _ in 0..MAX_DEPTH {
            check_validity(current)?;
            let issuer = cas
                .iter()
                .find(|c| c.subject() == current.issuer())
                .ok_or_else(|| EkError::UnknownIssuer {
                    subject: current.subject().to_string(),
                    issuer: current.issuer().to_string(),
                })?;
            if !issuer.is_ca() {
                return Err(EkError::NotCa(issuer.subject().to_string()));
            }
            current
                .verify_signature(Some(issuer.public_key()))
                .map_err(|_| EkError::BadSignature {
                    subject: current.subject().to_string(),
                    issuer: issuer.subject().to_string(),
                })?;
            if issuer.subject() == issuer.issuer() {
                // A trusted root (self-signed; it is trusted by being in
                // the set, so its own signature adds nothing).
                check_validity(issuer)?;
                return endorsement(&ek);
            }
            current = issuer;
        }
        Err(EkError::TooDeep)
    }
}

fn check_validity(c: &X509Certificate<'_>) -> Result<(), EkError> {
    if c.validity().is_valid() {
        Ok(())
    } else {
        Err(EkError::Expired {
            subject: c.subject().to_string(),
            not_before: c.validity().not_before.to_string(),
            not_after: c.validity().not_after.to_string(),
        })
    }
}

/// The EK's key from a certificate whose chain is NOT checked (for tools
/// and tests; the gateway always checks the chain with [`CaSet::check`]).
pub fn endorsement_unchecked(der: &[u8]) -> Result<Endorsement, EkError> {
    let (_, ek) = X509Certificate::from_der(der).map_err(|e| EkError::Parse(e.to_string()))?;
    endorsement(&ek)
}

fn endorsement(ek: &X509Certificate<'_>) -> Result<Endorsement, EkError> {
    match ek.public_key().parsed() {
        Ok(X509Key::RSA(k)) => Ok(Endorsement {
            subject: ek.subject().to_string(),
            issuer: ek.issuer().to_string(),
            n: strip(k.modulus).to_vec(),
            e: strip(k.exponent).to_vec(),
        }),
        _ => Err(EkError::NotRsa),
    }
}

fn strip(b: &[u8]) -> &[u8] {
    &b[b.iter().take_while(|&&x| x == 0).count()..]
}

/// The DER certificates in a file: PEM blocks, else the bytes as DER.
pub fn der_certs(bytes: &[u8]) -> Vec<Vec<u8>> {
    let pems: Vec<Vec<u8>> = x509_parser::pem::Pem::iter_from_buffer(bytes)
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect();
    if pems.is_empty() && X509Certificate::from_der(bytes).is_ok() {
        vec![bytes.to_vec()]
    } else {
        pems
    }
}
