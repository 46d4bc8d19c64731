//! Reference manifests: what the organisation built, as the PCR values and
//! per-stage event digests a device must show, signed with the
//! organisation's ed25519 key.
//!
//! The file is one JSON object, `{"manifest": {...}, "signature": {...}}`.
//! The signature covers the exact bytes of the `manifest` value as they
//! appear in the file (prefixed with [`SIGNING_CONTEXT`]), so no JSON
//! canonicalisation is involved: any edit inside `manifest`, even of
//! whitespace, breaks it. See `docs/reference-manifest.md`.

use std::collections::BTreeMap;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::alg::HashAlg;
use crate::eventlog::EventLog;
use crate::pcr::PcrBanks;

/// The manifest format this code writes and reads.
pub const FORMAT: &str = "satchel-reference-v1";
/// What the signature is over: this, then the manifest's bytes.
pub const SIGNING_CONTEXT: &[u8] = b"satchel-reference-v1\0";
/// Largest manifest file read (a manifest of every PCR of 4 banks with a
/// few thousand events is far below).
pub const MAX_FILE: usize = 16 << 20;

/// Hex-encoded bytes in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hex(#[serde(with = "hex::serde")] pub Vec<u8>);

/// One expected event: the stage that makes it and its digest per bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceEvent {
    /// The stage's name (a boot-chain stage, or `firmware #N EV_...` for
    /// events taken from a firmware log).
    pub stage: String,
    /// The event type's name.
    pub event_type: String,
    /// Digest per bank.
    pub digests: BTreeMap<HashAlg, Hex>,
    /// The digest is the hash of the event's data (a `data` stage, a
    /// separator, an action string): a verifier checks that the logged data
    /// still hashes to it, so the log cannot show text that was never
    /// measured.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub of_data: bool,
}

/// What one PCR must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrReference {
    /// The final value per bank.
    pub value: BTreeMap<HashAlg, Hex>,
    /// The events extended into it, in order.
    pub events: Vec<ReferenceEvent>,
}

/// A reference manifest (the signed part).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// Always [`FORMAT`].
    pub format: String,
    /// A label: the image or chain this describes.
    pub name: String,
    /// Increases with every reference the organisation signs for a fleet:
    /// a gateway refuses a reference older than the one it holds (a signed
    /// reference stays valid forever, so without this an old one, for a
    /// boot chain with known flaws, could be put back). 0 in references
    /// made before references had versions.
    #[serde(default)]
    pub version: u64,
    /// For a guest reference: the device epoch it is signed for (the epoch
    /// of the host's signed PCR policy for the same image). A device whose
    /// epoch counter stands higher refuses it, so the update that revokes
    /// the older host policies revokes the older guest references with
    /// them. 0 (left out): bound to no epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
    /// When it was made (RFC 3339, UTC).
    pub created: String,
    /// The banks every PCR has values for.
    pub banks: Vec<HashAlg>,
    /// PCR index -> what it must hold.
    pub pcrs: BTreeMap<u32, PcrReference>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// The signature block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureBlock {
    /// Always `ed25519`.
    pub alg: String,
    /// First 8 bytes of SHA-256 of the public key, hex: which key signed.
    pub key_id: String,
    /// The 64-byte signature, base64.
    pub sig: String,
}

/// Why a reference manifest cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReferenceError {
    /// Not a `{"manifest", "signature"}` object, or bad JSON.
    #[error("not a signed reference manifest: {0}")]
    Envelope(#[source] serde_json::Error),
    /// The signature block is malformed.
    #[error("the signature block is malformed: {0}")]
    SignatureBlock(String),
    /// Signed by a key other than the one given.
    #[error("signed by key {found}, not by the reference key {expected}")]
    WrongKey {
        /// The given key's id.
        expected: String,
        /// The id in the file.
        found: String,
    },
    /// The signature does not verify: the manifest was edited after signing.
    #[error("the signature does not verify: the manifest was changed after signing (or forged)")]
    BadSignature,
    /// Signed, but not a manifest this code understands.
    #[error("the signed manifest is malformed: {0}")]
    Manifest(#[source] serde_json::Error),
    /// A format this code does not read.
    #[error("manifest format {0:?} is not {FORMAT:?}")]
    Format(String),
    /// A digest of the wrong size, or a PCR out of range.
    #[error("the manifest is inconsistent: {0}")]
    Inconsistent(String),
    /// Larger than [`MAX_FILE`].
    #[error("the file is {0} bytes, larger than the {MAX_FILE}-byte limit")]
    TooLarge(usize),
}

/// The key id written in signature blocks.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&HashAlg::Sha256.hash(key.as_bytes())[..8])
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(borrow)]
    manifest: &'a serde_json::value::RawValue,
    signature: SignatureBlock,
}

