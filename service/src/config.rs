//! Layered configuration: compiled-in defaults, then a TOML file, then environment
//! variables `FLEET_<ROLE>__<KEY>` (nested sections with `__`, `_` inside a key stands
//! for `-`): `FLEET_GATEWAY__MAX_BODY_BYTES=2097152` sets `max-body-bytes`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// The event log a role reads and writes, and how its records are framed: the
/// `[event-log]` table of every role's file (and the one shared table of
/// `fleetstream.toml` under `up`, which always uses the embedded log of its data
/// directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct EventLogSettings {
    /// `kafka://host:9092[,host:9092...]` or `file:///dir` (embedded, one process only).
    pub url: String,
    /// Raw engine settings (librdkafka properties for Kafka), passed as they are.
    pub options: BTreeMap<String, String>,
    /// Schema registry (Confluent REST API) base URL. Set: records are written in the
    /// Confluent wire format, each schema registered under `<topic>-value` (BACKWARD) at
    /// start; empty: Avro single-object encoding, no registry. Either framing is read.
    pub schema_registry_url: String,
    /// Consumer-group session timeout: a dead instance's partitions move to the others
    /// after this long.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl Default for EventLogSettings {
    fn default() -> Self {
        EventLogSettings {
            url: "kafka://127.0.0.1:9092".into(),
            options: BTreeMap::new(),
            schema_registry_url: String::new(),
            session_timeout: Duration::from_secs(10),
        }
    }
}

/// Configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("configuration for {role}: {message}")]
pub struct ConfigError {
    /// Role whose configuration failed.
    pub role: String,
    /// What is wrong (names the key and the source).
    pub message: String,
}

/// The environment prefix of a role: `FLEET_GATEWAY__`.
pub fn env_prefix(role: &str) -> String {
    format!("FLEET_{}__", role.to_ascii_uppercase().replace('-', "_"))
}

/// Loads `T` for `role`: defaults, then `file` (if given; it must exist), then env.
pub fn load<T>(role: &str, file: Option<&Path>) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_with_table(role, file, None)
}

/// Like [`load`], reading only table `[table]` of the file (for `fleetstream.toml`, whose
/// sections hold each role's settings).
pub fn load_with_table<T>(
    role: &str,
    file: Option<&Path>,
    table: Option<&str>,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    load_part(role, file, table, &[])
}

/// Like [`load_with_table`], leaving out the tables named in `skip` (which another part of
/// the program reads from the same file, as the query API's `[api]` in a projections file).
pub fn load_part<T>(
    role: &str,
    file: Option<&Path>,
    table: Option<&str>,
    skip: &[&str],
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let err = |message: String| ConfigError {
        role: role.to_owned(),
        message,
    };
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(err(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
        let mut doc: toml::Table = toml::from_str(&text)
            .map_err(|e| err(format!("{} is not valid TOML: {e}", path.display())))?;
        let mut section = match table {
            None => doc,
            Some(t) => match doc.remove(t) {
                Some(toml::Value::Table(section)) => section,
                Some(_) => return Err(err(format!("[{t}] in {} must be a table", path.display()))),
                None => toml::Table::new(),
            },
        };
        for t in skip {
            section.remove(*t);
        }
        let section =
            toml::to_string(&section).map_err(|e| err(format!("{}: {e}", path.display())))?;
        figment = figment.merge(Toml::string(&section));
        let prefix = env_prefix(role);
        figment = figment.merge(env(&prefix));
        return figment
            .extract::<T>()
            .map_err(|e| err(format!("{} (in {} or {prefix}*)", e, path.display())));
    }
    let prefix = env_prefix(role);
    figment = figment.merge(env(&prefix));
    figment.extract::<T>().map_err(|e| err(e.to_string()))
}

/// The environment variables of a role: `PREFIX` then the key, nested tables with `__`.
fn env(prefix: &str) -> Env {
    Env::prefixed(prefix).map(|k| k.as_str().replace("__", ".").replace('_', "-").into())
}

/// `url` with its password hidden (`postgres://fleet:***@db/fleet`), for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..s], &url[at + 1..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(
            redact_url("postgres://fleet:s3cret@db:5432/fleet"),
            "postgres://fleet:***@db:5432/fleet"
        );
        assert_eq!(
            redact_url("postgres://fleet@db/fleet"),
            "postgres://fleet@db/fleet"
        );
        assert_eq!(redact_url("sqlite://a@b.db"), "sqlite://a@b.db");
        assert_eq!(redact_url("file:///x"), "file:///x");
        assert_eq!(redact_url("user:pw@host"), "user:pw@host");
    }
}
