//! TCG PC Client firmware event logs: parsing, decoding, replay and writing.
//!
//! Two formats are read: the crypto-agile log (a legacy-format first event
//! carrying the Spec ID Event03 header, then TCG_PCR_EVENT2 records with one
//! digest per declared bank) and the legacy SHA-1 log (TCG_PCR_EVENT records
//! only). [`parse`] turns bytes into an [`EventLog`]; [`replay`] computes the
//! final PCR values; [`EventLog::to_bytes`] writes a log back, so that
//! `parse(log.to_bytes()) == log`.
//!
//! This module never talks to a TPM and never panics on input: malformed
//! bytes give a [`ParseError`] naming the byte offset and what was expected,
//! and no allocation is sized by a length the input did not back with bytes.

mod decode;
mod error;
mod event_type;
mod parse;
mod reader;
mod replay;
pub mod spec_id;
mod write;

use serde::Serialize;

pub(crate) use decode::efi_variable_data;
pub use decode::{EventData, GptPartition};
pub use error::ParseError;
pub use event_type::{EventType, UnknownEventType};
pub use parse::{parse, parse_borrowed};
pub use replay::{
    digests_of, replay, replay_events, Finding, LogEvent, Replay, ReplayOptions, EXIT_BOOT_SERVICES,
};
pub use spec_id::{AlgorithmSize, SpecId};

use crate::alg::HashAlg;

/// Which of the two TCG layouts a log uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Spec ID Event03 header followed by TCG_PCR_EVENT2 records.
    CryptoAgile,
    /// TCG_PCR_EVENT records with one SHA-1 digest each.
    LegacySha1,
}

/// One digest of an event: the algorithm id and the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventDigest {
    /// TPM_ALG_ID of the digest.
    pub alg_id: u16,
    /// The digest bytes (as long as the header declares for the algorithm).
    pub digest: Vec<u8>,
}

impl EventDigest {
    /// The algorithm, if Satchel knows it.
    pub fn alg(&self) -> Option<HashAlg> {
        HashAlg::from_id(self.alg_id)
    }
}

/// One event of a log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Position in the file, 0 for the first event (the Spec ID header of a
    /// crypto-agile log is event 0).
    pub index: usize,
    /// Byte offset of the event's first byte in the file.
    pub offset: usize,
    /// The PCR the event was (or, for EV_NO_ACTION, was not) extended into.
    pub pcr: u32,
    /// The event type.
    pub event_type: EventType,
    /// One digest per bank (exactly one SHA-1 digest in a legacy log).
    pub digests: Vec<EventDigest>,
    /// The event data as logged.
    pub data: Vec<u8>,
}

impl Event {
    /// The digest for bank `alg`, if the event carries one.
    pub fn digest(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digests
            .iter()
            .find(|d| d.alg_id == alg.id())
            .map(|d| d.digest.as_slice())
    }

    /// The event data decoded by type (see [`EventData`]).
    pub fn decoded(&self) -> EventData {
        decode::decode(self.event_type, &self.data)
    }
}

/// One event borrowed from a log's bytes: what [`parse_borrowed`] yields,
/// with no allocation per event. [`EventRef::to_owned`] makes an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Position in the file (the Spec ID header is event 0).
    pub index: usize,
    /// Byte offset of the event's first byte.
    pub offset: usize,
    /// The PCR.
    pub pcr: u32,
    /// The event type.
    pub event_type: EventType,
    /// (TPM_ALG_ID, digest) pairs, in file order.
    pub digests: smallvec::SmallVec<[(u16, &'a [u8]); 4]>,
    /// The event data.
    pub data: &'a [u8],
}

impl EventRef<'_> {
    /// The owned event.
    pub fn to_owned(&self) -> Event {
        Event {
            index: self.index,
            offset: self.offset,
            pcr: self.pcr,
            event_type: self.event_type,
            digests: self
                .digests
                .iter()
                .map(|(alg_id, d)| EventDigest {
                    alg_id: *alg_id,
                    digest: d.to_vec(),
                })
                .collect(),
            data: self.data.to_vec(),
        }
    }
}

/// A log whose events borrow its bytes (see [`parse_borrowed`]): for
/// verifiers that replay many logs and keep none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BorrowedLog<'a> {
    /// The layout.
    pub format: LogFormat,
    /// The Spec ID header of a crypto-agile log.
    pub spec_id: Option<SpecId>,
    /// Every event in file order, the header event included.
    pub events: Vec<EventRef<'a>>,
    /// Bytes of padding after the last event.
    pub trailing_padding: usize,
}

impl<'a> BorrowedLog<'a> {
    /// The banks a replay computes (see [`EventLog::banks`]).
    pub fn banks(&self) -> Vec<HashAlg> {
        banks_of(self.spec_id.as_ref())
    }

    /// The events a replay extends.
    pub fn measured_events(&self) -> impl Iterator<Item = &EventRef<'a>> {
        self.events
            .iter()
            .filter(|e| e.event_type != EventType::EV_NO_ACTION)
    }

    /// The owned log.
    pub fn to_owned(&self) -> EventLog {
        EventLog {
            format: self.format,
            spec_id: self.spec_id.clone(),
            events: self.events.iter().map(EventRef::to_owned).collect(),
            trailing_padding: self.trailing_padding,
        }
    }
}

fn banks_of(spec: Option<&SpecId>) -> Vec<HashAlg> {
    match spec {
        Some(s) => s.algorithms.iter().filter_map(AlgorithmSize::alg).collect(),
        None => vec![HashAlg::Sha1],
    }
}

/// A parsed event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventLog {
    /// The layout.
    pub format: LogFormat,
    /// The Spec ID header of a crypto-agile log.
    pub spec_id: Option<SpecId>,
    /// Every event in file order, the header event included.
    pub events: Vec<Event>,
    /// Bytes of 0x00 or 0xFF padding after the last event (firmware tables
    /// are fixed-size); they are not written back.
    pub trailing_padding: usize,
}

impl EventLog {
    /// An empty crypto-agile log for the given banks: only its Spec ID header event.
    pub fn new_crypto_agile(banks: &[HashAlg]) -> EventLog {
        let spec = SpecId::for_banks(banks);
        let header = Event {
            index: 0,
            offset: 0,
            pcr: 0,
            event_type: EventType::EV_NO_ACTION,
            digests: vec![EventDigest {
                alg_id: HashAlg::Sha1.id(),
                digest: vec![0; 20],
            }],
            data: spec.encode(),
        };
        EventLog {
            format: LogFormat::CryptoAgile,
            spec_id: Some(spec),
            events: vec![header],
            trailing_padding: 0,
        }
    }

    /// The banks a replay computes: those the header declares and Satchel
    /// knows (SHA-1 for a legacy log).
    pub fn banks(&self) -> Vec<HashAlg> {
        banks_of(self.spec_id.as_ref())
    }

    /// Append an event, filling in its index and offset; returns the new event.
    pub fn push(
        &mut self,
        pcr: u32,
        event_type: EventType,
        digests: Vec<EventDigest>,
        data: Vec<u8>,
    ) -> &Event {
        let index = self.events.len();
        let offset = self.events.last().map_or(0, |e| {
            e.offset + e.encoded_len(self.is_agile_record(e.index))
        });
        self.events.push(Event {
            index,
            offset,
            pcr,
            event_type,
            digests,
            data,
        });
        &self.events[index]
    }

    /// The events a replay extends (EV_NO_ACTION events are never extended).
    pub fn measured_events(&self) -> impl Iterator<Item = &Event> {
        self.events
            .iter()
            .filter(|e| e.event_type != EventType::EV_NO_ACTION)
    }
}
