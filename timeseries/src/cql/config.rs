//! The `scylla://` URL (moved here from the old store crate's CQL engine).
//!
//! `scylla://[user:password@]host[:port][,host2[:port]...][/keyspace][?option=value&...]`.
//! The port defaults to 9042 and the keyspace to `fleetstream`. Options:
//!
//! * `replication_factor=N` (default 1): replication of the keyspace when this store
//!   creates it, with `SimpleStrategy`;
//! * `datacenter=NAME`: use `NetworkTopologyStrategy` with `N` replicas in `NAME` instead;
//! * `connect_timeout=5s` (humantime, default 5 s): bound on connecting to the cluster.

use std::time::Duration;

use crate::{Error, Result};

const DEFAULT_PORT: u16 = 9042;
const DEFAULT_KEYSPACE: &str = "fleetstream";
pub(super) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The parsed `scylla://` URL.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct CqlUrl {
    /// `host:port` of each contact point.
    pub(super) nodes: Vec<String>,
    /// Keyspace, folded to lower case.
    pub(super) keyspace: String,
    pub(super) replication_factor: u32,
    pub(super) datacenter: Option<String>,
    pub(super) connect_timeout: Duration,
    pub(super) credentials: Option<(String, String)>,
}

impl std::fmt::Debug for CqlUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CqlUrl")
            .field("nodes", &self.nodes)
            .field("keyspace", &self.keyspace)
            .field("replication_factor", &self.replication_factor)
            .field("datacenter", &self.datacenter)
            .field("connect_timeout", &self.connect_timeout)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .finish()
    }
}

impl CqlUrl {
    /// The `replication` map of `CREATE KEYSPACE`.
    pub(super) fn replication(&self) -> String {
        match &self.datacenter {
            None => format!(
                "{{'class': 'SimpleStrategy', 'replication_factor': {}}}",
                self.replication_factor
            ),
            Some(dc) => format!(
                "{{'class': 'NetworkTopologyStrategy', '{dc}': {}}}",
                self.replication_factor
            ),
        }
    }

    /// Parses a `scylla://` URL; [`Error::Config`] (naming the URL, never its password)
    /// when it is not one.
    pub(super) fn parse(url: &str) -> Result<CqlUrl> {
        let rest = url
            .strip_prefix("scylla://")
            .ok_or_else(|| config(url, "expected scylla://host:port/keyspace"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        if rest.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(config(url, "fragments (#) are not supported"));
        }
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| config(url, "credentials must be user:password"))?;
                if user.is_empty() {
                    return Err(config(url, "empty user name"));
                }
                (Some((user.to_owned(), password.to_owned())), hosts)
            }
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(config(url, "no host: expected scylla://host:port/keyspace"));
        }
        let nodes = hosts
            .split(',')
            .map(|n| parse_node(url, n))
            .collect::<Result<Vec<_>>>()?;
        let path = path.strip_suffix('/').unwrap_or(path);
        let keyspace = if path.is_empty() {
            DEFAULT_KEYSPACE.to_owned()
        } else if is_identifier(path, 48) {
            // Unquoted CQL identifiers are case-insensitive: keep the folded name.
            path.to_ascii_lowercase()
        } else {
            return Err(config(
                url,
                format!("bad keyspace {path:?}: a letter, then letters, digits or '_', at most 48"),
            ));
        };
        let mut parsed = CqlUrl {
            nodes,
            keyspace,
            replication_factor: 1,
            datacenter: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            credentials,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "replication_factor" => match value.parse::<u32>() {
                    Ok(n) if (1..=100).contains(&n) => parsed.replication_factor = n,
                    _ => {
                        return Err(config(
                            url,
                            format!("replication_factor must be 1 to 100, not {value:?}"),
                        ))
                    }
                },
                "datacenter" => {
                    let valid = !value.is_empty()
                        && value.len() <= 128
                        && value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                    if !valid {
                        return Err(config(url, format!("bad datacenter name {value:?}")));
                    }
                    parsed.datacenter = Some(value.to_owned());
                }
                "connect_timeout" => match humantime::parse_duration(value) {
                    Ok(d) if d >= Duration::from_millis(1) && d <= Duration::from_secs(600) => {
                        parsed.connect_timeout = d
                    }
                    _ => {
                        return Err(config(
                            url,
                            format!(
                                "connect_timeout must be a duration from 1ms to 10m (like 5s), not {value:?}"
                            ),
                        ))
                    }
                },
                other => {
                    return Err(config(
                        url,
                        format!(
                            "unknown option {other:?} (known: replication_factor, datacenter, connect_timeout)"
                        ),
                    ))
                }
            }
        }
        Ok(parsed)
    }
}

