//! The time-series conformance cases, written once against the trait, and the
//! `conformance!()` macro that turns each into a test of one engine. Each test file
//! (`engine.rs`, one module per chunk store)
//! defines `run` (a fresh, empty store per test) and calls `conformance!()`.

#![allow(dead_code)]

use std::sync::Arc;

use anyhow::{ensure, Result};
use fleet_timeseries::{
    Bucket, Error as StoreError, Point, RangeQuery, Resolution, TimeSeriesStore, MAX_BUCKETS,
};

/// The same list of cases for every engine: each module defines `run` and calls this.
macro_rules! conformance {
    () => {
        conformance!(
            write_then_query_gives_exact_buckets,
            rewriting_a_point_replaces_it,
            series_lists_each_name_once,
            list_series_lists_the_whole_store,
            agents_tenants_and_series_are_isolated,
            invalid_ranges_are_rejected,
            buckets_align_to_the_epoch,
            range_is_start_inclusive_end_exclusive,
            rollups_agree_with_the_raw_samples,
            rollups_are_idempotent_under_replay,
            queries_use_the_coarsest_rollup,
            rollups_refuse_intervals_they_cannot_serve,
            query_many_answers_like_query_one_by_one,
            rollups_follow_a_window_sealed_again,
            points_are_the_raw_samples,
        );
    };
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                run(crate::ts_cases::$case).await
            }
        )+
    };
}

const SECOND: i64 = 1_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

/// Midnight UTC two days ago, in µs: a multiple of every interval used below, and recent
/// enough to be inside every default retention.
pub(crate) fn t0() -> i64 {
    let now = fleet_schemas::time::now_micros();
    now - now.rem_euclid(DAY) - 2 * DAY
}

pub(crate) fn point(tenant: &str, agent: &str, series: &str, ts: i64, value: f64) -> Point {
    Point {
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        series: series.into(),
        ts_micros: ts,
        value,
    }
}

pub(crate) fn range(
    tenant: &str,
    agent: &str,
    series: &str,
    start: i64,
    end: i64,
    interval: i64,
) -> RangeQuery {
    RangeQuery {
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        series: series.into(),
        start_micros: start,
        end_micros: end,
        interval_micros: interval,
    }
}

fn bucket(start: i64, min: f64, max: f64, avg: f64, count: u64, last: f64) -> Bucket {
    Bucket {
        start_micros: start,
        min,
        max,
        avg,
        sum: avg * count as f64,
        count,
        last,
    }
}

pub(crate) async fn write_then_query_gives_exact_buckets(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    // Written out of time order and over two calls: the store orders by time.
    store
        .write(&[
            point("t", "a", "cpu.percent", t0() + 50 * SECOND, 4.0),
            point("t", "a", "cpu.percent", t0() + 10 * SECOND, 1.0),
            point(
                "t",
                "a",
                "cpu.percent",
                t0() + 2 * MINUTE + 5 * SECOND,
                10.0,
            ),
        ])
        .await?;
    store
        .write(&[
            point("t", "a", "cpu.percent", t0() + 30 * SECOND, 7.0),
            point(
                "t",
                "a",
                "cpu.percent",
                t0() + 2 * MINUTE + 40 * SECOND,
                6.0,
            ),
        ])
        .await?;
    let got = store
        .query(&range(
            "t",
            "a",
            "cpu.percent",
            t0(),
            t0() + 5 * MINUTE,
            MINUTE,
        ))
        .await?;
    let expected = vec![
        // 1, 7, 4 at 10 s, 30 s, 50 s: last is the latest sample, not the last written.
        bucket(t0(), 1.0, 7.0, 4.0, 3, 4.0),
        // The minute from t0() + 1 min has no sample: omitted.
        bucket(t0() + 2 * MINUTE, 6.0, 10.0, 8.0, 2, 6.0),
    ];
    ensure!(got == expected, "got {got:#?}\nexpected {expected:#?}");

    // One bucket over the whole range.
    let got = store
        .query(&range(
            "t",
            "a",
            "cpu.percent",
            t0(),
            t0() + 5 * MINUTE,
            5 * MINUTE,
        ))
        .await?;
    ensure!(
        got == vec![bucket(t0(), 1.0, 10.0, 5.6, 5, 6.0)],
        "got {got:#?}"
    );

    // Nothing stored in range: no buckets.
    let empty = store
        .query(&range(
            "t",
            "a",
            "cpu.percent",
            t0() + 10 * MINUTE,
            t0() + 20 * MINUTE,
            MINUTE,
        ))
        .await?;
    ensure!(empty.is_empty());
    store.write(&[]).await?;
    Ok(())
}

