//! The boot-chain file (TOML): the ordered stages Satchel measures after
//! firmware, and their expansion into the events a measurer logs.
//!
//! ```toml
//! [[stage]]
//! name = "boot-loader"
//! pcr = 4
//! file = "bootloader.efi"          # relative to this file; its bytes are hashed
//! event = "EV_EFI_BOOT_SERVICES_APPLICATION"   # optional, default EV_IPL
//!
//! [[stage]]
//! name = "kernel-cmdline"
//! pcr = 8
//! data = "console=ttyS0 ro"        # inline: these bytes are hashed and logged
//!
//! [[stage]]
//! name = "end-of-firmware"
//! separator = [0, 1, 2, 3, 4, 5, 6, 7]
//! ```
//!
//! Loading is two-staged: a raw serde struct that refuses unknown keys, then
//! validation into [`Chain`]. Reading never measures anything.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use attest::eventlog::{digests_of, EventDigest, EventType};
use attest::HashAlg;
use serde::Deserialize;

use crate::error::ChainError;

/// Highest PCR index a PC Client TPM has.
const MAX_PCR: u32 = 23;

/// The raw file, as TOML gives it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChain {
    #[serde(default)]
    stage: Vec<RawStage>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    pcr: Option<u32>,
    file: Option<PathBuf>,
    data: Option<String>,
    event: Option<String>,
    separator: Option<Vec<u32>>,
}

/// A validated boot chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Where the chain file is; stage files are relative to its directory.
    pub path: PathBuf,
    /// The stages, in measurement order.
    pub stages: Vec<Stage>,
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    /// Unique name, used in logs and in reference manifests.
    pub name: String,
    /// What the stage measures.
    pub kind: StageKind,
}

/// What a stage measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StageKind {
    /// One event into one PCR.
    Measure {
        /// The PCR.
        pcr: u32,
        /// The event type logged.
        event_type: EventType,
        /// What is hashed.
        content: Content,
    },
    /// An EV_SEPARATOR (value 0) into each listed PCR.
    Separator {
        /// The PCRs, in order.
        pcrs: Vec<u32>,
    },
}

/// The bytes a measuring stage hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A file's bytes (absolute path, resolved against the chain file).
    File(PathBuf),
    /// Inline bytes.
    Data(String),
}

/// One event a chain produces: what is extended and what is logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    /// The stage it comes from.
    pub stage: String,
    /// The PCR.
    pub pcr: u32,
    /// The event type.
    pub event_type: EventType,
    /// One digest per bank.
    pub digests: Vec<EventDigest>,
    /// The event data logged.
    pub data: Vec<u8>,
}

impl Chain {
    /// Read and validate a chain file.
    pub fn load(path: &Path) -> Result<Chain, ChainError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChainError::Read {
            path: path.to_owned(),
            source,
        })?;
        Chain::from_toml(&text, path)
    }

    /// Validate chain text as if it were read from `path`.
    pub fn from_toml(text: &str, path: &Path) -> Result<Chain, ChainError> {
        let raw: RawChain = toml::from_str(text).map_err(|source| ChainError::Syntax {
            path: path.to_owned(),
            source,
        })?;
        if raw.stage.is_empty() {
            return Err(ChainError::Empty {
                path: path.to_owned(),
            });
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut seen = HashSet::new();
        let mut stages = Vec::with_capacity(raw.stage.len());
        for (i, r) in raw.stage.into_iter().enumerate() {
            let fail = |reason: String| ChainError::Stage {
                path: path.to_owned(),
                index: i + 1,
                name: r.name.clone(),
                reason,
            };
            if !seen.insert(r.name.clone()) {
                return Err(fail("stage names must be unique".into()));
            }
            stages.push(validate(&r, base).map_err(fail)?);
        }
        Ok(Chain {
            path: path.to_owned(),
            stages,
        })
    }

    /// Expand the chain into events, hashing each stage in every one of `banks`.
    pub fn plan(&self, banks: &[HashAlg]) -> Result<Vec<PlannedEvent>, ChainError> {
        let mut events = Vec::new();
        for stage in &self.stages {
            match &stage.kind {
                StageKind::Measure {
                    pcr,
                    event_type,
                    content,
                } => events.push(plan_measure(stage, *pcr, *event_type, content, banks)?),
                StageKind::Separator { pcrs } => {
                    let data = 0u32.to_le_bytes().to_vec();
                    events.extend(pcrs.iter().map(|&pcr| PlannedEvent {
                        stage: stage.name.clone(),
                        pcr,
                        event_type: EventType::EV_SEPARATOR,
                        digests: digests_of(&data, banks),
                        data: data.clone(),
                    }));
                }
            }
        }
        Ok(events)
    }
}

