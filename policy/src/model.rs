//! Policy lines, their validation, and the casbin model that is the
//! reference semantics.

use std::fmt;

use crate::url::UrlPattern;

/// The casbin model every Satchel policy runs under.
///
/// - `r = sub, kind, obj, act`: who (`device:ID`), what kind (`url`, `app`,
///   `image`), the canonical object, the action.
/// - `p = sub, kind, obj, act, eft`: a rule; `eft` is `allow` or `deny`.
/// - `g = _, _`: membership, nestable; `group:all` holds every subject.
/// - Deny overrides allow; no matching rule means deny.
/// - `objMatch(kind, r.obj, p.obj)` is Satchel's object matcher (URL
///   patterns, `sha256:`/`path:` app rules, image names).
pub const MODEL: &str = r#"
[request_definition]
r = sub, kind, obj, act

[policy_definition]
p = sub, kind, obj, act, eft

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow)) && !some(where (p.eft == deny))

[matchers]
m = (p.sub == "group:all" || g(r.sub, p.sub)) && r.kind == p.kind && (p.act == "*" || r.act == p.act) && objMatch(r.kind, r.obj, p.obj)
"#;

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A URL: `scheme://HOST[:PORT]/PATH-GLOB`, action an HTTP method or `*`.
    Url,
    /// A program: `sha256:HEX` or `path:GLOB`, action `exec`.
    App,
    /// An image subscription: the image name, action `subscribe`.
    Image,
}

impl Kind {
    /// The policy-file spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Url => "url",
            Kind::App => "app",
            Kind::Image => "image",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "url" => Some(Kind::Url),
            "app" => Some(Kind::App),
            "image" => Some(Kind::Image),
            _ => None,
        }
    }
}

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Effect {
    /// Allow (unless a deny also matches).
    Allow,
    /// Deny (always wins).
    Deny,
}

/// One `p` line.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    /// The subject or group.
    pub subject: String,
    /// The kind.
    pub kind: Kind,
    /// The object pattern, as written.
    pub object: String,
    /// The action (`*` for any URL method).
    pub action: String,
    /// The effect.
    pub effect: Effect,
    /// Line number in the source (1-based), for explanations.
    pub line: usize,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p, {}, {}, {}, {}, {}",
            self.subject,
            self.kind.as_str(),
            self.object,
            self.action,
            match self.effect {
                Effect::Allow => "allow",
                Effect::Deny => "deny",
            }
        )
    }
}

/// One `g` line: `member` is in `group`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Membership {
    /// The device or group that is a member.
    pub member: String,
    /// The group.
    pub group: String,
}

/// A policy line that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy line {line}: {problem}")]
pub struct PolicyError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub problem: String,
}

/// Validated policy: rules and memberships.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyText {
    /// The `p` lines.
    pub rules: Vec<Rule>,
    /// The `g` lines.
    pub memberships: Vec<Membership>,
}

impl PolicyText {
    /// Parse policy lines (casbin CSV: `p, ...` and `g, ...`; `#` starts a
    /// comment; blank lines are skipped). Every line is validated: kinds,
    /// effects, actions, and object patterns.
    pub fn parse(text: &str) -> Result<PolicyText, PolicyError> {
        let mut out = PolicyText::default();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let body = raw.split('#').next().unwrap_or("").trim();
            if body.is_empty() {
                continue;
            }
            let err = |problem: String| PolicyError { line, problem };
            let fields: Vec<&str> = body.split(',').map(str::trim).collect();
            match fields.as_slice() {
                ["p", sub, kind, obj, act, eft] => {
                    let kind = Kind::parse(kind)
                        .ok_or_else(|| err(format!("kind {kind:?} is not url, app or image")))?;
                    let effect = match *eft {
                        "allow" => Effect::Allow,
                        "deny" => Effect::Deny,
                        e => return Err(err(format!("effect {e:?} is not allow or deny"))),
                    };
                    check_subject(sub).map_err(err)?;
                    check_object(kind, obj, act).map_err(err)?;
                    out.rules.push(Rule {
                        subject: (*sub).to_owned(),
                        kind,
                        object: (*obj).to_owned(),
                        action: (*act).to_owned(),
                        effect,
                        line,
                    });
                }
                ["g", member, group] => {
                    check_subject(member).map_err(err)?;
                    check_subject(group).map_err(err)?;
                    if !group.starts_with("group:") {
                        return Err(err(format!("{group:?} is not a group (group:NAME)")));
                    }
                    out.memberships.push(Membership {
                        member: (*member).to_owned(),
                        group: (*group).to_owned(),
                    });
                }
                ["p", ..] => {
                    return Err(err(
                        "a rule is p, SUBJECT, KIND, OBJECT, ACTION, EFFECT".to_owned()
                    ))
                }
                ["g", ..] => return Err(err("a membership is g, MEMBER, GROUP".to_owned())),
                _ => return Err(err(format!("{body:?} is neither a p nor a g line"))),
            }
        }
        check_nesting(&out.memberships, &lines_of(text))?;
        Ok(out)
    }
}

