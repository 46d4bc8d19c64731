//! `satchel audit` and `satchel keygen` as a user runs them: the JSON
//! shapes, the exit codes of `verify` (0 intact, 1 tampered, 2 unusable), a
//! tampered export named by entry, and a SIGKILL in the middle of
//! concurrent appends losing no acknowledged entry.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

fn satchel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args(args)
        .env_remove("SATCHEL_DB")
        .env_remove("SATCHEL_AUDIT_KEY")
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let out = satchel(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

struct Log {
    dir: tempfile::TempDir,
}

impl Log {
    fn new() -> Log {
        let log = Log {
            dir: tempfile::tempdir().unwrap(),
        };
        ok(&["keygen", "--out", &log.path("audit.key")]);
        log
    }
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    fn db(&self) -> String {
        format!("sqlite:{}", self.path("audit.db"))
    }
    fn append(&self, i: usize) -> u64 {
        let details = format!("{{\"rule\": {i}}}");
        let out = ok(&[
            "audit",
            "append",
            "--db",
            &self.db(),
            "--key",
            &self.path("audit.key"),
            "--kind",
            "policy",
            "--actor",
            "device:a",
            "--subject",
            &format!("https://x/{i}"),
            "--decision",
            "deny",
            "--details",
            &details,
        ]);
        out.trim().parse().unwrap()
    }
}

#[test]
fn append_list_prove_checkpoint_and_verify() {
    let log = Log::new();
    let seqs: Vec<u64> = (0..5).map(|i| log.append(i)).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);

    let lines = ok(&["audit", "list", "--db", &log.db(), "--json", "--since", "2"]);
    let entries: Vec<Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["seq"], 2);
    assert_eq!(entries[0]["details"]["rule"], 2);

    let p: Value =
        serde_json::from_str(&ok(&["audit", "prove", "--db", &log.db(), "--index", "3"])).unwrap();
    for k in ["leaf_index", "tree_size", "leaf_hash", "root", "path"] {
        assert!(p.get(k).is_some(), "{k} missing: {p}");
    }
    assert_eq!(
        (p["leaf_index"].as_u64(), p["tree_size"].as_u64()),
        (Some(3), Some(5))
    );
    let c: Value = serde_json::from_str(&ok(&[
        "audit",
        "prove",
        "--db",
        &log.db(),
        "--consistency",
        "2",
        "--size",
        "5",
    ]))
    .unwrap();
    for k in ["old_size", "new_size", "old_root", "new_root", "path"] {
        assert!(c.get(k).is_some(), "{k} missing: {c}");
    }
    assert_eq!(c["new_root"], p["root"]);

    let note = ok(&[
        "audit",
        "checkpoint",
        "--db",
        &log.db(),
        "--key",
        &log.path("audit.key"),
    ]);
    let body: Vec<&str> = note.lines().collect();
    assert_eq!(body[0], "satchel.audit");
    assert_eq!(body[1], "5");
    assert!(
        body.iter()
            .any(|l| l.starts_with("\u{2014} satchel.audit ")),
        "{note}"
    );

    let v = ok(&[
        "audit",
        "verify",
        "--db",
        &log.db(),
        "--pubkey",
        &log.path("audit.key.pub"),
    ]);
    assert!(v.starts_with("intact: 5 entries"), "{v}");
}

