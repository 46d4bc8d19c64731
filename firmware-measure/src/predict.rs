//! Predicting PCR values without a TPM: the chain's events appended to a
//! base log (the firmware's, or an empty crypto-agile log), then replayed.

use attest::eventlog::{replay, EventLog, ReplayOptions};
use attest::{HashAlg, PcrBanks};

use crate::chain::{Chain, PlannedEvent};
use crate::error::ChainError;

/// The log a measurer would write for `chain` on top of `base` (or on top
/// of an empty log of `banks`), and the PCR values it replays to.
pub fn predict(
    chain: &Chain,
    base: Option<&EventLog>,
    banks: &[HashAlg],
) -> Result<(EventLog, PcrBanks), ChainError> {
    let mut log = match base {
        Some(b) => b.clone(),
        None => EventLog::new_crypto_agile(banks),
    };
    for e in chain.plan(&log.banks())? {
        append(&mut log, e);
    }
    let pcrs = replay(&log, ReplayOptions::default()).pcrs;
    Ok((log, pcrs))
}

/// Append a planned event to a log.
pub(crate) fn append(log: &mut EventLog, e: PlannedEvent) {
    log.push(e.pcr, e.event_type, e.digests, e.data);
}
