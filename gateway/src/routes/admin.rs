//! The admin routes, for holders of an admin certificate (made by
//! `satchel gateway admin-cert`, issued by the admin CA):
//!
//! | route | what |
//! |---|---|
//! | `GET /v1/admin/devices` | every enrolled device: id, groups, enrolled, revoked |
//! | `POST /v1/admin/enroll-token` | `{"device_id", "groups"?, "ttl_s"?}` -> `{"token"}` |
//! | `POST /v1/admin/revoke` | `{"device_id"}` |
//! | `GET /v1/admin/policy` | the egress policy lines in force (`text/plain`) |
//! | `PUT /v1/admin/policy` | new policy lines: validated, stored in the database, in force at once |
//! | `GET /v1/admin/reference` | the signed reference manifest in force |
//! | `PUT /v1/admin/reference` | a new signed reference manifest: its signature is checked with the gateway's reference key |
//! | `GET /v1/admin/bundle` | the signed policy bundle relayed to devices' agents |
//! | `PUT /v1/admin/bundle` | a new signed policy bundle (not older than the one held): see [`crate::routes::agent`] |
//!
//! Every change is an audit entry (`kind` `admin`, `actor` `admin:NAME`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::app::AppState;
use crate::reply::{internal, ok, parse, refuse, Reply};
use crate::server::{DeviceIdentity, Role};
use protocol::admin::{
    DeviceRow, Devices, PolicyPut, ReferencePut, RevokeRequest, Revoked, Token, TokenRequest,
};
use protocol::paths;

/// The setting name the signed reference manifest is stored under.
pub const REFERENCE_SETTING: &str = "reference";

/// The admin behind a connection (`admin:NAME`), or the refusal: 401
/// without a certificate or with one that has expired (checked on every
/// request, so a kept-alive connection does not outlive its certificate),
/// 403 with a device's or a revoked one. Checked before the body is read.
pub async fn authorize(state: &AppState, who: Option<&DeviceIdentity>) -> Result<String, Reply> {
    let w = match who {
        Some(w) if w.role == Role::Admin => w,
        Some(_) => {
            return Err(refuse(
                403,
                "admin certificate required",
                "a device certificate does not open admin routes",
                Value::Null,
            ))
        }
        None => {
            return Err(refuse(
                401,
                "admin certificate required",
                "present an admin client certificate (satchel gateway admin-cert)",
                Value::Null,
            ))
        }
    };
    if w.cert_expires.saturating_mul(1000) <= audit::batch::now_ms() {
        return Err(refuse(
            401,
            "admin certificate expired",
            "this admin certificate has expired; make a new one (satchel gateway admin-cert)",
            Value::Null,
        ));
    }
    match state.db.admin_revoked_ms(&w.device_id).await {
        Ok(Some(at)) if w.issued_at_ms <= at => {
            state
                .record(
                    "admin",
                    &format!("admin:{}", w.device_id),
                    "admin-certificate",
                    "refused",
                    json!({"reason": "revoked", "revoked_ms": at}),
                )
                .await;
            Err(refuse(
                403,
                "admin certificate revoked",
                format!(
                    "the admin certificates of {:?} issued before their revocation are refused",
                    w.device_id
                ),
                Value::Null,
            ))
        }
        Ok(_) => Ok(format!("admin:{}", w.device_id)),
        Err(e) => Err(internal(&e)),
    }
}

/// Serve an admin route for `admin` (see [`authorize`]).
pub async fn route(
    state: &AppState,
    admin: &str,
    method: &hyper::Method,
    path: &str,
    body: &[u8],
) -> Reply {
    use hyper::Method as M;
    match (method, path) {
        (&M::GET, paths::ADMIN_DEVICES) => devices(state).await,
        (&M::POST, paths::ADMIN_ENROLL_TOKEN) => enroll_token(state, admin, body).await,
        (&M::POST, paths::ADMIN_REVOKE) => revoke(state, admin, body).await,
        (&M::GET, paths::ADMIN_POLICY) => Reply::Text(state.policy_text()),
        (&M::PUT, paths::ADMIN_POLICY) => put_policy(state, admin, body).await,
        (&M::GET, paths::ADMIN_REFERENCE) => match state.db.setting(REFERENCE_SETTING).await {
            Ok(Some(r)) => Reply::Text(r),
            Ok(None) => refuse(
                404,
                "no reference",
                "no reference manifest is stored",
                Value::Null,
            ),
            Err(e) => internal(&e),
        },
        (&M::PUT, paths::ADMIN_REFERENCE) => put_reference(state, admin, body).await,
        (&M::GET, paths::ADMIN_METRICS) => Reply::Metrics(
            state
                .metrics
                .encode(state.tunnels.total(), &state.audit_view),
        ),
        (&M::GET, paths::ADMIN_BUNDLE) => crate::routes::agent::get_bundle(state).await,
        (&M::PUT, paths::ADMIN_BUNDLE) => {
            crate::routes::agent::put_bundle(state, admin, body).await
        }
        (_, p) if paths::ADMIN_ROUTES.contains(&p) => {
            crate::routes::not_allowed("see docs/gateway.md for the admin routes")
        }
        _ => refuse(404, "not found", "no such admin route", Value::Null),
    }
}

