//! The agent routes with real TLS (curl): spooled entries land in the audit
//! trail exactly once, also when a delivery is repeated, when a crash left
//! an append half-recorded, and when a spool file starts over; a gap is
//! recorded; disordered deliveries and forged kinds are refused; bundles are relayed, never rolled back, and
//! only admins store them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{api, audit_entries, device_cert_at, enroll_directly, Running};
use gateway::Pki;
use serde_json::{json, Value};

struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    data: PathBuf,
    db: String,
    up: Running,
    crt: PathBuf,
    key: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let data = dir.join("gw");
    let up = Running::start(&data);
    let db = format!("sqlite:{}", data.join("satchel.db").display());
    enroll_directly(&db, "laptop-1", &["group:lab"]);
    let pki = Pki::init(&data, &[]).unwrap();
    let (crt, key) = device_cert_at(
        &pki,
        &dir,
        "laptop-1",
        Duration::from_secs(600),
        audit::batch::now_ms(),
    );
    Setup {
        _tmp: tmp,
        dir,
        data,
        db,
        up,
        crt,
        key,
    }
}

impl Setup {
    fn post(&self, body: &Value) -> (String, Value) {
        let f = self.dir.join("body.json");
        std::fs::write(&f, body.to_string()).unwrap();
        let (status, text) = api(
            self.up.port,
            &self.data,
            "/v1/agent/spool",
            (&self.crt, &self.key),
            &["-X", "POST", "--data-binary", &format!("@{}", f.display())],
        );
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    fn spooled(&self) -> Vec<(String, i64)> {
        audit_entries(&self.db)
            .into_iter()
            .filter(|e| e.kind.starts_with("agent.") && e.kind != "agent.spool-gap")
            .map(|e| {
                assert_eq!(
                    e.actor, "device:laptop-1",
                    "the actor comes from the certificate"
                );
                (
                    e.details["spool"]["epoch"].as_str().unwrap().to_owned(),
                    e.details["spool"]["seq"].as_i64().unwrap(),
                )
            })
            .collect()
    }
}

fn entries(epoch: &str, seqs: std::ops::RangeInclusive<i64>) -> Value {
    let list: Vec<Value> = seqs
        .map(|s| {
            json!({"seq": s, "at_ms": 1_700_000_000_000i64 + s, "kind": "exec",
                   "subject": format!("/media/usb/p{s}"), "decision": "deny",
                   "details": {"sha256": "00", "actor": "admin:forged"}})
        })
        .collect();
    json!({"epoch": epoch, "entries": list})
}

#[test]
fn spooled_entries_land_exactly_once() {
    let s = setup();
    let (status, body) = s.post(&entries("e1", 1..=3));
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["accepted_through"], 3);
    assert_eq!(body["appended"], 3);

    // The answer was lost; the agent sends 1..=5: only 4 and 5 are new.
    let (status, body) = s.post(&entries("e1", 1..=5));
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["accepted_through"], 5);
    assert_eq!(body["appended"], 2);
    // Again, nothing new.
    let (_, body) = s.post(&entries("e1", 4..=5));
    assert_eq!(body["appended"], 0);

    // A gap (entries 6 and 7 acknowledged once, then lost by the gateway,
    // say to a restored backup) is recorded, and the rest accepted: the
    // device's spool does not stall.
    let (status, body) = s.post(&entries("e1", 8..=9));
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["accepted_through"], 9);
    let gap = audit_entries(&s.db)
        .into_iter()
        .find(|e| e.kind == "agent.spool-gap")
        .unwrap();
    assert_eq!(gap.actor, "device:laptop-1");
    assert_eq!(
        (
            gap.details["from_seq"].as_i64(),
            gap.details["to_seq"].as_i64()
        ),
        (Some(6), Some(7))
    );

    // A new spool file (epoch) numbers from 1 again and is not skipped.
    let (status, body) = s.post(&entries("e2", 1..=2));
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["appended"], 2);

    let mut got = s.spooled();
    got.sort();
    let want: Vec<(String, i64)> = (1..=5)
        .chain(8..=9)
        .map(|n| ("e1".to_owned(), n))
        .chain((1..=2).map(|n| ("e2".to_owned(), n)))
        .collect();
    assert_eq!(got, want);
    let e = audit_entries(&s.db)
        .into_iter()
        .find(|e| e.kind == "agent.exec")
        .unwrap();
    assert_eq!(e.subject, "/media/usb/p1");
    assert_eq!(e.decision, "deny");
    assert_eq!(e.details["spool"]["at_ms"], 1_700_000_000_001i64);
}

