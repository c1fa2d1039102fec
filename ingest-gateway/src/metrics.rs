//! Metrics the gateway promises on `/metrics`.

use std::time::Duration;

use fleet_ops::ApiError;

/// Reports written to the log.
pub const REPORTS_ACCEPTED: &str = "fleet_gateway_reports_accepted_total";
/// Reports refused by validation.
pub const REPORTS_REJECTED: &str = "fleet_gateway_reports_rejected_total";
/// Requests by route and status.
pub const REQUESTS: &str = "fleet_gateway_requests_total";
/// Request latency by route.
pub const REQUEST_SECONDS: &str = "fleet_gateway_request_seconds";
/// Time the log took to acknowledge a produce.
pub const PRODUCE_SECONDS: &str = "fleet_gateway_produce_seconds";
/// Produce failures by reason (unavailable, timeout, error).
pub const PRODUCE_FAILURES: &str = "fleet_gateway_produce_failures_total";

/// Heartbeats written.
pub const HEARTBEATS_ACCEPTED: &str = "fleet_gateway_heartbeats_accepted_total";
/// Agent events written.
pub const EVENTS_ACCEPTED: &str = "fleet_gateway_events_accepted_total";
/// Requests refused by the per-agent rate limit.
pub const RATE_LIMITED: &str = "fleet_gateway_rate_limited_total";
/// Requests refused by authentication, by status (401, 403).
pub const AUTH_FAILURES: &str = "fleet_gateway_auth_failures_total";
/// Registrations by outcome.
pub const REGISTRATIONS: &str = "fleet_gateway_registrations_total";

/// Every metric name above.
pub const ALL: &[&str] = &[
    REPORTS_ACCEPTED,
    REPORTS_REJECTED,
    REQUESTS,
    REQUEST_SECONDS,
    PRODUCE_SECONDS,
    PRODUCE_FAILURES,
    HEARTBEATS_ACCEPTED,
    EVENTS_ACCEPTED,
    RATE_LIMITED,
    AUTH_FAILURES,
    REGISTRATIONS,
];

pub(crate) fn rate_limited() {
    metrics::counter!(RATE_LIMITED).increment(1);
}

pub(crate) fn auth_failed(status: axum::http::StatusCode) {
    metrics::counter!(AUTH_FAILURES, "status" => status.as_u16().to_string()).increment(1);
}

pub(crate) fn registration(outcome: &'static str) {
    metrics::counter!(REGISTRATIONS, "outcome" => outcome).increment(1);
}

pub(crate) fn reports_accepted(n: usize) {
    metrics::counter!(REPORTS_ACCEPTED).increment(n as u64);
}

pub(crate) fn reports_rejected(n: usize) {
    metrics::counter!(REPORTS_REJECTED).increment(n as u64);
}

pub(crate) fn produce_latency(d: Duration) {
    metrics::histogram!(PRODUCE_SECONDS).record(d.as_secs_f64());
}

pub(crate) fn produce_failed(reason: &'static str) {
    metrics::counter!(PRODUCE_FAILURES, "reason" => reason).increment(1);
}

pub(crate) fn record_request<T>(
    route: &'static str,
    result: &Result<T, ApiError>,
    elapsed: Duration,
) {
    let status = match result {
        Ok(_) => "202".to_owned(),
        Err(e) => e.status().as_u16().to_string(),
    };
    metrics::counter!(REQUESTS, "route" => route, "status" => status).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}
