//! Sends metric batches and heartbeats to the gateway and classifies the answer: sent,
//! retry later, credential refused, or rejected for good.
//!
//! The run loop talks to a [`Transport`]; [`HttpTransport`] is the HTTP one,
//! [`WsTransport`](crate::ws::WsTransport) the WebSocket one (falling back to HTTP while
//! the socket is down). Both classify answers with [`classify`], so a WebSocket `error`
//! frame with status 503 is handled exactly like an HTTP 503.

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use fleet_schemas::api::{
    CommandList, CommandProgressIn, CommandResultIn, CommandSpec, ErrorBody, EventBatch,
    HeartbeatIn, IngestAccepted, InventoryIn, MetricBatch,
};
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, RETRY_AFTER};
use reqwest::StatusCode;
use tracing::instrument;

use crate::tls::ClientTls;

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
    /// The gateway refused the credential (401: missing or invalid) or the agent is
    /// deactivated (403). The batch is fine: keep it and try again much later.
    Unauthorized {
        /// HTTP status (401 or 403).
        status: u16,
        /// The error body, when the gateway sent one in the standard format.
        error: Option<ErrorBody>,
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

/// Delivers batches and heartbeats to the gateway.
#[async_trait]
pub trait Transport: Send + Sync + Debug {
    /// Sends `batch` as agent `agent_id`. Never fails: every failure is classified into a
    /// [`SendOutcome`].
    async fn send(&self, agent_id: &str, batch: &MetricBatch) -> SendOutcome;

    /// Sends one heartbeat as agent `agent_id`, classified like [`Transport::send`] (a
    /// `Sent` answer's counts mean nothing here).
    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatIn) -> SendOutcome;

    /// Sends agent events (`POST .../events`). The default answers [`unsupported`], for
    /// transports that carry only reports (test doubles).
    async fn events(&self, agent_id: &str, events: &EventBatch) -> SendOutcome {
        let _ = (agent_id, events);
        unsupported("events")
    }

    /// Sends the software inventory (`POST .../inventory`).
    async fn inventory(&self, agent_id: &str, inventory: &InventoryIn) -> SendOutcome {
        let _ = (agent_id, inventory);
        unsupported("inventory")
    }

    /// Sends a chunk of a running command's output (`POST .../commands/{id}/progress`).
    async fn command_progress(&self, agent_id: &str, progress: &CommandProgressIn) -> SendOutcome {
        let _ = (agent_id, progress);
        unsupported("command progress")
    }

    /// Sends how a command ended (`POST .../commands/{id}/result`).
    async fn command_result(&self, agent_id: &str, result: &CommandResultIn) -> SendOutcome {
        let _ = (agent_id, result);
        unsupported("command results")
    }

    /// Fetches the commands waiting for this agent (`GET .../commands`); the failure is
    /// classified like a send. The default has none.
    async fn pending_commands(&self, agent_id: &str) -> Result<Vec<CommandSpec>, SendOutcome> {
        let _ = agent_id;
        Ok(Vec::new())
    }
}

/// What a transport that cannot carry `what` answers: rejected (501), so callers drop it.
pub fn unsupported(what: &str) -> SendOutcome {
    SendOutcome::Rejected {
        status: 501,
        error: None,
        body: format!("this transport does not carry {what}"),
    }
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
    /// The credential cannot be sent in an HTTP header.
    #[error("the agent credential contains characters not allowed in an HTTP header; re-enroll the agent")]
    InvalidCredential,
    /// The trusted certificates could not be set up (`ca-file`).
    #[error("TLS setup: {message}")]
    Tls {
        /// What is wrong.
        message: String,
    },
}

/// HTTP transport: `POST {server}/api/v1/agents/{agent_id}/metrics` with a JSON
/// [`MetricBatch`], `POST .../heartbeat` with a [`HeartbeatIn`]; every request carries
/// `Authorization: Bearer <credential>` once [`HttpTransport::with_credential`] set one.
#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    base: reqwest::Url,
    authorization: Option<HeaderValue>,
}

impl Debug for HttpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &self.base.as_str())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl HttpTransport {
    /// A transport to the gateway at `server_url`, each request bounded by `timeout`,
    /// checking an `https://` gateway's certificate with `tls`.
    pub fn new(
        server_url: &str,
        timeout: Duration,
        tls: &ClientTls,
    ) -> Result<Self, TransportError> {
        Ok(Self {
            client: http_client(timeout, tls)?,
            base: base_url(server_url)?,
            authorization: None,
        })
    }

