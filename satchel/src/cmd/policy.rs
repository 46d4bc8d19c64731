//! `satchel policy check|test|bundle` and `satchel run`: decide a request
//! against a policy or a signed bundle, check a table of expectations, sign
//! a bundle, and run a program only if the allowlist says so.

use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use policy::{
    Bundle, BundleManifest, CanonicalUrl, Decision, FastPolicy, Mode, Policy, PolicyText, Request,
};
use serde_json::json;
use sha2::Digest as _;

use super::Exit;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Decide one request and name the rule that decided it.
    Check(CheckArgs),
    /// Check a table of expected decisions against a policy.
    Test(TestArgs),
    /// Sign a policy into a bundle for clients.
    Bundle(BundleArgs),
    /// Store a policy file in the database (replacing what is there).
    Import(ImportArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel policy import --db sqlite:/var/lib/satchel/satchel.db --policy school.csv
  satchel policy check --db sqlite:/var/lib/satchel/satchel.db --subject device:laptop-17 --image classroom-2026")]
pub(crate) struct ImportArgs {
    /// The database.
    #[arg(long, value_name = "URL")]
    db: String,
    /// Policy lines; validated before anything is replaced.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
}

fn load_db(db: &str) -> anyhow::Result<PolicyText> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (pool, _) = persist::db::connect(db).await?;
        Ok(policy::PolicyStore::new(pool).await?.load().await?)
    })
}

fn import(a: ImportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.policy)
        .with_context(|| format!("reading {}", a.policy.display()))?;
    let parsed = PolicyText::parse(&text).with_context(|| a.policy.display().to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use sha2::Digest as _;
        let (pool, _) = persist::db::connect(&a.db).await?;
        policy::PolicyStore::new(pool)
            .await?
            .replace(&parsed)
            .await?;
        // Recorded in the same database's audit log, as the gateway's own
        // policy changes are.
        let entry = audit::entry::NewEntry {
            kind: "admin".to_owned(),
            actor: "policy-cli".to_owned(),
            subject: "policy".to_owned(),
            decision: "replaced".to_owned(),
            details: serde_json::json!({"file": a.policy.display().to_string(),
                "sha256": hex::encode(sha2::Sha256::digest(text.as_bytes())),
                "rules": parsed.rules.len(), "memberships": parsed.memberships.len()}),
        };
        audit::store::Store::open(&a.db)
            .await?
            .append(vec![entry], audit::batch::now_ms())
            .await?;
        anyhow::Ok(())
    })?;
    println!(
        "stored {} rules and {} memberships",
        parsed.rules.len(),
        parsed.memberships.len()
    );
    Ok(())
}

/// Where the policy comes from: a policy file, or a signed bundle.
#[derive(Debug, Args)]
pub(crate) struct Source {
    /// Policy lines (see docs/policy.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["bundle", "bundle_key", "db"], required_unless_present_any = ["bundle", "db"])]
    policy: Option<PathBuf>,
    /// The policy stored in a database (sqlite:PATH or postgres://...; see `policy import`).
    #[arg(long, value_name = "URL", conflicts_with_all = ["bundle", "bundle_key"])]
    db: Option<String>,
    /// A signed bundle.
    #[arg(long, value_name = "FILE", requires = "bundle_key")]
    bundle: Option<PathBuf>,
    /// The key bundles must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    bundle_key: Option<PathBuf>,
}

