//! Processors configuration (`[processors]`, environment `FLEET_PROCESSORS__*`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use fleet_schemas::AlertSeverity;
use fleet_service::config::EventLogSettings;

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
    /// The event log and its record framing (`[event-log]`).
    pub event_log: EventLogSettings,
    /// Most records handled per batch, by every processor.
    pub batch_size: usize,
    /// Static rules (an `id`, an optional `tenant`, and the fields of the API's rule body:
    /// `name`, `metric`, `operator`, `warning`, `critical`, ...), for every tenant or one,
    /// beside the per-tenant rules on `fleet.rules.v1` (which the API manages; each new
    /// tenant gets a default set). None by default.
    pub rules: Vec<StaticRule>,
    /// The alert evaluator (`[alert-evaluator]`).
    pub alert_evaluator: AlertEvaluatorSettings,
    /// The ticketer (`[ticketer]`).
    pub ticketer: TicketerSettings,
    /// The liveness processor (`[liveness]`).
    pub liveness: LivenessSettings,
    /// The command-timeout processor (`[command-timeouts]`).
    pub command_timeouts: CommandTimeoutsSettings,
}

impl Default for ProcessorsConfig {
    fn default() -> Self {
        ProcessorsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            http: fleet_service::serve::HttpSettings::default(),
            event_log: EventLogSettings::default(),
            batch_size: 500,
            rules: Vec::new(),
            alert_evaluator: AlertEvaluatorSettings::default(),
            ticketer: TicketerSettings::default(),
            liveness: LivenessSettings::default(),
            command_timeouts: CommandTimeoutsSettings::default(),
        }
    }
}

/// The alert evaluator (consumes `fleet.metrics.v1`, `fleet.rules.v1`, `fleet.agents.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AlertEvaluatorSettings {
    /// Consumer group.
    pub group: String,
    /// Replayed beyond the longest for-duration when the evaluator takes a partition;
    /// also the longest gap between two samples that keeps a for-duration running.
    #[serde(with = "humantime_serde")]
    pub replay_margin: Duration,
    /// The state of a (rule, agent, subject) series with no open alert and nothing seen
    /// for this long is dropped (at least the longest for-duration plus `replay-margin`),
    /// so subjects that come and go do not hold memory.
    #[serde(with = "humantime_serde")]
    pub idle_after: Duration,
}

impl Default for AlertEvaluatorSettings {
    fn default() -> Self {
        AlertEvaluatorSettings {
            group: "fleet-alert-evaluator".into(),
            replay_margin: Duration::from_secs(120),
            idle_after: Duration::from_secs(3600),
        }
    }
}

/// The ticketer (consumes `fleet.alerts.v1`, writes `fleet.tickets.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct TicketerSettings {
    /// Consumer group.
    pub group: String,
    /// Lowest alert severity that opens a ticket.
    pub min_severity: Severity,
}

impl Default for TicketerSettings {
    fn default() -> Self {
        TicketerSettings {
            group: "fleet-ticketer".into(),
            min_severity: Severity::Warning,
        }
    }
}

/// The liveness processor (consumes `fleet.heartbeats.v1`, writes OFFLINE / ONLINE).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct LivenessSettings {
    /// Consumer group.
    pub group: String,
    /// How far back heartbeats are replayed when it takes partitions.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// How often it looks for silent agents.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
    /// An agent silent for longer than this is reported OFFLINE, when its heartbeats do
    /// not say their interval (agents before it did).
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// An agent whose heartbeats say their interval is OFFLINE after this many intervals
    /// without one (at least 1).
    pub missed_heartbeats: u32,
    /// Lower bound of that per-agent threshold (a 1 s agent is not offline after 3 s).
    #[serde(with = "humantime_serde")]
    pub min_offline_after: Duration,
}

impl Default for LivenessSettings {
    fn default() -> Self {
        LivenessSettings {
            group: "fleet-liveness".into(),
            lookback: Duration::from_secs(900),
            check_interval: Duration::from_secs(5),
            offline_after: Duration::from_secs(90),
            missed_heartbeats: 3,
            min_offline_after: Duration::from_secs(10),
        }
    }
}

/// The command-timeout processor (consumes `fleet.commands.v1`, writes TIMED_OUT).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct CommandTimeoutsSettings {
    /// Consumer group.
    pub group: String,
    /// How far back commands are replayed when it takes partitions.
    #[serde(with = "humantime_serde")]
    pub lookback: Duration,
    /// Allowed beyond a command's own timeout before it is TIMED_OUT.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// How often it looks for overdue commands.
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

impl Default for CommandTimeoutsSettings {
    fn default() -> Self {
        CommandTimeoutsSettings {
            group: "fleet-command-timeouts".into(),
            lookback: Duration::from_secs(3600),
            grace: Duration::from_secs(30),
            check_interval: Duration::from_secs(5),
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
