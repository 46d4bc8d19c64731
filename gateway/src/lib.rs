//! Satchel's branch-office gateway: the hyper + rustls server and its
//! client for enrollment, attestation, device certificates, the sync API,
//! the per-URL egress proxy and the admin routes.
//!
//! This is the only crate that serves the network; it never admits a device
//! whose quote did not verify. [`pki`] keeps the data directory's CAs and
//! keys; [`server`] is the mTLS server; [`routes`] the API by concern;
//! [`proxy`] the egress proxy and [`intercept`] its per-URL decisions
//! inside HTTPS; [`state`] the database tables. The device's side lives in
//! the `device` crate.

pub mod access;
pub mod app;
pub mod chunks;
pub mod console;
mod follow;
pub mod images;
pub mod intercept;
pub mod metrics;
pub mod nonces;
pub mod pki;
pub mod proxy;
pub mod reply;
pub mod routes;
pub mod server;
pub mod special;
pub mod state;
pub mod sync_bundle;

pub use pki::{DeviceCertRequest, Pki, PkiError};
pub use server::{DeviceIdentity, Gateway, Role, ServeConfig, ServeError};
