//! qemu: the accelerator, the command line and the running guest.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{disk, network, GuestError, GuestSpec};

/// Which accelerator runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// KVM where it really runs a guest, TCG otherwise.
    Auto,
    /// KVM only.
    Kvm,
    /// Software emulation.
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Accel, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            _ => Err(format!("{s:?}: expected auto, kvm or tcg")),
        }
    }
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccelChoice {
    /// `kvm` or `tcg`.
    pub used: &'static str,
    /// Why.
    pub why: String,
}

/// How long a KVM guest must run without `KVM internal error` to count as
/// running (the failure seen on some hosts comes at once).
const KVM_PROBE: Duration = Duration::from_secs(3);

/// Pick the accelerator: for `auto`, KVM only if /dev/kvm opens and a
/// firmware-only guest runs under it for a few seconds; otherwise TCG.
pub(super) fn choose(spec: &GuestSpec<'_>) -> Result<AccelChoice, GuestError> {
    match spec.accel {
        Accel::Tcg => Ok(AccelChoice {
            used: "tcg",
            why: "asked for (--accel tcg)".to_owned(),
        }),
        Accel::Kvm => Ok(AccelChoice {
            used: "kvm",
            why: "asked for (--accel kvm)".to_owned(),
        }),
        Accel::Auto => {
            if let Err(e) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/kvm")
            {
                return Ok(AccelChoice {
                    used: "tcg",
                    why: format!("/dev/kvm cannot be opened ({e})"),
                });
            }
            match probe_kvm(spec) {
                Ok(()) => Ok(AccelChoice {
                    used: "kvm",
                    why: format!(
                        "a firmware-only guest ran {} s under KVM",
                        KVM_PROBE.as_secs()
                    ),
                }),
                Err(why) => Ok(AccelChoice {
                    used: "tcg",
                    why: format!("KVM does not run a guest here: {why}"),
                }),
            }
        }
    }
}

fn probe_kvm(spec: &GuestSpec<'_>) -> Result<(), String> {
    let vars = spec.state.join("probe-vars.fd");
    std::fs::copy(&spec.firmware.vars, &vars).map_err(|e| e.to_string())?;
    let mut child = Command::new(&spec.qemu)
        .args(["-machine", "q35", "-accel", "kvm", "-m", "256"])
        .args([
            "-display",
            "none",
            "-vga",
            "none",
            "-nodefaults",
            "-net",
            "none",
        ])
        .args(["-serial", "null", "-monitor", "none"])
        .arg("-drive")
        .arg(pflash(&spec.firmware.code, true))
        .arg("-drive")
        .arg(pflash(&vars, false))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", spec.qemu.display()))?;
    let start = Instant::now();
    let outcome = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Err(format!("qemu exited at once ({status})")),
            Ok(None) if start.elapsed() >= KVM_PROBE => break Ok(()),
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(e.to_string()),
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let _ = std::fs::remove_file(&vars);
    // A guest stopped by "KVM internal error" keeps qemu alive, paused.
    if let Some(line) = err.lines().find(|l| l.contains("KVM internal error")) {
        return Err(line.trim().to_owned());
    }
    outcome.map_err(|e| {
        let detail = err.lines().next().unwrap_or("").trim();
        if detail.is_empty() {
            e
        } else {
            format!("{e}: {detail}")
        }
    })
}

fn pflash(path: &Path, readonly: bool) -> String {
    format!(
        "if=pflash,format=raw,{}file={}",
        if readonly { "readonly=on," } else { "" },
        path.display().to_string().replace(',', ",,")
    )
}

/// The guest's disks.
pub(super) struct Disks {
    pub esp: PathBuf,
    pub root: PathBuf,
    pub user: Option<PathBuf>,
    pub vars: PathBuf,
}

/// What the console gave.
pub(super) enum Next {
    Line(String),
    Closed,
    TimedOut,
}

