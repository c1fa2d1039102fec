//! The engine: the head, sealing, checkpoints and queries over a [`ChunkStore`].
//!
//! * **Writer** ([`Writer`], one per projection task): takes metric reports in log order
//!   ([`Writer::ingest`]), keeps each agent's open windows in the head, seals a window once
//!   no acceptable sample can reach it (the agent's newest sample is past the window's end
//!   plus the out-of-order allowance, or the partition's clock is past the agent's last
//!   report plus `idle-seal-after`), and checkpoints the head every
//!   `checkpoint-interval`: the samples added since the previous checkpoint as segments,
//!   and per partition the next offset and the agents with open windows. The consumer
//!   commits only the offsets of the last checkpoint, so a crash replays from there on top
//!   of the restored head and seals the same blocks. Sealing decisions depend only on the
//!   records (event time), never on the wall clock; a seal merges with the block already
//!   stored for the window, so sealing twice changes nothing.
//! * **Reader** ([`TimeSeries`], implements [`TimeSeriesStore`]): a query reads sealed
//!   blocks or rollups from the store and the open windows from the head when this
//!   process holds the agent, else from its checkpoint segments (so an API in another
//!   process sees data within one checkpoint interval).

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use fleet_schemas::samples::for_each_sample;
use fleet_schemas::{MetricReport, SampleBatch};
use parking_lot::Mutex;

use crate::chunk::{self, Block};
use crate::head::{window_of, AgentHead, OpenWindow, BLOCK_MICROS};
use crate::query::{
    aggregate_buckets, bucket_range, merge_buckets, validate_points, validate_query, Bucket, Point,
    RangeQuery, Resolution, Retention, SeriesKey, TimeSeriesStore,
};
use crate::rollup::{self, RollupSet};
use crate::store::{
    AgentKey, CheckpointWrite, Chunk, ChunkKind, ChunkStore, OpenAgent, PartitionState, SealWrite,
    Segment,
};
use crate::{metrics, Error, Result};

/// Settings of the engine (`[timeseries]` in the projections configuration).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EngineConfig {
    /// How far behind an agent's newest sample a sample may arrive and still be stored;
    /// older ones are refused and counted (`fleet_timeseries_late_refused_total`). A
    /// window seals once the agent's newest sample is this far past its end.
    #[serde(with = "humantime_serde")]
    pub out_of_order: Duration,
    /// An agent silent this long (by the partition's clock: the newest `ingested_at` of
    /// its records) has its open windows sealed and leaves the head.
    #[serde(with = "humantime_serde")]
    pub idle_seal_after: Duration,
    /// How often the head is checkpointed (segments + offsets). The consumer commits at
    /// checkpoints, so this bounds the replay after a crash, and it is how stale an API
    /// in another process can be.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Bytes the head may hold; above it the writer checkpoints at once and evicts the
    /// least recently written agents (their samples stay in the segments and come back
    /// when they report again). 0: no limit.
    pub head_memory_limit: u64,
    /// Bytes of decoded rollup chunks a reader keeps, so that a chart asked again (a
    /// dashboard refreshing) does not decode them again. An entry is used only while the
    /// store holds the very bytes it was decoded from, so a window sealed again (late
    /// data), by this process or another, is decoded afresh. 0: no cache.
    pub rollup_cache_bytes: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            out_of_order: Duration::from_secs(600),
            idle_seal_after: Duration::from_secs(3600),
            checkpoint_interval: Duration::from_secs(10),
            head_memory_limit: 2 << 30,
            rollup_cache_bytes: 64 << 20,
        }
    }
}

impl EngineConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.out_of_order > Duration::from_secs(24 * 3600) {
            return Err(Error::Config(
                "timeseries.out-of-order must be at most 24h".into(),
            ));
        }
        if self.checkpoint_interval < Duration::from_millis(100) {
            return Err(Error::Config(
                "timeseries.checkpoint-interval must be at least 100ms".into(),
            ));
        }
        if self.idle_seal_after < Duration::from_secs(60) {
            return Err(Error::Config(
                "timeseries.idle-seal-after must be at least 1m".into(),
            ));
        }
        Ok(())
    }

    fn out_of_order_micros(&self) -> i64 {
        micros(self.out_of_order)
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

const SHARDS: usize = 32;

/// The most series one unit of `fleet.samples.v1` (one scrape target or host) may have in
/// the engine; samples of further series are skipped and counted. A unit's hour is one
/// block and its day of 5-minute rollups one set, each bounded by
/// [`crate::limits::MAX_CELLS`] (4 Mi): 4,096 series fit 288 rollup buckets, and an hour
/// of samples every 3.5 s or slower. A node_exporter target has one to two thousand.
pub const MAX_UNIT_SERIES: usize = 4096;

/// Tenant → agent → head.
type Shard = HashMap<Arc<str>, HashMap<Arc<str>, AgentHead>>;

/// The heads of every agent this process holds, sharded by agent so that queries and
/// the writer rarely meet on a lock.
#[derive(Debug)]
pub(crate) struct Heads {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Heads {
    fn new() -> Heads {
        Heads {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::new())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    fn shard(&self, agent: &str) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(agent) as usize) % SHARDS]
    }

    /// The samples of `series` in `agent`'s open windows in `[from, to)`, if this process
    /// holds the agent: a copy of those columns only.
    fn open_points(
        &self,
        key: &AgentKey,
        from: i64,
        to: i64,
        series: &[&str],
    ) -> Option<OpenPoints> {
        let shard = self.shard(&key.agent).lock();
        let head = shard.get(&key.tenant)?.get(&key.agent)?;
        let slots: Vec<Option<usize>> = series.iter().map(|s| head.slot_named(s)).collect();
        let out = head
            .windows
            .range(from..to)
            .map(|(&w, win)| {
                let points = slots
                    .iter()
                    .map(|slot| {
                        slot.map_or_else(Vec::new, |slot| {
                            win.points(slot, i64::MIN, i64::MAX).collect()
                        })
                    })
                    .collect();
                (w, points)
            })
            .collect();
        Some(out)
    }

    fn names(&self, key: &AgentKey) -> Vec<String> {
        let shard = self.shard(&key.agent).lock();
        shard
            .get(&key.tenant)
            .and_then(|t| t.get(&key.agent))
            .map(|h| h.names().iter().map(|n| n.to_string()).collect())
            .unwrap_or_default()
    }
}

/// A rollup chunk as read from the store, decoded.
#[derive(Debug)]
struct DecodedRollup {
    bytes: Vec<u8>,
    set: RollupSet,
}

