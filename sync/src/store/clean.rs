//! Clean-up of a chunk store, safe beside the store's other users.
//!
//! **A gateway's loose store** is shared by the serving gateway, builds and
//! the collection (`satchel gateway gc`), in different processes, with no
//! lock. A chunk the collection found unreferenced and old can be stored
//! again meanwhile by a build whose new version will reference it. Storing
//! an existing chunk makes its file's time now
//! ([`ChunkStore::put`](super::ChunkStore::put)), and
//! [`remove_loose_if_older`] first renames the file aside, then reads its
//! time: a chunk stored again before the rename is seen as recent and put
//! back; one stored after it is no longer found by the writer, which writes
//! it again.
//!
//! **A device's packed store** is cleaned by rewriting: the chunks still
//! wanted go into one new pack, then the old packs and loose files go.
//! Every open packed store holds a shared `flock` on `ROOT/lock`;
//! [`collect_packed`] holds it exclusively, so it never runs under a pull
//! or a push (it waits for them, and they wait for it). A crash leaves
//! either the old packs or the new one complete (a chunk in both is read
//! from the newer): nothing wanted is lost.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rustix::fs::FlockOperation;

use super::{io, ChunkStore, StoreError};
use crate::chunk::ChunkId;

/// Open `ROOT/lock` and take `op` on it (waiting).
pub(super) fn lock(root: &Path, op: FlockOperation) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join("lock");
    let file = open_lock(&path)?;
    rustix::fs::flock(&file, op).map_err(|e| io(&path)(e.into()))?;
    Ok(file)
}

fn open_lock(path: &Path) -> Result<std::fs::File, StoreError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))
}

/// Remove the loose chunk `id` if its file was last written at or before
/// `cutoff`. Returns its size if removed, `None` if it was kept (written
/// since, or gone already).
pub fn remove_loose_if_older(
    store: &ChunkStore,
    id: ChunkId,
    cutoff: SystemTime,
) -> Result<Option<u64>, StoreError> {
    let path = store.path(id);
    let aside = store
        .root
        .join(format!(".removing-{id}-{}", std::process::id()));
    match std::fs::rename(&path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(&path)(e)),
    }
    let meta = std::fs::metadata(&aside).map_err(io(&aside))?;
    let written = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if written > cutoff {
        // Stored again since it was listed: back into place, unless the
        // writer already wrote it again.
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            &aside,
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => return Ok(None),
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io(&path)(e.into())),
        }
        std::fs::remove_file(&aside).map_err(io(&aside))?;
        return Ok(None);
    }
    std::fs::remove_file(&aside).map_err(io(&aside))?;
    Ok(Some(meta.len()))
}

/// Put back the chunks a collection had set aside when it stopped (a crash
/// between the rename and its decision): each goes back into place unless
/// a writer wrote it again meanwhile. How many were put back.
pub fn restore_aside(store: &ChunkStore) -> Result<u64, StoreError> {
    let mut n = 0;
    let rd = match std::fs::read_dir(&store.root) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(&store.root)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix(".removing-"))
            .and_then(|n| n.split('-').next())
            .and_then(|n| n.parse::<ChunkId>().ok())
        else {
            continue;
        };
        let path = store.path(id);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        match rustix::fs::renameat_with(
            rustix::fs::CWD,
            e.path(),
            rustix::fs::CWD,
            &path,
            rustix::fs::RenameFlags::NOREPLACE,
        ) {
            Ok(()) => n += 1,
            Err(rustix::io::Errno::EXIST) => {
                std::fs::remove_file(e.path()).map_err(io(&e.path()))?;
            }
            Err(err) => return Err(io(&path)(err.into())),
        }
    }
    Ok(n)
}

/// What [`collect_packed`] found and did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Packed {
    /// Chunks in the store before.
    pub chunks: u64,
    /// Of those, wanted and kept.
    pub kept: u64,
    /// Removed (or, in a dry run, to remove).
    pub removed: u64,
    /// Bytes the store's packs and loose files took before.
    pub bytes_before: u64,
    /// And after (in a dry run, the same).
    pub bytes_after: u64,
    /// Wanted chunks the store did not hold, or held corrupt (a later pull
    /// fetches them).
    pub absent: u64,
}

/// The packed store at a root, held exclusively: no pull or push has it
/// open. What they left (the device's sync state) is read under it.
#[derive(Debug)]
pub struct Exclusive {
    root: PathBuf,
    _lock: std::fs::File,
}

