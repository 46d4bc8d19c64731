//! `satchel agent`: the client's long-running service. It enforces the
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

pub(crate) mod exec;
pub(crate) mod spool;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use policy::bundle::{Bundle, Mode};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cmd::client::{attest_once, device_client, GatewayArgs};
use crate::cmd::measure::TpmArgs;
use crate::cmd::Exit;
use exec::{Active, Counters, Enforcer, ExecReport};
use spool::{Spool, SpoolEntry};

/// Everything the agent is told (flags over the `[agent]` table).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) bundle: PathBuf,
    pub(crate) bundle_key: PathBuf,
    pub(crate) subject: String,
    pub(crate) mounts: Vec<PathBuf>,
    pub(crate) mode: Option<Mode>,
    pub(crate) gateway: Option<(String, PathBuf, PathBuf)>,
    pub(crate) tpm: Option<String>,
    pub(crate) logs: Vec<PathBuf>,
    pub(crate) state_dir: PathBuf,
    pub(crate) reattest_margin: Duration,
    pub(crate) image: Option<(String, PathBuf)>,
    pub(crate) sync_interval: Duration,
    pub(crate) deliver_interval: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) config: Option<PathBuf>,
}

/// What `status.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Status {
    pub(crate) pid: u32,
    pub(crate) started_ms: i64,
    pub(crate) heartbeat_ms: i64,
    pub(crate) subject: String,
    pub(crate) mode: String,
    pub(crate) mounts: Vec<String>,
    pub(crate) policy_version: u64,
    pub(crate) bundle_refused: Option<String>,
    pub(crate) gateway: String,
    pub(crate) attested_until_ms: Option<i64>,
    pub(crate) attest_error: Option<String>,
    pub(crate) last_sync: Option<Value>,
    pub(crate) spool_waiting: i64,
    pub(crate) last_gap: Option<Value>,
    pub(crate) exec: Value,
}

const PID_FILE: &str = "agent.pid";
const STATUS_FILE: &str = "status.json";

fn now_ms() -> i64 {
    audit::batch::now_ms()
}

/// The bundle in force for this device, compiled.
fn activate(bundle: &Bundle, subject: &str, forced: Option<Mode>) -> Active {
    let groups = policy::closure(&bundle.policy.memberships);
    Active {
        policy: policy::FastPolicy::compile(&bundle.policy),
        mode: forced.unwrap_or_else(|| bundle.mode_for(subject, &groups)),
        version: bundle.manifest.version,
        subject: subject.to_owned(),
    }
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Lockdown => "lockdown",
        Mode::Monitor => "monitor",
    }
}

/// The bundle holder: accepts a newer signed bundle, refuses anything else
/// and keeps the old one in force.
struct Holder {
    key: ed25519_dalek::VerifyingKey,
    state_dir: PathBuf,
    subject: String,
    forced: Option<Mode>,
    active: Arc<RwLock<Arc<Active>>>,
    accepted: Vec<u8>,
    /// The fanotify group, to drop the kernel's cached allows on a change.
    group: Option<Arc<nix::sys::fanotify::Fanotify>>,
    /// A policy change whose flush of the kernel's cached allows failed:
    /// retried on every refresh until it succeeds.
    flush_pending: bool,
}

/// The policy in force, read through a poisoned lock too (the writer
/// replaces the value whole, so it is never half-written).
pub(crate) fn current(active: &RwLock<Arc<Active>>) -> Arc<Active> {
    match active.read() {
        Ok(a) => Arc::clone(&a),
        Err(p) => Arc::clone(&p.into_inner()),
    }
}

