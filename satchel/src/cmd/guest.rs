//! `satchel guest`: boot the push-OS as a real VM, its own boot measured
//! and proved before it runs (docs/guest.md).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use device::guest::{Accel, GuestError, GuestSpec, Judge, Outcome};

use super::attest::load_reference;
use super::Exit;

/// The variable `satchel launch` names the unsealed disk key in.
const KEY_FILE_ENV: &str = "SATCHEL_KEY_FILE";
/// The device's epoch counter, as `satchel launch` hands it on.
const EPOCH_ENV: &str = "SATCHEL_EPOCH";

#[derive(Debug, Subcommand)]
pub(crate) enum GuestCmd {
    /// Assemble the synced image into the guest's disks and boot it in qemu.
    Start(StartArgs),
    /// Boot an image once and sign the guest reference its boots must match.
    Reference(ReferenceArgs),
    /// Join one guest connection to the network target (qemu runs this per
    /// connection; it refuses while the guest is not trusted).
    #[command(hide = true)]
    Relay(RelayArgs),
}

#[derive(Debug, Args)]
pub(crate) struct RelayArgs {
    /// The run's gate file: while it exists, the guest is trusted.
    #[arg(long, value_name = "FILE")]
    gate: PathBuf,
    /// The target, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
}

/// What both commands share: the image, the VM.
#[derive(Debug, Args)]
pub(crate) struct VmArgs {
    /// The image's system tree (a pulled base-os layer): its /vmlinuz and
    /// /initrd.img boot the guest, the tree becomes its root disk.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The guest's state directory: its vTPM, firmware variables and disks
    /// (made on first use; one per guest).
    #[arg(long, value_name = "DIR")]
    state: PathBuf,
    /// kvm, tcg, or auto: KVM where it really runs a guest, TCG otherwise.
    #[arg(long, default_value = "auto", value_name = "ACCEL")]
    accel: Accel,
    /// The guest's memory in MiB.
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    memory: u32,
    /// Seconds from the start until the guest must be ready.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    timeout: u64,
    /// The qemu program.
    #[arg(long, default_value = "qemu-system-x86_64", value_name = "PROGRAM")]
    qemu: PathBuf,
    /// OVMF's code (read-only firmware).
    #[arg(
        long,
        default_value = "/usr/share/OVMF/OVMF_CODE_4M.fd",
        value_name = "FILE"
    )]
    ovmf_code: PathBuf,
    /// OVMF's variable store template (copied once per guest).
    #[arg(
        long,
        default_value = "/usr/share/OVMF/OVMF_VARS_4M.fd",
        value_name = "FILE"
    )]
    ovmf_vars: PathBuf,
    /// Do not show the guest's console on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  # on the device, as the launch gate's command (it hands the disk key as $SATCHEL_KEY_FILE):
  satchel launch --log boot.log --reference reference.json --reference-key org.key.pub --sealed disk.sealed \\
      -- satchel guest start --root /var/lib/satchel/root --user /var/lib/satchel/home \\
         --state /var/lib/satchel/guest --reference guest-reference.json --reference-key org.key.pub
  # image CI: boot a built image unencrypted, attest it, write a JUnit report
  satchel guest start --root ./root --state ./ci-guest --unencrypted \\
      --reference guest-reference.json --reference-key org.key.pub --junit guest.xml

  # the guest reaches the gateway's proxy, and gets the CA, once trusted
  satchel guest start ... --network-to 127.0.0.1:3128 --credential ca.pem=/etc/satchel/ca.pem

