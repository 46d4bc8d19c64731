//! `satchel agent` enforcing on a dedicated tmpfs mount, for real: fanotify
//! permission events, the kernel's EPERM, signals, SIGKILL. Needs root (CI
//! runs as root); elsewhere each test says why it skipped, and under
//! `CI=true` a missing fanotify fails the test instead.
//!
//! - an allowlisted binary runs, a copy of an unlisted one gets EPERM, and
//!   after rewriting the allowed file's bytes it is denied (the hash cache
//!   does not hide the change);
//! - monitor mode lets the unlisted one run and reports it;
//! - a bundle with a bad signature, another key or a lower version is
//!   refused and the one in force stays; a newer one takes over on SIGHUP;
//! - SIGKILL of the agent leaves exec working (the kernel's default) and the
//!   next start reports the gap;
//! - with the gateway stopped the agent keeps enforcing and spools; when
//!   the gateway is back every spooled entry lands in its audit trail once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn satchel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
}

fn ok(args: &[&str]) -> String {
    let o = satchel().args(args).output().unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}

/// A fresh tmpfs, or None (with the reason printed) where this machine
/// cannot run the test. Under CI it must be able to.
fn tmpfs() -> Option<Tmpfs> {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let why = if !rustix::process::geteuid().is_root() {
        Some("not root".to_owned())
    } else {
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs"])
            .arg(&mnt)
            .output()
            .unwrap();
        (!o.status.success())
            .then(|| format!("mount -t tmpfs: {}", String::from_utf8_lossy(&o.stderr)))
    };
    if let Some(why) = why {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the agent tests, but: {why}"
        );
        eprintln!("SKIPPED: the agent tests need root and a tmpfs mount: {why}");
        return None;
    }
    Some(Tmpfs { dir, mnt })
}