fn plan_measure(
    stage: &Stage,
    pcr: u32,
    event_type: EventType,
    content: &Content,
    banks: &[HashAlg],
) -> Result<PlannedEvent, ChainError> {
    let (digests, data) = match content {
        Content::Data(d) => (digests_of(d.as_bytes(), banks), d.as_bytes().to_vec()),
        Content::File(f) => {
            let bytes = std::fs::read(f).map_err(|source| ChainError::StageFile {
                stage: stage.name.clone(),
                file: f.clone(),
                source,
            })?;
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let data = if event_type.is_image_load() {
                image_load_event(&name, bytes.len() as u64)
            } else {
                format!("stage={} file={name}", stage.name).into_bytes()
            };
            (digests_of(&bytes, banks), data)
        }
    };
    Ok(PlannedEvent {
        stage: stage.name.clone(),
        pcr,
        event_type,
        digests,
        data,
    })
}

/// A UEFI_IMAGE_LOAD_EVENT for a file stage logged as an image load: no
/// load address, the file's length, and a device path of one file node.
fn image_load_event(name: &str, length: u64) -> Vec<u8> {
    let path: Vec<u8> = format!("\\{name}\0")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    let mut dp = vec![0x04, 0x04];
    dp.extend_from_slice(&((4 + path.len()) as u16).to_le_bytes());
    dp.extend_from_slice(&path);
    dp.extend_from_slice(&[0x7f, 0xff, 0x04, 0x00]);
    let mut out = Vec::with_capacity(32 + dp.len());
    for field in [0, length, 0, dp.len() as u64] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&dp);
    out
}

/// Types whose digest must be the hash of the logged data, so a `file`
/// stage (digest of the file, data naming it) cannot use them.
fn digest_is_of_data(t: EventType) -> bool {
    t.is_efi_variable()
        || matches!(
            t,
            EventType::EV_SEPARATOR | EventType::EV_ACTION | EventType::EV_EFI_ACTION
        )
}

fn validate(r: &RawStage, base: &Path) -> Result<Stage, String> {
    if r.name.trim().is_empty() {
        return Err("a stage needs a non-empty name".into());
    }
    let kind = match (&r.separator, &r.file, &r.data) {
        (Some(pcrs), None, None) => separator(r, pcrs)?,
        (None, Some(f), None) => measure(r, Content::File(base.join(f)))?,
        (None, None, Some(d)) => measure(r, Content::Data(d.clone()))?,
        _ => return Err("give exactly one of `file`, `data` or `separator`".into()),
    };
    Ok(Stage {
        name: r.name.clone(),
        kind,
    })
}

fn separator(r: &RawStage, pcrs: &[u32]) -> Result<StageKind, String> {
    if r.pcr.is_some() || r.event.is_some() {
        return Err("a `separator` stage takes neither `pcr` nor `event`".into());
    }
    if pcrs.is_empty() {
        return Err("`separator` lists no PCRs".into());
    }
    pcrs.iter().try_for_each(|&p| check_pcr(p))?;
    Ok(StageKind::Separator {
        pcrs: pcrs.to_vec(),
    })
}

fn measure(r: &RawStage, content: Content) -> Result<StageKind, String> {
    let pcr = r.pcr.ok_or("a measuring stage needs `pcr`")?;
    check_pcr(pcr)?;
    let event_type = match &r.event {
        None => EventType::EV_IPL,
        Some(e) => e.parse::<EventType>().map_err(|e| e.to_string())?,
    };
    if event_type == EventType::EV_NO_ACTION {
        return Err("EV_NO_ACTION events are never extended; it cannot be a stage".into());
    }
    if matches!(content, Content::File(_)) && digest_is_of_data(event_type) {
        return Err(format!(
            "{event_type} digests are the hash of the logged data: use `data`, not `file`"
        ));
    }
    Ok(StageKind::Measure {
        pcr,
        event_type,
        content,
    })
}

