//! Why an event log could not be parsed. Every variant names the byte
//! offset where the problem starts and, where there is one, the event index.

/// An event log that is not a well-formed TCG PC Client log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input has no bytes at all.
    #[error("event log is empty")]
    Empty,
    /// The input ended (or a size field pointed) past the end of the data.
    #[error("truncated at byte offset {offset}: expected {expected} ({needed} bytes), only {available} left")]
    Truncated {
        /// Where the short read starts.
        offset: usize,
        /// The structure that was being read.
        expected: &'static str,
        /// Bytes that structure needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A PCR index outside 0..=23.
    #[error("at byte offset {offset}: event {index}: PCR index {pcr} is out of range (0-23); is this a TCG firmware event log?")]
    PcrIndex {
        /// Offset of the event.
        offset: usize,
        /// Event number (0 = first event of the file).
        index: usize,
        /// The index found.
        pcr: u32,
    },
    /// The Spec ID Event03 header is malformed.
    #[error("at byte offset {offset}: Spec ID Event03 header: {reason}")]
    SpecId {
        /// Offset of the offending field.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// A crypto-agile event's digest list does not fit the header.
    #[error("at byte offset {offset}: event {index}: {count} digests, but the Spec ID header declares {declared} banks")]
    DigestCount {
        /// Offset of the count field.
        offset: usize,
        /// Event number.
        index: usize,
        /// Digests the event claims.
        count: u32,
        /// Banks the header declares.
        declared: usize,
    },
    /// A crypto-agile event carries a digest of an algorithm the header did not declare.
    #[error("at byte offset {offset}: event {index}: digest algorithm 0x{alg:04x} is not declared in the Spec ID header")]
    UndeclaredAlg {
        /// Offset of the algorithm id.
        offset: usize,
        /// Event number.
        index: usize,
        /// The algorithm id found.
        alg: u16,
    },
    /// A crypto-agile event carries two digests of the same algorithm.
    #[error("at byte offset {offset}: event {index}: digest algorithm 0x{alg:04x} appears twice")]
    DuplicateAlg {
        /// Offset of the second algorithm id.
        offset: usize,
        /// Event number.
        index: usize,
        /// The algorithm id.
        alg: u16,
    },
}
