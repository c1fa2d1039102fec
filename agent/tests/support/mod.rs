//! A stub gateway on 127.0.0.1:0 (axum) recording what agents send, and helpers shared by
//! the integration tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use fleet_schemas::api::{
    ErrorBody, ErrorDetail, HeartbeatIn, IngestAccepted, MetricBatch, RegisterRequest,
    RegisterResponse, RemoteConfig,
};

/// How the stub answers metrics (and heartbeats).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// 202 with an `IngestAccepted`.
    Accept,
    /// 503 with `Retry-After: 1` for the first N metrics requests, then 202.
    UnavailableFirst(usize),
    /// 503 with `Retry-After: 1`, always.
    Unavailable,
    /// 400 with an error body, always.
    BadRequest,
    /// 401 with an error body.
    Unauthorized,
    /// Never answers (the request hangs until the client gives up).
    Hang,
}

/// How the stub answers registrations.
#[derive(Debug, Clone)]
pub enum RegisterMode {
    /// 201 with this answer.
    Accept(RegisterResponse),
    /// This status with `{"error": {code, message, field}}`.
    Refuse(u16, &'static str, &'static str),
}

/// One metrics request as received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub agent_id: String,
    pub status: u16,
    pub authorization: Option<String>,
    pub batch: MetricBatch,
}

/// One heartbeat as received.
#[derive(Debug, Clone)]
pub struct RecordedHeartbeat {
    pub agent_id: String,
    pub authorization: Option<String>,
    pub heartbeat: HeartbeatIn,
}

#[derive(Debug)]
struct Inner {
    mode: Mutex<Mode>,
    register: Mutex<RegisterMode>,
    seen: Mutex<Vec<Recorded>>,
    heartbeats: Mutex<Vec<RecordedHeartbeat>>,
    registrations: Mutex<Vec<RegisterRequest>>,
    /// Metrics requests answered 503 so far (for `UnavailableFirst`).
    unavailable_sent: Mutex<usize>,
}

/// A running stub gateway; it stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn error_response(status: StatusCode, code: &str, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                field: field.map(Into::into),
                items: vec![],
            },
        }),
    )
        .into_response()
}

fn unavailable() -> Response {
    let mut r = error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "log unavailable",
        None,
    );
    r.headers_mut()
        .insert("retry-after", HeaderValue::from_static("1"));
    r
}

fn authorization(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn metrics(
    State(gw): State<Arc<Inner>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(batch): Json<MetricBatch>,
) -> Response {
    let mode = match *lock(&gw.mode) {
        Mode::UnavailableFirst(k) => {
            let mut sent = lock(&gw.unavailable_sent);
            if *sent < k {
                *sent += 1;
                Mode::Unavailable
            } else {
                Mode::Accept
            }
        }
        mode => mode,
    };
    let record = |status: u16| {
        lock(&gw.seen).push(Recorded {
            agent_id: agent_id.clone(),
            status,
            authorization: authorization(&headers),
            batch: batch.clone(),
        });
    };
    match mode {
        Mode::Hang => {
            record(0);
            std::future::pending::<()>().await;
            unreachable!()
        }
        Mode::Unavailable => {
            record(503);
            unavailable()
        }
        Mode::Accept | Mode::UnavailableFirst(_) => {
            record(202);
            (
                StatusCode::ACCEPTED,
                Json(IngestAccepted {
                    accepted: batch.reports.len(),
                    rejected: vec![],
                }),
            )
                .into_response()
        }
        Mode::BadRequest => {
            record(400);
            error_response(
                StatusCode::BAD_REQUEST,
                "invalid_field",
                "must be within 0..=100",
                Some("reports[0].cpu_percent"),
            )
        }
        Mode::Unauthorized => {
            record(401);
            error_response(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "invalid credential",
                None,
            )
        }
    }
}

async fn heartbeat(
    State(gw): State<Arc<Inner>>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    Json(heartbeat): Json<HeartbeatIn>,
) -> Response {
    lock(&gw.heartbeats).push(RecordedHeartbeat {
        agent_id,
        authorization: authorization(&headers),
        heartbeat,
    });
    match *lock(&gw.mode) {
        Mode::Unauthorized => error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid credential",
            None,
        ),
        Mode::Hang | Mode::Unavailable => unavailable(),
        _ => StatusCode::ACCEPTED.into_response(),
    }
}

