//! `satchel audit ...`: append to, list, export, checkpoint, prove and
//! verify the tamper-evident audit log, and `satchel keygen`.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use audit::checkpoint::Verifier;
use audit::entry::NewEntry;
use audit::export::{self, Line};
use audit::log;
use audit::store::Store;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use super::Exit;

/// Entries per transaction when importing.
const IMPORT_BATCH: usize = 10_000;
/// Entries read per query when exporting.
const EXPORT_PAGE: u64 = 50_000;

/// Where the audit database is: `--db`, else `$SATCHEL_DB`, else `sqlite:satchel.db`.
#[derive(Debug, Args)]
pub(crate) struct DbArgs {
    /// Database URL: `sqlite:PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(
        long,
        env = "SATCHEL_DB",
        default_value = "sqlite:satchel.db",
        value_name = "URL"
    )]
    db: String,
}

impl DbArgs {
    async fn open(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&self.db).await?)
    }
}

/// The log's signing key and name.
#[derive(Debug, Args)]
pub(crate) struct KeyArgs {
    /// The log's ed25519 signing key (PKCS#8 PEM, from `satchel keygen`).
    #[arg(long, env = "SATCHEL_AUDIT_KEY", value_name = "KEY")]
    key: Option<PathBuf>,
    /// The log's name in checkpoints (the signed note's origin and key name).
    #[arg(long, env = "SATCHEL_AUDIT_ORIGIN", default_value = "satchel.audit")]
    origin: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCmd {
    /// Append one entry; prints its sequence number.
    #[command(after_help = "Examples:
  satchel audit append --kind policy --actor device:laptop-17 --subject https://example.org/ --decision deny
  satchel audit append --kind admin --actor alice --subject policy --decision change --details '{\"rule\": 4}' --key audit.key")]
    Append(AppendArgs),
    /// Append every entry of a JSON Lines file ({"kind","actor","subject","decision","details"} per line).
    #[command(after_help = "Examples:
  satchel audit import --db sqlite:/var/lib/satchel/audit.db --key audit.key decisions.jsonl
  printf '%s\\n' '{\"kind\":\"admin\",\"actor\":\"alice\",\"subject\":\"policy\",\"decision\":\"change\",\"details\":{}}' > one.jsonl
  satchel audit import one.jsonl

The whole file is appended as one batch (one transaction, one fsync), in file order.")]
    Import(ImportArgs),
    /// List entries (one per line, or one JSON object per line).
    #[command(after_help = "Examples:
  satchel audit list --since 100 --kind policy
  satchel audit list --json | jq 'select(.decision == \"deny\")'")]
    List(ListArgs),
    /// Write every entry and checkpoint to a JSON Lines file.
    #[command(after_help = "Examples:
  satchel audit export --db sqlite:/var/lib/satchel-gateway/satchel.db --out audit-2026-11.jsonl
  satchel audit verify --export audit-2026-11.jsonl --pubkey audit.key.pub

Anyone holding the export and the public key can verify it: no database needed.")]
    Export(ExportArgs),
    /// Sign and print a checkpoint of the log as it is now (C2SP signed note).
    #[command(after_help = "Examples:
  satchel audit checkpoint --db sqlite:audit.db --key audit.key
  satchel audit checkpoint --db sqlite:/var/lib/satchel-gateway/satchel.db \\
      --key /var/lib/satchel-gateway/audit.key --origin satchel.gateway.audit

The checkpoint (origin, tree size, root hash, ed25519 signature line) is stored in the
log and printed; transparency-log tooling that reads C2SP signed notes can check it.")]
    Checkpoint(CheckpointArgs),
    /// Print an inclusion proof (--index) or a consistency proof (--consistency), as JSON.
    #[command(after_help = "Examples:
  satchel audit prove --index 17
  satchel audit prove --index 17 --size 1000
  satchel audit prove --consistency 1000 --size 2000")]
    Prove(ProveArgs),
    /// Append synthetic entries from many concurrent appenders through group
    /// commit and report durable appends per second (a benchmark and crash-test tool).
    #[command(after_help = "Examples:
  satchel audit load --db sqlite:/tmp/bench.db --entries 200000 --concurrency 64
  satchel audit load --print-acks    # one acknowledged (durable) sequence number per line")]
    Load(LoadArgs),
    /// Verify a database or an export: every leaf, the tree, every checkpoint.
    #[command(after_help = "Examples:
  satchel audit verify --db sqlite:/var/lib/satchel/satchel.db --pubkey audit.key.pub
  satchel audit verify --export audit.jsonl --pubkey audit.key.pub --json

Exit status: 0 intact, 1 tampered (the first line names the first bad entry), 2 unusable input.")]
    Verify(VerifyArgs),
}

#[derive(Debug, Args)]
pub(crate) struct AppendArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// Entry kind (attestation, enrollment, policy, sync, admin, ...).
    #[arg(long)]
    kind: String,
    /// Who acted.
    #[arg(long)]
    actor: String,
    /// What it was about.
    #[arg(long)]
    subject: String,
    /// The decision.
    #[arg(long)]
    decision: String,
    /// Anything else, as JSON.
    #[arg(long, value_parser = parse_json)]
    details: Option<Value>,
}

