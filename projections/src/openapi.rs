//! The OpenAPI document of the query and admin API, generated from the handlers'
//! `#[utoipa::path]` annotations and the types' `ToSchema` derives, served at
//! `GET /api/openapi.json` (no key needed: it describes, it does not disclose).

use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// The body of every error answer (`fleet_service::ApiError`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable code (`invalid_field`, `not_found`, `forbidden`, ...).
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request field at fault, when there is one.
    pub field: Option<String>,
}

#[derive(Debug)]
struct BearerAuth;

/// The error answers every route may give, each with an [`ErrorBody`].
#[derive(Debug, utoipa::IntoResponses)]
pub enum ApiErrors {
    /// Bad input.
    #[response(
        status = 400,
        description = "Bad input; the JSON error names the field"
    )]
    BadRequest(ErrorBody),
    /// No key.
    #[response(status = 401, description = "No or unknown API key")]
    Unauthorized(ErrorBody),
    /// Role or tenant.
    #[response(status = 403, description = "The key may not do this (role or tenant)")]
    Forbidden(ErrorBody),
    /// Not found.
    #[response(status = 404, description = "Not found (also another tenant's)")]
    NotFound(ErrorBody),
}

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The bootstrap admin key (`admin-api-key`) or a user's API key (`fsu_...`)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Fleetstream API",
        description = "Query and administration API of Fleetstream. Every route is scoped to a tenant: operators and viewers see their own; admins every tenant."
    ),
    modifiers(&BearerAuth),
    paths(
        crate::api::me,
        crate::api::overview,
        crate::api::list_agents,
        crate::api::get_agent,
        crate::api::agent_metrics,
        crate::api::list_alerts,
        crate::api::list_audit,
        crate::api::commands_software_tickets::agent_commands,
        crate::api::commands_software_tickets::get_command,
        crate::api::commands_software_tickets::agent_software,
        crate::api::commands_software_tickets::list_tickets,
        crate::admin::create_tenant,
        crate::admin::list_tenants,
        crate::admin::create_location,
        crate::admin::list_locations,
        crate::admin::create_token,
        crate::admin::list_tokens,
        crate::admin::deactivate,
        crate::tags::put_tags,
        crate::commands::request_command,
        crate::commands::approve_command,
        crate::users::create_user,
        crate::users::list_users,
        crate::users::create_key,
        crate::users::disable_user,
        crate::rules_api::create_rule,
        crate::rules_api::list_rules,
        crate::rules_api::write_defaults,
        crate::rules_api::update_rule,
        crate::rules_api::delete_rule,
        crate::rules_api::disable_rule,
        crate::rules_api::enable_rule,
        crate::rules_api::acknowledge_alert,
        crate::rules_api::resolve_alert,
    ),
    components(schemas(ErrorBody))
)]
pub struct ApiDoc;

/// The document as JSON.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /api/openapi.json`.
pub fn router() -> Router {
    Router::new().route(
        "/api/openapi.json",
        get(|| async { Json(document()).into_response() }),
    )
}
