//! The embedded time-series store: every sample in one `redb` file in the data directory.
//!
//! * `samples`: key `(tenant, agent, series, ts_micros)`, value `f64`. redb compares tuple
//!   keys element by element, so one series' samples are contiguous and ordered by time,
//!   and a query is one range scan. Writing a key again replaces its value (idempotent).
//! * `series`: key `(tenant, agent, series)`, no value: the series names of an agent,
//!   without scanning its samples.
//!
//! redb calls block (file I/O, fsync on commit), so they run in `spawn_blocking`.
//! Rollups and retention come later.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::{validate_range, Bucket, Point, RangeQuery, Result, StoreError, TimeSeriesStore};

/// File name of the store inside its directory.
pub const FILE_NAME: &str = "timeseries.redb";

/// (tenant, agent, series, µs) → value.
const SAMPLES: TableDefinition<(&str, &str, &str, i64), f64> = TableDefinition::new("samples");
/// (tenant, agent, series) → nothing: the series names each agent has.
const SERIES: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("series");

/// The time-series store embedded in the data directory (`<dir>/timeseries.redb`).
pub struct EmbeddedTimeSeries {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedTimeSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedTimeSeries")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedTimeSeries {
    /// Opens (or creates) the store in `dir`, creating the directory if needed.
    ///
    /// Blocks on file I/O (and on recovery after an unclean shutdown); call it at start-up.
    /// Fails with [`StoreError::Unavailable`] when another process holds the file open.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Config(format!(
                "cannot create the time-series directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Unavailable(format!(
                "time-series store {} is open in another process",
                path.display()
            )),
            e => StoreError::Internal(format!(
                "cannot open the time-series store {}: {e}",
                path.display()
            )),
        })?;
        // Create the tables, so that readers never meet a missing one.
        let init = || -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            tx.open_table(SAMPLES)?;
            tx.open_table(SERIES)?;
            tx.commit()?;
            Ok(())
        };
        init().map_err(|e| internal(&path, e))?;
        Ok(EmbeddedTimeSeries {
            db: Arc::new(db),
            path,
        })
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs blocking redb work off the async runtime.
    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || work(&db).map_err(|e| internal(&path, e)))
            .await
            .map_err(|e| StoreError::Internal(format!("time-series task failed: {e}")))?
    }
}

fn internal(path: &Path, e: redb::Error) -> StoreError {
    StoreError::Internal(format!("time-series store {}: {e}", path.display()))
}

/// Start of the bucket holding `ts`: the greatest multiple of `interval` (since the epoch)
/// not after `ts`. `interval` must be positive.
pub fn bucket_start(ts_micros: i64, interval_micros: i64) -> i64 {
    ts_micros.div_euclid(interval_micros) * interval_micros
}

/// Aggregates samples, given in time order, into buckets aligned to multiples of
/// `interval_micros` since the epoch. Buckets without samples are omitted. Shared by every
/// engine that aggregates on the client.
pub fn aggregate_buckets(
    samples: impl IntoIterator<Item = (i64, f64)>,
    interval_micros: i64,
) -> Vec<Bucket> {
    /// A bucket being filled: the sum gives the mean at the end.
    struct Acc {
        bucket: Bucket,
        sum: f64,
    }
    fn finish(acc: Acc) -> Bucket {
        // A bucket exists only once it has a sample, so count >= 1.
        let count = acc.bucket.count as f64;
        Bucket {
            avg: acc.sum / count,
            ..acc.bucket
        }
    }

    let mut out = Vec::new();
    let mut current: Option<Acc> = None;
    for (ts, value) in samples {
        let start = bucket_start(ts, interval_micros);
        match current.as_mut() {
            Some(acc) if acc.bucket.start_micros == start => {
                acc.bucket.min = acc.bucket.min.min(value);
                acc.bucket.max = acc.bucket.max.max(value);
                acc.bucket.count += 1;
                acc.bucket.last = value;
                acc.sum += value;
            }
            _ => {
                if let Some(done) = current.take() {
                    out.push(finish(done));
                }
                current = Some(Acc {
                    bucket: Bucket {
                        start_micros: start,
                        min: value,
                        max: value,
                        avg: value,
                        count: 1,
                        last: value,
                    },
                    sum: value,
                });
            }
        }
    }
    if let Some(done) = current {
        out.push(finish(done));
    }
    out
}

