//! Command groups (fleet-wide commands): the group as requested (`command_groups`, written
//! by the API, not projected), its target resolved against the agents, and its members,
//! which are the projected `commands` rows carrying its `group_id`.
//!
//! Everything is bounded by [`MAX_GROUP_AGENTS`]: a target resolves to at most that many
//! agents (the caller asks for one more to tell "too many"), a member page holds at most
//! that many rows, and the counts are one `GROUP BY status` over the group's rows
//! (`commands_group_idx`).

use std::collections::BTreeMap;

use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::commands::{command_from_row, COMMAND_COLUMNS};
use super::{decode_error, like_escape, SqlReadModel};
use crate::{
    CommandGroup, CommandGroupCounts, CommandGroupMembersQuery, CommandRow, CommandTarget, Result,
    StoreError, MAX_GROUP_AGENTS,
};

/// Agents that may be sent a command: enrolled and not deactivated.
const ACTIVE_AGENT: &str = "tenant_id = $1 AND enrollment = 'enrolled'";

const INSERT_GROUP: &str = "\
INSERT INTO command_groups (group_id, tenant_id, target, command_type, args, timeout_secs,
    requires_approval, requested_by, requested_at, agent_count)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (group_id) DO UPDATE SET
    agent_count = CASE WHEN excluded.agent_count > command_groups.agent_count
                       THEN excluded.agent_count ELSE command_groups.agent_count END";

const GROUP_COLUMNS: &str = "group_id, tenant_id, target, command_type, args, timeout_secs, \
requires_approval, requested_by, requested_at, agent_count";

const COUNT_MEMBERS: &str = "\
SELECT status, COUNT(*) AS n, MAX(approved_by) AS approved_by, MIN(approved_at) AS approved_at
FROM commands WHERE group_id = $1 GROUP BY status";

fn group_from_row(row: &AnyRow) -> Result<CommandGroup, BoxDynError> {
    let target: String = row.try_get("target")?;
    let args: String = row.try_get("args")?;
    Ok(CommandGroup {
        group_id: row.try_get("group_id")?,
        tenant_id: row.try_get("tenant_id")?,
        target: serde_json::from_str(&target)?,
        command_type: row.try_get("command_type")?,
        args: serde_json::from_str(&args)?,
        timeout_secs: row.try_get("timeout_secs")?,
        requires_approval: row.try_get::<i64, _>("requires_approval")? != 0,
        requested_by: row.try_get("requested_by")?,
        requested_at: row.try_get("requested_at")?,
        agent_count: row.try_get("agent_count")?,
    })
}

fn clamp_members(limit: Option<u32>) -> i64 {
    i64::from(limit.unwrap_or(crate::DEFAULT_LIMIT).min(MAX_GROUP_AGENTS))
}

