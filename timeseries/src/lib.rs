//! The time-series engine's pure core: the chunk format and rollups, with no I/O.
//!
//! * [`chunk`]: a [`Block`] is the samples of one agent in one time window, one timestamp
//!   column shared by all its series. [`chunk::encode`] / [`chunk::decode`] turn it into
//!   versioned, deterministic bytes; [`chunk::merge`] folds late data into a block;
//!   [`chunk::header`] reads time range, counts and series names without the values.
//! * [`rollup`]: per-series buckets (min, max, sum, count, last) at any width, equal to
//!   what `fleet_stores::timeseries::aggregate_buckets` computes, with their own columnar
//!   encoding and merge.
//!
//! * [`query`]: the [`TimeSeriesStore`] seam the projections, the query API and the
//!   replay tools use: samples, range queries in buckets, resolutions, retention.
//! * [`engine`]: the head (every agent's open windows in memory), sealing, checkpoints
//!   and queries, over a [`ChunkStore`] ([`store`]): [`embedded`] (redb, in the data
//!   directory) or `cql` (ScyllaDB / Cassandra, feature `cql`).
//!
//! The chunk and rollup modules are pure: nothing there reads a clock or a file.
//!
//! ## How a block is encoded, and why
//!
//! (Figures: `cargo bench -p fleet-timeseries --bench codecs`, see docs/BENCHMARKS.md.)
//!
//! EVALUATION_PLACEHOLDER

pub mod chunk;
pub mod embedded;
pub mod engine;
mod error;
pub mod head;
pub mod metrics;
pub mod query;
mod state;
pub mod store;
mod floats;
mod ints;
mod names;
mod presence;
pub mod rollup;
mod wire;

pub use chunk::{Block, BlockHeader, Series};
pub use engine::{EngineConfig, TimeSeries, Writer};
pub use error::{ChunkError, Error, Result};
pub use query::{
    aggregate_buckets, bucket_range, bucket_start, merge_buckets, validate_points,
    validate_query, validate_range, Bucket, Point, RangeQuery, Resolution, Retention,
    SeriesKey, TimeSeriesStore, MAX_ABS_TS_MICROS, MAX_BUCKETS,
};
pub use store::{AgentKey, ChunkKind, ChunkStore};
pub use rollup::{RollupRow, RollupSet, SeriesRollup};

/// Bounds of one block or rollup set. Encoders refuse to build anything larger and
/// decoders refuse bytes that claim more, so decoding hostile bytes allocates at most
/// about `MAX_CELLS * 16` bytes (64 MiB) whatever they say.
pub mod limits {
    /// Distinct timestamps in one block (buckets in one rollup set): 12 days at 1 s.
    pub const MAX_TIMESTAMPS: usize = 1 << 20;
    /// Series in one block or rollup set.
    pub const MAX_SERIES: usize = 1 << 16;
    /// Timestamps × series of one block (buckets × series of a rollup set): 4 Mi, for
    /// example 1,100 series of one agent reporting every second for an hour.
    pub const MAX_CELLS: usize = 1 << 22;
    /// Bytes of one series name.
    pub const MAX_NAME_BYTES: usize = 4096;
}
