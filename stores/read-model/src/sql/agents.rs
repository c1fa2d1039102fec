//! Reports and heartbeats, applied set-based: the batch's changes of each agent are
//! coalesced into one row (least and greatest time heard, the newest report), then written
//! with multi-row statements: one upsert of `agents` per chunk of agents, then the services
//! of the agents whose row now holds the batch's report (deleted and inserted for all of them
//! at once). Which agents those are is found in one of two ways, the cheap one of each
//! engine: on PostgreSQL the upsert returns the rows it wrote (`RETURNING`), and the
//! services statements name those agents; on SQLite the upsert returns nothing (sqlx streams
//! returned rows one by one from its SQLite worker thread, which cost more than the upsert)
//! and the services statements join the batch's reports with `agents` on the agent and the
//! report time. (That join on PostgreSQL costs more in planning than the returned rows do.)
//!
//! The result is the state that applying the changes one by one gives (the conformance
//! suite checks it): `first_seen_at` and `last_seen_at` are a least and a greatest, the
//! latest metrics come from the report with the greatest `occurred_at` and, between reports
//! of equal times, from the later one in the batch (one by one, it is applied last and
//! overwrites), and the services are those of that report. A new agent's `tenant_id` is
//! that of its first change in the batch, the one whose insert would have created the row.
//! The caller flushes before a change that writes the same agent row in another way (an
//! `AgentLifecycle` event), so changes of one agent keep their order around it.

use std::collections::HashMap;

use fleet_schemas::{Heartbeat, MetricReport};
use sqlx::Row;

use super::{chunks, values_placeholders, values_rows, ApplyError, Engine, Tx};

/// Agents per upsert (11 parameters each).
const AGENT_CHUNK: usize = 256;
/// Services per insert (6 parameters each).
const SERVICE_CHUNK: usize = 512;
/// Agents per delete of services (1 parameter each, 2 on SQLite).
const DELETE_CHUNK: usize = 256;

/// Creates the agents or widens their seen window and, where the row's report is at least
/// as new as the stored one (equal: the same report replayed, or a later record of the same
/// time), replaces the latest metrics. Rows without a report (heartbeats only) carry NULL
/// metrics and change only the seen window. Afterwards an agent's `last_metrics_at` equals
/// its row's report time exactly when that report was written (an older one leaves a
/// greater time).
const UPSERT_AGENTS_HEAD: &str = "\
INSERT INTO agents (agent_id, tenant_id, first_seen_at, last_seen_at, last_metrics_at,
    cpu_percent, memory_percent, disk_percent_max, load_1, uptime_seconds, latest_report)
VALUES ";

/// The new report is written: it is at least as new as the stored one.
macro_rules! newer_metrics {
    () => {
        "(excluded.last_metrics_at IS NOT NULL AND (agents.last_metrics_at IS NULL
     OR agents.last_metrics_at <= excluded.last_metrics_at))"
    };
}

/// `column = the new value if the report is written, else the stored one`.
macro_rules! metrics_column {
    ($column:literal) => {
        concat!(
            $column,
            " = CASE WHEN ",
            newer_metrics!(),
            " THEN excluded.",
            $column,
            " ELSE agents.",
            $column,
            " END"
        )
    };
}

const UPSERT_AGENTS_TAIL: &str = concat!(
    "
ON CONFLICT (agent_id) DO UPDATE SET
    first_seen_at = CASE WHEN excluded.first_seen_at < agents.first_seen_at
                         THEN excluded.first_seen_at ELSE agents.first_seen_at END,
    last_seen_at  = CASE WHEN excluded.last_seen_at > agents.last_seen_at
                         THEN excluded.last_seen_at ELSE agents.last_seen_at END,
    ",
    metrics_column!("last_metrics_at"),
    ",
    ",
    metrics_column!("cpu_percent"),
    ",
    ",
    metrics_column!("memory_percent"),
    ",
    ",
    metrics_column!("disk_percent_max"),
    ",
    ",
    metrics_column!("load_1"),
    ",
    ",
    metrics_column!("uptime_seconds"),
    ",
    ",
    metrics_column!("latest_report"),
    "
WHERE excluded.first_seen_at < agents.first_seen_at
   OR excluded.last_seen_at > agents.last_seen_at
   OR ",
    newer_metrics!()
);

