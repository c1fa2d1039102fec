//! Codec throughput per record: encode and decode one MetricReport (large: arrays, a map,
//! nested records) and one Heartbeat (small), each with the codec's path (`serde_avro_fast`
//! straight between bytes and the record type) and, in the same run, the apache-avro path
//! it replaced (`apache_avro::write_avro_datum_ref`; `Codec::decode_resolving`, through a
//! generic `Value`).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_schemas::codec::{self, Record};
use fleet_schemas::fixtures;
use std::hint::black_box;

const T: i64 = 1_763_900_000_000_000;

fn per_record<R: Record>(c: &mut Criterion, name: &str, r: &R) {
    let codec = R::codec();
    // The plain wire (single-object), as a role without a schema registry writes.
    let wire = codec::Wire::plain();
    let bytes = wire.encode(r).expect("encode");
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode", |b| {
        b.iter(|| wire.encode(black_box(r)).expect("encode"))
    });
    g.bench_function("encode_apache_avro", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(&bytes[..codec::HEADER_LEN]);
            apache_avro::write_avro_datum_ref(codec.schema(), black_box(r), &mut out)
                .expect("encode");
            out
        })
    });
    g.bench_function("decode", |b| {
        b.iter(|| wire.decode_known::<R>(black_box(&bytes)).expect("decode"))
    });
    g.bench_function("decode_apache_avro", |b| {
        b.iter(|| {
            codec
                .decode_resolving(None, black_box(&bytes))
                .expect("decode")
        })
    });
    g.finish();
}

fn bench(c: &mut Criterion) {
    per_record(
        c,
        "metric_report",
        &fixtures::metric_report("tenant", "agent-1", T),
    );
    per_record(
        c,
        "heartbeat",
        &fixtures::heartbeat("tenant", "agent-1", T, 42),
    );
}

criterion_group!(benches, bench);
criterion_main!(benches);
