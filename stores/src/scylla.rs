//! The ScyllaDB (or Apache Cassandra) time-series store, over CQL with the `scylla` driver.
//!
//! URL: `scylla://[user:password@]host[:port][,host2[:port]...][/keyspace][?option=value&...]`.
//! The port defaults to 9042 and the keyspace to `fleetstream`. Options:
//!
//! * `replication_factor=N` (default 1): replication of the keyspace when this store
//!   creates it, with `SimpleStrategy`;
//! * `datacenter=NAME`: use `NetworkTopologyStrategy` with `N` replicas in `NAME` instead;
//! * `connect_timeout=5s` (humantime, default 5 s): bound on connecting to the cluster.
//!
//! An existing keyspace is used as it is (create it yourself for a production
//! replication); tables are created if missing.
//!
//! # Schema
//!
//! The four time tables are partitioned by `(tenant, agent, series, part)`, where `part`
//! is the start (µs since the epoch) of a fixed, epoch-aligned time window, and clustered
//! by time, so a range query reads a few ordered slices:
//!
//! | table | clustering | columns | partition window | TTL |
//! | --- | --- | --- | --- | --- |
//! | `raw` | `ts` (µs) | `value` | 1 day | raw retention, from `ts` |
//! | `rollup_1m` | `start` (µs) | `min, max, sum, count, last, last_ts` | 1 day | 1m retention, from the bucket's end |
//! | `rollup_5m` | `start` | same | 7 days | 5m retention, from the bucket's end |
//! | `rollup_1h` | `start` | same | 30 days | 1h retention, from the bucket's end |
//! | `parts` | `(res, part)` | — | partition `(tenant, agent, series)` | the window's end plus its retention |
//! | `series` | `series` | — | partition `(tenant, agent)` | none |
//!
//! Each window is a multiple of the bucket width of its resolution and of the next
//! coarser one, so a rollup bucket and all its source rows lie in one partition each.
//! `parts` lists the windows that hold rows, so that a query reads only partitions that
//! exist, however wide its range. The time tables use `TimeWindowCompactionStrategy`
//! with about 24 windows per retention (whole sstables are dropped once every row in
//! them has expired) and a `default_time_to_live` equal to the retention (ScyllaDB can
//! refuse TWCS without one); every write sets its own TTL anyway, counted from the
//! sample's time (raw) or the bucket's end (rollups), so a row expires when the embedded
//! store's [`expire`](crate::TimeSeriesStore::expire) would delete it. TTLs are capped
//! at CQL's 20 years. `gc_grace_seconds` is 3 hours (the default hint window): rows are
//! almost never deleted, only expired.
//!
//! # Write path, and what it costs
//!
//! A write mirrors the embedded engine ([`crate::timeseries`]) step by step:
//!
//! 1. Points are deduplicated by key (the later one in the call wins; within a CQL batch
//!    equal timestamps would otherwise pick the larger value).
//! 2. Raw points within retention are upserted with `USING TTL`, in unlogged batches of
//!    one partition (one series-day) each, up to 200 rows a batch. Points past the raw
//!    retention are not stored raw but are kept in memory for step 3.
//! 3. For each rollup, finest first, every bucket the write touched is recomputed from its
//!    source (raw samples plus the too-old points of this call for 1 minute, the 1-minute
//!    rows for 5 minutes, the 5-minute rows for the hour) and upserted, again in unlogged
//!    single-partition batches. Buckets wholly past retention are skipped, and a bucket
//!    whose source is partly past retention is *frozen* once stored: it already counts
//!    samples that are gone, so it is not recomputed (one point read per such bucket).
//! 4. Series names and `parts` entries are written once per process (a bounded in-memory
//!    set remembers what this process has written).
//!
//! Source reads are range reads over runs of adjacent touched buckets of one partition.
//! So the typical live write (a report: one sample of each of S series at the current
//! time) costs per series 1 raw upsert, 3 small reads (at most a minute of samples, five
//! 1-minute rows, twelve 5-minute rows) and 3 small upserts: 7 dependent round trips
//! (the raw upsert, then a read and an upsert per rollup level), with the series in
//! parallel (at most 32 requests in flight), plus one more the first time a series or a
//! window is seen. A replayed or backfilled batch costs a few range reads and batches per
//! series-day instead of per point (the conformance suite writes a day of 10 s samples of
//! two series, 11,520 points, in 24 calls).
//!
//! Why it is built this way: the rollups must be a function of the stored samples so that
//! replaying a topic (at-least-once delivery) leaves every row unchanged. CQL has no
//! multi-row transactions, counters are not idempotent and lightweight transactions cost
//! four round trips each, so every write recomputes the buckets it touched from their
//! source, at the price of the reads above. Requests carry client-side monotonic
//! timestamps, so a later recomputation always replaces an earlier one. Two writers
//! recomputing the same bucket concurrently could race (the embedded store serializes
//! them in a write transaction); the projections never do that, because one agent's
//! records live on one topic partition consumed by one projection at a time. A write that
//! fails part way leaves rows that the retried (or replayed) write repairs.
//!
//! Reads use the session's consistency (`LOCAL_QUORUM` by default) like the writes, so
//! a rollup is always recomputed from what was just written.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    DbError, ExecutionError, NewSessionError, NextPageError, NextRowError, PagerExecutionError,
    PrepareError, RequestAttemptError,
};
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::timeseries::{bucket_start, merge_buckets};
use crate::{
    bucket_range, validate_query, Bucket, Point, RangeQuery, Resolution, Result, Retention,
    StoreError, TimeSeriesStore,
};

