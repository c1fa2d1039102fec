//! The SQL read model: one implementation over `sqlx::AnyPool` serving PostgreSQL and the
//! embedded SQLite, with one set of portable migrations (`stores/migrations/`).
//!
//! Every statement below is the same text on both engines: `$n` placeholders (SQLite reads
//! `$1` as a named parameter that sqlx binds by its number, so a parameter may repeat;
//! the multi-row `VALUES` of a batch are the one exception, see `values_rows`),
//! `INSERT ... ON CONFLICT (...) DO UPDATE`, `excluded.`, and `CASE` instead of
//! `GREATEST`/`LEAST` (PostgreSQL) or scalar `MAX`/`MIN` (SQLite), which differ. Only the
//! connection setup branches on the engine (pool size and SQLite pragmas).
//!
//! The same type also implements the [`Registry`](crate::registry::Registry) (tenants,
//! locations, registration tokens, agent credentials; `read_model/registry.rs`) on the same
//! pool, so one database serves both seams. Unlike the projected tables, the registry's are
//! the only copy of their data: rebuilding the read model means dropping its tables, not
//! the database.
//!
//! Applying is idempotent and order-tolerant, so replaying a topic, or reading two topics in
//! any interleaving, converges on the same rows:
//!
//! * agents: `first_seen_at` is the least and `last_seen_at` the greatest time heard; the
//!   latest-metrics columns come from the report with the greatest `occurred_at`.
//! * alerts: the status follows from what has been seen (resolved beats acknowledged beats
//!   open), so a raise replayed after the resolve does not reopen. The raise fields come from
//!   the RAISED event whenever it is seen; an acknowledgement or resolve seen first creates
//!   the row from its own fields. The earliest acknowledgement and the earliest resolve win.
//! * commands, software and tickets: see `read_model/commands.rs`, `software.rs` and
//!   `tickets.rs`.
//!
//! A batch's reports and heartbeats are applied set-based (`read_model/agents.rs`): each
//! agent's are coalesced into one row, written by multi-row upserts, giving the state that
//! applying them one by one gives. The other changes are applied one by one. All of a batch is
//! written in one transaction with its offsets.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Once;
use std::time::Duration;

use async_trait::async_trait;
use fleet_schemas::{AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Connection, Executor, Row};

mod agents;
mod commands;
mod fleet;
mod registry;
mod snapshot;
mod software;
mod tickets;

pub use snapshot::{
    ReadModelSnapshot, SnapshotRow, SnapshotTable, TableSnapshot, NOT_PROJECTED_TABLES,
    PROJECTED_TABLES, REGISTRY_TABLES,
};

use crate::{
    AgentQuery, AgentRow, AgentSoftware, AgentStatus, AlertQuery, AlertRow, AlertStatus,
    AuditEntry, AuditQuery, Change, CommandDetail, CommandQuery, CommandRow, FleetOverview,
    ReadModel, Result, ServiceRow, SoftwareQuery, StoreError, StoredOffset, TicketQuery, TicketRow,
};

/// Page size of the lists when the query names none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of the lists; larger limits are lowered to it.
pub const MAX_LIMIT: u32 = 1000;

/// How long a caller waits for a pooled connection (and, at start, for the server).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Settings of every SQLite connection: wait up to 5 s for another connection's write lock
/// before failing with BUSY; enforce foreign keys; `synchronous = NORMAL`, which in WAL mode
/// is durable across application crashes (a power loss may drop the last transactions, rows
/// and offsets together, so they are replayed).
const SQLITE_PRAGMAS: &str =
    "PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;";
/// Connections to PostgreSQL.
const POSTGRES_POOL_SIZE: u32 = 8;
/// Connections to SQLite: WAL lets readers run beside the one writer.
const SQLITE_POOL_SIZE: u32 = 4;

/// The migrations, embedded in the binary. File names follow sqlx's `<version>_<name>.sql`,
/// so `sqlx migrate` can run the same folder; a unit test checks this list matches it.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "read model",
        include_str!("../migrations/0001_read_model.sql"),
    ),
    (
        2,
        "registry",
        include_str!("../migrations/0002_registry.sql"),
    ),
    (
        3,
        "agent enrollment",
        include_str!("../migrations/0003_agent_enrollment.sql"),
    ),
    (
        4,
        "commands inventory tickets",
        include_str!("../migrations/0004_commands_inventory_tickets.sql"),
    ),
    (5, "users", include_str!("../migrations/0005_users.sql")),
    (
        6,
        "fleet view",
        include_str!("../migrations/0006_fleet_view.sql"),
    ),
    (
        7,
        "alert rules",
        include_str!("../migrations/0007_alert_rules.sql"),
    ),
    (
        8,
        "request keys and key revocation",
        include_str!("../migrations/0008_request_keys_and_key_revocation.sql"),
    ),
];

