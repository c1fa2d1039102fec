//! Conformance suite of the time-series store: one body per behaviour (`cases`), run once
//! per engine by a module that gives each test a fresh, empty store. The embedded engine
//! runs here; a `scylla` module with its own `run` (fresh keyspace per test) will call the
//! same `conformance!()`.

use std::future::Future;
use std::sync::Arc;

use anyhow::{ensure, Result};
use fleet_stores::{
    open_timeseries, Bucket, Point, RangeQuery, StoreError, TimeSeriesStore, MAX_BUCKETS,
};

/// The same list of cases for every engine: each module defines `run` and calls this.
macro_rules! conformance {
    () => {
        conformance!(
            write_then_query_gives_exact_buckets,
            rewriting_a_point_replaces_it,
            series_lists_each_name_once,
            agents_tenants_and_series_are_isolated,
            invalid_ranges_are_rejected,
            buckets_align_to_the_epoch,
            range_is_start_inclusive_end_exclusive,
        );
    };
    ($($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() -> anyhow::Result<()> {
                run(crate::cases::$case).await
            }
        )+
    };
}

/// The embedded engine, each test in a new temporary directory.
mod embedded {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let dir = tempfile::tempdir()?;
        let store = open_timeseries(&format!("file://{}", dir.path().display())).await?;
        ensure!(store.engine() == "embedded");
        case(store).await
    }

    conformance!();

    #[tokio::test]
    async fn data_survives_reopening() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nested").join("ts");
        let url = path
            .to_str()
            .ok_or_else(|| anyhow::anyhow!("utf-8 temp path"))?;
        let store = open_timeseries(url).await?;
        store
            .write(&[cases::point("t", "a", "cpu.percent", 5, 1.5)])
            .await?;
        drop(store);
        let store = open_timeseries(url).await?;
        ensure!(store.series("t", "a").await? == vec!["cpu.percent".to_owned()]);
        ensure!(
            store
                .query(&cases::range("t", "a", "cpu.percent", 0, 10, 10))
                .await?
                .len()
                == 1
        );
        Ok(())
    }

    #[tokio::test]
    async fn other_url_schemes_are_refused() -> Result<()> {
        ensure!(matches!(
            open_timeseries("scylla://127.0.0.1:9042").await,
            Err(StoreError::Config(_))
        ));
        Ok(())
    }
}

/// The behaviours, written once against the trait.
mod cases {
    use super::*;

