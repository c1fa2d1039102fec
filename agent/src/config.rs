//! Agent configuration: compiled-in defaults, then a TOML file, then environment variables
//! `FLEET_AGENT__<KEY>` (the key upper-cased with `-` written as `_`, e.g.
//! `FLEET_AGENT__SERVER_URL` sets `server-url`).
//!
//! `agent.example.toml` beside this crate documents every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

/// Most reports one request may carry (the gateway's default limit).
pub const MAX_BATCH_REPORTS: usize = 1000;

/// Most services one report may carry (the gateway's limit).
pub const MAX_SERVICES: usize = 512;

/// Prefix of the environment variables that override the file.
pub const ENV_PREFIX: &str = "FLEET_AGENT__";

/// The gateway URL used when `server-url` is not set.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8080";

/// Time between collections when neither the file nor an enrollment says.
pub const DEFAULT_COLLECT_INTERVAL: Duration = Duration::from_secs(10);

/// Time between heartbeats when neither the file nor an enrollment says.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);

/// Default bound of the on-disk spool: 64 MiB of encoded reports.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Smallest accepted `spool-max-bytes` (one report with many services and disks can take
/// tens of kilobytes).
pub const MIN_SPOOL_MAX_BYTES: u64 = 1024 * 1024;

/// Command types the agent knows; `allowed-commands` may list only these.
pub const COMMAND_TYPES: [&str; 4] = fleet_schemas::remote_config::COMMAND_TYPES;

/// Largest accepted `command-output-max-bytes` (16 MiB).
pub const MAX_COMMAND_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// Longest `timeout` of a custom-metric script.
pub const MAX_CUSTOM_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// Largest `max-output-bytes` of a custom-metric script (4 MiB).
pub const MAX_CUSTOM_SCRIPT_OUTPUT_BYTES: usize = 4 * 1024 * 1024;

/// Largest `custom-max-series`.
pub const MAX_CUSTOM_SERIES: usize = 10_000;

/// State directory of an agent running as root.
pub const ROOT_STATE_DIR: &str = "/var/lib/fleetstream-agent";