const DEFAULT_PORT: u16 = 9042;
const DEFAULT_KEYSPACE: &str = "fleetstream";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests in flight at once for one call.
const CONCURRENCY: usize = 32;
/// Rows in one unlogged (single-partition) batch.
const MAX_BATCH: usize = 200;
/// Touched buckets at most this many widths apart are read with one range read.
const MAX_GAP_BUCKETS: i64 = 2;
/// CQL's largest TTL: 20 years, in seconds.
const MAX_TTL_SECS: i64 = 630_720_000;
/// Entries of the written-once set before it is forgotten and starts over.
const WRITTEN_CACHE_CAP: usize = 200_000;

const MICROS_PER_SEC: i64 = 1_000_000;
const DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Width (µs) of the time window of one partition of a resolution's table.
fn partition_width(r: Resolution) -> i64 {
    match r {
        Resolution::Raw | Resolution::OneMinute => DAY,
        Resolution::FiveMinutes => 7 * DAY,
        Resolution::OneHour => 30 * DAY,
    }
}

fn table_name(r: Resolution) -> &'static str {
    match r {
        Resolution::Raw => "raw",
        Resolution::OneMinute => "rollup_1m",
        Resolution::FiveMinutes => "rollup_5m",
        Resolution::OneHour => "rollup_1h",
    }
}

fn rollup_index(r: Resolution) -> Option<usize> {
    Resolution::ROLLUPS.iter().position(|x| *x == r)
}

/// The parsed `scylla://` URL.
#[derive(Clone, PartialEq, Eq)]
struct ScyllaUrl {
    nodes: Vec<String>,
    keyspace: String,
    replication_factor: u32,
    datacenter: Option<String>,
    connect_timeout: Duration,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for ScyllaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaUrl")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication_factor", &self.replication_factor)
            .field("datacenter", &self.datacenter)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl ScyllaUrl {
    fn replication(&self) -> String {
        match &self.datacenter {
            None => format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ),
            Some(dc) => format!(
                "{{'class': 'NetworkTopologyStrategy', '{dc}': {}}}",
                self.replication_factor
            ),
        }
    }
}

fn config(url: &str, why: impl std::fmt::Display) -> StoreError {
    // Never echo a password.
    let shown = match url.split_once("://").and_then(|(s, rest)| {
        let (auth, tail) = rest.split_once('/').unwrap_or((rest, ""));
        auth.rsplit_once('@')
            .map(|(_, hosts)| format!("{s}://***@{hosts}/{tail}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    };
    StoreError::Config(format!("time-series URL {shown:?}: {why}"))
}

fn is_identifier(s: &str, max: usize) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= max
}

fn parse_node(url: &str, node: &str) -> Result<String> {
    if node.is_empty() {
        return Err(config(url, "empty host"));
    }
    if node
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(config(url, format!("bad host {node:?}")));
    }
    let (host, port) = if let Some(rest) = node.strip_prefix('[') {
        // [v6]:port or [v6]
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| config(url, format!("bad host {node:?}: missing ']'")))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| config(url, format!("bad host {node:?}")))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match node.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (node.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" || host.contains(':') && !host.starts_with('[') {
        return Err(config(url, format!("bad host {node:?}")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(config(url, format!("bad port {p:?} in {node:?}"))),
        },
    };
    Ok(format!("{host}:{port}"))
}

fn parse_url(url: &str) -> Result<ScyllaUrl> {
    let rest = url
        .strip_prefix("scylla://")
        .ok_or_else(|| config(url, "expected scylla://host:port/keyspace"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
        return Err(config(url, "fragments (#) are not supported"));
    }
    let (authority, path) = match rest.split_once('/') {
        Some((a, p)) => (a, p),
        None => (rest, ""),
    };
    let (credentials, hosts) = match authority.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let (user, password) = userinfo
                .split_once(':')
                .ok_or_else(|| config(url, "credentials must be user:password"))?;
            if user.is_empty() {
                return Err(config(url, "empty user name"));
            }
            (Some((user.to_owned(), password.to_owned())), hosts)
        }
        None => (None, authority),
    };
    if hosts.is_empty() {
        return Err(config(url, "no host: expected scylla://host:port/keyspace"));
    }
    let nodes = hosts
        .split(',')
        .map(|n| parse_node(url, n))
        .collect::<Result<Vec<_>>>()?;
    let path = path.strip_suffix('/').unwrap_or(path);
    let keyspace = if path.is_empty() {
        DEFAULT_KEYSPACE.to_owned()
    } else if is_identifier(path, 48) {
        // Unquoted CQL identifiers are case-insensitive: store the folded name.
        path.to_ascii_lowercase()
    } else {
        return Err(config(
            url,
            format!("bad keyspace {path:?}: a letter, then letters, digits or '_', at most 48"),
        ));
    };
    let mut parsed = ScyllaUrl {
        nodes,
        keyspace,
        replication_factor: 1,
        datacenter: None,
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        credentials,
    };
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "replication_factor" => match value.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => parsed.replication_factor = n,
                _ => {
                    return Err(config(
                        url,
                        format!("replication_factor must be 1 to 100, not {value:?}"),
                    ))
                }
            },
            "datacenter" => {
                let valid = !value.is_empty()
                    && value.len() <= 128
                    && value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if !valid {
                    return Err(config(url, format!("bad datacenter name {value:?}")));
                }
                parsed.datacenter = Some(value.to_owned());
            }
            "connect_timeout" => match humantime::parse_duration(value) {
                Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(600) => {
                    parsed.connect_timeout = d
                }
                _ => {
                    return Err(config(
                        url,
                        format!("connect_timeout must be a duration from 1ms to 10m (like 5s), not {value:?}"),
                    ))
                }
            },
            other => {
                return Err(config(
                    url,
                    format!(
                        "unknown option {other:?} (known: replication_factor, datacenter, connect_timeout)"
                    ),
                ))
            }
        }
    }
    Ok(parsed)
}

// ----------------------------------------------------------------------------------------
// Errors
// ----------------------------------------------------------------------------------------

