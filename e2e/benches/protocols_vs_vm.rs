//! Prometheus remote-write ingest against VictoriaMetrics, in one run, on the same data.
//!
//! Both systems run on the same two cores one after the other, fed by this process over
//! loopback with the same concurrency and the very same request bodies (remote-write 1.0:
//! snappy + protobuf `WriteRequest`, as Prometheus and vmagent send them):
//!
//! * **Fleetstream**: `fleetstream up` (the release binary) on a temporary data directory,
//!   an ingest key made through the admin API; the gateway's `POST /api/v1/write`. A 204
//!   means the samples are in the log (`fleet.samples.v1`).
//! * **VictoriaMetrics** (Debian's `victoria-metrics`): its `POST /api/v1/write`; timing
//!   stops when `/internal/force_flush` returned (every sample searchable).
//!
//! The data: BENCH_TARGETS (200) scrape targets × BENCH_SERIES (500) series each (a third
//! counters, the rest gauges, with `job`, `instance` and one or two more labels, as
//! node_exporter's look) × BENCH_SCRAPES (20) scrapes 15 s apart, ending now. Requests carry
//! BENCH_PER_REQUEST (2,000) samples, Prometheus' `max_samples_per_send`: the series of
//! consecutive targets of one scrape round; BENCH_CLIENTS (8) connections send them, each
//! connection its own targets in order (Prometheus' shards).
//!
//! It prints, for each system: samples/s (wall clock, from the first request until every
//! one was answered, VictoriaMetrics' flush included; for Fleetstream also until every
//! sample is queryable through its Prometheus API) and samples per CPU second of its
//! process while timed, then the ratios. On shared cores the wall-clock ratio moves with
//! whatever else runs; the CPU ratio moves much less.
//!
//! Then **query_range latency**: BENCH_QUERIES (100) rounds of three PromQL range queries
//! over the whole run at a 15 s step (a `sum by (instance) (rate(...[1m]))` over 1,600
//! series, an `avg_over_time` of one series, a `max by (device)` over 400 series) against
//! each system's `/api/v1/query_range`, one at a time; p50 and p99 per system and the
//! ratio. Both must answer each query with the same number of series (the values differ
//! where MetricsQL's `rate` does not follow Prometheus').
//!
//! usage: cargo build --release -p fleetstream && \
//!        FLEETSTREAM_BIN=$PWD/target/release/fleetstream cargo bench -p fleet-e2e --bench protocols_vs_vm

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::Instant;

use anyhow::ensure;
use fleet_e2e::load::{post_all, Request};
use fleet_e2e::victoria::VictoriaMetrics;
use fleet_e2e::{env_num, LocalUp, Proc};
use fleet_protocols::remote_write::v1;

/// The shape of the load.
struct Shape {
    targets: usize,
    series: usize,
    scrapes: usize,
    per_request: usize,
    clients: usize,
}

impl Shape {
    fn from_env() -> anyhow::Result<Shape> {
        Ok(Shape {
            targets: env_num("BENCH_TARGETS", 200)?.max(1),
            series: env_num("BENCH_SERIES", 500)?.max(1),
            scrapes: env_num("BENCH_SCRAPES", 20)?.max(1),
            per_request: env_num("BENCH_PER_REQUEST", 2_000)?.max(1),
            clients: env_num("BENCH_CLIENTS", 8)?.max(1),
        })
    }

    fn samples(&self) -> usize {
        self.targets * self.series * self.scrapes
    }
}

/// The labels of series `s` of target `t` (`__name__` first, as Prometheus sends them).
fn labels(t: usize, s: usize) -> Vec<v1::Label> {
    let l = |name: &str, value: String| v1::Label {
        name: name.into(),
        value,
    };
    let (metric, extra) = match s % 3 {
        0 => (
            format!("node_cpu_seconds_total_{}", s / 24),
            vec![
                l("cpu", (s % 8).to_string()),
                l("mode", ["user", "system", "idle"][s % 3].into()),
            ],
        ),
        1 => (
            format!("node_filesystem_avail_bytes_{}", s / 24),
            vec![
                l("device", format!("sd{}", s % 4)),
                l("fstype", "ext4".into()),
            ],
        ),
        _ => (
            format!("node_network_receive_bytes_{}", s / 24),
            vec![l("device", format!("eth{}", s % 2))],
        ),
    };
    let mut out = vec![l("__name__", metric)];
    out.extend(extra);
    out.push(l("instance", format!("host-{t:04}:9100")));
    out.push(l("job", "node".into()));
    out
}

