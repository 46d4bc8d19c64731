//! Boot-chain measurement against a real swtpm: what `measure` extends and
//! logs, what the log replays to, what `predict` computes without a TPM, and
//! the TPM's own PCRs must all agree; a one-byte change to a measured file
//! must change both the prediction and the PCR.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use attest::eventlog::{parse, replay, ReplayOptions};
use attest::tpm::Tpm;
use attest::{HashAlg, PcrBanks};
use firmware_measure::{measure, predict, Chain, MeasureError};
use tpm_sim_tests::Swtpm;

fn sample_chain_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain")
}

/// A private copy of the sample chain, so a test may change its files.
fn copy_sample_chain(to: &Path) -> PathBuf {
    for entry in std::fs::read_dir(sample_chain_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to.join("chain.toml")
}

fn touched_pcrs(chain: &Chain) -> Vec<u32> {
    let mut v: Vec<u32> = chain
        .plan(&[HashAlg::Sha256])
        .unwrap()
        .iter()
        .map(|e| e.pcr)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

fn only(mut pcrs: PcrBanks, keep: &[u32]) -> PcrBanks {
    pcrs.retain_pcrs(|i| keep.contains(&i));
    pcrs
}

#[test]
fn measured_pcrs_equal_replay_equal_prediction() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::load(&copy_sample_chain(dir.path())).unwrap();
    let log_path = dir.path().join("boot.log");
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();

    let measured = measure(&chain, &mut tpm, &log_path).unwrap();
    let banks = tpm.active_banks().unwrap();
    let pcrs = touched_pcrs(&chain);
    let in_tpm = tpm.read_pcrs(&banks, &pcrs).unwrap();

    let on_disk = parse(&std::fs::read(&log_path).unwrap()).unwrap();
    assert_eq!(
        on_disk, measured.log,
        "the file holds exactly the log measure returned"
    );
    let replayed = only(replay(&on_disk, ReplayOptions::default()).pcrs, &pcrs);
    let (_, predicted) = predict(&chain, None, &banks).unwrap();

    assert_eq!(replayed, in_tpm);
    assert_eq!(only(predicted, &pcrs), in_tpm);
    assert_eq!(in_tpm.banks().count(), banks.len());
    // Sanity: the sample chain's PCR 4 is not a reset or separator-only value.
    let sep_only = HashAlg::Sha256.extend(&[0; 32], &HashAlg::Sha256.hash(&[0; 4]));
    assert_ne!(in_tpm.get(HashAlg::Sha256, 4).unwrap(), &sep_only[..]);
}

/// Measure `chain` into a fresh swtpm; return its PCR 8 in every bank.
fn measured_pcr8(chain: &Chain, log: &Path, banks: &[HashAlg]) -> PcrBanks {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    measure(chain, &mut tpm, log).unwrap();
    tpm.read_pcrs(banks, &[8]).unwrap()
}

#[test]
fn one_changed_byte_changes_prediction_and_pcr() {
    let dir = tempfile::tempdir().unwrap();
    let chain_path = copy_sample_chain(dir.path());
    let banks = [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ];
    let chain = Chain::load(&chain_path).unwrap();
    let (_, before) = predict(&chain, None, &banks).unwrap();
    let tpm_before = measured_pcr8(&chain, &dir.path().join("before.log"), &banks);

    let hv = dir.path().join("hypervisor.bin");
    let mut bytes = std::fs::read(&hv).unwrap();
    bytes[5] ^= 0x01;
    std::fs::write(&hv, &bytes).unwrap();
    let (_, after) = predict(&chain, None, &banks).unwrap();
    let tpm_after = measured_pcr8(&chain, &dir.path().join("after.log"), &banks);

    // The prediction differs in PCR 8 (the hypervisor's) and nowhere else.
    for (bank, index, value) in before.iter() {
        let changed = after.get(bank, index) != Some(value);
        assert_eq!(changed, index == 8, "{bank} PCR {index}");
    }
    // The TPM agrees with each prediction, so it changed too.
    assert_eq!(tpm_before, only(before, &[8]));
    assert_eq!(tpm_after, only(after, &[8]));
    assert_ne!(tpm_before, tpm_after);
}

#[test]
fn measuring_twice_appends_and_still_agrees() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::load(&copy_sample_chain(dir.path())).unwrap();
    let log_path = dir.path().join("boot.log");
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let first = measure(&chain, &mut tpm, &log_path).unwrap();
    let second = measure(&chain, &mut tpm, &log_path).unwrap();
    assert_eq!(second.log.events.len(), 2 * first.log.events.len() - 1);
    let banks = tpm.active_banks().unwrap();
    let pcrs = touched_pcrs(&chain);
    let log = parse(&std::fs::read(&log_path).unwrap()).unwrap();
    assert_eq!(
        only(replay(&log, ReplayOptions::default()).pcrs, &pcrs),
        tpm.read_pcrs(&banks, &pcrs).unwrap()
    );
}

