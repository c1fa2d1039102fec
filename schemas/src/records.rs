//! Rust types of the records on Fleetstream topics. Each mirrors one `.avsc` file in
//! `schemas/avro/`; `tests/schemas.rs` asserts the derived schemas equal the files'.
//!
//! Timestamps are `i64` microseconds since the Unix epoch, UTC (see [`crate::time`]).

use std::collections::HashMap;

use apache_avro::AvroSchema;
use serde::{Deserialize, Serialize};

/// Whose a [`MetricReport`] is and when it was collected: what a consumer that keeps
/// only each agent's newest report reads first, to learn whether it needs the rest
/// ([`crate::Wire::decode_known_part`] reads these fields and skips the others).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReportHead {
    /// Owning tenant.
    pub tenant_id: String,
    /// Reporting agent.
    pub agent_id: String,
    /// Collection time on the agent (µs).
    pub occurred_at: i64,
}

impl From<MetricReport> for ReportHead {
    fn from(r: MetricReport) -> ReportHead {
        ReportHead {
            tenant_id: r.tenant_id,
            agent_id: r.agent_id,
            occurred_at: r.occurred_at,
        }
    }
}

/// One sample of every metric of one agent at one instant (`fleet.metrics.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct MetricReport {
    /// UUIDv7, deterministic for (agent, collection time).
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Reporting agent.
    pub agent_id: String,
    /// Collection time on the agent (µs).
    pub occurred_at: i64,
    /// Time the gateway accepted the report (µs).
    pub ingested_at: i64,
    /// Total CPU use, 0..=100.
    pub cpu_percent: f64,
    /// Per-core CPU use, 0..=100 each (may be empty).
    pub cpu_per_core: Vec<f64>,
    /// Memory in use, bytes.
    pub memory_used_bytes: i64,
    /// Physical memory, bytes.
    pub memory_total_bytes: i64,
    /// Memory in use, 0..=100.
    pub memory_percent: f64,
    /// Swap in use, bytes.
    pub swap_used_bytes: i64,
    /// Swap size, bytes.
    pub swap_total_bytes: i64,
    /// Every mounted disk.
    pub disks: Vec<DiskUsage>,
    /// Bytes read from disks during the collection interval.
    pub disk_read_bytes: i64,
    /// Bytes written to disks during the collection interval.
    pub disk_write_bytes: i64,
    /// Load average over 1 minute.
    pub load_1: f64,
    /// Load average over 5 minutes.
    pub load_5: f64,
    /// Load average over 15 minutes.
    pub load_15: f64,
    /// Seconds since boot.
    pub uptime_seconds: i64,
    /// Bytes received during the collection interval, all interfaces.
    pub net_rx_bytes: i64,
    /// Bytes sent during the collection interval, all interfaces.
    pub net_tx_bytes: i64,
    /// Per-interface network I/O (may be empty).
    pub interfaces: Vec<NetInterface>,
    /// Number of processes.
    pub process_count: i32,
    /// Watched services.
    pub services: Vec<ServiceStatus>,
    /// Security posture where the OS exposes it.
    pub security: Option<SecurityPosture>,
    /// Custom metrics, name to value; written in name order, so one record has one
    /// encoding (Avro and JSON), whatever the map's iteration order in this process.
    #[serde(serialize_with = "sorted_map")]
    pub custom: HashMap<String, f64>,
}

/// Serializes a map in key order.
fn sorted_map<S: serde::Serializer, V: Serialize>(
    map: &HashMap<String, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serializer.collect_map(entries)
}

/// Usage of one mounted file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct DiskUsage {
    /// Mount point.
    pub mount: String,
    /// Bytes used.
    pub used_bytes: i64,
    /// Size in bytes.
    pub total_bytes: i64,
    /// Used, 0..=100.
    pub percent: f64,
}

/// Network I/O of one interface during the collection interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct NetInterface {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: i64,
    /// Bytes sent.
    pub tx_bytes: i64,
}

/// Status of one watched service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct ServiceStatus {
    /// Service (unit) name.
    pub name: String,
    /// running, stopped, failed or unknown.
    pub status: String,
    /// Main process id, if running.
    pub pid: Option<i32>,
}

