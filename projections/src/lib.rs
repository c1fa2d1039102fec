//! Projections and the query API.
//!
//! * The read-model projection consumes `fleet.metrics.v1`, `fleet.heartbeats.v1`,
//!   `fleet.agents.v1` and
//!   `fleet.alerts.v1` and applies each batch in one read-model transaction together with
//!   the consumed offsets; records at offsets the store already has are skipped, so a
//!   restart mid-batch changes nothing twice.
//! * The time-series projection writes every sample of every report (idempotent upserts).
//! * [`api`] answers queries from the stores only.

pub mod admin;
pub mod api;
pub mod auth;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod metrics;
pub mod openapi;
pub mod project;
pub mod rules_api;
pub mod tags;
pub mod timeseries;
pub mod users;

pub use config::ProjectionsConfig;
