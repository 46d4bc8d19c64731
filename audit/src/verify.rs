//! Verifying a whole log: every entry's leaf recomputed from its columns,
//! sequence numbers dense from 0, the tree rebuilt, every checkpoint's
//! signature checked with the log's public key and its root compared with
//! the rebuilt tree at its size.
//!
//! Consistency between checkpoints follows from the rebuild: every signed
//! root is compared with the root of a prefix of one and the same leaf
//! sequence, so each later checkpoint extends each earlier one exactly when
//! all of them match. Verification only reads; it never repairs.

use std::fmt;

use serde::Serialize;

use crate::checkpoint::{self, Verifier};
use crate::merkle::{leaf_hash, CompactRange, Hash};
use crate::store::{StoredCheckpoint, StoredEntry};

/// One way the log is not what its checkpoints signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Problem {
    /// A sequence number is missing or out of place: entries were deleted,
    /// inserted or reordered.
    Sequence {
        /// The sequence number the log should have next.
        expected: u64,
        /// The one it has.
        found: u64,
    },
    /// The stored leaf hash does not match the entry's columns: a column was edited.
    LeafHash {
        /// The entry.
        seq: u64,
    },
    /// The rebuilt tree's root differs from a signed checkpoint's: an entry
    /// in `from..size` differs from what was signed.
    Root {
        /// The checkpoint's tree size.
        size: u64,
        /// The previous checkpoint that matched (0 if none).
        from: u64,
    },
    /// A checkpoint's signature does not verify with the given key.
    Signature {
        /// The checkpoint's tree size as stored.
        size: u64,
        /// Why.
        reason: String,
    },
    /// A checkpoint names another log (its note's origin line) than the
    /// one being verified: the wrong `--origin` was given, or a checkpoint
    /// of another log was put here. Says nothing of the entries.
    Origin {
        /// The checkpoint's tree size as stored.
        size: u64,
        /// The origin its note names.
        signed_as: String,
        /// The origin being verified.
        expected: String,
    },
    /// A checkpoint's stored size or root differ from its signed note.
    CheckpointColumns {
        /// The checkpoint's tree size as stored.
        size: u64,
    },
    /// A checkpoint commits to more entries than the log holds: the tail was truncated.
    Truncated {
        /// The checkpoint's tree size.
        size: u64,
        /// Entries the log holds.
        entries: u64,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Sequence { expected, found } => write!(
                f,
                "entry {expected}: the log has entry {found} where entry {expected} belongs (entries deleted, inserted or reordered)"
            ),
            Problem::LeafHash { seq } => {
                write!(f, "entry {seq}: its columns no longer hash to its stored leaf hash (edited)")
            }
            Problem::Root { size, from } => write!(
                f,
                "entry {from}: entries {from}..{size} differ from what the checkpoint at size {size} signed"
            ),
            Problem::Signature { size, reason } => {
                write!(f, "checkpoint at size {size}: signature does not verify: {reason}")
            }
            Problem::Origin {
                size,
                signed_as,
                expected,
            } => write!(
                f,
                "checkpoint at size {size}: signed as log {signed_as:?}, not {expected:?}"
            ),
            Problem::CheckpointColumns { size } => {
                write!(f, "checkpoint at size {size}: stored size or root differ from its signed note")
            }
            Problem::Truncated { size, entries } => write!(
                f,
                "entry {entries}: a checkpoint signed {size} entries but the log holds {entries} (tail truncated)"
            ),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Entries read.
    pub entries: u64,
    /// Checkpoints read.
    pub checkpoints: usize,
    /// Checkpoints whose signature and root both held.
    pub checkpoints_verified: usize,
    /// The root of all entries read (hex).
    pub root: String,
    /// Everything wrong, in log order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True when nothing is wrong.
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Incremental verifier: feed entries in order, then finish.
#[derive(Debug)]
pub struct LogVerifier {
    checkpoints: Vec<(StoredCheckpoint, bool)>,
    next_checkpoint: usize,
    last_good: u64,
    tree: CompactRange,
    report: Report,
}

impl LogVerifier {
    /// Start verifying against `checkpoints` (any order) signed by `verifier`'s key.
    pub fn new(mut checkpoints: Vec<StoredCheckpoint>, verifier: &Verifier) -> Self {
        checkpoints.sort_by_key(|c| c.size);
        let mut report = Report {
            checkpoints: checkpoints.len(),
            ..Report::default()
        };
        let checkpoints = checkpoints
            .into_iter()
            .map(|c| {
                let ok = check_note(&c, verifier, &mut report.problems);
                (c, ok)
            })
            .collect();
        let mut v = LogVerifier {
            checkpoints,
            next_checkpoint: 0,
            last_good: 0,
            tree: CompactRange::new(),
            report,
        };
        v.reach_checkpoints();
        v
    }

    /// The next entry of the log, in stored order.
    pub fn push(&mut self, e: &StoredEntry) {
        let leaf = leaf_hash(&e.entry.leaf_with_details(&e.details_text));
        self.push_leaf(e.entry.seq, leaf, e.leaf_hash);
    }

    /// The next entry, given its sequence number, the leaf hash recomputed
    /// from its columns, and the leaf hash stored with it.
    pub fn push_leaf(&mut self, seq: u64, recomputed: Hash, stored: Hash) {
        let expected = self.report.entries;
        if seq != expected && !self.report.problems.iter().any(is_sequence) {
            self.report.problems.push(Problem::Sequence {
                expected,
                found: seq,
            });
        }
        if recomputed != stored {
            self.report.problems.push(Problem::LeafHash { seq });
        }
        self.tree.push(recomputed);
        self.report.entries += 1;
        self.reach_checkpoints();
    }

    /// Compare every checkpoint whose size the tree has now reached.
    fn reach_checkpoints(&mut self) {
        while let Some((cp, ok)) = self.checkpoints.get(self.next_checkpoint) {
            if cp.size != self.report.entries {
                if cp.size < self.report.entries {
                    self.next_checkpoint += 1;
                    continue;
                }
                break;
            }
            let root: Hash = self.tree.root();
            if root != cp.root {
                self.report.problems.push(Problem::Root {
                    size: cp.size,
                    from: self.last_good,
                });
            } else if *ok {
                self.report.checkpoints_verified += 1;
                self.last_good = cp.size;
            }
            self.next_checkpoint += 1;
        }
    }

    /// Finish: checkpoints beyond the end mean a truncated log.
    pub fn finish(mut self) -> Report {
        let entries = self.report.entries;
        for (cp, _) in &self.checkpoints[self.next_checkpoint.min(self.checkpoints.len())..] {
            if cp.size > entries {
                self.report.problems.push(Problem::Truncated {
                    size: cp.size,
                    entries,
                });
                break;
            }
        }
        self.report.root = hex::encode(self.tree.root());
        self.report
    }
}

fn is_sequence(p: &Problem) -> bool {
    matches!(p, Problem::Sequence { .. })
}

/// Check a checkpoint's signature and that its columns match its note.
fn check_note(c: &StoredCheckpoint, verifier: &Verifier, problems: &mut Vec<Problem>) -> bool {
    match checkpoint::parse_and_verify(&c.note, verifier) {
        Ok(signed) if signed.size == c.size && signed.root == c.root => true,
        Ok(_) => {
            problems.push(Problem::CheckpointColumns { size: c.size });
            false
        }
        Err(e) => {
            // Signed by this key under another log name: the wrong name was
            // asked for. A note whose name was edited verifies under neither.
            let origin = c.note.lines().next().unwrap_or_default();
            let signed_as_other = origin != verifier.name()
                && Verifier::new(origin, *verifier.key())
                    .is_ok_and(|other| checkpoint::parse_and_verify(&c.note, &other).is_ok());
            problems.push(if signed_as_other {
                Problem::Origin {
                    size: c.size,
                    signed_as: origin.to_owned(),
                    expected: verifier.name().to_owned(),
                }
            } else {
                Problem::Signature {
                    size: c.size,
                    reason: e.to_string(),
                }
            });
            false
        }
    }
}
