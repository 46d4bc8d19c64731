//! Merkle speed at one million leaves: the tree head through the
//! incremental compact range (what `verify` does over a whole log),
//! inclusion and consistency proof verification, and proof generation from
//! the full list of leaf hashes (what `prove` does).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use audit::merkle::{
    consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency, verify_inclusion,
    CompactRange, Hash,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const SIZE: u64 = 1_000_000;

fn leaves(n: u64) -> Vec<Hash> {
    (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
}

fn tree_head(c: &mut Criterion) {
    let leaves = leaves(SIZE);
    let mut g = c.benchmark_group("tree head, 1M leaves");
    g.sample_size(10);
    g.throughput(Throughput::Elements(SIZE));
    g.bench_function("compact range push + root", |b| {
        b.iter(|| {
            let mut range = CompactRange::new();
            for leaf in &leaves {
                range.push(*leaf);
            }
            range.root()
        })
    });
    g.bench_function("leaf hash + compact range", |b| {
        b.iter(|| {
            let mut range = CompactRange::new();
            for i in 0..SIZE {
                range.push(leaf_hash(&i.to_be_bytes()));
            }
            range.root()
        })
    });
    g.finish();
}

fn verification(c: &mut Criterion) {
    let leaves = leaves(SIZE);
    let head = root(&leaves);
    let index = 765_432;
    let path = inclusion_proof(&leaves, index, SIZE).unwrap();
    let old = 500_001;
    let old_head = root(&leaves[..old as usize]);
    let consistency = consistency_proof(&leaves, old, SIZE).unwrap();
    let leaf = leaves[index as usize];
    let mut g = c.benchmark_group("verify, 1M leaves");
    g.bench_function("inclusion", |b| {
        b.iter(|| verify_inclusion(black_box(&leaf), index, SIZE, black_box(&path), &head))
    });
    g.bench_function("consistency", |b| {
        b.iter(|| verify_consistency(old, SIZE, &old_head, &head, black_box(&consistency)))
    });
    g.finish();
}

fn generation(c: &mut Criterion) {
    let leaves = leaves(SIZE);
    let mut g = c.benchmark_group("prove from leaf hashes, 1M leaves");
    g.sample_size(10);
    g.bench_function("inclusion", |b| {
        b.iter(|| inclusion_proof(black_box(&leaves), 765_432, SIZE).unwrap())
    });
    g.bench_function("consistency", |b| {
        b.iter(|| consistency_proof(black_box(&leaves), 500_001, SIZE).unwrap())
    });
    g.finish();
}

criterion_group!(benches, tree_head, verification, generation);
criterion_main!(benches);
