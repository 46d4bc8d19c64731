//! At the gateway, against a real swtpm: an evidence accepted once is
//! refused when sent again (its nonce is spent), and a nonce the gateway
//! never issued is refused, even with a valid quote.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use attest::tpm::{AkAlg, Tpm};
use attest::HashAlg;
use base64::Engine as _;
use device::GatewayClient;
use gateway::{Gateway, ServeConfig};
use serde_json::{json, Value};

mod common;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[test]
fn replayed_evidence_and_foreign_nonces_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (swtpm, log_path, reference) = common::measured_swtpm(dir.path());
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let data = dir.path().join("gw");
        let mut config = ServeConfig::new(data.clone(), "127.0.0.1:0".parse().unwrap());
        common::attesting(&mut config, &swtpm, dir.path());
        let g = Gateway::bind(&config).await.unwrap();
        let url = format!("https://127.0.0.1:{}", g.local_addr.port());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(g.run(async {
            let _ = stopped.await;
        }));
        let (pool, _) = persist::db::connect(&config.db_url()).await.unwrap();
        let token = gateway::state::Db::new(pool).await.unwrap().make_token("d1", &[], std::time::Duration::from_secs(60)).await.unwrap();
        let c = GatewayClient::new(&url, &std::fs::read_to_string(data.join("ca.crt")).unwrap(), None).unwrap();

        // Enroll.
        let ak = tpm.create_ak(AkAlg::EccP256).unwrap();
        let ek = tpm.ek_certificate().unwrap();
        let (s, b) = c
            .post("/v1/enroll", &json!({"device_id": "d1", "token": token, "ek_cert": B64.encode(&ek), "ak_pem": ak.public_pem, "ak_public": ak.tpm2b_public}))
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        let secret = tpm
            .activate_credential(&ak, &B64.decode(b["id_object"].as_str().unwrap()).unwrap(), &B64.decode(b["encrypted_secret"].as_str().unwrap()).unwrap())
            .unwrap();
        let (s, _) = c.post("/v1/enroll/finish", &json!({"challenge": b["challenge"], "secret": B64.encode(&secret)})).await.unwrap();
        assert_eq!(s, 200);

        // A second device, d2 (the same TPM and AK, enrolled with its own token).
        let token2 = {
            let (pool, _) = persist::db::connect(&config.db_url()).await.unwrap();
            gateway::state::Db::new(pool).await.unwrap().make_token("d2", &[], std::time::Duration::from_secs(60)).await.unwrap()
        };
        let (s, b) = c
            .post("/v1/enroll", &json!({"device_id": "d2", "token": token2, "ek_cert": B64.encode(&ek), "ak_pem": ak.public_pem, "ak_public": ak.tpm2b_public}))
            .await
            .unwrap();
        assert_eq!(s, 200, "{b}");
        let secret = tpm
            .activate_credential(&ak, &B64.decode(b["id_object"].as_str().unwrap()).unwrap(), &B64.decode(b["encrypted_secret"].as_str().unwrap()).unwrap())
            .unwrap();
        let (s, _) = c.post("/v1/enroll/finish", &json!({"challenge": b["challenge"], "secret": B64.encode(&secret)})).await.unwrap();
        assert_eq!(s, 200);
        // Attest with a nonce from the gateway.
        let pcrs: BTreeSet<u32> = reference.pcrs.keys().copied().collect();
        let sel: BTreeMap<HashAlg, BTreeSet<u32>> = [(HashAlg::Sha256, pcrs)].into();
        let log = std::fs::read(&log_path).unwrap();
        let mut evidence_for = |nonce: &[u8]| -> Value {
            let e = tpm.evidence(&ak, nonce, &sel, vec![log.clone()]).unwrap();
            serde_json::from_str(&e.to_json()).unwrap()
        };
        let key = rcgen::KeyPair::generate().unwrap();
        let csr = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap().serialize_request(&key).unwrap().pem().unwrap();
        let (_, n) = c.post("/v1/attest/nonce", &json!({"device_id": "d1"})).await.unwrap();
        let nonce = hex::decode(n["nonce"].as_str().unwrap()).unwrap();
        // Strangers asking for nonces in d1's name (issue 22, item 11): refused
        // once d1 holds its quota, and the nonce d1 holds stays good.
        let mut refused = 0;
        for _ in 0..10 {
            let (s, b) = c.post("/v1/attest/nonce", &json!({"device_id": "d1"})).await.unwrap();
            if s == 429 {
                assert!(b["detail"].as_str().unwrap().contains("outstanding nonces"), "{b}");
                refused += 1;
            }
        }
        assert_eq!(refused, 10 - (gateway::nonces::PER_DEVICE - 1));
        let body = json!({"device_id": "d1", "evidence": evidence_for(&nonce), "csr": csr});
        let (s, b) = c.post("/v1/attest", &body).await.unwrap();
        assert_eq!(s, 200, "{b}");
        assert!(b["certificate"].as_str().unwrap().contains("BEGIN CERTIFICATE"));

        // The same evidence again: refused, the nonce named.
        let (s, b) = c.post("/v1/attest", &body).await.unwrap();
        assert_eq!(s, 403);
        assert!(b["failures"].as_array().unwrap().iter().any(|f| f["check"] == "nonce"), "{b}");

        // A valid quote over a nonce the gateway never issued: refused.
        let (s, b) = c.post("/v1/attest", &json!({"device_id": "d1", "evidence": evidence_for(&[9; 32]), "csr": csr})).await.unwrap();
        assert_eq!(s, 403, "{b}");

        // d2 cannot use a nonce issued to d1.
        let (_, n) = c.post("/v1/attest/nonce", &json!({"device_id": "d1"})).await.unwrap();
        let nonce = hex::decode(n["nonce"].as_str().unwrap()).unwrap();
        let (s, b) = c.post("/v1/attest", &json!({"device_id": "d2", "evidence": evidence_for(&nonce), "csr": csr})).await.unwrap();
        assert_eq!(s, 403, "{b}");
        assert!(b.to_string().contains("another device"), "{b}");

        // Malformed bodies: 400, never a panic.
        for junk in [json!({}), json!({"device_id": "d1", "evidence": 5, "csr": "x"}), json!({"device_id": "d1", "evidence": {}, "csr": csr})] {
            let (s, _) = c.post("/v1/attest", &junk).await.unwrap();
            assert_eq!(s, 400, "{junk}");
        }
        let (s, _) = c.post("/v1/attest/nonce", &json!({"device_id": "nobody"})).await.unwrap();
        assert_eq!(s, 404);
        let _ = stop.send(());
        server.await.unwrap();
    });
}