/// Security posture of the machine; `None` where the agent could not tell (or, for the
/// fields of schema v2, an agent or gateway older than v2 sent the report).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct SecurityPosture {
    /// Whether a host firewall is active.
    pub firewall_enabled: Option<bool>,
    /// Pending package updates.
    pub pending_updates: Option<i32>,
    /// Pending security updates.
    pub pending_security_updates: Option<i32>,
    /// The system asks for a reboot (v2).
    pub reboot_required: Option<bool>,
    /// sshd's effective `PermitRootLogin`, one of
    /// [`SSH_PERMIT_ROOT_LOGIN_VALUES`](crate::api::SSH_PERMIT_ROOT_LOGIN_VALUES) (v2).
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^(yes|no|prohibit-password|forced-commands-only)$")
    )]
    pub ssh_permit_root_login: Option<String>,
    /// sshd's effective `PasswordAuthentication` (v2).
    pub ssh_password_authentication: Option<bool>,
    /// ClamAV is installed (v2).
    pub antivirus_present: Option<bool>,
    /// Age of the newest ClamAV signature database, hours, finite and at least 0 (v2).
    #[cfg_attr(feature = "openapi", schema(minimum = 0.0, maximum = 87600.0))]
    pub antivirus_signature_age_hours: Option<f64>,
}

/// An agent is alive (`fleet.heartbeats.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct Heartbeat {
    /// UUIDv7.
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Time on the agent (µs).
    pub occurred_at: i64,
    /// Time the gateway accepted it (µs).
    pub ingested_at: i64,
    /// Agent software version.
    pub agent_version: String,
    /// Seconds since boot.
    pub uptime_seconds: i64,
    /// Increases by one per heartbeat since the agent started.
    pub sequence: i64,
    /// Seconds until the agent's next heartbeat (absent from older agents).
    #[serde(default)]
    pub heartbeat_interval_secs: Option<f64>,
    /// Version of the remote configuration the agent runs (absent: none, or an older
    /// agent).
    #[serde(default)]
    pub config_version: Option<i64>,
}

/// Severity of an agent event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventSeverity {
    /// Informational.
    #[serde(rename = "INFO")]
    Info,
    /// Needs attention.
    #[serde(rename = "WARNING")]
    Warning,
    /// Needs action now.
    #[serde(rename = "CRITICAL")]
    Critical,
}

/// Something happened on an agent's machine (`fleet.events.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct AgentEvent {
    /// UUIDv7.
    pub event_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Time on the agent (µs).
    pub occurred_at: i64,
    /// Time the gateway accepted it (µs).
    pub ingested_at: i64,
    /// Event kind, for example `service_crashed`.
    pub kind: String,
    /// Severity.
    pub severity: EventSeverity,
    /// Human-readable message.
    pub message: String,
    /// Free-form attributes (written in name order).
    #[serde(serialize_with = "sorted_map")]
    pub attributes: HashMap<String, String>,
}

/// Kind of alert lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AlertEventKind {
    /// A rule started to breach.
    #[serde(rename = "RAISED")]
    Raised,
    /// The condition cleared (or a user resolved it).
    #[serde(rename = "RESOLVED")]
    Resolved,
    /// A user acknowledged the alert.
    #[serde(rename = "ACKNOWLEDGED")]
    Acknowledged,
}

/// Alert severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum AlertSeverity {
    /// Informational.
    #[serde(rename = "INFO")]
    Info,
    /// Warning.
    #[serde(rename = "WARNING")]
    Warning,
    /// Critical.
    #[serde(rename = "CRITICAL")]
    Critical,
}

impl AlertSeverity {
    /// Lower-case name, as used in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertSeverity::Info => "info",
            AlertSeverity::Warning => "warning",
            AlertSeverity::Critical => "critical",
        }
    }
}

impl AlertEventKind {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertEventKind::Raised => "raised",
            AlertEventKind::Resolved => "resolved",
            AlertEventKind::Acknowledged => "acknowledged",
        }
    }
}

/// Alert lifecycle (`fleet.alerts.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct AlertEvent {
    /// UUIDv5 of (alert id, kind).
    pub event_id: String,
    /// Deterministic alert id.
    pub alert_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Lifecycle step.
    pub kind: AlertEventKind,
    /// Rule that raised it.
    pub rule_id: String,
    /// Rule name at the time.
    pub rule_name: String,
    /// Metric name (see [`crate::samples`]).
    pub metric: String,
    /// Mount point or service the rule applies to, if any.
    pub subject: Option<String>,
    /// Severity.
    pub severity: AlertSeverity,
    /// Comparison operator.
    pub operator: String,
    /// Threshold compared against.
    pub threshold: f64,
    /// Value that triggered or cleared the alert.
    pub value: f64,
    /// Human-readable message.
    pub message: String,
    /// User who acknowledged or resolved by hand.
    pub actor: Option<String>,
    /// Time of the sample that caused this transition (µs).
    pub occurred_at: i64,
    /// Time the processor emitted it (µs).
    pub ingested_at: i64,
}

