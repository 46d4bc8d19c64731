//! The mount table (`/proc/self/mountinfo`): which mount points exist, and
//! which file systems under the agent's `--root` it must mark.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// The mount's id (the kernel's, as `statx` gives it): one per mount.
    pub(crate) id: u64,
    /// Where it is mounted.
    pub(crate) point: PathBuf,
    /// The device id (`major:minor`): one per file system.
    pub(crate) dev: String,
    /// The file system type.
    pub(crate) fstype: String,
    /// Whether this mount refuses exec (`noexec`).
    pub(crate) noexec: bool,
    /// The per-mount options (`rw,nosuid,relatime`).
    pub(crate) options: String,
}

/// File systems that hold no files a user can write and run: the kernel's
/// own views. Marking them would only cost events.
const PSEUDO: [&str; 17] = [
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "binfmt_misc",
    "autofs",
    "efivarfs",
    "nsfs",
];

/// Parse one mountinfo line; `None` for a malformed one.
#[cfg(test)]
pub(crate) fn parse_line(line: &str) -> Option<Mount> {
    parse_bytes(line.as_bytes())
}

/// Parse one mountinfo line as the kernel wrote it: a mount point may hold
/// any byte but `/` and NUL (a stick labelled in another encoding), so the
/// line is bytes, not text.
fn parse_bytes(line: &[u8]) -> Option<Mount> {
    use std::os::unix::ffi::OsStringExt as _;
    let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
    let dash = fields.iter().position(|f| *f == b"-")?;
    if dash < 6 {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Some(Mount {
        id: text(fields[0]).parse().ok()?,
        point: PathBuf::from(std::ffi::OsString::from_vec(unescape_bytes(fields[4]))),
        dev: text(fields[2]),
        fstype: text(fields.get(dash + 1)?),
        noexec: fields[5].split(|b| *b == b',').any(|o| o == b"noexec"),
        options: text(fields[5]),
    })
}

/// Every mount of this mount namespace.
pub(crate) fn all() -> Vec<Mount> {
    std::fs::read("/proc/self/mountinfo")
        .unwrap_or_default()
        .split(|b| *b == b'\n')
        .filter_map(parse_bytes)
        .collect()
}

/// The mount points of this mount namespace.
pub(crate) fn points() -> HashSet<PathBuf> {
    all().into_iter().map(|m| m.point).collect()
}

/// The mounts at or under `root` that must be marked: every one but the
/// kernel's pseudo file systems.
pub(crate) fn under(root: &Path, table: &[Mount]) -> Vec<Mount> {
    table
        .iter()
        .filter(|m| m.point.starts_with(root))
        .filter(|m| !PSEUDO.contains(&m.fstype.as_str()))
        .cloned()
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
#[cfg(test)]
pub(crate) fn unescape(s: &str) -> String {
    String::from_utf8_lossy(&unescape_bytes(s.as_bytes())).into_owned()
}

fn unescape_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let Some(v) = octal {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/media/my\\040stick"), "/media/my stick");
        assert_eq!(unescape("/a\\134b"), "/a\\b");
        assert_eq!(unescape("/odd\\777"), "/odd\\777");
        assert_eq!(unescape("/end\\04"), "/end\\04");
        assert!(points().contains(Path::new("/")));
    }

    #[test]
    fn lines_parse_with_and_without_optional_fields() {
        let a = parse_line(
            "25 24 0:23 / /dev/shm rw,nosuid,noexec shared:4 master:1 - tmpfs tmpfs rw,size=10k",
        )
        .unwrap();
        assert_eq!(a.point, PathBuf::from("/dev/shm"));
        assert_eq!(
            (a.dev.as_str(), a.fstype.as_str(), a.noexec),
            ("0:23", "tmpfs", true)
        );
        let b = parse_line("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw").unwrap();
        assert_eq!((b.fstype.as_str(), b.noexec), ("ext4", false));
        assert_eq!(parse_line("junk"), None);
        assert_eq!(parse_line("1 2 - x"), None);
        assert_eq!(parse_line(""), None);
        // A mount point that is not UTF-8 is kept byte for byte, and the
        // lines around it still parse.
        let m = parse_bytes(b"30 1 0:9 / /media/caf\xe9 rw - vfat /dev/sdb1 rw").unwrap();
        assert_eq!(
            std::os::unix::ffi::OsStrExt::as_bytes(m.point.as_os_str()),
            b"/media/caf\xe9"
        );
    }

    #[test]
    fn under_keeps_real_file_systems_below_the_root() {
        let t: Vec<Mount> = [
            "1 0 8:1 / / rw - ext4 /dev/a rw",
            "2 1 0:5 / /proc rw - proc proc rw",
            "3 1 0:6 / /srv/dev rw - tmpfs t rw",
            "4 3 0:7 / /srv/dev/shm rw - tmpfs t rw",
            "5 1 0:8 / /srv/devx rw - tmpfs t rw",
        ]
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
        let u: Vec<PathBuf> = under(Path::new("/srv/dev"), &t)
            .into_iter()
            .map(|m| m.point)
            .collect();
        assert_eq!(
            u,
            vec![PathBuf::from("/srv/dev"), PathBuf::from("/srv/dev/shm")]
        );
        assert_eq!(under(Path::new("/"), &t).len(), 4);
    }
}
