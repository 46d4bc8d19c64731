//! Exec enforcement with fanotify: every `execve` of a file on a marked mount
//! waits for this module's answer.
//!
//! - The group is `FAN_CLASS_CONTENT` with an unlimited queue (a full queue
//!   would make the kernel allow without asking). Each configured mount
//!   point's file system gets a `FAN_MARK_FILESYSTEM` mark for
//!   `FAN_OPEN_EXEC_PERM` (the decision) and `FAN_CLOSE_WRITE` (a file
//!   written there drops out of the cache). A file-system mark covers every
//!   mount of that file system, also the copies in other mount namespaces
//!   (`unshare -m` does not escape it). A path that is not a mount point is
//!   refused: marking it would mark the file system holding it.
//! - The file behind the event's descriptor is hashed (SHA-256) and decided
//!   with the policy fast path for the device's subject. The hash is cached
//!   by (device, inode) together with the change time, modification time and
//!   size; a differing stat, or a close after writing, means hash again. A
//!   file open for writing cannot be executed (`ETXTBSY`), so the bytes
//!   hashed are the bytes run.
//! - Lockdown answers `FAN_DENY` to a deny: the caller's `execve` fails with
//!   `EPERM` ("Operation not permitted"). Monitor answers `FAN_ALLOW` and
//!   reports the deny.
//! - Never denied, whatever the policy: this agent's own executable and the
//!   dynamic loader it runs under (known by device and inode, read at start
//!   from `/proc/self/exe` and `/proc/self/maps`), and execs by the agent's
//!   own process.
//! - Every event is answered, also when hashing fails (lockdown then denies:
//!   an unreadable program does not run). If the agent dies, the kernel drops
//!   its marks and allows every exec: `satchel agent` reports that gap at its
//!   next start.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use nix::poll::{PollFd, PollFlags, PollTimeout};

use super::closed::{self, Closed, ClosedError, FileId};
use nix::sys::fanotify::{
    EventFFlags, Fanotify, FanotifyResponse, InitFlags, MarkFlags, MaskFlags, Response,
};
use policy::bundle::Mode;
use policy::{FastPolicy, Request};
use sha2::Digest as _;

/// The policy in force, swapped whole when a newer bundle is accepted.
#[derive(Debug)]
pub(crate) struct Active {
    /// The compiled policy.
    pub(crate) policy: FastPolicy,
    /// Whether a deny is enforced.
    pub(crate) mode: Mode,
    /// The bundle version it came from.
    pub(crate) version: u64,
    /// Who decides: this device's subject, e.g. `device:laptop-17`.
    pub(crate) subject: String,
}

/// What the enforcer tells the rest of the agent about one exec.
#[derive(Debug, Clone)]
pub(crate) struct ExecReport {
    /// When, milliseconds since the epoch.
    pub(crate) at_ms: i64,
    /// The program's path as the agent sees it.
    pub(crate) path: String,
    /// Its SHA-256, hex (empty when it could not be read).
    pub(crate) sha256: String,
    /// The process that asked.
    pub(crate) pid: i32,
    /// `allow`, `deny`, or `deny-monitored` (monitor mode let it run).
    pub(crate) decision: &'static str,
    /// What was tried: `exec`, `loader` (the dynamic loader run as a
    /// program opening a file), `script` (an interpreter opening a file),
    /// `changed` (a program written while it was checked or started),
    /// `unmarked` (a program from a file system mounted in another
    /// namespace opening a file),
    /// `mount` (a file system under the root that could not be marked), or
    /// `noexec` (a place users can write that could not be made `noexec`).
    pub(crate) attempt: &'static str,
    /// The deciding rule, or why there was none.
    pub(crate) why: String,
}

