//! Gateway configuration (`[gateway]`, environment `FLEET_GATEWAY__*`).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::auth::AuthMode;
use crate::subjects::SubjectLimits;
use fleet_service::client::ProxyNet;
use fleet_service::config::EventLogSettings;

/// Settings of the ingest gateway. Every key has a default; see
/// `config/gateway.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct GatewayConfig {
    /// Address to listen on for agents (API, `/healthz`, `/readyz`, `/metrics`).
    pub listen: SocketAddr,
    /// The event log and its record framing (`[event-log]`).
    pub event_log: EventLogSettings,
    /// `required`: every agent request needs a valid credential; `off`: requests without
    /// one are accepted as `default-tenant` (single machine; a sent credential is still
    /// checked, and an agent id enrolled in the registry still needs its credential).
    pub auth: AuthMode,
    /// Registry (tokens and agent credentials): `postgres://...` or `sqlite://path`.
    /// Needed for enrollment and for `auth = "required"`; empty means none.
    pub registry: String,
    /// How long a checked agent credential or ingest key is trusted before it is looked up
    /// again: the longest a revoked ingest key still works at this gateway.
    #[serde(with = "humantime_serde")]
    pub auth_cache: Duration,
    /// Tenant of unauthenticated requests (with `auth = "off"`).
    pub default_tenant: String,
    /// Requests per second each agent may make (token bucket); 0 disables the limit.
    pub rate_limit_per_second: u32,
    /// Burst size of the per-agent bucket.
    pub rate_limit_burst: u32,
    /// Failed agent authentications (401) allowed per client address and minute; past
    /// them (and the burst) the address gets 429 for requests whose credential is not
    /// already cached as valid. 0 disables.
    pub auth_failures_per_minute: u32,
    /// Burst of the per-address failure bucket.
    pub auth_failure_burst: u32,
    /// Registrations (`POST /api/v1/agents/register`, one registry transaction each)
    /// allowed per client address and minute; 0 disables.
    pub register_per_minute: u32,
    /// Burst of the per-address registration bucket.
    pub register_burst: u32,
    /// Addresses or networks (`10.0.0.7`, `10.0.0.0/8`) of reverse proxies in front of
    /// the gateway whose `X-Forwarded-For` is believed. Empty (the default): the client
    /// address is the connection's peer, so behind a proxy the per-address limits apply
    /// to the proxy as a whole.
    pub trusted_proxies: Vec<ProxyNet>,
    /// Bounds on the subjects (mounts, interfaces, services, custom metrics) one agent can
    /// make the pipeline track (`[subjects]`).
    pub subjects: SubjectLimits,
    /// URL agents reach this gateway at: the WebSocket URL handed out at enrollment is
    /// derived from it. Empty: no WebSocket URL is handed out and each agent derives it
    /// from the server URL it was given. `fleetstream gateway` refuses a loopback or
    /// wildcard host here when `listen` is not loopback (agents elsewhere would send
    /// their credential to their own machine).
    pub public_url: String,
    /// Heartbeat interval handed to agents at enrollment.
    #[serde(with = "humantime_serde")]
    pub agent_heartbeat_interval: Duration,
    /// Metrics interval handed to agents at enrollment.
    #[serde(with = "humantime_serde")]
    pub agent_metrics_interval: Duration,
    /// Largest request body accepted, bytes (after decompression); larger gets 413.
    pub max_body_bytes: usize,
    /// Most reports in one metrics batch.
    pub max_reports_per_batch: usize,
    /// How long to wait for the log to acknowledge a write before answering 503.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    /// `Retry-After` answered with 503 (whole seconds).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// How far in the future (agent clock ahead) a report's collection time may be.
    #[serde(with = "humantime_serde")]
    pub max_future_skew: Duration,
    /// How old a report may be (agents spool while offline; older is refused).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Largest inventory body (HTTP, after decompression) or `inventory` WebSocket frame,
    /// bytes; a machine may list up to 50,000 packages.
    pub max_inventory_bytes: usize,
    /// Time between the gateway's pings on an agent WebSocket.
    #[serde(with = "humantime_serde")]
    pub ws_ping_interval: Duration,
    /// An agent WebSocket that sent nothing (no frame, no pong) for this long is closed.
    #[serde(with = "humantime_serde")]
    pub ws_idle_timeout: Duration,
    /// Messages (commands, config) queued for one agent's socket; when full, a command
    /// stays pending and is delivered on the next connection or poll.
    pub ws_send_queue: usize,
    /// Read buffer of each agent WebSocket, bytes. It is allocated (and touched) per
    /// socket, so it sets most of an idle socket's memory; larger frames still arrive,
    /// in more reads.
    pub ws_read_buffer_bytes: usize,
    /// How far back the command dispatcher replays `fleet.commands.v1` at start to rebuild
    /// the pending commands; older unfinished commands are dropped.
    #[serde(with = "humantime_serde")]
    pub command_lookback: Duration,
    /// Source shards of `fleet.samples.v1` (the standard write protocols): a record's key
    /// is `{tenant}/{shard}`, a series (and every series of its source: a scrape target,
    /// a host) always in one shard. Fixed for a deployment:
    /// changing it moves series to other partitions (their order across the change is
    /// then not kept).
    pub sample_shards: u32,
    /// Most samples in one `fleet.samples.v1` record; a request's samples of one shard
    /// are split into records of at most this many (Kafka refuses records over
    /// `message.max.bytes`, 1 MB by default; a sample takes about 50-200 bytes).
    pub samples_per_record: usize,
    /// What one request of a standard write protocol may carry (`[protocol-limits]`).
    pub protocol_limits: fleet_protocols::Limits,
    /// The per-tenant bound on active series of the standard write protocols
    /// (`[series-limits]`).
    pub series_limits: crate::cardinality::SeriesLimits,
    /// The listener's timeouts, connection cap and TLS (`[http]`); the cap defaults to
    /// 10,000 here, as every agent holds a WebSocket open.
    pub http: fleet_service::serve::HttpSettings,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            event_log: EventLogSettings::default(),
            auth: AuthMode::Required,
            registry: String::new(),
            auth_cache: Duration::from_secs(30),
            default_tenant: "default".into(),
            rate_limit_per_second: 20,
            rate_limit_burst: 40,
            auth_failures_per_minute: 30,
            auth_failure_burst: 30,
            register_per_minute: 30,
            register_burst: 10,
            trusted_proxies: Vec::new(),
            subjects: SubjectLimits::default(),
            public_url: String::new(),
            agent_heartbeat_interval: Duration::from_secs(30),
            agent_metrics_interval: Duration::from_secs(10),
            max_body_bytes: 1 << 20,
            max_reports_per_batch: 1000,
            produce_timeout: Duration::from_secs(10),
            retry_after: Duration::from_secs(5),
            max_future_skew: Duration::from_secs(300),
            max_age: Duration::from_secs(30 * 86_400),
            max_inventory_bytes: 8 << 20,
            ws_ping_interval: Duration::from_secs(20),
            ws_idle_timeout: Duration::from_secs(60),
            ws_send_queue: 64,
            ws_read_buffer_bytes: 8192,
            command_lookback: Duration::from_secs(3600),
            sample_shards: 16,
            samples_per_record: 2_000,
            protocol_limits: fleet_protocols::Limits::default(),
            series_limits: crate::cardinality::SeriesLimits::default(),
            http: fleet_service::serve::HttpSettings::default().with_max_connections(10_000),
        }
    }
}

