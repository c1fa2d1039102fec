//! Prometheus remote-write: the 1.0 `prometheus.WriteRequest` and the 2.0
//! `io.prometheus.write.v2.Request`, protobuf in snappy's block format.
//!
//! The few messages are written out here with prost's derive (the crates that ship them
//! also ship an HTTP client; the derive needs no protoc). Native histograms (1.0 field 4,
//! 2.0 field 3), exemplars and metadata are not samples: histograms are counted in
//! [`crate::Skipped::native_histograms`], the rest ignored.
//!
//! Mapping: the `__name__` label is the metric name (required, in the metric charset);
//! every other label must be in the label charset and unique (else 400); timestamps are
//! milliseconds, multiplied to microseconds with overflow refused. Values are kept bit for
//! bit, NaN and ±Inf included: Prometheus marks a series that went away with a NaN
//! (`0x7ff0000000000002`, its staleness marker), and dropping it would keep the series
//! alive in queries for five more minutes.
//!
//! Order of checks: the declared decompressed length (before allocating), then, on the
//! protobuf wire before decoding, the series, labels-per-series and sample counts, then the
//! decoded values.

use prost::Message;

use crate::labels::{check_metric, push_strict, seal, Out};
use crate::{wire, Limits, Parsed, ProtocolError};

/// The `Content-Type` of both versions.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The `Content-Encoding` both versions require.
pub const CONTENT_ENCODING: &str = "snappy";
/// The `proto` parameter of a 2.0 request's `Content-Type`.
pub const V2_PROTO: &str = "io.prometheus.write.v2.Request";

/// Which message a request holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `prometheus.WriteRequest`.
    V1,
    /// `io.prometheus.write.v2.Request`.
    V2,
}

impl Version {
    /// The version a `Content-Type` names: 2.0 when its `proto` parameter is
    /// [`V2_PROTO`], else 1.0 (senders of 1.0 send no parameter, or
    /// `proto=prometheus.WriteRequest`).
    pub fn from_content_type(content_type: &str) -> Version {
        let v2 = content_type.split(';').skip(1).any(|p| {
            p.split_once('=')
                .is_some_and(|(k, v)| k.trim() == "proto" && v.trim() == V2_PROTO)
        });
        if v2 {
            Version::V2
        } else {
            Version::V1
        }
    }
}

/// 1.0 messages.
pub mod v1 {
    /// `prometheus.WriteRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct WriteRequest {
        /// Series with their samples.
        #[prost(message, repeated, tag = "1")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// `prometheus.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Labels, `__name__` among them.
        #[prost(message, repeated, tag = "1")]
        pub labels: Vec<Label>,
        /// Samples, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<Sample>,
    }

    /// `prometheus.Label`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Label {
        /// Name.
        #[prost(string, tag = "1")]
        pub name: String,
        /// Value.
        #[prost(string, tag = "2")]
        pub value: String,
    }

    /// `prometheus.Sample`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Sample {
        /// Value.
        #[prost(double, tag = "1")]
        pub value: f64,
        /// Milliseconds since the epoch.
        #[prost(int64, tag = "2")]
        pub timestamp: i64,
    }
}

/// 2.0 messages.
pub mod v2 {
    /// `io.prometheus.write.v2.Request`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        /// The symbol table: label names and values are indexes into it; `symbols[0]` is "".
        #[prost(string, repeated, tag = "4")]
        pub symbols: Vec<String>,
        /// Series with their samples.
        #[prost(message, repeated, tag = "5")]
        pub timeseries: Vec<TimeSeries>,
    }

    /// `io.prometheus.write.v2.TimeSeries`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TimeSeries {
        /// Pairs of symbol indexes: name, value, name, value, ...
        #[prost(uint32, repeated, tag = "1")]
        pub labels_refs: Vec<u32>,
        /// Samples, oldest first.
        #[prost(message, repeated, tag = "2")]
        pub samples: Vec<super::v1::Sample>,
    }
}

