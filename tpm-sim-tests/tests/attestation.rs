//! Remote attestation against a real swtpm: the honest path passes, and
//! every attack of the threat model is refused with its reason (a changed
//! stage, an unlogged extend, edited / reordered / truncated logs, another
//! nonce, a replayed quote, another TPM's AK, flipped bytes, an edited or
//! foreign reference manifest, a selection that omits a required PCR).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use attest::evidence::{Evidence, FORMAT};
use attest::reference::ReferenceError;
use attest::tpm::{AkAlg, AkFile, Tpm};
use attest::tpm2::PublicKey;
use attest::verify::{Check, Failure, NonceError, Nonces};
use attest::{verify, HashAlg, Reference};
use ed25519_dalek::SigningKey;
use firmware_measure::{measure, Chain};
use tpm_sim_tests::Swtpm;

const ALL_PCRS: [u32; 11] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 13];

fn sample_chain_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/boot-chain")
}

fn copy_sample_chain(to: &Path) -> PathBuf {
    for entry in std::fs::read_dir(sample_chain_dir()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    to.join("chain.toml")
}

fn org_key() -> SigningKey {
    SigningKey::generate(&mut rand_core::OsRng)
}

/// The organisation's signed reference for the sample chain, read back
/// through signature verification.
fn signed_reference(key: &SigningKey, banks: &[HashAlg]) -> Reference {
    let chain = Chain::load(&sample_chain_dir().join("chain.toml")).unwrap();
    let r =
        firmware_measure::reference(&chain, None, banks, "sample", "2026-11-23T00:00:00Z".into())
            .unwrap();
    let signed = r.sign(key).unwrap();
    Reference::verify_signed(signed.as_bytes(), &key.verifying_key()).unwrap()
}

/// A client: a swtpm, a private copy of the chain, its boot log and an AK.
struct Device {
    swtpm: Swtpm,
    dir: tempfile::TempDir,
    chain: PathBuf,
    log: PathBuf,
    ak: AkFile,
}

impl Device {
    /// A device whose chain copy is changed by `tamper` before measuring.
    fn boot(alg: AkAlg, tamper: impl FnOnce(&Path)) -> Device {
        let swtpm = Swtpm::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let chain = copy_sample_chain(dir.path());
        tamper(dir.path());
        let log = dir.path().join("boot.log");
        let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
        measure(&Chain::load(&chain).unwrap(), &mut tpm, &log).unwrap();
        let ak = tpm.create_ak(alg).unwrap();
        Device {
            swtpm,
            dir,
            chain,
            log,
            ak,
        }
    }

    fn honest() -> Device {
        Device::boot(AkAlg::EccP256, |_| {})
    }

    fn tpm(&self) -> Tpm {
        Tpm::open(&self.swtpm.tcti()).unwrap()
    }

    /// Evidence for `nonce` over `pcrs` in sha256, with `log` as the log.
    fn evidence_with_log(&self, nonce: &[u8], pcrs: &[u32], log: Vec<u8>) -> Evidence {
        let mut tpm = self.tpm();
        let selection: BTreeMap<HashAlg, BTreeSet<u32>> =
            [(HashAlg::Sha256, pcrs.iter().copied().collect())].into();
        let values = tpm.read_pcrs(&[HashAlg::Sha256], pcrs).unwrap();
        let (quote, signature) = tpm.quote(&self.ak, nonce, &selection).unwrap();
        Evidence {
            format: FORMAT.to_owned(),
            quote,
            signature,
            ak_pem: self.ak.public_pem.clone(),
            ak_public: Some(b64(&self.ak.tpm2b_public)),
            nonce: nonce.to_vec(),
            pcrs: values,
            event_logs: vec![log],
        }
    }

    fn evidence(&self, nonce: &[u8], pcrs: &[u32]) -> Evidence {
        self.evidence_with_log(nonce, pcrs, std::fs::read(&self.log).unwrap())
    }
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn ak_key(ak: &AkFile) -> PublicKey {
    PublicKey::from_pem(&ak.public_pem).unwrap()
}

fn failures_of(v: &attest::Verdict, check: Check) -> Vec<&Failure> {
    v.failures.iter().filter(|f| f.check == check).collect()
}

fn assert_only(v: &attest::Verdict, checks: &[Check]) {
    assert!(!v.trusted, "expected refusal");
    for f in &v.failures {
        assert!(checks.contains(&f.check), "unexpected failure {f:?}");
    }
    for c in checks {
        assert!(
            !failures_of(v, *c).is_empty(),
            "no {c:?} failure in {:#?}",
            v.failures
        );
    }
}

const NONCE: [u8; 32] = [7; 32];

#[test]
fn honest_device_is_trusted_with_ecc_and_rsa_aks_across_reopens() {
    let key = org_key();
    let reference = signed_reference(&key, &[HashAlg::Sha1, HashAlg::Sha256]);
    for alg in [AkAlg::EccP256, AkAlg::Rsa2048] {
        let device = Device::boot(alg, |_| {});
        // Each quote opens a new TPM context: the AK is loaded from its
        // file again, as after a process restart.
        for _ in 0..2 {
            let e = device.evidence(&NONCE, &ALL_PCRS);
            let v = verify(&e, &reference, &NONCE, Some(&ak_key(&device.ak)));
            assert!(v.trusted, "{alg:?}: {:#?}", v.failures);
            assert_eq!(v.quote.unwrap().extra_data, NONCE);
        }
        // JSON round trip of the evidence changes nothing.
        let e = device.evidence(&NONCE, &ALL_PCRS);
        let back = Evidence::from_json(e.to_json().as_bytes()).unwrap();
        assert_eq!(back, e);
        assert!(verify(&back, &reference, &NONCE, None).trusted);
    }
}

#[test]
fn changed_stage_is_named_with_expected_and_found_digests() {
    let key = org_key();
    let reference = signed_reference(&key, &[HashAlg::Sha256]);
    let device = Device::boot(AkAlg::EccP256, |dir| {
        let f = dir.join("hypervisor.bin");
        let mut bytes = std::fs::read(&f).unwrap();
        bytes[0] ^= 1;
        std::fs::write(&f, bytes).unwrap();
    });
    let e = device.evidence(&NONCE, &ALL_PCRS);
    let v = verify(&e, &reference, &NONCE, None);
    assert_only(&v, &[Check::Reference]);
    let named: Vec<_> = v
        .failures
        .iter()
        .filter_map(|f| f.stage.as_deref())
        .collect();
    assert_eq!(named, ["hypervisor"], "{:#?}", v.failures);
    let f = &v.failures[0];
    assert_eq!((f.pcr, f.bank), (Some(8), Some(HashAlg::Sha256)));
    let stage = &reference.pcrs[&8].events[0];
    assert_eq!(
        f.expected.as_deref(),
        Some(hex::encode(&stage.digests[&HashAlg::Sha256].0).as_str())
    );
    let tampered = std::fs::read(device.dir.path().join("hypervisor.bin")).unwrap();
    assert_eq!(
        f.found.as_deref(),
        Some(hex::encode(HashAlg::Sha256.hash(&tampered)).as_str())
    );
    assert!(device.chain.exists());
}

#[test]
fn an_extend_after_measuring_is_caught_by_replay_and_reference() {
    let reference = signed_reference(&org_key(), &[HashAlg::Sha256]);
    let device = Device::honest();
    device
        .tpm()
        .extend(8, &[(HashAlg::Sha256, vec![0xab; 32])])
        .unwrap();
    let v = verify(
        &device.evidence(&NONCE, &ALL_PCRS),
        &reference,
        &NONCE,
        None,
    );
    assert_only(&v, &[Check::Replay, Check::Reference]);
    for f in &v.failures {
        assert_eq!(f.pcr, Some(8), "{f:?}");
    }
}

/// The log's events as (pcr, type, digests, data), to rebuild edited logs.
fn edit_log(path: &Path, edit: impl FnOnce(&mut Vec<attest::eventlog::Event>)) -> Vec<u8> {
    let log = attest::eventlog::parse(&std::fs::read(path).unwrap()).unwrap();
    let mut events: Vec<_> = log.measured_events().cloned().collect();
    edit(&mut events);
    let mut out = attest::eventlog::EventLog::new_crypto_agile(&log.banks());
    for e in events {
        out.push(e.pcr, e.event_type, e.digests, e.data);
    }
    out.to_bytes()
}

#[test]
fn edited_reordered_or_truncated_logs_do_not_explain_the_quote() {
    let key = org_key();
    let reference = signed_reference(&key, &[HashAlg::Sha256]);
    // A tampered hypervisor whose log entry is rewritten to the reference's
    // digests: the log now matches the reference but not the TPM.
    let device = Device::boot(AkAlg::EccP256, |dir| {
        std::fs::write(dir.join("hypervisor.bin"), b"evil hypervisor").unwrap();
    });
    let forged = edit_log(&device.log, |events| {
        let i = events.iter().position(|e| e.pcr == 8).unwrap();
        for d in &mut events[i].digests {
            let alg = d.alg().unwrap();
            d.digest = reference.pcrs[&8].events[0]
                .digests
                .get(&alg)
                .map(|h| h.0.clone())
                .unwrap_or_else(|| d.digest.clone());
        }
    });
    let v = verify(
        &device.evidence_with_log(&NONCE, &ALL_PCRS, forged),
        &reference,
        &NONCE,
        None,
    );
    assert!(!v.trusted);
    assert!(
        failures_of(&v, Check::Replay)
            .iter()
            .any(|f| f.pcr == Some(8)),
        "{:#?}",
        v.failures
    );
    assert!(failures_of(&v, Check::Reference)
        .iter()
        .any(|f| f.pcr == Some(8)));

    // An honest device whose log is reordered or truncated.
    let honest = Device::honest();
    let reordered = edit_log(&honest.log, |events| {
        let a = events.iter().position(|e| e.pcr == 8).unwrap();
        let b = events.iter().rposition(|e| e.pcr == 8).unwrap();
        events.swap(a, b);
    });
    let v = verify(
        &honest.evidence_with_log(&NONCE, &ALL_PCRS, reordered),
        &reference,
        &NONCE,
        None,
    );
    assert_only(&v, &[Check::Replay]);
    assert!(v.failures.iter().all(|f| f.pcr == Some(8)));

    let truncated = edit_log(&honest.log, |events| {
        events.pop();
    });
    let v = verify(
        &honest.evidence_with_log(&NONCE, &ALL_PCRS, truncated),
        &reference,
        &NONCE,
        None,
    );
    assert_only(&v, &[Check::Replay]);
    assert!(
        v.failures.iter().all(|f| f.pcr == Some(13)),
        "{:#?}",
        v.failures
    );

    let v = verify(
        &honest.evidence_with_log(&NONCE, &ALL_PCRS, b"not a log".to_vec()),
        &reference,
        &NONCE,
        None,
    );
    assert_only(&v, &[Check::EventLog]);
}

#[test]
fn stale_and_replayed_quotes_are_refused() {
    let reference = signed_reference(&org_key(), &[HashAlg::Sha256]);
    let device = Device::honest();
    let mut nonces = Nonces::new(Duration::from_secs(60), 1000);
    let issued = nonces.issue();
    let e = device.evidence(&issued, &ALL_PCRS);
    // Quoted over an older nonce: the verifier's new nonce does not match.
    let fresh = nonces.issue();
    let v = verify(&e, &reference, &fresh, None);
    assert_only(&v, &[Check::Nonce]);
    // Honest use: the nonce is accepted once, then the replay is named.
    assert!(verify(&e, &reference, &issued, None).trusted);
    assert_eq!(nonces.consume(&issued), Ok(()));
    assert_eq!(nonces.consume(&issued), Err(NonceError::Used));
    assert_eq!(nonces.consume(&[1; 32]), Err(NonceError::Unknown));
    // A nonce that outlived its window.
    let mut short = Nonces::new(Duration::from_millis(1), 10);
    let n = short.issue();
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(short.consume(&n), Err(NonceError::Expired));
}

#[test]
fn another_tpms_attestation_key_is_refused() {
    let reference = signed_reference(&org_key(), &[HashAlg::Sha256]);
    let device = Device::honest();
    let other = Device::honest();
    let mine = device.evidence(&NONCE, &ALL_PCRS);
    let theirs = other.evidence(&NONCE, &ALL_PCRS);

    // The other TPM's quote presented with this device's AK.
    let mut forged = theirs.clone();
    forged.ak_pem = mine.ak_pem.clone();
    forged.ak_public = mine.ak_public.clone();
    let v = verify(&forged, &reference, &NONCE, None);
    assert_only(&v, &[Check::Signature]);

    // The other TPM's quote with its own AK, where this device's AK is enrolled.
    let v = verify(&theirs, &reference, &NONCE, Some(&ak_key(&device.ak)));
    assert_only(&v, &[Check::AttestationKey]);

    // An AK public area that does not match the PEM.
    let mut mixed = mine.clone();
    mixed.ak_public = theirs.ak_public.clone();
    let v = verify(&mixed, &reference, &NONCE, None);
    assert_only(&v, &[Check::AttestationKey]);
}

#[test]
fn every_flipped_byte_of_quote_or_signature_is_refused() {
    let reference = signed_reference(&org_key(), &[HashAlg::Sha256]);
    let device = Device::honest();
    let e = device.evidence(&NONCE, &ALL_PCRS);
    for i in 0..e.quote.len() {
        for bit in [0x01, 0x80] {
            let mut bad = e.clone();
            bad.quote[i] ^= bit;
            let v = verify(&bad, &reference, &NONCE, None);
            assert!(!v.trusted, "quote byte {i} bit {bit:#x}");
            assert!(
                !failures_of(&v, Check::Signature).is_empty()
                    || !failures_of(&v, Check::Quote).is_empty()
            );
        }
    }
    for i in 0..e.signature.len() {
        let mut bad = e.clone();
        bad.signature[i] ^= 0x01;
        let v = verify(&bad, &reference, &NONCE, None);
        assert!(!v.trusted, "signature byte {i}");
        assert_only(&v, &[Check::Signature]);
    }
    let ak_public = e.ak_public.clone().unwrap();
    for i in 0..ak_public.len() {
        let mut bad = e.clone();
        bad.ak_public.as_mut().unwrap()[i] ^= 0x01;
        assert!(
            !verify(&bad, &reference, &NONCE, None).trusted,
            "ak_public byte {i}"
        );
    }
    // A reported PCR value changed: the quote's digest no longer matches.
    let mut bad = e.clone();
    bad.pcrs.set(HashAlg::Sha256, 8, vec![0; 32]);
    let v = verify(&bad, &reference, &NONCE, None);
    assert!(!failures_of(&v, Check::PcrDigest).is_empty());
}

#[test]
fn edited_or_foreign_reference_manifests_are_refused() {
    let key = org_key();
    let chain = Chain::load(&sample_chain_dir().join("chain.toml")).unwrap();
    let r = firmware_measure::reference(&chain, None, &[HashAlg::Sha256], "sample", "t".into())
        .unwrap();
    let signed = r.sign(&key).unwrap();
    assert_eq!(
        Reference::verify_signed(signed.as_bytes(), &key.verifying_key()).unwrap(),
        r
    );

    // One digest changed after signing.
    let digest = hex::encode(&r.pcrs[&8].value[&HashAlg::Sha256].0);
    let edited = signed.replacen(&digest, &"0".repeat(64), 1);
    assert_ne!(edited, signed);
    assert!(matches!(
        Reference::verify_signed(edited.as_bytes(), &key.verifying_key()),
        Err(ReferenceError::BadSignature)
    ));
    // Whitespace inside the signed part counts too.
    let spaced = signed.replacen("\"name\": ", "\"name\":  ", 1);
    assert!(matches!(
        Reference::verify_signed(spaced.as_bytes(), &key.verifying_key()),
        Err(ReferenceError::BadSignature)
    ));
    // Signed by another key.
    let other = org_key();
    let foreign = r.sign(&other).unwrap();
    assert!(matches!(
        Reference::verify_signed(foreign.as_bytes(), &key.verifying_key()),
        Err(ReferenceError::WrongKey { .. })
    ));
    // Another key's signature under our key id.
    let our_id = attest::reference::key_id(&key.verifying_key());
    let their_id = attest::reference::key_id(&other.verifying_key());
    let relabelled = foreign.replace(&their_id, &our_id);
    assert!(matches!(
        Reference::verify_signed(relabelled.as_bytes(), &key.verifying_key()),
        Err(ReferenceError::BadSignature)
    ));
    // Not JSON, truncated.
    assert!(
        Reference::verify_signed(&signed.as_bytes()[..signed.len() / 2], &key.verifying_key())
            .is_err()
    );
}

#[test]
fn a_selection_that_omits_required_pcrs_is_refused() {
    let reference = signed_reference(&org_key(), &[HashAlg::Sha256]);
    let device = Device::honest();
    let e = device.evidence(&NONCE, &[0, 1, 2, 3, 4, 5, 6, 7]);
    let v = verify(&e, &reference, &NONCE, None);
    assert_only(&v, &[Check::PcrSelection]);
    let missing: BTreeSet<u32> = v.failures.iter().filter_map(|f| f.pcr).collect();
    assert_eq!(missing, [8, 9, 13].into());

    // Reported values that were not quoted are refused, not used.
    let mut extra = device.evidence(&NONCE, &ALL_PCRS);
    extra.pcrs.set(HashAlg::Sha256, 16, vec![0; 32]);
    let v = verify(&extra, &reference, &NONCE, None);
    assert_only(&v, &[Check::PcrSelection]);

    // A quoted PCR whose value is not reported.
    let mut hidden = device.evidence(&NONCE, &ALL_PCRS);
    hidden.pcrs.retain_pcrs(|p| p != 8);
    assert!(!verify(&hidden, &reference, &NONCE, None).trusted);
}

#[test]
fn sealed_secret_unseals_only_while_its_pcrs_hold() {
    let device = Device::honest();
    let mut tpm = device.tpm();
    let sealed = tpm.seal(HashAlg::Sha256, &[4, 8, 9], b"disk key").unwrap();
    drop(tpm);
    assert_eq!(device.tpm().unseal(&sealed).unwrap(), b"disk key");
    // A PCR outside the policy changes nothing.
    let mut tpm = device.tpm();
    tpm.extend(16, &[(HashAlg::Sha256, vec![1; 32])]).unwrap();
    assert_eq!(tpm.unseal(&sealed).unwrap(), b"disk key");
    tpm.extend(9, &[(HashAlg::Sha256, vec![1; 32])]).unwrap();
    assert!(matches!(
        tpm.unseal(&sealed),
        Err(attest::tpm::TpmError::PcrPolicy { .. })
    ));
    assert!(matches!(
        tpm.seal(HashAlg::Sha256, &[4], &[0; 129]),
        Err(attest::tpm::TpmError::SecretSize { size: 129 })
    ));
    // Sealed on another TPM: refused.
    let other = Device::honest();
    assert!(other.tpm().unseal(&sealed).is_err());
}

#[test]
fn credential_activation_proves_the_ak_lives_beside_the_certified_ek() {
    let swtpm = Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let cert = tpm.ek_certificate().unwrap();
    let ek = attest::ekcert::CaSet::from_dir(&swtpm.ek_ca_dir())
        .unwrap()
        .check(&cert)
        .unwrap();
    let ak = tpm.create_ak(AkAlg::EccP256).unwrap();
    let name = hex::decode(&ak.name).unwrap();
    let made =
        attest::credential::make_credential(&ek.n, &ek.e, &name, b"gateway challenge").unwrap();
    let got = tpm
        .activate_credential(&ak, &made.id_object, &made.encrypted_secret)
        .unwrap();
    assert_eq!(got, b"gateway challenge");

    // Made for another key's name: the TPM refuses (integrity check).
    let other_ak = tpm.create_ak(AkAlg::EccP256).unwrap();
    let other_name = hex::decode(&other_ak.name).unwrap();
    let wrong = attest::credential::make_credential(&ek.n, &ek.e, &other_name, b"x").unwrap();
    assert!(tpm
        .activate_credential(&ak, &wrong.id_object, &wrong.encrypted_secret)
        .is_err());
    // A flipped byte anywhere in the blob: refused.
    let mut bad = made.id_object.clone();
    bad[5] ^= 1;
    assert!(tpm
        .activate_credential(&ak, &bad, &made.encrypted_secret)
        .is_err());

    // Another TPM's CA does not vouch for this EK.
    let other = Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let err = attest::ekcert::CaSet::from_dir(&other.ek_ca_dir())
        .unwrap()
        .check(&cert)
        .unwrap_err();
    assert!(
        matches!(
            err,
            attest::ekcert::EkError::UnknownIssuer { .. }
                | attest::ekcert::EkError::BadSignature { .. }
        ),
        "{err}"
    );
    // A credential for this EK cannot be activated by the other TPM.
    let mut other_tpm = Tpm::open(&other.tcti()).unwrap();
    let other_ak = other_tpm.create_ak(AkAlg::EccP256).unwrap();
    let for_other = attest::credential::make_credential(
        &ek.n,
        &ek.e,
        &hex::decode(&other_ak.name).unwrap(),
        b"x",
    )
    .unwrap();
    assert!(other_tpm
        .activate_credential(&other_ak, &for_other.id_object, &for_other.encrypted_secret)
        .is_err());
}

#[test]
fn credentials_made_by_tpm2_tools_activate_here() {
    let swtpm = Swtpm::start_with_ek_cert(&["sha256"]).unwrap();
    let mut tpm = Tpm::open(&swtpm.tcti()).unwrap();
    let cert = tpm.ek_certificate().unwrap();
    let ak = tpm.create_ak(AkAlg::EccP256).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ek_der = dir.path().join("ek.der");
    std::fs::write(&ek_der, &cert).unwrap();
    let ek_pem = dir.path().join("ek.pem");
    let ok = std::process::Command::new("openssl")
        .args(["x509", "-inform", "der", "-in"])
        .arg(&ek_der)
        .args(["-pubkey", "-noout", "-out"])
        .arg(&ek_pem)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::write(dir.path().join("secret.bin"), b"made by tpm2-tools").unwrap();
    let out = std::process::Command::new("tpm2_makecredential")
        .args(["-T", "none", "-G", "rsa", "-u"])
        .arg(&ek_pem)
        .arg("-s")
        .arg(dir.path().join("secret.bin"))
        .args(["-n", &ak.name, "-o"])
        .arg(dir.path().join("cred.out"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // cred.out: magic, version, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET.
    let blob = std::fs::read(dir.path().join("cred.out")).unwrap();
    assert_eq!(&blob[..8], &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1]);
    let n = u16::from_be_bytes([blob[8], blob[9]]) as usize;
    let id = &blob[10..10 + n];
    let m = u16::from_be_bytes([blob[10 + n], blob[11 + n]]) as usize;
    let secret = &blob[12 + n..12 + n + m];
    assert_eq!(
        tpm.activate_credential(&ak, id, secret).unwrap(),
        b"made by tpm2-tools"
    );
}

/// The PCR values of `pcrs` in sha256, now.
fn pcr_values(tpm: &mut Tpm, pcrs: &[u32]) -> std::collections::BTreeMap<u32, Vec<u8>> {
    let banks = tpm.read_pcrs(&[HashAlg::Sha256], pcrs).unwrap();
    pcrs.iter()
        .map(|p| (*p, banks.get(HashAlg::Sha256, *p).unwrap().to_vec()))
        .collect()
}

/// A device with "disk key" sealed to the organisation's policy key: the
/// device, the key, an open connection and the sealed file.
fn sealed_to_policy_key() -> (
    Device,
    p256::ecdsa::SigningKey,
    Tpm,
    attest::tpm::AuthorizedSealed,
) {
    let device = Device::honest();
    let org = p256::ecdsa::SigningKey::from_slice(&[42u8; 32]).unwrap();
    let mut tpm = device.tpm();
    let sealed = tpm
        .seal_authorized(org.verifying_key(), b"disk key")
        .unwrap();
    (device, org, tpm, sealed)
}

/// Run a tpm2-tools program against `device`'s swtpm; its standard output.
fn tpm2_tool(device: &Device, program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .env("TPM2TOOLS_TCTI", device.swtpm.tcti())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_key_sealed_to_the_policy_key_survives_an_update_with_a_newly_signed_policy() {
    use attest::tpm::SignedPolicy;
    let (device, org, mut tpm, sealed) = sealed_to_policy_key();
    let pcrs = [4u32, 8, 9];
    // Version 1: the organisation signs the PCR values of the image it built.
    let v1 = SignedPolicy::sign(&org, 1, 1, HashAlg::Sha256, &pcr_values(&mut tpm, &pcrs)).unwrap();
    let (secret, mut tpm) = tpm
        .unseal_authorized(&sealed, org.verifying_key(), &v1)
        .unwrap();
    assert_eq!(secret, b"disk key");
    // The update changes PCR 9: v1's policy no longer unseals ...
    tpm.extend(9, &[(HashAlg::Sha256, vec![7; 32])]).unwrap();
    let after = pcr_values(&mut tpm, &pcrs);
    assert!(matches!(
        tpm.unseal_authorized(&sealed, org.verifying_key(), &v1),
        Err(attest::tpm::TpmError::PcrPolicy { .. })
    ));
    // ... the policy signed for the new values does, with the same sealed
    // object: no re-sealing.
    let v2 = SignedPolicy::sign(&org, 2, 1, HashAlg::Sha256, &after).unwrap();
    let (secret, _) = device
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &v2)
        .unwrap();
    assert_eq!(secret, b"disk key");
    // A policy signed by another key, or one whose values were edited after
    // signing, is refused; so is a secret sealed to another policy key.
    let rogue = p256::ecdsa::SigningKey::from_slice(&[43u8; 32]).unwrap();
    let forged = SignedPolicy::sign(&rogue, 2, 1, HashAlg::Sha256, &after).unwrap();
    assert!(device
        .tpm()
        .unseal_authorized(&sealed, rogue.verifying_key(), &forged)
        .is_err());
    assert!(device
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &forged)
        .is_err());
    let mut edited = v1.clone();
    edited.pcrs = v2.pcrs.clone();
    assert!(device
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &edited)
        .is_err());
    // Sealed on another TPM: refused.
    let other = Device::honest();
    assert!(other
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &v2)
        .is_err());
}

