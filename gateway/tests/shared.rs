//! Two gateways on one PostgreSQL, with the organisation's keys shared
//! from configuration (the same CA files): a device begins its enrollment
//! at one and finishes it at the other, and attests through the other with
//! the first one's nonce; a nonce spent
//! at one is spent at both; a certificate from one is honoured by the
//! other; a revocation made through the database stops the device at both
//! on its next request; a policy or reference an admin puts through one is
//! in force at the other within moments; both append to one audit log, one of them signs
//! its checkpoints at a time, and the other takes over when it stops.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use attest::tpm::{AkAlg, Tpm};
use attest::HashAlg;
use base64::Engine as _;
use device::GatewayClient;
use gateway::ServeConfig;
use serde_json::{json, Value};

mod common;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The organisation's keys and certificates from `from` into `to`: what a
/// second gateway is configured with (its database is the shared one).
fn share_keys(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.ends_with(".crt") || name.ends_with(".key") || name.ends_with(".pub") {
            std::fs::copy(&p, to.join(&name)).unwrap();
        }
    }
}

/// The size the signer whose state is in `data` last signed (0: none).
fn signed_size(data: &Path) -> u64 {
    std::fs::read(data.join("audit.tree"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["size"].as_u64())
        .unwrap_or(0)
}

/// The audit log's entries and the largest checkpoint stored.
fn log_state(url: &str) -> (u64, u64) {
    common::block_on(async {
        let store = audit::store::Store::open(url).await.unwrap();
        let size = store.size().await.unwrap();
        let cp = store
            .checkpoints()
            .await
            .unwrap()
            .iter()
            .map(|c| c.size)
            .max()
            .unwrap_or(0);
        (size, cp)
    })
}

/// Wait until a checkpoint covers the whole log; its size.
fn covered(url: &str) -> u64 {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (size, cp) = log_state(url);
        if size > 0 && cp == size {
            return size;
        }
        assert!(
            Instant::now() < until,
            "no checkpoint covers {size} entries (last {cp})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_gateways_on_one_postgres_share_devices_nonces_revocations_and_one_audit_log() {
    let pg = tpm_sim_tests::Postgres::start().unwrap();
    let url = pg.url();
    let dir = tempfile::tempdir().unwrap();
    let (swtpm, log_path, reference) = common::measured_swtpm(dir.path());
    let config = |name: &str| {
        let mut c = ServeConfig::new(dir.path().join(name), "127.0.0.1:0".parse().unwrap());
        c.db = Some(url.clone());
        c.checkpoint_every = Duration::from_millis(200);
        c.follow_every = Duration::from_millis(200);
        common::attesting(&mut c, &swtpm, dir.path());
        c
    };
    let a = common::Running::with(config("a"));
    share_keys(&dir.path().join("a"), &dir.path().join("b"));
    let b = common::Running::with(config("b"));
    let ca = std::fs::read_to_string(dir.path().join("a/ca.crt")).unwrap();
    assert_eq!(
        ca,
        std::fs::read_to_string(dir.path().join("b/ca.crt")).unwrap()
    );

    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let at =
        |port: u16| GatewayClient::new(&format!("https://127.0.0.1:{port}"), &ca, None).unwrap();
    let (ca_client, cb_client) = (at(a.port), at(b.port));
    let token = rt.block_on(async {
        let (pool, _) = persist::db::connect(&url).await.unwrap();
        gateway::state::Db::new(pool)
            .await
            .unwrap()
            .make_token("d1", &[], Duration::from_secs(60))
            .await
            .unwrap()
    });

    // Enroll: begin at A ...
    let ak = tpm.create_ak(AkAlg::EccP256).unwrap();
    let ek = tpm.ek_certificate().unwrap();
    let (s, e) = rt
        .block_on(ca_client.post("/v1/enroll", &json!({"device_id": "d1", "token": token, "ek_cert": B64.encode(&ek), "ak_pem": ak.public_pem, "ak_public": ak.tpm2b_public})))
        .unwrap();
    assert_eq!(s, 200, "{e}");
    let secret = tpm
        .activate_credential(
            &ak,
            &B64.decode(e["id_object"].as_str().unwrap()).unwrap(),
            &B64.decode(e["encrypted_secret"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
    // ... and finish at B: the challenge is in the shared database.
    let (s, f) = rt
        .block_on(cb_client.post(
            "/v1/enroll/finish",
            &json!({"challenge": e["challenge"], "secret": B64.encode(&secret)}),
        ))
        .unwrap();
    assert_eq!(s, 200, "{f}");

    let log = std::fs::read(&log_path).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    // As a device does: quote the PCRs the nonce's answer names.
    let mut attest_body = |nonce: &Value| -> Value {
        let pcrs: BTreeSet<u32> = nonce["pcrs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| u32::try_from(p.as_u64().unwrap()).unwrap())
            .collect();
        let sel: BTreeMap<HashAlg, BTreeSet<u32>> = [(HashAlg::Sha256, pcrs)].into();
        let nonce = hex::decode(nonce["nonce"].as_str().unwrap()).unwrap();
        let e = tpm.evidence(&ak, &nonce, &sel, vec![log.clone()]).unwrap();
        let evidence: Value = serde_json::from_str(&e.to_json()).unwrap();
        json!({"device_id": "d1", "evidence": evidence, "csr": csr})
    };

    // A nonce from A, the evidence to B: trusted, and B issues the
    // certificate.
    let (_, n) = rt
        .block_on(ca_client.post("/v1/attest/nonce", &json!({"device_id": "d1"})))
        .unwrap();
    let body = attest_body(&n);
    let (s, r) = rt.block_on(cb_client.post("/v1/attest", &body)).unwrap();
    assert_eq!(s, 200, "{r}");
    let cert_from_b = r["certificate"].as_str().unwrap().to_owned();
    // The same evidence at A: its nonce is spent there too.
    let (s, r) = rt.block_on(ca_client.post("/v1/attest", &body)).unwrap();
    assert_eq!(s, 403, "{r}");
    assert!(
        r["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "nonce"),
        "{r}"
    );

    // B's certificate is honoured by A (one device CA).
    let (crt, keyf) = (dir.path().join("d1.crt"), dir.path().join("d1.key"));
    std::fs::write(&crt, &cert_from_b).unwrap();
    std::fs::write(&keyf, key.serialize_pem()).unwrap();
    let (s, who) = common::status_and_body(&common::curl(
        a.port,
        &dir.path().join("a"),
        "/v1/whoami",
        Some((&crt, &keyf)),
    ));
    assert_eq!(s, "200", "{who}");
    assert_eq!(who["device_id"], "d1", "{who}");

    // An admin replaces the policy through A: B puts it in force too.
    let admin = gateway::Pki::init(&dir.path().join("a"), &[])
        .unwrap()
        .issue_admin_cert("alice", Duration::from_secs(600))
        .unwrap();
    let (acrt, akey) = (dir.path().join("alice.crt"), dir.path().join("alice.key"));
    std::fs::write(&acrt, admin.cert_pem).unwrap();
    std::fs::write(&akey, admin.key_pem).unwrap();
    let policy = dir.path().join("policy.csv");
    std::fs::write(
        &policy,
        "p, group:school, url, https://shared.school.example/*, GET, allow\n\
         g, device:d1, group:school\n",
    )
    .unwrap();
    let (s, r) = common::api(
        a.port,
        &dir.path().join("a"),
        "/v1/admin/policy",
        (&acrt, &akey),
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", policy.display()),
        ],
    );
    assert_eq!(s, "200", "{r}");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, text) = common::api(
            b.port,
            &dir.path().join("b"),
            "/v1/admin/policy",
            (&acrt, &akey),
            &[],
        );
        assert_eq!(s, "200", "{text}");
        if text.contains("https://shared.school.example/*") {
            break;
        }
        assert!(Instant::now() < until, "B still holds: {text}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A newer reference through A (one PCR fewer): B quotes for it too.
    let mut newer = reference.clone();
    newer.version += 1;
    let dropped = *newer.pcrs.keys().next_back().unwrap();
    newer.pcrs.remove(&dropped);
    let org = persist::keys::read_private(&dir.path().join("org.key")).unwrap();
    let newer_file = dir.path().join("newer.json");
    std::fs::write(&newer_file, newer.sign(&org).unwrap()).unwrap();
    let (s, r) = common::api(
        a.port,
        &dir.path().join("a"),
        "/v1/admin/reference",
        (&acrt, &akey),
        &[
            "-X",
            "PUT",
            "--data-binary",
            &format!("@{}", newer_file.display()),
        ],
    );
    assert_eq!(s, "200", "{r}");
    std::thread::sleep(Duration::from_millis(1500));
    let (s, n) = rt
        .block_on(cb_client.post("/v1/attest/nonce", &json!({"device_id": "d1"})))
        .unwrap();
    assert_eq!(s, 200, "{n}");
    let quoted: Vec<u64> = n["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let expected: Vec<u64> = newer.pcrs.keys().map(|p| u64::from(*p)).collect();
    assert_eq!(quoted, expected, "B still quotes for the older reference");

    // Every attestation landed in one log, in one sequence; one gateway
    // signs it.
    let first = covered(&url);
    let signers: Vec<&str> = ["a", "b"]
        .into_iter()
        .filter(|g| signed_size(&dir.path().join(g)) == first)
        .collect();
    assert_eq!(signers.len(), 1, "exactly one signer: {signers:?}");
    let entries = common::audit_entries(&url);
    let attestations: Vec<_> = entries
        .iter()
        .filter(|e| e.kind == "attestation" && e.actor == "d1")
        .collect();
    assert!(attestations.len() >= 2, "{attestations:?}");

    // The signer stops; the other takes over and signs what follows.
    let (leader, survivor, survivor_port) = if signers[0] == "a" {
        (a, "b", b.port)
    } else {
        (b, "a", a.port)
    };
    drop(leader);
    let survivor_client = at(survivor_port);
    let (_, n) = rt
        .block_on(survivor_client.post("/v1/attest/nonce", &json!({"device_id": "d1"})))
        .unwrap();
    let body = attest_body(&n);
    let (s, r) = rt
        .block_on(survivor_client.post("/v1/attest", &body))
        .unwrap();
    assert_eq!(s, 200, "{r}");
    let second = covered(&url);
    assert!(second > first);
    assert_eq!(signed_size(&dir.path().join(survivor)), second);

    // A revocation made through the shared database: refused at once.
    common::revoke_directly(&url, "d1");
    let (s, r) = rt
        .block_on(survivor_client.post("/v1/attest/nonce", &json!({"device_id": "d1"})))
        .unwrap();
    assert_eq!(s, 403, "{r}");
    let (s, who) = common::status_and_body(&common::curl(
        survivor_port,
        &dir.path().join(survivor),
        "/v1/whoami",
        Some((&crt, &keyf)),
    ));
    assert_eq!(s, "403", "a revoked device's certificate: {who}");

    // The shared log verifies whole with the organisation's audit key.
    let report = rt.block_on(async {
        let store = audit::store::Store::open(&url).await.unwrap();
        let key = persist::keys::read_private(&dir.path().join("a/audit.key")).unwrap();
        let verifier =
            audit::checkpoint::Verifier::new(gateway::server::AUDIT_ORIGIN, key.verifying_key())
                .unwrap();
        audit::log::verify_store(&store, &verifier).await.unwrap()
    });
    assert!(report.intact(), "{:?}", report.problems);
    assert!(report.checkpoints_verified >= 2, "{report:?}");
}
