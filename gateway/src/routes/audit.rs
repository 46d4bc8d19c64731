//! The audit log as devices witness it (`GET /v1/audit/checkpoint`, `GET
//! /v1/audit/consistency?from=N&to=M`), for honoured device certificates
//! and admins. The checkpoint is the signer's last, kept outside the
//! database; a proof is computed from the stored entries, so a log changed
//! behind the signer's back gives a proof that does not verify.

use hyper::Method;
use protocol::audit::{AuditCheckpoint, Consistency};
use protocol::paths;
use serde_json::Value;

use crate::app::AppState;
use crate::reply::{bad, internal, ok, refuse, Reply};
use crate::server::{DeviceIdentity, Role};

/// Serve an audit route for whoever `who` is.
pub async fn route(
    state: &AppState,
    who: Option<&DeviceIdentity>,
    method: &Method,
    path: &str,
    query: Option<&str>,
) -> Reply {
    let allowed = match who.map(|w| w.role) {
        Some(Role::Admin) => super::admin::authorize(state, who).await.map(drop),
        _ => state.authorize_device(who).await.map(drop),
    };
    if let Err(r) = allowed {
        return r;
    }
    match (method, path) {
        (&Method::GET, paths::AUDIT_CHECKPOINT) => checkpoint(state),
        (&Method::GET, paths::AUDIT_CONSISTENCY) => consistency(state, query).await,
        (_, paths::AUDIT_CHECKPOINT | paths::AUDIT_CONSISTENCY) => super::not_allowed("use GET"),
        _ => refuse(404, "not found", "no such audit route", Value::Null),
    }
}

fn checkpoint(state: &AppState) -> Reply {
    match state.audit_view.latest() {
        Some(note) => ok(AuditCheckpoint {
            note,
            vkey: state.audit_vkey.clone(),
        }),
        None => refuse(
            404,
            "no checkpoint",
            "the audit log has no signed checkpoint yet",
            Value::Null,
        ),
    }
}

async fn consistency(state: &AppState, query: Option<&str>) -> Reply {
    let (Some(from), Some(to)) = (param(query, "from"), param(query, "to")) else {
        return bad("give ?from=N&to=M, two tree sizes");
    };
    if from > to {
        return bad("from is larger than to");
    }
    match audit::log::prove_consistency(&state.audit, from, Some(to)).await {
        Ok(p) => ok(Consistency {
            old_size: p.old_size,
            new_size: p.new_size,
            path: p.path,
        }),
        Err(e @ (audit::log::LogError::Size { .. } | audit::log::LogError::Proof(_))) => {
            bad(e.to_string())
        }
        Err(e) => internal(&e),
    }
}

/// A numeric query parameter.
fn param(query: Option<&str>, name: &str) -> Option<u64> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}
