//! Every row of the projected tables, read comparably on both engines: for
//! `fleetstream verify` (a rebuilt read model against the live one) and `fleetstream
//! replay` (is the target empty; empty it under `--force`).
//!
//! * Which tables: [`PROJECTED_TABLES`], the tables the read-model projection derives from
//!   topics, each with its primary key. Not compared: [`NOT_PROJECTED_TABLES`], that is
//!   `projection_offsets` (where a projection stands, not what it shows) and the audit
//!   log (written by the API, not derived from topics); the registry's tables
//!   ([`REGISTRY_TABLES`]: tenants, locations, registration tokens, agent credentials,
//!   users and their API keys, written by the API and the gateway only: the only copy of
//!   their data), which share the database; and the migrations' bookkeeping. A
//!   table found in the database that is in neither list (a later migration) is included,
//!   keyed by all of its columns, so that a new projected table is not silently skipped.
//! * Values: each column as JSON: integers as integers, `DOUBLE PRECISION` as floats, text
//!   as strings, NULL as null; JSON kept in TEXT columns stays the text it was written as
//!   (both engines store the same serialization); binary as hex, except the latest report's
//!   Avro (`agents.latest_report_avro`), shown as its JSON so that a difference names its
//!   fields. Rows are ordered by key here, in Rust,
//!   not by SQL `ORDER BY`, whose text collation differs between PostgreSQL and SQLite.
//! * No column of a projected table depends on when it was applied: every time stored
//!   comes from the records (`occurred_at`), never from the clock, so nothing is excluded
//!   from the comparison.

use std::collections::{BTreeMap, BTreeSet};

use fleet_schemas::codec::Record as _;
use fleet_schemas::MetricReport;
use sqlx::any::AnyRow;
use sqlx::{Column, Row};

use fleet_registry::REGISTRY_TABLES;

use super::{Engine, SqlReadModel};
use crate::{Result, StoreError};

/// The tables the read-model projection derives from topics, with their primary keys.
pub const PROJECTED_TABLES: &[(&str, &[&str])] = &[
    ("agents", &["agent_id"]),
    ("alerts", &["alert_id"]),
    ("alert_rules", &["rule_id"]),
    ("commands", &["command_id"]),
    ("command_audit", &["event_id"]),
    ("command_output", &["command_id", "sequence"]),
    ("software_inventory", &["agent_id"]),
    ("software", &["agent_id", "name", "arch"]),
    ("tickets", &["ticket_id"]),
    ("sample_series", &["tenant_id", "series_id"]),
    ("agent_events", &["event_id"]),
    ("remote_configs", &["config_key"]),
    ("agent_config_applied", &["agent_id"]),
];

/// The read model's tables that no topic feeds: the projections' offsets and the audit
/// log. A rebuild does not recreate them and a comparison skips them, as it skips the
/// registry's tables ([`REGISTRY_TABLES`], in the same database by default).
pub const NOT_PROJECTED_TABLES: &[&str] = &[
    "projection_offsets",
    "audit_log",
    "notification_channels",
    "notification_routes",
    "notification_silences",
    "notification_deliveries",
    "notification_attempts",
    "command_groups",
];

/// One row: column name to value.
pub type SnapshotRow = BTreeMap<String, serde_json::Value>;

/// A table to snapshot: its name and the columns that identify a row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTable {
    /// Table name.
    pub name: String,
    /// Primary-key columns; empty for a table this build does not know (the whole row is
    /// the key).
    pub key_columns: Vec<String>,
}

impl SnapshotTable {
    /// Whether this build knows the table (else it is keyed by all of its columns).
    pub fn is_known(&self) -> bool {
        !self.key_columns.is_empty()
    }
}

/// Every row of one table, by key.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TableSnapshot {
    /// Table name.
    pub table: String,
    /// Columns of the key, in key order (empty: the whole row is the key).
    pub key_columns: Vec<String>,
    /// Rows by key. The key is the JSON array of the key columns' values (of every column,
    /// by name, for a table without a known key), so it orders and compares alike on both
    /// engines.
    pub rows: BTreeMap<String, SnapshotRow>,
}