    const SECOND: i64 = 1_000_000;
    const MINUTE: i64 = 60 * SECOND;
    /// 2025-01-01T00:00:00Z in µs: a multiple of every interval used below.
    const T0: i64 = 1_735_689_600 * SECOND;

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
                point("t", "a", "cpu.percent", T0 + 50 * SECOND, 4.0),
                point("t", "a", "cpu.percent", T0 + 10 * SECOND, 1.0),
                point("t", "a", "cpu.percent", T0 + 2 * MINUTE + 5 * SECOND, 10.0),
            ])
            .await?;
        store
            .write(&[
                point("t", "a", "cpu.percent", T0 + 30 * SECOND, 7.0),
                point("t", "a", "cpu.percent", T0 + 2 * MINUTE + 40 * SECOND, 6.0),
            ])
            .await?;
        let got = store
            .query(&range("t", "a", "cpu.percent", T0, T0 + 5 * MINUTE, MINUTE))
            .await?;
        let expected = vec![
            // 1, 7, 4 at 10 s, 30 s, 50 s: last is the latest sample, not the last written.
            bucket(T0, 1.0, 7.0, 4.0, 3, 4.0),
            // The minute from T0 + 1 min has no sample: omitted.
            bucket(T0 + 2 * MINUTE, 6.0, 10.0, 8.0, 2, 6.0),
        ];
        ensure!(got == expected, "got {got:#?}\nexpected {expected:#?}");

        // One bucket over the whole range.
        let got = store
            .query(&range(
                "t",
                "a",
                "cpu.percent",
                T0,
                T0 + 5 * MINUTE,
                5 * MINUTE,
            ))
            .await?;
        ensure!(
            got == vec![bucket(T0, 1.0, 10.0, 5.6, 5, 6.0)],
            "got {got:#?}"
        );

        // Nothing stored in range: no buckets.
        let empty = store
            .query(&range(
                "t",
                "a",
                "cpu.percent",
                T0 + 10 * MINUTE,
                T0 + 20 * MINUTE,
                MINUTE,
            ))
            .await?;
        ensure!(empty.is_empty());
        store.write(&[]).await?;
        Ok(())
    }

    pub(crate) async fn rewriting_a_point_replaces_it(
        store: Arc<dyn TimeSeriesStore>,
    ) -> Result<()> {
        let batch = [
            point("t", "a", "mem.percent", T0 + SECOND, 10.0),
            point("t", "a", "mem.percent", T0 + 2 * SECOND, 20.0),
        ];
        store.write(&batch).await?;
        store.write(&batch).await?;
        let q = range("t", "a", "mem.percent", T0, T0 + MINUTE, MINUTE);
        ensure!(store.query(&q).await? == vec![bucket(T0, 10.0, 20.0, 15.0, 2, 20.0)]);

        // Same key, new value: replaced, not added.
        store
            .write(&[point("t", "a", "mem.percent", T0 + 2 * SECOND, 30.0)])
            .await?;
        let got = store.query(&q).await?;
        ensure!(
            got == vec![bucket(T0, 10.0, 30.0, 20.0, 2, 30.0)],
            "got {got:#?}"
        );

        // The same key twice in one call: the later one wins.
        store
            .write(&[
                point("t", "a", "mem.percent", T0 + SECOND, 1.0),
                point("t", "a", "mem.percent", T0 + SECOND, 2.0),
            ])
            .await?;
        let got = store.query(&q).await?;
        ensure!(
            got == vec![bucket(T0, 2.0, 30.0, 16.0, 2, 30.0)],
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
                    point("t", "a", "disk.percent:/var", T0 + i * SECOND, 1.0),
                    point("t", "a", "cpu.percent", T0 + i * SECOND, 1.0),
                    point("t", "a", "disk.percent:/", T0 + i * SECOND, 1.0),
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
            .map(|(i, (t, a, s))| point(t, a, s, T0 + SECOND, i as f64))
            .collect();
        store.write(&points).await?;

        for (i, (t, a, s)) in keys.iter().enumerate() {
            let got = store
                .query(&range(t, a, s, T0, T0 + MINUTE, MINUTE))
                .await?;
            let v = i as f64;
            ensure!(
                got == vec![bucket(T0, v, v, v, 1, v)],
                "{t}/{a}/{s} sees only its own sample: {got:#?}"
            );
        }
        ensure!(store.series("t", "a").await? == vec!["cpu", "cpu.percent"]);
        ensure!(store.series("t", "ab").await? == vec!["cpu"]);
        ensure!(store.series("tt", "a").await? == vec!["cpu"]);
        ensure!(store.series("t", "c").await?.is_empty());
        ensure!(store
            .query(&range("t", "c", "cpu", T0, T0 + MINUTE, MINUTE))
            .await?
            .is_empty());
        Ok(())
    }

    pub(crate) async fn invalid_ranges_are_rejected(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
        let invalid = [
            range("t", "a", "cpu", T0, T0 + MINUTE, 0),
            range("t", "a", "cpu", T0, T0 + MINUTE, -SECOND),
            range("t", "a", "cpu", T0, T0, SECOND),
            range("t", "a", "cpu", T0 + MINUTE, T0, SECOND),
            range("t", "a", "cpu", T0, T0 + (MAX_BUCKETS + 1) * SECOND, SECOND),
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
                T0,
                T0 + MAX_BUCKETS * SECOND,
                SECOND
            ))
            .await
            .is_ok());

        match store.write(&[point("t", "a", "cpu", T0, f64::NAN)]).await {
            Err(StoreError::InvalidQuery(_)) => {}
            other => anyhow::bail!("NaN should be refused, got {other:?}"),
        }
        Ok(())
    }

    pub(crate) async fn buckets_align_to_the_epoch(store: Arc<dyn TimeSeriesStore>) -> Result<()> {
        let interval = 5 * MINUTE;
        // Samples 7 min 59 s, 8 min 1 s and 14 min after T0; the query starts unaligned at
        // 7 min 30 s, and its first bucket is the one from 5 min.
        store
            .write(&[
                point("t", "a", "load.1", T0 + 7 * MINUTE + 59 * SECOND, 1.0),
                point("t", "a", "load.1", T0 + 8 * MINUTE + SECOND, 2.0),
                point("t", "a", "load.1", T0 + 14 * MINUTE, 3.0),
                // Before the epoch too: buckets are multiples of the interval, not truncated.
                point("t", "a", "load.1", -SECOND, 9.0),
            ])
            .await?;
        let got = store
            .query(&range(
                "t",
                "a",
                "load.1",
                T0 + 7 * MINUTE + 30 * SECOND,
                T0 + 20 * MINUTE,
                interval,
            ))
            .await?;
        let expected = vec![
            bucket(T0 + 5 * MINUTE, 1.0, 2.0, 1.5, 2, 2.0),
            bucket(T0 + 10 * MINUTE, 3.0, 3.0, 3.0, 1, 3.0),
        ];
        ensure!(got == expected, "got {got:#?}\nexpected {expected:#?}");
        for b in &got {
            ensure!(
                b.start_micros % interval == 0,
                "bucket starts on a multiple of the interval"
            );
        }
        let before_epoch = store
            .query(&range("t", "a", "load.1", -MINUTE, MINUTE, MINUTE))
            .await?;
        ensure!(
            before_epoch == vec![bucket(-MINUTE, 9.0, 9.0, 9.0, 1, 9.0)],
            "got {before_epoch:#?}"
        );
        Ok(())
    }

    pub(crate) async fn range_is_start_inclusive_end_exclusive(
        store: Arc<dyn TimeSeriesStore>,
    ) -> Result<()> {
        store
            .write(&[
                point("t", "a", "net.rx", T0 - 1, 1.0),
                point("t", "a", "net.rx", T0, 2.0),
                point("t", "a", "net.rx", T0 + MINUTE - 1, 3.0),
                point("t", "a", "net.rx", T0 + MINUTE, 4.0),
            ])
            .await?;
        let got = store
            .query(&range("t", "a", "net.rx", T0, T0 + MINUTE, MINUTE))
            .await?;
        ensure!(
            got == vec![bucket(T0, 2.0, 3.0, 2.5, 2, 3.0)],
            "got {got:#?}"
        );
        Ok(())
    }
}
