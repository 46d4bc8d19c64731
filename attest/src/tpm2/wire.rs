//! A bounded big-endian reader for TPM 2.0 structures (TPM 2.0 Part 2 is
//! big-endian on the wire, unlike the event log).
//!
//! Every read checks the length first; sized buffers (`TPM2B_*`) are checked
//! against their structure's maximum before anything is taken, so a hostile
//! size field can neither over-read nor make the parser allocate.

use super::WireError;

/// Cursor over a byte slice.
#[derive(Debug, Clone)]
pub(crate) struct Wire<'a> {
    buf: &'a [u8],
    pos: usize,
    /// What is being parsed, for errors ("TPMS_ATTEST").
    structure: &'static str,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(buf: &'a [u8], structure: &'static str) -> Self {
        Wire {
            buf,
            pos: 0,
            structure,
        }
    }

    pub(crate) fn offset(&self) -> usize {
        self.pos
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        if n > self.remaining() {
            return Err(WireError::Truncated {
                structure: self.structure,
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A `TPM2B_*`: a u16 size, at most `max`, then that many bytes.
    pub(crate) fn sized(&mut self, max: usize, field: &'static str) -> Result<&'a [u8], WireError> {
        let at = self.pos;
        let n = usize::from(self.u16(field)?);
        if n > max {
            return Err(WireError::Invalid {
                structure: self.structure,
                field,
                offset: at,
                problem: format!("size {n} exceeds the maximum of {max}"),
            });
        }
        self.take(n, field)
    }

    /// An error about the field just read at `offset`.
    pub(crate) fn invalid(&self, field: &'static str, offset: usize, problem: String) -> WireError {
        WireError::Invalid {
            structure: self.structure,
            field,
            offset,
            problem,
        }
    }

    /// Fail if bytes are left over.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.remaining() == 0 {
            Ok(())
        } else {
            Err(WireError::Trailing {
                structure: self.structure,
                offset: self.pos,
                extra: self.remaining(),
            })
        }
    }
}
