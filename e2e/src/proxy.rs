//! [`GatewayProxy`]: an HTTP proxy between an agent and the gateway that records every
//! metric batch and can hold answers back or play an unavailable gateway.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::fleet::rfc3339_micros;

/// How a [`GatewayProxy`] treats metric batches (every other request is passed through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the gateway and answer with its answer.
    Pass,
    /// Forward to the gateway, and when it accepted the batch (2xx) hold the answer back
    /// until the mode changes: the gateway has the batch, the agent does not know yet.
    HoldAccepted,
    /// Answer 503 with `Retry-After: 1` without forwarding.
    Unavailable,
}

/// One metric batch an agent sent through a [`GatewayProxy`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProxiedBatch {
    /// The reports: (collection time µs, cpu percent).
    pub reports: Vec<(i64, f64)>,
    /// Whether it went on to the gateway.
    pub forwarded: bool,
    /// The status answered (the gateway's, 503 when `Unavailable`, 502 when the gateway
    /// could not be reached); `None` while the gateway has not answered yet.
    pub status: Option<u16>,
    /// Whether the proxy finished answering (false: held, or the agent went away).
    pub answered: bool,
    /// Whether the answer is being held back now ([`ProxyMode::HoldAccepted`]).
    pub held: bool,
}

impl ProxiedBatch {
    /// The gateway took the batch (2xx).
    pub fn accepted(&self) -> bool {
        self.forwarded && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    mode: std::sync::Mutex<ProxyMode>,
    batches: std::sync::Mutex<Vec<ProxiedBatch>>,
}

impl ProxyState {
    fn mode(&self) -> ProxyMode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut ProxiedBatch)) {
        let mut batches = self
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = batches.get_mut(index) {
            f(b);
        }
    }
}

/// Clears `held` when a request handler ends (answered, or dropped because the agent
/// went away).
struct HeldGuard<'a> {
    state: &'a ProxyState,
    index: usize,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.state.update(self.index, |b| b.held = false);
    }
}

/// An HTTP proxy in front of the gateway that agents talk to: it records every metric
/// batch (what was collected, as the agent sent it) and can hold answers back or play
/// an unavailable gateway, to put an agent in a chosen state before it is killed. Runs on
/// the test's runtime; stops on drop.
#[derive(Debug)]
pub struct GatewayProxy {
    url: String,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<GatewayProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            mode: std::sync::Mutex::new(ProxyMode::Pass),
            batches: std::sync::Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(proxy_handler)
            .with_state(std::sync::Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GatewayProxy { url, state, task })
    }

    /// The URL agents should use as `server-url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Switches the mode; a change releases answers held by [`ProxyMode::HoldAccepted`].
    pub fn set_mode(&self, mode: ProxyMode) {
        *self
            .state
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }

    /// Every metric batch so far, in arrival order.
    pub fn batches(&self) -> Vec<ProxiedBatch> {
        self.state
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for GatewayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_metric_batch(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && path.starts_with("/api/v1/agents/")
        && path.ends_with("/metrics")
}

/// The reports of a metric batch body: (collection time µs, cpu percent).
fn batch_reports(body: &[u8]) -> anyhow::Result<Vec<(i64, f64)>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("metric batch is not JSON (compressed?)")?;
    v["reports"]
        .as_array()
        .context("metric batch without `reports`")?
        .iter()
        .map(|r| {
            let t = rfc3339_micros(r["collected_at"].as_str().context("collected_at")?)?;
            Ok((t, r["cpu_percent"].as_f64().context("cpu_percent")?))
        })
        .collect()
}

async fn proxy_handler(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "proxy: unreadable body").into_response();
    };
    let path = parts.uri.path().to_owned();
    let batch = if is_metric_batch(&parts.method, &path) {
        let reports = match batch_reports(&body) {
            Ok(r) => r,
            Err(e) => {
                // The test cannot see what was sent: fail loudly rather than guess.
                return (StatusCode::BAD_REQUEST, format!("proxy: {e:#}")).into_response();
            }
        };
        let mut batches = state
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        batches.push(ProxiedBatch {
            reports,
            forwarded: false,
            status: None,
            answered: false,
            held: false,
        });
        Some(batches.len() - 1)
    } else {
        None
    };
    if let Some(index) = batch {
        if state.mode() == ProxyMode::Unavailable {
            state.update(index, |b| {
                b.status = Some(503);
                b.answered = true;
            });
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(serde_json::json!({"error": {
                    "code": "unavailable", "message": "e2e proxy: gateway unavailable"
                }})),
            )
                .into_response();
        }
        state.update(index, |b| b.forwarded = true);
    }
    let target = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = state
        .client
        .request(parts.method.clone(), target)
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forward = forward.header(name, value);
        }
    }
    let (status, headers, bytes) = match forward.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            match resp.bytes().await {
                Ok(b) => (status, headers, b),
                Err(_) => (
                    StatusCode::BAD_GATEWAY,
                    axum::http::HeaderMap::new(),
                    Default::default(),
                ),
            }
        }
        Err(_) => (
            StatusCode::BAD_GATEWAY,
            axum::http::HeaderMap::new(),
            Default::default(),
        ),
    };
    let _guard = batch.map(|index| {
        state.update(index, |b| b.status = Some(status.as_u16()));
        HeldGuard {
            state: &state,
            index,
        }
    });
    if let Some(index) = batch {
        if status.is_success() && state.mode() == ProxyMode::HoldAccepted {
            state.update(index, |b| b.held = true);
            let deadline = Instant::now() + Duration::from_secs(120);
            while state.mode() == ProxyMode::HoldAccepted && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        state.update(index, |b| {
            b.held = false;
            b.answered = true;
        });
    }
    let mut response = (status, bytes).into_response();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = headers.get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    response
}