/// Kind of agent lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AgentLifecycleKind {
    /// Enrolled with a registration token.
    #[serde(rename = "REGISTERED")]
    Registered,
    /// Facts or placement changed.
    #[serde(rename = "UPDATED")]
    Updated,
    /// Heard from again after being offline.
    #[serde(rename = "ONLINE")]
    Online,
    /// Missed its heartbeats.
    #[serde(rename = "OFFLINE")]
    Offline,
    /// Credential revoked; every gateway refuses it.
    #[serde(rename = "DEACTIVATED")]
    Deactivated,
}

impl AgentLifecycleKind {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentLifecycleKind::Registered => "registered",
            AgentLifecycleKind::Updated => "updated",
            AgentLifecycleKind::Online => "online",
            AgentLifecycleKind::Offline => "offline",
            AgentLifecycleKind::Deactivated => "deactivated",
        }
    }
}

/// Machine facts of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct AgentFacts {
    /// Host name.
    pub hostname: String,
    /// OS family.
    pub os_type: String,
    /// OS name and version.
    pub os_version: String,
    /// Kernel version.
    pub kernel_version: String,
    /// CPU architecture.
    pub architecture: String,
    /// IP addresses.
    pub ip_addresses: Vec<String>,
    /// MAC addresses.
    pub mac_addresses: Vec<String>,
    /// CPU model.
    pub cpu_model: String,
    /// Logical cores.
    pub cpu_cores: i32,
    /// Physical memory, bytes.
    pub memory_total_bytes: i64,
    /// Sum of disk sizes, bytes.
    pub disk_total_bytes: i64,
    /// Agent version.
    pub agent_version: String,
}

/// Agent lifecycle (`fleet.agents.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct AgentLifecycle {
    /// UUIDv5 of (agent id, kind, occurred_at).
    pub event_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// What happened.
    pub kind: AgentLifecycleKind,
    /// Location.
    pub location_id: Option<String>,
    /// Device name.
    pub device_name: Option<String>,
    /// Machine facts (REGISTERED, UPDATED).
    pub facts: Option<AgentFacts>,
    /// User who caused it.
    pub actor: Option<String>,
    /// Why.
    pub reason: Option<String>,
    /// The agent's tags when the event states them: `None` = unchanged / not stated,
    /// `Some(vec![])` = no tags.
    pub tags: Option<Vec<String>>,
    /// When it happened (µs).
    pub occurred_at: i64,
    /// When it was written (µs).
    pub ingested_at: i64,
}

/// Kind of remote-command lifecycle event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum CommandEventKind {
    /// A user asked for the command.
    #[serde(rename = "REQUESTED")]
    Requested,
    /// A second user approved it (commands that need approval).
    #[serde(rename = "APPROVED")]
    Approved,
    /// A gateway handed it to the agent.
    #[serde(rename = "DISPATCHED")]
    Dispatched,
    /// A chunk of output or a status line while it runs.
    #[serde(rename = "PROGRESS")]
    Progress,
    /// It finished (or the agent refused it); see `status`.
    #[serde(rename = "COMPLETED")]
    Completed,
    /// No result arrived in time.
    #[serde(rename = "TIMED_OUT")]
    TimedOut,
    /// A second user refused it (a command awaiting approval); never delivered. Added in
    /// version 2 of the schema.
    #[serde(rename = "REJECTED")]
    Rejected,
    /// Withdrawn before a gateway dispatched it; never delivered. Added in version 2 of
    /// the schema.
    #[serde(rename = "CANCELLED")]
    Cancelled,
}

impl CommandEventKind {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandEventKind::Requested => "requested",
            CommandEventKind::Approved => "approved",
            CommandEventKind::Dispatched => "dispatched",
            CommandEventKind::Progress => "progress",
            CommandEventKind::Completed => "completed",
            CommandEventKind::TimedOut => "timed_out",
            CommandEventKind::Rejected => "rejected",
            CommandEventKind::Cancelled => "cancelled",
        }
    }

    /// The Avro symbol (`TIMED_OUT`), as used in event ids.
    pub fn symbol(self) -> &'static str {
        match self {
            CommandEventKind::Requested => "REQUESTED",
            CommandEventKind::Approved => "APPROVED",
            CommandEventKind::Dispatched => "DISPATCHED",
            CommandEventKind::Progress => "PROGRESS",
            CommandEventKind::Completed => "COMPLETED",
            CommandEventKind::TimedOut => "TIMED_OUT",
            CommandEventKind::Rejected => "REJECTED",
            CommandEventKind::Cancelled => "CANCELLED",
        }
    }
}

