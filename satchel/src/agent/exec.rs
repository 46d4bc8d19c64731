//! Exec enforcement with fanotify: every `execve` of a file on a marked mount
//! waits for this module's answer.
//!
//! - The group is `FAN_CLASS_CONTENT`; each configured mount gets a
//!   `FAN_MARK_MOUNT` mark for `FAN_OPEN_EXEC_PERM` (the decision) and
//!   `FAN_CLOSE_WRITE` (a file written on the mount drops out of the cache).
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: i64,
}

/// Why enforcement could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    /// `fanotify_init` failed (not root, or no fanotify in this kernel).
    #[error("fanotify is unavailable here ({0}); run as root on a kernel with CONFIG_FANOTIFY_ACCESS_PERMISSIONS")]
    Init(nix::Error),
    /// A mount could not be marked.
    #[error("cannot mark {path} for exec decisions: {source}")]
    Mark {
        /// The mount.
        path: String,
        /// Why.
        source: nix::Error,
    },
}

/// The fanotify group and the cache.
pub(crate) struct Enforcer {
    fan: Fanotify,
    cache: HashMap<(u64, u64), (Stamp, String)>,
    trusted: HashSet<(u64, u64)>,
    own_pid: i32,
    active: Arc<RwLock<Arc<Active>>>,
    counters: Arc<Counters>,
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
    /// Make the group and mark every mount.
    pub(crate) fn start(
        mounts: &[PathBuf],
        active: Arc<RwLock<Arc<Active>>>,
        counters: Arc<Counters>,
    ) -> Result<Enforcer, StartError> {
        let fan = Fanotify::init(
            InitFlags::FAN_CLASS_CONTENT | InitFlags::FAN_CLOEXEC | InitFlags::FAN_NONBLOCK,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(StartError::Init)?;
        for m in mounts {
            fan.mark(
                MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_MOUNT,
                MaskFlags::FAN_OPEN_EXEC_PERM | MaskFlags::FAN_CLOSE_WRITE,
                rustix::fs::CWD,
                Some(m.as_path()),
            )
            .map_err(|source| StartError::Mark {
                path: m.display().to_string(),
                source,
            })?;
        }
        let (trusted, paths) = trusted_files();
        tracing::info!(?paths, "never denied");
        Ok(Enforcer {
            fan,
            cache: HashMap::new(),
            trusted,
            own_pid: i32::try_from(std::process::id()).unwrap_or(-1),
            active,
            counters,
        })
    }

    /// Answer events until `stop` is set, passing each decision worth
    /// recording to `report` (every deny; an allow when the file was hashed
    /// anew, not on a cache hit, so a tight loop of allowed execs does not
    /// flood the audit trail).
    pub(crate) fn run(&mut self, stop: &AtomicBool, report: &mut dyn FnMut(ExecReport)) {
        while !stop.load(Ordering::Relaxed) {
            let ready = {
                let mut fds = [PollFd::new(self.fan.as_fd(), PollFlags::POLLIN)];
                nix::poll::poll(&mut fds, PollTimeout::from(200u16))
            };
            match ready {
                Ok(0) => continue,
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "poll on the fanotify group failed");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
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
                    tracing::warn!("fanotify queue overflow: events were lost");
                    continue;
                };
                let mask = ev.mask();
                if mask.contains(MaskFlags::FAN_OPEN_EXEC_PERM) {
                    let (allow, rep) = self.decide(fd, ev.pid());
                    let response = if allow {
                        Response::FAN_ALLOW
                    } else {
                        Response::FAN_DENY
                    };
                    if let Err(e) = self.fan.write_response(FanotifyResponse::new(fd, response)) {
                        tracing::error!(error = %e, "answering an exec event failed");
                    }
                    if let Some(r) = rep {
                        report(r);
                    }
                } else if mask.contains(MaskFlags::FAN_CLOSE_WRITE) {
                    if let Ok(st) = rustix::fs::fstat(fd) {
                        self.cache.remove(&(st.st_dev, st.st_ino));
                    }
                }
            }
        }
    }

    /// Decide one exec: allow?, and what to report.
    fn decide(&mut self, fd: BorrowedFd<'_>, pid: i32) -> (bool, Option<ExecReport>) {
        self.counters.events.fetch_add(1, Ordering::Relaxed);
        let active = match self.active.read() {
            Ok(a) => Arc::clone(&a),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        };
        let st = rustix::fs::fstat(fd);
        let id = st.as_ref().ok().map(|s| (s.st_dev, s.st_ino));
        if pid == self.own_pid || id.is_some_and(|id| self.trusted.contains(&id)) {
            return (true, None);
        }
        let path = || {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let hashed = match &st {
            Ok(s) => {
                let stamp = Stamp {
                    ctime: (s.st_ctime, s.st_ctime_nsec as i64),
                    mtime: (s.st_mtime, s.st_mtime_nsec as i64),
                    size: s.st_size,
                };
                let key = (s.st_dev, s.st_ino);
                match self.cache.get(&key) {
                    Some((cached, hash)) if *cached == stamp => {
                        self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                        Ok((hash.clone(), true))
                    }
                    _ => hash_fd(fd).map(|h| {
                        self.cache.insert(key, (stamp, h.clone()));
                        (h, false)
                    }),
                }
            }
            Err(e) => Err(std::io::Error::from(*e)),
        };
        let enforce = active.mode == Mode::Lockdown;
        let (hash, hit) = match hashed {
            Ok(h) => h,
            Err(e) => {
                let decision = if enforce { "deny" } else { "deny-monitored" };
                self.count(enforce);
                return (
                    !enforce,
                    Some(ExecReport {
                        at_ms: audit::batch::now_ms(),
                        path: path(),
                        sha256: String::new(),
                        pid,
                        decision,
                        why: format!("the program could not be read: {e}"),
                    }),
                );
            }
        };
        let need_path = active.policy.has_app_path_rules();
        let req = Request::App {
            sha256: Some(hash.clone()),
            path: need_path.then(path),
        };
        let d = active.policy.decide(&active.subject, &req);
        let why = d
            .rule
            .as_ref()
            .map(|r| format!("policy line {}: {r}", r.line))
            .unwrap_or_else(|| "no rule: default deny".to_owned());
        if d.allow {
            let rep = (!hit).then(|| ExecReport {
                at_ms: audit::batch::now_ms(),
                path: path(),
                sha256: hash,
                pid,
                decision: "allow",
                why,
            });
            return (true, rep);
        }
        self.count(enforce);
        (
            !enforce,
            Some(ExecReport {
                at_ms: audit::batch::now_ms(),
                path: path(),
                sha256: hash,
                pid,
                decision: if enforce { "deny" } else { "deny-monitored" },
                why,
            }),
        )
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

/// SHA-256 of the whole file behind `fd`, read with `pread` (the event's
/// descriptor is ours; its offset is not the program's).
fn hash_fd(fd: BorrowedFd<'_>) -> std::io::Result<String> {
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut off = 0u64;
    loop {
        let n = rustix::io::pread(fd, &mut buf[..], off)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hex::encode(h.finalize()))
}