impl TableSnapshot {
    /// The key of a row as `column=value` pairs, for messages.
    pub fn describe_key(&self, key: &str) -> String {
        let values: Vec<serde_json::Value> = serde_json::from_str(key).unwrap_or_default();
        if self.key_columns.is_empty() || values.len() != self.key_columns.len() {
            return key.to_owned();
        }
        self.key_columns
            .iter()
            .zip(values)
            .map(|(c, v)| match v {
                serde_json::Value::String(s) => format!("{c}={s}"),
                v => format!("{c}={v}"),
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Every projected table of a read model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReadModelSnapshot {
    /// By table name.
    pub tables: BTreeMap<String, TableSnapshot>,
}

impl SqlReadModel {
    /// The tables [`snapshot`](Self::snapshot) reads: [`PROJECTED_TABLES`], then any table
    /// of the database in none of that list, [`NOT_PROJECTED_TABLES`] and
    /// [`REGISTRY_TABLES`] (keyed by all of its columns).
    pub async fn snapshot_tables(&self) -> Result<Vec<SnapshotTable>> {
        let sql = match self.db.engine() {
            Engine::Postgres => {
                "SELECT CAST(table_name AS TEXT) AS name FROM information_schema.tables \
                 WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            }
            Engine::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table'",
        };
        let rows = sqlx::query(sql)
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list tables", e))?;
        let mut present = BTreeSet::new();
        for row in &rows {
            let name: String = row
                .try_get("name")
                .map_err(|e| StoreError::Internal(format!("list tables: {e}")))?;
            present.insert(name);
        }
        let mut out: Vec<SnapshotTable> = PROJECTED_TABLES
            .iter()
            .map(|(name, key)| SnapshotTable {
                name: (*name).to_owned(),
                key_columns: key.iter().map(|c| (*c).to_owned()).collect(),
            })
            .collect();
        for name in present {
            let known = PROJECTED_TABLES.iter().any(|(t, _)| *t == name)
                || NOT_PROJECTED_TABLES.contains(&name.as_str())
                || REGISTRY_TABLES.contains(&name.as_str());
            let bookkeeping = name.starts_with("_sqlx") || name.starts_with("sqlite_");
            if !known && !bookkeeping {
                out.push(SnapshotTable {
                    name,
                    key_columns: Vec::new(),
                });
            }
        }
        Ok(out)
    }

    /// Every row of one table (see the module docs for how values are read).
    pub async fn snapshot_table(&self, table: &SnapshotTable) -> Result<TableSnapshot> {
        check_identifier(&table.name)?;
        let what = format!("snapshot of {}", table.name);
        let rows = sqlx::query(&format!("SELECT * FROM {}", table.name))
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error(&what, e))?;
        let mut snapshot = TableSnapshot {
            table: table.name.clone(),
            key_columns: table.key_columns.clone(),
            rows: BTreeMap::new(),
        };
        for row in &rows {
            let values =
                row_values(row).map_err(|e| StoreError::Internal(format!("{what}: {e}")))?;
            let key: Vec<&serde_json::Value> = if table.key_columns.is_empty() {
                values.values().collect()
            } else {
                table
                    .key_columns
                    .iter()
                    .map(|c| {
                        values.get(c).ok_or_else(|| {
                            StoreError::Internal(format!("{what}: no key column {c}"))
                        })
                    })
                    .collect::<Result<_>>()?
            };
            let key = serde_json::to_string(&key)
                .map_err(|e| StoreError::Internal(format!("{what}: {e}")))?;
            snapshot.rows.insert(key, values);
        }
        Ok(snapshot)
    }

    /// Every row of every table [`snapshot_tables`](Self::snapshot_tables) names. Holds the
    /// whole read model in memory; [`snapshot_table`](Self::snapshot_table) reads one table
    /// at a time.
    pub async fn snapshot(&self) -> Result<ReadModelSnapshot> {
        let mut out = ReadModelSnapshot::default();
        for table in self.snapshot_tables().await? {
            let t = self.snapshot_table(&table).await?;
            out.tables.insert(table.name, t);
        }
        Ok(out)
    }

    /// Rows in the projected tables plus the offsets stored for `projection`: 0 for a
    /// read model no projection wrote to (the registry and the audit log are not counted).
    pub async fn projected_row_count(&self, projection: &str) -> Result<u64> {
        let mut total = 0u64;
        for (table, _) in PROJECTED_TABLES {
            let n: i64 = sqlx::query(&format!("SELECT COUNT(*) AS n FROM {table}"))
                .fetch_one(self.db.pool())
                .await
                .map_err(|e| self.db_error(&format!("count {table}"), e))?
                .try_get("n")
                .map_err(|e| StoreError::Internal(format!("count {table}: {e}")))?;
            total += u64::try_from(n).unwrap_or(0);
        }
        let n: i64 =
            sqlx::query("SELECT COUNT(*) AS n FROM projection_offsets WHERE projection = $1")
                .bind(projection)
                .fetch_one(self.db.pool())
                .await
                .map_err(|e| self.db_error("count offsets", e))?
                .try_get("n")
                .map_err(|e| StoreError::Internal(format!("count offsets: {e}")))?;
        Ok(total + u64::try_from(n).unwrap_or(0))
    }

    /// Empties the projected tables and the offsets of `projection`, in one transaction,
    /// so that a replay into this database is a rebuild rather than a merge. The registry
    /// and the audit log are left as they are. Returns the rows removed.
    pub async fn clear_projected(&self, projection: &str) -> Result<u64> {
        let mut tx = self
            .db
            .pool()
            .begin()
            .await
            .map_err(|e| self.db_error("begin", e))?;
        let mut removed = 0u64;
        for (table, _) in PROJECTED_TABLES {
            removed += sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await
                .map_err(|e| self.db_error(&format!("empty {table}"), e))?
                .rows_affected();
        }
        removed += sqlx::query("DELETE FROM projection_offsets WHERE projection = $1")
            .bind(projection)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.db_error("delete offsets", e))?
            .rows_affected();
        tx.commit().await.map_err(|e| self.db_error("commit", e))?;
        Ok(removed)
    }
}

/// Only plain identifiers are interpolated into statements.
fn check_identifier(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidQuery(format!(
            "{name:?} is not a table name this snapshot reads"
        )))
    }
}

/// A row's columns as JSON values: the first of i64, f64, text, bool, bytes (hex) that
/// the column's type decodes as; NULL as null.
/// The column of `agents` that holds the latest report's Avro encoding.
const AVRO_REPORT_COLUMN: &str = "latest_report_avro";

fn row_values(row: &AnyRow) -> std::result::Result<SnapshotRow, String> {
    let mut out = SnapshotRow::new();
    for (i, column) in row.columns().iter().enumerate() {
        let value = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            v.map_or(serde_json::Value::Null, serde_json::Value::from)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            match v {
                None => serde_json::Value::Null,
                // JSON has no NaN or infinities: keep them as text, still comparable.
                Some(f) => serde_json::Number::from_f64(f)
                    .map_or_else(|| serde_json::Value::String(f.to_string()), Into::into),
            }
        } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            v.map_or(serde_json::Value::Null, serde_json::Value::String)
        } else if let Ok(v) = row.try_get::<Option<bool>, _>(i) {
            v.map_or(serde_json::Value::Null, serde_json::Value::Bool)
        } else if let Ok(v) = row.try_get::<Option<Vec<u8>>, _>(i) {
            match v {
                None => serde_json::Value::Null,
                // A report kept as Avro, shown as its JSON: comparisons name the fields that
                // differ rather than two strings of hex.
                Some(b) if column.name() == AVRO_REPORT_COLUMN => {
                    let report = MetricReport::codec()
                        .decode_with(None, &b)
                        .map_err(|e| format!("column {}: {e}", column.name()))?;
                    serde_json::to_string(&report)
                        .map(serde_json::Value::String)
                        .map_err(|e| format!("column {}: {e}", column.name()))?
                }
                Some(b) => {
                    serde_json::Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
                }
            }
        } else {
            return Err(format!(
                "column {} has a type this snapshot cannot read",
                column.name()
            ));
        };
        out.insert(column.name().to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Change, ReadModel, StoredOffset};
    use fleet_schemas::fixtures;

