//! The one error type of [`crate::merkle`]: why a proof could not be made
//! or did not verify.
//!
//! Every variant carries the sizes, indices or hashes involved, never text
//! from the input.

use super::Hash;

/// Why a Merkle proof could not be generated or failed to verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is not in a tree of size {size}")]
    IndexOutOfRange {
        /// The leaf index asked for.
        index: u64,
        /// The tree size it was asked in.
        size: u64,
    },
    /// A consistency proof was asked from a larger tree to a smaller one.
    #[error("old tree size {old_size} is larger than new tree size {new_size}")]
    SizeOrder {
        /// The old (claimed smaller) tree size.
        old_size: u64,
        /// The new (claimed larger) tree size.
        new_size: u64,
    },
    /// Proof generation was given fewer leaf hashes than the tree size.
    #[error("a tree of size {size} needs {size} leaf hashes, only {available} given")]
    TooFewLeaves {
        /// The tree size asked for.
        size: u64,
        /// How many leaf hashes were supplied.
        available: usize,
    },
    /// The proof has too many or too few hashes for the sizes claimed.
    #[error("proof has {actual} hashes, the sizes claimed need {expected}")]
    ProofLength {
        /// How many hashes the sizes call for.
        expected: usize,
        /// How many hashes the proof has.
        actual: usize,
    },
    /// An inclusion proof leads to a different root.
    #[error("inclusion proof leads to root {}, expected {}", hex::encode(.computed), hex::encode(.expected))]
    RootMismatch {
        /// The root the proof was checked against.
        expected: Hash,
        /// The root the proof leads to.
        computed: Hash,
    },
    /// A consistency proof does not lead to the old root.
    #[error("consistency proof leads to old root {}, expected {}", hex::encode(.computed), hex::encode(.expected))]
    OldRootMismatch {
        /// The old root the proof was checked against.
        expected: Hash,
        /// The old root the proof leads to.
        computed: Hash,
    },
    /// A consistency proof does not lead to the new root.
    #[error("consistency proof leads to new root {}, expected {}", hex::encode(.computed), hex::encode(.expected))]
    NewRootMismatch {
        /// The new root the proof was checked against.
        expected: Hash,
        /// The new root the proof leads to.
        computed: Hash,
    },
    /// Two trees of the same size were claimed with different roots.
    #[error("two trees of size {size} have different roots")]
    RootsDiffer {
        /// The common tree size.
        size: u64,
    },
}
