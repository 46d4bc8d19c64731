//! Test support for the audit tests: a private PostgreSQL server per test
//! (an RAII guard: initdb into a temp dir, start on a free port, stop on
//! drop) and database URLs for both backends.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A PostgreSQL server owned by one test.
pub(crate) struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| Some(e.ok()?.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

impl Postgres {
    /// initdb and start a server; panics with a clear message if PostgreSQL is missing.
    pub(crate) fn start() -> Postgres {
        let bin = pg_bin().expect("PostgreSQL server binaries not found: run scripts/setup.sh");
        let dir = tempfile::Builder::new()
            .prefix("satchel-pg")
            .tempdir()
            .unwrap();
        let as_postgres = is_root();
        if as_postgres {
            // initdb refuses to run as root: hand the directory to the postgres user.
            let status = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown postgres failed");
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            as_postgres,
        };
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        for _ in 0..10 {
            pg.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                pg.port,
                pg.dir.path().display()
            );
            let log = pg.dir.path().join("server.log").display().to_string();
            if pg.try_run(
                "pg_ctl",
                &["-D", &data, "-l", &log, "-w", "-o", &opts, "start"],
            ) {
                return pg;
            }
        }
        panic!(
            "PostgreSQL did not start: {}",
            std::fs::read_to_string(pg.dir.path().join("server.log")).unwrap_or_default()
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let exe = self.bin.join(tool);
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.args(args).current_dir(Path::new("/"));
        c
    }

    fn try_run(&self, tool: &str, args: &[&str]) -> bool {
        self.command(tool, args)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self.command(tool, args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL for the default database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self.try_run("pg_ctl", &["-D", &data, "-m", "immediate", "stop"]);
    }
}

/// A database for one test: a SQLite file in a temp dir, or a private PostgreSQL.
pub(crate) enum TestDb {
    /// SQLite.
    Sqlite(tempfile::TempDir),
    /// PostgreSQL.
    Postgres(Postgres),
}

impl TestDb {
    /// Both backends, one fresh database each.
    pub(crate) fn both() -> Vec<TestDb> {
        vec![TestDb::sqlite(), TestDb::Postgres(Postgres::start())]
    }

    /// A fresh SQLite database.
    pub(crate) fn sqlite() -> TestDb {
        TestDb::Sqlite(tempfile::tempdir().unwrap())
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        match self {
            TestDb::Sqlite(d) => format!("sqlite:{}", d.path().join("audit.db").display()),
            TestDb::Postgres(p) => p.url(),
        }
    }
}
