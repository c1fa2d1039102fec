//! The agents' events (`fleet.events.v1`, table `agent_events`): a timeline per agent and
//! per tenant. An event is written once (its id is the key; a replay changes nothing) and
//! removed by the retention sweep ([`crate::ReadModel::expire_events`]).

use fleet_schemas::AgentEvent;
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{clamp_limit, decode_error, ApplyError, Filter, SqlReadModel, Tx};
use crate::{EventQuery, EventRow, Result};

const INSERT_EVENT: &str = "\
INSERT INTO agent_events (event_id, tenant_id, agent_id, occurred_at, ingested_at, kind,
    severity, message, attributes)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (event_id) DO NOTHING";

/// Writes one event (nothing when its id is there).
pub(super) async fn apply_event(tx: &mut Tx<'_>, ev: &AgentEvent) -> Result<(), ApplyError> {
    let attributes: std::collections::BTreeMap<&str, &str> = ev
        .attributes
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let attributes = serde_json::to_string(&attributes).map_err(ApplyError::Encode)?;
    let severity = serde_json::to_value(ev.severity).map_err(ApplyError::Encode)?;
    sqlx::query(INSERT_EVENT)
        .bind(ev.event_id.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(ev.agent_id.as_str())
        .bind(ev.occurred_at)
        .bind(ev.ingested_at)
        .bind(ev.kind.as_str())
        .bind(severity.as_str().unwrap_or_default().to_owned())
        .bind(ev.message.as_str())
        .bind(attributes)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn decode(row: &AnyRow) -> std::result::Result<EventRow, BoxDynError> {
    let attributes: String = row.try_get("attributes")?;
    Ok(EventRow {
        event_id: row.try_get("event_id")?,
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        occurred_at: row.try_get("occurred_at")?,
        ingested_at: row.try_get("ingested_at")?,
        kind: row.try_get("kind")?,
        severity: row.try_get("severity")?,
        message: row.try_get("message")?,
        attributes: serde_json::from_str(&attributes)?,
    })
}

impl SqlReadModel {
    /// [`crate::ReadModel::list_events`].
    pub(super) async fn query_events(&self, query: &EventQuery) -> Result<Vec<EventRow>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        filter.push("agent_id", "=", query.agent_id.as_deref());
        filter.push("kind", "=", query.kind.as_deref());
        filter.push("severity", "=", query.severity.as_deref());
        // The times are numbers: their placeholders follow the filter's text ones.
        let mut times = Vec::new();
        for (op, at) in [(">=", query.since), ("<", query.until)] {
            if let Some(at) = at {
                times.push(at);
                let n = filter.binds.len() + times.len();
                filter.clauses.push(format!("occurred_at {op} ${n}"));
            }
        }
        let sql = format!(
            "SELECT * FROM agent_events{} ORDER BY occurred_at DESC, event_id DESC LIMIT ${}",
            filter.where_clause(),
            filter.binds.len() + times.len() + 1
        );
        let q = times
            .into_iter()
            .fold(filter.query(&sql), |q, at| q.bind(at));
        let rows = q
            .bind(clamp_limit(query.limit))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list events", e))?;
        rows.iter()
            .map(decode)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| decode_error("events", e))
    }

    /// [`crate::ReadModel::expire_events`].
    pub(super) async fn delete_events_before(&self, before: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM agent_events WHERE occurred_at < $1")
                .bind(before)
                .execute(self.db.pool())
                .await
                .map_err(|e| self.db_error("expire events", e))?
                .rows_affected(),
        )
    }
}
