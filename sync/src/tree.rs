//! Directories in and out of the chunk store: [`scan`] turns a directory
//! into layer entries (storing every chunk), [`materialize`] turns entries
//! back into a directory, atomically: it is built beside the target and
//! swapped in with one `renameat2(RENAME_EXCHANGE)`, so a reader sees the
//! old layer or the new one, never half of either.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use std::os::unix::fs::MetadataExt as _;

use base64::Engine as _;

use crate::chunk::{chunk_stream, ChunkId};
use crate::manifest::{check_path, Entry, Kind, Layer};
use crate::store::{ChunkStore, StoreError};

/// How much of each path a scan records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fidelity {
    /// Paths, modes and content: a user layer.
    Plain,
    /// Also owners, nanosecond times, extended attributes, hard links,
    /// FIFOs and device nodes: a system layer, a whole operating system.
    Full,
}

impl Fidelity {
    /// What `layer` records.
    pub fn of(layer: Layer) -> Fidelity {
        if layer.is_system() {
            Fidelity::Full
        } else {
            Fidelity::Plain
        }
    }
}

/// A tree problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TreeError {
    /// The file system.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something a layer cannot hold.
    #[error("{path}: {problem}")]
    Unsupported {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The chunk store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file whose chunks do not add up to its size.
    #[error("{path}: assembled {got} bytes, the manifest says {want}")]
    Size {
        /// The path.
        path: String,
        /// Bytes written.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TreeError + '_ {
    move |source| TreeError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a scan found and stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScanStats {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
    /// Chunks referenced (with repeats).
    pub chunks: u64,
    /// Distinct chunks in this tree.
    pub unique_chunks: u64,
    /// Bytes of the distinct chunks.
    pub unique_bytes: u64,
    /// Chunks the store did not have before.
    pub new_chunks: u64,
    /// Bytes of those.
    pub new_bytes: u64,
}

impl ScanStats {
    /// Content bytes per stored byte of this tree's distinct chunks.
    pub fn dedup_ratio(&self) -> f64 {
        if self.unique_bytes == 0 {
            1.0
        } else {
            self.bytes as f64 / self.unique_bytes as f64
        }
    }
}

/// Scan `dir` into sorted entries, putting every chunk in `store`.
/// `progress` is told the bytes of each file as it is read.
pub fn scan(
    dir: &Path,
    store: &ChunkStore,
    fidelity: Fidelity,
    progress: &mut dyn FnMut(u64),
) -> Result<(Vec<Entry>, ScanStats), TreeError> {
    scan_into(dir, Some(store), fidelity, progress)
}

/// Scan `dir` into sorted entries; with a store, put every chunk in it,
/// without one only hash (to compare a tree with a manifest).
pub fn scan_into(
    dir: &Path,
    store: Option<&ChunkStore>,
    fidelity: Fidelity,
    progress: &mut dyn FnMut(u64),
) -> Result<(Vec<Entry>, ScanStats), TreeError> {
    let mut entries = Vec::new();
    let mut scanner = Scanner {
        store,
        fidelity,
        stats: ScanStats::default(),
        seen: HashSet::new(),
        inodes: HashMap::new(),
    };
    for item in walkdir::WalkDir::new(dir).min_depth(1).follow_links(false) {
        let item = item.map_err(|e| walk_error(dir, e))?;
        entries.push(scanner.entry(dir, item.path(), progress)?);
    }
    entries.sort_by(|a, b| a.0.path.cmp(&b.0.path));
    if fidelity == Fidelity::Full {
        // The layer's own directory first: its mode, owner, time, attributes.
        let meta = dir.symlink_metadata().map_err(io(dir))?;
        let mode = meta.permissions().mode() & 0o7777;
        let mut root = Entry::new(crate::manifest::ROOT, mode, Kind::Dir);
        full_meta(&mut root, dir, &meta)?;
        entries.insert(0, (root, None));
    }
    // Hard links: the first path of each inode (in layer order) is the
    // file, every later one a link to it.
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    let entries = entries
        .into_iter()
        .map(|(mut e, inode)| {
            if let Some(inode) = inode {
                match first.get(&inode) {
                    Some(target) => {
                        e.kind = Kind::Hardlink {
                            target: target.clone(),
                        }
                    }
                    None => {
                        first.insert(inode, e.path.clone());
                    }
                }
            }
            e
        })
        .collect();
    if let Some(store) = store {
        store.sync()?;
    }
    Ok((entries, scanner.stats))
}

/// A walk error as a [`TreeError::Io`] naming its path (or `dir`).
fn walk_error(dir: &Path, e: walkdir::Error) -> TreeError {
    let path = e.path().unwrap_or(dir).to_owned();
    TreeError::Io {
        path,
        source: e
            .into_io_error()
            .unwrap_or_else(|| std::io::Error::other("a loop")),
    }
}

/// The layer path of `full` under `dir`: UTF-8 and acceptable in a manifest.
fn relative(dir: &Path, full: &Path) -> Result<String, TreeError> {
    let rel = full
        .strip_prefix(dir)
        .ok()
        .and_then(|r| r.to_str())
        .ok_or_else(|| TreeError::Unsupported {
            path: full.to_owned(),
            problem: "the name is not UTF-8".to_owned(),
        })?
        .to_owned();
    check_path(&rel).map_err(|problem| TreeError::Unsupported {
        path: full.to_owned(),
        problem,
    })?;
    Ok(rel)
}

/// The symlink at `full`, with its UTF-8 target.
fn symlink_kind(full: &Path) -> Result<Kind, TreeError> {
    let target = std::fs::read_link(full).map_err(io(full))?;
    let target = target.to_str().ok_or_else(|| TreeError::Unsupported {
        path: full.to_owned(),
        problem: "the link target is not UTF-8".to_owned(),
    })?;
    Ok(Kind::Symlink {
        target: target.to_owned(),
    })
}

/// What a full scan records of `full` besides its kind: owner, time,
/// attributes, and whether a regular file has holes.
fn full_meta(e: &mut Entry, full: &Path, meta: &std::fs::Metadata) -> Result<(), TreeError> {
    e.uid = Some(meta.uid());
    e.gid = Some(meta.gid());
    e.mtime_ns = Some(
        meta.mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(meta.mtime_nsec()),
    );
    e.xattrs = xattrs_of(full)?;
    e.sparse =
        matches!(e.kind, Kind::File { .. }) && meta.blocks().saturating_mul(512) < meta.len();
    Ok(())
}

/// Open `path` for reading only if it is a regular file, not following a
/// symlink and not waiting on a FIFO; with `inode`, only if it is still that
/// inode (a name swapped for a link to `/etc/shadow` between a scan's look
/// and its read is refused, not read as root).
fn open_regular(path: &Path, inode: Option<(u64, u64)>) -> Result<std::fs::File, TreeError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_flags())
        .open(path)
        .map_err(io(path))?;
    let m = f.metadata().map_err(io(path))?;
    if !m.is_file() || inode.is_some_and(|i| i != (m.dev(), m.ino())) {
        return Err(TreeError::Unsupported {
            path: path.to_owned(),
            problem: "changed while it was read (replaced by a link or another file)".to_owned(),
        });
    }
    Ok(f)
}

