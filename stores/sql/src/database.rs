//! One pool on PostgreSQL or SQLite, chosen by URL, shared by the seams that live in the
//! database, and the migration runner.
//!
//! Only the connection setup branches on the engine (pool size and SQLite pragmas); the
//! statements of both seams are the same text on both engines (see their `sql` modules).
//!
//! Migrations: each seam owns the migrations of its tables ([`Migrations`]), and every set
//! is tracked in the one table sqlx keeps (`_sqlx_migrations`). Versions are one sequence
//! across the sets (a new migration takes the next number, whichever seam it belongs to),
//! and each set's run leaves the others' versions alone. So a database created before the
//! seams were split (one set, versions 1 to 8) is already up to date: the files kept their
//! versions and their exact text (sqlx checks a SHA-384 of it), and the split changed no
//! table. A migration file must never change once released: add a new one.

use std::borrow::Cow;
use std::path::Path;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrationSource, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor};

use crate::{Result, StoreError};

/// How long a caller waits for a pooled connection (and, at start, for the server).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Settings of every SQLite connection: wait up to 5 s for another connection's write lock
/// before failing with BUSY; enforce foreign keys; `synchronous = NORMAL`, which in WAL mode
/// is durable across application crashes (a power loss may drop the transactions since the
/// last checkpoint, rows and offsets together, so they are replayed); statement journals
/// and temporary tables in memory (`temp_store = MEMORY`: a multi-row upsert journals the
/// pages it changes, and in a file that was a tenth of the read-model projection's time);
/// and a checkpoint once the WAL holds 10,000 pages (about 40 MB) instead of SQLite's 1,000,
/// so that a page rewritten by many batches (an agent's row) is copied into the database
/// once per checkpoint rather than once every batch or two; and a page cache of up to
/// 16 MiB per connection instead of 2, so that the agents rows a batch rewrites are mostly
/// read from it rather than from the file (about 5% more records/s in the read-model
/// projection's bench with 10,000 agents).
const SQLITE_PRAGMAS: &str = "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; \
PRAGMA synchronous = NORMAL; PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 10000; \
PRAGMA cache_size = -16384;";
/// Connections to PostgreSQL.
const POSTGRES_POOL_SIZE: u32 = 8;
/// Connections to SQLite: WAL lets readers run beside the one writer.
const SQLITE_POOL_SIZE: u32 = 4;

/// The engine behind a [`Database`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL (`postgres://`, `postgresql://`).
    Postgres,
    /// SQLite (`sqlite://path` or a bare path).
    Sqlite,
}

impl Engine {
    /// Short name (`postgres`, `sqlite`).
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Sqlite => "sqlite",
        }
    }
}

/// One migration: `<version>_<name>.sql` in its seam's `migrations/` folder, embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Version: one sequence across every seam's migrations.
    pub version: i64,
    /// What it does (kept in `_sqlx_migrations`).
    pub description: &'static str,
    /// The statements. Never edited once released: sqlx refuses a database whose applied
    /// migration's text changed.
    pub sql: &'static str,
}

/// The migrations of one seam's tables.
#[derive(Debug, Clone, Copy)]
pub struct Migrations {
    /// Whose tables (`registry`, `read model`), for messages.
    pub owner: &'static str,
    /// In version order.
    pub list: &'static [Migration],
}

impl Migrations {
    /// Checks that the `.sql` files of `dir` are exactly the versions of [`list`](Self::list),
    /// in order, each named `<version>_<name>.sql`: a test of each seam calls it on its
    /// folder, so a file cannot be forgotten in the list.
    pub fn check_folder(&self, dir: &Path) -> std::result::Result<(), String> {
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("migrations folder {dir:?}: {e}"))?;
        let mut files = Vec::new();
        for entry in entries {
            let name = entry
                .map_err(|e| format!("migrations folder {dir:?}: {e}"))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            if name.ends_with(".sql") {
                files.push(name);
            }
        }
        files.sort();
        let versions = files
            .iter()
            .map(|f| {
                f.split('_')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or_else(|| format!("{f} is not named <version>_<name>.sql"))
            })
            .collect::<std::result::Result<Vec<i64>, String>>()?;
        let listed: Vec<i64> = self.list.iter().map(|m| m.version).collect();
        if versions != listed {
            return Err(format!(
                "the {} migrations list {listed:?}, the folder {dir:?} holds {versions:?}",
                self.owner
            ));
        }
        Ok(())
    }
}