/// Remote command lifecycle (`fleet.commands.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct CommandEvent {
    /// UUIDv5 of (command id, kind, sequence).
    pub event_id: String,
    /// The command.
    pub command_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent that runs it.
    pub agent_id: String,
    /// Lifecycle step.
    pub kind: CommandEventKind,
    /// Command type (`restart_service`, `run_script`, `collect_diagnostics`, `update_config`).
    pub command_type: String,
    /// Arguments (written in name order).
    #[serde(serialize_with = "sorted_map")]
    pub args: HashMap<String, String>,
    /// Whether a second user must approve it.
    pub requires_approval: bool,
    /// Timeout on the agent, seconds.
    pub timeout_secs: i64,
    /// Who requested / approved it, or which gateway dispatched it.
    pub actor: Option<String>,
    /// PROGRESS: chunk number within the command.
    pub sequence: i64,
    /// PROGRESS: `stdout`, `stderr` or `status`.
    pub stream: Option<String>,
    /// PROGRESS: the text.
    pub chunk: Option<String>,
    /// COMPLETED: `succeeded`, `failed`, `timed_out` or `refused`.
    pub status: Option<String>,
    /// COMPLETED: exit code, if the process ran to an exit.
    pub exit_code: Option<i32>,
    /// COMPLETED: captured stdout (bounded).
    pub stdout: Option<String>,
    /// COMPLETED: captured stderr (bounded).
    pub stderr: Option<String>,
    /// COMPLETED: whether stdout or stderr were cut at the bound.
    pub output_truncated: bool,
    /// Why it was refused or failed to start.
    pub message: Option<String>,
    /// When the agent started it (µs).
    pub started_at: Option<i64>,
    /// When it ended (µs).
    pub finished_at: Option<i64>,
    /// When this step happened (µs).
    pub occurred_at: i64,
    /// When it was written (µs).
    pub ingested_at: i64,
    /// The command group (fleet-wide command) this command is one agent's part of; `None`:
    /// a single command. Added in version 2 of the schema.
    pub group_id: Option<String>,
}

impl CommandEvent {
    /// One lifecycle step of a command, with every step-specific field empty and the
    /// deterministic event id `v5(command id, KIND, "0")`; set what the step carries with
    /// struct update syntax (`CommandEvent { status, ..CommandEvent::step(..) }`).
    pub fn step(
        kind: CommandEventKind,
        command_id: &str,
        tenant_id: &str,
        agent_id: &str,
        at_micros: i64,
    ) -> CommandEvent {
        CommandEvent {
            event_id: crate::ids::v5(&[command_id, kind.symbol(), "0"]).to_string(),
            command_id: command_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            agent_id: agent_id.to_owned(),
            kind,
            command_type: String::new(),
            args: HashMap::new(),
            requires_approval: false,
            timeout_secs: 0,
            actor: None,
            sequence: 0,
            stream: None,
            chunk: None,
            status: None,
            exit_code: None,
            stdout: None,
            stderr: None,
            output_truncated: false,
            message: None,
            started_at: None,
            finished_at: None,
            occurred_at: at_micros,
            ingested_at: at_micros,
            group_id: None,
        }
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct SoftwarePackage {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture, where the package manager says.
    pub arch: Option<String>,
}

/// Installed software of one machine (`fleet.inventory.v1`, compacted by agent id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct SoftwareInventory {
    /// UUIDv5 of (agent id, digest).
    pub event_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Collection time on the agent (µs).
    pub occurred_at: i64,
    /// Time the gateway accepted it (µs).
    pub ingested_at: i64,
    /// `dpkg`, `rpm` or `none`.
    pub source: String,
    /// SHA-256 (hex) of the sorted package list.
    pub digest: String,
    /// The packages.
    pub packages: Vec<SoftwarePackage>,
}

/// Kind of ticket event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TicketEventKind {
    /// Open a ticket for a new incident.
    #[serde(rename = "REQUESTED")]
    Requested,
    /// The incident changed (acknowledged, resolved).
    #[serde(rename = "UPDATED")]
    Updated,
}

