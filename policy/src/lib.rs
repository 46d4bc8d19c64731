//! Satchel's closed-computing policy: which programs a device may run,
//! which URLs it may reach, and which images it may subscribe to.
//!
//! Admins write casbin policy lines ([`PolicyText`]); [`model::MODEL`] is
//! the casbin model they run under, and casbin's `Enforcer` is the
//! reference semantics: [`Policy::decide`] asks it. URL requests are
//! canonicalised first ([`url::CanonicalUrl`]) so that one resource has one
//! spelling, and IP literals never match name rules.
//!
//! This crate decides; it never enforces, never talks to a TPM and never
//! opens a network connection.

pub mod bundle;
pub mod fast;
pub mod glob;
pub mod model;
pub mod store;
pub mod url;

use std::collections::{BTreeSet, HashMap};

use casbin::{CoreApi as _, DefaultModel, MemoryAdapter, MgmtApi as _};

pub use bundle::{Bundle, BundleError, BundleManifest, Mode};
pub use fast::FastPolicy;
pub use model::{Effect, Kind, Membership, PolicyError, PolicyText, Rule};
pub use store::{PolicyStore, SqlxAdapter};
pub use url::{CanonicalUrl, UrlError, UrlPattern};

use crate::glob::glob_match;

/// What is asked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Request {
    /// Reach a URL with an HTTP method.
    Url {
        /// The canonical URL.
        url: CanonicalUrl,
        /// The method, upper case.
        method: String,
    },
    /// Run a program, known by its content hash, its path, or both.
    App {
        /// SHA-256 of the executable, lowercase hex.
        sha256: Option<String>,
        /// Its absolute path.
        path: Option<String>,
    },
    /// Subscribe to an image.
    Image {
        /// The image name.
        name: String,
    },
}

impl Request {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Request::Url { .. } => Kind::Url,
            Request::App { .. } => Kind::App,
            Request::Image { .. } => Kind::Image,
        }
    }

    /// The request object as the casbin model sees it.
    pub fn object(&self) -> String {
        match self {
            Request::Url { url, .. } => url.to_string(),
            Request::App { sha256, path } => format!(
                "{}|{}",
                sha256.as_deref().unwrap_or("-"),
                path.as_deref().unwrap_or("")
            ),
            Request::Image { name } => name.clone(),
        }
    }

    /// The request action.
    pub fn action(&self) -> &str {
        match self {
            Request::Url { method, .. } => method,
            Request::App { .. } => "exec",
            Request::Image { .. } => "subscribe",
        }
    }
}

/// The answer, with the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allowed?
    pub allow: bool,
    /// The deciding rule: a matching deny if any (a hash rule before a path
    /// rule), else a matching allow; `None` means no rule matched (default
    /// deny).
    pub rule: Option<Rule>,
}

/// Why a decision could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecideError {
    /// casbin failed (a model or matcher error: a bug, not a policy answer).
    #[error("the policy engine failed: {0}")]
    Engine(String),
}

/// A loaded policy: the casbin enforcer (reference semantics) and the rules
/// for explanations.
pub struct Policy {
    text: PolicyText,
    enforcer: casbin::Enforcer,
    groups: HashMap<String, BTreeSet<String>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("rules", &self.text.rules.len())
            .field("memberships", &self.text.memberships.len())
            .finish()
    }
}

impl Policy {
    /// Load validated policy lines into a casbin enforcer.
    pub async fn load(text: PolicyText) -> Result<Policy, DecideError> {
        let engine = |e: casbin::Error| DecideError::Engine(e.to_string());
        let model = DefaultModel::from_str(model::MODEL).await.map_err(engine)?;
        let mut enforcer = casbin::Enforcer::new(model, MemoryAdapter::default())
            .await
            .map_err(engine)?;
        enforcer.add_function(
            "objMatch",
            casbin::function_map::OperatorFunction::Arg3(|kind, req, pat| {
                obj_match(&kind.to_string(), &req.to_string(), &pat.to_string()).into()
            }),
        );
        // casbin refuses a whole batch that holds a duplicate: add each
        // distinct line once (explanations still name the first).
        let mut seen = std::collections::HashSet::new();
        let rules: Vec<Vec<String>> = text
            .rules
            .iter()
            .map(|r| {
                vec![
                    r.subject.clone(),
                    r.kind.as_str().to_owned(),
                    r.object.clone(),
                    r.action.clone(),
                    match r.effect {
                        Effect::Allow => "allow".to_owned(),
                        Effect::Deny => "deny".to_owned(),
                    },
                ]
            })
            .filter(|r| seen.insert(r.clone()))
            .collect();
        if !rules.is_empty() {
            enforcer.add_policies(rules).await.map_err(engine)?;
        }
        let links: Vec<Vec<String>> = text
            .memberships
            .iter()
            .map(|m| vec![m.member.clone(), m.group.clone()])
            .filter(|l| seen.insert(l.clone()))
            .collect();
        if !links.is_empty() {
            enforcer
                .add_grouping_policies(links)
                .await
                .map_err(engine)?;
        }
        let groups = closure(&text.memberships);
        Ok(Policy {
            text,
            enforcer,
            groups,
        })
    }