/// The engine behind a [`SqlReadModel`].
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

/// The read model and the registry on PostgreSQL or SQLite, chosen by URL.
pub struct SqlReadModel {
    pool: AnyPool,
    engine: Engine,
    /// Where the database lives, without credentials: `host:port/db` or the file path.
    target: String,
}

impl std::fmt::Debug for SqlReadModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlReadModel")
            .field("engine", &self.engine)
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

impl SqlReadModel {
    /// Connects to `url` and runs the migrations.
    ///
    /// * `postgres://user:pass@host:port/db?sslmode=...`: a pool of 8 connections.
    /// * `sqlite://path?mode=...` (`mode=rwc`, create if missing, unless the URL says
    ///   otherwise) or a bare path to a SQLite file (created if missing): WAL journal,
    ///   `synchronous=NORMAL`, a busy timeout and foreign keys on every connection.
    ///
    /// Fails with [`StoreError::Config`] for a URL it cannot use and
    /// [`StoreError::Unavailable`] when the database cannot be reached; messages name the
    /// host or file, never the password.
    #[tracing::instrument(skip(url))]
    pub async fn connect(url: &str) -> Result<Self> {
        install_drivers();
        let (engine, url, target) = parse_url(url)?;
        let options = AnyConnectOptions::from_str(&url)
            .map_err(|e| StoreError::Config(format!("read model URL for {target}: {e}")))?;

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

        let migrator = Migrator::new(EmbeddedMigrations)
            .await
            .map_err(|e| StoreError::Internal(format!("read model migrations: {e}")))?;
        migrator.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => {
                classify(engine, &target, "read model migrations", e)
            }
            other => StoreError::Internal(format!(
                "read model migrations on {} {target}: {other}",
                engine.as_str()
            )),
        })?;
        tracing::info!(engine = engine.as_str(), %target, "Read model ready.");
        Ok(SqlReadModel {
            pool,
            engine,
            target,
        })
    }

    /// The engine behind this read model.
    pub fn engine_kind(&self) -> Engine {
        self.engine
    }

    /// Closes the pool, waiting for connections in use to return.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn db_error(&self, what: &str, e: sqlx::Error) -> StoreError {
        classify(self.engine, &self.target, what, e)
    }

    fn apply_error(&self, e: ApplyError) -> StoreError {
        match e {
            ApplyError::Sql(e) => self.db_error("apply", e),
            ApplyError::Encode(e) => {
                StoreError::Internal(format!("cannot encode a change as JSON: {e}"))
            }
            ApplyError::Invalid(m) => StoreError::Internal(format!("invalid change: {m}")),
        }
    }

    /// One page of a list query: `{select} [WHERE filter] ORDER BY {order} LIMIT n`
    /// (`select` is `SELECT <columns> FROM <table>`), each row decoded by `decode`. `what`
    /// names the rows in errors.
    async fn list_page<T>(
        &self,
        what: &str,
        select: &str,
        order: &str,
        filter: &Filter<'_>,
        limit: Option<u32>,
        decode: fn(&AnyRow) -> std::result::Result<T, BoxDynError>,
    ) -> Result<Vec<T>> {
        let sql = format!(
            "{select}{} ORDER BY {order} LIMIT {}",
            filter.where_clause(),
            filter.next_placeholder()
        );
        let mut q = sqlx::query(&sql);
        for value in &filter.binds {
            q = q.bind(*value);
        }
        let rows = q
            .bind(clamp_limit(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error(&format!("list {what}"), e))?;
        rows.iter()
            .map(decode)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| decode_error(what, e))
    }
}

fn install_drivers() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sqlx::any::install_default_drivers);
}

/// Splits a read-model URL into the engine, the URL sqlx gets, and a description without
/// credentials for messages.
fn parse_url(url: &str) -> Result<(Engine, String, String)> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let parsed = AnyConnectOptions::from_str(url).map_err(|_| {
            // The parse error could quote the URL, password included.
            StoreError::Config("read model URL is not a valid postgres:// URL".into())
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
            "unsupported read model URL scheme {scheme:?}: use postgres://..., sqlite://path or a file path"
        )));
    }
    if url.is_empty() {
        return Err(StoreError::Config(
            "read model URL is empty: use postgres://..., sqlite://path or a file path".into(),
        ));
    }
    // A bare path. Made absolute so that no part of it is read as a URL host, and
    // percent-encoded where a URL would misread it (sqlx decodes the path again).
    let absolute = std::path::absolute(url)
        .map_err(|e| StoreError::Config(format!("read model path {url:?}: {e}")))?;
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
            StoreError::Config(format!("read model {} {target}: {e}", engine.as_str()))
        }
        // SQLSTATE class 28, invalid authorization: retrying will not help.
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")) => {
            StoreError::Config(format!(
                "the {} read model at {target} refused the credentials ({db}): \
                 check the user and password in the URL",
                engine.as_str()
            ))
        }
        e => StoreError::Unavailable(format!(
            "cannot connect to the {} read model at {target}: {e}",
            engine.as_str()
        )),
    }
}

