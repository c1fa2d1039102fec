//! The ingest gateway: a thin axum server between agents and the event log.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/agents/register` | redeem a registration token: agent id + credential |
//! | `POST /api/v1/agents/{agent_id}/metrics` | a batch of reports → `fleet.metrics.v1` |
//! | `POST /api/v1/agents/{agent_id}/heartbeat` | one heartbeat → `fleet.heartbeats.v1` |
//! | `POST /api/v1/agents/{agent_id}/events` | a batch of events → `fleet.events.v1` |
//! | `POST /api/v1/agents/{agent_id}/inventory` | installed software → `fleet.inventory.v1` |
//! | `GET /api/v1/agents/{agent_id}/commands` | pending commands (200 `CommandList`, oldest first), marked dispatched |
//! | `POST /api/v1/agents/{agent_id}/commands/{command_id}/progress` | output chunk → PROGRESS on `fleet.commands.v1` |
//! | `POST /api/v1/agents/{agent_id}/commands/{command_id}/result` | how it ended → COMPLETED on `fleet.commands.v1` |
//! | `GET /api/v1/agents/ws` | the agent WebSocket: the same writes as frames, commands pushed (see [`ws`]) |
//!
//! Agent endpoints need `Authorization: Bearer <credential>` (see [`auth`]), checked from
//! the headers **before the body is read** (or inflated), and are rate limited per agent
//! once authenticated (429 with `Retry-After`); failed authentications and registrations
//! are limited per client address ([`client`]). Standard collectors authenticate with a
//! tenant's ingest key instead ([`ingest_auth::IngestCaller`], the extractor their
//! endpoints take), under the same failure limit (`gate`). Writes answer **202 only after
//! the log acknowledged them**. Metrics reports are bounded in the subjects they name
//! ([`subjects`]).
//!
//! Batch policy: valid items are written and invalid ones are listed in the answer
//! (`rejected`, each with the field path and reason). A batch with no valid item gets 422
//! naming the first offending field; a body that does not parse gets 400 naming the
//! field; a log that cannot take the write gets 503 with `Retry-After` (the agent keeps
//! the batch and retries).
//!
//! Both transports call the same core per write (`ingest_*`: validate, then produce); the
//! WebSocket answers each frame with what the HTTP endpoint would answer. Commands reach
//! agents through the dispatcher in [`commands`] (run [`commands::run_dispatcher`] beside
//! [`watch_deactivations`]), pushed over the socket when the agent has one here
//! ([`hub`]), else polled. Remote configurations reach agents through
//! [`remote_config::run_config_watcher`]: pushed over the socket, and in the answer to a
//! heartbeat whose `config_version` is not the desired one.

pub mod auth;
mod cache;
pub mod cardinality;
pub mod commands;
pub mod config;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod hub;
pub mod ingest_auth;
pub mod metrics;
pub mod register;
pub mod remote_config;
mod standard;
pub mod subjects;
pub mod validate;
pub mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_consumer::backoff::retry_until;
use fleet_consumer::runtime::{ConsumerRuntime, Output, Processor, Settings};
use fleet_consumer::DeadLetters;
use fleet_event_log::{ConsumedRecord, EventLog, LogError, ProduceRecord, StartFrom};
use fleet_registry::Registry;
use fleet_schemas::api::{
    EventBatch, HeartbeatIn, IngestAccepted, InventoryIn, ItemError, MetricBatch,
};
use fleet_schemas::{AgentEvent, AgentLifecycle, AgentLifecycleKind, MetricReport, Record, Wire};
use fleet_service::{ApiError, FieldJson};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::trace::TraceLayer;

pub use auth::{AgentIdentity, AuthMode};
pub use config::GatewayConfig;
pub use fleet_service::client::ClientAddr;
pub use ingest_auth::IngestCaller;

/// Shared state of the gateway's handlers. One `Arc`: axum clones the state for every
/// handler and middleware of every request, and a clone of a dozen `Arc`s (and its drop)
/// was about 1% of the gateway's time under load.
#[derive(Debug, Clone)]
pub struct GatewayState(Arc<Shared>);

