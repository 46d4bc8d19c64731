//! `satchel attest ...`: make an attestation key, quote, verify evidence,
//! and the enrollment primitives (EK certificate, credential activation).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use attest::evidence::Evidence;
use attest::tpm::{AkAlg, AkFile};
use attest::tpm2::PublicKey;
use attest::{HashAlg, Reference};
use base64::Engine as _;
use clap::{Args, Subcommand};

use super::measure::{parse_pcr_list, PcrList, TpmArgs};
use super::Exit;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Subcommand)]
pub(crate) enum AttestCmd {
    /// Create an attestation key under the endorsement key and write AK.json.
    Ak(AkArgs),
    /// Quote PCRs with a nonce and write the evidence JSON.
    Quote(QuoteArgs),
    /// Verify evidence against a signed reference manifest (no TPM needed).
    Verify(VerifyArgs),
    /// Read the EK certificate from the TPM, and check it against a CA directory.
    EkCert(EkCertArgs),
    /// Make a credential for an EK certificate and an AK name (verifier side, no TPM).
    MakeCredential(MakeCredentialArgs),
    /// Recover a credential made for this TPM's EK and AK (client side).
    ActivateCredential(ActivateArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest ak --tpm swtpm:host=127.0.0.1,port=2321 --out ak.json
  satchel attest ak --alg rsa-2048 --out ak-rsa.json

The AK is a restricted signing key under the endorsement hierarchy. AK.json keeps its
public part (PEM, TPM2B_PUBLIC, name) and its private part wrapped by this TPM's EK, so
later commands load it again after a restart; the file is useless on any other TPM.")]
pub(crate) struct AkArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// Key algorithm: ecc-p256 or rsa-2048.
    #[arg(long, default_value = "ecc-p256")]
    alg: AkAlg,
    /// Where to write the AK file (refuses to overwrite).
    #[arg(long, value_name = "AK.json")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest quote --ak ak.json --nonce $(openssl rand -hex 32) --pcrs 0-7,16 --log boot.log --out evidence.json
  satchel attest quote --ak ak.json --nonce 00112233 --pcrs 0-9,13 --bank sha256 \\
      --log /sys/kernel/security/tpm0/binary_bios_measurements --log /var/lib/satchel/boot.log --out e.json

The evidence holds the quote exactly as signed, the signature, the AK, the nonce, the
quoted PCR values and the event logs (base64). `tpm2_checkquote` accepts the quote and
signature extracted from it.")]
pub(crate) struct QuoteArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// The AK file from `satchel attest ak`.
    #[arg(long, value_name = "AK.json")]
    ak: PathBuf,
    /// The verifier's nonce, hex (at most 64 bytes).
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// PCRs to quote: numbers and ranges.
    #[arg(long, value_parser = parse_pcr_list, default_value = "0-7")]
    pcrs: PcrList,
    /// Banks to quote.
    #[arg(long, value_delimiter = ',', default_value = "sha256")]
    bank: Vec<HashAlg>,
    /// Event logs that explain the PCRs, in measurement order.
    #[arg(long, value_name = "LOG", required = true)]
    log: Vec<PathBuf>,
    /// Where to write the evidence JSON.
    #[arg(long, value_name = "EVIDENCE.json")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest verify --evidence evidence.json --nonce 0011... --reference reference.json --reference-key org.key.pub
  satchel attest verify --evidence e.json --nonce 0011... --reference r.json --reference-key org.key.pub --json

Exit status: 0 trusted, 1 not trusted (every failure on stderr, or in the JSON, naming the
PCR, the stage and the expected and found digests), 2 unusable input.")]
pub(crate) struct VerifyArgs {
    /// The evidence JSON.
    #[arg(long, value_name = "FILE")]
    evidence: PathBuf,
    /// The nonce the verifier issued, hex.
    #[arg(long, value_name = "HEX")]
    nonce: String,
    /// The signed reference manifest.
    #[arg(long, value_name = "REF")]
    reference: PathBuf,
    /// The public key the reference must be signed with.
    #[arg(long, value_name = "KEY.pub")]
    reference_key: PathBuf,
    /// Accept only this attestation key (the device's enrolled AK, PEM or AK.json).
    #[arg(long, value_name = "FILE")]
    ak: Option<PathBuf>,
    /// Print the verdict as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest ek-cert --tpm swtpm:host=127.0.0.1,port=2321 --out ek.der
  satchel attest ek-cert --ca-dir /etc/satchel/ek-ca")]
pub(crate) struct EkCertArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// Check the certificate chains to a CA in this directory (PEM or DER files).
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// Write the certificate (DER) here.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest make-credential --ek-cert ek.der --ca-dir ek-ca --ak ak.json --secret secret.bin --out cred.json

The credential can be recovered only by the TPM that holds the EK and an AK of this name.")]
pub(crate) struct MakeCredentialArgs {
    /// The EK certificate (DER or PEM).
    #[arg(long, value_name = "FILE")]
    ek_cert: PathBuf,
    /// Check the EK certificate against this CA directory first.
    #[arg(long, value_name = "DIR")]
    ca_dir: Option<PathBuf>,
    /// The AK file (its name is bound into the credential).
    #[arg(long, value_name = "AK.json")]
    ak: PathBuf,
    /// The secret (1 to 32 bytes).
    #[arg(long, value_name = "FILE")]
    secret: PathBuf,
    /// Where to write {"id_object", "encrypted_secret"} (base64).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel attest activate-credential --ak ak.json --credential cred.json --out secret.bin")]
pub(crate) struct ActivateArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// The AK file.
    #[arg(long, value_name = "AK.json")]
    ak: PathBuf,
    /// The credential from make-credential.
    #[arg(long, value_name = "FILE")]
    credential: PathBuf,
    /// Where to write the recovered secret [default: hex on stdout].
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

pub(crate) fn run(cmd: AttestCmd, config: Option<&Path>) -> anyhow::Result<()> {
    match cmd {
        AttestCmd::Ak(a) => ak(a, config),
        AttestCmd::Quote(a) => quote(a, config),
        AttestCmd::Verify(a) => verify(a),
        AttestCmd::EkCert(a) => ek_cert(a, config),
        AttestCmd::MakeCredential(a) => make_credential(a),
        AttestCmd::ActivateCredential(a) => activate(a, config),
    }
}

/// Read a JSON file into `T`, naming the file on error.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{} is not {what}", path.display()))
}

fn ak(a: AkArgs, config: Option<&Path>) -> anyhow::Result<()> {
    anyhow::ensure!(
        !a.out.exists(),
        "{} exists; refusing to overwrite an AK",
        a.out.display()
    );
    let mut tpm = a.tpm.open(config)?;
    let file = tpm.create_ak(a.alg)?;
    super::write_atomic(&a.out, serde_json::to_string_pretty(&file)?.as_bytes())?;
    println!(
        "wrote {} ({:?} AK, name {})",
        a.out.display(),
        file.alg,
        file.name
    );
    Ok(())
}

fn parse_nonce(hex_nonce: &str) -> anyhow::Result<Vec<u8>> {
    let n = hex::decode(hex_nonce.trim()).map_err(|_| anyhow::anyhow!("--nonce is not hex"))?;
    anyhow::ensure!(
        !n.is_empty() && n.len() <= 64,
        "--nonce must be 1 to 64 bytes, not {}",
        n.len()
    );
    Ok(n)
}

fn quote(a: QuoteArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let nonce = parse_nonce(&a.nonce)?;
    let ak: AkFile = read_json(&a.ak, "an AK file")?;
    let logs = a
        .log
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let selection: BTreeMap<HashAlg, BTreeSet<u32>> = a
        .bank
        .iter()
        .map(|b| (*b, a.pcrs.0.iter().copied().collect()))
        .collect();
    let mut tpm = a.tpm.open(config)?;
    let evidence = tpm.evidence(&ak, &nonce, &selection, logs)?;
    super::write_atomic(&a.out, evidence.to_json().as_bytes())?;
    println!(
        "wrote {}: quote of PCRs {:?} in {} over nonce {}",
        a.out.display(),
        a.pcrs.0,
        a.bank
            .iter()
            .map(|b| b.name())
            .collect::<Vec<_>>()
            .join(","),
        a.nonce
    );
    Ok(())
}

/// Read the reference manifest and check its signature. Every failure here
/// is "not trusted" (exit 1) except an unreadable file (exit 2).
pub(crate) fn load_reference(path: &Path, key: &Path) -> Result<Reference, Exit> {
    let key = persist::keys::read_public(key)
        .map_err(|e| Exit::new(2, format!("reference key {}: {e}", key.display())))?;
    let bytes = std::fs::read(path)
        .map_err(|e| Exit::new(2, format!("reading {}: {e}", path.display())))?;
    Reference::verify_signed(&bytes, &key).map_err(|e| {
        Exit::new(
            1,
            format!("not trusted: reference manifest {}: {e}", path.display()),
        )
    })
}

fn verify(a: VerifyArgs) -> anyhow::Result<()> {
    let nonce =
        hex::decode(a.nonce.trim()).map_err(|_| Exit::new(2, "--nonce is not hex".to_owned()))?;
    let bytes = std::fs::read(&a.evidence)
        .map_err(|e| Exit::new(2, format!("reading {}: {e}", a.evidence.display())))?;
    let evidence = Evidence::from_json(&bytes)
        .map_err(|e| Exit::new(2, format!("{}: {e}", a.evidence.display())))?;
    let pinned = match &a.ak {
        Some(p) => Some(read_ak_key(p).map_err(|e| Exit::new(2, format!("{e:#}")))?),
        None => None,
    };
    let reference = load_reference(&a.reference, &a.reference_key)?;
    let verdict = attest::verify(&evidence, &reference, &nonce, pinned.as_ref());
    if a.json {
        let mut out = std::io::stdout().lock();
        serde_json::to_writer_pretty(&mut out, &verdict)?;
        writeln!(out)?;
    } else if verdict.trusted {
        println!(
            "trusted: {} PCRs match reference {:?}",
            reference.pcrs.len(),
            reference.name
        );
    }
    if verdict.trusted {
        return Ok(());
    }
    if !a.json {
        for f in &verdict.failures {
            eprintln!("  {f}");
        }
    }
    Err(Exit::new(
        1,
        format!("not trusted: {} failures", verdict.failures.len()),
    )
    .into())
}

/// An AK's public key from a PEM file or an AK.json.
fn read_ak_key(path: &Path) -> anyhow::Result<PublicKey> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let pem = match serde_json::from_str::<AkFile>(&text) {
        Ok(f) => f.public_pem,
        Err(_) => text,
    };
    PublicKey::from_pem(&pem).with_context(|| format!("{}", path.display()))
}

fn ek_cert(a: EkCertArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let mut tpm = a.tpm.open(config)?;
    let der = tpm.ek_certificate()?;
    if let Some(out) = &a.out {
        super::write_atomic(out, &der)?;
        println!("wrote {} ({} bytes)", out.display(), der.len());
    }
    if let Some(dir) = &a.ca_dir {
        let ek = attest::ekcert::CaSet::from_dir(dir)?
            .check(&der)
            .map_err(|e| Exit::new(1, format!("EK certificate refused: {e}")))?;
        println!(
            "EK certificate chains to {:?} in {}",
            ek.issuer,
            dir.display()
        );
    }
    Ok(())
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CredentialFile {
    id_object: String,
    encrypted_secret: String,
}

fn make_credential(a: MakeCredentialArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&a.ek_cert).with_context(|| format!("reading {}", a.ek_cert.display()))?;
    let der = attest::ekcert::der_certs(&bytes)
        .into_iter()
        .next()
        .with_context(|| format!("{} holds no certificate", a.ek_cert.display()))?;
    let ek = match &a.ca_dir {
        Some(dir) => attest::ekcert::CaSet::from_dir(dir)?
            .check(&der)
            .map_err(|e| Exit::new(1, format!("EK certificate refused: {e}")))?,
        None => attest::ekcert::endorsement_unchecked(&der)?,
    };
    let ak: AkFile = read_json(&a.ak, "an AK file")?;
    let name = hex::decode(&ak.name).context("AK file: name is not hex")?;
    let secret =
        std::fs::read(&a.secret).with_context(|| format!("reading {}", a.secret.display()))?;
    let made = attest::credential::make_credential(&ek.n, &ek.e, &name, &secret)?;
    let file = CredentialFile {
        id_object: B64.encode(&made.id_object),
        encrypted_secret: B64.encode(&made.encrypted_secret),
    };
    super::write_atomic(&a.out, serde_json::to_string_pretty(&file)?.as_bytes())?;
    println!("wrote {}", a.out.display());
    Ok(())
}

fn activate(a: ActivateArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let ak: AkFile = read_json(&a.ak, "an AK file")?;
    let cred: CredentialFile = read_json(&a.credential, "a credential file")?;
    let id = B64
        .decode(&cred.id_object)
        .context("id_object is not base64")?;
    let secret = B64
        .decode(&cred.encrypted_secret)
        .context("encrypted_secret is not base64")?;
    let mut tpm = a.tpm.open(config)?;
    let out = tpm.activate_credential(&ak, &id, &secret)?;
    match &a.out {
        Some(p) => super::write_secret(p, &out)?,
        None => println!("{}", hex::encode(&out)),
    }
    Ok(())
}
