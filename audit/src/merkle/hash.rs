//! The three hashes of RFC 6962 §2.1: leaf, interior node and empty tree,
//! all SHA-256 with one-byte domain separation (0x00 leaf, 0x01 node).
//!
//! This module only hashes; it never decides what a leaf's bytes are.

use sha2::{Digest as _, Sha256};

/// A SHA-256 tree hash: a leaf hash, an interior node hash or a root.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash input (RFC 6962 §2.1).
const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash input (RFC 6962 §2.1).
const NODE_PREFIX: u8 = 0x01;

/// The leaf hash of `leaf`: SHA-256(0x00 || leaf).
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([LEAF_PREFIX])
        .chain_update(leaf)
        .finalize()
        .into()
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut input = [0u8; 65];
    input[0] = NODE_PREFIX;
    input[1..33].copy_from_slice(left);
    input[33..].copy_from_slice(right);
    Sha256::digest(input).into()
}

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}
