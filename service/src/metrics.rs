//! Metrics of the HTTP listeners ([`crate::serve`]), labelled by `server` (the role:
//! `gateway`, `api`, `projections`, `processors`).

/// A connection was accepted: `fleet_http_connections{server}` (open now) goes up and
/// `fleet_http_connections_total{server}` counts it.
pub(crate) fn connection_opened(server: &'static str) {
    metrics::gauge!("fleet_http_connections", "server" => server).increment(1.0);
    metrics::counter!("fleet_http_connections_total", "server" => server).increment(1);
}

/// A connection closed (by either side, or by a timeout).
pub(crate) fn connection_closed(server: &'static str) {
    metrics::gauge!("fleet_http_connections", "server" => server).decrement(1.0);
}

/// A request was answered 408: `fleet_http_request_timeouts_total{server}`.
pub(crate) fn request_timed_out(server: &'static str) {
    metrics::counter!("fleet_http_request_timeouts_total", "server" => server).increment(1);
}

/// A TLS handshake failed or timed out: `fleet_http_tls_handshake_failures_total{server}`.
pub(crate) fn tls_handshake_failed(server: &'static str) {
    metrics::counter!("fleet_http_tls_handshake_failures_total", "server" => server).increment(1);
}

/// A certificate reload: `fleet_tls_cert_reloads_total{server,outcome}` (`ok`, `failed`).
pub(crate) fn tls_reload(server: &'static str, outcome: &'static str) {
    metrics::counter!("fleet_tls_cert_reloads_total", "server" => server, "outcome" => outcome)
        .increment(1);
}
