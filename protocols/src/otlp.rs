//! OTLP/HTTP metrics (`POST /v1/metrics`): an `ExportMetricsServiceRequest` in protobuf
//! (`application/x-protobuf`) or in the OTLP JSON mapping (`application/json`: camelCase
//! names, 64-bit integers as strings, enums as numbers), decoded with the
//! `opentelemetry-proto` crate's generated messages (no protoc at build time).
//!
//! Mapping (the OpenTelemetry Collector's Prometheus exporter and Prometheus' own OTLP
//! receiver do the same):
//!
//! * Metric names are sanitized to the metric charset (`http.server.duration` →
//!   `http_server_duration`), then get their unit as a suffix (`s` → `_seconds`, `By` →
//!   `_bytes`, `1` → `_ratio` on gauges, `{requests}` annotations dropped, `a/b` →
//!   `_a_per_b`; see [`unit_suffix`]) unless the name already ends with it.
//! * Gauges: one sample per point.
//! * Sums with cumulative temporality: monotonic ones are counters named `<name>_total`,
//!   non-monotonic ones gauges named `<name>`; each point's value is the running total
//!   since its start time. Sums and histograms with delta (or unspecified) temporality are
//!   not cumulative and cannot become Prometheus samples without state across requests:
//!   they are skipped and counted ([`crate::Skipped::delta_points`]), as Prometheus' OTLP
//!   receiver refuses them; the gateway reports them as OTLP partial success.
//! * Histograms (cumulative): `<name>_bucket{le="<bound>"}` with cumulative counts (the
//!   last `le="+Inf"` equals the count), `<name>_sum` (when the point has a sum) and
//!   `<name>_count`. Bounds are written as the shortest decimal that reads back the same.
//! * Summaries: `<name>{quantile="<q>"}`, `<name>_sum`, `<name>_count`.
//! * Exponential histograms are skipped ([`crate::Skipped::native_histograms`]).
//! * Labels: resource attributes, then scope (`otel_scope_name`, `otel_scope_version`,
//!   each scope attribute as `otel_scope_<key>`), then point attributes, a later level
//!   replacing an earlier label of the same name. `service.name` (prefixed by
//!   `service.namespace/` when set) becomes `job`, `service.instance.id` becomes
//!   `instance`; every other resource attribute is a label. Keys are sanitized to the label
//!   charset; two keys of one list that sanitize alike join their values with `;`.
//!   Attribute values: strings as they are, booleans `true`/`false`, numbers in decimal,
//!   bytes in hex, arrays and key-value lists as JSON.
//! * Timestamps: `time_unix_nano` rounded down to microseconds; 0 (unset) is refused. A
//!   point flagged `NO_RECORDED_VALUE` becomes Prometheus' staleness NaN.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point, Metric, NumberDataPoint};
use prost::Message;

use crate::labels::{check_metric, sanitize_metric_name, Out, Sanitized};
use crate::{Limits, Parsed, ProtocolError};

/// Prometheus' staleness marker, for points flagged `NO_RECORDED_VALUE`.
pub const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
const NO_RECORDED_VALUE: u32 = 1;
const CUMULATIVE: i32 = 2;

/// The body's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`.
    Protobuf,
    /// `application/json` (the OTLP JSON mapping).
    Json,
}

/// Parses an `ExportMetricsServiceRequest` body.
pub fn parse(body: &[u8], encoding: Encoding, limits: &Limits) -> Result<Parsed, ProtocolError> {
    limits.check_body("body", body.len())?;
    let req = match encoding {
        Encoding::Protobuf => ExportMetricsServiceRequest::decode(body).map_err(|e| {
            ProtocolError::malformed("body", format!("not an ExportMetricsServiceRequest: {e}"))
        })?,
        Encoding::Json => {
            let mut de = serde_json::Deserializer::from_slice(body);
            serde_path_to_error::deserialize(&mut de).map_err(|e| {
                // The root is `.`; an unknown key `""` gives an empty path.
                let path = e.path().to_string();
                let field = if path.is_empty() || path == "." {
                    "body".to_owned()
                } else {
                    path
                };
                ProtocolError::malformed(field, e.into_inner().to_string())
            })?
        }
    };
    convert(&req, limits)
}

