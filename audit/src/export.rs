//! The export format: JSON Lines, one object per line, entries in sequence
//! order then checkpoints by size.
//!
//! ```text
//! {"type":"entry","seq":0,"ts_ms":1700000000000,"kind":"policy","actor":"device:a","subject":"https://x/","decision":"deny","details":{},"leaf_hash":"<hex>"}
//! {"type":"checkpoint","size":1,"root":"<hex>","created_ms":1700000000001,"note":"<signed note>"}
//! ```
//!
//! Reading is strict: unknown fields, bad hex and malformed lines are errors
//! that name the line number. An export is untrusted input to `verify`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::Verifier;
use crate::entry::{canonical_json, Entry};
use crate::merkle::Hash;
use crate::store::{StoredCheckpoint, StoredEntry};
use crate::verify::{LogVerifier, Report};

/// Longest line accepted when reading an export (entries are small).
pub const MAX_LINE: usize = 1 << 20;

/// One line of an export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    /// An entry.
    Entry {
        /// Sequence number.
        seq: u64,
        /// Timestamp, ms since the epoch.
        ts_ms: i64,
        /// Kind.
        kind: String,
        /// Actor.
        actor: String,
        /// Subject.
        subject: String,
        /// Decision.
        decision: String,
        /// Details.
        details: Value,
        /// Stored leaf hash, hex.
        leaf_hash: String,
    },
    /// A signed checkpoint.
    Checkpoint {
        /// Tree size.
        size: u64,
        /// Root, hex.
        root: String,
        /// When made.
        created_ms: i64,
        /// The signed note.
        note: String,
    },
}

/// Why an export could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// Reading or writing failed.
    #[error("export I/O")]
    Io(#[from] std::io::Error),
    /// A line is not a valid export line.
    #[error("line {line}: {reason}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

impl From<&StoredEntry> for Line {
    fn from(s: &StoredEntry) -> Line {
        let e = &s.entry;
        Line::Entry {
            seq: e.seq,
            ts_ms: e.ts_ms,
            kind: e.kind.clone(),
            actor: e.actor.clone(),
            subject: e.subject.clone(),
            decision: e.decision.clone(),
            details: e.details.clone(),
            leaf_hash: hex::encode(s.leaf_hash),
        }
    }
}

impl From<&StoredCheckpoint> for Line {
    fn from(c: &StoredCheckpoint) -> Line {
        Line::Checkpoint {
            size: c.size,
            root: hex::encode(c.root),
            created_ms: c.created_ms,
            note: c.note.clone(),
        }
    }
}

/// Write one line.
pub fn write_line(out: &mut impl Write, line: &Line) -> Result<(), ExportError> {
    serde_json::to_writer(&mut *out, line).map_err(std::io::Error::from)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// A parsed line, checked and typed.
enum Record {
    Entry(StoredEntry),
    Checkpoint(StoredCheckpoint),
}

impl Line {
    /// Check the hashes and turn the line into what the store holds.
    fn into_record(self, n: usize) -> Result<Record, ExportError> {
        Ok(match self {
            Line::Entry {
                seq,
                ts_ms,
                kind,
                actor,
                subject,
                decision,
                details,
                leaf_hash,
            } => Record::Entry(StoredEntry {
                details_text: canonical_json(&details),
                entry: Entry {
                    seq,
                    ts_ms,
                    kind,
                    actor,
                    subject,
                    decision,
                    details,
                },
                leaf_hash: hash(&leaf_hash, n)?,
            }),
            Line::Checkpoint {
                size,
                root,
                created_ms,
                note,
            } => Record::Checkpoint(StoredCheckpoint {
                size,
                root: hash(&root, n)?,
                note,
                created_ms,
            }),
        })
    }
}

/// Read a whole export into entries (in file order) and checkpoints.
pub fn read(input: impl BufRead) -> Result<(Vec<StoredEntry>, Vec<StoredCheckpoint>), ExportError> {
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for_each_line(input, |n, line| {
        match parse_line(n, line)?.into_record(n)? {
            Record::Entry(e) => entries.push(e),
            Record::Checkpoint(c) => checkpoints.push(c),
        }
        Ok(())
    })?;
    Ok((entries, checkpoints))
}

fn bad(line: usize, reason: String) -> ExportError {
    ExportError::Line { line, reason }
}

fn hash(text: &str, line: usize) -> Result<Hash, ExportError> {
    let bytes = hex::decode(text).map_err(|e| bad(line, format!("hash is not hex: {e}")))?;
    Hash::try_from(bytes.as_slice()).map_err(|_| bad(line, "hash is not 32 bytes".into()))
}

/// Verify an export file against `verifier`'s key without holding it in
/// memory: a first pass collects the checkpoints, a second streams the
/// entries through [`LogVerifier`].
pub fn verify_file(path: &Path, verifier: &Verifier) -> Result<Report, ExportError> {
    verify_file_witnessed(path, verifier, Vec::new())
}

/// [`verify_file`], also against `witnessed` checkpoints kept outside the
/// export (a device's, say): an export shorter than, or another tree than,
/// a witnessed checkpoint is reported as for its own.
pub fn verify_file_witnessed(
    path: &Path,
    verifier: &Verifier,
    witnessed: Vec<crate::store::StoredCheckpoint>,
) -> Result<Report, ExportError> {
    let open = || File::open(path).map(BufReader::new);
    let mut checkpoints = witnessed;
    for_each_line(open()?, |n, line| {
        // Our entry lines start so; anything else is parsed in full.
        if !line.starts_with("{\"type\":\"entry\"") {
            if let Record::Checkpoint(c) = parse_line(n, line)?.into_record(n)? {
                checkpoints.push(c);
            }
        }
        Ok(())
    })?;
    let mut v = LogVerifier::new(checkpoints, verifier);
    for_each_line(open()?, |n, line| {
        if let Record::Entry(e) = parse_line(n, line)?.into_record(n)? {
            v.push(&e);
        }
        Ok(())
    })?;
    Ok(v.finish())
}

fn for_each_line(
    input: impl BufRead,
    mut f: impl FnMut(usize, &str) -> Result<(), ExportError>,
) -> Result<(), ExportError> {
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if !line.trim().is_empty() {
            f(i + 1, &line)?;
        }
    }
    Ok(())
}

fn parse_line(n: usize, line: &str) -> Result<Line, ExportError> {
    if line.len() > MAX_LINE {
        return Err(bad(n, "line longer than 1 MiB".into()));
    }
    serde_json::from_str::<Line>(line).map_err(|e| bad(n, e.to_string()))
}
