//! The read-model seam: tenants' agents with their latest metrics, alerts, remote commands
//! with their audit trail, installed software, tickets and alert rules, projected from the
//! topics (rebuildable: `fleetstream replay` makes it again from the log), plus the API's
//! audit log.
//!
//! * [`ReadModel`], [`Change`], [`StoredOffset`] and the row types the API shows: no
//!   database driver.
//! * With the `sql` feature (default): [`SqlReadModel`], one SQL implementation serving
//!   `postgres://` and the embedded SQLite (`sqlite://` or a path) with one set of
//!   migrations ([`MIGRATIONS`]). Consumed offsets are written in the same transaction as
//!   the rows they produced. By default it shares its database with the registry
//!   (`fleet-registry`), whose tables it never touches.

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use fleet_schemas::{
    AgentEvent, AgentLifecycle, AlertEvent, CommandEvent, Heartbeat, MetricReport,
    SoftwareInventory, TicketEvent,
};
pub use fleet_sql::{Result, StoreError};

mod notify;
#[cfg(feature = "sql")]
mod sql;

pub use notify::{
    alert_payload, AlertFacts, AlertMatcher, AttemptNext, ChannelKind, ChannelSettings, Delivery,
    DeliveryAttempt, DeliveryQuery, DeliverySource, DeliveryStatus, EmailSettings, NewDelivery,
    NotificationChannel, NotificationRoute, Silence, SmtpTls, WEBHOOK_BODY_VERSION,
};

/// The shared pool (from `fleet-sql`), to open the read model beside the registry.
#[cfg(feature = "sql")]
pub use fleet_sql::{Database, Engine};
#[cfg(feature = "sql")]
pub use sql::{
    open_read_model, ReadModelSnapshot, SnapshotRow, SnapshotTable, SqlReadModel, TableSnapshot,
    MIGRATIONS, NOT_PROJECTED_TABLES, PROJECTED_TABLES,
};

/// Page size of the lists when the query names none.
pub const DEFAULT_LIMIT: u32 = 100;
/// Largest page size of the lists; larger limits are lowered to it.
pub const MAX_LIMIT: u32 = 1000;

// ----------------------------------------------------------------------------------------
// Read model
// ----------------------------------------------------------------------------------------

/// A change a projection applies to the read model.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Latest metrics of an agent (kept only if newer than what is stored).
    Report(Box<MetricReport>),
    /// An agent is alive.
    Heartbeat(Heartbeat),
    /// Alert lifecycle.
    Alert(AlertEvent),
    /// Agent lifecycle: enrollment facts and deactivation.
    Lifecycle(AgentLifecycle),
    /// Remote-command lifecycle: the command's state, and (but for PROGRESS) its audit trail.
    Command(Box<CommandEvent>),
    /// An agent's installed software (replaces the stored list only if newer).
    Inventory(Box<SoftwareInventory>),
    /// Ticket requested or updated.
    Ticket(Box<TicketEvent>),
    /// Alert rule defined or deleted.
    Rule(Box<fleet_schemas::RuleEvent>),
    /// Series of the standard write protocols seen in a `fleet.samples.v1` batch (one
    /// entry per series, its times those of the batch's samples).
    Series(Vec<SampleSeries>),
    /// Something happened on an agent (`fleet.events.v1`; kept once per event id).
    Event(Box<AgentEvent>),
    /// The desired remote configuration of a scope (the newest version of a key wins).
    RemoteConfig(Box<fleet_schemas::RemoteConfigEvent>),
}

/// What an agent last said it runs, from its heartbeats.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AppliedConfig {
    /// Agent.
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Version of the remote configuration it runs (`None`: none).
    pub config_version: Option<i64>,
    /// Its heartbeat interval, seconds.
    pub heartbeat_interval_secs: Option<f64>,
    /// Time of that heartbeat (µs).
    pub reported_at: i64,
}

/// How coarsely the series index keeps the newest sample time of a series
/// ([`SampleSeries::last_at`]): one hour, so that steady writes change no row.
pub const SERIES_LAST_STEP_MICROS: i64 = 3_600_000_000;

