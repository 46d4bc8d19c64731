//! The fast path decides exactly as casbin: random policies (nested groups,
//! suffix wildcards, path globs, denies, duplicates) and random requests
//! (tricky URL spellings, hashes and paths, images), 100,000 cases, same
//! allow/deny and same rule named.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use policy::{CanonicalUrl, FastPolicy, Policy, PolicyText, Request};

/// xorshift64*: deterministic, so a failure names a reproducible case.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

const HASHES: [&str; 4] = [
    "1111111111111111111111111111111111111111111111111111111111111111",
    "2222222222222222222222222222222222222222222222222222222222222222",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "abcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcdefabcd",
];

fn random_policy(rng: &mut Rng) -> String {
    let mut lines = Vec::new();
    // Groups g0..g5: devices join groups, groups join higher groups only.
    for _ in 0..rng.below(12) {
        let d = rng.below(6);
        let g = rng.below(6);
        lines.push(format!("g, device:d{d}, group:g{g}"));
    }
    for _ in 0..rng.below(5) {
        let a = rng.below(5);
        let b = a + 1 + rng.below(5 - a);
        lines.push(format!("g, group:g{a}, group:g{b}"));
    }
    let subjects = |rng: &mut Rng| match rng.below(10) {
        0 => "group:all".to_owned(),
        1 => format!("device:d{}", rng.below(6)),
        _ => format!("group:g{}", rng.below(6)),
    };
    for _ in 0..5 + rng.below(30) {
        let sub = subjects(rng);
        let eft = if rng.below(4) == 0 { "deny" } else { "allow" };
        let line = match rng.below(3) {
            0 => {
                let scheme = rng.pick(&["https", "http"]);
                let host = rng.pick(&[
                    "a.example.org",
                    "example.org",
                    "*.example.org",
                    "*.a.example.org",
                    "*.org",
                    "evil-example.org",
                    "10.0.0.1",
                    "[2001:db8::1]",
                    "localhost",
                    "B.Example.Org",
                ]);
                let port = rng.pick(&["", "", ":8443", ":443"]);
                let path = rng.pick(&[
                    "/*",
                    "/wiki/*",
                    "/wiki/Special:*",
                    "/submit",
                    "/a/*/c",
                    "/",
                    "/%7Euser/*",
                    "/wiki/special:*",
                    "/w/index.php?*title=Special:*",
                    "/w/index.php?*title=special:*",
                    "/wiki/Special%3A*",
                ]);
                let act = rng.pick(&["GET", "POST", "*"]);
                let case = rng.pick(&["", "", "nocase:"]);
                format!("p, {sub}, url, {case}{scheme}://{host}{port}{path}, {act}, {eft}")
            }
            1 => {
                let obj = if rng.below(2) == 0 {
                    format!("sha256:{}", HASHES[rng.below(HASHES.len())])
                } else {
                    format!(
                        "path:{}",
                        rng.pick(&[
                            "/usr/bin/*",
                            "/opt/*",
                            "/usr/bin/python*",
                            "/home/*/bin/*",
                            "/*"
                        ])
                    )
                };
                format!("p, {sub}, app, {obj}, exec, {eft}")
            }
            _ => format!("p, {sub}, image, img{}, subscribe, {eft}", rng.below(3)),
        };
        lines.push(line);
        if rng.below(20) == 0 {
            // A duplicate line now and then.
            let dup = lines.last().cloned().unwrap();
            lines.push(dup);
        }
    }
    lines.join("\n")
}

fn random_request(rng: &mut Rng) -> (String, Request) {
    let subject = format!("device:d{}", rng.below(7));
    let req = match rng.below(3) {
        0 => {
            let scheme = rng.pick(&["https", "http", "HTTPS"]);
            let host = rng.pick(&[
                "a.example.org",
                "A.EXAMPLE.ORG.",
                "x.a.example.org",
                "example.org",
                "evil-example.org",
                "example.org.evil.net",
                "10.0.0.1",
                "167772161",
                "0x0a.0.0.1",
                "012.0.0.1",
                "10.1",
                "[2001:db8:0::1]",
                "[::ffff:10.0.0.1]",
                "localhost",
                "b.example.org",
                "deep.x.a.example.org",
            ]);
            let port = rng.pick(&["", "", ":443", ":80", ":8443"]);
            let path = rng.pick(&[
                "/",
                "/wiki/Rust",
                "/wiki/Special:Random",
                "/wiki/x/../Special:Random",
                "/wiki/%53pecial:X",
                "/submit",
                "/submit/x",
                "/a/b/c",
                "/a/b/d/c",
                "/~user/page",
                "/%7euser/page",
                "/a/%2e%2e/submit",
                "/wiki/Special%3aRandom",
                "/WIKI/SPECIAL:RANDOM",
                "/w/index.php?title=Special:Random",
                "/w/index.php?action=raw&title=special%3Arandom",
                "/w/index.php?title=Main_Page",
                "/submit?x=1",
            ]);
            let url = CanonicalUrl::parse(&format!("{scheme}://{host}{port}{path}")).unwrap();
            Request::Url {
                url,
                method: rng.pick(&["GET", "POST", "PUT"]).to_owned(),
            }
        }
        1 => Request::App {
            sha256: match rng.below(6) {
                0 => None,
                1 => Some(
                    "9999999999999999999999999999999999999999999999999999999999999999".to_owned(),
                ),
                _ => Some(HASHES[rng.below(HASHES.len())].to_owned()),
            },
            path: match rng.below(8) {
                0 => None,
                _ => Some(
                    rng.pick(&[
                        "/usr/bin/ls",
                        "/usr/bin/python3",
                        "/opt/tool",
                        "/home/ann/bin/x",
                        "/tmp/evil",
                        "/usr/binx/ls",
                    ])
                    .to_owned(),
                ),
            },
        },
        _ => Request::Image {
            name: format!("img{}", rng.below(4)),
        },
    };
    (subject, req)
}

#[test]
fn fast_path_decides_exactly_as_casbin_on_100000_random_cases() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut rng = Rng(0x5a7c_4e1f_0011_2233);
    let (mut cases, mut allowed, mut named) = (0usize, 0usize, 0usize);
    for policy_no in 0..500 {
        let text = random_policy(&mut rng);
        let parsed = match PolicyText::parse(&text) {
            Ok(p) => p,
            Err(e) => panic!("policy {policy_no} does not parse: {e}\n{text}"),
        };
        let casbin = rt.block_on(Policy::load(parsed.clone())).unwrap();
        let fast = FastPolicy::compile(&parsed);
        for _ in 0..200 {
            let (subject, req) = random_request(&mut rng);
            let want = casbin.decide(&subject, &req).unwrap();
            let got = fast.decide(&subject, &req);
            assert_eq!(got, want, "policy {policy_no}, {subject} {req:?}\n{text}");
            cases += 1;
            allowed += usize::from(want.allow);
            named += usize::from(want.rule.is_some());
        }
    }
    assert_eq!(cases, 100_000);
    // The cases exercise both answers, and most of them hit some rule.
    assert!(allowed > 10_000 && allowed < 90_000, "allowed {allowed}");
    assert!(named > 15_000, "named {named}");
}