/// The highest bundle version accepted, from `STATE/bundle.version`.
fn held_version(state_dir: &Path) -> Option<u64> {
    std::fs::read_to_string(state_dir.join("bundle.version"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Accept a verified bundle: keep its bytes first, then record its version,
/// so a crash between the two leaves a kept bundle at least as new as the
/// recorded version.
fn keep(
    state_dir: &Path,
    key: &ed25519_dalek::VerifyingKey,
    bytes: &[u8],
) -> Result<Bundle, String> {
    Bundle::verify(bytes, key, held_version(state_dir)).map_err(|e| e.to_string())?;
    crate::cmd::write_atomic(&state_dir.join("bundle.accepted"), bytes)
        .map_err(|e| format!("keeping the bundle: {e:#}"))?;
    Bundle::accept(bytes, key, &state_dir.join("bundle.version")).map_err(|e| e.to_string())
}

impl Holder {
    /// Offer bundle bytes: Ok(true) if it is now in force, Ok(false) if it
    /// is the one already held, Err(reason) if refused.
    fn offer(&mut self, bytes: &[u8]) -> Result<bool, String> {
        if bytes == self.accepted.as_slice() {
            return Ok(false);
        }
        let offered = Bundle::verify(bytes, &self.key, Some(self.current_version()))
            .map_err(|e| e.to_string())?;
        if offered.manifest.version == self.current_version() {
            // Same version, other bytes: keep what is held.
            return Ok(false);
        }
        let bundle = keep(&self.state_dir, &self.key, bytes)?;
        let a = Arc::new(activate(&bundle, &self.subject, self.forced));
        match self.active.write() {
            Ok(mut slot) => *slot = a,
            Err(p) => *p.into_inner() = a,
        }
        self.accepted = bytes.to_vec();
        self.flush_pending = true;
        self.flush();
        Ok(true)
    }

    /// Drop the kernel's cached allows after a policy change (retried until
    /// it works; until then an allow from the old policy may stand).
    fn flush(&mut self) {
        if !self.flush_pending {
            return;
        }
        match self.group.as_deref().map(exec::flush_kernel_cache) {
            None | Some(Ok(())) => self.flush_pending = false,
            Some(Err(e)) => eprintln!(
                "satchel agent: the kernel's cached allows could not be dropped after the policy change (retrying): {e}"
            ),
        }
    }

    fn current_version(&self) -> u64 {
        current(&self.active).version
    }

    fn current_mode(&self) -> Mode {
        current(&self.active).mode
    }
}

/// The first bundle: the configured file, else the one accepted last time.
fn first_bundle(
    s: &Settings,
    key: &ed25519_dalek::VerifyingKey,
) -> anyhow::Result<(Bundle, Vec<u8>, Option<String>)> {
    let version_file = s.state_dir.join("bundle.version");
    let refused = match std::fs::read(&s.bundle) {
        Ok(bytes) => match keep(&s.state_dir, key, &bytes) {
            Ok(b) => return Ok((b, bytes, None)),
            Err(e) => format!("{}: {e}", s.bundle.display()),
        },
        Err(e) => format!("{}: {e}", s.bundle.display()),
    };
    let kept = s.state_dir.join("bundle.accepted");
    match std::fs::read(&kept) {
        Ok(bytes) => {
            let b = Bundle::accept(&bytes, key, &version_file).map_err(|e| {
                Exit::new(
                    2,
                    format!("{refused}; and the bundle kept in {}: {e}", kept.display()),
                )
            })?;
            eprintln!(
                "satchel agent: {refused}; the bundle accepted before (version {}) stays in force",
                b.manifest.version
            );
            Ok((b, bytes, Some(refused)))
        }
        Err(_) => Err(Exit::new(
            2,
            format!("{refused}; no bundle was accepted before, so there is no policy to enforce"),
        )
        .into()),
    }
}

/// Run the agent until SIGTERM or SIGINT.
pub(crate) fn run(s: Settings) -> anyhow::Result<()> {
    std::fs::create_dir_all(&s.state_dir)
        .with_context(|| format!("creating {}", s.state_dir.display()))?;
    let key = persist::keys::read_public(&s.bundle_key)
        .map_err(|e| Exit::new(2, format!("the bundle key: {e}")))?;
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

    // The pid file is locked while an agent runs. Found unlocked with a pid
    // in it, it means the last agent died: exec went unenforced from its
    // last heartbeat until now.
    let pid_path = s.state_dir.join(PID_FILE);
    let mut pid_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&pid_path)
        .with_context(|| format!("opening {}", pid_path.display()))?;
    if rustix::fs::flock(
        &pid_file,
        rustix::fs::FlockOperation::NonBlockingLockExclusive,
    )
    .is_err()
    {
        let other = std::fs::read_to_string(&pid_path).unwrap_or_default();
        return Err(Exit::new(
            2,
            format!(
                "another agent (pid {}) runs with the state directory {}",
                other.trim(),
                s.state_dir.display()
            ),
        )
        .into());
    }
    let mut old = String::new();
    std::io::Read::read_to_string(&mut pid_file, &mut old)?;
    let gap = (!old.trim().is_empty()).then(|| {
        let last: Option<Status> = std::fs::read(s.state_dir.join(STATUS_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let from = last.map(|st| st.heartbeat_ms).filter(|h| *h > 0);
        json!({"previous_pid": old.trim(), "from_ms": from, "to_ms": now_ms()})
    });
    if let Some(g) = &gap {
        eprintln!(
            "satchel agent: the previous agent (pid {}) stopped without shutting down: exec was not enforced {} (the kernel allows every exec while no agent answers)",
            g["previous_pid"].as_str().unwrap_or("?"),
            gap_text(g)
        );
    }

    let counters = Arc::new(Counters::default());
    let mut enforcer = Enforcer::start(&s.mounts, Arc::clone(&active), Arc::clone(&counters))
        .map_err(|e| Exit::new(2, e.to_string()))?;
    holder.group = Some(enforcer.group());
    pid_file.set_len(0)?;
    std::io::Write::write_all(
        &mut std::io::Seek::seek(&mut pid_file, std::io::SeekFrom::Start(0)).map(|_| &pid_file)?,
        format!("{}\n", std::process::id()).as_bytes(),
    )?;
    pid_file.sync_all()?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<ExecReport>();
    let stop = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let (stop2, alive2) = (Arc::clone(&stop), Arc::clone(&alive));
    let worker = std::thread::Builder::new()
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
        })?;
    eprintln!(
        "satchel agent: enforcing {} for {} on {} (policy version {})",
        mode_name(holder.current_mode()),
        s.subject,
        s.mounts
            .iter()
            .map(|m| m.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        holder.current_version()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let worker = Worker {
        stop,
        alive,
        thread: Some(worker),
    };
    let result = rt.block_on(service(&s, holder, rx, counters, gap, refused, worker));
    rt.shutdown_timeout(Duration::from_secs(2));
    if result.is_ok() {
        // A clean stop: no gap to report next time.
        let _ = pid_file.set_len(0);
    }
    result
}

/// The exec decision thread, as the service loop sees it.
struct Worker {
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    /// Stop it and wait (it polls every 200 ms).
    fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long a gap lasted, for messages.
fn gap_text(g: &Value) -> String {
    match (g["from_ms"].as_i64(), g["to_ms"].as_i64()) {
        (Some(from), Some(to)) => format!("for {:.1} s", (to - from) as f64 / 1000.0),
        _ => "for an unknown time (no heartbeat was recorded)".to_owned(),
    }
}

struct Loop<'a> {
    /// A sync running on its own thread (a large pull must not stall the
    /// heartbeat, the spool or bundle refresh).
    sync_task: Option<tokio::sync::oneshot::Receiver<(String, Value)>>,
    s: &'a Settings,
    holder: Holder,
    spool: Spool,
    status: Status,
    counters: Arc<Counters>,
    next_attest_ms: i64,
    attest_backoff: Duration,
}

async fn service(
    s: &Settings,
    holder: Holder,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ExecReport>,
    counters: Arc<Counters>,
    gap: Option<Value>,
    refused: Option<String>,
    mut worker: Worker,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let spool = Spool::open(&s.state_dir.join("spool.db")).await?;
    let mut l = Loop {
        sync_task: None,
        s,
        status: Status {
            pid: std::process::id(),
            started_ms: now_ms(),
            subject: s.subject.clone(),
            mounts: s.mounts.iter().map(|m| m.display().to_string()).collect(),
            gateway: if s.gateway.is_some() {
                "unknown"
            } else {
                "none (offline)"
            }
            .to_owned(),
            last_gap: gap.clone(),
            bundle_refused: refused.clone(),
            ..Status::default()
        },
        holder,
        spool,
        counters,
        next_attest_ms: 0,
        attest_backoff: Duration::from_secs(5),
    };
    let mut first = vec![l.entry(
        "agent",
        "agent",
        "start",
        json!({"mode": mode_name(l.holder.current_mode()), "policy_version": l.holder.current_version(), "mounts": l.status.mounts}),
    )];
    if let Some(g) = gap {
        first.push(l.entry("agent", "exec-enforcement", "gap", g));
    }
    if let Some(r) = refused {
        first.push(l.entry("agent", "bundle", "refused", json!({"reason": r})));
    }
    l.spool.add(&first).await?;
    l.write_status().await;

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(2));
    let mut deliver = tokio::time::interval(s.deliver_interval);
    let mut refresh = tokio::time::interval(s.refresh_interval);
    let mut sync = tokio::time::interval(s.sync_interval);
    let mut attest = tokio::time::interval(Duration::from_secs(5));
    for t in [
        &mut heartbeat,
        &mut deliver,
        &mut refresh,
        &mut sync,
        &mut attest,
    ] {
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    }
    loop {
        tokio::select! {
            Some(first) = rx.recv() => {
                // Gather what comes within 20 ms: one durable write (one
                // fsync) per burst, not per exec.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut batch = vec![first];
                while let Ok(r) = rx.try_recv() {
                    batch.push(r);
                    if batch.len() >= 1000 { break; }
                }
                l.exec_reports(batch).await;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { l.refresh(true).await; l.write_status().await; }
            _ = usr1.recv() => l.start_sync(),
            _ = heartbeat.tick() => {
                if !worker.alive.load(Ordering::Relaxed) {
                    // Exit, so the kernel stops waiting for answers that
                    // will never come (and allows, as with any dead agent).
                    return Err(anyhow::anyhow!("the exec decision thread stopped"));
                }
                l.write_status().await;
            }
            _ = deliver.tick() => l.deliver().await,
            _ = refresh.tick() => l.refresh(false).await,
            _ = sync.tick() => l.start_sync(),
            Some(done) = async { l.sync_task.as_mut()?.await.ok() }, if l.sync_task.is_some() => {
                l.sync_task = None;
                l.sync_done(done).await;
                l.write_status().await;
            }
            _ = attest.tick() => l.attest().await,
        }
    }
    // Stop deciding first, so every decision made is spooled.
    worker.stop();
    while let Ok(r) = rx.try_recv() {
        l.exec_reports(vec![r]).await;
    }
    let stop = l.entry("agent", "agent", "stop", json!({}));
    let _ = l.spool.add(&[stop]).await;
    l.deliver().await;
    l.write_status().await;
    eprintln!("satchel agent: stopped");
    Ok(())
}

impl Loop<'_> {
    fn entry(&self, kind: &str, subject: &str, decision: &str, details: Value) -> SpoolEntry {
        SpoolEntry {
            seq: 0,
            at_ms: now_ms(),
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            decision: decision.to_owned(),
            details,
        }
    }

    async fn exec_reports(&mut self, batch: Vec<ExecReport>) {
        let entries: Vec<SpoolEntry> = batch
            .into_iter()
            .map(|r| {
                if r.decision != "allow" {
                    eprintln!(
                        "satchel agent: {} exec of {} (sha256 {}, pid {}): {}",
                        if r.decision == "deny" { "denied" } else { "monitor mode: would deny" },
                        r.path,
                        if r.sha256.is_empty() { "-" } else { &r.sha256 },
                        r.pid,
                        r.why
                    );
                }
                SpoolEntry {
                    seq: 0,
                    at_ms: r.at_ms,
                    kind: "exec".to_owned(),
                    subject: r.path,
                    decision: r.decision.to_owned(),
                    details: json!({"sha256": r.sha256, "pid": r.pid, "rule": r.why, "device_subject": self.s.subject}),
                }
            })
            .collect();
        if let Err(e) = self.spool.add(&entries).await {
            eprintln!(
                "satchel agent: spooling {} exec entries failed: {e:#}",
                entries.len()
            );
        }
    }

    async fn record(&mut self, kind: &str, subject: &str, decision: &str, details: Value) {
        let e = self.entry(kind, subject, decision, details);
        if let Err(err) = self.spool.add(&[e]).await {
            eprintln!("satchel agent: spooling failed: {err:#}");
        }
    }

    fn gateway_args(&self) -> Option<GatewayArgs> {
        self.s.gateway.as_ref().map(|(url, ca, data)| GatewayArgs {
            gateway: url.clone(),
            ca: ca.clone(),
            data: data.clone(),
        })
    }

    /// Send spooled entries, oldest first, until none wait or the gateway
    /// is unreachable.
    async fn deliver(&mut self) {
        let Some(gw) = self.gateway_args() else {
            return;
        };
        let Ok(c) = device_client(&gw) else {
            self.status.gateway = "no device certificate yet".to_owned();
            return;
        };
        loop {
            let batch = match self.spool.oldest(500).await {
                Ok(b) if b.is_empty() => return,
                Ok(b) => b,
                Err(e) => {
                    eprintln!("satchel agent: reading the spool: {e:#}");
                    return;
                }
            };
            let body = json!({"epoch": self.spool.epoch(), "entries": batch});
            match c.post("/v1/agent/spool", &body).await {
                Ok((200, answer)) => {
                    self.status.gateway = "online".to_owned();
                    let through = answer["accepted_through"].as_i64().unwrap_or(0);
                    if let Err(e) = self.spool.delivered_through(through).await {
                        eprintln!("satchel agent: trimming the spool: {e:#}");
                        return;
                    }
                    if through < batch.last().map_or(0, |e| e.seq) {
                        return;
                    }
                }
                Ok((status, answer)) => {
                    self.status.gateway = format!(
                        "refused the spool ({status}: {})",
                        answer["detail"].as_str().unwrap_or("no detail")
                    );
                    return;
                }
                Err(e) => {
                    self.status.gateway = format!("offline ({e})");
                    return;
                }
            }
        }
    }

    /// Look for a newer bundle: in the configured file, and at the gateway.
    async fn refresh(&mut self, verbose: bool) {
        self.holder.flush();
        let mut offers: Vec<(String, Vec<u8>)> = Vec::new();
        match std::fs::read(&self.s.bundle) {
            Ok(b) => offers.push((self.s.bundle.display().to_string(), b)),
            Err(e) if verbose => eprintln!("satchel agent: {}: {e}", self.s.bundle.display()),
            Err(_) => {}
        }
        if let Some(gw) = self.gateway_args() {
            if let Ok(c) = device_client(&gw) {
                match c
                    .send(
                        hyper::Method::GET,
                        "/v1/agent/bundle",
                        "application/json",
                        Vec::new(),
                        None,
                    )
                    .await
                {
                    Ok((200, b)) => offers.push(("the gateway".to_owned(), b.to_vec())),
                    Ok(_) => {}
                    Err(e) => self.status.gateway = format!("offline ({e})"),
                }
            }
        }
        for (source, bytes) in offers {
            let before = self.holder.current_version();
            match self.holder.offer(&bytes) {
                Ok(true) => {
                    let v = self.holder.current_version();
                    if source == "the gateway" {
                        // Where an offline start looks first (the state
                        // directory keeps a copy too).
                        if let Err(e) = crate::cmd::write_atomic(&self.s.bundle, &bytes) {
                            eprintln!("satchel agent: {e:#}");
                        }
                    }
                    eprintln!("satchel agent: policy bundle version {v} from {source} is in force (was {before})");
                    self.status.bundle_refused = None;
                    self.record(
                        "agent",
                        "bundle",
                        "accepted",
                        json!({"version": v, "previous": before, "source": source}),
                    )
                    .await;
                }
                Ok(false) => {}
                Err(reason) => {
                    let msg = format!("{source}: {reason}");
                    if self.status.bundle_refused.as_deref() != Some(msg.as_str()) {
                        eprintln!(
                            "satchel agent: bundle refused, version {before} stays in force: {msg}"
                        );
                        self.record(
                            "agent",
                            "bundle",
                            "refused",
                            json!({"reason": msg, "in_force": before}),
                        )
                        .await;
                    }
                    self.status.bundle_refused = Some(msg);
                }
            }
        }
    }

    /// Re-attest when the certificate is missing or expires within the
    /// margin; back off on failure (5 s doubling to 5 min).
    async fn attest(&mut self) {
        let Some(gw) = self.gateway_args() else {
            return;
        };
        if self.s.logs.is_empty() {
            self.status.attested_until_ms = cert_not_after(&gw.data.join("device.crt"));
            return;
        }
        let until = cert_not_after(&gw.data.join("device.crt"));
        self.status.attested_until_ms = until;
        let margin = i64::try_from(self.s.reattest_margin.as_millis()).unwrap_or(i64::MAX);
        let due = until.is_none_or(|u| u - now_ms() <= margin);
        if !due || now_ms() < self.next_attest_ms {
            return;
        }
        let tpm = TpmArgs::with(self.s.tpm.clone());
        match attest_once(&gw, &tpm, &self.s.logs, self.s.config.as_deref()).await {
            Ok((id, valid)) => {
                self.attest_backoff = Duration::from_secs(5);
                // Not again before half the validity is gone, whatever the
                // margin says (a margin longer than the lifetime would
                // otherwise attest on every check).
                let half = i64::try_from(valid.saturating_mul(500)).unwrap_or(i64::MAX);
                self.next_attest_ms = now_ms().saturating_add(half.max(5_000));
                self.status.attest_error = None;
                self.status.attested_until_ms = cert_not_after(&gw.data.join("device.crt"));
                eprintln!("satchel agent: attested as {id}; certificate valid {valid} s");
                self.record("attest", &id, "trusted", json!({"valid_s": valid}))
                    .await;
            }
            Err(e) => {
                let msg = format!("{e:#}");
                self.next_attest_ms =
                    now_ms() + i64::try_from(self.attest_backoff.as_millis()).unwrap_or(0);
                eprintln!(
                    "satchel agent: attestation failed, next try in {} s: {msg}",
                    self.attest_backoff.as_secs()
                );
                self.attest_backoff = (self.attest_backoff * 2).min(Duration::from_secs(300));
                self.status.attest_error = Some(msg.clone());
                self.record("attest", "attestation", "failed", json!({"error": msg}))
                    .await;
            }
        }
    }

    /// Start a sync on its own thread unless one is running.
    fn start_sync(&mut self) {
        if self.sync_task.is_some() {
            return;
        }
        let (Some(gw), Some((image, root))) = (self.gateway_args(), self.s.image.clone()) else {
            return;
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || {
                let done = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(sync_once(&gw, &image, &root)),
                    Err(e) => (format!("failed: {e}"), json!({"image": image})),
                };
                let _ = tx.send(done);
            });
        match spawned {
            Ok(_) => self.sync_task = Some(rx),
            Err(e) => eprintln!("satchel agent: cannot start a sync: {e}"),
        }
    }

    /// Record a finished sync.
    async fn sync_done(&mut self, (result, details): (String, Value)) {
        let image = details["image"].as_str().unwrap_or("").to_owned();
        self.status.last_sync = Some(json!({"at_ms": now_ms(), "image": image, "result": result}));
        let decision = if result == "ok" { "synced" } else { "failed" };
        self.record("sync", &image, decision, details).await;
    }

    async fn write_status(&mut self) {
        self.status.heartbeat_ms = now_ms();
        self.status.mode = mode_name(self.holder.current_mode()).to_owned();
        self.status.policy_version = self.holder.current_version();
        self.status.spool_waiting = self.spool.waiting().await.unwrap_or(-1);
        let c = &self.counters;
        self.status.exec = json!({
            "events": c.events.load(Ordering::Relaxed),
            "cache_hits": c.cache_hits.load(Ordering::Relaxed),
            "denied": c.denied.load(Ordering::Relaxed),
            "monitored": c.monitored.load(Ordering::Relaxed),
            "decide_ns_total": c.decide_ns.load(Ordering::Relaxed),
            "kernel_cached": c.kernel_cached.load(Ordering::Relaxed),
        });
        if let Ok(text) = serde_json::to_vec_pretty(&self.status) {
            let _ = crate::cmd::write_atomic(&self.s.state_dir.join(STATUS_FILE), &text);
        }
    }
}

/// When a PEM certificate stops being valid (ms since the epoch).
fn cert_not_after(path: &Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = p.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp() * 1000)
}

/// `satchel agent status`: the status file and the spool, read afresh.
pub(crate) fn status(state_dir: &Path, as_json: bool) -> anyhow::Result<bool> {
    let path = state_dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|e| {
        Exit::new(
            2,
            format!(
                "{}: {e} (has an agent run with --state-dir {}?)",
                path.display(),
                state_dir.display()
            ),
        )
    })?;
    let mut st: Status = serde_json::from_slice(&bytes).map_err(|e| {
        Exit::new(
            2,
            format!("{}: not an agent status file: {e}", path.display()),
        )
    })?;
    let alive = std::path::Path::new(&format!("/proc/{}", st.pid)).exists()
        && std::fs::read_to_string(state_dir.join(PID_FILE))
            .is_ok_and(|p| p.trim() == st.pid.to_string())
        && now_ms() - st.heartbeat_ms < 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Ok(n) = rt.block_on(async {
        let s = Spool::open(&state_dir.join("spool.db")).await?;
        s.waiting().await
    }) {
        st.spool_waiting = n;
    }
    if as_json {
        let mut v = serde_json::to_value(&st)?;
        v["running"] = json!(alive);
        println!("{v}");
        return Ok(alive);
    }
    let ago = |ms: i64| {
        humantime::format_duration(Duration::from_secs(
            u64::try_from((now_ms() - ms) / 1000).unwrap_or(0),
        ))
    };
    println!(
        "running:        {}",
        if alive {
            format!("yes (pid {})", st.pid)
        } else {
            format!("no (last heartbeat {} ago)", ago(st.heartbeat_ms))
        }
    );
    println!("subject:        {}", st.subject);
    println!("mode:           {} on {}", st.mode, st.mounts.join(", "));
    println!("policy bundle:  version {}", st.policy_version);
    if let Some(r) = &st.bundle_refused {
        println!("bundle refused: {r}");
    }
    println!("gateway:        {}", st.gateway);
    println!(
        "attested until: {}",
        st.attested_until_ms.map_or("-".to_owned(), |u| {
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(u).unwrap_or(0)),
            )
            .to_string()
        })
    );
    if let Some(e) = &st.attest_error {
        println!("attestation:    failing: {e}");
    }
    println!(
        "last sync:      {}",
        st.last_sync.as_ref().map_or("-".to_owned(), |s| format!(
            "{} ({} ago)",
            s["result"].as_str().unwrap_or("?"),
            ago(s["at_ms"].as_i64().unwrap_or(0))
        ))
    );
    println!("spool:          {} entries waiting", st.spool_waiting);
    let events = st.exec["events"].as_u64().unwrap_or(0);
    let avg_us =
        st.exec["decide_ns_total"].as_u64().unwrap_or(0) as f64 / events.max(1) as f64 / 1000.0;
    println!(
        "exec:           {events} decided ({avg_us:.1} us each in the agent), {} from cache, {} denied, {} let through (monitor); {} files allowed by the kernel until modified",
        st.exec["cache_hits"], st.exec["denied"], st.exec["monitored"], st.exec["kernel_cached"]
    );
    if let Some(g) = &st.last_gap {
        println!(
            "last gap:       the agent before pid {} died; exec unenforced {}",
            st.pid,
            gap_text(g)
        );
    }
    Ok(alive)
}