/// Ticket severity (the alert's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TicketSeverity {
    /// Informational.
    #[serde(rename = "INFO")]
    Info,
    /// Warning.
    #[serde(rename = "WARNING")]
    Warning,
    /// Critical.
    #[serde(rename = "CRITICAL")]
    Critical,
}

impl From<AlertSeverity> for TicketSeverity {
    fn from(s: AlertSeverity) -> Self {
        match s {
            AlertSeverity::Info => TicketSeverity::Info,
            AlertSeverity::Warning => TicketSeverity::Warning,
            AlertSeverity::Critical => TicketSeverity::Critical,
        }
    }
}

/// A ticket request or update for ticketing systems (`fleet.tickets.v1`, key: ticket id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct TicketEvent {
    /// UUIDv5 of (ticket id, kind, status).
    pub event_id: String,
    /// UUIDv5 of (alert id, "ticket").
    pub ticket_id: String,
    /// The alert behind the ticket.
    pub alert_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Requested or updated.
    pub kind: TicketEventKind,
    /// `open`, `acknowledged` or `resolved`.
    pub status: String,
    /// `P1` (critical) to `P4`.
    pub priority: String,
    /// The alert's severity.
    pub severity: TicketSeverity,
    /// One line.
    pub title: String,
    /// Names tenant, location, agent, metric, value and threshold.
    pub description: String,
    /// Location of the agent, if known.
    pub location_id: Option<String>,
    /// Rule.
    pub rule_id: String,
    /// Metric.
    pub metric: String,
    /// Mount or service, if any.
    pub subject: Option<String>,
    /// Value that raised the alert.
    pub value: f64,
    /// Threshold it crossed.
    pub threshold: f64,
    /// User who acknowledged or resolved it.
    pub actor: Option<String>,
    /// Time of the alert transition (µs).
    pub occurred_at: i64,
    /// When it was written (µs).
    pub ingested_at: i64,
}

/// Kind of rule event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleEventKind {
    /// Created, updated, enabled or disabled: the event carries the whole rule.
    #[serde(rename = "DEFINED")]
    Defined,
    /// Deleted: its open alerts are resolved.
    #[serde(rename = "DELETED")]
    Deleted,
}

impl RuleEventKind {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleEventKind::Defined => "defined",
            RuleEventKind::Deleted => "deleted",
        }
    }
}

/// Which agents of the tenant a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleScope {
    /// Every agent of the tenant.
    #[serde(rename = "TENANT")]
    Tenant,
    /// One agent (`scope_value`).
    #[serde(rename = "AGENT")]
    Agent,
    /// The agents carrying the tag `scope_value`.
    #[serde(rename = "TAG")]
    Tag,
}

impl RuleScope {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleScope::Tenant => "tenant",
            RuleScope::Agent => "agent",
            RuleScope::Tag => "tag",
        }
    }
}

/// A threshold rule (see `rule_event.avsc` and [`crate::rules`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct RuleDefinition {
    /// Name shown to people.
    pub name: String,
    /// Which agents it watches.
    pub scope: RuleScope,
    /// The agent id (AGENT) or the tag (TAG).
    pub scope_value: Option<String>,
    /// Metric name (see [`crate::samples`]) or `heartbeat.absent`.
    pub metric: String,
    /// Only this mount point or service; each one separately when absent.
    pub subject: Option<String>,
    /// `>`, `>=`, `<`, `<=`, `==` or `!=`.
    pub operator: String,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// Hysteresis: resolve only once `value operator recovery` no longer holds.
    pub recovery: Option<f64>,
    /// Seconds of sample time the breach must hold before the alert is raised.
    pub for_secs: i64,
    /// Raise an open, unacknowledged, still breaching alert again after this long (0: never).
    pub renotify_secs: i64,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// `None`: `metric` is an agent metric. `Some` (possibly empty): the rule watches the
    /// series of `fleet.samples.v1` named `metric` whose labels match every matcher.
    #[serde(default)]
    pub labels: Option<Vec<LabelMatcher>>,
    /// `Some`: an event rule, watching the agent events of `fleet.events.v1` (see
    /// [`EventRule`]); `metric` is then `event.<kind>`. Added in version 3.
    #[serde(default)]
    pub event: Option<EventRule>,
}

