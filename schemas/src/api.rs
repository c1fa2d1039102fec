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
    /// The system asks for a reboot. The fields below are new in report schema v2: a
    /// gateway older than that refuses a report that has them, so they are left out
    /// (not sent as null) when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_required: Option<bool>,
    /// sshd's effective `PermitRootLogin`, one of [`SSH_PERMIT_ROOT_LOGIN_VALUES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_permit_root_login: Option<String>,
    /// sshd's effective `PasswordAuthentication`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_password_authentication: Option<bool>,
    /// ClamAV is installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus_present: Option<bool>,
    /// Age of the newest ClamAV signature database, hours: finite, 0 to
    /// [`MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus_signature_age_hours: Option<f64>,
}

/// The values of sshd's `PermitRootLogin` (`without-password` is an old spelling of
/// `prohibit-password`, which the agent sends instead).
pub const SSH_PERMIT_ROOT_LOGIN_VALUES: &[&str] =
    &["yes", "no", "prohibit-password", "forced-commands-only"];

/// Largest antivirus signature age a report may carry, hours (ten years: older is a
/// wrong clock, not a stale database).
pub const MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS: f64 = 87_600.0;

/// Answer to an accepted metrics batch (202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestAccepted {
    /// Reports written to the log.
    pub accepted: usize,
    /// Reports refused, each with the reason (the rest were written).
    #[serde(default)]
    pub rejected: Vec<ItemError>,
    /// Heartbeat answers only: the remote configuration to apply, when the heartbeat's
    /// `config_version` differs from the desired one. Older gateways never send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigUpdate>,
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
    /// WebSocket URL of the agent channel, from the gateway's `public-url`; empty when
    /// that is unset (the agent derives it from its server URL). An agent uses it only
    /// when it has the origin of its server URL.
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
    /// Seconds until the agent's next heartbeat (the liveness processor's offline timer).
    /// Gateways before it refuse the field: upgrade servers before agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_secs: Option<f64>,
    /// Version of the remote configuration the agent runs (absent: none). Gateways
    /// before it refuse the field: upgrade servers before agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_version: Option<i64>,
}

/// Body of `POST /api/v1/agents/{agent_id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventBatch {
    /// Events, oldest first.
    pub events: Vec<EventIn>,
}

/// The event kinds the agent sends (see `agent/src/events.rs`): the kinds an event rule may
/// name.
pub const AGENT_EVENT_KINDS: &[&str] = &[
    "agent_started",
    "agent_stopped",
    "host_rebooted",
    "service_failed",
    "service_recovered",
    "service_stopped",
];

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

/// Installed software, as the agent sends it (`POST /api/v1/agents/{id}/inventory`, or
/// the `inventory` WebSocket message). Sent at agent start and whenever the list changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryIn {
    /// When the list was read.
    pub collected_at: DateTime<Utc>,
    /// `dpkg`, `rpm` or `none`.
    pub source: String,
    /// The packages, sorted by name.
    pub packages: Vec<PackageIn>,
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageIn {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture, where the package manager says.
    #[serde(default)]
    pub arch: Option<String>,
}

/// A command the server asks the agent to run (pushed over the WebSocket as `command`,
/// or returned by `GET /api/v1/agents/{id}/commands` to an agent that polls).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    /// Command id (UUID); results name it.
    pub command_id: String,
    /// `restart_service`, `run_script`, `collect_diagnostics` or `update_config`.
    pub command_type: String,
    /// Arguments: `service` for restart_service, `script` (a name from the agent's
    /// configuration) for run_script, configuration keys for update_config.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// The agent stops the command after this many seconds.
    pub timeout_secs: u64,
    /// When it was requested.
    pub requested_at: DateTime<Utc>,
}

/// Longest progress chunk, bytes (the gateway refuses longer ones).
pub const MAX_PROGRESS_CHUNK_BYTES: usize = 64 * 1024;
/// Longest captured stdout or stderr of one command, bytes: the bound of a result's
/// output, and of what the read model keeps of each stream's progress chunks.
pub const MAX_COMMAND_OUTPUT_BYTES: usize = 512 * 1024;

/// A chunk of a running command's output, or a status line (`command_progress`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandProgressIn {
    /// The command.
    pub command_id: String,
    /// Chunk number within the command, from 1.
    pub sequence: u64,
    /// `stdout`, `stderr` or `status`.
    pub stream: String,
    /// The text (bounded by the agent).
    pub chunk: String,
    /// When it was produced.
    pub at: DateTime<Utc>,
}

