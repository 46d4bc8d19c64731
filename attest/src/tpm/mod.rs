//! Access to a TPM 2.0 through tss-esapi: open a TCTI, list the allocated
//! PCR banks, read PCRs into [`PcrBanks`], and extend a PCR.
//!
//! This is the only module that imports tss-esapi; everything it returns is
//! Satchel's own types ([`HashAlg`], [`PcrBanks`], [`TpmError`]). It must
//! never decide whether evidence is trustworthy (that is the verifier's job,
//! over bytes), never panic on a TPM response, and never send a command it
//! can already tell is wrong: PCR indices and digest sizes are checked first.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Once;

use tss_esapi::constants::CapabilityType;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{
    CapabilityData, Digest, DigestList, DigestValues, PcrSelectSize, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot,
};
use tss_esapi::{Context, TctiNameConf};

use crate::alg::HashAlg;
use crate::pcr::PcrBanks;

mod authorized;
mod epoch;
mod esys;
mod keys;

pub use authorized::{approved_policy, AuthorizedSealed, PolicyError, SignedPolicy, POLICY_REF};
pub use epoch::{counter_name, policy_nv, EPOCH_COUNTER, MAX_RAISE};
pub use keys::{AkAlg, AkFile, SealedFile, MAX_SEALED};

/// The TCTI used when neither a flag nor [`TCTI_ENV`] names one: the kernel's
/// resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";

/// The environment variable that names the TCTI when no flag does.
pub const TCTI_ENV: &str = "SATCHEL_TPM";

/// The highest PCR index Satchel reads or extends (PC Client TPMs have 24).
pub const MAX_PCR: u32 = 23;

/// The TSS log setting applied when the caller has not set `TSS2_LOG`: it
/// keeps the C library quiet; errors reach the caller as [`TpmError`].
const QUIET_TSS_LOG: &str = "all+none";

/// Every PCR handle Satchel may extend, indexed by PCR number.
const PCR_HANDLES: [PcrHandle; 24] = [
    PcrHandle::Pcr0,
    PcrHandle::Pcr1,
    PcrHandle::Pcr2,
    PcrHandle::Pcr3,
    PcrHandle::Pcr4,
    PcrHandle::Pcr5,
    PcrHandle::Pcr6,
    PcrHandle::Pcr7,
    PcrHandle::Pcr8,
    PcrHandle::Pcr9,
    PcrHandle::Pcr10,
    PcrHandle::Pcr11,
    PcrHandle::Pcr12,
    PcrHandle::Pcr13,
    PcrHandle::Pcr14,
    PcrHandle::Pcr15,
    PcrHandle::Pcr16,
    PcrHandle::Pcr17,
    PcrHandle::Pcr18,
    PcrHandle::Pcr19,
    PcrHandle::Pcr20,
    PcrHandle::Pcr21,
    PcrHandle::Pcr22,
    PcrHandle::Pcr23,
];

/// The TCTI to use: the flag's value if given, else `$SATCHEL_TPM` if set
/// and non-empty, else the config file's value, else [`DEFAULT_TCTI`].
pub fn resolve_tcti(flag: Option<&str>, config: Option<&str>) -> String {
    let env = std::env::var(TCTI_ENV).ok();
    choose_tcti(flag, env.as_deref(), config)
}

/// The precedence of [`resolve_tcti`] without reading the environment:
/// flag, then environment, then config file, then [`DEFAULT_TCTI`]; empty
/// values count as unset.
pub fn choose_tcti(flag: Option<&str>, env: Option<&str>, config: Option<&str>) -> String {
    [flag, env, config]
        .into_iter()
        .flatten()
        .find(|t| !t.is_empty())
        .unwrap_or(DEFAULT_TCTI)
        .to_owned()
}

