//! Dead letters: what every consumer loop does with a record it cannot use.
//!
//! A record that does not decode as its topic's type (garbage, a truncated datum, an
//! unknown schema, another record type), or that decodes but that the consumer's store or
//! processing refuses as invalid, goes to `fleet.deadletter.v1` as a
//! [`DeadLetter`](fleet_schemas::DeadLetter): the reason, the consumer that gave up, the
//! source topic, partition, offset, key and timestamp, and the raw value bytes. Then the
//! consumer moves on. Transient failures (a store or log that is unavailable, a schema
//! registry that cannot be asked for a writer schema: [`CodecError::is_retriable`]) are
//! not dead letters: the runtime, the followers and the replay reader wait for the writer
//! schemas of a batch before handing it on ([`resolve_retrying`]), asynchronously: the
//! thread goes on running other tasks, and the same bytes decode once the registry answers.
//!
//! Processors [`note`](DeadLetters::note) bad records while they handle a batch (handlers
//! are synchronous), and the [runtime](crate::runtime) [`flush`](DeadLetters::flush)es
//! them before it commits the batch's offsets (a processor that stores offsets with its
//! rows, as the read model does, flushes before that itself): `flush` returns only once
//! the log acknowledged every noted dead letter, retrying while it cannot take the write,
//! so no offset is ever committed past a record whose dead letter is not written. Nothing
//! is dropped silently.
//!
//! Delivery is at least once, with deterministic ids: a dead letter's event id (and key)
//! is UUIDv5 of (consumer, source topic, partition, offset). [`DeadLetters::open`] reads
//! the dead-letter topic once and remembers the records this consumer already gave up on,
//! so a restart, a rebalance or a reader that replays a window (the alert evaluator, the
//! followers of `fleet.agents.v1`, the ticket rebuild) does not write them again; two
//! instances reading the same record at the same moment can, and their dead letters then
//! share the event id (`fleetstream deadletter list` shows one).
//!
//! Each written dead letter increments `fleet_deadletters_total{consumer, topic, reason}`
//! (`reason` = `decode` or `process`) and logs a warning naming the record.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use fleet_event_log::{ConsumedRecord, EventLog, ProduceRecord};
use fleet_schemas::codec::{self, CodecError, Wire};
use fleet_schemas::{topics, AvroBytes, DeadLetter, DeadLetterKind, Record};

use crate::backoff::Backoff;
use crate::log::{produce_until_written, read_to_end};
use crate::metrics::DEADLETTERS_TOTAL;

/// Fetches the writer schema of every Confluent-framed record of `records` whose id
/// `wire` does not know yet, waiting (asynchronously, with the [`Backoff`]) while the
/// registry cannot be asked (such a record is never a dead letter), so that synchronous
/// decodes of these records ([`Wire::decode_known`]) give their final answer: the record,
/// or an error that is a property of the bytes (a registry that has no such schema). Each
/// id not known is asked once per call (one the registry refused before is asked again).
/// The runtime, the followers and the replay reader do this for every batch before
/// handing it on.
pub async fn resolve_retrying(wire: &Wire, records: &[ConsumedRecord]) {
    let Some(framing) = wire.framing() else {
        return;
    };
    let mut asked = Vec::new();
    for record in records {
        let Some(id) = codec::confluent_id(&record.value) else {
            continue;
        };
        let known = matches!(
            framing.writer_schema(id),
            Ok(_) | Err(CodecError::UnknownSchemaId(_))
        );
        if known || asked.contains(&id) {
            continue;
        }
        asked.push(id);
        let mut backoff = Backoff::new();
        loop {
            match framing.resolve(id).await {
                Err(e) if e.is_retriable() => {
                    let wait = backoff.next_delay();
                    log_transient(record, backoff.attempt(), &e);
                    tokio::time::sleep(wait).await;
                }
                _ => break,
            }
        }
    }
}

fn log_transient(record: &ConsumedRecord, attempt: u32, e: &CodecError) {
    tracing::warn!(topic = %record.topic, partition = record.partition, offset = record.offset, attempt, error = %e, "Writer schema unavailable; retrying the record (not a dead letter).");
}

/// Why a consumer gives up on a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    kind: DeadLetterKind,
    text: String,
    tenant_id: Option<String>,
}

impl Reason {
    /// The bytes are not a record of the topic's type.
    pub fn decode(error: impl std::fmt::Display) -> Reason {
        Reason {
            kind: DeadLetterKind::Decode,
            text: error.to_string(),
            tenant_id: None,
        }
    }

    /// The record decoded, but the consumer or its store refused it as invalid.
    pub fn process(error: impl std::fmt::Display) -> Reason {
        Reason {
            kind: DeadLetterKind::Process,
            text: error.to_string(),
            tenant_id: None,
        }
    }

    /// Names the tenant of a record that decoded.
    pub fn tenant(mut self, tenant_id: &str) -> Reason {
        self.tenant_id = Some(tenant_id.to_owned());
        self
    }

    /// Decode failure or refusal.
    pub fn kind(&self) -> DeadLetterKind {
        self.kind
    }

