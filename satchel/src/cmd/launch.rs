//! `satchel seal`, `satchel unseal` and `satchel launch`: the disk key
//! sealed to PCRs, and the gate that starts the guest only on a boot chain
//! that matches the signed reference.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use attest::tpm::SealedFile;
use attest::verify::{combine_logs, compare_reference, compare_replay};
use attest::HashAlg;
use clap::Args;

use super::attest::{load_reference, read_json};
use super::measure::{parse_pcr_list, PcrList, TpmArgs};
use super::Exit;

/// The variable that names the unsealed key's file for the launched command.
pub(crate) const KEY_FILE_ENV: &str = "SATCHEL_KEY_FILE";
/// Where the launched command finds the device's epoch counter (after
/// the launch raised it): `satchel guest start` refuses guest references
/// for a lower epoch.
pub(crate) const EPOCH_ENV: &str = "SATCHEL_EPOCH";

/// The PCR `seal` always adds to the policy and `launch` closes with a
/// separator once the key is handed over: outside every reference, reset
/// only by a reboot, so the same boot cannot unseal the key again.
pub(crate) const LAUNCH_PCR: u32 = 15;

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  head -c 32 /dev/urandom > disk.key
  satchel seal --tpm swtpm:host=127.0.0.1,port=2321 --pcrs 4,8,9 --in disk.key --out disk.sealed

The secret (1 to 128 bytes) is bound to the PCRs' values now: measure the boot chain
first. With --policy-key instead of --pcrs it is bound to the organisation's policy key:
every PCR policy that key signs unseals it (TPM2_PolicyAuthorize), so an image update
keeps the disk key (docs/launch.md):
  satchel keygen --p256 --out policy.key
  satchel seal --policy-key policy.key.pub --in disk.key --out disk.sealed
  satchel pcr-policy sign --reference reference.json --reference-key org.key.pub \\
      --pcrs 4,8,9 --sign-key policy.key --out policy.json
  satchel unseal --in disk.sealed --policy-key policy.key.pub --policy policy.json

The launch PCR (15 unless --launch-pcr says otherwise) is always added: `satchel
launch` extends a separator into it once it has handed the key over, so the key unseals
once per boot. The sealed file is useless on another TPM or after any of those PCRs change.")]
pub(crate) struct SealArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// PCRs to seal to.
    #[arg(long, value_parser = parse_pcr_list, required_unless_present = "policy_key")]
    pcrs: Option<PcrList>,
    /// Seal to this ECDSA P-256 public key instead (PEM; `satchel keygen
    /// --p256`): any PCR policy it signs (`satchel pcr-policy sign`)
    /// unseals, so an image update needs a new signed policy, not a new
    /// sealing.
    #[arg(long, value_name = "KEY.pub", conflicts_with = "pcrs")]
    policy_key: Option<PathBuf>,
    /// The bank whose values count.
    #[arg(long, default_value = "sha256")]
    bank: HashAlg,
    /// The PCR `satchel launch` closes after unsealing (added to --pcrs).
    #[arg(long, default_value_t = LAUNCH_PCR, value_name = "PCR")]
    launch_pcr: u32,
    /// The secret.
    #[arg(long = "in", value_name = "SECRET")]
    input: PathBuf,
    /// Where to write the sealed object (JSON).
    #[arg(long, value_name = "SEALED")]
    out: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel unseal --tpm swtpm:host=127.0.0.1,port=2321 --in disk.sealed > disk.key

Fails (exit 1) once any sealed PCR has changed since sealing.")]
pub(crate) struct UnsealArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// The sealed file.
    #[arg(long = "in", value_name = "SEALED")]
    input: PathBuf,
    #[command(flatten)]
    authorized: PolicyArgs,
}

