//! Closed mode in lockdown: no code runs from a place a user can write.
//!
//! The open check of [`super::closed`] refuses an ELF file a user wrote,
//! but it looks at the file when it is opened: a file that is empty or
//! text then, written into a library before the loader reads it, maps as
//! code (`LD_PRELOAD`). No check at open can close that, so the kernel does:
//! every place under the root that a user can write (a directory or file
//! not owned by root, or writable by group or others) gets `noexec` (with
//! `nosuid` and `nodev`), and the kernel then refuses `execve` there and
//! `mmap(PROT_EXEC)` of its files, whatever the timing.
//!
//! A place is confined at its top: the first user-writable directory or
//! file on the way down from a root-controlled one, so the user cannot
//! swap it for another. A whole mount whose root is user-writable (`/tmp`
//! as a tmpfs, `/dev/shm`, a stick) is remounted `noexec`; anything else is
//! bind-mounted onto itself first. The agent confines at start, when the
//! mount table changes, when the policy turns to lockdown, and every
//! [`RESCAN`] (a new user's home, a `chown` by root). Binds it made are
//! undone on a clean stop, so root's maintenance (`userdel -r`, a package
//! replacing a confined file) works with the agent stopped.
//!
//! Walking the tree opens directories only, which raise no fanotify event
//! (the marks ask for no `FAN_ONDIR`): the walk never waits on the agent.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::statvfs::{statvfs, FsFlags};

use policy::bundle::Mode;

use super::exec::{report_alarm, Active, Counters, ExecReport};
use super::mounts;

/// How often the whole root is walked again without a trigger.
pub(crate) const RESCAN: Duration = Duration::from_secs(60);

/// A place a user can write, to be made `noexec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Place {
    pub(crate) path: PathBuf,
    /// The root of a mount (remounted), not a path inside one (bound).
    pub(crate) mount_root: bool,
}

/// Whether a user other than root can change what `st` holds: its owner is
/// not root, or group or others may write it (with ACLs, the group bits are
/// the mask, so a named user's write shows there too).
pub(crate) fn user_writable(st: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    st.uid() != 0 || st.mode() & 0o022 != 0
}

/// Whether `path` is on a mount that already refuses exec.
fn noexec(path: &Path) -> Option<bool> {
    statvfs(path)
        .ok()
        .map(|s| s.flags().contains(FsFlags::ST_NOEXEC))
}

/// The user-writable places under `root` that are not `noexec` yet, by the
/// mount table `table`. Pseudo file systems are not walked.
pub(crate) fn places(root: &Path, table: &[mounts::Mount]) -> Vec<Place> {
    let points: HashSet<PathBuf> = table.iter().map(|m| m.point.clone()).collect();
    let mut starts = vec![root.to_path_buf()];
    starts.extend(
        mounts::under(root, table)
            .into_iter()
            .filter(|m| !m.noexec)
            .map(|m| m.point),
    );
    starts.sort();
    starts.dedup();
    let mut out = Vec::new();
    for s in starts {
        if noexec(&s) != Some(false) {
            continue;
        }
        let Ok(st) = std::fs::symlink_metadata(&s) else {
            continue;
        };
        if user_writable(&st) {
            out.push(Place {
                mount_root: points.contains(&s),
                path: s,
            });
        } else if st.is_dir() {
            walk(&s, &points, &mut out);
        }
    }
    out
}

/// Depth-first below a root-controlled directory, stopping at mount points
/// (walked as their own start) and at the first user-writable entry.
fn walk(dir: &Path, points: &HashSet<PathBuf>, out: &mut Vec<Place>) {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let path = e.path();
            if points.contains(&path) {
                continue;
            }
            let Ok(st) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            // Links, devices, pipes and sockets hold no code of their own.
            if !st.is_dir() && !st.is_file() {
                continue;
            }
            if user_writable(&st) {
                out.push(Place {
                    path,
                    mount_root: false,
                });
            } else if st.is_dir() {
                stack.push(path);
            }
        }
    }
}

/// The per-mount flags `path` has now, as flags for a bind remount (the
/// remount replaces them all).
fn kept_flags(path: &Path) -> nix::Result<MsFlags> {
    let have = statvfs(path)?.flags();
    let mut f = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if have.contains(st) {
            f |= ms;
        }
    }
    Ok(f)
}

