//! Satchel's closed-computing policy: the casbin models, signed policy
//! bundles (application allowlist, per-URL access, image subscriptions) and
//! the explain/test tooling.
//!
//! This crate will decide; it never enforces, never talks to a TPM and never
//! opens a network connection. Its rules arrive in a later issue; today it
//! only reserves its place in the workspace.
