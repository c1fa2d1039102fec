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
//! The head, flushing and storage build on these; nothing here reads a clock or a file.
//!
//! ## How a block is encoded, and why
//!
//! (Figures: `cargo bench -p fleet-timeseries --bench codecs`, see docs/BENCHMARKS.md.)
//!
//! EVALUATION_PLACEHOLDER

pub mod chunk;
mod error;
mod floats;
mod ints;
mod names;
mod presence;
pub mod rollup;
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
pub use error::ChunkError;
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
