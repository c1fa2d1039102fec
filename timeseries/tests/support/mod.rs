//! Shared by the test files: a fresh keyspace on the CQL server for each case.

#![allow(dead_code)]

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use fleet_test_support::services::{random_suffix, scylla_uri as base_uri, with_keyspace};
use fleet_timeseries::cql::CqlChunks;
use fleet_timeseries::{Error, Retention};

/// Connects to a fresh keyspace, failing with how to start the server when it is
/// not there.
pub(crate) async fn connect_fresh(retention: Retention) -> Result<(String, Arc<CqlChunks>)> {
    let base = base_uri();
    let ks = format!("fleet_cs_{}", random_suffix());
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