/// `O_NOFOLLOW | O_NONBLOCK`.
fn libc_flags() -> i32 {
    (rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK).bits() as i32
}

/// The extended attributes of `full` (not following a symlink), values in
/// base64: those of the namespaces a layer may carry.
fn xattrs_of(full: &Path) -> Result<std::collections::BTreeMap<String, String>, TreeError> {
    let mut out = std::collections::BTreeMap::new();
    let mut names = vec![0u8; 4096];
    let n = loop {
        match rustix::fs::llistxattr(full, &mut names[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) if names.len() < (1 << 20) => {
                names.resize(names.len() * 4, 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(out),
            Err(e) => return Err(io(full)(e.into())),
        }
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            return Err(TreeError::Unsupported {
                path: full.to_owned(),
                problem: "an extended attribute name that is not UTF-8".to_owned(),
            });
        };
        if !crate::manifest::XATTR_NAMESPACES
            .iter()
            .any(|ns| name.starts_with(ns))
        {
            continue;
        }
        let mut value = vec![0u8; crate::manifest::MAX_XATTR];
        let len =
            rustix::fs::lgetxattr(full, name, &mut value[..]).map_err(|e| io(full)(e.into()))?;
        out.insert(
            name.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(&value[..len]),
        );
    }
    Ok(out)
}

/// A scan under way: where chunks go and what has been counted.
struct Scanner<'a> {
    /// Where chunks are put; `None` to only hash.
    store: Option<&'a ChunkStore>,
    /// What is recorded.
    fidelity: Fidelity,
    /// The counts so far.
    stats: ScanStats,
    /// The distinct chunks so far.
    seen: HashSet<ChunkId>,
    /// Files with more than one name (full scans): their content, by inode.
    inodes: HashMap<(u64, u64), Kind>,
}

