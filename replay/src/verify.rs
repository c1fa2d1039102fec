//! Comparing two stores of one projection (typically the live one and a rebuilt one):
//! every difference, as values ([`ReadModelReport`], [`TimeSeriesReport`]).
//!
//! * Read model: every row of every projected table
//!   ([`SqlReadModel::snapshot_table`]), matched by primary key: rows only in the live store
//!   (missing from the rebuilt one), rows only in the rebuilt one (extra), and rows in both
//!   whose columns differ (each column with both values; for JSON kept in a text column,
//!   the JSON paths that differ). Not compared: `projection_offsets` (compared separately,
//!   as a hint: two stores that applied different offsets differ by what lies between),
//!   the registry and the audit log (not derived from topics). No projected column holds
//!   the time it was applied (every time comes from the records), so none is excluded.
//! * Time series: the list of series (tenant, agent, series) of each store, then, for every
//!   series in both, the 1-hour rollup buckets over the window, and for every hour with
//!   data in either store its 5-minute and 1-minute rollup buckets and its raw samples (in
//!   1-second buckets: count, min, max, sum, last). Floats are equal within a relative
//!   1e-9 (engines may add in another order). The window defaults to the raw retention
//!   back from now (from the hour after `now - raw retention`) to a day ahead: what lies
//!   past the raw retention legitimately differs, since a store written later (the
//!   rebuild) keeps no raw samples past the retention at its write time, and a rollup
//!   whose raw source was partly gone when it was written is frozen (see
//!   `stores/src/timeseries.rs`). A given start widens it, knowing that.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use fleet_projections::project::READ_MODEL_PROJECTION;
use fleet_read_model::ReadModel as _;
use fleet_read_model::{SnapshotTable, SqlReadModel, TableSnapshot};
use fleet_service::config::redact_url;
use fleet_timeseries::{Bucket, RangeQuery, Resolution, SeriesKey, TimeSeriesStore, MAX_BUCKETS};
use serde_json::Value;

use crate::error::{invalid, Context as _};
use crate::Result;

// ------------------------------------------------------------------------------ read model

/// The file of a SQLite read-model URL (`None` for PostgreSQL).
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    let rest = match url.strip_prefix("sqlite:") {
        Some(rest) => rest.strip_prefix("//").unwrap_or(rest),
        None => url,
    };
    Some(PathBuf::from(rest.split('?').next().unwrap_or(rest)))
}

/// Opens a read model that must exist (a SQLite path that does not is a typo, not an empty
/// store).
async fn open_existing_read_model(url: &str, what: &str) -> Result<SqlReadModel> {
    if let Some(file) = sqlite_file(url) {
        if !file.exists() {
            invalid!("the {what} read model {} does not exist", file.display());
        }
    }
    SqlReadModel::connect(url)
        .await
        .with_context(|| format!("opening the {what} read model {}", redact_url(url)))
}

/// One difference between two rows of a table; the key is the row's primary key (in a
/// report, described: `id=a`).
#[derive(Debug, PartialEq)]
pub enum RowDiff {
    /// In the live store only.
    Missing(String),
    /// In the rebuilt store only.
    Extra(String),
    /// In both, with these columns different: (column, live, rebuilt).
    Different(String, Vec<(String, Value, Value)>),
}

/// Values equal: numbers by value (an integer and the same float are equal), the rest as
/// JSON.
fn values_equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

fn diff_tables(live: &TableSnapshot, rebuilt: &TableSnapshot) -> Vec<RowDiff> {
    let mut out = Vec::new();
    let keys: BTreeSet<&String> = live.rows.keys().chain(rebuilt.rows.keys()).collect();
    for key in keys {
        match (live.rows.get(key), rebuilt.rows.get(key)) {
            (Some(_), None) => out.push(RowDiff::Missing(key.clone())),
            (None, Some(_)) => out.push(RowDiff::Extra(key.clone())),
            (Some(a), Some(b)) => {
                let columns: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                let differing: Vec<(String, Value, Value)> = columns
                    .into_iter()
                    .filter_map(|c| {
                        let x = a.get(c).cloned().unwrap_or(Value::Null);
                        let y = b.get(c).cloned().unwrap_or(Value::Null);
                        (!values_equal(&x, &y)).then(|| (c.clone(), x, y))
                    })
                    .collect();
                if !differing.is_empty() {
                    out.push(RowDiff::Different(key.clone(), differing));
                }
            }
            (None, None) => {}
        }
    }
    out
}

