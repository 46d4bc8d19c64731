//! The web console (`https://GATEWAY:8443/console/`): the fleet, enrollment
//! tokens, images, the policy and the audit trail, for an admin with a
//! browser. Pages are rendered here (no script at all, no asset from
//! anywhere but the gateway), so it works offline and under a strict
//! Content Security Policy. docs/console.md is the admin's guide.
//!
//! Sign-in, two ways, both ending in a session cookie (`HttpOnly; Secure;
//! SameSite=Strict`, 8 hours, only its hash stored):
//! - a one-time link from `satchel gateway console-link --name NAME` (run
//!   on the gateway host by whoever may act on its database), valid 15
//!   minutes, usable once;
//! - a browser that presents an admin client certificate
//!   (`satchel gateway admin-cert`) at `/console/login`.
//!
//! Every change is a POST carrying the session's CSRF token and, when the
//! browser sends one, an `Origin` of the gateway itself; every change is
//! audited with the admin's name (`actor` `admin:NAME`, `via` `console`).
//! A session ends at sign-out, after 8 hours, or when the admin's
//! certificates are revoked (`satchel gateway revoke-admin`).

mod pages;
pub mod sessions;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Response, StatusCode};
use serde_json::json;

use crate::app::AppState;
use crate::server::{DeviceIdentity, Role};
use sessions::Session;
#[cfg(doc)]
use sessions::SESSION_LIFETIME;

/// Where the console lives.
pub const PREFIX: &str = "/console";
/// The session cookie's name.
pub const COOKIE: &str = "satchel_console";
/// How long a sign-in link stays usable.
pub const LINK_LIFETIME: std::time::Duration = std::time::Duration::from_secs(15 * 60);
/// The most a console form may send (a policy is the largest).
const MAX_FORM: usize = 1 << 20;

const CSS: &str = include_str!("style.css");

/// Whether `path` is the console's.
pub fn owns(path: &str) -> bool {
    path == PREFIX || path.starts_with("/console/")
}

/// A page or a redirect, with the headers every console answer carries.
fn respond(status: u16, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn html(status: u16, page: maud::Markup) -> Response<Full<Bytes>> {
    respond(status, "text/html; charset=utf-8", page.into_string())
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Full<Bytes>> {
    let mut r = respond(303, "text/plain; charset=utf-8", String::new());
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

/// The session cookie: no `Max-Age`, so it goes when the browser closes
/// (a shared staff-room PC); the gateway ends the session after
/// [`SESSION_LIFETIME`] whatever the browser keeps.
fn session_cookie(id: &str) -> String {
    format!("{COOKIE}={id}; Path={PREFIX}/; HttpOnly; Secure; SameSite=Strict")
}

/// The session cookie's value, if the request carries one.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == COOKIE && !v.is_empty()).then(|| v.to_owned())
        })
}

/// A request's query or form fields.
fn fields(text: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(text)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A field as sent (`""` if absent).
fn raw_field<'a>(f: &'a [(String, String)], name: &str) -> &'a str {
    f.iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// A field without surrounding white space.
fn field<'a>(f: &'a [(String, String)], name: &str) -> &'a str {
    raw_field(f, name).trim()
}

/// Serve one console request.
pub async fn route(
    state: &AppState,
    who: Option<&DeviceIdentity>,
    peer: std::net::IpAddr,
    parts: &hyper::http::request::Parts,
    body: Incoming,
) -> Response<Full<Bytes>> {
    let path = parts.uri.path();
    let query = fields(parts.uri.query().unwrap_or("").as_bytes());
    match (&parts.method, path) {
        (&Method::GET, PREFIX) => return redirect("/console/", None),
        (&Method::GET, "/console/style.css") => {
            return respond(200, "text/css; charset=utf-8", CSS.to_owned())
        }
        (&Method::GET, "/console/login") => return login(state, who, peer, &query).await,
        _ => {}
    }
    let (id, session) = match signed_in(state, &parts.headers).await {
        Ok(s) => s,
        Err(why) if parts.method == Method::GET => {
            return html(401, pages::sign_in(why.as_deref()));
        }
        Err(_) => {
            return html(
                401,
                pages::sign_in(Some("sign in again: this session has ended")),
            )
        }
    };
    let actor = format!("admin:{}", session.admin);
    if parts.method == Method::POST {
        let form = match read_form(state, body).await {
            Ok(f) => f,
            Err(r) => return r,
        };
        if let Err(why) = same_origin(&parts.headers, &form, &session) {
            state
                .record(
                    "console",
                    &actor,
                    path,
                    "refused",
                    json!({"reason": why, "via": "console", "peer": peer.to_string()}),
                )
                .await;
            return html(403, pages::refused(&session, why));
        }
        return pages::post(state, &session, &actor, &id, path, &form).await;
    }
    if parts.method != Method::GET {
        return html(405, pages::refused(&session, "use GET or a form's POST"));
    }
    pages::get(state, &session, path, &query).await
}

