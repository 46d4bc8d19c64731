//! Negative tests for the Merkle proof verifiers: every valid inclusion and
//! consistency proof of every tree up to 64 leaves is corrupted every way we
//! can think of (bit flips at both ends of every node, dropped, added,
//! duplicated and swapped nodes, wrong index, wrong sizes, wrong roots,
//! wrong leaf, swapped roots) and each corruption must be rejected with the
//! error that names what is wrong.
//!
//! One honest exception is asserted rather than hidden: a proof does not
//! bind the tree size to the root. When a wrong size (or index) gives the
//! verifier exactly the same hashing steps as the true one, the proof still
//! verifies; the test computes that shape from the RFC's recursive
//! definition and requires acceptance exactly then. The size is bound to the
//! root by the signed checkpoint, not by the proof.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use audit::merkle::{
    consistency_proof, empty_root, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_inclusion, Hash, ProofError,
};

const MAX: u64 = 64;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn flip(hash: &Hash, byte: usize, bit: u8) -> Hash {
    let mut h = *hash;
    h[byte] ^= 1 << bit;
    h
}

/// First and last byte, lowest and highest bit.
const FLIPS: [(usize, u8); 4] = [(0, 0), (0, 7), (31, 0), (31, 7)];

/// Tallies outcomes so a failure says which corruption slipped through.
#[derive(Default)]
struct Tally {
    rejected: BTreeMap<&'static str, usize>,
    accepted_same_shape: usize,
}

impl Tally {
    fn record(&mut self, err: &ProofError) {
        let name = match err {
            ProofError::IndexOutOfRange { .. } => "IndexOutOfRange",
            ProofError::SizeOrder { .. } => "SizeOrder",
            ProofError::TooFewLeaves { .. } => "TooFewLeaves",
            ProofError::ProofLength { .. } => "ProofLength",
            ProofError::RootMismatch { .. } => "RootMismatch",
            ProofError::OldRootMismatch { .. } => "OldRootMismatch",
            ProofError::NewRootMismatch { .. } => "NewRootMismatch",
            ProofError::RootsDiffer { .. } => "RootsDiffer",
            _ => "other",
        };
        *self.rejected.entry(name).or_default() += 1;
    }

    fn total(&self) -> usize {
        self.rejected.values().sum()
    }
}

/// Assert `result` is an error accepted by `allowed`, and count it.
fn rejected(
    tally: &mut Tally,
    result: Result<(), ProofError>,
    allowed: fn(&ProofError) -> bool,
    what: &str,
) {
    match result {
        Ok(()) => panic!("accepted: {what}"),
        Err(e) if allowed(&e) => tally.record(&e),
        Err(e) => panic!("wrong error for {what}: {e:?}"),
    }
}

// ---- Proof shapes from the RFC 9162 recursive definitions ----

/// Which side a proof hash joins the running hash from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The first hash of a consistency proof: the old tree's last subtree.
    Seed,
    /// Joins from the left: H(p || r).
    Left,
    /// Joins from the right: H(r || p).
    Right,
}

fn split(n: u64) -> u64 {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// The steps of PATH(m, D[n]); `None` when `m` is not in the tree.
fn inclusion_shape(m: u64, n: u64) -> Option<Vec<Step>> {
    fn path(m: u64, n: u64) -> Vec<Step> {
        if n <= 1 {
            return Vec::new();
        }
        let k = split(n);
        let (mut p, step) = if m < k {
            (path(m, k), Step::Right)
        } else {
            (path(m - k, n - k), Step::Left)
        };
        p.push(step);
        p
    }
    (m < n).then(|| path(m, n))
}

/// How a consistency check between two sizes goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Shape {
    Backwards,
    FromEmpty,
    Equal,
    Path(Vec<Step>),
}

/// The steps of PROOF(m, D[n]).
fn consistency_shape(m: u64, n: u64) -> Shape {
    fn sub(m: u64, n: u64, whole: bool) -> Vec<Step> {
        if m == n {
            return if whole { Vec::new() } else { vec![Step::Seed] };
        }
        let k = split(n);
        let (mut p, step) = if m <= k {
            (sub(m, k, whole), Step::Right)
        } else {
            (sub(m - k, n - k, false), Step::Left)
        };
        p.push(step);
        p
    }
    match (m, n) {
        _ if m > n => Shape::Backwards,
        (0, _) => Shape::FromEmpty,
        _ if m == n => Shape::Equal,
        _ => Shape::Path(sub(m, n, true)),
    }
}

