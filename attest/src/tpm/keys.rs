//! Attestation keys, quotes, the endorsement key's certificate, credential
//! activation, and PCR-sealed secrets.
//!
//! **How the AK survives restarts.** The AK is created under the
//! endorsement key (the RSA 2048 EK of the default template, the one the EK
//! certificate certifies) and the TPM returns it wrapped by that EK. The
//! wrapped private part and the public area are kept in the AK file
//! ([`AkFile`]); each use loads them under the EK again. No persistent
//! handle or NV space is used, so nothing is left behind in the TPM, and
//! the file is useless on any other TPM (the EK never leaves this one).
//!
//! **Sealing.** A secret is sealed under an ECC P-256 storage primary key
//! of the owner hierarchy (re-derived from the TPM's seed at each use) with
//! a TPM2_PolicyPCR policy over the current values of the chosen PCRs. It
//! can be unsealed only in a policy session where those PCRs still hold.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::TryFrom;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::{SessionType, Tss2ResponseCodeKind};
use tss_esapi::handles::{
    AuthHandle, KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle,
};
use tss_esapi::interface_types::algorithm::{
    HashingAlgorithm, PublicAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Data, Digest, EccPoint, EccScheme, EncryptedSecret, IdObject, KeyDerivationFunctionScheme,
    KeyedHashScheme, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, SignatureScheme, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::{command, malformed, selection_list, Tpm, TpmError};
use crate::alg::HashAlg;
use crate::evidence::Evidence;
use crate::tpm2::{AkPublic, Quote};

/// Where `swtpm_setup` and many vendors keep the RSA EK.
const EK_PERSISTENT_HANDLE: u32 = 0x8101_0001;
/// Largest secret TPM2_Create seals (`MAX_SYM_DATA`).
pub const MAX_SEALED: usize = 128;

pub(super) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The attestation key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AkAlg {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    EccP256,
    /// RSASSA-PKCS1-v1_5, 2048-bit, SHA-256.
    Rsa2048,
}

impl std::str::FromStr for AkAlg {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ecc-p256" | "ecc" | "p256" => Ok(AkAlg::EccP256),
            "rsa-2048" | "rsa" | "rsa2048" => Ok(AkAlg::Rsa2048),
            _ => Err(format!("{s:?} is not ecc-p256 or rsa-2048")),
        }
    }
}

/// The AK file: everything needed to load the AK again, and its public
/// part in the forms verifiers use. See `docs/attestation.md`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkFile {
    /// Always `satchel-ak-v1`.
    pub format: String,
    /// The key's algorithm.
    pub alg: AkAlg,
    /// The TPM name (hex): what quotes name as their signer and what
    /// MakeCredential binds to.
    pub name: String,
    /// SubjectPublicKeyInfo PEM.
    pub public_pem: String,
    /// `TPM2B_PUBLIC`, base64.
    pub tpm2b_public: String,
    /// `TPM2B_PRIVATE` contents, base64: wrapped by the EK, useless
    /// outside this TPM.
    pub private: String,
}

/// A secret sealed to PCR values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedFile {
    /// Always `satchel-sealed-v1`.
    pub format: String,
    /// The bank whose values the policy covers.
    pub bank: HashAlg,
    /// The PCRs it is sealed to.
    pub pcrs: Vec<u32>,
    /// The policy digest (hex), for inspection.
    pub policy: String,
    /// `TPMT_PUBLIC` of the sealed object, base64.
    pub public: String,
    /// `TPM2B_PRIVATE` contents, base64.
    pub private: String,
}

pub(super) fn b64(s: &str, what: &'static str) -> Result<Vec<u8>, TpmError> {
    B64.decode(s.as_bytes())
        .map_err(|_| malformed(what, "not base64"))
}

impl Tpm {
    /// The EK certificate (DER) from NV index 0x01c00002 (RSA 2048 EK).
    pub fn ek_certificate(&mut self) -> Result<Vec<u8>, TpmError> {
        ek::retrieve_ek_pubcert(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
        )
        .map_err(command("TPM2_NV_Read (EK certificate)"))
    }

