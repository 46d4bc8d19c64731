//! The device side of push-OS sync: pull an image's layers into a root
//! (one directory per layer), push the client's changes back.
//!
//! The device keeps, under its data directory:
//!
//! | path | what |
//! |---|---|
//! | `CDIR/chunks/` | its chunk store: every chunk it has verified |
//! | `CDIR/sync/IMAGE.json` | per layer, the version it last had in common with the gateway (`version`, `digest`, the signed `manifest`), and the pinned manifest key |
//!
//! A pull fetches only chunks the store lacks, in batches, each checked
//! against its id as it arrives and stored at once: after a cut or a
//! SIGKILL the next pull asks for none of them again. A layer is applied
//! only when all its chunks are there, by an atomic swap of its directory,
//! and the state file is replaced (write, sync, rename) after it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync::manifest::{Entry, Kind, Layer, Signed};
use sync::reconcile::Conflict;
use sync::{ChunkId, ChunkStore};

use crate::client::{GatewayClient, Meter};
use protocol::limits::MAX_FETCH;
use protocol::paths::{self, SyncAction};
use protocol::sync::{
    CheckIn, CheckedIn, DeltaFile, DeltasRequest, Ids, Missing, Offer, OfferRequest, OfferedLayer,
};

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// Talking to the gateway.
    #[error(transparent)]
    Client(#[from] crate::client::ClientError),
    /// The gateway refused.
    #[error("the gateway refused ({status}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its detail.
        detail: String,
    },
    /// The gateway sent something that does not check out.
    #[error("the gateway sent {0}")]
    Untrusted(String),
    /// The local state, store or tree.
    #[error("{0}")]
    Local(String),
}

fn local(e: impl std::fmt::Display) -> SyncError {
    SyncError::Local(e.to_string())
}

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
    /// User layers checked in but changed again before the gateway's new
    /// version could be applied: left as they are (the next push sends the
    /// newer changes).
    pub layers_kept: Vec<String>,
    /// Wall time.
    pub seconds: f64,
}

/// The gateway's refusal: its status and the problem body's detail.
fn refused(status: u16, body: &[u8]) -> SyncError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let problem = protocol::Problem::from_answer(status, &v);
    SyncError::Refused {
        status,
        detail: if problem.detail.is_empty() {
            "no detail".to_owned()
        } else {
            problem.detail
        },
    }
}

/// `POST` the typed `body` to `image`'s sync `action`; the typed answer.
async fn json_call<Q: Serialize, A: serde::de::DeserializeOwned>(
    c: &GatewayClient,
    image: &str,
    action: SyncAction,
    body: &Q,
    meter: &Meter,
) -> Result<A, SyncError> {
    let (status, bytes) = c
        .send(
            hyper::Method::POST,
            &paths::sync(image, action),
            "application/json",
            serde_json::to_vec(body).map_err(local)?,
            Some(meter),
        )
        .await?;
    if status != 200 {
        return Err(refused(status, &bytes));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        SyncError::Untrusted(format!(
            "an answer to {} that is not the protocol's: {e}",
            action.segment()
        ))
    })
}

/// The image's layers as the gateway offers them, checked against the
/// pinned manifest key (pinned on first use).
async fn offered(
    c: &GatewayClient,
    image: &str,
    state: &mut SyncState,
    meter: &Meter,
) -> Result<Vec<Signed>, SyncError> {
    // The versions held: the gateway sends each manifest as a delta against them.
    let have = state.layers.values().map(|l| l.digest.clone()).collect();
    let v: Offer = json_call(c, image, SyncAction::Offer, &OfferRequest { have }, meter).await?;
    let pem = v.manifest_key.as_str();
    match &state.manifest_key {
        Some(p) if p != pem => {
            return Err(SyncError::Untrusted(
                "a manifest key other than the one pinned at the first pull".to_owned(),
            ))
        }
        _ => state.manifest_key = Some(pem.to_owned()),
    }
    let key = ed25519_dalek::pkcs8::DecodePublicKey::from_public_key_pem(pem)
        .map_err(|e| SyncError::Untrusted(format!("a bad manifest key: {e}")))?;
    let mut out = Vec::new();
    for l in &v.layers {
        let text = offered_text(l, state)?;
        let s = Signed::verify(&text, &key)
            .map_err(|e| SyncError::Untrusted(format!("a layer manifest that fails: {e}")))?;
        if s.manifest.image != image || l.digest != s.digest {
            return Err(SyncError::Untrusted(format!(
                "a manifest for {}/{} under {image}",
                s.manifest.image, s.manifest.layer
            )));
        }
        out.push(s);
    }
    Ok(out)
}

