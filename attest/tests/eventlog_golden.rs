//! Golden tests: every PCR value the source projects assert for the real
//! firmware logs in `fixtures/eventlogs` must come out of our replay.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;

use attest::eventlog::{parse, replay, EventData, EventType, Finding, LogFormat, ReplayOptions};
use attest::HashAlg;
use common::{firmware_logs, fixture, fixtures_dir};
use serde_json::Value;

type Asserted = BTreeMap<String, BTreeMap<String, String>>;

fn expected() -> BTreeMap<String, Value> {
    let path = fixtures_dir().join("expected/expected_values.json");
    serde_json::from_slice(&std::fs::read(path).expect("expected_values.json")).expect("json")
}

fn asserted_pcrs(v: &Value) -> Option<Asserted> {
    serde_json::from_value(v.get("asserted_final_pcrs")?.clone()).ok()
}

/// Compare a replay with the asserted values. PCRs the log never touches
/// must be asserted as their reset value (zeros, or ones for PCR 17-22).
fn check(name: &str, asserted: &Asserted, options: ReplayOptions, skip: &[(&str, &str)]) -> usize {
    let log = parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let r = replay(&log, options);
    let mut checked = 0;
    for (bank, pcrs) in asserted {
        let alg: HashAlg = bank.parse().unwrap();
        for (idx, want) in pcrs {
            if skip.contains(&(bank.as_str(), idx.as_str())) {
                continue;
            }
            let i: u32 = idx.parse().unwrap();
            let got = match r.pcrs.get(alg, i) {
                Some(v) => hex::encode(v),
                None => {
                    let fill = if (17..=22).contains(&i) { "ff" } else { "00" };
                    fill.repeat(alg.digest_size())
                }
            };
            assert_eq!(&got, want, "{name}: {bank} PCR {idx}");
            checked += 1;
        }
    }
    checked
}

#[test]
fn every_asserted_pcr_value_is_reproduced() {
    let mut total = 0;
    for (name, v) in expected() {
        let Some(asserted) = asserted_pcrs(&v) else {
            continue;
        };
        let (options, skip): (ReplayOptions, &[(&str, &str)]) = match name.as_str() {
            // The firmware extended ExitBootServices into PCR 5 without logging it;
            // the log has only a SHA-1 bank, so its SHA-256 value cannot come from it.
            "legacy-sha1-ebs-event-missing.bin" => (
                ReplayOptions {
                    add_missing_exit_boot_services: true,
                },
                &[("sha256", "5")],
            ),
            _ => (ReplayOptions::default(), &[]),
        };
        let n = check(&name, &asserted, options, skip);
        assert!(n > 0, "{name}: nothing checked");
        total += n;
    }
    assert!(total > 150, "only {total} PCR values checked");
}

#[test]
fn ebs_missing_log_replays_naively_without_the_workaround() {
    let log = parse(&fixture("legacy-sha1-ebs-event-missing.bin")).unwrap();
    let r = replay(&log, ReplayOptions::default());
    assert_eq!(
        hex::encode(r.pcrs.get(HashAlg::Sha1, 5).unwrap()),
        "e5781a2fd49c23a33b16bf0ba5f10efa1aa5d43c"
    );
    assert!(r
        .findings
        .contains(&Finding::MissingExitBootServices { added: false }));
}

#[test]
fn startup_locality_and_hcrtm_set_pcr0_start() {
    for (name, loc) in [
        ("laptop-glinux-startuplocality3.bin", Some(3)),
        ("lenovo-thinkpad-N40ET41W-startuplocality3.bin", Some(3)),
        ("gdc-host-baremetal-sha256only.bin", Some(3)),
        ("hygon-hcrtm-sha1-sha256-sm3.bin", Some(4)),
        ("gce-rhel8-sb-agile-sha1-sha256-sha384.bin", None),
    ] {
        let log = parse(&fixture(name)).unwrap();
        assert_eq!(
            replay(&log, ReplayOptions::default()).pcr0_locality,
            loc,
            "{name}"
        );
    }
}