/// A running qemu, its console read by a thread.
pub(super) struct Run {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Run {
    pub(super) fn spawn(
        spec: &GuestSpec<'_>,
        accel: &AccelChoice,
        disks: &Disks,
        key: Option<&disk::KeyFile>,
        tpm_socket: &Path,
        gate: &Path,
    ) -> Result<Run, GuestError> {
        let mut cmd = Command::new(&spec.qemu);
        cmd.args(["-machine", "q35", "-accel", accel.used])
            .args(["-m", &spec.memory_mib.to_string(), "-smp", "1"])
            .args(["-display", "none", "-vga", "none", "-nodefaults"])
            .args(["-monitor", "none", "-serial", "stdio"])
            .arg("-drive")
            .arg(pflash(&spec.firmware.code, true))
            .arg("-drive")
            .arg(pflash(&disks.vars, false))
            .arg("-chardev")
            .arg(format!(
                "socket,id=chrtpm,path={}",
                tpm_socket.display().to_string().replace(',', ",,")
            ))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", "tpm-tis,tpmdev=tpm0"]);
        // The NIC is always there, so the firmware's measured view of the
        // machine (PCR 1) is the same with a network and without: what the
        // guest reaches is decided by the forward, not by the hardware.
        // No option ROM: OVMF has nothing to boot from the network.
        cmd.arg("-netdev")
            .arg(network::netdev(spec.network.as_ref(), gate)?)
            .args(["-device", "virtio-net-pci,netdev=net0,romfile="]);
        if let Some(k) = key {
            cmd.arg("-object").arg(k.object("diskkey"));
        }
        let key_id = key.map(|_| "diskkey");
        // The ESP first: the firmware boots its \EFI\BOOT\BOOTX64.EFI.
        cmd.arg("-blockdev")
            .arg(format!(
                "{},read-only=on",
                disk::blockdev(&disks.esp, "esp", None)
            ))
            .args(["-device", "virtio-blk-pci,drive=esp,bootindex=0"]);
        // The root by the serial the host gives it (the guest finds it as
        // /dev/disk/by-id/virtio-satchel-root), never by a label the guest
        // could write on another disk; read-only.
        cmd.arg("-blockdev")
            .arg(format!(
                "{},read-only=on",
                disk::blockdev(&disks.root, "root", key_id)
            ))
            .args(["-device", "virtio-blk-pci,drive=root,serial=satchel-root"]);
        if let Some(user) = &disks.user {
            cmd.arg("-blockdev")
                .arg(disk::blockdev(user, "user", key_id))
                .args(["-device", "virtio-blk-pci,drive=user"]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| GuestError::Tool {
                what: "starting the guest",
                program: spec.qemu.display().to_string(),
                detail: if e.kind() == std::io::ErrorKind::NotFound {
                    "not installed (scripts/setup.sh installs qemu-system-x86)".to_owned()
                } else {
                    e.to_string()
                },
            })?;
        let stdout = child.stdout.take();
        let stderr_pipe = child.stderr.take();
        // Bounded: a guest printing fast waits for the host, never fills
        // its memory.
        let (tx, lines) = mpsc::sync_channel(64);
        std::thread::spawn(move || {
            let Some(out) = stdout else { return };
            let mut reader = BufReader::new(out);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                // Lines longer than MAX_LINE are cut, never kept whole.
                match (&mut reader)
                    .take(super::console::MAX_LINE as u64)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        if tx.send(super::console::clean(&buf)).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let Some(mut err) = stderr_pipe else { return };
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    return;
                }
                if let Ok(mut s) = sink.lock() {
                    if s.len() < 64 * 1024 {
                        s.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            }
        });
        Ok(Run {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        })
    }

    pub(super) fn next_line(&mut self, until: Instant) -> Next {
        let wait = until.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(l) => Next::Line(l),
            Err(RecvTimeoutError::Timeout) => Next::TimedOut,
            Err(RecvTimeoutError::Disconnected) => Next::Closed,
        }
    }

    /// Send one protocol line to the guest.
    pub(super) fn say(&mut self, line: &str) -> Result<(), GuestError> {
        let stdin = self.stdin.as_mut().ok_or_else(|| {
            GuestError::io(
                "answering the guest",
                std::io::Error::other("console closed"),
            )
        })?;
        super::host_line(stdin, line).map_err(|e| GuestError::io("answering the guest", e))
    }

    pub(super) fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// Wait for qemu to exit (killing it after 30 s): how it ended, and
    /// whether the guest powered off by itself (qemu's status 0).
    pub(super) fn finish(&mut self) -> (String, bool) {
        self.stdin = None;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => return (s.to_string(), s.success()),
                Ok(None) if Instant::now() > deadline => {
                    let _ = self.child.kill();
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return (e.to_string(), false),
            }
        }
    }

    /// The end of qemu's own error output, for messages.
    pub(super) fn stderr_tail(&self) -> String {
        let s = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        let s = s.trim();
        if s.is_empty() {
            String::new()
        } else {
            let tail: String = s
                .chars()
                .rev()
                .take(600)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            format!("; qemu said: {tail}")
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
