//! The application state every route shares: keys and certificates, the
//! database tables, the audit log, the reference and policy in force, the
//! enrollment challenges and attestation nonces, images and the manifest
//! key; and the checks every device route makes first (is this
//! certificate's device still admitted?).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use attest::ekcert::CaSet;
use attest::Reference;
use policy::FastPolicy;
use serde_json::Value;

use crate::pki::Pki;
use crate::reply::{refuse, Reply};
use crate::server::{DeviceIdentity, Role};
use crate::state::{Challenges, Db, Device};

/// Everything the routes share.
pub struct AppState {
    /// Keys and certificates.
    pub pki: Pki,
    /// Tokens and devices.
    pub db: Db,
    /// The audit trail.
    pub audit: audit::store::Store,
    /// Trusted EK CAs (enrollment is refused without them).
    pub ek_cas: Option<CaSet>,
    /// The reference devices must match (attestation is refused without
    /// one); replaced through the admin routes.
    pub reference: RwLock<Option<Arc<Reference>>>,
    /// The key references must be signed with.
    pub reference_key: Option<ed25519_dalek::VerifyingKey>,
    /// The egress policy; replaced through the admin routes.
    pub policy: RwLock<Arc<FastPolicy>>,
    /// The policy lines in force, as written.
    pub policy_source: RwLock<String>,
    /// Where the policy is stored.
    pub policy_store: policy::PolicyStore,
    /// How long device certificates live, and how old an attestation may be
    /// for its certificate to be honoured.
    pub cert_lifetime: Duration,
    /// Pending enrollments.
    pub challenges: Challenges,
    /// Issued nonces, each for one device.
    pub nonces: crate::nonces::NonceBook,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// Layer versions and the chunk store.
    pub images: crate::images::Images,
    /// The data directory (the images' boot stages are written under it).
    pub data: std::path::PathBuf,
    /// The key layer manifests are signed with.
    pub manifest_key: ed25519_dalek::SigningKey,
    /// The open proxy tunnels of each device.
    pub tunnels: crate::proxy::TunnelCounts,
    /// A tunnel through which nothing moved this long is closed.
    pub tunnel_idle: std::time::Duration,
    /// No tunnel lives longer than this.
    pub tunnel_max: std::time::Duration,
    /// The audit signer's last checkpoint and alarm.
    pub audit_view: audit::signer::SignerView,
    /// The audit key as a C2SP verifier key (`origin+id+key`).
    pub audit_vkey: String,
    /// The access log, if configured.
    pub access_log: Option<crate::access::AccessLog>,
    /// Prometheus metrics (`GET /v1/admin/metrics`).
    pub metrics: crate::metrics::Metrics,
    /// HTTPS interception: site certificates and the upstream TLS client.
    pub intercept: crate::intercept::Intercept,
    /// One agent spool delivery at a time (see [`crate::routes::agent`]).
    pub spool_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// The egress policy in force.
    pub fn policy(&self) -> Arc<FastPolicy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Put a policy in force.
    pub fn set_policy(&self, text: &policy::PolicyText, source: String) {
        let compiled = Arc::new(FastPolicy::compile(text));
        match self.policy.write() {
            Ok(mut p) => *p = compiled,
            Err(p) => *p.into_inner() = compiled,
        }
        match self.policy_source.write() {
            Ok(mut p) => *p = source,
            Err(p) => *p.into_inner() = source,
        }
    }

    /// The policy lines in force.
    pub fn policy_text(&self) -> String {
        match self.policy_source.read() {
            Ok(p) => p.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The reference in force.
    pub fn reference(&self) -> Option<Arc<Reference>> {
        match self.reference.read() {
            Ok(r) => r.clone(),
            Err(r) => r.into_inner().clone(),
        }
    }

    /// The device behind a connection, if its certificate is honoured now:
    /// a device certificate (not an admin one) for an enrolled, unrevoked
    /// device, issued for an attestation made after the device enrolled and
    /// no older than the certificate lifetime. Asked on every request, so a
    /// revocation takes effect on the next one.
    pub async fn authorize_device(&self, who: Option<&DeviceIdentity>) -> Result<Device, Reply> {
        let Some(who) = who else {
            return Err(refuse(
                401,
                "device certificate required",
                "this route needs a device certificate issued by this gateway after an attestation",
                Value::Null,
            ));
        };
        if who.role != Role::Device {
            return Err(refuse(
                403,
                "not a device",
                "this route is for devices; admin certificates are for /v1/admin routes",
                Value::Null,
            ));
        }
        let device = match self.db.device(&who.device_id).await {
            Ok(Some(d)) if d.revoked_ms.is_none() => d,
            Ok(_) => {
                return Err(refuse(
                    403,
                    "not enrolled",
                    "this device is not enrolled or was revoked",
                    Value::Null,
                ))
            }
            Err(_) => {
                return Err(refuse(
                    500,
                    "internal error",
                    "the device table is unavailable",
                    Value::Null,
                ))
            }
        };
        let Some(at) = who.attested_at_ms else {
            return Err(refuse(
                403,
                "no attestation",
                "the certificate is not bound to an attestation",
                Value::Null,
            ));
        };
        let max_age = i64::try_from(self.cert_lifetime.as_millis()).unwrap_or(i64::MAX);
        if audit::batch::now_ms().saturating_sub(at) > max_age {
            return Err(refuse(
                403,
                "stale attestation",
                "the attestation behind this certificate is too old; attest again",
                Value::Null,
            ));
        }
        if at < device.enrolled_ms {
            return Err(refuse(
                403,
                "stale certificate",
                "the certificate predates the device's current enrollment",
                Value::Null,
            ));
        }
        Ok(device)
    }

    /// Whether a device is still enrolled and unrevoked (open tunnels ask).
    pub async fn still_admitted(&self, device_id: &str) -> bool {
        matches!(self.db.device(device_id).await, Ok(Some(d)) if d.revoked_ms.is_none())
    }

    /// Append one audit entry; its batch is durable when this returns.
    pub async fn record(
        &self,
        kind: &str,
        actor: &str,
        subject: &str,
        decision: &str,
        details: Value,
    ) {
        let t = std::time::Instant::now();
        record(&self.audit, kind, actor, subject, decision, details).await;
        self.metrics.audited(kind, decision, t.elapsed());
    }
}

/// Append one audit entry to `audit`; its batch is durable when this
/// returns. A failure is logged (the request it records still answers).
pub async fn record(
    audit: &audit::store::Store,
    kind: &str,
    actor: &str,
    subject: &str,
    decision: &str,
    details: Value,
) {
    let entry = audit::entry::NewEntry {
        kind: kind.to_owned(),
        actor: actor.to_owned(),
        subject: subject.to_owned(),
        decision: decision.to_owned(),
        details,
    };
    if let Err(e) = audit.append(vec![entry], audit::batch::now_ms()).await {
        tracing::error!(error = %e, "audit append failed");
    }
}