impl Reference {
    /// The reference for everything a log measures: every PCR with at
    /// least one measured event, its events named by `stage_of(event
    /// index)`, and the log's replayed values.
    pub fn from_log(
        name: &str,
        created: String,
        log: &EventLog,
        stage_of: impl Fn(usize) -> String,
    ) -> Reference {
        let banks = log.banks();
        let pcrs = crate::eventlog::replay(log, Default::default()).pcrs;
        let mut out: BTreeMap<u32, PcrReference> = BTreeMap::new();
        for e in log.measured_events() {
            let digests = banks
                .iter()
                .filter_map(|b| Some((*b, Hex(e.digest(*b)?.to_vec()))))
                .collect();
            out.entry(e.pcr)
                .or_insert_with(|| PcrReference {
                    value: BTreeMap::new(),
                    events: Vec::new(),
                })
                .events
                .push(ReferenceEvent {
                    stage: stage_of(e.index),
                    event_type: e.event_type.to_string(),
                    of_data: !e.digests.is_empty()
                        && e.digests.iter().all(|d| {
                            HashAlg::from_id(d.alg_id).is_some_and(|b| b.hash(&e.data) == d.digest)
                        }),
                    digests,
                });
        }
        for (pcr, r) in &mut out {
            for b in &banks {
                if let Some(v) = pcrs.get(*b, *pcr) {
                    r.value.insert(*b, Hex(v.to_vec()));
                }
            }
        }
        Reference {
            format: FORMAT.to_owned(),
            name: name.to_owned(),
            version: 0,
            epoch: 0,
            created,
            banks,
            pcrs: out,
        }
    }

    /// The expected final values as [`PcrBanks`].
    pub fn values(&self) -> PcrBanks {
        let mut out = PcrBanks::new();
        for (pcr, r) in &self.pcrs {
            for (b, v) in &r.value {
                out.set(*b, *pcr, v.0.clone());
            }
        }
        out
    }

    /// The signed file: the manifest pretty-printed, and its signature.
    pub fn sign(&self, key: &SigningKey) -> Result<String, ReferenceError> {
        let manifest = serde_json::to_string_pretty(self).map_err(ReferenceError::Manifest)?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(manifest.as_bytes());
        let sig = key.sign(&msg);
        let block = SignatureBlock {
            alg: "ed25519".to_owned(),
            key_id: key_id(&key.verifying_key()),
            sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
        };
        let block = serde_json::to_string_pretty(&block).map_err(ReferenceError::Manifest)?;
        Ok(format!(
            "{{\n\"manifest\": {manifest},\n\"signature\": {block}\n}}\n"
        ))
    }

    /// Check a signed file with `key` and return its manifest.
    pub fn verify_signed(bytes: &[u8], key: &VerifyingKey) -> Result<Reference, ReferenceError> {
        if bytes.len() > MAX_FILE {
            return Err(ReferenceError::TooLarge(bytes.len()));
        }
        let env: Envelope<'_> = serde_json::from_slice(bytes).map_err(ReferenceError::Envelope)?;
        let block = &env.signature;
        if block.alg != "ed25519" {
            return Err(ReferenceError::SignatureBlock(format!(
                "algorithm {:?} is not ed25519",
                block.alg
            )));
        }
        let expected = key_id(key);
        if block.key_id != expected {
            return Err(ReferenceError::WrongKey {
                expected,
                found: block.key_id.clone(),
            });
        }
        let sig = base64::engine::general_purpose::STANDARD
            .decode(&block.sig)
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .ok_or_else(|| {
                ReferenceError::SignatureBlock("sig is not 64 bytes of base64".to_owned())
            })?;
        let mut msg = SIGNING_CONTEXT.to_vec();
        msg.extend_from_slice(env.manifest.get().as_bytes());
        key.verify(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| ReferenceError::BadSignature)?;
        let r: Reference =
            serde_json::from_str(env.manifest.get()).map_err(ReferenceError::Manifest)?;
        r.check()?;
        Ok(r)
    }

    /// Structural checks a signature cannot make.
    fn check(&self) -> Result<(), ReferenceError> {
        if self.format != FORMAT {
            return Err(ReferenceError::Format(self.format.clone()));
        }
        for (pcr, r) in &self.pcrs {
            if *pcr > 23 {
                return Err(ReferenceError::Inconsistent(format!(
                    "PCR {pcr} is out of range"
                )));
            }
            let digests = r
                .value
                .iter()
                .chain(r.events.iter().flat_map(|e| &e.digests));
            for (b, v) in digests {
                if v.0.len() != b.digest_size() {
                    return Err(ReferenceError::Inconsistent(format!(
                        "PCR {pcr}: a {b} digest of {} bytes",
                        v.0.len()
                    )));
                }
            }
        }
        Ok(())
    }
}
