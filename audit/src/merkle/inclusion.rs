//! Inclusion proofs (RFC 9162 §2.1.3): generation from the list of leaf
//! hashes or as a list of subtrees for the caller to hash, and the
//! verification algorithm of §2.1.3.2.
//!
//! Verification never trusts the proof's length: it is checked against the
//! length the index and size call for before any hashing.

use std::ops::Range;

use super::compact::{prefix, range_root};
use super::subtree::{inclusion_len, shift_to_odd, split_point};
use super::{node_hash, Hash, ProofError};

/// The subtrees whose roots make up the inclusion proof of leaf `index` in
/// the tree of `size` leaves, in proof order (nearest the leaf first).
///
/// Each range is a run of leaf indices `start..end`; the proof's hashes are
/// the tree heads of those runs. Use this to build a proof from cached
/// subtree roots instead of the whole list of leaf hashes.
pub fn inclusion_subtrees(index: u64, size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut path = Vec::with_capacity(inclusion_len(index, size));
    let (mut lo, mut hi) = (0, size);
    while hi - lo > 1 {
        let mid = lo + split_point(hi - lo);
        if index < mid {
            path.push(mid..hi);
            hi = mid;
        } else {
            path.push(lo..mid);
            lo = mid;
        }
    }
    path.reverse();
    Ok(path)
}

/// The inclusion proof of leaf `index` in the tree made of the first `size`
/// of `leaf_hashes` (RFC 9162 §2.1.3.1 `PATH(m, D[n])`).
pub fn inclusion_proof(
    leaf_hashes: &[Hash],
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError> {
    let leaves = prefix(leaf_hashes, size)?;
    inclusion_subtrees(index, size)?
        .into_iter()
        .map(|range| range_root(leaves, range))
        .collect()
}

/// The root that `proof` leads to from `leaf_hash` at `index` in a tree of
/// `size` leaves (RFC 9162 §2.1.3.2 steps 1 to 4).
pub fn root_from_inclusion_proof(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
) -> Result<Hash, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_len(index, size);
    let length_error = ProofError::ProofLength {
        expected,
        actual: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut hash = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(length_error);
        }
        if fnode & 1 == 1 || fnode == snode {
            hash = node_hash(p, &hash);
            shift_to_odd(&mut fnode, &mut snode);
        } else {
            hash = node_hash(&hash, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(length_error);
    }
    Ok(hash)
}

/// Verify that `proof` shows `leaf_hash` at `index` in the tree of `size`
/// leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    let computed = root_from_inclusion_proof(leaf_hash, index, size, proof)?;
    if computed != *root {
        return Err(ProofError::RootMismatch {
            expected: *root,
            computed,
        });
    }
    Ok(())
}