pub(crate) async fn rewriting_a_point_replaces_it(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    let batch = [
        point("t", "a", "mem.percent", t0() + SECOND, 10.0),
        point("t", "a", "mem.percent", t0() + 2 * SECOND, 20.0),
    ];
    store.write(&batch).await?;
    store.write(&batch).await?;
    let q = range("t", "a", "mem.percent", t0(), t0() + MINUTE, MINUTE);
    ensure!(store.query(&q).await? == vec![bucket(t0(), 10.0, 20.0, 15.0, 2, 20.0)]);

    // Same key, new value: replaced, not added.
    store
        .write(&[point("t", "a", "mem.percent", t0() + 2 * SECOND, 30.0)])
        .await?;
    let got = store.query(&q).await?;
    ensure!(
        got == vec![bucket(t0(), 10.0, 30.0, 20.0, 2, 30.0)],
        "got {got:#?}"
    );

    // The same key twice in one call: the later one wins.
    store
        .write(&[
            point("t", "a", "mem.percent", t0() + SECOND, 1.0),
            point("t", "a", "mem.percent", t0() + SECOND, 2.0),
        ])
        .await?;
    let got = store.query(&q).await?;
    ensure!(
        got == vec![bucket(t0(), 2.0, 30.0, 16.0, 2, 30.0)],
        "got {got:#?}"
    );
    Ok(())
}

pub(crate) async fn series_lists_each_name_once(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    ensure!(
        store.series("t", "a").await?.is_empty(),
        "no series before any write"
    );
    for i in 0..3 {
        store
            .write(&[
                point("t", "a", "disk.percent:/var", t0() + i * SECOND, 1.0),
                point("t", "a", "cpu.percent", t0() + i * SECOND, 1.0),
                point("t", "a", "disk.percent:/", t0() + i * SECOND, 1.0),
            ])
            .await?;
    }
    let mut got = store.series("t", "a").await?;
    got.sort();
    ensure!(
        got == vec!["cpu.percent", "disk.percent:/", "disk.percent:/var"],
        "got {got:?}"
    );
    Ok(())
}

pub(crate) async fn list_series_lists_the_whole_store(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    ensure!(
        store.list_series(usize::MAX).await?.is_empty(),
        "no series before any write"
    );
    for i in 0..2 {
        store
            .write(&[
                point("t2", "b", "cpu.percent", t0() + i * SECOND, 1.0),
                point("t1", "a", "mem.percent", t0() + i * SECOND, 1.0),
                point("t1", "a", "cpu.percent", t0() + i * SECOND, 1.0),
                point("t1", "c", "cpu.percent", t0() + i * SECOND, 1.0),
            ])
            .await?;
    }
    let key = |t: &str, a: &str, s: &str| fleet_timeseries::SeriesKey {
        tenant_id: t.into(),
        agent_id: a.into(),
        series: s.into(),
    };
    let all = vec![
        key("t1", "a", "cpu.percent"),
        key("t1", "a", "mem.percent"),
        key("t1", "c", "cpu.percent"),
        key("t2", "b", "cpu.percent"),
    ];
    let got = store.list_series(usize::MAX).await?;
    ensure!(got == all, "every series once, ordered: got {got:?}");
    let first = store.list_series(2).await?;
    ensure!(first == all[..2], "the first two: got {first:?}");
    Ok(())
}

pub(crate) async fn agents_tenants_and_series_are_isolated(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    // Names that are prefixes of one another must not bleed into each other.
    let keys = [
        ("t", "a", "cpu"),
        ("t", "a", "cpu.percent"),
        ("t", "ab", "cpu"),
        ("t", "b", "cpu"),
        ("tt", "a", "cpu"),
        ("t2", "a", "cpu"),
    ];
    let points: Vec<Point> = keys
        .iter()
        .enumerate()
        .map(|(i, (t, a, s))| point(t, a, s, t0() + SECOND, i as f64))
        .collect();
    store.write(&points).await?;

    for (i, (t, a, s)) in keys.iter().enumerate() {
        let got = store
            .query(&range(t, a, s, t0(), t0() + MINUTE, MINUTE))
            .await?;
        let v = i as f64;
        ensure!(
            got == vec![bucket(t0(), v, v, v, 1, v)],
            "{t}/{a}/{s} sees only its own sample: {got:#?}"
        );
    }
    ensure!(store.series("t", "a").await? == vec!["cpu", "cpu.percent"]);
    ensure!(store.series("t", "ab").await? == vec!["cpu"]);
    ensure!(store.series("tt", "a").await? == vec!["cpu"]);
    ensure!(store.series("t", "c").await?.is_empty());
    ensure!(store
        .query(&range("t", "c", "cpu", t0(), t0() + MINUTE, MINUTE))
        .await?
        .is_empty());
    Ok(())
}

