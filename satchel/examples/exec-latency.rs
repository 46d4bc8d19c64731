//! Exec latency, paired: run program A[i] and program B[i] alternately
//! and report the time from spawn to exit of each, and the median of the
//! per-pair differences. Alternating exec by exec cancels the drift of a
//! busy machine. `scripts/bench-agent.sh` puts A on a mount the agent marks
//! and B on one it does not.
//!
//! Usage: exec-latency PAIRS A... -- B... (each list cycled); prints one
//! JSON line {"pairs", "a_median_us", "b_median_us", "added_median_us"}.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::Instant;

fn time(p: &str) -> f64 {
    let t = Instant::now();
    let status = Command::new(p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{p}: {e}"));
    let us = t.elapsed().as_nanos() as f64 / 1000.0;
    assert!(status.success(), "{p} failed: {status}");
    us
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pairs: usize = args
        .next()
        .and_then(|r| r.parse().ok())
        .expect("usage: exec-latency PAIRS A... -- B...");
    let rest: Vec<String> = args.collect();
    let split = rest
        .iter()
        .position(|a| a == "--")
        .expect("no -- between A and B");
    let (a, b) = (&rest[..split], &rest[split + 1..]);
    assert!(
        !a.is_empty() && !b.is_empty(),
        "name programs on both sides"
    );
    let (mut ta, mut tb, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..pairs {
        // Alternate which side goes first, so neither gets the warmer cache.
        let (x, y) = if i % 2 == 0 {
            let x = time(&a[i % a.len()]);
            (x, time(&b[i % b.len()]))
        } else {
            let y = time(&b[i % b.len()]);
            (time(&a[i % a.len()]), y)
        };
        ta.push(x);
        tb.push(y);
        diff.push(x - y);
    }
    println!(
        "{{\"pairs\": {pairs}, \"a_median_us\": {:.1}, \"b_median_us\": {:.1}, \"added_median_us\": {:.1}}}",
        median(ta),
        median(tb),
        median(diff)
    );
}