/// Everything that can go wrong talking to the TPM.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TpmError {
    /// The TCTI string does not parse (unknown module or bad syntax).
    #[error("invalid TCTI {tcti:?}")]
    TctiSyntax {
        /// The TCTI as given.
        tcti: String,
        /// What tss-esapi reported.
        #[source]
        source: tss_esapi::Error,
    },
    /// The TCTI parsed but no TPM could be reached through it.
    #[error("cannot open the TPM at TCTI {tcti:?}")]
    Open {
        /// The TCTI as given.
        tcti: String,
        /// What tss-esapi reported.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM command failed (a TPM response code or a TSS error).
    #[error("TPM command {what} failed")]
    Command {
        /// The command, e.g. `TPM2_PCR_Read`.
        what: &'static str,
        /// What tss-esapi reported.
        #[source]
        source: tss_esapi::Error,
    },
    /// A bank with no PCR allocated on this TPM (or an algorithm it lacks).
    #[error("the TPM has no {bank} PCR bank allocated")]
    UnsupportedBank {
        /// The bank asked for.
        bank: HashAlg,
    },
    /// The bank is allocated, but not for this PCR: the TPM returned no value.
    #[error("the TPM has no value for PCR {pcr} in bank {bank} (not allocated)")]
    PcrNotAllocated {
        /// The bank asked for.
        bank: HashAlg,
        /// The first PCR the TPM would not return.
        pcr: u32,
    },
    /// A PCR index above [`MAX_PCR`].
    #[error("PCR {pcr} is out of range (0..=23)")]
    PcrIndex {
        /// The index given.
        pcr: u32,
    },
    /// A digest whose length does not match its bank.
    #[error("digest for PCR {pcr} in bank {bank} is {actual} bytes, expected {expected}")]
    DigestSize {
        /// The PCR being extended.
        pcr: u32,
        /// The bank the digest is for.
        bank: HashAlg,
        /// The bank's digest size.
        expected: usize,
        /// The length given.
        actual: usize,
    },
    /// The same bank given twice in one extend.
    #[error("bank {bank} given twice for one extend of PCR {pcr}")]
    DuplicateBank {
        /// The PCR being extended.
        pcr: u32,
        /// The repeated bank.
        bank: HashAlg,
    },
    /// An extend with no digests at all.
    #[error("no digests given for extending PCR {pcr}")]
    NoDigests {
        /// The PCR being extended.
        pcr: u32,
    },
    /// A secret too large (or empty) to seal.
    #[error("a sealed secret must be 1 to {MAX_SEALED} bytes, not {size}")]
    SecretSize {
        /// The size given.
        size: usize,
    },
    /// Unsealing refused: the PCRs no longer hold the sealed values.
    #[error("the TPM refused to unseal: PCRs {pcrs:?} no longer hold the values sealed to")]
    PcrPolicy {
        /// The PCRs the secret is sealed to.
        pcrs: Vec<u32>,
    },
    /// Unsealing refused: the policy's epoch is below the device's epoch
    /// counter, so a newer policy has revoked it.
    #[error("the TPM refused to unseal: the signed policy is for epoch {epoch}, but this device's epoch counter stands at {counter}: a newer policy has revoked it")]
    Revoked {
        /// The signed policy's epoch.
        epoch: u64,
        /// The counter's value.
        counter: u64,
    },
    /// A policy's epoch too far above the counter to raise it to.
    #[error("the policy's epoch {epoch} is more than {max} above this device's epoch counter ({counter}); refusing to raise it that far", max = epoch::MAX_RAISE)]
    EpochJump {
        /// The counter's value.
        counter: u64,
        /// The epoch asked for.
        epoch: u64,
    },
    /// The TPM answered with something that contradicts the request.
    #[error("malformed TPM response to {what}: {problem}")]
    Malformed {
        /// The command answered.
        what: &'static str,
        /// What is wrong with the answer.
        problem: &'static str,
    },
}