/// JSON kept as text (reports, facts, rule events, arguments, tags), parsed.
fn json_text(v: &Value) -> Option<Value> {
    let s = v.as_str()?;
    let t = s.trim_start();
    if t.starts_with('{') || t.starts_with('[') {
        serde_json::from_str(s).ok()
    } else {
        None
    }
}

/// The paths where two JSON documents differ (at most `limit`).
fn json_paths(path: &str, a: &Value, b: &Value, out: &mut Vec<String>, limit: usize) {
    if out.len() >= limit || values_equal(a, b) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (l, r) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                json_paths(&format!("{path}.{k}"), l, r, out, limit);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (l, r)) in x.iter().zip(y).enumerate() {
                json_paths(&format!("{path}[{i}]"), l, r, out, limit);
            }
        }
        _ => out.push(format!("{path}: live {}, rebuilt {}", short(a), short(b))),
    }
}

/// A value for a message, long text cut.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => format!("{s:?}"),
        v => v.to_string(),
    };
    if s.chars().count() > 120 {
        let cut: String = s.chars().take(117).collect();
        format!("{cut}...")
    } else {
        s
    }
}

/// One column that differs, for people: for JSON kept in a text column, the JSON paths
/// that differ; else both values.
pub fn describe_column(column: &str, live: &Value, rebuilt: &Value) -> String {
    if let (Some(a), Some(b)) = (json_text(live), json_text(rebuilt)) {
        let mut paths = Vec::new();
        json_paths(column, &a, &b, &mut paths, 10);
        if !paths.is_empty() {
            return paths.join("; ");
        }
    }
    format!("{column}: live {}, rebuilt {}", short(live), short(rebuilt))
}

/// One table of a read-model comparison.
#[derive(Debug)]
pub struct TableReport {
    /// The table.
    pub name: String,
    /// Whether this build knows the table (an unknown one is compared by whole rows).
    pub known: bool,
    /// Rows in the live store.
    pub live_rows: usize,
    /// Rows in the rebuilt store.
    pub rebuilt_rows: usize,
    /// Every difference, keys described (`id=a`).
    pub diffs: Vec<RowDiff>,
}

impl TableReport {
    /// Missing, extra and different rows.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.diffs.iter().fold((0, 0, 0), |(m, e, d), x| match x {
            RowDiff::Missing(_) => (m + 1, e, d),
            RowDiff::Extra(_) => (m, e + 1, d),
            RowDiff::Different(..) => (m, e, d + 1),
        })
    }
}

/// A comparison of two read models.
#[derive(Debug)]
pub struct ReadModelReport {
    /// The live store's engine (`postgres`, `sqlite`).
    pub live_engine: &'static str,
    /// The rebuilt store's engine.
    pub rebuilt_engine: &'static str,
    /// Every projected table of either store.
    pub tables: Vec<TableReport>,
    /// The offsets each store applied, when they differ (live, rebuilt): a hint, since
    /// records between them are in one only.
    pub offsets: Option<(
        Vec<fleet_read_model::StoredOffset>,
        Vec<fleet_read_model::StoredOffset>,
    )>,
}

impl ReadModelReport {
    /// Differences over every table.
    pub fn differences(&self) -> usize {
        self.tables.iter().map(|t| t.diffs.len()).sum()
    }

    /// Rows compared (the larger side of each table).
    pub fn rows_compared(&self) -> usize {
        self.tables
            .iter()
            .map(|t| t.live_rows.max(t.rebuilt_rows))
            .sum()
    }
}

