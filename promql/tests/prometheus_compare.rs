//! Fleetstream's PromQL answers equal a real Prometheus' on the same samples.
//!
//! One fixed set of samples (counters with a reset, a counter that starts late and ends
//! early, gauges on a regular and on a jittered 15 s grid, a classic histogram) is
//! written as OpenMetrics, turned into a TSDB block by `promtool tsdb create-blocks-from
//! openmetrics`, and served by Debian's `prometheus` on a free loopback port; the same
//! samples go into the in-memory source. Every expression of [`EXPRESSIONS`] runs as an
//! instant query at several times (on sample timestamps, so window edges land on samples;
//! past the end of the data, inside the lookback) and as range queries; both answers, in
//! the Prometheus API's JSON shape, must hold the same series with the same labels,
//! timestamps and values (relative tolerance 1e-9).
//!
//! Needs `prometheus` and `promtool` (Debian package `prometheus`, installed by
//! `scripts/services.sh up`): fails without them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_promql::memory::MemorySource;
use fleet_promql::{api, instant_query, range_query, EvalError, EvalOptions, QueryValue};
use fleet_test_support::process::{free_port, run_program_to_end, wait_ready, write_file, Proc};
use serde_json::Value;

const TENANT: &str = "t";
/// Start of the data, seconds (a 2 h block boundary).
const T0: i64 = 1_699_999_200;
/// Samples per series: one hour at 15 s.
const N: i64 = 240;

