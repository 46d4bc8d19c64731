//! Fuzz URL canonicalisation: any input is refused or canonical, and a
//! canonical URL is a fixed point (canonicalising it again changes nothing),
//! so one resource has one spelling. Rule patterns parse or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use policy::{CanonicalUrl, UrlPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = CanonicalUrl::parse(text) {
        let again = CanonicalUrl::parse(&c.to_string()).expect("a canonical URL parses");
        assert_eq!(again, c, "not a fixed point: {text:?}");
    }
    if let Ok(p) = UrlPattern::parse(text) {
        let _ = CanonicalUrl::parse(text).map(|u| p.matches(&u));
    }
});