/// The rows of the agents upsert come in three shapes, each its own statement, so that no
/// NULL `DOUBLE PRECISION` is ever bound: sqlx 0.8's `Any` driver sends such a NULL to
/// PostgreSQL as a `real` (its `Null(Double)` maps to `f32`), and a statement prepared with
/// it refuses a later `double precision` value (and the other way round) on that connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Heard from (heartbeats), no report: NULL metrics.
    Heard,
    /// A report with disks.
    Report,
    /// A report without disks: NULL `disk_percent_max`.
    ReportWithoutDisks,
}

impl Shape {
    const ALL: [Shape; 3] = [Shape::Heard, Shape::Report, Shape::ReportWithoutDisks];

    fn of(row: &AgentUpdate<'_>) -> Shape {
        match row.report {
            None => Shape::Heard,
            Some(r) if r.disks.is_empty() => Shape::ReportWithoutDisks,
            Some(_) => Shape::Report,
        }
    }

    /// One row of the `VALUES`, in the upsert's column order.
    fn row(self) -> &'static str {
        match self {
            Shape::Heard => "(?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            Shape::Report => "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            Shape::ReportWithoutDisks => "(?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)",
        }
    }
}

/// PostgreSQL: the upsert returns the rows it wrote with the metrics time they now hold
/// (equal to the row's report time: the report was written).
const UPSERT_AGENTS_RETURNING: &str = "\nRETURNING agent_id, last_metrics_at";

/// The services statements, around their `VALUES` rows, per engine (see the module
/// documentation).
struct ServiceStatements {
    /// Deletes the services of agents: PostgreSQL: rows (agent), the agents written;
    /// SQLite: rows (agent, report time), of which the agents whose row holds that report.
    /// (`column1`, `column2`: the names SQLite gives the columns of a `VALUES` list.)
    delete: [&'static str; 2],
    /// Whether the delete's rows carry the report time (SQLite).
    delete_by_time: bool,
    /// Inserts services: rows (agent, tenant, name, status, pid, report time); on SQLite only
    /// those of the agents whose row holds that report.
    insert: [&'static str; 2],
}

const POSTGRES_SERVICES: ServiceStatements = ServiceStatements {
    delete: ["DELETE FROM agent_services WHERE agent_id IN ", ""],
    delete_by_time: false,
    insert: [
        "INSERT INTO agent_services (agent_id, tenant_id, name, status, pid, observed_at) VALUES ",
        "",
    ],
};

const SQLITE_SERVICES: ServiceStatements = ServiceStatements {
    delete: [
        "DELETE FROM agent_services WHERE agent_id IN (SELECT v.column1 FROM (VALUES ",
        ") AS v JOIN agents ON agents.agent_id = v.column1 AND agents.last_metrics_at = v.column2)",
    ],
    delete_by_time: true,
    insert: [
        "INSERT INTO agent_services (agent_id, tenant_id, name, status, pid, observed_at)
SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6 FROM (VALUES ",
        ") AS v JOIN agents ON agents.agent_id = v.column1 AND agents.last_metrics_at = v.column6",
    ],
};

impl ServiceStatements {
    fn of(engine: Engine) -> &'static ServiceStatements {
        match engine {
            Engine::Postgres => &POSTGRES_SERVICES,
            Engine::Sqlite => &SQLITE_SERVICES,
        }
    }
}

/// Parameters per service row.
const SERVICE_COLUMNS: usize = 6;

/// One agent's reports and heartbeats of a batch, coalesced.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AgentUpdate<'a> {
    pub(super) agent_id: &'a str,
    /// Of the agent's first change in the batch.
    pub(super) tenant_id: &'a str,
    /// Least time heard.
    pub(super) first_seen_at: i64,
    /// Greatest time heard.
    pub(super) last_seen_at: i64,
    /// The newest report (equal times: the later in the batch).
    pub(super) report: Option<&'a MetricReport>,
}

/// The reports and heartbeats of a batch not yet written, by agent in order of first
/// appearance.
#[derive(Debug, Default)]
pub(super) struct AgentUpdates<'a> {
    rows: Vec<AgentUpdate<'a>>,
    /// Agent id to its index in `rows`.
    index: HashMap<&'a str, usize>,
}

impl<'a> AgentUpdates<'a> {
    /// Whether a change of `agent_id` is waiting.
    pub(super) fn contains(&self, agent_id: &str) -> bool {
        self.index.contains_key(agent_id)
    }

    /// The coalesced rows, in order of first appearance.
    #[cfg(test)]
    pub(super) fn rows(&self) -> &[AgentUpdate<'a>] {
        &self.rows
    }

