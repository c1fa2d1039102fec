//! Influx line protocol (`POST /api/v2/write`, `/write`), as Telegraf and the InfluxDB
//! clients send it, parsed by InfluxData's `influxdb-line-protocol` crate (IOx's parser),
//! line by line so an error names its line.
//!
//! Mapping (Telegraf's Prometheus output convention): each numeric field of a line is one
//! sample named `<measurement>_<field>` (a field called `value` gives just
//! `<measurement>`), sanitized to the metric charset; tags are labels, their keys sanitized
//! to the label charset (`host.name` → `host_name`; two keys that end up equal are a
//! duplicate, refused). Integers and unsigned integers become doubles (exact up to 2^53),
//! booleans 1 and 0; string fields have no numeric value and are skipped
//! ([`crate::Skipped::string_fields`]). A line without a timestamp takes the request's
//! receive time.

use influxdb_line_protocol::{parse_lines, split_lines, FieldValue};

use crate::labels::{
    check_metric, push_strict, sanitize_label_name, sanitize_metric_name, seal, Out,
};
use crate::{Limits, Parsed, ProtocolError};

/// The unit of the timestamps of a request (`precision` query parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// `ns` or `n` (the default).
    #[default]
    Nanoseconds,
    /// `us` or `u`.
    Microseconds,
    /// `ms`.
    Milliseconds,
    /// `s`.
    Seconds,
    /// `m` (1.x API only).
    Minutes,
    /// `h` (1.x API only).
    Hours,
}

impl Precision {
    /// The precision a `precision` parameter names: the 2.x `ns`, `us`, `ms`, `s` and the
    /// 1.x `n`, `u`, `ms`, `s`, `m`, `h`.
    pub fn parse(s: &str) -> Result<Precision, ProtocolError> {
        Ok(match s {
            "ns" | "n" => Precision::Nanoseconds,
            "us" | "u" | "µs" => Precision::Microseconds,
            "ms" => Precision::Milliseconds,
            "s" => Precision::Seconds,
            "m" => Precision::Minutes,
            "h" => Precision::Hours,
            other => {
                return Err(ProtocolError::malformed(
                    "precision",
                    format!("{other:?} is none of ns, us, ms, s (or n, u, m, h)"),
                ))
            }
        })
    }

    /// `t` of this precision in microseconds (nanoseconds round down), `None` on overflow.
    pub fn to_micros(self, t: i64) -> Option<i64> {
        match self {
            Precision::Nanoseconds => Some(t.div_euclid(1_000)),
            Precision::Microseconds => Some(t),
            Precision::Milliseconds => t.checked_mul(1_000),
            Precision::Seconds => t.checked_mul(1_000_000),
            Precision::Minutes => t.checked_mul(60_000_000),
            Precision::Hours => t.checked_mul(3_600_000_000),
        }
    }
}

