//! URL canonicalisation and URL rule patterns.
//!
//! A request URL is parsed with the WHATWG URL parser (the `url` crate, as
//! browsers do), then made canonical so that one resource has one spelling:
//! scheme and host lower-cased, IDNA labels in punycode, one trailing dot
//! dropped, the port made explicit, `.`/`..` (also `%2e`) resolved, and IP
//! literals in every form (decimal `2130706433`, octal `0177.0.0.1`, hex
//! `0x7f.1`, short forms, IPv6, IPv4-mapped IPv6) reduced to one address.
//! URLs with user info (`https://good.example@evil.example/`) are refused.
//!
//! Paths and queries have one spelling too ([`canonical_path`]): runs of
//! `/` in a path are one `/` (after dot segments are resolved), and every
//! percent-escape is decoded, then exactly the bytes that may not stand
//! raw are escaped again, in upper case. So `%3A`, `%53` and `:`/`S` are one
//! spelling. Escapes that would change the structure stay: `%25` (a `%`),
//! `%3F` and `%23` in a path, and in a query `%26`, `%3D`, `%2B`, `%3B`.
//! An encoded slash (`%2F`) or backslash (`%5C`) in a path is refused: the
//! servers behind a proxy disagree about whether it separates segments.
//!
//! Rules and requests go through the same canonicalisation. A rule matches
//! the path only unless it has a query part (`/w/index.php?*title=Special:*`),
//! then the query too; case matters unless the rule starts with `nocase:`
//! (`nocase:https://en.wikipedia.org/wiki/Special:*`).
//!
//! A rule's host is a name (exact, or `*.suffix` for any name strictly under
//! the suffix) or an IP literal. A request whose host is an IP literal never
//! matches a name rule, whatever the digits look like.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::glob::glob_match;

/// A URL that is not usable as a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// The WHATWG parser refused it.
    #[error("{url:?} is not a URL: {reason}")]
    Syntax {
        /// The input.
        url: String,
        /// The parser's reason.
        reason: String,
    },
    /// Not http or https.
    #[error("{url:?}: scheme {scheme:?} is not http or https")]
    Scheme {
        /// The input.
        url: String,
        /// The scheme.
        scheme: String,
    },
    /// `user:password@` before the host: a classic way to disguise a host.
    #[error("{url:?} carries user info before the host; refused")]
    UserInfo {
        /// The input.
        url: String,
    },
    /// No host.
    #[error("{url:?} has no host")]
    NoHost {
        /// The input.
        url: String,
    },
    /// An encoded `/` or `\` in the path.
    #[error("{url:?}: an encoded slash (%2F or %5C) in the path is refused")]
    EncodedSlash {
        /// The input.
        url: String,
    },
    /// A rule object that is not `scheme://HOST[:PORT]/PATH-GLOB`.
    #[error("URL rule {rule:?}: {reason}")]
    Rule {
        /// The rule object.
        rule: String,
        /// What is wrong.
        reason: String,
    },
}

/// A canonical host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: lower case, punycode, no trailing dot.
    Name(String),
    /// An IPv4 address (IPv4-mapped IPv6 addresses become this).
    V4(Ipv4Addr),
    /// An IPv6 address.
    V6(Ipv6Addr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// A canonical request URL.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// The host.
    pub host: Host,
    /// The port, always explicit.
    pub port: u16,
    /// The path: absolute, dot segments resolved, one spelling of escapes.
    pub path: String,
    /// The query, in one spelling of escapes, without its `?`.
    pub query: Option<String>,
}

impl fmt::Display for CanonicalUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme, self.host, self.port, self.path
        )?;
        match &self.query {
            Some(q) => write!(f, "?{q}"),
            None => Ok(()),
        }
    }
}

