//! Differential fuzz of the chunker: on any bytes, Satchel's cut points
//! (gearhash's SIMD scan) are the `fastcdc` crate's `v2020::FastCDC` cut
//! points, the chunks cover the input, and each stays within the sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sync::chunk::{first_cut, AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};

fuzz_target!(|data: &[u8]| {
    // Small inputs are stretched so that cuts past the minimum size happen:
    // the fuzzer's bytes repeated, with a counter so no run is uniform.
    let input: Vec<u8> = if data.len() < 2 * MIN_CHUNK as usize && !data.is_empty() {
        (0..(data.len() * 97).min(300_000))
            .map(|i| data[i % data.len()].wrapping_add((i / data.len()) as u8))
            .collect()
    } else {
        data.to_vec()
    };
    let mut ours = Vec::new();
    let mut rest = &input[..];
    while !rest.is_empty() {
        let n = first_cut(rest);
        assert!(n > 0 && n <= rest.len() && n <= MAX_CHUNK as usize);
        assert!(n >= MIN_CHUNK as usize || n == rest.len());
        rest = &rest[n..];
        ours.push(input.len() - rest.len());
    }
    let reference: Vec<usize> = fastcdc::v2020::FastCDC::new(&input, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
        .map(|c| c.offset + c.length)
        .collect();
    assert_eq!(ours, reference);
});
