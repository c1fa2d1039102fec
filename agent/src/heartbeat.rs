//! The heartbeat task: sends a [`HeartbeatIn`] now and then every heartbeat interval
//! (live: a changed interval applies to the next heartbeat). Heartbeats are not spooled or
//! retried: a missed heartbeat is itself information, and the next one follows.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_schemas::api::HeartbeatIn;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::intervals::LiveIntervals;
use crate::retry::Backoff;
use crate::stats::{inc, Stats};
use crate::transport::{auth_problem, SendOutcome, Transport};

/// What the heartbeat task needs.
#[derive(Debug)]
pub(crate) struct HeartbeatLoop {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) agent_id: String,
    /// The heartbeat interval is read from here, and followed when it changes.
    pub(crate) intervals: Arc<LiveIntervals>,
    pub(crate) stats: Arc<Stats>,
    /// Delay after a 401/403.
    pub(crate) auth_retry: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) cancel: CancellationToken,
}

/// Sends a heartbeat now and then every interval, until cancelled. A failure is logged
/// (warn for the first of a run of failures, debug after) and the next heartbeat waits at
/// least the interval, longer with backoff (or `auth-retry` after 401/403).
pub(crate) async fn heartbeat_loop(mut h: HeartbeatLoop) {
    let mut sequence = 0u64;
    let mut failing = false;
    let mut changes = h.intervals.subscribe();
    loop {
        let interval = changes.borrow_and_update().heartbeat;
        sequence += 1;
        let heartbeat = HeartbeatIn {
            sent_at: Utc::now(),
            sequence,
            uptime_seconds: sysinfo::System::uptime(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_interval_secs: Some(interval.as_secs_f64()),
            config_version: h.intervals.settings().version,
        };
        let outcome = tokio::select! {
            biased;
            () = h.cancel.cancelled() => return,
            o = h.transport.heartbeat(&h.agent_id, &heartbeat) => o,
        };
        let (problem, delay) = match outcome {
            SendOutcome::Sent(accepted) => {
                h.backoff.reset();
                // A gateway that knows a newer remote configuration answers with it (an
                // older gateway never does).
                if let Some(update) = accepted.config {
                    if let Err(e) = h.intervals.apply(update).await {
                        warn!(error = %e, "Ignoring an invalid remote configuration from the heartbeat answer.");
                    }
                }
                (None, interval)
            }
            SendOutcome::Unauthorized { status, error } => (
                Some(format!(
                    "{}: {}",
                    auth_problem(status),
                    error.map(|e| e.error.message).unwrap_or_default()
                )),
                interval.max(h.auth_retry),
            ),
            SendOutcome::RetryLater {
                retry_after,
                reason,
            } => (
                Some(reason),
                interval.max(h.backoff.next_delay(retry_after)),
            ),
            SendOutcome::Rejected {
                status,
                error,
                body,
            } => (
                Some(format!(
                    "status {status}: {}",
                    error.map(|e| e.error.message).unwrap_or(body)
                )),
                interval.max(h.backoff.next_delay(None)),
            ),
        };
        match problem {
            None => {
                inc(&h.stats.heartbeats_sent);
                if failing {
                    info!(sequence, "Heartbeats accepted again.");
                    failing = false;
                }
            }
            Some(problem) => {
                inc(&h.stats.heartbeat_failures);
                if failing {
                    debug!(sequence, %problem, next_in = ?delay, "Heartbeat failed.");
                } else {
                    warn!(
                        sequence,
                        %problem,
                        next_in = ?delay,
                        "Heartbeat failed (heartbeats are not retried or spooled)."
                    );
                    failing = true;
                }
            }
        }
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = h.cancel.cancelled() => return,
                () = &mut sleep => break,
                // A new interval: the next heartbeat is due at most that long after the
                // previous one.
                changed = changes.changed() => {
                    if changed.is_err() { return }
                    let next = changes.borrow().heartbeat;
                    let at = sleep.deadline().min(Instant::now() + next);
                    sleep.as_mut().reset(at);
                }
            }
        }
    }
}
