//! Exec latency: run programs one after another and report the time from
//! spawn to exit, per exec. `scripts/bench-agent.sh` runs it with and
//! without `satchel agent` enforcing, so the difference is what the agent
//! adds.
//!
//! Usage: exec-latency RUNS PROGRAM... — run RUNS execs, cycling through the
//! programs; prints one JSON line {"runs", "median_us", "p10_us", "p90_us"}.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .expect("usage: exec-latency RUNS PROGRAM...");
    let programs: Vec<String> = args.collect();
    assert!(!programs.is_empty(), "name at least one program");
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs {
        let p = &programs[i % programs.len()];
        let t = Instant::now();
        let status = Command::new(p)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{p}: {e}"));
        times.push(t.elapsed().as_nanos() as f64 / 1000.0);
        assert!(status.success(), "{p} failed: {status}");
    }
    times.sort_by(f64::total_cmp);
    let q = |f: f64| times[((times.len() - 1) as f64 * f).round() as usize];
    println!(
        "{{\"runs\": {runs}, \"median_us\": {:.1}, \"p10_us\": {:.1}, \"p90_us\": {:.1}}}",
        q(0.5),
        q(0.1),
        q(0.9)
    );
}