/// For a secret sealed to a policy key: the key and a policy it signed.
#[derive(Debug, Clone, Args)]
pub(crate) struct PolicyArgs {
    /// The policy key the secret is sealed to (PEM, P-256).
    #[arg(long, value_name = "KEY.pub", requires = "policy")]
    policy_key: Option<PathBuf>,
    /// A PCR policy it signed (`satchel pcr-policy sign`).
    #[arg(long, value_name = "POLICY", requires = "policy_key")]
    policy: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel launch --log boot.log --reference reference.json --reference-key org.key.pub \\
      --sealed disk.sealed -- qemu-system-x86_64 -drive file=guest.img,key-file=\\$SATCHEL_KEY_FILE ...
  satchel launch --log boot.log --reference r.json --reference-key org.key.pub --sealed s.json -- sh -c 'wc -c < \"$SATCHEL_KEY_FILE\"'

Before CMD runs: the logs are replayed and must equal the TPM's PCRs; the TPM's PCRs
must equal the reference (each differing stage is named); the disk key must unseal.
Then a separator is extended into the launch PCR (15) and appended to the last --log,
so the key cannot be unsealed again in this boot. CMD gets the key through
$SATCHEL_KEY_FILE, a path to an in-memory file (memfd), never a file on disk. With a
signed --policy, CMD also gets the device's epoch counter (after the launch raised it)
as $SATCHEL_EPOCH: satchel guest start refuses a guest reference signed for a lower
epoch. Any failure: CMD does not run, exit 1. Otherwise the exit status is CMD's.

--run-file STAGE=PATH hands CMD the content that was measured, not whatever is at PATH
when CMD opens it: the file is read once, its digest must be the reference's for STAGE,
and CMD gets that content as $SATCHEL_FILE_<STAGE> (an in-memory file; STAGE in upper
case, other characters as _), e.g. --run-file hypervisor=/boot/hv.bin and
$SATCHEL_FILE_HYPERVISOR.")]
pub(crate) struct LaunchArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// Event logs of this boot, in measurement order.
    #[arg(long, value_name = "LOG", required = true)]
    log: Vec<PathBuf>,
    /// The signed reference manifest.
    #[arg(long, value_name = "REF")]
    reference: PathBuf,
    /// Its signer's public key.
    #[arg(long, value_name = "KEY.pub")]
    reference_key: PathBuf,
    /// The sealed disk key.
    #[arg(long, value_name = "SEALED")]
    sealed: PathBuf,
    #[command(flatten)]
    authorized: PolicyArgs,
    /// A measured file CMD runs or loads, handed on as the content checked
    /// against the reference's stage (repeatable).
    #[arg(long = "run-file", value_name = "STAGE=PATH", value_parser = parse_run_file)]
    run_files: Vec<(String, PathBuf)>,
    /// The PCR to close once the key is handed over (must be in the sealed
    /// policy, outside the reference).
    #[arg(long, default_value_t = LAUNCH_PCR, value_name = "PCR")]
    launch_pcr: u32,
    /// The guest command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub(crate) fn seal(a: SealArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let secret =
        std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let mut tpm = a.tpm.open(config)?;
    if let Some(key) = &a.policy_key {
        let key = read_policy_key(key)?;
        let sealed = tpm.seal_authorized(&key, &secret)?;
        let epoch = tpm.epoch_counter(sealed.counter)?.unwrap_or_default();
        super::write_atomic(&a.out, serde_json::to_string_pretty(&sealed)?.as_bytes())?;
        println!(
            "sealed {} bytes to policy key {} in {}: a PCR policy it signs for epoch {epoch} or later unseals them (epoch counter {:#x})",
            secret.len(),
            sealed.key_name,
            a.out.display(),
            sealed.counter
        );
        return Ok(());
    }
    let mut pcrs = a.pcrs.map(|p| p.0).unwrap_or_default();
    if !pcrs.contains(&a.launch_pcr) {
        pcrs.push(a.launch_pcr);
    }
    let sealed = tpm.seal(a.bank, &pcrs, &secret)?;
    super::write_atomic(&a.out, serde_json::to_string_pretty(&sealed)?.as_bytes())?;
    println!(
        "sealed {} bytes to PCRs {:?} ({}) in {}",
        secret.len(),
        pcrs,
        a.bank,
        a.out.display()
    );
    Ok(())
}

