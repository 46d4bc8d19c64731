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

use super::disk::KeyFile;
use super::GuestError;

/// Where the guest finds its attestation key.
pub const AK_HANDLE: u32 = 0x8101_0002;
const AK_FILE: &str = "ak.json";
/// Present when the vTPM's state files are encrypted (AES-256-CBC, by
/// swtpm) with the key [`StateKeys`] derives from the disk key.
const ENCRYPTED_MARK: &str = "state-encrypted";
/// `ak.json`'s MAC under the disk key (hex).
const AK_MAC: &str = "ak.json.mac";

/// What the disk key protects of the vTPM: its state files, encrypted by
/// swtpm with one derived key, and `ak.json`, the key the host trusts the
/// guest's quotes from, authenticated with another (HMAC-SHA-256 in
/// `ak.json.mac`), so neither can be read or replaced offline. Both are
/// SHA-256 over a label and the disk key.
pub struct StateKeys {
    swtpm: KeyFile,
    mac: [u8; 32],
}

impl StateKeys {
    /// The keys for the disk key `disk_key`.
    pub fn derive(disk_key: &[u8]) -> Result<StateKeys, GuestError> {
        use sha2::Digest as _;
        let derive = |label: &[u8]| -> [u8; 32] {
            sha2::Sha256::new()
                .chain_update(label)
                .chain_update(disk_key)
                .finalize()
                .into()
        };
        Ok(StateKeys {
            swtpm: KeyFile::new(&derive(b"satchel vTPM state key v1\0"))?,
            mac: derive(b"satchel vTPM ak.json MAC key v1\0"),
        })
    }

    fn tag(&self, ak_json: &[u8]) -> Result<hmac::Hmac<sha2::Sha256>, GuestError> {
        use hmac::Mac as _;
        let mut m = <hmac::Hmac<sha2::Sha256>>::new_from_slice(&self.mac).map_err(|e| {
            GuestError::io(
                "keying the ak.json MAC",
                std::io::Error::other(e.to_string()),
            )
        })?;
        m.update(ak_json);
        Ok(m)
    }
}

/// A running swtpm, stopped when dropped.
pub struct Swtpm {
    child: Reaped,
    /// The control socket qemu connects to (socket mode only).
    pub socket: PathBuf,
}

/// A child process killed and waited for when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(dir: &Path, args: &[String], key: Option<&KeyFile>) -> Result<Child, GuestError> {
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
        .args(
            key.map(|k| {
                [
                    "--key".to_owned(),
                    format!("file={},format=hex,mode=aes-256-cbc", k.path()),
                ]
            })
            .into_iter()
            .flatten(),
        )
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
pub fn provision(dir: &Path, keys: Option<&StateKeys>) -> Result<AkFile, GuestError> {
    let key = keys.map(|k| &k.swtpm);
    let file = dir.join(AK_FILE);
    let encrypted = dir.join(ENCRYPTED_MARK).exists();
    match (fs::read(&file), encrypted, key.is_some()) {
        (Ok(_), true, false) => {
            return Err(GuestError::Image {
                detail: format!(
                    "the vTPM's state in {} is encrypted under the disk key, and this run has none (--unencrypted); give the key, or use another --state",
                    dir.display()
                ),
            })
        }
        // Made in the clear by an earlier version: provisioned again, under
        // the key (the vTPM holds only the attestation key, which ak.json
        // names afresh; the guest reference does not depend on it).
        (Ok(_), false, true) => {
            fs::remove_dir_all(dir)
                .map_err(|e| GuestError::io("removing the vTPM's clear state", e))?;
        }
        (Ok(bytes), _, _) => {
            if let Some(keys) = keys {
                check_mac(dir, keys, &bytes)?;
            }
            return serde_json::from_slice(&bytes).map_err(|e| GuestError::Image {
                detail: format!("{}: not an attestation key file: {e}", file.display()),
            });
        }
        (Err(_), _, _) => {}
    }
    fs::create_dir_all(dir).map_err(|e| GuestError::io("making the vTPM's directory", e))?;
    private_dir(dir)?;
    let ak = in_private_network(|| make_ak(dir, key))?;
    let json =
        serde_json::to_vec_pretty(&ak).map_err(|e| GuestError::io("writing ak.json", e.into()))?;
    if let Some(keys) = keys {
        use hmac::Mac as _;
        persist::write_secret(&dir.join(ENCRYPTED_MARK), b"aes-256-cbc\n")?;
        let tag = hex::encode(keys.tag(&json)?.finalize().into_bytes());
        persist::write_secret(&dir.join(AK_MAC), tag.as_bytes())?;
    }
    persist::write_secret(&file, &json)?;
    Ok(ak)
}

