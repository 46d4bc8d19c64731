//! Enrollment (`POST /v1/enroll`, then `POST /v1/enroll/finish`): the
//! device sends its one-time token, its EK certificate and a fresh AK; the
//! gateway checks the token and the EK chain, and answers with a credential
//! only the TPM holding that EK and that AK can open (MakeCredential). The
//! device is registered when it sends the secret back. Every outcome is an
//! audit entry.

use attest::tpm2::{AkPublic, PublicKey};
use base64::Engine as _;
use rand_core::RngCore as _;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::app::AppState;
use crate::reply::{bad, internal, ok, parse, refuse, Reply};
use crate::state::{Challenge, Device};
use protocol::enroll as wire;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn b64(s: &str, what: &str) -> Result<Vec<u8>, Reply> {
    B64.decode(s.as_bytes())
        .map_err(|_| bad(format!("{what} is not base64")))
}

impl AppState {
    /// `POST /v1/enroll`.
    pub async fn enroll(&self, body: &[u8]) -> Reply {
        let r: wire::EnrollRequest = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let refused = |detail: String| refuse(403, "enrollment refused", detail, Value::Null);
        // Checked before anything is recorded: an unenrolled caller names
        // no actor (it could name itself `admin:alice`) and fills no entry
        // with megabytes.
        if !protocol::admin::valid_device_id(&r.device_id) {
            return bad("device_id must be 1-128 ASCII letters, digits, '-', '_', '.' or '@'");
        }
        let token = match self.db.check_token(&r.token).await {
            Ok(Some(t)) if t.device_id == r.device_id => t,
            Ok(_) => {
                self.record(
                    "enrollment",
                    "anonymous",
                    &r.device_id,
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
                    "anonymous",
                    &r.device_id,
                    "refused",
                    json!({"reason": e.to_string(), "check": "ek"}),
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
        let challenge = Challenge {
            token_hash: crate::state::token_hash(&r.token),
            device: Device {
                device_id: r.device_id,
                groups: token.groups,
                ak_pem: r.ak_pem,
                enrolled_ms: audit::batch::now_ms(),
                revoked_ms: None,
            },
            secret_hash: sha2::Sha256::digest(&secret).into(),
            expires_ms: audit::batch::now_ms() + 300_000,
        };
        let challenge = match self.challenges.put(&challenge).await {
            Ok(id) => id,
            Err(e) => return internal(&e),
        };
        ok(wire::Challenge {
            challenge,
            id_object: B64.encode(&made.id_object),
            encrypted_secret: B64.encode(&made.encrypted_secret),
        })
    }

    /// `POST /v1/enroll/finish`.
    pub async fn enroll_finish(&self, body: &[u8]) -> Reply {
        let r: wire::FinishRequest = match parse(body) {
            Ok(r) => r,
            Err(a) => return a,
        };
        let c = match self.challenges.take(&r.challenge).await {
            Ok(Some(c)) => c,
            Ok(None) => {
                return refuse(
                    403,
                    "enrollment refused",
                    "unknown or expired challenge",
                    Value::Null,
                )
            }
            Err(e) => return internal(&e),
        };
        let secret = match b64(&r.secret, "secret") {
            Ok(s) => s,
            Err(a) => return a,
        };
        let id = c.device.device_id.clone();
        let answered: [u8; 32] = sha2::Sha256::digest(&secret).into();
        if !constant_time_eq(&answered, &c.secret_hash) {
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
        match self.db.enroll_hashed(&c.token_hash, &c.device).await {
            Ok(true) => {
                self.record(
                    "enrollment",
                    &id,
                    "device",
                    "enrolled",
                    json!({"groups": c.device.groups}),
                )
                .await;
                ok(wire::Enrolled {
                    device_id: id,
                    groups: c.device.groups,
                })
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
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