#[derive(Debug, clap::Subcommand)]
pub(crate) enum PcrPolicyCmd {
    /// Sign the PCR values a reference predicts (or the TPM holds now).
    Sign(PcrPolicySignArgs),
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel pcr-policy sign --reference reference.json --reference-key org.key.pub \\
      --pcrs 4,8,9,13 --sign-key policy.key --out policy.json
  satchel pcr-policy sign --from-tpm --tpm swtpm:host=127.0.0.1,port=2321 \\
      --pcrs 4,8,9 --sign-key policy.key --out policy.json

The values come from a signed reference (checked with its key; its version becomes the
policy's) or, with --from-tpm, from the TPM now (a golden machine booted on the new
image). The launch PCR (15) is always added at zero, its value before `satchel launch`
closes it, so the key still unseals once per boot (with --from-tpm it must be zero on
that machine). Format: docs/launch.md.")]
#[command(disable_version_flag = true)]
pub(crate) struct PcrPolicySignArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// The signed reference whose PCR values to sign.
    #[arg(
        long,
        value_name = "REF",
        required_unless_present = "from_tpm",
        requires = "reference_key"
    )]
    reference: Option<PathBuf>,
    /// Its signer's public key.
    #[arg(long, value_name = "KEY.pub")]
    reference_key: Option<PathBuf>,
    /// Sign the values the TPM holds now instead.
    #[arg(long, conflicts_with = "reference")]
    from_tpm: bool,
    /// The PCRs the policy covers.
    #[arg(long, value_parser = parse_pcr_list)]
    pcrs: PcrList,
    /// The bank.
    #[arg(long, default_value = "sha256")]
    bank: HashAlg,
    /// The launch PCR (added to --pcrs).
    #[arg(long, default_value_t = LAUNCH_PCR, value_name = "PCR")]
    launch_pcr: u32,
    /// The policy key (PKCS#8 PEM, P-256).
    #[arg(long, value_name = "KEY")]
    sign_key: PathBuf,
    /// The policy's version [default: the reference's, else the time now].
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// The policy's epoch: it unseals only on devices whose epoch counter
    /// is at most this, and a device that launches with it raises its
    /// counter to it, revoking every policy signed for a lower epoch.
    /// Raise it by one with each update that must retire the old image
    /// (a security fix); keep it for one that need not.
    #[arg(long, value_name = "N", default_value_t = 1)]
    epoch: u64,
    /// Where the signed policy goes.
    #[arg(long, value_name = "POLICY")]
    out: PathBuf,
}

pub(crate) fn sign_policy(a: PcrPolicySignArgs, config: Option<&Path>) -> anyhow::Result<()> {
    use p256::pkcs8::DecodePrivateKey as _;
    let pem = std::fs::read_to_string(&a.sign_key)
        .with_context(|| format!("reading {}", a.sign_key.display()))?;
    let key = p256::ecdsa::SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a P-256 private key (satchel keygen --p256): {e}",
            a.sign_key.display()
        )
    })?;
    // The launch PCR is signed at zero, always: a policy with any other
    // value for it unseals after `launch` closed it, on every device, for
    // as long as the key signs (signed policies are not revoked). Only PCRs
    // 0-15 qualify: 16 and 23 can be reset from software.
    anyhow::ensure!(
        a.launch_pcr <= 15,
        "--launch-pcr {}: a launch PCR must be one software cannot reset (0-15)",
        a.launch_pcr
    );
    let mut pcrs = a.pcrs.0.clone();
    pcrs.retain(|p| *p != a.launch_pcr);
    let zero = vec![0u8; a.bank.digest_size()];
    let mut values = std::collections::BTreeMap::new();
    let mut version = a.version;
    if a.from_tpm {
        let mut tpm = a.tpm.open(config)?;
        let mut all = pcrs.clone();
        all.push(a.launch_pcr);
        let read = tpm.read_pcrs(&[a.bank], &all)?;
        for p in &all {
            let v = read
                .get(a.bank, *p)
                .ok_or_else(|| anyhow::anyhow!("the TPM has no {} value for PCR {p}", a.bank))?;
            values.insert(*p, v.to_vec());
        }
        anyhow::ensure!(
            values.get(&a.launch_pcr) == Some(&zero),
            "the launch PCR {} is not zero on this machine (launched already, or something else measures into it): boot it again and sign before `satchel launch`",
            a.launch_pcr
        );
    } else if let (Some(r), Some(k)) = (&a.reference, &a.reference_key) {
        let reference = load_reference(r, k)?;
        anyhow::ensure!(
            !reference.pcrs.contains_key(&a.launch_pcr),
            "reference {} measures the launch PCR {}: choose another with --launch-pcr",
            r.display(),
            a.launch_pcr
        );
        for p in &pcrs {
            let v = reference
                .pcrs
                .get(p)
                .and_then(|pr| pr.value.get(&a.bank))
                .map(|h| h.0.clone())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "reference {} has no {} value for PCR {p} (it has PCRs {:?})",
                        r.display(),
                        a.bank,
                        reference.pcrs.keys().collect::<Vec<_>>()
                    )
                })?;
            values.insert(*p, v);
        }
        values.insert(a.launch_pcr, zero.clone());
        version = version.or(Some(reference.version));
    }
    let version = version.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let policy = attest::tpm::SignedPolicy::sign(&key, version, a.epoch, a.bank, &values)?;
    super::write_atomic(&a.out, serde_json::to_string_pretty(&policy)?.as_bytes())?;
    println!(
        "signed PCR policy {} version {} epoch {} for PCRs {:?} ({})",
        a.out.display(),
        version,
        a.epoch,
        values.keys().collect::<Vec<_>>(),
        a.bank
    );
    Ok(())
}

