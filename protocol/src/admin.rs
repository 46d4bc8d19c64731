//! The admin routes (admin client certificate only).

use serde::{Deserialize, Serialize};

/// Actor names the gateway writes in the audit trail for what no device
/// did: never a device id.
pub const RESERVED_ACTORS: [&str; 3] = ["anonymous", "gateway-cli", "gateway-start"];

/// Whether `id` can name a device: 1-128 ASCII letters, digits, `-`, `_`,
/// `.` and `@`. Nothing that splits a path or a group list, breaks a log
/// line, hides in Unicode (invisible or right-to-left characters), or reads
/// as another kind of actor in the audit trail (`admin:alice`).
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !RESERVED_ACTORS.contains(&id)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// Whether `g` can name a policy group: 1-128 printable ASCII characters
/// without `,` (the stored group list's separator) or white space.
pub fn valid_group(g: &str) -> bool {
    !g.is_empty() && g.len() <= 128 && g.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_and_groups_are_plain() {
        for ok in ["laptop-17", "d1", "kiosk.3@lab-b", "A_b"] {
            assert!(valid_device_id(ok), "{ok}");
        }
        let long = "x".repeat(129);
        for bad in [
            "",
            "admin:alice",
            "a/b",
            "a,b",
            "a b",
            "a\nb",
            "\u{202e}kcab",
            "zero\u{200b}width",
            "caf\u{e9}",
            long.as_str(),
        ] {
            assert!(!valid_device_id(bad), "{bad:?}");
        }
        assert!(valid_group("group:class-7a"));
        for bad in ["", "lab,teachers", "a b", "x\u{2028}"] {
            assert!(!valid_group(bad), "{bad:?}");
        }
    }

    /// docs/threat-model.md says an id that reads as another actor,
    /// `anonymous` among them, is refused: it is the actor of every
    /// stranger's refused enrollment and console sign-in.
    #[test]
    fn anonymous_is_not_a_device_id() {
        for reserved in RESERVED_ACTORS {
            assert!(!valid_device_id(reserved), "{reserved}");
        }
    }
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
