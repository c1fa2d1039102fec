//! Remote configuration: what an operator may set on agents, how it is checked, and how
//! the records of an agent's scopes merge into the configuration it should run.
//!
//! Precedence is per field: the agent's own record, then its tags' records (in tag
//! order, the first tag that sets a field wins), then its location's record; a field no
//! scope sets keeps the agent's local value. The effective version is the largest version
//! of the records that apply, so any change of any of them gives a newer version.
//!
//! Allowed command types are an upper bound set by the agent's local configuration: the
//! remote list only narrows it ([`intersect_allowed`]), never widens it.
//!
//! Pure functions only: the query API validates with them, the gateway and the read model
//! merge with them, the agent intersects with them.

use serde::{Deserialize, Serialize};

use crate::records::{ConfigScope, RemoteConfigEvent};

/// Command types an agent knows; a remote allow-list may name only these.
pub const COMMAND_TYPES: [&str; 4] = [
    "restart_service",
    "run_script",
    "collect_diagnostics",
    "update_config",
];

/// Shortest remote interval, in seconds.
pub const MIN_INTERVAL_SECS: f64 = 1.0;
/// Longest remote interval, in seconds (one day).
pub const MAX_INTERVAL_SECS: f64 = 86_400.0;
/// Most watched services in one configuration.
pub const MAX_SERVICES: usize = 256;
/// Longest textfile directory path, in characters (at most 4,096 bytes, Linux's
/// `PATH_MAX`, whatever the characters; the OpenAPI document's `maxLength` counts
/// characters).
pub const MAX_PATH_CHARS: usize = 1024;

/// True for names systemd accepts as unit names (a conservative subset), never starting
/// with `-` so a name cannot pass for a `systemctl` option.
pub fn is_valid_unit_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('-')
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b':' | b'_' | b'.' | b'@' | b'-' | b'\\')
        })
}

/// The settings of one scope (every field optional: unset means "not this scope's say").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DesiredConfig {
    /// Seconds between heartbeats (1 to 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1.0, maximum = 86400.0))]
    pub heartbeat_interval_secs: Option<f64>,
    /// Seconds between metric collections (1 to 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1.0, maximum = 86400.0))]
    pub metrics_interval_secs: Option<f64>,
    /// Watched systemd services (unit names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_items = 256, value_type = Option<Vec<UnitName>>)
    )]
    pub services: Option<Vec<String>>,
    /// Directory of the textfile custom-metric collector (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 1024, pattern = "^/[^\\x00-\\x1f\\x7f-\\x9f]*$")
    )]
    pub textfile_dir: Option<String>,
    /// Command types the agent may run, within its local allow-list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Vec<CommandType>>))]
    pub allowed_commands: Option<Vec<String>>,
}

/// A systemd unit name (OpenAPI only).
#[cfg(feature = "openapi")]
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[A-Za-z0-9:_.@\\\\][A-Za-z0-9:_.@\\\\-]{0,254}$")]
pub struct UnitName(pub String);

/// A command type (OpenAPI only): one of [`COMMAND_TYPES`].
#[cfg(feature = "openapi")]
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum CommandType {
    RestartService,
    RunScript,
    CollectDiagnostics,
    UpdateConfig,
}

/// A field of a [`DesiredConfig`] that is out of bounds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {message}")]
#[non_exhaustive]
pub struct InvalidConfig {
    /// The field path (`services[2]`).
    pub field: String,
    /// What is wrong and what is accepted.
    pub message: String,
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        field: field.into(),
        message: message.into(),
    }
}

impl DesiredConfig {
    /// True when no field is set (the scope's configuration is cleared).
    pub fn is_empty(&self) -> bool {
        *self == DesiredConfig::default()
    }

