//! Agents: the list, one agent, its metric history, and deactivation.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/agents?tenant=&location=&status=&tag=&q=&limit=&after=` | agents with their latest metrics, by agent id; `q` searches id, host and device name |
//! | `GET /api/v1/agents/{agent_id}?tenant=` | one agent, its latest report, series, services and open alerts |
//! | `GET /api/v1/agents/{agent_id}/metrics?metric=&start=&end=&interval=` | history in buckets, from the coarsest rollup that serves the interval |
//! | `POST /api/v1/agents/{agent_id}/deactivate` `{"reason"?}` | revoke an agent's credential (AgentDeactivated on `fleet.agents.v1`) |
//!
//! Times are RFC 3339 (`2026-11-23T10:00:00Z`) or a duration before now (`15m`, `24h`);
//! `interval` is a duration (`10s`, `5m`). `metric` may repeat or be comma-separated.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use fleet_event_log::ProduceRecord;
use fleet_read_model::{
    AgentQuery, AgentRow, AgentStatus, AlertQuery, AlertRow, AlertStatus, ServiceRow,
};
use fleet_schemas::{ids, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_service::ApiError;
use fleet_timeseries::{Bucket, RangeQuery, Resolution};
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, read_scope, require_operator_of, require_writer, Principal};
use crate::error::{invalid_combination, reply, store_error, ts_error};
use crate::query::{
    chosen, in_range, limit, parse_duration, parse_time, too_far, Limit, OneOf, Params, TIME_UNITS,
};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents", get(list_agents))
        .route("/api/v1/agents/{agent_id}", get(get_agent))
        .route("/api/v1/agents/{agent_id}/metrics", get(agent_metrics))
        .route("/api/v1/agents/{agent_id}/deactivate", post(deactivate))
}

/// Only a tenant: the parameters of most reads of one object.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
}

