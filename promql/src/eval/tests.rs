//! Evaluation against an in-memory source, with expectations computed by hand from
//! Prometheus 2.42's rules.

use super::*;
use crate::memory::MemorySource;
use crate::value::ErrorType;

const T: &str = "acme";

fn l(pairs: &[(&str, &str)]) -> Labels {
    let mut out: Labels = pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    out.sort();
    out
}

/// `http_requests_total` counters of two instances of job `api` and one of `db`, every 10 s
/// from 0 to 600 s; `temp` gauges; data of another tenant.
fn source() -> MemorySource {
    let mut src = MemorySource::new();
    let every_10s = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..=60).map(|i| (i * 10_000, f(i))).collect()
    };
    src.add(
        T,
        &[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", "a"),
        ],
        &every_10s(&|i| i as f64 * 10.0),
    );
    src.add(
        T,
        &[
            ("__name__", "http_requests_total"),
            ("job", "api"),
            ("instance", "b"),
        ],
        // Resets to 0 at 300 s.
        &every_10s(&|i| {
            if i < 30 {
                i as f64 * 5.0
            } else {
                (i - 30) as f64 * 5.0
            }
        }),
    );
    src.add(
        T,
        &[
            ("__name__", "http_requests_total"),
            ("job", "db"),
            ("instance", "c"),
        ],
        &every_10s(&|i| i as f64),
    );
    src.add(
        T,
        &[("__name__", "temp"), ("instance", "a")],
        &[(0, 20.0), (60_000, 22.0)],
    );
    src.add(
        T,
        &[("__name__", "temp"), ("instance", "b")],
        &[(0, 30.0), (60_000, 10.0)],
    );
    src.add(
        "other",
        &[("__name__", "temp"), ("instance", "x")],
        &[(0, 99.0)],
    );
    src
}

async fn instant(src: &MemorySource, q: &str, t_ms: i64) -> Result<QueryValue, EvalError> {
    instant_query(src, T, q, t_ms, &EvalOptions::default()).await
}

