//! Metrics the query API promises on `/metrics`, and the middleware that records the
//! request ones for every route.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;

/// Query API requests by route and status.
pub const API_REQUESTS: &str = "fleet_api_requests_total";

/// Query API latency by route.
pub const API_SECONDS: &str = "fleet_api_request_seconds";

/// Audit entries that could not be recorded (the change itself happened).
pub const AUDIT_FAILURES: &str = "fleet_api_audit_failures_total";

/// Requests refused around authentication, by status: 401 (no or unknown key, charged to
/// the client address) and 429 (the address past its failure budget, or the user past
/// its request rate).
pub const API_AUTH_REFUSED: &str = "fleet_api_auth_refused_total";

/// Every metric name above.
pub const ALL: &[&str] = &[API_REQUESTS, API_SECONDS, AUDIT_FAILURES, API_AUTH_REFUSED];

/// Counts a request refused around authentication.
pub(crate) fn auth_refused(status: axum::http::StatusCode) {
    ::metrics::counter!(API_AUTH_REFUSED, "status" => status.as_u16().to_string()).increment(1);
}

/// Times and counts a request by its route template (`/api/v1/agents/{agent_id}`, never
/// the ids) and status. Installed with `Router::route_layer`, so only matched routes are
/// recorded.
pub(crate) async fn track(route: Option<MatchedPath>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let resp = next.run(req).await;
    if let Some(route) = route {
        let route = route.as_str().to_owned();
        ::metrics::histogram!(API_SECONDS, "route" => route.clone())
            .record(started.elapsed().as_secs_f64());
        ::metrics::counter!(API_REQUESTS, "route" => route, "status" => resp.status().as_u16().to_string())
            .increment(1);
    }
    resp
}
