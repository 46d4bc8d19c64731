//! `satchel gateway serve`: the branch-office gateway's HTTPS server.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub(crate) enum GatewayCmd {
    /// Serve HTTPS with device certificates (mTLS).
    Serve(ServeArgs),
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
}

pub(crate) fn run(cmd: GatewayCmd) -> anyhow::Result<()> {
    match cmd {
        GatewayCmd::Serve(a) => serve(a),
    }
}

fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = gateway::ServeConfig {
            data: a.data.clone(),
            listen: a.listen,
        };
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
