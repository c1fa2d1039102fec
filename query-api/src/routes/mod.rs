//! The routes, one module per resource. Each module's `routes()` lists its routes;
//! [`crate::app::app`] merges them.

pub mod agents;
pub mod command_groups;
pub mod command_output;
pub mod commands;
pub mod dashboard;
pub mod events;
pub mod fleet;
pub mod ingest_keys;
pub mod notifications;
pub mod prometheus;
pub mod remote_config;
pub mod rules;
pub mod tags;
pub mod tenants;
pub mod tickets;
pub mod users;
