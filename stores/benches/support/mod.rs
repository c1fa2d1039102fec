//! Shared by the store benches (`mod support;`): percentiles, fresh PostgreSQL databases
//! and ScyllaDB keyspaces that are dropped afterwards, machine notes.

#![allow(dead_code)] // each bench uses part of it

use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result};
use sqlx::any::AnyConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

/// `name` parsed from the environment, else `default`.
pub(crate) fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Nearest-rank percentile of `samples` (sorted here), `p` in 0..=100.
pub(crate) fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    assert!(!samples.is_empty(), "no samples");
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// `p50 / p99 / max` of `samples`, in ms.
pub(crate) fn summary(samples: &mut [Duration]) -> String {
    let p50 = percentile(samples, 50.0);
    let p99 = percentile(samples, 99.0);
    let max = percentile(samples, 100.0);
    format!(
        "p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (n={})",
        ms(p50),
        ms(p99),
        ms(max),
        samples.len()
    )
}

/// A duration in milliseconds.
pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A random suffix for database and keyspace names.
pub(crate) fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// CPU model, cores and load average, printed with every figure.
pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, load average {load}")
}

const DEFAULT_POSTGRES: &str = "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable";

/// A PostgreSQL database made for one bench run, dropped by [`PgDatabase::drop_now`].
pub(crate) struct PgDatabase {
    admin: PgConnection,
    name: String,
    /// URL of the new database.
    pub(crate) url: String,
}

impl PgDatabase {
    /// Creates `fleet_bench_<random>` on the server `FLEET_POSTGRES_URL` names (default
    /// `postgres://fleet:fleet@127.0.0.1:5432/fleet`); the role needs CREATEDB.
    pub(crate) async fn create() -> Result<PgDatabase> {
        let base = std::env::var("FLEET_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_POSTGRES.into());
        let mut admin = PgConnection::connect(&base).await.context(
            "PostgreSQL is not reachable (FLEET_POSTGRES_URL); start it with \
             `bash scripts/services.sh up`",
        )?;
        let name = format!("fleet_bench_{}", random_suffix());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating database {name}"))?;
        let mut options = AnyConnectOptions::from_str(&base)?;
        options.database_url.set_path(&name);
        Ok(PgDatabase {
            admin,
            name,
            url: options.database_url.to_string(),
        })
    }

    /// Drops the database.
    pub(crate) async fn drop_now(mut self) -> Result<()> {
        self.admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}

/// Hosts (`host:port,...`) of `FLEET_SCYLLA_URI` (`scylla://host:9042[,...][/keyspace]`
/// or `host:9042[,...]`), or `None` when it is not set.
pub(crate) fn scylla_hosts() -> Option<String> {
    let uri = std::env::var("FLEET_SCYLLA_URI").ok()?;
    let uri = uri.trim();
    if uri.is_empty() {
        return None;
    }
    let rest = uri.strip_prefix("scylla://").unwrap_or(uri);
    Some(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// A keyspace made for one bench run on the `FLEET_SCYLLA_URI` cluster.
pub(crate) struct ScyllaKeyspace {
    hosts: String,
    name: String,
    /// `scylla://hosts/keyspace` for [`fleet_stores::open_timeseries`].
    pub(crate) url: String,
}

impl ScyllaKeyspace {
    /// Names `fleet_bench_<random>` on the cluster; the store creates it on connect.
    pub(crate) fn new(hosts: &str) -> ScyllaKeyspace {
        let name = format!("fleet_bench_{}", random_suffix());
        ScyllaKeyspace {
            url: format!("scylla://{hosts}/{name}"),
            hosts: hosts.to_owned(),
            name,
        }
    }

    /// Which server answers: `ScyllaDB <version>` or `Apache Cassandra <version>`.
    pub(crate) async fn server(&self) -> Result<String> {
        let session = self.session().await?;
        // Only ScyllaDB has system.versions; both report a Cassandra release_version.
        if let Ok(r) = session
            .query_unpaged(
                "SELECT version FROM system.versions WHERE key = 'local'",
                (),
            )
            .await
        {
            if let Ok((v,)) = r.into_rows_result()?.first_row::<(String,)>() {
                return Ok(format!("ScyllaDB {v}"));
            }
        }
        let r = session
            .query_unpaged("SELECT release_version FROM system.local", ())
            .await?;
        let (v,) = r.into_rows_result()?.first_row::<(String,)>()?;
        Ok(format!("Apache Cassandra {v}"))
    }

    async fn session(&self) -> Result<scylla::client::session::Session> {
        scylla::client::session_builder::SessionBuilder::new()
            .known_nodes(self.hosts.split(','))
            .build()
            .await
            .with_context(|| format!("connecting to {}", self.hosts))
    }

    /// Drops the keyspace.
    pub(crate) async fn drop_now(self) -> Result<()> {
        let session = self.session().await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), ())
            .await
            .with_context(|| format!("dropping keyspace {}", self.name))?;
        Ok(())
    }
}
