//! The event-log conformance suite: one body per behaviour, run against every engine.
//!
//! * `embedded::*`: the embedded log in a fresh temporary directory.
//! * `kafka::*`: Kafka at `FLEET_KAFKA_BROKERS` (default `127.0.0.1:9092`). When no broker
//!   answers these tests FAIL, saying how to start one (`scripts/services.sh up`).
//!
//! Every test uses its own topic (`__{test}_{random}`) and consumer groups, so tests run in
//! parallel. Waits have generous deadlines and nothing asserts on timing: only data.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use fleet_event_log::{
    partition_for_key, CommitOffset, ConsumedRecord, Consumer, ConsumerOptions, EventLog, LogError,
    ProduceRecord, RecordPosition, StartFrom, TopicSpec,
};

/// Longest a test waits for records or a group assignment (Kafka group joins take seconds).
const DEADLINE: Duration = Duration::from_secs(90);

fn unique(test: &str) -> String {
    format!("__{test}_{}", uuid::Uuid::new_v4().simple())
}

fn options(start: StartFrom) -> ConsumerOptions {
    ConsumerOptions {
        start,
        session_timeout: Duration::from_secs(6),
        fetch_wait: Duration::ZERO,
    }
}

fn spec(partitions: u32) -> TopicSpec {
    TopicSpec {
        partitions,
        compacted: false,
    }
}

fn record(key: &str, value: &str, timestamp_ms: Option<i64>) -> ProduceRecord {
    ProduceRecord {
        key: Some(key.as_bytes().to_vec()),
        value: value.as_bytes().to_vec(),
        timestamp_ms,
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis(),
    )
    .expect("ms fit i64")
}

/// Polls until `want` records arrived or the deadline passed; returns what arrived.
async fn poll_until(consumer: &mut dyn Consumer, want: usize) -> Result<Vec<ConsumedRecord>> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut got = Vec::new();
    while got.len() < want && tokio::time::Instant::now() < deadline {
        got.extend(
            consumer
                .poll(want - got.len(), Duration::from_millis(500))
                .await?,
        );
    }
    Ok(got)
}

/// Polls `want` records, failing with what is missing when they do not all arrive.
async fn expect_records(consumer: &mut dyn Consumer, want: usize) -> Result<Vec<ConsumedRecord>> {
    let got = poll_until(consumer, want).await?;
    ensure!(
        got.len() == want,
        "expected {want} records within {DEADLINE:?}, got {}: {got:?}",
        got.len()
    );
    Ok(got)
}

/// Polls (the topic must be empty) until the members' assignments are disjoint, non-empty
/// and together cover `topic`'s `partitions`.
async fn wait_for_split(
    members: &mut [&mut Box<dyn Consumer>],
    topic: &str,
    partitions: u32,
) -> Result<()> {
    let all: BTreeSet<(String, u32)> = (0..partitions).map(|p| (topic.to_string(), p)).collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        for m in members.iter_mut() {
            let got = m.poll(10, Duration::from_millis(300)).await?;
            ensure!(
                got.is_empty(),
                "records on a topic that should be empty: {got:?}"
            );
        }
        let sets: Vec<BTreeSet<(String, u32)>> = members
            .iter()
            .map(|m| m.assignment().into_iter().collect())
            .collect();
        let union: BTreeSet<_> = sets.iter().flatten().cloned().collect();
        let total: usize = sets.iter().map(BTreeSet::len).sum();
        if sets.iter().all(|s| !s.is_empty()) && union == all && total == all.len() {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the group did not split {topic} between its members: {sets:?}");
        }
    }
}

fn positions_by_partition(positions: &[RecordPosition]) -> BTreeMap<u32, Vec<i64>> {
    let mut out: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
    for p in positions {
        out.entry(p.partition).or_default().push(p.offset);
    }
    out
}

fn commit_all(topic: &str, records: &[ConsumedRecord]) -> Vec<CommitOffset> {
    let mut next: BTreeMap<u32, i64> = BTreeMap::new();
    for r in records {
        let n = next.entry(r.partition).or_insert(0);
        *n = (*n).max(r.offset + 1);
    }
    next.into_iter()
        .map(|(partition, next_offset)| CommitOffset {
            topic: topic.to_string(),
            partition,
            next_offset,
        })
        .collect()
}

/// The test bodies, each taking the engine and a unique name for its topic and groups.
mod cases {
    use super::*;

