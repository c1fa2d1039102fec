//! The alert evaluator's loop: the I/O around the pure [`Evaluator`].
//!
//! * A **control** consumer (a throw-away group that never commits) reads
//!   `fleet.rules.v1` and `fleet.alerts.v1` from the start and then follows both: rule
//!   changes apply without a restart; alert events written by others (other instances,
//!   users acknowledging or resolving) update the open alerts. Events this instance wrote
//!   are recognised by event id and skipped (its state already has them).
//! * The **metrics** consumer runs in group `group`. Whenever this member takes a
//!   partition (at start, and on every rebalance) it first catches the control consumer
//!   up to the end of both topics, drops the running for-durations of that partition's
//!   agents, and seeks back by time: to the first offset at (now − longest for-duration −
//!   `alert-evaluator.replay-margin`), or the committed offset if that is earlier. The replayed
//!   reports rebuild the for-durations; the high-water marks from the alert events make
//!   them emit nothing twice. Records of a partition polled before its seek are dropped
//!   (they come again), and offsets below the committed one are never committed back.
//! * The same group consumer also reads `fleet.agents.v1` (keyed by agent id like the
//!   metrics): its OFFLINE / ONLINE / DEACTIVATED records drive the `heartbeat.absent`
//!   rules ([`Evaluator::lifecycle`]). They need no replay window (no for-duration: the
//!   state they need is the open alerts and marks from `fleet.alerts.v1`), so a taken
//!   agents partition starts at its committed offset (the start when there is none, as for
//!   metrics: a new group's first run raises and resolves the incidents of the topic's
//!   history once). Ownership of a `heartbeat.absent` alert (for resolves of retired rules)
//!   follows the agents partition, that of other alerts the metrics partition: the two
//!   usually coincide (same key, same partition count, range assignment on the embedded
//!   log), but Kafka's cooperative-sticky assignor does not promise it.
//! * The group consumer reads `fleet.samples.v1` too, for the rules with label matchers
//!   ([`Evaluator::evaluate_samples`]); its partitions replay the window like the metrics.
//!   Alerts of a series belong to the member holding the samples partition it was last
//!   read from (remembered per unit while the evaluator holds its state).
//! * The group consumer reads `fleet.events.v1` too, for the event rules
//!   ([`Evaluator::agent_event`]; keyed by agent id like the metrics). Its partitions replay
//!   the longest resolve-after plus the margin (the last matching event of each open
//!   alert is running state; the marks from `fleet.alerts.v1` make the replay raise
//!   nothing twice). An open event alert resolves by itself at its resolve-after deadline
//!   once the wall clock passed it ([`Evaluator::resolve_expired`], looked at after every
//!   poll that was not full, i.e. that read what was there), but only for agents whose
//!   events partition this member has read up to the end offset it took when it took the
//!   partition: before that, a later matching event may still be on its way. An event
//!   older than a deadline already acted on (an agent's late delivery) changes nothing.
//!   Ownership of an event alert follows the events partition.
//! * Agent tags (for tag-scoped rules) are stated by AgentLifecycle records of
//!   `fleet.agents.v1` (`tags` set) and folded by [`Evaluator::lifecycle`]. Starting an
//!   agents partition at its committed offset would lose the tags stated before it, so
//!   when this member takes an agents partition that has a committed offset, it first
//!   reads that partition from the start up to the committed offset with a throw-away
//!   consumer, applying only the tags ([`Evaluator::observe_agent_tags`]); the group
//!   consumer then goes on from the committed offset, so the tags follow the partition in
//!   order. (When Kafka's assignor gives a metrics partition without its agents partition,
//!   the tags of those agents are the ones this member last knew.)
//! * Alert events are written (retrying until written) before the input offsets are
//!   committed.
//!
//! * Every minute the evaluator drops the state of series idle for `alert-evaluator.idle-after`
//!   (never one with an open alert; see [`Evaluator::evict_idle`]), so subject names that
//!   come and go do not hold memory for good.
//!
//! A downtime longer than the window loses the running for-durations from before it: a
//! breach then raises later than it would have (never twice).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::follow::Follower;
use fleet_consumer::log::{ensure_topics, next_offsets};
use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{CommitOffset, ConsumedRecord, EventLog, StartFrom};
use fleet_schemas::rules::{EVENT_METRIC_PREFIX, HEARTBEAT_ABSENT};
use fleet_schemas::series::UNIT_PREFIX;
use fleet_schemas::time::duration_micros;
use fleet_schemas::Wire;
use fleet_schemas::{
    topics, AgentEvent, AgentLifecycle, AlertEvent, MetricReport, Record, RuleEvent, SampleBatch,
};

