//! The CQL chunk store: [`ChunkStore`] on ScyllaDB or Apache Cassandra, over the `scylla`
//! driver (the conformance suite `tests/chunk_store.rs` runs it against Cassandra 5).
//!
//! URL: `scylla://[user:password@]host[:port][,host2[:port]...][/keyspace][?option=value&...]`.
//! The port defaults to 9042 and the keyspace to `fleetstream`. Options:
//! `replication_factor=N` (default 1, `SimpleStrategy`), `datacenter=NAME`
//! (`NetworkTopologyStrategy` with `N` replicas there) and `connect_timeout=5s` (default
//! 5 s). The keyspace is created when missing (create it yourself for a production
//! replication); tables are created when missing.
//!
//! # Schema
//!
//! | table | partition key | clustering | columns | TTL of a row |
//! | --- | --- | --- | --- | --- |
//! | `chunks_raw`, `chunks_5m`, `chunks_1h` | `(tenant, agent, bucket)` | `window_start` | `data blob` | the kind's retention, counted from the window's end |
//! | `chunk_buckets` | `(tenant, agent)` | `kind, bucket` | — | that of the latest chunk the bucket can hold |
//! | `segments` | `(tenant, agent)` | `window_start, seq` | `whole boolean, data blob` | the raw retention (at least a day), from the write |
//! | `partition_states` | `(topic, topic_partition)` | — | `state blob` | none |
//! | `agent_series` | `(tenant, agent)` | `series` | — | none |
//!
//! `bucket` is the window start divided (rounded down) by a coarse width per kind: 1 day
//! for raw blocks (24 one-hour chunks of a few KB), 30 days for 5-minute rollups (30
//! one-day chunks), 364 days for 1-hour rollups (52 one-week chunks), so a partition stays
//! around a megabyte and every cell well under one. A range read asks each bucket of the
//! range in parallel, or, past 16 buckets, first reads which buckets the agent has in
//! `chunk_buckets` (so `chunks(.., i64::MIN, i64::MAX)` costs two round trips, not
//! billions). Blobs are the engine's bytes as they are (CQL `blob`).
//!
//! The chunk tables use `TimeWindowCompactionStrategy` with about 24 windows per
//! retention (an SSTable is dropped whole once all its rows expired) and a
//! `default_time_to_live` of the retention; every write sets its own TTL: the window's
//! end plus the kind's retention, minus now (rounded up to a second, capped at CQL's 20
//! years), so a chunk goes when the embedded store's `expire` would delete it. A chunk
//! already past its retention is not written. [`ChunkStore::expire`] therefore has
//! nothing to do and returns 0. When the retention changes, the next connect alters the
//! tables' default TTL and compaction windows; rows already written keep their TTL.
//! Segments carry a TTL only as a safety net (the seal deletes them). `gc_grace_seconds`
//! is 3 hours (the default hint window): rows are rarely deleted, only expired, and a
//! resurrected segment of a sealed window would only be merged into its block again.
//!
//! # Writes
//!
//! Statements are prepared at connect, marked idempotent, and run up to 64 at a time.
//! Requests carry client-side monotonic timestamps, so a later write of a key replaces an
//! earlier one.
//!
//! * [`seal`](ChunkStore::seal): new `chunk_buckets` rows (once per bucket and process),
//!   then the chunks, then (only when all of those succeeded) the deletion of the sealed
//!   windows' segments. A failure in between leaves the samples in both places, never in
//!   neither; sealing again writes the same chunks.
//! * [`checkpoint`](ChunkStore::checkpoint): each agent's segments as one unlogged batch
//!   (one partition: applied atomically), together with the series names; then, once all
//!   succeeded, the partition states, whose offsets therefore never cover samples that
//!   are not stored. A `full` segment replaces every other segment of its window (range
//!   deletions of the seqs around the ones written, in the same batch), as in the
//!   embedded store.
//!
//! # Reads that scan
//!
//! [`list_series`](ChunkStore::list_series) scans `agent_series` (token order, paged) and
//! keeps the `limit` smallest in memory. [`stored_bytes`](ChunkStore::stored_bytes) scans
//! the chunk and segment tables and sums the blobs' lengths (the live bytes before
//! compression and replication; the server's own size estimates are per node and minutes
//! old): for tools and benches, not for every scrape.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use scylla::client::pager::QueryPager;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::deserialize::row::DeserializeRow;
use scylla::errors::{PagerExecutionError, SerializationError};
use scylla::policies::timestamp_generator::MonotonicTimestampGenerator;
use scylla::serialize::row::{RowSerializationContext, SerializeRow};
use scylla::serialize::writers::RowWriter;
use scylla::statement::batch::{Batch, BatchType};
use scylla::statement::prepared::PreparedStatement;

