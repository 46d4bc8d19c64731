//! Decoding event data by event type into structured values: EFI variables,
//! image loads, GPT tables, action strings, separators, S-CRTM versions,
//! StartupLocality, H-CRTM, SP800-155 and firmware blobs.
//!
//! Decoding is for people and policy, never for replay: replay uses only the
//! digests. Data that does not decode as its type says is kept raw, with a
//! note saying why; decoding never fails and never panics.

use serde::Serialize;

use super::event_type::EventType;
use super::reader::Reader;

/// Event data decoded by type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventData {
    /// The Spec ID Event03 header.
    SpecId {
        /// Declared banks by name (or hex id when unknown).
        algorithms: Vec<String>,
    },
    /// EV_NO_ACTION "StartupLocality": PCR 0 starts at this locality.
    StartupLocality {
        /// The locality (0, 3 or 4 in practice).
        locality: u8,
    },
    /// EV_NO_ACTION SP800-155 platform reference-manifest pointer.
    Sp800155 {
        /// "SP800-155 Event" or "SP800-155 Event3".
        signature: String,
        /// Platform manufacturer's vendor id.
        vendor_id: u32,
        /// Reference manifest GUID.
        reference_manifest_guid: String,
        /// Platform manufacturer, model and version, firmware manufacturer.
        strings: Vec<String>,
    },
    /// Another EV_NO_ACTION event, named by its 16-byte signature.
    NoAction {
        /// The signature, printable characters only.
        signature: String,
    },
    /// EV_SEPARATOR: 0 normally, 0xFFFFFFFF after a firmware error.
    Separator {
        /// The separator value.
        value: u32,
    },
    /// A text event (EV_ACTION, EV_EFI_ACTION, EV_IPL strings, EV_POST_CODE strings).
    Text {
        /// The text, trailing NULs removed.
        text: String,
    },
    /// EV_S_CRTM_VERSION.
    ScrtmVersion {
        /// The version string, or a GUID.
        version: String,
    },
    /// EV_EFI_HCRTM_EVENT: PCR 0 starts at locality 4.
    Hcrtm {
        /// The event's text ("HCRTM").
        text: String,
    },
    /// UEFI_VARIABLE_DATA (EV_EFI_VARIABLE_*).
    EfiVariable {
        /// Vendor GUID.
        guid: String,
        /// Variable name.
        name: String,
        /// Length of the variable's data.
        data_len: usize,
        /// For Boot#### variables, the load option's description.
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// UEFI_IMAGE_LOAD_EVENT (EV_EFI_BOOT_SERVICES_*, EV_EFI_RUNTIME_SERVICES_DRIVER).
    ImageLoad {
        /// Where the image was loaded.
        location: u64,
        /// Its length in memory.
        length: u64,
        /// Its link-time address.
        link_time_address: u64,
        /// The device path, as text (file paths and partitions decoded).
        device_path: String,
    },
    /// UEFI_GPT_DATA (EV_EFI_GPT_EVENT).
    Gpt {
        /// Disk GUID from the GPT header.
        disk_guid: String,
        /// The partitions in the event.
        partitions: Vec<GptPartition>,
    },
    /// UEFI_PLATFORM_FIRMWARE_BLOB (and BLOB2, with its description).
    FirmwareBlob {
        /// Description (BLOB2 only).
        #[serde(skip_serializing_if = "Option::is_none")]
        description: Option<String>,
        /// Base address.
        base: u64,
        /// Length.
        length: u64,
    },
    /// Anything else, or data that did not decode as its type says.
    Raw {
        /// The bytes in hex.
        hex: String,
        /// Why the data was not decoded, when its type has a known layout.
        #[serde(skip_serializing_if = "Option::is_none")]
        note: Option<&'static str>,
    },
}

/// One GPT partition entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GptPartition {
    /// Partition type GUID.
    pub type_guid: String,
    /// Unique partition GUID.
    pub unique_guid: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA.
    pub last_lba: u64,
    /// Partition name.
    pub name: String,
}

/// Most GPT partitions decoded from one event.
const MAX_GPT_PARTITIONS: u64 = 256;

