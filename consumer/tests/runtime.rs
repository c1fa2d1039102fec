//! The consumer runtime against the embedded event log (real topics, groups and commits):
//! the order of output, dead letters and commit; low-water-mark commits across a crash;
//! assignment callbacks with seeks; ticks; throw-away groups; shutdown.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::log::read_to_end;
use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{
    CommitOffset, ConsumedRecord, Consumer, ConsumerOptions, EventLog, ProduceRecord,
    RecordPosition, TopicSpec,
};
use fleet_schemas::{codec, topics, DeadLetter};
use tokio::sync::watch;

const INPUT: &str = "test.input";
const OUTPUT: &str = "test.output";

/// An embedded log in a fresh directory with the input, output and dead-letter topics.
async fn log(input_partitions: u32) -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("embedded log");
    for (topic, partitions) in [
        (INPUT, input_partitions),
        (OUTPUT, 1),
        (topics::DEADLETTER, 1),
    ] {
        log.create_topic(
            topic,
            TopicSpec {
                partitions,
                compacted: false,
            },
        )
        .await
        .expect("topic");
    }
    (dir, log)
}

/// Writes `values` to `partition` of the input topic.
async fn produce(log: &dyn EventLog, partition: u32, values: &[&str]) {
    // Keys that land on the wanted partition (murmur2, as Kafka places them).
    let n = log.partition_count(INPUT).await.expect("partitions");
    let key = (0..)
        .map(|i| format!("key-{i}"))
        .find(|k| fleet_event_log::partition_for_key(k.as_bytes(), n) == partition)
        .expect("a key");
    let records = values
        .iter()
        .map(|v| ProduceRecord::keyed(key.clone(), v.as_bytes().to_vec()))
        .collect();
    log.produce(INPUT, records).await.expect("produce");
}

async fn committed(log: &dyn EventLog, group: &str) -> Vec<Option<i64>> {
    log.committed_offsets(group, INPUT)
        .await
        .expect("committed")
}

/// Waits (at most a minute, so a broken runtime fails instead of hanging) until `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..1200 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting: {what}");
}

/// The offsets of the records a test processor handled, in order.
fn offsets(seen: &Mutex<Seen>) -> Vec<i64> {
    seen.lock()
        .expect("lock")
        .records
        .iter()
        .map(|r| r.1)
        .collect()
}

/// Waits for a few more passes of the runtime's loop (in which nothing else may happen).
async fn more_passes(seen: &Mutex<Seen>) {
    let ticks = seen.lock().expect("lock").ticks;
    eventually("more passes", async || {
        seen.lock().expect("lock").ticks >= ticks + 3
    })
    .await;
}

fn value(r: &ConsumedRecord) -> String {
    String::from_utf8_lossy(&r.value).into_owned()
}

/// What a test processor saw, shared with the test.
#[derive(Debug, Default)]
struct Seen {
    /// (partition, offset, value) of every record handled, in order.
    records: Vec<(u32, i64, String)>,
    /// (added, removed) partitions of every assignment taken.
    assignments: Vec<(BTreeSet<u32>, BTreeSet<u32>)>,
    ticks: u64,
}

/// A processor whose behaviour each test sets.
#[derive(Debug)]
struct TestProcessor {
    seen: Arc<Mutex<Seen>>,
    dead: DeadLetters,
    /// Echo every record to the output topic.
    echo: bool,
    /// Report this low-water mark (next offset on every partition read, at most this);
    /// `Some(None)`: report that nothing is durable yet; `None`: commit what was read.
    mark: Option<Option<i64>>,
    /// Seek every partition taken back to this offset.
    seek_to: Option<i64>,
    /// Write one record to the output topic on the first tick.
    tick_once: bool,
}

impl TestProcessor {
    fn new(dead: DeadLetters) -> (TestProcessor, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let p = TestProcessor {
            seen: seen.clone(),
            dead,
            echo: false,
            mark: None,
            seek_to: None,
            tick_once: false,
        };
        (p, seen)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("lock")
    }
}