/// An open TPM connection.
///
/// One per TCTI at a time: a raw swtpm or `/dev/tpm0` serves one client.
#[derive(Debug)]
pub struct Tpm {
    pub(crate) ctx: Context,
    /// The TCTI it was opened with (a second connection is opened on it
    /// for the one sequence tss-esapi cannot run, after this one closes).
    tcti: String,
    /// The allocated banks, once asked (allocation changes only at reset).
    banks: Option<Vec<HashAlg>>,
}

impl Tpm {
    /// Connect to the TPM behind `tcti` (e.g. `device:/dev/tpmrm0`,
    /// `swtpm:host=127.0.0.1,port=2321`).
    ///
    /// Sets `TSS2_LOG=all+none` first if `TSS2_LOG` is unset, so the C
    /// library does not print to stderr.
    pub fn open(tcti: &str) -> Result<Tpm, TpmError> {
        quiet_tss_log();
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::TctiSyntax {
            tcti: tcti.to_owned(),
            source,
        })?;
        let ctx = Context::new(conf).map_err(|source| TpmError::Open {
            tcti: tcti.to_owned(),
            source,
        })?;
        Ok(Tpm {
            ctx,
            tcti: tcti.to_owned(),
            banks: None,
        })
    }

    /// The banks with at least one PCR allocated, limited to the algorithms
    /// [`HashAlg`] knows, in [`HashAlg`] order.
    pub fn active_banks(&mut self) -> Result<Vec<HashAlg>, TpmError> {
        if let Some(banks) = &self.banks {
            return Ok(banks.clone());
        }
        let banks = self.query_banks()?;
        self.banks = Some(banks.clone());
        Ok(banks)
    }

    /// Read `pcrs` in every bank of `banks`.
    ///
    /// A bank that is not allocated is [`TpmError::UnsupportedBank`], found
    /// before reading. TPM2_PCR_Read returns at most 8 digests per call, so
    /// this loops until every requested value is in; a PCR the TPM will not
    /// return is [`TpmError::PcrNotAllocated`].
    pub fn read_pcrs(&mut self, banks: &[HashAlg], pcrs: &[u32]) -> Result<PcrBanks, TpmError> {
        let mut pending = pending_reads(banks, pcrs)?;
        self.check_allocated(pending.keys().copied())?;
        let mut out = PcrBanks::new();
        while let Some((bank, pcr)) = first_pending(&pending) {
            let selection = selection_list(&pending)?;
            let (_, read, digests) = self
                .ctx
                .pcr_read(selection)
                .map_err(command("TPM2_PCR_Read"))?;
            if store_read(&read, &digests, &mut pending, &mut out)? == 0 {
                return Err(TpmError::PcrNotAllocated { bank, pcr });
            }
        }
        Ok(out)
    }

    /// Extend PCR `pcr` with one digest per bank in a single TPM2_PCR_Extend.
    ///
    /// The index, the digest sizes and duplicate banks are checked before
    /// the TPM is asked; banks left out are not extended. The TPM itself
    /// ignores digests for banks it implements but has not allocated, and
    /// rejects algorithms it does not implement ([`TpmError::Command`],
    /// TPM_RC_HASH).
    pub fn extend(&mut self, pcr: u32, digests: &[(HashAlg, Vec<u8>)]) -> Result<(), TpmError> {
        let handle = pcr_handle(pcr)?;
        let values = digest_values(pcr, digests)?;
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(handle, values))
            .map_err(command("TPM2_PCR_Extend"))
    }

    /// Ask the TPM which banks have PCRs allocated (TPM2_GetCapability PCRS).
    fn query_banks(&mut self) -> Result<Vec<HashAlg>, TpmError> {
        const WHAT: &str = "TPM2_GetCapability(PCRS)";
        let (data, _more) = self
            .ctx
            .get_capability(CapabilityType::AssignedPcr, 0, 1)
            .map_err(command(WHAT))?;
        let CapabilityData::AssignedPcr(list) = data else {
            return Err(malformed(WHAT, "capability data is not a PCR selection"));
        };
        let banks: BTreeSet<HashAlg> = list
            .get_selections()
            .iter()
            .filter(|s| !s.is_empty())
            .filter_map(|s| from_tss(s.hashing_algorithm()))
            .collect();
        Ok(banks.into_iter().collect())
    }

    /// [`TpmError::UnsupportedBank`] for the first of `banks` not allocated.
    pub(crate) fn check_allocated(
        &mut self,
        banks: impl Iterator<Item = HashAlg>,
    ) -> Result<(), TpmError> {
        let mut wanted = banks.peekable();
        if wanted.peek().is_none() {
            return Ok(());
        }
        let active = self.active_banks()?;
        match wanted.find(|b| !active.contains(b)) {
            Some(bank) => Err(TpmError::UnsupportedBank { bank }),
            None => Ok(()),
        }
    }
}

