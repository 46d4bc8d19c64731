//! The agent (`satchel agent`): the client's long-running service. It enforces the
//! application allowlist at exec ([`exec`]), holds the signed policy bundle,
//! keeps the device attested, syncs the pushed image, and spools its audit
//! entries ([`spool`]) until the gateway has them. `docs/agent.md` is the
//! operator's guide.
//!
//! Threads: the exec decisions run on their own thread (a blocked exec
//! waits for nothing else); everything else is one tokio task loop on the
//! main thread. The state directory holds:
//!
//! | file | what |
//! |---|---|
//! | `bundle.version` | the highest bundle version accepted (rollback protection) |
//! | `bundle.accepted` | the bundle in force, kept for the next start |
//! | `spool.db` | entries waiting for the gateway (SQLite) |
//! | `status.json` | what `satchel agent status` prints; rewritten every 2 s |
//! | `agent.pid` | locked and holding the pid while an agent runs; emptied on a clean stop. Found holding a pid and unlocked at start, it means the last agent died |

mod closed;
mod confine;
mod exec;
mod holder;
mod mounts;
mod service;
mod spool;
mod status;
mod system;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use policy::bundle::Mode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::identity::GatewayConfig;
pub use exec::StartError;
use exec::{Counters, Enforcer, ExecReport};
pub(crate) use holder::current;
use holder::{activate, first_bundle, Holder};
pub use spool::SpoolError;
pub use status::{read_status, AgentStatus};

/// Everything the agent is told (the command line over the `[agent]`
/// table of the configuration, resolved by the caller).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub struct Settings {
    pub bundle: PathBuf,
    pub bundle_key: PathBuf,
    pub subject: String,
    pub mounts: Vec<PathBuf>,
    /// Closed mode: every file system at or under this root is marked, the
    /// loader and interpreters are restricted, and lockdown needs the
    /// kernel settings of [`system`] (docs/agent.md, "Closed mode").
    pub root: Option<PathBuf>,
    /// The interpreters closed mode restricts; empty: the well-known names
    /// found under the root.
    pub interpreters: Vec<PathBuf>,
    /// Closed mode: the mounts that may hold programs besides the root;
    /// empty: `usr`, `usr/local`, `opt`, `var`, `boot`, `boot/efi` and `dev`
    /// under the root. Every other mount is made `noexec` in lockdown.
    pub exec_mounts: Vec<PathBuf>,
    /// Lockdown in closed mode even where the kernel settings cannot be
    /// applied (the memfd and user-namespace ways around stay open).
    pub allow_open_system: bool,
    pub mode: Option<Mode>,
    pub gateway: Option<GatewayConfig>,
    pub tcti: String,
    pub logs: Vec<PathBuf>,
    pub state_dir: PathBuf,
    pub reattest_margin: Duration,
    pub image: Option<(String, PathBuf)>,
    pub sync_interval: Duration,
    /// Most bytes per second the background sync moves each way (a school
    /// link is shared); `None`: no cap.
    pub sync_max_rate: Option<u64>,
    pub deliver_interval: Duration,
    pub refresh_interval: Duration,
}

/// What `status.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Status {
    pub pid: u32,
    pub started_ms: i64,
    pub heartbeat_ms: i64,
    pub subject: String,
    pub mode: String,
    pub mounts: Vec<String>,
    pub policy_version: u64,
    pub bundle_refused: Option<String>,
    pub gateway: String,
    pub attested_until_ms: Option<i64>,
    pub attest_error: Option<String>,
    pub last_sync: Option<Value>,
    pub spool_waiting: i64,
    pub last_gap: Option<Value>,
    /// The last alarm about the gateway's audit log ([`crate::witness`]).
    #[serde(default)]
    pub audit_alarm: Option<String>,
    pub exec: Value,
    /// Closed mode's root (`None`: only the named mounts are decided).
    #[serde(default)]
    pub root: Option<String>,
    /// The file systems marked.
    #[serde(default)]
    pub marked: Vec<String>,
    /// Closed mode in lockdown: the places users can write that the agent
    /// made `noexec` (docs/agent.md, "Closed mode").
    #[serde(default)]
    pub confined: Vec<String>,
    /// The kernel settings enforcement relies on, and whether each holds
    /// (empty outside closed mode).
    #[serde(default)]
    pub system: Vec<system::Setting>,
}

