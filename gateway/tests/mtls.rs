//! The gateway's mTLS server against a real TLS client (curl): the data
//! directory is made once and reused; `/v1/health` is open; `/v1/whoami`
//! needs a device certificate from this gateway's device CA; certificates
//! from another CA, self-signed ones and expired ones are refused at the
//! handshake.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use gateway::Pki;

mod common;
use common::{
    anonymous_tls, client_tls, curl, device_cert_at, get_status, status_and_body, tls_stream,
    Running,
};

/// A device certificate from `pki` for an attestation made now.
fn device_cert(
    pki: &Pki,
    dir: &Path,
    name: &str,
    lifetime: Duration,
) -> (std::path::PathBuf, std::path::PathBuf) {
    device_cert_at(pki, dir, name, lifetime, audit::batch::now_ms())
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

#[test]
fn a_certificate_is_honoured_only_while_its_attestation_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    let db = config.db_url();
    let gw = Running::with(config);
    common::enroll_directly(&db, "laptop-2", &["group:lab"]);
    let pki = Pki::init(&data, &[]).unwrap();
    let now = audit::batch::now_ms();

    let (crt, key) = device_cert_at(&pki, dir.path(), "laptop-2", Duration::from_secs(7200), now);
    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/whoami", Some((&crt, &key))));
    assert_eq!(s, "200", "{b}");
    assert_eq!(b["device_id"], "laptop-2");
    assert_eq!(b["groups"][0], "group:lab");

    // A valid certificate for an attestation older than the lifetime (1 h).
    let (crt, key) = device_cert_at(
        &pki,
        dir.path(),
        "laptop-2",
        Duration::from_secs(7200),
        now - 3_700_000,
    );
    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/whoami", Some((&crt, &key))));
    assert_eq!(
        (s.as_str(), b["title"].as_str()),
        ("403", Some("stale attestation"))
    );

    // A certificate from before the device's current enrollment.
    common::enroll_directly(&db, "laptop-2", &["group:lab"]);
    let (crt, key) = device_cert_at(
        &pki,
        dir.path(),
        "laptop-2",
        Duration::from_secs(7200),
        now - 1000,
    );
    let (s, b) = status_and_body(&curl(gw.port, &data, "/v1/whoami", Some((&crt, &key))));
    assert_eq!(
        (s.as_str(), b["title"].as_str()),
        ("403", Some("stale certificate"))
    );
}

/// Slow clients (slowloris) are cut off: headers that never finish, a body
/// that never arrives, an idle kept-alive connection.
#[test]
fn slow_clients_are_cut_off() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let mut config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.header_timeout = Duration::from_secs(1);
    config.body_timeout = Duration::from_secs(1);
    let gw = Running::with(config);
    let tls = anonymous_tls(&data);
    // Send `prefix`, then wait: what comes back, and how long until close.
    let stall = |prefix: &[u8]| {
        let mut s = tls_stream(&tls, gw.port, Duration::from_secs(8));
        s.write_all(prefix).unwrap();
        let start = std::time::Instant::now();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
    };
    let (_, took) = stall(b"GET /v1/health HTTP/1.1\r\nHost: loc");
    assert!(
        took < Duration::from_secs(5),
        "unfinished headers held {took:?}"
    );
    let (answer, took) =
        stall(b"POST /v1/enroll HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"dev");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "an unfinished body held {took:?}"
    );
    let (answer, took) = stall(b"GET /v1/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        took < Duration::from_secs(5),
        "an idle connection held {took:?}"
    );
}

