//! The `.deb` on a clean Debian: a minimal root made by debootstrap (from
//! Debian's mirror, `SATCHEL_DEBIAN_MIRROR` to use another), the package
//! built by `scripts/package-deb.sh` from this build's binary and installed
//! there with apt, which brings its dependencies. Then the units as
//! systemd reads them (`systemd-analyze verify`), the gateway's started as
//! its unit starts it (its user, its configuration file) and answering
//! curl, the agent's command line, the manual pages, completions and the
//! sysctl file in place.
//!
//! Needs root and the network to Debian's mirror (CI runs as root);
//! elsewhere it says why it skipped, and under `CI=true` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{free_port, Served};

fn must(cmd: &mut Command) -> Output {
    let o = cmd.output().unwrap();
    assert!(
        o.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// Unmounts `/proc` in the root when the test ends.
struct ProcMount(PathBuf);

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn in_root(root: &Path, script: &str) -> Command {
    let mut c = Command::new("/usr/sbin/chroot");
    c.arg(root)
        .args(["/usr/bin/env", "-i"])
        .args([
            "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
            "DEBIAN_FRONTEND=noninteractive",
            "LANG=C",
        ])
        .args(["sh", "-c", script]);
    c
}

#[test]
fn the_package_installs_on_a_clean_debian_and_its_units_start() {
    if !common::root_with("debootstrap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let mirror = std::env::var("SATCHEL_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".to_owned());
    must(
        Command::new("debootstrap")
            .args(["--variant=minbase", "bookworm"])
            .arg(&root)
            .arg(&mirror),
    );

    // The package, from this build's binary.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = must(
        Command::new(repo.join("scripts/package-deb.sh"))
            .arg(dir.path().join("deb"))
            .env("BIN", env!("CARGO_BIN_EXE_satchel"))
            .env("COMPRESS", "gzip"),
    );
    let deb = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    std::fs::copy(&deb, root.join("tmp/satchel.deb")).unwrap();

    must(
        Command::new("mount")
            .args(["-t", "proc", "proc"])
            .arg(root.join("proc")),
    );
    let _proc = ProcMount(root.join("proc"));
    // apt brings the TPM libraries the binary links; systemd only to read
    // the units.
    must(&mut in_root(
        &root,
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends /tmp/satchel.deb systemd \
         curl sqlite3 rsync sudo ca-certificates",
    ));
    let o = must(&mut in_root(
        &root,
        "satchel --version && satchel agent --help | head -1",
    ));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("satchel "), "{text}");
    for f in [
        "usr/share/man/man1/satchel.1.gz",
        "usr/share/man/man1/satchel-gateway.1.gz",
        "usr/share/bash-completion/completions/satchel",
        "usr/lib/sysctl.d/90-satchel-agent.conf",
        "lib/systemd/system/satchel-gateway.service",
        "lib/systemd/system/satchel-agent.service",
        "usr/share/doc/satchel/console.md",
    ] {
        assert!(root.join(f).exists(), "{f} is not installed");
    }
    // The user the gateway's unit runs as, made by the package.
    must(&mut in_root(&root, "getent passwd satchel"));
    // The units as systemd reads them.
    let o = in_root(
        &root,
        "systemd-analyze verify --man=no /lib/systemd/system/satchel-gateway.service /lib/systemd/system/satchel-agent.service 2>&1",
    )
    .output()
    .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        !said.contains("Unknown") && !said.contains("Failed") && !said.contains("not executable"),
        "{said}"
    );

    // The gateway as its unit starts it: its user, its state directory,
    // its configuration file; curl reaches it with the CA it made.
    let unit =
        std::fs::read_to_string(root.join("lib/systemd/system/satchel-gateway.service")).unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap()
        .to_owned();
    assert_eq!(
        exec,
        "/usr/bin/satchel gateway serve --config /etc/satchel/gateway.toml"
    );
    let port = free_port();
    std::fs::create_dir_all(root.join("etc/satchel")).unwrap();
    std::fs::write(
        root.join("etc/satchel/gateway.toml"),
        format!("data = \"/var/lib/satchel-gateway\"\nlisten = \"127.0.0.1:{port}\"\n"),
    )
    .unwrap();
    must(&mut in_root(
        &root,
        "install -d -m 0700 -o satchel -g satchel /var/lib/satchel-gateway",
    ));
    let mut start = Command::new("/usr/sbin/chroot");
    start
        .arg("--userspec=satchel:satchel")
        .arg(&root)
        .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "sh", "-c"])
        .arg(format!("umask 0077 && exec {exec}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _served = Served(start.spawn().unwrap());
    let ca = root.join("var/lib/satchel-gateway/ca.crt");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "2", "--cacert"])
            .arg(&ca)
            .arg(format!("https://127.0.0.1:{port}/v1/health"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("\"ok\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the packaged gateway did not answer: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // What it made belongs to its user, readable by no one else.
    let key = root.join("var/lib/satchel-gateway/ca.key");
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077,
        0
    );
    drop(_served);
    follow_the_deploy_guide(&root, &exec, repo);
}

/// The `sh` blocks under each `## N.` heading of docs/deploy.md, as logical
/// lines (continuations joined), and the `toml` block.
fn deploy_guide(text: &str) -> (Vec<(u32, String)>, String) {
    let (mut lines, mut toml) = (Vec::new(), String::new());
    let (mut step, mut fence) = (0u32, None::<String>);
    let mut pending = String::new();
    for line in text.lines() {
        if let Some(kind) = &fence {
            if line.starts_with("```") {
                fence = None;
                continue;
            }
            if kind == "toml" {
                toml.push_str(line);
                toml.push('\n');
            } else if kind == "sh" {
                match line.strip_suffix('\\') {
                    Some(part) => pending.push_str(part),
                    None => {
                        pending.push_str(line);
                        lines.push((step, std::mem::take(&mut pending)));
                    }
                }
            }
        } else if let Some(k) = line.strip_prefix("```") {
            fence = Some(k.to_owned());
        } else if let Some(h) = line.strip_prefix("## ") {
            step = h
                .split('.')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    (lines, toml)
}

/// docs/deploy.md from step 2 on, in the root where the package is
/// installed: its configuration as written (listen addresses on free
/// ports), and its commands as written, run by root in bash, in order.
fn follow_the_deploy_guide(root: &Path, exec: &str, repo: &Path) {
    let (lines, toml) =
        deploy_guide(&std::fs::read_to_string(repo.join("docs/deploy.md")).unwrap());
    let (port, proxy_port) = (free_port(), free_port());
    let toml = toml
        .replace("0.0.0.0:8443", &format!("127.0.0.1:{port}"))
        .replace("0.0.0.0:3128", &format!("127.0.0.1:{proxy_port}"));
    assert!(toml.contains(&format!("127.0.0.1:{port}")), "{toml}");
    // What the configuration names, as the organisation hands it over: the
    // policy, its signed reference and key, a TPM vendor's EK CA.
    let etc = root.join("etc/satchel");
    std::fs::write(etc.join("gateway.toml"), &toml).unwrap();
    std::fs::copy(
        repo.join("examples/policy/school.csv"),
        etc.join("school.csv"),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_satchel");
    must(
        Command::new(bin)
            .args(["keygen", "--out"])
            .arg(etc.join("org.key")),
    );
    must(
        Command::new(bin)
            .arg("predict")
            .arg("--chain")
            .arg(repo.join("examples/boot-chain/chain.toml"))
            .arg("--sign-key")
            .arg(etc.join("org.key"))
            .arg("--out")
            .arg(etc.join("reference.json")),
    );
    std::fs::remove_file(etc.join("org.key")).unwrap();
    std::fs::create_dir_all(etc.join("ek-ca")).unwrap();
    must(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args([
                "-nodes",
                "-subj",
                "/CN=TPM vendor EK CA",
                "-days",
                "30",
                "-keyout",
            ])
            .arg(etc.join("ek-ca/vendor.key"))
            .arg("-out")
            .arg(etc.join("ek-ca/vendor.pem")),
    );
    std::fs::remove_file(etc.join("ek-ca/vendor.key")).unwrap();
    let mut hosts = std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
    hosts.push_str("127.0.0.1 gateway.school.example\n");
    std::fs::write(root.join("etc/hosts"), hosts).unwrap();
    // The images step 7 builds.
    for (from, to) in [
        ("examples/image/base-os", "srv/images/base-os"),
        ("examples/image/user-data", "srv/images/apps"),
    ] {
        std::fs::create_dir_all(root.join(to).parent().unwrap()).unwrap();
        must(
            Command::new("cp")
                .arg("-a")
                .arg(repo.join(from))
                .arg(root.join(to)),
        );
    }

    let mut start = Command::new("/usr/sbin/chroot");
    start
        .arg("--userspec=satchel:satchel")
        .arg(root)
        .args(["/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "sh", "-c"])
        .arg(format!("umask 0077 && exec {exec}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _served = Served(start.spawn().unwrap());
    let health = || {
        in_root(
            root,
            &format!("curl -sS --max-time 2 --cacert /var/lib/satchel-gateway/ca.crt https://gateway.school.example:{port}/v1/health"),
        )
        .output()
        .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&health().stdout).contains("\"ok\"") {
        assert!(
            Instant::now() < deadline,
            "the gateway of the guide's configuration did not answer"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let mut said = String::new();
    let mut ran = 0;
    for (step, line) in lines.iter().filter(|(s, _)| (4..=8).contains(s)) {
        if line.trim_start().starts_with("curl ...") {
            continue;
        }
        let line = line
            .replace(":8443", &format!(":{port}"))
            .replace("audit-2026-11-23.jsonl", "/backup/audit-$(date +%F).jsonl")
            .replace(
                "--pubkey audit.key.pub",
                "--pubkey /var/lib/satchel-gateway/audit.key.pub",
            );
        let mut c = Command::new("/usr/sbin/chroot");
        c.arg(root)
            .args([
                "/usr/bin/env",
                "-i",
                "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME=/root",
                "LANG=C",
            ])
            .args(["bash", "-c"])
            .arg(format!("cd /root && {line}"));
        let o = c.output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(
            o.status.success(),
            "step {step}: `{line}` failed: {out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        said.push_str(&out);
        ran += 1;
    }
    assert!(ran >= 15, "only {ran} commands found in docs/deploy.md");
    // What the steps said: the admin's devices route answered, a token was
    // made and voided, the image built and listed.
    assert!(said.contains("\"devices\""), "{said}");
    assert!(said.contains("classroom-2026/base-os: version 1"), "{said}");
    assert!(said.contains("base-os v1"), "{said}");
    for f in ["backup", "root/alice/alice.key", "root/ca.crt"] {
        assert!(root.join(f).exists(), "{f} missing after the guide");
    }
    // And the gateway still answers, its database still its own.
    assert!(String::from_utf8_lossy(&health().stdout).contains("\"ok\""));
    let o = in_root(root, "find /var/lib/satchel-gateway ! -user satchel")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "",
        "files the gateway's user does not own"
    );
}
