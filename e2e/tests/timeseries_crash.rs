//! The time-series projection survives SIGKILL without losing or doubling a sample.
//!
//! Reports spanning several hours (so windows seal between the kills) are posted to the
//! gateway in three parts; after each of the first two the process holding the
//! time-series projection is killed with SIGKILL while it is still catching up, and
//! started again on the same data. The projection commits only what its last checkpoint
//! made durable, so the restarted one replays the rest on top of the restored head.
//! At the end:
//! * every posted sample is stored exactly once (the store's sample count per series
//!   equals what was posted: a commit ahead of the checkpoint would lose samples, a
//!   replay that is not idempotent would count them twice);
//! * `fleetstream verify` finds the live store equal, sample by sample and in every
//!   rollup, to one rebuilt by `fleetstream replay` from the same log;
//! * on the embedded defaults, `fleetstream compact` keeps every sample.
//!
//! Run on the embedded defaults (`fleetstream up`, the whole process is killed) and on
//! Kafka (a private broker; `fleetstream projections` is killed, the gateway keeps
//! taking reports).

#![allow(clippy::print_stdout)] // what the run did, for --nocapture

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use fleet_e2e::load::{batches, gateway_requests, post_all};
use fleet_e2e::{free_port, run_to_end, wait_for, write_file, Proc};
use fleet_schemas::samples::samples;
use fleet_schemas::MetricReport;
use fleet_timeseries::{RangeQuery, Resolution, TimeSeriesStore as _};

const AGENTS: usize = 12;
const REPORTS_PER_AGENT: usize = 900;
const INTERVAL_MICROS: i64 = 10_000_000;
const HOUR: i64 = 3_600_000_000;
const WAIT: Duration = Duration::from_secs(180);

fn path(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("utf-8 path")
}

/// The reports: 12 agents × 900 reports 10 s apart (2.5 h, so hours seal), starting
/// three hours ago on an hour boundary.
fn reports() -> Vec<MetricReport> {
    let now = fleet_e2e::now_micros();
    let start = (now - 3 * HOUR).div_euclid(HOUR) * HOUR;
    fleet_schemas::fixtures::fleet_reports(11, AGENTS, start, INTERVAL_MICROS, REPORTS_PER_AGENT)
        .collect()
}

/// Samples posted per (agent, series).
fn expected(reports: &[MetricReport]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for r in reports {
        for s in samples(r) {
            *out.entry((r.agent_id.clone(), s.series())).or_insert(0) += 1;
        }
    }
    out
}

/// Samples stored per (agent, series), read from the stopped store's raw blocks.
async fn stored(url: &str) -> anyhow::Result<BTreeMap<(String, String), u64>> {
    let store = fleet_timeseries::open(url, Default::default(), Default::default()).await?;
    let mut out = BTreeMap::new();
    let now = fleet_e2e::now_micros();
    for key in store.list_series(1_000_000).await? {
        let q = RangeQuery {
            tenant_id: key.tenant_id.clone(),
            agent_id: key.agent_id.clone(),
            series: key.series.clone(),
            start_micros: now - 24 * HOUR,
            end_micros: now + HOUR,
            interval_micros: HOUR,
        };
        let count: u64 = store
            .query_resolution(&q, Resolution::Raw)
            .await?
            .iter()
            .map(|b| b.count)
            .sum();
        out.insert((key.agent_id, key.series), count);
    }
    Ok(out)
}

/// Posts `parts` of the reports, calling `crash` after each part but the last.
async fn post_in_parts(
    gateway: &str,
    reports: &[MetricReport],
    mut crash: impl AsyncFnMut(usize) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let groups = batches(reports, 20);
    let requests = gateway_requests(gateway, &groups)?;
    let client = reqwest::Client::new();
    let parts = 3;
    let per_part = requests.len().div_ceil(parts);
    for (i, part) in requests.chunks(per_part).enumerate() {
        post_all(&client, Arc::new(part.to_vec()), 4, &[]).await?;
        if i + 1 < parts {
            crash(i).await?;
        }
    }
    Ok(())
}

