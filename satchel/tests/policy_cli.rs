//! `satchel policy check|test|bundle` and `satchel run` as an admin and a
//! client use them: decisions with the deciding rule, exit codes (0 allow,
//! 1 deny, 2 bad input), JSON, bundles with signature and rollback checks,
//! lockdown and monitor, and decisions recorded in the audit log.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::Value;

fn satchel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .output()
        .unwrap()
}

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/policy")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

#[test]
fn check_prints_decision_and_rule_with_exit_codes() {
    let p = example("school.csv");
    let o = satchel(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--subject",
        "device:laptop-17",
        "--url",
        "https://en.wikipedia.org/wiki/Rust",
    ]);
    assert_eq!(code(&o), 0);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("allow:") && out.contains("line 9"), "{out}");

    let o = satchel(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--subject",
        "device:laptop-17",
        "--url",
        "https://en.wikipedia.org/wiki/x/../Special:Random",
    ]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("Special:*, *, deny"));

    let o = satchel(&[
        "policy",
        "check",
        "--policy",
        &p,
        "--subject",
        "device:laptop-17",
        "--url",
        "http://0x7f.1/",
    ]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stdout).contains("no rule: default deny"));

    // JSON, and casbin itself agrees.
    for extra in [&[][..], &["--casbin"][..]] {
        let mut args = vec![
            "policy",
            "check",
            "--policy",
            &p,
            "--subject",
            "device:laptop-17",
            "--url",
            "https://exam.school.example/submit",
            "--method",
            "post",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = satchel(&args);
        assert_eq!(code(&o), 0);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["decision"], "allow");
        assert_eq!(v["line"], 12);
        assert_eq!(v["action"], "POST");
    }

    // Bad input: 2.
    for args in [
        vec![
            "policy",
            "check",
            "--policy",
            &p,
            "--subject",
            "device:x",
            "--url",
            "https://user@evil.example/",
        ],
        vec![
            "policy",
            "check",
            "--policy",
            &p,
            "--subject",
            "device:x",
            "--app-hash",
            "xyz",
        ],
        vec![
            "policy",
            "check",
            "--policy",
            "/nonexistent",
            "--subject",
            "device:x",
            "--image",
            "a",
        ],
        vec![
            "policy",
            "check",
            "--policy",
            &p,
            "--subject",
            "device:x",
            "--app",
            "/nonexistent/prog",
        ],
    ] {
        assert_eq!(code(&satchel(&args)), 2, "{args:?}");
    }
}