/// Start a swtpm on `dir` alone, make the attestation key and leave it at
/// [`AK_HANDLE`].
fn make_ak(dir: &Path, key: Option<&KeyFile>) -> Result<AkFile, GuestError> {
    // TCP on 127.0.0.1 (the namespace's own, see [`in_private_network`]).
    // Where that runs on the host's loopback, another local user could try
    // to take a port between its pick and swtpm's bind; then swtpm exits,
    // and the key is made only once this swtpm is seen alive holding the
    // port it was given.
    let port = free_port_pair()?;
    // Stopped however this ends, a panic in the TSS included (a swtpm left
    // running would hold the state's lock).
    let mut child = Reaped(spawn(
        dir,
        &[
            "--server".into(),
            format!("type=tcp,port={port},bindaddr=127.0.0.1"),
            "--ctrl".into(),
            format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1),
            "--flags".into(),
            "not-need-init,startup-clear".into(),
        ],
        key,
    )?);
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
        if !matches!(child.0.try_wait(), Ok(None)) {
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
    made
}

/// Run `f` on a thread of its own in a network namespace of its own, where
/// only loopback is up. The TSS here reaches swtpm only by TCP, and swtpm's
/// control channel has no authentication (a program reaching it can save
/// the whole state, seeds included): in its own namespace, no other program
/// reaches it. Root without one (a container, a seccomp filter, systemd's
/// `RestrictNamespaces=`) is refused; a user other than root, who cannot
/// make one, runs `f` on the host's loopback, and the warning says so.
fn in_private_network<T: Send>(
    f: impl FnOnce() -> Result<T, GuestError> + Send,
) -> Result<T, GuestError> {
    let what = "provisioning the vTPM in a network namespace of its own";
    std::thread::scope(|s| {
        s.spawn(|| {
            // A thread's namespaces are its own, and the children it starts
            // (ip, swtpm) inherit them; the rest of the process stays.
            match nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                Ok(()) => loopback_up()?,
                Err(nix::errno::Errno::EPERM) if !rustix::process::geteuid().is_root() => {
                    tracing::warn!(
                        "not root: the vTPM is provisioned on the host's loopback, where another local program could reach swtpm's control port until it is done"
                    )
                }
                Err(e) => {
                    return Err(GuestError::io(
                        what,
                        std::io::Error::other(format!(
                            "{e}: nothing was made (as root, the vTPM is provisioned only where no other program can reach it; allow this process to make a network namespace)"
                        )),
                    ))
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(GuestError::io(what, std::io::Error::other("the thread panicked"))))
    })
}

/// Bring up loopback in this thread's (new) network namespace, with
/// iproute2's `ip` from the system's own directories (not `$PATH`: this
/// runs as root).
fn loopback_up() -> Result<(), GuestError> {
    let tool = |detail: String| GuestError::Tool {
        what: "bringing up loopback for the vTPM's provisioning",
        program: "ip (iproute2)".to_owned(),
        detail,
    };
    let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .ok_or_else(|| tool("not installed (scripts/setup.sh installs iproute2)".to_owned()))?;
    let o = Command::new(ip)
        .args(["link", "set", "lo", "up"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| tool(e.to_string()))?;
    if !o.status.success() {
        return Err(tool(String::from_utf8_lossy(&o.stderr).trim().to_owned()));
    }
    Ok(())
}

/// `ak.json` must carry its MAC under the disk key: one written offline
/// (another key for the host to trust) is refused.
fn check_mac(dir: &Path, keys: &StateKeys, ak_json: &[u8]) -> Result<(), GuestError> {
    use hmac::Mac as _;
    let tag = fs::read_to_string(dir.join(AK_MAC))
        .ok()
        .and_then(|t| hex::decode(t.trim()).ok());
    let ok = tag.is_some_and(|t| keys.tag(ak_json).is_ok_and(|m| m.verify_slice(&t).is_ok()));
    if ok {
        return Ok(());
    }
    Err(GuestError::Refused(format!(
        "{}/{AK_FILE} does not carry its MAC under the disk key: it was changed or replaced while the guest was not running; nothing started (remove {} to provision the vTPM again)",
        dir.display(),
        dir.display()
    )))
}

/// Make `dir` root's alone (0700).
pub(super) fn private_dir(dir: &Path) -> Result<(), GuestError> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| GuestError::io("making a guest directory private", e))
}

/// Start the vTPM for qemu: control over a unix socket in `dir`, stopped
/// when qemu disconnects or this is dropped.
pub fn start(dir: &Path, keys: Option<&StateKeys>) -> Result<Swtpm, GuestError> {
    let key = keys.map(|k| &k.swtpm);
    let socket = dir.join("swtpm.sock");
    let _ = fs::remove_file(&socket);
    let child = spawn(
        dir,
        &[
            "--ctrl".into(),
            format!("type=unixio,path={}", socket.display()),
            "--terminate".into(),
        ],
        key,
    )?;
    let mut tpm = Swtpm {
        child: Reaped(child),
        socket,
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tpm.socket.exists() {
        if let Ok(Some(status)) = tpm.child.0.try_wait() {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn swtpm_or_skip() -> bool {
        if Command::new("swtpm").arg("--version").output().is_ok() {
            return true;
        }
        assert!(std::env::var_os("CI").is_none(), "CI has swtpm");
        eprintln!("SKIPPED: needs swtpm");
        false
    }

    /// The attestation key's public point, as the vTPM's state would hold
    /// it if it were in the clear.
    fn public_point(ak: &AkFile) -> Vec<u8> {
        use base64::Engine as _;
        let public = base64::engine::general_purpose::STANDARD
            .decode(&ak.tpm2b_public)
            .unwrap();
        public[public.len() - 32..].to_vec()
    }

    fn state_holds(dir: &Path, needle: &[u8]) -> bool {
        fs::read_dir(dir).unwrap().any(|e| {
            let bytes = fs::read(e.unwrap().path()).unwrap_or_default();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    #[test]
    fn the_vtpm_state_is_encrypted_under_a_key_derived_from_the_disk_key() {
        if !swtpm_or_skip() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        // In the clear (image CI): the key's public point is in the files.
        let clear = d.path().join("clear");
        let ak = provision(&clear, None).unwrap();
        assert!(state_holds(&clear, &public_point(&ak)));
        // Under the disk key: it is not, and a run without the key is
        // refused rather than starting a vTPM it cannot read.
        let sealed = d.path().join("sealed");
        let key = StateKeys::derive(&[7u8; 32]).unwrap();
        let ak = provision(&sealed, Some(&key)).unwrap();
        assert!(!state_holds(&sealed, &public_point(&ak)));
        let e = provision(&sealed, None).unwrap_err().to_string();
        assert!(e.contains("encrypted under the disk key"), "{e}");
        assert_eq!(provision(&sealed, Some(&key)).unwrap(), ak);
        // The attacker's review: ak.json replaced offline by another key's
        // (here the clear vTPM's) would have been trusted as is. Refused.
        let genuine = fs::read(sealed.join(AK_FILE)).unwrap();
        let other = provision(&clear, None).unwrap();
        fs::write(sealed.join(AK_FILE), serde_json::to_vec(&other).unwrap()).unwrap();
        let e = provision(&sealed, Some(&key)).unwrap_err().to_string();
        assert!(e.contains("does not carry its MAC"), "{e}");
        fs::write(sealed.join(AK_FILE), &genuine).unwrap();
        fs::remove_file(sealed.join(AK_MAC)).unwrap();
        assert!(provision(&sealed, Some(&key)).is_err(), "no MAC: refused");
        // A clear state from an earlier version is provisioned again, under
        // the key: a new attestation key, the clear files gone.
        let again = provision(&clear, Some(&key)).unwrap();
        assert_ne!(again, ak);
        assert!(!state_holds(&clear, &public_point(&again)));
        assert!(clear.join(ENCRYPTED_MARK).exists());
    }

    /// What a local program sees of the provisioning swtpm: for each look
    /// at it, whether its TCP control port answered from here.
    fn reach_provisioning(dir: &Path, done: &std::sync::atomic::AtomicBool) -> Vec<bool> {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let marker = format!("dir={}", dir.display());
        let mut looks = Vec::new();
        while !done.load(Ordering::SeqCst) {
            for entry in fs::read_dir("/proc").unwrap().flatten() {
                let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
                    continue;
                };
                let args: Vec<String> = cmdline
                    .split(|b| *b == 0)
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                if !args.iter().any(|a| a.ends_with("swtpm")) || !args.contains(&marker) {
                    continue;
                }
                // Another network namespace is out of a program's reach
                // unless it holds CAP_SYS_ADMIN over it (root's).
                let Ok(theirs) = fs::read_link(entry.path().join("ns/net")) else {
                    continue;
                };
                if fs::read_link("/proc/thread-self/ns/net").ok() != Some(theirs) {
                    looks.push(false);
                    continue;
                }
                let Some(port) = args
                    .iter()
                    .skip_while(|a| *a != "--ctrl")
                    .nth(1)
                    .and_then(|c| c.split(',').find_map(|kv| kv.strip_prefix("port=")))
                    .and_then(|p| p.parse::<u16>().ok())
                else {
                    looks.push(false);
                    continue;
                };
                // The attacker's move: CMD_GET_CAPABILITY on the control
                // channel (one that answers would also save the state).
                let reached = TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                    .and_then(|mut c| {
                        c.set_read_timeout(Some(Duration::from_secs(1)))?;
                        c.write_all(&1u32.to_be_bytes())?;
                        let mut answer = [0u8; 8];
                        c.read_exact(&mut answer)
                    })
                    .is_ok();
                looks.push(reached);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        looks
    }

    #[test]
    fn no_other_local_program_reaches_the_vtpm_while_it_is_provisioned() {
        if !swtpm_or_skip() {
            return;
        }
        if !rustix::process::geteuid().is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIPPED: needs root (a network namespace of its own)");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("vtpm");
        let done = std::sync::atomic::AtomicBool::new(false);
        let looks = std::thread::scope(|s| {
            let watcher = s.spawn(|| reach_provisioning(&dir, &done));
            let made = provision(&dir, Some(&StateKeys::derive(&[9u8; 32]).unwrap()));
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            made.unwrap();
            watcher.join().unwrap()
        });
        assert!(!looks.is_empty(), "the provisioning swtpm was never seen");
        assert!(
            !looks.contains(&true),
            "swtpm's unauthenticated control port answered a local program during provisioning ({} of {} looks)",
            looks.iter().filter(|r| **r).count(),
            looks.len()
        );
    }
}
