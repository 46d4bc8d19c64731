//! Fuzz the whole verifier: evidence JSON from the fuzzer, checked against
//! the fixture's signed reference. Nothing panics, and mutated evidence is
//! trusted only if it still carries the fixture's valid quote and logs.
#![no_main]

use std::sync::OnceLock;

use attest::evidence::Evidence;
use attest::{verify, Reference};
use libfuzzer_sys::fuzz_target;

fn reference() -> &'static (Reference, Vec<u8>) {
    static R: OnceLock<(Reference, Vec<u8>)> = OnceLock::new();
    R.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/data/");
        let read = |n: &str| std::fs::read(format!("{dir}{n}")).unwrap_or_default();
        let pem = String::from_utf8(read("org.key.pub")).unwrap_or_default();
        let key = <ed25519_dalek::VerifyingKey as ed25519_dalek::pkcs8::DecodePublicKey>::from_public_key_pem(&pem)
            .expect("fixture key");
        let r = Reference::verify_signed(&read("reference.json"), &key).expect("fixture reference");
        let nonce = hex::decode(String::from_utf8(read("nonce.hex")).unwrap_or_default().trim())
            .unwrap_or_default();
        (r, nonce)
    })
}

fuzz_target!(|data: &[u8]| {
    let (r, nonce) = reference();
    if let Ok(e) = Evidence::from_json(data) {
        let v = verify(&e, r, nonce, None);
        assert_eq!(v.trusted, v.failures.is_empty());
    }
});
