//! The audit store on both backends (a SQLite file and a private
//! PostgreSQL): appends, group commit under concurrency, proofs against the
//! stored tree, and every tampering the threat model names, each caught by
//! `verify` with the first bad entry named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use audit::batch::{now_ms, Appender};
use audit::checkpoint::Verifier;
use audit::entry::NewEntry;
use audit::log::{make_checkpoint, prove_consistency, prove_inclusion, verify_store};
use audit::merkle::{self, Hash};
use audit::signer::{Signer, SignerError};
use audit::store::Store;
use audit::verify::Problem;
use common::TestDb;
use ed25519_dalek::SigningKey;
use serde_json::json;
use sqlx::any::AnyPoolOptions;
use sqlx::Executor;

const ORIGIN: &str = "test.satchel/audit";

fn entry(i: usize) -> NewEntry {
    NewEntry {
        kind: if i.is_multiple_of(3) {
            "policy"
        } else {
            "attestation"
        }
        .into(),
        actor: format!("device:laptop-{i}"),
        subject: format!("https://example.org/{i}"),
        decision: if i.is_multiple_of(2) { "allow" } else { "deny" }.into(),
        details: json!({"rule": i, "mode": "lockdown"}),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A log of 20 entries with checkpoints at 10 and 20.
async fn seeded(url: &str, key: &SigningKey) -> Store {
    let store = Store::open(url).await.unwrap();
    store
        .append((0..10).map(entry).collect(), now_ms())
        .await
        .unwrap();
    make_checkpoint(&store, key, ORIGIN).await.unwrap();
    store
        .append((10..20).map(entry).collect(), now_ms())
        .await
        .unwrap();
    make_checkpoint(&store, key, ORIGIN).await.unwrap();
    store
}

async fn raw(url: &str, sql: &str) {
    sqlx::any::install_default_drivers();
    let url = match url.strip_prefix("sqlite:") {
        Some(p) => format!("sqlite://{p}"),
        None => url.to_owned(),
    };
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    pool.execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

fn verifier(key: &SigningKey) -> Verifier {
    Verifier::new(ORIGIN, key.verifying_key()).unwrap()
}

#[test]
fn appends_are_dense_listed_and_verified_on_both_backends() {
    rt().block_on(async {
        for db in TestDb::both() {
            let key = persist::keys::generate();
            let store = seeded(&db.url(), &key).await;
            assert_eq!(store.size().await.unwrap(), 20);
            let all = store.entries(0, None, None).await.unwrap();
            assert_eq!(
                all.iter().map(|e| e.entry.seq).collect::<Vec<_>>(),
                (0..20).collect::<Vec<_>>()
            );
            assert_eq!(all[4].entry.details, json!({"mode": "lockdown", "rule": 4}));
            let policy = store.entries(5, Some("policy"), None).await.unwrap();
            assert_eq!(
                policy.iter().map(|e| e.entry.seq).collect::<Vec<_>>(),
                [6, 9, 12, 15, 18]
            );
            let report = verify_store(&store, &verifier(&key)).await.unwrap();
            assert!(report.intact(), "{:?}", report.problems);
            assert_eq!((report.entries, report.checkpoints_verified), (20, 2));
            store.close().await;
        }
    });
}

#[test]
fn proofs_from_the_store_verify_against_its_checkpoints() {
    rt().block_on(async {
        for db in TestDb::both() {
            let key = persist::keys::generate();
            let store = seeded(&db.url(), &key).await;
            let cps = store.checkpoints().await.unwrap();
            for i in 0..20 {
                let p = prove_inclusion(&store, i, Some(20)).await.unwrap();
                let path: Vec<Hash> = p
                    .path
                    .iter()
                    .map(|h| hex::decode(h).unwrap().try_into().unwrap())
                    .collect();
                let leaf: Hash = hex::decode(&p.leaf_hash).unwrap().try_into().unwrap();
                merkle::verify_inclusion(&leaf, i, 20, &path, &cps[1].root).unwrap();
            }
            let c = prove_consistency(&store, 10, Some(20)).await.unwrap();
            let path: Vec<Hash> = c
                .path
                .iter()
                .map(|h| hex::decode(h).unwrap().try_into().unwrap())
                .collect();
            merkle::verify_consistency(10, 20, &cps[0].root, &cps[1].root, &path).unwrap();
            assert!(prove_inclusion(&store, 20, None).await.is_err());
            assert!(prove_consistency(&store, 10, Some(21)).await.is_err());
            store.close().await;
        }
    });
}

#[test]
fn sixty_four_concurrent_appenders_share_batches_and_lose_nothing() {
    rt().block_on(async {
        for db in TestDb::both() {
            let store = Store::open(&db.url()).await.unwrap();
            let (appender, writer) = Appender::spawn(store.clone(), 4096);
            let mut tasks = Vec::new();
            for t in 0..64 {
                let a = appender.clone();
                tasks.push(tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for i in 0..50 {
                        seqs.push(a.append(entry(t * 1000 + i)).await.unwrap());
                    }
                    seqs
                }));
            }
            let mut all: Vec<u64> = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            drop(appender);
            writer.await.unwrap();
            all.sort_unstable();
            assert_eq!(all, (0..3200).collect::<Vec<u64>>());
            assert_eq!(store.size().await.unwrap(), 3200);
            store.close().await;
        }
    });
}

/// Tamper with a copy of the seeded log and return what verify reports.
async fn tampered(db: &TestDb, sql: &[&str]) -> Vec<Problem> {
    let key = persist::keys::generate();
    let store = seeded(&db.url(), &key).await;
    for s in sql {
        raw(&db.url(), s).await;
    }
    let report = verify_store(&store, &verifier(&key)).await.unwrap();
    store.close().await;
    report.problems
}

#[test]
fn every_edited_column_is_named_by_entry_on_both_backends() {
    let columns = [
        "ts_ms = ts_ms + 1",
        "kind = 'admin'",
        "actor = 'x'",
        "subject = 'y'",
        "decision = 'allow2'",
        "details = '{}'",
    ];
    rt().block_on(async {
        for db in TestDb::both() {
            // Entry k (1..=6) gets column k-1 edited.
            let edits: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(k, c)| format!("UPDATE audit_entries SET {c} WHERE seq = {}", k + 1))
                .collect();
            let edits: Vec<&str> = edits.iter().map(String::as_str).collect();
            let problems = tampered(&db, &edits).await;
            let named: Vec<&Problem> = problems
                .iter()
                .filter(|p| matches!(p, Problem::LeafHash { .. }))
                .collect();
            let want: Vec<Problem> = (1..=6).map(|seq| Problem::LeafHash { seq }).collect();
            assert_eq!(named, want.iter().collect::<Vec<_>>(), "{}", db.url());
            assert!(
                problems.contains(&Problem::Root { size: 10, from: 0 }),
                "{problems:?}"
            );
        }
    });
}