/// A series of the standard write protocols in the read model's index (`sample_series`):
/// what `fleet.samples.v1` held of it. Written by [`Change::Series`] (the earliest
/// `first_at` and the latest `last_at` win), read by [`ReadModel::list_sample_series`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleSeries {
    /// Tenant.
    pub tenant_id: String,
    /// The time-series engine's unit holding it (`fleet_schemas::series::unit_id`).
    pub unit_id: String,
    /// Its text, `metric{a="x",...}` (`fleet_schemas::series::series_text`): its name in
    /// the time-series engine.
    pub series: String,
    /// Metric name.
    pub metric: String,
    /// Labels other than the metric name, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Time of its earliest sample (µs).
    pub first_at: i64,
    /// Time of its newest sample rounded down to a multiple of [`SERIES_LAST_STEP_MICROS`]
    /// (µs): its samples end before `last_at + SERIES_LAST_STEP_MICROS`.
    pub last_at: i64,
}

impl SampleSeries {
    /// `t` rounded down to the step [`SampleSeries::last_at`] keeps.
    pub fn last_step(t: i64) -> i64 {
        t.div_euclid(SERIES_LAST_STEP_MICROS) * SERIES_LAST_STEP_MICROS
    }
}

/// Which series [`ReadModel::list_sample_series`] lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleSeriesQuery {
    /// The tenant.
    pub tenant_id: String,
    /// Only series of this metric name.
    pub metric: Option<String>,
    /// Only series that may have samples at or after this time (µs).
    pub start: i64,
    /// Only series with samples at or before this time (µs).
    pub end: i64,
    /// At most this many (at most [`MAX_SERIES_LIMIT`]).
    pub limit: usize,
}

/// The most series one [`ReadModel::list_sample_series`] call returns.
pub const MAX_SERIES_LIMIT: usize = 100_000;

/// The next offset a projection consumes on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to consume.
    pub next_offset: i64,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentRow {
    /// Owning tenant.
    pub tenant_id: String,
    /// Agent id.
    pub agent_id: String,
    /// First time anything was heard from the agent (µs).
    pub first_seen_at: i64,
    /// Last time anything was heard from the agent (µs).
    pub last_seen_at: i64,
    /// Collection time of the latest report (µs).
    pub last_metrics_at: Option<i64>,
    /// CPU of the latest report.
    pub cpu_percent: Option<f64>,
    /// Memory of the latest report.
    pub memory_percent: Option<f64>,
    /// Fullest disk of the latest report.
    pub disk_percent_max: Option<f64>,
    /// Load of the latest report.
    pub load_1: Option<f64>,
    /// Uptime of the latest report.
    pub uptime_seconds: Option<i64>,
    /// The latest report in full, its security posture included (`security`).
    #[schema(value_type = Option<fleet_schemas::MetricReport>)]
    pub latest_report: Option<MetricReportJson>,
    /// Location from enrollment.
    pub location_id: Option<String>,
    /// Device name from enrollment.
    pub device_name: Option<String>,
    /// Host name from enrollment.
    pub hostname: Option<String>,
    /// Machine facts from enrollment (JSON).
    pub facts: Option<serde_json::Value>,
    /// `enrolled`, `deactivated`, or absent for agents that never enrolled.
    pub enrollment: Option<String>,
    /// Enrollment time (µs).
    pub registered_at: Option<i64>,
    /// Deactivation time (µs).
    pub deactivated_at: Option<i64>,
    /// `online`, `offline` (the liveness processor found it silent and nothing was heard
    /// since) or `deactivated`.
    pub status: AgentStatus,
    /// Tags set by operators.
    pub tags: Vec<String>,
    /// Alerts of the agent not yet resolved.
    pub open_alert_count: u64,
}

/// Status of an agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    /// Heard from within the liveness window (or never judged silent).
    Online,
    /// Judged silent by the liveness processor, and nothing heard since.
    Offline,
    /// Credential revoked.
    Deactivated,
}

impl AgentStatus {
    /// Name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Online => "online",
            AgentStatus::Offline => "offline",
            AgentStatus::Deactivated => "deactivated",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<AgentStatus> {
        match s {
            "online" => Some(AgentStatus::Online),
            "offline" => Some(AgentStatus::Offline),
            "deactivated" => Some(AgentStatus::Deactivated),
            _ => None,
        }
    }
}

