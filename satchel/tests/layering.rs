//! The workspace's dependencies point one way (README, "Parts"): the CLI on
//! top; `device` and `gateway` beside each other, never depending on each
//! other; the libraries below, never depending on either. Read from `cargo
//! metadata`, normal dependencies only (a crate's tests may use another as a
//! dev-dependency).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

/// Each workspace crate and the workspace crates it depends on (normal and
/// build dependencies).
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let out = std::process::Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours: BTreeSet<String> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].as_str() != Some("dev"))
                .filter_map(|d| d["name"].as_str())
                .filter(|n| ours.contains(*n))
                .map(str::to_owned)
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn dependencies_point_one_way() {
    let edges = edges();
    let upper = ["satchel", "device", "gateway"];
    let libraries = [
        "persist",
        "protocol",
        "attest",
        "firmware-measure",
        "audit",
        "policy",
        "sync",
    ];
    for lib in libraries {
        let deps = &edges[lib];
        for up in upper {
            assert!(!deps.contains(up), "{lib} depends on {up}");
        }
    }
    assert!(
        !edges["device"].contains("gateway"),
        "device depends on gateway"
    );
    assert!(
        !edges["gateway"].contains("device"),
        "gateway depends on device"
    );
    for lib in ["attest", "audit", "policy", "sync"] {
        for other in ["attest", "audit", "policy", "sync"] {
            assert!(!edges[lib].contains(other), "{lib} depends on {other}");
        }
    }
    assert!(
        edges["persist"].is_empty(),
        "persist depends on {:?}",
        edges["persist"]
    );
    assert!(edges["satchel"].contains("device") && edges["satchel"].contains("gateway"));
}

#[test]
fn the_cli_holds_no_daemon_or_protocol_logic() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(
        !src.join("agent").exists(),
        "the agent lives in the device crate"
    );
    for entry in walkdir::WalkDir::new(&src) {
        let entry = entry.unwrap();
        if entry.path().extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            for spelled in ["\"/v1/", "fanotify_init", "NamedTempFile"] {
                assert!(
                    !text.contains(spelled),
                    "{} spells {spelled}: that belongs in device, protocol or persist",
                    entry.path().display()
                );
            }
        }
    }
}

#[test]
fn a_clone_holds_the_firmware_logs_its_tests_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/eventlogs");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.md")).unwrap();
    let mut listed = 0;
    for line in manifest.lines().filter(|l| l.starts_with("| ")) {
        let Some(name) = line.split('|').nth(2).map(str::trim) else {
            continue;
        };
        for file in name.split(" (+ ").map(|n| n.trim_end_matches(')')) {
            if file.ends_with(".bin") || file.ends_with(".json") || file.ends_with(".txt") {
                assert!(
                    dir.join(file).is_file(),
                    "{file} is listed in MANIFEST.md but not in the repository"
                );
                listed += 1;
            }
        }
    }
    assert!(listed >= 20, "MANIFEST.md lists {listed} files");
    assert!(dir.join("expected/expected_values.json").is_file());
}
