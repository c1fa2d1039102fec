//! Conformance suite of the time-series store (the engine over each chunk store): the
//! cases are in `ts_cases`; each module's `run` gives a case a fresh, empty store.

#[macro_use]
mod ts_cases;
#[cfg(feature = "cql")]
mod support;

use std::future::Future;
use std::sync::Arc;

use anyhow::{ensure, Result};
use fleet_timeseries::{EngineConfig, Error as StoreError, Retention, TimeSeries, TimeSeriesStore};

async fn open_timeseries(url: &str) -> fleet_timeseries::Result<Arc<TimeSeries>> {
    open_timeseries_with(url, Retention::default()).await
}

async fn open_timeseries_with(
    url: &str,
    retention: Retention,
) -> fleet_timeseries::Result<Arc<TimeSeries>> {
    fleet_timeseries::open(url, retention, EngineConfig::default()).await
}

/// Runs `case` on an embedded engine with `config` in a new temporary directory.
async fn run_embedded<F, Fut>(config: EngineConfig, case: F) -> Result<()>
where
    F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let dir = tempfile::tempdir()?;
    let url = format!("file://{}", dir.path().display());
    let store = fleet_timeseries::open(&url, Retention::default(), config).await?;
    ensure!(store.engine() == "embedded");
    case(store as Arc<dyn TimeSeriesStore>).await
}

/// The embedded engine, each test in a new temporary directory.
mod embedded {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        run_embedded(EngineConfig::default(), case).await
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
            .write(&[ts_cases::point(
                "t",
                "a",
                "cpu.percent",
                ts_cases::t0() + 5,
                1.5,
            )])
            .await?;
        drop(store);
        let store = open_timeseries(url).await?;
        ensure!(store.series("t", "a").await? == vec!["cpu.percent".to_owned()]);
        ensure!(
            store
                .query(&ts_cases::range(
                    "t",
                    "a",
                    "cpu.percent",
                    ts_cases::t0(),
                    ts_cases::t0() + 10,
                    10
                ))
                .await?
                .len()
                == 1
        );
        Ok(())
    }

    /// A reader keeping decoded rollups sees a window another writer sealed again.
    #[tokio::test]
    async fn a_cached_reader_sees_what_another_engine_sealed_again() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let url = format!("file://{}", dir.path().display());
        let reader = open_timeseries(&url).await?;
        let writer = TimeSeries::new(
            reader.store().clone(),
            Retention::default(),
            EngineConfig::default(),
        )?;
        let t0 = ts_cases::t0();
        let p = |ts, v| ts_cases::point("t", "a", "load.1", ts, v);
        writer.write(&[p(t0, 1.0), p(t0 + 1, 2.0)]).await?;
        let q = ts_cases::range("t", "a", "load.1", t0, t0 + 3_600_000_000, 300_000_000);
        ensure!(reader.query(&q).await?[0].max == 2.0);
        writer.write(&[p(t0 + 2, 5.0)]).await?;
        let got = reader.query(&q).await?;
        ensure!(got[0].max == 5.0 && got[0].count == 3, "{got:?}");
        Ok(())
    }

    #[tokio::test]
    async fn other_url_schemes_are_refused() -> Result<()> {
        ensure!(matches!(
            open_timeseries("cassandra://127.0.0.1:9042").await,
            Err(StoreError::Config(_))
        ));
        Ok(())
    }

    #[tokio::test]
    async fn expire_removes_what_is_past_retention() -> Result<()> {
        const MINUTE: i64 = 60_000_000;
        let dir = tempfile::tempdir()?;
        let url = format!("file://{}", dir.path().display());
        let store = open_timeseries_with(&url, Retention::default()).await?;
        let t0 = ts_cases::t0();
        let points: Vec<_> = (0..120)
            .map(|i| ts_cases::point("t", "a", "cpu.percent", t0 + i * 30_000_000, 1.0))
            .collect();
        store.write(&points).await?;
        let range =
            |interval| ts_cases::range("t", "a", "cpu.percent", t0, t0 + 60 * MINUTE, interval);
        ensure!(store.query(&range(MINUTE)).await?.len() == 60);
        // Nothing is past retention now.
        let now = fleet_schemas::time::now_micros();
        ensure!(store.expire(now).await? == 0);
        // 31 days on, the raw block (one agent-hour) is gone and the 5m rollup serves.
        let day = 24 * 60 * MINUTE;
        let removed = store.expire(now + 31 * day).await?;
        ensure!(removed == 1, "removed {removed}");
        ensure!(store.query(&range(10_000_000)).await?.is_empty());
        ensure!(store.query(&range(MINUTE)).await?.is_empty());
        ensure!(store.query(&range(5 * MINUTE)).await?.len() == 12);
        // Past every retention nothing is left: the day of 5m rollups, the week of 1h.
        let removed = store.expire(now + 500 * day).await?;
        ensure!(removed == 2, "removed {removed}");
        ensure!(store.query(&range(60 * MINUTE)).await?.is_empty());
        Ok(())
    }
}

/// The embedded engine without its decoded-rollup cache (rollup chunks decoded for the
/// series asked only).
mod embedded_without_cache {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let config = EngineConfig {
            rollup_cache_bytes: 0,
            ..EngineConfig::default()
        };
        run_embedded(config, case).await
    }

    conformance!();
}

/// The CQL chunk store (Apache Cassandra or ScyllaDB at `FLEET_SCYLLA_URI`), each test in
/// a fresh keyspace, dropped afterwards.
#[cfg(feature = "cql")]
mod cql {
    use super::*;

    async fn run<F, Fut>(case: F) -> Result<()>
    where
        F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let (_, chunks) = crate::support::connect_fresh(Retention::default()).await?;
        let ts = TimeSeries::new(
            chunks.clone(),
            Retention::default(),
            EngineConfig::default(),
        )?;
        ensure!(ts.engine() == "cql");
        let result = case(Arc::new(ts)).await;
        let dropped = chunks.drop_keyspace().await;
        result?;
        Ok(dropped?)
    }

    conformance!();
}
