//! Followers: throw-away consumer groups that read whole topics from their start and then
//! follow them, for state rebuilt from a topic (rules and open alerts for the evaluator,
//! agents for the ticketer and liveness, tickets, the dead letters already written).
//!
//! A follower never commits: its group (`fleet-<what>-<uuid>`) is new each time. Catching
//! up reads until every partition was read up to a target (the end offsets taken when it
//! starts, or offsets the caller names); offsets can have gaps (compaction, Kafka's control
//! records), so it also stops, with a warning, once nothing has arrived for
//! [`IDLE_POLLS`] polls of [`POLL_WAIT`].
//!
//! Before records are handed on, the writer schemas of each batch are resolved with the
//! follower's [`Wire`] ([`resolve_retrying`]), so the callbacks decode synchronously.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::{ConsumedRecord, Consumer, ConsumerOptions, EventLog, LogError, StartFrom};
use fleet_schemas::Wire;

use crate::deadletter::resolve_retrying;

/// How long one catch-up poll waits for records.
pub const POLL_WAIT: Duration = Duration::from_millis(500);
/// Empty catch-up polls in a row after which catching up stops short of its targets.
pub const IDLE_POLLS: u32 = 40;
/// Records per poll.
const POLL_MAX: usize = 1000;

/// A throw-away group reading topics from their start, then following them.
#[derive(Debug)]
pub struct Follower {
    consumer: Box<dyn Consumer>,
    wire: Wire,
    topics: Vec<String>,
    /// Next offset per (topic, partition) read so far.
    positions: HashMap<(Arc<str>, u32), i64>,
}

impl Follower {
    /// Joins a fresh group `fleet-<what>-<uuid>` on `topics`, from their oldest records;
    /// `wire` resolves the writer schemas of what it reads.
    pub async fn open(
        log: &dyn EventLog,
        wire: &Wire,
        what: &str,
        topics: &[&str],
    ) -> Result<Follower, LogError> {
        let group = format!("fleet-{what}-{}", uuid::Uuid::new_v4());
        let options = ConsumerOptions {
            start: StartFrom::Earliest,
            ..ConsumerOptions::default()
        };
        let consumer = log.subscribe(&group, topics, options).await?;
        Ok(Follower {
            consumer,
            wire: wire.clone(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            positions: HashMap::new(),
        })
    }

    /// The next offset this follower reads on a partition (0 before its first record).
    pub fn position(&self, topic: &str, partition: u32) -> i64 {
        self.positions
            .get(&(Arc::from(topic), partition))
            .copied()
            .unwrap_or(0)
    }

    async fn take(&mut self, batch: &[ConsumedRecord], f: &mut impl FnMut(&ConsumedRecord)) {
        resolve_retrying(&self.wire, batch).await;
        for r in batch {
            let pos = self
                .positions
                .entry((Arc::clone(&r.topic), r.partition))
                .or_insert(0);
            *pos = (*pos).max(r.offset + 1);
            f(r);
        }
    }

    /// Hands `f` every record polled until each partition of `targets` was read up to its
    /// target (next offset), or nothing arrived for a while; returns how many records it
    /// handed. Records at or past a target are handed too (the follower goes on from
    /// there).
    pub async fn catch_up_to(
        &mut self,
        targets: &BTreeMap<(String, u32), i64>,
        mut f: impl FnMut(&ConsumedRecord),
    ) -> Result<u64, LogError> {
        let mut seen = 0u64;
        let mut idle = 0u32;
        loop {
            let behind = targets
                .iter()
                .any(|((t, p), target)| *target > 0 && self.position(t, *p) < *target);
            if !behind {
                return Ok(seen);
            }
            let batch = self.consumer.poll(POLL_MAX, POLL_WAIT).await?;
            if batch.is_empty() {
                idle += 1;
                if idle >= IDLE_POLLS {
                    tracing::warn!(
                        topics = ?self.topics,
                        ?targets,
                        "Stopped catching up before the targets: no more records arrived."
                    );
                    return Ok(seen);
                }
                continue;
            }
            idle = 0;
            seen += batch.len() as u64;
            self.take(&batch, &mut f).await;
        }
    }

    /// [`catch_up_to`](Follower::catch_up_to) the end offsets of every topic followed, taken
    /// now: every record present now is handed to `f`.
    pub async fn catch_up(
        &mut self,
        log: &dyn EventLog,
        f: impl FnMut(&ConsumedRecord),
    ) -> Result<u64, LogError> {
        let targets = end_targets(log, &self.topics).await?;
        self.catch_up_to(&targets, f).await
    }

    /// Hands `f` whatever arrives within `wait` (one poll); a failed poll is logged and
    /// retried at the next call.
    pub async fn poll_now(&mut self, wait: Duration, mut f: impl FnMut(&ConsumedRecord)) {
        match self.consumer.poll(POLL_MAX, wait).await {
            Ok(batch) => self.take(&batch, &mut f).await,
            Err(e) => {
                tracing::warn!(topics = ?self.topics, error = %e, "Follow poll failed; retrying later.")
            }
        }
    }

    /// Hands `f` everything there is now, without waiting: polls until a poll returns
    /// nothing. A failed poll is logged and retried at the next call.
    pub async fn drain(&mut self, mut f: impl FnMut(&ConsumedRecord)) {
        loop {
            match self.consumer.poll(POLL_MAX, Duration::ZERO).await {
                Ok(batch) if batch.is_empty() => return,
                Ok(batch) => self.take(&batch, &mut f).await,
                Err(e) => {
                    tracing::warn!(topics = ?self.topics, error = %e, "Follow poll failed; retrying later.");
                    return;
                }
            }
        }
    }
}

/// The end offsets of `topics` now, per (topic, partition).
pub async fn end_targets(
    log: &dyn EventLog,
    topics: &[impl AsRef<str>],
) -> Result<BTreeMap<(String, u32), i64>, LogError> {
    let mut targets = BTreeMap::new();
    for topic in topics {
        let topic = topic.as_ref();
        for (p, end) in (0u32..).zip(log.end_offsets(topic).await?) {
            targets.insert((topic.to_owned(), p), end);
        }
    }
    Ok(targets)
}