impl Scanner<'_> {
    /// The entry for `full` (found under `dir`), storing a file's chunks;
    /// with its inode if it is a file with other names (full scans).
    fn entry(
        &mut self,
        dir: &Path,
        full: &Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(Entry, Option<(u64, u64)>), TreeError> {
        let rel = relative(dir, full)?;
        let meta = full.symlink_metadata().map_err(io(full))?;
        let mode = meta.permissions().mode() & 0o7777;
        if self.fidelity == Fidelity::Plain {
            let kind = self.kind(full, &meta, progress)?;
            return Ok((Entry::new(rel, mode, kind), None));
        }
        let ft = meta.file_type();
        let linked = (ft.is_file() && meta.nlink() > 1).then(|| (meta.dev(), meta.ino()));
        let kind = match linked.and_then(|i| self.inodes.get(&i)) {
            Some(k) => {
                self.stats.files += 1;
                k.clone()
            }
            None => {
                let k = self.full_kind(full, &meta, progress)?;
                if let Some(i) = linked {
                    self.inodes.insert(i, k.clone());
                }
                k
            }
        };
        let mut entry = Entry::new(rel, mode, kind);
        full_meta(&mut entry, full, &meta)?;
        Ok((entry, linked))
    }

    /// What `full` is in a full scan: anything but a socket.
    fn full_kind(
        &mut self,
        full: &Path,
        meta: &std::fs::Metadata,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Kind, TreeError> {
        use std::os::unix::fs::FileTypeExt as _;
        let ft = meta.file_type();
        let dev = || {
            let rdev = meta.rdev();
            (rustix::fs::major(rdev), rustix::fs::minor(rdev))
        };
        if ft.is_fifo() {
            Ok(Kind::Fifo)
        } else if ft.is_char_device() {
            let (major, minor) = dev();
            Ok(Kind::Char { major, minor })
        } else if ft.is_block_device() {
            let (major, minor) = dev();
            Ok(Kind::Block { major, minor })
        } else {
            self.kind(full, meta, progress)
        }
    }

    /// What `full` is, counted; anything but a file, directory or symlink is refused.
    fn kind(
        &mut self,
        full: &Path,
        meta: &std::fs::Metadata,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Kind, TreeError> {
        let ft = meta.file_type();
        if ft.is_dir() {
            self.stats.dirs += 1;
            Ok(Kind::Dir)
        } else if ft.is_symlink() {
            self.stats.symlinks += 1;
            symlink_kind(full)
        } else if ft.is_file() {
            self.stats.files += 1;
            self.file_kind(full, meta, progress)
        } else {
            Err(TreeError::Unsupported {
                path: full.to_owned(),
                problem: match self.fidelity {
                    Fidelity::Plain => "a device, FIFO or socket: a user layer holds files, directories and symlinks",
                    Fidelity::Full => "a socket: a layer cannot hold one",
                }
                .to_owned(),
            })
        }
    }

    /// Cut the file at `full` into chunks, storing them; `progress` is told its size.
    fn file_kind(
        &mut self,
        full: &Path,
        seen: &std::fs::Metadata,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Kind, TreeError> {
        let f = open_regular(full, Some((seen.dev(), seen.ino())))?;
        let mut chunks = Vec::new();
        let mut store_err = None;
        let size = chunk_stream(f, |id, data| {
            chunks.push(id);
            self.chunk(id, data).map_err(|e| {
                store_err = Some(e);
                std::io::Error::other("chunk store")
            })
        });
        if let Some(e) = store_err {
            return Err(e.into());
        }
        let size = size.map_err(io(full))?;
        self.stats.bytes += size;
        progress(size);
        Ok(Kind::File { size, chunks })
    }

    /// Count one chunk of a file; the first time it is seen, put it in the store.
    fn chunk(&mut self, id: ChunkId, data: &[u8]) -> Result<(), StoreError> {
        self.stats.chunks += 1;
        if !self.seen.insert(id) {
            return Ok(());
        }
        self.stats.unique_chunks += 1;
        self.stats.unique_bytes += data.len() as u64;
        let Some(store) = self.store else {
            return Ok(());
        };
        if store.put(id, data)? {
            self.stats.new_chunks += 1;
            self.stats.new_bytes += data.len() as u64;
        }
        Ok(())
    }
}

/// Write `entries` as the directory `target` (replacing what is there,
/// atomically), taking file content from `store`.
pub fn materialize(entries: &[Entry], store: &ChunkStore, target: &Path) -> Result<(), TreeError> {
    materialize_reusing(entries, store, target, &[])
}

/// [`materialize`], taking files and symlinks that `current` (a scan of
/// `target` as it is now) shows unchanged from the target as hard links
/// instead of writing them again: an update makes new inodes only for what
/// changed. Every linked file is read back and must give exactly its
/// entry's chunk ids (so a file changed since the scan is written afresh),
/// and every linked symlink its target.
pub fn materialize_reusing(
    entries: &[Entry],
    store: &ChunkStore,
    target: &Path,
    current: &[Entry],
) -> Result<(), TreeError> {
    materialize_arriving(entries, store, target, current, &|_| Ok(()))
}

/// [`materialize_reusing`] while the chunks are still arriving: before a
/// file's content is taken from the store, `arrived(entry)` must return,
/// once every chunk of that file is in the store (or with an error, which
/// stops the write and leaves `target` as it was). Files are written
/// roughly in `entries` order, so a fetch in that order and this write
/// overlap.
pub fn materialize_arriving(
    entries: &[Entry],
    store: &ChunkStore,
    target: &Path,
    current: &[Entry],
    arrived: &(dyn Fn(&Entry) -> Result<(), TreeError> + Sync),
) -> Result<(), TreeError> {
    let reuse = Reuse::open(target, current);
    let parent = target.parent().unwrap_or(Path::new("."));
    let staging = staging_dir(target, parent)?;
    let root = staging.path();
    // Directories first (entries are sorted, so parents come first), then
    // files and symlinks on a few threads: creating inodes is most of the
    // work, and the kernel does it in parallel.
    make_dirs(entries, root)?;
    write_leaves(entries, store, root, &reuse, arrived)?;
    // Second names once every file is there.
    for e in entries {
        if let Kind::Hardlink { target } = &e.kind {
            let path = root.join(&e.path);
            std::fs::hard_link(root.join(target), &path).map_err(io(&path))?;
        }
    }
    // Owners, modes, attributes and times last: files first, then
    // directories deepest first, so a read-only directory is filled before
    // it becomes read-only and its time is not moved by what it holds.
    let root_user = rustix::process::geteuid().is_root();
    for e in entries
        .iter()
        .filter(|e| !matches!(e.kind, Kind::Dir | Kind::Hardlink { .. }))
        .chain(entries.iter().rev().filter(|e| matches!(e.kind, Kind::Dir)))
    {
        set_meta(e, &root.join(&e.path), root_user)?;
    }
    // Everything written, durable in one call, before the swap.
    sync_fs(root)?;
    swap_in(&staging.keep(), target)?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io(parent))?;
    Ok(())
}

/// Create `parent` and, in it, an empty staging directory named after `target`.
fn staging_dir(target: &Path, parent: &Path) -> Result<tempfile::TempDir, TreeError> {
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("layer");
    tempfile::Builder::new()
        .prefix(&format!(".staging-{name}-"))
        .tempdir_in(parent)
        .map_err(io(parent))
}

/// Create the directories of `entries` under `root`, in order (their
/// metadata is set last).
fn make_dirs(entries: &[Entry], root: &Path) -> Result<(), TreeError> {
    for e in entries
        .iter()
        .filter(|e| matches!(e.kind, Kind::Dir) && e.path != crate::manifest::ROOT)
    {
        let path = root.join(&e.path);
        std::fs::create_dir(&path).map_err(io(&path))?;
    }
    Ok(())
}

/// Give `path` the metadata of `e`: owner (as root), mode, extended
/// attributes, time, in that order (a change of owner clears setuid bits
/// and file capabilities). Not as root, owners are left as made, and
/// attributes the kernel keeps for root (`security.*`, `trusted.*`) are
/// skipped.
fn set_meta(e: &Entry, path: &Path, root_user: bool) -> Result<(), TreeError> {
    use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
    let symlink = matches!(e.kind, Kind::Symlink { .. });
    let fail = |err: rustix::io::Errno| io(path)(err.into());
    if !root_user
        && matches!(e.kind, Kind::Char { .. } | Kind::Block { .. })
        && path.symlink_metadata().is_err()
    {
        // Left out (see `node`).
        return Ok(());
    }
    if root_user && (e.uid.is_some() || e.gid.is_some()) {
        rustix::fs::chownat(
            CWD,
            path,
            e.uid.map(rustix::fs::Uid::from_raw),
            e.gid.map(rustix::fs::Gid::from_raw),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(fail)?;
    }
    if !symlink {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode))
            .map_err(io(path))?;
    }
    for (name, value) in &e.xattrs {
        let value = base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| TreeError::Unsupported {
                path: path.to_owned(),
                problem: format!("attribute {name}: not base64"),
            })?;
        match rustix::fs::lsetxattr(path, name.as_str(), &value, rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            Err(rustix::io::Errno::PERM | rustix::io::Errno::NOTSUP) if !root_user => {}
            Err(err) => return Err(fail(err)),
        }
    }
    if let Some(ns) = e.mtime_ns {
        let t = Timestamps {
            last_access: Timespec {
                tv_sec: 0,
                tv_nsec: rustix::fs::UTIME_OMIT,
            },
            last_modification: Timespec {
                tv_sec: ns.div_euclid(1_000_000_000),
                tv_nsec: ns.rem_euclid(1_000_000_000),
            },
        };
        rustix::fs::utimensat(CWD, path, &t, AtFlags::SYMLINK_NOFOLLOW).map_err(fail)?;
    }
    Ok(())
}

