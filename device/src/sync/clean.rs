//! Clean-up of this device's chunk store: only the chunks of the layer
//! versions its sync state holds (what `revert` and the next pull's deltas
//! need) are kept; the rest (older versions, an abandoned pull's chunks)
//! go. It takes the store exclusively: it waits for a pull or push that
//! has it open, and one that starts meanwhile waits for it
//! ([`sync::store::clean`]).

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use sync::manifest::Signed;
use sync::store::clean::{collect_packed, Exclusive, Packed};
use sync::ChunkId;

use super::local::pinned_key;
use super::state::SyncState;
use super::{local, SyncError};

/// Keep only the chunks of the layer versions held in `cdir/sync/*.json`,
/// waiting up to `wait` for the store's users. A state file that cannot be
/// read or verified stops the clean-up with nothing removed.
pub fn clean(cdir: &Path, wait: Duration, dry_run: bool) -> Result<Packed, SyncError> {
    let held = Exclusive::take(&cdir.join("chunks"), wait).map_err(local)?;
    // Read under the lock: no pull is half-way through its state.
    let wanted = wanted(cdir)?;
    collect_packed(&held, &wanted, dry_run).map_err(local)
}

fn wanted(cdir: &Path) -> Result<HashSet<ChunkId>, SyncError> {
    let dir = cdir.join("sync");
    let mut out = HashSet::new();
    let files = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(SyncError::Local(format!("{}: {e}", dir.display()))),
    };
    for f in files {
        let path = f.map_err(local)?.path();
        if path.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let image = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = SyncState::load(&path)?;
        if state.layers.is_empty() {
            continue;
        }
        let key = pinned_key(&state, &image)?;
        for l in state.layers.values() {
            let m = Signed::verify(&l.manifest, &key)
                .map_err(|e| SyncError::Local(format!("{}: {e}", path.display())))?;
            out.extend(m.manifest.chunk_ids());
        }
    }
    Ok(out)
}
