//! Block and rollup throughput on one core, per sample: encode, decode, header, merge,
//! rollups. The blocks are 20 agent-hours of the realistic fleet (10 s interval, ~7,000
//! samples each) and of the constant fixture.
//!
//! usage: cargo bench -p fleet-timeseries --bench chunk

mod support;

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_timeseries::{chunk, rollup, Block};
use support::{blocks, Kind, Shape, HOUR_MICROS};

fn bench(c: &mut Criterion) {
    let shape = Shape {
        agents: 20,
        hours: 1,
        interval_micros: 10_000_000,
        start_micros: 1_790_000_000_000_000 / HOUR_MICROS * HOUR_MICROS,
    };
    for (kind, label) in [(Kind::Realistic, "realistic"), (Kind::Constant, "constant")] {
        let (blocks, samples): (Vec<Block>, usize) = blocks(kind, shape);
        let encoded: Vec<Vec<u8>> = blocks.iter().map(chunk::encode).collect();
        let mut g = c.benchmark_group(format!("block_{label}"));
        g.throughput(Throughput::Elements(samples as u64));
        g.bench_function("encode", |b| {
            b.iter(|| {
                for block in &blocks {
                    black_box(chunk::encode(black_box(block)));
                }
            })
        });
        g.bench_function("decode", |b| {
            b.iter(|| {
                for e in &encoded {
                    black_box(chunk::decode(black_box(e)).expect("decodes"));
                }
            })
        });
        g.bench_function("header", |b| {
            b.iter(|| {
                for e in &encoded {
                    black_box(chunk::header(black_box(e)).expect("header"));
                }
            })
        });
        g.bench_function("rollups_5m_1h_compute_and_encode", |b| {
            b.iter(|| {
                for block in &blocks {
                    for w in rollup::DEFAULT_WIDTHS_MICROS {
                        let set = rollup::compute(black_box(block), w).expect("rollup");
                        black_box(rollup::encode(&set));
                    }
                }
            })
        });
        // Late data: one more report folded into each block.
        let late: Vec<Block> = blocks
            .iter()
            .map(|b| {
                let t = b.timestamps()[0] + 5_000_000;
                Block::from_samples(b.series().iter().map(|s| (t, s.name().to_owned(), 1.0)))
                    .expect("block")
            })
            .collect();
        g.bench_function("merge_late_report", |b| {
            b.iter(|| {
                for (old, new) in blocks.iter().zip(&late) {
                    black_box(chunk::merge(black_box(old), black_box(new)).expect("merge"));
                }
            })
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