/// A pool on PostgreSQL or SQLite. Cloning shares the pool: the registry and the read
/// model of one process are opened on clones of one `Database`.
#[derive(Clone)]
pub struct Database {
    pool: AnyPool,
    engine: Engine,
    /// Where the database lives, without credentials: `host:port/db` or the file path.
    target: String,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("engine", &self.engine)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl Database {
    /// Connects to `url`; runs no migrations (each seam runs its own when it opens).
    ///
    /// * `postgres://user:pass@host:port/db?sslmode=...`: a pool of 8 connections.
    /// * `sqlite://path?mode=...` (`mode=rwc`, create if missing, unless the URL says
    ///   otherwise) or a bare path to a SQLite file (created if missing): WAL journal,
    ///   `synchronous=NORMAL`, a busy timeout, foreign keys, in-memory statement journals,
    ///   a checkpoint every 10,000 WAL pages and a 16 MiB page cache on every connection.
    ///
    /// Fails with [`StoreError::Config`] for a URL it cannot use and
    /// [`StoreError::Unavailable`] when the database cannot be reached; messages name the
    /// host or file, never the password.
    #[tracing::instrument(skip(url))]
    pub async fn connect(url: &str) -> Result<Self> {
        install_drivers();
        let (engine, url, target) = parse_url(url)?;
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("database URL for {target}: {e}")))?;

        let pool_options = match engine {
            Engine::Postgres => AnyPoolOptions::new().max_connections(POSTGRES_POOL_SIZE),
            Engine::Sqlite => {
                // WAL is a property of the database file and switching to it needs an
                // exclusive lock that the busy timeout does not wait for, so one connection
                // sets it before the pool opens any other.
                let mut conn = AnyConnection::connect_with(&options)
                    .await
                    .map_err(|e| connect_error(engine, &target, e))?;
                conn.execute("PRAGMA journal_mode = WAL")
                    .await
                    .map_err(|e| connect_error(engine, &target, e))?;
                conn.close()
                    .await
                    .map_err(|e| connect_error(engine, &target, e))?;
                AnyPoolOptions::new()
                    .max_connections(SQLITE_POOL_SIZE)
                    .after_connect(|conn, _meta| {
                        Box::pin(async move {
                            conn.execute(sqlx::raw_sql(SQLITE_PRAGMAS))
                                .await
                                .map(|_| ())
                        })
                    })
            }
        };
        let pool = pool_options
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(|e| connect_error(engine, &target, e))?;
        Ok(Database {
            pool,
            engine,
            target,
        })
    }

    /// Applies the migrations of `set` not yet applied, leaving other sets' versions in the
    /// database alone (see the module documentation). Fails if one of `set` was applied
    /// with another text.
    pub async fn migrate(&self, set: &Migrations) -> Result<()> {
        self.run_migrations(set.owner, set.list.to_vec(), true)
            .await?;
        tracing::info!(
            owner = set.owner,
            engine = self.engine.as_str(),
            target = %self.target,
            "Migrations up to date."
        );
        Ok(())
    }

    /// Applies `sets` as one set, strictly: a version applied in the database that none of
    /// them lists is an error. This is how the stores migrated before each seam owned its
    /// migrations; tests use it to make such a database.
    pub async fn migrate_as_one(&self, sets: &[&Migrations]) -> Result<()> {
        let mut all: Vec<Migration> = sets.iter().flat_map(|s| s.list.iter().copied()).collect();
        all.sort_by_key(|m| m.version);
        self.run_migrations("every", all, false).await
    }

    async fn run_migrations(
        &self,
        owner: &str,
        list: Vec<Migration>,
        ignore_missing: bool,
    ) -> Result<()> {
        let mut migrator = Migrator::new(EmbeddedMigrations(list))
            .await
            .map_err(|e| StoreError::Internal(format!("{owner} migrations: {e}")))?;
        migrator.set_ignore_missing(ignore_missing);
        migrator.run(&self.pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => {
                self.error(&format!("{owner} migrations"), e)
            }
            other => StoreError::Internal(format!(
                "{owner} migrations on {} {}: {other}",
                self.engine.as_str(),
                self.target
            )),
        })
    }

    /// The pool.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The engine.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Where the database lives, without credentials: `host:port/db` or the file path.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes the pool, waiting for connections in use to return.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Maps an error of a statement: lost connections, pool timeouts, lock contention and
    /// serialization failures are worth a retry ([`StoreError::Unavailable`]); the rest is
    /// [`StoreError::Internal`]. `what` names the statement in the message.
    pub fn error(&self, what: &str, e: sqlx::Error) -> StoreError {
        let retry = match &e {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                match self.engine {
                    // Class 08 connection exception, 53 insufficient resources, 57P0x
                    // shutdown or cannot connect now, 40001 serialization failure, 40P01
                    // deadlock.
                    Engine::Postgres => {
                        code.starts_with("08")
                            || code.starts_with("53")
                            || code.starts_with("57P")
                            || code == "40001"
                            || code == "40P01"
                    }
                    // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with their extended codes.
                    Engine::Sqlite => code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6)),
                }
            }
            _ => false,
        };
        let message = format!("{what} on {} {}: {e}", self.engine.as_str(), self.target);
        if retry {
            StoreError::Unavailable(message)
        } else {
            StoreError::Internal(message)
        }
    }
}