/// The series a query wants of one rollup chunk.
enum RollupRead {
    /// The whole set, shared with the cache.
    Whole(Arc<DecodedRollup>),
    /// The series asked, in that order.
    Picked(Vec<Option<crate::SeriesRollup>>),
}

impl RollupRead {
    /// Series `name`, the `i`-th asked.
    fn series(&self, i: usize, name: &str) -> Option<&crate::SeriesRollup> {
        match self {
            RollupRead::Whole(d) => d.set.get(name),
            RollupRead::Picked(p) => p.get(i).and_then(Option::as_ref),
        }
    }
}

/// Weighs a cached rollup chunk by the bytes it holds, roughly.
#[derive(Debug, Clone, Copy)]
struct RollupWeight;

impl quick_cache::Weighter<(ChunkKind, AgentKey, i64), Arc<DecodedRollup>> for RollupWeight {
    fn weight(&self, _: &(ChunkKind, AgentKey, i64), v: &Arc<DecodedRollup>) -> u64 {
        let rows = v.set.row_count() * std::mem::size_of::<crate::RollupRow>();
        let series = v.set.series().len() * 64;
        (v.bytes.len() + rows + series) as u64
    }
}

/// Decoded rollup chunks by (kind, agent, window) ([`EngineConfig::rollup_cache_bytes`]).
type RollupCache =
    quick_cache::sync::Cache<(ChunkKind, AgentKey, i64), Arc<DecodedRollup>, RollupWeight>;

/// The time-series store: a chunk store and, where this process runs the projection, the
/// head it writes.
#[derive(Debug)]
pub struct TimeSeries {
    store: Arc<dyn ChunkStore>,
    heads: Arc<Heads>,
    retention: Retention,
    config: EngineConfig,
    rollups: Option<RollupCache>,
}

impl TimeSeries {
    /// The engine over `store`, keeping each resolution for its `retention`.
    pub fn new(
        store: Arc<dyn ChunkStore>,
        retention: Retention,
        config: EngineConfig,
    ) -> Result<TimeSeries> {
        retention.validate()?;
        config.validate()?;
        // About 400 KiB per agent-day of 5-minute rollups of ~20 series.
        let rollups = (config.rollup_cache_bytes > 0).then(|| {
            let items = usize::try_from(config.rollup_cache_bytes >> 18).unwrap_or(usize::MAX);
            RollupCache::with_weighter(items.max(16), config.rollup_cache_bytes, RollupWeight)
        });
        Ok(TimeSeries {
            store,
            heads: Arc::new(Heads::new()),
            retention,
            config,
            rollups,
        })
    }

    /// The chunk store underneath.
    pub fn store(&self) -> &Arc<dyn ChunkStore> {
        &self.store
    }

    /// The settings.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A writer over this engine's head, for the projection (one per process).
    pub fn writer(self: &Arc<Self>) -> Writer {
        Writer {
            ts: self.clone(),
            partitions: BTreeMap::new(),
            partition_ids: BTreeMap::new(),
            last_checkpoint: Instant::now(),
            slots: Vec::with_capacity(64),
            pending: Vec::new(),
            evicted: HashMap::new(),
            evicted_partition: HashMap::new(),
            evicted_checked: None,
            pending_evicted: Vec::new(),
            since_memory_check: 0,
            unit_full: 0,
        }
    }

    /// The samples of `series` in the open windows of `key` in `[from, to)`: from the
    /// head when this process holds the agent, else merged from its checkpoint segments.
    async fn open_points(
        &self,
        key: &AgentKey,
        from: i64,
        to: i64,
        series: &[&str],
    ) -> Result<OpenPoints> {
        if let Some(r) = self.heads.open_points(key, from, to, series) {
            return Ok(r);
        }
        let mut blocks: BTreeMap<i64, Block> = BTreeMap::new();
        for seg in self.store.segments(key, from, to).await? {
            let b = decode_block(&seg.bytes, key)?;
            let merged = match blocks.remove(&seg.window) {
                Some(old) if !seg.full => chunk::merge(&old, &b).map_err(chunk_error)?,
                _ => b,
            };
            blocks.insert(seg.window, merged);
        }
        Ok(blocks
            .into_iter()
            .map(|(w, b)| (w, series.iter().map(|s| b.points(s).collect()).collect()))
            .collect())
    }

    /// Stored raw blocks of `key` with windows in `[from, to)`, decoded.
    async fn stored_blocks(
        &self,
        key: &AgentKey,
        from: i64,
        to: i64,
    ) -> Result<BTreeMap<i64, Block>> {
        let mut out = BTreeMap::new();
        for (w, bytes) in self.store.chunks(ChunkKind::Raw, key, from, to).await? {
            out.insert(w, decode_block(&bytes, key)?);
        }
        Ok(out)
    }

    /// A rollup chunk read from the store: the whole set from the cache (decoded and kept
    /// there on a miss), or only `series` when the cache is off.
    fn read_rollup(
        &self,
        kind: ChunkKind,
        key: &AgentKey,
        window: i64,
        bytes: Vec<u8>,
        series: &[&str],
    ) -> Result<RollupRead> {
        let Some(cache) = &self.rollups else {
            return rollup::decode_series(&bytes, series)
                .map(RollupRead::Picked)
                .map_err(|e| corrupt(key, e));
        };
        let id = (kind, key.clone(), window);
        if let Some(hit) = cache.get(&id) {
            if hit.bytes == bytes {
                metrics::rollup_cache(true);
                return Ok(RollupRead::Whole(hit));
            }
        }
        metrics::rollup_cache(false);
        let set = rollup::decode(&bytes).map_err(|e| corrupt(key, e))?;
        let entry = Arc::new(DecodedRollup { bytes, set });
        cache.insert(id, entry.clone());
        Ok(RollupRead::Whole(entry))
    }

