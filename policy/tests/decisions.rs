//! Decisions of the casbin reference semantics on golden tables: URL
//! tricks, deny overrides, nested groups, `group:all`, app hash against
//! path rules, images, and the rule each decision names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use policy::{CanonicalUrl, Effect, FastPolicy, Policy, PolicyText, Request};

fn sample() -> Policy {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy/school.csv"
    ))
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(Policy::load(PolicyText::parse(&text).unwrap()))
        .unwrap()
}

fn url(u: &str, m: &str) -> Request {
    Request::Url {
        url: CanonicalUrl::parse(u).unwrap(),
        method: m.to_owned(),
    }
}

#[test]
fn url_golden_table() {
    let p = sample();
    for (subject, u, method, allow) in [
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/Rust",
            "GET",
            true,
        ),
        (
            "device:laptop-18",
            "https://EN.WIKIPEDIA.ORG./wiki/Rust",
            "GET",
            true,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org:443/wiki/Rust",
            "GET",
            true,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/Rust",
            "POST",
            false,
        ),
        (
            "device:laptop-17",
            "http://en.wikipedia.org/wiki/Rust",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org:8443/wiki/Rust",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://wikipedia.org/wiki/Rust",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://evil-wikipedia.org/wiki/Rust",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org.evil.net/wiki/Rust",
            "GET",
            false,
        ),
        // Deny overrides allow, however the path is spelled.
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/Special:Random",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/%53pecial:Random",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/x/../Special:Random",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki/x/%2e%2e/Special:Random",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org/wiki//Special:Random",
            "GET",
            false,
        ),
        (
            "device:laptop-17",
            "https://en.wikipedia.org//wiki///Special:Random",
            "GET",
            false,
        ),
        // Exam: class 7a only, POST only on /submit.
        (
            "device:laptop-17",
            "https://exam.school.example/submit",
            "POST",
            true,
        ),
        (
            "device:laptop-18",
            "https://exam.school.example/submit",
            "POST",
            false,
        ),
        (
            "device:laptop-17",
            "https://exam.school.example/admin",
            "POST",
            false,
        ),
        // Unknown devices get nothing but group:all rules.
        (
            "device:stranger",
            "https://en.wikipedia.org/wiki/Rust",
            "GET",
            false,
        ),
    ] {
        let d = p.decide(subject, &url(u, method)).unwrap();
        assert_eq!(d.allow, allow, "{subject} {method} {u}: {:?}", d.rule);
        assert_eq!(
            FastPolicy::compile(p.text()).decide(subject, &url(u, method)),
            d
        );
    }
}

#[test]
fn ip_literal_hosts_never_match_name_rules() {
    let text = "g, device:a, group:g\np, group:g, url, https://*.example.org/*, GET, allow\np, group:g, url, http://localhost/*, GET, allow\n";
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let p = rt
        .block_on(Policy::load(PolicyText::parse(text).unwrap()))
        .unwrap();
    for u in [
        "http://127.0.0.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://0177.0.0.01/",
        "http://127.1/",
        "http://[::ffff:7f00:1]/",
    ] {
        assert!(!p.decide("device:a", &url(u, "GET")).unwrap().allow, "{u}");
    }
    assert!(
        p.decide("device:a", &url("http://LOCALHOST./x", "GET"))
            .unwrap()
            .allow
    );
}

#[test]
fn app_hash_and_path_rules() {
    let p = sample();
    let app = |hash: Option<&str>, path: Option<&str>| Request::App {
        sha256: hash.map(str::to_owned),
        path: path.map(str::to_owned),
    };
    let good = "5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
    let bad = "0000000000000000000000000000000000000000000000000000000000000bad";
    let other = "1111111111111111111111111111111111111111111111111111111111111111";
    // A path rule allows /usr/bin.
    let d = p
        .decide(
            "device:laptop-18",
            &app(Some(other), Some("/usr/bin/python3")),
        )
        .unwrap();
    assert!(d.allow);
    assert_eq!(d.rule.unwrap().object, "path:/usr/bin/*");
    // A hash deny beats the path allow, and is the rule named.
    let d = p
        .decide(
            "device:laptop-18",
            &app(Some(bad), Some("/usr/bin/python3")),
        )
        .unwrap();
    assert!(!d.allow);
    let r = d.rule.unwrap();
    assert_eq!(
        (r.effect, r.object.as_str()),
        (Effect::Deny, format!("sha256:{bad}").as_str())
    );
    // A hash allow for 7a outside /usr/bin; the hash rule is named first.
    let d = p
        .decide("device:laptop-17", &app(Some(good), Some("/home/x/tool")))
        .unwrap();
    assert!(d.allow);
    assert!(d.rule.unwrap().object.starts_with("sha256:"));
    let d = p
        .decide("device:laptop-17", &app(Some(good), Some("/usr/bin/tool")))
        .unwrap();
    assert!(d.rule.unwrap().object.starts_with("sha256:"));
    // ... but not for 7b; and nothing else outside /usr/bin.
    assert!(
        !p.decide("device:laptop-18", &app(Some(good), Some("/home/x/tool")))
            .unwrap()
            .allow
    );
    let d = p
        .decide("device:laptop-17", &app(Some(other), Some("/tmp/evil")))
        .unwrap();
    assert!(!d.allow);
    assert!(d.rule.is_none(), "no rule: default deny");
    // Hash only, path only.
    assert!(
        p.decide("device:laptop-17", &app(Some(good), None))
            .unwrap()
            .allow
    );
    assert!(
        p.decide("device:laptop-17", &app(None, Some("/usr/bin/ls")))
            .unwrap()
            .allow
    );
    assert!(
        !p.decide("device:laptop-17", &app(None, Some("/usr/binx/ls")))
            .unwrap()
            .allow
    );
}

