//! The verifier on a realistic evidence: P-256 AK, 8 PCRs, a 100-event
//! log (quoted by swtpm; `attest/tests/data`, made by
//! `scripts/make-attest-fixture.sh`). One iteration is one whole
//! verification: signature, nonce, PCR digest, log parse and replay,
//! reference comparison. Run: `cargo bench -p attest --bench verify`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use attest::evidence::Evidence;
use attest::{verify, Reference};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::pkcs8::DecodePublicKey as _;

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name),
    )
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let key = ed25519_dalek::VerifyingKey::from_public_key_pem(
        std::str::from_utf8(&data("org.key.pub")).unwrap(),
    )
    .unwrap();
    let reference = Reference::verify_signed(&data("reference.json"), &key).unwrap();
    let json = data("evidence.json");
    let evidence = Evidence::from_json(&json).unwrap();
    let nonce = hex::decode(String::from_utf8(data("nonce.hex")).unwrap().trim()).unwrap();
    assert!(verify(&evidence, &reference, &nonce, None).trusted);

    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("evidence", |b| {
        b.iter(|| verify(&evidence, &reference, &nonce, None))
    });
    g.bench_function("evidence_from_json", |b| {
        b.iter(|| {
            let e = Evidence::from_json(&json).unwrap();
            verify(&e, &reference, &nonce, None)
        })
    });
    // The parts, to show where the time goes.
    let sig = attest::tpm2::Signature::parse(&evidence.signature).unwrap();
    let ak = attest::tpm2::PublicKey::from_pem(&evidence.ak_pem).unwrap();
    g.bench_function("part_signature_only", |b| {
        b.iter(|| sig.verify(&ak, &evidence.quote).unwrap())
    });
    g.bench_function("part_log_parse_replay", |b| {
        b.iter(|| {
            let log = attest::verify::combine_logs(&evidence.event_logs).unwrap();
            attest::verify::compare_replay(&log, &evidence.pcrs, "quoted")
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