#[test]
fn a_crash_between_append_and_mark_does_not_duplicate() {
    let s = setup();
    let (status, _) = s.post(&entries("e1", 1..=2));
    assert_eq!(status, "200");
    // What a crash after the append of 3..=4 and before the mark moved
    // leaves: the entries are in the trail, the mark still says 2, pending 4.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = audit::store::Store::open(&s.db).await.unwrap();
        let from = store.seq_bounds().await.unwrap().unwrap().1 + 1;
        let batch = (3..=4)
            .map(|n| audit::entry::NewEntry {
                kind: "agent.exec".into(),
                actor: "device:laptop-1".into(),
                subject: format!("/media/usb/p{n}"),
                decision: "deny".into(),
                details: json!({"spool": {"epoch": "e1", "seq": n, "at_ms": 0}}),
            })
            .collect();
        store.append(batch, audit::batch::now_ms()).await.unwrap();
        let (pool, _) = persist::db::connect(&s.db).await.unwrap();
        let db = gateway::state::Db::new(pool).await.unwrap();
        db.set_spool_mark(
            "laptop-1",
            "e1",
            gateway::state::SpoolMark {
                last_seq: 2,
                pending_through: Some(4),
                audit_from: Some(from),
            },
        )
        .await
        .unwrap();
    });
    // The agent never heard back, so it sends 3..=5.
    let (status, body) = s.post(&entries("e1", 3..=5));
    assert_eq!(status, "200", "{body}");
    assert_eq!(body["appended"], 1, "{body}");
    let mut seqs: Vec<i64> = s.spooled().into_iter().map(|(_, n)| n).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
}

#[test]
fn bad_deliveries_and_other_roles_are_refused() {
    let s = setup();
    let mut forged = entries("e1", 1..=1);
    forged["entries"][0]["kind"] = json!("admin\nx");
    assert_eq!(s.post(&forged).0, "400");
    let mut unordered = entries("e1", 1..=2);
    unordered["entries"][1]["seq"] = json!(7);
    assert_eq!(s.post(&unordered).0, "400");
    assert_eq!(s.post(&json!({"epoch": "../x", "entries": []})).0, "400");
    assert_eq!(s.post(&json!({"entries": []})).0, "400");
    // Without a device certificate: nothing.
    let o = common::curl(s.up.port, &s.data, "/v1/agent/spool", None);
    assert_eq!(common::status_and_body(&o).0, "401");
    assert!(s.spooled().is_empty());
}

#[test]
fn compressed_bodies_are_read_within_the_bounds_and_other_encodings_refused() {
    let s = setup();
    let post = |bytes: &[u8], encoding: &str| -> (String, String) {
        let f = s.dir.join("body.bin");
        std::fs::write(&f, bytes).unwrap();
        api(
            s.up.port,
            &s.data,
            "/v1/agent/spool",
            (&s.crt, &s.key),
            &[
                "-X",
                "POST",
                "-H",
                &format!("Content-Encoding: {encoding}"),
                "--data-binary",
                &format!("@{}", f.display()),
            ],
        )
    };
    // A delivery as the device sends it: compressed, read as the JSON.
    let body = entries("e1", 1..=30).to_string();
    let z = sync::wire::encode_body(body.as_bytes()).unwrap();
    let (status, text) = post(&z, "zstd");
    assert_eq!(status, "200", "{text}");
    assert_eq!(s.spooled().len(), 30);
    // Nine MiB of zeros in a few hundred bytes: refused past the body
    // limit (8 MiB), never held whole.
    let bomb = sync::wire::encode_body(&vec![b' '; 9 << 20]).unwrap();
    assert!(bomb.len() < 4096);
    let (status, text) = post(&bomb, "zstd");
    assert_eq!(status, "400", "{text}");
    assert!(text.contains("more than"), "{text}");
    // Not zstd at all, and an encoding the gateway does not read.
    assert_eq!(post(body.as_bytes(), "zstd").0, "400");
    assert_eq!(post(body.as_bytes(), "gzip").0, "415");
    assert_eq!(s.spooled().len(), 30);
    // Every answer on a device's routes, a refusal too, says which request
    // encoding is read (RFC 7694); devices compress only after seeing it.
    let headers = |path: &str, extra: &[&str]| {
        let (_, text) = api(
            s.up.port,
            &s.data,
            path,
            (&s.crt, &s.key),
            &[&["-i"], extra].concat(),
        );
        text.to_ascii_lowercase()
    };
    let says = "\naccept-encoding: zstd\r\n";
    let spool = [
        "-X",
        "POST",
        "-H",
        "Content-Encoding: gzip",
        "--data-binary",
        "{}",
    ];
    assert!(headers("/v1/agent/spool", &spool).contains(says));
    assert!(headers("/v1/sync/images/base-os/refs", &[]).contains(says));
    assert!(!headers("/v1/health", &[]).contains("accept-encoding"));
    // Not to an outsider: without a device certificate (a 401) it says
    // nothing of what the gateway reads.
    let o = std::process::Command::new("curl")
        .args(["-sS", "-i", "--max-time", "10", "--cacert"])
        .arg(s.data.join("ca.crt"))
        .arg(format!("https://127.0.0.1:{}/v1/agent/spool", s.up.port))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(!text.contains("accept-encoding"), "{text}");
}