/// An ECDSA P-256 public key (PEM).
pub(crate) fn read_policy_key(path: &Path) -> anyhow::Result<p256::ecdsa::VerifyingKey> {
    use p256::pkcs8::DecodePublicKey as _;
    let pem =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).map_err(|e| {
        anyhow::anyhow!(
            "{}: not a P-256 public key (satchel keygen --p256): {e}",
            path.display()
        )
    })
}

/// The format of a file sealed to a policy key, and the prefix of older
/// ones.
const AUTHORIZED_FORMAT: &str = "satchel-sealed-authorized-v2";
const AUTHORIZED_PREFIX: &str = "satchel-sealed-authorized-";

/// A secret unsealed, the connection back, and, when it was sealed to a
/// policy key, the policy it unsealed with.
struct Unsealed {
    secret: Vec<u8>,
    tpm: attest::tpm::Tpm,
    policy: Option<attest::tpm::SignedPolicy>,
}

/// Unseal the file at `path`: sealed to PCRs, or to a policy key (then
/// `authorized` names the key and a policy it signed).
fn unseal_file(
    mut tpm: attest::tpm::Tpm,
    path: &Path,
    authorized: &PolicyArgs,
) -> anyhow::Result<Unsealed> {
    let value: serde_json::Value = read_json(path, "a sealed file")?;
    let refused = |e: attest::tpm::TpmError| -> anyhow::Error {
        match e {
            attest::tpm::TpmError::PcrPolicy { .. } | attest::tpm::TpmError::Revoked { .. } => {
                Exit::new(1, e.to_string()).into()
            }
            e => anyhow::Error::from(e),
        }
    };
    let format = value["format"].as_str().unwrap_or_default();
    if format.starts_with(AUTHORIZED_PREFIX) && format != AUTHORIZED_FORMAT {
        return Err(Exit::new(
            1,
            format!(
                "{} is sealed in the older format {format:?}, which no epoch revokes: seal the key again (satchel seal --policy-key)",
                path.display()
            ),
        )
        .into());
    }
    if format == AUTHORIZED_FORMAT {
        let (Some(key), Some(policy)) = (&authorized.policy_key, &authorized.policy) else {
            return Err(Exit::new(
                2,
                format!(
                    "{} is sealed to a policy key: give --policy-key and --policy",
                    path.display()
                ),
            )
            .into());
        };
        let sealed: attest::tpm::AuthorizedSealed = serde_json::from_value(value)
            .with_context(|| format!("{}: not a sealed file", path.display()))?;
        let key = read_policy_key(key)?;
        let policy: attest::tpm::SignedPolicy = read_json(policy, "a signed PCR policy")?;
        policy
            .check(&key)
            .map_err(|e| Exit::new(1, format!("{e}")))?;
        let (secret, tpm) = tpm
            .unseal_authorized(&sealed, &key, &policy)
            .map_err(refused)?;
        return Ok(Unsealed {
            secret,
            tpm,
            policy: Some(policy),
        });
    }
    let sealed: SealedFile = serde_json::from_value(value)
        .with_context(|| format!("{}: not a sealed file", path.display()))?;
    let secret = tpm.unseal(&sealed).map_err(refused)?;
    Ok(Unsealed {
        secret,
        tpm,
        policy: None,
    })
}

pub(crate) fn unseal(a: UnsealArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let tpm = a.tpm.open(config)?;
    let secret = unseal_file(tpm, &a.input, &a.authorized)?.secret;
    let mut out = std::io::stdout().lock();
    out.write_all(&secret)?;
    out.flush()?;
    Ok(())
}

