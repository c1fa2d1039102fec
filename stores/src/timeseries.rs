//! The embedded time-series store: every sample in one `redb` file in the data directory.
//!
//! * `samples`: key `(tenant, agent, series, ts_micros)`, value `f64`. redb compares tuple
//!   keys element by element, so one series' samples are contiguous and ordered by time,
//!   and a query is one range scan. Writing a key again replaces its value (idempotent).
//! * `series`: key `(tenant, agent, series)`, no value: the series names of an agent,
//!   without scanning its samples.
//!
//! * `rollup_1m`, `rollup_5m`, `rollup_1h`: key `(tenant, agent, series, bucket start µs)`,
//!   value `(min, max, sum, count, last, last_ts)`. A write recomputes, in its own
//!   transaction, every rollup bucket it touched: the 1-minute one from the raw samples of
//!   that minute (plus the written points that are too old to keep raw), the 5-minute one
//!   from its five 1-minute rows, the hour from its twelve 5-minute rows. The rows are a
//!   function of the samples, so a replay leaves them unchanged.
//!
//! Retention: a write skips what is already past a resolution's retention, and
//! [`TimeSeriesStore::expire`] deletes older rows (the projection calls it periodically).
//! A rollup bucket whose source is partly past retention is frozen once written: its row
//! already counts samples that are gone, so it is not recomputed from what is left.
//!
//! redb calls block (file I/O, fsync on commit), so they run in `spawn_blocking`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::{
    bucket_range, validate_query, Bucket, Point, RangeQuery, Resolution, Result, Retention,
    SeriesKey, StoreError, TimeSeriesStore,
};

/// File name of the store inside its directory.
pub const FILE_NAME: &str = "timeseries.redb";

/// (tenant, agent, series, µs) → value.
const SAMPLES: TableDefinition<(&str, &str, &str, i64), f64> = TableDefinition::new("samples");
/// (tenant, agent, series) → nothing: the series names each agent has.
const SERIES: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("series");

/// A rollup row: (min, max, sum, count, last, time of last µs).
type RollupRow = (f64, f64, f64, u64, f64, i64);
/// (tenant, agent, series, bucket start µs) → rollup row.
type RollupTable =
    TableDefinition<'static, (&'static str, &'static str, &'static str, i64), RollupRow>;
const ROLLUP_1M: RollupTable = TableDefinition::new("rollup_1m");
const ROLLUP_5M: RollupTable = TableDefinition::new("rollup_5m");
const ROLLUP_1H: RollupTable = TableDefinition::new("rollup_1h");

fn rollup_table(r: Resolution) -> Option<RollupTable> {
    match r {
        Resolution::Raw => None,
        Resolution::OneMinute => Some(ROLLUP_1M),
        Resolution::FiveMinutes => Some(ROLLUP_5M),
        Resolution::OneHour => Some(ROLLUP_1H),
    }
}

