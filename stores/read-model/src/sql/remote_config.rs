//! Remote configuration in the read model: the desired records per scope
//! (`remote_configs`, the newest version of a key wins) and what each agent last
//! acknowledged in a heartbeat (`agent_config_applied`, the newest heartbeat wins; only
//! heartbeats that carry a version or an interval write it, so older agents cost nothing).

use fleet_schemas::{Heartbeat, RemoteConfigEvent};
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{decode_error, ApplyError, Filter, SqlReadModel, Tx};
use crate::{AppliedConfig, Result};

const UPSERT_CONFIG: &str = "\
INSERT INTO remote_configs (config_key, tenant_id, version, event)
VALUES ($1, $2, $3, $4)
ON CONFLICT (config_key) DO UPDATE SET tenant_id = excluded.tenant_id,
    version = excluded.version, event = excluded.event
WHERE excluded.version >= remote_configs.version";

const UPSERT_APPLIED: &str = "\
INSERT INTO agent_config_applied (agent_id, tenant_id, config_version, heartbeat_interval_secs, reported_at)
VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (agent_id) DO UPDATE SET tenant_id = excluded.tenant_id,
    config_version = excluded.config_version,
    heartbeat_interval_secs = excluded.heartbeat_interval_secs,
    reported_at = excluded.reported_at
WHERE excluded.reported_at >= agent_config_applied.reported_at";

/// A desired-configuration record.
pub(super) async fn apply_config(
    tx: &mut Tx<'_>,
    ev: &RemoteConfigEvent,
) -> Result<(), ApplyError> {
    let json = serde_json::to_string(ev).map_err(ApplyError::Encode)?;
    sqlx::query(UPSERT_CONFIG)
        .bind(ev.config_key.as_str())
        .bind(ev.tenant_id.as_str())
        .bind(ev.version)
        .bind(json)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What a heartbeat says the agent runs (nothing for a heartbeat that says nothing).
pub(super) async fn apply_heartbeat(tx: &mut Tx<'_>, hb: &Heartbeat) -> Result<(), ApplyError> {
    if hb.config_version.is_none() && hb.heartbeat_interval_secs.is_none() {
        return Ok(());
    }
    sqlx::query(UPSERT_APPLIED)
        .bind(hb.agent_id.as_str())
        .bind(hb.tenant_id.as_str())
        .bind(hb.config_version)
        .bind(hb.heartbeat_interval_secs)
        .bind(hb.occurred_at)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn config_from_row(row: &AnyRow) -> Result<RemoteConfigEvent, BoxDynError> {
    let json: String = row.try_get("event")?;
    Ok(serde_json::from_str(&json)?)
}

fn applied_from_row(row: &AnyRow) -> Result<AppliedConfig, BoxDynError> {
    Ok(AppliedConfig {
        agent_id: row.try_get("agent_id")?,
        tenant_id: row.try_get("tenant_id")?,
        config_version: row.try_get("config_version")?,
        heartbeat_interval_secs: row.try_get("heartbeat_interval_secs")?,
        reported_at: row.try_get("reported_at")?,
    })
}

impl SqlReadModel {
    pub(super) async fn query_remote_configs(
        &self,
        tenant: &str,
    ) -> Result<Vec<RemoteConfigEvent>> {
        let mut filter = Filter::default();
        filter.push("tenant_id", "=", Some(tenant));
        let sql = format!(
            "SELECT event FROM remote_configs{} ORDER BY config_key",
            filter.where_clause()
        );
        let rows = filter
            .query(&sql)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list remote configs", e))?;
        rows.iter()
            .map(config_from_row)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| decode_error("remote configs", e))
    }

    pub(super) async fn query_applied_config(
        &self,
        agent_id: &str,
    ) -> Result<Option<AppliedConfig>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(agent_id));
        let sql = format!(
            "SELECT agent_id, tenant_id, config_version, heartbeat_interval_secs, reported_at \
             FROM agent_config_applied{}",
            filter.where_clause()
        );
        let rows = filter
            .query(&sql)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("applied config", e))?;
        rows.iter()
            .map(applied_from_row)
            .next()
            .transpose()
            .map_err(|e| decode_error("applied config", e))
    }
}
