//! The wire protocol between a device and its gateway, typed once: the
//! path of every `/v1/` route ([`paths`]), the request and answer bodies of
//! each ([`enroll`], [`attest`], [`sync`], [`agent`], [`admin`]), the
//! problem body every refusal carries ([`problem`]), the limits both sides
//! hold to ([`limits`]), and the texts device and gateway must produce byte
//! for byte ([`stages`], the offline [`bundle`]).
//!
//! The device (`device` crate) and the gateway (`gateway` crate) both
//! depend on this crate and on nothing of each other. Bodies are JSON;
//! requests refuse unknown fields. This crate does no I/O.

pub mod admin;
pub mod agent;
pub mod attest;
pub mod audit;
pub mod bundle;
pub mod certificate;
pub mod enroll;
pub mod limits;
pub mod paths;
pub mod problem;
pub mod stages;
pub mod sync;

pub use problem::Problem;
