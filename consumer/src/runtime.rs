//! The consumer loop, written once: [`ConsumerRuntime`] runs a [`Processor`].
//!
//! One pass of the loop:
//!
//! 1. poll (waiting at most the poll timeout; a failed poll is retried with the
//!    [`Backoff`]);
//! 2. if the member's assignment differs from the one last taken, call
//!    [`Processor::on_assigned`] (it may seek the partitions it took); a failure is retried
//!    with the back-off before anything else happens, so no batch is handled on partitions
//!    the processor has not taken. The seek wins: records of a partition it sought that
//!    the poll returned before the seek are dropped (reading goes on from the seek);
//! 3. resolve the writer schemas of a non-empty batch with the dead letters' [`Wire`] (a
//!    Confluent schema id not fetched yet is asked of the registry, waiting asynchronously
//!    while it cannot be asked: [`resolve_retrying`]), then hand the batch to
//!    [`Processor::handle`], which decodes synchronously ([`Wire::decode_known`]; records it
//!    cannot use are noted as dead letters), and deliver its [`Output`];
//! 4. call [`Processor::on_tick`] (told how many records `handle` got) and deliver its
//!    output (timers, idle work);
//! 5. refresh the `fleet_consumer_lag` gauge and record the batch's duration.
//!
//! Delivering an output is always in this order: its records are written to their topics
//! until the log acknowledged every one ([`produce_until_written`]), then the dead letters
//! noted are written ([`DeadLetters::flush`]), then the offsets are committed. So no offset
//! is committed past a record whose effects or dead letter are not written. What is
//! committed is the output's [`Commit`]: by default the next offsets of the records handed
//! to that call, or exactly the offsets the processor names (a low-water mark below what it
//! has read, for a processor that makes its work durable later; none: nothing yet). A
//! failed commit is logged and not retried: the records after the last commit are read
//! again, which processors tolerate (idempotent output, deterministic ids).
//!
//! A member of a throw-away group ([`Settings::throwaway`]: followers that replay a window
//! and follow a topic) never commits and reports no lag.
//!
//! Shutdown: when the shutdown future resolves during a poll, a back-off wait or while a
//! batch's writer schemas are resolved, [`run`] returns; a batch being handled is finished first (its output written and committed).
//! The consumer leaves its group when the runtime is dropped.
//!
//! [`run`]: ConsumerRuntime::run

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleet_event_log::{
    CommitOffset, ConsumedRecord, Consumer, ConsumerOptions, EventLog, LogError, ProduceRecord,
    StartFrom,
};
use fleet_schemas::{Record, Wire};
use tracing::Instrument as _;

use crate::backoff::Backoff;
use crate::deadletter::{resolve_retrying, DeadLetters};
use crate::log::{next_offsets, produce_until_written, to_records, LagGauge};

/// A partition: (topic, partition number).
pub type TopicPartition = (String, u32);

/// What a processor does with the records of its group; [`ConsumerRuntime`] calls it.
///
/// Handlers note the records they cannot use on the [`DeadLetters`] the runtime was given
/// (a clone of it), and return what to write and what to commit as an [`Output`]; the
/// runtime writes, flushes the dead letters and commits, in that order.
pub trait Processor: Send {
    /// The member's assignment changed: called before the first poll when the member
    /// already holds partitions, and after every poll that changed them. The processor
    /// rebuilds or drops the state of the partitions added or removed, and may seek the
    /// added ones ([`Assignment::seek`]). An error is logged and the call retried with the
    /// back-off (with the assignment of that moment) before any batch is handled.
    fn on_assigned(
        &mut self,
        assignment: &mut Assignment<'_>,
    ) -> impl Future<Output = anyhow::Result<Output>> + Send {
        let _ = assignment;
        async { Ok(Output::new()) }
    }

    /// Handles a polled batch (never empty). [`Commit::Read`] (the default) commits the
    /// batch once the output and the dead letters are written.
    fn handle(&mut self, batch: &[ConsumedRecord]) -> impl Future<Output = Output> + Send;

    /// Called after every poll, with or without records (so at least every poll timeout),
    /// once the batch's output is committed; `handled` is how many records were handed to
    /// [`handle`](Processor::handle) (0: an idle poll). For work driven by time rather
    /// than by records (timers, following other topics, reporting a low-water mark), and
    /// for the work a processor does before each batch, on idle polls. Commits only what
    /// its output names.
    fn on_tick(&mut self, handled: usize) -> impl Future<Output = Output> + Send {
        let _ = handled;
        async { Output::new() }
    }

