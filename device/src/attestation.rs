//! Attestation, the device's half: ask the gateway for a nonce and the PCRs
//! to quote, quote them in the TPM with this boot's event logs, send the
//! evidence with a fresh key's certificate request, and keep the
//! short-lived device certificate the gateway issues when it trusts the
//! evidence.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use attest::tpm::{AkFile, Tpm};
use attest::HashAlg;
use protocol::attest::{AttestRequest, Attested, Nonce, NonceRequest};
use protocol::paths;

use crate::identity::{read_json, GatewayConfig};
use crate::FlowError;

/// Quote for the gateway with the TPM at `tcti` and store the device
/// certificate it issues. The device id and the certificate's lifetime in
/// seconds.
pub async fn attest_once(
    gw: &GatewayConfig,
    tcti: &str,
    logs: &[PathBuf],
) -> Result<(String, u64), FlowError> {
    let dir = gw.dir();
    let device_id = dir.read_device()?.device_id;
    let ak: AkFile = read_json(&dir.ak_file(), "an AK file", "; enroll first")?;
    let logs = read_logs(logs)?;
    let c = gw.anonymous_client()?;
    let ask = NonceRequest {
        device_id: device_id.clone(),
    };
    let n: Nonce = c.call("attestation", paths::ATTEST_NONCE, &ask).await?;
    let nonce = hex::decode(&n.nonce).map_err(|_| FlowError::Answer { field: "nonce" })?;
    let selection: BTreeMap<HashAlg, BTreeSet<u32>> =
        [(HashAlg::Sha256, n.pcrs.iter().copied().collect())].into();
    let evidence = {
        let mut tpm = Tpm::open(tcti)?;
        tpm.evidence(&ak, &nonce, &selection, logs)?
    };
    let (key, csr) = certificate_request(&device_id)?;
    let request = AttestRequest {
        device_id: device_id.clone(),
        evidence: serde_json::to_value(&evidence).map_err(FlowError::Encode)?,
        csr,
    };
    let done: Attested = c.call("attestation", paths::ATTEST, &request).await?;
    persist::write_secret(&dir.key(), key.serialize_pem().as_bytes())?;
    persist::write_atomic(&dir.certificate(), done.certificate.as_bytes())?;
    Ok((device_id, done.expires_in_s))
}

fn read_logs(paths: &[PathBuf]) -> Result<Vec<Vec<u8>>, FlowError> {
    paths
        .iter()
        .map(|p| {
            std::fs::read(p).map_err(|source| FlowError::Log {
                path: p.clone(),
                source,
            })
        })
        .collect()
}

/// A fresh P-256 key and a PKCS#10 request (PEM) naming `device_id`.
fn certificate_request(device_id: &str) -> Result<(rcgen::KeyPair, String), FlowError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_id.to_owned());
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}