fn sha256(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// What a test sets up: keys, two programs on the mount, a bundle.
struct World {
    fs: Tmpfs,
    state: PathBuf,
}

impl World {
    fn new() -> Option<World> {
        let fs = tmpfs()?;
        let d = fs.dir.path();
        ok(&["keygen", "--out", d.join("org.key").to_str().unwrap()]);
        ok(&["keygen", "--out", d.join("other.key").to_str().unwrap()]);
        std::fs::copy("/bin/true", fs.mnt.join("allowed")).unwrap();
        std::fs::copy("/bin/false", fs.mnt.join("unlisted")).unwrap();
        std::fs::copy("/bin/echo", fs.mnt.join("later")).unwrap();
        let state = d.join("state");
        let w = World { fs, state };
        w.bundle(1, "org.key", &["allowed"], "lockdown");
        Some(w)
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.fs.dir.path().join(rel)
    }

    fn m(&self, name: &str) -> PathBuf {
        self.fs.mnt.join(name)
    }

    /// Sign a bundle allowing `programs` (by hash) into `policy.bundle`.
    fn bundle(&self, version: u64, key: &str, programs: &[&str], mode: &str) {
        self.bundle_to("policy.bundle", version, key, programs, mode);
    }

    fn bundle_to(&self, out: &str, version: u64, key: &str, programs: &[&str], mode: &str) {
        let lines: String = programs
            .iter()
            .map(|p| {
                format!(
                    "p, device:t1, app, sha256:{}, exec, allow\n",
                    sha256(&self.m(p))
                )
            })
            .collect();
        let csv = self.p("policy.csv");
        std::fs::write(&csv, lines).unwrap();
        ok(&[
            "policy",
            "bundle",
            "--policy",
            csv.to_str().unwrap(),
            "--sign-key",
            self.p(key).to_str().unwrap(),
            "--version",
            &version.to_string(),
            "--mode",
            mode,
            "--out",
            self.p(out).to_str().unwrap(),
        ]);
    }

    fn agent(&self, extra: &[&str]) -> Agent {
        self.agent_with(extra.iter().copied())
    }

    /// An agent that talks to the gateway on `port` as the device in `cdir`.
    fn agent_online(&self, gw: &Path, port: u16, cdir: &Path, extra: &[&str]) -> Agent {
        let online = [
            "--gateway".to_owned(),
            format!("https://127.0.0.1:{port}"),
            "--ca".to_owned(),
            gw.join("ca.crt").to_string_lossy().into_owned(),
            "--data".to_owned(),
            cdir.to_string_lossy().into_owned(),
        ];
        self.agent_with(
            online
                .iter()
                .map(String::as_str)
                .chain(extra.iter().copied()),
        )
    }

    fn agent_with<'a>(&self, extra: impl Iterator<Item = &'a str>) -> Agent {
        let log = self.p(&format!("agent-{}.log", rand_suffix()));
        let child = satchel()
            .args(["agent", "--bundle"])
            .arg(self.p("policy.bundle"))
            .arg("--bundle-key")
            .arg(self.p("org.key.pub"))
            .args(["--subject", "device:t1", "--mount"])
            .arg(&self.fs.mnt)
            .arg("--state-dir")
            .arg(&self.state)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let a = Agent {
            child,
            log,
            state: self.state.clone(),
        };
        a.wait_ready();
        a
    }

    fn status(&self) -> serde_json::Value {
        let o = satchel()
            .args(["agent", "status", "--json", "--state-dir"])
            .arg(&self.state)
            .output()
            .unwrap();
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

struct Agent {
    child: Child,
    log: PathBuf,
    state: PathBuf,
}

impl Agent {
    /// Until the agent's status file names this process (the marks are set
    /// before it is written).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let st: Option<serde_json::Value> = std::fs::read(self.state.join("status.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            if st.is_some_and(|s| s["pid"] == self.child.id()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).unwrap()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// SIGTERM and wait.
    fn stop(mut self) -> String {
        self.signal(rustix::process::Signal::TERM);
        let st = self.child.wait().unwrap();
        assert!(st.success(), "the agent exited {st}: {}", self.log());
        self.log()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run a program: Ok(exit code) or the exec error's errno.
///
/// ETXTBSY is retried for a while: the tests in this binary run on several
/// threads, and a child forked by another test between this thread's open
/// and close of a file it rewrites holds a copy of the writable descriptor
/// until that child execs. The agent opens what it checks read-only, so the
/// busy file is never its doing.
fn run(path: &Path) -> Result<i32, i32> {
    const ETXTBSY: i32 = 26;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match Command::new(path)
            .arg("hello")
            .stdout(Stdio::null())
            .status()
        {
            Ok(s) => return Ok(s.code().unwrap_or(-1)),
            Err(e) if e.raw_os_error() == Some(ETXTBSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.raw_os_error().unwrap_or(-1)),
        }
    }
}

const EPERM: i32 = 1;

/// Wait until `cond` holds (the status file is rewritten every 2 s).
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn lockdown_allows_the_list_denies_the_rest_and_sees_a_rewrite() {
    let Some(w) = World::new() else { return };
    assert_eq!(
        run(&w.m("unlisted")),
        Ok(1),
        "before the agent, everything runs"
    );
    let a = w.agent(&[]);
    assert_eq!(run(&w.m("allowed")), Ok(0));
    assert_eq!(run(&w.m("allowed")), Ok(0), "a cache hit");
    assert_eq!(run(&w.m("unlisted")), Err(EPERM));
    // A renamed copy of a denied program is the same bytes: denied.
    std::fs::copy(w.m("unlisted"), w.m("renamed")).unwrap();
    assert_eq!(run(&w.m("renamed")), Err(EPERM));
    // Rewrite the allowed file in place with other bytes: hashed again.
    std::fs::write(w.m("allowed"), std::fs::read("/bin/false").unwrap()).unwrap();
    assert_eq!(
        run(&w.m("allowed")),
        Err(EPERM),
        "a rewritten binary kept its old verdict"
    );
    // And back: allowed again.
    std::fs::write(w.m("allowed"), std::fs::read("/bin/true").unwrap()).unwrap();
    assert_eq!(run(&w.m("allowed")), Ok(0));
    // Outside the mount nothing is decided.
    assert_eq!(run(Path::new("/bin/false")), Ok(1));
    // A root-owned file no one else may write is allowed by the kernel
    // until modified (an ignore mark); a group-writable one is asked about
    // every time and answered from the agent's cache.
    std::fs::copy("/bin/true", w.m("shared")).unwrap();
    let sha_true = sha256(&w.m("shared"));
    assert_eq!(sha_true, sha256(Path::new("/bin/true")));
    std::fs::set_permissions(
        w.m("shared"),
        std::os::unix::fs::PermissionsExt::from_mode(0o775),
    )
    .unwrap();
    for _ in 0..3 {
        assert_eq!(run(&w.m("shared")), Ok(0));
    }
    eventually("the counters", || {
        let s = w.status();
        s["exec"]["denied"] == 3
            && s["exec"]["cache_hits"].as_u64() >= Some(2)
            && s["exec"]["kernel_cached"].as_u64() >= Some(1)
    });
    let st = w.status();
    assert_eq!(st["running"], true);
    assert_eq!(st["mode"], "lockdown");
    assert_eq!(st["policy_version"], 1);
    assert_eq!(st["gateway"], "none (offline)");
    let log = a.stop();
    assert!(log.contains("denied exec of"), "{log}");
    assert!(log.contains("no rule: default deny"), "{log}");
    // Stopped cleanly: status says so (exit 3), exec is back to normal.
    let o = satchel()
        .args(["agent", "status", "--state-dir"])
        .arg(&w.state)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&o.stdout).contains("running:        no"));
    assert_eq!(run(&w.m("unlisted")), Ok(1));
    // Every deny and the first sight of each allowed file waits in the spool
    // (no gateway): 3 denies, 3 hashed allows, start, stop.
    assert_eq!(w.status()["spool_waiting"], 8);
}

#[test]
fn monitor_mode_runs_the_unlisted_program_and_reports_it() {
    let Some(w) = World::new() else { return };
    let a = w.agent(&["--mode", "monitor"]);
    assert_eq!(run(&w.m("unlisted")), Ok(1), "monitor mode denied");
    assert_eq!(run(&w.m("allowed")), Ok(0));
    eventually("the monitored count", || {
        w.status()["exec"]["monitored"] == 1
    });
    assert_eq!(w.status()["mode"], "monitor");
    let log = a.stop();
    assert!(log.contains("monitor mode: would deny exec of"), "{log}");

    // The bundle's own mode applies without --mode.
    w.bundle(2, "org.key", &["allowed"], "monitor");
    let a = w.agent(&[]);
    assert_eq!(run(&w.m("unlisted")), Ok(1));
    a.stop();
}

#[test]
fn bad_or_older_bundles_are_refused_and_the_old_one_stays() {
    let Some(w) = World::new() else { return };
    w.bundle(5, "org.key", &["allowed"], "lockdown");
    let a = w.agent(&["--refresh-interval", "1h"]);
    assert_eq!(run(&w.m("later")), Err(EPERM));
    let hup = |what: &str| {
        let before = a.log().len();
        a.signal(rustix::process::Signal::HUP);
        eventually(what, || a.log().len() > before);
    };

    // Older: refused.
    w.bundle(4, "org.key", &["allowed", "later"], "lockdown");
    hup("the rollback refusal");
    assert!(a.log().contains("older than version 5"), "{}", a.log());
    assert_eq!(run(&w.m("later")), Err(EPERM));
    // Another key: refused.
    w.bundle(6, "other.key", &["allowed", "later"], "lockdown");
    hup("the wrong-key refusal");
    assert!(a.log().contains("not by the bundle key"), "{}", a.log());
    assert_eq!(run(&w.m("later")), Err(EPERM));
    // A changed byte: refused.
    w.bundle(6, "org.key", &["allowed"], "lockdown");
    let text = std::fs::read_to_string(w.p("policy.bundle")).unwrap();
    std::fs::write(
        w.p("policy.bundle"),
        text.replace("\"version\": 6", "\"version\": 9"),
    )
    .unwrap();
    hup("the bad-signature refusal");
    assert!(a.log().contains("signature does not verify"), "{}", a.log());
    assert_eq!(run(&w.m("later")), Err(EPERM));
    assert_eq!(run(&w.m("allowed")), Ok(0));
    eventually("the status", || w.status()["bundle_refused"].is_string());
    assert_eq!(w.status()["policy_version"], 5);

    // Newer and good: in force at once.
    w.bundle(7, "org.key", &["allowed", "later"], "lockdown");
    hup("the new bundle");
    eventually("version 7", || run(&w.m("later")) == Ok(0));
    eventually("the status", || w.status()["policy_version"] == 7);
    // "allowed" ran under versions 5 and 7 and is allowed by the kernel now;
    // version 8 drops it: the change reaches the kernel too.
    assert_eq!(run(&w.m("allowed")), Ok(0));
    w.bundle(8, "org.key", &["later"], "lockdown");
    hup("version 8");
    eventually("version 8", || w.status()["policy_version"] == 8);
    assert_eq!(
        run(&w.m("allowed")),
        Err(EPERM),
        "a cached allow outlived the policy"
    );
    assert_eq!(run(&w.m("later")), Ok(0));
    w.bundle(9, "org.key", &["allowed", "later"], "lockdown");
    hup("version 9");
    eventually("version 9", || run(&w.m("allowed")) == Ok(0));
    a.stop();

    // A restart with an older file on disk keeps version 7 (kept in the
    // state directory) and says so.
    w.bundle(3, "org.key", &["allowed"], "lockdown");
    let a = w.agent(&[]);
    assert_eq!(run(&w.m("later")), Ok(0));
    assert_eq!(w.status()["policy_version"], 9);
    let log = a.stop();
    assert!(log.contains("stays in force"), "{log}");
}

#[test]
fn sigkill_leaves_exec_working_and_the_restart_reports_the_gap() {
    let Some(w) = World::new() else { return };
    let a = w.agent(&[]);
    assert_eq!(run(&w.m("unlisted")), Err(EPERM));
    let mut a = a;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    drop(a);
    // The kernel dropped the marks with the group: exec works.
    assert_eq!(run(&w.m("unlisted")), Ok(1));
    std::thread::sleep(Duration::from_millis(300));
    let a = w.agent(&[]);
    assert_eq!(
        run(&w.m("unlisted")),
        Err(EPERM),
        "the restart does not enforce"
    );
    assert!(
        a.log().contains("stopped without shutting down"),
        "{}",
        a.log()
    );
    let gap = w.status()["last_gap"].clone();
    let (from, to) = (
        gap["from_ms"].as_i64().unwrap(),
        gap["to_ms"].as_i64().unwrap(),
    );
    assert!(to - from >= 300, "{gap}");
    let o = satchel()
        .args(["agent", "status", "--state-dir"])
        .arg(&w.state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("exec unenforced for"));
    a.stop();
}

#[test]
fn the_agent_syncs_on_demand_and_checks_in_user_changes() {
    let Some(w) = World::new() else { return };
    let gw = w.p("gw");
    let src = w.p("src");
    std::fs::create_dir_all(src.join("base-os/etc")).unwrap();
    std::fs::write(src.join("base-os/etc/motd"), "welcome\n").unwrap();
    std::fs::create_dir_all(src.join("user-data/Documents")).unwrap();
    std::fs::write(src.join("user-data/Documents/a.txt"), "a\n").unwrap();
    ok(&[
        "image",
        "build",
        "--data",
        gw.to_str().unwrap(),
        "--image",
        "classroom",
        "--layer",
        &format!("base-os={}", src.join("base-os").display()),
        "--layer",
        &format!("user-data={}", src.join("user-data").display()),
    ]);
    std::fs::write(
        w.p("gw-policy.csv"),
        "p, device:t1, image, classroom, subscribe, allow\n",
    )
    .unwrap();
    let port = common::free_port();
    let policy = w.p("gw-policy.csv");
    let _g = common::serve(&gw, port, &["--policy", policy.to_str().unwrap()]);
    let cdir = w.p("client");
    common::device_cert(&gw, &cdir, "t1", &[]);
    let root = w.p("root");
    let a = w.agent_online(
        &gw,
        port,
        &cdir,
        &[
            "--image",
            "classroom",
            "--into",
            root.to_str().unwrap(),
            "--sync-interval",
            "1h",
        ],
    );
    // The first sync runs at start.
    eventually("the first sync", || {
        root.join("base-os/etc/motd").exists() && root.join("user-data/Documents/a.txt").exists()
    });
    assert_eq!(
        std::fs::read_to_string(root.join("user-data/Documents/a.txt")).unwrap(),
        "a\n"
    );
    eventually("the sync result", || {
        w.status()["last_sync"]["result"] == "ok"
    });
    // A user change goes up on demand (SIGUSR1).
    std::fs::write(root.join("user-data/Documents/b.txt"), "mine\n").unwrap();
    let before = w.status()["last_sync"]["at_ms"].as_i64().unwrap();
    a.signal(rustix::process::Signal::USR1);
    eventually("the on-demand sync", || {
        w.status()["last_sync"]["at_ms"]
            .as_i64()
            .is_some_and(|t| t > before)
    });
    assert_eq!(w.status()["last_sync"]["result"], "ok");
    a.stop();
    // The gateway holds the device's version of user-data, with b.txt.
    let out = ok(&[
        "audit",
        "list",
        "--json",
        "--db",
        &format!("sqlite:{}", gw.join("satchel.db").display()),
    ]);
    let entries: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let checkin = entries
        .iter()
        .find(|e| e["kind"] == "sync" && e["decision"] == "checkin")
        .unwrap_or_else(|| panic!("no check-in: {out}"));
    assert_eq!(checkin["subject"], "classroom/user-data");
    assert_eq!(checkin["details"]["from_client"], 1);
    let synced: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["kind"] == "agent.sync")
        .collect();
    assert_eq!(synced.len(), 2, "{out}");
    assert_eq!(synced[1]["details"]["checked_in"]["user-data"], 2);
    assert_eq!(synced[1]["details"]["kept"], serde_json::json!([]));
    assert_eq!(
        std::fs::read_to_string(root.join("user-data/Documents/b.txt")).unwrap(),
        "mine\n",
        "the sync lost the user's file"
    );
}