/// A configuration error about `url`, with any password masked.
fn config(url: &str, why: impl std::fmt::Display) -> Error {
    let shown = match url.split_once("://").and_then(|(s, rest)| {
        let (auth, tail) = rest.split_once('/').unwrap_or((rest, ""));
        auth.rsplit_once('@')
            .map(|(_, hosts)| format!("{s}://***@{hosts}/{tail}"))
    }) {
        Some(redacted) => redacted,
        None => url.to_owned(),
    };
    Error::Config(format!("time-series URL {shown:?}: {why}"))
}

fn is_identifier(s: &str, max: usize) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && s.len() <= max
}

/// `host[:port]`, `[v6][:port]` → `host:port`.
fn parse_node(url: &str, node: &str) -> Result<String> {
    if node.is_empty() {
        return Err(config(url, "empty host"));
    }
    if node
        .chars()
        .any(|c| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@'))
    {
        return Err(config(url, format!("bad host {node:?}")));
    }
    let (host, port) = if let Some(rest) = node.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| config(url, format!("bad host {node:?}: missing ']'")))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| config(url, format!("bad host {node:?}")))?,
            ),
        };
        (format!("[{addr}]"), port)
    } else {
        match node.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (node.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" || host.contains(':') && !host.starts_with('[') {
        return Err(config(url, format!("bad host {node:?}")));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(config(url, format!("bad port {p:?} in {node:?}"))),
        },
    };
    Ok(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = CqlUrl::parse("scylla://127.0.0.1:9042").expect("parses");
        assert_eq!(u.nodes, vec!["127.0.0.1:9042"]);
        assert_eq!(u.keyspace, "fleetstream");
        assert_eq!(u.replication_factor, 1);
        assert_eq!(u.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let u = CqlUrl::parse(
            "scylla://u:p@a,b:19042,[::1]:9043,[::1]/Fleet_TS?replication_factor=3&datacenter=dc1&connect_timeout=2s",
        )
        .expect("parses");
        assert_eq!(
            u.nodes,
            vec!["a:9042", "b:19042", "[::1]:9043", "[::1]:9042"]
        );
        assert_eq!(u.keyspace, "fleet_ts");
        assert_eq!(u.replication_factor, 3);
        assert_eq!(u.datacenter.as_deref(), Some("dc1"));
        assert_eq!(u.connect_timeout, Duration::from_secs(2));
        assert_eq!(u.credentials, Some(("u".into(), "p".into())));
        assert!(u.replication().contains("NetworkTopologyStrategy"));
        assert!(!format!("{u:?}").contains("\"p\""), "no password in Debug");

        for bad in [
            "scylla://",
            "scylla:///ks",
            "scylla://h:0/ks",
            "scylla://h:x/ks",
            "scylla://h:99999/ks",
            "scylla://h,/ks",
            "scylla://h/ks/more",
            "scylla://h/1ks",
            "scylla://h/bad-name",
            "scylla://h/ks?replication_factor=0",
            "scylla://h/ks?replication_factor=x",
            "scylla://h/ks?connect_timeout=forever",
            "scylla://h/ks?nope=1",
            "scylla://h/ks?datacenter=",
            "scylla://h/ks#frag",
            "scylla://:p@h/ks",
            "scylla://u@h/ks",
            "scylla://[::1/ks",
            "scylla://a:b:c/ks",
            "cassandra://h/ks",
        ] {
            assert!(
                matches!(CqlUrl::parse(bad), Err(Error::Config(_))),
                "{bad} should be refused"
            );
        }
        match CqlUrl::parse("scylla://user:secret@h/ks?nope=1") {
            Err(Error::Config(m)) => assert!(!m.contains("secret"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
