//! The device side of the gateway protocol: a small HTTPS JSON client that
//! pins the gateway CA and may present a device certificate.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;

/// Why a request failed before an answer came back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The gateway URL is not `https://HOST:PORT`.
    #[error("gateway URL {0:?} is not https://HOST[:PORT]")]
    Url(String),
    /// TLS setup (the CA or the client certificate).
    #[error("TLS: {0}")]
    Tls(String),
    /// The connection or the exchange.
    #[error("talking to {url}: {problem}")]
    Io {
        /// The gateway.
        url: String,
        /// What went wrong.
        problem: String,
    },
    /// The answer arrived but its content was refused by the caller's
    /// check (a chunk that does not hash to its id, one not asked for):
    /// not a network fault, so not one to ask again for.
    #[error("{url} sent {problem}")]
    Content {
        /// The gateway.
        url: String,
        /// What the check refused.
        problem: String,
    },
}

/// A typed exchange failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// No answer.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The gateway refused; the message lists its reasons.
    #[error("{}", .problem.explain(what))]
    Refused {
        /// The step refused.
        what: &'static str,
        /// The gateway's problem body.
        problem: Box<protocol::Problem>,
    },
    /// A 2xx answer that is not the protocol's.
    #[error("the gateway's answer to the {what} is not the expected JSON")]
    Answer {
        /// The step.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded.
    #[error("encoding the request")]
    Encode(#[source] serde_json::Error),
}

fn typed<A: serde::de::DeserializeOwned>(
    what: &'static str,
    status: u16,
    answer: Value,
) -> Result<A, CallError> {
    if !(200..300).contains(&status) {
        let problem = Box::new(protocol::Problem::from_answer(status, &answer));
        return Err(CallError::Refused { what, problem });
    }
    serde_json::from_value(answer).map_err(|source| CallError::Answer { what, source })
}

/// How long the client waits, so a stalled gateway or a dead link never
/// freezes the caller (the agent's loop, a pull on a school link).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// The TCP connection and the TLS handshake.
    pub connect: std::time::Duration,
    /// From sending a request to the whole answer of a JSON call, or to the
    /// status line of a streamed one.
    pub answer: std::time::Duration,
    /// The longest pause between two pieces of a streamed answer (a long
    /// pull on a slow link is fine as long as bytes keep coming).
    pub idle: std::time::Duration,
}

impl Default for Timeouts {
    /// 10 s to connect, 60 s for an answer, 60 s of silence in a stream.
    fn default() -> Timeouts {
        Timeouts {
            connect: std::time::Duration::from_secs(10),
            answer: std::time::Duration::from_secs(60),
            idle: std::time::Duration::from_secs(60),
        }
    }
}

/// The routes a device's own JSON goes to (sync and agent).
fn device_route(path: &str) -> bool {
    path.starts_with(protocol::paths::SYNC_PREFIX)
        || path.starts_with(protocol::paths::AGENT_PREFIX)
}

/// What a gateway said of the request encodings it reads.
#[derive(Debug, Default)]
struct Encodings {
    /// Its last answer on a device route said `Accept-Encoding: zstd`
    /// (RFC 7694).
    says_zstd: AtomicBool,
    /// It refused a compressed body all the same: plain to it for as long
    /// as this client lives, whatever it says.
    refused_zstd: AtomicBool,
}

impl Encodings {
    /// Whether to send it a zstd body.
    fn zstd(&self) -> bool {
        self.says_zstd.load(Ordering::Relaxed) && !self.refused_zstd.load(Ordering::Relaxed)
    }

    /// Note what an answer on a device route says: a gateway that reads
    /// zstd bodies says so in every such answer; one without it (from
    /// before compression, or rolled back to one) gets plain bodies.
    fn learn(&self, headers: &hyper::HeaderMap) {
        self.says_zstd.store(says_zstd(headers), Ordering::Relaxed);
    }
}

