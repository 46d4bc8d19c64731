//! The offline sync bundle: a device's pending changes as one signed file
//! (an eBag on a USB stick), written by the device and checked in by the
//! gateway as if it came online.
//!
//! Layout: the magic line `SATCHEL-SYNC-BUNDLE-1\n`; a big-endian u32 and
//! that many bytes of JSON [`Header`]; a big-endian u64 and that many bytes
//! of chunk frames (`sync::wire`); a big-endian u32 and an ECDSA P-256
//! signature (ASN.1 DER, SHA-256) by the device key over everything before
//! it. [`parse`] is bounded and never panics; it does not check the
//! signature (the gateway does, with the certificate's key).

use serde::{Deserialize, Serialize};

use crate::sync::CheckIn;

/// The first bytes of every bundle.
pub const MAGIC: &[u8] = b"SATCHEL-SYNC-BUNDLE-1\n";
pub use crate::limits::MAX_BUNDLE;
/// Largest header.
const MAX_HEADER: usize = 256 << 20;

/// The header.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The device.
    pub device_id: String,
    /// The image.
    pub image: String,
    /// When it was made (ms since the epoch).
    pub created: i64,
    /// The device certificate (PEM).
    pub certificate: String,
    /// One per changed layer.
    pub checkins: Vec<CheckIn>,
}

/// A bundle that does not parse or verify.
#[derive(Debug, thiserror::Error)]
#[error("sync bundle: {0}")]
pub struct BundleError(pub String);

fn err(m: impl Into<String>) -> BundleError {
    BundleError(m.into())
}

/// A parsed bundle (signature not yet checked).
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The header.
    pub header: Header,
    /// The chunk frames.
    pub frames: &'a [u8],
    /// The signed bytes.
    pub signed: &'a [u8],
    /// The signature.
    pub signature: &'a [u8],
}

/// Split a bundle into its parts (bounded; never panics).
pub fn parse(bytes: &[u8]) -> Result<Parsed<'_>, BundleError> {
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| err("not a sync bundle (bad magic)"))?;
    let take = |rest: &[u8], n: usize| -> Result<(usize, usize), BundleError> {
        if rest.len() < n {
            return Err(err("cut short"));
        }
        let mut v = 0usize;
        for b in &rest[..n] {
            v = v
                .checked_mul(256)
                .ok_or_else(|| err("a length overflows"))?
                + usize::from(*b);
        }
        Ok((v, n))
    };
    let (hlen, n) = take(rest, 4)?;
    if hlen > MAX_HEADER || rest.len() < n + hlen {
        return Err(err("the header is cut short or too large"));
    }
    let header: Header =
        serde_json::from_slice(&rest[n..n + hlen]).map_err(|e| err(format!("header: {e}")))?;
    let rest2 = &rest[n + hlen..];
    let (flen, n2) = take(rest2, 8)?;
    if rest2.len() < n2 || rest2.len() - n2 < flen {
        return Err(err("the chunks are cut short"));
    }
    let frames = &rest2[n2..n2 + flen];
    let rest3 = &rest2[n2 + flen..];
    let (slen, n3) = take(rest3, 4)?;
    if rest3.len() != n3 + slen || slen > 256 {
        return Err(err(
            "the signature is cut short or the file has trailing bytes",
        ));
    }
    let signed_len = bytes.len() - rest3.len();
    Ok(Parsed {
        header,
        frames,
        signed: &bytes[..signed_len],
        signature: &rest3[n3..],
    })
}
