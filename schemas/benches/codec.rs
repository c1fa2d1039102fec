//! Codec throughput: encode and decode one MetricReport.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_schemas::{codec, fixtures, MetricReport};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let r = fixtures::metric_report("tenant", "agent-1", 1_763_900_000_000_000);
    let bytes = codec::encode(&r).expect("encode");
    let mut g = c.benchmark_group("metric_report");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| codec::encode(black_box(&r)).expect("encode"))
    });
    g.bench_function("decode", |b| {
        b.iter(|| codec::decode::<MetricReport>(black_box(&bytes)).expect("decode"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
