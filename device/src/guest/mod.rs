//! The guest VM: the push-OS booted for real.
//!
//! [`start`] assembles the device's synced system tree into the guest's
//! root disk and its EFI system partition, and the user tree into the user
//! disk (both encrypted with LUKS under the disk key the host's TPM
//! unsealed), starts a per-guest swtpm as the guest's vTPM, and boots qemu
//! (q35, OVMF) on KVM where KVM really runs a guest and TCG otherwise.
//! OVMF measures the guest's boot into its vTPM; the guest's init sends a
//! quote of those PCRs (made with the key the host left in the vTPM) and
//! the firmware's event log over the serial console, and runs only after
//! the host has verified them against the guest reference. When the guest
//! powers off, the user disk is read back into the user tree, so what the
//! guest wrote checks in as today; the root disk is rebuilt from the
//! pristine system tree whenever that tree changes.

pub mod console;
pub mod disk;
pub mod network;
mod qemu;
pub mod vtpm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use attest::{HashAlg, PcrBanks, Reference, Verdict};

pub use network::{Credential, Network};
pub use qemu::{Accel, AccelChoice};

/// Why the guest did not run to the end.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuestError {
    /// A file or process operation.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        source: std::io::Error,
    },
    /// A tool (mkfs, qemu-img, qemu, swtpm) failed.
    #[error("{what}: {program} failed: {detail}")]
    Tool {
        /// What was being done.
        what: &'static str,
        /// The program.
        program: String,
        /// Its error output.
        detail: String,
    },
    /// The system tree is not a bootable image.
    #[error("the image cannot boot: {detail}")]
    Image {
        /// What is missing.
        detail: String,
    },
    /// The disk key does not open a disk made with another key.
    #[error("the disk key does not open {}: it was made with another key, and a wrong key never decrypts it (nothing was started)", disk.display())]
    WrongKey {
        /// The disk.
        disk: PathBuf,
    },
    /// The guest's vTPM.
    #[error(transparent)]
    Tpm(#[from] attest::tpm::TpmError),
    /// A state file.
    #[error(transparent)]
    File(#[from] persist::FileError),
    /// A malformed protocol line from the guest.
    #[error(transparent)]
    Console(#[from] console::ConsoleError),
    /// The guest did not prove its boot, or was refused.
    #[error("guest refused: {0}")]
    Refused(String),
    /// The guest stopped or hung before it was ready.
    #[error("the guest did not become ready: {0}")]
    NotReady(String),
}

impl GuestError {
    pub(crate) fn io(what: &'static str, source: std::io::Error) -> GuestError {
        GuestError::Io { what, source }
    }
}

/// Where the OVMF firmware is.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The code (read-only pflash).
    pub code: PathBuf,
    /// The variable store template, copied once per guest.
    pub vars: PathBuf,
}

impl Default for Firmware {
    fn default() -> Firmware {
        Firmware {
            code: PathBuf::from("/usr/share/OVMF/OVMF_CODE_4M.fd"),
            vars: PathBuf::from("/usr/share/OVMF/OVMF_VARS_4M.fd"),
        }
    }
}

/// How the guest's evidence is judged.
pub enum Judge<'a> {
    /// Against the signed guest reference: only a match runs.
    Reference(&'a Reference),
    /// Record a reference from this boot (on the build machine): the
    /// quote must be the key's and the log must replay to it.
    Record {
        /// The reference's name.
        name: String,
    },
}

/// One guest start.
pub struct GuestSpec<'a> {
    /// The pulled system tree (the guest's root).
    pub root: PathBuf,
    /// The user tree, mounted at /home in the guest and read back after.
    pub user: Option<PathBuf>,
    /// The guest's state: vTPM, firmware variables, disks.
    pub state: PathBuf,
    /// The disk key; `None` leaves the disks unencrypted (image CI).
    pub key: Option<&'a [u8]>,
    /// Which accelerator.
    pub accel: Accel,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// How long the guest has from the start to ready.
    pub timeout: Duration,
    /// After ready, how long to let it run before stopping it (None: until
    /// it powers off by itself).
    pub run_for: Option<Duration>,
    /// The firmware.
    pub firmware: Firmware,
    /// The qemu program.
    pub qemu: PathBuf,
    /// How the evidence is judged.
    pub judge: Judge<'a>,
    /// The guest's one network path, open only once it is trusted (None:
    /// its NIC reaches nothing).
    pub network: Option<Network>,
    /// Files handed to the guest once it is trusted.
    pub credentials: Vec<Credential>,
}

