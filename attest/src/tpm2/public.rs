//! `TPMT_PUBLIC` of an attestation key: its name (what the quote's
//! `qualifiedSigner` and MakeCredential bind to), its attributes, and the
//! public key itself.

use p256::pkcs8::{DecodePublicKey, EncodePublicKey, LineEnding};
use serde::Serialize;

use super::wire::Wire;
use super::WireError;
use crate::alg::HashAlg;

const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_ECC: u16 = 0x0023;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_ECDSA: u16 = 0x0018;
const TPM_ALG_RSASSA: u16 = 0x0014;
const TPM_ALG_RSAPSS: u16 = 0x0016;
const TPM_ECC_NIST_P256: u16 = 0x0003;
/// Largest RSA modulus (4096 bits).
const MAX_RSA: usize = 512;
/// Largest ECC coordinate (P-521).
const MAX_ECC: usize = 66;
/// Largest `TPM2B_DIGEST`.
const MAX_DIGEST: usize = 64;
/// Largest `TPM2B_PUBLIC` body: generous for a 4096-bit RSA key.
const MAX_PUBLIC: usize = 1024;

/// `TPMA_OBJECT`: the attribute bits that matter for an attestation key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    /// Bits TPM 2.0 Part 2 (TPMA_OBJECT) reserves: a TPM never sets them.
    pub const RESERVED: u32 = 0xfff0_f309;

    /// The key cannot leave this TPM.
    pub fn fixed_tpm(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// The key cannot be re-parented.
    pub fn fixed_parent(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// The TPM generated the private part.
    pub fn sensitive_data_origin(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// The key signs only TPM-made structures (its quotes cannot be forged
    /// by signing external data).
    pub fn restricted(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// The key decrypts.
    pub fn decrypt(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// The key signs.
    pub fn sign(self) -> bool {
        self.0 & (1 << 18) != 0
    }
}

/// Key-type parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyParams {
    /// An ECC key on NIST P-256.
    EccP256,
    /// An RSA key of this many bits.
    Rsa {
        /// Modulus size.
        bits: u16,
    },
}

/// A verifying key: what checks quote signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// ECDSA over NIST P-256: the uncompressed SEC1 point.
    EcdsaP256 {
        /// `04 || x || y`.
        sec1: Vec<u8>,
    },
    /// RSA: big-endian modulus and exponent.
    Rsa {
        /// The modulus.
        n: Vec<u8>,
        /// The public exponent.
        e: Vec<u8>,
    },
}

/// A PEM public key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a P-256 or RSA public key in PEM (SubjectPublicKeyInfo)")]
pub struct PemError;

impl PublicKey {
    /// `"ecc-p256"` or `"rsa"`.
    pub fn kind(&self) -> &'static str {
        match self {
            PublicKey::EcdsaP256 { .. } => "ecc-p256",
            PublicKey::Rsa { .. } => "rsa",
        }
    }

    /// Read a SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub fn from_pem(pem: &str) -> Result<PublicKey, PemError> {
        use rsa::traits::PublicKeyParts;
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(PublicKey::EcdsaP256 {
                sec1: k.to_encoded_point(false).as_bytes().to_vec(),
            });
        }
        let k = rsa::RsaPublicKey::from_public_key_pem(pem).map_err(|_| PemError)?;
        Ok(PublicKey::Rsa {
            n: k.n().to_bytes_be(),
            e: k.e().to_bytes_be(),
        })
    }

    /// The SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> Result<String, PemError> {
        match self {
            PublicKey::EcdsaP256 { sec1 } => p256::ecdsa::VerifyingKey::from_sec1_bytes(sec1)
                .map_err(|_| PemError)?
                .to_public_key_pem(LineEnding::LF)
                .map_err(|_| PemError),
            PublicKey::Rsa { n, e } => rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(n),
                rsa::BigUint::from_bytes_be(e),
            )
            .map_err(|_| PemError)?
            .to_public_key_pem(LineEnding::LF)
            .map_err(|_| PemError),
        }
    }
}

/// A parsed attestation-key public area.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    /// The name algorithm.
    pub name_alg: HashAlg,
    /// The attributes.
    pub attributes: ObjectAttributes,
    /// Key type and size.
    pub params: KeyParams,
    /// The signing scheme's hash, if the key fixes one.
    pub scheme_hash: Option<HashAlg>,
    /// The key.
    pub key: PublicKey,
    /// The TPM name: `nameAlg || H(TPMT_PUBLIC)`.
    pub name: Vec<u8>,
}

impl AkPublic {
    /// Parse a `TPM2B_PUBLIC` (a u16 size, then a `TPMT_PUBLIC`).
    pub fn parse_tpm2b(bytes: &[u8]) -> Result<AkPublic, WireError> {
        let mut w = Wire::new(bytes, "TPM2B_PUBLIC");
        let body = w.sized(MAX_PUBLIC, "size")?;
        w.finish()?;
        AkPublic::parse(body)
    }

    /// Parse a `TPMT_PUBLIC`.
    pub fn parse(bytes: &[u8]) -> Result<AkPublic, WireError> {
        let mut w = Wire::new(bytes, "TPMT_PUBLIC");
        let ty = w.u16("type")?;
        let name_id = w.u16("nameAlg")?;
        let name_alg = HashAlg::from_id(name_id)
            .ok_or_else(|| w.invalid("nameAlg", 2, format!("unknown hash 0x{name_id:04x}")))?;
        let attributes = object_attributes(&mut w)?;
        w.sized(MAX_DIGEST, "authPolicy")?;
        skip_symmetric(&mut w)?;
        let scheme_hash = signing_scheme(&mut w, ty)?;
        let (params, key) = match ty {
            TPM_ALG_RSA => rsa_key(&mut w)?,
            TPM_ALG_ECC => ecc_key(&mut w)?,
            _ => return Err(w.invalid("type", 0, format!("0x{ty:04x} is not an RSA or ECC key"))),
        };
        w.finish()?;
        let mut name = name_id.to_be_bytes().to_vec();
        name.extend_from_slice(&name_alg.hash(bytes));
        Ok(AkPublic {
            name_alg,
            attributes,
            params,
            scheme_hash,
            key,
            name,
        })
    }

