//! Chunking and hashing throughput: the cut points plus the SHA-256 id of
//! every chunk, over 64 MiB of incompressible bytes in memory (no
//! compression, no I/O), against the `fastcdc` crate's stream chunker doing
//! the same cuts. Run: `cargo bench -p sync --bench chunking`.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sync::chunk::{AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};

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
    // What Satchel does to every file: cut and hash, from a reader.
    g.bench_function("satchel_stream_and_sha256", |b| {
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
    // The same cuts and hashes through the fastcdc crate's own stream
    // chunker (a copy of every chunk into a new vector).
    g.bench_function("fastcdc_stream_and_sha256", |b| {
        b.iter(|| {
            let mut n = 0u64;
            for c in fastcdc::v2020::StreamCDC::new(&data[..], MIN_CHUNK, AVG_CHUNK, MAX_CHUNK) {
                let c = c.unwrap();
                std::hint::black_box(sync::ChunkId::of(&c.data));
                n += 1;
            }
            n
        })
    });
    // The two costs that chunking and hashing add up to, alone.
    g.bench_function("sha256_only", |b| b.iter(|| sync::ChunkId::of(&data)));
    g.bench_function("satchel_cuts_only", |b| {
        b.iter(|| {
            let (mut rest, mut n) = (&data[..], 0u64);
            while !rest.is_empty() {
                rest = &rest[sync::chunk::first_cut(rest)..];
                n += 1;
            }
            n
        })
    });
    g.bench_function("fastcdc_cuts_only", |b| {
        b.iter(|| fastcdc::v2020::FastCDC::new(&data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
