//! The agent's intervals (collect, heartbeat, flush): merged at start from the
//! configuration, the enrollment's remote config and the overrides the server set before,
//! then live: a server `config` message or an `update_config` command changes them in the
//! running agent ([`LiveIntervals::apply`]) and persists them in
//! `{state-dir}/intervals.json`. The tasks that depend on them watch for changes.
//!
//! The versioned remote configuration (a `config` message or heartbeat answer with a
//! `version`, see `fleet_schemas::remote_config`) is the whole of what the server wants:
//! intervals, watched services, textfile directory and allowed command types. Each field
//! it leaves unset returns to the local value; the allowed command types are the local
//! allow-list narrowed by the remote one, never widened. It is checked as the query API
//! checks it (nothing applies when a field is invalid), persisted atomically in
//! `{state-dir}/remote-config.json` (applied again at the next start) and acknowledged by
//! its version in every heartbeat ([`Settings::version`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fleet_schemas::api::{ConfigUpdate, RemoteConfig};
use fleet_schemas::remote_config::{intersect_allowed, DesiredConfig};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{valid_secs, AgentConfig};
use crate::stats::{inc, Stats};

/// The intervals the agent runs with, once the configuration and the enrollment's remote
/// config are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Intervals {
    /// Between two collections.
    pub(crate) collect: Duration,
    /// Between two heartbeats.
    pub(crate) heartbeat: Duration,
    /// Longest a report waits for a partial batch to be sent (zero: sent as soon as it
    /// is collected, the default).
    pub(crate) flush: Duration,
}

impl Intervals {
    /// The intervals to start with: the configuration merged with the enrollment's
    /// remote config (see [`intervals`]), then the overrides the server set in an earlier
    /// run (`{state-dir}/intervals.json`), if any.
    pub(crate) fn resolve(
        config: &AgentConfig,
        remote: Option<&RemoteConfig>,
        state_dir: &Path,
    ) -> Self {
        let merged = intervals(config, remote);
        match load_overrides(&state_dir.join(INTERVALS_FILE)) {
            Some(o) => {
                info!(?o, "Using the intervals the server set before.");
                with_overrides(merged, &o)
            }
            None => merged,
        }
    }
}

/// File of the intervals the server set (`config` message, `update_config`), in the
/// state directory.
pub const INTERVALS_FILE: &str = "intervals.json";

/// File of the versioned remote configuration the agent runs, in the state directory.
pub const REMOTE_CONFIG_FILE: &str = "remote-config.json";

/// The remotely settable settings besides the intervals, as they apply now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// Version of the remote configuration applied (`None`: none, local values only).
    pub(crate) version: Option<i64>,
    /// Watched systemd services.
    pub(crate) services: Vec<String>,
    /// Directory of the textfile collector.
    pub(crate) textfile_dir: Option<PathBuf>,
    /// Command types the agent runs (always within the local allow-list).
    pub(crate) allowed_commands: Vec<String>,
}

impl Settings {
    /// The local configuration's values.
    pub(crate) fn local(config: &AgentConfig) -> Self {
        Settings {
            version: None,
            services: config.services.clone(),
            textfile_dir: config.textfile_directory.clone(),
            allowed_commands: config.allowed_commands.clone(),
        }
    }
}

/// What a versioned remote configuration makes of the agent's `base` intervals and
/// `local` settings; `Err` names the invalid field (nothing applies then). Pure.
pub(crate) fn with_remote(
    base: Intervals,
    local: &Settings,
    update: &ConfigUpdate,
) -> Result<(Intervals, Settings), String> {
    let version = update
        .version
        .filter(|v| *v >= 0)
        .ok_or_else(|| "`version` must be a number of at least 0".to_owned())?;
    let desired = DesiredConfig {
        heartbeat_interval_secs: update.heartbeat_interval_secs,
        metrics_interval_secs: update.metrics_interval_secs,
        services: update.services.clone(),
        textfile_dir: update.textfile_dir.clone(),
        allowed_commands: update.allowed_commands.clone(),
    };
    desired.validate().map_err(|e| e.to_string())?;
    let interval = |v: Option<f64>, local: Duration| v.and_then(valid_secs).unwrap_or(local);
    let intervals = Intervals {
        collect: interval(desired.metrics_interval_secs, base.collect),
        heartbeat: interval(desired.heartbeat_interval_secs, base.heartbeat),
        flush: base.flush,
    };
    let settings = Settings {
        version: Some(version),
        services: desired.services.unwrap_or_else(|| local.services.clone()),
        textfile_dir: desired
            .textfile_dir
            .map(PathBuf::from)
            .or_else(|| local.textfile_dir.clone()),
        allowed_commands: intersect_allowed(
            &local.allowed_commands,
            desired.allowed_commands.as_deref(),
        ),
    };
    Ok((intervals, settings))
}