/// Whether `Accept-Encoding` names zstd as acceptable (a `q` of 0 says it
/// is not).
fn says_zstd(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(hyper::header::ACCEPT_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or("");
            let refused = parts.any(|p| {
                p.strip_prefix("q=")
                    .or_else(|| p.strip_prefix("Q="))
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            coding.eq_ignore_ascii_case(sync::wire::BODY_ENCODING) && !refused
        })
}

/// A gateway endpoint with its pinned CA.
#[derive(Clone)]
pub struct GatewayClient {
    /// Every gateway address given, in order; all serve the same
    /// organisation (the same CA), and any may answer.
    endpoints: Vec<Endpoint>,
    /// The one that answered last: tried first.
    current: Arc<AtomicUsize>,
    connector: tokio_rustls::TlsConnector,
    timeouts: Timeouts,
}

/// A request's method, path and content type.
struct Head<'a> {
    method: hyper::Method,
    path: &'a str,
    content_type: &'a str,
}

/// One gateway address.
#[derive(Debug, Clone)]
struct Endpoint {
    host: String,
    port: u16,
    url: String,
    /// Whether this gateway said it reads zstd request bodies; until it
    /// has, bodies go plain, so a gateway from before compression is never
    /// sent what it cannot read.
    encodings: Arc<Encodings>,
}

impl Endpoint {
    /// `https://HOST[:PORT][/]`: a name, an IPv4 address or a bracketed
    /// IPv6 one; port 443 unless given. Nothing else (no path, query or
    /// user), so a typo is an error and not a request somewhere else.
    fn parse(url: &str) -> Result<Endpoint, ClientError> {
        let bad = || ClientError::Url(url.to_owned());
        let u = url::Url::parse(url.trim()).map_err(|_| bad())?;
        if u.scheme() != "https"
            || !u.username().is_empty()
            || u.password().is_some()
            || u.path() != "/"
            || u.query().is_some()
            || u.fragment().is_some()
        {
            return Err(bad());
        }
        let host = match u.host().ok_or_else(bad)? {
            url::Host::Domain(d) if !d.is_empty() => d.to_owned(),
            url::Host::Domain(_) => return Err(bad()),
            url::Host::Ipv4(a) => a.to_string(),
            url::Host::Ipv6(a) => format!("[{a}]"),
        };
        Ok(Endpoint {
            host,
            port: u.port_or_known_default().ok_or_else(bad)?,
            url: url.to_owned(),
            encodings: Arc::default(),
        })
    }
}