#[derive(Debug, Args)]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    key: KeyArgs,
    /// JSON Lines file of entries.
    file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    db: DbArgs,
    /// First sequence number to list.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Only entries of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// At most this many entries.
    #[arg(long)]
    limit: Option<u64>,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    db: DbArgs,
    /// The JSON Lines file to write (replaced atomically).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct CheckpointArgs {
    #[command(flatten)]
    db: DbArgs,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ProveArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Prove this entry's inclusion.
    #[arg(
        long,
        conflicts_with = "consistency",
        required_unless_present = "consistency"
    )]
    index: Option<u64>,
    /// Prove the tree of this many entries is a prefix of the tree of --size.
    #[arg(long, value_name = "OLD")]
    consistency: Option<u64>,
    /// Tree size to prove against [default: the whole log].
    #[arg(long)]
    size: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct LoadArgs {
    #[command(flatten)]
    db: DbArgs,
    /// Entries to append in all.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Concurrent appenders.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Largest group-commit batch.
    #[arg(long, default_value_t = audit::batch::DEFAULT_MAX_BATCH)]
    max_batch: usize,
    /// Print each sequence number as soon as its append is acknowledged.
    #[arg(long)]
    print_acks: bool,
}

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Verify this database.
    #[arg(
        long,
        env = "SATCHEL_DB",
        value_name = "URL",
        conflicts_with = "export"
    )]
    db: Option<String>,
    /// Verify this export instead.
    #[arg(long, value_name = "FILE")]
    export: Option<PathBuf>,
    /// The log's public key (SPKI PEM, `KEY.pub` from `satchel keygen`).
    #[arg(long, value_name = "KEY.pub")]
    pubkey: PathBuf,
    /// The log's name (key name in its checkpoints).
    #[arg(long, env = "SATCHEL_AUDIT_ORIGIN", default_value = "satchel.audit")]
    origin: String,
    /// A checkpoint note kept outside the log (as `satchel audit checkpoint`
    /// prints it, or a device's witness): the log must hold it (repeatable).
    #[arg(long, value_name = "NOTE_FILE")]
    witness: Vec<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel keygen --out audit.key      # writes audit.key (mode 0600) and audit.key.pub
  satchel keygen --p256 --out policy.key   # the key that signs PCR policies (satchel pcr-policy)

Ed25519 signs references, policy bundles and the audit trail. A TPM verifies no Ed25519,
so the key whose signed PCR policies unseal a disk key (satchel seal --policy-key) is
ECDSA P-256.")]
pub(crate) struct KeygenArgs {
    /// Where to write the private key (PKCS#8 PEM); the public key goes to OUT.pub.
    #[arg(long)]
    out: PathBuf,
    /// An ECDSA P-256 key (for PCR policies) instead of Ed25519.
    #[arg(long)]
    p256: bool,
}

fn parse_json(s: &str) -> Result<Value, String> {
    serde_json::from_str(s).map_err(|e| format!("not JSON: {e}"))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

pub(crate) fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    let rt = runtime()?;
    match cmd {
        AuditCmd::Append(a) => rt.block_on(append(a)),
        AuditCmd::Import(a) => rt.block_on(import(a)),
        AuditCmd::List(a) => rt.block_on(list(a)),
        AuditCmd::Export(a) => rt.block_on(export_log(a)),
        AuditCmd::Checkpoint(a) => rt.block_on(make_checkpoint(a)),
        AuditCmd::Prove(a) => rt.block_on(prove(a)),
        // One thread for the appenders and the writer: wake-ups stay on one
        // core and the other is left to SQLite's worker thread.
        AuditCmd::Load(a) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(load(a)),
        AuditCmd::Verify(a) => rt.block_on(verify(a)),
    }
}

pub(crate) fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let public = pub_path(&a.out);
    anyhow::ensure!(
        !a.out.exists(),
        "{} exists; refusing to overwrite a key",
        a.out.display()
    );
    if a.p256 {
        use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
        let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
        let pem = key.to_pkcs8_pem(LineEnding::LF)?;
        super::write_secret(&a.out, pem.as_bytes())?;
        let pubpem = key.verifying_key().to_public_key_pem(LineEnding::LF)?;
        super::write_atomic(&public, pubpem.as_bytes())?;
        println!(
            "wrote {} and {} (ECDSA P-256)",
            a.out.display(),
            public.display()
        );
        return Ok(());
    }
    let key = persist::keys::generate();
    persist::keys::write_private(&a.out, &key)?;
    persist::keys::write_public(&public, &key.verifying_key())?;
    println!("wrote {} and {}", a.out.display(), public.display());
    Ok(())
}