impl GatewayConfig {
    /// Checks `public-url`: empty, or an `http(s)://` URL with a host; and when `listen`
    /// is not a loopback address, its host must not be loopback (`127.0.0.1`, `::1`,
    /// `localhost`) or a wildcard (`0.0.0.0`, `::`): agents on other machines would
    /// connect to themselves. (`fleetstream up`, on loopback, does not call this.)
    pub fn check_public_url(&self) -> Result<(), String> {
        let url = self.public_url.trim();
        if url.is_empty() {
            return Ok(());
        }
        let parsed = url::Url::parse(url).map_err(|e| {
            format!("public-url = {url:?} is not a URL ({e}): expected e.g. https://gw.example.com")
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!(
                "public-url = {url:?} must be an http:// or https:// URL"
            ));
        }
        let local = match parsed.host() {
            None => return Err(format!("public-url = {url:?} has no host")),
            Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
            Some(url::Host::Ipv4(ip)) => ip.is_loopback() || ip.is_unspecified(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback() || ip.is_unspecified(),
        };
        if local && !self.listen.ip().is_loopback() {
            return Err(format!(
                "public-url = {url:?} names this machine's loopback or a wildcard address, \
                 but the gateway listens on {} for other machines: agents would send their \
                 credential to themselves. Set public-url to the name agents reach this \
                 gateway at, or leave it empty",
                self.listen
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(listen: &str, public_url: &str) -> GatewayConfig {
        GatewayConfig {
            listen: listen.parse().expect("address"),
            public_url: public_url.into(),
            ..GatewayConfig::default()
        }
    }

    #[test]
    fn public_url_must_not_point_agents_at_themselves() {
        for bad in [
            "http://127.0.0.1:8080",
            "https://localhost",
            "http://0.0.0.0:8080",
            "http://[::]:8080",
            "http://[::1]:8080",
        ] {
            let err = with("0.0.0.0:8080", bad).check_public_url().expect_err(bad);
            assert!(err.contains("public-url"), "{err}");
        }
        assert!(with("10.0.0.5:8080", "http://127.0.0.1:8080")
            .check_public_url()
            .is_err());
        // On loopback (a single machine, as under `fleetstream up`) they are fine.
        assert!(with("127.0.0.1:8080", "http://127.0.0.1:8080")
            .check_public_url()
            .is_ok());
        for good in ["", "https://gw.example.com", "http://10.0.0.5:8080/fleet/"] {
            assert!(
                with("0.0.0.0:8080", good).check_public_url().is_ok(),
                "{good}"
            );
        }
        assert!(with("0.0.0.0:8080", "gw.example.com")
            .check_public_url()
            .is_err());
        assert!(with("0.0.0.0:8080", "ftp://gw.example.com")
            .check_public_url()
            .is_err());
    }
}