/// A watched service of an agent, from its newest report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceRow {
    /// Service (unit) name.
    pub name: String,
    /// running, stopped, failed or unknown.
    pub status: String,
    /// Main process id, if running.
    pub pid: Option<i64>,
    /// Collection time of the report it came from (µs).
    pub observed_at: i64,
}

/// Counters of a fleet (one tenant, or every tenant).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetOverview {
    /// Agents by status.
    pub agents: AgentCounts,
    /// Open (unresolved) alerts by severity.
    pub open_alerts: AlertCounts,
    /// Commands not yet finished (requested, awaiting approval, approved, dispatched,
    /// running).
    pub pending_commands: u64,
}

/// Agents by status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentCounts {
    /// All agents.
    pub total: u64,
    /// Online.
    pub online: u64,
    /// Offline.
    pub offline: u64,
    /// Deactivated.
    pub deactivated: u64,
}

/// Unresolved alerts by severity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertCounts {
    /// All unresolved alerts.
    pub total: u64,
    /// Critical.
    pub critical: u64,
    /// Warning.
    pub warning: u64,
    /// Info.
    pub info: u64,
}

/// One accepted change made through the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditEntry {
    /// Unique id (a UUID).
    pub audit_id: String,
    /// Tenant the change was in (absent for global ones, like creating a tenant admin).
    pub tenant_id: Option<String>,
    /// When (µs).
    pub at: i64,
    /// Who (user name).
    pub actor: String,
    /// What, as `noun.verb` (`alert.acknowledge`, `rule.create`, `token.create`).
    pub action: String,
    /// What it was done to (an id).
    pub target: String,
    /// Extra facts (JSON), never secrets.
    pub details: Option<serde_json::Value>,
}

/// Filters of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this tenant (`None`: everything, admin only).
    pub tenant_id: Option<String>,
    /// Only this actor.
    pub actor: Option<String>,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
}

/// A metric report kept as JSON in the read model.
pub type MetricReportJson = serde_json::Value;

/// Filters of the agent list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentQuery {
    /// Only this tenant's agents (`None`: all tenants, admin only).
    pub tenant_id: Option<String>,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
    /// Agents after this id (paging by agent id).
    pub after: Option<String>,
    /// Only agents at this location.
    pub location_id: Option<String>,
    /// Only agents with this status.
    pub status: Option<AgentStatus>,
    /// Only agents carrying this tag.
    pub tag: Option<String>,
    /// Only agents whose id, host name or device name contains this (case-insensitive).
    pub text: Option<String>,
}

/// Status of an alert in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// Raised and not yet resolved or acknowledged.
    Open,
    /// Acknowledged by a user, not yet resolved.
    Acknowledged,
    /// Resolved.
    Resolved,
}

impl AlertStatus {
    /// Name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::Resolved => "resolved",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<AlertStatus> {
        match s {
            "open" => Some(AlertStatus::Open),
            "acknowledged" => Some(AlertStatus::Acknowledged),
            "resolved" => Some(AlertStatus::Resolved),
            _ => None,
        }
    }
}

/// An alert as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertRow {
    /// Deterministic alert id.
    pub alert_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Rule.
    pub rule_id: String,
    /// Rule name.
    pub rule_name: String,
    /// Metric.
    pub metric: String,
    /// Mount point or service.
    pub subject: Option<String>,
    /// info, warning, critical.
    pub severity: String,
    /// Lifecycle status.
    pub status: AlertStatus,
    /// Operator.
    pub operator: String,
    /// Threshold.
    pub threshold: f64,
    /// Value that raised it.
    pub value: f64,
    /// Message of the raise.
    pub message: String,
    /// When it was raised (time of the breaching sample, µs).
    pub raised_at: i64,
    /// When it was acknowledged (µs).
    pub acknowledged_at: Option<i64>,
    /// Who acknowledged.
    pub acknowledged_by: Option<String>,
    /// When it was resolved (µs).
    pub resolved_at: Option<i64>,
    /// Value that resolved it.
    pub resolved_value: Option<f64>,
}

