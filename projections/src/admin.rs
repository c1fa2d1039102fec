//! Administration API: tenants, locations, registration tokens, agent deactivation.
//!
//! Every route needs `Authorization: Bearer <key>`: the bootstrap key (the projections'
//! `admin-api-key`, the user `admin` with role admin) or a user's API key; see
//! [`crate::auth`] for roles. Tenants and users are for admins; locations and tokens also
//! for operators of the tenant (viewers of it may list them); deactivation and commands
//! for operators of the agent's tenant, and so are agent tags.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/tenants` `{"name"}` | create a tenant |
//! | `GET /api/v1/tenants` | list tenants |
//! | `POST /api/v1/tenants/{tenant_id}/locations` `{"name"}` | create a location |
//! | `GET /api/v1/tenants/{tenant_id}/locations` | list locations |
//! | `POST /api/v1/tenants/{tenant_id}/registration-tokens` `{"location_id"?, "device_name"?, "expires_in"?}` | create a one-time token (secret shown once, with an install command) |
//! | `GET /api/v1/tenants/{tenant_id}/registration-tokens` | list tokens (never secrets) |
//! | `POST /api/v1/agents/{agent_id}/deactivate` `{"reason"?}` | revoke an agent's credential (AgentDeactivated on `fleet.agents.v1`) |
//! | `PUT /api/v1/agents/{agent_id}/tags` `{"tags"}` | set an agent's tags (AgentLifecycle UPDATED with `tags` on `fleet.agents.v1`; see [`crate::tags`]) |
//! | `POST /api/v1/agents/{agent_id}/commands` `{"command_type", "args"?, "timeout_secs"?, "requires_approval"?}` | ask an agent to run a command (CommandRequested on `fleet.commands.v1`; see [`crate::commands`]) |
//! | `POST /api/v1/commands/{command_id}/approve` | approve a command awaiting approval (CommandApproved; a different user than the requester) |
//! | `POST /api/v1/users`, `GET /api/v1/users`, `POST /api/v1/users/{user_id}/keys`, `POST /api/v1/users/{user_id}/disable` | users and API keys, see [`crate::users`] |
//! | rules and alert handling | see [`crate::rules_api`]; a new tenant gets the default rules |

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_ops::{ApiError, FieldJson};
use fleet_schemas::{codec, ids, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_stores::registry::{hash_secret, new_secret, NewToken, Registry};
use fleet_stores::{ReadModel, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::{self, require_admin, require_operator, require_viewer, KeyCache, Principal};
use crate::rules_api;

/// State of the admin routes.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub(crate) registry: Arc<dyn Registry>,
    pub(crate) log: Arc<dyn EventLog>,
    admin_key_hash: Option<[u8; 32]>,
    gateway_url: String,
    pub(crate) keys: KeyCache,
    pub(crate) approval_required: Arc<Vec<String>>,
    pub(crate) read_model: Option<Arc<dyn ReadModel>>,
}

impl AdminState {
    /// Admin state; `admin_key` empty disables the bootstrap key (user keys still work).
    /// Command types that need approval are the configuration's default
    /// (`approval-required-commands`); see [`AdminState::with_approval_required`].
    pub fn new(
        registry: Arc<dyn Registry>,
        log: Arc<dyn EventLog>,
        admin_key: &str,
        gateway_url: &str,
    ) -> Self {
        let admin_key_hash = (!admin_key.is_empty()).then(|| hash_secret(admin_key));
        AdminState {
            registry,
            log,
            admin_key_hash,
            gateway_url: gateway_url.trim_end_matches('/').to_owned(),
            keys: KeyCache::default(),
            approval_required: Arc::new(
                crate::ProjectionsConfig::default().approval_required_commands,
            ),
            read_model: None,
        }
    }

    /// Records every accepted change in `read_model`'s audit log (`GET /api/v1/audit`),
    /// and lists rules from its projection of `fleet.rules.v1` (without it, the routes
    /// read the topic).
    #[must_use]
    pub fn with_audit(mut self, read_model: Arc<dyn ReadModel>) -> Self {
        self.read_model = Some(read_model);
        self
    }

    /// Records that `p` did `action` to `target` in `tenant`. The change has happened
    /// already, so a failure to record it is logged (and counted), not returned.
    pub(crate) async fn audit(
        &self,
        p: &Principal,
        tenant: Option<&str>,
        action: &str,
        target: &str,
        details: Option<serde_json::Value>,
    ) {
        let Some(rm) = &self.read_model else { return };
        let entry = fleet_stores::AuditEntry {
            audit_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: tenant.map(str::to_owned),
            at: fleet_schemas::time::now_micros(),
            actor: p.actor(),
            action: action.to_owned(),
            target: target.to_owned(),
            details,
        };
        if let Err(e) = rm.record_audit(&entry).await {
            ::metrics::counter!(crate::metrics::AUDIT_FAILURES).increment(1);
            tracing::warn!(error = %e, action, target, "cannot record an audit entry");
        }
    }

    /// The command types that always need approval (`approval-required-commands`).
    #[must_use]
    pub fn with_approval_required(mut self, command_types: Vec<String>) -> Self {
        self.approval_required = Arc::new(command_types);
        self
    }

    /// Who sent `headers` (401 if nobody known); see [`crate::auth`].
    pub(crate) async fn principal(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        auth::principal(
            self.registry.as_ref(),
            self.admin_key_hash.as_ref(),
            &self.keys,
            headers,
        )
        .await
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/api/v1/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/api/v1/tenants/{tenant_id}/locations",
            post(create_location).get(list_locations),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/registration-tokens",
            post(create_token).get(list_tokens),
        )
        .route("/api/v1/agents/{agent_id}/deactivate", post(deactivate))
        .route("/api/v1/agents/{agent_id}/tags", put(crate::tags::put_tags))
        .route(
            "/api/v1/commands/{command_id}/approve",
            post(crate::commands::approve_command),
        )
        .route(
            "/api/v1/users",
            post(crate::users::create_user).get(crate::users::list_users),
        )
        .route(
            "/api/v1/users/{user_id}/keys",
            post(crate::users::create_key),
        )
        .route(
            "/api/v1/users/{user_id}/disable",
            post(crate::users::disable_user),
        )
        .route(
            "/api/v1/agents/{agent_id}/commands",
            post(crate::commands::request_command),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/rules",
            post(rules_api::create_rule).get(rules_api::list_rules),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/rules/defaults",
            post(rules_api::write_defaults),
        )
        .route(
            "/api/v1/rules/{rule_id}",
            put(rules_api::update_rule).delete(rules_api::delete_rule),
        )
        .route(
            "/api/v1/rules/{rule_id}/disable",
            post(rules_api::disable_rule),
        )
        .route(
            "/api/v1/rules/{rule_id}/enable",
            post(rules_api::enable_rule),
        )
        .route(
            "/api/v1/alerts/{alert_id}/acknowledge",
            post(rules_api::acknowledge_alert),
        )
        .route(
            "/api/v1/alerts/{alert_id}/resolve",
            post(rules_api::resolve_alert),
        )
        .with_state(state)
}

pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::not_found(m),
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        StoreError::Unavailable(m) => ApiError::unavailable(format!("store unavailable: {m}"), 5),
        StoreError::InvalidQuery(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m),
        other => ApiError::internal(other),
    }
}