/// How a command ended on the agent (`command_result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandResultIn {
    /// The command.
    pub command_id: String,
    /// `succeeded`, `failed`, `timed_out` or `refused` (not on the allow-list, bad args).
    pub status: String,
    /// Exit code, if the process exited.
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// Captured standard output (bounded).
    #[serde(default)]
    pub stdout: String,
    /// Captured standard error (bounded).
    #[serde(default)]
    pub stderr: String,
    /// Whether stdout or stderr were cut at the bound.
    #[serde(default)]
    pub output_truncated: bool,
    /// Why it was refused or failed to start.
    #[serde(default)]
    pub message: Option<String>,
    /// When it started (absent if it never did).
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
}

/// Settings the server may change on a connected agent (`config` message, the heartbeat
/// answer, an `update_config` command). With a `version` it is the whole remote
/// configuration ([`crate::remote_config`]): a field absent there returns to the agent's
/// local value. Without one it changes only the fields it names (`update_config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigUpdate {
    /// New heartbeat interval.
    #[serde(default)]
    pub heartbeat_interval_secs: Option<f64>,
    /// New metrics collection interval.
    #[serde(default)]
    pub metrics_interval_secs: Option<f64>,
    /// Version of the remote configuration; the agent acknowledges it in its heartbeats.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Watched systemd services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<String>>,
    /// Directory of the textfile custom-metric collector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub textfile_dir: Option<String>,
    /// Command types allowed, intersected with the agent's local allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_commands: Option<Vec<String>>,
}

impl ConfigUpdate {
    /// The whole remote configuration of `version`.
    pub fn remote(config: &crate::remote_config::DesiredConfig, version: i64) -> Self {
        ConfigUpdate {
            heartbeat_interval_secs: config.heartbeat_interval_secs,
            metrics_interval_secs: config.metrics_interval_secs,
            version: Some(version),
            services: config.services.clone(),
            textfile_dir: config.textfile_dir.clone(),
            allowed_commands: config.allowed_commands.clone(),
        }
    }
}

/// A frame from agent to gateway on `GET /api/v1/agents/ws` (JSON text, tagged by
/// `type`). Each carries an `id` chosen by the agent; the gateway answers every one with
/// an [`ServerMessage::Ack`] or [`ServerMessage::Error`] of the same id, after the event
/// log acknowledged the write, exactly as the HTTP endpoint of the same name would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// Like `POST .../metrics`.
    Metrics {
        /// Request id.
        id: u64,
        /// The reports.
        reports: Vec<ReportIn>,
    },
    /// Like `POST .../heartbeat`.
    Heartbeat {
        /// Request id.
        id: u64,
        /// The heartbeat.
        heartbeat: HeartbeatIn,
    },
    /// Like `POST .../events`.
    Events {
        /// Request id.
        id: u64,
        /// The events.
        events: Vec<EventIn>,
    },
    /// Like `POST .../inventory`.
    Inventory {
        /// Request id.
        id: u64,
        /// The inventory.
        inventory: InventoryIn,
    },
    /// Output of a running command.
    CommandProgress {
        /// Request id.
        id: u64,
        /// The chunk.
        progress: CommandProgressIn,
    },
    /// A command ended.
    CommandResult {
        /// Request id.
        id: u64,
        /// The result.
        result: CommandResultIn,
    },
}

/// A frame from gateway to agent on the WebSocket (JSON text, tagged by `type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The request of this id was written (what HTTP answers with 202).
    Ack {
        /// Request id.
        id: u64,
        /// Items written.
        accepted: usize,
        /// Items refused, with the reason.
        #[serde(default)]
        rejected: Vec<ItemError>,
    },
    /// The request of this id failed; `status` is the HTTP status the same request would
    /// have got (400, 422, 429, 503, ...), so the agent handles both transports alike.
    /// `id` is absent when the frame itself could not be read.
    Error {
        /// Request id, if the frame could be read that far.
        #[serde(default)]
        id: Option<u64>,
        /// Equivalent HTTP status.
        status: u16,
        /// What went wrong, naming the field.
        error: ErrorDetail,
        /// Retry after this many seconds (429, 503).
        #[serde(default)]
        retry_after_secs: Option<u64>,
    },
    /// Run this command.
    Command {
        /// The command.
        command: CommandSpec,
    },
    /// Apply these settings.
    Config {
        /// The settings.
        config: ConfigUpdate,
    },
}

/// Answer of `GET /api/v1/agents/{id}/commands`: commands waiting for this agent (for an
/// agent whose WebSocket is down).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandList {
    /// Pending commands, oldest first.
    pub commands: Vec<CommandSpec>,
}

/// Header naming the agent on `GET /api/v1/agents/ws` (the query parameter `agent_id`
/// is accepted too); the credential goes in `Authorization: Bearer ...` as on every
/// agent endpoint.
pub const AGENT_ID_HEADER: &str = "x-fleet-agent-id";