    /// Checks every field's bounds; the error names the first offending field.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        for (field, v) in [
            ("heartbeat_interval_secs", self.heartbeat_interval_secs),
            ("metrics_interval_secs", self.metrics_interval_secs),
        ] {
            if let Some(v) = v {
                if !(MIN_INTERVAL_SECS..=MAX_INTERVAL_SECS).contains(&v) {
                    return Err(invalid(
                        field,
                        format!("is {v}: expected seconds from {MIN_INTERVAL_SECS} to {MAX_INTERVAL_SECS}"),
                    ));
                }
            }
        }
        if let Some(services) = &self.services {
            if services.len() > MAX_SERVICES {
                return Err(invalid(
                    "services",
                    format!("has {} names: at most {MAX_SERVICES}", services.len()),
                ));
            }
            for (i, name) in services.iter().enumerate() {
                if !is_valid_unit_name(name) {
                    return Err(invalid(
                        format!("services[{i}]"),
                        "is not a systemd unit name: 1 to 255 of letters, digits and `:_.@-\\`, not starting with `-`",
                    ));
                }
            }
        }
        if let Some(dir) = &self.textfile_dir {
            if !dir.starts_with('/')
                || dir.chars().count() > MAX_PATH_CHARS
                || dir.chars().any(char::is_control)
            {
                return Err(invalid(
                    "textfile_dir",
                    format!("must be an absolute path of at most {MAX_PATH_CHARS} characters, without control characters"),
                ));
            }
        }
        if let Some(allowed) = &self.allowed_commands {
            for (i, c) in allowed.iter().enumerate() {
                if !COMMAND_TYPES.contains(&c.as_str()) {
                    return Err(invalid(
                        format!("allowed_commands[{i}]"),
                        format!("is {c:?}: expected one of {}", COMMAND_TYPES.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The settings a record carries.
    pub fn of_record(r: &RemoteConfigEvent) -> Self {
        DesiredConfig {
            heartbeat_interval_secs: r.heartbeat_interval_secs,
            metrics_interval_secs: r.metrics_interval_secs,
            services: r.services.clone(),
            textfile_dir: r.textfile_dir.clone(),
            allowed_commands: r.allowed_commands.clone(),
        }
    }
}

/// Where each field of an effective configuration came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConfigSource {
    /// `agent`, `tag` or `location`.
    pub scope: String,
    /// The agent id, tag or location id.
    pub target: String,
}

/// An agent's effective desired configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Effective {
    /// The merged settings.
    pub config: DesiredConfig,
    /// The largest version of the records that apply (0: none applies).
    pub version: i64,
    /// Field name → the scope that set it.
    pub sources: std::collections::BTreeMap<String, ConfigSource>,
}

/// Merges the records that apply to one agent: `agent` over `tags` (first wins) over
/// `location`. Records of other scopes or targets must not be passed in.
pub fn merge(
    agent: Option<&RemoteConfigEvent>,
    tags: &[&RemoteConfigEvent],
    location: Option<&RemoteConfigEvent>,
) -> Effective {
    let mut out = Effective::default();
    let ordered = agent
        .into_iter()
        .chain(tags.iter().copied())
        .chain(location);
    for r in ordered {
        out.version = out.version.max(r.version);
        let src = || ConfigSource {
            scope: r.scope.as_str().to_owned(),
            target: r.target.clone(),
        };
        let c = &mut out.config;
        let mut took = |name: &str| {
            out.sources.entry(name.to_owned()).or_insert_with(src);
        };
        if c.heartbeat_interval_secs.is_none() && r.heartbeat_interval_secs.is_some() {
            c.heartbeat_interval_secs = r.heartbeat_interval_secs;
            took("heartbeat_interval_secs");
        }
        if c.metrics_interval_secs.is_none() && r.metrics_interval_secs.is_some() {
            c.metrics_interval_secs = r.metrics_interval_secs;
            took("metrics_interval_secs");
        }
        if c.services.is_none() && r.services.is_some() {
            c.services = r.services.clone();
            took("services");
        }
        if c.textfile_dir.is_none() && r.textfile_dir.is_some() {
            c.textfile_dir = r.textfile_dir.clone();
            took("textfile_dir");
        }
        if c.allowed_commands.is_none() && r.allowed_commands.is_some() {
            c.allowed_commands = r.allowed_commands.clone();
            took("allowed_commands");
        }
    }
    out
}

/// Picks, among `records` of one tenant, those that apply to an agent with `tags` (in
/// the agent's tag order) and `location`, and merges them ([`merge`]).
pub fn effective_for<'a>(
    records: impl IntoIterator<Item = &'a RemoteConfigEvent>,
    agent_id: &str,
    tags: &[String],
    location: Option<&str>,
) -> Effective {
    let mut agent = None;
    let mut by_tag: Vec<Option<&RemoteConfigEvent>> = vec![None; tags.len()];
    let mut loc = None;
    for r in records {
        match r.scope {
            ConfigScope::Agent if r.target == agent_id => agent = Some(r),
            ConfigScope::Tag => {
                if let Some(i) = tags.iter().position(|t| *t == r.target) {
                    by_tag[i] = Some(r);
                }
            }
            ConfigScope::Location if Some(r.target.as_str()) == location => loc = Some(r),
            _ => {}
        }
    }
    let tag_records: Vec<&RemoteConfigEvent> = by_tag.into_iter().flatten().collect();
    merge(agent, &tag_records, loc)
}

/// The command types an agent may run: its local allow-list, narrowed by the remote list
/// when there is one. Never a type the local list lacks.
pub fn intersect_allowed(local: &[String], remote: Option<&[String]>) -> Vec<String> {
    match remote {
        None => local.to_vec(),
        Some(remote) => local
            .iter()
            .filter(|c| remote.contains(c))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(scope: ConfigScope, target: &str, version: i64) -> RemoteConfigEvent {
        RemoteConfigEvent {
            event_id: format!("e{version}"),
            config_key: RemoteConfigEvent::key_for("t", scope, target),
            tenant_id: "t".into(),
            scope,
            target: target.into(),
            version,
            heartbeat_interval_secs: None,
            metrics_interval_secs: None,
            services: None,
            textfile_dir: None,
            allowed_commands: None,
            actor: None,
            occurred_at: version,
            ingested_at: version,
        }
    }

    #[test]
    fn agent_beats_tag_beats_location_field_by_field() {
        let mut agent = rec(ConfigScope::Agent, "a1", 3);
        agent.heartbeat_interval_secs = Some(5.0);
        let mut web = rec(ConfigScope::Tag, "web", 7);
        web.heartbeat_interval_secs = Some(10.0);
        web.services = Some(vec!["nginx.service".into()]);
        let mut db = rec(ConfigScope::Tag, "db", 2);
        db.services = Some(vec!["postgresql.service".into()]);
        db.textfile_dir = Some("/var/lib/db".into());
        let mut loc = rec(ConfigScope::Location, "paris", 1);
        loc.metrics_interval_secs = Some(60.0);
        loc.services = Some(vec!["cron.service".into()]);
        loc.textfile_dir = Some("/var/lib/paris".into());
        let other = {
            let mut o = rec(ConfigScope::Agent, "a2", 99);
            o.heartbeat_interval_secs = Some(1.0);
            o
        };
        let all = [other, loc, db, web, agent];
        let tags = vec!["web".to_owned(), "db".to_owned()];
        let e = effective_for(&all, "a1", &tags, Some("paris"));
        assert_eq!(e.config.heartbeat_interval_secs, Some(5.0));
        assert_eq!(e.config.metrics_interval_secs, Some(60.0));
        assert_eq!(e.config.services, Some(vec!["nginx.service".to_owned()]));
        assert_eq!(e.config.textfile_dir.as_deref(), Some("/var/lib/db"));
        assert_eq!(e.config.allowed_commands, None);
        // The newest applicable record, not a2's.
        assert_eq!(e.version, 7);
        assert_eq!(e.sources["heartbeat_interval_secs"].scope, "agent");
        assert_eq!(e.sources["services"].target, "web");
        assert_eq!(e.sources["textfile_dir"].target, "db");
        assert_eq!(e.sources["metrics_interval_secs"].scope, "location");
        // Tag order decides between tags.
        let swapped = vec!["db".to_owned(), "web".to_owned()];
        let e = effective_for(&all, "a1", &swapped, None);
        assert_eq!(
            e.config.services,
            Some(vec!["postgresql.service".to_owned()])
        );
        assert_eq!(e.config.metrics_interval_secs, None);
        // Nothing applies: empty, version 0.
        assert_eq!(effective_for(&all, "a3", &[], None), Effective::default());
    }

    #[test]
    fn validation_names_the_field() {
        let ok = DesiredConfig {
            heartbeat_interval_secs: Some(5.0),
            metrics_interval_secs: Some(86_400.0),
            services: Some(vec!["nginx.service".into(), "getty@tty1.service".into()]),
            textfile_dir: Some("/var/lib/fleet/textfile".into()),
            allowed_commands: Some(vec!["restart_service".into()]),
        };
        assert_eq!(ok.validate(), Ok(()));
        let field = |c: DesiredConfig| c.validate().map_err(|e| e.field);
        let with = |f: &dyn Fn(&mut DesiredConfig)| {
            let mut c = ok.clone();
            f(&mut c);
            c
        };
        assert_eq!(
            field(with(&|c| c.heartbeat_interval_secs = Some(0.5))),
            Err("heartbeat_interval_secs".into())
        );
        assert_eq!(
            field(with(&|c| c.metrics_interval_secs = Some(f64::NAN))),
            Err("metrics_interval_secs".into())
        );
        assert_eq!(
            field(with(&|c| c.metrics_interval_secs = Some(86_401.0))),
            Err("metrics_interval_secs".into())
        );
        assert_eq!(
            field(with(
                &|c| c.services = Some(vec!["ok".into(), "--now".into()])
            )),
            Err("services[1]".into())
        );
        assert_eq!(
            field(with(&|c| c.textfile_dir = Some("relative/dir".into()))),
            Err("textfile_dir".into())
        );
        assert_eq!(
            field(with(&|c| c.textfile_dir = Some("/var/\nlib".into()))),
            Err("textfile_dir".into())
        );
        assert_eq!(
            field(with(&|c| c.allowed_commands = Some(vec!["rm_rf".into()]))),
            Err("allowed_commands[0]".into())
        );
    }

    #[test]
    fn the_remote_allow_list_only_narrows_the_local_one() {
        let local = vec![
            "restart_service".to_owned(),
            "collect_diagnostics".to_owned(),
        ];
        assert_eq!(intersect_allowed(&local, None), local);
        let remote = vec!["restart_service".to_owned(), "run_script".to_owned()];
        assert_eq!(
            intersect_allowed(&local, Some(&remote)),
            vec!["restart_service".to_owned()]
        );
        assert!(intersect_allowed(&[], Some(&remote)).is_empty());
        assert!(intersect_allowed(&local, Some(&[])).is_empty());
    }
}