/// Regression (issue 22, item 10): an admin route refuses a caller without
/// an admin certificate before it reads a byte of the body, so an anonymous
/// 8 MB PUT costs the gateway nothing (the body timeout is 30 s here: a
/// gateway that read first would answer late, or 408).
#[test]
fn admin_routes_refuse_before_reading_the_body() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let mut config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.body_timeout = Duration::from_secs(30);
    let gw = Running::with(config);
    let tls = anonymous_tls(&data);
    let mut s = tls_stream(&tls, gw.port, Duration::from_secs(10));
    let start = std::time::Instant::now();
    s.write_all(
        b"PUT /v1/admin/policy HTTP/1.1\r\nHost: localhost\r\nContent-Length: 8000000\r\n\r\n",
    )
    .unwrap();
    s.write_all(&[b'p'; 4096]).unwrap();
    let mut head = [0u8; 512];
    let n = s.read(&mut head).unwrap();
    let answer = String::from_utf8_lossy(&head[..n]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "answered after {:?}",
        start.elapsed()
    );
}

/// Regression (issue 22, item 12): an admin certificate is checked on every
/// request of a kept-alive connection: once it expires, and once its holder
/// is revoked, the same connection is refused; a certificate issued after
/// the revocation works.
#[test]
fn admin_certificates_expire_and_are_revoked_on_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let mut config = gateway::ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.header_timeout = Duration::from_secs(30);
    let gw = Running::with(config);
    let pki = Pki::init(&data, &[]).unwrap();
    let open = |cert: &gateway::pki::AdminCert| {
        let tls = client_tls(&data, Some((&cert.cert_pem, &cert.key_pem)));
        tls_stream(&tls, gw.port, Duration::from_secs(10))
    };

    // Expiry on a kept-alive connection.
    let short = pki
        .issue_admin_cert("alice", Duration::from_secs(2))
        .unwrap();
    let mut s = open(&short);
    assert_eq!(get_status(&mut s, "/v1/admin/devices"), "HTTP/1.1 200 OK");
    std::thread::sleep(Duration::from_millis(3200));
    assert_eq!(
        get_status(&mut s, "/v1/admin/devices"),
        "HTTP/1.1 401 Unauthorized"
    );

    // Revocation, on the open connection and on a new one.
    let bob = pki
        .issue_admin_cert("bob", Duration::from_secs(3600))
        .unwrap();
    let mut s = open(&bob);
    assert_eq!(get_status(&mut s, "/v1/admin/devices"), "HTTP/1.1 200 OK");
    let db_url = format!("sqlite:{}", data.join("satchel.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(&db_url).await.unwrap();
        gateway::state::Db::new(pool)
            .await
            .unwrap()
            .revoke_admin("bob")
            .await
            .unwrap();
    });
    assert_eq!(
        get_status(&mut s, "/v1/admin/devices"),
        "HTTP/1.1 403 Forbidden"
    );
    assert_eq!(
        get_status(&mut open(&bob), "/v1/admin/devices"),
        "HTTP/1.1 403 Forbidden"
    );
    std::thread::sleep(Duration::from_millis(5));
    let again = pki
        .issue_admin_cert("bob", Duration::from_secs(3600))
        .unwrap();
    assert_eq!(
        get_status(&mut open(&again), "/v1/admin/devices"),
        "HTTP/1.1 200 OK"
    );
}

/// An unauthenticated flood from one address: 1,100 TCP connections that
/// never start TLS must not take the connection slots every device needs.
/// Another address is still served, and the flooding address's
/// connections past its share are closed at once.
#[test]
fn one_address_cannot_take_every_connection_slot() {
    use std::io::Read as _;
    use std::net::TcpStream;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let gw = Running::start(&data);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], gw.port));
    let mut held = Vec::new();
    for _ in 0..1100 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            held.push(s);
        }
    }
    assert!(held.len() > 1024, "only {} connections", held.len());
    // A device at another address gets its answer.
    let o = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--interface",
            "127.0.0.2",
            "--cacert",
        ])
        .arg(data.join("ca.crt"))
        .arg(format!("https://127.0.0.1:{}/v1/health", gw.port))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "a second address was not served while one address flooded: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Past its share, the flooding address is cut off at once (no 10 s
    // handshake wait): end of stream or a reset.
    let mut extra = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let mut buf = [0u8; 16];
    match extra.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("a connection past the address's share was kept: {other:?}"),
    }
    drop(held);
}
