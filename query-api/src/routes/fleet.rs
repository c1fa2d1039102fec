//! The caller, the fleet's counters and the audit log.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/me` | who the key belongs to (user, role, tenant) |
//! | `GET /api/v1/overview?tenant=` | fleet counters: agents by status, open alerts by severity, pending commands |
//! | `GET /api/v1/audit?tenant=&actor=&limit=` | the audit log, newest first |

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use fleet_read_model::{AuditEntry, AuditQuery, FleetOverview};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{read_scope, Principal};
use crate::error::store_error;
use crate::query::{limit, Limit, Params};
use crate::routes::agents::TenantParams;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/me", get(me))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/audit", get(list_audit))
}

#[utoipa::path(
    get,
    path = "/api/v1/me",
    tag = "query",
    summary = "Who the key belongs to",
    responses((status = 200, description = "Done", body = crate::auth::Principal), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn me(p: Principal) -> Json<Principal> {
    Json(p)
}

/// Answer of `GET /api/v1/overview`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Overview {
    /// The tenant counted (absent: every tenant).
    pub tenant_id: Option<String>,
    /// The counters.
    #[serde(flatten)]
    pub counts: FleetOverview,
}

#[utoipa::path(
    get,
    path = "/api/v1/overview",
    tag = "query",
    summary = "Fleet counters",
    params(TenantParams),
    responses((status = 200, description = "Done", body = Overview), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn overview(
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<Overview>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let counts = s
        .read_model
        .overview(tenant.as_deref())
        .await
        .map_err(store_error)?;
    Ok(Json(Overview {
        tenant_id: tenant,
        counts,
    }))
}

/// Parameters of the audit log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Only this user
    #[param(min_length = 1)]
    pub actor: Option<String>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
}

/// Answer of the audit log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditList {
    /// Entries, newest first.
    pub entries: Vec<AuditEntry>,
}

#[utoipa::path(
    get,
    path = "/api/v1/audit",
    tag = "query",
    summary = "The audit log, newest first",
    params(AuditParams),
    responses((status = 200, description = "Done", body = AuditList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_audit(
    Params(q): Params<AuditParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AuditList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let entries = s
        .read_model
        .list_audit(&AuditQuery {
            tenant_id: tenant,
            actor: q.actor,
            limit: limit(q.limit),
        })
        .await
        .map_err(store_error)?;
    Ok(Json(AuditList { entries }))
}
