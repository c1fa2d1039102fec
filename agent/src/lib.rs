//! The Fleetstream agent: collects a metric report every interval, queues it in memory and
//! sends batches to the ingest gateway (`POST /api/v1/agents/{agent_id}/metrics`).
//!
//! * [`config`]: [`AgentConfig`], layered defaults → TOML file → `FLEET_AGENT__*` env;
//! * [`collect`]: [`Collector`], one [`ReportIn`](fleet_schemas::api::ReportIn) per call;
//! * [`queue`]: the bounded queue (oldest dropped, counted and logged when full);
//! * [`transport`]: the [`Transport`] trait and [`HttpTransport`];
//! * [`Agent`]: the run loop tying them together, with live [`Stats`].
//!
//! The agent depends on no server crate: only on `fleet-schemas` for the wire types.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let config = fleet_agent::AgentConfig::load(None)?;
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
pub mod queue;
pub mod transport;

use std::future::Future;

pub use agent::{Agent, AgentError, Stats, StatsSnapshot};
pub use collect::Collector;
pub use config::{AgentConfig, ConfigError};
pub use transport::{HttpTransport, SendOutcome, Transport, TransportError};

/// Runs an HTTP agent with `config` until `shutdown` completes, then flushes what is
/// queued (bounded by `shutdown-flush-timeout-secs`). Returns the final counters.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<StatsSnapshot> {
    Agent::new(config)?.run(shutdown).await
}
