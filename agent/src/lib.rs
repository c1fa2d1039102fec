//! The Fleetstream agent: collects a metric report every interval, writes it to an on-disk
//! spool, and sends batches to the ingest gateway
//! (`POST /api/v1/agents/{agent_id}/metrics`, or the WebSocket channel), deleting them
//! from the spool only once the gateway took them. Heartbeats go to
//! `POST /api/v1/agents/{agent_id}/heartbeat` (or the socket). It also runs the commands
//! the server sends (within a local allow-list), reports the installed software and
//! sends events (agent started, watched service stopped / failed / recovered).
//!
//! * [`config`]: [`AgentConfig`], layered defaults → TOML file → `FLEET_AGENT__*` env;
//! * [`enroll`](mod@enroll): [`enroll()`] trades a registration token for an agent id and
//!   credential, stored as an [`Enrollment`] in `{state-dir}/credentials.json`;
//! * [`collect`]: [`Collector`], one [`ReportIn`](fleet_schemas::api::ReportIn) per call;
//! * [`spool`]: the durable, bounded on-disk [`Spool`] (redb);
//! * [`queue`]: the in-memory fallback used when the spool cannot be written;
//! * `outbox`: the spool and the in-memory fallback behind one type, what the collect
//!   loop pushes to and the `sender` sends batches from (removed once the gateway took
//!   them);
//! * `heartbeat`: the heartbeat task; `intervals`: the collect, heartbeat and flush
//!   intervals, changeable by the server while the agent runs; `stats`: [`Stats`];
//! * [`transport`]: the [`Transport`] trait and [`HttpTransport`];
//! * [`tls`]: [`ClientTls`], how the gateway's certificate is checked (system roots, or
//!   only the CA of `ca-file`), for HTTP and the WebSocket alike;
//! * [`ws`]: the WebSocket channel: one background session (reconnects with full-jitter
//!   backoff, pings, matches acks to requests by id) and [`WsTransport`], which uses the
//!   socket while it is up and HTTP otherwise (`websocket = true`, the default);
//! * [`commands`]: the command executor: allow-list (`allowed-commands`), named scripts,
//!   timeouts that kill the process group, bounded output streamed as progress, results
//!   retried until acknowledged, each command id run at most once (`commands.json`);
//! * [`inventory`]: installed packages (dpkg, else rpm), sent at start and on change;
//! * [`security`]: the security posture (firewall, pending updates, reboot required,
//!   sshd root login and password authentication, ClamAV), collected every
//!   `security-interval` and on change, carried by every report;
//! * [`custom`]: custom metrics from Prometheus text-format files (`textfile-directory`)
//!   and scripts (`custom-scripts`), put in every report's `custom` map;
//! * [`process`]: runs a probe or script with a timeout that kills its process group and
//!   bounded output;
//! * [`events`]: the agent's start (and how its previous run ended) and stop, host
//!   reboots and service transitions, in a bounded in-memory queue;
//! * [`Agent`]: the orchestrator: builds these parts from the configuration, runs them as
//!   tasks (with the collect loop) and flushes at shutdown. No other module imports from
//!   it.
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
pub mod cli;
pub mod collect;
pub mod commands;
pub mod config;
pub mod custom;
pub mod enroll;
pub mod events;
mod heartbeat;
mod intervals;
pub mod inventory;
mod outbox;
pub mod process;
pub mod queue;
mod retry;
pub mod security;
mod sender;
pub mod spool;
mod state;
mod stats;
mod sync;
pub mod tls;
pub mod transport;
pub mod ws;

use std::future::Future;

pub use agent::{Agent, AgentError};
pub use collect::Collector;
pub use config::{AgentConfig, ConfigError};
pub use enroll::{
    enroll, enroll_with_tls, machine_facts, EnrollError, Enrollment, CREDENTIALS_FILE,
};
pub use intervals::{INTERVALS_FILE, REMOTE_CONFIG_FILE};
pub use outbox::MEMORY_FALLBACK_REPORTS;
pub use spool::{Spool, SpoolError};
pub use stats::{Stats, StatsSnapshot};
pub use tls::ClientTls;
pub use transport::{HttpTransport, SendOutcome, Transport, TransportError};
pub use ws::WsTransport;

/// Runs an agent with `config` (WebSocket with HTTP fallback, or HTTP only with
/// `websocket = false`) until `shutdown` completes, then flushes what is
/// spooled (bounded by `shutdown-flush-timeout`; the rest stays spooled for the next
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