    /// The buckets of each of `series` (in that order) of `q`'s agent, range and interval
    /// (`q.series` is not used), from `resolution`; `q` is valid for it. Sealed windows
    /// are served by the stored rollups (or raw blocks), open windows by the head's (or
    /// the segments') samples merged with any block stored for the window.
    async fn query_agent(
        &self,
        q: &RangeQuery,
        series: &[&str],
        resolution: Resolution,
    ) -> Result<Vec<Vec<Bucket>>> {
        let (from, to) = bucket_range(q);
        let key = AgentKey::new(&q.tenant_id, &q.agent_id);
        let Some(width) = resolution.width_micros() else {
            let points = self.raw_points(&key, from, to, series).await?;
            return Ok(points
                .into_iter()
                .map(|p| aggregate_buckets(p, q.interval_micros))
                .collect());
        };
        let (wfrom, wto) = (
            window_of(from),
            window_of(to.saturating_sub(1)) + BLOCK_MICROS,
        );
        let open = self.open_points(&key, wfrom, wto, series).await?;
        let kind = if width == 300_000_000 {
            ChunkKind::Rollup5m
        } else {
            ChunkKind::Rollup1h
        };
        let mut rows: Vec<Vec<Bucket>> = vec![Vec::new(); series.len()];
        let rw_from = kind.window_of(from);
        for (w, bytes) in self.store.chunks(kind, &key, rw_from, to).await? {
            let read = self.read_rollup(kind, &key, w, bytes, series)?;
            for (i, (out, name)) in rows.iter_mut().zip(series).enumerate() {
                if let Some(s) = read.series(i, name) {
                    out.extend(
                        s.rows()
                            .iter()
                            .filter(|r| r.start_micros >= from && r.start_micros < to)
                            .filter(|r| !open.contains_key(&window_of(r.start_micros)))
                            .map(bucket_of),
                    );
                }
            }
        }
        if let (Some(first), Some(last)) = (open.keys().next(), open.keys().next_back()) {
            // Only the stored blocks of the open windows (to merge with): the sealed
            // windows of the range are served by the rollups above.
            let mut stored = self
                .stored_blocks(&key, *first, last.saturating_add(BLOCK_MICROS))
                .await?;
            for (w, o) in &open {
                let block = stored.remove(w);
                for (i, name) in series.iter().enumerate() {
                    let points = merge_points(block.as_ref(), name, Some(&o[i]));
                    let s = rollup::compute_series(name, points, width).map_err(chunk_error)?;
                    rows[i].extend(
                        s.rows()
                            .iter()
                            .filter(|r| r.start_micros >= from && r.start_micros < to)
                            .map(bucket_of),
                    );
                }
            }
        }
        Ok(rows
            .into_iter()
            .map(|mut r| {
                r.sort_by_key(|b| b.start_micros);
                merge_buckets(r, q.interval_micros)
            })
            .collect())
    }

    /// The raw samples of each of `series` of `key` in `[from, to)` (within ±2^62 µs):
    /// stored blocks merged with the open windows (the head's or the segments').
    async fn raw_points(
        &self,
        key: &AgentKey,
        from: i64,
        to: i64,
        series: &[&str],
    ) -> Result<Vec<Vec<(i64, f64)>>> {
        let (wfrom, wto) = (
            window_of(from),
            window_of(to.saturating_sub(1)) + BLOCK_MICROS,
        );
        let open = self.open_points(key, wfrom, wto, series).await?;
        let mut stored = self.stored_blocks(key, wfrom, wto).await?;
        let mut points: Vec<Vec<(i64, f64)>> = vec![Vec::new(); series.len()];
        let windows: std::collections::BTreeSet<i64> =
            stored.keys().chain(open.keys()).copied().collect();
        for w in windows {
            let block = stored.remove(&w);
            for (i, name) in series.iter().enumerate() {
                let merged = merge_points(block.as_ref(), name, open.get(&w).map(|o| &o[i][..]));
                points[i].extend(merged.into_iter().filter(|(t, _)| *t >= from && *t < to));
            }
        }
        Ok(points)
    }

    /// Seals blocks: merges each with the block stored for its window (the new samples
    /// win), stores it with its rollups merged into the stored rollup chunks, and, when the
    /// blocks are the head's own windows (`from_head`), drops the windows' checkpoint
    /// segments. A direct write ([`TimeSeriesStore::write`]) keeps them: the head of a
    /// projection may hold the same window open, and its segments are what a restart
    /// restores it from; when the head seals the window it merges with what was written.
    /// Blocks and rollups past their retention are not stored.
    async fn seal(&self, blocks: Vec<(AgentKey, i64, Block)>, from_head: bool) -> Result<()> {
        if blocks.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let now = now_micros();
        let windows = blocks.len();
        let mut by_agent: BTreeMap<AgentKey, Vec<(i64, Block)>> = BTreeMap::new();
        for (k, w, b) in blocks {
            by_agent.entry(k).or_default().push((w, b));
        }
        let mut write = SealWrite::default();
        // The series index learns the names of what is sealed (idempotent).
        let mut series: std::collections::BTreeSet<(AgentKey, String)> = Default::default();
        for (key, mut items) in by_agent {
            items.sort_by_key(|(w, _)| *w);
            let from = items[0].0;
            let to = items[items.len() - 1].0 + BLOCK_MICROS;
            let mut stored = self.stored_blocks(&key, from, to).await?;
            let mut merged = Vec::with_capacity(items.len());
            for (w, b) in items {
                let b = match stored.remove(&w) {
                    Some(old) => chunk::merge(&old, &b).map_err(chunk_error)?,
                    None => b,
                };
                if from_head {
                    write.sealed.push((key.clone(), w));
                }
                for s in b.series() {
                    series.insert((key.clone(), s.name().to_owned()));
                }
                if keeps(ChunkKind::Raw, w, now, &self.retention) {
                    let bytes = chunk::encode(&b);
                    metrics::chunk_written(ChunkKind::Raw, bytes.len());
                    write.chunks.push(Chunk {
                        kind: ChunkKind::Raw,
                        agent: key.clone(),
                        window: w,
                        bytes,
                    });
                }
                merged.push((w, b));
            }
            for kind in [ChunkKind::Rollup5m, ChunkKind::Rollup1h] {
                let width = kind.rollup_width_micros().unwrap_or(BLOCK_MICROS);
                let mut sets: BTreeMap<i64, RollupSet> = BTreeMap::new();
                for (w, b) in &merged {
                    let rw = kind.window_of(*w);
                    let set = rollup::compute(b, width).map_err(chunk_error)?;
                    let set = match sets.remove(&rw) {
                        Some(acc) => rollup::merge(&acc, &set).map_err(chunk_error)?,
                        None => set,
                    };
                    sets.insert(rw, set);
                }
                for (rw, set) in sets {
                    if !keeps(kind, rw, now, &self.retention) {
                        continue;
                    }
                    let set = match self
                        .store
                        .chunks(kind, &key, rw, rw + 1)
                        .await?
                        .into_iter()
                        .next()
                    {
                        Some((_, bytes)) => {
                            let old = rollup::decode(&bytes).map_err(|e| corrupt(&key, e))?;
                            rollup::merge(&old, &set).map_err(chunk_error)?
                        }
                        None => set,
                    };
                    let bytes = rollup::encode(&set);
                    metrics::chunk_written(kind, bytes.len());
                    write.chunks.push(Chunk {
                        kind,
                        agent: key.clone(),
                        window: rw,
                        bytes,
                    });
                }
            }
        }
        self.store.seal(write).await?;
        if !series.is_empty() {
            self.store
                .checkpoint(CheckpointWrite {
                    series: series.into_iter().collect(),
                    ..CheckpointWrite::default()
                })
                .await?;
        }
        metrics::sealed(windows, started.elapsed());
        Ok(())
    }
}

