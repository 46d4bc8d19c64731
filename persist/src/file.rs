//! Durable file writes: write a temporary file beside the target, sync it,
//! move it into place, sync the directory. After [`write_atomic`] returns,
//! a crash or power cut leaves the new content under the name; before, the
//! old content (or nothing, if there was none). Never half of either.
//!
//! The temporary file is created with `O_EXCL` under a name no other writer
//! uses, so two writers of one path never write into each other's file; the
//! last rename wins.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file could not be written durably.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileError {
    /// Writing, syncing or renaming failed.
    #[error("cannot write {path}")]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: io::Error,
    },
    /// [`write_new`] found a file already there.
    #[error("{path} already exists; not overwriting it")]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// The path names no file (it ends in `..` or `/`).
    #[error("{path} is not a file name")]
    NotAFile {
        /// The path as given.
        path: PathBuf,
    },
}

impl FileError {
    /// The path the error is about.
    pub fn path(&self) -> &Path {
        match self {
            FileError::Io { path, .. }
            | FileError::Exists { path }
            | FileError::NotAFile { path } => path,
        }
    }
}

/// Whether the write may replace an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replace {
    Never,
    Allowed,
}

/// Write `bytes` to `path` with mode 0644, replacing what is there,
/// durably (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write(path, bytes, 0o644, Replace::Allowed)
}

/// [`write_atomic`] for secrets: mode 0600 from the first byte written.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write(path, bytes, 0o600, Replace::Allowed)
}

/// Write `bytes` to `path` with `mode`, durably, only if no file is there:
/// the name appears with its whole content or not at all (the synced
/// temporary file is hard-linked into place).
pub fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    write(path, bytes, mode, Replace::Never)
}

/// Write `bytes` to `path` with `mode`, replacing what is there, durably.
pub fn write_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    write(path, bytes, mode, Replace::Allowed)
}

/// [`write_new`] for stores that make many files durable at once (one
/// `syncfs` per batch, before the batch is reported stored): the file
/// appears whole or not at all, but neither it nor its directory entry is
/// synced here.
pub fn write_new_batched(path: &Path, bytes: &[u8], mode: u32) -> Result<(), FileError> {
    let mut file = AtomicFile::create(path, mode)?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.file = None;
    move_into_place(&file.tmp, path, Replace::Never)
}

fn write(path: &Path, bytes: &[u8], mode: u32, replace: Replace) -> Result<(), FileError> {
    let mut file = AtomicFile::create(path, mode)?;
    file.write_all(bytes).map_err(io_error(path))?;
    file.finish(replace)
}

/// A file being written in full under a temporary name, for content that
/// arrives in pieces (an export, a stream). [`AtomicFile::commit`] makes it
/// the file at its path, durably; dropped uncommitted, it leaves nothing.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Start writing the file that will be `path`, with `mode`.
    pub fn create(path: &Path, mode: u32) -> Result<AtomicFile, FileError> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let tmp = temp_name(path)?;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_error(path))?;
        Ok(AtomicFile {
            path: path.to_owned(),
            tmp,
            file: Some(file),
        })
    }

    /// Sync the content, rename it over the path, sync the directory.
    pub fn commit(self) -> Result<(), FileError> {
        self.finish(Replace::Allowed)
    }

    fn finish(mut self, replace: Replace) -> Result<(), FileError> {
        let path = self.path.clone();
        if let Some(file) = self.file.take() {
            file.sync_all().map_err(io_error(&path))?;
        }
        move_into_place(&self.tmp, &path, replace)?;
        sync_dir(parent(&path)).map_err(io_error(&path))
    }
}

impl io::Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.file {
            Some(f) => f.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), File::flush)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Committed files were renamed away; this only removes leftovers.
        let _ = fs::remove_file(&self.tmp);
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// A name beside `path` that no other writer in this or another process uses.
fn temp_name(path: &Path) -> Result<PathBuf, FileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| FileError::NotAFile {
        path: path.to_owned(),
    })?;
    Ok(parent(path).join(format!(
        ".{}.{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Move the synced temporary file `tmp` to `path`.
fn move_into_place(tmp: &Path, path: &Path, replace: Replace) -> Result<(), FileError> {
    if replace == Replace::Allowed {
        return fs::rename(tmp, path).map_err(io_error(path));
    }
    let linked = fs::hard_link(tmp, path);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(FileError::Exists {
            path: path.to_owned(),
        }),
        Err(e) => Err(io_error(path)(e)),
    }
}

/// Sync `dir`, so that a rename or a new name in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Create `dir` and its missing parents, syncing each parent whose entries
/// changed, so that the new directories survive a crash.
pub fn create_dir_all(dir: &Path) -> Result<(), FileError> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(up) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dir_all(up)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => sync_dir(parent(dir)).map_err(io_error(dir)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(io_error(dir)(e)),
    }
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn replaces_and_keeps_the_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        write_atomic(&p, b"one").unwrap();
        write_secret(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn write_new_never_overwrites() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        write_new(&p, b"first", 0o600).unwrap();
        let e = write_new(&p, b"second", 0o600).unwrap_err();
        assert!(matches!(e, FileError::Exists { .. }), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"first");
        assert_eq!(
            fs::read_dir(d.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("no/such/dir/f");
        let e = write_atomic(&p, b"x").unwrap_err();
        assert_eq!(e.path(), p);
        assert!(matches!(
            write_atomic(Path::new("/"), b"x"),
            Err(FileError::NotAFile { .. })
        ));
    }

    #[test]
    fn an_uncommitted_file_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("export");
        write_atomic(&p, b"old").unwrap();
        let mut f = AtomicFile::create(&p, 0o644).unwrap();
        f.write_all(b"half").unwrap();
        drop(f);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        let mut f = AtomicFile::create(&p, 0o644).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn create_dir_all_makes_every_level() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c");
        create_dir_all(&p).unwrap();
        create_dir_all(&p).unwrap();
        assert!(p.is_dir());
    }
}
