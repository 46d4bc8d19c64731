//! Enrollment, the device's half: make an AK, send it with the EK
//! certificate and the one-time token, activate the credential the gateway
//! answers with (only the TPM holding that EK can), send the secret back,
//! and keep the AK and the device id (docs/enrollment.md).

use attest::tpm::{AkAlg, Tpm};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use protocol::enroll::{Challenge, EnrollRequest, Enrolled, FinishRequest};
use protocol::paths;

use crate::identity::{DeviceFile, GatewayConfig};
use crate::FlowError;

/// Enroll `device_id` with `token` at the gateway, with the AK made in
/// `tpm`. Writes `ak.json` and `device.json` into the device directory.
pub async fn enroll(
    gw: &GatewayConfig,
    tpm: &mut Tpm,
    device_id: &str,
    token: &str,
) -> Result<Enrolled, FlowError> {
    persist::file::create_dir_all(&gw.data)?;
    let ek = tpm.ek_certificate()?;
    let ak = tpm.create_ak(AkAlg::EccP256)?;
    let c = gw.anonymous_client()?;
    let request = EnrollRequest {
        device_id: device_id.to_owned(),
        token: token.to_owned(),
        ek_cert: B64.encode(&ek),
        ak_pem: ak.public_pem.clone(),
        ak_public: ak.tpm2b_public.clone(),
    };
    let challenge: Challenge = c.call("enrollment", paths::ENROLL, &request).await?;
    let id = decode(&challenge.id_object, "id_object")?;
    let secret = decode(&challenge.encrypted_secret, "encrypted_secret")?;
    let recovered = tpm.activate_credential(&ak, &id, &secret)?;
    let finish = FinishRequest {
        challenge: challenge.challenge,
        secret: B64.encode(&recovered),
    };
    let done: Enrolled = c.call("enrollment", paths::ENROLL_FINISH, &finish).await?;
    let dir = gw.dir();
    persist::write_atomic(&dir.ak_file(), &pretty(&ak)?)?;
    let file = DeviceFile {
        device_id: device_id.to_owned(),
        gateway: gw.url.clone(),
    };
    persist::write_atomic(&dir.device_file(), &pretty(&file)?)?;
    Ok(done)
}

fn decode(text: &str, field: &'static str) -> Result<Vec<u8>, FlowError> {
    B64.decode(text).map_err(|_| FlowError::Answer { field })
}

pub(crate) fn pretty<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, FlowError> {
    serde_json::to_vec_pretty(v).map_err(FlowError::Encode)
}
