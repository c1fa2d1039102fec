//! The run loop: collect every interval, queue, send in batches, retry with backoff, flush
//! on shutdown.
//!
//! Two tasks share the queue: the collector pushes a report every interval (collection
//! runs on the blocking pool), the sender sends batches from the head. A slow or failing
//! gateway therefore never delays collection; the queue bound limits memory instead.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use fleet_schemas::api::MetricBatch;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::collect::Collector;
use crate::config::{AgentConfig, ConfigError};
use crate::queue::ReportQueue;
use crate::transport::{HttpTransport, SendOutcome, Transport, TransportError};

/// Why an agent could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The transport could not be built.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Counters of what the agent did, readable while it runs (see [`Agent::stats`]).
#[derive(Debug, Default)]
pub struct Stats {
    collected: AtomicU64,
    collect_failures: AtomicU64,
    sent: AtomicU64,
    batches_sent: AtomicU64,
    refused: AtomicU64,
    rejected: AtomicU64,
    rejected_batches: AtomicU64,
    retries: AtomicU64,
    dropped_oldest: AtomicU64,
    lost_on_shutdown: AtomicU64,
    queued: AtomicU64,
}

/// A copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Reports collected and queued.
    pub collected: u64,
    /// Collections that failed (a panic in a collector; logged).
    pub collect_failures: u64,
    /// Reports the gateway accepted.
    pub sent: u64,
    /// Batches the gateway answered with 2xx.
    pub batches_sent: u64,
    /// Reports the gateway refused one by one inside an accepted batch (not retried).
    pub refused: u64,
    /// Reports in batches the gateway rejected whole with a 4xx (dropped, not retried).
    pub rejected: u64,
    /// Batches rejected whole.
    pub rejected_batches: u64,
    /// Send attempts that will be retried (gateway unavailable, network error, ...).
    pub retries: u64,
    /// Oldest reports dropped because the queue was full.
    pub dropped_oldest: u64,
    /// Reports still queued when the shutdown flush ended (lost: no spool yet).
    pub lost_on_shutdown: u64,
    /// Reports queued now.
    pub queued: u64,
}

impl Stats {
    /// Reads every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            collected: get(&self.collected),
            collect_failures: get(&self.collect_failures),
            sent: get(&self.sent),
            batches_sent: get(&self.batches_sent),
            refused: get(&self.refused),
            rejected: get(&self.rejected),
            rejected_batches: get(&self.rejected_batches),
            retries: get(&self.retries),
            dropped_oldest: get(&self.dropped_oldest),
            lost_on_shutdown: get(&self.lost_on_shutdown),
            queued: get(&self.queued),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// A configured agent, ready to [`run`](Agent::run).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    agent_id: String,
    transport: Arc<dyn Transport>,
    stats: Arc<Stats>,
}

