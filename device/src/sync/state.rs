//! What the device remembers of each image between syncs (`CDIR/sync/IMAGE.json`),
//! and what a pull or a push reports.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sync::manifest::Layer;
use sync::reconcile::Conflict;

use super::{local, SyncError};

/// What one layer was at the last sync.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayerState {
    /// Its version.
    pub version: u64,
    /// Its digest.
    pub digest: String,
    /// The signed manifest.
    pub manifest: String,
}

/// `CDIR/sync/IMAGE.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SyncState {
    /// The manifest key, pinned at the first pull (PEM).
    pub manifest_key: Option<String>,
    /// By layer.
    pub layers: BTreeMap<Layer, LayerState>,
}

/// Where a device keeps its sync state for `image`.
pub fn state_path(cdir: &Path, image: &str) -> PathBuf {
    cdir.join("sync").join(format!("{image}.json"))
}

impl SyncState {
    /// Read the state (empty if none yet).
    pub fn load(path: &Path) -> Result<SyncState, SyncError> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| SyncError::Local(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SyncState::default()),
            Err(e) => Err(SyncError::Local(format!("{}: {e}", path.display()))),
        }
    }

    /// Replace the state file atomically.
    pub fn save(&self, path: &Path) -> Result<(), SyncError> {
        if let Some(dir) = path.parent() {
            persist::file::create_dir_all(dir).map_err(local)?;
        }
        let text = serde_json::to_vec_pretty(self).map_err(local)?;
        persist::write_atomic(path, &text).map_err(local)
    }
}

/// What a pull did (`--stats-json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PullStats {
    /// Bytes received from the gateway (bodies).
    pub bytes_received: u64,
    /// Bytes sent to the gateway (bodies).
    pub bytes_sent: u64,
    /// Chunks fetched.
    pub chunks_fetched: u64,
    /// Files added, changed or removed in the root.
    pub files_changed: u64,
    /// Wall time.
    pub seconds: f64,
    /// Layers applied (changed or restored).
    pub layers_applied: Vec<String>,
    /// Files rebuilt from a delta.
    pub delta_files: u64,
    /// User layers not pulled because they hold changes not pushed yet
    /// (a pull never drops a user's work: push first, which merges).
    pub layers_kept: Vec<String>,
}

/// What a push did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    /// Bytes received from the gateway.
    pub bytes_received: u64,
    /// Bytes sent to the gateway.
    pub bytes_sent: u64,
    /// Chunks uploaded.
    pub chunks_sent: u64,
    /// Layers checked in, with the version the gateway now has.
    pub layers: BTreeMap<String, u64>,
    /// Conflicts, by layer.
    pub conflicts: BTreeMap<String, Vec<Conflict>>,
    /// Refused changes to system layers, by layer.
    pub violations: BTreeMap<String, Vec<String>>,
    /// Per user layer, the paths whose setuid, setgid or sticky bits the
    /// gateway stripped.
    pub stripped: BTreeMap<String, Vec<String>>,
    /// User layers checked in but changed again before the gateway's new
    /// version could be applied: left as they are (the next push sends the
    /// newer changes).
    pub layers_kept: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}
