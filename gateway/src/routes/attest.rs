//! Attestation (`POST /v1/attest/nonce`, then `POST /v1/attest`): the
//! device quotes the PCRs the reference names over a fresh nonce and sends
//! the evidence with a CSR; if the evidence verifies against the reference,
//! with the device's enrolled AK, the gateway issues a short-lived device
//! certificate bound to this attestation. Every outcome is an audit entry.

use attest::evidence::Evidence;
use attest::tpm2::PublicKey;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::pki::DeviceCertRequest;
use crate::reply::{bad, internal, ok, parse, refuse, Reply};
use crate::state::Device;
use protocol::attest::{AttestRequest, Attested, Nonce, NonceRequest};

impl AppState {
    async fn enrolled(&self, device_id: &str) -> Result<Device, Reply> {
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
    pub async fn nonce(&self, body: &[u8], peer: std::net::IpAddr) -> Reply {
        let r: NonceRequest = match parse(body) {
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
        let n = match self.nonces.issue(&r.device_id, peer).await {
            Ok(n) => n,
            Err(e) => {
                self.record(
                    "attestation",
                    &r.device_id,
                    "nonce",
                    "refused",
                    json!({"reason": e.to_string(), "peer": peer.to_string()}),
                )
                .await;
                let status = if matches!(
                    e,
                    crate::nonces::Refusal::Full | crate::nonces::Refusal::Unavailable
                ) {
                    503
                } else {
                    429
                };
                return refuse(status, "no nonce", e.to_string(), Value::Null);
            }
        };
        let pcrs: Vec<u32> = reference.pcrs.keys().copied().collect();
        ok(Nonce {
            nonce: hex::encode(n),
            pcrs,
            banks: vec!["sha256".to_owned()],
        })
    }

    /// `POST /v1/attest`: verify, then issue a device certificate.
    pub async fn attest(&self, body: &[u8]) -> Reply {
        let r: AttestRequest = match parse(body) {
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
            Err(e) => return bad(format!("evidence: {e}")),
        };
        let csr = match rcgen::CertificateSigningRequestParams::from_pem(&r.csr) {
            Ok(c) => c,
            Err(e) => return bad(format!("csr: {e}")),
        };
        let nonce_problem = match self.nonces.take(&evidence.nonce, &r.device_id).await {
            Ok(()) => None,
            Err(crate::nonces::Spent::Stale) => {
                Some("the nonce is unknown, expired or already used (a replayed quote)")
            }
            Err(_) => Some("the nonce was issued to another device"),
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
        ok(Attested {
            certificate: cert,
            attestation: attestation_id,
            expires_in_s: self.cert_lifetime.as_secs(),
        })
    }
}
