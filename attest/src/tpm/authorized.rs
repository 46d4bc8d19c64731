//! A secret sealed to the organisation's policy key instead of to PCR
//! values (TPM2_PolicyAuthorize): any PCR policy the key signs unseals it,
//! while the device's epoch counter is at most the policy's epoch. An
//! image update that changes the boot chain then needs a newly signed
//! policy for the new values, not a new sealing, and the device keeps its
//! disk key; raising the epoch revokes every policy signed before.
//!
//! - The sealed object's policy is `PolicyAuthorize(keyName, ref)` with
//!   `ref` = [`POLICY_REF`]: `H(H(0³² ‖ TPM_CC_PolicyAuthorize ‖ keyName) ‖
//!   ref)`, computed by the TPM's own trial session.
//! - A signed policy names PCR values and an epoch; its *approved* digest
//!   is that of `TPM2_PolicyPCR` over the values followed by
//!   `TPM2_PolicyNV(epoch counter ≤ epoch)` ([`super::epoch`]). The key
//!   signs `H(approved ‖ ref)` (ECDSA P-256: the TPM verifies no ed25519).
//!   The reference keeps signatures over any other digest (an older format
//!   without the counter) from ever unsealing this object.
//! - Unsealing: the TPM checks the signature (`TPM2_VerifySignature`, the
//!   key loaded public-only in the owner hierarchy so the ticket counts),
//!   then one policy session runs `PolicyPCR` on the live values,
//!   `PolicyNV` on the live counter, and `PolicyAuthorize`, which turns the
//!   session's digest into the sealed one only if it equals the signed one.
//!   tss-esapi 7 lacks `PolicyNV`, so that session runs in [`super::esys`].

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
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, EccSignature, HashScheme, Name, Nonce,
    PublicBuilder, PublicEccParametersBuilder, Signature, VerifiedTicket,
};
use tss_esapi::tss2_esys::TPMT_TK_VERIFIED;

use super::epoch::{policy_nv, EPOCH_COUNTER};
use super::keys::session_object;
use super::{command, esys, malformed, selection_list, Tpm, TpmError};
use crate::alg::HashAlg;

/// TPM_RC_VALUE: a parameter's value is wrong (for PolicyAuthorize: the
/// session's digest is not the approved one).
fn is_value_error(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(tss_esapi::constants::Tss2ResponseCodeKind::Value))
}

/// `TPM_CC_PolicyPCR`.
const CC_POLICY_PCR: u32 = 0x0000_017F;

/// The policy reference of every sealed object and signature: signatures
/// over a bare digest (format v1, no epoch) never unseal a v2 object.
pub const POLICY_REF: &[u8] = b"satchel-epoch-v2";

/// The format of a sealed file.
const SEALED_FORMAT: &str = "satchel-sealed-authorized-v2";

/// The format of a signed policy.
const POLICY_FORMAT: &str = "satchel-pcr-policy-v2";

/// A secret sealed to a policy key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizedSealed {
    /// Always `satchel-sealed-authorized-v2`.
    pub format: String,
    /// The TPM name of the policy key (hex): the sealed policy names it.
    pub key_name: String,
    /// The NV index of the epoch counter.
    pub counter: u32,
    /// The sealed object's policy digest (hex), for inspection.
    pub policy: String,
    /// `TPMT_PUBLIC` of the sealed object, base64.
    pub public: String,
    /// `TPM2B_PRIVATE` contents, base64.
    pub private: String,
}

