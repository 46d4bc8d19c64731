//! The checkpoint signer's own view of the log. It never signs what the
//! database says without checking it against what it signed before: it
//! keeps the tree of its last signed checkpoint *outside* the database (a
//! compact range in a state file beside its key, written durably after each
//! checkpoint), and extends it only with the entries that follow, each
//! checked against its stored leaf hash and its sequence number.
//!
//! So an edit or deletion of entries it already signed cannot be signed
//! over: a log shorter than the last signed tree, a gap, or an entry whose
//! columns no longer match its leaf hash is an alarm ([`SignerError`]), and
//! no checkpoint is made. (Rows appended after the last checkpoint by
//! someone with write access to the database are not told apart from the
//! appends of other Satchel processes: `satchel audit verify` and the
//! devices' witnessed checkpoints cover what was signed.)

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

use crate::batch::now_ms;
use crate::checkpoint::{self, Checkpoint, Verifier};
use crate::merkle::{CompactRange, Hash};
use crate::store::{Store, StoreError, StoredCheckpoint};

/// The state file's format name.
pub const FORMAT: &str = "satchel-audit-signer-v1";

/// Why no checkpoint was signed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The log holds fewer entries than the last signed checkpoint.
    #[error("audit alarm: the log holds {now} entries, fewer than the {signed} of the last signed checkpoint (entries were deleted)")]
    Shrunk {
        /// The size last signed.
        signed: u64,
        /// The size now.
        now: u64,
    },
    /// An entry after the last signed checkpoint is not what its leaf hash
    /// says, or is out of sequence.
    #[error("audit alarm: entry {seq}: {problem}")]
    Entry {
        /// The entry's sequence number.
        seq: u64,
        /// What is wrong.
        problem: &'static str,
    },
    /// The database's tree does not match a checkpoint stored in it
    /// (checked when the signer starts without a state file, and for a
    /// checkpoint another signer made past this one's).
    #[error("audit alarm: the stored log does not match its own last checkpoint at size {size}")]
    Mismatch {
        /// The checkpoint's size.
        size: u64,
    },
    /// The state file is unreadable or not this log's.
    #[error("signer state {}: {problem}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The state file could not be written.
    #[error(transparent)]
    Write(#[from] persist::FileError),
}

/// The state file.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    format: String,
    origin: String,
    size: u64,
    subtrees: Vec<String>,
    /// The leaf hash of the last entry signed (hex).
    last_leaf: Option<String>,
    note: Option<String>,
}

/// The signer.
#[derive(Debug)]
pub struct Signer {
    path: PathBuf,
    key: SigningKey,
    origin: String,
    tree: CompactRange,
    last_leaf: Option<Hash>,
    note: Option<String>,
}

