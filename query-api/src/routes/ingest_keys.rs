//! Ingest keys: what standard collectors (Prometheus remote-write, the OpenTelemetry
//! Collector, Telegraf) send to the gateway to write samples for one tenant.
//!
//! | route | who | what |
//! | --- | --- | --- |
//! | `POST /api/v1/admin/ingest-keys` `{"name", "description"?, "tenant_id"?}` | admins, operators of the tenant | create a key (201; the secret is shown once) |
//! | `GET /api/v1/admin/ingest-keys?tenant=` | admins, operators and viewers of the tenant | list keys: id, name, last four characters, created, revoked, last used (never secrets) |
//! | `DELETE /api/v1/admin/ingest-keys/{key_id}` | admins, operators of the key's tenant | revoke a key: it stops working |
//!
//! The tenant is the caller's own for an operator (naming another is 403, existing or
//! not); an admin names it (`tenant_id`; the list without `tenant` shows every tenant's).
//! Another tenant's key is revoked exactly as a made-up id is: 404. Keys are `fsi_` and 43
//! random URL-safe characters, stored as SHA-256 with their last four characters for
//! display; at most [`MAX_ACTIVE_INGEST_KEYS`] unrevoked per tenant. Every create and
//! revoke is written to the audit log (`ingest_key.create`, `ingest_key.revoke`).
//!
//! Operators may make them, as they make registration tokens: an ingest key can only write
//! samples for its tenant, never read or administer anything. A revoked key is refused by
//! every gateway within its `auth-cache` (30 s by default): gateways cache a checked key
//! that long (see the gateway's `ingest_auth`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, post};
use axum::Router;
use fleet_registry::{
    hash_secret, new_secret, IngestKeyInfo, NewIngestKey, StoreError, INGEST_KEY_PREFIX,
};
use fleet_service::{ApiError, FieldJson};
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, read_scope, require_operator, require_writer, Principal};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::name_field;
use crate::query::Params;
use crate::routes::agents::TenantParams;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/admin/ingest-keys",
            post(create_ingest_key).get(list_ingest_keys),
        )
        .route(
            "/api/v1/admin/ingest-keys/{key_id}",
            delete(revoke_ingest_key),
        )
}

/// Most unrevoked ingest keys one tenant may hold.
pub const MAX_ACTIVE_INGEST_KEYS: usize = 100;

/// Longest description, in characters.
const MAX_DESCRIPTION_CHARS: usize = 1000;

/// Body of ingest key creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestKeyBody {
    /// What sends with the key (`prometheus-eu`, `telegraf`); need not be unique.
    #[schema(max_length = 200, pattern = "fleet:name")]
    pub name: String,
    /// Longer description.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = "fleet:name")]
    pub description: Option<String>,
    /// Tenant the key writes for: an admin names it; an operator's is its own (naming
    /// another is 403).
    #[serde(default)]
    #[schema(min_length = 1)]
    pub tenant_id: Option<String>,
}

/// A new ingest key: the secret is shown here only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedIngestKey {
    /// The key as listed later.
    #[serde(flatten)]
    pub info: IngestKeyInfo,
    /// The secret (`fsi_...`); it cannot be shown again.
    pub key: String,
}

/// Answer of an ingest key listing.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IngestKeyList {
    /// The keys, newest first (never their secrets).
    #[schema(value_type = Vec<Object>)]
    pub keys: Vec<IngestKeyInfo>,
}

