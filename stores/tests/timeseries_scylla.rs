//! Conformance suite of the time-series store on ScyllaDB (or Apache Cassandra, which
//! speaks the same protocol): the cases are in `ts_cases` (shared with `timeseries.rs`);
//! `run` gives each a fresh keyspace, dropped afterwards.
//!
//! Needs `FLEET_SCYLLA_URI` (`scylla://127.0.0.1:9042`): `bash scripts/services.sh up`
//! starts a one-node Cassandra, and `eval "$(bash scripts/services.sh env)"` exports it.
//! Without it the server tests print a skip notice and pass, except in CI (`CI` set),
//! where they fail: the suite must not go green without having run.

#[macro_use]
mod ts_cases;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use fleet_stores::{open_timeseries_with, Resolution, Retention, StoreError, TimeSeriesStore};
use scylla::client::session_builder::SessionBuilder;

/// The server's URI, `None` (after a notice) when it is not configured outside CI.
fn base_uri() -> Result<Option<String>> {
    match std::env::var("FLEET_SCYLLA_URI") {
        Ok(uri) if !uri.trim().is_empty() => Ok(Some(uri.trim().to_owned())),
        _ if std::env::var_os("CI").is_some() => bail!(
            "FLEET_SCYLLA_URI is not set, so the ScyllaDB time-series suite cannot run in CI: \
             run `bash scripts/services.sh up` and `eval \"$(bash scripts/services.sh env)\"` first"
        ),
        _ => {
            eprintln!(
                "SKIPPED: FLEET_SCYLLA_URI is not set (start Cassandra with `bash scripts/services.sh up`, \
                 then `eval \"$(bash scripts/services.sh env)\"`)"
            );
            Ok(None)
        }
    }
}

/// The parts of a `scylla://[user:password@]hosts[/keyspace][?options]` URI.
struct Uri<'a> {
    credentials: Option<(&'a str, &'a str)>,
    hosts: &'a str,
    query: Option<&'a str>,
}

fn split_uri(uri: &str) -> Result<Uri<'_>> {
    let rest = uri
        .strip_prefix("scylla://")
        .with_context(|| format!("FLEET_SCYLLA_URI {uri:?} must start with scylla://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => (userinfo.split_once(':'), hosts),
        None => (None, authority),
    };
    Ok(Uri {
        credentials,
        hosts,
        query,
    })
}

/// The base URI with keyspace `ks` (its hosts, credentials and options kept).
fn with_keyspace(base: &str, ks: &str) -> Result<String> {
    let uri = split_uri(base)?;
    let auth = match uri.credentials {
        Some((u, p)) => format!("{u}:{p}@"),
        None => String::new(),
    };
    let query = uri.query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("scylla://{auth}{}/{ks}{query}", uri.hosts))
}

async fn drop_keyspace(base: &str, ks: &str) -> Result<()> {
    let uri = split_uri(base)?;
    let nodes: Vec<String> = uri
        .hosts
        .split(',')
        .map(|h| {
            let has_port = match h.rsplit_once(']') {
                Some((_, after)) => after.starts_with(':'),
                None => h.contains(':'),
            };
            if has_port {
                h.to_owned()
            } else {
                format!("{h}:9042")
            }
        })
        .collect();
    let mut builder = SessionBuilder::new()
        .known_nodes(&nodes)
        .connection_timeout(Duration::from_secs(5));
    if let Some((u, p)) = uri.credentials {
        builder = builder.user(u, p);
    }
    let session = builder
        .build()
        .await
        .context("connecting to drop the keyspace")?;
    session
        .query_unpaged(format!("DROP KEYSPACE IF EXISTS {ks}"), &[])
        .await
        .with_context(|| format!("dropping keyspace {ks}"))?;
    Ok(())
}

fn fresh_keyspace() -> String {
    format!("fleet_test_{:016x}", rand::random::<u64>())
}

/// Runs `test` on `url` (a fresh keyspace of the server), then drops the keyspace.
async fn with_fresh_keyspace<F, Fut>(test: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let Some(base) = base_uri()? else {
        return Ok(());
    };
    let ks = fresh_keyspace();
    let url = with_keyspace(&base, &ks)?;
    let result = test(url).await;
    let dropped = drop_keyspace(&base, &ks).await;
    result?;
    dropped
}

