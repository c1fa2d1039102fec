//! Encoding choices measured on the same data: bytes per sample of our block encoding and
//! the marginal cost of each series (diagnostic, while tuning).
//!
//! usage: cargo bench -p fleet-timeseries --bench codecs
//! Environment: BENCH_AGENTS (default 50), BENCH_HOURS (default 2).

#![allow(clippy::print_stdout)] // a bench prints its figures

mod support;

use std::collections::BTreeMap;
use std::time::Instant;

use fleet_timeseries::{chunk, rollup, Block};
use support::{blocks, env_usize, Kind, Shape, HOUR_MICROS};

fn main() {
    let shape = Shape {
        agents: env_usize("BENCH_AGENTS", 50),
        hours: env_usize("BENCH_HOURS", 2),
        interval_micros: 10_000_000,
        start_micros: 1_790_000_000_000_000 / HOUR_MICROS * HOUR_MICROS,
    };
    for kind in [Kind::Realistic, Kind::Constant] {
        let (blocks, samples) = blocks(kind, shape);
        println!(
            "== {} : {} blocks, {samples} samples",
            kind.name(),
            blocks.len()
        );
        let t = Instant::now();
        let encoded: Vec<Vec<u8>> = blocks.iter().map(chunk::encode).collect();
        let enc = t.elapsed();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        println!(
            "ours: {:.3} bytes/sample, encode {:.0} ns/sample",
            bytes as f64 / samples as f64,
            enc.as_nanos() as f64 / samples as f64
        );
        let mut roll = 0usize;
        for b in &blocks {
            for w in rollup::DEFAULT_WIDTHS_MICROS {
                roll += rollup::encode(&rollup::compute(b, w).expect("rollup")).len();
            }
        }
        println!(
            "rollups 5m+1h per block: {:.3} bytes/sample",
            roll as f64 / samples as f64
        );
        // Marginal cost of each series, after zstd, over the first 40 blocks.
        let mut marginal: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        let mut ts_cost = 0usize;
        let mut ts_n = 0usize;
        for b in blocks.iter().take(40) {
            let full = chunk::encode(b).len();
            for s in b.series() {
                let rest: Vec<_> = b
                    .series()
                    .iter()
                    .filter(|o| o.name() != s.name())
                    .cloned()
                    .collect();
                let without = Block::new(b.timestamps().to_vec(), rest).expect("block");
                let e = marginal
                    .entry(s.name().split(':').next().unwrap_or("").to_owned())
                    .or_default();
                e.0 += full.saturating_sub(chunk::encode(&without).len());
                e.1 += s.len();
            }
            let only = Block::new(
                b.timestamps().to_vec(),
                vec![fleet_timeseries::Series::new(
                    "x",
                    vec![Some(0.0); b.timestamps().len()],
                )],
            )
            .expect("block");
            ts_cost += chunk::encode(&only).len();
            ts_n += b.sample_count();
        }
        println!(
            "  timestamps (+ one constant series): {:.3} bytes/sample",
            ts_cost as f64 / ts_n as f64
        );
        for (name, (bytes, n)) in marginal {
            println!("  {name:<20} {:.3} bytes/value", bytes as f64 / n as f64);
        }
    }
}
