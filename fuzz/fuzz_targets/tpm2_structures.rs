//! Fuzz the TPM structure parsers the verifier reads from untrusted
//! evidence: TPMS_ATTEST, TPMT_SIGNATURE and TPM2B_PUBLIC. Any input is an
//! error or a value; a parsed signature encodes back to the same bytes.
#![no_main]

use attest::tpm2::{AkPublic, Quote, Signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Quote::parse(data);
    if let Ok(s) = Signature::parse(data) {
        assert_eq!(s.to_bytes(), data);
    }
    let _ = AkPublic::parse_tpm2b(data);
    let _ = AkPublic::parse(data);
});
