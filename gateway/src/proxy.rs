//! The egress proxy: a device's only way out.
//!
//! It listens on its own TLS port with the same device-certificate check as
//! the API, and takes two kinds of request:
//!
//! - **absolute-form HTTP** (`GET http://host/path HTTP/1.1`): the URL is
//!   canonicalised ([`policy::CanonicalUrl`]), decided, and forwarded with
//!   the canonical path: what was decided is what is sent.
//! - **CONNECT host:port**: decided as `https://host:port/` with the method
//!   `CONNECT`; once allowed, the tunnelled bytes must open with a TLS
//!   ClientHello whose SNI names the same host (an IP-literal CONNECT may
//!   carry none), or the tunnel is closed before a byte reaches upstream.
//!
//! Each decision is the policy fast path for `device:ID` and the device's
//! groups. Then the host is resolved, and every address that is loopback,
//! private, link-local, unique-local, CGNAT, multicast or unspecified is
//! refused unless a rule allows the same request with that address as the
//! host: a DNS name cannot smuggle a request into the branch office's
//! network. The proxy connects to the address it checked (no second
//! lookup). Denials answer 403 with a problem body naming the rule; every
//! decision is an audit entry (`kind` `proxy`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use policy::url::Host;
use policy::{CanonicalUrl, Rule};

use crate::app::AppState;
use crate::server::DeviceIdentity;
use crate::state::Device;

/// A response body: a buffered one, or upstream's, streamed.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How long resolving and connecting upstream may take.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// How long upstream may take to start its answer.
pub const UPSTREAM_ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the client may take to send its ClientHello into a tunnel.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest ClientHello read while looking for the SNI.
const MAX_CLIENT_HELLO: usize = 64 * 1024;
/// How often an open tunnel re-checks that its device is still admitted.
pub const TUNNEL_RECHECK: Duration = Duration::from_secs(2);
/// Most tunnels one device may hold open at once (the gateway has 1,024
/// connection slots in all).
pub const TUNNELS_PER_DEVICE: usize = 32;

/// The open tunnels of each device.
#[derive(Debug, Default)]
pub struct TunnelCounts(std::sync::Mutex<std::collections::HashMap<String, usize>>);

/// One open tunnel of a device; its place is given back on drop.
#[derive(Debug)]
pub struct TunnelSlot {
    counts: Arc<AppState>,
    device_id: String,
}

impl TunnelCounts {
    /// Tunnels open now, every device's.
    pub fn total(&self) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .sum()
    }

    /// A place for one more tunnel of `device_id`, unless it holds
    /// [`TUNNELS_PER_DEVICE`] already.
    fn take(state: &Arc<AppState>, device_id: &str) -> Option<TunnelSlot> {
        let mut open = state.tunnels.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(device_id.to_owned()).or_default();
        if *n >= TUNNELS_PER_DEVICE {
            return None;
        }
        *n += 1;
        Some(TunnelSlot {
            counts: Arc::clone(state),
            device_id: device_id.to_owned(),
        })
    }
}

impl Drop for TunnelSlot {
    fn drop(&mut self) {
        let mut open = self
            .counts
            .tunnels
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.device_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.device_id);
            }
        }
    }
}

/// Box a buffered body.
pub fn boxed(b: Full<Bytes>) -> Body {
    b.map_err(|never| match never {}).boxed()
}