/// PCR values and an epoch signed by the policy key
/// (`satchel-pcr-policy-v2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedPolicy {
    /// Always `satchel-pcr-policy-v2`.
    pub format: String,
    /// Which image or reference version it is for (informational: not
    /// covered by the signature).
    pub version: u64,
    /// It unseals only while the device's epoch counter is at most this;
    /// a device that unseals with it raises its counter to it, revoking
    /// every policy with a lower epoch.
    pub epoch: u64,
    /// The NV index of the epoch counter.
    pub counter: u32,
    /// The bank of the values.
    pub bank: HashAlg,
    /// PCR index to its value (hex).
    pub pcrs: BTreeMap<u32, String>,
    /// The approved policy digest (hex): `TPM2_PolicyPCR` over the values,
    /// then `TPM2_PolicyNV` (counter at most the epoch).
    pub approved: String,
    /// ECDSA P-256 over `SHA-256(approved ‖ POLICY_REF)`, `r ‖ s` (hex,
    /// 64 bytes).
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
        epoch: u64,
        bank: HashAlg,
        pcrs: &BTreeMap<u32, Vec<u8>>,
    ) -> Result<SignedPolicy, PolicyError> {
        let approved = policy_nv(approved_policy(bank, pcrs)?, EPOCH_COUNTER, epoch);
        let sig: p256::ecdsa::Signature = key
            .sign_prehash(&signed_hash(&approved))
            .map_err(|_| PolicyError::Signature)?;
        Ok(SignedPolicy {
            format: POLICY_FORMAT.to_owned(),
            version,
            epoch,
            counter: EPOCH_COUNTER,
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
        if self.format != POLICY_FORMAT {
            return Err(PolicyError::Invalid(format!(
                "format {:?} (this Satchel reads {POLICY_FORMAT}: sign it again with satchel pcr-policy sign)",
                self.format
            )));
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
        let approved = policy_nv(
            approved_policy(self.bank, &values)?,
            self.counter,
            self.epoch,
        );
        if hex::encode(approved) != self.approved {
            return Err(PolicyError::Invalid(
                "the approved digest is not that of its PCR values and epoch".into(),
            ));
        }
        let sig = hex::decode(&self.signature)
            .ok()
            .and_then(|b| p256::ecdsa::Signature::from_slice(&b).ok())
            .ok_or_else(|| PolicyError::Invalid("signature: not 64 bytes of hex".into()))?;
        key.verify_prehash(&signed_hash(&approved), &sig)
            .map_err(|_| PolicyError::Signature)?;
        Ok((approved, sig))
    }
}

/// What the policy key signs: `SHA-256(approved ‖ POLICY_REF)`, the
/// `aHash` `TPM2_PolicyAuthorize` checks the ticket against.
fn signed_hash(approved: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(approved);
    h.update(POLICY_REF);
    h.finalize().into()
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

    /// Seal `secret` so that any PCR policy `key` signs unseals it while
    /// the epoch counter allows; defines the counter if it is not there.
    pub fn seal_authorized(
        &mut self,
        key: &p256::ecdsa::VerifyingKey,
        secret: &[u8],
    ) -> Result<AuthorizedSealed, TpmError> {
        const WHAT: &str = "TPM2_Create (authorized sealed object)";
        if secret.is_empty() || secret.len() > super::MAX_SEALED {
            return Err(TpmError::SecretSize { size: secret.len() });
        }
        self.ensure_epoch_counter(EPOCH_COUNTER)?;
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
        let policy_ref = Nonce::try_from(POLICY_REF.to_vec()).map_err(command(WHAT))?;
        let trial = self.policy_session(SessionType::Trial)?;
        let digest = self
            .ctx
            .policy_authorize(trial, Digest::default(), policy_ref, &name, null_ticket)
            .and_then(|()| self.ctx.policy_get_digest(trial));
        let _ = self
            .ctx
            .flush_context(session_object(AuthSession::from(trial)));
        let digest = digest.map_err(command("TPM2_PolicyAuthorize (trial)"))?;
        let (public, private) = self.create_sealed(&digest, secret)?;
        Ok(AuthorizedSealed {
            format: SEALED_FORMAT.to_owned(),
            key_name: hex::encode(name.value()),
            counter: EPOCH_COUNTER,
            policy: hex::encode(digest.value()),
            public,
            private,
        })
    }

    /// Unseal with a policy `key` signed: only while the PCRs hold its
    /// values and the epoch counter is at most its epoch
    /// ([`TpmError::PcrPolicy`], [`TpmError::Revoked`] otherwise), and only
    /// with a policy the key really signed.
    ///
    /// The policy session runs on a connection of its own (tss-esapi 7
    /// cannot send `TPM2_PolicyNV`), so this one is closed for it: the
    /// secret comes back with the connection opened again.
    pub fn unseal_authorized(
        mut self,
        sealed: &AuthorizedSealed,
        key: &p256::ecdsa::VerifyingKey,
        policy: &SignedPolicy,
    ) -> Result<(Vec<u8>, Tpm), TpmError> {
        const WHAT: &str = "TPM2_Unseal (authorized)";
        if sealed.format != SEALED_FORMAT {
            return Err(malformed(
                WHAT,
                "the sealed file is of an older format: seal the secret again",
            ));
        }
        let (approved, sig) = policy
            .check(key)
            .map_err(|_| malformed(WHAT, "the signed policy does not check with the policy key"))?;
        if policy.counter != sealed.counter {
            return Err(malformed(
                WHAT,
                "the signed policy names another epoch counter than the sealed secret",
            ));
        }
        let counter = self.epoch_counter(sealed.counter)?.ok_or_else(|| {
            malformed(
                WHAT,
                "this TPM has no epoch counter: the secret was sealed on another",
            )
        })?;
        let job = self.prepare_unseal(sealed, key, policy, approved, sig)?;
        let tcti = self.tcti.clone();
        drop(self);
        let secret = esys::unseal(&tcti, &job).map_err(|(what, e)| {
            match e {
                // PolicyPCR holds nothing back: a PCR mismatch shows at
                // PolicyAuthorize, whose session digest is then not the
                // signed one (TPM_RC_VALUE); PolicyNV fails at once
                // (TPM_RC_POLICY) when the counter is above the epoch.
                tss_esapi::Error::Tss2Error(rc)
                    if what == "TPM2_PolicyNV"
                        && rc.kind()
                            == Some(tss_esapi::constants::Tss2ResponseCodeKind::Policy) =>
                {
                    TpmError::Revoked {
                        epoch: policy.epoch,
                        counter,
                    }
                }
                ref e2 if what == "TPM2_PolicyAuthorize" && is_value_error(e2) => {
                    TpmError::PcrPolicy {
                        pcrs: policy.pcrs.keys().copied().collect(),
                    }
                }
                _ => command(what)(e),
            }
        })?;
        Ok((secret, Tpm::open(&tcti)?))
    }

    /// Everything the policy session needs, made on this connection: the
    /// TPM's ticket for the signature, the sealed object loaded and saved.
    fn prepare_unseal(
        &mut self,
        sealed: &AuthorizedSealed,
        key: &p256::ecdsa::VerifyingKey,
        policy: &SignedPolicy,
        approved: [u8; 32],
        sig: p256::ecdsa::Signature,
    ) -> Result<esys::NvAuthorizedUnseal, TpmError> {
        const WHAT: &str = "TPM2_Unseal (authorized)";
        let (handle, name) = self.load_policy_key(key)?;
        if hex::encode(name.value()) != sealed.key_name {
            let _ = self.ctx.flush_context(ObjectHandle::from(handle));
            return Err(malformed(
                WHAT,
                "the secret is sealed to another policy key",
            ));
        }
        // The TPM's own check of the signature: a ticket.
        let (r, s) = sig.split_bytes();
        let ticket = EccParameter::try_from(r.to_vec())
            .and_then(|r| Ok((r, EccParameter::try_from(s.to_vec())?)))
            .and_then(|(r, s)| EccSignature::create(HashingAlgorithm::Sha256, r, s))
            .and_then(|sig| {
                let a_hash = Digest::try_from(signed_hash(&approved).to_vec())?;
                self.ctx
                    .verify_signature(handle, a_hash, Signature::EcDsa(sig))
            });
        let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        let ticket = ticket.map_err(command("TPM2_VerifySignature"))?;
        let object = self.load_sealed(&sealed.public, &sealed.private)?;
        let saved = self.ctx.context_save(ObjectHandle::from(object));
        let _ = self.ctx.flush_context(ObjectHandle::from(object));
        let saved = saved.map_err(command("TPM2_ContextSave (sealed object)"))?;
        let selection = [(policy.bank, policy.pcrs.keys().copied().collect())]
            .into_iter()
            .collect();
        Ok(esys::NvAuthorizedUnseal {
            object: saved.try_into().map_err(command(WHAT))?,
            pcrs: selection_list(&selection)?.into(),
            counter: sealed.counter,
            epoch: policy.epoch,
            approved: Digest::try_from(approved.to_vec())
                .map_err(command(WHAT))?
                .into(),
            policy_ref: Nonce::try_from(POLICY_REF.to_vec())
                .map_err(command(WHAT))?
                .into(),
            key_name: name.into(),
            ticket: ticket.try_into().map_err(command(WHAT))?,
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
        let p = SignedPolicy::sign(&key, 3, 1, HashAlg::Sha256, &pcrs).unwrap();
        assert!(p.check(key.verifying_key()).is_ok());
        let other = p256::ecdsa::SigningKey::from_slice(&[8u8; 32]).unwrap();
        assert!(p.check(other.verifying_key()).is_err());
        let mut changed = p.clone();
        changed.pcrs.insert(8, hex::encode([3u8; 32]));
        assert!(changed.check(key.verifying_key()).is_err());
        // The epoch is covered: a policy moved to a higher epoch is refused.
        let mut later = p.clone();
        later.epoch = 9;
        assert!(later.check(key.verifying_key()).is_err());
        assert!(approved_policy(HashAlg::Sha256, &[(4, vec![0u8; 20])].into()).is_err());
        assert!(approved_policy(HashAlg::Sha256, &[(24, vec![0u8; 32])].into()).is_err());
    }
}
