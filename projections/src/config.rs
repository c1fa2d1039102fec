//! Projections configuration (`[projections]`, environment `FLEET_PROJECTIONS__*`).

use std::net::SocketAddr;
use std::time::Duration;

use fleet_service::config::EventLogSettings;
use serde::{Deserialize, Serialize};

/// Settings of the projections: the stores, the event log, the consumer groups.
/// `fleetstream projections` and `fleetstream api` read the same file (the API's own
/// settings are its `[api]` table, `fleet_query_api::ApiConfig`). Every key has a default;
/// see `config/projections.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ProjectionsConfig {
    /// Address of the query API (and `/healthz`, `/readyz`, `/metrics`). With
    /// `serve-api = false` only those three are served here.
    pub listen: SocketAddr,
    /// Whether `fleetstream projections` also serves the query API and the admin routes
    /// on `listen`. `false` leaves them to `fleetstream api` instances (same file);
    /// `fleetstream up` always serves them.
    pub serve_api: bool,
    /// The event log and its record framing (`[event-log]`).
    pub event_log: EventLogSettings,
    /// Read model URL: `postgres://...` or `sqlite://path` (embedded).
    pub read_model: String,
    /// Time-series store URL: `file:///dir` (embedded, one process only) or
    /// `scylla://host:9042[,host2:9042]/keyspace` (ScyllaDB or Cassandra).
    pub timeseries: String,
    /// How long the time-series store keeps each resolution (`[timeseries-retention]`).
    pub timeseries_retention: fleet_timeseries::Retention,
    /// The time-series engine: out-of-order allowance, idle sealing, checkpoint interval,
    /// head memory limit (`[timeseries-engine]`).
    pub timeseries_engine: fleet_timeseries::EngineConfig,
    /// How often the projections remove time series past retention
    /// ([`fleet_timeseries::TimeSeriesStore::expire`]; ScyllaDB expires rows by TTL itself).
    #[serde(with = "humantime_serde")]
    pub retention_sweep_interval: Duration,
    /// How long the read model keeps agent events (`fleet.events.v1`; the topic keeps its
    /// own retention), removed by the same sweep.
    #[serde(with = "humantime_serde")]
    pub events_retention: Duration,
    /// Consumer group of the read-model projection.
    pub read_model_group: String,
    /// Consumer group of the time-series projection.
    pub timeseries_group: String,
    /// Most records per batch (one read-model transaction per batch).
    pub batch_size: usize,
    /// How long the projections wait for a fuller batch when fewer than `batch-size`
    /// records are there (Kafka's `fetch.wait.max.ms`): fewer transactions and offset
    /// commits under a steady trickle of reports, for at most this much delay before a
    /// record is applied. Zero: apply what is there at once.
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// The listener's timeouts, connection cap and TLS (`[http]`).
    pub http: fleet_service::serve::HttpSettings,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        ProjectionsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            serve_api: true,
            event_log: EventLogSettings::default(),
            read_model: "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into(),
            timeseries: "file://fleetstream-data/timeseries".into(),
            timeseries_retention: fleet_timeseries::Retention::default(),
            timeseries_engine: fleet_timeseries::EngineConfig::default(),
            retention_sweep_interval: Duration::from_secs(600),
            events_retention: Duration::from_secs(30 * 86_400),
            read_model_group: "fleet-projection-readmodel".into(),
            timeseries_group: "fleet-projection-timeseries".into(),
            batch_size: 1000,
            fetch_wait: Duration::from_millis(50),
            http: fleet_service::serve::HttpSettings::default(),
        }
    }
}