/// What an event rule matches (see `rule_event.avsc` and [`crate::rules`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct EventRule {
    /// The event kind that raises an alert.
    pub kind: String,
    /// Each must equal the event's attribute of that name (written in name order).
    #[serde(default, serialize_with = "sorted_map")]
    pub attributes: HashMap<String, String>,
    /// Only events at least this severe: `info`, `warning` or `critical`.
    #[serde(default)]
    pub min_severity: Option<String>,
    /// The event attribute whose value is the alert's subject.
    #[serde(default)]
    pub subject_attribute: Option<String>,
    /// Events of these kinds with the same attributes (and subject) resolve the alert.
    #[serde(default)]
    pub recovery_kinds: Vec<String>,
    /// The open alert resolves this long (event time) after the last matching event.
    #[serde(default)]
    pub resolve_after_secs: Option<i64>,
}

/// One label matcher of a rule on the standard protocols' series (PromQL's `=`, `!=`,
/// `=~`, `!~`; regular expressions match the whole value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, AvroSchema)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[avro(namespace = "io.fleetstream")]
pub struct LabelMatcher {
    /// Label name.
    #[cfg_attr(
        feature = "openapi",
        schema(pattern = "^[a-zA-Z_][a-zA-Z0-9_]{0,255}$")
    )]
    pub name: String,
    /// `=`, `!=`, `=~` or `!~`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(=|!=|=~|!~)$"))]
    pub op: String,
    /// Value, or regular expression.
    #[cfg_attr(feature = "openapi", schema(max_length = 1024))]
    pub value: String,
}

/// An alert rule was defined or deleted (`fleet.rules.v1`, key: rule id, compacted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct RuleEvent {
    /// UUIDv7.
    pub event_id: String,
    /// Stable rule id.
    pub rule_id: String,
    /// Tenant whose agents it watches.
    pub tenant_id: String,
    /// Defined or deleted.
    pub kind: RuleEventKind,
    /// DEFINED: the rule.
    pub rule: Option<RuleDefinition>,
    /// User who made the change.
    pub actor: Option<String>,
    /// Time of the change (µs).
    pub occurred_at: i64,
    /// When it was written (µs).
    pub ingested_at: i64,
}

/// The scope a desired remote configuration applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConfigScope {
    /// One agent.
    #[serde(rename = "AGENT")]
    Agent,
    /// The agents with a tag.
    #[serde(rename = "TAG")]
    Tag,
    /// The agents of a location.
    #[serde(rename = "LOCATION")]
    Location,
}

impl ConfigScope {
    /// Lower-case name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigScope::Agent => "agent",
            ConfigScope::Tag => "tag",
            ConfigScope::Location => "location",
        }
    }
}

/// The desired remote configuration of one scope was set (`fleet.config.v1`, key:
/// `config_key`, compacted). See `schemas/avro/remote_config.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct RemoteConfigEvent {
    /// UUIDv7.
    pub event_id: String,
    /// `{tenant}/{scope}/{target}` ([`RemoteConfigEvent::key_for`]).
    pub config_key: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent, tag or location.
    pub scope: ConfigScope,
    /// The agent id, the tag or the location id.
    pub target: String,
    /// Time of the change (µs): increases with every change.
    pub version: i64,
    /// Seconds between heartbeats.
    pub heartbeat_interval_secs: Option<f64>,
    /// Seconds between metric collections.
    pub metrics_interval_secs: Option<f64>,
    /// Watched systemd services.
    pub services: Option<Vec<String>>,
    /// Directory of the textfile collector.
    pub textfile_dir: Option<String>,
    /// Command types the agent may run (intersected with its local allow-list).
    pub allowed_commands: Option<Vec<String>>,
    /// User who made the change.
    pub actor: Option<String>,
    /// Time of the change (µs).
    pub occurred_at: i64,
    /// When it was written (µs).
    pub ingested_at: i64,
}

impl RemoteConfigEvent {
    /// The record key of a scope: `{tenant}/{scope}/{target}`.
    pub fn key_for(tenant: &str, scope: ConfigScope, target: &str) -> String {
        format!("{tenant}/{}/{target}", scope.as_str())
    }
}

/// Raw bytes: Avro `bytes` (a plain `Vec<u8>` would derive `array<int>`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AvroBytes(#[serde(with = "apache_avro::serde_avro_bytes")] pub Vec<u8>);

impl From<Vec<u8>> for AvroBytes {
    fn from(v: Vec<u8>) -> Self {
        AvroBytes(v)
    }
}

impl apache_avro::schema::derive::AvroSchemaComponent for AvroBytes {
    fn get_schema_in_ctxt(
        _named_schemas: &mut HashMap<apache_avro::schema::Name, apache_avro::Schema>,
        _enclosing_namespace: &apache_avro::schema::Namespace,
    ) -> apache_avro::Schema {
        apache_avro::Schema::Bytes
    }
}

