//! The gateway's CPU work per attestation, TPM time excluded: verify a
//! pre-made evidence (swtpm quote, P-256 AK, 100-event log; the fixture of
//! `attest/tests/data`) against the signed reference with the pinned AK,
//! then issue the device certificate from a CSR. Run:
//! `cargo bench -p gateway --bench attest`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use attest::evidence::Evidence;
use attest::{verify, Reference};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use gateway::{DeviceCertRequest, Pki};

fn data(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../attest/tests/data")
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
    let nonce = hex::decode(String::from_utf8(data("nonce.hex")).unwrap().trim()).unwrap();
    let evidence = Evidence::from_json(&json).unwrap();
    let pinned = attest::tpm2::PublicKey::from_pem(&evidence.ak_pem).unwrap();
    assert!(verify(&evidence, &reference, &nonce, Some(&pinned)).trusted);

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::init(dir.path(), &[]).unwrap();
    let device_key = rcgen::KeyPair::generate().unwrap();
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&device_key)
        .unwrap()
        .pem()
        .unwrap();

    let mut g = c.benchmark_group("gateway_attestation");
    g.throughput(Throughput::Elements(1));
    g.bench_function("verify_and_issue", |b| {
        b.iter(|| {
            let e = Evidence::from_json(&json).unwrap();
            assert!(verify(&e, &reference, &nonce, Some(&pinned)).trusted);
            let csr = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
            pki.issue_device_cert(&DeviceCertRequest {
                device_id: "laptop-17",
                public_key: &csr.public_key,
                lifetime: Duration::from_secs(3600),
                attestation_id: "laptop-17-1",
                attested_at_ms: 1,
            })
            .unwrap()
        })
    });
    g.bench_function("part_issue_certificate", |b| {
        b.iter(|| {
            pki.issue_device_cert(&DeviceCertRequest {
                device_id: "laptop-17",
                public_key: &device_key,
                lifetime: Duration::from_secs(3600),
                attestation_id: "laptop-17-1",
                attested_at_ms: 1,
            })
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
