//! The consumer runtime against real event logs (real topics, groups and commits).
//!
//! * `embedded::*` and `kafka::*`: one body per case (`cases`), run on the embedded log and
//!   on Kafka at `FLEET_KAFKA_BROKERS` (default `127.0.0.1:9092`; when no broker answers
//!   these tests FAIL, saying how to start one: `scripts/services.sh up`): the order of
//!   output, dead letters and commit; low-water-mark commits across a crash and the restart
//!   that resumes from the mark; no mark yet, no commit; ticks.
//! * `embedded_only::*`: assignment callbacks with seeks, throw-away groups, shutdown, the
//!   seek that wins over a poll, metrics, a batch waiting for the schema registry without
//!   blocking the runtime's thread.
//!
//! Every case uses its own topics (`__{case}_{random}.input`, `.output`) and groups.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
use fleet_schemas::codec::Wire;
use fleet_schemas::{topics, DeadLetter, Heartbeat};
use tokio::sync::watch;

/// Which event log a case runs on.
#[derive(Debug, Clone, Copy)]
enum Engine {
    /// The embedded log in a fresh temporary directory.
    Embedded,
    /// Kafka at `FLEET_KAFKA_BROKERS` (default `127.0.0.1:9092`): fails when no broker
    /// answers.
    Kafka,
}

/// A log with fresh input and output topics (and the catalog's dead-letter topic); every
/// name is new, so cases run in parallel on a shared broker.
struct Env {
    log: Arc<dyn EventLog>,
    input: String,
    output: String,
    /// Prefix of this case's consumer groups.
    name: String,
    _dir: Option<tempfile::TempDir>,
}

impl Env {
    async fn new(engine: Engine, case: &str, input_partitions: u32) -> Env {
        let (log, dir) = match engine {
            Engine::Embedded => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = dir.path().to_str().expect("utf-8").to_owned();
                let log = fleet_event_log::open(&url, &Default::default())
                    .await
                    .expect("embedded log");
                (log, Some(dir))
            }
            Engine::Kafka => (kafka_log().await, None),
        };
        let name = format!("__{case}_{}", uuid::Uuid::new_v4().simple());
        let (input, output) = (format!("{name}.input"), format!("{name}.output"));
        let dead = topics::find(topics::DEADLETTER).expect("in the catalog");
        for (topic, partitions) in [
            (input.as_str(), input_partitions),
            (output.as_str(), 1),
            (topics::DEADLETTER, dead.partitions),
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
        Env {
            log,
            input,
            output,
            name,
            _dir: dir,
        }
    }