/// Maps an error of a statement: lost connections, pool timeouts, lock contention and
/// serialization failures are worth a retry ([`StoreError::Unavailable`]); the rest is
/// [`StoreError::Internal`].
fn classify(engine: Engine, target: &str, what: &str, e: sqlx::Error) -> StoreError {
    let retry = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            match engine {
                // Class 08 connection exception, 53 insufficient resources, 57P0x shutdown
                // or cannot connect now, 40001 serialization failure, 40P01 deadlock.
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
    let message = format!("{what} on {} {target}: {e}", engine.as_str());
    if retry {
        StoreError::Unavailable(message)
    } else {
        StoreError::Internal(message)
    }
}

/// The embedded migrations as a sqlx migration source.
#[derive(Debug)]
struct EmbeddedMigrations;

impl<'s> MigrationSource<'s> for EmbeddedMigrations {
    fn resolve(
        self,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<Migration>, BoxDynError>> + Send + 's>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

// ----------------------------------------------------------------------------------------
// Statements
// ----------------------------------------------------------------------------------------

/// Creates the agent or widens its seen window (for lifecycle events; reports and
/// heartbeats: `read_model/agents.rs`). `$1` agent, `$2` tenant, `$3` time heard.
const TOUCH_AGENT: &str = "\
INSERT INTO agents (agent_id, tenant_id, first_seen_at, last_seen_at)
VALUES ($1, $2, $3, $3)
ON CONFLICT (agent_id) DO UPDATE SET
    first_seen_at = CASE WHEN excluded.first_seen_at < agents.first_seen_at
                         THEN excluded.first_seen_at ELSE agents.first_seen_at END,
    last_seen_at  = CASE WHEN excluded.last_seen_at > agents.last_seen_at
                         THEN excluded.last_seen_at ELSE agents.last_seen_at END
WHERE excluded.first_seen_at < agents.first_seen_at
   OR excluded.last_seen_at > agents.last_seen_at";

/// The head of the alert statements: the columns, in the order of their `$n`.
macro_rules! alert_insert {
    () => {
        "INSERT INTO alerts (alert_id, tenant_id, agent_id, rule_id, rule_name, metric, subject,
    severity, operator, threshold, value, message, raised_at, updated_at, status,
    acknowledged_at, acknowledged_by, resolved_at, resolved_value)"
    };
}

/// The RAISED event is the authority on the raise fields; the status is left alone, so a
/// replayed raise cannot reopen an acknowledged or resolved alert.
const ALERT_RAISED: &str = concat!(
    alert_insert!(),
    "
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, 'open',
    NULL, NULL, NULL, NULL)
ON CONFLICT (alert_id) DO UPDATE SET
    rule_name = excluded.rule_name, metric = excluded.metric, subject = excluded.subject,
    severity = excluded.severity, operator = excluded.operator,
    threshold = excluded.threshold, value = excluded.value, message = excluded.message,
    raised_at = excluded.raised_at,
    updated_at = CASE WHEN excluded.updated_at > alerts.updated_at
                      THEN excluded.updated_at ELSE alerts.updated_at END"
);

/// `$13` is the acknowledgement time, `$14` who acknowledged. The earliest one wins.
const ALERT_ACKNOWLEDGED: &str = concat!(
    alert_insert!(),
    "
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, 'acknowledged',
    $13, $14, NULL, NULL)
ON CONFLICT (alert_id) DO UPDATE SET
    acknowledged_by = CASE WHEN alerts.acknowledged_at IS NULL
                             OR excluded.acknowledged_at < alerts.acknowledged_at
                           THEN excluded.acknowledged_by ELSE alerts.acknowledged_by END,
    acknowledged_at = CASE WHEN alerts.acknowledged_at IS NULL
                             OR excluded.acknowledged_at < alerts.acknowledged_at
                           THEN excluded.acknowledged_at ELSE alerts.acknowledged_at END,
    status = CASE WHEN alerts.status = 'resolved' THEN 'resolved' ELSE 'acknowledged' END,
    updated_at = CASE WHEN excluded.updated_at > alerts.updated_at
                      THEN excluded.updated_at ELSE alerts.updated_at END"
);

