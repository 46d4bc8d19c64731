//! Closed mode (`satchel agent --root DIR`): the ways around an exec
//! allowlist that a user with a shell has, and what closes each.
//!
//! - Every file system at or under the root is marked, also one mounted
//!   later (the mount table is watched), so no user-writable place runs
//!   unmarked programs (`/dev/shm`, `/tmp`, a USB stick).
//! - The dynamic loader run as a program (`ld.so ./denied`) is allowed to
//!   start, since the kernel loads the same file for every dynamic program,
//!   but it may open nothing on a marked file system: the program it was
//!   asked to load never maps. A process is "the loader run as a program"
//!   when its executable (`/proc/PID/exe`, set by the kernel at exec) is a
//!   loader.
//! - An interpreter (a shell, python, perl, ...) may open system files
//!   (owned by root, writable by no one else: a user cannot author one) and
//!   files the policy allows as programs (an allowlisted script); anything
//!   else is refused, so `sh denied.sh` and `python3 denied.py` fail with
//!   `EPERM`. What an interpreter reads from a pipe, a terminal or its
//!   command line it still runs: an interpreter the policy lets a user
//!   start is a shell on purpose (docs/agent.md).
//! - Path rules count only for a path a user cannot re-point: the path
//!   read back names the same inode in the agent's mount namespace (no
//!   bind mount over it elsewhere), and the file and every directory
//!   above it are owned by root and writable by no one else (a sticky
//!   directory such as `/tmp` counts as safe).
//! - The kernel settings in [`super::system`] close memfd execs and new
//!   user namespaces.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::fanotify::{Fanotify, MarkFlags, MaskFlags};

use super::mounts;

/// (device, inode).
pub(crate) type FileId = (u64, u64);

/// Interpreter names looked for under the root when none are configured.
const INTERPRETERS: [&str; 14] = [
    "sh", "dash", "bash", "zsh", "ksh", "busybox", "python3", "python", "perl", "ruby", "node",
    "php", "lua", "tclsh",
];

/// Directories (under the root) that hold programs and loaders.
const BIN_DIRS: [&str; 4] = ["bin", "usr/bin", "sbin", "usr/sbin"];
const LIB_DIRS: [&str; 4] = ["lib", "lib64", "usr/lib", "usr/lib64"];

/// The events each marked file system reports.
pub(crate) fn mask(closed: bool) -> MaskFlags {
    let exec = MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE;
    if closed {
        exec | MaskFlags::FAN_OPEN_PERM
    } else {
        exec
    }
}

/// What closed mode knows.
pub(crate) struct Closed {
    /// The root whose file systems are all marked.
    pub(crate) root: PathBuf,
    /// The dynamic loaders found under the root, and the agent's own.
    pub(crate) loaders: HashMap<FileId, String>,
    /// The interpreters, with their paths for reports.
    pub(crate) interpreters: HashMap<FileId, String>,
    /// The devices (`major:minor`) marked so far.
    marked: HashSet<String>,
    /// Open on `/proc/self/mountinfo`: readable with `POLLPRI` when the
    /// mount table changes.
    pub(crate) mountinfo: std::fs::File,
    /// The devices of every file system in the agent's mount table, and
    /// when they were read.
    known: HashSet<u64>,
    known_at: std::time::Instant,
    /// Devices under the root that could not be marked: their programs
    /// were never decided, like those of another namespace's mounts.
    unmarked: HashSet<u64>,
    /// A mount could not be looked up as itself (see [`Closed::retry`]).
    retry: bool,
}

/// Why closed mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClosedError {
    /// The root is not a directory.
    #[error("--root {path}: {source}")]
    Root {
        /// The root.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A configured interpreter does not exist.
    #[error("--interpreter {path}: {source}")]
    Interpreter {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn id_of(path: &Path) -> Option<FileId> {
    rustix::fs::stat(path).ok().map(|s| (s.st_dev, s.st_ino))
}

/// Loaders under `root`: `ld-linux*`, `ld-musl*` and `ld.so` in the library
/// directories and their `*-linux-*` subdirectories.
fn find_loaders(root: &Path) -> HashMap<FileId, String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for d in LIB_DIRS {
        let dir = root.join(d);
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().contains("-linux-") {
                    dirs.push(e.path());
                }
            }
        }
        dirs.push(dir);
    }
    let mut out = HashMap::new();
    for d in dirs {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so" {
                if let Some(id) = id_of(&e.path()) {
                    out.entry(id)
                        .or_insert_with(|| e.path().display().to_string());
                }
            }
        }
    }
    out
}