use crate::rules::{self, Evaluator};
use crate::{metrics, ProcessorsConfig, Readiness};

/// The evaluator's name on its dead letters (every topic it reads: metrics, agents, rules,
/// alerts).
const CONSUMER: &str = "alert-evaluator";

/// The control consumer: rules and alerts, from the start, never committed.
struct Control {
    follower: Follower,
    state: ControlState,
}

/// What the control consumer keeps beside its follower.
struct ControlState {
    /// Event ids this instance wrote that the control consumer has not read back yet.
    in_flight: HashSet<String>,
    /// Whether a rule changed since the last look.
    rules_changed: bool,
    /// Where rule and alert events it cannot use go.
    dead: DeadLetters,
}

impl Control {
    async fn open(log: &dyn EventLog, dead: DeadLetters) -> anyhow::Result<Control> {
        let follower = Follower::open(
            log,
            dead.wire(),
            "alert-control",
            &[topics::RULES, topics::ALERTS],
        )
        .await?;
        Ok(Control {
            follower,
            state: ControlState {
                in_flight: HashSet::new(),
                rules_changed: false,
                dead,
            },
        })
    }

    /// Applies whatever is there now, without waiting.
    async fn drain(&mut self, evaluator: &mut Evaluator) {
        let state = &mut self.state;
        self.follower.drain(|r| state.apply(evaluator, r)).await;
        state.dead.flush().await;
    }

    /// Reads both topics up to their end offsets taken now.
    async fn catch_up(
        &mut self,
        log: &dyn EventLog,
        evaluator: &mut Evaluator,
    ) -> anyhow::Result<u64> {
        let state = &mut self.state;
        let seen = self
            .follower
            .catch_up(log, |r| state.apply(evaluator, r))
            .await?;
        state.dead.flush().await;
        Ok(seen)
    }
}

impl ControlState {
    fn apply(&mut self, evaluator: &mut Evaluator, r: &ConsumedRecord) {
        if &*r.topic == topics::RULES {
            match self.dead.wire().decode_known::<RuleEvent>(&r.value) {
                Ok(ev) => match evaluator.apply_rule_event(&ev) {
                    Ok(()) => {
                        self.rules_changed = true;
                        tracing::info!(rule_id = %ev.rule_id, kind = ev.kind.as_str(), "Rule applied.");
                    }
                    Err(e) => {
                        ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => RuleEvent::TOPIC).increment(1);
                        tracing::warn!(rule_id = %ev.rule_id, offset = r.offset, error = %e, "Invalid rule: to the dead letters.");
                        self.dead.note(
                            r,
                            Reason::process(format!("invalid rule {}: {e}", ev.rule_id))
                                .tenant(&ev.tenant_id),
                        );
                    }
                },
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => RuleEvent::TOPIC).increment(1);
                    self.dead.note(r, Reason::decode(e));
                }
            }
        } else {
            match self.dead.wire().decode_known::<AlertEvent>(&r.value) {
                Ok(ev) => {
                    if !self.in_flight.remove(&ev.event_id) {
                        evaluator.observe(&ev);
                    }
                }
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => AlertEvent::TOPIC).increment(1);
                    self.dead.note(r, Reason::decode(e));
                }
            }
        }
    }
}