pub(crate) fn problem(
    status: StatusCode,
    title: &str,
    detail: &str,
    extra: Value,
) -> Response<Body> {
    let mut body =
        json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail});
    if let (Some(b), Value::Object(x)) = (body.as_object_mut(), extra) {
        b.extend(x);
    }
    let mut r = Response::new(boxed(Full::new(Bytes::from(body.to_string()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// Whether an address is one a name must not lead to: any block of the IANA
/// special-purpose registries ([`crate::special`]).
pub fn is_internal(ip: IpAddr) -> bool {
    crate::special::is_internal(ip)
}

/// A refusal, as answered and audited.
#[derive(Debug)]
pub(crate) struct Denied {
    status: StatusCode,
    title: &'static str,
    pub(crate) detail: String,
    pub(crate) rule: Option<Rule>,
    pub(crate) reason: &'static str,
}

pub(crate) fn rule_json(rule: Option<&Rule>) -> Value {
    match rule {
        Some(r) => json!({"line": r.line, "text": r.to_string()}),
        None => Value::Null,
    }
}

impl Denied {
    pub(crate) fn response(&self, url: &str) -> Response<Body> {
        problem(
            self.status,
            self.title,
            &self.detail,
            json!({"url": url, "reason": self.reason, "rule": rule_json(self.rule.as_ref())}),
        )
    }
}

/// Decide `url` with `method` for `device`, resolve it, and check the
/// addresses: the address to connect to and the deciding rule, or why not.
pub(crate) async fn decide(
    state: &AppState,
    device: &Device,
    url: &CanonicalUrl,
    method: &str,
) -> Result<(SocketAddr, Option<Rule>), Denied> {
    let policy = state.policy();
    let subject = format!("device:{}", device.device_id);
    let ask = |u: &CanonicalUrl| {
        policy.decide_with_groups(
            &subject,
            &device.groups,
            &policy::Request::Url {
                url: u.clone(),
                method: method.to_owned(),
            },
        )
    };
    let decision = ask(url);
    if !decision.allow {
        let detail = match &decision.rule {
            Some(r) => format!("line {} of the policy denies it: {r}", r.line),
            None => "no rule allows it (the default is deny)".to_owned(),
        };
        return Err(Denied {
            status: StatusCode::FORBIDDEN,
            title: "denied by policy",
            detail,
            rule: decision.rule,
            reason: "policy",
        });
    }
    let unreachable = |detail: String| Denied {
        status: StatusCode::BAD_GATEWAY,
        title: "upstream unreachable",
        detail,
        rule: decision.rule.clone(),
        reason: "resolve",
    };
    let ips: Vec<IpAddr> = match &url.host {
        Host::V4(a) => vec![IpAddr::V4(*a)],
        Host::V6(a) => vec![IpAddr::V6(*a)],
        Host::Name(n) => {
            match tokio::time::timeout(
                UPSTREAM_TIMEOUT,
                tokio::net::lookup_host((n.as_str(), url.port)),
            )
            .await
            {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                Ok(Err(e)) => return Err(unreachable(format!("cannot resolve {n}: {e}"))),
                Err(_) => return Err(unreachable(format!("resolving {n} timed out"))),
            }
        }
    };
    let mut refused = None;
    for ip in ips {
        if !is_internal(ip) {
            return Ok((SocketAddr::new(ip, url.port), decision.rule));
        }
        let literal = CanonicalUrl {
            host: match ip {
                IpAddr::V4(a) => Host::V4(a),
                IpAddr::V6(a) => match a.to_ipv4_mapped() {
                    Some(v4) => Host::V4(v4),
                    None => Host::V6(a),
                },
            },
            ..url.clone()
        };
        let by_address = if literal.host == url.host {
            decision.clone()
        } else {
            ask(&literal)
        };
        if by_address.allow {
            return Ok((SocketAddr::new(ip, url.port), by_address.rule));
        }
        refused.get_or_insert(ip);
    }
    Err(match refused {
        Some(ip) => Denied {
            status: StatusCode::FORBIDDEN,
            title: "denied: internal address",
            detail: format!(
                "{} resolves to {ip}, an internal address no rule names (a rule for \
                 {}://{ip}:{}/ would allow it)",
                url.host, url.scheme, url.port
            ),
            rule: None,
            reason: "address",
        },
        None => unreachable(format!("{} has no address", url.host)),
    })
}

/// The headers a proxy must not pass on (RFC 9110 §7.6.1) or that are
/// for the proxy itself.
pub(crate) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
];

pub(crate) async fn audit(state: &AppState, device: &str, url: &str, allow: bool, details: Value) {
    state
        .record(
            "proxy",
            device,
            url,
            if allow { "allow" } else { "deny" },
            details,
        )
        .await;
}

/// Serve one proxy request from `device` (the connection's client
/// certificate, if any).
pub async fn handle(
    req: Request<Incoming>,
    device: Option<&DeviceIdentity>,
    state: Arc<AppState>,
    guard: Arc<crate::server::ConnGuard>,
) -> Response<Body> {
    let dev = match state.authorize_device(device).await {
        Ok(d) => d,
        Err(refusal) => return refusal.into_response().map(boxed),
    };
    if req.method() == Method::CONNECT {
        connect(req, dev, device.cloned(), state, guard).await
    } else {
        forward(req, dev, &state).await
    }
}

async fn forward(req: Request<Incoming>, dev: Device, state: &AppState) -> Response<Body> {
    let url = match forward_url(&req, &dev, state).await {
        Ok(u) => u,
        Err(refusal) => return refusal,
    };
    let shown = url.to_string();
    let method = req.method().as_str().to_owned();
    let (addr, rule) = match decide(state, &dev, &url, &method).await {
        Ok(x) => x,
        Err(d) => {
            audit(state, &dev.device_id, &shown, false, json!({"method": method, "reason": d.reason, "rule": rule_json(d.rule.as_ref()), "detail": d.detail})).await;
            return d.response(&shown);
        }
    };
    audit(
        state,
        &dev.device_id,
        &shown,
        true,
        json!({"method": method, "rule": rule_json(rule.as_ref()), "address": addr.to_string()}),
    )
    .await;
    match send_upstream(req, &url, addr).await {
        Ok(resp) => resp,
        Err(Upstream::Unreachable(detail)) => problem(
            StatusCode::BAD_GATEWAY,
            "upstream unreachable",
            &detail,
            json!({"url": shown}),
        ),
        Err(Upstream::BadPath) => bad_request("the path cannot be forwarded"),
    }
}

/// A 400 for a request the proxy cannot take.
fn bad_request(detail: &str) -> Response<Body> {
    problem(
        StatusCode::BAD_REQUEST,
        "bad proxy request",
        detail,
        Value::Null,
    )
}

/// The canonical URL of a plain-HTTP proxy request; a refusal (audited
/// when the URL does not parse) otherwise.
async fn forward_url(
    req: &Request<Incoming>,
    dev: &Device,
    state: &AppState,
) -> Result<CanonicalUrl, Response<Body>> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad_request("for https, open a tunnel with CONNECT")),
        Some(_) => return Err(bad_request("only http URLs are forwarded")),
        None => {
            return Err(bad_request(
                "this is a proxy: send the absolute URL (GET http://host/path)",
            ))
        }
    }
    match CanonicalUrl::parse(&uri.to_string()) {
        Ok(u) => Ok(u),
        Err(e) => {
            let details =
                json!({"method": req.method().as_str(), "reason": "url", "error": e.to_string()});
            audit(state, &dev.device_id, &uri.to_string(), false, details).await;
            Err(bad_request(&e.to_string()))
        }
    }
}

