//! Fetching a layer's missing chunks (three requests in flight, each chunk
//! checked against its id and stored at once) and file deltas (two requests
//! in flight, each rebuilt file re-chunked and checked before any chunk is
//! stored), while the layer's files are written behind them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use sync::manifest::{Entry, Kind};
use sync::{ChunkId, ChunkStore};

use crate::client::{ClientError, GatewayClient, Meter};
use protocol::limits::MAX_FETCH;
use protocol::paths::{self, SyncAction};
use protocol::sync::{DeltaFile, DeltasRequest, Ids};

use super::offer::refused;
use super::push::file_chunks;
use super::{local, SyncError};

/// Requests for chunks in flight at once: the gateway reads the next batch
/// while this side checks and stores the last.
pub(super) const FETCH_LANES: usize = 3;
const _: () = assert!(FETCH_LANES == 3, "fetch joins three lanes");
/// Plain bytes of fetched chunks a pull holds for the files being written
/// behind it (each chunk is then decompressed and hashed once, not twice).
pub(super) const FRESH_BUDGET: usize = 64 << 20;
/// Delta requests in flight at once (each is a batch of the gateway's CPU).
pub(super) const DELTA_LANES: usize = 2;
const _: () = assert!(DELTA_LANES == 2, "fetch_deltas joins two lanes");

/// The chunks of `entries` the store lacks, in the order the files need
/// them (each once), so that files can be written as their chunks land.
pub(super) fn missing_in_order(entries: &[Entry], store: &ChunkStore) -> Vec<ChunkId> {
    let mut seen = HashSet::new();
    file_chunks(entries)
        .filter(|id| seen.insert(*id) && !store.has(*id))
        .collect()
}

/// Which fetch batches have landed (durably), shared between the fetch
/// lanes and the threads writing the tree, which wait for a file's last
/// batch before they take its content from the store.
pub(super) struct Arrivals {
    /// The batch each missing chunk comes in.
    batch_of: HashMap<ChunkId, usize>,
    landed: Mutex<Landed>,
    changed: Condvar,
}

#[derive(Default)]
pub(super) struct Landed {
    done: Vec<bool>,
    /// Batches `0..prefix` have all landed.
    prefix: usize,
    /// Why the fetch or the write stopped.
    failed: Option<String>,
}

impl Arrivals {
    pub(super) fn new(missing: &[ChunkId]) -> Arrivals {
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

    pub(super) fn fail(&self, why: String) {
        self.lock().failed.get_or_insert(why);
        self.changed.notify_all();
    }

    fn failed(&self) -> bool {
        self.lock().failed.is_some()
    }

    /// Block until every chunk of `e` is in the store.
    pub(super) fn wait(&self, e: &Entry) -> Result<(), sync::tree::TreeError> {
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
pub(super) async fn fetch(
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
                fetched += fetch_batch_again(c, image, store, batch, meter).await?;
                arrivals.landed(i);
            }
            Ok::<u64, SyncError>(fetched)
        }
    };
    let (a, b, d) = tokio::join!(lane(0), lane(1), lane(2));
    Ok(a? + b? + d?)
}

/// Times a batch is asked for again after the connection failed (the next
/// try goes to another gateway when the client has several).
pub(super) const BATCH_RETRIES: usize = 3;