/// Why the agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The state directory or a file in it.
    #[error("{}", .path.display())]
    State {
        /// The file or directory.
        path: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The bundle key cannot be read.
    #[error("the bundle key")]
    BundleKey(#[from] persist::KeyError),
    /// No bundle to enforce: the configured one is refused and none was kept.
    #[error("{refused}; no bundle was accepted before, so there is no policy to enforce")]
    NoBundle {
        /// Why the configured bundle was refused.
        refused: String,
    },
    /// The configured bundle is refused and the kept one is unusable.
    #[error("{refused}; and the bundle kept in {}: {source}", .kept.display())]
    KeptBundle {
        /// Why the configured bundle was refused.
        refused: String,
        /// The kept bundle.
        kept: PathBuf,
        /// Why it is unusable.
        #[source]
        source: policy::bundle::BundleError,
    },
    /// Another agent holds the state directory.
    #[error("another agent (pid {pid}) runs with the state directory {}", .state_dir.display())]
    AlreadyRunning {
        /// Its pid, as its pid file says.
        pid: String,
        /// The state directory.
        state_dir: PathBuf,
    },
    /// Exec enforcement could not start (fanotify, marks).
    #[error(transparent)]
    Enforcer(#[from] exec::StartError),
    /// Closed mode in lockdown, and a kernel setting it needs cannot hold.
    #[error("lockdown refused: {0} (the agent sets these itself as root; on this kernel they cannot hold, so a user could run programs around the allowlist; --allow-open-system enforces anyway)")]
    System(String),
    /// The spool.
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    /// The runtime, a signal handler or a thread could not be set up.
    #[error("setting up the agent")]
    Runtime(#[source] std::io::Error),
    /// The exec decision thread stopped (the kernel now allows every exec).
    #[error("the exec decision thread stopped")]
    DecisionsStopped,
    /// `status.json` is missing or unreadable.
    #[error("{}: {source} (has an agent run with --state-dir {}?)", .path.display(), .state_dir.display())]
    NoStatus {
        /// The status file.
        path: PathBuf,
        /// The state directory.
        state_dir: PathBuf,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// `status.json` does not parse.
    #[error("{}: not an agent status file", .path.display())]
    BadStatus {
        /// The status file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

impl AgentError {
    /// The exit status for the command line: 2 when the agent could not
    /// start with what it was given, 1 when it stopped.
    pub fn exit_code(&self) -> u8 {
        match self {
            AgentError::State { .. }
            | AgentError::DecisionsStopped
            | AgentError::Spool(_)
            | AgentError::Runtime(_) => 1,
            _ => 2,
        }
    }
}

const PID_FILE: &str = "agent.pid";
const STATUS_FILE: &str = "status.json";

pub(crate) fn now_ms() -> i64 {
    audit::batch::now_ms()
}

pub(crate) fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Lockdown => "lockdown",
        Mode::Monitor => "monitor",
    }
}

fn state_error(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::State {
        path: path.to_owned(),
        source,
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub fn run(s: Settings) -> Result<(), AgentError> {
    persist::file::create_dir_all(&s.state_dir).map_err(|e| AgentError::State {
        path: s.state_dir.clone(),
        source: std::io::Error::other(e),
    })?;
    let key = persist::keys::read_public(&s.bundle_key)?;
    let (bundle, bytes, refused) = first_bundle(&s, &key)?;
    let active = Arc::new(RwLock::new(Arc::new(activate(&bundle, &s.subject, s.mode))));
    let mut holder = Holder {
        key,
        state_dir: s.state_dir.clone(),
        subject: s.subject.clone(),
        forced: s.mode,
        active: Arc::clone(&active),
        accepted: bytes,
        group: None,
        flush_pending: false,
    };
    let mut pid = PidFile::lock(&s.state_dir)?;
    let gap = pid.gap(&s.state_dir);
    let counters = Arc::new(Counters::default());
    let system = prepare_system(&s, holder.current_mode())?;
    let root = s.root.as_deref().map(|r| (r, s.interpreters.as_slice()));
    let enforcer = Enforcer::start(&s.mounts, root, Arc::clone(&active), Arc::clone(&counters))?;
    holder.group = Some(enforcer.group());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ExecReport>();
    // Decisions first: the first walk of the root must not hold up every
    // open on the machine while it runs.
    let fan = enforcer.group();
    let mut worker = Worker::spawn(enforcer, tx.clone())?;
    let confiner = confine_first(&s, holder.current_mode(), &counters, &tx);
    if confiner.is_some() {
        // What the kernel answers by itself was decided before the first
        // walk made mounts noexec.
        let _ = exec::flush_kernel_cache(&fan);
    }
    worker.keep(confiner, fan, &active, &counters, tx)?;
    pid.claim()?;
    announce(&s, &holder);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    let result = rt.block_on(service::service(
        &s,
        holder,
        rx,
        counters,
        (gap, refused),
        worker,
        system,
    ));
    rt.shutdown_timeout(Duration::from_secs(2));
    if result.is_ok() {
        // A clean stop: no gap to report next time.
        pid.release();
    }
    result
}

/// Closed mode: apply the kernel settings when the policy in force is
/// lockdown (check them only in monitor mode); refuse lockdown when they
/// cannot hold, unless told to go on without them.
fn prepare_system(s: &Settings, mode: Mode) -> Result<Vec<system::Setting>, AgentError> {
    if s.root.is_none() {
        return Ok(Vec::new());
    }
    let lockdown = mode == Mode::Lockdown;
    let settings = system::settings(lockdown);
    if let Some(bad) = system::failing(&settings) {
        if lockdown && !s.allow_open_system {
            return Err(AgentError::System(bad));
        }
        eprintln!("satchel agent: kernel settings that do not hold: {bad}");
    }
    Ok(settings)
}

/// Closed mode: the first pass that makes every mount but the exec mounts,
/// and every place users can write, `noexec`, before the agent says it is
/// ready (in lockdown; monitor mode changes nothing, and a later turn to
/// lockdown confines then). A place that cannot be confined is an alarm,
/// and enforcement goes on: stopping would leave every exec unenforced.
fn confine_first(
    s: &Settings,
    mode: Mode,
    counters: &Counters,
    tx: &tokio::sync::mpsc::UnboundedSender<ExecReport>,
) -> Option<confine::Confiner> {
    let root = s.root.as_deref()?;
    let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
    let mut c = confine::Confiner::new(&root, &s.exec_mounts);
    if mode == Mode::Lockdown {
        let pass = c.confine();
        for (path, e) in &pass.failed {
            eprintln!("satchel agent: ALARM: {path} cannot be made noexec ({e})");
        }
        confine::announce(&pass, counters, &mut |r| {
            let _ = tx.send(r);
        });
    }
    Some(c)
}

fn announce(s: &Settings, holder: &Holder) {
    let mut mounts: Vec<String> = s.mounts.iter().map(|m| m.display().to_string()).collect();
    if let Some(r) = &s.root {
        mounts.push(format!("every file system under {}", r.display()));
    }
    eprintln!(
        "satchel agent: enforcing {} for {} on {} (policy version {})",
        mode_name(holder.current_mode()),
        s.subject,
        mounts.join(", "),
        holder.current_version()
    );
}

/// `agent.pid`: locked while an agent runs. Found unlocked with a pid in
/// it, it means the last agent died: exec went unenforced from its last
/// heartbeat until now.
struct PidFile {
    path: PathBuf,
    file: std::fs::File,
    previous: String,
}

impl PidFile {
    fn lock(state_dir: &Path) -> Result<PidFile, AgentError> {
        let path = state_dir.join(PID_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(state_error(&path))?;
        let lock = rustix::fs::FlockOperation::NonBlockingLockExclusive;
        if rustix::fs::flock(&file, lock).is_err() {
            let other = std::fs::read_to_string(&path).unwrap_or_default();
            return Err(AgentError::AlreadyRunning {
                pid: other.trim().to_owned(),
                state_dir: state_dir.to_owned(),
            });
        }
        let mut previous = String::new();
        std::io::Read::read_to_string(&mut file, &mut previous).map_err(state_error(&path))?;
        Ok(PidFile {
            path,
            file,
            previous,
        })
    }

    /// The gap the last agent left, if it died (said on stderr too).
    fn gap(&self, state_dir: &Path) -> Option<Value> {
        let old = self.previous.trim();
        if old.is_empty() {
            return None;
        }
        let last: Option<Status> = std::fs::read(state_dir.join(STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let from = last.map(|st| st.heartbeat_ms).filter(|h| *h > 0);
        let g = json!({"previous_pid": old, "from_ms": from, "to_ms": now_ms()});
        eprintln!(
            "satchel agent: the previous agent (pid {old}) stopped without shutting down: exec was not enforced {} (the kernel allows every exec while no agent answers)",
            gap_text(&g)
        );
        Some(g)
    }

    /// Write this process's pid, durably.
    fn claim(&mut self) -> Result<(), AgentError> {
        use std::io::{Seek as _, Write as _};
        let pid = format!("{}\n", std::process::id());
        let write = |f: &mut std::fs::File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.seek(std::io::SeekFrom::Start(0))?;
            f.write_all(pid.as_bytes())?;
            f.sync_all()
        };
        write(&mut self.file).map_err(state_error(&self.path))
    }

    /// Empty the file: the agent stopped cleanly.
    fn release(&self) {
        let _ = self.file.set_len(0);
    }
}

/// The exec decision thread, as the service loop sees it.
pub(crate) struct Worker {
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Closed mode: the thread that keeps places users can write `noexec`.
    keeper: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Closed mode: run `confiner` on a thread of its own.
    fn keep(
        &mut self,
        confiner: Option<confine::Confiner>,
        fan: Arc<nix::sys::fanotify::Fanotify>,
        active: &Arc<RwLock<Arc<exec::Active>>>,
        counters: &Arc<Counters>,
        tx: tokio::sync::mpsc::UnboundedSender<ExecReport>,
    ) -> Result<(), AgentError> {
        let Some(c) = confiner else {
            return Ok(());
        };
        let (active, counters, stop) = (
            Arc::clone(active),
            Arc::clone(counters),
            Arc::clone(&self.stop),
        );
        self.keeper = Some(
            std::thread::Builder::new()
                .name("noexec-keeper".into())
                .spawn(move || {
                    confine::keep(c, fan, active, counters, stop, &mut |r| {
                        let _ = tx.send(r);
                    })
                })
                .map_err(AgentError::Runtime)?,
        );
        Ok(())
    }

    /// Run `enforcer` on its own thread, sending each decision to `tx`.
    fn spawn(
        mut enforcer: Enforcer,
        tx: tokio::sync::mpsc::UnboundedSender<ExecReport>,
    ) -> Result<Worker, AgentError> {
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let (stop2, alive2) = (Arc::clone(&stop), Arc::clone(&alive));
        let thread = std::thread::Builder::new()
            .name("exec-decisions".into())
            .spawn(move || {
                // Set on the way out, also when unwinding from a panic.
                struct Dead(Arc<AtomicBool>);
                impl Drop for Dead {
                    fn drop(&mut self) {
                        self.0.store(false, Ordering::Relaxed);
                    }
                }
                let _dead = Dead(alive2);
                enforcer.run(&stop2, &mut |r| {
                    let _ = tx.send(r);
                })
            })
            .map_err(AgentError::Runtime)?;
        Ok(Worker {
            stop,
            alive,
            thread: Some(thread),
            keeper: None,
        })
    }

    /// Whether the thread still decides.
    pub(crate) fn alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }

    /// Stop it and the keeper, and wait (each polls every 500 ms at most).
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in [self.thread.take(), self.keeper.take()]
            .into_iter()
            .flatten()
        {
            let _ = t.join();
        }
    }
}

/// How long a gap (`status.last_gap`) lasted, for messages.
pub fn gap_text(g: &Value) -> String {
    match (g["from_ms"].as_i64(), g["to_ms"].as_i64()) {
        (Some(from), Some(to)) => format!("for {:.1} s", (to - from) as f64 / 1000.0),
        _ => "for an unknown time (no heartbeat was recorded)".to_owned(),
    }
}