impl CanonicalUrl {
    /// Canonicalise a request URL.
    pub fn parse(input: &str) -> Result<CanonicalUrl, UrlError> {
        let url = url::Url::parse(input.trim()).map_err(|e| UrlError::Syntax {
            url: input.to_owned(),
            reason: e.to_string(),
        })?;
        let scheme = url.scheme().to_owned();
        if scheme != "http" && scheme != "https" {
            return Err(UrlError::Scheme {
                url: input.to_owned(),
                scheme,
            });
        }
        if !url.username().is_empty() || url.password().is_some() || has_empty_userinfo(input) {
            return Err(UrlError::UserInfo {
                url: input.to_owned(),
            });
        }
        let host = match url.host() {
            Some(url::Host::Domain(d)) => name_or_ip(d).ok_or_else(|| UrlError::NoHost {
                url: input.to_owned(),
            })?,
            Some(url::Host::Ipv4(a)) => Host::V4(a),
            Some(url::Host::Ipv6(a)) => match a.to_ipv4_mapped() {
                Some(v4) => Host::V4(v4),
                None => Host::V6(a),
            },
            None => {
                return Err(UrlError::NoHost {
                    url: input.to_owned(),
                })
            }
        };
        let port = url.port_or_known_default().unwrap_or(0);
        let path =
            canonical_path(url.path(), Part::Path).ok_or_else(|| UrlError::EncodedSlash {
                url: input.to_owned(),
            })?;
        let query = url
            .query()
            .map(|q| canonical_path(q, Part::Query).unwrap_or_default());
        Ok(CanonicalUrl {
            scheme,
            host,
            port,
            path,
            query,
        })
    }
}

/// `https://@host/`: the WHATWG parser drops an empty user info silently;
/// refuse it too, since it only ever appears in tricks.
fn has_empty_userinfo(input: &str) -> bool {
    let Some(rest) = input.split_once("://").map(|(_, r)| r) else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    authority.contains('@')
}

/// A domain as the parser left it: lower case and punycode already; drop
/// one trailing dot. A name with an empty label (`a..b`, `.`) is no host.
fn name_or_ip(d: &str) -> Option<Host> {
    let d = d.strip_suffix('.').unwrap_or(d);
    if d.split('.').any(str::is_empty) {
        return None;
    }
    Some(match d.parse::<Ipv4Addr>() {
        Ok(a) => Host::V4(a),
        Err(_) => Host::Name(d.to_owned()),
    })
}

/// Which part of a URL is being made canonical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The path of a request.
    Path,
    /// A query.
    Query,
    /// The path glob of a rule (`*` kept as the glob's wildcard).
    Glob,
}

/// The one spelling of a path or query (see the module documentation);
/// `None` for a path with an encoded slash or backslash.
fn canonical_path(text: &str, part: Part) -> Option<String> {
    let decoded = percent_decode(text, part)?;
    let mut out = String::with_capacity(decoded.len());
    for d in decoded {
        match d {
            Decoded::Kept(b) => push_escape(&mut out, b),
            // Empty segments go: `/public//secret` is `/public/secret`,
            // as most servers read it (the proxy forwards this spelling).
            Decoded::Byte(b'/') if part != Part::Query && out.ends_with('/') => {}
            Decoded::Byte(b) if stands_raw(b, part) => out.push(char::from(b)),
            Decoded::Byte(b) => push_escape(&mut out, b),
        }
    }
    Some(out)
}

/// A byte of a decoded path: one to spell as it may stand, or one whose
/// escape must stay.
enum Decoded {
    Byte(u8),
    Kept(u8),
}

/// Decode every `%XX`; a `%` that starts no escape is a literal `%`.
fn percent_decode(text: &str, part: Part) -> Option<Vec<Decoded>> {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match escaped {
            Some(v) if part != Part::Query && matches!(v, b'/' | b'\\') => return None,
            Some(v) if keeps_escape(v, part) => {
                out.push(Decoded::Kept(v));
                i += 3;
            }
            Some(v) => {
                out.push(Decoded::Byte(v));
                i += 3;
            }
            None => {
                out.push(Decoded::Byte(b[i]));
                i += 1;
            }
        }
    }
    Some(out)
}

/// Escapes that stand for a character that would change the structure.
fn keeps_escape(v: u8, part: Part) -> bool {
    match part {
        Part::Path | Part::Glob => matches!(v, b'%' | b'?' | b'#' | b'*'),
        Part::Query => matches!(v, b'%' | b'#' | b'&' | b'=' | b'+' | b';' | b'*'),
    }
}

/// Whether `b` may stand raw: RFC 3986 `pchar` and `/` (and `?` in a
/// query); a rule glob's `*` too.
fn stands_raw(b: u8, part: Part) -> bool {
    b.is_ascii_alphanumeric()
        || b"-._~!$&'()+,;=:@/".contains(&b)
        || (b == b'*' && part == Part::Glob)
        || (part == Part::Query && b == b'?')
}

fn push_escape(out: &mut String, b: u8) {
    out.push_str(&format!("%{b:02X}"));
}

/// A rule's host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    /// Exactly this host (a name or an IP literal).
    Exact(Host),
    /// Any name strictly under this suffix (`*.example.org`: `a.example.org`,
    /// `a.b.example.org`; not `example.org`, not `evil-example.org`).
    Under(String),
}