/// `$13` is the resolve time, `$11` the value that cleared it. The earliest one wins.
const ALERT_RESOLVED: &str = concat!(
    alert_insert!(),
    "
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, 'resolved',
    NULL, NULL, $13, $11)
ON CONFLICT (alert_id) DO UPDATE SET
    resolved_value = CASE WHEN alerts.resolved_at IS NULL
                            OR excluded.resolved_at < alerts.resolved_at
                          THEN excluded.resolved_value ELSE alerts.resolved_value END,
    resolved_at = CASE WHEN alerts.resolved_at IS NULL
                         OR excluded.resolved_at < alerts.resolved_at
                       THEN excluded.resolved_at ELSE alerts.resolved_at END,
    status = 'resolved',
    updated_at = CASE WHEN excluded.updated_at > alerts.updated_at
                      THEN excluded.updated_at ELSE alerts.updated_at END"
);

const UPSERT_OFFSET: &str = "\
INSERT INTO projection_offsets (projection, topic, partition, next_offset)
VALUES ($1, $2, $3, $4)
ON CONFLICT (projection, topic, partition) DO UPDATE SET next_offset = excluded.next_offset";

const SELECT_OFFSETS: &str = "\
SELECT topic, partition, next_offset FROM projection_offsets
WHERE projection = $1 ORDER BY topic, partition";

const AGENT_COLUMNS: &str = concat!(
    "tenant_id, agent_id, first_seen_at, last_seen_at, \
last_metrics_at, cpu_percent, memory_percent, disk_percent_max, load_1, uptime_seconds, \
latest_report, location_id, device_name, hostname, facts, enrollment, registered_at, \
deactivated_at, tags, ",
    agent_status_sql!(),
    " AS status, (SELECT COUNT(*) FROM alerts WHERE alerts.agent_id = agents.agent_id \
AND alerts.status <> 'resolved') AS open_alerts"
);

/// An agent's status, computed from its columns (see `AgentStatus`).
macro_rules! agent_status_sql {
    () => {
        "(CASE WHEN enrollment = 'deactivated' THEN 'deactivated' \
WHEN offline_at IS NOT NULL AND last_seen_at <= offline_at THEN 'offline' ELSE 'online' END)"
    };
}
pub(crate) use agent_status_sql;

/// Creates the row of an agent first known from an operator's change (no time heard).
const ENSURE_AGENT: &str = "\
INSERT INTO agents (agent_id, tenant_id, first_seen_at, last_seen_at)
VALUES ($1, $2, $3, $3)
ON CONFLICT (agent_id) DO NOTHING";

/// Tags from an event that carries them.
const AGENT_TAGS: &str = "UPDATE agents SET tags = $2 WHERE agent_id = $1";

/// Liveness: the newest ONLINE/OFFLINE event wins. `$3` is the OFFLINE time or NULL.
const AGENT_LIVENESS: &str = "\
UPDATE agents SET liveness_at = $2, offline_at = $3
WHERE agent_id = $1 AND (liveness_at IS NULL OR liveness_at <= $2)";

/// Registration or update: placement and facts (the newest event wins; a field an
/// UPDATED event leaves out stays as it is).
const AGENT_ENROLLED: &str = "\
UPDATE agents SET location_id = COALESCE($2, location_id),
    device_name = COALESCE($3, device_name), hostname = COALESCE($4, hostname),
    facts = COALESCE($5, facts),
    enrollment = CASE WHEN enrollment = 'deactivated' THEN enrollment ELSE 'enrolled' END,
    registered_at = CASE WHEN registered_at IS NULL OR $6 < registered_at THEN $6 ELSE registered_at END
WHERE agent_id = $1";

/// Deactivation is final for an agent id (re-enrolling gives a new id).
const AGENT_DEACTIVATED: &str = "\
UPDATE agents SET enrollment = 'deactivated',
    deactivated_at = CASE WHEN deactivated_at IS NULL OR $2 < deactivated_at THEN $2 ELSE deactivated_at END
WHERE agent_id = $1";

const ALERT_COLUMNS: &str = "alert_id, tenant_id, agent_id, rule_id, rule_name, metric, \
subject, severity, status, operator, threshold, value, message, raised_at, acknowledged_at, \
acknowledged_by, resolved_at, resolved_value";

type Tx<'c> = sqlx::Transaction<'c, sqlx::Any>;