    /// With a fetch wait, a poll that found fewer records than it asked for waits for
    /// more: two records produced 300 ms apart come in one batch (without it, the first
    /// alone).
    pub(crate) async fn fetch_wait_gathers_a_fuller_batch(
        log: Arc<dyn EventLog>,
        name: &str,
    ) -> Result<()> {
        log.create_topic(name, spec(1)).await?;
        let wait = ConsumerOptions {
            fetch_wait: Duration::from_secs(3),
            ..options(StartFrom::Earliest)
        };
        let mut consumer = log.subscribe(&format!("{name}-g"), &[name], wait).await?;
        // The first record: the member has joined and fetches once it is read.
        log.produce(name, vec![record("a", "first", None)]).await?;
        expect_records(consumer.as_mut(), 1).await?;

        let producer = {
            let log = Arc::clone(&log);
            let name = name.to_owned();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                log.produce(&name, vec![record("a", "second", None)])
                    .await?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                log.produce(&name, vec![record("a", "third", None)]).await?;
                Ok::<_, fleet_event_log::LogError>(())
            })
        };
        let batch = consumer.poll(10, DEADLINE).await?;
        producer.await??;
        let values: Vec<&[u8]> = batch.iter().map(|r| r.value.as_slice()).collect();
        ensure!(
            values == [b"second".as_slice(), b"third".as_slice()],
            "one batch of both records expected, got {:?}",
            values
                .iter()
                .map(|v| String::from_utf8_lossy(v))
                .collect::<Vec<_>>()
        );
        Ok(())
    }

    /// Keys, values, timestamps and positions survive the trip through the log.
    pub(crate) async fn produce_consume_roundtrip(
        log: Arc<dyn EventLog>,
        name: &str,
    ) -> Result<()> {
        log.create_topic(name, spec(3)).await?;
        let base = now_ms() - 86_400_000;
        let mut records: Vec<ProduceRecord> = (0..30)
            .map(|i| {
                record(
                    &format!("agent-{}", i % 7),
                    &format!("value-{i}"),
                    Some(base + i),
                )
            })
            .collect();
        records.push(ProduceRecord {
            key: None,
            value: b"no key".to_vec(),
            timestamp_ms: Some(base + 100),
        });
        records.push(ProduceRecord {
            key: Some(b"stamped-now".to_vec()),
            value: vec![0, 1, 2, 255],
            timestamp_ms: None,
        });
        records.push(ProduceRecord {
            key: Some(Vec::new()),
            value: Vec::new(),
            timestamp_ms: Some(base + 101),
        });
        let before = now_ms();
        let positions = log.produce(name, records.clone()).await?;
        let after = now_ms();
        ensure!(
            positions.len() == records.len(),
            "one position per record: {positions:?}"
        );

        let mut consumer = log
            .subscribe(&format!("{name}-g"), &[name], options(StartFrom::Earliest))
            .await?;
        let got = expect_records(consumer.as_mut(), records.len()).await?;
        let by_pos: HashMap<(u32, i64), &ConsumedRecord> =
            got.iter().map(|r| ((r.partition, r.offset), r)).collect();
        ensure!(
            by_pos.len() == records.len(),
            "duplicate positions in {got:?}"
        );
        for (rec, pos) in records.iter().zip(&positions) {
            let c = by_pos
                .get(&(pos.partition, pos.offset))
                .with_context(|| format!("no record at {pos:?}"))?;
            ensure!(&*c.topic == name, "topic {} != {name}", c.topic);
            ensure!(
                c.key == rec.key,
                "key at {pos:?}: {:?} != {:?}",
                c.key,
                rec.key
            );
            ensure!(c.value == rec.value, "value at {pos:?}");
            match rec.timestamp_ms {
                Some(ts) => ensure!(
                    c.timestamp_ms == ts,
                    "timestamp at {pos:?}: {} != {ts}",
                    c.timestamp_ms
                ),
                // Stamped by the log: any sane "now" (generous: clocks of shared machines).
                None => ensure!(
                    c.timestamp_ms >= before - 300_000 && c.timestamp_ms <= after + 300_000,
                    "timestamp {} is not about now ({before}..{after})",
                    c.timestamp_ms
                ),
            }
        }
        Ok(())
    }

    /// Keyed records land where Kafka's default partitioner puts them (murmur2).
    pub(crate) async fn keys_follow_kafka_partitioner(
        log: Arc<dyn EventLog>,
        name: &str,
    ) -> Result<()> {
        let partitions = 7;
        log.create_topic(name, spec(partitions)).await?;
        let mut keys: Vec<String> = (0..60).map(|i| format!("agent-{i:04}")).collect();
        // librdkafka's partitioner test keys, and Kafka's murmur2 test vectors.
        keys.extend(
            [
                "",
                "23456",
                "this is another string with more length to it perhaps",
                "hejsan",
                "21",
                "foobar",
            ]
            .map(String::from),
        );
        let mut records = Vec::new();
        for round in 0..3 {
            for key in &keys {
                records.push(record(key, &format!("{key}/{round}"), None));
            }
        }
        let positions = log.produce(name, records.clone()).await?;
        let mut seen: HashMap<&[u8], u32> = HashMap::new();
        for (rec, pos) in records.iter().zip(&positions) {
            let key = rec.key.as_deref().context("keyed")?;
            let want = partition_for_key(key, partitions);
            ensure!(
                pos.partition == want,
                "key {:?} went to partition {}, Kafka's murmur2 partitioner says {want}",
                String::from_utf8_lossy(key),
                pos.partition
            );
            if let Some(p) = seen.insert(key, pos.partition) {
                ensure!(p == pos.partition, "one key, two partitions");
            }
        }
        // Keys spread over more than one partition (sanity of the test itself).
        ensure!(seen.values().collect::<BTreeSet<_>>().len() > 1);
        Ok(())
    }

    /// Offsets are dense per partition and a partition is consumed in order.
    pub(crate) async fn per_partition_order(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(3)).await?;
        let mut all_positions = Vec::new();
        for batch in 0..5 {
            let records: Vec<ProduceRecord> = (0..40)
                .map(|i| record(&format!("k{}", i % 5), &format!("{}", batch * 40 + i), None))
                .collect();
            all_positions.extend(log.produce(name, records).await?);
        }
        for (partition, offsets) in positions_by_partition(&all_positions) {
            let want: Vec<i64> = (0..offsets.len() as i64).collect();
            ensure!(
                offsets == want,
                "partition {partition}: offsets not dense in produce order: {offsets:?}"
            );
        }
        let mut consumer = log
            .subscribe(&format!("{name}-g"), &[name], options(StartFrom::Earliest))
            .await?;
        let got = expect_records(consumer.as_mut(), 200).await?;
        let mut last: HashMap<u32, i64> = HashMap::new();
        let mut last_seq: HashMap<Vec<u8>, i64> = HashMap::new();
        for r in &got {
            let prev = last.insert(r.partition, r.offset).unwrap_or(-1);
            ensure!(
                r.offset == prev + 1,
                "partition {}: offset {} after {prev}",
                r.partition,
                r.offset
            );
            let seq: i64 = String::from_utf8(r.value.clone())?.parse()?;
            let key = r.key.clone().context("keyed")?;
            let prev_seq = last_seq.insert(key, seq).unwrap_or(-1);
            ensure!(
                seq > prev_seq,
                "one key's records out of order: {seq} after {prev_seq}"
            );
        }
        Ok(())
    }

    /// Big produce calls (many records, larger than any internal batch) read back densely,
    /// also when reading starts in the middle.
    pub(crate) async fn large_batches(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(2)).await?;
        let key = (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| partition_for_key(k.as_bytes(), 2) == 1)
            .context("a key for partition 1")?;
        let body = |i: usize| {
            let mut v = format!("{i:08}").into_bytes();
            v.resize(1000, b'.');
            v
        };
        let records: Vec<ProduceRecord> = (0..3000)
            .map(|i| ProduceRecord::keyed(key.clone(), body(i)))
            .collect();
        let positions = log.produce(name, records).await?;
        ensure!(
            positions.iter().map(|p| p.offset).eq(0..3000)
                && positions.iter().all(|p| p.partition == 1)
        );
        ensure!(log.end_offsets(name).await? == vec![0, 3000]);

        let mut consumer = log
            .subscribe(&format!("{name}-g"), &[name], options(StartFrom::Earliest))
            .await?;
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while got.len() < 3000 && tokio::time::Instant::now() < deadline {
            got.extend(consumer.poll(700, Duration::from_millis(500)).await?);
        }
        ensure!(got.len() == 3000, "read back {} of 3000", got.len());
        for (i, r) in got.iter().enumerate() {
            ensure!(
                r.offset == i as i64 && r.value == body(i),
                "record {i} is offset {} with another value",
                r.offset
            );
        }
        consumer.seek(name, 1, 1234).await?;
        let again = expect_records(consumer.as_mut(), 10).await?;
        ensure!(
            again[0].offset == 1234 && again[0].value == body(1234),
            "after seek to 1234: offset {}",
            again[0].offset
        );
        Ok(())
    }

    /// A committed offset is where the group's next member starts.
    pub(crate) async fn commit_then_resume(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(1)).await?;
        let group = format!("{name}-g");
        log.produce(
            name,
            (0..20)
                .map(|i| record("k", &format!("{i}"), None))
                .collect(),
        )
        .await?;
        ensure!(
            log.committed_offsets(&group, name).await? == vec![None],
            "nothing committed yet"
        );

        let mut first = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        let got = expect_records(first.as_mut(), 20).await?;
        let processed: Vec<ConsumedRecord> = got.into_iter().filter(|r| r.offset < 12).collect();
        ensure!(processed.len() == 12);
        first.commit(&commit_all(name, &processed)).await?;
        ensure!(log.committed_offsets(&group, name).await? == vec![Some(12)]);
        drop(first);

        let mut second = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        let got = expect_records(second.as_mut(), 8).await?;
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        ensure!(
            offsets == (12..20).collect::<Vec<_>>(),
            "resumed at {offsets:?}, want 12..20"
        );
        // Another group is independent.
        ensure!(
            log.committed_offsets(&format!("{name}-other"), name)
                .await?
                == vec![None]
        );
        Ok(())
    }

    /// Records a member read but did not commit go to the next member again.
    pub(crate) async fn uncommitted_redelivered(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(2)).await?;
        let group = format!("{name}-g");
        let positions = log
            .produce(
                name,
                (0..10)
                    .map(|i| record(&format!("k{i}"), &format!("{i}"), None))
                    .collect(),
            )
            .await?;
        let mut first = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        let got = expect_records(first.as_mut(), 10).await?;
        drop(first);
        let mut second = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        let again = expect_records(second.as_mut(), 10).await?;
        let a: BTreeSet<(u32, i64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
        let b: BTreeSet<(u32, i64)> = again.iter().map(|r| (r.partition, r.offset)).collect();
        let want: BTreeSet<(u32, i64)> =
            positions.iter().map(|p| (p.partition, p.offset)).collect();
        ensure!(
            a == want && b == want,
            "redelivery differs: first {a:?}, second {b:?}, produced {want:?}"
        );
        Ok(())
    }

    /// Two members split the partitions, see every record once, and the survivor takes over
    /// the partitions of a member that left.
    pub(crate) async fn members_split_partitions(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        let partitions = 4;
        log.create_topic(name, spec(partitions)).await?;
        let group = format!("{name}-g");
        let mut a = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        let mut b = log
            .subscribe(&group, &[name], options(StartFrom::Earliest))
            .await?;
        wait_for_split(&mut [&mut a, &mut b], name, partitions).await?;
        let owned_a: BTreeSet<u32> = a.assignment().into_iter().map(|(_, p)| p).collect();
        let owned_b: BTreeSet<u32> = b.assignment().into_iter().map(|(_, p)| p).collect();

        let positions = log
            .produce(
                name,
                (0..100)
                    .map(|i| record(&format!("agent-{i}"), &format!("{i}"), None))
                    .collect(),
            )
            .await?;
        let want: BTreeSet<(u32, i64)> =
            positions.iter().map(|p| (p.partition, p.offset)).collect();
        ensure!(
            positions.iter().any(|p| owned_a.contains(&p.partition))
                && positions.iter().any(|p| owned_b.contains(&p.partition))
        );

        let mut seen: Vec<(u32, i64)> = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while seen.len() < want.len() && tokio::time::Instant::now() < deadline {
            for (member, owned) in [(&mut a, &owned_a), (&mut b, &owned_b)] {
                let got = member.poll(100, Duration::from_millis(300)).await?;
                for r in &got {
                    ensure!(
                        owned.contains(&r.partition),
                        "record of partition {} at a member owning {owned:?}",
                        r.partition
                    );
                    seen.push((r.partition, r.offset));
                }
                if !got.is_empty() {
                    member.commit(&commit_all(name, &got)).await?;
                }
            }
        }
        let unique: BTreeSet<(u32, i64)> = seen.iter().copied().collect();
        ensure!(
            unique.len() == seen.len(),
            "a record was delivered twice: {seen:?}"
        );
        ensure!(
            unique == want,
            "members saw {} of {} records",
            unique.len(),
            want.len()
        );

        // B leaves: A takes over every partition, starting at B's committed offsets.
        drop(b);
        let more = log
            .produce(
                name,
                (0..20)
                    .map(|i| record(&format!("agent-{i}"), &format!("late-{i}"), None))
                    .collect(),
            )
            .await?;
        let got = expect_records(a.as_mut(), 20).await?;
        let got_set: BTreeSet<(u32, i64)> = got.iter().map(|r| (r.partition, r.offset)).collect();
        let more_set: BTreeSet<(u32, i64)> = more.iter().map(|p| (p.partition, p.offset)).collect();
        ensure!(
            got_set == more_set,
            "after the other member left: got {got_set:?}, want {more_set:?}"
        );
        Ok(())
    }

    /// Seek moves the position: back on an assigned partition, and right after subscribe.
    /// Two members subscribed to two topics of the same partition count get the same
    /// partition numbers of both, and each topic is split between them: one agent's
    /// records of every topic (all keyed by agent id) meet in one member.
    pub(crate) async fn multi_topic_members_are_co_partitioned(
        log: Arc<dyn EventLog>,
        name: &str,
    ) -> Result<()> {
        let partitions = 6;
        let (t1, t2) = (format!("{name}-metrics"), format!("{name}-agents"));
        log.create_topic(&t1, spec(partitions)).await?;
        log.create_topic(&t2, spec(partitions)).await?;
        let group = format!("{name}-g");
        let topics = [t1.as_str(), t2.as_str()];
        let mut a = log
            .subscribe(&group, &topics, options(StartFrom::Earliest))
            .await?;
        // The second member joins a little later, as a second instance would.
        for _ in 0..3 {
            let got = a.poll(10, Duration::from_millis(300)).await?;
            ensure!(got.is_empty(), "records on empty topics: {got:?}");
        }
        let mut b = log
            .subscribe(&group, &topics, options(StartFrom::Earliest))
            .await?;
        let per_topic = |m: &dyn Consumer, t: &str| -> BTreeSet<u32> {
            m.assignment()
                .into_iter()
                .filter(|(topic, _)| topic == t)
                .map(|(_, p)| p)
                .collect()
        };
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            for m in [&mut a, &mut b] {
                let got = m.poll(10, Duration::from_millis(300)).await?;
                ensure!(got.is_empty(), "records on empty topics: {got:?}");
            }
            let (a1, a2, b1, b2) = (
                per_topic(a.as_ref(), &t1),
                per_topic(a.as_ref(), &t2),
                per_topic(b.as_ref(), &t1),
                per_topic(b.as_ref(), &t2),
            );
            let complete = a1.len() + b1.len() == partitions as usize
                && a2.len() + b2.len() == partitions as usize
                && a1.is_disjoint(&b1)
                && a2.is_disjoint(&b2);
            if complete && !a1.is_empty() && !b1.is_empty() {
                ensure!(
                    a1 == a2 && b1 == b2,
                    "not co-partitioned: a holds {a1:?} of {t1} and {a2:?} of {t2}, b holds {b1:?} and {b2:?}"
                );
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("the group did not split both topics between its members: a {a1:?} / {a2:?}, b {b1:?} / {b2:?}");
            }
        }
    }

    pub(crate) async fn seek_redelivers(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(1)).await?;
        log.produce(
            name,
            (0..10)
                .map(|i| record("k", &format!("{i}"), None))
                .collect(),
        )
        .await?;
        let mut consumer = log
            .subscribe(&format!("{name}-g"), &[name], options(StartFrom::Earliest))
            .await?;
        expect_records(consumer.as_mut(), 10).await?;
        consumer.seek(name, 0, 4).await?;
        let got = expect_records(consumer.as_mut(), 6).await?;
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        ensure!(
            offsets == (4..10).collect::<Vec<_>>(),
            "after seek to 4: {offsets:?}"
        );
        let values: Vec<String> = got
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        ensure!(values[0] == "4", "record at offset 4 is {:?}", values[0]);

        // A seek before the first poll (Kafka: before the group assigned anything).
        let mut fresh = log
            .subscribe(&format!("{name}-g2"), &[name], options(StartFrom::Earliest))
            .await?;
        fresh.seek(name, 0, 7).await?;
        let got = expect_records(fresh.as_mut(), 3).await?;
        let offsets: Vec<i64> = got.iter().map(|r| r.offset).collect();
        ensure!(
            offsets == vec![7, 8, 9],
            "seek before the first poll: {offsets:?}"
        );

        // Out of range partitions are refused.
        match fresh.seek(name, 5, 0).await {
            Err(LogError::UnknownPartition {
                partition: 5,
                partitions: 1,
                ..
            }) => {}
            other => bail!("seek to partition 5 of 1: {other:?}"),
        }
        // ... and so are topics this member did not subscribe to.
        match fresh.seek(&format!("{name}-other"), 0, 0).await {
            Err(LogError::Config(_)) => {}
            other => bail!("seek on a topic not subscribed: {other:?}"),
        }
        Ok(())
    }

    /// First offset whose timestamp is at or after t, with timestamps out of order.
    pub(crate) async fn offsets_for_time(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(2)).await?;
        // Every record on partition 0 (partition 1 stays empty).
        let key = (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| partition_for_key(k.as_bytes(), 2) == 0)
            .context("a key for partition 0")?;
        let base = now_ms() - 86_400_000;
        let stamps = [1_000, 3_000, 2_000, 5_000, 4_000, 6_000];
        let records = stamps
            .iter()
            .map(|s| record(&key, &format!("{s}"), Some(base + s)))
            .collect();
        let positions = log.produce(name, records).await?;
        ensure!(positions.iter().all(|p| p.partition == 0));
        let cases = [
            (0, 0),
            (1_000, 0),
            (1_001, 1),
            (2_000, 1),
            (3_000, 1),
            (3_001, 3),
            (4_500, 3),
            (5_000, 3),
            (5_001, 5),
            (6_000, 5),
            (6_001, 6),
        ];
        for (t, want) in cases {
            let got = log.offsets_for_time(name, base + t).await?;
            ensure!(
                got == vec![want, 0],
                "offsets_for_time(base + {t}) = {got:?}, want [{want}, 0]"
            );
        }
        ensure!(log.offsets_for_time(name, i64::MAX / 2).await? == vec![6, 0]);
        Ok(())
    }

    /// End offsets count the records of each partition.
    pub(crate) async fn end_offsets_count(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(3)).await?;
        ensure!(log.end_offsets(name).await? == vec![0, 0, 0]);
        let mut counts = [0i64; 3];
        for round in 0..3 {
            let positions = log
                .produce(
                    name,
                    (0..25)
                        .map(|i| record(&format!("a{i}"), &format!("{round}"), None))
                        .collect(),
                )
                .await?;
            for p in positions {
                counts[p.partition as usize] += 1;
            }
        }
        let ends = log.end_offsets(name).await?;
        ensure!(
            ends == counts.to_vec(),
            "end offsets {ends:?}, produced per partition {counts:?}"
        );
        Ok(())
    }

    /// Creating an existing topic succeeds and keeps its partitions.
    pub(crate) async fn create_topic_idempotent(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(3)).await?;
        log.create_topic(name, spec(3)).await?;
        log.create_topic(name, spec(5)).await?;
        ensure!(log.partition_count(name).await? == 3);
        let compacted = format!("{name}-compacted");
        log.create_topic(
            &compacted,
            TopicSpec {
                partitions: 2,
                compacted: true,
            },
        )
        .await?;
        log.create_topic(
            &compacted,
            TopicSpec {
                partitions: 2,
                compacted: true,
            },
        )
        .await?;
        ensure!(log.partition_count(&compacted).await? == 2);
        let pos = log
            .produce(&compacted, vec![record("rule-1", "v1", None)])
            .await?;
        ensure!(pos.len() == 1);
        Ok(())
    }

    /// Every call on a missing topic says so.
    pub(crate) async fn unknown_topic(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        fn unknown<T: std::fmt::Debug>(
            what: &str,
            r: Result<T, LogError>,
            name: &str,
        ) -> Result<()> {
            match r {
                Err(LogError::UnknownTopic(t)) if t == name => Ok(()),
                other => bail!("{what} on a missing topic: {other:?}"),
            }
        }
        unknown("partition_count", log.partition_count(name).await, name)?;
        unknown(
            "produce",
            log.produce(name, vec![record("k", "v", None)]).await,
            name,
        )?;
        unknown("end_offsets", log.end_offsets(name).await, name)?;
        unknown(
            "offsets_for_time",
            log.offsets_for_time(name, 0).await,
            name,
        )?;
        unknown(
            "committed_offsets",
            log.committed_offsets("g", name).await,
            name,
        )?;
        unknown(
            "subscribe",
            log.subscribe(&format!("{name}-g"), &[name], options(StartFrom::Earliest))
                .await,
            name,
        )?;
        Ok(())
    }

    /// A consumer starting at Latest never sees what was there before it joined.
    pub(crate) async fn latest_skips_old(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(2)).await?;
        log.produce(
            name,
            (0..10)
                .map(|i| record(&format!("k{i}"), &format!("old-{i}"), None))
                .collect(),
        )
        .await?;
        let mut consumer = log
            .subscribe(&format!("{name}-g"), &[name], options(StartFrom::Latest))
            .await?;
        // Kafka resolves "latest" only once the group assigned the partitions: keep adding
        // new records until they flow, and check that no old one ever shows up.
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let mut round = 0;
        while got.is_empty() && tokio::time::Instant::now() < deadline {
            log.produce(
                name,
                (0..4)
                    .map(|i| record(&format!("k{i}"), &format!("new-{round}-{i}"), None))
                    .collect(),
            )
            .await?;
            round += 1;
            got.extend(consumer.poll(100, Duration::from_secs(1)).await?);
        }
        got.extend(consumer.poll(100, Duration::from_millis(500)).await?);
        ensure!(
            !got.is_empty(),
            "no new record arrived at a Latest consumer"
        );
        for r in &got {
            let v = String::from_utf8_lossy(&r.value);
            ensure!(
                v.starts_with("new-"),
                "a Latest consumer got {v:?}, written before it joined"
            );
        }
        Ok(())
    }

    /// Many concurrent produce calls (the gateway's shape) get distinct, dense offsets.
    pub(crate) async fn concurrent_producers(log: Arc<dyn EventLog>, name: &str) -> Result<()> {
        log.create_topic(name, spec(3)).await?;
        let mut tasks = Vec::new();
        for t in 0..32 {
            let log = Arc::clone(&log);
            let name = name.to_string();
            tasks.push(tokio::spawn(async move {
                let mut positions = Vec::new();
                for i in 0..10 {
                    positions.extend(
                        log.produce(
                            &name,
                            vec![record(&format!("agent-{t}"), &format!("{t}-{i}"), None)],
                        )
                        .await?,
                    );
                }
                anyhow::Ok(positions)
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            let positions = task.await??;
            // One producer's records keep their order on their partition.
            ensure!(positions
                .windows(2)
                .all(|w| w[0].partition == w[1].partition && w[0].offset < w[1].offset));
            all.extend(positions);
        }
        for (partition, mut offsets) in positions_by_partition(&all) {
            offsets.sort_unstable();
            let want: Vec<i64> = (0..offsets.len() as i64).collect();
            ensure!(
                offsets == want,
                "partition {partition}: offsets not distinct and dense: {offsets:?}"
            );
        }
        ensure!(all.len() == 320);
        Ok(())
    }
}

/// Declares one test per case and engine.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let dir = tempfile::tempdir()?;
                    let log = super::embedded_log(dir.path()).await?;
                    super::cases::$case(log, &super::unique(stringify!($case))).await
                }
            )*
        }

        #[cfg(feature = "kafka")]
        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let log = super::kafka_log().await?;
                    super::cases::$case(log, &super::unique(stringify!($case))).await
                }
            )*
        }
    };
}

