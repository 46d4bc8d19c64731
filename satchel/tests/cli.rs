//! The `satchel` binary's contracts: flags, exit codes and JSON shapes of
//! `eventlog show|replay`, `measure`, `predict` and `pcrs`, run as a user
//! would, against real fixtures and a real swtpm.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;
use tpm_sim_tests::Swtpm;

fn satchel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .env_remove("SATCHEL_TPM")
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap()
}

fn ok_json(args: &[&str]) -> Value {
    let out = satchel(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A real firmware log from the shared fixtures.
fn fixture(name: &str) -> String {
    let p = tpm_sim_tests::fixtures_dir().join(name);
    p.to_string_lossy().into_owned()
}

fn sample_chain() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain/chain.toml");
    p.to_string_lossy().into_owned()
}

#[test]
fn replay_json_maps_bank_to_index_to_lowercase_hex() {
    let v = ok_json(&[
        "eventlog",
        "replay",
        "--json",
        &fixture("gce-rhel8-sb-agile-sha1-sha256-sha384.bin"),
    ]);
    let pcrs = v["pcrs"].as_object().unwrap();
    assert_eq!(
        pcrs.keys().collect::<Vec<_>>(),
        ["sha1", "sha256", "sha384"]
    );
    assert_eq!(
        v["pcrs"]["sha256"]["0"],
        "24af52a4f429b71a3184a6d64cddad17e54ea030e2aa6576bf3a5a3d8bd3328f"
    );
    assert_eq!(
        v["pcrs"]["sha1"]["14"],
        "1f5149668c40524e01be9cbc3ad527645943f148"
    );
    let hygon = ok_json(&[
        "eventlog",
        "replay",
        "--json",
        &fixture("hygon-hcrtm-sha1-sha256-sm3.bin"),
    ]);
    assert!(hygon["pcrs"]["sm3_256"]["0"].is_string());
    assert_eq!(
        hygon["pcrs"]["sha1"]["0"],
        "15f4e6ca457d1af6bc49511a93ba3500ad69acc5"
    );
}

#[test]
fn bad_input_exits_non_zero_with_the_offset_on_stderr() {
    for name in [
        "malformed-bogus-34bytes.bin",
        "ima-binary-template-ima-ng-sha1.bin",
    ] {
        for cmd in ["replay", "show"] {
            let out = satchel(&["eventlog", cmd, &fixture(name)]);
            assert!(!out.status.success(), "{name}");
            assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("byte offset"), "{name}: {err}");
        }
    }
    let out = satchel(&["eventlog", "replay", "/nonexistent/log"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/log"));
}

#[test]
fn show_lists_every_event_of_every_fixture() {
    let v = ok_json(&[
        "eventlog",
        "show",
        "--json",
        &fixture("gce-sp800155-noaction-events.bin"),
    ]);
    let events = v["events"].as_array().unwrap();
    assert_eq!(v["format"], "crypto_agile");
    assert_eq!(events[0]["data"]["kind"], "spec_id");
    assert!(events.iter().any(|e| e["data"]["kind"] == "sp800155"));
    let text = satchel(&["eventlog", "show", &fixture("legacy-sha1-option-rom.bin")]);
    assert!(text.status.success());
    let lines = String::from_utf8(text.stdout).unwrap();
    assert_eq!(lines.lines().count(), 61);
    assert!(lines.contains("EV_EFI_BOOT_SERVICES_DRIVER"));
}

#[test]
fn measure_then_replay_equals_predict_and_pcrs() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("boot.log");
    let log = log.to_str().unwrap();
    let tcti = swtpm.tcti();
    let m = ok_json(&[
        "measure",
        "--chain",
        &sample_chain(),
        "--tpm",
        &tcti,
        "--log",
        log,
        "--json",
    ]);
    assert_eq!(m["agree"], true);
    let replayed = ok_json(&["eventlog", "replay", "--json", log]);
    let banks = "sha1,sha256,sha384,sha512";
    let predicted = ok_json(&[
        "predict",
        "--chain",
        &sample_chain(),
        "--banks",
        banks,
        "--json",
    ]);
    assert_eq!(replayed["pcrs"], predicted["pcrs"]);
    assert!(
        replayed["findings"].as_array().unwrap().is_empty(),
        "{}",
        replayed["findings"]
    );
    let read = ok_json(&["pcrs", "--tpm", &tcti, "--pcrs", "0-9,13", "--json"]);
    assert_eq!(read["pcrs"], replayed["pcrs"]);
}

#[test]
fn the_tpm_comes_from_satchel_tpm_when_no_flag_is_given() {
    let swtpm = Swtpm::start().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(["pcrs", "--pcrs", "16", "--json"])
        .env("SATCHEL_TPM", swtpm.tcti())
        .env("TSS2_LOG", "all+none")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["pcrs"]["sha256"]["16"], "00".repeat(32));
}