/// Rebuilds the tags of the agents of `fleet.agents.v1` partitions just taken: reads each
/// partition from the start up to (not including) its committed offset in `upto` and
/// applies the tags the records state. Returns the number of records read.
async fn rebuild_tags(
    log: &dyn EventLog,
    evaluator: &mut Evaluator,
    dead: &DeadLetters,
    upto: &BTreeMap<u32, i64>,
) -> anyhow::Result<u64> {
    if upto.values().all(|c| *c <= 0) {
        return Ok(0);
    }
    let mut follower = Follower::open(log, dead.wire(), "alert-tags", &[topics::AGENTS]).await?;
    let targets = upto
        .iter()
        .map(|(p, c)| ((topics::AGENTS.to_owned(), *p), *c))
        .collect();
    let mut seen = 0u64;
    follower
        .catch_up_to(&targets, |r| {
            if upto.get(&r.partition).is_none_or(|c| r.offset >= *c) {
                return;
            }
            seen += 1;
            // Below the committed offset: dead-lettered when first consumed (a record
            // consumed before dead letters existed gets one now).
            if let Some(ev) = dead.decode_or_note::<AgentLifecycle>(r) {
                evaluator.observe_agent_tags(&ev);
            }
        })
        .await?;
    dead.flush().await;
    Ok(seen)
}

/// The input topics of the group consumer.
const INPUTS: [&str; 4] = [
    topics::METRICS,
    topics::AGENTS,
    topics::SAMPLES,
    topics::EVENTS,
];

/// How far back a partition taken replays (µs): metrics and samples the for-duration
/// window, events the longest resolve-after, both plus the margin; lifecycle records need
/// none (`None`).
fn replay_window(topic: &str, evaluator: &Evaluator, margin_micros: i64) -> Option<i64> {
    let base = if topic == topics::METRICS || topic == topics::SAMPLES {
        evaluator.longest_for_micros()
    } else if topic == topics::EVENTS {
        evaluator.longest_resolve_after_micros()
    } else {
        return None;
    };
    Some(base.saturating_add(margin_micros))
}

/// The input partitions this member holds and has primed (sought back).
#[derive(Debug, Default)]
struct Held {
    /// (Topic, partition) → committed offset at the time it was taken (never committed
    /// below).
    primed: BTreeMap<(&'static str, u32), Option<i64>>,
    /// Events partitions still replaying → the end offset when they were taken. Timed
    /// resolves of their agents wait until it is reached.
    replaying: BTreeMap<u32, i64>,
}

impl Held {
    fn holds(&self, topic: &str, partition: u32) -> bool {
        INPUTS
            .iter()
            .find(|t| **t == topic)
            .is_some_and(|t| self.primed.contains_key(&(*t, partition)))
    }

