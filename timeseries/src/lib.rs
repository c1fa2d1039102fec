//! The time-series engine's pure core: the chunk format and rollups, with no I/O.
//!
//! * [`chunk`]: a [`Block`] is the samples of one agent in one time window, one timestamp
//!   column shared by all its series. [`chunk::encode`] / [`chunk::decode`] turn it into
//!   versioned, deterministic bytes; [`chunk::merge`] folds late data into a block;
//!   [`chunk::header`] reads time range, counts and series names without the values.
//! * [`rollup`]: per-series buckets (min, max, sum, count, last) at any width, equal to
//!   what `crate::query::aggregate_buckets` computes, with their own columnar
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
//! One block is one agent-hour: ~360 timestamps and ~21 series at a 10 s interval. The
//! format ([`chunk`] has the layout) is ours, built from the anchors' ideas:
//!
//! * **One timestamp column per block**, shared by the series (the agent sends ~21 values
//!   at one time): about 2 bytes per report instead of per sample. It is an integer
//!   column like any other, so jittered collection times (±3 ms, µs precision) on a fixed
//!   grid take the *linear* mode (first, step, residuals), regular ones the *step* mode
//!   (no bytes per timestamp).
//! * **Values as decimals** (VictoriaMetrics): `m * 10^e`, one exponent per series, only
//!   when decoding gives back the exact bits; then the cheapest integer mode (constant,
//!   raw, delta, delta of delta, linear, step; each exact size computed, the smallest
//!   kept), zigzag varints, and a common divisor (memory in KiB, disks in 4 KiB blocks,
//!   I/O in 512-byte sectors) taken out. A decimal divided by a small integer (`load.1`
//!   / cores on a 6-core machine) has its own mode; anything else falls back to
//!   Gorilla's XOR with the previous value, or raw bits. Every `f64` bit pattern
//!   round-trips (`-0.0`, subnormals, NaN payloads, 17-digit values).
//! * **Presence only when a series has gaps**: nothing for a dense series, else runs or a
//!   bitmap, whichever is smaller.
//! * **Names once per block**, front-coded, and **zstd level 3** over the payload when it
//!   is over 128 bytes.
//!
//! Measured with `cargo bench -p fleet-timeseries --bench codecs --features codec-eval`
//! (50 agents x 2 h at 10 s, blocks of one agent-hour, 2 shared cores, noisy):
//!
//! | encoding | realistic fleet, bytes/sample | constant fixture | encode ns/sample | decode ns/sample |
//! | --- | --- | --- | --- | --- |
//! | **ours, zstd 3** | **1.127** | **0.040** | 54 | 10 |
//! | our payload, no final stage | 1.437 | 0.053 | 50 | — |
//! | our payload + zstd 1 / 9 / 19 | 1.131 / 1.118 / 1.108 | 0.040 / 0.039 / 0.039 | 56 / 71 / 192 | 3 (zstd only) |
//! | our payload + lz4_flex | 1.214 | 0.046 | 50 | 0.4 (lz4 only) |
//! | pco per column, f64 values | 1.154 | 0.108 | 159 | 11 |
//! | pco per column, our decimal mantissas | 1.060 | 0.108 | 139 | 9 |
//! | tsz-compress, our decimal mantissas | 2.498 | 0.795 | 11 | 9 |
//! | bitpacking (`BitPacker4x`), zigzag deltas of our mantissas | 2.748 | 1.550 | 7 | 2 |
//!
//! Why this one: pco (with our decimal conversion in front) is 6% smaller on the varied
//! data, where its entropy coder beats varints + zstd, but it is 2.7x larger on steady
//! data (its per-column header dominates 360-value columns, as its docs warn: it is made
//! for long arrays), 2.5x slower to encode, and one more format to carry forever.
//! tsz-compress and bitpacking are fast but have no float story and no entropy stage.
//! zstd above level 3 saves under 1% for 1.3-3.5x the encode time, and lz4_flex costs 8%
//! more bytes. The decimal-divided mode took the realistic fleet from 1.215 to 1.127
//! bytes per sample (`load.per_core` on machines with 3, 6, 12 or 24 cores was XOR at
//! ~7 bytes a value).
//!
//! Against VictoriaMetrics on the same samples (`--bench disk_vs_vm`, docs/BENCHMARKS.md)
//! the raw blocks take 0.58-0.67x its bytes per sample on both data sets.
//!
//! ## Determinism
//!
//! Every choice (modes, exponents, divisor, final stage) is a function of the block's
//! values, and floats are only multiplied or divided by exact powers of ten (IEEE 754
//! rounds those the same everywhere), so a block gives the same bytes on every run and
//! machine for a given build. A different zstd version could compress differently
//! (decoding is unaffected); `Cargo.lock` pins it.
//!
//! ## Integrity
//!
//! The format carries no checksum: the stores it goes into (redb pages, Cassandra
//! SSTables) checksum their blocks. Corrupt or hostile bytes decode to an error, never a
//! panic, within the [`limits`] (a property test feeds thousands of mutated encodings).