#[test]
fn an_unreachable_tpm_is_a_clear_error() {
    let out = satchel(&["pcrs", "--tpm", "swtpm:host=127.0.0.1,port=1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("swtpm:host=127.0.0.1,port=1"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_help_teaches_by_example() {
    let out = satchel(&["predict"]);
    assert_eq!(out.status.code(), Some(2));
    let out = satchel(&["pcrs", "--pcrs", "7-3"]);
    assert_eq!(out.status.code(), Some(2));
    for cmd in [
        &["eventlog", "replay", "--help"][..],
        &["measure", "--help"],
        &["predict", "--help"],
    ] {
        let help = String::from_utf8(satchel(cmd).stdout).unwrap();
        assert!(help.contains("Examples:"), "{cmd:?}");
    }
}

#[test]
fn the_tpm_comes_from_the_config_file_below_env_and_flag() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("satchel.toml");
    std::fs::write(&conf, format!("[tpm]\ntcti = \"{}\"\n", swtpm.tcti())).unwrap();
    let conf = conf.to_str().unwrap();
    let v = ok_json(&["--config", conf, "pcrs", "--pcrs", "16", "--json"]);
    assert_eq!(v["pcrs"]["sha1"]["16"], "00".repeat(20));
    // The flag beats the file.
    let out = satchel(&[
        "--config",
        conf,
        "pcrs",
        "--tpm",
        "swtpm:host=127.0.0.1,port=1",
    ]);
    assert!(!out.status.success());
    // A config with an unknown key is refused, naming the file.
    std::fs::write(dir.path().join("bad.toml"), "[tpm]\ntctl = \"x\"\n").unwrap();
    let bad = dir.path().join("bad.toml");
    let out = satchel(&["--config", bad.to_str().unwrap(), "pcrs"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.toml"));
}

#[test]
fn replay_of_several_logs_prints_one_json_line_each() {
    let names = [
        "gce-debian10-legacy-sha1.bin",
        "fedora37-systemd-boot-sha256only.bin",
    ];
    let files: Vec<String> = names.iter().map(|n| fixture(n)).collect();
    let mut args = vec!["eventlog", "replay", "--json"];
    args.extend(files.iter().map(String::as_str));
    let out = satchel(&args);
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (line, file) in lines.iter().zip(&files) {
        assert_eq!(line["file"], file.as_str());
        let alone = ok_json(&["eventlog", "replay", "--json", file]);
        assert_eq!(line["pcrs"], alone["pcrs"]);
    }
    // A bad log among good ones fails the run and names itself.
    let bad = fixture("malformed-bogus-34bytes.bin");
    let out = satchel(&["eventlog", "replay", &files[0], &bad]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("malformed-bogus-34bytes.bin"));
}

#[test]
fn completions_and_manual_pages_cover_every_subcommand() {
    let o = satchel(&["completions", "bash"]);
    assert!(o.status.success());
    let bash = String::from_utf8_lossy(&o.stdout);
    assert!(
        bash.contains("_satchel") && bash.contains("--root"),
        "{bash}"
    );
    let dir = tempfile::tempdir().unwrap();
    let man = dir.path().join("man1");
    let o = satchel(&["man", "--out", man.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for page in [
        "satchel.1",
        "satchel-agent.1",
        "satchel-gateway-serve.1",
        "satchel-client-proxy.1",
    ] {
        let text =
            std::fs::read_to_string(man.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
}

#[test]
fn the_debian_package_holds_the_binary_pages_completions_units_and_settings() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build the package"
        );
        eprintln!("SKIPPED: no dpkg-deb");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/package-deb.sh");
    let o = Command::new("bash")
        .arg(script)
        .arg(dir.path())
        .env("BIN", env!("CARGO_BIN_EXE_satchel"))
        .env("COMPRESS", "none")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let deb = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let contents = Command::new("dpkg-deb")
        .args(["--contents", &deb])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&contents.stdout);
    for f in [
        "./usr/bin/satchel",
        "./usr/share/man/man1/satchel-agent.1.gz",
        "./usr/share/bash-completion/completions/satchel",
        "./lib/systemd/system/satchel-agent.service",
        "./lib/systemd/system/satchel-gateway.service",
        "./usr/lib/sysctl.d/90-satchel-agent.conf",
        "./usr/share/doc/satchel/agent.md",
    ] {
        assert!(list.contains(f), "{f} is not in the package: {list}");
    }
    let info = Command::new("dpkg-deb")
        .args(["--field", &deb, "Package", "Version"])
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: satchel") && info.contains("Version: "),
        "{info}"
    );
    // The unit in the package runs the packaged binary and waits for the
    // agent to say enforcement is in place.
    let x = dir.path().join("x");
    let ok = Command::new("dpkg-deb")
        .args(["-x", &deb])
        .arg(&x)
        .status()
        .unwrap();
    assert!(ok.success());
    let unit = std::fs::read_to_string(x.join("lib/systemd/system/satchel-agent.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/satchel agent") && unit.contains("Type=notify"),
        "{unit}"
    );
}

/// The attacker's review: the guest's network relay wrote through Rust's
/// line-buffered stdout, so bytes after the last newline (a TLS record, a
/// prompt) waited in the buffer while the peer waited for an answer.
/// Reproduced first: "abc" never reached the guest's side.
#[test]
fn the_guest_relay_passes_bytes_without_waiting_for_a_newline() {
    use std::io::{Read as _, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let gate = dir.path().join("net.gate");
    device::guest::network::open_gate(&gate).unwrap();
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let to = server.local_addr().unwrap().to_string();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = server.accept().unwrap();
        s.write_all(b"abc").unwrap();
        // Waits for the guest's answer before it says anything more.
        let mut answer = [0u8; 3];
        s.read_exact(&mut answer).unwrap();
        answer
    });
    let mut relay = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "guest",
            "relay",
            "--gate",
            gate.to_str().unwrap(),
            "--to",
            &to,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = relay.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = [0u8; 3];
        let r = out.read_exact(&mut got).map(|()| got);
        let _ = tx.send(r.map_err(|e| e.to_string()));
    });
    let got = rx.recv_timeout(std::time::Duration::from_secs(5));
    if got.is_err() {
        let _ = relay.kill();
    }
    assert_eq!(
        got.map_err(|_| "no bytes within 5 s").unwrap().unwrap(),
        *b"abc"
    );
    let mut stdin = relay.stdin.take().unwrap();
    stdin.write_all(b"xyz").unwrap();
    drop(stdin);
    assert_eq!(peer.join().unwrap(), *b"xyz");
    let _ = relay.kill();
    let _ = relay.wait();
}

