//! The tree head (RFC 9162 §2.1.1 MTH) and an incremental builder that
//! appends leaf hashes one at a time and keeps only the roots of the perfect
//! subtrees covering the leaves so far (a compact range starting at 0).
//!
//! Memory is O(log n) whatever the size; appending is amortised one node
//! hash per leaf. It never reads back a leaf it was given.

use std::ops::Range;

use super::{empty_root, node_hash, Hash, ProofError};

/// Leaves appended so far, folded into the roots of their perfect subtrees.
///
/// After `n` pushes it holds one hash per set bit of `n`, largest subtree
/// first, and [`CompactRange::root`] is the RFC 9162 tree head of those `n`
/// leaves.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactRange {
    size: u64,
    subtrees: Vec<Hash>,
}

impl CompactRange {
    /// An empty range (tree size 0).
    pub fn new() -> CompactRange {
        CompactRange::default()
    }

    /// A range restored from its size and subtree roots (as
    /// [`CompactRange::subtrees`] gave them); `None` unless there is one
    /// subtree per set bit of `size`.
    pub fn from_parts(size: u64, subtrees: Vec<Hash>) -> Option<CompactRange> {
        (subtrees.len() == size.count_ones() as usize).then_some(CompactRange { size, subtrees })
    }

    /// Append the next leaf hash.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut hash = leaf_hash;
        let mut size = self.size;
        while size & 1 == 1 {
            let Some(left) = self.subtrees.pop() else {
                break;
            };
            hash = node_hash(&left, &hash);
            size >>= 1;
        }
        self.subtrees.push(hash);
        self.size = self.size.saturating_add(1);
    }

    /// Number of leaves appended.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when no leaf has been appended.
    pub fn is_empty(&self) -> bool {
        self.size == 0
    }

    /// Roots of the perfect subtrees covering the leaves, largest first.
    pub fn subtrees(&self) -> &[Hash] {
        &self.subtrees
    }

    /// The tree head of the leaves appended so far (the empty root for none).
    pub fn root(&self) -> Hash {
        let mut rest = self.subtrees.iter().rev();
        let Some(last) = rest.next() else {
            return empty_root();
        };
        rest.fold(*last, |right, left| node_hash(left, &right))
    }
}

impl Extend<Hash> for CompactRange {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, leaf_hashes: I) {
        for leaf in leaf_hashes {
            self.push(leaf);
        }
    }
}

impl FromIterator<Hash> for CompactRange {
    fn from_iter<I: IntoIterator<Item = Hash>>(leaf_hashes: I) -> CompactRange {
        let mut range = CompactRange::new();
        range.extend(leaf_hashes);
        range
    }
}

/// The tree head MTH of a list of leaf hashes (RFC 9162 §2.1.1).
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    leaf_hashes.iter().copied().collect::<CompactRange>().root()
}

/// The first `size` leaf hashes, or [`ProofError::TooFewLeaves`].
pub(super) fn prefix(leaf_hashes: &[Hash], size: u64) -> Result<&[Hash], ProofError> {
    usize::try_from(size)
        .ok()
        .and_then(|n| leaf_hashes.get(..n))
        .ok_or(ProofError::TooFewLeaves {
            size,
            available: leaf_hashes.len(),
        })
}

/// The tree head of the leaves in `range`, which must lie within `leaves`.
pub(super) fn range_root(leaves: &[Hash], range: Range<u64>) -> Result<Hash, ProofError> {
    let slice = usize::try_from(range.start)
        .ok()
        .zip(usize::try_from(range.end).ok())
        .and_then(|(start, end)| leaves.get(start..end))
        .ok_or(ProofError::TooFewLeaves {
            size: range.end,
            available: leaves.len(),
        })?;
    Ok(root(slice))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::leaf_hash;

    #[test]
    fn empty_range_has_empty_root() {
        assert_eq!(CompactRange::new().root(), empty_root());
        assert!(CompactRange::new().is_empty());
    }

    #[test]
    fn holds_one_subtree_per_set_bit() {
        let mut range = CompactRange::new();
        for i in 0..100u64 {
            range.push(leaf_hash(&i.to_be_bytes()));
            assert_eq!(range.subtrees().len() as u32, range.size().count_ones());
        }
    }

    #[test]
    fn two_leaves_make_one_node() {
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        assert_eq!(root(&[a, b]), node_hash(&a, &b));
        assert_eq!(root(&[a]), a);
    }
}
