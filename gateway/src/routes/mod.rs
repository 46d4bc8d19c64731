//! The router: each `/v1/` path to the module of its concern, after the
//! check that concern needs, and only then the body (bounded by
//! [`protocol::limits::MAX_BODY`] and the body timeout). Admin routes check
//! the admin certificate and device routes the device before a byte of the
//! body is read.
//!
//! | prefix | who | module |
//! |---|---|---|
//! | `/v1/health` | anyone | here |
//! | `/v1/enroll`, `/v1/enroll/finish` | anyone with a token | [`enroll`] |
//! | `/v1/attest/nonce`, `/v1/attest` | an enrolled device | [`attest`] |
//! | `/v1/whoami` | an honoured device certificate | here |
//! | `/v1/agent/` | an honoured device certificate | [`agent`] |
//! | `/v1/sync/images/` | an honoured device certificate | [`sync`] |
//! | `/v1/admin/` | an admin certificate | [`admin`] |
//! | `/v1/audit/` | an honoured device certificate or an admin's | [`audit`] |
//! | `/console/` | an admin's console session | [`crate::console`] |

pub mod admin;
pub mod agent;
pub mod attest;
pub mod audit;
pub mod enroll;
pub mod sync;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use protocol::paths;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::reply::{ok, refuse, Reply};
use crate::server::DeviceIdentity;

/// Answer one request from a connection whose client certificate (if any)
/// named `who`.
pub(crate) async fn route(
    req: Request<Incoming>,
    who: Option<&DeviceIdentity>,
    peer: std::net::IpAddr,
    state: &AppState,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if crate::console::owns(parts.uri.path()) {
        return crate::console::route(state, who, peer, &parts, body).await;
    }
    let path = parts.uri.path();
    let method = &parts.method;
    let query = parts.uri.query();
    // A device (its certificate checked) hears which request encodings
    // are read; an outsider does not.
    let mut device = false;
    let reply = match Concern::of(path) {
        Concern::Audit => audit::route(state, who, method, path, query).await,
        Concern::Admin => match admin::authorize(state, who).await {
            Ok(admin) => match read(body, state).await {
                Ok(bytes) => admin::route(state, &admin, method, path, &bytes).await,
                Err(r) => r,
            },
            Err(r) => r,
        },
        Concern::Agent | Concern::Sync => match state.authorize_device(who).await {
            Ok(dev) => {
                device = true;
                match read_encoded(body, &parts.headers, state).await {
                    Ok(bytes) if path.starts_with(paths::AGENT_PREFIX) => {
                        agent::route(state, &dev, method, path, &bytes).await
                    }
                    Ok(bytes) => {
                        let rest = &path[paths::SYNC_PREFIX.len()..];
                        state.metrics.sync_bytes("in", bytes.len());
                        let reply = state.sync_route(&dev, method, rest, &bytes).await;
                        state.metrics.sync_bytes("out", reply.body_len());
                        reply
                    }
                    Err(r) => r,
                }
            }
            Err(r) => r,
        },
        Concern::Open => open(state, who, peer, method, path, body).await,
    };
    let mut response = reply.into_response();
    if device {
        // Every answer on a device's routes says which request encoding
        // is read (RFC 7694): a device compresses only to a gateway that
        // says so.
        response.headers_mut().insert(
            hyper::header::ACCEPT_ENCODING,
            hyper::header::HeaderValue::from_static(::sync::wire::BODY_ENCODING),
        );
    }
    response
}

/// Which part of the gateway a path belongs to.
enum Concern {
    Admin,
    Audit,
    Agent,
    Sync,
    Open,
}

impl Concern {
    fn of(path: &str) -> Concern {
        if path.starts_with(paths::ADMIN_PREFIX) {
            Concern::Admin
        } else if path.starts_with(paths::AUDIT_PREFIX) {
            Concern::Audit
        } else if path.starts_with(paths::AGENT_PREFIX) {
            Concern::Agent
        } else if path.starts_with(paths::SYNC_PREFIX) {
            Concern::Sync
        } else {
            Concern::Open
        }
    }
}

