//! The device's local door to the gateway's egress proxy, for programs that
//! cannot present the device certificate themselves (a browser).
//!
//! `satchel client proxy` listens on a loopback address and carries each
//! connection, byte for byte, inside its own mTLS connection to the
//! gateway's proxy port, made with the device certificate (read again for
//! every connection, so a renewed certificate is used from the next one).
//! The program speaks the ordinary proxy protocol to it (`CONNECT host:443`,
//! or absolute-form HTTP): every decision, and the TLS interception for
//! per-URL rules, is the gateway's. The relay adds nothing and decides
//! nothing; it only lends the device's identity to local programs, which is
//! why it listens on loopback only.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

use crate::identity::GatewayConfig;

/// Why the relay could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// Not a loopback address: the relay would lend the device's identity
    /// to the network.
    #[error("{0} is not a loopback address: the relay lends this device's certificate to whoever connects, so it listens on 127.0.0.1 or ::1 only")]
    NotLoopback(SocketAddr),
    /// The address cannot be bound.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The device certificate, key or CA cannot be read.
    #[error(transparent)]
    Identity(#[from] crate::IdentityError),
}

/// Bind the relay's address (loopback only).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, RelayError> {
    if !addr.ip().is_loopback() {
        return Err(RelayError::NotLoopback(addr));
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| RelayError::Listen { addr, source })
}

/// Carry every connection on `listener` to the gateway's proxy (`gw.url`),
/// until the task is dropped. Checks once that the device's certificate can
/// be read, so a device that never attested gets its error at start.
pub async fn serve(listener: TcpListener, gw: GatewayConfig) -> Result<(), RelayError> {
    gw.device_client()?;
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a local connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            if let Err(e) = carry(tcp, &gw).await {
                tracing::info!(%peer, error = %e, "relayed connection ended");
            }
        });
    }
}

/// One local connection, inside one mTLS connection to the gateway.
async fn carry(mut local: TcpStream, gw: &GatewayConfig) -> Result<(), String> {
    let client = gw.device_client().map_err(|e| e.to_string())?;
    let mut remote = client.connect().await.map_err(|e| e.to_string())?;
    tokio::io::copy_bidirectional(&mut local, &mut remote)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}