/// Seconds from the start of the run to each milestone.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    /// Disks and vTPM made.
    pub assembled: f64,
    /// The firmware handed over to the kernel (its log begins).
    pub kernel: Option<f64>,
    /// The guest's init said hello (kernel and initramfs done).
    pub hello: Option<f64>,
    /// The guest said ready (its evidence verified).
    pub ready: Option<f64>,
    /// qemu exited.
    pub stopped: Option<f64>,
}

/// What a run did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The accelerator that ran the guest, and why.
    pub accel: AccelChoice,
    /// The guest's kernel release, once ready.
    pub kernel: Option<String>,
    /// The verdict on the guest's evidence (None: no evidence came).
    pub verdict: Option<Verdict>,
    /// The reference recorded from this boot ([`Judge::Record`]).
    #[serde(skip)]
    pub recorded: Option<Reference>,
    /// Milestones.
    pub timings: Timings,
    /// The user tree was read back from the guest.
    pub user_read_back: bool,
}

impl Outcome {
    /// The guest proved its boot and said ready.
    pub fn ready(&self) -> bool {
        self.kernel.is_some() && self.verdict.as_ref().is_some_and(|v| v.trusted)
    }
}

const ROOT_DISK: &str = "root.disk";
/// While it exists, the relay joins the guest's connections to the
/// network target: made at `trusted`, removed before and after every run.
const NET_GATE: &str = "net.gate";
const USER_DISK: &str = "user.disk";
const ESP: &str = "esp.img";
const UKI: &str = "boot.efi";

/// The name of the stage an event of the guest's boot belongs to: the
/// images the firmware started (PCR 4: the unified kernel image and the
/// kernel in it) and the stub's `.linux` section (PCR 11) are
/// `guest-kernel`; the initrd as the stub (PCR 11) and the kernel (PCR 9)
/// measured it is `guest-initrd`; the command line likewise
/// `guest-cmdline`; the rest is the firmware's.
pub fn stage_of(event: &attest::eventlog::Event) -> &'static str {
    let utf16 = |s: &str| -> Vec<u8> { s.encode_utf16().flat_map(u16::to_le_bytes).collect() };
    let has = |needle: &[u8]| event.data.windows(needle.len()).any(|w| w == needle);
    let kind = event.event_type.to_string();
    match (event.pcr, kind.as_str()) {
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION") => "guest-kernel",
        (11, "EV_IPL") if has(&utf16(".initrd")) || has(b".initrd") => "guest-initrd",
        (11, "EV_IPL") if has(&utf16(".cmdline")) || has(b".cmdline") => "guest-cmdline",
        (11, "EV_IPL") if has(&utf16(".linux")) || has(b".linux") => "guest-kernel",
        (9, _) if has(b"Linux initrd") => "guest-initrd",
        (9, _) => "guest-cmdline",
        _ => "guest-firmware",
    }
}