/// The running agent's intervals and remote settings, changeable by the server.
#[derive(Debug)]
pub(crate) struct LiveIntervals {
    current: watch::Sender<Intervals>,
    settings: watch::Sender<Settings>,
    /// The intervals before any versioned remote configuration.
    base: Intervals,
    /// The local settings (the upper bound of the allowed command types).
    local: Settings,
    path: PathBuf,
    remote_path: PathBuf,
    stats: Arc<Stats>,
}

impl LiveIntervals {
    /// Starts at `initial` and the `local` settings, then applies the remote
    /// configuration persisted in `{state_dir}/remote-config.json`, if any; `apply`
    /// persists the server's changes in `{state_dir}/intervals.json` and
    /// `{state_dir}/remote-config.json`.
    pub(crate) fn new(
        initial: Intervals,
        local: Settings,
        state_dir: &Path,
        stats: Arc<Stats>,
    ) -> Self {
        let remote_path = state_dir.join(REMOTE_CONFIG_FILE);
        let (intervals, settings) = match load_overrides(&remote_path) {
            Some(update) => match with_remote(initial, &local, &update) {
                Ok(applied) => {
                    info!(version = ?update.version, "Using the remote configuration the server set before.");
                    applied
                }
                Err(e) => {
                    warn!(error = %e, "Ignoring the persisted remote configuration.");
                    (initial, local.clone())
                }
            },
            None => (initial, local.clone()),
        };
        Self {
            current: watch::Sender::new(intervals),
            settings: watch::Sender::new(settings),
            base: initial,
            local,
            path: state_dir.join(INTERVALS_FILE),
            remote_path,
            stats,
        }
    }

    /// The intervals now.
    pub(crate) fn get(&self) -> Intervals {
        *self.current.borrow()
    }

    /// The remote settings now.
    pub(crate) fn settings(&self) -> Settings {
        self.settings.borrow().clone()
    }

    /// Applies a versioned remote configuration unless it is the one running (see
    /// [`with_remote`]), persists it, and returns a summary.
    async fn apply_remote(&self, update: ConfigUpdate) -> Result<String, String> {
        if self.settings.borrow().version == update.version {
            return Ok(format!(
                "remote configuration version {:?} already applied",
                update.version
            ));
        }
        let (intervals, settings) = with_remote(self.base, &self.local, &update)?;
        let summary = format!(
            "remote configuration version {:?}: collect interval {}s, heartbeat interval {}s, \
             {} services, allowed commands {:?}",
            settings.version,
            intervals.collect.as_secs_f64(),
            intervals.heartbeat.as_secs_f64(),
            settings.services.len(),
            settings.allowed_commands,
        );
        let path = self.remote_path.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec_pretty(&update).map_err(std::io::Error::other)?;
            if let Some(dir) = path.parent() {
                crate::state::ensure_dir(dir)?;
            }
            crate::state::write_atomic(&path, &json, 0o600)
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        self.current.send_replace(intervals);
        self.settings.send_replace(settings);
        inc(&self.stats.config_updates);
        info!(%summary, "Remote configuration applied.");
        match persisted {
            Ok(()) => Ok(summary),
            Err(e) => {
                warn!(error = %e, "Cannot persist the remote configuration; it applies until the agent stops.");
                Ok(format!("{summary} (not persisted: {e})"))
            }
        }
    }