/// The attacker's review: a lower `--min-epoch` overrode the epoch the
/// launch gate handed on, and a `$SATCHEL_EPOCH` that was not UTF-8 turned
/// the check off. Both now refuse before anything is made.
#[test]
fn the_epoch_check_takes_the_higher_of_the_gate_and_the_flag() {
    use std::os::unix::ffi::OsStrExt as _;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("org.key");
    let reference = dir.path().join("ref.json");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    assert!(satchel(&["keygen", "--out", &s(&key)]).status.success());
    // A signed reference bound to no epoch (0).
    let o = satchel(&[
        "predict",
        "--chain",
        &sample_chain(),
        "--sign-key",
        &s(&key),
        "--out",
        &s(&reference),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let start = |env: Option<&std::ffi::OsStr>, extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_satchel"));
        c.args(["guest", "start", "--root"])
            .arg(dir.path().join("no-root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--reference")
            .arg(&reference)
            .arg("--reference-key")
            .arg(dir.path().join("org.key.pub"))
            .arg("--unencrypted")
            .args(extra)
            .env_remove("SATCHEL_EPOCH");
        if let Some(v) = env {
            c.env("SATCHEL_EPOCH", v);
        }
        c.output().unwrap()
    };
    let epoch2 = Some(std::ffi::OsStr::new("2"));
    for o in [
        start(epoch2, &["--min-epoch", "0"]),
        start(epoch2, &[]),
        start(None, &["--min-epoch", "2"]),
    ] {
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("is for epoch 0, but this device's epoch counter stands at 2"),
            "{err}"
        );
    }
    let o = start(Some(std::ffi::OsStr::from_bytes(b"\xff2")), &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = start(Some(std::ffi::OsStr::new("two")), &[]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!dir.path().join("state").exists(), "nothing was made");
}
