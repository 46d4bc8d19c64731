//! Pack files: many compressed chunks in one file, for a device's store.
//!
//! A pull of a whole root file system stores thousands of chunks; one file
//! each costs an inode, a temporary file and a rename per chunk, which is
//! most of a first pull's time. A packed store appends them instead to one
//! pack per writer, `ROOT/packs/TIME-PID.pack`, each record
//!
//! ```text
//! "SCK1"  id: 32 bytes  len: u32 big-endian  compressed bytes: len
//! ```
//!
//! and keeps an index (id -> pack, offset, length) in memory, rebuilt at open
//! by reading the record headers of every pack in name order (a later record
//! of an id wins). A record cut short by a crash ends its pack's scan; the
//! chunks before it stay. The store never trusts a record more than a loose
//! file: every read is checked against the id. Nothing is ever rewritten in
//! place; each writer appends to a pack of its own, so two processes sharing
//! a store never write the same file.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use crate::chunk::{ChunkId, MAX_CHUNK};

/// Each record begins with these bytes.
const MAGIC: &[u8; 4] = b"SCK1";
/// Magic, id and length.
const HEADER: usize = 4 + 32 + 4;
/// The largest compressed chunk a record may hold (zstd's bound for
/// [`MAX_CHUNK`] bytes is a little above it).
pub(crate) const MAX_RECORD: u32 = MAX_CHUNK + MAX_CHUNK / 64 + 1024;

/// Where a chunk's record is.
#[derive(Debug, Clone, Copy)]
struct Loc {
    pack: usize,
    offset: u64,
    len: u32,
}

/// The packs of one store: the index, open read handles, and this
/// writer's own pack (made at its first write).
#[derive(Debug, Default)]
pub(crate) struct Packs {
    dir: PathBuf,
    index: RwLock<HashMap<ChunkId, Loc>>,
    files: RwLock<Vec<Arc<File>>>,
    writer: Mutex<Option<Writer>>,
}

#[derive(Debug)]
struct Writer {
    pack: usize,
    file: Arc<File>,
    end: u64,
    dirty: bool,
}

impl Packs {
    /// Open the packs under `dir` (which need not exist yet) and index them.
    pub(crate) fn open(dir: PathBuf) -> std::io::Result<Packs> {
        let packs = Packs {
            dir,
            ..Packs::default()
        };
        let mut names: Vec<PathBuf> = match std::fs::read_dir(&packs.dir) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pack"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        names.sort();
        {
            let mut index = write(&packs.index);
            let mut files = write(&packs.files);
            for name in names {
                let file = File::open(&name)?;
                scan(&file, files.len(), &mut index)?;
                files.push(Arc::new(file));
            }
        }
        Ok(packs)
    }

    /// Whether a pack holds `id`.
    pub(crate) fn has(&self, id: ChunkId) -> bool {
        read(&self.index).contains_key(&id)
    }

    /// The ids the packs hold.
    pub(crate) fn ids(&self) -> Vec<ChunkId> {
        read(&self.index).keys().copied().collect()
    }

    /// How many chunks the packs hold.
    pub(crate) fn len(&self) -> usize {
        read(&self.index).len()
    }

    /// Append a record to this writer's pack (made now if it is the first).
    pub(crate) fn put(&self, id: ChunkId, compressed: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(compressed.len())
            .ok()
            .filter(|l| *l <= MAX_RECORD)
            .ok_or_else(|| std::io::Error::other("a chunk too large for a pack record"))?;
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.new_pack()?);
        }
        let Some(w) = guard.as_mut() else {
            return Err(std::io::Error::other("no pack to write"));
        };
        let mut record = Vec::with_capacity(HEADER + compressed.len());
        record.extend_from_slice(MAGIC);
        record.extend_from_slice(&id.0);
        record.extend_from_slice(&len.to_be_bytes());
        record.extend_from_slice(compressed);
        w.file.write_all_at(&record, w.end)?;
        let offset = w.end + HEADER as u64;
        w.end += record.len() as u64;
        w.dirty = true;
        let loc = Loc {
            pack: w.pack,
            offset,
            len,
        };
        write(&self.index).insert(id, loc);
        Ok(())
    }

    fn new_pack(&self) -> std::io::Result<Writer> {
        std::fs::create_dir_all(&self.dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self
            .dir
            .join(format!("{nanos:024}-{}.pack", std::process::id()));
        let file = Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)?,
        );
        // The pack's name must survive a power cut with its first records.
        File::open(&self.dir)?.sync_all()?;
        let mut files = write(&self.files);
        files.push(file.clone());
        Ok(Writer {
            pack: files.len() - 1,
            file,
            end: 0,
            dirty: false,
        })
    }

    /// The compressed bytes of `id`, unchecked; `None` if no pack holds it.
    pub(crate) fn get(&self, id: ChunkId) -> Option<std::io::Result<Vec<u8>>> {
        let loc = *read(&self.index).get(&id)?;
        let file = read(&self.files).get(loc.pack)?.clone();
        let mut buf = vec![0u8; loc.len as usize];
        Some(file.read_exact_at(&mut buf, loc.offset).map(|()| buf))
    }

    /// Forget `id` (a corrupt record): the next write of it appends a new one.
    pub(crate) fn forget(&self, id: ChunkId) {
        write(&self.index).remove(&id);
    }

    /// Make this writer's records durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = guard.as_mut().filter(|w| w.dirty) {
            w.file.sync_data()?;
            w.dirty = false;
        }
        Ok(())
    }

    /// Where the packs live.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Index the records of one pack; a torn or foreign record ends the scan.