#[test]
fn an_inserted_row_is_reported_on_both_backends() {
    rt().block_on(async {
        for db in TestDb::both() {
            let problems = tampered(
                &db,
                &[
                    "UPDATE audit_entries SET seq = seq + 1000 WHERE seq >= 12",
                    "UPDATE audit_entries SET seq = seq - 999 WHERE seq >= 1000",
                    "INSERT INTO audit_entries (seq, ts_ms, kind, actor, subject, decision, details, leaf_hash) \
                     SELECT 12, ts_ms, kind, actor, 'forged', decision, details, leaf_hash FROM audit_entries WHERE seq = 11",
                ],
            )
            .await;
            assert_eq!(problems[0], Problem::LeafHash { seq: 12 }, "{}", db.url());
            assert!(problems.contains(&Problem::Root { size: 20, from: 10 }), "{problems:?}");
        }
    });
}

#[test]
fn attacks_on_rows_and_checkpoints_are_reported_on_both_backends() {
    rt().block_on(async {
        for db_kind in 0..2 {
            let fresh = || if db_kind == 0 { TestDb::sqlite() } else { TestDb::postgres() };
            // Delete a row.
            let p = tampered(&fresh(), &["DELETE FROM audit_entries WHERE seq = 7"]).await;
            assert_eq!(p[0], Problem::Sequence { expected: 7, found: 8 });
            // Reorder two rows (swap their contents, leaf hashes included).
            let p = tampered(
                &fresh(),
                &[
                    "UPDATE audit_entries SET seq = -1 WHERE seq = 3",
                    "UPDATE audit_entries SET seq = 3 WHERE seq = 4",
                    "UPDATE audit_entries SET seq = 4 WHERE seq = -1",
                ],
            )
            .await;
            assert_eq!(p[0], Problem::LeafHash { seq: 3 });
            // Truncate the tail.
            let p = tampered(&fresh(), &["DELETE FROM audit_entries WHERE seq >= 15"]).await;
            assert_eq!(p, [Problem::Truncated { size: 20, entries: 15 }]);
            // Edit a checkpoint's stored root.
            let p = tampered(&fresh(), &["UPDATE audit_checkpoints SET root = (SELECT leaf_hash FROM audit_entries WHERE seq = 0) WHERE tree_size = 10"]).await;
            assert!(p.contains(&Problem::CheckpointColumns { size: 10 }), "{p:?}");
        }
    });
}

