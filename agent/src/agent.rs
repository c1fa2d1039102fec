//! The run loop: collect every interval, spool, send in batches, retry with backoff, send
//! heartbeats, flush on shutdown.
//!
//! Core tasks:
//!
//! * the collector collects a report every interval (on the blocking pool) and appends it
//!   to the on-disk [`Spool`] (durable, `fsync`'ed) before anything else happens to it;
//!   it also turns watched-service status changes into events (see [`crate::events`]);
//! * the sender sends the oldest spooled reports as one batch once a batch is full or the
//!   oldest report has waited the flush interval, and deletes them from the spool only
//!   after a 2xx. A retry (503, network error) keeps them; so does a 401/403 (credential
//!   refused, agent deactivated: logged at error, retried after `auth-retry-secs`);
//! * the heartbeat task POSTs a [`HeartbeatIn`] every heartbeat interval. Heartbeats are
//!   not spooled: a missed heartbeat is itself information.
//!
//! Around them: the WebSocket session ([`crate::ws`], when `websocket = true`; every
//! request falls back to HTTP while it is down), the command executor and its poller
//! ([`crate::commands`]), the event sender ([`crate::events`]) and the inventory task
//! ([`crate::inventory`]). The collect and heartbeat intervals are live: a server
//! `config` message or an `update_config` command changes them in the running agent
//! (and persists them in `{state-dir}/intervals.json`).
//!
//! A slow or failing gateway therefore never delays collection; the spool bound limits
//! disk use instead. If the spool cannot be written (disk full, I/O error) reports are kept
//! in a bounded in-memory [`ReportQueue`] and still sent; only those are lost if the agent
//! stops before they are sent (counted in [`StatsSnapshot::lost`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use fleet_schemas::api::{
    CommandSpec, ConfigUpdate, HeartbeatIn, MetricBatch, RemoteConfig, ReportIn,
};
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::collect::Collector;
use crate::commands::{Executor, ExecutorParts};
use crate::config::{valid_secs, AgentConfig, ConfigError, DEFAULT_SERVER_URL};
use crate::enroll::{EnrollError, Enrollment};
use crate::events::{self, EventQueue, MAX_QUEUED_EVENTS};
use crate::queue::ReportQueue;
use crate::retry::Backoff;
use crate::spool::{Appended, Spool, SpoolError, SPOOL_FILE};
use crate::transport::{HttpTransport, SendOutcome, Transport, TransportError};
use crate::ws::{Pushed, WsLink, WsSession, WsSettings, WsTransport};

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
    pub(crate) ws_connects: AtomicU64,
    pub(crate) ws_disconnects: AtomicU64,
    pub(crate) http_fallbacks: AtomicU64,
    pub(crate) commands_received: AtomicU64,
    pub(crate) commands_run: AtomicU64,
    pub(crate) commands_refused: AtomicU64,
    pub(crate) commands_duplicate: AtomicU64,
    pub(crate) command_results_sent: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) events_dropped: AtomicU64,
    pub(crate) inventories_sent: AtomicU64,
    pub(crate) config_updates: AtomicU64,
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
    /// WebSocket connections established (the first and every reconnect).
    pub ws_connects: u64,
    /// WebSocket connections lost.
    pub ws_disconnects: u64,
    /// Requests sent over HTTP because the socket was down.
    pub http_fallbacks: u64,
    /// Commands received (pushed or polled), duplicates included.
    pub commands_received: u64,
    /// Commands started (processes run, or config updates applied).
    pub commands_run: u64,
    /// Commands refused (not allowed, bad arguments).
    pub commands_refused: u64,
    /// Commands received again after they ran (not run again).
    pub commands_duplicate: u64,
    /// Command results the gateway acknowledged.
    pub command_results_sent: u64,
    /// Events the gateway acknowledged.
    pub events_sent: u64,
    /// Events dropped (queue full, or rejected by the gateway).
    pub events_dropped: u64,
    /// Inventories the gateway acknowledged.
    pub inventories_sent: u64,
    /// Interval changes applied (server `config` messages and `update_config`).
    pub config_updates: u64,
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
            ws_connects: get(&self.ws_connects),
            ws_disconnects: get(&self.ws_disconnects),
            http_fallbacks: get(&self.http_fallbacks),
            commands_received: get(&self.commands_received),
            commands_run: get(&self.commands_run),
            commands_refused: get(&self.commands_refused),
            commands_duplicate: get(&self.commands_duplicate),
            command_results_sent: get(&self.command_results_sent),
            events_sent: get(&self.events_sent),
            events_dropped: get(&self.events_dropped),
            inventories_sent: get(&self.inventories_sent),
            config_updates: get(&self.config_updates),
        }
    }
}