    /// The same transport sending `Authorization: Bearer <credential>` on every request
    /// (`None`: no header, as an agent that is not enrolled).
    pub fn with_credential(mut self, credential: Option<&str>) -> Result<Self, TransportError> {
        self.authorization = match credential {
            None => None,
            Some(c) => {
                let mut value = HeaderValue::try_from(format!("Bearer {c}"))
                    .map_err(|_| TransportError::InvalidCredential)?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(self)
    }

    /// The metrics URL for `agent_id`.
    pub fn metrics_url(&self, agent_id: &str) -> Result<reqwest::Url, TransportError> {
        api_url(&self.base, &["agents", agent_id, "metrics"])
    }

    /// The heartbeat URL for `agent_id`.
    pub fn heartbeat_url(&self, agent_id: &str) -> Result<reqwest::Url, TransportError> {
        api_url(&self.base, &["agents", agent_id, "heartbeat"])
    }

    /// `{base}api/v1/agents/{agent_id}/{rest...}`.
    pub fn agent_url(&self, agent_id: &str, rest: &[&str]) -> Result<reqwest::Url, TransportError> {
        let mut segments = vec!["agents", agent_id];
        segments.extend_from_slice(rest);
        api_url(&self.base, &segments)
    }

    /// The gateway's base URL (with a trailing `/`).
    pub fn base(&self) -> &reqwest::Url {
        &self.base
    }

    /// POSTs `body` as JSON to `url` and classifies the answer.
    async fn post<T: serde::Serialize + Sync>(
        &self,
        url: Result<reqwest::Url, TransportError>,
        body: &T,
        batch_len: usize,
    ) -> SendOutcome {
        let url = match url {
            Ok(url) => url,
            Err(e) => {
                return SendOutcome::Rejected {
                    status: 0,
                    error: None,
                    body: e.to_string(),
                }
            }
        };
        let mut request = self.client.post(url).json(body);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = match request.send().await {
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
                // The gateway took the request; only its answer was lost.
                tracing::warn!(error = %error_chain(&e), "Gateway answer unreadable; counted as sent.");
                String::new()
            }
            Err(e) => {
                return SendOutcome::RetryLater {
                    retry_after,
                    reason: format!("status {status}, body unreadable: {}", error_chain(&e)),
                }
            }
        };
        classify(status, retry_after, &body, batch_len)
    }
}

/// An HTTP client for the gateway: bounded by `timeout`, trusting what `tls` trusts, no
/// redirects (a redirected POST would turn into a GET and lose its body).
pub(crate) fn http_client(
    timeout: Duration,
    tls: &ClientTls,
) -> Result<reqwest::Client, TransportError> {
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(tls.rustls_owned())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("fleet-agent/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// Parses a gateway URL into a base that keeps any path prefix (a gateway behind a reverse
/// proxy at `/fleet/`).
pub(crate) fn base_url(server_url: &str) -> Result<reqwest::Url, TransportError> {
    let mut base = reqwest::Url::parse(server_url).map_err(|e| TransportError::InvalidUrl {
        url: server_url.to_owned(),
        message: e.to_string(),
    })?;
    if base.cannot_be_a_base() || !matches!(base.scheme(), "http" | "https") {
        return Err(TransportError::InvalidUrl {
            url: server_url.to_owned(),
            message: "not an http:// or https:// base URL".to_owned(),
        });
    }
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

/// `{base}api/v1/{segments...}`, each segment percent-encoded.
pub(crate) fn api_url(
    base: &reqwest::Url,
    segments: &[&str],
) -> Result<reqwest::Url, TransportError> {
    let mut url = base.clone();
    url.path_segments_mut()
        .map_err(|()| TransportError::InvalidUrl {
            url: base.to_string(),
            message: "not a base URL".to_owned(),
        })?
        .pop_if_empty()
        .extend(["api", "v1"])
        .extend(segments);
    Ok(url)
}

#[async_trait]
impl Transport for HttpTransport {
    #[instrument(skip(self, batch), fields(reports = batch.reports.len()))]
    async fn send(&self, agent_id: &str, batch: &MetricBatch) -> SendOutcome {
        self.post(self.metrics_url(agent_id), batch, batch.reports.len())
            .await
    }

    #[instrument(skip(self, heartbeat), fields(sequence = heartbeat.sequence))]
    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatIn) -> SendOutcome {
        self.post(self.heartbeat_url(agent_id), heartbeat, 1).await
    }

    #[instrument(skip(self, events), fields(events = events.events.len()))]
    async fn events(&self, agent_id: &str, events: &EventBatch) -> SendOutcome {
        self.post(
            self.agent_url(agent_id, &["events"]),
            events,
            events.events.len(),
        )
        .await
    }

    #[instrument(skip(self, inventory), fields(packages = inventory.packages.len()))]
    async fn inventory(&self, agent_id: &str, inventory: &InventoryIn) -> SendOutcome {
        self.post(self.agent_url(agent_id, &["inventory"]), inventory, 1)
            .await
    }

    #[instrument(skip(self, progress), fields(command_id = %progress.command_id))]
    async fn command_progress(&self, agent_id: &str, progress: &CommandProgressIn) -> SendOutcome {
        let url = self.agent_url(agent_id, &["commands", &progress.command_id, "progress"]);
        self.post(url, progress, 1).await
    }

    #[instrument(skip(self, result), fields(command_id = %result.command_id))]
    async fn command_result(&self, agent_id: &str, result: &CommandResultIn) -> SendOutcome {
        let url = self.agent_url(agent_id, &["commands", &result.command_id, "result"]);
        self.post(url, result, 1).await
    }

    #[instrument(skip(self))]
    async fn pending_commands(&self, agent_id: &str) -> Result<Vec<CommandSpec>, SendOutcome> {
        let url = self
            .agent_url(agent_id, &["commands"])
            .map_err(|e| SendOutcome::Rejected {
                status: 0,
                error: None,
                body: e.to_string(),
            })?;
        let mut request = self.client.get(url);
        if let Some(auth) = &self.authorization {
            request = request.header(AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|e| SendOutcome::RetryLater {
            retry_after: None,
            reason: error_chain(&e),
        })?;
        let status = response.status();
        let retry_after = parse_retry_after(response.headers(), chrono::Utc::now());
        let body = response.text().await.map_err(|e| SendOutcome::RetryLater {
            retry_after,
            reason: format!("status {status}, body unreadable: {}", error_chain(&e)),
        })?;
        if status.is_success() {
            return serde_json::from_str::<CommandList>(&body)
                .map(|list| list.commands)
                .map_err(|e| SendOutcome::RetryLater {
                    retry_after: None,
                    reason: format!("not a command list ({e}): {}", truncate(&body, 200)),
                });
        }
        Err(classify(status, retry_after, &body, 0))
    }
}

/// Maps a gateway answer to an outcome. Pure, so every case is unit-tested.
///
/// * 2xx: sent (an unparsable body counts the whole batch as accepted);
/// * 503, 429: retry after `Retry-After` (default [`DEFAULT_RETRY_AFTER`]);
/// * 408 and other 5xx: retry with the caller's backoff;
/// * 401, 403: unauthorized (bad credential, deactivated agent): keep the batch;
/// * 404, 405: retry with backoff: the URL points at something that is not the gateway
///   (a wrong `server-url` or proxy), which says nothing about the batch;
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
                config: None,
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
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return SendOutcome::Unauthorized {
            status: status.as_u16(),
            error: serde_json::from_str::<ErrorBody>(body).ok(),
        };
    }
    if status == StatusCode::NOT_FOUND || status == StatusCode::METHOD_NOT_ALLOWED {
        return SendOutcome::RetryLater {
            retry_after,
            reason: format!("endpoint not found, check server-url ({})", reason()),
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

pub(crate) fn truncate(s: &str, max: usize) -> &str {
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
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// What a 401 or 403 ([`SendOutcome::Unauthorized`]) means for the operator.
pub(crate) fn auth_problem(status: u16) -> &'static str {
    if status == 403 {
        "the gateway says this agent is deactivated (403)"
    } else {
        "the gateway refused the agent's credential (401: missing or invalid)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn tls() -> ClientTls {
        ClientTls::system_roots().unwrap()
    }

    #[test]
    fn metrics_url_keeps_prefix_and_escapes_id() {
        let t = HttpTransport::new("http://gw:8080", Duration::from_secs(1), &tls()).unwrap();
        assert_eq!(
            t.metrics_url("a-1").unwrap().as_str(),
            "http://gw:8080/api/v1/agents/a-1/metrics"
        );
        let t = HttpTransport::new("https://proxy/fleet", Duration::from_secs(1), &tls()).unwrap();
        assert_eq!(
            t.metrics_url("a b").unwrap().as_str(),
            "https://proxy/fleet/api/v1/agents/a%20b/metrics"
        );
        assert_eq!(
            t.heartbeat_url("a-1").unwrap().as_str(),
            "https://proxy/fleet/api/v1/agents/a-1/heartbeat"
        );
        assert_eq!(
            t.agent_url("a-1", &["commands", "c 1", "result"])
                .unwrap()
                .as_str(),
            "https://proxy/fleet/api/v1/agents/a-1/commands/c%201/result"
        );
        assert!(HttpTransport::new("not a url", Duration::from_secs(1), &tls()).is_err());
        assert!(HttpTransport::new("ftp://x/", Duration::from_secs(1), &tls()).is_err());
    }

    #[test]
    fn credential_is_redacted_and_must_be_a_header_value() {
        let t = HttpTransport::new("http://gw:8080", Duration::from_secs(1), &tls())
            .unwrap()
            .with_credential(Some("s3cret"))
            .unwrap();
        let debug = format!("{t:?}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert!(matches!(
            HttpTransport::new("http://gw:8080", Duration::from_secs(1), &tls())
                .unwrap()
                .with_credential(Some("bad\nvalue")),
            Err(TransportError::InvalidCredential)
        ));
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
        let body = r#"{"error":{"code":"deactivated","message":"agent deactivated"}}"#;
        match classify(StatusCode::FORBIDDEN, None, body, 1) {
            SendOutcome::Unauthorized {
                status: 403,
                error: Some(e),
            } => assert_eq!(e.error.message, "agent deactivated"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            classify(StatusCode::UNAUTHORIZED, None, "", 1),
            SendOutcome::Unauthorized {
                status: 401,
                error: None
            }
        ));
        assert!(matches!(
            classify(StatusCode::NOT_FOUND, None, "", 1),
            SendOutcome::RetryLater { .. }
        ));
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