impl SqlReadModel {
    pub(super) async fn resolve_targets(
        &self,
        tenant_id: &str,
        target: &CommandTarget,
        limit: u32,
    ) -> Result<Vec<String>> {
        let limit = i64::from(limit.min(MAX_GROUP_AGENTS.saturating_add(1)));
        let rows = match target {
            CommandTarget::Tag(tag) => {
                let sql = format!(
                    "SELECT agent_id FROM agents WHERE {ACTIVE_AGENT} AND tags LIKE $2 ESCAPE '\\' \
                     ORDER BY agent_id LIMIT $3"
                );
                sqlx::query(&sql)
                    .bind(tenant_id)
                    .bind(format!("%\"{}\"%", like_escape(tag)))
                    .bind(limit)
                    .fetch_all(self.db.pool())
                    .await
            }
            CommandTarget::Location(location) => {
                let sql = format!(
                    "SELECT agent_id FROM agents WHERE {ACTIVE_AGENT} AND location_id = $2 \
                     ORDER BY agent_id LIMIT $3"
                );
                sqlx::query(&sql)
                    .bind(tenant_id)
                    .bind(location.as_str())
                    .bind(limit)
                    .fetch_all(self.db.pool())
                    .await
            }
            CommandTarget::Agents(ids) if ids.is_empty() => return Ok(Vec::new()),
            CommandTarget::Agents(ids) => {
                let placeholders: Vec<String> =
                    (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
                let sql = format!(
                    "SELECT agent_id FROM agents WHERE {ACTIVE_AGENT} AND agent_id IN ({}) \
                     ORDER BY agent_id LIMIT $2",
                    placeholders.join(", ")
                );
                ids.iter()
                    .fold(sqlx::query(&sql).bind(tenant_id).bind(limit), |q, id| {
                        q.bind(id.as_str())
                    })
                    .fetch_all(self.db.pool())
                    .await
            }
        }
        .map_err(|e| self.db_error("resolve a command target", e))?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("agent_id"))
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error("command target", e.into()))
    }

    pub(super) async fn insert_command_group(&self, g: &CommandGroup) -> Result<()> {
        let target = serde_json::to_string(&g.target)
            .map_err(|e| StoreError::Internal(format!("command group target as JSON: {e}")))?;
        let args = serde_json::to_string(&g.args)
            .map_err(|e| StoreError::Internal(format!("command group args as JSON: {e}")))?;
        sqlx::query(INSERT_GROUP)
            .bind(g.group_id.as_str())
            .bind(g.tenant_id.as_str())
            .bind(target)
            .bind(g.command_type.as_str())
            .bind(args)
            .bind(g.timeout_secs)
            .bind(i64::from(g.requires_approval))
            .bind(g.requested_by.as_str())
            .bind(g.requested_at)
            .bind(g.agent_count)
            .execute(self.db.pool())
            .await
            .map_err(|e| self.db_error("store a command group", e))?;
        Ok(())
    }

    pub(super) async fn query_command_group(
        &self,
        tenant_id: Option<&str>,
        group_id: &str,
    ) -> Result<Option<CommandGroup>> {
        let mut filter = super::Filter::default();
        filter.push("group_id", "=", Some(group_id));
        filter.push("tenant_id", "=", tenant_id);
        let sql = format!(
            "SELECT {GROUP_COLUMNS} FROM command_groups{}",
            filter.where_clause()
        );
        let row = filter
            .query(&sql)
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error("get command group", e))?;
        row.as_ref()
            .map(group_from_row)
            .transpose()
            .map_err(|e| decode_error("command group", e))
    }

    pub(super) async fn query_command_groups(
        &self,
        tenant_id: Option<&str>,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<Vec<CommandGroup>> {
        let mut filter = super::Filter::default();
        filter.push("tenant_id", "=", tenant_id);
        if let Some(after) = after {
            let known = sqlx::query("SELECT 1 FROM command_groups WHERE group_id = $1")
                .bind(after)
                .fetch_optional(self.db.pool())
                .await
                .map_err(|e| self.db_error("list command groups", e))?;
            if known.is_none() {
                return Err(StoreError::InvalidQuery(format!(
                    "after: no command group {after}"
                )));
            }
            // Older than the cursor in (requested_at, group_id) order.
            filter.push_with(after, |p| {
                format!(
                    "(requested_at < (SELECT g.requested_at FROM command_groups g WHERE g.group_id = {p}) \
                     OR (requested_at = (SELECT g.requested_at FROM command_groups g WHERE g.group_id = {p}) \
                     AND group_id < {p}))"
                )
            });
        }
        self.list_page(
            "command groups",
            &format!("SELECT {GROUP_COLUMNS} FROM command_groups"),
            "requested_at DESC, group_id DESC",
            &filter,
            limit,
            group_from_row,
        )
        .await
    }

    pub(super) async fn count_group_members(&self, group_id: &str) -> Result<CommandGroupCounts> {
        let rows = sqlx::query(COUNT_MEMBERS)
            .bind(group_id)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("count command group members", e))?;
        let mut counts = CommandGroupCounts {
            by_status: BTreeMap::new(),
            approved_by: None,
            approved_at: None,
        };
        for row in &rows {
            let decode =
                |row: &AnyRow| -> Result<(String, i64, Option<String>, Option<i64>), BoxDynError> {
                    Ok((
                        row.try_get("status")?,
                        row.try_get("n")?,
                        row.try_get("approved_by")?,
                        row.try_get("approved_at")?,
                    ))
                };
            let (status, n, by, at) =
                decode(row).map_err(|e| decode_error("command group counts", e))?;
            counts.by_status.insert(status, n);
            if let Some(at) = at {
                if counts.approved_at.is_none_or(|t| at < t) {
                    counts.approved_at = Some(at);
                    counts.approved_by = by;
                }
            }
        }
        Ok(counts)
    }

    pub(super) async fn query_group_members(
        &self,
        query: &CommandGroupMembersQuery,
    ) -> Result<Vec<CommandRow>> {
        let mut sql = format!("SELECT {COMMAND_COLUMNS} FROM commands WHERE group_id = $1");
        let mut next = 2;
        if query.after.is_some() {
            sql.push_str(&format!(" AND command_id > ${next}"));
            next += 1;
        }
        if !query.statuses.is_empty() {
            let list: Vec<String> = query
                .statuses
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            sql.push_str(&format!(" AND status IN ({})", list.join(", ")));
        }
        sql.push_str(&format!(" ORDER BY command_id LIMIT ${next}"));
        let mut q = sqlx::query(&sql).bind(query.group_id.as_str());
        if let Some(after) = query.after.as_deref() {
            q = q.bind(after);
        }
        q.bind(clamp_members(query.limit))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list command group members", e))?
            .iter()
            .map(command_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error("command", e))
    }
}
