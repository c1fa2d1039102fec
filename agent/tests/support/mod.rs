//! A stub gateway on 127.0.0.1:0 (axum) recording what agents send, and helpers shared by
//! the integration tests.
#![allow(dead_code, unreachable_pub)] // each test binary uses a different part

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use fleet_schemas::api::{
    AgentMessage, CommandList, CommandProgressIn, CommandResultIn, CommandSpec, ConfigUpdate,
    ErrorBody, ErrorDetail, EventBatch, EventIn, HeartbeatIn, IngestAccepted, InventoryIn,
    MetricBatch, RegisterRequest, RegisterResponse, RemoteConfig, ServerMessage,
};
use tokio::sync::{broadcast, watch};

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
    /// `Some`: the HTTP heartbeat answer carries this remote configuration (a gateway
    /// that knows remote configuration); `None`: an empty 202 (an older gateway).
    heartbeat_config: Mutex<Option<ConfigUpdate>>,
    registrations: Mutex<Vec<RegisterRequest>>,
    /// Metrics requests answered 503 so far (for `UnavailableFirst`).
    unavailable_sent: Mutex<usize>,
    /// `Some(status)`: WebSocket upgrades are refused with it.
    ws_refuse: Mutex<Option<u16>>,
    /// Upgrades accepted, with the agent-id header they carried.
    ws_upgrades: Mutex<Vec<Option<String>>>,
    /// Sockets being served now.
    ws_open: Mutex<usize>,
    /// Every frame received on any socket, in arrival order.
    ws_frames: Mutex<Vec<AgentMessage>>,
    /// Bumped to make every open socket drop (no close frame).
    ws_drop: watch::Sender<u64>,
    /// Frames to push to every open socket.
    ws_push: broadcast::Sender<String>,
    /// `POST .../events`, `.../inventory`, `.../commands/{id}/progress|result` bodies.
    http_events: Mutex<Vec<EventIn>>,
    http_inventory: Mutex<Vec<InventoryIn>>,
    http_progress: Mutex<Vec<CommandProgressIn>>,
    http_results: Mutex<Vec<CommandResultIn>>,
    /// What `GET .../commands` answers (every time), and how often it was asked.
    pending_commands: Mutex<Vec<CommandSpec>>,
    command_polls: Mutex<usize>,
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
                    config: None,
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
        _ => match lock(&gw.heartbeat_config).clone() {
            Some(config) => (
                StatusCode::ACCEPTED,
                Json(IngestAccepted {
                    accepted: 1,
                    rejected: vec![],
                    config: Some(config),
                }),
            )
                .into_response(),
            None => StatusCode::ACCEPTED.into_response(),
        },
    }
}

async fn events(State(gw): State<Arc<Inner>>, Json(batch): Json<EventBatch>) -> Response {
    let n = batch.events.len();
    lock(&gw.http_events).extend(batch.events);
    (
        StatusCode::ACCEPTED,
        Json(IngestAccepted {
            accepted: n,
            config: None,
            rejected: vec![],
        }),
    )
        .into_response()
}

async fn inventory(State(gw): State<Arc<Inner>>, Json(inv): Json<InventoryIn>) -> Response {
    lock(&gw.http_inventory).push(inv);
    StatusCode::ACCEPTED.into_response()
}

async fn progress(State(gw): State<Arc<Inner>>, Json(p): Json<CommandProgressIn>) -> Response {
    lock(&gw.http_progress).push(p);
    StatusCode::ACCEPTED.into_response()
}

async fn result(State(gw): State<Arc<Inner>>, Json(r): Json<CommandResultIn>) -> Response {
    lock(&gw.http_results).push(r);
    StatusCode::ACCEPTED.into_response()
}

async fn commands(State(gw): State<Arc<Inner>>) -> Response {
    *lock(&gw.command_polls) += 1;
    Json(CommandList {
        commands: lock(&gw.pending_commands).clone(),
    })
    .into_response()
}

