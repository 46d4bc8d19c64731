//! Regression (issue 22, item 4): the gateway serves its signer's latest
//! checkpoint and consistency proofs; a device keeps the last checkpoint it
//! saw and notices a log that grew (proven), and one cut short behind the
//! gateway's back, even when the gateway's own signer state was wiped too.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use device::witness::{witness, Alarm, WitnessError, Witnessed};
use gateway::{Pki, ServeConfig};

mod common;
use common::{block_on, device_cert_at, enroll_directly, Running};

fn append(db_url: &str, n: usize) {
    block_on(async {
        let store = audit::store::Store::open(db_url).await.unwrap();
        let entries = (0..n)
            .map(|i| audit::entry::NewEntry {
                kind: "policy".into(),
                actor: "device:x".into(),
                subject: format!("https://example.org/{i}"),
                decision: "deny".into(),
                details: serde_json::json!({"i": i}),
            })
            .collect();
        store.append(entries, audit::batch::now_ms()).await.unwrap();
        store.close().await;
    });
}

fn sql(db_url: &str, statements: &[&str]) {
    block_on(async {
        let (pool, _) = persist::db::connect(db_url).await.unwrap();
        for s in statements {
            sqlx::query(s).execute(&pool).await.unwrap();
        }
    });
}

/// Witness until the gateway has signed what was appended (it signs every 50 ms).
fn witness_until(
    gw: &device::GatewayConfig,
    done: impl Fn(&Result<Witnessed, WitnessError>) -> bool,
) -> Result<Witnessed, WitnessError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = rt.block_on(witness(gw));
        if done(&r) || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_device_notices_a_log_cut_short() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gw");
    let mut config = ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
    config.checkpoint_every = Duration::from_millis(50);
    let db = config.db_url();
    let device_dir = dir.path().join("client");
    std::fs::create_dir_all(&device_dir).unwrap();
    let (size, gw_url) = {
        let running = Running::with(config.clone());
        enroll_directly(&db, "laptop-1", &["group:a"]);
        let pki = Pki::init(&data, &[]).unwrap();
        let (crt, key) = device_cert_at(
            &pki,
            &device_dir,
            "laptop-1",
            Duration::from_secs(3600),
            audit::batch::now_ms(),
        );
        std::fs::rename(crt, device_dir.join("device.crt")).unwrap();
        std::fs::rename(key, device_dir.join("device.key")).unwrap();
        let gw = device::GatewayConfig {
            url: format!("https://127.0.0.1:{}", running.port),
            ca: data.join("ca.crt"),
            data: device_dir.clone(),
        };
        append(&db, 4);
        // The signer checkpoints every 50 ms: let it sign the four.
        std::thread::sleep(Duration::from_millis(500));
        let first = witness_until(&gw, |_| true);
        let Ok(Witnessed::First { size: before }) = first else {
            panic!("{first:?}")
        };
        append(&db, 3);
        let grew = witness_until(&gw, |r| matches!(r, Ok(Witnessed::Grew { .. })));
        let Ok(Witnessed::Grew { from, to }) = grew else {
            panic!("{grew:?}")
        };
        assert_eq!((from, to), (before, before + 3));
        (to, gw.url)
    };
    // Behind the stopped gateway's back: the log, its checkpoints and the
    // signer's own state are cut to 2 entries; the gateway starts afresh.
    sql(
        &db,
        &[
            "DELETE FROM audit_entries WHERE seq >= 2",
            "DELETE FROM audit_checkpoints WHERE tree_size > 2",
        ],
    );
    std::fs::remove_file(data.join("audit.tree")).unwrap();
    let running = Running::with(config);
    let gw = device::GatewayConfig {
        url: format!("https://127.0.0.1:{}", running.port),
        ca: data.join("ca.crt"),
        data: device_dir.clone(),
    };
    assert_ne!(gw.url, gw_url);
    let r = witness_until(&gw, |r| matches!(r, Err(WitnessError::Alarm(_))));
    match r {
        Err(WitnessError::Alarm(Alarm::Shrunk { held, now })) => {
            assert_eq!(held, size);
            assert!(now < size, "{now}");
        }
        other => panic!("expected a shrink alarm, got {other:?}"),
    }
    // The alarm repeats: the device keeps the checkpoint it trusted.
    let again = witness_until(&gw, |_| true);
    assert!(
        matches!(again, Err(WitnessError::Alarm(Alarm::Shrunk { .. }))),
        "{again:?}"
    );
}
