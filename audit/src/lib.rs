//! Satchel's tamper-evident audit trail: an RFC 6962 Merkle tree of entries
//! stored through sqlx, ed25519-signed checkpoints, inclusion and
//! consistency proofs and their verifiers.
//!
//! This crate records and proves; it never decides policy and never deletes
//! an entry. Its log arrives in a later issue; today it only reserves its
//! place in the workspace.
