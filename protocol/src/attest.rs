//! Attestation: a nonce, a quote over the reference's PCRs with the event
//! logs, and, when the verifier trusts it, a short-lived device certificate.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/attest/nonce`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceRequest {
    /// The enrolled device asking.
    pub device_id: String,
}

/// The answer to [`NonceRequest`]: what to quote.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nonce {
    /// The nonce, hex; good once, for a short window.
    pub nonce: String,
    /// The PCRs the reference names.
    pub pcrs: Vec<u32>,
    /// The banks to quote (`sha256`).
    pub banks: Vec<String>,
}

/// `POST /v1/attest`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestRequest {
    /// The enrolled device.
    pub device_id: String,
    /// The evidence (`attest::Evidence` as JSON, docs/formats.md).
    pub evidence: Value,
    /// A PKCS#10 request, PEM, for the device certificate.
    pub csr: String,
}

/// The answer to [`AttestRequest`] when the evidence is trusted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attested {
    /// The device certificate, PEM.
    pub certificate: String,
    /// This attestation's id (also in the certificate).
    pub attestation: String,
    /// How long the certificate lives, in seconds.
    pub expires_in_s: u64,
}

/// `GET /v1/whoami` for a device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoAmI {
    /// The device.
    pub device_id: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// When the certificate's attestation was made, ms since the epoch.
    pub attested_at: Option<i64>,
    /// When the certificate expires, seconds since the epoch.
    pub cert_expires: Option<i64>,
}