/// Why a forwarded request got no answer from upstream.
pub(crate) enum Upstream {
    /// Connecting or talking to it failed.
    Unreachable(String),
    /// The canonical path is no request target.
    BadPath,
}

/// Send the request to `addr` as `url` says (the spelling that was decided
/// on, so the upstream serves what the rule allowed), hop-by-hop headers
/// dropped both ways.
async fn send_upstream(
    req: Request<Incoming>,
    url: &CanonicalUrl,
    addr: SocketAddr,
) -> Result<Response<Body>, Upstream> {
    let unreachable = Upstream::Unreachable;
    let tcp = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(unreachable(format!("connecting to {addr}: {e}"))),
        Err(_) => return Err(unreachable(format!("connecting to {addr} timed out"))),
    };
    exchange(tcp, req, url).await
}

/// Send `req` over `io` (a connection to the upstream, plain or TLS) with
/// the target `url` says, hop-by-hop headers dropped both ways: the answer.
pub(crate) async fn exchange<IO>(
    io: IO,
    req: Request<Incoming>,
    url: &CanonicalUrl,
) -> Result<Response<Body>, Upstream>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let unreachable = Upstream::Unreachable;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| unreachable(format!("upstream HTTP: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "upstream connection ended with an error");
        }
    });
    let (mut parts, body) = req.into_parts();
    let target = match &url.query {
        Some(q) => format!("{}?{q}", url.path),
        None => url.path.clone(),
    };
    parts.uri = target.parse().map_err(|_| Upstream::BadPath)?;
    for h in HOP_BY_HOP {
        parts.headers.remove(*h);
    }
    if let Ok(v) = hyper::header::HeaderValue::from_str(&host_header(url)) {
        parts.headers.insert(hyper::header::HOST, v);
    }
    let sent = tokio::time::timeout(
        UPSTREAM_ANSWER_TIMEOUT,
        sender.send_request(Request::from_parts(parts, body)),
    )
    .await;
    match sent {
        Err(_) => Err(unreachable("upstream did not answer in time".to_owned())),
        Ok(Ok(resp)) => {
            let (mut parts, body) = resp.into_parts();
            for h in HOP_BY_HOP {
                parts.headers.remove(*h);
            }
            Ok(Response::from_parts(parts, body.boxed()))
        }
        Ok(Err(e)) => Err(unreachable(format!("upstream HTTP: {e}"))),
    }
}

