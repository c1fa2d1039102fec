use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{
    summary_data_point::ValueAtQuantile, Gauge, Histogram, HistogramDataPoint, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::*;

const T: u64 = 1_765_000_000_123_456_789;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn number_point(attrs: Vec<KeyValue>, v: f64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: attrs,
        time_unix_nano: T,
        value: Some(number_data_point::Value::AsDouble(v)),
        ..Default::default()
    }
}

fn request(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", "api"),
                    kv("service.namespace", "shop"),
                    kv("service.instance.id", "pod-1"),
                    kv("host.name", "web-1"),
                ],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: "meter".into(),
                    version: "1.0".into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn gauge(name: &str, unit: &str, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    }
}

fn sum(name: &str, temporality: i32, monotonic: bool, points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points: points,
            aggregation_temporality: temporality,
            is_monotonic: monotonic,
        })),
        ..Default::default()
    }
}

fn labels(s: &fleet_schemas::LabeledSample) -> Vec<(String, String)> {
    s.labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

fn both(req: &ExportMetricsServiceRequest) -> Parsed {
    let pb = parse(&req.encode_to_vec(), Encoding::Protobuf, &Limits::default()).expect("protobuf");
    let json = serde_json::to_vec(req).expect("json");
    let js = parse(&json, Encoding::Json, &Limits::default()).expect("json");
    assert_eq!(
        pb.samples.len(),
        js.samples.len(),
        "the JSON mapping decodes to the same request"
    );
    pb
}

#[test]
fn gauges_with_resource_scope_and_point_labels() {
    let req = request(vec![gauge(
        "system.memory.utilization",
        "1",
        vec![number_point(
            vec![kv("state", "used"), kv("host.name", "override")],
            0.5,
        )],
    )]);
    let p = both(&req);
    assert_eq!(p.samples.len(), 1);
    let s = &p.samples[0];
    assert_eq!(s.metric, "system_memory_utilization_ratio");
    assert_eq!(s.timestamp, 1_765_000_000_123_456);
    assert_eq!(s.value, 0.5);
    let want: Vec<(String, String)> = [
        ("host_name", "override"),
        ("instance", "pod-1"),
        ("job", "shop/api"),
        ("otel_scope_name", "meter"),
        ("otel_scope_version", "1.0"),
        ("state", "used"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(labels(s), want);
}

#[test]
fn cumulative_sums_are_counters_or_gauges_and_deltas_are_skipped() {
    let req = request(vec![
        sum(
            "http.requests",
            CUMULATIVE,
            true,
            vec![number_point(vec![], 10.0)],
        ),
        sum(
            "queue.depth",
            CUMULATIVE,
            false,
            vec![number_point(vec![], 3.0)],
        ),
        sum(
            "bytes.sent",
            1,
            true,
            vec![number_point(vec![], 5.0), number_point(vec![], 6.0)],
        ),
        sum("unspecified", 0, true, vec![number_point(vec![], 5.0)]),
    ]);
    let p = both(&req);
    let names: Vec<&str> = p.samples.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(names, ["http_requests_total", "queue_depth"]);
    assert_eq!(p.skipped.delta_points, 3);
}

#[test]
fn histograms_become_cumulative_buckets_sum_and_count() {
    let h = Metric {
        name: "http.server.duration".into(),
        unit: "ms".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                attributes: vec![kv("route", "/")],
                time_unix_nano: T,
                count: 6,
                sum: Some(123.0),
                bucket_counts: vec![1, 2, 3],
                explicit_bounds: vec![5.0, 10.5],
                ..Default::default()
            }],
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    };
    let p = both(&request(vec![h]));
    let got: Vec<(String, Option<String>, f64)> = p
        .samples
        .iter()
        .map(|s| {
            let le = s
                .labels
                .iter()
                .find(|l| l.name == "le")
                .map(|l| l.value.clone());
            (s.metric.clone(), le, s.value)
        })
        .collect();
    let b = "http_server_duration_milliseconds_bucket".to_string();
    assert_eq!(
        got,
        vec![
            (b.clone(), Some("5".into()), 1.0),
            (b.clone(), Some("10.5".into()), 3.0),
            (b, Some("+Inf".into()), 6.0),
            ("http_server_duration_milliseconds_sum".into(), None, 123.0),
            ("http_server_duration_milliseconds_count".into(), None, 6.0),
        ]
    );
    assert_eq!(p.series, 5);
}

#[test]
fn summaries_become_quantiles() {
    let m = Metric {
        name: "rpc.latency".into(),
        unit: "s".into(),
        data: Some(metric::Data::Summary(Summary {
            data_points: vec![SummaryDataPoint {
                time_unix_nano: T,
                count: 3,
                sum: 1.5,
                quantile_values: vec![ValueAtQuantile {
                    quantile: 0.99,
                    value: 0.9,
                }],
                ..Default::default()
            }],
        })),
        ..Default::default()
    };
    let p = both(&request(vec![m]));
    assert_eq!(p.samples[0].metric, "rpc_latency_seconds");
    assert!(p.samples[0]
        .labels
        .iter()
        .any(|l| l.name == "quantile" && l.value == "0.99"));
    assert_eq!(p.samples[1].metric, "rpc_latency_seconds_sum");
    assert_eq!(p.samples[2].value, 3.0);
}

#[test]
fn no_recorded_value_is_the_staleness_nan_and_nan_values_are_kept() {
    let mut stale = number_point(vec![], 1.0);
    stale.flags = NO_RECORDED_VALUE;
    let p = both(&request(vec![gauge("g", "", vec![stale])]));
    assert_eq!(p.samples[0].value.to_bits(), STALE_NAN);
    // NaN and infinities only travel in protobuf: the crate's JSON mapping writes them as
    // null, which reads back as a point without a value (refused).
    let nan = request(vec![gauge("g", "", vec![number_point(vec![], f64::NAN)])]);
    let p = parse(&nan.encode_to_vec(), Encoding::Protobuf, &Limits::default()).expect("valid");
    assert!(p.samples[0].value.is_nan());
}

#[test]
fn refusals_name_the_path() {
    let limits = Limits::default();
    let mut zero = number_point(vec![], 1.0);
    zero.time_unix_nano = 0;
    let err = convert(&request(vec![gauge("g", "", vec![zero])]), &limits).unwrap_err();
    assert_eq!(
        err.to_string(),
        "resource_metrics[0].scope_metrics[0].metrics[0].gauge.data_points[0].time_unix_nano: unset (0)"
    );
    let mut none = number_point(vec![], 1.0);
    none.value = None;
    assert_eq!(
        convert(&request(vec![gauge("g", "", vec![none])]), &limits)
            .unwrap_err()
            .status(),
        400
    );
    let bad = Metric {
        name: "h".into(),
        data: Some(metric::Data::Histogram(Histogram {
            data_points: vec![HistogramDataPoint {
                time_unix_nano: T,
                bucket_counts: vec![1, 2],
                explicit_bounds: vec![1.0, 2.0],
                ..Default::default()
            }],
            aggregation_temporality: CUMULATIVE,
        })),
        ..Default::default()
    };
    let err = convert(&request(vec![bad]), &limits).unwrap_err();
    assert!(
        err.field()
            .ends_with("histogram.data_points[0].bucket_counts"),
        "{err}"
    );
    let err = parse(
        b"{\"resourceMetrics\": [{\"scopeMetrics\": 7}]}",
        Encoding::Json,
        &limits,
    )
    .unwrap_err();
    assert_eq!(err.field(), "resourceMetrics[0].scopeMetrics");
    assert_eq!(
        parse(b"\x0a\x05", Encoding::Protobuf, &limits)
            .unwrap_err()
            .status(),
        400
    );
    let tight = Limits {
        max_samples: 2,
        ..Limits::default()
    };
    let err = convert(
        &request(vec![gauge("g", "", vec![number_point(vec![], 1.0); 3])]),
        &tight,
    )
    .unwrap_err();
    assert_eq!(err.status(), 413);
}

#[test]
fn official_json_example_decodes() {
    // Shape of opentelemetry-proto's examples/metrics.json: camelCase, 64-bit ints as strings.
    let body = br#"{"resourceMetrics":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"my.service"}}]},
      "scopeMetrics":[{"scope":{"name":"my.library","version":"1.0.0"},
      "metrics":[{"name":"my.counter","unit":"1","sum":{"aggregationTemporality":2,"isMonotonic":true,
        "dataPoints":[{"asDouble":5,"startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000",
        "attributes":[{"key":"my.counter.attr","value":{"stringValue":"some value"}}]}]}},
      {"name":"my.histogram","unit":"1","histogram":{"aggregationTemporality":2,
        "dataPoints":[{"startTimeUnixNano":"1544712660300000000","timeUnixNano":"1544712660300000000",
        "count":"2","sum":2,"bucketCounts":["1","1"],"explicitBounds":[1],"min":0,"max":2}]}}]}]}]}"#;
    let p = parse(body, Encoding::Json, &Limits::default()).expect("valid");
    let names: Vec<&str> = p.samples.iter().map(|s| s.metric.as_str()).collect();
    assert_eq!(
        names,
        [
            "my_counter_total",
            "my_histogram_bucket",
            "my_histogram_bucket",
            "my_histogram_sum",
            "my_histogram_count"
        ]
    );
    assert_eq!(p.samples[0].timestamp, 1_544_712_660_300_000);
    assert!(p.samples[0]
        .labels
        .iter()
        .any(|l| l.name == "job" && l.value == "my.service"));
}

