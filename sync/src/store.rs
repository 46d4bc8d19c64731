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

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::chunk::{ChunkId, MAX_CHUNK};

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
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Decompress a stored chunk, refusing more than [`MAX_CHUNK`] bytes, and
/// check it hashes to `id`.
pub fn open_chunk(id: ChunkId, compressed: &[u8]) -> Result<Vec<u8>, StoreError> {
    let plain = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress(compressed, MAX_CHUNK as usize))
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
        Ok(ChunkStore { root, level: LEVEL })
    }

    /// The same store, compressing new chunks at zstd `level`.
    pub fn with_level(self, level: i32) -> ChunkStore {
        ChunkStore { level, ..self }
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
        self.path(id).is_file()
    }

    /// Store plain bytes (compressing them). False if already there.
    pub fn put(&self, id: ChunkId, plain: &[u8]) -> Result<bool, StoreError> {
        if self.has(id) {
            return Ok(false);
        }
        let compressed = zstd::bulk::compress(plain, self.level).map_err(io(&self.root))?;
        self.write(id, &compressed)?;
        Ok(true)
    }

    /// Store a chunk received compressed, after checking it (it must
    /// decompress within bounds and hash to `id`). False if already there.
    pub fn put_compressed(&self, id: ChunkId, compressed: &[u8]) -> Result<bool, StoreError> {
        if self.has(id) {
            return Ok(false);
        }
        open_chunk(id, compressed)?;
        self.write(id, compressed)?;
        Ok(true)
    }

    fn write(&self, id: ChunkId, compressed: &[u8]) -> Result<(), StoreError> {
        let path = self.path(id);
        let dir = path.parent().unwrap_or(&self.root).to_owned();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).map_err(io(&dir))?;
        tmp.write_all(compressed).map_err(io(&path))?;
        tmp.persist(&path).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: e.error,
        })?;
        Ok(())
    }

    /// The stored (compressed) bytes, unchecked: for sending on.
    pub fn get_compressed(&self, id: ChunkId) -> Result<Vec<u8>, StoreError> {
        let path = self.path(id);
        std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::Missing(id),
            _ => StoreError::Io { path, source: e },
        })
    }

    /// The plain bytes, checked against the id. A corrupt chunk is removed
    /// (so it is fetched again) and reported.
    pub fn get(&self, id: ChunkId) -> Result<Vec<u8>, StoreError> {
        let r = open_chunk(id, &self.get_compressed(id)?);
        if let Err(StoreError::Corrupt { .. }) = &r {
            let _ = self.remove(id);
        }
        r
    }

    /// Make every chunk written so far durable (one `syncfs` of the store's
    /// file system).
    pub fn sync(&self) -> Result<(), StoreError> {
        let dir = std::fs::File::open(&self.root).map_err(io(&self.root))?;
        rustix::fs::syncfs(&dir).map_err(|e| StoreError::Io {
            path: self.root.clone(),
            source: e.into(),
        })
    }

    /// Remove a chunk (a corrupt one, say). Absent is fine.
    pub fn remove(&self, id: ChunkId) -> Result<(), StoreError> {
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
}
