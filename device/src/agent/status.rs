//! `satchel agent status`, the device's half: the status file the running
//! agent rewrites every 2 s, with the spool count read afresh, and whether
//! that agent is alive (its pid runs, holds the pid file, and beat within
//! 10 s). Printing is the caller's.

use std::path::Path;

use super::spool::Spool;
use super::{now_ms, AgentError, Status, PID_FILE, STATUS_FILE};

/// What `satchel agent status` shows.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// The status file, with the spool count read now.
    pub status: Status,
    /// Whether the agent that wrote it still runs.
    pub running: bool,
}

/// Read the status of the agent with `state_dir`.
pub fn read_status(state_dir: &Path) -> Result<AgentStatus, AgentError> {
    let path = state_dir.join(STATUS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| AgentError::NoStatus {
        path: path.clone(),
        state_dir: state_dir.to_owned(),
        source,
    })?;
    let mut status: Status =
        serde_json::from_slice(&bytes).map_err(|source| AgentError::BadStatus {
            path: path.clone(),
            source,
        })?;
    let running = Path::new(&format!("/proc/{}", status.pid)).exists()
        && std::fs::read_to_string(state_dir.join(PID_FILE))
            .is_ok_and(|p| p.trim() == status.pid.to_string())
        && now_ms() - status.heartbeat_ms < 10_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)?;
    if let Ok(n) = rt.block_on(async {
        let s = Spool::open(&state_dir.join("spool.db")).await?;
        s.waiting().await
    }) {
        status.spool_waiting = n;
    }
    Ok(AgentStatus { status, running })
}
