//! The run loop: collect every interval, spool, send in batches, retry with backoff, send
//! heartbeats, flush on shutdown.
//!
//! Three tasks:
//!
//! * the collector collects a report every interval (on the blocking pool) and appends it
//!   to the on-disk [`Spool`] (durable, `fsync`'ed) before anything else happens to it;
//! * the sender sends the oldest spooled reports as one batch once a batch is full or the
//!   oldest report has waited the flush interval, and deletes them from the spool only
//!   after a 2xx. A retry (503, network error) keeps them; so does a 401/403 (credential
//!   refused, agent deactivated: logged at error, retried after `auth-retry-secs`);
//! * the heartbeat task POSTs a [`HeartbeatIn`] every heartbeat interval. Heartbeats are
//!   not spooled: a missed heartbeat is itself information.
//!
//! A slow or failing gateway therefore never delays collection; the spool bound limits
//! disk use instead. If the spool cannot be written (disk full, I/O error) reports are kept
//! in a bounded in-memory [`ReportQueue`] and still sent; only those are lost if the agent
//! stops before they are sent (counted in [`StatsSnapshot::lost`]).

use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use fleet_schemas::api::{HeartbeatIn, MetricBatch, RemoteConfig, ReportIn};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::collect::Collector;
use crate::config::{valid_secs, AgentConfig, ConfigError, DEFAULT_SERVER_URL};
use crate::enroll::{EnrollError, Enrollment};
use crate::queue::ReportQueue;
use crate::spool::{Appended, Spool, SpoolError, SPOOL_FILE};
use crate::transport::{HttpTransport, SendOutcome, Transport, TransportError};

/// Most reports held in memory when the spool cannot be written.
pub const MEMORY_FALLBACK_REPORTS: usize = 1000;

/// While the spool stays full every collection drops one report: the warning about it is
/// repeated at most this often, with the count since the previous one.
const DROP_WARN_EVERY: Duration = Duration::from_secs(60);

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
    /// The stored enrollment cannot be read.
    #[error(transparent)]
    Enrollment(#[from] EnrollError),
    /// The spool cannot be opened (unwritable state directory, another agent using it).
    #[error(transparent)]
    Spool(#[from] SpoolError),
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
    auth_failures: AtomicU64,
    dropped_oldest: AtomicU64,
    spool_corrupt: AtomicU64,
    spool_errors: AtomicU64,
    lost: AtomicU64,
    heartbeats_sent: AtomicU64,
    heartbeat_failures: AtomicU64,
    spooled: AtomicU64,
    spooled_bytes: AtomicU64,
    in_memory: AtomicU64,
}

/// A copy of [`Stats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StatsSnapshot {
    /// Reports collected.
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
    /// Sends refused with 401 or 403 (the batch stays spooled).
    pub auth_failures: u64,
    /// Oldest reports dropped because the spool (or the in-memory fallback) was full.
    pub dropped_oldest: u64,
    /// Corrupt spool entries skipped and removed.
    pub spool_corrupt: u64,
    /// Spool operations that failed (logged; reports fall back to memory).
    pub spool_errors: u64,
    /// Reports lost: held only in memory (the spool failing) when the agent stopped.
    pub lost: u64,
    /// Heartbeats the gateway accepted.
    pub heartbeats_sent: u64,
    /// Heartbeats that failed (not retried: the next one follows).
    pub heartbeat_failures: u64,
    /// Reports in the spool now.
    pub spooled: u64,
    /// Bytes of reports in the spool now.
    pub spooled_bytes: u64,
    /// Reports held in memory now because the spool could not take them.
    pub in_memory: u64,
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
            auth_failures: get(&self.auth_failures),
            dropped_oldest: get(&self.dropped_oldest),
            spool_corrupt: get(&self.spool_corrupt),
            spool_errors: get(&self.spool_errors),
            lost: get(&self.lost),
            heartbeats_sent: get(&self.heartbeats_sent),
            heartbeat_failures: get(&self.heartbeat_failures),
            spooled: get(&self.spooled),
            spooled_bytes: get(&self.spooled_bytes),
            in_memory: get(&self.in_memory),
        }
    }
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The intervals the agent runs with, once the configuration and the enrollment's remote
/// config are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Intervals {
    collect: Duration,
    heartbeat: Duration,
    flush: Duration,
}