/// Name of the state directory under `$XDG_STATE_HOME` (or `~/.local/state`).
pub const STATE_DIR_NAME: &str = "fleetstream-agent";

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file named on the command line does not exist.
    #[error(
        "agent configuration file {path} not found: check the path, or omit it to run on defaults"
    )]
    NotFound {
        /// The path that was given.
        path: PathBuf,
    },
    /// A layer (file or environment) could not be parsed or had an unknown key.
    #[error("invalid agent configuration: {0}")]
    Parse(#[from] Box<figment::Error>),
    /// A value parsed but is out of range.
    #[error("invalid agent configuration: `{key}` {message}")]
    Invalid {
        /// The kebab-case key at fault.
        key: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// Everything the agent needs to run. Every field has a default, so an empty file (or no
/// file) is a valid configuration.
///
/// Settings left unset (`None`) are computed: from the enrollment (see
/// [`crate::Enrollment`]) when the agent is enrolled, else from the environment or a
/// compiled-in default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct AgentConfig {
    /// Base URL of the ingest gateway. Default `http://127.0.0.1:8080`. When the agent is
    /// enrolled and this is left at its default, the URL it enrolled with is used.
    pub server_url: String,
    /// PEM file of the CA certificate(s) an `https://` gateway's certificate must chain
    /// to; only those are trusted (a private CA). Default: unset, meaning the system's
    /// root certificates (the Mozilla roots built into the agent when the system has
    /// none).
    pub ca_file: Option<PathBuf>,
    /// URL of the WebSocket channel, `ws://` or `wss://` (`wss://` when `server-url` is
    /// `https://`). Default: unset, meaning the URL the server suggested at enrollment
    /// when it has the origin (scheme, host, port) of `server-url`, else `server-url`
    /// with `/api/v1/agents/ws` and `http`→`ws`, `https`→`wss`.
    pub ws_url: Option<String>,
    /// This agent's id, as it appears in the gateway's URLs. Default: unset, meaning the id
    /// the server gave at enrollment or, when not enrolled, a UUIDv5 derived from the
    /// machine id (`/etc/machine-id`) or, failing that, the host name, so restarts keep the
    /// same id. See [`AgentConfig::resolved_agent_id`].
    pub agent_id: Option<String>,
    /// Directory holding the spool and the enrollment (`credentials.json`). Default:
    /// unset, meaning computed by [`AgentConfig::resolved_state_dir`].
    pub state_dir: Option<PathBuf>,
    /// Time between two collections ("10s", "500ms"). Default: unset, meaning the
    /// enrollment's remote config, else 10.
    #[serde(default, with = "humantime_serde")]
    pub collect_interval: Option<Duration>,
    /// Time between two heartbeats. Default: unset, meaning the enrollment's remote
    /// config, else 30.
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// A batch is sent as soon as this many reports are spooled; also the most reports one
    /// request carries (1 to 1000). Default 6.
    pub batch_max_reports: usize,
    /// Longest a report waits in the spool before it is sent even if the batch is not
    /// full: batching for fewer requests at the cost of latency. Default: unset, meaning
    /// a report is sent as soon as it is collected (a backlog still goes in full batches).
    #[serde(default, with = "humantime_serde")]
    pub flush_interval: Option<Duration>,
    /// Most bytes of encoded reports the on-disk spool holds while the gateway cannot take
    /// them; when full, the oldest reports are dropped, counted and logged. At least 1 MiB.
    /// Default 64 MiB.
    pub spool_max_bytes: u64,
    /// Timeout of one HTTP request to the gateway. Default 10s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// First retry delay after a failed send; doubles on each failure (with
    /// jitter) up to `retry-max-backoff`. Default 1.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    /// Longest retry delay the agent picks itself (a `Retry-After` from the
    /// gateway is honoured even when longer). Default 60.
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// After the gateway refused the credential (401) or the agent is deactivated (403),
    /// the time before trying again; the reports stay spooled. Default 60.
    #[serde(with = "humantime_serde")]
    pub auth_retry: Duration,
    /// On shutdown, how long the agent keeps trying to send what is spooled
    /// (what is left stays spooled for the next start). Default 5.
    #[serde(with = "humantime_serde")]
    pub shutdown_flush_timeout: Duration,
    /// Names of the systemd units to watch (`nginx`, `postgresql.service`, ...), at most
    /// 512. Default empty.
    pub services: Vec<String>,
    /// Use the WebSocket channel (`GET {server}/api/v1/agents/ws`) for reports,
    /// heartbeats, events, inventory and commands, falling back to HTTP while it is down.
    /// Default true.
    pub websocket: bool,
    /// Time between the agent's own WebSocket pings; a ping not answered by the next
    /// one marks the socket dead (reconnect, HTTP meanwhile). Default 20.
    #[serde(with = "humantime_serde")]
    pub websocket_ping_interval: Duration,
    /// First delay before reconnecting a lost WebSocket; doubles per failed
    /// attempt up to `websocket-reconnect-max`, each delay drawn uniformly from zero
    /// to that bound (full jitter). Default 1.
    #[serde(with = "humantime_serde")]
    pub websocket_reconnect_initial: Duration,
    /// Longest reconnect delay. Default 60.
    #[serde(with = "humantime_serde")]
    pub websocket_reconnect_max: Duration,
    /// While the WebSocket is down (or disabled), seconds between two polls of
    /// `GET .../commands`. Default 30s.
    #[serde(with = "humantime_serde")]
    pub command_poll_interval: Duration,
    /// Command types the server may run here, among `restart_service`, `run_script`,
    /// `collect_diagnostics` and `update_config`. Default `["collect_diagnostics"]`.
    pub allowed_commands: Vec<String>,
    /// Longest a command may run (a command's own timeout is cut to this).
    /// Default 300.
    #[serde(with = "humantime_serde")]
    pub command_max_timeout: Duration,
    /// Most bytes of stdout, and of stderr, kept and streamed per command (the rest is
    /// read and discarded, and the result says `output_truncated`). Default 65536.
    pub command_output_max_bytes: usize,
    /// Scripts `run_script` may run, by name: name → command line run with `/bin/sh -c`.
    /// The server only names one; it never sends a command line. Default empty.
    pub scripts: BTreeMap<String, String>,
    /// Send the software inventory (dpkg or rpm packages). Default true.
    pub inventory: bool,
    /// Time between two reads of the package list; it is sent when it changed.
    /// Default 3600.
    #[serde(with = "humantime_serde")]
    pub inventory_interval: Duration,
    /// Collect the security posture (firewall, pending updates, reboot required, sshd
    /// settings, ClamAV) and put it in every report. Default true.
    pub security: bool,
    /// Time between two collections of the security posture (also collected at start and
    /// when a watched file such as the package database changes). Default 3600.
    #[serde(with = "humantime_serde")]
    pub security_interval: Duration,
    /// The reboot flag file (Debian/Ubuntu's). Default `/var/run/reboot-required`.
    pub security_reboot_required_file: PathBuf,
    /// The sshd configuration read when `sshd -T` cannot run (its `Include`s, and the
    /// `sshd_config.d` directory beside it, are followed and watched). Default
    /// `/etc/ssh/sshd_config`.
    pub security_sshd_config: PathBuf,
    /// ClamAV's signature database directory (`*.cvd`, `*.cld`). Default
    /// `/var/lib/clamav`.
    pub security_clamav_database: PathBuf,
    /// Directory of Prometheus text-format files (`*.prom`, node_exporter's textfile
    /// collector convention, e.g. `/var/lib/node_exporter/textfile_collector`), read at
    /// every collection; their series become `custom.<name>` metrics. Default: unset (none).
    pub textfile_directory: Option<PathBuf>,
    /// Programs run on their own interval whose stdout (Prometheus text format) becomes
    /// `custom.<name>` metrics. Default empty.
    pub custom_scripts: Vec<CustomScript>,
    /// Most custom metrics (series) one report carries, textfiles first (files in name
    /// order), then scripts (in name order); the rest are dropped, counted and logged.
    /// Keep it at most the gateway's `subjects.max-custom-per-report`. Default 256.
    pub custom_max_series: usize,
}

/// One `[[custom-scripts]]` entry: a program whose output is custom metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CustomScript {
    /// Its name in logs (1 to 64 of letters, digits and `-_.`, unique).
    pub name: String,
    /// Absolute path of the program, run directly (no shell) as the agent's user.
    pub command: PathBuf,
    /// Its arguments. Default none.
    #[serde(default)]
    pub args: Vec<String>,
    /// Time between two runs (the first at start). Default 60s.
    #[serde(default = "CustomScript::default_interval", with = "humantime_serde")]
    pub interval: Duration,
    /// Longest run; then its process group is killed. At most 5 minutes. Default 10s.
    #[serde(default = "CustomScript::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Most bytes of stdout read; a longer output is refused whole. At most 4 MiB.
    /// Default 65536.
    #[serde(default = "CustomScript::default_max_output_bytes")]
    pub max_output_bytes: usize,
}

