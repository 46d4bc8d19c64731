//! The kernel settings exec enforcement relies on. fanotify decides execs of
//! files on marked file systems; two other ways to run code it never sees
//! are closed by settings, which the agent applies at start in lockdown and
//! checks on every heartbeat:
//!
//! | setting | wanted | what it closes |
//! |---|---|---|
//! | `vm.memfd_noexec` | `2` | running a program from memory: `memfd_create` then `execve("/proc/self/fd/N")` (a memfd lives on no marked file system). `2` makes every memfd non-executable and refuses `MFD_EXEC` |
//! | `user.max_user_namespaces` | `0` | `unshare -Urm`: a user namespace lets an unprivileged user mount a fresh tmpfs (never marked) or bind-mount a file over an allowed path |
//! | `kernel.yama.ptrace_scope` | `2` or more | writing code into an allowed program's memory through `/proc/PID/mem` (or ptrace): a shell and `dd` suffice against a child otherwise. `2` leaves that to `CAP_SYS_PTRACE`; a stricter `3` is left as it is |
//!
//! Root can change them back (root can also stop the agent: the threat
//! model does not defend against root); the agent then sets them again at
//! the next heartbeat and records the drift.

use serde::{Deserialize, Serialize};

/// One setting the agent needs.
struct Needed {
    name: &'static str,
    want: &'static str,
    /// A higher number holds too (a stricter setting is left alone).
    at_least: bool,
}

const NEEDED: [Needed; 3] = [
    Needed {
        name: "vm.memfd_noexec",
        want: "2",
        at_least: false,
    },
    Needed {
        name: "user.max_user_namespaces",
        want: "0",
        at_least: false,
    },
    Needed {
        name: "kernel.yama.ptrace_scope",
        want: "2",
        at_least: true,
    },
];

impl Needed {
    fn holds(&self, found: &str) -> bool {
        if self.at_least {
            matches!((found.parse::<u32>(), self.want.parse::<u32>()), (Ok(f), Ok(w)) if f >= w)
        } else {
            found == self.want
        }
    }
}

/// What `satchel agent status` shows of one setting.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Setting {
    /// The sysctl name, e.g. `vm.memfd_noexec`.
    pub name: String,
    /// The value enforcement needs.
    pub want: String,
    /// The value read back (empty when it could not be read).
    pub found: String,
    /// Whether it holds.
    pub holds: bool,
    /// Why it could not be set, if the agent tried and failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn proc_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

fn read(name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(proc_path(name)).map(|s| s.trim().to_owned())
}

/// Read every setting; with `apply`, set those that do not hold first.
pub(crate) fn settings(apply: bool) -> Vec<Setting> {
    NEEDED
        .iter()
        .map(|n| {
            let mut error = None;
            let before = read(n.name).unwrap_or_default();
            if apply && !n.holds(&before) {
                if let Err(e) = std::fs::write(proc_path(n.name), n.want) {
                    error = Some(format!("setting it failed: {e}"));
                }
            }
            let found = match read(n.name) {
                Ok(v) => v,
                Err(e) => {
                    error.get_or_insert(format!("this kernel has no such setting ({e})"));
                    String::new()
                }
            };
            Setting {
                name: n.name.to_owned(),
                want: n.want.to_owned(),
                holds: n.holds(&found),
                found,
                error,
            }
        })
        .collect()
}

/// The settings that do not hold, as one sentence (`None` when all hold).
pub(crate) fn failing(settings: &[Setting]) -> Option<String> {
    let bad: Vec<String> = settings
        .iter()
        .filter(|s| !s.holds)
        .map(|s| {
            let found = if s.found.is_empty() {
                "unreadable"
            } else {
                &s.found
            };
            let why = s
                .error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            format!("{} is {found}, needs {}{why}", s.name, s.want)
        })
        .collect();
    (!bad.is_empty()).then(|| bad.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_to_proc_paths() {
        assert_eq!(proc_path("vm.memfd_noexec"), "/proc/sys/vm/memfd_noexec");
        assert_eq!(
            proc_path("user.max_user_namespaces"),
            "/proc/sys/user/max_user_namespaces"
        );
    }

    #[test]
    fn failing_names_each_setting_and_its_value() {
        let s = vec![
            Setting {
                name: "a.b".into(),
                want: "2".into(),
                found: "0".into(),
                holds: false,
                error: Some("setting it failed: EPERM".into()),
            },
            Setting {
                name: "c.d".into(),
                want: "0".into(),
                found: "0".into(),
                holds: true,
                error: None,
            },
        ];
        let msg = failing(&s).unwrap();
        assert_eq!(msg, "a.b is 0, needs 2: setting it failed: EPERM");
        assert_eq!(failing(&s[1..]), None);
    }

    #[test]
    fn at_least_settings_take_a_stricter_value() {
        let n = &NEEDED[2];
        assert!(n.holds("2") && n.holds("3"));
        assert!(!n.holds("1") && !n.holds("") && !n.holds("x"));
        assert!(NEEDED[0].holds("2") && !NEEDED[0].holds("3"));
    }
}
