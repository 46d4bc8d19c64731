//! The content-addressed chunk store: one zstd-compressed file per chunk,
//! `ROOT/ab/abcdef...` (the first two hex digits fan out the directory),
//! shared by every image, layer and user.
//!
//! A chunk is written to a temporary file, then renamed into place; writers
//! call [`ChunkStore::sync`] once per batch (one `syncfs`, not one fsync per
//! chunk) before they record anything that depends on the batch. Reading
//! checks the bytes against the id, so a chunk torn by a power cut is an
//! error, never content, and [`ChunkStore::get`] removes it so that the next
//! pull fetches it again.
//!
//! A device's store is *packed* ([`ChunkStore::open_packed`]): new chunks
//! are appended to pack files instead (see [`pack`]), and one `fdatasync`
//! of its pack makes a batch durable. It still reads loose chunks, so a
//! store written before packs keeps working.

use std::path::{Path, PathBuf};

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::chunk::{ChunkId, MAX_CHUNK};

pub mod clean;
pub mod pack;

/// zstd level for chunks a device stores (fast, and most of zstd's gain).
pub const LEVEL: i32 = 3;
/// zstd level for chunks a gateway stores: compressed once, sent to every
/// device, so worth the slower build.
pub const GATEWAY_LEVEL: i32 = 19;

/// A chunk store problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The file system.
    #[error("chunk store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A chunk could not be written durably.
    #[error("chunk store: {source}")]
    Write {
        /// What failed, naming the file.
        #[source]
        source: persist::FileError,
    },
    /// Not in the store.
    #[error("chunk {0} is not in the store")]
    Missing(ChunkId),
    /// Bytes that do not decompress, are too large, or do not hash to the id.
    #[error("chunk {id}: {problem}")]
    Corrupt {
        /// The chunk.
        id: ChunkId,
        /// What is wrong.
        problem: String,
    },
}

/// A local chunk store.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    root: PathBuf,
    level: i32,
    packs: Option<Arc<pack::Packs>>,
    /// Whether loose chunk files may be there to look for: always for a
    /// loose store; for a packed one, only if it held some when opened
    /// (it never writes any), which spares a `stat` per chunk asked for.
    loose: bool,
    fresh: Option<Arc<Fresh>>,
    /// A packed store's shared lock on `ROOT/lock`, held while any clone
    /// lives: [`clean::collect_packed`] takes it exclusively.
    _in_use: Option<Arc<std::fs::File>>,
}

/// Plain bytes of chunks checked on their way into the store, kept for
/// their next read (see [`ChunkStore::holding_fresh`]).
#[derive(Debug)]
struct Fresh {
    budget: usize,
    held: Mutex<Held>,
}

#[derive(Debug, Default)]
struct Held {
    chunks: HashMap<ChunkId, Vec<u8>>,
    /// The plain bytes in `chunks`, all told.
    bytes: usize,
}

