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

/// An optional body saying why (a deactivation, a rejection, a cancel).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReasonBody {
    /// Why, for the audit trail.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = "fleet:name")]
    pub reason: Option<String>,
}

/// Longest reason, in characters.
pub const MAX_REASON: usize = 1000;

/// The reason of an optional [`ReasonBody`]: nothing (an empty body or `null`), or
/// `{"reason": "..."}` with a name ([`fleet_schemas::text::check_name`]).
pub(crate) fn optional_reason(body: &[u8]) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
        return Ok(None);
    }
    object_body::<ReasonBody>(body)?
        .reason
        .map(|r| {
            fleet_schemas::text::check_name(&r, MAX_REASON)
                .map(str::to_owned)
                .map_err(|m| ApiError::invalid_field("reason", m))
        })
        .transpose()
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
