//! `satchel gateway serve`: the branch-office gateway's HTTPS server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The gateway's data directory and database, for the admin commands: the
/// flags, else the gateway's own configuration file (`--gateway-config`,
/// the file `gateway serve --config` reads), so an admin command acts on
/// the database the running gateway uses, never on another one silently.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The data directory [default: the gateway configuration's `data`].
    #[arg(long, env = "SATCHEL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The database [default: the gateway configuration's `db`, else sqlite:DATA/satchel.db].
    #[arg(long, env = "SATCHEL_DB", value_name = "URL")]
    db: Option<String>,
    /// The gateway's configuration file (as for `gateway serve --config`):
    /// its data directory and database, unless --data / --db say otherwise.
    #[arg(long, env = "SATCHEL_GATEWAY_CONFIG", value_name = "FILE")]
    gateway_config: Option<PathBuf>,
    #[command(flatten)]
    chunks: ChunkStoreArgs,
}

/// The shared object store for chunks (docs/scale.md): the flags, else the
/// gateway configuration's `chunk-store*` keys. None: the data directory's
/// store alone.
#[derive(Debug, Args, Default)]
pub(crate) struct ChunkStoreArgs {
    /// An S3-compatible bucket every gateway shares, as s3://BUCKET[/PREFIX]
    /// (the data directory's store becomes this gateway's cache).
    #[arg(long, env = "SATCHEL_CHUNK_STORE", value_name = "S3-URL")]
    chunk_store: Option<String>,
    /// The object store's address, e.g. http://10.0.0.5:8333 (a SeaweedFS
    /// or Garage of the region); none for AWS itself.
    #[arg(long, env = "SATCHEL_CHUNK_STORE_ENDPOINT", value_name = "URL")]
    chunk_store_endpoint: Option<String>,
    /// The object store's region [default: us-east-1].
    #[arg(long, env = "SATCHEL_CHUNK_STORE_REGION", value_name = "REGION")]
    chunk_store_region: Option<String>,
    /// A file (mode 0600) with access-key-id = "..." and
    /// secret-access-key = "..." [default: $AWS_ACCESS_KEY_ID and
    /// $AWS_SECRET_ACCESS_KEY].
    #[arg(long, env = "SATCHEL_CHUNK_STORE_CREDENTIALS", value_name = "FILE")]
    chunk_store_credentials: Option<PathBuf>,
}

impl ChunkStoreArgs {
    /// The object store these and `file` name, if any.
    pub(crate) fn resolve(
        self,
        file: &ServeFile,
    ) -> anyhow::Result<Option<gateway::chunks::RemoteConfig>> {
        let Some(url) = self.chunk_store.or_else(|| file.chunk_store.clone()) else {
            anyhow::ensure!(
                self.chunk_store_endpoint.is_none() && self.chunk_store_credentials.is_none(),
                "--chunk-store-endpoint and --chunk-store-credentials need --chunk-store s3://BUCKET"
            );
            return Ok(None);
        };
        let credentials = match self
            .chunk_store_credentials
            .or_else(|| file.chunk_store_credentials.clone())
        {
            Some(path) => Some(gateway::chunks::RemoteConfig::read_credentials(&path)?),
            None => None,
        };
        Ok(Some(gateway::chunks::RemoteConfig {
            url,
            endpoint: self
                .chunk_store_endpoint
                .or_else(|| file.chunk_store_endpoint.clone()),
            region: self
                .chunk_store_region
                .or_else(|| file.chunk_store_region.clone()),
            credentials,
        }))
    }
}

impl StoreArgs {
    /// The object store for chunks, as `gateway serve` resolves it.
    pub(crate) fn chunk_store(&self) -> anyhow::Result<Option<gateway::chunks::RemoteConfig>> {
        let args = ChunkStoreArgs {
            chunk_store: self.chunks.chunk_store.clone(),
            chunk_store_endpoint: self.chunks.chunk_store_endpoint.clone(),
            chunk_store_region: self.chunks.chunk_store_region.clone(),
            chunk_store_credentials: self.chunks.chunk_store_credentials.clone(),
        };
        args.resolve(&self.file()?)
    }

