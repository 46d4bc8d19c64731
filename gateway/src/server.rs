//! The HTTPS server: rustls with optional client certificates from the
//! device CA, hyper HTTP/1.1, bounded everywhere (handshake and header
//! timeouts, a connection cap, body limits), and a problem+json body for
//! every error that says what is wrong without leaking internals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use attest::ekcert::CaSet;
use attest::Reference;

use crate::app::AppState;
use crate::pki::{Pki, PkiError};
use crate::state::{Challenges, Db};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (and how long a
/// kept-alive connection may sit idle).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most connections served at once; more wait in the kernel's backlog.
pub const MAX_CONNECTIONS: usize = 1024;

/// The most connections one client address holds at once, handshakes
/// included [`ServeConfig::max_per_address`]: no single machine can take
/// every slot of [`MAX_CONNECTIONS`] before it has shown a certificate.
pub const MAX_PER_ADDRESS: usize = 64;

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
    /// The audit log is not what its signer last signed: an alarm.
    #[error(transparent)]
    Signer(#[from] audit::signer::SignerError),
    /// The data directory cannot be made.
    #[error(transparent)]
    Data(#[from] persist::FileError),
    /// The database cannot be opened.
    #[error(transparent)]
    Open(#[from] persist::DbError),
    /// A key file.
    #[error(transparent)]
    Key(#[from] persist::KeyError),
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
    /// The policy file or the stored policy.
    #[error("policy: {0}")]
    Policy(String),
    /// The image store.
    #[error("images: {0}")]
    Images(String),
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

/// The data directory's manifest key (`DATA/manifest.key`), made if missing.
pub fn manifest_key(data: &std::path::Path) -> Result<ed25519_dalek::SigningKey, ServeError> {
    persist::file::create_dir_all(data)?;
    signing_key(data, "manifest")
}

/// `DIR/NAME.key` (ed25519, 0600) and `DIR/NAME.key.pub`, made if missing.
fn signing_key(dir: &std::path::Path, name: &str) -> Result<ed25519_dalek::SigningKey, ServeError> {
    let path = dir.join(format!("{name}.key"));
    let public = dir.join(format!("{name}.key.pub"));
    Ok(persist::keys::load_or_generate(&path, &public)?)
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
    /// A signed reference manifest put in force (and stored in the
    /// database) on start; if `None`, the stored one is used.
    pub reference: Option<PathBuf>,
    /// The key references must be signed with (needed for any reference).
    pub reference_key: Option<PathBuf>,
    /// How long device certificates live.
    pub cert_lifetime: Duration,
    /// The egress proxy's address (no proxy if `None`).
    pub proxy_listen: Option<SocketAddr>,
    /// A policy file put in force (and stored in the database) on start; if
    /// `None`, the policy stored in the database is used.
    pub policy: Option<PathBuf>,
    /// How long shutdown waits for open connections to finish.
    pub drain: Duration,
    /// How long a client may take to send request headers, or sit idle.
    pub header_timeout: Duration,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// How often the audit log is checkpointed when it has grown.
    pub checkpoint_every: Duration,
    /// A proxy tunnel through which nothing moved this long is closed.
    pub tunnel_idle: Duration,
    /// No proxy tunnel lives longer than this.
    pub tunnel_max: Duration,
    /// Where each request is logged as a JSON line (`-`: standard error).
    pub access_log: Option<PathBuf>,
    /// Certificates the proxy trusts for intercepted upstreams, besides the
    /// system's roots (a site with a private CA).
    pub upstream_ca: Option<PathBuf>,
    /// DNS names and IP addresses the server certificate is for, besides
    /// localhost, 127.0.0.1 and ::1 (a missing one makes a new certificate
    /// from the same CA at start).
    pub server_names: Vec<String>,
    /// The most connections (API and proxy together, tunnels included) one
    /// client address may hold; the next is closed at accept.
    pub max_per_address: usize,
    /// How often the policy and reference stored in the database are
    /// looked at, so a change made through another gateway on the same
    /// database is put in force here (`gateway/src/follow.rs`).
    pub follow_every: Duration,
    /// The shared object store for chunks, if any (else the data
    /// directory's store alone): see [`crate::chunks`].
    pub chunk_store: Option<crate::chunks::RemoteConfig>,
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
            reference_key: None,
            cert_lifetime: Duration::from_secs(3600),
            proxy_listen: None,
            policy: None,
            drain: Duration::from_secs(10),
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
            checkpoint_every: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(300),
            tunnel_max: Duration::from_secs(3600),
            server_names: Vec::new(),
            upstream_ca: None,
            access_log: None,
            max_per_address: MAX_PER_ADDRESS,
            follow_every: Duration::from_secs(5),
            chunk_store: None,
        }
    }

    /// The database URL.
    pub fn db_url(&self) -> String {
        self.db
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data.join("satchel.db").display()))
    }
}

pub use protocol::certificate::{identity, DeviceIdentity, Role};

/// A bound, not yet running gateway.
pub struct Gateway {
    listener: TcpListener,
    proxy: Option<TcpListener>,
    drain: Duration,
    header_timeout: Duration,
    per_address: usize,
    follow_every: Duration,
    /// The proxy's address, if it listens.
    pub proxy_addr: Option<SocketAddr>,
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
    for ca in [&pki.device_ca, &pki.admin_ca] {
        for c in CertificateDer::pem_slice_iter(ca.cert_pem.as_bytes()) {
            roots
                .add(c.map_err(|e| tls(e.to_string()))?)
                .map_err(|e| tls(e.to_string()))?;
        }
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

/// Bind `addr`: the listener and the address it got.
async fn listen(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let l = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Listen { addr, source })?;
    let a = l
        .local_addr()
        .map_err(|source| ServeError::Listen { addr, source })?;
    Ok((l, a))
}

/// Start the audit log's signer (its tree kept in `DATA/audit.tree`): its
/// view, and the key as a C2SP verifier key.
async fn start_signer(
    config: &ServeConfig,
    key: ed25519_dalek::SigningKey,
    audit: &audit::store::Store,
) -> Result<(audit::signer::SignerView, String), ServeError> {
    let vkey = audit::checkpoint::Verifier::new(AUDIT_ORIGIN, key.verifying_key())
        .map(|v| v.vkey())
        .map_err(|e| ServeError::Tls(format!("the audit key: {e}")))?;
    let path = config.data.join("audit.tree");
    let signer = audit::signer::Signer::open(&path, key, AUDIT_ORIGIN, audit).await?;
    let (view, _) = audit::signer::spawn(signer, audit.clone(), config.checkpoint_every);
    Ok((view, vkey))
}

/// The audit entries of what `serve` put in force from files at start (a
/// `--policy` or `--reference` replacing the stored one is an admin action
/// like any other): the file and the SHA-256 of what it held.
fn started_entries(
    config: &ServeConfig,
    policy: &policy::PolicyText,
    policy_source: &str,
) -> Vec<audit::entry::NewEntry> {
    use sha2::Digest as _;
    let entry = |subject: &str, details: serde_json::Value| audit::entry::NewEntry {
        kind: "admin".to_owned(),
        actor: "gateway-start".to_owned(),
        subject: subject.to_owned(),
        decision: "replaced".to_owned(),
        details,
    };
    let mut out = Vec::new();
    if let Some(p) = &config.policy {
        out.push(entry(
            "policy",
            serde_json::json!({"file": p.display().to_string(),
                "sha256": hex::encode(sha2::Sha256::digest(policy_source.as_bytes())),
                "rules": policy.rules.len(), "memberships": policy.memberships.len()}),
        ));
    }
    if let Some(p) = &config.reference {
        let digest = std::fs::read(p)
            .map(|b| hex::encode(sha2::Sha256::digest(&b)))
            .unwrap_or_default();
        out.push(entry(
            "reference",
            serde_json::json!({"file": p.display().to_string(), "sha256": digest}),
        ));
    }
    out
}

/// The policy in force at start: `--policy` (then stored in the database),
/// else the one stored. Its lines, and their text.
async fn load_policy(
    config: &ServeConfig,
    store: &policy::PolicyStore,
) -> Result<(policy::PolicyText, String), ServeError> {
    let Some(path) = &config.policy else {
        let rows = store
            .rows()
            .await
            .map_err(|e| ServeError::Policy(e.to_string()))?;
        let source: String = rows.iter().map(|r| r.join(", ") + "\n").collect();
        let text = policy::PolicyText::parse(&source)
            .map_err(|e| ServeError::Policy(format!("the stored policy: {e}")))?;
        return Ok((text, source));
    };
    let bad = |e: String| ServeError::Policy(format!("{}: {e}", path.display()));
    let source = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let text = policy::PolicyText::parse(&source).map_err(|e| bad(e.to_string()))?;
    store.replace(&text).await.map_err(|e| bad(e.to_string()))?;
    Ok((text, source))
}

impl Gateway {
    /// Load (or make) the data directory and bind the listener.
    pub async fn bind(config: &ServeConfig) -> Result<Gateway, ServeError> {
        let pki = Pki::init(&config.data, &config.server_names)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&pki)?));
        let url = config.db_url();
        let (pool, backend) = persist::db::connect(&url).await?;
        let db = Db::new(pool.clone()).await?;
        let audit = audit::store::Store::open(&url).await?;
        let audit_key = signing_key(&config.data, "audit")?;
        let manifest_key = signing_key(&config.data, "manifest")?;
        let images = crate::images::Images::open_with(
            pool.clone(),
            &config.data,
            config.chunk_store.as_ref(),
        )
        .await
        .map_err(|e| ServeError::Images(e.to_string()))?;
        let (audit_view, audit_vkey) = start_signer(config, audit_key, &audit).await?;
        let ek_cas = config.ek_ca.as_deref().map(CaSet::from_dir).transpose()?;
        let (reference, reference_key) = load_reference(config, &db).await?;
        let policy_store = policy::PolicyStore::new(pool.clone())
            .await
            .map_err(|e| ServeError::Policy(e.to_string()))?;
        let (policy_text, policy_source) = load_policy(config, &policy_store).await?;
        audit
            .append(
                started_entries(config, &policy_text, &policy_source),
                audit::batch::now_ms(),
            )
            .await?;
        let challenges = Challenges::new(pool.clone()).await?;
        let nonces =
            crate::nonces::NonceBook::new(pool.clone(), backend, Duration::from_secs(120), 100_000)
                .await?;
        let state = Arc::new(AppState {
            data: config.data.clone(),
            pki,
            db,
            audit,
            ek_cas,
            reference: std::sync::RwLock::new(reference.map(Arc::new)),
            reference_key,
            policy: std::sync::RwLock::new(Arc::new(policy::FastPolicy::compile(&policy_text))),
            policy_source: std::sync::RwLock::new(policy_source),
            policy_store,
            cert_lifetime: config.cert_lifetime,
            challenges,
            nonces,
            body_timeout: config.body_timeout,
            images,
            manifest_key,
            spool_lock: tokio::sync::Mutex::new(()),
            tunnels: crate::proxy::TunnelCounts::default(),
            tunnel_idle: config.tunnel_idle,
            tunnel_max: config.tunnel_max,
            audit_view,
            audit_vkey,
            metrics: crate::metrics::Metrics::default(),
            access_log: match &config.access_log {
                Some(p) => Some(crate::access::AccessLog::open(p).map_err(|source| {
                    ServeError::Data(persist::FileError::Io {
                        path: p.clone(),
                        source,
                    })
                })?),
                None => None,
            },
            intercept: crate::intercept::Intercept::new(config.upstream_ca.as_deref())
                .map_err(|e| ServeError::Tls(format!("--upstream-ca: {e}")))?,
        });
        let (listener, local_addr) = listen(config.listen).await?;
        let (proxy, proxy_addr) = match config.proxy_listen {
            Some(addr) => {
                let (l, a) = listen(addr).await?;
                (Some(l), Some(a))
            }
            None => (None, None),
        };
        Ok(Gateway {
            listener,
            proxy,
            proxy_addr,
            drain: config.drain,
            per_address: config.max_per_address,
            follow_every: config.follow_every,
            header_timeout: config.header_timeout,
            acceptor,
            state,
            local_addr,
        })
    }

    /// Serve until `shutdown` completes; then stop accepting, let open
    /// connections finish their requests (up to the drain time), close
    /// tunnels, and return. Audit entries are durable before each answer,
    /// so none that was acknowledged is lost.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let slots = Slots {
            all: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            peers: Arc::new(PeerCounts::new(self.per_address)),
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let follower = crate::follow::spawn(self.state.clone(), self.follow_every);
        let api = tokio::spawn(accept_loop(
            self.listener,
            self.acceptor.clone(),
            self.state.clone(),
            slots.clone(),
            stop_rx.clone(),
            Listener::Api,
            self.header_timeout,
        ));
        let proxy = self.proxy.map(|l| {
            tokio::spawn(accept_loop(
                l,
                self.acceptor.clone(),
                self.state.clone(),
                slots.clone(),
                stop_rx.clone(),
                Listener::Proxy,
                self.header_timeout,
            ))
        });
        let slots = slots.all;
        shutdown.await;
        follower.abort();
        let _ = stop_tx.send(true);
        let _ = api.await;
        if let Some(p) = proxy {
            let _ = p.await;
        }
        let all = u32::try_from(MAX_CONNECTIONS).unwrap_or(u32::MAX);
        if tokio::time::timeout(self.drain, slots.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("shutdown: connections still open after the drain time; closing them");
        }
    }
}

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Api,
    Proxy,
}