/// Rebuilds an agent's head from its checkpoint segments (window by window, in sequence
/// order; a full segment replaces what came before it).
async fn load_head(store: &dyn ChunkStore, open: &OpenAgent, partition: u32) -> Result<AgentHead> {
    let mut head = AgentHead::new(partition);
    head.max_ts = open.max_ts;
    head.last_ingested = open.last_ingested;
    for seg in store.segments(&open.agent, i64::MIN, i64::MAX).await? {
        let block = decode_block(&seg.bytes, &open.agent)?;
        let slots: Vec<usize> = block
            .series()
            .iter()
            .map(|s| head.slot_of_name(s.name()))
            .collect();
        let win = head.windows.entry(seg.window).or_default();
        if seg.full {
            *win = OpenWindow::default();
        }
        let mut i = 0;
        win.absorb(&block, &mut |_| {
            i += 1;
            slots[i - 1]
        });
        win.next_seq = seg.seq + 1;
        head.max_ts = head
            .max_ts
            .max(block.time_range().map_or(i64::MIN, |r| r.1));
    }
    head.mark_indexed();
    Ok(head)
}

/// Whether a chunk of `kind` for window `w` is still within retention at `now`.
fn keeps(kind: ChunkKind, w: i64, now: i64, retention: &Retention) -> bool {
    let end = w.saturating_add(kind.window_micros());
    end > now.saturating_sub(micros(kind.retention(retention)))
}

fn chunk_error(e: crate::ChunkError) -> Error {
    Error::Internal(format!("time-series chunk: {e}"))
}

fn corrupt(key: &AgentKey, e: crate::ChunkError) -> Error {
    Error::Internal(format!(
        "a stored chunk of {}/{} does not decode: {e}",
        key.tenant, key.agent
    ))
}

fn decode_block(bytes: &[u8], key: &AgentKey) -> Result<Block> {
    chunk::decode(bytes).map_err(|e| corrupt(key, e))
}

/// Samples of some series in the open windows: per window start, per series asked, its
/// samples in time order.
type OpenPoints = BTreeMap<i64, Vec<Vec<(i64, f64)>>>;

/// The samples of series `name` of a stored block merged with `newer` (time order), the
/// newer sample winning at the same time: what [`chunk::merge`] gives for that series.
fn merge_points(
    stored: Option<&Block>,
    name: &str,
    newer: Option<&[(i64, f64)]>,
) -> Vec<(i64, f64)> {
    let newer = newer.unwrap_or(&[]);
    let Some(stored) = stored else {
        return newer.to_vec();
    };
    let mut out = Vec::with_capacity(newer.len());
    let mut new = newer.iter().copied().peekable();
    for (t, v) in stored.points(name) {
        while let Some(n) = new.next_if(|n| n.0 < t) {
            out.push(n);
        }
        match new.next_if(|n| n.0 == t) {
            Some(n) => out.push(n),
            None => out.push((t, v)),
        }
    }
    out.extend(new);
    out
}

fn bucket_of(r: &crate::RollupRow) -> Bucket {
    Bucket {
        start_micros: r.start_micros,
        min: r.min,
        max: r.max,
        avg: r.avg(),
        sum: r.sum,
        count: r.count,
        last: r.last,
    }
}

#[async_trait]
impl TimeSeriesStore for TimeSeries {
    fn engine(&self) -> &'static str {
        self.store.engine()
    }

    fn retention(&self) -> &Retention {
        &self.retention
    }

    /// Writes points as sealed blocks straight to the store (for tools and tests; the
    /// projection writes through a [`Writer`]). A window a projection's head holds open
    /// keeps its checkpoint segments (see `seal`).
    async fn write(&self, points: &[Point]) -> Result<()> {
        validate_points(points)?;
        let mut groups: BTreeMap<(AgentKey, i64), Vec<(i64, &str, f64)>> = BTreeMap::new();
        for p in points {
            groups
                .entry((
                    AgentKey::new(&p.tenant_id, &p.agent_id),
                    window_of(p.ts_micros),
                ))
                .or_default()
                .push((p.ts_micros, &p.series, p.value));
        }
        let mut blocks = Vec::with_capacity(groups.len());
        for ((key, w), samples) in groups {
            let b = Block::from_samples(samples).map_err(|e| Error::InvalidQuery(e.to_string()))?;
            blocks.push((key, w, b));
        }
        self.seal(blocks, false).await
    }

    async fn query_resolution(
        &self,
        q: &RangeQuery,
        resolution: Resolution,
    ) -> Result<Vec<Bucket>> {
        validate_query(q, resolution)?;
        let mut answers = self
            .query_agent(q, &[q.series.as_str()], resolution)
            .await?;
        Ok(answers.pop().unwrap_or_default())
    }

    /// The queries of one agent, range and interval (a chart) are answered together:
    /// one read of the store and of the head for all their series.
    async fn query_many(&self, queries: &[RangeQuery]) -> Result<Vec<Vec<Bucket>>> {
        let Some(first) = queries.first() else {
            return Ok(Vec::new());
        };
        let one_chart = queries.iter().all(|q| {
            q.tenant_id == first.tenant_id
                && q.agent_id == first.agent_id
                && q.start_micros == first.start_micros
                && q.end_micros == first.end_micros
                && q.interval_micros == first.interval_micros
        });
        if !one_chart {
            let mut out = Vec::with_capacity(queries.len());
            for q in queries {
                out.push(self.query(q).await?);
            }
            return Ok(out);
        }
        let resolution = Resolution::for_interval(first.interval_micros);
        validate_query(first, resolution)?;
        let series: Vec<&str> = queries.iter().map(|q| q.series.as_str()).collect();
        self.query_agent(first, &series, resolution).await
    }

    async fn points(
        &self,
        tenant_id: &str,
        agent_id: &str,
        series: &[&str],
        start_micros: i64,
        end_micros: i64,
    ) -> Result<Vec<Vec<(i64, f64)>>> {
        let (from, to) = (
            start_micros.max(-crate::MAX_ABS_TS_MICROS),
            end_micros.min(crate::MAX_ABS_TS_MICROS),
        );
        if from >= to || series.is_empty() {
            return Ok(vec![Vec::new(); series.len()]);
        }
        self.raw_points(&AgentKey::new(tenant_id, agent_id), from, to, series)
            .await
    }

    async fn series(&self, tenant_id: &str, agent_id: &str) -> Result<Vec<String>> {
        let key = AgentKey::new(tenant_id, agent_id);
        let mut names = self.store.series(&key).await?;
        names.extend(self.heads.names(&key));
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn list_series(&self, limit: usize) -> Result<Vec<SeriesKey>> {
        Ok(self
            .store
            .list_series(limit)
            .await?
            .into_iter()
            .map(|s| SeriesKey {
                tenant_id: s.agent.tenant.to_string(),
                agent_id: s.agent.agent.to_string(),
                series: s.series,
            })
            .collect())
    }

    async fn expire(&self, now_micros: i64) -> Result<u64> {
        self.store.expire(now_micros, &self.retention).await
    }
}

