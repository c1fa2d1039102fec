//! JSON bodies exchanged between agents and the gateway (HTTP API v1), and the error body
//! every Fleetstream HTTP endpoint answers with.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Body of `POST /api/v1/agents/{agent_id}/metrics`: one or more reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricBatch {
    /// Reports, oldest first (order is not required).
    pub reports: Vec<ReportIn>,
}

/// One report as an agent sends it. Validation rules are in the gateway's API docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportIn {
    /// Collection time on the agent (RFC 3339, UTC).
    pub collected_at: DateTime<Utc>,
    /// Total CPU use, 0..=100.
    pub cpu_percent: f64,
    /// Per-core CPU use, 0..=100 each.
    #[serde(default)]
    pub cpu_per_core: Vec<f64>,
    /// Memory in use, bytes.
    pub memory_used_bytes: u64,
    /// Physical memory, bytes.
    pub memory_total_bytes: u64,
    /// Memory in use, 0..=100.
    pub memory_percent: f64,
    /// Swap in use, bytes.
    #[serde(default)]
    pub swap_used_bytes: u64,
    /// Swap size, bytes.
    #[serde(default)]
    pub swap_total_bytes: u64,
    /// Mounted disks.
    #[serde(default)]
    pub disks: Vec<DiskIn>,
    /// Bytes read from disks during the interval.
    #[serde(default)]
    pub disk_read_bytes: u64,
    /// Bytes written to disks during the interval.
    #[serde(default)]
    pub disk_write_bytes: u64,
    /// Load average, 1 minute.
    pub load_1: f64,
    /// Load average, 5 minutes.
    pub load_5: f64,
    /// Load average, 15 minutes.
    pub load_15: f64,
    /// Seconds since boot.
    pub uptime_seconds: u64,
    /// Bytes received during the interval.
    #[serde(default)]
    pub net_rx_bytes: u64,
    /// Bytes sent during the interval.
    #[serde(default)]
    pub net_tx_bytes: u64,
    /// Per-interface I/O.
    #[serde(default)]
    pub interfaces: Vec<InterfaceIn>,
    /// Number of processes.
    #[serde(default)]
    pub process_count: u32,
    /// Watched services.
    #[serde(default)]
    pub services: Vec<ServiceIn>,
    /// Security posture.
    #[serde(default)]
    pub security: Option<SecurityIn>,
    /// Custom metrics.
    #[serde(default)]
    pub custom: BTreeMap<String, f64>,
}

/// A mounted disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskIn {
    /// Mount point.
    pub mount: String,
    /// Bytes used.
    pub used_bytes: u64,
    /// Size, bytes.
    pub total_bytes: u64,
    /// Used, 0..=100.
    pub percent: f64,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceIn {
    /// Interface name.
    pub name: String,
    /// Bytes received during the interval.
    pub rx_bytes: u64,
    /// Bytes sent during the interval.
    pub tx_bytes: u64,
}

/// One watched service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceIn {
    /// Service name.
    pub name: String,
    /// running, stopped, failed or unknown.
    pub status: String,
    /// Main pid.
    #[serde(default)]
    pub pid: Option<u32>,
}

/// Security posture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityIn {
    /// Host firewall active.
    #[serde(default)]
    pub firewall_enabled: Option<bool>,
    /// Pending updates.
    #[serde(default)]
    pub pending_updates: Option<u32>,
    /// Pending security updates.
    #[serde(default)]
    pub pending_security_updates: Option<u32>,
}

/// Answer to an accepted metrics batch (202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestAccepted {
    /// Reports written to the log.
    pub accepted: usize,
    /// Reports refused, each with the reason (the rest were written).
    #[serde(default)]
    pub rejected: Vec<ItemError>,
}

/// Why one item of a batch was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemError {
    /// Index of the item in the batch.
    pub index: usize,
    /// Offending field, as a path (`reports[3].cpu_percent`).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Error body of every Fleetstream HTTP endpoint: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Details of an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`invalid_field`, `unavailable`, ...).
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Offending field, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Per-item errors of a batch, when the whole batch was refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub items: Vec<ItemError>,
}

/// Facts about the machine an agent runs on, sent when it enrolls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineFacts {
    /// Host name.
    pub hostname: String,
    /// OS family (`linux`, `windows`, `macos`).
    pub os_type: String,
    /// OS name and version (`Debian GNU/Linux 12`).
    #[serde(default)]
    pub os_version: String,
    /// Kernel version.
    #[serde(default)]
    pub kernel_version: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    #[serde(default)]
    pub architecture: String,
    /// IP addresses.
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    /// MAC addresses.
    #[serde(default)]
    pub mac_addresses: Vec<String>,
    /// CPU model.
    #[serde(default)]
    pub cpu_model: String,
    /// Logical cores.
    #[serde(default)]
    pub cpu_cores: u32,
    /// Physical memory, bytes.
    #[serde(default)]
    pub memory_total_bytes: u64,
    /// Sum of the mounted disks' sizes, bytes.
    #[serde(default)]
    pub disk_total_bytes: u64,
    /// Agent software version.
    pub agent_version: String,
}

/// Body of `POST /api/v1/agents/register`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// The one-time registration token.
    pub token: String,
    /// The machine's facts.
    pub facts: MachineFacts,
}

/// Settings the server hands an agent at enrollment (and may push later).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteConfig {
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: f64,
    /// Seconds between metric collections.
    pub metrics_interval_secs: f64,
    /// WebSocket URL of the agent channel.
    pub websocket_url: String,
}

/// Answer of a successful registration (201).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The new agent's id.
    pub agent_id: String,
    /// The agent's permanent credential; shown once, send it as `Authorization: Bearer`.
    pub credential: String,
    /// Tenant the agent belongs to.
    pub tenant_id: String,
    /// Location, if the token named one.
    pub location_id: Option<String>,
    /// Device name, if the token named one.
    pub device_name: Option<String>,
    /// Settings for the agent.
    pub config: RemoteConfig,
}

/// Body of `POST /api/v1/agents/{agent_id}/heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatIn {
    /// Time on the agent.
    pub sent_at: DateTime<Utc>,
    /// Increases by one per heartbeat since the agent started.
    pub sequence: u64,
    /// Seconds since boot.
    pub uptime_seconds: u64,
    /// Agent software version.
    pub agent_version: String,
}

/// Body of `POST /api/v1/agents/{agent_id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// Events, oldest first.
    pub events: Vec<EventIn>,
}

/// One agent event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// When it happened on the agent.
    pub occurred_at: DateTime<Utc>,
    /// Kind (`service_crashed`, `login_failed`, ...): 1 to 64 of `a-z 0-9 _ .`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// Human-readable message (at most 4096 bytes).
    pub message: String,
    /// Free-form attributes (at most 64).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}