impl Exclusive {
    /// Take the store at `root`, waiting up to `wait` for its users to
    /// close it.
    pub fn take(root: &Path, wait: Duration) -> Result<Exclusive, StoreError> {
        Ok(Exclusive {
            root: root.to_owned(),
            _lock: lock_exclusive(root, wait)?,
        })
    }
}

/// Keep only the chunks `wanted` names in the packed store held by `held`;
/// `dry_run` counts only.
pub fn collect_packed(
    held: &Exclusive,
    wanted: &HashSet<ChunkId>,
    dry_run: bool,
) -> Result<Packed, StoreError> {
    let root = held.root.as_path();
    let store = ChunkStore::open_packed_unlocked(root.to_owned())?;
    let packs = pack_files(root)?;
    let loose = store.loose_chunks()?;
    let mut held: HashSet<ChunkId> = store
        .packs
        .as_ref()
        .map(|p| p.ids().into_iter().collect())
        .unwrap_or_default();
    held.extend(loose.iter().map(|(id, _, _)| *id));
    let mut c = Packed {
        chunks: held.len() as u64,
        ..Packed::default()
    };
    for p in &packs {
        c.bytes_before += std::fs::metadata(p).map_err(io(p))?.len();
    }
    c.bytes_before += loose.iter().map(|(_, b, _)| b).sum::<u64>();
    c.kept = held.iter().filter(|id| wanted.contains(id)).count() as u64;
    c.removed = c.chunks - c.kept;
    c.absent = wanted.iter().filter(|id| !held.contains(id)).count() as u64;
    if dry_run || c.removed == 0 {
        c.bytes_after = c.bytes_before;
        return Ok(c);
    }
    // The wanted chunks, checked, into a new pack of this store's own; a
    // failure (a full disk) removes the new pack again, the old ones whole.
    let written = copy_wanted(&store, &held, wanted, &mut c).and_then(|()| store.sync());
    let made: HashSet<PathBuf> = pack_files(root)?
        .into_iter()
        .filter(|p| !packs.contains(p))
        .collect();
    if let Err(e) = written {
        for p in &made {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    for p in &packs {
        std::fs::remove_file(p).map_err(io(p))?;
    }
    for (id, _, _) in &loose {
        store.remove_loose(*id)?;
    }
    let dir = root.join("packs");
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io(&dir))?;
    for p in &made {
        c.bytes_after += std::fs::metadata(p).map_err(io(p))?.len();
    }
    Ok(c)
}

fn copy_wanted(
    store: &ChunkStore,
    held: &HashSet<ChunkId>,
    wanted: &HashSet<ChunkId>,
    c: &mut Packed,
) -> Result<(), StoreError> {
    for id in held.iter().filter(|id| wanted.contains(id)) {
        match store.get_compressed(*id) {
            Ok(bytes) if super::open_chunk(*id, &bytes).is_ok() => {
                if let Some(p) = &store.packs {
                    p.put(*id, &bytes).map_err(io(p.dir()))?;
                }
            }
            _ => {
                c.kept -= 1;
                c.removed += 1;
                c.absent += 1;
            }
        }
    }
    Ok(())
}

/// Take `ROOT/lock` exclusively, trying until `wait` has passed.
fn lock_exclusive(root: &Path, wait: Duration) -> Result<std::fs::File, StoreError> {
    std::fs::create_dir_all(root).map_err(io(root))?;
    let path = root.join("lock");
    let file = open_lock(&path)?;
    let deadline = Instant::now() + wait;
    loop {
        match rustix::fs::flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                return Err(io(&path)(std::io::Error::new(
                    std::io::ErrorKind::WouldBlock,
                    format!(
                        "still in use by a pull or a push after {} s; try again later",
                        wait.as_secs()
                    ),
                )))
            }
            Err(e) => return Err(io(&path)(e.into())),
        }
    }
}

