//! Processors configuration (`[processors]`, environment `FLEET_PROCESSORS__*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::rules::{default_rules, Rule};

/// Settings of the stream processors. Every key has a default; see
/// `config/processors.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProcessorsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// Event log URL: `kafka://host:9092,...` or `file:///dir`.
    pub event_log: String,
    /// Raw engine settings passed to the log (librdkafka properties for Kafka).
    pub event_log_options: BTreeMap<String, String>,
    /// Consumer group of the alert evaluator.
    pub group: String,
    /// Most records handled per batch.
    pub batch_size: usize,
    /// Group session timeout, ms (a dead instance's partitions move after this long).
    pub session_timeout_ms: u64,
    /// Threshold rules (defaults: CPU > 95 critical, memory > 95 critical, disk > 90 warning).
    pub rules: Vec<Rule>,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        ProcessorsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            event_log: "kafka://127.0.0.1:9092".into(),
            event_log_options: BTreeMap::new(),
            group: "fleet-alert-evaluator".into(),
            batch_size: 500,
            session_timeout_ms: 10_000,
            rules: default_rules(),
        }
    }
}
