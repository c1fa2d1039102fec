//! The projections: they materialize topics into the stores the query API
//! (`fleet-query-api`) reads.
//!
//! * The read-model projection consumes `fleet.metrics.v1`, `fleet.heartbeats.v1`,
//!   `fleet.agents.v1` and
//!   `fleet.alerts.v1` and applies each batch in one read-model transaction together with
//!   the consumed offsets; records at offsets the store already has are skipped, so a
//!   restart mid-batch changes nothing twice.
//! * The time-series projection writes every sample of every report (idempotent upserts).

pub mod config;
pub mod metrics;
pub mod project;
pub mod timeseries;

pub use config::ProjectionsConfig;
