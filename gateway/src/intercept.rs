//! HTTPS interception: per-URL rules inside TLS.
//!
//! A CONNECT the policy does not allow as such, to a host the policy has
//! URL rules for ([`policy::FastPolicy::has_url_rules_for`]), is not
//! refused: the proxy answers 200, terminates the device's TLS with a
//! certificate for that host from its own CA (`DATA/proxy-ca.crt`, which
//! the image build puts into the image's trust store), and then decides
//! every request inside by its full URL and method, as it does plain HTTP.
//! An allowed request goes upstream over the proxy's own TLS, verified
//! against the system's roots (and `--upstream-ca`, for a site with a
//! private CA): an upstream whose certificate does not verify gets a 502
//! naming why, and never a byte of the device's request.
//!
//! A CONNECT the policy allows (`CONNECT` or `*` as the method) is carried
//! as a tunnel, decided per host, as before: that is how a site that pins
//! its certificate is listed for pass-through.
//!
//! The URL decided is made from the CONNECT's host and port and the
//! request's path: a `Host` header or an absolute URL naming another host
//! is refused. The device's certificate is checked again on every request
//! (expiry, revocation, re-enrollment), and the connection counts against
//! the device's tunnel cap, closes when idle and lives at most as long as a
//! tunnel.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use policy::CanonicalUrl;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;

use crate::app::AppState;
use crate::proxy::{audit, decide, problem, rule_json, Body};
use crate::server::DeviceIdentity;
use crate::state::Device;

/// How long a site certificate made for interception is used before a new
/// one is made (it is valid for a day).
const SITE_CERT_REUSE: Duration = Duration::from_secs(12 * 3600);

/// Site certificates, and the TLS client for upstreams.
pub struct Intercept {
    sites: Mutex<HashMap<String, (Instant, Arc<rustls::ServerConfig>)>>,
    upstream: tokio_rustls::TlsConnector,
}