impl std::ops::Deref for GatewayState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`GatewayState`] holds.
#[derive(Debug)]
pub struct Shared {
    log: Arc<dyn EventLog>,
    /// How records are written and read (the role's framing).
    wire: Wire,
    registry: Option<Arc<dyn Registry>>,
    auth: Arc<auth::Authenticator>,
    ingest_keys: Arc<ingest_auth::IngestKeys>,
    rate: Arc<auth::AgentRateLimit>,
    failures: Arc<auth::FailureLimit>,
    registrations: Arc<auth::AddressLimit>,
    subjects: Arc<subjects::SubjectTracker>,
    series: Arc<cardinality::SeriesTracker>,
    config: Arc<GatewayConfig>,
    hub: Arc<hub::Hub>,
    commands: Arc<commands::Commands>,
    /// The desired remote configurations ([`remote_config::run_config_watcher`]).
    remote_configs: Arc<remote_config::RemoteConfigs>,
    /// Names this instance in DISPATCHED events.
    instance: Arc<str>,
}

impl GatewayState {
    /// State over an event log written and read with `wire`, without a registry (no
    /// enrollment; needs `auth = "off"`).
    pub fn new(log: Arc<dyn EventLog>, wire: Wire, config: GatewayConfig) -> GatewayState {
        GatewayState::with_registry(log, wire, None, config)
    }

    /// State over an event log written and read with `wire`, and a registry.
    pub fn with_registry(
        log: Arc<dyn EventLog>,
        wire: Wire,
        registry: Option<Arc<dyn Registry>>,
        config: GatewayConfig,
    ) -> GatewayState {
        let auth = auth::Authenticator::new(
            config.auth,
            &config.default_tenant,
            registry.clone(),
            config.auth_cache,
        );
        let ingest_keys = ingest_auth::IngestKeys::new(registry.clone(), config.auth_cache);
        let rate = auth::AgentRateLimit::new(
            "agent",
            config.rate_limit_per_second,
            config.rate_limit_burst,
        );
        let failures =
            auth::FailureLimit::new(config.auth_failures_per_minute, config.auth_failure_burst);
        let registrations = auth::AddressLimit::new(
            "registrations",
            config.register_per_minute,
            config.register_burst,
        );
        let hub = hub::Hub::new(config.ws_send_queue);
        GatewayState(Arc::new(Shared {
            log,
            wire,
            registry,
            auth: Arc::new(auth),
            ingest_keys: Arc::new(ingest_keys),
            rate: Arc::new(rate),
            failures: Arc::new(failures),
            registrations: Arc::new(registrations),
            subjects: Arc::new(subjects::SubjectTracker::new(&config.subjects)),
            series: Arc::new(cardinality::SeriesTracker::new(&config.series_limits)),
            config: Arc::new(config),
            hub: Arc::new(hub),
            commands: commands::new_state(),
            remote_configs: Arc::default(),
            instance: instance_name().into(),
        }))
    }

    /// The agents' live sockets on this instance.
    pub fn hub(&self) -> Arc<hub::Hub> {
        self.hub.clone()
    }

    /// The command dispatcher's state.
    pub fn commands(&self) -> Arc<commands::Commands> {
        self.commands.clone()
    }

    /// The credential checker (to invalidate cached credentials on deactivation).
    pub fn authenticator(&self) -> Arc<auth::Authenticator> {
        self.auth.clone()
    }

    /// Drops idle rate-limit state; call now and then.
    pub fn forget_idle(&self) {
        self.rate.forget_idle();
        self.failures.forget_idle();
        self.registrations.forget_idle();
    }
}

/// The gateway's API routes (without `/healthz`, `/readyz`, `/metrics`).
pub fn app(state: GatewayState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/api/v1/agents/register", post(register::post_register))
        .route("/api/v1/agents/{agent_id}/metrics", post(post_metrics))
        .route("/api/v1/agents/{agent_id}/heartbeat", post(post_heartbeat))
        .route("/api/v1/agents/{agent_id}/events", post(post_events))
        .route(
            "/api/v1/agents/{agent_id}/inventory",
            post(post_inventory).layer(DefaultBodyLimit::max(state.config.max_inventory_bytes)),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands",
            get(commands::get_commands),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands/{command_id}/progress",
            post(commands::post_progress),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands/{command_id}/result",
            post(commands::post_result),
        )
        .route("/api/v1/agents/ws", get(ws::get_ws))
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestDecompressionLayer::new())
        .merge(standard::routes(&state))
        .layer(TraceLayer::new_for_http().make_span_with(fleet_service::endpoints::http_span))
        .with_state(state)
}

/// `gateway@<host>`, for the `actor` of DISPATCHED events.
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    if host.is_empty() {
        "gateway".to_owned()
    } else {
        format!("gateway@{host}")
    }
}

