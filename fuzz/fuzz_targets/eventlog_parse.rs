//! Fuzz the event-log parser: any input either fails cleanly or parses into a
//! log that replays, decodes, and writes back to the bytes it came from.
#![no_main]

use attest::eventlog::{parse, replay, ReplayOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = parse(data) {
        let _ = replay(&log, ReplayOptions { add_missing_exit_boot_services: true });
        for e in &log.events {
            let _ = e.decoded().to_string();
        }
        let written = log.to_bytes();
        assert_eq!(written[..], data[..written.len()]);
        assert_eq!(written.len() + log.trailing_padding, data.len());
    }
});