/// One offered layer's signed manifest: as sent, or rebuilt from its delta
/// against the held version it names. Trusted no more than a manifest sent
/// whole: the caller verifies it.
fn offered_text(l: &OfferedLayer, state: &SyncState) -> Result<String, SyncError> {
    if let Some(text) = &l.manifest {
        return Ok(text.clone());
    }
    let untrusted = |what: &str| SyncError::Untrusted(format!("a manifest delta {what}"));
    let d = l
        .manifest_delta
        .as_ref()
        .ok_or_else(|| untrusted("missing (no manifest either)"))?;
    let base = match d.base.as_deref() {
        None => "",
        Some(digest) => state
            .layers
            .values()
            .find(|h| h.digest == digest)
            .map(|h| h.manifest.as_str())
            .ok_or_else(|| untrusted("against a version this device does not hold"))?,
    };
    let zstd = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &d.zstd)
        .map_err(|_| untrusted("that is not base64"))?;
    let text = sync::delta::apply(base.as_bytes(), &zstd, sync::manifest::MAX_MANIFEST)
        .map_err(|e| untrusted(&e.to_string()))?;
    String::from_utf8(text).map_err(|_| untrusted("that is not UTF-8"))
}

/// Requests for chunks in flight at once: the gateway reads the next batch
/// while this side checks and stores the last.
const FETCH_LANES: usize = 3;
const _: () = assert!(FETCH_LANES == 3, "fetch joins three lanes");
/// Plain bytes of fetched chunks a pull holds for the files being written
/// behind it (each chunk is then decompressed and hashed once, not twice).
const FRESH_BUDGET: usize = 64 << 20;
/// Delta requests in flight at once (each is a batch of the gateway's CPU).
const DELTA_LANES: usize = 2;
const _: () = assert!(DELTA_LANES == 2, "fetch_deltas joins two lanes");

/// The chunks of `entries` the store lacks, in the order the files need
/// them (each once), so that files can be written as their chunks land.
fn missing_in_order(entries: &[Entry], store: &ChunkStore) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    file_chunks(entries)
        .filter(|id| seen.insert(*id) && !store.has(*id))
        .collect()
}

/// Which fetch batches have landed (durably), shared between the fetch
/// lanes and the threads writing the tree, which wait for a file's last
/// batch before they take its content from the store.
struct Arrivals {
    /// The batch each missing chunk comes in.
    batch_of: HashMap<ChunkId, usize>,
    landed: Mutex<Landed>,
    changed: Condvar,
}

#[derive(Default)]
struct Landed {
    done: Vec<bool>,
    /// Batches `0..prefix` have all landed.
    prefix: usize,
    /// Why the fetch or the write stopped.
    failed: Option<String>,
}

