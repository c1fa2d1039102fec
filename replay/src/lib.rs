//! What `fleetstream replay`, `verify`, `export` and `deadletter` do, as a library: the
//! topics are the source of truth, and these make that usable.
//!
//! * [`rebuild`]: rebuilds a projection (read model, time series, or both) into a fresh
//!   store by reading the projection's topics directly, applying every record exactly as
//!   the live projection does.
//! * [`verify`]: compares two stores of one projection and returns every difference.
//! * [`export`]: writes a window of a topic to a JSONL or Avro object container file.
//! * [`deadletter`]: reads `fleet.deadletter.v1`, plans which dead letters to write back
//!   and writes them back.
//!
//! The functions return typed results ([`Error`] on failure); they print nothing. Long
//! reads report their progress to a [`Progress`] the caller implements.
//!
//! The registry (tenants, locations, registration tokens, agent credentials, users and
//! their API keys) and the audit log live in the read model's database but are not
//! derived from topics: a replay does not rebuild them and `verify` does not compare them.

pub mod deadletter;
mod error;
pub mod export;
pub mod reader;
pub mod rebuild;
pub mod verify;

use fleet_event_log::ConsumedRecord;

pub use error::{Error, Result};
pub use reader::{ReadOutcome, Span, Start, IDLE_LIMIT};

/// What a long read (a replay, an export) reports while it runs.
pub trait Progress: Send {
    /// A `--force` replay emptied or writes over a target that held data.
    fn forced(&mut self, _forced: &Forced) {}
    /// The windows are planned; reading starts.
    fn planned(&mut self, spans: &[Span]);
    /// A batch was handled (applied or written).
    fn advanced(&mut self, batch: &[ConsumedRecord]);
    /// Every batch was handled.
    fn finished(&mut self);
}

/// What a forced replay did to a target that held data.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Forced {
    /// The projected tables of the read model at `url` (redacted) were emptied (`rows`
    /// rows); the registry and the audit log are kept.
    ReadModelEmptied {
        /// The read model's URL, without its password.
        url: String,
        /// Rows removed.
        rows: u64,
    },
    /// The time-series store at `url` holds series: the replay writes over it.
    TimeSeriesWrittenOver {
        /// The store's URL.
        url: String,
    },
}

/// No progress shown (tests, callers that need none).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn planned(&mut self, _spans: &[Span]) {}
    fn advanced(&mut self, _batch: &[ConsumedRecord]) {}
    fn finished(&mut self) {}
}

/// RFC 3339 (UTC, milliseconds) of µs since the epoch, for messages and exports.
pub fn rfc3339(micros: i64) -> String {
    rfc3339_as(micros, chrono::SecondsFormat::Millis)
}

/// RFC 3339 (UTC, whole seconds) of µs since the epoch, for listings.
pub fn rfc3339_secs(micros: i64) -> String {
    rfc3339_as(micros, chrono::SecondsFormat::Secs)
}

fn rfc3339_as(micros: i64, format: chrono::SecondsFormat) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(format, true))
        .unwrap_or_else(|| format!("{micros} µs"))
}
