//! Evidence: what a device sends to be verified. A quote and its signature
//! (the TPM's bytes, untouched), the attestation key, the nonce, the PCR
//! values the quote covers and the event logs that explain them.
//!
//! JSON on the wire; see `docs/evidence.md`. Everything in it is untrusted
//! until [`crate::verify`] says otherwise.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::pcr::PcrBanks;

/// The evidence format this code writes.
pub const FORMAT: &str = "satchel-evidence-v1";
/// Largest evidence document accepted (event logs included).
pub const MAX_EVIDENCE: usize = 16 << 20;

/// A device's evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Always [`FORMAT`].
    #[serde(default = "format")]
    pub format: String,
    /// The `TPMS_ATTEST` bytes exactly as the TPM signed them.
    #[serde(with = "b64")]
    pub quote: Vec<u8>,
    /// The `TPMT_SIGNATURE`.
    #[serde(with = "b64")]
    pub signature: Vec<u8>,
    /// The attestation key (SubjectPublicKeyInfo PEM).
    pub ak_pem: String,
    /// The attestation key's `TPM2B_PUBLIC`: lets the verifier check that
    /// the key is a restricted TPM key and that its name signed the quote.
    #[serde(default, with = "b64_opt", skip_serializing_if = "Option::is_none")]
    pub ak_public: Option<Vec<u8>>,
    /// The verifier's nonce, as quoted.
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    /// The quoted PCR values: bank -> index -> hex.
    pub pcrs: PcrBanks,
    /// TCG event logs, in measurement order (firmware's first).
    #[serde(with = "b64_list")]
    pub event_logs: Vec<Vec<u8>>,
}

fn format() -> String {
    FORMAT.to_owned()
}

/// Evidence that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvidenceError {
    /// Not evidence JSON (a field missing, bad base64 or hex...).
    #[error("not Satchel evidence: {0}")]
    Json(#[from] serde_json::Error),
    /// Larger than [`MAX_EVIDENCE`].
    #[error("evidence of {0} bytes exceeds the {MAX_EVIDENCE}-byte limit")]
    TooLarge(usize),
    /// A format this code does not read.
    #[error("evidence format {0:?} is not {FORMAT:?}")]
    Format(String),
}

impl Evidence {
    /// Parse evidence JSON.
    pub fn from_json(bytes: &[u8]) -> Result<Evidence, EvidenceError> {
        if bytes.len() > MAX_EVIDENCE {
            return Err(EvidenceError::TooLarge(bytes.len()));
        }
        let e: Evidence = serde_json::from_slice(bytes)?;
        if e.format != FORMAT {
            return Err(EvidenceError::Format(e.format));
        }
        Ok(e)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

mod b64 {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(v))
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        B64.decode(s.as_bytes()).map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use super::*;
    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_str(&B64.encode(v)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| B64.decode(s.as_bytes()).map_err(serde::de::Error::custom))
            .transpose()
    }
}

mod b64_list {
    use super::*;
    use serde::ser::SerializeSeq;
    pub(super) fn serialize<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for b in v {
            seq.serialize_element(&B64.encode(b))?;
        }
        seq.end()
    }
    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Vec<u8>>, D::Error> {
        let v = <Vec<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        v.iter()
            .map(|s| B64.decode(s.as_bytes()).map_err(serde::de::Error::custom))
            .collect()
    }
}
