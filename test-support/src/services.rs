//! The real services tests and benches use, from the environment that
//! `eval "$(bash scripts/services.sh env)"` sets (loopback defaults otherwise): Kafka,
//! PostgreSQL (a fresh database per test or bench, dropped afterwards), a CQL server (a
//! fresh keyspace), and the Python venv of the interop consumers. A service that is not
//! reachable is an error that says how to start it; nothing here lets a test skip.

use std::future::Future;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use sqlx::any::AnyConnectOptions;
use sqlx::{Connection as _, Executor as _, PgConnection};

/// Kafka brokers for tests.
pub fn kafka_brokers() -> String {
    std::env::var("FLEET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Postgres URL for tests (a server URL; tests create their own database).
pub fn postgres_url() -> String {
    std::env::var("FLEET_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into())
}

/// Fails with instructions when a TCP service is not listening.
pub fn require_service(what: &str, host_port: &str) -> anyhow::Result<()> {
    let addr = host_port.split(',').next().unwrap_or(host_port);
    let ok = std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .with_context(|| format!("{what} address {addr:?}"))?,
        Duration::from_secs(2),
    )
    .is_ok();
    if !ok {
        bail!("{what} is not reachable at {addr}: start the test services with `scripts/services.sh up` (or run `scripts/test.sh`)");
    }
    Ok(())
}

/// The Python interpreter for interop consumers: `$FLEET_PYTHON` (a venv with
/// `fastavro` and `confluent-kafka`, made by `scripts/services.sh up`).
pub fn python_bin() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("FLEET_PYTHON")
        .map(PathBuf::from)
        .context(
            "FLEET_PYTHON is not set: run `eval \"$(scripts/services.sh env)\"` (after \
         `scripts/services.sh up`, which makes a venv with fastavro and confluent-kafka)",
        )?;
    if !p.exists() {
        bail!(
            "FLEET_PYTHON={} does not exist: run `scripts/services.sh up`",
            p.display()
        );
    }
    Ok(p)
}

/// A random suffix for database and keyspace names.
pub fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// `url` naming another database.
fn with_database(url: &str, database: &str) -> Result<String> {
    let mut options = AnyConnectOptions::from_str(url).context("FLEET_POSTGRES_URL")?;
    options.database_url.set_path(database);
    Ok(options.database_url.to_string())
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match AnyConnectOptions::from_str(url) {
        Ok(mut options) => {
            let _ = options.database_url.set_password(None);
            options.database_url.to_string()
        }
        Err(_) => "(unparsable FLEET_POSTGRES_URL)".into(),
    }
}

/// A PostgreSQL database made for one test or bench run on the server
/// `FLEET_POSTGRES_URL` names (the role needs CREATEDB); dropped by
/// [`PgDatabase::drop_now`], kept by [`PgDatabase::keep`].
#[derive(Debug)]
pub struct PgDatabase {
    admin: PgConnection,
    name: String,
    /// URL of the new database.
    pub url: String,
}

impl PgDatabase {
    /// Creates `<prefix>_<random>`.
    pub async fn create(prefix: &str) -> Result<PgDatabase> {
        let base = postgres_url();
        let mut admin = PgConnection::connect(&base).await.with_context(|| {
            format!(
                "PostgreSQL is not reachable at {} (FLEET_POSTGRES_URL). \
                 Start it with `bash scripts/services.sh up`",
                redacted(&base)
            )
        })?;
        let name = format!("{prefix}_{}", random_suffix());
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .with_context(|| format!("creating database {name} (the role needs CREATEDB)"))?;
        let url = with_database(&base, &name)?;
        Ok(PgDatabase { admin, name, url })
    }

    /// Drops the database.
    pub async fn drop_now(mut self) -> Result<()> {
        self.admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await
            .with_context(|| format!("dropping database {}", self.name))?;
        self.admin.close().await?;
        Ok(())
    }

    /// Leaves the database in place (processes of an end-to-end test still use it when
    /// the test ends) and returns its URL.
    pub fn keep(self) -> String {
        self.url
    }
}

/// Creates a new database, runs `body` with its URL, and drops the database whatever
/// `body` did (error or panic, which is then resumed). `body` runs as a task, so the
/// tests that use this run in parallel, each on its own database.
pub async fn with_fresh_database<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let db = PgDatabase::create("fleet_test").await?;
    // A task, so that a panicking body still reaches the cleanup below.
    let outcome = tokio::spawn(body(db.url.clone())).await;
    db.drop_now().await?;
    match outcome {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(join.into()),
    }
}

/// A fresh database (kept after the test) and its URL, for end-to-end tests.
pub async fn fresh_database() -> Result<String> {
    Ok(PgDatabase::create("fleet_e2e").await?.keep())
}

/// `FLEET_SCYLLA_URI` (`scylla://host:9042[,...][/keyspace][?options]`), or Cassandra's
/// address under `scripts/services.sh`.
pub fn scylla_uri() -> String {
    std::env::var("FLEET_SCYLLA_URI")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "scylla://127.0.0.1:9042".to_owned())
}

/// `base` (a `scylla://` URI) with keyspace `ks`, its hosts, credentials and options kept.
pub fn with_keyspace(base: &str, ks: &str) -> Result<String> {
    let rest = base
        .strip_prefix("scylla://")
        .with_context(|| format!("FLEET_SCYLLA_URI {base:?} must start with scylla://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("scylla://{authority}/{ks}{query}"))
}

/// Hosts (`host:port,...`) of [`scylla_uri`] (`scylla://host:9042[,...][/keyspace]`, or
/// `host:9042[,...]`): Cassandra's address under `scripts/services.sh` when
/// `FLEET_SCYLLA_URI` is not set. A server that does not answer is an error naming it
/// ([`ScyllaKeyspace::server`]), never a skipped case.
pub fn scylla_hosts() -> String {
    let uri = scylla_uri();
    let rest = uri.strip_prefix("scylla://").unwrap_or(&uri);
    let rest = rest.split('?').next().unwrap_or(rest);
    rest.split('/').next().unwrap_or(rest).to_owned()
}

/// A keyspace made for one run on the `FLEET_SCYLLA_URI` cluster; the store creates it on
/// connect, [`ScyllaKeyspace::drop_now`] drops it.
#[derive(Debug)]
pub struct ScyllaKeyspace {
    hosts: String,
    name: String,
    /// `scylla://hosts/keyspace`.
    pub url: String,
}

impl ScyllaKeyspace {
    /// Names `<prefix>_<random>` on the cluster at `hosts`.
    pub fn new(hosts: &str, prefix: &str) -> ScyllaKeyspace {
        let name = format!("{prefix}_{}", random_suffix());
        ScyllaKeyspace {
            url: format!("scylla://{hosts}/{name}"),
            hosts: hosts.to_owned(),
            name,
        }
    }

    /// Which server answers: `ScyllaDB <version>` or `Apache Cassandra <version>`.
    pub async fn server(&self) -> Result<String> {
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
            .with_context(|| {
                format!(
                    "no CQL server answers at {} (FLEET_SCYLLA_URI): start Cassandra with \
                     `bash scripts/services.sh up`, then `eval \"$(bash scripts/services.sh env)\"`",
                    self.hosts
                )
            })
    }

    /// Drops the keyspace.
    pub async fn drop_now(self) -> Result<()> {
        let session = self.session().await?;
        session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.name), ())
            .await
            .with_context(|| format!("dropping keyspace {}", self.name))?;
        Ok(())
    }
}