/// How a report fared in [`Writer::ingest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingested {
    /// Its samples are in the head.
    Stored(usize),
    /// Older than the agent's newest sample by more than the out-of-order allowance.
    TooLate,
    /// Its time is beyond ±2^62 µs ([`crate::MAX_ABS_TS_MICROS`]): never storable.
    OutOfRange,
}

/// What the writer knows of a partition it holds.
#[derive(Debug, Clone, Default)]
struct PartitionTrack {
    /// The writer's id of the partition ([`Writer::partition_id`]), which an agent's head
    /// names its partition by.
    id: u32,
    next_offset: i64,
    watermark: i64,
    /// The watermark at the last scan for idle agents.
    idle_scanned: i64,
}

/// The projection's side of the engine: ingest, seal, checkpoint. One per process.
#[derive(Debug)]
pub struct Writer {
    ts: Arc<TimeSeries>,
    partitions: BTreeMap<(Arc<str>, u32), PartitionTrack>,
    /// A small id per (topic, partition) ever held, stable for the writer's life: a head
    /// names its partition by it, so partitions of different topics with the same number
    /// (the writer takes several topics) stay apart.
    partition_ids: BTreeMap<(Arc<str>, u32), u32>,
    last_checkpoint: Instant,
    /// Reused per report: (slot, value).
    slots: Vec<(usize, f64)>,
    /// Windows to seal at the end of the batch: (agent, window).
    pending: Vec<(AgentKey, i64)>,
    /// Agents taken out of the head to stay under its memory limit: their open windows
    /// are in the store's segments and come back when they report again.
    evicted: HashMap<AgentKey, OpenAgent>,
    /// The partition (id) of each evicted agent.
    evicted_partition: HashMap<AgentKey, u32>,
    /// The agent [`Writer::ingest`] just loaded back (not to be looked up again).
    evicted_checked: Option<AgentKey>,
    /// Evicted agents gone idle: sealed from their segments at the end of the batch.
    pending_evicted: Vec<OpenAgent>,
    /// Samples ingested since the head's bytes were last added up ([`Writer::over_memory`]).
    since_memory_check: u64,
    /// Samples of the last row not stored because their unit holds [`MAX_UNIT_SERIES`]
    /// series already.
    unit_full: usize,
}

/// One row for the head: an agent's (or unit's) samples of one time.
struct Row<'a> {
    tenant: &'a str,
    agent: &'a str,
    /// The gateway's time of the record (µs): its partition's clock.
    ingested_at: i64,
    /// The samples' time (µs).
    occurred_at: i64,
    samples: RowSamples<'a>,
}

/// The samples of a [`Row`].
enum RowSamples<'a> {
    /// A metric report's (non-finite values skipped).
    Report(&'a MetricReport),
    /// Series named in full, values finite.
    Named(&'a [(&'a str, f64)]),
}

/// What [`Writer::ingest_samples`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SamplesIngested {
    /// Samples in the head.
    pub stored: usize,
    /// NaN or ±Inf values (staleness markers), skipped.
    pub non_finite: usize,
    /// Samples of rows older than their unit's newest by more than the out-of-order
    /// allowance (each row counted once in `fleet_timeseries_late_refused_total`).
    pub too_late: usize,
    /// Sample times beyond ±2^62 µs: never storable.
    pub out_of_range: usize,
    /// Series texts over [`crate::limits::MAX_NAME_BYTES`]: never storable.
    pub name_too_long: usize,
    /// New series of a unit that holds [`MAX_UNIT_SERIES`] already.
    pub unit_full: usize,
    /// What was wrong with the first sample refused as never storable (out of range or
    /// too long a name), for a dead letter's reason.
    pub first_refused: Option<String>,
}

impl SamplesIngested {
    /// Samples that can never be stored (out of range, too long a name).
    pub fn refused(&self) -> usize {
        self.out_of_range + self.name_too_long
    }
}

/// An offset to commit: (topic, partition, next offset).
pub type CommitPoint = (String, u32, i64);

impl Writer {
    /// The engine this writer feeds.
    pub fn engine(&self) -> &Arc<TimeSeries> {
        &self.ts
    }

    /// Takes a partition this process now holds: loads its last checkpoint into the head
    /// and returns the offset to resume at (`None` when the store has no checkpoint of it:
    /// read it from its start).
    pub async fn assign(&mut self, topic: &str, partition: u32) -> Result<Option<i64>> {
        let state = self.ts.store.partition_state(topic, partition).await?;
        let id = self.partition_id(&Arc::from(topic), partition);
        let track = PartitionTrack {
            id,
            next_offset: state.as_ref().map_or(0, |s| s.next_offset),
            watermark: state.as_ref().map_or(i64::MIN, |s| s.watermark),
            idle_scanned: state.as_ref().map_or(i64::MIN, |s| s.watermark),
        };
        self.partitions.insert((topic.into(), partition), track);
        let Some(state) = state else {
            return Ok(None);
        };
        for open in &state.agents {
            let head = load_head(self.ts.store.as_ref(), open, id).await?;
            self.evicted.remove(&open.agent);
            let mut shard = self.ts.heads.shard(&open.agent.agent).lock();
            shard
                .entry(open.agent.tenant.clone())
                .or_default()
                .insert(open.agent.agent.clone(), head);
        }
        Ok(Some(state.next_offset))
    }