impl Signer {
    /// The signer whose state is at `path`. Without a state file (its first
    /// start), the tree is read from `store` and must match the last
    /// checkpoint stored there that verifies with `key`.
    pub async fn open(
        path: &Path,
        key: SigningKey,
        origin: &str,
        store: &Store,
    ) -> Result<Signer, SignerError> {
        let (tree, last_leaf, note) = match std::fs::read(path) {
            Ok(bytes) => read_state(path, &bytes, origin)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                first_tree(store, &key, origin).await?
            }
            Err(e) => {
                return Err(SignerError::State {
                    path: path.to_owned(),
                    problem: e.to_string(),
                })
            }
        };
        Ok(Signer {
            path: path.to_owned(),
            key,
            origin: origin.to_owned(),
            tree,
            last_leaf,
            note,
        })
    }

    /// The last checkpoint signed, as a note.
    pub fn latest(&self) -> Option<&str> {
        self.note.as_deref()
    }

    /// The size of the tree last signed.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Sign a checkpoint of the entries that followed the last one, if any
    /// did: `None` when the log has not grown.
    pub async fn checkpoint(&mut self, store: &Store) -> Result<Option<Checkpoint>, SignerError> {
        let now = store.size().await?;
        let signed = self.tree.size();
        if now < signed {
            return Err(SignerError::Shrunk { signed, now });
        }
        self.check_last_signed(store).await?;
        self.adopt_newer(store).await?;
        let signed = self.tree.size();
        if now == signed && self.note.is_some() {
            return Ok(None);
        }
        let mut tree = self.tree.clone();
        let mut last_leaf = self.last_leaf;
        for (seq, recomputed, stored) in store.leaf_checks(as_seq(signed), as_seq(now)).await? {
            check_entry(seq, tree.size(), recomputed, stored)?;
            tree.push(stored);
            last_leaf = Some(stored);
        }
        if tree.size() != now {
            return Err(SignerError::Entry {
                seq: tree.size(),
                problem: "missing (a gap in the sequence)",
            });
        }
        let cp = Checkpoint {
            origin: self.origin.clone(),
            size: now,
            root: tree.root(),
        };
        let note = cp.sign(&self.key, &self.origin);
        store
            .add_checkpoint(&StoredCheckpoint {
                size: now,
                root: cp.root,
                note: note.clone(),
                created_ms: now_ms(),
            })
            .await?;
        self.save(&tree, last_leaf, &note)?;
        self.tree = tree;
        self.last_leaf = last_leaf;
        self.note = Some(note);
        Ok(Some(cp))
    }

    /// The last entry signed must still be in the log as signed: a tail cut
    /// off and written again is refused before anything new is read.
    async fn check_last_signed(&self, store: &Store) -> Result<(), SignerError> {
        let (Some(leaf), Some(seq)) = (self.last_leaf, self.tree.size().checked_sub(1)) else {
            return Ok(());
        };
        let row = store.leaf_checks(as_seq(seq), as_seq(seq + 1)).await?;
        match row.first() {
            Some(&(s, recomputed, stored))
                if s == seq && recomputed == stored && stored == leaf =>
            {
                Ok(())
            }
            _ => Err(SignerError::Entry {
                seq,
                problem: "no longer the entry last signed (the log was rewritten)",
            }),
        }
    }

    /// Another signer on the same log (another gateway, which held the
    /// lease) may have signed past this one's tree. The newest such stored
    /// checkpoint that verifies with this key must be what the entries
    /// since this signer's own last checkpoint make, entry by entry; it is
    /// then adopted as this signer's own. Entries rewritten after the other
    /// signed them are an alarm, never signed over (a fork).
    async fn adopt_newer(&mut self, store: &Store) -> Result<(), SignerError> {
        let verifier = Verifier::new(&self.origin, self.key.verifying_key()).map_err(|e| {
            SignerError::State {
                path: self.path.clone(),
                problem: e.to_string(),
            }
        })?;
        let newest = store
            .checkpoints_newest(Some(8))
            .await?
            .into_iter()
            .rev()
            .filter(|c| c.size > self.tree.size())
            .find_map(|c| {
                checkpoint::parse_and_verify(&c.note, &verifier)
                    .ok()
                    .map(|cp| (cp, c))
            });
        let Some((cp, stored)) = newest else {
            return Ok(());
        };
        let mut tree = self.tree.clone();
        let mut last_leaf = self.last_leaf;
        for (seq, recomputed, leaf) in store
            .leaf_checks(as_seq(tree.size()), as_seq(cp.size))
            .await?
        {
            check_entry(seq, tree.size(), recomputed, leaf)?;
            tree.push(leaf);
            last_leaf = Some(leaf);
        }
        if tree.size() != cp.size || tree.root() != cp.root {
            return Err(SignerError::Mismatch { size: stored.size });
        }
        self.save(&tree, last_leaf, &stored.note)?;
        self.tree = tree;
        self.last_leaf = last_leaf;
        self.note = Some(stored.note);
        Ok(())
    }

    /// Write the state durably.
    fn save(
        &self,
        tree: &CompactRange,
        last_leaf: Option<Hash>,
        note: &str,
    ) -> Result<(), SignerError> {
        let state = StateFile {
            format: FORMAT.to_owned(),
            origin: self.origin.clone(),
            size: tree.size(),
            subtrees: tree.subtrees().iter().map(hex::encode).collect(),
            last_leaf: last_leaf.map(hex::encode),
            note: Some(note.to_owned()),
        };
        let text = serde_json::to_vec_pretty(&state).map_err(|e| SignerError::State {
            path: self.path.clone(),
            problem: e.to_string(),
        })?;
        persist::write_atomic(&self.path, &text)?;
        Ok(())
    }
}

