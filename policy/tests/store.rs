//! Policy lines in a real SQLite file and a real PostgreSQL server: stored,
//! read back, validated, and served to a casbin enforcer through the sqlx
//! adapter, with writes through the enforcer landing in the database.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use casbin::{CoreApi as _, MgmtApi as _};
use policy::{FastPolicy, PolicyStore, PolicyText, Request, SqlxAdapter};

fn sample() -> PolicyText {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy/school.csv"
    ))
    .unwrap();
    PolicyText::parse(&text).unwrap()
}

/// Rules and memberships without line numbers.
fn content(t: &PolicyText) -> (Vec<String>, Vec<(String, String)>) {
    let mut r: Vec<String> = t.rules.iter().map(ToString::to_string).collect();
    r.sort();
    let mut m: Vec<(String, String)> = t
        .memberships
        .iter()
        .map(|m| (m.member.clone(), m.group.clone()))
        .collect();
    m.sort();
    (r, m)
}

async fn exercise(url: &str) {
    let (pool, _) = persist::db::connect(url).await.unwrap();
    let store = PolicyStore::new(pool.clone()).await.unwrap();
    assert_eq!(store.load().await.unwrap(), PolicyText::default());
    store.replace(&sample()).await.unwrap();
    let loaded = store.load().await.unwrap();
    assert_eq!(content(&loaded), content(&sample()));
    // The same decisions from the database as from the file.
    let img = Request::Image {
        name: "classroom-2026".to_owned(),
    };
    assert!(
        FastPolicy::compile(&loaded)
            .decide("device:laptop-17", &img)
            .allow
    );

    // casbin over the adapter: loads what is stored...
    let model = casbin::DefaultModel::from_str(policy::model::MODEL)
        .await
        .unwrap();
    let mut e = casbin::Enforcer::new(model, SqlxAdapter::new(store.clone()))
        .await
        .unwrap();
    e.add_function(
        "objMatch",
        casbin::function_map::OperatorFunction::Arg3(|k, r, p| {
            policy::obj_match(&k.to_string(), &r.to_string(), &p.to_string()).into()
        }),
    );
    assert!(e
        .enforce(("device:laptop-17", "image", "classroom-2026", "subscribe"))
        .unwrap());
    assert!(!e
        .enforce(("device:laptop-17", "image", "secret-2026", "subscribe"))
        .unwrap());
    // ... and writes through it.
    assert!(e
        .add_policy(vec![
            "group:school".into(),
            "image".into(),
            "secret-2026".into(),
            "subscribe".into(),
            "allow".into()
        ])
        .await
        .unwrap());
    assert!(e
        .enforce(("device:laptop-17", "image", "secret-2026", "subscribe"))
        .unwrap());
    let again = PolicyStore::new(pool.clone())
        .await
        .unwrap()
        .load()
        .await
        .unwrap();
    assert!(again.rules.iter().any(|r| r.object == "secret-2026"));
    assert!(e
        .remove_filtered_policy(2, vec!["secret-2026".into()])
        .await
        .unwrap());
    let again = store.load().await.unwrap();
    assert!(!again.rules.iter().any(|r| r.object == "secret-2026"));
    // An invalid rule is refused before it reaches the database.
    assert!(e
        .add_policy(vec![
            "group:school".into(),
            "image".into(),
            "x".into(),
            "pull".into(),
            "allow".into()
        ])
        .await
        .is_err());
    assert_eq!(content(&store.load().await.unwrap()), content(&sample()));
    // A row written behind Satchel's back that is not a valid line: named.
    sqlx::query("INSERT INTO policy_rules (id, ptype, v0, v1, v2, v3, v4, v5) VALUES (999, 'p', 'group:x', 'file', '/etc', 'read', 'allow', '')")
        .execute(&pool)
        .await
        .unwrap();
    let err = store.load().await.unwrap_err().to_string();
    assert!(err.contains("file"), "{err}");
}

#[test]
fn sqlite_store_and_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("policy.db").display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(exercise(&url));
}

#[test]
fn postgres_store_and_adapter() {
    let pg = tpm_sim_tests::Postgres::start().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(exercise(&pg.url()));
}