/// A URL rule object: `scheme://HOST[:PORT]/PATH-GLOB`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UrlPattern {
    /// `http` or `https`.
    pub scheme: String,
    /// The host.
    pub host: HostPattern,
    /// The port (the scheme's default when the rule names none).
    pub port: u16,
    /// The path glob (`*` matches anything, `/` included).
    pub path: String,
    /// The query glob: when given, the request's query must match it too
    /// (an absent query matches as empty).
    pub query: Option<String>,
    /// Paths and queries compared without regard to ASCII case (`nocase:`).
    pub nocase: bool,
}

impl UrlPattern {
    /// Parse a rule object.
    pub fn parse(rule: &str) -> Result<UrlPattern, UrlError> {
        let (rule, nocase) = match rule.strip_prefix("nocase:") {
            Some(r) => (r, true),
            None => (rule, false),
        };
        let err = |reason: &str| UrlError::Rule {
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or_else(|| err("no scheme (expected scheme://HOST/PATH)"))?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(err("the scheme is not http or https")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            return Err(err("user info is not allowed"));
        }
        if let Some(suffix) = authority.strip_prefix("*.") {
            let (suffix, port) = split_port(suffix).map_err(|r| err(&r))?;
            // Canonicalise the suffix as a host would be.
            let probe = CanonicalUrl::parse(&format!("{scheme}://x.{suffix}/"))
                .map_err(|e| err(&e.to_string()))?;
            let Host::Name(n) = probe.host else {
                return Err(err("*. must be followed by a DNS name"));
            };
            let suffix = n.strip_prefix("x.").unwrap_or(&n).to_owned();
            let (path, query) = glob_parts(path).map_err(|r| err(&r))?;
            return Ok(UrlPattern {
                scheme,
                host: HostPattern::Under(suffix),
                port: port.unwrap_or(default_port),
                path,
                query,
                nocase,
            });
        }
        if authority.contains('*') {
            return Err(err(
                "a host may only start with *. (any name under a suffix)",
            ));
        }
        let probe = CanonicalUrl::parse(&format!("{scheme}://{authority}/"))
            .map_err(|e| err(&e.to_string()))?;
        let (path, query) = glob_parts(path).map_err(|r| err(&r))?;
        Ok(UrlPattern {
            scheme,
            host: HostPattern::Exact(probe.host),
            port: probe.port,
            path,
            query,
            nocase,
        })
    }

    /// Whether a canonical request matches.
    pub fn matches(&self, url: &CanonicalUrl) -> bool {
        if self.scheme != url.scheme || self.port != url.port {
            return false;
        }
        let host_ok = match (&self.host, &url.host) {
            (HostPattern::Exact(h), u) => h == u,
            (HostPattern::Under(suffix), Host::Name(n)) => n
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
            // An IP literal never matches a name rule.
            (HostPattern::Under(_), _) => false,
        };
        host_ok && self.matches_path(url)
    }

    /// Whether the request's path (and, for a rule with a query part, its
    /// query) matches, in the case the rule says.
    pub fn matches_path(&self, url: &CanonicalUrl) -> bool {
        let fits = |glob: &str, text: &str| {
            if self.nocase {
                glob_match(&glob.to_ascii_lowercase(), &text.to_ascii_lowercase())
            } else {
                glob_match(glob, text)
            }
        };
        fits(&self.path, &url.path)
            && self
                .query
                .as_deref()
                .is_none_or(|q| fits(q, url.query.as_deref().unwrap_or("")))
    }
}

/// `host:port` -> (host, port).
fn split_port(a: &str) -> Result<(&str, Option<u16>), String> {
    match a.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || a.starts_with('[') => p
            .parse::<u16>()
            .map(|p| (h, Some(p)))
            .map_err(|_| format!("port {p:?} is not a number")),
        _ => Ok((a, None)),
    }
}

/// A rule's path glob and query glob, spelled as requests are, keeping `*`.
fn glob_parts(path: &str) -> Result<(String, Option<String>), String> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let path = canonical_path(path, Part::Glob)
        .ok_or_else(|| "an encoded slash (%2F or %5C) never matches: write /".to_owned())?;
    let query = query.map(canonical_glob_query);
    Ok((path, query))
}

