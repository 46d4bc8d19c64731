//! The fast path: an index compiled from the same policy lines that
//! returns the same decision as the casbin enforcer, in microseconds at
//! 100,000 rules.
//!
//! - Membership: each subject's groups (transitively) computed once.
//! - App rules: `sha256:` rules in a hash map by digest; `path:` rules in a
//!   list (few in practice).
//! - URL rules: exact-host rules in a map by (scheme, host, port);
//!   `*.suffix` rules in a map by (scheme, suffix, port), looked up for each
//!   dot-separated suffix of the request's host name.
//! - Image rules: a map by name.
//!
//! Deny overrides allow; no matching rule is deny. The differential test
//! (`tests/differential.rs`) checks it against casbin on random policies.

use std::collections::{BTreeSet, HashMap};

use crate::glob::glob_match;
use crate::model::{Effect, Kind, PolicyText, Rule};
use crate::url::{Host, HostPattern, UrlPattern};
use crate::{closure, Decision, Request};

/// A compiled policy.
#[derive(Debug, Clone)]
pub struct FastPolicy {
    rules: Vec<Rule>,
    url_patterns: Vec<Option<UrlPattern>>,
    groups: HashMap<String, BTreeSet<String>>,
    app_hash: HashMap<String, Vec<usize>>,
    app_path: Vec<usize>,
    url_exact: HashMap<(String, Host, u16), Vec<usize>>,
    url_under: HashMap<(String, String, u16), Vec<usize>>,
    image: HashMap<String, Vec<usize>>,
}

impl FastPolicy {
    /// Compile validated policy lines.
    pub fn compile(text: &PolicyText) -> FastPolicy {
        let mut f = FastPolicy {
            rules: text.rules.clone(),
            url_patterns: Vec::with_capacity(text.rules.len()),
            groups: closure(&text.memberships),
            app_hash: HashMap::new(),
            app_path: Vec::new(),
            url_exact: HashMap::new(),
            url_under: HashMap::new(),
            image: HashMap::new(),
        };
        for (i, r) in text.rules.iter().enumerate() {
            let mut pattern = None;
            match r.kind {
                Kind::App => match r.object.strip_prefix("sha256:") {
                    Some(h) => f
                        .app_hash
                        .entry(h.to_ascii_lowercase())
                        .or_default()
                        .push(i),
                    None => f.app_path.push(i),
                },
                Kind::Image => f.image.entry(r.object.clone()).or_default().push(i),
                Kind::Url => {
                    if let Ok(p) = UrlPattern::parse(&r.object) {
                        match &p.host {
                            HostPattern::Exact(h) => f
                                .url_exact
                                .entry((p.scheme.clone(), h.clone(), p.port))
                                .or_default()
                                .push(i),
                            HostPattern::Under(s) => f
                                .url_under
                                .entry((p.scheme.clone(), s.clone(), p.port))
                                .or_default()
                                .push(i),
                        }
                        pattern = Some(p);
                    }
                }
            }
            f.url_patterns.push(pattern);
        }
        f
    }

    /// Whether any app rule names a path (so a decision needs the path, not
    /// only the hash).
    pub fn has_app_path_rules(&self) -> bool {
        !self.app_path.is_empty()
    }

    /// Decide `request` for `subject`: the same answer, and the same rule
    /// named, as [`crate::Policy::decide`].
    pub fn decide(&self, subject: &str, request: &Request) -> Decision {
        self.decide_with_groups(subject, &[], request)
    }

    /// Decide for `subject` as a member of `extra` groups too (and of every
    /// group those are in), besides the memberships the policy names: the
    /// gateway's devices get their groups at enrollment.
    pub fn decide_with_groups(
        &self,
        subject: &str,
        extra: &[String],
        request: &Request,
    ) -> Decision {
        let groups = self.groups.get(subject);
        let in_extra = |g: &String| {
            extra
                .iter()
                .any(|e| e == g || self.groups.get(e).is_some_and(|s| s.contains(g)))
        };
        let applies = |r: &Rule| {
            (r.subject == "group:all"
                || r.subject == subject
                || groups.is_some_and(|g| g.contains(&r.subject))
                || (!extra.is_empty() && in_extra(&r.subject)))
                && (r.action == "*" || r.action == request.action())
        };
        let mut best_allow: Option<usize> = None;
        let mut best_deny: Option<usize> = None;
        let mut consider = |i: usize| {
            let r = &self.rules[i];
            let slot = match r.effect {
                Effect::Allow => &mut best_allow,
                Effect::Deny => &mut best_deny,
            };
            let better = match *slot {
                None => true,
                Some(j) => rank(r) < rank(&self.rules[j]),
            };
            if better {
                *slot = Some(i);
            }
        };
        match request {
            Request::App { sha256, path } => {
                if let Some(h) = sha256 {
                    for &i in self
                        .app_hash
                        .get(&h.to_ascii_lowercase())
                        .into_iter()
                        .flatten()
                    {
                        if applies(&self.rules[i]) {
                            consider(i);
                        }
                    }
                }
                if let Some(p) = path.as_deref().filter(|p| !p.is_empty()) {
                    for &i in &self.app_path {
                        let r = &self.rules[i];
                        let glob = r.object.strip_prefix("path:").unwrap_or("");
                        if applies(r) && glob_match(glob, p) {
                            consider(i);
                        }
                    }
                }
            }
            Request::Image { name } => {
                for &i in self.image.get(name).into_iter().flatten() {
                    if applies(&self.rules[i]) {
                        consider(i);
                    }
                }
            }
            Request::Url { url, .. } => {
                let mut check = |ids: Option<&Vec<usize>>| {
                    for &i in ids.into_iter().flatten() {
                        let ok = self.url_patterns[i]
                            .as_ref()
                            .is_some_and(|p| glob_match(&p.path, &url.path));
                        if ok && applies(&self.rules[i]) {
                            consider(i);
                        }
                    }
                };
                check(
                    self.url_exact
                        .get(&(url.scheme.clone(), url.host.clone(), url.port)),
                );
                if let Host::Name(n) = &url.host {
                    // Every proper suffix after a dot: a.b.example.org ->
                    // b.example.org, example.org, org.
                    let mut rest = n.as_str();
                    while let Some(dot) = rest.find('.') {
                        rest = &rest[dot + 1..];
                        if rest.is_empty() {
                            break;
                        }
                        check(
                            self.url_under
                                .get(&(url.scheme.clone(), rest.to_owned(), url.port)),
                        );
                    }
                }
            }
        }
        match (best_deny, best_allow) {
            (Some(d), _) => Decision {
                allow: false,
                rule: Some(self.rules[d].clone()),
            },
            (None, Some(a)) => Decision {
                allow: true,
                rule: Some(self.rules[a].clone()),
            },
            (None, None) => Decision {
                allow: false,
                rule: None,
            },
        }
    }
}

/// Explanation order: hash rules before path rules, then by line.
fn rank(r: &Rule) -> (bool, usize) {
    (!r.object.starts_with("sha256:"), r.line)
}