impl Processor for TestProcessor {
    async fn on_assigned(&mut self, a: &mut Assignment<'_>) -> anyhow::Result<Output> {
        let of = |set: BTreeSet<(String, u32)>| set.into_iter().map(|(_, p)| p).collect();
        let (added, removed): (BTreeSet<u32>, BTreeSet<u32>) = (of(a.added()), of(a.removed()));
        if let Some(offset) = self.seek_to {
            for p in &added {
                a.seek(INPUT, *p, offset).await?;
            }
        }
        self.seen().assignments.push((added, removed));
        Ok(Output::new())
    }

    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let mut out = Output::new();
        for r in batch {
            self.seen().records.push((r.partition, r.offset, value(r)));
            if value(r) == "bad" {
                self.dead.note(r, Reason::process("a bad record"));
            } else if self.echo {
                out.write(OUTPUT, vec![ProduceRecord::keyed("k", r.value.clone())]);
            }
        }
        if let Some(mark) = self.mark {
            let offsets = fleet_consumer::log::next_offsets(batch)
                .into_iter()
                .filter_map(|mut c| {
                    c.next_offset = c.next_offset.min(mark?);
                    Some(c)
                })
                .collect();
            out.commit_upto(offsets);
        }
        out
    }

    async fn on_tick(&mut self, _handled: usize) -> Output {
        let mut out = Output::new();
        let first = {
            let mut seen = self.seen();
            seen.ticks += 1;
            seen.ticks == 1
        };
        if self.tick_once && first {
            out.write(OUTPUT, vec![ProduceRecord::keyed("tick", b"tick".to_vec())]);
        }
        out
    }
}

/// A running runtime: stop it cleanly, or crash it (the task dropped mid-loop).
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<TestProcessor>,
}

impl Running {
    async fn start(
        log: &Arc<dyn EventLog>,
        settings: Settings,
        processor: TestProcessor,
        ready: Option<Arc<AtomicBool>>,
    ) -> Running {
        let mut runtime = ConsumerRuntime::subscribe(log.clone(), settings, processor.dead.clone())
            .await
            .expect("subscribe");
        if let Some(flag) = ready {
            runtime = runtime.readiness(flag);
        }
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut processor = processor;
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            runtime.run(&mut processor, shutdown).await;
            processor
        });
        Running { stop, task }
    }

    async fn stop(self) -> TestProcessor {
        let _ = self.stop.send(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the runtime stops on shutdown")
            .expect("the runtime task")
    }

    async fn crash(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn dead_letters(log: &Arc<dyn EventLog>, name: &str, group: &str) -> DeadLetters {
    DeadLetters::open(log.clone(), name, group)
        .await
        .expect("dead letters")
}

/// Records what the log is asked to do, in order, passing everything to the real log.
#[derive(Debug)]
struct Spy {
    inner: Arc<dyn EventLog>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[derive(Debug)]
struct SpyConsumer {
    inner: Box<dyn Consumer>,
    calls: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl EventLog for Spy {
    fn engine(&self) -> &'static str {
        self.inner.engine()
    }
    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> fleet_event_log::Result<()> {
        self.inner.create_topic(topic, spec).await
    }
    async fn partition_count(&self, topic: &str) -> fleet_event_log::Result<u32> {
        self.inner.partition_count(topic).await
    }
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> fleet_event_log::Result<Vec<RecordPosition>> {
        let n = records.len();
        let r = self.inner.produce(topic, records).await;
        self.calls
            .lock()
            .expect("lock")
            .push(format!("produce {topic} {n}"));
        r
    }
    async fn end_offsets(&self, topic: &str) -> fleet_event_log::Result<Vec<i64>> {
        self.inner.end_offsets(topic).await
    }
    async fn offsets_for_time(&self, topic: &str, ts: i64) -> fleet_event_log::Result<Vec<i64>> {
        self.inner.offsets_for_time(topic, ts).await
    }
    async fn committed_offsets(
        &self,
        group: &str,
        topic: &str,
    ) -> fleet_event_log::Result<Vec<Option<i64>>> {
        self.inner.committed_offsets(group, topic).await
    }
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> fleet_event_log::Result<Box<dyn Consumer>> {
        let inner = self.inner.subscribe(group, topics, options).await?;
        Ok(Box::new(SpyConsumer {
            inner,
            calls: self.calls.clone(),
        }))
    }
}

#[async_trait]
impl Consumer for SpyConsumer {
    async fn poll(
        &mut self,
        max: usize,
        timeout: Duration,
    ) -> fleet_event_log::Result<Vec<ConsumedRecord>> {
        self.inner.poll(max, timeout).await
    }
    async fn commit(&mut self, offsets: &[CommitOffset]) -> fleet_event_log::Result<()> {
        let r = self.inner.commit(offsets).await;
        let what: Vec<String> = offsets
            .iter()
            .map(|c| format!("{}/{}={}", c.topic, c.partition, c.next_offset))
            .collect();
        self.calls
            .lock()
            .expect("lock")
            .push(format!("commit {}", what.join(",")));
        r
    }
    async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> fleet_event_log::Result<()> {
        self.inner.seek(topic, partition, offset).await
    }
    fn assignment(&self) -> Vec<(String, u32)> {
        self.inner.assignment()
    }
}

#[tokio::test]
async fn output_is_written_then_dead_letters_then_the_offsets_are_committed() {
    let (_dir, real) = log(1).await;
    let calls = Arc::new(Mutex::new(Vec::new()));
    let log: Arc<dyn EventLog> = Arc::new(Spy {
        inner: real.clone(),
        calls: calls.clone(),
    });
    produce(real.as_ref(), 0, &["a", "bad", "b"]).await;
    let group = "order";
    let (mut p, seen) = TestProcessor::new(dead_letters(&log, "order-test", group).await);
    p.echo = true;
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("the batch committed", async || {
        calls
            .lock()
            .expect("lock")
            .iter()
            .any(|c| c.starts_with("commit"))
    })
    .await;
    running.stop().await;

    // One batch of three: the two echoes, then the one dead letter, then the commit.
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(
        calls,
        vec![
            format!("produce {OUTPUT} 2"),
            format!("produce {} 1", topics::DEADLETTER),
            format!("commit {INPUT}/0=3"),
        ],
        "records handled: {:?}",
        seen.lock().expect("lock").records
    );
    assert_eq!(committed(real.as_ref(), group).await, vec![Some(3)]);
    let mut echoed = Vec::new();
    read_to_end(real.as_ref(), OUTPUT, |r| echoed.push(value(r)))
        .await
        .expect("read");
    assert_eq!(echoed, ["a", "b"]);
    let mut dead = Vec::new();
    read_to_end(real.as_ref(), topics::DEADLETTER, |r| {
        dead.push(codec::decode::<DeadLetter>(&r.value).expect("a dead letter"))
    })
    .await
    .expect("read");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].source_topic.as_str(), dead[0].source_offset),
        (INPUT, 1)
    );
}

