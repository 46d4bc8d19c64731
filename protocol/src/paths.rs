//! The path of every route. Routes under [`ADMIN_PREFIX`] need the admin
//! client certificate; under [`AGENT_PREFIX`] and [`SYNC_PREFIX`], an
//! honoured device certificate; the rest are open.

/// `GET`: `{"status": "ok"}`.
pub const HEALTH: &str = "/v1/health";
/// `GET`: who the presented certificate is.
pub const WHOAMI: &str = "/v1/whoami";
/// `POST` [`crate::enroll::EnrollRequest`] -> [`crate::enroll::Challenge`].
pub const ENROLL: &str = "/v1/enroll";
/// `POST` [`crate::enroll::FinishRequest`] -> [`crate::enroll::Enrolled`].
pub const ENROLL_FINISH: &str = "/v1/enroll/finish";
/// `POST` [`crate::attest::NonceRequest`] -> [`crate::attest::Nonce`].
pub const ATTEST_NONCE: &str = "/v1/attest/nonce";
/// `POST` [`crate::attest::AttestRequest`] -> [`crate::attest::Attested`].
pub const ATTEST: &str = "/v1/attest";

/// Every agent route starts so.
pub const AGENT_PREFIX: &str = "/v1/agent/";
/// `GET`: the signed policy bundle in force (text).
pub const AGENT_BUNDLE: &str = "/v1/agent/bundle";
/// `POST` [`crate::agent::Delivery`] -> [`crate::agent::Delivered`].
pub const AGENT_SPOOL: &str = "/v1/agent/spool";

/// Every admin route starts so.
pub const ADMIN_PREFIX: &str = "/v1/admin/";
/// `GET` -> [`crate::admin::Devices`].
pub const ADMIN_DEVICES: &str = "/v1/admin/devices";
/// `POST` [`crate::admin::TokenRequest`] -> [`crate::admin::Token`].
pub const ADMIN_ENROLL_TOKEN: &str = "/v1/admin/enroll-token";
/// `POST` [`crate::admin::RevokeRequest`] -> [`crate::admin::Revoked`].
pub const ADMIN_REVOKE: &str = "/v1/admin/revoke";
/// `GET` the policy text; `PUT` a new one -> [`crate::admin::PolicyPut`].
pub const ADMIN_POLICY: &str = "/v1/admin/policy";
/// `GET` the signed reference; `PUT` a new one -> [`crate::admin::ReferencePut`].
pub const ADMIN_REFERENCE: &str = "/v1/admin/reference";
/// `GET` the signed policy bundle; `PUT` a new one -> [`crate::admin::BundlePut`].
pub const ADMIN_BUNDLE: &str = "/v1/admin/bundle";
/// `GET` the gateway's Prometheus metrics (OpenMetrics text).
pub const ADMIN_METRICS: &str = "/v1/admin/metrics";
/// The admin routes, for telling "no such route" from "wrong method".
pub const ADMIN_ROUTES: [&str; 7] = [
    ADMIN_DEVICES,
    ADMIN_ENROLL_TOKEN,
    ADMIN_REVOKE,
    ADMIN_POLICY,
    ADMIN_REFERENCE,
    ADMIN_BUNDLE,
    ADMIN_METRICS,
];

/// Every audit route starts so.
pub const AUDIT_PREFIX: &str = "/v1/audit/";
/// `GET` -> [`crate::audit::AuditCheckpoint`]: the audit log's latest
/// signed checkpoint (devices and admins).
pub const AUDIT_CHECKPOINT: &str = "/v1/audit/checkpoint";
/// `GET ?from=N&to=M` -> [`crate::audit::Consistency`]: a proof that the
/// tree of N entries is a prefix of the tree of M (devices and admins).
pub const AUDIT_CONSISTENCY: &str = "/v1/audit/consistency";

/// Every sync route starts so, then the image name.
pub const SYNC_PREFIX: &str = "/v1/sync/images/";

/// What a sync route does, after `/v1/sync/images/NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAction {
    /// `GET /v1/sync/images/NAME`: the image, manifests whole.
    Image,
    /// `POST .../offer`: the image, manifests as deltas.
    Offer,
    /// `POST .../chunks`: chunk frames by id.
    Chunks,
    /// `POST .../deltas`: file deltas or their missing chunks.
    Deltas,
    /// `POST .../missing`: which chunks the gateway lacks.
    Missing,
    /// `POST .../upload`: chunk frames to store.
    Upload,
    /// `POST .../checkin`: a layer's new tree.
    Checkin,
}

impl SyncAction {
    /// Every action.
    pub const ALL: [SyncAction; 7] = [
        SyncAction::Image,
        SyncAction::Offer,
        SyncAction::Chunks,
        SyncAction::Deltas,
        SyncAction::Missing,
        SyncAction::Upload,
        SyncAction::Checkin,
    ];

    /// The path segment (empty for [`SyncAction::Image`]).
    pub fn segment(self) -> &'static str {
        match self {
            SyncAction::Image => "",
            SyncAction::Offer => "offer",
            SyncAction::Chunks => "chunks",
            SyncAction::Deltas => "deltas",
            SyncAction::Missing => "missing",
            SyncAction::Upload => "upload",
            SyncAction::Checkin => "checkin",
        }
    }

    /// The action named by a path segment.
    pub fn parse(segment: &str) -> Option<SyncAction> {
        SyncAction::ALL.into_iter().find(|a| a.segment() == segment)
    }

    /// Whether the action is a `GET` (else a `POST`).
    pub fn is_get(self) -> bool {
        self == SyncAction::Image
    }
}

/// The path of `action` on `image`.
pub fn sync(image: &str, action: SyncAction) -> String {
    match action {
        SyncAction::Image => format!("{SYNC_PREFIX}{image}"),
        a => format!("{SYNC_PREFIX}{image}/{}", a.segment()),
    }
}

/// Split what follows [`SYNC_PREFIX`] into the image name and the action
/// segment (`None` for an unknown action).
pub fn parse_sync(rest: &str) -> (&str, Option<SyncAction>) {
    match rest.split_once('/') {
        Some((image, a)) => (image, SyncAction::parse(a).filter(|a| !a.is_get())),
        None => (rest, Some(SyncAction::Image)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sync_path_parses_back() {
        for a in SyncAction::ALL {
            let path = sync("classroom", a);
            let rest = path.strip_prefix(SYNC_PREFIX).unwrap();
            assert_eq!(parse_sync(rest), ("classroom", Some(a)), "{path}");
        }
        assert_eq!(parse_sync("img/nope"), ("img", None));
        assert_eq!(parse_sync("img/"), ("img", None));
    }
}