#[test]
fn a_log_with_other_banks_is_refused_and_left_untouched() {
    let swtpm = Swtpm::start_with_pcr_banks(&["sha256"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::load(&copy_sample_chain(dir.path())).unwrap();
    let log_path = dir.path().join("boot.log");
    let four_banks =
        attest::eventlog::EventLog::new_crypto_agile(&[HashAlg::Sha1, HashAlg::Sha256]);
    std::fs::write(&log_path, four_banks.to_bytes()).unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let err = measure(&chain, &mut tpm, &log_path).unwrap_err();
    assert!(matches!(err, MeasureError::Banks { .. }), "{err}");
    assert_eq!(std::fs::read(&log_path).unwrap(), four_banks.to_bytes());
    // Nothing was extended either.
    let pcr8 = tpm.read_pcrs(&[HashAlg::Sha256], &[8]).unwrap();
    assert_eq!(pcr8.get(HashAlg::Sha256, 8), Some(&[0u8; 32][..]));
}

#[test]
fn a_legacy_or_corrupt_log_is_refused() {
    let swtpm = Swtpm::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::load(&copy_sample_chain(dir.path())).unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();

    let legacy = dir.path().join("legacy.log");
    let fixtures = tpm_sim_tests::fixtures_dir();
    std::fs::copy(fixtures.join("gce-debian10-legacy-sha1.bin"), &legacy).unwrap();
    let err = measure(&chain, &mut tpm, &legacy).unwrap_err();
    assert!(matches!(err, MeasureError::Legacy { .. }), "{err}");

    let corrupt = dir.path().join("corrupt.log");
    let mut bytes = attest::eventlog::EventLog::new_crypto_agile(&[HashAlg::Sha256]).to_bytes();
    bytes.truncate(bytes.len() - 3);
    std::fs::write(&corrupt, &bytes).unwrap();
    let err = measure(&chain, &mut tpm, &corrupt).unwrap_err();
    assert!(matches!(err, MeasureError::Log { .. }), "{err}");
    assert_eq!(std::fs::read(&corrupt).unwrap(), bytes);
}

#[test]
fn a_sha256_only_tpm_gets_a_sha256_only_log() {
    let swtpm = Swtpm::start_with_pcr_banks(&["sha256"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let chain = Chain::load(&copy_sample_chain(dir.path())).unwrap();
    let log_path = dir.path().join("boot.log");
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    measure(&chain, &mut tpm, &log_path).unwrap();
    let log = parse(&std::fs::read(&log_path).unwrap()).unwrap();
    assert_eq!(log.banks(), [HashAlg::Sha256]);
    let pcrs = touched_pcrs(&chain);
    assert_eq!(
        only(replay(&log, ReplayOptions::default()).pcrs, &pcrs),
        tpm.read_pcrs(&[HashAlg::Sha256], &pcrs).unwrap()
    );
}
