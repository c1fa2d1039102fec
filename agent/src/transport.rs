//! Sends metric batches to the gateway and classifies the answer: sent, retry later, or
//! rejected for good.
//!
//! The run loop talks to a [`Transport`]; [`HttpTransport`] is the HTTP one. A WebSocket
//! transport can implement the same trait later.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use fleet_schemas::api::{ErrorBody, IngestAccepted, MetricBatch};
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use tracing::instrument;

/// Delay used for a 503 or 429 that carries no usable `Retry-After`.
pub const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(5);

/// Longest `Retry-After` the agent accepts; longer values are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// What became of one batch.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SendOutcome {
    /// The gateway took the batch (2xx). Items it refused individually are listed in the
    /// answer; they are not retried.
    Sent(IngestAccepted),
    /// The batch could not be delivered now; keep it and send it again later.
    RetryLater {
        /// How long the gateway asked to wait (`Retry-After`), if it said; `None` means
        /// the caller picks its own backoff.
        retry_after: Option<Duration>,
        /// Why, for the log.
        reason: String,
    },
    /// The gateway refused the whole batch (4xx): sending it again cannot succeed.
    Rejected {
        /// HTTP status.
        status: u16,
        /// The error body, when the gateway sent one in the standard format.
        error: Option<ErrorBody>,
        /// The raw body otherwise (truncated).
        body: String,
    },
}

/// Delivers batches to the gateway.
#[async_trait]
pub trait Transport: Send + Sync + Debug {
    /// Sends `batch` as agent `agent_id`. Never fails: every failure is classified into a
    /// [`SendOutcome`].
    async fn send(&self, agent_id: &str, batch: &MetricBatch) -> SendOutcome;
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The server URL cannot be used.
    #[error("invalid gateway URL {url:?}: {message}")]
    InvalidUrl {
        /// The URL given.
        url: String,
        /// What is wrong.
        message: String,
    },
    /// The HTTP client could not be built (TLS setup).
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
}

/// HTTP transport: `POST {server}/api/v1/agents/{agent_id}/metrics` with a JSON
/// [`MetricBatch`].
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: reqwest::Url,
}

impl HttpTransport {
    /// A transport to the gateway at `server_url`, each request bounded by `timeout`.
    pub fn new(server_url: &str, timeout: Duration) -> Result<Self, TransportError> {
        let mut base = reqwest::Url::parse(server_url).map_err(|e| TransportError::InvalidUrl {
            url: server_url.to_owned(),
            message: e.to_string(),
        })?;
        if base.cannot_be_a_base() {
            return Err(TransportError::InvalidUrl {
                url: server_url.to_owned(),
                message: "not a base URL".to_owned(),
            });
        }
        // Keep any path prefix (a gateway behind a reverse proxy at /fleet/).
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")))
            // A redirected POST would turn into a GET and lose the body.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client, base })
    }

    /// The metrics URL for `agent_id`.
    pub fn metrics_url(&self, agent_id: &str) -> Result<reqwest::Url, TransportError> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| TransportError::InvalidUrl {
                url: self.base.to_string(),
                message: "not a base URL".to_owned(),
            })?
            .pop_if_empty()
            .extend(["api", "v1", "agents", agent_id, "metrics"]);
        Ok(url)
    }
}

#[async_trait]
impl Transport for HttpTransport {
    #[instrument(skip(self, batch), fields(reports = batch.reports.len()))]
    async fn send(&self, agent_id: &str, batch: &MetricBatch) -> SendOutcome {
        let url = match self.metrics_url(agent_id) {
            Ok(url) => url,
            Err(e) => {
                return SendOutcome::Rejected {
                    status: 0,
                    error: None,
                    body: e.to_string(),
                }
            }
        };
        let response = match self.client.post(url).json(batch).send().await {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::RetryLater {
                    retry_after: None,
                    reason: error_chain(&e),
                }
            }
        };
        let status = response.status();
        let retry_after = parse_retry_after(response.headers(), chrono::Utc::now());
        let body = match response.text().await {
            Ok(body) => body,
            Err(e) if status.is_success() => {
                // The gateway took the batch; only its answer was lost.
                tracing::warn!(error = %error_chain(&e), "Gateway answer unreadable; batch counted as sent.");
                String::new()
            }
            Err(e) => {
                return SendOutcome::RetryLater {
                    retry_after,
                    reason: format!("status {status}, body unreadable: {}", error_chain(&e)),
                }
            }
        };
        classify(status, retry_after, &body, batch.reports.len())
    }
}

