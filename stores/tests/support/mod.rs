//! Fixtures shared by the conformance suites (`mod support;` in each test file).
//!
//! PostgreSQL: `FLEET_POSTGRES_URL` (default
//! `postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable`) names a server and a role
//! that may create databases. [`with_fresh_database`] gives each test its own
//! `fleet_test_<random>` database and drops it afterwards, so the tests run in parallel. If
//! the server is not reachable the test fails and says how to start it; it never skips.

use std::future::Future;
use std::str::FromStr;

use anyhow::{Context, Result};
use sqlx::any::AnyConnectOptions;
use sqlx::{Connection, Executor, PgConnection};

const DEFAULT_URL: &str = "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable";

/// The server the PostgreSQL tests use.
pub(crate) fn base_url() -> String {
    std::env::var("FLEET_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
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

/// Creates a new database, runs `body` with its URL, and drops the database whatever
/// `body` did (error or panic, which is then resumed).
pub(crate) async fn with_fresh_database<F, Fut>(body: F) -> Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let base = base_url();
    let mut admin = PgConnection::connect(&base).await.with_context(|| {
        format!(
            "PostgreSQL is not reachable at {} (FLEET_POSTGRES_URL). \
             Start it with `bash scripts/services.sh up`",
            redacted(&base)
        )
    })?;
    let name = format!("fleet_test_{:016x}", rand::random::<u64>());
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .with_context(|| format!("creating database {name} (the role needs CREATEDB)"))?;

    // A task, so that a panicking body still reaches the cleanup below.
    let outcome = match with_database(&base, &name) {
        Ok(url) => tokio::spawn(body(url)).await,
        Err(e) => Ok(Err(e)),
    };
    admin
        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await
        .with_context(|| format!("dropping database {name}"))?;
    admin.close().await?;
    match outcome {
        Ok(result) => result,
        Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
        Err(join) => Err(join.into()),
    }
}
