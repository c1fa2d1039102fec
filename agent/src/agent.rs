//! The orchestrator: builds the agent's parts from its configuration and runs them as
//! tasks until shutdown, then flushes. It holds no logic of its own beyond the wiring and
//! the collect loop:
//!
//! * the collect loop collects a report every interval (on the blocking pool) and pushes
//!   it to the [`Outbox`] (the durable spool, or memory when the spool fails) before
//!   anything else happens to it; it also turns watched-service status changes into
//!   events (see [`crate::events`]) and puts the last security posture in every report
//!   (collected by its own task, see [`crate::security`]) and the custom metrics
//!   (textfiles read with the report, scripts run by their own tasks, see
//!   [`crate::custom`]);
//! * the [`Sender`] sends the outbox's reports in batches (see [`crate::sender`]);
//! * the heartbeat task (see [`crate::heartbeat`]).
//!
//! Around them: the WebSocket session ([`crate::ws`], when `websocket = true`; every
//! request falls back to HTTP while it is down), the command executor and its poller
//! ([`crate::commands`]), the event sender ([`crate::events`]) and the inventory task
//! ([`crate::inventory`]). The collect and heartbeat intervals are live
//! ([`LiveIntervals`]).
//!
//! A slow or failing gateway therefore never delays collection; the spool bound limits
//! disk use instead.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fleet_schemas::api::CommandSpec;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::collect::Collector;
use crate::commands::{Executor, ExecutorParts};
use crate::config::{AgentConfig, ConfigError, DEFAULT_SERVER_URL};
use crate::custom::CustomMetrics;
use crate::enroll::{EnrollError, Enrollment};
use crate::events::{self, EventQueue, MAX_QUEUED_EVENTS};
use crate::heartbeat::{heartbeat_loop, HeartbeatLoop};
use crate::intervals::{Intervals, LiveIntervals};
use crate::outbox::Outbox;
use crate::retry::Backoff;
use crate::security::{SecurityState, Sources};
use crate::sender::Sender;
use crate::spool::{Spool, SpoolError, SPOOL_FILE};
use crate::stats::{inc, Stats, StatsSnapshot};
use crate::sync::lock;
use crate::transport::{HttpTransport, SendOutcome, Transport, TransportError};
use crate::ws::{Pushed, WsLink, WsSession, WsSettings, WsTransport};

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
        let intervals =
            Intervals::resolve(&config, enrollment.as_ref().map(|e| &e.config), state_dir);
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
    /// send what is spooled for at most `shutdown-flush-timeout`; what is left stays
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

        let live = Arc::new(LiveIntervals::new(
            intervals,
            crate::intervals::Settings::local(&config),
            &state_dir,
            Arc::clone(&stats),
        ));
        let remote = live.settings();
        let services = remote.services.clone();
        let collector = tokio::task::spawn_blocking(move || Collector::new(services))
            .await
            .context("starting the collector failed")?;

        let events = Arc::new(EventQueue::new(MAX_QUEUED_EVENTS, Arc::clone(&stats)));
        let boot_time = sysinfo::System::boot_time();
        let previous_run = events::RunState::load(&state_dir);
        for e in events::start_events(&agent_id, previous_run.as_ref(), boot_time) {
            events.push(e);
        }
        events::RunState {
            running: true,
            boot_time,
        }
        .store(&state_dir);
        let outbox = Arc::new(Outbox::new(
            spool,
            Arc::clone(&stats),
            config.batch_max_reports,
        ));
        outbox.refresh_gauges();
        // Cancelled at shutdown: every task but the socket's stops.
        let cancel = CancellationToken::new();

        // Dropping the set (the run future dropped, e.g. aborted) aborts the tasks.
        let mut tasks = JoinSet::new();
        let security = Arc::new(SecurityState::default());
        if config.security {
            tasks.spawn(crate::security::security_loop(
                Arc::clone(&security),
                Sources::at(
                    &config.security_reboot_required_file,
                    &config.security_sshd_config,
                    &config.security_clamav_database,
                ),
                config.security_interval,
                cancel.clone(),
            ));
        }
        crate::custom::log_sources(remote.textfile_dir.as_deref(), &config.custom_scripts);
        let custom = Arc::new(CustomMetrics::new(
            remote.textfile_dir.clone(),
            config.custom_max_series,
            Arc::clone(&stats),
        ));
        for script in &config.custom_scripts {
            tasks.spawn(crate::custom::script_loop(
                Arc::clone(&custom),
                script.clone(),
                cancel.clone(),
            ));
        }
        tasks.spawn(collect_loop(CollectLoop {
            collector,
            security,
            custom,
            outbox: Arc::clone(&outbox),
            intervals: Arc::clone(&live),
            events: Arc::clone(&events),
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
        }));
        tasks.spawn(heartbeat_loop(HeartbeatLoop {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            intervals: Arc::clone(&live),
            stats: Arc::clone(&stats),
            auth_retry: config.auth_retry(),
            backoff: Backoff::new(config.retry_initial_backoff(), config.retry_max_backoff()),
            cancel: cancel.clone(),
        }));
        let backoff = || Backoff::new(config.retry_initial_backoff(), config.retry_max_backoff());
        tasks.spawn(events::event_loop(
            Arc::clone(&events),
            Arc::clone(&transport),
            agent_id.clone(),
            backoff(),
            config.auth_retry(),
            cancel.clone(),
        ));
        if config.inventory {
            tasks.spawn(crate::inventory::inventory_loop(
                Arc::clone(&transport),
                agent_id.clone(),
                config.inventory_interval(),
                backoff(),
                config.auth_retry(),
                Arc::clone(&stats),
                cancel.clone(),
            ));
        }
        let executor_parts = ExecutorParts {
            transport: Arc::clone(&transport),
            agent_id: agent_id.clone(),
            config: config.clone(),
            state_dir: state_dir.clone(),
            intervals: Arc::clone(&live),
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
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
                    cancel.clone(),
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
            cancel: cancel.clone(),
        }));

        let events_transport = Arc::clone(&transport);
        let sender = Sender {
            transport,
            agent_id: agent_id.clone(),
            outbox: Arc::clone(&outbox),
            intervals: Arc::clone(&live),
            stats: Arc::clone(&stats),
            cancel: cancel.clone(),
            backoff: (config.retry_initial_backoff(), config.retry_max_backoff()),
            auth_retry: config.auth_retry(),
            batch_limit: AtomicUsize::new(config.batch_max_reports),
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
            events.push(events::agent_stopped(&agent_id));
            cancel.cancel();
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
        events::final_flush(&events, &*events_transport, &agent_id, deadline).await;
        sender.final_flush(deadline).await;
        session_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), session_tasks.join_next()).await;
        outbox.persist_memory().await;
        outbox.refresh_gauges();
        events::RunState {
            running: false,
            boot_time,
        }
        .store(&state_dir);

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