conformance!(
    produce_consume_roundtrip,
    large_batches,
    keys_follow_kafka_partitioner,
    per_partition_order,
    commit_then_resume,
    uncommitted_redelivered,
    members_split_partitions,
    multi_topic_members_are_co_partitioned,
    seek_redelivers,
    offsets_for_time,
    end_offsets_count,
    create_topic_idempotent,
    unknown_topic,
    latest_skips_old,
    concurrent_producers,
    fetch_wait_gathers_a_fuller_batch,
);

async fn embedded_log(dir: &std::path::Path) -> Result<Arc<dyn EventLog>> {
    let url = format!("file://{}", dir.display());
    Ok(fleet_event_log::open(&url, &Default::default()).await?)
}

#[cfg(feature = "kafka")]
async fn kafka_log() -> Result<Arc<dyn EventLog>> {
    let brokers =
        std::env::var("FLEET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string());
    let log = fleet_event_log::kafka::KafkaLog::connect(&brokers, &Default::default())?;
    log.check_connection(Duration::from_secs(10))
        .await
        .with_context(|| {
            format!(
                "no Kafka broker answers at {brokers} (FLEET_KAFKA_BROKERS): start one with \
             `scripts/services.sh up`"
            )
        })?;
    Ok(Arc::new(log))
}

/// What only the embedded engine promises: durability across restarts, one process per
/// data directory.
mod embedded_only {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_and_offsets_survive_reopen() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let name = unique("reopen");
        let group = format!("{name}-g");
        let base = now_ms() - 86_400_000;
        let (positions, ends, commits) = {
            let log = embedded_log(dir.path()).await?;
            log.create_topic(&name, spec(3)).await?;
            let records = (0..50)
                .map(|i| record(&format!("agent-{}", i % 9), &format!("{i}"), Some(base + i)))
                .collect();
            let positions = log.produce(&name, records).await?;
            let mut consumer = log
                .subscribe(&group, &[&name], options(StartFrom::Earliest))
                .await?;
            let got = expect_records(consumer.as_mut(), 50).await?;
            let processed: Vec<ConsumedRecord> = got.into_iter().filter(|r| r.offset < 5).collect();
            let commits = commit_all(&name, &processed);
            consumer.commit(&commits).await?;
            (positions, log.end_offsets(&name).await?, commits)
            // consumer and log dropped here: the process "restarts"
        };

        let log = embedded_log(dir.path()).await?;
        ensure!(log.partition_count(&name).await? == 3);
        ensure!(
            log.end_offsets(&name).await? == ends,
            "end offsets changed across reopen"
        );
        let mut want_committed = vec![None; 3];
        for c in &commits {
            want_committed[c.partition as usize] = Some(c.next_offset);
        }
        let committed = log.committed_offsets(&group, &name).await?;
        ensure!(
            committed == want_committed,
            "committed {committed:?}, want {want_committed:?}"
        );
        let remaining: i64 = ends
            .iter()
            .zip(&committed)
            .map(|(e, c)| e - c.unwrap_or(0))
            .sum();

        // Every record is still there, with its data.
        let mut fresh = log
            .subscribe(
                &format!("{name}-fresh"),
                &[&name],
                options(StartFrom::Earliest),
            )
            .await?;
        let got = expect_records(fresh.as_mut(), 50).await?;
        let got_set: BTreeSet<(u32, i64, i64)> = got
            .iter()
            .map(|r| (r.partition, r.offset, r.timestamp_ms))
            .collect();
        let want: BTreeSet<(u32, i64, i64)> = positions
            .iter()
            .enumerate()
            .map(|(i, p)| (p.partition, p.offset, base + i as i64))
            .collect();
        ensure!(got_set == want);

        // The group resumes at its committed offsets.
        let mut resumed = log
            .subscribe(&group, &[&name], options(StartFrom::Earliest))
            .await?;
        let rest = expect_records(resumed.as_mut(), usize::try_from(remaining)?).await?;
        ensure!(
            rest.iter().all(|r| r.offset >= 5),
            "resumed below the committed offset"
        );

        // Offsets continue densely and the time index still answers.
        let more = log
            .produce(
                &name,
                (0..9)
                    .map(|i| record(&format!("agent-{i}"), "after", Some(base + 1_000)))
                    .collect(),
            )
            .await?;
        for p in &more {
            ensure!(
                p.offset >= ends[p.partition as usize],
                "offset {p:?} reused after reopen"
            );
        }
        let at = log.offsets_for_time(&name, base + 1_000).await?;
        for (partition, offset) in at.iter().enumerate() {
            ensure!(
                *offset == ends[partition],
                "offsets_for_time after reopen: {at:?}, ends were {ends:?}"
            );
        }
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn second_open_of_a_directory_fails_clearly() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let log = embedded_log(dir.path()).await?;
        match embedded_log(dir.path()).await {
            Err(e) => {
                let e = e.downcast::<LogError>()?;
                let LogError::Config(message) = &e else {
                    bail!("wrong error kind: {e:?}")
                };
                ensure!(
                    message.contains("in use by another process"),
                    "unclear message: {message}"
                );
                ensure!(
                    message.contains(&dir.path().display().to_string()),
                    "message names no directory: {message}"
                );
            }
            Ok(_) => bail!("a second open of one data directory succeeded"),
        }
        drop(log);
        // Once the first is closed the directory opens again.
        embedded_log(dir.path()).await?;
        Ok(())
    }
}
