//! Tickets and software inventories, from the read model.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/agents/{agent_id}/software?tenant=&name=` | the newest software inventory; `name` keeps packages whose name contains it |
//! | `GET /api/v1/tickets?tenant=&status=&limit=` | tickets, newest first |

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use fleet_read_model::{AgentSoftware, SoftwareQuery, TicketQuery, TicketRow, TicketStatus};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, read_scope, Principal};
use crate::error::store_error;
use crate::query::{chosen, limit, Limit, OneOf, Params};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents/{agent_id}/software", get(agent_software))
        .route("/api/v1/tickets", get(list_tickets))
}

/// Longest software name filter.
const MAX_NAME_FILTER: usize = 200;

/// Parameters of the software inventory.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SoftwareParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Packages whose name contains this
    #[param(min_length = 1, max_length = 200)]
    pub name: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/software",
    tag = "query",
    summary = "The newest software inventory",
    params(("agent_id" = String, Path, description = "Agent id"), SoftwareParams),
    responses((status = 200, description = "Done", body = fleet_read_model::AgentSoftware), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_software(
    Path(agent_id): Path<String>,
    Params(q): Params<SoftwareParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AgentSoftware>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    if q.name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_FILTER)
    {
        return Err(ApiError::invalid_field(
            "name",
            format!("at most {MAX_NAME_FILTER} characters"),
        ));
    }
    let query = SoftwareQuery {
        tenant_id: tenant,
        agent_id,
        name: q.name,
    };
    s.read_model
        .agent_software(&query)
        .await
        .map_err(store_error)?
        .map(Json)
        .ok_or_else(|| not_found("software inventory of this agent", "agent_id"))
}

/// Parameters of the ticket list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TicketParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// open, acknowledged or resolved
    #[param(value_type = Option<String>, pattern = "^(open|acknowledged|resolved)$")]
    pub status: Option<OneOf<TicketStatus>>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
}

/// Answer of the ticket list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TicketList {
    /// Tickets, newest first.
    pub tickets: Vec<TicketRow>,
}

#[utoipa::path(
    get,
    path = "/api/v1/tickets",
    tag = "query",
    summary = "Tickets, newest first",
    params(TicketParams),
    responses((status = 200, description = "Done", body = TicketList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_tickets(
    Params(q): Params<TicketParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<TicketList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let query = TicketQuery {
        tenant_id: tenant,
        status: chosen(q.status),
        limit: limit(q.limit),
    };
    let tickets = s
        .read_model
        .list_tickets(&query)
        .await
        .map_err(store_error)?;
    Ok(Json(TicketList { tickets }))
}