impl std::fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClient")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// A client for `url`, trusting only `ca_pem`, presenting
    /// `identity` (certificate PEM, key PEM) when given. `url` may name
    /// several gateways of one organisation, comma-separated
    /// (`https://gw-a:8443,https://gw-b:8443`): a connection goes to the one
    /// that answered last, and to the next when it does not answer.
    pub fn new(
        url: &str,
        ca_pem: &str,
        identity: Option<(&str, &str)>,
    ) -> Result<GatewayClient, ClientError> {
        let endpoints = url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Endpoint::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(ClientError::Url(url.to_owned()));
        }
        let tls = |e: String| ClientError::Tls(e);
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| tls(e.to_string()))?)
                .map_err(|e| tls(e.to_string()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots);
        let config = match identity {
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .collect::<Result<_, _>>()
                        .map_err(|e| tls(e.to_string()))?;
                let key = PrivateKeyDer::from_pem_slice(key.as_bytes())
                    .map_err(|e| tls(e.to_string()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| tls(e.to_string()))?
            }
            None => builder.with_no_client_auth(),
        };
        Ok(GatewayClient {
            endpoints,
            current: Arc::new(AtomicUsize::new(0)),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            timeouts: Timeouts::default(),
        })
    }

    /// The gateway tried first now (the one that answered last).
    pub fn url(&self) -> &str {
        &self.endpoint(self.current.load(Ordering::Relaxed)).url
    }

    fn endpoint(&self, i: usize) -> &Endpoint {
        // `endpoints` is never empty (checked in `new`).
        &self.endpoints[i % self.endpoints.len()]
    }

    /// The same client with other timeouts.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> GatewayClient {
        self.timeouts = timeouts;
        self
    }

    /// `f`, or an I/O error saying what timed out after how long.
    async fn within<T>(
        &self,
        limit: std::time::Duration,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(limit, f).await {
            Ok(r) => r,
            Err(_) => Err(ClientError::Io {
                url: self.url().to_owned(),
                problem: format!("{what} timed out after {} s", limit.as_secs_f64()),
            }),
        }
    }

    /// `POST path` with a JSON body; the status and the JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value), ClientError> {
        self.request(hyper::Method::POST, path, Some(body)).await
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Result<(u16, Value), ClientError> {
        self.request(hyper::Method::GET, path, None).await
    }

    /// `POST path` with the typed `request`; the typed answer, or the
    /// gateway's refusal as [`CallError::Refused`] (`what` names the step
    /// for the message: "enrollment", "attestation").
    pub async fn call<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
        request: &Q,
    ) -> Result<A, CallError> {
        let body = serde_json::to_value(request).map_err(CallError::Encode)?;
        let (status, answer) = self.post(path, &body).await?;
        typed(what, status, answer)
    }

    /// `GET path`, typed as [`GatewayClient::call`].
    pub async fn fetch<A: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        path: &str,
    ) -> Result<A, CallError> {
        let (status, answer) = self.get(path).await?;
        typed(what, status, answer)
    }

    /// A TLS connection to the gateway (the pinned CA, the identity if
    /// any), for protocols other than one JSON request: the proxy's CONNECT.
    /// Tries the gateway that answered last, then each other in turn.
    pub async fn connect(
        &self,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        self.connect_any().await.map(|(s, _)| s)
    }

    /// [`GatewayClient::connect`], and the address that answered.
    async fn connect_any(
        &self,
    ) -> Result<
        (
            tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
            &Endpoint,
        ),
        ClientError,
    > {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for k in 0..self.endpoints.len() {
            let i = (start + k) % self.endpoints.len();
            match self.connect_to(self.endpoint(i)).await {
                Ok(s) => {
                    if k > 0 {
                        tracing::warn!(
                            from = %self.endpoint(start).url,
                            to = %self.endpoint(i).url,
                            "gateway unreachable; failing over"
                        );
                        self.current.store(i, Ordering::Relaxed);
                    }
                    return Ok((s, self.endpoint(i)));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::Url(String::new())))
    }

    async fn connect_to(
        &self,
        at: &Endpoint,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ClientError> {
        let io = |problem: String| ClientError::Io {
            url: at.url.clone(),
            problem,
        };
        let connecting = async {
            let host = at.host.trim_matches(['[', ']']);
            let tcp = tokio::net::TcpStream::connect((host, at.port))
                .await
                .map_err(|e| io(e.to_string()))?;
            let name = ServerName::try_from(host.to_owned()).map_err(|e| io(e.to_string()))?;
            self.connector
                .connect(name, tcp)
                .await
                .map_err(|e| io(format!("TLS: {e}")))
        };
        match tokio::time::timeout(self.timeouts.connect, connecting).await {
            Ok(r) => r,
            Err(_) => Err(io(format!(
                "connecting timed out after {} s",
                self.timeouts.connect.as_secs_f64()
            ))),
        }
    }

    /// An HTTP/1.1 connection to the gateway, ready for one request, and
    /// the address it went to.
    async fn sender(
        &self,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Full<Bytes>>,
            &Endpoint,
        ),
        ClientError,
    > {
        let (tls, at) = self.connect_any().await?;
        let (sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| ClientError::Io {
                    url: at.url.clone(),
                    problem: e.to_string(),
                })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok((sender, at))
    }

    /// The TLS connector (the pinned CA and the identity), to run TLS
    /// inside a tunnel.
    pub fn connector(&self) -> &tokio_rustls::TlsConnector {
        &self.connector
    }

    /// Send `body` with `method` and `content_type`; the status and the
    /// whole answer. The answer is read frame by frame: `meter` counts the
    /// bytes both ways and, with a rate cap, paces the reading so the
    /// average since the meter started never exceeds the cap.
    pub async fn send(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        meter: Option<&Meter>,
    ) -> Result<(u16, Bytes), ClientError> {
        let mut out = Vec::new();
        let (status, refusal) = self
            .send_streaming(method, path, content_type, body, meter, &mut |d| {
                out.extend_from_slice(d);
                Ok(())
            })
            .await?;
        Ok((status, refusal.unwrap_or_else(|| Bytes::from(out))))
    }

    /// As [`GatewayClient::send`], handing each piece of a successful (2xx)
    /// answer to `on_data` as it arrives (an error from it ends the
    /// exchange). Another status comes back with its whole body.
    pub async fn send_streaming(
        &self,
        method: hyper::Method,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        meter: Option<&Meter>,
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(u16, Option<Bytes>), ClientError> {
        let (mut sender, mut at) = self.sender().await?;
        let head = Head {
            method,
            path,
            content_type,
        };
        // A device's JSON to the sync and agent routes goes compressed
        // where that shrinks it (chunk id lists), to a gateway that said
        // it reads it.
        let compressed =
            (device_route(path) && content_type == "application/json" && at.encodings.zstd())
                .then(|| sync::wire::encode_body(&body))
                .flatten();
        if let Some(z) = compressed {
            let (status, answer) = self
                .exchange(sender, at, &head, (z, true), meter, on_data)
                .await?;
            // Refused as an encoding it does not read (415), or refused at
            // all by a gateway that no longer says it reads zstd (one from
            // before compression reads the body as broken JSON: 400):
            // nothing was done with it. Once more in plain, and plain to it
            // from now on.
            let unread = status == 415
                || ((400..500).contains(&status)
                    && !at.encodings.says_zstd.load(Ordering::Relaxed));
            if !unread {
                return Ok((status, answer));
            }
            at.encodings.refused_zstd.store(true, Ordering::Relaxed);
            (sender, at) = self.sender().await?;
        }
        self.exchange(sender, at, &head, (body, false), meter, on_data)
            .await
    }

    /// One request on `sender` (`body`, and whether it is zstd-encoded)
    /// and its answer, as [`GatewayClient::send_streaming`] describes.
    async fn exchange(
        &self,
        mut sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        at: &Endpoint,
        head: &Head<'_>,
        (body, zstd): (Vec<u8>, bool),
        meter: Option<&Meter>,
        on_data: &mut dyn FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<(u16, Option<Bytes>), ClientError> {
        let io = |problem: String| ClientError::Io {
            url: at.url.clone(),
            problem,
        };
        let mut req = hyper::Request::builder()
            .method(head.method.clone())
            .uri(head.path)
            .header(hyper::header::HOST, format!("{}:{}", at.host, at.port))
            .header(hyper::header::CONTENT_TYPE, head.content_type);
        if zstd {
            req = req.header(hyper::header::CONTENT_ENCODING, sync::wire::BODY_ENCODING);
        }
        if let Some(m) = meter {
            m.sent(body.len() as u64).await;
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| io(e.to_string()))?;
        let resp = self
            .within(self.timeouts.answer, "waiting for the answer", async {
                sender
                    .send_request(req)
                    .await
                    .map_err(|e| io(e.to_string()))
            })
            .await?;
        let status = resp.status().as_u16();
        let success = resp.status().is_success();
        if device_route(head.path) {
            at.encodings.learn(resp.headers());
        }
        let mut body = resp.into_body();
        let mut refusal = Vec::new();
        loop {
            let next = self
                .within(
                    self.timeouts.idle,
                    "waiting for more of the answer",
                    async { Ok(body.frame().await) },
                )
                .await?;
            let Some(frame) = next else { break };
            let frame = frame.map_err(|e| io(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if success {
                    on_data(&data).map_err(|problem| ClientError::Content {
                        url: at.url.clone(),
                        problem,
                    })?;
                } else if refusal.len() < MAX_REFUSAL {
                    refusal.extend_from_slice(&data);
                }
                if let Some(m) = meter {
                    m.received(data.len() as u64).await;
                }
            }
        }
        Ok((status, (!success).then(|| Bytes::from(refusal))))
    }

    async fn request(
        &self,
        method: hyper::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), ClientError> {
        let (mut sender, at) = self.sender().await?;
        let io = |problem: String| ClientError::Io {
            url: at.url.clone(),
            problem,
        };
        let exchange = async {
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header(hyper::header::HOST, format!("{}:{}", at.host, at.port))
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(bytes)))
                .map_err(|e| io(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| io(e.to_string()))?;
            let status = resp.status().as_u16();
            if device_route(path) {
                at.encodings.learn(resp.headers());
            }
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| io(e.to_string()))?
                .to_bytes();
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            Ok((status, value))
        };
        self.within(self.timeouts.answer, "waiting for the answer", exchange)
            .await
    }
}

/// Most bytes of a refusal's body kept.
const MAX_REFUSAL: usize = 64 * 1024;

/// Counts bytes both ways and caps the rate each way.
#[derive(Debug)]
pub struct Meter {
    start: std::time::Instant,
    cap: Option<u64>,
    received: std::sync::atomic::AtomicU64,
    sent: std::sync::atomic::AtomicU64,
}

impl Meter {
    /// A meter starting now; `cap` in bytes per second.
    pub fn new(cap: Option<u64>) -> Meter {
        Meter {
            start: std::time::Instant::now(),
            cap: cap.filter(|c| *c > 0),
            received: 0.into(),
            sent: 0.into(),
        }
    }

    /// Bytes received so far.
    pub fn bytes_received(&self) -> u64 {
        self.received.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Bytes sent so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Seconds since the meter started.
    pub fn seconds(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Count `n` bytes about to be sent; with a cap, first wait until the
    /// average send rate since the start, these bytes included, is under
    /// it (so a request goes out at once, and the next waits its turn).
    async fn sent(&self, n: u64) {
        let before = self.sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        if let Some(cap) = self.cap {
            let due = self.start + std::time::Duration::from_secs_f64(before as f64 / cap as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }

    /// Count `n` received bytes; with a cap, wait until the average rate
    /// since the start is back under it.
    async fn received(&self, n: u64) {
        let total = self
            .received
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed)
            + n;
        if let Some(cap) = self.cap {
            let due = self.start + std::time::Duration::from_secs_f64(total as f64 / cap as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use tokio::io::AsyncWriteExt as _;

    #[test]
    fn gateway_addresses_parse_with_names_ipv4_and_ipv6_and_nothing_else() {
        let at = |u: &str| Endpoint::parse(u).map(|e| (e.host, e.port));
        assert_eq!(at("https://gw.school").unwrap(), ("gw.school".into(), 443));
        assert_eq!(
            at("https://gw.school:8443/").unwrap(),
            ("gw.school".into(), 8443)
        );
        assert_eq!(
            at("https://10.0.0.5:8443").unwrap(),
            ("10.0.0.5".into(), 8443)
        );
        assert_eq!(at("https://[::1]").unwrap(), ("[::1]".into(), 443));
        assert_eq!(
            at("https://[fd00::5]:8443").unwrap(),
            ("[fd00::5]".into(), 8443)
        );
        for wrong in [
            "http://gw:8443",
            "https://gw:port",
            "https://:8443",
            "https://gw:8443/v1",
            "https://user@gw:8443",
            "https://gw:8443?x=1",
            "https://[::1",
            "gw:8443",
            "",
        ] {
            assert!(at(wrong).is_err(), "{wrong:?} was accepted");
        }
    }

    const SHORT: Timeouts = Timeouts {
        connect: std::time::Duration::from_millis(300),
        answer: std::time::Duration::from_millis(300),
        idle: std::time::Duration::from_millis(300),
    };

    /// A TLS acceptor for 127.0.0.1 and its CA (a self-signed certificate).
    fn tls_acceptor() -> (tokio_rustls::TlsAcceptor, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap();
        (
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            cert.pem(),
        )
    }

    /// A TLS server on 127.0.0.1 that does `then` with each connection
    /// after the handshake; its CA and port.
    async fn tls_server(then: &'static [u8]) -> (String, u16) {
        let (acceptor, ca) = tls_acceptor();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = l.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(then).await;
                        // Then nothing more, and no close.
                        tokio::time::sleep(std::time::Duration::from_secs(30)).await;
                    }
                });
            }
        });
        (ca, port)
    }

    /// How a gateway stand-in answers a request sent with a
    /// `Content-Encoding` (or none): its status, and whether it says it
    /// reads zstd.
    type Answer = fn(Option<&str>) -> (u16, bool);

    /// An HTTP server over TLS on 127.0.0.1 answering by `answer`; its CA,
    /// port, and the `Content-Encoding` of every request it was sent.
    async fn http_server(
        answer: Answer,
    ) -> (String, u16, Arc<std::sync::Mutex<Vec<Option<String>>>>) {
        let (acceptor, ca) = tls_acceptor();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = l.accept().await {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                let log = log.clone();
                let service = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let log = log.clone();
                        async move {
                            let encoding = req
                                .headers()
                                .get(hyper::header::CONTENT_ENCODING)
                                .map(|v| v.to_str().unwrap().to_owned());
                            let _ = req.into_body().collect().await;
                            let (status, says) = answer(encoding.as_deref());
                            log.lock().unwrap().push(encoding);
                            let mut r = hyper::Response::builder().status(status);
                            if says {
                                r = r.header(hyper::header::ACCEPT_ENCODING, "gzip, zstd;q=1");
                            }
                            r.body(Full::new(Bytes::from_static(b"{}")))
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (ca, port, seen)
    }

    /// Send a device's chunk list (JSON that compresses) `n` times to a
    /// gateway stand-in answering by `answer`: the statuses and the
    /// encodings it was sent.
    async fn sends(answer: Answer, n: usize) -> (Vec<u16>, Vec<Option<String>>) {
        let (ca, port, seen) = http_server(answer).await;
        let c = GatewayClient::new(&format!("https://127.0.0.1:{port}"), &ca, None).unwrap();
        let ids: Vec<String> = (0..200).map(|i| format!("{:064x}", i % 7)).collect();
        let body = serde_json::to_vec(&serde_json::json!({ "have": ids })).unwrap();
        let mut statuses = Vec::new();
        for _ in 0..n {
            let path = format!("{}chunks/missing", protocol::paths::SYNC_PREFIX);
            let (status, _) = c
                .send(
                    hyper::Method::POST,
                    &path,
                    "application/json",
                    body.clone(),
                    None,
                )
                .await
                .unwrap();
            statuses.push(status);
        }
        let seen = seen.lock().unwrap().clone();
        (statuses, seen)
    }

    #[tokio::test]
    async fn bodies_go_compressed_only_to_a_gateway_that_says_it_reads_them() {
        let zstd = || Some("zstd".to_owned());
        // A gateway from before compression never says so: all plain (it
        // would have failed on the first compressed body).
        let (statuses, seen) = sends(|_| (200, false), 3).await;
        assert_eq!(statuses, [200, 200, 200]);
        assert_eq!(seen, [None, None, None]);
        // One that says so: plain until it has, compressed after.
        let (statuses, seen) = sends(|_| (200, true), 3).await;
        assert_eq!(statuses, [200, 200, 200]);
        assert_eq!(seen, [None, zstd(), zstd()]);
        // One that says so but refuses the encoding (415): the same body
        // again in plain, the caller sees only the answer to that, and
        // plain from then on, whatever it says.
        let (statuses, seen) = sends(|e| (if e.is_some() { 415 } else { 200 }, true), 3).await;
        assert_eq!(statuses, [200, 200, 200]);
        assert_eq!(seen, [None, zstd(), None, None]);
        // One rolled back to before compression between two requests: it
        // reads the compressed body as broken JSON (400, and no word of
        // zstd): the same body again in plain.
        let (statuses, seen) = sends(
            |e| {
                if e.is_some() {
                    (400, false)
                } else {
                    (200, true)
                }
            },
            3,
        )
        .await;
        assert_eq!(statuses, [200, 200, 200]);
        assert_eq!(seen, [None, zstd(), None, None]);
    }

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_writes_it() {
        let says = |v: &str| {
            let mut h = hyper::HeaderMap::new();
            h.insert(hyper::header::ACCEPT_ENCODING, v.parse().unwrap());
            says_zstd(&h)
        };
        assert!(says("zstd"));
        assert!(says("gzip, ZSTD;q=0.5"));
        assert!(says("br , zstd ; q=1"));
        assert!(!says("zstd;q=0"));
        assert!(!says("zstd; q=0.000"));
        assert!(!says("gzip, zstdx, identity"));
        assert!(!says(""));
        assert!(!says_zstd(&hyper::HeaderMap::new()));
    }

    #[tokio::test]
    async fn a_gateway_that_never_speaks_times_out_connecting() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        // Accepts, never answers the ClientHello.
        let _held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let (ca, _) = tls_server(b"").await;
        let c = GatewayClient::new(&format!("https://127.0.0.1:{port}"), &ca, None)
            .unwrap()
            .with_timeouts(SHORT);
        let e = c.get("/v1/health").await.unwrap_err().to_string();
        assert!(e.contains("connecting timed out after 0.3 s"), "{e}");
    }

    #[tokio::test]
    async fn a_gateway_that_never_answers_times_out() {
        let (ca, port) = tls_server(b"").await;
        let c = GatewayClient::new(&format!("https://127.0.0.1:{port}"), &ca, None)
            .unwrap()
            .with_timeouts(SHORT);
        let e = c.get("/v1/health").await.unwrap_err().to_string();
        assert!(e.contains("waiting for the answer timed out"), "{e}");
        let e = c
            .send(hyper::Method::GET, "/x", "text/plain", Vec::new(), None)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("waiting for the answer timed out"), "{e}");
    }

    #[tokio::test]
    async fn a_stream_that_stalls_times_out_between_pieces() {
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nhalf";
        let (ca, port) = tls_server(head).await;
        let c = GatewayClient::new(&format!("https://127.0.0.1:{port}"), &ca, None)
            .unwrap()
            .with_timeouts(SHORT);
        let mut got = Vec::new();
        let e = c
            .send_streaming(
                hyper::Method::GET,
                "/x",
                "text/plain",
                Vec::new(),
                None,
                &mut |d| {
                    got.extend_from_slice(d);
                    Ok(())
                },
            )
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("waiting for more of the answer timed out"),
            "{e}"
        );
        assert_eq!(got, b"half");
    }

    #[tokio::test(start_paused = true)]
    async fn the_send_cap_paces_requests() {
        let m = Meter::new(Some(1000));
        let t = tokio::time::Instant::now();
        m.sent(1000).await;
        assert!(t.elapsed() < std::time::Duration::from_millis(100));
        m.sent(500).await;
        // 1,000 bytes already out at 1,000 B/s: the next waits a second.
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(990),
            "{:?}",
            t.elapsed()
        );
        m.sent(10).await;
        assert!(
            t.elapsed() >= std::time::Duration::from_millis(1490),
            "{:?}",
            t.elapsed()
        );
        assert_eq!(m.bytes_sent(), 1510);
        // No cap: never waits.
        let free = Meter::new(None);
        let t = tokio::time::Instant::now();
        free.sent(1 << 30).await;
        free.sent(1 << 30).await;
        assert!(t.elapsed() < std::time::Duration::from_millis(10));
    }
}