/// The time-series store embedded in the data directory (`<dir>/timeseries.redb`).
pub struct EmbeddedTimeSeries {
    db: Arc<Database>,
    path: PathBuf,
    retention: Retention,
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
        Self::open_with(dir, Retention::default())
    }

    /// As [`open`](Self::open), with the given retention.
    pub fn open_with(dir: &Path, retention: Retention) -> Result<Self> {
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
            for t in [ROLLUP_1M, ROLLUP_5M, ROLLUP_1H] {
                tx.open_table(t)?;
            }
            tx.commit()?;
            Ok(())
        };
        init().map_err(|e| internal(&path, e))?;
        Ok(EmbeddedTimeSeries {
            db: Arc::new(db),
            path,
            retention,
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
    merge_buckets(
        samples.into_iter().map(|(ts, v)| Bucket {
            start_micros: ts,
            min: v,
            max: v,
            avg: v,
            sum: v,
            count: 1,
            last: v,
        }),
        interval_micros,
    )
}

/// Merges buckets, given in time order (by start), into wider buckets aligned to
/// multiples of `interval_micros`: min of the minimums, max of the maximums, sums and
/// counts added, `last` of the latest. A raw sample is a bucket of one. Shared by every
/// engine: the rollups are built with it and queries over a rollup re-aggregate with it.
pub fn merge_buckets(rows: impl IntoIterator<Item = Bucket>, interval_micros: i64) -> Vec<Bucket> {
    fn finish(mut b: Bucket) -> Bucket {
        // A bucket exists only once it has a row, so count >= 1.
        b.avg = b.sum / b.count as f64;
        b
    }
    let mut out = Vec::new();
    let mut current: Option<Bucket> = None;
    for row in rows {
        let start = bucket_start(row.start_micros, interval_micros);
        match current.as_mut() {
            Some(acc) if acc.start_micros == start => {
                acc.min = acc.min.min(row.min);
                acc.max = acc.max.max(row.max);
                acc.sum += row.sum;
                acc.count += row.count;
                acc.last = row.last;
            }
            _ => {
                if let Some(done) = current.take() {
                    out.push(finish(done));
                }
                current = Some(Bucket {
                    start_micros: start,
                    ..row
                });
            }
        }
    }
    if let Some(done) = current {
        out.push(finish(done));
    }
    out
}

/// A rollup bucket being recomputed: (tenant, agent, series, bucket start).
type BucketKey = (String, String, String, i64);

fn to_row(b: &Bucket, last_ts: i64) -> RollupRow {
    (b.min, b.max, b.sum, b.count, b.last, last_ts)
}

fn from_row(start: i64, r: RollupRow) -> Bucket {
    let (min, max, sum, count, last, _) = r;
    Bucket {
        start_micros: start,
        min,
        max,
        avg: if count == 0 { 0.0 } else { sum / count as f64 },
        sum,
        count,
        last,
    }
}

/// Stores `points` and recomputes the rollup buckets they touch, inside `tx`.
fn write_points(
    tx: &redb::WriteTransaction,
    points: &[Point],
    retention: &Retention,
    now: i64,
) -> Result<(), redb::Error> {
    let raw_cutoff = retention.cutoff_micros(Resolution::Raw, now);
    // Points too old to keep raw, by their 1-minute bucket: they still count there.
    let mut old: BTreeMap<BucketKey, BTreeMap<i64, f64>> = BTreeMap::new();
    let mut touched: BTreeSet<BucketKey> = BTreeSet::new();
    let minute = Resolution::OneMinute.width_micros().unwrap_or(60_000_000);
    {
        let mut samples = tx.open_table(SAMPLES)?;
        let mut series = tx.open_table(SERIES)?;
        let mut names = BTreeSet::new();
        for p in points {
            let key = (p.tenant_id.as_str(), p.agent_id.as_str(), p.series.as_str());
            let bucket = (
                p.tenant_id.clone(),
                p.agent_id.clone(),
                p.series.clone(),
                bucket_start(p.ts_micros, minute),
            );
            if p.ts_micros >= raw_cutoff {
                samples.insert((key.0, key.1, key.2, p.ts_micros), p.value)?;
            } else {
                old.entry(bucket.clone())
                    .or_default()
                    .insert(p.ts_micros, p.value);
            }
            touched.insert(bucket);
            names.insert(key);
        }
        for key in names {
            series.insert(key, ())?;
        }
    }
    for r in Resolution::ROLLUPS {
        let (Some(width), Some(def)) = (r.width_micros(), rollup_table(r)) else {
            continue;
        };
        let cutoff = retention.cutoff_micros(r, now);
        let source_cutoff = retention.cutoff_micros(r.source(), now);
        let mut next: BTreeSet<BucketKey> = BTreeSet::new();
        let samples = tx.open_table(SAMPLES)?;
        let source = rollup_table(r.source())
            .map(|d| tx.open_table(d))
            .transpose()?;
        let mut table = tx.open_table(def)?;
        for (t, a, s, start) in touched {
            let start = bucket_start(start, width);
            let key = (t.clone(), a.clone(), s.clone(), start);
            if next.contains(&key) || start + width <= cutoff {
                continue;
            }
            // Part of the source is past its retention: a stored row already counts
            // samples that are gone, so it stays as it is (frozen).
            if start < source_cutoff
                && table
                    .get((t.as_str(), a.as_str(), s.as_str(), start))?
                    .is_some()
            {
                continue;
            }
            next.insert(key);
            let range = (t.as_str(), a.as_str(), s.as_str(), start)
                ..(t.as_str(), a.as_str(), s.as_str(), start + width);
            let mut rows: Vec<(Bucket, i64)> = Vec::new();
            match &source {
                None => {
                    // From the raw samples, merged with the too-old ones of this minute.
                    let mut merged: BTreeMap<i64, f64> = old
                        .get(&(t.clone(), a.clone(), s.clone(), start))
                        .cloned()
                        .unwrap_or_default();
                    for entry in samples.range(range)? {
                        let (k, v) = entry?;
                        merged.insert(k.value().3, v.value());
                    }
                    rows.extend(merged.into_iter().map(|(ts, v)| {
                        (
                            Bucket {
                                start_micros: ts,
                                min: v,
                                max: v,
                                avg: v,
                                sum: v,
                                count: 1,
                                last: v,
                            },
                            ts,
                        )
                    }));
                }
                Some(src) => {
                    for entry in src.range(range)? {
                        let (k, v) = entry?;
                        let row = v.value();
                        rows.push((from_row(k.value().3, row), row.5));
                    }
                }
            }
            let last_ts = rows.last().map(|(_, ts)| *ts).unwrap_or(start);
            let merged = merge_buckets(rows.into_iter().map(|(b, _)| b), width);
            match merged.first() {
                Some(b) => {
                    table.insert(
                        (t.as_str(), a.as_str(), s.as_str(), start),
                        to_row(b, last_ts),
                    )?;
                }
                None => {
                    table.remove((t.as_str(), a.as_str(), s.as_str(), start))?;
                }
            }
        }
        touched = next;
    }
    Ok(())
}

#[async_trait]
impl TimeSeriesStore for EmbeddedTimeSeries {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Writes all points and their rollups in one write transaction. Rejects the whole
    /// call with [`StoreError::InvalidQuery`] if a value is not finite or a time is out
    /// of range ([`crate::validate_points`]).
    #[tracing::instrument(skip(self, points), fields(points = points.len()))]
    async fn write(&self, points: &[Point]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        crate::validate_points(points)?;
        let points = points.to_vec();
        let retention = self.retention;
        let now = fleet_schemas::time::now_micros();
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            write_points(&tx, &points, &retention, now)?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    #[tracing::instrument(skip(self))]
    async fn query_resolution(
        &self,
        query: &RangeQuery,
        resolution: Resolution,
    ) -> Result<Vec<Bucket>> {
        validate_query(query, resolution)?;
        let q = query.clone();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let (from, to) = bucket_range(&q);
            let (t, a, s) = (q.tenant_id.as_str(), q.agent_id.as_str(), q.series.as_str());
            let mut rows = Vec::new();
            match rollup_table(resolution) {
                None => {
                    let samples = tx.open_table(SAMPLES)?;
                    for entry in samples.range((t, a, s, from)..(t, a, s, to))? {
                        let (key, value) = entry?;
                        let (ts, v) = (key.value().3, value.value());
                        rows.push(Bucket {
                            start_micros: ts,
                            min: v,
                            max: v,
                            avg: v,
                            sum: v,
                            count: 1,
                            last: v,
                        });
                    }
                }
                Some(def) => {
                    let table = tx.open_table(def)?;
                    for entry in table.range((t, a, s, from)..(t, a, s, to))? {
                        let (key, value) = entry?;
                        rows.push(from_row(key.value().3, value.value()));
                    }
                }
            }
            Ok(merge_buckets(rows, q.interval_micros))
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

    #[tracing::instrument(skip(self))]
    async fn list_series(&self, limit: usize) -> Result<Vec<SeriesKey>> {
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let series = tx.open_table(SERIES)?;
            let mut out = Vec::new();
            for entry in series.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (k, _) = entry?;
                let (t, a, s) = k.value();
                out.push(SeriesKey {
                    tenant_id: t.to_owned(),
                    agent_id: a.to_owned(),
                    series: s.to_owned(),
                });
            }
            Ok(out)
        })
        .await
    }

    #[tracing::instrument(skip(self))]
    async fn expire(&self, now_micros: i64) -> Result<u64> {
        let retention = self.retention;
        self.blocking(move |db| {
            // Which series exist: one read, then one write transaction per resolution.
            let names: Vec<(String, String, String)> = {
                let tx = db.begin_read()?;
                let series = tx.open_table(SERIES)?;
                let mut names = Vec::new();
                for entry in series.iter()? {
                    let (k, _) = entry?;
                    let (t, a, s) = k.value();
                    names.push((t.to_owned(), a.to_owned(), s.to_owned()));
                }
                names
            };
            let mut removed = 0u64;
            let tx = db.begin_write()?;
            {
                let mut samples = tx.open_table(SAMPLES)?;
                let cutoff = retention.cutoff_micros(Resolution::Raw, now_micros);
                for (t, a, s) in &names {
                    let gone = samples.extract_from_if(
                        (t.as_str(), a.as_str(), s.as_str(), i64::MIN)
                            ..(t.as_str(), a.as_str(), s.as_str(), cutoff),
                        |_, _| true,
                    )?;
                    for g in gone {
                        g?;
                        removed += 1;
                    }
                }
                for r in Resolution::ROLLUPS {
                    let Some(def) = rollup_table(r) else { continue };
                    let mut table = tx.open_table(def)?;
                    let cutoff = retention.cutoff_micros(r, now_micros);
                    let width = r.width_micros().unwrap_or(1);
                    for (t, a, s) in &names {
                        // A bucket goes once all of it is past retention.
                        let end = bucket_start(cutoff, width);
                        let gone = table.extract_from_if(
                            (t.as_str(), a.as_str(), s.as_str(), i64::MIN)
                                ..(
                                    t.as_str(),
                                    a.as_str(),
                                    s.as_str(),
                                    end.saturating_sub(width) + 1,
                                ),
                            |_, _| true,
                        )?;
                        for g in gone {
                            g?;
                            removed += 1;
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(removed)
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
                    sum: 9.0,
                    count: 3,
                    last: 3.0
                },
                Bucket {
                    start_micros: 20,
                    min: 7.0,
                    max: 7.0,
                    avg: 7.0,
                    sum: 7.0,
                    count: 1,
                    last: 7.0
                },
            ]
        );
        assert!(aggregate_buckets([], 10).is_empty());
    }
}
