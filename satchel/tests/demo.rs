//! The README's first command, `./scripts/demo.sh`, as CI runs it: all
//! eight steps against a real swtpm, gateway, proxy and agent, with this
//! build's binary. Its step 8 scrapes the gateway's metrics, which it also
//! scraped at step 2, and fails unless the attestation and proxy counters
//! moved (parsed with Prometheus' own OpenMetrics parser).
//!
//! Needs root (the agent's fanotify), as CI runs; elsewhere it says why it
//! skipped, and under `CI=true` it fails instead.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

mod common;

#[test]
fn the_demo_runs_all_eight_steps_and_its_metrics_move() {
    if !common::root_with("") {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(repo.join("scripts/demo.sh"))
        .env("SATCHEL_BIN", env!("CARGO_BIN_EXE_satchel"))
        .env("DEMO_OUT", out.path().join("demo"))
        .env_remove("DEMO_KEEP")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(said.contains("all 8 steps passed"), "{said}");
    assert!(
        said.contains("since step 2: attestations trusted +1"),
        "{said}"
    );
    assert!(said.contains("/console/"), "{said}");
}