/// Why a record is on the dead-letter topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DeadLetterKind {
    /// The bytes are not a record of the topic's type.
    #[serde(rename = "DECODE")]
    Decode,
    /// The record decoded, but its consumer or store refused it as invalid.
    #[serde(rename = "PROCESS")]
    Process,
    /// Not a failure: the source record was written back to its topic by
    /// `fleetstream deadletter replay`.
    #[serde(rename = "REPLAYED")]
    Replayed,
}

impl DeadLetterKind {
    /// Lower-case name, as used in metrics labels and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterKind::Decode => "decode",
            DeadLetterKind::Process => "process",
            DeadLetterKind::Replayed => "replayed",
        }
    }
}

/// A record a consumer gave up on, or the note that it was replayed
/// (`fleet.deadletter.v1`, key: event id). See `dead_letter.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct DeadLetter {
    /// DECODE / PROCESS: UUIDv5 of (consumer, source topic, partition, offset);
    /// REPLAYED: UUIDv5 of (source topic, partition, offset, "REPLAYED", new partition,
    /// new offset).
    pub event_id: String,
    /// Decode failure, refused record, or replay note.
    pub kind: DeadLetterKind,
    /// What went wrong (REPLAYED: where the bytes went).
    pub reason: String,
    /// The consumer that gave up (`readmodel`, `alert-evaluator`, ...).
    pub consumer: String,
    /// Its consumer group.
    pub group: String,
    /// The record's tenant, when it decoded.
    pub tenant_id: Option<String>,
    /// Topic of the record.
    pub source_topic: String,
    /// Its partition.
    pub source_partition: i32,
    /// Its offset.
    pub source_offset: i64,
    /// Its key, byte for byte.
    pub source_key: Option<AvroBytes>,
    /// Its log timestamp (ms since the epoch).
    pub source_timestamp: i64,
    /// Its value, byte for byte (empty for REPLAYED).
    pub value: AvroBytes,
    /// REPLAYED: partition the bytes were written to.
    pub replayed_partition: Option<i32>,
    /// REPLAYED: their new offset.
    pub replayed_offset: Option<i64>,
    /// When the consumer gave up, or the replay wrote (µs).
    pub occurred_at: i64,
}

impl DeadLetter {
    /// The deterministic event id of `consumer` giving up on the record at
    /// (`topic`, `partition`, `offset`).
    pub fn failure_id(consumer: &str, topic: &str, partition: u32, offset: i64) -> String {
        crate::ids::v5(&[consumer, topic, &partition.to_string(), &offset.to_string()]).to_string()
    }

    /// `topic/partition/offset` of the source record.
    pub fn source(&self) -> String {
        format!(
            "{}/{}/{}",
            self.source_topic, self.source_partition, self.source_offset
        )
    }
}

/// The protocol a [`SampleBatch`] came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SampleSource {
    /// Prometheus remote-write (protobuf + snappy).
    #[serde(rename = "PROMETHEUS_REMOTE_WRITE")]
    PrometheusRemoteWrite,
    /// OTLP/HTTP metrics (protobuf or JSON).
    #[serde(rename = "OTLP")]
    Otlp,
    /// Influx line protocol.
    #[serde(rename = "INFLUX")]
    Influx,
}

/// One label of a [`LabeledSample`].
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, AvroSchema,
)]
#[avro(namespace = "io.fleetstream")]
pub struct Label {
    /// `[a-zA-Z_][a-zA-Z0-9_]*`, unique within the sample.
    pub name: String,
    /// Any UTF-8.
    pub value: String,
}

/// One value of one series at one time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct LabeledSample {
    /// Metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
    pub metric: String,
    /// Labels other than the metric name, sorted by name. An array of pairs rather than an
    /// Avro map: standard tools read a map into an unordered dict/`HashMap`, while the sorted
    /// array keeps one byte form per series, and pairs cost the same on the wire.
    pub labels: Vec<Label>,
    /// Sample time (µs).
    pub timestamp: i64,
    /// Value; NaN and ±Inf are kept (a NaN is Prometheus' staleness marker).
    pub value: f64,
}