fn attempt_is_unavailable(e: &RequestAttemptError) -> bool {
    match e {
        RequestAttemptError::BrokenConnectionError(_)
        | RequestAttemptError::UnableToAllocStreamId => true,
        RequestAttemptError::DbError(db, _) => matches!(
            db,
            DbError::Unavailable { .. }
                | DbError::Overloaded
                | DbError::IsBootstrapping
                | DbError::ReadTimeout { .. }
                | DbError::WriteTimeout { .. }
                | DbError::ReadFailure { .. }
                | DbError::WriteFailure { .. }
                | DbError::RateLimitReached { .. }
                | DbError::TruncateError
        ),
        _ => false,
    }
}

fn prepare_is_unavailable(e: &PrepareError) -> bool {
    match e {
        PrepareError::ConnectionPoolError(_) => true,
        PrepareError::AllAttemptsFailed { first_attempt } => attempt_is_unavailable(first_attempt),
        _ => false,
    }
}

fn execution_is_unavailable(e: &ExecutionError) -> bool {
    match e {
        ExecutionError::ConnectionPoolError(_)
        | ExecutionError::RequestTimeout(_)
        | ExecutionError::EmptyPlan
        | ExecutionError::SchemaAgreementError(_)
        | ExecutionError::MetadataError(_) => true,
        ExecutionError::LastAttemptError(a) => attempt_is_unavailable(a),
        ExecutionError::PrepareError(p) => prepare_is_unavailable(p),
        _ => false,
    }
}

fn classify(unavailable: bool, what: &str, e: impl std::fmt::Display) -> StoreError {
    if unavailable {
        StoreError::Unavailable(format!("scylla: {what}: {e}"))
    } else {
        StoreError::Internal(format!("scylla: {what}: {e}"))
    }
}

fn exec_err(what: &str) -> impl Fn(ExecutionError) -> StoreError + '_ {
    move |e| classify(execution_is_unavailable(&e), what, e)
}

fn prepare_err(what: &str) -> impl Fn(PrepareError) -> StoreError + '_ {
    move |e| classify(prepare_is_unavailable(&e), what, e)
}

fn next_page_is_unavailable(e: &NextPageError) -> bool {
    match e {
        NextPageError::RequestFailure(r) => {
            execution_is_unavailable(&r.clone().into_execution_error())
        }
        _ => false,
    }
}

fn pager_err(what: &str) -> impl Fn(PagerExecutionError) -> StoreError + '_ {
    move |e| {
        let unavailable = match &e {
            PagerExecutionError::PrepareError(p) => prepare_is_unavailable(p),
            PagerExecutionError::NextPageError(n) => next_page_is_unavailable(n),
            PagerExecutionError::SchemaAgreementError(_)
            | PagerExecutionError::MetadataError(_) => true,
            _ => false,
        };
        classify(unavailable, what, e)
    }
}

fn row_err(what: &str) -> impl Fn(NextRowError) -> StoreError + '_ {
    move |e| {
        let unavailable = match &e {
            NextRowError::NextPageError(n) => next_page_is_unavailable(n),
            _ => false,
        };
        classify(unavailable, what, e)
    }
}

fn session_err(nodes: &[String], e: NewSessionError) -> StoreError {
    match e {
        NewSessionError::EmptyKnownNodesList | NewSessionError::IllegalConfig(_) => {
            StoreError::Config(format!("scylla: {e}"))
        }
        e => StoreError::Unavailable(format!(
            "scylla: cannot connect to {}: {e}",
            nodes.join(",")
        )),
    }
}

// ----------------------------------------------------------------------------------------
// The store
// ----------------------------------------------------------------------------------------

/// Statements of one rollup table.
#[derive(Debug)]
struct RollupStatements {
    /// (tenant, agent, series, part, start, min, max, sum, count, last, last_ts, ttl)
    insert: PreparedStatement,
    /// (tenant, agent, series, part, start)
    delete: PreparedStatement,
    /// (tenant, agent, series, part, from, to) → (start, min, max, sum, count, last, last_ts)
    select: PreparedStatement,
    /// (tenant, agent, series, part, start) → (start)
    exists: PreparedStatement,
}

/// Every statement, prepared once at connect.
#[derive(Debug)]
struct Statements {
    /// (tenant, agent, series, part, ts, value, ttl)
    insert_raw: PreparedStatement,
    /// (tenant, agent, series, part, from, to) → (ts, value)
    select_raw: PreparedStatement,
    /// Indexed like [`Resolution::ROLLUPS`].
    rollups: Vec<RollupStatements>,
    /// (tenant, agent, series)
    insert_series: PreparedStatement,
    /// (tenant, agent) → (series)
    select_series: PreparedStatement,
    /// (tenant, agent, series, res, part, ttl)
    insert_part: PreparedStatement,
    /// (tenant, agent, series, res, first part, last part) → (part)
    select_parts: PreparedStatement,
}

/// What this process already wrote once: a series name (`res` None) or a `parts` entry.
type WrittenKey = (String, String, String, Option<Resolution>, i64);

/// The ScyllaDB (or Cassandra) time-series store.
pub struct ScyllaTimeSeries {
    session: Session,
    keyspace: String,
    nodes: Vec<String>,
    retention: Retention,
    st: Statements,
    written: Mutex<HashSet<WrittenKey>>,
}

impl std::fmt::Debug for ScyllaTimeSeries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaTimeSeries")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// TTL (s) of a row that must go at `expires_at` µs, at `now` µs: at least 1 (0 would
/// mean "never"), at most CQL's 20 years.
fn ttl_secs(expires_at: i64, now: i64) -> i32 {
    let left = expires_at.saturating_sub(now);
    let secs = left
        .saturating_add(MICROS_PER_SEC - 1)
        .div_euclid(MICROS_PER_SEC);
    // Clamped into 1..=MAX_TTL_SECS, which fits an i32.
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).unwrap_or(i32::MAX)
}

