//! Notifier configuration (`[notifier]` under `up`, `notifier.toml` for
//! `fleetstream notifier`; environment `FLEET_NOTIFIER__*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use fleet_service::config::EventLogSettings;

/// Settings of the notifier. Every key has a default; see `config/notifier.example.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct NotifierConfig {
    /// Address of `/healthz`, `/readyz` and `/metrics` (`fleetstream notifier`).
    pub listen: SocketAddr,
    /// That listener's timeouts, connection cap and TLS (`[http]`).
    pub http: fleet_service::serve::HttpSettings,
    /// The event log and its record framing (`[event-log]`).
    pub event_log: EventLogSettings,
    /// The read model holding channels, routes, silences and deliveries (`postgres://...`,
    /// `sqlite://path`); `up` uses its own.
    pub read_model: String,
    /// Consumer group on `fleet.alerts.v1`.
    pub group: String,
    /// Most alerts handled per batch.
    pub batch_size: usize,
    /// Attempts of one delivery before it is given up (a dead letter names it).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure, with jitter.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Longest wait between two attempts.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// Whole-request timeout of one webhook or SMTP delivery.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most bytes of a receiver's answer read (the rest is dropped).
    pub max_response_bytes: usize,
    /// How often the outbox is looked at when it had nothing due.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// How long an instance holds the deliveries it took before another may take them
    /// (after a crash mid-send); longer than `request-timeout`.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// Deliveries sent at once.
    pub concurrency: usize,
    /// Most alerts in one grouped message.
    pub max_group_alerts: usize,
    /// Send to loopback, private, link-local and other non-public addresses (webhook and
    /// SMTP targets). Off: such a target fails the delivery without a connection, so a
    /// tenant cannot make the notifier reach internal services.
    pub allow_private_targets: bool,
    /// PEM file of CA certificates trusted for SMTP servers (`starttls` and `tls`
    /// channels), in addition to the built-in Mozilla roots: for a mail relay whose
    /// certificate a private CA issued. Read once at start; unset: the built-in roots only.
    pub smtp_ca_file: Option<PathBuf>,
}

impl Default for NotifierConfig {
    fn default() -> Self {
        NotifierConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8083)),
            http: fleet_service::serve::HttpSettings::default(),
            event_log: EventLogSettings::default(),
            read_model: "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into(),
            group: "fleet-notifier".into(),
            batch_size: 500,
            max_attempts: 8,
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(120),
            concurrency: 8,
            max_group_alerts: 100,
            allow_private_targets: false,
            smtp_ca_file: None,
        }
    }
}

impl NotifierConfig {
    /// Refuses settings that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        if self.max_attempts == 0 {
            return Err("notifier.max-attempts must be at least 1".into());
        }
        if self.lease <= self.request_timeout {
            return Err("notifier.lease must be longer than notifier.request-timeout".into());
        }
        if self.concurrency == 0 || self.max_group_alerts == 0 || self.batch_size == 0 {
            return Err(
                "notifier.concurrency, max-group-alerts and batch-size must be at least 1".into(),
            );
        }
        Ok(())
    }
}
