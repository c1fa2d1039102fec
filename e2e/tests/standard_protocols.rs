//! Real collectors write to `fleetstream up` with an ingest key made through the admin API:
//!
//! * **Prometheus** (Debian's `prometheus` package) scrapes itself and node_exporter
//!   (Debian's `prometheus-node-exporter`) every second and remote-writes to
//!   `/api/v1/write` with the key as its `authorization` credentials;
//! * the **OpenTelemetry Python SDK** (PyPI) exports a counter, a gauge and a histogram with
//!   its OTLP/HTTP exporter to `/v1/metrics`;
//! * the **`influxdb-client`** package (PyPI) writes points with tags to `/api/v2/write`.
//!
//! Then `promtool query instant|range` asks Fleetstream's Prometheus API (as a viewer of
//! the tenant) and Prometheus itself the same PromQL over the remote-written samples: the
//! answers must be equal. Afterwards `fleetstream export` of `fleet.samples.v1` must hold
//! each client's samples,
//! named and labelled as docs/PROTOCOLS.md says, for the key's tenant. The Python clients
//! run in the services' venv (`FLEET_PYTHON`, `scripts/services.sh up` installs them);
//! Prometheus must be on PATH (`scripts/services.sh up` installs it).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fleet_e2e::{free_port, wait_for, write_file, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("utf-8 path")
}

/// The OpenTelemetry SDK: a counter, an observable gauge and a histogram, exported once.
const OTEL_SCRIPT: &str = r#"
import sys
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation

endpoint, key = sys.argv[1], sys.argv[2]
exporter = OTLPMetricExporter(endpoint=endpoint, headers={"Authorization": "Bearer " + key})
reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
provider = MeterProvider(metric_readers=[reader],
                         resource=Resource.create({"service.name": "checkout", "service.instance.id": "pod-1"}))
meter = provider.get_meter("e2e.meter", "1.0.0")
requests = meter.create_counter("e2e_requests")
requests.add(5, {"route": "/pay"})
meter.create_observable_gauge("e2e_queue_depth", callbacks=[lambda _: [Observation(7.0, {"queue": "a"})]])
latency = meter.create_histogram("e2e_latency", unit="s")
for v in (0.1, 0.2, 3.0):
    latency.record(v)
ok = provider.force_flush(30_000)
provider.shutdown()
print("flushed", ok)
sys.exit(0 if ok else 1)
"#;

/// influxdb-client: two points with tags, written synchronously (raises on any error).
const INFLUX_SCRIPT: &str = r#"
import sys
from influxdb_client import InfluxDBClient, Point, WritePrecision
from influxdb_client.client.write_api import SYNCHRONOUS

url, key = sys.argv[1], sys.argv[2]
with InfluxDBClient(url=url, token=key, org="fleet") as client:
    api = client.write_api(write_options=SYNCHRONOUS)
    api.write(bucket="telegraf", record=[
        Point("e2e_disk").tag("host", "web-1").field("used_percent", 41.5).time(1765000000, WritePrecision.S),
        Point("e2e_disk").tag("host", "web-2").field("used_percent", 12.25).time(1765000000, WritePrecision.S),
    ], write_precision=WritePrecision.S)
print("written")
"#;