/// A configured agent, ready to [`run`](Agent::run).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    agent_id: String,
    enrolled: bool,
    server_url: String,
    intervals: Intervals,
    transport: Arc<dyn Transport>,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
}

impl Agent {
    /// An agent sending over HTTP. Validates the configuration, loads the enrollment from
    /// the state directory when there is one (then every request carries its credential)
    /// and opens the spool there. Blocks briefly on disk I/O.
    pub fn new(config: AgentConfig) -> Result<Self, AgentError> {
        config.validate()?;
        let state_dir = config.resolved_state_dir();
        let enrollment = Enrollment::load(&state_dir)?;
        let server_url = server_url(&config, enrollment.as_ref());
        let transport = HttpTransport::new(&server_url, config.request_timeout())?
            .with_credential(enrollment.as_ref().map(|e| e.credential.as_str()))?;
        Self::build(
            config,
            &state_dir,
            enrollment,
            server_url,
            Arc::new(transport),
        )
    }

    /// An agent sending through `transport` (tests use a fake one). The enrollment, if
    /// any, still sets the agent id and intervals; authentication is the transport's.
    pub fn with_transport(
        config: AgentConfig,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, AgentError> {
        config.validate()?;
        let state_dir = config.resolved_state_dir();
        let enrollment = Enrollment::load(&state_dir)?;
        let server_url = server_url(&config, enrollment.as_ref());
        Self::build(config, &state_dir, enrollment, server_url, transport)
    }

    fn build(
        config: AgentConfig,
        state_dir: &Path,
        enrollment: Option<Enrollment>,
        server_url: String,
        transport: Arc<dyn Transport>,
    ) -> Result<Self, AgentError> {
        let agent_id = match &enrollment {
            Some(e) => {
                if let Some(configured) = config.agent_id.as_ref().filter(|id| **id != e.agent_id) {
                    warn!(
                        configured = %configured,
                        enrolled = %e.agent_id,
                        "The configured agent-id differs from the enrolled one; using the \
                         enrolled id (the credential belongs to it)."
                    );
                }
                e.agent_id.clone()
            }
            None => config.resolved_agent_id(),
        };
        let intervals = intervals(&config, enrollment.as_ref().map(|e| &e.config));
        let spool = Spool::open(&state_dir.join(SPOOL_FILE), config.spool_max_bytes)?;
        Ok(Self {
            config,
            agent_id,
            enrolled: enrollment.is_some(),
            server_url,
            intervals,
            transport,
            spool: Arc::new(spool),
            stats: Arc::new(Stats::default()),
        })
    }

    /// The id this agent reports as.
    pub fn agent_id(&self) -> &str {
        &self.agent_id
    }

    /// True when an enrollment was found in the state directory.
    pub fn is_enrolled(&self) -> bool {
        self.enrolled
    }

    /// The gateway URL this agent sends to.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// The collect interval in effect (configuration, else enrollment, else 10 s).
    pub fn collect_interval(&self) -> Duration {
        self.intervals.collect
    }

    /// The heartbeat interval in effect (configuration, else enrollment, else 30 s).
    pub fn heartbeat_interval(&self) -> Duration {
        self.intervals.heartbeat
    }

    /// The live counters; keep the handle to read them while [`Agent::run`] runs.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.stats)
    }

    /// Collects, spools, sends and heartbeats until `shutdown` completes, then tries to
    /// send what is spooled for at most `shutdown-flush-timeout-secs`; what is left stays
    /// in the spool for the next start. Returns the final counters.
    ///
    /// Dropping the future (task abort) stops every task of the agent; what was spooled
    /// stays spooled. Errors only when the collector cannot be started.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<StatsSnapshot> {
        let Self {
            config,
            agent_id,
            enrolled,
            server_url,
            intervals,
            transport,
            spool,
            stats,
        } = self;
        info!(
            %agent_id,
            server = %server_url,
            enrolled,
            interval = ?intervals.collect,
            heartbeat_interval = ?intervals.heartbeat,
            spool = %spool.path().display(),
            services = config.services.len(),
            "Agent started."
        );
        if !spool.is_empty() {
            info!(
                reports = spool.len(),
                bytes = spool.bytes(),
                "Sending the reports spooled by a previous run first."
            );
        }

