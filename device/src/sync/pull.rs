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

/// One image synced between a gateway and a root on this device.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The gateway, presenting this device's certificate.
    pub client: &'a GatewayClient,
    /// This device's directory (`chunks/`, `sync/`).
    pub cdir: &'a Path,
    /// The image.
    pub image: &'a str,
    /// The root holding one directory per layer.
    pub root: &'a Path,
    /// Counts (and may cap) the bytes both ways.
    pub meter: &'a Meter,
}

/// Bring the target's root to the gateway's newest versions of its image.
pub async fn pull(t: &Target<'_>, layers: LayerFilter<'_>) -> Result<PullStats, SyncError> {
    pull_layers(t, layers, &[]).await
}

/// [`pull`], applying the layers in `checked_in` even where they differ
/// from the version held, as long as the tree is still the one checked in:
/// those local changes are in the gateway's new version already. (A file
/// changed since the check-in keeps the layer as it is, as for any
/// unpushed work.)
pub(super) async fn pull_layers(
    t: &Target<'_>,
    layers: LayerFilter<'_>,
    checked_in: &[(Layer, Vec<Entry>)],
) -> Result<PullStats, SyncError> {
    let &Target {
        client: c,
        cdir,
        image,
        root,
        meter,
    } = t;
    // The files are written just behind the fetch, so the chunks it checks
    // are mostly still held when their files take them.
    let store = ChunkStore::open_packed(cdir.join("chunks"))
        .map_err(local)?
        .holding_fresh(FRESH_BUDGET);
    let path = state_path(cdir, image);
    let mut state = SyncState::load(&path)?;
    let offered = offered(c, image, &mut state, meter).await?;
    let puller = Puller {
        c,
        image,
        store: &store,
        meter,
    };
    let mut stats = PullStats::default();
    for s in offered {
        let layer = s.manifest.layer;
        if layers.is_some_and(|f| !f.contains(&layer)) {
            continue;
        }
        let dir = root.join(layer.as_str());
        let old = tree_now(&state, layer, &dir)?;
        match plan(&state, image, &s, &dir, &old, checked_in)? {
            Plan::UpToDate => continue,
            Plan::Keep => {
                stats.layers_kept.push(layer.to_string());
                continue;
            }
            Plan::Apply => {}
        }
        puller.apply(&state, &s, &dir, &old, &mut stats).await?;
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

/// What a pull does with one offered layer.
enum Plan {
    /// The tree already is the offered version.
    UpToDate,
    /// The tree holds changes not pushed yet: left as it is.
    Keep,
    /// Bring the tree to the offered version.
    Apply,
}

/// What is in the layer's directory now, if the device had a version of it
/// (a system layer may have been changed locally: the pull restores it).
fn tree_now(state: &SyncState, layer: Layer, dir: &Path) -> Result<Vec<Entry>, SyncError> {
    match state.layers.get(&layer) {
        Some(_) if dir.exists() => {
            Ok(
                sync::tree::scan_into(dir, None, sync::tree::Fidelity::of(layer), &mut |_| {})
                    .map_err(local)?
                    .0,
            )
        }
        _ => Ok(Vec::new()),
    }
}

/// Whether to apply the offered version `s` over the tree `old`.
fn plan(
    state: &SyncState,
    image: &str,
    s: &Signed,
    dir: &Path,
    old: &[Entry],
    checked_in: &[(Layer, Vec<Entry>)],
) -> Result<Plan, SyncError> {
    let layer = s.manifest.layer;
    let held = state.layers.get(&layer);
    if held.is_some_and(|l| l.digest == s.digest)
        && sync::manifest::same_tree(old, &s.manifest.entries)
        && dir.exists()
    {
        return Ok(Plan::UpToDate);
    }
    if let Some((_, sent)) = checked_in.iter().find(|(l, _)| *l == layer) {
        return Ok(if sent == old { Plan::Apply } else { Plan::Keep });
    }
    if layer.is_system() || !dir.exists() {
        return Ok(Plan::Apply);
    }
    let Some(prev) = held else {
        return Ok(Plan::Apply);
    };
    let key = pinned_key(state, image)?;
    let held = Signed::verify(&prev.manifest, &key).map_err(local)?;
    Ok(if held.manifest.entries == old {
        Plan::Apply
    } else {
        Plan::Keep
    })
}

/// The parts of a pull every layer uses.
struct Puller<'a> {
    c: &'a GatewayClient,
    image: &'a str,
    store: &'a ChunkStore,
    meter: &'a Meter,
}

impl Puller<'_> {
    /// Bring `dir` from `old` to the offered version `s`: changed files
    /// first as deltas against the version held, then whatever is still
    /// missing as chunks, while the tree is written behind them.
    async fn apply(
        &self,
        state: &SyncState,
        s: &Signed,
        dir: &Path,
        old: &[Entry],
        stats: &mut PullStats,
    ) -> Result<(), SyncError> {
        if let Some(prev) = state.layers.get(&s.manifest.layer) {
            let key = pinned_key(state, self.image)?;
            if let Ok(prev) = Signed::verify(&prev.manifest, &key) {
                match fetch_deltas(
                    self.c,
                    self.image,
                    self.store,
                    &prev.manifest.entries,
                    &s.manifest.entries,
                    self.meter,
                )
                .await
                {
                    Ok((files, chunks)) => {
                        stats.delta_files += files;
                        stats.chunks_fetched += chunks;
                    }
                    // A gateway that will not make these deltas (a request
                    // over its bounds): the files come as chunks below.
                    Err(SyncError::Refused {
                        status: 400,
                        detail,
                    }) => {
                        tracing::warn!(%detail, "the gateway refused deltas; fetching whole chunks");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        stats.chunks_fetched += self.write_while_fetching(s, dir, old).await?;
        stats.files_changed += files_changed(old, &s.manifest.entries);
        stats.layers_applied.push(s.manifest.layer.to_string());
        Ok(())
    }

    /// Write the tree while its chunks arrive: each file as soon as its
    /// last chunk has landed; what is unchanged in the tree now is linked,
    /// not written again. The chunks fetched.
    async fn write_while_fetching(
        &self,
        s: &Signed,
        dir: &Path,
        old: &[Entry],
    ) -> Result<u64, SyncError> {
        let started = std::time::Instant::now();
        let missing = missing_in_order(&s.manifest.entries, self.store);
        let arrivals = Arc::new(Arrivals::new(&missing));
        let write = {
            let mut entries = s.manifest.entries.clone();
            // A user layer never brings setuid, setgid or sticky bits,
            // whatever its manifest says.
            s.manifest.layer.strip_special_bits(&mut entries);
            let (store, dir, old) = (self.store.clone(), dir.to_owned(), old.to_vec());
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
        let fetched = fetch(
            self.c, self.image, self.store, &missing, &arrivals, self.meter,
        )
        .await;
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
        tracing::debug!(
            layer = %s.manifest.layer,
            fetched,
            fetch_ms,
            total_ms = started.elapsed().as_millis(),
            "layer fetched and written"
        );
        Ok(fetched)
    }
}
