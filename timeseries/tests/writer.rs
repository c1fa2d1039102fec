//! The writer: reports in log order into the head, sealing by event time, checkpoints and
//! restore, eviction under a memory limit, late samples; every stored chunk a function of
//! the records (a crash and restore, other batch sizes, or eviction give the same bytes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use fleet_schemas::samples::samples;
use fleet_schemas::{LabeledSample, MetricReport, SampleBatch, SampleSource};
use fleet_timeseries::engine::Ingested;
use fleet_timeseries::store::{AgentKey, ChunkKind, ChunkStore};
use fleet_timeseries::{EngineConfig, RangeQuery, Retention, TimeSeries, TimeSeriesStore, Writer};

const TOPIC: &str = "fleet.metrics.v1";
const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// The start of the hour two days ago (inside every retention).
fn t0() -> i64 {
    let now = fleet_schemas::time::now_micros();
    now - now.rem_euclid(HOUR) - 48 * HOUR
}

fn fleet(agents: usize, hours: i64, seed: u64) -> Vec<MetricReport> {
    fleet_schemas::fixtures::fleet_reports(
        seed,
        agents,
        t0(),
        10 * SECOND,
        usize::try_from(hours * 360).unwrap_or(0),
    )
    .collect()
}

fn config() -> EngineConfig {
    EngineConfig {
        // Checkpoints only when a test asks.
        checkpoint_interval: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

async fn engine(dir: &std::path::Path, config: EngineConfig) -> Result<Arc<TimeSeries>> {
    Ok(fleet_timeseries::open(
        dir.to_str().context("utf-8 path")?,
        Retention::default(),
        config,
    )
    .await?)
}

/// Feeds `reports` (offsets from `first_offset`) in batches of `batch`, with
/// `after_batch` after each; returns the last commit point.
async fn feed(
    w: &mut Writer,
    reports: &[MetricReport],
    first_offset: i64,
    batch: usize,
) -> Result<Option<i64>> {
    let topic: Arc<str> = Arc::from(TOPIC);
    let mut committed = None;
    for (i, chunk) in reports.chunks(batch).enumerate() {
        for (j, r) in chunk.iter().enumerate() {
            let offset = first_offset + (i * batch + j) as i64;
            w.ingest(&topic, 0, offset, r).await?;
        }
        if let Some(c) = w.after_batch().await? {
            committed = c.first().map(|c| c.2);
        }
    }
    Ok(committed)
}

/// Every stored chunk of every agent of `reports`, by (kind, agent, window).
async fn chunks(
    store: &dyn ChunkStore,
    reports: &[MetricReport],
) -> Result<BTreeMap<(ChunkKind, String, i64), Vec<u8>>> {
    let mut agents: Vec<AgentKey> = reports
        .iter()
        .map(|r| AgentKey::new(&r.tenant_id, &r.agent_id))
        .collect();
    agents.sort();
    agents.dedup();
    let mut out = BTreeMap::new();
    for a in &agents {
        for kind in ChunkKind::ALL {
            for (w, bytes) in store.chunks(kind, a, i64::MIN, i64::MAX).await? {
                out.insert((kind, a.agent.to_string(), w), bytes);
            }
        }
    }
    Ok(out)
}

/// Per (agent, series): the number of samples and their sum over `[from, to)`, through
/// the store's queries.
async fn totals(
    ts: &dyn TimeSeriesStore,
    reports: &[MetricReport],
    from: i64,
    to: i64,
) -> Result<BTreeMap<(String, String), (u64, f64)>> {
    let mut out = BTreeMap::new();
    let mut seen = std::collections::BTreeSet::new();
    for r in reports {
        for s in samples(r) {
            seen.insert((r.tenant_id.clone(), r.agent_id.clone(), s.series()));
        }
    }
    for (tenant, agent, series) in seen {
        let q = RangeQuery {
            tenant_id: tenant,
            agent_id: agent.clone(),
            series: series.clone(),
            start_micros: from,
            end_micros: to,
            interval_micros: HOUR,
        };
        let b = ts.query(&q).await?;
        out.insert(
            (agent, series),
            (
                b.iter().map(|b| b.count).sum(),
                b.iter().map(|b| b.sum).sum(),
            ),
        );
    }
    Ok(out)
}

/// What the reports hold, per (agent, series), in `[from, to)`.
fn expected(reports: &[MetricReport], from: i64, to: i64) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for r in reports
        .iter()
        .filter(|r| r.occurred_at >= from && r.occurred_at < to)
    {
        for s in samples(r) {
            *out.entry((r.agent_id.clone(), s.series())).or_insert(0) += 1;
        }
    }
    out
}

fn counts(t: &BTreeMap<(String, String), (u64, f64)>) -> BTreeMap<(String, String), u64> {
    t.iter()
        .filter(|(_, v)| v.0 > 0)
        .map(|(k, v)| (k.clone(), v.0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_head_is_queryable_at_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let reports = fleet(3, 1, 1);
    let half = &reports[..reports.len() / 2];
    let topic: Arc<str> = Arc::from(TOPIC);
    for (i, r) in half.iter().enumerate() {
        ensure!(matches!(
            w.ingest(&topic, 0, i as i64, r).await?,
            Ingested::Stored(_)
        ));
    }
    // Nothing sealed, nothing checkpointed: every sample is in the head only.
    let got = totals(ts.as_ref(), half, t0(), t0() + 2 * HOUR).await?;
    ensure!(counts(&got) == expected(half, t0(), t0() + 2 * HOUR));
    ensure!(chunks(ts.store().as_ref(), half).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_seal_by_event_time_with_their_rollups() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let reports = fleet(4, 3, 2);
    feed(&mut w, &reports, 0, 500).await?;
    let stored = chunks(ts.store().as_ref(), &reports).await?;
    // Hours 0 and 1 ended more than the out-of-order allowance (10 min) before the last
    // sample (2:59:50): sealed. Hour 2 is open.
    for agent in reports.iter().map(|r| r.agent_id.clone()).take(4) {
        for h in 0..2 {
            ensure!(
                stored.contains_key(&(ChunkKind::Raw, agent.clone(), t0() + h * HOUR)),
                "hour {h} of {agent} sealed"
            );
        }
        ensure!(!stored.contains_key(&(ChunkKind::Raw, agent.clone(), t0() + 2 * HOUR)));
        ensure!(stored.contains_key(&(
            ChunkKind::Rollup5m,
            agent.clone(),
            ChunkKind::Rollup5m.window_of(t0())
        )));
    }
    // The sealed blocks hold exactly the reports' samples of their hours.
    let (from, to) = (t0(), t0() + 3 * HOUR);
    let got = totals(ts.as_ref(), &reports, from, to).await?;
    ensure!(counts(&got) == expected(&reports, from, to));
    // The 5-minute rollups answer like the raw samples.
    let r = &reports[0];
    for series in ["cpu.percent", "memory.used_bytes"] {
        let q = |interval| RangeQuery {
            tenant_id: r.tenant_id.clone(),
            agent_id: r.agent_id.clone(),
            series: series.into(),
            start_micros: from,
            end_micros: to,
            interval_micros: interval,
        };
        let raw = ts
            .query_resolution(&q(5 * MINUTE), fleet_timeseries::Resolution::Raw)
            .await?;
        let rolled = ts.query(&q(5 * MINUTE)).await?;
        ensure!(
            raw.len() == 36 && raw == rolled,
            "{series}: 5m from rollups and raw agree"
        );
    }
    Ok(())
}

/// The reference: every record in one go, then a checkpoint.
async fn reference(
    reports: &[MetricReport],
) -> Result<BTreeMap<(ChunkKind, String, i64), Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    feed(&mut w, reports, 0, 1000).await?;
    w.checkpoint().await?;
    chunks(ts.store().as_ref(), reports).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_replays_from_the_checkpoint_to_the_same_chunks() -> Result<()> {
    let reports = fleet(5, 3, 3);
    let want = reference(&reports).await?;
    ensure!(!want.is_empty());

    let dir = tempfile::tempdir()?;
    let crash_at = reports.len() * 2 / 3;
    let checkpoint_at = reports.len() / 2;
    {
        let ts = engine(dir.path(), config()).await?;
        let mut w = ts.writer();
        w.assign(TOPIC, 0).await?;
        feed(&mut w, &reports[..checkpoint_at], 0, 333).await?;
        let commit = w.checkpoint().await?;
        ensure!(commit == vec![(TOPIC.to_owned(), 0, checkpoint_at as i64)]);
        // More records, some windows sealed meanwhile, then the process dies without a
        // checkpoint.
        feed(
            &mut w,
            &reports[checkpoint_at..crash_at],
            checkpoint_at as i64,
            333,
        )
        .await?;
    }
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let resume = w
        .assign(TOPIC, 0)
        .await?
        .context("a checkpointed partition")?;
    ensure!(
        resume == checkpoint_at as i64,
        "resumes at the checkpoint: {resume}"
    );
    // Before replaying, a query already sees what the checkpoint saved.
    let upto = reports[checkpoint_at - 1].occurred_at;
    let seen = totals(ts.as_ref(), &reports[..checkpoint_at], t0(), upto + 1).await?;
    ensure!(counts(&seen) == expected(&reports[..checkpoint_at], t0(), upto + 1));
    let r = usize::try_from(resume)?;
    feed(&mut w, &reports[r..], resume, 777).await?;
    w.checkpoint().await?;
    let got = chunks(ts.store().as_ref(), &reports).await?;
    ensure!(got.keys().eq(want.keys()), "the same chunks");
    for (k, v) in &want {
        ensure!(got.get(k) == Some(v), "chunk {k:?} differs after the crash");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_under_a_memory_limit_loses_nothing() -> Result<()> {
    let reports = fleet(20, 2, 4);
    let want = reference(&reports).await?;
    let dir = tempfile::tempdir()?;
    let ts = engine(
        dir.path(),
        EngineConfig {
            head_memory_limit: 64 << 10,
            ..config()
        },
    )
    .await?;
    let mut w = ts.writer();
    feed(&mut w, &reports, 0, 200).await?;
    ensure!(
        w.head_bytes() <= 256 << 10,
        "the head stays near its limit: {}",
        w.head_bytes()
    );
    w.checkpoint().await?;
    // Evicted agents are read from their segments meanwhile.
    let (from, to) = (t0(), t0() + 2 * HOUR);
    let got = totals(ts.as_ref(), &reports, from, to).await?;
    ensure!(counts(&got) == expected(&reports, from, to));
    let stored = chunks(ts.store().as_ref(), &reports).await?;
    for (k, v) in &want {
        ensure!(
            stored.get(k) == Some(v),
            "chunk {k:?} differs with eviction"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_samples_within_the_allowance_are_kept_older_ones_refused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let topic: Arc<str> = Arc::from(TOPIC);
    let mk = |at: i64| fleet_schemas::fixtures::metric_report("t", "a", at);
    let now = t0() + 30 * MINUTE;
    ensure!(matches!(
        w.ingest(&topic, 0, 0, &mk(now)).await?,
        Ingested::Stored(_)
    ));
    ensure!(matches!(
        w.ingest(&topic, 0, 1, &mk(now - 9 * MINUTE)).await?,
        Ingested::Stored(_)
    ));
    ensure!(w.ingest(&topic, 0, 2, &mk(now - 11 * MINUTE)).await? == Ingested::TooLate);
    // A re-sent report (same time) replaces, not doubles.
    let mut again = mk(now);
    again.cpu_percent = 99.0;
    w.ingest(&topic, 0, 3, &again).await?;
    let q = RangeQuery {
        tenant_id: "t".into(),
        agent_id: "a".into(),
        series: "cpu.percent".into(),
        start_micros: t0(),
        end_micros: t0() + HOUR,
        interval_micros: HOUR,
    };
    let b = ts.query(&q).await?;
    ensure!(b.len() == 1 && b[0].count == 2 && b[0].max == 99.0, "{b:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_sealed_by_the_partitions_clock() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let topic: Arc<str> = Arc::from(TOPIC);
    let quiet = fleet_schemas::fixtures::metric_report("t", "quiet", t0() + 5 * MINUTE);
    w.ingest(&topic, 0, 0, &quiet).await?;
    let key = AgentKey::new("t", "quiet");
    // Another agent on the partition keeps reporting for two hours.
    for i in 0..(2 * 360 + 10) {
        let r = fleet_schemas::fixtures::metric_report(
            "t",
            "busy",
            t0() + 5 * MINUTE + i * 10 * SECOND,
        );
        w.ingest(&topic, 0, 1 + i, &r).await?;
        if i % 100 == 0 {
            w.after_batch().await?;
        }
    }
    w.after_batch().await?;
    let sealed = ts
        .store()
        .chunks(ChunkKind::Raw, &key, i64::MIN, i64::MAX)
        .await?;
    ensure!(
        sealed.len() == 1 && sealed[0].0 == t0(),
        "the quiet agent's hour is sealed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_process_reads_the_checkpoint() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let reports = fleet(2, 1, 5);
    let part = &reports[..100];
    feed(&mut w, part, 0, 50).await?;
    // A second engine over the same chunk store holds no head: it reads segments.
    let other = TimeSeries::new(ts.store().clone(), Retention::default(), config())?;
    let (from, to) = (t0(), t0() + HOUR);
    let before = totals(&other, part, from, to).await?;
    ensure!(counts(&before).is_empty(), "nothing checkpointed yet");
    w.checkpoint().await?;
    let after = totals(&other, part, from, to).await?;
    ensure!(counts(&after) == expected(part, from, to));
    Ok(())
}

/// A chart over sealed hours and the open one (in the head, in the checkpoint segments
/// of another process, and with a block stored for the open window by `write`): the
/// rollups answer exactly like the raw samples, and `query_many` like `query` one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charts_over_the_open_hour_equal_the_raw_samples() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let reports = fleet(3, 3, 7);
    feed(&mut w, &reports, 0, 400).await?;
    w.checkpoint().await?;
    let r = &reports[0];
    let series = ["load.1", "cpu.percent", "memory.percent", "no.such"];
    let chart = |interval| -> Vec<RangeQuery> {
        series
            .iter()
            .map(|s| RangeQuery {
                tenant_id: r.tenant_id.clone(),
                agent_id: r.agent_id.clone(),
                series: (*s).into(),
                start_micros: t0() + 3 * MINUTE,
                end_micros: t0() + 3 * HOUR,
                interval_micros: interval,
            })
            .collect()
    };
    // Checks every engine of `engines` against the raw samples of the first.
    async fn check(engines: &[&dyn TimeSeriesStore], qs: &[RangeQuery]) -> Result<()> {
        for e in engines {
            let many = e.query_many(qs).await?;
            ensure!(many.len() == qs.len());
            for (q, got) in qs.iter().zip(&many) {
                let raw = engines[0]
                    .query_resolution(q, fleet_timeseries::Resolution::Raw)
                    .await?;
                ensure!(
                    *got == raw && e.query(q).await? == raw,
                    "{} at {} µs: the rollups differ from the raw samples",
                    q.series,
                    q.interval_micros
                );
                ensure!((q.series == "no.such") == raw.is_empty());
            }
        }
        Ok(())
    }
    let other = TimeSeries::new(ts.store().clone(), Retention::default(), config())?;
    for interval in [5 * MINUTE, HOUR] {
        check(&[ts.as_ref(), &other], &chart(interval)).await?;
    }
    // The open hour (2) gets a block stored by `write` (as a tool may): one sample at a
    // time the head holds (the head's value wins), one at a new time.
    let open_hour = t0() + 2 * HOUR;
    let in_head = reports
        .iter()
        .find(|x| x.agent_id == r.agent_id && x.occurred_at >= open_hour)
        .context("a report in the open hour")?
        .occurred_at;
    let point = |ts_micros, value| fleet_timeseries::Point {
        tenant_id: r.tenant_id.clone(),
        agent_id: r.agent_id.clone(),
        series: "cpu.percent".into(),
        ts_micros,
        value,
    };
    ts.write(&[point(in_head, -1.0), point(open_hour + 7 * SECOND, 1234.5)])
        .await?;
    for interval in [5 * MINUTE, HOUR] {
        let qs = chart(interval);
        check(&[ts.as_ref()], &qs).await?;
        let cpu = ts.query(&qs[1]).await?;
        ensure!(
            cpu.iter().any(|b| b.max == 1234.5) && cpu.iter().all(|b| b.min != -1.0),
            "the stored block's new sample counts, the head wins at the same time"
        );
    }
    Ok(())
}

/// A direct write (`TimeSeriesStore::write`, what tools use) into a window the projection's
/// head holds open keeps the head's checkpoint: after a crash the restarted writer resumes
/// from that checkpoint with the window's samples, and the written point is kept too.
#[tokio::test]
async fn a_direct_write_into_an_open_window_keeps_the_heads_checkpoint() -> Result<()> {
    // One agent, one hour: the window stays open (nothing is past its end).
    let reports = fleet(1, 1, 7);
    let half = reports.len() / 2;
    let first = reports.first().context("reports")?;
    let dir = tempfile::tempdir()?;
    {
        let ts = engine(dir.path(), config()).await?;
        let mut w = ts.writer();
        w.assign(TOPIC, 0).await?;
        feed(&mut w, &reports[..half], 0, 100).await?;
        let commit = w.checkpoint().await?;
        ensure!(commit == vec![(TOPIC.to_owned(), 0, half as i64)]);
        ts.write(&[fleet_timeseries::Point {
            tenant_id: first.tenant_id.clone(),
            agent_id: first.agent_id.clone(),
            series: "custom.tool".into(),
            ts_micros: first.occurred_at + 1,
            value: 1.0,
        }])
        .await?;
        // The process dies here, without another checkpoint.
    }
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let resume = w
        .assign(TOPIC, 0)
        .await?
        .context("a checkpointed partition")?;
    ensure!(resume == half as i64, "resumed at {resume}");
    let (from, to) = (t0(), t0() + HOUR);
    let got: BTreeMap<_, u64> = totals(ts.as_ref(), &reports[..half], from, to)
        .await?
        .into_iter()
        .map(|(k, (n, _))| (k, n))
        .collect();
    let want = expected(&reports[..half], from, to);
    ensure!(
        got == want,
        "the head lost its checkpointed samples: {} series stored as posted of {}",
        got.iter().filter(|(k, n)| want.get(*k) == Some(n)).count(),
        want.len()
    );
    let q = RangeQuery {
        tenant_id: first.tenant_id.clone(),
        agent_id: first.agent_id.clone(),
        series: "custom.tool".into(),
        start_micros: from,
        end_micros: to,
        interval_micros: HOUR,
    };
    let tool: u64 = ts.query(&q).await?.iter().map(|b| b.count).sum();
    ensure!(tool == 1, "the written point: {tool}");
    Ok(())
}

use fleet_schemas::fixtures::labeled_sample as labeled;

fn sample_batch(samples: Vec<LabeledSample>, received_at: i64) -> SampleBatch {
    SampleBatch {
        event_id: "b".into(),
        tenant_id: "t1".into(),
        partition_key: "t1/0".into(),
        source: SampleSource::PrometheusRemoteWrite,
        received_at,
        samples,
    }
}

/// The raw samples of one series of `agent` in `[from, to)`, through the store's queries.
async fn raw(
    ts: &dyn TimeSeriesStore,
    agent: &str,
    series: &str,
    from: i64,
    to: i64,
) -> Result<Vec<(i64, f64)>> {
    let q = RangeQuery {
        tenant_id: "t1".into(),
        agent_id: agent.into(),
        series: series.into(),
        start_micros: from,
        end_micros: to,
        interval_micros: SECOND,
    };
    Ok(ts
        .query_resolution(&q, fleet_timeseries::Resolution::Raw)
        .await?
        .iter()
        .map(|b| (b.start_micros, b.last))
        .collect())
}

/// A batch of samples goes to the units of its sources, each series named by its text;
/// each unit's samples of one time are one row (one timestamp column per unit), staleness
/// NaNs, times out of range and over-long names are counted, not stored; sealed blocks
/// hold the same, and a crash restores the units from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn samples_are_stored_per_source_unit_one_row_per_time() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let topic: Arc<str> = Arc::from("fleet.samples.v1");
    let node = [("instance", "a:9100"), ("job", "node")];
    let long = "x".repeat(fleet_timeseries::limits::MAX_NAME_BYTES + 1);
    let mut samples = Vec::new();
    for i in 0..3 {
        let t = t0() + i * 15 * SECOND;
        samples.push(labeled("up", &node, t, 1.0));
        samples.push(labeled(
            "node_load1",
            &[("instance", "a:9100"), ("job", "node")],
            t,
            i as f64,
        ));
        samples.push(labeled(
            "mem_used",
            &[("host", "web-1")],
            t + 1,
            10.0 + i as f64,
        ));
        samples.push(labeled("temp", &[("zone", "a\"b")], t, 20.0));
    }
    samples.push(labeled(
        "up",
        &[("instance", "b:9100"), ("job", "node")],
        t0(),
        f64::NAN,
    ));
    samples.push(labeled(
        "up",
        &[("instance", "c:9100"), ("job", "node")],
        i64::MAX,
        1.0,
    ));
    samples.push(labeled(&long, &[], t0(), 1.0));
    let got = w
        .ingest_samples(&topic, 0, 0, &sample_batch(samples, t0() + HOUR))
        .await?;
    ensure!(got.stored == 12, "{got:?}");
    ensure!(
        got.non_finite == 1 && got.out_of_range == 1 && got.name_too_long == 1,
        "{got:?}"
    );
    ensure!(got.refused() == 2 && got.first_refused.is_some(), "{got:?}");

    let unit = r#"~{instance="a:9100",job="node"}"#;
    ensure!(
        ts.series("t1", unit).await?
            == vec![
                r#"node_load1{instance="a:9100",job="node"}"#.to_string(),
                r#"up{instance="a:9100",job="node"}"#.to_string()
            ],
        "the target's two series are one unit's"
    );
    ensure!(
        ts.series("t1", r#"~{host="web-1"}"#).await?
            == vec![r#"mem_used{host="web-1"}"#.to_string()]
    );
    ensure!(
        ts.series("t1", r#"~temp{zone="a\"b"}"#).await? == vec![r#"temp{zone="a\"b"}"#.to_string()]
    );
    ensure!(
        ts.series("t1", r#"~{instance="b:9100",job="node"}"#)
            .await?
            .is_empty(),
        "a NaN alone stores nothing"
    );
    let load = r#"node_load1{instance="a:9100",job="node"}"#;
    let expect: Vec<(i64, f64)> = (0..3).map(|i| (t0() + i * 15 * SECOND, i as f64)).collect();
    ensure!(raw(ts.as_ref(), unit, load, t0(), t0() + HOUR).await? == expect);

    // Checkpoint, then a restart: the units come back from the checkpoint; a later hour
    // seals the first one, whose block holds the unit's one timestamp column.
    w.checkpoint().await?;
    drop(w);
    let ts = Arc::new(TimeSeries::new(
        ts.store().clone(),
        Retention::default(),
        config(),
    )?);
    let mut w = ts.writer();
    ensure!(w.assign(&topic, 0).await? == Some(1));
    let later = t0() + 2 * HOUR;
    let got = w
        .ingest_samples(
            &topic,
            0,
            1,
            &sample_batch(vec![labeled("up", &node, later, 1.0)], later),
        )
        .await?;
    ensure!(got.stored == 1);
    w.after_batch().await?;
    let key = AgentKey::new("t1", unit);
    let blocks = ts
        .store()
        .chunks(ChunkKind::Raw, &key, t0(), t0() + HOUR)
        .await?;
    ensure!(blocks.len() == 1, "the first hour sealed: {}", blocks.len());
    let block = fleet_timeseries::chunk::decode(&blocks[0].1)?;
    ensure!(block.timestamps() == [t0(), t0() + 15 * SECOND, t0() + 30 * SECOND]);
    ensure!(block.series().len() == 2);
    ensure!(raw(ts.as_ref(), unit, load, t0(), t0() + HOUR).await? == expect);
    Ok(())
}

/// The writer takes several topics: partitions of two topics with the same number keep
/// their own agents in the checkpoint, so a process that takes only one of them restores
/// that one's open windows (before, both topics' agents were filed under the first topic's
/// partition: the second's open hour was lost when its new holder wrote to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_two_topics_with_one_number_keep_their_agents_apart() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ts = engine(dir.path(), config()).await?;
    let mut w = ts.writer();
    let reports = fleet(2, 1, 9);
    let first = reports[0].agent_id.clone();
    let (a, b): (Vec<MetricReport>, Vec<MetricReport>) =
        reports.into_iter().partition(|r| r.agent_id == first);
    let (ta, tb): (Arc<str>, Arc<str>) = (Arc::from("topic.a"), Arc::from("topic.b"));
    let half = |v: &[MetricReport]| v[..v.len() / 2].to_vec();
    let (a1, b1) = (half(&a), half(&b));
    for (i, r) in a1.iter().enumerate() {
        w.ingest(&ta, 0, i as i64, r).await?;
    }
    for (i, r) in b1.iter().enumerate() {
        w.ingest(&tb, 0, i as i64, r).await?;
    }
    w.checkpoint().await?;
    drop(w);
    // Another process takes topic.b's partition 0 only, and goes on with its records.
    let other = Arc::new(TimeSeries::new(
        ts.store().clone(),
        Retention::default(),
        config(),
    )?);
    let mut w = other.writer();
    ensure!(w.assign(&tb, 0).await? == Some(b1.len() as i64));
    let b2 = &b[b1.len()..];
    for (i, r) in b2.iter().enumerate() {
        w.ingest(&tb, 0, (b1.len() + i) as i64, r).await?;
    }
    let (from, to) = (t0(), t0() + 2 * HOUR);
    let got = totals(other.as_ref(), &b, from, to).await?;
    ensure!(
        counts(&got) == expected(&b, from, to),
        "topic.b's first half kept"
    );
    Ok(())
}