/// The Host header for `url`: the port only when it is not the scheme's.
pub(crate) fn host_header(url: &CanonicalUrl) -> String {
    if (url.scheme == "http" && url.port == 80) || (url.scheme == "https" && url.port == 443) {
        url.host.to_string()
    } else {
        format!("{}:{}", url.host, url.port)
    }
}

/// Read the tunnelled client's first TLS record(s) up to its ClientHello:
/// the SNI it names (if any) and every byte read, to replay upstream.
async fn client_hello<R: tokio::io::AsyncRead + Unpin>(
    io: &mut R,
) -> Result<(Option<String>, Vec<u8>), String> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the ClientHello: {e}"))?;
        if n == 0 {
            return Err("the client closed the tunnel before a ClientHello".to_owned());
        }
        seen.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            acceptor
                .read_tls(&mut fresh)
                .map_err(|e| format!("not TLS: {e}"))?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                return Ok((
                    accepted.client_hello().server_name().map(str::to_owned),
                    seen,
                ))
            }
            Ok(None) if seen.len() < MAX_CLIENT_HELLO => {}
            Ok(None) => return Err("the ClientHello is too large".to_owned()),
            Err((e, _)) => return Err(format!("not a TLS ClientHello: {e}")),
        }
    }
}

async fn connect(
    req: Request<Incoming>,
    dev: Device,
    who: Option<DeviceIdentity>,
    state: Arc<AppState>,
    guard: Arc<crate::server::ConnGuard>,
) -> Response<Body> {
    let (Some(who), Some(slot)) = (who, TunnelCounts::take(&state, &dev.device_id)) else {
        let detail = format!("this device holds {TUNNELS_PER_DEVICE} open tunnels already");
        audit(
            &state,
            &dev.device_id,
            "CONNECT",
            false,
            json!({"method": "CONNECT", "reason": "tunnels", "detail": detail}),
        )
        .await;
        return problem(
            StatusCode::TOO_MANY_REQUESTS,
            "too many tunnels",
            &detail,
            Value::Null,
        );
    };
    let url = match connect_target(&req, &state, &dev).await {
        Ok(u) => u,
        Err(refused) => return refused,
    };
    let shown = url.to_string();
    let (addr, rule) = match decide(&state, &dev, &url, "CONNECT").await {
        Ok(x) => x,
        // Refused for want of a CONNECT rule (not by a rule denying it) to a
        // host the policy has URL rules for: decide inside, request by request.
        Err(d)
            if d.reason == "policy"
                && d.rule.is_none()
                && state.policy().has_url_rules_for(&url) =>
        {
            return intercept(req, url, dev, who, state, slot, guard).await;
        }
        Err(d) => {
            audit(&state, &dev.device_id, &shown, false, json!({"method": "CONNECT", "reason": d.reason, "rule": rule_json(d.rule.as_ref()), "detail": d.detail})).await;
            return d.response(&shown);
        }
    };
    let upstream = match dial(addr, &shown).await {
        Ok(t) => t,
        Err(refused) => return refused,
    };
    audit(
        &state,
        &dev.device_id,
        &shown,
        true,
        json!({"method": "CONNECT", "rule": rule_json(rule.as_ref()), "address": addr.to_string()}),
    )
    .await;
    tokio::spawn(async move {
        let Some(upgraded) = upgraded(req).await else {
            return;
        };
        let open = OpenTunnel {
            url: &url,
            dev: &dev,
            who: &who,
            state: &state,
            _slot: slot,
        };
        open.run(upgraded, upstream, &guard).await;
    });
    Response::new(boxed(Full::new(Bytes::new())))
}