    /// A consumer group of this case.
    fn group(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    /// Writes `values` to `partition` of the input topic.
    async fn produce(&self, partition: u32, values: &[&str]) {
        // Keys that land on the wanted partition (murmur2, as Kafka places them).
        let n = self
            .log
            .partition_count(&self.input)
            .await
            .expect("partitions");
        let key = (0..)
            .map(|i| format!("key-{i}"))
            .find(|k| fleet_event_log::partition_for_key(k.as_bytes(), n) == partition)
            .expect("a key");
        let records = values
            .iter()
            .map(|v| ProduceRecord::keyed(key.clone(), v.as_bytes().to_vec()))
            .collect();
        self.log
            .produce(&self.input, records)
            .await
            .expect("produce");
    }

    /// The offsets `group` committed on the input topic, per partition.
    async fn committed(&self, group: &str) -> Vec<Option<i64>> {
        self.log
            .committed_offsets(group, &self.input)
            .await
            .expect("committed")
    }

    /// The values of the output topic.
    async fn output(&self) -> Vec<String> {
        let mut out = Vec::new();
        read_to_end(self.log.as_ref(), &Wire::plain(), &self.output, |r| {
            out.push(value(r))
        })
        .await
        .expect("read");
        out
    }

    /// The dead letters of records of this case's input topic.
    async fn dead_letters(&self) -> Vec<DeadLetter> {
        let mut dead = Vec::new();
        read_to_end(self.log.as_ref(), &Wire::plain(), topics::DEADLETTER, |r| {
            let d = Wire::plain()
                .decode_known::<DeadLetter>(&r.value)
                .expect("a dead letter");
            if d.source_topic == self.input {
                dead.push(d);
            }
        })
        .await
        .expect("read");
        dead
    }
}

async fn kafka_log() -> Arc<dyn EventLog> {
    let brokers =
        std::env::var("FLEET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let log = fleet_event_log::kafka::KafkaLog::connect(&brokers, &Default::default())
        .expect("a Kafka client");
    if let Err(e) = log.check_connection(Duration::from_secs(10)).await {
        panic!(
            "no Kafka broker answers at {brokers} (FLEET_KAFKA_BROKERS): start one with \
             `scripts/services.sh up` ({e})"
        );
    }
    Arc::new(log)
}

/// Waits (at most two minutes, so a broken runtime fails instead of hanging) until `done`.
async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..2400 {
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
    /// Agent ids of the heartbeats decoded (`decode_heartbeats`).
    decoded: Vec<String>,
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
    /// On shutdown, commit everything read (a processor making the rest durable).
    commit_on_shutdown: bool,
    /// Decode every record as a heartbeat (with the dead letters' wire).
    decode_heartbeats: bool,
    input: String,
    output: String,
}

impl TestProcessor {
    /// A processor of `env`'s topics whose dead letters are those of `consumer` in `group`.
    async fn new(env: &Env, consumer: &str, group: &str) -> (TestProcessor, Arc<Mutex<Seen>>) {
        let dead = DeadLetters::open(env.log.clone(), Wire::plain(), consumer, group)
            .await
            .expect("dead letters");
        TestProcessor::with_dead_letters(env, dead)
    }

    /// A processor of `env`'s topics with these dead letters.
    fn with_dead_letters(env: &Env, dead: DeadLetters) -> (TestProcessor, Arc<Mutex<Seen>>) {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let p = TestProcessor {
            seen: seen.clone(),
            dead,
            echo: false,
            mark: None,
            seek_to: None,
            tick_once: false,
            commit_on_shutdown: false,
            decode_heartbeats: false,
            input: env.input.clone(),
            output: env.output.clone(),
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
                a.seek(&self.input, *p, offset).await?;
            }
        }
        self.seen().assignments.push((added, removed));
        Ok(Output::new())
    }

    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let mut out = Output::new();
        for r in batch {
            self.seen().records.push((r.partition, r.offset, value(r)));
            if self.decode_heartbeats {
                if let Some(hb) = self.dead.decode_or_note::<Heartbeat>(r) {
                    self.seen().decoded.push(hb.agent_id);
                }
            } else if value(r) == "bad" {
                self.dead.note(r, Reason::process("a bad record"));
            } else if self.echo {
                out.write(
                    &self.output,
                    vec![ProduceRecord::keyed("k", r.value.clone())],
                );
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
            out.write(
                &self.output,
                vec![ProduceRecord::keyed("tick", b"tick".to_vec())],
            );
        }
        out
    }

    async fn on_shutdown(&mut self) -> Output {
        if !self.commit_on_shutdown {
            return Output::new();
        }
        let mut next: BTreeMap<u32, i64> = BTreeMap::new();
        for (p, o, _) in &self.seen().records {
            let n = next.entry(*p).or_default();
            *n = (*n).max(o + 1);
        }
        let offsets = next
            .into_iter()
            .map(|(partition, next_offset)| CommitOffset {
                topic: self.input.clone(),
                partition,
                next_offset,
            })
            .collect();
        Output::upto(offsets)
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

/// Declares one test per case and engine (`embedded::case`, `kafka::case`).
macro_rules! on_every_engine {
    ($($case:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Engine::Embedded).await
                }
            )*
        }

        mod kafka {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::cases::$case(super::Engine::Kafka).await
                }
            )*
        }
    };
}

on_every_engine!(
    output_is_written_then_dead_letters_then_the_offsets_are_committed,
    a_reported_low_water_mark_is_committed_and_a_restarted_member_resumes_from_it,
    a_processor_reporting_no_mark_yet_commits_nothing,
    ticks_run_on_idle_polls_and_their_output_is_written,
    a_clean_stop_commits_what_the_processor_names_on_shutdown,
);

/// One body per behaviour, run on every engine.
mod cases {
    use super::*;

