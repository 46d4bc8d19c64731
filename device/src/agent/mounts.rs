//! The mount table (`/proc/self/mountinfo`): which mount points exist, and
//! which file systems under the agent's `--root` it must mark.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One line of `/proc/self/mountinfo`, the fields the agent uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Where it is mounted.
    pub(crate) point: PathBuf,
    /// The device id (`major:minor`): one per file system.
    pub(crate) dev: String,
    /// The file system type.
    pub(crate) fstype: String,
    /// Whether this mount refuses exec (`noexec`).
    pub(crate) noexec: bool,
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
pub(crate) fn parse_line(line: &str) -> Option<Mount> {
    let fields: Vec<&str> = line.split(' ').collect();
    let dash = fields.iter().position(|f| *f == "-")?;
    if dash < 6 {
        return None;
    }
    Some(Mount {
        point: PathBuf::from(unescape(fields[4])),
        dev: fields[2].to_owned(),
        fstype: (*fields.get(dash + 1)?).to_owned(),
        noexec: fields[5].split(',').any(|o| o == "noexec"),
    })
}

/// Every mount of this mount namespace.
pub(crate) fn all() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(parse_line)
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
pub(crate) fn unescape(s: &str) -> String {
    let b = s.as_bytes();
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
    String::from_utf8_lossy(&out).into_owned()
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