    #[tokio::test]
    async fn snapshots_count_and_clear_the_projected_tables_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot.db");
        let store = SqlReadModel::connect(path.to_str().expect("utf-8 path"))
            .await
            .expect("connect");
        assert_eq!(store.projected_row_count("readmodel").await.ok(), Some(0));
        let changes = vec![
            Change::Report(Box::new(fixtures::metric_report("t1", "a1", 1_000))),
            Change::Alert(fixtures::alert_raised("t1", "a1", 2_000)),
            Change::Inventory(Box::new(fixtures::software_inventory("t1", "a1", 3_000))),
            Change::Rule(Box::new(fixtures::rule_defined("t1", "r1", 4_000))),
        ];
        let offsets = [StoredOffset {
            topic: "fleet.metrics.v1".into(),
            partition: 0,
            next_offset: 4,
        }];
        store
            .apply("readmodel", &changes, &offsets)
            .await
            .expect("apply");
        let registry = fleet_registry::SqlRegistry::open(store.database().clone())
            .await
            .expect("registry beside the read model");
        fleet_registry::Registry::create_tenant(&registry, "kept", 5_000)
            .await
            .expect("tenant");

        let snap = store.snapshot().await.expect("snapshot");
        let names: Vec<&str> = snap.tables.keys().map(String::as_str).collect();
        for (t, _) in PROJECTED_TABLES {
            assert!(names.contains(t), "{t} in {names:?}");
        }
        for t in NOT_PROJECTED_TABLES.iter().chain(REGISTRY_TABLES) {
            assert!(!names.contains(t), "{t} must not be compared");
        }
        let agents = &snap.tables["agents"];
        assert_eq!(agents.rows.len(), 1);
        let (key, row) = agents.rows.iter().next().expect("a row");
        assert_eq!(agents.describe_key(key), "agent_id=a1");
        assert_eq!(row["tenant_id"], serde_json::json!("t1"));
        assert!(row["cpu_percent"].is_f64(), "{row:?}");
        assert!(row["first_seen_at"].is_i64(), "{row:?}");
        assert!(row["offline_at"].is_null(), "{row:?}");
        assert_eq!(snap.tables["alerts"].rows.len(), 1);
        assert_eq!(snap.tables["alert_rules"].rows.len(), 1);
        assert!(!snap.tables["software"].rows.is_empty());

        // A second snapshot of the same rows is equal.
        assert_eq!(store.snapshot().await.expect("again"), snap);

        let count = store.projected_row_count("readmodel").await.expect("count");
        assert!(count >= 5, "{count}");
        let removed = store.clear_projected("readmodel").await.expect("clear");
        assert_eq!(removed, count);
        assert_eq!(store.projected_row_count("readmodel").await.ok(), Some(0));
        let tenants = fleet_registry::Registry::list_tenants(&registry)
            .await
            .expect("tenants");
        assert_eq!(tenants.len(), 1, "the registry is kept");
    }

    #[test]
    fn only_plain_identifiers() {
        assert!(check_identifier("command_audit").is_ok());
        assert!(check_identifier("x; DROP TABLE agents").is_err());
        assert!(check_identifier("").is_err());
    }
}
