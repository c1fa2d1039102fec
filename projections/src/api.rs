//! The query API: answers from the read model and the time-series store only.
//!
//! Every route needs `Authorization: Bearer <key>` (see [`crate::auth`]) and is scoped to
//! one tenant: operators and viewers see their own tenant only (naming another one is
//! 403, and another tenant's agent, alert or command is 404 as if it did not exist);
//! admins see every tenant unless they name one with `tenant=`.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/me` | who the key belongs to (user, role, tenant) |
//! | `GET /api/v1/overview?tenant=` | fleet counters: agents by status, open alerts by severity, pending commands |
//! | `GET /api/v1/agents?tenant=&location=&status=&tag=&q=&limit=&after=` | agents with their latest metrics, by agent id; `q` searches id, host and device name |
//! | `GET /api/v1/agents/{id}` | one agent, its latest report, series, services and open alerts |
//! | `GET /api/v1/agents/{id}/metrics?metric=&start=&end=&interval=` | history in buckets, from the coarsest rollup that serves the interval |
//! | `GET /api/v1/alerts?tenant=&agent_id=&status=&limit=` | alerts, newest first |
//! | `GET /api/v1/audit?tenant=&actor=&limit=` | the audit log, newest first |
//! | `GET /api/v1/agents/{id}/commands?tenant=&limit=&after=` | an agent's commands, newest first; `after` is the last command id of the previous page |
//! | `GET /api/v1/commands/{command_id}?tenant=` | one command with its audit trail |
//! | `GET /api/v1/agents/{id}/software?tenant=&name=` | the newest software inventory; `name` keeps packages whose name contains it |
//! | `GET /api/v1/tickets?tenant=&status=&limit=` | tickets, newest first |
//!
//! Times are RFC 3339 (`2026-11-23T10:00:00Z`) or a duration before now (`15m`, `24h`);
//! `interval` is a duration (`10s`, `5m`). `metric` may repeat or be comma-separated.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use fleet_service::ApiError;
use fleet_stores::{
    AgentQuery, AgentRow, AgentStatus, AlertQuery, AlertRow, AlertStatus, AuditEntry, AuditQuery,
    FleetOverview, ReadModel, ServiceRow, StoreError,
};
use fleet_timeseries::{Bucket, RangeQuery, Resolution, TimeSeriesStore};
use serde::Serialize;
use tower_http::trace::TraceLayer;

use crate::admin::{store_error, AdminState};
use crate::auth::{require_viewer, Principal};
use crate::metrics;

pub(crate) mod commands_software_tickets;

pub use commands_software_tickets::{CommandList, TicketList};

/// The answer to a time-series store failure (as [`store_error`] for the SQL stores).
fn ts_error(e: fleet_timeseries::Error) -> ApiError {
    match e {
        fleet_timeseries::Error::Unavailable(m) => store_error(StoreError::Unavailable(m)),
        fleet_timeseries::Error::InvalidQuery(m) => store_error(StoreError::InvalidQuery(m)),
        other => store_error(StoreError::Internal(other.to_string())),
    }
}

/// State of the query API.
#[derive(Debug, Clone)]
pub struct ApiState {
    read_model: Arc<dyn ReadModel>,
    timeseries: Arc<dyn TimeSeriesStore>,
    auth: AdminState,
}

impl ApiState {
    /// State over the two stores; callers are authenticated as on the admin routes.
    pub fn new(
        read_model: Arc<dyn ReadModel>,
        timeseries: Arc<dyn TimeSeriesStore>,
        auth: AdminState,
    ) -> ApiState {
        ApiState {
            read_model,
            timeseries,
            auth,
        }
    }

    /// The caller and the tenant the request is limited to (see [`read_scope`]).
    pub(crate) async fn scope(
        &self,
        headers: &HeaderMap,
        pairs: &[(String, String)],
    ) -> Result<(Principal, Option<String>), ApiError> {
        let p = self.auth.principal(headers).await?;
        let requested = one(pairs, "tenant")?;
        let tenant = read_scope(&p, requested)?;
        Ok((p, tenant))
    }
}

