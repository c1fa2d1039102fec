//! The series index of the standard write protocols (`fleet.samples.v1`, table
//! `sample_series`).
//!
//! Order tolerance: a row's `first_at` is the least and its `last_at` the greatest time
//! applied, so any interleaving and any replay converge. `last_at` arrives rounded down to
//! the hour ([`SampleSeries::last_step`]), so a steady stream changes nothing and the row
//! is written only when it does (`WHERE` of the upsert). A change's series are written by
//! multi-row upserts (one series appears once per change).

use fleet_sql::decode_error;
use sqlx::any::AnyRow;
use sqlx::error::BoxDynError;
use sqlx::Row;

use super::{chunks, values_rows, ApplyError, Engine, SqlReadModel, Tx};
use crate::{Result, SampleSeries, SampleSeriesQuery, MAX_SERIES_LIMIT, SERIES_LAST_STEP_MICROS};

const UPSERT_HEAD: &str = "INSERT INTO sample_series (tenant_id, series_id, unit_id, series, \
metric, labels, first_at, last_at) VALUES ";

const UPSERT_TAIL: &str = "
ON CONFLICT (tenant_id, series_id) DO UPDATE SET
    first_at = CASE WHEN excluded.first_at < sample_series.first_at
                    THEN excluded.first_at ELSE sample_series.first_at END,
    last_at  = CASE WHEN excluded.last_at > sample_series.last_at
                    THEN excluded.last_at ELSE sample_series.last_at END
WHERE excluded.first_at < sample_series.first_at OR excluded.last_at > sample_series.last_at";

const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?)";

/// Rows per statement (8 binds each: within both engines' bind limits).
const CHUNK: usize = 512;

const COLUMNS: &str = "tenant_id, unit_id, series, metric, labels, first_at, last_at";

/// The key of a series' row: a UUIDv5 of its text.
fn series_id(series: &str) -> String {
    fleet_schemas::ids::v5(&["sample-series", series]).to_string()
}

/// Writes the series of one [`crate::Change::Series`].
pub(super) async fn apply_series(
    tx: &mut Tx<'_>,
    engine: Engine,
    series: &[SampleSeries],
) -> Result<(), ApplyError> {
    let mut rows = Vec::with_capacity(series.len());
    for s in series {
        let labels = serde_json::to_string(&s.labels).map_err(ApplyError::Encode)?;
        rows.push((s, series_id(&s.series), labels));
    }
    for chunk in chunks(&rows, CHUNK) {
        let sql = format!(
            "{UPSERT_HEAD}{}{UPSERT_TAIL}",
            values_rows(engine, chunk.len(), ROW)
        );
        let mut q = sqlx::query(&sql);
        for (s, id, labels) in chunk {
            q = q
                .bind(s.tenant_id.as_str())
                .bind(id.as_str())
                .bind(s.unit_id.as_str())
                .bind(s.series.as_str())
                .bind(s.metric.as_str())
                .bind(labels.as_str())
                .bind(s.first_at)
                .bind(s.last_at);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn decode(row: &AnyRow) -> std::result::Result<SampleSeries, BoxDynError> {
    let labels: String = row.try_get("labels")?;
    Ok(SampleSeries {
        tenant_id: row.try_get("tenant_id")?,
        unit_id: row.try_get("unit_id")?,
        series: row.try_get("series")?,
        metric: row.try_get("metric")?,
        labels: serde_json::from_str(&labels)?,
        first_at: row.try_get("first_at")?,
        last_at: row.try_get("last_at")?,
    })
}

impl SqlReadModel {
    /// [`crate::ReadModel::list_sample_series`]. The rows are picked in key order (the
    /// same on both engines, whose text collations differ), then sorted by series text.
    pub(super) async fn query_sample_series(
        &self,
        query: &SampleSeriesQuery,
    ) -> Result<Vec<SampleSeries>> {
        let limit = i64::try_from(query.limit.min(MAX_SERIES_LIMIT)).unwrap_or(0);
        // Samples end before last_at + step.
        let after = query.start.saturating_sub(SERIES_LAST_STEP_MICROS);
        let metric = if query.metric.is_some() {
            " AND metric = $5"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM sample_series WHERE tenant_id = $1 AND first_at <= $2 \
             AND last_at > $3{metric} ORDER BY series_id LIMIT $4"
        );
        let mut q = sqlx::query(&sql)
            .bind(query.tenant_id.as_str())
            .bind(query.end)
            .bind(after)
            .bind(limit);
        if let Some(m) = &query.metric {
            q = q.bind(m.as_str());
        }
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| self.db_error("list sample series", e))?;
        let mut out = rows
            .iter()
            .map(decode)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| decode_error("sample series", e))?;
        out.sort_by(|a, b| a.series.cmp(&b.series));
        Ok(out)
    }
}
