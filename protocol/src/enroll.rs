//! Enrollment: the device proves its AK lives in the TPM its EK certificate
//! names (TPM2_MakeCredential / ActivateCredential, docs/enrollment.md).

use serde::{Deserialize, Serialize};

/// `POST /v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// The device id the token was made for.
    pub device_id: String,
    /// The one-time enrollment token.
    pub token: String,
    /// The EK certificate, DER, standard base64.
    pub ek_cert: String,
    /// The AK's public key, SPKI PEM.
    pub ak_pem: String,
    /// The AK's TPM2B_PUBLIC, hex.
    pub ak_public: String,
}

/// The answer to [`EnrollRequest`]: a credential only that TPM can activate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// Names this challenge in [`FinishRequest`].
    pub challenge: String,
    /// TPM2B_ID_OBJECT, standard base64.
    pub id_object: String,
    /// TPM2B_ENCRYPTED_SECRET, standard base64.
    pub encrypted_secret: String,
}

/// `POST /v1/enroll/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    /// The [`Challenge::challenge`].
    pub challenge: String,
    /// The activated secret, standard base64.
    pub secret: String,
}

/// The answer to [`FinishRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    /// The device enrolled.
    pub device_id: String,
    /// Its groups (from the token).
    pub groups: Vec<String>,
}