async fn devices(state: &AppState) -> Reply {
    match state.db.devices().await {
        Ok(list) => ok(Devices {
            devices: list
                .into_iter()
                .map(|d| DeviceRow {
                    device_id: d.device_id,
                    groups: d.groups,
                    enrolled_ms: d.enrolled_ms,
                    revoked_ms: d.revoked_ms,
                })
                .collect(),
        }),
        Err(e) => internal(&e),
    }
}

pub(crate) async fn enroll_token(state: &AppState, admin: &str, body: &[u8]) -> Reply {
    let r: TokenRequest = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    if !protocol::admin::valid_device_id(&r.device_id) {
        return refuse(
            400,
            "bad request",
            "device_id must be 1-128 ASCII letters, digits, '-', '_', '.' or '@'",
            Value::Null,
        );
    }
    if let Some(g) = r.groups.iter().find(|g| !protocol::admin::valid_group(g)) {
        return refuse(
            400,
            "bad request",
            format!("group {g:?}: give 1-128 printable ASCII characters without ',' or spaces"),
            Value::Null,
        );
    }
    let ttl = Duration::from_secs(r.ttl_s.unwrap_or(86_400).min(30 * 86_400));
    match state.db.make_token(&r.device_id, &r.groups, ttl).await {
        Ok(token) => {
            state
                .record(
                    "admin",
                    admin,
                    &r.device_id,
                    "enroll-token",
                    json!({"groups": r.groups, "ttl_s": ttl.as_secs()}),
                )
                .await;
            ok(Token {
                token,
                device_id: r.device_id,
                expires_in_s: ttl.as_secs(),
            })
        }
        Err(e) => internal(&e),
    }
}

pub(crate) async fn revoke(state: &AppState, admin: &str, body: &[u8]) -> Reply {
    let r: RevokeRequest = match parse(body) {
        Ok(r) => r,
        Err(a) => return a,
    };
    match state.db.revoke(&r.device_id).await {
        Ok(true) => {
            state
                .record("admin", admin, &r.device_id, "revoked", Value::Null)
                .await;
            ok(Revoked {
                revoked: r.device_id,
            })
        }
        Ok(false) => refuse(
            404,
            "unknown device",
            "no enrolled, unrevoked device has this id",
            Value::Null,
        ),
        Err(e) => internal(&e),
    }
}

pub(crate) async fn put_policy(state: &AppState, admin: &str, body: &[u8]) -> Reply {
    let Ok(text) = std::str::from_utf8(body) else {
        return refuse(400, "bad policy", "the policy is not UTF-8", Value::Null);
    };
    let parsed = match policy::PolicyText::parse(text) {
        Ok(p) => p,
        Err(e) => return refuse(400, "bad policy", e.to_string(), Value::Null),
    };
    if let Err(e) = state.policy_store.replace(&parsed).await {
        return internal(&e);
    }
    let (rules, memberships) = (parsed.rules.len(), parsed.memberships.len());
    state.set_policy(&parsed, text.to_owned());
    state
        .record(
            "admin",
            admin,
            "policy",
            "replaced",
            json!({"rules": rules, "memberships": memberships}),
        )
        .await;
    ok(PolicyPut { rules, memberships })
}

async fn put_reference(state: &AppState, admin: &str, body: &[u8]) -> Reply {
    let Some(key) = &state.reference_key else {
        return refuse(
            409,
            "no reference key",
            "the gateway has no --reference-key to check references with",
            Value::Null,
        );
    };
    let reference = match attest::Reference::verify_signed(body, key) {
        Ok(r) => r,
        Err(e) => {
            state
                .record(
                    "admin",
                    admin,
                    "reference",
                    "refused",
                    json!({"reason": e.to_string()}),
                )
                .await;
            return refuse(400, "bad reference", e.to_string(), Value::Null);
        }
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return refuse(400, "bad reference", "not UTF-8", Value::Null);
    };
    let held = state.reference().map_or(0, |r| r.version);
    if reference.version < held {
        let version = reference.version;
        state
            .record("admin", admin, "reference", "refused", json!({"reason": "older than the reference held", "version": version, "held": held}))
            .await;
        return refuse(
            409,
            "older reference",
            format!(
                "reference version {version} is older than version {held}, which the gateway holds"
            ),
            Value::Null,
        );
    }
    if let Err(e) = state.db.set_setting(REFERENCE_SETTING, text).await {
        return internal(&e);
    }
    let (name, version) = (reference.name.clone(), reference.version);
    if let Ok(mut slot) = state.reference.write() {
        *slot = Some(Arc::new(reference));
    }
    state
        .record(
            "admin",
            admin,
            "reference",
            "replaced",
            json!({"name": name, "version": version, "previous": held}),
        )
        .await;
    ok(ReferencePut { reference: name })
}
