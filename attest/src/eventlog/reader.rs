//! A bounded little-endian reader over an event log's bytes.
//!
//! Every read checks the length first and reports the byte offset and what
//! was expected when the input runs short. It never reads past its slice and
//! never allocates: callers get sub-slices of the input.

use super::error::ParseError;

/// Cursor over a byte slice that knows its absolute offset in the log.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: usize,
}

impl<'a> Reader<'a> {
    /// A reader over `buf`, whose first byte is at absolute offset `base`.
    pub(crate) fn new(buf: &'a [u8], base: usize) -> Self {
        Reader { buf, pos: 0, base }
    }

    /// Absolute offset of the next byte.
    pub(crate) fn offset(&self) -> usize {
        self.base + self.pos
    }

    /// Bytes left.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The bytes left, without consuming them.
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Take `n` bytes, or fail naming `what`.
    pub(crate) fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ParseError> {
        if n > self.remaining() {
            return Err(ParseError::Truncated {
                offset: self.offset(),
                expected: what,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Take a fixed-size array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], ParseError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ParseError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ParseError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ParseError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(crate) fn u64(&mut self, what: &'static str) -> Result<u64, ParseError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Take a length-prefixed (u32) byte string, the length checked against
    /// what is left before anything is taken.
    pub(crate) fn sized_u32(&mut self, what: &'static str) -> Result<&'a [u8], ParseError> {
        let at = self.offset();
        let n = self.u32(what)?;
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        if n > self.remaining() {
            return Err(ParseError::Truncated {
                offset: at,
                expected: what,
                needed: n,
                available: self.remaining(),
            });
        }
        self.take(n, what)
    }
}