    /// Forgets a partition this process no longer holds: its agents leave the head (the
    /// new holder restores them from the last checkpoint).
    pub fn revoke(&mut self, topic: &str, partition: u32) {
        let topic: Arc<str> = Arc::from(topic);
        self.partitions.remove(&(topic.clone(), partition));
        let Some(&partition) = self.partition_ids.get(&(topic, partition)) else {
            return;
        };
        let gone: Vec<AgentKey> = self
            .evicted_partition
            .iter()
            .filter(|(_, p)| **p == partition)
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.evicted.remove(&k);
            self.evicted_partition.remove(&k);
        }
        for shard in self.ts.heads.shards.iter() {
            let mut shard = shard.lock();
            for agents in shard.values_mut() {
                agents.retain(|_, h| h.partition != partition);
            }
            shard.retain(|_, a| !a.is_empty());
        }
    }

    /// Applies a report read at `offset` of `topic`/`partition`. Non-finite values are
    /// skipped (the store holds finite values only). An agent evicted from the head is
    /// loaded back from its segments first.
    pub async fn ingest(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        offset: i64,
        r: &MetricReport,
    ) -> Result<Ingested> {
        let row = Row {
            tenant: &r.tenant_id,
            agent: &r.agent_id,
            ingested_at: r.ingested_at,
            occurred_at: r.occurred_at,
            samples: RowSamples::Report(r),
        };
        self.ingest_row(topic, partition, offset, &row).await
    }

    /// Applies a [`SampleBatch`] read at `offset` of `topic`/`partition`: each sample goes
    /// to the unit of its source ([`fleet_schemas::series::unit_id`], the engine's agent
    /// id) as series [`fleet_schemas::series::series_text`]; a unit's samples of one time
    /// are one row, the rows in time order, each stored as a report would be (the
    /// out-of-order allowance per row, the batch's `received_at` as its partition clock).
    /// Not stored, and counted in the answer (and in
    /// `fleet_timeseries_samples_skipped_total{reason}`): non-finite values (a NaN is
    /// Prometheus' staleness marker; the store holds finite values only), times beyond
    /// ±2^62 µs, series texts longer than [`crate::limits::MAX_NAME_BYTES`], new series of
    /// a unit that already has [`MAX_UNIT_SERIES`], and rows too late.
    pub async fn ingest_samples(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        offset: i64,
        batch: &SampleBatch,
    ) -> Result<SamplesIngested> {
        let mut out = SamplesIngested::default();
        let mut units: BTreeMap<String, BTreeMap<i64, Vec<(String, f64)>>> = BTreeMap::new();
        for s in &batch.samples {
            if !s.value.is_finite() {
                out.non_finite += 1;
                continue;
            }
            if s.timestamp.unsigned_abs() > crate::MAX_ABS_TS_MICROS.unsigned_abs() {
                out.out_of_range += 1;
                out.first_refused.get_or_insert_with(|| {
                    format!(
                        "sample time {} µs is beyond ±2^62 µs from the epoch",
                        s.timestamp
                    )
                });
                continue;
            }
            let name = s.series_text();
            if name.len() > crate::limits::MAX_NAME_BYTES {
                out.name_too_long += 1;
                out.first_refused.get_or_insert_with(|| {
                    format!(
                        "series text of {} bytes is over the limit of {} (metric {})",
                        name.len(),
                        crate::limits::MAX_NAME_BYTES,
                        s.metric
                    )
                });
                continue;
            }
            units
                .entry(s.unit_id())
                .or_default()
                .entry(s.timestamp)
                .or_default()
                .push((name, s.value));
        }
        let mut stored_any = false;
        let mut named: Vec<(&str, f64)> = Vec::new();
        for (unit, rows) in &units {
            for (&ts, samples) in rows {
                named.clear();
                named.extend(samples.iter().map(|(n, v)| (n.as_str(), *v)));
                let row = Row {
                    tenant: &batch.tenant_id,
                    agent: unit,
                    ingested_at: batch.received_at,
                    occurred_at: ts,
                    samples: RowSamples::Named(&named),
                };
                self.unit_full = 0;
                match self.ingest_row(topic, partition, offset, &row).await? {
                    Ingested::Stored(n) => out.stored += n,
                    Ingested::TooLate => out.too_late += samples.len(),
                    Ingested::OutOfRange => out.out_of_range += samples.len(),
                }
                out.unit_full += self.unit_full;
                stored_any = true;
            }
        }
        if !stored_any {
            self.skip(topic, partition, offset);
        }
        metrics::samples_skipped("non_finite", out.non_finite);
        metrics::samples_skipped("out_of_range", out.out_of_range);
        metrics::samples_skipped("name_too_long", out.name_too_long);
        metrics::samples_skipped("unit_full", out.unit_full);
        Ok(out)
    }

    /// Applies one row (a report, or a unit's samples of one time) read at `offset`; an
    /// agent evicted from the head is loaded back from its segments first.
    async fn ingest_row(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        offset: i64,
        r: &Row<'_>,
    ) -> Result<Ingested> {
        match self.ingest_held(topic, partition, offset, r) {
            Some(done) => Ok(done),
            None => {
                let key = AgentKey::new(r.tenant, r.agent);
                if let Some(open) = self.evicted.remove(&key) {
                    self.evicted_partition.remove(&key);
                    let id = self.partition_id(topic, partition);
                    let head = load_head(self.ts.store.as_ref(), &open, id).await?;
                    let mut shard = self.ts.heads.shard(&key.agent).lock();
                    shard
                        .entry(key.tenant.clone())
                        .or_default()
                        .insert(key.agent.clone(), head);
                }
                self.evicted_checked = Some(key);
                let done = self.ingest_held(topic, partition, offset, r);
                self.evicted_checked = None;
                done.ok_or_else(|| Error::Internal("an agent could not be loaded back".into()))
            }
        }
    }

    /// Records that the record at `offset` was read but holds nothing to store (it did not
    /// decode): the next checkpoint's offset moves past it.
    pub fn skip(&mut self, topic: &Arc<str>, partition: u32, offset: i64) {
        let track = self.track(topic, partition);
        track.next_offset = track.next_offset.max(offset.saturating_add(1));
    }

    /// The id of `topic`/`partition` (given on first sight).
    fn partition_id(&mut self, topic: &Arc<str>, partition: u32) -> u32 {
        let next = u32::try_from(self.partition_ids.len()).unwrap_or(u32::MAX);
        *self
            .partition_ids
            .entry((topic.clone(), partition))
            .or_insert(next)
    }

    fn track(&mut self, topic: &Arc<str>, partition: u32) -> &mut PartitionTrack {
        let id = self.partition_id(topic, partition);
        self.partitions
            .entry((topic.clone(), partition))
            .or_insert_with(|| PartitionTrack {
                id,
                watermark: i64::MIN,
                idle_scanned: i64::MIN,
                ..Default::default()
            })
    }

    /// [`Writer::ingest_row`] for an agent in the head (or new); `None` when the agent may be
    /// evicted and must be loaded first.
    fn ingest_held(
        &mut self,
        topic: &Arc<str>,
        partition: u32,
        offset: i64,
        r: &Row<'_>,
    ) -> Option<Ingested> {
        let track = self.track(topic, partition);
        let pid = track.id;
        track.next_offset = track.next_offset.max(offset.saturating_add(1));
        if r.occurred_at.unsigned_abs() > crate::MAX_ABS_TS_MICROS.unsigned_abs() {
            return Some(Ingested::OutOfRange);
        }
        track.watermark = track.watermark.max(r.ingested_at);
        let allowance = self.ts.config.out_of_order_micros();
        let mut shard = self.ts.heads.shard(r.agent).lock();
        let tenant = match shard.get_key_value(r.tenant) {
            Some((k, _)) => k.clone(),
            None => Arc::from(r.tenant),
        };
        let agents = shard.entry(tenant.clone()).or_default();
        let head = match agents.get_mut(r.agent) {
            Some(h) => h,
            None => {
                let checked = self
                    .evicted_checked
                    .as_ref()
                    .is_some_and(|k| &*k.tenant == r.tenant && &*k.agent == r.agent);
                if !self.evicted.is_empty() && !checked {
                    return None;
                }
                agents
                    .entry(Arc::from(r.agent))
                    .or_insert_with(|| AgentHead::new(pid))
            }
        };
        head.partition = pid;
        head.last_ingested = head.last_ingested.max(r.ingested_at);
        if head.max_ts != i64::MIN && r.occurred_at < head.max_ts.saturating_sub(allowance) {
            metrics::late_refused();
            return Some(Ingested::TooLate);
        }
        self.slots.clear();
        let mut hint = 0;
        let slots = &mut self.slots;
        match r.samples {
            RowSamples::Report(report) => for_each_sample(report, |metric, subject, value| {
                if value.is_finite() {
                    let slot = head.slot(metric, subject, hint);
                    hint = slot + 1;
                    slots.push((slot, value));
                }
            }),
            RowSamples::Named(named) => {
                for &(name, value) in named {
                    match head.slot_of_name_bounded(name, hint, MAX_UNIT_SERIES) {
                        Some(slot) => {
                            hint = slot + 1;
                            slots.push((slot, value));
                        }
                        None => self.unit_full += 1,
                    }
                }
            }
        }
        let n = slots.len();
        head.write(r.occurred_at, slots.drain(..));
        if let Some((&first, _)) = head.windows.first_key_value() {
            if first + BLOCK_MICROS <= head.max_ts.saturating_sub(allowance) {
                let key = AgentKey {
                    tenant,
                    agent: Arc::from(r.agent),
                };
                for w in head.closed_windows(allowance) {
                    if !head.windows.get(&w).is_some_and(|x| x.sealing) {
                        if let Some(x) = head.windows.get_mut(&w) {
                            x.sealing = true;
                        }
                        self.pending.push((key.clone(), w));
                    }
                }
            }
        }
        metrics::samples(n);
        self.since_memory_check = self.since_memory_check.saturating_add(n as u64);
        Some(Ingested::Stored(n))
    }

    /// After a batch: seals the windows that closed (and those of idle agents), and
    /// checkpoints when due. Returns the offsets the consumer may commit when a
    /// checkpoint was written.
    pub async fn after_batch(&mut self) -> Result<Option<Vec<CommitPoint>>> {
        self.scan_idle();
        self.seal_pending().await?;
        if self.over_memory() {
            let commits = self.checkpoint().await?;
            self.evict();
            return Ok(Some(commits));
        }
        if self.last_checkpoint.elapsed() >= self.ts.config.checkpoint_interval {
            return self.checkpoint().await.map(Some);
        }
        Ok(None)
    }

    /// Whether the head holds more than its limit. Adding the head up visits every agent's
    /// columns (with 10,000 agents, 3% of `up`'s time when done after every batch), so it
    /// is done once samples numbering a 1/1024th of the limit came in since the last time:
    /// a sample adds about 8 to 16 bytes, so the head overshoots by about 1-2% at most.
    fn over_memory(&mut self) -> bool {
        let limit = self.ts.config.head_memory_limit;
        if limit == 0 || self.since_memory_check < (limit / 1024).max(1) {
            return false;
        }
        self.since_memory_check = 0;
        self.head_bytes() as u64 > limit
    }

    /// Takes the least recently written agents out of the head until it holds at most
    /// three quarters of its limit. Call right after a checkpoint: an evicted agent's
    /// open windows are all in its segments, and [`Writer::ingest`] loads them back when
    /// it reports again (a query reads the segments meanwhile).
    fn evict(&mut self) {
        let limit = self.ts.config.head_memory_limit as usize;
        let mut total = self.head_bytes();
        let target = limit / 4 * 3;
        if total <= target {
            return;
        }
        let mut candidates: Vec<(i64, AgentKey, usize)> = Vec::new();
        for shard in self.ts.heads.shards.iter() {
            let shard = shard.lock();
            for (tenant, agents) in shard.iter() {
                for (agent, head) in agents.iter() {
                    if !head.dirty && !head.windows.values().any(|w| w.sealing) {
                        candidates.push((
                            head.last_ingested,
                            AgentKey {
                                tenant: tenant.clone(),
                                agent: agent.clone(),
                            },
                            head.heap_bytes(),
                        ));
                    }
                }
            }
        }
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut n = 0;
        for (_, key, bytes) in candidates {
            if total <= target {
                break;
            }
            let mut shard = self.ts.heads.shard(&key.agent).lock();
            let Some(agents) = shard.get_mut(&key.tenant) else {
                continue;
            };
            let Some(head) = agents.remove(&key.agent) else {
                continue;
            };
            if !head.windows.is_empty() {
                self.evicted.insert(
                    key.clone(),
                    OpenAgent {
                        agent: key.clone(),
                        max_ts: head.max_ts,
                        last_ingested: head.last_ingested,
                    },
                );
                self.evicted_partition.insert(key, head.partition);
            }
            total = total.saturating_sub(bytes);
            n += 1;
        }
        metrics::evicted(n);
        tracing::warn!(evicted = n, head_bytes = total, limit, "Head over its memory limit: agents evicted (their samples are in the checkpoint segments).");
    }

    /// Bytes the head holds, roughly (also the `fleet_timeseries_head_bytes` gauge).
    pub fn head_bytes(&self) -> usize {
        let mut total = 0;
        for shard in self.ts.heads.shards.iter() {
            let shard = shard.lock();
            for agents in shard.values() {
                total += agents.values().map(AgentHead::heap_bytes).sum::<usize>();
            }
        }
        total
    }

    /// Queues the windows of agents silent for `idle-seal-after` by their partition's
    /// clock; checked when a partition's clock moved a minute since the last scan.
    fn scan_idle(&mut self) {
        let idle = micros(self.ts.config.idle_seal_after);
        let mut due: Vec<(u32, i64)> = Vec::new();
        for t in self.partitions.values_mut() {
            if t.watermark != i64::MIN && t.watermark.saturating_sub(t.idle_scanned) >= 60_000_000 {
                t.idle_scanned = t.watermark;
                due.push((t.id, t.watermark.saturating_sub(idle)));
            }
        }
        if due.is_empty() {
            return;
        }
        let idle_evicted: Vec<AgentKey> = self
            .evicted
            .iter()
            .filter(|(k, open)| {
                self.evicted_partition.get(*k).is_some_and(|p| {
                    due.iter()
                        .any(|(dp, cutoff)| dp == p && open.last_ingested <= *cutoff)
                })
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle_evicted {
            if let Some(open) = self.evicted.remove(&k) {
                self.evicted_partition.remove(&k);
                self.pending_evicted.push(open);
            }
        }
        for shard in self.ts.heads.shards.iter() {
            let mut shard = shard.lock();
            for (tenant, agents) in shard.iter_mut() {
                for (agent, head) in agents.iter_mut() {
                    let Some(&(_, cutoff)) = due.iter().find(|(p, _)| *p == head.partition) else {
                        continue;
                    };
                    if head.last_ingested <= cutoff {
                        head.idle = true;
                        for (&w, win) in head.windows.iter_mut() {
                            if !win.sealing {
                                win.sealing = true;
                                self.pending.push((
                                    AgentKey {
                                        tenant: tenant.clone(),
                                        agent: agent.clone(),
                                    },
                                    w,
                                ));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Seals the queued windows, then takes them out of the head (and idle agents with no
    /// window left).
    async fn seal_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() && self.pending_evicted.is_empty() {
            return Ok(());
        }
        let mut blocks = Vec::with_capacity(self.pending.len());
        for open in std::mem::take(&mut self.pending_evicted) {
            let head = load_head(self.ts.store.as_ref(), &open, 0).await?;
            for (w, win) in &head.windows {
                blocks.push((
                    open.agent.clone(),
                    *w,
                    win.to_block(head.names()).map_err(chunk_error)?,
                ));
            }
        }
        for (key, w) in &self.pending {
            let shard = self.ts.heads.shard(&key.agent).lock();
            let Some(head) = shard.get(&key.tenant).and_then(|a| a.get(&key.agent)) else {
                continue;
            };
            let Some(win) = head.windows.get(w) else {
                continue;
            };
            let b = win.to_block(head.names()).map_err(chunk_error)?;
            blocks.push((key.clone(), *w, b));
        }
        self.ts.seal(blocks, true).await?;
        for (key, w) in std::mem::take(&mut self.pending) {
            let mut shard = self.ts.heads.shard(&key.agent).lock();
            let Some(agents) = shard.get_mut(&key.tenant) else {
                continue;
            };
            let Some(head) = agents.get_mut(&key.agent) else {
                continue;
            };
            head.windows.remove(&w);
            if head.idle && head.windows.is_empty() {
                agents.remove(&key.agent);
            }
        }
        Ok(())
    }

    /// Writes a checkpoint: every unsaved sample of the head as segments, new series
    /// names, and each held partition's next offset, clock and open agents. Returns the
    /// offsets the consumer may commit.
    pub async fn checkpoint(&mut self) -> Result<Vec<CommitPoint>> {
        let started = Instant::now();
        let mut write = CheckpointWrite::default();
        let mut saved: Vec<(AgentKey, Vec<i64>, usize)> = Vec::new();
        let mut open_by_partition: HashMap<u32, Vec<OpenAgent>> = HashMap::new();
        for shard in self.ts.heads.shards.iter() {
            let shard = shard.lock();
            for (tenant, agents) in shard.iter() {
                for (agent, head) in agents.iter() {
                    let key = AgentKey {
                        tenant: tenant.clone(),
                        agent: agent.clone(),
                    };
                    if !head.windows.is_empty() {
                        open_by_partition
                            .entry(head.partition)
                            .or_default()
                            .push(OpenAgent {
                                agent: key.clone(),
                                max_ts: head.max_ts,
                                last_ingested: head.last_ingested,
                            });
                    }
                    if !head.dirty {
                        continue;
                    }
                    let mut windows = Vec::new();
                    for (&w, win) in &head.windows {
                        if let Some((block, full)) =
                            win.unsaved(head.names()).map_err(chunk_error)?
                        {
                            write.segments.push(Segment {
                                agent: key.clone(),
                                window: w,
                                seq: win.next_seq,
                                full,
                                bytes: chunk::encode(&block),
                            });
                            windows.push(w);
                        }
                    }
                    for name in head.unindexed() {
                        write.series.push((key.clone(), name.to_string()));
                    }
                    saved.push((key, windows, head.names().len()));
                }
            }
        }
        for (key, open) in &self.evicted {
            if let Some(p) = self.evicted_partition.get(key) {
                open_by_partition.entry(*p).or_default().push(open.clone());
            }
        }
        let mut commits = Vec::with_capacity(self.partitions.len());
        for ((topic, p), t) in &self.partitions {
            let mut agents = open_by_partition.remove(&t.id).unwrap_or_default();
            agents.sort_by(|a, b| a.agent.cmp(&b.agent));
            write.partitions.push(PartitionState {
                topic: topic.to_string(),
                partition: *p,
                next_offset: t.next_offset,
                watermark: t.watermark,
                agents,
            });
            commits.push((topic.to_string(), *p, t.next_offset));
        }
        let bytes: usize = write.segments.iter().map(|s| s.bytes.len()).sum();
        self.ts.store.checkpoint(write).await?;
        for (key, windows, indexed) in saved {
            let mut shard = self.ts.heads.shard(&key.agent).lock();
            let Some(head) = shard
                .get_mut(&key.tenant)
                .and_then(|a| a.get_mut(&key.agent))
            else {
                continue;
            };
            for w in windows {
                if let Some(win) = head.windows.get_mut(&w) {
                    win.mark_saved();
                }
            }
            head.set_indexed(indexed);
            head.dirty = false;
        }
        self.last_checkpoint = Instant::now();
        metrics::checkpointed(bytes, started.elapsed(), self.head_bytes());
        Ok(commits)
    }
}
