//! The guest's one network path, and the files it is handed, both only
//! once its boot is trusted.
//!
//! The guest gets a virtio NIC on qemu's user-mode network in restricted
//! mode: no route out, no host services, only one forward. A connection
//! the guest opens to [`GUEST_ADDR`] on the target's port starts the
//! relay (`satchel guest relay`) with the connection on its stdin and
//! stdout; the relay joins it to the target on the host (the gateway, or
//! its egress proxy) only while the run's gate file exists. The host
//! makes that file when it answers `trusted`, and removes it before the
//! guest starts and after it stops: until its boot is proved, the guest
//! reaches nothing.
//!
//! Credentials (the device certificate, a CA, ...) go over the console
//! after `trusted`, as `credential NAME BASE64` lines. Names and sizes are
//! checked here; nothing here decides trust.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::GuestError;

/// The address the guest reaches the forward at (in qemu's user network).
pub const GUEST_ADDR: &str = "10.0.2.100";

/// The most connections a guest holds through the relay at once (each is a
/// process and a socket on the host); the next is closed at once.
pub const MAX_RELAYS: usize = 64;

/// The largest credential sent (a certificate chain fits many times).
pub const MAX_CREDENTIAL: usize = 48 * 1024;

/// The base64 characters per `credential` line: with the prefix and a
/// name, a line stays under the 4,095 a terminal in canonical mode keeps.
pub const CREDENTIAL_PIECE: usize = 3000;

/// Where the guest's network goes.
#[derive(Debug, Clone)]
pub struct Network {
    /// The target on the host, `HOST:PORT`; the guest reaches it at
    /// [`GUEST_ADDR`] on the same port.
    pub to: String,
    /// The port of `to`.
    pub port: u16,
    /// The program qemu runs per connection: `PROGRAM guest relay --gate
    /// FILE --to HOST:PORT` (this `satchel`).
    pub relay: PathBuf,
}