/// Decode `data` as `event_type` says; fall back to [`EventData::Raw`].
pub(crate) fn decode(event_type: EventType, data: &[u8]) -> EventData {
    let decoded = match event_type {
        EventType::EV_NO_ACTION => Some(no_action(data)),
        EventType::EV_SEPARATOR => separator(data),
        EventType::EV_S_CRTM_VERSION => Some(EventData::ScrtmVersion {
            version: scrtm_version(data),
        }),
        EventType::EV_EFI_HCRTM_EVENT => Some(EventData::Hcrtm {
            text: ascii_lossy(data),
        }),
        EventType::EV_EFI_GPT_EVENT | EventType::EV_EFI_GPT_EVENT2 => gpt(data),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB => firmware_blob(data),
        EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2 => firmware_blob2(data),
        t if t.is_efi_variable() => efi_variable(data),
        t if t.is_image_load() => image_load(data),
        _ => text(data).map(|text| EventData::Text { text }),
    };
    decoded.unwrap_or_else(|| EventData::Raw {
        hex: hex::encode(data),
        note: has_layout(event_type).then_some("data does not match the layout of its event type"),
    })
}

fn has_layout(t: EventType) -> bool {
    t.is_efi_variable()
        || t.is_image_load()
        || matches!(
            t,
            EventType::EV_SEPARATOR
                | EventType::EV_EFI_GPT_EVENT
                | EventType::EV_EFI_GPT_EVENT2
                | EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB
                | EventType::EV_EFI_PLATFORM_FIRMWARE_BLOB2
        )
}

fn no_action(data: &[u8]) -> EventData {
    if let Ok(spec) = super::spec_id::SpecId::parse(data, 0) {
        let algorithms = spec
            .algorithms
            .iter()
            .map(|a| match a.alg() {
                Some(alg) => alg.name().to_owned(),
                None => format!("0x{:04x}", a.alg_id),
            })
            .collect();
        return EventData::SpecId { algorithms };
    }
    if data.len() == 17 && data.starts_with(b"StartupLocality\0") {
        return EventData::StartupLocality { locality: data[16] };
    }
    if data.starts_with(b"SP800-155 Event") {
        if let Some(d) = sp800_155(data) {
            return d;
        }
    }
    EventData::NoAction {
        signature: ascii_lossy(&data[..data.len().min(16)]),
    }
}

/// TCG_Sp800_155_PlatformId_Event2/3: signature, vendor id, GUID, then
/// length-prefixed (u8) strings.
fn sp800_155(data: &[u8]) -> Option<EventData> {
    let mut r = Reader::new(data, 0);
    let signature = ascii_lossy(r.take(16, "signature").ok()?);
    let vendor_id = r.u32("vendor id").ok()?;
    let reference_manifest_guid = guid(&r.array::<16>("guid").ok()?);
    let mut strings = Vec::new();
    for _ in 0..4 {
        let n = r.u8("string size").ok()?;
        strings.push(ascii_lossy(r.take(usize::from(n), "string").ok()?));
    }
    Some(EventData::Sp800155 {
        signature,
        vendor_id,
        reference_manifest_guid,
        strings,
    })
}

fn separator(data: &[u8]) -> Option<EventData> {
    let bytes: [u8; 4] = data.try_into().ok()?;
    Some(EventData::Separator {
        value: u32::from_le_bytes(bytes),
    })
}

fn scrtm_version(data: &[u8]) -> String {
    if let Some(s) = utf16_text(data) {
        return s;
    }
    if let Some(s) = text(data) {
        return s;
    }
    match <[u8; 16]>::try_from(data) {
        Ok(g) => guid(&g),
        Err(_) => hex::encode(data),
    }
}

/// UEFI_VARIABLE_DATA: GUID, u64 name length (chars), u64 data length,
/// UTF-16 name, data.
fn efi_variable(data: &[u8]) -> Option<EventData> {
    let mut r = Reader::new(data, 0);
    let g = r.array::<16>("guid").ok()?;
    let name_chars = r.u64("name length").ok()?;
    let data_len = r.u64("data length").ok()?;
    let name_bytes = usize::try_from(name_chars).ok()?.checked_mul(2)?;
    let name = utf16_lossy(r.take(name_bytes, "name").ok()?);
    let var = r.take(usize::try_from(data_len).ok()?, "data").ok()?;
    if r.remaining() != 0 {
        return None;
    }
    let description = is_boot_option(&name)
        .then(|| load_option_description(var))
        .flatten();
    Some(EventData::EfiVariable {
        guid: guid(&g),
        name,
        data_len: var.len(),
        description,
    })
}

