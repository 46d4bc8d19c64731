//! The agent's service loop: exec decisions spooled in bursts, the
//! heartbeat and status file, delivery of the spool to the gateway, bundle
//! refresh, re-attestation before the certificate expires, and the
//! background sync of the pushed image.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use policy::bundle::Mode;
use protocol::agent::{Delivered, Delivery};
use protocol::paths;
use serde_json::{json, Value};

use super::exec::{Counters, ExecReport};
use super::holder::Holder;
use super::spool::{Spool, SpoolEntry};
use super::{mode_name, now_ms, AgentError, Settings, Status, Worker, STATUS_FILE};
use crate::client::CallError;
use crate::identity::GatewayConfig;

/// Run the service loop until SIGTERM or SIGINT, then stop deciding,
/// spool what was decided and deliver it.
pub(super) async fn service(
    s: &Settings,
    holder: Holder,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<ExecReport>,
    counters: Arc<Counters>,
    (gap, refused): (Option<Value>, Option<String>),
    mut worker: Worker,
    system: Vec<super::system::Setting>,
) -> Result<(), AgentError> {
    // The handlers first: the status file written next tells the world the
    // agent runs, and a SIGTERM from then on must stop it cleanly.
    let mut signals = Signals::new().map_err(AgentError::Runtime)?;
    let spool = Spool::open(&s.state_dir.join("spool.db")).await?;
    let mut l = Loop::new(s, holder, spool, counters, gap.clone(), refused.clone());
    l.status.system = system;
    l.started(gap, refused).await?;
    // For systemd (Type=notify): enforcement is in place, the session may
    // start. Nothing happens without NOTIFY_SOCKET.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        eprintln!("satchel agent: telling systemd it is ready failed: {e}");
    }
    let mut t = Timers::new(s);
    loop {
        tokio::select! {
            Some(first) = rx.recv() => l.exec_burst(first, &mut rx).await,
            _ = signals.term.recv() => break,
            _ = signals.int.recv() => break,
            _ = signals.hup.recv() => { l.refresh(true).await; l.write_status().await; }
            _ = signals.usr1.recv() => l.start_sync(),
            _ = t.heartbeat.tick() => {
                if !worker.alive() {
                    // Exit, so the kernel stops waiting for answers that
                    // will never come (and allows, as with any dead agent).
                    return Err(AgentError::DecisionsStopped);
                }
                l.check_system().await;
                l.write_status().await;
            }
            _ = t.deliver.tick() => l.deliver().await,
            _ = t.refresh.tick() => { l.refresh(false).await; l.witness().await; }
            _ = t.sync.tick() => l.start_sync(),
            Some(done) = async { l.sync_task.as_mut()?.await.ok() }, if l.sync_task.is_some() => {
                l.sync_task = None;
                l.sync_done(done).await;
                l.write_status().await;
            }
            _ = t.attest.tick() => l.attest().await,
        }
    }
    l.stopping(&mut worker, &mut rx).await;
    Ok(())
}

/// The signals the agent answers: TERM and INT stop it, HUP re-reads the
/// bundle, USR1 syncs now.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
        })
    }
}

/// The loop's periodic work.
struct Timers {
    heartbeat: tokio::time::Interval,
    deliver: tokio::time::Interval,
    refresh: tokio::time::Interval,
    sync: tokio::time::Interval,
    attest: tokio::time::Interval,
}

impl Timers {
    fn new(s: &Settings) -> Timers {
        let every = |d: Duration| {
            let mut t = tokio::time::interval(d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        };
        Timers {
            heartbeat: every(Duration::from_secs(2)),
            deliver: every(s.deliver_interval),
            refresh: every(s.refresh_interval),
            sync: every(s.sync_interval),
            attest: every(Duration::from_secs(5)),
        }
    }
}

impl<'a> Loop<'a> {
    fn new(
        s: &'a Settings,
        holder: Holder,
        spool: Spool,
        counters: Arc<Counters>,
        gap: Option<Value>,
        refused: Option<String>,
    ) -> Loop<'a> {
        let gateway = if s.gateway.is_some() {
            "unknown"
        } else {
            "none (offline)"
        };
        Loop {
            sync_task: None,
            s,
            status: Status {
                pid: std::process::id(),
                started_ms: now_ms(),
                subject: s.subject.clone(),
                mounts: s.mounts.iter().map(|m| m.display().to_string()).collect(),
                root: s.root.as_ref().map(|r| r.display().to_string()),
                gateway: gateway.to_owned(),
                last_gap: gap,
                bundle_refused: refused,
                ..Status::default()
            },
            holder,
            spool,
            counters,
            next_attest_ms: 0,
            attest_backoff: Duration::from_secs(5),
        }
    }