    /// A receiver that sees every change.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Intervals> {
        self.current.subscribe()
    }

    /// Applies `update` (each value checked), persists the server's overrides, and
    /// returns a summary; `Err` when a value is invalid (nothing applied then). An update
    /// with a `version` is a whole remote configuration ([`with_remote`]).
    pub(crate) async fn apply(&self, update: ConfigUpdate) -> Result<String, String> {
        if update.version.is_some() {
            return self.apply_remote(update).await;
        }
        let check = |key: &str, v: Option<f64>| -> Result<Option<Duration>, String> {
            v.map(|v| {
                valid_secs(v).ok_or_else(|| {
                    format!("`{key}` is {v}: expected seconds, more than 0 and at most 86400")
                })
            })
            .transpose()
        };
        let collect = check("metrics_interval_secs", update.metrics_interval_secs)?;
        let heartbeat = check("heartbeat_interval_secs", update.heartbeat_interval_secs)?;
        let mut next = self.get();
        if let Some(c) = collect {
            next.collect = c;
        }
        if let Some(h) = heartbeat {
            next.heartbeat = h;
        }
        self.current.send_replace(next);
        inc(&self.stats.config_updates);
        info!(collect = ?next.collect, heartbeat = ?next.heartbeat, "Intervals changed by the server.");
        // Merge with what was persisted before, so a later update of one key keeps the
        // other.
        let path = self.path.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let mut stored = load_overrides(&path).unwrap_or_default();
            if update.metrics_interval_secs.is_some() {
                stored.metrics_interval_secs = update.metrics_interval_secs;
            }
            if update.heartbeat_interval_secs.is_some() {
                stored.heartbeat_interval_secs = update.heartbeat_interval_secs;
            }
            let json = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
            if let Some(dir) = path.parent() {
                crate::state::ensure_dir(dir)?;
            }
            crate::state::write_atomic(&path, &json, 0o600)
        })
        .await;
        let summary = format!(
            "collect interval {}s, heartbeat interval {}s",
            next.collect.as_secs_f64(),
            next.heartbeat.as_secs_f64()
        );
        match persisted {
            Ok(Ok(())) => Ok(summary),
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot persist the new intervals; they apply until the agent stops.");
                Ok(format!("{summary} (not persisted: {e})"))
            }
            Err(e) => Ok(format!("{summary} (not persisted: {e})")),
        }
    }
}

/// The server's persisted interval overrides, if any.
fn load_overrides(path: &Path) -> Option<ConfigUpdate> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(u) => Some(u),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Ignoring unreadable interval overrides.");
            None
        }
    }
}

/// `intervals` with the server's overrides applied (invalid values ignored).
fn with_overrides(mut intervals: Intervals, overrides: &ConfigUpdate) -> Intervals {
    if let Some(c) = overrides.metrics_interval_secs.and_then(valid_secs) {
        intervals.collect = c;
    }
    if let Some(h) = overrides.heartbeat_interval_secs.and_then(valid_secs) {
        intervals.heartbeat = h;
    }
    intervals
}

/// Merges the intervals: a value set in the configuration wins, then the enrollment's
/// remote config (when valid), then the defaults.
fn intervals(config: &AgentConfig, remote: Option<&RemoteConfig>) -> Intervals {
    let remote_secs = |key: &str, value: f64| {
        let d = valid_secs(value);
        if d.is_none() {
            warn!(
                key,
                value, "Ignoring an invalid interval from the server's remote config."
            );
        }
        d
    };
    let collect = match (config.collect_interval, remote) {
        (None, Some(r)) => remote_secs("metrics_interval_secs", r.metrics_interval_secs),
        _ => None,
    }
    .unwrap_or_else(|| config.collect_interval());
    let heartbeat = match (config.heartbeat_interval, remote) {
        (None, Some(r)) => remote_secs("heartbeat_interval_secs", r.heartbeat_interval_secs),
        _ => None,
    }
    .unwrap_or_else(|| config.heartbeat_interval());
    let flush = config.flush_interval();
    Intervals {
        collect,
        heartbeat,
        flush,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_prefer_the_file_then_the_enrollment_then_defaults() {
        let remote = RemoteConfig {
            heartbeat_interval_secs: 15.0,
            metrics_interval_secs: 20.0,
            websocket_url: String::new(),
        };
        // (collect, heartbeat, flush) in seconds.
        let secs = |i: Intervals| {
            (
                i.collect.as_secs_f64(),
                i.heartbeat.as_secs_f64(),
                i.flush.as_secs_f64(),
            )
        };
        let defaults = AgentConfig::default();
        // No flush interval unless configured: a report goes as soon as it is collected.
        assert_eq!(secs(intervals(&defaults, None)), (10.0, 30.0, 0.0));
        assert_eq!(secs(intervals(&defaults, Some(&remote))), (20.0, 15.0, 0.0));
        let file = AgentConfig {
            collect_interval: Some(Duration::from_secs_f64(5.0)),
            heartbeat_interval: Some(Duration::from_secs_f64(7.0)),
            flush_interval: Some(Duration::from_secs_f64(1.0)),
            ..AgentConfig::default()
        };
        assert_eq!(secs(intervals(&file, Some(&remote))), (5.0, 7.0, 1.0));
        let bad = RemoteConfig {
            heartbeat_interval_secs: f64::NAN,
            metrics_interval_secs: -1.0,
            websocket_url: String::new(),
        };
        assert_eq!(secs(intervals(&defaults, Some(&bad))), (10.0, 30.0, 0.0));
    }
}
