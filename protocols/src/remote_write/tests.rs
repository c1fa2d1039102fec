use prost::Message;

use super::*;
use crate::Refusal;

fn label(name: &str, value: &str) -> v1::Label {
    v1::Label {
        name: name.into(),
        value: value.into(),
    }
}

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> v1::TimeSeries {
    v1::TimeSeries {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: samples
            .iter()
            .map(|&(timestamp, value)| v1::Sample { value, timestamp })
            .collect(),
    }
}

fn snappy(req: &impl Message) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .expect("compress")
}

fn parse_one(ts: v1::TimeSeries, limits: &Limits) -> Result<Parsed, ProtocolError> {
    let req = v1::WriteRequest {
        timeseries: vec![ts],
    };
    parse(&snappy(&req), Version::V1, limits)
}

#[test]
fn v1_name_becomes_the_metric_labels_sorted_ms_to_micros() {
    let req = v1::WriteRequest {
        timeseries: vec![
            series(
                &[
                    ("job", "node"),
                    ("__name__", "up"),
                    ("instance", "h:9100"),
                    ("e", ""),
                ],
                &[(1_700_000_000_000, 1.0), (1_700_000_015_000, 0.0)],
            ),
            series(&[("__name__", "x")], &[(-5, f64::INFINITY)]),
        ],
    };
    let p = parse(&snappy(&req), Version::V1, &Limits::default()).expect("valid");
    assert_eq!(p.series, 2);
    assert_eq!(p.samples.len(), 3);
    let s = &p.samples[1];
    assert_eq!(s.metric, "up");
    let names: Vec<&str> = s.labels.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["instance", "job"], "sorted, empty value dropped");
    assert_eq!(s.timestamp, 1_700_000_015_000_000);
    assert_eq!(s.value, 0.0);
    assert_eq!(p.samples[2].timestamp, -5_000);
    assert!(p.samples[2].labels.is_empty());
    assert_eq!(p.samples[2].value, f64::INFINITY);
}

#[test]
fn the_staleness_nan_is_kept_bit_for_bit() {
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let p = parse_one(
        series(&[("__name__", "up")], &[(1, stale)]),
        &Limits::default(),
    )
    .expect("valid");
    assert_eq!(p.samples[0].value.to_bits(), 0x7ff0_0000_0000_0002);
}

#[test]
fn client_faults_name_the_field_and_are_400() {
    let limits = Limits::default();
    let cases = [
        (
            series(&[("job", "x")], &[(1, 1.0)]),
            "timeseries[0].labels: no __name__ label",
        ),
        (
            series(&[("__name__", "up"), ("bad-name", "x")], &[(1, 1.0)]),
            "timeseries[0].labels[1].name: label name \"bad-name\" is not [a-zA-Z_][a-zA-Z0-9_]*",
        ),
        (
            series(&[("__name__", "up"), ("a", "1"), ("a", "2")], &[(1, 1.0)]),
            "timeseries[0].labels: label \"a\" occurs twice",
        ),
        (
            series(&[("__name__", "up"), ("__name__", "up")], &[(1, 1.0)]),
            "timeseries[0].labels: label \"__name__\" occurs twice",
        ),
        (
            series(&[("__name__", "1up")], &[(1, 1.0)]),
            "timeseries[0].labels[0].value: metric name \"1up\" is not [a-zA-Z_:][a-zA-Z0-9_:]*",
        ),
        (
            series(&[("__name__", "up")], &[(1, 1.0), (i64::MAX, 1.0)]),
            "timeseries[0].samples[1].timestamp: 9223372036854775807 ms is out of range \
             (±292,000 years in microseconds)",
        ),
    ];
    for (ts, expected) in cases {
        let err = parse_one(ts, &limits).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert_eq!(err.refusal(), Refusal::Client);
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn limits_are_413_and_checked_on_the_wire() {
    let tight = Limits {
        max_series: 2,
        max_samples: 3,
        max_labels_per_series: 3,
        max_label_value_bytes: 8,
        max_metric_name_bytes: 5,
        ..Limits::default()
    };
    let many = |n: usize, per: usize| v1::WriteRequest {
        timeseries: (0..n)
            .map(|_| series(&[("__name__", "up")], &vec![(1, 1.0); per]))
            .collect(),
    };
    let err = parse(&snappy(&many(3, 1)), Version::V1, &tight).unwrap_err();
    assert_eq!(err.field(), "timeseries[2]");
    assert!(matches!(
        err,
        ProtocolError::Limit {
            limit: "max-series",
            max: 2,
            ..
        }
    ));
    let err = parse(&snappy(&many(2, 2)), Version::V1, &tight).unwrap_err();
    assert_eq!(err.field(), "timeseries[1].samples");
    assert!(matches!(
        err,
        ProtocolError::Limit {
            limit: "max-samples",
            ..
        }
    ));
    let err = parse_one(
        series(
            &[("__name__", "up"), ("a", "1"), ("b", "1"), ("c", "1")],
            &[(1, 1.0)],
        ),
        &tight,
    )
    .unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Limit {
            limit: "max-labels-per-series",
            ..
        }
    ));
    let err = parse_one(
        series(&[("__name__", "up"), ("a", "123456789")], &[]),
        &tight,
    )
    .unwrap_err();
    assert_eq!(err.field(), "timeseries[0].labels[1].value");
    assert_eq!(err.status(), 413);
    let err = parse_one(series(&[("__name__", "uptime")], &[]), &tight).unwrap_err();
    assert!(matches!(
        err,
        ProtocolError::Limit {
            limit: "max-metric-name-bytes",
            ..
        }
    ));
}