    /// The rules and memberships.
    pub fn text(&self) -> &PolicyText {
        &self.text
    }

    /// Decide `request` for `subject` (e.g. `device:laptop-17`).
    pub fn decide(&self, subject: &str, request: &Request) -> Result<Decision, DecideError> {
        let object = request.object();
        let allow = self
            .enforcer
            .enforce((
                subject,
                request.kind().as_str(),
                object.as_str(),
                request.action(),
            ))
            .map_err(|e| DecideError::Engine(e.to_string()))?;
        Ok(Decision {
            allow,
            rule: self.explain(subject, request, &object, allow),
        })
    }

    /// The rule that decided: for a deny, the matching deny rule (hash
    /// rules first); for an allow, the matching allow rule (hash rules first).
    fn explain(&self, subject: &str, request: &Request, object: &str, allow: bool) -> Option<Rule> {
        let groups = self.groups.get(subject);
        let applies = |r: &&Rule| {
            (r.subject == "group:all"
                || r.subject == subject
                || groups.is_some_and(|g| g.contains(&r.subject)))
                && r.kind == request.kind()
                && (r.action == "*" || r.action == request.action())
                && obj_match(r.kind.as_str(), object, &r.object)
        };
        let wanted = if allow { Effect::Allow } else { Effect::Deny };
        let mut matching: Vec<&Rule> = self
            .text
            .rules
            .iter()
            .filter(applies)
            .filter(|r| r.effect == wanted)
            .collect();
        matching.sort_by_key(|r| (!r.object.starts_with("sha256:"), r.line));
        matching.first().map(|r| (*r).clone())
    }
}

/// A place decisions are recorded (the audit trail; the gateway and the
/// client wire it).
pub trait DecisionSink {
    /// Record one decision; `enforced` is false when monitor mode let a
    /// deny through.
    fn record(&self, subject: &str, request: &Request, decision: &Decision, enforced: bool);
}

/// Every group each member is in, directly or through nested groups.
pub fn closure(memberships: &[Membership]) -> HashMap<String, BTreeSet<String>> {
    let mut direct: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in memberships {
        direct.entry(&m.member).or_default().push(&m.group);
    }
    let mut out = HashMap::new();
    for member in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut todo = vec![*member];
        while let Some(x) = todo.pop() {
            for g in direct.get(x).into_iter().flatten() {
                if seen.insert((*g).to_owned()) {
                    todo.push(g);
                }
            }
        }
        out.insert((*member).to_owned(), seen);
    }
    out
}

/// Satchel's object matcher, registered in casbin as `objMatch`.
pub fn obj_match(kind: &str, request: &str, pattern: &str) -> bool {
    match kind {
        "url" => {
            let (Ok(p), Ok(u)) = (UrlPattern::parse(pattern), parse_canonical(request)) else {
                return false;
            };
            p.matches(&u)
        }
        "app" => {
            let (hash, path) = request.split_once('|').unwrap_or((request, ""));
            if let Some(h) = pattern.strip_prefix("sha256:") {
                h.eq_ignore_ascii_case(hash)
            } else if let Some(g) = pattern.strip_prefix("path:") {
                !path.is_empty() && glob_match(g, path)
            } else {
                false
            }
        }
        "image" => request == pattern,
        _ => false,
    }
}

/// Re-read a canonical URL (the request object is its `Display`).
fn parse_canonical(s: &str) -> Result<CanonicalUrl, UrlError> {
    CanonicalUrl::parse(s)
}