type Series = (Vec<(&'static str, String)>, Vec<(i64, f64)>);

/// The fixed samples.
fn samples() -> Vec<Series> {
    let grid = |i: i64| (T0 + i * 15) * 1000;
    // ±0.1..0.4 s of jitter, fixed.
    let jittered = |i: i64| grid(i) + ((i * 7919) % 9 - 4) * 100;
    let mut out: Vec<Series> = Vec::new();
    let counter = |name: &'static str, job: &str, inst: &str| {
        vec![
            ("__name__", name.to_string()),
            ("instance", inst.to_string()),
            ("job", job.to_string()),
        ]
    };
    // Counter with irregular increments and a reset at i = 100 (regular grid).
    let mut v = 0.0;
    let mut a = Vec::new();
    for i in 0..N {
        if i == 100 {
            v = 2.0;
        } else {
            v += ((i * 3) % 7 + 1) as f64;
        }
        a.push((grid(i), v));
    }
    out.push((counter("http_requests_total", "api", "a"), a));
    // Counter starting high, jittered timestamps.
    out.push((
        counter("http_requests_total", "api", "b"),
        (0..N)
            .map(|i| (jittered(i), 500.0 + (i * i) as f64 * 0.25))
            .collect(),
    ));
    // Counter from 0 that starts at 10 min and stops at 50 min.
    out.push((
        counter("http_requests_total", "db", "c"),
        (40..200)
            .map(|i| (grid(i), ((i - 40) * 2) as f64))
            .collect(),
    ));
    // Gauges.
    out.push((
        vec![("__name__", "temperature".into()), ("instance", "a".into())],
        (0..N)
            .map(|i| (grid(i), 20.0 + ((i % 13) as f64) * 0.7 - (i % 5) as f64))
            .collect(),
    ));
    out.push((
        vec![("__name__", "temperature".into()), ("instance", "b".into())],
        (0..N)
            .map(|i| (jittered(i), 18.5 + ((i * 11) % 17) as f64 * 0.3))
            .collect(),
    ));
    // A classic histogram's buckets (cumulative counters), regular grid.
    for (le, share) in [("0.1", 0.5), ("0.5", 0.8), ("1", 0.95), ("+Inf", 1.0)] {
        out.push((
            vec![
                ("__name__", "latency_seconds_bucket".into()),
                ("le", le.into()),
            ],
            (0..N)
                .map(|i| (grid(i), (i as f64 * 4.0 * share).floor()))
                .collect(),
        ));
    }
    out
}

/// The expressions compared.
const EXPRESSIONS: &[&str] = &[
    "http_requests_total",
    "temperature",
    "rate(http_requests_total[5m])",
    "increase(http_requests_total[2m])",
    "irate(http_requests_total[1m])",
    "delta(temperature[3m])",
    "idelta(temperature[1m])",
    "avg_over_time(temperature[10m])",
    "max_over_time(temperature[2m])",
    "min_over_time(temperature[2m])",
    "sum_over_time(temperature[1m])",
    "count_over_time(http_requests_total[5m])",
    "last_over_time(temperature[1m])",
    "sum by (job) (rate(http_requests_total[5m]))",
    "avg without (instance) (temperature)",
    "count(http_requests_total)",
    "max by (job) (http_requests_total)",
    "min(temperature)",
    "topk(1, temperature)",
    "bottomk(2, http_requests_total)",
    "quantile(0.9, temperature)",
    "stddev(temperature)",
    "http_requests_total offset 5m",
    "rate(http_requests_total[5m] offset 10m)",
    "temperature > 20",
    "20 < temperature",
    "temperature > bool 20",
    "http_requests_total / on(instance) temperature",
    "http_requests_total - ignoring(job) temperature",
    "http_requests_total and on(instance) temperature",
    "http_requests_total unless on(instance) temperature",
    "temperature or http_requests_total",
    "-temperature * 2 + 1",
    "abs(temperature - 21)",
    "round(temperature, 0.5)",
    "clamp_max(temperature, 21)",
    "histogram_quantile(0.9, rate(latency_seconds_bucket[5m]))",
    "time()",
    "scalar(sum(temperature))",
    "vector(1)",
    "sort_desc(temperature)",
    r#"label_replace(temperature, "host", "h-$1", "instance", "(.*)")"#,
    "delta(http_requests_total[5m])",
    "increase(http_requests_total[50s])",
    "rate(latency_seconds_bucket[30s])",
    "stdvar_over_time(temperature[5m])",
    "stddev_over_time(temperature[5m])",
    "sum by (job) (http_requests_total) / ignoring(job) group_left sum(http_requests_total)",
    "temperature / on() group_left min(temperature)",
    "count by (job) (http_requests_total)",
    "http_requests_total % 7",
    "temperature ^ 2",
    "ceil(temperature) - floor(temperature)",
    "clamp_min(temperature, 20)",
    "clamp(temperature, 19, 21)",
    "sum without (le) (latency_seconds_bucket)",
    "topk by (job) (1, http_requests_total)",
    "group by (job) (http_requests_total)",
    "sort(http_requests_total)",
    "http_requests_total @ 1700001000",
    "rate(http_requests_total[5m] @ 1700000400 offset 1m)",
    "temperature @ end()",
    "avg_over_time(temperature[2m] @ start())",
    "http_requests_total > on(instance) temperature",
    "temperature <= bool on(instance) http_requests_total",
    "(temperature - temperature) / 0",
    "max(temperature / 0)",
    "temperature / on(instance) group_right sum by (instance) (http_requests_total)",
    "sum by (job) (http_requests_total) / on() group_right max(http_requests_total)",
    "quantile(0.25, http_requests_total)",
    "irate(temperature[45s])",
    "resets(http_requests_total[5m])",
    "changes(temperature[3m])",
    // Refused by both, as `execution`: duplicate match groups.
    "http_requests_total + on(job) temperature",
];

/// Instant query times: on the grid (window edges on samples), off it, 4 min past the end
/// of the data (inside the 5 min lookback), 5 min past (the lookback's edge), after.
fn instant_times() -> Vec<String> {
    let end = T0 + (N - 1) * 15;
    vec![
        (T0 + 1800).to_string(),
        format!("{}.5", T0 + 1207),
        (T0 + 600).to_string(),
        (T0 + 3000).to_string(),
        (end + 240).to_string(),
        (end + 300).to_string(),
        (end + 301).to_string(),
    ]
}

/// Range queries: (start, end, step).
fn ranges() -> Vec<(String, String, String)> {
    vec![
        ((T0 + 300).to_string(), (T0 + 3300).to_string(), "60".into()),
        (
            (T0 + 3400).to_string(),
            (T0 + 4000).to_string(),
            "30s".into(),
        ),
        (
            format!("{}.25", T0 + 100),
            (T0 + 1000).to_string(),
            "37".into(),
        ),
    ]
}

fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is not installed: run `scripts/services.sh up` (it installs Debian's prometheus package)")
        })
}

