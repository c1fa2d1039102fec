//! Query routes over the read model's commands, software inventories and tickets (see the
//! route table in [`crate::api`]).

use std::time::Instant;

use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use fleet_service::ApiError;
use fleet_stores::{
    CommandQuery, CommandRow, SoftwareQuery, StoreError, TicketQuery, TicketRow, TicketStatus,
};
use serde::Serialize;

use super::{limit, one, pairs, reject_unknown, respond, store_error, ApiState};

/// Longest software name filter.
const MAX_NAME_FILTER: usize = 200;

/// Answer of an agent's command history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandList {
    /// Commands of this page, newest first.
    pub commands: Vec<CommandRow>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/commands",
    tag = "query",
    summary = "An agent's commands, newest first",
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000), ("after" = Option<String>, Query, description = "Last command id of the previous page (404 if the agent has no such command)", min_length = 1)),
    responses((status = 200, description = "Done", body = CommandList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_commands(
    State(s): State<ApiState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "limit", "after"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let limit = limit(&p)?;
        let query = CommandQuery {
            tenant_id: tenant.clone(),
            agent_id,
            limit,
            after: one(&p, "after")?.map(str::to_owned),
        };
        let commands = s
            .read_model
            .list_commands(&query)
            .await
            .map_err(|e| match e {
                // A cursor that names no command of this agent.
                StoreError::InvalidQuery(_) => crate::auth::not_found("command", "after"),
                other => store_error(other),
            })?;
        if commands.is_empty() && query.after.is_none() {
            // An unknown agent, or another tenant's, is not found rather than empty.
            super::find_agent(&s, tenant.as_deref(), &query.agent_id).await?;
        }
        let page = limit.unwrap_or(100) as usize;
        let next_after = (commands.len() == page)
            .then(|| commands.last().map(|c| c.command_id.clone()))
            .flatten();
        Ok(CommandList {
            commands,
            next_after,
        })
    }
    .await;
    respond("/api/v1/agents/{agent_id}/commands", started, result)
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{command_id}",
    tag = "query",
    summary = "One command with its audit trail",
    params(("command_id" = String, Path, description = "Command id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1)),
    responses((status = 200, description = "Done", body = fleet_stores::CommandDetail), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_command(
    State(s): State<ApiState>,
    Path(command_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        s.read_model
            .get_command(tenant.as_deref(), &command_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| crate::auth::not_found("command", "command_id"))
    }
    .await;
    respond("/api/v1/commands/{command_id}", started, result)
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/software",
    tag = "query",
    summary = "The newest software inventory",
    params(("agent_id" = String, Path, description = "Agent id"), ("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("name" = Option<String>, Query, description = "Packages whose name contains this", min_length = 1, max_length = 200)),
    responses((status = 200, description = "Done", body = fleet_stores::AgentSoftware), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_software(
    State(s): State<ApiState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "name"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let name = one(&p, "name")?;
        if name.is_some_and(|n| n.chars().count() > MAX_NAME_FILTER) {
            return Err(ApiError::invalid_field(
                "name",
                format!("at most {MAX_NAME_FILTER} characters"),
            ));
        }
        let query = SoftwareQuery {
            tenant_id: tenant.clone(),
            agent_id,
            name: name.map(str::to_owned),
        };
        s.read_model
            .agent_software(&query)
            .await
            .map_err(store_error)?
            .ok_or_else(|| crate::auth::not_found("software inventory of this agent", "agent_id"))
    }
    .await;
    respond("/api/v1/agents/{agent_id}/software", started, result)
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
    params(("tenant" = Option<String>, Query, description = "Tenant (admins: optional, every tenant if absent; others: their own, the default)", min_length = 1), ("status" = Option<String>, Query, description = "open, acknowledged or resolved", pattern = "^(open|acknowledged|resolved)$"), ("limit" = Option<u32>, Query, description = "Page size, 1 to 1000 (default 100)", minimum = 1, maximum = 1000)),
    responses((status = 200, description = "Done", body = TicketList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_tickets(
    State(s): State<ApiState>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let started = Instant::now();
    let result = async {
        let p = pairs(q)?;
        reject_unknown(&p, &["tenant", "status", "limit"])?;
        let (_, tenant) = s.scope(&headers, &p).await?;
        let status = match one(&p, "status")? {
            None => None,
            Some(v) => Some(TicketStatus::parse(v).ok_or_else(|| {
                ApiError::invalid_field("status", "must be open, acknowledged or resolved")
            })?),
        };
        let query = TicketQuery {
            tenant_id: tenant.clone(),
            status,
            limit: limit(&p)?,
        };
        let tickets = s
            .read_model
            .list_tickets(&query)
            .await
            .map_err(store_error)?;
        Ok(TicketList { tickets })
    }
    .await;
    respond("/api/v1/tickets", started, result)
}