impl Fresh {
    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, id: ChunkId, plain: Vec<u8>) {
        let mut held = self.lock();
        let bytes = held.bytes + plain.len();
        if bytes <= self.budget {
            if let std::collections::hash_map::Entry::Vacant(e) = held.chunks.entry(id) {
                e.insert(plain);
                held.bytes = bytes;
            }
        }
    }

    fn take(&self, id: ChunkId) -> Option<Vec<u8>> {
        let mut held = self.lock();
        let plain = held.chunks.remove(&id)?;
        held.bytes -= plain.len();
        Some(plain)
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Whether a name in the store's root is one of its fan-out directories.
fn is_fan(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|f| f.len() == 2 && f.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Decompress a stored chunk, refusing more than [`MAX_CHUNK`] bytes, and
/// check it hashes to `id`.
pub fn open_chunk(id: ChunkId, compressed: &[u8]) -> Result<Vec<u8>, StoreError> {
    thread_local! {
        // A decompression context costs more to make than a chunk to decompress.
        static DCTX: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    }
    let plain = DCTX
        .with(|d| {
            let mut d = d.borrow_mut();
            if d.is_none() {
                *d = Some(zstd::bulk::Decompressor::new()?);
            }
            match d.as_mut() {
                Some(d) => d.decompress(compressed, MAX_CHUNK as usize),
                None => Err(std::io::Error::other("no zstd context")),
            }
        })
        .map_err(|e| StoreError::Corrupt {
            id,
            problem: format!("does not decompress: {e}"),
        })?;
    if ChunkId::of(&plain) != id {
        return Err(StoreError::Corrupt {
            id,
            problem: "its bytes hash to another id".to_owned(),
        });
    }
    Ok(plain)
}

impl ChunkStore {
    /// Open (and create) a store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<ChunkStore, StoreError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        Ok(ChunkStore {
            root,
            level: LEVEL,
            packs: None,
            loose: true,
            fresh: None,
            _in_use: None,
        })
    }

    /// Open (and create) a packed store at `root`: new chunks go to a pack
    /// of this store's own under `root/packs/`; loose chunks are still read.
    /// The store holds a shared lock on `root/lock` while it (or a clone)
    /// lives, so a clean-up ([`clean::collect_packed`]) never runs under a
    /// pull or a push; opening waits while one runs.
    pub fn open_packed(root: impl Into<PathBuf>) -> Result<ChunkStore, StoreError> {
        let root = root.into();
        let lock = clean::lock(&root, rustix::fs::FlockOperation::LockShared)?;
        let mut store = ChunkStore::open_packed_unlocked(root)?;
        store._in_use = Some(Arc::new(lock));
        Ok(store)
    }

    /// [`open_packed`](Self::open_packed) for the clean-up, which holds the
    /// lock exclusively already.
    fn open_packed_unlocked(root: PathBuf) -> Result<ChunkStore, StoreError> {
        let mut store = ChunkStore::open(root)?;
        let dir = store.root.join("packs");
        store.packs = Some(Arc::new(pack::Packs::open(dir.clone()).map_err(io(&dir))?));
        store.loose = std::fs::read_dir(&store.root)
            .map_err(io(&store.root))?
            .filter_map(Result::ok)
            .any(|e| is_fan(&e.file_name()));
        Ok(store)
    }

    /// The same store, compressing new chunks at zstd `level`.
    pub fn with_level(self, level: i32) -> ChunkStore {
        ChunkStore { level, ..self }
    }

    /// The same store, keeping the plain bytes of chunks that
    /// [`put_compressed`](Self::put_compressed) checks (up to `budget`
    /// bytes at a time) for the next [`get`](Self::get) of each, which then
    /// neither decompresses nor hashes them again. For a pull, which stores
    /// chunks and then writes files from them: the bytes it writes are the
    /// bytes it checked. A chunk read twice is read from the store the
    /// second time; one never read holds its share of the budget until the
    /// store is dropped.
    pub fn holding_fresh(self, budget: usize) -> ChunkStore {
        let fresh = Fresh {
            budget,
            held: Mutex::default(),
        };
        ChunkStore {
            fresh: Some(Arc::new(fresh)),
            ..self
        }
    }

    /// Where the store lives.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, id: ChunkId) -> PathBuf {
        let hex = id.to_string();
        self.root.join(&hex[..2]).join(hex)
    }

    /// Whether the store holds `id`.
    pub fn has(&self, id: ChunkId) -> bool {
        self.packs.as_ref().is_some_and(|p| p.has(id)) || (self.loose && self.path(id).is_file())
    }

    /// The loose chunks (one file each): id, size on disk, and when the file
    /// was last written. Files whose names are not chunk ids are skipped.
    pub fn loose_chunks(&self) -> Result<Vec<(ChunkId, u64, std::time::SystemTime)>, StoreError> {
        let mut out = Vec::new();
        let dirs = match std::fs::read_dir(&self.root) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for dir in dirs.flatten() {
            let Ok(files) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name();
                let Some(id) = name.to_str().and_then(|n| n.parse::<ChunkId>().ok()) else {
                    continue;
                };
                if let Ok(m) = f.metadata() {
                    if m.is_file() {
                        let when = m.modified().unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                        out.push((id, m.len(), when));
                    }
                }
            }
        }
        Ok(out)
    }

    /// Remove the loose chunk `id` (gone already is fine).
    pub fn remove_loose(&self, id: ChunkId) -> Result<(), StoreError> {
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// How many chunks the store holds (packed and loose; a chunk in both counts once
    /// per place).
    pub fn count(&self) -> Result<u64, StoreError> {
        let mut n = self.packs.as_ref().map_or(0, |p| p.len() as u64);
        for fan in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let fan = fan.map_err(io(&self.root))?.path();
            if fan.file_name().is_some_and(is_fan) && fan.is_dir() {
                for e in std::fs::read_dir(&fan).map_err(io(&fan))? {
                    let name = e.map_err(io(&fan))?.file_name();
                    n += u64::from(name.to_str().is_some_and(|n| n.parse::<ChunkId>().is_ok()));
                }
            }
        }
        Ok(n)
    }

    /// Store plain bytes (compressing them). False if already there.
    pub fn put(&self, id: ChunkId, plain: &[u8]) -> Result<bool, StoreError> {
        if self.has(id) && self.stored_again(id)? {
            return Ok(false);
        }
        let compressed = zstd::bulk::compress(plain, self.level).map_err(io(&self.root))?;
        self.write(id, &compressed)?;
        Ok(true)
    }

    /// Store a chunk received compressed, after checking it (it must
    /// decompress within bounds and hash to `id`). False if already there.
    pub fn put_compressed(&self, id: ChunkId, compressed: &[u8]) -> Result<bool, StoreError> {
        if self.has(id) && self.stored_again(id)? {
            return Ok(false);
        }
        let plain = open_chunk(id, compressed)?;
        self.write(id, compressed)?;
        if let Some(f) = &self.fresh {
            f.keep(id, plain);
        }
        Ok(true)
    }

    /// Whether the store holds `id`, and if so, its file's time made now (in
    /// a loose store), as when it is stored again: for a version published
    /// again from chunks already stored.
    pub fn keep_fresh(&self, id: ChunkId) -> bool {
        self.has(id) && self.stored_again(id).unwrap_or(false)
    }

    /// A chunk found in the store is being stored again: in a loose store,
    /// its file's time is made now, so that a collection running meanwhile
    /// counts it as recent (see [`clean::remove_loose_if_older`]). False if
    /// the file went in the meantime: the caller writes it again.
    fn stored_again(&self, id: ChunkId) -> Result<bool, StoreError> {
        if self.packs.is_some() {
            return Ok(true);
        }
        let path = self.path(id);
        let now = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_NOW,
            },
        };
        match rustix::fs::utimensat(rustix::fs::CWD, &path, &now, rustix::fs::AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(io(&path)(e.into())),
        }
    }

    fn write(&self, id: ChunkId, compressed: &[u8]) -> Result<(), StoreError> {
        if let Some(p) = &self.packs {
            return p.put(id, compressed).map_err(io(p.dir()));
        }
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        persist::file::create_dir_all(&dir).map_err(|source| StoreError::Write { source })?;
        // Content-addressed: a chunk another writer stored first is this
        // one. Made durable in batches by `sync`.
        match persist::file::write_new_batched(&path, compressed, 0o644) {
            Ok(()) | Err(persist::FileError::Exists { .. }) => Ok(()),
            Err(source) => Err(StoreError::Write { source }),
        }
    }

    /// The stored (compressed) bytes, unchecked: for sending on.
    pub fn get_compressed(&self, id: ChunkId) -> Result<Vec<u8>, StoreError> {
        if let Some(r) = self.packs.as_ref().and_then(|p| p.get(id)) {
            return r.map_err(|source| StoreError::Io {
                path: self.root.join("packs"),
                source,
            });
        }
        let path = self.path(id);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing(id),
            _ => StoreError::Io { path, source: e },
        })
    }

    /// The plain bytes, checked against the id. A corrupt chunk is removed
    /// (so it is fetched again) and reported.
    pub fn get(&self, id: ChunkId) -> Result<Vec<u8>, StoreError> {
        if let Some(plain) = self.fresh.as_ref().and_then(|f| f.take(id)) {
            return Ok(plain);
        }
        let r = open_chunk(id, &self.get_compressed(id)?);
        if let Err(StoreError::Corrupt { .. }) = &r {
            let _ = self.remove(id);
        }
        r
    }

    /// Make every chunk written so far durable (one `syncfs` of the store's
    /// file system; for a packed store, one `fdatasync` of its pack).
    pub fn sync(&self) -> Result<(), StoreError> {
        if let Some(p) = &self.packs {
            return p.sync().map_err(io(p.dir()));
        }
        let dir = std::fs::File::open(&self.root).map_err(io(&self.root))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
            path: self.root.clone(),
            source: e.into(),
        })
    }

    /// Remove a chunk (a corrupt one, say). Absent is fine.
    pub fn remove(&self, id: ChunkId) -> Result<(), StoreError> {
        if let Some(f) = &self.fresh {
            f.take(id);
        }
        if let Some(p) = &self.packs {
            p.forget(id);
        }
        let path = self.path(id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_dedup_and_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path()).unwrap();
        let data = b"hello chunk".repeat(100);
        let id = ChunkId::of(&data);
        assert!(s.put(id, &data).unwrap());
        assert!(!s.put(id, &data).unwrap());
        assert_eq!(s.get(id).unwrap(), data);
        // Received bytes that do not match their id are refused.
        let other = zstd::bulk::compress(b"other", 3).unwrap();
        let fake = ChunkId::of(b"not other");
        assert!(matches!(
            s.put_compressed(fake, &other),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!s.has(fake));
        // A flipped byte on disk is caught on read.
        let path = s.path(id);
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        std::fs::write(&path, bytes).unwrap();
        assert!(s.get(id).is_err());
        // A decompression bomb is refused.
        let bomb = zstd::bulk::compress(&vec![0u8; 10 << 20], 3).unwrap();
        assert!(open_chunk(ChunkId::of(&vec![0u8; 10 << 20]), &bomb).is_err());
        assert!(matches!(
            s.get(ChunkId::of(b"absent")),
            Err(StoreError::Missing(_))
        ));
    }

    #[test]
    fn fresh_chunks_are_read_once_from_memory_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let plain: Vec<Vec<u8>> = (0..3u8).map(|i| vec![i; 1000]).collect();
        let s = ChunkStore::open(dir.path()).unwrap().holding_fresh(2000);
        for p in &plain {
            let c = zstd::bulk::compress(p, 3).unwrap();
            assert!(s.put_compressed(ChunkId::of(p), &c).unwrap());
        }
        // Spoil every stored copy: what is read from disk now fails its check.
        for p in &plain {
            let path = s.path(ChunkId::of(p));
            std::fs::write(&path, zstd::bulk::compress(b"spoilt", 3).unwrap()).unwrap();
        }
        // The first two fit the budget and are read as they were checked, once.
        for p in &plain[..2] {
            assert_eq!(s.get(ChunkId::of(p)).unwrap(), *p);
            assert!(matches!(
                s.get(ChunkId::of(p)),
                Err(StoreError::Corrupt { .. })
            ));
        }
        // The third did not fit, so it came from disk.
        assert!(matches!(
            s.get(ChunkId::of(&plain[2])),
            Err(StoreError::Corrupt { .. })
        ));
        // Taking them freed the budget for the next ones.
        let more = vec![9u8; 1500];
        let c = zstd::bulk::compress(&more, 3).unwrap();
        assert!(s.put_compressed(ChunkId::of(&more), &c).unwrap());
        std::fs::remove_file(s.path(ChunkId::of(&more))).unwrap();
        assert_eq!(s.get(ChunkId::of(&more)).unwrap(), more);
    }

    #[test]
    fn a_packed_store_keeps_its_chunks_and_catches_a_flipped_byte() {
        let dir = tempfile::tempdir().unwrap();
        // A chunk stored loose before the store was packed is still read.
        let old = b"written loose".repeat(50);
        ChunkStore::open(dir.path())
            .unwrap()
            .put(ChunkId::of(&old), &old)
            .unwrap();
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        assert!(s.has(ChunkId::of(&old)));
        assert_eq!(s.get(ChunkId::of(&old)).unwrap(), old);
        let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 5000 + usize::from(i)]).collect();
        for c in &chunks {
            assert!(s.put(ChunkId::of(c), c).unwrap());
            assert!(!s.put(ChunkId::of(c), c).unwrap());
        }
        s.sync().unwrap();
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        for c in &chunks {
            assert_eq!(s.get(ChunkId::of(c)).unwrap(), *c);
        }
        // No loose file was made for them: one pack holds them all.
        assert_eq!(
            std::fs::read_dir(dir.path().join("packs")).unwrap().count(),
            1
        );
        // Flip a byte of the last record: that chunk is refused and
        // forgotten, the others stay; storing it again mends it for good.
        let pack = std::fs::read_dir(dir.path().join("packs"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let mut bytes = std::fs::read(&pack).unwrap();
        let n = bytes.len();
        bytes[n - 2] ^= 0x40;
        std::fs::write(&pack, bytes).unwrap();
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        let last = chunks.last().unwrap();
        assert!(matches!(
            s.get(ChunkId::of(last)),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(!s.has(ChunkId::of(last)));
        assert_eq!(s.get(ChunkId::of(&chunks[0])).unwrap(), chunks[0]);
        assert!(s.put(ChunkId::of(last), last).unwrap());
        s.sync().unwrap();
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        assert_eq!(s.get(ChunkId::of(last)).unwrap(), *last);
    }
}