/// Assemble, boot, verify, run and read back one guest. `echo` gets every
/// console line (cleaned) as it arrives; `seen` gets the outcome once the
/// guest stopped, also when the run then fails (a refusal's verdict names
/// every mismatch).
pub fn start(
    spec: &GuestSpec<'_>,
    echo: &mut dyn FnMut(&str),
    seen: &mut dyn FnMut(&Outcome),
) -> Result<Outcome, GuestError> {
    let t0 = Instant::now();
    std::fs::create_dir_all(&spec.state)
        .map_err(|e| GuestError::io("making the guest's state directory", e))?;
    // Disks made in plain text pass through here, and the vTPM's state
    // (its attestation key) lives here: root's alone.
    vtpm::private_dir(&spec.state)?;
    if let Some(k) = spec.key {
        if k.len() < 32 {
            return Err(GuestError::Image {
                detail: format!(
                    "the disk key has {} bytes; at least 32 random bytes are needed (the LUKS key-stretching is set low for random keys)",
                    k.len()
                ),
            });
        }
    }
    if let Judge::Reference(r) = &spec.judge {
        check_reference(r)?;
    }
    let key = spec.key.map(disk::KeyFile::new).transpose()?;
    let vtpm_key = spec.key.map(vtpm::StateKeys::derive).transpose()?;

    // Every encrypted disk kept from an earlier run must open with this key
    // before anything is rebuilt or started: a wrong key never decrypts
    // one, nor replaces it.
    let root_disk = spec.state.join(ROOT_DISK);
    let user_disk = spec.state.join(USER_DISK);
    let user_stamp_path = spec.state.join("user.stamp");
    let user_fp = spec.user.as_deref().map(disk::fingerprint);
    let keep_user = user_fp.is_some()
        && user_disk.exists()
        && std::fs::read_to_string(&user_stamp_path).ok() == user_fp;
    for kept in [&user_disk, &root_disk] {
        if !disk::is_luks(kept) {
            continue;
        }
        match &key {
            Some(k) => disk::check_key(kept, k)?,
            None => {
                return Err(GuestError::Image {
                    detail: format!(
                        "{} is encrypted; give the disk key (this run is --unencrypted)",
                        kept.display()
                    ),
                })
            }
        }
    }
    // The vTPM after the disks: a wrong key is named as the wrong key (the
    // disks do not open), not as a changed attestation key.
    let vtpm_dir = spec.state.join("vtpm");
    let ak = vtpm::provision(&vtpm_dir, vtpm_key.as_ref())?;

    // The root: rebuilt when the system tree changed, else opened as kept.
    let (kernel, initrd) = disk::boot_files(&spec.root)?;
    let stub = disk::stub(&spec.root)?;
    let cmdline = disk::command_line(&spec.root)?;
    let stamp_path = spec.state.join("root.stamp");
    let stamp = format!(
        "{}\n{}\n{}\n",
        disk::fingerprint(&spec.root),
        cmdline,
        if key.is_some() { "luks" } else { "raw" }
    );
    let kept = std::fs::read_to_string(&stamp_path).ok();
    if kept.as_deref() != Some(stamp.as_str()) || !root_disk.exists() {
        let raw = spec.state.join("root.raw");
        disk::make_ext4(&raw, &spec.root, disk::ROOT_LABEL, 0)?;
        disk::seal_disk(&raw, &root_disk, key.as_ref())?;
        persist::write_atomic(&stamp_path, stamp.as_bytes())?;
    }
    // The ESP (one unified kernel image: stub, kernel, initrd, command
    // line) is made again at every start from the system tree; both are
    // attached read-only, so a guest cannot change what the next boot loads.
    let uki = spec.state.join(UKI);
    disk::make_uki(&uki, &spec.root, &stub, &kernel, &initrd, &cmdline)?;
    disk::make_esp(&spec.state.join(ESP), &uki)?;
    let _ = std::fs::remove_file(&uki);
    // The user disk: made from the user tree when that tree changed since
    // it was last read back (a pull brought something), else kept.
    if let (Some(user), Some(fp)) = (&spec.user, &user_fp) {
        if !keep_user {
            let raw = spec.state.join("user.raw");
            disk::make_ext4(&raw, user, disk::USER_LABEL, 256)?;
            disk::seal_disk(&raw, &user_disk, key.as_ref())?;
            persist::write_atomic(&user_stamp_path, fp.as_bytes())?;
        }
    }
    let vars = spec.state.join("vars.fd");
    if !vars.exists() {
        std::fs::copy(&spec.firmware.vars, &vars)
            .map_err(|e| GuestError::io("copying the firmware's variable store", e))?;
    }

    let accel = qemu::choose(spec)?;
    let gate = spec.state.join(NET_GATE);
    close_gate(&gate)?;
    let tpm = vtpm::start(&vtpm_dir, vtpm_key.as_ref())?;
    let assembled = t0.elapsed().as_secs_f64();
    let disks = qemu::Disks {
        esp: spec.state.join(ESP),
        root: root_disk,
        user: spec.user.as_ref().map(|_| user_disk.clone()),
        vars,
    };
    let mut run = qemu::Run::spawn(spec, &accel, &disks, key.as_ref(), &tpm.socket, &gate)?;
    let mut outcome = Outcome {
        accel,
        kernel: None,
        verdict: None,
        recorded: None,
        timings: Timings {
            assembled,
            ..Timings::default()
        },
        user_read_back: false,
    };
    let result = converse(spec, &ak, &mut run, &mut outcome, t0, echo);
    let (status, clean) = run.finish();
    close_gate(&gate)?;
    outcome.timings.stopped = Some(t0.elapsed().as_secs_f64());
    drop(tpm);
    seen(&outcome);
    result?;
    if !outcome.ready() {
        return Err(GuestError::NotReady(format!(
            "qemu exited ({status}) before the guest said ready{}",
            run.stderr_tail()
        )));
    }
    if !clean {
        // Stopped, not powered off: the user disk's file system may be
        // mid-write. It is kept, not read back; the next clean run reads it.
        return Ok(outcome);
    }
    if let Some(user) = &spec.user {
        disk::read_back(&user_disk, key.as_ref(), user)?;
        persist::write_atomic(&user_stamp_path, disk::fingerprint(user).as_bytes())?;
        outcome.user_read_back = true;
    }
    Ok(outcome)
}