#[test]
fn the_epoch_counter_computes_to_the_name_the_tpm_gives_it() {
    let device = Device::honest();
    let mut tpm = device.tpm();
    assert_eq!(tpm.epoch_counter(attest::tpm::EPOCH_COUNTER).unwrap(), None);
    let start = tpm
        .ensure_epoch_counter(attest::tpm::EPOCH_COUNTER)
        .unwrap();
    assert!(start >= 1);
    drop(tpm);
    // tpm2-tools reads the same name: what every signed policy covers.
    let index = format!("{:#x}", attest::tpm::EPOCH_COUNTER);
    let text = tpm2_tool(&device, "tpm2_nvreadpublic", &[&index]);
    let name = hex::encode(attest::tpm::counter_name(attest::tpm::EPOCH_COUNTER));
    assert!(text.contains(&format!("name: {name}")), "{text}");
}

/// An older signed policy, revoked by a newer epoch: the TPM itself
/// refuses it (TPM2_PolicyNV), also after the counter is undefined and
/// defined again by someone holding the owner's (empty) authorization, as
/// a student with root or anyone booting another OS on the device would.
#[test]
fn raising_the_epoch_revokes_older_policies_even_when_the_counter_is_defined_again() {
    use attest::tpm::{SignedPolicy, TpmError, EPOCH_COUNTER};
    let (device, org, mut tpm, sealed) = sealed_to_policy_key();
    let pcrs = [4u32, 8, 9];
    let start = tpm.epoch_counter(EPOCH_COUNTER).unwrap().unwrap();
    let values = pcr_values(&mut tpm, &pcrs);
    // v1 (epoch = the counter now) and a security update v2 one epoch on,
    // for the same chain values (the rollback: the same boot, older policy).
    let v1 = SignedPolicy::sign(&org, 1, start, HashAlg::Sha256, &values).unwrap();
    let v2 = SignedPolicy::sign(&org, 2, start + 1, HashAlg::Sha256, &values).unwrap();
    let (secret, tpm) = tpm
        .unseal_authorized(&sealed, org.verifying_key(), &v1)
        .unwrap();
    assert_eq!(secret, b"disk key");
    let (_, mut tpm) = tpm
        .unseal_authorized(&sealed, org.verifying_key(), &v2)
        .unwrap();
    // Before the device moves to v2, both hold; once it has, v1 is revoked.
    assert_eq!(
        tpm.raise_epoch_counter(EPOCH_COUNTER, start + 1).unwrap(),
        (start, start + 1)
    );
    match tpm.unseal_authorized(&sealed, org.verifying_key(), &v1) {
        Err(TpmError::Revoked { epoch, counter }) => {
            assert_eq!((epoch, counter), (start, start + 1));
        }
        other => panic!("v1 after the raise: {other:?}"),
    }
    let (secret, mut tpm) = device
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &v2)
        .unwrap();
    assert_eq!(secret, b"disk key");
    // Raising is idempotent, never lowers, and refuses a wild jump.
    assert_eq!(
        tpm.raise_epoch_counter(EPOCH_COUNTER, start).unwrap(),
        (start + 1, start + 1)
    );
    assert!(matches!(
        tpm.raise_epoch_counter(EPOCH_COUNTER, start + 1 + attest::tpm::MAX_RAISE + 1),
        Err(TpmError::EpochJump { .. })
    ));
    // An edited epoch breaks the signature.
    let mut edited = v1.clone();
    edited.epoch = start + 1;
    assert!(device
        .tpm()
        .unseal_authorized(&sealed, org.verifying_key(), &edited)
        .is_err());
    // The attack: undefine the counter and define it again.
    drop(tpm);
    tpm2_tool(
        &device,
        "tpm2_nvundefine",
        &[&format!("{EPOCH_COUNTER:#x}")],
    );
    let mut tpm = device.tpm();
    assert_eq!(tpm.epoch_counter(EPOCH_COUNTER).unwrap(), None);
    let again = tpm.ensure_epoch_counter(EPOCH_COUNTER).unwrap();
    assert!(
        again > start + 1,
        "a counter defined again starts above every old value: {again}"
    );
    assert!(matches!(
        tpm.unseal_authorized(&sealed, org.verifying_key(), &v1),
        Err(TpmError::Revoked { .. })
    ));
}
