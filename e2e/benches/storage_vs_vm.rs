//! The storage half against VictoriaMetrics, in one run, on the same data.
//!
//! Both systems run on the same two cores one after the other, fed by this process over
//! loopback with the same concurrency, the same samples and the same request shape:
//!
//! * **Fleetstream**: `fleetstream up` (the release binary) on a temporary data directory,
//!   `auth = "off"` and no rate limit (the figures are the storage path, not credential
//!   checks). Reports go to the gateway as JSON, as agents send them. Timing runs from
//!   the first POST until every report is in the time-series store and queryable through
//!   the API (the projection's `fleet_projection_records_total{projection="timeseries"}`
//!   reaches the count posted; afterwards, untimed, the API's history of every agent and
//!   series is checked sample by sample-count).
//! * **VictoriaMetrics** (Debian's `victoria-metrics`): the same samples as Influx line
//!   protocol (`/write`, one line per measurement and subject, as Telegraf sends them),
//!   the same request shape; timing stops when `/internal/force_flush` returned.
//!
//! Shapes (`BENCH_SHAPE=backfill|live|both`, default both):
//! * **backfill**: BENCH_AGENTS (200) agents, BENCH_REPORTS (100,000) reports in all,
//!   each request carrying BENCH_BATCH (50) consecutive reports of one agent;
//! * **live**: BENCH_LIVE_AGENTS (10,000) agents × BENCH_LIVE_ROUNDS (10) intervals, one
//!   report per request, the agents of one interval before those of the next.
//!
//! Beside the wall-clock throughput, each shape prints **samples per CPU second** of each
//! system while timed (user + system time of its processes from `/proc`; on Kafka only
//! Fleetstream's processes, not the broker's or the CQL server's). On shared cores the
//! wall-clock ratio moves with whatever else runs; the CPU ratio moves much less.
//!
//! Then, on the back-fill stores: **disk** (the store directory after a clean stop for
//! Fleetstream, after the merges settled for VictoriaMetrics), **freshness** (single
//! reports posted to the running `up`; time from the 202 until the API returns the
//! sample), and the **history query** (BENCH_QUERY_AGENTS (10) agents × 24 h at 10 s
//! loaded into both; a 24 h chart of 3 metrics at 5-minute buckets, BENCH_QUERIES (200)
//! times against each: the API's `/api/v1/agents/{id}/metrics` and VictoriaMetrics'
//! `query_range` of `avg_over_time(...[5m])` with a 5 m step).
//!
//! usage: cargo build --release -p fleetstream && \
//!        FLEETSTREAM_BIN=$PWD/target/release/fleetstream cargo bench -p fleet-e2e --bench storage_vs_vm
//! BENCH_STACK=kafka runs Fleetstream as `fleetstream gateway` and `fleetstream
//! projections` (serving the API) on a private Kafka broker (the jars `scripts/services.sh
//! up` cached), a fresh PostgreSQL database and a fresh keyspace on the CQL server
//! (`FLEET_SCYLLA_URI`, default 127.0.0.1:9042): `eval "$(bash scripts/services.sh env)"`
//! first. There the disk figure is not taken (the chunks are in the CQL server).
//! Other knobs: BENCH_BACKFILL_CLIENTS (connections for the back-fill: one per agent
//! by default, at most 256, as each agent sends its own spool), BENCH_CLIENTS (16
//! concurrent connections for the query load), BENCH_LIVE_CLIENTS (256 for the live
//! shape: 10,000 agents are 10,000 senders), BENCH_DATA (`realistic`, the generator's varying values, or `constant`, the
//! fixture report), BENCH_FRESHNESS (200 reports), BENCH_SKIP (comma list of phases to
//! skip: backfill, live, freshness, query). Each connection sends its agents' requests
//! in order, one at a time, as an agent does (`fleet_e2e::load::post_all`).

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_e2e::load::{batches, gateway_requests, lane_of, post_all, report_in, Request};
use fleet_e2e::victoria::{self, VictoriaMetrics};
use fleet_e2e::{env_num, free_port, wait_for, write_file, Proc};
use fleet_schemas::api::MetricBatch;
use fleet_schemas::samples::samples;
use fleet_schemas::MetricReport;
use fleet_test_support::services::{scylla_hosts, ScyllaKeyspace};