    /// Spool the start (and any gap or refused bundle) and write the status.
    async fn started(
        &mut self,
        gap: Option<Value>,
        refused: Option<String>,
    ) -> Result<(), AgentError> {
        let mut first = vec![self.entry(
            "agent",
            "agent",
            "start",
            json!({"mode": mode_name(self.holder.current_mode()), "policy_version": self.holder.current_version(), "mounts": self.status.mounts}),
        )];
        if let Some(g) = gap {
            first.push(self.entry("agent", "exec-enforcement", "gap", g));
        }
        if let Some(r) = refused {
            first.push(self.entry("agent", "bundle", "refused", json!({"reason": r})));
        }
        self.spool.add(&first).await?;
        self.write_status().await;
        Ok(())
    }

    /// Spool `first` and what comes within 20 ms: one durable write (one
    /// fsync) per burst, not per exec.
    async fn exec_burst(
        &mut self,
        first: ExecReport,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<ExecReport>,
    ) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut batch = vec![first];
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
            if batch.len() >= 1000 {
                break;
            }
        }
        self.exec_reports(batch).await;
    }

    /// Stop deciding first, so every decision made is spooled; then spool
    /// the stop and deliver.
    async fn stopping(
        &mut self,
        worker: &mut Worker,
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<ExecReport>,
    ) {
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        worker.stop();
        while let Ok(r) = rx.try_recv() {
            self.exec_reports(vec![r]).await;
        }
        let stop = self.entry("agent", "agent", "stop", json!({}));
        let _ = self.spool.add(&[stop]).await;
        self.deliver().await;
        self.write_status().await;
        eprintln!("satchel agent: stopped");
    }
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

