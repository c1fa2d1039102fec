//! Reading fixed windows of partitions, directly: a throw-away consumer group that never
//! commits (the live consumer groups are not touched), each partition sought to the start
//! of its window, until every partition reached the end of its window (the end offsets
//! taken when the window was planned, so records appended meanwhile are not read).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::deadletter::resolve_retrying;
use fleet_event_log::{ConsumedRecord, ConsumerOptions, EventLog, StartFrom};
use fleet_schemas::Wire;
use tokio::sync::mpsc;

use crate::error::Context as _;
use crate::{Error, Result};

/// How long the reader waits for the next record of a window that is not finished before it
/// gives up on it (offsets can have gaps at the end: compaction, transaction markers).
pub const IDLE_LIMIT: Duration = Duration::from_secs(30);
/// How long one poll waits.
const POLL_WAIT: Duration = Duration::from_millis(500);

/// The window of one partition: offsets `start..end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// First offset to read.
    pub start: i64,
    /// The end offset taken at planning: the first offset not read.
    pub end: i64,
}

impl Span {
    /// Records in the window (an upper bound where offsets have gaps).
    pub fn len(&self) -> u64 {
        u64::try_from(self.end - self.start).unwrap_or(0)
    }

    /// Whether the window holds nothing to read.
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }
}

/// Where the windows start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record the log still holds.
    Beginning,
    /// The first record whose timestamp is at or after this time (ms since the epoch).
    Time(i64),
}

/// The windows of every partition of `topics`: from `start` to the end offsets now, or to
/// the first offset at or after `until` (ms) when that comes first.
pub async fn plan(
    log: &dyn EventLog,
    topics: &[&str],
    start: Start,
    until: Option<i64>,
) -> Result<Vec<Span>> {
    let mut spans = Vec::new();
    for topic in topics {
        let ends = log
            .end_offsets(topic)
            .await
            .with_context(|| format!("reading the end offsets of {topic}"))?;
        let starts = match start {
            // Kafka: the first offset still held (retention may have removed older ones);
            // the embedded log keeps everything from offset 0.
            Start::Beginning if log.engine() == "kafka" => log
                .offsets_for_time(topic, 0)
                .await
                .with_context(|| format!("reading the first offsets of {topic}"))?,
            Start::Beginning => vec![0; ends.len()],
            Start::Time(ms) => log
                .offsets_for_time(topic, ms)
                .await
                .with_context(|| format!("looking up offsets by time in {topic}"))?,
        };
        let limits = match until {
            Some(ms) => Some(
                log.offsets_for_time(topic, ms)
                    .await
                    .with_context(|| format!("looking up offsets by time in {topic}"))?,
            ),
            None => None,
        };
        for (p, end) in ends.iter().enumerate() {
            let partition = u32::try_from(p)
                .map_err(|_| Error::Internal(format!("partition {p} of {topic}")))?;
            let mut end = *end;
            if let Some(limit) = limits.as_ref().and_then(|l| l.get(p)) {
                end = end.min(*limit);
            }
            let start = starts.get(p).copied().unwrap_or(0).clamp(0, end.max(0));
            spans.push(Span {
                topic: (*topic).to_owned(),
                partition,
                start,
                end,
            });
        }
    }
    Ok(spans)
}

/// What a read reached.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    /// Windows not read to their end because no record came for [`IDLE_LIMIT`]:
    /// (topic, partition, next offset expected, end).
    pub unfinished: Vec<(String, u32, i64, i64)>,
}

/// Reads every window of `spans` and sends the records, in batches of at most
/// `batch_size`, in order per partition, each batch's writer schemas resolved with `wire`
/// first (so the receiver decodes synchronously, [`Wire::decode_known`]). Returns when every window is read, when
/// `IDLE_LIMIT` passed without a record, or when the receiver is gone.
pub async fn read(
    log: Arc<dyn EventLog>,
    wire: Wire,
    spans: Vec<Span>,
    batch_size: usize,
    tx: mpsc::Sender<Vec<ConsumedRecord>>,
) -> Result<ReadOutcome> {
    // (topic, partition) -> (next offset, start, end), for windows with something to read.
    let mut open: BTreeMap<(String, u32), (i64, i64, i64)> = spans
        .iter()
        .filter(|s| s.start < s.end)
        .map(|s| ((s.topic.clone(), s.partition), (s.start, s.start, s.end)))
        .collect();
    if open.is_empty() {
        return Ok(ReadOutcome::default());
    }
    let topics: BTreeSet<&str> = open.keys().map(|(t, _)| t.as_str()).collect();
    let topics: Vec<&str> = topics.into_iter().collect();
    let group = format!("fleet-replay-{}", uuid::Uuid::new_v4().simple());
    let mut consumer = log
        .subscribe(
            &group,
            &topics,
            ConsumerOptions {
                start: StartFrom::Earliest,
                ..ConsumerOptions::default()
            },
        )
        .await
        .with_context(|| format!("reading {}", topics.join(", ")))?;
    for ((topic, partition), (_, start, _)) in &open {
        consumer
            .seek(topic, *partition, *start)
            .await
            .with_context(|| format!("seeking {topic}/{partition} to {start}"))?;
    }
    tracing::debug!(%group, ?topics, "Reading the windows with a throw-away group.");
    let mut idle = Duration::ZERO;
    let mut failures = 0u32;
    while !open.is_empty() {
        let batch = match consumer.poll(batch_size.max(1), POLL_WAIT).await {
            Ok(b) => {
                failures = 0;
                b
            }
            Err(e) if e.is_retriable() && failures < 60 => {
                failures += 1;
                tracing::warn!(error = %e, attempt = failures, "Reading the log failed; retrying.");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => return Err(e).context("reading the log"),
        };
        if batch.is_empty() {
            idle += POLL_WAIT;
            if idle >= IDLE_LIMIT {
                break;
            }
            continue;
        }
        idle = Duration::ZERO;
        let mut keep = Vec::with_capacity(batch.len());
        for r in batch {
            let key = (r.topic.to_string(), r.partition);
            let Some(window) = open.get_mut(&key) else {
                continue; // a window already finished, or a partition outside the plan
            };
            let (next, start, end) = *window;
            if r.offset >= start && r.offset < end && r.offset >= next {
                window.0 = r.offset + 1;
                keep.push(r);
            } else if r.offset >= end {
                window.0 = end;
            }
            if window.0 >= end {
                open.remove(&key);
            }
        }
        if !keep.is_empty() {
            resolve_retrying(&wire, &keep).await;
        }
        if !keep.is_empty() && tx.send(keep).await.is_err() {
            return Ok(ReadOutcome::default()); // the receiver stopped
        }
    }
    Ok(ReadOutcome {
        unfinished: open
            .into_iter()
            .map(|((t, p), (next, _, end))| (t, p, next, end))
            .collect(),
    })
}