/// Value of series `s` of target `t` at scrape `k`: counters grow, gauges wander.
fn value(t: usize, s: usize, k: usize) -> f64 {
    let seed = (t * 7919 + s * 104_729) as f64;
    if s.is_multiple_of(3) {
        (seed % 1000.0) + (k as f64) * (1.0 + (s % 5) as f64 * 0.25)
    } else {
        1e9 + seed * 3.0 + ((k * 31 + s) % 17) as f64 * 4096.0
    }
}

/// Every request of the run, in send order, for a URL.
fn requests(shape: &Shape, url: &str, now_ms: i64) -> anyhow::Result<Vec<Request>> {
    let mut out = Vec::new();
    let mut encoder = snap::raw::Encoder::new();
    let series_labels: Vec<Vec<Vec<v1::Label>>> = (0..shape.targets)
        .map(|t| (0..shape.series).map(|s| labels(t, s)).collect())
        .collect();
    for k in 0..shape.scrapes {
        let ts = now_ms - ((shape.scrapes - k) as i64) * 15_000;
        // Requests of up to `per_request` samples over consecutive targets of one round;
        // a request's lane is its first target (one connection sends a target's in order).
        let mut pending: Vec<v1::TimeSeries> = Vec::new();
        let mut lane = 0u64;
        for (t, target) in series_labels.iter().enumerate() {
            for (s, labels) in target.iter().enumerate() {
                if pending.is_empty() {
                    lane = t as u64;
                }
                pending.push(v1::TimeSeries {
                    labels: labels.clone(),
                    samples: vec![v1::Sample {
                        value: value(t, s, k),
                        timestamp: ts,
                    }],
                });
                if pending.len() == shape.per_request {
                    out.push(encode(
                        &mut encoder,
                        url,
                        std::mem::take(&mut pending),
                        lane,
                    )?);
                }
            }
        }
        if !pending.is_empty() {
            out.push(encode(&mut encoder, url, pending, lane)?);
        }
    }
    Ok(out)
}

fn encode(
    encoder: &mut snap::raw::Encoder,
    url: &str,
    timeseries: Vec<v1::TimeSeries>,
    lane: u64,
) -> anyhow::Result<Request> {
    let body = prost::Message::encode_to_vec(&v1::WriteRequest { timeseries });
    Ok(Request {
        url: url.to_owned(),
        body: encoder.compress_vec(&body)?.into(),
        content_type: "application/x-protobuf",
        lane,
    })
}

/// What one system did.
struct Figures {
    seconds: f64,
    cpu_seconds: f64,
    /// Until every sample was queryable, and until every consumer (series index, alert
    /// evaluator) was done (Fleetstream; VictoriaMetrics' `seconds` includes its flush).
    queryable: Option<(f64, f64)>,
    /// (query index, seconds, series in the answer) of each range query.
    latencies: Vec<(usize, f64, usize)>,
}

const RW_HEADERS: [(&str, &str); 2] = [
    ("content-encoding", "snappy"),
    ("x-prometheus-remote-write-version", "0.1.0"),
];

