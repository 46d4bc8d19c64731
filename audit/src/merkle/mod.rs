//! RFC 6962 / RFC 9162 §2.1 Merkle tree hashing: leaf and node hashes, the
//! tree head (MTH), an incremental compact-range builder, and inclusion and
//! consistency proofs with their verifiers.
//!
//! Everything here is a pure function over bytes: no storage, no I/O, no
//! allocation sized by a number the caller did not back with data. Nothing
//! here panics on any input; bad proofs and impossible sizes come back as a
//! [`ProofError`].
//!
//! The verifiers follow RFC 9162 §2.1.3.2 (inclusion) and §2.1.4.2
//! (consistency) step for step. They prove that a leaf or an old root fits
//! a `(size, root)` pair; they do not prove that `size` belongs to `root`.
//! Bind the two by checking them against a signed checkpoint.

mod compact;
mod consistency;
mod error;
mod hash;
mod inclusion;
mod subtree;

pub use compact::{root, CompactRange};
pub use consistency::{consistency_proof, consistency_subtrees, verify_consistency};
pub use error::ProofError;
pub use hash::{empty_root, leaf_hash, node_hash, Hash};
pub use inclusion::{
    inclusion_proof, inclusion_subtrees, root_from_inclusion_proof, verify_inclusion,
};