/// Write the files and symlinks of `entries` under `root` on [`WRITERS`] threads.
fn write_leaves(
    entries: &[Entry],
    store: &ChunkStore,
    root: &Path,
    reuse: &Reuse<'_>,
    arrived: &(dyn Fn(&Entry) -> Result<(), TreeError> + Sync),
) -> Result<(), TreeError> {
    let leaves: Vec<&Entry> = entries
        .iter()
        .filter(|e| !matches!(e.kind, Kind::Dir | Kind::Hardlink { .. }))
        .collect();
    // The writers take the next leaf in order, so together they follow
    // the order the chunks arrive in; the first error stops them all.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WRITERS.min(leaves.len()))
            .map(|_| {
                let (next, failed, leaves) = (&next, &failed, &leaves);
                s.spawn(move || {
                    write_in_turn(leaves, next, failed, |e| {
                        write_leaf(e, store, root, reuse, arrived)
                    })
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join().unwrap_or_else(|_| {
                Err(TreeError::Unsupported {
                    path: root.to_owned(),
                    problem: "a writer thread failed".to_owned(),
                })
            })
        })
    })
}

/// One writer: take the next leaf and `write` it, until none is left or a writer has failed.
fn write_in_turn(
    leaves: &[&Entry],
    next: &AtomicUsize,
    failed: &AtomicBool,
    write: impl Fn(&Entry) -> Result<(), TreeError>,
) -> Result<(), TreeError> {
    while !failed.load(Ordering::Relaxed) {
        let Some(e) = leaves.get(next.fetch_add(1, Ordering::Relaxed)) else {
            break;
        };
        if let Err(err) = write(e) {
            failed.store(true, Ordering::Relaxed);
            return Err(err);
        }
    }
    Ok(())
}