/// The tenant a read is limited to: the one `requested` names (if the caller may read
/// it), else the caller's own; `None` (every tenant) only for an admin who named none.
pub fn read_scope(p: &Principal, requested: Option<&str>) -> Result<Option<String>, ApiError> {
    match (requested, p.tenant_id.as_deref()) {
        (Some(t), _) => {
            require_viewer(p, t)?;
            Ok(Some(t.to_owned()))
        }
        (None, Some(own)) => Ok(Some(own.to_owned())),
        (None, None) => {
            crate::auth::require_admin(p)?;
            Ok(None)
        }
    }
}

/// The query API routes (without `/healthz`, `/readyz`, `/metrics`).
pub fn app(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{agent_id}", get(get_agent))
        .route("/api/v1/agents/{agent_id}/metrics", get(agent_metrics))
        .route("/api/v1/alerts", get(list_alerts))
        .route(
            "/api/v1/agents/{agent_id}/commands",
            get(commands_software_tickets::agent_commands),
        )
        .route(
            "/api/v1/commands/{command_id}",
            get(commands_software_tickets::get_command),
        )
        .route(
            "/api/v1/agents/{agent_id}/software",
            get(commands_software_tickets::agent_software),
        )
        .route(
            "/api/v1/tickets",
            get(commands_software_tickets::list_tickets),
        )
        .layer(axum::middleware::map_response(json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(fleet_service::endpoints::http_span))
        .with_state(state)
        .merge(crate::openapi::router())
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

fn respond<T: Serialize>(
    route: &'static str,
    started: Instant,
    result: Result<T, ApiError>,
) -> Response {
    ::metrics::histogram!(metrics::API_SECONDS, "route" => route)
        .record(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    ::metrics::counter!(metrics::API_REQUESTS, "route" => route, "status" => status.as_u16().to_string())
        .increment(1);
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// Query-string pairs (repeated keys allowed).
fn pairs(raw: Option<String>) -> Result<Vec<(String, String)>, ApiError> {
    let raw = raw.unwrap_or_default();
    let mut out = Vec::new();
    for part in raw.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let dec = |s: &str, what: &str| {
            percent_decode(s).ok_or_else(|| {
                ApiError::invalid_field(what.to_owned(), "is not valid percent-encoded UTF-8")
            })
        };
        let key = dec(k, "query")?;
        let value = dec(v, &key)?;
        out.push((key, value));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The value of query parameter `key` (the last one if repeated). An empty value is a 400:
/// every parameter is absent or says something.
fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Result<Option<&'a str>, ApiError> {
    match pairs.iter().rev().find(|(k, _)| k == key) {
        None => Ok(None),
        Some((_, v)) if v.is_empty() => Err(ApiError::invalid_field(key, "must not be empty")),
        Some((_, v)) => Ok(Some(v.as_str())),
    }
}

fn reject_unknown(pairs: &[(String, String)], known: &[&str]) -> Result<(), ApiError> {
    match pairs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        Some((k, _)) => Err(ApiError::invalid_field(
            k.clone(),
            format!("unknown query parameter; known: {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn limit(pairs: &[(String, String)]) -> Result<Option<u32>, ApiError> {
    match one(pairs, "limit")? {
        None => Ok(None),
        Some(v) => match v.parse::<u32>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(Some(n)),
            _ => Err(ApiError::invalid_field(
                "limit",
                "must be a whole number from 1 to 1000",
            )),
        },
    }
}

/// Units of a duration parameter (`15m`, `24h`): suffix, seconds, and most significant
/// digits, so every duration the grammar admits is within the stores' time range
/// (about 146,000 years). The OpenAPI document states the same grammar as a pattern
/// ([`duration_pattern`]).
pub(crate) const DURATION_UNITS: &[(&str, u64, usize)] = &[
    ("s", 1, 12),
    ("m", 60, 10),
    ("h", 3_600, 9),
    ("d", 86_400, 7),
    ("w", 604_800, 6),
    ("y", 31_557_600, 5),
];

/// Parses `<digits><unit>` with one of `units` (leading zeros allowed, at most the unit's
/// significant digits). `None` when it is not that.
pub(crate) fn parse_duration(v: &str, units: &[&str]) -> Option<std::time::Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit())?;
    let (digits, unit) = v.split_at(split);
    let &(_, secs, cap) = DURATION_UNITS
        .iter()
        .find(|(u, _, _)| *u == unit && units.contains(u))?;
    let significant = digits.trim_start_matches('0');
    if digits.is_empty() || significant.len() > cap {
        return None;
    }
    let n: u64 = if significant.is_empty() {
        0
    } else {
        significant.parse().ok()?
    };
    Some(std::time::Duration::from_secs(n.checked_mul(secs)?))
}

/// [`parse_duration`]'s grammar as an anchored pattern; `positive` leaves out zero.
pub(crate) fn duration_pattern(units: &[&str], sign: bool, positive: bool) -> String {
    let alternatives: Vec<String> = DURATION_UNITS
        .iter()
        .filter(|(u, _, _)| units.contains(u))
        .map(|(u, _, cap)| {
            if positive {
                format!("0*[1-9][0-9]{{0,{}}}{u}", cap - 1)
            } else {
                format!("0*[0-9]{{1,{cap}}}{u}")
            }
        })
        .collect();
    format!(
        "^{}(?:{})$",
        if sign { "-?" } else { "" },
        alternatives.join("|")
    )
}

/// Units of `start` and `end` durations and of `interval`.
pub(crate) const TIME_UNITS: &[&str] = &["s", "m", "h", "d", "w", "y"];

/// Parses a time: RFC 3339, `now`, or a duration meaning that long before `now`
/// (`15m`, `-15m`: see [`parse_duration`]). Every step is checked arithmetic: a time
/// outside the time series' range (±[`fleet_timeseries::MAX_ABS_TS_MICROS`], about 146,000
/// years) is a 400 naming `field`.
pub fn parse_time(field: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    let t = if v == "now" {
        now
    } else if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        t.with_timezone(&Utc)
    } else if let Some(d) = parse_duration(v.strip_prefix('-').unwrap_or(v), TIME_UNITS) {
        chrono::Duration::from_std(d)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .ok_or_else(|| too_far(field))?
    } else {
        return Err(ApiError::invalid_field(
            field,
            "must be RFC 3339 (2026-11-23T10:00:00Z), `now`, or a duration before now \
             (digits and one of s m h d w y: 15m, 24h)",
        ));
    };
    in_range(field, t)
}

/// 422 naming `field`: each value is valid, together they are not.
pub(crate) fn invalid_combination(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_combination",
        message,
    )
    .with_field(field)
}

/// `t`, if the time-series store can answer for it.
fn in_range(field: &str, t: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if t.timestamp_micros().unsigned_abs() > fleet_timeseries::MAX_ABS_TS_MICROS.unsigned_abs() {
        return Err(too_far(field));
    }
    Ok(t)
}

fn too_far(field: &str) -> ApiError {
    ApiError::invalid_field(
        field,
        "is out of range: times are within about 146,000 years of 1970",
    )
}

/// Most metrics in one history request.
const MAX_METRICS: usize = 20;

/// Answer of the agent list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// Agents of this page.
    pub agents: Vec<AgentRow>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents",
    tag = "query",
    summary = "Agents with their latest metrics, by agent id",
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("location" = Option<String>, Query, description = "Location id", min_length = 1), ("status" = Option<String>, Query, description = "online, offline or deactivated", pattern = "^(online|offline|deactivated)$"), ("tag" = Option<String>, Query, description = "Carries this tag", min_length = 1), ("q" = Option<String>, Query, description = "Text in the id, host name or device name", min_length = 1, max_length = 200), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "Last agent id of the previous page", min_length = 1)),
    responses((status = 200, description = "Done", body = AgentList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_agents(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(
            &p,
            &["tenant", "location", "status", "tag", "q", "limit", "after"],
        )?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let limit = limit(&p)?;
        let status = match one(&p, "status")? {
            None => None,
            Some(v) => Some(AgentStatus::parse(v).ok_or_else(|| {
                ApiError::invalid_field("status", "must be online, offline or deactivated")
            })?),
        };
        let text = one(&p, "q")?;
        if text.is_some_and(|t| t.chars().count() > 200) {
            return Err(ApiError::invalid_field("q", "at most 200 characters"));
        }
        let query = AgentQuery {
            tenant_id: tenant,
            limit,
            after: one(&p, "after")?.map(str::to_owned),
            location_id: one(&p, "location")?.map(str::to_owned),
            status,
            tag: one(&p, "tag")?.map(str::to_owned),
            text: text.map(str::to_owned),
        };
        let agents = s
            .read_model
            .list_agents(&query)
            .await
            .map_err(store_error)?;
        let page = limit.unwrap_or(100) as usize;
        let next_after = (agents.len() == page)
            .then(|| agents.last().map(|a| a.agent_id.clone()))
            .flatten();
        Ok(AgentList { agents, next_after })
    }
    .await;
    respond("/api/v1/agents", started, result)
}

/// Answer of `GET /api/v1/overview`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The tenant counted (absent: every tenant).
    pub tenant_id: Option<String>,
    /// The counters.
    #[serde(flatten)]
    pub counts: FleetOverview,
}