#[test]
fn offline_the_agent_spools_and_online_every_entry_lands_once() {
    let Some(w) = World::new() else { return };
    let gw = w.p("gw");
    let port = common::free_port();
    let g = common::serve(&gw, port, &[]);
    let cdir = w.p("client");
    common::device_cert(&gw, &cdir, "t1", &[]);
    let db = format!("sqlite:{}", gw.join("satchel.db").display());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let a = w.agent_online(
        &gw,
        port,
        &cdir,
        &["--deliver-interval", "300ms", "--refresh-interval", "300ms"],
    );
    assert_eq!(run(&w.m("unlisted")), Err(EPERM));
    eventually("delivery while online", || {
        let s = w.status();
        s["spool_waiting"] == 0 && s["gateway"] == "online"
    });
    drop(g);
    // Offline: still enforcing, entries wait.
    for _ in 0..5 {
        assert_eq!(run(&w.m("unlisted")), Err(EPERM));
    }
    assert_eq!(run(&w.m("allowed")), Ok(0));
    eventually("the spool to fill", || {
        w.status()["spool_waiting"].as_i64() >= Some(5)
    });
    eventually("the status to say offline", || {
        w.status()["gateway"]
            .as_str()
            .is_some_and(|g| g.starts_with("offline"))
    });
    let _g = common::serve(&gw, port, &[]);
    eventually("the spool to drain", || w.status()["spool_waiting"] == 0);

    // An admin puts a newer bundle on the gateway: the agent fetches it,
    // enforces it, and keeps it for an offline start.
    w.bundle_to(
        "v2.bundle",
        2,
        "org.key",
        &["allowed", "unlisted"],
        "lockdown",
    );
    let pki = gateway::Pki::init(&gw, &[]).unwrap();
    let admin = pki
        .issue_admin_cert("alice", Duration::from_secs(600))
        .unwrap();
    std::fs::write(w.p("alice.crt"), admin.cert_pem).unwrap();
    std::fs::write(w.p("alice.key"), admin.key_pem).unwrap();
    let o = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-X", "PUT", "--cacert"])
        .arg(gw.join("ca.crt"))
        .arg("--cert")
        .arg(w.p("alice.crt"))
        .arg("--key")
        .arg(w.p("alice.key"))
        .arg("--data-binary")
        .arg(format!("@{}", w.p("v2.bundle").display()))
        .arg(format!("https://127.0.0.1:{port}/v1/admin/bundle"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("\"version\":2"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    eventually("the gateway's bundle", || run(&w.m("unlisted")) == Ok(1));
    assert_eq!(
        std::fs::read(w.p("policy.bundle")).unwrap(),
        std::fs::read(w.p("v2.bundle")).unwrap(),
        "the fetched bundle was not kept for an offline start"
    );
    a.stop();

    let entries: Vec<audit::entry::Entry> = rt.block_on(async {
        let store = audit::store::Store::open(&db).await.unwrap();
        store
            .entries(0, None, None)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.entry)
            .filter(|e| e.kind.starts_with("agent."))
            .collect()
    });
    let mut seqs: Vec<i64> = entries
        .iter()
        .map(|e| e.details["spool"]["seq"].as_i64().unwrap())
        .collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), n, "an entry landed twice");
    assert_eq!(
        seqs,
        (1..=n as i64).collect::<Vec<_>>(),
        "an entry is missing"
    );
    let denies = entries
        .iter()
        .filter(|e| e.kind == "agent.exec" && e.decision == "deny")
        .count();
    assert!(denies >= 6, "{denies} denies");
    assert!(entries
        .iter()
        .any(|e| e.kind == "agent.agent" && e.subject == "bundle" && e.decision == "accepted"));
    assert!(entries.iter().all(|e| e.actor == "device:t1"));
    assert!(entries
        .iter()
        .any(|e| e.kind == "agent.agent" && e.decision == "stop"));
}

