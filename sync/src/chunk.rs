//! Content-defined chunking (FastCDC, 2020 variant) and chunk ids.
//!
//! Chunk boundaries depend on content only, so an insertion moves the
//! boundaries near it and no others: an edited file shares most chunks with
//! its old version. Sizes: 4 KiB minimum, 16 KiB average, 64 KiB maximum
//! (16 KiB measured better than 64 KiB on root file systems: more shared
//! chunks between OS versions for a modest index).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// Smallest chunk (except a file's last).
pub const MIN_CHUNK: u32 = 4 * 1024;
/// Average chunk.
pub const AVG_CHUNK: u32 = 16 * 1024;
/// Largest chunk: nothing bigger is ever accepted as a chunk.
pub const MAX_CHUNK: u32 = 64 * 1024;

/// A chunk's id: the SHA-256 of its plain bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `bytes`.
    pub fn of(bytes: &[u8]) -> ChunkId {
        ChunkId(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({self})")
    }
}

/// A chunk id that is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a chunk id (64 lowercase hex digits)")]
pub struct BadChunkId(pub String);

impl FromStr for ChunkId {
    type Err = BadChunkId;
    fn from_str(s: &str) -> Result<ChunkId, BadChunkId> {
        let bad = || BadChunkId(s.chars().take(80).collect());
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
        Ok(ChunkId(out))
    }
}

impl serde::Serialize for ChunkId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChunkId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ChunkId, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Cut a stream into chunks, handing each (id, bytes) to `each`, in order.
/// Returns the number of bytes read.
pub fn chunk_stream<R: Read>(
    reader: R,
    mut each: impl FnMut(ChunkId, &[u8]) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    let mut total = 0u64;
    for c in fastcdc::v2020::StreamCDC::new(reader, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
        let c = c.map_err(|e| match e {
            fastcdc::v2020::Error::IoError(e) => e,
            other => std::io::Error::other(other.to_string()),
        })?;
        total += c.data.len() as u64;
        each(ChunkId::of(&c.data), &c.data)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(data: &[u8]) -> Vec<ChunkId> {
        let mut v = Vec::new();
        chunk_stream(data, |id, _| {
            v.push(id);
            Ok(())
        })
        .unwrap();
        v
    }

    /// Pseudo-random bytes (xorshift), so chunk boundaries are realistic.
    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn an_insertion_moves_only_nearby_chunks() {
        let a = noise(1 << 20, 7);
        let mut b = a.clone();
        b.splice(500_000..500_000, b"an inserted sentence".iter().copied());
        let (ca, cb) = (ids(&a), ids(&b));
        let shared = cb.iter().filter(|c| ca.contains(c)).count();
        assert!(ca.len() > 30, "{} chunks", ca.len());
        assert!(
            shared + 3 >= cb.len(),
            "only {shared} of {} shared",
            cb.len()
        );
    }

    #[test]
    fn chunk_sizes_stay_in_bounds_and_cover_the_input() {
        let a = noise(600_000, 3);
        let mut sizes = Vec::new();
        chunk_stream(&a[..], |_, d| {
            sizes.push(d.len());
            Ok(())
        })
        .unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), a.len());
        let (last, rest) = sizes.split_last().unwrap();
        assert!(rest
            .iter()
            .all(|&s| s >= MIN_CHUNK as usize && s <= MAX_CHUNK as usize));
        assert!(*last <= MAX_CHUNK as usize);
        assert!(ids(b"").is_empty());
    }

    #[test]
    fn ids_parse_and_print() {
        let id = ChunkId::of(b"x");
        assert_eq!(id.to_string().parse::<ChunkId>().unwrap(), id);
        for bad in ["", "zz", &"A".repeat(64), &"0".repeat(63)] {
            assert!(bad.parse::<ChunkId>().is_err(), "{bad}");
        }
    }
}
