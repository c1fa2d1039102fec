//! Checks of request bodies and headers shared by the routes.

use axum::http::HeaderMap;
use fleet_service::ApiError;
use serde::Deserialize;

/// A name (tenant, location, user, device), trimmed; see
/// [`fleet_schemas::text::check_name`]. 400 naming `field` otherwise.
pub(crate) fn name_field(field: &str, v: &str) -> Result<String, ApiError> {
    fleet_schemas::text::check_name(v, MAX_NAME_BYTES)
        .map(str::to_owned)
        .map_err(|m| ApiError::invalid_field(field, m))
}

/// Longest name, in characters.
pub(crate) const MAX_NAME_BYTES: usize = 200;

/// Parses a JSON object body into `T`, naming the field at fault. Anything but an object
/// is a 400: serde would also fill a struct from an array.
pub(crate) fn object_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_field(
            "body",
            "the body must be a JSON object",
        ));
    }
    fleet_service::error::parse_json(body)
}

/// A whole number in a JSON body, also when written with a zero fraction (`60.0`): JSON
/// Schema's `integer` (and so the OpenAPI document) allows that form. `null` is absent.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation)] // whole and within ±2^53 checked first
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters
/// ([`IDEMPOTENCY_KEY_PATTERN`]), else 400.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v.as_bytes();
    if v.is_empty() || v.len() > 200 || !v.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(ApiError::invalid_field(
            "Idempotency-Key",
            "must be 1 to 200 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// [`idempotency_key`]'s rule as a pattern, for the OpenAPI document.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,200}$";