#[test]
fn nested_groups_and_images() {
    let p = sample();
    let img = |n: &str| Request::Image { name: n.to_owned() };
    // laptop-17 -> class-7a -> school.
    assert!(
        p.decide("device:laptop-17", &img("classroom-2026"))
            .unwrap()
            .allow
    );
    assert!(
        p.decide("device:laptop-18", &img("classroom-2026"))
            .unwrap()
            .allow
    );
    assert!(
        !p.decide("device:laptop-17", &img("classroom-2025"))
            .unwrap()
            .allow
    );
    assert!(
        !p.decide("device:stranger", &img("classroom-2026"))
            .unwrap()
            .allow
    );
}

#[test]
fn bad_policy_lines_name_their_line() {
    for (text, line) in [
        ("p, group:a, url, https://x.example/*, GET, maybe", 1),
        ("\n\np, group:a, file, /etc/passwd, read, allow", 3),
        ("p, group:a, url, ftp://x.example/*, GET, allow", 1),
        ("p, group:a, url, https://x.example/*, FETCH, allow", 1),
        ("p, group:a, url, https://a@x.example/*, GET, allow", 1),
        ("p, group:a, url, https://x*.example/*, GET, allow", 1),
        ("p, group:a, app, sha256:abc, exec, allow", 1),
        ("p, group:a, app, /usr/bin/*, exec, allow", 1),
        ("p, group:a, app, path:/usr/bin/*, run, allow", 1),
        ("p, group:a, image, x, pull, allow", 1),
        ("g, device:a", 1),
        ("g, device:a, class-7a", 1),
        ("x, y", 1),
        ("p, group a, image, x, subscribe, allow", 1),
    ] {
        let e = PolicyText::parse(text).unwrap_err();
        assert_eq!(e.line, line, "{text}: {e}");
    }
    assert_eq!(
        PolicyText::parse("# only a comment\n\n").unwrap(),
        PolicyText::default()
    );
}

/// Groups given at enrollment (not in the policy) count as memberships,
/// transitively: the same decision as the policy with the `g` line added.
#[test]
fn groups_from_outside_the_policy_decide_like_g_lines() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy/school.csv"
    ))
    .unwrap();
    let fast = FastPolicy::compile(&PolicyText::parse(&text).unwrap());
    let with_line = FastPolicy::compile(
        &PolicyText::parse(&format!("{text}\ng, device:new-1, group:class-7a\n")).unwrap(),
    );
    let extra = vec!["group:class-7a".to_owned()];
    for (u, m) in [
        ("https://en.wikipedia.org/wiki/Rust", "GET"),
        ("https://exam.school.example/submit", "POST"),
        ("https://exam.school.example/page", "GET"),
        ("https://en.wikipedia.org/wiki/Special:Random", "GET"),
        ("https://evil.example/", "GET"),
    ] {
        let r = url(u, m);
        let got = fast.decide_with_groups("device:new-1", &extra, &r);
        assert_eq!(got, with_line.decide("device:new-1", &r), "{u}");
        // Without the group, the unknown device gets nothing but group:all rules.
        assert!(!fast.decide("device:new-1", &r).allow, "{u}");
    }
    // class-7a is in group:school (a nested membership of the policy).
    assert!(
        fast.decide_with_groups(
            "device:new-1",
            &extra,
            &url("https://en.wikipedia.org/wiki/Rust", "GET")
        )
        .allow
    );
}

#[test]
fn the_proxy_intercepts_exactly_the_hosts_with_url_rules() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/policy/school.csv"
    ))
    .unwrap();
    let fast = policy::FastPolicy::compile(&policy::PolicyText::parse(&text).unwrap());
    let has = |u: &str| fast.has_url_rules_for(&policy::CanonicalUrl::parse(u).unwrap());
    assert!(has("https://en.wikipedia.org/"));
    assert!(has("https://upload.wikimedia.org:443/"));
    assert!(has("https://exam.school.example/"));
    assert!(has("https://updates.school.example/"));
    // Not the bare suffix, not another port or scheme, not another host.
    assert!(!has("https://wikipedia.org/"));
    assert!(!has("https://en.wikipedia.org:8443/"));
    assert!(!has("http://en.wikipedia.org/"));
    assert!(!has("https://example.com/"));
    assert!(!has("https://127.0.0.1/"));
}