pub(crate) fn respond<T: serde::Serialize>(
    route: &'static str,
    started: Instant,
    result: Result<T, ApiError>,
) -> Response {
    metrics::record_request(route, &result, started.elapsed());
    match result {
        Ok(v) => (StatusCode::ACCEPTED, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Admits a caller of an agent endpoint, from the headers alone: the agent id, the
/// client address's failure budget, the credential, then the agent's rate limit (see
/// [`auth`] for why in that order).
pub(crate) async fn admit(
    state: &GatewayState,
    agent_id: &str,
    client: ClientAddr,
    headers: &HeaderMap,
) -> Result<AgentIdentity, ApiError> {
    validate::agent_id(agent_id)?;
    let who = gate(
        state,
        client,
        "agent",
        || state.auth.authenticate_cached(agent_id, headers),
        state.auth.authenticate(agent_id, headers),
    )
    .await?;
    state
        .rate
        .check(&agent_id.to_owned())
        .inspect_err(|_| metrics::rate_limited())?;
    Ok(who)
}

/// The client address's failure budget around a credential check (agents' and ingest
/// keys'): an address past its budget gets in only on what `cached` (the headers and the
/// cache alone) proves, else 429 without a registry lookup; otherwise `check` decides,
/// and a 401 is charged to the address. `credential` labels the refusals counted.
pub(crate) async fn gate<T>(
    state: &GatewayState,
    client: ClientAddr,
    credential: &'static str,
    cached: impl FnOnce() -> Option<Result<T, ApiError>>,
    check: impl std::future::Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let key = client.key();
    match state.failures.blocked(key) {
        Some(blocked) => match cached() {
            Some(Ok(who)) => Ok(who),
            _ => {
                metrics::auth_failed(credential, StatusCode::TOO_MANY_REQUESTS);
                Err(blocked)
            }
        },
        None => check.await.inspect_err(|e| {
            metrics::auth_failed(credential, e.status());
            if e.status() == StatusCode::UNAUTHORIZED {
                state.failures.charge(key);
            }
        }),
    }
}

/// Admits the caller ([`admit`]), then reads, inflates and parses the body: nothing of
/// the body is read for a caller refused.
pub(crate) async fn admit_then_body<T: serde::de::DeserializeOwned>(
    state: &GatewayState,
    agent_id: &str,
    client: ClientAddr,
    req: Request,
) -> Result<(AgentIdentity, T), ApiError> {
    let who = admit(state, agent_id, client, req.headers()).await?;
    let FieldJson(body) = FieldJson::<T>::from_request(req, state).await?;
    Ok((who, body))
}

#[tracing::instrument(name = "ingest_metrics", skip_all, fields(%agent_id, reports))]
async fn post_metrics(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, batch) = admit_then_body(&state, &agent_id, client, req).await?;
        ingest_metrics(&state, &who, &agent_id, batch).await
    }
    .await;
    respond("metrics", started, result)
}

/// Metrics core (HTTP and WebSocket): validate each report, write the valid ones.
pub(crate) async fn ingest_metrics(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    batch: MetricBatch,
) -> Result<IngestAccepted, ApiError> {
    tracing::Span::current().record("reports", batch.reports.len());
    let now = fleet_schemas::time::now_micros();
    let (valid, rejected) = check_metrics(
        &state.config,
        &state.subjects,
        &who.tenant_id,
        agent_id,
        &batch,
        now,
    )?;
    produce_all(state, &valid).await?;
    metrics::reports_accepted(valid.len());
    if let Some(first) = rejected.first() {
        tracing::warn!(%agent_id, rejected = rejected.len(), first = %first.field, "Reports refused.");
    }
    Ok(IngestAccepted {
        accepted: valid.len(),
        config: None,
        rejected,
    })
}

/// Checks a metrics batch as the endpoint does, without writing it: its length, each
/// report ([`validate::report`]) and the subjects it names ([`subjects`]), counting the
/// refused reports. Returns the records to write and the refused reports; a batch with no
/// valid report is an error (422 listing every refusal, or 400 for the batch's length).
pub(crate) fn check_metrics(
    cfg: &GatewayConfig,
    subjects: &subjects::SubjectTracker,
    tenant_id: &str,
    agent_id: &str,
    batch: &MetricBatch,
    now: i64,
) -> Result<(Vec<MetricReport>, Vec<ItemError>), ApiError> {
    validate::batch_len("reports", batch.reports.len(), cfg.max_reports_per_batch)?;
    let limits = validate::Limits::from_config(cfg);
    let (valid, rejected) = split_valid("reports", &batch.reports, |r| {
        let rec = validate::report(tenant_id, agent_id, r, now, &limits)?;
        subjects.admit(agent_id, &rec, now)?;
        Ok(rec)
    });
    metrics::reports_rejected(rejected.len());
    if valid.is_empty() {
        return Err(ApiError::invalid_batch(rejected));
    }
    Ok((valid, rejected))
}

#[tracing::instrument(name = "ingest_heartbeat", skip_all, fields(%agent_id))]
async fn post_heartbeat(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, body) = admit_then_body::<HeartbeatIn>(&state, &agent_id, client, req).await?;
        ingest_heartbeat(&state, &who, &agent_id, body).await
    }
    .await;
    respond("heartbeat", started, result)
}