    fn committed(&self, topic: &str, partition: u32) -> Option<i64> {
        INPUTS
            .iter()
            .find(|t| **t == topic)
            .and_then(|t| self.primed.get(&(*t, partition)).copied().flatten())
    }
}

/// Runs the alert evaluator until `shutdown` resolves (see the module docs).
pub(crate) async fn run(
    log: Arc<dyn EventLog>,
    wire: Wire,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let static_rules = rules::static_rule_events(&config.rules)?;
    ensure_topics(log.as_ref()).await?;
    let settings = &config.alert_evaluator;
    let margin_micros = duration_micros(settings.replay_margin).min(i64::MAX / 2);
    let mut evaluator = Evaluator::new(&static_rules)?.with_max_gap(margin_micros);
    let dead = DeadLetters::open(log.clone(), wire, CONSUMER, &settings.group).await?;
    let mut control = Control::open(log.as_ref(), dead.clone()).await?;
    let rebuilt = control.catch_up(log.as_ref(), &mut evaluator).await?;
    tracing::info!(
        records = rebuilt,
        open = evaluator.open_alerts(),
        rules = evaluator.active_rules().len(),
        "Rules and alert state rebuilt."
    );
    ::metrics::gauge!(metrics::OPEN_ALERTS).set(evaluator.open_alerts() as f64);
    let idle_micros = duration_micros(settings.idle_after).min(i64::MAX / 2);
    evict_idle(&mut evaluator, idle_micros);
    let partitions = log.partition_count(topics::METRICS).await?;
    let agent_partitions = log.partition_count(topics::AGENTS).await?;
    let event_partitions = log.partition_count(topics::EVENTS).await?;
    let group = settings.group.clone();
    let settings = Settings::group(&group, &INPUTS)
        .start(StartFrom::Earliest)
        .session_timeout(config.event_log.session_timeout)
        .batch_size(config.batch_size)
        .batch_histogram(metrics::BATCH_SECONDS, "processor", "alerts");
    let runtime = ConsumerRuntime::subscribe(log.clone(), settings, dead.clone())
        .await?
        .readiness(ready.flag());
    tracing::info!(%group, static_rules = config.rules.len(), rules = evaluator.active_rules().len(), "Alert evaluator starting.");
    let mut alerts = AlertLoop {
        log,
        group: group.clone(),
        partitions: Partitions {
            metrics: partitions,
            agents: agent_partitions,
            events: event_partitions,
        },
        margin_micros,
        idle_micros,
        batch_size: config.batch_size,
        last_eviction: Instant::now(),
        evaluator,
        control,
        held: Held::default(),
        units: HashMap::new(),
        dead,
    };
    runtime.run(&mut alerts, shutdown).await;
    Ok(())
}

/// How often the evaluator looks for idle state to drop.
const EVICTION_EVERY: Duration = Duration::from_secs(60);

/// Drops the evaluator's idle series (see [`Evaluator::evict_idle`]) and reports the rest.
fn evict_idle(evaluator: &mut Evaluator, idle_micros: i64) {
    let dropped = evaluator.evict_idle(fleet_schemas::time::now_micros(), idle_micros);
    if dropped > 0 {
        ::metrics::counter!(metrics::RULE_SERIES_EVICTED).increment(dropped as u64);
        tracing::debug!(dropped, "Idle rule state dropped.");
    }
    ::metrics::gauge!(metrics::RULE_SERIES).set(evaluator.tracked_series() as f64);
}

/// Partition counts of the input topics keyed by agent id.
#[derive(Debug, Clone, Copy)]
struct Partitions {
    metrics: u32,
    agents: u32,
    events: u32,
}

/// Whether an agent's alerts of a metric are this member's: its lifecycle records
/// (`heartbeat.absent`), its events (`event.<kind>`) or its reports (other metrics) are on
/// a partition it primed; for a unit of the standard protocols' series (`~...`), the
/// samples partition its samples were last read from (`units`; a unit not seen since this
/// member started is nobody's until it is).
fn owned<'a>(
    held: &'a Held,
    units: &'a HashMap<String, u32>,
    partitions: Partitions,
) -> impl FnMut(&str, &str) -> bool + 'a {
    move |agent: &str, metric: &str| {
        if agent.starts_with(UNIT_PREFIX) {
            return units
                .get(agent)
                .is_some_and(|p| held.primed.contains_key(&(topics::SAMPLES, *p)));
        }
        let (topic, n) = if metric == HEARTBEAT_ABSENT {
            (topics::AGENTS, partitions.agents)
        } else if metric.starts_with(EVENT_METRIC_PREFIX) {
            (topics::EVENTS, partitions.events)
        } else {
            (topics::METRICS, partitions.metrics)
        };
        held.primed.contains_key(&(
            topic,
            fleet_event_log::partition_for_key(agent.as_bytes(), n),
        ))
    }
}

