//! Tests for `audit::checkpoint`: signed-note checkpoints round-trip,
//! interoperate with the Go `sumdb/note` reference vector, and every
//! tampering we can think of (each byte flipped, sizes and roots edited,
//! another key, malformed lines, oversized notes) is rejected, while
//! signatures by unknown keys are ignored. Also the key file helpers.
//!
//! Test vectors from other implementations are quoted with their source;
//! nothing here may be adjusted to make the crate pass.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use audit::checkpoint::{
    key_id, parse_and_verify, sign_note, verify_note, vkey, Checkpoint, CheckpointError, Verifier,
    MAX_NOTE_BYTES, MAX_SIGNATURES,
};
use audit::merkle::{empty_root, leaf_hash, Hash};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use sha2::{Digest, Sha256};

const NAME: &str = "satchel.example/audit";

/// golang.org/x/mod/sumdb/note's documented example (note.go, note_test.go).
const GO_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const GO_SKEY: &str =
    "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n";
const GO_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                       then you don't know what your problem is.\n\
                       \n\
                       \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
/// Another verifier key from the Go tests, and one whose base64 holds '+'
/// (transparency-dev/formats note tests).
const OTHER_VKEYS: [&str; 2] = [
    "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
    "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
];

/// Which error a malformed input must produce.
type Expect = fn(&CheckpointError) -> bool;

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn verifier(k: &SigningKey, name: &str) -> Verifier {
    Verifier::new(name, k.verifying_key()).unwrap()
}

fn checkpoint(size: u64) -> Checkpoint {
    Checkpoint {
        origin: NAME.to_owned(),
        size,
        root: leaf_hash(&size.to_be_bytes()),
    }
}

/// A signature line by `k` under `name` over `text`, built by hand.
fn signature_line(text: &str, k: &SigningKey, name: &str, id: [u8; 4]) -> String {
    let mut blob = id.to_vec();
    blob.extend_from_slice(&k.sign(text.as_bytes()).to_bytes());
    format!("\u{2014} {name} {}\n", STANDARD.encode(blob))
}

fn independent_key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut input = name.as_bytes().to_vec();
    input.push(0x0a);
    input.push(0x01);
    input.extend_from_slice(public);
    Sha256::digest(&input)[..4].try_into().unwrap()
}

// ---- Format ----

#[test]
fn body_is_origin_size_base64_root() {
    let cp = Checkpoint {
        origin: "example.com/log".into(),
        size: 20852163,
        root: [0xff; 32],
    };
    assert_eq!(
        cp.body(),
        "example.com/log\n20852163\n//////////////////////////////////////////8=\n"
    );
}

#[test]
fn round_trip() {
    let k = key(1);
    for size in [0, 1, 7, u64::MAX] {
        let cp = checkpoint(size);
        let note = cp.sign(&k, NAME);
        assert!(note.starts_with(&cp.body()));
        let sig = note.strip_prefix(&cp.body()).unwrap();
        assert!(
            sig.starts_with("\n\u{2014} satchel.example/audit "),
            "{sig:?}"
        );
        assert!(sig.ends_with("=\n") && sig.matches('\n').count() == 2);
        assert_eq!(parse_and_verify(&note, &verifier(&k, NAME)).unwrap(), cp);
        assert_eq!(cp.try_sign(&k, NAME).unwrap(), note, "deterministic");
    }
}

#[test]
fn empty_tree_checkpoint() {
    let k = key(1);
    let cp = Checkpoint {
        origin: NAME.into(),
        size: 0,
        root: empty_root(),
    };
    let note = cp.sign(&k, NAME);
    assert!(note.contains("\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"));
    assert_eq!(parse_and_verify(&note, &verifier(&k, NAME)).unwrap(), cp);
}

// ---- Interoperability with golang.org/x/mod/sumdb/note ----