What happens: the system tree becomes the root disk (ext4, rebuilt whenever the tree
changes); its kernel, initrd and command line, joined with the image's systemd EFI stub
into one unified kernel image, an EFI system partition; the user tree becomes the
user disk, mounted at /home in the guest. Both disks are LUKS-encrypted with the disk
key (qemu's own LUKS; no dm-crypt). qemu boots them with OVMF and a vTPM of this guest's
own (swtpm, state in --state). The guest's init sends a quote of its vTPM's PCRs and the
firmware's event log over the serial console; only if they match the guest reference
does the host answer 'trusted' and the guest run; only then does its one network path
open (--network-to) and does it get its credentials. When the guest powers off, the user
disk is read back into the user tree, which checks in with the next sync.

Exit status: 0 the guest proved its boot, ran and stopped; 1 refused (every mismatch is
named: stage, PCR, expected, found), a wrong disk key, or not ready in time; 2 bad usage.")]
pub(crate) struct StartArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The user tree (a pulled user layer), mounted at /home in the guest
    /// and read back into this directory when the guest stops.
    #[arg(long, value_name = "DIR")]
    user: Option<PathBuf>,
    /// The signed guest reference (`satchel guest reference`).
    #[arg(long, value_name = "REF")]
    reference: PathBuf,
    /// Its signer's public key.
    #[arg(long, value_name = "KEY.pub")]
    reference_key: PathBuf,
    /// Refuse a guest reference signed for a lower epoch than N; with
    /// $SATCHEL_EPOCH (which `satchel launch` sets to the device's epoch
    /// counter) the higher of the two holds [neither: no epoch is checked].
    #[arg(long, value_name = "N")]
    min_epoch: Option<u64>,
    /// The disk key [default: $SATCHEL_KEY_FILE, which `satchel launch` sets].
    #[arg(long, value_name = "FILE", conflicts_with = "unencrypted")]
    key_file: Option<PathBuf>,
    /// Leave the disks unencrypted (image CI, where there is no disk key).
    #[arg(long)]
    unencrypted: bool,
    /// After ready, stop the guest after this many seconds [default: when it powers off].
    #[arg(long, value_name = "SECS")]
    run_for: Option<u64>,
    /// Write a JUnit XML report: one test case per check (boot reached the
    /// guest's init, the quote, every PCR, every stage, ready).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Print the outcome as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Give the guest one network path, to HOST:PORT on this machine (the
    /// gateway, or its egress proxy), once its boot is trusted: it reaches
    /// it at 10.0.2.100 on the same port, and nothing else [default: no
    /// network at all].
    #[arg(long, value_name = "HOST:PORT")]
    network_to: Option<String>,
    /// Hand FILE to the guest as /run/satchel/credentials/NAME once its
    /// boot is trusted (the device certificate, the organisation's CA);
    /// repeatable, up to 48 KiB each.
    #[arg(long, value_name = "NAME=FILE")]
    credential: Vec<String>,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  satchel guest reference --root ./root --state ./ref-guest --sign-key org.key --out guest-reference.json

Boots the image once (unencrypted, a fresh vTPM) on this machine's qemu and OVMF, checks
that the guest's quote is its vTPM's and that the event log replays to it, and signs the
measured values as the reference, each event named by stage: guest-firmware (OVMF and
its variables), guest-kernel (the unified kernel image the firmware started and the kernel
in it, PCRs 4 and 11), guest-initrd (the initrd, PCRs 9 and 11) and guest-cmdline (the
kernel command line, PCRs 9 and 11). Run it with the same qemu and OVMF the devices run.")]
#[command(disable_version_flag = true)]
pub(crate) struct ReferenceArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// The organisation's ed25519 signing key.
    #[arg(long, value_name = "KEY")]
    sign_key: PathBuf,
    /// Where to write the signed reference.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// The reference's name.
    #[arg(long, default_value = "guest", value_name = "NAME")]
    name: String,
    /// Its version [default: the time now in seconds].
    #[arg(long, value_name = "N")]
    version: Option<u64>,
    /// The device epoch it is for: the --epoch of the host's signed PCR
    /// policy for the same image (satchel pcr-policy sign). A device whose
    /// epoch counter has passed it refuses it, so an update revokes the
    /// older guest references with the older policies [default: 0, bound to
    /// no epoch: refused by every device whose counter was ever raised].
    #[arg(long, value_name = "N", default_value_t = 0)]
    epoch: u64,
}

pub(crate) fn run(cmd: GuestCmd) -> anyhow::Result<()> {
    match cmd {
        GuestCmd::Start(a) => start(a),
        GuestCmd::Reference(a) => reference(a),
        GuestCmd::Relay(a) => relay(&a),
    }
}

fn spec<'a>(vm: &VmArgs, judge: Judge<'a>, key: Option<&'a [u8]>) -> GuestSpec<'a> {
    GuestSpec {
        root: vm.root.clone(),
        user: None,
        state: vm.state.clone(),
        key,
        accel: vm.accel,
        memory_mib: vm.memory,
        timeout: Duration::from_secs(vm.timeout),
        run_for: None,
        firmware: device::guest::Firmware {
            code: vm.ovmf_code.clone(),
            vars: vm.ovmf_vars.clone(),
        },
        qemu: vm.qemu.clone(),
        judge,
        network: None,
        credentials: Vec::new(),
    }
}

/// One guest connection (qemu's stdin and stdout) joined to the target.
/// The descriptors are used raw: Rust's stdout buffers by line, and bytes
/// after the last newline (a TLS record) would wait for more. Nothing is
/// printed: stderr is the guest's connection too.
fn relay(a: &RelayArgs) -> anyhow::Result<()> {
    use std::os::fd::AsFd as _;
    let raw = |fd: std::os::fd::BorrowedFd<'_>| fd.try_clone_to_owned().map(std::fs::File::from);
    let input = raw(std::io::stdin().as_fd()).context("the guest's connection")?;
    let output = raw(std::io::stdout().as_fd()).context("the guest's connection")?;
    device::guest::network::relay(&a.gate, &a.to, input, output)
        .map_err(|_| Exit::new(1, String::new()).into())
}

