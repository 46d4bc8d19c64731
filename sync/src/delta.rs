//! Binary deltas for changed files: the new file compressed with zstd using
//! the old file (which the receiver already has) as a raw-content
//! dictionary, with long-distance matching. For a security update that
//! touches a few bytes of a large binary this is far smaller than the new
//! chunks; the sender ships whichever of the two is smaller, per file.
//!
//! The receiver rebuilds the new file, re-chunks it and checks that the
//! chunk ids are exactly the manifest's: a delta is trusted no more than a
//! chunk.

use std::io;

/// The largest window (2^27 = 128 MiB): the old and new file together
/// must fit, or no delta is made.
pub const MAX_WINDOW_LOG: u32 = 27;
/// zstd level for deltas.
pub const LEVEL: i32 = 9;

/// A delta that cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("delta: {0}")]
pub struct DeltaError(pub String);

fn window_log(old: usize, new: usize) -> Option<u32> {
    let need = (old + new)
        .max(1 << 10)
        .next_power_of_two()
        .trailing_zeros();
    (need <= MAX_WINDOW_LOG).then_some(need.max(10))
}

/// The delta from `old` to `new`; `None` if the files are too large for one
/// window.
pub fn make(old: &[u8], new: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let Some(wlog) = window_log(old.len(), new.len()) else {
        return Ok(None);
    };
    let mut c = zstd::bulk::Compressor::with_dictionary(LEVEL, old)?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(wlog))?;
    c.set_parameter(zstd::zstd_safe::CParameter::EnableLongDistanceMatching(
        true,
    ))?;
    c.compress(new).map(Some)
}

/// Rebuild the new file from `old` and `delta`, refusing more than `max`
/// bytes.
pub fn apply(old: &[u8], delta: &[u8], max: usize) -> Result<Vec<u8>, DeltaError> {
    let mut d =
        zstd::bulk::Decompressor::with_dictionary(old).map_err(|e| DeltaError(e.to_string()))?;
    d.set_parameter(zstd::zstd_safe::DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(|e| DeltaError(e.to_string()))?;
    d.decompress(delta, max)
        .map_err(|e| DeltaError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_edit_makes_a_small_delta_that_rebuilds_the_file() {
        let mut x = 99u64;
        let old: Vec<u8> = (0..3_000_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let mut new = old.clone();
        for i in (0..new.len()).step_by(250_000) {
            new[i] ^= 0xff;
        }
        new.splice(1_000_000..1_000_000, b"patched".iter().copied());
        let delta = make(&old, &new).unwrap().unwrap();
        assert!(delta.len() < 2_000, "{} bytes", delta.len());
        assert_eq!(apply(&old, &delta, new.len()).unwrap(), new);
        // Against another base, or over the size limit: an error, never
        // wrong bytes.
        assert!(apply(&new, &delta, new.len()).map_or(true, |b| b != new));
        assert!(apply(&old, &delta, new.len() - 1).is_err());
        assert!(apply(&old, b"garbage", 100).is_err());
    }
}
