//! Measuring a chain into a real TPM: each event is extended into the TPM in
//! every active bank, then appended to the event log file and synced, so the
//! log on disk never runs ahead of the TPM. The log is created with a Spec ID
//! header for the TPM's active banks when it does not exist.
//!
//! A crash between an extend and its append leaves a log that replays short
//! of the TPM: detectable by comparing, never silently wrong.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use attest::eventlog::{self, EventLog};
use attest::tpm::{Tpm, TpmError};
use attest::HashAlg;

use crate::chain::{Chain, PlannedEvent};
use crate::error::ChainError;
use crate::predict::append;

/// Why a measurement stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MeasureError {
    /// The chain could not be planned.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The TPM refused or could not be reached.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The existing log could not be parsed.
    #[error("existing event log {path} is not a valid log")]
    Log {
        /// The log file.
        path: PathBuf,
        /// The parse error, with its offset.
        #[source]
        source: eventlog::ParseError,
    },
    /// The existing log's banks are not the TPM's active banks.
    #[error(
        "event log {path} records banks [{log}] but the TPM has [{tpm}] active; use a new log file"
    )]
    Banks {
        /// The log file.
        path: PathBuf,
        /// The log's banks.
        log: String,
        /// The TPM's banks.
        tpm: String,
    },
    /// The log ends in firmware-table padding; appending would bury events behind it.
    #[error("event log {path} ends in {bytes} bytes of padding; trim it or use a new log file")]
    Padded {
        /// The log file.
        path: PathBuf,
        /// Padding bytes.
        bytes: usize,
    },
    /// The log is a legacy SHA-1 log, which Satchel does not append to.
    #[error("event log {path} is a legacy SHA-1 log; Satchel appends only to crypto-agile logs")]
    Legacy {
        /// The log file.
        path: PathBuf,
    },
    /// Reading or writing the log file failed.
    #[error("writing event log {path}")]
    Io {
        /// The log file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What a measurement did.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The TPM's active banks (the log's banks).
    pub banks: Vec<HashAlg>,
    /// The events extended and logged, in order.
    pub events: Vec<PlannedEvent>,
    /// The whole log after the measurement.
    pub log: EventLog,
}

/// Extend every event of `chain` into `tpm` and append it to the log at `log_path`.
pub fn measure(chain: &Chain, tpm: &mut Tpm, log_path: &Path) -> Result<Measured, MeasureError> {
    let banks = tpm.active_banks()?;
    let mut log = open_log(log_path, &banks)?;
    let events = chain.plan(&banks)?;
    let io = |source| MeasureError::Io {
        path: log_path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new().append(true).open(log_path).map_err(io)?;
    for e in &events {
        let digests: Vec<(HashAlg, Vec<u8>)> = e
            .digests
            .iter()
            .filter_map(|d| Some((d.alg()?, d.digest.clone())))
            .collect();
        tpm.extend(e.pcr, &digests)?;
        append(&mut log, e.clone());
        let index = log.events.len() - 1;
        let bytes = log.event_bytes(index).unwrap_or_default();
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        tracing::info!(stage = %e.stage, pcr = e.pcr, "measured");
    }
    Ok(Measured { banks, events, log })
}

/// Open the log, or create it with a header for `banks`.
fn open_log(path: &Path, banks: &[HashAlg]) -> Result<EventLog, MeasureError> {
    let io = |source| MeasureError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            let log = eventlog::parse(&bytes).map_err(|source| MeasureError::Log {
                path: path.to_owned(),
                source,
            })?;
            check_log(path, &log, banks)?;
            Ok(log)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let log = EventLog::new_crypto_agile(banks);
            create_atomically(path, &log.to_bytes()).map_err(io)?;
            Ok(log)
        }
        Err(e) => Err(io(e)),
    }
}

fn check_log(path: &Path, log: &EventLog, banks: &[HashAlg]) -> Result<(), MeasureError> {
    if log.spec_id.is_none() {
        return Err(MeasureError::Legacy {
            path: path.to_owned(),
        });
    }
    if log.trailing_padding > 0 {
        return Err(MeasureError::Padded {
            path: path.to_owned(),
            bytes: log.trailing_padding,
        });
    }
    if log.banks() != banks {
        let names = |b: &[HashAlg]| b.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ");
        return Err(MeasureError::Banks {
            path: path.to_owned(),
            log: names(&log.banks()),
            tpm: names(banks),
        });
    }
    Ok(())
}

/// Write `bytes` to `path` durably (see `persist::file`).
fn create_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    persist::write_atomic(path, bytes).map_err(std::io::Error::other)
}
