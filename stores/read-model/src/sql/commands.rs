//! Remote commands (`fleet.commands.v1`): one row per command and its audit trail.
//!
//! Order tolerance. Each event has a step rank: REQUESTED 10, APPROVED 20, REJECTED and
//! CANCELLED 25, DISPATCHED 30, PROGRESS 40, TIMED_OUT 50, COMPLETED 60 (tens since
//! migration 17, which made room for the two undelivered ends). The status (and the result
//! columns that come with it: finished_at, exit code, output, message) is set by the event
//! with the highest rank, the earliest of equal rank; so a COMPLETED read before its
//! DISPATCHED, a PROGRESS read after the result, or a replay, never move the status back.
//! An agent's result outranks the timeout processor's TIMED_OUT: a result that comes late
//! is still what happened. A DISPATCHED outranks a CANCELLED or REJECTED for the same
//! reason: a gateway that handed the command on before it read the cancel did deliver it
//! (the gateway and the timeout processor then leave it to finish as well).
//!
//! `group_id` (command_event v2) is a request field: REQUESTED sets it.
//!
//! The first REQUESTED applied is the authority on the request (tenant, agent, type,
//! arguments, approval, timeout, who and when). Every later REQUESTED of the command id is
//! ignored, row and audit trail alike (the upsert's `WHERE` leaves the row as it is): a
//! reused `Idempotency-Key` with another body must not change what the command shows, since
//! the gateway delivers the first one too. REQUESTED events of one command share the
//! agent's partition, so "first applied" is log order, the same on every replay. Another
//! step read before REQUESTED creates the row from its own fields, which may be empty (a
//! gateway that did not know the command); REQUESTED overwrites them when it comes. The
//! earliest approval, dispatch and start win;
//! `first_seen_at` (the history's order) is the earliest event, `updated_at` the latest.
//!
//! The audit trail has one row per event but PROGRESS, keyed by event id (a replay
//! inserts nothing).
//!
//! PROGRESS chunks go to `command_output`, keyed by (command id, the agent's sequence): a
//! resent or replayed chunk inserts nothing. Bounded per command as a result's output is:
//! a stream keeps chunks while its stored bytes stay within
//! [`MAX_COMMAND_OUTPUT_BYTES`], a command at most [`MAX_STORED_CHUNKS`] chunks, and a
//! chunk longer than the gateway accepts ([`MAX_PROGRESS_CHUNK_BYTES`]) is not kept.
//! What is past a bound is dropped (logged); the result still carries the agent's own
//! bounded capture. Which chunks are kept depends only on the order they are applied in,
//! which is the log's (a command's events share the agent's partition), so a replay keeps
//! the same ones.

use std::collections::BTreeMap;

use fleet_schemas::api::{MAX_COMMAND_OUTPUT_BYTES, MAX_PROGRESS_CHUNK_BYTES};
use fleet_schemas::{CommandEvent, CommandEventKind};
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{decode_error, ApplyError, Filter, SqlReadModel, Tx};
use crate::{
    CommandAuditRow, CommandDetail, CommandOutputChunk, CommandOutputQuery, CommandQuery,
    CommandRow, CommandStatus, Result, StoreError, MAX_STORED_CHUNKS,
};

/// Whether the incoming step sets the status: further along, or as far and earlier.
macro_rules! wins {
    () => {
        "(excluded.status_rank > commands.status_rank OR (excluded.status_rank = \
         commands.status_rank AND excluded.status_at < commands.status_at))"
    };
}

/// `column` takes the incoming step's value when it sets the status.
macro_rules! if_wins {
    ($col:literal) => {
        concat!(
            $col,
            " = CASE WHEN ",
            wins!(),
            " THEN excluded.",
            $col,
            " ELSE commands.",
            $col,
            " END"
        )
    };
}

/// `column` keeps the earliest non-null time.
macro_rules! earliest {
    ($col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.",
            $col,
            " IS NOT NULL AND (commands.",
            $col,
            " IS NULL OR excluded.",
            $col,
            " < commands.",
            $col,
            ") THEN excluded.",
            $col,
            " ELSE commands.",
            $col,
            " END"
        )
    };
}