#[async_trait]
impl TimeSeriesStore for EmbeddedTimeSeries {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    /// Writes all points in one write transaction. Rejects the whole call with
    /// [`StoreError::InvalidQuery`] if a value is not finite (NaN would poison min/max).
    #[tracing::instrument(skip(self, points), fields(points = points.len()))]
    async fn write(&self, points: &[Point]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        if let Some(bad) = points.iter().find(|p| !p.value.is_finite()) {
            return Err(StoreError::InvalidQuery(format!(
                "value of {}/{}/{} at {} is {}: only finite values can be stored",
                bad.tenant_id, bad.agent_id, bad.series, bad.ts_micros, bad.value
            )));
        }
        let points = points.to_vec();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut samples = tx.open_table(SAMPLES)?;
                let mut series = tx.open_table(SERIES)?;
                let mut names = BTreeSet::new();
                for p in &points {
                    let key = (p.tenant_id.as_str(), p.agent_id.as_str(), p.series.as_str());
                    samples.insert((key.0, key.1, key.2, p.ts_micros), p.value)?;
                    names.insert(key);
                }
                for key in names {
                    series.insert(key, ())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip(self))]
    async fn query(&self, query: &RangeQuery) -> Result<Vec<Bucket>> {
        validate_range(query)?;
        let q = query.clone();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let samples = tx.open_table(SAMPLES)?;
            let (t, a, s) = (q.tenant_id.as_str(), q.agent_id.as_str(), q.series.as_str());
            let range = samples.range((t, a, s, q.start_micros)..(t, a, s, q.end_micros))?;
            let mut scanned = Vec::new();
            for entry in range {
                let (key, value) = entry?;
                scanned.push((key.value().3, value.value()));
            }
            Ok(aggregate_buckets(scanned, q.interval_micros))
        })
        .await
    }

    #[tracing::instrument(skip(self))]
    async fn series(&self, tenant_id: &str, agent_id: &str) -> Result<Vec<String>> {
        let (tenant, agent) = (tenant_id.to_owned(), agent_id.to_owned());
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let series = tx.open_table(SERIES)?;
            let mut names = Vec::new();
            for entry in series.range((tenant.as_str(), agent.as_str(), "")..)? {
                let (key, ()) = entry.map(|(k, v)| (k, v.value()))?;
                let (t, a, name) = key.value();
                if t != tenant || a != agent {
                    break;
                }
                names.push(name.to_owned());
            }
            Ok(names)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_align_to_the_epoch() {
        assert_eq!(bucket_start(0, 10), 0);
        assert_eq!(bucket_start(9, 10), 0);
        assert_eq!(bucket_start(10, 10), 10);
        assert_eq!(bucket_start(-1, 10), -10);
        assert_eq!(bucket_start(-10, 10), -10);
    }

    #[test]
    fn aggregates_in_order() {
        let b = aggregate_buckets([(1, 4.0), (5, 2.0), (9, 3.0), (25, 7.0)], 10);
        assert_eq!(
            b,
            vec![
                Bucket {
                    start_micros: 0,
                    min: 2.0,
                    max: 4.0,
                    avg: 3.0,
                    count: 3,
                    last: 3.0
                },
                Bucket {
                    start_micros: 20,
                    min: 7.0,
                    max: 7.0,
                    avg: 7.0,
                    count: 1,
                    last: 7.0
                },
            ]
        );
        assert!(aggregate_buckets([], 10).is_empty());
    }
}
