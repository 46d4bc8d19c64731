//! Push-OS sync as an admin and two devices run it: `satchel image build`,
//! `satchel gateway serve`, and `satchel client sync pull|push` over mTLS
//! with curl-free real TLS. Pull fetches only what is missing; a second
//! pull fetches nothing; user changes flow back; a file changed on two
//! machines of one device keeps both; a change to base-os is refused,
//! reported, audited and undone by the next pull; a pull killed mid-way
//! resumes without fetching verified chunks again; the rate cap holds; a
//! corrupted chunk on the gateway is refused by the client; a device without
//! a subscription gets nothing.
//!
//! The device certificate is issued directly from the gateway's device CA
//! for an enrolled device (enrollment and attestation are tested against a
//! swtpm in `gateway_cli.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, noise, same_tree, Served};

fn satchel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let o = satchel(args);
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

struct World {
    dir: tempfile::TempDir,
    gw: PathBuf,
    url: String,
    _served: Served,
}

impl World {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    /// Build a new version of `layer` of `image` from the directory `rel`.
    fn build(&self, image: &str, layer: &str, rel: &str) -> String {
        let gw = self.gw.to_string_lossy().into_owned();
        let layer = format!("{layer}={}", self.s(rel));
        ok(&[
            "image", "build", "--data", &gw, "--image", image, "--layer", &layer,
        ])
    }

    /// A device directory with a certificate for `device` (enrolled now).
    fn device(&self, cdir: &str, device: &str) {
        common::device_cert(&self.gw, &self.p(cdir), device, &["group:class-7a"]);
    }

