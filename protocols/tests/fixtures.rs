//! Bodies written by the real clients (`tests/fixtures/make.py`: the OpenTelemetry Python
//! SDK's OTLP encoder, influxdb-client's line protocol, python-snappy, and a body a real
//! Prometheus 2.42 server remote-wrote) parse into the samples they carry.

use std::path::Path;

use fleet_protocols::influx::{self, Precision};
use fleet_protocols::otlp::{self, Encoding};
use fleet_protocols::remote_write::{self, Version};
use fleet_protocols::{labels, Limits, Parsed};
use fleet_schemas::LabeledSample;

fn fixture(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run tests/fixtures/make.py)", path.display()))
}

fn find<'a>(p: &'a Parsed, metric: &str, label: (&str, &str)) -> &'a LabeledSample {
    p.samples
        .iter()
        .find(|s| {
            s.metric == metric
                && s.labels
                    .iter()
                    .any(|l| (l.name.as_str(), l.value.as_str()) == label)
        })
        .unwrap_or_else(|| {
            panic!(
                "no {metric}{{{}={:?}}} in {:#?}",
                label.0, label.1, p.samples
            )
        })
}

fn label<'a>(s: &'a LabeledSample, name: &str) -> Option<&'a str> {
    s.labels
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.value.as_str())
}

/// Every sample's names are in the charsets and its labels sorted and unique.
fn well_formed(p: &Parsed) {
    for s in &p.samples {
        assert!(labels::is_metric_name(&s.metric), "{}", s.metric);
        assert!(s
            .labels
            .iter()
            .all(|l| labels::is_label_name(&l.name) && !l.value.is_empty()));
        assert!(s.labels.windows(2).all(|w| w[0].name < w[1].name), "{s:?}");
    }
}

#[test]
fn remote_write_written_field_by_field() {
    let p = remote_write::parse(
        &fixture("remote_write_v1.snappy"),
        Version::V1,
        &Limits::default(),
    )
    .expect("valid");
    well_formed(&p);
    assert_eq!(p.series, 2);
    let load: Vec<(i64, f64)> = p
        .samples
        .iter()
        .filter(|s| s.metric == "node_load1")
        .map(|s| (s.timestamp, s.value))
        .collect();
    assert_eq!(
        load,
        [(1_765_000_000_000_000, 0.5), (1_765_000_015_000_000, 0.75)]
    );
    let up: Vec<&LabeledSample> = p.samples.iter().filter(|s| s.metric == "up").collect();
    assert_eq!(label(up[0], "job"), Some("node"));
    assert_eq!(label(up[0], "instance"), Some("web-1:9100"));
    assert_eq!(
        up[1].value.to_bits(),
        0x7ff0_0000_0000_0002,
        "the staleness marker"
    );
}

#[test]
fn remote_write_from_a_real_prometheus() {
    let p = remote_write::parse(
        &fixture("remote_write_prometheus.snappy"),
        Version::from_content_type("application/x-protobuf"),
        &Limits::default(),
    )
    .expect("valid");
    well_formed(&p);
    assert!(p.samples.len() >= 100, "{} samples", p.samples.len());
    assert!(p.series > 0 && p.series <= p.samples.len());
    let up = find(&p, "up", ("job", "prometheus"));
    assert_eq!(up.value, 1.0);
    assert!(label(up, "instance").is_some_and(|i| i.starts_with("127.0.0.1:")));
    let build = find(&p, "prometheus_build_info", ("job", "prometheus"));
    assert_eq!(label(build, "version"), Some("2.42.0+ds"));
    // Captured in 2026: milliseconds became microseconds.
    assert!(p
        .samples
        .iter()
        .all(|s| (1_700_000_000_000_000..2_000_000_000_000_000).contains(&s.timestamp)));
}

#[test]
fn otlp_from_the_python_sdk_in_protobuf_and_json() {
    let pb = otlp::parse(
        &fixture("otlp_metrics.pb"),
        Encoding::Protobuf,
        &Limits::default(),
    )
    .expect("protobuf");
    let json = otlp::parse(
        &fixture("otlp_metrics.json"),
        Encoding::Json,
        &Limits::default(),
    )
    .expect("json");
    assert_eq!(pb, json, "the JSON mapping carries the same samples");
    well_formed(&pb);
    assert!(!pb.skipped.any());

    let requests = find(&pb, "http_server_requests_total", ("http_route", "/cart"));
    assert_eq!(requests.value, 5.0);
    assert_eq!(label(requests, "http_status_code"), Some("200"));
    assert_eq!(label(requests, "job"), Some("checkout"));
    assert_eq!(label(requests, "instance"), Some("pod-7"));
    assert_eq!(label(requests, "host_name"), Some("web-1"));
    assert_eq!(label(requests, "telemetry_sdk_language"), Some("python"));
    assert_eq!(label(requests, "otel_scope_name"), Some("fixture.meter"));
    assert_eq!(label(requests, "otel_scope_version"), Some("1.2.3"));

    let active = find(&pb, "http_server_active_requests", ("job", "checkout"));
    assert_eq!(active.value, 3.0, "a non-monotonic sum is a gauge");

    let bucket = |le: &str| find(&pb, "http_server_duration_milliseconds_bucket", ("le", le)).value;
    assert_eq!(
        (bucket("10"), bucket("100"), bucket("+Inf")),
        (1.0, 2.0, 3.0)
    );
    assert_eq!(
        find(
            &pb,
            "http_server_duration_milliseconds_sum",
            ("http_route", "/cart")
        )
        .value,
        555.0
    );
    assert_eq!(
        find(
            &pb,
            "http_server_duration_milliseconds_count",
            ("http_route", "/cart")
        )
        .value,
        3.0
    );

    let memory = find(&pb, "system_memory_utilization_ratio", ("state", "used"));
    assert_eq!(memory.value, 0.25);
    assert!(pb
        .samples
        .iter()
        .all(|s| s.timestamp > 1_700_000_000_000_000));
}

#[test]
fn influx_from_influxdb_client() {
    const NOW: i64 = 1;
    let p = influx::parse(
        &fixture("influx_ns.lp"),
        Precision::Nanoseconds,
        NOW,
        &Limits::default(),
    )
    .expect("valid");
    well_formed(&p);
    let got: Vec<(&str, f64, i64)> = p
        .samples
        .iter()
        .map(|s| (s.metric.as_str(), s.value, s.timestamp))
        .collect();
    assert_eq!(
        got,
        [
            ("cpu_usage_idle", 97.5, 1_765_000_000_123_456),
            ("cpu_usage_user", 1.0, 1_765_000_000_123_456),
            ("disk_space_ok", 1.0, 1_765_000_000_123_456),
            ("disk_space_used", 3.0, 1_765_000_000_123_456),
            ("load", 0.75, 1_765_000_000_123_456),
        ]
    );
    assert_eq!(p.skipped.string_fields, 1, "the string field `note`");
    assert_eq!(label(&p.samples[0], "cpu"), Some("cpu0"));
    assert_eq!(
        label(&p.samples[2], "path"),
        Some("/var,log"),
        "escaped comma"
    );
    assert_eq!(
        label(&p.samples[2], "host_name"),
        Some("web 1"),
        "escaped space, sanitized key"
    );

    let s = influx::parse(
        &fixture("influx_s.lp"),
        Precision::parse("s").expect("s"),
        NOW,
        &Limits::default(),
    )
    .expect("valid");
    assert_eq!(s.samples[0].metric, "mem_used_percent");
    assert_eq!(s.samples[0].timestamp, 1_765_000_000_000_000);
}