/// Filters of the alert list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only alerts in this status.
    pub status: Option<AlertStatus>,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
}

/// Status of a remote command in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Requested, needs no approval, not yet handed to the agent.
    Requested,
    /// Requested, waiting for a second user's approval.
    AwaitingApproval,
    /// Approved, not yet handed to the agent.
    Approved,
    /// Handed to the agent.
    Dispatched,
    /// The agent reported progress.
    Running,
    /// Finished with success.
    Succeeded,
    /// Finished with a failure (or failed to start).
    Failed,
    /// No result in time (the command-timeouts processor, or the agent's own timeout).
    TimedOut,
    /// The agent refused it (not on its allow-list).
    Refused,
    /// A second user refused it while it awaited approval; never delivered.
    Rejected,
    /// Withdrawn before it was dispatched; never delivered.
    Cancelled,
}

impl CommandStatus {
    /// Name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Requested => "requested",
            CommandStatus::AwaitingApproval => "awaiting_approval",
            CommandStatus::Approved => "approved",
            CommandStatus::Dispatched => "dispatched",
            CommandStatus::Running => "running",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
            CommandStatus::TimedOut => "timed_out",
            CommandStatus::Refused => "refused",
            CommandStatus::Rejected => "rejected",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<CommandStatus> {
        Some(match s {
            "requested" => CommandStatus::Requested,
            "awaiting_approval" => CommandStatus::AwaitingApproval,
            "approved" => CommandStatus::Approved,
            "dispatched" => CommandStatus::Dispatched,
            "running" => CommandStatus::Running,
            "succeeded" => CommandStatus::Succeeded,
            "failed" => CommandStatus::Failed,
            "timed_out" => CommandStatus::TimedOut,
            "refused" => CommandStatus::Refused,
            "rejected" => CommandStatus::Rejected,
            "cancelled" => CommandStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the command has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CommandStatus::Succeeded
                | CommandStatus::Failed
                | CommandStatus::TimedOut
                | CommandStatus::Refused
                | CommandStatus::Rejected
                | CommandStatus::Cancelled
        )
    }

    /// Whether no gateway has handed the command on yet (it may still be cancelled).
    pub fn is_undelivered(self) -> bool {
        matches!(
            self,
            CommandStatus::Requested | CommandStatus::AwaitingApproval | CommandStatus::Approved
        )
    }
}

/// A remote command as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandRow {
    /// Command id.
    pub command_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent that runs it.
    pub agent_id: String,
    /// Command type (empty while only events without it were seen).
    pub command_type: String,
    /// Arguments.
    pub args: std::collections::BTreeMap<String, String>,
    /// Whether a second user must approve it.
    pub requires_approval: bool,
    /// Timeout on the agent, seconds.
    pub timeout_secs: i64,
    /// Where it is in its lifecycle.
    pub status: CommandStatus,
    /// Who requested it.
    pub requested_by: Option<String>,
    /// When it was requested (µs).
    pub requested_at: Option<i64>,
    /// Who approved it.
    pub approved_by: Option<String>,
    /// When it was approved (µs).
    pub approved_at: Option<i64>,
    /// When a gateway first handed it to the agent (µs).
    pub dispatched_at: Option<i64>,
    /// When the agent started it (µs).
    pub started_at: Option<i64>,
    /// When it ended (µs).
    pub finished_at: Option<i64>,
    /// Exit code, if the process ran to an exit.
    pub exit_code: Option<i64>,
    /// Captured stdout (bounded).
    pub stdout: Option<String>,
    /// Captured stderr (bounded).
    pub stderr: Option<String>,
    /// Whether stdout or stderr were cut at the bound.
    pub output_truncated: bool,
    /// Why it was refused, failed to start or timed out.
    pub message: Option<String>,
    /// Time of its latest event (µs).
    pub updated_at: i64,
    /// The command group (fleet-wide command) it is one agent's part of.
    pub group_id: Option<String>,
}

/// One entry of a command's audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandAuditRow {
    /// Event id.
    pub event_id: String,
    /// `requested`, `approved`, `dispatched`, `completed` or `timed_out`.
    pub kind: String,
    /// Who requested or approved it, or which gateway dispatched it.
    pub actor: Option<String>,
    /// COMPLETED: the result status; TIMED_OUT: the message.
    pub detail: Option<String>,
    /// When it happened (µs).
    pub at: i64,
}