async fn run_fleetstream(shape: &Shape, now_ms: i64) -> anyhow::Result<Figures> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-bench-rw-")
        .tempdir()?;
    let up = LocalUp::start(
        dir.path(),
        "\n[gateway.series-limits]\nmax-series-per-tenant = 0\n",
    )
    .await?;
    let client = reqwest::Client::new();
    let (tenant_id, key) = up.tenant_with_ingest_key(&client, "bench").await?;
    let requests = Arc::new(requests(
        shape,
        &format!("{}/api/v1/write", up.gateway),
        now_ms,
    )?);
    let auth = format!("Bearer {key}");
    let mut headers = RW_HEADERS.to_vec();
    headers.push(("authorization", &auth));
    let cpu0 = cpu(&up.proc);
    let started = Instant::now();
    post_all(&client, requests, shape.clients, &headers).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu(&up.proc) - cpu0;
    // Queryable: every sample of one metric, which every target sends (so every
    // partition), counted through the API.
    let api = Api {
        base: up.api.clone(),
        headers: vec![
            ("authorization".into(), format!("Bearer {}", up.admin_key)),
            ("x-scope-orgid".into(), tenant_id),
        ],
    };
    let want = (shape.targets * shape.series.min(24).div_ceil(3) * shape.scrapes) as f64;
    let probe = format!(
        "sum(count_over_time(node_cpu_seconds_total_0[{}s]))",
        shape.scrapes * 15 + 60
    );
    loop {
        let got = api
            .instant(&client, &probe, now_ms)
            .await
            .ok()
            .and_then(|v| {
                v["data"]["result"][0]["value"][1]
                    .as_str()?
                    .parse::<f64>()
                    .ok()
            });
        if got == Some(want) {
            break;
        }
        ensure!(
            started.elapsed() < std::time::Duration::from_secs(600),
            "the samples did not become queryable: {probe} = {got:?}, want {want}\n{}",
            up.proc.log_tail(20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let queryable = started.elapsed().as_secs_f64();
    // Queries are timed once every consumer (the series index of the read model, the
    // alert evaluator) is done too, as VictoriaMetrics is after its flush: their record
    // counts unchanged for 2 s.
    let metrics_url = format!("{}/metrics", up.api);
    let (mut last, mut same) = (-1.0, 0);
    while same < 8 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let text = client.get(&metrics_url).send().await?.text().await?;
        let read = fleet_e2e::prometheus_sum(&text, "fleet_projection_records_total")
            + fleet_e2e::prometheus_sum(&text, "fleet_processor_records_total");
        same = if read == last { same + 1 } else { 0 };
        last = read;
    }
    let settled = started.elapsed().as_secs_f64() - 2.0;
    let latencies = query_load(&client, &api, shape, now_ms).await?;
    let mut up = up;
    up.proc.stop()?;
    Ok(Figures {
        seconds,
        cpu_seconds,
        queryable: Some((queryable, settled)),
        latencies,
    })
}

/// A Prometheus HTTP API and the headers it wants.
struct Api {
    base: String,
    headers: Vec<(String, String)>,
}

impl Api {
    async fn get(
        &self,
        client: &reqwest::Client,
        path: &str,
        params: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let mut req = client.get(format!("{}{path}", self.base)).query(params);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        ensure!(status.is_success(), "{path} answered {status}: {body}");
        Ok(body)
    }

    async fn instant(
        &self,
        client: &reqwest::Client,
        query: &str,
        at_ms: i64,
    ) -> anyhow::Result<serde_json::Value> {
        self.get(
            client,
            "/api/v1/query",
            &[("query", query.into()), ("time", secs(at_ms))],
        )
        .await
    }
}

fn secs(ms: i64) -> String {
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

/// The three range queries of the latency figure.
fn range_queries() -> [&'static str; 3] {
    [
        "sum by (instance) (rate(node_cpu_seconds_total_0[1m]))",
        "avg_over_time(node_filesystem_avail_bytes_0{instance=\"host-0007:9100\"}[1m])",
        "max by (device) (node_network_receive_bytes_0)",
    ]
}

/// Runs the query rounds; returns each query's latency (s), and checks the series count
/// each answer has.
async fn query_load(
    client: &reqwest::Client,
    api: &Api,
    shape: &Shape,
    now_ms: i64,
) -> anyhow::Result<Vec<(usize, f64, usize)>> {
    let rounds = env_num("BENCH_QUERIES", 100)?;
    let start = now_ms - (shape.scrapes as i64) * 15_000;
    let mut out = Vec::new();
    for _ in 0..rounds {
        for (i, q) in range_queries().iter().enumerate() {
            let t = Instant::now();
            let v = api
                .get(
                    client,
                    "/api/v1/query_range",
                    &[
                        ("query", (*q).to_owned()),
                        ("start", secs(start)),
                        ("end", secs(now_ms)),
                        ("step", "15".into()),
                    ],
                )
                .await?;
            let series = v["data"]["result"].as_array().map_or(0, Vec::len);
            out.push((i, t.elapsed().as_secs_f64(), series));
        }
    }
    Ok(out)
}

async fn run_vm(shape: &Shape, now_ms: i64) -> anyhow::Result<(Figures, String)> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-bench-rw-vm-")
        .tempdir()?;
    let mut vm = VictoriaMetrics::start(dir.path()).await?;
    let client = reqwest::Client::new();
    let requests = Arc::new(requests(
        shape,
        &format!("{}/api/v1/write", vm.url()),
        now_ms,
    )?);
    let cpu0 = cpu(vm.proc());
    let started = Instant::now();
    post_all(&client, requests, shape.clients, &RW_HEADERS).await?;
    vm.force_flush(&client).await?;
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = cpu(vm.proc()) - cpu0;
    let version = vm.version().to_owned();
    let api = Api {
        base: vm.url().to_owned(),
        headers: Vec::new(),
    };
    let latencies = query_load(&client, &api, shape, now_ms).await?;
    vm.stop()?;
    Ok((
        Figures {
            seconds,
            cpu_seconds,
            queryable: None,
            latencies,
        },
        version,
    ))
}

fn cpu(p: &Proc) -> f64 {
    p.cpu_seconds().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let shape = Shape::from_env()?;
    let samples = shape.samples() as f64;
    let now_ms = fleet_schemas::time::now_micros() / 1000;
    println!(
        "remote-write ingest: {} targets x {} series x {} scrapes = {} samples, {} per request, {} connections",
        shape.targets, shape.series, shape.scrapes, samples, shape.per_request, shape.clients
    );
    let fs = run_fleetstream(&shape, now_ms).await?;
    let (vm, version) = run_vm(&shape, now_ms).await?;
    let row = |name: &str, f: &Figures| {
        println!(
            "{name:<28} {:>8.2} s  {:>12.0} samples/s  {:>12.0} samples/CPU s",
            f.seconds,
            samples / f.seconds,
            samples / f.cpu_seconds.max(1e-9)
        );
    };
    row("fleetstream up (to the log)", &fs);
    row("VictoriaMetrics (flushed)", &vm);
    println!("  ({version})");
    println!(
        "ratio Fleetstream / VictoriaMetrics: {:.2}x samples/s, {:.2}x samples/CPU s",
        vm.seconds / fs.seconds,
        (samples / fs.cpu_seconds.max(1e-9)) / (samples / vm.cpu_seconds.max(1e-9))
    );
    if let Some((q, all)) = fs.queryable {
        println!(
            "fleetstream up, until queryable: {q:.2} s, {:.0} samples/s ({:.2}x VictoriaMetrics flushed); every consumer done: {all:.2} s",
            samples / q,
            vm.seconds / q
        );
    }
    println!("query_range latency (ms):  query  fleetstream p50 / p99   VictoriaMetrics p50 / p99   ratio p50 / p99");
    for (i, q) in range_queries().iter().enumerate() {
        let (f, fs_series) = latencies_of(&fs.latencies, i);
        let (v, vm_series) = latencies_of(&vm.latencies, i);
        ensure!(
            fs_series == vm_series,
            "{q}: Fleetstream answered {fs_series:?} series, VictoriaMetrics {vm_series:?}"
        );
        let (fp50, fp99, vp50, vp99) = (pct(&f, 0.5), pct(&f, 0.99), pct(&v, 0.5), pct(&v, 0.99));
        println!(
            "  {q}\n      {:>8.1} / {:>8.1}   {:>8.1} / {:>8.1}   {:.2}x / {:.2}x",
            fp50 * 1e3,
            fp99 * 1e3,
            vp50 * 1e3,
            vp99 * 1e3,
            fp50 / vp50.max(1e-9),
            fp99 / vp99.max(1e-9)
        );
    }
    Ok(())
}

/// The latencies of query `i` (sorted) and the series counts its answers had.
fn latencies_of(all: &[(usize, f64, usize)], i: usize) -> (Vec<f64>, Vec<usize>) {
    let mut l: Vec<f64> = all.iter().filter(|x| x.0 == i).map(|x| x.1).collect();
    l.sort_by(f64::total_cmp);
    let mut series: Vec<usize> = all.iter().filter(|x| x.0 == i).map(|x| x.2).collect();
    series.dedup();
    (l, series)
}

/// The `p` quantile of sorted values (0 when empty).
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
