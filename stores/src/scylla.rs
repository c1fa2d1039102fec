//! The ScyllaDB time-series store (work in progress: being written in this change).

use crate::{Result, Retention, StoreError};

/// The ScyllaDB (or Cassandra) time-series store.
#[derive(Debug)]
pub struct ScyllaTimeSeries;

impl ScyllaTimeSeries {
    /// Connects to `scylla://host:9042/keyspace`.
    pub async fn connect(url: &str, _retention: Retention) -> Result<ScyllaTimeSeries> {
        Err(StoreError::Config(format!(
            "{url}: the ScyllaDB store is not built yet"
        )))
    }
}

#[async_trait::async_trait]
impl crate::TimeSeriesStore for ScyllaTimeSeries {
    fn engine(&self) -> &'static str {
        "scylla"
    }
    fn retention(&self) -> &Retention {
        unreachable!("never constructed")
    }
    async fn write(&self, _: &[crate::Point]) -> Result<()> {
        Err(StoreError::Config("not built yet".into()))
    }
    async fn query_resolution(
        &self,
        _: &crate::RangeQuery,
        _: crate::Resolution,
    ) -> Result<Vec<crate::Bucket>> {
        Err(StoreError::Config("not built yet".into()))
    }
    async fn series(&self, _: &str, _: &str) -> Result<Vec<String>> {
        Err(StoreError::Config("not built yet".into()))
    }
    async fn expire(&self, _: i64) -> Result<u64> {
        Ok(0)
    }
}