#[test]
fn a_tampered_export_exits_1_naming_the_entry_and_junk_exits_2() {
    let log = Log::new();
    for i in 0..6 {
        log.append(i);
    }
    let export = log.path("audit.jsonl");
    ok(&["audit", "export", "--db", &log.db(), "--out", &export]);
    let pubkey = log.path("audit.key.pub");
    let out = satchel(&["audit", "verify", "--export", &export, "--pubkey", &pubkey]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Entry 3's decision, edited in the export.
    let text = std::fs::read_to_string(&export).unwrap();
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            if v["type"] == "entry" && v["seq"] == 3 {
                v["decision"] = "allow".into();
            }
            v.to_string()
        })
        .collect();
    std::fs::write(&export, edited.join("\n") + "\n").unwrap();
    let out = satchel(&["audit", "verify", "--export", &export, "--pubkey", &pubkey]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("entry 3"), "{err}");

    std::fs::write(&export, "{not json\n").unwrap();
    let out = satchel(&["audit", "verify", "--export", &export, "--pubkey", &pubkey]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 1"));

    let out = satchel(&[
        "audit",
        "verify",
        "--export",
        &export,
        "--pubkey",
        "/nonexistent.pub",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn verify_with_another_key_reports_the_signatures() {
    let log = Log::new();
    log.append(0);
    ok(&["keygen", "--out", &log.path("other.key")]);
    let out = satchel(&[
        "audit",
        "verify",
        "--db",
        &log.db(),
        "--pubkey",
        &log.path("other.key.pub"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("signature"));
}

#[test]
fn keygen_never_overwrites_a_key() {
    let log = Log::new();
    let before = std::fs::read(log.path("audit.key")).unwrap();
    let out = satchel(&["keygen", "--out", &log.path("audit.key")]);
    assert!(!out.status.success());
    assert_eq!(std::fs::read(log.path("audit.key")).unwrap(), before);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(log.path("audit.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

/// Read acknowledged sequence numbers until `n`, then SIGKILL the appender.
fn kill_after_acks(db: &str, n: usize) -> Vec<u64> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_satchel"))
        .args([
            "audit",
            "load",
            "--db",
            db,
            "--entries",
            "5000000",
            "--concurrency",
            "64",
            "--print-acks",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut acked = Vec::new();
    let mut line = String::new();
    while acked.len() < n {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "appender ended early"
        );
        acked.push(line.trim().parse().unwrap());
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Everything printed before the kill was acknowledged too.
    for l in reader.lines() {
        match l.ok().and_then(|l| l.trim().parse().ok()) {
            Some(seq) => acked.push(seq),
            None => break,
        }
    }
    acked
}

/// Kill an appender mid-run on `db`; every acknowledged entry must be there
/// and the log must verify once signed.
fn sigkill_loses_nothing(log: &Log, db: &str) {
    let acked = kill_after_acks(db, 3000);
    let lines = ok(&["audit", "list", "--db", db, "--json"]);
    let stored: std::collections::HashSet<u64> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let missing: Vec<&u64> = acked.iter().filter(|s| !stored.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged entries lost, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    // The log is dense and verifies once signed.
    let max = stored.iter().max().copied().unwrap();
    assert_eq!(stored.len() as u64, max + 1);
    ok(&[
        "audit",
        "checkpoint",
        "--db",
        db,
        "--key",
        &log.path("audit.key"),
    ]);
    ok(&[
        "audit",
        "verify",
        "--db",
        db,
        "--pubkey",
        &log.path("audit.key.pub"),
    ]);
}

#[test]
fn sigkill_mid_batch_loses_no_acknowledged_entry_on_sqlite() {
    let log = Log::new();
    sigkill_loses_nothing(&log, &log.db());
    assert!(Path::new(&log.path("audit.db")).exists());
}

#[test]
fn sigkill_mid_batch_loses_no_acknowledged_entry_on_postgres() {
    let log = Log::new();
    let pg = tpm_sim_tests::Postgres::start().unwrap();
    sigkill_loses_nothing(&log, &pg.url());
}

/// Regression (issue 22, item 5): verifying an intact log under the wrong
/// `--origin` is unusable input (exit 2) that names the origin the
/// checkpoints are signed as; a checkpoint whose origin line was edited is
/// still tampering (exit 1).
#[test]
fn a_wrong_origin_is_unusable_input_and_an_edited_origin_is_tampering() {
    let log = Log::new();
    log.append(0);
    log.append(1);
    let verify = |origin: &str| {
        satchel(&[
            "audit",
            "verify",
            "--db",
            &log.db(),
            "--pubkey",
            &log.path("audit.key.pub"),
            "--origin",
            origin,
        ])
    };
    let out = verify("satchel.gateway.audit");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("signed as \"satchel.audit\""), "{err}");
    assert!(err.contains("--origin satchel.audit"), "{err}");
    assert_eq!(verify("satchel.audit").status.code(), Some(0));

    common::sql(
        &log.db(),
        &["UPDATE audit_checkpoints SET note = replace(note, 'satchel.audit', 'satchel.gateway.audit')"],
    );
    for origin in ["satchel.audit", "satchel.gateway.audit"] {
        let out = verify(origin);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Regression (issue 22, item 4): the log and its checkpoints cut short
/// together verify as intact on their own; against a checkpoint witnessed
/// before the cut, the log is reported truncated (exit 1).
#[test]
fn a_log_cut_short_with_its_checkpoints_fails_against_a_witness() {
    let log = Log::new();
    for i in 0..5 {
        log.append(i);
    }
    let note = ok(&[
        "audit",
        "checkpoint",
        "--db",
        &log.db(),
        "--key",
        &log.path("audit.key"),
    ]);
    std::fs::write(log.path("witness.note"), &note).unwrap();
    let db = log.db();
    common::sql(
        &db,
        &[
            "DELETE FROM audit_entries WHERE seq >= 3",
            "DELETE FROM audit_checkpoints WHERE tree_size > 3",
        ],
    );
    let verify = |extra: &[&str]| {
        let mut args = vec!["audit", "verify", "--db", &db, "--pubkey"];
        let key = log.path("audit.key.pub");
        args.push(&key);
        args.extend_from_slice(extra);
        satchel(&args)
    };
    // What the issue saw: on its own, the cut log looks intact.
    let out = verify(&[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 3 entries"));
    // Against the witness, it is not.
    let witness = log.path("witness.note");
    let out = verify(&["--witness", &witness]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("signed 5 entries but the log holds 3"),
        "{err}"
    );
    // A witness signed by another key is unusable input, not a verdict.
    ok(&["keygen", "--out", &log.path("other.key")]);
    let forged = log.path("forged.note");
    std::fs::write(
        &forged,
        note.replace("satchel.audit\n5\n", "satchel.audit\n9\n"),
    )
    .unwrap();
    assert_eq!(verify(&["--witness", &forged]).status.code(), Some(2));
}
