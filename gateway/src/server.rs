//! The HTTPS server: rustls with optional client certificates from the
//! device CA, hyper HTTP/1.1, bounded everywhere (handshake and header
//! timeouts, a connection cap, body limits), and a problem+json body for
//! every error that says what is wrong without leaking internals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use attest::ekcert::CaSet;
use attest::verify::Nonces;
use attest::Reference;

use crate::api::AppState;
use crate::pki::{Pki, PkiError};
use crate::state::{Challenges, Db};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The data directory's keys and certificates.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The database.
    #[error(transparent)]
    Db(#[from] crate::state::DbError),
    /// The audit store.
    #[error(transparent)]
    Audit(#[from] audit::store::StoreError),
    /// A signing key in the data directory.
    #[error("key {path}: {problem}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The EK CA directory.
    #[error(transparent)]
    EkCa(#[from] attest::ekcert::EkError),
    /// The reference manifest.
    #[error("reference manifest {path}: {problem}")]
    Reference {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The listen address.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The gateway audit log's name in its checkpoints.
pub const AUDIT_ORIGIN: &str = "satchel.gateway.audit";

/// `DIR/NAME.key` (ed25519, 0600) and `DIR/NAME.key.pub`, made if missing.
fn signing_key(dir: &std::path::Path, name: &str) -> Result<ed25519_dalek::SigningKey, ServeError> {
    let path = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.key.pub"));
    let bad = |e: audit::checkpoint::CheckpointError| ServeError::Key {
        path: path.clone(),
        problem: e.to_string(),
    };
    if !path.exists() {
        let key = audit::checkpoint::generate_key();
        audit::checkpoint::write_key_pem(&path, &key).map_err(bad)?;
        audit::checkpoint::write_public_pem(&public, &key.verifying_key()).map_err(bad)?;
    }
    audit::checkpoint::read_signing_key(&path).map_err(bad)
}

/// Where and what to serve.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The data directory (keys, certificates, database).
    pub data: PathBuf,
    /// The HTTPS address.
    pub listen: SocketAddr,
    /// The database [default: `sqlite:DATA/satchel.db`].
    pub db: Option<String>,
    /// Directory of trusted EK CA certificates (enrollment needs it).
    pub ek_ca: Option<PathBuf>,
    /// The signed reference manifest devices must match, and its key.
    pub reference: Option<(PathBuf, PathBuf)>,
    /// How long device certificates live.
    pub cert_lifetime: Duration,
}

impl ServeConfig {
    /// Defaults: no EK CAs, no reference, one-hour certificates.
    pub fn new(data: PathBuf, listen: SocketAddr) -> ServeConfig {
        ServeConfig {
            data,
            listen,
            db: None,
            ek_ca: None,
            reference: None,
            cert_lifetime: Duration::from_secs(3600),
        }
    }

    /// The database URL.
    pub fn db_url(&self) -> String {
        self.db
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data.join("satchel.db").display()))
    }
}

/// The device a connection's client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceIdentity {
    /// The device id.
    pub device_id: String,
    /// When its attestation was verified (ms since the epoch), from the
    /// certificate's Satchel extension.
    pub attested_at_ms: Option<i64>,
    /// When the certificate expires (seconds since the epoch).
    pub cert_expires: i64,
}