/// Compares every projected table of two read models (both must exist).
pub async fn read_models(live_url: &str, rebuilt_url: &str) -> Result<ReadModelReport> {
    let live = open_existing_read_model(live_url, "live").await?;
    let rebuilt = open_existing_read_model(rebuilt_url, "rebuilt").await?;
    let mut tables: Vec<SnapshotTable> = live.snapshot_tables().await?;
    for t in rebuilt.snapshot_tables().await? {
        if !tables.iter().any(|x| x.name == t.name) {
            tables.push(t);
        }
    }
    let mut reports = Vec::with_capacity(tables.len());
    for table in &tables {
        let a = live
            .snapshot_table(table)
            .await
            .with_context(|| format!("reading {} of the live read model", table.name))?;
        let b = rebuilt
            .snapshot_table(table)
            .await
            .with_context(|| format!("reading {} of the rebuilt read model", table.name))?;
        let diffs = diff_tables(&a, &b)
            .into_iter()
            .map(|d| match d {
                RowDiff::Missing(key) => RowDiff::Missing(a.describe_key(&key)),
                RowDiff::Extra(key) => RowDiff::Extra(b.describe_key(&key)),
                RowDiff::Different(key, columns) => {
                    RowDiff::Different(a.describe_key(&key), columns)
                }
            })
            .collect();
        reports.push(TableReport {
            name: table.name.clone(),
            known: table.is_known(),
            live_rows: a.rows.len(),
            rebuilt_rows: b.rows.len(),
            diffs,
        });
    }
    let (lo, ro) = (
        live.offsets(READ_MODEL_PROJECTION).await?,
        rebuilt.offsets(READ_MODEL_PROJECTION).await?,
    );
    let report = ReadModelReport {
        live_engine: live.engine_kind().as_str(),
        rebuilt_engine: rebuilt.engine_kind().as_str(),
        tables: reports,
        offsets: (lo != ro).then_some((lo, ro)),
    };
    live.close().await;
    rebuilt.close().await;
    Ok(report)
}

// ----------------------------------------------------------------------------- time series

/// Opens a time-series store that must exist.
async fn open_existing_timeseries(
    url: &str,
    what: &str,
    retention: fleet_timeseries::Retention,
) -> Result<std::sync::Arc<dyn TimeSeriesStore>> {
    if !url.starts_with("scylla://") {
        let dir = PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        let file = dir.join(fleet_timeseries::embedded::FILE_NAME);
        if !file.exists() {
            invalid!(
                "the {what} time-series store {} does not exist (no {})",
                dir.display(),
                file.display()
            );
        }
    }
    // A store opened here holds no head: open windows are read from the segments of the
    // last checkpoint (a clean stop of `fleetstream up` or of a replay writes one).
    let ts = fleet_timeseries::open(url, retention, fleet_timeseries::EngineConfig::default())
        .await
        .with_context(|| format!("opening the {what} time-series store {url}"))?;
    Ok(ts)
}

const HOUR: i64 = 3_600_000_000;
const SECOND: i64 = 1_000_000;

/// Buckets of one series at one resolution over `[from, to)`, by start; queried in chunks
/// of at most [`MAX_BUCKETS`] buckets.
async fn buckets(
    store: &dyn TimeSeriesStore,
    key: &SeriesKey,
    resolution: Resolution,
    interval: i64,
    from: i64,
    to: i64,
) -> Result<BTreeMap<i64, Bucket>> {
    let mut out = BTreeMap::new();
    let mut start = from;
    while start < to {
        let end = to.min(start.saturating_add(interval.saturating_mul(MAX_BUCKETS)));
        let q = RangeQuery {
            tenant_id: key.tenant_id.clone(),
            agent_id: key.agent_id.clone(),
            series: key.series.clone(),
            start_micros: start,
            end_micros: end,
            interval_micros: interval,
        };
        for b in store
            .query_resolution(&q, resolution)
            .await
            .with_context(|| format!("querying {} at {resolution}", key.series))?
        {
            out.insert(b.start_micros, b);
        }
        start = end;
    }
    Ok(out)
}