/// The interpreters: the configured paths, or the well-known names found in
/// the root's program directories (`python3.11` counts as `python3`).
fn find_interpreters(
    root: &Path,
    configured: &[PathBuf],
) -> Result<HashMap<FileId, String>, ClosedError> {
    let mut out = HashMap::new();
    if !configured.is_empty() {
        for p in configured {
            let s = rustix::fs::stat(p).map_err(|e| ClosedError::Interpreter {
                path: p.display().to_string(),
                source: e.into(),
            })?;
            out.insert((s.st_dev, s.st_ino), p.display().to_string());
        }
        return Ok(out);
    }
    for d in BIN_DIRS {
        let Ok(rd) = std::fs::read_dir(root.join(d)) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
            if INTERPRETERS.contains(&stem) || INTERPRETERS.contains(&name.as_str()) {
                if let Some(id) = id_of(&e.path()) {
                    out.entry(id)
                        .or_insert_with(|| e.path().display().to_string());
                }
            }
        }
    }
    Ok(out)
}

impl Closed {
    /// Find the loaders and interpreters under `root`. Nothing is marked
    /// yet: [`Closed::mark_new`] does that.
    pub(crate) fn new(
        root: &Path,
        interpreters: &[PathBuf],
        own_loaders: &[PathBuf],
    ) -> Result<Closed, ClosedError> {
        let root_err = |source| ClosedError::Root {
            path: root.display().to_string(),
            source,
        };
        let root = std::fs::canonicalize(root).map_err(root_err)?;
        let mountinfo = std::fs::File::open("/proc/self/mountinfo").map_err(root_err)?;
        let mut loaders = find_loaders(&root);
        for p in own_loaders {
            if let Some(id) = id_of(p) {
                loaders.entry(id).or_insert_with(|| p.display().to_string());
            }
        }
        Ok(Closed {
            interpreters: find_interpreters(&root, interpreters)?,
            root,
            loaders,
            marked: HashSet::new(),
            mountinfo,
            known: devices_of(&mounts::all()),
            known_at: std::time::Instant::now(),
            unmarked: HashSet::new(),
            retry: false,
        })
    }

    /// Whether the last look met a mount it could not look up as itself
    /// (its path moved meanwhile): the next poll looks again.
    pub(crate) fn retry(&self) -> bool {
        self.retry
    }

    /// Look again at the next poll (a FUSE mount whose path moved while it
    /// was being unmounted).
    pub(crate) fn try_again(&mut self) {
        self.retry = true;
    }

