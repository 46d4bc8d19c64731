//! Satchel's push-OS image sync: content-defined chunking ([`chunk`]), the
//! content-addressed chunk store ([`store`]), signed layer manifests
//! ([`manifest`]), directories in and out of the store ([`tree`]) and
//! three-way reconciliation ([`reconcile`]).
//!
//! This crate moves and verifies bytes; it never trusts a chunk whose bytes
//! do not hash to its id, and never talks to the network (the gateway
//! carries its chunks and manifests).

pub mod chunk;
pub mod delta;
pub mod manifest;
pub mod reconcile;
pub mod store;
pub mod tree;
pub mod wire;

pub use chunk::ChunkId;
pub use manifest::{Entry, Kind, Layer, LayerManifest, Signed};
pub use store::ChunkStore;