/// The URL a CONNECT names (`host:port`, canonical), or the answer
/// refusing it (a bad URL is audited).
async fn connect_target(
    req: &Request<Incoming>,
    state: &AppState,
    dev: &Device,
) -> Result<CanonicalUrl, Response<Body>> {
    let needs_port = || {
        problem(
            StatusCode::BAD_REQUEST,
            "bad proxy request",
            "CONNECT needs host:port",
            Value::Null,
        )
    };
    let Some(authority) = req.uri().authority().cloned() else {
        return Err(needs_port());
    };
    if authority.port_u16().is_none() {
        return Err(needs_port());
    }
    match CanonicalUrl::parse(&format!("https://{authority}/")) {
        Ok(u) => Ok(u),
        Err(e) => {
            audit(
                state,
                &dev.device_id,
                authority.as_str(),
                false,
                json!({"method": "CONNECT", "reason": "url", "error": e.to_string()}),
            )
            .await;
            Err(problem(
                StatusCode::BAD_REQUEST,
                "bad proxy request",
                &e.to_string(),
                Value::Null,
            ))
        }
    }
}

/// The upstream connection for a tunnel, within [`UPSTREAM_TIMEOUT`], or a
/// 502 naming what failed.
async fn dial(addr: SocketAddr, shown: &str) -> Result<TcpStream, Response<Body>> {
    let detail = match tokio::time::timeout(UPSTREAM_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(t)) => return Ok(t),
        Ok(Err(e)) => format!("connecting to {addr}: {e}"),
        Err(_) => format!("connecting to {addr} timed out"),
    };
    Err(problem(
        StatusCode::BAD_GATEWAY,
        "upstream unreachable",
        &detail,
        json!({"url": shown}),
    ))
}

/// The client's side of a CONNECT once the 200 is sent.
async fn upgraded(req: Request<Incoming>) -> Option<TokioIo<hyper::upgrade::Upgraded>> {
    match hyper::upgrade::on(req).await {
        Ok(u) => Some(TokioIo::new(u)),
        Err(e) => {
            tracing::debug!(error = %e, "CONNECT upgrade failed");
            None
        }
    }
}

/// A CONNECT to a host with URL rules but no CONNECT rule: answered 200,
/// and every request inside decided by its URL ([`crate::intercept`]).
async fn intercept(
    req: Request<Incoming>,
    url: CanonicalUrl,
    dev: Device,
    who: DeviceIdentity,
    state: Arc<AppState>,
    slot: TunnelSlot,
    guard: Arc<crate::server::ConnGuard>,
) -> Response<Body> {
    audit(
        &state,
        &dev.device_id,
        &url.to_string(),
        true,
        json!({"method": "CONNECT", "intercepted": true, "detail": "the policy has URL rules for this host: each request inside is decided by its URL"}),
    )
    .await;
    tokio::spawn(async move {
        let Some(upgraded) = upgraded(req).await else {
            return;
        };
        let _slot = slot;
        let session = crate::intercept::Session {
            base: url,
            dev,
            who,
            state,
        };
        session.serve(upgraded, &guard).await;
    });
    Response::new(boxed(Full::new(Bytes::new())))
}

/// A tunnel being carried: re-decided every [`TUNNEL_RECHECK`] against the
/// device's certificate (expired, revoked, re-enrolled), the policy in
/// force, the idle timeout and the maximum lifetime.
struct OpenTunnel<'a> {
    url: &'a CanonicalUrl,
    dev: &'a Device,
    who: &'a DeviceIdentity,
    state: &'a AppState,
    _slot: TunnelSlot,
}

