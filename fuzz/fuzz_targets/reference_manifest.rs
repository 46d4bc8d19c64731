//! Fuzz the reference-manifest reader: any bytes are refused or, if the
//! signature verifies (only for the fixture itself), a consistent manifest.
#![no_main]

use std::sync::OnceLock;

use attest::Reference;
use libfuzzer_sys::fuzz_target;

fn key() -> &'static ed25519_dalek::VerifyingKey {
    static K: OnceLock<ed25519_dalek::VerifyingKey> = OnceLock::new();
    K.get_or_init(|| {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../attest/tests/data/org.key.pub");
        let pem = std::fs::read_to_string(p).unwrap_or_default();
        <ed25519_dalek::VerifyingKey as ed25519_dalek::pkcs8::DecodePublicKey>::from_public_key_pem(&pem)
            .expect("fixture key")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = Reference::verify_signed(data, key()) {
        for p in r.pcrs.values() {
            for (bank, v) in &p.value {
                assert_eq!(v.0.len(), bank.digest_size());
            }
        }
    }
});
