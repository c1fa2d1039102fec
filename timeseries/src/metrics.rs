//! Metrics the engine promises on `/metrics`.

use std::time::Duration;

use crate::store::ChunkKind;

/// Samples taken into the head.
pub const SAMPLES: &str = "fleet_timeseries_samples_total";
/// Reports refused as older than the out-of-order allowance.
pub const LATE_REFUSED: &str = "fleet_timeseries_late_refused_total";
/// Samples of `fleet.samples.v1` not stored, by `reason`: `non_finite` (NaN, ±Inf:
/// Prometheus' staleness markers), `out_of_range` (time beyond ±2^62 µs), `name_too_long`
/// (series text over the engine's name limit), `unit_full` (a new series of a unit that
/// holds `engine::MAX_UNIT_SERIES` already).
pub const SAMPLES_SKIPPED: &str = "fleet_timeseries_samples_skipped_total";
/// Windows sealed into blocks.
pub const SEALED: &str = "fleet_timeseries_sealed_windows_total";
/// Time to seal one batch of windows.
pub const SEAL_SECONDS: &str = "fleet_timeseries_seal_seconds";
/// Chunks written, by kind (`raw`, `5m`, `1h`), and their bytes.
pub const CHUNKS: &str = "fleet_timeseries_chunks_written_total";
/// Bytes of the chunks written, by kind.
pub const CHUNK_BYTES: &str = "fleet_timeseries_chunk_bytes_total";
/// Checkpoints written.
pub const CHECKPOINTS: &str = "fleet_timeseries_checkpoints_total";
/// Time to write one checkpoint.
pub const CHECKPOINT_SECONDS: &str = "fleet_timeseries_checkpoint_seconds";
/// Bytes of the segments written by checkpoints.
pub const SEGMENT_BYTES: &str = "fleet_timeseries_segment_bytes_total";
/// Bytes the head holds (sampled at each checkpoint).
pub const HEAD_BYTES: &str = "fleet_timeseries_head_bytes";
/// Agents evicted from the head to stay under its memory limit.
pub const EVICTED: &str = "fleet_timeseries_head_evictions_total";

/// Rollup chunks a query read, by whether the decoded-rollup cache had them
/// (`outcome` = `hit` or `miss`; none counted when the cache is off).
pub const ROLLUP_CACHE: &str = "fleet_timeseries_rollup_cache_total";

/// Blob files of the embedded store compacted (their live chunks copied to new files).
pub const BLOB_COMPACTIONS: &str = "fleet_timeseries_blob_files_compacted_total";
/// Bytes the embedded store's blob compactions copied.
pub const BLOB_COMPACTED_BYTES: &str = "fleet_timeseries_blob_compacted_bytes_total";
/// Bytes of the embedded store's blob files, and of the blobs in them still referenced
/// (`state` = `file` or `live`), after each write.
pub const BLOB_BYTES: &str = "fleet_timeseries_blob_bytes";

/// Every metric name above.
pub const ALL: &[&str] = &[
    SAMPLES,
    LATE_REFUSED,
    SAMPLES_SKIPPED,
    SEALED,
    SEAL_SECONDS,
    CHUNKS,
    CHUNK_BYTES,
    CHECKPOINTS,
    CHECKPOINT_SECONDS,
    SEGMENT_BYTES,
    HEAD_BYTES,
    EVICTED,
    ROLLUP_CACHE,
    BLOB_COMPACTIONS,
    BLOB_COMPACTED_BYTES,
    BLOB_BYTES,
];

pub(crate) fn samples(n: usize) {
    metrics::counter!(SAMPLES).increment(n as u64);
}

pub(crate) fn samples_skipped(reason: &'static str, n: usize) {
    if n > 0 {
        metrics::counter!(SAMPLES_SKIPPED, "reason" => reason).increment(n as u64);
    }
}

pub(crate) fn late_refused() {
    metrics::counter!(LATE_REFUSED).increment(1);
}

pub(crate) fn chunk_written(kind: ChunkKind, bytes: usize) {
    metrics::counter!(CHUNKS, "kind" => kind.as_str()).increment(1);
    metrics::counter!(CHUNK_BYTES, "kind" => kind.as_str()).increment(bytes as u64);
}

pub(crate) fn sealed(windows: usize, took: Duration) {
    metrics::counter!(SEALED).increment(windows as u64);
    metrics::histogram!(SEAL_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn checkpointed(segment_bytes: usize, took: Duration, head_bytes: usize) {
    metrics::counter!(CHECKPOINTS).increment(1);
    metrics::counter!(SEGMENT_BYTES).increment(segment_bytes as u64);
    metrics::histogram!(CHECKPOINT_SECONDS).record(took.as_secs_f64());
    metrics::gauge!(HEAD_BYTES).set(head_bytes as f64);
}

pub(crate) fn evicted(n: usize) {
    metrics::counter!(EVICTED).increment(n as u64);
}

pub(crate) fn rollup_cache(hit: bool) {
    let outcome = if hit { "hit" } else { "miss" };
    metrics::counter!(ROLLUP_CACHE, "outcome" => outcome).increment(1);
}

pub(crate) fn blobs_compacted(files: usize, bytes: u64) {
    metrics::counter!(BLOB_COMPACTIONS).increment(files as u64);
    metrics::counter!(BLOB_COMPACTED_BYTES).increment(bytes);
}

pub(crate) fn blob_bytes(file: u64, live: u64) {
    metrics::gauge!(BLOB_BYTES, "state" => "file").set(file as f64);
    metrics::gauge!(BLOB_BYTES, "state" => "live").set(live as f64);
}