/// Make everything written on the file system holding `root` durable, in one `syncfs`.
fn sync_fs(root: &Path) -> Result<(), TreeError> {
    std::fs::File::open(root).map_err(io(root)).and_then(|d| {
        rustix::fs::syncfs(&d).map_err(|e| TreeError::Io {
            path: root.to_owned(),
            source: e.into(),
        })
    })
}

/// Put the staged tree `kept` at `target`: exchanged with the old tree in one step (then removed), or renamed there if none.
fn swap_in(kept: &Path, target: &Path) -> Result<(), TreeError> {
    if target.symlink_metadata().is_ok() {
        // Swap in one step; the old tree ends up at the staging path.
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            kept,
            rustix::fs::CWD,
            target,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| TreeError::Io {
            path: target.to_owned(),
            source: e.into(),
        })?;
        remove_tree(kept).map_err(io(kept))
    } else {
        std::fs::rename(kept, target).map_err(io(target))
    }
}

/// Threads writing a layer's files.
const WRITERS: usize = 2;

/// The tree being replaced, and what a scan found in it.
struct Reuse<'a> {
    /// The tree, opened once; `None` when there is nothing to reuse.
    from: Option<std::os::fd::OwnedFd>,
    entries: HashMap<&'a str, &'a Entry>,
}

impl<'a> Reuse<'a> {
    /// The entries of `current`, and `target` opened once to link them from.
    fn open(target: &Path, current: &'a [Entry]) -> Reuse<'a> {
        let entries = current.iter().map(|e| (e.path.as_str(), e)).collect();
        let from = if current.is_empty() {
            None
        } else {
            rustix::fs::open(
                target,
                rustix::fs::OFlags::PATH
                    | rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()
        };
        Reuse { from, entries }
    }

    /// Hard-link `e` from the tree being replaced if it is there unchanged;
    /// true if `path` now holds it. The old path is resolved beneath the
    /// old tree with no symlink and no mount crossing on the way, so a
    /// directory swapped for a symlink since the scan links nothing from
    /// outside the layer.
    fn link(&self, e: &Entry, path: &Path) -> bool {
        use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
        let Some(from) = &self.from else {
            return false;
        };
        if self.entries.get(e.path.as_str()) != Some(&e) {
            return false;
        }
        let (dir, name) = e.path.rsplit_once('/').unwrap_or(("", e.path.as_str()));
        let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let parent = if dir.is_empty() {
            rustix::fs::openat2(from, ".", flags, Mode::empty(), resolve)
        } else {
            rustix::fs::openat2(from, dir, flags, Mode::empty(), resolve)
        };
        let linked = parent
            .and_then(|p| rustix::fs::linkat(&p, name, rustix::fs::CWD, path, AtFlags::empty()));
        if linked.is_err() {
            return false;
        }
        // The staged name cannot change any more (the staging directory is
        // root's); what it names must be what the entry says (a name in
        // the old tree swapped for a symlink since the scan is not reused,
        // and nothing later follows it).
        let kind_ok = path.symlink_metadata().is_ok_and(|m| match &e.kind {
            Kind::File { .. } => m.file_type().is_file(),
            Kind::Symlink { .. } => m.file_type().is_symlink(),
            _ => false,
        });
        if !kind_ok {
            let _ = std::fs::remove_file(path);
            return false;
        }
        let same = match &e.kind {
            Kind::File { size, chunks } => holds(path, *size, chunks),
            Kind::Symlink { target } => {
                std::fs::read_link(path).is_ok_and(|t| t.as_os_str() == target.as_str())
            }
            _ => false,
        };
        if !same {
            let _ = std::fs::remove_file(path);
        }
        same
    }
}

/// Whether the file at `path` is a regular file of `size` bytes cut into
/// exactly `chunks`.
fn holds(path: &Path, size: u64, chunks: &[ChunkId]) -> bool {
    let Ok(f) = open_regular(path, None) else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file() && m.len() == size) {
        return false;
    }
    let mut ids = chunks.iter();
    let read = chunk_stream(f, |id, _| {
        if ids.next() == Some(&id) {
            Ok(())
        } else {
            Err(std::io::Error::other("changed"))
        }
    });
    read.is_ok_and(|n| n == size) && ids.next().is_none()
}

/// Write one file or symlink of a layer under `root`.
fn write_leaf(
    e: &Entry,
    store: &ChunkStore,
    root: &Path,
    reuse: &Reuse<'_>,
    arrived: &(dyn Fn(&Entry) -> Result<(), TreeError> + Sync),
) -> Result<(), TreeError> {
    let path = root.join(&e.path);
    if reuse.link(e, &path) {
        // A file's mode is its inode's: the entry's, as the scan found it;
        // set again in case it changed since. (A symlink has none to set.)
        if matches!(e.kind, Kind::File { .. }) {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(e.mode))
                .map_err(io(&path))?;
        }
        return Ok(());
    }
    match &e.kind {
        Kind::Dir | Kind::Hardlink { .. } => Ok(()),
        Kind::Symlink { target } => std::os::unix::fs::symlink(target, &path).map_err(io(&path)),
        Kind::Fifo => node(&path, rustix::fs::FileType::Fifo, e.mode, 0),
        Kind::Char { major, minor } => node(
            &path,
            rustix::fs::FileType::CharacterDevice,
            e.mode,
            rustix::fs::makedev(*major, *minor),
        ),
        Kind::Block { major, minor } => node(
            &path,
            rustix::fs::FileType::BlockDevice,
            e.mode,
            rustix::fs::makedev(*major, *minor),
        ),
        Kind::File { size, chunks } => {
            use std::io::Seek as _;
            arrived(e)?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(io(&path))?;
            let mut written = 0u64;
            for id in chunks {
                let data = store.get(*id)?;
                // In a file that was sparse, a chunk of zeros is left a hole.
                if e.sparse && data.iter().all(|b| *b == 0) {
                    f.seek(std::io::SeekFrom::Current(data.len() as i64))
                        .map_err(io(&path))?;
                } else {
                    f.write_all(&data).map_err(io(&path))?;
                }
                written += data.len() as u64;
            }
            if written != *size {
                return Err(TreeError::Size {
                    path: e.path.clone(),
                    got: written,
                    want: *size,
                });
            }
            f.set_len(*size).map_err(io(&path))?;
            f.set_permissions(std::fs::Permissions::from_mode(e.mode))
                .map_err(io(&path))
        }
    }
}