    /// The EK: the persistent one at 0x81010001 if present, else created
    /// from the default template (the same key). The bool says whether the
    /// handle is transient (to be flushed).
    fn endorsement_key(&mut self) -> Result<(KeyHandle, bool), TpmError> {
        let persistent =
            PersistentTpmHandle::new(EK_PERSISTENT_HANDLE).map_err(command("EK handle"))?;
        if let Ok(h) = self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(persistent)))
        {
            return Ok((KeyHandle::from(h), false));
        }
        let h = ek::create_ek_object_2(
            &mut self.ctx,
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            DefaultKey,
        )
        .map_err(command("TPM2_CreatePrimary (EK)"))?;
        Ok((h, true))
    }

    fn release(&mut self, handle: KeyHandle, transient: bool) {
        if transient {
            let _ = self.ctx.flush_context(ObjectHandle::from(handle));
        }
    }

    /// Create an attestation key under the EK.
    pub fn create_ak(&mut self, alg: AkAlg) -> Result<AkFile, TpmError> {
        let (ek, transient) = self.endorsement_key()?;
        let (key_alg, sign_alg) = match alg {
            AkAlg::EccP256 => (
                AsymmetricAlgorithmSelection::Ecc(EccCurve::NistP256),
                SignatureSchemeAlgorithm::EcDsa,
            ),
            AkAlg::Rsa2048 => (
                AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
                SignatureSchemeAlgorithm::RsaSsa,
            ),
        };
        let made = ak::create_ak_2(
            &mut self.ctx,
            ek,
            HashingAlgorithm::Sha256,
            key_alg,
            sign_alg,
            None,
            DefaultKey,
        )
        .map_err(command("TPM2_Create (AK)"));
        self.release(ek, transient);
        let made = made?;
        let tpmt = made
            .out_public
            .marshall()
            .map_err(command("marshalling the AK public area"))?;
        let parsed = AkPublic::parse(&tpmt)
            .map_err(|_| malformed("TPM2_Create (AK)", "an AK public area Satchel cannot read"))?;
        let mut tpm2b = u16::try_from(tpmt.len())
            .unwrap_or(0)
            .to_be_bytes()
            .to_vec();
        tpm2b.extend_from_slice(&tpmt);
        Ok(AkFile {
            format: "satchel-ak-v1".to_owned(),
            alg,
            name: hex::encode(&parsed.name),
            public_pem: parsed
                .key
                .to_pem()
                .map_err(|_| malformed("TPM2_Create (AK)", "an AK key without a PEM form"))?,
            tpm2b_public: B64.encode(&tpm2b),
            private: B64.encode(made.out_private.value()),
        })
    }

    /// Load an AK from its file under the EK; returns the AK handle and the
    /// EK handle (with whether to flush it).
    fn load_ak(&mut self, file: &AkFile) -> Result<(KeyHandle, KeyHandle, bool), TpmError> {
        const WHAT: &str = "TPM2_Load (AK)";
        let tpm2b = b64(&file.tpm2b_public, WHAT)?;
        let tpmt = tpm2b
            .get(2..)
            .ok_or_else(|| malformed(WHAT, "tpm2b_public is empty"))?;
        let public = Public::unmarshall(tpmt).map_err(command(WHAT))?;
        let private = Private::try_from(b64(&file.private, WHAT)?).map_err(command(WHAT))?;
        let (ek, transient) = self.endorsement_key()?;
        match ak::load_ak(&mut self.ctx, ek, None, private, public) {
            Ok(h) => Ok((h, ek, transient)),
            Err(e) => {
                self.release(ek, transient);
                Err(TpmError::Command {
                    what: WHAT,
                    source: e,
                })
            }
        }
    }

    /// Load the AK of `ak_file` and make it persistent at `handle`
    /// (0x81000000-0x81ffffff, owner hierarchy), evicting whatever was
    /// there: for a TPM whose quotes another program makes with the handle
    /// alone, such as a guest's vTPM provisioned before its first boot.
    pub fn persist_ak(&mut self, ak_file: &AkFile, handle: u32) -> Result<(), TpmError> {
        const WHAT: &str = "TPM2_EvictControl (AK)";
        let persistent = PersistentTpmHandle::new(handle).map_err(command(WHAT))?;
        let target =
            tss_esapi::interface_types::dynamic_handles::Persistent::Persistent(persistent);
        if let Ok(old) = self
            .ctx
            .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::Persistent(persistent)))
        {
            self.ctx
                .execute_with_session(Some(AuthSession::Password), |c| {
                    c.evict_control(
                        tss_esapi::interface_types::resource_handles::Provision::Owner,
                        old,
                        target,
                    )
                })
                .map_err(command(WHAT))?;
        }
        let (ak, ek, transient) = self.load_ak(ak_file)?;
        self.release(ek, transient);
        let made = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |c| {
                c.evict_control(
                    tss_esapi::interface_types::resource_handles::Provision::Owner,
                    ObjectHandle::from(ak),
                    target,
                )
            });
        let _ = self.ctx.flush_context(ObjectHandle::from(ak));
        made.map(|_| ()).map_err(command(WHAT))
    }

    /// TPM2_Quote over `selection` (bank -> PCRs) with `nonce` as the
    /// qualifying data. Returns the `TPMS_ATTEST` bytes exactly as signed
    /// and the `TPMT_SIGNATURE`.
    pub fn quote(
        &mut self,
        ak_file: &AkFile,
        nonce: &[u8],
        selection: &BTreeMap<HashAlg, BTreeSet<u32>>,
    ) -> Result<(Vec<u8>, Vec<u8>), TpmError> {
        const WHAT: &str = "TPM2_Quote";
        let data = Data::try_from(nonce.to_vec()).map_err(command(WHAT))?;
        let list = selection_list(selection)?;
        let (ak, ek, transient) = self.load_ak(ak_file)?;
        self.release(ek, transient);
        let quoted = self
            .ctx
            .execute_with_nullauth_session(|c| c.quote(ak, data, SignatureScheme::Null, list));
        let _ = self.ctx.flush_context(ObjectHandle::from(ak));
        let (attest, signature) = quoted.map_err(command(WHAT))?;
        Ok((
            attest.marshall().map_err(command(WHAT))?,
            signature.marshall().map_err(command(WHAT))?,
        ))
    }

    /// Evidence for `nonce`: the PCRs of `selection` read and quoted, with
    /// the AK's public parts and `event_logs`. The values are read before
    /// the quote and checked against its digest; if a PCR changed in
    /// between, the quote is taken again (three tries).
    pub fn evidence(
        &mut self,
        ak_file: &AkFile,
        nonce: &[u8],
        selection: &BTreeMap<HashAlg, BTreeSet<u32>>,
        event_logs: Vec<Vec<u8>>,
    ) -> Result<Evidence, TpmError> {
        const WHAT: &str = "TPM2_Quote";
        let banks: Vec<HashAlg> = selection.keys().copied().collect();
        let pcrs: Vec<u32> = selection
            .values()
            .flatten()
            .copied()
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        let ak_public = b64(&ak_file.tpm2b_public, WHAT)?;
        for _ in 0..3 {
            let values = self.read_pcrs(&banks, &pcrs)?;
            let (quote, signature) = self.quote(ak_file, nonce, selection)?;
            let parsed =
                Quote::parse(&quote).map_err(|_| malformed(WHAT, "a quote Satchel cannot read"))?;
            if parsed.pcr_digest_matches(&values) {
                return Ok(Evidence {
                    format: crate::evidence::FORMAT.to_owned(),
                    quote,
                    signature,
                    ak_pem: ak_file.public_pem.clone(),
                    ak_public: Some(ak_public),
                    nonce: nonce.to_vec(),
                    pcrs: values,
                    event_logs,
                });
            }
        }
        Err(malformed(WHAT, "the PCRs kept changing while quoting"))
    }

    /// TPM2_ActivateCredential: recover a credential the verifier wrapped
    /// for this TPM's EK and this AK ([`crate::credential::make_credential`]).
    /// Fails (TPM_RC_INTEGRITY) when it was made for another key's name.
    pub fn activate_credential(
        &mut self,
        ak_file: &AkFile,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        const WHAT: &str = "TPM2_ActivateCredential";
        let blob = IdObject::try_from(id_object.to_vec()).map_err(command(WHAT))?;
        let secret = EncryptedSecret::try_from(encrypted_secret.to_vec()).map_err(command(WHAT))?;
        let (ak, ek, transient) = self.load_ak(ak_file)?;
        let result = self.activate(ak, ek, blob, secret);
        let _ = self.ctx.flush_context(ObjectHandle::from(ak));
        self.release(ek, transient);
        result
    }

    fn activate(
        &mut self,
        ak: KeyHandle,
        ek: KeyHandle,
        blob: IdObject,
        secret: EncryptedSecret,
    ) -> Result<Vec<u8>, TpmError> {
        const WHAT: &str = "TPM2_ActivateCredential";
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(command(WHAT))?
            .ok_or_else(|| malformed(WHAT, "no session"))?;
        let (attrs, mask) = SessionAttributesBuilder::new().build();
        let result = (|| {
            self.ctx
                .tr_sess_set_attributes(session, attrs, mask)
                .map_err(command(WHAT))?;
            let policy = PolicySession::try_from(session).map_err(command(WHAT))?;
            self.ctx
                .execute_with_nullauth_session(|c| {
                    c.policy_secret(
                        policy,
                        AuthHandle::Endorsement,
                        Default::default(),
                        Default::default(),
                        Default::default(),
                        None,
                    )
                })
                .map_err(command("TPM2_PolicySecret"))?;
            self.ctx
                .execute_with_sessions((Some(AuthSession::Password), Some(session), None), |c| {
                    c.activate_credential(ak, ek, blob, secret)
                })
                .map_err(command(WHAT))
        })();
        let _ = self.ctx.flush_context(session_object(session));
        Ok(result?.value().to_vec())
    }

    /// The owner hierarchy's ECC P-256 storage key (same key every time).
    pub(super) fn storage_key(&mut self) -> Result<KeyHandle, TpmError> {
        const WHAT: &str = "TPM2_CreatePrimary (storage key)";
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_sensitive_data_origin(true)
            .with_user_with_auth(true)
            .with_no_da(true)
            .with_restricted(true)
            .with_decrypt(true)
            .build()
            .map_err(command(WHAT))?;
        let params = PublicEccParametersBuilder::new()
            .with_symmetric(SymmetricDefinitionObject::AES_128_CFB)
            .with_ecc_scheme(EccScheme::Null)
            .with_curve(EccCurve::NistP256)
            .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
            .with_is_decryption_key(true)
            .with_restricted(true)
            .build()
            .map_err(command(WHAT))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_ecc_parameters(params)
            .with_ecc_unique_identifier(EccPoint::default())
            .build()
            .map_err(command(WHAT))?;
        self.ctx
            .execute_with_nullauth_session(|c| {
                c.create_primary(Hierarchy::Owner, public, None, None, None, None)
            })
            .map(|r| r.key_handle)
            .map_err(command(WHAT))
    }

    /// A SHA-256 policy (or trial) session.
    pub(super) fn policy_session(&mut self, kind: SessionType) -> Result<PolicySession, TpmError> {
        const WHAT: &str = "TPM2_StartAuthSession (policy)";
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
            .map_err(command(WHAT))?
            .ok_or_else(|| malformed(WHAT, "no session"))?;
        PolicySession::try_from(session).map_err(command(WHAT))
    }

    /// A policy session (or trial session) with TPM2_PolicyPCR over the
    /// current values of `pcrs` in `bank`.
    fn pcr_policy_session(
        &mut self,
        kind: SessionType,
        bank: HashAlg,
        pcrs: &[u32],
    ) -> Result<PolicySession, TpmError> {
        const WHAT: &str = "TPM2_PolicyPCR";
        let selection: BTreeMap<HashAlg, BTreeSet<u32>> = [(bank, pcrs.iter().copied().collect())]
            .into_iter()
            .collect();
        let list = selection_list(&selection)?;
        let policy = self.policy_session(kind)?;
        if let Err(e) = self.ctx.policy_pcr(policy, Digest::default(), list) {
            let _ = self
                .ctx
                .flush_context(session_object(AuthSession::from(policy)));
            return Err(TpmError::Command {
                what: WHAT,
                source: e,
            });
        }
        Ok(policy)
    }

    /// Seal `secret` to the current values of `pcrs` in `bank`.
    pub fn seal(
        &mut self,
        bank: HashAlg,
        pcrs: &[u32],
        secret: &[u8],
    ) -> Result<SealedFile, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SEALED {
            return Err(TpmError::SecretSize { size: secret.len() });
        }
        for &p in pcrs {
            super::check_pcr(p)?;
        }
        self.check_allocated(std::iter::once(bank))?;
        let trial = self.pcr_policy_session(SessionType::Trial, bank, pcrs)?;
        let digest = self.ctx.policy_get_digest(trial);
        let _ = self
            .ctx
            .flush_context(session_object(AuthSession::from(trial)));
        let digest = digest.map_err(command("TPM2_PolicyGetDigest"))?;
        let (public, private) = self.create_sealed(&digest, secret)?;
        Ok(SealedFile {
            format: "satchel-sealed-v1".to_owned(),
            bank,
            pcrs: pcrs.to_vec(),
            policy: hex::encode(digest.value()),
            public,
            private,
        })
    }

    /// Create a sealed data object holding `secret` under the storage key,
    /// usable only through a session whose policy digest is `policy`: its
    /// `TPMT_PUBLIC` and `TPM2B_PRIVATE` contents, base64.
    pub(super) fn create_sealed(
        &mut self,
        policy: &Digest,
        secret: &[u8],
    ) -> Result<(String, String), TpmError> {
        const WHAT: &str = "TPM2_Create (sealed object)";
        let attrs = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(true)
            .with_user_with_auth(false)
            .build()
            .map_err(command(WHAT))?;
        let public = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attrs)
            .with_auth_policy(policy.clone())
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()
            .map_err(command(WHAT))?;
        let data = SensitiveData::try_from(secret.to_vec()).map_err(command(WHAT))?;
        let srk = self.storage_key()?;
        let made = self
            .ctx
            .execute_with_nullauth_session(|c| c.create(srk, public, None, Some(data), None, None));
        let _ = self.ctx.flush_context(ObjectHandle::from(srk));
        let made = made.map_err(command(WHAT))?;
        Ok((
            B64.encode(made.out_public.marshall().map_err(command(WHAT))?),
            B64.encode(made.out_private.value()),
        ))
    }

    /// Load a sealed object (its `TPMT_PUBLIC` and `TPM2B_PRIVATE`, base64)
    /// under the storage key.
    pub(super) fn load_sealed(
        &mut self,
        public: &str,
        private: &str,
    ) -> Result<KeyHandle, TpmError> {
        const WHAT: &str = "TPM2_Load (sealed object)";
        let public = Public::unmarshall(&b64(public, WHAT)?).map_err(command(WHAT))?;
        let private = Private::try_from(b64(private, WHAT)?).map_err(command(WHAT))?;
        let srk = self.storage_key()?;
        let loaded = self
            .ctx
            .execute_with_nullauth_session(|c| c.load(srk, private, public));
        let _ = self.ctx.flush_context(ObjectHandle::from(srk));
        loaded.map_err(command(WHAT))
    }

    /// Unseal: only while the PCRs hold the values they held at sealing
    /// ([`TpmError::PcrPolicy`] otherwise).
    pub fn unseal(&mut self, sealed: &SealedFile) -> Result<Vec<u8>, TpmError> {
        const WHAT: &str = "TPM2_Unseal";
        let object = self.load_sealed(&sealed.public, &sealed.private)?;
        let result = self
            .pcr_policy_session(SessionType::Policy, sealed.bank, &sealed.pcrs)
            .and_then(|policy| {
                let session = AuthSession::from(policy);
                let r = self
                    .ctx
                    .execute_with_session(Some(session), |c| c.unseal(ObjectHandle::from(object)));
                let _ = self.ctx.flush_context(session_object(session));
                r.map_err(|e| {
                    if is_policy_fail(&e) {
                        TpmError::PcrPolicy {
                            pcrs: sealed.pcrs.clone(),
                        }
                    } else {
                        TpmError::Command {
                            what: WHAT,
                            source: e,
                        }
                    }
                })
            });
        let _ = self.ctx.flush_context(ObjectHandle::from(object));
        Ok(result?.value().to_vec())
    }
}

/// TPM_RC_POLICY_FAIL: a policy session's conditions did not hold.
pub(super) fn is_policy_fail(e: &tss_esapi::Error) -> bool {
    matches!(e, tss_esapi::Error::Tss2Error(rc) if rc.kind() == Some(Tss2ResponseCodeKind::PolicyFail))
}

/// The handle to flush a session by.
pub(super) fn session_object(session: AuthSession) -> ObjectHandle {
    ObjectHandle::from(SessionHandle::from(session))
}