#[utoipa::path(
    get,
    path = "/api/v1/overview",
    tag = "query",
    summary = "Fleet counters",
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1)),
    responses((status = 200, description = "Done", body = Overview), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let counts = s
            .read_model
            .overview(tenant.as_deref())
            .await
            .map_err(store_error)?;
        Ok(Overview {
            tenant_id: tenant,
            counts,
        })
    }
    .await;
    respond("/api/v1/overview", started, result)
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "query",
    summary = "Who the key belongs to",
    responses((status = 200, description = "Done", body = crate::auth::Principal), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn me(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    let started = Instant::now();
    let result = s.auth.principal(&headers).await;
    respond("/api/v1/me", started, result)
}

/// Answer of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "query",
    summary = "The audit log, newest first",
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("actor" = Option<String>, Query, description = "Only this user", min_length = 1), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Done", body = AuditList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_audit(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "actor", "limit"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let entries = s
            .read_model
            .list_audit(&AuditQuery {
                tenant_id: tenant,
                actor: one(&p, "actor")?.map(str::to_owned),
                limit: limit(&p)?,
            })
            .await
            .map_err(store_error)?;
        Ok(AuditList { entries })
    }
    .await;
    respond("/api/v1/audit", started, result)
}

/// Answer of the agent detail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentDetail {
    /// The agent.
    #[serde(flatten)]
    pub agent: AgentRow,
    /// Series stored for the agent.
    pub series: Vec<String>,
    /// Alerts not yet resolved.
    pub open_alerts: Vec<AlertRow>,
    /// Watched services, from the newest report.
    pub services: Vec<ServiceRow>,
}

