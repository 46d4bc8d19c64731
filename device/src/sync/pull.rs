//! Pulling: bring a root to the gateway's newest layer versions, layer by
//! layer, leaving user layers with unpushed changes as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sync::manifest::{Entry, Kind, Layer, Signed};
use sync::ChunkStore;

use crate::client::{GatewayClient, Meter};

use super::fetch::{fetch, fetch_deltas, missing_in_order, Arrivals, FRESH_BUDGET};
use super::local::pinned_key;
use super::offer::offered;
use super::state::{state_path, LayerState, PullStats, SyncState};
use super::{local, SyncError};

pub(super) fn files_changed(old: &[Entry], new: &[Entry]) -> u64 {
    let index = |v: &[Entry]| -> BTreeMap<String, Entry> {
        v.iter()
            .filter(|e| !matches!(e.kind, Kind::Dir))
            .map(|e| (e.path.clone(), e.clone()))
            .collect()
    };
    let (a, b) = (index(old), index(new));
    let paths: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    paths
        .into_iter()
        .filter(|p| match (a.get(*p), b.get(*p)) {
            (Some(x), Some(y)) => !x.same(y),
            _ => true,
        })
        .count() as u64
}

/// Which layers to take (`None`: all the gateway offers).
pub type LayerFilter<'a> = Option<&'a [Layer]>;

/// Bring `root` to the gateway's newest versions of `image`.
pub async fn pull(
    c: &GatewayClient,
    cdir: &Path,
    image: &str,
    root: &Path,
    layers: LayerFilter<'_>,
    meter: &Meter,
) -> Result<PullStats, SyncError> {
    pull_layers(c, cdir, image, root, layers, meter, &[]).await
}

/// [`pull`], applying the layers in `checked_in` even where they differ
/// from the version held, as long as the tree is still the one checked in:
/// those local changes are in the gateway's new version already. (A file
/// changed since the check-in keeps the layer as it is, as for any
/// unpushed work.)
pub(super) async fn pull_layers(
    c: &GatewayClient,
    cdir: &Path,
    image: &str,
    root: &Path,
    layers: LayerFilter<'_>,
    meter: &Meter,
    checked_in: &[(Layer, Vec<Entry>)],
) -> Result<PullStats, SyncError> {
    // The files are written just behind the fetch, so the chunks it checks
    // are mostly still held when their files take them.
    let store = ChunkStore::open_packed(cdir.join("chunks"))
        .map_err(local)?
        .holding_fresh(FRESH_BUDGET);
    let path = state_path(cdir, image);
    let mut state = SyncState::load(&path)?;
    let offered = offered(c, image, &mut state, meter).await?;
    let mut stats = PullStats::default();
    for s in offered {
        let layer = s.manifest.layer;
        if layers.is_some_and(|f| !f.contains(&layer)) {
            continue;
        }
        let dir = root.join(layer.as_str());
        let old: Vec<Entry> = match state.layers.get(&layer) {
            Some(_) if dir.exists() => {
                // What is there now (a system layer may have been changed
                // locally: the pull restores it).
                sync::tree::scan_into(&dir, None, &mut |_| {})
                    .map_err(local)?
                    .0
            }
            _ => Vec::new(),
        };
        let unchanged = state
            .layers
            .get(&layer)
            .is_some_and(|l| l.digest == s.digest)
            && old == s.manifest.entries
            && dir.exists();
        if unchanged {
            continue;
        }
        let sent = checked_in.iter().find(|(l, _)| *l == layer).map(|(_, e)| e);
        if let Some(sent) = sent {
            if *sent != old {
                stats.layers_kept.push(layer.to_string());
                continue;
            }
        } else if !layer.is_system() && dir.exists() {
            if let Some(prev) = state.layers.get(&layer) {
                let key = pinned_key(&state, image)?;
                let held = Signed::verify(&prev.manifest, &key).map_err(local)?;
                if held.manifest.entries != old {
                    stats.layers_kept.push(layer.to_string());
                    continue;
                }
            }
        }
        // Changed files first as deltas against the version we have, then
        // whatever is still missing as chunks.
        if let Some(prev) = state.layers.get(&layer) {
            let key = pinned_key(&state, image)?;
            if let Ok(prev) = Signed::verify(&prev.manifest, &key) {
                let (files, chunks) = fetch_deltas(
                    c,
                    image,
                    &store,
                    &prev.manifest.entries,
                    &s.manifest.entries,
                    meter,
                )
                .await?;
                stats.delta_files += files;
                stats.chunks_fetched += chunks;
            }
        }
        // The tree is written while its chunks arrive: each file as soon
        // as its last chunk has landed. What is unchanged in the tree now
        // is linked, not written again.
        let started = std::time::Instant::now();
        let missing = missing_in_order(&s.manifest.entries, &store);
        let arrivals = Arc::new(Arrivals::new(&missing));
        let write = {
            let (entries, store, dir, old) = (
                s.manifest.entries.clone(),
                store.clone(),
                dir.clone(),
                old.clone(),
            );
            let arrivals = arrivals.clone();
            tokio::task::spawn_blocking(move || {
                let written =
                    sync::tree::materialize_arriving(&entries, &store, &dir, &old, &|e| {
                        arrivals.wait(e)
                    });
                if let Err(e) = &written {
                    arrivals.fail(e.to_string());
                }
                written
            })
        };
        let fetched = fetch(c, image, &store, &missing, &arrivals, meter).await;
        if let Err(e) = &fetched {
            arrivals.fail(e.to_string());
        }
        let fetch_ms = started.elapsed().as_millis();
        let written = write
            .await
            .map_err(|e| local(format!("the layer writer stopped: {e}")))?;
        // A fetch error explains a write that stopped for want of chunks.
        let fetched = fetched?;
        written.map_err(local)?;
        stats.chunks_fetched += fetched;
        tracing::debug!(
            %layer,
            fetched,
            fetch_ms,
            total_ms = started.elapsed().as_millis(),
            "layer fetched and written"
        );
        stats.files_changed += files_changed(&old, &s.manifest.entries);
        stats.layers_applied.push(layer.to_string());
        state.layers.insert(
            layer,
            LayerState {
                version: s.manifest.version,
                digest: s.digest.clone(),
                manifest: s.text.clone(),
            },
        );
        state.save(&path)?;
    }
    state.save(&path)?;
    stats.bytes_received = meter.bytes_received();
    stats.bytes_sent = meter.bytes_sent();
    stats.seconds = (meter.seconds() * 1000.0).round() / 1000.0;
    Ok(stats)
}