// ---- Proof mutations ----

fn flipped(proof: &[Hash]) -> Vec<(String, Vec<Hash>)> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        for (byte, bit) in FLIPS {
            let mut p = proof.to_vec();
            p[i] = flip(&p[i], byte, bit);
            out.push((format!("proof[{i}] byte {byte} bit {bit} flipped"), p));
        }
    }
    out
}

fn resized(proof: &[Hash], extras: &[Hash]) -> Vec<(String, Vec<Hash>)> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        let mut p = proof.to_vec();
        p.remove(i);
        out.push((format!("proof[{i}] dropped"), p));
        let mut p = proof.to_vec();
        p.insert(i, proof[i]);
        out.push((format!("proof[{i}] duplicated"), p));
    }
    for i in 0..=proof.len() {
        for (e, extra) in extras.iter().enumerate() {
            let mut p = proof.to_vec();
            p.insert(i, *extra);
            out.push((format!("extra hash {e} inserted at {i}"), p));
        }
    }
    if !proof.is_empty() {
        out.push(("proof emptied".into(), Vec::new()));
    }
    out
}

fn swapped(proof: &[Hash]) -> Vec<(String, Vec<Hash>)> {
    let mut out = Vec::new();
    for i in 0..proof.len() {
        for j in i + 1..proof.len() {
            if proof[i] != proof[j] {
                let mut p = proof.to_vec();
                p.swap(i, j);
                out.push((format!("proof[{i}] and proof[{j}] swapped"), p));
            }
        }
    }
    out
}

// ---- Inclusion ----

fn is_root_mismatch(e: &ProofError) -> bool {
    matches!(e, ProofError::RootMismatch { .. })
}

fn is_length(e: &ProofError) -> bool {
    matches!(e, ProofError::ProofLength { .. })
}

fn is_inclusion_param(e: &ProofError) -> bool {
    matches!(
        e,
        ProofError::IndexOutOfRange { .. }
            | ProofError::ProofLength { .. }
            | ProofError::RootMismatch { .. }
    )
}

struct Inclusion<'a> {
    leaf: Hash,
    index: u64,
    size: u64,
    proof: &'a [Hash],
    root: Hash,
}

impl Inclusion<'_> {
    fn check(&self, proof: &[Hash]) -> Result<(), ProofError> {
        verify_inclusion(&self.leaf, self.index, self.size, proof, &self.root)
    }

    fn what(&self, how: &str) -> String {
        format!("inclusion of {} in {}: {how}", self.index, self.size)
    }
}

/// A wrong index or size claim: rejected, unless the RFC steps are the
/// same as for the true claim, in which case it must verify.
fn wrong_claim(tally: &mut Tally, c: &Inclusion<'_>, index: u64, size: u64) {
    let result = verify_inclusion(&c.leaf, index, size, c.proof, &c.root);
    let same = inclusion_shape(index, size) == inclusion_shape(c.index, c.size);
    let what = c.what(&format!("claimed as {index} in {size}"));
    if same {
        assert_eq!(result, Ok(()), "same steps must verify: {what}");
        tally.accepted_same_shape += 1;
    } else {
        rejected(tally, result, is_inclusion_param, &what);
    }
}

