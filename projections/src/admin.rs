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
//! | `POST /api/v1/users`, `GET /api/v1/users`, `GET`/`POST /api/v1/users/{user_id}/keys`, `DELETE /api/v1/users/{user_id}/keys/{key_id}`, `POST /api/v1/users/{user_id}/disable`, `/enable` | users and API keys, see [`crate::users`] |
//! | rules and alert handling | see [`crate::rules_api`]; a new tenant gets the default rules |
//!
//! Routes that name an object by id check the caller's role before looking it up, and
//! answer another tenant's object as a missing one (see [`crate::auth`]). Every accepted
//! change is written to the audit log. An `Idempotency-Key` header (commands, rules) binds
//! the id it names to the first request: a retry with the same request gets the same
//! answer, another request under the same key 409 `idempotency_key_reused`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, post, put};
use axum::{Json, Router};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::{codec, ids, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_service::{ApiError, FieldJson};
use fleet_stores::registry::{hash_secret, new_secret, NewToken, Registry, RequestKeyClaim};
use fleet_stores::{ReadModel, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::{
    self, not_found, require_admin, require_operator, require_operator_of, require_viewer,
    require_writer, KeyCache, Principal,
};
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

    /// Remembers resolved user keys for `ttl` (`api-key-cache-ttl`): the longest time
    /// another API instance may still accept a key after it was revoked or its user
    /// disabled.
    #[must_use]
    pub fn with_key_cache_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.keys = KeyCache::new(ttl);
        self
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
            post(crate::users::create_key).get(crate::users::list_keys),
        )
        .route(
            "/api/v1/users/{user_id}/keys/{key_id}",
            delete(crate::users::revoke_key),
        )
        .route(
            "/api/v1/users/{user_id}/disable",
            post(crate::users::disable_user),
        )
        .route(
            "/api/v1/users/{user_id}/enable",
            post(crate::users::enable_user),
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
        .layer(axum::middleware::map_response(crate::api::json_errors))
        .with_state(state)
}

/// A store's error as an answer. An unavailable store's message names its host and
/// database: that goes to the log only (the caller may not even be authenticated yet).
pub(crate) fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound(m) => ApiError::not_found(m),
        StoreError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
        StoreError::Unavailable(m) => {
            tracing::warn!(error = %m, "Store unavailable.");
            ApiError::unavailable("the store is unavailable; retry", 5)
        }
        StoreError::InvalidQuery(m) => ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", m),
        other => ApiError::internal(other),
    }
}

/// The `Idempotency-Key` header, if sent: 1 to 200 visible ASCII characters
/// ([`IDEMPOTENCY_KEY_PATTERN`]), else 400.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let v = v.as_bytes();
    if v.is_empty() || v.len() > 200 || !v.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(ApiError::invalid_field(
            "Idempotency-Key",
            "must be 1 to 200 visible ASCII characters (no spaces)",
        ));
    }
    Ok(Some(String::from_utf8_lossy(v).into_owned()))
}

/// [`idempotency_key`]'s rule as a pattern, for the OpenAPI document.
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,200}$";

/// Binds `id` (named by an `Idempotency-Key`) to `request`, compared by the SHA-256 of its
/// JSON (serialize maps as `BTreeMap`, so equal requests are equal text). The first
/// request under a key and its retries pass; another request is 409.
pub(crate) async fn claim_idempotent(
    s: &AdminState,
    id: &str,
    request: &impl Serialize,
) -> Result<RequestKeyClaim, ApiError> {
    let canonical = serde_json::to_string(request).map_err(ApiError::internal)?;
    let claim = s
        .registry
        .claim_request_key(
            id,
            hash_secret(&canonical),
            fleet_schemas::time::now_micros(),
        )
        .await
        .map_err(store_error)?;
    if claim == RequestKeyClaim::Different {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different request: use a new key",
        )
        .with_field("Idempotency-Key"));
    }
    Ok(claim)
}

pub(crate) fn reply<T: Serialize>(status: StatusCode, r: Result<T, ApiError>) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// A name (tenant, location, user, device), trimmed; see
/// [`fleet_schemas::text::check_name`]. 400 naming `field` otherwise.
pub(crate) fn name_field(field: &str, v: &str) -> Result<String, ApiError> {
    fleet_schemas::text::check_name(v, MAX_NAME_BYTES)
        .map(str::to_owned)
        .map_err(|m| ApiError::invalid_field(field, m))
}

/// Longest name, in characters.
pub(crate) const MAX_NAME_BYTES: usize = 200;

/// Parses a JSON object body into `T`, naming the field at fault. Anything but an object
/// is a 400: serde would also fill a struct from an array.
pub(crate) fn object_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::invalid_field(
            "body",
            "the body must be a JSON object",
        ));
    }
    fleet_service::error::parse_json(body)
}

