//! History query latency: one agent's 24 h chart of 3 metrics at 5-minute buckets (288
//! per series), as the query API's history route asks for it, measured through the
//! `TimeSeriesStore` trait.
//!
//! The store holds BENCH_AGENTS (20) agents × 24 h of realistic 10 s reports
//! (`fixtures::fleet_reports`, ~20 series per report) fed through the engine's `Writer`
//! as the projection does, ending on an hour: 23 sealed hours (raw blocks and rollups)
//! and the last hour open, as under `fleetstream up`. Cases, each a chart of the first
//! agent:
//!
//! * `head`: the engine that wrote, holding the open hour in its head (`up`);
//! * `segments`: a second engine over the same chunk store, which reads the open hour
//!   from the checkpoint segments (an API in another process);
//! * `no cache`: as `segments`, with `rollup-cache-bytes = 0`: every chart decodes its
//!   rollup chunks (a chart asked for the first time; the other cases keep them decoded);
//! * `raw`: `query_resolution(.., Resolution::Raw)` on the head engine, aggregating the
//!   8,640 raw samples per series (what the store did before the rollups);
//!
//! and per case the chart as one `query` per metric in turn (`3 x query`) and as one
//! `query_many` call (`query_many`).
//!
//! On the embedded store (a temporary directory), then on ScyllaDB/Cassandra at
//! `FLEET_SCYLLA_URI` (default `scylla://127.0.0.1:9042`, `scripts/services.sh`'s
//! Cassandra) in a fresh keyspace that is dropped afterwards; a server that does not
//! answer fails the bench, saying how to start it.
//!
//! usage: cargo bench -p fleet-timeseries --bench history_query
//! Environment: BENCH_QUERIES (charts per case, default 300; the raw case runs a tenth),
//! BENCH_AGENTS (default 20), FLEET_SCYLLA_URI.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleet_schemas::MetricReport;
use fleet_test_support::services::{scylla_hosts, ScyllaKeyspace};
use fleet_test_support::stats::{env_num, machine, summary};
use fleet_timeseries::{
    Bucket, EngineConfig, RangeQuery, Resolution, Retention, TimeSeries, TimeSeriesStore,
};

const METRICS: [&str; 3] = ["cpu.percent", "memory.percent", "load.1"];
const STEP_MICROS: i64 = 10_000_000;
const HOUR_MICROS: i64 = 3_600_000_000;
const DAY_MICROS: i64 = 24 * HOUR_MICROS;
const FIVE_MINUTES: i64 = 300_000_000;

/// How a chart is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    /// One `query_resolution` per metric, in turn.
    EachMetric(Resolution),
    /// One `query_many` for the three.
    Many,
}

fn queries(tenant: &str, agent: &str, end: i64) -> Vec<RangeQuery> {
    METRICS
        .iter()
        .map(|m| RangeQuery {
            tenant_id: tenant.into(),
            agent_id: agent.into(),
            series: (*m).into(),
            start_micros: end - DAY_MICROS,
            end_micros: end,
            interval_micros: FIVE_MINUTES,
        })
        .collect()
}

/// One chart; returns its series' buckets.
async fn chart(
    store: &dyn TimeSeriesStore,
    qs: &[RangeQuery],
    ask: Ask,
) -> Result<Vec<Vec<Bucket>>> {
    Ok(match ask {
        Ask::EachMetric(r) => {
            let mut out = Vec::with_capacity(qs.len());
            for q in qs {
                out.push(store.query_resolution(q, r).await?);
            }
            out
        }
        Ask::Many => store.query_many(qs).await?,
    })
}

/// Feeds 24 h of `agents` agents' reports ending at `end` through a writer (batches of
/// 1,000 reports, as the projection), then checkpoints: the last hour stays open.
async fn fill(ts: &Arc<TimeSeries>, agents: usize, end: i64) -> Result<Vec<MetricReport>> {
    let reports: Vec<MetricReport> = fleet_schemas::fixtures::fleet_reports(
        13,
        agents,
        end - DAY_MICROS,
        STEP_MICROS,
        usize::try_from(DAY_MICROS / STEP_MICROS)?,
    )
    .collect();
    let topic: Arc<str> = Arc::from("fleet.metrics.v1");
    let mut w = ts.writer();
    for (i, batch) in reports.chunks(1_000).enumerate() {
        for (j, r) in batch.iter().enumerate() {
            w.ingest(&topic, 0, (i * 1_000 + j) as i64, r).await?;
        }
        w.after_batch().await?;
    }
    w.checkpoint().await?;
    Ok(reports)
}