impl CustomScript {
    fn default_interval() -> Duration {
        Duration::from_secs(60)
    }

    fn default_timeout() -> Duration {
        Duration::from_secs(10)
    }

    fn default_max_output_bytes() -> usize {
        65536
    }

    /// A script with the default interval, timeout and output bound.
    pub fn new(name: &str, command: impl Into<PathBuf>, args: &[&str]) -> Self {
        Self {
            name: name.to_owned(),
            command: command.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            interval: Self::default_interval(),
            timeout: Self::default_timeout(),
            max_output_bytes: Self::default_max_output_bytes(),
        }
    }

    fn validate(&self, seen: &mut std::collections::BTreeSet<String>) -> Result<(), String> {
        if !is_script_name(&self.name) {
            return Err(format!(
                "has name {:?}: 1 to 64 of letters, digits and `-_.`",
                self.name
            ));
        }
        if !seen.insert(self.name.clone()) {
            return Err(format!("names {:?} twice", self.name));
        }
        let name = &self.name;
        if !self.command.is_absolute() {
            return Err(format!(
                "{name}: command {:?} must be an absolute path (it runs directly, no shell)",
                self.command
            ));
        }
        if self.interval < Duration::from_secs(1) || self.interval > Duration::from_secs(86_400) {
            return Err(format!("{name}: interval must be 1s to 1 day"));
        }
        if self.timeout.is_zero() || self.timeout > MAX_CUSTOM_SCRIPT_TIMEOUT {
            return Err(format!(
                "{name}: timeout must be greater than 0 and at most {}",
                humantime::format_duration(MAX_CUSTOM_SCRIPT_TIMEOUT)
            ));
        }
        if !(1..=MAX_CUSTOM_SCRIPT_OUTPUT_BYTES).contains(&self.max_output_bytes) {
            return Err(format!(
                "{name}: max-output-bytes must be between 1 and {MAX_CUSTOM_SCRIPT_OUTPUT_BYTES}"
            ));
        }
        Ok(())
    }
}

/// 1 to 64 of `A-Z a-z 0-9 - _ .` (script names, of `scripts` and `custom-scripts`).
fn is_script_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            server_url: DEFAULT_SERVER_URL.to_owned(),
            ca_file: None,
            ws_url: None,
            agent_id: None,
            state_dir: None,
            collect_interval: None,
            heartbeat_interval: None,
            batch_max_reports: 6,
            flush_interval: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            request_timeout: Duration::from_secs(10),
            retry_initial_backoff: Duration::from_secs(1),
            retry_max_backoff: Duration::from_secs(60),
            auth_retry: Duration::from_secs(60),
            shutdown_flush_timeout: Duration::from_secs(5),
            services: Vec::new(),
            websocket: true,
            websocket_ping_interval: Duration::from_secs(20),
            websocket_reconnect_initial: Duration::from_secs(1),
            websocket_reconnect_max: Duration::from_secs(60),
            command_poll_interval: Duration::from_secs(30),
            allowed_commands: vec!["collect_diagnostics".to_owned()],
            command_max_timeout: Duration::from_secs(300),
            command_output_max_bytes: 65536,
            scripts: BTreeMap::new(),
            inventory: true,
            inventory_interval: Duration::from_secs(3600),
            security: true,
            security_interval: Duration::from_secs(3600),
            security_reboot_required_file: PathBuf::from(crate::security::REBOOT_REQUIRED_FILE),
            security_sshd_config: PathBuf::from(crate::security::SSHD_CONFIG),
            security_clamav_database: PathBuf::from(crate::security::CLAMAV_DATABASE),
            textfile_directory: None,
            custom_scripts: Vec::new(),
            custom_max_series: 256,
        }
    }
}