/// Held by each connection (and each tunnel it opens): its slot under the
/// connection cap, and the shutdown signal.
#[derive(Debug)]
pub struct ConnGuard {
    _slot: tokio::sync::OwnedSemaphorePermit,
    _peer: PeerSlot,
    stop: tokio::sync::watch::Receiver<bool>,
}

/// The gateway-wide cap and the per-address counts, shared by listeners.
#[derive(Clone)]
struct Slots {
    all: Arc<Semaphore>,
    peers: Arc<PeerCounts>,
}

/// Connections held per client address.
#[derive(Debug)]
struct PeerCounts {
    max: usize,
    held: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

/// One connection's place in its address's count; given back on drop.
#[derive(Debug)]
struct PeerSlot {
    counts: Arc<PeerCounts>,
    ip: std::net::IpAddr,
}

impl PeerCounts {
    fn new(max: usize) -> PeerCounts {
        PeerCounts {
            max: max.max(1),
            held: std::sync::Mutex::default(),
        }
    }

    /// A place for one more connection from `ip`, unless it holds its
    /// share already.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PeerSlot> {
        // An IPv4 client on an IPv6 socket is the same client.
        let ip = ip.to_canonical();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut held = self.counts.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.ip);
            }
        }
    }
}

impl ConnGuard {
    /// Completes when the gateway is shutting down.
    pub async fn stopping(&self) {
        let mut rx = self.stop.clone();
        let _ = rx.wait_for(|s| *s).await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<AppState>,
    slots: Slots,
    stop: tokio::sync::watch::Receiver<bool>,
    kind: Listener,
    header_timeout: Duration,
) {
    let mut stopped = stop.clone();
    loop {
        let slot = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            p = slots.all.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stopped.wait_for(|s| *s) => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
        };
        let Some(peer_slot) = slots.peers.take(peer.ip()) else {
            // Closed before any byte is read: the address holds its share.
            let name = match kind {
                Listener::Api => "api",
                Listener::Proxy => "proxy",
            };
            state.metrics.handshake(name, "over-address-limit");
            tracing::debug!(%peer, "connection refused: the address holds its share");
            drop(tcp);
            continue;
        };
        let guard = Arc::new(ConnGuard {
            _slot: slot,
            _peer: peer_slot,
            stop: stop.clone(),
        });
        tokio::spawn(serve_conn(
            tcp,
            peer,
            acceptor.clone(),
            state.clone(),
            guard,
            kind,
            header_timeout,
        ));
    }
}

