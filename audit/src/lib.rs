//! Satchel's tamper-evident audit trail: an RFC 6962 / RFC 9162 Merkle tree
//! over audit entries stored through sqlx (SQLite by default, PostgreSQL with
//! the same code), ed25519-signed checkpoints in the C2SP signed-note format,
//! inclusion and consistency proofs and their verifiers.
//!
//! This crate records and proves; it never decides policy and never deletes
//! or rewrites an entry. The verifying half ([`merkle`], [`checkpoint`]) is
//! plain functions over bytes: no database, no network.

pub mod batch;
pub mod checkpoint;
pub mod entry;
pub mod export;
pub mod log;
pub mod merkle;
pub mod signer;
pub mod store;
pub mod verify;