fn as_seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// An entry must come next in sequence and match its stored leaf hash.
fn check_entry(seq: u64, expected: u64, recomputed: Hash, stored: Hash) -> Result<(), SignerError> {
    if seq != expected {
        return Err(SignerError::Entry {
            seq: expected,
            problem: "missing (a gap in the sequence)",
        });
    }
    if recomputed != stored {
        return Err(SignerError::Entry {
            seq,
            problem: "its columns no longer hash to its stored leaf hash (edited)",
        });
    }
    Ok(())
}

/// The tree and last note of a state file.
fn read_state(
    path: &Path,
    bytes: &[u8],
    origin: &str,
) -> Result<(CompactRange, Option<Hash>, Option<String>), SignerError> {
    let bad = |problem: String| SignerError::State {
        path: path.to_owned(),
        problem,
    };
    let s: StateFile = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    if s.format != FORMAT || s.origin != origin {
        return Err(bad(format!("not the state of log {origin:?} ({FORMAT})")));
    }
    let subtrees = s
        .subtrees
        .iter()
        .map(|h| hex::decode(h).ok().and_then(|b| Hash::try_from(b).ok()))
        .collect::<Option<Vec<Hash>>>()
        .ok_or_else(|| bad("a subtree is not a 32-byte hex hash".to_owned()))?;
    let tree = CompactRange::from_parts(s.size, subtrees)
        .ok_or_else(|| bad("the subtrees do not fit the size".to_owned()))?;
    let last_leaf = match &s.last_leaf {
        None => None,
        Some(h) => Some(
            hex::decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b).ok())
                .ok_or_else(|| bad("the last leaf is not a 32-byte hex hash".to_owned()))?,
        ),
    };
    Ok((tree, last_leaf, s.note))
}

/// The tree in the database, checked against its last checkpoint that
/// verifies with `key` (trust on first start, but not blindly).
async fn first_tree(
    store: &Store,
    key: &SigningKey,
    origin: &str,
) -> Result<(CompactRange, Option<Hash>, Option<String>), SignerError> {
    let size = store.size().await?;
    let leaves = store.leaf_hashes(size).await?;
    let verifier = Verifier::new(origin, key.verifying_key()).map_err(|e| SignerError::State {
        path: PathBuf::new(),
        problem: e.to_string(),
    })?;
    let mut checkpoints = store.checkpoints().await?;
    checkpoints.sort_by_key(|c| std::cmp::Reverse(c.size));
    let last = checkpoints.iter().find_map(|c| {
        checkpoint::parse_and_verify(&c.note, &verifier)
            .ok()
            .map(|cp| (cp, c))
    });
    if let Some((cp, stored)) = last {
        let at = usize::try_from(cp.size).unwrap_or(usize::MAX);
        let prefix: CompactRange = leaves.iter().take(at).copied().collect();
        if leaves.len() < at || prefix.root() != cp.root {
            return Err(SignerError::Mismatch { size: stored.size });
        }
    }
    let last = leaves.last().copied();
    Ok((leaves.into_iter().collect(), last, None))
}

/// What a running signer shows: its last note, and its last alarm.
#[derive(Debug, Clone, Default)]
pub struct SignerView {
    latest: Arc<RwLock<Option<String>>>,
    alarm: Arc<RwLock<Option<String>>>,
    /// When the signer last found the log covered by a signed checkpoint
    /// (ms since the epoch); it stops moving while an alarm lasts.
    checked_at_ms: Arc<std::sync::atomic::AtomicI64>,
}

impl SignerView {
    /// The last checkpoint signed, as a note.
    pub fn latest(&self) -> Option<String> {
        self.latest.read().map_or(None, |n| n.clone())
    }

    /// The last alarm, while it lasts (a later checkpoint clears it).
    pub fn alarm(&self) -> Option<String> {
        self.alarm.read().map_or(None, |a| a.clone())
    }