/// One sync: push this device's changes first (the push merges three-way
/// and applies the result), then pull what is new; a first sync has nothing
/// to push. (result, audit details).
async fn sync_once(gw: &GatewayArgs, image: &str, root: &Path) -> (String, Value) {
    let c = match device_client(gw) {
        Ok(c) => c,
        Err(e) => return (format!("not attested: {e:#}"), json!({"image": image})),
    };
    let meter = gateway::Meter::new(None);
    let pushed = if gateway::sync_client::state_path(&gw.data, image).exists() {
        Some(gateway::sync_client::push(&c, &gw.data, image, root, None, &meter).await)
    } else {
        None
    };
    let pulled = match &pushed {
        Some(Err(_)) => None,
        _ => Some(gateway::sync_client::pull(&c, &gw.data, image, root, None, &meter).await),
    };
    match (&pushed, &pulled) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => (
            format!("failed: {e}"),
            json!({"image": image, "error": e.to_string()}),
        ),
        (pushed, Some(Ok(p))) => {
            let r = pushed.as_ref().and_then(|r| r.as_ref().ok());
            (
                "ok".to_owned(),
                json!({
                    "image": image,
                    "applied": p.layers_applied,
                    "kept": p.layers_kept,
                    "checked_in": r.map(|r| &r.layers),
                    "conflicts": r.map(|r| &r.conflicts),
                    "violations": r.map(|r| &r.violations),
                    "bytes_received": meter.bytes_received(),
                    "bytes_sent": meter.bytes_sent(),
                }),
            )
        }
        (_, None) => ("failed".to_owned(), json!({"image": image})),
    }
}
