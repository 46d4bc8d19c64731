//! Satchel's attestation crate: TCG event logs, PCR arithmetic, TPM access,
//! quotes, reference manifests, and the verifier that turns evidence into a
//! verdict.
//!
//! Everything outside [`tpm`] is plain functions over bytes: it needs no TPM
//! and no network, and it never panics on input. Only [`tpm`] imports
//! tss-esapi, and only when the `tpm` feature (on by default) is enabled.

pub mod alg;
pub mod credential;
pub mod ekcert;
pub mod eventlog;
pub mod evidence;
pub mod pcr;
pub mod reference;
#[cfg(feature = "tpm")]
pub mod tpm;
pub mod tpm2;
pub mod verify;

pub use alg::HashAlg;
pub use evidence::Evidence;
pub use pcr::PcrBanks;
pub use reference::Reference;
pub use verify::{verify, Verdict};
