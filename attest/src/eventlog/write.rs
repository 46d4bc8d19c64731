//! Writing events and logs back to bytes, in the layout they were read in:
//! the first event (and every event of a legacy log) as TCG_PCR_EVENT, the
//! rest of a crypto-agile log as TCG_PCR_EVENT2.

use super::{Event, EventLog, LogFormat};
use crate::alg::HashAlg;

impl Event {
    /// Encode the event as TCG_PCR_EVENT2 (`agile`) or TCG_PCR_EVENT.
    ///
    /// A legacy record holds exactly one SHA-1 digest: the event's SHA-1
    /// digest, or zeros if it has none.
    pub fn encode(&self, agile: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.pcr.to_le_bytes());
        out.extend_from_slice(&self.event_type.0.to_le_bytes());
        if agile {
            out.extend_from_slice(&(self.digests.len() as u32).to_le_bytes());
            for d in &self.digests {
                out.extend_from_slice(&d.alg_id.to_le_bytes());
                out.extend_from_slice(&d.digest);
            }
        } else {
            match self.digest(HashAlg::Sha1) {
                Some(d) => out.extend_from_slice(d),
                None => out.extend_from_slice(&[0u8; 20]),
            }
        }
        out.extend_from_slice(&(self.data.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.data);
    }

    /// The encoded length of the event in the given layout.
    pub fn encoded_len(&self, agile: bool) -> usize {
        let digests = if agile {
            4 + self
                .digests
                .iter()
                .map(|d| 2 + d.digest.len())
                .sum::<usize>()
        } else {
            20
        };
        4 + 4 + digests + 4 + self.data.len()
    }
}

impl EventLog {
    /// Whether event `index` is written as TCG_PCR_EVENT2.
    pub(crate) fn is_agile_record(&self, index: usize) -> bool {
        self.format == LogFormat::CryptoAgile && index > 0
    }

    /// Encode the whole log (trailing padding is not written).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        for (i, e) in self.events.iter().enumerate() {
            e.encode(self.is_agile_record(i), &mut out);
        }
        out
    }

    /// The length of [`EventLog::to_bytes`].
    pub fn encoded_len(&self) -> usize {
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| e.encoded_len(self.is_agile_record(i)))
            .sum()
    }

    /// The bytes of event `index` as they appear in the log, to append to
    /// a log file without rewriting it.
    pub fn event_bytes(&self, index: usize) -> Option<Vec<u8>> {
        let e = self.events.get(index)?;
        let mut out = Vec::with_capacity(e.encoded_len(self.is_agile_record(index)));
        e.encode(self.is_agile_record(index), &mut out);
        Some(out)
    }
}
