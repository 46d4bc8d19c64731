//! Satchel's branch-office gateway: the hyper + rustls server and its
//! client for enrollment, attestation, device certificates, the sync API,
//! the per-URL egress proxy and the admin routes.
//!
//! This is the only crate that serves the network; it never admits a device
//! whose quote did not verify. Its server arrives in a later issue; today it
//! only reserves its place in the workspace.