    fn sync(&self, verb: &str, cdir: &str, root: &str, extra: &[&str]) -> std::process::Output {
        let root_flag = if verb == "pull" { "--into" } else { "--from" };
        let mut args = vec![
            "client".to_owned(),
            "sync".to_owned(),
            verb.to_owned(),
            "--gateway".to_owned(),
            self.url.clone(),
            "--ca".to_owned(),
            format!("{}/ca.crt", self.gw.display()),
            "--data".to_owned(),
            self.s(cdir),
            "--image".to_owned(),
            "classroom".to_owned(),
            root_flag.to_owned(),
            self.s(root),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        Command::new(env!("CARGO_BIN_EXE_satchel"))
            .args(&args)
            .output()
            .unwrap()
    }

    /// A pull into `root` capped at `rate`, running.
    fn capped_pull(&self, cdir: &str, root: &str, rate: &str) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_satchel"))
            .args(["client", "sync", "pull", "--gateway", &self.url, "--ca"])
            .arg(self.gw.join("ca.crt"))
            .arg("--data")
            .arg(self.p(cdir))
            .args(["--image", "classroom", "--into"])
            .arg(self.p(root))
            .args(["--max-rate", rate])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn pull_stats(&self, cdir: &str, root: &str, extra: &[&str]) -> serde_json::Value {
        let mut e = vec!["--stats-json"];
        e.extend_from_slice(extra);
        let o = self.sync("pull", cdir, root, &e);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gw");
    // The image: a base-os with some megabytes and a user-data skeleton.
    let base = dir.path().join("src/base-os");
    std::fs::create_dir_all(base.join("usr/bin")).unwrap();
    std::fs::create_dir_all(base.join("etc")).unwrap();
    std::fs::write(base.join("usr/bin/tool"), noise(1_500_000, 1)).unwrap();
    std::fs::write(base.join("usr/bin/other"), noise(400_000, 2)).unwrap();
    std::fs::write(base.join("etc/hostname"), "classroom\n").unwrap();
    std::os::unix::fs::symlink("../usr/bin/tool", base.join("etc/tool-link")).unwrap();
    let user = dir.path().join("src/user-data");
    std::fs::create_dir_all(user.join("Documents")).unwrap();
    std::fs::write(user.join("Documents/notes.txt"), "first notes\n").unwrap();
    let out = ok(&[
        "image",
        "build",
        "--data",
        gw.to_str().unwrap(),
        "--image",
        "classroom",
        "--layer",
        &format!("base-os={}", base.display()),
        "--layer",
        &format!("user-data={}", user.display()),
    ]);
    assert!(out.contains("classroom/base-os: version 1"), "{out}");
    assert!(out.contains("dedup"), "{out}");
    std::fs::write(
        dir.path().join("policy.csv"),
        "g, group:class-7a, group:school\np, group:school, image, classroom, subscribe, allow\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "gateway",
            "serve",
            "--data",
            gw.to_str().unwrap(),
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--policy")
        .arg(dir.path().join("policy.csv"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let served = Served(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the gateway did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    World {
        dir,
        gw,
        url: format!("https://127.0.0.1:{port}"),
        _served: served,
    }
}

#[test]
fn pull_push_conflicts_violations_and_audit() {
    let w = world();
    w.device("c1", "laptop-1");
    // First pull: everything; the tree equals the source.
    let st = w.pull_stats("c1", "root1", &[]);
    assert!(st["chunks_fetched"].as_u64().unwrap() > 50, "{st}");
    assert_eq!(st["files_changed"], 5, "{st}");
    assert!(st["bytes_received"].as_u64().unwrap() > 1_000_000);
    same_tree(&w.p("src/base-os"), &w.p("root1/base-os"));
    same_tree(&w.p("src/user-data"), &w.p("root1/user-data"));
    // Second pull: nothing.
    let st = w.pull_stats("c1", "root1", &[]);
    assert_eq!(
        (st["chunks_fetched"].as_u64(), st["files_changed"].as_u64()),
        (Some(0), Some(0)),
        "{st}"
    );

    // A user change goes up.
    std::fs::write(
        w.p("root1/user-data/Documents/notes.txt"),
        "notes from machine 1\n",
    )
    .unwrap();
    std::fs::write(w.p("root1/user-data/Documents/new.txt"), noise(100_000, 9)).unwrap();
    let o = w.sync("push", "c1", "root1", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["layers"]["user-data"], 2, "{r}");
    assert!(r["chunks_sent"].as_u64().unwrap() >= 2, "{r}");

    // A second machine of the same device gets it.
    w.device("c2", "laptop-1");
    w.pull_stats("c2", "root2", &[]);
    same_tree(&w.p("root1/user-data"), &w.p("root2/user-data"));

    // Both change notes.txt, differently: both versions are kept.
    std::fs::write(
        w.p("root2/user-data/Documents/notes.txt"),
        "machine 2 wins?\n",
    )
    .unwrap();
    assert!(w.sync("push", "c2", "root2", &[]).status.success());
    std::fs::write(
        w.p("root1/user-data/Documents/notes.txt"),
        "machine 1 again\n",
    )
    .unwrap();
    // A pull before the push leaves the unpushed work alone, and says so.
    let o = w.sync("pull", "c1", "root1", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("user-data: local changes not pushed yet"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(w.p("root1/user-data/Documents/notes.txt")).unwrap(),
        "machine 1 again\n",
        "a pull dropped unpushed work"
    );
    let o = w.sync("push", "c1", "root1", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let conflict = &r["conflicts"]["user-data"][0];
    assert_eq!(conflict["path"], "Documents/notes.txt", "{r}");
    let kept = conflict["kept_as"].as_str().unwrap().to_owned();
    assert!(
        kept.starts_with("Documents/notes.txt (conflict laptop-1 20"),
        "{kept}"
    );
    assert_eq!(
        std::fs::read_to_string(w.p("root1/user-data/Documents/notes.txt")).unwrap(),
        "machine 2 wins?\n"
    );
    assert_eq!(
        std::fs::read_to_string(w.p("root1/user-data").join(&kept)).unwrap(),
        "machine 1 again\n"
    );

    // A change to base-os: refused, reported, audited; the next pull restores it.
    std::fs::write(w.p("root1/base-os/etc/hostname"), "pwned\n").unwrap();
    std::fs::write(w.p("root1/base-os/etc/dropped"), "backdoor\n").unwrap();
    let o = w.sync("push", "c1", "root1", &[]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("base-os") && err.contains("etc/hostname") && err.contains("etc/dropped"),
        "{err}"
    );
    // `status` sees the local changes (exit 1); the next pull restores them.
    let status = |cdir: &str, root: &str| {
        satchel(&[
            "client",
            "sync",
            "status",
            "--data",
            &w.s(cdir),
            "--image",
            "classroom",
            "--root",
            &w.s(root),
            "--json",
        ])
    };
    let o = status("c1", "root1");
    assert_eq!(o.status.code(), Some(1));
    let st: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        st["base-os"]["changed"],
        serde_json::json!(["etc/hostname"]),
        "{st}"
    );
    assert_eq!(
        st["base-os"]["added"],
        serde_json::json!(["etc/dropped"]),
        "{st}"
    );
    let st = w.pull_stats("c1", "root1", &[]);
    assert_eq!(st["chunks_fetched"], 0, "{st}");
    same_tree(&w.p("src/base-os"), &w.p("root1/base-os"));
    assert_eq!(status("c1", "root1").status.code(), Some(0));

    // The client's layer stages equal the gateway's while base-os is as
    // pushed, and differ (naming the layer) when it is not.
    let stages = |out: &str| {
        ok(&[
            "client",
            "sync",
            "stages",
            "--data",
            &w.s("c1"),
            "--image",
            "classroom",
            "--root",
            &w.s("root1"),
            "--out",
            &w.s(out),
        ]);
        std::fs::read_to_string(w.p(out)).unwrap()
    };
    let gateway_stages =
        std::fs::read_to_string(w.gw.join("images/classroom.stages.toml")).unwrap();
    assert_eq!(stages("clean.toml"), gateway_stages);
    assert!(
        gateway_stages.contains("name = \"layer-base-os\""),
        "{gateway_stages}"
    );
    std::fs::write(w.p("root1/base-os/etc/hostname"), "pwned again\n").unwrap();
    let dirty = stages("dirty.toml");
    assert_ne!(dirty, gateway_stages);
    assert!(
        dirty.contains("satchel.layer base-os sha256:local-"),
        "{dirty}"
    );
    w.pull_stats("c1", "root1", &[]);
    assert_eq!(stages("again.toml"), gateway_stages);

    // `revert` drops local user changes without the network.
    let before = std::fs::read(w.p("root1/user-data/Documents/notes.txt")).unwrap();
    std::fs::write(w.p("root1/user-data/Documents/notes.txt"), "scribbles\n").unwrap();
    std::fs::remove_file(w.p("root1/user-data/Documents/new.txt")).unwrap();
    ok(&[
        "client",
        "sync",
        "revert",
        "--data",
        &w.s("c1"),
        "--image",
        "classroom",
        "--root",
        &w.s("root1"),
        "--layer",
        "user-data",
    ]);
    assert_eq!(
        std::fs::read(w.p("root1/user-data/Documents/notes.txt")).unwrap(),
        before
    );
    assert!(w.p("root1/user-data/Documents/new.txt").exists());
    assert_eq!(status("c1", "root1").status.code(), Some(0));

    // The audit trail has every step.
    let list = ok(&[
        "audit",
        "list",
        "--db",
        &format!("sqlite:{}/satchel.db", w.gw.display()),
        "--kind",
        "sync",
        "--json",
    ]);
    let decisions: Vec<String> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["decision"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for want in ["pull", "checkin", "conflict", "violation"] {
        assert!(
            decisions.iter().any(|d| d == want),
            "{want} missing: {decisions:?}"
        );
    }
}

#[test]
fn an_interrupted_pull_resumes_and_the_rate_cap_holds() {
    let w = world();
    w.device("c1", "laptop-1");
    // Killed mid-way under a slow cap.
    let mut child = w.capped_pull("c1", "root", "400K");
    let chunks = || {
        sync::ChunkStore::open_packed(w.p("c1/chunks"))
            .map(|s| s.count().unwrap_or(0))
            .unwrap_or(0)
    };
    // Killed once some chunks are stored (how soon that is depends on the
    // machine's load; reading the store meanwhile changes nothing in it).
    let deadline = Instant::now() + Duration::from_secs(60);
    while chunks() == 0 {
        assert!(Instant::now() < deadline, "the capped pull stored no chunk");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the capped pull ended early"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the capped pull ended before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let kept = chunks();
    assert!(kept > 0, "nothing was kept from the first pull");
    assert!(!w.p("root/base-os").exists(), "half a layer was applied");
    // The next pull asks for none of the kept chunks again.
    let st = w.pull_stats("c1", "root", &[]);
    let total = chunks();
    assert_eq!(st["chunks_fetched"].as_u64().unwrap() + kept, total, "{st}");
    same_tree(&w.p("src/base-os"), &w.p("root/base-os"));

    // The cap: a fresh device pulls everything at 512 KiB/s at most.
    w.device("c3", "laptop-1");
    let st = w.pull_stats("c3", "root3", &["--max-rate", "512K"]);
    let rate = st["bytes_received"].as_f64().unwrap() / st["seconds"].as_f64().unwrap();
    assert!(rate <= 512.0 * 1024.0, "{rate} bytes/s over the cap: {st}");
    assert!(st["seconds"].as_f64().unwrap() > 1.0, "{st}");
}

#[test]
fn a_corrupt_chunk_or_a_missing_subscription_gets_nothing_applied() {
    let w = world();
    w.device("c1", "laptop-1");
    // Corrupt one stored chunk on the gateway (a bit flip on disk).
    let victim = walkdir::WalkDir::new(w.gw.join("chunks"))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x10;
    std::fs::write(&victim, bytes).unwrap();
    let o = w.sync("pull", "c1", "root", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // Named as what it is (content that does not check out), and not
    // asked for again as if the connection had dropped.
    assert!(err.contains("the gateway sent chunk"), "{err}");
    assert!(!err.contains("talking to"), "{err}");
    assert!(!err.contains("asking again"), "{err}");
    // The layer holding the bad chunk was not applied.
    let applied: Vec<_> = ["base-os", "user-data"]
        .iter()
        .filter(|l| w.p("root").join(l).exists())
        .collect();
    assert!(applied.len() < 2, "{applied:?}");

    // A device whose groups do not subscribe: 403, nothing fetched.
    let db = format!("sqlite:{}/satchel.db", w.gw.display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (pool, _) = persist::db::connect(&db).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        let t = db
            .make_token(
                "guest-1",
                &["group:guests".to_owned()],
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        let d = gateway::state::Device {
            device_id: "guest-1".to_owned(),
            groups: vec!["group:guests".to_owned()],
            ak_pem: String::new(),
            enrolled_ms: audit::batch::now_ms(),
            revoked_ms: None,
        };
        assert!(db.enroll(&t, &d).await.unwrap());
    });
    w.device("g1", "guest-1");
    let o = w.sync("pull", "g1", "groot", &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("403"));
    assert!(!w.p("groot").exists());
}

#[test]
fn an_update_travels_as_deltas_and_rebuilds_the_exact_files() {
    let w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    // v2: a "security update" that patches bytes all over a binary.
    let mut tool = std::fs::read(w.p("src/base-os/usr/bin/tool")).unwrap();
    for i in (0..tool.len()).step_by(100_000) {
        tool[i] ^= 0x5a;
    }
    std::fs::write(w.p("src/base-os/usr/bin/tool"), &tool).unwrap();
    let out = ok(&[
        "image",
        "build",
        "--data",
        w.gw.to_str().unwrap(),
        "--image",
        "classroom",
        "--layer",
        &format!("base-os={}", w.s("src/base-os")),
        "--json",
    ]);
    let built: serde_json::Value = serde_json::from_str(&out).unwrap();
    let new_bytes = built["layers"][0]["stats"]["new_bytes"].as_u64().unwrap();
    assert!(new_bytes > 200_000, "{built}");
    let st = w.pull_stats("c1", "root", &[]);
    assert_eq!(st["delta_files"], 1, "{st}");
    assert_eq!(st["files_changed"], 1, "{st}");
    // The changed chunks would be about new_bytes; the delta is far less.
    assert!(
        st["bytes_received"].as_u64().unwrap() < new_bytes / 10,
        "{st} vs {new_bytes} new bytes"
    );
    same_tree(&w.p("src/base-os"), &w.p("root/base-os"));
}

#[test]
fn an_offline_bundle_checks_in_once_and_a_tampered_one_is_refused() {
    let w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root1", &[]);
    std::fs::write(
        w.p("root1/user-data/Documents/offline.txt"),
        noise(50_000, 4),
    )
    .unwrap();
    std::fs::write(w.p("root1/base-os/etc/hostname"), "offline edit\n").unwrap();
    let out = ok(&[
        "client",
        "sync",
        "export-bundle",
        "--data",
        &w.s("c1"),
        "--image",
        "classroom",
        "--root",
        &w.s("root1"),
        "--out",
        &w.s("usb.bundle"),
    ]);
    assert!(out.contains("2 changed layer(s)"), "{out}");
    let gw = w.gw.to_str().unwrap().to_owned();
    // A flipped byte anywhere in the signed part: refused, nothing stored.
    let bytes = std::fs::read(w.p("usb.bundle")).unwrap();
    for at in [30, bytes.len() / 2, bytes.len() - 80] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        std::fs::write(w.p("bad.bundle"), &bad).unwrap();
        let o = satchel(&[
            "gateway",
            "import-bundle",
            "--data",
            &gw,
            &w.s("bad.bundle"),
        ]);
        assert!(!o.status.success(), "a bundle flipped at {at} was accepted");
    }
    // The real one: user-data checked in, base-os reported as a violation.
    let out = ok(&[
        "gateway",
        "import-bundle",
        "--data",
        &gw,
        &w.s("usb.bundle"),
    ]);
    assert!(out.contains("user-data: version 2"), "{out}");
    assert!(
        out.contains("base-os") && out.contains("1 violation(s)"),
        "{out}"
    );
    // Imported twice: nothing new.
    let again = ok(&[
        "gateway",
        "import-bundle",
        "--data",
        &gw,
        &w.s("usb.bundle"),
    ]);
    assert!(again.contains("user-data: version 2"), "{again}");
    // Another machine of the device sees the file.
    w.device("c2", "laptop-1");
    w.pull_stats("c2", "root2", &[]);
    assert_eq!(
        std::fs::read(w.p("root2/user-data/Documents/offline.txt")).unwrap(),
        noise(50_000, 4)
    );
    // A revoked device's bundle is refused.
    ok(&[
        "gateway",
        "revoke",
        "--data",
        &gw,
        "--device-id",
        "laptop-1",
    ]);
    let o = satchel(&[
        "gateway",
        "import-bundle",
        "--data",
        &gw,
        &w.s("usb.bundle"),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("revoked"));
}

/// A device pins the manifest key at its first pull: manifests signed by any
/// other key (another gateway, a replaced key) are refused.
#[test]
fn manifests_signed_by_another_key_are_refused() {
    let a = world();
    a.device("c1", "laptop-1");
    a.pull_stats("c1", "root", &[]);
    // The same device directory, now talking to another gateway with the
    // same image name but its own manifest key.
    let b = world();
    b.device("c1", "laptop-1");
    let copy = Command::new("cp")
        .arg("-r")
        .arg(a.p("c1/sync"))
        .arg(b.p("c1/sync"))
        .status()
        .unwrap();
    assert!(copy.success());
    let o = b.sync("pull", "c1", "root", &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pinned"), "{err}");
    assert!(!b.p("root").exists(), "something was applied");
}

/// Regression (issue 22, item 2): a validly signed but older layer version
/// offered by the gateway is refused as a rollback, and the tree keeps the
/// newer version.
#[test]
fn an_older_version_offered_is_refused_as_a_rollback() {
    let w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    std::fs::write(w.p("src/base-os/etc/hostname"), "classroom-v2\n").unwrap();
    w.build("classroom", "base-os", "src/base-os");
    w.pull_stats("c1", "root", &[]);
    let hostname = || std::fs::read_to_string(w.p("root/base-os/etc/hostname")).unwrap();
    assert_eq!(hostname(), "classroom-v2\n");
    // Behind the gateway's back its newest base-os goes: it now offers v1.
    let db = format!("sqlite:{}", w.gw.join("satchel.db").display());
    let gone = common::sql(
        &db,
        &["DELETE FROM gateway_layers WHERE image = 'classroom' AND layer = 'base-os' AND version = 2"],
    );
    assert_eq!(gone, [1]);
    let o = w.sync("pull", "c1", "root", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("classroom/base-os version 1, older than version 2")
            && err.contains("rollback"),
        "{err}"
    );
    assert_eq!(hostname(), "classroom-v2\n", "the rollback was applied");
}

/// Issue 21: a user layer never carries setuid, setgid or sticky bits: a
/// device that sets them on its own files and pushes gets them stripped at
/// check-in (and told so), and no pull, fresh or not, and no revert, writes
/// them back.
#[test]
fn user_layers_never_carry_setuid_or_setgid() {
    use std::os::unix::fs::PermissionsExt as _;
    let w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    let tool = w.p("root/user-data/Documents/tool");
    std::fs::write(&tool, b"#!/bin/sh\nid\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let shared = w.p("root/user-data/shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o3775)).unwrap();
    let o = w.sync("push", "c1", "root", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let stripped = report["stripped"]["user-data"].to_string();
    assert!(
        stripped.contains("Documents/tool") && stripped.contains("shared"),
        "{report}"
    );
    let mode = |p: &std::path::Path| {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}; push said {report}", p.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    // The pushing device now holds the gateway's version: no special bits.
    assert_eq!(mode(&tool), 0o755);
    assert_eq!(mode(&shared), 0o775);
    // A fresh pull of this device's layers into a new root: none either.
    w.pull_stats("c1", "root2", &[]);
    assert_eq!(mode(&w.p("root2/user-data/Documents/tool")), 0o755);
    assert_eq!(mode(&w.p("root2/user-data/shared")), 0o775);
    // Set again and revert: the last common version comes back without them.
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o6755)).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "client",
            "sync",
            "revert",
            "--data",
            &w.s("c1"),
            "--image",
            "classroom",
        ])
        .args(["--root", &w.s("root"), "--layer", "user-data"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(mode(&tool), 0o755);
}

/// Regression (issue 22, item 1): a device cannot make another image's
/// chunk its own by checking it in, cannot learn whether the gateway holds
/// a chunk it may not read, and cannot have a delta made against one.
#[test]
fn a_device_cannot_claim_or_probe_chunks_of_images_it_does_not_get() {
    let w = world();
    // A second image the device does not subscribe to, holding a secret.
    std::fs::create_dir_all(w.p("secret/user-data")).unwrap();
    let secret = b"the answers to tomorrow's exam\n";
    std::fs::write(w.p("secret/user-data/answers.txt"), secret).unwrap();
    w.build("staffroom", "user-data", "secret/user-data");
    let id = sync::ChunkId::of(secret);
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.p("c1/sync/classroom.json")).unwrap()).unwrap();
    let base = state["layers"]["user-data"]["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let gw = device::GatewayConfig {
        url: w.url.clone(),
        ca: w.gw.join("ca.crt"),
        data: w.p("c1"),
    };
    let c = gw.device_client().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ask = |action: &str, body: serde_json::Value| {
        rt.block_on(c.post(&format!("/v1/sync/images/{action}"), &body))
            .unwrap()
    };
    // Not subscribed: the chunk is not served through its own image.
    assert_eq!(
        ask("staffroom/chunks", serde_json::json!({"ids": [id]})).0,
        403
    );
    // The probe: "missing", though the gateway has it.
    let (s, b) = ask("classroom/missing", serde_json::json!({"ids": [id]}));
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["missing"], serde_json::json!([id]), "{b}");
    // The claim: a check-in naming the chunk is refused ...
    let loot = serde_json::json!({"layer": "user-data", "base_digest": base, "entries": [
        {"path": "loot", "mode": 420, "type": "file", "size": secret.len(), "chunks": [id]}
    ]});
    let (s, b) = ask("classroom/checkin", loot);
    assert_eq!(s, 403, "{b}");
    assert!(
        b["detail"].as_str().unwrap().contains(&id.to_string()),
        "{b}"
    );
    // ... so the chunk is never served through the device's own image.
    assert_eq!(
        ask("classroom/chunks", serde_json::json!({"ids": [id]})).0,
        403
    );
    // A delta against the secret chunk is refused too.
    let delta = serde_json::json!({"files": [{"from": [id], "to": [], "missing": []}]});
    let (s, b) = ask("classroom/deltas", delta);
    assert_eq!(s, 403, "{b}");
    // Honest pushes still work: a new file of the device's own is uploaded
    // and checked in.
    std::fs::write(w.p("root/user-data/Documents/mine.txt"), b"my own notes\n").unwrap();
    let o = w.sync("push", "c1", "root", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The attacker's review: one deltas request could name the same chunk
/// thousands of times as "missing" (or thousands of chunks over many
/// files), and the gateway gathered every copy in memory before answering.
/// Each file's missing chunks must be among its new ones, and a request
/// names at most `MAX_DELTA_TOTAL` chunk ids in all.
#[test]
fn a_deltas_request_cannot_make_the_gateway_gather_unbounded_chunks() {
    let w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    let ids: Vec<sync::ChunkId> = walkdir::WalkDir::new(w.gw.join("chunks"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    let id = ids[0];
    let gw = device::GatewayConfig {
        url: w.url.clone(),
        ca: w.gw.join("ca.crt"),
        data: w.p("c1"),
    };
    let c = gw.device_client().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ask = |body: serde_json::Value| {
        rt.block_on(c.post("/v1/sync/images/classroom/deltas", &body))
            .unwrap()
    };
    // One chunk, asked for 3,000 times.
    let many = vec![id; 3000];
    let (s, b) = ask(serde_json::json!({"files": [{"from": [id], "to": [id], "missing": many}]}));
    assert_eq!(s, 400, "{b}");
    // A missing chunk that is not among the file's new ones.
    let (s, b) =
        ask(serde_json::json!({"files": [{"from": [id], "to": [id], "missing": [ids[1]]}]}));
    assert_eq!(s, 400, "{b}");
    // Within each file's bound, but three files of 2,000 chunks each.
    let big: Vec<sync::ChunkId> = (0..2000).map(|i| ids[i % ids.len()]).collect();
    let file = serde_json::json!({"from": [id], "to": big, "missing": [id]});
    let (s, b) = ask(serde_json::json!({ "files": vec![file; 3] }));
    assert_eq!(s, 400, "{b}");
    // An honest-sized request still gets its answer.
    let (s, b) =
        ask(serde_json::json!({"files": [{"from": [ids[1]], "to": [id], "missing": [id]}]}));
    assert_eq!(s, 200, "{b}");
}

#[test]
fn the_image_build_puts_the_proxy_ca_into_the_base_os_trust_store() {
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gw");
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(root.join("etc/ssl/certs")).unwrap();
    std::fs::write(
        root.join("etc/ssl/certs/ca-certificates.crt"),
        "# system roots\n",
    )
    .unwrap();
    let build = || {
        ok(&[
            "image",
            "build",
            "--data",
            gw.to_str().unwrap(),
            "--image",
            "classroom",
            "--layer",
            &format!("base-os={}", root.display()),
            "--trust-proxy-ca",
        ])
    };
    build();
    let ca = std::fs::read_to_string(gw.join("proxy-ca.crt")).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    let own = root.join("usr/local/share/ca-certificates/satchel-proxy-ca.crt");
    assert_eq!(std::fs::read_to_string(own).unwrap(), ca);
    let bundle = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(
        bundle.starts_with("# system roots\n") && bundle.ends_with(&ca),
        "{bundle}"
    );
    // A second build adds nothing twice, and the layer is unchanged.
    let again = build();
    let bundle2 = std::fs::read_to_string(root.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert_eq!(bundle, bundle2);
    assert!(again.contains("unchanged"), "{again}");
}

#[test]
fn gc_removes_only_old_chunks_no_version_references() {
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    let db = format!("sqlite:{}", w.gw.join("satchel.db").display());
    // An image whose versions are then dropped from the table (as a failed
    // build would leave its chunks): its chunks are referenced by nothing.
    std::fs::create_dir_all(w.p("src/scratch")).unwrap();
    std::fs::write(w.p("src/scratch/junk"), noise(300_000, 77)).unwrap();
    w.build("scratch", "base-os", "src/scratch");
    common::sql(&db, &["DELETE FROM gateway_layers WHERE image = 'scratch'"]);
    let chunk_files = || -> Vec<std::path::PathBuf> {
        let mut v = Vec::new();
        for d in std::fs::read_dir(w.gw.join("chunks")).unwrap().flatten() {
            if d.path().is_dir() {
                v.extend(
                    std::fs::read_dir(d.path())
                        .unwrap()
                        .flatten()
                        .map(|f| f.path()),
                );
            }
        }
        v
    };
    let before = chunk_files().len();
    let gc = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["gateway", "gc", "--data", &gw, "--json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&ok(&args)).unwrap()
    };
    // Everything was just written: all recent, nothing removed.
    let c = gc(&["--grace", "1h"]);
    assert_eq!(c["removed"], 0, "{c}");
    assert!(c["recent"].as_u64().unwrap() > 0, "{c}");
    // A day later (the files' times moved back): the scratch chunks go,
    // the image's stay. A dry run first removes nothing.
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for f in chunk_files() {
        std::fs::File::options()
            .write(true)
            .open(&f)
            .unwrap()
            .set_modified(day_ago)
            .unwrap();
    }
    let dry = gc(&["--grace", "1h", "--dry-run"]);
    assert!(dry["removed"].as_u64().unwrap() > 0, "{dry}");
    assert_eq!(chunk_files().len(), before);
    let c = gc(&["--grace", "1h"]);
    assert_eq!(c["removed"], dry["removed"], "{c}");
    assert_eq!(
        chunk_files().len() as u64,
        before as u64 - c["removed"].as_u64().unwrap()
    );
    assert_eq!(
        c["referenced"].as_u64().unwrap() + c["removed"].as_u64().unwrap(),
        before as u64
    );
    // The image still pulls whole, and the collection is audited.
    w.device("c1", "laptop-1");
    let stats = w.pull_stats("c1", "root1", &[]);
    assert!(stats["files_changed"].as_u64().unwrap() > 0, "{stats}");
    let o = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["audit", "export", "--db", &db, "--out"])
        .arg(w.p("audit.jsonl"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let audit = std::fs::read_to_string(w.p("audit.jsonl")).unwrap();
    assert!(audit.contains("\"decision\":\"collected\""), "{audit}");
}

#[test]
fn a_chunk_stored_again_is_not_collected_from_under_its_new_version() {
    // A build whose chunks were all in the store already, as an old
    // unreferenced copy: its version must keep them through a collection.
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    let db = format!("sqlite:{}", w.gw.join("satchel.db").display());
    std::fs::create_dir_all(w.p("src/lab")).unwrap();
    std::fs::write(w.p("src/lab/tool"), noise(300_000, 91)).unwrap();
    w.build("lab", "base-os", "src/lab");
    common::sql(&db, &["DELETE FROM gateway_layers WHERE image = 'lab'"]);
    let day_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(86_400);
    for fan in std::fs::read_dir(w.gw.join("chunks")).unwrap().flatten() {
        if fan.path().is_dir() {
            for f in std::fs::read_dir(fan.path()).unwrap().flatten() {
                std::fs::File::options()
                    .write(true)
                    .open(f.path())
                    .unwrap()
                    .set_modified(day_ago)
                    .unwrap();
            }
        }
    }
    // The same tree built again as a new image, then a collection.
    w.build("lab", "base-os", "src/lab");
    let c: serde_json::Value = serde_json::from_str(&ok(&[
        "gateway", "gc", "--data", &gw, "--json", "--grace", "1h",
    ]))
    .unwrap();
    assert_eq!(
        c["removed"], 0,
        "a chunk of the new version was collected: {c}"
    );
    assert_eq!(c["recent"], 0, "{c}");
}

/// A copy of the world's base-os source with `usr/bin/v` made of `seed`'s
/// noise, at `src/REL`.
fn base_variant(w: &World, rel: &str, seed: u64, size: usize) {
    let o = Command::new("cp")
        .arg("-a")
        .arg(w.p("src/base-os"))
        .arg(w.p(rel))
        .output()
        .unwrap();
    assert!(o.status.success());
    std::fs::write(w.p(rel).join("usr/bin/v"), noise(size, seed)).unwrap();
}

fn gw_json(w: &World, args: &[&str]) -> serde_json::Value {
    let gw = w.gw.to_string_lossy().into_owned();
    let mut a: Vec<&str> = args.to_vec();
    a.extend(["--data", &gw]);
    serde_json::from_str(&ok(&a)).unwrap()
}

#[test]
fn retention_keeps_the_newest_pinned_and_held_versions_and_a_rollback_republishes() {
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    w.device("c1", "laptop-1");
    w.device("c2", "laptop-2");
    // laptop-1 takes version 1, then says so at its next offer.
    w.pull_stats("c1", "root1", &[]);
    for n in 2..=4u64 {
        base_variant(&w, &format!("src/b{n}"), 1000 * n, 200_000);
        let out = w.build("classroom", "base-os", &format!("src/b{n}"));
        assert!(out.contains(&format!("version {n}")), "{out}");
    }
    // laptop-2 is held at version 2; laptop-1 moves on to 4.
    ok(&[
        "image",
        "pin",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--version",
        "2",
        "--device-id",
        "laptop-2",
    ]);
    w.pull_stats("c2", "root2", &[]);
    same_tree(&w.p("src/b2"), &w.p("root2/base-os"));
    w.pull_stats("c1", "root1", &[]);
    same_tree(&w.p("src/b4"), &w.p("root1/base-os"));
    let shown = gw_json(&w, &["image", "show", "classroom", "--json"]);
    let mark = |dev: &str, role: &str| -> u64 {
        shown["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["device_id"] == dev && m["role"] == role && m["layer"] == "base-os")
            .unwrap_or_else(|| panic!("no {role} mark for {dev}: {shown}"))["version"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(mark("laptop-1", "held"), 1, "{shown}");
    assert_eq!(mark("laptop-1", "offered"), 4, "{shown}");
    assert_eq!(mark("laptop-2", "offered"), 2, "{shown}");
    assert_eq!(shown["pins"][0]["version"], 2, "{shown}");

    // Keep one: 4 is newest, 2 is pinned (and offered), 1 is held; 3 goes,
    // and with it the chunks only 3 had. A dry run first removes nothing.
    let gc = |extra: &[&str]| -> serde_json::Value {
        let mut a = vec!["gateway", "gc", "--data", &gw, "--json", "--grace", "0s"];
        a.extend_from_slice(extra);
        serde_json::from_str(&ok(&a)).unwrap()
    };
    let dry = gc(&["--keep-versions", "1", "--dry-run"]);
    assert_eq!(
        dry["versions_removed"],
        serde_json::json!(["classroom/base-os/3"]),
        "{dry}"
    );
    let c = gc(&["--keep-versions", "1"]);
    assert_eq!(c["versions_removed"], dry["versions_removed"], "{c}");
    assert_eq!(c["removed"], dry["removed"], "{c}");
    assert!(
        c["removed"].as_u64().unwrap() >= 1,
        "v3's own file stayed: {c}"
    );
    let o = satchel(&[
        "image",
        "rollback",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--version",
        "3",
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no version 3"));

    // Roll back to 2: its files again, as version 5, taken as an update.
    let out = ok(&[
        "image",
        "rollback",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--version",
        "2",
    ]);
    assert!(out.contains("as version 5"), "{out}");
    w.pull_stats("c1", "root1", &[]);
    same_tree(&w.p("src/b2"), &w.p("root1/base-os"));
    // A pin never takes a device back: laptop-1 holds 5, so a pin at 4
    // (its own, or every device's) leaves it on 5, and its syncs work.
    for who in [&["--device-id", "laptop-1"][..], &[][..]] {
        let mut a = vec![
            "image",
            "pin",
            "--data",
            &gw,
            "--image",
            "classroom",
            "--layer",
            "base-os",
            "--version",
            "4",
        ];
        a.extend_from_slice(who);
        ok(&a);
        w.pull_stats("c1", "root1", &[]);
        same_tree(&w.p("src/b2"), &w.p("root1/base-os"));
        let mut a = vec![
            "image",
            "unpin",
            "--data",
            &gw,
            "--image",
            "classroom",
            "--layer",
            "base-os",
        ];
        a.extend_from_slice(who);
        ok(&a);
    }
    // A pin whose version went is an error, never the newest version.
    ok(&[
        "image",
        "pin",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--version",
        "4",
        "--device-id",
        "laptop-3",
    ]);
    let db_url = format!("sqlite:{}", w.gw.join("satchel.db").display());
    common::sql(
        &db_url,
        &["DELETE FROM gateway_layers WHERE image = 'classroom' AND layer = 'base-os' AND version = 4"],
    );
    w.device("c3", "laptop-3");
    let o = w.sync("pull", "c3", "root3", &[]);
    assert!(!o.status.success());
    let said = String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("500"), "{said}");
    assert!(!w.p("root3/base-os").exists());
    // laptop-2's pin removed: it takes 5.
    ok(&[
        "image",
        "unpin",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--device-id",
        "laptop-2",
    ]);
    w.pull_stats("c2", "root2", &[]);
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.p("c2/sync/classroom.json")).unwrap()).unwrap();
    assert_eq!(st["layers"]["base-os"]["version"], 5);
    // A user layer is never pinned, and a bad pin says why.
    let o = satchel(&[
        "image",
        "pin",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "user-data",
        "--version",
        "1",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("user layer"));
    let o = satchel(&[
        "image",
        "pin",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        "base-os",
        "--version",
        "3",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no version 3"));
    // Every action is in the audit trail.
    let db = format!("sqlite:{}", w.gw.join("satchel.db").display());
    ok(&["audit", "export", "--db", &db, "--out", &w.s("audit.jsonl")]);
    let audit = std::fs::read_to_string(w.p("audit.jsonl")).unwrap();
    for d in [
        "\"pinned\"",
        "\"unpinned\"",
        "\"rolled-back\"",
        "\"collected\"",
    ] {
        assert!(audit.contains(d), "{d} not audited");
    }
}

#[test]
fn a_pull_in_progress_finishes_while_both_sides_clean_up() {
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    w.device("c1", "laptop-1");
    base_variant(&w, "src/b2", 202, 1_200_000);
    w.build("classroom", "base-os", "src/b2");
    // A slow pull of version 2.
    let mut pull = w.capped_pull("c1", "root", "250K");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !w.p("c1/chunks/packs").exists() {
        assert!(Instant::now() < deadline, "the pull stored nothing");
        assert!(pull.try_wait().unwrap().is_none(), "the pull ended early");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Meanwhile: version 3 replaces the file still being fetched, and the
    // gateway keeps one version; the device's own clean-up starts too.
    base_variant(&w, "src/b3", 303, 1_200_000);
    std::fs::write(w.p("src/b3/usr/bin/tool"), noise(1_500_000, 404)).unwrap();
    w.build("classroom", "base-os", "src/b3");
    let c: serde_json::Value = serde_json::from_str(&ok(&[
        "gateway",
        "gc",
        "--data",
        &gw,
        "--json",
        "--grace",
        "0s",
        "--keep-versions",
        "1",
    ]))
    .unwrap();
    assert_eq!(
        c["versions_removed"],
        serde_json::json!(["classroom/base-os/1"]),
        "{c}"
    );
    let device_gc = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["client", "sync", "gc", "--json", "--wait", "5m", "--data"])
        .arg(w.p("c1"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        pull.try_wait().unwrap().is_none(),
        "the pull was over before the clean-ups ran"
    );
    let out = pull.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    same_tree(&w.p("src/b2"), &w.p("root/base-os"));
    // Its chunks stay fetchable though 3 is what the device would now get
    // (a pull whose later batches come after the build).
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.p("c1/sync/classroom.json")).unwrap()).unwrap();
    let key: ed25519_dalek::VerifyingKey =
        ed25519_dalek::pkcs8::DecodePublicKey::from_public_key_pem(
            st["manifest_key"].as_str().unwrap(),
        )
        .unwrap();
    let v2 =
        sync::manifest::Signed::verify(st["layers"]["base-os"]["manifest"].as_str().unwrap(), &key)
            .unwrap();
    assert_eq!(v2.manifest.version, 2);
    let only_v2: Vec<sync::ChunkId> = v2
        .manifest
        .entries
        .iter()
        .filter(|e| e.path == "usr/bin/v")
        .flat_map(|e| match &e.kind {
            sync::Kind::File { chunks, .. } => chunks.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert!(!only_v2.is_empty());
    let client = device::GatewayConfig {
        url: w.url.clone(),
        ca: w.gw.join("ca.crt"),
        data: w.p("c1"),
    }
    .device_client()
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (s, b) = rt
        .block_on(client.post(
            "/v1/sync/images/classroom/chunks",
            &serde_json::json!({"ids": only_v2}),
        ))
        .unwrap();
    assert_eq!(s, 200, "{b}");
    let cleaned = device_gc.wait_with_output().unwrap();
    assert!(cleaned.status.success());
    let cleaned: serde_json::Value = serde_json::from_slice(&cleaned.stdout).unwrap();
    assert_eq!(cleaned["absent"], 0, "{cleaned}");
    // What the device holds is whole: a local change reverts from the store.
    let revert = |root: &str| {
        std::fs::write(w.p(root).join("base-os/usr/bin/v"), b"student was here").unwrap();
        ok(&[
            "client",
            "sync",
            "revert",
            "--data",
            &w.s("c1"),
            "--image",
            "classroom",
            "--root",
            &w.s(root),
            "--layer",
            "base-os",
        ]);
    };
    revert("root");
    same_tree(&w.p("src/b2"), &w.p("root/base-os"));
    // Version 3 taken: the device's clean-up drops version 2's own chunks.
    w.pull_stats("c1", "root", &[]);
    same_tree(&w.p("src/b3"), &w.p("root/base-os"));
    let c: serde_json::Value = serde_json::from_str(&ok(&[
        "client",
        "sync",
        "gc",
        "--json",
        "--data",
        &w.s("c1"),
    ]))
    .unwrap();
    assert!(c["removed"].as_u64().unwrap() > 0, "{c}");
    assert!(
        c["bytes_after"].as_u64() < c["bytes_before"].as_u64(),
        "{c}"
    );
    assert_eq!(c["absent"], 0, "{c}");
    revert("root");
    same_tree(&w.p("src/b3"), &w.p("root/base-os"));
}

#[test]
fn a_debian_root_pulled_into_an_empty_directory_equals_its_source() {
    if !common::root_with("debootstrap") {
        return;
    }
    let w = world();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let src = w.p("debian");
    let o = Command::new(repo.join("scripts/debian-root.sh"))
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // What a minimal root lacks and real images hold: a file capability,
    // an ACL, attributes of each namespace, a hard link, a FIFO, a device
    // node, a sparse file, an odd owner and a nanosecond time.
    let extras = r#"
import os, struct, sys
r = sys.argv[1]
p = lambda *a: os.path.join(r, *a)
ping = p("usr/bin/satchel-ping")
with open(p("usr/bin/true"), "rb") as f, open(ping, "wb") as g: g.write(f.read())
os.chmod(ping, 0o755)
# VFS_CAP_REVISION_2, effective, cap_net_raw (13) permitted
os.setxattr(ping, "security.capability", struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0))
acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, perm, i) for t, perm, i in
      [(1, 6, 0xffffffff), (2, 4, 1000), (4, 4, 0xffffffff), (0x10, 4, 0xffffffff), (0x20, 4, 0xffffffff)])
os.setxattr(p("etc/hostname"), "system.posix_acl_access", acl)
os.setxattr(p("etc/hostname"), "user.satchel", b"kept")
os.setxattr(p("etc/hostname"), "trusted.satchel", b"root only")
os.link(p("etc/hostname"), p("etc/hostname.again"))
os.mkfifo(p("run/satchel.fifo"), 0o620)
os.mknod(p("dev/satchel-null"), 0o666 | 0o020000, os.makedev(1, 3))
with open(p("var/sparse.img"), "wb") as f:
    f.seek(8 << 20); f.write(b"end"); f.seek(16 << 20); f.truncate()
os.makedirs(p("home/pupil"))
with open(p("home/pupil/notes"), "w") as f: f.write("mine\n")
os.chown(p("home/pupil/notes"), 1234, 5678)
os.chown(p("home/pupil"), 1234, 5678)
os.utime(p("home/pupil/notes"), ns=(1_700_000_000_123_456_789, 1_700_000_000_987_654_321))
"#;
    let o = Command::new("python3")
        .args(["-c", extras])
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = w.build("classroom", "base-os", "debian");
    assert!(out.contains("version 2"), "{out}");
    w.device("c1", "laptop-1");
    let st = w.pull_stats("c1", "root", &["--layers", "base-os"]);
    assert!(st["files_changed"].as_u64().unwrap() > 1000, "{st}");
    let facts = repo.join("satchel/tests/fixtures/tree_facts.py");
    let o = Command::new("python3")
        .arg(&facts)
        .arg("--compare")
        .arg(&src)
        .arg(w.p("root/base-os"))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let said: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert!(said["paths"].as_u64().unwrap() > 1000, "{said}");
    assert!(said["hardlink_groups"].as_u64().unwrap() >= 1, "{said}");
    // The sparse file stayed sparse.
    let blocks = std::os::unix::fs::MetadataExt::blocks(
        &std::fs::metadata(w.p("root/base-os/var/sparse.img")).unwrap(),
    );
    assert!(
        blocks * 512 < 1 << 20,
        "{blocks} blocks: the holes were written"
    );
    // A second pull finds nothing changed: the tree equals its manifest.
    let st = w.pull_stats("c1", "root", &["--layers", "base-os"]);
    assert_eq!(st["files_changed"], 0, "{st}");
    // The manifest is v2, with the capability in it.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(w.p("c1/sync/classroom.json")).unwrap()).unwrap();
    let manifest = state["layers"]["base-os"]["manifest"].as_str().unwrap();
    assert!(manifest.contains("\"format\":\"satchel-layer-v2\""));
    assert!(manifest.contains("security.capability"));
}

#[test]
fn the_image_build_signs_the_reference_for_the_whole_chain_in_one_step() {
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new("cp")
        .arg("-a")
        .arg(repo.join("examples/boot-chain"))
        .arg(w.p("chain"))
        .output()
        .unwrap();
    assert!(o.status.success());
    let chain = w.p("chain/chain.toml");
    ok(&["keygen", "--out", &w.s("org.key")]);
    base_variant(&w, "src/b2", 2222, 1000);
    let out: serde_json::Value = serde_json::from_str(&ok(&[
        "image",
        "build",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        &format!("base-os={}", w.s("src/b2")),
        "--chain",
        chain.to_str().unwrap(),
        "--sign-key",
        &w.s("org.key"),
        "--reference-out",
        &w.s("reference.json"),
        "--json",
    ]))
    .unwrap();
    assert_eq!(out["reference"], w.s("reference.json"), "{out}");
    // The same as `predict` over the chain with the image's stages joined
    // by hand, the two-step way.
    let mut joined = std::fs::read_to_string(&chain).unwrap();
    joined.push('\n');
    joined.push_str(&std::fs::read_to_string(w.gw.join("images/classroom.stages.toml")).unwrap());
    let joined_path = repo
        .join("examples/boot-chain")
        .join(format!(".joined-{}.toml", std::process::id()));
    std::fs::write(&joined_path, joined).unwrap();
    let o = satchel(&[
        "predict",
        "--chain",
        joined_path.to_str().unwrap(),
        "--banks",
        "sha256",
        "--sign-key",
        &w.s("org.key"),
        "--out",
        &w.s("by-hand.json"),
    ]);
    // The joined chain names its files relative to itself: it sat beside
    // the sample chain only for this.
    std::fs::remove_file(&joined_path).unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let pcrs = |f: &str| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(w.p(f)).unwrap()).unwrap();
        v["manifest"]["pcrs"].clone()
    };
    assert_eq!(pcrs("reference.json"), pcrs("by-hand.json"));
    // It names the layer's stage, with the version's digest measured.
    let digest = out["layers"][0]["digest"].as_str().unwrap();
    let text = std::fs::read_to_string(w.p("reference.json")).unwrap();
    assert!(text.contains("layer-base-os"), "{text}");
    let stages = std::fs::read_to_string(w.gw.join("images/classroom.stages.toml")).unwrap();
    assert!(stages.contains(digest), "{stages}");
    // Half the flags: refused before anything is built.
    let o = satchel(&[
        "image",
        "build",
        "--data",
        &gw,
        "--image",
        "classroom",
        "--layer",
        &format!("base-os={}", w.s("src/b2")),
        "--reference-out",
        &w.s("x.json"),
    ]);
    assert!(!o.status.success());
    assert!(!w.p("x.json").exists());
}

/// `satchel` with the host's TPM named.
fn satchel_tpm(tcti: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .env("SATCHEL_TPM", tcti)
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap()
}

#[test]
fn a_pulled_debian_image_boots_as_a_guest_under_the_gate_and_proves_its_own_boot() {
    if !common::root_with("qemu-system-x86_64") || !common::root_with("debootstrap") {
        return;
    }
    let w = world();
    // The guest's network target on the host (standing in for the
    // gateway's proxy): it answers one line.
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = target.local_addr().unwrap().port();
    let served = std::thread::spawn(move || {
        let (mut c, _) = target.accept().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(&c), &mut line).unwrap();
        std::io::Write::write_all(&mut c, format!("hello, {}", line).as_bytes()).unwrap();
        // Nothing else ever reaches it.
        target.set_nonblocking(true).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(2));
        target.accept().is_err()
    });
    // What the guest does once trusted: read what the device put in the user
    // tree, write something back, reach its one peer (and try others), and
    // read the credential it was handed.
    guest_source(
        &w,
        "guest-src",
        &format!(
            "echo \"satchel-guest: the notes say: $(cat /home/Documents/notes.txt)\"\n\
             uname -r > /home/Documents/written-in-the-guest\n\
             timeout 20 bash -c 'exec 3<>/dev/tcp/10.0.2.100/{port} && echo guest >&3 && read -r l <&3 && echo \"satchel-guest: the peer said: $l\"'\n\
             timeout 5 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{port}' && echo 'satchel-guest: host loopback reached' || echo 'satchel-guest: host loopback closed'\n\
             timeout 5 bash -c 'exec 3<>/dev/tcp/1.1.1.1/80' && echo 'satchel-guest: outside reached' || echo 'satchel-guest: outside closed'\n\
             echo \"satchel-guest: credential $(head -n1 /run/satchel/credentials/device.crt) $(stat -c '%a %s' /run/satchel/credentials/device.crt) $(sha256sum < /run/satchel/credentials/device.crt | cut -c1-16)\""
        ),
    );
    // Larger than one console line carries: it goes in pieces.
    let credential_bytes = format!("-----BEGIN CERTIFICATE-----\n{}\n", "MIIB".repeat(2500));
    std::fs::write(w.p("device.crt"), &credential_bytes).unwrap();
    w.build("classroom", "base-os", "guest-src");
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    let root = w.s("root/base-os");

    // The guest reference, recorded on this (the build) machine.
    ok(&["keygen", "--out", &w.s("org.key")]);
    record_guest_reference(&w, &root);

    // The host: a measured chain in its TPM, the disk key sealed to it.
    let swtpm = tpm_sim_tests::Swtpm::start().unwrap();
    let t = swtpm.tcti();
    copy_chain(&w);
    let host = |args: &[&str]| {
        let o = satchel_tpm(&t, args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    host(&[
        "predict",
        "--chain",
        &w.s("chain/chain.toml"),
        "--sign-key",
        &w.s("org.key"),
        "--out",
        &w.s("ref.json"),
    ]);
    host(&[
        "measure",
        "--chain",
        &w.s("chain/chain.toml"),
        "--log",
        &w.s("boot.log"),
    ]);
    std::fs::write(w.p("disk.key"), noise(32, 7)).unwrap();
    host(&[
        "seal",
        "--pcrs",
        "4,8,9",
        "--in",
        &w.s("disk.key"),
        "--out",
        &w.s("disk.sealed"),
    ]);
    let start = |key: &[&str], junit: &str| -> Vec<String> {
        let mut args = guest_start_args(&w, &root, "guest-ref.json");
        let (user, report) = (w.s("root/user-data"), w.s(junit));
        for a in ["--user", &user, "--junit", &report]
            .into_iter()
            .chain(key.iter().copied())
        {
            args.push(a.to_owned());
        }
        args
    };

    // The gate checks the host's chain, unseals the key, and starts the
    // guest, which proves its own boot before it runs.
    let network_to = format!("127.0.0.1:{port}");
    let credential = format!("device.crt={}", w.s("device.crt"));
    let guest_args = start(
        &["--network-to", &network_to, "--credential", &credential],
        "ok.xml",
    );
    let mut gate = vec![
        "launch",
        "--log",
        &w.s("boot.log"),
        "--reference",
        &w.s("ref.json"),
        "--reference-key",
        &w.s("org.key.pub"),
        "--sealed",
        &w.s("disk.sealed"),
        "--",
        env!("CARGO_BIN_EXE_satchel"),
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    gate.extend(guest_args);
    let gate: Vec<&str> = gate.iter().map(String::as_str).collect();
    let o = satchel_tpm(&t, &gate);
    let (said, shown) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "{said}{shown}");
    assert!(said.contains("guest ready: kernel 6.1."), "{said}");
    assert!(said.contains("accelerator tcg"), "{said}");
    assert!(
        shown.contains("satchel-guest: ready kernel=6.1."),
        "{shown}"
    );
    assert!(shown.contains("the notes say: first notes"), "{shown}");
    // Once trusted: its one peer answers, nothing else does, and the
    // credential is there, root's alone.
    assert!(
        shown.contains("satchel-guest: the peer said: hello, guest"),
        "{shown}"
    );
    assert!(
        shown.contains("satchel-guest: host loopback closed"),
        "{shown}"
    );
    assert!(shown.contains("satchel-guest: outside closed"), "{shown}");
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        credential_bytes.as_bytes(),
    ));
    assert!(
        shown.contains(&format!(
            "satchel-guest: credential -----BEGIN CERTIFICATE----- 600 {} {}",
            credential_bytes.len(),
            &digest[..16]
        )),
        "{shown}"
    );
    assert!(
        served.join().unwrap(),
        "a second connection reached the target"
    );
    // What the guest wrote came back to the device's user tree, and checks
    // in as any user change does.
    let written =
        std::fs::read_to_string(w.p("root/user-data/Documents/written-in-the-guest")).unwrap();
    assert!(written.starts_with("6.1."), "{written}");
    assert_eq!(
        std::fs::read_to_string(w.p("root/user-data/Documents/notes.txt")).unwrap(),
        "first notes\n"
    );
    let o = w.sync("push", "c1", "root", &["--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["layers"]["user-data"], 2, "{r}");
    w.device("c2", "laptop-1");
    w.pull_stats("c2", "root2", &["--layers", "user-data"]);
    assert_eq!(
        std::fs::read_to_string(w.p("root2/user-data/Documents/written-in-the-guest")).unwrap(),
        written
    );
    let report = std::fs::read_to_string(w.p("ok.xml")).unwrap();
    assert!(
        report.contains("tests=\"19\"") && report.contains("failures=\"0\""),
        "{report}"
    );
    assert!(report.contains("name=\"stage guest-kernel\""), "{report}");
    assert!(report.contains("name=\"stage guest-initrd\""), "{report}");
    // The disks at rest are LUKS, not the file systems.
    let head = std::fs::read(w.p("guest/user.disk")).unwrap();
    assert_eq!(&head[..6], b"LUKS\xba\xbe");

    // A wrong disk key opens nothing, and nothing boots.
    std::fs::write(w.p("wrong.key"), noise(32, 8)).unwrap();
    let o = satchel(
        &start(&["--key-file", &w.s("wrong.key")], "wrong.xml")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("does not open") && shown.contains("user.disk"),
        "{shown}"
    );
    assert!(!shown.contains("satchel-guest:"), "{shown}");
    // Named as the wrong key, not as a tampered vTPM.
    assert!(!shown.contains("MAC"), "{shown}");

    // One changed byte of the guest's kernel (in its DOS header, which no
    // loader reads but the measurement covers): refused at the guest's
    // attestation, naming the stage, before it runs.
    let kernel = std::fs::read_link(w.p("root/base-os/vmlinuz")).unwrap();
    let kernel = w.p("root/base-os").join(kernel);
    let original = std::fs::read(&kernel).unwrap();
    let mut bytes = original.clone();
    bytes[16] ^= 1;
    std::fs::write(&kernel, &bytes).unwrap();
    let o = satchel(
        &start(&["--key-file", &w.s("disk.key")], "bad.xml")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("stage \"guest-kernel\" measured something else"),
        "{shown}"
    );
    assert!(shown.contains("PCR 4"), "{shown}");
    assert!(!shown.contains("satchel-guest: ready"), "{shown}");
    let report = std::fs::read_to_string(w.p("bad.xml")).unwrap();
    let kernel_case = report.split("name=\"stage guest-kernel\"").nth(1).unwrap();
    assert!(
        kernel_case.trim_start().starts_with("><failure") || kernel_case.contains("<failure"),
        "{report}"
    );
    assert!(report.contains("failures=\"4\""), "{report}");
    std::fs::write(&kernel, &original).unwrap();

    // The initrd with 4 KiB of zeros after it (the kernel skips them as
    // padding, so it boots): refused, naming the initrd as the stub (PCR 11)
    // and the kernel (PCR 9) measured it, before anything of it runs on.
    let initrd = std::fs::read_link(w.p("root/base-os/initrd.img")).unwrap();
    let initrd = w.p("root/base-os").join(initrd);
    let mut padded = std::fs::read(&initrd).unwrap();
    padded.extend_from_slice(&[0; 4096]);
    std::fs::write(&initrd, &padded).unwrap();
    let o = satchel(
        &start(&["--key-file", &w.s("disk.key")], "initrd.xml")
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    for pcr in ["PCR 9", "PCR 11"] {
        assert!(
            shown.contains(&format!(
                "[guest-initrd] {pcr} (sha256): stage \"guest-initrd\" measured something else"
            )),
            "{shown}"
        );
    }
    assert!(!shown.contains("satchel-guest: ready"), "{shown}");
}

/// The guest image's source at `rel` (`debian-root.sh --guest`), whose
/// `/etc/satchel/guest-run` runs `script` once the guest is trusted.
fn guest_source(w: &World, rel: &str, script: &str) {
    guest_source_as(w, rel, script, &[]);
}

/// As [`guest_source`], with more flags for `debian-root.sh` (`--upgraded`).
fn guest_source_as(w: &World, rel: &str, script: &str, flags: &[&str]) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let src = w.p(rel);
    let o = Command::new(repo.join("scripts/debian-root.sh"))
        .arg("--guest")
        .args(flags)
        .arg(&src)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(
        src.join("etc/satchel/guest-run"),
        format!("#!/bin/sh\n{script}\n"),
    )
    .unwrap();
    std::fs::set_permissions(
        src.join("etc/satchel/guest-run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
}

/// Record and sign the guest reference of the image at `root` (org.key).
fn record_guest_reference(w: &World, root: &str) {
    record_guest_reference_as(w, root, "guest-ref.json", "0");
}

/// As [`record_guest_reference`], into `out`, for device epoch `epoch`.
fn record_guest_reference_as(w: &World, root: &str, out: &str, epoch: &str) {
    let out = ok(&[
        "guest",
        "reference",
        "--root",
        root,
        "--state",
        &w.s("ref-guest"),
        "--sign-key",
        &w.s("org.key"),
        "--out",
        &w.s(out),
        "--epoch",
        epoch,
        "--accel",
        "tcg",
        "-q",
    ]);
    assert!(out.contains("12 PCRs: 0,1,2,3,4,5,6,7,8,9,11,12"), "{out}");
}

/// `guest start` of the image at `root` with the test's state, the guest
/// reference `guest_ref` and key, under TCG.
fn guest_start_args(w: &World, root: &str, guest_ref: &str) -> Vec<String> {
    [
        "guest",
        "start",
        "--root",
        root,
        "--state",
        &w.s("guest"),
        "--reference",
        &w.s(guest_ref),
        "--reference-key",
        &w.s("org.key.pub"),
        "--accel",
        "tcg",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// The sample boot chain, copied to `chain/`.
fn copy_chain(w: &World) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = Command::new("cp")
        .arg("-a")
        .arg(repo.join("examples/boot-chain"))
        .arg(w.p("chain"))
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn an_image_update_keeps_the_disk_key_and_the_guest_boots_the_new_version() {
    if !common::root_with("qemu-system-x86_64") || !common::root_with("debootstrap") {
        return;
    }
    let w = world();
    let gw = w.gw.to_string_lossy().into_owned();
    guest_source(
        &w,
        "guest-src",
        "echo \"satchel-guest: release $(cat /etc/satchel-release)\"",
    );
    std::fs::write(w.p("guest-src/etc/satchel-release"), "v1\n").unwrap();
    copy_chain(&w);
    ok(&["keygen", "--out", &w.s("org.key")]);
    ok(&["keygen", "--p256", "--out", &w.s("policy.key")]);
    // Build, and sign the whole chain's reference, in one step.
    let build = |version: &str, src: &str| {
        ok(&[
            "image",
            "build",
            "--data",
            &gw,
            "--image",
            "classroom",
            "--layer",
            &format!("base-os={}", w.s(src)),
            "--chain",
            &w.s("chain/chain.toml"),
            "--sign-key",
            &w.s("org.key"),
            "--reference-out",
            &w.s(&format!("ref-{version}.json")),
        ]);
        // The device's chain for this version: the gateway's stages for it.
        let mut chain = std::fs::read_to_string(w.p("chain/chain.toml")).unwrap();
        chain.push('\n');
        chain
            .push_str(&std::fs::read_to_string(w.gw.join("images/classroom.stages.toml")).unwrap());
        std::fs::write(w.p(&format!("chain/boot-{version}.toml")), chain).unwrap();
    };
    build("v1", "guest-src");
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &["--layers", "base-os"]);
    let root = w.s("root/base-os");
    // The guest reference for v1, for the device epoch of v1's policy.
    record_guest_reference_as(&w, &root, "guest-ref-v1.json", "1");

    let mut swtpm = tpm_sim_tests::Swtpm::start().unwrap();
    let host = |t: &str, args: &[&str]| satchel_tpm(t, args);
    let measured = |t: &str, version: &str| {
        let o = host(
            t,
            &[
                "measure",
                "--chain",
                &w.s(&format!("chain/boot-{version}.toml")),
                "--log",
                &w.s(&format!("boot-{version}.log")),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // v1u is a security update: its policy is one epoch on, so the
    // device revokes v1's once it runs v1u.
    let sign_policy = |version: &str, epoch: &str| {
        ok(&[
            "pcr-policy",
            "sign",
            "--epoch",
            epoch,
            "--reference",
            &w.s(&format!("ref-{version}.json")),
            "--reference-key",
            &w.s("org.key.pub"),
            "--pcrs",
            "4,8,9,13",
            "--sign-key",
            &w.s("policy.key"),
            "--out",
            &w.s(&format!("policy-{version}.json")),
        ]);
    };
    let launch = |t: &str, boot: &str, policy: &str, guest: &str| {
        let mut args: Vec<String> = [
            "launch",
            "--log",
            &w.s(&format!("boot-{boot}.log")),
            "--reference",
            &w.s(&format!("ref-{boot}.json")),
            "--reference-key",
            &w.s("org.key.pub"),
            "--sealed",
            &w.s("disk.sealed"),
            "--policy-key",
            &w.s("policy.key.pub"),
            "--policy",
            &w.s(&format!("policy-{policy}.json")),
            "--",
            env!("CARGO_BIN_EXE_satchel"),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        args.extend(guest_start_args(
            &w,
            &root,
            &format!("guest-ref-{guest}.json"),
        ));
        host(t, &args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let t = swtpm.tcti();
    measured(&t, "v1");
    // Sealed once, to the organisation's policy key.
    std::fs::write(w.p("disk.key"), noise(32, 11)).unwrap();
    let o = host(
        &t,
        &[
            "seal",
            "--policy-key",
            &w.s("policy.key.pub"),
            "--in",
            &w.s("disk.key"),
            "--out",
            &w.s("disk.sealed"),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    sign_policy("v1", "1");
    let o = launch(&t, "v1", "v1", "v1");
    let shown = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("satchel-guest: release v1"), "{shown}");

    // The security update: the same root after `apt-get upgrade` from
    // bookworm-security (real newer packages: libc6, libssl3, ...).
    let versions = |root: &str| -> std::collections::BTreeSet<String> {
        let status = std::fs::read_to_string(w.p(root).join("var/lib/dpkg/status")).unwrap();
        status
            .split("\n\n")
            .filter_map(|b| {
                let field = |k: &str| b.lines().find_map(|l| l.strip_prefix(k));
                Some(format!("{} {}", field("Package: ")?, field("Version: ")?))
            })
            .collect()
    };
    let held = versions("root/base-os");
    guest_source_as(
        &w,
        "guest-src-u",
        "echo \"satchel-guest: release $(cat /etc/satchel-release)\"",
        &["--upgraded"],
    );
    std::fs::write(w.p("guest-src-u/etc/satchel-release"), "v1u\n").unwrap();
    build("v1u", "guest-src-u");
    let st = w.pull_stats("c1", "root", &["--layers", "base-os"]);
    let newer: Vec<String> = versions("root/base-os")
        .difference(&held)
        .cloned()
        .collect();
    assert!(!newer.is_empty(), "no package changed version");
    assert!(st["files_changed"].as_u64().unwrap() > 10, "{st} {newer:?}");
    // The device reboots on v1u: PCR 13 holds the new layer.
    swtpm.reboot().unwrap();
    let t = swtpm.tcti();
    measured(&t, "v1u");
    sign_policy("v1u", "2");
    record_guest_reference_as(&w, &root, "guest-ref-v1u.json", "2");
    // v1's signed policy does not unseal on v1u; nothing starts.
    let o = launch(&t, "v1u", "v1", "v1");
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(shown.contains("did not unseal"), "{shown}");
    assert!(!shown.contains("satchel-guest:"), "{shown}");
    // v1u's policy unseals and raises the device's epoch to 2; v1's guest
    // reference (epoch 1) is revoked with v1's policy: the guest never starts.
    let o = launch(&t, "v1u", "v1u", "v1");
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("epoch counter raised from 1 to 2"),
        "{shown}"
    );
    assert!(
        shown.contains("is for epoch 1, but this device's epoch counter stands at 2"),
        "{shown}"
    );
    assert!(!shown.contains("satchel-guest:"), "{shown}");
    // The launch closed PCR 15 for this boot: the device boots v1u again.
    swtpm.reboot().unwrap();
    let t = swtpm.tcti();
    std::fs::remove_file(w.p("boot-v1u.log")).unwrap();
    measured(&t, "v1u");
    // v1u's policy unseals the same sealed key (not sealed again), the
    // chain matches v1u's reference, and the guest boots v1u.
    let o = launch(&t, "v1u", "v1u", "v1u");
    let shown = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{shown}");
    assert!(shown.contains("satchel-guest: release v1u"), "{shown}");
    assert!(
        shown.contains("satchel-guest: ready kernel=6.1."),
        "{shown}"
    );
    // The rollback: the device is booted on v1 again (its chain measures
    // as v1's reference says), with v1's signed policy. The TPM refuses:
    // the epoch counter stands above v1's epoch.
    swtpm.reboot().unwrap();
    let t = swtpm.tcti();
    std::fs::remove_file(w.p("boot-v1.log")).unwrap();
    measured(&t, "v1");
    let o = launch(&t, "v1", "v1", "v1");
    let shown = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains("policy is for epoch 1, but this device's epoch counter stands at 2"),
        "{shown}"
    );
    assert!(!shown.contains("satchel-guest:"), "{shown}");
}

/// A second gateway of the organisation beside the world's: its own data
/// directory holding the same keys and certificates, the same database and
/// the same chunks (a shared file system standing in for a shared store;
/// docs/scale.md). Its URL.
fn second_gateway(w: &World) -> (String, common::Served) {
    let b = w.p("gw-b");
    std::fs::create_dir_all(&b).unwrap();
    for e in std::fs::read_dir(&w.gw).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".crt") || name.ends_with(".key") || name.ends_with(".pub") {
            std::fs::copy(&p, b.join(&name)).unwrap();
        } else if p.is_dir() {
            std::os::unix::fs::symlink(&p, b.join(&name)).unwrap();
        }
    }
    let db = format!("sqlite:{}", w.gw.join("satchel.db").display());
    let port = free_port();
    let served = common::serve(&b, port, &["--db", &db]);
    (format!("https://127.0.0.1:{port}"), served)
}

/// `satchel client sync VERB` through `both`, with the first gateway of
/// `w` killed 2.5 s in (the run must still be going then): the exit
/// status, standard output and standard error.
fn through_an_outage(
    w: &mut World,
    verb: &str,
    both: &str,
    extra: &[&str],
) -> (std::process::ExitStatus, String, String) {
    let root_flag = if verb == "pull" { "--into" } else { "--from" };
    let child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["client", "sync", verb, "--gateway", both, "--ca"])
        .arg(w.gw.join("ca.crt"))
        .arg("--data")
        .arg(w.p("c1"))
        .args(["--image", "classroom", root_flag])
        .arg(w.p("root"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = common::Served(child);
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "the {verb} ended before its gateway stopped"
    );
    let _ = w._served.0.kill();
    let _ = w._served.0.wait();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the {verb} did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (mut out, mut err) = (String::new(), String::new());
    std::io::Read::read_to_string(child.0.stdout.as_mut().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status, out, err)
}

/// Devices configured with several gateway addresses: a pull goes on at
/// the next when the one it was pulling from stops mid-pull, asking again
/// only for what had not arrived, and the tree arrives whole, every chunk
/// checked as it lands.
#[test]
fn a_pull_goes_on_at_another_gateway_when_the_first_stops_mid_pull() {
    let mut w = world();
    w.device("c1", "laptop-1");
    let (b_url, _b) = second_gateway(&w);
    let both = format!("{},{b_url}", w.url);
    let (status, out, err) = through_an_outage(
        &mut w,
        "pull",
        &both,
        &["--max-rate", "300K", "--stats-json"],
    );
    assert!(status.success(), "{err}");
    same_tree(&w.p("src/base-os"), &w.p("root/base-os"));
    same_tree(&w.p("src/user-data"), &w.p("root/user-data"));
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(stats["chunks_fetched"].as_u64().unwrap_or(0) > 0, "{stats}");
    // Nothing left to fetch: the tree is the image's.
    w.url = both;
    let again = w.pull_stats("c1", "root", &[]);
    assert_eq!(again["chunks_fetched"], 0, "{again}");
}

/// A push whose gateway stops mid-upload goes on at the next: the layer is
/// pushed again there, the chunks that had arrived are not sent again
/// (the upload asks which are missing first), and the change is the
/// gateway's new version.
#[test]
fn a_push_goes_on_at_another_gateway_when_the_first_stops_mid_push() {
    let mut w = world();
    w.device("c1", "laptop-1");
    w.pull_stats("c1", "root", &[]);
    // Three upload batches (4 MiB each at most), the second due 4 s in.
    let big = noise(10_000_000, 42);
    std::fs::write(w.p("root/user-data/Documents/big.bin"), &big).unwrap();
    let (b_url, _b) = second_gateway(&w);
    let both = format!("{},{b_url}", w.url);
    let (status, _, err) = through_an_outage(&mut w, "push", &both, &["--max-rate", "1M"]);
    assert!(status.success(), "{err}");
    // Another device directory for the same device pulls the change from B.
    std::fs::create_dir_all(w.p("c1-again")).unwrap();
    for f in ["device.crt", "device.key"] {
        std::fs::copy(w.p("c1").join(f), w.p("c1-again").join(f)).unwrap();
    }
    w.url = b_url;
    w.pull_stats("c1-again", "root2", &[]);
    assert_eq!(
        std::fs::read(w.p("root2/user-data/Documents/big.bin")).unwrap(),
        big
    );
}