    /// Called once when shutdown came, after the last batch was delivered: a processor
    /// that commits less than it read makes the rest durable here and names what may be
    /// committed now (so a clean restart replays nothing). Commits only what its output
    /// names.
    fn on_shutdown(&mut self) -> impl Future<Output = Output> + Send {
        async { Output::new() }
    }
}

/// What to commit once an [`Output`] is written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Commit {
    /// The next offsets of the records handed to the call that returned the output: the
    /// whole batch for [`Processor::handle`], nothing for the other calls.
    #[default]
    Read,
    /// Exactly these next offsets (a low-water mark: the processor has read further but
    /// made only this much durable); empty: nothing yet.
    Upto(Vec<CommitOffset>),
}

/// Records to write before the offsets are committed, what to commit, and what to do once
/// the records are written.
#[derive(Default)]
pub struct Output {
    writes: Vec<(String, Vec<ProduceRecord>)>,
    commit: Commit,
    written: Vec<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output")
            .field(
                "writes",
                &self
                    .writes
                    .iter()
                    .map(|(t, r)| (t, r.len()))
                    .collect::<Vec<_>>(),
            )
            .field("commit", &self.commit)
            .field("when_written", &self.written.len())
            .finish()
    }
}

impl Output {
    /// Nothing to write; commits what was read ([`Commit::Read`]).
    pub fn new() -> Output {
        Output::default()
    }

    /// Nothing to write; commits exactly `offsets` (none: nothing), see [`Commit::Upto`].
    pub fn upto(offsets: Vec<CommitOffset>) -> Output {
        let mut out = Output::new();
        out.commit_upto(offsets);
        out
    }

    /// Writes `records` to `topic` (after the records added before, in order).
    pub fn write(&mut self, topic: &str, records: Vec<ProduceRecord>) -> &mut Output {
        if records.is_empty() {
            return self;
        }
        match self.writes.iter_mut().find(|(t, _)| t == topic) {
            Some((_, existing)) => existing.extend(records),
            None => self.writes.push((topic.to_owned(), records)),
        }
        self
    }

    /// Writes records to their topic ([`Record::TOPIC`]), keyed and stamped as
    /// [`to_records`] does (with `wire`).
    pub fn write_records<T: Record>(&mut self, wire: &Wire, records: &[T]) -> &mut Output {
        self.write(T::TOPIC, to_records(wire, records))
    }

    /// Commits `commit` instead of what was read.
    pub fn commit(&mut self, commit: Commit) -> &mut Output {
        self.commit = commit;
        self
    }

    /// Commits exactly `offsets` (none: nothing), see [`Commit::Upto`].
    pub fn commit_upto(&mut self, offsets: Vec<CommitOffset>) -> &mut Output {
        self.commit(Commit::Upto(offsets))
    }

    /// Runs `f` once every record of this output is written (before the commit): for
    /// counters and logs of what was written.
    pub fn when_written(&mut self, f: impl FnOnce() + Send + 'static) -> &mut Output {
        self.written.push(Box::new(f));
        self
    }

    /// Adds the writes and callbacks of `other` after this output's; `other`'s commit
    /// replaces this one's when it is [`Commit::Upto`].
    pub fn append(&mut self, other: Output) -> &mut Output {
        for (topic, records) in other.writes {
            self.write(&topic, records);
        }
        self.written.extend(other.written);
        if matches!(other.commit, Commit::Upto(_)) {
            self.commit = other.commit;
        }
        self
    }

    /// Records to write, over all topics.
    pub fn records(&self) -> usize {
        self.writes.iter().map(|(_, r)| r.len()).sum()
    }

    /// What will be committed.
    pub fn commit_point(&self) -> &Commit {
        &self.commit
    }
}

/// The assignment handed to [`Processor::on_assigned`]: what the member holds now, what
/// it held when the processor last took its assignment, and seeks on it.
#[derive(Debug)]
pub struct Assignment<'a> {
    consumer: &'a mut dyn Consumer,
    previous: &'a BTreeSet<TopicPartition>,
    current: BTreeSet<TopicPartition>,
    /// Partitions sought.
    sought: BTreeSet<TopicPartition>,
}