fn scan(file: &File, pack: usize, index: &mut HashMap<ChunkId, Loc>) -> std::io::Result<()> {
    let size = file.metadata()?.len();
    let mut r = BufReader::with_capacity(HEADER, file);
    let mut offset = 0u64;
    let mut header = [0u8; HEADER];
    while offset + HEADER as u64 <= size {
        r.seek(SeekFrom::Start(offset))?;
        r.read_exact(&mut header)?;
        let (magic, rest) = header.split_at(4);
        let (id, len) = rest.split_at(32);
        let mut len_bytes = [0u8; 4];
        len_bytes.copy_from_slice(len);
        let len = u32::from_be_bytes(len_bytes);
        let body = offset + HEADER as u64;
        if magic != MAGIC || len > MAX_RECORD || body + u64::from(len) > size {
            tracing::warn!(
                pack,
                offset,
                "chunk pack: a torn or foreign record ends the pack"
            );
            break;
        }
        let mut chunk = [0u8; 32];
        chunk.copy_from_slice(id);
        index.insert(
            ChunkId(chunk),
            Loc {
                pack,
                offset: body,
                len,
            },
        );
        offset = body + u64::from(len);
    }
    Ok(())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ChunkId {
        ChunkId([n; 32])
    }

    #[test]
    fn records_survive_a_reopen_and_a_later_record_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = Packs::open(dir.path().join("packs")).unwrap();
        assert!(!p.has(id(1)));
        p.put(id(1), b"one").unwrap();
        p.put(id(2), b"two").unwrap();
        p.sync().unwrap();
        drop(p);
        let p = Packs::open(dir.path().join("packs")).unwrap();
        assert_eq!(p.get(id(1)).unwrap().unwrap(), b"one");
        p.put(id(1), b"uno").unwrap();
        drop(p);
        let p = Packs::open(dir.path().join("packs")).unwrap();
        assert_eq!(p.get(id(1)).unwrap().unwrap(), b"uno");
        assert_eq!(p.get(id(2)).unwrap().unwrap(), b"two");
        p.forget(id(2));
        assert!(p.get(id(2)).is_none());
    }

    #[test]
    fn a_torn_tail_keeps_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let packs = dir.path().join("packs");
        let p = Packs::open(packs.clone()).unwrap();
        p.put(id(1), &[7u8; 100]).unwrap();
        p.put(id(2), &[8u8; 100]).unwrap();
        drop(p);
        let pack = std::fs::read_dir(&packs)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let bytes = std::fs::read(&pack).unwrap();
        // Cut inside the second record, then try garbage and a huge length.
        for tail in [
            bytes[..bytes.len() - 10].to_vec(),
            [
                &bytes[..HEADER + 100],
                b"garbage garbage garbage garbage garbage!".as_slice(),
            ]
            .concat(),
            [
                &bytes[..HEADER + 100],
                MAGIC.as_slice(),
                &[2u8; 32],
                &u32::MAX.to_be_bytes(),
            ]
            .concat(),
        ] {
            std::fs::write(&pack, &tail).unwrap();
            let p = Packs::open(packs.clone()).unwrap();
            assert_eq!(p.get(id(1)).unwrap().unwrap(), vec![7u8; 100]);
            assert!(!p.has(id(2)));
        }
    }
}