/// A command with its audit trail, oldest entry first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandDetail {
    /// The command.
    #[serde(flatten)]
    pub command: CommandRow,
    /// Who requested, approved, dispatched; how it ended.
    pub audit: Vec<CommandAuditRow>,
}

/// Most progress chunks the read model keeps of one command (the agent sends at most four
/// a second, so a command of the longest timeout, an hour, stays within it).
pub const MAX_STORED_CHUNKS: i64 = 16_384;

/// One progress chunk of a command: output or a status line, in the agent's order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandOutputChunk {
    /// The agent's chunk number, from 1 (gaps: chunks lost on the way or past the bound).
    pub sequence: i64,
    /// `stdout`, `stderr` or `status`.
    pub stream: String,
    /// The text.
    pub chunk: String,
    /// When the agent produced it (µs).
    pub at: i64,
}

/// A page of a command's stored progress chunks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandOutputQuery {
    /// Only a command of this tenant.
    pub tenant_id: Option<String>,
    /// The command.
    pub command_id: String,
    /// Chunks with a greater sequence (0: from the first).
    pub after: i64,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
}

/// Filters of an agent's command history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// The agent.
    pub agent_id: String,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
    /// Commands older than this command id (paging, newest first). Fails with
    /// [`StoreError::InvalidQuery`] when no such command of the agent is stored.
    pub after: Option<String>,
}

/// Most agents a command group may target (its target resolves to at most this many).
pub const MAX_GROUP_AGENTS: u32 = 10_000;

/// What a command group targets: the tenant's active agents with a tag, at a location, or
/// named one by one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandTarget {
    /// Agents carrying this tag.
    Tag(String),
    /// Agents enrolled at this location.
    Location(String),
    /// These agents.
    Agents(Vec<String>),
}

/// A command group as requested: one command type for many agents, one approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandGroup {
    /// Group id.
    pub group_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// What it targets.
    pub target: CommandTarget,
    /// Command type.
    pub command_type: String,
    /// Arguments.
    pub args: std::collections::BTreeMap<String, String>,
    /// Timeout on each agent, seconds.
    pub timeout_secs: i64,
    /// Whether a second user must approve it (once, for the whole group).
    pub requires_approval: bool,
    /// Who requested it.
    pub requested_by: String,
    /// When it was requested (µs).
    pub requested_at: i64,
    /// How many agents the target resolved to (one command each).
    pub agent_count: i64,
}

/// The members of a command group by status (the projected ones; a member not projected
/// yet is in none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandGroupCounts {
    /// Members by status name (`requested`, `awaiting_approval`, ..., `cancelled`); a
    /// status no member has is absent.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Who approved the group (the earliest approval of a member).
    pub approved_by: Option<String>,
    /// When (µs).
    pub approved_at: Option<i64>,
}

impl CommandGroupCounts {
    /// Members the read model has projected (in any status).
    pub fn projected(&self) -> i64 {
        self.by_status
            .values()
            .fold(0i64, |a, b| a.saturating_add(*b))
    }

    /// The counts as the API shows them for a group of `agent_count` agents: `pending`
    /// (requested or approved but not dispatched, and members not projected yet), then one
    /// count per other status.
    pub fn summary(&self, agent_count: i64) -> CommandGroupSummary {
        use CommandStatus as S;
        let n = |s: S| self.by_status.get(s.as_str()).copied().unwrap_or(0);
        let projected = self.projected();
        let unseen = agent_count.saturating_sub(projected).max(0);
        CommandGroupSummary {
            total: agent_count.max(projected),
            pending: n(S::Requested)
                .saturating_add(n(S::Approved))
                .saturating_add(unseen),
            awaiting_approval: n(S::AwaitingApproval),
            dispatched: n(S::Dispatched),
            running: n(S::Running),
            succeeded: n(S::Succeeded),
            failed: n(S::Failed),
            refused: n(S::Refused),
            timed_out: n(S::TimedOut),
            rejected: n(S::Rejected),
            cancelled: n(S::Cancelled),
        }
    }
}

