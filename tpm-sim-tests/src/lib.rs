//! A harness that runs a private `swtpm` software TPM for one test: the
//! [`Swtpm`] guard starts it on a free TCP port pair in its own temporary
//! state directory and kills it when dropped.
//!
//! One swtpm per test: tests run in parallel, each with its own guard, so
//! there is no global TPM, no shared TPM context and no test mutex. This
//! crate is test tooling only; it must never be used to reach a real TPM and
//! never leaves a swtpm process or state directory behind.
//!
//! The crate also holds [`Postgres`], the same kind of guard for a private
//! PostgreSQL server, for tests of the parts that store in a database, and
//! [`ObjectStore`], one for a private S3-compatible store (SeaweedFS).

mod postgres;
pub mod seaweed;

pub use postgres::Postgres;
pub use seaweed::ObjectStore;

/// The real firmware event logs the tests run against: `$SATCHEL_FIXTURES`,
/// else the repository's own `fixtures/eventlogs`.
pub fn fixtures_dir() -> std::path::PathBuf {
    match std::env::var_os("SATCHEL_FIXTURES") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/eventlogs"),
    }
}

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How many port pairs to try when swtpm exits early (e.g. a port was taken
/// between our bind test and swtpm's bind).
const START_ATTEMPTS: usize = 10;
/// How long one swtpm may take to listen before we give up on it.
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How many OS-assigned ports to try before finding one whose successor is free.
const PORT_PICK_ATTEMPTS: usize = 100;
/// File in the state directory that receives swtpm's stdout and stderr.
const LOG_FILE: &str = "swtpm.log";
/// File in the state directory where swtpm writes its PID once both sockets
/// are bound (so it proves the ports are ours, not another test's).
const PID_FILE: &str = "swtpm.pid";
/// Empty swtpm_setup config in the state directory (keeps /etc out of it).
const SETUP_CONFIG: &str = "swtpm_setup.conf";
/// Subdirectory of the state directory holding the EK certificate's CA.
const LOCAL_CA_DIR: &str = "localca";

/// A running `swtpm socket --tpm2` process owned by one test.
///
/// Start one per test with [`Swtpm::start`] and hand [`Swtpm::tcti`] to the
/// code under test. Tests run in parallel, each with its own swtpm on its
/// own ports and state directory: there is no global TPM. Dropping the guard
/// kills the process (SIGKILL via [`Child::kill`]), waits for it, and removes
/// the state directory.
///
/// The TPM is started with `startup-clear`, so it accepts commands at once,
/// and has no resource manager: only three transient object slots, so flush
/// what you load.
#[derive(Debug)]
pub struct Swtpm {
    // `Drop::drop` kills the process before any field drops, so `dir` is
    // removed only once swtpm can no longer write to it.
    child: Child,
    port: u16,
    dir: TempDir,
}

/// What became of one start attempt.
enum Readiness {
    /// Both ports are bound by our process and the server port accepts.
    Ready,
    /// swtpm exited before it was ready (typically a port clash).
    Exited,
    /// swtpm is alive but did not become ready in time.
    TimedOut,
}

impl Swtpm {
    /// Start a fresh swtpm on a free port pair in a private temporary
    /// directory, retrying with new ports if it exits early.
    ///
    /// Without `swtpm_setup`, swtpm 0.7 allocates all 24 PCRs in the sha1,
    /// sha256, sha384 and sha512 banks. Fails with
    /// [`io::ErrorKind::NotFound`] when the `swtpm` binary is missing, and
    /// otherwise with an error that includes swtpm's output.
    pub fn start() -> io::Result<Swtpm> {
        Self::start_in(private_dir()?)
    }

    /// Like [`Swtpm::start`], but first runs `swtpm_setup --pcr-banks` so
    /// that only the named banks (`sha1`, `sha256`, `sha384`, `sha512`) are
    /// allocated. Takes about half a second more.
    pub fn start_with_pcr_banks(banks: &[&str]) -> io::Result<Swtpm> {
        let dir = private_dir()?;
        run_swtpm_setup(dir.path(), banks)?;
        Self::start_in(dir)
    }

    /// Like [`Swtpm::start`], but first provisions the TPM as a vendor
    /// would: `swtpm_setup --create-ek-cert` makes an RSA 2048 EK (persistent
    /// at 0x81010001) and writes its certificate to NV index 0x01c00002,
    /// signed by a local CA made for this TPM alone in
    /// [`Swtpm::ek_ca_dir`]. Allocates only `banks`. Takes about 2 s.
    pub fn start_with_ek_cert(banks: &[&str]) -> io::Result<Swtpm> {
        let dir = private_dir()?;
        run_swtpm_setup_ek(dir.path(), banks)?;
        Self::start_in(dir)
    }

    /// The local CA that signed this TPM's EK certificate (only after
    /// [`Swtpm::start_with_ek_cert`]): its certificates and keys.
    pub fn ek_ca_dir(&self) -> std::path::PathBuf {
        self.dir.path().join(LOCAL_CA_DIR)
    }

    /// The TCTI string for this TPM, e.g. `swtpm:host=127.0.0.1,port=2321`.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// The TPM command port (the control port is this plus one).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The private directory holding this TPM's state and swtpm's log.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Power-cycle the TPM: stop swtpm and start it again on the same state
    /// (new ports; see [`Swtpm::tcti`]). What is persistent survives (seeds,
    /// so keys and sealed objects made before still load; persistent
    /// handles; NV), the PCRs start from their reset values, as after a
    /// reboot.
    pub fn reboot(&mut self) -> io::Result<()> {
        stop(&mut self.child);
        let mut last_output = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port_pair()?;
            let mut child = spawn_swtpm(self.dir.path(), port)?;
            match wait_ready(&mut child, self.dir.path(), port)? {
                Readiness::Ready => {
                    self.child = child;
                    self.port = port;
                    return Ok(());
                }
                Readiness::Exited => last_output = output(self.dir.path()),
                Readiness::TimedOut => {
                    stop(&mut child);
                    return Err(timed_out(port, &output(self.dir.path())));
                }
            }
        }
        Err(io::Error::other(format!(
            "swtpm did not come back on {START_ATTEMPTS} port pairs; last output: {}",
            last_output.trim()
        )))
    }

    /// Start swtpm with its state in `dir`, on new port pairs until one works.
    fn start_in(dir: TempDir) -> io::Result<Swtpm> {
        let mut last_output = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = free_port_pair()?;
            let mut child = spawn_swtpm(dir.path(), port)?;
            match wait_ready(&mut child, dir.path(), port) {
                Ok(Readiness::Ready) => return Ok(Swtpm { child, port, dir }),
                Ok(Readiness::Exited) => last_output = output(dir.path()),
                Ok(Readiness::TimedOut) => {
                    stop(&mut child);
                    return Err(timed_out(port, &output(dir.path())));
                }
                Err(err) => {
                    stop(&mut child);
                    return Err(err);
                }
            }
        }
        Err(io::Error::other(format!(
            "swtpm exited early on {START_ATTEMPTS} port pairs; last output: {}",
            last_output.trim()
        )))
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Kill (SIGKILL) and reap `child`; errors mean it is already gone.
fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A fresh private directory for one swtpm's state.
fn private_dir() -> io::Result<TempDir> {
    tempfile::Builder::new().prefix("satchel-swtpm-").tempdir()
}

/// Poll until `child` owns its ports and accepts, exits, or times out.
fn wait_ready(child: &mut Child, dir: &Path, port: u16) -> io::Result<Readiness> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(Readiness::Exited);
        }
        if owns_ports(child, dir) && accepts(port) {
            return Ok(Readiness::Ready);
        }
        if Instant::now() >= deadline {
            return Ok(Readiness::TimedOut);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// swtpm writes its PID file only after binding both sockets, so a PID
/// file naming `child` means the ports are ours, not another test's.
fn owns_ports(child: &Child, dir: &Path) -> bool {
    fs::read_to_string(dir.join(PID_FILE))
        .map(|pid| pid.trim() == child.id().to_string())
        .unwrap_or(false)
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` now.
fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// swtpm's stdout and stderr so far (empty if unreadable).
fn output(dir: &Path) -> String {
    fs::read(dir.join(LOG_FILE))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The error for a swtpm that stayed alive but never became ready.
fn timed_out(port: u16, output: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "swtpm on port {port} not ready after {READY_TIMEOUT:?}; output: {}",
            output.trim()
        ),
    )
}

/// Run `swtpm_setup` in `dir` to allocate only `banks`, with an empty
/// private config so nothing is read from or written to /etc or /var/lib.
fn run_swtpm_setup(dir: &Path, banks: &[&str]) -> io::Result<()> {
    let config = dir.join(SETUP_CONFIG);
    File::create(&config)?;
    let out = Command::new("swtpm_setup")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(dir)
        .arg("--pcr-banks")
        .arg(banks.join(","))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| explain_spawn_error("swtpm_setup", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "swtpm_setup --pcr-banks {} failed ({}): {}{}",
        banks.join(","),
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Run `swtpm_setup --create-ek-cert` in `dir` with a private config whose
/// local CA lives in `dir/localca` (nothing in /etc or /var/lib is used).
fn run_swtpm_setup_ek(dir: &Path, banks: &[&str]) -> io::Result<()> {
    let ca = dir.join(LOCAL_CA_DIR);
    fs::create_dir_all(&ca)?;
    let ca_conf = dir.join("swtpm-localca.conf");
    fs::write(
        &ca_conf,
        format!(
            "statedir = {0}\nsigningkey = {0}/signkey.pem\nissuercert = {0}/issuercert.pem\ncertserial = {0}/certserial\n",
            ca.display()
        ),
    )?;
    let ca_options = dir.join("swtpm-localca.options");
    fs::write(
        &ca_options,
        "--platform-manufacturer Satchel\n--platform-version 2.1\n--platform-model swtpm\n",
    )?;
    let config = dir.join(SETUP_CONFIG);
    fs::write(
        &config,
        format!(
            "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\n",
            ca_conf.display(),
            ca_options.display()
        ),
    )?;
    let out = Command::new("swtpm_setup")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(dir)
        .arg("--pcr-banks")
        .arg(banks.join(","))
        .arg("--create-ek-cert")
        .arg("--config")
        .arg(&config)
        .arg("--overwrite")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| explain_spawn_error("swtpm_setup", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "swtpm_setup --create-ek-cert failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// A port P such that P and P + 1 are both free on 127.0.0.1 right now.
fn free_port_pair() -> io::Result<u16> {
    for _ in 0..PORT_PICK_ATTEMPTS {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = first.local_addr()?.port();
        let Some(ctrl) = port.checked_add(1) else {
            continue;
        };
        if TcpListener::bind((Ipv4Addr::LOCALHOST, ctrl)).is_ok() {
            return Ok(port);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("no free TCP port pair on 127.0.0.1 after {PORT_PICK_ATTEMPTS} tries"),
    ))
}

/// Spawn swtpm serving `port` (control on `port + 1`) with state in `dir`.
fn spawn_swtpm(dir: &Path, port: u16) -> io::Result<Child> {
    let log = File::create(dir.join(LOG_FILE))?;
    let ctrl = u32::from(port) + 1;
    Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.display()))
        .arg("--server")
        .arg(format!("type=tcp,port={port}"))
        .arg("--ctrl")
        .arg(format!("type=tcp,port={ctrl}"))
        .arg("--flags")
        .arg("not-need-init,startup-clear")
        .arg("--pid")
        .arg(format!("file={}", dir.join(PID_FILE).display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| explain_spawn_error("swtpm", e))
}

/// Turn "no such file" into a message that says how to install `program`.
fn explain_spawn_error(program: &str, err: io::Error) -> io::Error {
    if err.kind() == io::ErrorKind::NotFound {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "the `{program}` binary is not on PATH (run scripts/setup.sh to \
                 install swtpm, swtpm-tools and tpm2-tools)"
            ),
        )
    } else {
        io::Error::new(err.kind(), format!("cannot start {program}: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_guards_get_different_ports() {
        let a = Swtpm::start().unwrap();
        let b = Swtpm::start().unwrap();
        assert_ne!(a.port(), b.port());
        assert_ne!(a.port() + 1, b.port());
        assert_ne!(a.port(), b.port() + 1);
        assert_ne!(a.state_dir(), b.state_dir());
        assert!(accepts(a.port()) && accepts(b.port()));
    }

    #[test]
    fn tcti_names_the_server_port() {
        let s = Swtpm::start().unwrap();
        assert_eq!(s.tcti(), format!("swtpm:host=127.0.0.1,port={}", s.port()));
    }

    #[test]
    fn drop_stops_the_process_and_removes_the_state_dir() {
        let s = Swtpm::start().unwrap();
        let port = s.port();
        let dir = s.state_dir().to_path_buf();
        assert!(dir.join(PID_FILE).exists());
        drop(s);
        assert!(!accepts(port), "port {port} still accepts after drop");
        assert!(!accepts(port + 1), "control port still accepts after drop");
        assert!(!dir.exists(), "{} still exists", dir.display());
    }

    #[test]
    fn missing_binary_error_says_how_to_install() {
        let err = explain_spawn_error("swtpm", io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert!(err.to_string().contains("scripts/setup.sh"));
    }
}