async fn run(name: &str, ts: Arc<TimeSeries>) -> Result<()> {
    let agents = env_num("BENCH_AGENTS", 20).max(1);
    let charts = env_num("BENCH_QUERIES", 300).max(1);
    let now = fleet_schemas::time::now_micros();
    let end = now - now.rem_euclid(HOUR_MICROS);
    let started = Instant::now();
    let reports = fill(&ts, agents, end).await?;
    let secs = started.elapsed().as_secs_f64();
    let samples: usize = reports
        .iter()
        .map(|r| fleet_schemas::samples::samples(r).len())
        .sum();
    println!(
        "{name:9} filled {agents} agents x 24 h @ 10 s through the writer: {} reports, {samples} samples in {secs:.1} s",
        reports.len(),
    );
    let first = &reports[0];
    let qs = queries(&first.tenant_id, &first.agent_id, end);
    let other: Arc<dyn TimeSeriesStore> = Arc::new(TimeSeries::new(
        ts.store().clone(),
        Retention::default(),
        EngineConfig::default(),
    )?);
    // Every chart decodes its rollup chunks again, as a chart asked for the first time.
    let uncached: Arc<dyn TimeSeriesStore> = Arc::new(TimeSeries::new(
        ts.store().clone(),
        Retention::default(),
        EngineConfig {
            rollup_cache_bytes: 0,
            ..EngineConfig::default()
        },
    )?);
    let head: Arc<dyn TimeSeriesStore> = ts;
    let rollup = Ask::EachMetric(Resolution::FiveMinutes);
    let expected = chart(head.as_ref(), &qs, rollup).await?;
    ensure!(
        expected.iter().all(|s| s.len() == 288),
        "expected 288 buckets per series, got {:?}",
        expected.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let cases: [(&str, &Arc<dyn TimeSeriesStore>, Ask, usize); 7] = [
        ("head     3 x query", &head, rollup, charts),
        ("head     query_many", &head, Ask::Many, charts),
        ("segments 3 x query", &other, rollup, charts),
        ("segments query_many", &other, Ask::Many, charts),
        ("no cache 3 x query", &uncached, rollup, charts),
        ("no cache query_many", &uncached, Ask::Many, charts),
        (
            "raw      3 x query",
            &head,
            Ask::EachMetric(Resolution::Raw),
            (charts / 10).max(1),
        ),
    ];
    for (label, store, ask, n) in cases {
        let got = chart(store.as_ref(), &qs, ask).await?;
        let counts = |c: &[Vec<Bucket>]| c.iter().map(Vec::len).collect::<Vec<_>>();
        ensure!(
            counts(&got) == counts(&expected),
            "{label}: {:?} buckets, the rollup gave {:?}",
            counts(&got),
            counts(&expected)
        );
        // Warm up, then measure.
        for _ in 0..10 {
            chart(store.as_ref(), &qs, ask).await?;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            chart(store.as_ref(), &qs, ask).await?;
            times.push(t.elapsed());
        }
        println!(
            "{name:9} {label:20} chart of 3 series x 288 buckets: {}",
            summary(&mut times)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("machine: {}", machine());
    let dir = tempfile::tempdir()?;
    let ts = fleet_timeseries::open(
        &format!("file://{}", dir.path().display()),
        Retention::default(),
        EngineConfig::default(),
    )
    .await?;
    run("embedded", ts).await?;
    let hosts = scylla_hosts();
    let ks = ScyllaKeyspace::new(&hosts, "fleet_bench");
    println!("scylla    server: {} at {hosts}", ks.server().await?);
    let outcome = async {
        let ts =
            fleet_timeseries::open(&ks.url, Retention::default(), EngineConfig::default()).await?;
        run("scylla", ts).await
    }
    .await;
    ks.drop_now().await?;
    outcome?;
    // Leave nothing running in the background when the figures are printed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