    /// Notes that `agent_id` was heard at `at`.
    fn heard(&mut self, tenant_id: &'a str, agent_id: &'a str, at: i64) -> &mut AgentUpdate<'a> {
        let i = *self.index.entry(agent_id).or_insert_with(|| {
            self.rows.push(AgentUpdate {
                agent_id,
                tenant_id,
                first_seen_at: at,
                last_seen_at: at,
                report: None,
            });
            self.rows.len() - 1
        });
        let row = &mut self.rows[i];
        row.first_seen_at = row.first_seen_at.min(at);
        row.last_seen_at = row.last_seen_at.max(at);
        row
    }

    /// Adds a report.
    pub(super) fn report(&mut self, report: &'a MetricReport) {
        let row = self.heard(&report.tenant_id, &report.agent_id, report.occurred_at);
        if row
            .report
            .is_none_or(|kept| report.occurred_at >= kept.occurred_at)
        {
            row.report = Some(report);
        }
    }

    /// Adds a heartbeat.
    pub(super) fn heartbeat(&mut self, hb: &'a Heartbeat) {
        self.heard(&hb.tenant_id, &hb.agent_id, hb.occurred_at);
    }

    /// Writes the waiting rows and forgets them.
    #[tracing::instrument(name = "apply_agents", skip_all, fields(agents = self.rows.len()))]
    pub(super) async fn flush(
        &mut self,
        tx: &mut Tx<'_>,
        engine: Engine,
    ) -> Result<(), ApplyError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.rows);
        let index = std::mem::take(&mut self.index);
        let returning = match engine {
            Engine::Postgres => UPSERT_AGENTS_RETURNING,
            Engine::Sqlite => "",
        };
        let by_shape: Vec<(Shape, Vec<&AgentUpdate<'_>>)> = Shape::ALL
            .into_iter()
            .map(|shape| {
                let of_shape = rows.iter().filter(|row| Shape::of(row) == shape);
                (shape, of_shape.collect())
            })
            .collect();
        let statements: Vec<(String, &[&AgentUpdate<'_>])> = by_shape
            .iter()
            .flat_map(|(shape, of_shape)| {
                chunks(of_shape, AGENT_CHUNK).map(|chunk| {
                    let values = values_rows(engine, chunk.len(), shape.row());
                    (
                        format!("{UPSERT_AGENTS_HEAD}{values}{UPSERT_AGENTS_TAIL}{returning}"),
                        chunk,
                    )
                })
            })
            .collect();
        // Each statement's arguments (the JSON of the reports, most of the work on this
        // side) are built while the one before runs on SQLite's worker thread or the
        // PostgreSQL server: `join!` polls the execution first, which sends it.
        let mut queries = statements
            .iter()
            .map(|(sql, chunk)| upsert_query(sql, chunk));
        let mut next = queries.next().transpose()?;
        let mut written: Vec<&MetricReport> = Vec::new();
        while let Some(q) = next {
            let (done, following) =
                tokio::join!(q.fetch_all(&mut **tx), async { queries.next().transpose() });
            for stored in done? {
                let agent_id: String = stored.try_get("agent_id")?;
                let at: Option<i64> = stored.try_get("last_metrics_at")?;
                let report = index.get(agent_id.as_str()).and_then(|&i| rows[i].report);
                if let Some(r) = report.filter(|r| Some(r.occurred_at) == at) {
                    written.push(r);
                }
            }
            next = following?;
        }
        if engine == Engine::Sqlite {
            // Nothing returned: the services statements pick the written ones.
            written = rows.iter().filter_map(|row| row.report).collect();
        }
        replace_services(tx, engine, &written).await
    }
}

/// The agents upsert `sql` of `chunk`'s rows with their arguments (each row of its shape).
fn upsert_query<'q>(
    sql: &'q str,
    chunk: &[&AgentUpdate<'q>],
) -> Result<sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>, ApplyError> {
    let mut q = sqlx::query(sql);
    for row in chunk {
        q = q
            .bind(row.agent_id)
            .bind(row.tenant_id)
            .bind(row.first_seen_at)
            .bind(row.last_seen_at);
        if let Some(r) = row.report {
            q = q
                .bind(r.occurred_at)
                .bind(r.cpu_percent)
                .bind(r.memory_percent);
            if let Some(disk) = disk_max(r) {
                q = q.bind(disk);
            }
            q = q
                .bind(r.load_1)
                .bind(r.uptime_seconds)
                .bind(serde_json::to_string(r).map_err(ApplyError::Encode)?);
        }
    }
    Ok(q)
}

/// The greatest disk use of a report, if it has disks.
fn disk_max(report: &MetricReport) -> Option<f64> {
    report
        .disks
        .iter()
        .map(|d| d.percent)
        .fold(None, |max: Option<f64>, p| {
            Some(max.map_or(p, |m| m.max(p)))
        })
}

/// Replaces the services of the reports' agents with the reports' services, for the
/// reports their agents' rows now hold: on PostgreSQL called with those (the upsert
/// returned them), on SQLite with each agent's newest report of the batch, the statements
/// leaving out those older than the stored one. A name listed twice in a report keeps its
/// last entry, as inserting them in turn with an upsert would.
async fn replace_services(
    tx: &mut Tx<'_>,
    engine: Engine,
    reports: &[&MetricReport],
) -> Result<(), ApplyError> {
    let statements = ServiceStatements::of(engine);
    for chunk in chunks(reports, DELETE_CHUNK) {
        let [head, tail] = statements.delete;
        let values = if statements.delete_by_time {
            values_placeholders(engine, chunk.len(), 2)
        } else {
            values_placeholders(engine, 1, chunk.len())
        };
        let sql = format!("{head}{values}{tail}");
        let mut q = sqlx::query(&sql);
        for r in chunk {
            q = q.bind(r.agent_id.as_str());
            if statements.delete_by_time {
                q = q.bind(r.occurred_at);
            }
        }
        q.execute(&mut **tx).await?;
    }
    let mut services = Vec::new();
    for r in reports {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for s in &r.services {
            match last.get(s.name.as_str()) {
                Some(&i) => services[i] = (*r, s),
                None => {
                    last.insert(s.name.as_str(), services.len());
                    services.push((*r, s));
                }
            }
        }
    }
    for chunk in chunks(&services, SERVICE_CHUNK) {
        let [head, tail] = statements.insert;
        let values = values_placeholders(engine, chunk.len(), SERVICE_COLUMNS);
        let sql = format!("{head}{values}{tail}");
        let mut q = sqlx::query(&sql);
        for (r, s) in chunk {
            q = q
                .bind(r.agent_id.as_str())
                .bind(r.tenant_id.as_str())
                .bind(s.name.as_str())
                .bind(s.status.as_str())
                .bind(s.pid.map(i64::from))
                .bind(r.occurred_at);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fleet_schemas::fixtures;

    use super::*;

    #[test]
    fn coalesces_each_agent_to_its_newest_report_and_seen_window() {
        let r1 = fixtures::metric_report("t1", "a", 20);
        let r2 = fixtures::metric_report("t1", "a", 10);
        let mut r3 = fixtures::metric_report("t1", "a", 20);
        r3.cpu_percent = 99.0;
        let hb_a = fixtures::heartbeat("t1", "a", 30, 0);
        let hb_b = fixtures::heartbeat("t2", "b", 5, 0);
        let rb = fixtures::metric_report("t9", "b", 1);
        let mut u = AgentUpdates::default();
        u.heartbeat(&hb_b);
        u.report(&r1);
        u.report(&r2);
        u.report(&r3);
        u.heartbeat(&hb_a);
        u.report(&rb);
        assert!(u.contains("a") && u.contains("b") && !u.contains("c"));
        let rows = u.rows();
        assert_eq!(rows.len(), 2, "one row per agent");
        assert_eq!(
            rows[0],
            AgentUpdate {
                agent_id: "b",
                tenant_id: "t2",
                first_seen_at: 1,
                last_seen_at: 5,
                report: Some(&rb),
            },
            "first appearance order; the tenant of the first change"
        );
        assert_eq!(rows[1].first_seen_at, 10);
        assert_eq!(rows[1].last_seen_at, 30, "heartbeats widen the window");
        let kept = rows[1].report.expect("a report");
        assert_eq!(kept.occurred_at, 20);
        assert_eq!(kept.cpu_percent, 99.0, "equal times: the later record wins");
    }

    #[test]
    fn heartbeats_alone_carry_no_report() {
        let hb = fixtures::heartbeat("t1", "a", 7, 0);
        let mut u = AgentUpdates::default();
        u.heartbeat(&hb);
        assert_eq!(u.rows()[0].report, None);
        assert_eq!(
            (u.rows()[0].first_seen_at, u.rows()[0].last_seen_at),
            (7, 7)
        );
    }
}