/// Set `TSS2_LOG` to [`QUIET_TSS_LOG`] once per process, if the caller has
/// not set it, before the first TSS context exists. (Setting the environment
/// races with other threads reading it; doing it once, before tss2 reads it
/// in `Context::new`, keeps that window to the first open.)
fn quiet_tss_log() {
    static QUIET: Once = Once::new();
    QUIET.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            std::env::set_var("TSS2_LOG", QUIET_TSS_LOG);
        }
    });
}

/// Map a tss-esapi error to [`TpmError::Command`] for `what`.
pub(crate) fn command(what: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { what, source }
}

/// A [`TpmError::Malformed`] for `what`.
pub(crate) fn malformed(what: &'static str, problem: &'static str) -> TpmError {
    TpmError::Malformed { what, problem }
}

/// tss-esapi's name for `alg`.
fn to_tss(alg: HashAlg) -> HashingAlgorithm {
    match alg {
        HashAlg::Sha1 => HashingAlgorithm::Sha1,
        HashAlg::Sha256 => HashingAlgorithm::Sha256,
        HashAlg::Sha384 => HashingAlgorithm::Sha384,
        HashAlg::Sha512 => HashingAlgorithm::Sha512,
        HashAlg::Sm3_256 => HashingAlgorithm::Sm3_256,
    }
}

/// Satchel's name for a tss-esapi algorithm, if Satchel knows it.
fn from_tss(alg: HashingAlgorithm) -> Option<HashAlg> {
    HashAlg::from_id(u16::from(alg))
}

/// Reject PCR indices above [`MAX_PCR`].
pub(crate) fn check_pcr(pcr: u32) -> Result<u32, TpmError> {
    if pcr > MAX_PCR {
        Err(TpmError::PcrIndex { pcr })
    } else {
        Ok(pcr)
    }
}

/// The ESYS handle of PCR `pcr`.
fn pcr_handle(pcr: u32) -> Result<PcrHandle, TpmError> {
    usize::try_from(pcr)
        .ok()
        .and_then(|i| PCR_HANDLES.get(i).copied())
        .ok_or(TpmError::PcrIndex { pcr })
}

/// The PCR selection bit for index `pcr` (already checked against [`MAX_PCR`]).
fn pcr_slot(pcr: u32) -> Result<PcrSlot, TpmError> {
    let bit = 1u32.checked_shl(pcr).ok_or(TpmError::PcrIndex { pcr })?;
    PcrSlot::try_from(bit).map_err(|_| TpmError::PcrIndex { pcr })
}

/// The PCR index of a selection bit.
fn slot_index(slot: PcrSlot) -> u32 {
    u32::from(slot).trailing_zeros()
}

/// Bank -> PCR indices still to read, validated and de-duplicated.
fn pending_reads(
    banks: &[HashAlg],
    pcrs: &[u32],
) -> Result<BTreeMap<HashAlg, BTreeSet<u32>>, TpmError> {
    let indices = pcrs
        .iter()
        .map(|&p| check_pcr(p))
        .collect::<Result<BTreeSet<u32>, _>>()?;
    if indices.is_empty() {
        return Ok(BTreeMap::new());
    }
    Ok(banks.iter().map(|&b| (b, indices.clone())).collect())
}

