//! The projections: they materialize topics into the stores the query API
//! (`fleet-query-api`) reads.
//!
//! * The read-model projection ([`project`]) consumes every topic that has a read-model
//!   view (`fleet_schemas::topics::record_of` says which record each holds: metrics,
//!   heartbeats, agents, alerts, commands, inventory, tickets, rules) and applies each
//!   batch in one read-model transaction together with the consumed offsets; records at
//!   offsets the store already has are skipped, so a restart mid-batch changes nothing
//!   twice.
//! * The time-series projection ([`timeseries`]) feeds `fleet.metrics.v1` into the
//!   time-series engine's head and commits only what its checkpoints made durable (the
//!   consumer runtime's low-water mark).

pub mod config;
pub mod metrics;
pub mod project;
pub mod timeseries;

pub use config::ProjectionsConfig;
