//! Plumbing shared by the ticketer, liveness and command timeouts.
//!
//! * [`Positions`] (pure): where this member stands on each partition of its input topic,
//!   which partitions it holds, and which of them have caught up with a check's targets.
//! * [`Follower`]: a throw-away consumer group reading a whole topic from the start and
//!   then following it (the agents topic, for liveness and ticket locations).
//! * [`run_timed`]: the loop of a processor driven by a timer rather than by records:
//!   consume in a group; on every newly held partition seek back by time and replay the
//!   window; every `check_interval`, once each held partition is consumed up to the end
//!   offsets taken at the tick, ask the processor what is due on it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use fleet_event_log::{
    ConsumedRecord, Consumer, ConsumerOptions, EventLog, ProduceRecord, StartFrom,
};
use fleet_ops::deadletter::{decode_retrying, DeadLetters, Reason};
use fleet_ops::log::{ensure_topics, next_offsets, produce_until_written, LagGauge};
use fleet_schemas::{codec, Record};

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

/// Encodes events as keyed records stamped with their `occurred_at`; an event that
/// cannot be encoded is logged and left out.
pub(crate) fn to_records<T: Record>(events: &[T]) -> Vec<ProduceRecord> {
    events
        .iter()
        .filter_map(|ev| match codec::encode(ev) {
            Ok(value) => Some(ProduceRecord {
                key: Some(ev.key().as_bytes().to_vec()),
                value,
                timestamp_ms: Some(ev.occurred_at().div_euclid(1000)),
            }),
            Err(e) => {
                tracing::error!(topic = T::TOPIC, error = %e, "Event could not be encoded; not written.");
                None
            }
        })
        .collect()
}