        let services = config.services.clone();
        let collector = tokio::task::spawn_blocking(move || Collector::new(services))
            .await
            .context("starting the collector failed")?;

        let shared = Arc::new(Shared {
            spool,
            stats: Arc::clone(&stats),
            memory: Mutex::new(ReportQueue::new(MEMORY_FALLBACK_REPORTS)),
            appended: Mutex::new(VecDeque::new()),
            appended_cap: config.batch_max_reports,
            drop_log: Mutex::new((None, 0)),
            wake: Notify::new(),
            cancel: CancellationToken::new(),
        });
        shared.refresh_gauges();

        // Dropping the set (the run future dropped, e.g. aborted) aborts the tasks.
        let mut tasks = JoinSet::new();
        tasks.spawn(collect_loop(
            Arc::clone(&shared),
            collector,
            intervals.collect,
        ));
        tasks.spawn(heartbeat_loop(HeartbeatLoop {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            shared: Arc::clone(&shared),
            interval: intervals.heartbeat,
            auth_retry: config.auth_retry(),
            backoff: Backoff::new(config.retry_initial_backoff(), config.retry_max_backoff()),
        }));

        let sender = Sender {
            transport,
            agent_id: agent_id.clone(),
            shared: Arc::clone(&shared),
            batch_limit: AtomicUsize::new(config.batch_max_reports),
            flush_interval: intervals.flush,
            backoff_initial: config.retry_initial_backoff(),
            backoff_max: config.retry_max_backoff(),
            auth_retry: config.auth_retry(),
            auth_failing: AtomicBool::new(false),
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
            shared.cancel.cancel();
            deadline = Instant::now() + config.shutdown_flush_timeout();
            // Let a send in flight finish rather than cut it (which would send it again
            // on the next start).
            if !send_loop_ended && tokio::time::timeout_at(deadline, send_loop).await.is_err() {
                warn!("Send in flight did not finish before the shutdown timeout.");
            }
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(e) = joined {
                error!(error = %e, "Agent task ended abnormally.");
            }
        }
        sender.final_flush(deadline).await;
        shared.persist_memory().await;
        shared.refresh_gauges();

        let snapshot = stats.snapshot();
        info!(
            %agent_id,
            collected = snapshot.collected,
            sent = snapshot.sent,
            rejected = snapshot.rejected,
            dropped_oldest = snapshot.dropped_oldest,
            spooled = snapshot.spooled,
            lost = snapshot.lost,
            "Agent stopped; spooled reports are sent on the next start."
        );
        Ok(snapshot)
    }
}

/// The gateway URL: the configured one, except that an enrolled agent whose configuration
/// leaves `server-url` at its default uses the URL it enrolled with.
fn server_url(config: &AgentConfig, enrollment: Option<&Enrollment>) -> String {
    match enrollment {
        Some(e) if config.server_url == DEFAULT_SERVER_URL => e.server_url.clone(),
        Some(e) if config.server_url != e.server_url => {
            info!(
                configured = %config.server_url,
                enrolled = %e.server_url,
                "Using server-url from the configuration rather than the enrollment's."
            );
            config.server_url.clone()
        }
        _ => config.server_url.clone(),
    }
}