pub(crate) fn launch(a: LaunchArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let refused = |msg: String| -> anyhow::Error { Exit::new(1, msg).into() };
    let reference = load_reference(&a.reference, &a.reference_key)
        .map_err(|e| refused(format!("launch refused: {e}")))?;
    check_launch_pcr(&a, &reference)?;
    let files = a
        .run_files
        .iter()
        .map(|(stage, path)| measured_file(&reference, stage, path))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let logs = a
        .log
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let log = combine_logs(&logs).map_err(|f| refused(format!("launch refused: {f}")))?;
    let mut tpm = a.tpm.open(config)?;
    let active = tpm.active_banks()?;
    let banks: Vec<HashAlg> = reference
        .banks
        .iter()
        .copied()
        .filter(|b| active.contains(b) && log.banks().contains(b))
        .collect();
    let pcrs: Vec<u32> = reference.pcrs.keys().copied().collect();
    let values = tpm.read_pcrs(&banks, &pcrs)?;
    let mut failures = compare_replay(&log, &values, "TPM's");
    failures.extend(compare_reference(&reference, &values, Some(&log)));
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("  {f}");
        }
        let mut stages: Vec<&str> = Vec::new();
        for s in failures.iter().filter_map(|f| f.stage.as_deref()) {
            if !stages.contains(&s) {
                stages.push(s);
            }
        }
        return Err(refused(format!(
            "launch refused: {} failures{}",
            failures.len(),
            if stages.is_empty() {
                String::new()
            } else {
                format!(" (stages: {})", stages.join(", "))
            }
        )));
    }
    let Unsealed {
        secret: key,
        mut tpm,
        policy,
    } = unseal_file(tpm, &a.sealed, &a.authorized).map_err(|e| {
        refused(format!(
            "launch refused: the disk key did not unseal: {e:#}"
        ))
    })?;
    // The key is out: the launch PCR closes first, whatever happens next,
    // so nothing else unseals it again on this boot.
    close_launch_pcr(&mut tpm, a.launch_pcr, &a.log)?;
    let epoch = match &policy {
        Some(policy) => Some(
            raise_epoch(&mut tpm, policy).map_err(|e| refused(format!("launch refused: {e:#}")))?,
        ),
        None => None,
    };
    drop(tpm);
    let memfd = key_memfd(&key)?;
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&memfd));
    let (program, args) = a
        .command
        .split_first()
        .ok_or_else(|| Exit::new(2, "no command to launch".to_owned()))?;
    eprintln!(
        "boot chain matches reference {:?} ({} PCRs); disk key unsealed; launching {program}",
        reference.name,
        pcrs.len()
    );
    let mut cmd = Command::new(program);
    for (stage, fd) in &files {
        let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
        cmd.env(run_file_env(stage), format!("/proc/self/fd/{fd}"));
    }
    if let Some(epoch) = epoch {
        cmd.env(EPOCH_ENV, epoch.to_string());
    }
    let status = cmd
        .args(args)
        .env(KEY_FILE_ENV, &path)
        .status()
        .with_context(|| format!("starting {program}"))?;
    drop(memfd);
    drop(files);
    match status.code() {
        Some(0) => Ok(()),
        Some(c) => Err(Exit::new(
            u8::try_from(c).unwrap_or(1),
            format!("{program} exited with {c}"),
        )
        .into()),
        None => Err(Exit::new(1, format!("{program} was killed by a signal")).into()),
    }
}

/// The device now runs what `policy` was signed for: raise its epoch
/// counter to the policy's epoch, so every policy signed for a lower one
/// stops unsealing here (a rollback to an older image is refused). The
/// counter's value after.
fn raise_epoch(
    tpm: &mut attest::tpm::Tpm,
    policy: &attest::tpm::SignedPolicy,
) -> anyhow::Result<u64> {
    let (before, after) = tpm
        .raise_epoch_counter(policy.counter, policy.epoch)
        .context("raising the epoch counter")?;
    if after > before {
        eprintln!(
            "epoch counter raised from {before} to {after}: policies signed for epoch {before} or lower no longer unseal on this device"
        );
    }
    Ok(after)
}