/// A command group's members by where they are (each member in exactly one count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandGroupSummary {
    /// Members in all (the agents the target resolved to).
    pub total: i64,
    /// Requested (or approved) and not yet handed to the agent, or not projected yet.
    pub pending: i64,
    /// Waiting for the group's approval.
    pub awaiting_approval: i64,
    /// Handed to the agent, no progress yet.
    pub dispatched: i64,
    /// The agent reported progress.
    pub running: i64,
    /// Finished with success.
    pub succeeded: i64,
    /// Finished with a failure.
    pub failed: i64,
    /// The agent refused it (not on its allow-list).
    pub refused: i64,
    /// No result in time.
    pub timed_out: i64,
    /// Rejected instead of approved; never delivered.
    pub rejected: i64,
    /// Cancelled before dispatch; never delivered.
    pub cancelled: i64,
}

/// A page of a command group's members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandGroupMembersQuery {
    /// The group.
    pub group_id: String,
    /// Only members in one of these statuses (empty: all).
    pub statuses: Vec<CommandStatus>,
    /// Page size (at most [`MAX_GROUP_AGENTS`]; default 100).
    pub limit: Option<u32>,
    /// Members after this command id (paging by command id).
    pub after: Option<String>,
}

/// One installed package as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SoftwareRow {
    /// Package name.
    pub name: String,
    /// Installed version.
    pub version: String,
    /// Architecture, where the package manager says.
    pub arch: Option<String>,
}

/// An agent's newest software inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AgentSoftware {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// `dpkg`, `rpm` or `none`.
    pub source: String,
    /// SHA-256 (hex) of the sorted package list.
    pub digest: String,
    /// Collection time on the agent (µs).
    pub collected_at: i64,
    /// Packages in the inventory (before the name filter).
    pub package_count: i64,
    /// Packages matching the filter, by name then architecture.
    pub packages: Vec<SoftwareRow>,
}

/// Filters of an agent's software.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SoftwareQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// The agent.
    pub agent_id: String,
    /// Only packages whose name contains this (case-insensitive for ASCII).
    pub name: Option<String>,
}

/// Status of a ticket in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TicketStatus {
    /// Open.
    Open,
    /// The alert behind it was acknowledged.
    Acknowledged,
    /// The alert behind it was resolved.
    Resolved,
}

impl TicketStatus {
    /// Name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            TicketStatus::Open => "open",
            TicketStatus::Acknowledged => "acknowledged",
            TicketStatus::Resolved => "resolved",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<TicketStatus> {
        match s {
            "open" => Some(TicketStatus::Open),
            "acknowledged" => Some(TicketStatus::Acknowledged),
            "resolved" => Some(TicketStatus::Resolved),
            _ => None,
        }
    }
}

/// A ticket as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TicketRow {
    /// Ticket id (derived from the alert id).
    pub ticket_id: String,
    /// The alert behind it.
    pub alert_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Lifecycle status.
    pub status: TicketStatus,
    /// `P1` (critical) to `P4`.
    pub priority: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// One line.
    pub title: String,
    /// The incident in words.
    pub description: String,
    /// Location of the agent, if known.
    pub location_id: Option<String>,
    /// Time of its first event (µs).
    pub created_at: i64,
    /// Time of its latest event (µs).
    pub updated_at: i64,
}

/// Filters of the ticket list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TicketQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only tickets in this status.
    pub status: Option<TicketStatus>,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
}

/// Filters of the event timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only this tenant.
    pub tenant_id: Option<String>,
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only events of this kind (`service_failed`, `agent_started`, ...).
    pub kind: Option<String>,
    /// Only events of this severity (`INFO`, `WARNING`, `CRITICAL`).
    pub severity: Option<String>,
    /// Only events at or after this time (µs).
    pub since: Option<i64>,
    /// Only events before this time (µs; exclusive: the oldest time of a page gives the
    /// next, older page).
    pub until: Option<i64>,
    /// Page size (at most 1000; default 100).
    pub limit: Option<u32>,
}