use crate::state::{decode_state, encode_state};
use crate::store::{
    AgentKey, CheckpointWrite, ChunkKind, ChunkStore, PartitionState, SealWrite, Segment,
    StoredSeries,
};
use crate::{Error, Result, Retention};

mod config;
mod error;

use config::CqlUrl;
use error::{exec_err, pager_err, prepare_err, row_err, session_err};

/// Requests in flight at once for one call.
const CONCURRENCY: usize = 64;
/// CQL's largest TTL: 20 years, in seconds.
const MAX_TTL_SECS: i64 = 630_720_000;
/// Ranges of at most this many buckets are read without the bucket index.
const DIRECT_BUCKETS: i64 = 16;
/// Buckets this process remembers having indexed before it forgets them all.
const INDEXED_CAP: usize = 1 << 20;
/// Rows per page of the scans of [`ChunkStore::stored_bytes`] (a row is a chunk).
const SCAN_PAGE_ROWS: i32 = 256;
/// `gc_grace_seconds` of every table that deletes or expires rows.
const GC_GRACE_SECS: i64 = 10_800;
/// The least TTL of a segment.
const SEGMENT_TTL_FLOOR: Duration = Duration::from_secs(86_400);

const MICROS_PER_SEC: i64 = 1_000_000;
const DAY: i64 = 86_400 * MICROS_PER_SEC;

/// Width (µs) of the window range of one partition of a chunk table.
fn bucket_micros(kind: ChunkKind) -> i64 {
    match kind {
        ChunkKind::Raw => DAY,
        ChunkKind::Rollup5m => 30 * DAY,
        ChunkKind::Rollup1h => 364 * DAY,
    }
}

/// The partition (bucket number) of the chunk of `kind` starting at `window`.
fn bucket_of(kind: ChunkKind, window: i64) -> i64 {
    window.div_euclid(bucket_micros(kind))
}

fn table(kind: ChunkKind) -> &'static str {
    match kind {
        ChunkKind::Raw => "chunks_raw",
        ChunkKind::Rollup5m => "chunks_5m",
        ChunkKind::Rollup1h => "chunks_1h",
    }
}

/// Index of `kind` in [`ChunkKind::ALL`] (and in the per-kind statements).
fn slot(kind: ChunkKind) -> usize {
    match kind {
        ChunkKind::Raw => 0,
        ChunkKind::Rollup5m => 1,
        ChunkKind::Rollup1h => 2,
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn secs(d: Duration) -> i32 {
    // Clamped into 1..=MAX_TTL_SECS, which fits an i32.
    i32::try_from(
        i64::try_from(d.as_secs())
            .unwrap_or(i64::MAX)
            .clamp(1, MAX_TTL_SECS),
    )
    .unwrap_or(i32::MAX)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// TTL (s) of a row that must go at `expires_at` µs, written at `now` µs: `None` when that
/// time has come (the row is not written), else at least 1 (0 would mean "never") and at
/// most CQL's 20 years.
fn ttl_secs(expires_at: i64, now: i64) -> Option<i32> {
    let left = expires_at.saturating_sub(now);
    if left <= 0 {
        return None;
    }
    let secs = left
        .saturating_add(MICROS_PER_SEC - 1)
        .div_euclid(MICROS_PER_SEC);
    i32::try_from(secs.clamp(1, MAX_TTL_SECS)).ok()
}

/// A segment's `seq` as a CQL `bigint`.
fn seq_of(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| {
        Error::InvalidQuery(format!(
            "segment seq {seq} is over the CQL store's limit of {}",
            i64::MAX
        ))
    })
}

/// The closed ranges of non-negative seqs not in `live` (ascending): what a `full` segment
/// deletes around the segments written with it.
fn gaps(live: impl IntoIterator<Item = i64>) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut from = Some(0i64);
    for s in live {
        if let Some(f) = from {
            if s > f {
                out.push((f, s - 1));
            }
        }
        from = s.checked_add(1);
    }
    if let Some(f) = from {
        out.push((f, i64::MAX));
    }
    out
}

/// Options of a chunk table kept for `keep`: TWCS with about 24 windows per retention
/// (ScyllaDB refuses more than 50 by default), the retention as default TTL.
fn chunk_table_options(keep: Duration) -> String {
    let keep_secs = i64::try_from(keep.as_secs()).unwrap_or(i64::MAX);
    let window_hours = (keep_secs / 3600 + 23) / 24;
    format!(
        "compaction = {{'class': 'TimeWindowCompactionStrategy', \
         'compaction_window_unit': 'HOURS', 'compaction_window_size': '{}'}} \
         AND default_time_to_live = {} AND gc_grace_seconds = {GC_GRACE_SECS}",
        window_hours.max(1),
        secs(keep)
    )
}

fn segment_table_options(ttl: i32) -> String {
    format!("default_time_to_live = {ttl} AND gc_grace_seconds = {GC_GRACE_SECS}")
}

/// Runs futures, at most [`CONCURRENCY`] at a time; the first error wins. (A `Vec`, not
/// an iterator: a closure in the future's type trips the `Send` check of `async_trait`.)
async fn run_all<F>(futures: Vec<F>) -> Result<()>
where
    F: Future<Output = Result<()>>,
{
    futures::stream::iter(futures)
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await
}

/// Feeds every row of a paged request to `f`.
async fn drain<R>(
    pager: std::result::Result<QueryPager, PagerExecutionError>,
    what: &str,
    mut f: impl FnMut(R) + Send,
) -> Result<()>
where
    R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
{
    let mut rows = pager
        .map_err(pager_err(what))?
        .rows_stream::<R>()
        .map_err(|e| Error::Internal(format!("cql: {what}: {e}")))?;
    while let Some(row) = rows.next().await {
        f(row.map_err(row_err(what))?);
    }
    Ok(())
}

/// A statement of a checkpoint's batch for one agent.
enum SegmentRow<'a> {
    /// (tenant, agent, window_start, seq, whole, data, ttl)
    Put(&'a str, &'a str, i64, i64, bool, &'a [u8], i32),
    /// (tenant, agent, window_start, first seq, last seq)
    Drop(&'a str, &'a str, i64, i64, i64),
}

impl SerializeRow for SegmentRow<'_> {
    fn serialize(
        &self,
        ctx: &RowSerializationContext<'_>,
        writer: &mut RowWriter<'_>,
    ) -> std::result::Result<(), SerializationError> {
        match *self {
            SegmentRow::Put(t, a, w, s, whole, data, ttl) => {
                (t, a, w, s, whole, data, ttl).serialize(ctx, writer)
            }
            SegmentRow::Drop(t, a, w, lo, hi) => (t, a, w, lo, hi).serialize(ctx, writer),
        }
    }

    fn is_empty(&self) -> bool {
        false
    }
}

