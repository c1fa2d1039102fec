//! Timestamps on records are UTC microseconds since the Unix epoch (`timestamp-micros`).

use chrono::{DateTime, TimeZone, Utc};

/// Microseconds since the Unix epoch, now.
pub fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

/// Converts a chrono time to microseconds since the epoch.
pub fn to_micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// Microseconds in `d`, saturating at `i64::MAX` (durations of configuration, compared
/// with record times).
pub fn duration_micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Converts microseconds since the epoch to a chrono time (saturating at the valid range).
pub fn from_micros(micros: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(micros)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Times are within ±2^62 µs of the epoch (about ±146,000 years): every store refuses
/// times beyond it, so that no bucket arithmetic overflows.
pub const MAX_ABS_MICROS: i64 = 1 << 62;

/// Units of a duration (`15m`, `24h`): suffix, seconds, and most significant digits, so
/// that every duration the grammar admits is within [`MAX_ABS_MICROS`]. An OpenAPI
/// document states the same grammar as a pattern built from this table.
pub const DURATION_UNITS: &[(&str, u64, usize)] = &[
    ("s", 1, 12),
    ("m", 60, 10),
    ("h", 3_600, 9),
    ("d", 86_400, 7),
    ("w", 604_800, 6),
    ("y", 31_557_600, 5),
];

/// The units of a duration back from now in [`parse_instant`]: all of [`DURATION_UNITS`].
pub const TIME_UNITS: &[&str] = &["s", "m", "h", "d", "w", "y"];

/// Parses `<digits><unit>` with one of `units` (leading zeros allowed, at most the unit's
/// significant digits of [`DURATION_UNITS`]). `None` when it is not that.
pub fn parse_duration(v: &str, units: &[&str]) -> Option<std::time::Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = v.split_at(split);
    let &(_, secs, cap) = DURATION_UNITS
        .iter()
        .find(|(u, _, _)| *u == unit && units.contains(u))?;
    let significant = digits.trim_start_matches('0');
    if digits.is_empty() || significant.len() > cap {
        return None;
    }
    let n: u64 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    Some(std::time::Duration::from_secs(n.checked_mul(secs)?))
}

/// Why a text is not an instant. The messages follow the name of the field or flag
/// (`start must be ...`, `--since "x" must be ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimeError {
    /// Neither `now`, nor RFC 3339, nor a duration.
    #[error(
        "must be RFC 3339 (2026-11-23T10:00:00Z), `now`, or a duration before now \
         (digits and one of s m h d w y: 15m, 24h)"
    )]
    Invalid,
    /// Beyond ±[`MAX_ABS_MICROS`].
    #[error("is out of range: times are within about 146,000 years of 1970")]
    OutOfRange,
}

/// Parses an instant: `now`, RFC 3339, or a duration meaning that long before `now_micros`
/// (`15m`, `-15m`: digits and one of [`TIME_UNITS`], see [`parse_duration`]). Returns µs
/// since the epoch. Every step is checked arithmetic: a time outside ±[`MAX_ABS_MICROS`]
/// is [`TimeError::OutOfRange`].
pub fn parse_instant(text: &str, now_micros: i64) -> Result<i64, TimeError> {
    let t = if text == "now" {
        now_micros
    } else if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        t.timestamp_micros()
    } else if let Some(d) = parse_duration(text.strip_prefix('-').unwrap_or(text), TIME_UNITS) {
        i64::try_from(d.as_micros())
            .ok()
            .and_then(|back| now_micros.checked_sub(back))
            .ok_or(TimeError::OutOfRange)?
    } else {
        return Err(TimeError::Invalid);
    };
    if t.unsigned_abs() > MAX_ABS_MICROS.unsigned_abs() {
        return Err(TimeError::OutOfRange);
    }
    Ok(t)
}

