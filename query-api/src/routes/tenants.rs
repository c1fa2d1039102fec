//! Tenants, their locations and registration tokens (admin routes).
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/tenants` `{"name"}` | create a tenant (admins); it gets the default rules |
//! | `GET /api/v1/tenants` | list tenants (admins) |
//! | `POST /api/v1/tenants/{tenant_id}/locations` `{"name"}` | create a location |
//! | `GET /api/v1/tenants/{tenant_id}/locations` | list locations |
//! | `POST /api/v1/tenants/{tenant_id}/registration-tokens` `{"location_id"?, "device_name"?, "expires_in"?}` | create a one-time token (secret shown once, with an install command) |
//! | `GET /api/v1/tenants/{tenant_id}/registration-tokens` | list tokens (never secrets) |
//!
//! Locations and tokens are for operators of the tenant (viewers of it may list them) and
//! admins; a tenant other than the caller's is 403, existing or not. Every accepted change
//! is written to the audit log.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use fleet_registry::{hash_secret, new_secret, NewToken, StoreError};
use fleet_service::{ApiError, FieldJson};
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, require_admin, require_operator, require_viewer, Principal};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::name_field;
use crate::routes::rules;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
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
    State(s): State<AppState>,
    p: Principal,
    body: Result<FieldJson<NameBody>, ApiError>,
) -> Response {
    let r = async {
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
        let default_rules = rules::write_default_rules(s.log.as_ref(), &s.wire, &t.tenant_id, &actor)
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
pub(crate) async fn list_tenants(State(s): State<AppState>, p: Principal) -> Response {
    let r = async {
        require_admin(&p)?;
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
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    body: Result<FieldJson<NameBody>, ApiError>,
) -> Response {
    let r = async {
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
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
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
    pub info: fleet_registry::TokenInfo,
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
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    body: Result<FieldJson<TokenBody>, ApiError>,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let actor = p.actor();
        let b = body?.0;
        let lifetime = match &b.expires_in {
            None => std::time::Duration::from_secs(86_400),
            Some(v) => crate::query::parse_duration(v, &["m", "h", "d"])
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
            StoreError::NotFound(_) => invalid_combination("location_id", "the tenant has no such location"),
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
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
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

/// Ok when the tenant exists; 404 naming `field` otherwise (the path's `tenant_id` or the
/// query's `tenant`).
pub(crate) async fn known_tenant(
    s: &AppState,
    tenant_id: &str,
    field: &'static str,
) -> Result<(), ApiError> {
    match s
        .registry
        .get_tenant(tenant_id)
        .await
        .map_err(store_error)?
    {
        Some(_) => Ok(()),
        None => Err(crate::auth::not_found("tenant", field)),
    }
}
