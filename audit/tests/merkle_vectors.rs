//! Known-answer and property tests for `audit::merkle`: the published RFC
//! 6962 test vectors used by Certificate Transparency implementations (the
//! 8-leaf tree, its roots and its inclusion and consistency proofs), then
//! every proof of every tree up to 64 leaves checked against a
//! straightforward recursive reference written from RFC 9162 §2.1.
//!
//! The reference hashes with `sha2` directly and shares no code with the
//! crate; it must never be "fixed" to agree with the crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use audit::merkle::{
    consistency_proof, consistency_subtrees, empty_root, inclusion_proof, inclusion_subtrees,
    leaf_hash, node_hash, root, root_from_inclusion_proof, verify_consistency, verify_inclusion,
    CompactRange, Hash, ProofError,
};
use sha2::{Digest, Sha256};

/// The leaves of the RFC 6962 test tree (hex).
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots of the test tree at sizes 1 to 8.
const ROOTS: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// SHA-256 of the empty string: the root of the empty tree.
const EMPTY_ROOT: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// (leaf index, tree size, proof): the Certificate Transparency inclusion
/// vectors (published 1-based as leaves 1, 6, 3, 2), plus the size-8 proofs
/// of leaves 4, 6 and 7 from another public suite.
const INCLUSION: &[(u64, u64, &[&str])] = &[
    (0, 1, &[]),
    (
        0,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        4,
        8,
        &[
            "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        6,
        8,
        &[
            "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        7,
        8,
        &[
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// (old size, new size, proof): the Certificate Transparency consistency
/// vectors.
const CONSISTENCY: &[(u64, u64, &[&str])] = &[
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

fn h(hex_text: &str) -> Hash {
    hex::decode(hex_text).unwrap().try_into().unwrap()
}

fn hs(hex_texts: &[&str]) -> Vec<Hash> {
    hex_texts.iter().map(|t| h(t)).collect()
}

fn vector_leaf_hashes() -> Vec<Hash> {
    LEAVES
        .iter()
        .map(|l| leaf_hash(&hex::decode(l).unwrap()))
        .collect()
}

fn numbered_leaf_hashes(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

// ---- Reference implementation, written from RFC 9162 §2.1 directly ----

fn ref_leaf(data: &[u8]) -> Hash {
    let mut s = Sha256::new();
    s.update([0u8]);
    s.update(data);
    s.finalize().into()
}

fn ref_node(l: &Hash, r: &Hash) -> Hash {
    let mut s = Sha256::new();
    s.update([1u8]);
    s.update(l);
    s.update(r);
    s.finalize().into()
}

/// Largest power of two strictly less than n (n >= 2), by counting.
fn ref_k(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

/// MTH(D[n]).
fn ref_mth(d: &[Hash]) -> Hash {
    match d.len() {
        0 => Sha256::digest([]).into(),
        1 => d[0],
        n => {
            let k = ref_k(n);
            ref_node(&ref_mth(&d[..k]), &ref_mth(&d[k..]))
        }
    }
}

/// PATH(m, D[n]).
fn ref_path(m: usize, d: &[Hash]) -> Vec<Hash> {
    let n = d.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = ref_k(n);
    if m < k {
        let mut p = ref_path(m, &d[..k]);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_path(m - k, &d[k..]);
        p.push(ref_mth(&d[..k]));
        p
    }
}

/// SUBPROOF(m, D[n], b).
fn ref_subproof(m: usize, d: &[Hash], b: bool) -> Vec<Hash> {
    let n = d.len();
    if m == n {
        return if b { Vec::new() } else { vec![ref_mth(d)] };
    }
    let k = ref_k(n);
    if m <= k {
        let mut p = ref_subproof(m, &d[..k], b);
        p.push(ref_mth(&d[k..]));
        p
    } else {
        let mut p = ref_subproof(m - k, &d[k..], false);
        p.push(ref_mth(&d[..k]));
        p
    }
}

/// PROOF(m, D[n]), empty for m = 0 and m = n.
fn ref_proof(m: usize, d: &[Hash]) -> Vec<Hash> {
    if m == 0 || m == d.len() {
        return Vec::new();
    }
    ref_subproof(m, d, true)
}

// ---- Published vectors ----

#[test]
fn empty_root_is_sha256_of_nothing() {
    assert_eq!(empty_root(), h(EMPTY_ROOT));
    assert_eq!(root(&[]), h(EMPTY_ROOT));
    assert_eq!(CompactRange::new().root(), h(EMPTY_ROOT));
}

#[test]
fn leaf_and_node_hashes_use_rfc_prefixes() {
    assert_eq!(leaf_hash(b""), h(ROOTS[0]));
    for leaf in LEAVES {
        let data = hex::decode(leaf).unwrap();
        assert_eq!(leaf_hash(&data), ref_leaf(&data));
    }
    let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
    assert_eq!(node_hash(&a, &b), ref_node(&a, &b));
    assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
}

#[test]
fn roots_match_published_vectors() {
    let leaves = vector_leaf_hashes();
    let mut incremental = CompactRange::new();
    for (i, expected) in ROOTS.iter().enumerate() {
        let size = i + 1;
        incremental.push(leaves[i]);
        assert_eq!(root(&leaves[..size]), h(expected), "root, size {size}");
        assert_eq!(
            incremental.root(),
            h(expected),
            "compact range, size {size}"
        );
        assert_eq!(incremental.size(), size as u64);
        assert_eq!(
            ref_mth(&leaves[..size]),
            h(expected),
            "reference, size {size}"
        );
    }
}

#[test]
fn inclusion_proofs_match_published_vectors() {
    let leaves = vector_leaf_hashes();
    for &(index, size, proof) in INCLUSION {
        let expected = hs(proof);
        let got = inclusion_proof(&leaves, index, size).unwrap();
        assert_eq!(got, expected, "inclusion of {index} in {size}");
        let root = h(ROOTS[size as usize - 1]);
        verify_inclusion(&leaves[index as usize], index, size, &expected, &root).unwrap();
        assert_eq!(
            ref_path(index as usize, &leaves[..size as usize]),
            expected,
            "reference, inclusion of {index} in {size}"
        );
    }
}

#[test]
fn consistency_proofs_match_published_vectors() {
    let leaves = vector_leaf_hashes();
    for &(old, new, proof) in CONSISTENCY {
        let expected = hs(proof);
        let got = consistency_proof(&leaves, old, new).unwrap();
        assert_eq!(got, expected, "consistency {old} -> {new}");
        let (old_root, new_root) = (h(ROOTS[old as usize - 1]), h(ROOTS[new as usize - 1]));
        verify_consistency(old, new, &old_root, &new_root, &expected).unwrap();
        assert_eq!(
            ref_proof(old as usize, &leaves[..new as usize]),
            expected,
            "reference, consistency {old} -> {new}"
        );
    }
}

// ---- Properties over every small tree ----

#[test]
fn roots_agree_with_reference_up_to_300() {
    let leaves = numbered_leaf_hashes(300);
    let mut incremental = CompactRange::new();
    assert_eq!(incremental.root(), ref_mth(&[]));
    for size in 1..=leaves.len() {
        incremental.push(leaves[size - 1]);
        let expected = ref_mth(&leaves[..size]);
        assert_eq!(incremental.root(), expected, "compact range, size {size}");
        assert_eq!(root(&leaves[..size]), expected, "root, size {size}");
    }
    let collected: CompactRange = leaves.iter().copied().collect();
    assert_eq!(collected, incremental);
}

#[test]
fn every_inclusion_proof_up_to_64_verifies() {
    let leaves = numbered_leaf_hashes(64);
    for size in 1..=64u64 {
        let tree = &leaves[..size as usize];
        let tree_root = ref_mth(tree);
        for index in 0..size {
            let proof = inclusion_proof(&leaves, index, size).unwrap();
            assert_eq!(proof, ref_path(index as usize, tree), "{index} in {size}");
            let leaf = &leaves[index as usize];
            verify_inclusion(leaf, index, size, &proof, &tree_root).unwrap();
            assert_eq!(
                root_from_inclusion_proof(leaf, index, size, &proof).unwrap(),
                tree_root
            );
            let by_subtrees: Vec<Hash> = inclusion_subtrees(index, size)
                .unwrap()
                .into_iter()
                .map(|r| ref_mth(&leaves[r.start as usize..r.end as usize]))
                .collect();
            assert_eq!(by_subtrees, proof, "subtrees of {index} in {size}");
        }
    }
}

#[test]
fn every_consistency_proof_up_to_64_verifies() {
    let leaves = numbered_leaf_hashes(64);
    let roots: Vec<Hash> = (0..=64).map(|n| ref_mth(&leaves[..n])).collect();
    for new in 0..=64u64 {
        for old in 0..=new {
            let proof = consistency_proof(&leaves, old, new).unwrap();
            let reference = ref_proof(old as usize, &leaves[..new as usize]);
            assert_eq!(proof, reference, "consistency {old} -> {new}");
            verify_consistency(old, new, &roots[old as usize], &roots[new as usize], &proof)
                .unwrap_or_else(|e| panic!("consistency {old} -> {new}: {e}"));
            let by_subtrees: Vec<Hash> = consistency_subtrees(old, new)
                .unwrap()
                .into_iter()
                .map(|r| ref_mth(&leaves[r.start as usize..r.end as usize]))
                .collect();
            assert_eq!(by_subtrees, proof, "subtrees {old} -> {new}");
        }
    }
}

#[test]
fn proofs_in_larger_trees_verify() {
    let leaves = numbered_leaf_hashes(1100);
    for size in [127u64, 128, 129, 1023, 1024, 1025, 1100] {
        let tree_root = root(&leaves[..size as usize]);
        assert_eq!(tree_root, ref_mth(&leaves[..size as usize]));
        for index in [0, 1, size / 3, size / 2, size - 2, size - 1] {
            let proof = inclusion_proof(&leaves, index, size).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &proof, &tree_root).unwrap();
        }
        for old in [1, 2, 3, size / 2, size - 1] {
            let old_root = root(&leaves[..old as usize]);
            let proof = consistency_proof(&leaves, old, size).unwrap();
            assert_eq!(proof, ref_proof(old as usize, &leaves[..size as usize]));
            verify_consistency(old, size, &old_root, &tree_root, &proof).unwrap();
        }
    }
}

// ---- Edge cases named by RFC 9162 ----

#[test]
fn inclusion_edge_cases() {
    let leaves = numbered_leaf_hashes(4);
    let r = root(&leaves);
    assert_eq!(
        inclusion_proof(&leaves, 4, 4),
        Err(ProofError::IndexOutOfRange { index: 4, size: 4 })
    );
    assert_eq!(
        inclusion_proof(&leaves, 0, 0),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        inclusion_proof(&leaves, 0, 5),
        Err(ProofError::TooFewLeaves {
            size: 5,
            available: 4
        })
    );
    assert_eq!(
        verify_inclusion(&leaves[0], 4, 4, &[], &r),
        Err(ProofError::IndexOutOfRange { index: 4, size: 4 })
    );
    assert_eq!(
        verify_inclusion(&leaves[0], 0, 0, &[], &empty_root()),
        Err(ProofError::IndexOutOfRange { index: 0, size: 0 })
    );
    assert_eq!(
        verify_inclusion(&leaves[0], u64::MAX, u64::MAX, &[], &r),
        Err(ProofError::IndexOutOfRange {
            index: u64::MAX,
            size: u64::MAX
        })
    );
    // A one-leaf tree: the empty proof, and the leaf hash is the root.
    assert_eq!(inclusion_proof(&leaves, 0, 1).unwrap(), Vec::<Hash>::new());
    verify_inclusion(&leaves[0], 0, 1, &[], &leaves[0]).unwrap();
    assert_eq!(
        verify_inclusion(&leaves[0], 0, 1, &[leaves[1]], &leaves[0]),
        Err(ProofError::ProofLength {
            expected: 0,
            actual: 1
        })
    );
}

#[test]
fn inclusion_at_the_largest_sizes_does_not_overflow() {
    let leaf = leaf_hash(b"x");
    let proof = vec![leaf; 64];
    let result = verify_inclusion(&leaf, u64::MAX - 1, u64::MAX, &proof[..63], &leaf);
    assert!(
        matches!(result, Err(ProofError::RootMismatch { .. })),
        "{result:?}"
    );
    let result = verify_inclusion(&leaf, 0, u64::MAX, &proof[..1], &leaf);
    assert!(matches!(
        result,
        Err(ProofError::ProofLength {
            expected: 64,
            actual: 1
        })
    ));
}

#[test]
fn consistency_edge_cases() {
    let leaves = numbered_leaf_hashes(8);
    let r = |n: usize| root(&leaves[..n]);
    let other = leaf_hash(b"other");
    // old_size > new_size.
    assert_eq!(
        consistency_proof(&leaves, 5, 4),
        Err(ProofError::SizeOrder {
            old_size: 5,
            new_size: 4
        })
    );
    assert_eq!(
        verify_consistency(5, 4, &r(5), &r(4), &[]),
        Err(ProofError::SizeOrder {
            old_size: 5,
            new_size: 4
        })
    );
    // Too few leaf hashes to generate from.
    assert_eq!(
        consistency_proof(&leaves, 3, 9),
        Err(ProofError::TooFewLeaves {
            size: 9,
            available: 8
        })
    );
    // old_size == new_size: empty proof and equal roots.
    for n in [0usize, 1, 5, 8] {
        assert_eq!(
            consistency_proof(&leaves, n as u64, n as u64).unwrap(),
            Vec::<Hash>::new()
        );
        verify_consistency(n as u64, n as u64, &r(n), &r(n), &[]).unwrap();
        assert_eq!(
            verify_consistency(n as u64, n as u64, &r(n), &r(n), &[r(n)]),
            Err(ProofError::ProofLength {
                expected: 0,
                actual: 1
            })
        );
    }
    assert_eq!(
        verify_consistency(5, 5, &r(5), &other, &[]),
        Err(ProofError::RootsDiffer { size: 5 })
    );
    // old_size == 0: empty proof, the old root must be the empty root.
    assert_eq!(
        consistency_proof(&leaves, 0, 8).unwrap(),
        Vec::<Hash>::new()
    );
    verify_consistency(0, 8, &empty_root(), &r(8), &[]).unwrap();
    assert_eq!(
        verify_consistency(0, 8, &empty_root(), &r(8), &[r(8)]),
        Err(ProofError::ProofLength {
            expected: 0,
            actual: 1
        })
    );
    assert_eq!(
        verify_consistency(0, 8, &other, &r(8), &[]),
        Err(ProofError::OldRootMismatch {
            expected: other,
            computed: empty_root()
        })
    );
    // old_size a power of two: its root is the proof's implicit first hash.
    for old in [1usize, 2, 4] {
        let proof = consistency_proof(&leaves, old as u64, 8).unwrap();
        assert!(!proof.contains(&r(old)), "root of {old} is not sent");
        verify_consistency(old as u64, 8, &r(old), &r(8), &proof).unwrap();
    }
    // An empty proof for 0 < old < new.
    assert_eq!(
        verify_consistency(3, 8, &r(3), &r(8), &[]),
        Err(ProofError::ProofLength {
            expected: 4,
            actual: 0
        })
    );
}

#[test]
fn consistency_at_the_largest_sizes_does_not_overflow() {
    let x = leaf_hash(b"x");
    for (old, new) in [(u64::MAX - 1, u64::MAX), (1, u64::MAX), (1 << 63, u64::MAX)] {
        let result = verify_consistency(old, new, &x, &x, &[x; 2]);
        assert!(result.is_err(), "{old} -> {new}: {result:?}");
        let subtrees = consistency_subtrees(old, new).unwrap();
        assert!(subtrees.len() <= 65, "{old} -> {new}");
    }
}

#[test]
fn errors_name_what_differs() {
    let a = leaf_hash(b"a");
    let b = leaf_hash(b"b");
    let text = ProofError::RootMismatch {
        expected: a,
        computed: b,
    }
    .to_string();
    assert!(
        text.contains(&hex::encode(a)) && text.contains(&hex::encode(b)),
        "{text}"
    );
    let text = ProofError::ProofLength {
        expected: 3,
        actual: 4,
    }
    .to_string();
    assert!(text.contains('3') && text.contains('4'), "{text}");
}
