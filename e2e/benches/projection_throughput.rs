//! Projection throughput: records/s from the event log into each store through the
//! projection loops themselves (`fleet_projections::project::run_read_model` and
//! `fleet_projections::timeseries::run_timeseries`: poll a batch of up to `batch-size`
//! records, decode, `ReadModel::apply` with the offsets in one transaction / the
//! time-series writer's head, seals and checkpoints, commit).
//!
//! `BENCH_RECORDS` metric reports of `BENCH_AGENTS` agents (10 s apart, the newest now)
//! are first written to an embedded event log in a temporary directory; then each target
//! consumes them all with a fresh consumer group, timed from the start of the loop until
//! the store (read model: its stored offsets; time series: the group's committed offsets)
//! has every record. Targets: the read model on embedded SQLite and on PostgreSQL
//! (`FLEET_POSTGRES_URL`, a fresh database), the embedded time-series store, and
//! ScyllaDB/Cassandra at `FLEET_SCYLLA_URI` (default 127.0.0.1:9042; a fresh keyspace; a
//! server that does not answer fails the run). Fresh databases and keyspaces are dropped
//! afterwards.
//!
//! usage: cargo bench -p fleet-e2e --bench projection_throughput -- [sqlite|postgres|embedded|scylla|all]
//! Environment: BENCH_RECORDS (default 50000), BENCH_AGENTS (1000), BENCH_BATCH (records
//! per batch, the projections' `batch-size`, default 1000), FLEET_POSTGRES_URL,
//! FLEET_SCYLLA_URI.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_projections::project::{run_read_model, Readiness, READ_MODEL_PROJECTION};
use fleet_projections::timeseries::run_timeseries;
use fleet_projections::ProjectionsConfig;
use fleet_schemas::{codec, fixtures, topics};
use fleet_test_support::services::{random_suffix, scylla_hosts, PgDatabase, ScyllaKeyspace};
use fleet_test_support::stats::{env_num, machine};

const TENANT: &str = "bench-tenant";