#[test]
fn an_edit_with_a_recomputed_leaf_hash_is_caught_by_the_signed_root() {
    rt().block_on(async {
        for db in TestDb::both() {
            let key = persist::keys::generate();
            let store = seeded(&db.url(), &key).await;
            // Rewrite entry 12 consistently: new decision and its matching leaf hash.
            let mut e = store
                .entries(12, None, Some(1))
                .await
                .unwrap()
                .remove(0)
                .entry;
            e.decision = "allow-forged".into();
            let sql = format!(
                "UPDATE audit_entries SET decision = 'allow-forged', leaf_hash = {} WHERE seq = 12",
                db.blob(&e.leaf_hash())
            );
            raw(&db.url(), &sql).await;
            let report = verify_store(&store, &verifier(&key)).await.unwrap();
            assert_eq!(report.problems, [Problem::Root { size: 20, from: 10 }]);
            store.close().await;
        }
    });
}

#[test]
fn checkpoints_re_signed_by_another_key_are_rejected() {
    rt().block_on(async {
        for db in TestDb::both() {
            let key = persist::keys::generate();
            let store = seeded(&db.url(), &key).await;
            let other = persist::keys::generate();
            raw(&db.url(), "DELETE FROM audit_checkpoints").await;
            make_checkpoint(&store, &other, ORIGIN).await.unwrap();
            let report = verify_store(&store, &verifier(&key)).await.unwrap();
            assert!(
                matches!(report.problems[..], [Problem::Signature { size: 20, .. }]),
                "{:?}",
                report.problems
            );
            store.close().await;
        }
    });
}