fn close(a: f64, b: f64) -> bool {
    a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

/// The fields of two buckets that differ.
fn bucket_diff(a: &Bucket, b: &Bucket) -> Vec<String> {
    let mut out = Vec::new();
    if a.count != b.count {
        out.push(format!("count live {}, rebuilt {}", a.count, b.count));
    }
    for (name, x, y) in [
        ("min", a.min, b.min),
        ("max", a.max, b.max),
        ("sum", a.sum, b.sum),
        ("last", a.last, b.last),
    ] {
        if !close(x, y) {
            out.push(format!("{name} live {x}, rebuilt {y}"));
        }
    }
    out
}

/// The name of a series in a report (`tenant/agent/series`).
pub fn series_name(k: &SeriesKey) -> String {
    format!("{}/{}/{}", k.tenant_id, k.agent_id, k.series)
}

/// One difference between two time-series stores.
#[derive(Debug, PartialEq)]
pub enum SeriesDiff {
    /// A series in the live store only.
    MissingSeries(SeriesKey),
    /// A series in the rebuilt store only.
    ExtraSeries(SeriesKey),
    /// A bucket of a series in both.
    Bucket {
        /// The series.
        key: SeriesKey,
        /// The resolution (`1h`, `5m`, `raw (1 s)`).
        what: &'static str,
        /// The bucket's start (µs).
        start: i64,
        /// How it differs.
        diff: BucketDiff,
    },
}

/// How a bucket differs.
#[derive(Debug, PartialEq)]
pub enum BucketDiff {
    /// In the live store only, with its count there.
    Missing(u64),
    /// In the rebuilt store only, with its count there.
    Extra(u64),
    /// In both: each field that differs (`count live 3, rebuilt 2`).
    Different(Vec<String>),
}

/// A comparison of two time-series stores.
#[derive(Debug)]
pub struct TimeSeriesReport {
    /// The live store's engine.
    pub live_engine: &'static str,
    /// The rebuilt store's engine.
    pub rebuilt_engine: &'static str,
    /// The window compared, `[from, to)` (µs, whole hours).
    pub from: i64,
    /// End of the window.
    pub to: i64,
    /// Series in the live store.
    pub live_series: usize,
    /// Series in the rebuilt store.
    pub rebuilt_series: usize,
    /// Series-hours with data in either store.
    pub hours: usize,
    /// Samples of the live store in the window.
    pub samples: u64,
    /// Every difference, in order: series, then buckets.
    pub diffs: Vec<SeriesDiff>,
}

/// Compares two bucket maps; adds every difference to `out`.
fn compare_buckets(
    key: &SeriesKey,
    what: &'static str,
    live: &BTreeMap<i64, Bucket>,
    rebuilt: &BTreeMap<i64, Bucket>,
    out: &mut Vec<SeriesDiff>,
) {
    let starts: BTreeSet<&i64> = live.keys().chain(rebuilt.keys()).collect();
    for start in starts {
        let diff = match (live.get(start), rebuilt.get(start)) {
            (Some(a), None) => BucketDiff::Missing(a.count),
            (None, Some(b)) => BucketDiff::Extra(b.count),
            (Some(a), Some(b)) => {
                let d = bucket_diff(a, b);
                if d.is_empty() {
                    continue;
                }
                BucketDiff::Different(d)
            }
            (None, None) => continue,
        };
        out.push(SeriesDiff::Bucket {
            key: key.clone(),
            what,
            start: *start,
            diff,
        });
    }
}

/// The window compared by default: from the first whole hour within the raw retention
/// back from `now` to a day ahead; `start` and `end` (µs) replace either side (the start
/// rounded down, the end up, to whole hours).
pub fn window(
    retention: fleet_timeseries::Retention,
    start: Option<i64>,
    end: Option<i64>,
    now: i64,
) -> Result<(i64, i64)> {
    let align_up = |t: i64| {
        let s = t.div_euclid(HOUR) * HOUR;
        if s == t {
            s
        } else {
            s.saturating_add(HOUR)
        }
    };
    let from = match start {
        Some(t) => t.div_euclid(HOUR) * HOUR,
        None => align_up(retention.cutoff_micros(Resolution::Raw, now)),
    };
    let to = align_up(end.unwrap_or_else(|| now.saturating_add(24 * HOUR)));
    if to <= from {
        invalid!("the window is empty: --end must be after --start");
    }
    Ok((from, to))
}

/// Compares two time-series stores (both must exist) over `[from, to)` ([`window`]): the
/// series lists, then for every series in both the 1h buckets, and for every hour with
/// data the 5m buckets and the raw samples in 1 s buckets.
pub async fn time_series(
    live_url: &str,
    rebuilt_url: &str,
    retention: fleet_timeseries::Retention,
    (from, to): (i64, i64),
) -> Result<TimeSeriesReport> {
    let live = open_existing_timeseries(live_url, "live", retention).await?;
    let rebuilt = open_existing_timeseries(rebuilt_url, "rebuilt", retention).await?;
    let a: BTreeSet<SeriesKey> = live.list_series(usize::MAX).await?.into_iter().collect();
    let b: BTreeSet<SeriesKey> = rebuilt.list_series(usize::MAX).await?.into_iter().collect();
    let mut diffs: Vec<SeriesDiff> = a
        .difference(&b)
        .map(|k| SeriesDiff::MissingSeries(k.clone()))
        .collect();
    diffs.extend(b.difference(&a).map(|k| SeriesDiff::ExtraSeries(k.clone())));
    let (mut hours, mut samples) = (0usize, 0u64);
    for key in a.intersection(&b) {
        let (lh, rh) = (
            buckets(live.as_ref(), key, Resolution::OneHour, HOUR, from, to).await?,
            buckets(rebuilt.as_ref(), key, Resolution::OneHour, HOUR, from, to).await?,
        );
        compare_buckets(key, "1h", &lh, &rh, &mut diffs);
        samples += lh.values().map(|b| b.count).sum::<u64>();
        let active: BTreeSet<i64> = lh.keys().chain(rh.keys()).copied().collect();
        hours += active.len();
        for hour in active {
            for (resolution, interval, what) in [
                (Resolution::FiveMinutes, 5 * 60 * SECOND, "5m"),
                (Resolution::Raw, SECOND, "raw (1 s)"),
            ] {
                let end = hour.saturating_add(HOUR);
                let l = buckets(live.as_ref(), key, resolution, interval, hour, end).await?;
                let r = buckets(rebuilt.as_ref(), key, resolution, interval, hour, end).await?;
                compare_buckets(key, what, &l, &r, &mut diffs);
            }
        }
    }
    Ok(TimeSeriesReport {
        live_engine: live.engine(),
        rebuilt_engine: rebuilt.engine(),
        from,
        to,
        live_series: a.len(),
        rebuilt_series: b.len(),
        hours,
        samples,
        diffs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn table(rows: &[(&str, Value)]) -> TableSnapshot {
        TableSnapshot {
            table: "t".into(),
            key_columns: vec!["id".into()],
            rows: rows
                .iter()
                .map(|(k, v)| {
                    let row = v
                        .as_object()
                        .map(|m| m.clone().into_iter().collect())
                        .unwrap_or_default();
                    (format!("[\"{k}\"]"), row)
                })
                .collect(),
        }
    }

    #[test]
    fn finds_missing_extra_and_different_rows() {
        let live = table(&[
            ("a", json!({"id": "a", "x": 1})),
            ("b", json!({"id": "b", "x": 2.5})),
            ("c", json!({"id": "c", "x": 3})),
        ]);
        let rebuilt = table(&[
            ("a", json!({"id": "a", "x": 1.0})),
            ("b", json!({"id": "b", "x": 2.75})),
            ("d", json!({"id": "d", "x": 4})),
        ]);
        let d = diff_tables(&live, &rebuilt);
        assert_eq!(
            d,
            vec![
                RowDiff::Different(
                    "[\"b\"]".into(),
                    vec![("x".into(), json!(2.5), json!(2.75))]
                ),
                RowDiff::Missing("[\"c\"]".into()),
                RowDiff::Extra("[\"d\"]".into()),
            ]
        );
        assert_eq!(live.describe_key("[\"b\"]"), "id=b");
    }

    #[test]
    fn json_text_columns_show_the_paths_that_differ() {
        let text = describe_column(
            "latest_report",
            &json!("{\"cpu\": 1, \"disks\": [{\"p\": 2}]}"),
            &json!("{\"cpu\": 1, \"disks\": [{\"p\": 3}]}"),
        );
        assert_eq!(text, "latest_report.disks[0].p: live 2, rebuilt 3");
    }

    #[test]
    fn the_window_defaults_to_the_raw_retention_in_whole_hours() {
        let retention = fleet_timeseries::Retention::default();
        let now = 1_800_000_000_000_000 + 1_234;
        let (from, to) = window(retention, None, None, now).expect("window");
        assert_eq!(from % HOUR, 0);
        assert!(from >= retention.cutoff_micros(Resolution::Raw, now));
        assert!(from - HOUR < retention.cutoff_micros(Resolution::Raw, now));
        assert_eq!(to, (now + 24 * HOUR).div_euclid(HOUR) * HOUR + HOUR);
        let (from, to) =
            window(retention, Some(now - 90 * 60 * SECOND), Some(now), now).expect("given");
        assert_eq!(
            (from, to),
            (
                now.div_euclid(HOUR) * HOUR - 2 * HOUR,
                now.div_euclid(HOUR) * HOUR + HOUR
            )
        );
        let e = window(retention, Some(now), Some(now - HOUR * 2), now).expect_err("empty");
        assert!(e.to_string().contains("the window is empty"), "{e}");
    }

    #[test]
    fn buckets_differ_by_presence_count_and_values() {
        let key = SeriesKey {
            tenant_id: "t".into(),
            agent_id: "a".into(),
            series: "cpu.percent".into(),
        };
        let b = |count: u64, sum: f64| Bucket {
            start_micros: 0,
            min: 1.0,
            max: 2.0,
            avg: sum / count as f64,
            sum,
            count,
            last: 2.0,
        };
        let live = BTreeMap::from([(0, b(2, 3.0)), (HOUR, b(1, 1.0)), (2 * HOUR, b(2, 3.0))]);
        let rebuilt = BTreeMap::from([
            (0, b(2, 3.0 + 1e-12)),
            (2 * HOUR, b(3, 4.0)),
            (3 * HOUR, b(1, 1.0)),
        ]);
        let mut out = Vec::new();
        compare_buckets(&key, "1h", &live, &rebuilt, &mut out);
        let diffs: Vec<(i64, &BucketDiff)> = out
            .iter()
            .map(|d| match d {
                SeriesDiff::Bucket { start, diff, .. } => (*start, diff),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            diffs,
            vec![
                (HOUR, &BucketDiff::Missing(1)),
                (
                    2 * HOUR,
                    &BucketDiff::Different(vec![
                        "count live 2, rebuilt 3".into(),
                        "sum live 3, rebuilt 4".into()
                    ])
                ),
                (3 * HOUR, &BucketDiff::Extra(1)),
            ]
        );
        assert_eq!(series_name(&key), "t/a/cpu.percent");
    }

    #[test]
    fn sqlite_files_of_urls() {
        assert_eq!(sqlite_file("postgres://x/y"), None);
        assert_eq!(
            sqlite_file("sqlite:///tmp/a.db?mode=rwc"),
            Some(PathBuf::from("/tmp/a.db"))
        );
        assert_eq!(sqlite_file("rel.db"), Some(PathBuf::from("rel.db")));
    }
}