impl Source {
    /// The policy lines, and the bundle if there is one. Errors are exit 2.
    fn load(&self) -> Result<(PolicyText, Option<Bundle>), Exit> {
        if let Some(p) = &self.policy {
            let text = std::fs::read_to_string(p)
                .map_err(|e| Exit::new(2, format!("reading {}: {e}", p.display())))?;
            let parsed = PolicyText::parse(&text)
                .map_err(|e| Exit::new(2, format!("{}: {e}", p.display())))?;
            return Ok((parsed, None));
        }
        if let Some(db) = &self.db {
            return Ok((
                load_db(db).map_err(|e| Exit::new(2, format!("{e:#}")))?,
                None,
            ));
        }
        let (Some(b), Some(k)) = (&self.bundle, &self.bundle_key) else {
            return Err(Exit::new(
                2,
                "give --policy FILE or --bundle FILE --bundle-key KEY.pub".to_owned(),
            ));
        };
        let key = persist::keys::read_public(k)
            .map_err(|e| Exit::new(2, format!("{}: {e}", k.display())))?;
        let bytes =
            std::fs::read(b).map_err(|e| Exit::new(2, format!("reading {}: {e}", b.display())))?;
        let bundle = Bundle::verify(&bytes, &key, None)
            .map_err(|e| Exit::new(2, format!("{}: {e}", b.display())))?;
        Ok((bundle.policy.clone(), Some(bundle)))
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel policy check --policy examples/policy/school.csv --subject device:laptop-17 --url https://en.wikipedia.org/wiki/Rust
  satchel policy check --policy school.csv --subject device:laptop-17 --url https://exam.school.example/submit --method POST --json
  satchel policy check --bundle policy.bundle --bundle-key org.key.pub --subject device:laptop-17 --app /usr/bin/python3
  satchel policy check --policy school.csv --subject device:laptop-18 --image classroom-2026

Prints the decision and the rule that decided it (or \"no rule: default deny\").
Exit status: 0 allow, 1 deny, 2 bad input.")]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    source: Source,
    /// Who asks: `device:ID` (or any subject the policy names).
    #[arg(long)]
    subject: String,
    /// A URL to reach.
    #[arg(long, group = "what")]
    url: Option<String>,
    /// The HTTP method for --url.
    #[arg(long, default_value = "GET", requires = "url")]
    method: String,
    /// A program to run: its file is hashed, and its path matched.
    #[arg(long, group = "what", value_name = "PATH")]
    app: Option<PathBuf>,
    /// A program known only by its SHA-256 (hex).
    #[arg(long, group = "what", value_name = "HEX")]
    app_hash: Option<String>,
    /// An image to subscribe to.
    #[arg(long, group = "what", value_name = "NAME")]
    image: Option<String>,
    /// Decide with casbin itself instead of the fast path (same answers; slower).
    #[arg(long)]
    casbin: bool,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel policy test --policy examples/policy/school.csv --cases examples/policy/school-cases.csv

The cases file is CSV: subject,kind,object,action,expected with kind url|app|image,
expected allow|deny; for app, object is sha256:HEX, path:/PATH or both (\"sha256:HEX path:/PATH\").
Lines starting with # are comments. Every failing row is printed; exit 1 if any fails.")]
pub(crate) struct TestArgs {
    /// Policy lines.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The expectations.
    #[arg(long, value_name = "FILE.csv")]
    cases: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel policy bundle --policy school.csv --sign-key org.key --version 7 --out policy.bundle
  satchel policy bundle --policy school.csv --sign-key org.key --version 8 --mode lockdown \\
      --group-mode group:class-7b=monitor --out policy.bundle

Clients refuse a bundle with a bad signature or a version lower than the one they hold.")]
#[command(disable_version_flag = true)]
pub(crate) struct BundleArgs {
    /// Policy lines.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The organisation's ed25519 key (from `satchel keygen`).
    #[arg(long, value_name = "KEY")]
    sign_key: PathBuf,
    /// The bundle version: higher than any bundle issued before.
    #[arg(long)]
    version: u64,
    /// The mode of every subject no --group-mode names.
    #[arg(long, default_value = "lockdown")]
    mode: Mode,
    /// A group's (or device's) mode: GROUP=lockdown|monitor. Repeatable.
    #[arg(long, value_name = "GROUP=MODE", value_parser = parse_group_mode)]
    group_mode: Vec<(String, Mode)>,
    /// Where to write the bundle.
    #[arg(long, value_name = "BUNDLE")]
    out: PathBuf,
}

fn parse_group_mode(s: &str) -> Result<(String, Mode), String> {
    let (g, m) = s.split_once('=').ok_or("expected GROUP=MODE")?;
    Ok((g.to_owned(), m.parse()?))
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel run --bundle policy.bundle --bundle-key org.key.pub --subject device:laptop-17 -- python3 script.py
  satchel run --bundle policy.bundle --bundle-key org.key.pub --subject device:laptop-17 \\
      --state /var/lib/satchel/bundle.version --audit-db sqlite:/var/lib/satchel/audit.db -- /usr/bin/ls -l

The program is found on PATH, hashed, and decided. Allowed: it replaces this process.
Denied in lockdown mode: it does not run, exit 126. Denied in monitor mode: it runs, and
the deny is reported on stderr (and in the audit log with --audit-db).")]
pub(crate) struct RunArgs {
    /// The signed bundle.
    #[arg(long, value_name = "FILE")]
    bundle: PathBuf,
    /// The key it must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    bundle_key: PathBuf,
    /// This device's subject, e.g. device:laptop-17.
    #[arg(long)]
    subject: String,
    /// File holding the highest bundle version accepted (rollback protection).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Record the decision in this audit database (sqlite:PATH or postgres://...).
    #[arg(long, value_name = "URL")]
    audit_db: Option<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "PROGRAM")]
    command: Vec<String>,
}

pub(crate) fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Check(a) => check(a),
        PolicyCmd::Test(a) => test(a),
        PolicyCmd::Bundle(a) => bundle(a),
        PolicyCmd::Import(a) => import(a),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

fn request_of(a: &CheckArgs) -> Result<Request, Exit> {
    let bad = |m: String| Exit::new(2, m);
    if let Some(u) = &a.url {
        let url = CanonicalUrl::parse(u).map_err(|e| bad(e.to_string()))?;
        return Ok(Request::Url {
            url,
            method: a.method.to_ascii_uppercase(),
        });
    }
    if let Some(p) = &a.app {
        let abs = std::fs::canonicalize(p).map_err(|e| bad(format!("{}: {e}", p.display())))?;
        let hash = sha256_file(&abs).map_err(|e| bad(format!("{}: {e}", abs.display())))?;
        return Ok(Request::App {
            sha256: Some(hash),
            path: Some(abs.to_string_lossy().into_owned()),
        });
    }
    if let Some(h) = &a.app_hash {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("--app-hash {h:?} is not 64 hex digits")));
        }
        return Ok(Request::App {
            sha256: Some(h.to_ascii_lowercase()),
            path: None,
        });
    }
    if let Some(i) = &a.image {
        return Ok(Request::Image { name: i.clone() });
    }
    Err(bad(
        "give one of --url, --app, --app-hash, --image".to_owned()
    ))
}

fn decide(
    text: PolicyText,
    subject: &str,
    req: &Request,
    casbin: bool,
) -> anyhow::Result<Decision> {
    if casbin {
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let p = rt.block_on(Policy::load(text))?;
        Ok(p.decide(subject, req)?)
    } else {
        Ok(FastPolicy::compile(&text).decide(subject, req))
    }
}

fn describe(req: &Request) -> String {
    match req {
        Request::Url { url, method } => format!("{method} {url}"),
        Request::App { sha256, path } => format!(
            "exec {}{}",
            path.as_deref().unwrap_or("(no path)"),
            sha256
                .as_deref()
                .map(|h| format!(" sha256:{h}"))
                .unwrap_or_default()
        ),
        Request::Image { name } => format!("subscribe {name}"),
    }
}

fn check(a: CheckArgs) -> anyhow::Result<()> {
    let (text, bundle) = a.source.load()?;
    let req = request_of(&a)?;
    let d = decide(text.clone(), &a.subject, &req, a.casbin)?;
    let rule = d.rule.as_ref().map(ToString::to_string);
    let mode = bundle
        .as_ref()
        .map(|b| b.mode_for(&a.subject, &policy::closure(&text.memberships)));
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = json!({
            "decision": if d.allow { "allow" } else { "deny" },
            "subject": a.subject,
            "kind": req.kind().as_str(),
            "object": req.object(),
            "action": req.action(),
            "rule": rule,
            "line": d.rule.as_ref().map(|r| r.line),
            "mode": mode,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
    } else {
        writeln!(
            out,
            "{}: {} {} ({})",
            if d.allow { "allow" } else { "deny" },
            a.subject,
            describe(&req),
            match &d.rule {
                Some(r) => format!("line {}: {r}", r.line),
                None => "no rule: default deny".to_owned(),
            }
        )?;
    }
    if d.allow {
        Ok(())
    } else {
        Err(Exit::new(1, String::new()).into())
    }
}

fn test(a: TestArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.policy)
        .map_err(|e| Exit::new(2, format!("reading {}: {e}", a.policy.display())))?;
    let text = PolicyText::parse(&text)
        .map_err(|e| Exit::new(2, format!("{}: {e}", a.policy.display())))?;
    let cases = std::fs::read_to_string(&a.cases)
        .map_err(|e| Exit::new(2, format!("reading {}: {e}", a.cases.display())))?;
    let fast = FastPolicy::compile(&text);
    let (mut total, mut failed) = (0, 0);
    for (i, line) in cases.lines().enumerate() {
        let row = line.trim();
        if row.is_empty() || row.starts_with('#') {
            continue;
        }
        let bad = |m: &str| Exit::new(2, format!("{} line {}: {m}", a.cases.display(), i + 1));
        let f: Vec<&str> = row.split(',').map(str::trim).collect();
        let [subject, kind, object, action, expected] = f.as_slice() else {
            return Err(bad("expected subject,kind,object,action,expected").into());
        };
        let want = match *expected {
            "allow" => true,
            "deny" => false,
            _ => return Err(bad("expected must be allow or deny").into()),
        };
        let req = match *kind {
            "url" => Request::Url {
                url: CanonicalUrl::parse(object).map_err(|e| bad(&e.to_string()))?,
                method: action.to_ascii_uppercase(),
            },
            "app" => {
                let mut sha256 = None;
                let mut path = None;
                for part in object.split_whitespace() {
                    if let Some(h) = part.strip_prefix("sha256:") {
                        sha256 = Some(h.to_ascii_lowercase());
                    } else if let Some(p) = part.strip_prefix("path:") {
                        path = Some(p.to_owned());
                    } else {
                        return Err(bad("app object is sha256:HEX and/or path:/PATH").into());
                    }
                }
                Request::App { sha256, path }
            }
            "image" => Request::Image {
                name: (*object).to_owned(),
            },
            _ => return Err(bad("kind must be url, app or image").into()),
        };
        total += 1;
        let d = fast.decide(subject, &req);
        if d.allow != want {
            failed += 1;
            println!(
                "FAIL line {}: {row}: got {} ({})",
                i + 1,
                if d.allow { "allow" } else { "deny" },
                d.rule
                    .map(|r| format!("policy line {}: {r}", r.line))
                    .unwrap_or_else(|| "no rule: default deny".to_owned())
            );
        }
    }
    println!(
        "{} cases, {} passed, {failed} failed",
        total,
        total - failed
    );
    if failed > 0 {
        return Err(Exit::new(1, format!("{failed} of {total} cases failed")).into());
    }
    Ok(())
}

fn bundle(a: BundleArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.policy)
        .with_context(|| format!("reading {}", a.policy.display()))?;
    PolicyText::parse(&text).with_context(|| a.policy.display().to_string())?;
    let key = persist::keys::read_private(&a.sign_key)?;
    let manifest = BundleManifest {
        format: policy::bundle::FORMAT.to_owned(),
        version: a.version,
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        default_mode: a.mode,
        group_modes: a.group_mode.into_iter().collect(),
        policy: text,
    };
    let signed = manifest.sign(&key)?;
    super::write_atomic(&a.out, signed.as_bytes())?;
    println!(
        "wrote bundle {} version {} (key id {})",
        a.out.display(),
        a.version,
        policy::bundle::key_id(&key.verifying_key())
    );
    Ok(())
}