/// Make a FIFO or device node; a device node needs root (not root, it is
/// left out, with a warning).
fn node(path: &Path, ft: rustix::fs::FileType, mode: u32, dev: u64) -> Result<(), TreeError> {
    match rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        ft,
        rustix::fs::Mode::from_raw_mode(mode & 0o777),
        dev,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) if ft != rustix::fs::FileType::Fifo => {
            tracing::warn!(path = %path.display(), "a device node is made only as root: left out");
            Ok(())
        }
        Err(e) => Err(io(path)(e.into())),
    }
}

/// Remove a tree even where directories are read-only.
fn remove_tree(path: &Path) -> std::io::Result<()> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    // Each directory opened beneath the tree with no symlink on the way
    // (a user's shell may still be inside the old tree, swapping names),
    // then made writable through its descriptor.
    let top = rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let _ = rustix::fs::chmod(path, Mode::from_raw_mode(0o700));
    for e in walkdir::WalkDir::new(path)
        .min_depth(1)
        .into_iter()
        .flatten()
    {
        if !e.file_type().is_dir() {
            continue;
        }
        let Ok(rel) = e.path().strip_prefix(path) else {
            continue;
        };
        if let Ok(d) = rustix::fs::openat2(
            &top,
            rel,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV,
        ) {
            let _ = rustix::fs::fchmod(&d, Mode::from_raw_mode(0o700));
        }
    }
    std::fs::remove_dir_all(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_scan_keeps_links_fifos_attributes_owners_and_times() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc")).unwrap();
        std::fs::write(src.join("etc/b"), b"shared content").unwrap();
        std::fs::hard_link(src.join("etc/b"), src.join("etc/a")).unwrap();
        std::fs::hard_link(src.join("etc/b"), src.join("z")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            src.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        rustix::fs::lsetxattr(
            src.join("etc/b"),
            "user.note",
            b"kept",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let when = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(src.join("etc/b"))
            .unwrap()
            .set_modified(when)
            .unwrap();
        let (entries, _) = scan(&src, &store, Fidelity::Full, &mut |_| {}).unwrap();
        let by = |p: &str| entries.iter().find(|e| e.path == p).unwrap().clone();
        // The first name in layer order holds the content; the others link to it.
        assert!(matches!(by("etc/a").kind, Kind::File { .. }));
        assert_eq!(
            by("etc/b").kind,
            Kind::Hardlink {
                target: "etc/a".into()
            }
        );
        assert_eq!(
            by("z").kind,
            Kind::Hardlink {
                target: "etc/a".into()
            }
        );
        assert_eq!(by("fifo").kind, Kind::Fifo);
        assert_eq!(by("etc/a").mtime_ns, Some(1_700_000_000_123_456_789));
        assert_eq!(by("etc/a").xattrs["user.note"], "a2VwdA==");
        assert_eq!(
            crate::manifest::format_for(&entries),
            crate::manifest::FORMAT_V2
        );
        let out = dir.path().join("out");
        materialize(&entries, &store, &out).unwrap();
        let (again, _) = scan_into(&out, None, Fidelity::Full, &mut |_| {}).unwrap();
        assert_eq!(again, entries);
        let (a, z) = (
            std::fs::metadata(out.join("etc/a")).unwrap(),
            std::fs::metadata(out.join("z")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (z.ino(), 3));
        // A plain scan of the same tree: three files, the FIFO refused.
        assert!(scan_into(&src, None, Fidelity::Plain, &mut |_| {}).is_err());
        std::fs::remove_file(src.join("fifo")).unwrap();
        let (plain, _) = scan_into(&src, None, Fidelity::Plain, &mut |_| {}).unwrap();
        assert!(plain.iter().all(|e| !e.is_v2()));
    }

    #[test]
    fn a_name_swapped_for_a_symlink_after_the_scan_is_never_followed() {
        // A user's file, scanned; then swapped for a link to a file of
        // root's before the update links unchanged files from the old tree.
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store")).unwrap();
        let victim = dir.path().join("shadow");
        std::fs::write(&victim, b"root:secret\n").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let layer = dir.path().join("layer");
        std::fs::create_dir(&layer).unwrap();
        std::fs::write(layer.join("f"), b"root:secret\n").unwrap();
        std::fs::set_permissions(layer.join("f"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let (current, _) = scan(&layer, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        std::fs::remove_file(layer.join("f")).unwrap();
        std::os::unix::fs::symlink(&victim, layer.join("f")).unwrap();
        materialize_reusing(&current, &store, &layer, &current).unwrap();
        let m = std::fs::symlink_metadata(layer.join("f")).unwrap();
        assert!(m.is_file(), "the symlink was reused");
        assert_eq!(
            std::fs::metadata(&victim).unwrap().permissions().mode() & 0o777,
            0o600,
            "root's file was changed through the link"
        );
        // A FIFO in its place is not waited on either.
        std::fs::remove_file(layer.join("f")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            layer.join("f"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o666),
            0,
        )
        .unwrap();
        materialize_reusing(&current, &store, &layer, &current).unwrap();
        assert!(std::fs::symlink_metadata(layer.join("f"))
            .unwrap()
            .is_file());
    }

    #[test]
    fn zeros_become_holes_only_where_the_file_had_holes() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path().join("store")).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("swapfile"), vec![0u8; 4 << 20]).unwrap();
        let f = std::fs::File::create(src.join("sparse")).unwrap();
        f.set_len(4 << 20).unwrap();
        let (entries, _) = scan(&src, &store, Fidelity::Full, &mut |_| {}).unwrap();
        let out = dir.path().join("out");
        materialize(&entries, &store, &out).unwrap();
        let blocks = |p: &str| std::fs::metadata(out.join(p)).unwrap().blocks() * 512;
        assert!(blocks("swapfile") >= 4 << 20, "the swap file got holes");
        assert!(blocks("sparse") < 1 << 20, "the sparse file was filled");
        // The layer's own directory comes back as it was.
        let root = &entries[0];
        assert_eq!(root.path, crate::manifest::ROOT);
        let want = std::fs::metadata(&src).unwrap();
        let got = std::fs::metadata(&out).unwrap();
        assert_eq!(got.mode(), want.mode());
        assert_eq!(got.mtime(), want.mtime());
        assert_eq!(got.mtime_nsec(), want.mtime_nsec());
    }

    #[test]
    fn scan_then_materialize_gives_the_same_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("etc/ro")).unwrap();
        std::fs::write(src.join("etc/hostname"), "host\n").unwrap();
        std::fs::write(src.join("big"), vec![7u8; 300_000]).unwrap();
        std::fs::write(src.join("empty"), "").unwrap();
        std::os::unix::fs::symlink("etc/hostname", src.join("link")).unwrap();
        std::fs::set_permissions(
            src.join("etc/hostname"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(src.join("etc/ro"), std::fs::Permissions::from_mode(0o555))
            .unwrap();
        let store = ChunkStore::open(dir.path().join("chunks")).unwrap();
        let (entries, stats) = scan(&src, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        assert_eq!((stats.files, stats.dirs, stats.symlinks), (3, 2, 1));
        // 300,000 equal bytes: a few equal 64 KiB chunks and a tail.
        assert!(stats.dedup_ratio() > 2.5, "{stats:?}");
        let out = dir.path().join("out/base-os");
        materialize(&entries, &store, &out).unwrap();
        let (again, stats2) = scan(&out, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        assert_eq!(again, entries);
        assert_eq!(stats2.new_chunks, 0);
        // A second materialize swaps the whole tree.
        let only: Vec<Entry> = entries
            .iter()
            .filter(|e| e.path == "empty")
            .cloned()
            .collect();
        materialize(&only, &store, &out).unwrap();
        assert!(!out.join("big").exists() && out.join("empty").exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "staging left behind");
    }

    #[test]
    fn a_write_whose_chunks_never_arrive_leaves_the_old_tree() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        for i in 0..40 {
            std::fs::write(src.join(format!("d/f{i:02}")), format!("file {i}\n")).unwrap();
        }
        let store = ChunkStore::open(dir.path().join("chunks")).unwrap();
        let (entries, _) = scan(&src, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        let out = dir.path().join("out/base-os");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("old"), "old\n").unwrap();
        // The fetch fails at the 20th file: the writers stop, nothing is swapped.
        let asked = AtomicUsize::new(0);
        let failing = |e: &Entry| {
            if asked.fetch_add(1, Ordering::SeqCst) == 19 {
                Err(TreeError::Unsupported {
                    path: PathBuf::from(&e.path),
                    problem: "the gateway went away".into(),
                })
            } else {
                Ok(())
            }
        };
        let e = materialize_arriving(&entries, &store, &out, &[], &failing).unwrap_err();
        assert!(e.to_string().contains("the gateway went away"), "{e}");
        assert!(asked.load(Ordering::SeqCst) < 40, "the writers went on");
        assert_eq!(std::fs::read_to_string(out.join("old")).unwrap(), "old\n");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("out")).unwrap().collect();
        assert_eq!(names.len(), 1, "staging left behind");
        // Every file asked for before it is written.
        let seen = std::sync::Mutex::new(Vec::new());
        materialize_arriving(&entries, &store, &out, &[], &|e| {
            seen.lock().unwrap().push(e.path.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.into_inner().unwrap().len(), 40);
        assert!(!out.join("old").exists() && out.join("d/f39").is_file());
    }

    #[test]
    fn an_update_links_what_is_unchanged_and_writes_the_rest() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("lib")).unwrap();
        for n in ["a", "b", "c"] {
            std::fs::write(src.join("lib").join(n), format!("{n} content").repeat(999)).unwrap();
        }
        std::os::unix::fs::symlink("lib/a", src.join("link")).unwrap();
        let store = ChunkStore::open(dir.path().join("chunks")).unwrap();
        let (v1, _) = scan(&src, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        let out = dir.path().join("out/base-os");
        materialize(&v1, &store, &out).unwrap();
        let ino = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap().ino();
        let before: Vec<u64> = ["lib/a", "lib/b", "lib/c", "link"].map(ino).to_vec();

        // v2 changes lib/b. After the scan of the live tree, lib/c is edited
        // in place, and an outside directory holding a file equal to lib/a
        // takes lib's place through a symlink.
        std::fs::write(src.join("lib/b"), "new b").unwrap();
        let (v2, _) = scan(&src, &store, Fidelity::Plain, &mut |_| {}).unwrap();
        let (current, _) = scan_into(&out, None, Fidelity::Plain, &mut |_| {}).unwrap();
        std::fs::write(out.join("lib/c"), "edited after the scan").unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::copy(src.join("lib/a"), outside.join("a")).unwrap();
        materialize_reusing(&v2, &store, &out, &current).unwrap();
        let (again, _) = scan_into(&out, None, Fidelity::Plain, &mut |_| {}).unwrap();
        assert_eq!(again, v2);
        assert_eq!(ino("link"), before[3], "the unchanged symlink is linked");
        assert_ne!(ino("lib/b"), before[1], "the changed file is new");
        assert_ne!(
            ino("lib/c"),
            before[2],
            "the file edited after the scan is written afresh"
        );
        assert_eq!(
            std::fs::read(out.join("lib/c")).unwrap(),
            std::fs::read(src.join("lib/c")).unwrap()
        );

        // The unchanged file is linked when its directory is the real one...
        let (current, _) = scan_into(&out, None, Fidelity::Plain, &mut |_| {}).unwrap();
        let a = ino("lib/a");
        materialize_reusing(&v2, &store, &out, &current).unwrap();
        assert_eq!(ino("lib/a"), a);
        // ...and never through a symlink put in its place after the scan.
        let real_lib = dir.path().join("real-lib");
        std::fs::rename(out.join("lib"), &real_lib).unwrap();
        std::os::unix::fs::symlink(&outside, out.join("lib")).unwrap();
        materialize_reusing(&v2, &store, &out, &current).unwrap();
        assert_ne!(
            ino("lib/a"),
            std::fs::metadata(outside.join("a")).unwrap().ino()
        );
        assert!(std::fs::symlink_metadata(out.join("lib")).unwrap().is_dir());
        assert!(
            outside.join("a").is_file(),
            "the swap removed what the symlink pointed at"
        );
        let (again, _) = scan_into(&out, None, Fidelity::Plain, &mut |_| {}).unwrap();
        assert_eq!(again, v2);
    }
}
