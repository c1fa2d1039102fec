//! Reports and heartbeats, applied set-based: the batch's changes of each agent are
//! coalesced into one row (least and greatest time heard, the newest report), then written
//! with one multi-row upsert of `agents` per chunk of agents. The services of an agent are
//! read from the report its row holds (`latest_report`), so a report is one row write.
//!
//! The result is the state that applying the changes one by one gives (the conformance
//! suite checks it): `first_seen_at` and `last_seen_at` are a least and a greatest, the
//! latest metrics come from the report with the greatest `occurred_at` and, between reports
//! of equal times, from the later one in the batch (one by one, it is applied last and
//! overwrites). A new agent's `tenant_id` is
//! that of its first change in the batch, the one whose insert would have created the row.
//! The caller flushes before a change that writes the same agent row in another way (an
//! `AgentLifecycle` event), so changes of one agent keep their order around it.

use std::collections::HashMap;

use fleet_schemas::codec::Record as _;
use fleet_schemas::{Heartbeat, MetricReport};

use super::{chunks, values_rows, ApplyError, Engine, Tx};

/// Agents per upsert (at most 11 parameters each).
const AGENT_CHUNK: usize = 256;
/// Creates the agents or widens their seen window and, where the row's report is at least
/// as new as the stored one (equal: the same report replayed, or a later record of the same
/// time), replaces the latest metrics. Rows without a report (heartbeats only) carry NULL
/// metrics and change only the seen window. Afterwards an agent's `last_metrics_at` equals
/// its row's report time exactly when that report was written (an older one leaves a
/// greater time).
const UPSERT_AGENTS_HEAD: &str = "\
INSERT INTO agents (agent_id, tenant_id, first_seen_at, last_seen_at, last_metrics_at,
    cpu_percent, memory_percent, disk_percent_max, load_1, uptime_seconds, latest_report,
    latest_report_avro)
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
    ",
    ",
    metrics_column!("latest_report_avro"),
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
            Shape::Heard => "(?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
            Shape::Report => "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, ?)",
            Shape::ReportWithoutDisks => "(?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, NULL, ?)",
        }
    }
}

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
        self.index.clear();
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
                        format!("{UPSERT_AGENTS_HEAD}{values}{UPSERT_AGENTS_TAIL}"),
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
        while let Some(q) = next {
            let (done, following) =
                tokio::join!(q.execute(&mut **tx), async { queries.next().transpose() });
            done?;
            next = following?;
        }
        Ok(())
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
            q = q.bind(r.load_1).bind(r.uptime_seconds).bind(
                MetricReport::codec()
                    .encode_single_object(r)
                    .map_err(ApplyError::Codec)?,
            );
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
