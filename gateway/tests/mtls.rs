//! The gateway's mTLS server against a real TLS client (curl): the data
//! directory is made once and reused; `/v1/health` is open; `/v1/whoami`
//! needs a device certificate from this gateway's device CA; certificates
//! from another CA, self-signed ones and expired ones are refused at the
//! handshake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use gateway::{DeviceCertRequest, Gateway, Pki, ServeConfig};

/// A gateway on a free port in its own thread; stopped on drop.
struct Running {
    port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn start(data: &Path) -> Running {
        let config = ServeConfig::new(data.to_owned(), "127.0.0.1:0".parse().unwrap());
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
                port_tx.send(g.local_addr.port()).unwrap();
                g.run(async {
                    let _ = rx.await;
                })
                .await;
            });
        });
        let port = port_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Running {
            port,
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

fn curl(port: u16, data: &Path, path: &str, cert: Option<(&Path, &Path)>) -> Output {
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

fn status_and_body(o: &Output) -> (String, serde_json::Value) {
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.to_owned(),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// A device key and a certificate for it from `pki`.
fn device_cert(
    pki: &Pki,
    dir: &Path,
    name: &str,
    lifetime: Duration,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let kp = rcgen::KeyPair::generate().unwrap();
    let pem = pki
        .issue_device_cert(&DeviceCertRequest {
            device_id: name,
            public_key: &kp,
            lifetime,
            attestation_id: "test-attestation",
            attested_at_ms: 1_790_000_000_000,
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

#[test]
fn device_certificates_gate_whoami() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let gw = Running::start(&data);
    let pki = Pki::init(&data, &[]).unwrap();
    for f in [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "device-ca.crt",
        "device-ca.key",
    ] {
        assert!(data.join(f).exists(), "{f}");
    }
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(data.join(f)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("device-ca.key"), 0o600);

    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/health", None));
    assert_eq!((s.as_str(), b["status"].as_str()), ("200", Some("ok")));

    // No certificate: 401 with a problem body.
    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/whoami", None));
    assert_eq!(s, "401");
    assert_eq!(b["status"], 401);

    // A device certificate from this gateway, for a device that is not
    // enrolled: the TLS layer accepts it, the route does not.
    let (crt, key) = device_cert(&pki, dir.path(), "laptop-17", Duration::from_secs(3600));
    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/whoami", Some((&crt, &key))));
    assert_eq!(s, "403", "{b}");
    assert_eq!(b["title"], "not enrolled");

    // Another gateway's device CA: refused at the handshake.
    let other = Pki::init(&dir.path().join("other"), &[]).unwrap();
    let (crt2, key2) = device_cert(&other, dir.path(), "intruder", Duration::from_secs(3600));
    let o = curl(gw.port, &data, "/v1/whoami", Some((&crt2, &key2)));
    assert!(!o.status.success(), "a foreign certificate was accepted");

    // A self-signed certificate: refused.
    let kp = rcgen::KeyPair::generate().unwrap();
    let selfsigned = rcgen::CertificateParams::new(vec!["laptop-17".to_owned()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let (crt3, key3) = (dir.path().join("self.crt"), dir.path().join("self.key"));
    std::fs::write(&crt3, selfsigned.pem()).unwrap();
    std::fs::write(&key3, kp.serialize_pem()).unwrap();
    assert!(!curl(gw.port, &data, "/v1/whoami", Some((&crt3, &key3)))
        .status
        .success());

    // An expired certificate: refused.
    let (crt4, key4) = device_cert(&pki, dir.path(), "stale", Duration::from_secs(0));
    std::thread::sleep(Duration::from_millis(1100));
    assert!(!curl(gw.port, &data, "/v1/whoami", Some((&crt4, &key4)))
        .status
        .success());

    // Unknown routes and methods: problem bodies.
    let (s, _) = status_and_body(&curl(gw.port, &data, "/v1/nothing", None));
    assert_eq!(s, "404");
    drop(gw);

    // A restart reuses the same CA (clients keep their pin).
    let before = std::fs::read(data.join("ca.crt")).unwrap();
    let gw = Running::start(&data);
    assert_eq!(std::fs::read(data.join("ca.crt")).unwrap(), before);
    let (s, _) = status_and_body(&curl(gw.port, &data, "/v1/whoami", Some((&crt, &key))));
    assert_eq!(s, "403");
}
