//! Query parameters: one extractor ([`Params`]) for every route, and the grammar of times
//! and durations.
//!
//! A route declares its parameters once, as a struct deriving `Deserialize` (what the
//! handler gets) and `utoipa::IntoParams` (the OpenAPI document, with the constraints;
//! the names [`Params`] accepts). [`Params`] answers 400 naming the parameter for a key
//! the struct does not have, a value that is not percent-encoded UTF-8, an empty value
//! (every parameter is absent or says something), and a value the field refuses. A key
//! may repeat: a sequence field gets every value, any other field the last one.

use std::collections::BTreeMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use fleet_service::ApiError;
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde::{Deserialize, Deserializer};
use utoipa::openapi::path::ParameterIn;
use utoipa::IntoParams;

/// A route's query parameters as `T` (see the module docs).
#[derive(Debug, Clone)]
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned + IntoParams,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parse(parts.uri.query()).map(Params)
    }
}

/// The names of `T`'s query parameters.
fn known<T: IntoParams>() -> Vec<String> {
    T::into_params(|| Some(ParameterIn::Query))
        .into_iter()
        .map(|p| p.name)
        .collect()
}

/// Parses a query string into `T` (see the module docs).
pub fn parse<T: DeserializeOwned + IntoParams>(raw: Option<&str>) -> Result<T, ApiError> {
    let pairs = pairs(raw.unwrap_or_default())?;
    let known = known::<T>();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| !known.contains(k)) {
        return Err(ApiError::invalid_field(
            k.clone(),
            format!("unknown query parameter; known: {}", known.join(", ")),
        ));
    }
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in pairs {
        by_key.entry(k).or_default().push(v);
    }
    if let Some((k, _)) = by_key
        .iter()
        .find(|(_, vs)| vs.last().is_some_and(String::is_empty))
    {
        return Err(ApiError::invalid_field(k.clone(), "must not be empty"));
    }
    let map = serde::de::value::MapDeserializer::<_, serde::de::value::Error>::new(
        by_key.into_iter().map(|(k, vs)| (k, Values(vs))),
    );
    serde_path_to_error::deserialize(map)
        .map_err(|e| ApiError::invalid_field(e.path().to_string(), e.inner().to_string()))
}

/// Query-string pairs in order, percent-decoded (repeated keys kept).
fn pairs(raw: &str) -> Result<Vec<(String, String)>, ApiError> {
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str, what: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::invalid_field(what.to_owned(), "is not valid percent-encoded UTF-8")
            })
        };
        let key = dec(k, "query")?;
        let value = dec(v, &key)?;
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The values of one key: a sequence to a sequence field, the last one to any other.
struct Values(Vec<String>);

impl<'de> IntoDeserializer<'de, serde::de::value::Error> for Values {
    type Deserializer = Values;

    fn into_deserializer(self) -> Values {
        self
    }
}

impl<'de> Deserializer<'de> for Values {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        mut self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_string(self.0.pop().unwrap_or_default())
    }

    fn deserialize_option<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_seq<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_seq(serde::de::value::SeqDeserializer::new(self.0.into_iter()))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct tuple tuple_struct map struct enum identifier
        ignored_any
    }
}

/// A page size: 1 to 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit(pub u32);

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
        let v = String::deserialize(d)?;
        match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Limit(n)),
            _ => Err(serde::de::Error::custom(
                "must be a whole number from 1 to 1000",
            )),
        }
    }
}

/// The page size a request asked for, as the stores take it.
pub(crate) fn limit(l: Option<Limit>) -> Option<u32> {
    l.map(|l| l.0)
}

/// A closed set of values a parameter takes (a status filter).
pub trait Choice: Sized {
    /// The message when a value is none of them (`must be open, acknowledged or resolved`).
    const EXPECTED: &'static str;
    /// The value `v` names, if any.
    fn choose(v: &str) -> Option<Self>;
}

/// A parameter of a closed set: `T::choose`, else a 400 with `T::EXPECTED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneOf<T>(pub T);

impl<'de, T: Choice> Deserialize<'de> for OneOf<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OneOf<T>, D::Error> {
        let v = String::deserialize(d)?;
        T::choose(&v)
            .map(OneOf)
            .ok_or_else(|| serde::de::Error::custom(T::EXPECTED))
    }
}

/// The chosen value of an optional [`OneOf`] parameter.
pub(crate) fn chosen<T>(v: Option<OneOf<T>>) -> Option<T> {
    v.map(|OneOf(t)| t)
}

impl Choice for fleet_read_model::AgentStatus {
    const EXPECTED: &'static str = "must be online, offline or deactivated";
    fn choose(v: &str) -> Option<Self> {
        Self::parse(v)
    }
}

impl Choice for fleet_read_model::AlertStatus {
    const EXPECTED: &'static str = "must be open, acknowledged or resolved";
    fn choose(v: &str) -> Option<Self> {
        Self::parse(v)
    }
}

impl Choice for fleet_read_model::DeliveryStatus {
    const EXPECTED: &'static str = "must be pending, delivered or dead";
    fn choose(v: &str) -> Option<Self> {
        Self::parse(v)
    }
}

impl Choice for fleet_read_model::TicketStatus {
    const EXPECTED: &'static str = "must be open, acknowledged or resolved";
    fn choose(v: &str) -> Option<Self> {
        Self::parse(v)
    }
}

