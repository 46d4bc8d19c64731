//! Satchel's branch-office gateway: the hyper + rustls server and its
//! client for enrollment, attestation, device certificates, the sync API,
//! the per-URL egress proxy and the admin routes.
//!
//! This is the only crate that serves the network; it never admits a device
//! whose quote did not verify. Today it holds the data directory's PKI
//! ([`pki`]) and the mTLS server with its first routes ([`server`]);
//! enrollment, attestation, the proxy and the admin routes are still to
//! come.

pub mod api;
pub mod client;
pub mod pki;
pub mod server;
pub mod state;

pub use client::{ClientError, GatewayClient};
pub use pki::{DeviceCertRequest, Pki, PkiError};
pub use server::{DeviceIdentity, Gateway, ServeConfig, ServeError};