/// Every statement, prepared once at connect.
#[derive(Debug)]
struct Statements {
    /// Per kind: (tenant, agent, bucket, window_start, data, ttl).
    insert_chunk: Vec<PreparedStatement>,
    /// Per kind: (tenant, agent, bucket, from, to) → (window_start, data).
    select_chunks: Vec<PreparedStatement>,
    /// Per kind: () → (data), paged by [`SCAN_PAGE_ROWS`].
    scan_chunks: Vec<PreparedStatement>,
    /// (tenant, agent, kind, bucket, ttl)
    insert_bucket: PreparedStatement,
    /// (tenant, agent, kind, first, last) → (bucket)
    select_buckets: PreparedStatement,
    /// (tenant, agent, window_start, seq, whole, data, ttl)
    insert_segment: PreparedStatement,
    /// (tenant, agent, window_start, first seq, last seq)
    delete_segments: PreparedStatement,
    /// (tenant, agent, window_start)
    delete_window: PreparedStatement,
    /// (tenant, agent, from, to) → (window_start, seq, whole, data)
    select_segments: PreparedStatement,
    /// () → (data), paged by [`SCAN_PAGE_ROWS`].
    scan_segments: PreparedStatement,
    /// (tenant, agent, series)
    insert_series: PreparedStatement,
    /// (tenant, agent) → (series)
    select_series: PreparedStatement,
    /// () → (tenant, agent, series)
    scan_series: PreparedStatement,
    /// (topic, topic_partition, state)
    insert_state: PreparedStatement,
    /// (topic, topic_partition) → (state)
    select_state: PreparedStatement,
}

