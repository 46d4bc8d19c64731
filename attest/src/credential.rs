//! TPM2_MakeCredential without a TPM (TPM 2.0 Library Part 1, 24 "Credential
//! Protection"): the verifier wraps a secret so that only the TPM holding
//! a given endorsement key, and holding a key of a given name beside it,
//! can recover it with TPM2_ActivateCredential. That is how the gateway
//! learns that an attestation key lives in the TPM its EK certificate
//! names.
//!
//! Supports the RSA 2048 endorsement key of the default EK template (name
//! algorithm SHA-256, AES-128-CFB symmetric), the key swtpm and most PC
//! TPMs certify.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rand_core::RngCore as _;
use sha2::Sha256;

/// Largest credential TPM2_ActivateCredential returns (a `TPM2B_DIGEST`).
pub const MAX_CREDENTIAL: usize = 32;

/// The two blobs TPM2_ActivateCredential takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// The `TPM2B_ID_OBJECT` contents (without its size field): the
    /// integrity HMAC and the encrypted credential.
    pub id_object: Vec<u8>,
    /// The `TPM2B_ENCRYPTED_SECRET` contents: the seed, RSA-OAEP encrypted
    /// to the endorsement key with label `IDENTITY`.
    pub encrypted_secret: Vec<u8>,
}

/// Why a credential cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The credential is empty or longer than a digest.
    #[error("a credential must be 1 to {MAX_CREDENTIAL} bytes, not {0}")]
    Size(usize),
    /// The endorsement key is not a usable RSA key.
    #[error("the endorsement key is not a usable RSA key: {0}")]
    Key(String),
    /// The key name is not `sha256 alg id || 32 bytes`.
    #[error("the key name is not a SHA-256 TPM name (34 bytes starting 000b)")]
    Name,
}

/// KDFa (Part 1, 11.4.10.2) with HMAC-SHA-256: `bits` of key material from
/// `key`, `label` (a NUL is appended), `context_u` and `context_v`.
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(bytes + 32);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        let mut mac = hmac_sha256(key);
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

fn hmac_sha256(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; the error is unreachable.
    <Hmac<Sha256> as hmac::Mac>::new_from_slice(key).unwrap_or_else(|_| {
        <Hmac<Sha256> as hmac::Mac>::new_from_slice(&[]).unwrap_or_else(|_| unreachable!())
    })
}

/// Wrap `credential` for the TPM holding the RSA endorsement key (`n`,
/// `e`, big-endian) and the object named `name`.
pub fn make_credential(
    ek_n: &[u8],
    ek_e: &[u8],
    name: &[u8],
    credential: &[u8],
) -> Result<MadeCredential, CredentialError> {
    if credential.is_empty() || credential.len() > MAX_CREDENTIAL {
        return Err(CredentialError::Size(credential.len()));
    }
    if name.len() != 34 || name[..2] != [0x00, 0x0b] {
        return Err(CredentialError::Name);
    }
    let ek = rsa::RsaPublicKey::new(
        rsa::BigUint::from_bytes_be(ek_n),
        rsa::BigUint::from_bytes_be(ek_e),
    )
    .map_err(|e| CredentialError::Key(e.to_string()))?;
    let mut seed = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut seed);
    let padding = rsa::Oaep::new_with_label::<Sha256, _>("IDENTITY\0");
    let encrypted_secret = ek
        .encrypt(&mut rand_core::OsRng, padding, &seed)
        .map_err(|e| CredentialError::Key(e.to_string()))?;

    let sym_key = kdfa_sha256(&seed, "STORAGE", name, &[], 128);
    let mut enc_identity = Vec::with_capacity(2 + credential.len());
    enc_identity.extend_from_slice(&u16::try_from(credential.len()).unwrap_or(0).to_be_bytes());
    enc_identity.extend_from_slice(credential);
    cfb_mode::Encryptor::<aes::Aes128>::new_from_slices(&sym_key, &[0u8; 16])
        .map_err(|e| CredentialError::Key(e.to_string()))?
        .encrypt(&mut enc_identity);

    let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 256);
    let mut mac = hmac_sha256(&hmac_key);
    mac.update(&enc_identity);
    mac.update(name);
    let integrity = mac.finalize().into_bytes();

    let mut id_object = Vec::with_capacity(2 + 32 + enc_identity.len());
    id_object.extend_from_slice(&32u16.to_be_bytes());
    id_object.extend_from_slice(&integrity);
    id_object.extend_from_slice(&enc_identity);
    Ok(MadeCredential {
        id_object,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa_sha256(b"seed", "STORAGE", b"name", &[], 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa_sha256(b"seed", "STORAGE", b"name", &[], 128));
        assert_ne!(a, kdfa_sha256(b"seed", "INTEGRITY", b"name", &[], 128));
        let long = kdfa_sha256(b"seed", "X", &[], &[], 512);
        assert_eq!(long.len(), 64);
        // The bit count is part of every block's input: the first 16 bytes
        // of a 512-bit output differ from a 128-bit output.
        assert_ne!(&long[..16], &kdfa_sha256(b"seed", "X", &[], &[], 128)[..]);
    }

    #[test]
    fn refuses_bad_inputs() {
        let name = [0x00, 0x0b]
            .into_iter()
            .chain([7u8; 32])
            .collect::<Vec<_>>();
        assert_eq!(
            make_credential(&[1; 256], &[1, 0, 1], &name, &[]),
            Err(CredentialError::Size(0))
        );
        assert_eq!(
            make_credential(&[1; 256], &[1, 0, 1], &name[..20], b"x"),
            Err(CredentialError::Name)
        );
    }
}