impl Network {
    /// A network to `to` (`HOST:PORT`), relayed by `relay`.
    pub fn new(to: &str, relay: PathBuf) -> Result<Network, GuestError> {
        let bad = |why: &str| GuestError::Image {
            detail: format!("--network-to {to:?}: {why}"),
        };
        let (host, port) = to.rsplit_once(':').ok_or_else(|| bad("not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("the port is not 1-65535"))?;
        if host.is_empty()
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-[]:".contains(c))
        {
            return Err(bad("the host is not a name or an address"));
        }
        // qemu parses the forward's command like a shell line: the path
        // must need no quoting.
        let shown = relay.display().to_string();
        if shown.is_empty()
            || !shown
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        {
            return Err(GuestError::Image {
                detail: format!(
                    "the relay program's path {shown:?} has characters qemu's forward cannot carry"
                ),
            });
        }
        Ok(Network {
            to: to.to_owned(),
            port,
            relay,
        })
    }
}

/// qemu's `-netdev` value: a restricted user network (no route out, no
/// host services), with one forward to `network`'s target if given.
pub(super) fn netdev(network: Option<&Network>, gate: &Path) -> Result<String, GuestError> {
    let base = "user,id=net0,restrict=on,ipv6=off".to_owned();
    let Some(n) = network else {
        return Ok(base);
    };
    let gate_shown = gate.display().to_string();
    if !gate_shown
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
    {
        return Err(GuestError::Image {
            detail: format!(
                "the state directory's path {gate_shown:?} has characters qemu's forward cannot carry"
            ),
        });
    }
    // No part can hold a comma (the charsets checked), so nothing needs
    // qemu's ",," escape.
    Ok(format!(
        "{base},guestfwd=tcp:{GUEST_ADDR}:{}-cmd:{} guest relay --gate {gate_shown} --to {}",
        n.port,
        n.relay.display(),
        n.to
    ))
}

/// One file handed to the guest after `trusted`.
#[derive(Debug, Clone)]
pub struct Credential {
    /// Its name in the guest (`/run/satchel/credentials/NAME`).
    pub name: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

impl Credential {
    /// A credential named `name` holding `bytes`: 1 to 64 of
    /// `A-Za-z0-9._-`, not starting with a dot; at most [`MAX_CREDENTIAL`]
    /// bytes.
    pub fn new(name: &str, bytes: Vec<u8>) -> Result<Credential, GuestError> {
        let ok_name = (1..=64).contains(&name.len())
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        if !ok_name {
            return Err(GuestError::Image {
                detail: format!(
                    "credential name {name:?}: 1 to 64 of A-Z a-z 0-9 . _ -, not starting with a dot"
                ),
            });
        }
        if bytes.len() > MAX_CREDENTIAL {
            return Err(GuestError::Image {
                detail: format!(
                    "credential {name}: {} bytes, at most {MAX_CREDENTIAL}",
                    bytes.len()
                ),
            });
        }
        Ok(Credential {
            name: name.to_owned(),
            bytes,
        })
    }
}

/// Join `input`/`output` (the guest's connection) to `to`, only if `gate`
/// exists. Returns when both directions have ended.
pub fn relay<R, W>(gate: &Path, to: &str, mut input: R, mut output: W) -> Result<(), GuestError>
where
    R: Read + Send + 'static,
    W: Write,
{
    if !gate_open(gate) {
        return Err(GuestError::Refused(
            "the guest's network is closed: its boot is not (or no longer) trusted".to_owned(),
        ));
    }
    // Held until this relay ends (the lock goes with the process).
    let _slot = take_slot(gate)?;
    let addr = to
        .to_socket_addrs()
        .map_err(|e| GuestError::io("resolving the guest's network target", e))?
        .next()
        .ok_or_else(|| {
            GuestError::io(
                "resolving the guest's network target",
                std::io::Error::other("no address"),
            )
        })?;
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .map_err(|e| GuestError::io("connecting the guest's network target", e))?;
    let mut upstream = stream
        .try_clone()
        .map_err(|e| GuestError::io("relaying the guest's connection", e))?;
    let up = std::thread::spawn(move || {
        let _ = pass(&mut input, &mut upstream);
        let _ = upstream.shutdown(std::net::Shutdown::Write);
    });
    let mut down = stream;
    let copied = pass(&mut down, &mut output);
    let _ = up.join();
    copied.map_err(|e| GuestError::io("relaying the guest's connection", e))
}

/// The start time of process `pid` (field 22 of `/proc/PID/stat`): with
/// the pid, it names one process, never a later one given the same pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; it ends at the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Open the gate at `path` for the guest of this process: the file names
/// this process, so the gate closes with it even if it dies without
/// removing the file (qemu may outlive it).
pub fn open_gate(path: &Path) -> Result<(), GuestError> {
    let pid = std::process::id();
    let started = start_time(pid).ok_or_else(|| {
        GuestError::io(
            "opening the guest's network",
            std::io::Error::other("this process's start time is unreadable"),
        )
    })?;
    persist::write_atomic(
        path,
        format!("satchel-guest-gate {pid} {started}\n").as_bytes(),
    )?;
    Ok(())
}

/// The gate is open: its file exists and the process that opened it still
/// runs.
fn gate_open(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("satchel-guest-gate"), Some(pid), Some(started), None) => pid
            .parse::<u32>()
            .ok()
            .and_then(start_time)
            .is_some_and(|s| s == started),
        _ => false,
    }
}

/// Copy until the end, each read written (and flushed) at once: nothing
/// waits for more bytes to fill a buffer.
fn pass(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<()> {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}

/// One of [`MAX_RELAYS`] slots beside the gate file: a lock file this
/// process holds until it ends.
fn take_slot(gate: &Path) -> Result<std::fs::File, GuestError> {
    let dir = gate.parent().unwrap_or(Path::new("."));
    for i in 0..MAX_RELAYS {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("relay.{i}.lock")))
            .map_err(|e| GuestError::io("taking a relay slot", e))?;
        if rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok() {
            return Ok(f);
        }
    }
    Err(GuestError::Refused(format!(
        "the guest holds {MAX_RELAYS} connections already"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_relay_reaches_nothing_without_the_gate_and_joins_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("net.gate");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        // No gate: refused, and the target never sees a connection.
        let mut out = Vec::new();
        let r = relay(&gate, &to, std::io::Cursor::new(b"hi\n".to_vec()), &mut out);
        assert!(matches!(r, Err(GuestError::Refused(_))), "{r:?}");
        assert!(listener.accept().is_err());
        assert!(out.is_empty());
        // With the gate: the bytes go both ways.
        open_gate(&gate).unwrap();
        listener.set_nonblocking(false).unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).unwrap();
            s.write_all(format!("echo {got}").as_bytes()).unwrap();
        });
        let mut out = Vec::new();
        relay(&gate, &to, std::io::Cursor::new(b"ping".to_vec()), &mut out).unwrap();
        server.join().unwrap();
        assert_eq!(out, b"echo ping");
    }

    #[test]
    fn credential_names_and_sizes_are_bounded() {
        assert!(Credential::new("device.crt", b"x".to_vec()).is_ok());
        for bad in ["", ".hidden", "../x", "a/b", "a b", "x\n", &"a".repeat(65)] {
            assert!(Credential::new(bad, Vec::new()).is_err(), "{bad:?}");
        }
        assert!(Credential::new("big", vec![0; MAX_CREDENTIAL + 1]).is_err());
    }

    #[test]
    fn the_forward_is_one_restricted_netdev() {
        let n = Network::new("127.0.0.1:8443", PathBuf::from("/usr/bin/satchel")).unwrap();
        let gate = Path::new("/var/lib/satchel/guest/net.gate");
        assert_eq!(
            netdev(None, gate).unwrap(),
            "user,id=net0,restrict=on,ipv6=off"
        );
        let v = netdev(Some(&n), gate).unwrap();
        assert_eq!(
            v,
            "user,id=net0,restrict=on,ipv6=off,guestfwd=tcp:10.0.2.100:8443-cmd:/usr/bin/satchel guest relay --gate /var/lib/satchel/guest/net.gate --to 127.0.0.1:8443"
        );
        assert!(Network::new("127.0.0.1", PathBuf::from("/x")).is_err());
        assert!(Network::new("h;rm:1", PathBuf::from("/x")).is_err());
        assert!(Network::new("h:1", PathBuf::from("/x y")).is_err());
    }

    /// The attacker's review: each guest connection is a host process and
    /// a socket, with no bound (reproduced first: the 65th connection was
    /// joined too).
    #[test]
    fn a_guest_holds_at_most_max_relays_connections() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("net.gate");
        open_gate(&gate).unwrap();
        let held: Vec<std::fs::File> = (0..MAX_RELAYS).map(|_| take_slot(&gate).unwrap()).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let to = listener.local_addr().unwrap().to_string();
        listener.set_nonblocking(true).unwrap();
        let r = relay(&gate, &to, std::io::Cursor::new(Vec::new()), Vec::new());
        assert!(matches!(r, Err(GuestError::Refused(_))), "{r:?}");
        assert!(
            listener.accept().is_err(),
            "the target saw the 65th connection"
        );
        drop(held);
        assert!(take_slot(&gate).is_ok(), "a slot frees when its relay ends");
    }

    /// The attacker's review: qemu may outlive the host process that
    /// started it (killed, crashed); the gate file then stayed and the
    /// guest kept its network with nobody watching it.
    #[test]
    fn a_gate_whose_opener_is_gone_is_closed() {
        let dir = tempfile::tempdir().unwrap();
        let gate = dir.path().join("net.gate");
        // Left by a process that has exited.
        let gone = std::process::Command::new("true").spawn().unwrap();
        let pid = gone.id();
        let mut gone = gone;
        gone.wait().unwrap();
        std::fs::write(&gate, format!("satchel-guest-gate {pid} 1\n")).unwrap();
        assert!(!gate_open(&gate));
        // A live process, but not at the start time written (a reused pid).
        std::fs::write(
            &gate,
            format!("satchel-guest-gate {} 1\n", std::process::id()),
        )
        .unwrap();
        assert!(!gate_open(&gate));
        for junk in ["", "trusted\n", "satchel-guest-gate x y\n"] {
            std::fs::write(&gate, junk).unwrap();
            assert!(!gate_open(&gate), "{junk:?}");
        }
        open_gate(&gate).unwrap();
        assert!(gate_open(&gate));
    }
}
