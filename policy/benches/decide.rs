//! Decisions per second: casbin (the reference semantics, with Satchel's
//! model and matcher) against the fast path, at 10 to 100,000 rules, for URL
//! and app requests. Run: `cargo bench -p policy --bench decide`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use policy::{CanonicalUrl, FastPolicy, Policy, PolicyText, Request};

const GROUPS: usize = 50;

/// A policy of `n` rules of one kind, spread over 50 groups, with one
/// device in every group and a few denies.
fn policy(n: usize, kind: &str) -> String {
    let mut out = String::new();
    for g in 0..GROUPS {
        out.push_str(&format!(
            "g, device:d{g}, group:g{g}\ng, group:g{g}, group:school\n"
        ));
    }
    for i in 0..n {
        let group = format!("group:g{}", i % GROUPS);
        let eft = if i % 17 == 0 { "deny" } else { "allow" };
        match kind {
            "url" => {
                let host = if i % 5 == 0 {
                    format!("*.site{}.example", i / 5)
                } else {
                    format!("www.site{}.example", i / 5)
                };
                out.push_str(&format!(
                    "p, {group}, url, https://{host}/path{}/*, GET, {eft}\n",
                    i % 7
                ));
            }
            _ => {
                if i % 1000 == 999 {
                    out.push_str(&format!(
                        "p, {group}, app, path:/opt/app{i}/*, exec, {eft}\n"
                    ));
                } else {
                    out.push_str(&format!("p, {group}, app, sha256:{i:064x}, exec, {eft}\n"));
                }
            }
        }
    }
    out
}

fn requests(n: usize, kind: &str) -> Vec<(String, Request)> {
    (0..64)
        .map(|k| {
            let i = (k * 7919) % n.max(1);
            let subject = format!("device:d{}", (i + k) % GROUPS);
            let req = match kind {
                "url" => Request::Url {
                    url: CanonicalUrl::parse(&format!(
                        "https://www.site{}.example/path{}/page",
                        i / 5,
                        i % 7
                    ))
                    .unwrap(),
                    method: "GET".to_owned(),
                },
                _ => Request::App {
                    sha256: Some(format!("{i:064x}")),
                    path: Some("/usr/bin/tool".to_owned()),
                },
            };
            (subject, req)
        })
        .collect()
}

/// Request URLs as browsers send them: escapes, dot segments, queries.
const URLS: [&str; 6] = [
    "https://en.wikipedia.org/wiki/Special%3ARandom",
    "https://EN.Wikipedia.ORG./wiki/a/../Main_Page",
    "https://en.wikipedia.org/w/index.php?title=Special%3ARandom&action=raw",
    "http://www.example.org/search?q=caf%C3%A9+au+lait&lang=fr",
    "https://files.example/public/%7Euser/notes%20(2).txt",
    "http://0x7f.1/status",
];

/// What canonicalising one request URL costs (it runs before every decision).
fn canonicalise(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonicalise");
    let mut k = 0;
    g.bench_function("url", |b| {
        b.iter(|| {
            k = (k + 1) % URLS.len();
            policy::CanonicalUrl::parse(URLS[k])
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for kind in ["url", "app"] {
        let mut g = c.benchmark_group(format!("decide_{kind}"));
        g.sample_size(10);
        for n in [10usize, 1_000, 10_000, 100_000] {
            let text = PolicyText::parse(&policy(n, kind)).unwrap();
            let reqs = requests(n, kind);
            let fast = FastPolicy::compile(&text);
            let mut k = 0;
            g.bench_with_input(BenchmarkId::new("fast", n), &n, |b, _| {
                b.iter(|| {
                    k = (k + 1) % reqs.len();
                    fast.decide(&reqs[k].0, &reqs[k].1)
                })
            });
            if n <= 10_000 {
                let casbin = rt.block_on(Policy::load(text.clone())).unwrap();
                for (s, r) in &reqs[..8] {
                    assert_eq!(casbin.decide(s, r).unwrap(), fast.decide(s, r));
                }
                let mut k = 0;
                g.bench_with_input(BenchmarkId::new("casbin", n), &n, |b, _| {
                    b.iter(|| {
                        k = (k + 1) % reqs.len();
                        casbin.decide(&reqs[k].0, &reqs[k].1).unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, bench, canonicalise);
criterion_main!(benches);
