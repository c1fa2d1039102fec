//! Rebuild throughput: records/s of `fleetstream replay`, the real binary run as a process
//! (`FLEETSTREAM_BIN`; build it with `cargo build --release -p fleetstream` and point
//! `FLEETSTREAM_BIN` at `target/release/fleetstream`, else the debug build is measured).
//!
//! `BENCH_RECORDS` metric reports of `BENCH_AGENTS` agents (10 s apart, the newest now) are
//! written first to an embedded event log in a temporary directory, and, for the Kafka
//! cases, to a private Kafka broker of the bench's own (`fleet_e2e::PrivateKafka`, from the
//! jars `scripts/services.sh up` cached: the shared broker's topics hold other runs'
//! records). Then each case replays them into a fresh store:
//!
//! * `embedded`: the embedded log into an embedded SQLite read model, into the embedded
//!   time-series store, and into both at once (`--projection all`).
//! * `kafka`: Kafka into a fresh PostgreSQL database (`FLEET_POSTGRES_URL`) with one
//!   worker and with four (`--jobs`), and into PostgreSQL plus the embedded time-series
//!   store with one worker and with the default (four).
//!
//! Each line gives the replay's own figure (from its summary: records over the time from
//! the first read to the last write) and the wall time of the process (start-up, opening
//! the stores, the consumer group join, the summary). Fresh databases are dropped
//! afterwards.
//!
//! usage: cargo bench -p fleet-e2e --bench replay_throughput -- [embedded|kafka|all]
//! Environment: BENCH_RECORDS (default 50000), BENCH_AGENTS (1000), BENCH_BATCH (records
//! per batch, `--batch-size`, default 10000 as the command's), FLEETSTREAM_BIN,
//! FLEET_POSTGRES_URL.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::{codec, fixtures, topics};
use fleet_test_support::services::PgDatabase;
use fleet_test_support::stats::{env_num, machine};

const TENANT: &str = "bench-tenant";

/// Writes `records` metric reports of `agents` agents to `log`.
async fn fill(log: &dyn EventLog, records: usize, agents: usize) -> Result<Duration> {
    fleet_consumer::log::ensure_topics(log).await?;
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
    Ok(started.elapsed())
}

/// Runs `fleetstream replay <args>`; returns (records, the replay's records/s, wall time).
fn replay(dir: &Path, args: &[&str]) -> Result<(u64, f64, Duration)> {
    let bin = fleet_e2e::fleetstream_bin()?;
    let started = Instant::now();
    let out = Command::new(&bin)
        .arg("replay")
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let wall = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "fleetstream replay {args:?} failed ({}):\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // "Replay finished in 1.2 s: 50000 records (41000 records/s) from ..."
    let line = stdout
        .lines()
        .find(|l| l.starts_with("Replay finished"))
        .with_context(|| format!("no summary in:\n{stdout}"))?;
    let records: u64 = line
        .split(": ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no record count in {line:?}"))?;
    let rate: f64 = line
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no rate in {line:?}"))?;
    Ok((records, rate, wall))
}

fn report(name: &str, expected: usize, (records, rate, wall): (u64, f64, Duration)) -> Result<()> {
    if records != expected as u64 {
        bail!("{name}: replayed {records} records, expected {expected}");
    }
    println!(
        "{name:56} {records} records, {rate:>7.0} records/s (process wall time {:.2} s = {:.0} records/s)",
        wall.as_secs_f64(),
        records as f64 / wall.as_secs_f64()
    );
    Ok(())
}

async fn kafka_cases(dir: &Path, records: usize, agents: usize, batch: &str) -> Result<()> {
    let kafka = fleet_e2e::PrivateKafka::start()
        .await
        .context("starting a private Kafka broker (run `scripts/services.sh up` for its jars)")?;
    let log = fleet_event_log::open(&kafka.url(), &Default::default()).await?;
    let took = fill(log.as_ref(), records, agents).await?;
    println!(
        "kafka log: {records} reports written in {:.1} s",
        took.as_secs_f64()
    );
    let url = kafka.url();
    for (name, jobs) in [
        ("kafka -> read model, PostgreSQL (--jobs 1)", "1"),
        ("kafka -> read model, PostgreSQL (--jobs 4)", "4"),
    ] {
        let db = PgDatabase::create("fleet_bench").await?;
        let outcome = replay(
            dir,
            &[
                "--projection",
                "read-model",
                "--event-log",
                &url,
                "--into",
                &db.url,
                "--batch-size",
                batch,
                "--jobs",
                jobs,
            ],
        );
        db.drop_now().await?;
        report(name, records, outcome?)?;
    }
    for (name, jobs, ts) in [
        (
            "kafka -> PostgreSQL + time series, embedded (--jobs 1)",
            "1",
            "kafka-ts1",
        ),
        (
            "kafka -> PostgreSQL + time series, embedded (--jobs 4)",
            "4",
            "kafka-ts4",
        ),
    ] {
        let db = PgDatabase::create("fleet_bench").await?;
        let ts = format!("file://{}", dir.join(ts).display());
        let outcome = replay(
            dir,
            &[
                "--projection",
                "all",
                "--event-log",
                &url,
                "--into",
                &db.url,
                "--into",
                &ts,
                "--batch-size",
                batch,
                "--jobs",
                jobs,
            ],
        );
        db.drop_now().await?;
        report(name, records, outcome?)?;
    }
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
    let batch = env_num("BENCH_BATCH", 10_000).to_string();
    println!("machine: {}", machine());
    println!(
        "binary: {} (set FLEETSTREAM_BIN to a release build)",
        fleet_e2e::fleetstream_bin()?.display()
    );
    println!("{records} metric reports of {agents} agents, --batch-size {batch}");
    let dir = tempfile::tempdir()?;
    if want("embedded") {
        let log_dir = dir.path().join("log");
        let log_url = format!("file://{}", log_dir.display());
        {
            let log = fleet_event_log::open(&log_url, &Default::default()).await?;
            let took = fill(log.as_ref(), records, agents).await?;
            println!(
                "embedded log: {records} reports written in {:.1} s",
                took.as_secs_f64()
            );
        } // closed: the replay process opens it
        let rm = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
        let ts = |name: &str| format!("file://{}", dir.path().join(name).display());
        let cases: [(&str, Vec<String>); 3] = [
            (
                "embedded -> read model, SQLite",
                vec![
                    "--projection".into(),
                    "read-model".into(),
                    "--into".into(),
                    rm("rm1.db"),
                ],
            ),
            (
                "embedded -> time series, embedded",
                vec![
                    "--projection".into(),
                    "timeseries".into(),
                    "--into".into(),
                    ts("ts1"),
                ],
            ),
            (
                "embedded -> SQLite + time series",
                vec![
                    "--projection".into(),
                    "all".into(),
                    "--into".into(),
                    rm("rm2.db"),
                    "--into".into(),
                    ts("ts2"),
                ],
            ),
        ];
        for (name, mut args) in cases {
            args.extend([
                "--event-log".to_owned(),
                log_url.clone(),
                "--batch-size".to_owned(),
                batch.clone(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            report(name, records, replay(dir.path(), &args)?)?;
        }
    }
    if want("kafka") {
        kafka_cases(dir.path(), records, agents, &batch).await?;
    }
    Ok(())
}
