//! Shared helpers for the event-log tests: where the real firmware logs live.

pub(crate) use tpm_sim_tests::fixtures_dir;

/// The bytes of one fixture.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = fixtures_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "reading fixture {}: {e} (set SATCHEL_FIXTURES to the event-log fixtures)",
            path.display()
        )
    })
}

/// Every firmware-log fixture (`*.bin` that is not an IMA log or junk).
pub(crate) fn firmware_logs() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures dir")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".bin") && !n.starts_with("ima-") && !n.starts_with("malformed"))
        .collect();
    names.sort();
    names
}
