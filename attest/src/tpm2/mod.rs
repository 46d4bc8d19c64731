//! TPM 2.0 structures the verifier reads from untrusted evidence: the
//! quote (`TPMS_ATTEST`), its signature (`TPMT_SIGNATURE`) and the
//! attestation key's public area (`TPMT_PUBLIC`), with the PCR selections
//! inside them (TPM 2.0 Library, Part 2).
//!
//! These parsers need no TPM and never panic: every size is checked against
//! the input and the structure's maximum, unknown algorithms are errors, and
//! trailing bytes are refused.

mod attest;
mod public;
mod signature;
mod wire;

pub use attest::{ClockInfo, PcrSelection, Quote, TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE};
pub use public::{AkPublic, KeyParams, ObjectAttributes, PublicKey};
pub use signature::{Signature, SignatureScheme};

/// A TPM structure that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The input ends inside a field.
    #[error("{structure}: {field} at byte {offset} needs {needed} bytes, {available} left")]
    Truncated {
        /// The structure being parsed.
        structure: &'static str,
        /// The field being read.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the input.
        available: usize,
    },
    /// A field holds a value the structure does not allow.
    #[error("{structure}: {field} at byte {offset}: {problem}")]
    Invalid {
        /// The structure being parsed.
        structure: &'static str,
        /// The field.
        field: &'static str,
        /// Byte offset of the field.
        offset: usize,
        /// What is wrong.
        problem: String,
    },
    /// Bytes after the end of the structure.
    #[error("{structure}: {extra} unexpected bytes after the end, at byte {offset}")]
    Trailing {
        /// The structure being parsed.
        structure: &'static str,
        /// Where the structure ended.
        offset: usize,
        /// How many bytes follow.
        extra: usize,
    },
}
