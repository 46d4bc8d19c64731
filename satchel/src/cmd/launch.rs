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

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  head -c 32 /dev/urandom > disk.key
  satchel seal --tpm swtpm:host=127.0.0.1,port=2321 --pcrs 4,8,9 --in disk.key --out disk.sealed

The secret (1 to 128 bytes) is bound to the PCRs' values now: measure the boot chain
first. The sealed file is useless on another TPM or after any of those PCRs change.")]
pub(crate) struct SealArgs {
    #[command(flatten)]
    tpm: TpmArgs,
    /// PCRs to seal to.
    #[arg(long, value_parser = parse_pcr_list)]
    pcrs: PcrList,
    /// The bank whose values count.
    #[arg(long, default_value = "sha256")]
    bank: HashAlg,
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
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel launch --log boot.log --reference reference.json --reference-key org.key.pub \\
      --sealed disk.sealed -- qemu-system-x86_64 -drive file=guest.img,key-file=\\$SATCHEL_KEY_FILE ...
  satchel launch --log boot.log --reference r.json --reference-key org.key.pub --sealed s.json -- sh -c 'wc -c < \"$SATCHEL_KEY_FILE\"'

Before CMD runs: the logs are replayed and must equal the TPM's PCRs; the TPM's PCRs
must equal the reference (each differing stage is named); the disk key must unseal.
CMD then gets the key through $SATCHEL_KEY_FILE, a path to an in-memory file (memfd),
never a file on disk. Any failure: CMD does not run, exit 1. Otherwise the exit status
is CMD's.")]
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
    /// The guest command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub(crate) fn seal(a: SealArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let secret =
        std::fs::read(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let mut tpm = a.tpm.open(config)?;
    let sealed = tpm.seal(a.bank, &a.pcrs.0, &secret)?;
    super::write_atomic(&a.out, serde_json::to_string_pretty(&sealed)?.as_bytes())?;
    println!(
        "sealed {} bytes to PCRs {:?} ({}) in {}",
        secret.len(),
        a.pcrs.0,
        a.bank,
        a.out.display()
    );
    Ok(())
}

fn unseal_file(tpm: &mut attest::tpm::Tpm, path: &Path) -> anyhow::Result<Vec<u8>> {
    let sealed: SealedFile = read_json(path, "a sealed file")?;
    tpm.unseal(&sealed).map_err(|e| match e {
        attest::tpm::TpmError::PcrPolicy { .. } => Exit::new(1, e.to_string()).into(),
        e => anyhow::Error::from(e),
    })
}

pub(crate) fn unseal(a: UnsealArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let mut tpm = a.tpm.open(config)?;
    let secret = unseal_file(&mut tpm, &a.input)?;
    let mut out = std::io::stdout().lock();
    out.write_all(&secret)?;
    out.flush()?;
    Ok(())
}

pub(crate) fn launch(a: LaunchArgs, config: Option<&Path>) -> anyhow::Result<()> {
    let refused = |msg: String| -> anyhow::Error { Exit::new(1, msg).into() };
    let reference = load_reference(&a.reference, &a.reference_key)
        .map_err(|e| refused(format!("launch refused: {e}")))?;
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
    let key = unseal_file(&mut tpm, &a.sealed).map_err(|e| {
        refused(format!(
            "launch refused: the disk key did not unseal: {e:#}"
        ))
    })?;
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
    let status = Command::new(program)
        .args(args)
        .env(KEY_FILE_ENV, &path)
        .status()
        .with_context(|| format!("starting {program}"))?;
    drop(memfd);
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

/// The key in a sealed, read-only in-memory file the child inherits (no
/// close-on-exec), so it never touches a disk.
fn key_memfd(key: &[u8]) -> anyhow::Result<std::os::fd::OwnedFd> {
    use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
    let fd = memfd_create("satchel-disk-key", MemfdFlags::ALLOW_SEALING).context("memfd_create")?;
    let mut file = std::fs::File::from(fd);
    file.write_all(key)?;
    let fd = std::os::fd::OwnedFd::from(file);
    fcntl_add_seals(
        &fd,
        SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL,
    )
    .context("sealing the key's memfd")?;
    Ok(fd)
}
