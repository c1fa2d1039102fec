//! The query side of the time-series seam: samples, range queries in aggregated buckets,
//! resolutions and retention, and the [`TimeSeriesStore`] trait the projections, the
//! query API and the replay tools use. [`crate::engine::TimeSeries`] implements it over
//! either chunk store.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One sample of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Series name (`cpu.percent`, `disk.percent:/var`; see `fleet_schemas::samples`).
    pub series: String,
    /// Sample time, µs since the epoch.
    pub ts_micros: i64,
    /// Value.
    pub value: f64,
}

/// One series of one agent.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SeriesKey {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Series name.
    pub series: String,
}

/// A range query over one series.
///
/// The answer holds the buckets of width `interval_micros` (aligned to multiples of the
/// width since the epoch) that overlap `[start_micros, end_micros)`, each bucket whole:
/// the first may hold samples from before `start_micros` when the start is not aligned.
/// This is what makes a rollup and the raw samples give the same answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Series name.
    pub series: String,
    /// Inclusive start, µs.
    pub start_micros: i64,
    /// Exclusive end, µs.
    pub end_micros: i64,
    /// Bucket width, µs (> 0). Buckets are aligned to multiples of the width since the epoch.
    pub interval_micros: i64,
}

/// One aggregated bucket; buckets without samples are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start, µs.
    pub start_micros: i64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Mean (`sum / count`).
    pub avg: f64,
    /// Sum of the samples (kept so that buckets merge exactly into wider ones).
    pub sum: f64,
    /// Number of samples.
    pub count: u64,
    /// Value of the latest sample in the bucket.
    pub last: f64,
}

/// The most buckets one query may return, to keep one request bounded.
pub const MAX_BUCKETS: i64 = 10_000;

/// Where a query's buckets come from: the raw samples or one of the rollups.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub enum Resolution {
    /// Every sample as written (also what serves 1-minute buckets: a 1-minute rollup of
    /// 10 s samples costs about as much as the samples).
    #[serde(rename = "raw")]
    Raw,
    /// 5-minute rollup.
    #[serde(rename = "5m")]
    FiveMinutes,
    /// 1-hour rollup.
    #[serde(rename = "1h")]
    OneHour,
}

impl Resolution {
    /// The rollups, finest first.
    pub const ROLLUPS: [Resolution; 2] = [Resolution::FiveMinutes, Resolution::OneHour];

    /// Bucket width of a rollup, µs; `None` for raw samples.
    pub fn width_micros(self) -> Option<i64> {
        const MINUTE: i64 = 60_000_000;
        match self {
            Resolution::Raw => None,
            Resolution::FiveMinutes => Some(5 * MINUTE),
            Resolution::OneHour => Some(60 * MINUTE),
        }
    }

    /// Short name (`raw`, `5m`, `1h`).
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::FiveMinutes => "5m",
            Resolution::OneHour => "1h",
        }
    }

    /// The resolution a rollup must be kept at least as long as: the next finer one.
    pub fn source(self) -> Resolution {
        match self {
            Resolution::Raw | Resolution::FiveMinutes => Resolution::Raw,
            Resolution::OneHour => Resolution::FiveMinutes,
        }
    }

    /// The coarsest resolution that serves buckets of `interval_micros`: the widest rollup
    /// whose width divides the interval, else the raw samples. Coarser rollups are kept
    /// longer, so this is also the one that reaches furthest back.
    pub fn for_interval(interval_micros: i64) -> Resolution {
        Resolution::ROLLUPS
            .iter()
            .rev()
            .copied()
            .find(|r| {
                r.width_micros()
                    .is_some_and(|w| interval_micros > 0 && interval_micros % w == 0)
            })
            .unwrap_or(Resolution::Raw)
    }
}

impl std::fmt::Display for Resolution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long each resolution is kept, counted back from now by sample time: a chunk is
/// kept until the end of its window is older than its retention. A sample older than a
/// resolution's retention is not written there (and the engine removes stored chunks:
/// TTL on ScyllaDB, [`TimeSeriesStore::expire`] on the embedded store).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct Retention {
    /// Raw samples.
    #[serde(with = "humantime_serde")]
    pub raw: std::time::Duration,
    /// 5-minute rollup.
    #[serde(rename = "rollup-5m", with = "humantime_serde")]
    pub five_minutes: std::time::Duration,
    /// 1-hour rollup.
    #[serde(rename = "rollup-1h", with = "humantime_serde")]
    pub one_hour: std::time::Duration,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        Retention {
            raw: std::time::Duration::from_secs(30 * DAY),
            five_minutes: std::time::Duration::from_secs(90 * DAY),
            one_hour: std::time::Duration::from_secs(400 * DAY),
        }
    }
}