pub(crate) async fn find_agent(
    s: &ApiState,
    tenant: Option<&str>,
    agent_id: &str,
) -> Result<AgentRow, ApiError> {
    s.read_model
        .get_agent(tenant, agent_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| crate::auth::not_found("agent", "agent_id"))
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    tag = "query",
    summary = "One agent with its series, services and open alerts",
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1)),
    responses((status = 200, description = "Done", body = AgentDetail), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_agent(
    State(s): State<ApiState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let agent = find_agent(&s, tenant.as_deref(), &agent_id).await?;
        let series = s
            .timeseries
            .series(&agent.tenant_id, &agent.agent_id)
            .await
            .map_err(ts_error)?;
        let mut open_alerts = Vec::new();
        for status in [AlertStatus::Open, AlertStatus::Acknowledged] {
            let q = AlertQuery {
                tenant_id: Some(agent.tenant_id.clone()),
                agent_id: Some(agent.agent_id.clone()),
                status: Some(status),
                limit: Some(1000),
            };
            open_alerts.extend(s.read_model.list_alerts(&q).await.map_err(store_error)?);
        }
        let services = s
            .read_model
            .agent_services(Some(&agent.tenant_id), &agent.agent_id)
            .await
            .map_err(store_error)?;
        Ok(AgentDetail {
            agent,
            series,
            open_alerts,
            services,
        })
    }
    .await;
    respond("/api/v1/agents/{agent_id}", started, result)
}