impl AgentConfig {
    /// Loads defaults, then the TOML file at `path` (if given; it must exist), then the
    /// `FLEET_AGENT__*` environment variables, and validates the result.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut figment = Figment::new();
        if let Some(path) = path {
            if !path.exists() {
                return Err(ConfigError::NotFound {
                    path: path.to_owned(),
                });
            }
            figment = figment.merge(Toml::file_exact(path));
        }
        Self::from_figment(figment.merge(env_provider()))
    }

    /// Extracts and validates a configuration from any figment (tests use this with
    /// in-memory providers).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Self = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and formats; [`AgentConfig::load`] calls it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let url = reqwest::Url::parse(&self.server_url).map_err(|e| ConfigError::Invalid {
            key: "server-url",
            message: format!("is not a URL ({e}): expected e.g. http://gateway:8080"),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(ConfigError::Invalid {
                key: "server-url",
                message: "must be an http:// or https:// URL with a host".to_owned(),
            });
        }
        if let Some(ws) = &self.ws_url {
            let parsed = reqwest::Url::parse(ws).map_err(|e| ConfigError::Invalid {
                key: "ws-url",
                message: format!(
                    "is not a URL ({e}): expected e.g. wss://gateway/api/v1/agents/ws"
                ),
            })?;
            if !matches!(parsed.scheme(), "ws" | "wss") || parsed.host().is_none() {
                return Err(ConfigError::Invalid {
                    key: "ws-url",
                    message: "must be a ws:// or wss:// URL with a host".to_owned(),
                });
            }
            if url.scheme() == "https" && parsed.scheme() != "wss" {
                return Err(ConfigError::Invalid {
                    key: "ws-url",
                    message: "must be wss:// when server-url is https:// (the credential \
                              would travel unencrypted)"
                        .to_owned(),
                });
            }
        }
        if self
            .ca_file
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "ca-file",
                message: "is empty: give a PEM file, or leave it unset for the system roots"
                    .to_owned(),
            });
        }
        if let Some(id) = &self.agent_id {
            validate_agent_id(id)?;
        }
        if let Some(collect) = self.collect_interval {
            positive("collect-interval", collect)?;
        }
        if let Some(heartbeat) = self.heartbeat_interval {
            positive("heartbeat-interval", heartbeat)?;
        }
        if let Some(flush) = self.flush_interval {
            positive("flush-interval", flush)?;
        }
        positive("auth-retry", self.auth_retry)?;
        if let Some(dir) = &self.state_dir {
            if dir.as_os_str().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "state-dir",
                    message: "is empty: give a directory, or leave it unset for the default"
                        .to_owned(),
                });
            }
        }
        positive("request-timeout", self.request_timeout)?;
        positive("retry-initial-backoff", self.retry_initial_backoff)?;
        positive("retry-max-backoff", self.retry_max_backoff)?;
        positive("shutdown-flush-timeout", self.shutdown_flush_timeout)?;
        if !(1..=MAX_BATCH_REPORTS).contains(&self.batch_max_reports) {
            return Err(ConfigError::Invalid {
                key: "batch-max-reports",
                message: format!("must be between 1 and {MAX_BATCH_REPORTS}"),
            });
        }
        if self.services.len() > MAX_SERVICES {
            return Err(ConfigError::Invalid {
                key: "services",
                message: format!(
                    "lists {} units, at most {MAX_SERVICES}",
                    self.services.len()
                ),
            });
        }
        if self.spool_max_bytes < MIN_SPOOL_MAX_BYTES {
            return Err(ConfigError::Invalid {
                key: "spool-max-bytes",
                message: format!(
                    "is {}: must be at least {MIN_SPOOL_MAX_BYTES} (1 MiB)",
                    self.spool_max_bytes
                ),
            });
        }
        for (key, value) in [
            ("websocket-ping-interval", self.websocket_ping_interval),
            (
                "websocket-reconnect-initial",
                self.websocket_reconnect_initial,
            ),
            ("websocket-reconnect-max", self.websocket_reconnect_max),
            ("command-poll-interval", self.command_poll_interval),
            ("command-max-timeout", self.command_max_timeout),
            ("inventory-interval", self.inventory_interval),
            ("security-interval", self.security_interval),
        ] {
            positive(key, value)?;
        }
        if let Some(unknown) = self
            .allowed_commands
            .iter()
            .find(|c| !COMMAND_TYPES.contains(&c.as_str()))
        {
            return Err(ConfigError::Invalid {
                key: "allowed-commands",
                message: format!(
                    "contains {unknown:?}: known command types are {}",
                    COMMAND_TYPES.join(", ")
                ),
            });
        }
        if !(1..=MAX_COMMAND_OUTPUT_BYTES).contains(&self.command_output_max_bytes) {
            return Err(ConfigError::Invalid {
                key: "command-output-max-bytes",
                message: format!("must be between 1 and {MAX_COMMAND_OUTPUT_BYTES}"),
            });
        }
        for (name, line) in &self.scripts {
            if !is_script_name(name) || line.trim().is_empty() {
                return Err(ConfigError::Invalid {
                    key: "scripts",
                    message: format!(
                        "has {name:?}: a script name is 1 to 64 of letters, digits and \
                         `-_.`, and its command line must not be empty"
                    ),
                });
            }
        }
        for (key, path) in [
            (
                "security-reboot-required-file",
                &self.security_reboot_required_file,
            ),
            ("security-sshd-config", &self.security_sshd_config),
            ("security-clamav-database", &self.security_clamav_database),
        ] {
            if !path.is_absolute() {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("is {path:?}: must be an absolute path"),
                });
            }
        }
        if self
            .textfile_directory
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid {
                key: "textfile-directory",
                message: "is empty: give a directory, or leave it unset".to_owned(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for script in &self.custom_scripts {
            script
                .validate(&mut seen)
                .map_err(|message| ConfigError::Invalid {
                    key: "custom-scripts",
                    message,
                })?;
        }
        if self.custom_max_series > MAX_CUSTOM_SERIES {
            return Err(ConfigError::Invalid {
                key: "custom-max-series",
                message: format!("must be at most {MAX_CUSTOM_SERIES}"),
            });
        }
        for name in &self.services {
            if !is_valid_unit_name(name) {
                return Err(ConfigError::Invalid {
                    key: "services",
                    message: format!(
                        "contains {name:?}: a systemd unit name has only letters, digits \
                         and `:_.@-\\`, and does not start with `-`"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The agent id to use: the configured one, or a UUIDv5 derived from the machine id
    /// (`/etc/machine-id`, then `/var/lib/dbus/machine-id`), or from the host name when
    /// neither exists. Stable across restarts of the same machine.
    pub fn resolved_agent_id(&self) -> String {
        match &self.agent_id {
            Some(id) => id.clone(),
            None => derive_agent_id(&machine_identity()),
        }
    }

    /// The state directory: `state-dir` when set, else `$STATE_DIRECTORY` (set by systemd's
    /// `StateDirectory=`), else [`ROOT_STATE_DIR`] when running as root, else
    /// `$XDG_STATE_HOME/fleetstream-agent`, else `~/.local/state/fleetstream-agent`.
    pub fn resolved_state_dir(&self) -> PathBuf {
        if let Some(dir) = &self.state_dir {
            return dir.clone();
        }
        default_state_dir(
            |name| std::env::var_os(name).filter(|v| !v.is_empty()),
            running_as_root(),
        )
    }

    /// The collection interval (10 s when unset; the run loop prefers an enrollment's
    /// interval over that default).
    pub fn collect_interval(&self) -> Duration {
        self.collect_interval.unwrap_or(DEFAULT_COLLECT_INTERVAL)
    }

    /// The heartbeat interval (30 s when unset; the run loop prefers an enrollment's
    /// interval over that default).
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
    }

    /// The flush interval (zero when unset: a report is sent as soon as it is collected).
    pub fn flush_interval(&self) -> Duration {
        self.flush_interval.unwrap_or(Duration::ZERO)
    }

    /// [`Self::auth_retry`].
    pub fn auth_retry(&self) -> Duration {
        self.auth_retry
    }

    /// [`Self::request_timeout`].
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// [`Self::retry_initial_backoff`].
    pub fn retry_initial_backoff(&self) -> Duration {
        self.retry_initial_backoff
    }

    /// [`Self::retry_max_backoff`].
    pub fn retry_max_backoff(&self) -> Duration {
        self.retry_max_backoff
    }

    /// [`Self::shutdown_flush_timeout`].
    pub fn shutdown_flush_timeout(&self) -> Duration {
        self.shutdown_flush_timeout
    }

    /// [`Self::websocket_ping_interval`].
    pub fn websocket_ping_interval(&self) -> Duration {
        self.websocket_ping_interval
    }

    /// [`Self::websocket_reconnect_initial`].
    pub fn websocket_reconnect_initial(&self) -> Duration {
        self.websocket_reconnect_initial
    }

    /// [`Self::websocket_reconnect_max`].
    pub fn websocket_reconnect_max(&self) -> Duration {
        self.websocket_reconnect_max
    }

    /// [`Self::command_poll_interval`].
    pub fn command_poll_interval(&self) -> Duration {
        self.command_poll_interval
    }

    /// [`Self::command_max_timeout`].
    pub fn command_max_timeout(&self) -> Duration {
        self.command_max_timeout
    }

    /// [`Self::inventory_interval`].
    pub fn inventory_interval(&self) -> Duration {
        self.inventory_interval
    }
}

/// The environment layer: `FLEET_AGENT__SERVER_URL` → `server-url`. `__` separates nested
/// sections (none yet), a single `_` stands for `-`.
fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX)
        .split("__")
        .map(|key| key.as_str().replace('_', "-").into())
}

/// The computed state directory (see [`AgentConfig::resolved_state_dir`]); `env` reads
/// one non-empty environment variable. Pure, so every branch is tested.
fn default_state_dir(env: impl Fn(&str) -> Option<std::ffi::OsString>, root: bool) -> PathBuf {
    let absolute = |name: &str| env(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(dirs) = env("STATE_DIRECTORY") {
        // systemd lists one path per StateDirectory= entry, separated by `:`.
        let dirs = dirs.to_string_lossy().into_owned();
        if let Some(first) = dirs.split(':').map(PathBuf::from).find(|p| p.is_absolute()) {
            return first;
        }
    }
    if root {
        return PathBuf::from(ROOT_STATE_DIR);
    }
    if let Some(state) = absolute("XDG_STATE_HOME") {
        return state.join(STATE_DIR_NAME);
    }
    if let Some(home) = absolute("HOME") {
        return home.join(".local/state").join(STATE_DIR_NAME);
    }
    PathBuf::from(ROOT_STATE_DIR)
}

/// True when the effective user is root: the `Uid:` line of `/proc/self/status` on Linux
/// (no `unsafe` `geteuid` call), the `USER` variable elsewhere.
fn running_as_root() -> bool {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        if let Some(euid) = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
        {
            return euid == "0";
        }
    }
    std::env::var("USER").is_ok_and(|u| u == "root")
}

/// Checks a value given in seconds the way [`AgentConfig::validate`] does; for intervals
/// that come from elsewhere (an enrollment's remote config).
pub(crate) fn valid_secs(value: f64) -> Option<Duration> {
    positive_secs("", value).ok().map(|()| secs(value))
}

/// Converts validated seconds to a duration; invalid values (never seen after
/// [`AgentConfig::validate`]) become one second rather than panicking.
fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::from_secs(1))
}

/// Upper bound for any duration setting: a day is already absurd for these knobs.
const MAX_SECS: f64 = 86_400.0;

fn positive(key: &'static str, value: Duration) -> Result<(), ConfigError> {
    if !value.is_zero() && value <= Duration::from_secs(86_400) {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!(
                "is {}: expected a duration greater than 0 and at most 1 day (\"10s\", \"5m\")",
                humantime::format_duration(value)
            ),
        })
    }
}

