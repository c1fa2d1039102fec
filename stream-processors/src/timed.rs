//! Plumbing shared by the ticketer, liveness and command timeouts.
//!
//! * [`Positions`] (pure): where this member stands on each partition of its input topic,
//!   which partitions it holds, and which of them have caught up with a check's targets.
//! * [`run_timed`]: a processor driven by a timer rather than by records, on the
//!   [consumer runtime](fleet_consumer::runtime): consume in a group; on every newly held
//!   partition seek back by time and replay the window; every `check_interval`, once each
//!   held partition is consumed up to the end offsets taken at the tick, ask the processor
//!   what is due on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::follow::Follower;
use fleet_consumer::log::ensure_topics;
use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{ConsumedRecord, EventLog, StartFrom};
use fleet_schemas::Record;
use fleet_schemas::Wire;

use crate::{metrics, Readiness};

/// A check in progress: the time it judges at and, per partition still to judge, the
/// offset this member must have consumed up to first.
#[derive(Debug, Clone, PartialEq)]
struct Check {
    now: i64,
    targets: BTreeMap<u32, i64>,
}

/// Positions of one member on the partitions of one topic (pure, no I/O).
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Positions {
    assigned: BTreeSet<u32>,
    /// Next offset this member will read, per partition (from its last record or seek).
    next: HashMap<u32, i64>,
    check: Option<Check>,
}

/// What changed in a member's assignment.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Reassigned {
    /// Partitions newly held: rebuild them.
    pub(crate) added: BTreeSet<u32>,
    /// Partitions no longer held: forget them.
    pub(crate) removed: BTreeSet<u32>,
}

