//! The access log (`gateway serve --access-log FILE`): one JSON object per
//! line for every request on the API and proxy ports, written by a thread
//! of its own so a slow disk never holds a request up.
//!
//! ```json
//! {"ts_ms":1764950400000,"listener":"api","peer":"10.1.2.3:51234","who":"device:laptop-17",
//!  "method":"GET","target":"/v1/whoami","status":200,"ms":1.9}
//! ```
//!
//! `who` is `device:ID`, `admin:NAME`, or `-` (no certificate). `target` is
//! the request target as sent, except that a query string and user info are
//! left out (they can carry what a log should not: a search, a token, a
//! password); the audit trail
//! holds the decisions. The file is opened for appending; rotate it with
//! `copytruncate` (logrotate) or by moving it and restarting the gateway.

use std::io::Write as _;
use std::path::Path;

use serde_json::json;

use protocol::certificate::{DeviceIdentity, Role};

/// Where access lines go.
#[derive(Debug)]
pub struct AccessLog {
    tx: std::sync::mpsc::SyncSender<String>,
}

/// One request, as the access log records it.
#[derive(Debug)]
pub struct Access<'a> {
    /// `api` or `proxy`.
    pub listener: &'static str,
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Its certificate's identity, if any.
    pub who: Option<&'a DeviceIdentity>,
    /// The method.
    pub method: &'a hyper::Method,
    /// The request target.
    pub target: &'a hyper::Uri,
    /// The answer's status.
    pub status: u16,
    /// How long the answer took.
    pub took: std::time::Duration,
}

impl AccessLog {
    /// Append to `path` (`-`: standard error).
    pub fn open(path: &Path) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn std::io::Write + Send> = if path == Path::new("-") {
            Box::new(std::io::stderr())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        // Lines wait here if the disk is slow; past 10,000 they are dropped
        // (and counted in the gateway's log) rather than holding requests.
        let (tx, rx) = std::sync::mpsc::sync_channel::<String>(10_000);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                for line in rx {
                    if let Err(e) = out.write_all(line.as_bytes()) {
                        tracing::error!(error = %e, "writing the access log failed");
                    }
                }
            })?;
        Ok(AccessLog { tx })
    }

    /// Record one request.
    pub fn record(&self, a: &Access<'_>) {
        let who = match a.who {
            Some(d) if matches!(d.role, Role::Admin) => format!("admin:{}", d.device_id),
            Some(d) => format!("device:{}", d.device_id),
            None => "-".to_owned(),
        };
        // Host and port only: an authority's user info can be a password.
        let host = a.target.authority().map(|auth| match auth.port() {
            Some(p) => format!("{}:{p}", auth.host()),
            None => auth.host().to_owned(),
        });
        let target = match (
            a.method == hyper::Method::CONNECT,
            host,
            a.target.scheme_str(),
        ) {
            (true, Some(h), _) => h,
            (false, Some(h), Some(scheme)) => format!("{scheme}://{h}{}", a.target.path()),
            _ => a.target.path().to_owned(),
        };
        let line = json!({
            "ts_ms": audit::batch::now_ms(),
            "listener": a.listener,
            "peer": a.peer.to_string(),
            "who": who,
            "method": a.method.as_str(),
            "target": target,
            "status": a.status,
            "ms": (a.took.as_secs_f64() * 1e4).round() / 10.0,
        });
        if self.tx.try_send(format!("{line}\n")).is_err() {
            tracing::warn!("the access log is behind: a line was dropped");
        }
    }
}