const TENANT: &str = "default";
const INTERVAL_MICROS: i64 = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Data {
    Realistic,
    Constant,
}

#[derive(Debug, Clone)]
struct Settings {
    bin: PathBuf,
    clients: usize,
    backfill_clients: usize,
    live_clients: usize,
    data: Data,
    agents: usize,
    reports: usize,
    batch: usize,
    live_agents: usize,
    live_rounds: usize,
    freshness: usize,
    query_agents: usize,
    queries: usize,
    skip: Vec<String>,
    stack: Stack,
}

/// What Fleetstream runs on (`BENCH_STACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stack {
    /// `fleetstream up`: the embedded log, SQLite, the embedded time-series store.
    Embedded,
    /// `fleetstream gateway` and `fleetstream projections` (which serves the API) on a
    /// private Kafka broker, a fresh PostgreSQL database and a fresh keyspace on the CQL
    /// server (`FLEET_SCYLLA_URI`, Cassandra under `scripts/services.sh`).
    Kafka,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let bin = fleet_e2e::fleetstream_bin()?;
        if !bin.is_absolute() {
            bail!(
                "FLEETSTREAM_BIN={} must be an absolute path (e.g. $PWD/target/release/fleetstream)",
                bin.display()
            );
        }
        let data = match std::env::var("BENCH_DATA").as_deref() {
            Ok("constant") => Data::Constant,
            Ok("realistic") | Err(_) => Data::Realistic,
            Ok(other) => bail!("BENCH_DATA={other:?}: use realistic or constant"),
        };
        let stack = match std::env::var("BENCH_STACK").as_deref() {
            Ok("embedded") | Err(_) => Stack::Embedded,
            Ok("kafka") => Stack::Kafka,
            Ok(other) => bail!("BENCH_STACK={other:?}: use embedded or kafka"),
        };
        let mut skip: Vec<String> = std::env::var("BENCH_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        match std::env::var("BENCH_SHAPE").as_deref() {
            Ok("backfill") => skip.push("live".into()),
            Ok("live") => skip.push("backfill".into()),
            Ok("both") | Err(_) => {}
            Ok(other) => bail!("BENCH_SHAPE={other:?}: use backfill, live or both"),
        }
        let agents = env_num("BENCH_AGENTS", 200)?;
        let s = Settings {
            bin,
            clients: env_num("BENCH_CLIENTS", 16)?,
            // One connection per agent, as agents send their spools (at most 256).
            backfill_clients: env_num("BENCH_BACKFILL_CLIENTS", agents.min(256))?,
            live_clients: env_num("BENCH_LIVE_CLIENTS", 256)?,
            data,
            agents,
            reports: env_num("BENCH_REPORTS", 100_000)?,
            batch: env_num("BENCH_BATCH", 50)?,
            live_agents: env_num("BENCH_LIVE_AGENTS", 10_000)?,
            live_rounds: env_num("BENCH_LIVE_ROUNDS", 10)?,
            freshness: env_num("BENCH_FRESHNESS", 200)?,
            query_agents: env_num("BENCH_QUERY_AGENTS", 10)?,
            queries: env_num("BENCH_QUERIES", 200)?,
            skip,
            stack,
        };
        if s.agents == 0
            || s.reports < s.agents
            || s.batch == 0
            || s.clients == 0
            || s.backfill_clients == 0
            || s.live_clients == 0
        {
            bail!("BENCH_AGENTS, BENCH_BATCH, BENCH_CLIENTS, BENCH_BACKFILL_CLIENTS and BENCH_LIVE_CLIENTS must be at least 1, BENCH_REPORTS at least BENCH_AGENTS");
        }
        Ok(s)
    }

    fn runs(&self, phase: &str) -> bool {
        !self.skip.iter().any(|s| s == phase)
    }
}

