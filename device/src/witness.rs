//! The device as a witness of its gateway's audit log: it keeps the last
//! signed checkpoint it saw (`CDIR/audit-witness.json`, with the log's key,
//! pinned at the first one) and checks each new one against it. A log that
//! shrank, a second tree at the same size, a new key, or a newer tree the
//! gateway cannot prove extends the old one is an [`Alarm`]: the gateway's
//! log was cut short or rewritten, or the gateway shows devices different
//! logs. The held checkpoint is then kept, so the alarm repeats.

use std::path::PathBuf;

use audit::checkpoint::{self, Checkpoint, Verifier};
use audit::merkle::Hash;
use protocol::audit::{AuditCheckpoint, Consistency};
use protocol::paths;
use serde::{Deserialize, Serialize};

use crate::client::{CallError, GatewayClient};
use crate::identity::GatewayConfig;

/// Why the new checkpoint cannot be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Alarm {
    /// The log is signed by another key than the one pinned.
    #[error("audit alarm: the gateway's audit log is now signed by another key")]
    KeyChanged,
    /// The checkpoint's signature does not verify.
    #[error("audit alarm: the gateway's checkpoint does not verify: {0}")]
    BadCheckpoint(String),
    /// The log holds fewer entries than a checkpoint seen before.
    #[error("audit alarm: the gateway's log shrank from {held} to {now} entries")]
    Shrunk {
        /// The size witnessed before.
        held: u64,
        /// The size now.
        now: u64,
    },
    /// Another tree at the size witnessed before.
    #[error("audit alarm: the gateway shows another log of {size} entries than before (a fork)")]
    Forked {
        /// The size.
        size: u64,
    },
    /// The newer tree does not extend the one witnessed.
    #[error("audit alarm: the gateway cannot prove its log of {to} entries extends the {from} witnessed: {why}")]
    Inconsistent {
        /// The size witnessed.
        from: u64,
        /// The size now.
        to: u64,
        /// Why the proof failed.
        why: String,
    },
}

/// Why witnessing did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WitnessError {
    /// The new checkpoint cannot be trusted.
    #[error(transparent)]
    Alarm(#[from] Alarm),
    /// The gateway could not be asked.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The held checkpoint could not be read or written.
    #[error("witness file {}: {problem}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}

/// What a check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Witnessed {
    /// The first checkpoint seen (its key is pinned now).
    First {
        /// Its size.
        size: u64,
    },
    /// The same checkpoint as before.
    Same {
        /// Its size.
        size: u64,
    },
    /// A newer one, proven to extend the one held.
    Grew {
        /// The size held before.
        from: u64,
        /// The size now.
        to: u64,
    },
}

/// The held checkpoint, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Held {
    note: String,
    vkey: String,
}

/// Ask the gateway for its latest checkpoint and check it against the one held.
pub async fn witness(gw: &GatewayConfig) -> Result<Witnessed, WitnessError> {
    let c = gw.device_client().map_err(|e| WitnessError::File {
        path: gw.data.clone(),
        problem: e.to_string(),
    })?;
    let path = gw.data.join("audit-witness.json");
    let held = read_held(&path)?;
    let offered: AuditCheckpoint = c.fetch("audit checkpoint", paths::AUDIT_CHECKPOINT).await?;
    let verdict = judge(&c, held.as_ref(), &offered).await?;
    if !matches!(verdict, Witnessed::Same { .. }) {
        let text = serde_json::to_vec_pretty(&Held {
            note: offered.note,
            vkey: offered.vkey,
        })
        .map_err(|e| file_error(&path, e))?;
        persist::write_atomic(&path, &text).map_err(|e| file_error(&path, e))?;
    }
    Ok(verdict)
}

fn file_error(path: &std::path::Path, e: impl std::fmt::Display) -> WitnessError {
    WitnessError::File {
        path: path.to_owned(),
        problem: e.to_string(),
    }
}

fn read_held(path: &std::path::Path) -> Result<Option<Held>, WitnessError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| file_error(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_error(path, e)),
    }
}

/// The verdict on `offered` given what is `held`.
async fn judge(
    c: &GatewayClient,
    held: Option<&Held>,
    offered: &AuditCheckpoint,
) -> Result<Witnessed, WitnessError> {
    if held.is_some_and(|h| h.vkey != offered.vkey) {
        return Err(Alarm::KeyChanged.into());
    }
    let now = open(&offered.note, &offered.vkey)?;
    let Some(held) = held else {
        return Ok(Witnessed::First { size: now.size });
    };
    let before = open(&held.note, &held.vkey)?;
    if now.size < before.size {
        return Err(Alarm::Shrunk {
            held: before.size,
            now: now.size,
        }
        .into());
    }
    if now.size == before.size {
        return if now.root == before.root {
            Ok(Witnessed::Same { size: now.size })
        } else {
            Err(Alarm::Forked { size: now.size }.into())
        };
    }
    let query = format!(
        "{}?from={}&to={}",
        paths::AUDIT_CONSISTENCY,
        before.size,
        now.size
    );
    let proof: Consistency = c.fetch("audit consistency proof", &query).await?;
    check_consistency(&before, &now, &proof)?;
    Ok(Witnessed::Grew {
        from: before.size,
        to: now.size,
    })
}

/// A note's checkpoint, verified with `vkey`.
fn open(note: &str, vkey: &str) -> Result<Checkpoint, Alarm> {
    let verifier = Verifier::from_vkey(vkey).map_err(|e| Alarm::BadCheckpoint(e.to_string()))?;
    checkpoint::parse_and_verify(note, &verifier).map_err(|e| Alarm::BadCheckpoint(e.to_string()))
}

/// `proof` shows the tree of `before` is a prefix of the tree of `now`.
fn check_consistency(
    before: &Checkpoint,
    now: &Checkpoint,
    proof: &Consistency,
) -> Result<(), Alarm> {
    let inconsistent = |why: String| Alarm::Inconsistent {
        from: before.size,
        to: now.size,
        why,
    };
    if proof.old_size != before.size || proof.new_size != now.size {
        return Err(inconsistent("a proof for other sizes".to_owned()));
    }
    let path = proof
        .path
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| inconsistent("a proof node is not a 32-byte hex hash".to_owned()))?;
    audit::merkle::verify_consistency(before.size, now.size, &before.root, &now.root, &path)
        .map_err(|e| inconsistent(e.to_string()))
}
