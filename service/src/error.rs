//! The HTTP error format of every Fleetstream endpoint:
//! `{"error": {"code": "...", "message": "...", "field": "..."}}`, and [`FieldJson`], a
//! JSON extractor whose rejections name the offending field in that format.

use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use fleet_schemas::api::{ErrorBody, ErrorDetail, ItemError};
use serde::de::DeserializeOwned;

/// An error answered to an HTTP client. Internal details are logged, not returned.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
    items: Vec<ItemError>,
    retry_after_secs: Option<u64>,
}

impl ApiError {
    /// A 4xx/5xx with a code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            items: Vec::new(),
            retry_after_secs: None,
        }
    }

    /// 400 `invalid_field` naming `field`.
    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", message).with_field(field)
    }

    /// 422 `invalid_batch`: every item of a batch was refused.
    pub fn invalid_batch(items: Vec<ItemError>) -> ApiError {
        let first = items.first().map(|i| i.field.clone());
        let message = match items.first() {
            Some(i) => format!(
                "no valid item in the batch; first error: {}: {}",
                i.field, i.message
            ),
            None => "the batch is empty".to_owned(),
        };
        let mut e = ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_batch", message);
        e.field = first;
        e.items = items;
        e
    }

    /// 404 `not_found`.
    pub fn not_found(what: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    /// 503 `unavailable` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 429 `rate_limited` with `Retry-After`.
    pub fn too_many_requests(message: impl Into<String>, retry_after_secs: u64) -> ApiError {
        let mut e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after_secs = Some(retry_after_secs);
        e
    }

    /// 500 `internal`; the detail is logged, the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "Internal error.");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl ApiError {
    /// The status, the body's `error` object and the `Retry-After` seconds: what the
    /// HTTP response carries, for transports that frame errors themselves (WebSocket).
    pub fn into_parts(self) -> (StatusCode, ErrorDetail, Option<u64>) {
        let detail = ErrorDetail {
            code: self.code.to_owned(),
            message: self.message,
            field: self.field,
            items: self.items,
        };
        (self.status, detail, self.retry_after_secs)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, retry_after_secs) = self.into_parts();
        let mut resp = (status, axum::Json(ErrorBody { error })).into_response();
        if let Some(secs) = retry_after_secs {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

/// JSON body extractor: like `axum::Json`, but a body that does not fit the type is
/// refused with 400 naming the field path (`reports[2].cpu_percent`), a body over the
/// limit with 413, and a wrong content type with 415, all in the error format above.
#[derive(Debug, Clone, Copy, Default)]
pub struct FieldJson<T>(pub T);

impl<T, S> FromRequest<S> for FieldJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json") || ct.contains("+json"));
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            if status == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    status,
                    "body_too_large",
                    "request body exceeds the size limit",
                )
            } else {
                ApiError::new(status, "bad_body", rejection.body_text())
            }
        })?;
        // Every Fleetstream body is an object; serde would also take a struct from a
        // JSON array, and then blame a confusing `[0]`.
        if bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b != b'{')
        {
            return Err(ApiError::invalid_field(
                "body",
                "the body must be a JSON object",
            ));
        }
        parse_json(&bytes).map(FieldJson)
    }
}

/// The field an error at `path` names: `None` for the whole document. The path of an
/// unknown field ends with the field's name; when that name is empty, the field named is
/// what holds it (a bare `""` or trailing dot would name nothing).
pub fn field_of(path: &serde_path_to_error::Path) -> Option<String> {
    let text = path.to_string();
    let empty_last = matches!(
        path.iter().next_back(),
        Some(serde_path_to_error::Segment::Map { key }) if key.is_empty()
    );
    let text = match (empty_last, text.strip_suffix('.')) {
        (true, Some(holder)) => holder.to_owned(),
        _ => text,
    };
    (!text.is_empty() && text != ".").then_some(text)
}

/// Deserializes one JSON value (bytes after it other than whitespace are an error). The
/// first pass does not track where it is: valid bodies, nearly all of them, pay nothing for
/// error paths (tracking them cost the gateway about 5% of its time). Only when that pass
/// fails is the body read again with the path tracked, to name the offending field
/// (`None`: the whole document).
pub fn deserialize_json<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, (Option<String>, serde_json::Error)> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    if let Ok(value) = T::deserialize(&mut *de).and_then(|v| de.end().map(|()| v)) {
        return Ok(value);
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de)
        .map_err(|e| (field_of(e.path()), e.into_inner()))?;
    de.end().map_err(|e| (None, e))?;
    Ok(value)
}

/// Parses JSON, naming the offending field on error. The body is one JSON value: bytes
/// after it other than whitespace are refused (field `body`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    deserialize_json(bytes)
        .map_err(|(field, e)| json_error(field.unwrap_or_else(|| "body".to_owned()), e))
}

fn json_error(field: String, inner: serde_json::Error) -> ApiError {
    let message = match inner.classify() {
        serde_json::error::Category::Syntax | serde_json::error::Category::Eof => {
            format!("malformed JSON: {inner}")
        }
        _ => inner.to_string(),
    };
    ApiError::invalid_field(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        items: Vec<Inner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        value: f64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        #[serde(default)]
        items: Vec<StrictInner>,
    }
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct StrictInner {
        value: f64,
    }

    #[test]
    fn an_unknown_field_named_empty_names_what_holds_it() {
        // Found by the fuzz targets (fuzz/fuzz_targets/body_*.rs): the path of an unknown
        // field ends with its name, so a key "" gave the field "" (or a trailing dot).
        let field = |body: &[u8]| parse_json::<Strict>(body).expect_err("refused").field;
        assert_eq!(field(br#"{"": 1}"#).as_deref(), Some("body"));
        assert_eq!(
            field(br#"{"items": [{"": 1}]}"#).as_deref(),
            Some("items[0]")
        );
        assert_eq!(field(br#"{"x": 1}"#).as_deref(), Some("x"));
        assert_eq!(
            field(br#"{"items": [{"a.": 1}]}"#).as_deref(),
            Some("items[0].a.")
        );
    }

    #[test]
    fn parse_json_names_the_field() {
        let e = parse_json::<Outer>(br#"{"items":[{"value":1},{"value":"x"}]}"#).expect_err("bad");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(e.field.as_deref(), Some("items[1].value"));
        let e = parse_json::<Outer>(br#"{"items":[{}]}"#).expect_err("missing");
        assert_eq!(e.field.as_deref(), Some("items[0]"));
        assert!(e.message.contains("value"), "{}", e.message);
        let e = parse_json::<Outer>(b"{not json").expect_err("syntax");
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
    }

    #[test]
    fn bytes_after_the_json_value_are_refused() {
        // Found by the fuzz targets (fuzz/fuzz_targets/body_*.rs): a body with bytes after
        // its JSON value (`{...}\xff\xff`, a second object) was accepted.
        for body in [
            &b"{\"items\":[]}\xff\xff"[..],
            br#"{"items":[]}{"items":[]}"#,
            br#"{"items":[]} x"#,
        ] {
            let e = parse_json::<Outer>(body).expect_err("trailing bytes");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            assert_eq!(e.field.as_deref(), Some("body"));
            assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        }
        // Whitespace after the value is JSON.
        parse_json::<Outer>(b"{\"items\":[]} \n\t").expect("trailing whitespace");
    }
}
