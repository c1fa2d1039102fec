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
    Bucket, FleetOverview, RangeQuery, ReadModel, Resolution, ServiceRow, StoreError,
    TimeSeriesStore,
};
use serde::Serialize;
use tower_http::trace::TraceLayer;

use crate::admin::AdminState;
use crate::auth::{require_viewer, Principal};
use crate::metrics;

pub(crate) mod commands_software_tickets;

pub use commands_software_tickets::{CommandList, TicketList};

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
        let requested = match one(pairs, "tenant") {
            Some("") => return Err(ApiError::invalid_field("tenant", "must not be empty")),
            other => other,
        };
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
        .layer(TraceLayer::new_for_http().make_span_with(fleet_service::endpoints::http_span))
        .with_state(state)
        .merge(crate::openapi::router())
}

fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::InvalidQuery(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m),
        StoreError::Unavailable(m) => ApiError::unavailable(format!("store unavailable: {m}"), 5),
        other => ApiError::internal(other),
    }
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

fn one<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
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
    match one(pairs, "limit") {
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

/// Parses a time: RFC 3339, or a duration meaning that long before `now`.
pub fn parse_time(field: &str, v: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ApiError> {
    if v == "now" {
        return Ok(now);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = humantime::parse_duration(v.trim_start_matches('-')) {
        let d = chrono::Duration::from_std(d)
            .map_err(|_| ApiError::invalid_field(field, "duration too large"))?;
        return Ok(now - d);
    }
    Err(ApiError::invalid_field(
        field,
        "must be RFC 3339 (2026-11-23T10:00:00Z), `now`, or a duration before now (15m, 24h)",
    ))
}

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
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)"), ("location" = Option<String>, Query, description = "Location id"), ("status" = Option<String>, Query, description = "online, offline or deactivated"), ("tag" = Option<String>, Query, description = "Carries this tag"), ("q" = Option<String>, Query, description = "Text in the id, host name or device name"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)"), ("after" = Option<String>, Query, description = "Last agent id of the previous page")),
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
        let status = match one(&p, "status") {
            None => None,
            Some(v) => Some(AgentStatus::parse(v).ok_or_else(|| {
                ApiError::invalid_field("status", "must be online, offline or deactivated")
            })?),
        };
        let text = one(&p, "q").filter(|t| !t.is_empty());
        if text.is_some_and(|t| t.chars().count() > 200) {
            return Err(ApiError::invalid_field("q", "at most 200 characters"));
        }
        let query = AgentQuery {
            tenant_id: tenant,
            limit,
            after: one(&p, "after").map(str::to_owned),
            location_id: one(&p, "location").map(str::to_owned),
            status,
            tag: one(&p, "tag").map(str::to_owned),
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
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)")),
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
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)"), ("actor" = Option<String>, Query, description = "Only this user"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)")),
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
                actor: one(&p, "actor").map(str::to_owned),
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
        .ok_or_else(|| ApiError::not_found(format!("no agent {agent_id}")).with_field("agent_id"))
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    tag = "query",
    summary = "One agent with its series, services and open alerts",
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)")),
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
            .map_err(store_error)?;
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
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)"), ("metric" = String, Query, description = "Series names, repeated or comma-separated (cpu.percent,mem.percent)"), ("start" = Option<String>, Query, description = "RFC 3339, now, or a duration before now (default 1h before end)"), ("end" = Option<String>, Query, description = "RFC 3339, now, or a duration before now (default now)"), ("interval" = Option<String>, Query, description = "Bucket width, a duration (default 1m)")),
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
        let metrics: Vec<String> = p
            .iter()
            .filter(|(k, _)| k == "metric")
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_owned)
            .collect();
        if metrics.is_empty() {
            return Err(ApiError::invalid_field(
                "metric",
                "name at least one metric, for example metric=cpu.percent",
            ));
        }
        if metrics.len() > 20 {
            return Err(ApiError::invalid_field(
                "metric",
                "at most 20 metrics per request",
            ));
        }
        for m in &metrics {
            let (name, _) = fleet_schemas::samples::split_series(m);
            if !fleet_schemas::samples::is_known_metric(name) {
                return Err(ApiError::invalid_field(
                    "metric",
                    format!("unknown metric {m:?}"),
                ));
            }
        }
        let now = Utc::now();
        let end = match one(&p, "end") {
            Some(v) => parse_time("end", v, now)?,
            None => now,
        };
        let start = match one(&p, "start") {
            Some(v) => parse_time("start", v, now)?,
            None => end - chrono::Duration::hours(1),
        };
        if end <= start {
            return Err(ApiError::invalid_field("end", "must be after start"));
        }
        let interval = match one(&p, "interval") {
            Some(v) => humantime::parse_duration(v).map_err(|_| {
                ApiError::invalid_field("interval", "must be a duration such as 10s, 1m, 5m, 1h")
            })?,
            None => std::time::Duration::from_secs(60),
        };
        let interval_micros = i64::try_from(interval.as_micros()).unwrap_or(i64::MAX);
        if interval_micros < 1_000_000 {
            return Err(ApiError::invalid_field("interval", "must be at least 1s"));
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
                StoreError::InvalidQuery(msg) => ApiError::invalid_field("interval", msg),
                other => store_error(other),
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
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)"), ("agent_id" = Option<String>, Query, description = "Only this agent"), ("status" = Option<String>, Query, description = "open, acknowledged or resolved"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)")),
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
        let status = match one(&p, "status") {
            None => None,
            Some(v) => Some(AlertStatus::parse(v).ok_or_else(|| {
                ApiError::invalid_field("status", "must be open, acknowledged or resolved")
            })?),
        };
        let query = AlertQuery {
            tenant_id: tenant,
            agent_id: one(&p, "agent_id").map(str::to_owned),
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