/// The samples of a decoded request.
pub fn convert(
    req: &ExportMetricsServiceRequest,
    limits: &Limits,
) -> Result<Parsed, ProtocolError> {
    let mut out = Out::new(limits);
    for (i, rm) in req.resource_metrics.iter().enumerate() {
        let resource = resource_labels(rm.resource.as_ref().map(|r| &r.attributes[..]));
        for (j, sm) in rm.scope_metrics.iter().enumerate() {
            let mut base = resource.clone();
            if let Some(scope) = &sm.scope {
                let mut s = Sanitized::default();
                s.set("otel_scope_name", scope.name.clone());
                s.set("otel_scope_version", scope.version.clone());
                for kv in &scope.attributes {
                    s.join(
                        &format!("otel_scope_{}", kv.key),
                        value_text(kv.value.as_ref()),
                    );
                }
                base.extend(&s);
            }
            for (k, m) in sm.metrics.iter().enumerate() {
                let at = format!("resource_metrics[{i}].scope_metrics[{j}].metrics[{k}]");
                metric(&mut out, &base, m, &at)?;
            }
        }
    }
    Ok(out.finish())
}

fn resource_labels(attributes: Option<&[KeyValue]>) -> Sanitized {
    let mut labels = Sanitized::default();
    let attributes = attributes.unwrap_or_default();
    let get = |key: &str| {
        attributes
            .iter()
            .find(|kv| kv.key == key)
            .map(|kv| value_text(kv.value.as_ref()))
    };
    for kv in attributes {
        if !matches!(
            kv.key.as_str(),
            "service.name" | "service.namespace" | "service.instance.id"
        ) {
            labels.join(&kv.key, value_text(kv.value.as_ref()));
        }
    }
    if let Some(name) = get("service.name") {
        let job = match get("service.namespace") {
            Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
            _ => name,
        };
        labels.set("job", job);
    }
    if let Some(instance) = get("service.instance.id") {
        labels.set("instance", instance);
    }
    labels
}

fn value_text(v: Option<&AnyValue>) -> String {
    fn json(v: Option<&AnyValue>) -> serde_json::Value {
        use serde_json::Value as J;
        match v.and_then(|v| v.value.as_ref()) {
            None => J::Null,
            Some(any_value::Value::StringValue(s)) => J::String(s.clone()),
            Some(any_value::Value::BoolValue(b)) => J::Bool(*b),
            Some(any_value::Value::IntValue(i)) => J::from(*i),
            Some(any_value::Value::DoubleValue(d)) => J::from(*d),
            Some(any_value::Value::BytesValue(b)) => J::String(hex(b)),
            Some(any_value::Value::ArrayValue(a)) => {
                J::Array(a.values.iter().map(|v| json(Some(v))).collect())
            }
            Some(any_value::Value::KvlistValue(l)) => J::Object(
                l.values
                    .iter()
                    .map(|kv| (kv.key.clone(), json(kv.value.as_ref())))
                    .collect(),
            ),
            Some(any_value::Value::StringValueStrindex(i)) => J::from(*i),
        }
    }
    match v.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BytesValue(b)) => hex(b),
        Some(_) => json(v).to_string(),
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The Prometheus suffix of a UCUM unit (`s` → `seconds`), `None` for none.
pub fn unit_suffix(unit: &str, gauge: bool) -> Option<String> {
    fn word(u: &str) -> Option<String> {
        let w = match u {
            "" => return None,
            "d" => "days",
            "h" => "hours",
            "min" => "minutes",
            "s" => "seconds",
            "ms" => "milliseconds",
            "us" => "microseconds",
            "ns" => "nanoseconds",
            "By" => "bytes",
            "KiBy" => "kibibytes",
            "MiBy" => "mebibytes",
            "GiBy" => "gibibytes",
            "KBy" => "kilobytes",
            "MBy" => "megabytes",
            "GBy" => "gigabytes",
            "bit" => "bits",
            "m" => "meters",
            "V" => "volts",
            "A" => "amperes",
            "J" => "joules",
            "W" => "watts",
            "g" => "grams",
            "Cel" => "celsius",
            "Hz" => "hertz",
            "%" => "percent",
            other => return Some(crate::labels::sanitize_label_name(other)),
        };
        Some(w.to_owned())
    }
    // `{packets}` and the like are annotations, not units.
    let unit: String = {
        let mut depth = 0u32;
        unit.chars()
            .filter(|c| match c {
                '{' => {
                    depth += 1;
                    false
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    false
                }
                _ => depth == 0,
            })
            .collect()
    };
    let unit = unit.trim();
    if unit == "1" {
        return gauge.then(|| "ratio".to_owned());
    }
    match unit.split_once('/') {
        Some((a, b)) => {
            let per = match b {
                "s" => "second".to_owned(),
                "m" => "minute".to_owned(),
                "h" => "hour".to_owned(),
                "d" => "day".to_owned(),
                other => word(other)?,
            };
            match word(a) {
                Some(a) => Some(format!("{a}_per_{per}")),
                None => Some(format!("per_{per}")),
            }
        }
        None => word(unit),
    }
}