async fn ws_upgrade(
    State(gw): State<Arc<Inner>>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(status) = *lock(&gw.ws_refuse) {
        let mut r = error_response(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "unavailable",
            "sockets refused for now",
            None,
        );
        r.headers_mut()
            .insert("retry-after", HeaderValue::from_static("0"));
        return r;
    }
    let agent_id = headers
        .get(fleet_schemas::api::AGENT_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    lock(&gw.ws_upgrades).push(agent_id);
    upgrade.on_upgrade(move |socket| serve_socket(gw, socket))
}

/// Records every frame and acks it; pushes what the test pushes; drops when told.
async fn serve_socket(gw: Arc<Inner>, mut socket: WebSocket) {
    let mut drops = gw.ws_drop.subscribe();
    let mut pushes = gw.ws_push.subscribe();
    *lock(&gw.ws_open) += 1;
    loop {
        tokio::select! {
            _ = drops.changed() => break,
            pushed = pushes.recv() => match pushed {
                Ok(text) => {
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Err(_) => break,
            },
            frame = socket.recv() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let Ok(message) = serde_json::from_str::<AgentMessage>(text.as_str()) else {
                        continue;
                    };
                    let (id, accepted) = match &message {
                        AgentMessage::Metrics { id, reports } => (*id, reports.len()),
                        AgentMessage::Events { id, events } => (*id, events.len()),
                        AgentMessage::Heartbeat { id, .. }
                        | AgentMessage::Inventory { id, .. }
                        | AgentMessage::CommandProgress { id, .. }
                        | AgentMessage::CommandResult { id, .. } => (*id, 1),
                    };
                    lock(&gw.ws_frames).push(message);
                    let ack = ServerMessage::Ack { id, accepted, rejected: vec![] };
                    let text = serde_json::to_string(&ack).unwrap();
                    if socket.send(WsMessage::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(_)) => {}
                None | Some(Err(_)) => break,
            },
        }
    }
    *lock(&gw.ws_open) -= 1;
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
            heartbeat_config: Mutex::default(),
            registrations: Mutex::default(),
            unavailable_sent: Mutex::new(0),
            ws_refuse: Mutex::new(None),
            ws_upgrades: Mutex::default(),
            ws_open: Mutex::new(0),
            ws_frames: Mutex::default(),
            ws_drop: watch::Sender::new(0),
            ws_push: broadcast::channel(64).0,
            http_events: Mutex::default(),
            http_inventory: Mutex::default(),
            http_progress: Mutex::default(),
            http_results: Mutex::default(),
            pending_commands: Mutex::default(),
            command_polls: Mutex::new(0),
        });
        let app = Router::new()
            .route("/api/v1/agents/register", post(register))
            .route("/api/v1/agents/ws", get(ws_upgrade))
            .route("/api/v1/agents/{agent_id}/metrics", post(metrics))
            .route("/api/v1/agents/{agent_id}/heartbeat", post(heartbeat))
            .route("/api/v1/agents/{agent_id}/events", post(events))
            .route("/api/v1/agents/{agent_id}/inventory", post(inventory))
            .route("/api/v1/agents/{agent_id}/commands", get(commands))
            .route(
                "/api/v1/agents/{agent_id}/commands/{command_id}/progress",
                post(progress),
            )
            .route(
                "/api/v1/agents/{agent_id}/commands/{command_id}/result",
                post(result),
            )
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

    /// Refuse WebSocket upgrades with `status` (`None`: accept them).
    pub fn set_ws_refuse(&self, status: Option<u16>) {
        *lock(&self.inner.ws_refuse) = status;
    }

    /// Drops every open socket (as a network failure would: no close frame).
    pub fn drop_sockets(&self) {
        self.inner.ws_drop.send_modify(|n| *n += 1);
    }

    /// Upgrades accepted so far, with their `x-fleet-agent-id`.
    pub fn ws_upgrades(&self) -> Vec<Option<String>> {
        lock(&self.inner.ws_upgrades).clone()
    }

    /// Sockets open now.
    pub fn ws_open(&self) -> usize {
        *lock(&self.inner.ws_open)
    }

    /// Every frame received on sockets, in arrival order.
    pub fn ws_frames(&self) -> Vec<AgentMessage> {
        lock(&self.inner.ws_frames).clone()
    }

    /// Collection times of the reports received on sockets, in arrival order.
    pub fn ws_delivered(&self) -> Vec<DateTime<Utc>> {
        self.ws_frames()
            .iter()
            .flat_map(|f| match f {
                AgentMessage::Metrics { reports, .. } => {
                    reports.iter().map(|r| r.collected_at).collect()
                }
                _ => vec![],
            })
            .collect()
    }

    /// Command results received on sockets.
    pub fn ws_results(&self) -> Vec<CommandResultIn> {
        self.ws_frames()
            .into_iter()
            .filter_map(|f| match f {
                AgentMessage::CommandResult { result, .. } => Some(result),
                _ => None,
            })
            .collect()
    }

    /// Answers HTTP heartbeats with this remote configuration (`None`: an empty 202).
    pub fn set_heartbeat_config(&self, config: Option<ConfigUpdate>) {
        *lock(&self.inner.heartbeat_config) = config;
    }

    /// Pushes `message` to every open socket.
    pub fn push(&self, message: &ServerMessage) {
        let _ = self
            .inner
            .ws_push
            .send(serde_json::to_string(message).unwrap());
    }

    pub fn http_events(&self) -> Vec<EventIn> {
        lock(&self.inner.http_events).clone()
    }

    /// Every event received, over sockets then over HTTP.
    pub fn events(&self) -> Vec<EventIn> {
        let mut all: Vec<EventIn> = self
            .ws_frames()
            .into_iter()
            .flat_map(|f| match f {
                AgentMessage::Events { events, .. } => events,
                _ => vec![],
            })
            .collect();
        all.extend(self.http_events());
        all
    }

    pub fn http_inventory(&self) -> Vec<InventoryIn> {
        lock(&self.inner.http_inventory).clone()
    }

    pub fn http_progress(&self) -> Vec<CommandProgressIn> {
        lock(&self.inner.http_progress).clone()
    }

    pub fn http_results(&self) -> Vec<CommandResultIn> {
        lock(&self.inner.http_results).clone()
    }

    /// What `GET .../commands` answers from now on.
    pub fn set_pending_commands(&self, commands: Vec<CommandSpec>) {
        *lock(&self.inner.pending_commands) = commands;
    }

    pub fn command_polls(&self) -> usize {
        *lock(&self.inner.command_polls)
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

/// Writes an executable shell script at `path`.
pub fn write_script(path: &std::path::Path, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Replaces a file atomically (written aside, renamed into place), so a reader never
/// sees it half-written.
pub fn replace_file(path: &std::path::Path, value: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, value)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