pub(crate) async fn invalid_ranges_are_rejected(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    let invalid = [
        range("t", "a", "cpu", t0(), t0() + MINUTE, 0),
        range("t", "a", "cpu", t0(), t0() + MINUTE, -SECOND),
        range("t", "a", "cpu", t0(), t0(), SECOND),
        range("t", "a", "cpu", t0() + MINUTE, t0(), SECOND),
        range(
            "t",
            "a",
            "cpu",
            t0(),
            t0() + (MAX_BUCKETS + 1) * SECOND,
            SECOND,
        ),
        // Times a client may ask for: beyond ±2^62 µs, refused without overflowing.
        range("t", "a", "cpu", i64::MIN, i64::MAX, SECOND),
        range("t", "a", "cpu", i64::MIN, t0(), i64::MAX),
        range("t", "a", "cpu", -(1 << 62) - 1, t0(), HOUR),
    ];
    for q in &invalid {
        match store.query(q).await {
            Err(StoreError::InvalidQuery(_)) => {}
            other => anyhow::bail!("{q:?} should be refused, got {other:?}"),
        }
    }
    ensure!(store
        .query(&range(
            "t",
            "a",
            "cpu",
            t0(),
            t0() + MAX_BUCKETS * SECOND,
            SECOND
        ))
        .await
        .is_ok());

    match store.write(&[point("t", "a", "cpu", t0(), f64::NAN)]).await {
        Err(StoreError::InvalidQuery(_)) => {}
        other => anyhow::bail!("NaN should be refused, got {other:?}"),
    }
    for ts in [i64::MAX, i64::MIN, (1 << 62) + 1] {
        match store.write(&[point("t", "a", "cpu", ts, 1.0)]).await {
            Err(StoreError::InvalidQuery(_)) => {}
            other => anyhow::bail!("time {ts} should be refused, got {other:?}"),
        }
    }
    Ok(())
}

pub(crate) async fn buckets_align_to_the_epoch(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    let interval = 5 * MINUTE;
    // Samples 7 min 59 s, 8 min 1 s and 14 min after t0(); the query starts unaligned at
    // 7 min 30 s, and its first bucket is the one from 5 min.
    store
        .write(&[
            point("t", "a", "load.1", t0() + 7 * MINUTE + 59 * SECOND, 1.0),
            point("t", "a", "load.1", t0() + 8 * MINUTE + SECOND, 2.0),
            point("t", "a", "load.1", t0() + 14 * MINUTE, 3.0),
        ])
        .await?;
    let got = store
        .query(&range(
            "t",
            "a",
            "load.1",
            t0() + 7 * MINUTE + 30 * SECOND,
            t0() + 20 * MINUTE,
            interval,
        ))
        .await?;
    let expected = vec![
        bucket(t0() + 5 * MINUTE, 1.0, 2.0, 1.5, 2, 2.0),
        bucket(t0() + 10 * MINUTE, 3.0, 3.0, 3.0, 1, 3.0),
    ];
    ensure!(got == expected, "got {got:#?}\nexpected {expected:#?}");
    for b in &got {
        ensure!(
            b.start_micros % interval == 0,
            "bucket starts on a multiple of the interval"
        );
    }
    Ok(())
}

pub(crate) async fn range_is_start_inclusive_end_exclusive(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    store
        .write(&[
            point("t", "a", "net.rx", t0() - 1, 1.0),
            point("t", "a", "net.rx", t0(), 2.0),
            point("t", "a", "net.rx", t0() + MINUTE - 1, 3.0),
            point("t", "a", "net.rx", t0() + MINUTE, 4.0),
        ])
        .await?;
    let got = store
        .query(&range("t", "a", "net.rx", t0(), t0() + MINUTE, MINUTE))
        .await?;
    ensure!(
        got == vec![bucket(t0(), 2.0, 3.0, 2.5, 2, 3.0)],
        "got {got:#?}"
    );
    Ok(())
}