/// A fresh store (a new keyspace) for each case.
async fn run<F, Fut>(case: F) -> Result<()>
where
    F: FnOnce(Arc<dyn TimeSeriesStore>) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    with_fresh_keyspace(|url| async move {
        let store = open_timeseries_with(&url, Retention::default())
            .await
            .with_context(|| format!("connecting to {url}"))?;
        ensure!(store.engine() == "scylla");
        case(store).await
    })
    .await
}

conformance!();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_reconnecting() -> Result<()> {
    with_fresh_keyspace(|url| async move {
        let t0 = ts_cases::t0();
        let store = open_timeseries_with(&url, Retention::default()).await?;
        store
            .write(&[ts_cases::point("t", "a", "cpu.percent", t0 + 5, 1.5)])
            .await?;
        drop(store);
        // A second connect finds the keyspace and the tables in place.
        let store = open_timeseries_with(&url, Retention::default()).await?;
        ensure!(store.series("t", "a").await? == vec!["cpu.percent".to_owned()]);
        let q = ts_cases::range("t", "a", "cpu.percent", t0, t0 + 10, 10);
        ensure!(store.query(&q).await?.len() == 1);
        ensure!(store.expire(fleet_schemas::time::now_micros()).await? == 0);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_expire_by_ttl() -> Result<()> {
    with_fresh_keyspace(|url| async move {
        const SECOND: i64 = 1_000_000;
        const MINUTE: i64 = 60 * SECOND;
        // Raw samples kept 3 s, rollups an hour.
        let retention = Retention {
            raw: Duration::from_secs(3),
            one_minute: Duration::from_secs(3600),
            five_minutes: Duration::from_secs(3600),
            one_hour: Duration::from_secs(3600),
        };
        let store = open_timeseries_with(&url, retention).await?;
        let ts = fleet_schemas::time::now_micros() - SECOND;
        store
            .write(&[ts_cases::point("t", "a", "load.1", ts, 2.0)])
            .await?;
        let q = |interval| ts_cases::range("t", "a", "load.1", ts - MINUTE, ts + MINUTE, interval);
        ensure!(
            store.query(&q(SECOND)).await?.len() == 1,
            "raw sample stored"
        );
        tokio::time::sleep(Duration::from_secs(4)).await;
        ensure!(
            store.query(&q(SECOND)).await?.is_empty(),
            "the raw sample expired by its TTL"
        );
        let rollup = store
            .query_resolution(&q(MINUTE), Resolution::OneMinute)
            .await?;
        ensure!(
            rollup.len() == 1 && rollup[0].count == 1,
            "the 1m rollup keeps it: {rollup:?}"
        );
        ensure!(store.expire(fleet_schemas::time::now_micros()).await? == 0);
        Ok(())
    })
    .await
}

#[tokio::test]
async fn bad_urls_are_config_errors() -> Result<()> {
    for url in [
        "scylla://",
        "scylla:///fleet",
        "scylla://127.0.0.1:notaport/fleet",
        "scylla://127.0.0.1:0/fleet",
        "scylla://127.0.0.1:9042/not-a-keyspace",
        "scylla://127.0.0.1:9042/fleet/extra",
        "scylla://127.0.0.1:9042/fleet?replication_factor=0",
        "scylla://127.0.0.1:9042/fleet?connect_timeout=soon",
        "scylla://127.0.0.1:9042/fleet?unknown_option=1",
    ] {
        match open_timeseries_with(url, Retention::default()).await {
            Err(StoreError::Config(msg)) => ensure!(!msg.is_empty()),
            other => bail!("{url}: expected a configuration error, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn unreachable_servers_are_unavailable_in_bounded_time() -> Result<()> {
    // Nothing listens (connection refused).
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = closed.local_addr()?.port();
    drop(closed);
    // Something accepts but never answers (a hung server).
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let silent_port = silent.local_addr()?.port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    for url in [
        format!("scylla://127.0.0.1:{port}/fleet_unreachable?connect_timeout=2s"),
        format!("scylla://127.0.0.1:{silent_port}/fleet_unreachable?connect_timeout=1s"),
    ] {
        let started = Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(20),
            open_timeseries_with(&url, Retention::default()),
        )
        .await
        .with_context(|| format!("{url}: connect did not give up within 20 s"))?;
        match got {
            Err(StoreError::Unavailable(msg)) => ensure!(!msg.is_empty()),
            other => bail!("{url}: expected Unavailable, got {other:?}"),
        }
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{url}: took {:?}",
            started.elapsed()
        );
    }
    hold.abort();
    Ok(())
}