fn with_suffix(name: String, suffix: &str) -> String {
    if suffix.is_empty() || name.ends_with(&format!("_{suffix}")) || name == suffix {
        name
    } else {
        format!("{name}_{suffix}")
    }
}

fn micros(ns: u64, field: impl Fn() -> String) -> Result<i64, ProtocolError> {
    if ns == 0 {
        return Err(ProtocolError::malformed(field(), "unset (0)"));
    }
    // u64::MAX / 1000 < i64::MAX: always fits.
    i64::try_from(ns / 1_000).map_err(|_| ProtocolError::malformed(field(), "out of range"))
}

fn value_of(flags: u32, v: f64) -> f64 {
    if flags & NO_RECORDED_VALUE != 0 {
        f64::from_bits(STALE_NAN)
    } else {
        v
    }
}

/// One sample of `name` with the point's labels (plus `extra`, e.g. `le`).
struct Point<'a> {
    labels: Sanitized,
    t: i64,
    at: &'a str,
}

impl Point<'_> {
    fn emit(
        &self,
        out: &mut Out<'_>,
        name: &str,
        extra: Option<(&str, String)>,
        value: f64,
    ) -> Result<(), ProtocolError> {
        let limits = out.limits();
        check_metric(limits, name, || format!("{}.name", self.at))?;
        let mut labels = self.labels.clone();
        if let Some((k, v)) = extra {
            labels.set(k, v);
        }
        let labels = labels.labels(limits, || format!("{}.attributes", self.at))?;
        out.series(|| self.at.to_owned())?;
        out.push(name.to_owned(), labels, self.t, value, || {
            self.at.to_owned()
        })
    }
}

fn point<'a>(
    base: &Sanitized,
    attributes: &[KeyValue],
    time: u64,
    at: &'a str,
) -> Result<Point<'a>, ProtocolError> {
    let mut labels = base.clone();
    let mut own = Sanitized::default();
    for kv in attributes {
        own.join(&kv.key, value_text(kv.value.as_ref()));
    }
    labels.extend(&own);
    Ok(Point {
        labels,
        t: micros(time, || format!("{at}.time_unix_nano"))?,
        at,
    })
}

