//! The chunk frame stream carried between gateway and client: for each
//! chunk, its 32-byte id, a big-endian u32 length, then that many bytes of
//! its zstd-compressed content. Many chunks travel in one HTTP body, so a
//! pull is a few requests, not one per chunk. [`read_frames`] checks each
//! frame's bounds (never panics, never allocates more than the input); the
//! receiver checks each chunk against its id before storing it.

use crate::chunk::{ChunkId, MAX_CHUNK};

/// Largest compressed chunk accepted in a frame (zstd's worst case for
/// [`MAX_CHUNK`] bytes is a little over it).
pub const MAX_FRAME: usize = MAX_CHUNK as usize + 1024;

/// A frame stream that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk frames: at byte {offset}: {problem}")]
pub struct FrameError {
    /// Where.
    pub offset: usize,
    /// What.
    pub problem: &'static str,
}

/// Append one frame to `out`.
pub fn write_frame(out: &mut Vec<u8>, id: ChunkId, compressed: &[u8]) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(
        &u32::try_from(compressed.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(compressed);
}

/// Split a frame stream into (id, compressed bytes).
pub fn read_frames(mut input: &[u8]) -> Result<Vec<(ChunkId, &[u8])>, FrameError> {
    let total = input.len();
    let mut out = Vec::new();
    while !input.is_empty() {
        let offset = total - input.len();
        let err = |problem| FrameError { offset, problem };
        if input.len() < 36 {
            return Err(err("a frame header is cut short"));
        }
        let (head, rest) = input.split_at(36);
        let mut id = [0u8; 32];
        id.copy_from_slice(&head[..32]);
        let mut len = [0u8; 4];
        len.copy_from_slice(&head[32..]);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(err("a frame is larger than a chunk can be"));
        }
        if rest.len() < len {
            return Err(err("a frame's bytes are cut short"));
        }
        let (body, rest) = rest.split_at(len);
        out.push((ChunkId(id), body));
        input = rest;
    }
    Ok(out)
}

/// Largest delta accepted in a record.
pub const MAX_DELTA: usize = 64 << 20;

/// One record of a delta answer: for the request's file `file`, either a
/// delta of the whole new file or one of its chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// A delta (kind 0).
    Delta {
        /// Index of the file in the request.
        file: u32,
        /// The zstd delta.
        delta: Vec<u8>,
    },
    /// A chunk (kind 1).
    Chunk {
        /// Index of the file in the request.
        file: u32,
        /// The chunk.
        id: ChunkId,
        /// Its compressed bytes.
        compressed: Vec<u8>,
    },
}

/// Append a record: `u32 file`, `u8 kind`, `u32 length`, then the payload
/// (a delta, or a chunk's id and compressed bytes).
pub fn write_record(out: &mut Vec<u8>, r: &Record) {
    let (file, kind, parts): (u32, u8, [&[u8]; 2]) = match r {
        Record::Delta { file, delta } => (*file, 0, [&[], delta]),
        Record::Chunk {
            file,
            id,
            compressed,
        } => (*file, 1, [&id.0, compressed]),
    };
    out.extend_from_slice(&file.to_be_bytes());
    out.push(kind);
    let len = parts[0].len() + parts[1].len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(parts[0]);
    out.extend_from_slice(parts[1]);
}

/// Parse a whole record stream (bounded, never panics).
pub fn read_records(mut input: &[u8]) -> Result<Vec<Record>, FrameError> {
    let total = input.len();
    let mut out = Vec::new();
    while !input.is_empty() {
        let offset = total - input.len();
        let err = |problem| FrameError { offset, problem };
        if input.len() < 9 {
            return Err(err("a record header is cut short"));
        }
        let (head, rest) = input.split_at(9);
        let file = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = head[4];
        let len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
        if rest.len() < len {
            return Err(err("a record's bytes are cut short"));
        }
        let (body, rest) = rest.split_at(len);
        out.push(match kind {
            0 if len <= MAX_DELTA => Record::Delta {
                file,
                delta: body.to_vec(),
            },
            1 if (32..=32 + MAX_FRAME).contains(&len) => {
                let mut id = [0u8; 32];
                id.copy_from_slice(&body[..32]);
                Record::Chunk {
                    file,
                    id: ChunkId(id),
                    compressed: body[32..].to_vec(),
                }
            }
            0 | 1 => return Err(err("a record's length is out of bounds")),
            _ => return Err(err("an unknown record kind")),
        });
        input = rest;
    }
    Ok(out)
}