/// One series of a history answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SeriesHistory {
    /// Series name.
    pub metric: String,
    /// Buckets, oldest first; buckets without samples are omitted.
    pub buckets: Vec<BucketOut>,
}

/// One bucket with its start as RFC 3339.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BucketOut {
    /// Bucket start.
    pub start: DateTime<Utc>,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub avg: f64,
    /// Samples.
    pub count: u64,
    /// Latest value.
    pub last: f64,
}

impl From<Bucket> for BucketOut {
    fn from(b: Bucket) -> Self {
        BucketOut {
            start: fleet_schemas::time::from_micros(b.start_micros),
            min: b.min,
            max: b.max,
            avg: b.avg,
            count: b.count,
            last: b.last,
        }
    }
}

/// Answer of the history query.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct History {
    /// Agent.
    pub agent_id: String,
    /// Range start.
    pub start: DateTime<Utc>,
    /// Range end.
    pub end: DateTime<Utc>,
    /// Bucket width, seconds.
    pub interval_seconds: f64,
    /// Where the buckets come from: `raw`, or the `1m`, `5m` or `1h` rollup (the coarsest
    /// whose width divides the interval).
    pub resolution: Resolution,
    /// One entry per requested metric.
    pub series: Vec<SeriesHistory>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/metrics",
    tag = "query",
    summary = "Metric history in buckets (several metrics at once)",
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("metric" = String, Query, description = "1 to 20 series, comma-separated: a built-in metric or custom.<name>, with :<subject> for a mount point or service (cpu.percent,disk.percent:/var)", pattern = "fleet:metrics"), ("start" = Option<String>, Query, description = "RFC 3339, now, or a duration before now: digits and one of s m h d w y (default 1h before end)", pattern = "fleet:time"), ("end" = Option<String>, Query, description = "RFC 3339, now, or a duration before now: digits and one of s m h d w y (default now; after start, 422 otherwise)", pattern = "fleet:time"), ("interval" = Option<String>, Query, description = "Bucket width, at least 1s: digits and one of s m h d w y (default 1m); at most 10000 buckets in the range (422 otherwise)", pattern = "fleet:interval")),
    responses((status = 200, description = "Done", body = History), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_metrics(
    State(s): State<ApiState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "metric", "start", "end", "interval"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let mut metrics: Vec<String> = Vec::new();
        for (_, v) in p.iter().filter(|(k, _)| k == "metric") {
            for m in v.split(',') {
                let (name, _) = fleet_schemas::samples::split_series(m);
                if !fleet_schemas::samples::is_known_metric(name) {
                    return Err(ApiError::invalid_field(
                        "metric",
                        format!("unknown metric {m:?}: a built-in name or custom.<name>, with :<subject> if it has one"),
                    ));
                }
                metrics.push(m.to_owned());
            }
        }
        if metrics.is_empty() {
            return Err(ApiError::invalid_field(
                "metric",
                "name at least one metric, for example metric=cpu.percent",
            ));
        }
        if metrics.len() > MAX_METRICS {
            return Err(ApiError::invalid_field(
                "metric",
                format!("at most {MAX_METRICS} metrics per request"),
            ));
        }
        let now = Utc::now();
        let end = match one(&p, "end")? {
            Some(v) => parse_time("end", v, now)?,
            None => now,
        };
        let start = match one(&p, "start")? {
            Some(v) => parse_time("start", v, now)?,
            None => end
                .checked_sub_signed(chrono::Duration::hours(1))
                .ok_or_else(|| too_far("start"))
                .and_then(|t| in_range("start", t))?,
        };
        let interval = match one(&p, "interval")? {
            Some(v) => parse_duration(v, TIME_UNITS)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    ApiError::invalid_field(
                        "interval",
                        "must be a duration of at least 1s: digits and one of s m h d w y (10s, 5m, 1h)",
                    )
                })?,
            None => std::time::Duration::from_secs(60),
        };
        let interval_micros = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
        if end <= start {
            return Err(invalid_combination("end", "must be after start"));
        }
        let agent = find_agent(&s, tenant.as_deref(), &agent_id).await?;
        let mut series = Vec::with_capacity(metrics.len());
        for m in metrics {
            let q = RangeQuery {
                tenant_id: agent.tenant_id.clone(),
                agent_id: agent.agent_id.clone(),
                series: m.clone(),
                start_micros: start.timestamp_micros(),
                end_micros: end.timestamp_micros(),
                interval_micros,
            };
            let buckets = s.timeseries.query(&q).await.map_err(|e| match e {
                // The range and the interval, each valid, give too many buckets.
                fleet_timeseries::Error::InvalidQuery(msg) => invalid_combination("interval", msg),
                other => ts_error(other),
            })?;
            series.push(SeriesHistory {
                metric: m,
                buckets: buckets.into_iter().map(BucketOut::from).collect(),
            });
        }
        Ok(History {
            agent_id: agent.agent_id,
            start,
            end,
            interval_seconds: interval.as_secs_f64(),
            resolution: Resolution::for_interval(interval_micros),
            series,
        })
    }
    .await;
    respond("/api/v1/agents/{agent_id}/metrics", started, result)
}