fn corrupt_inclusion(tally: &mut Tally, c: &Inclusion<'_>, roots: &[Hash], all: &[Hash]) {
    for (how, p) in flipped(c.proof).into_iter().chain(swapped(c.proof)) {
        rejected(tally, c.check(&p), is_root_mismatch, &c.what(&how));
    }
    let extras = [[0u8; 32], c.root, c.leaf, empty_root()];
    for (how, p) in resized(c.proof, &extras) {
        rejected(tally, c.check(&p), is_length, &c.what(&how));
    }
    if c.index > 0 {
        wrong_claim(tally, c, c.index - 1, c.size);
    }
    wrong_claim(tally, c, c.index + 1, c.size);
    wrong_claim(tally, c, c.index, c.size - 1);
    wrong_claim(tally, c, c.index, c.size + 1);
    wrong_claim(tally, c, c.index, c.size * 2);
    wrong_claim(tally, c, c.index, c.size / 2);
    let mut wrong_roots: Vec<Hash> = FLIPS.iter().map(|&(b, i)| flip(&c.root, b, i)).collect();
    wrong_roots.extend([
        roots[c.size as usize - 1],
        roots[c.size as usize + 1],
        empty_root(),
    ]);
    for (i, wrong) in wrong_roots.iter().enumerate() {
        let result = verify_inclusion(&c.leaf, c.index, c.size, c.proof, wrong);
        rejected(
            tally,
            result,
            is_root_mismatch,
            &c.what(&format!("wrong root {i}")),
        );
    }
    let mut wrong_leaves: Vec<Hash> = FLIPS.iter().map(|&(b, i)| flip(&c.leaf, b, i)).collect();
    wrong_leaves.push(all[(c.index as usize + 1) % all.len()]);
    wrong_leaves.push(leaf_hash(&c.leaf));
    wrong_leaves.push(c.root);
    wrong_leaves.retain(|w| *w != c.leaf);
    for (i, wrong) in wrong_leaves.iter().enumerate() {
        let result = verify_inclusion(wrong, c.index, c.size, c.proof, &c.root);
        rejected(
            tally,
            result,
            is_root_mismatch,
            &c.what(&format!("wrong leaf {i}")),
        );
    }
}

#[test]
fn corrupted_inclusion_proofs_are_rejected() {
    let all = leaves(2 * MAX + 1);
    let roots: Vec<Hash> = (0..=2 * MAX as usize).map(|n| root(&all[..n])).collect();
    let mut tally = Tally::default();
    let mut proofs = 0;
    for size in 1..=MAX {
        for index in 0..size {
            let proof = inclusion_proof(&all, index, size).unwrap();
            let c = Inclusion {
                leaf: all[index as usize],
                index,
                size,
                proof: &proof,
                root: roots[size as usize],
            };
            c.check(&proof).unwrap();
            corrupt_inclusion(&mut tally, &c, &roots, &all);
            proofs += 1;
        }
    }
    eprintln!(
        "inclusion: {proofs} proofs, {} corruptions rejected {:?}, {} same-shape claims accepted",
        tally.total(),
        tally.rejected,
        tally.accepted_same_shape
    );
    assert!(tally.total() > 100_000);
}

// ---- Consistency ----

fn is_root_pair(e: &ProofError) -> bool {
    matches!(
        e,
        ProofError::OldRootMismatch { .. } | ProofError::NewRootMismatch { .. }
    )
}

fn is_old_root(e: &ProofError) -> bool {
    matches!(
        e,
        ProofError::OldRootMismatch { .. } | ProofError::RootsDiffer { .. }
    )
}

/// When the old size is a power of two its root is the proof's implicit
/// first hash, so RFC 9162 can only notice a wrong old root at the new root.
fn is_old_root_seed(e: &ProofError) -> bool {
    is_old_root(e) || matches!(e, ProofError::NewRootMismatch { .. })
}

fn is_new_root(e: &ProofError) -> bool {
    matches!(
        e,
        ProofError::NewRootMismatch { .. } | ProofError::RootsDiffer { .. }
    )
}

fn is_consistency_param(e: &ProofError) -> bool {
    matches!(
        e,
        ProofError::SizeOrder { .. }
            | ProofError::ProofLength { .. }
            | ProofError::OldRootMismatch { .. }
            | ProofError::NewRootMismatch { .. }
            | ProofError::RootsDiffer { .. }
    )
}

struct Consistency<'a> {
    old: u64,
    new: u64,
    old_root: Hash,
    new_root: Hash,
    proof: &'a [Hash],
}

impl Consistency<'_> {
    fn check(&self, proof: &[Hash]) -> Result<(), ProofError> {
        verify_consistency(self.old, self.new, &self.old_root, &self.new_root, proof)
    }

    fn what(&self, how: &str) -> String {
        format!("consistency {} -> {}: {how}", self.old, self.new)
    }
}

/// A wrong size claim: rejected, unless the RFC steps are the same.
fn wrong_sizes(tally: &mut Tally, c: &Consistency<'_>, old: u64, new: u64) {
    let result = verify_consistency(old, new, &c.old_root, &c.new_root, c.proof);
    let same = consistency_shape(old, new) == consistency_shape(c.old, c.new);
    let what = c.what(&format!("claimed as {old} -> {new}"));
    if same {
        assert_eq!(result, Ok(()), "same steps must verify: {what}");
        tally.accepted_same_shape += 1;
    } else {
        rejected(tally, result, is_consistency_param, &what);
    }
}

