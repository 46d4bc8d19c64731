//! What needs no gateway: a layer's local changes, reverting them, and the
//! boot stages of the system layers held.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sync::manifest::{Entry, Layer, Signed};
use sync::ChunkStore;

use super::state::{state_path, SyncState};
use super::{local, SyncError};

/// One layer's local changes against the last common version.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LayerStatus {
    /// The last common version.
    pub version: u64,
    /// Paths added locally.
    pub added: Vec<String>,
    /// Paths whose content, type or mode changed.
    pub changed: Vec<String>,
    /// Paths removed locally.
    pub removed: Vec<String>,
}

impl LayerStatus {
    /// Whether nothing changed.
    pub fn clean(&self) -> bool {
        self.added.is_empty() && self.changed.is_empty() && self.removed.is_empty()
    }
}

pub(super) fn diff(base: &[Entry], now: &[Entry], version: u64) -> LayerStatus {
    let index = |v: &[Entry]| -> BTreeMap<String, Entry> {
        v.iter().map(|e| (e.path.clone(), e.clone())).collect()
    };
    let (b, n) = (index(base), index(now));
    let mut s = LayerStatus {
        version,
        ..LayerStatus::default()
    };
    for (p, e) in &n {
        match b.get(p) {
            None => s.added.push(p.clone()),
            Some(old) if !old.same(e) => s.changed.push(p.clone()),
            Some(_) => {}
        }
    }
    s.removed = b.keys().filter(|p| !n.contains_key(*p)).cloned().collect();
    s
}

/// What changed in `root` since the last common version, per layer (no
/// network).
pub fn status(
    cdir: &Path,
    image: &str,
    root: &Path,
) -> Result<BTreeMap<Layer, LayerStatus>, SyncError> {
    let state = SyncState::load(&state_path(cdir, image))?;
    let key = pinned_key(&state, image)?;
    let mut out = BTreeMap::new();
    for (layer, base) in &state.layers {
        let base_entries = Signed::verify(&base.manifest, &key)
            .map_err(local)?
            .manifest
            .entries;
        let now = tree_of(root, *layer)?;
        out.insert(*layer, diff(&base_entries, &now, base.version));
    }
    Ok(out)
}

pub(super) fn pinned_key(
    state: &SyncState,
    image: &str,
) -> Result<ed25519_dalek::VerifyingKey, SyncError> {
    let pem = state
        .manifest_key
        .as_deref()
        .ok_or_else(|| SyncError::Local(format!("no sync state for {image}: pull first")))?;
    ed25519_dalek::pkcs8::DecodePublicKey::from_public_key_pem(pem).map_err(local)
}

/// Put `layer` back to the last common version, from the local chunk
/// store (no network): local changes to it are dropped.
pub fn revert(
    cdir: &Path,
    image: &str,
    root: &Path,
    layer: Layer,
) -> Result<LayerStatus, SyncError> {
    let before = status(cdir, image, root)?.remove(&layer).ok_or_else(|| {
        SyncError::Local(format!("{image} has no {layer} layer here: pull first"))
    })?;
    let state = SyncState::load(&state_path(cdir, image))?;
    let key = pinned_key(&state, image)?;
    let base = state
        .layers
        .get(&layer)
        .ok_or_else(|| SyncError::Local(format!("{image} has no {layer} layer here")))?;
    let mut m = Signed::verify(&base.manifest, &key)
        .map_err(local)?
        .manifest;
    // A user layer never brings setuid, setgid or sticky bits back.
    layer.strip_special_bits(&mut m.entries);
    let store = ChunkStore::open_packed(cdir.join("chunks")).map_err(local)?;
    if let Some(id) = m.chunk_ids().into_iter().find(|id| !store.has(*id)) {
        return Err(SyncError::Local(format!(
            "chunk {id} of {layer} is no longer in {}: pull instead",
            store.root().display()
        )));
    }
    sync::tree::materialize(&m.entries, &store, &root.join(layer.as_str())).map_err(local)?;
    Ok(before)
}

/// The boot stages measuring the system layers `root` holds now: each
/// layer's pushed digest if its tree still equals that version, else a
/// digest of what is there (so the quote, and the gateway's verdict, name
/// the layer that differs). No network.
pub fn stages(cdir: &Path, image: &str, root: &Path) -> Result<String, SyncError> {
    use sha2::Digest as _;
    let state = SyncState::load(&state_path(cdir, image))?;
    let key = pinned_key(&state, image)?;
    let mut digests = Vec::new();
    for (layer, base) in state.layers.iter().filter(|(l, _)| l.is_system()) {
        let pushed = Signed::verify(&base.manifest, &key).map_err(local)?;
        let now = tree_of(root, *layer)?;
        let digest = if sync::manifest::same_tree(&now, &pushed.manifest.entries) {
            pushed.digest
        } else {
            let text = serde_json::to_vec(&now).map_err(local)?;
            format!("local-{}", hex::encode(sha2::Sha256::digest(&text)))
        };
        digests.push((*layer, digest));
    }
    Ok(protocol::stages::stages_toml(image, &digests))
}

/// The tree of `layer` under `root` as it is now (empty if absent).
pub(super) fn tree_of(root: &Path, layer: Layer) -> Result<Vec<Entry>, SyncError> {
    let dir = root.join(layer.as_str());
    if !dir.exists() {
        return Ok(Vec::new());
    }
    Ok(
        sync::tree::scan_into(&dir, None, sync::tree::Fidelity::of(layer), &mut |_| {})
            .map_err(local)?
            .0,
    )
}
