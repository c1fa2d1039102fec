//! Remote configuration of agents (see `fleet_schemas::remote_config` for the fields, their
//! bounds and the precedence agent > tag > location):
//!
//! | route | what |
//! | --- | --- |
//! | `PUT /api/v1/agents/{agent_id}/config` [`DesiredConfig`] | the agent's own configuration |
//! | `PUT /api/v1/tenants/{tenant_id}/config/tags/{tag}` [`DesiredConfig`] | the configuration of the tenant's agents with the tag |
//! | `PUT /api/v1/tenants/{tenant_id}/config/locations/{location_id}` [`DesiredConfig`] | the configuration of the location's agents |
//! | `GET /api/v1/agents/{agent_id}/config` | desired (merged, each field with its source), applied version, in sync |
//!
//! A PUT replaces the scope's configuration (`{}` clears it) by writing a
//! RemoteConfigEvent on `fleet.config.v1` whose version is the time of the change; the
//! gateways deliver it. Operators of the tenant and admins write, viewers read; another
//! tenant's agent is 404. A bad field answers 400 naming it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::put;
use axum::{Json, Router};
use fleet_event_log::ProduceRecord;
use fleet_schemas::remote_config::{effective_for, ConfigSource, DesiredConfig};
use fleet_schemas::{ids, ConfigScope, Record, RemoteConfigEvent};
use fleet_service::ApiError;
use serde::Serialize;

use crate::auth::{not_found, read_scope, require_operator, require_writer, Principal};
use crate::error::{reply, store_error};
use crate::input::object_body;
use crate::query::Params;
use crate::routes::agents::{agent_of, find_agent, TenantParams};
use crate::routes::tags::validate_tags;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/agents/{agent_id}/config",
            put(put_agent_config).get(get_agent_config),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/config/tags/{tag}",
            put(put_tag_config),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/config/locations/{location_id}",
            put(put_location_config),
        )
}

/// Parses and checks a body: 400 naming the field.
fn desired_of(body: &[u8]) -> Result<DesiredConfig, ApiError> {
    let config = object_body::<DesiredConfig>(body)?;
    config
        .validate()
        .map_err(|e| ApiError::invalid_field(e.field, e.message))?;
    Ok(config)
}

/// Writes the scope's configuration on `fleet.config.v1` and audits it.
async fn write_config(
    s: &AppState,
    p: &Principal,
    tenant_id: &str,
    scope: ConfigScope,
    target: &str,
    config: DesiredConfig,
) -> Result<serde_json::Value, ApiError> {
    let actor = p.actor();
    let now = fleet_schemas::time::now_micros();
    let key = RemoteConfigEvent::key_for(tenant_id, scope, target);
    let ev = RemoteConfigEvent {
        event_id: ids::v7_at(now, &[&key, "config"]).to_string(),
        config_key: key.clone(),
        tenant_id: tenant_id.to_owned(),
        scope,
        target: target.to_owned(),
        version: now,
        heartbeat_interval_secs: config.heartbeat_interval_secs,
        metrics_interval_secs: config.metrics_interval_secs,
        services: config.services.clone(),
        textfile_dir: config.textfile_dir.clone(),
        allowed_commands: config.allowed_commands.clone(),
        actor: Some(actor.clone()),
        occurred_at: now,
        ingested_at: now,
    };
    let value = s.wire.encode(&ev).map_err(ApiError::internal)?;
    let rec = ProduceRecord {
        key: Some(key.into_bytes()),
        value,
        timestamp_ms: Some(now / 1000),
    };
    s.log
        .produce(RemoteConfigEvent::TOPIC, vec![rec])
        .await
        .map_err(|e| {
            ApiError::unavailable(
                format!("the configuration could not be written: {e}; retry"),
                5,
            )
        })?;
    tracing::info!(%tenant_id, scope = scope.as_str(), %target, %actor, version = now, "Remote configuration set.");
    let details = serde_json::json!({ "scope": scope.as_str(), "version": now, "config": config });
    s.audit(
        p,
        Some(tenant_id),
        "config.set",
        &format!("{}/{target}", scope.as_str()),
        Some(details.clone()),
    )
    .await;
    Ok(details)
}

