//! The audit log as devices witness it: the latest signed checkpoint (a
//! C2SP signed note) with the key that signs it, and consistency proofs
//! between two sizes, so a device holding an older checkpoint can check
//! that the log only grew (RFC 9162 section 2.1.4).

use serde::{Deserialize, Serialize};

/// `GET /v1/audit/checkpoint`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpoint {
    /// The signed note (`origin`, size, base64 root, signature lines).
    pub note: String,
    /// The signer's verifier key (`origin+keyid+base64`).
    pub vkey: String,
}

/// `GET /v1/audit/consistency?from=N&to=M`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Consistency {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// The proof nodes (hex).
    pub path: Vec<String>,
}
