//! `satchel agent`: run the client agent, or print its state.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use policy::bundle::Mode;

use super::Exit;
use crate::config::Config;
use device::agent::Settings;

/// Where the agent keeps its state unless told.
pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/satchel/agent";

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
#[command(after_help = "Examples:
  # offline, on the signed bundle alone:
  satchel agent --bundle /etc/satchel/policy.bundle --bundle-key /etc/satchel/org.key.pub \\
      --subject device:laptop-17 --mount /home --mount /srv/guest
  # online: re-attests, fetches newer bundles, delivers the spool, syncs the image
  satchel agent --config /etc/satchel/satchel.toml
  # closed mode, for a device whose users have a shell: every file system is
  # decided, the loader and interpreters are restricted, memfd execs and user
  # namespaces are switched off (lockdown refuses to start if they cannot be)
  satchel agent --bundle ... --bundle-key ... --subject device:kiosk-3 --root /
  satchel agent status

Every exec of a file on a marked mount waits for the agent's decision (fanotify,
FAN_OPEN_EXEC_PERM; root). Lockdown: a program the bundle does not allow fails with
\"Operation not permitted\". Monitor: it runs and the deny is reported. Only the file
systems of the mount points named (and with --root, every one under the root) are marked. SIGHUP re-reads the bundle; SIGUSR1 syncs now; SIGTERM stops.
Options also come from the [agent] table of the config file (docs/agent.md).")]
pub(crate) struct AgentArgs {
    #[command(subcommand)]
    cmd: Option<AgentCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum AgentCmd {
    /// Print the agent's state: attested until, bundle version, mode, last sync, spool.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel agent status
  satchel agent status --state-dir /var/lib/satchel/agent --json

Exit status 0 when an agent is running, 3 when none is (the state is still printed).")]
struct StatusArgs {
    /// The agent's state directory [default: the config's, else /var/lib/satchel/agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The signed policy bundle (`satchel policy bundle`).
    #[arg(long, value_name = "FILE")]
    bundle: Option<PathBuf>,
    /// The key bundles must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    bundle_key: Option<PathBuf>,
    /// This device's policy subject, e.g. device:laptop-17.
    #[arg(long)]
    subject: Option<String>,
    /// A mount point whose file system's execs are decided (the whole file
    /// system, in every mount namespace). Repeatable; none means none.
    #[arg(long, value_name = "PATH")]
    mount: Vec<PathBuf>,
    /// Closed mode: mark every file system at or under ROOT (also ones
    /// mounted later), stop the dynamic loader run as a program and
    /// interpreters opening unlisted scripts, and (lockdown) switch off
    /// memfd execs and user namespaces. For a device whose users have a
    /// shell; normally `/`.
    #[arg(long, value_name = "ROOT")]
    root: Option<PathBuf>,
    /// An interpreter closed mode restricts to system files and allowlisted
    /// scripts. Repeatable [default: sh, bash, python3, perl, ... found under --root].
    #[arg(long, value_name = "PATH")]
    interpreter: Vec<PathBuf>,
    /// Closed mode: a mount that may hold programs (besides ROOT itself).
    /// Every other mount under ROOT is made noexec in lockdown, and so is
    /// every place users can write inside these. Repeatable [default: usr,
    /// usr/local, opt, var, boot, boot/efi and dev under ROOT, where they
    /// are mounts].
    #[arg(long, value_name = "PATH")]
    exec_mount: Vec<PathBuf>,
    /// Closed mode: enforce lockdown even where the kernel settings cannot
    /// be applied. DANGER: memfd execs and user namespaces then run
    /// programs around the allowlist.
    #[arg(long)]
    allow_open_system: bool,
    /// lockdown (deny) or monitor (report) [default: the bundle's mode for this subject].
    #[arg(long, value_name = "MODE")]
    mode: Option<Mode>,
    /// The gateway; without it the agent runs offline.
    #[arg(long, value_name = "URL")]
    gateway: Option<String>,
    /// The gateway CA.
    #[arg(long, value_name = "CA.crt")]
    ca: Option<PathBuf>,
    /// This device's directory (AK, device certificate, sync state).
    #[arg(long, value_name = "CDIR")]
    data: Option<PathBuf>,
    /// The TPM, for re-attestation [default: as `satchel client attest`].
    #[arg(long, value_name = "TCTI")]
    tpm: Option<String>,
    /// Event logs of this boot, for re-attestation. Repeatable; none: no re-attestation.
    #[arg(long, value_name = "LOG")]
    log: Vec<PathBuf>,
    /// Where the agent keeps its state [default: /var/lib/satchel/agent].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Re-attest this long before the certificate expires [default: 10m].
    #[arg(long, value_name = "DURATION")]
    reattest_margin: Option<String>,
    /// The image to sync (with --into).
    #[arg(long)]
    image: Option<String>,
    /// The root holding the image's layers.
    #[arg(long, value_name = "ROOT")]
    into: Option<PathBuf>,
    /// How often to sync [default: 15m].
    #[arg(long, value_name = "DURATION")]
    sync_interval: Option<String>,
    /// Most bytes per second the sync moves each way, on a shared school
    /// link (a number, or with K, M or G) [default: no cap].
    #[arg(long, value_name = "RATE", value_parser = super::client::parse_rate)]
    sync_max_rate: Option<u64>,
    /// How often to deliver spooled audit entries [default: 10s].
    #[arg(long, value_name = "DURATION")]
    deliver_interval: Option<String>,
    /// How often to look for a newer bundle [default: 60s].
    #[arg(long, value_name = "DURATION")]
    refresh_interval: Option<String>,
}

fn duration(
    flag: Option<String>,
    file: Option<String>,
    default: &str,
    name: &str,
) -> anyhow::Result<Duration> {
    let text = flag.or(file).unwrap_or_else(|| default.to_owned());
    let d = humantime::parse_duration(&text)
        .map_err(|e| Exit::new(2, format!("--{name} {text:?}: {e} (e.g. 30s, 10m)")))?;
    if d.is_zero() {
        return Err(Exit::new(2, format!("--{name} must be more than zero")).into());
    }
    Ok(d)
}

fn settings(a: RunArgs, config: Option<&Path>) -> anyhow::Result<Settings> {
    let f = Config::load(config)?.agent;
    let need = |v: Option<PathBuf>, name: &str| {
        v.ok_or_else(|| {
            Exit::new(
                2,
                format!("--{name} is required (or {name} in the config's [agent] table)"),
            )
        })
    };
    let mode = match (a.mode, f.mode) {
        (Some(m), _) => Some(m),
        (None, Some(m)) => Some(
            m.parse()
                .map_err(|e: String| Exit::new(2, format!("[agent] mode: {e}")))?,
        ),
        (None, None) => None,
    };
    let gateway = a.gateway.or(f.gateway);
    let ca = a.ca.or(f.ca);
    let data = a.data.or(f.data);
    let gateway = match (gateway, ca, data) {
        (Some(url), Some(ca), Some(data)) => Some(device::GatewayConfig { url, ca, data }),
        (None, _, _) => None,
        _ => return Err(Exit::new(2, "--gateway needs --ca and --data".to_owned()).into()),
    };
    let image = match (a.image.or(f.image), a.into.or(f.into)) {
        (Some(i), Some(r)) => Some((i, r)),
        (None, None) => None,
        _ => return Err(Exit::new(2, "--image and --into go together".to_owned()).into()),
    };
    if image.is_some() && gateway.is_none() {
        return Err(Exit::new(2, "--image needs --gateway".to_owned()).into());
    }
    let mounts = if a.mount.is_empty() { f.mount } else { a.mount };
    let root = a.root.or(f.root);
    if mounts.is_empty() && root.is_none() {
        return Err(Exit::new(2, "name at least one --mount to enforce on, or --root for closed mode (the agent never marks the whole machine by default)".to_owned()).into());
    }
    Ok(Settings {
        bundle: need(a.bundle.or(f.bundle), "bundle")?,
        bundle_key: need(a.bundle_key.or(f.bundle_key), "bundle-key")?,
        subject: a.subject.or(f.subject).ok_or_else(|| {
            Exit::new(2, "--subject is required, e.g. device:laptop-17".to_owned())
        })?,
        mounts,
        root,
        interpreters: if a.interpreter.is_empty() {
            f.interpreter
        } else {
            a.interpreter
        },
        allow_open_system: a.allow_open_system || f.allow_open_system,
        exec_mounts: if a.exec_mount.is_empty() {
            f.exec_mount
        } else {
            a.exec_mount
        },
        mode,
        gateway,
        tcti: super::measure::TpmArgs::with(a.tpm).tcti(config)?,
        logs: if a.log.is_empty() { f.log } else { a.log },
        state_dir: a
            .state_dir
            .or(f.state_dir)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        reattest_margin: duration(
            a.reattest_margin,
            f.reattest_margin,
            "10m",
            "reattest-margin",
        )?,
        image,
        sync_interval: duration(a.sync_interval, f.sync_interval, "15m", "sync-interval")?,
        sync_max_rate: match (a.sync_max_rate, f.sync_max_rate) {
            (Some(r), _) => Some(r),
            (None, Some(text)) => Some(
                super::client::parse_rate(&text)
                    .map_err(|e| Exit::new(2, format!("[agent] sync-max-rate: {e}")))?,
            ),
            (None, None) => None,
        },
        deliver_interval: duration(
            a.deliver_interval,
            f.deliver_interval,
            "10s",
            "deliver-interval",
        )?,
        refresh_interval: duration(
            a.refresh_interval,
            f.refresh_interval,
            "60s",
            "refresh-interval",
        )?,
    })
}

pub(crate) fn run(a: AgentArgs, config: Option<&Path>) -> anyhow::Result<()> {
    match a.cmd {
        Some(AgentCmd::Status(s)) => {
            let dir = match s.state_dir {
                Some(d) => d,
                None => Config::load(config)?
                    .agent
                    .state_dir
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            };
            let st = device::agent::read_status(&dir).map_err(agent_failed)?;
            print_status(&st, s.json)?;
            if st.running {
                Ok(())
            } else {
                Err(Exit::new(3, String::new()).into())
            }
        }
        None => device::agent::run(settings(a.run, config)?).map_err(agent_failed),
    }
}

fn agent_failed(e: device::agent::AgentError) -> anyhow::Error {
    let mut msg = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    Exit::new(e.exit_code(), msg).into()
}

/// Print what `satchel agent status` shows.
fn print_status(a: &device::agent::AgentStatus, as_json: bool) -> anyhow::Result<()> {
    let (st, alive) = (&a.status, a.running);
    if as_json {
        let mut v = serde_json::to_value(st)?;
        v["running"] = serde_json::json!(alive);
        println!("{v}");
        return Ok(());
    }
    let ago = |ms: i64| {
        humantime::format_duration(Duration::from_secs(
            u64::try_from((audit::batch::now_ms() - ms) / 1000).unwrap_or(0),
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
    let mut on = st.mounts.clone();
    if let Some(r) = &st.root {
        on.push(format!("every file system under {r} (closed mode)"));
    }
    println!("mode:           {} on {}", st.mode, on.join(", "));
    if st.root.is_some() {
        println!("marked:         {}", st.marked.join(", "));
        if !st.confined.is_empty() {
            println!("noexec:         {}", st.confined.join(", "));
        }
        for s in &st.system {
            let state = if s.holds { "holds" } else { "DOES NOT HOLD" };
            let found = if s.found.is_empty() {
                "unreadable"
            } else {
                &s.found
            };
            println!(
                "kernel:         {} = {found} (needs {}): {state}",
                s.name, s.want
            );
        }
    }
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
            device::agent::gap_text(g)
        );
    }
    Ok(())
}
