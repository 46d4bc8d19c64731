//! What the gateway's integration tests share: a gateway on free ports in
//! its own thread, curl, and device certificates for enrolled devices.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use gateway::{DeviceCertRequest, Gateway, Pki, ServeConfig};
use rustls::pki_types::pem::PemObject as _;

/// A gateway in its own thread; stopped on drop.
pub(crate) struct Running {
    pub(crate) port: u16,
    pub(crate) proxy_port: Option<u16>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Serve `data` on a free port, no proxy, defaults otherwise.
    pub(crate) fn start(data: &Path) -> Running {
        Running::with(ServeConfig::new(
            data.to_owned(),
            "127.0.0.1:0".parse().unwrap(),
        ))
    }

    /// Serve `config` (its ports may be 0).
    pub(crate) fn with(config: ServeConfig) -> Running {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let g = Gateway::bind(&config).await.unwrap();
                port_tx
                    .send((g.local_addr.port(), g.proxy_addr.map(|a| a.port())))
                    .unwrap();
                g.run(async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        let (port, proxy_port) = port_rx.recv_timeout(Duration::from_secs(20)).unwrap();
        Running {
            port,
            proxy_port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `curl` against the gateway's API with `extra` arguments; the output ends
/// with a newline and the HTTP status.
pub(crate) fn curl(port: u16, data: &Path, path: &str, cert: Option<(&Path, &Path)>) -> Output {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(data.join("ca.crt"))
    .arg(format!("https://127.0.0.1:{port}{path}"));
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    c.output().unwrap()
}

/// The status and the JSON body of a `curl` run made with `-w "\n%{http_code}"`.
pub(crate) fn status_and_body(o: &Output) -> (String, serde_json::Value) {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        status.to_owned(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A device key and a certificate for it from `pki`, for an attestation
/// made at `attested_at_ms`.
pub(crate) fn device_cert_at(
    pki: &Pki,
    dir: &Path,
    name: &str,
    lifetime: Duration,
    attested_at_ms: i64,
) -> (PathBuf, PathBuf) {
    let kp = rcgen::KeyPair::generate().unwrap();
    let pem = pki
        .issue_device_cert(&DeviceCertRequest {
            device_id: name,
            public_key: &kp,
            lifetime,
            attestation_id: "test-attestation",
            attested_at_ms,
        })
        .unwrap();
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, pem).unwrap();
    std::fs::write(&key, kp.serialize_pem()).unwrap();
    (crt, key)
}

/// Register `device_id` with `groups` in the gateway's database the way a
/// finished enrollment does (enrollment itself is tested against a swtpm in
/// `satchel/tests/gateway_cli.rs`).
pub(crate) fn enroll_directly(db_url: &str, device_id: &str, groups: &[&str]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(db_url).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
        let token = db
            .make_token(device_id, &groups, Duration::from_secs(60))
            .await
            .unwrap();
        let device = gateway::state::Device {
            device_id: device_id.to_owned(),
            groups,
            ak_pem: String::new(),
            enrolled_ms: audit::batch::now_ms(),
            revoked_ms: None,
        };
        assert!(db.enroll(&token, &device).await.unwrap());
    });
}

/// Revoke through the database, as `satchel gateway revoke` does.
pub(crate) fn revoke_directly(db_url: &str, device_id: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(db_url).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        assert!(db.revoke(device_id).await.unwrap());
    });
}

/// Every audit entry of the gateway's log.
pub(crate) fn audit_entries(db_url: &str) -> Vec<audit::entry::Entry> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = audit::store::Store::open(db_url).await.unwrap();
        store
            .entries(0, None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.entry)
            .collect()
    })
}