/// Fills `fleet.metrics.v1` of a new embedded log with `records` reports.
async fn fill_log(
    dir: &std::path::Path,
    records: usize,
    agents: usize,
) -> Result<Arc<dyn EventLog>> {
    let log =
        fleet_event_log::open(&format!("file://{}", dir.display()), &Default::default()).await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let now = fleet_schemas::time::now_micros();
    let per_agent = records.div_ceil(agents) as i64;
    let started = Instant::now();
    let mut chunk = Vec::with_capacity(1_000);
    for i in 0..records {
        let agent = format!("agent-{:05}", i % agents);
        let step = (i / agents) as i64;
        let ts = now - (per_agent - step) * 10_000_000;
        let mut r = fixtures::metric_report(TENANT, &agent, ts);
        r.cpu_percent = (i % 100) as f64;
        chunk.push(ProduceRecord::keyed(
            agent.into_bytes(),
            codec::Wire::plain().encode(&r)?,
        ));
        if chunk.len() == 1_000 || i + 1 == records {
            log.produce(topics::METRICS, std::mem::take(&mut chunk))
                .await?;
        }
    }
    println!(
        "log: {records} metric reports of {agents} agents written in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(log)
}

fn config() -> ProjectionsConfig {
    let run = random_suffix();
    ProjectionsConfig {
        read_model_group: format!("bench-readmodel-{run}"),
        timeseries_group: format!("bench-timeseries-{run}"),
        batch_size: env_num("BENCH_BATCH", 1_000),
        ..ProjectionsConfig::default()
    }
}

/// Waits until `done()` says every record is in, then stops the loop; returns the time
/// from the start.
async fn until_done<F, Fut>(
    what: &str,
    started: Instant,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    mut done: F,
) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    loop {
        if done().await? {
            break;
        }
        if task.is_finished() {
            task.await??;
            anyhow::bail!("{what}: the projection stopped early");
        }
        if started.elapsed() > Duration::from_secs(1_800) {
            anyhow::bail!("{what}: not done after 30 min");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    let _ = stop.send(());
    task.await??;
    Ok(elapsed)
}

async fn read_model(name: &str, log: Arc<dyn EventLog>, url: &str, records: usize) -> Result<()> {
    let store = fleet_read_model::open_read_model(url).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(run_read_model(
        log,
        fleet_schemas::Wire::plain(),
        store.clone(),
        config(),
        Readiness::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let elapsed = until_done(name, started, stop, task, || {
        let store = store.clone();
        async move {
            let offsets = store.offsets(READ_MODEL_PROJECTION).await?;
            let applied: i64 = offsets
                .iter()
                .filter(|o| o.topic == topics::METRICS)
                .map(|o| o.next_offset)
                .sum();
            Ok(applied >= records as i64)
        }
    })
    .await?;
    let secs = elapsed.as_secs_f64();
    println!(
        "{name:22} {records} records in {secs:.2} s = {:.0} records/s",
        records as f64 / secs
    );
    Ok(())
}

async fn timeseries(name: &str, log: Arc<dyn EventLog>, url: &str, records: usize) -> Result<()> {
    let mut cfg = config();
    // Done means durable: checkpointed and committed (at most 100 ms after the last record).
    cfg.timeseries_engine.checkpoint_interval = Duration::from_millis(100);
    let store =
        fleet_timeseries::open(url, cfg.timeseries_retention, cfg.timeseries_engine.clone())
            .await?;
    let group = cfg.timeseries_group.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(run_timeseries(
        log.clone(),
        fleet_schemas::Wire::plain(),
        store,
        cfg,
        Readiness::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    let elapsed = until_done(name, started, stop, task, || {
        let (log, group) = (log.clone(), group.clone());
        async move {
            let committed: i64 = log
                .committed_offsets(&group, topics::METRICS)
                .await?
                .into_iter()
                .flatten()
                .sum();
            Ok(committed >= records as i64)
        }
    })
    .await?;
    let secs = elapsed.as_secs_f64();
    let per_report =
        fleet_schemas::samples::samples(&fixtures::metric_report(TENANT, "a", 1)).len();
    println!(
        "{name:22} {records} records in {secs:.2} s = {:.0} records/s, {:.0} samples/s ({per_report} samples/record)",
        records as f64 / secs,
        (records * per_report) as f64 / secs
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let want = |t: &str| which == "all" || which == t;
    let records = env_num("BENCH_RECORDS", 50_000);
    let agents = env_num("BENCH_AGENTS", 1_000).max(1);
    println!("machine: {}", machine());
    println!(
        "batch-size {} (records per poll / per store call)",
        config().batch_size
    );
    let dir = tempfile::tempdir()?;
    let log = fill_log(&dir.path().join("log"), records, agents).await?;
    if want("sqlite") {
        let url = format!("sqlite://{}", dir.path().join("readmodel.db").display());
        read_model("read model, SQLite", log.clone(), &url, records).await?;
    }
    if want("postgres") {
        let db = PgDatabase::create("fleet_bench").await?;
        let outcome = read_model("read model, PostgreSQL", log.clone(), &db.url, records).await;
        db.drop_now().await?;
        outcome?;
    }
    if want("embedded") {
        let url = format!("file://{}", dir.path().join("ts").display());
        timeseries("time series, embedded", log.clone(), &url, records).await?;
    }
    if want("scylla") {
        let hosts = scylla_hosts();
        let ks = ScyllaKeyspace::new(&hosts, "fleet_bench");
        println!("CQL server: {} at {hosts}", ks.server().await?);
        let outcome = timeseries("time series, ScyllaDB", log.clone(), &ks.url, records)
            .await
            .context("ScyllaDB");
        ks.drop_now().await?;
        outcome?;
    }
    Ok(())
}