/// Heartbeat core (HTTP and WebSocket).
pub(crate) async fn ingest_heartbeat(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    hb: HeartbeatIn,
) -> Result<IngestAccepted, ApiError> {
    let limits = validate::Limits::from_config(&state.config);
    let rec = validate::heartbeat(
        &who.tenant_id,
        agent_id,
        &hb,
        fleet_schemas::time::now_micros(),
        &limits,
    )
    .map_err(|(field, message)| ApiError::invalid_field(field, message))?;
    produce_all(state, std::slice::from_ref(&rec)).await?;
    ::metrics::counter!(metrics::HEARTBEATS_ACCEPTED).increment(1);
    Ok(IngestAccepted {
        accepted: 1,
        config: state
            .remote_configs
            .for_heartbeat(&who.tenant_id, agent_id, rec.config_version),
        rejected: Vec::new(),
    })
}

#[tracing::instrument(name = "ingest_events", skip_all, fields(%agent_id, events))]
async fn post_events(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, body) = admit_then_body::<EventBatch>(&state, &agent_id, client, req).await?;
        ingest_events(&state, &who, &agent_id, body).await
    }
    .await;
    respond("events", started, result)
}

/// Events core (HTTP and WebSocket).
pub(crate) async fn ingest_events(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    batch: EventBatch,
) -> Result<IngestAccepted, ApiError> {
    tracing::Span::current().record("events", batch.events.len());
    let now = fleet_schemas::time::now_micros();
    let (valid, rejected) = check_events(&state.config, &who.tenant_id, agent_id, &batch, now)?;
    produce_all(state, &valid).await?;
    ::metrics::counter!(metrics::EVENTS_ACCEPTED).increment(valid.len() as u64);
    Ok(IngestAccepted {
        accepted: valid.len(),
        config: None,
        rejected,
    })
}

/// Checks an events batch as the endpoint does, without writing it (like
/// [`check_metrics`]).
pub(crate) fn check_events(
    cfg: &GatewayConfig,
    tenant_id: &str,
    agent_id: &str,
    batch: &EventBatch,
    now: i64,
) -> Result<(Vec<AgentEvent>, Vec<ItemError>), ApiError> {
    validate::batch_len("events", batch.events.len(), cfg.max_reports_per_batch)?;
    let limits = validate::Limits::from_config(cfg);
    let (valid, rejected) = split_valid("events", &batch.events, |e| {
        validate::event(tenant_id, agent_id, e, now, &limits)
    });
    if valid.is_empty() {
        return Err(ApiError::invalid_batch(rejected));
    }
    Ok((valid, rejected))
}

#[tracing::instrument(name = "ingest_inventory", skip_all, fields(%agent_id))]
async fn post_inventory(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, body) = admit_then_body::<InventoryIn>(&state, &agent_id, client, req).await?;
        ingest_inventory(&state, &who, &agent_id, body).await
    }
    .await;
    respond("inventory", started, result)
}

/// Inventory core (HTTP and WebSocket): one record, refused whole if any field is bad.
pub(crate) async fn ingest_inventory(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    inv: InventoryIn,
) -> Result<IngestAccepted, ApiError> {
    let limits = validate::Limits::from_config(&state.config);
    let rec = validate::inventory(
        &who.tenant_id,
        agent_id,
        &inv,
        fleet_schemas::time::now_micros(),
        &limits,
    )
    .map_err(|(field, message)| ApiError::invalid_field(field, message))?;
    produce_all(state, std::slice::from_ref(&rec)).await?;
    metrics::inventory_accepted();
    tracing::debug!(%agent_id, packages = rec.packages.len(), digest = %rec.digest, "Inventory written.");
    Ok(IngestAccepted {
        accepted: 1,
        config: None,
        rejected: Vec::new(),
    })
}

