//! The device side of Satchel: everything a client machine does with its
//! gateway and on its own. [`client`] is the pinned mTLS HTTPS client;
//! [`enrollment`] and [`attestation`] prove the device's TPM and boot to the gateway
//! and keep the certificate it issues; [`sync`] pulls and pushes the
//! push-OS layers (and [`bundle`] carries them offline); [`agent`] is the
//! long-running service that enforces the allowlist at exec, holds the
//! signed policy bundle, keeps the device attested and spools its audit
//! entries; [`witness`] checks that its gateway's audit log only grows;
//! [`relay`] lends the device certificate to local programs (a browser)
//! on their way to the gateway's proxy.
//!
//! It takes plain configuration structs (never command-line types) and
//! returns typed errors; the `satchel` binary parses, loads configuration,
//! calls in here and prints. It speaks to the gateway only through the
//! types of the `protocol` crate and never depends on the gateway crate.

pub mod agent;
pub mod attestation;
pub mod bundle;
pub mod client;
pub mod enrollment;
pub mod guest;
pub mod identity;
pub mod relay;
pub mod sync;
pub mod witness;

pub use client::{CallError, ClientError, GatewayClient, Meter, Timeouts};
pub use identity::{DeviceDir, GatewayConfig, IdentityError};

/// Why enrollment or attestation did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The device directory, the CA or the client.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The exchange with the gateway, or its refusal.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The TPM.
    #[error(transparent)]
    Tpm(#[from] ::attest::tpm::TpmError),
    /// An event log could not be read.
    #[error("reading event log {}", .path.display())]
    Log {
        /// The log.
        path: std::path::PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A field of the gateway's answer does not decode.
    #[error("the gateway's {field} does not decode")]
    Answer {
        /// The field.
        field: &'static str,
    },
    /// The certificate request could not be made.
    #[error("making the certificate request")]
    Csr(#[from] rcgen::Error),
    /// A file could not be written durably.
    #[error(transparent)]
    Write(#[from] persist::FileError),
    /// A value could not be encoded as JSON.
    #[error("encoding JSON")]
    Encode(#[source] serde_json::Error),
}

impl FlowError {
    /// Whether the gateway refused (as opposed to a local or network failure).
    pub fn is_refusal(&self) -> bool {
        matches!(self, FlowError::Call(CallError::Refused { .. }))
    }
}
