//! Parse throughput per format, in samples per second (criterion's `thrpt`, elem/s): one
//! request of 2,000 samples (Prometheus' default `max_samples_per_send`), each series a
//! node_exporter-like metric with four labels. No thresholds: figures go to
//! `docs/BENCHMARKS.md` with the command (`cargo bench -p fleet-protocols --bench parse`).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use fleet_protocols::influx::{self, Precision};
use fleet_protocols::otlp::{self, Encoding};
use fleet_protocols::remote_write::{self, v1, Version};
use fleet_protocols::Limits;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use prost::Message;

const SAMPLES: usize = 2_000;
const T_MS: i64 = 1_765_000_000_000;

/// (metric, instance, cpu, mode) of sample `i`.
fn series(i: usize) -> (String, String, String, &'static str) {
    let modes = ["idle", "user", "system", "iowait"];
    (
        format!("node_cpu_seconds_{}", i % 10),
        format!("web-{}:9100", i / 40),
        (i % 8).to_string(),
        modes[(i / 10) % 4],
    )
}

fn remote_write_body() -> Vec<u8> {
    let label = |name: &str, value: &str| v1::Label {
        name: name.into(),
        value: value.into(),
    };
    let timeseries = (0..SAMPLES)
        .map(|i| {
            let (metric, instance, cpu, mode) = series(i);
            v1::TimeSeries {
                labels: vec![
                    label("__name__", &metric),
                    label("cpu", &cpu),
                    label("instance", &instance),
                    label("job", "node"),
                    label("mode", mode),
                ],
                samples: vec![v1::Sample {
                    value: i as f64,
                    timestamp: T_MS,
                }],
            }
        })
        .collect();
    snap::raw::Encoder::new()
        .compress_vec(&v1::WriteRequest { timeseries }.encode_to_vec())
        .expect("compress")
}

fn otlp_request() -> ExportMetricsServiceRequest {
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    };
    let metrics = (0..SAMPLES)
        .map(|i| {
            let (metric, instance, cpu, mode) = series(i);
            Metric {
                name: metric,
                data: Some(metric::Data::Gauge(Gauge {
                    data_points: vec![NumberDataPoint {
                        attributes: vec![kv("cpu", &cpu), kv("host", &instance), kv("mode", mode)],
                        time_unix_nano: (T_MS as u64) * 1_000_000,
                        value: Some(number_data_point::Value::AsDouble(i as f64)),
                        ..Default::default()
                    }],
                })),
                ..Default::default()
            }
        })
        .collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                attributes: vec![kv("service.name", "node")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn influx_body() -> Vec<u8> {
    let mut out = String::new();
    for i in 0..SAMPLES {
        let (metric, instance, cpu, mode) = series(i);
        out.push_str(&format!(
            "{metric},cpu={cpu},host={instance},mode={mode} value={i} {}\n",
            T_MS * 1_000_000
        ));
    }
    out.into_bytes()
}

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Elements(SAMPLES as u64));

    let rw = remote_write_body();
    let n = remote_write::parse(&rw, Version::V1, &limits)
        .expect("valid")
        .samples
        .len();
    assert_eq!(n, SAMPLES);
    g.bench_function("remote_write_v1", |b| {
        b.iter(|| remote_write::parse(black_box(&rw), Version::V1, &limits).expect("valid"))
    });

    let req = otlp_request();
    let pb = req.encode_to_vec();
    let json = serde_json::to_vec(&req).expect("json");
    for (name, body, encoding) in [
        ("otlp_protobuf", &pb, Encoding::Protobuf),
        ("otlp_json", &json, Encoding::Json),
    ] {
        let n = otlp::parse(body, encoding, &limits)
            .expect("valid")
            .samples
            .len();
        assert_eq!(n, SAMPLES);
        g.bench_function(name, |b| {
            b.iter(|| otlp::parse(black_box(body), encoding, &limits).expect("valid"))
        });
    }

    let lp = influx_body();
    let n = influx::parse(&lp, Precision::Nanoseconds, 0, &limits)
        .expect("valid")
        .samples
        .len();
    assert_eq!(n, SAMPLES);
    g.bench_function("influx", |b| {
        b.iter(|| influx::parse(black_box(&lp), Precision::Nanoseconds, 0, &limits).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