/// `curl` with a client certificate and `extra` arguments (`-X PUT`,
/// `--data-binary @FILE`, ...): the status and the body as text.
pub(crate) fn api(
    port: u16,
    data: &Path,
    path: &str,
    cert: (&Path, &Path),
    extra: &[&str],
) -> (String, String) {
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(data.join("ca.crt"))
        .arg("--cert")
        .arg(cert.0)
        .arg("--key")
        .arg(cert.1)
        .args(extra)
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

/// A TLS client configuration trusting `data`'s gateway CA, presenting no
/// certificate.
pub(crate) fn anonymous_tls(data: &Path) -> std::sync::Arc<rustls::ClientConfig> {
    client_tls(data, None)
}

/// A TLS client configuration trusting `data`'s gateway CA, presenting
/// `identity` (certificate PEM, key PEM) when given.
pub(crate) fn client_tls(
    data: &Path,
    identity: Option<(&str, &str)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    let ca = std::fs::read(data.join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    std::sync::Arc::new(match identity {
        None => builder.with_no_client_auth(),
        Some((crt, key)) => {
            let chain = rustls::pki_types::CertificateDer::pem_slice_iter(crt.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    })
}

/// Send a GET of `path` on an open connection (kept alive) and read the
/// answer's status line.
pub(crate) fn get_status<S: std::io::Read + std::io::Write>(s: &mut S, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    s.flush().unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The status line, then the rest of the head and the body by length.
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let len: usize = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    text.lines().next().unwrap_or_default().to_owned()
}

/// A blocking TLS stream to the gateway on `port`, reads timing out after `timeout`.
pub(crate) fn tls_stream(
    tls: &std::sync::Arc<rustls::ClientConfig>,
    port: u16,
    timeout: Duration,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let conn = rustls::ClientConnection::new(tls.clone(), "localhost".try_into().unwrap()).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(timeout)).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Run `f` to completion on a runtime of its own.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A CA and a certificate for 127.0.0.1 and localhost signed by it (PEM):
/// (ca, cert, key).
pub(crate) fn site_with_own_ca(name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

/// An HTTPS server on a free port answering every request with
/// `saw METHOD TARGET`, remembering the request lines.
pub(crate) struct Site {
    pub(crate) port: u16,
    pub(crate) seen: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Site {
    pub(crate) fn start(cert: &str, key: &str) -> Site {
        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        );
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for tcp in l.incoming() {
                let Ok(tcp) = tcp else { continue };
                let (config, log) = (config.clone(), log.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let mut r = std::io::BufReader::new(&mut tls);
                    let mut first = String::new();
                    if r.read_line(&mut first).is_err() {
                        return;
                    }
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let line = first.trim().to_owned();
                    log.lock().unwrap().push(line.clone());
                    let body = format!("saw {line}");
                    let _ = write!(
                        tls,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Site { port, seen }
    }
}

/// Make `home` a browser profile's home whose own NSS store trusts the CA
/// certificate `ca` (Chromium reads `$HOME/.pki/nssdb`).
#[allow(dead_code)]
pub(crate) fn trusting_home(home: &Path, ca: &Path) {
    let nss = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nss).unwrap();
    let db = format!("sql:{}", nss.display());
    let certutil = |args: &[&str]| {
        let o = Command::new("certutil").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "certutil {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    certutil(&["-d", &db, "-N", "--empty-password"]);
    certutil(&[
        "-d",
        &db,
        "-A",
        "-t",
        "C,,",
        "-n",
        "satchel-test-ca",
        "-i",
        ca.to_str().unwrap(),
    ]);
}

/// A device's TPM: a swtpm with an EK certificate and the sample boot chain
/// (examples/boot-chain) measured into it; its event log is `DIR/boot.log`.
/// Also the organisation's signed reference for that chain, `DIR/ref.json`,
/// and its key, `DIR/org.pub` (see [`attesting`]; the private half is
/// `DIR/org.key`); the reference is returned too.
#[allow(dead_code)]
pub(crate) fn measured_swtpm(dir: &Path) -> (tpm_sim_tests::Swtpm, PathBuf, attest::Reference) {
    let swtpm = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let chain_path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    let chain = firmware_measure::Chain::load(&chain_path).unwrap();
    let log = dir.join("boot.log");
    {
        let mut tpm = attest::tpm::Tpm::open(&swtpm.tcti()).unwrap();
        firmware_measure::measure(&chain, &mut tpm, &log).unwrap();
    }
    let org = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
    let reference = firmware_measure::reference(
        &chain,
        None,
        &[attest::HashAlg::Sha256],
        "sample",
        "t".into(),
    )
    .unwrap();
    std::fs::write(dir.join("ref.json"), reference.sign(&org).unwrap()).unwrap();
    persist::keys::write_public(&dir.join("org.pub"), &org.verifying_key()).unwrap();
    persist::keys::write_private(&dir.join("org.key"), &org).unwrap();
    (swtpm, log, reference)
}

/// Configure a gateway to enroll `swtpm`'s EK and attest against the
/// reference [`measured_swtpm`] wrote into `dir`.
#[allow(dead_code)]
pub(crate) fn attesting(config: &mut ServeConfig, swtpm: &tpm_sim_tests::Swtpm, dir: &Path) {
    config.ek_ca = Some(swtpm.ek_ca_dir());
    config.reference = Some(dir.join("ref.json"));
    config.reference_key = Some(dir.join("org.pub"));
}
