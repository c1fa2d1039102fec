//! The API's one mapping of store failures to answers, and the JSON error format for
//! axum's own rejections.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_read_model::StoreError;
use fleet_service::ApiError;
use serde::Serialize;

/// A store's error as an answer. An unavailable store's message names its host and
/// database: that goes to the log only (the caller may not even be authenticated yet).
pub fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::not_found(m),
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "Store unavailable.");
            ApiError::unavailable("the store is unavailable; retry", 5)
        }
        StoreError::InvalidQuery(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m),
        other => ApiError::internal(other),
    }
}

/// The answer to a time-series store failure (as [`store_error`] for the SQL stores).
pub fn ts_error(e: fleet_timeseries::Error) -> ApiError {
    match e {
        fleet_timeseries::Error::Unavailable(m) => store_error(StoreError::Unavailable(m)),
        fleet_timeseries::Error::InvalidQuery(m) => store_error(StoreError::InvalidQuery(m)),
        other => store_error(StoreError::Internal(other.to_string())),
    }
}

/// 422 naming `field`: each value is valid, together they are not.
pub fn invalid_combination(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_combination",
        message,
    )
    .with_field(field)
}

/// `status` and `v` as JSON, or the error.
pub(crate) fn reply<T: Serialize>(status: StatusCode, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Answers every error of a router in the API's JSON format. Handlers answer with
/// [`ApiError`] already; this catches axum's own plain-text rejections (a path segment
/// that is not valid percent-encoded UTF-8, a method the route does not have) so every
/// documented error has the documented body. An empty 404 (no route at all) is left as it
/// is.
pub(crate) async fn json_errors(resp: Response) -> Response {
    use axum::http::header;
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/json"));
    if status.as_u16() < 400 || is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    if status == StatusCode::NOT_FOUND && text.is_empty() {
        return (parts, axum::body::Body::empty()).into_response();
    }
    let code = match status {
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        s if s.is_server_error() => "internal",
        _ => "bad_request",
    };
    let message = match String::from_utf8_lossy(&text).trim() {
        "" => status.canonical_reason().unwrap_or("error").to_owned(),
        t => t.to_owned(),
    };
    let mut out = ApiError::new(status, code, message).into_response();
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name.clone(), value.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn an_unavailable_store_is_a_503_without_its_address() {
        let e = store_error(StoreError::Unavailable(
            "find API key on postgres db.internal.example:5432/fleet_prod: connection refused"
                .into(),
        ));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(axum::http::header::RETRY_AFTER));
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        for secret in ["db.internal", "5432", "fleet_prod", "postgres"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