/// Make one place `noexec,nosuid,nodev`. Returns whether a bind mount was
/// made (to be undone on a clean stop).
fn apply(p: &Place) -> nix::Result<bool> {
    let none: Option<&str> = None;
    let flags = kept_flags(&p.path)?
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if p.mount_root {
        mount(none, &p.path, none, flags, none)?;
        return Ok(false);
    }
    mount(Some(&p.path), &p.path, none, MsFlags::MS_BIND, none)?;
    if let Err(e) = mount(none, &p.path, none, flags, none) {
        let _ = umount2(&p.path, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(true)
}

/// What the agent has confined, and the binds it made.
pub(crate) struct Confiner {
    root: PathBuf,
    made: Vec<PathBuf>,
}

/// One pass: what was confined now, and what could not be (with why).
#[derive(Debug, Default)]
pub(crate) struct Pass {
    pub(crate) confined: Vec<String>,
    pub(crate) failed: Vec<(String, String)>,
}

impl Confiner {
    pub(crate) fn new(root: &Path) -> Confiner {
        Confiner {
            root: root.to_path_buf(),
            made: Vec::new(),
        }
    }

    /// Walk the root and confine every user-writable place not `noexec`.
    pub(crate) fn confine(&mut self) -> Pass {
        let mut pass = Pass::default();
        for p in places(&self.root, &mounts::all()) {
            let label = p.path.display().to_string();
            match apply(&p) {
                Ok(bound) => {
                    if bound {
                        self.made.push(p.path.clone());
                    }
                    pass.confined.push(label);
                }
                Err(e) => pass.failed.push((label, e.to_string())),
            }
        }
        pass
    }

    /// Undo the binds made (a clean stop), newest first.
    pub(crate) fn undo(&mut self) {
        for p in self.made.drain(..).rev() {
            if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
                tracing::warn!(path = %p.display(), error = %e, "could not undo a noexec bind");
            }
        }
    }
}

/// Report a pass: on stderr, in the status, and each failure as an alarm.
pub(crate) fn announce(pass: &Pass, counters: &Counters, report: &mut dyn FnMut(ExecReport)) {
    for c in &pass.confined {
        eprintln!("satchel agent: noexec on {c} (users can write there)");
    }
    if let Ok(mut m) = counters.confined.lock() {
        m.extend(pass.confined.iter().cloned());
    }
    for (path, e) in &pass.failed {
        report(report_alarm(
            path.clone(),
            format!("users can write here and it cannot be made noexec ({e}): code written there can be loaded"),
        )
        .attempt("noexec"));
    }
}

/// The thread that keeps confining: on a mount-table change, when the
/// policy turns to lockdown, and every [`RESCAN`]; undoes its binds when
/// `stop` is set.
pub(crate) fn keep(
    mut c: Confiner,
    active: Arc<RwLock<Arc<Active>>>,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    report: &mut dyn FnMut(ExecReport),
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::{Read as _, Seek as _};
    use std::os::fd::AsFd as _;
    let lockdown = || active.read().is_ok_and(|a| a.mode == Mode::Lockdown);
    let mut table = std::fs::File::open("/proc/self/mountinfo").ok();
    let mut was = lockdown();
    let mut last = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let changed = match table.as_mut() {
            Some(f) => {
                let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLPRI)];
                let hit = poll(&mut fds, PollTimeout::from(500u16)).is_ok_and(|n| n > 0);
                if hit {
                    let _ = f.seek(std::io::SeekFrom::Start(0));
                    let _ = f.read_to_end(&mut Vec::new());
                }
                hit
            }
            None => {
                std::thread::sleep(Duration::from_millis(500));
                false
            }
        };
        let now = lockdown();
        if now && (changed || !was || last.elapsed() >= RESCAN) {
            announce(&c.confine(), &counters, report);
            last = std::time::Instant::now();
        }
        was = now;
    }
    c.undo();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_top_user_writable_places_are_found() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let mk = |p: &str, mode: u32| {
            let path = r.join(p);
            std::fs::create_dir_all(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        std::fs::set_permissions(r, std::fs::Permissions::from_mode(0o755)).unwrap();
        mk("usr/bin", 0o755);
        mk("tmp", 0o1777);
        mk("tmp/deeper", 0o777);
        mk("srv/drop", 0o775);
        std::fs::write(r.join("usr/bin/prog"), b"x").unwrap();
        std::fs::write(r.join("usr/bin/shared"), b"x").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/shared"),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        std::os::unix::fs::symlink("/tmp", r.join("usr/bin/link")).unwrap();
        let mut points = HashSet::new();
        points.insert(r.join("srv"));
        let mut out = Vec::new();
        walk(r, &points, &mut out);
        let mut got: Vec<String> = out
            .iter()
            .map(|p| p.path.strip_prefix(r).unwrap().display().to_string())
            .collect();
        got.sort();
        let root_owned = rustix::process::geteuid().is_root();
        if root_owned {
            // Owned by root: the world-writable directory and file only
            // (not what is below them, not the link, not the other mount).
            assert_eq!(got, ["tmp", "usr/bin/shared"]);
        } else {
            // Owned by another user: everything at the top is theirs.
            assert_eq!(got, ["tmp", "usr"]);
        }
    }
}
