//! Shared by the test files: a fresh keyspace on the CQL server for each case.

#![allow(dead_code)]

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fleet_timeseries::cql::CqlChunks;
use fleet_timeseries::{Error, Retention};

/// `FLEET_SCYLLA_URI`, or Cassandra's address under `scripts/services.sh`.
pub(crate) fn base_uri() -> String {
    std::env::var("FLEET_SCYLLA_URI")
        .ok()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "scylla://127.0.0.1:9042".to_owned())
}

/// `base` with keyspace `ks` (its hosts, credentials and options kept).
pub(crate) fn with_keyspace(base: &str, ks: &str) -> Result<String> {
    let rest = base
        .strip_prefix("scylla://")
        .with_context(|| format!("FLEET_SCYLLA_URI {base:?} must start with scylla://"))?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, format!("?{q}")),
        None => (rest, String::new()),
    };
    let authority = rest.split('/').next().unwrap_or(rest);
    Ok(format!("scylla://{authority}/{ks}{query}"))
}

/// Connects to a fresh keyspace, failing with how to start the server when it is
/// not there.
pub(crate) async fn connect_fresh(retention: Retention) -> Result<(String, Arc<CqlChunks>)> {
    let base = base_uri();
    let ks = format!("fleet_cs_{:016x}", rand::random::<u64>());
    let url = with_keyspace(&base, &ks)?;
    match CqlChunks::connect(&url, retention).await {
        Ok(store) => Ok((url, Arc::new(store))),
        Err(Error::Unavailable(e)) => bail!(
            "Cassandra is not reachable at {base} ({e}): start it with \
             `bash scripts/services.sh up`, then `eval \"$(bash scripts/services.sh env)\"`"
        ),
        Err(e) => Err(e).with_context(|| format!("connecting to {url}")),
    }
}
