//! Projections configuration (`[projections]`, environment `FLEET_PROJECTIONS__*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Settings of the projections and the query API. Every key has a default; see
/// `config/projections.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProjectionsConfig {
    /// Address of the query API (and `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// Event log URL: `kafka://host:9092,...` or `file:///dir`.
    pub event_log: String,
    /// Raw engine settings passed to the log (librdkafka properties for Kafka).
    pub event_log_options: BTreeMap<String, String>,
    /// Read model URL: `postgres://...` or `sqlite://path` (embedded).
    pub read_model: String,
    /// Time-series store URL: `file:///dir` (embedded).
    pub timeseries: String,
    /// Consumer group of the read-model projection.
    pub read_model_group: String,
    /// Consumer group of the time-series projection.
    pub timeseries_group: String,
    /// Most records per batch (one read-model transaction per batch).
    pub batch_size: usize,
    /// Group session timeout, ms.
    pub session_timeout_ms: u64,
    /// Key of the bootstrap administrator (the user `admin` with role admin): send
    /// `Authorization: Bearer <key>`. Empty disables it (user API keys still work).
    pub admin_api_key: String,
    /// Gateway URL agents enroll at, used in the install command of new tokens.
    pub gateway_url: String,
    /// Command types that always need approval by a second user (besides requests that
    /// say `requires_approval: true`).
    pub approval_required_commands: Vec<String>,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        ProjectionsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            event_log: "kafka://127.0.0.1:9092".into(),
            event_log_options: BTreeMap::new(),
            read_model: "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into(),
            timeseries: "file://fleetstream-data/timeseries".into(),
            read_model_group: "fleet-projection-readmodel".into(),
            timeseries_group: "fleet-projection-timeseries".into(),
            batch_size: 1000,
            session_timeout_ms: 10_000,
            admin_api_key: String::new(),
            gateway_url: "http://127.0.0.1:8080".into(),
            approval_required_commands: vec!["run_script".into()],
        }
    }
}