impl Reassigned {
    pub(crate) fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl Positions {
    /// The partitions held now.
    pub(crate) fn assigned(&self) -> &BTreeSet<u32> {
        &self.assigned
    }

    /// Records the position after consumed records of `topic`. The last record of a
    /// partition wins (not the highest): after a seek back the position goes back too.
    pub(crate) fn observe(&mut self, topic: &str, records: &[ConsumedRecord]) {
        for r in records.iter().filter(|r| &*r.topic == topic) {
            self.next.insert(r.partition, r.offset + 1);
        }
    }

    /// Records a seek.
    pub(crate) fn seeked(&mut self, partition: u32, offset: i64) {
        self.next.insert(partition, offset);
    }

    /// Takes the member's current assignment; says what was added and removed.
    pub(crate) fn reassign(&mut self, now_held: BTreeSet<u32>) -> Reassigned {
        let added: BTreeSet<u32> = now_held.difference(&self.assigned).copied().collect();
        let removed: BTreeSet<u32> = self.assigned.difference(&now_held).copied().collect();
        for p in &removed {
            self.next.remove(p);
            if let Some(c) = &mut self.check {
                c.targets.remove(p);
            }
        }
        self.assigned = now_held;
        Reassigned { added, removed }
    }

    /// Starts a check at `now` whose targets are the end offsets `ends` (per partition);
    /// it replaces a check still in progress.
    pub(crate) fn start_check(&mut self, now: i64, ends: &[i64]) {
        let targets = self
            .assigned
            .iter()
            .map(|&p| (p, ends.get(p as usize).copied().unwrap_or(0)))
            .collect();
        self.check = Some(Check { now, targets });
    }

    /// The partitions of the current check that have caught up with their targets (they
    /// leave the check), with the check's time; `None` when there are none.
    pub(crate) fn ready(&mut self) -> Option<(i64, BTreeSet<u32>)> {
        let check = self.check.as_mut()?;
        let next = &self.next;
        let ready: BTreeSet<u32> = check
            .targets
            .iter()
            .filter(|(p, target)| **target <= 0 || next.get(p).is_some_and(|n| n >= *target))
            .map(|(p, _)| *p)
            .collect();
        for p in &ready {
            check.targets.remove(p);
        }
        let now = check.now;
        if check.targets.is_empty() {
            self.check = None;
        }
        (!ready.is_empty()).then_some((now, ready))
    }
}

/// Decodes a consumed record, counting it (and a failure) for `processor`; a record that
/// does not decode is noted for the dead letters (the runtime writes them before it commits).
/// Synchronous: the runtime and the followers resolved the record's writer schema before
/// (waiting while the schema registry could not be asked), so a decode failure is final.
pub(crate) fn decode_counted<T: Record>(
    processor: &'static str,
    dead: &DeadLetters,
    r: &ConsumedRecord,
) -> Option<T> {
    ::metrics::counter!(metrics::RECORDS, "processor" => processor, "topic" => T::TOPIC)
        .increment(1);
    match dead.wire().decode_known::<T>(&r.value) {
        Ok(v) => Some(v),
        Err(e) => {
            ::metrics::counter!(metrics::DECODE_ERRORS, "processor" => processor, "topic" => T::TOPIC)
                .increment(1);
            tracing::debug!(processor, topic = T::TOPIC, partition = r.partition, offset = r.offset, error = %e, "Undecodable record: to the dead letters.");
            dead.note(r, Reason::decode(e));
            None
        }
    }
}

/// A processor driven by a timer over one input topic (pure parts; [`run_timed`] does
/// the I/O).
pub(crate) trait Timed: Send {
    /// Event type written.
    type Out: Record;
    /// Name for metrics and logs.
    const NAME: &'static str;
    /// Input topic.
    const INPUT: &'static str;
    /// Handles consumed input; returns events to write before the offsets are committed.
    /// Records it cannot use go to `dead` (written before the commit too).
    fn on_input(&mut self, batch: &[ConsumedRecord], dead: &DeadLetters) -> Vec<Self::Out>;
    /// Handles a record of the followed topic (if any).
    fn on_follow(&mut self, _record: &ConsumedRecord, _dead: &DeadLetters) {}
    /// Drops the state of partitions no longer held.
    fn forget(&mut self, partitions: &BTreeSet<u32>);
    /// The partitions held after a rebalance.
    fn assigned(&mut self, _held: &BTreeSet<u32>) {}
    /// What is due at `now` on `partitions` (now caught up); marks it done.
    fn due(&mut self, now: i64, partitions: &BTreeSet<u32>) -> Vec<Self::Out>;
    /// After a check, a batch or a rebalance: refresh gauges.
    fn report(&self) {}
}

/// Settings of [`run_timed`].
#[derive(Debug, Clone)]
pub(crate) struct TimedSettings {
    pub(crate) group: String,
    pub(crate) lookback: Duration,
    pub(crate) check_interval: Duration,
    pub(crate) batch_size: usize,
    pub(crate) session_timeout: Duration,
    /// Topic to follow from its start before the first check (and before each check).
    pub(crate) follow: Option<&'static str>,
}

/// Seeks each of `partitions` back to the first record of the last `lookback_ms`.
async fn rewind(
    log: &dyn EventLog,
    assignment: &mut Assignment<'_>,
    topic: &str,
    partitions: &BTreeSet<u32>,
    lookback_ms: i64,
    positions: &mut Positions,
) -> anyhow::Result<()> {
    let from_ms = (fleet_schemas::time::now_micros() / 1000).saturating_sub(lookback_ms);
    let starts = log.offsets_for_time(topic, from_ms).await?;
    for &p in partitions {
        let offset = starts.get(p as usize).copied().unwrap_or(0);
        assignment.seek(topic, p, offset).await?;
        positions.seeked(p, offset);
    }
    Ok(())
}

/// A [`Timed`] processor on the consumer runtime: the replays, checks and follower around it.
struct TimedLoop<P: Timed> {
    log: Arc<dyn EventLog>,
    proc: P,
    dead: DeadLetters,
    follower: Option<Follower>,
    positions: Positions,
    lookback_ms: i64,
    check_interval: Duration,
    next_check: Instant,
}

impl<P: Timed> Processor for TimedLoop<P> {
    /// Partitions newly held are rebuilt by replaying their recent window; partitions lost
    /// are forgotten. With Kafka the assignment arrives during the first polls.
    async fn on_assigned(&mut self, assignment: &mut Assignment<'_>) -> anyhow::Result<Output> {
        let before = self.positions.assigned().clone();
        let change = self.positions.reassign(assignment.partitions(P::INPUT));
        if change.is_empty() {
            return Ok(Output::new());
        }
        if !change.removed.is_empty() {
            self.proc.forget(&change.removed);
        }
        if !change.added.is_empty() {
            let rewound = rewind(
                self.log.as_ref(),
                assignment,
                P::INPUT,
                &change.added,
                self.lookback_ms,
                &mut self.positions,
            )
            .await;
            if let Err(e) = rewound {
                // Not held as far as judging goes until the rewind worked (retried).
                self.positions
                    .reassign(before.difference(&change.removed).copied().collect());
                return Err(e.context("rewinding new partitions"));
            }
            // A check already under way must wait for the replays too.
            self.next_check = Instant::now();
        }
        self.proc.assigned(self.positions.assigned());
        self.proc.report();
        tracing::info!(processor = P::NAME, added = ?change.added, removed = ?change.removed, held = ?self.positions.assigned(), "Assignment changed; replaying recent input of new partitions.");
        Ok(Output::new())
    }

    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let events = self.proc.on_input(batch, &self.dead);
        self.positions.observe(P::INPUT, batch);
        self.proc.report();
        let mut out = Output::new();
        out.write_records(self.dead.wire(), &events);
        out
    }

