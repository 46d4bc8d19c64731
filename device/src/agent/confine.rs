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
//! Only the mounts that hold the system's programs may run code: the root
//! and, where they are mounts of their own, `usr`, `usr/local`, `opt`,
//! `var`, `boot`, `boot/efi` and `dev` under it (`--exec-mount` names
//! others). Every other mount under the root is remounted `noexec` in
//! place, whoever owns its files: a stick, a loop-mounted image or a FUSE
//! mount a user brought may hold files that look owned by root, and a
//! remount in place reaches every reference to the mount, also one a
//! process took before. Inside the exec mounts a place is confined at its
//! top: the first user-writable directory or file on the way down from a
//! root-controlled one, so the user cannot swap it for another; it is
//! bind-mounted onto itself first. The agent confines at start, when the
//! mount table changes, when the policy turns to lockdown, and every
//! [`RESCAN`] (a new user's home, a `chown` by root). Binds stay when the
//! agent stops (undoing one could detach what was mounted over it since,
//! and a restart would leave a gap); root removes one with `umount` for
//! maintenance (`userdel -r`).
//!
//! A bind does not reach a reference a process took before it (a shell's
//! working directory in its home, an open file): after each bind the agent
//! looks for processes of other users than root holding such a reference,
//! and reports each as an alarm (`noexec`) naming the process.
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

/// The mounts under the root that may hold programs, besides the root
/// itself, when none are configured.
pub(crate) const EXEC_MOUNTS: [&str; 7] =
    ["usr", "usr/local", "opt", "var", "boot", "boot/efi", "dev"];

/// The exec mounts under `root`: `configured` (absolute, or relative to the
/// root), else [`EXEC_MOUNTS`]; the root itself always.
pub(crate) fn exec_mounts(root: &Path, configured: &[PathBuf]) -> HashSet<PathBuf> {
    let mut out: HashSet<PathBuf> = if configured.is_empty() {
        EXEC_MOUNTS.iter().map(|m| root.join(m)).collect()
    } else {
        // Relative to the root; an absolute path outside a root other
        // than `/` is taken as the same path under it.
        configured
            .iter()
            .map(|m| match m.strip_prefix("/") {
                Err(_) => root.join(m),
                Ok(rel) if !m.starts_with(root) => root.join(rel),
                Ok(_) => m.clone(),
            })
            .collect()
    };
    out.insert(root.to_path_buf());
    out
}

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