    pub(super) async fn output_is_written_then_dead_letters_then_the_offsets_are_committed(
        engine: Engine,
    ) {
        let env = Env::new(engine, "order", 1).await;
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log: Arc<dyn EventLog> = Arc::new(Spy {
            inner: env.log.clone(),
            calls: calls.clone(),
        });
        env.produce(0, &["a", "bad", "b"]).await;
        let group = env.group("order");
        // The dead letters go through the spy too.
        let dead = DeadLetters::open(log.clone(), Wire::plain(), "order-test", &group)
            .await
            .expect("dead letters");
        let (mut p, seen) = TestProcessor::with_dead_letters(&env, dead);
        p.echo = true;
        let running = Running::start(&log, Settings::group(&group, &[&env.input]), p, None).await;
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
                format!("produce {} 2", env.output),
                format!("produce {} 1", topics::DEADLETTER),
                format!("commit {}/0=3", env.input),
            ],
            "records handled: {:?}",
            seen.lock().expect("lock").records
        );
        assert_eq!(env.committed(&group).await, vec![Some(3)]);
        assert_eq!(env.output().await, ["a", "b"]);
        let dead = env.dead_letters().await;
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert_eq!(
            (dead[0].consumer.as_str(), dead[0].source_offset),
            ("order-test", 1)
        );
    }

    /// The low-water-mark commit mode (a processor that makes its work durable later than
    /// it reads): exactly the mark is committed, never what was read past it, and the next
    /// member of the group reads the records past the mark again.
    pub(super) async fn a_reported_low_water_mark_is_committed_and_a_restarted_member_resumes_from_it(
        engine: Engine,
    ) {
        let env = Env::new(engine, "low_water", 1).await;
        let values: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        env.produce(0, &values).await;
        let group = env.group("low-water");
        let settings = || Settings::group(&group, &[&env.input]);

        // Reads everything, reports that offsets below 4 are durable; crashes.
        let (mut p, seen) = TestProcessor::new(&env, "lwm-test", &group).await;
        p.mark = Some(Some(4));
        let running = Running::start(&env.log, settings(), p, None).await;
        eventually("all ten records read", async || {
            seen.lock().expect("lock").records.len() >= 10
        })
        .await;
        eventually("the mark committed", async || {
            env.committed(&group).await == vec![Some(4)]
        })
        .await;
        // A few more passes of the loop, in which nothing more may be committed.
        more_passes(&seen).await;
        running.crash().await;
        assert_eq!(
            env.committed(&group).await,
            vec![Some(4)],
            "exactly the mark, not the 10 read"
        );

        // The next member of the group reads from the mark again.
        let (p, seen) = TestProcessor::new(&env, "lwm-test", &group).await;
        let running = Running::start(&env.log, settings(), p, None).await;
        eventually("the records past the mark read again", async || {
            seen.lock().expect("lock").records.len() >= 6
        })
        .await;
        eventually("what the second member read committed", async || {
            env.committed(&group).await == vec![Some(10)]
        })
        .await;
        running.stop().await;
        assert_eq!(offsets(&seen), (4..10).collect::<Vec<i64>>());
        assert_eq!(
            env.committed(&group).await,
            vec![Some(10)],
            "what the second member read (the default commit)"
        );
    }

    pub(super) async fn a_processor_reporting_no_mark_yet_commits_nothing(engine: Engine) {
        let env = Env::new(engine, "no_mark", 1).await;
        env.produce(0, &["a", "b", "c"]).await;
        let group = env.group("no-mark");
        let (mut p, seen) = TestProcessor::new(&env, "nomark-test", &group).await;
        p.mark = Some(None);
        let running =
            Running::start(&env.log, Settings::group(&group, &[&env.input]), p, None).await;
        eventually("the records read", async || {
            seen.lock().expect("lock").records.len() == 3
        })
        .await;
        more_passes(&seen).await;
        running.stop().await;
        assert_eq!(env.committed(&group).await, vec![None]);
    }

    /// A low-water-mark processor makes the rest durable on a clean stop and names it:
    /// the runtime commits it, so the next member replays nothing.
    pub(super) async fn a_clean_stop_commits_what_the_processor_names_on_shutdown(engine: Engine) {
        let env = Env::new(engine, "on_shutdown", 1).await;
        env.produce(0, &["a", "b", "c", "d"]).await;
        let group = env.group("on-shutdown");
        let (mut p, seen) = TestProcessor::new(&env, "shutdown-test", &group).await;
        p.mark = Some(Some(1));
        p.commit_on_shutdown = true;
        let running =
            Running::start(&env.log, Settings::group(&group, &[&env.input]), p, None).await;
        eventually("the mark committed", async || {
            env.committed(&group).await == vec![Some(1)]
        })
        .await;
        more_passes(&seen).await;
        assert_eq!(
            env.committed(&group).await,
            vec![Some(1)],
            "only the mark while running"
        );
        running.stop().await;
        assert_eq!(
            env.committed(&group).await,
            vec![Some(4)],
            "what on_shutdown named, after the stop"
        );
    }

    pub(super) async fn ticks_run_on_idle_polls_and_their_output_is_written(engine: Engine) {
        let env = Env::new(engine, "ticks", 1).await;
        let group = env.group("ticks");
        let (mut p, seen) = TestProcessor::new(&env, "tick-test", &group).await;
        p.tick_once = true;
        let running =
            Running::start(&env.log, Settings::group(&group, &[&env.input]), p, None).await;
        eventually("a few idle ticks", async || {
            seen.lock().expect("lock").ticks >= 3
        })
        .await;
        running.stop().await;
        assert_eq!(env.output().await, ["tick"]);
        assert!(seen.lock().expect("lock").records.is_empty());
        assert_eq!(env.committed(&group).await, vec![None]);
    }
}