async fn touch_agent(tx: &mut Tx<'_>, tenant: &str, agent: &str, at: i64) -> sqlx::Result<()> {
    sqlx::query(TOUCH_AGENT)
        .bind(agent)
        .bind(tenant)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn apply_lifecycle(tx: &mut Tx<'_>, ev: &AgentLifecycle) -> Result<(), ApplyError> {
    match ev.kind {
        AgentLifecycleKind::Registered | AgentLifecycleKind::Updated => {
            if ev.kind == AgentLifecycleKind::Registered {
                touch_agent(tx, &ev.tenant_id, &ev.agent_id, ev.occurred_at).await?;
            } else {
                // An operator's change (tags, placement) is not a sign of life.
                sqlx::query(ENSURE_AGENT)
                    .bind(ev.agent_id.as_str())
                    .bind(ev.tenant_id.as_str())
                    .bind(ev.occurred_at)
                    .execute(&mut **tx)
                    .await?;
            }
            if let Some(tags) = &ev.tags {
                let json = serde_json::to_string(tags).map_err(ApplyError::Encode)?;
                sqlx::query(AGENT_TAGS)
                    .bind(ev.agent_id.as_str())
                    .bind(json)
                    .execute(&mut **tx)
                    .await?;
            }
            let facts = ev
                .facts
                .as_ref()
                .map(serde_json::to_string)
                .transpose()
                .map_err(ApplyError::Encode)?;
            sqlx::query(AGENT_ENROLLED)
                .bind(ev.agent_id.as_str())
                .bind(ev.location_id.clone())
                .bind(ev.device_name.clone())
                .bind(ev.facts.as_ref().map(|f| f.hostname.clone()))
                .bind(facts)
                .bind(ev.occurred_at)
                .execute(&mut **tx)
                .await?;
        }
        AgentLifecycleKind::Deactivated => {
            touch_agent(tx, &ev.tenant_id, &ev.agent_id, ev.occurred_at).await?;
            sqlx::query(AGENT_DEACTIVATED)
                .bind(ev.agent_id.as_str())
                .bind(ev.occurred_at)
                .execute(&mut **tx)
                .await?;
        }
        AgentLifecycleKind::Online | AgentLifecycleKind::Offline => {
            sqlx::query(ENSURE_AGENT)
                .bind(ev.agent_id.as_str())
                .bind(ev.tenant_id.as_str())
                .bind(ev.occurred_at)
                .execute(&mut **tx)
                .await?;
            let offline_at = (ev.kind == AgentLifecycleKind::Offline).then_some(ev.occurred_at);
            sqlx::query(AGENT_LIVENESS)
                .bind(ev.agent_id.as_str())
                .bind(ev.occurred_at)
                .bind(offline_at)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

async fn apply_alert(tx: &mut Tx<'_>, ev: &AlertEvent) -> sqlx::Result<()> {
    let sql = match ev.kind {
        AlertEventKind::Raised => ALERT_RAISED,
        AlertEventKind::Acknowledged => ALERT_ACKNOWLEDGED,
        AlertEventKind::Resolved => ALERT_RESOLVED,
    };
    let mut q = sqlx::query(sql)
        .bind(ev.alert_id.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(ev.agent_id.as_str())
        .bind(ev.rule_id.as_str())
        .bind(ev.rule_name.as_str())
        .bind(ev.metric.as_str())
        .bind(ev.subject.as_deref())
        .bind(ev.severity.as_str())
        .bind(ev.operator.as_str())
        .bind(ev.threshold)
        .bind(ev.value)
        .bind(ev.message.as_str())
        .bind(ev.occurred_at);
    if ev.kind == AlertEventKind::Acknowledged {
        q = q.bind(ev.actor.as_deref());
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

/// Why applying one change failed.
#[derive(Debug)]
enum ApplyError {
    Sql(sqlx::Error),
    Encode(serde_json::Error),
    /// The change itself is wrong (a status no producer should write).
    Invalid(String),
}

impl From<sqlx::Error> for ApplyError {
    fn from(e: sqlx::Error) -> Self {
        ApplyError::Sql(e)
    }
}

/// `rows` copies of `row`, a parenthesized row of a multi-row `VALUES` in which each `?` is a
/// placeholder: on PostgreSQL numbered `$1`, `$2`, .. in bind order across the rows; on
/// SQLite left as `?`, which binds by position too. (Unlike the other statements, which
/// use `$n` on both: sqlx finds the number of each SQLite parameter from its name, and
/// SQLite looks a name up in a list, so `$n` costs time quadratic in the parameters: most
/// of a batch's time at a few thousand.)
fn values_rows(engine: Engine, rows: usize, row: &str) -> String {
    if engine == Engine::Sqlite {
        return vec![row; rows].join(", ");
    }
    let mut out = String::with_capacity(rows * (row.len() + 8));
    let mut n = 0usize;
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        for part in row.split_inclusive('?') {
            match part.strip_suffix('?') {
                Some(head) => {
                    n += 1;
                    let _ = write!(out, "{head}${n}");
                }
                None => out.push_str(part),
            }
        }
    }
    out
}

/// `rows` rows of `columns` placeholders (see [`values_rows`]) for a multi-row `VALUES`
/// (one row of `n`: an `IN` list).
fn values_placeholders(engine: Engine, rows: usize, columns: usize) -> String {
    values_rows(
        engine,
        rows,
        &format!("({})", vec!["?"; columns].join(", ")),
    )
}

/// Splits `items` for multi-row statements: slices of `max` while that many remain, then
/// of the greatest power of two left. Statements so come in few lengths (with a power-of-two
/// `max`: one per power of two), which each connection's prepared-statement cache keeps
/// (sqlx caches by SQL text).
fn chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let len = if rest.len() >= max {
            max.max(1)
        } else {
            1 << rest.len().ilog2()
        };
        let (head, tail) = rest.split_at(len);
        rest = tail;
        Some(head)
    })
}

fn clamp_limit(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(DEFAULT_LIMIT).min(MAX_LIMIT))
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRow, BoxDynError> {
    let latest_report = row
        .try_get::<Option<String>, _>("latest_report")?
        .map(|s| serde_json::from_str(&s))
        .transpose()?;
    Ok(AgentRow {
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        first_seen_at: row.try_get("first_seen_at")?,
        last_seen_at: row.try_get("last_seen_at")?,
        last_metrics_at: row.try_get("last_metrics_at")?,
        cpu_percent: row.try_get("cpu_percent")?,
        memory_percent: row.try_get("memory_percent")?,
        disk_percent_max: row.try_get("disk_percent_max")?,
        load_1: row.try_get("load_1")?,
        uptime_seconds: row.try_get("uptime_seconds")?,
        latest_report,
        location_id: row.try_get("location_id")?,
        device_name: row.try_get("device_name")?,
        hostname: row.try_get("hostname")?,
        facts: row
            .try_get::<Option<String>, _>("facts")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?,
        enrollment: row.try_get("enrollment")?,
        registered_at: row.try_get("registered_at")?,
        deactivated_at: row.try_get("deactivated_at")?,
        status: {
            let status: String = row.try_get("status")?;
            AgentStatus::parse(&status).ok_or_else(|| format!("unknown agent status {status:?}"))?
        },
        tags: row
            .try_get::<Option<String>, _>("tags")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?
            .unwrap_or_default(),
        open_alert_count: u64::try_from(row.try_get::<i64, _>("open_alerts")?)?,
    })
}

fn alert_from_row(row: &AnyRow) -> Result<AlertRow, BoxDynError> {
    let status: String = row.try_get("status")?;
    let status = AlertStatus::parse(&status)
        .ok_or_else(|| format!("unknown alert status {status:?} in the read model"))?;
    Ok(AlertRow {
        alert_id: row.try_get("alert_id")?,
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        rule_id: row.try_get("rule_id")?,
        rule_name: row.try_get("rule_name")?,
        metric: row.try_get("metric")?,
        subject: row.try_get("subject")?,
        severity: row.try_get("severity")?,
        status,
        operator: row.try_get("operator")?,
        threshold: row.try_get("threshold")?,
        value: row.try_get("value")?,
        message: row.try_get("message")?,
        raised_at: row.try_get("raised_at")?,
        acknowledged_at: row.try_get("acknowledged_at")?,
        acknowledged_by: row.try_get("acknowledged_by")?,
        resolved_at: row.try_get("resolved_at")?,
        resolved_value: row.try_get("resolved_value")?,
    })
}

/// Escapes `%`, `_` and `\\` for a `LIKE ... ESCAPE '\\'` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn decode_error(what: &str, e: BoxDynError) -> StoreError {
    StoreError::Internal(format!("{what}: cannot decode a row: {e}"))
}

/// Builds `WHERE` clauses with `$n` placeholders numbered in bind order. (sqlx's
/// `QueryBuilder<Any>` writes `?` placeholders, which PostgreSQL rejects.)
#[derive(Debug, Default)]
struct Filter<'a> {
    clauses: Vec<String>,
    binds: Vec<&'a str>,
}

impl<'a> Filter<'a> {
    /// Adds `column op $n` bound to `value` when `value` is set.
    fn push(&mut self, column: &str, op: &str, value: Option<&'a str>) {
        if let Some(value) = value {
            self.binds.push(value);
            self.clauses
                .push(format!("{column} {op} ${}", self.binds.len()));
        }
    }

    fn where_clause(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// Adds the clause `clause` makes of the placeholder bound to `value` (which the
    /// clause may use more than once).
    fn push_with(&mut self, value: &'a str, clause: impl FnOnce(&str) -> String) {
        self.binds.push(value);
        let placeholder = format!("${}", self.binds.len());
        self.clauses.push(clause(&placeholder));
    }

    /// The placeholder of the next bind.
    fn next_placeholder(&self) -> String {
        format!("${}", self.binds.len() + 1)
    }
}

#[async_trait]
impl ReadModel for SqlReadModel {
    fn engine(&self) -> &'static str {
        self.engine.as_str()
    }

    #[tracing::instrument(
        skip(self, changes, offsets),
        fields(engine = self.engine.as_str(), changes = changes.len(), offsets = offsets.len())
    )]
    async fn apply(
        &self,
        projection: &str,
        changes: &[Change],
        offsets: &[StoredOffset],
    ) -> Result<()> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| self.db_error("begin", e))?;
        // Reports and heartbeats wait here, coalesced per agent, and are written together.
        let mut agents = agents::AgentUpdates::default();
        for change in changes {
            let applied = match change {
                Change::Report(report) => {
                    agents.report(report);
                    Ok(())
                }
                Change::Heartbeat(hb) => {
                    agents.heartbeat(hb);
                    Ok(())
                }
                Change::Alert(ev) => apply_alert(&mut tx, ev).await.map_err(Into::into),
                Change::Lifecycle(ev) => {
                    // It writes the agent's row too: what came before it goes first. (No
                    // other change writes the rows the waiting ones do.)
                    if agents.contains(&ev.agent_id) {
                        agents
                            .flush(&mut tx, self.engine)
                            .await
                            .map_err(|e| self.apply_error(e))?;
                    }
                    apply_lifecycle(&mut tx, ev).await
                }
                Change::Rule(ev) => fleet::apply_rule(&mut tx, ev).await,
                Change::Command(ev) => commands::apply_command(&mut tx, ev).await,
                Change::Inventory(inv) => software::apply_inventory(&mut tx, self.engine, inv)
                    .await
                    .map_err(Into::into),
                Change::Ticket(ev) => tickets::apply_ticket(&mut tx, ev).await,
            };
            applied.map_err(|e| self.apply_error(e))?;
        }
        agents
            .flush(&mut tx, self.engine)
            .await
            .map_err(|e| self.apply_error(e))?;
        for offset in offsets {
            sqlx::query(UPSERT_OFFSET)
                .bind(projection)
                .bind(offset.topic.as_str())
                .bind(i64::from(offset.partition))
                .bind(offset.next_offset)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error("store offsets", e))?;
        }
        tx.commit().await.map_err(|e| self.db_error("commit", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn offsets(&self, projection: &str) -> Result<Vec<StoredOffset>> {
        let rows = sqlx::query(SELECT_OFFSETS)
            .bind(projection)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error("read offsets", e))?;
        rows.iter()
            .map(|row| {
                let partition: i64 = row.try_get("partition")?;
                Ok(StoredOffset {
                    topic: row.try_get("topic")?,
                    partition: u32::try_from(partition)?,
                    next_offset: row.try_get("next_offset")?,
                })
            })
            .collect::<Result<_, BoxDynError>>()
            .map_err(|e| decode_error("offsets", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentRow>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        filter.push("agent_id", ">", query.after.as_deref());
        filter.push("location_id", "=", query.location_id.as_deref());
        filter.push(
            agent_status_sql!(),
            "=",
            query.status.map(AgentStatus::as_str),
        );
        let tag = query
            .tag
            .as_deref()
            .map(|t| format!("%\"{}\"%", like_escape(t)));
        if let Some(tag) = tag.as_deref() {
            filter.push_with(tag, |p| format!("tags LIKE {p} ESCAPE '\\'"));
        }
        let text = query
            .text
            .as_deref()
            .map(|t| format!("%{}%", like_escape(&t.to_lowercase())));
        if let Some(text) = text.as_deref() {
            filter.push_with(text, |p| {
                format!(
                    "(LOWER(agent_id) LIKE {p} ESCAPE '\\' OR LOWER(COALESCE(hostname, '')) \
                     LIKE {p} ESCAPE '\\' OR LOWER(COALESCE(device_name, '')) LIKE {p} ESCAPE '\\')"
                )
            });
        }
        self.list_page(
            "agents",
            &format!("SELECT {AGENT_COLUMNS} FROM agents"),
            "agent_id",
            &filter,
            query.limit,
            agent_from_row,
        )
        .await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn get_agent(&self, tenant_id: Option<&str>, agent_id: &str) -> Result<Option<AgentRow>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(agent_id));
        filter.push("tenant_id", "=", tenant_id);
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents{}",
            filter.where_clause()
        );
        let mut q = sqlx::query(&sql);
        for value in &filter.binds {
            q = q.bind(*value);
        }
        let row = q
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.db_error("get agent", e))?;
        row.as_ref()
            .map(agent_from_row)
            .transpose()
            .map_err(|e| decode_error("agent", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertRow>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        filter.push("agent_id", "=", query.agent_id.as_deref());
        filter.push("status", "=", query.status.map(AlertStatus::as_str));
        self.list_page(
            "alerts",
            &format!("SELECT {ALERT_COLUMNS} FROM alerts"),
            "raised_at DESC, alert_id DESC",
            &filter,
            query.limit,
            alert_from_row,
        )
        .await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn get_alert(&self, tenant_id: Option<&str>, alert_id: &str) -> Result<Option<AlertRow>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", tenant_id);
        filter.push("alert_id", "=", Some(alert_id));
        let rows = self
            .list_page(
                "alerts",
                &format!("SELECT {ALERT_COLUMNS} FROM alerts"),
                "raised_at DESC, alert_id DESC",
                &filter,
                Some(1),
                alert_from_row,
            )
            .await?;
        Ok(rows.into_iter().next())
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>> {
        self.query_commands(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn get_command(
        &self,
        tenant_id: Option<&str>,
        command_id: &str,
    ) -> Result<Option<CommandDetail>> {
        self.query_command(tenant_id, command_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn agent_software(&self, query: &SoftwareQuery) -> Result<Option<AgentSoftware>> {
        self.query_software(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_tickets(&self, query: &TicketQuery) -> Result<Vec<TicketRow>> {
        self.query_tickets(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_rules(&self, tenant_id: Option<&str>) -> Result<Vec<fleet_schemas::RuleEvent>> {
        self.query_rules(tenant_id, None).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn get_rule(&self, rule_id: &str) -> Result<Option<fleet_schemas::RuleEvent>> {
        Ok(self.query_rules(None, Some(rule_id)).await?.pop())
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn overview(&self, tenant_id: Option<&str>) -> Result<FleetOverview> {
        self.query_overview(tenant_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn agent_services(
        &self,
        tenant_id: Option<&str>,
        agent_id: &str,
    ) -> Result<Vec<ServiceRow>> {
        self.query_services(tenant_id, agent_id).await
    }

    #[tracing::instrument(skip(self, entry), fields(engine = self.engine.as_str(), action = %entry.action))]
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.insert_audit(entry).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.engine.as_str()))]
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        self.query_audit(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_list_matches_the_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("migrations folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".sql"))
            .collect();
        files.sort();
        let versions: Vec<i64> = files
            .iter()
            .map(|f| {
                f.split('_')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("file named <version>_<name>.sql")
            })
            .collect();
        let listed: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        assert_eq!(
            versions, listed,
            "every file in migrations/ is listed in MIGRATIONS"
        );
    }

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
        let store = SqlReadModel::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        let mut conn = store.pool.acquire().await.expect("connection");
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
    }

    #[test]
    fn multi_row_placeholders_and_chunks() {
        let pg = Engine::Postgres;
        assert_eq!(values_placeholders(pg, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(values_placeholders(pg, 1, 3), "($1, $2, $3)");
        assert_eq!(values_placeholders(pg, 0, 3), "");
        assert_eq!(
            values_rows(pg, 2, "(?, NULL, ?)"),
            "($1, NULL, $2), ($3, NULL, $4)"
        );
        let lite = Engine::Sqlite;
        assert_eq!(
            values_rows(lite, 2, "(?, NULL, ?)"),
            "(?, NULL, ?), (?, NULL, ?)"
        );
        assert_eq!(values_placeholders(lite, 1, 2), "(?, ?)");
        let items: Vec<u32> = (0..600).collect();
        let lens: Vec<usize> = chunks(&items, 256).map(<[u32]>::len).collect();
        assert_eq!(lens, vec![256, 256, 64, 16, 8]);
        let flat: Vec<u32> = chunks(&items, 256).flatten().copied().collect();
        assert_eq!(flat, items, "every item once, in order");
        assert_eq!(chunks(&items[..0], 256).count(), 0);
        assert_eq!(
            chunks(&items[..3], 256)
                .map(<[u32]>::len)
                .collect::<Vec<_>>(),
            vec![2, 1]
        );
    }

    #[test]
    fn limits_are_clamped() {
        assert_eq!(clamp_limit(None), 100);
        assert_eq!(clamp_limit(Some(5)), 5);
        assert_eq!(clamp_limit(Some(5000)), 1000);
    }

    #[test]
    fn filters_number_placeholders_in_bind_order() {
        let mut f = Filter::default();
        f.push("a", "=", Some("x"));
        f.push("b", "=", None);
        f.push("c", ">", Some("y"));
        assert_eq!(f.where_clause(), " WHERE a = $1 AND c > $2");
        assert_eq!(f.next_placeholder(), "$3");
        assert_eq!(f.binds, vec!["x", "y"]);
    }
}