#[test]
fn a_huge_declared_length_is_refused_before_allocating() {
    // A snappy block header declaring 1 GiB, followed by nothing.
    let header = |len: u64| {
        let mut body = Vec::new();
        prost::encoding::encode_varint(len, &mut body);
        body
    };
    let err = parse(&header(1 << 30), Version::V1, &Limits::default()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::Limit {
                limit: "max-body-bytes",
                ..
            }
        ),
        "{err}"
    );
    // Past the format's own 4 GiB bound, or a varint that never ends: not snappy.
    assert_eq!(
        parse(&header(4 << 30), Version::V1, &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
    assert_eq!(
        parse(&[0xFF; 11], Version::V1, &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
    let small = Limits {
        max_body_bytes: 10,
        ..Limits::default()
    };
    let ok = snappy(&v1::WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
    });
    assert_eq!(parse(&ok, Version::V1, &small).unwrap_err().status(), 413);
}

#[test]
fn garbage_truncation_and_bad_protobuf_are_400() {
    let limits = Limits::default();
    assert_eq!(parse(b"", Version::V1, &limits).unwrap_err().status(), 400);
    assert_eq!(
        parse(b"\xff\xff\xff", Version::V1, &limits)
            .unwrap_err()
            .status(),
        400
    );
    let good = snappy(&v1::WriteRequest {
        timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
    });
    for cut in 1..good.len() {
        let err = parse(&good[..cut], Version::V1, &limits).unwrap_err();
        assert_eq!(err.status(), 400, "cut at {cut}: {err}");
    }
    // Valid snappy around bytes that are no WriteRequest: a length past the end, a group,
    // a label name that is not UTF-8.
    for raw in [
        &[0x0A, 0x7F, 0x01][..],
        &[0x0B],
        &[0x0A, 0x05, 0x0A, 0x03, 0x0A, 0x01, 0xFF],
    ] {
        let body = snap::raw::Encoder::new()
            .compress_vec(raw)
            .expect("compress");
        let err = parse(&body, Version::V1, &limits).unwrap_err();
        assert_eq!(err.field(), "body", "{err}");
        assert_eq!(err.status(), 400);
    }
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    // 10,000 nested length-delimited field-1 messages: scanned two levels deep, then prost's
    // recursion limit refuses the rest.
    let mut raw: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let mut outer = vec![0x0A];
        prost::encoding::encode_varint(raw.len() as u64, &mut outer);
        outer.extend_from_slice(&raw);
        raw = outer;
    }
    let err = parse_v1_protobuf(&raw, &Limits::default()).unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
}

#[test]
fn native_histograms_are_counted_as_skipped() {
    // TimeSeries field 4 (a histogram) beside a sample.
    let ts = series(&[("__name__", "up")], &[(1, 1.0)]);
    let mut ts_raw = ts.encode_to_vec();
    ts_raw.extend_from_slice(&[0x22, 0x00]);
    let mut raw = vec![0x0A];
    prost::encoding::encode_varint(ts_raw.len() as u64, &mut raw);
    raw.extend_from_slice(&ts_raw);
    let p = parse_v1_protobuf(&raw, &Limits::default()).expect("valid");
    assert_eq!(p.samples.len(), 1);
    assert_eq!(p.skipped.native_histograms, 1);
}

#[test]
fn v2_resolves_symbols() {
    let req = v2::Request {
        symbols: ["", "__name__", "up", "job", "node", "zone", "a"]
            .map(String::from)
            .to_vec(),
        timeseries: vec![v2::TimeSeries {
            labels_refs: vec![5, 6, 1, 2, 3, 4],
            samples: vec![v1::Sample {
                value: 2.5,
                timestamp: 1_000,
            }],
        }],
    };
    let p = parse(&snappy(&req), Version::V2, &Limits::default()).expect("valid");
    assert_eq!(p.samples[0].metric, "up");
    assert_eq!(p.samples[0].labels[0].name, "job");
    assert_eq!(p.samples[0].labels[1].value, "a");
    assert_eq!(p.samples[0].timestamp, 1_000_000);
    let mut bad = req.clone();
    bad.timeseries[0].labels_refs[1] = 99;
    let err = parse(&snappy(&bad), Version::V2, &Limits::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "timeseries[0].labels_refs[1]: symbol 99 is not in the table of 7"
    );
    let mut odd = req.clone();
    odd.timeseries[0].labels_refs.pop();
    assert_eq!(
        parse(&snappy(&odd), Version::V2, &Limits::default())
            .unwrap_err()
            .status(),
        400
    );
    let mut first = req;
    first.symbols[0] = "x".into();
    assert_eq!(
        parse(&snappy(&first), Version::V2, &Limits::default())
            .unwrap_err()
            .field(),
        "symbols[0]"
    );
}

#[test]
fn the_content_type_picks_the_version() {
    assert_eq!(
        Version::from_content_type("application/x-protobuf"),
        Version::V1
    );
    assert_eq!(
        Version::from_content_type("application/x-protobuf;proto=prometheus.WriteRequest"),
        Version::V1
    );
    assert_eq!(
        Version::from_content_type("application/x-protobuf; proto=io.prometheus.write.v2.Request"),
        Version::V2
    );
}

#[test]
fn round_trips_random_requests() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    for _ in 0..200 {
        let n = rng.random_range(0..5);
        let mut expected = Vec::new();
        let timeseries = (0..n)
            .map(|i| {
                let labels: Vec<(String, String)> = (0..rng.random_range(0..4))
                    .map(|k| (format!("l{k}"), format!("v{}", rng.random_range(0..3))))
                    .collect();
                let samples: Vec<(i64, f64)> = (0..rng.random_range(0..4))
                    .map(|_| (rng.random_range(-1_000_000_i64..1_000_000), rng.random()))
                    .collect();
                for &(t, v) in &samples {
                    expected.push((format!("m{i}"), labels.clone(), t * 1000, v));
                }
                let mut all: Vec<(&str, &str)> = labels
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_str()))
                    .collect();
                let name = format!("m{i}");
                all.push(("__name__", &name));
                series(&all, &samples)
            })
            .collect();
        let p = parse(
            &snappy(&v1::WriteRequest { timeseries }),
            Version::V1,
            &Limits::default(),
        )
        .expect("valid");
        let got: Vec<_> = p
            .samples
            .iter()
            .map(|s| {
                let labels = s
                    .labels
                    .iter()
                    .map(|l| (l.name.clone(), l.value.clone()))
                    .collect();
                (s.metric.clone(), labels, s.timestamp, s.value)
            })
            .collect();
        assert_eq!(got, expected);
    }
}