/// Frames parsed as the bytes of a stream arrive: each complete frame is
/// handed out at once (so a receiver can check and store it before the
/// rest arrives).
#[derive(Debug, Default)]
pub struct FrameBuffer {
    buf: Vec<u8>,
    consumed: usize,
}

impl FrameBuffer {
    /// Add bytes; the frames now complete.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(ChunkId, Vec<u8>)>, FrameError> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        let mut at = 0;
        while self.buf.len() - at >= 36 {
            let head = &self.buf[at..at + 36];
            let mut len = [0u8; 4];
            len.copy_from_slice(&head[32..]);
            let len = u32::from_be_bytes(len) as usize;
            if len > MAX_FRAME {
                return Err(FrameError {
                    offset: self.consumed + at,
                    problem: "a frame is larger than a chunk can be",
                });
            }
            if self.buf.len() - at - 36 < len {
                break;
            }
            let mut id = [0u8; 32];
            id.copy_from_slice(&head[..32]);
            out.push((ChunkId(id), self.buf[at + 36..at + 36 + len].to_vec()));
            at += 36 + len;
        }
        self.buf.drain(..at);
        self.consumed += at;
        Ok(out)
    }

    /// The stream ended: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError {
                offset: self.consumed,
                problem: "the stream ends inside a frame",
            })
        }
    }
}

/// The `Content-Encoding` of a compressed request body.
pub const BODY_ENCODING: &str = "zstd";
/// Request bodies are compressed with a window of at most 2^20 bytes
/// (1 MiB), and the gateway decodes no frame that asks for a larger one: a
/// body cannot make it hold more than that for the window.
pub const BODY_WINDOW_LOG: u32 = 20;
/// Bodies shorter than this go as they are.
const BODY_MIN: usize = 1024;

/// A request body that cannot be decoded.
#[derive(Debug, thiserror::Error)]
#[error("compressed request body: {0}")]
pub struct BodyError(pub String);

/// `body` compressed for a request (`Content-Encoding: zstd`), or `None`
/// when it is short or would not shrink. A device's requests name chunk
/// ids in hex and often the same id twice (a file's chunks and those it
/// lacks): compressed, they cost about half.
pub fn encode_body(body: &[u8]) -> Option<Vec<u8>> {
    if body.len() < BODY_MIN {
        return None;
    }
    let mut c = zstd::bulk::Compressor::new(3).ok()?;
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(BODY_WINDOW_LOG))
        .ok()?;
    c.compress(body).ok().filter(|z| z.len() < body.len())
}