/// The variable data of a UEFI_VARIABLE_DATA, for digest checks.
pub(crate) fn efi_variable_data(data: &[u8]) -> Option<&[u8]> {
    let mut r = Reader::new(data, 0);
    r.take(16, "guid").ok()?;
    let name_chars = r.u64("name length").ok()?;
    let data_len = r.u64("data length").ok()?;
    r.take(usize::try_from(name_chars).ok()?.checked_mul(2)?, "name")
        .ok()?;
    r.take(usize::try_from(data_len).ok()?, "data").ok()
}

fn is_boot_option(name: &str) -> bool {
    name.len() == 8 && name.starts_with("Boot") && name[4..].chars().all(|c| c.is_ascii_hexdigit())
}

/// EFI_LOAD_OPTION: u32 attributes, u16 file path list length, NUL-terminated UTF-16 description.
fn load_option_description(var: &[u8]) -> Option<String> {
    let rest = var.get(6..)?;
    Some(utf16_lossy(rest))
}

/// UEFI_IMAGE_LOAD_EVENT: location, length, link-time address, device path length, device path.
fn image_load(data: &[u8]) -> Option<EventData> {
    let mut r = Reader::new(data, 0);
    let location = r.u64("location").ok()?;
    let length = r.u64("length").ok()?;
    let link_time_address = r.u64("link time address").ok()?;
    let dp_len = usize::try_from(r.u64("device path length").ok()?).ok()?;
    let dp = r.take(dp_len, "device path").ok()?;
    Some(EventData::ImageLoad {
        location,
        length,
        link_time_address,
        device_path: device_path(dp),
    })
}

/// A device path as text: file paths and hard-drive nodes decoded, others by type.
fn device_path(mut dp: &[u8]) -> String {
    let mut parts = Vec::new();
    while dp.len() >= 4 {
        let (ty, sub) = (dp[0], dp[1]);
        let len = usize::from(u16::from_le_bytes([dp[2], dp[3]]));
        if len < 4 || len > dp.len() {
            parts.push("<malformed>".to_owned());
            break;
        }
        let body = &dp[4..len];
        match (ty, sub) {
            (0x7f, _) => break,
            (0x04, 0x04) => parts.push(format!("File({})", utf16_lossy(body))),
            (0x04, 0x01) if body.len() >= 38 => {
                let n = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                let sig: [u8; 16] = body[20..36].try_into().unwrap_or([0; 16]);
                parts.push(format!("HD({n},{})", guid(&sig)));
            }
            (0x04, 0x06) if body.len() >= 16 => {
                let g: [u8; 16] = body[..16].try_into().unwrap_or([0; 16]);
                parts.push(format!("FvFile({})", guid(&g)));
            }
            _ => parts.push(format!("Node({ty:#04x},{sub:#04x})")),
        }
        dp = &dp[len..];
    }
    parts.join("/")
}

/// UEFI_GPT_DATA: 92-byte header, u64 partition count, partition entries.
fn gpt(data: &[u8]) -> Option<EventData> {
    let header = data.get(..92)?;
    if !header.starts_with(b"EFI PART") {
        return None;
    }
    let disk_guid = guid(&header[56..72].try_into().ok()?);
    let entry_size = usize::try_from(u32::from_le_bytes(header[84..88].try_into().ok()?)).ok()?;
    let mut r = Reader::new(data.get(92..)?, 92);
    let count = r.u64("partition count").ok()?;
    if entry_size < 128 || count > MAX_GPT_PARTITIONS {
        return None;
    }
    let mut partitions = Vec::new();
    for _ in 0..count {
        let e = r.take(entry_size, "partition entry").ok()?;
        partitions.push(GptPartition {
            type_guid: guid(&e[..16].try_into().ok()?),
            unique_guid: guid(&e[16..32].try_into().ok()?),
            first_lba: u64::from_le_bytes(e[32..40].try_into().ok()?),
            last_lba: u64::from_le_bytes(e[40..48].try_into().ok()?),
            name: utf16_lossy(&e[56..128]),
        });
    }
    Some(EventData::Gpt {
        disk_guid,
        partitions,
    })
}