/// Rebuilds the time series from the log into a fresh store, checks that `verify` finds
/// it equal to the live one, and that the live one holds every posted sample once.
async fn check(
    dir: &Path,
    log_url: &str,
    live_ts: &str,
    reports: &[MetricReport],
) -> anyhow::Result<()> {
    let want = expected(reports);
    let got = stored(live_ts).await?;
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, n)| got.get(*k) != Some(n))
        .map(|(k, n)| format!("{k:?}: posted {n}, stored {:?}", got.get(k)))
        .take(10)
        .collect();
    ensure!(
        missing.is_empty() && got.len() == want.len(),
        "the live store differs from what was posted ({} series posted, {} stored):\n{}",
        want.len(),
        got.len(),
        missing.join("\n")
    );
    let rebuilt = format!("file://{}", dir.join("rebuilt-ts").display());
    let out = run_to_end(
        dir,
        &[
            "replay",
            "--projection",
            "timeseries",
            "--into",
            &rebuilt,
            "--event-log",
            log_url,
        ],
    )?;
    ensure!(out.success, "replay failed:\n{}", out.output);
    let out = run_to_end(
        dir,
        &[
            "verify",
            "--projection",
            "timeseries",
            "--live",
            live_ts,
            "--rebuilt",
            &rebuilt,
        ],
    )?;
    println!("{}", out.output);
    ensure!(
        out.success,
        "verify found the live store different from the rebuilt one:\n{}",
        out.output
    );
    Ok(())
}

/// A projection started after a SIGKILL resumed from a checkpoint: a partition taken with
/// its head restored and an offset past the start.
fn resumed(proc: &Proc) -> anyhow::Result<()> {
    let lines = fleet_e2e::json_lines(proc, "Partition taken")?;
    ensure!(
        lines.iter().any(|l| l["fields"]["restored"] == true
            && l["fields"]["offset"].as_i64().is_some_and(|o| o > 0)),
        "the restarted projection did not resume from a checkpoint:\n{}",
        proc.log_tail(30)
    );
    Ok(())
}

/// Waits until a restarted projection has taken its partitions back, then checks it
/// resumed from a checkpoint. It may have nothing new to read: the kill can land after
/// its last checkpoint covered everything posted so far.
async fn wait_resumed(proc: &Proc) -> anyhow::Result<()> {
    wait_for(
        "the time-series projection to take its partitions",
        WAIT,
        &[proc],
        || async {
            let lines = fleet_e2e::json_lines(proc, "Assignment taken")?;
            Ok(lines
                .iter()
                .any(|l| l["fields"]["consumer"] == "timeseries")
                .then_some(()))
        },
    )
    .await?;
    resumed(proc)
}

/// Records the time-series projection read and checkpoints its engine wrote since its
/// process started (its `/metrics`), or `None` while the endpoint does not answer.
async fn progress(client: &reqwest::Client, metrics_url: &str) -> Option<(f64, f64)> {
    let text = client
        .get(metrics_url)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let read = fleet_e2e::prometheus_sum_labeled(
        &text,
        "fleet_projection_records_total",
        &[("projection", "timeseries")],
    );
    let checkpoints = fleet_e2e::prometheus_sum(&text, "fleet_timeseries_checkpoints_total");
    Some((read, checkpoints))
}

/// Without `settle`: waits until the projection has read something since its start and
/// then written a checkpoint (so a kill lands while it works, after a checkpoint past the
/// start that the next start must resume from). With `settle`: waits until it has read
/// something and then nothing new for 3 s.
async fn wait_reading(proc: &mut Proc, metrics_url: &str, settle: bool) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + WAIT;
    let (mut last, mut same) = (0.0, 0);
    let mut checkpoints_when_read: Option<f64> = None;
    while std::time::Instant::now() < deadline {
        ensure!(
            proc.is_running(),
            "{} exited:\n{}",
            proc.name(),
            proc.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (read, checkpoints) = progress(&client, metrics_url).await.unwrap_or((0.0, 0.0));
        if !settle {
            match checkpoints_when_read {
                Some(before) if checkpoints > before => return Ok(()),
                None if read > 0.0 => checkpoints_when_read = Some(checkpoints),
                _ => {}
            }
            continue;
        }
        same = if read == last && read > 0.0 {
            same + 1
        } else {
            0
        };
        last = read;
        if same >= 12 {
            return Ok(());
        }
    }
    anyhow::bail!(
        "the time-series projection did not read (or checkpoint, or settle) in time:\n{}",
        proc.log_tail(30)
    )
}

/// Whether the time-series group's committed offsets reach the end of the metrics topic.
async fn caught_up(log_url: &str, group: &str) -> anyhow::Result<bool> {
    let log = fleet_event_log::open(log_url, &Default::default()).await?;
    let topic = fleet_schemas::topics::METRICS;
    let committed = log.committed_offsets(group, topic).await?;
    let ends = log.end_offsets(topic).await?;
    let done = ends
        .iter()
        .enumerate()
        .all(|(p, end)| committed.get(p).copied().flatten().unwrap_or(0) >= *end);
    if !done {
        println!("time series behind: committed {committed:?}, ends {ends:?}");
    }
    Ok(done)
}

