//! The store seams used by projections, the query API and the gateway.
//!
//! * [`ReadModel`]: tenants' agents with their latest metrics, and alerts. One SQL
//!   implementation serves `postgres://` and the embedded SQLite (`sqlite://` or a path),
//!   with one set of migrations. Consumed offsets are written in the same transaction
//!   as the rows they produced.
//! * [`TimeSeriesStore`]: every metric sample, idempotent upserts keyed by
//!   (tenant, agent, series, timestamp), queried in aggregated buckets. Embedded engine
//!   in the data directory (`file://dir`).
//! * [`registry::Registry`]: tenants, locations, registration tokens and agent
//!   credentials, in the read model's SQL database ([`open_registry`], [`open_sql`]).

use std::fmt::Debug;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use fleet_schemas::{AgentLifecycle, AlertEvent, Heartbeat, MetricReport};

pub mod read_model;
pub mod registry;
pub mod timeseries;

/// Errors of the stores.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The URL or configuration is wrong.
    #[error("store configuration: {0}")]
    Config(String),
    /// The store cannot serve now (connection refused, pool timeout); retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A query argument is out of range.
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    /// The thing named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing conflicts with an existing one (a duplicate name).
    #[error("conflict: {0}")]
    Conflict(String),
    /// Any other failure.
    #[error("store: {0}")]
    Internal(String),
}

/// Result alias of this crate.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

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
}

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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The latest report in full.
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
}

/// Status of an alert in the read model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
}

// ----------------------------------------------------------------------------------------
// Time series
// ----------------------------------------------------------------------------------------

/// One sample of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Series name (`cpu.percent`, `disk.percent:/var`; see `fleet_schemas::samples`).
    pub series: String,
    /// Sample time, µs since the epoch.
    pub ts_micros: i64,
    /// Value.
    pub value: f64,
}

/// A range query over one series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeQuery {
    /// Tenant.
    pub tenant_id: String,
    /// Agent.
    pub agent_id: String,
    /// Series name.
    pub series: String,
    /// Inclusive start, µs.
    pub start_micros: i64,
    /// Exclusive end, µs.
    pub end_micros: i64,
    /// Bucket width, µs (> 0). Buckets are aligned to multiples of the width since the epoch.
    pub interval_micros: i64,
}

/// One aggregated bucket; buckets without samples are omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    /// Bucket start, µs.
    pub start_micros: i64,
    /// Minimum.
    pub min: f64,
    /// Maximum.
    pub max: f64,
    /// Mean.
    pub avg: f64,
    /// Number of samples.
    pub count: u64,
    /// Value of the latest sample in the bucket.
    pub last: f64,
}

/// The most points a query may scan into buckets, to keep one request bounded.
pub const MAX_BUCKETS: i64 = 10_000;

/// The time-series store.
#[async_trait]
pub trait TimeSeriesStore: Send + Sync + Debug {
    /// Short engine name (`embedded`, `scylla`).
    fn engine(&self) -> &'static str;

    /// Writes points; a point with the key of a stored one replaces it (idempotent).
    async fn write(&self, points: &[Point]) -> Result<()>;

    /// Aggregates a series into buckets, oldest first. Fails with
    /// [`StoreError::InvalidQuery`] when the range is empty or would give more than
    /// [`MAX_BUCKETS`] buckets.
    async fn query(&self, query: &RangeQuery) -> Result<Vec<Bucket>>;

    /// Series names stored for an agent.
    async fn series(&self, tenant_id: &str, agent_id: &str) -> Result<Vec<String>>;
}

/// Checks a range query's arguments (shared by every engine).
pub fn validate_range(q: &RangeQuery) -> Result<()> {
    if q.interval_micros <= 0 {
        return Err(StoreError::InvalidQuery("interval must be positive".into()));
    }
    if q.end_micros <= q.start_micros {
        return Err(StoreError::InvalidQuery("end must be after start".into()));
    }
    let buckets = (q.end_micros - q.start_micros) / q.interval_micros;
    if buckets > MAX_BUCKETS {
        return Err(StoreError::InvalidQuery(format!(
            "{buckets} buckets requested, at most {MAX_BUCKETS}: widen the interval or narrow the range"
        )));
    }
    Ok(())
}

/// Opens the read model a URL names: `postgres://...`, `sqlite://path` or a bare path
/// to a SQLite file (created if missing). Runs the migrations.
pub async fn open_read_model(url: &str) -> Result<std::sync::Arc<dyn ReadModel>> {
    Ok(std::sync::Arc::new(
        read_model::SqlReadModel::connect(url).await?,
    ))
}

/// Opens the SQL database a URL names (as [`open_read_model`] does) as its concrete type,
/// so that one pool serves both seams: coerce clones of the `Arc` to `Arc<dyn ReadModel>`
/// and `Arc<dyn Registry>`.
///
/// [`Registry`]: registry::Registry
pub async fn open_sql(url: &str) -> Result<std::sync::Arc<read_model::SqlReadModel>> {
    Ok(std::sync::Arc::new(
        read_model::SqlReadModel::connect(url).await?,
    ))
}

/// Opens the registry a URL names: `postgres://...`, `sqlite://path` or a bare path to a
/// SQLite file (created if missing). Runs the migrations, which also create the read
/// model's tables: the registry lives in the read model's database. To share one pool
/// with the read model, use [`open_sql`].
pub async fn open_registry(url: &str) -> Result<std::sync::Arc<dyn registry::Registry>> {
    Ok(open_sql(url).await?)
}

/// Opens the time-series store a URL names: `file:///dir` or a bare directory path.
pub async fn open_timeseries(url: &str) -> Result<std::sync::Arc<dyn TimeSeriesStore>> {
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(StoreError::Config(format!(
            "unsupported time-series URL {url:?}: use file:///path/to/dir"
        )));
    }
    // Opening reads (and after a crash, repairs) the file: keep it off the async workers.
    let path = std::path::PathBuf::from(path);
    let store = tokio::task::spawn_blocking(move || timeseries::EmbeddedTimeSeries::open(&path))
        .await
        .map_err(|e| {
            StoreError::Internal(format!("opening the time-series store failed: {e}"))
        })??;
    Ok(std::sync::Arc::new(store))
}