/// Counters for `satchel agent status`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Exec events answered.
    pub(crate) events: AtomicU64,
    /// Of those, answered from the hash cache.
    pub(crate) cache_hits: AtomicU64,
    /// Denied (lockdown).
    pub(crate) denied: AtomicU64,
    /// Denies let through in monitor mode.
    pub(crate) monitored: AtomicU64,
    /// Nanoseconds spent deciding (from the event read to the answer),
    /// summed over all exec events the agent saw.
    pub(crate) decide_ns: AtomicU64,
    /// Files the kernel now allows without asking (until modified, or until
    /// the policy changes).
    pub(crate) kernel_cached: AtomicU64,
    /// Open events answered (closed mode).
    pub(crate) opens: AtomicU64,
    /// The file systems marked, as `MOUNT_POINT (TYPE)`.
    pub(crate) marked: std::sync::Mutex<Vec<String>>,
    /// The places users can write that the agent made `noexec`.
    pub(crate) confined: std::sync::Mutex<Vec<String>>,
}

/// Drop every ignore mark (the inode marks; the mount marks stay), so the
/// next exec of every file is decided again: called after a policy change.
pub(crate) fn flush_kernel_cache(fan: &Fanotify) -> nix::Result<()> {
    fan.mark(
        MarkFlags::FAN_MARK_FLUSH,
        MaskFlags::empty(),
        rustix::fs::CWD,
        None::<&Path>,
    )
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: i64,
}

impl Stamp {
    fn of(s: &rustix::fs::Stat) -> Stamp {
        // The nanosecond fields are narrower integers on some architectures.
        #[allow(clippy::unnecessary_cast)]
        Stamp {
            ctime: (s.st_ctime, s.st_ctime_nsec as i64),
            mtime: (s.st_mtime, s.st_mtime_nsec as i64),
            size: s.st_size,
        }
    }
}

/// The path of the file behind an event's descriptor, as this mount
/// namespace names it (empty if it has none).
fn fd_path(fd: BorrowedFd<'_>) -> String {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl ExecReport {
    /// The same report, for another kind of attempt than an exec.
    pub(crate) fn attempt(mut self, attempt: &'static str) -> ExecReport {
        self.attempt = attempt;
        self
    }
}

/// An alarm about enforcement itself (no process asked).
pub(crate) fn report_alarm(path: String, why: String) -> ExecReport {
    report(path, String::new(), 0, "alarm", why)
}

/// Why enforcement could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `fanotify_init` failed (not root, or no fanotify in this kernel).
    #[error("fanotify is unavailable here ({0}); run as root on a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS")]
    Init(nix::Error),
    /// A configured path is not a mount point.
    #[error("{path} is not a mount point; name the mount points whose file systems the agent decides for (see /proc/self/mountinfo)")]
    NotAMount {
        /// The path.
        path: String,
    },
    /// Closed mode could not start.
    #[error(transparent)]
    Closed(#[from] ClosedError),
    /// A mount could not be marked.
    #[error("cannot mark {path} for exec decisions: {source}")]
    Mark {
        /// The mount.
        path: String,
        /// Why.
        source: nix::Error,
    },
}

/// The decision word of a deny: enforced, or only reported (monitor mode).
fn denial(enforce: bool) -> &'static str {
    if enforce {
        "deny"
    } else {
        "deny-monitored"
    }
}

/// A decision as reported to the service loop.
fn report(
    path: String,
    sha256: String,
    pid: i32,
    decision: &'static str,
    why: String,
) -> ExecReport {
    ExecReport {
        at_ms: audit::batch::now_ms(),
        path,
        sha256,
        pid,
        decision,
        why,
        attempt: "exec",
    }
}

/// How long after allowing an exec a write to the program still counts as
/// a write while it started (the kernel takes the program's write lock
/// right after the answer).
const STARTING: std::time::Duration = std::time::Duration::from_millis(250);

/// The fanotify group and the cache.
pub(crate) struct Enforcer {
    fan: Arc<Fanotify>,
    cache: HashMap<(u64, u64), (Stamp, String)>,
    trusted: HashSet<(u64, u64)>,
    own_pid: i32,
    active: Arc<RwLock<Arc<Active>>>,
    counters: Arc<Counters>,
    buf: Vec<u8>,
    /// Closed mode (`--root`): every file system marked, the loader and
    /// interpreters restricted.
    closed: Option<Closed>,
    /// Programs allowed in the last [`STARTING`]: a change seen in that
    /// time means the bytes run may not be the bytes checked.
    starting: HashMap<FileId, (i32, Stamp, std::time::Instant, String)>,
}