/// The launch PCR must be in the sealed policy (else closing it would not
/// stop a second unseal) and outside the reference (else closing it would
/// fail the next attestation).
fn check_launch_pcr(a: &LaunchArgs, reference: &attest::Reference) -> anyhow::Result<()> {
    let value: serde_json::Value = read_json(&a.sealed, "a sealed file")?;
    let pcr = a.launch_pcr;
    // Sealed to a policy key: the signed policy must cover the launch PCR.
    let covered = if value["format"]
        .as_str()
        .is_some_and(|f| f.starts_with(AUTHORIZED_PREFIX))
    {
        match &a.authorized.policy {
            Some(p) => {
                // At zero: the value it holds before this launch closes it.
                let policy: attest::tpm::SignedPolicy = read_json(p, "a signed PCR policy")?;
                policy
                    .pcrs
                    .get(&pcr)
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b == b'0'))
            }
            None => true, // said by unseal_file, with what to give
        }
    } else {
        let sealed: SealedFile = serde_json::from_value(value)
            .with_context(|| format!("{}: not a sealed file", a.sealed.display()))?;
        sealed.pcrs.contains(&pcr)
    };
    if !covered {
        return Err(Exit::new(
            1,
            format!("launch refused: {} is not sealed to the launch PCR {pcr}, so the key could be unsealed again after the launch; seal it again with satchel seal", a.sealed.display()),
        )
        .into());
    }
    if reference.pcrs.contains_key(&pcr) {
        return Err(Exit::new(
            2,
            format!("the launch PCR {pcr} is one the reference measures; choose another with --launch-pcr"),
        )
        .into());
    }
    Ok(())
}

/// Extend a separator into `pcr` and append it to the last log (Satchel's
/// own, which `satchel measure` writes): the key is handed over, and this
/// boot cannot unseal it again. Logged, so later attestations still replay.
fn close_launch_pcr(tpm: &mut attest::tpm::Tpm, pcr: u32, logs: &[PathBuf]) -> anyhow::Result<()> {
    let log = logs
        .last()
        .ok_or_else(|| Exit::new(2, "no --log to record the launch separator in".to_owned()))?;
    let chain = firmware_measure::Chain::from_toml(
        &format!("[[stage]]\nname = \"launch\"\nseparator = [{pcr}]\n"),
        log,
    )?;
    firmware_measure::measure(&chain, tpm, log)
        .with_context(|| format!("closing the launch PCR {pcr} (log {})", log.display()))?;
    Ok(())
}

/// `STAGE=PATH`.
fn parse_run_file(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((stage, path)) if !stage.is_empty() && !path.is_empty() => {
            Ok((stage.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "{s:?}: expected STAGE=PATH, e.g. hypervisor=/boot/hv.bin"
        )),
    }
}

/// The variable that names a run file of `stage` for the command.
fn run_file_env(stage: &str) -> String {
    let name: String = stage
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SATCHEL_FILE_{name}")
}

/// Read `path` once and check it is what the reference measured for
/// `stage`; the content, in a sealed in-memory file the command inherits.
/// What the command then reads is what was checked, whatever happens to
/// `path` meanwhile.
fn measured_file(
    reference: &attest::Reference,
    stage: &str,
    path: &Path,
) -> anyhow::Result<(String, std::os::fd::OwnedFd)> {
    let refused =
        |why: String| -> anyhow::Error { Exit::new(1, format!("launch refused: {why}")).into() };
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let expected: Vec<_> = reference
        .pcrs
        .values()
        .flat_map(|p| &p.events)
        .filter(|e| e.stage == stage)
        .collect();
    if expected.is_empty() {
        return Err(refused(format!(
            "the reference has no stage {stage:?} to check {} against",
            path.display()
        )));
    }
    let matches = expected.iter().any(|e| {
        !e.digests.is_empty() && e.digests.iter().all(|(bank, d)| bank.hash(&bytes) == d.0)
    });
    if !matches {
        return Err(refused(format!(
            "{} is not what stage {stage:?} measured (changed since the boot was measured)",
            path.display()
        )));
    }
    Ok((stage.to_owned(), sealed_memfd("satchel-run-file", &bytes)?))
}

/// The key in a sealed, read-only in-memory file the child inherits (no
/// close-on-exec), so it never touches a disk.
fn key_memfd(key: &[u8]) -> anyhow::Result<std::os::fd::OwnedFd> {
    sealed_memfd("satchel-disk-key", key)
}

/// `bytes` in an in-memory file sealed against any change, inherited by
/// the command (no close-on-exec).
fn sealed_memfd(name: &str, bytes: &[u8]) -> anyhow::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create(name, MemfdFlags::ALLOW_SEALING).context("memfd_create")?;
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes)?;
    let fd = std::os::fd::OwnedFd::from(file);
    fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .context("sealing the key's memfd")?;
    Ok(fd)
}