/// Decompresses a snappy block-format body, refusing one whose declared length is over
/// `max-body-bytes` before allocating for it.
pub fn decompress(body: &[u8], limits: &Limits) -> Result<Vec<u8>, ProtocolError> {
    let len = snap::raw::decompress_len(body)
        .map_err(|e| ProtocolError::malformed("body", format!("not snappy block format: {e}")))?;
    limits.check_body("body", len)?;
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| ProtocolError::malformed("body", format!("not snappy block format: {e}")))
}

/// Parses a snappy-compressed request of `version`.
pub fn parse(body: &[u8], version: Version, limits: &Limits) -> Result<Parsed, ProtocolError> {
    let raw = decompress(body, limits)?;
    match version {
        Version::V1 => parse_v1_protobuf(&raw, limits),
        Version::V2 => parse_v2_protobuf(&raw, limits),
    }
}

/// Counts, on the wire, the series (field `series_tag`), the labels of each (`count_labels`
/// on the series' payload) and their samples (field `sample_tag` of a series) against the
/// limits, and the native histograms (`histogram_tag`) to skip.
fn precheck(
    raw: &[u8],
    out: &mut Out<'_>,
    series_tag: u32,
    sample_tag: u32,
    histogram_tag: u32,
    labels_of: impl Fn(u32, &[u8]) -> usize,
) -> Result<(), ProtocolError> {
    let limits = out.limits();
    let mut series = 0usize;
    let mut samples = 0usize;
    let mut histograms = 0u64;
    wire::scan(
        raw,
        || "body".into(),
        |tag, ts| {
            if tag != series_tag {
                return Ok(());
            }
            let i = series;
            series += 1;
            let field = || format!("timeseries[{i}]");
            if series > limits.max_series {
                return Err(ProtocolError::limit(
                    field(),
                    format!("more than {} series in one request", limits.max_series),
                    "max-series",
                    limits.max_series,
                ));
            }
            let mut labels = 0usize;
            wire::scan(ts, field, |t, payload| {
                labels = labels.saturating_add(labels_of(t, payload));
                if t == sample_tag {
                    samples += 1;
                } else if t == histogram_tag {
                    histograms += 1;
                }
                Ok(())
            })?;
            if labels > limits.max_labels_per_series {
                return Err(ProtocolError::limit(
                    format!("timeseries[{i}].labels"),
                    format!(
                        "more than {} labels (the metric name included)",
                        limits.max_labels_per_series
                    ),
                    "max-labels-per-series",
                    limits.max_labels_per_series,
                ));
            }
            out.reserve(samples, || format!("timeseries[{i}].samples"))
        },
    )?;
    out.skipped().native_histograms += histograms;
    Ok(())
}

fn decode<M: Message + Default>(raw: &[u8], what: &str) -> Result<M, ProtocolError> {
    M::decode(raw)
        .map_err(|e| ProtocolError::malformed("body", format!("not a remote-write {what}: {e}")))
}

fn micros(ms: i64, field: impl Fn() -> String) -> Result<i64, ProtocolError> {
    ms.checked_mul(1_000).ok_or_else(|| {
        ProtocolError::malformed(
            field(),
            format!("{ms} ms is out of range (±292,000 years in microseconds)"),
        )
    })
}

/// The series' samples into `out`, with its (sorted) labels.
fn emit(
    out: &mut Out<'_>,
    i: usize,
    metric: Option<String>,
    mut labels: Vec<fleet_schemas::Label>,
    samples: &[v1::Sample],
) -> Result<(), ProtocolError> {
    let metric = metric.ok_or_else(|| {
        ProtocolError::malformed(format!("timeseries[{i}].labels"), "no __name__ label")
    })?;
    seal(&mut labels, || format!("timeseries[{i}].labels"))?;
    for (j, s) in samples.iter().enumerate() {
        let field = || format!("timeseries[{i}].samples[{j}].timestamp");
        let t = micros(s.timestamp, field)?;
        out.push(metric.clone(), labels.clone(), t, s.value, field)?;
    }
    Ok(())
}

