//! The standard metric write protocols, parsed into Fleetstream samples
//! ([`fleet_schemas::LabeledSample`], batched on `fleet.samples.v1` as a
//! [`fleet_schemas::SampleBatch`]). One parser per format, all pure functions of the request
//! body (no I/O, no HTTP types), so the gateway, the fuzz targets and the benches call the
//! same code:
//!
//! * [`remote_write`]: Prometheus remote-write 1.0 (snappy block format + protobuf
//!   `WriteRequest`) and the 2.0 `Request` (symbol table).
//! * [`otlp`]: OTLP/HTTP metrics, `ExportMetricsServiceRequest` in protobuf and in the OTLP
//!   JSON mapping.
//! * [`influx`]: Influx line protocol with a `precision`.
//!
//! Every parser enforces one [`Limits`] before and while it parses: the decompressed body
//! size is checked before anything is allocated for it (snappy's declared length is read
//! first), remote-write's message counts are checked on the wire before the protobuf is
//! decoded, and samples, series and label sizes as they are produced. A refusal is a
//! [`ProtocolError`] naming the field (`timeseries[3].labels[1].name: ...`, `line 7: ...`)
//! and saying whether the client sent something wrong (HTTP 400, which remote-write senders
//! drop instead of retrying) or more than the limits allow (HTTP 413).
//!
//! The mapping rules of each format are in `docs/PROTOCOLS.md`; the shared label rules in
//! [`labels`]. [`shard`] splits a request's samples into one batch per source shard, the
//! key of `fleet.samples.v1`.

pub mod error;
pub mod influx;
pub mod labels;
pub mod limits;
pub mod otlp;
pub mod remote_write;
pub mod shard;
mod wire;

pub use error::{ProtocolError, Refusal};
pub use limits::Limits;

use fleet_schemas::LabeledSample;

/// What a parser got out of one request body.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// The samples, in request order; each sample's labels sorted by name.
    pub samples: Vec<LabeledSample>,
    /// Series as the request listed them (a series sent twice counts twice).
    pub series: usize,
    /// What the request carried that has no sample form here (counted, not refused).
    pub skipped: Skipped,
}

/// Data points a request carried that do not map to samples. The gateway reports them
/// (OTLP's partial success names them; the others log and count them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// Influx string fields (no numeric value).
    pub string_fields: u64,
    /// OTLP sums and histograms with delta temporality (samples here are cumulative, as
    /// Prometheus' OTLP receiver requires).
    pub delta_points: u64,
    /// OTLP exponential histograms and remote-write native histograms.
    pub native_histograms: u64,
}

impl Skipped {
    /// Whether anything was skipped.
    pub fn any(&self) -> bool {
        *self != Skipped::default()
    }
}
