//! `satchel gateway serve` as an operator starts it: it makes its data
//! directory, serves HTTPS that curl reaches with the pinned CA, refuses
//! device routes without a certificate, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

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
