//! Audit entries and their canonical leaf encoding.
//!
//! The leaf of entry `seq` is, byte for byte (all integers big-endian, every
//! string prefixed by its length as a u32):
//!
//! ```text
//! "satchel-audit-entry-v1" 0x00
//! seq:u64  ts_ms:i64  len kind  len actor  len subject  len decision  len details
//! ```
//!
//! `details` is the entry's JSON with object keys sorted and no whitespace,
//! so equal details always encode equally. The sequence number is inside the
//! leaf: moving an entry changes its leaf. The leaf hash is RFC 6962's
//! SHA-256(0x00 || leaf). Encoding never fails and never panics.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::merkle::{leaf_hash, Hash};

/// Domain separation for the leaf encoding.
const LEAF_TAG: &[u8] = b"satchel-audit-entry-v1\0";

/// What a caller appends: everything but the sequence number and time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewEntry {
    /// What kind of decision (`attestation`, `enrollment`, `policy`, `sync`, `admin`, ...).
    pub kind: String,
    /// Who acted (a device id, an admin, the gateway).
    pub actor: String,
    /// What it was about (a URL, an image, a device).
    pub subject: String,
    /// The decision (`allow`, `deny`, `trusted`, `conflict`, ...).
    pub decision: String,
    /// Anything else, as JSON (an object by convention; `null` when absent).
    #[serde(default)]
    pub details: Value,
}

/// A stored entry: a [`NewEntry`] with its place in the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the log, from 0: the Merkle leaf index.
    pub seq: u64,
    /// When it was appended, milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// Kind.
    pub kind: String,
    /// Actor.
    pub actor: String,
    /// Subject.
    pub subject: String,
    /// Decision.
    pub decision: String,
    /// Details (canonical JSON when stored).
    pub details: Value,
}

impl Entry {
    /// Place `new` at `seq`, stamped `ts_ms`.
    pub fn new(seq: u64, ts_ms: i64, new: NewEntry) -> Entry {
        Entry {
            seq,
            ts_ms,
            kind: new.kind,
            actor: new.actor,
            subject: new.subject,
            decision: new.decision,
            details: new.details,
        }
    }

    /// The canonical leaf bytes (see the module documentation).
    pub fn leaf(&self) -> Vec<u8> {
        self.leaf_with_details(&canonical_json(&self.details))
    }

    /// The leaf bytes, given the details already as text.
    pub fn leaf_with_details(&self, details: &str) -> Vec<u8> {
        encode_leaf(
            self.seq,
            self.ts_ms,
            [
                &self.kind,
                &self.actor,
                &self.subject,
                &self.decision,
                details,
            ],
        )
    }

    /// RFC 6962 leaf hash of [`Entry::leaf`].
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.leaf())
    }

    /// The details as stored: canonical JSON text.
    pub fn details_text(&self) -> String {
        canonical_json(&self.details)
    }
}

/// The leaf encoding of the module documentation, from its parts: kind,
/// actor, subject, decision and details text, in that order.
pub fn encode_leaf(seq: u64, ts_ms: i64, fields: [&str; 5]) -> Vec<u8> {
    let len: usize = fields.iter().map(|f| 4 + f.len()).sum();
    let mut out = Vec::with_capacity(LEAF_TAG.len() + 16 + len);
    out.extend_from_slice(LEAF_TAG);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ts_ms.to_be_bytes());
    for field in fields {
        out.extend_from_slice(&(field.len() as u32).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

/// JSON with object keys sorted (recursively) and no whitespace.
pub fn canonical_json(v: &Value) -> String {
    sorted(v).to_string()
}

fn sorted(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), sorted(&m[k])))
                    .collect(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(details: Value) -> Entry {
        Entry::new(
            7,
            1_700_000_000_000,
            NewEntry {
                kind: "policy".into(),
                actor: "device:laptop-17".into(),
                subject: "https://example.org/".into(),
                decision: "deny".into(),
                details,
            },
        )
    }

    #[test]
    fn key_order_does_not_change_the_leaf() {
        let a = entry(json!({"b": 1, "a": {"y": 2, "x": [3, {"q": 1, "p": 0}]}}));
        let b =
            entry(serde_json::from_str(r#"{"a":{"x":[3,{"p":0,"q":1}],"y":2},"b":1}"#).unwrap());
        assert_eq!(a.leaf(), b.leaf());
        assert_eq!(
            a.details_text(),
            r#"{"a":{"x":[3,{"p":0,"q":1}],"y":2},"b":1}"#
        );
    }

    #[test]
    fn every_field_is_bound() {
        let base = entry(json!({"rule": 3}));
        let mut variants = vec![];
        for f in 0..7 {
            let mut e = base.clone();
            match f {
                0 => e.seq += 1,
                1 => e.ts_ms += 1,
                2 => e.kind.push('x'),
                3 => e.actor.push('x'),
                4 => e.subject.push('x'),
                5 => e.decision.push('x'),
                _ => e.details = json!({"rule": 4}),
            }
            variants.push(e.leaf_hash());
        }
        variants.push(base.leaf_hash());
        let unique: std::collections::HashSet<_> = variants.iter().collect();
        assert_eq!(unique.len(), variants.len());
    }

    #[test]
    fn length_prefixes_stop_field_shifting() {
        let mut a = entry(Value::Null);
        let mut b = a.clone();
        a.kind = "ab".into();
        a.actor = "c".into();
        b.kind = "a".into();
        b.actor = "bc".into();
        assert_ne!(a.leaf(), b.leaf());
    }
}
