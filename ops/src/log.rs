//! Consumer-loop helpers over the event log shared by the roles.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use fleet_event_log::{
    CommitOffset, ConsumedRecord, ConsumerOptions, EventLog, ProduceRecord, StartFrom, TopicSpec,
};
use fleet_schemas::topics;

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
pub fn next_offsets(records: &[ConsumedRecord]) -> Vec<CommitOffset> {
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

/// Writes records, retrying with backoff until the log acknowledges them. For processors
/// whose input offsets must not be committed before their output is written.
pub async fn produce_until_written(log: &dyn EventLog, topic: &str, records: Vec<ProduceRecord>) {
    let mut attempt = 0u32;
    loop {
        match log.produce(topic, records.clone()).await {
            Ok(_) => return,
            Err(e) => {
                attempt += 1;
                tracing::warn!(topic, error = %e, attempt, "Write failed; retrying.");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt.min(25)))).await;
            }
        }
    }
}

/// Reads every record of `topic` present now (up to the end offsets at call time) and
/// hands each to `f`; returns how many. Used to rebuild state; uses a throw-away consumer
/// group that never commits.
pub async fn read_to_end(
    log: &dyn EventLog,
    topic: &str,
    mut f: impl FnMut(&ConsumedRecord),
) -> anyhow::Result<u64> {
    let ends = log.end_offsets(topic).await?;
    if ends.iter().all(|&e| e == 0) {
        return Ok(0);
    }
    let group = format!("fleet-rebuild-{}", uuid::Uuid::new_v4());
    let mut consumer = log
        .subscribe(
            &group,
            &[topic],
            ConsumerOptions {
                start: StartFrom::Earliest,
                ..Default::default()
            },
        )
        .await?;
    let mut positions: Vec<i64> = vec![0; ends.len()];
    let mut seen = 0u64;
    let mut idle_polls = 0u32;
    while positions.iter().zip(&ends).any(|(p, e)| p < e) {
        let batch = consumer.poll(1000, Duration::from_millis(500)).await?;
        if batch.is_empty() {
            idle_polls += 1;
            // Offsets can have gaps (compaction, control records): stop when nothing
            // more arrives for a while instead of waiting forever.
            if idle_polls >= 40 {
                tracing::warn!(
                    topic,
                    ?positions,
                    ?ends,
                    "Stopped reading before the end offsets: no more records arrived."
                );
                break;
            }
            continue;
        }
        idle_polls = 0;
        for r in &batch {
            let p = r.partition as usize;
            if p < ends.len() && r.offset < ends[p] {
                f(r);
                seen += 1;
            }
            if p < positions.len() {
                positions[p] = positions[p].max(r.offset + 1);
            }
        }
    }
    Ok(seen)
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

/// Name of the consumer-lag gauge every consumer loop reports (labels `group`, `topic`).
pub const CONSUMER_LAG: &str = "fleet_consumer_lag";

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