#[test]
fn formats_and_banks_are_detected() {
    let cases = [
        (
            "gce-debian10-legacy-sha1.bin",
            LogFormat::LegacySha1,
            vec![HashAlg::Sha1],
        ),
        (
            "edge-short-no-action.bin",
            LogFormat::LegacySha1,
            vec![HashAlg::Sha1],
        ),
        (
            "gdc-host-baremetal-sha256only.bin",
            LogFormat::CryptoAgile,
            vec![HashAlg::Sha256],
        ),
        (
            "hygon-hcrtm-sha1-sha256-sm3.bin",
            LogFormat::CryptoAgile,
            vec![HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sm3_256],
        ),
        (
            "gce-rhel8-sb-agile-sha1-sha256-sha384.bin",
            LogFormat::CryptoAgile,
            vec![HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384],
        ),
    ];
    for (name, format, banks) in cases {
        let log = parse(&fixture(name)).unwrap();
        assert_eq!(log.format, format, "{name}");
        assert_eq!(log.banks(), banks, "{name}");
    }
}

#[test]
fn short_no_action_log_is_one_startup_locality_event() {
    let log = parse(&fixture("edge-short-no-action.bin")).unwrap();
    assert_eq!(log.events.len(), 1);
    assert_eq!(
        log.events[0].decoded(),
        EventData::StartupLocality { locality: 3 }
    );
}

#[test]
fn efi_application_digests_match_the_asserted_ones() {
    for (name, v) in expected() {
        // go-tpm-tools pairs this log with app digests from another machine in a
        // test that expects an error; none of them occurs in this log's events.
        if name == "gdc-host-baremetal-sha256only.bin" {
            continue;
        }
        let Some(apps) = v.get("asserted_efi_app_digests").and_then(Value::as_object) else {
            continue;
        };
        let log = parse(&fixture(&name)).unwrap();
        for (bank, want) in apps {
            let alg: HashAlg = bank.parse().unwrap();
            let got: Vec<String> = log
                .events
                .iter()
                .filter(|e| e.event_type == EventType::EV_EFI_BOOT_SERVICES_APPLICATION)
                .filter_map(|e| e.digest(alg).map(hex::encode))
                .collect();
            let want: Vec<String> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(got, want, "{name} {bank}");
        }
    }
}

#[test]
fn sp800_155_events_are_decoded_and_not_extended() {
    let log = parse(&fixture("gce-sp800155-noaction-events.bin")).unwrap();
    let sp: Vec<_> = log
        .events
        .iter()
        .filter(|e| matches!(e.decoded(), EventData::Sp800155 { .. }))
        .collect();
    assert_eq!(sp.len(), 2);
    assert!(sp.iter().all(|e| e.event_type == EventType::EV_NO_ACTION));
}

#[test]
fn writing_a_parsed_log_gives_back_its_bytes() {
    for name in firmware_logs() {
        let bytes = fixture(&name);
        let log = parse(&bytes).unwrap();
        let written = log.to_bytes();
        assert_eq!(written.len() + log.trailing_padding, bytes.len(), "{name}");
        assert_eq!(written, bytes[..written.len()], "{name}");
        assert_eq!(parse(&written).unwrap().events, log.events, "{name}");
    }
}

#[test]
fn digest_check_flags_a_debian_authority_event_and_nothing_in_clean_logs() {
    let r = replay(
        &parse(&fixture("gce-debian10-legacy-sha1.bin")).unwrap(),
        ReplayOptions::default(),
    );
    let mismatches: Vec<_> = r
        .findings
        .iter()
        .filter(|f| matches!(f, Finding::DigestMismatch { .. }))
        .collect();
    assert_eq!(
        mismatches,
        [&Finding::DigestMismatch {
            event: 23,
            offset: 21139,
            pcr: 7,
            event_type: EventType::EV_EFI_VARIABLE_AUTHORITY,
            bank: HashAlg::Sha1,
        }]
    );
    for name in [
        "gce-rhel8-sb-agile-sha1-sha256-sha384.bin",
        "qemu-ovmf-el9-secureboot-sha256only.bin",
    ] {
        let r = replay(&parse(&fixture(name)).unwrap(), ReplayOptions::default());
        assert!(r.findings.is_empty(), "{name}: {:?}", r.findings);
    }
}
