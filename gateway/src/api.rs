//! The enrollment and attestation routes.
//!
//! Enrollment (`POST /v1/enroll`, then `POST /v1/enroll/finish`): the
//! device sends its one-time token, its EK certificate and a fresh AK; the
//! gateway checks the token and the EK chain, and answers with a credential
//! only the TPM holding that EK and that AK can open (MakeCredential). The
//! device is registered when it sends the secret back.
//!
//! Attestation (`POST /v1/attest/nonce`, then `POST /v1/attest`): the
//! device quotes the PCRs the reference names over a fresh nonce and sends
//! the evidence with a CSR; if the evidence verifies against the reference,
//! with the device's enrolled AK, the gateway issues a short-lived device
//! certificate bound to this attestation. Every outcome is an audit entry.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use attest::ekcert::CaSet;
use attest::evidence::Evidence;
use attest::tpm2::{AkPublic, PublicKey};
use attest::verify::Nonces;
use attest::Reference;
use base64::Engine as _;
use policy::FastPolicy;
use rand_core::RngCore as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::pki::{DeviceCertRequest, Pki};
use crate::server::{DeviceIdentity, Role};
use crate::state::{Challenge, Challenges, Db, Device};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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
    /// Issued nonces.
    pub nonces: Mutex<Nonces>,
    /// Which device each outstanding nonce was issued to.
    pub nonce_owners: Mutex<std::collections::HashMap<[u8; 32], String>>,
    /// How long a client may take to send a request body.
    pub body_timeout: Duration,
    /// Layer versions and the chunk store.
    pub images: crate::images::Images,
    /// The key layer manifests are signed with.
    pub manifest_key: ed25519_dalek::SigningKey,
    /// One agent spool delivery at a time (see [`crate::agent_api`]).
    pub spool_lock: tokio::sync::Mutex<()>,
}

/// Most outstanding nonces remembered per gateway (oldest forgotten first by
/// the window; this map is cleared when it grows past this).
const MAX_NONCE_OWNERS: usize = 100_000;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

/// A route's answer: a status and a JSON body (problem+json for errors).
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

fn ok(body: Value) -> Answer {
    Answer { status: 200, body }
}

/// A refusal: the title says what, the detail why; `extra` fields join them.
pub fn refuse(status: u16, title: &str, detail: impl Into<String>, extra: Value) -> Answer {
    let mut body =
        json!({"type": "about:blank", "title": title, "status": status, "detail": detail.into()});
    if let (Some(b), Value::Object(x)) = (body.as_object_mut(), extra) {
        b.extend(x);
    }
    Answer { status, body }
}

/// A 500 whose body says nothing of the cause; the cause goes to the log.
fn internal(e: &dyn std::fmt::Display) -> Answer {
    tracing::error!(error = %e, "request failed");
    refuse(
        500,
        "internal error",
        "the gateway could not complete the request; its log says why",
        Value::Null,
    )
}

