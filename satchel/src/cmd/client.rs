//! `satchel client enroll` and `satchel client attest`: the device side of
//! enrollment and attestation against the gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use attest::tpm::{AkAlg, AkFile};
use attest::HashAlg;
use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::json;

use super::measure::TpmArgs;
use super::Exit;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Subcommand)]
pub(crate) enum ClientCmd {
    /// Enroll this device: prove its AK lives in the TPM its EK certificate names.
    Enroll(EnrollArgs),
    /// Attest: quote for the gateway and receive a short-lived device certificate.
    Attest(AttestArgs),
}

/// The gateway and the CA it is pinned to.
#[derive(Debug, Args)]
pub(crate) struct GatewayArgs {
    /// The gateway, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "SATCHEL_GATEWAY", value_name = "URL")]
    gateway: String,
    /// The gateway CA (its data directory's ca.crt).
    #[arg(long, value_name = "CA.crt")]
    ca: PathBuf,
    /// This device's directory (AK, device certificate and key).
    #[arg(long, value_name = "CDIR")]
    data: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client enroll --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --tpm swtpm:host=127.0.0.1,port=2321 --device-id laptop-17 --token TOKEN

Makes an AK (CDIR/ak.json), sends it with the EK certificate and the token, activates the
credential the gateway answers with, and sends the secret back.")]
pub(crate) struct EnrollArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    #[command(flatten)]
    tpm: TpmArgs,
    /// This device's id (the token's).
    #[arg(long)]
    device_id: String,
    /// The one-time token from `satchel gateway enroll-token`.
    #[arg(long)]
    token: String,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel client attest --gateway https://127.0.0.1:8443 --ca gw/ca.crt --data client \\
      --tpm swtpm:host=127.0.0.1,port=2321 --log boot.log

Writes CDIR/device.crt and CDIR/device.key (0600) when the gateway trusts the quote; on
refusal, prints every reason and exits 1.")]
pub(crate) struct AttestArgs {
    #[command(flatten)]
    gw: GatewayArgs,
    #[command(flatten)]
    tpm: TpmArgs,
    /// Event logs of this boot, in measurement order.
    #[arg(long, value_name = "LOG", required = true)]
    log: Vec<PathBuf>,
}

pub(crate) fn run(cmd: ClientCmd, config: Option<&Path>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match cmd {
        ClientCmd::Enroll(a) => rt.block_on(enroll(a, config)),
        ClientCmd::Attest(a) => rt.block_on(attest(a, config)),
    }
}

fn client(
    gw: &GatewayArgs,
    identity: Option<(&str, &str)>,
) -> anyhow::Result<gateway::GatewayClient> {
    let ca =
        std::fs::read_to_string(&gw.ca).with_context(|| format!("reading {}", gw.ca.display()))?;
    Ok(gateway::GatewayClient::new(&gw.gateway, &ca, identity)?)
}

fn refused(what: &str, status: u16, body: &serde_json::Value) -> anyhow::Error {
    let detail = body["detail"].as_str().unwrap_or("no detail");
    let mut msg = format!("{what} refused ({status}): {detail}");
    if let Some(f) = body["failures"].as_array() {
        for x in f {
            msg.push_str(&format!("\n  {}", x["message"].as_str().unwrap_or("?")));
            if let (Some(e), Some(g)) = (x["expected"].as_str(), x["found"].as_str()) {
                msg.push_str(&format!("; expected {e}, found {g}"));
            }
        }
    }
    Exit::new(1, msg).into()
}

async fn enroll(a: EnrollArgs, config: Option<&Path>) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.gw.data)
        .with_context(|| format!("creating {}", a.gw.data.display()))?;
    let mut tpm = a.tpm.open(config)?;
    let ek = tpm.ek_certificate().context("reading the EK certificate")?;
    let ak = tpm.create_ak(AkAlg::EccP256)?;
    let c = client(&a.gw, None)?;
    let (status, body) = c
        .post(
            "/v1/enroll",
            &json!({
                "device_id": a.device_id,
                "token": a.token,
                "ek_cert": B64.encode(&ek),
                "ak_pem": ak.public_pem,
                "ak_public": ak.tpm2b_public,
            }),
        )
        .await?;
    if status != 200 {
        return Err(refused("enrollment", status, &body));
    }
    let id = B64
        .decode(body["id_object"].as_str().unwrap_or(""))
        .context("id_object")?;
    let secret = B64
        .decode(body["encrypted_secret"].as_str().unwrap_or(""))
        .context("encrypted_secret")?;
    let recovered = tpm.activate_credential(&ak, &id, &secret)?;
    let (status, done) = c
        .post(
            "/v1/enroll/finish",
            &json!({"challenge": body["challenge"], "secret": B64.encode(&recovered)}),
        )
        .await?;
    if status != 200 {
        return Err(refused("enrollment", status, &done));
    }
    super::write_atomic(
        &a.gw.data.join("ak.json"),
        serde_json::to_string_pretty(&ak)?.as_bytes(),
    )?;
    super::write_atomic(
        &a.gw.data.join("device.json"),
        serde_json::to_string_pretty(&json!({"device_id": a.device_id, "gateway": a.gw.gateway}))?
            .as_bytes(),
    )?;
    println!("enrolled {} (groups {})", a.device_id, done["groups"]);
    Ok(())
}

async fn attest(a: AttestArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let dev: serde_json::Value = super::attest::read_json(
        &a.gw.data.join("device.json"),
        "a device file (enroll first)",
    )?;
    let device_id = dev["device_id"].as_str().unwrap_or("").to_owned();
    let ak: AkFile = super::attest::read_json(&a.gw.data.join("ak.json"), "an AK file")?;
    let logs = a
        .log
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let c = client(&a.gw, None)?;
    let (status, n) = c
        .post("/v1/attest/nonce", &json!({"device_id": device_id}))
        .await?;
    if status != 200 {
        return Err(refused("attestation", status, &n));
    }
    let nonce = hex::decode(n["nonce"].as_str().unwrap_or("")).context("nonce")?;
    let pcrs: Vec<u32> = serde_json::from_value(n["pcrs"].clone()).context("pcrs")?;
    let bank = HashAlg::Sha256;
    let mut tpm = a.tpm.open(config)?;
    let selection: BTreeMap<HashAlg, BTreeSet<u32>> =
        [(bank, pcrs.iter().copied().collect())].into();
    let evidence = tpm.evidence(&ak, &nonce, &selection, logs)?;
    drop(tpm);
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_id.clone());
    let csr = params.serialize_request(&key)?.pem()?;
    let evidence_json: serde_json::Value = serde_json::from_str(&evidence.to_json())?;
    let (status, body) = c
        .post(
            "/v1/attest",
            &json!({"device_id": device_id, "evidence": evidence_json, "csr": csr}),
        )
        .await?;
    if status != 200 {
        return Err(refused("attestation", status, &body));
    }
    let cert = body["certificate"].as_str().unwrap_or("");
    super::write_secret(
        &a.gw.data.join("device.key"),
        key.serialize_pem().as_bytes(),
    )?;
    super::write_atomic(&a.gw.data.join("device.crt"), cert.as_bytes())?;
    println!(
        "attested: certificate for {device_id} in {} (valid {} s)",
        a.gw.data.join("device.crt").display(),
        body["expires_in_s"]
    );
    Ok(())
}
