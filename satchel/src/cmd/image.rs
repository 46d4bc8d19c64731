//! `satchel image build|list|show`: layered push-OS images on the gateway.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use sync::manifest::Layer;

use super::gateway::StoreArgs;

#[derive(Debug, Subcommand)]
pub(crate) enum ImageCmd {
    /// Build new versions of an image's layers from directories.
    Build(BuildArgs),
    /// List the images and their newest layer versions.
    #[command(after_help = "Examples:
  satchel image list --data /var/lib/satchel-gateway")]
    List(ListArgs),
    /// Show every version of an image's layers.
    #[command(after_help = "Examples:
  satchel image show --data /var/lib/satchel-gateway classroom-2026

One line per layer version: the layer, its version, whose it is (the image's, or a
device's user layer), the manifest digest, when it was made, and which devices hold it
or were last offered it; then the pins.")]
    Show(ShowArgs),
    /// Hold a system layer at a version, for one device or every device.
    Pin(PinArgs),
    /// Remove a pin: the device (or every device) takes the newest version again.
    Unpin(UnpinArgs),
    /// Publish an older version's files again as a new version.
    Rollback(RollbackArgs),
}

/// An image's system layer, in the gateway's configured store.
#[derive(Debug, Args)]
pub(crate) struct ImageLayer {
    #[command(flatten)]
    store: StoreArgs,
    /// The image.
    #[arg(long)]
    image: String,
    /// The system layer: base-os or group-apps.
    #[arg(long)]
    layer: Layer,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel image pin --image classroom --layer base-os --version 4
  satchel image pin --image classroom --layer base-os --version 4 --device-id laptop-17

A pinned device is offered that version instead of the newest. A device never takes a
version older than the one it holds (it refuses it as a rollback): a pin holds back an
update not yet taken; to undo one, use `satchel image rollback`. A device's own pin
wins over the pin for every device. Pinned versions are kept by `gateway gc`. Audited.")]
#[command(disable_version_flag = true)]
pub(crate) struct PinArgs {
    #[command(flatten)]
    at: ImageLayer,
    /// The version to hold it at.
    #[arg(long)]
    version: u64,
    /// Only for this device [default: every device].
    #[arg(long)]
    device_id: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel image unpin --image classroom --layer base-os
  satchel image unpin --image classroom --layer base-os --device-id laptop-17")]
pub(crate) struct UnpinArgs {
    #[command(flatten)]
    at: ImageLayer,
    /// The device's own pin [default: the pin for every device].
    #[arg(long)]
    device_id: Option<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel image rollback --image classroom --layer base-os --version 4

The files of the given version become a new version (numbered after the newest) signed
now, so every device takes it as an update, and its boot stages are written again. The
version's chunks must still be stored (`gateway gc` keeps the newest --keep-versions,
pinned ones and those devices hold). Audited.")]
#[command(disable_version_flag = true)]
pub(crate) struct RollbackArgs {
    #[command(flatten)]
    at: ImageLayer,
    /// The version whose files to publish again.
    #[arg(long)]
    version: u64,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel image build --data ./gw --image classroom --layer base-os=./rootfs
  satchel image build --data ./gw --image classroom --layer group-apps=./apps --layer user-data=./skel
  satchel image build --data ./gw --image classroom --layer base-os=./rootfs --trust-proxy-ca

Each directory is chunked (FastCDC, 16 KiB average) into the gateway's chunk store
(DATA/chunks, zstd) and becomes a new signed layer version, unless it equals the newest
one. Layers: base-os, group-apps (system: clients cannot change them), personal-apps,
user-system, user-data (user: each device's own; this is their starting content).
The system layers' digests are written as boot stages to DATA/images/IMAGE.stages.toml:
append them to the boot chain before `satchel predict`, so attestation covers the image.
With --chain, --sign-key and --reference-out the image's layer stages are appended to
the boot chain and the signed reference for the whole chain is written in the same step
(as `satchel predict --sign-key` on the joined chain would): a gateway given it admits
exactly the devices that booted this image. With --trust-proxy-ca the base-os directory gets the gateway's proxy CA in its trust
store first (usr/local/share/ca-certificates/satchel-proxy-ca.crt, and appended to
etc/ssl/certs/ca-certificates.crt when that exists): devices then accept the proxy's
per-URL decisions inside HTTPS (docs/gateway.md).")]
pub(crate) struct BuildArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The image name.
    #[arg(long)]
    image: String,
    /// LAYER=DIR, once per layer to build.
    #[arg(long = "layer", value_name = "LAYER=DIR", required = true, value_parser = parse_layer)]
    layers: Vec<(Layer, PathBuf)>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// Put the gateway's proxy CA (DATA/proxy-ca.crt) into the base-os
    /// directory's trust store before building it, so the devices trust the
    /// proxy's per-URL decisions inside HTTPS.
    #[arg(long)]
    trust_proxy_ca: bool,
    /// The boot chain up to the image (docs/boot-chain.md): with
    /// --sign-key and --reference-out, the image's layer stages are added
    /// to it and the reference for the whole chain is signed in this step.
    #[arg(long, value_name = "FILE", requires = "reference_out")]
    chain: Option<PathBuf>,
    /// The organisation's signing key for the reference.
    #[arg(long, value_name = "KEY", requires = "reference_out")]
    sign_key: Option<PathBuf>,
    /// Where the signed reference manifest goes.
    #[arg(long, value_name = "REF", requires_all = ["chain", "sign_key"])]
    reference_out: Option<PathBuf>,
    /// Banks the reference predicts.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sha256",
        requires = "reference_out"
    )]
    banks: Vec<attest::HashAlg>,
}

fn parse_layer(s: &str) -> Result<(Layer, PathBuf), String> {
    let (l, d) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected LAYER=DIR"))?;
    let layer: Layer = l
        .parse()
        .map_err(|e: sync::manifest::BadLayer| e.to_string())?;
    Ok((layer, PathBuf::from(d)))
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The image name.
    image: String,
    /// Print versions, devices' marks and pins as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(cmd: ImageCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cmd {
            ImageCmd::Build(a) => build(a).await,
            ImageCmd::List(a) => list(a).await,
            ImageCmd::Show(a) => show(a).await,
            ImageCmd::Pin(a) => pin(a).await,
            ImageCmd::Unpin(a) => unpin(a).await,
            ImageCmd::Rollback(a) => rollback(a).await,
        }
    })
}