/// `column` (who) follows `time` (when): the actor of the earliest step of its kind.
macro_rules! actor_of_earliest {
    ($col:literal, $time:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.",
            $time,
            " IS NOT NULL AND (commands.",
            $time,
            " IS NULL OR excluded.",
            $time,
            " < commands.",
            $time,
            ") THEN excluded.",
            $col,
            " ELSE commands.",
            $col,
            " END"
        )
    };
}

/// A request field: REQUESTED sets it; another step only fills it while no REQUESTED was
/// seen and the type is still unknown.
macro_rules! request_field {
    ($col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.requested_at IS NOT NULL OR (commands.requested_at IS NULL \
             AND commands.command_type = '') THEN excluded.",
            $col,
            " ELSE commands.",
            $col,
            " END"
        )
    };
}

/// Tenant and agent: REQUESTED sets them; another step only fills an empty one.
macro_rules! identity_field {
    ($col:literal) => {
        concat!(
            $col,
            " = CASE WHEN excluded.requested_at IS NOT NULL OR commands.",
            $col,
            " = '' THEN excluded.",
            $col,
            " ELSE commands.",
            $col,
            " END"
        )
    };
}

const UPSERT_COMMAND: &str = concat!(
    "INSERT INTO commands (command_id, tenant_id, agent_id, command_type, args,
    requires_approval, timeout_secs, status, status_rank, status_at, requested_by,
    requested_at, approved_by, approved_at, dispatched_at, started_at, finished_at, exit_code,
    stdout, stderr, output_truncated, message, first_seen_at, updated_at, group_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
    $20, $21, $22, $23, $23, $24)
ON CONFLICT (command_id) DO UPDATE SET ",
    identity_field!("tenant_id"),
    ", ",
    identity_field!("agent_id"),
    ", ",
    request_field!("command_type"),
    ", ",
    request_field!("args"),
    ", ",
    request_field!("requires_approval"),
    ", ",
    request_field!("timeout_secs"),
    ", ",
    request_field!("group_id"),
    ", ",
    if_wins!("status"),
    ", ",
    if_wins!("status_rank"),
    ", ",
    if_wins!("status_at"),
    ", ",
    if_wins!("finished_at"),
    ", ",
    if_wins!("exit_code"),
    ", ",
    if_wins!("stdout"),
    ", ",
    if_wins!("stderr"),
    ", ",
    if_wins!("output_truncated"),
    ", ",
    if_wins!("message"),
    ", ",
    actor_of_earliest!("requested_by", "requested_at"),
    ", ",
    earliest!("requested_at"),
    ", ",
    actor_of_earliest!("approved_by", "approved_at"),
    ", ",
    earliest!("approved_at"),
    ", ",
    earliest!("dispatched_at"),
    ", ",
    earliest!("started_at"),
    ",
    first_seen_at = CASE WHEN excluded.first_seen_at < commands.first_seen_at
                         THEN excluded.first_seen_at ELSE commands.first_seen_at END,
    updated_at = CASE WHEN excluded.updated_at > commands.updated_at
                      THEN excluded.updated_at ELSE commands.updated_at END
WHERE excluded.requested_at IS NULL OR commands.requested_at IS NULL"
);

const INSERT_AUDIT: &str = "\
INSERT INTO command_audit (event_id, command_id, kind, actor, detail, at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (event_id) DO NOTHING";

pub(super) const COMMAND_COLUMNS: &str = "command_id, tenant_id, agent_id, command_type, args, \
requires_approval, timeout_secs, status, requested_by, requested_at, approved_by, approved_at, \
dispatched_at, started_at, finished_at, exit_code, stdout, stderr, output_truncated, message, \
updated_at, group_id";

const SELECT_AUDIT: &str = "\
SELECT event_id, kind, actor, detail, at FROM command_audit
WHERE command_id = $1 ORDER BY at, event_id";