/// `count` reports for each of `agents` agents from `start`, 10 s apart, in time order
/// across the fleet (all agents' first reports, then the second ones, ...).
fn fleet(data: Data, seed: u64, agents: usize, count: usize, start: i64) -> Vec<MetricReport> {
    match data {
        Data::Realistic => {
            fleet_schemas::fixtures::fleet_reports(seed, agents, start, INTERVAL_MICROS, count)
                .collect()
        }
        Data::Constant => (0..count)
            .flat_map(|i| {
                (0..agents).map(move |a| {
                    fleet_schemas::fixtures::metric_report(
                        TENANT,
                        &format!("agent-{seed}-{a:05}"),
                        start + i as i64 * INTERVAL_MICROS,
                    )
                })
            })
            .collect(),
    }
}

fn sample_count(reports: &[MetricReport]) -> usize {
    reports.iter().map(|r| samples(r).len()).sum()
}

fn influx_requests(vm: &str, groups: &[Vec<&MetricReport>]) -> Vec<Request> {
    groups
        .iter()
        .map(|g| {
            let mut text = String::new();
            for r in g {
                victoria::influx_lines(r, &mut text);
            }
            Request {
                url: format!("{vm}/write"),
                body: text.into_bytes().into(),
                content_type: "text/plain",
                lane: lane_of(&g[0].agent_id),
            }
        })
        .collect()
}

/// Fleetstream under test: `fleetstream up` (its data directory holds the time series),
/// or the gateway and projections roles on a private Kafka broker, PostgreSQL and a CQL
/// keyspace ([`Stack`]); its ports and admin key.
struct Up {
    proc: Proc,
    /// The gateway's process when the roles run apart (`proc` is then the projections').
    gateway_proc: Option<Proc>,
    gateway: String,
    api: String,
    admin_key: String,
    /// `up`'s data directory; `None` on Kafka (the time series are in the CQL server).
    data: Option<PathBuf>,
    kafka: Option<fleet_e2e::PrivateKafka>,
    keyspace: Option<ScyllaKeyspace>,
}

/// CPU seconds the processes used so far (0 for one that exited).
fn cpu(procs: &[&Proc]) -> f64 {
    procs.iter().filter_map(|p| p.cpu_seconds()).sum()
}

impl Up {
    /// Fleetstream's processes: `up`, or the projections and the gateway.
    fn procs(&self) -> Vec<&Proc> {
        std::iter::once(&self.proc)
            .chain(self.gateway_proc.as_ref())
            .collect()
    }