fn retention_micros(retention: &Retention, r: Resolution) -> i64 {
    i64::try_from(retention.of(r).as_micros()).unwrap_or(i64::MAX)
}

/// Compaction and default TTL of a time table kept for `keep`.
fn time_table_options(keep: Duration) -> String {
    let keep_secs = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
    // About 24 compaction windows per retention (ScyllaDB refuses more than 50 by default).
    let window_hours = (keep_secs / 3600 + 23) / 24;
    let window_hours = window_hours.max(1);
    format!(
        "compaction = {{'class': 'TimeWindowCompactionStrategy', \
         'compaction_window_unit': 'HOURS', 'compaction_window_size': '{window_hours}'}} \
         AND default_time_to_live = {} AND gc_grace_seconds = 10800",
        keep_secs.clamp(1, MAX_TTL_SECS)
    )
}

/// A rollup row as read back: the bucket and the time of its latest sample.
type Row = (Bucket, i64);

fn sample(ts: i64, v: f64) -> Row {
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
}

type RollupColumns = (i64, f64, f64, f64, i64, f64, i64);

fn from_columns(c: RollupColumns) -> Result<Row> {
    let (start, min, max, sum, count, last, last_ts) = c;
    let count = u64::try_from(count).map_err(|_| {
        StoreError::Internal(format!("scylla: rollup row at {start} has count {count}"))
    })?;
    Ok((
        Bucket {
            start_micros: start,
            min,
            max,
            avg: if count == 0 { 0.0 } else { sum / count as f64 },
            sum,
            count,
            last,
        },
        last_ts,
    ))
}

/// Folds rows (in time order, in several slices) into buckets with [`merge_buckets`],
/// carrying the last, possibly unfinished, bucket into the next slice: the result equals
/// one `merge_buckets` over all rows, to the last bit of every sum.
struct Merger {
    interval: i64,
    done: Vec<Bucket>,
    carry: Option<Bucket>,
}

impl Merger {
    fn new(interval: i64) -> Self {
        Merger {
            interval,
            done: Vec::new(),
            carry: None,
        }
    }

    fn push(&mut self, rows: impl IntoIterator<Item = Bucket>) {
        let mut merged = merge_buckets(self.carry.take().into_iter().chain(rows), self.interval);
        self.carry = merged.pop();
        self.done.append(&mut merged);
    }

    fn finish(mut self) -> Vec<Bucket> {
        self.done.extend(self.carry);
        self.done
    }
}

/// Runs futures, at most [`CONCURRENCY`] at a time; the first error wins.
async fn run_all<F, T>(futures: Vec<F>) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>>,
{
    futures::stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// A `parts` row: (tenant, agent, series, res, part, ttl).
type PartRow<'a> = (&'a str, &'a str, &'a str, &'static str, i64, i32);
/// A series key borrowed from the points of one write.
type SeriesKey<'a> = (&'a str, &'a str, &'a str);
/// (tenant, agent, series, bucket or partition start µs).
type TimeKey<'a> = (&'a str, &'a str, &'a str, i64);

