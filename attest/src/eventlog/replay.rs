//! Replay: the PCR values a log's events produce, bank by bank, with the
//! start-up quirks of real firmware, and findings about events whose digest
//! is not the hash of their own data.
//!
//! PCR 0 starts at the locality of a StartupLocality EV_NO_ACTION event
//! (00..03 on many laptops) and at 00..04 when the firmware used an H-CRTM
//! (EV_EFI_HCRTM_EVENT). EV_NO_ACTION events are never extended. Findings
//! never change the replayed values: whether they matter is the verifier's
//! call, not the replay's.

use std::fmt;

use serde::Serialize;

use super::decode::efi_variable_data;
use super::spec_id::SpecId;
use super::{Event, EventDigest, EventLog, EventRef, EventType};
use crate::alg::HashAlg;
use crate::pcr::PcrBanks;

/// The two EV_EFI_ACTION strings firmware measures into PCR 5 at ExitBootServices.
pub const EXIT_BOOT_SERVICES: [&str; 2] = [
    "Exit Boot Services Invocation",
    "Exit Boot Services Returned with Success",
];

/// Choices that change a replay's result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Some firmware extends the two ExitBootServices actions into PCR 5
    /// without logging them. When set and the log has neither, replay
    /// extends them after the last event. Off by default: it makes a log
    /// say more than it does.
    pub add_missing_exit_boot_services: bool,
}

/// Something worth knowing about a log that does not stop its replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "finding", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Finding {
    /// The event's digest in `bank` is not the hash of its data, for a
    /// type whose digest should be.
    DigestMismatch {
        /// Event number.
        event: usize,
        /// Byte offset of the event.
        offset: usize,
        /// PCR of the event.
        pcr: u32,
        /// Event type.
        event_type: EventType,
        /// The bank whose digest differs.
        bank: HashAlg,
    },
    /// The event has no digest for a bank the header declares; that bank's
    /// PCR value cannot be trusted.
    MissingDigest {
        /// Event number.
        event: usize,
        /// Byte offset of the event.
        offset: usize,
        /// The bank without a digest.
        bank: HashAlg,
    },
    /// The header declares an algorithm Satchel does not know; its bank is not replayed.
    UnknownBank {
        /// The algorithm id.
        alg_id: u16,
    },
    /// A UEFI log with no ExitBootServices events in PCR 5.
    MissingExitBootServices {
        /// Whether replay extended them anyway ([`ReplayOptions::add_missing_exit_boot_services`]).
        added: bool,
    },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Finding::DigestMismatch { event, offset, pcr, event_type, bank } => write!(
                f,
                "event {event} (offset {offset}, PCR {pcr}, {event_type}): {bank} digest is not the hash of the event data"
            ),
            Finding::MissingDigest { event, offset, bank } => write!(
                f,
                "event {event} (offset {offset}) has no {bank} digest; the {bank} bank cannot be replayed faithfully"
            ),
            Finding::UnknownBank { alg_id } => {
                write!(f, "bank 0x{alg_id:04x} is declared but unknown; not replayed")
            }
            Finding::MissingExitBootServices { added: false } => f.write_str(
                "no ExitBootServices events in PCR 5; some firmware extends them without logging (see --add-missing-ebs)",
            ),
            Finding::MissingExitBootServices { added: true } => f.write_str(
                "no ExitBootServices events in PCR 5; replay extended them as if logged (--add-missing-ebs)",
            ),
        }
    }
}

/// The result of a replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replay {
    /// Final values of every PCR the log extends or initialises, per bank.
    pub pcrs: PcrBanks,
    /// The locality PCR 0 started at (from StartupLocality or H-CRTM), if not 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcr0_locality: Option<u8>,
    /// Findings, in event order.
    pub findings: Vec<Finding>,
}

/// What replay needs of an event: owned ([`Event`]) or borrowed ([`EventRef`]).
pub trait LogEvent {
    /// Position in the log.
    fn index(&self) -> usize;
    /// Byte offset in the log.
    fn offset(&self) -> usize;
    /// The PCR.
    fn pcr(&self) -> u32;
    /// The event type.
    fn event_type(&self) -> EventType;
    /// The event data.
    fn data(&self) -> &[u8];
    /// The digest for `alg`, if present.
    fn digest_of(&self, alg: HashAlg) -> Option<&[u8]>;
    /// Every (TPM_ALG_ID, digest) pair.
    fn digest_list(&self) -> impl Iterator<Item = (u16, &[u8])>;
}

impl LogEvent for Event {
    fn index(&self) -> usize {
        self.index
    }
    fn offset(&self) -> usize {
        self.offset
    }
    fn pcr(&self) -> u32 {
        self.pcr
    }
    fn event_type(&self) -> EventType {
        self.event_type
    }
    fn data(&self) -> &[u8] {
        &self.data
    }
    fn digest_of(&self, alg: HashAlg) -> Option<&[u8]> {
        self.digest(alg)
    }
    fn digest_list(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.digests.iter().map(|d| (d.alg_id, d.digest.as_slice()))
    }
}

impl LogEvent for EventRef<'_> {
    fn index(&self) -> usize {
        self.index
    }
    fn offset(&self) -> usize {
        self.offset
    }
    fn pcr(&self) -> u32 {
        self.pcr
    }
    fn event_type(&self) -> EventType {
        self.event_type
    }
    fn data(&self) -> &[u8] {
        self.data
    }
    fn digest_of(&self, alg: HashAlg) -> Option<&[u8]> {
        let id = alg.id();
        self.digests.iter().find(|d| d.0 == id).map(|d| d.1)
    }
    fn digest_list(&self) -> impl Iterator<Item = (u16, &[u8])> {
        self.digests.iter().map(|d| (d.0, d.1))
    }
}

