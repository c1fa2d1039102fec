//! The SQL read model: one implementation over `sqlx::AnyPool` (a [`Database`], which the
//! registry may share) serving PostgreSQL and the embedded SQLite, with portable migrations
//! of its own tables (`stores/read-model/migrations/`, [`MIGRATIONS`]).
//!
//! Every statement below is the same text on both engines: `$n` placeholders (SQLite reads
//! `$1` as a named parameter that sqlx binds by its number, so a parameter may repeat;
//! the multi-row `VALUES` of a batch are the one exception, see `values_rows`),
//! `INSERT ... ON CONFLICT (...) DO UPDATE`, `excluded.`, and `CASE` instead of
//! `GREATEST`/`LEAST` (PostgreSQL) or scalar `MAX`/`MIN` (SQLite), which differ. Only the
//! connection setup (`fleet_sql::Database`) and the multi-row statements branch on the
//! engine.
//!
//! By default the registry (`fleet-registry`) lives in the same database, on a clone of the
//! same pool. Unlike the projected tables, the registry's are the only copy of their data:
//! rebuilding the read model means emptying its tables, not dropping the database.
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
//! * commands, software and tickets: see `sql/commands.rs`, `software.rs` and
//!   `tickets.rs`.
//!
//! A batch's reports and heartbeats are applied set-based (`sql/agents.rs`): each
//! agent's are coalesced into one row, written by multi-row upserts, giving the state that
//! applying them one by one gives. The other changes are applied one by one. All of a batch is
//! written in one transaction with its offsets.

use std::fmt::Write as _;

use async_trait::async_trait;
use fleet_schemas::codec::Record as _;
use fleet_schemas::{
    AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind, MetricReport, RemoteConfigEvent,
};
use fleet_sql::{decode_error, Database, Engine, Migration, Migrations};
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

mod agents;
mod command_groups;
mod commands;
mod events;
mod fleet;
mod notify;
mod remote_config;
mod series;
mod snapshot;
mod software;
mod tickets;

pub use snapshot::{
    ReadModelSnapshot, SnapshotRow, SnapshotTable, TableSnapshot, NOT_PROJECTED_TABLES,
    PROJECTED_TABLES,
};

use crate::{
    AgentQuery, AgentRow, AgentSoftware, AgentStatus, AlertQuery, AlertRow, AlertStatus,
    AuditEntry, AuditQuery, Change, CommandDetail, CommandOutputChunk, CommandOutputQuery,
    CommandQuery, CommandRow, FleetOverview, ReadModel, Result, SampleSeries, SampleSeriesQuery,
    ServiceRow, SoftwareQuery, StoreError, StoredOffset, TicketQuery, TicketRow,
};

use crate::{DEFAULT_LIMIT, MAX_LIMIT};

/// The migrations of the read model's tables, embedded. Their versions interleave with the
/// registry's (one sequence per database; see `fleet_sql::Database::migrate`); a unit test
/// checks this list matches the `migrations/` folder.
pub const MIGRATIONS: Migrations = Migrations {
    owner: "read model",
    list: &[
        Migration {
            version: 1,
            description: "read model",
            sql: include_str!("../migrations/0001_read_model.sql"),
        },
        Migration {
            version: 3,
            description: "agent enrollment",
            sql: include_str!("../migrations/0003_agent_enrollment.sql"),
        },
        Migration {
            version: 4,
            description: "commands inventory tickets",
            sql: include_str!("../migrations/0004_commands_inventory_tickets.sql"),
        },
        Migration {
            version: 6,
            description: "fleet view",
            sql: include_str!("../migrations/0006_fleet_view.sql"),
        },
        Migration {
            version: 7,
            description: "alert rules",
            sql: include_str!("../migrations/0007_alert_rules.sql"),
        },
        Migration {
            version: 10,
            description: "sample series",
            sql: include_str!("../migrations/0010_sample_series.sql"),
        },
        Migration {
            version: 11,
            description: "services from latest report",
            sql: include_str!("../migrations/0011_services_from_latest_report.sql"),
        },
        Migration {
            version: 12,
            description: "latest report avro",
            sql: include_str!("../migrations/0012_latest_report_avro.sql"),
        },
        Migration {
            version: 13,
            description: "agent events",
            sql: include_str!("../migrations/0013_agent_events.sql"),
        },
        Migration {
            version: 14,
            description: "notifications",
            sql: include_str!("../migrations/0014_notifications.sql"),
        },
        Migration {
            version: 15,
            description: "command output",
            sql: include_str!("../migrations/0015_command_output.sql"),
        },
        Migration {
            version: 16,
            description: "remote config",
            sql: include_str!("../migrations/0016_remote_config.sql"),
        },
        Migration {
            version: 17,
            description: "command groups",
            sql: include_str!("../migrations/0017_command_groups.sql"),
        },
    ],
};