/// What the collect loop needs.
struct CollectLoop {
    collector: Collector,
    /// The last security posture, put in every report.
    security: Arc<SecurityState>,
    /// Custom metrics (textfiles read at each collection, scripts' last values).
    custom: Arc<CustomMetrics>,
    outbox: Arc<Outbox>,
    intervals: Arc<LiveIntervals>,
    events: Arc<EventQueue>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
}

/// Collects a report every collect interval (following changes) and pushes it to the
/// outbox, until cancelled.
async fn collect_loop(c: CollectLoop) {
    let collector = Arc::new(Mutex::new(c.collector));
    let mut changes = c.intervals.subscribe();
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
            () = c.cancel.cancelled() => return,
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
        // The remote configuration may have changed what to watch and read.
        let remote = c.intervals.settings();
        c.custom.set_textfile_directory(remote.textfile_dir);
        let job_collector = Arc::clone(&collector);
        let job_custom = Arc::clone(&c.custom);
        let job = tokio::task::spawn_blocking(move || {
            let mut collector = lock(&job_collector);
            collector.set_services(remote.services);
            let mut report = collector.collect();
            report.custom = job_custom.collect();
            report
        });
        let result = tokio::select! {
            biased;
            () = c.cancel.cancelled() => return,
            r = job => r,
        };
        let mut report = match result {
            Ok(report) => report,
            Err(e) => {
                inc(&c.stats.collect_failures);
                error!(error = %e, "Collection failed.");
                continue;
            }
        };
        inc(&c.stats.collected);
        report.security = c.security.current();
        for event in events::service_transitions(&mut services, &report.services) {
            info!(kind = %event.kind, message = %event.message, "Service status changed.");
            c.events.push(event);
        }
        // Not cancellable: once collected, a report is spooled (an fsync at most).
        c.outbox.push(report, &mut spool_failing).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use fleet_schemas::api::{HeartbeatIn, IngestAccepted, ItemError, MetricBatch};
    use std::collections::VecDeque;

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
                    config: None,
                    rejected: vec![],
                }))
        }

        async fn heartbeat(&self, _agent_id: &str, heartbeat: &HeartbeatIn) -> SendOutcome {
            lock(&self.heartbeats).push(heartbeat.clone());
            SendOutcome::Sent(IngestAccepted {
                accepted: 1,
                config: None,
                rejected: vec![],
            })
        }
    }

    fn fast_config(dir: &tempfile::TempDir) -> AgentConfig {
        AgentConfig {
            agent_id: Some("unit-test".into()),
            state_dir: Some(dir.path().to_owned()),
            collect_interval: Some(Duration::from_secs_f64(0.05)),
            heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
            batch_max_reports: 2,
            retry_initial_backoff: Duration::from_secs_f64(0.01),
            retry_max_backoff: Duration::from_secs_f64(0.05),
            shutdown_flush_timeout: Duration::from_secs_f64(2.0),
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
                config: None,
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
            flush_interval: Some(Duration::from_secs_f64(3600.0)),
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
            flush_interval: Some(Duration::from_secs_f64(3600.0)),
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
            shutdown_flush_timeout: Duration::from_secs_f64(0.5),
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
            auth_retry: Duration::from_secs_f64(0.05),
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
            heartbeat_interval: Some(Duration::from_secs_f64(0.02)),
            collect_interval: Some(Duration::from_secs_f64(3600.0)),
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
}