/// The evaluator on the consumer runtime.
struct AlertLoop {
    log: Arc<dyn EventLog>,
    group: String,
    partitions: Partitions,
    margin_micros: i64,
    idle_micros: i64,
    /// Records per poll at most: a poll with fewer read what was there.
    batch_size: usize,
    last_eviction: Instant,
    evaluator: Evaluator,
    control: Control,
    held: Held,
    /// Unit id of each standard protocols' series a rule watches → the samples partition
    /// it was last read from (ownership of its alerts; entries go with the evaluator's
    /// state of the unit).
    units: HashMap<String, u32>,
    dead: DeadLetters,
}

impl Processor for AlertLoop {
    /// A log that cannot answer now (a broker outage often moves partitions) is retried
    /// by the runtime, not fatal: each attempt primes what it can, the next one the rest.
    async fn on_assigned(&mut self, assignment: &mut Assignment<'_>) -> anyhow::Result<Output> {
        let events = self.reassign(assignment).await?;
        Ok(self.write(events))
    }

    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let mut events = self.look_around().await;
        // Only partitions primed (the runtime hands over no record polled before a seek:
        // those come again).
        let held = &self.held;
        let primed: Vec<&ConsumedRecord> = batch
            .iter()
            .filter(|r| held.holds(&r.topic, r.partition))
            .collect();
        events.extend(evaluate_batch(
            &mut self.evaluator,
            &mut self.units,
            &self.dead,
            &primed,
        ));
        let replaying = &mut self.held.replaying;
        for r in primed.iter().filter(|r| &*r.topic == topics::EVENTS) {
            if replaying
                .get(&r.partition)
                .is_some_and(|end| r.offset.saturating_add(1) >= *end)
            {
                replaying.remove(&r.partition);
                tracing::info!(partition = r.partition, "Events partition replayed.");
            }
        }
        let held = &self.held;
        ::metrics::gauge!(metrics::OPEN_ALERTS).set(self.evaluator.open_alerts() as f64);
        // Offsets below the committed one at the time a partition was taken are never
        // committed back.
        let commits: Vec<CommitOffset> = next_offsets(primed)
            .into_iter()
            .filter(|c| {
                held.committed(&c.topic, c.partition)
                    .is_none_or(|committed| c.next_offset > committed)
            })
            .collect();
        let mut out = self.write(events);
        out.commit_upto(commits);
        out
    }

    /// On an idle poll, what `handle` does before a batch; after a poll that was not full
    /// (what was there is read), the timed resolves of event rules.
    async fn on_tick(&mut self, handled: usize) -> Output {
        let mut events = if handled == 0 {
            self.look_around().await
        } else {
            Vec::new()
        };
        if handled < self.batch_size {
            events.extend(self.resolve_expired());
        }
        self.write(events)
    }
}

impl AlertLoop {
    /// Rule changes and others' alert events first; the resolves of retired rules; idle
    /// state dropped now and then.
    async fn look_around(&mut self) -> Vec<AlertEvent> {
        self.control.drain(&mut self.evaluator).await;
        let mut events = Vec::new();
        let now = fleet_schemas::time::now_micros();
        if std::mem::take(&mut self.control.state.rules_changed) {
            let owned = owned(&self.held, &self.units, self.partitions);
            events.extend(self.evaluator.resolve_retired(now, owned));
        }

        if self.last_eviction.elapsed() >= EVICTION_EVERY {
            self.last_eviction = Instant::now();
            evict_idle(&mut self.evaluator, self.idle_micros);
            let evaluator = &self.evaluator;
            self.units.retain(|unit, _| evaluator.tracks(unit));
        }
        events
    }

    /// The open event alerts past their resolve-after deadline, of agents whose events
    /// partition this member holds and has replayed.
    fn resolve_expired(&mut self) -> Vec<AlertEvent> {
        let held = &self.held;
        let n = self.partitions.events;
        self.evaluator
            .resolve_expired(fleet_schemas::time::now_micros(), |agent| {
                let p = fleet_event_log::partition_for_key(agent.as_bytes(), n);
                held.primed.contains_key(&(topics::EVENTS, p)) && !held.replaying.contains_key(&p)
            })
    }