/// The vector answer as (labels, value), sorted by labels.
async fn vector(src: &MemorySource, q: &str, t_ms: i64) -> Vec<(Labels, f64)> {
    match instant(src, q, t_ms).await {
        Ok(QueryValue::Vector(samples)) => {
            assert!(samples.iter().all(|s| s.t_ms == t_ms));
            let mut out: Vec<(Labels, f64)> =
                samples.into_iter().map(|s| (s.labels, s.v)).collect();
            out.sort_by(|a, b| a.0.cmp(&b.0));
            out
        }
        other => panic!("{q}: expected a vector, got {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

fn assert_values(got: &[(Labels, f64)], want: &[(Labels, f64)]) {
    assert_eq!(got.len(), want.len(), "got {got:?}, want {want:?}");
    for ((gl, gv), (wl, wv)) in got.iter().zip(want) {
        assert_eq!(gl, wl);
        assert!(close(*gv, *wv), "{gl:?}: got {gv}, want {wv}");
    }
}

#[tokio::test]
async fn lookback_counts_a_sample_exactly_five_minutes_old_and_no_older() {
    let src = source();
    // temp's last samples are at 60 s.
    assert_eq!(vector(&src, "temp", 360_000).await.len(), 2);
    assert!(vector(&src, "temp", 360_001).await.is_empty());
    // Before the first sample there is nothing.
    assert_values(
        &vector(&src, r#"temp{instance="a"}"#, 59_999).await,
        &[(l(&[("__name__", "temp"), ("instance", "a")]), 20.0)],
    );
    // The other tenant's series is invisible.
    assert!(vector(&src, r#"temp{instance="x"}"#, 0).await.is_empty());
}

#[tokio::test]
async fn offset_shifts_the_selection_back() {
    let src = source();
    let got = vector(
        &src,
        r#"http_requests_total{instance="a"} offset 1m"#,
        200_000,
    )
    .await;
    assert_values(
        &got,
        &[(
            l(&[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("instance", "a"),
            ]),
            140.0,
        )],
    );
    // A negative offset looks forward.
    let got = vector(
        &src,
        r#"http_requests_total{instance="a"} offset -1m"#,
        200_000,
    )
    .await;
    assert_eq!(got[0].1, 260.0);
}

#[tokio::test]
async fn rate_increase_and_delta_extrapolate_and_handle_resets() {
    let src = source();
    // Window [240, 300] s (closed): samples at 240..300 every 10 s, 7 of them, at both
    // edges: no extrapolation. Instance a: +60 over 60 s. Instance b resets at 300 s:
    // 120 → 145 (+25), then 0: +145 - 120 = 25... the increase is (0 - 120) + 145 = 25.
    let got = vector(&src, "increase(http_requests_total[1m])", 300_000).await;
    assert_values(
        &got,
        &[
            (l(&[("job", "api"), ("instance", "a")]), 60.0),
            (l(&[("job", "api"), ("instance", "b")]), 25.0),
            (l(&[("job", "db"), ("instance", "c")]), 6.0),
        ],
    );
    // rate = increase / 60 s.
    let got = vector(
        &src,
        r#"rate(http_requests_total{instance="a"}[1m])"#,
        300_000,
    )
    .await;
    assert_values(&got, &[(l(&[("job", "api"), ("instance", "a")]), 1.0)]);
    // Window [245, 305]: samples 250..300 (6), 5 s from each edge (under 11 s): the
    // 50 s sampled extrapolate to 60 s: 50 × 60/50 = 60.
    let got = vector(
        &src,
        r#"increase(http_requests_total{instance="a"}[1m])"#,
        305_000,
    )
    .await;
    assert_values(&got, &[(l(&[("job", "api"), ("instance", "a")]), 60.0)]);
    // Instance b from 0 at 300 s: [295, 355]: 300..350 = 0..25; the counter's zero point
    // is the first sample, so the start is not extrapolated: 25 × (50 + 0 + 5)/50.
    let got = vector(
        &src,
        r#"increase(http_requests_total{instance="b"}[1m])"#,
        355_000,
    )
    .await;
    assert_values(&got, &[(l(&[("job", "api"), ("instance", "b")]), 27.5)]);
    // delta of a gauge: temp a 20 → 22 over [0, 60], both at the edges.
    let got = vector(&src, r#"delta(temp{instance="a"}[1m])"#, 60_000).await;
    assert_values(&got, &[(l(&[("instance", "a")]), 2.0)]);
    // One sample in the window: no result.
    assert!(vector(&src, "rate(temp[30s])", 60_000).await.is_empty());
    // irate at 305 s: last two samples 290, 300 of b: a reset, 0/10.
    let got = vector(
        &src,
        r#"irate(http_requests_total{job="api"}[1m])"#,
        305_000,
    )
    .await;
    assert_values(
        &got,
        &[
            (l(&[("job", "api"), ("instance", "a")]), 1.0),
            (l(&[("job", "api"), ("instance", "b")]), 0.0),
        ],
    );
}

#[tokio::test]
async fn over_time_functions_use_the_closed_window() {
    let src = source();
    // [0, 60] holds both temp samples.
    let got = vector(&src, "avg_over_time(temp[1m])", 60_000).await;
    assert_values(
        &got,
        &[
            (l(&[("instance", "a")]), 21.0),
            (l(&[("instance", "b")]), 20.0),
        ],
    );
    let got = vector(&src, "count_over_time(temp[1m])", 60_000).await;
    assert_eq!(got[0].1, 2.0);
    let got = vector(&src, "max_over_time(temp[1m])", 60_000).await;
    assert_values(
        &got,
        &[
            (l(&[("instance", "a")]), 22.0),
            (l(&[("instance", "b")]), 30.0),
        ],
    );
    let got = vector(&src, "min_over_time(temp[1m])", 60_000).await;
    assert_values(
        &got,
        &[
            (l(&[("instance", "a")]), 20.0),
            (l(&[("instance", "b")]), 10.0),
        ],
    );
    let got = vector(&src, "sum_over_time(temp[1m])", 60_000).await;
    assert_values(
        &got,
        &[
            (l(&[("instance", "a")]), 42.0),
            (l(&[("instance", "b")]), 40.0),
        ],
    );
    // last_over_time keeps the metric name.
    let got = vector(&src, "last_over_time(temp[1m])", 60_000).await;
    assert_values(
        &got,
        &[
            (l(&[("__name__", "temp"), ("instance", "a")]), 22.0),
            (l(&[("__name__", "temp"), ("instance", "b")]), 10.0),
        ],
    );
    // Dropping the name makes two series identical: refused as Prometheus does.
    let mut src = src;
    src.add(
        T,
        &[("__name__", "temp2"), ("instance", "a")],
        &[(0, 1.0), (60_000, 2.0)],
    );
    let err = instant(
        &src,
        r#"rate({__name__=~"temp2?", instance="a"}[1m])"#,
        60_000,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Execution, "{err}");
}

#[tokio::test]
async fn aggregations_group_by_and_without() {
    let src = source();
    let at = 100_000; // a = 100, b = 50, c = 10
    assert_values(
        &vector(&src, "sum by (job) (http_requests_total)", at).await,
        &[(l(&[("job", "api")]), 150.0), (l(&[("job", "db")]), 10.0)],
    );
    assert_values(
        &vector(&src, "sum without (instance) (http_requests_total)", at).await,
        &[(l(&[("job", "api")]), 150.0), (l(&[("job", "db")]), 10.0)],
    );
    assert_values(
        &vector(&src, "avg(http_requests_total)", at).await,
        &[(Vec::new(), 160.0 / 3.0)],
    );
    assert_values(
        &vector(&src, "count by (job) (http_requests_total)", at).await,
        &[(l(&[("job", "api")]), 2.0), (l(&[("job", "db")]), 1.0)],
    );
    assert_values(
        &vector(&src, "max(http_requests_total)", at).await,
        &[(Vec::new(), 100.0)],
    );
    assert_values(
        &vector(&src, "min by (job) (http_requests_total)", at).await,
        &[(l(&[("job", "api")]), 50.0), (l(&[("job", "db")]), 10.0)],
    );
    assert_values(
        &vector(&src, "quantile(0.5, http_requests_total)", at).await,
        &[(Vec::new(), 50.0)],
    );
    assert_values(&vector(&src, "stddev(temp)", 0).await, &[(Vec::new(), 5.0)]);
    // topk keeps the series' own labels, largest first.
    match instant(&src, "topk(2, http_requests_total)", at)
        .await
        .unwrap()
    {
        QueryValue::Vector(samples) => {
            let values: Vec<f64> = samples.iter().map(|s| s.v).collect();
            assert_eq!(values, vec![100.0, 50.0]);
            assert_eq!(
                samples[0].labels,
                l(&[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "a")
                ])
            );
        }
        other => panic!("{other:?}"),
    }
    assert_values(
        &vector(&src, "bottomk by (job) (1, http_requests_total)", at).await,
        &[
            (
                l(&[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "b"),
                ]),
                50.0,
            ),
            (
                l(&[
                    ("__name__", "http_requests_total"),
                    ("job", "db"),
                    ("instance", "c"),
                ]),
                10.0,
            ),
        ],
    );
}

#[tokio::test]
async fn binary_operators_match_and_drop_the_name_like_prometheus() {
    let src = source();
    let at = 100_000;
    // Arithmetic drops __name__; a comparison filter keeps it; bool gives 0/1 without it.
    assert_values(
        &vector(&src, r#"http_requests_total{instance="a"} * 2"#, at).await,
        &[(l(&[("job", "api"), ("instance", "a")]), 200.0)],
    );
    assert_values(
        &vector(&src, r#"http_requests_total > 20"#, at).await,
        &[
            (
                l(&[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "a"),
                ]),
                100.0,
            ),
            (
                l(&[
                    ("__name__", "http_requests_total"),
                    ("job", "api"),
                    ("instance", "b"),
                ]),
                50.0,
            ),
        ],
    );
    // A scalar on the left of a comparison filters but keeps the vector's value.
    assert_values(
        &vector(&src, r#"60 < http_requests_total"#, at).await,
        &[(
            l(&[
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("instance", "a"),
            ]),
            100.0,
        )],
    );
    assert_values(
        &vector(&src, r#"http_requests_total{job="api"} > bool 60"#, at).await,
        &[
            (l(&[("job", "api"), ("instance", "a")]), 1.0),
            (l(&[("job", "api"), ("instance", "b")]), 0.0),
        ],
    );
    // One-to-one on the labels but __name__.
    assert_values(
        &vector(&src, r#"http_requests_total / on(instance) temp"#, 60_000).await,
        &[
            (l(&[("instance", "a")]), 60.0 / 22.0),
            (l(&[("instance", "b")]), 30.0 / 10.0),
        ],
    );
    assert_values(
        &vector(&src, r#"http_requests_total - ignoring(job) temp"#, 60_000).await,
        &[
            (l(&[("instance", "a")]), 38.0),
            (l(&[("instance", "b")]), 20.0),
        ],
    );
    // Many-to-one needs group_left; the many side keeps its labels.
    let err = instant(&src, r#"sum by (job, instance) (http_requests_total) / on(job) group_left sum by (job) (http_requests_total)"#, at).await;
    let got = match err {
        Ok(QueryValue::Vector(s)) => s,
        other => panic!("{other:?}"),
    };
    assert_eq!(got.len(), 3);
    assert!(got
        .iter()
        .any(|s| s.labels == l(&[("job", "api"), ("instance", "a")]) && close(s.v, 100.0 / 150.0)));
    let err = instant(
        &src,
        r#"http_requests_total / on(job) sum by (job) (http_requests_total)"#,
        at,
    )
    .await
    .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Execution, "{err}");
    assert!(
        err.to_string()
            .contains("many-to-one matching must be explicit"),
        "{err}"
    );
    // Set operators keep the left side's labels.
    assert_eq!(
        vector(&src, r#"http_requests_total and on(instance) temp"#, 60_000)
            .await
            .len(),
        2
    );
    assert_eq!(
        vector(
            &src,
            r#"http_requests_total unless on(instance) temp"#,
            60_000
        )
        .await
        .len(),
        1
    );
    assert_eq!(
        vector(&src, r#"temp or http_requests_total"#, 60_000)
            .await
            .len(),
        5
    );
    // Scalars.
    match instant(&src, "2 ^ 3 + time()", 10_000).await.unwrap() {
        QueryValue::Scalar { t_ms, v } => assert_eq!((t_ms, v), (10_000, 18.0)),
        other => panic!("{other:?}"),
    }
    assert_values(
        &vector(&src, r#"-temp{instance="a"}"#, 0).await,
        &[(l(&[("instance", "a")]), -20.0)],
    );
}

#[tokio::test]
async fn the_at_modifier_pins_the_selection_time() {
    let src = source();
    // At 1000 s, temp @ 0 still answers the samples at 0 s.
    assert_values(
        &vector(&src, r#"temp{instance="a"} @ 0"#, 1_000_000).await,
        &[(l(&[("__name__", "temp"), ("instance", "a")]), 20.0)],
    );
    // With an offset: @ 90 offset 30s selects at 60 s.
    assert_values(
        &vector(&src, r#"temp{instance="a"} @ 90 offset 30s"#, 1_000_000).await,
        &[(l(&[("__name__", "temp"), ("instance", "a")]), 22.0)],
    );
    // Every step of a range query answers the same; @ end() is the last step.
    let got = range_query(
        &src,
        T,
        r#"increase(http_requests_total{instance="a"}[1m] @ end())"#,
        0,
        300_000,
        100_000,
        &EvalOptions::default(),
    )
    .await
    .unwrap();
    let QueryValue::Matrix(series) = got else {
        panic!("{got:?}")
    };
    assert_eq!(
        series[0].points,
        vec![(0, 60.0), (100_000, 60.0), (200_000, 60.0), (300_000, 60.0)]
    );
    // Offsets beyond any time are refused, not overflowed.
    let err = instant(&src, "temp offset 292000000y", 0).await;
    assert!(
        err.is_err() || matches!(err, Ok(QueryValue::Vector(ref v)) if v.is_empty()),
        "{err:?}"
    );
}

#[tokio::test]
async fn range_queries_step_from_start_and_sort_by_labels() {
    let src = source();
    let got = range_query(&src, T, "temp", 0, 420_000, 60_000, &EvalOptions::default())
        .await
        .unwrap();
    let QueryValue::Matrix(series) = got else {
        panic!("{got:?}")
    };
    assert_eq!(series.len(), 2);
    assert_eq!(
        series[0].labels,
        l(&[("__name__", "temp"), ("instance", "a")])
    );
    // 0 → 20, 60..360 → 22 (the sample at 60 s is still in the lookback at 360 s), 420 → none.
    let times: Vec<i64> = series[0].points.iter().map(|p| p.0).collect();
    assert_eq!(
        times,
        vec![0, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000]
    );
    assert_eq!(series[0].points[0].1, 20.0);
    assert_eq!(series[0].points[6].1, 22.0);
    // A scalar becomes one series without labels.
    let got = range_query(
        &src,
        T,
        "time()",
        0,
        20_000,
        10_000,
        &EvalOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        got,
        QueryValue::Matrix(vec![RangeSeries {
            labels: Vec::new(),
            points: vec![(0, 0.0), (10_000, 10.0), (20_000, 20.0)]
        }])
    );
    // Limits as Prometheus' API: 11,000 points, positive step, end after start.
    assert!(range_query(
        &src,
        T,
        "temp",
        0,
        11_000_000,
        1000,
        &EvalOptions::default()
    )
    .await
    .is_ok());
    let err = range_query(
        &src,
        T,
        "temp",
        0,
        11_001_000,
        1000,
        &EvalOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("11,000 points"), "{err}");
    assert!(
        range_query(&src, T, "temp", 10, 0, 1000, &EvalOptions::default())
            .await
            .is_err()
    );
    assert!(
        range_query(&src, T, "temp", 0, 10, 0, &EvalOptions::default())
            .await
            .is_err()
    );
    let err = range_query(&src, T, "temp[1m]", 0, 10, 1, &EvalOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::BadData);
}

#[tokio::test]
async fn an_instant_range_selector_answers_the_raw_samples() {
    let src = source();
    let got = instant(&src, r#"temp{instance="b"}[1m]"#, 60_000)
        .await
        .unwrap();
    assert_eq!(
        got,
        QueryValue::Matrix(vec![RangeSeries {
            labels: l(&[("__name__", "temp"), ("instance", "b")]),
            points: vec![(0, 30.0), (60_000, 10.0)],
        }])
    );
}

#[tokio::test]
async fn functions_on_instant_vectors() {
    let src = source();
    assert_values(
        &vector(&src, r#"clamp_max(temp, 25)"#, 0).await,
        &[
            (l(&[("instance", "a")]), 20.0),
            (l(&[("instance", "b")]), 25.0),
        ],
    );
    assert_values(
        &vector(&src, r#"clamp_min(temp, 25)"#, 0).await,
        &[
            (l(&[("instance", "a")]), 25.0),
            (l(&[("instance", "b")]), 30.0),
        ],
    );
    assert_values(
        &vector(&src, r#"round(temp / 7)"#, 0).await,
        &[
            (l(&[("instance", "a")]), 3.0),
            (l(&[("instance", "b")]), 4.0),
        ],
    );
    assert_values(&vector(&src, r#"vector(1)"#, 0).await, &[(Vec::new(), 1.0)]);
    assert_values(
        &vector(
            &src,
            r#"label_replace(temp, "host", "h-$1", "instance", "(.*)")"#,
            0,
        )
        .await,
        &[
            (
                l(&[("__name__", "temp"), ("host", "h-a"), ("instance", "a")]),
                20.0,
            ),
            (
                l(&[("__name__", "temp"), ("host", "h-b"), ("instance", "b")]),
                30.0,
            ),
        ],
    );
    match instant(&src, "sort_desc(temp)", 0).await.unwrap() {
        QueryValue::Vector(s) => {
            assert_eq!(s.iter().map(|s| s.v).collect::<Vec<_>>(), vec![30.0, 20.0])
        }
        other => panic!("{other:?}"),
    }
    match instant(&src, r#"scalar(temp{instance="a"})"#, 0)
        .await
        .unwrap()
    {
        QueryValue::Scalar { v, .. } => assert_eq!(v, 20.0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn histogram_quantile_interpolates_in_buckets() {
    let mut src = MemorySource::new();
    for (le, count) in [("0.1", 50.0), ("0.5", 90.0), ("+Inf", 100.0)] {
        src.add(
            T,
            &[("__name__", "lat_bucket"), ("le", le), ("job", "x")],
            &[(0, count)],
        );
    }
    assert_values(
        &vector(&src, "histogram_quantile(0.7, lat_bucket)", 0).await,
        &[(l(&[("job", "x")]), 0.3)],
    );
}

#[tokio::test]
async fn constructs_outside_the_subset_are_refused_by_name() {
    let src = source();
    for (q, needle) in [
        ("rate(temp[5m:1m])", "subqueries"),
        ("count_values(\"v\", temp)", "count_values"),
        ("absent(temp)", "absent()"),
        ("max_over_time(rate(temp[1m])[5m:])", "subqueries"),
    ] {
        let err = instant(&src, q, 0).await.unwrap_err();
        assert_eq!(err.error_type(), ErrorType::BadData, "{q}");
        assert!(err.to_string().contains(needle), "{q}: {err}");
    }
    let err = instant(&src, "sum(", 0).await.unwrap_err();
    assert!(matches!(err, EvalError::Parse(_)), "{err}");
}

#[tokio::test]
async fn deadlines_and_sample_limits_stop_evaluation() {
    let src = source();
    let options = EvalOptions {
        deadline: Some(Instant::now()),
        ..EvalOptions::default()
    };
    let err = instant_query(&src, T, "temp", 0, &options)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Timeout);
    let options = EvalOptions {
        max_samples: 5,
        ..EvalOptions::default()
    };
    let err = range_query(&src, T, "temp", 0, 60_000, 10_000, &options)
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), ErrorType::Execution, "{err}");
}