/// One agent event in the timeline: the record of `fleet.events.v1`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventRow {
    /// Event id (UUIDv7).
    pub event_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Time on the agent (µs).
    pub occurred_at: i64,
    /// Time the gateway accepted it (µs).
    pub ingested_at: i64,
    /// Kind, for example `service_failed`.
    pub kind: String,
    /// `INFO`, `WARNING` or `CRITICAL`.
    pub severity: String,
    /// Human-readable message.
    pub message: String,
    /// Free-form attributes.
    pub attributes: std::collections::BTreeMap<String, String>,
}

/// The read model.
#[async_trait]
pub trait ReadModel: Send + Sync + Debug {
    /// Short engine name (`postgres`, `sqlite`).
    fn engine(&self) -> &'static str;

    /// Applies changes and records `offsets` as projection `projection`'s next offsets, in
    /// one transaction. Applying the same changes twice leaves the same state.
    async fn apply(
        &self,
        projection: &str,
        changes: &[Change],
        offsets: &[StoredOffset],
    ) -> Result<()>;

    /// Next offsets stored for a projection (empty when it never ran).
    async fn offsets(&self, projection: &str) -> Result<Vec<StoredOffset>>;

    /// Agents, ordered by agent id.
    async fn list_agents(&self, query: &AgentQuery) -> Result<Vec<AgentRow>>;

    /// One agent; `tenant_id` restricts the lookup to a tenant.
    async fn get_agent(&self, tenant_id: Option<&str>, agent_id: &str) -> Result<Option<AgentRow>>;

    /// Alerts, newest raise first.
    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<AlertRow>>;

    /// One alert; `tenant_id` restricts the lookup to a tenant.
    async fn get_alert(&self, tenant_id: Option<&str>, alert_id: &str) -> Result<Option<AlertRow>>;

    /// An agent's commands, newest first (by the time of their first event).
    async fn list_commands(&self, query: &CommandQuery) -> Result<Vec<CommandRow>>;

    /// One command with its audit trail; `tenant_id` restricts the lookup to a tenant.
    async fn get_command(
        &self,
        tenant_id: Option<&str>,
        command_id: &str,
    ) -> Result<Option<CommandDetail>>;

    /// The enrolled, not deactivated agents of `tenant_id` that `target` names, by agent
    /// id, at most `limit`.
    async fn command_targets(
        &self,
        tenant_id: &str,
        target: &CommandTarget,
        limit: u32,
    ) -> Result<Vec<String>>;

    /// Stores a requested command group; a group id stored already keeps its row (a
    /// retried request) but for `agent_count`, which takes the larger. Not projected.
    async fn create_command_group(&self, group: &CommandGroup) -> Result<()>;

    /// One command group; `tenant_id` restricts the lookup to a tenant.
    async fn get_command_group(
        &self,
        tenant_id: Option<&str>,
        group_id: &str,
    ) -> Result<Option<CommandGroup>>;

    /// Command groups, newest first; `after` is a group id of the previous page.
    async fn list_command_groups(
        &self,
        tenant_id: Option<&str>,
        limit: Option<u32>,
        after: Option<&str>,
    ) -> Result<Vec<CommandGroup>>;

    /// A group's projected members counted by status (one query).
    async fn command_group_counts(&self, group_id: &str) -> Result<CommandGroupCounts>;

    /// A group's members, by command id.
    async fn command_group_members(
        &self,
        query: &CommandGroupMembersQuery,
    ) -> Result<Vec<CommandRow>>;

    /// A command's stored progress chunks in sequence order (empty: none stored yet, or
    /// the command is unknown or another tenant's).
    async fn command_output(&self, query: &CommandOutputQuery) -> Result<Vec<CommandOutputChunk>>;

    /// An agent's newest software inventory (`None`: none stored, or another tenant's).
    async fn agent_software(&self, query: &SoftwareQuery) -> Result<Option<AgentSoftware>>;

    /// Tickets, newest first (by creation).
    async fn list_tickets(&self, query: &TicketQuery) -> Result<Vec<TicketRow>>;

    /// Agent events, newest first (by the agent's time, then event id).
    async fn list_events(&self, query: &EventQuery) -> Result<Vec<EventRow>>;

    /// Removes the events that happened before `before` (µs); returns how many.
    async fn expire_events(&self, before: i64) -> Result<u64>;