/// `--credential NAME=FILE` values, read and checked.
fn credentials(given: &[String]) -> anyhow::Result<Vec<device::guest::Credential>> {
    given
        .iter()
        .map(|c| {
            let (name, file) = c
                .split_once('=')
                .ok_or_else(|| Exit::new(2, format!("--credential {c:?}: give NAME=FILE")))?;
            let bytes = std::fs::read(file)
                .with_context(|| format!("reading the credential {name} from {file}"))?;
            device::guest::Credential::new(name, bytes).map_err(refused)
        })
        .collect()
}

fn echo(quiet: bool) -> impl FnMut(&str) {
    move |line: &str| {
        if quiet {
            return;
        }
        // The evidence lines are long base64; their size says enough.
        match line
            .split_once(" quote ")
            .or_else(|| line.split_once(" eventlog "))
        {
            Some((head, rest)) if line.len() > 160 => {
                let word = if line.contains(" quote ") {
                    "quote"
                } else {
                    "eventlog"
                };
                eprintln!("guest| {head} {word} ({} base64 characters)", rest.len());
            }
            _ => eprintln!("guest| {line}"),
        }
    }
}

fn read_key(a: &StartArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if a.unencrypted {
        return Ok(None);
    }
    let path = match (&a.key_file, std::env::var_os(KEY_FILE_ENV)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            return Err(Exit::new(
                2,
                format!("no disk key: run this as satchel launch's command (it sets ${KEY_FILE_ENV}), or give --key-file; --unencrypted for image CI"),
            )
            .into())
        }
    };
    let key =
        std::fs::read(&path).with_context(|| format!("reading the disk key {}", path.display()))?;
    if key.is_empty() {
        return Err(Exit::new(2, format!("the disk key {} is empty", path.display())).into());
    }
    Ok(Some(key))
}

fn refused(e: GuestError) -> anyhow::Error {
    match e {
        GuestError::Image { .. } => Exit::new(2, e.to_string()).into(),
        other => Exit::new(1, other.to_string()).into(),
    }
}

fn summary(o: &Outcome) -> String {
    let t = &o.timings;
    let mut s = format!(
        "guest ready: kernel {}, accelerator {} ({})",
        o.kernel.as_deref().unwrap_or("?"),
        o.accel.used,
        o.accel.why
    );
    if let (Some(k), Some(h), Some(r)) = (t.kernel, t.hello, t.ready) {
        s.push_str(&format!(
            "; ready {r:.1} s after the start: disks and vTPM {:.1} s, firmware {:.1} s, kernel and initramfs {:.1} s, proof and userspace {:.1} s",
            t.assembled,
            k - t.assembled,
            h - k,
            r - h
        ));
    }
    if o.user_read_back {
        s.push_str("; user tree read back");
    }
    s
}

fn start(a: StartArgs) -> anyhow::Result<()> {
    let reference = load_reference(&a.reference, &a.reference_key)?;
    check_epoch(&a, &reference)?;
    let key = read_key(&a)?;
    let mut spec = spec(&a.vm, Judge::Reference(&reference), key.as_deref());
    spec.user = a.user.clone();
    spec.run_for = a.run_for.map(Duration::from_secs);
    spec.credentials = credentials(&a.credential)?;
    if let Some(to) = &a.network_to {
        let me = std::env::current_exe().context("finding this program (the network relay)")?;
        spec.network = Some(device::guest::Network::new(to, me).map_err(refused)?);
    }
    let mut outcome_for_report: Option<Outcome> = None;
    let result = device::guest::start(&spec, &mut echo(a.vm.quiet), &mut |o| {
        outcome_for_report = Some(o.clone());
    });
    if let Some(path) = &a.junit {
        let report = junit(
            &reference,
            outcome_for_report.as_ref(),
            result.as_ref().err(),
        );
        super::write_atomic(path, report.as_bytes())?;
    }
    let outcome = match result {
        Ok(o) => o,
        Err(e) => {
            if let Some(v) = outcome_for_report.as_ref().and_then(|o| o.verdict.as_ref()) {
                for f in &v.failures {
                    eprintln!(
                        "  {}{f}",
                        f.stage
                            .as_deref()
                            .map(|s| format!("[{s}] "))
                            .unwrap_or_default()
                    );
                }
            }
            return Err(refused(e));
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&outcome)?);
    } else {
        println!("{}", summary(&outcome));
    }
    Ok(())
}

