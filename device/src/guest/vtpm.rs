//! The guest's own TPM: one swtpm per guest, its state kept in the guest's
//! state directory. Before the first boot the host starts it alone, makes
//! an attestation key under its EK and leaves it at [`AK_HANDLE`]; the
//! host keeps the key's public part and accepts the guest's quotes only
//! from that key. Then qemu gets the TPM through swtpm's control socket.

use std::fs;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use attest::tpm::{AkAlg, AkFile, Tpm};

use super::GuestError;

/// Where the guest finds its attestation key.
pub const AK_HANDLE: u32 = 0x8101_0002;
const AK_FILE: &str = "ak.json";

/// A running swtpm, stopped when dropped.
pub struct Swtpm {
    child: Child,
    /// The control socket qemu connects to (socket mode only).
    pub socket: PathBuf,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(dir: &Path, args: &[String]) -> Result<Child, GuestError> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("swtpm.log"))
        .map_err(|e| GuestError::io("opening the vTPM's log", e))?;
    let err = log
        .try_clone()
        .map_err(|e| GuestError::io("opening the vTPM's log", e))?;
    Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map_err(|e| GuestError::Tool {
            what: "starting the guest's vTPM",
            program: "swtpm".to_owned(),
            detail: e.to_string(),
        })
}

fn free_port_pair() -> Result<u16, GuestError> {
    for _ in 0..32 {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| GuestError::io("finding a free port for the vTPM", e))?;
        let port = first
            .local_addr()
            .map_err(|e| GuestError::io("finding a free port for the vTPM", e))?
            .port();
        if let Some(ctrl) = port.checked_add(1) {
            if TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)).is_ok() {
                return Ok(port);
            }
        }
    }
    Err(GuestError::io(
        "finding a free port for the vTPM",
        std::io::Error::other("no free port pair on 127.0.0.1"),
    ))
}

/// The attestation key of the guest's vTPM in `dir`, made and left at
/// [`AK_HANDLE`] on first use.
pub fn provision(dir: &Path) -> Result<AkFile, GuestError> {
    let file = dir.join(AK_FILE);
    if let Ok(bytes) = fs::read(&file) {
        return serde_json::from_slice(&bytes).map_err(|e| GuestError::Image {
            detail: format!("{}: not an attestation key file: {e}", file.display()),
        });
    }
    fs::create_dir_all(dir).map_err(|e| GuestError::io("making the vTPM's directory", e))?;
    private_dir(dir)?;
    // TCP on 127.0.0.1: the TSS here reaches swtpm only so. Another local
    // user could try to take a port between its pick and swtpm's bind; then
    // swtpm exits, and the key is made only once this swtpm is seen alive
    // holding the port it was given.
    let port = free_port_pair()?;
    let mut child = spawn(
        dir,
        &[
            "--server".into(),
            format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl".into(),
            format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            "--flags".into(),
            "not-need-init,startup-clear".into(),
        ],
    )?;
    let made = (|| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if Instant::now() > deadline {
                return Err(GuestError::io(
                    "starting the guest's vTPM",
                    std::io::Error::other("swtpm did not listen within 10 s (see swtpm.log)"),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return Err(GuestError::io(
                "starting the guest's vTPM",
                std::io::Error::other(format!(
                    "swtpm exited: port {port} was taken by another program (see swtpm.log); nothing was made"
                )),
            ));
        }
        let mut tpm = Tpm::open(&format!("swtpm:host=127.0.0.1,port={port}"))?;
        let ak = tpm.create_ak(AkAlg::EccP256)?;
        tpm.persist_ak(&ak, AK_HANDLE)?;
        Ok(ak)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let ak = made?;
    let json =
        serde_json::to_vec_pretty(&ak).map_err(|e| GuestError::io("writing ak.json", e.into()))?;
    persist::write_secret(&file, &json)?;
    Ok(ak)
}

/// Make `dir` root's alone (0700).
pub(super) fn private_dir(dir: &Path) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| GuestError::io("making a guest directory private", e))
}

/// Start the vTPM for qemu: control over a unix socket in `dir`, stopped
/// when qemu disconnects or this is dropped.
pub fn start(dir: &Path) -> Result<Swtpm, GuestError> {
    let socket = dir.join("swtpm.sock");
    let _ = fs::remove_file(&socket);
    let child = spawn(
        dir,
        &[
            "--ctrl".into(),
            format!("type=unixio,path={}", socket.display()),
            "--terminate".into(),
        ],
    )?;
    let mut tpm = Swtpm { child, socket };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tpm.socket.exists() {
        if let Ok(Some(status)) = tpm.child.try_wait() {
            return Err(GuestError::io(
                "starting the guest's vTPM",
                std::io::Error::other(format!("swtpm exited with {status} (see swtpm.log)")),
            ));
        }
        if Instant::now() > deadline {
            return Err(GuestError::io(
                "starting the guest's vTPM",
                std::io::Error::other("no control socket within 10 s (see swtpm.log)"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(tpm)
}
