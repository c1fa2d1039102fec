//! Remote commands: delivery to agents and their progress and results.
//!
//! The dispatcher follows `fleet.commands.v1` with its own throw-away consumer group. At
//! start it seeks back `command-lookback` by time and replays that window, so its
//! only state, the [`CommandBook`] of pending commands, is rebuilt from the log. A command
//! is pending once REQUESTED without `requires_approval`, or APPROVED; COMPLETED or
//! TIMED_OUT ends it, and so do REJECTED and CANCELLED of a command not dispatched yet:
//! such a command is never pushed nor answered to a poll, also after a restart (the replay
//! reads the REJECTED or CANCELLED after its REQUESTED, in the agent's partition order). A
//! REJECTED or CANCELLED read after the command was dispatched (the API judged it
//! undelivered from the read model, which was behind) changes nothing: it was delivered,
//! and its result is accepted as any other. When a command becomes pending and its agent's socket is on this
//! instance, the command is pushed to it and a DISPATCHED event written; a new socket
//! gets all of its agent's pending commands; an agent without a socket polls
//! `GET /api/v1/agents/{agent_id}/commands`.
//!
//! Only the first REQUESTED of a command id counts: a later one with the same id never
//! changes the type, arguments or approval of what the agent runs. Progress and results
//! are accepted only for a command this book gave to the same agent (pending, or finished
//! and owned by it: a result resent after a lost acknowledgement); anything else is 404,
//! whether the command is another agent's or does not exist.
//!
//! Delivery is at least once: a command can reach an agent twice (a reconnect, a poll
//! after a push), so agents run each command id once.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_consumer::backoff::retry_until;
use fleet_consumer::deadletter::DeadLetters;
use fleet_consumer::runtime::{ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{ConsumedRecord, StartFrom};
use fleet_schemas::api::{
    CommandList, CommandProgressIn, CommandResultIn, CommandSpec, IngestAccepted, ServerMessage,
};
use fleet_schemas::{ids, topics, CommandEvent, CommandEventKind};
use fleet_service::ApiError;
use parking_lot::Mutex;

use crate::{
    admit, admit_then_body, hub, metrics, produce_all, validate, AgentIdentity, ClientAddr,
    GatewayState,
};

/// What the gateway knows of one unfinished command.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// Agent that runs it.
    pub agent_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Command type.
    pub command_type: String,
    /// Arguments.
    pub args: BTreeMap<String, String>,
    /// Timeout on the agent, seconds.
    pub timeout_secs: i64,
    /// Whether it waits for an approval.
    pub requires_approval: bool,
    /// Whether it was approved.
    pub approved: bool,
    /// Whether a gateway handed it to the agent.
    pub dispatched: bool,
    /// When it was requested (µs).
    pub requested_at: i64,
}

impl Tracked {
    /// Whether the agent should run it now.
    pub fn is_pending(&self) -> bool {
        !self.requires_approval || self.approved
    }

    fn spec(&self, command_id: &str) -> CommandSpec {
        CommandSpec {
            command_id: command_id.to_owned(),
            command_type: self.command_type.clone(),
            args: self.args.clone(),
            timeout_secs: u64::try_from(self.timeout_secs).unwrap_or(0),
            requested_at: fleet_schemas::time::from_micros(self.requested_at),
        }
    }
}

/// The pending commands, built only from `fleet.commands.v1` events (pure: no I/O).
#[derive(Debug, Default)]
pub struct CommandBook {
    open: HashMap<String, Tracked>,
    /// Per agent, pending commands by (requested at, command id): oldest first.
    pending: HashMap<String, BTreeSet<(i64, String)>>,
    /// Finished commands: agent and when, so a replayed REQUESTED does not revive one.
    finished: HashMap<String, (String, i64)>,
}