/// What the embedded log's synchronous group membership makes easy to set up: rebalances
/// between members, a member holding partitions without polling, the process-wide metrics
/// recorder.
mod embedded_only {
    use super::*;

    /// A schema registry that cannot be asked until `up` is set.
    #[derive(Debug)]
    struct FlakyRegistry {
        up: Arc<AtomicBool>,
        calls: Arc<AtomicUsize>,
    }

    #[async_trait]
    impl fleet_schemas::codec::SchemaLookup for FlakyRegistry {
        async fn schema_by_id(&self, id: u32) -> Result<String, fleet_schemas::codec::LookupError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if !self.up.load(Ordering::SeqCst) {
                return Err(fleet_schemas::codec::LookupError {
                    message: format!("schema {id}: the registry is unreachable"),
                    retriable: true,
                });
            }
            let current = fleet_schemas::codec::Catalog::get()
                .current(<Heartbeat as fleet_schemas::Record>::FULL_NAME)
                .expect("current");
            Ok(fleet_schemas::codec::AVSC_FILES
                .iter()
                .find(|(f, _)| *f == current.file)
                .expect("avsc")
                .1
                .to_owned())
        }
    }

    /// One thread: while the runtime waits for the registry to give a batch's writer
    /// schema, another task on the same thread runs (and only it brings the registry up).
    /// A runtime that blocked its thread until the registry answered would never let it.
    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_waits_for_the_schema_registry_without_blocking_the_thread() {
        let env = Env::new(Engine::Embedded, "registry_wait", 1).await;
        let (up, calls) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let lookup = Arc::new(FlakyRegistry {
            up: up.clone(),
            calls: calls.clone(),
        });
        let wire = Wire::registry(
            fleet_schemas::codec::RegistryFraming::new([], Some(lookup)).expect("framing"),
        );
        // A heartbeat another producer wrote with its own schema id.
        let hb = fleet_schemas::fixtures::heartbeat("t1", "agent-7", 1_763_900_000_000_000, 1);
        let bytes = <Heartbeat as fleet_schemas::Record>::codec()
            .encode_confluent(4242, &hb)
            .expect("encode");
        env.log
            .produce(&env.input, vec![ProduceRecord::keyed("agent-7", bytes)])
            .await
            .expect("produce");
        let group = env.group("registry-wait");
        let dead = DeadLetters::open(env.log.clone(), wire, "registry-test", &group)
            .await
            .expect("dead letters");
        let (mut p, seen) = TestProcessor::with_dead_letters(&env, dead);
        p.decode_heartbeats = true;
        let running =
            Running::start(&env.log, Settings::group(&group, &[&env.input]), p, None).await;
        // Runs on the test's thread only while the runtime awaits.
        let other = tokio::spawn({
            let calls = calls.clone();
            async move {
                while calls.load(Ordering::SeqCst) < 2 {
                    tokio::task::yield_now().await;
                }
                up.store(true, Ordering::SeqCst);
            }
        });
        eventually("the heartbeat decoded", async || {
            !seen.lock().expect("lock").decoded.is_empty()
        })
        .await;
        other.await.expect("the other task");
        running.stop().await;
        assert_eq!(seen.lock().expect("lock").decoded, ["agent-7"]);
        assert!(calls.load(Ordering::SeqCst) >= 3, "asked until it answered");
        assert!(
            env.dead_letters().await.is_empty(),
            "waiting for the registry is not a dead letter"
        );
        assert_eq!(env.committed(&group).await, vec![Some(1)]);
    }

    #[tokio::test]
    async fn assignment_changes_reach_the_processor_and_its_seeks_replay_what_it_takes() {
        let env = Env::new(Engine::Embedded, "assign", 2).await;
        env.produce(0, &["p0-a", "p0-b"]).await;
        env.produce(1, &["p1-a", "p1-b"]).await;
        let group = env.group("assign");
        let settings = || Settings::group(&group, &[&env.input]);

        // A takes both partitions (and seeks them to the start: nothing committed changes
        // that).
        let (mut a, seen_a) = TestProcessor::new(&env, "assign-test", &group).await;
        a.seek_to = Some(0);
        let running_a = Running::start(&env.log, settings(), a, None).await;
        eventually("A read both partitions", async || {
            seen_a.lock().expect("lock").records.len() >= 4
        })
        .await;
        eventually("A committed both", async || {
            env.committed(&group).await == vec![Some(2), Some(2)]
        })
        .await;

        // B joins: range assignment gives it partition 1, which A gives up.
        let (mut b, seen_b) = TestProcessor::new(&env, "assign-test", &group).await;
        b.seek_to = Some(0);
        let running_b = Running::start(&env.log, settings(), b, None).await;
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
    async fn a_throwaway_group_never_commits() {
        let env = Env::new(Engine::Embedded, "throwaway", 1).await;
        env.produce(0, &["a", "bad"]).await;
        let settings = Settings::throwaway("runtime-test", &[&env.input]);
        let group = settings.group_name().to_owned();
        assert!(group.starts_with("fleet-runtime-test-"), "{group}");
        let (p, seen) = TestProcessor::new(&env, "throwaway-test", &group).await;
        let running = Running::start(&env.log, settings, p, None).await;
        eventually("both records read", async || {
            seen.lock().expect("lock").records.len() == 2
        })
        .await;
        running.stop().await;
        assert_eq!(env.committed(&group).await, vec![None]);
        // Its dead letters are written all the same.
        assert_eq!(env.dead_letters().await.len(), 1);
    }

    #[tokio::test]
    async fn shutdown_stops_the_loop_clears_readiness_and_leaves_the_group() {
        let env = Env::new(Engine::Embedded, "shutdown", 2).await;
        let group = env.group("shutdown");
        let ready = Arc::new(AtomicBool::new(false));
        let (p, seen) = TestProcessor::new(&env, "shutdown-test", &group).await;
        let running = Running::start(
            &env.log,
            Settings::group(&group, &[&env.input]),
            p,
            Some(ready.clone()),
        )
        .await;
        eventually("ready", async || ready.load(Ordering::Relaxed)).await;
        env.produce(0, &["x"]).await;
        eventually("the record read", async || {
            seen.lock().expect("lock").records.len() == 1
        })
        .await;
        let processor = running.stop().await;
        assert!(!ready.load(Ordering::Relaxed), "not ready once stopped");
        assert_eq!(processor.seen().records.len(), 1);
        // The stopped member left: a new one holds every partition.
        let other = env
            .log
            .subscribe(&group, &[&env.input], ConsumerOptions::default())
            .await
            .expect("subscribe");
        assert_eq!(
            other.assignment(),
            vec![(env.input.clone(), 0), (env.input.clone(), 1)]
        );
        assert_eq!(env.committed(&group).await, vec![Some(1), None]);
    }

    #[tokio::test]
    async fn records_polled_before_a_seek_on_taking_a_partition_are_not_handed_over() {
        let env = Env::new(Engine::Embedded, "seek_wins", 1).await;
        env.produce(0, &["r0", "r1", "r2", "r3"]).await;
        let group = env.group("seek-wins");
        // Another member holds the partition, with offset 2 committed.
        let mut first = env
            .log
            .subscribe(&group, &[&env.input], ConsumerOptions::default())
            .await
            .expect("subscribe");
        first
            .commit(&[CommitOffset {
                topic: env.input.clone(),
                partition: 0,
                next_offset: 2,
            }])
            .await
            .expect("commit");
        // This member gets nothing until the first leaves; then its poll reads from the
        // committed offset, and its processor seeks the partition back to the start.
        let (mut p, seen) = TestProcessor::new(&env, "seek-test", &group).await;
        p.seek_to = Some(0);
        let running =
            Running::start(&env.log, Settings::group(&group, &[&env.input]), p, None).await;
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
        let env = Env::new(Engine::Embedded, "metrics", 1).await;
        env.produce(0, &["a", "b"]).await;
        let group = env.group("metrics");
        let (p, seen) = TestProcessor::new(&env, "metrics-test", &group).await;
        let settings = Settings::group(&group, &[&env.input]).batch_histogram(
            "fleet_test_batch_seconds",
            "processor",
            "metrics-test",
        );
        let running = Running::start(&env.log, settings, p, None).await;
        eventually("the batch handled", async || {
            seen.lock().expect("lock").records.len() == 2
        })
        .await;
        more_passes(&seen).await;
        running.stop().await;
        let rendered = prometheus.render();
        let lag = format!(
            "{}{{group=\"{group}\",topic=\"{}\"}} 0",
            fleet_consumer::metrics::CONSUMER_LAG,
            env.input
        );
        assert!(rendered.contains(&lag), "{lag} in:\n{rendered}");
        assert!(
            rendered.contains("fleet_test_batch_seconds_count{processor=\"metrics-test\"} 1"),
            "{rendered}"
        );
    }
}