/// Samples of a standard write protocol from one request (`fleet.samples.v1`, key:
/// [`SampleBatch::partition_key`]). See `sample_batch.avsc`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, AvroSchema)]
#[avro(namespace = "io.fleetstream")]
pub struct SampleBatch {
    /// Batch id (UUID), assigned by the gateway.
    pub event_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// The record key, `{tenant_id}/{shard}` ([`SampleBatch::key_for`]).
    pub partition_key: String,
    /// The protocol the samples came in.
    pub source: SampleSource,
    /// Time the gateway accepted the request (µs).
    pub received_at: i64,
    /// The samples.
    pub samples: Vec<LabeledSample>,
}

impl SampleBatch {
    /// The record key of a batch of `tenant`'s series of shard `shard` (a hash of each
    /// series' source, [`crate::series::Source`]).
    ///
    /// Why the key is a source shard and not the tenant id: both keep each series' samples
    /// in order (a series always maps to the same key, hence the same partition), but a
    /// tenant key puts all of one tenant on one partition, and a fleet is often one tenant:
    /// one consumer would take the whole write load. Keyed by `tenant/shard`, one tenant's
    /// sources spread over every partition, one source's series share one, and a series
    /// never changes partition as long as the shard count does not change (the gateway
    /// fixes it in its config).
    pub fn key_for(tenant: &str, shard: u32) -> String {
        format!("{tenant}/{shard}")
    }
}

/// Avro enums whose symbols are SCREAMING_CASE: the derive in apache-avro 0.21 ignores serde
/// renames on variants, so these schemas are spelled out (and checked by the same test).
macro_rules! avro_enum {
    ($ty:ty, $name:literal, [$($sym:literal),+]) => {
        impl apache_avro::schema::derive::AvroSchemaComponent for $ty {
            fn get_schema_in_ctxt(
                named_schemas: &mut std::collections::HashMap<apache_avro::schema::Name, apache_avro::Schema>,
                _enclosing_namespace: &apache_avro::schema::Namespace,
            ) -> apache_avro::Schema {
                let name = apache_avro::schema::Name::new($name).expect("valid enum name");
                if named_schemas.contains_key(&name) {
                    return apache_avro::Schema::Ref { name };
                }
                let text = concat!(
                    r#"{"type":"enum","name":""#, $name, r#"","symbols":["#,
                    avro_enum!(@join $($sym),+), "]}"
                );
                let schema = apache_avro::Schema::parse_str(text).expect("valid enum schema");
                named_schemas.insert(name, schema.clone());
                schema
            }
        }
    };
    (@join $first:literal $(, $rest:literal)*) => {
        concat!("\"", $first, "\"" $(, ",\"", $rest, "\"")*)
    };
}

avro_enum!(
    EventSeverity,
    "io.fleetstream.EventSeverity",
    ["INFO", "WARNING", "CRITICAL"]
);
avro_enum!(
    AlertEventKind,
    "io.fleetstream.AlertEventKind",
    ["RAISED", "RESOLVED", "ACKNOWLEDGED"]
);
avro_enum!(
    AlertSeverity,
    "io.fleetstream.AlertSeverity",
    ["INFO", "WARNING", "CRITICAL"]
);
avro_enum!(
    AgentLifecycleKind,
    "io.fleetstream.AgentLifecycleKind",
    ["REGISTERED", "UPDATED", "ONLINE", "OFFLINE", "DEACTIVATED"]
);
avro_enum!(
    CommandEventKind,
    "io.fleetstream.CommandEventKind",
    [
        "REQUESTED",
        "APPROVED",
        "DISPATCHED",
        "PROGRESS",
        "COMPLETED",
        "TIMED_OUT",
        "REJECTED",
        "CANCELLED"
    ]
);
avro_enum!(
    TicketEventKind,
    "io.fleetstream.TicketEventKind",
    ["REQUESTED", "UPDATED"]
);
avro_enum!(
    TicketSeverity,
    "io.fleetstream.TicketSeverity",
    ["INFO", "WARNING", "CRITICAL"]
);
avro_enum!(
    RuleEventKind,
    "io.fleetstream.RuleEventKind",
    ["DEFINED", "DELETED"]
);
avro_enum!(
    RuleScope,
    "io.fleetstream.RuleScope",
    ["TENANT", "AGENT", "TAG"]
);
avro_enum!(
    ConfigScope,
    "io.fleetstream.ConfigScope",
    ["AGENT", "TAG", "LOCATION"]
);
avro_enum!(
    DeadLetterKind,
    "io.fleetstream.DeadLetterKind",
    ["DECODE", "PROCESS", "REPLAYED"]
);
avro_enum!(
    SampleSource,
    "io.fleetstream.SampleSource",
    ["PROMETHEUS_REMOTE_WRITE", "OTLP", "INFLUX"]
);