/// (device, inode) of a path, if it can be stat'ed.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    rustix::fs::stat(path).ok().map(|s| (s.st_dev, s.st_ino))
}

/// The files exec must never be denied: this executable and its loader.
fn trusted_files() -> (HashSet<(u64, u64)>, Vec<PathBuf>) {
    let mut paths = vec![PathBuf::from("/proc/self/exe")];
    if let Ok(maps) = std::fs::read_to_string("/proc/self/maps") {
        for line in maps.lines() {
            if let Some(p) = line.split_whitespace().nth(5) {
                let name = Path::new(p)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if name.starts_with("ld-linux") || name.starts_with("ld-musl") || name == "ld.so" {
                    paths.push(PathBuf::from(p));
                }
            }
        }
    }
    let ids = paths.iter().filter_map(|p| file_id(p)).collect();
    (ids, paths)
}

impl Enforcer {
    /// Make the group and mark every mount: the named ones, and with a
    /// `root` (closed mode) every file system under it.
    pub(crate) fn start(
        mounts: &[PathBuf],
        root: Option<(&Path, &[PathBuf])>,
        active: Arc<RwLock<Arc<Active>>>,
        counters: Arc<Counters>,
    ) -> Result<Enforcer, StartError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE
                | InitFlags::FAN_UNLIMITED_MARKS,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(StartError::Init)?;
        let (trusted, paths) = trusted_files();
        tracing::info!(?paths, "never denied");
        // Found before anything is marked: the agent's own reads of the
        // root must not wait for its own answers.
        let mut closed = match root {
            Some((r, interpreters)) => Some(Closed::new(r, interpreters, &paths[1..])?),
            None => None,
        };
        let points = super::mounts::points();
        let mut marked = Vec::new();
        for m in mounts {
            let canonical = std::fs::canonicalize(m).unwrap_or_else(|_| m.clone());
            if !points.contains(&canonical) {
                return Err(StartError::NotAMount {
                    path: m.display().to_string(),
                });
            }
            fan.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_FILESYSTEM,
                closed::mask(closed.is_some()),
                rustix::fs::CWD,
                Some(m.as_path()),
            )
            .map_err(|source| StartError::Mark {
                path: m.display().to_string(),
                source,
            })?;
            marked.push(m.display().to_string());
        }
        if let Some(c) = closed.as_mut() {
            // A mount under the root that cannot be marked (a user's FUSE
            // mount refuses root) is an alarm, not a reason to enforce
            // nothing: in lockdown it is made noexec like every mount that
            // is not an exec mount.
            let (added, failed) = c.mark_new(&fan);
            let lockdown = active.read().is_ok_and(|a| a.mode == Mode::Lockdown);
            for (m, source) in failed {
                match unmarkable(&m, source, lockdown) {
                    Some(why) => eprintln!("satchel agent: ALARM: {}: {why}", m.point.display()),
                    None => c.try_again(),
                }
            }
            marked.extend(added);
        }
        if let Ok(mut m) = counters.marked.lock() {
            *m = marked;
        }
        Ok(Enforcer {
            fan: Arc::new(fan),
            cache: HashMap::new(),
            trusted,
            own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
            active,
            counters,
            buf: vec![0u8; 256 << 10],
            closed,
            starting: HashMap::new(),
        })
    }

    /// Wait up to 200 ms for events (or, in closed mode, a change of the
    /// mount table, which marks what was mounted). Whether events wait.
    fn wait(&mut self, report: &mut dyn FnMut(ExecReport)) -> bool {
        let (fan_ready, mounts_changed) = {
            let mut fds = vec![PollFd::new(self.fan.as_fd(), PollFlags::POLLIN)];
            if let Some(c) = &self.closed {
                fds.push(PollFd::new(c.watch(), PollFlags::POLLPRI));
            }
            match nix::poll::poll(&mut fds, PollTimeout::from(200u16)) {
                Ok(_) => {
                    let got = |f: &PollFd<'_>, w| f.revents().is_some_and(|r| r.intersects(w));
                    (
                        got(&fds[0], PollFlags::POLLIN),
                        fds.get(1)
                            .is_some_and(|f| got(f, PollFlags::POLLPRI | PollFlags::POLLERR)),
                    )
                }
                Err(nix::errno::Errno::EINTR) => (false, false),
                Err(e) => {
                    tracing::error!(error = %e, "poll on the fanotify group failed");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    (false, false)
                }
            }
        };
        // A mount whose path moved while it was looked up is looked up again.
        let retry = self.closed.as_ref().is_some_and(closed::Closed::retry);
        if mounts_changed || retry {
            self.mark_new_mounts(report);
        }
        fan_ready
    }

    /// Closed mode: mark what was mounted under the root since the last
    /// look; what cannot be marked is an alarm.
    fn mark_new_mounts(&mut self, report: &mut dyn FnMut(ExecReport)) {
        let Some(c) = self.closed.as_mut() else {
            return;
        };
        c.rearm();
        let (added, failed) = c.mark_new(&self.fan);
        for a in &added {
            tracing::info!(mount = %a, "marked a new file system");
        }
        if let Ok(mut m) = self.counters.marked.lock() {
            m.extend(added);
        }
        let lockdown = self.current().mode == Mode::Lockdown;
        for (m, e) in failed {
            match unmarkable(&m, e, lockdown) {
                Some(why) => {
                    report(report_alarm(m.point.display().to_string(), why).attempt("mount"));
                }
                None => {
                    if let Some(c) = self.closed.as_mut() {
                        c.try_again();
                    }
                }
            }
        }
    }

    /// Answer events until `stop` is set, passing each decision worth
    /// recording to `report` (every deny; an allow when the file was hashed
    /// anew, not on a cache hit, so a tight loop of allowed execs does not
    /// flood the audit trail).
    pub(crate) fn run(&mut self, stop: &AtomicBool, report: &mut dyn FnMut(ExecReport)) {
        while !stop.load(Ordering::Relaxed) {
            self.starting
                .retain(|_, (_, _, at, _)| at.elapsed() < STARTING);
            if !self.wait(report) {
                continue;
            }
            let events = match self.fan.read_events() {
                Ok(ev) => ev,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "reading fanotify events failed");
                    continue;
                }
            };
            for ev in events {
                // The descriptor is closed when `ev` drops, after the answer.
                let Some(fd) = ev.fd() else {
                    // Only an overflow comes without a descriptor (the queue is
                    // unlimited, so it should not happen): close-write events
                    // may be lost, so nothing cached can be trusted.
                    tracing::warn!("fanotify queue overflow: dropping the hash cache");
                    self.cache.clear();
                    continue;
                };
                let mask = ev.mask();
                if mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
                    self.answer(fd, ev.pid(), true, report);
                } else if mask.contains(MaskFlags::FAN_OPEN_PERM) {
                    self.answer(fd, ev.pid(), false, report);
                } else if mask.contains(MaskFlags::FAN_CLOSE_WRITE) {
                    self.written(fd, report);
                }
            }
        }
    }

    /// Decide one permission event (an exec, or in closed mode an open),
    /// answer it, and report.
    fn answer(
        &mut self,
        fd: BorrowedFd<'_>,
        pid: i32,
        exec: bool,
        report: &mut dyn FnMut(ExecReport),
    ) {
        let t = std::time::Instant::now();
        let active = self.current();
        let (allow, rep, kernel_cache) = if exec {
            self.decide(&active, fd, pid)
        } else {
            self.decide_open(&active, fd, pid)
        };
        let response = if allow {
            Response::FAN_ALLOW
        } else {
            Response::FAN_DENY
        };
        if exec {
            let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.counters.decide_ns.fetch_add(ns, Ordering::Relaxed);
        }
        if let Err(e) = self.fan.write_response(FanotifyResponse::new(fd, response)) {
            tracing::error!(error = %e, "answering a permission event failed");
        }
        if kernel_cache {
            let mask = if exec {
                MaskFlags::FAN_OPEN_EXEC_PERM
            } else {
                MaskFlags::FAN_OPEN_PERM
            };
            self.ignore_until_modified(fd, mask, &active);
        }
        if let Some(r) = rep {
            report(r);
        }
    }

    /// A file on a marked file system was closed after writing: its cached
    /// hash is gone. If it is a program allowed in the last [`STARTING`]
    /// and its bytes changed since the check, the process that started it
    /// may run bytes that were never checked: it is killed.
    fn written(&mut self, fd: BorrowedFd<'_>, out: &mut dyn FnMut(ExecReport)) {
        let Ok(st) = rustix::fs::fstat(fd) else {
            return;
        };
        let id = (st.st_dev, st.st_ino);
        self.cache.remove(&id);
        let Some((pid, stamp, _, path)) = self.starting.remove(&id) else {
            return;
        };
        if stamp == Stamp::of(&st) || self.current().mode != Mode::Lockdown {
            return;
        }
        // Only a process still running this very file: one that has
        // exited, or a pid reused since, is left alone.
        let runs_it =
            rustix::fs::stat(format!("/proc/{pid}/exe")).is_ok_and(|e| (e.st_dev, e.st_ino) == id);
        if !runs_it {
            return;
        }
        let killed = rustix::process::Pid::from_raw(pid)
            .ok_or(rustix::io::Errno::SRCH)
            .and_then(|p| rustix::process::kill_process(p, rustix::process::Signal::KILL));
        if killed.is_err() {
            return;
        }
        let why = "the program was written while it started: the process was killed".to_owned();
        let r = report(path, String::new(), pid, "deny", why).attempt("changed");
        out(r);
    }

    /// Decide one exec: (allow?, what to report, whether the kernel may
    /// answer this file's next execs itself).
    fn decide(
        &mut self,
        active: &Active,
        fd: BorrowedFd<'_>,
        pid: i32,
    ) -> (bool, Option<ExecReport>, bool) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let st = rustix::fs::fstat(fd);
        let id = st.as_ref().ok().map(|s| (s.st_dev, s.st_ino));
        if pid == self.own_pid || id.is_some_and(|id| self.trusted.contains(&id)) {
            return (true, None, false);
        }
        // Closed mode: a loader starts (the kernel loads it for every
        // dynamic program); run as a program, it may open nothing.
        if let (Some(c), Some(id)) = (&self.closed, id) {
            if c.loaders.contains_key(&id) {
                return (true, None, local_file_system(fd));
            }
        }
        let path = fd_path(fd);
        let enforce = active.mode == Mode::Lockdown;
        let (hash, hit) = match self.hash_cached(&st, fd) {
            Ok(h) => h,
            Err(e) => {
                self.count(enforce);
                let why = format!("the program could not be checked: {e}");
                let rep = report(path, String::new(), pid, denial(enforce), why);
                return (!enforce, Some(rep), false);
            }
        };
        let (allow, why) = self.policy_says(active, &st, &path, &hash);
        if allow {
            if let (Ok(s), Some(id)) = (&st, id) {
                let entry = (pid, Stamp::of(s), std::time::Instant::now(), path.clone());
                self.starting.insert(id, entry);
            }
            // Only root can change a root-owned file no one else may write:
            // the kernel may answer its next execs until it is modified.
            // Not with path rules: the same inode may be run under another
            // path.
            let kernel = !active.policy.has_app_path_rules()
                && st.as_ref().is_ok_and(closed::system_file)
                && local_file_system(fd);
            let rep = (!hit).then(|| report(path, hash, pid, "allow", why));
            return (true, rep, kernel);
        }
        self.count(enforce);
        let rep = report(path, hash, pid, denial(enforce), why);
        (!enforce, Some(rep), false)
    }

    /// The policy's answer for a program (or script) with this hash read
    /// back as `path`, and the deciding rule. Path rules count only for a
    /// path no user can re-point ([`closed::path_trust`]).
    fn policy_says(
        &self,
        active: &Active,
        st: &rustix::io::Result<rustix::fs::Stat>,
        path: &str,
        hash: &str,
    ) -> (bool, String) {
        let mut untrusted = None;
        let req_path = if active.policy.has_app_path_rules() {
            match st
                .as_ref()
                .map_err(|e| e.to_string())
                .and_then(|s| closed::path_trust(path, s))
            {
                Ok(()) => Some(path.to_owned()),
                Err(e) => {
                    untrusted = Some(e);
                    None
                }
            }
        } else {
            None
        };
        let req = Request::App {
            sha256: Some(hash.to_owned()),
            path: req_path,
        };
        let d = active.policy.decide(&active.subject, &req);
        let mut why = d
            .rule
            .as_ref()
            .map(|r| format!("policy line {}: {r}", r.line))
            .unwrap_or_else(|| "no rule: default deny".to_owned());
        if let Some(u) = untrusted {
            why.push_str(&format!(" (path rules not applied: {u})"));
        }
        (d.allow, why)
    }

    /// Closed mode: decide one open. The loader run as a program opens
    /// nothing; an interpreter opens system files and allowlisted scripts;
    /// every other process opens what it likes (file permissions decide).
    fn decide_open(
        &mut self,
        active: &Active,
        fd: BorrowedFd<'_>,
        pid: i32,
    ) -> (bool, Option<ExecReport>, bool) {
        self.counters.opens.fetch_add(1, Ordering::Relaxed);
        if self.closed.is_none() {
            return (true, None, false);
        }
        let st = rustix::fs::fstat(fd);
        let Ok(s) = st.as_ref() else {
            return (true, None, false);
        };
        let regular = s.st_mode & 0o170000 == 0o100000;
        if pid == self.own_pid || !regular {
            return (true, None, false);
        }
        let cacheable =
            || closed::system_file(s) && s.st_mode & 0o111 == 0 && local_file_system(fd);
        let Some(exe) = rustix::fs::stat(format!("/proc/{pid}/exe"))
            .ok()
            .map(|e| (e.st_dev, e.st_ino))
        else {
            return (true, None, false);
        };
        let enforce = active.mode == Mode::Lockdown;
        let known = self.closed.as_mut().is_some_and(|c| c.known_device(exe.0));
        let Some(c) = self.closed.as_ref() else {
            return (true, None, false);
        };
        let loader = c.loaders.get(&exe).cloned();
        // Owned by root is not written by root on a mount that may hold no
        // code (a stick, an image or a share a user brought, made noexec).
        let system = closed::system_file(s) && !closed::on_noexec(fd);
        if known && loader.is_none() && system {
            return (true, None, cacheable());
        }
        // Root's own processes (a backup, the package manager) open what
        // they like: root can stop the agent anyway. A setuid program run
        // by a user keeps that user as its real uid and is not exempt.
        if run_by_root(pid) {
            return (true, None, false);
        }
        if !known {
            // A program from a file system mounted in another namespace:
            // it was never decided, and may not load libraries or read
            // scripts from a marked one.
            self.count(enforce);
            let why = format!(
                "a program from a file system outside the agent's mount table (device {}:{}, mounted in another namespace) tried to open this file",
                rustix::fs::major(exe.0),
                rustix::fs::minor(exe.0)
            );
            let r =
                report(fd_path(fd), String::new(), pid, denial(enforce), why).attempt("unmarked");
            return (!enforce, Some(r), false);
        }
        if let Some(loader) = loader {
            self.count(enforce);
            let why = format!(
                "the dynamic loader {loader} was run as a program and tried to load this file"
            );
            let r = report(fd_path(fd), String::new(), pid, denial(enforce), why).attempt("loader");
            return (!enforce, Some(r), false);
        }
        // A file a user could have written: an interpreter reads it as a
        // script, and any process that opens an ELF file maps it as code
        // (`LD_PRELOAD`, `dlopen`): either way the policy decides, as for
        // an exec.
        let interp = c.interpreters.get(&exe).cloned();
        let elf = starts_as_elf(fd);
        let (attempt, opener) = match (&interp, elf) {
            (Some(i), _) => ("script", format!("interpreter {i}")),
            (None, true) => ("library", format!("process {pid}, as native code,")),
            (None, false) => return (true, None, false),
        };
        let path = fd_path(fd);
        let (hash, hit) = match self.hash_cached(&st, fd) {
            Ok(h) => h,
            Err(e) => {
                self.count(enforce);
                let why = format!("{opener} opened a file that could not be checked: {e}");
                let r = report(path, String::new(), pid, denial(enforce), why).attempt(attempt);
                return (!enforce, Some(r), false);
            }
        };
        let (allow, why) = self.policy_says(active, &st, &path, &hash);
        let why = format!("{opener} opened it: {why}");
        if allow {
            let rep = (!hit)
                .then(|| report(path, hash, pid, "allow", why))
                .map(|r| r.attempt(attempt));
            return (true, rep, false);
        }
        self.count(enforce);
        let r = report(path, hash, pid, denial(enforce), why).attempt(attempt);
        (!enforce, Some(r), false)
    }

    /// The file's SHA-256 (hex), from the cache while its inode, size and
    /// times are unchanged; and whether it came from the cache.
    fn hash_cached(
        &mut self,
        st: &rustix::io::Result<rustix::fs::Stat>,
        fd: BorrowedFd<'_>,
    ) -> std::io::Result<(String, bool)> {
        let s = st.as_ref().map_err(|e| std::io::Error::from(*e))?;
        let stamp = Stamp::of(s);
        let key = (s.st_dev, s.st_ino);
        if let Some((cached, hash)) = self.cache.get(&key) {
            if *cached == stamp {
                self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                return Ok((hash.clone(), true));
            }
        }
        let h = hash_fd(fd, &mut self.buf)?;
        // A write while hashing (it changes the change time, which no user
        // can set) means the bytes hashed may not be the bytes run.
        let after = rustix::fs::fstat(fd).map(|a| Stamp::of(&a));
        if after.as_ref().ok() != Some(&stamp) {
            return Err(std::io::Error::other(
                "it was written while it was being checked",
            ));
        }
        self.cache.insert(key, (stamp, h.clone()));
        Ok((h, false))
    }

    /// Let the kernel allow this file's execs without asking, until the
    /// file is modified: an ignore mark on its inode, without
    /// `FAN_MARK_IGNORED_SURV_MODIFY`, so the kernel clears it on the first
    /// write. [`flush_kernel_cache`] drops them all when the policy changes.
    ///
    /// `decided_with` is the policy the allow came from. The holder swaps
    /// the policy, then flushes; this adds the mark, then checks the policy
    /// is still the same, and takes the mark back if not. Either the flush
    /// comes after the mark, or the swap came before the check: no allow
    /// from an old policy stays in the kernel.
    fn ignore_until_modified(
        &self,
        fd: BorrowedFd<'_>,
        mask: MaskFlags,
        decided_with: &Arc<Active>,
    ) {
        let add = MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_IGNORED_MASK;
        if let Err(e) = self.fan.mark(add, mask, fd, None::<&Path>) {
            tracing::debug!(error = %e, "no ignore mark: the agent keeps deciding this file");
            return;
        }
        // The mount may have been made noexec since the decision (a stick
        // the agent confines): a file there is no system file any more.
        // Checked after the mark is set, so a remount either shows here or
        // comes before the flush that follows it.
        if Arc::ptr_eq(&self.current(), decided_with) && !closed::on_noexec(fd) {
            self.counters.kernel_cached.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let remove = MarkFlags::FAN_MARK_REMOVE | MarkFlags::FAN_MARK_IGNORED_MASK;
        if let Err(e) = self.fan.mark(remove, mask, fd, None::<&Path>) {
            tracing::error!(error = %e, "taking back an ignore mark failed; flushing all");
            let _ = flush_kernel_cache(&self.fan);
        }
    }

    fn current(&self) -> Arc<Active> {
        super::current(&self.active)
    }

    /// The group, for [`flush_kernel_cache`].
    pub(crate) fn group(&self) -> Arc<Fanotify> {
        Arc::clone(&self.fan)
    }

    fn count(&self, enforced: bool) {
        let c = if enforced {
            &self.counters.denied
        } else {
            &self.counters.monitored
        };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Largest program the agent hashes: a bigger one is treated as unreadable
/// (denied in lockdown), so no one can stall every exec with a huge file.
pub(crate) const MAX_PROGRAM: u64 = 1 << 30;

/// A mount under the root that cannot be marked: in lockdown a FUSE mount
/// (a user's, root may not even look inside) is taken away, since an
/// interpreter would read scripts from it unseen; anything else stays, with
/// the alarm saying so. The alarm's text.
/// What to report of a mount that cannot be marked (in lockdown a FUSE one
/// is unmounted first); `None` when its path moved while it was looked up:
/// the next poll tries again, and says nothing meanwhile.
fn unmarkable(m: &super::mounts::Mount, e: nix::Error, lockdown: bool) -> Option<String> {
    if lockdown && closed::is_fuse(m) {
        match closed::unmount_fuse(m) {
            Ok(()) => Some(format!("a FUSE mount ({}) that cannot be marked ({e}) was unmounted: nothing opened there could be decided", m.fstype)),
            Err(nix::Error::EAGAIN) => None,
            Err(u) => Some(format!("a FUSE mount ({}) cannot be marked ({e}) nor unmounted ({u}): scripts there are read unchecked", m.fstype)),
        }
    } else {
        Some(format!("a file system mounted under the root cannot be marked ({e}): what is opened there goes unchecked"))
    }
}

/// Whether every change to a file on this file system raises a modify event
/// here: local disk and memory file systems, and read-only images. Not
/// network or FUSE file systems (a change on the server raises none), nor
/// overlayfs (a change to a lower layer raises none).
fn local_file_system(fd: BorrowedFd<'_>) -> bool {
    const LOCAL: [i64; 8] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x7371_7368, // squashfs (read-only)
        0xE0F5_E1E2, // erofs (read-only)
        0x2FC1_2FC1, // zfs
    ];
    // `f_type` is i64 here, a narrower integer on some architectures.
    #[allow(clippy::unnecessary_cast)]
    rustix::fs::fstatfs(fd).is_ok_and(|s| LOCAL.contains(&(s.f_type as i64)))
}

/// Whether `pid` runs with root as both its real and effective user.
fn run_by_root(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|st| {
            let uids = st.lines().find_map(|l| l.strip_prefix("Uid:"))?.to_owned();
            let mut ids = uids.split_whitespace();
            Some(ids.next()? == "0" && ids.next()? == "0")
        })
        .unwrap_or(false)
}

/// Whether the file behind `fd` starts with the ELF magic (a program or a
/// shared library).
fn starts_as_elf(fd: BorrowedFd<'_>) -> bool {
    let mut magic = [0u8; 4];
    matches!(rustix::io::pread(fd, &mut magic, 0), Ok(4)) && magic == *b"\x7fELF"
}

/// SHA-256 of the whole file behind `fd`, read with `pread` (the event's
/// descriptor is ours; its offset is not the program's).
fn hash_fd(fd: BorrowedFd<'_>, buf: &mut [u8]) -> std::io::Result<String> {
    let mut h = sha2::Sha256::new();
    let mut off = 0u64;
    loop {
        let n = rustix::io::pread(fd, &mut *buf, off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
        if off > MAX_PROGRAM {
            return Err(std::io::Error::other(format!(
                "over {MAX_PROGRAM} bytes, the most the agent hashes"
            )));
        }
    }
    Ok(hex::encode(h.finalize()))
}