fn metric(out: &mut Out<'_>, base: &Sanitized, m: &Metric, at: &str) -> Result<(), ProtocolError> {
    let name = sanitize_metric_name(&m.name);
    let data = m
        .data
        .as_ref()
        .ok_or_else(|| ProtocolError::malformed(at, "no gauge, sum, histogram or summary"))?;
    match data {
        metric::Data::Gauge(g) => {
            let name = with_suffix(name, &unit_suffix(&m.unit, true).unwrap_or_default());
            numbers(out, base, &g.data_points, &name, &format!("{at}.gauge"))?;
        }
        metric::Data::Sum(s) => {
            if s.aggregation_temporality != CUMULATIVE {
                out.skipped().delta_points += s.data_points.len() as u64;
                return Ok(());
            }
            let mut name = with_suffix(
                name,
                &unit_suffix(&m.unit, !s.is_monotonic).unwrap_or_default(),
            );
            if s.is_monotonic {
                name = with_suffix(name, "total");
            }
            numbers(out, base, &s.data_points, &name, &format!("{at}.sum"))?;
        }
        metric::Data::Histogram(h) => {
            if h.aggregation_temporality != CUMULATIVE {
                out.skipped().delta_points += h.data_points.len() as u64;
                return Ok(());
            }
            let name = with_suffix(name, &unit_suffix(&m.unit, false).unwrap_or_default());
            for (p, dp) in h.data_points.iter().enumerate() {
                let at = format!("{at}.histogram.data_points[{p}]");
                let buckets = dp.bucket_counts.len();
                if buckets != 0 && buckets != dp.explicit_bounds.len() + 1 {
                    return Err(ProtocolError::malformed(
                        format!("{at}.bucket_counts"),
                        format!(
                            "{buckets} counts for {} bounds (must be one more than the bounds)",
                            dp.explicit_bounds.len()
                        ),
                    ));
                }
                out.reserve(buckets + 2, || at.clone())?;
                let pt = point(base, &dp.attributes, dp.time_unix_nano, &at)?;
                let v = |x: f64| value_of(dp.flags, x);
                let bucket = format!("{name}_bucket");
                let mut cumulative: u64 = 0;
                for (b, bound) in dp.explicit_bounds.iter().enumerate() {
                    if bound.is_nan() {
                        return Err(ProtocolError::malformed(
                            format!("{at}.explicit_bounds[{b}]"),
                            "NaN",
                        ));
                    }
                    cumulative = dp
                        .bucket_counts
                        .get(b)
                        .map_or(Some(cumulative), |c| cumulative.checked_add(*c))
                        .ok_or_else(|| {
                            ProtocolError::malformed(
                                format!("{at}.bucket_counts[{b}]"),
                                "cumulative count overflows",
                            )
                        })?;
                    if buckets != 0 {
                        pt.emit(out, &bucket, Some(("le", le(*bound))), v(cumulative as f64))?;
                    }
                }
                pt.emit(
                    out,
                    &bucket,
                    Some(("le", "+Inf".into())),
                    v(dp.count as f64),
                )?;
                if let Some(sum) = dp.sum {
                    pt.emit(out, &format!("{name}_sum"), None, v(sum))?;
                }
                pt.emit(out, &format!("{name}_count"), None, v(dp.count as f64))?;
            }
        }
        metric::Data::Summary(s) => {
            let name = with_suffix(name, &unit_suffix(&m.unit, false).unwrap_or_default());
            for (p, dp) in s.data_points.iter().enumerate() {
                let at = format!("{at}.summary.data_points[{p}]");
                out.reserve(dp.quantile_values.len() + 2, || at.clone())?;
                let pt = point(base, &dp.attributes, dp.time_unix_nano, &at)?;
                let v = |x: f64| value_of(dp.flags, x);
                for q in &dp.quantile_values {
                    pt.emit(out, &name, Some(("quantile", le(q.quantile))), v(q.value))?;
                }
                pt.emit(out, &format!("{name}_sum"), None, v(dp.sum))?;
                pt.emit(out, &format!("{name}_count"), None, v(dp.count as f64))?;
            }
        }
        metric::Data::ExponentialHistogram(h) => {
            out.skipped().native_histograms += h.data_points.len() as u64;
        }
    }
    Ok(())
}

/// One sample of `name` per gauge or sum point.
fn numbers(
    out: &mut Out<'_>,
    base: &Sanitized,
    points: &[NumberDataPoint],
    name: &str,
    at: &str,
) -> Result<(), ProtocolError> {
    for (p, dp) in points.iter().enumerate() {
        let at = format!("{at}.data_points[{p}]");
        let v = number(dp.value.as_ref(), &at)?;
        point(base, &dp.attributes, dp.time_unix_nano, &at)?.emit(
            out,
            name,
            None,
            value_of(dp.flags, v),
        )?;
    }
    Ok(())
}

fn number(v: Option<&number_data_point::Value>, at: &str) -> Result<f64, ProtocolError> {
    match v {
        Some(number_data_point::Value::AsDouble(d)) => Ok(*d),
        // Exact up to 2^53.
        Some(number_data_point::Value::AsInt(i)) => Ok(*i as f64),
        None => Err(ProtocolError::malformed(
            at,
            "no value (as_double or as_int)",
        )),
    }
}

/// A bucket bound or quantile as a label value: `+Inf`, `-Inf`, or the shortest decimal.
fn le(b: f64) -> String {
    if b == f64::INFINITY {
        "+Inf".into()
    } else if b == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        b.to_string()
    }
}

#[cfg(test)]
mod tests;