impl Statements {
    async fn prepare(session: &Session, ks: &str) -> Result<Statements> {
        let what = "preparing statements";
        let prepare = |cql: String, page: Option<i32>| async move {
            let mut p = session.prepare(cql).await.map_err(prepare_err(what))?;
            p.set_is_idempotent(true);
            if let Some(rows) = page {
                p.set_page_size(rows);
            }
            Ok::<_, Error>(p)
        };
        let (mut insert_chunk, mut select_chunks, mut scan_chunks) = (vec![], vec![], vec![]);
        for kind in ChunkKind::ALL {
            let t = table(kind);
            insert_chunk.push(
                prepare(
                    format!(
                        "INSERT INTO {ks}.{t} (tenant, agent, bucket, window_start, data) \
                         VALUES (?, ?, ?, ?, ?) USING TTL ?"
                    ),
                    None,
                )
                .await?,
            );
            select_chunks.push(
                prepare(
                    format!(
                        "SELECT window_start, data FROM {ks}.{t} WHERE tenant = ? AND agent = ? \
                         AND bucket = ? AND window_start >= ? AND window_start < ?"
                    ),
                    None,
                )
                .await?,
            );
            scan_chunks
                .push(prepare(format!("SELECT data FROM {ks}.{t}"), Some(SCAN_PAGE_ROWS)).await?);
        }
        Ok(Statements {
            insert_chunk,
            select_chunks,
            scan_chunks,
            insert_bucket: prepare(
                format!(
                    "INSERT INTO {ks}.chunk_buckets (tenant, agent, kind, bucket) \
                     VALUES (?, ?, ?, ?) USING TTL ?"
                ),
                None,
            )
            .await?,
            select_buckets: prepare(
                format!(
                    "SELECT bucket FROM {ks}.chunk_buckets WHERE tenant = ? AND agent = ? \
                     AND kind = ? AND bucket >= ? AND bucket <= ?"
                ),
                None,
            )
            .await?,
            insert_segment: prepare(
                format!(
                    "INSERT INTO {ks}.segments (tenant, agent, window_start, seq, whole, data) \
                     VALUES (?, ?, ?, ?, ?, ?) USING TTL ?"
                ),
                None,
            )
            .await?,
            delete_segments: prepare(
                format!(
                    "DELETE FROM {ks}.segments WHERE tenant = ? AND agent = ? \
                     AND window_start = ? AND seq >= ? AND seq <= ?"
                ),
                None,
            )
            .await?,
            delete_window: prepare(
                format!(
                    "DELETE FROM {ks}.segments WHERE tenant = ? AND agent = ? AND window_start = ?"
                ),
                None,
            )
            .await?,
            select_segments: prepare(
                format!(
                    "SELECT window_start, seq, whole, data FROM {ks}.segments \
                     WHERE tenant = ? AND agent = ? AND window_start >= ? AND window_start < ?"
                ),
                None,
            )
            .await?,
            scan_segments: prepare(
                format!("SELECT data FROM {ks}.segments"),
                Some(SCAN_PAGE_ROWS),
            )
            .await?,
            insert_series: prepare(
                format!("INSERT INTO {ks}.agent_series (tenant, agent, series) VALUES (?, ?, ?)"),
                None,
            )
            .await?,
            select_series: prepare(
                format!("SELECT series FROM {ks}.agent_series WHERE tenant = ? AND agent = ?"),
                None,
            )
            .await?,
            scan_series: prepare(
                format!("SELECT tenant, agent, series FROM {ks}.agent_series"),
                None,
            )
            .await?,
            insert_state: prepare(
                format!(
                    "INSERT INTO {ks}.partition_states (topic, topic_partition, state) \
                     VALUES (?, ?, ?)"
                ),
                None,
            )
            .await?,
            select_state: prepare(
                format!(
                    "SELECT state FROM {ks}.partition_states WHERE topic = ? AND topic_partition = ?"
                ),
                None,
            )
            .await?,
        })
    }
}

/// Opens a session with the cluster `cfg` names, within its connect timeout.
async fn open_session(cfg: &CqlUrl) -> Result<Session> {
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.nodes)
        .connection_timeout(cfg.connect_timeout)
        .timestamp_generator(Arc::new(MonotonicTimestampGenerator::new()));
    if let Some((user, password)) = &cfg.credentials {
        builder = builder.user(user, password);
    }
    // The driver bounds each connection attempt; bound the whole start-up too
    // (resolution, control connection, metadata).
    let bound = cfg.connect_timeout * 2;
    match tokio::time::timeout(bound, builder.build()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(session_err(&cfg.nodes, e)),
        Err(_) => Err(Error::Unavailable(format!(
            "cql: no session with {} within {bound:?}",
            cfg.nodes.join(",")
        ))),
    }
}

