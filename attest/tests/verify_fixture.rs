//! The verifier on a real evidence (quoted by swtpm; see
//! `scripts/make-attest-fixture.sh`), without a TPM: the honest evidence is
//! trusted, and every truncation or malformation of its parts is an error,
//! never a panic and never a trusted verdict.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;

use attest::evidence::Evidence;
use attest::tpm2::{AkPublic, Quote, Signature};
use attest::verify::Check;
use attest::{verify, Reference};
use ed25519_dalek::pkcs8::DecodePublicKey as _;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

fn fixture() -> (Evidence, Reference, Vec<u8>) {
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(
        std::str::from_utf8(&data("org.key.pub")).unwrap(),
    )
    .unwrap();
    let reference = Reference::verify_signed(&data("reference.json"), &key).unwrap();
    let evidence = Evidence::from_json(&data("evidence.json")).unwrap();
    let nonce = hex::decode(String::from_utf8(data("nonce.hex")).unwrap().trim()).unwrap();
    (evidence, reference, nonce)
}

#[test]
fn fixture_is_trusted_and_describes_a_realistic_boot() {
    let (e, r, nonce) = fixture();
    let v = verify(&e, &r, &nonce, None);
    assert!(v.trusted, "{:#?}", v.failures);
    let q = v.quote.unwrap();
    assert_eq!(q.pcr_select.len(), 1);
    assert_eq!(q.pcr_select[0].pcrs, (0..8).collect::<Vec<_>>());
    let log = attest::eventlog::parse(&e.event_logs[0]).unwrap();
    assert_eq!(log.measured_events().count(), 100);
    let ak = AkPublic::parse_tpm2b(e.ak_public.as_ref().unwrap()).unwrap();
    assert!(ak.attestation_problem().is_none());
    assert_eq!(
        ak.key,
        attest::tpm2::PublicKey::from_pem(&e.ak_pem).unwrap()
    );
}

#[test]
fn every_truncation_of_the_tpm_structures_is_an_error() {
    let (e, _, _) = fixture();
    for n in 0..e.quote.len() {
        assert!(Quote::parse(&e.quote[..n]).is_err(), "quote cut at {n}");
    }
    for n in 0..e.signature.len() {
        assert!(
            Signature::parse(&e.signature[..n]).is_err(),
            "signature cut at {n}"
        );
    }
    let ak = e.ak_public.clone().unwrap();
    for n in 0..ak.len() {
        assert!(
            AkPublic::parse_tpm2b(&ak[..n]).is_err(),
            "ak_public cut at {n}"
        );
    }
    // Trailing bytes are refused too.
    let mut long = e.quote.clone();
    long.push(0);
    assert!(Quote::parse(&long).is_err());
    // Encoding the signature back gives the same bytes.
    assert_eq!(
        Signature::parse(&e.signature).unwrap().to_bytes(),
        e.signature
    );
}

#[test]
fn wrong_magic_type_and_oversized_fields_are_named() {
    let (e, _, _) = fixture();
    let mut q = e.quote.clone();
    q[0] = 0;
    assert!(Quote::parse(&q).unwrap_err().to_string().contains("magic"));
    let mut q = e.quote.clone();
    q[5] = 0x17; // TPM_ST_ATTEST_CERTIFY
    assert!(Quote::parse(&q).unwrap_err().to_string().contains("type"));
    let mut q = e.quote.clone();
    q[6] = 0xff; // qualifiedSigner size 0xff22
    assert!(Quote::parse(&q)
        .unwrap_err()
        .to_string()
        .contains("exceeds"));
}

#[test]
fn truncated_or_corrupt_evidence_json_is_refused_not_trusted() {
    let (_, r, nonce) = fixture();
    let json = data("evidence.json");
    for n in (0..json.len()).step_by(97) {
        assert!(Evidence::from_json(&json[..n]).is_err(), "cut at {n}");
    }
    let text = String::from_utf8(json).unwrap();
    let e: serde_json::Value = serde_json::from_str(&text).unwrap();
    for field in [
        "quote",
        "signature",
        "ak_pem",
        "nonce",
        "pcrs",
        "event_logs",
    ] {
        let mut v = e.clone();
        v.as_object_mut().unwrap().remove(field);
        assert!(
            Evidence::from_json(v.to_string().as_bytes()).is_err(),
            "without {field}"
        );
    }
    // Bad base64, a PCR value of the wrong size, an unknown bank.
    for (path, bad) in [
        ("/quote", serde_json::json!("%%%")),
        ("/pcrs/sha256/0", serde_json::json!("00")),
        ("/pcrs", serde_json::json!({"md5": {"0": "00"}})),
        ("/format", serde_json::json!("satchel-evidence-v9")),
    ] {
        let mut v = e.clone();
        *v.pointer_mut(path).unwrap() = bad;
        assert!(
            Evidence::from_json(v.to_string().as_bytes()).is_err(),
            "{path}"
        );
    }
    // A garbage AK PEM: parsed, but not trusted, and the reason names it.
    let mut v = e.clone();
    v["ak_pem"] = serde_json::json!("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n");
    let ev = Evidence::from_json(v.to_string().as_bytes()).unwrap();
    let verdict = verify(&ev, &r, &nonce, None);
    assert!(!verdict.trusted);
    assert!(verdict
        .failures
        .iter()
        .any(|f| f.check == Check::AttestationKey));
}

#[test]
fn truncated_reference_manifests_are_refused() {
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(
        std::str::from_utf8(&data("org.key.pub")).unwrap(),
    )
    .unwrap();
    let r = data("reference.json");
    for n in (0..r.len()).step_by(61) {
        assert!(
            Reference::verify_signed(&r[..n], &key).is_err(),
            "cut at {n}"
        );
    }
}
