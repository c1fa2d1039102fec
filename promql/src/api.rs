//! The Prometheus HTTP API's shapes: parameters (times, durations) as Prometheus parses
//! them and answers as it writes them.

use serde_json::{json, Map, Value as Json};

use crate::source::Labels;
use crate::value::{ErrorType, QueryValue};

/// A sample value as Prometheus writes it: Go's `strconv.FormatFloat(v, 'f', -1, 64)`
/// (shortest round-trip digits, never an exponent), `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        // Rust's Display is also shortest round-trip without an exponent.
        format!("{v}")
    }
}

/// A timestamp as Prometheus writes it: seconds, with the milliseconds as a fraction.
pub fn format_time(t_ms: i64) -> Json {
    if t_ms % 1000 == 0 {
        json!(t_ms / 1000)
    } else {
        json!(t_ms as f64 / 1000.0)
    }
}

/// Labels as a JSON object.
pub fn labels_json(labels: &Labels) -> Json {
    Json::Object(
        labels
            .iter()
            .map(|(n, v)| (n.clone(), Json::String(v.clone())))
            .collect::<Map<String, Json>>(),
    )
}

fn point(t_ms: i64, v: f64) -> Json {
    json!([format_time(t_ms), format_value(v)])
}

/// The `data` of a query answer: `{"resultType": ..., "result": ...}`.
pub fn query_data(value: &QueryValue) -> Json {
    let (kind, result) = match value {
        QueryValue::Scalar { t_ms, v } => ("scalar", point(*t_ms, *v)),
        QueryValue::String { t_ms, s } => ("string", json!([format_time(*t_ms), s])),
        QueryValue::Vector(samples) => (
            "vector",
            Json::Array(
                samples
                    .iter()
                    .map(|s| json!({"metric": labels_json(&s.labels), "value": point(s.t_ms, s.v)}))
                    .collect(),
            ),
        ),
        QueryValue::Matrix(series) => (
            "matrix",
            Json::Array(
                series
                    .iter()
                    .map(|s| {
                        json!({
                            "metric": labels_json(&s.labels),
                            "values": s.points.iter().map(|(t, v)| point(*t, *v)).collect::<Vec<_>>(),
                        })
                    })
                    .collect(),
            ),
        ),
    };
    json!({"resultType": kind, "result": result})
}

/// A success envelope.
pub fn success(data: Json) -> Json {
    json!({"status": "success", "data": data})
}

/// An error envelope.
pub fn error(kind: ErrorType, message: &str) -> Json {
    json!({"status": "error", "errorType": kind.as_str(), "error": message})
}

/// Most milliseconds a time parameter may be from the epoch (about ±292 million years,
/// as Go's `time.Time` in ms allows).
const MAX_ABS_MS: f64 = 9.2e18;

/// Parses a time parameter as Prometheus does: unix seconds (a float, rounded to the
/// millisecond) or RFC 3339. Answers milliseconds.
pub fn parse_time(s: &str) -> Result<i64, String> {
    if let Ok(secs) = s.parse::<f64>() {
        let whole = secs.trunc();
        let ms = whole * 1000.0 + ((secs - whole) * 1000.0).round();
        if !ms.is_finite() || ms.abs() > MAX_ABS_MS {
            return Err(format!("cannot parse {s:?} to a valid timestamp"));
        }
        return Ok(ms as i64);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|_| format!("cannot parse {s:?} to a valid timestamp"))
}

/// Parses a duration parameter as Prometheus does: seconds (a float) or a Prometheus
/// duration (`1h30m`, `15s`, `500ms`; units `y w d h m s ms`). Answers milliseconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("cannot parse {s:?} to a valid duration");
    if let Ok(secs) = s.parse::<f64>() {
        // As Prometheus: to whole nanoseconds, then whole milliseconds (both truncated).
        let ns = (secs * 1e9).trunc();
        if !ns.is_finite() || ns.abs() >= 9.2e18 {
            return Err(format!(
                "cannot parse {s:?} to a valid duration. It overflows int64"
            ));
        }
        return Ok(ns as i64 / 1_000_000);
    }
    let mut total: i64 = 0;
    let mut rest = s;
    let mut last_unit = usize::MAX;
    const UNITS: [(&str, i64); 7] = [
        ("y", 365 * 24 * 3_600_000),
        ("w", 7 * 24 * 3_600_000),
        ("d", 24 * 3_600_000),
        ("h", 3_600_000),
        ("ms", 1),
        ("m", 60_000),
        ("s", 1_000),
    ];
    // Units must come largest first, each at most once (ms after s).
    const ORDER: [&str; 7] = ["y", "w", "d", "h", "m", "s", "ms"];
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: i64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, factor) = UNITS
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .copied()
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        let rank = ORDER.iter().position(|u| *u == unit).ok_or_else(bad)?;
        if last_unit != usize::MAX && rank <= last_unit {
            return Err(bad());
        }
        last_unit = rank;
        total = n
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_like_go_formatfloat() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.1), "0.1");
        assert_eq!(format_value(-2.5), "-2.5");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(1.5e-7), "0.00000015");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_time(1_700_000_000_000), json!(1_700_000_000));
        assert_eq!(format_time(1_700_000_000_500), json!(1_700_000_000.5));
    }

    #[test]
    fn times_parse_as_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000));
        assert_eq!(parse_time("1700000000.1234"), Ok(1_700_000_000_123));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2023-11-14T23:13:20.5+01:00"),
            Ok(1_700_000_000_500)
        );
        assert!(parse_time("yesterday").is_err());
        assert!(parse_time("1e300").is_err());
        assert!(parse_time("NaN").is_err());
    }

    #[test]
    fn durations_parse_as_seconds_or_prometheus_durations() {
        assert_eq!(parse_duration("15"), Ok(15_000));
        assert_eq!(parse_duration("0.5"), Ok(500));
        // Truncated through nanoseconds like Go: 1.001 s is 1000999999 ns.
        assert_eq!(parse_duration("1.001"), Ok(1000));
        assert_eq!(parse_duration("15s"), Ok(15_000));
        assert_eq!(parse_duration("1h30m"), Ok(5_400_000));
        assert_eq!(parse_duration("1m500ms"), Ok(60_500));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert!(parse_duration("30m1h").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999y").is_err());
    }
}
