//! Predicting PCR values without a TPM: the chain's events appended to a
//! base log (the firmware's, or an empty crypto-agile log), then replayed.

use attest::eventlog::{replay, EventLog, ReplayOptions};
use attest::{HashAlg, PcrBanks, Reference};

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

/// The reference manifest for `chain` on top of `base` (or of an empty log
/// of `banks`): every PCR the resulting log measures, with the expected
/// events named by stage. Events from the base log are named
/// `firmware #INDEX EV_TYPE`.
pub fn reference(
    chain: &Chain,
    base: Option<&EventLog>,
    banks: &[HashAlg],
    name: &str,
    created: String,
) -> Result<Reference, ChainError> {
    let base_len = base.map_or(1, |b| b.events.len());
    let (log, _) = predict(chain, base, banks)?;
    let planned = chain.plan(&log.banks())?;
    let stage_of = |index: usize| match index.checked_sub(base_len) {
        Some(i) => planned
            .get(i)
            .map_or_else(|| format!("event #{index}"), |e| e.stage.clone()),
        None => log.events.get(index).map_or_else(
            || format!("firmware #{index}"),
            |e| format!("firmware #{index} {}", e.event_type),
        ),
    };
    Ok(Reference::from_log(name, created, &log, stage_of))
}

/// Append a planned event to a log.
pub(crate) fn append(log: &mut EventLog, e: PlannedEvent) {
    log.push(e.pcr, e.event_type, e.digests, e.data);
}