    /// The gateway configuration file's settings, if one is named.
    fn file(&self) -> anyhow::Result<ServeFile> {
        match &self.gateway_config {
            Some(path) => load_gateway_file(path),
            None => unified_gateway(),
        }
    }

    /// The data directory: the flag, else the configuration's.
    pub(crate) fn data(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data {
            return Ok(d.clone());
        }
        self.file()?.data.ok_or_else(|| {
            anyhow::anyhow!(
                "no data directory: give --data DIR, or --gateway-config FILE whose data names one"
            )
        })
    }

    /// The database URL, as `gateway serve` resolves it.
    pub(crate) fn url(&self) -> anyhow::Result<String> {
        let mut c = gateway::ServeConfig::new(self.data()?, ([127, 0, 0, 1], 0).into());
        c.db = match &self.db {
            Some(db) => Some(db.clone()),
            None => self.file()?.db,
        };
        Ok(c.db_url())
    }

    /// The device and token tables, and the database URL.
    async fn open(&self) -> anyhow::Result<(gateway::state::Db, String)> {
        let url = self.url()?;
        let (pool, _) = persist::db::connect(&url).await?;
        Ok((gateway::state::Db::new(pool).await?, url))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCmd {
    /// Serve HTTPS with device certificates (mTLS).
    Serve(Box<ServeArgs>),
    /// Make a one-time enrollment token for a device.
    EnrollToken(TokenArgs),
    /// Revoke a device: its certificate stops working on its next request.
    Revoke(RevokeArgs),
    /// Make an admin client certificate (for the /v1/admin routes).
    AdminCert(AdminCertArgs),
    /// Revoke an admin's certificates: every one issued to NAME until now.
    RevokeAdmin(RevokeAdminArgs),
    /// Check in a device's offline sync bundle as if it were online.
    ImportBundle(ImportArgs),
    /// Remove chunks no layer version references (failed builds, abandoned uploads).
    Gc(GcArgs),
    /// Print a one-time sign-in link to the web console for an admin.
    ConsoleLink(ConsoleLinkArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  sudo -u satchel satchel gateway console-link --gateway-config /etc/satchel/gateway.toml --name alice
  satchel gateway console-link --data ./gw --name alice --url https://127.0.0.1:8443

Prints https://GATEWAY/console/login?token=...: open it in a browser within the link's
lifetime (15 minutes by default); it works once and starts an 8-hour session for NAME.
Whoever can run this can act on the gateway's database, so the link gives no power they
lack. The issuing is audited (kind console, actor admin:NAME). See docs/console.md.")]
pub(crate) struct ConsoleLinkArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The admin's name, as audit entries will name them (admin:NAME).
    #[arg(long)]
    name: String,
    /// The gateway's address as the browser reaches it [default: the
    /// configuration's first server-name and listen port, else https://127.0.0.1:8443].
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// How long the link stays usable.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

fn console_link(a: ConsoleLinkArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.name.is_empty()
            && a.name.len() <= 64
            && a.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
        "--name {:?}: give 1-64 letters, digits, '-', '_' or '.'",
        a.name
    );
    anyhow::ensure!(
        a.ttl >= std::time::Duration::from_secs(60)
            && a.ttl <= std::time::Duration::from_secs(86_400),
        "--ttl: give 1m to 24h"
    );
    let base = match &a.url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let f = a.store.file()?;
            let port = f.listen.map_or(8443, |l| l.port());
            let host = f
                .server_names
                .first()
                .cloned()
                .unwrap_or_else(|| "127.0.0.1".to_owned());
            format!("https://{host}:{port}")
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt.block_on(async {
        let (db, url) = a.store.open().await?;
        let token = db.make_console_link(&a.name, a.ttl).await?;
        let store = audit::store::Store::open(&url).await?;
        let entry = audit::entry::NewEntry {
            kind: "console".to_owned(),
            actor: format!("admin:{}", a.name),
            subject: "sign-in-link".to_owned(),
            decision: "issued".to_owned(),
            details: serde_json::json!({"ttl_s": a.ttl.as_secs(), "by": "gateway-cli"}),
        };
        store.append(vec![entry], audit::batch::now_ms()).await?;
        anyhow::Ok(token)
    })?;
    println!("{base}/console/login?token={token}");
    eprintln!(
        "open it within {} (once); it signs {} in for 8 hours",
        humantime::format_duration(a.ttl),
        a.name
    );
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway import-bundle --data ./gw /media/usb/laptop-17.bundle

The bundle must be signed by the key of a device certificate this gateway issued (valid
when the bundle was made), for an enrolled, unrevoked device subscribed to the image.
Each layer is reconciled as an online push would be; conflicts and violations are
reported and audited.")]
pub(crate) struct ImportArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The bundle (from `satchel client sync export-bundle`).
    bundle: PathBuf,
}

fn import_bundle(a: ImportArgs) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let len = std::fs::metadata(&a.bundle)
        .with_context(|| format!("reading {}", a.bundle.display()))?
        .len();
    anyhow::ensure!(
        len <= gateway::sync_bundle::MAX_BUNDLE,
        "{} is over the 1 GiB limit",
        a.bundle.display()
    );
    let bytes =
        std::fs::read(&a.bundle).with_context(|| format!("reading {}", a.bundle.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answers = rt.block_on(async {
        let (db, url) = a.store.open().await?;
        let (pool, _) = persist::db::connect(&url).await?;
        let remote = a.store.chunk_store()?;
        let images =
            gateway::images::Images::open_with(pool.clone(), &a.store.data()?, remote.as_ref())
                .await?;
        let key = gateway::server::manifest_key(&a.store.data()?)?;
        let audit = audit::store::Store::open(&url).await?;
        let pki = gateway::Pki::init(&a.store.data()?, &[])?;
        let rows = policy::PolicyStore::new(pool).await?.rows().await?;
        let text: String = rows.iter().map(|r| r.join(", ") + "\n").collect();
        let policy = policy::FastPolicy::compile(&policy::PolicyText::parse(&text)?);
        let answers = gateway::sync_bundle::import(
            &images,
            &key,
            &audit,
            &db,
            &pki.device_ca.cert_pem,
            &policy,
            &bytes,
        )
        .await
        .map_err(|e| super::Exit::new(1, e.to_string()))?;
        anyhow::Ok(answers)
    })?;
    for v in answers {
        println!(
            "{}: version {}, {} conflict(s), {} violation(s)",
            v["layer"].as_str().unwrap_or("?"),
            v["version"],
            v["conflicts"].as_array().map_or(0, Vec::len),
            v["violations"].as_array().map_or(0, Vec::len)
        );
    }
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway revoke --data ./gw --device-id laptop-17")]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The device to revoke.
    #[arg(long)]
    device_id: String,
}

fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = rt.block_on(async {
        let (db, url) = a.store.open().await?;
        let done = db.revoke(&a.device_id).await?;
        if done {
            audit_cli_action(&url, &a.device_id, "revoked", serde_json::Value::Null).await?;
        }
        anyhow::Ok(done)
    })?;
    anyhow::ensure!(done, "no enrolled, unrevoked device {:?}", a.device_id);
    println!("revoked {}", a.device_id);
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway revoke-admin --data ./gw --name alice

Every admin certificate issued to NAME before now is refused from the next request on,
on connections already open too (403); a certificate made for NAME afterwards works.")]
pub(crate) struct RevokeAdminArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The admin whose certificates to revoke (their CN).
    #[arg(long)]
    name: String,
}

fn revoke_admin(a: RevokeAdminArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (db, url) = a.store.open().await?;
        let at = db.revoke_admin(&a.name).await?;
        let subject = format!("admin:{}", a.name);
        audit_cli_action(
            &url,
            &subject,
            "revoked",
            serde_json::json!({"revoked_ms": at}),
        )
        .await
    })?;
    println!(
        "revoked the admin certificates of {} issued until now",
        a.name
    );
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway gc --gateway-config /etc/satchel/gateway.toml --dry-run
  satchel gateway gc --gateway-config /etc/satchel/gateway.toml --grace 7d

With --keep-versions N, layer versions past the newest N of each layer (and each
device's own user layers) are removed first, except pinned versions and any version a
device was last offered or last said it holds (its next check-in merges against it; a
pull in progress fetches it). Then every remaining version's manifest is verified and
its chunks kept; a chunk none references is removed once it is older than --grace (an
upload whose check-in may still come, or a build in progress, is younger); a chunk stored
again while the collection runs is kept. Safe while the gateway runs. Audited.")]
pub(crate) struct GcArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Keep unreferenced chunks written within this long.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    grace: std::time::Duration,
    /// Keep the newest N versions of each layer (and pinned and held ones);
    /// remove older ones [default: the configuration's `keep-versions`,
    /// else keep every version].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: Option<u64>,
    /// With a shared object store, allow a --grace under 2h. A build, an
    /// upload or a roll-back at any gateway writes again the objects it
    /// reuses only when they are an hour old, so a shorter grace may remove
    /// chunks one of them is about to name: only when nothing else runs.
    #[arg(long)]
    allow_short_grace: bool,
    /// Count what would be removed; remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the counts as JSON.
    #[arg(long)]
    json: bool,
}

fn gc(a: GcArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let data = a.store.data()?;
    let url = a.store.url()?;
    let c = rt.block_on(async {
        let (pool, _) = persist::db::connect(&url).await?;
        let remote = a.store.chunk_store()?;
        anyhow::ensure!(
            remote.is_none()
                || a.allow_short_grace
                || a.grace >= 2 * gateway::chunks::REFRESH_AFTER,
            "--grace {}: with a shared object store give at least 2h \
             (or --allow-short-grace, when no build, upload or roll-back runs meanwhile)",
            humantime::format_duration(a.grace)
        );
        let images = gateway::images::Images::open_with(pool, &data, remote.as_ref()).await?;
        let key = gateway::server::manifest_key(&data)?.verifying_key();
        let keep = a
            .keep_versions
            .or(a.store.file()?.keep_versions.filter(|k| *k > 0))
            .map(|k| usize::try_from(k).unwrap_or(usize::MAX));
        let c = images.collect(&key, a.grace, keep, a.dry_run).await?;
        if !a.dry_run {
            let details = serde_json::to_value(&c)?;
            audit_cli_action(&url, "chunks", "collected", details).await?;
        }
        anyhow::Ok(c)
    })?;
    if a.json {
        println!("{}", serde_json::to_value(&c)?);
    } else {
        for v in &c.versions_removed {
            println!(
                "version {v}: {}",
                if a.dry_run { "to remove" } else { "removed" }
            );
        }
        println!(
            "{} chunks: {} referenced, {} recent (younger than {}), {} {} ({} bytes)",
            c.chunks,
            c.referenced,
            c.recent,
            humantime::format_duration(a.grace),
            c.removed,
            if a.dry_run { "to remove" } else { "removed" },
            c.removed_bytes
        );
        if let Some(r) = &c.object_store {
            println!(
                "object store: {} chunks: {} referenced, {} recent, {} {} ({} bytes)",
                r.chunks,
                r.referenced,
                r.recent,
                r.removed,
                if a.dry_run { "to remove" } else { "removed" },
                r.removed_bytes
            );
        }
    }
    Ok(())
}

/// One audit entry for an admin action taken from this command line.
pub(crate) async fn audit_cli_action(
    url: &str,
    subject: &str,
    decision: &str,
    details: serde_json::Value,
) -> anyhow::Result<()> {
    let store = audit::store::Store::open(url).await?;
    let entry = audit::entry::NewEntry {
        kind: "admin".to_owned(),
        actor: "gateway-cli".to_owned(),
        subject: subject.to_owned(),
        decision: decision.to_owned(),
        details,
    };
    store.append(vec![entry], audit::batch::now_ms()).await?;
    Ok(())
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway enroll-token --data ./gw --device-id laptop-17 --groups group:class-7a
  satchel gateway enroll-token --data ./gw --device-id laptop-18 --ttl 1h

Prints the token (only its hash is stored). It works once, for this device id, until it expires.")]
pub(crate) struct TokenArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The device the token is for.
    #[arg(long)]
    device_id: String,
    /// Policy groups the device joins, comma-separated.
    #[arg(long, value_delimiter = ',')]
    groups: Vec<String>,
    /// How long the token stays valid.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: std::time::Duration,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway serve --data /var/lib/satchel-gateway
  satchel gateway serve --data ./gw --listen 127.0.0.1:8443 --proxy-listen 127.0.0.1:3128 \\
      --policy school.csv --ek-ca ./ek-ca --reference ref.json --reference-key org.key.pub
  satchel gateway serve --config /etc/satchel/gateway.toml
  satchel gateway serve --data /var/lib/satchel-gateway --listen 0.0.0.0:8443 \\
      --server-name gateway.school.example --server-name 10.1.2.3
  curl --cacert ./gw/ca.crt https://127.0.0.1:8443/v1/health

Every option can also come from the environment (SATCHEL_LISTEN, ...) or from the
TOML file given with --config (keys as the long flags: listen = \"127.0.0.1:8443\",
proxy-listen = ..., paths relative to the file). A flag beats the environment,
which beats the file.

On first start the data directory gets the gateway CA (ca.crt: clients pin it), the
server certificate, the device and admin CAs, the audit and manifest keys and the
SQLite database (see docs/gateway.md); later starts reuse them. SIGTERM or Ctrl-C
stops accepting, lets open requests finish (--drain) and exits.")]
pub(crate) struct ServeArgs {
    /// A TOML file with any of these options.
    #[arg(long, env = "SATCHEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// The data directory (created if missing).
    #[arg(long, env = "SATCHEL_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// The HTTPS address [default: 127.0.0.1:8443].
    #[arg(long, env = "SATCHEL_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The egress proxy's address (TLS, device certificates; no proxy without it).
    #[arg(long, env = "SATCHEL_PROXY_LISTEN", value_name = "ADDR")]
    proxy_listen: Option<SocketAddr>,
    /// The database [default: sqlite:DATA/satchel.db].
    #[arg(long, env = "SATCHEL_DB", value_name = "URL")]
    db: Option<String>,
    /// Policy lines put in force (and stored in the database) on start;
    /// without it the stored policy is used (empty: every request denied).
    #[arg(long, env = "SATCHEL_POLICY", value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Directory of trusted EK CA certificates (needed for enrollment).
    #[arg(long, env = "SATCHEL_EK_CA", value_name = "DIR")]
    ek_ca: Option<PathBuf>,
    /// A signed reference manifest put in force (and stored) on start;
    /// without it the stored one is used.
    #[arg(long, env = "SATCHEL_REFERENCE", value_name = "REF")]
    reference: Option<PathBuf>,
    /// The key references must be signed with (needed for attestation).
    #[arg(long, env = "SATCHEL_REFERENCE_KEY", value_name = "KEY.pub")]
    reference_key: Option<PathBuf>,
    /// How long device certificates live [default: 1h].
    #[arg(long, env = "SATCHEL_CERT_LIFETIME", value_parser = humantime::parse_duration)]
    cert_lifetime: Option<std::time::Duration>,
    /// How long shutdown waits for open requests [default: 10s].
    #[arg(long, env = "SATCHEL_DRAIN", value_parser = humantime::parse_duration)]
    drain: Option<std::time::Duration>,
    /// A DNS name or IP address clients reach the gateway by, for its server
    /// certificate (besides localhost, 127.0.0.1, ::1). Repeatable, or
    /// comma-separated.
    #[arg(
        long,
        env = "SATCHEL_SERVER_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    server_name: Vec<String>,
    /// Certificates (PEM) the proxy trusts for the HTTPS sites it
    /// intercepts, besides the system's roots (a site with a private CA).
    #[arg(long, env = "SATCHEL_UPSTREAM_CA", value_name = "FILE")]
    upstream_ca: Option<PathBuf>,
    /// Log every request as a JSON line to FILE (appended; `-`: standard
    /// error). Queries are left out; decisions are in the audit trail.
    #[arg(long, env = "SATCHEL_ACCESS_LOG", value_name = "FILE")]
    access_log: Option<PathBuf>,
    /// The most connections one client address may hold at once (API and
    /// proxy, TLS handshakes and tunnels included); the next is closed at
    /// once [default: 64]. Raise it for devices behind a NAT.
    #[arg(long, env = "SATCHEL_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_connections_per_address: Option<u32>,
    /// How often the audit log's checkpoint is signed [default: 1m]. With
    /// several gateways on one database, one signs at a time; the others
    /// ask for the signer's lease this often.
    #[arg(long, env = "SATCHEL_CHECKPOINT_EVERY", value_parser = humantime::parse_duration)]
    checkpoint_every: Option<std::time::Duration>,
    #[command(flatten)]
    chunks: ChunkStoreArgs,
}

/// The gateway's options from a file: one with a `[gateway]` table (the
/// one configuration, with its `conf.d` snippets), or a gateway-only file
/// (`gateway.toml`: the same keys at the top level).
fn load_gateway_file(path: &std::path::Path) -> anyhow::Result<ServeFile> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not a gateway configuration", path.display()))?;
    if table.contains_key("gateway") {
        crate::config::Layers::find(Some(path))?.gateway()
    } else {
        crate::config::Layers::of(vec![path.to_owned()]).gateway()
    }
}

/// The global `--config` (the one configuration), for the gateway commands.
static GLOBAL_CONFIG: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();

/// The `[gateway]` table of the one configuration (`--config`,
/// `$SATCHEL_CONFIG`, `/etc/satchel/satchel.toml` and its `conf.d`).
fn unified_gateway() -> anyhow::Result<ServeFile> {
    let flag = GLOBAL_CONFIG.get().cloned().flatten();
    match &flag {
        Some(p) => load_gateway_file(p),
        None => match std::env::var_os("SATCHEL_CONFIG") {
            Some(p) => load_gateway_file(std::path::Path::new(&p)),
            None => Ok(crate::config::Layers::find(None)?.config()?.gateway),
        },
    }
}

type ServeFile = crate::config::GatewayFile;

impl ServeArgs {
    /// Flags and environment, then the file, then the defaults.
    fn resolve(self) -> anyhow::Result<gateway::ServeConfig> {
        use anyhow::Context as _;
        let file = match &self.config {
            Some(path) => load_gateway_file(path)?,
            None => unified_gateway()?,
        };
        let duration = |flag: Option<std::time::Duration>,
                        text: Option<String>,
                        key: &str,
                        default: u64|
         -> anyhow::Result<std::time::Duration> {
            match (flag, text) {
                (Some(d), _) => Ok(d),
                (None, Some(t)) => humantime::parse_duration(&t)
                    .with_context(|| format!("{key} = {t:?} in the configuration")),
                (None, None) => Ok(std::time::Duration::from_secs(default)),
            }
        };
        let chunk_store = self.chunks.resolve(&file)?;
        let data = self.data.or(file.data).context(
            "no data directory: give --data DIR (or SATCHEL_DATA, or data = \"DIR\" in --config)",
        )?;
        let listen = self
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8443)));
        let mut c = gateway::ServeConfig::new(data, listen);
        c.chunk_store = chunk_store;
        c.proxy_listen = self.proxy_listen.or(file.proxy_listen);
        c.db = self.db.or(file.db);
        c.policy = self.policy.or(file.policy);
        c.ek_ca = self.ek_ca.or(file.ek_ca);
        c.reference = self.reference.or(file.reference);
        c.reference_key = self.reference_key.or(file.reference_key);
        c.upstream_ca = self.upstream_ca.or(file.upstream_ca);
        c.access_log = self.access_log.or(file.access_log);
        if let Some(n) = self
            .max_connections_per_address
            .or(file.max_connections_per_address)
        {
            anyhow::ensure!(
                (1..=1024).contains(&n),
                "max-connections-per-address = {n}: give 1 to 1024"
            );
            c.max_per_address = n as usize;
        }
        c.cert_lifetime = duration(
            self.cert_lifetime,
            file.cert_lifetime,
            "cert-lifetime",
            3600,
        )?;
        c.drain = duration(self.drain, file.drain, "drain", 10)?;
        c.checkpoint_every = duration(
            self.checkpoint_every,
            file.checkpoint_every.clone(),
            "checkpoint-every",
            60,
        )?;
        anyhow::ensure!(
            c.checkpoint_every >= std::time::Duration::from_millis(100),
            "checkpoint-every: give at least 100ms"
        );
        c.server_names = if self.server_name.is_empty() {
            file.server_names
        } else {
            self.server_name
        };
        anyhow::ensure!(
            c.reference.is_none() || c.reference_key.is_some(),
            "--reference needs --reference-key (the key it is signed with)"
        );
        Ok(c)
    }
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel gateway admin-cert --data ./gw --name alice --out-dir ./alice
  curl --cacert gw/ca.crt --cert alice/alice.crt --key alice/alice.key \\
      https://127.0.0.1:8443/v1/admin/devices