/// Creates the keyspace and the tables when missing, and brings the TTL options of
/// existing tables in line with `retention`.
async fn create_schema(
    session: &Session,
    cfg: &CqlUrl,
    retention: &Retention,
    segment_ttl: i32,
) -> Result<()> {
    let ks = &cfg.keyspace;
    let what = "creating the schema";
    let mut options: Vec<(&str, String, i32)> = ChunkKind::ALL
        .iter()
        .map(|&k| {
            let keep = k.retention(retention);
            (table(k), chunk_table_options(keep), secs(keep))
        })
        .collect();
    options.push(("segments", segment_table_options(segment_ttl), segment_ttl));
    let mut ddl = vec![format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {}",
        cfg.replication()
    )];
    for (t, opts, _) in &options[..3] {
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {ks}.{t} (tenant text, agent text, bucket bigint, \
             window_start bigint, data blob, PRIMARY KEY ((tenant, agent, bucket), window_start)) \
             WITH CLUSTERING ORDER BY (window_start ASC) AND {opts}"
        ));
    }
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.chunk_buckets (tenant text, agent text, kind text, \
         bucket bigint, PRIMARY KEY ((tenant, agent), kind, bucket)) \
         WITH gc_grace_seconds = {GC_GRACE_SECS}"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.segments (tenant text, agent text, \
         window_start bigint, seq bigint, whole boolean, data blob, \
         PRIMARY KEY ((tenant, agent), window_start, seq)) WITH {}",
        options[3].1
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.partition_states (topic text, topic_partition bigint, \
         state blob, PRIMARY KEY ((topic, topic_partition)))"
    ));
    ddl.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.agent_series (tenant text, agent text, series text, \
         PRIMARY KEY ((tenant, agent), series))"
    ));
    for stmt in ddl {
        session
            .query_unpaged(stmt, &[])
            .await
            .map_err(exec_err(what))?;
    }
    // Tables made under another retention: follow the new one (rows keep their TTLs).
    let mut current: BTreeMap<String, i32> = BTreeMap::new();
    drain(
        session
            .query_iter(
                "SELECT table_name, default_time_to_live FROM system_schema.tables \
                 WHERE keyspace_name = ?",
                (ks.as_str(),),
            )
            .await,
        "reading the table options",
        |(t, ttl): (String, i32)| {
            current.insert(t, ttl);
        },
    )
    .await?;
    for (t, opts, ttl) in &options {
        if current.get(*t).is_some_and(|have| have != ttl) {
            tracing::info!(table = %t, ttl, "Retention changed: altering the table's default TTL.");
            session
                .query_unpaged(format!("ALTER TABLE {ks}.{t} WITH {opts}"), &[])
                .await
                .map_err(exec_err("altering a table's TTL"))?;
        }
    }
    Ok(())
}

/// The chunk store on ScyllaDB or Cassandra (see the module docs).
pub struct CqlChunks {
    session: Session,
    keyspace: String,
    nodes: Vec<String>,
    retention: Retention,
    /// TTL (s) of a segment.
    segment_ttl: i32,
    st: Statements,
    /// Buckets this process wrote to `chunk_buckets` (with a TTL that covers any chunk of
    /// theirs): not written again.
    indexed: Mutex<HashSet<(ChunkKind, AgentKey, i64)>>,
}

impl std::fmt::Debug for CqlChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlChunks")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl CqlChunks {
    /// Connects to the cluster a `scylla://` URL names (see the module docs), creates the
    /// keyspace and tables when missing and prepares the statements. Chunks written get
    /// TTLs from `retention`. [`Error::Config`] for a bad URL or retention,
    /// [`Error::Unavailable`] when the cluster cannot be reached in time.
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &str, retention: Retention) -> Result<CqlChunks> {
        retention.validate()?;
        let cfg = CqlUrl::parse(url)?;
        let session = open_session(&cfg).await?;
        let segment_ttl = secs(retention.raw.max(SEGMENT_TTL_FLOOR));
        create_schema(&session, &cfg, &retention, segment_ttl).await?;
        let st = Statements::prepare(&session, &cfg.keyspace).await?;
        tracing::info!(nodes = %cfg.nodes.join(","), keyspace = %cfg.keyspace, "CQL chunk store ready.");
        Ok(CqlChunks {
            session,
            keyspace: cfg.keyspace,
            nodes: cfg.nodes,
            retention,
            segment_ttl,
            st,
            indexed: Mutex::new(HashSet::new()),
        })
    }

    /// The keyspace in use.
    pub fn keyspace(&self) -> &str {
        &self.keyspace
    }

    /// Drops the keyspace and everything in it (for tests and tools; the store is unusable
    /// afterwards).
    pub async fn drop_keyspace(&self) -> Result<()> {
        self.session
            .query_unpaged(format!("DROP KEYSPACE IF EXISTS {}", self.keyspace), &[])
            .await
            .map_err(exec_err("dropping the keyspace"))?;
        Ok(())
    }

    async fn exec(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow + Send,
        what: &str,
    ) -> Result<()> {
        self.session
            .execute_unpaged(stmt, values)
            .await
            .map_err(exec_err(what))?;
        Ok(())
    }

    /// Every row a prepared statement selects, across pages.
    async fn select<R>(
        &self,
        stmt: &PreparedStatement,
        values: impl SerializeRow + Send,
        what: &str,
    ) -> Result<Vec<R>>
    where
        R: for<'frame, 'metadata> DeserializeRow<'frame, 'metadata> + Send + 'static,
    {
        let mut out = Vec::new();
        drain(
            self.session.execute_iter(stmt.clone(), values).await,
            what,
            |r| out.push(r),
        )
        .await?;
        Ok(out)
    }

    /// When a chunk of `kind` for `window` must go.
    fn expiry(&self, kind: ChunkKind, window: i64) -> i64 {
        window
            .saturating_add(kind.window_micros())
            .saturating_add(micros(kind.retention(&self.retention)))
    }

    /// When the `chunk_buckets` row of `bucket` may go: the expiry of the latest chunk
    /// whose window starts in it.
    fn bucket_expiry(&self, kind: ChunkKind, bucket: i64) -> i64 {
        bucket
            .saturating_add(1)
            .saturating_mul(bucket_micros(kind))
            .saturating_add(kind.window_micros())
            .saturating_add(micros(kind.retention(&self.retention)))
    }

    /// One agent's checkpoint statements: a single statement, or an unlogged batch (one
    /// partition, so applied atomically).
    async fn write_agent_segments(&self, rows: &[SegmentRow<'_>]) -> Result<()> {
        let what = "writing segments";
        let stmt = |r: &SegmentRow<'_>| match r {
            SegmentRow::Put(..) => &self.st.insert_segment,
            SegmentRow::Drop(..) => &self.st.delete_segments,
        };
        match rows {
            [] => Ok(()),
            [one] => self.exec(stmt(one), one, what).await,
            _ => {
                let mut batch = Batch::new(BatchType::Unlogged);
                batch.set_is_idempotent(true);
                for r in rows {
                    batch.append_statement(stmt(r).clone());
                }
                self.session
                    .batch(&batch, rows)
                    .await
                    .map_err(exec_err(what))?;
                Ok(())
            }
        }
    }

    /// Sum of the blob lengths a scan returns.
    async fn scan_bytes(&self, stmt: &PreparedStatement) -> Result<u64> {
        let mut total = 0u64;
        drain(
            self.session.execute_iter(stmt.clone(), ()).await,
            "measuring stored bytes",
            |(data,): (Vec<u8>,)| total = total.saturating_add(data.len() as u64),
        )
        .await?;
        Ok(total)
    }
}

