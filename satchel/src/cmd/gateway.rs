//! `satchel gateway serve`: the branch-office gateway's HTTPS server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

/// The gateway's data directory and database, for the admin commands.
#[derive(Debug, Args)]
pub(crate) struct StoreArgs {
    /// The data directory.
    #[arg(long, env = "SATCHEL_DATA", value_name = "DIR")]
    data: PathBuf,
    /// The database [default: sqlite:DATA/satchel.db].
    #[arg(long, env = "SATCHEL_DB", value_name = "URL")]
    db: Option<String>,
}

impl StoreArgs {
    /// The database URL, as `gateway serve` resolves it.
    fn url(&self) -> String {
        let mut c = gateway::ServeConfig::new(self.data.clone(), ([127, 0, 0, 1], 0).into());
        c.db = self.db.clone();
        c.db_url()
    }

    /// The device and token tables, and the database URL.
    async fn open(&self) -> anyhow::Result<(gateway::state::Db, String)> {
        let url = self.url();
        let (pool, _) = audit::store::connect(&url).await?;
        Ok((gateway::state::Db::new(pool).await?, url))
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCmd {
    /// Serve HTTPS with device certificates (mTLS).
    Serve(ServeArgs),
    /// Make a one-time enrollment token for a device.
    EnrollToken(TokenArgs),
    /// Revoke a device: its certificate stops working on its next request.
    Revoke(RevokeArgs),
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
            let store = audit::store::Store::open(&url).await?;
            store
                .append(
                    vec![audit::entry::NewEntry {
                        kind: "admin".to_owned(),
                        actor: "gateway-cli".to_owned(),
                        subject: a.device_id.clone(),
                        decision: "revoked".to_owned(),
                        details: serde_json::Value::Null,
                    }],
                    audit::batch::now_ms(),
                )
                .await?;
        }
        anyhow::Ok(done)
    })?;
    anyhow::ensure!(done, "no enrolled, unrevoked device {:?}", a.device_id);
    println!("revoked {}", a.device_id);
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
  satchel gateway serve --data ./gw --listen 127.0.0.1:8443
  curl --cacert ./gw/ca.crt https://127.0.0.1:8443/v1/health

On first start the data directory gets the gateway CA (ca.crt: clients pin it), the
server certificate and the device CA (see docs/gateway.md); later starts reuse them.
SIGTERM or Ctrl-C stops accepting and exits.")]
pub(crate) struct ServeArgs {
    /// The data directory (created if missing).
    #[arg(long, env = "SATCHEL_DATA", value_name = "DIR")]
    data: PathBuf,
    /// The HTTPS address.
    #[arg(long, env = "SATCHEL_LISTEN", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// The database [default: sqlite:DATA/satchel.db].
    #[arg(long, env = "SATCHEL_DB", value_name = "URL")]
    db: Option<String>,
    /// Directory of trusted EK CA certificates (needed for enrollment).
    #[arg(long, env = "SATCHEL_EK_CA", value_name = "DIR")]
    ek_ca: Option<PathBuf>,
    /// The signed reference manifest devices must match (needed for attestation).
    #[arg(
        long,
        env = "SATCHEL_REFERENCE",
        value_name = "REF",
        requires = "reference_key"
    )]
    reference: Option<PathBuf>,
    /// The key the reference is signed with.
    #[arg(
        long,
        env = "SATCHEL_REFERENCE_KEY",
        value_name = "KEY.pub",
        requires = "reference"
    )]
    reference_key: Option<PathBuf>,
    /// How long device certificates live.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    cert_lifetime: std::time::Duration,
}

pub(crate) fn run(cmd: GatewayCmd) -> anyhow::Result<()> {
    match cmd {
        GatewayCmd::Serve(a) => serve(a),
        GatewayCmd::EnrollToken(a) => token(a),
        GatewayCmd::Revoke(a) => revoke(a),
    }
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let token = rt.block_on(async {
        let (db, _) = a.store.open().await?;
        anyhow::Ok(db.make_token(&a.device_id, &a.groups, a.ttl).await?)
    })?;
    println!("{token}");
    Ok(())
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut config = gateway::ServeConfig::new(a.data.clone(), a.listen);
        config.db = a.db.clone();
        config.ek_ca = a.ek_ca.clone();
        config.reference = a.reference.clone().zip(a.reference_key.clone());
        config.cert_lifetime = a.cert_lifetime;
        let g = gateway::Gateway::bind(&config).await?;
        eprintln!(
            "gateway listening on https://{} (clients pin {})",
            g.local_addr,
            a.data.join("ca.crt").display()
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