/// A guest reference signed for an epoch below the device's is revoked:
/// the device has since run an update whose policy raised its counter.
fn check_epoch(a: &StartArgs, reference: &attest::Reference) -> anyhow::Result<()> {
    // The device's counter as the launch gate says, and --min-epoch: the
    // higher holds (a flag never lowers what the gate handed on).
    let from_gate = match std::env::var(EPOCH_ENV) {
        Ok(v) => Some(v.parse::<u64>().map_err(|_| {
            Exit::new(
                2,
                format!("${EPOCH_ENV} is {v:?}, not an epoch (a whole number)"),
            )
        })?),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(v)) => {
            return Err(Exit::new(2, format!("${EPOCH_ENV} is {v:?}, not an epoch")).into())
        }
    };
    let Some(min) = from_gate.max(a.min_epoch) else {
        return Ok(());
    };
    if reference.epoch < min {
        return Err(Exit::new(
            1,
            format!(
                "guest refused before it started: the guest reference {} is for epoch {}, but this device's epoch counter stands at {min} (an update revoked it; use the guest reference signed with the image's current policy)",
                a.reference.display(),
                reference.epoch
            ),
        )
        .into());
    }
    Ok(())
}

fn reference(a: ReferenceArgs) -> anyhow::Result<()> {
    let key = persist::keys::read_private(&a.sign_key)?;
    let spec = spec(
        &a.vm,
        Judge::Record {
            name: a.name.clone(),
        },
        None,
    );
    let outcome =
        device::guest::start(&spec, &mut echo(a.vm.quiet), &mut |_| {}).map_err(refused)?;
    let mut reference = outcome
        .recorded
        .clone()
        .ok_or_else(|| Exit::new(1, "the guest sent no event log to record".to_owned()))?;
    reference.created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    reference.epoch = a.epoch;
    reference.version = a.version.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    });
    let signed = reference.sign(&key)?;
    super::write_atomic(&a.out, signed.as_bytes())?;
    println!("{}", summary(&outcome));
    println!(
        "wrote guest reference {} version {} ({} PCRs: {}), key id {}",
        a.out.display(),
        reference.version,
        reference.pcrs.len(),
        reference
            .pcrs
            .keys()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(","),
        attest::reference::key_id(&key.verifying_key())
    );
    Ok(())
}

/// The JUnit report: one case per check.
fn junit(reference: &attest::Reference, o: Option<&Outcome>, err: Option<&GuestError>) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let fail = |msg: String| {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
        s.set_message(msg);
        s
    };
    let mut suite = TestSuite::new(format!("satchel guest {}", reference.name));
    let verdict = o.and_then(|o| o.verdict.as_ref());
    let why_not = |what: &str| {
        err.map_or_else(
            || format!("{what}: not reached"),
            |e| format!("{what}: not reached: {e}"),
        )
    };
    // Boot reached the guest's init.
    let hello = o.and_then(|o| o.timings.hello);
    suite.add_test_case(TestCase::new(
        "boot reached the guest's init",
        match hello {
            Some(_) => TestCaseStatus::success(),
            None => fail(why_not("the guest's init")),
        },
    ));
    // A case per check of the verdict: the failures `concerns` picks.
    let mut checked = |name: String, concerns: &dyn Fn(&attest::verify::Failure) -> bool| {
        let found: Vec<String> = verdict
            .map(|v| {
                v.failures
                    .iter()
                    .filter(|f| concerns(f))
                    .map(ToString::to_string)
                    .collect()
            })
            .unwrap_or_default();
        suite.add_test_case(TestCase::new(
            name,
            match (verdict, found.is_empty()) {
                (Some(_), true) => TestCaseStatus::success(),
                (Some(_), false) => fail(found.join("; ")),
                (None, _) => fail(why_not("evidence")),
            },
        ));
    };
    // The quote: key, signature, nonce, selection, log replay.
    checked(
        "quote: the vTPM's key, signature, nonce and event log".to_owned(),
        &|f| f.pcr.is_none() && f.stage.is_none(),
    );
    for &pcr in reference.pcrs.keys() {
        checked(format!("PCR {pcr}"), &|f| f.pcr == Some(pcr));
    }
    let mut stages: Vec<&str> = Vec::new();
    for e in reference.pcrs.values().flat_map(|p| &p.events) {
        if !stages.contains(&e.stage.as_str()) {
            stages.push(&e.stage);
        }
    }
    for stage in stages {
        checked(format!("stage {stage}"), &|f| {
            f.stage.as_deref() == Some(stage)
        });
    }
    let ready = o.and_then(|o| o.kernel.clone());
    suite.add_test_case(TestCase::new(
        "boot reached ready",
        match (&ready, err) {
            (Some(_), None) => TestCaseStatus::success(),
            (_, Some(e)) => fail(e.to_string()),
            (None, None) => fail("the guest never said ready".to_owned()),
        },
    ));
    let mut report = Report::new("satchel guest");
    report.add_test_suite(suite);
    report
        .to_string()
        .unwrap_or_else(|e| format!("<!-- the report could not be written: {e} -->\n"))
}