impl Assignment<'_> {
    /// The partitions held now.
    pub fn current(&self) -> &BTreeSet<TopicPartition> {
        &self.current
    }

    /// The partitions held when the processor last took its assignment (empty at start).
    pub fn previous(&self) -> &BTreeSet<TopicPartition> {
        self.previous
    }

    /// The partitions of `topic` held now.
    pub fn partitions(&self, topic: &str) -> BTreeSet<u32> {
        self.current
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, p)| *p)
            .collect()
    }

    /// Held now, not before.
    pub fn added(&self) -> BTreeSet<TopicPartition> {
        self.current.difference(self.previous).cloned().collect()
    }

    /// Held before, not now.
    pub fn removed(&self) -> BTreeSet<TopicPartition> {
        self.previous.difference(&self.current).cloned().collect()
    }

    /// Moves the member's position on a partition: the next poll reads it from `offset`.
    /// Records of the partition that the last poll returned (before this seek) are not
    /// handed to the processor.
    pub async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), LogError> {
        self.sought.insert((topic.to_owned(), partition));
        self.consumer.seek(topic, partition, offset).await
    }
}

/// The histogram a batch's handling time goes to, with its labels.
#[derive(Debug, Clone)]
struct BatchHistogram {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
}

/// How a [`ConsumerRuntime`] consumes.
#[derive(Debug, Clone)]
pub struct Settings {
    group: String,
    topics: Vec<String>,
    start: StartFrom,
    session_timeout: Duration,
    fetch_wait: Duration,
    batch_size: usize,
    poll_timeout: Duration,
    throwaway: bool,
    lag_every: Duration,
    histogram: Option<BatchHistogram>,
}

impl Settings {
    fn with(group: String, topics: &[&str], throwaway: bool) -> Settings {
        let options = ConsumerOptions::default();
        Settings {
            group,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            start: options.start,
            session_timeout: options.session_timeout,
            fetch_wait: options.fetch_wait,
            batch_size: 500,
            poll_timeout: Duration::from_millis(500),
            throwaway,
            lag_every: Duration::from_secs(5),
            histogram: None,
        }
    }

    /// A member of consumer group `group` on `topics`: commits its offsets and reports its
    /// lag. Defaults: from the earliest record where nothing is committed, session timeout
    /// 10 s, batches of up to 500 records, polls of at most 500 ms.
    pub fn group(group: &str, topics: &[&str]) -> Settings {
        Settings::with(group.to_owned(), topics, false)
    }

    /// A member of a throw-away group `fleet-<what>-<uuid>` on `topics`: never commits and
    /// reports no lag (its name is new each run). For followers that seek where they start
    /// ([`ConsumerRuntime::seek`]) and follow.
    pub fn throwaway(what: &str, topics: &[&str]) -> Settings {
        let group = format!("fleet-{what}-{}", uuid::Uuid::new_v4());
        Settings::with(group, topics, true)
    }

    /// Where partitions without a committed offset start.
    pub fn start(mut self, start: StartFrom) -> Settings {
        self.start = start;
        self
    }

    /// The group session timeout.
    pub fn session_timeout(mut self, timeout: Duration) -> Settings {
        self.session_timeout = timeout;
        self
    }

    /// How long a poll may wait for a fuller batch ([`ConsumerOptions::fetch_wait`]; zero,
    /// the default: hand over what is there at once).
    pub fn fetch_wait(mut self, wait: Duration) -> Settings {
        self.fetch_wait = wait;
        self
    }

    /// Most records per batch.
    pub fn batch_size(mut self, max: usize) -> Settings {
        self.batch_size = max.max(1);
        self
    }

    /// Longest wait of one poll (and so the longest time between two ticks).
    pub fn poll_timeout(mut self, timeout: Duration) -> Settings {
        self.poll_timeout = timeout;
        self
    }

    /// Records each batch's handling time (handle, write, dead letters, commit) in the
    /// histogram `name` labelled `label = value` (`fleet_processor_batch_seconds`,
    /// `processor = "ticketer"`).
    pub fn batch_histogram(
        mut self,
        name: &'static str,
        label: &'static str,
        value: &str,
    ) -> Settings {
        self.histogram = Some(BatchHistogram {
            name,
            labels: vec![(label, value.to_owned())],
        });
        self
    }