/// Merges the intervals: a value set in the configuration wins, then the enrollment's
/// remote config (when valid), then the defaults.
fn intervals(config: &AgentConfig, remote: Option<&RemoteConfig>) -> Intervals {
    let remote_secs = |key: &str, value: f64| {
        let d = valid_secs(value);
        if d.is_none() {
            warn!(
                key,
                value, "Ignoring an invalid interval from the server's remote config."
            );
        }
        d
    };
    let collect = match (config.collect_interval_secs, remote) {
        (None, Some(r)) => remote_secs("metrics_interval_secs", r.metrics_interval_secs),
        _ => None,
    }
    .unwrap_or_else(|| config.collect_interval());
    let heartbeat = match (config.heartbeat_interval_secs, remote) {
        (None, Some(r)) => remote_secs("heartbeat_interval_secs", r.heartbeat_interval_secs),
        _ => None,
    }
    .unwrap_or_else(|| config.heartbeat_interval());
    let flush = match config.flush_interval_secs {
        Some(_) => config.flush_interval(),
        None => collect,
    };
    Intervals {
        collect,
        heartbeat,
        flush,
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain data behind; keep going with it.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the collector, the sender and the heartbeat task share.
struct Shared {
    spool: Arc<Spool>,
    stats: Arc<Stats>,
    /// Reports the spool could not take, still to be sent.
    memory: Mutex<ReportQueue>,
    /// When the newest spool entries (at most `appended_cap`) were appended, to know when
    /// a partial batch is due. Entries older than these (from a previous run) are due now.
    appended: Mutex<VecDeque<(u64, Instant)>>,
    appended_cap: usize,
    /// When the last "spool full" warning was logged, and drops since.
    drop_log: Mutex<(Option<Instant>, u64)>,
    wake: Notify,
    cancel: CancellationToken,
}

impl Shared {
    /// Runs a blocking spool operation on the blocking pool.
    async fn on_spool<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Spool) -> Result<R, SpoolError> + Send + 'static,
    ) -> Result<R, SpoolError> {
        let spool = Arc::clone(&self.spool);
        tokio::task::spawn_blocking(move || f(&spool))
            .await
            .map_err(|e| SpoolError::Storage {
                path: self.spool.path().to_owned(),
                message: format!("spool task failed: {e}"),
            })?
    }

    fn refresh_gauges(&self) {
        let s = &self.stats;
        s.spooled.store(self.spool.len(), Ordering::Relaxed);
        s.spooled_bytes.store(self.spool.bytes(), Ordering::Relaxed);
        s.spool_corrupt
            .store(self.spool.corrupt_total(), Ordering::Relaxed);
        s.in_memory
            .store(lock(&self.memory).len() as u64, Ordering::Relaxed);
    }

    /// Appends a report to the spool (durably), or to memory when the spool fails.
    /// `failing` carries whether the previous append failed, to log once per episode.
    async fn store(&self, report: ReportIn, failing: &mut bool) {
        let spool = Arc::clone(&self.spool);
        let joined = tokio::task::spawn_blocking(move || {
            let result = spool.append(&report);
            (result, report)
        })
        .await;
        match joined {
            Ok((Ok(appended), _)) => {
                {
                    let mut recent = lock(&self.appended);
                    recent.push_back((appended.seq, Instant::now()));
                    while recent.len() > self.appended_cap {
                        recent.pop_front();
                    }
                }
                if appended.dropped > 0 {
                    self.log_drops(&appended);
                }
                if *failing {
                    info!("Spool writable again.");
                    *failing = false;
                }
            }
            Ok((Err(e), report)) => {
                inc(&self.stats.spool_errors);
                if *failing {
                    debug!(error = %e, "Spool write failed again; report kept in memory.");
                } else {
                    error!(
                        error = %e,
                        "Cannot write the report to the spool; keeping reports in memory \
                         until sent (lost if the agent stops first)."
                    );
                    *failing = true;
                }
                if let Some(old) = lock(&self.memory).push(report) {
                    let total = self.stats.dropped_oldest.fetch_add(1, Ordering::Relaxed) + 1;
                    warn!(
                        collected_at = %old.collected_at,
                        dropped_total = total,
                        "In-memory fallback full; dropped the oldest report."
                    );
                }
            }
            Err(e) => {
                inc(&self.stats.spool_errors);
                inc(&self.stats.lost);
                error!(error = %e, "Spooling a report failed abnormally; the report is lost.");
            }
        }
    }

    /// Counts reports the spool bound dropped, and warns: at once for the first drop, then
    /// at most every [`DROP_WARN_EVERY`] with the count since the previous warning (debug
    /// in between). Every drop is in [`StatsSnapshot::dropped_oldest`].
    fn log_drops(&self, appended: &Appended) {
        let total = self
            .stats
            .dropped_oldest
            .fetch_add(appended.dropped, Ordering::Relaxed)
            + appended.dropped;
        let (oldest, newest) = appended.dropped_range.unzip();
        let warn_now = {
            let mut log = lock(&self.drop_log);
            let (last_warning, unlogged) = &mut *log;
            *unlogged += appended.dropped;
            if last_warning.is_none_or(|at| at.elapsed() >= DROP_WARN_EVERY) {
                *last_warning = Some(Instant::now());
                Some(std::mem::take(unlogged))
            } else {
                None
            }
        };
        match warn_now {
            Some(dropped) => warn!(
                dropped,
                newest_dropped_collected_at = ?newest,
                dropped_total = total,
                spooled_bytes = self.spool.bytes(),
                spool_max_bytes = self.spool.max_bytes(),
                "Spool full; dropped the oldest reports (raise spool-max-bytes to keep more)."
            ),
            None => debug!(
                dropped = appended.dropped,
                oldest_collected_at = ?oldest,
                newest_collected_at = ?newest,
                dropped_total = total,
                "Spool full; dropped the oldest reports."
            ),
        }
    }

    /// When the pending reports are due: now when a batch of `limit` is waiting or the
    /// oldest report comes from a previous run, else when the oldest has waited `flush`.
    /// `None` when nothing is pending.
    fn due_at(&self, limit: usize, flush: Duration) -> Option<Instant> {
        let spooled = self.spool.len();
        let (in_memory, memory_since) = {
            let m = lock(&self.memory);
            (m.len() as u64, m.oldest_enqueued_at())
        };
        let now = Instant::now();
        if spooled + in_memory == 0 {
            return None;
        }
        if spooled + in_memory >= limit as u64 {
            return Some(now);
        }
        let mut oldest = memory_since;
        if let Some(head) = self.spool.head_seq() {
            let since = lock(&self.appended)
                .iter()
                .find(|(seq, _)| *seq == head)
                .map(|(_, at)| *at);
            match since {
                Some(at) => oldest = Some(oldest.map_or(at, |o| o.min(at))),
                None => return Some(now),
            }
        }
        oldest.map(|at| at + flush)
    }

    /// Moves what only memory holds into the spool (at shutdown); counts what cannot be.
    async fn persist_memory(&self) {
        let left = {
            let mut m = lock(&self.memory);
            match m.batch(usize::MAX) {
                Some(b) => {
                    m.ack(b.through);
                    b.reports
                }
                None => return,
            }
        };
        let mut lost = 0usize;
        for report in left {
            if self.on_spool(move |s| s.append(&report)).await.is_err() {
                lost += 1;
            }
        }
        if lost > 0 {
            add(&self.stats.lost, lost);
            warn!(
                reports = lost,
                "Reports held only in memory (the spool failing) are lost at shutdown."
            );
        }
    }
}