/// Opens the read model a URL names: `postgres://...`, `sqlite://path` or a bare path
/// to a SQLite file (created if missing). Runs its migrations. To share one pool with the
/// registry, connect a [`Database`] and open both on clones of it.
pub async fn open_read_model(url: &str) -> Result<std::sync::Arc<dyn ReadModel>> {
    Ok(std::sync::Arc::new(SqlReadModel::connect(url).await?))
}

/// The read model on PostgreSQL or SQLite, chosen by URL.
#[derive(Debug, Clone)]
pub struct SqlReadModel {
    db: Database,
}

impl SqlReadModel {
    /// Connects to `url` ([`Database::connect`]: `postgres://...`, `sqlite://path` or a
    /// bare path) and runs the read model's migrations.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::open(Database::connect(url).await?).await
    }

    /// Runs the read model's migrations on `db` and serves the read model from its pool.
    pub async fn open(db: Database) -> Result<Self> {
        db.migrate(&MIGRATIONS).await?;
        tracing::info!(engine = db.engine().as_str(), target = %db.target(), "Read model ready.");
        Ok(SqlReadModel { db })
    }

    /// The engine behind this read model.
    pub fn engine_kind(&self) -> Engine {
        self.db.engine()
    }

    /// The database (its pool is shared by clones).
    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Closes the pool, waiting for connections in use to return.
    pub async fn close(&self) {
        self.db.close().await;
    }

    fn db_error(&self, what: &str, e: sqlx::Error) -> StoreError {
        self.db.error(what, e)
    }

    fn apply_error(&self, e: ApplyError) -> StoreError {
        match e {
            ApplyError::Sql(e) => self.db_error("apply", e),
            ApplyError::Encode(e) => {
                StoreError::Internal(format!("cannot encode a change as JSON: {e}"))
            }
            ApplyError::Codec(e) => {
                StoreError::Internal(format!("cannot encode a report as Avro: {e}"))
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
        let q = filter.query(&sql);
        let rows = q
            .bind(clamp_limit(limit))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error(&format!("list {what}"), e))?;
        rows.iter()
            .map(decode)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| decode_error(what, e))
    }
}

// ----------------------------------------------------------------------------------------
// Statements
// ----------------------------------------------------------------------------------------

/// Creates the agent or widens its seen window (for lifecycle events; reports and
/// heartbeats: `sql/agents.rs`). `$1` agent, `$2` tenant, `$3` time heard.
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
latest_report, latest_report_avro, location_id, device_name, hostname, facts, enrollment, registered_at, \
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
    /// A report could not be written as Avro.
    Codec(fleet_schemas::codec::CodecError),
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