pub mod chunk;
#[cfg(feature = "cql")]
pub mod cql;
pub mod embedded;
pub mod engine;
mod error;
mod floats;
pub mod head;
mod ints;
pub mod metrics;
mod names;
mod presence;
pub mod query;
pub mod rollup;
mod state;
pub mod store;
mod wire;

/// Internals the `codecs` bench compares other crates against; not an API.
#[cfg(feature = "codec-eval")]
#[doc(hidden)]
pub mod eval {
    /// The uncompressed prefix and payload of [`crate::chunk::encode`] (before zstd).
    pub fn chunk_parts(block: &crate::Block) -> (Vec<u8>, Vec<u8>) {
        crate::chunk::encode_parts(block)
    }

    /// The zstd level [`crate::chunk::encode`] uses.
    pub const ZSTD_LEVEL: i32 = crate::wire::ZSTD_LEVEL;

    /// Exponent and mantissas of a column when every value is an exact decimal at one
    /// exponent (the conversion the encoder makes).
    pub fn decimal(values: &[f64]) -> Option<(i32, Vec<i64>)> {
        crate::floats::exact_decimal(values)
    }
}

pub use chunk::{Block, BlockHeader, Series};
pub use engine::{EngineConfig, SamplesIngested, TimeSeries, Writer};
pub use error::{ChunkError, Error, Result};
pub use query::{
    aggregate_buckets, bucket_range, bucket_start, merge_buckets, validate_points, validate_query,
    validate_range, Bucket, Point, RangeQuery, Resolution, Retention, SeriesKey, TimeSeriesStore,
    MAX_ABS_TS_MICROS, MAX_BUCKETS,
};
pub use rollup::{RollupRow, RollupSet, SeriesRollup};
pub use store::{AgentKey, ChunkKind, ChunkStore};

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

/// Opens the time-series store a URL names: `file:///dir` or a bare directory path (the
/// embedded chunk store in that directory), or `scylla://host:9042[,host2]/keyspace`
/// (ScyllaDB or Cassandra, feature `cql`).
pub async fn open(
    url: &str,
    retention: Retention,
    config: EngineConfig,
) -> Result<std::sync::Arc<TimeSeries>> {
    let store = open_chunks(url, retention).await?;
    Ok(std::sync::Arc::new(TimeSeries::new(
        store, retention, config,
    )?))
}

/// Opens the chunk store a URL names (see [`open`]). The CQL store sets its rows' TTLs
/// from `retention`; the embedded one deletes by [`ChunkStore::expire`].
pub async fn open_chunks(
    url: &str,
    retention: Retention,
) -> Result<std::sync::Arc<dyn ChunkStore>> {
    if url.starts_with("scylla://") {
        #[cfg(feature = "cql")]
        {
            return Ok(std::sync::Arc::new(
                cql::CqlChunks::connect(url, retention).await?,
            ));
        }
        #[cfg(not(feature = "cql"))]
        {
            let _ = retention;
            return Err(Error::Config(
                "this build has no ScyllaDB/Cassandra support (feature `cql`)".into(),
            ));
        }
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(Error::Config(format!(
            "unsupported time-series URL {url:?}: use file:///path/to/dir or scylla://host:9042/keyspace"
        )));
    }
    // Opening reads (and after a crash, repairs) the file: keep it off the async workers.
    let path = std::path::PathBuf::from(path);
    let store = tokio::task::spawn_blocking(move || embedded::EmbeddedChunks::open(&path))
        .await
        .map_err(|e| Error::Internal(format!("opening the time-series store failed: {e}")))??;
    Ok(std::sync::Arc::new(store))
}
