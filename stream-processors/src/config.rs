//! Processors configuration (`[processors]`, environment `FLEET_PROCESSORS__*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use fleet_schemas::AlertSeverity;

use crate::rules::StaticRule;

/// Settings of the stream processors. Every key has a default; see
/// `config/processors.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProcessorsConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: SocketAddr,
    /// That listener's timeouts, connection cap and TLS (`[http]`).
    pub http: fleet_service::serve::HttpSettings,
    /// Event log URL: `kafka://host:9092,...` or `file:///dir`.
    pub event_log: String,
    /// Raw engine settings passed to the log (librdkafka properties for Kafka).
    pub event_log_options: BTreeMap<String, String>,
    /// Schema registry (Confluent REST API) base URL. Set: records are written in the
    /// Confluent wire format, each schema registered under `<topic>-value` (BACKWARD) at
    /// start; empty: Avro single-object encoding, no registry. Either framing is read.
    pub schema_registry_url: String,
    /// Consumer group of the alert evaluator.
    pub group: String,
    /// Most records handled per batch.
    pub batch_size: usize,
    /// Group session timeout, ms (a dead instance's partitions move after this long).
    pub session_timeout_ms: u64,
    /// Static rules (an `id`, an optional `tenant`, and the fields of the API's rule body:
    /// `name`, `metric`, `operator`, `warning`, `critical`, ...), for every tenant or one,
    /// beside the per-tenant rules on
    /// `fleet.rules.v1` (which the API manages; each new tenant gets a default set).
    /// None by default.
    pub rules: Vec<StaticRule>,
    /// Seconds replayed beyond the longest for-duration when the evaluator takes a
    /// partition; also the longest gap between two samples that keeps a for-duration running.
    pub rules_replay_margin_secs: u64,
    /// The evaluator drops the state of a (rule, agent, subject) series with no open alert
    /// and nothing seen for this long (at least the longest for-duration plus
    /// `rules-replay-margin-secs`), so subjects that come and go do not hold memory.
    pub rules_idle_secs: u64,
    /// Consumer group of the ticketer (consumes `fleet.alerts.v1`).
    pub ticketer_group: String,
    /// Lowest alert severity that opens a ticket.
    pub ticket_min_severity: Severity,
    /// Consumer group of the liveness processor (consumes `fleet.heartbeats.v1`).
    pub liveness_group: String,
    /// How far back (seconds) liveness replays heartbeats when it takes partitions.
    pub liveness_lookback_secs: u64,
    /// How often (seconds) liveness looks for silent agents.
    pub liveness_check_interval_secs: u64,
    /// An agent silent for longer than this (seconds) is reported OFFLINE.
    pub offline_after_secs: u64,
    /// Consumer group of the command-timeout processor (consumes `fleet.commands.v1`).
    pub command_timeouts_group: String,
    /// How far back (seconds) command timeouts replays commands when it takes partitions.
    pub command_lookback_secs: u64,
    /// Seconds allowed beyond a command's own timeout before it is TIMED_OUT.
    pub command_grace_secs: u64,
    /// How often (seconds) command timeouts looks for overdue commands.
    pub command_check_interval_secs: u64,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        ProcessorsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            http: fleet_service::serve::HttpSettings::default(),
            event_log: "kafka://127.0.0.1:9092".into(),
            event_log_options: BTreeMap::new(),
            schema_registry_url: String::new(),
            group: "fleet-alert-evaluator".into(),
            batch_size: 500,
            session_timeout_ms: 10_000,
            rules: Vec::new(),
            rules_replay_margin_secs: 120,
            rules_idle_secs: 3600,
            ticketer_group: "fleet-ticketer".into(),
            ticket_min_severity: Severity::Warning,
            liveness_group: "fleet-liveness".into(),
            liveness_lookback_secs: 900,
            liveness_check_interval_secs: 5,
            offline_after_secs: 90,
            command_timeouts_group: "fleet-command-timeouts".into(),
            command_lookback_secs: 3600,
            command_grace_secs: 30,
            command_check_interval_secs: 5,
        }
    }
}

/// Severity as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

impl From<Severity> for AlertSeverity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Info => AlertSeverity::Info,
            Severity::Warning => AlertSeverity::Warning,
            Severity::Critical => AlertSeverity::Critical,
        }
    }
}