    /// Mark every file system under the root not marked yet. Returns the
    /// mounts newly marked and those that could not be (with why). A
    /// `noexec` mount that cannot be marked runs no program, and is left;
    /// a FUSE one is reported all the same: an interpreter reads scripts
    /// from it unseen.
    pub(crate) fn mark_new(
        &mut self,
        fan: &Fanotify,
    ) -> (Vec<String>, Vec<(mounts::Mount, nix::Error)>) {
        let (mut added, mut failed) = (Vec::new(), Vec::new());
        let table = mounts::all();
        self.known = devices_of(&table);
        self.known_at = std::time::Instant::now();
        self.retry = false;
        for m in mounts::under(&self.root, &table) {
            if self.marked.contains(&m.dev) {
                continue;
            }
            // The path is looked up once, and what it names must be that
            // mount: a user renaming a directory above a mount point while
            // the agent looks would otherwise have another file system
            // marked in its place. A mismatch is tried again at the next poll.
            let Some(fd) = open_mount(&m) else {
                self.retry = true;
                continue;
            };
            // Marked through the descriptor's magic link: the very object
            // looked up (fanotify takes no O_PATH descriptor alone).
            let by_fd = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&fd)
            ));
            let r = fan.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                mask(true),
                rustix::fs::CWD,
                Some(by_fd.as_path()),
            );
            let label = format!("{} ({})", m.point.display(), m.fstype);
            match r {
                Ok(()) => {
                    // A device number is used again after an unmount.
                    for d in devices_of(std::slice::from_ref(&m)) {
                        self.unmarked.remove(&d);
                    }
                    self.marked.insert(m.dev);
                    added.push(label);
                }
                Err(_) if m.noexec && !is_fuse(&m) => {
                    self.marked.insert(m.dev);
                }
                Err(e) => {
                    self.unmarked.extend(devices_of(std::slice::from_ref(&m)));
                    failed.push((m, e));
                }
            }
        }
        (added, failed)
    }

    /// Whether a file on device `dev` is on a file system of the agent's
    /// mount table. One that is not was mounted in another mount namespace
    /// (a user namespace's fresh tmpfs): nothing there is marked.
    pub(crate) fn known_device(&mut self, dev: u64) -> bool {
        // The table is read again on a change (see `mark_new`); a miss reads
        // it at most once a second, so a process running from another
        // namespace cannot make every one of its opens cost a re-read.
        if !self.known.contains(&dev) && self.known_at.elapsed() > std::time::Duration::from_secs(1)
        {
            self.known = devices_of(&mounts::all());
            self.known_at = std::time::Instant::now();
        }
        self.known.contains(&dev) && !self.unmarked.contains(&dev)
    }

    /// The mount table's descriptor, for `poll`.
    pub(crate) fn watch(&self) -> std::os::fd::BorrowedFd<'_> {
        self.mountinfo.as_fd()
    }

    /// After a `POLLPRI` on [`Closed::watch`]: read the table to the end,
    /// which re-arms the notification.
    pub(crate) fn rearm(&mut self) {
        use std::io::{Read as _, Seek as _};
        let _ = self.mountinfo.seek(std::io::SeekFrom::Start(0));
        let mut sink = Vec::new();
        let _ = self.mountinfo.read_to_end(&mut sink);
    }
}

/// Whether `m` is a FUSE file system (`fuse`, `fuse.sshfs`, `fuseblk`): one
/// a user can mount with the setuid `fusermount`.
pub(crate) fn is_fuse(m: &mounts::Mount) -> bool {
    m.fstype == "fuse" || m.fstype == "fuseblk" || m.fstype.starts_with("fuse.")
}

/// Lazily unmount the FUSE file system mounted at `point`. The path is
/// opened following no symbolic link (a user who owns a directory on the
/// way could swap it for one, to have root unmount something else), and
/// what it names must be a FUSE file system's root; the unmount then goes
/// through that descriptor.
pub(crate) fn unmount_fuse(m: &mounts::Mount) -> nix::Result<()> {
    const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
    let fd = open_mount(m).ok_or(nix::Error::EAGAIN)?;
    // A FUSE file system answers statfs with its magic even to a process it
    // does not let in.
    #[allow(clippy::unnecessary_cast)]
    let fuse = rustix::fs::fstatfs(&fd).is_ok_and(|s| s.f_type as i64 == FUSE_SUPER_MAGIC);
    if !fuse {
        return Err(nix::Error::EINVAL);
    }
    use std::os::fd::AsRawFd as _;
    nix::mount::umount2(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        nix::mount::MntFlags::MNT_DETACH,
    )
}

/// Mount `m`, opened through its path with no symlink on the way, if that
/// is still on mount `m` (by the kernel's mount id); `None` if the path
/// names something else now.
pub(crate) fn open_mount(m: &mounts::Mount) -> Option<std::os::fd::OwnedFd> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        &m.point,
        OFlags::PATH | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
        ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .ok()?;
    // The mount id from the descriptor's own entry in /proc: no call into
    // the file system (a FUSE server refuses root even a stat).
    let info = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&fd)
    ))
    .ok()?;
    let id: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))?
        .trim()
        .parse()
        .ok()?;
    (id == m.id).then_some(fd)
}

