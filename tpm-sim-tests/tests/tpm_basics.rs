//! `attest::tpm` against a real swtpm: bank discovery, PCR reads and
//! extends, cross-checked with tpm2-tools. Each test starts its own swtpm,
//! so they run in parallel; none touches a real TPM.

use std::net::TcpListener;
use std::process::Command;

use attest::tpm::{Tpm, TpmError};
use attest::HashAlg;
use tpm_sim_tests::Swtpm;

/// PCR 16 is the debug PCR: resettable, untouched at startup.
const DEBUG_PCR: u32 = 16;

fn open(swtpm: &Swtpm) -> Result<Tpm, TpmError> {
    Tpm::open(&swtpm.tcti())
}

/// Per-bank digests of `data`, for every bank the TPM has.
fn digests_of(banks: &[HashAlg], data: &[u8]) -> Vec<(HashAlg, Vec<u8>)> {
    banks.iter().map(|&b| (b, b.hash(data))).collect()
}

/// What `tpm2_pcrread sha256:<pcr>` prints for the TPM at `tcti`, as bytes.
fn tpm2_pcrread_sha256(tcti: &str, pcr: u32) -> Result<Vec<u8>, String> {
    let out = Command::new("tpm2_pcrread")
        .arg(format!("sha256:{pcr}"))
        .arg("-T")
        .arg(tcti)
        .env("TSS2_LOG", "all+none")
        .output()
        .map_err(|e| format!("cannot run tpm2_pcrread (run scripts/setup.sh): {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "tpm2_pcrread failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    parse_pcrread(&stdout, pcr).ok_or_else(|| format!("no PCR {pcr} value in {stdout:?}"))
}

/// Parse `  sha256:\n    16: 0xABCD...` (tpm2-tools 5 output) for one PCR.
fn parse_pcrread(stdout: &str, pcr: u32) -> Option<Vec<u8>> {
    stdout.lines().find_map(|line| {
        let (index, value) = line.split_once(':')?;
        if index.trim() != pcr.to_string() {
            return None;
        }
        hex::decode(value.trim().trim_start_matches("0x")).ok()
    })
}

#[test]
fn swtpm_allocates_four_banks_by_default() {
    let swtpm = Swtpm::start().unwrap();
    let banks = open(&swtpm).unwrap().active_banks().unwrap();
    // swtpm 0.7 (libtpms) without swtpm_setup: every PCR in sha1, sha256,
    // sha384 and sha512 is allocated; sm3 is not.
    assert!(banks.contains(&HashAlg::Sha256), "{banks:?}");
    assert_eq!(
        banks,
        [
            HashAlg::Sha1,
            HashAlg::Sha256,
            HashAlg::Sha384,
            HashAlg::Sha512
        ]
    );
}

#[test]
fn fresh_debug_pcr_is_zero_in_every_bank() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let banks = tpm.active_banks().unwrap();
    let values = tpm.read_pcrs(&banks, &[DEBUG_PCR]).unwrap();
    for &bank in &banks {
        assert_eq!(values.get(bank, DEBUG_PCR), Some(&bank.reset_value(0)[..]));
    }
}

#[test]
fn reading_all_24_pcrs_in_all_banks_takes_several_calls() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let banks = tpm.active_banks().unwrap();
    let pcrs: Vec<u32> = (0..24).collect();
    let values = tpm.read_pcrs(&banks, &pcrs).unwrap();
    assert_eq!(values.iter().count(), banks.len() * 24);
    for (bank, _, value) in values.iter() {
        assert_eq!(value.len(), bank.digest_size());
    }
}

#[test]
fn extend_matches_the_arithmetic_in_every_bank() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let banks = tpm.active_banks().unwrap();
    tpm.extend(DEBUG_PCR, &digests_of(&banks, b"hello"))
        .unwrap();
    let values = tpm.read_pcrs(&banks, &[DEBUG_PCR]).unwrap();
    for &bank in &banks {
        let expected = bank.extend(&bank.reset_value(0), &bank.hash(b"hello"));
        assert_eq!(values.get(bank, DEBUG_PCR), Some(&expected[..]), "{bank}");
    }
}

#[test]
fn extend_agrees_with_tpm2_pcrread() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let banks = tpm.active_banks().unwrap();
    tpm.extend(DEBUG_PCR, &digests_of(&banks, b"hello"))
        .unwrap();
    let ours = tpm.read_pcrs(&[HashAlg::Sha256], &[DEBUG_PCR]).unwrap();
    // swtpm serves one client at a time: let tpm2-tools in.
    drop(tpm);
    let theirs = tpm2_pcrread_sha256(&swtpm.tcti(), DEBUG_PCR).unwrap();
    assert_eq!(ours.get(HashAlg::Sha256, DEBUG_PCR), Some(&theirs[..]));
}

#[test]
fn extend_of_one_bank_leaves_the_others() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let sha256 = HashAlg::Sha256;
    tpm.extend(DEBUG_PCR, &[(sha256, sha256.hash(b"x"))])
        .unwrap();
    let values = tpm
        .read_pcrs(&[HashAlg::Sha1, sha256], &[DEBUG_PCR])
        .unwrap();
    assert_eq!(
        values.get(HashAlg::Sha1, DEBUG_PCR),
        Some(&HashAlg::Sha1.reset_value(0)[..])
    );
    assert_ne!(
        values.get(sha256, DEBUG_PCR),
        Some(&sha256.reset_value(0)[..])
    );
}

