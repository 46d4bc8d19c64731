//! The durable write does what it claims, seen from the system calls it
//! makes: the temporary file is synced before it is renamed over the name,
//! and the directory is synced after the rename (without that, a crash can
//! lose the rename: the new name may point nowhere after a power cut).
//!
//! The test runs this same test binary under strace, asking it to run the
//! `strace_child` test, which performs one write when `PERSIST_STRACE_CHILD`
//! names a file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

const CHILD: &str = "PERSIST_STRACE_CHILD";

/// The write the traced process makes (only when asked to by the parent).
#[test]
fn strace_child() {
    let Some(target) = std::env::var_os(CHILD) else {
        return;
    };
    let target = Path::new(&target);
    persist::write_atomic(target, b"the new content").unwrap();
    let new = target.with_extension("new");
    persist::write_new(&new, b"a key", 0o600).unwrap();
}

/// One traced system call: its name, its arguments and its result.
struct Call {
    name: String,
    args: String,
    ret: String,
}

fn parse(line: &str) -> Option<Call> {
    let line = line.split_once(' ').map_or(line, |(pid, rest)| {
        if pid.chars().all(|c| c.is_ascii_digit()) {
            rest
        } else {
            line
        }
    });
    let (name, rest) = line.split_once('(')?;
    let (args, ret) = rest.rsplit_once(')')?;
    Some(Call {
        name: name.trim().to_owned(),
        args: args.to_owned(),
        ret: ret
            .trim_start()
            .strip_prefix('=')?
            .split_whitespace()
            .next()?
            .to_owned(),
    })
}

/// The index of the first call at or after `from` matching `f`.
fn find(calls: &[Call], from: usize, f: impl Fn(&Call) -> bool) -> Option<usize> {
    calls.iter().skip(from).position(f).map(|i| i + from)
}

#[test]
fn the_file_is_synced_before_the_rename_and_the_directory_after() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("state.json");
    std::fs::write(&target, b"the old content").unwrap();
    let trace = dir.path().join("trace");
    let status = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat",
        ])
        .arg("-o")
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "strace_child", "--test-threads=1"])
        .env(CHILD, &target)
        .status()
        .expect("strace is installed by scripts/setup.sh");
    assert!(status.success());
    assert_eq!(std::fs::read(&target).unwrap(), b"the new content");

    let text = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<Call> = text.lines().filter_map(parse).collect();
    let dir_text = format!("\"{}\"", dir.path().display());

    // write_atomic: open the temporary file, fsync it, rename it, open and fsync the directory.
    let open = find(&calls, 0, |c| {
        c.name == "openat" && c.args.contains(".state.json.") && c.args.contains("O_EXCL")
    })
    .unwrap_or_else(|| panic!("no exclusive temporary file opened:\n{text}"));
    let fd = calls[open].ret.clone();
    let synced = find(&calls, open, |c| c.name == "fsync" && c.args == fd)
        .unwrap_or_else(|| panic!("temporary file (fd {fd}) never synced:\n{text}"));
    let renamed = find(&calls, open, |c| {
        c.name.starts_with("rename") && c.args.contains("state.json\"")
    })
    .unwrap_or_else(|| panic!("no rename into place:\n{text}"));
    assert!(
        synced < renamed,
        "the file must be synced before it is renamed:\n{text}"
    );
    let dir_open = find(&calls, renamed, |c| {
        c.name == "openat" && c.args.contains(&dir_text)
    })
    .unwrap_or_else(|| panic!("the directory is not opened after the rename:\n{text}"));
    let dir_fd = calls[dir_open].ret.clone();
    assert!(
        find(&calls, dir_open, |c| c.name == "fsync" && c.args == dir_fd).is_some(),
        "the directory is never synced after the rename:\n{text}"
    );

    // write_new: the synced temporary file is linked (never renamed over), then the directory synced.
    let linked = find(&calls, dir_open, |c| {
        c.name.starts_with("link") && c.args.contains("state.new\"")
    })
    .unwrap_or_else(|| panic!("write_new does not link into place:\n{text}"));
    let tmp_fd = calls[find(&calls, dir_open + 1, |c| {
        c.name == "openat" && c.args.contains(".state.new.")
    })
    .unwrap()]
    .ret
    .clone();
    let tmp_sync = find(&calls, dir_open + 1, |c| {
        c.name == "fsync" && c.args == tmp_fd
    })
    .unwrap();
    assert!(
        tmp_sync < linked,
        "write_new must sync before linking:\n{text}"
    );
    let dir_open = find(&calls, linked, |c| {
        c.name == "openat" && c.args.contains(&dir_text)
    })
    .unwrap();
    let dir_fd = calls[dir_open].ret.clone();
    assert!(
        find(&calls, dir_open, |c| c.name == "fsync" && c.args == dir_fd).is_some(),
        "{text}"
    );
}