/// Parses a line-protocol body; lines without a timestamp get `now_micros`.
pub fn parse(
    body: &[u8],
    precision: Precision,
    now_micros: i64,
    limits: &Limits,
) -> Result<Parsed, ProtocolError> {
    limits.check_body("body", body.len())?;
    let text = std::str::from_utf8(body).map_err(|e| {
        let line = body[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        ProtocolError::malformed(format!("line {line}"), "not UTF-8")
    })?;
    let mut out = Out::new(limits);
    for (n, raw) in split_lines(text).enumerate() {
        let at = || format!("line {}", n + 1);
        let Some(line) = parse_lines(raw).next() else {
            continue; // blank or comment
        };
        let line = line.map_err(|e| ProtocolError::malformed(at(), e.to_string()))?;
        let mut labels = Vec::new();
        for (k, v) in line.series.tag_set.iter().flatten() {
            let name = sanitize_label_name(k);
            push_strict(&mut labels, limits, &name, v, |part| {
                format!("{}: tag {:?} {part}", at(), k.as_str())
            })?;
        }
        seal(&mut labels, at)?;
        let t = match line.timestamp {
            None => now_micros,
            Some(t) => precision.to_micros(t).ok_or_else(|| {
                ProtocolError::malformed(
                    format!("{}: timestamp", at()),
                    format!("{t} in {precision:?} is out of range in microseconds"),
                )
            })?,
        };
        let measurement = line.series.measurement.as_str();
        for (field, value) in &line.field_set {
            let field_at = || format!("{}: field {:?}", at(), field.as_str());
            let value = match value {
                FieldValue::F64(v) => *v,
                // Exact up to 2^53; larger integers round to the nearest double.
                FieldValue::I64(v) => *v as f64,
                FieldValue::U64(v) => *v as f64,
                FieldValue::Boolean(b) => f64::from(u8::from(*b)),
                FieldValue::String(_) => {
                    out.skipped().string_fields += 1;
                    continue;
                }
            };
            let metric = if field.as_str() == "value" {
                sanitize_metric_name(measurement)
            } else {
                sanitize_metric_name(&format!("{measurement}_{}", field.as_str()))
            };
            check_metric(limits, &metric, field_at)?;
            out.series(field_at)?;
            out.push(metric, labels.clone(), t, value, field_at)?;
        }
    }
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_765_000_000_000_000;

    fn names(p: &Parsed) -> Vec<String> {
        p.samples.iter().map(|s| s.metric.clone()).collect()
    }

    #[test]
    fn fields_become_measurement_field_tags_become_labels() {
        let body = b"# a comment\n\ncpu,host=web-1,cpu=cpu0 usage_idle=97.5,usage_user=1i,up=true,\
note=\"x\" 1765000000123456789\nload value=5u\n";
        let p = parse(body, Precision::Nanoseconds, NOW, &Limits::default()).expect("valid");
        assert_eq!(
            names(&p),
            ["cpu_usage_idle", "cpu_usage_user", "cpu_up", "load"]
        );
        assert_eq!(p.samples[0].value, 97.5);
        assert_eq!(p.samples[3].value, 5.0);
        assert_eq!(p.samples[1].value, 1.0);
        assert_eq!(p.samples[2].value, 1.0);
        assert_eq!(p.samples[0].timestamp, 1_765_000_000_123_456);
        assert_eq!(
            p.samples[3].timestamp, NOW,
            "no timestamp: the receive time"
        );
        let labels: Vec<(&str, &str)> = p.samples[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels, [("cpu", "cpu0"), ("host", "web-1")]);
        assert_eq!(p.skipped.string_fields, 1);
        assert_eq!(p.series, 4);
    }

    #[test]
    fn precision_scales_and_overflow_names_the_line() {
        for (p, t, want) in [
            ("s", 1_765_000_000_i64, 1_765_000_000_000_000_i64),
            ("ms", 1_765_000_000_001, 1_765_000_000_001_000),
            ("u", 5, 5),
            ("m", 2, 120_000_000),
            ("h", 1, 3_600_000_000),
            ("n", -1, -1),
        ] {
            let precision = Precision::parse(p).expect("known");
            let body = format!("m f=1 {t}");
            let parsed = parse(body.as_bytes(), precision, NOW, &Limits::default()).expect("valid");
            assert_eq!(parsed.samples[0].timestamp, want, "{p}");
        }
        assert_eq!(Precision::parse("d").unwrap_err().field(), "precision");
        let err = parse(
            b"m f=1 1\nm f=1 9223372036854775807",
            Precision::Hours,
            NOW,
            &Limits::default(),
        )
        .unwrap_err();
        assert_eq!(err.field(), "line 2: timestamp");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn bad_lines_name_their_line() {
        let limits = Limits::default();
        let err = parse(b"ok f=1\nbroken\n", Precision::Nanoseconds, NOW, &limits).unwrap_err();
        assert_eq!(err.field(), "line 2");
        assert_eq!(err.status(), 400);
        let err = parse(b"ok f=1\n\xff f=1", Precision::Nanoseconds, NOW, &limits).unwrap_err();
        assert_eq!(err.to_string(), "line 2: not UTF-8");
        let err = parse(b"m,a=1,a=2 f=1", Precision::Nanoseconds, NOW, &limits).unwrap_err();
        assert_eq!(err.to_string(), "line 1: label \"a\" occurs twice");
        let err = parse(b"m,a.b=1,a_b=2 f=1", Precision::Nanoseconds, NOW, &limits).unwrap_err();
        assert_eq!(
            err.status(),
            400,
            "tags that sanitize alike are a duplicate"
        );
    }

    #[test]
    fn names_are_sanitized_and_limits_apply() {
        let p = parse(
            b"http.server,host.name=a 2xx=3",
            Precision::Nanoseconds,
            NOW,
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(p.samples[0].metric, "http_server_2xx");
        assert_eq!(p.samples[0].labels[0].name, "host_name");
        let tight = Limits {
            max_samples: 2,
            ..Limits::default()
        };
        let err = parse(b"m a=1,b=2\nm c=3", Precision::Nanoseconds, NOW, &tight).unwrap_err();
        assert_eq!(err.field(), "line 2: field \"c\"");
        assert_eq!(err.status(), 413);
        let tiny = Limits {
            max_body_bytes: 4,
            ..Limits::default()
        };
        assert_eq!(
            parse(b"m a=1", Precision::Nanoseconds, NOW, &tiny)
                .unwrap_err()
                .status(),
            413
        );
    }

    #[test]
    fn non_finite_floats_are_refused_by_the_grammar_but_bools_and_ints_map() {
        // Line protocol has no NaN/Inf literal: such a line is malformed.
        let err = parse(b"m f=NaN", Precision::Nanoseconds, NOW, &Limits::default());
        assert!(err.is_err());
        let p = parse(
            b"m f=-9223372036854775808i,g=false",
            Precision::Nanoseconds,
            NOW,
            &Limits::default(),
        )
        .expect("valid");
        assert_eq!(p.samples[0].value, i64::MIN as f64);
        assert_eq!(p.samples[1].value, 0.0);
    }
}
