//! The agent's routes: the signed policy bundle in force (text, `GET
//! /v1/agent/bundle`), and the delivery of the device's spooled audit
//! entries, each acknowledged so the device can delete it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/agent/spool`: entries in sequence order (at most
/// [`crate::limits::MAX_SPOOL_BATCH`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// The spool's epoch: a new spool (after a wipe) starts a new one.
    pub epoch: String,
    /// The entries.
    pub entries: Vec<Spooled>,
}

/// One spooled entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spooled {
    /// Its sequence number in the spool (dense, from 1).
    #[serde(default)]
    pub seq: i64,
    /// When it happened, ms since the epoch.
    pub at_ms: i64,
    /// The audit kind (`exec`, `policy`, ...).
    pub kind: String,
    /// What it is about.
    pub subject: String,
    /// The decision.
    pub decision: String,
    /// Details.
    #[serde(default)]
    pub details: Value,
}

/// The answer to a [`Delivery`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivered {
    /// Every entry up to this sequence number is held: delete them.
    pub accepted_through: i64,
    /// How many were appended to the audit log now.
    pub appended: u64,
}
