//! Satchel's attestation crate: TCG event logs, PCR arithmetic, TPM access,
//! and (in later work) quotes and the verifier that turns evidence into a
//! verdict.
//!
//! Everything outside [`tpm`] is plain functions over bytes: it needs no TPM
//! and no network, and it never panics on input. Only [`tpm`] imports
//! tss-esapi, and only when the `tpm` feature (on by default) is enabled.

pub mod alg;
pub mod eventlog;
pub mod pcr;
#[cfg(feature = "tpm")]
pub mod tpm;

pub use alg::HashAlg;
pub use pcr::PcrBanks;