/// The line number of each `g` line, in order.
fn lines_of(text: &str) -> Vec<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.split('#').next().unwrap_or("").trim().starts_with('g'))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Group nesting deeper than casbin's role manager follows (10 levels), or
/// a cycle, is refused: the two would otherwise disagree silently.
fn check_nesting(memberships: &[Membership], lines: &[usize]) -> Result<(), PolicyError> {
    use std::collections::HashMap;
    let mut up: HashMap<&str, Vec<&str>> = HashMap::new();
    for m in memberships {
        up.entry(&m.member).or_default().push(&m.group);
    }
    fn depth<'a>(
        x: &'a str,
        up: &HashMap<&'a str, Vec<&'a str>>,
        path: &mut Vec<&'a str>,
    ) -> Result<usize, String> {
        if path.contains(&x) {
            return Err(format!("groups form a cycle through {x}"));
        }
        path.push(x);
        let mut d = 0;
        for g in up.get(x).into_iter().flatten() {
            d = d.max(1 + depth(g, up, path)?);
        }
        path.pop();
        Ok(d)
    }
    for (i, m) in memberships.iter().enumerate() {
        let line = lines.get(i).copied().unwrap_or(0);
        let d = depth(&m.member, &up, &mut Vec::new())
            .map_err(|problem| PolicyError { line, problem })?;
        if d > MAX_NESTING {
            return Err(PolicyError {
                line,
                problem: format!(
                    "{} is nested {d} groups deep; at most {MAX_NESTING}",
                    m.member
                ),
            });
        }
    }
    Ok(())
}

/// How deep groups may nest (casbin's default role hierarchy limit).
pub const MAX_NESTING: usize = 10;

fn check_subject(s: &str) -> Result<(), String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == '"') {
        return Err(format!("subject {s:?} is empty or has spaces or quotes"));
    }
    Ok(())
}

fn check_object(kind: Kind, obj: &str, act: &str) -> Result<(), String> {
    if obj.contains('"') {
        return Err(format!("object {obj:?} contains a quote"));
    }
    match kind {
        Kind::Url => {
            UrlPattern::parse(obj).map_err(|e| e.to_string())?;
            let known = [
                "*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
            ];
            if !known.contains(&act) {
                return Err(format!("URL action {act:?} is not an HTTP method or *"));
            }
        }
        Kind::App => {
            if let Some(hex) = obj.strip_prefix("sha256:") {
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{obj:?}: sha256: takes 64 hex digits"));
                }
            } else if !obj.starts_with("path:/") {
                return Err(format!(
                    "app object {obj:?} is not sha256:HEX or path:/GLOB"
                ));
            }
            if act != "exec" {
                return Err(format!("app action {act:?} is not exec"));
            }
        }
        Kind::Image => {
            if obj.is_empty() || obj.contains(char::is_whitespace) {
                return Err(format!("image name {obj:?} is empty or has spaces"));
            }
            if act != "subscribe" {
                return Err(format!("image action {act:?} is not subscribe"));
            }
        }
    }
    Ok(())
}