/// A row that does not decode into its type: the schema and the code disagree.
pub fn decode_error(what: &str, e: BoxDynError) -> StoreError {
    StoreError::Internal(format!("{what}: cannot decode a row: {e}"))
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// Splits a database URL into the engine, the URL sqlx gets, and a description without
/// credentials for messages.
fn parse_url(url: &str) -> Result<(Engine, String, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let parsed = AnyConnectOptions::from_str(url).map_err(|_| {
            // The parse error could quote the URL, password included.
            StoreError::Config("database URL is not a valid postgres:// URL".into())
        })?;
        let u = &parsed.database_url;
        let target = format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        );
        return Ok((Engine::Postgres, url.to_owned(), target));
    }
    if let Some(rest) = url.strip_prefix("sqlite:") {
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let has_mode = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("mode=")));
        let url = match (query, has_mode) {
            (_, true) => url.to_owned(),
            (Some(_), false) => format!("{url}&mode=rwc"),
            (None, false) => format!("{url}?mode=rwc"),
        };
        return Ok((Engine::Sqlite, url, path.to_owned()));
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(StoreError::Config(format!(
            "unsupported database URL scheme {scheme:?}: use postgres://..., sqlite://path or a file path"
        )));
    }
    if url.is_empty() {
        return Err(StoreError::Config(
            "database URL is empty: use postgres://..., sqlite://path or a file path".into(),
        ));
    }
    // A bare path. Made absolute so that no part of it is read as a URL host, and
    // percent-encoded where a URL would misread it (sqlx decodes the path again).
    let absolute = std::path::absolute(url)
        .map_err(|e| StoreError::Config(format!("database path {url:?}: {e}")))?;
    let display = absolute.display().to_string();
    let mut encoded = String::with_capacity(display.len());
    for c in display.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            '?' => encoded.push_str("%3F"),
            '#' => encoded.push_str("%23"),
            ' ' => encoded.push_str("%20"),
            c => encoded.push(c),
        }
    }
    Ok((
        Engine::Sqlite,
        format!("sqlite://{encoded}?mode=rwc"),
        display,
    ))
}

/// Maps an error met while connecting: anything but a bad configuration or refused
/// credentials means the database cannot serve now.
fn connect_error(engine: Engine, target: &str, e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::Configuration(e) => {
            StoreError::Config(format!("database {} {target}: {e}", engine.as_str()))
        }
        // SQLSTATE class 28, invalid authorization: retrying will not help.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")) => {
            StoreError::Config(format!(
                "the {} database at {target} refused the credentials ({db}): \
                 check the user and password in the URL",
                engine.as_str()
            ))
        }
        e => StoreError::Unavailable(format!(
            "cannot connect to the {} database at {target}: {e}",
            engine.as_str()
        )),
    }
}

/// Embedded migrations as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations(Vec<Migration>);