fn run_python(dir: &Path, name: &str, script: &str, args: &[&str]) -> anyhow::Result<()> {
    let python = fleet_e2e::python_bin()?;
    let file = write_file(dir, name, script)?;
    let out = std::process::Command::new(python)
        .arg(&file)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "{name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A program of Debian's Prometheus packages on PATH.
fn on_path(name: &str) -> anyhow::Result<std::path::PathBuf> {
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("{name} is not on PATH: run `scripts/services.sh up` (it installs Debian's package)")
}

/// What `promtool query` printed as JSON (`-o json`).
fn promtool(dir: &Path, args: &[&str]) -> anyhow::Result<Value> {
    let out = std::process::Command::new(on_path("promtool")?)
        .current_dir(dir)
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "promtool {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// An answer as comparable rows: (labels, time, value) per point, sorted.
fn rows(v: &Value) -> anyhow::Result<Vec<(String, String, f64)>> {
    let mut out = Vec::new();
    for s in v.as_array().context("a vector or matrix")? {
        let metric = s["metric"].to_string();
        let points: Vec<&Value> = match s.get("values") {
            Some(vs) => vs.as_array().context("values")?.iter().collect(),
            None => vec![&s["value"]],
        };
        for p in points {
            let value: f64 = p[1].as_str().context("value")?.parse()?;
            out.push((metric.clone(), p[0].to_string(), value));
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    Ok(out)
}

/// Asks both servers the same instant and range queries at a fixed time a few seconds
/// back, until Fleetstream's answers (which may lag by the remote-write delay) equal
/// Prometheus', within float tolerance.
async fn compare_with_prometheus(dir: &Path, fleet: &str, prometheus: &str) -> anyhow::Result<()> {
    // The time of Prometheus' latest scrape of node_exporter: both must answer for it.
    let v: Value = reqwest::Client::new()
        .get(format!("{prometheus}/api/v1/query"))
        .query(&[("query", "timestamp(up{job=\"node\"})")])
        .send()
        .await?
        .json()
        .await?;
    let at: f64 = v["data"]["result"][0]["value"][1]
        .as_str()
        .with_context(|| format!("no scrape time in {v}"))?
        .parse()?;
    let (start, end) = (format!("{:.3}", at - 20.0), format!("{at:.3}"));
    let time = end.clone();
    let queries: [(&str, &str); 4] = [
        ("instant", "node_load1"),
        ("instant", "sum by (job) (up)"),
        ("range", "rate(node_cpu_seconds_total{mode=\"idle\"}[10s])"),
        ("range", "count(node_memory_MemTotal_bytes) + 1"),
    ];
    let ask =
        |server: &str, kind: &str, expr: &str| -> anyhow::Result<Vec<(String, String, f64)>> {
            let v = if kind == "instant" {
                promtool(
                    dir,
                    &[
                        "query", "instant", "-o", "json", "--time", &time, server, expr,
                    ],
                )?
            } else {
                promtool(
                    dir,
                    &[
                        "query", "range", "-o", "json", "--start", &start, "--end", &end, "--step",
                        "2s", server, expr,
                    ],
                )?
            };
            rows(&v)
        };
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut differ = Vec::new();
        for (kind, expr) in queries {
            let want = ask(prometheus, kind, expr)?;
            ensure!(!want.is_empty(), "Prometheus has nothing for {expr}");
            let got = ask(fleet, kind, expr)?;
            let same = want.len() == got.len()
                && want.iter().zip(&got).all(|(w, g)| {
                    w.0 == g.0 && w.1 == g.1 && (w.2 - g.2).abs() <= 1e-9 * w.2.abs().max(1.0)
                });
            if !same {
                differ.push(format!(
                    "{kind} {expr}:\n  Prometheus  {want:?}\n  Fleetstream {got:?}"
                ));
            }
        }
        if differ.is_empty() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "Fleetstream's answers never equalled Prometheus':\n{}",
            differ.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn label<'a>(sample: &'a Value, name: &str) -> Option<&'a str> {
    sample["labels"]
        .as_array()?
        .iter()
        .find(|l| l["name"] == name)?["value"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_the_otel_sdk_and_influxdb_client_write_through_the_gateway(
) -> anyhow::Result<()> {
    let prometheus = on_path("prometheus")?;
    let node_exporter_bin = on_path("prometheus-node-exporter")?;
    fleet_e2e::python_bin()?;
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-proto-")
        .tempdir()?;
    let prom_port = free_port()?;
    let local = fleet_e2e::LocalUp::start(dir.path(), "").await?;
    let client = reqwest::Client::new();
    // A tenant and an ingest key for it, through the admin API.
    let (tenant_id, key) = local.tenant_with_ingest_key(&client, "collectors").await?;
    let fleet_e2e::LocalUp {
        proc: mut up,
        gateway,
        api,
        data,
        admin_key,
    } = local;

    // node_exporter on a free port, its cheap collectors only.
    let ne_port = free_port()?;
    let node_exporter = Proc::start_program(
        "node-exporter",
        dir.path(),
        &node_exporter_bin,
        &[
            &format!("--web.listen-address=127.0.0.1:{ne_port}"),
            "--collector.disable-defaults",
            "--collector.loadavg",
            "--collector.meminfo",
            "--collector.cpu",
        ],
        &[],
    )?;
    // Prometheus scrapes itself and node_exporter and remote-writes to the gateway.
    let prom_cfg = write_file(
        dir.path(),
        "prometheus.yml",
        &format!(
            r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: ["127.0.0.1:{prom_port}"]
  - job_name: node
    static_configs:
      - targets: ["127.0.0.1:{ne_port}"]
remote_write:
  - url: {gateway}/api/v1/write
    authorization:
      credentials: {key}
    queue_config:
      batch_send_deadline: 1s
"#
        ),
    )?;
    let prom_data = dir.path().join("prom-data");
    let prom = Proc::start_program(
        "prometheus",
        dir.path(),
        &prometheus,
        &[
            &format!("--config.file={}", path(&prom_cfg)?),
            &format!("--storage.tsdb.path={}", path(&prom_data)?),
            &format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &[],
    )?;

    run_python(
        dir.path(),
        "otel.py",
        OTEL_SCRIPT,
        &[&format!("{gateway}/v1/metrics"), &key],
    )?;
    run_python(dir.path(), "influx.py", INFLUX_SCRIPT, &[&gateway, &key])?;

    // Wait until Prometheus scraped node_exporter (its own API), then until two more
    // remote-write sends reached the gateway (it counts the samples): Prometheus sends its
    // write-ahead log in order, so the scrape is then through.
    let prom_url = format!("http://127.0.0.1:{prom_port}");
    wait_for(
        "Prometheus to scrape node_exporter",
        WAIT,
        &[&up, &prom, &node_exporter],
        || async {
            let v: Value = client
                .get(format!("{prom_url}/api/v1/query"))
                .query(&[("query", "up{job=\"node\"}")])
                .send()
                .await?
                .json()
                .await?;
            Ok((v["data"]["result"][0]["value"][1] == "1").then_some(()))
        },
    )
    .await?;
    let accepted = || async {
        let text = client
            .get(format!("{gateway}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        anyhow::Ok(fleet_e2e::prometheus_sum_labeled(
            &text,
            "fleet_gateway_samples_accepted_total",
            &[("protocol", "remote_write")],
        ))
    };
    for _ in 0..2 {
        let before = accepted().await?;
        wait_for(
            "a remote-write send",
            WAIT,
            &[&up, &prom, &node_exporter],
            || async { Ok((accepted().await? > before).then_some(())) },
        )
        .await?;
    }
    // promtool (Prometheus' CLI) asks Fleetstream's Prometheus API and Prometheus itself
    // the same questions about the samples Prometheus remote-wrote; the answers must be
    // the same series, times and values. A viewer of the tenant asks, its key as the basic
    // auth password (promtool's `query instant` sends no other header).
    let viewer: Value = client
        .post(format!("{api}/api/v1/users"))
        .bearer_auth(&admin_key)
        .json(&serde_json::json!({"name": "grafana", "role": "viewer", "tenant_id": tenant_id}))
        .send()
        .await?
        .json()
        .await?;
    let viewer_key = viewer["api_key"]["key"]
        .as_str()
        .with_context(|| format!("no key in {viewer}"))?;
    let fleet_api = api.replacen("http://", &format!("http://viewer:{viewer_key}@"), 1);
    compare_with_prometheus(dir.path(), &fleet_api, &prom_url).await?;
    drop(prom);
    up.stop()?;

    let out_file = dir.path().join("samples.jsonl");
    let out = fleet_e2e::run_to_end(
        dir.path(),
        &[
            "export",
            "--topic",
            "fleet.samples.v1",
            "--format",
            "jsonl",
            "--out",
            path(&out_file)?,
            "--event-log",
            &format!("file://{}", data.join("log").display()),
        ],
    )?;
    ensure!(out.success, "export failed:\n{}", out.output);
    let mut by_source: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    for line in std::fs::read_to_string(&out_file)?.lines() {
        let v: Value = serde_json::from_str(line)?;
        let record = &v["record"];
        ensure!(record["tenant_id"] == tenant_id.as_str(), "{record}");
        let source = record["source"].as_str().context("source")?.to_owned();
        for s in record["samples"].as_array().context("samples")? {
            by_source.entry(source.clone()).or_default().push(s.clone());
        }
    }
    // Prometheus: its own `up` series, job and instance labels as it sets them.
    let prom_samples = by_source
        .get("PROMETHEUS_REMOTE_WRITE")
        .context("no remote-write samples")?;
    ensure!(
        prom_samples.iter().any(|s| s["metric"] == "up"
            && label(s, "job") == Some("prometheus")
            && label(s, "instance") == Some(&format!("127.0.0.1:{prom_port}"))),
        "no up{{job=\"prometheus\"}} among {} remote-write samples",
        prom_samples.len()
    );
    // node_exporter's samples, through Prometheus, with the target's job and instance.
    ensure!(
        prom_samples.iter().any(|s| s["metric"] == "node_load1"
            && label(s, "job") == Some("node")
            && label(s, "instance") == Some(&format!("127.0.0.1:{ne_port}"))),
        "no node_load1{{job=\"node\"}} among {} remote-write samples",
        prom_samples.len()
    );
    // OTLP: the counter as a Prometheus counter, the gauge, the histogram's buckets, sum
    // and count; the resource's service name as `job`.
    let otlp = by_source.get("OTLP").context("no OTLP samples")?;
    let find = |name: &str| otlp.iter().find(|s| s["metric"] == name);
    let requests = find("e2e_requests_total").context("e2e_requests_total")?;
    ensure!(requests["value"] == 5.0, "{requests}");
    ensure!(label(requests, "job") == Some("checkout"), "{requests}");
    ensure!(label(requests, "route") == Some("/pay"), "{requests}");
    ensure!(find("e2e_queue_depth").is_some_and(|s| s["value"] == 7.0));
    let count = find("e2e_latency_seconds_count").context("histogram count")?;
    ensure!(count["value"] == 3.0, "{count}");
    ensure!(otlp
        .iter()
        .any(|s| s["metric"] == "e2e_latency_seconds_bucket" && label(s, "le") == Some("+Inf")));
    // Influx: measurement_field, tags as labels, the time as written.
    let influx = by_source.get("INFLUX").context("no Influx samples")?;
    let web1 = influx
        .iter()
        .find(|s| label(s, "host") == Some("web-1"))
        .context("web-1")?;
    ensure!(web1["metric"] == "e2e_disk_used_percent", "{web1}");
    ensure!(web1["value"] == 41.5, "{web1}");
    ensure!(influx.len() == 2, "{influx:?}");
    Ok(())
}
