//! What HTTPS interception adds per request, beside a plain CONNECT tunnel,
//! on loopback, in one run.
//!
//! One HTTPS site (its own CA) listens on two ports. The policy passes the
//! first through as a tunnel (a `CONNECT` rule) and has a URL rule for the
//! second, so the proxy intercepts it. Each request is what a browser's
//! first request to a site costs: a new mTLS connection to the proxy, the
//! CONNECT, the TLS handshake inside, one GET, the answer to the end. The
//! two kinds alternate request by request, so the drift of a busy machine
//! cancels; the output is p50 and p99 of each and what interception adds.
//!
//! `cargo bench -p gateway --bench intercept [-- REQUESTS]` (default 400
//! of each).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{device_cert_at, enroll_directly, site_with_own_ca, Running, Site};
use gateway::{Pki, ServeConfig};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

fn roots(pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// One request through the proxy to `127.0.0.1:port`, the inner TLS
/// verified by `inner`: how long it took.
async fn one(
    dev: &device::GatewayClient,
    port: u16,
    inner: &tokio_rustls::TlsConnector,
) -> Duration {
    let t = Instant::now();
    let mut tls = dev.connect().await.unwrap();
    tls.write_all(
        format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tls.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut site = inner.connect(name, tls).await.unwrap();
    site.write_all(
        format!("GET /page HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = site.read_to_end(&mut answer).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains("saw GET /page"), "{text}");
    t.elapsed()
}

fn quantile(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i].as_secs_f64() * 1e6
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let data = path.join("gw");
    let (ca, cert, key) = site_with_own_ca("bench");
    let tunnelled = Site::start(&cert, &key);
    let intercepted = Site::start(&cert, &key);
    std::fs::write(path.join("site-ca.crt"), &ca).unwrap();
    let (t, i) = (tunnelled.port, intercepted.port);
    std::fs::write(
        path.join("policy.csv"),
        format!(
            "p, group:all, url, https://127.0.0.1:{t}/*, CONNECT, allow\n\
             p, group:all, url, https://127.0.0.1:{i}/*, GET, allow\n"
        ),
    )
    .unwrap();
    let mut config = ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.proxy_listen = Some("127.0.0.1:0".parse().unwrap());
    config.policy = Some(path.join("policy.csv"));
    config.upstream_ca = Some(path.join("site-ca.crt"));
    let db = config.db_url();
    let gw = Running::with(config);
    enroll_directly(&db, "bench-1", &[]);
    let pki = Pki::init(&data, &[]).unwrap();
    let (crt, dkey) = device_cert_at(
        &pki,
        &path,
        "bench-1",
        Duration::from_secs(3600),
        audit::batch::now_ms(),
    );
    let dev = device::GatewayClient::new(
        &format!("https://127.0.0.1:{}", gw.proxy_port.unwrap()),
        &std::fs::read_to_string(data.join("ca.crt")).unwrap(),
        Some((
            &std::fs::read_to_string(&crt).unwrap(),
            &std::fs::read_to_string(&dkey).unwrap(),
        )),
    )
    .unwrap();
    let site_roots = roots(&ca);
    let proxy_roots = roots(&pki.proxy_ca.cert_pem);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (mut tunnel, mut intercept) = (Vec::with_capacity(n), Vec::with_capacity(n));
    rt.block_on(async {
        // Warm up both paths (site certificate made, connections pooled nowhere).
        for _ in 0..20 {
            one(&dev, t, &site_roots).await;
            one(&dev, i, &proxy_roots).await;
        }
        for _ in 0..n {
            tunnel.push(one(&dev, t, &site_roots).await);
            intercept.push(one(&dev, i, &proxy_roots).await);
        }
    });
    let (t50, t99) = (quantile(&mut tunnel, 0.5), quantile(&mut tunnel, 0.99));
    let (i50, i99) = (
        quantile(&mut intercept, 0.5),
        quantile(&mut intercept, 0.99),
    );
    println!("HTTPS request through the proxy, {n} of each, new connections, loopback:");
    println!("  CONNECT tunnel (pass-through):  p50 {t50:8.0} us   p99 {t99:8.0} us");
    println!("  intercepted (decided per URL):  p50 {i50:8.0} us   p99 {i99:8.0} us");
    println!(
        "  interception adds:              p50 {:8.0} us   p99 {:8.0} us   ({:.2}x the tunnel at p50)",
        i50 - t50,
        i99 - t99,
        i50 / t50
    );
    drop(gw);
}
