//! A secret sealed to the organisation's policy key instead of to PCR
//! values (TPM2_PolicyAuthorize): any PCR policy the key signs unseals it.
//! An image update that changes the boot chain then needs a newly signed
//! policy for the new values, not a new sealing, and the device keeps its
//! disk key.
//!
//! - The sealed object's policy is `PolicyAuthorize(keyName, "")`:
//!   `H(H(0³² ‖ TPM_CC_PolicyAuthorize ‖ keyName) ‖ "")`, computed by the
//!   TPM's own trial session.
//! - A signed policy names PCR values; its *approved* digest is that of
//!   `TPM2_PolicyPCR` over them: `H(0³² ‖ TPM_CC_PolicyPCR ‖
//!   TPML_PCR_SELECTION ‖ H(values in index order))`. The key signs
//!   `H(approved ‖ "")` (ECDSA P-256: the TPM verifies no ed25519).
//! - Unsealing: the TPM checks the signature (`TPM2_VerifySignature`, the
//!   key loaded public-only in the owner hierarchy so the ticket counts),
//!   a policy session runs `PolicyPCR` on the live values, then
//!   `PolicyAuthorize` turns the session's digest into the sealed one only
//!   if it equals the signed one.
//!
//! Revoking an older signed policy after an update needs `TPM2_PolicyNV` or
//! `TPM2_PolicyAuthorizeNV`, which tss-esapi 7 does not offer: until then a
//! policy signed for an older image stays valid on a device that boots that
//! image (see docs/launch.md).

use std::collections::BTreeMap;

use p256::ecdsa::signature::hazmat::{PrehashSigner as _, PrehashVerifier as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_VERIFIED};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, EccSignature, HashScheme, Name, Nonce,
    PublicBuilder, PublicEccParametersBuilder, Signature, VerifiedTicket,
};
use tss_esapi::tss2_esys::TPMT_TK_VERIFIED;

use super::keys::{is_policy_fail, session_object};
use super::{command, malformed, selection_list, Tpm, TpmError};
use crate::alg::HashAlg;

/// TPM_RC_VALUE: a parameter's value is wrong (for PolicyAuthorize: the
/// session's digest is not the approved one).
fn is_value_error(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(tss_esapi::constants::Tss2ResponseCodeKind::Value))
}

/// `TPM_CC_PolicyPCR`.
const CC_POLICY_PCR: u32 = 0x0000_017F;

/// A secret sealed to a policy key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedSealed {
    /// Always `satchel-sealed-authorized-v1`.
    pub format: String,
    /// The TPM name of the policy key (hex): the sealed policy names it.
    pub key_name: String,
    /// The sealed object's policy digest (hex), for inspection.
    pub policy: String,
    /// `TPMT_PUBLIC` of the sealed object, base64.
    pub public: String,
    /// `TPM2B_PRIVATE` contents, base64.
    pub private: String,
}

/// PCR values signed by the policy key (`satchel-pcr-policy-v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicy {
    /// Always `satchel-pcr-policy-v1`.
    pub format: String,
    /// Which image or reference version it is for (informational: not
    /// covered by the signature).
    pub version: u64,
    /// The bank of the values.
    pub bank: HashAlg,
    /// PCR index to its value (hex).
    pub pcrs: BTreeMap<u32, String>,
    /// The approved policy digest (hex): `TPM2_PolicyPCR` over the values.
    pub approved: String,
    /// ECDSA P-256 over `SHA-256(approved)`, `r ‖ s` (hex, 64 bytes).
    pub signature: String,
}

/// Why a signed policy is not usable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// The file's shape or values.
    #[error("signed PCR policy: {0}")]
    Invalid(String),
    /// The signature does not verify with the key.
    #[error("signed PCR policy: the signature does not verify with the policy key")]
    Signature,
}

/// The approved digest for `pcrs` (index to value) in `bank`: what
/// `TPM2_PolicyPCR` in a SHA-256 policy session makes of those values.
pub fn approved_policy(
    bank: HashAlg,
    pcrs: &BTreeMap<u32, Vec<u8>>,
) -> Result<[u8; 32], PolicyError> {
    if pcrs.is_empty() {
        return Err(PolicyError::Invalid("no PCR".into()));
    }
    let mut select = [0u8; 3];
    let mut values = Sha256::new();
    for (&i, v) in pcrs {
        if i > 23 {
            return Err(PolicyError::Invalid(format!("PCR {i} is out of range")));
        }
        if v.len() != bank.digest_size() {
            return Err(PolicyError::Invalid(format!(
                "PCR {i}: {} bytes, the {bank} bank holds {}",
                v.len(),
                bank.digest_size()
            )));
        }
        select[(i / 8) as usize] |= 1 << (i % 8);
        values.update(v);
    }
    let mut d = Sha256::new();
    d.update([0u8; 32]);
    d.update(CC_POLICY_PCR.to_be_bytes());
    // TPML_PCR_SELECTION: one selection of three octets.
    d.update(1u32.to_be_bytes());
    d.update(bank.id().to_be_bytes());
    d.update([3u8]);
    d.update(select);
    d.update(values.finalize());
    Ok(d.finalize().into())
}

