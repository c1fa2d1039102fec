//! The router: every API route with its state, the request metrics, the JSON error format
//! and the request spans; the OpenAPI document; the dashboard.

use axum::middleware;
use axum::Router;
use tower_http::trace::TraceLayer;

use crate::routes::{
    agents, command_groups, command_output, commands, dashboard, events, fleet, ingest_keys,
    notifications, prometheus, remote_config, rules, tags, tenants, tickets, users,
};
use crate::state::AppState;

/// The query and admin API, `GET /api/openapi.json` and the dashboard (without
/// `/healthz`, `/readyz`, `/metrics`, which the role adds).
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(fleet::routes())
        .merge(agents::routes())
        .merge(tenants::routes())
        .merge(users::routes())
        .merge(ingest_keys::routes())
        .merge(notifications::routes())
        .merge(commands::routes())
        .merge(command_groups::routes())
        .merge(command_output::routes())
        .merge(rules::routes())
        .merge(tags::routes())
        .merge(remote_config::routes())
        .merge(tickets::routes())
        .merge(events::routes())
        .merge(prometheus::routes())
        .route_layer(middleware::from_fn(crate::metrics::track))
        .layer(middleware::map_response(crate::error::json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(fleet_service::endpoints::http_span))
        .with_state(state)
        .merge(crate::openapi::router())
        .merge(dashboard::router())
}