/// Decodes a consumed record, counting it (and a failure) for `processor`; a record that
/// does not decode is noted for the dead letters (the loop flushes them before it commits).
/// A transient failure (the schema registry cannot be asked) is retried, not noted.
pub(crate) fn decode_counted<T: Record>(
    processor: &'static str,
    dead: &DeadLetters,
    r: &ConsumedRecord,
) -> Option<T> {
    ::metrics::counter!(metrics::RECORDS, "processor" => processor, "topic" => T::TOPIC)
        .increment(1);
    match decode_retrying::<T>(r) {
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

/// The partitions of `topic` a consumer holds.
pub(crate) fn held(consumer: &dyn Consumer, topic: &str) -> BTreeSet<u32> {
    consumer
        .assignment()
        .into_iter()
        .filter(|(t, _)| t == topic)
        .map(|(_, p)| p)
        .collect()
}

/// A throw-away group reading a whole topic, then following it.
#[derive(Debug)]
pub(crate) struct Follower {
    topic: &'static str,
    consumer: Box<dyn Consumer>,
    next: HashMap<u32, i64>,
}

impl Follower {
    /// Joins a fresh group named after `what` on `topic`, from the oldest record.
    pub(crate) async fn open(
        log: &dyn EventLog,
        topic: &'static str,
        what: &str,
    ) -> anyhow::Result<Follower> {
        let group = format!("fleet-{what}-follow-{}", uuid::Uuid::new_v4());
        let consumer = log
            .subscribe(
                &group,
                &[topic],
                ConsumerOptions {
                    start: StartFrom::Earliest,
                    ..ConsumerOptions::default()
                },
            )
            .await?;
        Ok(Follower {
            topic,
            consumer,
            next: HashMap::new(),
        })
    }

    fn take(&mut self, batch: &[ConsumedRecord], f: &mut impl FnMut(&ConsumedRecord)) {
        for r in batch {
            self.next.insert(r.partition, r.offset + 1);
            f(r);
        }
    }

    /// Reads until every record present now was handed to `f` (stops early, with a
    /// warning, if nothing arrives for a while: offsets can have gaps).
    pub(crate) async fn catch_up(
        &mut self,
        log: &dyn EventLog,
        mut f: impl FnMut(&ConsumedRecord),
    ) -> anyhow::Result<u64> {
        let ends = log.end_offsets(self.topic).await?;
        let mut seen = 0u64;
        let mut idle = 0u32;
        loop {
            let behind = (0u32..)
                .zip(&ends)
                .any(|(p, &end)| end > 0 && self.next.get(&p).copied().unwrap_or(0) < end);
            if !behind {
                return Ok(seen);
            }
            let batch = self.consumer.poll(1000, Duration::from_millis(250)).await?;
            if batch.is_empty() {
                idle += 1;
                if idle >= 40 {
                    tracing::warn!(
                        topic = self.topic,
                        ?ends,
                        "Stopped catching up: no more records arrived."
                    );
                    return Ok(seen);
                }
                continue;
            }
            idle = 0;
            seen += batch.len() as u64;
            self.take(&batch, &mut f);
        }
    }

    /// Hands `f` whatever arrived, waiting at most a moment.
    pub(crate) async fn poll_now(&mut self, mut f: impl FnMut(&ConsumedRecord)) {
        match self.consumer.poll(1000, Duration::from_millis(1)).await {
            Ok(batch) => self.take(&batch, &mut f),
            Err(e) => {
                tracing::warn!(topic = self.topic, error = %e, "Follow poll failed; retrying.")
            }
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

async fn write<T: Record>(log: &dyn EventLog, events: &[T]) {
    if events.is_empty() {
        return;
    }
    let records = to_records(events);
    if !records.is_empty() {
        produce_until_written(log, T::TOPIC, records).await;
    }
}

/// Seeks each of `partitions` back to the first record of the last `lookback_ms`.
async fn rewind(
    log: &dyn EventLog,
    consumer: &mut dyn Consumer,
    topic: &str,
    partitions: &BTreeSet<u32>,
    lookback_ms: i64,
    positions: &mut Positions,
) -> anyhow::Result<()> {
    let from_ms = (fleet_schemas::time::now_micros() / 1000).saturating_sub(lookback_ms);
    let starts = log.offsets_for_time(topic, from_ms).await?;
    for &p in partitions {
        let offset = starts.get(p as usize).copied().unwrap_or(0);
        consumer.seek(topic, p, offset).await?;
        positions.seeked(p, offset);
    }
    Ok(())
}

/// Runs a timer-driven processor until `shutdown` resolves.
pub(crate) async fn run_timed<P: Timed>(
    log: std::sync::Arc<dyn EventLog>,
    mut proc: P,
    settings: TimedSettings,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let dead = DeadLetters::open(log.clone(), P::NAME, &settings.group).await?;
    let log = log.as_ref();
    let mut follower = match settings.follow {
        Some(topic) => {
            let mut f = Follower::open(log, topic, P::NAME).await?;
            let n = f.catch_up(log, |r| proc.on_follow(r, &dead)).await?;
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
    let options = ConsumerOptions {
        start: StartFrom::Latest,
        session_timeout: settings.session_timeout,
    };
    let mut consumer = log.subscribe(&settings.group, &[P::INPUT], options).await?;
    let mut positions = Positions::default();
    let mut lag = LagGauge::new(&settings.group, Duration::from_secs(5));
    let lookback_ms = i64::try_from(settings.lookback.as_millis()).unwrap_or(i64::MAX / 4);
    let poll_timeout = settings
        .check_interval
        .clamp(Duration::from_millis(10), Duration::from_millis(500));
    let mut next_check = Instant::now();
    ready.set(true);
    tracing::info!(processor = P::NAME, group = %settings.group, "Processor running.");
    tokio::pin!(shutdown);
    loop {
        // Partitions newly held are rebuilt by replaying their recent window; partitions
        // lost are forgotten. With Kafka the assignment arrives during the first polls.
        let before = positions.assigned().clone();
        let change = positions.reassign(held(consumer.as_ref(), P::INPUT));
        if !change.is_empty() {
            if !change.removed.is_empty() {
                proc.forget(&change.removed);
            }
            if !change.added.is_empty() {
                if let Err(e) = rewind(
                    log,
                    consumer.as_mut(),
                    P::INPUT,
                    &change.added,
                    lookback_ms,
                    &mut positions,
                )
                .await
                {
                    // Not held as far as judging goes until the rewind worked: retry.
                    tracing::warn!(processor = P::NAME, error = %e, "Rewinding new partitions failed; retrying.");
                    positions.reassign(before.difference(&change.removed).copied().collect());
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
                // A check already under way must wait for the replays too.
                next_check = Instant::now();
            }
            proc.assigned(positions.assigned());
            proc.report();
            tracing::info!(processor = P::NAME, added = ?change.added, removed = ?change.removed, held = ?positions.assigned(), "Assignment changed; replaying recent input of new partitions.");
        }
        let batch = tokio::select! {
            _ = &mut shutdown => break,
            b = consumer.poll(settings.batch_size, poll_timeout) => b,
        };
        match batch {
            Ok(batch) if !batch.is_empty() => {
                let started = Instant::now();
                let span =
                    tracing::info_span!("timed_batch", processor = P::NAME, records = batch.len());
                let events = {
                    let _g = span.enter();
                    proc.on_input(&batch, &dead)
                };
                write(log, &events).await;
                // Dead letters before the commit: nothing committed past a record lost.
                dead.flush().await;
                if let Err(e) = consumer.commit(&next_offsets(&batch)).await {
                    tracing::warn!(processor = P::NAME, error = %e, "Commit failed; records will be read again (no duplicate events).");
                }
                positions.observe(P::INPUT, &batch);
                lag.observe(&batch);
                ::metrics::histogram!(metrics::BATCH_SECONDS, "processor" => P::NAME)
                    .record(started.elapsed().as_secs_f64());
                proc.report();
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(processor = P::NAME, error = %e, "Poll failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        if let Some(f) = follower.as_mut() {
            f.poll_now(|r| proc.on_follow(r, &dead)).await;
            dead.flush().await;
        }
        lag.refresh(log).await;
        if Instant::now() >= next_check {
            next_check = Instant::now() + settings.check_interval;
            match log.end_offsets(P::INPUT).await {
                Ok(ends) => positions.start_check(fleet_schemas::time::now_micros(), &ends),
                Err(e) => {
                    tracing::warn!(processor = P::NAME, error = %e, "End offsets unavailable; check skipped.")
                }
            }
        }
        if let Some((now, partitions)) = positions.ready() {
            // Judge with everything written to the followed topic before now.
            if let Some(f) = follower.as_mut() {
                if let Err(e) = f.catch_up(log, |r| proc.on_follow(r, &dead)).await {
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
            write(log, &events).await;
            proc.report();
        }
    }
    ready.set(false);
    tracing::info!(processor = P::NAME, "Processor stopped.");
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
