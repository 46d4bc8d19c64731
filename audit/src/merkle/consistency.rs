//! Consistency proofs (RFC 9162 §2.1.4): generation from the list of leaf
//! hashes or as a list of subtrees for the caller to hash, and the
//! verification algorithm of §2.1.4.2.
//!
//! Verification checks the proof's length against the sizes before any
//! hashing, and never accepts a proof that fails to reproduce both roots.

use std::ops::Range;

use super::compact::{prefix, range_root};
use super::subtree::{consistency_len, shift_to_odd, split_point};
use super::{empty_root, node_hash, Hash, ProofError};

/// The subtrees whose roots make up the consistency proof from the tree of
/// `old_size` leaves to the tree of `new_size` leaves, in proof order.
///
/// Empty when `old_size` is 0 or equals `new_size`. Each range is a run of
/// leaf indices whose tree head is the corresponding proof hash.
pub fn consistency_subtrees(old_size: u64, new_size: u64) -> Result<Vec<Range<u64>>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    let mut path = Vec::with_capacity(consistency_len(old_size, new_size));
    let (mut lo, mut hi) = (0, new_size);
    let mut whole_old_subtree = true;
    while old_size != hi {
        let mid = lo + split_point(hi - lo);
        if old_size <= mid {
            path.push(mid..hi);
            hi = mid;
        } else {
            path.push(lo..mid);
            lo = mid;
            whole_old_subtree = false;
        }
    }
    if !whole_old_subtree {
        path.push(lo..hi);
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof from the tree of the first `old_size` leaf hashes
/// to the tree of the first `new_size` (RFC 9162 §2.1.4.1 `PROOF(m, D[n])`).
pub fn consistency_proof(
    leaf_hashes: &[Hash],
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, ProofError> {
    let subtrees = consistency_subtrees(old_size, new_size)?;
    let leaves = prefix(leaf_hashes, new_size)?;
    subtrees
        .into_iter()
        .map(|range| range_root(leaves, range))
        .collect()
}

/// Verify that `proof` shows the tree of `old_size` leaves with root
/// `old_root` to be a prefix of the tree of `new_size` leaves with root
/// `new_root` (RFC 9162 §2.1.4.2).
///
/// Equal sizes need an empty proof and equal roots; old size 0 needs an
/// empty proof and the empty root as `old_root`. When `old_size` is a power
/// of two, `old_root` is the proof's implicit first hash (RFC 9162 step 2),
/// so a wrong old root is reported as [`ProofError::NewRootMismatch`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    if old_size == new_size || old_size == 0 {
        return verify_trivial(old_size, new_size, old_root, new_root, proof);
    }
    let expected = consistency_len(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::ProofLength {
            expected,
            actual: proof.len(),
        });
    }
    let (old, new) = roots_from_proof(old_size, new_size, old_root, proof)?;
    check_root(old, old_root, |expected, computed| {
        ProofError::OldRootMismatch { expected, computed }
    })?;
    check_root(new, new_root, |expected, computed| {
        ProofError::NewRootMismatch { expected, computed }
    })
}

/// The cases the RFC leaves implicit: equal sizes, and the empty old tree.
fn verify_trivial(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if !proof.is_empty() {
        return Err(ProofError::ProofLength {
            expected: 0,
            actual: proof.len(),
        });
    }
    if old_size == 0 {
        return check_root(empty_root(), old_root, |expected, computed| {
            ProofError::OldRootMismatch { expected, computed }
        });
    }
    if old_root != new_root {
        return Err(ProofError::RootsDiffer { size: new_size });
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2 steps 2 to 7 for `0 < old_size < new_size` and a
/// proof of the right length: the old and new roots the proof leads to.
fn roots_from_proof(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    proof: &[Hash],
) -> Result<(Hash, Hash), ProofError> {
    let length_error = ProofError::ProofLength {
        expected: consistency_len(old_size, new_size),
        actual: proof.len(),
    };
    let (seed, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        proof.split_first().ok_or(length_error.clone())?
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut old, mut new) = (*seed, *seed);
    for c in rest {
        if snode == 0 {
            return Err(length_error);
        }
        if fnode & 1 == 1 || fnode == snode {
            old = node_hash(c, &old);
            new = node_hash(c, &new);
            shift_to_odd(&mut fnode, &mut snode);
        } else {
            new = node_hash(&new, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(length_error);
    }
    Ok((old, new))
}

/// `Ok` when `computed` is `expected`, else the error `mismatch` makes.
fn check_root(
    computed: Hash,
    expected: &Hash,
    mismatch: impl FnOnce(Hash, Hash) -> ProofError,
) -> Result<(), ProofError> {
    if computed == *expected {
        Ok(())
    } else {
        Err(mismatch(*expected, computed))
    }
}