impl CommandBook {
    /// Applies one event; true if it made the command pending.
    pub fn apply(&mut self, ev: &CommandEvent) -> bool {
        if self.finished.contains_key(&ev.command_id) {
            return false;
        }
        match ev.kind {
            // Only the first REQUESTED of an id counts: a second one (a reused idempotency
            // key with another body) must change neither what runs nor whether it waits
            // for an approval.
            CommandEventKind::Requested if self.open.contains_key(&ev.command_id) => false,
            CommandEventKind::Requested | CommandEventKind::Approved => {
                let was_pending = self
                    .open
                    .get(&ev.command_id)
                    .is_some_and(Tracked::is_pending);
                let approved = ev.kind == CommandEventKind::Approved;
                let t = self
                    .open
                    .entry(ev.command_id.clone())
                    .or_insert_with(|| Tracked {
                        agent_id: ev.agent_id.clone(),
                        tenant_id: ev.tenant_id.clone(),
                        command_type: ev.command_type.clone(),
                        args: ev
                            .args
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                        timeout_secs: ev.timeout_secs,
                        requires_approval: ev.requires_approval,
                        approved: false,
                        dispatched: false,
                        requested_at: ev.occurred_at,
                    });
                t.approved |= approved;
                let now_pending = t.is_pending();
                let key = (t.requested_at, ev.command_id.clone());
                let agent = t.agent_id.clone();
                if now_pending && !was_pending {
                    self.pending.entry(agent).or_default().insert(key);
                    return true;
                }
                false
            }
            CommandEventKind::Dispatched => {
                if let Some(t) = self.open.get_mut(&ev.command_id) {
                    t.dispatched = true;
                }
                false
            }
            CommandEventKind::Progress => false,
            CommandEventKind::Rejected | CommandEventKind::Cancelled
                if self.open.get(&ev.command_id).is_some_and(|t| t.dispatched) =>
            {
                false
            }
            CommandEventKind::Completed
            | CommandEventKind::TimedOut
            | CommandEventKind::Rejected
            | CommandEventKind::Cancelled => {
                self.remove(&ev.command_id);
                self.finished
                    .insert(ev.command_id.clone(), (ev.agent_id.clone(), ev.occurred_at));
                false
            }
        }
    }

    fn remove(&mut self, command_id: &str) -> Option<Tracked> {
        let t = self.open.remove(command_id)?;
        if let Some(set) = self.pending.get_mut(&t.agent_id) {
            set.remove(&(t.requested_at, command_id.to_owned()));
            if set.is_empty() {
                self.pending.remove(&t.agent_id);
            }
        }
        Some(t)
    }

    /// An unfinished command.
    pub fn get(&self, command_id: &str) -> Option<&Tracked> {
        self.open.get(command_id)
    }

    /// The agent a command (unfinished or finished) belongs to, if known.
    pub fn owner(&self, command_id: &str) -> Option<&str> {
        self.open
            .get(command_id)
            .map(|t| t.agent_id.as_str())
            .or_else(|| self.finished.get(command_id).map(|(a, _)| a.as_str()))
    }

    /// The agent's pending commands, oldest first, with whether each was dispatched.
    pub fn pending_for(&self, agent_id: &str) -> Vec<(CommandSpec, bool)> {
        let Some(set) = self.pending.get(agent_id) else {
            return Vec::new();
        };
        set.iter()
            .filter_map(|(_, id)| self.open.get(id).map(|t| (t.spec(id), t.dispatched)))
            .collect()
    }

    /// Marks a command dispatched; returns its DISPATCHED event if it was not yet.
    pub fn mark_dispatched(
        &mut self,
        command_id: &str,
        actor: &str,
        now_micros: i64,
    ) -> Option<CommandEvent> {
        let t = self.open.get_mut(command_id)?;
        if t.dispatched {
            return None;
        }
        t.dispatched = true;
        let mut ev = event_from(
            command_id,
            Some(&*t),
            CommandEventKind::Dispatched,
            now_micros,
        );
        ev.event_id = ids::v5(&[command_id, "DISPATCHED", "0"]).to_string();
        ev.actor = Some(actor.to_owned());
        Some(ev)
    }

