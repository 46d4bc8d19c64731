//! The limits both sides hold to: the gateway refuses a request over them,
//! the device never sends one.

/// Largest request body the gateway reads, in bytes.
pub const MAX_BODY: usize = 8 << 20;
/// Most chunk ids in one `chunks` request.
pub const MAX_FETCH: usize = 256;
/// Most files in one `deltas` request.
pub const MAX_DELTA_FILES: usize = 64;
/// Most chunks of one file (old or new) a delta is made for (128 MiB).
pub const MAX_DELTA_CHUNKS: usize = 2048;
/// Most chunk ids (old and new, over every file) one `deltas` request
/// names: what the gateway reads to answer it is bounded (256 MiB).
pub const MAX_DELTA_TOTAL: usize = 4096;
/// Most chunk ids in one `missing` request.
pub const MAX_ASK: usize = 4096;
/// Most layer digests in one `offer` request.
pub const MAX_OFFER_DIGESTS: usize = 20;
/// Most entries in one spool delivery.
pub const MAX_SPOOL_BATCH: usize = 1000;
/// Largest offline sync bundle read, in bytes.
pub const MAX_BUNDLE: u64 = 1 << 30;
