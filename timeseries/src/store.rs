//! The chunk-store seam: where the engine keeps encoded blocks, rollups, checkpoint
//! segments and partition state. Two engines implement [`ChunkStore`]: the embedded one
//! on redb ([`crate::embedded`]) and the CQL one for ScyllaDB / Cassandra
//! ([`crate::cql`], feature `cql`); one conformance suite runs on both
//! (`tests/chunk_store.rs`).
//!
//! A store only keeps bytes under keys; what the bytes mean (the chunk format, rollups,
//! sealing, checkpoints) is the engine's business ([`crate::engine`]).

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Result, Retention};

/// An agent: the unit of a block (its series share one timestamp column).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey {
    /// Tenant.
    pub tenant: Arc<str>,
    /// Agent.
    pub agent: Arc<str>,
}

impl AgentKey {
    /// The key of `agent` of `tenant`.
    pub fn new(tenant: &str, agent: &str) -> AgentKey {
        AgentKey {
            tenant: tenant.into(),
            agent: agent.into(),
        }
    }
}

/// What a stored chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChunkKind {
    /// A block of raw samples: one agent, one hour.
    Raw,
    /// 5-minute rollup rows of one agent, one day.
    Rollup5m,
    /// 1-hour rollup rows of one agent, one week.
    Rollup1h,
}

impl ChunkKind {
    /// Every kind.
    pub const ALL: [ChunkKind; 3] = [ChunkKind::Raw, ChunkKind::Rollup5m, ChunkKind::Rollup1h];

    /// Width of a chunk's window (µs); windows are aligned to the epoch.
    pub fn window_micros(self) -> i64 {
        match self {
            ChunkKind::Raw => crate::head::BLOCK_MICROS,
            ChunkKind::Rollup5m => 24 * 3_600_000_000,
            ChunkKind::Rollup1h => 7 * 24 * 3_600_000_000,
        }
    }

    /// Start of the window of this kind holding `ts_micros`.
    pub fn window_of(self, ts_micros: i64) -> i64 {
        let w = self.window_micros();
        ts_micros.div_euclid(w) * w
    }

    /// Bucket width of the rollup rows (µs); `None` for raw blocks.
    pub fn rollup_width_micros(self) -> Option<i64> {
        match self {
            ChunkKind::Raw => None,
            ChunkKind::Rollup5m => Some(300_000_000),
            ChunkKind::Rollup1h => Some(3_600_000_000),
        }
    }

    /// How long chunks of this kind are kept after their window ended.
    pub fn retention(self, r: &Retention) -> std::time::Duration {
        match self {
            ChunkKind::Raw => r.raw,
            ChunkKind::Rollup5m => r.five_minutes,
            ChunkKind::Rollup1h => r.one_hour,
        }
    }

    /// Short name (`raw`, `5m`, `1h`), also in table names and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkKind::Raw => "raw",
            ChunkKind::Rollup5m => "5m",
            ChunkKind::Rollup1h => "1h",
        }
    }
}

/// An encoded chunk under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// What it holds.
    pub kind: ChunkKind,
    /// Whose.
    pub agent: AgentKey,
    /// Window start (µs).
    pub window: i64,
    /// The encoded block or rollup set.
    pub bytes: Vec<u8>,
}

/// A checkpoint segment: samples of one agent's open window saved since the previous
/// checkpoint (an encoded block). Segments of a window are applied in `seq` order; a
/// `full` one holds the whole window and makes the earlier ones obsolete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Whose.
    pub agent: AgentKey,
    /// Window start (µs).
    pub window: i64,
    /// Order within the window.
    pub seq: u64,
    /// Holds the whole window (earlier segments of it may be dropped).
    pub full: bool,
    /// The encoded block.
    pub bytes: Vec<u8>,
}

/// An agent with open windows at a checkpoint, and what its head remembers beyond the
/// samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAgent {
    /// Whose.
    pub agent: AgentKey,
    /// Newest sample time accepted (µs).
    pub max_ts: i64,
    /// Newest `ingested_at` of its reports (µs).
    pub last_ingested: i64,
}

/// What the engine needs to resume a topic partition: everything before `next_offset` is
/// in sealed chunks or in the listed agents' segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to read.
    pub next_offset: i64,
    /// Newest `ingested_at` seen on the partition (µs): its event-time clock.
    pub watermark: i64,
    /// Agents with open windows.
    pub agents: Vec<OpenAgent>,
}

/// What sealing windows writes, in one step where the engine can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SealWrite {
    /// Chunks to put (replacing any under the same key).
    pub chunks: Vec<Chunk>,
    /// Raw windows now sealed: their segments go.
    pub sealed: Vec<(AgentKey, i64)>,
}

/// A checkpoint, in one step where the engine can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckpointWrite {
    /// New segments.
    pub segments: Vec<Segment>,
    /// Series names first seen since the previous checkpoint or seal.
    pub series: Vec<(AgentKey, String)>,
    /// The partitions' new states.
    pub partitions: Vec<PartitionState>,
}

/// One series of the whole store.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredSeries {
    /// Whose.
    pub agent: AgentKey,
    /// Series name.
    pub series: String,
}

/// Where encoded chunks live.
#[async_trait]
pub trait ChunkStore: Send + Sync + Debug {
    /// Short engine name (`embedded`, `cql`).
    fn engine(&self) -> &'static str;

    /// Puts sealed chunks and drops the segments of the sealed windows (chunks first, so
    /// nothing is ever in neither).
    async fn seal(&self, write: SealWrite) -> Result<()>;

    /// The chunks of `kind` of `agent` whose window starts in `[from, to)`, by window.
    async fn chunks(
        &self,
        kind: ChunkKind,
        agent: &AgentKey,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>>;

    /// Writes a checkpoint: segments and series first, then the partition states.
    async fn checkpoint(&self, write: CheckpointWrite) -> Result<()>;

    /// The last checkpointed state of a partition.
    async fn partition_state(&self, topic: &str, partition: u32) -> Result<Option<PartitionState>>;

    /// The segments of `agent` whose window starts in `[from, to)`, by window then seq.
    async fn segments(&self, agent: &AgentKey, from: i64, to: i64) -> Result<Vec<Segment>>;

    /// Series names recorded for `agent`.
    async fn series(&self, agent: &AgentKey) -> Result<Vec<String>>;

    /// Up to `limit` series of the whole store, ordered by (tenant, agent, series).
    async fn list_series(&self, limit: usize) -> Result<Vec<StoredSeries>>;

    /// Deletes chunks of each kind whose window ended more than its retention before
    /// `now_micros`, and segments of windows past the raw retention; returns how many
    /// went. An engine whose rows expire by themselves (TTL) returns 0.
    async fn expire(&self, now_micros: i64, retention: &Retention) -> Result<u64>;

    /// Bytes stored per kind (`raw`, `5m`, `1h`, `segments`), for `/metrics` and the
    /// benches; engines that cannot tell answer what they can.
    async fn stored_bytes(&self) -> Result<Vec<(&'static str, u64)>>;
}