/// [`fetch_batch`], asked again for what is still missing when the
/// connection failed: a gateway that stops mid-pull costs only the frames
/// in flight, and the pull goes on at another.
async fn fetch_batch_again(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    batch: &[ChunkId],
    meter: &Meter,
) -> Result<u64, SyncError> {
    let mut fetched = 0;
    let mut tries = 0;
    loop {
        let missing: Vec<ChunkId> = batch.iter().copied().filter(|id| !store.has(*id)).collect();
        if missing.is_empty() {
            return Ok(fetched);
        }
        match fetch_batch(c, image, store, &missing, meter).await {
            Ok(n) => return Ok(fetched + n),
            Err(SyncError::Client(ClientError::Content { problem, .. })) => {
                // What a gateway sent did not check out: an attack or a
                // broken store, never asked for again as if the line dropped.
                return Err(SyncError::Untrusted(problem));
            }
            Err(SyncError::Client(e)) if tries < BATCH_RETRIES => {
                tries += 1;
                tracing::warn!(error = %e, try_ = tries, "fetching chunks failed; asking again");
                // What arrived before the cut: held now, missing before.
                let held_now = batch.iter().filter(|id| store.has(**id)).count();
                let held_before = batch.len().saturating_sub(missing.len());
                fetched += held_now.saturating_sub(held_before) as u64;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Fetch one batch of chunk ids; each is checked and stored as soon as its
/// frame is complete, so a cut loses at most the frames in flight.
pub(super) async fn fetch_batch(
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
    // This side's own failure (a full disk), told apart from content that
    // does not check out.
    let mut own: Option<sync::store::StoreError> = None;
    let sent = c
        .send_streaming(
            hyper::Method::POST,
            &paths::sync(image, SyncAction::Chunks),
            "application/json",
            body,
            Some(meter),
            &mut |data| {
                for (id, bytes) in frames.push(data).map_err(|e| e.to_string())? {
                    if !wanted.contains(&id) {
                        return Err(format!("chunk {id}, which was not asked for"));
                    }
                    match store.put_compressed(id, &bytes) {
                        Ok(_) => fetched += 1,
                        Err(e @ sync::store::StoreError::Corrupt { .. }) => {
                            return Err(e.to_string())
                        }
                        Err(e) => {
                            let told = e.to_string();
                            own = Some(e);
                            return Err(told);
                        }
                    }
                }
                Ok(())
            },
        )
        .await;
    if let Some(e) = own {
        return Err(local(e));
    }
    let (status, refusal) = sent?;
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

/// Fetch the changed files of a layer as deltas against the version held
/// (`old`), two requests in flight: the gateway makes the deltas of one
/// while this side applies the other's. (files rebuilt, chunks stored).
pub(super) async fn fetch_deltas(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    old: &[Entry],
    new: &[Entry],
    meter: &Meter,
) -> Result<(u64, u64), SyncError> {
    let jobs = delta_jobs(store, old, new);
    let batches = delta_batches(&jobs);
    let lane = |k: usize| {
        let batches = &batches;
        async move {
            let mut done = (0u64, 0u64);
            for batch in batches.iter().skip(k).step_by(DELTA_LANES) {
                let (files, stored) = delta_batch(c, image, store, batch, meter).await?;
                done = (done.0 + files, done.1 + stored);
            }
            Ok::<(u64, u64), SyncError>(done)
        }
    };
    let (a, b) = tokio::join!(lane(0), lane(1));
    let (a, b) = (a?, b?);
    Ok((a.0 + b.0, a.1 + b.1))
}

/// The jobs in requests within the protocol's bounds: at most
/// `MAX_DELTA_FILES` files and `MAX_DELTA_TOTAL` chunk ids each (a job
/// alone is within them: [`delta_jobs`] leaves out larger files).
fn delta_batches<'j, 'a>(jobs: &'j [Job<'a>]) -> Vec<&'j [Job<'a>]> {
    use protocol::limits::{MAX_DELTA_FILES, MAX_DELTA_TOTAL};
    let mut batches = Vec::new();
    let (mut start, mut ids) = (0, 0);
    for (i, j) in jobs.iter().enumerate() {
        let n = j.from.len() + j.to.len();
        if i > start && (i - start == MAX_DELTA_FILES || ids + n > MAX_DELTA_TOTAL) {
            batches.push(&jobs[start..i]);
            (start, ids) = (i, 0);
        }
        ids += n;
    }
    if start < jobs.len() {
        batches.push(&jobs[start..]);
    }
    batches
}

/// One file to fetch as a delta: the chunks held and wanted, those missing.
struct Job<'a> {
    from: &'a [ChunkId],
    to: &'a [ChunkId],
    missing: Vec<ChunkId>,
    size: u64,
}

/// The files of `new` worth a delta: changed, with some chunks missing, the
/// old version whole in the store, within the size limits, and each
/// content once (hard links and copies are rebuilt by one delta).
fn delta_jobs<'a>(store: &ChunkStore, old: &'a [Entry], new: &'a [Entry]) -> Vec<Job<'a>> {
    let before: BTreeMap<&str, &Vec<ChunkId>> = old
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File { chunks, .. } => Some((e.path.as_str(), chunks)),
            _ => None,
        })
        .collect();
    let too_big = |ids: &[ChunkId]| ids.len() > protocol::limits::MAX_DELTA_CHUNKS;
    let mut wanted: HashSet<&[ChunkId]> = HashSet::new();
    let mut jobs = Vec::new();
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
            || too_big(from)
            || too_big(chunks)
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
    jobs
}