/// The console conversation: nonce, evidence, verdict, ready, and the run.
fn converse(
    spec: &GuestSpec<'_>,
    ak: &attest::tpm::AkFile,
    run: &mut qemu::Run,
    outcome: &mut Outcome,
    t0: Instant,
    echo: &mut dyn FnMut(&str),
) -> Result<(), GuestError> {
    use console::GuestLine;
    let deadline = t0 + spec.timeout;
    let mut stop_at: Option<Instant> = None;
    let mut nonce = [0u8; 32];
    let mut quote: Option<(Vec<u8>, Vec<u8>)> = None;
    let mut logs: Vec<Vec<u8>> = Vec::new();
    let mut said_hello = false;
    let pcrs: Vec<u32> = match &spec.judge {
        Judge::Reference(r) => r.pcrs.keys().copied().collect(),
        Judge::Record { .. } => (0..=9).chain([11, 12]).collect(),
    };
    loop {
        // Until ready, the start's deadline; then until the guest powers
        // off (or --run-for).
        let wait_until = match (&outcome.kernel, stop_at) {
            (None, _) => deadline,
            (Some(_), Some(s)) => s,
            (Some(_), None) => Instant::now() + Duration::from_secs(365 * 24 * 3600),
        };
        let line = match run.next_line(wait_until) {
            qemu::Next::Line(l) => l,
            qemu::Next::Closed => return Ok(()),
            qemu::Next::TimedOut => {
                if outcome.kernel.is_some() {
                    return Ok(()); // ran for the time asked, or until the deadline
                }
                run.kill();
                return Err(GuestError::NotReady(format!(
                    "no ready within {} s (stopped){}",
                    spec.timeout.as_secs(),
                    run.stderr_tail()
                )));
            }
        };
        echo(&line);
        if outcome.timings.kernel.is_none() && line.contains("Linux version") {
            outcome.timings.kernel = Some(t0.elapsed().as_secs_f64());
        }
        let parsed = match console::parse(&line) {
            Ok(p) => p,
            Err(e) if outcome.verdict.is_none() => {
                run.kill();
                return Err(e.into());
            }
            Err(_) => continue, // after the verdict, only shown
        };
        match parsed {
            GuestLine::Hello if !said_hello => {
                said_hello = true;
                outcome.timings.hello = Some(t0.elapsed().as_secs_f64());
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
                let selection = pcrs
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(",");
                run.say(&format!("nonce {} sha256:{selection}", hex::encode(nonce)))?;
            }
            GuestLine::Quote { attest, signature } if outcome.verdict.is_none() => {
                quote = Some((attest, signature));
            }
            GuestLine::EventLog(log) if outcome.verdict.is_none() && logs.is_empty() => {
                logs.push(log);
            }
            GuestLine::EvidenceEnd if said_hello && outcome.verdict.is_none() => {
                let (attest, signature) = quote.take().unwrap_or_default();
                let (verdict, recorded) = judge(spec, ak, &nonce, &pcrs, attest, signature, &logs);
                let trusted = verdict.trusted;
                outcome.verdict = Some(verdict);
                outcome.recorded = recorded;
                if !trusted {
                    let _ = run.say("refused");
                    run.kill();
                    let failures = outcome
                        .verdict
                        .as_ref()
                        .map(|v| v.failures.len())
                        .unwrap_or(0);
                    return Err(GuestError::Refused(format!(
                        "its boot does not match the guest reference ({failures} failures); stopped before it ran"
                    )));
                }
                run.say("trusted")?;
                hand_over(spec, run, &spec.state.join(NET_GATE))?;
            }
            GuestLine::Ready { kernel } if outcome.verdict.as_ref().is_some_and(|v| v.trusted) => {
                outcome.timings.ready = Some(t0.elapsed().as_secs_f64());
                outcome.kernel = Some(kernel);
                if let Some(d) = spec.run_for {
                    stop_at = Some(Instant::now() + d);
                }
            }
            GuestLine::Ready { .. } => {
                // Ready before a verdict: the guest skipped its proof.
                run.kill();
                return Err(GuestError::Refused(
                    "it said ready before its evidence was verified".to_owned(),
                ));
            }
            _ => {}
        }
        if let Some(s) = stop_at {
            if Instant::now() >= s {
                run.kill();
                return Ok(());
            }
        }
    }
}