fn openmetrics(series: &[Series]) -> String {
    let mut text = String::new();
    for (labels, samples) in series {
        let name = &labels
            .iter()
            .find(|(n, _)| *n == "__name__")
            .expect("name")
            .1;
        let inner: Vec<String> = labels
            .iter()
            .filter(|(n, _)| *n != "__name__")
            .map(|(n, v)| format!("{n}=\"{v}\""))
            .collect();
        for (t, v) in samples {
            let _ = writeln!(
                text,
                "{name}{{{}}} {v} {}.{:03}",
                inner.join(","),
                t / 1000,
                t % 1000
            );
        }
    }
    text.push_str("# EOF\n");
    text
}

/// A Prometheus server over a TSDB block of `series`; killed on drop.
struct Prometheus {
    _proc: Proc,
    url: String,
    version: String,
}

async fn start_prometheus(dir: &Path, series: &[Series]) -> Prometheus {
    let prometheus = program("prometheus");
    let promtool = program("promtool");
    let input = write_file(dir, "samples.om", &openmetrics(series)).expect("write samples");
    let data = dir.join("data");
    let made = run_program_to_end(
        &promtool,
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            input.to_str().expect("utf-8"),
            data.to_str().expect("utf-8"),
        ],
        dir,
    )
    .expect("promtool");
    assert!(made.success, "promtool failed: {}", made.output);
    let version = run_program_to_end(&prometheus, &["--version"], dir)
        .expect("prometheus --version")
        .output;
    let config =
        write_file(dir, "prometheus.yml", "global:\n  scrape_interval: 1h\n").expect("config");
    let port = free_port().expect("port");
    let proc = Proc::start_program(
        "prometheus",
        dir,
        &prometheus,
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", data.display()),
            "--storage.tsdb.retention.time=100y",
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
    )
    .expect("start prometheus");
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/-/ready"), Duration::from_secs(60), &[&proc])
        .await
        .expect("prometheus ready");
    Prometheus {
        _proc: proc,
        url,
        version: version.lines().next().unwrap_or_default().to_owned(),
    }
}

/// Prometheus' `data`, or its `errorType` and message.
async fn prometheus_answer(
    client: &reqwest::Client,
    url: &str,
    params: &[(&str, &str)],
) -> Result<Value, (String, String)> {
    let resp = client
        .post(url)
        .form(params)
        .send()
        .await
        .expect("prometheus request");
    let body: Value = resp.json().await.expect("prometheus json");
    match body["status"].as_str() {
        Some("success") => Ok(body["data"].clone()),
        _ => Err((
            body["errorType"].as_str().unwrap_or_default().to_owned(),
            body["error"].as_str().unwrap_or_default().to_owned(),
        )),
    }
}

/// Both answers: equal data, or errors of the same type. Whether there was data.
fn check(
    what: &str,
    ours: Result<QueryValue, EvalError>,
    theirs: Result<Value, (String, String)>,
    failures: &mut Vec<String>,
) -> bool {
    match (ours, theirs) {
        (Ok(ours), Ok(theirs)) => {
            compare(what, &api::query_data(&ours), &theirs, failures);
            !by_labels(&theirs).is_empty()
        }
        (Err(ours), Err((kind, message))) => {
            if ours.error_type().as_str() != kind {
                failures.push(format!(
                    "{what}: error {} ({ours}) vs Prometheus' {kind} ({message})",
                    ours.error_type().as_str()
                ));
            }
            true
        }
        (Ok(_), Err((kind, message))) => {
            failures.push(format!(
                "{what}: answered, Prometheus refused: {kind}: {message}"
            ));
            false
        }
        (Err(ours), Ok(_)) => {
            failures.push(format!("{what}: refused ({ours}), Prometheus answered"));
            false
        }
    }
}

fn parse_value(v: &Value) -> f64 {
    fleet_promql_value(v.as_str().expect("value string"))
}