    async fn start(s: &Settings, dir: &Path) -> anyhow::Result<Up> {
        std::fs::create_dir_all(dir)?;
        if s.stack == Stack::Kafka {
            return Up::start_roles(s, dir).await;
        }
        let (gw_port, api_port) = (free_port()?, free_port()?);
        let admin_key = format!("fsk_bench_{}", uuid::Uuid::new_v4().simple());
        let cfg = write_file(
            dir,
            "fleetstream.toml",
            &format!(
                "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\nrate-limit-per-second = 0\nmax-reports-per-batch = 1000\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n[api]\nadmin-api-key = \"{admin_key}\"\nkey-requests-per-second = 0\n"
            ),
        )?;
        let data = dir.join("data");
        let proc = Proc::start_program(
            "up",
            dir,
            &s.bin,
            &[
                "up",
                "--data-dir",
                data.to_str().context("utf-8 path")?,
                "--config",
                cfg.to_str().context("utf-8 path")?,
            ],
            &[("RUST_LOG", "warn")],
        )?;
        let up = Up {
            proc,
            gateway_proc: None,
            gateway: format!("http://127.0.0.1:{gw_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            admin_key,
            data: Some(data),
            kafka: None,
            keyspace: None,
        };
        up.wait_ready().await?;
        Ok(up)
    }

    /// The gateway and projections roles on a private Kafka broker, a fresh PostgreSQL
    /// database (registry and read model) and a fresh CQL keyspace (time series).
    async fn start_roles(s: &Settings, dir: &Path) -> anyhow::Result<Up> {
        let kafka = fleet_e2e::PrivateKafka::start().await?;
        let db = fleet_e2e::fresh_database().await?;
        let hosts = scylla_hosts();
        let keyspace = ScyllaKeyspace::new(&hosts, "fleet_bench");
        let (gw_port, api_port) = (free_port()?, free_port()?);
        let admin_key = format!("fsk_bench_{}", uuid::Uuid::new_v4().simple());
        let log = kafka.url();
        let gw_cfg = write_file(
            dir,
            "gateway.toml",
            &format!(
                "listen = \"127.0.0.1:{gw_port}\"\nregistry = \"{db}\"\nauth = \"off\"\nrate-limit-per-second = 0\nmax-reports-per-batch = 1000\n[event-log]\nurl = \"{log}\"\n"
            ),
        )?;
        let pj_cfg = write_file(
            dir,
            "projections.toml",
            &format!(
                "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"{}\"\n[event-log]\nurl = \"{log}\"\n[api]\nadmin-api-key = \"{admin_key}\"\nkey-requests-per-second = 0\n",
                keyspace.url
            ),
        )?;
        let start = |name: &str, role: &str, cfg: &Path| {
            Proc::start_program(
                name,
                dir,
                &s.bin,
                &[role, "--config", cfg.to_str().unwrap_or_default()],
                &[("RUST_LOG", "warn")],
            )
        };
        let gateway_proc = start("gateway", "gateway", &gw_cfg)?;
        let proc = start("projections", "projections", &pj_cfg)?;
        let up = Up {
            proc,
            gateway_proc: Some(gateway_proc),
            gateway: format!("http://127.0.0.1:{gw_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            admin_key,
            data: None,
            kafka: Some(kafka),
            keyspace: Some(keyspace),
        };
        up.wait_ready().await?;
        Ok(up)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let procs = self.procs();
        for url in [
            format!("{}/readyz", self.gateway),
            format!("{}/readyz", self.api),
        ] {
            fleet_e2e::wait_ready(&url, Duration::from_secs(180), &procs).await?;
        }
        Ok(())
    }

    /// Stops every process (and the private broker), dropping the keyspace.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gateway_proc.as_mut() {
            g.stop()?;
        }
        self.proc.stop()?;
        if let Some(k) = self.kafka.as_mut() {
            k.stop()?;
        }
        if let Some(ks) = self.keyspace.take() {
            ks.drop_now().await?;
        }
        Ok(())
    }

    /// Reports the time-series projection has applied.
    async fn timeseries_records(&self, client: &reqwest::Client) -> anyhow::Result<f64> {
        let text = client
            .get(format!("{}/metrics", self.api))
            .send()
            .await?
            .text()
            .await?;
        Ok(fleet_e2e::prometheus_sum_labeled(
            &text,
            "fleet_projection_records_total",
            &[("projection", "timeseries")],
        ))
    }

