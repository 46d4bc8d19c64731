//! The admin routes (admin client certificate only).

use serde::{Deserialize, Serialize};

/// Whether `id` can name a device: 1-128 characters, no `/` or `,` (paths
/// and group lists), no control characters (log lines).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.chars().count() <= 128
        && !id.chars().any(|c| c == '/' || c == ',' || c.is_control())
}

/// `POST /v1/admin/enroll-token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// The device the token enrolls (see [`valid_device_id`]).
    pub device_id: String,
    /// Its groups.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Lifetime in seconds [default: one day; at most 30 days].
    #[serde(default)]
    pub ttl_s: Option<u64>,
}

/// The answer to [`TokenRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    /// The one-time token (only its hash is stored).
    pub token: String,
    /// The device.
    pub device_id: String,
    /// Its lifetime in seconds.
    pub expires_in_s: u64,
}

/// `POST /v1/admin/revoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    /// The device.
    pub device_id: String,
}

/// The answer to [`RevokeRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Revoked {
    /// The device revoked.
    pub revoked: String,
}

/// `GET /v1/admin/devices`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Devices {
    /// Every enrolled device.
    pub devices: Vec<DeviceRow>,
}

/// One device in [`Devices`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRow {
    /// The device.
    pub device_id: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// When it enrolled, ms since the epoch.
    pub enrolled_ms: i64,
    /// When it was revoked, if it was.
    pub revoked_ms: Option<i64>,
}

/// The answer to `PUT /v1/admin/policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPut {
    /// Rules in force now.
    pub rules: usize,
    /// Group memberships in force now.
    pub memberships: usize,
}

/// The answer to `PUT /v1/admin/reference`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferencePut {
    /// The reference's name.
    pub reference: String,
}

/// The answer to `PUT /v1/admin/bundle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundlePut {
    /// The bundle version stored.
    pub version: u64,
}