#[tokio::test]
async fn a_reported_low_water_mark_is_committed_and_records_past_it_come_again_after_a_crash() {
    let (_dir, log) = log(1).await;
    let values: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    let values: Vec<&str> = values.iter().map(String::as_str).collect();
    produce(log.as_ref(), 0, &values).await;
    let group = "low-water";

    // Reads everything, reports that offsets below 4 are durable; crashes.
    let (mut p, seen) = TestProcessor::new(dead_letters(&log, "lwm-test", group).await);
    p.mark = Some(Some(4));
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("all ten records read", async || {
        seen.lock().expect("lock").records.len() >= 10
    })
    .await;
    eventually("the mark committed", async || {
        committed(log.as_ref(), group).await == vec![Some(4)]
    })
    .await;
    // A few more passes of the loop, in which nothing more may be committed.
    more_passes(&seen).await;
    running.crash().await;
    assert_eq!(
        committed(log.as_ref(), group).await,
        vec![Some(4)],
        "exactly the mark, not the 10 read"
    );

    // The next member of the group reads from the mark again.
    let (p, seen) = TestProcessor::new(dead_letters(&log, "lwm-test", group).await);
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("the records past the mark read again", async || {
        seen.lock().expect("lock").records.len() >= 6
    })
    .await;
    running.stop().await;
    assert_eq!(offsets(&seen), (4..10).collect::<Vec<i64>>());
    assert_eq!(
        committed(log.as_ref(), group).await,
        vec![Some(10)],
        "what the second member read (the default commit)"
    );
}

#[tokio::test]
async fn a_processor_reporting_no_mark_yet_commits_nothing() {
    let (_dir, log) = log(1).await;
    produce(log.as_ref(), 0, &["a", "b", "c"]).await;
    let group = "no-mark";
    let (mut p, seen) = TestProcessor::new(dead_letters(&log, "nomark-test", group).await);
    p.mark = Some(None);
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("the records read and a tick after them", async || {
        let s = seen.lock().expect("lock");
        s.records.len() == 3 && s.ticks >= 2
    })
    .await;
    running.stop().await;
    assert_eq!(committed(log.as_ref(), group).await, vec![None]);
}