fn pub_path(key: &Path) -> PathBuf {
    let mut s = key.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// Sign a checkpoint if a key was given.
async fn maybe_checkpoint(store: &Store, key: &KeyArgs) -> anyhow::Result<()> {
    if let Some(path) = &key.key {
        let signing = persist::keys::read_private(path)?;
        log::make_checkpoint(store, &signing, &key.origin).await?;
    }
    Ok(())
}

async fn append(a: AppendArgs) -> anyhow::Result<()> {
    let store = a.db.open().await?;
    let entry = NewEntry {
        kind: a.kind,
        actor: a.actor,
        subject: a.subject,
        decision: a.decision,
        details: a.details.unwrap_or(Value::Null),
    };
    let seq = store.append(vec![entry], audit::batch::now_ms()).await?;
    maybe_checkpoint(&store, &a.key).await?;
    for s in seq {
        println!("{s}");
    }
    store.close().await;
    Ok(())
}

async fn import(a: ImportArgs) -> anyhow::Result<()> {
    let file =
        std::fs::File::open(&a.file).with_context(|| format!("opening {}", a.file.display()))?;
    let mut entries = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", a.file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let e: NewEntry = serde_json::from_str(&line)
            .with_context(|| format!("{} line {}: not an entry", a.file.display(), i + 1))?;
        entries.push(e);
    }
    let store = a.db.open().await?;
    let (mut n, mut last) = (0usize, None);
    let mut rest = entries;
    while !rest.is_empty() {
        let tail = rest.split_off(rest.len().min(IMPORT_BATCH));
        let seqs = store.append(rest, audit::batch::now_ms()).await?;
        n += seqs.len();
        last = seqs.last().copied().or(last);
        rest = tail;
    }
    maybe_checkpoint(&store, &a.key).await?;
    match last {
        Some(l) => println!("imported {n} entries; last sequence number {l}"),
        None => println!("imported 0 entries"),
    }
    store.close().await;
    Ok(())
}

async fn list(a: ListArgs) -> anyhow::Result<()> {
    let store = a.db.open().await?;
    let entries = store.entries(a.since, a.kind.as_deref(), a.limit).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for s in &entries {
        let e = &s.entry;
        if a.json {
            serde_json::to_writer(&mut out, e)?;
            writeln!(out)?;
        } else {
            let when = humantime::format_rfc3339_millis(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_millis(u64::try_from(e.ts_ms).unwrap_or(0)),
            );
            writeln!(
                out,
                "{:>8} {when} {:<12} {:<24} {:<10} {} {}",
                e.seq,
                e.kind,
                e.actor,
                e.decision,
                e.subject,
                e.details_text()
            )?;
        }
    }
    out.flush()?;
    store.close().await;
    Ok(())
}

async fn export_log(a: ExportArgs) -> anyhow::Result<()> {
    let store = a.db.open().await?;
    // Checkpoints first: entries only grow, so every checkpoint read now is
    // covered by the entries read after it, even while appends go on.
    let checkpoints = store.checkpoints().await?;
    let mut tmp = persist::AtomicFile::create(&a.out, 0o644)?;
    let (mut entries, mut since) = (0u64, 0u64);
    {
        let mut w = std::io::BufWriter::new(&mut tmp);
        loop {
            let page = store.entries(since, None, Some(EXPORT_PAGE)).await?;
            for e in &page {
                export::write_line(&mut w, &Line::from(e))?;
            }
            entries += page.len() as u64;
            match page.last() {
                Some(last) if page.len() as u64 == EXPORT_PAGE => {
                    since = last.entry.seq.saturating_add(1)
                }
                _ => break,
            }
        }
        for c in &checkpoints {
            export::write_line(&mut w, &Line::from(c))?;
        }
        w.flush()?;
    }
    tmp.commit()?;
    println!(
        "exported {} entries and {} checkpoints to {}",
        entries,
        checkpoints.len(),
        a.out.display()
    );
    store.close().await;
    Ok(())
}

async fn make_checkpoint(a: CheckpointArgs) -> anyhow::Result<()> {
    let path = a
        .key
        .key
        .as_ref()
        .context("--key KEY (or SATCHEL_AUDIT_KEY) is needed to sign")?;
    let signing = persist::keys::read_private(path)?;
    let store = a.db.open().await?;
    let (_, note) = log::make_checkpoint(&store, &signing, &a.key.origin).await?;
    print!("{note}");
    store.close().await;
    Ok(())
}

