//! `satchel measure`, `satchel predict` and `satchel pcrs`: measure a boot
//! chain into the TPM and its log, predict what it will produce, and read
//! the TPM's PCRs.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use attest::tpm::{resolve_tcti, Tpm};
use attest::{HashAlg, PcrBanks};
use clap::Args;
use firmware_measure::Chain;
use serde_json::json;

use super::eventlog::{print_pcrs, read_log};
use crate::config::Config;

/// Where the TPM is: the flag, else `$SATCHEL_TPM`, else the config file's
/// `[tpm] tcti`, else `device:/dev/tpmrm0`.
#[derive(Debug, Args)]
pub(crate) struct TpmArgs {
    /// TPM TCTI, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`
    /// [default: $SATCHEL_TPM, else the config's [tpm] tcti, else device:/dev/tpmrm0]
    #[arg(long, value_name = "TCTI")]
    tpm: Option<String>,
}

impl TpmArgs {
    /// The TPM named by `tcti`, or found as the flag's help says.
    pub(crate) fn with(tcti: Option<String>) -> TpmArgs {
        TpmArgs { tpm: tcti }
    }

    pub(crate) fn open(&self, config: Option<&std::path::Path>) -> anyhow::Result<Tpm> {
        Ok(Tpm::open(&self.tcti(config)?)?)
    }