fn check_pcr(pcr: u32) -> Result<(), String> {
    if pcr > MAX_PCR {
        return Err(format!("PCR {pcr} is out of range (0-23)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Chain, ChainError> {
        Chain::from_toml(text, Path::new("/chains/chain.toml"))
    }

    #[test]
    fn stages_are_validated() {
        let c = load(
            r#"
            [[stage]]
            name = "loader"
            pcr = 4
            file = "loader.efi"
            event = "EV_EFI_BOOT_SERVICES_APPLICATION"
            [[stage]]
            name = "cmdline"
            pcr = 8
            data = "ro quiet"
            [[stage]]
            name = "sep"
            separator = [0, 7]
            "#,
        )
        .unwrap();
        assert_eq!(c.stages.len(), 3);
        assert_eq!(
            c.stages[0].kind,
            StageKind::Measure {
                pcr: 4,
                event_type: EventType::EV_EFI_BOOT_SERVICES_APPLICATION,
                content: Content::File(PathBuf::from("/chains/loader.efi")),
            }
        );
        let planned = c.plan(&[HashAlg::Sha256]).unwrap_err();
        assert!(matches!(planned, ChainError::StageFile { .. }), "{planned}");
    }

    #[test]
    fn bad_stages_are_named() {
        for (text, want) in [
            ("[[stage]]\nname = \"a\"\npcr = 24\ndata = \"x\"", "PCR 24 is out of range"),
            ("[[stage]]\nname = \"a\"\npcr = 4", "exactly one of"),
            ("[[stage]]\nname = \"a\"\ndata = \"x\"", "needs `pcr`"),
            ("[[stage]]\nname = \"a\"\npcr = 4\ndata = \"x\"\nevent = \"EV_BOGUS\"", "unknown event type"),
            ("[[stage]]\nname = \"a\"\npcr = 4\ndata = \"x\"\n[[stage]]\nname = \"a\"\npcr = 4\ndata = \"y\"", "unique"),
            ("[[stage]]\nname = \"s\"\nseparator = []", "lists no PCRs"),
            ("[[stage]]\nname = \"a\"\npcr = 4\nfile = \"x\"\nevent = \"EV_EFI_ACTION\"", "use `data`"),
        ] {
            let err = load(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        assert!(matches!(load("").unwrap_err(), ChainError::Empty { .. }));
        let unknown = load("[[stage]]\nname = \"a\"\npcr = 4\ndata = \"x\"\ncolour = 1");
        assert!(matches!(unknown.unwrap_err(), ChainError::Syntax { .. }));
    }

    #[test]
    fn separators_expand_per_pcr() {
        let c = load("[[stage]]\nname = \"s\"\nseparator = [0, 1, 2]").unwrap();
        let ev = c.plan(&[HashAlg::Sha1, HashAlg::Sha256]).unwrap();
        assert_eq!(ev.iter().map(|e| e.pcr).collect::<Vec<_>>(), [0, 1, 2]);
        assert!(ev
            .iter()
            .all(|e| e.event_type == EventType::EV_SEPARATOR && e.digests.len() == 2));
    }

    #[test]
    fn image_load_file_stages_log_a_uefi_image_load_event() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("loader.efi"), b"MZ loader").unwrap();
        let text = "[[stage]]\nname = \"l\"\npcr = 4\nfile = \"loader.efi\"\nevent = \"EV_EFI_BOOT_SERVICES_APPLICATION\"";
        let c = Chain::from_toml(text, &dir.path().join("chain.toml")).unwrap();
        let ev = c.plan(&[HashAlg::Sha256]).unwrap().remove(0);
        assert_eq!(ev.digests[0].digest, HashAlg::Sha256.hash(b"MZ loader"));
        let log_event = attest::eventlog::Event {
            index: 1,
            offset: 0,
            pcr: 4,
            event_type: ev.event_type,
            digests: ev.digests,
            data: ev.data,
        };
        assert_eq!(
            log_event.decoded(),
            attest::eventlog::EventData::ImageLoad {
                location: 0,
                length: 9,
                link_time_address: 0,
                device_path: "File(\\loader.efi)".into(),
            }
        );
    }
}