impl Retention {
    /// Retention of one resolution.
    pub fn of(&self, r: Resolution) -> std::time::Duration {
        match r {
            Resolution::Raw => self.raw,
            Resolution::FiveMinutes => self.five_minutes,
            Resolution::OneHour => self.one_hour,
        }
    }

    /// Oldest sample time (µs) kept at `r` when the clock reads `now_micros`.
    pub fn cutoff_micros(&self, r: Resolution, now_micros: i64) -> i64 {
        let keep = i64::try_from(self.of(r).as_micros()).unwrap_or(i64::MAX);
        now_micros.saturating_sub(keep)
    }

    /// Checks that every retention is at least a second and that no rollup is kept for a
    /// shorter time than the resolution it is computed from.
    pub fn validate(&self) -> Result<()> {
        for r in [Resolution::Raw].into_iter().chain(Resolution::ROLLUPS) {
            if self.of(r) < std::time::Duration::from_secs(1) {
                return Err(Error::Config(format!(
                    "retention of {r} must be at least 1s"
                )));
            }
        }
        for r in Resolution::ROLLUPS {
            if self.of(r) < self.of(r.source()) {
                return Err(Error::Config(format!(
                    "retention of {r} ({}) is shorter than that of {} ({}): a rollup must be kept at least as long as its source",
                    humantime::format_duration(self.of(r)),
                    r.source(),
                    humantime::format_duration(self.of(r.source()))
                )));
            }
        }
        Ok(())
    }
}

/// The time-series store.
///
/// Raw samples are kept with rollups at 5 minutes and 1 hour (min, max, sum, count,
/// last), computed when a block of raw samples is sealed. Writing the same points again,
/// in any order, leaves the same blocks and rollups: replay is idempotent.
#[async_trait]
pub trait TimeSeriesStore: Send + Sync + Debug {
    /// Short engine name (`embedded`, `scylla`).
    fn engine(&self) -> &'static str;

    /// Retention of each resolution.
    fn retention(&self) -> &Retention;

    /// Writes points and updates the rollups they fall in; a point with the key of a stored
    /// one replaces it (idempotent). Points older than the raw retention are not stored
    /// raw but still count in the rollups that keep them. Rejects the whole call with
    /// [`Error::InvalidQuery`] if a value is not finite.
    async fn write(&self, points: &[Point]) -> Result<()>;

    /// Aggregates a series into buckets, oldest first, from the coarsest resolution that
    /// serves the interval ([`Resolution::for_interval`]). Fails with
    /// [`Error::InvalidQuery`] when the range is empty or would give more than
    /// [`MAX_BUCKETS`] buckets.
    async fn query(&self, query: &RangeQuery) -> Result<Vec<Bucket>> {
        self.query_resolution(query, Resolution::for_interval(query.interval_micros))
            .await
    }

    /// As [`query`](TimeSeriesStore::query), from the named resolution only. The interval
    /// must be a multiple of a rollup's width ([`Error::InvalidQuery`] otherwise).
    async fn query_resolution(
        &self,
        query: &RangeQuery,
        resolution: Resolution,
    ) -> Result<Vec<Bucket>>;

    /// Several range queries in one call, answered in the order given: a chart (the
    /// metrics of one agent over one range at one interval), each from the resolution
    /// [`query`](TimeSeriesStore::query) would pick. The answers equal those of `query`
    /// one by one; the first query that fails fails the call. Engines answer the queries
    /// of one agent, range and interval with one read of the store.
    async fn query_many(&self, queries: &[RangeQuery]) -> Result<Vec<Vec<Bucket>>> {
        let mut out = Vec::with_capacity(queries.len());
        for q in queries {
            out.push(self.query(q).await?);
        }
        Ok(out)
    }

