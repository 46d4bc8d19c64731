//! A page of entries as SQLite renders it for verification: one JSON array
//! holding, per entry, `[seq, ts_ms, kind, actor, subject, decision,
//! details, HEX(leaf_hash)]`. Decoding it never fails loudly: anything that
//! is not exactly that shape yields `None`, and the caller reads the page
//! row by row instead, where a bad row is named.

use std::borrow::Cow;

use serde::Deserialize;

use crate::entry::encode_leaf;
use crate::merkle::{leaf_hash, Hash};

/// One entry of the page, its strings borrowed where they hold no escapes.
#[derive(Deserialize)]
struct PageRow<'a> {
    seq: i64,
    ts_ms: i64,
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    actor: Cow<'a, str>,
    #[serde(borrow)]
    subject: Cow<'a, str>,
    #[serde(borrow)]
    decision: Cow<'a, str>,
    #[serde(borrow)]
    details: Cow<'a, str>,
    leaf_hash: &'a str,
}

/// `(seq, leaf hash recomputed from the columns, stored leaf hash)` per
/// entry, in sequence order; `None` if the page is not what an intact or
/// merely edited log renders.
pub(super) fn leaf_checks(json: &str) -> Option<Vec<(u64, Hash, Hash)>> {
    let rows: Vec<PageRow<'_>> = serde_json::from_str(json).ok()?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let seq = u64::try_from(r.seq).ok()?;
        let mut stored = [0u8; 32];
        hex::decode_to_slice(r.leaf_hash, &mut stored).ok()?;
        let fields = [&*r.kind, &r.actor, &r.subject, &r.decision, &r.details];
        out.push((seq, leaf_hash(&encode_leaf(seq, r.ts_ms, fields)), stored));
    }
    // The rows come in key order; a page that says otherwise is read row by row.
    out.windows(2).all(|w| w[0].0 < w[1].0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_page_gives_the_leaves_of_its_columns() {
        let leaf = leaf_hash(&encode_leaf(3, 9, ["k", "a\"b", "s", "allow", "{\"x\":1}"]));
        let json = format!(
            r#"[[3,9,"k","a\"b","s","allow","{{\"x\":1}}","{}"]]"#,
            hex::encode_upper(leaf)
        );
        assert_eq!(leaf_checks(&json), Some(vec![(3, leaf, leaf)]));
    }

    #[test]
    fn anything_else_is_left_to_the_row_reader() {
        let h = "00".repeat(32);
        for bad in [
            String::new(),
            "{}".to_owned(),
            format!(r#"[[-1,9,"k","a","s","d","{{}}","{h}"]]"#),
            format!(r#"[[1,9,7,"a","s","d","{{}}","{h}"]]"#),
            format!(r#"[[1,9.5,"k","a","s","d","{{}}","{h}"]]"#),
            r#"[[1,9,"k","a","s","d","{}","abcd"]]"#.to_owned(),
            format!(r#"[[1,9,"k","a","s","d","{{}}","{h}",1]]"#),
            format!(r#"[[2,9,"k","a","s","d","{{}}","{h}"],[1,9,"k","a","s","d","{{}}","{h}"]]"#),
        ] {
            assert_eq!(leaf_checks(&bad), None, "{bad}");
        }
        assert_eq!(leaf_checks("[]"), Some(vec![]));
    }
}
