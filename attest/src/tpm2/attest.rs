//! `TPMS_ATTEST` of type `TPM_ST_ATTEST_QUOTE`: what a TPM2_Quote signs.

use serde::Serialize;

use super::wire::Wire;
use super::WireError;
use crate::alg::HashAlg;

/// `TPM_GENERATED_VALUE`: the magic every TPM-made attestation starts with
/// (a TPM refuses to sign external data that starts with it).
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
pub const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;

/// Largest `TPM2B_NAME` (algorithm id + SHA-512 digest).
const MAX_NAME: usize = 2 + 64;
/// Largest `TPM2B_DATA` / `TPM2B_DIGEST` (SHA-512).
const MAX_DIGEST: usize = 64;
/// `HASH_COUNT` bounds the selections in a `TPML_PCR_SELECTION`.
const MAX_SELECTIONS: u32 = 16;
/// A `TPMS_PCR_SELECTION` bitmap covers at most 32 PCRs here.
const MAX_SELECT_BYTES: u8 = 4;

/// The TPM's clock when it signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered (roughly).
    pub clock: u64,
    /// TPM resets (reboots) since the last TPM2_Clear.
    pub reset_count: u32,
    /// Restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` has not gone backwards since it was last saved.
    pub safe: bool,
}

/// One bank's selected PCRs, in ascending order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PcrSelection {
    /// The bank.
    pub bank: HashAlg,
    /// The PCR indices selected.
    pub pcrs: Vec<u32>,
}

impl PcrSelection {
    /// Encode a `TPML_PCR_SELECTION` (3-byte bitmaps, as TPMs with 24
    /// PCRs use).
    pub fn encode_list(selections: &[PcrSelection]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u32::try_from(selections.len()).unwrap_or(0).to_be_bytes());
        for s in selections {
            out.extend_from_slice(&s.bank.id().to_be_bytes());
            let mut map = [0u8; 3];
            for &p in &s.pcrs {
                if let Some(b) = map.get_mut((p / 8) as usize) {
                    *b |= 1 << (p % 8);
                }
            }
            out.push(3);
            out.extend_from_slice(&map);
        }
        out
    }
}

/// A parsed quote attestation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quote {
    /// Name of the key that signed (the AK's name).
    #[serde(with = "hex::serde")]
    pub qualified_signer: Vec<u8>,
    /// The qualifying data: the verifier's nonce.
    #[serde(with = "hex::serde")]
    pub extra_data: Vec<u8>,
    /// The TPM's clock.
    pub clock_info: ClockInfo,
    /// Vendor firmware version.
    pub firmware_version: u64,
    /// The PCRs quoted, bank by bank, in the order the TPM hashed them.
    pub pcr_select: Vec<PcrSelection>,
    /// The hash (in the signing scheme's algorithm) of the selected PCR
    /// values concatenated in selection order.
    #[serde(with = "hex::serde")]
    pub pcr_digest: Vec<u8>,
}

impl Quote {
    /// Whether `values` hold every selected PCR and, concatenated in
    /// selection order, hash to the quote's PCR digest (with the hash whose
    /// size the digest has: the signing scheme's).
    pub fn pcr_digest_matches(&self, values: &crate::pcr::PcrBanks) -> bool {
        let mut concat = Vec::new();
        for sel in &self.pcr_select {
            for &pcr in &sel.pcrs {
                match values.get(sel.bank, pcr) {
                    Some(v) => concat.extend_from_slice(v),
                    None => return false,
                }
            }
        }
        HashAlg::ALL
            .into_iter()
            .filter(|a| a.digest_size() == self.pcr_digest.len())
            .any(|a| a.hash(&concat) == self.pcr_digest)
    }

    /// Parse the bytes a TPM2_Quote signed.
    pub fn parse(bytes: &[u8]) -> Result<Quote, WireError> {
        let mut w = Wire::new(bytes, "TPMS_ATTEST");
        let magic = w.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(w.invalid(
                "magic",
                0,
                format!("0x{magic:08x} is not TPM_GENERATED_VALUE (0xff544347)"),
            ));
        }
        let ty = w.u16("type")?;
        if ty != TPM_ST_ATTEST_QUOTE {
            return Err(w.invalid(
                "type",
                4,
                format!("0x{ty:04x} is not TPM_ST_ATTEST_QUOTE (0x8018)"),
            ));
        }
        let qualified_signer = w.sized(MAX_NAME, "qualifiedSigner")?.to_vec();
        let extra_data = w.sized(MAX_DIGEST, "extraData")?.to_vec();
        let clock = w.u64("clockInfo.clock")?;
        let reset_count = w.u32("clockInfo.resetCount")?;
        let restart_count = w.u32("clockInfo.restartCount")?;
        let at = w.offset();
        let safe = match w.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            v => return Err(w.invalid("clockInfo.safe", at, format!("{v} is not YES or NO"))),
        };
        let firmware_version = w.u64("firmwareVersion")?;
        let pcr_select = parse_selection_list(&mut w)?;
        let pcr_digest = w.sized(MAX_DIGEST, "pcrDigest")?.to_vec();
        w.finish()?;
        Ok(Quote {
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            pcr_select,
            pcr_digest,
        })
    }
}

/// A `TPML_PCR_SELECTION`: known banks only, each at most once.
fn parse_selection_list(w: &mut Wire<'_>) -> Result<Vec<PcrSelection>, WireError> {
    let at = w.offset();
    let count = w.u32("pcrSelect.count")?;
    if count > MAX_SELECTIONS {
        return Err(w.invalid(
            "pcrSelect.count",
            at,
            format!("{count} selections, at most {MAX_SELECTIONS}"),
        ));
    }
    let mut out: Vec<PcrSelection> = Vec::new();
    for _ in 0..count {
        let at = w.offset();
        let id = w.u16("pcrSelect.hash")?;
        let bank = HashAlg::from_id(id)
            .ok_or_else(|| w.invalid("pcrSelect.hash", at, format!("unknown hash 0x{id:04x}")))?;
        if out.iter().any(|s| s.bank == bank) {
            return Err(w.invalid("pcrSelect.hash", at, format!("bank {bank} selected twice")));
        }
        let at = w.offset();
        let size = w.u8("pcrSelect.sizeofSelect")?;
        if size > MAX_SELECT_BYTES {
            return Err(w.invalid(
                "pcrSelect.sizeofSelect",
                at,
                format!("{size} bytes, at most {MAX_SELECT_BYTES}"),
            ));
        }
        let map = w.take(usize::from(size), "pcrSelect.pcrSelect")?;
        let pcrs = (0..u32::from(size) * 8)
            .filter(|&p| map[(p / 8) as usize] & (1 << (p % 8)) != 0)
            .collect();
        out.push(PcrSelection { bank, pcrs });
    }
    Ok(out)
}