/// Validates every item; returns the valid records and the per-item errors.
fn split_valid<I, T>(
    list: &str,
    items: &[I],
    mut check: impl FnMut(&I) -> Result<T, (String, String)>,
) -> (Vec<T>, Vec<ItemError>) {
    let mut valid = Vec::with_capacity(items.len());
    let mut rejected = Vec::new();
    for (index, item) in items.iter().enumerate() {
        match check(item) {
            Ok(v) => valid.push(v),
            Err((field, message)) => rejected.push(ItemError {
                index,
                field: format!("{list}[{index}].{field}"),
                message,
            }),
        }
    }
    (valid, rejected)
}

/// Encodes records and writes them to their topic, keyed by agent id.
pub(crate) async fn produce_all<T: Record>(
    state: &GatewayState,
    records: &[T],
) -> Result<(), ApiError> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let value = state.wire.encode(r).map_err(ApiError::internal)?;
        out.push(ProduceRecord {
            key: Some(r.key().as_bytes().to_vec()),
            value,
            timestamp_ms: Some(r.occurred_at().div_euclid(1000)),
        });
    }
    produce(state, T::TOPIC, out).await
}

/// Writes records and waits for the log's acknowledgement, bounded by the configured
/// timeout; a log that cannot take the write becomes 503 with `Retry-After`.
async fn produce(
    state: &GatewayState,
    topic: &str,
    records: Vec<ProduceRecord>,
) -> Result<(), ApiError> {
    let cfg = &state.config;
    let timeout = cfg.produce_timeout;
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, state.log.produce(topic, records)).await;
    metrics::produce_latency(started.elapsed());
    let (reason, message) = match outcome {
        Ok(Ok(_positions)) => return Ok(()),
        Ok(Err(e @ LogError::Unavailable(_))) => {
            tracing::warn!(error = %e, "Event log unavailable.");
            (
                "unavailable",
                "the event log cannot take writes now; keep the batch and retry",
            )
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "Produce failed.");
            (
                "error",
                "the event log refused the write; keep the batch and retry",
            )
        }
        Err(_) => {
            tracing::warn!(timeout = ?cfg.produce_timeout, "Produce timed out.");
            (
                "timeout",
                "the event log did not acknowledge the write in time; keep the batch and retry",
            )
        }
    };
    metrics::produce_failed(reason);
    Err(ApiError::unavailable(message, cfg.retry_after.as_secs()))
}

/// Follows `fleet.agents.v1` from now on and forgets cached credentials of deactivated
/// agents, so every gateway instance refuses them at once (not only after the cache
/// expires), and closes their sockets on this instance. Each instance reads with its own
/// throw-away group.
pub async fn watch_deactivations(
    state: GatewayState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let settings = Settings::throwaway("gateway", &[AgentLifecycle::TOPIC])
        .start(StartFrom::Latest)
        .batch_size(500)
        .poll_timeout(Duration::from_secs(1));
    // Like the command dispatcher, a log that cannot answer at start is waited for.
    let start = || {
        let (log, wire, settings) = (state.log.clone(), state.wire.clone(), settings.clone());
        async move {
            let group = settings.group_name().to_owned();
            let dead =
                DeadLetters::open(log.clone(), wire, "gateway-deactivations", &group).await?;
            let runtime = ConsumerRuntime::subscribe(log, settings, dead.clone()).await?;
            anyhow::Ok((runtime, dead))
        }
    };
    let started = retry_until("starting the deactivation watcher", &mut shutdown, start).await;
    let Some((runtime, dead)) = started else {
        return Ok(());
    };
    let mut watcher = DeactivationWatcher { state, dead };
    runtime.run(&mut watcher, shutdown).await;
    Ok(())
}

/// The deactivation watcher on the consumer runtime.
struct DeactivationWatcher {
    state: GatewayState,
    dead: DeadLetters,
}

impl Processor for DeactivationWatcher {
    async fn handle(&mut self, records: &[ConsumedRecord]) -> Output {
        for r in records {
            if let Some(ev) = self.dead.decode_or_note::<AgentLifecycle>(r) {
                if ev.kind == AgentLifecycleKind::Deactivated {
                    self.state.auth.invalidate(&ev.agent_id);
                    let closed = self
                        .state
                        .hub
                        .close(&ev.agent_id, hub::CloseReason::Deactivated);
                    tracing::info!(agent_id = %ev.agent_id, socket_closed = closed, "Deactivated agent's credential dropped from the cache.");
                }
            }
        }
        // A throw-away group that never commits: the runtime writes the dead letters per
        // batch all the same.
        Output::new()
    }
}

impl fleet_service::client::TrustedProxies for GatewayState {
    fn trusted_proxies(&self) -> &[fleet_service::client::ProxyNet] {
        &self.config.trusted_proxies
    }
}