    /// Takes the current assignment: forgets lost partitions, primes new ones (catch up
    /// with the control topics, drop their running durations, seek back by time).
    /// Returns the resolves of retired rules' alerts on the partitions now held.
    async fn reassign(
        &mut self,
        assignment: &mut Assignment<'_>,
    ) -> anyhow::Result<Vec<AlertEvent>> {
        let now: Vec<(&'static str, u32)> = assignment
            .current()
            .iter()
            .filter_map(|(t, p)| INPUTS.iter().find(|i| **i == t).map(|i| (*i, *p)))
            .collect();
        let held = &mut self.held;
        held.replaying
            .retain(|p, _| now.contains(&(topics::EVENTS, *p)));
        let lost: Vec<(&'static str, u32)> = held
            .primed
            .keys()
            .copied()
            .filter(|tp| !now.contains(tp))
            .collect();
        let new: Vec<(&'static str, u32)> = now
            .iter()
            .copied()
            .filter(|tp| !held.primed.contains_key(tp))
            .collect();
        let n = self.partitions;
        let units = &self.units;
        // Whether a partition in `set` holds the running state of an agent: its metrics
        // or events partition, or the samples partition of a unit.
        let within = move |set: &[(&'static str, u32)], agent: &str| -> bool {
            if agent.starts_with(UNIT_PREFIX) {
                return units
                    .get(agent)
                    .is_some_and(|p| set.contains(&(topics::SAMPLES, *p)));
            }
            let key = agent.as_bytes();
            set.contains(&(
                topics::METRICS,
                fleet_event_log::partition_for_key(key, n.metrics),
            )) || set.contains(&(
                topics::EVENTS,
                fleet_event_log::partition_for_key(key, n.events),
            ))
        };
        let evaluator = &mut self.evaluator;
        if !lost.is_empty() {
            evaluator.forget_pending(|a| within(&lost, a));
            for tp in &lost {
                held.primed.remove(tp);
            }
            tracing::info!(?lost, "Partitions given up.");
        }
        if new.is_empty() {
            return Ok(Vec::new());
        }
        // Alert events of the previous owner are written before its commits: read them.
        self.control.catch_up(self.log.as_ref(), evaluator).await?;
        evaluator.forget_pending(|a| within(&new, a));
        let now_micros = fleet_schemas::time::now_micros();
        // Agents partitions taken with a committed offset: tags stated before it.
        let mut tags_upto: BTreeMap<u32, i64> = BTreeMap::new();
        for topic in INPUTS {
            if !new.iter().any(|(t, _)| *t == topic) {
                continue;
            }
            // Metrics and samples replay the for-duration window, events the longest
            // resolve-after; lifecycle records need none.
            let by_time = match replay_window(topic, &self.evaluator, self.margin_micros) {
                Some(window) => {
                    let since_ms = now_micros.saturating_sub(window).div_euclid(1000);
                    self.log.offsets_for_time(topic, since_ms).await?
                }
                None => Vec::new(),
            };
            let ends = if topic == topics::EVENTS {
                self.log.end_offsets(topic).await?
            } else {
                Vec::new()
            };
            let first = self.log.offsets_for_time(topic, 0).await?;
            let committed = self.log.committed_offsets(&self.group, topic).await?;
            for &(_, p) in new.iter().filter(|(t, _)| *t == topic) {
                let i = p as usize;
                let c = committed.get(i).copied().flatten();
                let start = match c {
                    Some(c) => c.min(by_time.get(i).copied().unwrap_or(c)),
                    None => first.get(i).copied().unwrap_or(0),
                };
                if topic == topics::AGENTS {
                    if let Some(c) = c.filter(|c| *c > 0) {
                        tags_upto.insert(p, c);
                    }
                }
                if let Some(end) = ends.get(i).copied().filter(|end| *end > start) {
                    self.held.replaying.insert(p, end);
                }
                assignment.seek(topic, p, start).await?;
                self.held.primed.insert((topic, p), c);
                tracing::info!(topic, partition = p, from = start, committed = ?c, "Partition taken; replaying its window.");
            }
        }
        if !tags_upto.is_empty() {
            let read = rebuild_tags(
                self.log.as_ref(),
                &mut self.evaluator,
                &self.control.state.dead,
                &tags_upto,
            )
            .await?;
            tracing::info!(partitions = ?tags_upto.keys().collect::<Vec<_>>(), records = read, "Agent tags rebuilt.");
        }
        self.control.state.rules_changed = false;
        let owned = owned(&self.held, &self.units, self.partitions);
        Ok(self
            .evaluator
            .resolve_retired(fleet_schemas::time::now_micros(), owned))
    }

    /// The output writing alert events (before the offsets are committed); their ids are
    /// remembered so the control consumer skips them when it reads them back.
    fn write(&mut self, events: Vec<AlertEvent>) -> Output {
        let mut out = Output::new();
        if events.is_empty() {
            return out;
        }
        for ev in &events {
            self.control.state.in_flight.insert(ev.event_id.clone());
        }
        out.write_records(self.dead.wire(), &events);
        out.when_written(move || {
            for ev in &events {
                ::metrics::counter!(metrics::ALERTS_EMITTED, "kind" => ev.kind.as_str()).increment(1);
                tracing::info!(alert_id = %ev.alert_id, agent_id = %ev.agent_id, rule_id = %ev.rule_id, kind = ev.kind.as_str(), severity = ev.severity.as_str(), value = ev.value, "Alert event.");
            }
        });
        out
    }
}

fn evaluate_batch(
    evaluator: &mut Evaluator,
    units: &mut HashMap<String, u32>,
    dead: &DeadLetters,
    batch: &[&ConsumedRecord],
) -> Vec<AlertEvent> {
    let now = fleet_schemas::time::now_micros();
    let mut out = Vec::new();
    for r in batch {
        if &*r.topic == topics::SAMPLES {
            ::metrics::counter!(metrics::RECORDS, "processor" => "alerts", "topic" => SampleBatch::TOPIC).increment(1);
            match dead.wire().decode_known::<SampleBatch>(&r.value) {
                Ok(batch) => out.extend(evaluator.evaluate_samples(&batch, now, |unit| {
                    if units.get(unit) != Some(&r.partition) {
                        units.insert(unit.to_owned(), r.partition);
                    }
                })),
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => SampleBatch::TOPIC)
                        .increment(1);
                    dead.note(r, Reason::decode(e));
                }
            }
            continue;
        }
        if &*r.topic == topics::EVENTS {
            ::metrics::counter!(metrics::RECORDS, "processor" => "alerts", "topic" => AgentEvent::TOPIC).increment(1);
            match dead.wire().decode_known::<AgentEvent>(&r.value) {
                Ok(ev) => out.extend(evaluator.agent_event(&ev, now)),
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => AgentEvent::TOPIC)
                        .increment(1);
                    dead.note(r, Reason::decode(e));
                }
            }
            continue;
        }
        if &*r.topic == topics::AGENTS {
            ::metrics::counter!(metrics::RECORDS, "processor" => "alerts", "topic" => AgentLifecycle::TOPIC).increment(1);
            match dead.wire().decode_known::<AgentLifecycle>(&r.value) {
                Ok(ev) => out.extend(evaluator.lifecycle(&ev, now)),
                Err(e) => {
                    ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => AgentLifecycle::TOPIC)
                        .increment(1);
                    dead.note(r, Reason::decode(e));
                }
            }
            continue;
        }
        ::metrics::counter!(metrics::RECORDS, "processor" => "alerts", "topic" => MetricReport::TOPIC).increment(1);
        match dead.wire().decode_known::<MetricReport>(&r.value) {
            Ok(report) => out.extend(evaluator.evaluate(&report, now)),
            Err(e) => {
                ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => "alerts", "topic" => MetricReport::TOPIC)
                    .increment(1);
                dead.note(r, Reason::decode(e));
            }
        }
    }
    out
}