/// A bound, not yet running gateway.
pub struct Gateway {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<AppState>,
    /// The address it listens on (useful with port 0).
    pub local_addr: SocketAddr,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

fn tls_config(pki: &Pki) -> Result<rustls::ServerConfig, ServeError> {
    let tls = |e: String| ServeError::Tls(e);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pki.device_ca.cert_pem.as_bytes()) {
        roots
            .add(c.map_err(|e| tls(e.to_string()))?)
            .map_err(|e| tls(e.to_string()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(pki.server_cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(pki.server_key_pem.as_bytes())
        .map_err(|e| tls(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl Gateway {
    /// Load (or make) the data directory and bind the listener.
    pub async fn bind(config: &ServeConfig) -> Result<Gateway, ServeError> {
        let pki = Pki::init(&config.data, &[])?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
        let url = config.db_url();
        let (pool, _) = audit::store::connect(&url).await?;
        let db = Db::new(pool).await?;
        let audit = audit::store::Store::open(&url).await?;
        let audit_key = signing_key(&config.data, "audit")?;
        signing_key(&config.data, "manifest")?;
        audit::log::spawn_checkpointer(
            audit.clone(),
            audit_key,
            AUDIT_ORIGIN.to_owned(),
            Duration::from_secs(60),
        );
        let ek_cas = config.ek_ca.as_deref().map(CaSet::from_dir).transpose()?;
        let reference = match &config.reference {
            Some((path, key)) => {
                let bad = |problem: String| ServeError::Reference {
                    path: path.clone(),
                    problem,
                };
                let key =
                    audit::checkpoint::read_verifying_key(key).map_err(|e| bad(e.to_string()))?;
                let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
                Some(Reference::verify_signed(&bytes, &key).map_err(|e| bad(e.to_string()))?)
            }
            None => None,
        };
        let state = Arc::new(AppState {
            pki,
            db,
            audit,
            ek_cas,
            reference,
            cert_lifetime: config.cert_lifetime,
            challenges: Challenges::default(),
            nonces: std::sync::Mutex::new(Nonces::new(Duration::from_secs(120), 100_000)),
            nonce_owners: std::sync::Mutex::default(),
        });
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| ServeError::Listen {
            addr: config.listen,
            source,
        })?;
        Ok(Gateway {
            listener,
            acceptor,
            state,
            local_addr,
        })
    }

    /// Serve until `shutdown` completes; then stop accepting and return.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        tokio::pin!(shutdown);
        loop {
            let permit = tokio::select! {
                () = &mut shutdown => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let (tcp, peer) = tokio::select! {
                () = &mut shutdown => break,
                a = self.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        continue;
                    }
                },
            };
            let acceptor = self.acceptor.clone();
            let state = self.state.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let device = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| identity(c.as_ref()));
                let service = hyper::service::service_fn(move |req| {
                    let device = device.clone();
                    let state = state.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(route(req, device.as_ref(), &state).await)
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(tls), service);
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
    }
}

/// The device a (verified) client certificate names.
pub fn identity(der: &[u8]) -> Option<DeviceIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let device_id = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    let oid = x509_parser::oid_registry::Oid::from(&[1, 3, 6, 1, 4, 1, 58888, 1, 1]).ok()?;
    let attested_at_ms = cert
        .extensions()
        .iter()
        .find(|e| e.oid == oid)
        .and_then(|e| {
            let (_, s) = x509_parser::der_parser::der::parse_der_utf8string(e.value).ok()?;
            let text = s.as_str().ok()?;
            serde_json::from_str::<serde_json::Value>(text).ok()?["attested_at_ms"].as_i64()
        });
    Some(DeviceIdentity {
        device_id,
        attested_at_ms,
        cert_expires: cert.validity().not_after.timestamp(),
    })
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let ctype = if status.is_success() {
        "application/json"
    } else {
        "application/problem+json"
    };
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response<Full<Bytes>> {
    json_response(
        status,
        json!({"type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail}),
    )
}

/// Largest request body read (evidence with its event logs fits easily).
pub const MAX_BODY: usize = 8 << 20;

async fn route(
    req: Request<Incoming>,
    device: Option<&DeviceIdentity>,
    state: &AppState,
) -> Response<Full<Bytes>> {
    use http_body_util::BodyExt as _;
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    let post = |a: crate::api::Answer| {
        json_response(
            StatusCode::from_u16(a.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            a.body,
        )
    };
    match (method, path.as_str()) {
        (Method::GET, "/v1/health") => json_response(StatusCode::OK, json!({"status": "ok"})),
        (Method::GET, "/v1/whoami") => {
            let Some(d) = device else {
                return problem(
                    StatusCode::UNAUTHORIZED,
                    "device certificate required",
                    "this route needs a device certificate issued by this gateway after an attestation",
                );
            };
            match state.db.device(&d.device_id).await {
                Ok(Some(dev)) if dev.revoked_ms.is_none() => json_response(
                    StatusCode::OK,
                    json!({
                        "device_id": d.device_id,
                        "groups": dev.groups,
                        "attested_at": d.attested_at_ms,
                        "cert_expires": d.cert_expires,
                    }),
                ),
                Ok(_) => problem(
                    StatusCode::FORBIDDEN,
                    "not enrolled",
                    "this device is not enrolled or was revoked",
                ),
                Err(_) => problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error",
                    "the device table is unavailable",
                ),
            }
        }
        (Method::POST, "/v1/enroll" | "/v1/enroll/finish" | "/v1/attest/nonce" | "/v1/attest") => {
            let bytes = match http_body_util::Limited::new(body, MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return problem(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "request too large",
                        "the body is over the limit or broken off",
                    )
                }
            };
            let answer = match path.as_str() {
                "/v1/enroll" => state.enroll(&bytes).await,
                "/v1/enroll/finish" => state.enroll_finish(&bytes).await,
                "/v1/attest/nonce" => state.nonce(&bytes).await,
                _ => state.attest(&bytes).await,
            };
            post(answer)
        }
        (_, "/v1/health" | "/v1/whoami") => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            "use GET",
        ),
        (_, "/v1/enroll" | "/v1/enroll/finish" | "/v1/attest/nonce" | "/v1/attest") => problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed",
            "use POST",
        ),
        _ => problem(StatusCode::NOT_FOUND, "not found", "no such route"),
    }
}