/// Serializes a time exactly as chrono's `Serialize` does (RFC 3339, `Z`, the fraction
/// only when there is one), with whole-second times of years 0-9999 written from a stack
/// buffer: chrono's own path goes through `collect_str`, which hands each digit to the
/// serializer's escaping one character at a time, and answers of thousands of bucket
/// times spent a fifth of their time there. For `#[serde(serialize_with = ...)]`.
pub fn serialize_rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if t.nanosecond() != 0 || !(0..=9999).contains(&year) {
        return s.serialize_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    }
    // Each field fits its digits: year <= 9999, the others < 100.
    fn two(b: &mut [u8], v: u32) {
        b[0] = b'0' + (v / 10 % 10) as u8;
        b[1] = b'0' + (v % 10) as u8;
    }
    let mut b = *b"0000-00-00T00:00:00Z";
    let y = year.unsigned_abs();
    two(&mut b[0..2], y / 100);
    two(&mut b[2..4], y % 100);
    two(&mut b[5..7], t.month());
    two(&mut b[8..10], t.day());
    two(&mut b[11..13], t.hour());
    two(&mut b[14..16], t.minute());
    two(&mut b[17..19], t.second());
    // The buffer holds ASCII digits and separators only.
    s.serialize_str(std::str::from_utf8(&b).map_err(serde::ser::Error::custom)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_serialization_is_chronos_own() {
        #[derive(serde::Serialize)]
        struct Fast(#[serde(serialize_with = "serialize_rfc3339")] DateTime<Utc>);
        let micros = [
            0,
            1,
            NOW,
            NOW + 500_000,
            NOW + 123_456,
            1_795_428_000_000_000,
            -1,
            -62_135_596_800_000_000, // 0001-01-01
            -62_167_219_200_000_000, // 0000-01-01
            -62_167_219_200_000_001, // before year 0
            253_402_300_799_000_000, // 9999-12-31T23:59:59
            253_402_300_800_000_000, // 10000-01-01
            951_782_400_000_000,     // 2000-02-29
            MAX_ABS_MICROS,
            -MAX_ABS_MICROS,
        ];
        for m in micros
            .into_iter()
            .chain((0..2000).map(|i| i * 7_919_993_000_000 - 3_000_000_000_000_000))
        {
            let t = from_micros(m);
            assert_eq!(
                serde_json::to_string(&Fast(t)).unwrap(),
                serde_json::to_string(&t).unwrap(),
                "{m}"
            );
        }
    }

    const NOW: i64 = 1_800_000_000_000_000;

    #[test]
    fn instants_are_now_rfc3339_or_durations_back() {
        assert_eq!(parse_instant("now", NOW), Ok(NOW));
        assert_eq!(parse_instant("15m", NOW), Ok(NOW - 900_000_000));
        assert_eq!(parse_instant("-1h", NOW), Ok(NOW - 3_600_000_000));
        assert_eq!(parse_instant("24h", NOW), Ok(NOW - 86_400_000_000));
        assert_eq!(parse_instant("7d", NOW), Ok(NOW - 7 * 86_400_000_000));
        assert_eq!(parse_instant("0s", NOW), Ok(NOW));
        assert_eq!(
            parse_instant("2026-11-23T10:00:00Z", NOW),
            Ok(1_795_428_000_000_000)
        );
        assert_eq!(
            parse_instant("2026-11-23T11:00:00.5+01:00", NOW),
            Ok(1_795_428_000_500_000)
        );
        for bad in [
            "yesterday",
            "",
            "h",
            "1",
            "1.5h",
            "1h30m",
            "--1h",
            "+1h",
            " now",
            "1 h",
        ] {
            assert_eq!(parse_instant(bad, NOW), Err(TimeError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn instants_out_of_range_are_refused() {
        assert!(parse_instant("100y", NOW).is_ok());
        assert!(parse_instant("99999y", NOW).is_ok());
        // 146,000 years back is past -2^62 µs; more digits than a unit admits is no
        // duration at all.
        assert_eq!(parse_instant("150000y", NOW), Err(TimeError::Invalid));
        assert_eq!(
            parse_instant("999999999999s", -MAX_ABS_MICROS),
            Err(TimeError::OutOfRange)
        );
        assert_eq!(parse_instant("1s", i64::MIN), Err(TimeError::OutOfRange));
        assert_eq!(
            parse_instant("18446744073709551615s", NOW),
            Err(TimeError::Invalid)
        );
        assert_eq!(parse_instant("now", i64::MAX), Err(TimeError::OutOfRange));
    }

    #[test]
    fn durations_follow_the_unit_table() {
        assert_eq!(
            parse_duration("90m", TIME_UNITS),
            Some(std::time::Duration::from_secs(5_400))
        );
        assert_eq!(
            parse_duration("0001w", TIME_UNITS),
            Some(std::time::Duration::from_secs(604_800))
        );
        assert_eq!(parse_duration("5h", &["m", "d"]), None);
        assert!(parse_duration("999999999999s", TIME_UNITS).is_some());
        assert_eq!(parse_duration("1000000000000s", TIME_UNITS), None);
        // Every unit's largest duration stays within the time range.
        for (u, secs, cap) in DURATION_UNITS {
            let max = 10u64.pow(u32::try_from(*cap).unwrap_or(0)) - 1;
            assert!(
                max * secs * 1_000_000 < MAX_ABS_MICROS.unsigned_abs(),
                "{u}"
            );
        }
    }
}
