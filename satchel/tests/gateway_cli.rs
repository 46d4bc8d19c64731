//! `satchel gateway serve` as an operator starts it: it makes its data
//! directory, serves HTTPS that curl reaches with the pinned CA, and stops
//! cleanly on SIGTERM. And the whole device path against a real swtpm:
//! enrollment with a one-time token (EK chain, credential activation),
//! attestation for a device certificate, curl reaching `/v1/whoami` with
//! it, a tampered boot refused with its reasons, everything audited.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, Served};

#[test]
fn serve_answers_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "gateway",
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let health = loop {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(data.join("ca.crt"))
            .arg(format!("https://127.0.0.1:{port}/v1/health"))
            .output()
            .unwrap();
        if o.status.success() {
            break String::from_utf8_lossy(&o.stdout).into_owned();
        }
        assert!(Instant::now() < deadline, "the gateway did not come up");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(health.contains("\"ok\""), "{health}");
    // Without the pinned CA, curl refuses the server.
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("https://127.0.0.1:{port}/v1/health"),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    // SIGTERM: a clean exit.
    Command::new("kill")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}

fn satchel(args: &[&str], tcti: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .env("SATCHEL_TPM", tcti)
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap()
}

fn ok(args: &[&str], tcti: &str) -> String {
    let o = satchel(args, tcti);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn wait_up(ca: &std::path::Path, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", "--cacert"])
            .arg(ca)
            .arg(format!("https://127.0.0.1:{port}/v1/health"))
            .output()
            .unwrap();
        if o.status.success() {
            return;
        }
        assert!(Instant::now() < deadline, "the gateway did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn enroll_attest_and_reach_whoami_with_the_issued_certificate() {
    let swtpm = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let t = swtpm.tcti();
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let chain = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/boot-chain/chain.toml");
    ok(
        &[
            "measure",
            "--chain",
            chain.to_str().unwrap(),
            "--log",
            &p("boot.log"),
        ],
        &t,
    );
    ok(&["keygen", "--out", &p("org.key")], &t);
    ok(
        &[
            "predict",
            "--chain",
            chain.to_str().unwrap(),
            "--banks",
            "sha256",
            "--sign-key",
            &p("org.key"),
            "--out",
            &p("ref.json"),
        ],
        &t,
    );
    let port = free_port();
    let gw = p("gw");
    let _served = Served(
        Command::new(env!("CARGO_BIN_EXE_satchel"))
            .args([
                "gateway",
                "serve",
                "--data",
                &gw,
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--ek-ca",
                swtpm.ek_ca_dir().to_str().unwrap(),
                "--reference",
                &p("ref.json"),
                "--reference-key",
                &p("org.key.pub"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = dir.path().join("gw/ca.crt");
    wait_up(&ca, port);
    let url = format!("https://127.0.0.1:{port}");
    let token = ok(
        &[
            "gateway",
            "enroll-token",
            "--data",
            &gw,
            "--device-id",
            "laptop-17",
            "--groups",
            "group:class-7a",
        ],
        &t,
    );
    let token = token.trim();
    let cdir = p("client");
    let client = |extra: &[&str]| {
        let mut args = vec!["client"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--gateway",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--data",
            &cdir,
        ]);
        satchel(&args, &t)
    };
    // Another device id with this token: refused.
    let o = client(&["enroll", "--device-id", "laptop-99", "--token", token]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Enroll, then the token is spent.
    let o = client(&["enroll", "--device-id", "laptop-17", "--token", token]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = client(&["enroll", "--device-id", "laptop-17", "--token", token]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("token"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Attest: a certificate, a 0600 key, and whoami answers with the groups.
    let log = p("boot.log");
    let o = client(&["attest", "--log", &log]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(p("client/device.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    let whoami = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            &p("client/device.crt"),
            "--key",
            &p("client/device.key"),
        ])
        .arg(format!("{url}/v1/whoami"))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&whoami.stdout).unwrap();
    assert_eq!(v["device_id"], "laptop-17", "{v}");
    assert_eq!(v["groups"], serde_json::json!(["group:class-7a"]));
    assert!(v["attested_at"].as_i64().is_some());

    // A tampered boot (an extend the log does not show): no certificate, reasons back.
    let mut tpm = attest::tpm::Tpm::open(&t).unwrap();
    tpm.extend(8, &[(attest::HashAlg::Sha256, vec![0xab; 32])])
        .unwrap();
    drop(tpm);
    let before = std::fs::read(p("client/device.crt")).unwrap();
    let o = client(&["attest", "--log", &log]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("PCR 8"), "{err}");
    assert_eq!(std::fs::read(p("client/device.crt")).unwrap(), before);

    // Revocation takes effect on the next request.
    ok(
        &[
            "gateway",
            "revoke",
            "--data",
            &gw,
            "--device-id",
            "laptop-17",
        ],
        &t,
    );
    let o = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
            ca.to_str().unwrap(),
            "--cert",
            &p("client/device.crt"),
            "--key",
            &p("client/device.key"),
        ])
        .arg(format!("{url}/v1/whoami"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "403");
    assert_ne!(
        satchel(
            &[
                "gateway",
                "revoke",
                "--data",
                &gw,
                "--device-id",
                "laptop-17"
            ],
            &t
        )
        .status
        .code(),
        Some(0)
    );

    // The data directory holds the audit and manifest keys.
    for f in [
        "audit.key",
        "audit.key.pub",
        "manifest.key",
        "manifest.key.pub",
    ] {
        assert!(dir.path().join("gw").join(f).exists(), "{f}");
    }

    // The gateway's audit log verifies with its key (after a checkpoint
    // over everything; the gateway signs one every minute on its own).
    let db = format!("sqlite:{gw}/satchel.db");
    let origin = "satchel.gateway.audit";
    ok(
        &[
            "audit",
            "checkpoint",
            "--db",
            &db,
            "--key",
            &p("gw/audit.key"),
            "--origin",
            origin,
        ],
        &t,
    );
    let out = ok(
        &[
            "audit",
            "verify",
            "--db",
            &db,
            "--pubkey",
            &p("gw/audit.key.pub"),
            "--origin",
            origin,
        ],
        &t,
    );
    assert!(out.contains("intact"), "{out}");

    // The audit trail holds every decision.
    let list = ok(
        &[
            "audit",
            "list",
            "--db",
            &format!("sqlite:{gw}/satchel.db"),
            "--json",
        ],
        &t,
    );
    let decisions: Vec<(String, String)> = list
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["kind"].as_str().unwrap().to_owned(),
                v["decision"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for want in [
        ("enrollment", "refused"),
        ("enrollment", "enrolled"),
        ("attestation", "trusted"),
        ("attestation", "not-trusted"),
    ] {
        assert!(
            decisions.contains(&(want.0.to_owned(), want.1.to_owned())),
            "{want:?} not in {decisions:?}"
        );
    }
}

#[test]
fn serve_takes_a_config_file_below_env_and_admin_certs_open_admin_routes() {
    let dir = tempfile::tempdir().unwrap();
    let (file_port, env_port, proxy_port) = (free_port(), free_port(), free_port());
    std::fs::write(
        dir.path().join("policy.csv"),
        "p, group:all, url, https://*.example.org/*, GET, allow\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("gateway.toml"),
        format!(
            "# paths are relative to this file\n\
             data = \"gw\"\n\
             listen = \"127.0.0.1:{file_port}\"\n\
             proxy-listen = \"127.0.0.1:{proxy_port}\"\n\
             policy = \"policy.csv\"\n\
             cert-lifetime = \"30m\"\n"
        ),
    )
    .unwrap();
    // A typo in the file is a clear error.
    std::fs::write(dir.path().join("typo.toml"), "lisen = \"127.0.0.1:1\"\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["gateway", "serve", "--config"])
        .arg(dir.path().join("typo.toml"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("lisen"), "{err}");

    // The environment beats the file.
    let child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["gateway", "serve", "--config"])
        .arg(dir.path().join("gateway.toml"))
        .env("SATCHEL_LISTEN", format!("127.0.0.1:{env_port}"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _served = Served(child);
    let gw = dir.path().join("gw");
    wait_up(&gw.join("ca.crt"), env_port);
    assert!(std::net::TcpStream::connect(("127.0.0.1", file_port)).is_err());

    // An admin certificate: key 0600, opens the admin routes, not the proxy.
    let out = ok(
        &[
            "gateway",
            "admin-cert",
            "--data",
            gw.to_str().unwrap(),
            "--name",
            "alice",
            "--out-dir",
            dir.path().join("alice").to_str().unwrap(),
        ],
        "",
    );
    assert!(out.contains("alice.crt"), "{out}");
    let key = dir.path().join("alice/alice.key");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let curl = |args: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--cacert"])
            .arg(gw.join("ca.crt"))
            .arg("--cert")
            .arg(dir.path().join("alice/alice.crt"))
            .arg("--key")
            .arg(&key)
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let policy = curl(&[&format!("https://127.0.0.1:{env_port}/v1/admin/policy")]);
    assert!(
        policy.contains("*.example.org") && policy.ends_with("\n200"),
        "{policy}"
    );
    let devices = curl(&[&format!("https://127.0.0.1:{env_port}/v1/admin/devices")]);
    assert!(devices.starts_with("{\"devices\":[]}"), "{devices}");
    let through = curl(&[
        "-x",
        &format!("https://127.0.0.1:{proxy_port}"),
        "--proxy-cacert",
        gw.join("ca.crt").to_str().unwrap(),
        "--proxy-cert",
        dir.path().join("alice/alice.crt").to_str().unwrap(),
        "--proxy-key",
        key.to_str().unwrap(),
        "http://www.example.org/",
    ]);
    assert!(through.ends_with("\n403"), "{through}");
    assert!(through.contains("not a device"), "{through}");
    // Revoked from the command line: refused from the next request on.
    let out = ok(
        &[
            "gateway",
            "revoke-admin",
            "--data",
            gw.to_str().unwrap(),
            "--name",
            "alice",
        ],
        "",
    );
    assert!(
        out.contains("revoked the admin certificates of alice"),
        "{out}"
    );
    let devices = curl(&[&format!("https://127.0.0.1:{env_port}/v1/admin/devices")]);
    assert!(
        devices.ends_with("\n403") && devices.contains("revoked"),
        "{devices}"
    );
}

#[test]
fn a_tpm_whose_ek_certificate_another_ca_signed_cannot_enroll() {
    // The gateway trusts the CA of TPM A; the device holds TPM B, whose EK
    // certificate a CA of its own signed (as a foreign or counterfeit TPM).
    let a = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let b = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gw");
    let port = free_port();
    let _served = Served(
        Command::new(env!("CARGO_BIN_EXE_satchel"))
            .args(["gateway", "serve", "--data", gw.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--ek-ca", a.ek_ca_dir().to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ca = gw.join("ca.crt");
    wait_up(&ca, port);
    let token = ok(
        &[
            "gateway",
            "enroll-token",
            "--data",
            gw.to_str().unwrap(),
            "--device-id",
            "laptop-17",
        ],
        &b.tcti(),
    );
    let cdir = dir.path().join("client");
    let enroll = |tcti: &str| {
        satchel(
            &[
                "client",
                "enroll",
                "--gateway",
                &format!("https://127.0.0.1:{port}"),
                "--ca",
                ca.to_str().unwrap(),
                "--data",
                cdir.to_str().unwrap(),
                "--device-id",
                "laptop-17",
                "--token",
                token.trim(),
            ],
            tcti,
        )
    };
    let o = enroll(&b.tcti());
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("EK"), "{err}");
    assert!(!cdir.join("device.json").exists());
    // The refusal did not spend the token: the genuine TPM still enrolls.
    let o = enroll(&a.tcti());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn server_names_reach_the_certificate_and_a_new_one_keeps_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gw");
    let ca = gw.join("ca.crt");
    let health = |port: u16, name: &str| {
        Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "5",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg("--cacert")
            .arg(&ca)
            .arg("--resolve")
            .arg(format!("{name}:{port}:127.0.0.1"))
            .arg(format!("https://{name}:{port}/v1/health"))
            .output()
            .unwrap()
    };
    let serve = |names: &[&str]| {
        let port = free_port();
        let mut c = Command::new(env!("CARGO_BIN_EXE_satchel"));
        c.args(["gateway", "serve", "--data", gw.to_str().unwrap()])
            .args(["--listen", &format!("127.0.0.1:{port}")]);
        for n in names {
            c.args(["--server-name", n]);
        }
        let s = Served(c.stderr(Stdio::null()).spawn().unwrap());
        wait_up(&ca, port);
        (s, port)
    };
    let (s, port) = serve(&["gw.school.example"]);
    assert_eq!(
        String::from_utf8_lossy(&health(port, "gw.school.example").stdout),
        "200"
    );
    let o = health(port, "other.school.example");
    assert_ne!(
        o.status.code(),
        Some(0),
        "a name not in the certificate was accepted"
    );
    drop(s);
    // The same name spelled otherwise: the certificate is kept.
    let crt_before = std::fs::read(gw.join("server.crt")).unwrap();
    let (s, _) = serve(&["GW.School.Example."]);
    drop(s);
    assert_eq!(std::fs::read(gw.join("server.crt")).unwrap(), crt_before);
    // A key that does not match the certificate (a crash between replacing
    // the two): a new pair at start.
    std::fs::write(
        gw.join("server.key"),
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let (s, port) = serve(&[]);
    assert_eq!(
        String::from_utf8_lossy(&health(port, "gw.school.example").stdout),
        "200"
    );
    assert_ne!(std::fs::read(gw.join("server.crt")).unwrap(), crt_before);
    drop(s);
    let ca_before = std::fs::read(&ca).unwrap();
    let (_s, port) = serve(&["other.school.example"]);
    assert_eq!(
        String::from_utf8_lossy(&health(port, "other.school.example").stdout),
        "200"
    );
    assert_eq!(
        String::from_utf8_lossy(&health(port, "gw.school.example").stdout),
        "200"
    );
    assert_eq!(std::fs::read(&ca).unwrap(), ca_before, "the CA changed");
}