#[test]
fn wrong_digest_size_is_a_typed_error() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let err = tpm
        .extend(DEBUG_PCR, &[(HashAlg::Sha256, vec![0; 20])])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::DigestSize {
                pcr: DEBUG_PCR,
                bank: HashAlg::Sha256,
                expected: 32,
                actual: 20,
            }
        ),
        "{err:?}"
    );
    // Nothing reached the TPM.
    let values = tpm.read_pcrs(&[HashAlg::Sha256], &[DEBUG_PCR]).unwrap();
    assert_eq!(
        values.get(HashAlg::Sha256, DEBUG_PCR),
        Some(&HashAlg::Sha256.reset_value(0)[..])
    );
}

#[test]
fn pcr_out_of_range_is_a_typed_error() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    let digest = vec![(HashAlg::Sha256, vec![0; 32])];
    assert!(matches!(
        tpm.extend(24, &digest),
        Err(TpmError::PcrIndex { pcr: 24 })
    ));
    assert!(matches!(
        tpm.read_pcrs(&[HashAlg::Sha256], &[0, 99]),
        Err(TpmError::PcrIndex { pcr: 99 })
    ));
}

#[test]
fn unimplemented_algorithm_is_a_typed_error() {
    let swtpm = Swtpm::start().unwrap();
    let mut tpm = open(&swtpm).unwrap();
    assert!(!tpm.active_banks().unwrap().contains(&HashAlg::Sm3_256));
    let err = tpm
        .read_pcrs(&[HashAlg::Sha256, HashAlg::Sm3_256], &[0, 1])
        .unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::UnsupportedBank {
                bank: HashAlg::Sm3_256
            }
        ),
        "{err:?}"
    );
    // libtpms lacks SM3 altogether: PCR_Extend fails with TPM_RC_HASH.
    let sm3 = HashAlg::Sm3_256;
    let err = tpm.extend(DEBUG_PCR, &[(sm3, sm3.hash(b"x"))]).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::Command {
                what: "TPM2_PCR_Extend",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn only_the_banks_swtpm_setup_allocated_are_active() {
    let swtpm = Swtpm::start_with_pcr_banks(&["sha256"]).unwrap();
    let mut tpm = open(&swtpm).unwrap();
    assert_eq!(tpm.active_banks().unwrap(), [HashAlg::Sha256]);
    let err = tpm.read_pcrs(&[HashAlg::Sha1], &[0]).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::UnsupportedBank {
                bank: HashAlg::Sha1
            }
        ),
        "{err:?}"
    );
    // TPM 2.0 Part 3, PCR_Extend: digests for unallocated banks are ignored.
    let banks = [HashAlg::Sha1, HashAlg::Sha256];
    tpm.extend(DEBUG_PCR, &digests_of(&banks, b"hello"))
        .unwrap();
    let sha256 = HashAlg::Sha256;
    let values = tpm.read_pcrs(&[sha256], &[DEBUG_PCR]).unwrap();
    let expected = sha256.extend(&sha256.reset_value(0), &sha256.hash(b"hello"));
    assert_eq!(values.get(sha256, DEBUG_PCR), Some(&expected[..]));
}

#[test]
fn pcrread_output_parses() {
    let out = "  sha256:\n    16: 0x00FF\n    2 : 0x01\n";
    assert_eq!(parse_pcrread(out, 16), Some(vec![0x00, 0xff]));
    assert_eq!(parse_pcrread(out, 2), Some(vec![0x01]));
    assert_eq!(parse_pcrread(out, 1), None);
}

#[test]
fn nothing_listening_is_an_open_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = Tpm::open(&tcti).unwrap_err();
    assert!(matches!(err, TpmError::Open { .. }), "{err:?}");
    assert!(err.to_string().contains(&tcti), "{err}");
}

#[test]
fn unknown_tcti_module_is_a_syntax_error_not_a_panic() {
    let err = Tpm::open("no-such-tcti-module:x").unwrap_err();
    assert!(matches!(err, TpmError::TctiSyntax { .. }), "{err:?}");
}

#[test]
fn parallel_tests_each_have_their_own_tpm() {
    let a = Swtpm::start().unwrap();
    let b = Swtpm::start().unwrap();
    let mut ta = open(&a).unwrap();
    let mut tb = open(&b).unwrap();
    let sha256 = HashAlg::Sha256;
    ta.extend(DEBUG_PCR, &[(sha256, sha256.hash(b"a"))])
        .unwrap();
    let va = ta.read_pcrs(&[sha256], &[DEBUG_PCR]).unwrap();
    let vb = tb.read_pcrs(&[sha256], &[DEBUG_PCR]).unwrap();
    assert_ne!(va, vb);
    assert_eq!(vb.get(sha256, DEBUG_PCR), Some(&sha256.reset_value(0)[..]));
}