/// Parameters of the agent list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Location id
    #[param(min_length = 1)]
    pub location: Option<String>,
    /// online, offline or deactivated
    #[param(value_type = Option<String>, pattern = "^(online|offline|deactivated)$")]
    pub status: Option<OneOf<AgentStatus>>,
    /// Carries this tag
    #[param(min_length = 1)]
    pub tag: Option<String>,
    /// Text in the id, host name or device name
    #[param(min_length = 1, max_length = 200)]
    pub q: Option<String>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
    /// Last agent id of the previous page
    #[param(min_length = 1)]
    pub after: Option<String>,
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
    params(AgentParams),
    responses((status = 200, description = "Done", body = AgentList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_agents(
    Params(q): Params<AgentParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AgentList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let limit = limit(q.limit);
    if q.q.as_ref().is_some_and(|t| t.chars().count() > 200) {
        return Err(ApiError::invalid_field("q", "at most 200 characters"));
    }
    let query = AgentQuery {
        tenant_id: tenant,
        limit,
        after: q.after,
        location_id: q.location,
        status: chosen(q.status),
        tag: q.tag,
        text: q.q,
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
    Ok(Json(AgentList { agents, next_after }))
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
    /// Remote configuration: desired, applied, in sync.
    pub config: crate::routes::remote_config::AgentConfigView,
}

/// The agent `agent_id` in `tenant` (every tenant: `None`); unknown is 404.
pub(crate) async fn find_agent(
    s: &AppState,
    tenant: Option<&str>,
    agent_id: &str,
) -> Result<AgentRow, ApiError> {
    s.read_model
        .get_agent(tenant, agent_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("agent", "agent_id"))
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}",
    tag = "query",
    summary = "One agent with its series, services and open alerts",
    params(("agent_id" = String, Path, description = "Agent id"), TenantParams),
    responses((status = 200, description = "Done", body = AgentDetail), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_agent(
    Path(agent_id): Path<String>,
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AgentDetail>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
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
    let config = crate::routes::remote_config::config_view(&s, &agent).await?;
    Ok(Json(AgentDetail {
        agent,
        series,
        open_alerts,
        services,
        config,
    }))
}

/// Most metrics in one history request.
const MAX_METRICS: usize = 20;

/// Parameters of the history query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// 1 to 20 series, comma-separated: a built-in metric or custom.<name>, with :<subject> for a mount point, service or a custom metric's labels (cpu.percent,disk.percent:/var,custom.queue_depth:{queue="high",region="eu"})
    #[serde(default)]
    #[param(value_type = String, required = true, pattern = "fleet:metrics")]
    pub metric: Vec<String>,
    /// RFC 3339, now, or a duration before now: digits and one of s m h d w y (default 1h before end)
    #[param(pattern = "fleet:time")]
    pub start: Option<String>,
    /// RFC 3339, now, or a duration before now: digits and one of s m h d w y (default now; after start, 422 otherwise)
    #[param(pattern = "fleet:time")]
    pub end: Option<String>,
    /// Bucket width, at least 1s: digits and one of s m h d w y (default 1m); at most 10000 buckets in the range (422 otherwise)
    #[param(pattern = "fleet:interval")]
    pub interval: Option<String>,
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
    #[serde(serialize_with = "fleet_schemas::time::serialize_rfc3339")]
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
    params(("agent_id" = String, Path, description = "Agent id"), HistoryParams),
    responses((status = 200, description = "Done", body = History), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_metrics(
    Path(agent_id): Path<String>,
    Params(q): Params<HistoryParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<History>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let mut metrics: Vec<String> = Vec::new();
    for v in &q.metric {
        for m in fleet_schemas::samples::split_series_list(v) {
            if let Err(e) = fleet_schemas::samples::check_series_name(m) {
                return Err(ApiError::invalid_field(
                    "metric",
                    format!("{e}; a series is a built-in name or custom.<name>, with :<subject> if it has one"),
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
    let end = match &q.end {
        Some(v) => parse_time("end", v, now)?,
        None => now,
    };
    let start = match &q.start {
        Some(v) => parse_time("start", v, now)?,
        None => end
            .checked_sub_signed(chrono::Duration::hours(1))
            .ok_or_else(|| too_far("start"))
            .and_then(|t| in_range("start", t))?,
    };
    let interval = match &q.interval {
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
    // One call for the chart: the engine reads the agent's chunks and head once.
    let queries: Vec<RangeQuery> = metrics
        .iter()
        .map(|m| RangeQuery {
            tenant_id: agent.tenant_id.clone(),
            agent_id: agent.agent_id.clone(),
            series: m.clone(),
            start_micros: start.timestamp_micros(),
            end_micros: end.timestamp_micros(),
            interval_micros,
        })
        .collect();
    let answers = s
        .timeseries
        .query_many(&queries)
        .await
        .map_err(|e| match e {
            // The range and the interval, each valid, give too many buckets.
            fleet_timeseries::Error::InvalidQuery(msg) => invalid_combination("interval", msg),
            other => ts_error(other),
        })?;
    let series = metrics
        .into_iter()
        .zip(answers)
        .map(|(metric, buckets)| SeriesHistory {
            metric,
            buckets: buckets.into_iter().map(BucketOut::from).collect(),
        })
        .collect();
    Ok(Json(History {
        agent_id: agent.agent_id,
        start,
        end,
        interval_seconds: interval.as_secs_f64(),
        resolution: Resolution::for_interval(interval_micros),
        series,
    }))
}

/// The credential record of an enrolled agent the caller may act on (after
/// [`require_writer`]); unknown and another tenant's are the same 404.
pub(crate) async fn agent_of(
    s: &AppState,
    p: &Principal,
    agent_id: &str,
) -> Result<fleet_registry::AgentCredential, ApiError> {
    let missing = || not_found("agent", "agent_id");
    let cred = s
        .registry
        .agent_credential(agent_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    require_operator_of(p, &cred.tenant_id, missing)?;
    Ok(cred)
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/deactivate",
    tag = "admin",
    summary = "Revoke an agent's credential",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body(content = Option<crate::input::ReasonBody>, description = "Optional: nothing, or a reason"),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn deactivate(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let reason = crate::input::optional_reason(&body)?;
        let cred = agent_of(&s, &p, &agent_id).await?;
        let now = fleet_schemas::time::now_micros();
        let changed = s
            .registry
            .deactivate_agent(None, &agent_id, now)
            .await
            .map_err(store_error)?;
        // Written on every call (a retry after a failed write must still publish it);
        // the event id depends only on the agent, so copies are recognisable.
        {
            let ev = AgentLifecycle {
                event_id: ids::v5(&[&agent_id, "DEACTIVATED"]).to_string(),
                tenant_id: cred.tenant_id.clone(),
                agent_id: agent_id.clone(),
                kind: AgentLifecycleKind::Deactivated,
                location_id: cred.location_id.clone(),
                device_name: None,
                facts: None,
                actor: Some(actor.clone()),
                reason,
                tags: None,
                occurred_at: now,
                ingested_at: now,
            };
            let value = s.wire.encode(&ev).map_err(ApiError::internal)?;
            let rec = ProduceRecord {
                key: Some(agent_id.as_bytes().to_vec()),
                value,
                timestamp_ms: Some(now / 1000),
            };
            s.log
                .produce(AgentLifecycle::TOPIC, vec![rec])
                .await
                .map_err(|e| {
                    ApiError::unavailable(
                        format!("deactivated, but the event could not be written yet: {e}; retry"),
                        5,
                    )
                })?;
            tracing::info!(%agent_id, %actor, "Agent deactivated.");
            s.audit(
                &p,
                Some(&cred.tenant_id),
                "agent.deactivate",
                &agent_id,
                None,
            )
            .await;
        }
        Ok(serde_json::json!({ "agent_id": agent_id, "deactivated": true, "changed": changed }))
    }
    .await;
    reply(StatusCode::OK, r)
}