pub(crate) fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The intervals the agent runs with, once the configuration and the enrollment's remote
/// config are merged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Intervals {
    collect: Duration,
    heartbeat: Duration,
    flush: Duration,
}

/// File of the intervals the server set (`config` message, `update_config`), in the
/// state directory.
pub const INTERVALS_FILE: &str = "intervals.json";

/// The running agent's intervals, changeable by the server.
#[derive(Debug)]
pub(crate) struct LiveIntervals {
    current: watch::Sender<Intervals>,
    /// The flush interval follows the collect interval (no `flush-interval-secs`).
    flush_follows: bool,
    path: PathBuf,
    stats: Arc<Stats>,
}

impl LiveIntervals {
    fn get(&self) -> Intervals {
        *self.current.borrow()
    }

    /// Applies `update` (each value checked), persists the server's overrides, and
    /// returns a summary; `Err` when a value is invalid (nothing applied then).
    pub(crate) async fn apply(&self, update: ConfigUpdate) -> Result<String, String> {
        let check = |key: &str, v: Option<f64>| -> Result<Option<Duration>, String> {
            v.map(|v| {
                valid_secs(v).ok_or_else(|| {
                    format!("`{key}` is {v}: expected seconds, more than 0 and at most 86400")
                })
            })
            .transpose()
        };
        let collect = check("metrics_interval_secs", update.metrics_interval_secs)?;
        let heartbeat = check("heartbeat_interval_secs", update.heartbeat_interval_secs)?;
        let mut next = self.get();
        if let Some(c) = collect {
            next.collect = c;
            if self.flush_follows {
                next.flush = c;
            }
        }
        if let Some(h) = heartbeat {
            next.heartbeat = h;
        }
        self.current.send_replace(next);
        inc(&self.stats.config_updates);
        info!(collect = ?next.collect, heartbeat = ?next.heartbeat, "Intervals changed by the server.");
        // Merge with what was persisted before, so a later update of one key keeps the
        // other.
        let path = self.path.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let mut stored = load_overrides(&path).unwrap_or_default();
            if update.metrics_interval_secs.is_some() {
                stored.metrics_interval_secs = update.metrics_interval_secs;
            }
            if update.heartbeat_interval_secs.is_some() {
                stored.heartbeat_interval_secs = update.heartbeat_interval_secs;
            }
            let json = serde_json::to_vec_pretty(&stored).map_err(std::io::Error::other)?;
            if let Some(dir) = path.parent() {
                crate::state::ensure_dir(dir)?;
            }
            crate::state::write_atomic(&path, &json, 0o600)
        })
        .await;
        let summary = format!(
            "collect interval {}s, heartbeat interval {}s",
            next.collect.as_secs_f64(),
            next.heartbeat.as_secs_f64()
        );
        match persisted {
            Ok(Ok(())) => Ok(summary),
            Ok(Err(e)) => {
                warn!(error = %e, "Cannot persist the new intervals; they apply until the agent stops.");
                Ok(format!("{summary} (not persisted: {e})"))
            }
            Err(e) => Ok(format!("{summary} (not persisted: {e})")),
        }
    }
}

/// The server's persisted interval overrides, if any.
fn load_overrides(path: &Path) -> Option<ConfigUpdate> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(u) => Some(u),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "Ignoring unreadable interval overrides.");
            None
        }
    }
}

