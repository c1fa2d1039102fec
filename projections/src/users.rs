//! Users of the query API and their API keys (see [`crate::auth`] for what roles allow).
//!
//! | route | who | what |
//! | --- | --- | --- |
//! | `POST /api/v1/users` `{"name", "role", "tenant_id"?}` | admin | create a user with a first API key (201; the key is shown once) |
//! | `GET /api/v1/users` | admin | list users (never keys) |
//! | `POST /api/v1/users/{user_id}/keys` | admin, or the user itself | a new API key (201; shown once) |
//! | `POST /api/v1/users/{user_id}/disable` | admin | disable a user: its keys stop working |
//!
//! `role` is `admin` (no `tenant_id`), `operator` or `viewer` (with `tenant_id`). Names
//! are unique and name the user in audit events (`actor`); `admin` is the bootstrap key's
//! and reserved. Keys are `fsu_` and 43 random URL-safe characters, stored as SHA-256
//! with their last four characters for display.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fleet_service::ApiError;
use fleet_stores::registry::{hash_secret, new_secret, ApiKeyInfo, NewUser, Role, User};
use fleet_stores::StoreError;
use serde::{Deserialize, Serialize};

use crate::admin::{name_field, reply, store_error, AdminState};
use crate::auth::{require_admin, BOOTSTRAP_ADMIN};

/// Body of user creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserBody {
    /// Unique name.
    pub name: String,
    /// `admin`, `operator` or `viewer`.
    pub role: String,
    /// Tenant of an operator or viewer.
    #[serde(default)]
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

async fn new_key(s: &AdminState, user_id: &str) -> Result<CreatedKey, ApiError> {
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
            StoreError::NotFound(_) => {
                ApiError::not_found(format!("no user {user_id}")).with_field("user_id")
            }
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
    State(s): State<AdminState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        require_admin(&p)?;
        let b: UserBody = fleet_service::error::parse_json(&body)?;
        let name = name_field("name", &b.name)?;
        if name.eq_ignore_ascii_case(BOOTSTRAP_ADMIN) {
            return Err(ApiError::invalid_field(
                "name",
                "`admin` is the bootstrap administrator's name: choose another",
            ));
        }
        let role = Role::parse(&b.role)
            .ok_or_else(|| ApiError::invalid_field("role", "must be admin, operator or viewer"))?;
        let tenant_id = b
            .tenant_id
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty());
        match (role, &tenant_id) {
            (Role::Admin, Some(_)) => {
                return Err(ApiError::invalid_field(
                    "tenant_id",
                    "an admin belongs to no tenant: leave it out",
                ))
            }
            (Role::Operator | Role::Viewer, None) => {
                return Err(ApiError::invalid_field(
                    "tenant_id",
                    format!("an {} needs a tenant", role.as_str()),
                ))
            }
            _ => {}
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
                StoreError::NotFound(_) => ApiError::not_found(format!(
                    "no tenant {}",
                    tenant_id.as_deref().unwrap_or_default()
                ))
                .with_field("tenant_id"),
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
pub(crate) async fn list_users(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    let r = async {
        require_admin(&s.principal(&headers).await?)?;
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
    summary = "Create another API key for a user",
    params(("user_id" = String, Path, description = "User id")),
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_key(
    State(s): State<AdminState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        if p.user_id != user_id {
            require_admin(&p)?;
        }
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
    State(s): State<AdminState>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        require_admin(&p)?;
        let changed = s
            .registry
            .set_user_disabled(&user_id, true)
            .await
            .map_err(store_error)?;
        if !changed {
            return Err(ApiError::not_found(format!("no user {user_id}")).with_field("user_id"));
        }
        s.keys.clear();
        tracing::info!(%user_id, actor = %p.actor(), "User disabled.");
        s.audit(&p, None, "user.disable", &user_id, None).await;
        Ok(serde_json::json!({ "user_id": user_id, "disabled": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}
