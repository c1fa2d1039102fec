//! Installed software (`fleet.inventory.v1`): the newest inventory of each agent.
//!
//! An inventory replaces the agent's stored one wholesale, and only if it is newer (greater
//! collection time; equal times: greater digest), so a replay or an older inventory read
//! late changes nothing. The conditional upsert of `software_inventory` decides: when it
//! touched a row, the agent's packages are deleted and the new list inserted, in the same
//! transaction.
//!
//! A package list may name a (name, architecture) twice (RPM keeps several kernels); the
//! greatest version string is kept, so the list stored does not depend on the order.

use std::collections::BTreeMap;

use fleet_schemas::SoftwareInventory;
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{chunks, decode_error, values_placeholders, Engine, Filter, SqlReadModel, Tx};
use crate::{AgentSoftware, Result, SoftwareQuery, SoftwareRow};

/// Packages per INSERT (5 parameters each).
const CHUNK: usize = 256;

const UPSERT_INVENTORY: &str = "\
INSERT INTO software_inventory (agent_id, tenant_id, source, digest, package_count, collected_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (agent_id) DO UPDATE SET
    tenant_id = excluded.tenant_id, source = excluded.source, digest = excluded.digest,
    package_count = excluded.package_count, collected_at = excluded.collected_at
WHERE excluded.collected_at > software_inventory.collected_at
   OR (excluded.collected_at = software_inventory.collected_at
       AND excluded.digest > software_inventory.digest)";

const DELETE_PACKAGES: &str = "DELETE FROM software WHERE agent_id = $1";

pub(super) async fn apply_inventory(
    tx: &mut Tx<'_>,
    engine: Engine,
    inv: &SoftwareInventory,
) -> sqlx::Result<()> {
    let mut packages: BTreeMap<(&str, &str), &str> = BTreeMap::new();
    for p in &inv.packages {
        let key = (p.name.as_str(), p.arch.as_deref().unwrap_or(""));
        let version = packages.entry(key).or_insert(p.version.as_str());
        if p.version.as_str() > *version {
            *version = p.version.as_str();
        }
    }
    let count = i64::try_from(packages.len()).unwrap_or(i64::MAX);
    let newer = sqlx::query(UPSERT_INVENTORY)
        .bind(inv.agent_id.as_str())
        .bind(inv.tenant_id.as_str())
        .bind(inv.source.as_str())
        .bind(inv.digest.as_str())
        .bind(count)
        .bind(inv.occurred_at)
        .execute(&mut **tx)
        .await?
        .rows_affected()
        > 0;
    if !newer {
        return Ok(());
    }
    sqlx::query(DELETE_PACKAGES)
        .bind(inv.agent_id.as_str())
        .execute(&mut **tx)
        .await?;
    let packages: Vec<_> = packages.into_iter().collect();
    for chunk in chunks(&packages, CHUNK) {
        let sql = format!(
            "INSERT INTO software (tenant_id, agent_id, name, version, arch) VALUES {}",
            values_placeholders(engine, chunk.len(), 5)
        );
        let mut q = sqlx::query(&sql);
        for ((name, arch), version) in chunk {
            q = q
                .bind(inv.tenant_id.as_str())
                .bind(inv.agent_id.as_str())
                .bind(*name)
                .bind(*version)
                .bind(*arch);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// `%text%` for `LIKE ... ESCAPE '\'`, lower-cased.
fn contains_pattern(text: &str) -> String {
    format!("%{}%", super::like_escape(&text.to_lowercase()))
}

fn package_from_row(row: &AnyRow) -> Result<SoftwareRow, BoxDynError> {
    let arch: String = row.try_get("arch")?;
    Ok(SoftwareRow {
        name: row.try_get("name")?,
        version: row.try_get("version")?,
        arch: (!arch.is_empty()).then_some(arch),
    })
}

impl SqlReadModel {
    pub(super) async fn query_software(
        &self,
        query: &SoftwareQuery,
    ) -> Result<Option<AgentSoftware>> {
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(query.agent_id.as_str()));
        filter.push("tenant_id", "=", query.tenant_id.as_deref());
        let sql = format!(
            "SELECT agent_id, tenant_id, source, digest, package_count, collected_at \
             FROM software_inventory{}",
            filter.where_clause()
        );
        let q = filter.query(&sql);
        let Some(row) = q
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| self.db_error("get software inventory", e))?
        else {
            return Ok(None);
        };
        let decode = |row: &AnyRow| -> Result<AgentSoftware, BoxDynError> {
            Ok(AgentSoftware {
                tenant_id: row.try_get("tenant_id")?,
                agent_id: row.try_get("agent_id")?,
                source: row.try_get("source")?,
                digest: row.try_get("digest")?,
                collected_at: row.try_get("collected_at")?,
                package_count: row.try_get("package_count")?,
                packages: Vec::new(),
            })
        };
        let mut software = decode(&row).map_err(|e| decode_error("software inventory", e))?;

        let pattern = query.name.as_deref().map(contains_pattern);
        let mut filter = Filter::default();
        filter.push("agent_id", "=", Some(query.agent_id.as_str()));
        if let Some(pattern) = pattern.as_deref() {
            filter.push_with(pattern, |p| format!("LOWER(name) LIKE {p} ESCAPE '\\'"));
        }
        let sql = format!(
            "SELECT name, version, arch FROM software{} ORDER BY name, arch",
            filter.where_clause()
        );
        let q = filter.query(&sql);
        software.packages = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list software", e))?
            .iter()
            .map(package_from_row)
            .collect::<Result<_, _>>()
            .map_err(|e| decode_error("software", e))?;
        Ok(Some(software))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("NGINX"), "%nginx%");
        assert_eq!(contains_pattern("lib_50%\\"), "%lib\\_50\\%\\\\%");
    }
}
