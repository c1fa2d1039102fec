//! Metrics the gateway promises on `/metrics`.

use std::time::Duration;

use fleet_service::ApiError;

/// Reports written to the log.
pub const REPORTS_ACCEPTED: &str = "fleet_gateway_reports_accepted_total";
/// Samples of the standard write protocols written to the log, by `protocol`.
pub const SAMPLES_ACCEPTED: &str = "fleet_gateway_samples_accepted_total";
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
/// Requests refused by authentication, by `credential` (`agent`, `ingest_key`) and
/// `status` (401, 403; 429 for an address past its failure budget; 503 when the registry
/// cannot answer).
pub const AUTH_FAILURES: &str = "fleet_gateway_auth_failures_total";
/// Registrations by outcome.
pub const REGISTRATIONS: &str = "fleet_gateway_registrations_total";

/// Software inventories written.
pub const INVENTORIES_ACCEPTED: &str = "fleet_gateway_inventories_accepted_total";
/// Agent WebSockets open now.
pub const WS_CONNECTIONS: &str = "fleet_gateway_ws_connections";
/// WebSocket frames from agents by `type` (metrics, heartbeat, ..., `invalid`, `binary`)
/// and `outcome` (`ack`, or the HTTP status of the error answered).
pub const WS_FRAMES: &str = "fleet_gateway_ws_frames_total";
/// Commands handed to agents, by `via` (`ws` push, `poll`).
pub const COMMANDS_DISPATCHED: &str = "fleet_gateway_commands_dispatched_total";
/// Command progress chunks and results written, by `kind` (progress, completed).
pub const COMMAND_UPDATES: &str = "fleet_gateway_command_updates_total";

/// Command progress or results refused, by `reason` (`unknown`: not a command given to
/// this agent, 404; `not_dispatched`: waiting for its approval, 409).
pub const COMMAND_UPDATES_REFUSED: &str = "fleet_gateway_command_updates_refused_total";

/// Reports refused for naming a new subject past the per-agent limit, by `kind` (disks,
/// interfaces, services, custom).
pub const SUBJECTS_REFUSED: &str = "fleet_gateway_subjects_refused_total";

/// Samples of the standard write protocols refused because their series would pass the
/// tenant's `max-series-per-tenant`.
pub const SERIES_REFUSED: &str = "fleet_gateway_samples_refused_series_limit_total";

/// Every metric name above.
pub const ALL: &[&str] = &[
    INVENTORIES_ACCEPTED,
    WS_CONNECTIONS,
    WS_FRAMES,
    COMMANDS_DISPATCHED,
    COMMAND_UPDATES,
    COMMAND_UPDATES_REFUSED,
    SUBJECTS_REFUSED,
    SERIES_REFUSED,
    REPORTS_ACCEPTED,
    SAMPLES_ACCEPTED,
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

pub(crate) fn auth_failed(credential: &'static str, status: axum::http::StatusCode) {
    metrics::counter!(AUTH_FAILURES, "credential" => credential, "status" => status.as_u16().to_string()).increment(1);
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
        Ok(_) => 202,
        Err(e) => e.status().as_u16(),
    };
    record_status(route, status, elapsed);
}

pub(crate) fn record_status(route: &'static str, status: u16, elapsed: Duration) {
    metrics::counter!(REQUESTS, "route" => route, "status" => status.to_string()).increment(1);
    metrics::histogram!(REQUEST_SECONDS, "route" => route).record(elapsed.as_secs_f64());
}

pub(crate) fn samples_accepted(protocol: &'static str, n: usize) {
    metrics::counter!(SAMPLES_ACCEPTED, "protocol" => protocol).increment(n as u64);
}

pub(crate) fn inventory_accepted() {
    metrics::counter!(INVENTORIES_ACCEPTED).increment(1);
}

pub(crate) fn command_update(kind: &'static str) {
    metrics::counter!(COMMAND_UPDATES, "kind" => kind).increment(1);
}

pub(crate) fn command_update_refused(reason: &'static str) {
    metrics::counter!(COMMAND_UPDATES_REFUSED, "reason" => reason).increment(1);
}

pub(crate) fn subjects_refused(kind: &'static str) {
    metrics::counter!(SUBJECTS_REFUSED, "kind" => kind).increment(1);
}

pub(crate) fn series_refused(samples: usize) {
    metrics::counter!(SERIES_REFUSED).increment(samples as u64);
}

pub(crate) fn commands_dispatched(via: &'static str, n: usize) {
    metrics::counter!(COMMANDS_DISPATCHED, "via" => via).increment(n as u64);
}

pub(crate) fn ws_frame(kind: &'static str, outcome: &str) {
    metrics::counter!(WS_FRAMES, "type" => kind, "outcome" => outcome.to_owned()).increment(1);
}

/// Counts an open agent socket while alive.
#[derive(Debug)]
pub(crate) struct WsConnectionGauge(());

impl WsConnectionGauge {
    pub(crate) fn open() -> WsConnectionGauge {
        metrics::gauge!(WS_CONNECTIONS).increment(1.0);
        WsConnectionGauge(())
    }
}

impl Drop for WsConnectionGauge {
    fn drop(&mut self) {
        metrics::gauge!(WS_CONNECTIONS).decrement(1.0);
    }
}