async fn open(store: &StoreArgs) -> anyhow::Result<gateway::images::Images> {
    let data = store.data()?;
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let (pool, _) = persist::db::connect(&store.url()?).await?;
    let remote = store.chunk_store()?;
    Ok(gateway::images::Images::open_with(pool, &data, remote.as_ref()).await?)
}

fn total_bytes(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Put the gateway's proxy CA into the trust store of the root `dir`: as
/// its own file for `update-ca-certificates`, and in the bundle every TLS
/// library reads, if the root has one. What was done, one line each.
fn trust_proxy_ca(data: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let pki = gateway::Pki::init(data, &[])?;
    let pem = pki.proxy_ca.cert_pem;
    let mut said = Vec::new();
    let own = dir.join("usr/local/share/ca-certificates/satchel-proxy-ca.crt");
    if std::fs::read_to_string(&own).ok().as_deref() != Some(pem.as_str()) {
        if let Some(parent) = own.parent() {
            persist::file::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        persist::file::write_mode(&own, pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", own.display()))?;
        said.push(format!(
            "base-os: the proxy CA written to {}",
            own.display()
        ));
    }
    let bundle = dir.join("etc/ssl/certs/ca-certificates.crt");
    if let Ok(mut text) = std::fs::read_to_string(&bundle) {
        if !text.contains(pem.trim()) {
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&pem);
            persist::file::write_mode(&bundle, text.as_bytes(), 0o644)
                .with_context(|| format!("writing {}", bundle.display()))?;
            said.push(format!(
                "base-os: the proxy CA added to {}",
                bundle.display()
            ));
        }
    }
    Ok(said)
}

async fn build(a: BuildArgs) -> anyhow::Result<()> {
    gateway::images::check_image_name(&a.image)?;
    for (layer, dir) in &a.layers {
        anyhow::ensure!(
            dir.is_dir(),
            "layer {layer}: {} is not a directory",
            dir.display()
        );
    }
    if a.trust_proxy_ca {
        for (_, dir) in a.layers.iter().filter(|(l, _)| *l == Layer::BaseOs) {
            for said in trust_proxy_ca(&a.store.data()?, dir)? {
                eprintln!("{said}");
            }
        }
    }
    let images = open(&a.store).await?;
    let key = gateway::server::manifest_key(&a.store.data()?)?;
    let total: u64 = a.layers.iter().map(|(_, d)| total_bytes(d)).sum();
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr_with_hz(4),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let built = gateway::images::build(
        &images,
        &a.store.data()?,
        &key,
        &a.image,
        &a.layers,
        &mut |n| bar.inc(n),
    )
    .await;
    bar.finish_and_clear();
    let built = built?;
    // Record it in the gateway's audit trail.
    let audit = audit::store::Store::open(&a.store.url()?).await?;
    let entries = built
        .iter()
        .map(|b| audit::entry::NewEntry {
            kind: "image".to_owned(),
            actor: "gateway-cli".to_owned(),
            subject: format!("{}/{}", a.image, b.layer),
            decision: if b.new { "built" } else { "unchanged" }.to_owned(),
            details: serde_json::json!({"version": b.stored.version, "digest": b.stored.digest,
                "files": b.stats.files, "bytes": b.stats.bytes, "new_chunks": b.stats.new_chunks}),
        })
        .collect();
    audit.append(entries, audit::batch::now_ms()).await?;
    let stages = gateway::images::stages_path(&a.store.data()?, &a.image);
    let reference = match (&a.chain, &a.sign_key, &a.reference_out) {
        (Some(chain), Some(key), Some(out)) => {
            Some(reference_for(chain, &stages, &a.image, &a.banks, key, out)?)
        }
        _ => None,
    };
    if a.json {
        let v: Vec<_> = built
            .iter()
            .map(|b| {
                serde_json::json!({"layer": b.layer, "version": b.stored.version, "digest": b.stored.digest,
                    "new": b.new, "stats": b.stats, "dedup_ratio": b.stats.dedup_ratio()})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"image": a.image, "layers": v, "reference": a.reference_out})
        );
        return Ok(());
    }
    for b in &built {
        let s = &b.stats;
        println!(
            "{}/{}: version {}{} — {} files, {} dirs, {} symlinks, {} bytes; {} chunks ({} new, {} bytes new); dedup {:.2}x; digest {}",
            a.image,
            b.layer,
            b.stored.version,
            if b.new { "" } else { " (unchanged)" },
            s.files,
            s.dirs,
            s.symlinks,
            s.bytes,
            s.unique_chunks,
            s.new_chunks,
            s.new_bytes,
            s.dedup_ratio(),
            b.stored.digest
        );
    }
    println!("boot stages: {}", stages.display());
    if let Some(said) = reference {
        println!("{said}");
    }
    Ok(())
}

/// The reference for `chain` followed by the image's layer stages, signed
/// with `key` and written to `out`.
fn reference_for(
    chain: &std::path::Path,
    stages: &std::path::Path,
    image: &str,
    banks: &[attest::HashAlg],
    key: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    let mut text =
        std::fs::read_to_string(chain).with_context(|| format!("reading {}", chain.display()))?;
    text.push('\n');
    text.push_str(
        &std::fs::read_to_string(stages)
            .with_context(|| format!("reading {}", stages.display()))?,
    );
    // Stage files resolve beside the chain file, as `predict` would.
    let joined = firmware_measure::Chain::from_toml(&text, chain)?;
    super::measure::write_reference(&joined, None, banks, image, None, key, out)
        .with_context(|| format!("predicting {} with the image's stages", chain.display()))
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let images = open(&a.store).await?;
    let all = images.list().await?;
    if all.is_empty() {
        println!("no images (make one with `satchel image build`)");
    }
    for (name, layers) in all {
        let parts: Vec<String> = layers
            .iter()
            .map(|l| format!("{} v{}", l.layer, l.version))
            .collect();
        println!("{name}: {}", parts.join(", "));
    }
    Ok(())
}

async fn show(a: ShowArgs) -> anyhow::Result<()> {
    let images = open(&a.store).await?;
    let all = images.history(&a.image).await?;
    anyhow::ensure!(!all.is_empty(), "no image {:?}", a.image);
    let marks = images.marks(&a.image).await?;
    let pins = images.pins(&a.image).await?;
    if a.json {
        let versions: Vec<serde_json::Value> = all
            .iter()
            .map(|l| {
                serde_json::json!({
                    "layer": l.layer, "version": l.version, "owner": l.owner,
                    "digest": l.digest, "created_ms": l.created_ms,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"image": a.image, "versions": versions, "devices": marks, "pins": pins})
        );
        return Ok(());
    }
    for l in all {
        let owner = if l.owner.is_empty() {
            "image".to_owned()
        } else {
            format!("device {}", l.owner)
        };
        let on = |role: &str| -> Vec<&str> {
            marks
                .iter()
                .filter(|m| m.role == role && m.digest == l.digest)
                .map(|m| m.device_id.as_str())
                .collect()
        };
        let (held, offered) = (on("held"), on("offered"));
        let mut who = String::new();
        if !held.is_empty() {
            who += &format!("; held by {}", held.join(", "));
        }
        if !offered.is_empty() {
            who += &format!("; offered to {}", offered.join(", "));
        }
        println!(
            "{} v{} ({owner}) sha256:{} at {}{who}",
            l.layer,
            l.version,
            l.digest,
            rfc3339_ms(l.created_ms)
        );
    }
    for p in pins {
        let whom = if p.device_id.is_empty() {
            "every device".to_owned()
        } else {
            format!("device {}", p.device_id)
        };
        println!(
            "pin: {} at v{} for {whom} (by {} at {})",
            p.layer,
            p.version,
            p.admin,
            rfc3339_ms(p.set_ms)
        );
    }
    Ok(())
}

async fn pin(a: PinArgs) -> anyhow::Result<()> {
    let images = open(&a.at.store).await?;
    let device = a.device_id.unwrap_or_default();
    if !device.is_empty() {
        anyhow::ensure!(
            protocol::admin::valid_device_id(&device),
            "{device:?} is not a device id"
        );
    }
    images
        .pin(&a.at.image, a.at.layer, &device, a.version, "gateway-cli")
        .await?;
    // What every device is offered decides the image's boot stages.
    gateway::images::write_stages(&images, &a.at.store.data()?, &a.at.image).await?;
    let details =
        serde_json::json!({"layer": a.at.layer, "version": a.version, "device_id": device});
    super::gateway::audit_cli_action(&a.at.store.url()?, &a.at.image, "pinned", details).await?;
    println!(
        "{}/{} pinned at version {} for {}",
        a.at.image,
        a.at.layer,
        a.version,
        if device.is_empty() {
            "every device".to_owned()
        } else {
            device
        }
    );
    Ok(())
}

async fn unpin(a: UnpinArgs) -> anyhow::Result<()> {
    let images = open(&a.at.store).await?;
    let device = a.device_id.unwrap_or_default();
    let had = images.unpin(&a.at.image, a.at.layer, &device).await?;
    anyhow::ensure!(had, "{}/{} has no such pin", a.at.image, a.at.layer);
    gateway::images::write_stages(&images, &a.at.store.data()?, &a.at.image).await?;
    let details = serde_json::json!({"layer": a.at.layer, "device_id": device});
    super::gateway::audit_cli_action(&a.at.store.url()?, &a.at.image, "unpinned", details).await?;
    println!("{}/{}: pin removed", a.at.image, a.at.layer);
    Ok(())
}

async fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let images = open(&a.at.store).await?;
    let data = a.at.store.data()?;
    let key = gateway::server::manifest_key(&data)?;
    let stored = images
        .roll_back(&a.at.image, a.at.layer, a.version, &key)
        .await?;
    let stages = gateway::images::write_stages(&images, &data, &a.at.image).await?;
    let details = serde_json::json!({"layer": a.at.layer, "from_version": a.version, "version": stored.version, "digest": stored.digest});
    super::gateway::audit_cli_action(&a.at.store.url()?, &a.at.image, "rolled-back", details)
        .await?;
    println!(
        "{}/{}: version {}'s files published again as version {}\nboot stages: {}",
        a.at.image,
        a.at.layer,
        a.version,
        stored.version,
        stages.display()
    );
    Ok(())
}

fn rfc3339_ms(ms: i64) -> String {
    humantime::format_rfc3339_seconds(
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0)),
    )
    .to_string()
}