/// A compressed request body decoded: exactly one ordinary zstd frame (not
/// several, not a skippable one: a body of a million empty frames decodes
/// to nothing yet costs a second of CPU), no window above
/// [`BODY_WINDOW_LOG`], no more than `max` bytes out.
pub fn decode_body(data: &[u8], max: usize) -> Result<Vec<u8>, BodyError> {
    use std::io::Read as _;
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    if !data.starts_with(&MAGIC) {
        return Err(BodyError("not a zstd frame".to_owned()));
    }
    match zstd::zstd_safe::find_frame_compressed_size(data) {
        Ok(n) if n == data.len() => {}
        Ok(_) => return Err(BodyError("more than one frame".to_owned())),
        Err(_) => return Err(BodyError("a broken frame".to_owned())),
    }
    let mut d = zstd::stream::read::Decoder::new(data).map_err(|e| BodyError(e.to_string()))?;
    d.window_log_max(BODY_WINDOW_LOG)
        .map_err(|e| BodyError(e.to_string()))?;
    let mut out = Vec::new();
    d.take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError(e.to_string()))?;
    if out.len() > max {
        return Err(BodyError(format!("more than {max} bytes decoded")));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_compress_and_decode_within_their_bounds() {
        let ids: Vec<String> = (0..200u32)
            .map(|i| hex::encode(ChunkId::of(&i.to_le_bytes()).0))
            .collect();
        let body = serde_json::to_vec(&serde_json::json!({"to": ids, "missing": ids})).unwrap();
        let z = encode_body(&body).unwrap();
        assert!(z.len() * 3 < body.len(), "{} of {}", z.len(), body.len());
        assert_eq!(decode_body(&z, body.len()).unwrap(), body);
        // Short bodies go as they are.
        assert!(encode_body(b"{}").is_none());
        // Over the bound: refused, not decoded whole.
        let e = decode_body(&z, body.len() - 1).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        // Not zstd: refused.
        assert!(decode_body(b"{\"ids\": []}", 1 << 20).is_err());
        // The attacker's review: many frames (here a million empty ones,
        // 9 MB that decode to nothing) or a skippable frame before a real
        // one: refused before decoding.
        let empty = zstd::bulk::compress(b"", 1).unwrap();
        let many: Vec<u8> = empty
            .iter()
            .copied()
            .cycle()
            .take(empty.len() * 1_000_000)
            .collect();
        let e = decode_body(&many, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("more than one frame"), "{e}");
        let mut skippable = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
        skippable.extend_from_slice(&z);
        assert!(decode_body(&skippable, body.len()).is_err());
        let mut two = z.clone();
        two.extend_from_slice(&z);
        let e = decode_body(&two, 2 * body.len()).unwrap_err().to_string();
        assert!(e.contains("more than one frame"), "{e}");
        // A frame that asks for an 8 MiB window: refused before any of it.
        let mut x = 7u64;
        let mut big: Vec<u8> = (0..4 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        big.extend_from_within(..1 << 20);
        let mut c = zstd::bulk::Compressor::new(3).unwrap();
        c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(23))
            .unwrap();
        let wide = c.compress(&big).unwrap();
        let e = decode_body(&wide, 8 << 20).unwrap_err().to_string();
        assert!(e.contains("compressed request body"), "{e}");
    }

    #[test]
    fn frames_round_trip_and_every_truncation_fails() {
        let mut buf = Vec::new();
        write_frame(&mut buf, ChunkId::of(b"a"), b"xyz");
        write_frame(&mut buf, ChunkId::of(b"b"), b"");
        let f = read_frames(&buf).unwrap();
        assert_eq!(
            f,
            vec![
                (ChunkId::of(b"a"), &b"xyz"[..]),
                (ChunkId::of(b"b"), &b""[..])
            ]
        );
        for cut in 1..buf.len() {
            if cut == 39 {
                continue; // a whole first frame
            }
            assert!(read_frames(&buf[..cut]).is_err(), "cut at {cut}");
        }
        // Fed a byte at a time, the same frames come out.
        let mut fb = FrameBuffer::default();
        let mut got = Vec::new();
        for b in &buf {
            got.extend(fb.push(std::slice::from_ref(b)).unwrap());
        }
        fb.finish().unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], (ChunkId::of(b"a"), b"xyz".to_vec()));
        let mut fb = FrameBuffer::default();
        fb.push(&buf[..20]).unwrap();
        assert!(fb.finish().is_err());
        // Records.
        let mut rec = Vec::new();
        let a = Record::Delta {
            file: 3,
            delta: b"dd".to_vec(),
        };
        let b = Record::Chunk {
            file: 4,
            id: ChunkId::of(b"x"),
            compressed: b"cc".to_vec(),
        };
        write_record(&mut rec, &a);
        write_record(&mut rec, &b);
        assert_eq!(read_records(&rec).unwrap(), vec![a, b]);
        for cut in 1..rec.len() {
            if cut != 11 {
                assert!(read_records(&rec[..cut]).is_err(), "cut at {cut}");
            }
        }
        let mut bad_kind = rec.clone();
        bad_kind[4] = 7;
        assert!(read_records(&bad_kind).is_err());
        let mut huge = ChunkId::of(b"c").0.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(read_frames(&huge).is_err());
    }
}