async fn serve_conn(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    state: Arc<AppState>,
    guard: Arc<ConnGuard>,
    kind: Listener,
    header_timeout: Duration,
) {
    let _ = tcp.set_nodelay(true);
    let listener = match kind {
        Listener::Api => "api",
        Listener::Proxy => "proxy",
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => {
            state.metrics.handshake(listener, "ok");
            s
        }
        Ok(Err(e)) => {
            state.metrics.handshake(listener, "failed");
            tracing::info!(%peer, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            state.metrics.handshake(listener, "timeout");
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
    let conn_guard = guard.clone();
    let service = hyper::service::service_fn(move |req| {
        let device = device.clone();
        let state = state.clone();
        let guard = conn_guard.clone();
        async move {
            let t = std::time::Instant::now();
            let (method, target) = (req.method().clone(), req.uri().clone());
            let resp = match kind {
                Listener::Api => crate::routes::route(req, device.as_ref(), peer.ip(), &state)
                    .await
                    .map(crate::proxy::boxed),
                Listener::Proxy => {
                    crate::proxy::handle(req, device.as_ref(), state.clone(), guard).await
                }
            };
            if let Some(log) = &state.access_log {
                log.record(&crate::access::Access {
                    listener,
                    peer,
                    who: device.as_ref(),
                    method: &method,
                    target: &target,
                    status: resp.status().as_u16(),
                    took: t.elapsed(),
                });
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(tls), service)
        .with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        () = guard.stopping() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The reference in force at start: `--reference` (checked with
/// `--reference-key`, then stored in the database), else the one stored in
/// the database (checked with the key, if one is configured).
async fn load_reference(
    config: &ServeConfig,
    db: &Db,
) -> Result<(Option<Reference>, Option<ed25519_dalek::VerifyingKey>), ServeError> {
    let Some(key_path) = &config.reference_key else {
        return match &config.reference {
            Some(path) => Err(ServeError::Reference {
                path: path.clone(),
                problem: "a reference needs --reference-key to check it".to_owned(),
            }),
            None => Ok((None, None)),
        };
    };
    let key = persist::keys::read_public(key_path)?;
    let Some(path) = &config.reference else {
        // The stored one, if any (an admin may have put it there).
        return match db.setting(crate::routes::admin::REFERENCE_SETTING).await? {
            Some(text) => {
                let r = Reference::verify_signed(text.as_bytes(), &key).map_err(|e| {
                    ServeError::Reference {
                        path: PathBuf::from("(database)"),
                        problem: e.to_string(),
                    }
                })?;
                Ok((Some(r), Some(key)))
            }
            None => Ok((None, Some(key))),
        };
    };
    let bad = |problem: String| ServeError::Reference {
        path: path.clone(),
        problem,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let r = Reference::verify_signed(&bytes, &key).map_err(|e| bad(e.to_string()))?;
    let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8".to_owned()))?;
    // Never go back to an older reference than the one stored.
    let stored = db.setting(crate::routes::admin::REFERENCE_SETTING).await?;
    if let Some(held) = stored.and_then(|t| Reference::verify_signed(t.as_bytes(), &key).ok()) {
        if r.version < held.version {
            return Err(bad(format!(
                "version {} is older than version {} stored in the database; sign a newer one (satchel predict --reference-version)",
                r.version, held.version
            )));
        }
    }
    db.set_setting(crate::routes::admin::REFERENCE_SETTING, &text)
        .await?;
    Ok((Some(r), Some(key)))
}

/// Largest request body read (evidence with its event logs fits easily).
pub use protocol::limits::MAX_BODY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_its_share_in_either_spelling_and_gets_it_back() {
        let c = Arc::new(PeerCounts::new(2));
        let v4: std::net::IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let a = c.take(v4).unwrap();
        let b = c.take(mapped).unwrap();
        assert!(c.take(v4).is_none() && c.take(mapped).is_none());
        assert!(c.take("192.0.2.8".parse().unwrap()).is_some());
        drop(a);
        let again = c.take(mapped);
        assert!(again.is_some());
        drop((b, again));
        assert!(c.held.lock().unwrap().get(&v4).is_none());
    }
}