#[tokio::test]
async fn assignment_changes_reach_the_processor_and_its_seeks_replay_what_it_takes() {
    let (_dir, log) = log(2).await;
    produce(log.as_ref(), 0, &["p0-a", "p0-b"]).await;
    produce(log.as_ref(), 1, &["p1-a", "p1-b"]).await;
    let group = "assign";
    let settings = || Settings::group(group, &[INPUT]);

    // A takes both partitions (and seeks them to the start: nothing committed changes that).
    let (mut a, seen_a) = TestProcessor::new(dead_letters(&log, "assign-test", group).await);
    a.seek_to = Some(0);
    let running_a = Running::start(&log, settings(), a, None).await;
    eventually("A read both partitions", async || {
        seen_a.lock().expect("lock").records.len() >= 4
    })
    .await;
    eventually("A committed both", async || {
        committed(log.as_ref(), group).await == vec![Some(2), Some(2)]
    })
    .await;

    // B joins: range assignment gives it partition 1, which A gives up.
    let (mut b, seen_b) = TestProcessor::new(dead_letters(&log, "assign-test", group).await);
    b.seek_to = Some(0);
    let running_b = Running::start(&log, settings(), b, None).await;
    eventually("A gave up partition 1", async || {
        seen_a.lock().expect("lock").assignments.len() >= 2
    })
    .await;
    eventually("B replayed partition 1 from its seek", async || {
        seen_b.lock().expect("lock").records.len() >= 2
    })
    .await;
    // B leaves: A takes partition 1 back and replays it from its seek.
    running_b.stop().await;
    eventually("A took partition 1 back and replayed it", async || {
        let s = seen_a.lock().expect("lock");
        s.assignments.len() >= 3 && s.records.len() >= 6
    })
    .await;
    running_a.stop().await;

    let a = seen_a.lock().expect("lock");
    assert_eq!(
        a.assignments,
        vec![
            ([0, 1].into(), BTreeSet::new()),
            (BTreeSet::new(), [1].into()),
            ([1].into(), BTreeSet::new()),
        ]
    );
    let p1: Vec<(i64, String)> = a
        .records
        .iter()
        .filter(|r| r.0 == 1)
        .map(|r| (r.1, r.2.clone()))
        .collect();
    assert_eq!(
        p1,
        vec![
            (0, "p1-a".to_owned()),
            (1, "p1-b".to_owned()),
            (0, "p1-a".to_owned()),
            (1, "p1-b".to_owned()),
        ],
        "partition 1 read, then read again after the seek on taking it back"
    );
    let b = seen_b.lock().expect("lock");
    assert_eq!(b.assignments, vec![([1].into(), BTreeSet::new())]);
    assert_eq!(
        b.records.iter().map(|r| (r.0, r.1)).collect::<Vec<_>>(),
        vec![(1, 0), (1, 1)]
    );
}

#[tokio::test]
async fn ticks_run_on_idle_polls_and_their_output_is_written() {
    let (_dir, log) = log(1).await;
    let group = "ticks";
    let (mut p, seen) = TestProcessor::new(dead_letters(&log, "tick-test", group).await);
    p.tick_once = true;
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("a few idle ticks", async || {
        seen.lock().expect("lock").ticks >= 3
    })
    .await;
    running.stop().await;
    let mut written = Vec::new();
    read_to_end(log.as_ref(), OUTPUT, |r| written.push(value(r)))
        .await
        .expect("read");
    assert_eq!(written, ["tick"]);
    assert!(seen.lock().expect("lock").records.is_empty());
    assert_eq!(committed(log.as_ref(), group).await, vec![None]);
}

#[tokio::test]
async fn a_throwaway_group_never_commits() {
    let (_dir, log) = log(1).await;
    produce(log.as_ref(), 0, &["a", "bad"]).await;
    let settings = Settings::throwaway("runtime-test", &[INPUT]);
    let group = settings.group_name().to_owned();
    assert!(group.starts_with("fleet-runtime-test-"), "{group}");
    let (p, seen) = TestProcessor::new(dead_letters(&log, "throwaway-test", &group).await);
    let running = Running::start(&log, settings, p, None).await;
    eventually("both records read", async || {
        seen.lock().expect("lock").records.len() == 2
    })
    .await;
    running.stop().await;
    assert_eq!(committed(log.as_ref(), &group).await, vec![None]);
    // Its dead letters are written all the same.
    let mut dead = 0;
    read_to_end(log.as_ref(), topics::DEADLETTER, |_| dead += 1)
        .await
        .expect("read");
    assert_eq!(dead, 1);
}