pub(crate) fn reply<T: Serialize>(status: StatusCode, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

pub(crate) fn name_field(field: &str, v: &str) -> Result<String, ApiError> {
    let v = v.trim();
    if v.is_empty() || v.len() > 200 || v.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            field,
            "must be 1 to 200 characters without control characters",
        ));
    }
    Ok(v.to_owned())
}

/// Body of tenant and location creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// Display name.
    pub name: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants",
    tag = "admin",
    summary = "Create a tenant (admins)",
    request_body = NameBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_tenant(
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: Result<FieldJson<NameBody>, ApiError>,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        require_admin(&p)?;
        let actor = p.actor();
        let name = name_field("name", &body?.0.name)?;
        let t = s
            .registry
            .create_tenant(&name, fleet_schemas::time::now_micros())
            .await
            .map_err(store_error)?;
        tracing::info!(tenant_id = %t.tenant_id, %name, %actor, "Tenant created.");
        s.audit(&p, Some(&t.tenant_id), "tenant.create", &t.tenant_id, Some(serde_json::json!({ "name": name }))).await;
        // The default rule set. If it cannot be written, the tenant still exists: say so,
        // and POST /api/v1/tenants/{id}/rules/defaults writes them (ids are stable).
        let default_rules = rules_api::write_default_rules(s.log.as_ref(), &t.tenant_id, &actor)
            .await
            .map_err(|e| {
                tracing::warn!(tenant_id = %t.tenant_id, error = %e, "Default rules not written.");
                ApiError::unavailable(
                    format!(
                        "tenant {} created, but its default rules were not written: retry with POST /api/v1/tenants/{}/rules/defaults",
                        t.tenant_id, t.tenant_id
                    ),
                    5,
                )
            })?;
        let mut v = serde_json::to_value(&t).map_err(ApiError::internal)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("default_rules".into(), serde_json::json!(default_rules));
        }
        Ok(v)
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants",
    tag = "admin",
    summary = "List tenants (admins)",
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_tenants(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let r = async {
        require_admin(&s.principal(&headers).await?)?;
        let tenants = s.registry.list_tenants().await.map_err(store_error)?;
        Ok(serde_json::json!({ "tenants": tenants }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/locations",
    tag = "admin",
    summary = "Create a location",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = NameBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_location(
    State(s): State<AdminState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<FieldJson<NameBody>, ApiError>,
) -> Response {
    let r = async {
        require_operator(&s.principal(&headers).await?, &tenant_id)?;
        let name = name_field("name", &body?.0.name)?;
        s.registry
            .create_location(&tenant_id, &name, fleet_schemas::time::now_micros())
            .await
            .map_err(store_error)
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/locations",
    tag = "admin",
    summary = "List locations",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_locations(
    State(s): State<AdminState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        require_viewer(&s.principal(&headers).await?, &tenant_id)?;
        let locations = s
            .registry
            .list_locations(&tenant_id)
            .await
            .map_err(store_error)?;
        Ok(serde_json::json!({ "locations": locations }))
    }
    .await;
    reply(StatusCode::OK, r)
}

/// Body of token creation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Location the agent will be placed in.
    #[serde(default)]
    pub location_id: Option<String>,
    /// Device name the agent will get.
    #[serde(default)]
    pub device_name: Option<String>,
    /// Lifetime (`24h`, `30m`; at most 30 days). Default 24h.
    #[serde(default)]
    pub expires_in: Option<String>,
}

/// Answer of token creation: the secret is shown here only.
#[derive(Debug, Serialize)]
pub struct CreatedToken {
    /// The token as listed later.
    #[serde(flatten)]
    pub info: fleet_stores::registry::TokenInfo,
    /// The one-time secret; it cannot be shown again.
    pub token: String,
    /// A command that enrolls and starts an agent with this token.
    pub install_command: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/registration-tokens",
    tag = "admin",
    summary = "Create a one-time registration token (the secret is shown once)",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    request_body = TokenBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_token(
    State(s): State<AdminState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
    body: Result<FieldJson<TokenBody>, ApiError>,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        require_operator(&p, &tenant_id)?;
        let actor = p.actor();
        let b = body?.0;
        let lifetime = match &b.expires_in {
            None => std::time::Duration::from_secs(86_400),
            Some(v) => humantime::parse_duration(v)
                .map_err(|_| ApiError::invalid_field("expires_in", "must be a duration such as 30m, 24h, 7d"))?,
        };
        if lifetime.is_zero() || lifetime > std::time::Duration::from_secs(30 * 86_400) {
            return Err(ApiError::invalid_field("expires_in", "must be more than 0 and at most 30 days"));
        }
        let device_name = b.device_name.as_deref().map(|d| name_field("device_name", d)).transpose()?;
        let now = fleet_schemas::time::now_micros();
        let secret = new_secret("fst_");
        let new = NewToken {
            tenant_id: tenant_id.clone(),
            location_id: b.location_id,
            device_name,
            expires_at: now + i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX / 2),
            created_by: actor.clone(),
            created_at: now,
        };
        let info = s.registry.create_token(&new, hash_secret(&secret)).await.map_err(store_error)?;
        tracing::info!(token_id = %info.token_id, %tenant_id, %actor, "Registration token created.");
        s.audit(&p, Some(&tenant_id), "token.create", &info.token_id, None).await;
        // The token goes through the environment: a command-line argument is visible to
        // every user in the process list.
        let install_command = format!(
            "FLEET_AGENT_TOKEN={secret} sudo --preserve-env=FLEET_AGENT_TOKEN packaging/install-agent.sh --server {gw}   # or: FLEET_AGENT_TOKEN={secret} fleetstream-agent enroll --server {gw}",
            gw = s.gateway_url
        );
        Ok(CreatedToken { info, token: secret, install_command })
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/registration-tokens",
    tag = "admin",
    summary = "List registration tokens (never their secrets)",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_tokens(
    State(s): State<AdminState>,
    Path(tenant_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        require_viewer(&s.principal(&headers).await?, &tenant_id)?;
        let tokens = s
            .registry
            .list_tokens(&tenant_id)
            .await
            .map_err(store_error)?;
        Ok(serde_json::json!({ "tokens": tokens }))
    }
    .await;
    reply(StatusCode::OK, r)
}

/// Body of a deactivation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateBody {
    /// Why, for the audit trail.
    #[serde(default)]
    pub reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/deactivate",
    tag = "admin",
    summary = "Revoke an agent's credential",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body = DeactivateBody,
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn deactivate(
    State(s): State<AdminState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        let actor = p.actor();
        // The body is optional: nothing, or {"reason": "..."}.
        let reason = if body.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            fleet_ops::error::parse_json::<DeactivateBody>(&body)?.reason
        };
        let cred = s
            .registry
            .agent_credential(&agent_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!("no enrolled agent {agent_id}")).with_field("agent_id")
            })?;
        require_operator(&p, &cred.tenant_id)?;
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
            let value = codec::encode(&ev).map_err(ApiError::internal)?;
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