impl Arrivals {
    fn new(missing: &[ChunkId]) -> Arrivals {
        let batch_of = missing
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, i / MAX_FETCH))
            .collect();
        let landed = Landed {
            done: vec![false; missing.len().div_ceil(MAX_FETCH)],
            ..Landed::default()
        };
        Arrivals {
            batch_of,
            landed: Mutex::new(landed),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Landed> {
        self.landed.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn landed(&self, batch: usize) {
        let mut l = self.lock();
        if let Some(d) = l.done.get_mut(batch) {
            *d = true;
        }
        while l.done.get(l.prefix) == Some(&true) {
            l.prefix += 1;
        }
        self.changed.notify_all();
    }

    fn fail(&self, why: String) {
        self.lock().failed.get_or_insert(why);
        self.changed.notify_all();
    }

    fn failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// Block until every chunk of `e` is in the store.
    fn wait(&self, e: &Entry) -> Result<(), sync::tree::TreeError> {
        let Kind::File { chunks, .. } = &e.kind else {
            return Ok(());
        };
        let Some(last) = chunks.iter().filter_map(|id| self.batch_of.get(id)).max() else {
            return Ok(());
        };
        let mut l = self.lock();
        loop {
            if let Some(why) = &l.failed {
                return Err(sync::tree::TreeError::Io {
                    path: PathBuf::from(&e.path),
                    source: std::io::Error::other(format!("its chunks did not arrive: {why}")),
                });
            }
            if l.prefix > *last {
                return Ok(());
            }
            l = self.changed.wait(l).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Fetch `missing` in batches, a few at once; each chunk is checked and
/// stored as it arrives, and each batch is made durable and reported to
/// `arrivals` as it completes. The number fetched.
async fn fetch(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    missing: &[ChunkId],
    arrivals: &Arrivals,
    meter: &Meter,
) -> Result<u64, SyncError> {
    let batches: Vec<&[ChunkId]> = missing.chunks(MAX_FETCH).collect();
    // Lane k takes batches k, k + LANES, ...; the lanes run side by side.
    let lane = |k: usize| {
        let batches = &batches;
        async move {
            let mut fetched = 0;
            for (i, batch) in batches.iter().enumerate().skip(k).step_by(FETCH_LANES) {
                if arrivals.failed() {
                    return Err(local("the layer could not be written"));
                }
                fetched += fetch_batch(c, image, store, batch, meter).await?;
                arrivals.landed(i);
            }
            Ok::<u64, SyncError>(fetched)
        }
    };
    let (a, b, d) = tokio::join!(lane(0), lane(1), lane(2));
    Ok(a? + b? + d?)
}

/// Fetch one batch of chunk ids; each is checked and stored as soon as its
/// frame is complete, so a cut loses at most the frames in flight.
async fn fetch_batch(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    batch: &[ChunkId],
    meter: &Meter,
) -> Result<u64, SyncError> {
    let body = serde_json::to_vec(&Ids {
        ids: batch.to_vec(),
    })
    .map_err(local)?;
    let wanted: BTreeSet<ChunkId> = batch.iter().copied().collect();
    let mut frames = sync::wire::FrameBuffer::default();
    let mut fetched = 0;
    let (status, refusal) = c
        .send_streaming(
            hyper::Method::POST,
            &paths::sync(image, SyncAction::Chunks),
            "application/json",
            body,
            Some(meter),
            &mut |data| {
                for (id, bytes) in frames
                    .push(data)
                    .map_err(|e| format!("the gateway sent {e}"))?
                {
                    if !wanted.contains(&id) {
                        return Err(format!(
                            "the gateway sent chunk {id}, which was not asked for"
                        ));
                    }
                    store
                        .put_compressed(id, &bytes)
                        .map_err(|e| format!("the gateway sent {e}"))?;
                    fetched += 1;
                }
                Ok(())
            },
        )
        .await?;
    if let Some(body) = refusal {
        return Err(refused(status, &body));
    }
    frames
        .finish()
        .map_err(|e| SyncError::Untrusted(e.to_string()))?;
    // Durable before anything records that the batch is here.
    store.sync().map_err(local)?;
    if let Some(id) = batch.iter().find(|id| !store.has(**id)) {
        return Err(SyncError::Untrusted(format!("no chunk {id}")));
    }
    Ok(fetched)
}

/// For files changed between `old` and `new` whose old chunks the store
/// holds, ask the gateway for a delta or the missing chunks, whichever it
/// finds smaller. Rebuilt files are re-chunked and must give exactly the
/// manifest's chunk ids. Returns (files rebuilt from deltas, chunks stored).
async fn fetch_deltas(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    old: &[Entry],
    new: &[Entry],
    meter: &Meter,
) -> Result<(u64, u64), SyncError> {
    let before: BTreeMap<&str, &Vec<ChunkId>> = old
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { chunks, .. } => Some((e.path.as_str(), chunks)),
            _ => None,
        })
        .collect();
    struct Job<'a> {
        from: &'a [ChunkId],
        to: &'a [ChunkId],
        missing: Vec<ChunkId>,
        size: u64,
    }
    let mut jobs: Vec<Job<'_>> = Vec::new();
    // Files with the same content (hard links, copies) need one delta: the
    // chunks it rebuilds serve them all.
    let mut wanted: std::collections::HashSet<&[ChunkId]> = std::collections::HashSet::new();
    for e in new {
        let Kind::File { chunks, size } = &e.kind else {
            continue;
        };
        let Some(from) = before.get(e.path.as_str()) else {
            continue;
        };
        let missing: Vec<ChunkId> = chunks
            .iter()
            .copied()
            .filter(|id| !store.has(*id))
            .collect();
        if missing.is_empty()
            || from.is_empty()
            || from.len() > protocol::limits::MAX_DELTA_CHUNKS
            || chunks.len() > protocol::limits::MAX_DELTA_CHUNKS
            || !from.iter().all(|id| store.has(*id))
            || !wanted.insert(chunks.as_slice())
        {
            continue;
        }
        jobs.push(Job {
            from,
            to: chunks,
            missing,
            size: *size,
        });
    }
    // Two requests at once: the gateway makes the deltas of one while this
    // side applies the other's.
    let batches: Vec<&[Job<'_>]> = jobs.chunks(protocol::limits::MAX_DELTA_FILES).collect();
    let lane = |k: usize| {
        let batches = &batches;
        async move {
            let (mut files, mut stored) = (0u64, 0u64);
            for batch in batches.iter().skip(k).step_by(DELTA_LANES) {
                let batch: &[Job<'_>] = batch;
                let asked = batch
                    .iter()
                    .map(|j| DeltaFile {
                        from: j.from.to_vec(),
                        to: j.to.to_vec(),
                        missing: j.missing.to_vec(),
                    })
                    .collect();
                let body = serde_json::to_vec(&DeltasRequest { files: asked }).map_err(local)?;
                let (status, bytes) = c
                    .send(
                        hyper::Method::POST,
                        &paths::sync(image, SyncAction::Deltas),
                        "application/json",
                        body,
                        Some(meter),
                    )
                    .await?;
                if status != 200 {
                    return Err(refused(status, &bytes));
                }
                let records = sync::wire::read_records(&bytes)
                    .map_err(|e| SyncError::Untrusted(e.to_string()))?;
                for r in records {
                    match r {
                        sync::wire::Record::Chunk {
                            file,
                            id,
                            compressed,
                        } => {
                            let wanted = batch
                                .get(file as usize)
                                .is_some_and(|j| j.missing.contains(&id));
                            if !wanted {
                                return Err(SyncError::Untrusted(format!(
                                    "chunk {id}, which was not asked for"
                                )));
                            }
                            store
                                .put_compressed(id, &compressed)
                                .map_err(|e| SyncError::Untrusted(e.to_string()))?;
                            stored += 1;
                        }
                        sync::wire::Record::Delta { file, delta } => {
                            let Some(Job { from, to, size, .. }) = batch.get(file as usize) else {
                                return Err(SyncError::Untrusted("a delta for no file".to_owned()));
                            };
                            let mut old_bytes = Vec::new();
                            for id in from.iter() {
                                old_bytes.extend(store.get(*id).map_err(local)?);
                            }
                            let max = usize::try_from(*size).unwrap_or(usize::MAX);
                            let new_bytes = sync::delta::apply(&old_bytes, &delta, max)
                                .map_err(|e| SyncError::Untrusted(e.to_string()))?;
                            // Re-chunk and check every id before storing any.
                            let mut pieces = Vec::new();
                            sync::chunk::chunk_slice(&new_bytes, |id, data| {
                                pieces.push((id, data.to_vec()));
                                Ok(())
                            })
                            .map_err(local)?;
                            let ids: Vec<ChunkId> = pieces.iter().map(|(id, _)| *id).collect();
                            if ids != *to || new_bytes.len() as u64 != *size {
                                return Err(SyncError::Untrusted(
                                    "a delta that does not rebuild the file the manifest names"
                                        .to_owned(),
                                ));
                            }
                            for (id, data) in pieces {
                                if store.put(id, &data).map_err(local)? {
                                    stored += 1;
                                }
                            }
                            files += 1;
                        }
                    }
                }
                store.sync().map_err(local)?;
            }
            Ok::<(u64, u64), SyncError>((files, stored))
        }
    };
    let (a, b) = tokio::join!(lane(0), lane(1));
    let (a, b) = (a?, b?);
    Ok((a.0 + b.0, a.1 + b.1))
}

fn files_changed(old: &[Entry], new: &[Entry]) -> u64 {
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
async fn pull_layers(
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

/// Check in the client's changes to `root` since the last common version
/// of each layer, then apply what the gateway made of them.
pub async fn push(
    c: &GatewayClient,
    cdir: &Path,
    image: &str,
    root: &Path,
    layers: LayerFilter<'_>,
    meter: &Meter,
) -> Result<PushReport, SyncError> {
    let store = ChunkStore::open_packed(cdir.join("chunks")).map_err(local)?;
    let mut report = PushReport::default();
    let mut changed_user_layers = Vec::new();
    for p in pending(cdir, image, root, layers, &store)? {
        let (layer, entries) = (&p.layer, p.entries);
        if !layer.is_system() {
            report.chunks_sent += upload(c, image, &store, &p.new_chunks, meter).await?;
        }
        let checkin = CheckIn {
            layer: *layer,
            base_digest: Some(p.base_digest),
            entries,
        };
        let v: CheckedIn = json_call(c, image, SyncAction::Checkin, &checkin, meter).await?;
        let entries = checkin.entries;
        report.layers.insert(layer.to_string(), v.version);
        if !v.conflicts.is_empty() {
            report.conflicts.insert(layer.to_string(), v.conflicts);
        }
        if !v.violations.is_empty() {
            report.violations.insert(layer.to_string(), v.violations);
        }
        if !layer.is_system() {
            changed_user_layers.push((*layer, entries));
        }
    }
    // Apply what the gateway made of the check-ins (conflict copies
    // included), so client and gateway share the new version.
    if !changed_user_layers.is_empty() {
        let only: Vec<Layer> = changed_user_layers.iter().map(|(l, _)| *l).collect();
        let pulled = pull_layers(
            c,
            cdir,
            image,
            root,
            Some(&only),
            meter,
            &changed_user_layers,
        )
        .await?;
        report.layers_kept = pulled.layers_kept;
    }
    report.bytes_received = meter.bytes_received();
    report.bytes_sent = meter.bytes_sent();
    report.seconds = (meter.seconds() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// One layer changed since the last common version.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The layer.
    pub layer: Layer,
    /// The last common version's digest.
    pub base_digest: String,
    /// The tree now.
    pub entries: Vec<Entry>,
    /// Chunks of the tree the base did not have (user layers only; a
    /// system layer's are never sent).
    pub new_chunks: Vec<ChunkId>,
}

fn file_chunks(entries: &[Entry]) -> impl Iterator<Item = ChunkId> + '_ {
    entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { chunks, .. } => Some(chunks.iter().copied()),
            _ => None,
        })
        .flatten()
}

/// The layers of `root` changed since the last common version. User
/// layers are scanned into `store` (their new chunks are to be sent);
/// system layers are only hashed.
pub fn pending(
    cdir: &Path,
    image: &str,
    root: &Path,
    layers: LayerFilter<'_>,
    store: &ChunkStore,
) -> Result<Vec<Pending>, SyncError> {
    let state = SyncState::load(&state_path(cdir, image))?;
    let key = pinned_key(&state, image)?;
    let mut out = Vec::new();
    for (layer, base) in &state.layers {
        if layers.is_some_and(|f| !f.contains(layer)) {
            continue;
        }
        let dir = root.join(layer.as_str());
        if !dir.exists() {
            continue;
        }
        let base_entries = Signed::verify(&base.manifest, &key)
            .map_err(local)?
            .manifest
            .entries;
        let (entries, _) = if layer.is_system() {
            sync::tree::scan_into(&dir, None, &mut |_| {})
        } else {
            sync::tree::scan(&dir, store, &mut |_| {})
        }
        .map_err(local)?;
        if entries == base_entries {
            continue;
        }
        let new_chunks = if layer.is_system() {
            Vec::new()
        } else {
            let old: BTreeSet<ChunkId> = file_chunks(&base_entries).collect();
            file_chunks(&entries)
                .filter(|id| !old.contains(id))
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect()
        };
        out.push(Pending {
            layer: *layer,
            base_digest: base.digest.clone(),
            entries,
            new_chunks,
        });
    }
    Ok(out)
}

/// Upload the chunks of `ids` the gateway lacks. The number sent.
async fn upload(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    ids: &[ChunkId],
    meter: &Meter,
) -> Result<u64, SyncError> {
    let mut sent = 0;
    for ask in ids.chunks(protocol::limits::MAX_ASK) {
        let ask = Ids { ids: ask.to_vec() };
        let Missing { missing } = json_call(c, image, SyncAction::Missing, &ask, meter).await?;
        let mut body = Vec::new();
        for id in missing {
            let bytes = store.get_compressed(id).map_err(local)?;
            sync::wire::write_frame(&mut body, id, &bytes);
            sent += 1;
            if body.len() > 4 << 20 {
                send_frames(c, image, std::mem::take(&mut body), meter).await?;
            }
        }
        if !body.is_empty() {
            send_frames(c, image, body, meter).await?;
        }
    }
    Ok(sent)
}

async fn send_frames(
    c: &GatewayClient,
    image: &str,
    body: Vec<u8>,
    meter: &Meter,
) -> Result<(), SyncError> {
    let (status, bytes) = c
        .send(
            hyper::Method::POST,
            &paths::sync(image, SyncAction::Upload),
            "application/octet-stream",
            body,
            Some(meter),
        )
        .await?;
    if status != 200 {
        return Err(refused(status, &bytes));
    }
    Ok(())
}

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

fn diff(base: &[Entry], now: &[Entry], version: u64) -> LayerStatus {
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
        let dir = root.join(layer.as_str());
        let now = if dir.exists() {
            sync::tree::scan_into(&dir, None, &mut |_| {})
                .map_err(local)?
                .0
        } else {
            Vec::new()
        };
        out.insert(*layer, diff(&base_entries, &now, base.version));
    }
    Ok(out)
}

fn pinned_key(state: &SyncState, image: &str) -> Result<ed25519_dalek::VerifyingKey, SyncError> {
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
    let m = Signed::verify(&base.manifest, &key)
        .map_err(local)?
        .manifest;
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
        let dir = root.join(layer.as_str());
        let now = if dir.exists() {
            sync::tree::scan_into(&dir, None, &mut |_| {})
                .map_err(local)?
                .0
        } else {
            Vec::new()
        };
        let digest = if now == pushed.manifest.entries {
            pushed.digest
        } else {
            let text = serde_json::to_vec(&now).map_err(local)?;
            format!("local-{}", hex::encode(sha2::Sha256::digest(&text)))
        };
        digests.push((*layer, digest));
    }
    Ok(protocol::stages::stages_toml(image, &digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An offered layer from the JSON of its manifest members.
    fn as_layer(v: &Value) -> OfferedLayer {
        let mut v = v.clone();
        v["layer"] = serde_json::json!("user-data");
        v["version"] = serde_json::json!(1);
        v["digest"] = serde_json::json!("d");
        serde_json::from_value(v).unwrap()
    }
    use base64::Engine as _;

    fn b64(d: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(d)
    }

    fn file(chunks: &[ChunkId]) -> Entry {
        Entry {
            path: "f".into(),
            mode: 0o644,
            kind: Kind::File {
                size: 0,
                chunks: chunks.to_vec(),
            },
        }
    }

    #[test]
    fn a_file_waits_for_its_last_batch_and_a_failure_releases_it() {
        let ids: Vec<ChunkId> = (0..MAX_FETCH * 2 + 1)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        let held = ChunkId::of(b"already in the store");
        let arrivals = Arc::new(Arrivals::new(&ids));
        // Nothing to wait for: chunks the store held, or not a file.
        arrivals.wait(&file(&[held])).unwrap();
        let needs_last = file(&[ids[0], ids[MAX_FETCH * 2]]);
        let waiter = {
            let arrivals = arrivals.clone();
            let e = needs_last.clone();
            std::thread::spawn(move || arrivals.wait(&e))
        };
        // Batches landing out of order: the file's batch (2) alone is not
        // enough while batch 1 is still on its way.
        arrivals.landed(2);
        arrivals.landed(0);
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!waiter.is_finished());
        arrivals.wait(&file(&[ids[1]])).unwrap();
        arrivals.landed(1);
        waiter.join().unwrap().unwrap();

        let arrivals = Arc::new(Arrivals::new(&ids));
        let waiter = {
            let arrivals = arrivals.clone();
            std::thread::spawn(move || arrivals.wait(&needs_last))
        };
        arrivals.fail("the gateway went away".into());
        let e = waiter.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("the gateway went away"), "{e}");
        assert!(arrivals.failed());
    }

    #[test]
    fn a_manifest_delta_rebuilds_only_against_a_held_version() {
        let old = r#"{"manifest": {"entries": ["a", "b"]}, "signature": "s1"}"#;
        let new = r#"{"manifest": {"entries": ["a", "b", "c"]}, "signature": "s2"}"#;
        let mut state = SyncState::default();
        state.layers.insert(
            Layer::BaseOs,
            LayerState {
                version: 1,
                digest: "d1".into(),
                manifest: old.into(),
            },
        );
        let delta = sync::delta::make(old.as_bytes(), new.as_bytes())
            .unwrap()
            .unwrap();
        let l = serde_json::json!({"manifest_delta": {"base": "d1", "zstd": b64(&delta)}});
        assert_eq!(offered_text(&as_layer(&l), &state).unwrap(), new);
        // Whole, against no base.
        let whole = sync::delta::make(b"", new.as_bytes()).unwrap().unwrap();
        let l = serde_json::json!({"manifest_delta": {"base": null, "zstd": b64(&whole)}});
        assert_eq!(offered_text(&as_layer(&l), &state).unwrap(), new);
        // Against a version not held, garbage, bad base64, or the wrong base:
        // refused, never a manifest made up of the wrong bytes.
        for l in [
            serde_json::json!({"manifest_delta": {"base": "d2", "zstd": b64(&delta)}}),
            serde_json::json!({"manifest_delta": {"base": "d1", "zstd": b64(b"garbage")}}),
            serde_json::json!({"manifest_delta": {"base": "d1", "zstd": "%%%"}}),
            serde_json::json!({"manifest_delta": {"base": null, "zstd": b64(&delta)}}),
            serde_json::json!({}),
        ] {
            match offered_text(&as_layer(&l), &state) {
                Err(SyncError::Untrusted(_)) => {}
                Ok(t) => assert_ne!(t, new, "{l}"),
                Err(e) => panic!("{l}: {e}"),
            }
        }
    }
}
