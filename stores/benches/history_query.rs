//! History query latency: one agent's 24 h of 10 s samples for 3 metrics, read back as
//! 5-minute buckets (288 per series), the way the query API's history route asks (one
//! `query` per metric, in turn). Measured through the `TimeSeriesStore` trait:
//!
//! * `query` picks the 5-minute rollup (`Resolution::for_interval`);
//! * `query_resolution(.., Resolution::Raw)` aggregates the 8,640 raw samples per series,
//!   which is what the store did before the rollups.
//!
//! On the embedded store (a temporary directory) and, when `FLEET_SCYLLA_URI` is set
//! (`scylla://127.0.0.1:9042` or `127.0.0.1:9042`), on ScyllaDB/Cassandra in a fresh
//! keyspace that is dropped afterwards.
//!
//! usage: cargo bench -p fleet-stores --bench history_query
//! Environment: BENCH_QUERIES (charts per case, default 300), BENCH_AGENTS (agents with
//! the same data in the store, the first one queried; default 20), FLEET_SCYLLA_URI.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleet_test_support::services::{scylla_hosts, ScyllaKeyspace};
use fleet_test_support::stats::{env_num, machine, summary};
use fleet_timeseries::{Point, RangeQuery, Resolution, TimeSeriesStore};

const TENANT: &str = "bench-tenant";
const METRICS: [&str; 3] = ["cpu.percent", "memory.percent", "disk.percent:/"];
const STEP_MICROS: i64 = 10_000_000;
const DAY_MICROS: i64 = 86_400_000_000;
const FIVE_MINUTES: i64 = 300_000_000;

fn agent(i: usize) -> String {
    format!("agent-{i:05}")
}

/// Writes 24 h of 10 s samples of every metric for `agents` agents, ending at `end`, in
/// writes of one hour per agent (1,080 points), as a projection batch would carry them.
async fn fill(store: &dyn TimeSeriesStore, agents: usize, end: i64) -> Result<usize> {
    let start = end - DAY_MICROS;
    let mut written = 0;
    for a in 0..agents {
        let agent = agent(a);
        let mut ts = start;
        while ts < end {
            let hour_end = (ts + 3_600_000_000).min(end);
            let mut points = Vec::with_capacity(1_080);
            while ts < hour_end {
                for (m, metric) in METRICS.iter().enumerate() {
                    let x = (ts / STEP_MICROS) as f64;
                    points.push(Point {
                        tenant_id: TENANT.into(),
                        agent_id: agent.clone(),
                        series: (*metric).to_owned(),
                        ts_micros: ts,
                        value: 50.0 + 40.0 * (x / 360.0 + m as f64).sin(),
                    });
                }
                ts += STEP_MICROS;
            }
            written += points.len();
            store.write(&points).await?;
        }
    }
    Ok(written)
}

/// One chart: the 3 metrics in turn; returns the buckets seen and each query's time.
async fn chart(
    store: &dyn TimeSeriesStore,
    end: i64,
    resolution: Option<Resolution>,
) -> Result<(usize, [Duration; 3])> {
    let mut buckets = 0;
    let mut times = [Duration::ZERO; 3];
    for (metric, time) in METRICS.iter().zip(times.iter_mut()) {
        let q = RangeQuery {
            tenant_id: TENANT.into(),
            agent_id: agent(0),
            series: (*metric).into(),
            start_micros: end - DAY_MICROS,
            end_micros: end,
            interval_micros: FIVE_MINUTES,
        };
        let t = Instant::now();
        let got = match resolution {
            None => store.query(&q).await?,
            Some(r) => store.query_resolution(&q, r).await?,
        };
        *time = t.elapsed();
        buckets += got.len();
    }
    Ok((buckets, times))
}

async fn run(name: &str, store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    let agents = env_num("BENCH_AGENTS", 20).max(1);
    let queries = env_num("BENCH_QUERIES", 300).max(1);
    // End on a 5-minute boundary so that both resolutions see the same 288 buckets.
    let now = fleet_schemas::time::now_micros();
    let end = now - now.rem_euclid(FIVE_MINUTES);
    let started = Instant::now();
    let written = fill(store.as_ref(), agents, end).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{name:9} filled {agents} agents x {} metrics x 24 h @ 10 s = {written} samples in {secs:.1} s ({:.0} samples/s)",
        METRICS.len(),
        written as f64 / secs
    );
    let (rollup, _) = chart(store.as_ref(), end, None).await?;
    let (raw, _) = chart(store.as_ref(), end, Some(Resolution::Raw)).await?;
    ensure!(
        rollup == 288 * METRICS.len() && raw == rollup,
        "expected {} buckets from both, got rollup {rollup}, raw {raw}",
        288 * METRICS.len()
    );
    for (label, resolution) in [
        ("query (5m rollup)", None),
        ("raw samples", Some(Resolution::Raw)),
    ] {
        // Warm up, then measure.
        for _ in 0..10 {
            chart(store.as_ref(), end, resolution).await?;
        }
        let mut charts = Vec::with_capacity(queries);
        let mut series = Vec::with_capacity(queries * METRICS.len());
        for _ in 0..queries {
            let t = Instant::now();
            let (_, each) = chart(store.as_ref(), end, resolution).await?;
            charts.push(t.elapsed());
            series.extend(each);
        }
        println!(
            "{name:9} {label:18} chart of 3 series x 288 buckets: {}",
            summary(&mut charts)
        );
        println!(
            "{name:9} {label:18} one series query (288 buckets):    {}",
            summary(&mut series)
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    println!("machine: {}", machine());
    let dir = tempfile::tempdir()?;
    let store = fleet_timeseries::open(
        &format!("file://{}", dir.path().display()),
        Default::default(),
        Default::default(),
    )
    .await?;
    run("embedded", store).await?;
    match scylla_hosts() {
        None => println!("scylla    skipped: FLEET_SCYLLA_URI is not set"),
        Some(hosts) => {
            let ks = ScyllaKeyspace::new(&hosts, "fleet_bench");
            println!("scylla    server: {} at {hosts}", ks.server().await?);
            let outcome = async {
                let store =
                    fleet_timeseries::open(&ks.url, Default::default(), Default::default()).await?;
                run("scylla", store).await
            }
            .await;
            ks.drop_now().await?;
            outcome?;
        }
    }
    // Leave nothing running in the background when the figures are printed.
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(())
}