    /// The alert rules in force (their newest DEFINED event), by rule id; `None`: every
    /// tenant's.
    async fn list_rules(&self, tenant_id: Option<&str>) -> Result<Vec<fleet_schemas::RuleEvent>>;

    /// One rule in force (its newest DEFINED event; `None`: unknown or deleted).
    async fn get_rule(&self, rule_id: &str) -> Result<Option<fleet_schemas::RuleEvent>>;

    /// The desired remote-configuration records of a tenant (each key's newest), by key.
    async fn list_remote_configs(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<fleet_schemas::RemoteConfigEvent>>;

    /// What the agent last said it runs (`None`: no heartbeat with a version yet).
    async fn applied_config(&self, agent_id: &str) -> Result<Option<AppliedConfig>>;

    /// Counters of one tenant's fleet (`None`: every tenant).
    async fn overview(&self, tenant_id: Option<&str>) -> Result<FleetOverview>;

    /// The watched services of an agent, by name.
    async fn agent_services(
        &self,
        tenant_id: Option<&str>,
        agent_id: &str,
    ) -> Result<Vec<ServiceRow>>;

    /// Records an accepted change (an existing `audit_id` is left as it is).
    async fn record_audit(&self, entry: &AuditEntry) -> Result<()>;

    /// The audit log, newest first.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>>;

    /// The series of the standard write protocols of a tenant that may have samples in
    /// `[query.start, query.end]` (by the index's first and coarse last times), at most
    /// `query.limit`, ordered by series text.
    async fn list_sample_series(&self, query: &SampleSeriesQuery) -> Result<Vec<SampleSeries>>;

    // Notifications (not projected: written by the API and the notifier).

    /// Stores a new channel (its id is new).
    async fn create_channel(&self, channel: &NotificationChannel) -> Result<()>;

    /// Channels, by name then id; `None`: every tenant's.
    async fn list_channels(&self, tenant_id: Option<&str>) -> Result<Vec<NotificationChannel>>;

    /// One channel with its secret; `tenant_id` restricts the lookup to a tenant.
    async fn get_channel(
        &self,
        tenant_id: Option<&str>,
        channel_id: &str,
    ) -> Result<Option<NotificationChannel>>;

    /// Deletes a channel (its deliveries stay); the channel deleted, `None` when unknown.
    async fn delete_channel(
        &self,
        tenant_id: Option<&str>,
        channel_id: &str,
    ) -> Result<Option<NotificationChannel>>;

    /// Stores a new route.
    async fn create_route(&self, route: &NotificationRoute) -> Result<()>;

    /// Routes, by name then id; `None`: every tenant's.
    async fn list_routes(&self, tenant_id: Option<&str>) -> Result<Vec<NotificationRoute>>;

    /// Deletes a route; the route deleted, `None` when unknown.
    async fn delete_route(
        &self,
        tenant_id: Option<&str>,
        route_id: &str,
    ) -> Result<Option<NotificationRoute>>;

    /// Stores a new silence.
    async fn create_silence(&self, silence: &Silence) -> Result<()>;

    /// Silences not expired at `at` (µs; `None`: every one), soonest expiry first.
    async fn list_silences(&self, tenant_id: Option<&str>, at: Option<i64>)
        -> Result<Vec<Silence>>;

    /// Deletes a silence; the silence deleted, `None` when unknown.
    async fn delete_silence(
        &self,
        tenant_id: Option<&str>,
        silence_id: &str,
    ) -> Result<Option<Silence>>;

    /// Puts deliveries in the outbox, in one transaction; one already there (same id) is
    /// left as it is. Returns how many were new.
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> Result<u64>;

    /// Claims up to `limit` pending deliveries due at `now` (µs) that no other instance
    /// holds, until `lease_until` (µs); returns them, due first.
    async fn claim_deliveries(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Delivery>>;

    /// Records an attempt of a delivery and what follows it, in one transaction (the lease
    /// is released).
    async fn record_attempt(
        &self,
        delivery_id: &str,
        attempt: &DeliveryAttempt,
        next: &AttemptNext,
    ) -> Result<()>;

    /// Deliveries with their attempts, newest first.
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>>;
}
