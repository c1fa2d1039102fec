//! Projections configuration (`[projections]`, environment `FLEET_PROJECTIONS__*`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of the projections and of the query API (`fleet-query-api`) over the same
/// stores: `fleetstream projections` and `fleetstream api` read the same file. Every key has a default; see
/// `config/projections.example.toml`.
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
    /// Event log URL: `kafka://host:9092,...` or `file:///dir`.
    pub event_log: String,
    /// Raw engine settings passed to the log (librdkafka properties for Kafka).
    pub event_log_options: BTreeMap<String, String>,
    /// Schema registry (Confluent REST API) base URL. Set: records are written in the
    /// Confluent wire format, each schema registered under `<topic>-value` (BACKWARD) at
    /// start; empty: Avro single-object encoding, no registry. Either framing is read.
    pub schema_registry_url: String,
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
    /// ([`fleet_read_model::TimeSeriesStore::expire`]; ScyllaDB expires rows by TTL itself).
    #[serde(with = "duration_text")]
    pub retention_sweep_interval: Duration,
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
    /// How long an API instance remembers a resolved user API key (`"10s"`). Revoking a
    /// key or disabling a user takes effect at once on the instance that did it, and on
    /// every other instance within this time. `"0s"` checks the registry on every request.
    #[serde(with = "duration_text")]
    pub api_key_cache_ttl: Duration,
    /// Gateway URL agents enroll at, used in the install command of new tokens.
    pub gateway_url: String,
    /// Command types that always need approval by a second user (besides requests that
    /// say `requires_approval: true`).
    pub approval_required_commands: Vec<String>,
    /// Failed authentications (401) per minute per client address before the address
    /// gets 429 for a while (a key known without a registry lookup still works); 0: no
    /// limit.
    pub auth_failures_per_minute: u32,
    /// Burst of the per-address failure bucket.
    pub auth_failure_burst: u32,
    /// Requests per second per user (all of its keys); 0: no limit.
    pub key_requests_per_second: u32,
    /// Burst of the per-user bucket.
    pub key_request_burst: u32,
    /// Reverse proxies (addresses or networks like `10.0.0.0/8`) whose
    /// `X-Forwarded-For` names the client the per-address limit applies to.
    pub trusted_proxies: Vec<fleet_service::client::ProxyNet>,
    /// The listener's timeouts, connection cap and TLS (`[http]`).
    pub http: fleet_service::serve::HttpSettings,
}

impl Default for ProjectionsConfig {
    fn default() -> Self {
        ProjectionsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            serve_api: true,
            event_log: "kafka://127.0.0.1:9092".into(),
            event_log_options: BTreeMap::new(),
            schema_registry_url: String::new(),
            read_model: "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into(),
            timeseries: "file://fleetstream-data/timeseries".into(),
            timeseries_retention: fleet_timeseries::Retention::default(),
            timeseries_engine: fleet_timeseries::EngineConfig::default(),
            retention_sweep_interval: Duration::from_secs(600),
            read_model_group: "fleet-projection-readmodel".into(),
            timeseries_group: "fleet-projection-timeseries".into(),
            batch_size: 1000,
            session_timeout_ms: 10_000,
            admin_api_key: String::new(),
            api_key_cache_ttl: DEFAULT_API_KEY_CACHE_TTL,
            gateway_url: "http://127.0.0.1:8080".into(),
            approval_required_commands: vec!["run_script".into()],
            auth_failures_per_minute: 30,
            auth_failure_burst: 30,
            key_requests_per_second: 50,
            key_request_burst: 200,
            trusted_proxies: Vec::new(),
            http: fleet_service::serve::HttpSettings::default(),
        }
    }
}

/// How long an API instance remembers a resolved user key by default
/// (`api-key-cache-ttl`).
pub const DEFAULT_API_KEY_CACHE_TTL: Duration = Duration::from_secs(10);

/// A duration written as text (`"10m"`, `"1h 30m"`), parsed with `humantime`.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as \"10m\" or \"1h\": {e}"
            ))
        })
    }
}
