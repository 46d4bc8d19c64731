//! What the binary's integration tests share: free ports, a gateway process
//! killed on drop, and a device certificate for an enrolled device.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process (a gateway), killed on drop.
pub(crate) struct Served(pub(crate) Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Until something accepts connections on `port`.
pub(crate) fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `satchel gateway serve --data GW --listen 127.0.0.1:PORT EXTRA...`, up.
pub(crate) fn serve(gw: &Path, port: u16, extra: &[&str]) -> Served {
    let child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "gateway",
            "serve",
            "--data",
            gw.to_str().unwrap(),
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child);
    wait_port(port);
    served
}

/// Enroll `id` with `groups` in the gateway's database (unless it is) the
/// way a finished enrollment does, and put a certificate for it from the
/// device CA in `cdir` (enrollment and attestation against a swtpm are in
/// gateway_cli.rs and agent.rs).
pub(crate) fn device_cert(gw: &Path, cdir: &Path, id: &str, groups: &[&str]) {
    let db = format!("sqlite:{}", gw.join("satchel.db").display());
    device_cert_in(gw, &db, cdir, id, groups);
}

/// [`device_cert`] for a gateway whose database is `db` (PostgreSQL, say).
pub(crate) fn device_cert_in(gw: &Path, db: &str, cdir: &Path, id: &str, groups: &[&str]) {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(db).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        if db.device(id).await.unwrap().is_none() {
            let t = db
                .make_token(id, &groups, Duration::from_secs(60))
                .await
                .unwrap();
            let d = gateway::state::Device {
                device_id: id.to_owned(),
                groups,
                ak_pem: String::new(),
                enrolled_ms: audit::batch::now_ms(),
                revoked_ms: None,
            };
            assert!(db.enroll(&t, &d).await.unwrap());
        }
    });
    let pki = gateway::Pki::init(gw, &[]).unwrap();
    let kp = rcgen::KeyPair::generate().unwrap();
    let pem = pki
        .issue_device_cert(&gateway::DeviceCertRequest {
            device_id: id,
            public_key: &kp,
            lifetime: Duration::from_secs(3600),
            attestation_id: "test",
            attested_at_ms: audit::batch::now_ms(),
        })
        .unwrap();
    std::fs::create_dir_all(cdir).unwrap();
    std::fs::write(cdir.join("device.crt"), pem).unwrap();
    std::fs::write(cdir.join("device.key"), kp.serialize_pem()).unwrap();
}

/// Run `statements` against the database at `db_url` (as an attacker with
/// write access to it would); the rows each changed.
pub(crate) fn sql(db_url: &str, statements: &[&str]) -> Vec<u64> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (pool, _) = persist::db::connect(db_url).await.unwrap();
            let mut changed = Vec::new();
            for s in statements {
                changed.push(sqlx::query(s).execute(&pool).await.unwrap().rows_affected());
            }
            changed
        })
}

/// Whether this test can run: as root, with `tool` installed (CI). When it
/// cannot, it says why it skipped; under `CI=true` it fails instead.
#[allow(dead_code)]
pub(crate) fn root_with(tool: &str) -> bool {
    let usable = rustix::process::geteuid().is_root()
        && (tool.is_empty()
            || std::process::Command::new(tool)
                .arg("--version")
                .output()
                .is_ok());
    if !usable {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run this test as root{} (scripts/setup.sh installs what it needs)",
            if tool.is_empty() {
                String::new()
            } else {
                format!(" with {tool}")
            }
        );
        eprintln!(
            "SKIPPED: needs root{}",
            if tool.is_empty() {
                String::new()
            } else {
                format!(" and {tool}")
            }
        );
    }
    usable
}

/// Deterministic noise, so chunking behaves as on real files.
pub(crate) fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// `diff -r --no-dereference A B` finds nothing.
pub(crate) fn same_tree(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}