impl SignedPolicy {
    /// Sign `pcrs` (index to value) of `bank` with the policy key.
    pub fn sign(
        key: &p256::ecdsa::SigningKey,
        version: u64,
        bank: HashAlg,
        pcrs: &BTreeMap<u32, Vec<u8>>,
    ) -> Result<SignedPolicy, PolicyError> {
        let approved = approved_policy(bank, pcrs)?;
        let sig: p256::ecdsa::Signature = key
            .sign_prehash(&Sha256::digest(approved))
            .map_err(|_| PolicyError::Signature)?;
        Ok(SignedPolicy {
            format: "satchel-pcr-policy-v1".to_owned(),
            version,
            bank,
            pcrs: pcrs.iter().map(|(i, v)| (*i, hex::encode(v))).collect(),
            approved: hex::encode(approved),
            signature: hex::encode(sig.to_bytes()),
        })
    }

    /// Check the policy against `key` off the TPM: the approved digest is
    /// that of its values, and the key signed it. The approved digest and
    /// the signature.
    pub fn check(
        &self,
        key: &p256::ecdsa::VerifyingKey,
    ) -> Result<([u8; 32], p256::ecdsa::Signature), PolicyError> {
        if self.format != "satchel-pcr-policy-v1" {
            return Err(PolicyError::Invalid(format!("format {:?}", self.format)));
        }
        let values = self
            .pcrs
            .iter()
            .map(|(i, v)| {
                hex::decode(v)
                    .map(|b| (*i, b))
                    .map_err(|_| PolicyError::Invalid(format!("PCR {i}: not hex")))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let approved = approved_policy(self.bank, &values)?;
        if hex::encode(approved) != self.approved {
            return Err(PolicyError::Invalid(
                "the approved digest is not that of its PCR values".into(),
            ));
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| p256::ecdsa::Signature::from_slice(&b).ok())
            .ok_or_else(|| PolicyError::Invalid("signature: not 64 bytes of hex".into()))?;
        key.verify_prehash(&Sha256::digest(approved), &sig)
            .map_err(|_| PolicyError::Signature)?;
        Ok((approved, sig))
    }
}

impl Tpm {
    /// The policy key, loaded public-only into the owner hierarchy (a
    /// ticket from a key in the null hierarchy does not count), with its
    /// TPM name.
    fn load_policy_key(
        &mut self,
        key: &p256::ecdsa::VerifyingKey,
    ) -> Result<(KeyHandle, Name), TpmError> {
        const WHAT: &str = "TPM2_LoadExternal (policy key)";
        let point = key.to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            return Err(malformed(WHAT, "a key without coordinates"));
        };
        let attrs = ObjectAttributesBuilder::new()
            .with_sign_encrypt(true)
            .with_user_with_auth(true)
            .build()
            .map_err(command(WHAT))?;
        let params = PublicEccParametersBuilder::new_unrestricted_signing_key(
            EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
            EccCurve::NistP256,
        )
        .build()
        .map_err(command(WHAT))?;
        let unique = EccPoint::new(
            EccParameter::try_from(x.to_vec()).map_err(command(WHAT))?,
            EccParameter::try_from(y.to_vec()).map_err(command(WHAT))?,
        );
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(unique)
            .build()
            .map_err(command(WHAT))?;
        let handle = self
            .ctx
            .load_external_public(public, Hierarchy::Owner)
            .map_err(command(WHAT))?;
        match self.ctx.tr_get_name(ObjectHandle::from(handle)) {
            Ok(name) => Ok((handle, name)),
            Err(e) => {
                let _ = self.ctx.flush_context(ObjectHandle::from(handle));
                Err(command("Esys_TR_GetName")(e))
            }
        }
    }

    /// Seal `secret` so that any PCR policy `key` signs unseals it.
    pub fn seal_authorized(
        &mut self,
        key: &p256::ecdsa::VerifyingKey,
        secret: &[u8],
    ) -> Result<AuthorizedSealed, TpmError> {
        const WHAT: &str = "TPM2_Create (authorized sealed object)";
        if secret.is_empty() || secret.len() > super::MAX_SEALED {
            return Err(TpmError::SecretSize { size: secret.len() });
        }
        let (handle, name) = self.load_policy_key(key)?;
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        // The policy digest from the TPM's own trial session: a trial
        // PolicyAuthorize checks no ticket.
        let null_ticket = VerifiedTicket::try_from(TPMT_TK_VERIFIED {
            tag: TPM2_ST_VERIFIED,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(command(WHAT))?;
        let trial = self.policy_session(SessionType::Trial)?;
        let digest = self
            .ctx
            .policy_authorize(
                trial,
                Digest::default(),
                Nonce::default(),
                &name,
                null_ticket,
            )
            .and_then(|()| self.ctx.policy_get_digest(trial));
        let _ = self
            .ctx
            .flush_context(session_object(AuthSession::from(trial)));
        let digest = digest.map_err(command("TPM2_PolicyAuthorize (trial)"))?;
        let (public, private) = self.create_sealed(&digest, secret)?;
        Ok(AuthorizedSealed {
            format: "satchel-sealed-authorized-v1".to_owned(),
            key_name: hex::encode(name.value()),
            policy: hex::encode(digest.value()),
            public,
            private,
        })
    }

    /// Unseal with a policy `key` signed: only while the PCRs hold its
    /// values ([`TpmError::PcrPolicy`] otherwise), and only with a policy
    /// the key really signed.
    pub fn unseal_authorized(
        &mut self,
        sealed: &AuthorizedSealed,
        key: &p256::ecdsa::VerifyingKey,
        policy: &SignedPolicy,
    ) -> Result<Vec<u8>, TpmError> {
        const WHAT: &str = "TPM2_Unseal (authorized)";
        let (approved, sig) = policy
            .check(key)
            .map_err(|_| malformed(WHAT, "the signed policy does not check with the policy key"))?;
        let pcrs: Vec<u32> = policy.pcrs.keys().copied().collect();
        // The TPM's own check of the signature: a ticket.
        let (handle, name) = self.load_policy_key(key)?;
        if hex::encode(name.value()) != sealed.key_name {
            let _ = self.ctx.flush_context(ObjectHandle::from(handle));
            return Err(malformed(
                WHAT,
                "the secret is sealed to another policy key",
            ));
        }
        let (r, s) = sig.split_bytes();
        let ticket = EccParameter::try_from(r.to_vec())
            .and_then(|r| Ok((r, EccParameter::try_from(s.to_vec())?)))
            .and_then(|(r, s)| EccSignature::create(HashingAlgorithm::Sha256, r, s))
            .and_then(|sig| {
                let a_hash = Digest::try_from(Sha256::digest(approved).to_vec())?;
                self.ctx
                    .verify_signature(handle, a_hash, Signature::EcDsa(sig))
            });
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        let ticket = ticket.map_err(command("TPM2_VerifySignature"))?;
        // Loaded before the session starts, so nothing stands between the
        // PCR check and the unseal (another extend there fails the unseal).
        let object = self.load_sealed(&sealed.public, &sealed.private)?;
        let result = self
            .policy_session(SessionType::Policy)
            .and_then(|session| {
                let r = self.authorize_and_unseal(
                    session,
                    object,
                    &pcrs,
                    policy.bank,
                    approved,
                    &name,
                    ticket,
                );
                let _ = self
                    .ctx
                    .flush_context(session_object(AuthSession::from(session)));
                r
            });
        let _ = self.ctx.flush_context(ObjectHandle::from(object));
        result
    }

    /// In `session`: PolicyPCR on the live values of `pcrs`, PolicyAuthorize
    /// with the signed `approved` digest, then unseal `object`.
    #[allow(clippy::too_many_arguments)]
    fn authorize_and_unseal(
        &mut self,
        session: PolicySession,
        object: KeyHandle,
        pcrs: &[u32],
        bank: HashAlg,
        approved: [u8; 32],
        name: &Name,
        ticket: VerifiedTicket,
    ) -> Result<Vec<u8>, TpmError> {
        const WHAT: &str = "TPM2_Unseal (authorized)";
        let selection = [(bank, pcrs.iter().copied().collect())]
            .into_iter()
            .collect();
        let list = selection_list(&selection)?;
        self.ctx
            .policy_pcr(session, Digest::default(), list)
            .map_err(command("TPM2_PolicyPCR"))?;
        let approved = Digest::try_from(approved.to_vec()).map_err(command(WHAT))?;
        // TPM_RC_VALUE: the session's digest (the live PCR values) is not
        // the signed one.
        self.ctx
            .policy_authorize(session, approved, Nonce::default(), name, ticket)
            .map_err(|e| {
                if is_value_error(&e) {
                    TpmError::PcrPolicy {
                        pcrs: pcrs.to_vec(),
                    }
                } else {
                    command("TPM2_PolicyAuthorize")(e)
                }
            })?;
        self.ctx
            .execute_with_session(Some(AuthSession::from(session)), |c| {
                c.unseal(ObjectHandle::from(object))
            })
            .map(|d| d.value().to_vec())
            .map_err(|e| {
                if is_policy_fail(&e) {
                    TpmError::PcrPolicy {
                        pcrs: pcrs.to_vec(),
                    }
                } else {
                    command(WHAT)(e)
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_checks_only_with_its_key_and_values() {
        let key = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pcrs: BTreeMap<u32, Vec<u8>> = [(4, vec![1u8; 32]), (8, vec![2u8; 32])].into();
        let p = SignedPolicy::sign(&key, 3, HashAlg::Sha256, &pcrs).unwrap();
        assert!(p.check(key.verifying_key()).is_ok());
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
        assert!(p.check(other.verifying_key()).is_err());
        let mut changed = p.clone();
        changed.pcrs.insert(8, hex::encode([3u8; 32]));
        assert!(changed.check(key.verifying_key()).is_err());
        assert!(approved_policy(HashAlg::Sha256, &[(4, vec![0u8; 20])].into()).is_err());
        assert!(approved_policy(HashAlg::Sha256, &[(24, vec![0u8; 32])].into()).is_err());
    }
}