    /// The consumer group.
    pub fn group_name(&self) -> &str {
        &self.group
    }
}

/// A group member running a [`Processor`] (see the module docs for the loop).
#[derive(Debug)]
pub struct ConsumerRuntime {
    log: Arc<dyn EventLog>,
    settings: Settings,
    consumer: Box<dyn Consumer>,
    dead: DeadLetters,
    /// The assignment the processor last took.
    taken: BTreeSet<TopicPartition>,
    /// What this member committed last, per partition (the same offsets are not committed
    /// again).
    committed: HashMap<TopicPartition, i64>,
    lag: Option<LagGauge>,
    ready: Option<Arc<AtomicBool>>,
}

impl ConsumerRuntime {
    /// Joins the group of `settings`. `dead` are the processor's dead letters (a clone of
    /// those its handlers note on): the runtime writes them before each commit.
    pub async fn subscribe(
        log: Arc<dyn EventLog>,
        settings: Settings,
        dead: DeadLetters,
    ) -> Result<ConsumerRuntime, LogError> {
        let topics: Vec<&str> = settings.topics.iter().map(String::as_str).collect();
        let options = ConsumerOptions {
            start: settings.start,
            session_timeout: settings.session_timeout,
            fetch_wait: settings.fetch_wait,
        };
        let consumer = log.subscribe(&settings.group, &topics, options).await?;
        let lag = (!settings.throwaway).then(|| LagGauge::new(&settings.group, settings.lag_every));
        Ok(ConsumerRuntime {
            log,
            settings,
            consumer,
            dead,
            taken: BTreeSet::new(),
            committed: HashMap::new(),
            lag,
            ready: None,
        })
    }

    /// Sets `flag` once the runtime consumes (subscribed, first assignment taken) and
    /// clears it when [`run`](ConsumerRuntime::run) returns: a `/readyz` input.
    pub fn readiness(mut self, flag: Arc<AtomicBool>) -> ConsumerRuntime {
        self.ready = Some(flag);
        self
    }

    /// The consumer group.
    pub fn group(&self) -> &str {
        &self.settings.group
    }

    /// Moves the position on a partition before the first poll (a partition not assigned
    /// yet takes it when it is): where a follower starts.
    pub async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<(), LogError> {
        self.consumer.seek(topic, partition, offset).await
    }

    /// Runs `processor` until `shutdown` resolves (see the module docs).
    pub async fn run<P: Processor>(
        mut self,
        processor: &mut P,
        shutdown: impl Future<Output = ()> + Send,
    ) {
        tokio::pin!(shutdown);
        let consumer = self.dead.consumer().to_owned();
        // The embedded log assigns at subscribe; Kafka with the first polls.
        if self
            .take_assignment(processor, &mut shutdown)
            .await
            .is_some()
        {
            self.set_ready(true);
            tracing::info!(%consumer, group = %self.settings.group, "Consuming.");
            self.consume(processor, &mut shutdown).await;
            let output = processor.on_shutdown().await;
            self.deliver(output, &[]).await;
        }
        self.set_ready(false);
        tracing::info!(%consumer, group = %self.settings.group, "Stopped consuming.");
    }

    fn set_ready(&self, ready: bool) {
        if let Some(flag) = &self.ready {
            flag.store(ready, Ordering::Relaxed);
        }
    }