/// The places under `root` to make `noexec`, by the mount table `table`:
/// every mount that is not an exec mount (whole), and the user-writable
/// places inside the exec mounts. Pseudo file systems are left alone.
pub(crate) fn places(root: &Path, table: &[mounts::Mount], exec: &HashSet<PathBuf>) -> Vec<Place> {
    let points: HashSet<PathBuf> = table.iter().map(|m| m.point.clone()).collect();
    let mut out = Vec::new();
    let mut starts = vec![root.to_path_buf()];
    for m in mounts::under(root, table) {
        if m.noexec {
            continue;
        }
        if exec.contains(&m.point) {
            starts.push(m.point);
        } else {
            // Not asked whether it is `noexec` already by path: a FUSE
            // mount may refuse root even a stat; the mount table said.
            out.push(Place {
                path: m.point,
                mount_root: true,
            });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out.dedup();
    starts.sort();
    starts.dedup();
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
/// remount replaces them all). A mount root cannot always be stat'ed (a
/// FUSE mount refuses root); its flags come from the mount table then.
fn kept_flags(path: &Path) -> nix::Result<MsFlags> {
    let have = match statvfs(path) {
        Ok(s) => s.flags(),
        Err(e) => {
            let table = mounts::all();
            let m = table.iter().rev().find(|m| m.point == path).ok_or(e)?;
            [
                ("ro", FsFlags::ST_RDONLY),
                ("relatime", FsFlags::ST_RELATIME),
                ("noatime", FsFlags::ST_NOATIME),
            ]
            .into_iter()
            .filter(|(o, _)| m.options.split(',').any(|x| x == *o))
            .fold(FsFlags::empty(), |f, (_, flag)| f | flag)
        }
    };
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

/// `nosymfollow` (Linux 5.10), which nix does not name: kept as it was.
const ST_NOSYMFOLLOW: u64 = 0x2000;
const MS_NOSYMFOLLOW: u64 = 256;

/// Make one place `noexec,nosuid,nodev`, keeping its other flags. A bind
/// is made onto the place first unless it is a mount's root.
fn apply(p: &Place) -> nix::Result<()> {
    let none: Option<&str> = None;
    let mut flags = kept_flags(&p.path)?
        | MsFlags::MS_REMOUNT
        | MsFlags::MS_BIND
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NODEV;
    if statvfs(&p.path).is_ok_and(|s| s.flags().bits() & ST_NOSYMFOLLOW != 0) {
        flags |= MsFlags::from_bits_retain(MS_NOSYMFOLLOW);
    }
    if p.mount_root {
        return mount(none, &p.path, none, flags, none);
    }
    mount(Some(&p.path), &p.path, none, MsFlags::MS_BIND, none)?;
    if let Err(e) = mount(none, &p.path, none, flags, none) {
        let _ = umount2(&p.path, MntFlags::MNT_DETACH);
        return Err(e);
    }
    Ok(())
}

/// The id of the mount `path` is on (as a process's reference names it,
/// for a `/proc/PID/...` link).
fn mount_id(path: &Path) -> Option<u64> {
    rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::MNT_ID,
    )
    .ok()
    .map(|s| s.stx_mnt_id)
}

/// Processes of users other than root that hold, from before `place` was
/// bound `noexec`, a reference into it (a working directory, a root, an
/// open file or directory) that still reaches the old mount, which runs
/// code: (pid, uid, the path they hold).
pub(crate) fn holders(place: &Path) -> Vec<(i32, u32, PathBuf)> {
    use std::os::unix::fs::MetadataExt as _;
    let Some(ours) = mount_id(place) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(meta) = e.metadata() else { continue };
        if meta.uid() == 0 {
            continue;
        }
        let dir = e.path();
        let mut links = vec![dir.join("cwd"), dir.join("root")];
        if let Ok(fds) = std::fs::read_dir(dir.join("fd")) {
            links.extend(fds.flatten().map(|f| f.path()));
        }
        for link in links {
            let Ok(target) = std::fs::read_link(&link) else {
                continue;
            };
            if target.starts_with(place) && mount_id(&link).is_some_and(|m| m != ours) {
                out.push((pid, meta.uid(), target));
                break;
            }
        }
    }
    out
}

/// What the agent confines.
pub(crate) struct Confiner {
    root: PathBuf,
    exec: HashSet<PathBuf>,
}

/// One pass: what was confined now, what could not be (with why), and the
/// processes holding references from before.
#[derive(Debug, Default)]
pub(crate) struct Pass {
    pub(crate) confined: Vec<String>,
    pub(crate) failed: Vec<(String, String)>,
    pub(crate) holders: Vec<(i32, u32, PathBuf)>,
}

impl Confiner {
    pub(crate) fn new(root: &Path, exec: &[PathBuf]) -> Confiner {
        Confiner {
            root: root.to_path_buf(),
            exec: exec_mounts(root, exec),
        }
    }

    /// Make every non-exec mount and every user-writable place in the exec
    /// mounts `noexec`, and find who still holds the old mounts.
    pub(crate) fn confine(&mut self) -> Pass {
        let mut pass = Pass::default();
        for p in places(&self.root, &mounts::all(), &self.exec) {
            let label = p.path.display().to_string();
            match apply(&p) {
                Ok(()) => {
                    if !p.mount_root {
                        pass.holders.extend(holders(&p.path));
                    }
                    pass.confined.push(label);
                }
                Err(e) => pass.failed.push((label, e.to_string())),
            }
        }
        pass
    }
}

fn flush(fan: &nix::sys::fanotify::Fanotify) {
    if let Err(e) = super::exec::flush_kernel_cache(fan) {
        tracing::warn!(error = %e, "dropping the kernel's cached answers failed");
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
        report(
            report_alarm(
                path.clone(),
                format!("this cannot be made noexec ({e}): code written there can be loaded"),
            )
            .attempt("noexec"),
        );
    }
    for (pid, uid, path) in &pass.holders {
        let mut r = report_alarm(
            path.display().to_string(),
            format!("process {pid} of uid {uid} holds this from before it was made noexec and can still run code written there: end its session"),
        )
        .attempt("noexec");
        r.pid = *pid;
        report(r);
    }
}

/// The thread that keeps confining: on a mount-table change, when the
/// policy turns to lockdown, and every [`RESCAN`], until `stop` is set.
pub(crate) fn keep(
    mut c: Confiner,
    fan: Arc<nix::sys::fanotify::Fanotify>,
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
    let mut flush_again = false;
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
        if std::mem::take(&mut flush_again) {
            flush(&fan);
        }
        let now = lockdown();
        if now && (changed || !was || last.elapsed() >= RESCAN) {
            let pass = c.confine();
            if !pass.confined.is_empty() {
                // A system file opened before its mount was made noexec may
                // be answered by the kernel from then on (an ignore mark):
                // drop them all, now and once more after a decision made
                // meanwhile could have set one.
                flush(&fan);
                flush_again = true;
            }
            announce(&pass, &counters, report);
            last = std::time::Instant::now();
        }
        was = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_mounts_are_under_the_root() {
        let r = Path::new("/srv/device");
        let m = exec_mounts(r, &[]);
        assert!(m.contains(r) && m.contains(&r.join("usr")) && m.contains(&r.join("boot/efi")));
        let m = exec_mounts(r, &[PathBuf::from("apps"), PathBuf::from("/opt")]);
        assert_eq!(m.len(), 3, "{m:?}");
        assert!(m.contains(&r.join("apps")) && m.contains(&r.join("opt")));
        let m = exec_mounts(
            Path::new("/"),
            &[PathBuf::from("/srv/apps"), PathBuf::from("x")],
        );
        assert!(m.contains(Path::new("/srv/apps")) && m.contains(Path::new("/x")));
        assert!(m.contains(Path::new("/")));
    }

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