impl std::fmt::Debug for Intercept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intercept").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Intercept {
    /// The upstream client trusts the system's roots (`SSL_CERT_FILE` and
    /// `SSL_CERT_DIR` are honoured) and the certificates in `extra`.
    pub fn new(extra: Option<&Path>) -> Result<Intercept, String> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        if let Some(p) = extra {
            let pem = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            let mut n = 0;
            for c in CertificateDer::pem_slice_iter(&pem) {
                let c = c.map_err(|e| format!("{}: {e}", p.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", p.display()))?;
                n += 1;
            }
            if n == 0 {
                return Err(format!("{}: no certificate in it", p.display()));
            }
        } else if added == 0 {
            tracing::warn!("no system root certificates: every intercepted site will be refused");
        }
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Intercept {
            sites: Mutex::new(HashMap::new()),
            upstream: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    /// The TLS server side shown to a device for `host`: a certificate from
    /// the proxy CA, made on first use and reused for a while.
    fn site(&self, state: &AppState, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        if let Ok(sites) = self.sites.lock() {
            if let Some((made, c)) = sites.get(host) {
                if made.elapsed() < SITE_CERT_REUSE {
                    return Ok(c.clone());
                }
            }
        }
        let cert = state.pki.issue_site_cert(host).map_err(|e| e.to_string())?;
        let mut chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?;
        chain.extend(
            CertificateDer::pem_slice_iter(state.pki.proxy_ca.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?,
        );
        let key =
            PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if let Ok(mut sites) = self.sites.lock() {
            if sites.len() > 10_000 {
                sites.clear();
            }
            sites.insert(host.to_owned(), (Instant::now(), config.clone()));
        }
        Ok(config)
    }
}

/// One intercepted connection: who, for which host.
pub(crate) struct Session {
    /// `https://host:port/` from the CONNECT.
    pub(crate) base: CanonicalUrl,
    /// The device.
    pub(crate) dev: Device,
    /// Its certificate, checked again on every request.
    pub(crate) who: DeviceIdentity,
    /// The gateway.
    pub(crate) state: Arc<AppState>,
}

impl Session {
    /// Terminate the device's TLS on `client` (the CONNECT's upgraded
    /// stream) and serve its requests until it closes, goes idle, or lives
    /// as long as a tunnel may.
    pub(crate) async fn serve<C>(self, client: C, guard: &crate::server::ConnGuard)
    where
        C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let host = self.base.host.to_string();
        let config = match self.state.intercept.site(&self.state, &host) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(%host, error = %e, "no site certificate: closing the tunnel");
                return;
            }
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match tokio::time::timeout(
            crate::proxy::CLIENT_HELLO_TIMEOUT,
            acceptor.accept(client),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                // Most often: the device does not trust the proxy CA.
                let detail = format!("the device's TLS to the proxy failed: {e} (does the device trust DATA/proxy-ca.crt?)");
                audit(
                    &self.state,
                    &self.dev.device_id,
                    &self.base.to_string(),
                    false,
                    json!({"method": "CONNECT", "reason": "intercept-tls", "detail": detail}),
                )
                .await;
                return;
            }
            Err(_) => return,
        };
        let idle = self.state.tunnel_idle;
        let max = tokio::time::sleep(self.state.tunnel_max);
        let session = Arc::new(self);
        let serving = session.clone();
        let service = hyper::service::service_fn(move |req| {
            let s = serving.clone();
            async move { Ok::<_, std::convert::Infallible>(s.request(req).await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .max_buf_size(64 * 1024)
            .serve_connection(TokioIo::new(tls), service);
        // Like a tunnel: the device is checked again every tick, not only
        // when a request starts, so a revocation or an expiry ends a
        // connection that idles or streams (dropping it closes it).
        let mut recheck = tokio::time::interval(crate::proxy::TUNNEL_RECHECK);
        recheck.tick().await;
        tokio::pin!(conn, max);
        let closed = loop {
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "intercepted connection ended with an error");
                    }
                    return;
                }
                () = guard.stopping() => return,
                () = &mut max => break "it reached its maximum lifetime",
                _ = recheck.tick() => {
                    if session.state.authorize_device(Some(&session.who)).await.is_err() {
                        break "the device's certificate expired, or it was revoked or enrolled again";
                    }
                }
            }
        };
        audit(
            &session.state,
            &session.dev.device_id,
            &session.base.to_string(),
            false,
            json!({"method": "CONNECT", "reason": "closed", "detail": closed, "intercepted": true}),
        )
        .await;
    }

    /// Decide and carry one request.
    async fn request(&self, req: Request<Incoming>) -> Response<Body> {
        let method = req.method().as_str().to_owned();
        if let Err(refusal) = self.state.authorize_device(Some(&self.who)).await {
            return refusal.into_response().map(crate::proxy::boxed);
        }
        let url = match self.url_of(&req) {
            Ok(u) => u,
            Err(detail) => {
                let shown = format!("{}{}", self.base, req.uri());
                audit(&self.state, &self.dev.device_id, &shown, false, json!({"method": method, "reason": "url", "detail": detail, "intercepted": true})).await;
                return problem(
                    StatusCode::BAD_REQUEST,
                    "bad request",
                    &detail,
                    json!({"url": shown}),
                );
            }
        };
        let shown = url.to_string();
        let (addr, rule) = match decide(&self.state, &self.dev, &url, &method).await {
            Ok(x) => x,
            Err(d) => {
                audit(&self.state, &self.dev.device_id, &shown, false, json!({"method": method, "reason": d.reason, "rule": rule_json(d.rule.as_ref()), "detail": d.detail, "intercepted": true})).await;
                return d.response(&shown);
            }
        };
        match self.upstream(req, &url, addr).await {
            Ok(resp) => {
                audit(&self.state, &self.dev.device_id, &shown, true, json!({"method": method, "rule": rule_json(rule.as_ref()), "address": addr.to_string(), "intercepted": true})).await;
                resp
            }
            Err((reason, detail)) => {
                audit(&self.state, &self.dev.device_id, &shown, false, json!({"method": method, "reason": reason, "detail": detail, "rule": rule_json(rule.as_ref()), "intercepted": true})).await;
                let title = if reason == "upstream-certificate" {
                    "upstream certificate refused"
                } else {
                    "upstream unreachable"
                };
                problem(
                    StatusCode::BAD_GATEWAY,
                    title,
                    &detail,
                    json!({"url": shown, "reason": reason}),
                )
            }
        }
    }

    /// The URL a request inside the tunnel is for: the CONNECT's host and
    /// port, the request's path and query. Another host, in the request
    /// line or the Host header, is refused.
    fn url_of(&self, req: &Request<Incoming>) -> Result<CanonicalUrl, String> {
        let uri = req.uri();
        let authority = host_port(&self.base);
        if let Some(a) = uri.authority() {
            if !same_authority(a.as_str(), &self.base) {
                return Err(format!("this connection is for {authority}, not {a}"));
            }
        }
        if let Some(h) = req.headers().get(hyper::header::HOST) {
            let h = h
                .to_str()
                .map_err(|_| "the Host header is not text".to_owned())?;
            if !same_authority(h, &self.base) {
                return Err(format!("this connection is for {authority}, not {h}"));
            }
        }
        let target = uri.path_and_query().map_or("/", |p| p.as_str());
        if !target.starts_with('/') {
            return Err("the request target must be a path".to_owned());
        }
        CanonicalUrl::parse(&format!("https://{authority}{target}")).map_err(|e| e.to_string())
    }

    /// Send the request to `addr` over TLS verified for the host: the
    /// answer, or (reason, detail).
    async fn upstream(
        &self,
        req: Request<Incoming>,
        url: &CanonicalUrl,
        addr: SocketAddr,
    ) -> Result<Response<Body>, (&'static str, String)> {
        let unreachable = |d: String| ("upstream", d);
        let tcp = match tokio::time::timeout(
            crate::proxy::UPSTREAM_TIMEOUT,
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => return Err(unreachable(format!("connecting to {addr}: {e}"))),
            Err(_) => return Err(unreachable(format!("connecting to {addr} timed out"))),
        };
        let name = ServerName::try_from(url.host.to_string().trim_matches(['[', ']']).to_owned())
            .map_err(|e| unreachable(format!("{}: {e}", url.host)))?;
        let tls = match tokio::time::timeout(
            crate::proxy::UPSTREAM_TIMEOUT,
            self.state.intercept.upstream.connect(name, tcp),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                return Err((
                    "upstream-certificate",
                    format!("{} failed TLS verification: {e}", url.host),
                ))
            }
            Err(_) => return Err(unreachable(format!("TLS to {addr} timed out"))),
        };
        crate::proxy::exchange(tls, req, url)
            .await
            .map_err(|e| match e {
                crate::proxy::Upstream::Unreachable(d) => ("upstream", d),
                crate::proxy::Upstream::BadPath => {
                    ("upstream", "the path cannot be forwarded".to_owned())
                }
            })
    }
}

/// `host:port` of a URL, IPv6 in brackets.
fn host_port(u: &CanonicalUrl) -> String {
    format!("{}:{}", u.host, u.port)
}

/// Whether `authority` (a Host header or a request's authority) names the
/// same host and port as `base` (no port: 443).
fn same_authority(authority: &str, base: &CanonicalUrl) -> bool {
    match CanonicalUrl::parse(&format!("https://{authority}/")) {
        Ok(u) => u.host == base.host && u.port == base.port,
        Err(_) => false,
    }
}
