//! Three-way reconciliation of one layer: the last version both sides had
//! (the base), the gateway's newest, and the client's tree.
//!
//! Per path: one side changed -> take it; both changed alike -> nothing to
//! do; both changed differently -> the layer decides. In a **system layer**
//! (`base-os`, `group-apps`) the gateway always wins and every client
//! change is a violation, reported and undone by the next pull. In a
//! **user layer** both are kept: the gateway's version stays at the path,
//! the client's moves to `NAME (conflict DEVICE YYYY-MM-DD)` beside it, and
//! the conflict is reported. A deletion against an edit keeps the edit (no
//! work is lost).

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::manifest::{Entry, Kind, Layer};

/// A path both sides changed differently, in a user layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Conflict {
    /// The path.
    pub path: String,
    /// Where the client's version was kept (`None`: the client deleted it,
    /// or the client's version won the path).
    pub kept_as: Option<String>,
    /// What happened, in words.
    pub resolution: String,
}

/// The result of a reconciliation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Merge {
    /// The merged tree, sorted.
    pub entries: Vec<Entry>,
    /// Conflicts (user layers).
    pub conflicts: Vec<Conflict>,
    /// Paths the client changed in a system layer (refused).
    pub violations: Vec<String>,
    /// Paths taken from the client.
    pub from_client: Vec<String>,
}

fn differs(a: Option<&Entry>, b: Option<&Entry>) -> bool {
    match (a, b) {
        (None, None) => false,
        (Some(x), Some(y)) => !x.same(y),
        _ => true,
    }
}

/// The conflict copy's name: `dir/NAME (conflict DEVICE DATE)`.
pub fn conflict_name(path: &str, device: &str, date: &str) -> String {
    let device: String = device
        .chars()
        .map(|c| if c == '/' || c.is_control() { '_' } else { c })
        .collect();
    format!("{path} (conflict {device} {date})")
}

/// Reconcile `layer`: `base` (last common version; empty if none),
/// `gateway` (its newest), `client` (its tree now). `device` and `date`
/// (`YYYY-MM-DD`) name conflict copies.
pub fn merge(
    layer: Layer,
    base: &[Entry],
    gateway: &[Entry],
    client: &[Entry],
    device: &str,
    date: &str,
) -> Merge {
    let (b, g, c) = (index(base), index(gateway), index(client));
    let paths: BTreeSet<&String> = b.keys().chain(g.keys()).chain(c.keys()).collect();
    let mut run = Merging {
        device,
        date,
        out: Index::new(),
        m: Merge::default(),
    };
    for path in paths {
        let sides = (b.get(path), g.get(path), c.get(path));
        if layer.is_system() {
            run.system_path(path, sides);
        } else {
            run.user_path(path, sides);
        }
    }
    // Every kept entry needs its directories.
    run.add_parent_dirs(&[&g, &c, &b]);
    run.finish()
}

/// One side's entries, by path.
type Index = BTreeMap<String, Entry>;

/// One path's entry on each side: base, gateway, client.
type Sides<'a> = (Option<&'a Entry>, Option<&'a Entry>, Option<&'a Entry>);

/// Index a side's entries by path.
fn index(v: &[Entry]) -> Index {
    v.iter().map(|e| (e.path.clone(), e.clone())).collect()
}

/// A reconciliation under way: the merged tree so far and the report.
struct Merging<'a> {
    /// The device, to name conflict copies.
    device: &'a str,
    /// The date (`YYYY-MM-DD`), to name conflict copies.
    date: &'a str,
    /// The merged tree so far.
    out: Index,
    /// The report so far (its `entries` filled in by [`Merging::finish`]).
    m: Merge,
}