fn fleet_promql_value(s: &str) -> f64 {
    match s {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        other => other.parse().expect("number"),
    }
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Series of an answer keyed by their labels: the points as (time, value).
fn by_labels(data: &Value) -> BTreeMap<String, Vec<(f64, f64)>> {
    let mut out = BTreeMap::new();
    let points = |p: &Value| (p[0].as_f64().expect("time"), parse_value(&p[1]));
    match data["resultType"].as_str() {
        Some("vector") | Some("matrix") => {
            for s in data["result"].as_array().expect("result") {
                let key = s["metric"].to_string();
                let pts = match s.get("value") {
                    Some(v) => vec![points(v)],
                    None => s["values"]
                        .as_array()
                        .expect("values")
                        .iter()
                        .map(points)
                        .collect(),
                };
                assert!(
                    out.insert(key.clone(), pts).is_none(),
                    "duplicate series {key}"
                );
            }
        }
        Some("scalar") => {
            out.insert("scalar".into(), vec![points(&data["result"])]);
        }
        other => panic!("unexpected result type {other:?}"),
    }
    out
}

fn compare(what: &str, ours: &Value, theirs: &Value, failures: &mut Vec<String>) {
    if ours["resultType"] != theirs["resultType"] {
        failures.push(format!(
            "{what}: result type {} vs Prometheus' {}",
            ours["resultType"], theirs["resultType"]
        ));
        return;
    }
    let (a, b) = (by_labels(ours), by_labels(theirs));
    if a.keys().ne(b.keys()) {
        failures.push(format!(
            "{what}: series {:?} vs Prometheus' {:?}",
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>()
        ));
        return;
    }
    for (key, ours) in &a {
        let theirs = &b[key];
        let equal = ours.len() == theirs.len()
            && ours
                .iter()
                .zip(theirs)
                .all(|(x, y)| x.0 == y.0 && same_value(x.1, y.1));
        if !equal {
            failures.push(format!("{what}: {key}: {ours:?} vs Prometheus' {theirs:?}"));
        }
    }
    // sort/sort_desc define the order of an instant vector.
    if what.contains("sort") && ours["resultType"] == "vector" {
        let order = |d: &Value| -> Vec<String> {
            d["result"]
                .as_array()
                .map(|r| r.iter().map(|s| s["metric"].to_string()).collect())
                .unwrap_or_default()
        };
        if order(ours) != order(theirs) {
            failures.push(format!(
                "{what}: order {:?} vs Prometheus' {:?}",
                order(ours),
                order(theirs)
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_equal_prometheus_on_the_same_samples() {
    let series = samples();
    let dir = tempfile::tempdir().expect("tempdir");
    let prom = start_prometheus(dir.path(), &series).await;
    let mut source = MemorySource::new();
    for (labels, samples) in &series {
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (*n, v.as_str())).collect();
        source.add(TENANT, &pairs, samples);
    }
    let client = reqwest::Client::new();
    let options = EvalOptions::default();
    let mut failures = Vec::new();
    let mut compared = 0;
    let mut non_empty = 0;
    for expr in EXPRESSIONS {
        for t in instant_times() {
            let theirs = prometheus_answer(
                &client,
                &format!("{}/api/v1/query", prom.url),
                &[("query", expr), ("time", &t)],
            )
            .await;
            let t_ms = api::parse_time(&t).expect("time");
            let ours = instant_query(&source, TENANT, expr, t_ms, &options).await;
            compared += 1;
            non_empty += usize::from(check(
                &format!("{expr} at {t}"),
                ours,
                theirs,
                &mut failures,
            ));
        }
        for (start, end, step) in ranges() {
            let theirs = prometheus_answer(
                &client,
                &format!("{}/api/v1/query_range", prom.url),
                &[
                    ("query", expr),
                    ("start", &start),
                    ("end", &end),
                    ("step", &step),
                ],
            )
            .await;
            let (s, e) = (
                api::parse_time(&start).expect("start"),
                api::parse_time(&end).expect("end"),
            );
            let step_ms = api::parse_duration(&step).expect("step");
            let ours = range_query(&source, TENANT, expr, s, e, step_ms, &options).await;
            compared += 1;
            non_empty += usize::from(check(
                &format!("{expr} over {start}..{end}/{step}"),
                ours,
                theirs,
                &mut failures,
            ));
        }
    }
    // The comparison means something only if Prometheus found the data (some times are
    // past the data and its lookback on purpose: about half the answers are empty there).
    assert!(
        non_empty * 2 >= compared,
        "Prometheus answered only {non_empty} of {compared} queries with data"
    );
    assert!(
        failures.is_empty(),
        "{} of {compared} answers differ from {}:\n{}",
        failures.len(),
        prom.version,
        failures.join("\n")
    );
}