    /// What went wrong.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Reading the dead-letter topic at start failed.
#[derive(Debug, thiserror::Error)]
#[error("reading {topic} for consumer {consumer}: {message}", topic = topics::DEADLETTER)]
pub struct DeadLetterError {
    /// The consumer that was opening its dead letters.
    pub consumer: String,
    /// What failed.
    pub message: String,
}

/// The dead letters of one consumer. Cheap to clone: clones share the pending dead
/// letters and the memory of what was sent, so a processor can note records in its
/// synchronous handlers and the runtime flush them before committing.
#[derive(Debug, Clone)]
pub struct DeadLetters {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    log: Arc<dyn EventLog>,
    wire: Wire,
    consumer: String,
    group: String,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Noted, not yet written.
    pending: Vec<DeadLetter>,
    /// (topic, partition, offset) this consumer gave up on (written or pending).
    seen: HashSet<(String, u32, i64)>,
}

impl DeadLetters {
    /// The dead letters of `consumer` (a stable name: `readmodel`, `alert-evaluator`, ...)
    /// in consumer group `group`, written and read with `wire` (the role's framing, which
    /// the consumer's runtime also decodes with). Reads `fleet.deadletter.v1` to its end
    /// first, to know which records this consumer already gave up on (the topic must
    /// exist: [`ensure_topics`](crate::log::ensure_topics)).
    pub async fn open(
        log: Arc<dyn EventLog>,
        wire: Wire,
        consumer: &str,
        group: &str,
    ) -> Result<DeadLetters, DeadLetterError> {
        let mut seen = HashSet::new();
        let mut unreadable = 0u64;
        read_to_end(log.as_ref(), &wire, topics::DEADLETTER, |r| {
            match wire.decode_known::<DeadLetter>(&r.value) {
                Ok(d) if d.consumer == consumer && d.kind != DeadLetterKind::Replayed => {
                    if let Ok(p) = u32::try_from(d.source_partition) {
                        seen.insert((d.source_topic, p, d.source_offset));
                    }
                }
                Ok(_) => {}
                // Never dead-letter a dead letter: count and go on.
                Err(_) => unreadable += 1,
            }
        })
        .await
        .map_err(|e| DeadLetterError {
            consumer: consumer.to_owned(),
            message: format!("{e:#}"),
        })?;
        if unreadable > 0 {
            tracing::warn!(
                consumer,
                unreadable,
                "Records of fleet.deadletter.v1 that do not decode were skipped."
            );
        }
        tracing::debug!(
            consumer,
            known = seen.len(),
            "Dead letters of this consumer read."
        );
        Ok(DeadLetters {
            shared: Arc::new(Shared {
                log,
                wire,
                consumer: consumer.to_owned(),
                group: group.to_owned(),
                state: Mutex::new(State {
                    pending: Vec::new(),
                    seen,
                }),
            }),
        })
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.shared.consumer
    }

    /// The wire the dead letters are written with: the role's, which its consumer runtime
    /// decodes with.
    pub fn wire(&self) -> &Wire {
        &self.shared.wire
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Notes that this consumer gives up on `record`; [`flush`](DeadLetters::flush)
    /// writes it. A record it already gave up on (before a restart, or earlier in a
    /// replayed window) is not noted again. Returns whether it was noted.
    pub fn note(&self, record: &ConsumedRecord, reason: Reason) -> bool {
        let coords = (record.topic.to_string(), record.partition, record.offset);
        let mut state = self.state();
        if !state.seen.insert(coords) {
            tracing::debug!(consumer = %self.shared.consumer, topic = %record.topic, partition = record.partition, offset = record.offset, "Record already dead-lettered by this consumer.");
            return false;
        }
        let consumer = &self.shared.consumer;
        state.pending.push(DeadLetter {
            event_id: DeadLetter::failure_id(
                consumer,
                &record.topic,
                record.partition,
                record.offset,
            ),
            kind: reason.kind,
            reason: reason.text,
            consumer: consumer.clone(),
            group: self.shared.group.clone(),
            tenant_id: reason.tenant_id,
            source_topic: record.topic.to_string(),
            source_partition: i32::try_from(record.partition).unwrap_or(i32::MAX),
            source_offset: record.offset,
            source_key: record.key.clone().map(AvroBytes),
            source_timestamp: record.timestamp_ms,
            value: AvroBytes(record.value.clone()),
            replayed_partition: None,
            replayed_offset: None,
            occurred_at: fleet_schemas::time::now_micros(),
        });
        true
    }

    /// Decodes `record` as `T` with [`wire`](DeadLetters::wire), synchronously: its writer
    /// schema must be resolved already ([`resolve_retrying`]; the runtime and the followers
    /// resolve every batch before handing it on). A record that does not decode is noted
    /// (reason DECODE) and `None` returned.
    pub fn decode_or_note<T: Record>(&self, record: &ConsumedRecord) -> Option<T> {
        match self.shared.wire.decode_known::<T>(&record.value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.note(record, Reason::decode(e));
                None
            }
        }
    }

    /// Dead letters noted and not written yet.
    pub fn pending(&self) -> usize {
        self.state().pending.len()
    }