fn bundle(dir: &Path, version: u64) -> PathBuf {
    let key = ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]);
    let text = policy::bundle::BundleManifest {
        format: policy::bundle::FORMAT.to_owned(),
        version,
        created: "2026-11-23T00:00:00Z".to_owned(),
        default_mode: policy::bundle::Mode::Lockdown,
        group_modes: Default::default(),
        policy: "p, group:all, app, path:/usr/bin/*, exec, allow\n".to_owned(),
    }
    .sign(&key)
    .unwrap();
    let p = dir.join(format!("v{version}.bundle"));
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn bundles_are_relayed_to_devices_and_never_rolled_back() {
    let s = setup();
    let pki = Pki::init(&s.data, &[]).unwrap();
    let admin = pki
        .issue_admin_cert("alice", Duration::from_secs(600))
        .unwrap();
    let (acrt, akey) = (s.dir.join("alice.crt"), s.dir.join("alice.key"));
    std::fs::write(&acrt, admin.cert_pem).unwrap();
    std::fs::write(&akey, admin.key_pem).unwrap();
    let alice = (acrt.as_path(), akey.as_path());
    let device = (s.crt.as_path(), s.key.as_path());
    let put = |cert: (&Path, &Path), file: &Path| {
        api(
            s.up.port,
            &s.data,
            "/v1/admin/bundle",
            cert,
            &[
                "-X",
                "PUT",
                "--data-binary",
                &format!("@{}", file.display()),
            ],
        )
    };

    let (status, _) = api(s.up.port, &s.data, "/v1/agent/bundle", device, &[]);
    assert_eq!(status, "404");
    let v2 = bundle(&s.dir, 2);
    assert_eq!(put(device, &v2).0, "403", "a device stored a bundle");
    let (status, body) = put(alice, &v2);
    assert_eq!(status, "200", "{body}");
    let (status, body) = api(s.up.port, &s.data, "/v1/agent/bundle", device, &[]);
    assert_eq!(status, "200");
    assert_eq!(
        body,
        std::fs::read_to_string(&v2).unwrap(),
        "not relayed byte for byte"
    );
    let (status, body) = put(alice, &bundle(&s.dir, 1));
    assert_eq!(status, "409", "{body}");
    std::fs::write(s.dir.join("junk"), "{\"bundle\": 1}").unwrap();
    assert_eq!(put(alice, &s.dir.join("junk")).0, "400");
    let (_, body) = api(s.up.port, &s.data, "/v1/agent/bundle", device, &[]);
    assert_eq!(
        body,
        std::fs::read_to_string(&v2).unwrap(),
        "a refused bundle replaced the held one"
    );
    let kinds: Vec<(String, String)> = audit_entries(&s.db)
        .into_iter()
        .filter(|e| e.subject == "bundle")
        .map(|e| (e.actor, e.decision))
        .collect();
    assert_eq!(
        kinds,
        [
            ("admin:alice".to_owned(), "replaced".to_owned()),
            ("admin:alice".to_owned(), "refused".to_owned())
        ]
    );
}
