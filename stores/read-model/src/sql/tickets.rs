//! Tickets (`fleet.tickets.v1`).
//!
//! Order tolerance: the status only moves forward (open < acknowledged < resolved, like
//! alerts). The shown fields (priority, severity, title, description, location) come from
//! the newest event; of events at the same time, the one with the further status
//! (`content_rank`). `created_at` is the earliest event, `updated_at` the newest.

use fleet_schemas::{TicketEvent, TicketSeverity};
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{ApplyError, Filter, SqlReadModel, Tx};
use crate::{Result, TicketQuery, TicketRow, TicketStatus};

/// Whether the incoming event is newer than the one whose fields are shown.
macro_rules! newer {
    ($col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.updated_at > tickets.updated_at OR (excluded.updated_at = \
             tickets.updated_at AND excluded.content_rank > tickets.content_rank) THEN excluded.",
            $col,
            " ELSE tickets.",
            $col,
            " END"
        )
    };
}

const UPSERT_TICKET: &str = concat!(
    "INSERT INTO tickets (ticket_id, alert_id, tenant_id, agent_id, status, status_rank,
    content_rank, priority, severity, title, description, location_id, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $12)
ON CONFLICT (ticket_id) DO UPDATE SET
    status = CASE WHEN excluded.status_rank > tickets.status_rank
                  THEN excluded.status ELSE tickets.status END,
    status_rank = CASE WHEN excluded.status_rank > tickets.status_rank
                       THEN excluded.status_rank ELSE tickets.status_rank END, ",
    newer!("priority"),
    ", ",
    newer!("severity"),
    ", ",
    newer!("title"),
    ", ",
    newer!("description"),
    ", ",
    newer!("location_id"),
    ", ",
    newer!("content_rank"),
    ",
    created_at = CASE WHEN excluded.created_at < tickets.created_at
                      THEN excluded.created_at ELSE tickets.created_at END,
    updated_at = CASE WHEN excluded.updated_at > tickets.updated_at
                      THEN excluded.updated_at ELSE tickets.updated_at END"
);

const TICKET_COLUMNS: &str = "ticket_id, alert_id, tenant_id, agent_id, status, priority, \
severity, title, description, location_id, created_at, updated_at";

fn severity(s: TicketSeverity) -> &'static str {
    match s {
        TicketSeverity::Info => "info",
        TicketSeverity::Warning => "warning",
        TicketSeverity::Critical => "critical",
    }
}

fn rank(s: TicketStatus) -> i64 {
    match s {
        TicketStatus::Open => 1,
        TicketStatus::Acknowledged => 2,
        TicketStatus::Resolved => 3,
    }
}

pub(super) async fn apply_ticket(tx: &mut Tx<'_>, ev: &TicketEvent) -> Result<(), ApplyError> {
    let status = TicketStatus::parse(&ev.status).ok_or_else(|| {
        ApplyError::Invalid(format!(
            "ticket {} has status {:?}: expected open, acknowledged or resolved",
            ev.ticket_id, ev.status
        ))
    })?;
    sqlx::query(UPSERT_TICKET)
        .bind(ev.ticket_id.as_str())
        .bind(ev.alert_id.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(ev.agent_id.as_str())
        .bind(status.as_str())
        .bind(rank(status))
        .bind(ev.priority.as_str())
        .bind(severity(ev.severity))
        .bind(ev.title.as_str())
        .bind(ev.description.as_str())
        .bind(ev.location_id.as_deref())
        .bind(ev.occurred_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn ticket_from_row(row: &AnyRow) -> Result<TicketRow, BoxDynError> {
    let status: String = row.try_get("status")?;
    let status = TicketStatus::parse(&status)
        .ok_or_else(|| format!("unknown ticket status {status:?} in the read model"))?;
    Ok(TicketRow {
        ticket_id: row.try_get("ticket_id")?,
        alert_id: row.try_get("alert_id")?,
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        status,
        priority: row.try_get("priority")?,
        severity: row.try_get("severity")?,
        title: row.try_get("title")?,
        description: row.try_get("description")?,
        location_id: row.try_get("location_id")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

impl SqlReadModel {
    pub(super) async fn query_tickets(&self, query: &TicketQuery) -> Result<Vec<TicketRow>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        filter.push("status", "=", query.status.map(TicketStatus::as_str));
        self.list_page(
            "tickets",
            &format!("SELECT {TICKET_COLUMNS} FROM tickets"),
            "created_at DESC, ticket_id DESC",
            &filter,
            query.limit,
            ticket_from_row,
        )
        .await
    }
}