/// Replay `log`: extend every measured event's digests into its PCR, bank by bank.
pub fn replay(log: &EventLog, options: ReplayOptions) -> Replay {
    replay_events(
        &log.events,
        log.spec_id.as_ref(),
        &log.banks(),
        options,
        true,
    )
}

/// Replay `events` (a log's, header included) in `banks`, for owned or
/// borrowed events. `spec` is the log's Spec ID header (None for a legacy
/// log). The digest-of-data checks run only when `check_data` is set: a
/// verifier comparing PCR values does not need those findings.
pub fn replay_events<E: LogEvent>(
    events: &[E],
    spec: Option<&SpecId>,
    banks: &[HashAlg],
    options: ReplayOptions,
    check_data: bool,
) -> Replay {
    let mut findings = unknown_banks(spec);
    let locality = pcr0_locality(events);
    let mut pcrs = PcrBanks::new();
    if let Some(l) = locality {
        for &bank in banks {
            pcrs.set(bank, 0, bank.reset_value(l));
        }
    }
    for event in events
        .iter()
        .filter(|e| e.event_type() != EventType::EV_NO_ACTION)
    {
        if check_data {
            check_digests(event, &mut findings);
        }
        for &bank in banks {
            match event.digest_of(bank) {
                Some(d) => extend(&mut pcrs, bank, event.pcr(), d, locality),
                None => findings.push(Finding::MissingDigest {
                    event: event.index(),
                    offset: event.offset(),
                    bank,
                }),
            }
        }
    }
    exit_boot_services(events, options, banks, &mut pcrs, &mut findings);
    Replay {
        pcrs,
        pcr0_locality: locality.filter(|&l| l != 0),
        findings,
    }
}

fn extend(pcrs: &mut PcrBanks, bank: HashAlg, pcr: u32, digest: &[u8], locality: Option<u8>) {
    if let Some(v) = pcrs.get_mut(bank, pcr) {
        bank.extend_in_place(v, digest);
        return;
    }
    let start = if pcr == 0 { locality.unwrap_or(0) } else { 0 };
    pcrs.set(bank, pcr, bank.extend(&bank.reset_value(start), digest));
}

fn unknown_banks(spec: Option<&SpecId>) -> Vec<Finding> {
    spec.iter()
        .flat_map(|s| s.algorithms.iter())
        .filter(|a| a.alg().is_none())
        .map(|a| Finding::UnknownBank { alg_id: a.alg_id })
        .collect()
}

/// PCR 0's starting locality: 4 with an H-CRTM event, else the StartupLocality
/// event's locality if it comes before PCR 0's first measurement.
fn pcr0_locality<E: LogEvent>(events: &[E]) -> Option<u8> {
    let pcr0 = || events.iter().filter(|e| e.pcr() == 0);
    if pcr0().any(|e| e.event_type() == EventType::EV_EFI_HCRTM_EVENT) {
        return Some(4);
    }
    pcr0()
        .take_while(|e| e.event_type() == EventType::EV_NO_ACTION)
        .find_map(|e| match e.data() {
            [b'S', b't', b'a', b'r', b't', b'u', b'p', b'L', b'o', b'c', b'a', b'l', b'i', b't', b'y', 0, l] => {
                Some(*l)
            }
            _ => None,
        })
}

/// For types whose digest is the hash of their own data, check each bank.
fn check_digests<E: LogEvent>(event: &E, findings: &mut Vec<Finding>) {
    let alternatives: Vec<&[u8]> = match event.event_type() {
        EventType::EV_SEPARATOR
        | EventType::EV_ACTION
        | EventType::EV_EFI_ACTION
        | EventType::EV_S_CRTM_VERSION => vec![event.data()],
        // edk2 hashes only the variable's data for Boot#### variables; the
        // specification hashes the whole UEFI_VARIABLE_DATA. Accept both.
        t if t.is_efi_variable() => {
            let mut v: Vec<&[u8]> = vec![event.data()];
            v.extend(efi_variable_data(event.data()));
            v
        }
        _ => return,
    };
    for (alg_id, digest) in event.digest_list() {
        let Some(alg) = HashAlg::from_id(alg_id) else {
            continue;
        };
        if !alternatives.iter().any(|data| alg.hash(data) == digest) {
            findings.push(Finding::DigestMismatch {
                event: event.index(),
                offset: event.offset(),
                pcr: event.pcr(),
                event_type: event.event_type(),
                bank: alg,
            });
        }
    }
}

fn exit_boot_services<E: LogEvent>(
    events: &[E],
    options: ReplayOptions,
    banks: &[HashAlg],
    pcrs: &mut PcrBanks,
    findings: &mut Vec<Finding>,
) {
    let is_uefi = events.iter().any(|e| e.event_type().0 & 0x8000_0000 != 0);
    let has_ebs = events.iter().any(|e| {
        e.pcr() == 5
            && e.event_type() == EventType::EV_EFI_ACTION
            && e.data().starts_with(EXIT_BOOT_SERVICES[0].as_bytes())
    });
    if !is_uefi || has_ebs {
        return;
    }
    let added = options.add_missing_exit_boot_services;
    findings.push(Finding::MissingExitBootServices { added });
    if !added {
        return;
    }
    for text in EXIT_BOOT_SERVICES {
        for &bank in banks {
            extend(pcrs, bank, 5, &bank.hash(text.as_bytes()), None);
        }
    }
}

/// The digests of `data` in every one of `banks`: what a measurer logs.
pub fn digests_of(data: &[u8], banks: &[HashAlg]) -> Vec<EventDigest> {
    banks
        .iter()
        .map(|b| EventDigest {
            alg_id: b.id(),
            digest: b.hash(data),
        })
        .collect()
}