#[async_trait]
impl ChunkStore for CqlChunks {
    fn engine(&self) -> &'static str {
        "cql"
    }

    #[tracing::instrument(skip_all, fields(keyspace = %self.keyspace, chunks = write.chunks.len(), sealed = write.sealed.len()))]
    async fn seal(&self, write: SealWrite) -> Result<()> {
        let now = now_micros();
        // The last chunk under a key wins, as the later insert does in the embedded store.
        let mut latest: BTreeMap<(ChunkKind, &AgentKey, i64), &[u8]> = BTreeMap::new();
        for c in &write.chunks {
            latest.insert((c.kind, &c.agent, c.window), &c.bytes);
        }
        let mut puts = Vec::with_capacity(latest.len());
        let mut new_buckets: BTreeMap<(ChunkKind, &AgentKey, i64), i32> = BTreeMap::new();
        {
            let indexed = self.indexed.lock();
            for ((kind, agent, window), data) in latest {
                // Already past its retention: not written (the embedded store's expire
                // would delete it).
                let Some(ttl) = ttl_secs(self.expiry(kind, window), now) else {
                    continue;
                };
                let bucket = bucket_of(kind, window);
                if !indexed.contains(&(kind, agent.clone(), bucket)) {
                    // Covers this chunk's TTL: the bucket ends after its window starts.
                    let bucket_ttl = ttl_secs(self.bucket_expiry(kind, bucket), now).unwrap_or(ttl);
                    new_buckets.insert((kind, agent, bucket), bucket_ttl.max(ttl));
                }
                puts.push((kind, agent, bucket, window, data, ttl));
            }
        }
        // 1. The bucket index, so that whoever finds a chunk can also find its bucket.
        run_all(
            new_buckets
                .iter()
                .map(|(&(kind, a, bucket), &ttl)| {
                    self.exec(
                        &self.st.insert_bucket,
                        (&*a.tenant, &*a.agent, kind.as_str(), bucket, ttl),
                        "writing the bucket index",
                    )
                })
                .collect(),
        )
        .await?;
        {
            let mut indexed = self.indexed.lock();
            if indexed.len() + new_buckets.len() > INDEXED_CAP {
                indexed.clear();
            }
            indexed.extend(new_buckets.keys().map(|&(k, a, b)| (k, a.clone(), b)));
        }
        // 2. The chunks.
        run_all(
            puts.iter()
                .map(|&(kind, a, bucket, window, data, ttl)| {
                    self.exec(
                        &self.st.insert_chunk[slot(kind)],
                        (&*a.tenant, &*a.agent, bucket, window, data, ttl),
                        "writing a chunk",
                    )
                })
                .collect(),
        )
        .await?;
        // 3. Only now the sealed windows' segments: the samples are never in neither.
        let sealed: BTreeSet<(&AgentKey, i64)> =
            write.sealed.iter().map(|(a, w)| (a, *w)).collect();
        run_all(
            sealed
                .into_iter()
                .map(|(a, w)| {
                    self.exec(
                        &self.st.delete_window,
                        (&*a.tenant, &*a.agent, w),
                        "dropping sealed segments",
                    )
                })
                .collect(),
        )
        .await
    }

    async fn chunks(
        &self,
        kind: ChunkKind,
        agent: &AgentKey,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let (tenant, name) = (&*agent.tenant, &*agent.agent);
        let (first, last) = (bucket_of(kind, from), bucket_of(kind, to - 1));
        let buckets: Vec<i64> = if last - first < DIRECT_BUCKETS {
            (first..=last).collect()
        } else {
            self.select::<(i64,)>(
                &self.st.select_buckets,
                (tenant, name, kind.as_str(), first, last),
                "reading the bucket index",
            )
            .await?
            .into_iter()
            .map(|(b,)| b)
            .collect()
        };
        let stmt = &self.st.select_chunks[slot(kind)];
        let parts: Vec<Vec<(i64, Vec<u8>)>> = futures::stream::iter(buckets)
            .map(|b| self.select(stmt, (tenant, name, b, from, to), "reading chunks"))
            .buffered(CONCURRENCY)
            .try_collect()
            .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    #[tracing::instrument(skip_all, fields(keyspace = %self.keyspace, segments = write.segments.len(), partitions = write.partitions.len()))]
    async fn checkpoint(&self, write: CheckpointWrite) -> Result<()> {
        // Per agent, per window, in the order given.
        let mut by_agent: BTreeMap<&AgentKey, BTreeMap<i64, Vec<&Segment>>> = BTreeMap::new();
        for s in &write.segments {
            by_agent
                .entry(&s.agent)
                .or_default()
                .entry(s.window)
                .or_default()
                .push(s);
        }
        let mut agents: Vec<Vec<SegmentRow<'_>>> = Vec::with_capacity(by_agent.len());
        for (agent, windows) in by_agent {
            let (t, a) = (&*agent.tenant, &*agent.agent);
            let mut rows = Vec::new();
            for (w, segs) in windows {
                // A full segment makes what came before it obsolete, stored or in this
                // write; a later one of the same seq replaces an earlier.
                let full_at = segs.iter().rposition(|s| s.full);
                let mut live: BTreeMap<i64, &Segment> = BTreeMap::new();
                for s in &segs[full_at.unwrap_or(0)..] {
                    live.insert(seq_of(s.seq)?, s);
                }
                if full_at.is_some() {
                    for (lo, hi) in gaps(live.keys().copied()) {
                        rows.push(SegmentRow::Drop(t, a, w, lo, hi));
                    }
                }
                for (seq, s) in live {
                    rows.push(SegmentRow::Put(
                        t,
                        a,
                        w,
                        seq,
                        s.full,
                        &s.bytes,
                        self.segment_ttl,
                    ));
                }
            }
            agents.push(rows);
        }
        let series: BTreeSet<(&AgentKey, &str)> =
            write.series.iter().map(|(a, s)| (a, s.as_str())).collect();
        // 1. Segments and series names.
        futures::try_join!(
            run_all(
                agents
                    .iter()
                    .map(|rows| self.write_agent_segments(rows))
                    .collect()
            ),
            run_all(
                series
                    .into_iter()
                    .map(|(a, s)| {
                        self.exec(
                            &self.st.insert_series,
                            (&*a.tenant, &*a.agent, s),
                            "writing series names",
                        )
                    })
                    .collect()
            ),
        )?;
        // 2. Then the partition states: their offsets cover only what is stored.
        let states: Vec<(&str, i64, Vec<u8>)> = write
            .partitions
            .iter()
            .map(|p| (p.topic.as_str(), i64::from(p.partition), encode_state(p)))
            .collect();
        run_all(
            states
                .iter()
                .map(|(topic, p, state)| {
                    self.exec(
                        &self.st.insert_state,
                        (*topic, *p, state.as_slice()),
                        "writing partition states",
                    )
                })
                .collect(),
        )
        .await
    }

    async fn partition_state(&self, topic: &str, partition: u32) -> Result<Option<PartitionState>> {
        let rows = self
            .select::<(Vec<u8>,)>(
                &self.st.select_state,
                (topic, i64::from(partition)),
                "reading a partition state",
            )
            .await?;
        rows.into_iter()
            .next()
            .map(|(bytes,)| decode_state(&bytes, topic, partition))
            .transpose()
            .map_err(|e| Error::Internal(format!("a stored partition state does not decode: {e}")))
    }

    async fn segments(&self, agent: &AgentKey, from: i64, to: i64) -> Result<Vec<Segment>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let rows = self
            .select::<(i64, i64, bool, Vec<u8>)>(
                &self.st.select_segments,
                (&*agent.tenant, &*agent.agent, from, to),
                "reading segments",
            )
            .await?;
        rows.into_iter()
            .map(|(window, seq, full, bytes)| {
                Ok(Segment {
                    agent: agent.clone(),
                    window,
                    seq: u64::try_from(seq)
                        .map_err(|_| Error::Internal(format!("a stored segment has seq {seq}")))?,
                    full,
                    bytes,
                })
            })
            .collect()
    }

    async fn series(&self, agent: &AgentKey) -> Result<Vec<String>> {
        Ok(self
            .select::<(String,)>(
                &self.st.select_series,
                (&*agent.tenant, &*agent.agent),
                "reading series names",
            )
            .await?
            .into_iter()
            .map(|(s,)| s)
            .collect())
    }

    /// A full scan of `agent_series` (token order, paged), keeping the `limit` smallest.
    #[tracing::instrument(skip(self), fields(keyspace = %self.keyspace))]
    async fn list_series(&self, limit: usize) -> Result<Vec<StoredSeries>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut smallest: BinaryHeap<StoredSeries> = BinaryHeap::new();
        drain(
            self.session
                .execute_iter(self.st.scan_series.clone(), ())
                .await,
            "listing every series",
            |(tenant, agent, series): (String, String, String)| {
                let s = StoredSeries {
                    agent: AgentKey::new(&tenant, &agent),
                    series,
                };
                if smallest.len() < limit {
                    smallest.push(s);
                } else if smallest.peek().is_some_and(|top| s < *top) {
                    smallest.pop();
                    smallest.push(s);
                }
            },
        )
        .await?;
        Ok(smallest.into_sorted_vec())
    }

    /// Rows expire by their TTL: nothing to do.
    async fn expire(&self, _now_micros: i64, _retention: &Retention) -> Result<u64> {
        Ok(0)
    }

    /// Scans the tables (see the module docs).
    #[tracing::instrument(skip(self), fields(keyspace = %self.keyspace))]
    async fn stored_bytes(&self) -> Result<Vec<(&'static str, u64)>> {
        let mut out = Vec::with_capacity(4);
        for kind in ChunkKind::ALL {
            out.push((
                kind.as_str(),
                self.scan_bytes(&self.st.scan_chunks[slot(kind)]).await?,
            ));
        }
        out.push(("segments", self.scan_bytes(&self.st.scan_segments).await?));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_round_up_and_stay_in_range() {
        assert_eq!(ttl_secs(10 * MICROS_PER_SEC, 0), Some(10));
        assert_eq!(ttl_secs(10 * MICROS_PER_SEC + 1, 0), Some(11));
        assert_eq!(ttl_secs(1, 0), Some(1));
        assert_eq!(ttl_secs(0, 0), None, "due now: not written");
        assert_eq!(ttl_secs(-5, 0), None);
        assert_eq!(ttl_secs(i64::MAX, i64::MIN), Some(MAX_TTL_SECS as i32));
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::MAX), MAX_TTL_SECS as i32);
    }

    #[test]
    fn buckets_hold_whole_windows() {
        for kind in ChunkKind::ALL {
            assert_eq!(bucket_micros(kind) % kind.window_micros(), 0, "{kind:?}");
            let w = kind.window_of(-1);
            assert_eq!(bucket_of(kind, w), -1, "{kind:?}");
            assert_eq!(
                bucket_of(kind, w + kind.window_micros() - 1),
                -1,
                "{kind:?}"
            );
            assert_eq!(bucket_of(kind, 0), 0);
            // Extreme windows have bucket numbers, not overflows.
            assert!(bucket_of(kind, i64::MIN) < bucket_of(kind, i64::MAX));
        }
    }

    #[test]
    fn gaps_cover_every_other_seq() {
        assert_eq!(gaps([0]), vec![(1, i64::MAX)]);
        assert_eq!(gaps([3]), vec![(0, 2), (4, i64::MAX)]);
        assert_eq!(gaps([2, 3, 7]), vec![(0, 1), (4, 6), (8, i64::MAX)]);
        assert_eq!(gaps([0, i64::MAX]), vec![(1, i64::MAX - 1)]);
        assert_eq!(gaps([i64::MAX]), vec![(0, i64::MAX - 1)]);
    }

    #[test]
    fn table_options_stay_in_range() {
        let o = chunk_table_options(Duration::from_secs(30 * 86_400));
        assert!(o.contains("'compaction_window_size': '30'"), "{o}");
        assert!(o.contains("default_time_to_live = 2592000"), "{o}");
        let o = chunk_table_options(Duration::from_secs(1));
        assert!(o.contains("'compaction_window_size': '1'"), "{o}");
        let o = chunk_table_options(Duration::MAX);
        assert!(
            o.contains(&format!("default_time_to_live = {MAX_TTL_SECS}")),
            "{o}"
        );
    }
}
