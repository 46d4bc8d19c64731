//! Parse + replay speed on the largest real firmware log in the fixtures,
//! and on a synthetic 10,000-event log (to show it scales linearly).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use attest::eventlog::{digests_of, parse, replay, EventLog, EventType, ReplayOptions};
use attest::HashAlg;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};

fn fixture(name: &str) -> Vec<u8> {
    let dir = tpm_sim_tests::fixtures_dir();
    std::fs::read(dir.join(name)).expect("fixture")
}

fn synthetic(events: usize) -> Vec<u8> {
    let banks = [HashAlg::Sha1, HashAlg::Sha256];
    let mut log = EventLog::new_crypto_agile(&banks);
    for i in 0..events {
        let data = format!("event {i}").into_bytes();
        log.push(
            (i % 16) as u32,
            EventType::EV_IPL,
            digests_of(&data, &banks),
            data,
        );
    }
    log.to_bytes()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("eventlog");
    for (name, bytes) in [
        (
            "legacy-sha1-option-rom (72 KB, 61 events)",
            fixture("legacy-sha1-option-rom.bin"),
        ),
        (
            "hygon-hcrtm 3 banks (54 KB, 204 events)",
            fixture("hygon-hcrtm-sha1-sha256-sm3.bin"),
        ),
        ("synthetic 10k events", synthetic(10_000)),
    ] {
        g.throughput(Throughput::Bytes(bytes.len() as u64));
        g.bench_function(format!("parse+replay {name}"), |b| {
            b.iter(|| {
                let log = parse(black_box(&bytes)).unwrap();
                replay(&log, ReplayOptions::default())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