/// A whole number in a JSON body, also when written with a zero fraction (`60.0`): JSON
/// Schema's `integer` (and so the OpenAPI document) allows that form. `null` is absent.
pub(crate) fn whole_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::Error as _;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(i) = n.as_i64() {
        return Ok(Some(i));
    }
    match n.as_f64() {
        #[allow(clippy::cast_possible_truncation)] // whole and within ±2^53 checked first
        Some(f) if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 => Ok(Some(f as i64)),
        _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
    }
}

/// Body of tenant and location creation.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NameBody {
    /// Display name: at most 200 characters, not only white space, no control, invisible
    /// or bidirectional-formatting characters.
    #[schema(max_length = 200, pattern = "fleet:name")]
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
        let p = s.principal(&headers).await?;
        require_operator(&p, &tenant_id)?;
        let name = name_field("name", &body?.0.name)?;
        let location = s
            .registry
            .create_location(&tenant_id, &name, fleet_schemas::time::now_micros())
            .await
            .map_err(store_error)?;
        tracing::info!(location_id = %location.location_id, %tenant_id, actor = %p.actor(), "Location created.");
        s.audit(
            &p,
            Some(&tenant_id),
            "location.create",
            &location.location_id,
            Some(serde_json::json!({ "name": name })),
        )
        .await;
        Ok(location)
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

/// Longest registration token lifetime.
const MAX_TOKEN_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Body of token creation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Location the agent will be placed in.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub location_id: Option<String>,
    /// Device name the agent will get.
    #[serde(default)]
    #[schema(max_length = 200, pattern = "fleet:name")]
    pub device_name: Option<String>,
    /// Lifetime, 1m to 30d: digits and one of m h d (`24h`, `30m`, `7d`). Default 24h.
    #[serde(default)]
    #[schema(
        pattern = "^0*(?:(?:[1-9]|[12][0-9]|30)d|(?:[1-9][0-9]?|[1-6][0-9]{2}|7[01][0-9]|720)h|(?:[1-9][0-9]{0,3}|[1-3][0-9]{4}|4[0-2][0-9]{3}|43200)m)$"
    )]
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
            Some(v) => crate::api::parse_duration(v, &["m", "h", "d"])
                .filter(|d| !d.is_zero() && *d <= MAX_TOKEN_LIFETIME)
                .ok_or_else(|| ApiError::invalid_field("expires_in", "must be 1m to 30d: digits and one of m h d (30m, 24h, 7d)"))?,
        };
        let device_name = b.device_name.as_deref().map(|d| name_field("device_name", d)).transpose()?;
        let now = fleet_schemas::time::now_micros();
        let secret = new_secret("fst_");
        let new = NewToken {
            tenant_id: tenant_id.clone(),
            location_id: b.location_id,
            device_name,
            // At most 30 days: no overflow.
            expires_at: now.saturating_add(i64::try_from(lifetime.as_micros()).unwrap_or(i64::MAX)),
            created_by: actor.clone(),
            created_at: now,
        };
        if s.registry.get_tenant(&tenant_id).await.map_err(store_error)?.is_none() {
            return Err(not_found("tenant", "tenant_id"));
        }
        // The tenant exists: a missing location is a bad reference in the body.
        let info = s.registry.create_token(&new, hash_secret(&secret)).await.map_err(|e| match e {
            StoreError::NotFound(_) => crate::api::invalid_combination("location_id", "the tenant has no such location"),
            other => store_error(other),
        })?;
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

/// The credential record of an enrolled agent the caller may act on (after
/// [`require_writer`]); unknown and another tenant's are the same 404.
pub(crate) async fn agent_of(
    s: &AdminState,
    p: &Principal,
    agent_id: &str,
) -> Result<fleet_stores::registry::AgentCredential, ApiError> {
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

/// Body of a deactivation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeactivateBody {
    /// Why, for the audit trail.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = "fleet:name")]
    pub reason: Option<String>,
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/deactivate",
    tag = "admin",
    summary = "Revoke an agent's credential",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body(content = Option<DeactivateBody>, description = "Optional: nothing, or a reason"),
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
        require_writer(&p)?;
        let actor = p.actor();
        // The body is optional: nothing, or {"reason": "..."}.
        let reason = if body.iter().all(u8::is_ascii_whitespace) || body.trim_ascii() == b"null" {
            None
        } else {
            object_body::<DeactivateBody>(&body)?
                .reason
                .map(|r| {
                    fleet_schemas::text::check_name(&r, 1000)
                        .map(str::to_owned)
                        .map_err(|m| ApiError::invalid_field("reason", m))
                })
                .transpose()?
        };
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    #[tokio::test]
    async fn an_unavailable_store_is_a_503_without_its_address() {
        let e = store_error(StoreError::Unavailable(
            "find API key on postgres db.internal.example:5432/fleet_prod: connection refused"
                .into(),
        ));
        let resp = e.into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(resp.headers().contains_key(axum::http::header::RETRY_AFTER));
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        let text = String::from_utf8_lossy(&body);
        for secret in ["db.internal", "5432", "fleet_prod", "postgres"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
    }
}