#[utoipa::path(
    post,
    path = "/api/v1/admin/ingest-keys",
    tag = "admin",
    summary = "Create an ingest key for collectors (admins, operators of the tenant; the secret is shown once)",
    request_body = IngestKeyBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_ingest_key(
    State(s): State<AppState>,
    p: Principal,
    body: Result<FieldJson<IngestKeyBody>, ApiError>,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let b = body?.0;
        if b.tenant_id.as_deref() == Some("") {
            return Err(ApiError::invalid_field("tenant_id", "must not be empty"));
        }
        let Some(tenant_id) = b.tenant_id.or_else(|| p.tenant_id.clone()) else {
            return Err(invalid_combination(
                "tenant_id",
                "an admin names the tenant the key writes for",
            ));
        };
        require_operator(&p, &tenant_id)?;
        let name = name_field("name", &b.name)?;
        let description = b
            .description
            .as_deref()
            .map(|d| {
                fleet_schemas::text::check_name(d, MAX_DESCRIPTION_CHARS)
                    .map(str::to_owned)
                    .map_err(|m| ApiError::invalid_field("description", m))
            })
            .transpose()?;
        let active = s
            .registry
            .list_ingest_keys(&tenant_id)
            .await
            .map_err(store_error)?
            .iter()
            .filter(|k| k.revoked_at.is_none())
            .count();
        if active >= MAX_ACTIVE_INGEST_KEYS {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_keys",
                format!(
                    "the tenant has {active} unrevoked ingest keys, the most allowed: revoke one first"
                ),
            )
            .with_field("tenant_id"));
        }
        let key = new_secret(INGEST_KEY_PREFIX);
        let last4 = &key[key.len() - 4..];
        let new = NewIngestKey {
            tenant_id: tenant_id.clone(),
            name,
            description,
            created_by: p.actor(),
            created_at: fleet_schemas::time::now_micros(),
        };
        let info = s
            .registry
            .create_ingest_key(&new, hash_secret(&key), last4)
            .await
            .map_err(|e| match e {
                StoreError::NotFound(_) => {
                    invalid_combination("tenant_id", "there is no such tenant")
                }
                other => store_error(other),
            })?;
        tracing::info!(key_id = %info.key_id, %tenant_id, actor = %p.actor(), "Ingest key created.");
        s.audit(
            &p,
            Some(&tenant_id),
            "ingest_key.create",
            &info.key_id,
            Some(serde_json::json!({ "name": info.name })),
        )
        .await;
        Ok(CreatedIngestKey { info, key })
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/ingest-keys",
    tag = "admin",
    summary = "List ingest keys, without secrets",
    params(TenantParams),
    responses((status = 200, description = "Done", body = IngestKeyList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_ingest_keys(
    State(s): State<AppState>,
    p: Principal,
    Params(q): Params<TenantParams>,
) -> Response {
    let r = async {
        let tenants = match read_scope(&p, q.tenant.as_deref())? {
            Some(t) => vec![t],
            None => s
                .registry
                .list_tenants()
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|t| t.tenant_id)
                .collect(),
        };
        let mut keys = Vec::new();
        for t in &tenants {
            keys.extend(s.registry.list_ingest_keys(t).await.map_err(store_error)?);
        }
        Ok(IngestKeyList { keys })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    delete,
    path = "/api/v1/admin/ingest-keys/{key_id}",
    tag = "admin",
    summary = "Revoke an ingest key (admins, operators of its tenant); gateways refuse it within their auth-cache",
    params(("key_id" = String, Path, description = "Key id (from the listing)")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn revoke_ingest_key(
    State(s): State<AppState>,
    Path(key_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        // An operator revokes in its own tenant only: another tenant's key is not found,
        // as a made-up id.
        let revoked = s
            .registry
            .revoke_ingest_key(
                p.tenant_id.as_deref(),
                &key_id,
                fleet_schemas::time::now_micros(),
            )
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("ingest key", "key_id"))?;
        tracing::info!(%key_id, tenant_id = %revoked.tenant_id, actor = %p.actor(), "Ingest key revoked.");
        s.audit(
            &p,
            Some(&revoked.tenant_id),
            "ingest_key.revoke",
            &key_id,
            Some(serde_json::json!({ "name": revoked.name })),
        )
        .await;
        Ok(serde_json::json!({ "key_id": key_id, "revoked": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}