async fn collect_loop(shared: Arc<Shared>, collector: Collector, interval: Duration) {
    let collector = Arc::new(Mutex::new(collector));
    // The first report comes one interval after start, so its CPU figure and I/O deltas
    // cover a full interval like every later one.
    let mut ticker = tokio::time::interval_at(Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut spool_failing = false;
    loop {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let job_collector = Arc::clone(&collector);
        let job = tokio::task::spawn_blocking(move || lock(&job_collector).collect());
        let result = tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            r = job => r,
        };
        let report = match result {
            Ok(report) => report,
            Err(e) => {
                inc(&shared.stats.collect_failures);
                error!(error = %e, "Collection failed.");
                continue;
            }
        };
        inc(&shared.stats.collected);
        // Not cancellable: once collected, a report is spooled (an fsync at most).
        shared.store(report, &mut spool_failing).await;
        shared.refresh_gauges();
        shared.wake.notify_one();
    }
}

struct HeartbeatLoop {
    transport: Arc<dyn Transport>,
    agent_id: String,
    shared: Arc<Shared>,
    interval: Duration,
    auth_retry: Duration,
    backoff: Backoff,
}

/// Sends a heartbeat now and then every interval, until cancelled. A failure is logged
/// (warn for the first of a run of failures, debug after) and the next heartbeat waits at
/// least the interval, longer with backoff (or `auth-retry-secs` after 401/403).
async fn heartbeat_loop(mut h: HeartbeatLoop) {
    let mut sequence = 0u64;
    let mut failing = false;
    loop {
        sequence += 1;
        let heartbeat = HeartbeatIn {
            sent_at: Utc::now(),
            sequence,
            uptime_seconds: sysinfo::System::uptime(),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let outcome = tokio::select! {
            biased;
            () = h.shared.cancel.cancelled() => return,
            o = h.transport.heartbeat(&h.agent_id, &heartbeat) => o,
        };
        let (problem, delay) = match outcome {
            SendOutcome::Sent(_) => {
                h.backoff.reset();
                (None, h.interval)
            }
            SendOutcome::Unauthorized { status, error } => (
                Some(format!(
                    "{}: {}",
                    auth_problem(status),
                    error.map(|e| e.error.message).unwrap_or_default()
                )),
                h.interval.max(h.auth_retry),
            ),
            SendOutcome::RetryLater {
                retry_after,
                reason,
            } => (
                Some(reason),
                h.interval.max(h.backoff.next_delay(retry_after)),
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
                h.interval.max(h.backoff.next_delay(None)),
            ),
        };
        match problem {
            None => {
                inc(&h.shared.stats.heartbeats_sent);
                if failing {
                    info!(sequence, "Heartbeats accepted again.");
                    failing = false;
                }
            }
            Some(problem) => {
                inc(&h.shared.stats.heartbeat_failures);
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
        tokio::select! {
            biased;
            () = h.shared.cancel.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// What a 401 or 403 means for the operator.
fn auth_problem(status: u16) -> &'static str {
    if status == 403 {
        "the gateway says this agent is deactivated (403)"
    } else {
        "the gateway refused the agent's credential (401: missing or invalid)"
    }
}

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

/// Where a batch came from, to remove it once sent.
enum Source {
    Spool(u64),
    Memory(u64),
}

struct Sender {
    transport: Arc<dyn Transport>,
    agent_id: String,
    shared: Arc<Shared>,
    /// Reports per request: `batch-max-reports`, or less after a 413.
    batch_limit: AtomicUsize,
    flush_interval: Duration,
    backoff_initial: Duration,
    backoff_max: Duration,
    auth_retry: Duration,
    auth_failing: AtomicBool,
}

impl Sender {
    /// Sends until cancelled. Cancellation interrupts waits, never a request in flight.
    async fn send_loop(&self) {
        let mut backoff = Backoff::new(self.backoff_initial, self.backoff_max);
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
                () = self.shared.cancel.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Waits until a full batch is pending or the oldest report has waited the flush
    /// interval. False when cancelled first.
    async fn wait_until_due(&self) -> bool {
        loop {
            let limit = self.batch_limit.load(Ordering::Relaxed);
            let due = self.shared.due_at(limit, self.flush_interval);
            if due.is_some_and(|d| d <= Instant::now()) {
                return true;
            }
            let sleep_until = due.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                () = self.shared.cancel.cancelled() => return false,
                () = self.shared.wake.notified() => {}
                () = tokio::time::sleep_until(sleep_until) => {}
            }
        }
    }

    /// The oldest pending batch: from the spool, else from memory. `Err` when the spool
    /// cannot be read and memory holds nothing.
    async fn next_batch(&self, limit: usize) -> Result<Option<(Source, Vec<ReportIn>)>, ()> {
        let peeked = self.shared.on_spool(move |s| s.peek(limit)).await;
        let spool_failed = match peeked {
            Ok(Some(batch)) => return Ok(Some((Source::Spool(batch.through), batch.reports))),
            Ok(None) => false,
            Err(e) => {
                inc(&self.shared.stats.spool_errors);
                error!(error = %e, "Cannot read the spool; retrying later.");
                true
            }
        };
        match lock(&self.shared.memory).batch(limit) {
            Some(batch) => Ok(Some((Source::Memory(batch.through), batch.reports))),
            None if spool_failed => Err(()),
            None => Ok(None),
        }
    }

    /// Removes a sent (or rejected) batch; false when the spool could not.
    async fn remove(&self, source: Source) -> bool {
        match source {
            Source::Spool(through) => match self.shared.on_spool(move |s| s.ack(through)).await {
                Ok(_) => true,
                Err(e) => {
                    inc(&self.shared.stats.spool_errors);
                    error!(
                        error = %e,
                        "Cannot remove sent reports from the spool; they will be sent again \
                         (harmless downstream: event ids derive from the collection time)."
                    );
                    false
                }
            },
            Source::Memory(through) => {
                lock(&self.shared.memory).ack(through);
                true
            }
        }
    }

    /// Sends the oldest batch once and applies the outcome to the spool and counters.
    async fn send_one(&self) -> Step {
        let limit = self.batch_limit.load(Ordering::Relaxed);
        let (source, reports) = match self.next_batch(limit).await {
            Ok(Some(batch)) => batch,
            Ok(None) => {
                self.shared.refresh_gauges();
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
                add(&self.shared.stats.sent, n - refused);
                add(&self.shared.stats.refused, refused);
                inc(&self.shared.stats.batches_sent);
                debug!(reports = n, refused, "Batch sent.");
                if self.auth_failing.swap(false, Ordering::Relaxed) {
                    info!("Gateway accepts the agent's credential again.");
                }
                if self.remove(source).await {
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
                add(&self.shared.stats.rejected, n);
                inc(&self.shared.stats.rejected_batches);
                if self.remove(source).await {
                    Step::Progress
                } else {
                    Step::Retry(None)
                }
            }
            SendOutcome::Unauthorized { status, error } => {
                inc(&self.shared.stats.auth_failures);
                self.auth_failing.store(true, Ordering::Relaxed);
                let message = error.map(|e| e.error.message).unwrap_or_default();
                error!(
                    status,
                    %message,
                    reports = n,
                    spooled = self.shared.spool.len(),
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
                inc(&self.shared.stats.retries);
                warn!(reports = n, ?retry_after, %reason, "Gateway unavailable; will retry.");
                Step::Retry(retry_after)
            }
        };
        self.shared.refresh_gauges();
        step
    }

    /// Sends what is pending until nothing is, a retry is needed, or `deadline`; what is
    /// left stays in the spool.
    async fn final_flush(&self, deadline: Instant) {
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
        self.shared.refresh_gauges();
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

    /// Answers from a script, then `Sent` forever; records every batch and heartbeat.
    #[derive(Debug, Default)]
    struct Scripted {
        script: Mutex<VecDeque<SendOutcome>>,
        seen: Mutex<Vec<MetricBatch>>,
        heartbeats: Mutex<Vec<HeartbeatIn>>,
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

        async fn heartbeat(&self, _agent_id: &str, heartbeat: &HeartbeatIn) -> SendOutcome {
            lock(&self.heartbeats).push(heartbeat.clone());
            SendOutcome::Sent(IngestAccepted {
                accepted: 1,
                rejected: vec![],
            })
        }
    }

    fn fast_config(dir: &tempfile::TempDir) -> AgentConfig {
        AgentConfig {
            agent_id: Some("unit-test".into()),
            state_dir: Some(dir.path().to_owned()),
            collect_interval_secs: Some(0.05),
            heartbeat_interval_secs: Some(3600.0),
            batch_max_reports: 2,
            retry_initial_backoff_secs: 0.01,
            retry_max_backoff_secs: 0.05,
            shutdown_flush_timeout_secs: 2.0,
            ..AgentConfig::default()
        }
    }

    async fn wait_for(stats: &Stats, what: impl Fn(&StatsSnapshot) -> bool) {
        let reached = tokio::time::timeout(Duration::from_secs(20), async {
            while !what(&stats.snapshot()) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "condition not reached in time: {:?}",
            stats.snapshot()
        );
    }

    /// Runs an agent until `until` holds, then shuts it down and returns the final counters.
    async fn run_until(
        config: AgentConfig,
        transport: Arc<Scripted>,
        until: impl Fn(&StatsSnapshot) -> bool,
    ) -> StatsSnapshot {
        let agent = Agent::with_transport(config, transport).unwrap();
        let stats = agent.stats();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async {
            let _ = rx.await;
        }));
        wait_for(&stats, until).await;
        let _ = tx.send(());
        run.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn refused_items_and_rejected_batches_are_counted_not_retried() {
        let dir = tempfile::tempdir().unwrap();
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
            ..fast_config(&dir)
        };
        let s = run_until(config, transport, |s| s.batches_sent >= 2).await;
        assert_eq!(s.refused, 1);
        assert_eq!(s.rejected, 2);
        assert_eq!(s.rejected_batches, 1);
        assert_eq!(s.retries, 0);
        assert_eq!(
            s.collected,
            s.sent + s.refused + s.rejected + s.spooled + s.lost
        );
    }

    #[tokio::test]
    async fn too_large_halves_the_batch_instead_of_dropping_it() {
        let dir = tempfile::tempdir().unwrap();
        let transport = Arc::new(Scripted::default());
        lock(&transport.script).push_back(SendOutcome::Rejected {
            status: 413,
            error: None,
            body: "too large".into(),
        });
        let config = AgentConfig {
            batch_max_reports: 4,
            flush_interval_secs: Some(3600.0),
            ..fast_config(&dir)
        };
        let s = run_until(config, transport.clone(), |s| s.batches_sent >= 2).await;
        assert_eq!(s.rejected, 0);
        assert_eq!(s.sent, s.collected);
        let seen = lock(&transport.seen);
        assert_eq!(seen[0].reports.len(), 4);
        assert_eq!(seen[1].reports.len(), 2);
        assert_eq!(seen[1].reports[0], seen[0].reports[0]);
    }

    #[tokio::test]
    async fn retry_keeps_the_batch_and_shutdown_leaves_it_spooled() {
        let dir = tempfile::tempdir().unwrap();
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
            ..fast_config(&dir)
        };
        let s = run_until(config, transport.clone(), |s| {
            s.retries >= 3 && s.collected >= 3
        })
        .await;
        assert_eq!(s.sent, 0);
        assert_eq!(s.lost, 0);
        assert_eq!(s.spooled, s.collected, "everything stays spooled");
        // Every attempt carried the same head report.
        let seen = lock(&transport.seen);
        let first = seen[0].reports[0].collected_at;
        assert!(seen.iter().all(|b| b.reports[0].collected_at == first));
    }

    #[tokio::test]
    async fn unauthorized_keeps_the_batch_and_backs_off() {
        let dir = tempfile::tempdir().unwrap();
        let transport = Arc::new(Scripted::default());
        lock(&transport.script).push_back(SendOutcome::Unauthorized {
            status: 403,
            error: None,
        });
        let config = AgentConfig {
            auth_retry_secs: 0.05,
            ..fast_config(&dir)
        };
        let s = run_until(config, transport.clone(), |s| {
            s.auth_failures >= 1 && s.batches_sent >= 1
        })
        .await;
        assert_eq!((s.rejected, s.dropped_oldest, s.lost), (0, 0, 0));
        let seen = lock(&transport.seen);
        // The batch refused with 403 was sent again, unchanged, and accepted.
        assert_eq!(seen[1].reports[0], seen[0].reports[0]);
        assert_eq!(s.collected, s.sent + s.spooled);
    }

    #[tokio::test]
    async fn heartbeats_carry_an_increasing_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let transport = Arc::new(Scripted::default());
        let config = AgentConfig {
            heartbeat_interval_secs: Some(0.02),
            collect_interval_secs: Some(3600.0),
            ..fast_config(&dir)
        };
        let s = run_until(config, transport.clone(), |s| s.heartbeats_sent >= 3).await;
        assert_eq!(s.heartbeat_failures, 0);
        let beats = lock(&transport.heartbeats);
        let seqs: Vec<u64> = beats.iter().map(|h| h.sequence).collect();
        assert_eq!(seqs[..3], [1, 2, 3]);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert!(beats
            .iter()
            .all(|h| h.agent_version == env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn intervals_prefer_the_file_then_the_enrollment_then_defaults() {
        let remote = RemoteConfig {
            heartbeat_interval_secs: 15.0,
            metrics_interval_secs: 20.0,
            websocket_url: String::new(),
        };
        let defaults = AgentConfig::default();
        let i = intervals(&defaults, None);
        assert_eq!(
            (i.collect, i.heartbeat, i.flush),
            (
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(10)
            )
        );
        let i = intervals(&defaults, Some(&remote));
        assert_eq!(
            (i.collect, i.heartbeat, i.flush),
            (
                Duration::from_secs(20),
                Duration::from_secs(15),
                Duration::from_secs(20)
            )
        );
        let file = AgentConfig {
            collect_interval_secs: Some(5.0),
            heartbeat_interval_secs: Some(7.0),
            flush_interval_secs: Some(1.0),
            ..AgentConfig::default()
        };
        let i = intervals(&file, Some(&remote));
        assert_eq!(
            (i.collect, i.heartbeat, i.flush),
            (
                Duration::from_secs(5),
                Duration::from_secs(7),
                Duration::from_secs(1)
            )
        );
        let bad = RemoteConfig {
            heartbeat_interval_secs: f64::NAN,
            metrics_interval_secs: -1.0,
            websocket_url: String::new(),
        };
        let i = intervals(&defaults, Some(&bad));
        assert_eq!(
            (i.collect, i.heartbeat),
            (Duration::from_secs(10), Duration::from_secs(30))
        );
    }
}
