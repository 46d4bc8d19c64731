//! Event types of the TCG PC Client Platform Firmware Profile (section
//! 10.4.1) and their names.

use std::fmt;

use serde::{Serialize, Serializer};

/// An event's type field. Unknown values are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType(pub u32);

macro_rules! event_types {
    ($($name:ident = $value:expr,)*) => {
        impl EventType {
            $(
                #[doc = concat!("`", stringify!($name), "`")]
                pub const $name: EventType = EventType($value);
            )*

            /// The specification's name for this type, if it has one.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $($value => Some(stringify!($name)),)*
                    _ => None,
                }
            }

            /// The type with this specification name.
            pub fn from_name(name: &str) -> Option<EventType> {
                match name {
                    $(stringify!($name) => Some(EventType($value)),)*
                    _ => None,
                }
            }
        }
    };
}

event_types! {
    EV_PREBOOT_CERT = 0x0000_0000,
    EV_POST_CODE = 0x0000_0001,
    EV_UNUSED = 0x0000_0002,
    EV_NO_ACTION = 0x0000_0003,
    EV_SEPARATOR = 0x0000_0004,
    EV_ACTION = 0x0000_0005,
    EV_EVENT_TAG = 0x0000_0006,
    EV_S_CRTM_CONTENTS = 0x0000_0007,
    EV_S_CRTM_VERSION = 0x0000_0008,
    EV_CPU_MICROCODE = 0x0000_0009,
    EV_PLATFORM_CONFIG_FLAGS = 0x0000_000A,
    EV_TABLE_OF_DEVICES = 0x0000_000B,
    EV_COMPACT_HASH = 0x0000_000C,
    EV_IPL = 0x0000_000D,
    EV_IPL_PARTITION_DATA = 0x0000_000E,
    EV_NONHOST_CODE = 0x0000_000F,
    EV_NONHOST_CONFIG = 0x0000_0010,
    EV_NONHOST_INFO = 0x0000_0011,
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x0000_0012,
    EV_POST_CODE2 = 0x0000_0013,
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x8000_0001,
    EV_EFI_VARIABLE_BOOT = 0x8000_0002,
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x8000_0003,
    EV_EFI_BOOT_SERVICES_DRIVER = 0x8000_0004,
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x8000_0005,
    EV_EFI_GPT_EVENT = 0x8000_0006,
    EV_EFI_ACTION = 0x8000_0007,
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x8000_0008,
    EV_EFI_HANDOFF_TABLES = 0x8000_0009,
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000_000A,
    EV_EFI_HANDOFF_TABLES2 = 0x8000_000B,
    EV_EFI_VARIABLE_BOOT2 = 0x8000_000C,
    EV_EFI_GPT_EVENT2 = 0x8000_000D,
    EV_EFI_HCRTM_EVENT = 0x8000_0010,
    EV_EFI_VARIABLE_AUTHORITY = 0x8000_00E0,
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x8000_00E1,
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x8000_00E2,
}

impl EventType {
    /// True for the EFI variable event types, whose data is a UEFI_VARIABLE_DATA.
    pub fn is_efi_variable(self) -> bool {
        matches!(
            self,
            EventType::EV_EFI_VARIABLE_DRIVER_CONFIG
                | EventType::EV_EFI_VARIABLE_BOOT
                | EventType::EV_EFI_VARIABLE_BOOT2
                | EventType::EV_EFI_VARIABLE_AUTHORITY
        )
    }

    /// True for the image-load event types, whose data is a UEFI_IMAGE_LOAD_EVENT.
    pub fn is_image_load(self) -> bool {
        matches!(
            self,
            EventType::EV_EFI_BOOT_SERVICES_APPLICATION
                | EventType::EV_EFI_BOOT_SERVICES_DRIVER
                | EventType::EV_EFI_RUNTIME_SERVICES_DRIVER
        )
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "0x{:08x}", self.0),
        }
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::str::FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(t) = EventType::from_name(s) {
            return Ok(t);
        }
        let hex = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X"));
        hex.and_then(|h| u32::from_str_radix(h, 16).ok())
            .map(EventType)
            .ok_or_else(|| UnknownEventType(s.to_owned()))
    }
}

/// A string that is neither an event type name (`EV_IPL`) nor a hex number (`0x0000000d`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {0:?}: use a name such as EV_IPL or a hex number such as 0x0000000d")]
pub struct UnknownEventType(pub String);
