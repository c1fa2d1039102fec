//! Harness for end-to-end tests: runs the real `fleetstream` binary as separate processes
//! against real services, and talks to it over HTTP only.
//!
//! The binary is `$FLEETSTREAM_BIN` or `target/debug/fleetstream` (build it first:
//! `cargo build -p fleetstream`). Kafka and Postgres come from `FLEET_KAFKA_BROKERS` and
//! `FLEET_POSTGRES_URL` (loopback defaults); start them with `scripts/services.sh up`.
//! What is not specific to Fleetstream (processes, services, HTTP, Prometheus text,
//! VictoriaMetrics) is `fleet-test-support`'s, re-exported here.
//!
//! * [`fleet`]: tenants, tokens, enrollment, admin keys, spools, history answers;
//! * [`proxy`]: [`GatewayProxy`] sits between an agent and the gateway, records every
//!   metric batch and can hold answers back or play an unavailable gateway;
//! * [`kafka`]: [`PrivateKafka`], a broker of the test's own that can be stopped and
//!   started again, for outage tests;
//! * [`load`]: many agents' reports sent over a few connections, for the benches.

pub mod fleet;
pub mod kafka;
pub mod load;
pub mod proxy;

pub use fleet::*;
pub use fleet_test_support::http::*;
pub use fleet_test_support::process::*;
pub use fleet_test_support::prometheus::*;
pub use fleet_test_support::services::{
    fresh_database, kafka_brokers, postgres_url, python_bin, require_service,
};
pub use fleet_test_support::victoria;
pub use kafka::PrivateKafka;
pub use proxy::{GatewayProxy, ProxiedBatch, ProxyMode};