/// A query glob spelled as request queries are, keeping `*`.
fn canonical_glob_query(q: &str) -> String {
    q.split('*')
        .map(|piece| canonical_path(piece, Part::Query).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("*")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(u: &str) -> String {
        CanonicalUrl::parse(u)
            .map(|c| c.to_string())
            .unwrap_or_else(|e| format!("ERR {e}"))
    }

    #[test]
    fn canonical_forms() {
        for (input, want) in [
            (
                "HTTPS://EN.Wikipedia.ORG/wiki/X",
                "https://en.wikipedia.org:443/wiki/X",
            ),
            (
                "https://en.wikipedia.org./wiki/X",
                "https://en.wikipedia.org:443/wiki/X",
            ),
            ("http://example.org", "http://example.org:80/"),
            ("https://example.org:443/a", "https://example.org:443/a"),
            ("https://example.org:8443/a", "https://example.org:8443/a"),
            (
                "https://example.org/a/./b/../c",
                "https://example.org:443/a/c",
            ),
            (
                "https://example.org/a/%2e%2E/c",
                "https://example.org:443/c",
            ),
            (
                "https://example.org/%7euser/%41",
                "https://example.org:443/~user/A",
            ),
            ("https://example.org/public//secret.txt", "https://example.org:443/public/secret.txt"),
            ("https://example.org//a///b/", "https://example.org:443/a/b/"),
            ("https://example.org/a?x=//y", "https://example.org:443/a?x=//y"),
            ("https://example.org/a%2fb", "ERR \"https://example.org/a%2fb\": an encoded slash (%2F or %5C) in the path is refused"),
            ("https://example.org/a?x=1#f", "https://example.org:443/a?x=1"),
            ("https://example.org/wiki/Special%3aRandom", "https://example.org:443/wiki/Special:Random"),
            ("https://example.org/a%20b/%C3%A9", "https://example.org:443/a%20b/%C3%A9"),
            ("https://example.org/a*b%2a", "https://example.org:443/a%2Ab%2A"),
            ("https://example.org/a?t=Special%3ARandom&x=%3d%26", "https://example.org:443/a?t=Special:Random&x=%3D%26"),
            ("https://example.org/%%353", "https://example.org:443/%2553"),
            ("https://example.org/100%", "https://example.org:443/100%25"),
            ("http://2130706433/", "http://127.0.0.1:80/"),
            ("http://0177.0.0.1/", "http://127.0.0.1:80/"),
            ("http://0x7f.1/", "http://127.0.0.1:80/"),
            ("http://127.1/", "http://127.0.0.1:80/"),
            ("http://0x7F000001/", "http://127.0.0.1:80/"),
            ("http://[::ffff:127.0.0.1]/", "http://127.0.0.1:80/"),
            ("http://[::FFFF:7f00:1]/", "http://127.0.0.1:80/"),
            ("http://[2001:DB8:0:0::1]/", "http://[2001:db8::1]:80/"),
            (
                "https://bücher.example/",
                "https://xn--bcher-kva.example:443/",
            ),
        ] {
            assert_eq!(c(input), want, "{input}");
        }
    }

    #[test]
    fn refusals() {
        for bad in [
            "https://good.example@evil.example/",
            "https://user:pw@evil.example/",
            "https://@evil.example/",
            "ftp://example.org/",
            "file:///etc/passwd",
            "not a url",
            "https://",
            "https://./",
            "https://a..b/",
            "https://a../",
        ] {
            assert!(CanonicalUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn m(rule: &str, url: &str) -> bool {
        UrlPattern::parse(rule)
            .unwrap()
            .matches(&CanonicalUrl::parse(url).unwrap())
    }

    #[test]
    fn suffix_rules_match_names_strictly_under_the_suffix() {
        let r = "https://*.example.org/*";
        assert!(m(r, "https://a.example.org/"));
        assert!(m(r, "https://a.b.example.org/x"));
        assert!(m(r, "https://A.EXAMPLE.ORG./x"));
        assert!(!m(r, "https://example.org/"));
        assert!(!m(r, "https://evil-example.org/"));
        assert!(!m(r, "https://example.org.evil.net/"));
        assert!(!m(r, "http://a.example.org/"));
        assert!(!m(r, "https://a.example.org:8443/"));
    }

    #[test]
    fn ip_literals_never_match_name_rules_in_any_spelling() {
        // A suffix that is an address is not a name: refused as a rule.
        assert!(UrlPattern::parse("http://*.0.0.1/*").is_err());
        let name = "http://*.localhost/*";
        for spelling in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            assert!(!m(name, spelling), "{spelling}");
            assert!(m("http://127.0.0.1/*", spelling), "{spelling}");
            assert!(!m("http://localhost/*", spelling), "{spelling}");
        }
    }

    #[test]
    fn paths_match_after_normalisation() {
        let r = "https://exam.school.example/submit";
        assert!(m(r, "https://exam.school.example/submit"));
        assert!(m(r, "https://exam.school.example/x/../submit"));
        assert!(m(r, "https://exam.school.example/%73ubmit"));
        assert!(!m(r, "https://exam.school.example/submit/extra"));
        let deny = "https://*.wikipedia.org/wiki/Special:*";
        assert!(m(deny, "https://en.wikipedia.org/wiki/Special:Random"));
        assert!(m(
            deny,
            "https://en.wikipedia.org/wiki/foo/../Special:Random"
        ));
        assert!(m(deny, "https://en.wikipedia.org/wiki/%53pecial:Random"));
    }

    /// Issue 21: path spellings that must not get around a rule, as
    /// documented (docs/policy.md, "Paths and queries").
    #[test]
    fn path_spellings_table() {
        let deny = "https://en.wikipedia.org/wiki/Special:*";
        let nocase = "nocase:https://en.wikipedia.org/wiki/Special:*";
        let query = "nocase:https://en.wikipedia.org/w/index.php?*title=Special:*";
        let secret = "https://files.example/public/*";
        let hidden = "https://files.example/public/secret*";
        for (rule, url, matches) in [
            (deny, "https://en.wikipedia.org/wiki/Special:Random", true),
            (deny, "https://en.wikipedia.org/wiki/Special%3ARandom", true),
            (deny, "https://en.wikipedia.org/wiki/Special%3aRandom", true),
            (deny, "https://en.wikipedia.org/wiki/%53pecial:Random", true),
            (
                deny,
                "https://en.wikipedia.org/wiki/x/../Special:Random",
                true,
            ),
            (
                deny,
                "https://en.wikipedia.org/wiki/x/%2e%2e/Special:Random",
                true,
            ),
            (deny, "https://en.wikipedia.org/wiki/special:Random", false),
            (nocase, "https://en.wikipedia.org/wiki/special:Random", true),
            (
                nocase,
                "https://en.wikipedia.org/WIKI/SPECIAL%3ARANDOM",
                true,
            ),
            (
                deny,
                "https://en.wikipedia.org/w/index.php?title=Special:Random",
                false,
            ),
            (
                query,
                "https://en.wikipedia.org/w/index.php?title=Special:Random",
                true,
            ),
            (
                query,
                "https://en.wikipedia.org/w/index.php?title=Special%3ARandom",
                true,
            ),
            (
                query,
                "https://en.wikipedia.org/w/index.php?action=x&title=special:random",
                true,
            ),
            (
                query,
                "https://en.wikipedia.org/w/index.php?title=Main_Page",
                false,
            ),
            (query, "https://en.wikipedia.org/w/index.php", false),
            (
                secret,
                "https://files.example/public/x/../../secret.txt",
                false,
            ),
            (secret, "https://files.example/public/a.txt", true),
            (hidden, "https://files.example/public//secret.txt", true),
            (hidden, "https://files.example//public///secret.txt", true),
            (hidden, "https://files.example/public/./secret.txt", true),
            (hidden, "https://files.example/public/x/secret.txt", false),
        ] {
            assert_eq!(m(rule, url), matches, "{rule} ~ {url}");
        }
        // Encoded slashes are refused, never decided.
        for url in [
            "https://files.example/public/x/..%2Fsecret.txt",
            "https://files.example/public/x/..%2fsecret.txt",
            "https://files.example/public%5C..%5Csecret.txt",
        ] {
            assert!(
                matches!(CanonicalUrl::parse(url), Err(UrlError::EncodedSlash { .. })),
                "{url}"
            );
        }
        assert!(UrlPattern::parse("https://files.example/a%2Fb/*").is_err());
    }

    #[test]
    fn canonical_forms_are_fixed_points() {
        for u in [
            "https://example.org/%%353?q=%%26&r=a+b",
            "https://example.org/a%20b/%C3%A9?x=%2f%3F",
            "https://example.org/wiki/Special%3aRandom",
            "https://example.org/a*b?c*d",
        ] {
            let once = CanonicalUrl::parse(u).unwrap();
            let twice = CanonicalUrl::parse(&once.to_string()).unwrap();
            assert_eq!(once, twice, "{u}");
        }
    }
}
