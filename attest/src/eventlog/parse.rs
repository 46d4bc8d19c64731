//! Decoding a log's bytes into events: format detection, the legacy
//! TCG_PCR_EVENT record and the crypto-agile TCG_PCR_EVENT2 record.

use super::error::ParseError;
use super::reader::Reader;
use super::spec_id::SpecId;
use super::{BorrowedLog, EventLog, EventRef, EventType, LogFormat};
use crate::alg::HashAlg;

/// Highest PCR index a PC Client TPM has.
const MAX_PCR: u32 = 23;

/// Parse a TCG PC Client event log, crypto-agile or legacy SHA-1.
///
/// The format is decided by the first event: an EV_NO_ACTION in PCR 0 whose
/// data starts with "Spec ID Event03" opens a crypto-agile log; anything
/// else is read as a legacy log.
pub fn parse(bytes: &[u8]) -> Result<EventLog, ParseError> {
    parse_borrowed(bytes).map(|log| log.to_owned())
}

/// [`parse`] without copying: the events borrow `bytes`. Same checks, same
/// errors.
pub fn parse_borrowed(bytes: &[u8]) -> Result<BorrowedLog<'_>, ParseError> {
    if bytes.is_empty() {
        return Err(ParseError::Empty);
    }
    let mut r = Reader::new(bytes, 0);
    let first = legacy_event(&mut r, 0)?;
    let spec_id = if first.pcr == 0
        && first.event_type == EventType::EV_NO_ACTION
        && SpecId::is_spec_id(first.data)
    {
        Some(SpecId::parse(first.data, first.offset + 32)?)
    } else {
        None
    };
    let mut events = vec![first];
    let trailing_padding = loop {
        if r.remaining() == 0 {
            break 0;
        }
        if is_padding(r.rest()) {
            break r.remaining();
        }
        let index = events.len();
        let event = match &spec_id {
            Some(spec) => agile_event(&mut r, index, spec)?,
            None => legacy_event(&mut r, index)?,
        };
        events.push(event);
    };
    Ok(BorrowedLog {
        format: if spec_id.is_some() {
            LogFormat::CryptoAgile
        } else {
            LogFormat::LegacySha1
        },
        spec_id,
        events,
        trailing_padding,
    })
}

/// Fixed-size firmware tables end in runs of 0x00 or 0xFF.
fn is_padding(rest: &[u8]) -> bool {
    rest.first()
        .is_some_and(|&b| (b == 0x00 || b == 0xFF) && rest.iter().all(|&x| x == b))
}

/// PCR index and event type. PCR 0xFFFFFFFF is allowed on EV_NO_ACTION
/// events only (Windows logs use it for events that extend nothing).
fn pcr_and_type(r: &mut Reader<'_>, index: usize) -> Result<(u32, EventType), ParseError> {
    let offset = r.offset();
    let pcr = r.u32("PCR index")?;
    let event_type = EventType(r.u32("event type")?);
    let unextended = pcr == u32::MAX && event_type == EventType::EV_NO_ACTION;
    if pcr > MAX_PCR && !unextended {
        return Err(ParseError::PcrIndex { offset, index, pcr });
    }
    Ok((pcr, event_type))
}

/// TCG_PCR_EVENT: PCR index, type, SHA-1 digest, sized data.
fn legacy_event<'a>(r: &mut Reader<'a>, index: usize) -> Result<EventRef<'a>, ParseError> {
    let offset = r.offset();
    let (pcr, event_type) = pcr_and_type(r, index)?;
    let digest = r.take(20, "SHA-1 digest")?;
    let data = r.sized_u32("event data")?;
    Ok(EventRef {
        index,
        offset,
        pcr,
        event_type,
        digests: smallvec::smallvec![(HashAlg::Sha1.id(), digest)],
        data,
    })
}

/// TCG_PCR_EVENT2: PCR index, type, TPML_DIGEST_VALUES, sized data.
fn agile_event<'a>(
    r: &mut Reader<'a>,
    index: usize,
    spec: &SpecId,
) -> Result<EventRef<'a>, ParseError> {
    let offset = r.offset();
    let (pcr, event_type) = pcr_and_type(r, index)?;
    let digests = digest_values(r, index, spec)?;
    let data = r.sized_u32("event data")?;
    Ok(EventRef {
        index,
        offset,
        pcr,
        event_type,
        digests,
        data,
    })
}

type Digests<'a> = smallvec::SmallVec<[(u16, &'a [u8]); 4]>;

fn digest_values<'a>(
    r: &mut Reader<'a>,
    index: usize,
    spec: &SpecId,
) -> Result<Digests<'a>, ParseError> {
    let offset = r.offset();
    let count = r.u32("digest count")?;
    let declared = spec.algorithms.len();
    if count == 0 || count as usize > declared {
        return Err(ParseError::DigestCount {
            offset,
            index,
            count,
            declared,
        });
    }
    let mut digests = Digests::new();
    for _ in 0..count {
        let at = r.offset();
        let alg_id = r.u16("digest algorithm")?;
        if digests.iter().any(|d| d.0 == alg_id) {
            return Err(ParseError::DuplicateAlg {
                offset: at,
                index,
                alg: alg_id,
            });
        }
        let size = spec.digest_size(alg_id).ok_or(ParseError::UndeclaredAlg {
            offset: at,
            index,
            alg: alg_id,
        })?;
        let digest = r.take(size, "digest")?;
        digests.push((alg_id, digest));
    }
    Ok(digests)
}