    /// Forgets commands requested (and finished) before `cutoff_micros`: the same
    /// commands a restart replaying the lookback window would not see.
    pub fn expire(&mut self, cutoff_micros: i64) {
        let old: Vec<String> = self
            .open
            .iter()
            .filter(|(_, t)| t.requested_at < cutoff_micros)
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.remove(&id);
        }
        self.finished.retain(|_, (_, at)| *at >= cutoff_micros);
    }

    /// Number of unfinished commands.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no command is unfinished.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

/// A command event with the command's details filled from what is known.
fn event_from(
    command_id: &str,
    known: Option<&Tracked>,
    kind: CommandEventKind,
    now_micros: i64,
) -> CommandEvent {
    CommandEvent {
        event_id: String::new(),
        command_type: known.map(|t| t.command_type.clone()).unwrap_or_default(),
        args: known
            .map(|t| t.args.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        requires_approval: known.is_some_and(|t| t.requires_approval),
        timeout_secs: known.map_or(0, |t| t.timeout_secs),
        ..CommandEvent::step(
            kind,
            command_id,
            known.map_or("", |t| t.tenant_id.as_str()),
            known.map_or("", |t| t.agent_id.as_str()),
            now_micros,
        )
    }
}

/// The dispatcher's shared state: the book, and whether the replay at start is done.
#[derive(Debug, Default)]
pub struct Commands {
    book: Mutex<CommandBook>,
    live: AtomicBool,
}

impl Commands {
    /// Whether the window replay is done (before that, nothing is pushed or polled).
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// A snapshot of the agent's pending commands, oldest first.
    pub fn pending_for(&self, agent_id: &str) -> Vec<CommandSpec> {
        self.book
            .lock()
            .pending_for(agent_id)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }
}

/// Registers a new socket of `agent_id` and queues its pending commands on it (atomically
/// with the dispatcher, so a command that becomes pending meanwhile is queued once).
pub(crate) async fn connect(state: &GatewayState, agent_id: &str) -> hub::Connection {
    let now = fleet_schemas::time::now_micros();
    let (conn, events) = {
        let mut book = state.commands.book.lock();
        let conn = state.hub.connect(agent_id);
        let mut events = Vec::new();
        if state.commands.is_live() {
            events = push_pending(state, &mut book, agent_id, now);
        }
        (conn, events)
    };
    write_dispatched(state, events).await;
    conn
}

/// Pushes every pending command of the agent to its socket; returns the DISPATCHED events
/// to write.
fn push_pending(
    state: &GatewayState,
    book: &mut CommandBook,
    agent_id: &str,
    now: i64,
) -> Vec<CommandEvent> {
    let mut events = Vec::new();
    let mut pushed = 0;
    for (spec, _) in book.pending_for(agent_id) {
        let id = spec.command_id.clone();
        if !state
            .hub
            .push(agent_id, ServerMessage::Command { command: spec })
        {
            break;
        }
        pushed += 1;
        events.extend(book.mark_dispatched(&id, &state.instance, now));
    }
    metrics::commands_dispatched("ws", pushed);
    events
}

/// Writes DISPATCHED events (the audit trail; the commands are already on their way).
async fn write_dispatched(state: &GatewayState, events: Vec<CommandEvent>) {
    if events.is_empty() {
        return;
    }
    if let Err(e) = produce_all(state, &events).await {
        tracing::warn!(error = %e, count = events.len(), "DISPATCHED events not written.");
    }
}

/// Follows `fleet.commands.v1` (replaying the lookback window first) and delivers commands
/// that become pending to the sockets on this instance. Each instance reads with its own
/// throw-away group.
pub async fn run_dispatcher(
    state: GatewayState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let lookback = state.config.command_lookback;
    let start = || {
        let (log, wire) = (state.log.clone(), state.wire.clone());
        async move {
            let from_ms = fleet_schemas::time::now_micros() / 1000
                - i64::try_from(lookback.as_millis()).unwrap_or(i64::MAX / 2);
            let starts = log.offsets_for_time(topics::COMMANDS, from_ms).await?;
            let ends = log.end_offsets(topics::COMMANDS).await?;
            let settings = Settings::throwaway("gateway-commands", &[topics::COMMANDS])
                .start(StartFrom::Latest)
                .batch_size(500)
                .poll_timeout(Duration::from_secs(1));
            // Every instance reads the window again at start: the dead letters it (or a
            // previous run) wrote are not written twice.
            let dead =
                DeadLetters::open(log.clone(), wire, "gateway-commands", settings.group_name())
                    .await?;
            let mut runtime = ConsumerRuntime::subscribe(log, settings, dead.clone()).await?;
            for (p, offset) in (0u32..).zip(&starts) {
                runtime.seek(topics::COMMANDS, p, *offset).await?;
            }
            tracing::info!(
                ?starts,
                ?ends,
                lookback_secs = lookback.as_secs(),
                "Replaying recent commands."
            );
            let remaining: HashMap<u32, i64> = (0u32..)
                .zip(starts.iter().zip(&ends))
                .filter(|(_, (s, e))| s < e)
                .map(|(p, (_, e))| (p, *e))
                .collect();
            anyhow::Ok((runtime, remaining, dead))
        }
    };
    let Some((runtime, behind, dead)) =
        retry_until("starting the command dispatcher", &mut shutdown, start).await
    else {
        return Ok(());
    };
    if behind.is_empty() {
        go_live(&state).await;
    }
    let mut dispatcher = Dispatcher {
        state,
        dead,
        behind,
        idle_polls: 0,
        lookback,
        last_expiry: Instant::now(),
    };
    runtime.run(&mut dispatcher, shutdown).await;
    Ok(())
}

/// The dispatcher on the consumer runtime.
struct Dispatcher {
    state: GatewayState,
    dead: DeadLetters,
    /// Partitions still to replay up to their end offset at start.
    behind: HashMap<u32, i64>,
    /// Polls in a row without records during the replay.
    idle_polls: u32,
    lookback: Duration,
    last_expiry: Instant,
}

impl Processor for Dispatcher {
    async fn handle(&mut self, records: &[ConsumedRecord]) -> Output {
        let state = &self.state;
        let live = state.commands.is_live();
        let now = fleet_schemas::time::now_micros();
        let mut to_write = Vec::new();
        {
            let mut book = state.commands.book.lock();
            let mut pushed = 0;
            for r in records {
                if let Some(end) = self.behind.get(&r.partition) {
                    if r.offset + 1 >= *end {
                        self.behind.remove(&r.partition);
                    }
                }
                let Some(ev) = self.dead.decode_or_note::<CommandEvent>(r) else {
                    continue;
                };
                let became_pending = book.apply(&ev);
                if became_pending && live {
                    let Some(spec) = book.get(&ev.command_id).map(|t| t.spec(&ev.command_id))
                    else {
                        continue;
                    };
                    if state
                        .hub
                        .push(&ev.agent_id, ServerMessage::Command { command: spec })
                    {
                        pushed += 1;
                        to_write.extend(book.mark_dispatched(&ev.command_id, &state.instance, now));
                        tracing::info!(command_id = %ev.command_id, agent_id = %ev.agent_id, "Command pushed to the agent.");
                    }
                }
            }
            metrics::commands_dispatched("ws", pushed);
        }
        self.dead.flush().await;
        write_dispatched(state, to_write).await;
        // A throw-away group: nothing is committed.
        Output::new()
    }

    /// After every poll: go live once the window is replayed; expire old commands.
    async fn on_tick(&mut self, handled: usize) -> Output {
        if !self.state.commands.is_live() {
            self.idle_polls = if handled == 0 { self.idle_polls + 1 } else { 0 };
            // Offsets can have gaps (Kafka transactions): give up waiting for the exact
            // end after a while of nothing.
            if self.behind.is_empty() || self.idle_polls >= 20 {
                go_live(&self.state).await;
            }
        }
        if self.last_expiry.elapsed() >= Duration::from_secs(60) {
            self.last_expiry = Instant::now();
            let cutoff = fleet_schemas::time::now_micros()
                - i64::try_from(self.lookback.as_micros()).unwrap_or(i64::MAX / 2);
            self.state.commands.book.lock().expire(cutoff);
        }
        Output::new()
    }
}

/// The replay is done: from now on commands are pushed; the sockets that connected during
/// the replay get their pending commands now.
async fn go_live(state: &GatewayState) {
    let now = fleet_schemas::time::now_micros();
    let events = {
        let mut book = state.commands.book.lock();
        state.commands.live.store(true, Ordering::Release);
        let mut events = Vec::new();
        for agent in state.hub.agents() {
            events.extend(push_pending(state, &mut book, &agent, now));
        }
        tracing::info!(open = book.len(), "Command state rebuilt; dispatching.");
        events
    };
    write_dispatched(state, events).await;
}

/// `GET /api/v1/agents/{agent_id}/commands`: the agent's pending commands, oldest first;
/// they are marked dispatched.
#[tracing::instrument(name = "poll_commands", skip_all, fields(%agent_id))]
pub(crate) async fn get_commands(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    client: ClientAddr,
    headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let result = async {
        admit(&state, &agent_id, client, &headers).await?;
        poll(&state, &agent_id).await
    }
    .await;
    let status = result
        .as_ref()
        .map_or_else(|e| e.status().as_u16(), |_| 200);
    metrics::record_status("commands", status, started.elapsed());
    match result {
        Ok(list) => (StatusCode::OK, Json(list)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn poll(state: &GatewayState, agent_id: &str) -> Result<CommandList, ApiError> {
    if !state.commands.is_live() {
        return Err(ApiError::unavailable(
            "the gateway is still reading recent commands; retry shortly",
            state.config.retry_after.as_secs().clamp(1, 2),
        ));
    }
    let now = fleet_schemas::time::now_micros();
    let (commands, events) = {
        let book = state.commands.book.lock();
        let list = book.pending_for(agent_id);
        let mut events = Vec::new();
        for (spec, dispatched) in &list {
            if !dispatched {
                // Marked only once the event is written (below): on a 503 the agent polls
                // again and the command is still undispatched.
                let t = book.get(&spec.command_id).cloned();
                let mut ev = event_from(
                    &spec.command_id,
                    t.as_ref(),
                    CommandEventKind::Dispatched,
                    now,
                );
                ev.event_id = ids::v5(&[&spec.command_id, "DISPATCHED", "0"]).to_string();
                ev.actor = Some(state.instance.to_string());
                events.push(ev);
            }
        }
        (list.into_iter().map(|(s, _)| s).collect::<Vec<_>>(), events)
    };
    if !events.is_empty() {
        produce_all(state, &events).await?;
        let mut book = state.commands.book.lock();
        for ev in &events {
            book.apply(ev);
        }
    }
    metrics::commands_dispatched("poll", commands.len());
    Ok(CommandList { commands })
}

/// The command a progress chunk or result names: it must be the command of the path and
/// one this book gave to `agent_id`: pending (so approved if it needed it), or finished
/// and this agent's (a result resent after a lost acknowledgement; `None` then). Unknown
/// commands and other agents' get the same 404; a command of this agent still waiting for
/// its approval gets 409. Before the replay at start is done, 503 (the book is not whole).
fn check_command(
    state: &GatewayState,
    agent_id: &str,
    path_id: Option<&str>,
    body_id: &str,
) -> Result<Option<Tracked>, ApiError> {
    if let Some(p) = path_id {
        if p != body_id {
            return Err(ApiError::invalid_field(
                "command_id",
                format!("is {body_id}, but the URL names command {p}"),
            ));
        }
    }
    if !state.commands.is_live() {
        return Err(ApiError::unavailable(
            "the gateway is still reading recent commands; retry shortly",
            state.config.retry_after.as_secs().clamp(1, 2),
        ));
    }
    let book = state.commands.book.lock();
    let refused = |reason: &'static str, e: ApiError| {
        metrics::command_update_refused(reason);
        tracing::warn!(%agent_id, command_id = %body_id, reason, "Command update refused.");
        Err(e.with_field("command_id"))
    };
    match book.get(body_id) {
        Some(t) if t.agent_id == agent_id && t.is_pending() => Ok(Some(t.clone())),
        Some(t) if t.agent_id == agent_id => refused(
            "not_dispatched",
            ApiError::new(
                StatusCode::CONFLICT,
                "command_not_dispatched",
                "this command waits for its approval and was not given to the agent",
            ),
        ),
        _ if book.owner(body_id) == Some(agent_id) => Ok(None),
        _ => refused(
            "unknown",
            ApiError::not_found("no such command was given to this agent"),
        ),
    }
}

/// A progress chunk → PROGRESS event (both transports).
pub(crate) async fn ingest_progress(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    path_id: Option<&str>,
    p: CommandProgressIn,
) -> Result<IngestAccepted, ApiError> {
    let now = fleet_schemas::time::now_micros();
    let limits = validate::Limits::from_config(&state.config);
    let checked = validate::command_progress(&p, now, &limits)
        .map_err(|(field, message)| ApiError::invalid_field(field, message))?;
    let known = check_command(state, agent_id, path_id, &p.command_id)?;
    let mut ev = event_from(
        &p.command_id,
        known.as_ref(),
        CommandEventKind::Progress,
        now,
    );
    ev.event_id = ids::v5(&[&p.command_id, "PROGRESS", &checked.sequence.to_string()]).to_string();
    fill_identity(&mut ev, known.as_ref(), who, agent_id);
    ev.sequence = checked.sequence;
    ev.stream = Some(p.stream);
    ev.chunk = Some(p.chunk);
    ev.occurred_at = checked.at;
    produce_all(state, std::slice::from_ref(&ev)).await?;
    metrics::command_update("progress");
    Ok(IngestAccepted {
        accepted: 1,
        config: None,
        rejected: Vec::new(),
    })
}

/// A command result → COMPLETED event (both transports).
pub(crate) async fn ingest_result(
    state: &GatewayState,
    who: &AgentIdentity,
    agent_id: &str,
    path_id: Option<&str>,
    r: CommandResultIn,
) -> Result<IngestAccepted, ApiError> {
    let now = fleet_schemas::time::now_micros();
    let limits = validate::Limits::from_config(&state.config);
    let (started_at, finished_at) = validate::command_result(&r, now, &limits)
        .map_err(|(field, message)| ApiError::invalid_field(field, message))?;
    let known = check_command(state, agent_id, path_id, &r.command_id)?;
    let mut ev = event_from(
        &r.command_id,
        known.as_ref(),
        CommandEventKind::Completed,
        now,
    );
    ev.event_id = ids::v5(&[&r.command_id, "COMPLETED", "0"]).to_string();
    fill_identity(&mut ev, known.as_ref(), who, agent_id);
    ev.status = Some(r.status);
    ev.exit_code = r.exit_code;
    ev.stdout = Some(r.stdout);
    ev.stderr = Some(r.stderr);
    ev.output_truncated = r.output_truncated;
    ev.message = r.message;
    ev.started_at = started_at;
    ev.finished_at = Some(finished_at);
    ev.occurred_at = finished_at;
    produce_all(state, std::slice::from_ref(&ev)).await?;
    // Done here at once (the dispatcher reads the same event later): a poll right after
    // does not hand the command out again.
    state.commands.book.lock().apply(&ev);
    metrics::command_update("completed");
    Ok(IngestAccepted {
        accepted: 1,
        config: None,
        rejected: Vec::new(),
    })
}

fn fill_identity(
    ev: &mut CommandEvent,
    known: Option<&Tracked>,
    who: &AgentIdentity,
    agent_id: &str,
) {
    ev.agent_id = agent_id.to_owned();
    if known.is_none() {
        ev.tenant_id = who.tenant_id.clone();
    }
}

/// `POST /api/v1/agents/{agent_id}/commands/{command_id}/progress`.
#[tracing::instrument(name = "command_progress", skip_all, fields(%agent_id, %command_id))]
pub(crate) async fn post_progress(
    State(state): State<GatewayState>,
    Path((agent_id, command_id)): Path<(String, String)>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, body) =
            admit_then_body::<CommandProgressIn>(&state, &agent_id, client, req).await?;
        ingest_progress(&state, &who, &agent_id, Some(&command_id), body).await
    }
    .await;
    crate::respond("command_progress", started, result)
}

/// `POST /api/v1/agents/{agent_id}/commands/{command_id}/result`.
#[tracing::instrument(name = "command_result", skip_all, fields(%agent_id, %command_id))]
pub(crate) async fn post_result(
    State(state): State<GatewayState>,
    Path((agent_id, command_id)): Path<(String, String)>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    let result = async {
        let (who, body) =
            admit_then_body::<CommandResultIn>(&state, &agent_id, client, req).await?;
        ingest_result(&state, &who, &agent_id, Some(&command_id), body).await
    }
    .await;
    crate::respond("command_result", started, result)
}

/// Shared handle to the dispatcher state (for [`GatewayState`]).
pub(crate) fn new_state() -> Arc<Commands> {
    Arc::new(Commands::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str, kind: CommandEventKind, approval: bool, at: i64) -> CommandEvent {
        let mut e = event_from(id, None, kind, at);
        e.agent_id = "a".into();
        e.tenant_id = "t".into();
        e.command_type = "restart_service".into();
        e.requires_approval = approval;
        e.timeout_secs = 30;
        e
    }

    #[test]
    fn requested_is_pending_unless_it_needs_approval() {
        let mut b = CommandBook::default();
        assert!(b.apply(&ev("c1", CommandEventKind::Requested, false, 10)));
        assert!(!b.apply(&ev("c2", CommandEventKind::Requested, true, 5)));
        let ids: Vec<String> = b
            .pending_for("a")
            .into_iter()
            .map(|(s, _)| s.command_id)
            .collect();
        assert_eq!(ids, vec!["c1"]);
        assert!(b.apply(&ev("c2", CommandEventKind::Approved, true, 20)));
        let ids: Vec<String> = b
            .pending_for("a")
            .into_iter()
            .map(|(s, _)| s.command_id)
            .collect();
        assert_eq!(ids, vec!["c2", "c1"], "oldest request first");
        // A duplicate APPROVED changes nothing.
        assert!(!b.apply(&ev("c2", CommandEventKind::Approved, true, 21)));
    }

    #[test]
    fn only_the_first_requested_counts() {
        let mut b = CommandBook::default();
        let mut first = ev("c1", CommandEventKind::Requested, true, 10);
        first.command_type = "run_script".into();
        first.args = HashMap::from([("script".to_owned(), "wipe".to_owned())]);
        assert!(!b.apply(&first), "waits for its approval");
        // The same id again, asking for no approval and something else: ignored.
        let mut second = ev("c1", CommandEventKind::Requested, false, 20);
        second.command_type = "collect_diagnostics".into();
        second.timeout_secs = 999;
        assert!(!b.apply(&second));
        assert!(
            b.pending_for("a").is_empty(),
            "still waits for its approval"
        );
        let t = b.get("c1").expect("known");
        assert!(t.requires_approval);
        assert_eq!(
            (t.command_type.as_str(), t.requested_at),
            ("run_script", 10)
        );
        // Once approved, the agent gets exactly the first request.
        assert!(b.apply(&ev("c1", CommandEventKind::Approved, true, 30)));
        let pending = b.pending_for("a");
        assert_eq!(pending.len(), 1);
        let spec = &pending[0].0;
        assert_eq!(spec.command_type, "run_script");
        assert_eq!(spec.args.get("script").map(String::as_str), Some("wipe"));
        assert_eq!(spec.timeout_secs, 30);
        // A later REQUESTED does not move it in the queue either.
        assert!(!b.apply(&ev("c1", CommandEventKind::Requested, false, 5)));
        assert_eq!(b.get("c1").map(|t| t.requested_at), Some(10));
    }

    #[test]
    fn completed_and_timed_out_end_it_and_a_replay_does_not_revive_it() {
        let mut b = CommandBook::default();
        b.apply(&ev("c1", CommandEventKind::Requested, false, 10));
        b.apply(&ev("c2", CommandEventKind::Requested, false, 11));
        b.apply(&ev("c1", CommandEventKind::Completed, false, 12));
        b.apply(&ev("c2", CommandEventKind::TimedOut, false, 13));
        assert!(b.pending_for("a").is_empty());
        assert!(!b.apply(&ev("c1", CommandEventKind::Requested, false, 10)));
        assert!(b.pending_for("a").is_empty());
        assert_eq!(b.owner("c1"), Some("a"));
    }

    #[test]
    fn rejected_and_cancelled_are_never_delivered_even_after_a_replay() {
        let mut b = CommandBook::default();
        // Awaiting approval, then rejected: an approval racing it changes nothing.
        assert!(!b.apply(&ev("c1", CommandEventKind::Requested, true, 10)));
        assert!(!b.apply(&ev("c1", CommandEventKind::Rejected, true, 11)));
        assert!(!b.apply(&ev("c1", CommandEventKind::Approved, true, 12)));
        // Pending (no approval needed), cancelled before any socket took it.
        assert!(b.apply(&ev("c2", CommandEventKind::Requested, false, 13)));
        assert!(!b.apply(&ev("c2", CommandEventKind::Cancelled, false, 14)));
        // Approved, then cancelled.
        assert!(!b.apply(&ev("c3", CommandEventKind::Requested, true, 15)));
        assert!(b.apply(&ev("c3", CommandEventKind::Approved, true, 16)));
        assert!(!b.apply(&ev("c3", CommandEventKind::Cancelled, true, 17)));
        assert!(b.pending_for("a").is_empty(), "{:?}", b.pending_for("a"));
        assert!(b.mark_dispatched("c2", "gw", 18).is_none());
        // A restart replays the window into a new book, in log order: the same.
        let mut replayed = CommandBook::default();
        for e in [
            ev("c1", CommandEventKind::Requested, true, 10),
            ev("c1", CommandEventKind::Rejected, true, 11),
            ev("c2", CommandEventKind::Requested, false, 13),
            ev("c2", CommandEventKind::Cancelled, false, 14),
        ] {
            replayed.apply(&e);
        }
        assert!(replayed.pending_for("a").is_empty());
        assert!(replayed.is_empty());
    }

    #[test]
    fn a_cancel_read_after_the_dispatch_leaves_the_command_to_finish() {
        let mut b = CommandBook::default();
        assert!(b.apply(&ev("c1", CommandEventKind::Requested, false, 10)));
        assert!(b.mark_dispatched("c1", "gw", 11).is_some());
        assert!(!b.apply(&ev("c1", CommandEventKind::Cancelled, false, 12)));
        assert!(b.get("c1").is_some(), "still open: its result is expected");
        assert_eq!(b.pending_for("a").len(), 1);
    }

    #[test]
    fn dispatched_once_and_expiry_forgets_old_commands() {
        let mut b = CommandBook::default();
        b.apply(&ev("c1", CommandEventKind::Requested, false, 10));
        let d = b.mark_dispatched("c1", "gw", 11).expect("first time");
        assert_eq!(d.kind, CommandEventKind::Dispatched);
        assert_eq!(d.command_type, "restart_service");
        assert_eq!(d.event_id, ids::v5(&["c1", "DISPATCHED", "0"]).to_string());
        assert!(b.mark_dispatched("c1", "gw", 12).is_none());
        assert!(b.pending_for("a")[0].1);
        b.expire(11);
        assert!(b.is_empty());
    }
}