impl OpenTunnel<'_> {
    /// Check the tunnelled TLS's SNI, then carry bytes both ways until one
    /// side closes, the gateway stops, or a re-check closes the tunnel.
    async fn run<C>(&self, mut client: C, mut upstream: TcpStream, guard: &crate::server::ConnGuard)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (url, dev, state) = (self.url, self.dev, self.state);
        let shown = url.to_string();
        let refuse = |reason: &'static str, detail: String| async move {
            audit(
                state,
                &dev.device_id,
                &shown,
                false,
                json!({"method": "CONNECT", "reason": reason, "detail": detail}),
            )
            .await;
        };
        let hello = tokio::time::timeout(CLIENT_HELLO_TIMEOUT, client_hello(&mut client)).await;
        let (sni, seen) = match hello {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return refuse("sni", e).await,
            Err(_) => return refuse("sni", "no ClientHello in time".to_owned()).await,
        };
        let sni_host = sni
            .as_deref()
            .and_then(|s| CanonicalUrl::parse(&format!("https://{s}/")).ok())
            .map(|u| u.host);
        let matches = match (&sni_host, &url.host) {
            (Some(h), host) => h == host,
            (None, Host::V4(_) | Host::V6(_)) => true,
            (None, Host::Name(_)) => false,
        };
        if !matches {
            let named = sni.unwrap_or_else(|| "none".to_owned());
            return refuse(
                "sni",
                format!(
                    "the tunnelled TLS names {named:?}, not the CONNECT host {}",
                    url.host
                ),
            )
            .await;
        }
        if upstream.write_all(&seen).await.is_err() {
            return;
        }
        let started = std::time::Instant::now();
        let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut client = Activity::new(client, started, Arc::clone(&last));
        let mut upstream = Activity::new(upstream, started, Arc::clone(&last));
        let mut recheck = tokio::time::interval(TUNNEL_RECHECK);
        recheck.tick().await;
        let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
        tokio::pin!(copy);
        loop {
            tokio::select! {
                _ = &mut copy => return,
                () = guard.stopping() => return,
                _ = recheck.tick() => {
                    let idle_ms = started.elapsed().as_millis() as u64 - last.load(std::sync::atomic::Ordering::Relaxed);
                    if let Some(why) = self.closing(started.elapsed(), Duration::from_millis(idle_ms)).await {
                        tracing::info!(device = %dev.device_id, reason = why, "closing a tunnel");
                        audit(state, &dev.device_id, &url.to_string(), false, json!({"method": "CONNECT", "reason": "closed", "detail": why})).await;
                        return;
                    }
                }
            }
        }
    }

    /// Why the tunnel must close now, if it must.
    async fn closing(&self, age: Duration, idle: Duration) -> Option<&'static str> {
        if self.state.authorize_device(Some(self.who)).await.is_err() {
            return Some("the device's certificate expired, or it was revoked or enrolled again");
        }
        let asked = policy::Request::Url {
            url: self.url.clone(),
            method: "CONNECT".to_owned(),
        };
        let subject = format!("device:{}", self.dev.device_id);
        if !self
            .state
            .policy()
            .decide_with_groups(&subject, &self.dev.groups, &asked)
            .allow
        {
            return Some("the policy in force no longer allows it");
        }
        if idle > self.state.tunnel_idle {
            return Some("idle for longer than the idle timeout");
        }
        if age > self.state.tunnel_max {
            return Some("open for longer than a tunnel may live");
        }
        None
    }
}

/// A stream that notes when bytes last moved through it (ms since `started`).
struct Activity<S> {
    inner: S,
    started: std::time::Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
}

impl<S> Activity<S> {
    fn new(inner: S, started: std::time::Instant, last: Arc<std::sync::atomic::AtomicU64>) -> Self {
        Activity {
            inner,
            started,
            last,
        }
    }

    fn touch(&self) {
        let now = self.started.elapsed().as_millis() as u64;
        self.last.store(now, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Activity<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700::1111", "172.32.0.1"] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }
}