async fn register(State(gw): State<Arc<Inner>>, Json(request): Json<RegisterRequest>) -> Response {
    lock(&gw.registrations).push(request);
    match lock(&gw.register).clone() {
        RegisterMode::Accept(answer) => (StatusCode::CREATED, Json(answer)).into_response(),
        RegisterMode::Refuse(status, code, message) => error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            code,
            message,
            Some("token"),
        ),
    }
}

/// The answer the stub gives a registration by default.
pub fn registration(agent_id: &str, credential: &str, interval_secs: f64) -> RegisterResponse {
    RegisterResponse {
        agent_id: agent_id.into(),
        credential: credential.into(),
        tenant_id: "tenant-1".into(),
        location_id: Some("loc-1".into()),
        device_name: None,
        config: RemoteConfig {
            heartbeat_interval_secs: interval_secs,
            metrics_interval_secs: interval_secs,
            websocket_url: "ws://127.0.0.1:1/ws".into(),
        },
    }
}

impl Gateway {
    /// Starts a stub answering metrics per `mode`.
    pub async fn start(mode: Mode) -> anyhow::Result<Self> {
        let inner = Arc::new(Inner {
            mode: Mutex::new(mode),
            register: Mutex::new(RegisterMode::Accept(registration(
                "agent-1", "cred-1", 10.0,
            ))),
            seen: Mutex::default(),
            heartbeats: Mutex::default(),
            registrations: Mutex::default(),
            unavailable_sent: Mutex::new(0),
        });
        let app = Router::new()
            .route("/api/v1/agents/register", post(register))
            .route("/api/v1/agents/{agent_id}/metrics", post(metrics))
            .route("/api/v1/agents/{agent_id}/heartbeat", post(heartbeat))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.inner.mode) = mode;
    }

    pub fn set_register(&self, mode: RegisterMode) {
        *lock(&self.inner.register) = mode;
    }

    pub fn seen(&self) -> Vec<Recorded> {
        lock(&self.inner.seen).clone()
    }

    pub fn heartbeats(&self) -> Vec<RecordedHeartbeat> {
        lock(&self.inner.heartbeats).clone()
    }

    pub fn registrations(&self) -> Vec<RegisterRequest> {
        lock(&self.inner.registrations).clone()
    }

    /// Collection times of the reports in requests answered `status`, in arrival order.
    pub fn delivered(&self, status: u16) -> Vec<DateTime<Utc>> {
        self.seen()
            .iter()
            .filter(|r| r.status == status)
            .flat_map(|r| r.batch.reports.iter().map(|rep| rep.collected_at))
            .collect()
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fleet_agent=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every 20 ms for at most 30 s (a bound, not a timing assertion).
pub async fn wait_until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for {what}"))
}

/// The reports a spool file holds, oldest first (opens it, so no agent may hold it).
pub fn spooled(state_dir: &std::path::Path) -> anyhow::Result<Vec<DateTime<Utc>>> {
    let spool = fleet_agent::Spool::open(
        &state_dir.join(fleet_agent::spool::SPOOL_FILE),
        fleet_agent::config::DEFAULT_SPOOL_MAX_BYTES,
    )?;
    Ok(spool
        .peek(usize::MAX)?
        .map(|b| b.reports.iter().map(|r| r.collected_at).collect())
        .unwrap_or_default())
}

/// Asserts `times` is strictly increasing (so no report appears twice).
pub fn assert_strictly_increasing(what: &str, times: &[DateTime<Utc>]) {
    assert!(
        times.windows(2).all(|w| w[0] < w[1]),
        "{what}: expected each report once, in order: {times:?}"
    );
}