/// Answer of the alert list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Alerts, newest raise first.
    pub alerts: Vec<AlertRow>,
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "query",
    summary = "Alerts, newest first",
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("agent_id" = Option<String>, Query, description = "Only this agent", min_length = 1), ("status" = Option<String>, Query, description = "open, acknowledged or resolved", pattern = "^(open|acknowledged|resolved)$"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Done", body = AlertList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_alerts(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "agent_id", "status", "limit"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let status = match one(&p, "status")? {
            None => None,
            Some(v) => Some(AlertStatus::parse(v).ok_or_else(|| {
                ApiError::invalid_field("status", "must be open, acknowledged or resolved")
            })?),
        };
        let query = AlertQuery {
            tenant_id: tenant,
            agent_id: one(&p, "agent_id")?.map(str::to_owned),
            status,
            limit: limit(&p)?,
        };
        let alerts = s
            .read_model
            .list_alerts(&query)
            .await
            .map_err(store_error)?;
        Ok(AlertList { alerts })
    }
    .await;
    respond("/api/v1/alerts", started, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_time_accepts_rfc3339_now_and_durations() {
        let now = Utc::now();
        assert_eq!(parse_time("start", "now", now).expect("now"), now);
        assert_eq!(
            parse_time("start", "15m", now).expect("dur"),
            now - chrono::Duration::minutes(15)
        );
        assert_eq!(
            parse_time("start", "-1h", now).expect("dur"),
            now - chrono::Duration::hours(1)
        );
        let t = parse_time("start", "2026-11-23T10:00:00Z", now).expect("rfc3339");
        assert_eq!(t.timestamp(), 1_795_428_000);
        let e = parse_time("start", "yesterday", now).expect_err("bad");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn parse_time_refuses_durations_out_of_range_naming_the_field() {
        let now = Utc::now();
        assert!(parse_time("start", "100y", now).is_ok());
        // 300000y overflowed `DateTime - TimeDelta` (a panic); 200000y fits chrono but not
        // the stores' ±2^62 µs; a duration beyond TimeDelta's range fails conversion.
        for v in ["300000y", "200000y", "18446744073709551615s", "-300000y"] {
            let e = parse_time("end", v, now).expect_err(v);
            assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{v}");
            assert!(format!("{e:?}").contains("\"end\""), "{v}: {e:?}");
        }
    }

    #[test]
    fn query_pairs_decode_and_repeat() {
        let p = pairs(Some(
            "metric=cpu.percent&metric=disk.percent%3A%2Fvar&x=a+b".into(),
        ))
        .expect("pairs");
        assert_eq!(p[1].1, "disk.percent:/var");
        assert_eq!(p[2].1, "a b");
        assert!(pairs(Some("a=%ZZ".into())).is_err());
        assert!(reject_unknown(&p, &["metric"]).is_err());
    }
}