/// What one event sets: the status it stands for and its rank.
fn step(ev: &CommandEvent) -> Result<(CommandStatus, i64), ApplyError> {
    Ok(match ev.kind {
        CommandEventKind::Requested if ev.requires_approval => {
            (CommandStatus::AwaitingApproval, 10)
        }
        CommandEventKind::Requested => (CommandStatus::Requested, 10),
        CommandEventKind::Approved => (CommandStatus::Approved, 20),
        CommandEventKind::Rejected => (CommandStatus::Rejected, 25),
        CommandEventKind::Cancelled => (CommandStatus::Cancelled, 25),
        CommandEventKind::Dispatched => (CommandStatus::Dispatched, 30),
        CommandEventKind::Progress => (CommandStatus::Running, 40),
        CommandEventKind::TimedOut => (CommandStatus::TimedOut, 50),
        CommandEventKind::Completed => {
            let status = match ev.status.as_deref() {
                // A result without a status did not succeed.
                None => CommandStatus::Failed,
                Some(s) => CommandStatus::parse(s)
                    .filter(|s| s.is_final())
                    .ok_or_else(|| {
                        ApplyError::Invalid(format!(
                            "command {} COMPLETED with status {s:?}: expected succeeded, \
                             failed, timed_out or refused",
                            ev.command_id
                        ))
                    })?,
            };
            (status, 60)
        }
    })
}