pub(super) struct Loop<'a> {
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
                    let word = match r.decision {
                        "deny" => "denied",
                        "alarm" => "alarm:",
                        _ => "monitor mode: would deny",
                    };
                    eprintln!(
                        "satchel agent: {word} {} of {} (sha256 {}, pid {}): {}",
                        r.attempt,
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
                    details: json!({"sha256": r.sha256, "pid": r.pid, "rule": r.why, "attempt": r.attempt, "device_subject": self.s.subject}),
                }
            })
            .collect();
        if let Err(e) = self.spool.add(&entries).await {
            eprintln!(
                "satchel agent: spooling {} exec entries failed: {e}",
                entries.len()
            );
        }
    }

    async fn record(&mut self, kind: &str, subject: &str, decision: &str, details: Value) {
        let e = self.entry(kind, subject, decision, details);
        if let Err(err) = self.spool.add(&[e]).await {
            eprintln!("satchel agent: spooling failed: {err}");
        }
    }

    /// Send spooled entries, oldest first, until none wait or the gateway
    /// is unreachable.
    async fn deliver(&mut self) {
        let Some(gw) = self.s.gateway.clone() else {
            return;
        };
        let Ok(c) = gw.device_client() else {
            self.status.gateway = "no device certificate yet".to_owned();
            return;
        };
        loop {
            let batch = match self.spool.oldest(500).await {
                Ok(b) if b.is_empty() => return,
                Ok(b) => b,
                Err(e) => {
                    eprintln!("satchel agent: reading the spool: {e}");
                    return;
                }
            };
            let last = batch.last().map_or(0, |e| e.seq);
            let body = Delivery {
                epoch: self.spool.epoch().to_owned(),
                entries: batch,
            };
            let answer: Result<Delivered, _> =
                c.call("spool delivery", paths::AGENT_SPOOL, &body).await;
            match answer {
                Ok(done) => {
                    self.status.gateway = "online".to_owned();
                    let through = done.accepted_through;
                    if let Err(e) = self.spool.delivered_through(through).await {
                        eprintln!("satchel agent: trimming the spool: {e}");
                        return;
                    }
                    if through < last {
                        return;
                    }
                }
                Err(CallError::Refused { problem, .. }) => {
                    self.status.gateway = format!(
                        "refused the spool ({}: {})",
                        problem.status,
                        if problem.detail.is_empty() {
                            "no detail"
                        } else {
                            &problem.detail
                        }
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
        if let Some(gw) = self.s.gateway.clone() {
            if let Ok(c) = gw.device_client() {
                match c
                    .send(
                        hyper::Method::GET,
                        paths::AGENT_BUNDLE,
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
            // A bundle from the gateway is kept where an offline start looks
            // first, durably, before it is in force (the state directory
            // keeps a copy too).
            let keep_as = (source == "the gateway").then_some(self.s.bundle.as_path());
            match self.holder.offer(&bytes, keep_as) {
                Ok(true) => {
                    let v = self.holder.current_version();
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

    /// Witness the gateway's audit log: a shrunk, forked or unprovable log
    /// is an alarm, shown in the status and spooled (once per distinct alarm).
    async fn witness(&mut self) {
        let Some(gw) = self.s.gateway.clone() else {
            return;
        };
        match crate::witness::witness(&gw).await {
            Ok(_) => self.status.audit_alarm = None,
            Err(crate::witness::WitnessError::Alarm(alarm)) => {
                let msg = alarm.to_string();
                if self.status.audit_alarm.as_deref() != Some(msg.as_str()) {
                    eprintln!("satchel agent: {msg}");
                    self.record("audit", "gateway-audit-log", "alarm", json!({"alarm": msg}))
                        .await;
                }
                self.status.audit_alarm = Some(msg);
            }
            Err(e) => tracing::debug!(error = %e, "audit witness: gateway not asked"),
        }
    }

    /// Re-attest when the certificate is missing or expires within the
    /// margin; back off on failure (5 s doubling to 5 min).
    async fn attest(&mut self) {
        let Some(gw) = self.s.gateway.clone() else {
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
        match crate::attestation::attest_once(&gw, &self.s.tcti, &self.s.logs).await {
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
                let msg = error_chain(&e);
                self.next_attest_ms =
                    now_ms() + i64::try_from(self.attest_backoff.as_millis()).unwrap_or(0);
                eprintln!(
                    "satchel agent: attestation failed, next try in {} s: {msg}",
                    self.attest_backoff.as_secs()
                );
                self.attest_backoff =
                    jittered((self.attest_backoff * 2).min(Duration::from_secs(300)));
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
        let (Some(gw), Some((image, root))) = (self.s.gateway.clone(), self.s.image.clone()) else {
            return;
        };
        let max_rate = self.s.sync_max_rate;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let spawned = std::thread::Builder::new()
            .name("sync".into())
            .spawn(move || {
                let done = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(sync_once(&gw, &image, &root, max_rate)),
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

    /// Closed mode, every heartbeat: in lockdown, a kernel setting that
    /// held and was changed back is set again, and the drift recorded.
    async fn check_system(&mut self) {
        if self.s.root.is_none() {
            return;
        }
        let lockdown = self.holder.current_mode() == Mode::Lockdown;
        let mut now = super::system::settings(false);
        let lost: Vec<String> = now
            .iter()
            .filter(|s| !s.holds)
            .filter(|s| {
                self.status
                    .system
                    .iter()
                    .any(|p| p.name == s.name && p.holds)
            })
            .map(|s| format!("{} = {}", s.name, s.found))
            .collect();
        // In lockdown, what does not hold is set (again): also after a
        // turn from monitor mode, which applied nothing.
        if lockdown && now.iter().any(|s| !s.holds) {
            now = super::system::settings(true);
        }
        if lockdown && !lost.is_empty() {
            eprintln!(
                "satchel agent: kernel settings changed under lockdown: {}; set again",
                lost.join(", ")
            );
            let details = json!({"changed": lost, "holds": super::system::failing(&now).is_none()});
            self.record("agent", "system-settings", "drifted", details)
                .await;
        }
        // A setting that still does not hold keeps the reason it could not
        // be set (a read alone does not say).
        for s in now.iter_mut().filter(|s| !s.holds && s.error.is_none()) {
            s.error = self
                .status
                .system
                .iter()
                .find(|p| p.name == s.name)
                .and_then(|p| p.error.clone());
        }
        self.status.system = now;
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
            "opens": c.opens.load(Ordering::Relaxed),
        });
        if let Ok(m) = c.marked.lock() {
            self.status.marked = m.clone();
        }
        if let Ok(m) = c.confined.lock() {
            self.status.confined = m.clone();
        }
        if let Ok(text) = serde_json::to_vec_pretty(&self.status) {
            let _ = persist::write_atomic(&self.s.state_dir.join(STATUS_FILE), &text);
        }
    }
}

/// `d` give or take a fifth, at random: devices that failed together (a
/// gateway restart) do not all come back in the same second.
pub(super) fn jittered(d: Duration) -> Duration {
    use rand_core::RngCore as _;
    let r = f64::from(rand_core::OsRng.next_u32()) / f64::from(u32::MAX);
    d.mul_f64(0.8 + 0.4 * r)
}

/// When a PEM certificate stops being valid (ms since the epoch).
pub(super) fn cert_not_after(path: &Path) -> Option<i64> {
    let pem = std::fs::read(path).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = p.parse_x509().ok()?;
    Some(cert.validity().not_after.timestamp() * 1000)
}

/// How long the clean-up after a pull waits for another user of the store
/// (a `satchel client sync` run by hand) before it gives up until the next.
const CLEAN_WAIT: Duration = Duration::from_secs(30);

/// One sync: push this device's changes first (the push merges three-way
/// and applies the result), then pull what is new; a first sync has nothing
/// to push. (result, audit details).
async fn sync_once(
    gw: &GatewayConfig,
    image: &str,
    root: &Path,
    max_rate: Option<u64>,
) -> (String, Value) {
    let c = match gw.device_client() {
        Ok(c) => c,
        Err(e) => return (format!("not attested: {e}"), json!({"image": image})),
    };
    let meter = crate::Meter::new(max_rate);
    let target = crate::sync::Target {
        client: &c,
        cdir: &gw.data,
        image,
        root,
        meter: &meter,
    };
    let pushed = if crate::sync::state_path(&gw.data, image).exists() {
        Some(crate::sync::push(&target, None).await)
    } else {
        None
    };
    // A push the gateway refused as against an unknown base (the version
    // this device held was removed there) still pulls: system layers come
    // back to the image's, and user layers with unpushed changes stay.
    let pulled = match &pushed {
        Some(Err(crate::sync::SyncError::Refused { status: 409, .. })) | None | Some(Ok(_)) => {
            Some(crate::sync::pull(&target, None).await)
        }
        Some(Err(_)) => None,
    };
    match (&pushed, &pulled) {
        (Some(Err(e)), _) | (_, Some(Err(e))) => (
            format!("failed: {e}"),
            json!({"image": image, "error": e.to_string()}),
        ),
        (pushed, Some(Ok(p))) => {
            let r = pushed.as_ref().and_then(|r| r.as_ref().ok());
            // A version replaced: its chunks are no longer needed here.
            let cleaned = if p.layers_applied.is_empty() {
                Value::Null
            } else {
                let cdir = gw.data.clone();
                match tokio::task::spawn_blocking(move || {
                    crate::sync::clean(&cdir, CLEAN_WAIT, false)
                })
                .await
                {
                    Ok(Ok(c)) => {
                        json!({"removed": c.removed, "bytes_before": c.bytes_before, "bytes_after": c.bytes_after})
                    }
                    Ok(Err(e)) => json!({"error": e.to_string()}),
                    Err(e) => json!({"error": e.to_string()}),
                }
            };
            (
                "ok".to_owned(),
                json!({
                    "cleaned": cleaned,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_within_a_fifth() {
        let d = Duration::from_secs(10);
        let samples: Vec<Duration> = (0..1000).map(|_| jittered(d)).collect();
        assert!(samples
            .iter()
            .all(|s| *s >= Duration::from_secs(8) && *s <= Duration::from_secs(12)));
        let (lo, hi) = (samples.iter().min(), samples.iter().max());
        // Spread over the range, not one value.
        assert!(hi
            .zip(lo)
            .is_some_and(|(h, l)| *h - *l > Duration::from_secs(2)));
    }
}
