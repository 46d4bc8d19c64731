//! `TPMT_SIGNATURE`: the signature over a quote, and its verification with
//! the attestation key (ECDSA P-256, RSASSA-PKCS1-v1_5, RSA-PSS).

use serde::Serialize;

use super::public::PublicKey;
use super::wire::Wire;
use super::WireError;
use crate::alg::HashAlg;

const TPM_ALG_RSASSA: u16 = 0x0014;
const TPM_ALG_RSAPSS: u16 = 0x0016;
const TPM_ALG_ECDSA: u16 = 0x0018;
/// Largest RSA signature (4096-bit keys).
const MAX_RSA: usize = 512;
/// Largest ECC parameter (P-521).
const MAX_ECC: usize = 66;

/// The signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// ECDSA.
    Ecdsa,
    /// RSASSA-PKCS1-v1_5.
    RsaSsa,
    /// RSASSA-PSS (salt as long as the digest, as TPMs make it).
    RsaPss,
}

/// A parsed `TPMT_SIGNATURE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// The scheme.
    pub scheme: SignatureScheme,
    /// The digest algorithm the TPM hashed the message with.
    pub hash: HashAlg,
    /// RSA: the signature; ECDSA: `r`.
    pub r_or_sig: Vec<u8>,
    /// ECDSA: `s`; RSA: empty.
    pub s: Vec<u8>,
}

/// Why a signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The signature's scheme does not fit the key (ECDSA by an RSA key...).
    #[error("a {scheme:?} signature cannot come from a {key} key")]
    KeyMismatch {
        /// The signature's scheme.
        scheme: SignatureScheme,
        /// The key's type.
        key: &'static str,
    },
    /// A hash the verifier does not accept for signatures (SHA-1, SM3).
    #[error("signatures over {0} digests are not accepted")]
    Hash(HashAlg),
    /// The cryptographic check failed.
    #[error("the signature does not verify with the attestation key")]
    Invalid,
}

impl Signature {
    /// Parse a `TPMT_SIGNATURE`.
    pub fn parse(bytes: &[u8]) -> Result<Signature, WireError> {
        let mut w = Wire::new(bytes, "TPMT_SIGNATURE");
        let alg = w.u16("sigAlg")?;
        let scheme = match alg {
            TPM_ALG_ECDSA => SignatureScheme::Ecdsa,
            TPM_ALG_RSASSA => SignatureScheme::RsaSsa,
            TPM_ALG_RSAPSS => SignatureScheme::RsaPss,
            _ => {
                return Err(w.invalid(
                    "sigAlg",
                    0,
                    format!("0x{alg:04x} is not ECDSA, RSASSA or RSAPSS"),
                ))
            }
        };
        let hash_id = w.u16("hash")?;
        let hash = HashAlg::from_id(hash_id)
            .ok_or_else(|| w.invalid("hash", 2, format!("unknown hash 0x{hash_id:04x}")))?;
        let (r_or_sig, s) = match scheme {
            SignatureScheme::Ecdsa => (
                w.sized(MAX_ECC, "signatureR")?.to_vec(),
                w.sized(MAX_ECC, "signatureS")?.to_vec(),
            ),
            SignatureScheme::RsaSsa | SignatureScheme::RsaPss => {
                (w.sized(MAX_RSA, "sig")?.to_vec(), Vec::new())
            }
        };
        w.finish()?;
        Ok(Signature {
            scheme,
            hash,
            r_or_sig,
            s,
        })
    }

    /// Encode back to a `TPMT_SIGNATURE`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let alg = match self.scheme {
            SignatureScheme::Ecdsa => TPM_ALG_ECDSA,
            SignatureScheme::RsaSsa => TPM_ALG_RSASSA,
            SignatureScheme::RsaPss => TPM_ALG_RSAPSS,
        };
        let mut out = Vec::new();
        out.extend_from_slice(&alg.to_be_bytes());
        out.extend_from_slice(&self.hash.id().to_be_bytes());
        let mut sized = |b: &[u8]| {
            out.extend_from_slice(&u16::try_from(b.len()).unwrap_or(0).to_be_bytes());
            out.extend_from_slice(b);
        };
        sized(&self.r_or_sig);
        if self.scheme == SignatureScheme::Ecdsa {
            sized(&self.s);
        }
        out
    }

    /// Check this signature over `message` (hashed with the signature's
    /// hash) with `key`.
    pub fn verify(&self, key: &PublicKey, message: &[u8]) -> Result<(), SignatureError> {
        use ring::signature as rs;
        let invalid = |_| SignatureError::Invalid;
        match (self.scheme, key) {
            (SignatureScheme::Ecdsa, PublicKey::EcdsaP256 { sec1 }) => {
                let alg = match self.hash {
                    HashAlg::Sha256 => &rs::ECDSA_P256_SHA256_FIXED,
                    other => return Err(SignatureError::Hash(other)),
                };
                let (Some(r), Some(s)) = (scalar(&self.r_or_sig), scalar(&self.s)) else {
                    return Err(SignatureError::Invalid);
                };
                let mut fixed = [0u8; 64];
                fixed[..32].copy_from_slice(&r);
                fixed[32..].copy_from_slice(&s);
                rs::UnparsedPublicKey::new(alg, sec1)
                    .verify(message, &fixed)
                    .map_err(invalid)
            }
            (SignatureScheme::RsaSsa | SignatureScheme::RsaPss, PublicKey::Rsa { n, e }) => {
                let pss = self.scheme == SignatureScheme::RsaPss;
                let alg: &rs::RsaParameters = match (self.hash, pss) {
                    (HashAlg::Sha256, false) => &rs::RSA_PKCS1_2048_8192_SHA256,
                    (HashAlg::Sha384, false) => &rs::RSA_PKCS1_2048_8192_SHA384,
                    (HashAlg::Sha512, false) => &rs::RSA_PKCS1_2048_8192_SHA512,
                    (HashAlg::Sha256, true) => &rs::RSA_PSS_2048_8192_SHA256,
                    (HashAlg::Sha384, true) => &rs::RSA_PSS_2048_8192_SHA384,
                    (HashAlg::Sha512, true) => &rs::RSA_PSS_2048_8192_SHA512,
                    (other, _) => return Err(SignatureError::Hash(other)),
                };
                rs::RsaPublicKeyComponents { n, e }
                    .verify(alg, message, &self.r_or_sig)
                    .map_err(invalid)
            }
            (scheme, key) => Err(SignatureError::KeyMismatch {
                scheme,
                key: key.kind(),
            }),
        }
    }
}

/// A P-256 scalar from a big-endian integer of at most 32 significant
/// bytes (TPMs strip or keep leading zeros).
fn scalar(b: &[u8]) -> Option<[u8; 32]> {
    let b = &b[b.iter().take_while(|&&x| x == 0).count()..];
    if b.len() > 32 {
        return None;
    }
    let mut out = [0u8; 32];
    out[32 - b.len()..].copy_from_slice(b);
    Some(out)
}