impl MigrationSource<'static> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = std::result::Result<Vec<sqlx::migrate::Migration>, BoxDynError>,
                > + Send,
        >,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .into_iter()
                .map(|m| {
                    sqlx::migrate::Migration::new(
                        m.version,
                        Cow::Borrowed(m.description),
                        MigrationType::Simple,
                        Cow::Borrowed(m.sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    #[test]
    fn parses_urls() {
        let (engine, url, target) =
            parse_url("postgres://fleet:secret@db.example:6543/fleet?sslmode=disable")
                .expect("postgres URL");
        assert_eq!(engine, Engine::Postgres);
        assert!(url.contains("secret"));
        assert_eq!(target, "db.example:6543/fleet");

        let (engine, url, target) = parse_url("sqlite:///var/lib/fleet/read.db").expect("sqlite");
        assert_eq!(engine, Engine::Sqlite);
        assert_eq!(url, "sqlite:///var/lib/fleet/read.db?mode=rwc");
        assert_eq!(target, "/var/lib/fleet/read.db");

        let (_, url, _) = parse_url("sqlite:///x.db?mode=ro").expect("sqlite ro");
        assert_eq!(url, "sqlite:///x.db?mode=ro");

        let (engine, url, target) = parse_url("/tmp/a b#1.db").expect("bare path");
        assert_eq!(engine, Engine::Sqlite);
        assert_eq!(url, "sqlite:///tmp/a%20b%231.db?mode=rwc");
        assert_eq!(target, "/tmp/a b#1.db");

        assert!(matches!(
            parse_url("mysql://x/y"),
            Err(StoreError::Config(_))
        ));
        match parse_url("postgres://u:hunter2@[bad") {
            Err(StoreError::Config(m)) => assert!(!m.contains("hunter2")),
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn sqlite_connections_get_the_pragmas() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pragmas.db");
        let db = Database::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        let mut conn = db.pool().acquire().await.expect("connection");
        async fn pragma(conn: &mut AnyConnection, name: &str) -> (Option<i64>, Option<String>) {
            let row = sqlx::query(&format!("PRAGMA {name}"))
                .fetch_one(conn)
                .await
                .expect("pragma");
            (row.try_get(0).ok(), row.try_get(0).ok())
        }
        assert_eq!(
            pragma(&mut conn, "journal_mode").await.1.as_deref(),
            Some("wal")
        );
        assert_eq!(pragma(&mut conn, "busy_timeout").await.0, Some(5000));
        assert_eq!(pragma(&mut conn, "foreign_keys").await.0, Some(1));
        assert_eq!(pragma(&mut conn, "synchronous").await.0, Some(1), "NORMAL");
        assert_eq!(pragma(&mut conn, "temp_store").await.0, Some(2), "MEMORY");
        assert_eq!(
            pragma(&mut conn, "wal_autocheckpoint").await.0,
            Some(10_000)
        );
        assert_eq!(
            pragma(&mut conn, "cache_size").await.0,
            Some(-16_384),
            "16 MiB"
        );
    }

    const FIRST: &[Migration] = &[Migration {
        version: 1,
        description: "one",
        sql: "CREATE TABLE one (id BIGINT NOT NULL PRIMARY KEY)",
    }];
    const SECOND: &[Migration] = &[Migration {
        version: 2,
        description: "two",
        sql: "CREATE TABLE two (id BIGINT NOT NULL PRIMARY KEY)",
    }];

    #[tokio::test]
    async fn sets_share_the_database_and_leave_each_other_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sets.db");
        let db = Database::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        let first = Migrations {
            owner: "first",
            list: FIRST,
        };
        let second = Migrations {
            owner: "second",
            list: SECOND,
        };
        db.migrate(&first).await.expect("first");
        db.migrate(&second).await.expect("second beside the first");
        db.migrate(&first)
            .await
            .expect("first again changes nothing");
        db.migrate_as_one(&[&first, &second])
            .await
            .expect("together they are the whole database");
        match db.migrate_as_one(&[&first]).await {
            Err(StoreError::Internal(m)) => assert!(m.contains('2'), "{m}"),
            other => panic!("strict run must refuse the unknown version 2: {other:?}"),
        }
        let changed = Migrations {
            owner: "first",
            list: &[Migration {
                version: 1,
                description: "one",
                sql: "CREATE TABLE one (id TEXT NOT NULL PRIMARY KEY)",
            }],
        };
        assert!(
            matches!(db.migrate(&changed).await, Err(StoreError::Internal(_))),
            "a released migration whose text changed is refused"
        );
    }
}
