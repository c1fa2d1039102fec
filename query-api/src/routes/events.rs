//! The agents' events (`fleet.events.v1`), from the read model.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/events?tenant=&agent=&kind=&severity=&since=&until=&limit=` | events, newest first |
//! | `GET /api/v1/agents/{agent_id}/events?tenant=&kind=&severity=&since=&until=&limit=` | one agent's events, newest first |

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use fleet_read_model::{EventQuery, EventRow};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{read_scope, Principal};
use crate::error::store_error;
use crate::query::{parse_time, Limit, Params};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/events", get(list_events))
        .route("/api/v1/agents/{agent_id}/events", get(agent_events))
}

/// Longest `kind` filter.
const MAX_KIND: usize = 128;

/// A timeline's query parameters: the fields of every timeline, after those given.
macro_rules! timeline_params {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Deserialize, utoipa::IntoParams)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
            /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
            #[param(min_length = 1)]
            pub tenant: Option<String>,
            /// Only events of this kind (service_failed, agent_started, ...)
            #[param(min_length = 1, max_length = 128)]
            pub kind: Option<String>,
            /// Only events of this severity: INFO, WARNING or CRITICAL
            #[param(pattern = "^(INFO|WARNING|CRITICAL)$")]
            pub severity: Option<String>,
            /// Events at or after: RFC 3339, now, or a duration before now (digits and one of s m h d w y)
            #[param(pattern = "fleet:time")]
            pub since: Option<String>,
            /// Events before (exclusive): RFC 3339, now, or a duration before now; the answer's next_until pages back
            #[param(pattern = "fleet:time")]
            pub until: Option<String>,
            /// Page size, 1 to 1000 (default 100)
            #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
            pub limit: Option<Limit>,
        }

        impl $name {
            /// The filters every timeline has.
            fn filters(&self) -> Filters<'_> {
                Filters {
                    tenant: self.tenant.as_deref(),
                    kind: self.kind.as_deref(),
                    severity: self.severity.as_deref(),
                    since: self.since.as_deref(),
                    until: self.until.as_deref(),
                    limit: self.limit.as_ref().map(|l| l.0),
                }
            }
        }
    };
}

timeline_params!(
    /// Parameters of the fleet's event timeline.
    EventParams {
        /// Only this agent
        #[param(min_length = 1, max_length = 128)]
        agent: Option<String>,
    }
);

timeline_params!(
    /// Parameters of one agent's event timeline.
    AgentEventParams {}
);

/// The filters of a timeline, as given.
struct Filters<'a> {
    tenant: Option<&'a str>,
    kind: Option<&'a str>,
    severity: Option<&'a str>,
    since: Option<&'a str>,
    until: Option<&'a str>,
    limit: Option<u32>,
}

/// Answer of the event timeline.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventList {
    /// Events, newest first (by the agent's time).
    pub events: Vec<EventRow>,
    /// When the page is full: the `until` of the next, older page (RFC 3339, the oldest
    /// event's time; events of the very same microsecond as it may repeat).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_until: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "query",
    summary = "Agent events, newest first",
    params(EventParams),
    responses((status = 200, description = "Done", body = EventList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_events(
    Params(q): Params<EventParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<EventList>, ApiError> {
    timeline(q.filters(), q.agent.clone(), s, p).await
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/events",
    tag = "query",
    summary = "One agent's events, newest first",
    params(("agent_id" = String, Path, description = "Agent id"), AgentEventParams),
    responses((status = 200, description = "Done (404: no such agent in the tenant)", body = EventList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_events(
    Path(agent_id): Path<String>,
    Params(q): Params<AgentEventParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<EventList>, ApiError> {
    timeline(q.filters(), Some(agent_id), s, p).await
}

/// The one way both routes read the timeline.
async fn timeline(
    q: Filters<'_>,
    agent_id: Option<String>,
    s: AppState,
    p: Principal,
) -> Result<Json<EventList>, ApiError> {
    let tenant = read_scope(&p, q.tenant)?;
    if let Some(agent) = &agent_id {
        // An agent of another tenant is as unknown as one that never enrolled.
        crate::routes::agents::find_agent(&s, tenant.as_deref(), agent).await?;
    }
    if q.kind
        .as_ref()
        .is_some_and(|k| k.chars().count() > MAX_KIND)
    {
        return Err(ApiError::invalid_field(
            "kind",
            format!("at most {MAX_KIND} characters"),
        ));
    }
    let severity = match q.severity {
        None => None,
        Some(v @ ("INFO" | "WARNING" | "CRITICAL")) => Some(v.to_owned()),
        Some(_) => {
            return Err(ApiError::invalid_field(
                "severity",
                "must be INFO, WARNING or CRITICAL",
            ))
        }
    };
    let now = Utc::now();
    let time = |field: &str, v: Option<&str>| {
        v.map(|v| parse_time(field, v, now).map(|t| t.timestamp_micros()))
            .transpose()
    };
    let since = time("since", q.since)?;
    let until = time("until", q.until)?;
    let query = EventQuery {
        tenant_id: tenant,
        agent_id,
        kind: q.kind.map(str::to_owned),
        severity,
        since,
        until,
        limit: q.limit,
    };
    let events = s
        .read_model
        .list_events(&query)
        .await
        .map_err(store_error)?;
    let page = usize::try_from(query.limit.unwrap_or(fleet_read_model::DEFAULT_LIMIT))
        .unwrap_or(usize::MAX)
        .min(fleet_read_model::MAX_LIMIT as usize);
    let next_until = (events.len() >= page)
        .then(|| events.last())
        .flatten()
        .map(|e| fleet_schemas::time::from_micros(e.occurred_at).to_rfc3339());
    Ok(Json(EventList { events, next_until }))
}