impl Agent {
    /// An agent sending over HTTP to `config.server_url`. Validates the configuration.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        config.validate()?;
        let transport = HttpTransport::new(&config.server_url, config.request_timeout())?;
        Self::with_transport(config, Arc::new(transport))
    }

    /// An agent sending through `transport` (tests use a fake one).
    pub fn with_transport(
        config: AgentConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, AgentError> {
        config.validate()?;
        let agent_id = config.resolved_agent_id();
        Ok(Self {
            config,
            agent_id,
            transport,
            stats: Arc::new(Stats::default()),
        })
    }

    /// The id this agent reports as.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// The live counters; keep the handle to read them while [`Agent::run`] runs.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Collects and sends until `shutdown` completes, then flushes what is queued for at
    /// most `shutdown-flush-timeout-secs` and returns the final counters.
    ///
    /// Errors only when the collector cannot be started.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<StatsSnapshot> {
        let Self {
            config,
            agent_id,
            transport,
            stats,
        } = self;
        info!(
            %agent_id,
            server = %config.server_url,
            interval = ?config.collect_interval(),
            services = config.services.len(),
            "Agent started."
        );

        let services = config.services.clone();
        let collector = tokio::task::spawn_blocking(move || Collector::new(services))
            .await
            .context("starting the collector failed")?;

        let queue = Arc::new(Mutex::new(ReportQueue::new(config.max_queue_reports)));
        let wake = Arc::new(Notify::new());
        let cancel = CancellationToken::new();

        let collect_task = tokio::spawn(collect_loop(CollectLoop {
            collector: Arc::new(Mutex::new(collector)),
            interval: config.collect_interval(),
            queue: Arc::clone(&queue),
            wake: Arc::clone(&wake),
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
        }));

        let sender = Sender {
            transport,
            agent_id: agent_id.clone(),
            queue,
            wake,
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
            batch_limit: AtomicUsize::new(config.batch_max_reports),
            flush_interval: config.flush_interval(),
            backoff_initial: config.retry_initial_backoff(),
            backoff_max: config.retry_max_backoff(),
        };

        let deadline;
        {
            let send_loop = sender.send_loop();
            tokio::pin!(send_loop);
            // The send loop only ends once cancelled; the flag keeps it from being polled
            // again after completion should that ever change.
            let send_loop_ended = tokio::select! {
                () = shutdown => false,
                () = &mut send_loop => true,
            };
            info!(%agent_id, "Agent stopping.");
            cancel.cancel();
            deadline = Instant::now() + config.shutdown_flush_timeout();
            // Let a send in flight finish rather than cut it (which could duplicate it).
            if !send_loop_ended && tokio::time::timeout_at(deadline, send_loop).await.is_err() {
                warn!("Send in flight did not finish before the shutdown timeout.");
            }
        }
        if let Err(e) = collect_task.await {
            error!(error = %e, "Collector task ended abnormally.");
        }
        sender.final_flush(deadline).await;

        let snapshot = stats.snapshot();
        info!(
            %agent_id,
            collected = snapshot.collected,
            sent = snapshot.sent,
            rejected = snapshot.rejected,
            dropped_oldest = snapshot.dropped_oldest,
            lost_on_shutdown = snapshot.lost_on_shutdown,
            "Agent stopped."
        );
        Ok(snapshot)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct CollectLoop {
    collector: Arc<Mutex<Collector>>,
    interval: Duration,
    queue: Arc<Mutex<ReportQueue>>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
}

async fn collect_loop(l: CollectLoop) {
    // The first report comes one interval after start, so its CPU figure and I/O deltas
    // cover a full interval like every later one.
    let mut ticker = tokio::time::interval_at(Instant::now() + l.interval, l.interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = l.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let collector = Arc::clone(&l.collector);
        let job = tokio::task::spawn_blocking(move || lock(&collector).collect());
        let result = tokio::select! {
            biased;
            () = l.cancel.cancelled() => return,
            r = job => r,
        };
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                l.stats.collect_failures.fetch_add(1, Ordering::Relaxed);
                error!(error = %e, "Collection failed.");
                continue;
            }
        };
        let (dropped, queued) = {
            let mut q = lock(&l.queue);
            let dropped = q.push(report);
            (dropped, q.len())
        };
        l.stats.collected.fetch_add(1, Ordering::Relaxed);
        l.stats.queued.store(queued as u64, Ordering::Relaxed);
        if let Some(old) = dropped {
            let total = l.stats.dropped_oldest.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(
                collected_at = %old.collected_at,
                dropped_total = total,
                queued,
                "Queue full; dropped the oldest report."
            );
        }
        l.wake.notify_one();
    }
}

/// What one send attempt did.
enum Step {
    /// The head batch left the queue (sent or rejected for good).
    Progress,
    /// The batch stays; retry after at least this long (if the gateway said).
    Retry(Option<Duration>),
    /// The gateway found the batch too large (413): send at most this many at once.
    Shrink(usize),
    /// Nothing was queued.
    Idle,
}

