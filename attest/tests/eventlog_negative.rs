//! Negative tests: malformed logs are errors that name the byte offset,
//! never panics; truncation anywhere either fails or yields a prefix.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use attest::eventlog::{
    digests_of, parse, replay, EventLog, EventType, Finding, ParseError, ReplayOptions,
};
use attest::HashAlg;
use common::{firmware_logs, fixture};

/// A small crypto-agile log built through the public API.
fn small_log() -> Vec<u8> {
    let banks = [HashAlg::Sha1, HashAlg::Sha256];
    let mut log = EventLog::new_crypto_agile(&banks);
    for (pcr, t, data) in [
        (0, EventType::EV_S_CRTM_VERSION, &b"v1"[..]),
        (
            4,
            EventType::EV_EFI_ACTION,
            b"Calling EFI Application from Boot Option",
        ),
        (4, EventType::EV_SEPARATOR, &[0, 0, 0, 0]),
    ] {
        log.push(pcr, t, digests_of(data, &banks), data.to_vec());
    }
    log.to_bytes()
}

#[test]
fn truncation_at_every_offset_errors_or_gives_a_prefix() {
    let full_bytes = small_log();
    let full = parse(&full_bytes).unwrap();
    for cut in 0..full_bytes.len() {
        match parse(&full_bytes[..cut]) {
            Ok(log) => {
                assert!(log.events.len() < full.events.len(), "cut {cut}");
                assert_eq!(log.events[..], full.events[..log.events.len()], "cut {cut}");
            }
            Err(ParseError::Empty) => assert_eq!(cut, 0),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("offset"), "cut {cut}: {msg}");
            }
        }
    }
}

#[test]
fn truncating_real_logs_never_panics() {
    for name in firmware_logs() {
        let bytes = fixture(&name);
        // Every offset of the smaller logs; a stride through the larger ones.
        let step = (bytes.len() / 3000).max(1);
        for cut in (0..bytes.len()).step_by(step) {
            if let Ok(log) = parse(&bytes[..cut]) {
                let _ = replay(&log, ReplayOptions::default());
            }
        }
    }
}

#[test]
fn flipping_any_byte_never_panics_and_stays_consistent() {
    let bytes = small_log();
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80, 0xFF] {
            let mut b = bytes.clone();
            b[i] ^= mask;
            if let Ok(log) = parse(&b) {
                // Whatever parses must write back to the bytes it came from.
                assert_eq!(
                    log.to_bytes(),
                    b[..log.to_bytes().len()],
                    "byte {i} mask {mask:#x}"
                );
                let _ = replay(&log, ReplayOptions::default());
            }
        }
    }
}

#[test]
fn oversized_event_data_size_is_rejected_without_allocating() {
    let mut bytes = small_log();
    // The last event's data size field sits 4 bytes before its 4 data bytes.
    let at = bytes.len() - 8;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = parse(&bytes).unwrap_err();
    assert!(
        matches!(err, ParseError::Truncated { offset, expected: "event data", .. } if offset == at),
        "{err}"
    );
}

#[test]
fn oversized_digest_count_is_rejected() {
    let bytes = small_log();
    let log = parse(&bytes).unwrap();
    let second = log.events[1].offset;
    let mut b = bytes.clone();
    b[second + 8..second + 12].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    assert_eq!(
        parse(&b).unwrap_err(),
        ParseError::DigestCount {
            offset: second + 8,
            index: 1,
            count: 0x4000_0000,
            declared: 2
        }
    );
}

#[test]
fn undeclared_digest_algorithm_is_rejected() {
    let bytes = small_log();
    let log = parse(&bytes).unwrap();
    let second = log.events[1].offset;
    let mut b = bytes.clone();
    // First digest's algorithm id: SHA-1 (0x0004) becomes SHA-384 (0x000C).
    b[second + 12] = 0x0C;
    assert_eq!(
        parse(&b).unwrap_err(),
        ParseError::UndeclaredAlg {
            offset: second + 12,
            index: 1,
            alg: 0x000C
        }
    );
}

#[test]
fn spec_id_header_with_absurd_algorithm_count_is_rejected() {
    let mut b = small_log();
    // numberOfAlgorithms is at 32 (event header) + 24 (signature, class, versions).
    b[56..60].copy_from_slice(&1000u32.to_le_bytes());
    assert!(matches!(
        parse(&b).unwrap_err(),
        ParseError::SpecId { offset: 56, .. }
    ));
}

#[test]
fn ima_logs_and_junk_are_not_firmware_logs() {
    for name in [
        "ima-binary-template-ima-sha1.bin",
        "ima-binary-template-ima-ng-sha1.bin",
        "ima-binary-template-ima-sig-sha256.bin",
        "ima-ascii-ima-ng-826-entries.txt",
        "malformed-bogus-34bytes.bin",
    ] {
        let err = parse(&fixture(name)).unwrap_err();
        assert!(err.to_string().contains("offset"), "{name}: {err}");
    }
    assert_eq!(parse(&[]).unwrap_err(), ParseError::Empty);
}

#[test]
fn trailing_padding_is_accepted_but_trailing_junk_is_not() {
    let mut padded = small_log();
    let n = padded.len();
    padded.extend_from_slice(&[0xFF; 100]);
    let log = parse(&padded).unwrap();
    assert_eq!(log.trailing_padding, 100);
    assert_eq!(log.to_bytes().len(), n);
    let mut junk = small_log();
    junk.extend_from_slice(&[0x01, 0x02, 0x03]);
    assert!(
        matches!(parse(&junk).unwrap_err(), ParseError::Truncated { offset, .. } if offset == n)
    );
}

#[test]
fn a_separator_whose_digest_lies_is_a_finding() {
    let banks = [HashAlg::Sha256];
    let mut log = EventLog::new_crypto_agile(&banks);
    log.push(
        7,
        EventType::EV_SEPARATOR,
        digests_of(b"something else", &banks),
        vec![0; 4],
    );
    let r = replay(&parse(&log.to_bytes()).unwrap(), ReplayOptions::default());
    assert_eq!(
        r.findings,
        [Finding::DigestMismatch {
            event: 1,
            offset: log.events[1].offset,
            pcr: 7,
            event_type: EventType::EV_SEPARATOR,
            bank: HashAlg::Sha256,
        }]
    );
    // Findings never change the values: the digest as logged is what was extended.
    let want = HashAlg::Sha256.extend(&[0; 32], &HashAlg::Sha256.hash(b"something else"));
    assert_eq!(r.pcrs.get(HashAlg::Sha256, 7), Some(&want[..]));
}

#[test]
fn a_built_log_round_trips() {
    let bytes = small_log();
    let log = parse(&bytes).unwrap();
    assert_eq!(log.events.len(), 4);
    assert_eq!(log.to_bytes(), bytes);
    assert_eq!(parse(&log.to_bytes()).unwrap(), log);
}

#[test]
fn a_digest_algorithm_twice_in_one_event_is_rejected() {
    let bytes = small_log();
    let log = parse(&bytes).unwrap();
    let second = log.events[1].offset;
    let mut b = bytes.clone();
    // Second digest's algorithm id (after count, SHA-1 id and 20 bytes) becomes SHA-1 too.
    let at = second + 12 + 2 + 20;
    b[at..at + 2].copy_from_slice(&0x0004u16.to_le_bytes());
    assert_eq!(
        parse(&b).unwrap_err(),
        ParseError::DuplicateAlg {
            offset: at,
            index: 1,
            alg: 0x0004
        }
    );
}