/// The routes outside the prefixes: health, whoami, enrollment, attestation.
async fn open(
    state: &AppState,
    who: Option<&DeviceIdentity>,
    peer: std::net::IpAddr,
    method: &Method,
    path: &str,
    body: Incoming,
) -> Reply {
    const POSTS: [&str; 4] = [
        paths::ENROLL,
        paths::ENROLL_FINISH,
        paths::ATTEST_NONCE,
        paths::ATTEST,
    ];
    match (method, path) {
        (&Method::GET, paths::HEALTH) => ok(json!({"status": "ok"})),
        (&Method::GET, paths::WHOAMI) => whoami(state, who).await,
        (&Method::POST, p) if POSTS.contains(&p) => match read(body, state).await {
            Ok(bytes) => match p {
                paths::ENROLL => state.enroll(&bytes).await,
                paths::ENROLL_FINISH => state.enroll_finish(&bytes).await,
                paths::ATTEST_NONCE => state.nonce(&bytes, peer).await,
                _ => state.attest(&bytes).await,
            },
            Err(r) => r,
        },
        (_, paths::HEALTH | paths::WHOAMI) => not_allowed("use GET"),
        (_, p) if POSTS.contains(&p) => not_allowed("use POST"),
        _ => refuse(404, "not found", "no such route", Value::Null),
    }
}

/// `GET /v1/whoami`.
async fn whoami(state: &AppState, who: Option<&DeviceIdentity>) -> Reply {
    match state.authorize_device(who).await {
        Ok(dev) => ok(protocol::attest::WhoAmI {
            device_id: dev.device_id,
            groups: dev.groups,
            attested_at: who.and_then(|d| d.attested_at_ms),
            cert_expires: who.map(|d| d.cert_expires),
        }),
        Err(r) => r,
    }
}

/// A 405 with `detail`.
pub(crate) fn not_allowed(detail: &str) -> Reply {
    refuse(405, "method not allowed", detail, Value::Null)
}

/// A device's body, decoded if it came compressed (`Content-Encoding:
/// zstd`), within the same bound; any other encoding is refused (415).
async fn read_encoded(
    body: Incoming,
    headers: &hyper::HeaderMap,
    state: &AppState,
) -> Result<Bytes, Reply> {
    let encoding = headers
        .get(hyper::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("").trim().to_ascii_lowercase());
    let bytes = read(body, state).await?;
    match encoding.as_deref() {
        None | Some("identity") => Ok(bytes),
        Some(::sync::wire::BODY_ENCODING) => {
            // Decoding is CPU work: off the connection threads.
            let decoded = tokio::task::spawn_blocking(move || {
                ::sync::wire::decode_body(&bytes, protocol::limits::MAX_BODY)
            })
            .await
            .map_err(|e| refuse(500, "internal error", e.to_string(), Value::Null))?;
            decoded
                .map(Bytes::from)
                .map_err(|e| refuse(400, "bad request", e.to_string(), Value::Null))
        }
        Some(other) => Err(refuse(
            415,
            "unsupported media type",
            format!("Content-Encoding {other:?}: only zstd is read"),
            Value::Null,
        )),
    }
}

/// The whole body, bounded in size and time.
async fn read(body: Incoming, state: &AppState) -> Result<Bytes, Reply> {
    let collect = http_body_util::Limited::new(body, protocol::limits::MAX_BODY).collect();
    match tokio::time::timeout(state.body_timeout, collect).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(_)) => Err(refuse(
            413,
            "request too large",
            "the body is over the limit or broken off",
            Value::Null,
        )),
        Err(_) => Err(refuse(
            408,
            "request timeout",
            "the body did not arrive in time",
            Value::Null,
        )),
    }
}
