//! Satchel's boot-chain measurer: reads a boot-chain file (the stages that
//! run after firmware: boot loader, hypervisor, guest kernel, guest image
//! manifests), turns each stage into event digests, extends them into a TPM
//! and appends matching events to a crypto-agile event log — and, without a
//! TPM, predicts the PCR values that chain will produce.
//!
//! In CI a swtpm stands in for the TPM and this crate plays the firmware's
//! part. It never decides whether a chain is acceptable: that is the
//! verifier's job in `attest`.

pub mod chain;
mod error;
#[cfg(feature = "tpm")]
pub mod measure;
pub mod predict;

pub use chain::{Chain, Content, PlannedEvent, Stage, StageKind};
pub use error::ChainError;
#[cfg(feature = "tpm")]
pub use measure::{measure, MeasureError, Measured};
pub use predict::{predict, reference};
