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
    let index = |v: &[Entry]| -> BTreeMap<String, Entry> {
        v.iter().map(|e| (e.path.clone(), e.clone())).collect()
    };
    let (b, g, c) = (index(base), index(gateway), index(client));
    let paths: BTreeSet<&String> = b.keys().chain(g.keys()).chain(c.keys()).collect();
    let mut out: BTreeMap<String, Entry> = BTreeMap::new();
    let mut m = Merge::default();
    for path in paths {
        let (eb, eg, ec) = (b.get(path), g.get(path), c.get(path));
        let client_changed = differs(eb, ec);
        let gateway_changed = differs(eb, eg);
        if layer.is_system() {
            if client_changed && differs(ec, eg) {
                m.violations.push(path.clone());
            }
            if let Some(e) = eg {
                out.insert(path.clone(), e.clone());
            }
            continue;
        }
        let take = |e: Option<&Entry>, out: &mut BTreeMap<String, Entry>| {
            if let Some(e) = e {
                out.insert(path.clone(), e.clone());
            }
        };
        if !client_changed || !differs(eg, ec) {
            take(eg, &mut out);
            continue;
        }
        if !gateway_changed {
            take(ec, &mut out);
            m.from_client.push(path.clone());
            continue;
        }
        // Both changed, differently.
        match (eg, ec) {
            (None, Some(e)) => {
                out.insert(path.clone(), e.clone());
                m.from_client.push(path.clone());
                m.conflicts.push(Conflict {
                    path: path.clone(),
                    kept_as: None,
                    resolution: "deleted on the gateway, changed on the client: the client's version is kept".to_owned(),
                });
            }
            (Some(e), None) => {
                out.insert(path.clone(), e.clone());
                m.conflicts.push(Conflict {
                    path: path.clone(),
                    kept_as: None,
                    resolution: "changed on the gateway, deleted on the client: the gateway's version is kept".to_owned(),
                });
            }
            (Some(gv), Some(cv))
                if matches!(gv.kind, Kind::Dir) && matches!(cv.kind, Kind::Dir) =>
            {
                // Two directories that differ in mode only: the gateway's.
                out.insert(path.clone(), gv.clone());
            }
            (Some(gv), Some(cv)) => {
                // A directory keeps the path (its children live under it);
                // otherwise the gateway's version does.
                let (stay, moved, client_moved) = if matches!(cv.kind, Kind::Dir) {
                    (cv, gv, false)
                } else {
                    (gv, cv, true)
                };
                let copy = conflict_name(path, device, date);
                out.insert(path.clone(), stay.clone());
                out.insert(
                    copy.clone(),
                    Entry {
                        path: copy.clone(),
                        ..moved.clone()
                    },
                );
                m.conflicts.push(Conflict {
                    path: path.clone(),
                    kept_as: client_moved.then(|| copy.clone()),
                    resolution: if client_moved {
                        format!("changed on both sides: the client's version is kept as {copy:?}")
                    } else {
                        format!("changed on both sides: the gateway's version is kept as {copy:?}")
                    },
                });
            }
            (None, None) => {}
        }
    }
    // Every kept entry needs its directories.
    let kept: Vec<String> = out.keys().cloned().collect();
    for path in kept {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            let need = !matches!(out.get(parent).map(|e| &e.kind), Some(Kind::Dir));
            if need {
                let dir = [g.get(parent), c.get(parent), b.get(parent)]
                    .into_iter()
                    .flatten()
                    .find(|e| matches!(e.kind, Kind::Dir))
                    .cloned()
                    .unwrap_or(Entry {
                        path: parent.to_owned(),
                        mode: 0o755,
                        kind: Kind::Dir,
                    });
                out.insert(parent.to_owned(), dir);
            }
            p = parent;
        }
    }
    m.entries = out.into_values().collect();
    m
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
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            path: path.to_owned(),
            mode: 0o755,
            kind: Kind::Dir,
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