    /// Writes every noted dead letter and returns once the log acknowledged them all,
    /// retrying while it cannot take the write. Call it before committing the offsets
    /// of the records noted.
    pub async fn flush(&self) {
        let pending = std::mem::take(&mut self.state().pending);
        if pending.is_empty() {
            return;
        }
        let mut records = Vec::with_capacity(pending.len());
        for d in &pending {
            match self.shared.wire.encode(d) {
                Ok(value) => records.push(ProduceRecord {
                    key: Some(d.event_id.as_bytes().to_vec()),
                    value,
                    timestamp_ms: Some(d.occurred_at.div_euclid(1000)),
                }),
                // Strings, numbers and bytes always encode; should it ever fail, say so
                // loudly (the record's coordinates are in the log line).
                Err(e) => {
                    tracing::error!(consumer = %d.consumer, topic = %d.source_topic, partition = d.source_partition, offset = d.source_offset, error = %e, "Dead letter could not be encoded; record skipped without one.")
                }
            }
        }
        produce_until_written(self.shared.log.as_ref(), topics::DEADLETTER, records).await;
        for d in pending {
            ::metrics::counter!(
                DEADLETTERS_TOTAL,
                "consumer" => d.consumer.clone(),
                "topic" => d.source_topic.clone(),
                "reason" => d.kind.as_str(),
            )
            .increment(1);
            tracing::warn!(
                consumer = %d.consumer,
                topic = %d.source_topic,
                partition = d.source_partition,
                offset = d.source_offset,
                kind = d.kind.as_str(),
                reason = %d.reason,
                bytes = d.value.0.len(),
                "Record sent to fleet.deadletter.v1; moving on."
            );
        }
    }

    /// [`note`](DeadLetters::note) and [`flush`](DeadLetters::flush) one record.
    pub async fn send(&self, record: &ConsumedRecord, reason: Reason) {
        self.note(record, reason);
        self.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_event_log::TopicSpec;

    fn record(topic: &str, partition: u32, offset: i64, value: &[u8]) -> ConsumedRecord {
        ConsumedRecord {
            topic: Arc::from(topic),
            partition,
            offset,
            timestamp_ms: 1_700_000_000_000,
            key: Some(b"agent-1".to_vec()),
            value: value.to_vec(),
        }
    }

    async fn written(log: &dyn EventLog) -> Vec<DeadLetter> {
        let mut out = Vec::new();
        read_to_end(log, &Wire::plain(), topics::DEADLETTER, |r| {
            out.push(
                Wire::plain()
                    .decode_known::<DeadLetter>(&r.value)
                    .expect("a dead letter"),
            )
        })
        .await
        .expect("read");
        out
    }

    #[tokio::test]
    async fn a_bad_record_is_written_once_with_its_coordinates_and_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
            .await
            .expect("log");
        log.create_topic(
            topics::DEADLETTER,
            TopicSpec {
                partitions: 1,
                compacted: false,
            },
        )
        .await
        .expect("topic");
        let dl = DeadLetters::open(log.clone(), Wire::plain(), "readmodel", "fleet-readmodel")
            .await
            .expect("open");
        let bad = record(topics::METRICS, 3, 17, b"garbage, not avro");
        assert!(dl
            .decode_or_note::<fleet_schemas::MetricReport>(&bad)
            .is_none());
        assert!(
            !dl.note(&bad, Reason::process("again")),
            "noted once per record"
        );
        assert_eq!(dl.pending(), 1);
        dl.flush().await;
        assert_eq!(dl.pending(), 0);
        let got = written(log.as_ref()).await;
        assert_eq!(got.len(), 1);
        let d = &got[0];
        assert_eq!(d.kind, DeadLetterKind::Decode);
        assert_eq!(
            (d.source_topic.as_str(), d.source_partition, d.source_offset),
            (topics::METRICS, 3, 17)
        );
        assert_eq!(d.value.0, b"garbage, not avro");
        assert_eq!(
            d.source_key.as_ref().map(|k| k.0.as_slice()),
            Some(&b"agent-1"[..])
        );
        assert_eq!(d.source_timestamp, 1_700_000_000_000);
        assert_eq!(
            (d.consumer.as_str(), d.group.as_str()),
            ("readmodel", "fleet-readmodel")
        );
        assert!(!d.reason.is_empty());
        assert_eq!(
            d.event_id,
            DeadLetter::failure_id("readmodel", topics::METRICS, 3, 17)
        );

        // After a restart the consumer knows what it already sent; another consumer
        // gives up on the same record on its own.
        let again = DeadLetters::open(log.clone(), Wire::plain(), "readmodel", "fleet-readmodel")
            .await
            .expect("open");
        again.send(&bad, Reason::decode("again")).await;
        let other = DeadLetters::open(log.clone(), Wire::plain(), "timeseries", "fleet-timeseries")
            .await
            .expect("open");
        other
            .send(&bad, Reason::process("refused").tenant("t1"))
            .await;
        let got = written(log.as_ref()).await;
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].consumer, "timeseries");
        assert_eq!(got[1].kind, DeadLetterKind::Process);
        assert_eq!(got[1].tenant_id.as_deref(), Some("t1"));
    }
}