#[test]
fn policy_from_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("s.db").display());
    assert_eq!(
        code(&satchel(&[
            "policy",
            "import",
            "--db",
            &db,
            "--policy",
            &example("school.csv")
        ])),
        0
    );
    let o = satchel(&[
        "policy",
        "check",
        "--db",
        &db,
        "--subject",
        "device:laptop-17",
        "--image",
        "classroom-2026",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let o = satchel(&[
        "policy",
        "check",
        "--db",
        &db,
        "--subject",
        "device:stranger",
        "--image",
        "classroom-2026",
        "--casbin",
    ]);
    assert_eq!(code(&o), 1);
    // An invalid file is refused and the stored policy stays.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "p, group:x, file, /etc, read, allow\n").unwrap();
    assert_ne!(
        code(&satchel(&[
            "policy",
            "import",
            "--db",
            &db,
            "--policy",
            bad.to_str().unwrap()
        ])),
        0
    );
    assert_eq!(
        code(&satchel(&[
            "policy",
            "check",
            "--db",
            &db,
            "--subject",
            "device:laptop-17",
            "--image",
            "classroom-2026"
        ])),
        0
    );
}

#[test]
fn test_reports_every_failing_row() {
    let p = example("school.csv");
    let o = satchel(&[
        "policy",
        "test",
        "--policy",
        &p,
        "--cases",
        &example("school-cases.csv"),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stdout));
    let dir = tempfile::tempdir().unwrap();
    let cases = dir.path().join("cases.csv");
    std::fs::write(
        &cases,
        "device:laptop-17,url,https://en.wikipedia.org/wiki/Rust,GET,deny\n\
         device:laptop-17,image,classroom-2026,subscribe,allow\n\
         device:laptop-18,url,https://exam.school.example/submit,POST,allow\n",
    )
    .unwrap();
    let o = satchel(&[
        "policy",
        "test",
        "--policy",
        &p,
        "--cases",
        cases.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 1);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("FAIL line 1") && out.contains("FAIL line 3") && !out.contains("FAIL line 2"),
        "{out}"
    );
    std::fs::write(&cases, "device:a,file,x,read,allow\n").unwrap();
    assert_eq!(
        code(&satchel(&[
            "policy",
            "test",
            "--policy",
            &p,
            "--cases",
            cases.to_str().unwrap()
        ])),
        2
    );
}

#[test]
fn run_enforces_the_bundle_lockdown_monitor_rollback_and_audit() {
    let dir = tempfile::tempdir().unwrap();
    let d = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let p = example("school.csv");
    assert_eq!(code(&satchel(&["keygen", "--out", &d("org.key")])), 0);
    assert_eq!(
        code(&satchel(&[
            "policy",
            "bundle",
            "--policy",
            &p,
            "--sign-key",
            &d("org.key"),
            "--version",
            "3",
            "--out",
            &d("b3")
        ])),
        0
    );
    assert_eq!(
        code(&satchel(&[
            "policy",
            "bundle",
            "--policy",
            &p,
            "--sign-key",
            &d("org.key"),
            "--version",
            "4",
            "--group-mode",
            "group:class-7b=monitor",
            "--out",
            &d("b4")
        ])),
        0
    );
    // An allowlisted program runs (by path rule: /usr/bin/*) and keeps its exit status.
    let o = satchel(&[
        "run",
        "--bundle",
        &d("b3"),
        "--bundle-key",
        &d("org.key.pub"),
        "--subject",
        "device:laptop-17",
        "--state",
        &d("state"),
        "--",
        "/usr/bin/env",
        "sh",
        "-c",
        "echo ran; exit 3",
    ]);
    assert_eq!(code(&o), 3);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ran\n");
    // A program outside the allowlist: refused in lockdown (126), decision audited.
    let tool = d("tool.sh");
    // Written by a child process: a child another test thread forks while
    // this process held the script open for writing would keep it busy
    // (ETXTBSY) for the exec below.
    std::fs::write(d("tool.src"), "#!/bin/sh\necho tool-ran\n").unwrap();
    let st = Command::new("install")
        .args(["-m", "0755", &d("tool.src"), &tool])
        .status()
        .unwrap();
    assert!(st.success());
    let db = format!("sqlite:{}", d("audit.db"));
    let o = satchel(&[
        "run",
        "--bundle",
        &d("b3"),
        "--bundle-key",
        &d("org.key.pub"),
        "--subject",
        "device:laptop-17",
        "--state",
        &d("state"),
        "--audit-db",
        &db,
        "--",
        &tool,
    ]);
    assert_eq!(code(&o), 126);
    assert!(!String::from_utf8_lossy(&o.stdout).contains("tool-ran"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("denied"));
    // Monitor mode for class 7b: runs, and says it would be denied.
    let o = satchel(&[
        "run",
        "--bundle",
        &d("b4"),
        "--bundle-key",
        &d("org.key.pub"),
        "--subject",
        "device:laptop-18",
        "--state",
        &d("state"),
        "--audit-db",
        &db,
        "--",
        &tool,
    ]);
    assert_eq!(code(&o), 0);
    assert!(String::from_utf8_lossy(&o.stdout).contains("tool-ran"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("monitor mode"));
    // Rollback to version 3 after 4: refused, nothing runs.
    let o = satchel(&[
        "run",
        "--bundle",
        &d("b3"),
        "--bundle-key",
        &d("org.key.pub"),
        "--subject",
        "device:laptop-17",
        "--state",
        &d("state"),
        "--",
        "/usr/bin/env",
        "true",
    ]);
    assert_eq!(code(&o), 126);
    assert!(String::from_utf8_lossy(&o.stderr).contains("rollback"));
    // An edited bundle: refused.
    let edited = std::fs::read_to_string(d("b4"))
        .unwrap()
        .replacen("deny", "allow", 1);
    std::fs::write(d("b5"), edited).unwrap();
    let o = satchel(&[
        "run",
        "--bundle",
        &d("b5"),
        "--bundle-key",
        &d("org.key.pub"),
        "--subject",
        "device:laptop-17",
        "--",
        "/usr/bin/env",
        "true",
    ]);
    assert_eq!(code(&o), 126);
    // The audit log holds both decisions.
    let o = satchel(&["audit", "list", "--db", &db, "--json"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["decision"], "deny");
    assert_eq!(lines[1]["decision"], "deny-monitored");
    assert_eq!(lines[1]["actor"], "device:laptop-18");
}

/// The entries of an audit log, through `satchel audit export`.
fn exported(db: &str, dir: &std::path::Path) -> Vec<Value> {
    let out = dir.join("export.jsonl");
    let o = satchel(&[
        "audit",
        "export",
        "--db",
        db,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["type"] == "entry")
        .collect()
}

#[test]
fn admin_actions_from_the_command_line_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    // `policy import` records what it stored, by digest.
    let db = format!("sqlite:{}", dir.path().join("p.db").display());
    let o = satchel(&[
        "policy",
        "import",
        "--db",
        &db,
        "--policy",
        &example("school.csv"),
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let entries = exported(&db, dir.path());
    let import = entries
        .iter()
        .find(|e| e["actor"] == "policy-cli")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(import["decision"], "replaced");
    assert_eq!(import["details"]["sha256"].as_str().unwrap().len(), 64);
    assert!(import["details"]["rules"].as_u64().unwrap() > 5);

    // `gateway enroll-token` records whom the token admits, never the token.
    let gw = dir.path().join("gw");
    std::fs::create_dir(&gw).unwrap();
    let o = satchel(&[
        "gateway",
        "enroll-token",
        "--data",
        gw.to_str().unwrap(),
        "--device-id",
        "laptop-17",
        "--groups",
        "group:class-7a",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let token = String::from_utf8_lossy(&o.stdout).trim().to_owned();
    let gdb = format!("sqlite:{}", gw.join("satchel.db").display());
    let entries = exported(&gdb, dir.path());
    let issued = entries
        .iter()
        .find(|e| e["decision"] == "enroll-token-issued")
        .unwrap_or_else(|| panic!("{entries:?}"));
    assert_eq!(issued["subject"], "laptop-17");
    assert_eq!(issued["details"]["groups"][0], "group:class-7a");
    let text = std::fs::read_to_string(dir.path().join("export.jsonl")).unwrap();
    assert!(
        !token.is_empty() && !text.contains(&token),
        "the token is in the audit log"
    );
}

#[test]
fn admin_commands_use_the_gateways_own_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let gw = dir.path().join("gw");
    std::fs::create_dir(&gw).unwrap();
    // The gateway's database is not the default sqlite:DATA/satchel.db.
    let db = dir.path().join("elsewhere.db");
    let conf = dir.path().join("gateway.toml");
    std::fs::write(
        &conf,
        format!("data = \"gw\"\ndb = \"sqlite:{}\"\n", db.display()),
    )
    .unwrap();
    let o = satchel(&[
        "gateway",
        "enroll-token",
        "--gateway-config",
        conf.to_str().unwrap(),
        "--device-id",
        "laptop-17",
    ]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    // The token went where the gateway looks, and nowhere else.
    assert!(db.exists());
    assert!(!gw.join("satchel.db").exists());
    let entries = exported(&format!("sqlite:{}", db.display()), dir.path());
    assert!(entries
        .iter()
        .any(|e| e["decision"] == "enroll-token-issued"));
    // Without a data directory from anywhere: a clear error, exit 1.
    let o = satchel(&["gateway", "enroll-token", "--device-id", "x"]);
    assert_ne!(code(&o), 0);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--gateway-config"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
