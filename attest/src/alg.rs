//! TPM hash algorithms as they appear in PCR banks and event logs (TCG
//! Algorithm Registry ids), with hashing and PCR-extend arithmetic.
//!
//! This module never talks to a TPM: it is the arithmetic both the replay
//! code and the TPM code agree on.

use std::fmt;

use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use sm3::Sm3;

/// A hash algorithm that a PCR bank or an event-log digest can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum HashAlg {
    /// TPM_ALG_SHA1 (0x0004), 20 bytes.
    Sha1,
    /// TPM_ALG_SHA256 (0x000B), 32 bytes.
    Sha256,
    /// TPM_ALG_SHA384 (0x000C), 48 bytes.
    Sha384,
    /// TPM_ALG_SHA512 (0x000D), 64 bytes.
    Sha512,
    /// TPM_ALG_SM3_256 (0x0012), 32 bytes.
    Sm3_256,
}

impl HashAlg {
    /// Every algorithm Satchel knows, in registry order.
    pub const ALL: [HashAlg; 5] = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
        HashAlg::Sm3_256,
    ];

    /// The TCG algorithm id (TPM_ALG_ID).
    pub fn id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
            HashAlg::Sha512 => 0x000D,
            HashAlg::Sm3_256 => 0x0012,
        }
    }

    /// The algorithm with this TCG id, if Satchel knows it.
    pub fn from_id(id: u16) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.id() == id)
    }

    /// Digest length in bytes.
    pub fn digest_size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 | HashAlg::Sm3_256 => 32,
            HashAlg::Sha384 => 48,
            HashAlg::Sha512 => 64,
        }
    }

    /// The bank name used in JSON and on the command line
    /// (`sha1`, `sha256`, `sha384`, `sha512`, `sm3_256`).
    pub fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
            HashAlg::Sha512 => "sha512",
            HashAlg::Sm3_256 => "sm3_256",
        }
    }

    /// The algorithm with this bank name (as [`HashAlg::name`] spells it).
    pub fn from_name(name: &str) -> Option<HashAlg> {
        HashAlg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Hash `data` with this algorithm.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha1 => Sha1::digest(data).to_vec(),
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
            HashAlg::Sha512 => Sha512::digest(data).to_vec(),
            HashAlg::Sm3_256 => Sm3::digest(data).to_vec(),
        }
    }

    /// PCR extend: `H(old || digest)`.
    pub fn extend(self, old: &[u8], digest: &[u8]) -> Vec<u8> {
        let mut v = old.to_vec();
        self.extend_in_place(&mut v, digest);
        v
    }

    /// PCR extend without allocating: `value = H(value || digest)`.
    pub fn extend_in_place(self, value: &mut Vec<u8>, digest: &[u8]) {
        fn h<D: sha2::Digest>(value: &mut Vec<u8>, digest: &[u8]) {
            let out = D::new()
                .chain_update(&*value)
                .chain_update(digest)
                .finalize();
            value.clear();
            value.extend_from_slice(&out);
        }
        match self {
            HashAlg::Sha1 => h::<Sha1>(value, digest),
            HashAlg::Sha256 => h::<Sha256>(value, digest),
            HashAlg::Sha384 => h::<Sha384>(value, digest),
            HashAlg::Sha512 => h::<Sha512>(value, digest),
            HashAlg::Sm3_256 => h::<Sm3>(value, digest),
        }
    }

    /// A PCR's reset value with the given last byte (0 normally, the
    /// locality for PCR 0 after a StartupLocality or H-CRTM start).
    pub fn reset_value(self, last_byte: u8) -> Vec<u8> {
        let mut v = vec![0u8; self.digest_size()];
        if let Some(b) = v.last_mut() {
            *b = last_byte;
        }
        v
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for HashAlg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for HashAlg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for HashAlg {
    type Err = UnknownHashAlg;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlg::from_name(&s.to_ascii_lowercase()).ok_or_else(|| UnknownHashAlg(s.to_owned()))
    }
}

/// A bank name that is not one of `sha1`, `sha256`, `sha384`, `sha512`, `sm3_256`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown hash algorithm {0:?} (expected sha1, sha256, sha384, sha512 or sm3_256)")]
pub struct UnknownHashAlg(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_round_trip() {
        for a in HashAlg::ALL {
            assert_eq!(HashAlg::from_id(a.id()), Some(a));
            assert_eq!(a.name().parse::<HashAlg>(), Ok(a));
            assert_eq!(a.hash(b"x").len(), a.digest_size());
        }
        assert_eq!(HashAlg::from_id(0x0010), None);
        assert!("md5".parse::<HashAlg>().is_err());
    }

    #[test]
    fn extend_matches_known_separator_value() {
        // PCR extended once from zero with the SHA-1 of the 4-byte separator 0x00000000:
        // the well-known value of an untouched PCR 2/3/6 after boot.
        let sep = HashAlg::Sha1.hash(&[0, 0, 0, 0]);
        let pcr = HashAlg::Sha1.extend(&HashAlg::Sha1.reset_value(0), &sep);
        assert_eq!(hex::encode(pcr), "b2a83b0ebf2f8374299a5b2bdfc31ea955ad7236");
    }
}
