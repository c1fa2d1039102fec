//! What the tests and benches of every crate share: the real services they run against
//! ([`services`]: Kafka, a fresh PostgreSQL database, a fresh CQL keyspace, the Python
//! venv), child processes with their logs ([`process`]), HTTP ([`http`]) and Prometheus
//! text ([`prometheus`]) helpers, bench figures ([`stats`]), a throw-away certificate
//! authority ([`pki`]), and VictoriaMetrics as the peer the storage benches measure
//! against ([`victoria`]).
//!
//! Fleetstream-specific harness (the gateway proxy, a private Kafka broker, enrollment,
//! load generators) stays in `fleet-e2e`.

pub mod http;
pub mod pki;
pub mod process;
pub mod prometheus;
pub mod services;
pub mod stats;
pub mod victoria;

use std::path::{Path, PathBuf};

/// The workspace root (where `scripts/` and `target/` are).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}
