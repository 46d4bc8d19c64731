//! Regression (issue 22, item 9): references carry a version, and the
//! gateway never goes back to an older one: not through the admin route,
//! not at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use attest::HashAlg;
use gateway::{Pki, ServeConfig};

mod common;
use common::{client_tls, tls_stream, Running};

/// The sample chain's reference at `version`, signed with `key`.
fn reference(key: &ed25519_dalek::SigningKey, version: u64) -> String {
    let chain = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    let chain = firmware_measure::Chain::load(&chain).unwrap();
    let mut r = firmware_measure::reference(&chain, None, &[HashAlg::Sha256], "sample", "t".into())
        .unwrap();
    r.version = version;
    r.sign(key).unwrap()
}

/// PUT `body` to `path` as `admin`; the status line and the body.
fn put(port: u16, data: &Path, admin: &gateway::pki::AdminCert, path: &str, body: &str) -> String {
    use std::io::{Read as _, Write as _};
    let tls = client_tls(data, Some((&admin.cert_pem, &admin.key_pem)));
    let mut s = tls_stream(&tls, port, Duration::from_secs(10));
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn an_older_reference_is_refused_by_the_admin_route_and_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let org = persist::keys::generate();
    let key_path = dir.path().join("org.pub");
    persist::keys::write_public(&key_path, &org.verifying_key()).unwrap();
    let v5 = dir.path().join("v5.json");
    std::fs::write(&v5, reference(&org, 5)).unwrap();
    let config = |reference: &Path| {
        let mut c = ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
        c.reference = Some(reference.to_owned());
        c.reference_key = Some(key_path.clone());
        c
    };
    {
        let gw = Running::with(config(&v5));
        let pki = Pki::init(&data, &[]).unwrap();
        let admin = pki
            .issue_admin_cert("alice", Duration::from_secs(600))
            .unwrap();
        let older = put(
            gw.port,
            &data,
            &admin,
            "/v1/admin/reference",
            &reference(&org, 3),
        );
        assert!(older.starts_with("HTTP/1.1 409"), "{older}");
        assert!(
            older.contains("version 3 is older than version 5"),
            "{older}"
        );
        let newer = put(
            gw.port,
            &data,
            &admin,
            "/v1/admin/reference",
            &reference(&org, 7),
        );
        assert!(newer.starts_with("HTTP/1.1 200"), "{newer}");
    }
    // The database now holds version 7: starting with version 5 is refused.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let refused = rt
        .block_on(gateway::Gateway::bind(&config(&v5)))
        .err()
        .unwrap();
    assert!(
        refused
            .to_string()
            .contains("version 5 is older than version 7"),
        "{refused}"
    );
}