#[utoipa::path(
    put,
    path = "/api/v1/agents/{agent_id}/config",
    tag = "admin",
    summary = "Set an agent's own remote configuration (replaces it; {} clears it)",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body = DesiredConfig,
    responses((status = 200, description = "Written", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn put_agent_config(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        // A viewer is refused before anything is looked up.
        require_writer(&p)?;
        let cred = agent_of(&s, &p, &agent_id).await?;
        let config = desired_of(&body)?;
        write_config(
            &s,
            &p,
            &cred.tenant_id,
            ConfigScope::Agent,
            &agent_id,
            config,
        )
        .await
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/config/tags/{tag}",
    tag = "admin",
    summary = "Set the remote configuration of a tenant's agents with a tag",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("tag" = String, Path, description = "Tag", pattern = "^[A-Za-z0-9_.:-]{1,64}$")
    ),
    request_body = DesiredConfig,
    responses((status = 200, description = "Written", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn put_tag_config(
    State(s): State<AppState>,
    Path((tenant_id, tag)): Path<(String, String)>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let tag = validate_tags(std::slice::from_ref(&tag))
            .map_err(|_| {
                ApiError::invalid_field("tag", "a tag is 1 to 64 characters of A-Z a-z 0-9 _ . : -")
            })?
            .pop()
            .ok_or_else(|| ApiError::invalid_field("tag", "missing"))?;
        let config = desired_of(&body)?;
        write_config(&s, &p, &tenant_id, ConfigScope::Tag, &tag, config).await
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    put,
    path = "/api/v1/tenants/{tenant_id}/config/locations/{location_id}",
    tag = "admin",
    summary = "Set the remote configuration of a location's agents",
    params(
        ("tenant_id" = String, Path, description = "Tenant id"),
        ("location_id" = String, Path, description = "Location id")
    ),
    request_body = DesiredConfig,
    responses((status = 200, description = "Written", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn put_location_config(
    State(s): State<AppState>,
    Path((tenant_id, location_id)): Path<(String, String)>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let known = s
            .registry
            .list_locations(&tenant_id)
            .await
            .map_err(store_error)?
            .iter()
            .any(|l| l.location_id == location_id);
        if !known {
            return Err(not_found("location", "location_id"));
        }
        let config = desired_of(&body)?;
        write_config(
            &s,
            &p,
            &tenant_id,
            ConfigScope::Location,
            &location_id,
            config,
        )
        .await
    }
    .await;
    reply(StatusCode::OK, r)
}

/// An agent's remote configuration: what it should run and what it runs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentConfigView {
    /// Agent id.
    pub agent_id: String,
    /// The merged desired configuration (agent > tag > location; unset: the agent's
    /// local value).
    pub desired: DesiredConfig,
    /// Field → the scope that set it.
    pub sources: std::collections::BTreeMap<String, ConfigSource>,
    /// The desired version (0: nothing set for this agent).
    pub desired_version: i64,
    /// The version the agent last acknowledged in a heartbeat (absent: none yet, or an
    /// agent before remote configuration).
    pub applied_version: Option<i64>,
    /// The agent's heartbeat interval from that heartbeat, seconds.
    pub heartbeat_interval_secs: Option<f64>,
    /// Time of that heartbeat (µs).
    pub reported_at: Option<i64>,
    /// Whether the agent runs the desired version.
    pub in_sync: bool,
}

/// The view of `agent` (a row of the read model).
pub(crate) async fn config_view(
    s: &AppState,
    agent: &fleet_read_model::AgentRow,
) -> Result<AgentConfigView, ApiError> {
    let records = s
        .read_model
        .list_remote_configs(&agent.tenant_id)
        .await
        .map_err(store_error)?;
    let applied = s
        .read_model
        .applied_config(&agent.agent_id)
        .await
        .map_err(store_error)?
        .filter(|a| a.tenant_id == agent.tenant_id);
    let e = effective_for(
        &records,
        &agent.agent_id,
        &agent.tags,
        agent.location_id.as_deref(),
    );
    let applied_version = applied.as_ref().and_then(|a| a.config_version);
    Ok(AgentConfigView {
        agent_id: agent.agent_id.clone(),
        in_sync: applied_version.unwrap_or(0) == e.version,
        desired: e.config,
        sources: e.sources,
        desired_version: e.version,
        applied_version,
        heartbeat_interval_secs: applied.as_ref().and_then(|a| a.heartbeat_interval_secs),
        reported_at: applied.map(|a| a.reported_at),
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/config",
    tag = "query",
    summary = "An agent's desired remote configuration (with sources), applied version and whether they agree",
    params(("agent_id" = String, Path, description = "Agent id"), TenantParams),
    responses((status = 200, description = "Done", body = AgentConfigView), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_agent_config(
    Path(agent_id): Path<String>,
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AgentConfigView>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let agent = find_agent(&s, tenant.as_deref(), &agent_id).await?;
    Ok(Json(config_view(&s, &agent).await?))
}