/// The first (bank, PCR) still to read, if any.
fn first_pending(pending: &BTreeMap<HashAlg, BTreeSet<u32>>) -> Option<(HashAlg, u32)> {
    pending
        .iter()
        .find_map(|(&bank, pcrs)| pcrs.first().map(|&pcr| (bank, pcr)))
}

/// The TPM selection for everything still pending (3-octet select: PCRs 0-23).
pub(crate) fn selection_list(
    pending: &BTreeMap<HashAlg, BTreeSet<u32>>,
) -> Result<PcrSelectionList, TpmError> {
    let mut builder =
        PcrSelectionListBuilder::new().with_size_of_select(PcrSelectSize::ThreeOctets);
    for (&bank, indices) in pending {
        let slots = indices
            .iter()
            .map(|&p| pcr_slot(p))
            .collect::<Result<Vec<_>, _>>()?;
        builder = builder.with_selection(to_tss(bank), &slots);
    }
    builder
        .build()
        .map_err(command("TPM2_PCR_Read (selection)"))
}

/// Move the values of one TPM2_PCR_Read answer from `pending` into `out`;
/// returns how many values it stored.
fn store_read(
    read: &PcrSelectionList,
    digests: &DigestList,
    pending: &mut BTreeMap<HashAlg, BTreeSet<u32>>,
    out: &mut PcrBanks,
) -> Result<usize, TpmError> {
    const WHAT: &str = "TPM2_PCR_Read";
    let mut values = digests.value().iter();
    let mut stored = 0;
    for selection in read.get_selections() {
        let bank = from_tss(selection.hashing_algorithm())
            .ok_or_else(|| malformed(WHAT, "a bank that was not requested"))?;
        for slot in selection.selected() {
            let digest = values
                .next()
                .ok_or_else(|| malformed(WHAT, "fewer digests than selected PCRs"))?;
            take_pending(pending, bank, slot_index(slot))?;
            check_read_size(bank, digest)?;
            out.set(bank, slot_index(slot), digest.value().to_vec());
            stored += 1;
        }
    }
    if values.next().is_some() {
        return Err(malformed(WHAT, "more digests than selected PCRs"));
    }
    Ok(stored)
}

/// Remove `(bank, pcr)` from `pending`; an error if it was not pending.
fn take_pending(
    pending: &mut BTreeMap<HashAlg, BTreeSet<u32>>,
    bank: HashAlg,
    pcr: u32,
) -> Result<(), TpmError> {
    let indices = pending
        .get_mut(&bank)
        .filter(|i| i.contains(&pcr))
        .ok_or_else(|| malformed("TPM2_PCR_Read", "a PCR that was not requested"))?;
    indices.remove(&pcr);
    if indices.is_empty() {
        pending.remove(&bank);
    }
    Ok(())
}

/// A PCR value must be exactly one digest of its bank.
fn check_read_size(bank: HashAlg, digest: &Digest) -> Result<(), TpmError> {
    if digest.value().len() == bank.digest_size() {
        Ok(())
    } else {
        Err(malformed(
            "TPM2_PCR_Read",
            "a PCR value of the wrong length",
        ))
    }
}

/// The TPML_DIGEST_VALUES for one extend, after checking every digest.
fn digest_values(pcr: u32, digests: &[(HashAlg, Vec<u8>)]) -> Result<DigestValues, TpmError> {
    if digests.is_empty() {
        return Err(TpmError::NoDigests { pcr });
    }
    let mut seen = BTreeSet::new();
    let mut values = DigestValues::new();
    for (bank, digest) in digests {
        check_extend_digest(pcr, *bank, digest)?;
        if !seen.insert(*bank) {
            return Err(TpmError::DuplicateBank { pcr, bank: *bank });
        }
        let digest = Digest::try_from(digest.clone()).map_err(command("TPM2_PCR_Extend"))?;
        values.set(to_tss(*bank), digest);
    }
    Ok(values)
}