struct Sender {
    transport: Arc<dyn Transport>,
    agent_id: String,
    queue: Arc<Mutex<ReportQueue>>,
    wake: Arc<Notify>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
    /// Reports per request: `batch-max-reports`, or less after a 413.
    batch_limit: AtomicUsize,
    flush_interval: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl Sender {
    /// Sends until cancelled. Cancellation interrupts waits, never a request in flight.
    async fn send_loop(&self) {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
        loop {
            if !self.wait_until_due().await {
                return;
            }
            match self.send_one().await {
                Step::Progress => backoff.reset(),
                Step::Idle => {}
                Step::Shrink(limit) => self.batch_limit.store(limit, Ordering::Relaxed),
                Step::Retry(retry_after) => {
                    let delay = backoff.next_delay(retry_after);
                    debug!(?delay, "Retrying later.");
                    tokio::select! {
                        biased;
                        () = self.cancel.cancelled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// Waits until a full batch is queued or the oldest report has waited the flush
    /// interval. False when cancelled first.
    async fn wait_until_due(&self) -> bool {
        loop {
            let (len, oldest) = {
                let q = lock(&self.queue);
                (q.len(), q.oldest_enqueued_at())
            };
            let due = oldest.map(|t| t + self.flush_interval);
            let full = len >= self.batch_limit.load(Ordering::Relaxed);
            if full || due.is_some_and(|d| d <= Instant::now()) {
                return true;
            }
            let sleep_until = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                () = self.wake.notified() => {}
                () = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    /// Sends the head batch once and applies the outcome to the queue and counters.
    async fn send_one(&self) -> Step {
        let limit = self.batch_limit.load(Ordering::Relaxed);
        let Some(batch) = lock(&self.queue).batch(limit) else {
            return Step::Idle;
        };
        let n = batch.reports.len();
        let body = MetricBatch {
            reports: batch.reports,
        };
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
                self.stats.batches_sent.fetch_add(1, Ordering::Relaxed);
                debug!(reports = n, refused, "Batch sent.");
                lock(&self.queue).ack(batch.through);
                Step::Progress
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
                self.stats.rejected_batches.fetch_add(1, Ordering::Relaxed);
                lock(&self.queue).ack(batch.through);
                Step::Progress
            }
            SendOutcome::RetryLater {
                retry_after,
                reason,
            } => {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                warn!(reports = n, ?retry_after, %reason, "Gateway unavailable; will retry.");
                Step::Retry(retry_after)
            }
        };
        let queued = lock(&self.queue).len();
        self.stats.queued.store(queued as u64, Ordering::Relaxed);
        step
    }

    /// Sends what is queued until empty, a retry is needed, or `deadline`; counts and logs
    /// what is left.
    async fn final_flush(&self, deadline: Instant) {
        loop {
            match tokio::time::timeout_at(deadline, self.send_one()).await {
                Ok(Step::Progress) => continue,
                Ok(Step::Shrink(limit)) => {
                    self.batch_limit.store(limit, Ordering::Relaxed);
                    continue;
                }
                Ok(Step::Idle | Step::Retry(_)) => break,
                Err(_) => {
                    warn!("Shutdown flush timed out.");
                    break;
                }
            }
        }
        let left = lock(&self.queue).len();
        self.stats.queued.store(left as u64, Ordering::Relaxed);
        if left > 0 {
            add(&self.stats.lost_on_shutdown, left);
            warn!(reports = left, "Reports still queued at shutdown are lost.");
        }
    }
}

/// Exponential backoff with jitter: `initial`, doubling per consecutive failure, capped at
/// `max`, each delay drawn from [half, full]. A server's `Retry-After` is a floor (with up
/// to 10 % jitter so agents told the same value do not return in lockstep).
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    pub(crate) fn next_delay(&mut self, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max);
        self.failures = self.failures.saturating_add(1);
        let own = exp.mul_f64(rand::random_range(0.5..=1.0));
        match retry_after {
            Some(after) => own.max(after + after.mul_f64(rand::random_range(0.0..=0.1))),
            None => own,
        }
    }

    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use fleet_schemas::api::{IngestAccepted, ItemError};
    use std::collections::VecDeque;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let d0 = b.next_delay(None);
        assert!(
            d0 >= Duration::from_millis(500) && d0 <= Duration::from_secs(1),
            "{d0:?}"
        );
        let d1 = b.next_delay(None);
        assert!(
            d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
            "{d1:?}"
        );
        for _ in 0..40 {
            assert!(b.next_delay(None) <= Duration::from_secs(60));
        }
        let d = b.next_delay(Some(Duration::from_secs(300)));
        assert!(
            d >= Duration::from_secs(300) && d <= Duration::from_secs(330),
            "{d:?}"
        );
        b.reset();
        let d = b.next_delay(Some(Duration::from_secs(5)));
        assert!(
            d >= Duration::from_secs(5) && d <= Duration::from_millis(5500),
            "{d:?}"
        );
    }

    /// Answers from a script, then `Sent` forever; records every batch.
    #[derive(Debug, Default)]
    struct Scripted {
        script: Mutex<VecDeque<SendOutcome>>,
        seen: Mutex<Vec<MetricBatch>>,
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn send(&self, _agent_id: &str, batch: &MetricBatch) -> SendOutcome {
            lock(&self.seen).push(batch.clone());
            lock(&self.script)
                .pop_front()
                .unwrap_or(SendOutcome::Sent(IngestAccepted {
                    accepted: batch.reports.len(),
                    rejected: vec![],
                }))
        }
    }

    fn fast_config() -> AgentConfig {
        AgentConfig {
            agent_id: Some("unit-test".into()),
            collect_interval_secs: 0.05,
            batch_max_reports: 2,
            retry_initial_backoff_secs: 0.01,
            retry_max_backoff_secs: 0.05,
            shutdown_flush_timeout_secs: 2.0,
            ..AgentConfig::default()
        }
    }

    async fn wait_for(stats: &Stats, what: impl Fn(&StatsSnapshot) -> bool) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !what(&stats.snapshot()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("condition reached in time");
    }

    #[tokio::test]
    async fn refused_items_and_rejected_batches_are_counted_not_retried() {
        let transport = Arc::new(Scripted::default());
        lock(&transport.script).extend([
            SendOutcome::Sent(IngestAccepted {
                accepted: 1,
                rejected: vec![ItemError {
                    index: 1,
                    field: "reports[1].cpu_percent".into(),
                    message: "out of range".into(),
                }],
            }),
            SendOutcome::Rejected {
                status: 400,
                error: None,
                body: "bad".into(),
            },
        ]);
        // Only full batches of 2 while running (the flush interval never elapses).
        let config = AgentConfig {
            flush_interval_secs: Some(3600.0),
            ..fast_config()
        };
        let agent = Agent::with_transport(config, transport.clone()).unwrap();
        let stats = agent.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async {
            let _ = rx.await;
        }));
        wait_for(&stats, |s| s.batches_sent >= 2).await;
        let _ = tx.send(());
        let s = run.await.unwrap().unwrap();
        assert_eq!(s.refused, 1);
        assert_eq!(s.rejected, 2);
        assert_eq!(s.rejected_batches, 1);
        assert_eq!(s.retries, 0);
        assert_eq!(
            s.collected,
            s.sent + s.refused + s.rejected + s.lost_on_shutdown
        );
    }

    #[tokio::test]
    async fn too_large_halves_the_batch_instead_of_dropping_it() {
        let transport = Arc::new(Scripted::default());
        lock(&transport.script).push_back(SendOutcome::Rejected {
            status: 413,
            error: None,
            body: "too large".into(),
        });
        let config = AgentConfig {
            batch_max_reports: 4,
            flush_interval_secs: Some(3600.0),
            ..fast_config()
        };
        let agent = Agent::with_transport(config, transport.clone()).unwrap();
        let stats = agent.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async {
            let _ = rx.await;
        }));
        wait_for(&stats, |s| s.batches_sent >= 2).await;
        let _ = tx.send(());
        let s = run.await.unwrap().unwrap();
        assert_eq!(s.rejected, 0);
        assert_eq!(s.sent, s.collected);
        let seen = lock(&transport.seen);
        assert_eq!(seen[0].reports.len(), 4);
        assert_eq!(seen[1].reports.len(), 2);
        assert_eq!(seen[1].reports[0], seen[0].reports[0]);
    }

    #[tokio::test]
    async fn retry_keeps_the_batch_and_shutdown_counts_what_is_left() {
        let transport = Arc::new(Scripted::default());
        lock(&transport.script).extend(
            std::iter::repeat_with(|| SendOutcome::RetryLater {
                retry_after: None,
                reason: "down".into(),
            })
            .take(10_000),
        );
        let config = AgentConfig {
            shutdown_flush_timeout_secs: 0.5,
            ..fast_config()
        };
        let agent = Agent::with_transport(config, transport.clone()).unwrap();
        let stats = agent.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async {
            let _ = rx.await;
        }));
        wait_for(&stats, |s| s.retries >= 3 && s.collected >= 3).await;
        let _ = tx.send(());
        let s = run.await.unwrap().unwrap();
        assert_eq!(s.sent, 0);
        assert_eq!(s.lost_on_shutdown, s.collected);
        // Every attempt carried the same head report.
        let seen = lock(&transport.seen);
        let first = seen[0].reports[0].collected_at;
        assert!(seen.iter().all(|b| b.reports[0].collected_at == first));
    }
}