/// Ask for one batch of deltas and apply the answer; the store is synced
/// after. (files rebuilt, chunks stored).
async fn delta_batch(
    c: &GatewayClient,
    image: &str,
    store: &ChunkStore,
    batch: &[Job<'_>],
    meter: &Meter,
) -> Result<(u64, u64), SyncError> {
    let asked = batch
        .iter()
        .map(|j| DeltaFile {
            from: j.from.to_vec(),
            to: j.to.to_vec(),
            missing: j.missing.clone(),
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
    let records =
        sync::wire::read_records(&bytes).map_err(|e| SyncError::Untrusted(e.to_string()))?;
    let (mut files, mut stored) = (0u64, 0u64);
    for r in records {
        match r {
            sync::wire::Record::Chunk {
                file,
                id,
                compressed,
            } => stored += take_chunk(store, batch, file, id, &compressed)?,
            sync::wire::Record::Delta { file, delta } => {
                let job = batch
                    .get(file as usize)
                    .ok_or_else(|| SyncError::Untrusted("a delta for no file".to_owned()))?;
                stored += apply_delta(store, job, &delta)?;
                files += 1;
            }
        }
    }
    store.sync().map_err(local)?;
    Ok((files, stored))
}

/// Store a chunk sent for `file` of the batch, if it was asked for.
fn take_chunk(
    store: &ChunkStore,
    batch: &[Job<'_>],
    file: u32,
    id: ChunkId,
    compressed: &[u8],
) -> Result<u64, SyncError> {
    let wanted = batch
        .get(file as usize)
        .is_some_and(|j| j.missing.contains(&id));
    if !wanted {
        return Err(SyncError::Untrusted(format!(
            "chunk {id}, which was not asked for"
        )));
    }
    store
        .put_compressed(id, compressed)
        .map_err(|e| SyncError::Untrusted(e.to_string()))?;
    Ok(1)
}

/// Rebuild `job`'s new file from the old one and `delta`, re-chunk it and
/// check every id and the size against the manifest before storing any
/// chunk. The chunks stored.
fn apply_delta(store: &ChunkStore, job: &Job<'_>, delta: &[u8]) -> Result<u64, SyncError> {
    let mut old_bytes = Vec::new();
    for id in job.from {
        old_bytes.extend(store.get(*id).map_err(local)?);
    }
    let max = usize::try_from(job.size).unwrap_or(usize::MAX);
    let new_bytes = sync::delta::apply(&old_bytes, delta, max)
        .map_err(|e| SyncError::Untrusted(e.to_string()))?;
    let mut pieces = Vec::new();
    sync::chunk::chunk_slice(&new_bytes, |id, data| {
        pieces.push((id, data.to_vec()));
        Ok(())
    })
    .map_err(local)?;
    let ids: Vec<ChunkId> = pieces.iter().map(|(id, _)| *id).collect();
    if ids != job.to || new_bytes.len() as u64 != job.size {
        return Err(SyncError::Untrusted(
            "a delta that does not rebuild the file the manifest names".to_owned(),
        ));
    }
    let mut stored = 0;
    for (id, data) in pieces {
        if store.put(id, &data).map_err(local)? {
            stored += 1;
        }
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    use protocol::limits::MAX_FETCH;
    use std::sync::Arc;
    use sync::manifest::{Entry, Kind};

    #[test]
    fn delta_batches_stay_within_the_files_and_ids_a_request_may_name() {
        use protocol::limits::{MAX_DELTA_CHUNKS, MAX_DELTA_FILES, MAX_DELTA_TOTAL};
        let ids: Vec<ChunkId> = (0..MAX_DELTA_CHUNKS)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        let job = |n: usize| Job {
            from: &ids[..n],
            to: &ids[..n],
            missing: vec![ids[0]],
            size: 1,
        };
        // Small files: 64 a request.
        let small: Vec<Job<'_>> = (0..150).map(|_| job(1)).collect();
        let b = delta_batches(&small);
        assert_eq!(b.iter().map(|b| b.len()).collect::<Vec<_>>(), [64, 64, 22]);
        // Large files: as many as the id bound allows, one at least.
        let large: Vec<Job<'_>> = (0..5).map(|_| job(MAX_DELTA_CHUNKS)).collect();
        let b = delta_batches(&large);
        assert_eq!(b.len(), 5);
        let mixed: Vec<Job<'_>> = (0..40)
            .map(|i| job(if i % 2 == 0 { 300 } else { 1 }))
            .collect();
        let b = delta_batches(&mixed);
        assert_eq!(b.iter().map(|b| b.len()).sum::<usize>(), 40);
        for batch in &b {
            let n: usize = batch.iter().map(|j| j.from.len() + j.to.len()).sum();
            assert!(
                batch.len() <= MAX_DELTA_FILES && n <= MAX_DELTA_TOTAL,
                "{n}"
            );
        }
        assert!(delta_batches(&[]).is_empty());
    }
    use sync::ChunkId;

    fn file(chunks: &[ChunkId]) -> Entry {
        Entry {
            path: "f".into(),
            mode: 0o644,
            kind: Kind::File {
                size: 0,
                chunks: chunks.to_vec(),
            },
            ..Entry::default()
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
}
