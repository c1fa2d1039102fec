//! `StoredSamples`, the PromQL series source, over a real SQLite read model and the
//! embedded time-series store, both fed by the projections' own paths: the samples of the
//! write protocols (series index + engine units) and an agent's own metrics, selected by
//! Prometheus matchers within a range, tenant-scoped, bounded by the limits.

use std::sync::Arc;

use anyhow::{ensure, Context as _, Result};
use fleet_projections::project::series_of;
use fleet_promql::memory::{labels, matcher as m};
use fleet_promql::{Labels, MatchOp, Matcher, SelectLimits, SeriesSource, SourceError};
use fleet_query_api::samples::StoredSamples;
use fleet_read_model::{Change, ReadModel};
use fleet_schemas::fixtures;
use fleet_timeseries::TimeSeriesStore;

const SECOND: i64 = 1_000_000;

struct Env {
    _dir: tempfile::TempDir,
    source: StoredSamples,
    /// Time of the fixture batch (µs), two hours ago.
    t: i64,
}

/// Tenant t1: the fixture batch of target web-1 (node_load1 at t - 15 s and t, a cpu
/// counter at t) and a host db-1 batch; agent a1 (hostname web-1) reporting at t; tenant
/// t2: the same batch.
async fn env() -> Result<Env> {
    let dir = tempfile::tempdir()?;
    let rm: Arc<dyn ReadModel> =
        fleet_read_model::open_read_model(dir.path().join("rm.db").to_str().context("utf-8")?)
            .await?;
    let ts = fleet_timeseries::open(
        dir.path().join("ts").to_str().context("utf-8")?,
        Default::default(),
        Default::default(),
    )
    .await?;
    let now = fleet_schemas::time::now_micros();
    let t = now - now.rem_euclid(SECOND) - 7200 * SECOND;
    let target = fixtures::sample_batch("t1", t);
    let host = fixtures::host_sample_batch("t1", t);
    let other = fixtures::sample_batch("t2", t);
    let report = fixtures::metric_report("t1", "a1", t);
    let mut w = ts.writer();
    let topic: Arc<str> = Arc::from(fleet_schemas::topics::SAMPLES);
    for (i, b) in [&target, &host, &other].into_iter().enumerate() {
        rm.apply("test", &[Change::Series(series_of(b))], &[])
            .await?;
        w.ingest_samples(&topic, 0, i as i64, b).await?;
    }
    rm.apply(
        "test",
        &[
            Change::Lifecycle(fixtures::agent_registered("t1", "a1", t - SECOND)),
            Change::Report(Box::new(report.clone())),
        ],
        &[],
    )
    .await?;
    let metrics: Arc<str> = Arc::from(fleet_schemas::topics::METRICS);
    w.ingest(&metrics, 0, 0, &report).await?;
    w.checkpoint().await?;
    Ok(Env {
        _dir: dir,
        source: StoredSamples::new(rm, ts as Arc<dyn TimeSeriesStore>),
        t,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_read_protocol_samples_and_agent_metrics() -> Result<()> {
    let e = env().await?;
    let s = &e.source;
    let ms = |us: i64| us / 1000;
    let (start, end) = (ms(e.t) - 60_000, ms(e.t) + 60_000);
    let limits = SelectLimits::default();
    // `tenant`'s series matching `matchers` in [start, end], with the default limits.
    let sel = |tenant: &'static str, matchers: Vec<Matcher>| {
        let limits = &limits;
        async move { s.select(tenant, &matchers, start, end, limits).await }
    };

    // By name: the target's and the host's node_load1, ordered by labels, samples in ms.
    let load = sel("t1", vec![m("__name__", MatchOp::Equal, "node_load1")]).await?;
    ensure!(load.len() == 2, "{load:#?}");
    ensure!(load[0].labels == labels(&[("__name__", "node_load1"), ("host", "db-1")]));
    ensure!(
        load[1].labels
            == labels(&[
                ("__name__", "node_load1"),
                ("instance", "web-1:9100"),
                ("job", "node")
            ])
    );
    ensure!(
        load[1].samples == vec![(ms(e.t) - 15_000, 0.25), (ms(e.t), 0.5)],
        "{load:#?}"
    );
    // The range bounds the samples (both ends inclusive).
    let last = s
        .select(
            "t1",
            &[
                m("__name__", MatchOp::Equal, "node_load1"),
                m("job", MatchOp::Equal, "node"),
            ],
            ms(e.t) - 14_999,
            ms(e.t),
            &limits,
        )
        .await?;
    ensure!(
        last.len() == 1 && last[0].samples == vec![(ms(e.t), 0.5)],
        "{last:#?}"
    );
    // Regular expressions, anchored; negative matchers.
    let node = sel(
        "t1",
        vec![
            m("__name__", MatchOp::Regex, "node_.*"),
            m("instance", MatchOp::Regex, "web-.*"),
            m("mode", MatchOp::NotEqual, "user"),
        ],
    )
    .await?;
    let names: Vec<&str> = node
        .iter()
        .filter_map(|d| {
            d.labels
                .iter()
                .find(|l| l.0 == "__name__")
                .map(|l| l.1.as_str())
        })
        .collect();
    ensure!(
        names == ["node_cpu_seconds_total", "node_load1"],
        "{names:?}"
    );
    ensure!(sel("t1", vec![m("__name__", MatchOp::Regex, "node")])
        .await?
        .is_empty());

    // An agent's own metrics: dots to underscores, agent_id, hostname, subject.
    let cpu = sel("t1", vec![m("__name__", MatchOp::Equal, "cpu_percent")]).await?;
    ensure!(cpu.len() == 1, "{cpu:#?}");
    ensure!(
        cpu[0].labels
            == labels(&[
                ("__name__", "cpu_percent"),
                ("agent_id", "a1"),
                ("hostname", "web-1")
            ])
    );
    ensure!(cpu[0].samples == vec![(ms(e.t), 42.5)]);
    let disk = sel(
        "t1",
        vec![
            m("__name__", MatchOp::Equal, "disk_percent"),
            m("subject", MatchOp::Equal, "/var"),
        ],
    )
    .await?;
    ensure!(
        disk.len() == 1 && disk[0].samples == vec![(ms(e.t), 10.0)],
        "{disk:#?}"
    );
    ensure!(disk[0]
        .labels
        .contains(&("subject".to_owned(), "/var".to_owned())));
    let by_agent = sel(
        "t1",
        vec![
            m("agent_id", MatchOp::Equal, "a1"),
            m("__name__", MatchOp::Regex, "custom_.*"),
        ],
    )
    .await?;
    ensure!(
        by_agent.len() == 1 && by_agent[0].samples == vec![(ms(e.t), 7.0)],
        "{by_agent:#?}"
    );

    // Tenants are apart; outside the range there is nothing.
    let t2 = sel("t2", vec![m("__name__", MatchOp::Regex, ".+")]).await?;
    ensure!(
        t2.len() == 2
            && t2
                .iter()
                .all(|d| d.labels.iter().any(|l| l.1 == "web-1:9100")),
        "{t2:#?}"
    );
    ensure!(sel("t3", vec![m("__name__", MatchOp::Regex, ".+")])
        .await?
        .is_empty());
    ensure!(s
        .select(
            "t1",
            &[m("__name__", MatchOp::Equal, "node_load1")],
            end + 1,
            end + 60_000,
            &limits
        )
        .await?
        .is_empty());

    // Limits and bad selectors.
    let tight = SelectLimits {
        max_series: 1,
        max_samples: 100,
    };
    ensure!(matches!(
        s.select(
            "t1",
            &[m("__name__", MatchOp::Equal, "node_load1")],
            start,
            end,
            &tight
        )
        .await,
        Err(SourceError::TooMany(_))
    ));
    let few = SelectLimits {
        max_series: 100,
        max_samples: 2,
    };
    ensure!(matches!(
        s.select(
            "t1",
            &[m("__name__", MatchOp::Equal, "node_load1")],
            start,
            end,
            &few
        )
        .await,
        Err(SourceError::TooMany(_))
    ));
    ensure!(matches!(
        s.select("t1", &[m("job", MatchOp::Regex, ".*")], start, end, &limits)
            .await,
        Err(SourceError::BadQuery(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_lists_labels_from_the_index_and_the_agents() -> Result<()> {
    let e = env().await?;
    let s = &e.source;
    let ms = |us: i64| us / 1000;
    let (start, end) = (ms(e.t) - 60_000, ms(e.t) + 60_000);
    let all = s
        .series(
            "t1",
            &[m("__name__", MatchOp::Regex, ".+")],
            start,
            end,
            1000,
        )
        .await?;
    // 4 sample series, and the agent's series (17 built-in metrics with two disks and a
    // service, one custom).
    let samples: Vec<&Labels> = all
        .iter()
        .filter(|l| !l.iter().any(|(n, _)| n == "agent_id"))
        .collect();
    ensure!(samples.len() == 4, "{samples:#?}");
    ensure!(all.len() > 10, "{}", all.len());
    let mut sorted = all.clone();
    sorted.sort();
    ensure!(sorted == all, "ordered by labels");
    let limited = s
        .series("t1", &[m("__name__", MatchOp::Regex, ".+")], start, end, 3)
        .await?;
    ensure!(limited.len() == 3);
    let host = s
        .series("t1", &[m("host", MatchOp::Equal, "db-1")], start, end, 1000)
        .await?;
    ensure!(host.len() == 2, "{host:#?}");
    // Far from the samples' times: neither index rows nor the agent.
    let far = s
        .series(
            "t1",
            &[m("__name__", MatchOp::Regex, ".+")],
            end + 3_600_000 * 3,
            end + 3_600_000 * 4,
            1000,
        )
        .await?;
    ensure!(far.is_empty(), "{far:#?}");
    Ok(())
}