fn go_signing_key() -> SigningKey {
    let encoded = GO_SKEY.splitn(5, '+').nth(4).unwrap();
    let bytes = STANDARD.decode(encoded).unwrap();
    assert_eq!(bytes[0], 0x01);
    SigningKey::from_bytes(&bytes[1..].try_into().unwrap())
}

#[test]
fn go_vkey_parses_and_its_key_id_checks() {
    let v = Verifier::from_vkey(GO_VKEY).unwrap();
    assert_eq!(v.name(), "PeterNeumann");
    assert_eq!(hex::encode(v.key_id()), "c74f20a3");
    assert_eq!(v.vkey(), GO_VKEY);
    assert_eq!(v.key(), &go_signing_key().verifying_key());
    for text in OTHER_VKEYS {
        let v: Verifier = text.parse().unwrap();
        assert_eq!(v.vkey(), text, "round trip");
    }
}

#[test]
fn go_note_verifies_and_we_sign_it_byte_for_byte() {
    let v = Verifier::from_vkey(GO_VKEY).unwrap();
    assert_eq!(verify_note(GO_NOTE, &v).unwrap(), GO_TEXT);
    assert_eq!(
        sign_note(GO_TEXT, &go_signing_key(), "PeterNeumann").unwrap(),
        GO_NOTE
    );
    // The text verified, but it is not a checkpoint.
    assert!(matches!(
        parse_and_verify(GO_NOTE, &v),
        Err(CheckpointError::MissingBodyLine { line: 3 })
    ));
    let edited = GO_NOTE.replace("cryptography", "cryptographY");
    assert!(matches!(
        verify_note(&edited, &v),
        Err(CheckpointError::BadSignature { line: 4, .. })
    ));
}

#[test]
fn key_id_matches_independent_computation() {
    for (seed, name) in [(1u8, NAME), (2, "a"), (3, "example.com/log\u{2014}x")] {
        let public = key(seed).verifying_key();
        let expected = independent_key_id(name, public.as_bytes());
        assert_eq!(key_id(name, &public), expected);
        let text = vkey(name, &public).unwrap();
        let parts: Vec<&str> = text.splitn(3, '+').collect();
        assert_eq!(parts[0], name);
        assert_eq!(parts[1], hex::encode(expected));
        let typed = STANDARD.decode(parts[2]).unwrap();
        assert_eq!(typed[0], 0x01);
        assert_eq!(&typed[1..], public.as_bytes());
        assert_eq!(
            Verifier::from_vkey(&text).unwrap(),
            verifier(&key(seed), name)
        );
    }
}

// ---- Tampering ----

/// Flip bits 0, 5 and 7 of byte `i`; `None` when the result is not UTF-8
/// (such input cannot even reach the parser, which takes `&str`).
fn flipped(note: &str, i: usize) -> Vec<String> {
    [0u8, 5, 7]
        .iter()
        .filter_map(|bit| {
            let mut bytes = note.as_bytes().to_vec();
            bytes[i] ^= 1 << bit;
            String::from_utf8(bytes).ok()
        })
        .collect()
}

#[test]
fn every_byte_flipped_is_rejected() {
    let k = key(1);
    let v = verifier(&k, NAME);
    let note = checkpoint(1234).sign(&k, NAME);
    let mut tried = 0;
    for i in 0..note.len() {
        for bad in flipped(&note, i) {
            let result = parse_and_verify(&bad, &v);
            assert!(result.is_err(), "byte {i} flipped: accepted {bad:?}");
            tried += 1;
        }
    }
    assert!(tried > note.len(), "{tried} variants");
}

