//! Stream processors, each a [`fleet_consumer::Processor`] on the consumer runtime:
//!
//! * the alert evaluator (`alert_loop.rs`, rules in [`rules`]): consumes
//!   `fleet.metrics.v1`, `fleet.agents.v1`, `fleet.samples.v1` and `fleet.events.v1` in
//!   consumer group `alert-evaluator.group`, evaluates every report, sample and agent event
//!   against the rules (static rules of the configuration and the rules of
//!   `fleet.rules.v1`, followed while running), writes AlertRaised / AlertResolved to
//!   `fleet.alerts.v1` (keyed by agent id), and commits its offsets only after the log
//!   acknowledged the alerts. Its state (open alerts, running for-durations) is rebuilt on
//!   start and on every partition it takes: open alerts from `fleet.alerts.v1`,
//!   for-durations by seeking back by time and replaying the window, so a restart, a
//!   rebalance or a replay emits no duplicate AlertRaised;
//! * the [`ticketer`]: one ticket per incident from `fleet.alerts.v1`;
//! * [`liveness`] and [`command_timeouts`]: driven by a timer (`timed.rs`): OFFLINE for
//!   silent agents, TIMED_OUT for commands without a result.

mod alert_loop;
pub mod command_timeouts;
pub mod config;
pub mod liveness;
pub mod metrics;
pub mod rules;
pub mod ticketer;
mod timed;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fleet_event_log::EventLog;

pub use config::ProcessorsConfig;

/// A running evaluator's readiness flag, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Whether the evaluator rebuilt its state and consumes.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    /// The flag the consumer runtime sets while the processor consumes.
    fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.0)
    }
}

/// Runs the alert evaluator until `shutdown` resolves: static rules of the
/// configuration plus the rules of `fleet.rules.v1` (followed while running), seek-back
/// replay of the for-duration window on every partition taken (see `alert_loop.rs`).
pub async fn run_alert_evaluator(
    log: Arc<dyn EventLog>,
    wire: fleet_schemas::Wire,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    alert_loop::run(log, wire, config, ready, shutdown).await
}