/// `GET /console/login`: a sign-in link's token, or an admin certificate.
async fn login(
    state: &AppState,
    who: Option<&DeviceIdentity>,
    peer: std::net::IpAddr,
    query: &[(String, String)],
) -> Response<Full<Bytes>> {
    let token = field(query, "token");
    let (admin, method) = if !token.is_empty() {
        match state.db.use_console_link(token).await {
            Ok(Some((a, made))) => {
                // A link made before its admin was revoked is void.
                match state.db.admin_revoked_ms(&a).await {
                    Ok(Some(at)) if at >= made => {
                        state
                            .record(
                                "console",
                                &format!("admin:{a}"),
                                "sign-in",
                                "refused",
                                json!({"reason": "a link made before the admin was revoked", "via": "console", "peer": peer.to_string()}),
                            )
                            .await;
                        return html(
                            403,
                            pages::sign_in(Some("this link was made before its admin was revoked")),
                        );
                    }
                    Ok(_) => (a, "link"),
                    Err(e) => return internal(&e),
                }
            }
            Ok(None) => {
                state
                    .record(
                        "console",
                        "anonymous",
                        "sign-in",
                        "refused",
                        json!({"reason": "a link that is unknown, used or expired", "via": "console", "peer": peer.to_string()}),
                    )
                    .await;
                return html(
                    401,
                    pages::sign_in(Some(
                        "this sign-in link is unknown, was used already or has expired: make a new one",
                    )),
                );
            }
            Err(e) => return internal(&e),
        }
    } else if who.is_some_and(|w| w.role == Role::Admin) {
        match crate::routes::admin::authorize(state, who).await {
            Ok(a) => (a.trim_start_matches("admin:").to_owned(), "certificate"),
            Err(_) => {
                return html(
                    403,
                    pages::sign_in(Some(
                        "this admin certificate is expired or revoked: make a new one",
                    )),
                )
            }
        }
    } else {
        return html(200, pages::sign_in(None));
    };
    match state.db.new_session(&admin).await {
        Ok((id, _)) => {
            state
                .record(
                    "console",
                    &format!("admin:{admin}"),
                    "sign-in",
                    "allowed",
                    json!({"method": method, "via": "console", "peer": peer.to_string()}),
                )
                .await;
            redirect("/console/", Some(session_cookie(&id)))
        }
        Err(e) => internal(&e),
    }
}

/// The session behind the request's cookie, or why there is none.
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(String, Session), Option<String>> {
    let id = cookie(headers).ok_or(None)?;
    let s = match state.db.session(&id).await {
        Ok(Some(s)) => s,
        Ok(None) => return Err(Some("this session has ended: sign in again".to_owned())),
        Err(e) => {
            tracing::error!(error = %e, "reading a console session");
            return Err(Some(
                "the gateway could not read sessions; its log says why".to_owned(),
            ));
        }
    };
    // Revoking an admin's certificates ends the admin's sessions too.
    match state.db.admin_revoked_ms(&s.admin).await {
        Ok(Some(at)) if at >= s.created_ms => {
            let _ = state.db.end_session(&id).await;
            Err(Some(format!(
                "the admin {:?} was revoked: this session has ended",
                s.admin
            )))
        }
        Ok(_) => Ok((id, s)),
        Err(e) => {
            tracing::error!(error = %e, "reading admin revocations");
            Err(Some(
                "the gateway could not check revocations; its log says why".to_owned(),
            ))
        }
    }
}

/// A form body, bounded in size and time.
async fn read_form(
    state: &AppState,
    body: Incoming,
) -> Result<Vec<(String, String)>, Response<Full<Bytes>>> {
    let collect = http_body_util::Limited::new(body, MAX_FORM).collect();
    match tokio::time::timeout(state.body_timeout, collect).await {
        Ok(Ok(b)) => Ok(fields(&b.to_bytes())),
        Ok(Err(_)) => Err(respond(
            413,
            "text/plain; charset=utf-8",
            "the form is over 1 MiB or broken off\n".to_owned(),
        )),
        Err(_) => Err(respond(
            408,
            "text/plain; charset=utf-8",
            "the form did not arrive in time\n".to_owned(),
        )),
    }
}

/// A change must come from a page of this console: the session's CSRF
/// token, and no `Origin` or `Sec-Fetch-Site` naming another site.
fn same_origin(
    headers: &HeaderMap,
    form: &[(String, String)],
    s: &Session,
) -> Result<(), &'static str> {
    use sha2::Digest as _;
    let given = sha2::Sha256::digest(field(form, "csrf").as_bytes());
    let want = sha2::Sha256::digest(s.csrf.as_bytes());
    if given != want {
        return Err("the form's CSRF token is missing or not this session's");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        if origin != format!("https://{host}") {
            return Err("the form was sent from another site");
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|o| o.to_str().ok()) {
        if site != "same-origin" && site != "none" {
            return Err("the form was sent from another site");
        }
    }
    Ok(())
}

fn internal(e: &dyn std::fmt::Display) -> Response<Full<Bytes>> {
    tracing::error!(error = %e, "console request failed");
    html(500, pages::failed())
}