#[test]
fn flips_in_an_unknown_signature_are_ignored_or_malformed() {
    let (k, other) = (key(1), key(2));
    let v = verifier(&k, NAME);
    let cp = checkpoint(99);
    let body = cp.body();
    let unknown = signature_line(
        &body,
        &other,
        "witness.example",
        key_id("witness.example", &other.verifying_key()),
    );
    let note = format!("{}{unknown}", cp.sign(&k, NAME));
    assert_eq!(parse_and_verify(&note, &v).unwrap(), cp);
    let start = note.len() - unknown.len();
    let (mut ignored, mut malformed) = (0, 0);
    for i in start..note.len() {
        for bad in flipped(&note, i) {
            match parse_and_verify(&bad, &v) {
                Ok(got) => {
                    assert_eq!(got, cp);
                    ignored += 1;
                }
                Err(
                    CheckpointError::MalformedSignature { line: 6 }
                    | CheckpointError::ControlCharacter { .. }
                    | CheckpointError::Unterminated,
                ) => malformed += 1,
                Err(e) => panic!("byte {i}: unexpected {e:?}"),
            }
        }
    }
    assert!(
        ignored > 100 && malformed > 10,
        "{ignored} ignored, {malformed} malformed"
    );
}

#[test]
fn another_key_is_rejected() {
    let (k, other) = (key(1), key(2));
    let note = checkpoint(5).sign(&other, NAME);
    // Same name, different key: the key id differs, so no known signature.
    assert!(matches!(
        parse_and_verify(&note, &verifier(&k, NAME)),
        Err(CheckpointError::NoKnownSignature { .. })
    ));
    // The right key under another name is another key too.
    let note = checkpoint(5).sign(&k, "other.example");
    assert!(matches!(
        parse_and_verify(&note, &verifier(&k, NAME)),
        Err(CheckpointError::NoKnownSignature { .. })
    ));
    // Another key claiming our name and key id: a bad signature.
    let body = checkpoint(5).body();
    let forged = format!(
        "{body}\n{}",
        signature_line(&body, &other, NAME, key_id(NAME, &k.verifying_key()))
    );
    assert!(matches!(
        parse_and_verify(&forged, &verifier(&k, NAME)),
        Err(CheckpointError::BadSignature { line: 5, .. })
    ));
}

#[test]
fn a_bad_known_signature_rejects_despite_a_good_one() {
    let k = key(1);
    let body = checkpoint(5).body();
    let good = signature_line(&body, &k, NAME, key_id(NAME, &k.verifying_key()));
    let bad = signature_line("other text\n", &k, NAME, key_id(NAME, &k.verifying_key()));
    for note in [
        format!("{body}\n{good}{bad}"),
        format!("{body}\n{bad}{good}"),
    ] {
        assert!(matches!(
            parse_and_verify(&note, &verifier(&k, NAME)),
            Err(CheckpointError::BadSignature { .. })
        ));
    }
}

#[test]
fn unknown_signatures_are_ignored() {
    let (k, other) = (key(1), key(2));
    let cp = checkpoint(5);
    let body = cp.body();
    let ours = signature_line(&body, &k, NAME, key_id(NAME, &k.verifying_key()));
    let lines = [
        // Other key, other name.
        signature_line(
            &body,
            &other,
            "w.example",
            key_id("w.example", &other.verifying_key()),
        ),
        // Our name, other key id (garbage signature).
        format!("\u{2014} {NAME} {}\n", STANDARD.encode([9u8; 68])),
        // Our key id, other name.
        signature_line(&body, &other, "w.example", key_id(NAME, &k.verifying_key())),
        // A short signature of some other algorithm.
        format!("\u{2014} pq.example {}\n", STANDARD.encode([1u8; 5])),
    ];
    for extra in &lines {
        for note in [
            format!("{body}\n{ours}{extra}"),
            format!("{body}\n{extra}{ours}"),
        ] {
            assert_eq!(parse_and_verify(&note, &verifier(&k, NAME)).unwrap(), cp);
        }
        let alone = format!("{body}\n{extra}");
        assert!(matches!(
            parse_and_verify(&alone, &verifier(&k, NAME)),
            Err(CheckpointError::NoKnownSignature { .. })
        ));
    }
}

