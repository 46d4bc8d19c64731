//! Chunking and hashing throughput: FastCDC boundaries plus the SHA-256 id
//! of every chunk, over 64 MiB of incompressible bytes in memory (no
//! compression, no I/O). Run: `cargo bench -p sync --bench chunking`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn bench(c: &mut Criterion) {
    let mut x = 12345u64;
    let data: Vec<u8> = (0..64 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("fastcdc_and_sha256", |b| {
        b.iter(|| {
            let mut n = 0u64;
            sync::chunk::chunk_stream(&data[..], |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap();
            n
        })
    });
    g.bench_function("sha256_only", |b| b.iter(|| sync::ChunkId::of(&data)));
    // The cut points alone (FastCDC over the slice, no hashing, no copies):
    // with sha256_only, the two costs that chunking and hashing add up to.
    g.bench_function("fastcdc_only", |b| {
        b.iter(|| {
            fastcdc::v2020::FastCDC::new(
                &data,
                sync::chunk::MIN_CHUNK,
                sync::chunk::AVG_CHUNK,
                sync::chunk::MAX_CHUNK,
            )
            .count()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