/// Remove the network gate: the guest's connections reach nothing.
fn close_gate(gate: &std::path::Path) -> Result<(), GuestError> {
    match std::fs::remove_file(gate) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(GuestError::io("closing the guest's network", e)),
    }
}

/// After `trusted`: open the network gate, send the network's address and
/// the credentials, then `go`.
fn hand_over(
    spec: &GuestSpec<'_>,
    run: &mut qemu::Run,
    gate: &std::path::Path,
) -> Result<(), GuestError> {
    use base64::Engine as _;
    if let Some(net) = &spec.network {
        network::open_gate(gate)?;
        run.say(&format!("network {} {}", network::GUEST_ADDR, net.port))?;
    }
    // In pieces: a terminal in canonical mode keeps at most 4095
    // characters of a line.
    for c in &spec.credentials {
        let text = base64::engine::general_purpose::STANDARD.encode(&c.bytes);
        for piece in text.as_bytes().chunks(network::CREDENTIAL_PIECE) {
            run.say(&format!(
                "credential {} {}",
                c.name,
                String::from_utf8_lossy(piece)
            ))?;
        }
    }
    run.say("go")
}

/// A guest reference must name the kernel: one without PCRs, or without
/// the `guest-kernel` stage in PCR 4, would trust any boot.
fn check_reference(r: &Reference) -> Result<(), GuestError> {
    let kernel = r
        .pcrs
        .get(&4)
        .is_some_and(|p| p.events.iter().any(|e| e.stage == "guest-kernel"));
    if !kernel || !r.banks.contains(&HashAlg::Sha256) {
        return Err(GuestError::Refused(format!(
            "the guest reference {:?} does not measure the guest's kernel (PCR 4, stage guest-kernel, sha256); make it with satchel guest reference",
            r.name
        )));
    }
    Ok(())
}