/// The pack files under `ROOT/packs`, by name.
fn pack_files(root: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let dir = root.join("packs");
    let mut v: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "pack"))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(io(&dir)(e)),
    };
    v.sort();
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(n: u8) -> (ChunkId, Vec<u8>) {
        let plain = vec![n; 5000 + usize::from(n)];
        (ChunkId::of(&plain), plain)
    }

    #[test]
    fn a_chunk_stored_again_after_listing_survives_its_removal() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path()).unwrap();
        let (id, plain) = chunk(1);
        s.put(id, &plain).unwrap();
        let old = SystemTime::now() - Duration::from_secs(86_400);
        std::fs::File::options()
            .write(true)
            .open(s.path(id))
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Listed as old and unreferenced; then a build stores it again.
        let cutoff = SystemTime::now() - Duration::from_secs(3600);
        assert!(!s.put(id, &plain).unwrap());
        assert_eq!(remove_loose_if_older(&s, id, cutoff).unwrap(), None);
        assert_eq!(s.get(id).unwrap(), plain);
        // Not stored again: it goes.
        std::fs::File::options()
            .write(true)
            .open(s.path(id))
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert!(remove_loose_if_older(&s, id, cutoff).unwrap().is_some());
        assert!(!s.has(id));
        // A writer that finds it gone writes it again.
        assert!(s.put(id, &plain).unwrap());
        assert_eq!(s.get(id).unwrap(), plain);
    }

    #[test]
    fn a_chunk_set_aside_by_a_stopped_collection_is_put_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = ChunkStore::open(dir.path()).unwrap();
        let (id, plain) = chunk(2);
        s.put(id, &plain).unwrap();
        std::fs::rename(s.path(id), dir.path().join(format!(".removing-{id}-77"))).unwrap();
        assert!(!s.has(id));
        assert_eq!(restore_aside(&s).unwrap(), 1);
        assert_eq!(s.get(id).unwrap(), plain);
        // Written again meanwhile: the copy aside just goes.
        std::fs::copy(s.path(id), dir.path().join(format!(".removing-{id}-78"))).unwrap();
        assert_eq!(restore_aside(&s).unwrap(), 0);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn collecting_a_packed_store_keeps_exactly_what_is_wanted() {
        let dir = tempfile::tempdir().unwrap();
        let all: Vec<_> = (1..=6).map(chunk).collect();
        {
            let s = ChunkStore::open_packed(dir.path()).unwrap();
            for (id, plain) in &all[..3] {
                s.put(*id, plain).unwrap();
            }
            s.sync().unwrap();
        }
        {
            let s = ChunkStore::open_packed(dir.path()).unwrap();
            for (id, plain) in &all[3..] {
                s.put(*id, plain).unwrap();
            }
            s.sync().unwrap();
        }
        let wanted: HashSet<ChunkId> = [all[0].0, all[4].0, chunk(9).0].into_iter().collect();
        let dry = collect_packed(
            &Exclusive::take(dir.path(), Duration::ZERO).unwrap(),
            &wanted,
            true,
        )
        .unwrap();
        assert_eq!(
            (dry.chunks, dry.kept, dry.removed, dry.absent),
            (6, 2, 4, 1)
        );
        assert_eq!(pack_files(dir.path()).unwrap().len(), 2);
        let c = collect_packed(
            &Exclusive::take(dir.path(), Duration::ZERO).unwrap(),
            &wanted,
            false,
        )
        .unwrap();
        assert_eq!((c.kept, c.removed), (2, 4));
        assert!(c.bytes_after < c.bytes_before, "{c:?}");
        assert_eq!(pack_files(dir.path()).unwrap().len(), 1);
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        assert_eq!(s.count().unwrap(), 2);
        assert_eq!(s.get(all[0].0).unwrap(), all[0].1);
        assert_eq!(s.get(all[4].0).unwrap(), all[4].1);
        assert!(!s.has(all[1].0));
    }

    #[test]
    fn a_collection_waits_for_the_stores_users() {
        let dir = tempfile::tempdir().unwrap();
        let (id, plain) = chunk(3);
        let s = ChunkStore::open_packed(dir.path()).unwrap();
        s.put(id, &plain).unwrap();
        s.sync().unwrap();
        // In use: the collection gives up after its wait, removing nothing.
        let e = Exclusive::take(dir.path(), Duration::from_millis(300)).unwrap_err();
        assert!(e.to_string().contains("in use"), "{e}");
        assert!(s.has(id));
        // A clone keeps it in use; once every clone is gone it runs.
        let clone = s.clone();
        drop(s);
        assert!(Exclusive::take(dir.path(), Duration::ZERO).is_err());
        drop(clone);
        let held = Exclusive::take(dir.path(), Duration::ZERO).unwrap();
        // Held: a pull opening the store now waits for the collection.
        let root = dir.path().to_owned();
        let opener = std::thread::spawn(move || {
            let s = ChunkStore::open_packed(&root).unwrap();
            s.count().unwrap()
        });
        std::thread::sleep(Duration::from_millis(200));
        assert!(!opener.is_finished(), "a store opened under a collection");
        let c = collect_packed(&held, &HashSet::new(), false).unwrap();
        drop(held);
        assert_eq!(opener.join().unwrap(), 0);
        assert_eq!(c.removed, 1);
    }
}