    /// When the log was last found covered by a signed checkpoint (ms since
    /// the epoch; 0 before the first look).
    pub fn checked_at_ms(&self) -> i64 {
        self.checked_at_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, latest: Option<String>, alarm: Option<String>) {
        if alarm.is_none() {
            self.checked_at_ms
                .store(crate::batch::now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        if let (Some(n), Ok(mut slot)) = (latest, self.latest.write()) {
            *slot = Some(n);
        }
        if let Ok(mut slot) = self.alarm.write() {
            *slot = alarm;
        }
    }
}

/// Sign every `every` whenever the log has grown; an alarm is logged (at
/// error) and shown in the view, and nothing is signed until the log is
/// consistent again.
pub fn spawn(
    mut signer: Signer,
    store: Store,
    every: Duration,
) -> (SignerView, tokio::task::JoinHandle<()>) {
    let view = SignerView::default();
    view.set(signer.latest().map(str::to_owned), None);
    let shown = view.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        let mut lease: Option<crate::store::SignerLease> = None;
        loop {
            tick.tick().await;
            if !hold_lease(&store, &mut lease).await {
                // Another process signs: watch that it does.
                // Nothing proven otherwise leaves what is shown: an alarm
                // raised while this process signed stays up.
                if let Some(alarm) = stalled(&store, every).await {
                    tracing::error!(%alarm, "audit checkpointer (standby)");
                    shown.set(None, Some(alarm));
                }
                continue;
            }
            match signer.checkpoint(&store).await {
                Ok(_) => shown.set(signer.latest().map(str::to_owned), None),
                Err(e @ SignerError::Store(_)) => {
                    tracing::warn!(error = %e, "audit checkpointer: cannot read the log");
                }
                Err(e) => {
                    tracing::error!(error = %e, "audit checkpointer: refusing to sign");
                    shown.set(None, Some(e.to_string()));
                }
            }
        }
    });
    (view, task)
}

/// How many signing intervals the log may grow without a checkpoint
/// before a standby signer raises the alarm.
const STALL_INTERVALS: u32 = 10;

/// For a process that does not hold the lease: an alarm if the log has
/// grown past its newest checkpoint and that checkpoint is older than
/// [`STALL_INTERVALS`] signing intervals (the lease is held, but nothing
/// signs: a stuck signer, or a session squatting the lock).
async fn stalled(store: &Store, every: Duration) -> Option<String> {
    let size = store.size().await.ok()?;
    let newest = store.checkpoints_newest(Some(1)).await.ok()?.pop();
    let (signed, at_ms) = newest.map_or((0, None), |c| (c.size, Some(c.created_ms)));
    if size <= signed {
        return None;
    }
    let limit = every * STALL_INTERVALS;
    let limit_ms = i64::try_from(limit.as_millis()).unwrap_or(i64::MAX);
    let age_ms = crate::batch::now_ms().saturating_sub(at_ms.unwrap_or(0));
    // Without any checkpoint, the age of the oldest unsigned entry counts.
    let age_ms = match at_ms {
        Some(_) => age_ms,
        None => {
            let first = store.entries(0, None, Some(1)).await.ok()?;
            crate::batch::now_ms().saturating_sub(first.first()?.entry.ts_ms)
        }
    };
    (age_ms > limit_ms).then(|| {
        format!(
            "audit alarm: the log holds {size} entries but its newest checkpoint covers {signed}, made {} s ago; another process holds the signer's lease and does not sign",
            age_ms / 1000
        )
    })
}

/// Keep (or take) the lease to sign: one signer at a time on a shared
/// log. Whether this process may sign now.
async fn hold_lease(store: &Store, lease: &mut Option<crate::store::SignerLease>) -> bool {
    if let Some(l) = lease {
        if l.alive().await {
            return true;
        }
        tracing::warn!("audit checkpointer: the signer's lease was lost (its connection ended)");
        *lease = None;
    }
    match store.try_signer_lease().await {
        Ok(Some(l)) => {
            if store.backend() == persist::Backend::Postgres {
                tracing::info!(
                    "audit checkpointer: this process now signs the shared log's checkpoints"
                );
            }
            *lease = Some(l);
            true
        }
        Ok(None) => false, // another process signs
        Err(e) => {
            tracing::warn!(error = %e, "audit checkpointer: cannot ask for the signer's lease");
            false
        }
    }
}
