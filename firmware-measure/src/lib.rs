//! Boot-chain measurement (being written).