/// `intervals` with the server's overrides applied (invalid values ignored).
fn with_overrides(
    mut intervals: Intervals,
    overrides: &ConfigUpdate,
    flush_follows: bool,
) -> Intervals {
    if let Some(c) = overrides.metrics_interval_secs.and_then(valid_secs) {
        intervals.collect = c;
        if flush_follows {
            intervals.flush = c;
        }
    }
    if let Some(h) = overrides.heartbeat_interval_secs.and_then(valid_secs) {
        intervals.heartbeat = h;
    }
    intervals
}

/// A configured agent, ready to [`run`](Agent::run).
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    agent_id: String,
    enrolled: bool,
    server_url: String,
    state_dir: PathBuf,
    intervals: Intervals,
    transport: Arc<dyn Transport>,
    ws: Option<WsParts>,
    spool: Arc<Spool>,
    stats: Arc<Stats>,
}

/// The WebSocket session of an agent, started by [`Agent::run`].
#[derive(Debug)]
struct WsParts {
    link: WsLink,
    session: WsSession,
    pushed: mpsc::Receiver<Pushed>,
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
        let credential = enrollment.as_ref().map(|e| e.credential.clone());
        let tls = crate::ClientTls::for_config(&config)?;
        let http = HttpTransport::new(&server_url, config.request_timeout(), &tls)?
            .with_credential(credential.as_deref())?;
        if !config.websocket {
            return Self::build(
                config,
                &state_dir,
                enrollment,
                server_url,
                Arc::new(http),
                None,
            );
        }
        // The enrollment's socket URL belongs to the server it enrolled with.
        let enrolled_ws = enrollment
            .as_ref()
            .filter(|e| e.server_url == server_url)
            .map(|e| e.config.websocket_url.clone());
        let agent_id = resolve_agent_id(&config, enrollment.as_ref());
        let settings = WsSettings {
            url: crate::ws::websocket_url(
                &server_url,
                config.ws_url.as_deref(),
                enrolled_ws.as_deref(),
            )?,
            agent_id,
            credential,
            tls,
            request_timeout: config.request_timeout(),
            ping_interval: config.websocket_ping_interval(),
            reconnect_initial: config.websocket_reconnect_initial(),
            reconnect_max: config.websocket_reconnect_max(),
            auth_retry: config.auth_retry(),
        };
        let stats = Arc::new(Stats::default());
        let (link, session, pushed) = crate::ws::channel(settings, Arc::clone(&stats));
        let transport = WsTransport::new(link.clone(), http, Arc::clone(&stats));
        let mut agent = Self::build(
            config,
            &state_dir,
            enrollment,
            server_url,
            Arc::new(transport),
            Some(WsParts {
                link,
                session,
                pushed,
            }),
        )?;
        agent.stats = stats;
        Ok(agent)
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
        Self::build(config, &state_dir, enrollment, server_url, transport, None)
    }

    fn build(
        config: AgentConfig,
        state_dir: &Path,
        enrollment: Option<Enrollment>,
        server_url: String,
        transport: Arc<dyn Transport>,
        ws: Option<WsParts>,
    ) -> Result<Self, AgentError> {
        let agent_id = resolve_agent_id(&config, enrollment.as_ref());
        let intervals = intervals(&config, enrollment.as_ref().map(|e| &e.config));
        let intervals = match load_overrides(&state_dir.join(INTERVALS_FILE)) {
            Some(o) => {
                info!(?o, "Using the intervals the server set before.");
                with_overrides(intervals, &o, config.flush_interval_secs.is_none())
            }
            None => intervals,
        };
        let spool = Spool::open(&state_dir.join(SPOOL_FILE), config.spool_max_bytes)?;
        Ok(Self {
            config,
            agent_id,
            enrolled: enrollment.is_some(),
            server_url,
            state_dir: state_dir.to_owned(),
            intervals,
            transport,
            ws,
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
            state_dir,
            intervals,
            transport,
            ws,
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
            websocket = ws.as_ref().map_or("off", |w| w.session.url()),
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

        let live = Arc::new(LiveIntervals {
            current: watch::Sender::new(intervals),
            flush_follows: config.flush_interval_secs.is_none(),
            path: state_dir.join(INTERVALS_FILE),
            stats: Arc::clone(&stats),
        });
        let events = Arc::new(EventQueue::new(MAX_QUEUED_EVENTS, Arc::clone(&stats)));
        events.push(events::agent_started(&agent_id));
        let shared = Arc::new(Shared {
            spool,
            stats: Arc::clone(&stats),
            intervals: Arc::clone(&live),
            events: Arc::clone(&events),
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
        tasks.spawn(collect_loop(Arc::clone(&shared), collector));
        tasks.spawn(heartbeat_loop(HeartbeatLoop {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            shared: Arc::clone(&shared),
            auth_retry: config.auth_retry(),
            backoff: Backoff::new(config.retry_initial_backoff(), config.retry_max_backoff()),
        }));
        let backoff = || Backoff::new(config.retry_initial_backoff(), config.retry_max_backoff());
        tasks.spawn(events::event_loop(
            Arc::clone(&events),
            Arc::clone(&transport),
            agent_id.clone(),
            backoff(),
            config.auth_retry(),
            shared.cancel.clone(),
        ));
        if config.inventory {
            tasks.spawn(crate::inventory::inventory_loop(
                Arc::clone(&transport),
                agent_id.clone(),
                config.inventory_interval(),
                backoff(),
                config.auth_retry(),
                Arc::clone(&stats),
                shared.cancel.clone(),
            ));
        }
        let executor_parts = ExecutorParts {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            config: config.clone(),
            state_dir: state_dir.clone(),
            intervals: Arc::clone(&live),
            stats: Arc::clone(&stats),
            cancel: shared.cancel.clone(),
        };
        let executor = Arc::new(
            tokio::task::spawn_blocking(move || Executor::new(executor_parts))
                .await
                .context("starting the command executor failed")?,
        );
        let (command_tx, command_rx) = mpsc::channel::<CommandSpec>(256);
        tasks.spawn(Arc::clone(&executor).run(command_rx));
        let session_cancel = CancellationToken::new();
        let mut session_tasks = JoinSet::new();
        let link = match ws {
            Some(WsParts {
                link,
                session,
                pushed,
            }) => {
                // The socket outlives the other tasks so the final flush can use it.
                session_tasks.spawn(session.run(session_cancel.clone()));
                tasks.spawn(route_pushed(
                    pushed,
                    command_tx.clone(),
                    Arc::clone(&live),
                    shared.cancel.clone(),
                ));
                Some(link)
            }
            None => None,
        };
        tasks.spawn(poll_commands(PollCommands {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            link,
            commands: command_tx,
            interval: config.command_poll_interval(),
            auth_retry: config.auth_retry(),
            cancel: shared.cancel.clone(),
        }));

        let sender = Sender {
            transport,
            agent_id: agent_id.clone(),
            shared: Arc::clone(&shared),
            batch_limit: AtomicUsize::new(config.batch_max_reports),
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
        session_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), session_tasks.join_next()).await;
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

/// The id this agent reports as: the enrolled one (the credential belongs to it), else
/// the configured or derived one.
fn resolve_agent_id(config: &AgentConfig, enrollment: Option<&Enrollment>) -> String {
    match enrollment {
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
    }
}

/// Hands pushed commands to the executor and applies pushed intervals, until cancelled.
async fn route_pushed(
    mut pushed: mpsc::Receiver<Pushed>,
    commands: mpsc::Sender<CommandSpec>,
    live: Arc<LiveIntervals>,
    cancel: CancellationToken,
) {
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            p = pushed.recv() => p,
        };
        match next {
            None => return,
            Some(Pushed::Command(spec)) => {
                debug!(command_id = %spec.command_id, "Command pushed by the gateway.");
                if commands.send(spec).await.is_err() {
                    return;
                }
            }
            Some(Pushed::Config(update)) => {
                if let Err(e) = live.apply(update).await {
                    warn!(error = %e, "Ignoring an invalid config message from the gateway.");
                }
            }
        }
    }
}

struct PollCommands {
    transport: Arc<dyn Transport>,
    agent_id: String,
    /// The socket, when there is one: no polling while it is up.
    link: Option<WsLink>,
    commands: mpsc::Sender<CommandSpec>,
    interval: Duration,
    auth_retry: Duration,
    cancel: CancellationToken,
}

/// Polls `GET .../commands` every interval while the socket is down (always without
/// one); sleeps on the socket's state while it is up.
async fn poll_commands(p: PollCommands) {
    let mut connected = p.link.as_ref().map(WsLink::subscribe);
    let mut failing = false;
    loop {
        // While the socket is up, wait for it to go down.
        if let Some(rx) = connected.as_mut() {
            loop {
                if !*rx.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    biased;
                    () = p.cancel.cancelled() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        }
        // A socket that is just connecting gets a moment before the first poll.
        let delay = match p.transport.pending_commands(&p.agent_id).await {
            Ok(list) => {
                if failing {
                    info!("Command polling works again.");
                    failing = false;
                }
                for spec in list {
                    if p.commands.send(spec).await.is_err() {
                        return;
                    }
                }
                p.interval
            }
            Err(outcome) => {
                if !failing {
                    warn!(?outcome, "Polling for commands failed; will retry.");
                    failing = true;
                }
                match outcome {
                    SendOutcome::Unauthorized { .. } => p.interval.max(p.auth_retry),
                    _ => p.interval,
                }
            }
        };
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = p.cancel.cancelled() => return,
                () = &mut sleep => break,
                // The socket came up: stop polling at once.
                changed = async {
                    match connected.as_mut() {
                        Some(rx) => rx.changed().await.is_ok() && *rx.borrow_and_update(),
                        None => std::future::pending().await,
                    }
                } => if changed { break },
            }
        }
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
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
    /// The live intervals.
    intervals: Arc<LiveIntervals>,
    /// Events waiting to be sent.
    events: Arc<EventQueue>,
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

async fn collect_loop(shared: Arc<Shared>, collector: Collector) {
    let collector = Arc::new(Mutex::new(collector));
    let mut changes = shared.intervals.current.subscribe();
    let mut interval = changes.borrow_and_update().collect;
    let ticker_for = |interval: Duration| {
        // The first report comes one interval after start, so its CPU figure and I/O
        // deltas cover a full interval like every later one.
        let mut t = tokio::time::interval_at(Instant::now() + interval, interval);
        t.set_missed_tick_behavior(MissedTickBehavior::Delay);
        t
    };
    let mut ticker = ticker_for(interval);
    let mut spool_failing = false;
    let mut services: BTreeMap<String, String> = BTreeMap::new();
    loop {
        tokio::select! {
            biased;
            () = shared.cancel.cancelled() => return,
            changed = changes.changed() => {
                if changed.is_err() { return }
                let next = changes.borrow_and_update().collect;
                if next != interval {
                    info!(interval = ?next, "Collect interval changed.");
                    interval = next;
                    ticker = ticker_for(interval);
                }
                continue;
            }
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
        for event in events::service_transitions(&mut services, &report.services) {
            info!(kind = %event.kind, message = %event.message, "Service status changed.");
            shared.events.push(event);
        }
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
    auth_retry: Duration,
    backoff: Backoff,
}

/// Sends a heartbeat now and then every interval, until cancelled. A failure is logged
/// (warn for the first of a run of failures, debug after) and the next heartbeat waits at
/// least the interval, longer with backoff (or `auth-retry-secs` after 401/403).
async fn heartbeat_loop(mut h: HeartbeatLoop) {
    let mut sequence = 0u64;
    let mut failing = false;
    let mut changes = h.shared.intervals.current.subscribe();
    loop {
        let interval = changes.borrow_and_update().heartbeat;
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
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = h.shared.cancel.cancelled() => return,
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
            let due = self.shared.due_at(limit, self.shared.intervals.get().flush);
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

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use fleet_schemas::api::{IngestAccepted, ItemError};

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