Writes DIR/NAME.crt and DIR/NAME.key (mode 0600), issued by the gateway's admin CA.
The holder may use the /v1/admin routes (docs/gateway.md); device routes refuse it.")]
pub(crate) struct AdminCertArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The admin's name (the certificate's CN; audit entries say admin:NAME).
    #[arg(long)]
    name: String,
    /// Where to write NAME.crt and NAME.key.
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
    /// How long the certificate is valid.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    lifetime: std::time::Duration,
}

fn admin_cert(a: AdminCertArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.name.is_empty()
            && a.name.len() <= 64
            && a.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c)),
        "--name must be 1-64 letters, digits or - _ . @"
    );
    let pki = gateway::Pki::init(&a.store.data()?, &[])?;
    let made = pki.issue_admin_cert(&a.name, a.lifetime)?;
    std::fs::create_dir_all(&a.out_dir)?;
    let crt = a.out_dir.join(format!("{}.crt", a.name));
    let key = a.out_dir.join(format!("{}.key", a.name));
    super::write_secret(&key, made.key_pem.as_bytes())?;
    super::write_atomic(&crt, made.cert_pem.as_bytes())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let store = audit::store::Store::open(&a.store.url()?).await?;
        store
            .append(
                vec![audit::entry::NewEntry {
                    kind: "admin".to_owned(),
                    actor: "gateway-cli".to_owned(),
                    subject: format!("admin:{}", a.name),
                    decision: "admin-cert".to_owned(),
                    details: serde_json::json!({"lifetime_s": a.lifetime.as_secs()}),
                }],
                audit::batch::now_ms(),
            )
            .await?;
        anyhow::Ok(())
    })?;
    println!("{}\n{}", crt.display(), key.display());
    Ok(())
}

