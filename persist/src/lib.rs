//! What Satchel keeps, and how it keeps it: [`file`] writes files so that a
//! crash leaves the old content or the new, never a torn or vanished one;
//! [`keys`] reads, writes and makes the ed25519 keys every part signs with;
//! [`db`] opens the database pool (SQLite by default, PostgreSQL) that the
//! gateway, the audit log, images and policy share.
//!
//! Every crate that writes a file it reports as written goes through
//! [`file`]; nothing here knows the formats it stores. This crate must never
//! report a write done before the bytes and the directory entry are synced.

pub mod db;
pub mod file;
pub mod keys;

pub use db::{connect, Backend, DbError};
pub use file::{write_atomic, write_new, write_secret, AtomicFile, FileError};
pub use keys::KeyError;