/// Maps a gateway answer to an outcome. Pure, so every case is unit-tested.
///
/// * 2xx: sent (an unparsable body counts the whole batch as accepted);
/// * 503, 429: retry after `Retry-After` (default [`DEFAULT_RETRY_AFTER`]);
/// * 408 and other 5xx: retry with the caller's backoff;
/// * other 4xx: rejected, the batch is bad;
/// * anything else (1xx, 3xx): retry with backoff, since it points at a proxy or
///   configuration problem rather than at the batch.
pub fn classify(
    status: StatusCode,
    retry_after: Option<Duration>,
    body: &str,
    batch_len: usize,
) -> SendOutcome {
    if status.is_success() {
        let accepted = serde_json::from_str::<IngestAccepted>(body).unwrap_or_else(|_| {
            tracing::debug!(%status, "Gateway answer is not IngestAccepted; assuming all accepted.");
            IngestAccepted {
                accepted: batch_len,
                rejected: Vec::new(),
            }
        });
        return SendOutcome::Sent(accepted);
    }
    let reason = || format!("status {status}: {}", truncate(body, 200));
    if status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS {
        return SendOutcome::RetryLater {
            retry_after: Some(retry_after.unwrap_or(DEFAULT_RETRY_AFTER)),
            reason: reason(),
        };
    }
    if status == StatusCode::REQUEST_TIMEOUT || status.is_server_error() {
        return SendOutcome::RetryLater {
            retry_after,
            reason: reason(),
        };
    }
    if status.is_client_error() {
        return SendOutcome::Rejected {
            status: status.as_u16(),
            error: serde_json::from_str::<ErrorBody>(body).ok(),
            body: truncate(body, 1000).to_owned(),
        };
    }
    SendOutcome::RetryLater {
        retry_after,
        reason: format!("unexpected {}", reason()),
    }
}

/// `Retry-After` as delay-seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(
    headers: &HeaderMap,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&chrono::Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The error and its sources on one line (reqwest hides the useful part in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn metrics_url_keeps_prefix_and_escapes_id() {
        let t = HttpTransport::new("http://gw:8080", Duration::from_secs(1)).unwrap();
        assert_eq!(
            t.metrics_url("a-1").unwrap().as_str(),
            "http://gw:8080/api/v1/agents/a-1/metrics"
        );
        let t = HttpTransport::new("https://proxy/fleet", Duration::from_secs(1)).unwrap();
        assert_eq!(
            t.metrics_url("a b").unwrap().as_str(),
            "https://proxy/fleet/api/v1/agents/a%20b/metrics"
        );
        assert!(HttpTransport::new("not a url", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h, now), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(7)));
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_static("Wed, 01 Jan 2025 00:00:30 GMT"),
        );
        assert_eq!(parse_retry_after(&h, now), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("99999"));
        assert_eq!(parse_retry_after(&h, now), Some(MAX_RETRY_AFTER));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(parse_retry_after(&h, now), None);
    }

    #[test]
    fn classify_statuses() {
        let sent = classify(
            StatusCode::ACCEPTED,
            None,
            r#"{"accepted":2,"rejected":[]}"#,
            2,
        );
        assert!(matches!(
            sent,
            SendOutcome::Sent(IngestAccepted { accepted: 2, .. })
        ));
        let sent = classify(StatusCode::OK, None, "ok", 3);
        assert!(matches!(
            sent,
            SendOutcome::Sent(IngestAccepted { accepted: 3, .. })
        ));

        let retry = classify(StatusCode::SERVICE_UNAVAILABLE, None, "", 1);
        assert!(
            matches!(retry, SendOutcome::RetryLater { retry_after: Some(d), .. } if d == DEFAULT_RETRY_AFTER)
        );
        let retry = classify(
            StatusCode::TOO_MANY_REQUESTS,
            Some(Duration::from_secs(2)),
            "",
            1,
        );
        assert!(
            matches!(retry, SendOutcome::RetryLater { retry_after: Some(d), .. } if d == Duration::from_secs(2))
        );
        let retry = classify(StatusCode::BAD_GATEWAY, None, "", 1);
        assert!(matches!(
            retry,
            SendOutcome::RetryLater {
                retry_after: None,
                ..
            }
        ));
        let retry = classify(StatusCode::MOVED_PERMANENTLY, None, "", 1);
        assert!(matches!(retry, SendOutcome::RetryLater { .. }));

        let body = r#"{"error":{"code":"invalid_field","message":"out of range","field":"reports[0].cpu_percent"}}"#;
        match classify(StatusCode::BAD_REQUEST, None, body, 1) {
            SendOutcome::Rejected {
                status,
                error: Some(e),
                ..
            } => {
                assert_eq!(status, 400);
                assert_eq!(e.error.field.as_deref(), Some("reports[0].cpu_percent"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(StatusCode::UNPROCESSABLE_ENTITY, None, "nope", 1),
            SendOutcome::Rejected {
                status: 422,
                error: None,
                ..
            }
        ));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