pub(super) async fn apply_command(tx: &mut Tx<'_>, ev: &CommandEvent) -> Result<(), ApplyError> {
    let (status, rank) = step(ev)?;
    let at = ev.occurred_at;
    let is = |k: CommandEventKind| ev.kind == k;
    let ended = is(CommandEventKind::Completed) || is(CommandEventKind::TimedOut);
    // Sorted keys, so the same arguments are the same text.
    let args: BTreeMap<&str, &str> = ev
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let args = serde_json::to_string(&args).map_err(ApplyError::Encode)?;
    let started_at = match ev.kind {
        CommandEventKind::Progress => Some(at),
        CommandEventKind::Completed => ev.started_at,
        _ => None,
    };
    let when = |k: CommandEventKind| is(k).then_some(at);
    let who = |k: CommandEventKind| if is(k) { ev.actor.as_deref() } else { None };
    let upserted = sqlx::query(UPSERT_COMMAND)
        .bind(ev.command_id.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(ev.agent_id.as_str())
        .bind(ev.command_type.as_str())
        .bind(args)
        .bind(i64::from(ev.requires_approval))
        .bind(ev.timeout_secs)
        .bind(status.as_str())
        .bind(rank)
        .bind(at)
        .bind(who(CommandEventKind::Requested))
        .bind(when(CommandEventKind::Requested))
        .bind(who(CommandEventKind::Approved))
        .bind(when(CommandEventKind::Approved))
        .bind(when(CommandEventKind::Dispatched))
        .bind(started_at)
        .bind(ended.then(|| ev.finished_at.unwrap_or(at)))
        .bind(ev.exit_code.filter(|_| ended).map(i64::from))
        .bind(ev.stdout.as_deref().filter(|_| ended))
        .bind(ev.stderr.as_deref().filter(|_| ended))
        .bind(i64::from(ended && ev.output_truncated))
        .bind(ev.message.as_deref().filter(|_| ended))
        .bind(at)
        .bind(ev.group_id.as_deref())
        .execute(&mut **tx)
        .await?;
    if is(CommandEventKind::Requested) && upserted.rows_affected() == 0 {
        tracing::debug!(command_id = %ev.command_id, event_id = %ev.event_id, "A later REQUESTED of a command ignored.");
        return Ok(());
    }
    if is(CommandEventKind::Progress) {
        return store_chunk(tx, ev).await;
    }
    let detail = match ev.kind {
        CommandEventKind::Completed => Some(status.as_str()),
        CommandEventKind::TimedOut | CommandEventKind::Rejected | CommandEventKind::Cancelled => {
            ev.message.as_deref()
        }
        _ => None,
    };
    sqlx::query(INSERT_AUDIT)
        .bind(ev.event_id.as_str())
        .bind(ev.command_id.as_str())
        .bind(ev.kind.as_str())
        .bind(ev.actor.as_deref())
        .bind(detail)
        .bind(at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

const OUTPUT_SO_FAR: &str = "\
SELECT COUNT(*) AS chunks,
       CAST(COALESCE(SUM(CASE WHEN stream = $2 THEN bytes ELSE 0 END), 0) AS BIGINT) AS stream_bytes
FROM command_output WHERE command_id = $1";

const INSERT_CHUNK: &str = "\
INSERT INTO command_output (command_id, sequence, stream, chunk, bytes, at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (command_id, sequence) DO NOTHING";

/// Keeps a PROGRESS chunk in `command_output`, within the bounds (module docs).
async fn store_chunk(tx: &mut Tx<'_>, ev: &CommandEvent) -> Result<(), ApplyError> {
    let (Some(stream), Some(chunk)) = (ev.stream.as_deref(), ev.chunk.as_deref()) else {
        return Ok(());
    };
    let bytes = chunk.len();
    let dropped = |why: &str| {
        tracing::debug!(command_id = %ev.command_id, sequence = ev.sequence, stream, bytes, why, "A progress chunk not kept.");
        Ok(())
    };
    if bytes > MAX_PROGRESS_CHUNK_BYTES {
        return dropped("longer than a chunk may be");
    }
    let so_far = sqlx::query(OUTPUT_SO_FAR)
        .bind(ev.command_id.as_str())
        .bind(stream)
        .fetch_one(&mut **tx)
        .await?;
    let chunks: i64 = so_far.try_get("chunks")?;
    let stream_bytes: i64 = so_far.try_get("stream_bytes")?;
    let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
    let limit = i64::try_from(MAX_COMMAND_OUTPUT_BYTES).unwrap_or(i64::MAX);
    if chunks >= MAX_STORED_CHUNKS {
        return dropped("the command has the most chunks kept");
    }
    if stream_bytes.saturating_add(bytes) > limit {
        return dropped("the stream's output is at its bound");
    }
    sqlx::query(INSERT_CHUNK)
        .bind(ev.command_id.as_str())
        .bind(ev.sequence)
        .bind(stream)
        .bind(chunk)
        .bind(bytes)
        .bind(ev.occurred_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn chunk_from_row(row: &AnyRow) -> Result<CommandOutputChunk, BoxDynError> {
    Ok(CommandOutputChunk {
        sequence: row.try_get("sequence")?,
        stream: row.try_get("stream")?,
        chunk: row.try_get("chunk")?,
        at: row.try_get("at")?,
    })
}

pub(super) fn command_from_row(row: &AnyRow) -> Result<CommandRow, BoxDynError> {
    let status: String = row.try_get("status")?;
    let status = CommandStatus::parse(&status)
        .ok_or_else(|| format!("unknown command status {status:?} in the read model"))?;
    let args: String = row.try_get("args")?;
    Ok(CommandRow {
        command_id: row.try_get("command_id")?,
        tenant_id: row.try_get("tenant_id")?,
        agent_id: row.try_get("agent_id")?,
        command_type: row.try_get("command_type")?,
        args: serde_json::from_str(&args)?,
        requires_approval: row.try_get::<i64, _>("requires_approval")? != 0,
        timeout_secs: row.try_get("timeout_secs")?,
        status,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        approved_by: row.try_get("approved_by")?,
        approved_at: row.try_get("approved_at")?,
        dispatched_at: row.try_get("dispatched_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        exit_code: row.try_get("exit_code")?,
        stdout: row.try_get("stdout")?,
        stderr: row.try_get("stderr")?,
        output_truncated: row.try_get::<i64, _>("output_truncated")? != 0,
        message: row.try_get("message")?,
        updated_at: row.try_get("updated_at")?,
        group_id: row.try_get("group_id")?,
    })
}

fn audit_from_row(row: &AnyRow) -> Result<CommandAuditRow, BoxDynError> {
    Ok(CommandAuditRow {
        event_id: row.try_get("event_id")?,
        kind: row.try_get("kind")?,
        actor: row.try_get("actor")?,
        detail: row.try_get("detail")?,
        at: row.try_get("at")?,
    })
}

impl SqlReadModel {
    pub(super) async fn query_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(query.agent_id.as_str()));
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        if let Some(after) = query.after.as_deref() {
            let known =
                sqlx::query("SELECT 1 FROM commands WHERE command_id = $1 AND agent_id = $2")
                    .bind(after)
                    .bind(query.agent_id.as_str())
                    .fetch_optional(self.db.pool())
                    .await
                    .map_err(|e| self.db_error("list commands", e))?;
            if known.is_none() {
                return Err(StoreError::InvalidQuery(format!(
                    "after: agent {} has no command {after}",
                    query.agent_id
                )));
            }
            // Older than the cursor in (first_seen_at, command_id) order.
            filter.push_with(after, |p| {
                format!(
                    "(first_seen_at < (SELECT c.first_seen_at FROM commands c WHERE c.command_id = {p}) \
                     OR (first_seen_at = (SELECT c.first_seen_at FROM commands c WHERE c.command_id = {p}) \
                     AND command_id < {p}))"
                )
            });
        }
        self.list_page(
            "commands",
            &format!("SELECT {COMMAND_COLUMNS} FROM commands"),
            "first_seen_at DESC, command_id DESC",
            &filter,
            query.limit,
            command_from_row,
        )
        .await
    }

    pub(super) async fn query_command(
        &self,
        tenant_id: Option<&str>,
        command_id: &str,
    ) -> Result<Option<CommandDetail>> {
        let mut filter = Filter::default();
        filter.push("command_id", "=", Some(command_id));
        filter.push("tenant_id", "=", tenant_id);
        let sql = format!(
            "SELECT {COMMAND_COLUMNS} FROM commands{}",
            filter.where_clause()
        );
        let q = filter.query(&sql);
        let row = q
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error("get command", e))?;
        let Some(row) = row else { return Ok(None) };
        let command = command_from_row(&row).map_err(|e| decode_error("command", e))?;
        let audit = sqlx::query(SELECT_AUDIT)
            .bind(command_id)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("get command audit", e))?
            .iter()
            .map(audit_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error("command audit", e))?;
        Ok(Some(CommandDetail { command, audit }))
    }

    pub(super) async fn query_command_output(
        &self,
        query: &CommandOutputQuery,
    ) -> Result<Vec<CommandOutputChunk>> {
        let tenant = if query.tenant_id.is_some() {
            " AND EXISTS (SELECT 1 FROM commands c WHERE c.command_id = o.command_id \
             AND c.tenant_id = $4)"
        } else {
            ""
        };
        let sql = format!(
            "SELECT o.sequence, o.stream, o.chunk, o.at FROM command_output o \
             WHERE o.command_id = $1 AND o.sequence > $2{tenant} ORDER BY o.sequence LIMIT $3"
        );
        let mut q = sqlx::query(&sql)
            .bind(query.command_id.as_str())
            .bind(query.after)
            .bind(super::clamp_limit(query.limit));
        if let Some(t) = query.tenant_id.as_deref() {
            q = q.bind(t);
        }
        q.fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("get command output", e))?
            .iter()
            .map(chunk_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error("command output", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upsert_names_every_column_once() {
        for col in [
            "tenant_id",
            "status",
            "finished_at",
            "approved_by",
            "started_at",
            "updated_at",
            "group_id",
        ] {
            let set = format!("{col} = CASE");
            assert_eq!(
                UPSERT_COMMAND.matches(&set).count(),
                1,
                "{col} is set once: {UPSERT_COMMAND}"
            );
        }
    }
}
