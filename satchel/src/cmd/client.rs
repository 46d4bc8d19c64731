//! `satchel client enroll` and `satchel client attest`: the device side of
//! enrollment and attestation against the gateway.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use serde_json::json;

use super::measure::TpmArgs;
use super::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCmd {
    /// Enroll this device: prove its AK lives in the TPM its EK certificate names.
    Enroll(EnrollArgs),
    /// Attest: quote for the gateway and receive a short-lived device certificate.
    Attest(AttestArgs),
    /// Push-OS sync: pull an image's layers, push this device's changes.
    #[command(subcommand)]
    #[command(after_help = "Examples:
  satchel client sync pull --gateway https://gw:8443 --ca ca.crt --data client --image classroom-2026 --into ./root
  satchel client sync status --data client --image classroom-2026 --root ./root
  satchel client sync push --gateway https://gw:8443 --ca ca.crt --data client --image classroom-2026 --from ./root
  satchel client sync revert --data client --image classroom-2026 --root ./root --layer user-data")]
    Sync(SyncCmd),
    /// Check the gateway's audit log against the checkpoint this device saw last.
    AuditWitness(WitnessArgs),
    /// Lend this device's certificate to local programs (a browser): a proxy
    /// on loopback that carries every connection to the gateway's proxy.
    Proxy(RelayArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client proxy --gateway https://gw:8444 --ca ca.crt --data client
  chromium --proxy-server=http://127.0.0.1:3128

--gateway is the gateway's proxy port (gateway serve --proxy-listen), not its API port.
Every connection to LISTEN is carried, byte for byte, inside an mTLS connection made
with the device certificate (read again for each connection, so renewals are picked up).
Programs speak the ordinary proxy protocol to it; the gateway decides every request
(and, for hosts with URL rules, every request inside HTTPS: the image's trust store
must hold the gateway's proxy CA). Loopback only: it lends the device's identity.")]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    /// Where local programs connect.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3128")]
    listen: std::net::SocketAddr,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client audit-witness --gateway https://gw:8443 --ca ca.crt --data client

Fetches the gateway's latest signed audit checkpoint and checks it against the one kept
in CDIR/audit-witness.json (the first one pins the log's key): the log may only grow, and
the gateway must prove it did. A log that shrank, forked, changed key or cannot be proven
to extend the old one is an alarm: exit 1, and the old checkpoint is kept. The agent does
the same on every refresh and reports an alarm in its status and audit spool.")]
pub(crate) struct WitnessArgs {
    #[command(flatten)]
    gw: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SyncCmd {
    /// Bring ROOT to the gateway's newest layer versions, fetching only what is missing.
    Pull(PullArgs),
    /// Check in this device's changes since the last common version.
    Push(PushArgs),
    /// What changed locally since the last common version, per layer.
    Status(StatusArgs),
    /// Put a layer back to the last common version, dropping local changes.
    Revert(RevertArgs),
    /// Write the boot stages that measure the system layers held now.
    Stages(StagesArgs),
    /// Write this device's pending changes as one signed file, for carrying offline.
    ExportBundle(ExportArgs),
    /// Remove chunks of layer versions this device no longer holds.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync gc --data client
  satchel client sync gc --data client --dry-run --json

Keeps the chunks of the layer versions held (CDIR/sync/*.json: what revert and the next
pull's deltas need) and removes the rest, rewriting the packs. It waits for a pull or push
that has the store open (up to --wait), and one that starts meanwhile waits for it; a crash
half-way loses nothing held. The agent runs it after each pull that applied a layer.")]
pub(crate) struct GcArgs {
    /// This device's directory.
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
    /// How long to wait for the store's other users.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    wait: std::time::Duration,
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync export-bundle --data client --image classroom --root ./root --out /media/usb/laptop-17.bundle
  # at the gateway:
  satchel gateway import-bundle --data ./gw /media/usb/laptop-17.bundle

The bundle holds every changed layer (as a check-in against the last common version),
the new chunks of the user layers, and the device certificate; it is signed with the
device key. No network needed. Format: docs/sync.md.")]
pub(crate) struct ExportArgs {
    /// This device's directory.
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root holding the layers.
    #[arg(long, value_name = "ROOT")]
    root: PathBuf,
    /// The bundle to write.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync stages --data client --image classroom --root ./root --out layers.toml
  cat chain.toml layers.toml > boot.toml && satchel measure --chain boot.toml --log boot.log

One stage per system layer (PCR 13, named layer-base-os, layer-group-apps). A layer
still equal to the version pushed measures that version's digest, as the gateway's
DATA/images/IMAGE.stages.toml does; a changed layer measures something else, so
attestation fails naming it.")]
pub(crate) struct StagesArgs {
    /// This device's directory.
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root holding the layers.
    #[arg(long, value_name = "ROOT")]
    root: PathBuf,
    /// Where to write the stages (TOML).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync status --data client --image classroom --root ./root
  satchel client sync status --data client --image classroom --root ./root --json

Compares each layer directory with the version last pulled or pushed (no network).
Exit status 0 when nothing changed, 1 when something did.")]
pub(crate) struct StatusArgs {
    /// This device's directory.
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root holding the layers.
    #[arg(long, value_name = "ROOT")]
    root: PathBuf,
    /// Print JSON: {LAYER: {"version", "added", "changed", "removed"}}.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync revert --data client --image classroom --root ./root --layer user-data

Rebuilds ROOT/LAYER from the local chunk store as it was at the last pull or push, in one
atomic swap (the \"reverting card\" of a shared machine). No network needed.")]
pub(crate) struct RevertArgs {
    /// This device's directory.
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root holding the layers.
    #[arg(long, value_name = "ROOT")]
    root: PathBuf,
    /// The layer to revert.
    #[arg(long)]
    layer: sync::Layer,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync pull --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --image classroom --into ./root --stats-json
  satchel client sync pull ... --image classroom --into ./root --layers base-os,user-data --max-rate 2M

ROOT gets one directory per layer (ROOT/base-os, ...), each replaced atomically. Chunks
are checked against their ids and kept in CDIR/chunks as they arrive, so an interrupted
pull resumes without fetching them again. Needs CDIR/device.crt (satchel client attest).
--stats-json prints {\"bytes_received\", \"bytes_sent\", \"chunks_fetched\", \"files_changed\", \"seconds\"}.")]
pub(crate) struct PullArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root to fill, one directory per layer.
    #[arg(long, value_name = "ROOT")]
    into: PathBuf,
    /// Only these layers (comma-separated) [default: every layer offered].
    #[arg(long, value_delimiter = ',')]
    layers: Vec<sync::Layer>,
    /// Most bytes per second to receive (a number, or with K, M or G).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_rate: Option<u64>,
    /// Print the statistics as one JSON object.
    #[arg(long)]
    stats_json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client sync push --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --image classroom --from ./root

Scans ROOT's layers, uploads the chunks of changed user layers the gateway lacks, and
checks each changed layer in against the last version both sides had. User layers:
one side changed -> taken; both changed a file differently -> both kept (the client's
copy as 'NAME (conflict DEVICE DATE)'). System layers (base-os, group-apps): nothing is
uploaded; the change is reported as a violation and the next pull restores the pushed
content. Then applies the merged user layers to ROOT.")]
pub(crate) struct PushArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    /// The image.
    #[arg(long)]
    image: String,
    /// The root holding the layers.
    #[arg(long, value_name = "ROOT")]
    from: PathBuf,
    /// Only these layers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    layers: Vec<sync::Layer>,
    /// Most bytes per second to send, and to receive when the merged
    /// layers come back (a number, or with K, M or G).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    max_rate: Option<u64>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// `500000`, `200K`, `2M`, `1G` (powers of 1024) -> bytes per second.
pub(crate) fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 => n
            .checked_mul(mult)
            .ok_or_else(|| format!("{s:?} is too large")),
        _ => Err(format!(
            "{s:?}: expected bytes per second, e.g. 500000, 200K or 2M"
        )),
    }
}

/// The gateway and the CA it is pinned to.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway, e.g. https://127.0.0.1:8443; several of one
    /// organisation comma-separated (https://gw-a:8443,https://gw-b:8443):
    /// the next is used when one does not answer, and a pull in progress
    /// goes on there.
    #[arg(long, env = "SATCHEL_GATEWAY", value_name = "URL[,URL...]")]
    pub(crate) gateway: String,
    /// The gateway CA (its data directory's ca.crt).
    #[arg(long, value_name = "CA.crt")]
    pub(crate) ca: PathBuf,
    /// This device's directory (AK, device certificate and key).
    #[arg(long, value_name = "CDIR")]
    pub(crate) data: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client enroll --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --tpm swtpm:host=127.0.0.1,port=2321 --device-id laptop-17 --token TOKEN

Makes an AK (CDIR/ak.json), sends it with the EK certificate and the token, activates the
credential the gateway answers with, and sends the secret back.")]
pub(crate) struct EnrollArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    #[command(flatten)]
    tpm: TpmArgs,
    /// This device's id (the token's).
    #[arg(long)]
    device_id: String,
    /// The one-time token from `satchel gateway enroll-token`.
    #[arg(long)]
    token: String,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client attest --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --tpm swtpm:host=127.0.0.1,port=2321 --log boot.log

Writes CDIR/device.crt and CDIR/device.key (0600) when the gateway trusts the quote; on
refusal, prints every reason and exits 1.")]
pub(crate) struct AttestArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    #[command(flatten)]
    tpm: TpmArgs,
    /// Event logs of this boot, in measurement order.
    #[arg(long, value_name = "LOG", required = true)]
    log: Vec<PathBuf>,
}

pub(crate) fn run(cmd: ClientCmd, config: Option<&Path>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        ClientCmd::Enroll(a) => rt.block_on(enroll(a, config)),
        ClientCmd::Attest(a) => rt.block_on(attest(a, config)),
        ClientCmd::AuditWitness(a) => rt.block_on(audit_witness(a)),
        ClientCmd::Proxy(a) => rt.block_on(async {
            let listener = device::relay::bind(a.listen).await?;
            eprintln!(
                "satchel client proxy: {} -> {} as this device",
                a.listen, a.gw.gateway
            );
            device::relay::serve(listener, a.gw.config()).await?;
            Ok(())
        }),
        ClientCmd::Sync(SyncCmd::Pull(a)) => rt.block_on(sync_pull(a)),
        ClientCmd::Sync(SyncCmd::Push(a)) => rt.block_on(sync_push(a)),
        ClientCmd::Sync(SyncCmd::Status(a)) => sync_status(a),
        ClientCmd::Sync(SyncCmd::Revert(a)) => sync_revert(a),
        ClientCmd::Sync(SyncCmd::ExportBundle(a)) => {
            let n =
                device::bundle::export(&a.data, &a.image, &a.root, &a.out).map_err(sync_failed)?;
            println!("{}: {n} changed layer(s) in {}", a.image, a.out.display());
            Ok(())
        }
        ClientCmd::Sync(SyncCmd::Gc(a)) => {
            let c = device::sync::clean(&a.data, a.wait, a.dry_run).map_err(sync_failed)?;
            if a.json {
                println!("{}", serde_json::to_value(&c)?);
            } else {
                println!(
                    "{} chunks: {} kept, {} {}; {} bytes before, {} after",
                    c.chunks,
                    c.kept,
                    c.removed,
                    if a.dry_run { "to remove" } else { "removed" },
                    c.bytes_before,
                    c.bytes_after
                );
            }
            Ok(())
        }
        ClientCmd::Sync(SyncCmd::Stages(a)) => {
            let text = device::sync::stages(&a.data, &a.image, &a.root).map_err(sync_failed)?;
            super::write_atomic(&a.out, text.as_bytes())
        }
    }
}

impl GatewayArgs {
    /// The image synced between this gateway and `root`.
    fn target<'a>(
        &'a self,
        client: &'a device::GatewayClient,
        image: &'a str,
        root: &'a Path,
        meter: &'a device::Meter,
    ) -> device::sync::Target<'a> {
        device::sync::Target {
            client,
            cdir: &self.data,
            image,
            root,
            meter,
        }
    }

    /// The device crate's view of these flags.
    pub(crate) fn config(&self) -> device::GatewayConfig {
        device::GatewayConfig {
            url: self.gateway.clone(),
            ca: self.ca.clone(),
            data: self.data.clone(),
        }
    }
}

/// A failed enrollment or attestation, exit 1, with every reason the
/// gateway gave.
fn flow_failed(e: device::FlowError) -> anyhow::Error {
    if e.is_refusal() {
        return Exit::new(1, e.to_string()).into();
    }
    anyhow::Error::new(e)
}

async fn enroll(a: EnrollArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let mut tpm = a.tpm.open(config)?;
    let done = device::enrollment::enroll(&a.gw.config(), &mut tpm, &a.device_id, &a.token)
        .await
        .map_err(flow_failed)?;
    println!(
        "enrolled {} (groups {})",
        a.device_id,
        serde_json::json!(done.groups)
    );
    Ok(())
}

async fn attest(a: AttestArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let tcti = a.tpm.tcti(config)?;
    let (device_id, expires_in) = device::attestation::attest_once(&a.gw.config(), &tcti, &a.log)
        .await
        .map_err(flow_failed)?;
    println!(
        "attested: certificate for {device_id} in {} (valid {expires_in} s)",
        a.gw.data.join("device.crt").display(),
    );
    Ok(())
}

async fn audit_witness(a: WitnessArgs) -> anyhow::Result<()> {
    use device::witness::{WitnessError, Witnessed};
    match device::witness::witness(&a.gw.config()).await {
        Ok(Witnessed::First { size }) => {
            println!("audit log witnessed: {size} entries (its key is pinned now)")
        }
        Ok(Witnessed::Same { size }) => println!("audit log unchanged: {size} entries"),
        Ok(Witnessed::Grew { from, to }) => {
            println!("audit log grew from {from} to {to} entries, proven consistent")
        }
        Ok(_) => println!("audit log witnessed"),
        Err(WitnessError::Alarm(alarm)) => return Err(Exit::new(1, alarm.to_string()).into()),
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

fn sync_failed(e: device::sync::SyncError) -> anyhow::Error {
    Exit::new(1, format!("sync: {e}")).into()
}

async fn sync_pull(a: PullArgs) -> anyhow::Result<()> {
    let c = a.gw.config().device_client()?;
    let meter = device::Meter::new(a.max_rate);
    let layers = (!a.layers.is_empty()).then_some(a.layers.as_slice());
    let stats = device::sync::pull(&a.gw.target(&c, &a.image, &a.into, &meter), layers)
        .await
        .map_err(sync_failed)?;
    for layer in &stats.layers_kept {
        eprintln!(
            "{}/{layer}: local changes not pushed yet; this layer was left as it is (push first: satchel client sync push)",
            a.image
        );
    }
    if a.stats_json {
        println!(
            "{}",
            json!({
                "bytes_received": stats.bytes_received,
                "bytes_sent": stats.bytes_sent,
                "chunks_fetched": stats.chunks_fetched,
                "files_changed": stats.files_changed,
                "seconds": stats.seconds,
                "delta_files": stats.delta_files,
            })
        );
    } else if stats.layers_applied.is_empty() {
        if stats.layers_kept.is_empty() {
            println!("{}: up to date", a.image);
        }
    } else {
        println!(
            "{}: applied {}; {} chunks fetched, {} files changed, {} bytes in {:.2} s",
            a.image,
            stats.layers_applied.join(", "),
            stats.chunks_fetched,
            stats.files_changed,
            stats.bytes_received,
            stats.seconds
        );
    }
    Ok(())
}

async fn sync_push(a: PushArgs) -> anyhow::Result<()> {
    let c = a.gw.config().device_client()?;
    let meter = device::Meter::new(a.max_rate);
    let layers = (!a.layers.is_empty()).then_some(a.layers.as_slice());
    let report = device::sync::push(&a.gw.target(&c, &a.image, &a.from, &meter), layers)
        .await
        .map_err(sync_failed)?;
    if a.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if report.layers.is_empty() && report.violations.is_empty() {
        println!("{}: nothing to push", a.image);
    }
    for (layer, version) in &report.layers {
        if !report.violations.contains_key(layer) {
            println!("{}/{layer}: checked in, gateway version {version}", a.image);
        }
    }
    for (layer, conflicts) in &report.conflicts {
        for c in conflicts {
            println!(
                "{}/{layer}: conflict at {}: {}",
                a.image, c.path, c.resolution
            );
        }
    }
    for (layer, paths) in &report.violations {
        eprintln!(
            "{}/{layer}: {} change(s) to a system layer refused and reported (the next pull restores them): {}",
            a.image,
            paths.len(),
            paths.join(", ")
        );
    }
    println!(
        "{} chunks sent, {} bytes sent, {} bytes received in {:.2} s",
        report.chunks_sent, report.bytes_sent, report.bytes_received, report.seconds
    );
    Ok(())
}

fn sync_status(a: StatusArgs) -> anyhow::Result<()> {
    let st = device::sync::status(&a.data, &a.image, &a.root).map_err(sync_failed)?;
    let dirty = st.values().any(|s| !s.clean());
    if a.json {
        println!("{}", serde_json::to_string(&st)?);
    } else {
        for (layer, s) in &st {
            if s.clean() {
                println!("{layer} (version {}): unchanged", s.version);
                continue;
            }
            println!(
                "{layer} (version {}): {} added, {} changed, {} removed",
                s.version,
                s.added.len(),
                s.changed.len(),
                s.removed.len()
            );
            for (mark, list) in [("+", &s.added), ("~", &s.changed), ("-", &s.removed)] {
                for p in list {
                    println!("  {mark} {p}");
                }
            }
        }
    }
    if dirty {
        return Err(Exit::new(1, String::new()).into());
    }
    Ok(())
}

fn sync_revert(a: RevertArgs) -> anyhow::Result<()> {
    let before = device::sync::revert(&a.data, &a.image, &a.root, a.layer).map_err(sync_failed)?;
    println!(
        "{}/{}: back to version {} ({} added, {} changed, {} removed paths undone)",
        a.image,
        a.layer,
        before.version,
        before.added.len(),
        before.changed.len(),
        before.removed.len()
    );
    Ok(())
}
