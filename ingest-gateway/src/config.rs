//! Gateway configuration (`[gateway]`, environment `FLEET_GATEWAY__*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the ingest gateway. Every key has a default; see
/// `config/gateway.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GatewayConfig {
    /// Address to listen on for agents (API, `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Event log URL: `kafka://host:9092,...` or `file:///dir` (embedded, one process).
    pub event_log: String,
    /// Raw engine settings passed to the log (librdkafka properties for Kafka).
    pub event_log_options: BTreeMap<String, String>,
    /// Tenant that reports are attributed to until agents enroll with a tenant token.
    pub default_tenant: String,
    /// Largest request body accepted, bytes (after decompression); larger gets 413.
    pub max_body_bytes: usize,
    /// Most reports in one metrics batch.
    pub max_reports_per_batch: usize,
    /// How long to wait for the log to acknowledge a write before answering 503.
    pub produce_timeout_ms: u64,
    /// `Retry-After` seconds answered with 503.
    pub retry_after_secs: u64,
    /// How far in the future (agent clock ahead) a report's collection time may be.
    pub max_future_skew_secs: i64,
    /// How old a report may be (agents spool while offline; older is refused).
    pub max_age_days: i64,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            event_log: "kafka://127.0.0.1:9092".into(),
            event_log_options: BTreeMap::new(),
            default_tenant: "default".into(),
            max_body_bytes: 1 << 20,
            max_reports_per_batch: 1000,
            produce_timeout_ms: 10_000,
            retry_after_secs: 5,
            max_future_skew_secs: 300,
            max_age_days: 30,
        }
    }
}