/// Parses an uncompressed 1.0 `WriteRequest`.
pub fn parse_v1_protobuf(raw: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    limits.check_body("body", raw.len())?;
    let mut out = Out::new(limits);
    precheck(raw, &mut out, 1, 2, 4, |t, _| usize::from(t == 1))?;
    let req: v1::WriteRequest = decode(raw, "WriteRequest")?;
    for (i, ts) in req.timeseries.iter().enumerate() {
        out.series(|| format!("timeseries[{i}]"))?;
        let mut metric = None;
        let mut labels = Vec::with_capacity(ts.labels.len());
        for (j, l) in ts.labels.iter().enumerate() {
            let field = |part: &str| format!("timeseries[{i}].labels[{j}].{part}");
            if l.name == "__name__" {
                check_metric(limits, &l.value, || field("value"))?;
                if metric.replace(l.value.clone()).is_some() {
                    return Err(ProtocolError::malformed(
                        format!("timeseries[{i}].labels"),
                        "label \"__name__\" occurs twice",
                    ));
                }
            } else {
                push_strict(&mut labels, limits, &l.name, &l.value, field)?;
            }
        }
        emit(&mut out, i, metric, labels, &ts.samples)?;
    }
    Ok(out.finish())
}

/// Parses an uncompressed 2.0 `Request`.
pub fn parse_v2_protobuf(raw: &[u8], limits: &Limits) -> Result<Parsed, ProtocolError> {
    limits.check_body("body", raw.len())?;
    let mut out = Out::new(limits);
    precheck(raw, &mut out, 5, 2, 3, |t, payload| {
        if t == 1 {
            // Packed refs: two per label.
            wire::packed_varints(payload) / 2
        } else {
            0
        }
    })?;
    let req: v2::Request = decode(raw, "v2 Request")?;
    if req.symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(ProtocolError::malformed(
            "symbols[0]",
            "must be the empty string",
        ));
    }
    let symbol = |i: usize, k: usize| -> Result<&str, ProtocolError> {
        let r = req.timeseries[i].labels_refs[k];
        usize::try_from(r)
            .ok()
            .and_then(|r| req.symbols.get(r))
            .map(String::as_str)
            .ok_or_else(|| {
                ProtocolError::malformed(
                    format!("timeseries[{i}].labels_refs[{k}]"),
                    format!("symbol {r} is not in the table of {}", req.symbols.len()),
                )
            })
    };
    for (i, ts) in req.timeseries.iter().enumerate() {
        out.series(|| format!("timeseries[{i}]"))?;
        if ts.labels_refs.len() % 2 != 0 {
            return Err(ProtocolError::malformed(
                format!("timeseries[{i}].labels_refs"),
                "odd length: refs come in name, value pairs",
            ));
        }
        let mut metric = None;
        let mut labels = Vec::with_capacity(ts.labels_refs.len() / 2);
        for k in (0..ts.labels_refs.len()).step_by(2) {
            let (name, value) = (symbol(i, k)?, symbol(i, k + 1)?);
            let field = |part: &str| {
                let at = if part == "name" { k } else { k + 1 };
                format!("timeseries[{i}].labels_refs[{at}]")
            };
            if name == "__name__" {
                check_metric(limits, value, || field("value"))?;
                if metric.replace(value.to_owned()).is_some() {
                    return Err(ProtocolError::malformed(
                        format!("timeseries[{i}].labels_refs"),
                        "label \"__name__\" occurs twice",
                    ));
                }
            } else {
                push_strict(&mut labels, limits, name, value, field)?;
            }
        }
        emit(&mut out, i, metric, labels, &ts.samples)?;
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests;
