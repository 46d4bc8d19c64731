//! `*`-only glob matching, linear in practice and never exponential: the
//! classic two-pointer match with one backtrack point.

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (including `/` and the empty run) and everything else
/// matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn stars_match_any_run_and_nothing_else_is_special() {
        assert!(glob_match("/wiki/*", "/wiki/Main_Page"));
        assert!(glob_match("/wiki/*", "/wiki/"));
        assert!(!glob_match("/wiki/*", "/wikipedia"));
        assert!(glob_match("*", ""));
        assert!(glob_match("/a/*/c", "/a/b/x/c"));
        assert!(!glob_match("/a/*/c", "/a/b/x/d"));
        assert!(glob_match("/usr/bin/*", "/usr/bin/python3"));
        assert!(!glob_match("/usr/bin/?", "/usr/bin/x"));
        assert!(glob_match("/usr/bin/?", "/usr/bin/?"));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("exact", "exactly"));
        // A pathological pattern stays fast.
        let text = "a".repeat(10_000);
        assert!(!glob_match(&format!("{}b", "*a".repeat(50)), &text));
    }
}
