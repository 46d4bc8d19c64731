//! Satchel's push-OS image sync: content-defined chunking, the
//! content-addressed chunk store, signed layer manifests and three-way,
//! differential, bi-directional reconciliation.
//!
//! This crate moves and verifies bytes; it never trusts a chunk whose bytes
//! do not hash to its id. Its engine arrives in a later issue; today it only
//! reserves its place in the workspace.