    /// What keeps this key from being an attestation key, if anything:
    /// it must be a restricted signing key that cannot leave its TPM.
    pub fn attestation_problem(&self) -> Option<&'static str> {
        let a = self.attributes;
        if !a.restricted() {
            Some("the key is not restricted: it could sign a forged quote")
        } else if !a.sign() || a.decrypt() {
            Some("the key is not a signing-only key")
        } else if !a.fixed_tpm() || !a.fixed_parent() {
            Some("the key is not fixedTPM and fixedParent: it could live outside the TPM")
        } else if !a.sensitive_data_origin() {
            Some("the key was imported, not generated by the TPM")
        } else {
            None
        }
    }
}

/// Read `objectAttributes`, refusing reserved bits.
fn object_attributes(w: &mut Wire<'_>) -> Result<ObjectAttributes, WireError> {
    let attributes = ObjectAttributes(w.u32("objectAttributes")?);
    let reserved = attributes.0 & ObjectAttributes::RESERVED;
    if reserved != 0 {
        return Err(w.invalid(
            "objectAttributes",
            4,
            format!("reserved bits 0x{reserved:08x} are set"),
        ));
    }
    Ok(attributes)
}

/// Skip the `TPMT_SYM_DEF_OBJECT`: a signing key has none, but parse any.
fn skip_symmetric(w: &mut Wire<'_>) -> Result<(), WireError> {
    if w.u16("symmetric.algorithm")? != TPM_ALG_NULL {
        w.u16("symmetric.keyBits")?;
        w.u16("symmetric.mode")?;
    }
    Ok(())
}

/// Read the signing scheme, one Satchel verifies for key type `ty`; return its hash, if it fixes one.
fn signing_scheme(w: &mut Wire<'_>, ty: u16) -> Result<Option<HashAlg>, WireError> {
    let at = w.offset();
    let scheme = w.u16("scheme")?;
    let allowed: &[u16] = match ty {
        TPM_ALG_ECC => &[TPM_ALG_NULL, TPM_ALG_ECDSA],
        _ => &[TPM_ALG_NULL, TPM_ALG_RSASSA, TPM_ALG_RSAPSS],
    };
    if !allowed.contains(&scheme) {
        return Err(w.invalid(
            "scheme",
            at,
            format!("0x{scheme:04x} is not a signing scheme Satchel verifies for this key type"),
        ));
    }
    if scheme == TPM_ALG_NULL {
        return Ok(None);
    }
    let id = w.u16("scheme.hashAlg")?;
    HashAlg::from_id(id)
        .map(Some)
        .ok_or_else(|| w.invalid("scheme", at, format!("unknown hash 0x{id:04x}")))
}

/// Read the RSA parameters and modulus (2048 bits or more).
fn rsa_key(w: &mut Wire<'_>) -> Result<(KeyParams, PublicKey), WireError> {
    let bits = w.u16("keyBits")?;
    let exponent = w.u32("exponent")?;
    let at = w.offset();
    let n = w.sized(MAX_RSA, "unique.rsa")?;
    if n.len() < 256 || n.first() == Some(&0) {
        return Err(w.invalid(
            "unique.rsa",
            at,
            format!(
                "a {}-byte modulus is not an RSA key of 2048 bits or more",
                n.len()
            ),
        ));
    }
    let e = if exponent == 0 { 65537 } else { exponent };
    let e = e.to_be_bytes();
    let e = e[e.iter().take_while(|&&b| b == 0).count()..].to_vec();
    let key = PublicKey::Rsa { n: n.to_vec(), e };
    Ok((KeyParams::Rsa { bits }, key))
}

/// Read the ECC parameters (NIST P-256 only) and the point.
fn ecc_key(w: &mut Wire<'_>) -> Result<(KeyParams, PublicKey), WireError> {
    let at = w.offset();
    let curve = w.u16("curveID")?;
    if curve != TPM_ECC_NIST_P256 {
        return Err(w.invalid(
            "curveID",
            at,
            format!("curve 0x{curve:04x} is not NIST P-256"),
        ));
    }
    if w.u16("kdf.scheme")? != TPM_ALG_NULL {
        w.u16("kdf.hashAlg")?;
    }
    let at = w.offset();
    let x = w.sized(MAX_ECC, "unique.x")?;
    let y = w.sized(MAX_ECC, "unique.y")?;
    let sec1 =
        point(x, y).ok_or_else(|| w.invalid("unique", at, "not a P-256 point".to_owned()))?;
    Ok((KeyParams::EccP256, PublicKey::EcdsaP256 { sec1 }))
}

/// A P-256 point (uncompressed SEC1, checked on the curve) from TPM
/// coordinates.
fn point(x: &[u8], y: &[u8]) -> Option<Vec<u8>> {
    let pad = |c: &[u8]| -> Option<[u8; 32]> {
        let c = &c[c.iter().take_while(|&&b| b == 0).count()..];
        if c.len() > 32 {
            return None;
        }
        let mut out = [0u8; 32];
        out[32 - c.len()..].copy_from_slice(c);
        Some(out)
    };
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(&pad(x)?);
    sec1.extend_from_slice(&pad(y)?);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?;
    Some(sec1)
}