#[tokio::test]
async fn shutdown_stops_the_loop_clears_readiness_and_leaves_the_group() {
    let (_dir, log) = log(2).await;
    let group = "shutdown";
    let ready = Arc::new(AtomicBool::new(false));
    let (p, seen) = TestProcessor::new(dead_letters(&log, "shutdown-test", group).await);
    let running = Running::start(
        &log,
        Settings::group(group, &[INPUT]),
        p,
        Some(ready.clone()),
    )
    .await;
    eventually("ready", async || ready.load(Ordering::Relaxed)).await;
    produce(log.as_ref(), 0, &["x"]).await;
    eventually("the record read", async || {
        seen.lock().expect("lock").records.len() == 1
    })
    .await;
    let processor = running.stop().await;
    assert!(!ready.load(Ordering::Relaxed), "not ready once stopped");
    assert_eq!(processor.seen().records.len(), 1);
    // The stopped member left: a new one holds every partition.
    let other = log
        .subscribe(group, &[INPUT], ConsumerOptions::default())
        .await
        .expect("subscribe");
    assert_eq!(
        other.assignment(),
        vec![(INPUT.to_owned(), 0), (INPUT.to_owned(), 1)]
    );
    assert_eq!(committed(log.as_ref(), group).await, vec![Some(1), None]);
}

#[tokio::test]
async fn records_polled_before_a_seek_on_taking_a_partition_are_not_handed_over() {
    let (_dir, log) = log(1).await;
    produce(log.as_ref(), 0, &["r0", "r1", "r2", "r3"]).await;
    let group = "seek-wins";
    // Another member holds the partition, with offset 2 committed.
    let mut first = log
        .subscribe(group, &[INPUT], ConsumerOptions::default())
        .await
        .expect("subscribe");
    first
        .commit(&[CommitOffset {
            topic: INPUT.to_owned(),
            partition: 0,
            next_offset: 2,
        }])
        .await
        .expect("commit");
    // This member gets nothing until the first leaves; then its poll reads from the
    // committed offset, and its processor seeks the partition back to the start.
    let (mut p, seen) = TestProcessor::new(dead_letters(&log, "seek-test", group).await);
    p.seek_to = Some(0);
    let running = Running::start(&log, Settings::group(group, &[INPUT]), p, None).await;
    eventually("the runtime polled without a partition", async || {
        seen.lock().expect("lock").ticks >= 2
    })
    .await;
    assert!(seen.lock().expect("lock").assignments.is_empty());
    drop(first);
    eventually("the partition taken and read", async || {
        seen.lock().expect("lock").records.len() >= 4
    })
    .await;
    more_passes(&seen).await;
    running.stop().await;
    assert_eq!(
        offsets(&seen),
        [0, 1, 2, 3],
        "each record once, from the seek on"
    );
}

#[tokio::test]
async fn the_lag_gauge_and_the_batch_histogram_are_reported() {
    static RECORDER: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    let prometheus = RECORDER.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("recorder")
    });
    let (_dir, log) = log(1).await;
    produce(log.as_ref(), 0, &["a", "b"]).await;
    let group = "metrics-test";
    let (p, seen) = TestProcessor::new(dead_letters(&log, "metrics-test", group).await);
    let settings = Settings::group(group, &[INPUT]).batch_histogram(
        "fleet_test_batch_seconds",
        "processor",
        "metrics-test",
    );
    let running = Running::start(&log, settings, p, None).await;
    eventually("the batch handled", async || {
        seen.lock().expect("lock").records.len() == 2
    })
    .await;
    more_passes(&seen).await;
    running.stop().await;
    let rendered = prometheus.render();
    let lag = format!(
        "{}{{group=\"{group}\",topic=\"{INPUT}\"}} 0",
        fleet_consumer::metrics::CONSUMER_LAG
    );
    assert!(rendered.contains(&lag), "{lag} in:\n{rendered}");
    assert!(
        rendered.contains("fleet_test_batch_seconds_count{processor=\"metrics-test\"} 1"),
        "{rendered}"
    );
}