#[test]
fn the_agent_re_attests_before_expiry_and_backs_off_on_a_tampered_boot() {
    let Some(w) = World::new() else { return };
    let swtpm = tpm_sim_tests::Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let t = swtpm.tcti();
    let chain = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    let s = |p: &str| w.p(p).to_string_lossy().into_owned();
    let with_tpm = |args: &[&str]| {
        let o = satchel()
            .args(args)
            .env("SATCHEL_TPM", &t)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    with_tpm(&[
        "measure",
        "--chain",
        chain.to_str().unwrap(),
        "--log",
        &s("boot.log"),
    ]);
    with_tpm(&[
        "predict",
        "--chain",
        chain.to_str().unwrap(),
        "--banks",
        "sha256",
        "--sign-key",
        &s("org.key"),
        "--out",
        &s("ref.json"),
    ]);
    let port = common::free_port();
    let gw = s("gw");
    let _g = common::serve(
        Path::new(&gw),
        port,
        &[
            "--ek-ca",
            swtpm.ek_ca_dir().to_str().unwrap(),
            "--reference",
            &s("ref.json"),
            "--reference-key",
            &s("org.key.pub"),
            "--cert-lifetime",
            "16s",
        ],
    );
    let url = format!("https://127.0.0.1:{port}");
    let ca = format!("{gw}/ca.crt");
    let token = with_tpm(&[
        "gateway",
        "enroll-token",
        "--data",
        &gw,
        "--device-id",
        "t1",
    ]);
    with_tpm(&[
        "client",
        "enroll",
        "--gateway",
        &url,
        "--ca",
        &ca,
        "--data",
        &s("client"),
        "--device-id",
        "t1",
        "--token",
        token.trim(),
    ]);
    // No certificate yet: the agent attests at once. With 16 s certificates
    // and a 15 s margin every 5 s check finds it due, but after a success
    // the agent waits half the validity (8 s) before the next.
    let a = w.agent_online(
        Path::new(&gw),
        port,
        &w.p("client"),
        &[
            "--tpm",
            &t,
            "--log",
            &s("boot.log"),
            "--reattest-margin",
            "15s",
        ],
    );
    let until = || w.status()["attested_until_ms"].as_i64();
    eventually("the first attestation", || until().is_some());
    let first = until().unwrap();
    eventually("a second attestation", || {
        until().is_some_and(|u| u > first)
    });
    let second = until().unwrap();
    assert!(
        second - first >= 7_000,
        "attested again after {} ms, before half the validity",
        second - first
    );
    assert!(w.status()["attest_error"].is_null());

    // Tamper with the boot: the next attestation is refused, named, and retried later.
    let mut tpm = attest::tpm::Tpm::open(&t).unwrap();
    tpm.extend(8, &[(attest::HashAlg::Sha256, vec![0xab; 32])])
        .unwrap();
    drop(tpm);
    eventually("the refusal", || w.status()["attest_error"].is_string());
    let err = w.status()["attest_error"].as_str().unwrap().to_owned();
    assert!(err.contains("PCR 8"), "{err}");
    let log = a.stop();
    assert!(log.contains("attestation failed, next try in 5 s"), "{log}");
    assert!(log.contains("attested as t1"), "{log}");
}

#[test]
fn systemd_hears_ready_only_once_enforcement_is_in_place() {
    let Some(w) = World::new() else { return };
    let sock_path = w.p("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let log = w.p("agent-notify.log");
    let mut child = satchel()
        .args(["agent", "--bundle"])
        .arg(w.p("policy.bundle"))
        .arg("--bundle-key")
        .arg(w.p("org.key.pub"))
        .args(["--subject", "device:t1", "--mount"])
        .arg(&w.fs.mnt)
        .arg("--state-dir")
        .arg(&w.state)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    // A signal to this test process (another test's child ending) cuts a
    // wait short: wait again.
    let recv = |buf: &mut [u8]| loop {
        match sock.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => break r,
        }
    };
    let n = recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "no READY=1 from the agent: {e}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.contains("READY=1"), "{said}");
    // By then the mount is marked: an unlisted program is refused at once.
    assert_eq!(run(&w.m("unlisted")), Err(EPERM));
    assert_eq!(run(&w.m("allowed")), Ok(0));
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let n = recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(child.wait().unwrap().success());
}