async fn prove(a: ProveArgs) -> anyhow::Result<()> {
    let store = a.db.open().await?;
    let v = match (a.index, a.consistency) {
        (Some(i), _) => serde_json::to_value(log::prove_inclusion(&store, i, a.size).await?)?,
        (None, Some(old)) => {
            serde_json::to_value(log::prove_consistency(&store, old, a.size).await?)?
        }
        (None, None) => anyhow::bail!("give --index I or --consistency OLD"),
    };
    println!("{}", serde_json::to_string_pretty(&v)?);
    store.close().await;
    Ok(())
}

async fn load(a: LoadArgs) -> anyhow::Result<()> {
    let store = a.db.open().await?;
    let (appender, writer) = audit::batch::Appender::spawn(store.clone(), a.max_batch);
    let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let printer = tokio::spawn(async move {
        let mut out = std::io::stdout();
        while let Some(seq) = acked.recv().await {
            let _ = writeln!(out, "{seq}").and_then(|()| out.flush());
        }
    });
    let start = std::time::Instant::now();
    let workers = a.concurrency.max(1);
    let mut tasks = Vec::with_capacity(workers);
    for w in 0..workers {
        let (appender, acks) = (appender.clone(), acks.clone());
        let count = a.entries / workers + usize::from(w < a.entries % workers);
        let print = a.print_acks;
        tasks.push(tokio::spawn(async move {
            for i in 0..count {
                let e = NewEntry {
                    kind: "load".into(),
                    actor: format!("appender-{w}"),
                    subject: format!("entry-{i}"),
                    decision: "allow".into(),
                    details: json!({"worker": w, "i": i}),
                };
                let seq = appender.append(e).await?;
                if print {
                    let _ = acks.send(seq);
                }
            }
            Ok::<(), audit::batch::AppendError>(())
        }));
    }
    drop((appender, acks));
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    writer.await?;
    printer.await?;
    eprintln!(
        "{} durable appends from {} appenders in {secs:.3} s: {:.0} appends/s",
        a.entries,
        workers,
        a.entries as f64 / secs
    );
    store.close().await;
    Ok(())
}

/// The one origin every checkpoint is signed under, when the only problems
/// are checkpoints of another origin than the one asked for (a wrong
/// `--origin`, not a tampered log).
fn other_origin(report: &audit::verify::Report) -> Option<String> {
    let mut origins = report.problems.iter().map(|p| match p {
        audit::verify::Problem::Origin { signed_as, .. } => Some(signed_as.as_str()),
        _ => None,
    });
    let first = origins.next()??;
    origins.all(|o| o == Some(first)).then(|| first.to_owned())
}

/// The witnessed checkpoint notes, each verified with `verifier`.
fn witnessed(
    files: &[PathBuf],
    verifier: &Verifier,
) -> anyhow::Result<Vec<audit::store::StoredCheckpoint>> {
    files
        .iter()
        .map(|f| {
            let note =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let cp = audit::checkpoint::parse_and_verify(&note, verifier)
                .with_context(|| format!("witness {}", f.display()))?;
            Ok(audit::store::StoredCheckpoint {
                size: cp.size,
                root: cp.root,
                note,
                created_ms: 0,
            })
        })
        .collect()
}

/// Exit 0 intact, 1 tampered, 2 unusable input.
async fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let unusable = |e: anyhow::Error| Exit::new(2, format!("{e:#}"));
    let key = persist::keys::read_public(&a.pubkey).map_err(|e| unusable(e.into()))?;
    let verifier = Verifier::new(&a.origin, key).map_err(|e| unusable(e.into()))?;
    let witnessed = witnessed(&a.witness, &verifier).map_err(unusable)?;
    let report = match (&a.db, &a.export) {
        (_, Some(path)) => export::verify_file_witnessed(path, &verifier, witnessed)
            .with_context(|| format!("reading export {}", path.display()))
            .map_err(unusable)?,
        (Some(db), None) => {
            let store = Store::open(db).await.map_err(|e| unusable(e.into()))?;
            let r = log::verify_store_witnessed(&store, &verifier, witnessed)
                .await
                .map_err(|e| unusable(e.into()))?;
            store.close().await;
            r
        }
        (None, None) => return Err(Exit::new(2, "give --db URL or --export FILE".into()).into()),
    };
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"intact": report.intact(), "report": report}))?
        );
    } else if report.intact() {
        println!(
            "intact: {} entries, {} checkpoints verified, root {}",
            report.entries, report.checkpoints_verified, report.root
        );
    }
    if let Some(signed_as) = other_origin(&report) {
        return Err(Exit::new(
            2,
            format!(
                "the log's checkpoints are signed as {signed_as:?}, not {:?}: verify with --origin {signed_as} (nothing was found tampered)",
                a.origin
            ),
        )
        .into());
    }
    if !report.intact() {
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        return Err(Exit::new(1, format!("tampered:\n  {}", lines.join("\n  "))).into());
    }
    Ok(())
}
