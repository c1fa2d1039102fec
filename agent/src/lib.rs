//! The Fleetstream agent: collects a metric report every interval, writes it to an on-disk
//! spool, and sends batches to the ingest gateway
//! (`POST /api/v1/agents/{agent_id}/metrics`), deleting them from the spool only once the
//! gateway took them. Heartbeats go to `POST /api/v1/agents/{agent_id}/heartbeat`.
//!
//! * [`config`]: [`AgentConfig`], layered defaults → TOML file → `FLEET_AGENT__*` env;
//! * [`enroll`](mod@enroll): [`enroll()`] trades a registration token for an agent id and
//!   credential, stored as an [`Enrollment`] in `{state-dir}/credentials.json`;
//! * [`collect`]: [`Collector`], one [`ReportIn`](fleet_schemas::api::ReportIn) per call;
//! * [`spool`]: the durable, bounded on-disk [`Spool`] (redb);
//! * [`queue`]: the in-memory fallback used when the spool cannot be written;
//! * [`transport`]: the [`Transport`] trait and [`HttpTransport`];
//! * [`Agent`]: the run loop tying them together, with live [`Stats`].
//!
//! The agent depends on no server crate: only on `fleet-schemas` for the wire types.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = fleet_agent::AgentConfig::load(None)?;
//! // Once per machine (the token comes from the server's admin):
//! let enrollment = fleet_agent::enroll(
//!     "https://gw.example:8443",
//!     "one-time-token",
//!     &config.resolved_state_dir(),
//! )
//! .await?;
//! println!("enrolled as {}", enrollment.agent_id);
//! // Then, every start:
//! fleet_agent::run(config, async {
//!     let _ = tokio::signal::ctrl_c().await;
//! })
//! .await?;
//! # Ok(())
//! # }
//! ```

mod agent;
pub mod collect;
pub mod config;
pub mod enroll;
pub mod queue;
pub mod spool;
mod state;
pub mod transport;

use std::future::Future;

pub use agent::{Agent, AgentError, Stats, StatsSnapshot, MEMORY_FALLBACK_REPORTS};
pub use collect::Collector;
pub use config::{AgentConfig, ConfigError};
pub use enroll::{enroll, machine_facts, EnrollError, Enrollment, CREDENTIALS_FILE};
pub use spool::{Spool, SpoolError};
pub use transport::{HttpTransport, SendOutcome, Transport, TransportError};

/// Runs an HTTP agent with `config` until `shutdown` completes, then flushes what is
/// spooled (bounded by `shutdown-flush-timeout-secs`; the rest stays spooled for the next
/// start). Uses the enrollment in the state directory when there is one. Returns the
/// final counters.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<StatsSnapshot> {
    // Opening the spool may repair it after a crash: disk I/O, off the async workers.
    let agent = tokio::task::spawn_blocking(move || Agent::new(config)).await??;
    agent.run(shutdown).await
}