/// An extend digest must have its bank's length.
fn check_extend_digest(pcr: u32, bank: HashAlg, digest: &[u8]) -> Result<(), TpmError> {
    let expected = bank.digest_size();
    if digest.len() == expected {
        Ok(())
    } else {
        Err(TpmError::DigestSize {
            pcr,
            bank,
            expected,
            actual: digest.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_then_env_then_config_then_default() {
        let (f, e, c) = (
            Some("swtpm:port=1"),
            Some("swtpm:port=2"),
            Some("swtpm:port=3"),
        );
        assert_eq!(choose_tcti(f, e, c), "swtpm:port=1");
        assert_eq!(choose_tcti(None, e, c), "swtpm:port=2");
        assert_eq!(choose_tcti(Some(""), Some(""), c), "swtpm:port=3");
        assert_eq!(choose_tcti(None, None, None), DEFAULT_TCTI);
        assert_eq!(resolve_tcti(f, c), "swtpm:port=1");
    }

    #[test]
    fn algorithm_mapping_round_trips() {
        for alg in HashAlg::ALL {
            assert_eq!(from_tss(to_tss(alg)), Some(alg));
        }
        assert_eq!(from_tss(HashingAlgorithm::Sha3_256), None);
    }

    #[test]
    fn pcr_slots_and_handles_cover_0_to_23() {
        for pcr in 0..=MAX_PCR {
            assert_eq!(slot_index(pcr_slot(pcr).unwrap()), pcr);
            assert!(pcr_handle(pcr).is_ok());
        }
        assert!(matches!(
            pcr_handle(24),
            Err(TpmError::PcrIndex { pcr: 24 })
        ));
    }

    #[test]
    fn extend_digests_are_checked_before_the_tpm() {
        let sha256 = (HashAlg::Sha256, vec![0; 32]);
        assert!(digest_values(16, std::slice::from_ref(&sha256)).is_ok());
        assert!(matches!(
            digest_values(16, &[]),
            Err(TpmError::NoDigests { pcr: 16 })
        ));
        assert!(matches!(
            digest_values(16, &[sha256.clone(), sha256]),
            Err(TpmError::DuplicateBank {
                bank: HashAlg::Sha256,
                ..
            })
        ));
        assert!(matches!(
            digest_values(16, &[(HashAlg::Sha1, vec![0; 32])]),
            Err(TpmError::DigestSize {
                expected: 20,
                actual: 32,
                ..
            })
        ));
    }

    #[test]
    fn an_empty_read_stores_nothing_and_names_what_is_missing() {
        let mut pending = pending_reads(&[HashAlg::Sha1, HashAlg::Sha256], &[7, 2]).unwrap();
        let mut out = PcrBanks::new();
        let stored = store_read(
            &PcrSelectionList::default(),
            &DigestList::new(),
            &mut pending,
            &mut out,
        )
        .unwrap();
        assert_eq!(stored, 0);
        assert!(out.is_empty());
        assert_eq!(first_pending(&pending), Some((HashAlg::Sha1, 2)));
    }

    #[test]
    fn reads_are_validated_and_deduplicated() {
        let pending = pending_reads(&[HashAlg::Sha1], &[3, 3, 1]).unwrap();
        assert_eq!(pending[&HashAlg::Sha1], BTreeSet::from([1, 3]));
        assert!(pending_reads(&[HashAlg::Sha1], &[]).unwrap().is_empty());
        assert!(matches!(
            pending_reads(&[HashAlg::Sha1], &[24]),
            Err(TpmError::PcrIndex { pcr: 24 })
        ));
    }
}