    async fn consume<P: Processor>(
        &mut self,
        processor: &mut P,
        shutdown: &mut (impl Future<Output = ()> + Unpin + Send),
    ) {
        let mut poll_backoff = Backoff::new();
        loop {
            let polled = tokio::select! {
                biased;
                _ = &mut *shutdown => return,
                b = self.consumer.poll(self.settings.batch_size, self.settings.poll_timeout) => b,
            };
            let batch = match polled {
                Ok(batch) => {
                    poll_backoff.reset();
                    batch
                }
                Err(e) => {
                    let wait = poll_backoff.next_delay();
                    tracing::warn!(consumer = %self.dead.consumer(), error = %e, attempt = poll_backoff.attempt(), "Poll failed; retrying.");
                    tokio::select! {
                        biased;
                        _ = &mut *shutdown => return,
                        _ = tokio::time::sleep(wait) => continue,
                    }
                }
            };
            let Some(sought) = self.take_assignment(processor, shutdown).await else {
                return;
            };
            let batch = if sought.is_empty() {
                batch
            } else {
                // The seek wins: these records come again from where it points.
                batch
                    .into_iter()
                    .filter(|r| !sought.contains(&(r.topic.to_string(), r.partition)))
                    .collect()
            };
            if !batch.is_empty() {
                let started = Instant::now();
                let span = tracing::info_span!(
                    "consume_batch",
                    consumer = %self.dead.consumer(),
                    records = batch.len()
                );
                let handled = async {
                    // Writer schemas first (waits while the registry cannot be asked), so
                    // the handler decodes synchronously. Stopping meanwhile handles and
                    // commits nothing of the batch.
                    tokio::select! {
                        biased;
                        _ = &mut *shutdown => return false,
                        _ = resolve_retrying(self.dead.wire(), &batch) => {}
                    }
                    let output = processor.handle(&batch).await;
                    self.deliver(output, &batch).await;
                    true
                }
                .instrument(span)
                .await;
                if !handled {
                    return;
                }
                if let Some(lag) = &mut self.lag {
                    lag.observe(&batch);
                }
                if let Some(h) = &self.settings.histogram {
                    ::metrics::histogram!(h.name, &h.labels)
                        .record(started.elapsed().as_secs_f64());
                }
            }
            let output = processor.on_tick(batch.len()).await;
            self.deliver(output, &[]).await;
            if let Some(lag) = &mut self.lag {
                lag.refresh(self.log.as_ref()).await;
            }
        }
    }

    /// Hands a changed assignment to the processor, retrying until it takes it. Returns the
    /// partitions it sought, or `None` when shutdown came first.
    async fn take_assignment<P: Processor>(
        &mut self,
        processor: &mut P,
        shutdown: &mut (impl Future<Output = ()> + Unpin + Send),
    ) -> Option<BTreeSet<TopicPartition>> {
        let mut backoff = Backoff::new();
        let mut sought = BTreeSet::new();
        loop {
            let current: BTreeSet<TopicPartition> =
                self.consumer.assignment().into_iter().collect();
            if current == self.taken {
                return Some(sought);
            }
            let mut assignment = Assignment {
                consumer: self.consumer.as_mut(),
                previous: &self.taken,
                current,
                sought: BTreeSet::new(),
            };
            let (added, removed) = (assignment.added(), assignment.removed());
            let result = processor.on_assigned(&mut assignment).await;
            let Assignment {
                current,
                sought: sought_now,
                ..
            } = assignment;
            sought.extend(sought_now);
            match result {
                Ok(output) => {
                    tracing::info!(consumer = %self.dead.consumer(), ?added, ?removed, "Assignment taken.");
                    self.committed.retain(|tp, _| current.contains(tp));
                    self.taken = current;
                    self.deliver(output, &[]).await;
                }
                Err(e) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(consumer = %self.dead.consumer(), error = format!("{e:#}"), attempt = backoff.attempt(), "Taking the new assignment failed; retrying.");
                    tokio::select! {
                        biased;
                        _ = &mut *shutdown => return None,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Writes the output's records, then the dead letters, then commits (module docs).
    async fn deliver(&mut self, output: Output, read: &[ConsumedRecord]) {
        let Output {
            writes,
            commit,
            written,
        } = output;
        for (topic, records) in writes {
            produce_until_written(self.log.as_ref(), &topic, records).await;
        }
        for f in written {
            f();
        }
        self.dead.flush().await;
        if self.settings.throwaway {
            return;
        }
        let offsets = match commit {
            Commit::Read => next_offsets(read),
            Commit::Upto(offsets) => offsets,
        };
        let offsets: Vec<CommitOffset> = offsets
            .into_iter()
            .filter(|c| {
                self.committed
                    .get(&(c.topic.clone(), c.partition))
                    .is_none_or(|done| *done != c.next_offset)
            })
            .collect();
        if offsets.is_empty() {
            return;
        }
        match self.consumer.commit(&offsets).await {
            Ok(()) => {
                for c in offsets {
                    self.committed.insert((c.topic, c.partition), c.next_offset);
                }
            }
            Err(e) => {
                tracing::warn!(consumer = %self.dead.consumer(), error = %e, "Commit failed; the records after the last commit will be read again.");
            }
        }
    }
}
