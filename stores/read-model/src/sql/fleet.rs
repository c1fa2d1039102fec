//! The fleet view: services of agents (from their newest report), fleet counters, and the
//! audit log of changes made through the API.

use std::collections::BTreeMap;

use fleet_schemas::{MetricReport, RuleEvent, RuleEventKind};
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{agent_status_sql, decode_error, stored_report, ApplyError, Filter, SqlReadModel, Tx};
use crate::{AgentCounts, AlertCounts, AuditEntry, AuditQuery, FleetOverview, Result, ServiceRow};

/// The newest event of a rule wins (a replayed one rewrites the same values).
const UPSERT_RULE: &str = "\
INSERT INTO alert_rules (rule_id, tenant_id, deleted, updated_at, event)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (rule_id) DO UPDATE SET tenant_id = excluded.tenant_id,
    deleted = excluded.deleted, updated_at = excluded.updated_at, event = excluded.event
WHERE excluded.updated_at >= alert_rules.updated_at";

/// A rule event: defined (with its definition) or deleted.
pub(super) async fn apply_rule(tx: &mut Tx<'_>, ev: &RuleEvent) -> Result<(), ApplyError> {
    let deleted = !(ev.kind == RuleEventKind::Defined && ev.rule.is_some());
    let json = serde_json::to_string(ev).map_err(ApplyError::Encode)?;
    sqlx::query(UPSERT_RULE)
        .bind(ev.rule_id.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(i64::from(deleted))
        .bind(ev.occurred_at)
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn rule_from_row(row: &AnyRow) -> Result<RuleEvent, BoxDynError> {
    let json: String = row.try_get("event")?;
    Ok(serde_json::from_str(&json)?)
}

const INSERT_AUDIT: &str = "\
INSERT INTO audit_log (audit_id, tenant_id, at, actor, action, target, details)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (audit_id) DO NOTHING";

fn count(row: &AnyRow) -> Result<(String, u64), BoxDynError> {
    let key: Option<String> = row.try_get(0)?;
    let n: i64 = row.try_get(1)?;
    Ok((key.unwrap_or_default(), u64::try_from(n)?))
}

/// A report's services by name, the last entry of a name listed twice, observed at the
/// report's time.
fn services_of(report: &MetricReport) -> Vec<ServiceRow> {
    let by_name: BTreeMap<&str, &fleet_schemas::ServiceStatus> = report
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect();
    by_name
        .into_values()
        .take(super::MAX_LIMIT as usize)
        .map(|s| ServiceRow {
            name: s.name.clone(),
            status: s.status.clone(),
            pid: s.pid.map(i64::from),
            observed_at: report.occurred_at,
        })
        .collect()
}

fn audit_from_row(row: &AnyRow) -> Result<AuditEntry, BoxDynError> {
    Ok(AuditEntry {
        audit_id: row.try_get("audit_id")?,
        tenant_id: row.try_get("tenant_id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        action: row.try_get("action")?,
        target: row.try_get("target")?,
        details: row
            .try_get::<Option<String>, _>("details")?
            .map(|s| serde_json::from_str(&s))
            .transpose()?,
    })
}

impl SqlReadModel {
    /// Rows of `(key, count)` from a grouped count.
    async fn counts(
        &self,
        what: &str,
        sql: &str,
        tenant: Option<&str>,
    ) -> Result<Vec<(String, u64)>> {
        let mut q = sqlx::query(sql);
        if let Some(t) = tenant {
            q = q.bind(t);
        }
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error(what, e))?;
        rows.iter()
            .map(count)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| decode_error(what, e))
    }

    pub(super) async fn query_overview(&self, tenant: Option<&str>) -> Result<FleetOverview> {
        let scope = |extra: &str| match (tenant.is_some(), extra.is_empty()) {
            (true, true) => " WHERE tenant_id = $1".to_owned(),
            (true, false) => format!(" WHERE tenant_id = $1 AND {extra}"),
            (false, true) => String::new(),
            (false, false) => format!(" WHERE {extra}"),
        };
        let mut out = FleetOverview::default();
        let sql = format!(
            "SELECT {} AS s, COUNT(*) FROM agents{} GROUP BY {}",
            agent_status_sql!(),
            scope(""),
            agent_status_sql!()
        );
        for (status, n) in self.counts("count agents", &sql, tenant).await? {
            let AgentCounts {
                total,
                online,
                offline,
                deactivated,
            } = &mut out.agents;
            *total += n;
            match status.as_str() {
                "online" => *online += n,
                "offline" => *offline += n,
                _ => *deactivated += n,
            }
        }
        let sql = format!(
            "SELECT severity, COUNT(*) FROM alerts{} GROUP BY severity",
            scope("status <> 'resolved'")
        );
        for (severity, n) in self.counts("count alerts", &sql, tenant).await? {
            let AlertCounts {
                total,
                critical,
                warning,
                info,
            } = &mut out.open_alerts;
            *total += n;
            match severity.as_str() {
                "critical" => *critical += n,
                "warning" => *warning += n,
                _ => *info += n,
            }
        }
        let sql = format!(
            "SELECT 'pending', COUNT(*) FROM commands{}",
            scope(
                "status IN ('requested', 'awaiting_approval', 'approved', 'dispatched', 'running')"
            )
        );
        out.pending_commands = self
            .counts("count commands", &sql, tenant)
            .await?
            .first()
            .map_or(0, |(_, n)| *n);
        Ok(out)
    }

    /// The services of the agent's latest report (the row's `latest_report`), by name; a
    /// name listed twice keeps its last entry. No report (or no such agent): none.
    pub(super) async fn query_services(
        &self,
        tenant: Option<&str>,
        agent_id: &str,
    ) -> Result<Vec<ServiceRow>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(agent_id));
        filter.push("tenant_id", "=", tenant);
        let sql = format!(
            "SELECT latest_report, latest_report_avro FROM agents{}",
            filter.where_clause()
        );
        let row = filter
            .query(&sql)
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error("list services", e))?;
        let report = match row {
            Some(row) => stored_report(&row).map_err(|e| decode_error("services", e))?,
            None => None,
        };
        Ok(report.map(|r| services_of(&r)).unwrap_or_default())
    }

    /// The rules in force, of one tenant (`None`: every one), or the one `rule_id` names.
    pub(super) async fn query_rules(
        &self,
        tenant: Option<&str>,
        rule_id: Option<&str>,
    ) -> Result<Vec<RuleEvent>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", tenant);
        filter.push("rule_id", "=", rule_id);
        filter.clauses.push("deleted = 0".into());
        let sql = format!(
            "SELECT event FROM alert_rules{} ORDER BY rule_id",
            filter.where_clause()
        );
        let q = filter.query(&sql);
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list rules", e))?;
        rows.iter()
            .map(rule_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| decode_error("rules", e))
    }

    pub(super) async fn insert_audit(&self, e: &AuditEntry) -> Result<()> {
        let details = e
            .details
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(|err| crate::StoreError::Internal(format!("audit details: {err}")))?;
        sqlx::query(INSERT_AUDIT)
            .bind(e.audit_id.as_str())
            .bind(e.tenant_id.as_deref())
            .bind(e.at)
            .bind(e.actor.as_str())
            .bind(e.action.as_str())
            .bind(e.target.as_str())
            .bind(details)
            .execute(self.db.pool())
            .await
            .map_err(|err| self.db_error("record audit", err))?;
        Ok(())
    }

    pub(super) async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditEntry>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", q.tenant_id.as_deref());
        filter.push("actor", "=", q.actor.as_deref());
        self.list_page(
            "audit entries",
            "SELECT audit_id, tenant_id, at, actor, action, target, details FROM audit_log",
            "at DESC, audit_id DESC",
            &filter,
            q.limit,
            audit_from_row,
        )
        .await
    }
}
