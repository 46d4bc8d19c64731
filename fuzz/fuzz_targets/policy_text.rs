//! Fuzz the policy parser and the fast path: any text is refused with a
//! line number or compiles, and the compiled policy answers without
//! panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{CanonicalUrl, FastPolicy, PolicyText, Request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match PolicyText::parse(text) {
        Ok(p) => {
            let f = FastPolicy::compile(&p);
            let url = CanonicalUrl::parse("https://a.example.org/x").expect("fixed URL");
            let _ = f.decide("device:a", &Request::Url { url, method: "GET".into() });
            let _ = f.decide("device:a", &Request::App { sha256: None, path: Some("/usr/bin/x".into()) });
        }
        Err(e) => assert!(e.line >= 1),
    }
});