fn positive_secs(key: &'static str, value: f64) -> Result<(), ConfigError> {
    if value.is_finite() && value > 0.0 && value <= MAX_SECS {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key,
            message: format!("is {value}: expected seconds greater than 0 and at most {MAX_SECS}"),
        })
    }
}

/// Same rule as the gateway: 1 to 128 of `A-Z a-z 0-9 . _ -` (safe in URL paths).
pub(crate) fn validate_agent_id(id: &str) -> Result<(), ConfigError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            key: "agent-id",
            message: format!(
                "is {id:?}: expected 1 to 128 characters among letters, digits and `-_.`, \
                 or leave it unset to derive one from the machine id"
            ),
        })
    }
}

pub(crate) use fleet_schemas::remote_config::is_valid_unit_name;

/// The agent id derived from a machine identity string.
fn derive_agent_id(identity: &str) -> String {
    fleet_schemas::ids::v5(&["fleet-agent", identity]).to_string()
}

/// The machine id if the OS has one, else the host name, else a constant (every such
/// machine then needs an explicit `agent-id`; a warning says so).
fn machine_identity() -> String {
    for path in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(text) = std::fs::read_to_string(path) {
            let id = text.trim();
            if !id.is_empty() {
                return format!("machine-id:{id}");
            }
        }
    }
    if let Some(host) = sysinfo::System::host_name().filter(|h| !h.is_empty()) {
        return format!("hostname:{host}");
    }
    tracing::warn!("No machine id or host name found; set `agent-id` explicitly.");
    "unknown".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::Serialized;

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = AgentConfig::default();
        c.validate().expect("defaults validate");
        assert_eq!(c.server_url, "http://127.0.0.1:8080");
        assert_eq!(c.collect_interval(), Duration::from_secs(10));
        assert_eq!(
            c.flush_interval(),
            Duration::ZERO,
            "sent as soon as collected"
        );
        assert_eq!(c.heartbeat_interval(), Duration::from_secs(30));
        assert_eq!(c.batch_max_reports, 6);
        assert_eq!(c.spool_max_bytes, 64 * 1024 * 1024);
        assert_eq!(c.state_dir, None);
        assert_eq!(c.auth_retry(), Duration::from_secs(60));
        assert_eq!(c.request_timeout(), Duration::from_secs(10));
        assert!(c.services.is_empty());
        assert!(c.websocket && c.inventory && c.security);
        assert_eq!(c.security_interval, Duration::from_secs(3600));
        assert_eq!(c.command_poll_interval(), Duration::from_secs(30));
        assert_eq!(c.command_max_timeout(), Duration::from_secs(300));
        assert_eq!(c.command_output_max_bytes, 65536);
        assert_eq!(c.allowed_commands, vec!["collect_diagnostics"]);
        assert_eq!(c.inventory_interval(), Duration::from_secs(3600));
        assert!(c.scripts.is_empty());
    }

    #[test]
    fn state_dir_defaults_follow_systemd_root_and_xdg() {
        use std::ffi::OsString;
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let all = &[
            ("STATE_DIRECTORY", "/var/lib/custom:/var/lib/other"),
            ("XDG_STATE_HOME", "/home/u/.state"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(
            default_state_dir(env(all), false),
            PathBuf::from("/var/lib/custom")
        );
        let user = &[("XDG_STATE_HOME", "/home/u/.state"), ("HOME", "/home/u")];
        assert_eq!(
            default_state_dir(env(user), true),
            PathBuf::from(ROOT_STATE_DIR)
        );
        assert_eq!(
            default_state_dir(env(user), false),
            PathBuf::from("/home/u/.state/fleetstream-agent")
        );
        // A relative XDG_STATE_HOME is ignored, as the XDG spec says.
        let relative = &[("XDG_STATE_HOME", "state"), ("HOME", "/home/u")];
        assert_eq!(
            default_state_dir(env(relative), false),
            PathBuf::from("/home/u/.local/state/fleetstream-agent")
        );
        assert_eq!(
            default_state_dir(env(&[]), false),
            PathBuf::from(ROOT_STATE_DIR)
        );
        let explicit = AgentConfig {
            state_dir: Some("/srv/agent".into()),
            ..AgentConfig::default()
        };
        assert_eq!(explicit.resolved_state_dir(), PathBuf::from("/srv/agent"));
    }

    #[test]
    fn derived_agent_id_is_stable_uuid() {
        let c = AgentConfig::default();
        let a = c.resolved_agent_id();
        assert_eq!(a, c.resolved_agent_id());
        assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");
        assert_ne!(
            derive_agent_id("machine-id:a"),
            derive_agent_id("machine-id:b")
        );
        let explicit = AgentConfig {
            agent_id: Some("web-1".into()),
            ..AgentConfig::default()
        };
        assert_eq!(explicit.resolved_agent_id(), "web-1");
    }

    #[test]
    fn toml_layer_overrides_defaults_and_rejects_unknown_keys() {
        let toml = r#"
            server-url = "https://gw.example:8443"
            collect-interval = "500ms"
            batch-max-reports = 3
            services = ["nginx", "sshd.service"]
        "#;
        let c = AgentConfig::from_figment(Figment::new().merge(Toml::string(toml))).unwrap();
        assert_eq!(c.server_url, "https://gw.example:8443");
        assert_eq!(c.collect_interval(), Duration::from_millis(500));
        assert_eq!(c.flush_interval(), Duration::ZERO);
        assert_eq!(c.batch_max_reports, 3);
        assert_eq!(c.services, vec!["nginx", "sshd.service"]);
        // Integers are accepted for float seconds.
        let c = AgentConfig::from_figment(
            Figment::new().merge(Toml::string("request-timeout = \"3s\"")),
        )
        .unwrap();
        assert_eq!(c.request_timeout(), Duration::from_secs(3));

        let err = AgentConfig::from_figment(Figment::new().merge(Toml::string("sever-url = 1")))
            .unwrap_err();
        assert!(err.to_string().contains("sever-url"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        let cases: [(&str, AgentConfig); 12] = [
            (
                "allowed-commands",
                AgentConfig {
                    allowed_commands: vec!["rm_rf".into()],
                    ..AgentConfig::default()
                },
            ),
            (
                "scripts",
                AgentConfig {
                    scripts: [("bad name".to_owned(), "true".to_owned())].into(),
                    ..AgentConfig::default()
                },
            ),
            (
                "command-output-max-bytes",
                AgentConfig {
                    command_output_max_bytes: 0,
                    ..AgentConfig::default()
                },
            ),
            (
                "websocket-ping-interval",
                AgentConfig {
                    websocket_ping_interval: Duration::ZERO,
                    ..AgentConfig::default()
                },
            ),
            (
                "server-url",
                AgentConfig {
                    server_url: "ftp://x".into(),
                    ..AgentConfig::default()
                },
            ),
            (
                "collect-interval",
                AgentConfig {
                    collect_interval: Some(Duration::ZERO),
                    ..AgentConfig::default()
                },
            ),
            (
                "heartbeat-interval",
                AgentConfig {
                    heartbeat_interval: Some(Duration::from_secs_f64(0.0)),
                    ..AgentConfig::default()
                },
            ),
            (
                "spool-max-bytes",
                AgentConfig {
                    spool_max_bytes: 1000,
                    ..AgentConfig::default()
                },
            ),
            (
                "state-dir",
                AgentConfig {
                    state_dir: Some(PathBuf::new()),
                    ..AgentConfig::default()
                },
            ),
            (
                "batch-max-reports",
                AgentConfig {
                    batch_max_reports: 0,
                    ..AgentConfig::default()
                },
            ),
            (
                "agent-id",
                AgentConfig {
                    agent_id: Some("a/b".into()),
                    ..AgentConfig::default()
                },
            ),
            (
                "services",
                AgentConfig {
                    services: vec!["--now".into()],
                    ..AgentConfig::default()
                },
            ),
        ];
        for (key, config) in cases {
            let err = config.validate().unwrap_err();
            assert!(err.to_string().contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn custom_scripts_are_checked_and_default_from_toml() {
        let toml = r#"
            textfile-directory = "/var/lib/node_exporter/textfile_collector"
            [[custom-scripts]]
            name = "queues"
            command = "/usr/local/bin/queues"
            args = ["--all"]
            [[custom-scripts]]
            name = "backup-age"
            command = "/usr/local/bin/backup-age"
            interval = "5m"
            timeout = "30s"
            max-output-bytes = 1024
        "#;
        let c = AgentConfig::from_figment(Figment::new().merge(Toml::string(toml))).unwrap();
        assert_eq!(
            c.custom_scripts[0],
            CustomScript::new("queues", "/usr/local/bin/queues", &["--all"])
        );
        assert_eq!(c.custom_scripts[1].interval, Duration::from_secs(300));
        assert_eq!(c.custom_scripts[1].max_output_bytes, 1024);
        let script = CustomScript::new("s", "/bin/true", &[]);
        let bad = [
            (CustomScript::new("bad name", "/bin/true", &[]), "bad name"),
            (CustomScript::new("s", "true", &[]), "absolute"),
            (
                CustomScript {
                    timeout: Duration::from_secs(301),
                    ..script.clone()
                },
                "timeout",
            ),
            (
                CustomScript {
                    max_output_bytes: 0,
                    ..script.clone()
                },
                "max-output-bytes",
            ),
            (
                CustomScript {
                    interval: Duration::from_millis(10),
                    ..script.clone()
                },
                "interval",
            ),
        ];
        for (s, what) in bad {
            let err = AgentConfig {
                custom_scripts: vec![s],
                ..AgentConfig::default()
            }
            .validate()
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("custom-scripts") && err.contains(what),
                "{err}"
            );
        }
        let twice = AgentConfig {
            custom_scripts: vec![script.clone(), script],
            ..AgentConfig::default()
        };
        assert!(twice.validate().unwrap_err().to_string().contains("twice"));
        let too_many = AgentConfig {
            custom_max_series: MAX_CUSTOM_SERIES + 1,
            ..AgentConfig::default()
        };
        assert!(too_many
            .validate()
            .unwrap_err()
            .to_string()
            .contains("custom-max-series"));
    }

    #[test]
    fn missing_file_is_an_error() {
        let err = AgentConfig::load(Some(Path::new("/nonexistent/agent.toml"))).unwrap_err();
        assert!(matches!(err, ConfigError::NotFound { .. }), "{err}");
    }

    /// The environment layer maps `FLEET_AGENT__SERVER_URL` to `server-url`. Uses figment's
    /// `Jail`, which serializes tests touching the process environment.
    #[test]
    #[allow(clippy::result_large_err)] // `Jail`'s closure must return figment's error type.
    fn env_layer_maps_upper_snake_to_kebab() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "agent.toml",
                "server-url = \"http://from-file:1\"\nbatch-max-reports = 2\n",
            )?;
            jail.set_env("FLEET_AGENT__SERVER_URL", "http://from-env:2");
            jail.set_env("FLEET_AGENT__COLLECT_INTERVAL", "250ms");
            jail.set_env("FLEET_AGENT__AGENT_ID", "agent-7");
            jail.set_env("FLEET_AGENT__SERVICES", "[nginx, cron]");
            jail.set_env("OTHER__SERVER_URL", "http://ignored:3");
            let c = AgentConfig::load(Some(Path::new("agent.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(c.server_url, "http://from-env:2");
            assert_eq!(c.batch_max_reports, 2);
            assert_eq!(c.collect_interval(), Duration::from_millis(250));
            assert_eq!(c.agent_id.as_deref(), Some("agent-7"));
            assert_eq!(c.services, vec!["nginx", "cron"]);

            jail.set_env("FLEET_AGENT__NO_SUCH_KEY", "1");
            let err = AgentConfig::load(None).unwrap_err();
            assert!(err.to_string().contains("no-such-key"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn example_file_parses_and_lists_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("agent.example.toml");
        let text = std::fs::read_to_string(&path).expect("agent.example.toml exists");
        let c = AgentConfig::from_figment(Figment::new().merge(Toml::string(&text))).unwrap();
        assert_eq!(c, AgentConfig::default(), "the example shows the defaults");
        // Every key appears in the example (commented or not).
        let all = Figment::from(Serialized::defaults(AgentConfig {
            agent_id: Some("x".into()),
            state_dir: Some("/x".into()),
            collect_interval: Some(Duration::from_secs_f64(1.0)),
            heartbeat_interval: Some(Duration::from_secs_f64(1.0)),
            flush_interval: Some(Duration::from_secs_f64(1.0)),
            textfile_directory: Some("/x".into()),
            ..c
        }));
        let dict = all.extract::<figment::value::Dict>().unwrap();
        for key in dict.keys() {
            assert!(text.contains(&format!("{key} =")), "example misses `{key}`");
        }
    }
}