/// The devices (as `st_dev`) of the file systems in a mount table.
fn devices_of(table: &[mounts::Mount]) -> HashSet<u64> {
    table
        .iter()
        .filter_map(|m| {
            let (major, minor) = m.dev.split_once(':')?;
            Some(rustix::fs::makedev(
                major.parse().ok()?,
                minor.parse().ok()?,
            ))
        })
        .collect()
}

/// A file a user cannot have authored: owned by root and writable by no one
/// else (with ACLs, the group bits are the ACL mask).
pub(crate) fn system_file(st: &rustix::fs::Stat) -> bool {
    st.st_uid == 0 && st.st_mode & 0o022 == 0
}

/// Whether the file behind `fd` is on a mount that refuses exec.
pub(crate) fn on_noexec(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    rustix::fs::fstatvfs(fd).is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::NOEXEC))
}

/// Whether path rules may decide for the file `st` read back as `path`:
/// the path names that very inode here, and neither the file nor any
/// directory above it can be changed by anyone but root.
pub(crate) fn path_trust(path: &str, st: &rustix::fs::Stat) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(format!("the path {path:?} cannot be resolved here"));
    }
    match rustix::fs::lstat(p) {
        Ok(s) if (s.st_dev, s.st_ino) == (st.st_dev, st.st_ino) => {}
        _ => {
            return Err(format!(
                "{path} names another file here (a bind mount or a rename)"
            ))
        }
    }
    if !system_file(st) {
        return Err(format!("{path} is writable by uid {} or others", st.st_uid));
    }
    for dir in p.ancestors().skip(1) {
        let s = rustix::fs::lstat(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let sticky = s.st_mode & 0o1000 != 0;
        if s.st_uid != 0 || (s.st_mode & 0o022 != 0 && !sticky) {
            return Err(format!(
                "{} can be changed by uid {} or others",
                dir.display(),
                s.st_uid
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_are_trusted_and_user_ones_are_not() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let st = rustix::fs::stat(&sh).unwrap();
        if st.st_uid == 0 {
            assert_eq!(path_trust(&sh.display().to_string(), &st), Ok(()));
        }
        let other = rustix::fs::stat("/").unwrap();
        let e = path_trust(&sh.display().to_string(), &other).unwrap_err();
        assert!(e.contains("names another file"), "{e}");
        assert!(path_trust("relative/x", &st).is_err());
    }

    #[test]
    fn the_fuse_unmount_follows_no_link_and_touches_nothing_else() {
        // A student who owns a directory on the way swaps it for a link to
        // something root mounted: the unmount refuses the path.
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("swapped")).unwrap();
        let table = mounts::all();
        let holding = |p: &Path| {
            let mut best = table[0].clone();
            for m in &table {
                if p.starts_with(&m.point) && m.point.starts_with(&best.point) {
                    best = m.clone();
                }
            }
            best
        };
        let at = |m: &mounts::Mount, p: PathBuf| mounts::Mount {
            point: p,
            ..m.clone()
        };
        let home = holding(&real);
        assert!(unmount_fuse(&at(&home, d.path().join("swapped"))).is_err());
        assert!(unmount_fuse(&at(&home, d.path().join("swapped/.."))).is_err());
        // A path that is no longer the mount's root (a directory renamed
        // into its place) is not that mount: nothing is done to it.
        assert!(open_mount(&at(&home, real.clone())).is_none());
        assert_eq!(
            unmount_fuse(&at(&home, real.clone())),
            Err(nix::Error::EAGAIN)
        );
        // The mount itself, found as itself, is no FUSE file system: left alone.
        assert!(open_mount(&home).is_some());
        assert_eq!(unmount_fuse(&home), Err(nix::Error::EINVAL));
        assert!(real.exists());
    }

    #[test]
    fn loaders_and_interpreters_are_found_under_a_root() {
        let c = Closed::new(Path::new("/"), &[], &[]).unwrap();
        assert!(
            c.loaders.values().any(|p| p.contains("ld-")),
            "{:?}",
            c.loaders
        );
        assert!(
            c.interpreters
                .values()
                .any(|p| p.ends_with("/sh") || p.ends_with("dash")),
            "{:?}",
            c.interpreters
        );
    }
}
