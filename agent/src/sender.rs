//! The sender: sends the oldest reports of the [`Outbox`] as one batch once a batch is
//! full or the oldest report has waited the flush interval (by default none: a report
//! goes as soon as it is collected, a backlog in full batches), and removes them only after
//! the gateway took them (2xx, or `ack` on the WebSocket). A retry (503, network error)
//! keeps them, with backoff; so does a 401/403 (credential refused, agent deactivated:
//! logged at error, retried after `auth-retry`). A 413 halves the batch; another 4xx
//! drops it (logged, counted). Cancellation interrupts waits, never a request in flight;
//! at shutdown [`Sender::final_flush`] sends what it can before a deadline.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_schemas::api::MetricBatch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::intervals::LiveIntervals;
use crate::outbox::Outbox;
use crate::retry::Backoff;
use crate::stats::{add, inc, Stats};
use crate::transport::{auth_problem, SendOutcome, Transport};

/// What one send attempt did.
enum Step {
    /// The head batch left the spool (sent or rejected for good).
    Progress,
    /// The batch stays; retry after at least this long (if the gateway said).
    Retry(Option<Duration>),
    /// The gateway found the batch too large (413): send at most this many at once.
    Shrink(usize),
    /// The credential was refused or the agent is deactivated; the batch stays.
    Unauthorized,
    /// Nothing was pending.
    Idle,
}

/// Sends the outbox's reports in batches; built by the orchestrator.
#[derive(Debug)]
pub(crate) struct Sender {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) agent_id: String,
    /// Where the batches come from; they leave it once the gateway answered for good.
    pub(crate) outbox: Arc<Outbox>,
    /// The flush interval (how long a partial batch may wait) is read here, live.
    pub(crate) intervals: Arc<LiveIntervals>,
    pub(crate) stats: Arc<Stats>,
    /// Stops the send loop (between requests, never during one).
    pub(crate) cancel: CancellationToken,
    /// Retry backoff bounds (initial, max).
    pub(crate) backoff: (Duration, Duration),
    /// Delay after a 401/403.
    pub(crate) auth_retry: Duration,
    /// Reports per request: `batch-max-reports`, or less after a 413.
    pub(crate) batch_limit: AtomicUsize,
    /// The last send got a 401/403 (to log when it works again).
    pub(crate) auth_failing: AtomicBool,
}

impl Sender {
    /// Sends until cancelled. Cancellation interrupts waits, never a request in flight.
    pub(crate) async fn send_loop(&self) {
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        loop {
            if !self.wait_until_due().await {
                return;
            }
            let delay = match self.send_one().await {
                Step::Progress => {
                    backoff.reset();
                    continue;
                }
                Step::Shrink(limit) => {
                    self.batch_limit.store(limit, Ordering::Relaxed);
                    continue;
                }
                // The counters said something was pending but nothing was: wait a little
                // rather than spin.
                Step::Idle => Duration::from_millis(100),
                Step::Retry(retry_after) => {
                    let delay = backoff.next_delay(retry_after);
                    debug!(?delay, "Retrying later.");
                    delay
                }
                Step::Unauthorized => self.auth_retry,
            };
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Waits until a full batch is pending or the oldest report has waited the flush
    /// interval. False when cancelled first.
    async fn wait_until_due(&self) -> bool {
        loop {
            let limit = self.batch_limit.load(Ordering::Relaxed);
            let due = self.outbox.due_at(limit, self.intervals.get().flush);
            if due.is_some_and(|d| d <= Instant::now()) {
                return true;
            }
            let sleep_until = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                () = self.outbox.pushed() => {}
                () = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    /// Sends the oldest batch once and applies the outcome to the spool and counters.
    async fn send_one(&self) -> Step {
        let limit = self.batch_limit.load(Ordering::Relaxed);
        let (source, reports) = match self.outbox.next_batch(limit).await {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                self.outbox.refresh_gauges();
                return Step::Idle;
            }
            Err(()) => return Step::Retry(None),
        };
        let n = reports.len();
        let body = MetricBatch { reports };
        let outcome = self.transport.send(&self.agent_id, &body).await;
        let step = match outcome {
            SendOutcome::Sent(accepted) => {
                let refused = accepted.rejected.len().min(n);
                for item in &accepted.rejected {
                    warn!(
                        index = item.index,
                        field = %item.field,
                        message = %item.message,
                        "Gateway refused a report."
                    );
                }
                add(&self.stats.sent, n - refused);
                add(&self.stats.refused, refused);
                inc(&self.stats.batches_sent);
                debug!(reports = n, refused, "Batch sent.");
                if self.auth_failing.swap(false, Ordering::Relaxed) {
                    info!("Gateway accepts the agent's credential again.");
                }
                if self.outbox.remove(source).await {
                    Step::Progress
                } else {
                    Step::Retry(None)
                }
            }
            SendOutcome::Rejected { status: 413, .. } if n > 1 => {
                warn!(
                    reports = n,
                    "Batch too large for the gateway (413); sending smaller batches."
                );
                Step::Shrink(n / 2)
            }
            SendOutcome::Rejected {
                status,
                error,
                body,
            } => {
                let (code, field, message) = match &error {
                    Some(e) => (
                        e.error.code.as_str(),
                        e.error.field.as_deref().unwrap_or(""),
                        e.error.message.as_str(),
                    ),
                    None => ("", "", body.as_str()),
                };
                error!(
                    status,
                    code,
                    field,
                    message,
                    reports = n,
                    "Gateway rejected the batch; dropping it."
                );
                add(&self.stats.rejected, n);
                inc(&self.stats.rejected_batches);
                if self.outbox.remove(source).await {
                    Step::Progress
                } else {
                    Step::Retry(None)
                }
            }
            SendOutcome::Unauthorized { status, error } => {
                inc(&self.stats.auth_failures);
                self.auth_failing.store(true, Ordering::Relaxed);
                let message = error.map(|e| e.error.message).unwrap_or_default();
                error!(
                    status,
                    %message,
                    reports = n,
                    spooled = self.outbox.spool().len(),
                    retry_in = ?self.auth_retry,
                    "{}; reports stay spooled. Re-enroll with `fleetstream agent enroll` \
                     or reactivate the agent.",
                    auth_problem(status)
                );
                Step::Unauthorized
            }
            SendOutcome::RetryLater {
                retry_after,
                reason,
            } => {
                inc(&self.stats.retries);
                warn!(reports = n, ?retry_after, %reason, "Gateway unavailable; will retry.");
                Step::Retry(retry_after)
            }
        };
        self.outbox.refresh_gauges();
        step
    }

    /// Sends what is pending until nothing is, a retry is needed, or `deadline`; what is
    /// left stays in the spool.
    pub(crate) async fn final_flush(&self, deadline: Instant) {
        loop {
            match tokio::time::timeout_at(deadline, self.send_one()).await {
                Ok(Step::Progress) => continue,
                Ok(Step::Shrink(limit)) => {
                    self.batch_limit.store(limit, Ordering::Relaxed);
                    continue;
                }
                Ok(Step::Idle | Step::Retry(_) | Step::Unauthorized) => break,
                Err(_) => {
                    warn!("Shutdown flush timed out.");
                    break;
                }
            }
        }
        self.outbox.refresh_gauges();
    }
}