impl Merging<'_> {
    /// Put `e`, if there is one, at `path` in the merged tree.
    fn take(&mut self, path: &str, e: Option<&Entry>) {
        if let Some(e) = e {
            self.out.insert(path.to_owned(), e.clone());
        }
    }

    /// A path of a system layer: the gateway's entry; a client change is a violation.
    fn system_path(&mut self, path: &str, (eb, eg, ec): Sides<'_>) {
        if differs(eb, ec) && differs(ec, eg) {
            self.m.violations.push(path.to_owned());
        }
        self.take(path, eg);
    }

    /// A path of a user layer: the side that changed, or a conflict if both did.
    fn user_path(&mut self, path: &str, (eb, eg, ec): Sides<'_>) {
        if !differs(eb, ec) || !differs(eg, ec) {
            self.take(path, eg);
        } else if !differs(eb, eg) {
            self.take(path, ec);
            self.m.from_client.push(path.to_owned());
        } else {
            self.both_changed(path, eg, ec);
        }
    }

    /// Both sides changed `path`, differently: keep what can be kept and report it.
    fn both_changed(&mut self, path: &str, eg: Option<&Entry>, ec: Option<&Entry>) {
        match (eg, ec) {
            (None, Some(e)) => {
                self.take(path, Some(e));
                self.m.from_client.push(path.to_owned());
                self.conflict(
                    path,
                    None,
                    "deleted on the gateway, changed on the client: the client's version is kept"
                        .to_owned(),
                );
            }
            (Some(e), None) => {
                self.take(path, Some(e));
                self.conflict(
                    path,
                    None,
                    "changed on the gateway, deleted on the client: the gateway's version is kept"
                        .to_owned(),
                );
            }
            (Some(gv), Some(cv))
                if matches!(gv.kind, Kind::Dir) && matches!(cv.kind, Kind::Dir) =>
            {
                // Two directories that differ in mode only: the gateway's.
                self.take(path, Some(gv));
            }
            (Some(gv), Some(cv)) => self.keep_both(path, gv, cv),
            (None, None) => {}
        }
    }

    /// Both sides hold a different entry at `path`: one stays, the other moves to a conflict copy.
    fn keep_both(&mut self, path: &str, gv: &Entry, cv: &Entry) {
        // A directory keeps the path (its children live under it);
        // otherwise the gateway's version does.
        let (stay, moved, client_moved) = if matches!(cv.kind, Kind::Dir) {
            (cv, gv, false)
        } else {
            (gv, cv, true)
        };
        let copy = conflict_name(path, self.device, self.date);
        self.out.insert(path.to_owned(), stay.clone());
        self.out.insert(
            copy.clone(),
            Entry {
                path: copy.clone(),
                ..moved.clone()
            },
        );
        let resolution = if client_moved {
            format!("changed on both sides: the client's version is kept as {copy:?}")
        } else {
            format!("changed on both sides: the gateway's version is kept as {copy:?}")
        };
        self.conflict(path, client_moved.then(|| copy.clone()), resolution);
    }

    /// Report a conflict at `path`.
    fn conflict(&mut self, path: &str, kept_as: Option<String>, resolution: String) {
        self.m.conflicts.push(Conflict {
            path: path.to_owned(),
            kept_as,
            resolution,
        });
    }

    /// Give every entry kept so far the directories above it, taken from `sides` in order.
    fn add_parent_dirs(&mut self, sides: &[&Index; 3]) {
        let kept: Vec<String> = self.out.keys().cloned().collect();
        for path in kept {
            let mut p = path.as_str();
            while let Some((parent, _)) = p.rsplit_once('/') {
                let need = !matches!(self.out.get(parent).map(|e| &e.kind), Some(Kind::Dir));
                if need {
                    self.out
                        .insert(parent.to_owned(), parent_dir(parent, sides));
                }
                p = parent;
            }
        }
    }

    /// The report, with the merged tree sorted.
    fn finish(mut self) -> Merge {
        self.m.entries = self.out.into_values().collect();
        self.m
    }
}

/// The directory entry for `parent`: the first side's that is a directory, else a new `0755` one.
fn parent_dir(parent: &str, sides: &[&Index; 3]) -> Entry {
    sides
        .iter()
        .filter_map(|side| side.get(parent))
        .find(|e| matches!(e.kind, Kind::Dir))
        .cloned()
        .unwrap_or(Entry {
            path: parent.to_owned(),
            mode: 0o755,
            kind: Kind::Dir,
            ..Entry::default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;

    fn file(path: &str, content: &str) -> Entry {
        Entry {
            path: path.to_owned(),
            mode: 0o644,
            kind: Kind::File {
                size: content.len() as u64,
                chunks: if content.is_empty() {
                    vec![]
                } else {
                    vec![ChunkId::of(content.as_bytes())]
                },
            },
            ..Entry::default()
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_owned(),
            mode: 0o755,
            kind: Kind::Dir,
            ..Entry::default()
        }
    }

    fn paths(m: &Merge) -> Vec<&str> {
        m.entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn user_layer_rules() {
        let base = vec![
            dir("d"),
            file("d/a", "1"),
            file("d/b", "1"),
            file("d/c", "1"),
            file("d/e", "1"),
        ];
        // gateway: a edited, c deleted, e edited; client: b edited, c kept, e edited differently, new f.
        let gw = vec![
            dir("d"),
            file("d/a", "2"),
            file("d/b", "1"),
            file("d/e", "g"),
        ];
        let cl = vec![
            dir("d"),
            file("d/a", "1"),
            file("d/b", "2"),
            file("d/c", "1"),
            file("d/e", "c"),
            file("d/f", "new"),
        ];
        let m = merge(Layer::UserData, &base, &gw, &cl, "laptop-1", "2026-11-23");
        assert_eq!(
            paths(&m),
            [
                "d",
                "d/a",
                "d/b",
                "d/e",
                "d/e (conflict laptop-1 2026-11-23)",
                "d/f"
            ]
        );
        let get = |p: &str| m.entries.iter().find(|e| e.path == p).unwrap();
        assert!(get("d/a").same(&file("x", "2")));
        assert!(get("d/b").same(&file("x", "2")));
        assert!(get("d/e").same(&file("x", "g")));
        assert!(get("d/e (conflict laptop-1 2026-11-23)").same(&file("x", "c")));
        assert_eq!(m.conflicts.len(), 1);
        assert!(m.violations.is_empty());
        assert_eq!(m.from_client, ["d/b", "d/f"]);
    }

    #[test]
    fn deletion_against_edit_keeps_the_edit_and_its_directory() {
        let base = vec![dir("d"), file("d/a", "1")];
        let gw: Vec<Entry> = vec![];
        let cl = vec![dir("d"), file("d/a", "2")];
        let m = merge(Layer::UserData, &base, &gw, &cl, "x", "2026-01-01");
        assert_eq!(paths(&m), ["d", "d/a"]);
        assert_eq!(m.conflicts.len(), 1);
    }

    #[test]
    fn system_layers_take_the_gateway_and_report_client_changes() {
        let base = vec![file("bin", "1"), file("lib", "1")];
        let gw = vec![file("bin", "2"), file("lib", "1")];
        let cl = vec![file("bin", "1"), file("lib", "evil"), file("dropped", "x")];
        let m = merge(Layer::BaseOs, &base, &gw, &cl, "x", "2026-01-01");
        assert_eq!(m.entries, gw);
        assert_eq!(m.violations, ["dropped", "lib"]);
        assert!(m.conflicts.is_empty());
    }
}