/// A day of samples every 10 s on two series, values with exact binary sums (multiples of
/// 1/4), in a shuffled order.
fn day_of_samples() -> Vec<Point> {
    let mut points = Vec::new();
    for i in 0..(DAY / (10 * SECOND)) {
        let ts = t0() + i * 10 * SECOND + (i % 7) * 1000;
        let v = ((i * 37) % 400) as f64 / 4.0;
        points.push(point("t", "a", "cpu.percent", ts, v));
        if i % 3 == 0 {
            points.push(point("t", "a", "mem.percent", ts, 100.0 - v));
        }
    }
    // A fixed permutation: every 7th from each start.
    let mut shuffled = Vec::with_capacity(points.len());
    for start in 0..7 {
        shuffled.extend(points.iter().skip(start).step_by(7).cloned());
    }
    shuffled
}

async fn every_resolution(
    store: &dyn TimeSeriesStore,
    series: &str,
    interval: i64,
) -> Result<Vec<Vec<Bucket>>> {
    let mut out = Vec::new();
    for r in [Resolution::Raw].into_iter().chain(Resolution::ROLLUPS) {
        let q = range("t", "a", series, t0(), t0() + DAY, interval);
        out.push(store.query_resolution(&q, r).await?);
    }
    Ok(out)
}

pub(crate) async fn rollups_agree_with_the_raw_samples(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    for chunk in day_of_samples().chunks(500) {
        store.write(chunk).await?;
    }
    for series in ["cpu.percent", "mem.percent"] {
        let all = every_resolution(store.as_ref(), series, HOUR).await?;
        ensure!(
            all[0].len() == 24,
            "{series}: 24 hourly buckets from raw, got {}",
            all[0].len()
        );
        for (r, got) in Resolution::ROLLUPS.iter().zip(&all[1..]) {
            ensure!(
                *got == all[0],
                "{series}: the {r} rollup differs from the raw samples:\n{got:#?}\nvs\n{:#?}",
                all[0]
            );
        }
        // Five-minute buckets from the 5m rollup equal those from the raw samples.
        for r in [Resolution::Raw] {
            let q = range("t", "a", series, t0(), t0() + DAY, 5 * MINUTE);
            let fine = store.query_resolution(&q, r).await?;
            let coarse = store.query_resolution(&q, Resolution::FiveMinutes).await?;
            ensure!(
                fine.len() == 288 && fine == coarse,
                "{series}: 5m buckets from {r}"
            );
        }
    }
    Ok(())
}

pub(crate) async fn rollups_are_idempotent_under_replay(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    let points = day_of_samples();
    for chunk in points.chunks(1000) {
        store.write(chunk).await?;
    }
    let before = every_resolution(store.as_ref(), "cpu.percent", HOUR).await?;
    // Replay: everything again, in other batches and order.
    let mut again = points.clone();
    again.reverse();
    for chunk in again.chunks(333) {
        store.write(chunk).await?;
    }
    let after = every_resolution(store.as_ref(), "cpu.percent", HOUR).await?;
    ensure!(before == after, "a replay changed a rollup");
    let n: u64 = after[2].iter().map(|b| b.count).sum();
    ensure!(
        n == (DAY / (10 * SECOND)) as u64,
        "the hour rollup counts each sample once: {n}"
    );

    // A changed value reaches every rollup.
    let p = points
        .iter()
        .find(|p| p.series == "cpu.percent")
        .ok_or_else(|| anyhow::anyhow!("no cpu sample"))?;
    store
        .write(&[point("t", "a", "cpu.percent", p.ts_micros, 1000.0)])
        .await?;
    let changed = every_resolution(store.as_ref(), "cpu.percent", HOUR).await?;
    for (i, r) in changed.iter().enumerate() {
        ensure!(
            r.iter().any(|b| b.max == 1000.0),
            "resolution #{i} did not see the rewritten sample"
        );
        ensure!(
            r == &changed[0],
            "resolution #{i} disagrees after a rewrite"
        );
    }
    Ok(())
}

