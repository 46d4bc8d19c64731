//! A private PostgreSQL server per test: an RAII guard that runs initdb in a
//! temporary directory, starts the server on a free port of 127.0.0.1 and
//! stops it on drop. As root, the server runs as the `postgres` user (initdb
//! refuses root). It never touches a system cluster.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Port choices to try when the server cannot bind.
const ATTEMPTS: usize = 10;

/// A PostgreSQL server owned by one test; stopped (immediately) on drop.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

/// The newest installed server's `bin` directory.
fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Postgres {
    /// Run initdb and start a server on a free port of 127.0.0.1.
    pub fn start() -> io::Result<Postgres> {
        Postgres::start_on(&[])
    }

    /// [`start`](Self::start), listening on the addresses `also` besides
    /// 127.0.0.1 and trusting clients of their /24 networks (for servers
    /// in network namespaces the test made).
    pub fn start_on(also: &[std::net::Ipv4Addr]) -> io::Result<Postgres> {
        let bin = pg_bin().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "PostgreSQL server not found under /usr/lib/postgresql: run scripts/setup.sh",
            )
        })?;
        let dir = tempfile::Builder::new().prefix("satchel-pg").tempdir()?;
        let as_postgres = is_root();
        if as_postgres
            && !Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()?
                .success()
        {
            return Err(io::Error::other(
                "chown postgres of the data directory failed",
            ));
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let data = pg.data();
        let initdb = [
            "-D",
            &data,
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ];
        pg.run("initdb", &initdb, &["--locale=C.UTF-8"])?;
        if !also.is_empty() {
            use std::io::Write as _;
            let hba = std::path::Path::new(&data).join("pg_hba.conf");
            let mut f = std::fs::OpenOptions::new().append(true).open(hba)?;
            for a in also {
                let [x, y, z, _] = a.octets();
                writeln!(f, "host all all {x}.{y}.{z}.0/24 trust")?;
            }
        }
        let listen = std::iter::once("127.0.0.1".to_owned())
            .chain(also.iter().map(|a| a.to_string()))
            .collect::<Vec<_>>()
            .join(",");
        let log = pg.dir.path().join("server.log").display().to_string();
        for _ in 0..ATTEMPTS {
            pg.port = free_port()?;
            let opts = format!(
                "-p {} -k {} -c listen_addresses={listen} -c fsync=off",
                pg.port,
                pg.dir.path().display()
            );
            let start = ["-D", &data, "-l", &log, "-w", "-o", &opts];
            if pg.run("pg_ctl", &start, &["start"]).is_ok() {
                return Ok(pg);
            }
        }
        let last = std::fs::read_to_string(&log).unwrap_or_default();
        Err(io::Error::other(format!(
            "PostgreSQL did not start: {last}"
        )))
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// Run a server tool (as `postgres` when we are root) from `/`.
    fn run(&self, tool: &str, args: &[&str], more: &[&str]) -> io::Result<()> {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = c
            .args(args)
            .args(more)
            .current_dir(Path::new("/"))
            .output()?;
        if out.status.success() {
            return Ok(());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        Err(io::Error::other(format!("{tool} failed: {err}")))
    }

    /// The URL of the server's `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The same database at another of its addresses (see [`start_on`](Self::start_on)).
    pub fn url_at(&self, at: std::net::Ipv4Addr) -> String {
        format!("postgres://postgres@{at}:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.run("pg_ctl", &["-D", &data, "-m", "immediate"], &["stop"]);
    }
}