/// The report an agents row holds: its Avro encoding (`latest_report_avro`), or for a row
/// last written before migration 12, its JSON (`latest_report`). The row must have both
/// columns.
fn stored_report(row: &AnyRow) -> Result<Option<MetricReport>, BoxDynError> {
    if let Some(avro) = row.try_get::<Option<Vec<u8>>, _>("latest_report_avro")? {
        return Ok(Some(MetricReport::codec().decode_with(None, &avro)?));
    }
    Ok(row
        .try_get::<Option<String>, _>("latest_report")?
        .map(|json| serde_json::from_str(&json))
        .transpose()?)
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRow, BoxDynError> {
    let latest_report = stored_report(row)?
        .map(|r| serde_json::to_value(&r))
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

    /// The query `sql` (built with [`Filter::where_clause`]) with the filter's values bound.
    fn query<'q>(
        &self,
        sql: &'q str,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>
    where
        'a: 'q,
    {
        self.binds
            .iter()
            .fold(sqlx::query(sql), |q, value| q.bind(*value))
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
        self.db.engine().as_str()
    }

    #[tracing::instrument(
        skip(self, changes, offsets),
        fields(engine = self.db.engine().as_str(), changes = changes.len(), offsets = offsets.len())
    )]
    async fn apply(
        &self,
        projection: &str,
        changes: &[Change],
        offsets: &[StoredOffset],
    ) -> Result<()> {
        let mut tx = self
            .db
            .pool()
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
                    remote_config::apply_heartbeat(&mut tx, hb).await
                }
                Change::RemoteConfig(ev) => remote_config::apply_config(&mut tx, ev).await,
                Change::Alert(ev) => apply_alert(&mut tx, ev).await.map_err(Into::into),
                Change::Lifecycle(ev) => {
                    // It writes the agent's row too: what came before it goes first. (No
                    // other change writes the rows the waiting ones do.)
                    if agents.contains(&ev.agent_id) {
                        agents
                            .flush(&mut tx, self.db.engine())
                            .await
                            .map_err(|e| self.apply_error(e))?;
                    }
                    apply_lifecycle(&mut tx, ev).await
                }
                Change::Rule(ev) => fleet::apply_rule(&mut tx, ev).await,
                Change::Command(ev) => commands::apply_command(&mut tx, ev).await,
                Change::Inventory(inv) => software::apply_inventory(&mut tx, self.db.engine(), inv)
                    .await
                    .map_err(Into::into),
                Change::Ticket(ev) => tickets::apply_ticket(&mut tx, ev).await,
                Change::Series(s) => series::apply_series(&mut tx, self.db.engine(), s).await,
                Change::Event(ev) => events::apply_event(&mut tx, ev).await,
            };
            applied.map_err(|e| self.apply_error(e))?;
        }
        agents
            .flush(&mut tx, self.db.engine())
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

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn offsets(&self, projection: &str) -> Result<Vec<StoredOffset>> {
        let rows = sqlx::query(SELECT_OFFSETS)
            .bind(projection)
            .fetch_all(self.db.pool())
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

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
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

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_agent(&self, tenant_id: Option<&str>, agent_id: &str) -> Result<Option<AgentRow>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(agent_id));
        filter.push("tenant_id", "=", tenant_id);
        let sql = format!(
            "SELECT {AGENT_COLUMNS} FROM agents{}",
            filter.where_clause()
        );
        let q = filter.query(&sql);
        let row = q
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error("get agent", e))?;
        row.as_ref()
            .map(agent_from_row)
            .transpose()
            .map_err(|e| decode_error("agent", e))
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
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

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
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

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>> {
        self.query_commands(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_command(
        &self,
        tenant_id: Option<&str>,
        command_id: &str,
    ) -> Result<Option<CommandDetail>> {
        self.query_command(tenant_id, command_id).await
    }

    #[tracing::instrument(skip(self, target), fields(engine = self.db.engine().as_str()))]
    async fn command_targets(
        &self,
        tenant_id: &str,
        target: &crate::CommandTarget,
        limit: u32,
    ) -> Result<Vec<String>> {
        self.resolve_targets(tenant_id, target, limit).await
    }

    #[tracing::instrument(skip(self, group), fields(engine = self.db.engine().as_str(), group_id = %group.group_id))]
    async fn create_command_group(&self, group: &crate::CommandGroup) -> Result<()> {
        self.insert_command_group(group).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_command_group(
        &self,
        tenant_id: Option<&str>,
        group_id: &str,
    ) -> Result<Option<crate::CommandGroup>> {
        self.query_command_group(tenant_id, group_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_command_groups(
        &self,
        tenant_id: Option<&str>,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<Vec<crate::CommandGroup>> {
        self.query_command_groups(tenant_id, limit, after).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn command_group_counts(&self, group_id: &str) -> Result<crate::CommandGroupCounts> {
        self.count_group_members(group_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn command_group_members(
        &self,
        query: &crate::CommandGroupMembersQuery,
    ) -> Result<Vec<CommandRow>> {
        self.query_group_members(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn command_output(&self, query: &CommandOutputQuery) -> Result<Vec<CommandOutputChunk>> {
        self.query_command_output(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn agent_software(&self, query: &SoftwareQuery) -> Result<Option<AgentSoftware>> {
        self.query_software(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_tickets(&self, query: &TicketQuery) -> Result<Vec<TicketRow>> {
        self.query_tickets(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_events(&self, query: &crate::EventQuery) -> Result<Vec<crate::EventRow>> {
        self.query_events(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn expire_events(&self, before: i64) -> Result<u64> {
        self.delete_events_before(before).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_rules(&self, tenant_id: Option<&str>) -> Result<Vec<fleet_schemas::RuleEvent>> {
        self.query_rules(tenant_id, None).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn get_rule(&self, rule_id: &str) -> Result<Option<fleet_schemas::RuleEvent>> {
        Ok(self.query_rules(None, Some(rule_id)).await?.pop())
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_remote_configs(&self, tenant_id: &str) -> Result<Vec<RemoteConfigEvent>> {
        self.query_remote_configs(tenant_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn applied_config(&self, agent_id: &str) -> Result<Option<crate::AppliedConfig>> {
        self.query_applied_config(agent_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_sample_series(&self, query: &SampleSeriesQuery) -> Result<Vec<SampleSeries>> {
        self.query_sample_series(query).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn overview(&self, tenant_id: Option<&str>) -> Result<FleetOverview> {
        self.query_overview(tenant_id).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn agent_services(
        &self,
        tenant_id: Option<&str>,
        agent_id: &str,
    ) -> Result<Vec<ServiceRow>> {
        self.query_services(tenant_id, agent_id).await
    }

    #[tracing::instrument(skip(self, entry), fields(engine = self.db.engine().as_str(), action = %entry.action))]
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()> {
        self.insert_audit(entry).await
    }

    #[tracing::instrument(skip(self), fields(engine = self.db.engine().as_str()))]
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>> {
        self.query_audit(query).await
    }

    async fn create_channel(&self, channel: &crate::NotificationChannel) -> Result<()> {
        self.insert_channel(channel).await
    }

    async fn list_channels(
        &self,
        tenant_id: Option<&str>,
    ) -> Result<Vec<crate::NotificationChannel>> {
        self.channels(tenant_id).await
    }

    async fn get_channel(
        &self,
        tenant_id: Option<&str>,
        channel_id: &str,
    ) -> Result<Option<crate::NotificationChannel>> {
        self.channel(tenant_id, channel_id).await
    }

    async fn delete_channel(
        &self,
        tenant_id: Option<&str>,
        channel_id: &str,
    ) -> Result<Option<crate::NotificationChannel>> {
        self.remove_channel(tenant_id, channel_id).await
    }

    async fn create_route(&self, route: &crate::NotificationRoute) -> Result<()> {
        self.insert_route(route).await
    }

    async fn list_routes(&self, tenant_id: Option<&str>) -> Result<Vec<crate::NotificationRoute>> {
        self.routes(tenant_id).await
    }

    async fn delete_route(
        &self,
        tenant_id: Option<&str>,
        route_id: &str,
    ) -> Result<Option<crate::NotificationRoute>> {
        self.remove_route(tenant_id, route_id).await
    }

    async fn create_silence(&self, silence: &crate::Silence) -> Result<()> {
        self.insert_silence(silence).await
    }

    async fn list_silences(
        &self,
        tenant_id: Option<&str>,
        at: Option<i64>,
    ) -> Result<Vec<crate::Silence>> {
        self.silences(tenant_id, at).await
    }

    async fn delete_silence(
        &self,
        tenant_id: Option<&str>,
        silence_id: &str,
    ) -> Result<Option<crate::Silence>> {
        self.remove_silence(tenant_id, silence_id).await
    }

    #[tracing::instrument(skip_all, fields(engine = self.db.engine().as_str(), deliveries = deliveries.len()))]
    async fn enqueue_deliveries(&self, deliveries: &[crate::NewDelivery]) -> Result<u64> {
        self.enqueue(deliveries).await
    }

    async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<crate::Delivery>> {
        self.claim(now, lease_until, limit).await
    }

    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &crate::DeliveryAttempt,
        next: &crate::AttemptNext,
    ) -> Result<()> {
        self.attempt(delivery_id, attempt, next).await
    }

    async fn list_deliveries(&self, query: &crate::DeliveryQuery) -> Result<Vec<crate::Delivery>> {
        self.deliveries(query).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row last written before migration 12 holds its report as JSON only: it reads as
    /// before (agent and services), and its next report moves it to the Avro column.
    #[tokio::test]
    async fn rows_written_as_json_read_as_before() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("json.db");
        let store = SqlReadModel::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        let mut report = fleet_schemas::fixtures::metric_report("t1", "a1", 1_000);
        report.custom.insert("m2".into(), 2.0);
        let json = serde_json::to_string(&report).expect("json");
        let apply = |r: &MetricReport| {
            let changes = vec![crate::Change::Report(Box::new(r.clone()))];
            let store = store.clone();
            async move {
                store
                    .apply("readmodel", &changes, &[])
                    .await
                    .expect("apply")
            }
        };
        apply(&report).await;
        let avro_row = store.get_agent(None, "a1").await.expect("read");
        sqlx::query("UPDATE agents SET latest_report = $1, latest_report_avro = NULL")
            .bind(json.as_str())
            .execute(store.db.pool())
            .await
            .expect("back to the old form");
        let json_row = store.get_agent(None, "a1").await.expect("read");
        assert_eq!(json_row, avro_row);
        let kept = json_row.and_then(|r| r.latest_report).expect("a report");
        assert_eq!(kept, serde_json::to_value(&report).expect("value"));
        let services = store.agent_services(None, "a1").await.expect("services");
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].observed_at, 1_000);

        let mut next = report.clone();
        next.occurred_at = 2_000;
        apply(&next).await;
        let (json_col, avro_col): (Option<String>, Option<Vec<u8>>) =
            sqlx::query("SELECT latest_report, latest_report_avro FROM agents")
                .fetch_one(store.db.pool())
                .await
                .and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                .expect("columns");
        assert_eq!(json_col, None, "the JSON form is cleared");
        let avro = avro_col.expect("the Avro form is written");
        assert_eq!(
            MetricReport::codec().decode_with(None, &avro).ok(),
            Some(next)
        );
    }

    #[test]
    fn migrations_list_matches_the_folder() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        MIGRATIONS.check_folder(&dir).expect("every file listed");
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