pub(crate) async fn queries_use_the_coarsest_rollup(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    ensure!(Resolution::for_interval(10 * SECOND) == Resolution::Raw);
    ensure!(Resolution::for_interval(2 * MINUTE) == Resolution::Raw);
    ensure!(Resolution::for_interval(15 * MINUTE) == Resolution::FiveMinutes);
    ensure!(Resolution::for_interval(DAY) == Resolution::OneHour);

    // A sample older than the raw retention is not kept raw, but the rollups keep it: only
    // a query served by a rollup finds it.
    let raw_keep = i64::try_from(store.retention().raw.as_micros())?;
    let now = fleet_schemas::time::now_micros();
    let old_ts = now - raw_keep - DAY;
    let old_ts = old_ts - old_ts.rem_euclid(HOUR) + 90 * SECOND;
    store
        .write(&[point("t", "a", "load.1", old_ts, 3.5)])
        .await?;
    let q = |interval| range("t", "a", "load.1", old_ts - HOUR, old_ts + HOUR, interval);
    ensure!(
        store.query(&q(10 * SECOND)).await?.is_empty(),
        "raw samples past retention are not stored"
    );
    ensure!(
        store.query(&q(MINUTE)).await?.is_empty(),
        "1-minute buckets come from the raw samples"
    );
    for interval in [5 * MINUTE, HOUR] {
        let got = store.query(&q(interval)).await?;
        ensure!(
            got == vec![bucket(
                old_ts - old_ts.rem_euclid(interval),
                3.5,
                3.5,
                3.5,
                1,
                3.5
            )],
            "interval {interval}: {got:#?}"
        );
    }
    Ok(())
}

pub(crate) async fn rollups_refuse_intervals_they_cannot_serve(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    for (r, interval) in [
        (Resolution::FiveMinutes, MINUTE),
        (Resolution::OneHour, 30 * MINUTE),
    ] {
        match store
            .query_resolution(&range("t", "a", "cpu", t0(), t0() + DAY, interval), r)
            .await
        {
            Err(StoreError::InvalidQuery(_)) => {}
            other => anyhow::bail!("{r} at {interval} µs should be refused, got {other:?}"),
        }
    }
    Ok(())
}

/// `query_many` (a chart: several series of one agent in one call) gives what `query`
/// gives for each, in the order asked, from the rollups and from the raw samples; a
/// series the agent lacks gives no buckets; queries of other agents or ranges in the
/// same call are answered too; an invalid query fails the call.
pub(crate) async fn query_many_answers_like_query_one_by_one(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    let mut points = Vec::new();
    for i in 0..(26 * 360) {
        let ts = t0() + i * 10 * SECOND + (i % 5) * 1000;
        for (k, series) in ["cpu.percent", "memory.percent", "disk.percent:/"]
            .iter()
            .enumerate()
        {
            // Not every series at every time.
            if (i + k as i64) % 7 != 0 {
                let v = ((i * 31 + k as i64 * 17) % 1000) as f64 / 10.0 + 0.01;
                points.push(point("t", "a", series, ts, v));
            }
        }
        points.push(point("t", "b", "cpu.percent", ts, (i % 100) as f64));
    }
    for chunk in points.chunks(5_000) {
        store.write(chunk).await?;
    }
    let asked = ["memory.percent", "cpu.percent", "no.such", "disk.percent:/"];
    // 5-minute and 1-hour rollups, 1-minute buckets from raw samples, an unaligned
    // start: each from the same resolution as `query` would pick.
    for (start, end, interval) in [
        (t0(), t0() + DAY, 5 * MINUTE),
        (t0() + 7 * MINUTE, t0() + 25 * HOUR, HOUR),
        (t0() + HOUR, t0() + 3 * HOUR, MINUTE),
    ] {
        let qs: Vec<RangeQuery> = asked
            .iter()
            .map(|s| range("t", "a", s, start, end, interval))
            .collect();
        let got = store.query_many(&qs).await?;
        ensure!(got.len() == qs.len(), "one answer per query");
        for (q, g) in qs.iter().zip(&got) {
            let one = store.query(q).await?;
            ensure!(
                *g == one,
                "{} at {interval} µs: query_many differs from query",
                q.series
            );
            ensure!(
                (q.series == "no.such") == g.is_empty(),
                "{}: {} buckets",
                q.series,
                g.len()
            );
        }
    }
    // Other agents and ranges in one call.
    let mixed = vec![
        range("t", "a", "cpu.percent", t0(), t0() + DAY, 5 * MINUTE),
        range("t", "b", "cpu.percent", t0(), t0() + DAY, 5 * MINUTE),
        range("t", "a", "cpu.percent", t0(), t0() + 2 * HOUR, MINUTE),
    ];
    let got = store.query_many(&mixed).await?;
    ensure!(got.len() == 3);
    for (q, g) in mixed.iter().zip(&got) {
        ensure!(*g == store.query(q).await?, "{q:?}");
    }
    ensure!(store.query_many(&[]).await?.is_empty());
    let bad = vec![
        range("t", "a", "cpu.percent", t0(), t0() + HOUR, MINUTE),
        range("t", "a", "cpu.percent", t0() + HOUR, t0(), MINUTE),
    ];
    match store.query_many(&bad).await {
        Err(StoreError::InvalidQuery(_)) => {}
        other => anyhow::bail!("an invalid range should fail the call, got {other:?}"),
    }
    Ok(())
}