    /// The TCTI, resolved as the flag's help says.
    pub(crate) fn tcti(&self, config: Option<&std::path::Path>) -> anyhow::Result<String> {
        let config = Config::load(config)?;
        Ok(resolve_tcti(self.tpm.as_deref(), config.tcti.as_deref()))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel measure --chain examples/boot-chain/chain.toml --tpm swtpm:host=127.0.0.1,port=2321 --log boot.log
  SATCHEL_TPM=device:/dev/tpmrm0 satchel measure --chain /etc/satchel/chain.toml --log /var/lib/satchel/boot.log

Each stage is extended into the TPM (every active bank), then appended to the log and
synced. A new log starts with a Spec ID header for the TPM's active banks. Afterwards the
TPM's PCRs and the log's replay are compared for every PCR the chain touched; any
difference is an error.")]
pub(crate) struct MeasureArgs {
    /// The boot-chain file (TOML; see docs/boot-chain.md).
    #[arg(long, value_name = "FILE")]
    chain: PathBuf,
    #[command(flatten)]
    tpm: TpmArgs,
    /// The event log to append to (created if absent).
    #[arg(long, value_name = "OUT")]
    log: PathBuf,
    /// Print the comparison as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel predict --chain examples/boot-chain/chain.toml
  satchel predict --chain chain.toml --base-log firmware.log --json
  satchel predict --chain chain.toml --banks sha256 --json | jq -r '.pcrs.sha256[\"4\"]'
  satchel keygen --out org.key
  satchel predict --chain chain.toml --banks sha1,sha256 --sign-key org.key --out reference.json

With --sign-key, the prediction becomes a reference manifest: per PCR and bank the final
value and every expected event digest named by its stage, signed with the ed25519 key.
`satchel attest verify` and `satchel launch` check devices against it.")]
pub(crate) struct PredictArgs {
    /// The boot-chain file.
    #[arg(long, value_name = "FILE")]
    chain: PathBuf,
    /// A firmware event log the chain continues (its banks are used).
    #[arg(long, value_name = "FIRMWARE_LOG")]
    base_log: Option<PathBuf>,
    /// Banks to predict without a base log.
    #[arg(long, value_delimiter = ',', default_value = "sha1,sha256")]
    banks: Vec<HashAlg>,
    /// Print {"pcrs": {bank: {index: hex}}} (the shape of `eventlog replay --json`).
    #[arg(long, conflicts_with = "sign_key")]
    json: bool,
    /// Write a signed reference manifest instead of printing predictions
    /// (needs --out; see docs/reference-manifest.md).
    #[arg(long, value_name = "KEY", requires = "out")]
    sign_key: Option<PathBuf>,
    /// Where the reference manifest goes.
    #[arg(long, value_name = "REF", requires = "sign_key")]
    out: Option<PathBuf>,
    /// The manifest's name [default: the chain file's stem].
    #[arg(long)]
    name: Option<String>,
    /// The reference's version: gateways refuse one older than they hold
    /// [default: the time now, in seconds since 1970, so each new one is newer].
    #[arg(long, value_name = "N", requires = "sign_key")]
    reference_version: Option<u64>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel pcrs --tpm swtpm:host=127.0.0.1,port=2321 --pcrs 0-7,16
  satchel pcrs --json")]
pub(crate) struct PcrsArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// PCR indices: a list of numbers and ranges.
    #[arg(long, default_value = "0-23", value_parser = parse_pcr_list)]
    pcrs: PcrList,
    /// Print {"pcrs": {bank: {index: hex}}}.
    #[arg(long)]
    json: bool,
}

/// A parsed `0-7,16` list.
#[derive(Debug, Clone)]
pub(crate) struct PcrList(pub(crate) Vec<u32>);

pub(crate) fn parse_pcr_list(s: &str) -> Result<PcrList, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .ok()
                .filter(|&n| n <= 23)
                .ok_or_else(|| format!("{x:?} is not a PCR index (0-23)"))
        };
        let (lo, hi) = (num(lo)?, num(hi)?);
        if lo > hi {
            return Err(format!("range {part:?} runs backwards"));
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(PcrList(out))
}

pub(crate) fn measure(a: MeasureArgs, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let chain = Chain::load(&a.chain)?;
    let mut tpm = a.tpm.open(config)?;
    let measured = firmware_measure::measure(&chain, &mut tpm, &a.log)?;
    let touched: Vec<u32> = {
        let mut v: Vec<u32> = measured.events.iter().map(|e| e.pcr).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut replayed = attest::eventlog::replay(&measured.log, Default::default()).pcrs;
    replayed.retain_pcrs(|i| touched.contains(&i));
    let in_tpm = tpm.read_pcrs(&measured.banks, &touched)?;
    let agree = replayed == in_tpm;
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = json!({"events": measured.events.len(), "log": a.log, "tpm": in_tpm, "log_replay": replayed, "agree": agree});
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        for e in &measured.events {
            let d = e
                .digests
                .last()
                .map(|d| hex::encode(&d.digest))
                .unwrap_or_default();
            writeln!(
                out,
                "measured {:<20} PCR{:<2} {} {d}",
                e.stage, e.pcr, e.event_type
            )?;
        }
    }
    anyhow::ensure!(
        agree,
        "the TPM's PCRs and the replay of {} differ",
        a.log.display()
    );
    if !a.json {
        writeln!(
            out,
            "log {} replays to the TPM's values of PCRs {touched:?} in {} banks: agree",
            a.log.display(),
            measured.banks.len()
        )?;
    }
    Ok(())
}

/// Predict `chain`'s PCRs and write them as a reference manifest named
/// `name`, signed with the key at `key`, to `out`; what to tell the user.
/// The version is `version`, else the time now in seconds (each new one
/// newer).
pub(crate) fn write_reference(
    chain: &Chain,
    base: Option<&attest::eventlog::EventLog>,
    banks: &[HashAlg],
    name: &str,
    version: Option<u64>,
    key: &std::path::Path,
    out: &std::path::Path,
) -> anyhow::Result<String> {
    let key = persist::keys::read_private(key)?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut reference = firmware_measure::reference(chain, base, banks, name, created)?;
    reference.version = version.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let signed = reference.sign(&key)?;
    super::write_atomic(out, signed.as_bytes())?;
    Ok(format!(
        "wrote reference manifest {} version {} ({} PCRs, banks {}), key id {}",
        out.display(),
        reference.version,
        reference.pcrs.len(),
        reference
            .banks
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        attest::reference::key_id(&key.verifying_key())
    ))
}

pub(crate) fn predict(a: PredictArgs) -> anyhow::Result<()> {
    let chain = Chain::load(&a.chain)?;
    let base = a.base_log.as_ref().map(read_log).transpose()?;
    anyhow::ensure!(!a.banks.is_empty(), "--banks names no bank");
    if let (Some(key), Some(out)) = (&a.sign_key, &a.out) {
        let name = a.name.clone().unwrap_or_else(|| {
            a.chain
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let said = write_reference(
            &chain,
            base.as_ref(),
            &a.banks,
            &name,
            a.reference_version,
            key,
            out,
        )
        .with_context(|| format!("predicting {}", a.chain.display()))?;
        println!("{said}");
        return Ok(());
    }
    let (_, pcrs) = firmware_measure::predict(&chain, base.as_ref(), &a.banks)
        .with_context(|| format!("predicting {}", a.chain.display()))?;
    print_banks(&pcrs, a.json)
}

pub(crate) fn pcrs(a: PcrsArgs, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let mut tpm = a.tpm.open(config)?;
    let banks = tpm.active_banks()?;
    let values = tpm.read_pcrs(&banks, &a.pcrs.0)?;
    print_banks(&values, a.json)
}

fn print_banks(pcrs: &PcrBanks, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json!({ "pcrs": pcrs }))?
        )?;
    } else {
        print_pcrs(&mut out, pcrs)?;
    }
    Ok(())
}
