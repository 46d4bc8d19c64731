//! A TLS load generator for the gateway benchmark (`scripts/bench-gateway.sh`):
//! the same client, the same certificates and the same cipher suites against
//! `satchel gateway serve` and against nginx.
//!
//! ```text
//! tls-load --url https://127.0.0.1:8443/v1/health --ca ca.crt --cert dev.crt --key dev.key \
//!          --mode handshake|keepalive --conns 32 --seconds 10
//! ```
//!
//! `handshake`: every request on a new TCP connection with a full TLS 1.3
//! handshake (no resumption, a client certificate each time), then close.
//! `keepalive`: `--conns` connections, each sending requests one after
//! another. Prints one JSON line: `{"mode", "conns", "seconds", "requests",
//! "errors", "per_second"}`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A TLS load generator: the same client against any HTTPS server.
#[derive(clap::Parser)]
struct Args {
    /// The URL to GET: https://HOST:PORT/PATH.
    #[arg(long)]
    url: String,
    /// The CA that signed the server's certificate (PEM).
    #[arg(long)]
    ca: String,
    /// The client certificate (PEM).
    #[arg(long)]
    cert: String,
    /// Its key (PEM).
    #[arg(long)]
    key: String,
    /// `handshake` (a new connection per request) or `keepalive`.
    #[arg(long, default_value = "handshake")]
    mode: String,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    conns: usize,
    /// How long to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Host, port and path of `https://HOST:PORT/PATH`.
fn target(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("https://")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let (h, p) = authority.rsplit_once(':')?;
    let path = if path.is_empty() { "/" } else { path };
    Some((h.to_owned(), p.parse().ok()?, path.to_owned()))
}

fn config(a: &Args) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca).expect("--ca") {
        roots
            .add(c.expect("CA certificate"))
            .expect("CA certificate");
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&a.cert)
        .expect("--cert")
        .collect::<Result<_, _>>()
        .expect("--cert");
    let key = PrivateKeyDer::from_pem_file(&a.key).expect("--key");
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client certificate");
    // Every handshake a full one.
    c.resumption = rustls::client::Resumption::disabled();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    c
}

/// Send one request and read its whole answer (Content-Length framed).
async fn exchange<S>(s: &mut S, request: &[u8], buf: &mut Vec<u8>) -> bool
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if s.write_all(request).await.is_err() {
        return false;
    }
    buf.clear();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return head.starts_with("http/1.1 200");
            }
        }
    }
}

fn main() {
    let a = <Args as clap::Parser>::parse();
    let Some((host, port, path)) = target(&a.url) else {
        eprintln!("--url must be https://HOST:PORT/PATH");
        std::process::exit(2);
    };
    let keepalive = a.mode == "keepalive";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config(&a)));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(a.seconds);
    let name = ServerName::try_from(host.clone()).expect("host");
    let close = if keepalive { "keep-alive" } else { "close" };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nConnection: {close}\r\n\r\n",
        path, host, port
    )
    .into_bytes();
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..a.conns {
            let (connector, name, request) = (connector.clone(), name.clone(), request.clone());
            let (done, errors) = (done.clone(), errors.clone());
            let host = host.clone();
            tasks.push(tokio::spawn(async move {
                let mut buf = Vec::with_capacity(4096);
                'outer: while Instant::now() < deadline {
                    let Ok(tcp) = tokio::net::TcpStream::connect((host.as_str(), port)).await
                    else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let Ok(mut tls) = connector.connect(name.clone(), tcp).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    loop {
                        if exchange(&mut tls, &request, &mut buf).await {
                            done.fetch_add(1, Ordering::Relaxed);
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                            continue 'outer;
                        }
                        if !keepalive || Instant::now() >= deadline {
                            break;
                        }
                    }
                    let _ = tls.shutdown().await;
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "mode": if keepalive { "keepalive" } else { "handshake" },
            "conns": a.conns,
            "seconds": (secs * 100.0).round() / 100.0,
            "requests": n,
            "errors": errors.load(Ordering::Relaxed),
            "per_second": (n as f64 / secs).round(),
        })
    );
}