pub(crate) use fleet_schemas::time::{parse_duration, TIME_UNITS};

/// [`parse_duration`]'s grammar (`fleet_schemas::time`) as an anchored pattern for the
/// OpenAPI document; `positive` leaves out zero.
pub(crate) fn duration_pattern(units: &[&str], sign: bool, positive: bool) -> String {
    let alternatives: Vec<String> = fleet_schemas::time::DURATION_UNITS
        .iter()
        .filter(|(u, _, _)| units.contains(u))
        .map(|(u, _, cap)| {
            if positive {
                format!("0*[1-9][0-9]{{0,{}}}{u}", cap - 1)
            } else {
                format!("0*[0-9]{{1,{cap}}}{u}")
            }
        })
        .collect();
    format!(
        "^{}(?:{})$",
        if sign { "-?" } else { "" },
        alternatives.join("|")
    )
}

/// Parses a time with [`fleet_schemas::time::parse_instant`] (RFC 3339, `now`, or a
/// duration meaning that long before `now`: `15m`, `-15m`); a bad or out-of-range time is
/// a 400 naming `field`.
pub fn parse_time(field: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    fleet_schemas::time::parse_instant(v, now.timestamp_micros())
        .map(fleet_schemas::time::from_micros)
        .map_err(|e| ApiError::invalid_field(field, e.to_string()))
}

/// `t`, if the time-series store can answer for it.
pub(crate) fn in_range(field: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if t.timestamp_micros().unsigned_abs() > fleet_schemas::time::MAX_ABS_MICROS.unsigned_abs() {
        return Err(too_far(field));
    }
    Ok(t)
}

pub(crate) fn too_far(field: &str) -> ApiError {
    ApiError::invalid_field(
        field,
        "is out of range: times are within about 146,000 years of 1970",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    #[test]
    fn parse_time_accepts_rfc3339_now_and_durations() {
        let now = fleet_schemas::time::from_micros(fleet_schemas::time::now_micros());
        assert_eq!(parse_time("start", "now", now).expect("now"), now);
        assert_eq!(
            parse_time("start", "15m", now).expect("dur"),
            now - chrono::Duration::minutes(15)
        );
        assert_eq!(
            parse_time("start", "-1h", now).expect("dur"),
            now - chrono::Duration::hours(1)
        );
        let t = parse_time("start", "2026-11-23T10:00:00Z", now).expect("rfc3339");
        assert_eq!(t.timestamp(), 1_795_428_000);
        let e = parse_time("start", "yesterday", now).expect_err("bad");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parse_time_refuses_durations_out_of_range_naming_the_field() {
        let now = Utc::now();
        assert!(parse_time("start", "100y", now).is_ok());
        // 300000y overflowed `DateTime - TimeDelta` (a panic); 200000y fits chrono but not
        // the stores' ±2^62 µs; a duration beyond TimeDelta's range fails conversion.
        for v in ["300000y", "200000y", "18446744073709551615s", "-300000y"] {
            let e = parse_time("end", v, now).expect_err(v);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{v}");
            assert!(format!("{e:?}").contains("\"end\""), "{v}: {e:?}");
        }
    }

    /// Parameters of a made-up route.
    #[derive(Debug, Deserialize, IntoParams)]
    #[into_params(parameter_in = Query)]
    struct Example {
        /// Repeats.
        #[serde(default)]
        metric: Vec<String>,
        /// The last one counts.
        x: Option<String>,
        /// A page size.
        #[param(value_type = Option<u32>)]
        limit: Option<Limit>,
        /// One of a set.
        #[param(value_type = Option<String>)]
        status: Option<OneOf<fleet_read_model::AlertStatus>>,
    }

    fn field(e: ApiError) -> String {
        let text = format!("{e:?}");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{text}");
        text
    }

    #[test]
    fn params_decode_repeat_and_name_the_parameter_at_fault() {
        let p: Example = parse(Some(
            "metric=cpu.percent&metric=disk.percent%3A%2Fvar&x=a&x=a+b&limit=7&status=resolved",
        ))
        .expect("params");
        assert_eq!(p.metric, ["cpu.percent", "disk.percent:/var"]);
        assert_eq!(p.x.as_deref(), Some("a b"));
        assert_eq!(p.limit, Some(Limit(7)));
        assert_eq!(
            chosen(p.status),
            Some(fleet_read_model::AlertStatus::Resolved)
        );
        let none: Example = parse(None).expect("no parameters");
        assert!(none.metric.is_empty() && none.x.is_none() && none.limit.is_none());
        for (q, named) in [
            ("x=%ZZ", "\"x\""),
            ("colour=red", "\"colour\""),
            ("x=", "\"x\""),
            ("limit=0", "\"limit\""),
            ("limit=ten", "\"limit\""),
            ("status=closed", "must be open, acknowledged or resolved"),
        ] {
            let e = parse::<Example>(Some(q)).expect_err(q);
            let text = field(e);
            assert!(text.contains(named), "{q}: {text}");
        }
        let text = field(parse::<Example>(Some("limit=1001")).expect_err("range"));
        assert!(
            text.contains("must be a whole number from 1 to 1000"),
            "{text}"
        );
        let text = field(parse::<Example>(Some("colour=red")).expect_err("unknown"));
        assert!(text.contains("known: metric, x, limit, status"), "{text}");
    }
}
