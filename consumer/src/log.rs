//! Helpers over the event log that the runtime and the roles share: creating the topics,
//! next offsets of a batch, writing until the log acknowledged, reading a topic to its
//! end, the consumer-lag gauge.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use fleet_event_log::{CommitOffset, ConsumedRecord, EventLog, LogError, ProduceRecord, TopicSpec};
use fleet_schemas::{topics, Record, Wire};

use crate::backoff::Backoff;
use crate::follow::Follower;
use crate::metrics::CONSUMER_LAG;

/// Creates every topic of the catalog (idempotent).
pub async fn ensure_topics(log: &dyn EventLog) -> anyhow::Result<()> {
    for t in topics::ALL {
        log.create_topic(
            t.name,
            TopicSpec {
                partitions: t.partitions,
                compacted: t.compacted,
            },
        )
        .await
        .with_context(|| format!("creating topic {}", t.name))?;
    }
    Ok(())
}

/// The next offset to commit per partition for a batch of records.
pub fn next_offsets<'a>(
    records: impl IntoIterator<Item = &'a ConsumedRecord>,
) -> Vec<CommitOffset> {
    let mut next: BTreeMap<(&str, u32), i64> = BTreeMap::new();
    for r in records {
        let e = next.entry((&r.topic, r.partition)).or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    next.into_iter()
        .map(|((topic, partition), next_offset)| CommitOffset {
            topic: topic.to_owned(),
            partition,
            next_offset,
        })
        .collect()
}

/// Writes records, retrying with the [`Backoff`] until the log acknowledges them. For
/// processors whose input offsets must not be committed before their output is written.
pub async fn produce_until_written(log: &dyn EventLog, topic: &str, records: Vec<ProduceRecord>) {
    let mut backoff = Backoff::new();
    loop {
        match log.produce(topic, records.clone()).await {
            Ok(_) => return,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(topic, error = %e, attempt = backoff.attempt(), "Write failed; retrying.");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Encodes records with `wire` as keyed records of their topic stamped with their
/// `occurred_at`; one that cannot be encoded is logged and left out (strings, numbers and bytes always
/// encode: should it ever fail, the log says so loudly).
pub fn to_records<T: Record>(wire: &Wire, records: &[T]) -> Vec<ProduceRecord> {
    records
        .iter()
        .filter_map(|r| match wire.encode(r) {
            Ok(value) => Some(ProduceRecord {
                key: Some(r.key().as_bytes().to_vec()),
                value,
                timestamp_ms: Some(r.occurred_at().div_euclid(1000)),
            }),
            Err(e) => {
                tracing::error!(topic = T::TOPIC, error = %e, "Record could not be encoded; not written.");
                None
            }
        })
        .collect()
}

/// Reads every record of `topic` present now (up to the end offsets at call time) and
/// hands each to `f`; returns how many. Used to rebuild state, with a throw-away group
/// that never commits ([`Follower`]); the writer schemas of the records are resolved with
/// `wire` before `f` sees them, so `f` decodes synchronously ([`Wire::decode_known`]).
pub async fn read_to_end(
    log: &dyn EventLog,
    wire: &Wire,
    topic: &str,
    mut f: impl FnMut(&ConsumedRecord),
) -> Result<u64, LogError> {
    let ends = log.end_offsets(topic).await?;
    if ends.iter().all(|&e| e == 0) {
        return Ok(0);
    }
    let targets: BTreeMap<(String, u32), i64> = (0u32..)
        .zip(&ends)
        .map(|(p, end)| ((topic.to_owned(), p), *end))
        .collect();
    let mut follower = Follower::open(log, wire, "rebuild", &[topic]).await?;
    let mut seen = 0u64;
    follower
        .catch_up_to(&targets, |r| {
            if ends
                .get(r.partition as usize)
                .is_some_and(|end| r.offset < *end)
            {
                f(r);
                seen += 1;
            }
        })
        .await?;
    Ok(seen)
}

/// Tracks a consumer's positions and, at most every `every`, sets the
/// `fleet_consumer_lag{group, topic}` gauge to the records between its positions and the
/// end of the partitions it has read from.
#[derive(Debug)]
pub struct LagGauge {
    group: String,
    every: Duration,
    last: Option<std::time::Instant>,
    positions: BTreeMap<(String, u32), i64>,
}

impl LagGauge {
    /// A gauge for consumer group `group`, refreshed at most every `every`.
    pub fn new(group: &str, every: Duration) -> LagGauge {
        LagGauge {
            group: group.to_owned(),
            every,
            last: None,
            positions: BTreeMap::new(),
        }
    }

    /// Records the positions after a processed batch.
    pub fn observe(&mut self, batch: &[ConsumedRecord]) {
        for c in next_offsets(batch) {
            self.positions.insert((c.topic, c.partition), c.next_offset);
        }
    }

    /// Refreshes the gauge when it is due; errors only skip this refresh.
    pub async fn refresh(&mut self, log: &dyn EventLog) {
        if self.last.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last = Some(std::time::Instant::now());
        let topics: std::collections::BTreeSet<String> =
            self.positions.keys().map(|(t, _)| t.clone()).collect();
        for topic in topics {
            let Ok(ends) = log.end_offsets(&topic).await else {
                continue;
            };
            let lag: i64 = ends
                .iter()
                .enumerate()
                .map(|(p, end)| {
                    let pos = self.positions.get(&(topic.clone(), p as u32)).copied();
                    pos.map_or(0, |pos| (end - pos).max(0))
                })
                .sum();
            metrics::gauge!(CONSUMER_LAG, "group" => self.group.clone(), "topic" => topic)
                .set(lag as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn rec(topic: &str, partition: u32, offset: i64) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp_ms: 0,
            key: None,
            value: Vec::new(),
        }
    }

    #[test]
    fn next_offsets_takes_max_plus_one_per_partition() {
        let got = next_offsets(&[
            rec("a", 0, 5),
            rec("a", 0, 3),
            rec("a", 1, 0),
            rec("b", 0, 9),
        ]);
        assert_eq!(
            got,
            vec![
                CommitOffset {
                    topic: "a".into(),
                    partition: 0,
                    next_offset: 6
                },
                CommitOffset {
                    topic: "a".into(),
                    partition: 1,
                    next_offset: 1
                },
                CommitOffset {
                    topic: "b".into(),
                    partition: 0,
                    next_offset: 10
                },
            ]
        );
    }
}