    /// After every poll: follow, start a check when due, judge the partitions caught up.
    async fn on_tick(&mut self, _handled: usize) -> Output {
        let (proc, dead) = (&mut self.proc, &self.dead);
        if let Some(f) = self.follower.as_mut() {
            f.poll_now(Duration::from_millis(1), |r| proc.on_follow(r, dead))
                .await;
        }
        if Instant::now() >= self.next_check {
            self.next_check = Instant::now() + self.check_interval;
            match self.log.end_offsets(P::INPUT).await {
                Ok(ends) => self
                    .positions
                    .start_check(fleet_schemas::time::now_micros(), &ends),
                Err(e) => {
                    tracing::warn!(processor = P::NAME, error = %e, "End offsets unavailable; check skipped.")
                }
            }
        }
        let mut out = Output::new();
        let Some((now, partitions)) = self.positions.ready() else {
            return out;
        };
        // Judge with everything written to the followed topic before now.
        if let Some(f) = self.follower.as_mut() {
            if let Err(e) = f
                .catch_up(self.log.as_ref(), |r| proc.on_follow(r, dead))
                .await
            {
                tracing::warn!(processor = P::NAME, error = %e, "Catching up the followed topic failed.");
            }
            dead.flush().await;
        }
        let span = tracing::info_span!(
            "timed_check",
            processor = P::NAME,
            partitions = partitions.len()
        );
        let events = {
            let _g = span.enter();
            proc.due(now, &partitions)
        };
        out.write_records(dead.wire(), &events);
        proc.report();
        out
    }
}

/// Runs a timer-driven processor until `shutdown` resolves.
pub(crate) async fn run_timed<P: Timed + 'static>(
    log: Arc<dyn EventLog>,
    wire: Wire,
    mut proc: P,
    settings: TimedSettings,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let dead = DeadLetters::open(log.clone(), wire, P::NAME, &settings.group).await?;
    let follower = match settings.follow {
        Some(topic) => {
            let what = format!("{}-follow", P::NAME);
            let mut f = Follower::open(log.as_ref(), dead.wire(), &what, &[topic]).await?;
            let n = f
                .catch_up(log.as_ref(), |r| proc.on_follow(r, &dead))
                .await?;
            dead.flush().await;
            tracing::info!(
                processor = P::NAME,
                topic,
                records = n,
                "Followed topic read."
            );
            Some(f)
        }
        None => None,
    };
    let poll_timeout = settings
        .check_interval
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let consumer = Settings::group(&settings.group, &[P::INPUT])
        .start(StartFrom::Latest)
        .session_timeout(settings.session_timeout)
        .batch_size(settings.batch_size)
        .poll_timeout(poll_timeout)
        .batch_histogram(metrics::BATCH_SECONDS, "processor", P::NAME);
    let runtime = ConsumerRuntime::subscribe(log.clone(), consumer, dead.clone())
        .await?
        .readiness(ready.flag());
    let mut timed = TimedLoop {
        lookback_ms: i64::try_from(settings.lookback.as_millis()).unwrap_or(i64::MAX / 4),
        check_interval: settings.check_interval,
        next_check: Instant::now(),
        positions: Positions::default(),
        log,
        proc,
        dead,
        follower,
    };
    tracing::info!(processor = P::NAME, group = %settings.group, "Processor starting.");
    runtime.run(&mut timed, shutdown).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(partition: u32, offset: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::from("t"),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            value: Vec::new(),
        }
    }

    #[test]
    fn reassign_reports_added_and_removed() {
        let mut p = Positions::default();
        let c = p.reassign([0, 1].into());
        assert_eq!(c.added, [0, 1].into());
        assert!(c.removed.is_empty());
        let c = p.reassign([1, 2].into());
        assert_eq!(c.added, [2].into());
        assert_eq!(c.removed, [0].into());
        assert!(p.reassign([1, 2].into()).is_empty());
    }

    #[test]
    fn a_partition_is_ready_once_consumed_up_to_the_check_target() {
        let mut p = Positions::default();
        p.reassign([0, 1, 2].into());
        p.seeked(0, 3);
        p.seeked(1, 0);
        p.seeked(2, 0);
        p.start_check(100, &[5, 0, 2]);
        // Partition 1 is empty: ready at once; 0 and 2 are behind.
        assert_eq!(p.ready(), Some((100, [1].into())));
        assert_eq!(p.ready(), None);
        p.observe("t", &[rec(0, 3), rec(0, 4), rec(2, 0)]);
        assert_eq!(p.ready(), Some((100, [0].into())));
        p.observe("other", &[rec(2, 1)]);
        assert_eq!(p.ready(), None);
        p.observe("t", &[rec(2, 1)]);
        assert_eq!(p.ready(), Some((100, [2].into())));
        assert_eq!(p.ready(), None, "the check is over");
    }

    #[test]
    fn a_seek_back_makes_a_partition_wait_for_its_replay() {
        let mut p = Positions::default();
        p.reassign([0].into());
        p.observe("t", &[rec(0, 9)]);
        p.seeked(0, 2);
        p.start_check(7, &[10]);
        assert_eq!(p.ready(), None);
        p.observe("t", &[rec(0, 9)]);
        assert_eq!(p.ready(), Some((7, [0].into())));
    }

    #[test]
    fn a_lost_partition_leaves_the_check() {
        let mut p = Positions::default();
        p.reassign([0, 1].into());
        p.seeked(0, 0);
        p.seeked(1, 0);
        p.start_check(1, &[4, 4]);
        p.reassign([1].into());
        p.observe("t", &[rec(1, 3)]);
        assert_eq!(p.ready(), Some((1, [1].into())));
        assert_eq!(p.ready(), None);
    }
}