fn bad_request(detail: impl Into<String>) -> Answer {
    refuse(400, "bad request", detail, Value::Null)
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Answer> {
    serde_json::from_slice(body).map_err(|e| bad_request(format!("not the expected JSON: {e}")))
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>, Answer> {
    B64.decode(s.as_bytes())
        .map_err(|_| bad_request(format!("{what} is not base64")))
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
    pub async fn authorize_device(&self, who: Option<&DeviceIdentity>) -> Result<Device, Answer> {
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
        let entry = audit::entry::NewEntry {
            kind: kind.to_owned(),
            actor: actor.to_owned(),
            subject: subject.to_owned(),
            decision: decision.to_owned(),
            details,
        };
        if let Err(e) = self.audit.append(vec![entry], audit::batch::now_ms()).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }

    /// `POST /v1/enroll`.
    pub async fn enroll(&self, body: &[u8]) -> Answer {
        #[derive(Deserialize)]
        struct Req {
            device_id: String,
            token: String,
            ek_cert: String,
            ak_pem: String,
            ak_public: String,
        }
        let r: Req = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let refused = |detail: String| refuse(403, "enrollment refused", detail, Value::Null);
        let token = match self.db.check_token(&r.token).await {
            Ok(Some(t)) if t.device_id == r.device_id => t,
            Ok(_) => {
                self.record(
                    "enrollment",
                    &r.device_id,
                    "token",
                    "refused",
                    json!({"reason": "unknown, used, expired or another device's token"}),
                )
                .await;
                return refused(
                    "the token is unknown, used, expired or for another device".to_owned(),
                );
            }
            Err(e) => return internal(&e),
        };
        let Some(cas) = &self.ek_cas else {
            return refuse(
                503,
                "enrollment unavailable",
                "the gateway has no EK CA set (--ek-ca)",
                Value::Null,
            );
        };
        let ek_der = match b64(&r.ek_cert, "ek_cert") {
            Ok(d) => d,
            Err(a) => return a,
        };
        let ek = match cas.check(&ek_der) {
            Ok(ek) => ek,
            Err(e) => {
                self.record(
                    "enrollment",
                    &r.device_id,
                    "ek",
                    "refused",
                    json!({"reason": e.to_string()}),
                )
                .await;
                return refused(format!("EK certificate: {e}"));
            }
        };
        let ak_public = match b64(&r.ak_public, "ak_public").map(|b| AkPublic::parse_tpm2b(&b)) {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return refused(format!("AK: {e}")),
            Err(a) => return a,
        };
        if let Some(problem) = ak_public.attestation_problem() {
            return refused(format!("AK: {problem}"));
        }
        if PublicKey::from_pem(&r.ak_pem).ok().as_ref() != Some(&ak_public.key) {
            return refused("AK: ak_pem and ak_public are different keys".to_owned());
        }
        let mut secret = vec![0u8; 32];
        rand_core::OsRng.fill_bytes(&mut secret);
        let made = match attest::credential::make_credential(&ek.n, &ek.e, &ak_public.name, &secret)
        {
            Ok(m) => m,
            Err(e) => return refused(format!("credential: {e}")),
        };
        let challenge = self.challenges.put(Challenge {
            token: r.token,
            device: Device {
                device_id: r.device_id,
                groups: token.groups,
                ak_pem: r.ak_pem,
                enrolled_ms: audit::batch::now_ms(),
                revoked_ms: None,
            },
            secret,
            expires: Instant::now() + Duration::from_secs(300),
        });
        ok(json!({
            "challenge": challenge,
            "id_object": B64.encode(&made.id_object),
            "encrypted_secret": B64.encode(&made.encrypted_secret),
        }))
    }

    /// `POST /v1/enroll/finish`.
    pub async fn enroll_finish(&self, body: &[u8]) -> Answer {
        #[derive(Deserialize)]
        struct Req {
            challenge: String,
            secret: String,
        }
        let r: Req = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let Some(c) = self.challenges.take(&r.challenge) else {
            return refuse(
                403,
                "enrollment refused",
                "unknown or expired challenge",
                Value::Null,
            );
        };
        let secret = match b64(&r.secret, "secret") {
            Ok(s) => s,
            Err(a) => return a,
        };
        let id = c.device.device_id.clone();
        if !constant_time_eq(&secret, &c.secret) {
            self.record(
                "enrollment",
                &id,
                "credential",
                "refused",
                json!({"reason": "the AK is not in the TPM that holds the EK"}),
            )
            .await;
            return refuse(
                403,
                "enrollment refused",
                "the credential was not activated by the TPM holding this EK and AK",
                Value::Null,
            );
        }
        match self.db.enroll(&c.token, &c.device).await {
            Ok(true) => {
                self.record(
                    "enrollment",
                    &id,
                    "device",
                    "enrolled",
                    json!({"groups": c.device.groups}),
                )
                .await;
                ok(json!({"device_id": id, "groups": c.device.groups}))
            }
            Ok(false) => refuse(
                403,
                "enrollment refused",
                "the token was used meanwhile",
                Value::Null,
            ),
            Err(e) => internal(&e),
        }
    }

    async fn enrolled(&self, device_id: &str) -> Result<Device, Answer> {
        match self.db.device(device_id).await {
            Ok(Some(d)) if d.revoked_ms.is_none() => Ok(d),
            Ok(Some(_)) => Err(refuse(
                403,
                "revoked",
                "this device has been revoked",
                Value::Null,
            )),
            Ok(None) => Err(refuse(404, "unknown device", "enroll first", Value::Null)),
            Err(e) => Err(internal(&e)),
        }
    }

    /// `POST /v1/attest/nonce`: a nonce, and what to quote.
    pub async fn nonce(&self, body: &[u8]) -> Answer {
        #[derive(Deserialize)]
        struct Req {
            device_id: String,
        }
        let r: Req = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        if let Err(a) = self.enrolled(&r.device_id).await {
            return a;
        }
        let Some(reference) = self.reference() else {
            return refuse(
                503,
                "attestation unavailable",
                "the gateway has no reference manifest (--reference)",
                Value::Null,
            );
        };
        let Ok(mut nonces) = self.nonces.lock() else {
            return refuse(
                500,
                "internal error",
                "nonce window unavailable",
                Value::Null,
            );
        };
        let n = nonces.issue();
        drop(nonces);
        if let Ok(mut owners) = self.nonce_owners.lock() {
            if owners.len() >= MAX_NONCE_OWNERS {
                owners.clear();
            }
            owners.insert(n, r.device_id.clone());
        }
        let pcrs: Vec<u32> = reference.pcrs.keys().copied().collect();
        ok(json!({"nonce": hex::encode(n), "pcrs": pcrs, "banks": ["sha256"]}))
    }

    /// `POST /v1/attest`: verify, then issue a device certificate.
    pub async fn attest(&self, body: &[u8]) -> Answer {
        #[derive(Deserialize)]
        struct Req {
            device_id: String,
            evidence: Value,
            csr: String,
        }
        let r: Req = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let device = match self.enrolled(&r.device_id).await {
            Ok(d) => d,
            Err(a) => return a,
        };
        let Some(reference) = self.reference() else {
            return refuse(
                503,
                "attestation unavailable",
                "the gateway has no reference manifest",
                Value::Null,
            );
        };
        let evidence = match Evidence::from_json(r.evidence.to_string().as_bytes()) {
            Ok(e) => e,
            Err(e) => return bad_request(format!("evidence: {e}")),
        };
        let csr = match rcgen::CertificateSigningRequestParams::from_pem(&r.csr) {
            Ok(c) => c,
            Err(e) => return bad_request(format!("csr: {e}")),
        };
        let owner = <[u8; 32]>::try_from(evidence.nonce.as_slice())
            .ok()
            .and_then(|n| self.nonce_owners.lock().ok()?.remove(&n));
        let fresh = match self.nonces.lock() {
            Ok(mut n) => n.consume(&evidence.nonce).is_ok(),
            Err(_) => false,
        };
        let nonce_problem = if !fresh {
            Some("the nonce is unknown, expired or already used (a replayed quote)")
        } else if owner.as_deref() != Some(r.device_id.as_str()) {
            Some("the nonce was issued to another device")
        } else {
            None
        };
        let pinned = PublicKey::from_pem(&device.ak_pem).ok();
        let verdict = attest::verify(&evidence, &reference, &evidence.nonce, pinned.as_ref());
        let mut failures: Vec<Value> = verdict
            .failures
            .iter()
            .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
            .collect();
        if let Some(p) = nonce_problem {
            failures.push(json!({"check": "nonce", "message": p}));
        }
        if !failures.is_empty() {
            self.record(
                "attestation",
                &r.device_id,
                &reference.name,
                "not-trusted",
                json!({"failures": failures}),
            )
            .await;
            return refuse(
                403,
                "not trusted",
                "the evidence does not match the reference",
                json!({"failures": failures}),
            );
        }
        let at = audit::batch::now_ms();
        let attestation_id = format!("{}-{at}", r.device_id);
        let cert = match self.pki.issue_device_cert(&DeviceCertRequest {
            device_id: &r.device_id,
            public_key: &csr.public_key,
            lifetime: self.cert_lifetime,
            attestation_id: &attestation_id,
            attested_at_ms: at,
        }) {
            Ok(c) => c,
            Err(e) => return internal(&e),
        };
        self.record("attestation", &r.device_id, &reference.name, "trusted", json!({"attestation": attestation_id, "certificate_lifetime_s": self.cert_lifetime.as_secs()})).await;
        ok(json!({
            "certificate": cert,
            "attestation": attestation_id,
            "expires_in_s": self.cert_lifetime.as_secs(),
        }))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
