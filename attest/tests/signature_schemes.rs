//! Every signature scheme the verifier accepts, made in software and
//! wrapped as a TPMT_SIGNATURE: ECDSA P-256, RSASSA-PKCS1-v1_5 and RSA-PSS
//! (salt as long as the digest, as TPMs make it) verify; a flipped bit, a
//! scheme that does not fit the key, and SHA-1 are refused.
//! `rsa-test-key.pem` is a throwaway key made for this test with openssl.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use attest::tpm2::{PublicKey, Signature};
use rsa::pkcs8::DecodePrivateKey as _;
use rsa::signature::{RandomizedSigner as _, SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;

const MSG: &[u8] = b"\xffTCG\x80\x18 a quote, as far as signatures care";

fn tpmt(alg: u16, hash: u16, parts: &[&[u8]]) -> Vec<u8> {
    let mut out = alg.to_be_bytes().to_vec();
    out.extend_from_slice(&hash.to_be_bytes());
    for p in parts {
        out.extend_from_slice(&u16::try_from(p.len()).unwrap().to_be_bytes());
        out.extend_from_slice(p);
    }
    out
}

fn rsa_key() -> (rsa::RsaPrivateKey, PublicKey) {
    let pem = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/rsa-test-key.pem"
    ))
    .unwrap();
    let k = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).unwrap();
    let public = PublicKey::Rsa {
        n: k.n().to_bytes_be(),
        e: k.e().to_bytes_be(),
    };
    (k, public)
}

fn check(sig_bytes: Vec<u8>, key: &PublicKey) {
    let sig = Signature::parse(&sig_bytes).unwrap();
    assert_eq!(sig.to_bytes(), sig_bytes);
    sig.verify(key, MSG).unwrap();
    assert!(sig.verify(key, b"another message").is_err());
    // Every single-bit flip of the signature value is refused.
    for i in 6..sig_bytes.len() {
        let mut bad = sig_bytes.clone();
        bad[i] ^= 0x01;
        if let Ok(s) = Signature::parse(&bad) {
            assert!(s.verify(key, MSG).is_err(), "byte {i}");
        }
    }
}

#[test]
fn rsassa_pkcs1_v1_5() {
    let (k, public) = rsa_key();
    let s = rsa::pkcs1v15::SigningKey::<sha2::Sha256>::new(k)
        .sign(MSG)
        .to_vec();
    check(tpmt(0x0014, 0x000b, &[&s]), &public);
}

#[test]
fn rsa_pss_with_digest_length_salt() {
    let (k, public) = rsa_key();
    let s = rsa::pss::SigningKey::<sha2::Sha256>::new(k)
        .sign_with_rng(&mut rand_core::OsRng, MSG)
        .to_vec();
    check(tpmt(0x0016, 0x000b, &[&s]), &public);
    // The same bytes claimed as PKCS#1 v1.5: refused.
    let as_ssa = Signature::parse(&tpmt(0x0014, 0x000b, &[&s])).unwrap();
    assert!(as_ssa.verify(&public, MSG).is_err());
}

#[test]
fn ecdsa_p256() {
    let k = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let sig: p256::ecdsa::Signature = k.sign(MSG);
    let (r, s) = sig.split_bytes();
    let public = PublicKey::EcdsaP256 {
        sec1: k
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    };
    check(tpmt(0x0018, 0x000b, &[&r, &s]), &public);
    // TPMs may strip leading zeros of r and s: still verifies.
    let strip = |b: &[u8]| b[b.iter().take_while(|&&x| x == 0).count()..].to_vec();
    let stripped = tpmt(0x0018, 0x000b, &[&strip(&r), &strip(&s)]);
    Signature::parse(&stripped)
        .unwrap()
        .verify(&public, MSG)
        .unwrap();
    // Round trip through PEM.
    let pem = public.to_pem().unwrap();
    assert_eq!(PublicKey::from_pem(&pem).unwrap(), public);
}

#[test]
fn mismatched_schemes_and_weak_hashes_are_refused() {
    let (_, rsa_public) = rsa_key();
    let k = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let ec_public = PublicKey::EcdsaP256 {
        sec1: k
            .verifying_key()
            .to_encoded_point(false)
            .as_bytes()
            .to_vec(),
    };
    let sig: p256::ecdsa::Signature = k.sign(MSG);
    let (r, s) = sig.split_bytes();
    let ecdsa = Signature::parse(&tpmt(0x0018, 0x000b, &[&r, &s])).unwrap();
    assert!(ecdsa.verify(&rsa_public, MSG).is_err());
    let sha1 = Signature::parse(&tpmt(0x0018, 0x0004, &[&r, &s])).unwrap();
    assert!(sha1.verify(&ec_public, MSG).is_err());
    // Unknown schemes and hashes do not parse.
    assert!(Signature::parse(&tpmt(0x0010, 0x000b, &[&r])).is_err());
    assert!(Signature::parse(&tpmt(0x0018, 0x0099, &[&r, &s])).is_err());
}
