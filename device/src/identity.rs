//! The device's directory and the gateway it talks to. The directory
//! (`CDIR`) holds:
//!
//! | file | what |
//! |---|---|
//! | `device.json` | `{"device_id", "gateway"}`, written at enrollment |
//! | `ak.json` | the AK (`attest::tpm::AkFile`), written at enrollment |
//! | `device.crt` | the device certificate from the last attestation |
//! | `device.key` | its P-256 key, mode 0600 |
//! | `chunks/`, `sync/` | the sync client's store and state ([`crate::sync`]) |

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::client::{ClientError, GatewayClient};

/// The gateway and the CA it is pinned to, and this device's directory.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The gateway, e.g. `https://127.0.0.1:8443`.
    pub url: String,
    /// The gateway CA certificate (its data directory's `ca.crt`).
    pub ca: PathBuf,
    /// This device's directory.
    pub data: PathBuf,
}

/// Why the device's files or its gateway could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file of the device directory (or the CA) could not be read.
    #[error("reading {}{hint}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// What to do about it (empty, or starting with "; ").
        hint: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file does not hold what it should.
    #[error("{} is not {what}", .path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
    /// A file could not be written durably.
    #[error(transparent)]
    Write(#[from] persist::FileError),
    /// The client could not be made (bad URL, CA or certificate).
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// `device.json`: who this device is and which gateway enrolled it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFile {
    /// The device id.
    pub device_id: String,
    /// The gateway URL at enrollment.
    pub gateway: String,
}

/// The files of a device directory.
#[derive(Debug, Clone)]
pub struct DeviceDir(pub PathBuf);

impl DeviceDir {
    /// `device.json`.
    pub fn device_file(&self) -> PathBuf {
        self.0.join("device.json")
    }
    /// `ak.json`.
    pub fn ak_file(&self) -> PathBuf {
        self.0.join("ak.json")
    }
    /// `device.crt`.
    pub fn certificate(&self) -> PathBuf {
        self.0.join("device.crt")
    }
    /// `device.key`.
    pub fn key(&self) -> PathBuf {
        self.0.join("device.key")
    }

    /// Read `device.json`.
    pub fn read_device(&self) -> Result<DeviceFile, IdentityError> {
        read_json(
            &self.device_file(),
            "a device file (enroll first)",
            "; enroll first",
        )
    }
}

/// Read a JSON file of type `T`.
pub fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &'static str,
    hint: &'static str,
) -> Result<T, IdentityError> {
    let bytes = read(path, hint)?;
    serde_json::from_slice(&bytes).map_err(|source| IdentityError::Json {
        path: path.to_owned(),
        what,
        source,
    })
}

fn read(path: &Path, hint: &'static str) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        hint,
        source,
    })
}

fn read_text(path: &Path, hint: &'static str) -> Result<String, IdentityError> {
    std::fs::read_to_string(path).map_err(|source| IdentityError::Read {
        path: path.to_owned(),
        hint,
        source,
    })
}

impl GatewayConfig {
    /// The device directory.
    pub fn dir(&self) -> DeviceDir {
        DeviceDir(self.data.clone())
    }

    /// A client without a certificate (enrollment, attestation).
    pub fn anonymous_client(&self) -> Result<GatewayClient, IdentityError> {
        let ca = read_text(&self.ca, "")?;
        Ok(GatewayClient::new(&self.url, &ca, None)?)
    }

    /// A client presenting this device's certificate.
    pub fn device_client(&self) -> Result<GatewayClient, IdentityError> {
        const HINT: &str = " (attest first: satchel client attest)";
        let dir = self.dir();
        let crt = read_text(&dir.certificate(), HINT)?;
        let key = read_text(&dir.key(), HINT)?;
        let ca = read_text(&self.ca, "")?;
        Ok(GatewayClient::new(&self.url, &ca, Some((&crt, &key)))?)
    }
}