#[test]
fn the_signer_signs_whenever_the_log_has_grown() {
    rt().block_on(async {
        let db = TestDb::sqlite();
        let key = persist::keys::generate();
        let store = Store::open(&db.url()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(&dir.path().join("audit.tree"), key.clone(), ORIGIN, &store)
            .await
            .unwrap();
        let (view, task) =
            audit::signer::spawn(signer, store.clone(), std::time::Duration::from_millis(20));
        store
            .append((0..3).map(entry).collect(), now_ms())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        store
            .append((3..5).map(entry).collect(), now_ms())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        task.abort();
        let sizes: Vec<u64> = store
            .checkpoints()
            .await
            .unwrap()
            .iter()
            .map(|c| c.size)
            .collect();
        assert!(sizes.contains(&3) && sizes.last() == Some(&5), "{sizes:?}");
        let latest = view.latest().unwrap();
        assert_eq!(
            audit::checkpoint::parse_and_verify(&latest, &verifier(&key))
                .unwrap()
                .size,
            5
        );
        assert!(view.alarm().is_none());
        store.close().await;
    });
}

/// Regression (issue 22, item 4): the signer keeps its last signed tree
/// outside the database and never signs over a log cut short, an entry
/// edited after it, or a gap; its state survives a restart.
#[test]
fn the_signer_refuses_a_truncated_or_edited_log() {
    rt().block_on(async {
        for db in TestDb::both() {
            let key = persist::keys::generate();
            let store = Store::open(&db.url()).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let state = dir.path().join("audit.tree");
            let mut signer = Signer::open(&state, key.clone(), ORIGIN, &store)
                .await
                .unwrap();
            store
                .append((0..5).map(entry).collect(), now_ms())
                .await
                .unwrap();
            assert_eq!(signer.checkpoint(&store).await.unwrap().unwrap().size, 5);
            assert!(
                signer.checkpoint(&store).await.unwrap().is_none(),
                "nothing new"
            );

            // The reproduction: cut the log and its checkpoints short.
            raw(&db.url(), "DELETE FROM audit_entries WHERE seq >= 3").await;
            raw(
                &db.url(),
                "DELETE FROM audit_checkpoints WHERE tree_size > 3",
            )
            .await;
            let e = signer.checkpoint(&store).await.unwrap_err();
            assert!(
                matches!(e, SignerError::Shrunk { signed: 5, now: 3 }),
                "{e}"
            );
            // Refilled with other entries to the same size and beyond: the
            // last entry signed is not what it was, before or after a restart.
            store
                .append((10..14).map(entry).collect(), now_ms())
                .await
                .unwrap();
            let e = signer.checkpoint(&store).await.unwrap_err();
            assert!(matches!(e, SignerError::Entry { seq: 4, .. }), "{e}");
            let mut signer = Signer::open(&state, key.clone(), ORIGIN, &store)
                .await
                .unwrap();
            assert_eq!(signer.size(), 5);
            let e = signer.checkpoint(&store).await.unwrap_err();
            assert!(matches!(e, SignerError::Entry { seq: 4, .. }), "{e}");
            let sizes: Vec<u64> = store
                .checkpoints()
                .await
                .unwrap()
                .iter()
                .map(|c| c.size)
                .collect();
            assert!(
                sizes.iter().all(|s| *s <= 3),
                "signed over the rewrite: {sizes:?}"
            );
            store.close().await;
        }
    });
}

#[test]
fn the_signer_refuses_an_entry_edited_after_its_last_checkpoint() {
    rt().block_on(async {
        let db = TestDb::sqlite();
        let key = persist::keys::generate();
        let store = Store::open(&db.url()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("audit.tree");
        let mut signer = Signer::open(&state, key.clone(), ORIGIN, &store)
            .await
            .unwrap();
        store
            .append((0..4).map(entry).collect(), now_ms())
            .await
            .unwrap();
        signer.checkpoint(&store).await.unwrap();
        store
            .append((4..8).map(entry).collect(), now_ms())
            .await
            .unwrap();
        raw(
            &db.url(),
            "UPDATE audit_entries SET decision = 'tampered' WHERE seq = 6",
        )
        .await;
        let e = signer.checkpoint(&store).await.unwrap_err();
        assert!(matches!(e, SignerError::Entry { seq: 6, .. }), "{e}");
        let sizes: Vec<u64> = store
            .checkpoints()
            .await
            .unwrap()
            .iter()
            .map(|c| c.size)
            .collect();
        assert_eq!(sizes, [4], "nothing signed over the edit");
        // A signer without state trusts the database only as far as its own
        // last checkpoint verifies: a rewritten prefix is refused.
        raw(
            &db.url(),
            "UPDATE audit_entries SET decision = 'allow' WHERE seq = 6",
        )
        .await;
        raw(&db.url(), "DELETE FROM audit_entries WHERE seq >= 1").await;
        store
            .append((20..24).map(entry).collect(), now_ms())
            .await
            .unwrap();
        let e = Signer::open(&dir.path().join("fresh.tree"), key, ORIGIN, &store)
            .await
            .unwrap_err();
        assert!(matches!(e, SignerError::Mismatch { size: 4 }), "{e}");
        store.close().await;
    });
}

/// SQLite stores whatever type an UPDATE gives it. A column turned into
/// another type (a blob where text belongs, text in a number or hash column)
/// must never pass as intact, whichever way the page is read.
#[test]
fn a_column_given_another_type_is_never_intact_on_sqlite() {
    let edits = [
        "kind = x'61646d696e'",
        "ts_ms = 'yesterday'",
        "details = 42.5",
        "leaf_hash = 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'",
    ];
    rt().block_on(async {
        for edit in edits {
            let db = TestDb::sqlite();
            let key = persist::keys::generate();
            let store = seeded(&db.url(), &key).await;
            raw(
                &db.url(),
                &format!("UPDATE audit_entries SET {edit} WHERE seq = 5"),
            )
            .await;
            match verify_store(&store, &verifier(&key)).await {
                Ok(report) => assert!(
                    report.problems.contains(&Problem::LeafHash { seq: 5 }),
                    "{edit}: {:?}",
                    report.problems
                ),
                Err(e) => assert!(e.to_string().contains("audit database"), "{edit}: {e}"),
            }
            store.close().await;
        }
    });
}

/// Two signers with one key on `store` (two gateways taking turns with
/// the lease), their state in `dir`: the first signed 3 entries, the second
/// then 6.
async fn two_signers(store: &Store, dir: &std::path::Path) -> (Signer, Signer) {
    let key = persist::keys::generate();
    let mut one = Signer::open(&dir.join("one.tree"), key.clone(), ORIGIN, store)
        .await
        .unwrap();
    store
        .append((0..3).map(entry).collect(), now_ms())
        .await
        .unwrap();
    assert_eq!(one.checkpoint(store).await.unwrap().unwrap().size, 3);
    let mut two = Signer::open(&dir.join("two.tree"), key, ORIGIN, store)
        .await
        .unwrap();
    store
        .append((3..6).map(entry).collect(), now_ms())
        .await
        .unwrap();
    assert_eq!(two.checkpoint(store).await.unwrap().unwrap().size, 6);
    (one, two)
}

/// The first signer, after the second signed further, must not sign over
/// the entries the second signed if they were rewritten since (a fork under
/// the shared key). Reproduced first: it signed the rewritten log.
#[test]
fn a_signer_after_another_never_signs_over_entries_rewritten_since() {
    rt().block_on(async {
        for db in TestDb::both() {
            let store = Store::open(&db.url()).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (mut one, _) = two_signers(&store, dir.path()).await;
            // Entries 3-5, signed by the second, rewritten whole: their
            // columns and leaf hashes agree.
            raw(&db.url(), "DELETE FROM audit_entries WHERE seq >= 3").await;
            Store::open(&db.url())
                .await
                .unwrap()
                .append((20..23).map(entry).collect(), now_ms())
                .await
                .unwrap();
            let e = one.checkpoint(&store).await.unwrap_err();
            assert!(matches!(e, SignerError::Mismatch { size: 6 }), "{e}");
        }
    });
}

/// The same without the rewrite: the first signer adopts the second's
/// checkpoint and signs on from it.
#[test]
fn a_signer_after_another_adopts_its_checkpoint() {
    rt().block_on(async {
        for db in TestDb::both() {
            let store = Store::open(&db.url()).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let (mut one, _) = two_signers(&store, dir.path()).await;
            store
                .append((6..9).map(entry).collect(), now_ms())
                .await
                .unwrap();
            assert_eq!(one.checkpoint(&store).await.unwrap().unwrap().size, 9);
            assert_eq!(one.size(), 9);
        }
    });
}

/// The attacker's review: anyone who can connect to the database could
/// take the signer's lock and hold it, and no gateway signed again, with
/// nothing said. A standby signer now raises the alarm when the log grows
/// without a checkpoint for ten intervals, and clears it once signing
/// resumes.
#[test]
fn a_squatted_signer_lease_raises_the_alarm() {
    rt().block_on(async {
        let db = TestDb::postgres();
        let store = Store::open(&db.url()).await.unwrap();
        let (pool, _) = persist::db::connect(&db.url()).await.unwrap();
        let mut squatter = pool.acquire().await.unwrap().detach();
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(audit::store::SIGNER_LOCK)
            .execute(&mut squatter)
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let signer = Signer::open(
            &dir.path().join("audit.tree"),
            persist::keys::generate(),
            ORIGIN,
            &store,
        )
        .await
        .unwrap();
        let (view, task) =
            audit::signer::spawn(signer, store.clone(), std::time::Duration::from_millis(50));
        store
            .append((0..3).map(entry).collect(), now_ms())
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let alarm = view.alarm().unwrap_or_default();
        assert!(alarm.contains("holds the signer's lease"), "{alarm:?}");
        assert!(store.checkpoints().await.unwrap().is_empty());
        // The squatter lets go: the signer takes the lease and signs.
        drop(squatter);
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert_eq!(view.alarm(), None);
        assert_eq!(
            store.checkpoints().await.unwrap().last().map(|c| c.size),
            Some(3)
        );
        task.abort();
    });
}