/// A rollup answer read once (and kept decoded by the engine) follows the store when the
/// window is sealed again with late or replaced samples.
pub(crate) async fn rollups_follow_a_window_sealed_again(
    store: Arc<dyn TimeSeriesStore>,
) -> Result<()> {
    let points: Vec<Point> = (0..360)
        .map(|i| point("t", "a", "cpu.percent", t0() + i * 10 * SECOND, 1.0))
        .collect();
    store.write(&points).await?;
    let q = range("t", "a", "cpu.percent", t0(), t0() + DAY, 5 * MINUTE);
    for _ in 0..2 {
        let got = store.query(&q).await?;
        ensure!(
            got.len() == 12 && got.iter().all(|b| b.max == 1.0),
            "{got:?}"
        );
    }
    // A replaced sample and a late one, in the first hour and in the next.
    store
        .write(&[
            point("t", "a", "cpu.percent", t0() + 10 * SECOND, 7.0),
            point("t", "a", "cpu.percent", t0() + HOUR + SECOND, 3.0),
        ])
        .await?;
    let got = store.query(&q).await?;
    ensure!(got.len() == 13, "{got:?}");
    ensure!(got[0].max == 7.0 && got[0].count == 30, "{:?}", got[0]);
    ensure!(got[12].max == 3.0 && got[12].count == 1, "{:?}", got[12]);
    let many = store.query_many(std::slice::from_ref(&q)).await?;
    ensure!(many == vec![got]);
    Ok(())
}

/// `points` answers the raw samples of the series asked (in that order), across hour
/// windows, start-inclusive and end-exclusive, the newest write of a timestamp, nothing
/// for an unknown series, another agent or tenant, or an empty range.
pub(crate) async fn points_are_the_raw_samples(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
    let up = r#"up{instance="a:9100",job="node"}"#;
    let mut batch = Vec::new();
    for i in 0..8 {
        let t = t0() + HOUR - 2 * MINUTE + i * 30 * SECOND;
        batch.push(point("t", "~u", up, t, i as f64));
        if i % 2 == 0 {
            batch.push(point("t", "~u", "load", t, 10.0 + i as f64));
        }
    }
    batch.push(point("t", "~v", up, t0() + HOUR, 99.0));
    batch.push(point("t2", "~u", up, t0() + HOUR, 98.0));
    store.write(&batch).await?;
    store
        .write(&[point("t", "~u", up, t0() + HOUR, 50.0)])
        .await?;
    let from = t0() + HOUR - 90 * SECOND;
    let to = t0() + HOUR + 90 * SECOND;
    let got = store
        .points("t", "~u", &["load", up, "nope"], from, to)
        .await?;
    let want_up: Vec<(i64, f64)> = (1..7)
        .map(|i| {
            let t = t0() + HOUR - 2 * MINUTE + i * 30 * SECOND;
            (t, if t == t0() + HOUR { 50.0 } else { i as f64 })
        })
        .collect();
    let want_load: Vec<(i64, f64)> = [2, 4, 6]
        .iter()
        .map(|&i| (t0() + HOUR - 2 * MINUTE + i * 30 * SECOND, 10.0 + i as f64))
        .collect();
    ensure!(got.len() == 3, "{got:?}");
    ensure!(got[0] == want_load, "{:?}", got[0]);
    ensure!(got[1] == want_up, "{:?}", got[1]);
    ensure!(got[2].is_empty());
    ensure!(
        store.points("t", "~w", &[up], from, to).await? == vec![Vec::new()],
        "another agent"
    );
    ensure!(store.points("t2", "~u", &[up], from, to).await? == vec![vec![(t0() + HOUR, 98.0)]]);
    ensure!(store.points("t", "~u", &[up], to, from).await? == vec![Vec::new()]);
    ensure!(store.points("t", "~u", &[], from, to).await?.is_empty());
    let everything = store.points("t", "~u", &[up], i64::MIN, i64::MAX).await?;
    ensure!(everything[0].len() == 8, "{everything:?}");
    Ok(())
}