impl ScyllaTimeSeries {
    /// Connects to `scylla://host:9042[,host2:9042]/keyspace` (see the module docs for the
    /// options), creates the keyspace and the tables if missing, and prepares the
    /// statements. Fails with [`StoreError::Config`] for a bad URL or retention and
    /// [`StoreError::Unavailable`] when the cluster cannot be reached in time.
    #[tracing::instrument(skip(url, retention))]
    pub async fn connect(url: &str, retention: Retention) -> Result<ScyllaTimeSeries> {
        retention.validate()?;
        let cfg = parse_url(url)?;
        let mut builder = SessionBuilder::new()
            .known_nodes(&cfg.nodes)
            .connection_timeout(cfg.connect_timeout)
            .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
        if let Some((user, password)) = &cfg.credentials {
            builder = builder.user(user, password);
        }
        // The driver bounds each connection attempt; bound the whole start-up too
        // (resolution, control connection, metadata).
        let session = match tokio::time::timeout(cfg.connect_timeout * 2, builder.build()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(session_err(&cfg.nodes, e)),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "scylla: no session with {} within {:?}",
                    cfg.nodes.join(","),
                    cfg.connect_timeout * 2
                )))
            }
        };
        let ks = cfg.keyspace.clone();
        create_schema(&session, &cfg, &retention).await?;
        let st = prepare_all(&session, &ks).await?;
        tracing::info!(nodes = %cfg.nodes.join(","), keyspace = %ks, "scylla time-series store ready");
        Ok(ScyllaTimeSeries {
            session,
            keyspace: ks,
            nodes: cfg.nodes,
            retention,
            st,
            written: Mutex::new(HashSet::new()),
        })
    }

    /// Keyspace in use.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    fn already_written(&self, key: &WrittenKey) -> bool {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    fn remember_written(&self, keys: impl IntoIterator<Item = WrittenKey>) {
        let mut set = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() > WRITTEN_CACHE_CAP {
            set.clear();
        }
        set.extend(keys);
    }

    /// Executes `stmt` once per row, in unlogged batches of at most [`MAX_BATCH`] rows. All
    /// rows must belong to one partition.
    async fn upsert_partition<V>(
        &self,
        stmt: &PreparedStatement,
        rows: Vec<V>,
        what: &str,
    ) -> Result<()>
    where
        V: scylla::serialize::row::SerializeRow,
    {
        let mut rows = rows;
        while !rows.is_empty() {
            let rest = rows.split_off(rows.len().min(MAX_BATCH));
            if rows.len() == 1 {
                if let Some(row) = rows.pop() {
                    self.session
                        .execute_unpaged(stmt, row)
                        .await
                        .map_err(exec_err(what))?;
                }
            } else {
                let mut batch = Batch::new(BatchType::Unlogged);
                for _ in 0..rows.len() {
                    batch.append_statement(stmt.clone());
                }
                batch.set_is_idempotent(true);
                self.session
                    .batch(&batch, &rows)
                    .await
                    .map_err(exec_err(what))?;
            }
            rows = rest;
        }
        Ok(())
    }

    /// Series names not yet written by this process.
    async fn write_series(&self, names: &BTreeSet<SeriesKey<'_>>) -> Result<()> {
        let mut by_agent: BTreeMap<(&str, &str), Vec<SeriesKey<'_>>> = BTreeMap::new();
        let mut new = Vec::new();
        for &(t, a, s) in names {
            let key = (t.to_owned(), a.to_owned(), s.to_owned(), None, 0);
            if !self.already_written(&key) {
                by_agent.entry((t, a)).or_default().push((t, a, s));
                new.push(key);
            }
        }
        if new.is_empty() {
            return Ok(());
        }
        run_all(
            by_agent
                .into_values()
                .map(|rows| {
                    self.upsert_partition(&self.st.insert_series, rows, "writing series names")
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        self.remember_written(new);
        Ok(())
    }

    /// `parts` entries (windows of `res` that hold rows) not yet written by this process.
    async fn write_parts(
        &self,
        res: Resolution,
        parts: &BTreeSet<TimeKey<'_>>,
        now: i64,
    ) -> Result<()> {
        let keep = retention_micros(&self.retention, res);
        let width = partition_width(res);
        let mut by_series: BTreeMap<SeriesKey<'_>, Vec<PartRow<'_>>> = BTreeMap::new();
        let mut new = Vec::new();
        for &(t, a, s, part) in parts {
            let key = (t.to_owned(), a.to_owned(), s.to_owned(), Some(res), part);
            if self.already_written(&key) {
                continue;
            }
            // Outlives every row of the window: each expires by its end plus the retention.
            let ttl = ttl_secs(part.saturating_add(width).saturating_add(keep), now);
            by_series
                .entry((t, a, s))
                .or_default()
                .push((t, a, s, res.as_str(), part, ttl));
            new.push(key);
        }
        if new.is_empty() {
            return Ok(());
        }
        run_all(
            by_series
                .into_values()
                .map(|rows| {
                    self.upsert_partition(&self.st.insert_part, rows, "writing the partition index")
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        self.remember_written(new);
        Ok(())
    }

    /// Rows of `res` in `[from, to)` of one partition, in time order.
    async fn read_rows(
        &self,
        res: Resolution,
        (t, a, s, part): TimeKey<'_>,
        from: i64,
        to: i64,
    ) -> Result<Vec<Row>> {
        let what = "reading rows";
        let mut out = Vec::new();
        match rollup_index(res) {
            None => {
                let mut rows = self
                    .session
                    .execute_iter(self.st.select_raw.clone(), (t, a, s, part, from, to))
                    .await
                    .map_err(pager_err(what))?
                    .rows_stream::<(i64, f64)>()
                    .map_err(|e| StoreError::Internal(format!("scylla: raw rows: {e}")))?;
                while let Some(row) = rows.next().await {
                    let (ts, v) = row.map_err(row_err(what))?;
                    out.push(sample(ts, v));
                }
            }
            Some(i) => {
                let mut rows = self
                    .session
                    .execute_iter(self.st.rollups[i].select.clone(), (t, a, s, part, from, to))
                    .await
                    .map_err(pager_err(what))?
                    .rows_stream::<RollupColumns>()
                    .map_err(|e| StoreError::Internal(format!("scylla: rollup rows: {e}")))?;
                while let Some(row) = rows.next().await {
                    out.push(from_columns(row.map_err(row_err(what))?)?);
                }
            }
        }
        Ok(out)
    }

    async fn rollup_row_exists(
        &self,
        i: usize,
        (t, a, s, start): TimeKey<'_>,
        part: i64,
    ) -> Result<bool> {
        let what = "reading a rollup row";
        let result = self
            .session
            .execute_unpaged(&self.st.rollups[i].exists, (t, a, s, part, start))
            .await
            .map_err(exec_err(what))?
            .into_rows_result()
            .map_err(|e| StoreError::Internal(format!("scylla: {what}: {e}")))?;
        Ok(result.rows_num() > 0)
    }

    /// Upserts the raw points within retention, one batch per partition.
    async fn write_raw(
        &self,
        rows: BTreeMap<TimeKey<'_>, Vec<(i64, f64)>>,
        now: i64,
    ) -> Result<()> {
        let keep = retention_micros(&self.retention, Resolution::Raw);
        let parts: BTreeSet<TimeKey<'_>> = rows.keys().copied().collect();
        run_all(
            rows.into_iter()
                .map(|((t, a, s, part), samples)| {
                    let values: Vec<_> = samples
                        .into_iter()
                        .map(|(ts, v)| {
                            (t, a, s, part, ts, v, ttl_secs(ts.saturating_add(keep), now))
                        })
                        .collect();
                    self.upsert_partition(&self.st.insert_raw, values, "writing raw samples")
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        self.write_parts(Resolution::Raw, &parts, now).await
    }

    /// Recomputes the buckets of rollup `r` that hold `touched` (bucket starts of the
    /// finer level), as the embedded engine does; returns the buckets it recomputed,
    /// which the next level recomputes in turn.
    async fn roll_up<'p>(
        &self,
        r: Resolution,
        touched: &BTreeSet<TimeKey<'p>>,
        old: &BTreeMap<TimeKey<'p>, BTreeMap<i64, f64>>,
        now: i64,
    ) -> Result<BTreeSet<TimeKey<'p>>> {
        let (Some(width), Some(i)) = (r.width_micros(), rollup_index(r)) else {
            return Ok(BTreeSet::new());
        };
        let cutoff = self.retention.cutoff_micros(r, now);
        let source = r.source();
        let source_cutoff = self.retention.cutoff_micros(source, now);
        let pw = partition_width(r);
        let mut buckets: BTreeSet<TimeKey<'p>> = touched
            .iter()
            .map(|&(t, a, s, start)| (t, a, s, bucket_start(start, width)))
            .filter(|&(_, _, _, start)| start.saturating_add(width) > cutoff)
            .collect();

        // Frozen: part of the source is past retention and the row is stored already.
        let maybe_frozen: Vec<TimeKey<'p>> = buckets
            .iter()
            .copied()
            .filter(|k| k.3 < source_cutoff)
            .collect();
        let frozen = run_all(
            maybe_frozen
                .into_iter()
                .map(|k| async move {
                    let exists = self.rollup_row_exists(i, k, bucket_start(k.3, pw)).await?;
                    Ok(exists.then_some(k))
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        for k in frozen.into_iter().flatten() {
            buckets.remove(&k);
        }
        if buckets.is_empty() {
            return Ok(buckets);
        }

        // Read the sources: one range read per run of nearby buckets of a source partition.
        let spw = partition_width(source);
        let mut runs: Vec<(TimeKey<'p>, i64, i64)> = Vec::new();
        for &(t, a, s, start) in &buckets {
            let part = bucket_start(start, spw);
            let end = start + width;
            match runs.last_mut() {
                Some(((lt, la, ls, lp), _, run_end))
                    if (*lt, *la, *ls, *lp) == (t, a, s, part)
                        && start - *run_end <= MAX_GAP_BUCKETS * width =>
                {
                    *run_end = end
                }
                _ => runs.push(((t, a, s, part), start, end)),
            }
        }
        let slices = run_all(
            runs.into_iter()
                .map(|(key, from, to)| async move {
                    Ok((key, self.read_rows(source, key, from, to).await?))
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        let mut sources: BTreeMap<TimeKey<'p>, Vec<Row>> = BTreeMap::new();
        for ((t, a, s, _), rows) in slices {
            for row in rows {
                let start = bucket_start(row.0.start_micros, width);
                if buckets.contains(&(t, a, s, start)) {
                    sources.entry((t, a, s, start)).or_default().push(row);
                }
            }
        }

        // Recompute every bucket; upsert (or delete the emptied ones) per partition.
        let keep = retention_micros(&self.retention, r);
        let mut upserts: BTreeMap<TimeKey<'p>, Vec<_>> = BTreeMap::new();
        let mut deletes = Vec::new();
        for &key in &buckets {
            let (t, a, s, start) = key;
            let mut rows = sources.remove(&key).unwrap_or_default();
            if source == Resolution::Raw {
                // The raw samples, merged with this call's points too old to keep raw.
                if let Some(extra) = old.get(&key) {
                    let mut merged: BTreeMap<i64, f64> = extra.clone();
                    for (b, ts) in rows {
                        merged.insert(ts, b.last);
                    }
                    rows = merged.into_iter().map(|(ts, v)| sample(ts, v)).collect();
                }
            }
            let last_ts = rows.last().map(|(_, ts)| *ts).unwrap_or(start);
            let part = bucket_start(start, pw);
            match merge_buckets(rows.into_iter().map(|(b, _)| b), width).first() {
                Some(b) => {
                    let ttl = ttl_secs(start.saturating_add(width).saturating_add(keep), now);
                    let count = i64::try_from(b.count).unwrap_or(i64::MAX);
                    upserts.entry((t, a, s, part)).or_default().push((
                        t, a, s, part, start, b.min, b.max, b.sum, count, b.last, last_ts, ttl,
                    ));
                }
                None => deletes.push((t, a, s, part, start)),
            }
        }
        let parts: BTreeSet<TimeKey<'p>> = upserts.keys().copied().collect();
        let what = "writing rollups";
        run_all(
            upserts
                .into_values()
                .map(|rows| self.upsert_partition(&self.st.rollups[i].insert, rows, what))
                .collect::<Vec<_>>(),
        )
        .await?;
        run_all(
            deletes
                .into_iter()
                .map(|row| async move {
                    self.session
                        .execute_unpaged(&self.st.rollups[i].delete, row)
                        .await
                        .map_err(exec_err("deleting an empty rollup row"))
                        .map(|_| ())
                })
                .collect::<Vec<_>>(),
        )
        .await?;
        self.write_parts(r, &parts, now).await?;
        Ok(buckets)
    }
}

async fn create_schema(session: &Session, cfg: &ScyllaUrl, retention: &Retention) -> Result<()> {
    let ks = &cfg.keyspace;
    let what = "creating the schema";
    let mut ddl = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
        cfg.replication()
    )];
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.raw (tenant text, agent text, series text, part bigint, \
         ts bigint, value double, PRIMARY KEY ((tenant, agent, series, part), ts)) \
         WITH CLUSTERING ORDER BY (ts ASC) AND {}",
        time_table_options(retention.raw)
    ));
    for r in Resolution::ROLLUPS {
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{} (tenant text, agent text, series text, \
             part bigint, start bigint, min double, max double, sum double, count bigint, \
             last double, last_ts bigint, PRIMARY KEY ((tenant, agent, series, part), start)) \
             WITH CLUSTERING ORDER BY (start ASC) AND {}",
            table_name(r),
            time_table_options(retention.of(r))
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.parts (tenant text, agent text, series text, res text, \
         part bigint, PRIMARY KEY ((tenant, agent, series), res, part))"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.series (tenant text, agent text, series text, \
         PRIMARY KEY ((tenant, agent), series))"
    ));
    for stmt in ddl {
        session
            .query_unpaged(stmt, &[])
            .await
            .map_err(exec_err(what))?;
    }
    Ok(())
}

async fn prepare_all(session: &Session, ks: &str) -> Result<Statements> {
    let what = "preparing statements";
    let prepare = |cql: String| async move {
        let mut p = session.prepare(cql).await.map_err(prepare_err(what))?;
        p.set_is_idempotent(true);
        Ok::<_, StoreError>(p)
    };
    let key = "tenant = ? AND agent = ? AND series = ? AND part = ?";
    let mut rollups = Vec::new();
    for r in Resolution::ROLLUPS {
        let table = table_name(r);
        rollups.push(RollupStatements {
            insert: prepare(format!(
                "INSERT INTO {ks}.{table} (tenant, agent, series, part, start, min, max, sum, \
                 count, last, last_ts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) USING TTL ?"
            ))
            .await?,
            delete: prepare(format!(
                "DELETE FROM {ks}.{table} WHERE {key} AND start = ?"
            ))
            .await?,
            select: prepare(format!(
                "SELECT start, min, max, sum, count, last, last_ts FROM {ks}.{table} \
                 WHERE {key} AND start >= ? AND start < ?"
            ))
            .await?,
            exists: prepare(format!(
                "SELECT start FROM {ks}.{table} WHERE {key} AND start = ?"
            ))
            .await?,
        });
    }
    Ok(Statements {
        insert_raw: prepare(format!(
            "INSERT INTO {ks}.raw (tenant, agent, series, part, ts, value) \
             VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
        ))
        .await?,
        select_raw: prepare(format!(
            "SELECT ts, value FROM {ks}.raw WHERE {key} AND ts >= ? AND ts < ?"
        ))
        .await?,
        rollups,
        insert_series: prepare(format!(
            "INSERT INTO {ks}.series (tenant, agent, series) VALUES (?, ?, ?)"
        ))
        .await?,
        select_series: prepare(format!(
            "SELECT series FROM {ks}.series WHERE tenant = ? AND agent = ?"
        ))
        .await?,
        insert_part: prepare(format!(
            "INSERT INTO {ks}.parts (tenant, agent, series, res, part) VALUES (?, ?, ?, ?, ?) \
             USING TTL ?"
        ))
        .await?,
        select_parts: prepare(format!(
            "SELECT part FROM {ks}.parts WHERE tenant = ? AND agent = ? AND series = ? \
             AND res = ? AND part >= ? AND part <= ?"
        ))
        .await?,
    })
}

#[async_trait]
impl TimeSeriesStore for ScyllaTimeSeries {
    fn engine(&self) -> &'static str {
        "scylla"
    }

    fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Writes the points and recomputes the rollup buckets they touch (see the module
    /// docs for the steps and their cost). Rejects the whole call with
    /// [`StoreError::InvalidQuery`] if a value is not finite or a time is beyond ±2^62 µs.
    #[tracing::instrument(skip(self, points), fields(keyspace = %self.keyspace, points = points.len()))]
    async fn write(&self, points: &[Point]) -> Result<()> {
        if points.is_empty() {
            return Ok(());
        }
        crate::validate_points(points)?;
        let now = fleet_schemas::time::now_micros();
        let raw_cutoff = self.retention.cutoff_micros(Resolution::Raw, now);
        let minute = Resolution::OneMinute
            .width_micros()
            .unwrap_or(60 * MICROS_PER_SEC);

        // The same key twice in one call: the later one wins.
        let mut latest: BTreeMap<TimeKey<'_>, f64> = BTreeMap::new();
        for p in points {
            latest.insert(
                (
                    p.tenant_id.as_str(),
                    p.agent_id.as_str(),
                    p.series.as_str(),
                    p.ts_micros,
                ),
                p.value,
            );
        }
        let mut names: BTreeSet<SeriesKey<'_>> = BTreeSet::new();
        let mut raw: BTreeMap<TimeKey<'_>, Vec<(i64, f64)>> = BTreeMap::new();
        // Points too old to keep raw, by their 1-minute bucket: they still count there.
        let mut old: BTreeMap<TimeKey<'_>, BTreeMap<i64, f64>> = BTreeMap::new();
        let mut touched: BTreeSet<TimeKey<'_>> = BTreeSet::new();
        for (&(t, a, s, ts), &v) in &latest {
            names.insert((t, a, s));
            let bucket = (t, a, s, bucket_start(ts, minute));
            if ts >= raw_cutoff {
                raw.entry((t, a, s, bucket_start(ts, partition_width(Resolution::Raw))))
                    .or_default()
                    .push((ts, v));
            } else {
                old.entry(bucket).or_default().insert(ts, v);
            }
            touched.insert(bucket);
        }
        tracing::debug!(
            series = names.len(),
            raw_partitions = raw.len(),
            too_old = old.len(),
            minutes = touched.len(),
            "writing"
        );
        self.write_series(&names).await?;
        self.write_raw(raw, now).await?;
        for r in Resolution::ROLLUPS {
            touched = self.roll_up(r, &touched, &old, now).await?;
        }
        Ok(())
    }

    #[tracing::instrument(skip(self), fields(keyspace = %self.keyspace))]
    async fn query_resolution(
        &self,
        query: &RangeQuery,
        resolution: Resolution,
    ) -> Result<Vec<Bucket>> {
        validate_query(query, resolution)?;
        let (from, to) = bucket_range(query);
        let (t, a, s) = (
            query.tenant_id.as_str(),
            query.agent_id.as_str(),
            query.series.as_str(),
        );
        let pw = partition_width(resolution);
        let what = "reading the partition index";
        let mut parts = Vec::new();
        let mut rows = self
            .session
            .execute_iter(
                self.st.select_parts.clone(),
                (
                    t,
                    a,
                    s,
                    resolution.as_str(),
                    bucket_start(from, pw),
                    bucket_start(to.saturating_sub(1), pw),
                ),
            )
            .await
            .map_err(pager_err(what))?
            .rows_stream::<(i64,)>()
            .map_err(|e| StoreError::Internal(format!("scylla: {what}: {e}")))?;
        while let Some(row) = rows.next().await {
            parts.push(row.map_err(row_err(what))?.0);
        }
        parts.sort_unstable();
        // A few partitions at once, merged in time order.
        let reads: Vec<_> = parts
            .into_iter()
            .map(|part| self.read_rows(resolution, (t, a, s, part), from, to))
            .collect();
        let mut slices = futures::stream::iter(reads).buffered(4);
        let mut merger = Merger::new(query.interval_micros);
        while let Some(rows) = slices.next().await {
            merger.push(rows?.into_iter().map(|(b, _)| b));
        }
        Ok(merger.finish())
    }

    #[tracing::instrument(skip(self), fields(keyspace = %self.keyspace))]
    async fn series(&self, tenant_id: &str, agent_id: &str) -> Result<Vec<String>> {
        let what = "listing series";
        let mut rows = self
            .session
            .execute_iter(self.st.select_series.clone(), (tenant_id, agent_id))
            .await
            .map_err(pager_err(what))?
            .rows_stream::<(String,)>()
            .map_err(|e| StoreError::Internal(format!("scylla: {what}: {e}")))?;
        let mut names = Vec::new();
        while let Some(row) = rows.next().await {
            names.push(row.map_err(row_err(what))?.0);
        }
        Ok(names)
    }

    /// A full scan of the `series` table (token order, paged), sorted here.
    #[tracing::instrument(skip(self), fields(keyspace = %self.keyspace))]
    async fn list_series(&self, limit: usize) -> Result<Vec<crate::SeriesKey>> {
        let what = "listing every series";
        let cql = format!("SELECT tenant, agent, series FROM {}.series", self.keyspace);
        let mut rows = self
            .session
            .query_iter(cql, ())
            .await
            .map_err(pager_err(what))?
            .rows_stream::<(String, String, String)>()
            .map_err(|e| StoreError::Internal(format!("scylla: {what}: {e}")))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await {
            let (tenant_id, agent_id, series) = row.map_err(row_err(what))?;
            out.push(crate::SeriesKey {
                tenant_id,
                agent_id,
                series,
            });
        }
        out.sort();
        out.truncate(limit);
        Ok(out)
    }

    /// Rows expire by their TTL: nothing to do.
    async fn expire(&self, _now_micros: i64) -> Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = parse_url("scylla://127.0.0.1:9042").expect("parses");
        assert_eq!(u.nodes, vec!["127.0.0.1:9042"]);
        assert_eq!(u.keyspace, "fleetstream");
        assert_eq!(u.replication_factor, 1);
        assert_eq!(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let u = parse_url(
            "scylla://u:p@a,b:19042,[::1]:9043,[::1]/Fleet_TS?replication_factor=3&datacenter=dc1&connect_timeout=2s",
        )
        .expect("parses");
        assert_eq!(
            u.nodes,
            vec!["a:9042", "b:19042", "[::1]:9043", "[::1]:9042"]
        );
        assert_eq!(u.keyspace, "fleet_ts");
        assert_eq!(u.replication_factor, 3);
        assert_eq!(u.datacenter.as_deref(), Some("dc1"));
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert_eq!(u.credentials, Some(("u".into(), "p".into())));
        assert!(u.replication().contains("NetworkTopologyStrategy"));
        assert!(!format!("{u:?}").contains("\"p\""), "no password in Debug");

        for bad in [
            "scylla://",
            "scylla:///ks",
            "scylla://h:0/ks",
            "scylla://h:x/ks",
            "scylla://h:99999/ks",
            "scylla://h,/ks",
            "scylla://h/ks/more",
            "scylla://h/1ks",
            "scylla://h/bad-name",
            "scylla://h/ks?replication_factor=0",
            "scylla://h/ks?replication_factor=x",
            "scylla://h/ks?connect_timeout=forever",
            "scylla://h/ks?nope=1",
            "scylla://h/ks?datacenter=",
            "scylla://:p@h/ks",
            "scylla://[::1/ks",
            "scylla://a:b:c/ks",
            "cassandra://h/ks",
        ] {
            assert!(
                matches!(parse_url(bad), Err(StoreError::Config(_))),
                "{bad} should be refused"
            );
        }
        match parse_url("scylla://user:secret@h/ks?nope=1") {
            Err(StoreError::Config(m)) => assert!(!m.contains("secret"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn windows_nest() {
        // A rollup bucket and its source rows lie in one partition each.
        for r in Resolution::ROLLUPS {
            let w = r.width_micros().expect("rollup");
            assert_eq!(partition_width(r) % w, 0, "{r}");
            assert_eq!(partition_width(r.source()) % w, 0, "{r}");
        }
    }

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        assert_eq!(ttl_secs(10 * MICROS_PER_SEC, 0), 10);
        assert_eq!(ttl_secs(10 * MICROS_PER_SEC + 1, 0), 11);
        assert_eq!(ttl_secs(0, 0), 1);
        assert_eq!(ttl_secs(-5, 0), 1);
        assert_eq!(ttl_secs(i64::MAX, i64::MIN), MAX_TTL_SECS as i32);
    }

    #[test]
    fn merger_equals_one_merge() {
        let rows: Vec<Bucket> = (0..100)
            .map(|i| sample(i * 7, (i as f64) * 0.1).0)
            .collect();
        let whole = merge_buckets(rows.clone(), 30);
        let mut m = Merger::new(30);
        for chunk in rows.chunks(9) {
            m.push(chunk.to_vec());
        }
        m.push(Vec::new());
        assert_eq!(m.finish(), whole);
    }
}