    /// Waits until the time-series projection applied `reports` records in all.
    async fn wait_stored(&self, client: &reqwest::Client, reports: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1800);
        loop {
            if self.timeseries_records(client).await? >= reports as f64 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the time-series projection did not catch up within 30 min\n{}",
                    self.proc.log_tail(30)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn api_client(&self) -> anyhow::Result<reqwest::Client> {
        fleet_e2e::api_client(&self.admin_key)
    }

    /// The API's sample count for `agent`'s `series` in [start, end).
    async fn stored_samples(
        &self,
        api: &reqwest::Client,
        agent: &str,
        series: &[String],
        start: i64,
        end: i64,
    ) -> anyhow::Result<u64> {
        let mut total = 0;
        for chunk in series.chunks(20) {
            let url = format!(
                "{}/api/v1/agents/{agent}/metrics?metric={}&start={}&end={}&interval=1h",
                self.api,
                chunk.join(","),
                fleet_e2e::micros_rfc3339(start),
                fleet_e2e::micros_rfc3339(end),
            );
            let Some(h) = fleet_e2e::get_json(api, &url).await? else {
                return Ok(0);
            };
            for s in h["series"].as_array().into_iter().flatten() {
                total += s["buckets"]
                    .as_array()
                    .map(|b| {
                        b.iter()
                            .map(|b| b["count"].as_u64().unwrap_or(0))
                            .sum::<u64>()
                    })
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Checks, through the API, that every sample of `reports` is stored (per agent, the
    /// sample count of each of its series over the reports' window).
    async fn verify(&self, reports: &[MetricReport]) -> anyhow::Result<()> {
        let api = self.api_client()?;
        let mut per_agent: std::collections::BTreeMap<&str, (Vec<String>, u64, i64, i64)> =
            Default::default();
        for r in reports {
            let e = per_agent
                .entry(&r.agent_id)
                .or_insert_with(|| (Vec::new(), 0, i64::MAX, i64::MIN));
            for s in samples(r) {
                let name = s.series();
                if !e.0.contains(&name) {
                    e.0.push(name);
                }
                e.1 += 1;
            }
            e.2 = e.2.min(r.occurred_at);
            e.3 = e.3.max(r.occurred_at);
        }
        // Every agent of a small fleet; an even spread of 200 of a large one.
        let step = (per_agent.len() / 200).max(1);
        for (agent, (series, expected, first, last)) in per_agent.iter().step_by(step) {
            let got = wait_for(
                &format!("agent {agent}'s samples through the API"),
                Duration::from_secs(120),
                &[&self.proc],
                || async {
                    let got = self
                        .stored_samples(&api, agent, series, *first, last + 1)
                        .await?;
                    Ok((got >= *expected).then_some(got))
                },
            )
            .await?;
            if got != *expected {
                bail!("agent {agent}: the API has {got} samples, {expected} were posted");
            }
        }
        Ok(())
    }

    /// Stops cleanly and returns the time-series directory's size (`None` on Kafka: the
    /// chunks are in the CQL server).
    async fn stop_and_measure(&mut self) -> anyhow::Result<Option<u64>> {
        self.stop().await?;
        let Some(d) = &self.data else {
            return Ok(None);
        };
        let dir = d.join("timeseries");
        let bytes = victoria::dir_bytes(&dir)?;
        print_store_breakdown(dir).await?;
        Ok(Some(bytes))
    }
}

struct Row {
    shape: &'static str,
    samples: usize,
    fleet_secs: f64,
    vm_secs: f64,
    fleet_bytes: Option<u64>,
    vm_bytes: Option<u64>,
    /// CPU seconds Fleetstream's processes (not Kafka's or the CQL server's) and
    /// VictoriaMetrics used while timed.
    fleet_cpu: f64,
    vm_cpu: f64,
}

async fn run_shape(
    s: &Settings,
    root: &Path,
    shape: &'static str,
    reports: &[MetricReport],
    batch: usize,
    clients: usize,
    measure_disk: bool,
) -> anyhow::Result<(Row, Option<Up>)> {
    let samples = sample_count(reports);
    let groups = batches(reports, batch);
    println!(
        "[{shape}] {} reports, {samples} samples, {} requests, {clients} clients",
        reports.len(),
        groups.len(),
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;

    // VictoriaMetrics first.
    let vm_dir = root.join(format!("vm-{shape}"));
    std::fs::create_dir_all(&vm_dir)?;
    let mut vm = VictoriaMetrics::start(&vm_dir).await?;
    let requests = Arc::new(influx_requests(vm.url(), &groups));
    let vm_cpu0 = cpu(&[vm.proc()]);
    let started = Instant::now();
    post_all(&client, requests, clients, &[]).await?;
    vm.force_flush(&client).await?;
    let vm_secs = started.elapsed().as_secs_f64();
    let vm_cpu = cpu(&[vm.proc()]) - vm_cpu0;
    let vm_bytes = if measure_disk {
        Some(
            vm.settled_bytes(Duration::from_secs(10), Duration::from_secs(120))
                .await?,
        )
    } else {
        None
    };
    vm.stop()?;
    println!(
        "[{shape}] VictoriaMetrics: {vm_secs:.2} s, {:.0} samples/s",
        samples as f64 / vm_secs
    );

    // Fleetstream.
    let mut up = Up::start(s, &root.join(format!("fleet-{shape}"))).await?;
    let requests = Arc::new(gateway_requests(&up.gateway, &groups)?);
    let before = up.timeseries_records(&client).await?;
    let fleet_cpu0 = cpu(&up.procs());
    let started = Instant::now();
    post_all(&client, requests, clients, &[]).await?;
    let posted = started.elapsed().as_secs_f64();
    up.wait_stored(&client, reports.len() + before as usize)
        .await?;
    let fleet_secs = started.elapsed().as_secs_f64();
    let fleet_cpu = cpu(&up.procs()) - fleet_cpu0;
    println!(
        "[{shape}] Fleetstream: {fleet_secs:.2} s ({posted:.2} s to post), {:.0} samples/s, {fleet_cpu:.1} CPU s (VictoriaMetrics {vm_cpu:.1})",
        samples as f64 / fleet_secs
    );
    up.verify(reports).await?;
    println!("[{shape}] verified through the API: every agent's sample count matches");
    let (fleet_bytes, up) = if measure_disk {
        // Measured after the freshness and query phases reuse this `up`.
        (None, Some(up))
    } else {
        up.stop().await?;
        (None, None)
    };
    Ok((
        Row {
            shape,
            samples,
            fleet_secs,
            vm_secs,
            fleet_bytes,
            vm_bytes,
            fleet_cpu,
            vm_cpu,
        },
        up,
    ))
}

/// Freshness: single reports posted to a running `up`, each followed by polling the API
/// until its sample is there; returns the delays from the 202 (ms, sorted).
async fn freshness(s: &Settings, up: &Up) -> anyhow::Result<Vec<f64>> {
    let client = reqwest::Client::new();
    let api = up.api_client()?;
    let base = fleet_e2e::now_micros() - 3_600_000_000;
    let agents = 10usize;
    let reports = fleet(s.data, 77, agents, s.freshness.div_ceil(agents), base);
    let mut delays = Vec::with_capacity(reports.len());
    for r in reports.iter().take(s.freshness) {
        let body = MetricBatch {
            reports: vec![report_in(r)?],
        };
        let resp = client
            .post(format!(
                "{}/api/v1/agents/{}/metrics",
                up.gateway, r.agent_id
            ))
            .json(&body)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("freshness POST answered {}", resp.status());
        }
        let acked = Instant::now();
        let series = vec!["cpu.percent".to_owned()];
        loop {
            let n = up
                .stored_samples(&api, &r.agent_id, &series, r.occurred_at, r.occurred_at + 1)
                .await
                .unwrap_or(0);
            if n >= 1 {
                break;
            }
            if acked.elapsed() > Duration::from_secs(60) {
                bail!("a sample was not visible 60 s after its 202");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        delays.push(acked.elapsed().as_secs_f64() * 1e3);
    }
    delays.sort_by(f64::total_cmp);
    Ok(delays)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// The history query: 24 h of 3 metrics at 5-minute buckets, against both.
async fn history_query(s: &Settings, root: &Path) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let day = 24 * 360;
    let end = (fleet_e2e::now_micros() / 3_600_000_000) * 3_600_000_000;
    let start = end - day as i64 * INTERVAL_MICROS;
    let reports = fleet(s.data, 99, s.query_agents, day, start);
    let groups = batches(&reports, s.batch.max(200));
    let clients = s.clients.min(s.query_agents).max(1);
    let agents: Vec<String> = (0..s.query_agents)
        .filter_map(|a| reports.get(a).map(|r| r.agent_id.clone()))
        .collect();
    println!(
        "[query] loading {} agents × 24 h ({} samples) into both",
        agents.len(),
        sample_count(&reports)
    );
    let client = reqwest::Client::new();
    let metrics = ["cpu.percent", "memory.percent", "load.1"];

    let vm_dir = root.join("vm-query");
    std::fs::create_dir_all(&vm_dir)?;
    let mut vm = VictoriaMetrics::start(&vm_dir).await?;
    post_all(
        &client,
        Arc::new(influx_requests(vm.url(), &groups)),
        clients,
        &[],
    )
    .await?;
    vm.force_flush(&client).await?;
    let names = metrics
        .iter()
        .map(|m| m.replace('.', "_"))
        .collect::<Vec<_>>()
        .join("|");
    let mut vm_ms = Vec::with_capacity(s.queries);
    for i in 0..s.queries {
        let agent = &agents[i % agents.len()];
        let q = format!("avg_over_time({{__name__=~\"{names}\",agent=\"{agent}\"}}[5m])");
        let t = Instant::now();
        let r = client
            .get(format!("{}/api/v1/query_range", vm.url()))
            .query(&[
                ("query", q.as_str()),
                ("start", &(start / 1_000_000).to_string()),
                ("end", &(end / 1_000_000).to_string()),
                ("step", "5m"),
            ])
            .send()
            .await?;
        let body: serde_json::Value = r.json().await?;
        vm_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let n = body["data"]["result"].as_array().map_or(0, Vec::len);
        if n != metrics.len() {
            bail!(
                "VictoriaMetrics returned {n} series for {agent}, not {}: {body}",
                metrics.len()
            );
        }
    }
    vm.stop()?;

    let mut up = Up::start(s, &root.join("fleet-query")).await?;
    post_all(
        &client,
        Arc::new(gateway_requests(&up.gateway, &groups)?),
        clients,
        &[],
    )
    .await?;
    up.wait_stored(&client, reports.len()).await?;
    up.verify(&reports).await?;
    let api = up.api_client()?;
    let mut fleet_ms = Vec::with_capacity(s.queries);
    for i in 0..s.queries {
        let agent = &agents[i % agents.len()];
        let url = format!(
            "{}/api/v1/agents/{agent}/metrics?metric={}&start={}&end={}&interval=5m",
            up.api,
            metrics.join(","),
            fleet_e2e::micros_rfc3339(start),
            fleet_e2e::micros_rfc3339(end),
        );
        let t = Instant::now();
        let h = fleet_e2e::get_json(&api, &url)
            .await?
            .context("history answered 404")?;
        fleet_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let buckets = h["series"][0]["buckets"].as_array().map_or(0, Vec::len);
        if buckets < 280 {
            bail!("the API returned {buckets} buckets for {agent}'s 24 h, not 288");
        }
    }
    up.stop().await?;
    vm_ms.sort_by(f64::total_cmp);
    fleet_ms.sort_by(f64::total_cmp);
    Ok((fleet_ms, vm_ms))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let s = Settings::from_env()?;
    victoria::binary()?;
    let dir = tempfile::Builder::new()
        .prefix("fleet-storage-vs-vm-")
        .tempdir()?;
    let root = dir.path();
    let vm_version = victoria::version(&victoria::binary()?);
    println!(
        "storage vs VictoriaMetrics ({vm_version}); fleetstream {}; data {:?}; stack {:?}",
        s.bin.display(),
        s.data,
        s.stack
    );
    let now = fleet_e2e::now_micros();
    let mut rows = Vec::new();
    let mut kept_up = None;
    let mut freshness_ms = Vec::new();
    if s.runs("backfill") {
        let per_agent = s.reports / s.agents;
        let start = now - (per_agent as i64 + 60) * INTERVAL_MICROS;
        let reports = fleet(s.data, 1, s.agents, per_agent, start);
        let (row, up) = run_shape(
            &s,
            root,
            "backfill",
            &reports,
            s.batch,
            s.backfill_clients,
            true,
        )
        .await?;
        rows.push(row);
        kept_up = up;
    }
    if s.runs("live") {
        let start = now - (s.live_rounds as i64 + 60) * INTERVAL_MICROS;
        let reports = fleet(s.data, 2, s.live_agents, s.live_rounds, start);
        let (row, _) = run_shape(&s, root, "live", &reports, 1, s.live_clients, false).await?;
        rows.push(row);
    }
    if let Some(mut up) = kept_up {
        if s.runs("freshness") {
            freshness_ms = freshness(&s, &up).await?;
        }
        let bytes = up.stop_and_measure().await?;
        if let Some(r) = rows.iter_mut().find(|r| r.shape == "backfill") {
            r.fleet_bytes = bytes;
        }
    }
    let query = if s.runs("query") {
        Some(history_query(&s, root).await?)
    } else {
        None
    };

    println!();
    println!("| shape | samples | Fleetstream samples/s | VictoriaMetrics samples/s | ratio | Fleetstream samples per CPU s | VictoriaMetrics samples per CPU s | ratio |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        let f = r.samples as f64 / r.fleet_secs;
        let v = r.samples as f64 / r.vm_secs;
        let fc = r.samples as f64 / r.fleet_cpu;
        let vc = r.samples as f64 / r.vm_cpu;
        println!(
            "| {} | {} | {f:.0} | {v:.0} | {:.2}× | {fc:.0} | {vc:.0} | {:.2}× |",
            r.shape,
            r.samples,
            f / v,
            fc / vc
        );
    }
    for r in &rows {
        if let (Some(f), Some(v)) = (r.fleet_bytes, r.vm_bytes) {
            let (fb, vb) = (f as f64 / r.samples as f64, v as f64 / r.samples as f64);
            println!(
                "disk ({}): Fleetstream {fb:.3} bytes/sample ({f} bytes), VictoriaMetrics {vb:.3} bytes/sample ({v} bytes), ratio {:.2}×",
                r.shape,
                fb / vb
            );
        }
    }
    if !freshness_ms.is_empty() {
        println!(
            "freshness (202 → visible through the API, {} reports): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            freshness_ms.len(),
            quantile(&freshness_ms, 0.5),
            quantile(&freshness_ms, 0.99),
            quantile(&freshness_ms, 1.0)
        );
    }
    if let Some((f, v)) = query {
        println!(
            "history query (24 h, 3 metrics, 5 m buckets, {} queries): Fleetstream p50 {:.2} ms p99 {:.2} ms; VictoriaMetrics p50 {:.2} ms p99 {:.2} ms; p99 ratio {:.2}×",
            f.len(),
            quantile(&f, 0.5),
            quantile(&f, 0.99),
            quantile(&v, 0.5),
            quantile(&v, 0.99),
            quantile(&f, 0.99) / quantile(&v, 0.99)
        );
    }
    Ok(())
}

/// What the stopped embedded store's bytes are (measured after its size: opening it
/// writes).
async fn print_store_breakdown(dir: PathBuf) -> anyhow::Result<()> {
    use fleet_timeseries::store::ChunkStore as _;
    let store =
        tokio::task::spawn_blocking(move || fleet_timeseries::embedded::EmbeddedChunks::open(&dir))
            .await??;
    let usage = store.usage()?;
    let kinds = store.stored_bytes().await?;
    println!(
        "Fleetstream store after the stop: key file {} bytes; blob files {} bytes, live by kind {:?}",
        usage.key_file, usage.blob_files, kinds
    );
    tokio::task::spawn_blocking(move || drop(store)).await?;
    Ok(())
}