    /// The raw samples of each of `series` (answers in that order) of one agent in
    /// `[start_micros, end_micros)`, oldest first, one per timestamp (the newest write of
    /// a timestamp): what raw-resolution buckets are made of, for evaluators that need the
    /// samples themselves (PromQL). Raw samples older than the raw retention are gone. The
    /// range is clamped to ±2^62 µs; an empty one answers no samples.
    async fn points(
        &self,
        tenant_id: &str,
        agent_id: &str,
        series: &[&str],
        start_micros: i64,
        end_micros: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>>;

    /// Series names stored for an agent.
    async fn series(&self, tenant_id: &str, agent_id: &str) -> Result<Vec<String>>;

    /// Up to `limit` series of the whole store, every tenant and agent, ordered by
    /// (tenant, agent, series): for tools that compare or check a whole store
    /// (`fleetstream verify`, `fleetstream replay`). Scans the store's list of series.
    async fn list_series(&self, limit: usize) -> Result<Vec<SeriesKey>> {
        let _ = limit;
        Err(Error::Config(format!(
            "the {} time-series store cannot list every series",
            self.engine()
        )))
    }

    /// Removes what is past retention at `now_micros`; returns how many rows went. An
    /// engine whose rows expire by themselves (TTL) returns 0.
    async fn expire(&self, now_micros: i64) -> Result<u64>;
}

/// Sample times beyond ±2^62 µs (±146,000 years) are refused by every engine, so that no
/// bucket arithmetic overflows.
pub const MAX_ABS_TS_MICROS: i64 = fleet_schemas::time::MAX_ABS_MICROS;

/// Checks points before a write (shared by every engine): values must be finite (NaN
/// would poison min/max) and times within ±[`MAX_ABS_TS_MICROS`].
pub fn validate_points(points: &[Point]) -> Result<()> {
    if let Some(bad) = points.iter().find(|p| !p.value.is_finite()) {
        return Err(Error::InvalidQuery(format!(
            "value of {}/{}/{} at {} is {}: only finite values can be stored",
            bad.tenant_id, bad.agent_id, bad.series, bad.ts_micros, bad.value
        )));
    }
    if let Some(bad) = points
        .iter()
        .find(|p| p.ts_micros.unsigned_abs() > MAX_ABS_TS_MICROS.unsigned_abs())
    {
        return Err(Error::InvalidQuery(format!(
            "time of {}/{}/{} is {} µs: beyond ±2^62 µs from the epoch",
            bad.tenant_id, bad.agent_id, bad.series, bad.ts_micros
        )));
    }
    Ok(())
}

/// Checks a query's arguments for `resolution` (shared by every engine).
pub fn validate_query(q: &RangeQuery, resolution: Resolution) -> Result<()> {
    validate_range(q)?;
    if let Some(w) = resolution.width_micros() {
        if q.interval_micros % w != 0 {
            return Err(Error::InvalidQuery(format!(
                "the {resolution} rollup cannot serve an interval of {} µs: use a multiple of {w} µs",
                q.interval_micros
            )));
        }
    }
    Ok(())
}

/// The scan range of a query: from the start of the bucket holding `start` to the end of
/// the bucket holding `end - 1`, so that every bucket is whole.
pub fn bucket_range(q: &RangeQuery) -> (i64, i64) {
    let from = bucket_start(q.start_micros, q.interval_micros);
    let last = bucket_start(q.end_micros.saturating_sub(1), q.interval_micros);
    (from, last.saturating_add(q.interval_micros))
}

/// Checks a range query's arguments (shared by every engine).
pub fn validate_range(q: &RangeQuery) -> Result<()> {
    if q.interval_micros <= 0 {
        return Err(Error::InvalidQuery("interval must be positive".into()));
    }
    if q.end_micros <= q.start_micros {
        return Err(Error::InvalidQuery("end must be after start".into()));
    }
    if let Some(t) = [q.start_micros, q.end_micros]
        .into_iter()
        .find(|t| t.unsigned_abs() > MAX_ABS_TS_MICROS.unsigned_abs())
    {
        return Err(Error::InvalidQuery(format!(
            "time {t} µs is beyond ±2^62 µs from the epoch"
        )));
    }
    // Within ±2^62 each, so the difference fits an i64 (checked all the same).
    let buckets = q
        .end_micros
        .checked_sub(q.start_micros)
        .map_or(i64::MAX, |span| span / q.interval_micros);
    if buckets > MAX_BUCKETS {
        return Err(Error::InvalidQuery(format!(
            "{buckets} buckets requested, at most {MAX_BUCKETS}: widen the interval or narrow the range"
        )));
    }
    Ok(())
}

/// Start of the bucket holding `ts`: the greatest multiple of `interval` (since the epoch)
/// not after `ts`. `interval` must be positive.
pub fn bucket_start(ts_micros: i64, interval_micros: i64) -> i64 {
    ts_micros.div_euclid(interval_micros) * interval_micros
}

/// The mean of a bucket: `sum / count`, kept inside `[min, max]`. Summing rounds, so nine
/// samples of 11.66 can sum to an average of 11.659999999999998, below their minimum; a
/// reader must never see an average outside the values it averages. A NaN passes through.
pub fn mean(sum: f64, count: u64, min: f64, max: f64) -> f64 {
    let avg = sum / count as f64;
    if avg < min {
        min
    } else if avg > max {
        max
    } else {
        avg
    }
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
        b.avg = mean(b.sum, b.count, b.min, b.max);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_average_stays_between_the_minimum_and_the_maximum() {
        // Nine samples of 11.66 sum to 104.94000000000001 / 9 = 11.659999999999998.
        let b = aggregate_buckets((0..9).map(|i| (i, 11.66)), 60_000_000);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].count, 9);
        assert!(b[0].min <= b[0].avg && b[0].avg <= b[0].max, "{:?}", b[0]);
        assert_eq!(b[0].avg, 11.66);
        assert!(mean(f64::NAN, 1, 0.0, 1.0).is_nan());
        assert_eq!(mean(10.0, 4, 1.0, 5.0), 2.5);
    }
}