const GROUP: &str = "fleet-projection-timeseries";
const JSON_LOG: [(&str, &str); 1] = [("FLEET_LOG_FORMAT", "json")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_up_survives_sigkill() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-tscrash-")
        .tempdir()?;
    let (gw_port, api_port) = (free_port()?, free_port()?);
    let gateway = format!("http://127.0.0.1:{gw_port}");
    let cfg = write_file(
        dir.path(),
        "fleetstream.toml",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\nrate-limit-per-second = 0\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n\n[projections.timeseries-engine]\ncheckpoint-interval = \"1s\"\n"
        ),
    )?;
    let data = dir.path().join("data");
    let args = ["up", "--data-dir", path(&data)?, "--config", path(&cfg)?];
    let metrics = format!("http://127.0.0.1:{api_port}/metrics");
    let start = async |n: usize| {
        let p = Proc::start(&format!("up-{n}"), dir.path(), &args, &JSON_LOG)?;
        fleet_e2e::up_admin_key(&data, &[&p]).await?;
        anyhow::Ok(p)
    };
    let mut up = start(0).await?;
    let reports = reports();
    let mut restarts = 0;
    post_in_parts(&gateway, &reports, async |_| {
        // Killed while the projection is reading what was just posted.
        wait_reading(&mut up, &metrics, false).await?;
        up.kill()?;
        restarts += 1;
        up = start(restarts).await?;
        wait_resumed(&up).await
    })
    .await?;
    ensure!(restarts == 2, "{restarts} restarts");
    // Nothing is posted any more: once the projection settles, a clean stop checkpoints
    // what it read, and the group's offsets reach the end of the log.
    wait_reading(&mut up, &metrics, true).await?;
    up.stop()?;
    let log_url = format!("file://{}", data.join("log").display());
    ensure!(
        caught_up(&log_url, GROUP).await?,
        "the projection did not catch up"
    );
    let live_ts = format!("file://{}", data.join("timeseries").display());
    check(dir.path(), &log_url, &live_ts, &reports).await?;
    // `fleetstream compact` on the stopped data directory keeps every sample.
    let out = run_to_end(dir.path(), &["compact", path(&data)?])?;
    ensure!(
        out.success && out.output.contains("compacted:"),
        "compact failed:\n{}",
        out.output
    );
    println!("{}", out.output);
    ensure!(
        stored(&live_ts).await? == expected(&reports),
        "compaction changed what the store holds"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_projection_survives_sigkill() -> anyhow::Result<()> {
    let kafka = fleet_e2e::PrivateKafka::start().await?;
    let log_url = kafka.url();
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-tscrash-kafka-")
        .tempdir()?;
    let (gw_port, pj_port) = (free_port()?, free_port()?);
    let gateway = format!("http://127.0.0.1:{gw_port}");
    let live_ts = format!("file://{}", dir.path().join("ts").display());
    let read_model = format!("sqlite://{}", dir.path().join("rm.db").display());
    let gw_cfg = write_file(
        dir.path(),
        "gateway.toml",
        &format!("listen = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\nrate-limit-per-second = 0\n[event-log]\nurl = \"{log_url}\"\n"),
    )?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{pj_port}\"\nserve-api = false\nread-model = \"{read_model}\"\ntimeseries = \"{live_ts}\"\n\n[timeseries-engine]\ncheckpoint-interval = \"1s\"\n[event-log]\nurl = \"{log_url}\"\nsession-timeout = \"6000ms\"\n"
        ),
    )?;
    let mut gw = Proc::start(
        "gateway",
        dir.path(),
        &["gateway", "--config", path(&gw_cfg)?],
        &[],
    )?;
    fleet_e2e::wait_ready(&format!("{gateway}/readyz"), WAIT, &[&gw]).await?;
    let metrics = format!("http://127.0.0.1:{pj_port}/metrics");
    let pj_args = ["projections", "--config", path(&pj_cfg)?];
    let start =
        |n: usize| Proc::start(&format!("projections-{n}"), dir.path(), &pj_args, &JSON_LOG);
    let mut pj = start(0)?;
    let reports = reports();
    let mut restarts = 0;
    post_in_parts(&gateway, &reports, async |_| {
        wait_reading(&mut pj, &metrics, false).await?;
        pj.kill()?;
        restarts += 1;
        pj = start(restarts)?;
        wait_resumed(&pj).await
    })
    .await?;
    ensure!(restarts == 2, "{restarts} restarts");
    gw.stop()?;
    // Committed offsets are visible while the projection runs (the checkpoint commits).
    wait_for("the projection to catch up", WAIT, &[&pj], || async {
        Ok(caught_up(&log_url, GROUP).await?.then_some(()))
    })
    .await?;
    pj.stop()?;
    check(dir.path(), &log_url, &live_ts, &reports).await
}