fn corrupt_consistency(tally: &mut Tally, c: &Consistency<'_>, roots: &[Hash]) {
    for (how, p) in flipped(c.proof).into_iter().chain(swapped(c.proof)) {
        rejected(tally, c.check(&p), is_root_pair, &c.what(&how));
    }
    let extras = [[0u8; 32], c.old_root, c.new_root, empty_root()];
    for (how, p) in resized(c.proof, &extras) {
        rejected(tally, c.check(&p), is_length, &c.what(&how));
    }
    if c.old > 0 {
        wrong_sizes(tally, c, c.old - 1, c.new);
    }
    wrong_sizes(tally, c, c.old + 1, c.new);
    if c.new > 0 {
        wrong_sizes(tally, c, c.old, c.new - 1);
    }
    wrong_sizes(tally, c, c.old, c.new + 1);
    if c.new > 0 {
        wrong_sizes(tally, c, c.old, c.new * 2);
    }
    wrong_roots(tally, c, roots);
}

fn wrong_roots(tally: &mut Tally, c: &Consistency<'_>, roots: &[Hash]) {
    let others = |r: &Hash, n: u64| {
        let mut v: Vec<Hash> = FLIPS.iter().map(|&(b, i)| flip(r, b, i)).collect();
        v.push(roots[n as usize + 1]);
        if n > 0 {
            v.push(roots[n as usize - 1]);
        }
        v
    };
    let old_root_error = if c.old.is_power_of_two() && c.old < c.new {
        is_old_root_seed
    } else {
        is_old_root
    };
    for (i, wrong) in others(&c.old_root, c.old).iter().enumerate() {
        let result = verify_consistency(c.old, c.new, wrong, &c.new_root, c.proof);
        rejected(
            tally,
            result,
            old_root_error,
            &c.what(&format!("wrong old root {i}")),
        );
    }
    // From the empty tree every new tree is consistent: nothing to check.
    if c.old > 0 {
        for (i, wrong) in others(&c.new_root, c.new).iter().enumerate() {
            let result = verify_consistency(c.old, c.new, &c.old_root, wrong, c.proof);
            rejected(
                tally,
                result,
                is_new_root,
                &c.what(&format!("wrong new root {i}")),
            );
        }
    } else {
        let result = verify_consistency(0, c.new, &c.old_root, &[7; 32], c.proof);
        assert_eq!(
            result,
            Ok(()),
            "{}",
            c.what("any root extends the empty tree")
        );
    }
    if c.old_root != c.new_root {
        let result = verify_consistency(c.old, c.new, &c.new_root, &c.old_root, c.proof);
        rejected(tally, result, old_root_error, &c.what("roots swapped"));
    }
}

#[test]
fn corrupted_consistency_proofs_are_rejected() {
    let all = leaves(2 * MAX + 1);
    let roots: Vec<Hash> = (0..=2 * MAX as usize).map(|n| root(&all[..n])).collect();
    let mut tally = Tally::default();
    let mut proofs = 0;
    for new in 0..=MAX {
        for old in 0..=new {
            let proof = consistency_proof(&all, old, new).unwrap();
            let c = Consistency {
                old,
                new,
                old_root: roots[old as usize],
                new_root: roots[new as usize],
                proof: &proof,
            };
            c.check(&proof).unwrap();
            corrupt_consistency(&mut tally, &c, &roots);
            proofs += 1;
        }
    }
    eprintln!(
        "consistency: {proofs} proofs, {} corruptions rejected {:?}, {} same-shape claims accepted",
        tally.total(),
        tally.rejected,
        tally.accepted_same_shape
    );
    assert!(tally.total() > 100_000);
}

#[test]
fn shape_model_agrees_with_known_cases() {
    // Leaf 0 of 5 and of 6 take the same three right-hand steps: the proof
    // cannot tell the sizes apart (see the module comment).
    assert_eq!(inclusion_shape(0, 5), inclusion_shape(0, 6));
    assert_ne!(inclusion_shape(4, 5), inclusion_shape(4, 6));
    assert_eq!(inclusion_shape(5, 5), None);
    assert_eq!(consistency_shape(4, 5), consistency_shape(4, 6));
    assert_eq!(
        consistency_shape(6, 8),
        Shape::Path(vec![Step::Seed, Step::Right, Step::Left])
    );
    assert_eq!(consistency_shape(3, 2), Shape::Backwards);
}
