//! The audit log as its users see it: open a database, append through group
//! commit, make signed checkpoints (on demand and periodically), answer
//! inclusion and consistency proofs, and verify the whole store.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::batch::now_ms;
use crate::checkpoint::{Checkpoint, Verifier};
use crate::merkle::{self, Hash, ProofError};
use crate::store::{Store, StoreError, StoredCheckpoint};
use crate::verify::{LogVerifier, Report};

/// Entries read per query while verifying.
const PAGE: u64 = 20_000;
/// Queries in flight at once while verifying.
const READ_AHEAD: usize = 3;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A proof was asked for sizes or indices the log does not have.
    #[error("cannot prove: {0}")]
    Proof(#[from] ProofError),
    /// A background read was cancelled or panicked.
    #[error("reading the log was interrupted")]
    Interrupted,
    /// A size beyond the log's end.
    #[error("tree size {asked} is beyond the log's {size} entries")]
    Size {
        /// The size asked for.
        asked: u64,
        /// The log's size.
        size: u64,
    },
}

/// An inclusion proof as `satchel audit prove --index` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InclusionProof {
    /// The leaf's index.
    pub leaf_index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// The leaf hash, hex.
    pub leaf_hash: String,
    /// The root at `tree_size`, hex.
    pub root: String,
    /// The audit path, hex, leaf to root.
    pub path: Vec<String>,
}

/// A consistency proof as `satchel audit prove --consistency` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsistencyProof {
    /// The older size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// Root at the older size, hex.
    pub old_root: String,
    /// Root at the newer size, hex.
    pub new_root: String,
    /// The proof nodes, hex.
    pub path: Vec<String>,
}

fn hexes(v: &[Hash]) -> Vec<String> {
    v.iter().map(hex::encode).collect()
}

/// `size` or the log's size; an error beyond the end.
async fn size_or_all(store: &Store, size: Option<u64>) -> Result<u64, LogError> {
    let all = store.size().await?;
    match size {
        Some(s) if s > all => Err(LogError::Size {
            asked: s,
            size: all,
        }),
        Some(s) => Ok(s),
        None => Ok(all),
    }
}

/// Sign and store a checkpoint of the whole log as it is now.
pub async fn make_checkpoint(
    store: &Store,
    key: &SigningKey,
    origin: &str,
) -> Result<(Checkpoint, String), LogError> {
    let size = store.size().await?;
    let leaves = store.leaf_hashes(size).await?;
    let cp = Checkpoint {
        origin: origin.to_owned(),
        size,
        root: merkle::root(&leaves),
    };
    let note = cp.sign(key, origin);
    store
        .add_checkpoint(&StoredCheckpoint {
            size,
            root: cp.root,
            note: note.clone(),
            created_ms: now_ms(),
        })
        .await?;
    Ok((cp, note))
}

/// Make a checkpoint every `every` whenever the log has grown since the last one.
pub fn spawn_checkpointer(
    store: Store,
    key: SigningKey,
    origin: String,
    every: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = None;
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let size = match store.size().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "audit checkpointer: cannot read the log size");
                    continue;
                }
            };
            if last == Some(size) {
                continue;
            }
            match make_checkpoint(&store, &key, &origin).await {
                Ok((cp, _)) => last = Some(cp.size),
                Err(e) => tracing::warn!(error = %e, "audit checkpointer: checkpoint failed"),
            }
        }
    })
}

/// Prove that entry `index` is in the tree of `size` (default: the whole log).
pub async fn prove_inclusion(
    store: &Store,
    index: u64,
    size: Option<u64>,
) -> Result<InclusionProof, LogError> {
    let size = size_or_all(store, size).await?;
    let leaves = store.leaf_hashes(size).await?;
    let path = merkle::inclusion_proof(&leaves, index, size)?;
    let leaf = usize::try_from(index)
        .ok()
        .and_then(|i| leaves.get(i))
        .copied()
        .ok_or(LogError::Size {
            asked: index + 1,
            size,
        })?;
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        leaf_hash: hex::encode(leaf),
        root: hex::encode(merkle::root(&leaves)),
        path: hexes(&path),
    })
}

/// Prove that the tree of `old` entries is a prefix of the tree of `new` (default: the whole log).
pub async fn prove_consistency(
    store: &Store,
    old: u64,
    new: Option<u64>,
) -> Result<ConsistencyProof, LogError> {
    let new = size_or_all(store, new).await?;
    let leaves = store.leaf_hashes(new).await?;
    let path = merkle::consistency_proof(&leaves, old, new)?;
    let old_leaves = leaves
        .get(..usize::try_from(old).unwrap_or(usize::MAX))
        .unwrap_or(&[]);
    Ok(ConsistencyProof {
        old_size: old,
        new_size: new,
        old_root: hex::encode(merkle::root(old_leaves)),
        new_root: hex::encode(merkle::root(&leaves)),
        path: hexes(&path),
    })
}

/// Verify every entry and checkpoint in the store against `verifier`'s key.
pub async fn verify_store(store: &Store, verifier: &Verifier) -> Result<Report, LogError> {
    verify_store_witnessed(store, verifier, Vec::new()).await
}

/// [`verify_store`], also against `witnessed` checkpoints kept outside the
/// database: a log cut short below, or rewritten under, a witnessed
/// checkpoint is reported as for a stored one, even when the stored
/// checkpoints were cut with it.
pub async fn verify_store_witnessed(
    store: &Store,
    verifier: &Verifier,
    witnessed: Vec<StoredCheckpoint>,
) -> Result<Report, LogError> {
    let mut checkpoints = store.checkpoints().await?;
    checkpoints.extend(witnessed);
    let mut v = LogVerifier::new(checkpoints, verifier);
    let Some((min, max)) = store.seq_bounds().await? else {
        return Ok(v.finish());
    };
    // Ranges of sequence numbers (not counts: an edited log may have gaps),
    // read on several connections at once and checked in order.
    let page = i64::try_from(PAGE).unwrap_or(i64::MAX);
    let mut pending = std::collections::VecDeque::new();
    let mut from = min;
    loop {
        while pending.len() < READ_AHEAD && from <= max {
            let to = from.saturating_add(page);
            let s = store.clone();
            pending.push_back(tokio::spawn(async move { s.leaf_checks(from, to).await }));
            from = to;
        }
        let Some(next) = pending.pop_front() else {
            break;
        };
        let rows = next.await.map_err(|_| LogError::Interrupted)??;
        for (seq, recomputed, stored) in rows {
            v.push_leaf(seq, recomputed, stored);
        }
    }
    Ok(v.finish())
}
