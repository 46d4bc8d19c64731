//! `satchel eventlog show|replay`: print a firmware event log's events, or
//! the PCR values it replays to.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use attest::eventlog::{self, EventLog, ReplayOptions};
use clap::{Args, Subcommand};
use serde_json::json;

#[derive(Debug, Subcommand)]
pub(crate) enum EventlogCmd {
    /// List a log's events, one per line (or as JSON).
    #[command(after_help = "Examples:
  satchel eventlog show /sys/kernel/security/tpm0/binary_bios_measurements
  satchel eventlog show boot.log --json | jq '.events[] | select(.pcr == 4)'")]
    Show(ShowArgs),
    /// Replay a log: the final value of every PCR it extends, per bank.
    #[command(after_help = "Examples:
  satchel eventlog replay boot.log
  satchel eventlog replay boot.log --json     # {\"pcrs\": {\"sha256\": {\"0\": \"...\"}}, ...}

  satchel eventlog replay a.log b.log --json  # one JSON object per line, each with \"file\"

Exit status: 0 when the log parses, 1 with a message naming the byte offset when it does not.")]
    Replay(ReplayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ShowArgs {
    /// The event log (binary, as firmware or `satchel measure` writes it).
    file: PathBuf,
    /// Print one JSON object with the header and every event.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// The event log(s). With several, each is replayed in turn under a
    /// `== FILE` heading (or, with --json, one JSON object per line with a
    /// "file" member); the first bad log stops the run.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Print one JSON object: {"format", "events", "pcr0_locality", "pcrs":
    /// {bank: {index: hex}}, "findings"} (plus "file" when several logs are given).
    #[arg(long)]
    json: bool,
    /// Extend the two ExitBootServices actions into PCR 5 when the log lacks
    /// them (for firmware that measures them without logging).
    #[arg(long)]
    add_missing_ebs: bool,
}

pub(crate) fn run(cmd: EventlogCmd) -> anyhow::Result<()> {
    match cmd {
        EventlogCmd::Show(a) => show(a),
        EventlogCmd::Replay(a) => replay(a),
    }
}

/// Read and parse a log file, naming the file in any error.
pub(crate) fn read_log(path: &PathBuf) -> anyhow::Result<EventLog> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    eventlog::parse(&bytes).with_context(|| format!("parsing event log {}", path.display()))
}

fn show(a: ShowArgs) -> anyhow::Result<()> {
    let log = read_log(&a.file)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        serde_json::to_writer_pretty(&mut out, &show_json(&log))?;
        writeln!(out)?;
        return Ok(());
    }
    for e in &log.events {
        let digests: Vec<String> = e
            .digests
            .iter()
            .map(|d| match d.alg() {
                Some(alg) => format!("{alg}:{}", hex::encode(&d.digest)),
                None => format!("0x{:04x}:{}", d.alg_id, hex::encode(&d.digest)),
            })
            .collect();
        writeln!(
            out,
            "{:>4} @{:<7} PCR{:<2} {:<34} {}  {}",
            e.index,
            e.offset,
            pcr_label(e.pcr),
            e.event_type.to_string(),
            e.decoded(),
            digests.join(" ")
        )?;
    }
    Ok(())
}

fn pcr_label(pcr: u32) -> String {
    if pcr == u32::MAX {
        "-1".to_owned()
    } else {
        pcr.to_string()
    }
}

fn show_json(log: &EventLog) -> serde_json::Value {
    let events: Vec<_> = log
        .events
        .iter()
        .map(|e| {
            let digests: serde_json::Map<String, serde_json::Value> = e
                .digests
                .iter()
                .map(|d| {
                    let name = d
                        .alg()
                        .map_or_else(|| format!("0x{:04x}", d.alg_id), |a| a.name().to_owned());
                    (name, json!(hex::encode(&d.digest)))
                })
                .collect();
            json!({
                "index": e.index,
                "offset": e.offset,
                "pcr": e.pcr,
                "type": e.event_type,
                "type_id": e.event_type.0,
                "digests": digests,
                "data": e.decoded(),
                "data_hex": hex::encode(&e.data),
            })
        })
        .collect();
    json!({
        "format": log.format,
        "spec_id": log.spec_id,
        "trailing_padding": log.trailing_padding,
        "events": events,
    })
}

fn replay(a: ReplayArgs) -> anyhow::Result<()> {
    let options = ReplayOptions {
        add_missing_exit_boot_services: a.add_missing_ebs,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let many = a.files.len() > 1;
    for file in &a.files {
        let log = read_log(file)?;
        let r = eventlog::replay(&log, options);
        if a.json {
            let findings: Vec<String> = r.findings.iter().map(ToString::to_string).collect();
            let mut v = json!({
                "format": log.format,
                "events": log.events.len(),
                "pcr0_locality": r.pcr0_locality,
                "pcrs": r.pcrs,
                "findings": findings,
            });
            if many {
                v["file"] = json!(file);
                serde_json::to_writer(&mut out, &v)?;
            } else {
                serde_json::to_writer_pretty(&mut out, &v)?;
            }
            writeln!(out)?;
            continue;
        }
        if many {
            writeln!(out, "== {}", file.display())?;
        }
        print_pcrs(&mut out, &r.pcrs)?;
        for f in &r.findings {
            eprintln!("note: {}: {f}", file.display());
        }
    }
    out.flush()?;
    Ok(())
}

/// `bank PCR value` lines, as `tpm2_pcrread` groups them.
pub(crate) fn print_pcrs(out: &mut impl Write, pcrs: &attest::PcrBanks) -> std::io::Result<()> {
    for bank in pcrs.banks() {
        writeln!(out, "{bank}:")?;
        for (i, v) in pcrs.bank(bank).into_iter().flatten() {
            writeln!(out, "  {i:>2}: {}", hex::encode(v))?;
        }
    }
    Ok(())
}
