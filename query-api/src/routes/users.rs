//! Users of the query API and their API keys (see [`crate::auth`] for what roles allow).
//!
//! | route | who | what |
//! | --- | --- | --- |
//! | `POST /api/v1/users` `{"name", "role", "tenant_id"?}` | admin | create a user with a first API key (201; the key is shown once) |
//! | `GET /api/v1/users` | admin | list users (never keys) |
//! | `POST /api/v1/users/{user_id}/keys` | admin | a new API key (201; shown once); at most [`MAX_ACTIVE_KEYS`] unrevoked keys per user |
//! | `GET /api/v1/users/{user_id}/keys` | admin, or the user itself | the user's keys: id, last four characters, created, revoked (never secrets) |
//! | `DELETE /api/v1/users/{user_id}/keys/{key_id}` | admin, or the user itself | revoke one key: it stops working |
//! | `POST /api/v1/users/{user_id}/disable` | admin | disable a user: its keys stop working |
//! | `POST /api/v1/users/{user_id}/enable` | admin | enable a disabled user again: its unrevoked keys work again |
//!
//! `role` is `admin` (no `tenant_id`), `operator` or `viewer` (with `tenant_id`). Names
//! are unique and name the user in audit events (`actor`); `admin` is the bootstrap key's
//! and reserved. Keys are `fsu_` and 43 random URL-safe characters, stored as SHA-256
//! with their last four characters for display.
//!
//! Who may make keys: admins only (the bootstrap key or an admin user). An operator's or
//! viewer's key cannot mint more keys, not even for its own user: a leaked key then stays
//! one key, and revoking it (or disabling the user) ends the leak; no copy survives that
//! the owner does not know of. A user may still list and revoke its own keys. An admin's
//! key can do everything (it could create another admin user anyway): a leaked admin key
//! is answered by disabling that user and reading the audit log. The cap on unrevoked keys
//! bounds what a careless script can pile up.
//!
//! Revoking a key or disabling a user clears this instance's key cache at once; other API
//! instances re-check a cached key against the registry after `api-key-cache-ttl`
//! (default 10 s), so every instance refuses it within that time.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Router;
use fleet_registry::{hash_secret, new_secret, ApiKeyInfo, NewUser, Role, StoreError, User};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, require_admin, Principal, BOOTSTRAP_ADMIN};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::name_field;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users", post(create_user).get(list_users))
        .route(
            "/api/v1/users/{user_id}/keys",
            post(create_key).get(list_keys),
        )
        .route("/api/v1/users/{user_id}/keys/{key_id}", delete(revoke_key))
        .route("/api/v1/users/{user_id}/disable", post(disable_user))
        .route("/api/v1/users/{user_id}/enable", post(enable_user))
}

/// Most unrevoked API keys one user may hold.
pub const MAX_ACTIVE_KEYS: usize = 10;

/// Body of user creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// Unique name (`admin` is the bootstrap key's).
    #[schema(max_length = 200, pattern = "fleet:name")]
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    #[schema(pattern = "^(admin|operator|viewer)$")]
    pub role: String,
    /// Tenant of an operator or viewer (required for them; an admin has none: 422
    /// otherwise).
    #[serde(default)]
    #[schema(min_length = 1)]
    pub tenant_id: Option<String>,
}

/// A new API key: the secret is shown here only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedKey {
    /// The key as stored (id, owner, last four characters, creation time).
    #[serde(flatten)]
    pub info: ApiKeyInfo,
    /// The secret; it cannot be shown again.
    pub key: String,
}

/// Answer of user creation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedUser {
    /// The user.
    pub user: User,
    /// Its first API key.
    pub api_key: CreatedKey,
}

async fn new_key(s: &AppState, user_id: &str) -> Result<CreatedKey, ApiError> {
    let active = s
        .registry
        .list_api_keys(user_id)
        .await
        .map_err(store_error)?
        .iter()
        .filter(|k| k.revoked_at.is_none())
        .count();
    if active >= MAX_ACTIVE_KEYS {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_keys",
            format!("the user has {active} unrevoked keys, the most allowed: revoke one first"),
        )
        .with_field("user_id"));
    }
    let key = new_secret("fsu_");
    let last4: String = key[key.len() - 4..].to_owned();
    let info = s
        .registry
        .create_api_key(
            user_id,
            hash_secret(&key),
            &last4,
            fleet_schemas::time::now_micros(),
        )
        .await
        .map_err(|e| match e {
            StoreError::NotFound(_) => not_found("user", "user_id"),
            other => store_error(other),
        })?;
    Ok(CreatedKey { info, key })
}