fn firmware_blob(data: &[u8]) -> Option<EventData> {
    let mut r = Reader::new(data, 0);
    let base = r.u64("base").ok()?;
    let length = r.u64("length").ok()?;
    (r.remaining() == 0).then_some(EventData::FirmwareBlob {
        description: None,
        base,
        length,
    })
}

fn firmware_blob2(data: &[u8]) -> Option<EventData> {
    let mut r = Reader::new(data, 0);
    let n = r.u8("description size").ok()?;
    let description = ascii_lossy(r.take(usize::from(n), "description").ok()?);
    let base = r.u64("base").ok()?;
    let length = r.u64("length").ok()?;
    (r.remaining() == 0).then_some(EventData::FirmwareBlob {
        description: Some(description),
        base,
        length,
    })
}

/// A GUID in its registry form (first three fields little-endian).
pub(crate) fn guid(b: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{}-{}",
        u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        hex::encode(&b[8..10]),
        hex::encode(&b[10..16])
    )
}

/// UTF-8 text with no control characters besides tab and newline, trailing NULs dropped.
fn text(data: &[u8]) -> Option<String> {
    let trimmed = trim_nuls(data);
    let s = std::str::from_utf8(trimmed).ok()?;
    let printable = !s.is_empty() && s.chars().all(|c| !c.is_control() || c == '\n' || c == '\t');
    printable.then(|| s.to_owned())
}

/// UTF-16LE text (every other byte zero, printable), trailing NULs dropped.
fn utf16_text(data: &[u8]) -> Option<String> {
    if data.len() < 2 || !data.len().is_multiple_of(2) || data.chunks(2).any(|c| c[1] != 0) {
        return None;
    }
    let s = utf16_lossy(data);
    (!s.is_empty() && s.chars().all(|c| !c.is_control())).then_some(s)
}

/// UTF-16LE up to the first NUL, invalid units replaced.
fn utf16_lossy(data: &[u8]) -> String {
    let units: Vec<u16> = data
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// Printable ASCII, trailing NULs dropped, other bytes as '.'.
fn ascii_lossy(data: &[u8]) -> String {
    trim_nuls(data)
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                char::from(b)
            } else {
                '.'
            }
        })
        .collect()
}

fn trim_nuls(data: &[u8]) -> &[u8] {
    let end = data.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    &data[..end]
}

impl std::fmt::Display for EventData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventData::SpecId { algorithms } => {
                write!(f, "Spec ID Event03 [{}]", algorithms.join(", "))
            }
            EventData::StartupLocality { locality } => write!(f, "StartupLocality {locality}"),
            EventData::Sp800155 {
                signature,
                reference_manifest_guid,
                strings,
                ..
            } => {
                write!(
                    f,
                    "{signature} {reference_manifest_guid} {}",
                    strings.join(" / ")
                )
            }
            EventData::NoAction { signature } => write!(f, "no-action {signature:?}"),
            EventData::Separator { value } => write!(f, "separator {value:#010x}"),
            EventData::Text { text } => write!(f, "{text:?}"),
            EventData::ScrtmVersion { version } => write!(f, "S-CRTM version {version:?}"),
            EventData::Hcrtm { text } => write!(f, "H-CRTM {text:?}"),
            EventData::EfiVariable {
                guid,
                name,
                data_len,
                description,
            } => {
                write!(f, "{guid}:{name} ({data_len} bytes)")?;
                match description {
                    Some(d) => write!(f, " {d:?}"),
                    None => Ok(()),
                }
            }
            EventData::ImageLoad {
                length,
                device_path,
                ..
            } => {
                write!(f, "image {device_path} ({length} bytes)")
            }
            EventData::Gpt {
                disk_guid,
                partitions,
            } => {
                write!(f, "GPT disk {disk_guid}, {} partitions", partitions.len())
            }
            EventData::FirmwareBlob {
                description,
                base,
                length,
            } => {
                write!(f, "firmware blob {base:#x}+{length:#x}")?;
                match description {
                    Some(d) => write!(f, " {d:?}"),
                    None => Ok(()),
                }
            }
            EventData::Raw { hex, note } => {
                let shown = &hex[..hex.len().min(64)];
                let more = if hex.len() > 64 { "..." } else { "" };
                write!(f, "{} bytes {shown}{more}", hex.len() / 2)?;
                match note {
                    Some(n) => write!(f, " ({n})"),
                    None => Ok(()),
                }
            }
        }
    }
}
