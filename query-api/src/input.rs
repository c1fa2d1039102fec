//! Checks of request bodies and headers shared by the routes.

use axum::http::HeaderMap;
use fleet_service::ApiError;

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

pub(crate) use fleet_schemas::text::whole_number;

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