/// Build the evidence from what the guest sent and judge it.
fn judge(
    spec: &GuestSpec<'_>,
    ak: &attest::tpm::AkFile,
    nonce: &[u8],
    pcrs: &[u32],
    attest: Vec<u8>,
    signature: Vec<u8>,
    logs: &[Vec<u8>],
) -> (Verdict, Option<Reference>) {
    use base64::Engine as _;
    // The values the log replays to; the quote's digest must equal them.
    let mut values = PcrBanks::new();
    let parsed = logs.first().and_then(|l| attest::eventlog::parse(l).ok());
    if let Some(log) = &parsed {
        let replayed = attest::eventlog::replay(log, Default::default()).pcrs;
        for &pcr in pcrs {
            let v = replayed
                .get(HashAlg::Sha256, pcr)
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| HashAlg::Sha256.reset_value(0));
            values.set(HashAlg::Sha256, pcr, v);
        }
    }
    let evidence = attest::Evidence {
        format: attest::evidence::FORMAT.to_owned(),
        quote: attest,
        signature,
        ak_pem: ak.public_pem.clone(),
        ak_public: base64::engine::general_purpose::STANDARD
            .decode(&ak.tpm2b_public)
            .ok(),
        nonce: nonce.to_vec(),
        pcrs: values,
        event_logs: logs.to_vec(),
    };
    let pinned = attest::tpm2::PublicKey::from_pem(&ak.public_pem).ok();
    match &spec.judge {
        Judge::Reference(r) => (attest::verify(&evidence, r, nonce, pinned.as_ref()), None),
        Judge::Record { name } => {
            let Some(log) = parsed else {
                let empty = Reference {
                    format: attest::reference::FORMAT.to_owned(),
                    name: name.clone(),
                    version: 0,
                    epoch: 0,
                    created: String::new(),
                    banks: vec![HashAlg::Sha256],
                    pcrs: Default::default(),
                };
                return (
                    attest::verify(&evidence, &empty, nonce, pinned.as_ref()),
                    None,
                );
            };
            let mut reference = Reference::from_log(name, String::new(), &log, |i| {
                log.events
                    .get(i)
                    .map(|e| stage_of(e).to_owned())
                    .unwrap_or_default()
            });
            reference.banks = vec![HashAlg::Sha256];
            reference.pcrs.retain(|p, _| pcrs.contains(p));
            // PCRs nothing measured into in this boot (8, 12) are held at
            // their reset value: a loader or stub that starts measuring
            // there on a device is caught too.
            for &pcr in pcrs {
                reference
                    .pcrs
                    .entry(pcr)
                    .or_insert_with(|| attest::reference::PcrReference {
                        value: [(
                            HashAlg::Sha256,
                            attest::reference::Hex(HashAlg::Sha256.reset_value(0)),
                        )]
                        .into(),
                        events: Vec::new(),
                    });
            }
            for r in reference.pcrs.values_mut() {
                r.value.retain(|b, _| *b == HashAlg::Sha256);
                for e in &mut r.events {
                    e.digests.retain(|b, _| *b == HashAlg::Sha256);
                }
            }
            let verdict = attest::verify(&evidence, &reference, nonce, pinned.as_ref());
            (verdict, Some(reference))
        }
    }
}

/// Write `line` to a writer as one host protocol line.
pub(crate) fn host_line(w: &mut dyn std::io::Write, line: &str) -> std::io::Result<()> {
    w.write_all(format!("{}{line}\n", console::HOST).as_bytes())?;
    w.flush()
}