#[test]
fn units_map_to_prometheus_suffixes() {
    assert_eq!(unit_suffix("s", false).as_deref(), Some("seconds"));
    assert_eq!(unit_suffix("By", false).as_deref(), Some("bytes"));
    assert_eq!(unit_suffix("1", true).as_deref(), Some("ratio"));
    assert_eq!(unit_suffix("1", false), None);
    assert_eq!(unit_suffix("{requests}", false), None);
    assert_eq!(
        unit_suffix("By/s", false).as_deref(),
        Some("bytes_per_second")
    );
    assert_eq!(
        unit_suffix("{packets}/s", false).as_deref(),
        Some("per_second")
    );
    assert_eq!(
        with_suffix("latency_seconds".into(), "seconds"),
        "latency_seconds"
    );
}

#[test]
fn a_json_error_without_a_path_names_the_body() {
    // Found by the proto_otlp fuzz target: an error under the unknown key "" had an empty
    // path, so the refusal named no field.
    let err = parse(b"{\"\": [1, }", Encoding::Json, &Limits::default()).unwrap_err();
    assert_eq!(err.field(), "body", "{err}");
    let err = parse(
        b"{\"resourceMetrics\": [{\"x\": ]}",
        Encoding::Json,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(!err.field().is_empty(), "{err}");
}