#[test]
fn edited_size_or_root_is_rejected() {
    let k = key(1);
    let v = verifier(&k, NAME);
    let cp = checkpoint(1000);
    let note = cp.sign(&k, NAME);
    let root = STANDARD.encode(cp.root);
    let other_root = STANDARD.encode(leaf_hash(b"other"));
    for edited in [
        note.replace("\n1000\n", "\n1001\n"),
        note.replace("\n1000\n", "\n999\n"),
        note.replace(&root, &other_root),
        note.replacen(NAME, "satchel.example/other", 1),
    ] {
        assert_ne!(edited, note);
        assert!(
            matches!(
                parse_and_verify(&edited, &v),
                Err(CheckpointError::BadSignature { .. })
            ),
            "{edited:?}"
        );
    }
}

#[test]
fn another_origin_parses_and_is_reported() {
    let k = key(1);
    let cp = Checkpoint {
        origin: "other.example/log".into(),
        ..checkpoint(3)
    };
    let got = parse_and_verify(&cp.sign(&k, NAME), &verifier(&k, NAME)).unwrap();
    assert_eq!(got.origin, "other.example/log");
    match got.check_origin(NAME) {
        Err(CheckpointError::OriginMismatch { expected, found }) => {
            assert_eq!(
                (expected.as_str(), found.as_str()),
                (NAME, "other.example/log")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(cp.check_origin("other.example/log").is_ok());
}

// ---- Strict, bounded parsing ----

/// A note over `body` validly signed by `k` under [`NAME`].
fn signed(body: &str, k: &SigningKey) -> String {
    format!(
        "{body}\n{}",
        signature_line(body, k, NAME, key_id(NAME, &k.verifying_key()))
    )
}

fn parse(body: &str) -> Result<Checkpoint, CheckpointError> {
    let k = key(1);
    parse_and_verify(&signed(body, &k), &verifier(&k, NAME))
}

#[test]
fn body_lines_are_strict() {
    let root = STANDARD.encode([7u8; 32]);
    let ok = |b: &str| parse(b).unwrap_or_else(|e| panic!("{b:?}: {e}"));
    assert_eq!(ok(&format!("o\n0\n{root}\n")).size, 0);
    assert_eq!(ok(&format!("o\n10\n{root}\n")).size, 10);
    // Extension lines are accepted.
    assert_eq!(
        ok(&format!("o\n10\n{root}\next one\next two\n")).root,
        [7; 32]
    );
    let cases: Vec<(String, Expect)> = vec![
        (format!("o\n010\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n00\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n+1\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n-1\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n 1\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeSyntax)
        }),
        (format!("o\n18446744073709551616\n{root}\n"), |e| {
            matches!(e, CheckpointError::TreeSizeOverflow)
        }),
        (format!("\n1\n{root}\n"), |e| {
            matches!(e, CheckpointError::InvalidOrigin)
        }),
        ("o\n1\n".into(), |e| {
            matches!(e, CheckpointError::MissingBodyLine { line: 3 })
        }),
        ("o\n".into(), |e| {
            matches!(e, CheckpointError::MissingBodyLine { line: 2 })
        }),
        (format!("o\n1\n{}\n", STANDARD.encode([7u8; 31])), |e| {
            matches!(e, CheckpointError::RootLength { len: 31 })
        }),
        (format!("o\n1\n{}\n", STANDARD.encode([7u8; 33])), |e| {
            matches!(e, CheckpointError::RootLength { len: 33 })
        }),
        (format!("o\n1\n{}\n", root.trim_end_matches('=')), |e| {
            matches!(e, CheckpointError::RootEncoding { .. })
        }),
        (format!("o\n1\n{}\n", hex::encode([7u8; 32])), |e| {
            matches!(
                e,
                CheckpointError::RootEncoding { .. } | CheckpointError::RootLength { .. }
            )
        }),
        (format!("o\n1\n{}\n", root.replace('H', "_")), |e| {
            matches!(e, CheckpointError::RootEncoding { .. })
        }),
        (format!("o\n1\n{root}\next\n\nmore\n"), |e| {
            matches!(e, CheckpointError::EmptyExtensionLine { line: 5 })
        }),
    ];
    for (body, expected) in cases {
        match parse(&body) {
            Err(e) if expected(&e) => {}
            other => panic!("{body:?}: {other:?}"),
        }
    }
}

#[test]
fn non_canonical_base64_root_is_rejected() {
    // 32 bytes encode to 43 characters and one '='; the last character
    // carries 4 unused bits, which must be zero.
    let root = STANDARD.encode([0u8; 32]);
    assert!(root.ends_with("AA="));
    let sloppy = format!("{}B=", &root[..root.len() - 2]);
    assert!(matches!(
        parse(&format!("o\n1\n{sloppy}\n")),
        Err(CheckpointError::RootEncoding { .. })
    ));
}

#[test]
fn note_structure_is_strict() {
    let k = key(1);
    let v = verifier(&k, NAME);
    let note = checkpoint(1).sign(&k, NAME);
    let body = checkpoint(1).body();
    let check = |n: &str, expected: fn(&CheckpointError) -> bool| match parse_and_verify(n, &v) {
        Err(e) if expected(&e) => {}
        other => panic!("{n:?}: {other:?}"),
    };
    check(note.trim_end_matches('\n'), |e| {
        matches!(e, CheckpointError::Unterminated)
    });
    check(&body, |e| matches!(e, CheckpointError::MissingSignatures));
    check(&format!("{body}\n"), |e| {
        matches!(e, CheckpointError::MissingSignatures)
    });
    check(&note.replace('\n', "\r\n"), |e| {
        matches!(e, CheckpointError::ControlCharacter { byte: b'\r', .. })
    });
    check(&note.replacen("satchel", "sat\tchel", 1), |e| {
        matches!(
            e,
            CheckpointError::ControlCharacter {
                offset: 3,
                byte: b'\t'
            }
        )
    });
    check(&note.replace('\u{2014}', "-"), |e| {
        matches!(e, CheckpointError::MalformedSignature { line: 5 })
    });
    check(&note.replace("\u{2014} ", "\u{2014}"), |e| {
        matches!(e, CheckpointError::MalformedSignature { line: 5 })
    });
    check(&format!("{note}\n"), |e| {
        matches!(e, CheckpointError::MissingSignatures)
    });
    check(&format!("{note}garbage\n"), |e| {
        matches!(e, CheckpointError::MalformedSignature { line: 6 })
    });
    check(
        &format!("{body}\n\u{2014} a+b {}\n", STANDARD.encode([1u8; 68])),
        |e| matches!(e, CheckpointError::MalformedSignature { line: 5 }),
    );
    check(
        &format!("{body}\n\u{2014} w {}\n", STANDARD.encode([1u8; 4])),
        |e| matches!(e, CheckpointError::MalformedSignature { line: 5 }),
    );
}

#[test]
fn notes_are_bounded() {
    let k = key(1);
    let v = verifier(&k, NAME);
    let note = checkpoint(1).sign(&k, NAME);
    // Many unknown signatures: up to the limit is fine, one more is not.
    let junk = format!("\u{2014} w.example {}\n", STANDARD.encode([3u8; 68]));
    let at_limit = format!("{note}{}", junk.repeat(MAX_SIGNATURES - 1));
    assert!(parse_and_verify(&at_limit, &v).is_ok());
    let over = format!("{note}{}", junk.repeat(MAX_SIGNATURES));
    assert!(matches!(
        parse_and_verify(&over, &v),
        Err(CheckpointError::TooManySignatures {
            max: MAX_SIGNATURES
        })
    ));
    let huge = format!("{}\n{note}", "x".repeat(MAX_NOTE_BYTES));
    assert!(matches!(
        parse_and_verify(&huge, &v),
        Err(CheckpointError::NoteTooLarge { .. })
    ));
}

#[test]
fn signing_checks_its_inputs() {
    let k = key(1);
    let cp = checkpoint(1);
    for bad in ["", "a b", "a+b", "a\nb"] {
        assert!(matches!(
            cp.try_sign(&k, bad),
            Err(CheckpointError::InvalidKeyName { .. })
        ));
        assert!(Verifier::new(bad, k.verifying_key()).is_err());
        assert!(vkey(bad, &k.verifying_key()).is_err());
    }
    for origin in ["", "a\nb", "a\tb"] {
        let cp = Checkpoint {
            origin: origin.into(),
            ..checkpoint(1)
        };
        assert!(matches!(
            cp.try_sign(&k, NAME),
            Err(CheckpointError::InvalidOrigin)
        ));
    }
    assert!(matches!(
        sign_note("no newline", &k, NAME),
        Err(CheckpointError::Unterminated)
    ));
    assert!(matches!(
        sign_note("a\rb\n", &k, NAME),
        Err(CheckpointError::ControlCharacter { offset: 1, .. })
    ));
}

#[test]
fn malformed_vkeys_are_rejected() {
    let k = key(1);
    let good = vkey(NAME, &k.verifying_key()).unwrap();
    let (name, rest) = good.split_once('+').unwrap();
    let (id, b64) = rest.split_once('+').unwrap();
    let typed = |t: u8, key: &[u8]| {
        let mut v = vec![t];
        v.extend_from_slice(key);
        STANDARD.encode(v)
    };
    let public = k.verifying_key().to_bytes();
    let cases: Vec<(String, Expect)> = vec![
        (format!("{name}+00000000+{b64}"), |e| {
            matches!(e, CheckpointError::VkeyKeyIdMismatch { .. })
        }),
        (format!("{name}+{id}"), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
        (format!("{name}+{id}x+{b64}"), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
        (format!("{name}+{}+{b64}", &id[..6]), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
        (format!("{name}+{id}+{b64}!"), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
        (format!("{name}+{id}+"), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
        (format!("{name}+{id}+{}", typed(2, &public)), |e| {
            matches!(e, CheckpointError::VkeyAlgorithm { found: 2 })
        }),
        (format!("{name}+{id}+{}", typed(1, &public[..31])), |e| {
            matches!(e, CheckpointError::VkeyKeyLength { len: 32 })
        }),
        (format!("a b+{id}+{b64}"), |e| {
            matches!(e, CheckpointError::InvalidKeyName { .. })
        }),
        (format!("+{id}+{b64}"), |e| {
            matches!(e, CheckpointError::InvalidKeyName { .. })
        }),
        ("x".repeat(5000), |e| {
            matches!(e, CheckpointError::VkeySyntax)
        }),
    ];
    for (text, expected) in cases {
        match Verifier::from_vkey(&text) {
            Err(e) if expected(&e) => {}
            other => panic!("{text:?}: {other:?}"),
        }
    }
    // 32 bytes that are not a curve point.
    let not_a_point = (0..=255u8)
        .map(|b| [b; 32])
        .find(|bytes| ed25519_dalek::VerifyingKey::from_bytes(bytes).is_err())
        .unwrap();
    let text = format!("{name}+{id}+{}", typed(1, &not_a_point));
    assert!(matches!(
        Verifier::from_vkey(&text),
        Err(CheckpointError::VkeyPublicKey { .. })
    ));
    // Every single-byte change of a good vkey is rejected.
    for i in 0..good.len() {
        let mut bytes = good.clone().into_bytes();
        bytes[i] ^= 0x01;
        if let Ok(text) = String::from_utf8(bytes) {
            assert!(Verifier::from_vkey(&text).is_err(), "byte {i}: {text}");
        }
    }
}

// ---- Key files ----

#[cfg(unix)]
#[test]
fn hash_type_is_shared_with_merkle() {
    let root: Hash = checkpoint(1).root;
    assert_eq!(root.len(), 32);
}