#[utoipa::path(
    post,
    path = "/api/v1/users",
    tag = "users",
    summary = "Create a user with an API key (admins)",
    request_body = UserBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_user(
    State(s): State<AppState>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_admin(&p)?;
        let b: UserBody = crate::input::object_body(&body)?;
        let name = name_field("name", &b.name)?;
        let role = Role::parse(&b.role)
            .ok_or_else(|| ApiError::invalid_field("role", "must be admin, operator or viewer"))?;
        let tenant_id = b.tenant_id;
        if tenant_id.as_deref() == Some("") {
            return Err(ApiError::invalid_field("tenant_id", "must not be empty"));
        }
        match (role, &tenant_id) {
            (Role::Admin, Some(_)) => {
                return Err(invalid_combination(
                    "tenant_id",
                    "an admin belongs to no tenant: leave it out",
                ))
            }
            (Role::Operator | Role::Viewer, None) => {
                return Err(invalid_combination(
                    "tenant_id",
                    format!("an {} needs a tenant", role.as_str()),
                ))
            }
            _ => {}
        }
        if name.eq_ignore_ascii_case(BOOTSTRAP_ADMIN) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                "`admin` is the bootstrap administrator's name: choose another",
            )
            .with_field("name"));
        }
        let user = s
            .registry
            .create_user(&NewUser {
                name,
                role,
                tenant_id: tenant_id.clone(),
                created_at: fleet_schemas::time::now_micros(),
            })
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    invalid_combination("tenant_id", "there is no such tenant")
                }
                StoreError::Conflict(m) => {
                    ApiError::new(StatusCode::CONFLICT, "conflict", m).with_field("name")
                }
                other => store_error(other),
            })?;
        let api_key = new_key(&s, &user.user_id).await?;
        tracing::info!(user_id = %user.user_id, name = %user.name, role = role.as_str(), actor = %p.actor(), "User created.");
        s.audit(&p, user.tenant_id.as_deref(), "user.create", &user.user_id, Some(serde_json::json!({ "name": user.name, "role": role.as_str() }))).await;
        Ok(CreatedUser { user, api_key })
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/users",
    tag = "users",
    summary = "List users (admins)",
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_users(State(s): State<AppState>, p: Principal) -> Response {
    let r = async {
        require_admin(&p)?;
        let users = s.registry.list_users().await.map_err(store_error)?;
        Ok(serde_json::json!({ "users": users }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/keys",
    tag = "users",
    summary = "Create another API key for a user (admins)",
    params(("user_id" = String, Path, description = "User id")),
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_key(
    State(s): State<AppState>,
    Path(user_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_admin(&p)?;
        let key = new_key(&s, &user_id).await?;
        tracing::info!(%user_id, key_id = %key.info.key_id, actor = %p.actor(), "API key created.");
        s.audit(
            &p,
            None,
            "user.key",
            &user_id,
            Some(serde_json::json!({ "key_id": key.info.key_id })),
        )
        .await;
        Ok(key)
    }
    .await;
    reply(StatusCode::CREATED, r)
}

/// Admins, or the user itself.
fn require_self_or_admin(p: &Principal, user_id: &str) -> Result<(), ApiError> {
    if p.user_id == user_id {
        return Ok(());
    }
    require_admin(p)
}

/// Answer of a key listing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyList {
    /// The keys, newest first (never their secrets).
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<ApiKeyInfo>,
}

#[utoipa::path(
    get,
    path = "/api/v1/users/{user_id}/keys",
    tag = "users",
    summary = "A user's API keys, without secrets (admins, or the user itself)",
    params(("user_id" = String, Path, description = "User id")),
    responses((status = 200, description = "Done", body = KeyList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_keys(
    State(s): State<AppState>,
    Path(user_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_self_or_admin(&p, &user_id)?;
        if s.registry
            .get_user(&user_id)
            .await
            .map_err(store_error)?
            .is_none()
        {
            return Err(not_found("user", "user_id"));
        }
        let keys = s
            .registry
            .list_api_keys(&user_id)
            .await
            .map_err(store_error)?;
        Ok(KeyList { keys })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    delete,
    path = "/api/v1/users/{user_id}/keys/{key_id}",
    tag = "users",
    summary = "Revoke one API key (admins, or the user itself)",
    params(("user_id" = String, Path, description = "User id"), ("key_id" = String, Path, description = "Key id (from the key listing)")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_key(
    State(s): State<AppState>,
    Path((user_id, key_id)): Path<(String, String)>,
    p: Principal,
) -> Response {
    let r = async {
        require_self_or_admin(&p, &user_id)?;
        let found = s
            .registry
            .revoke_api_key(&user_id, &key_id, fleet_schemas::time::now_micros())
            .await
            .map_err(store_error)?;
        if !found {
            return Err(not_found("key of this user", "key_id"));
        }
        s.keys.cache.clear();
        tracing::info!(%user_id, %key_id, actor = %p.actor(), "API key revoked.");
        s.audit(
            &p,
            None,
            "user.key.revoke",
            &user_id,
            Some(serde_json::json!({ "key_id": key_id })),
        )
        .await;
        Ok(serde_json::json!({ "user_id": user_id, "key_id": key_id, "revoked": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}

/// Disables or enables a user (admins).
async fn set_disabled(
    s: &AppState,
    p: &Principal,
    user_id: &str,
    disabled: bool,
) -> Result<serde_json::Value, ApiError> {
    require_admin(p)?;
    let changed = s
        .registry
        .set_user_disabled(user_id, disabled)
        .await
        .map_err(store_error)?;
    if !changed {
        return Err(not_found("user", "user_id"));
    }
    s.keys.cache.clear();
    let action = if disabled {
        "user.disable"
    } else {
        "user.enable"
    };
    tracing::info!(%user_id, actor = %p.actor(), action, "User switched.");
    s.audit(p, None, action, user_id, None).await;
    Ok(serde_json::json!({ "user_id": user_id, "disabled": disabled }))
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/disable",
    tag = "users",
    summary = "Disable a user (admins)",
    params(("user_id" = String, Path, description = "User id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn disable_user(
    State(s): State<AppState>,
    Path(user_id): Path<String>,
    p: Principal,
) -> Response {
    reply(StatusCode::OK, set_disabled(&s, &p, &user_id, true).await)
}

#[utoipa::path(
    post,
    path = "/api/v1/users/{user_id}/enable",
    tag = "users",
    summary = "Enable a disabled user again (admins)",
    params(("user_id" = String, Path, description = "User id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn enable_user(
    State(s): State<AppState>,
    Path(user_id): Path<String>,
    p: Principal,
) -> Response {
    reply(StatusCode::OK, set_disabled(&s, &p, &user_id, false).await)
}
