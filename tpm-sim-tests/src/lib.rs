//! swtpm harness (being written).