/// Find `program` the way exec does: a path with a slash as is, else PATH.
fn resolve(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return std::fs::canonicalize(program).ok();
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

pub(crate) fn run_program(a: RunArgs) -> anyhow::Result<()> {
    let key = persist::keys::read_public(&a.bundle_key)?;
    let bytes =
        std::fs::read(&a.bundle).with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle = match &a.state {
        Some(state) => Bundle::accept(&bytes, &key, state),
        None => Bundle::verify(&bytes, &key, None),
    }
    .map_err(|e| {
        Exit::new(
            126,
            format!(
                "{}: {e}; nothing runs without a valid bundle",
                a.bundle.display()
            ),
        )
    })?;
    let (program, args) = a
        .command
        .split_first()
        .ok_or_else(|| Exit::new(2, "no program".to_owned()))?;
    let path = resolve(program).ok_or_else(|| Exit::new(127, format!("{program}: not found")))?;
    let hash = sha256_file(&path).with_context(|| format!("hashing {}", path.display()))?;
    let req = Request::App {
        sha256: Some(hash),
        path: Some(path.to_string_lossy().into_owned()),
    };
    let groups = policy::closure(&bundle.policy.memberships);
    let d = FastPolicy::compile(&bundle.policy).decide(&a.subject, &req);
    let mode = bundle.mode_for(&a.subject, &groups);
    let enforced = !d.allow && mode == Mode::Lockdown;
    let why = d
        .rule
        .as_ref()
        .map(|r| format!("policy line {}: {r}", r.line))
        .unwrap_or_else(|| "no rule: default deny".to_owned());
    if let Some(db) = &a.audit_db {
        record(db, &a.subject, &req, &d, mode, &why)?;
    }
    if !d.allow {
        if enforced {
            return Err(Exit::new(
                126,
                format!("{}: denied for {} ({why})", path.display(), a.subject),
            )
            .into());
        }
        eprintln!(
            "satchel: monitor mode: {} would be denied for {} ({why}); running it",
            path.display(),
            a.subject
        );
    }
    let err = std::process::Command::new(&path)
        .arg0(program)
        .args(args)
        .exec();
    Err(Exit::new(126, format!("{}: {err}", path.display())).into())
}

fn record(
    db: &str,
    subject: &str,
    req: &Request,
    d: &Decision,
    mode: Mode,
    why: &str,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = audit::store::Store::open(db).await?;
        let decision = match (d.allow, mode) {
            (true, _) => "allow",
            (false, Mode::Lockdown) => "deny",
            (false, Mode::Monitor) => "deny-monitored",
        };
        let entry = audit::entry::NewEntry {
            kind: "policy".to_owned(),
            actor: subject.to_owned(),
            subject: req.object(),
            decision: decision.to_owned(),
            details: json!({"kind": req.kind().as_str(), "action": req.action(), "rule": why}),
        };
        store.append(vec![entry], audit::batch::now_ms()).await?;
        anyhow::Ok(())
    })
}