pub(crate) fn run(cmd: GatewayCmd, config: Option<&std::path::Path>) -> anyhow::Result<()> {
    let _ = GLOBAL_CONFIG.set(config.map(std::path::Path::to_path_buf));
    match cmd {
        GatewayCmd::Serve(a) => serve(*a),
        GatewayCmd::EnrollToken(a) => token(a),
        GatewayCmd::Revoke(a) => revoke(a),
        GatewayCmd::AdminCert(a) => admin_cert(a),
        GatewayCmd::RevokeAdmin(a) => revoke_admin(a),
        GatewayCmd::ImportBundle(a) => import_bundle(a),
        GatewayCmd::Gc(a) => gc(a),
        GatewayCmd::ConsoleLink(a) => console_link(a),
    }
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt.block_on(async {
        let (db, url) = a.store.open().await?;
        anyhow::ensure!(
            protocol::admin::valid_device_id(&a.device_id),
            "--device-id {:?}: give 1-128 ASCII letters, digits, '-', '_', '.' or '@'",
            a.device_id
        );
        if let Some(g) = a.groups.iter().find(|g| !protocol::admin::valid_group(g)) {
            anyhow::bail!("--groups: {g:?} is no group name (printable ASCII, no spaces)");
        }
        let token = db.make_token(&a.device_id, &a.groups, a.ttl).await?;
        // The token itself never: only whom it admits, and for how long.
        let details = serde_json::json!({"groups": a.groups, "ttl_s": a.ttl.as_secs()});
        audit_cli_action(&url, &a.device_id, "enroll-token-issued", details).await?;
        anyhow::Ok(token)
    })?;
    println!("{token}");
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let config = a.resolve()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let g = gateway::Gateway::bind(&config).await?;
        eprintln!(
            "gateway listening on https://{} (clients pin {})",
            g.local_addr,
            config.data.join("ca.crt").display()
        );
        if let Some(p) = g.proxy_addr {
            eprintln!("egress proxy on https://{p}");
        }
        eprintln!(
            "web console on https://{}/console/ (sign in: satchel gateway console-link --name NAME)",
            g.local_addr
        );
        g.run(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {},
                _ = tokio::signal::ctrl_c() => {},
            }
        })
        .await;
        eprintln!("gateway stopped");
        anyhow::Ok(())
    })
}
