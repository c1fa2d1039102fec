//! The Kafka engine: Apache Kafka through `rdkafka` (bundled librdkafka).
//!
//! * **Producer**: one idempotent `FutureProducer` (`acks=all`, `enable.idempotence=true`,
//!   `partitioner=murmur2_random`, the Java client's partitioner for keyed records,
//!   `linger.ms=5`, `message.timeout.ms=30000`). A produce call enqueues its records in
//!   order, then awaits every delivery report; it returns once the broker acknowledged all.
//! * **Admin**: `AdminClient` for topic creation; metadata, watermarks and
//!   offsets-for-times through a group-less consumer used only for those look-ups.
//! * **Consumers**: one `StreamConsumer` per member (`enable.auto.commit=false`,
//!   `enable.auto.offset.store=false`, `partition.assignment.strategy=cooperative-sticky`,
//!   or `range` for a subscription to several topics, so they are co-partitioned);
//!   commits are synchronous (`CommitMode::Sync`) on the blocking pool.
//!
//! **Seek.** librdkafka refuses to seek a partition that is not assigned yet, or whose
//! fetcher has not started (`Local: Erroneous state`), and a fresh member holds no
//! partition until its first polls ran the group protocol. So [`Consumer::seek`] tries the
//! seek at once when the partition is assigned, and otherwise (or when librdkafka refuses)
//! keeps it pending: every `poll` retries pending seeks on assigned partitions first, and a
//! record that arrives for a partition with a pending seek triggers the seek and is
//! dropped, never returned. Records fetched before a seek are discarded by librdkafka
//! itself (its fetch version barrier).
//!
//! **Options.** [`EngineOptions`] are raw librdkafka properties, applied after the defaults
//! above (so they override them) to every client; a key prefixed `producer.`, `consumer.`
//! or `admin.` applies only to that client, with the prefix removed. Keys starting with
//! `fleet.` are this crate's own: `fleet.request.timeout.ms` (default 30000) bounds admin,
//! metadata and commit calls.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{debug, info, instrument, warn};

use crate::metrics as m;
use crate::{
    CommitOffset, ConsumedRecord, Consumer, ConsumerOptions, EngineOptions, EventLog, LogError,
    ProduceRecord, RecordPosition, Result, StartFrom, TopicSpec,
};

const ENGINE: &str = "kafka";
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a produce call waits for room in librdkafka's queue before giving up.
const QUEUE_FULL_WAIT: Duration = Duration::from_secs(10);
/// How long one seek waits for librdkafka.
const SEEK_TIMEOUT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------------------------ errors

/// Maps a librdkafka error: broker trouble and timeouts are retriable
/// ([`LogError::Unavailable`]), a missing topic is [`LogError::UnknownTopic`].
fn kafka_error(context: &str, topic: Option<&str>, err: &KafkaError) -> LogError {
    use RDKafkaErrorCode as C;
    match err.rdkafka_error_code() {
        Some(C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId)
            if topic.is_some() =>
        {
            LogError::UnknownTopic(topic.unwrap_or_default().to_string())
        }
        Some(
            C::QueueFull
            | C::MessageTimedOut
            | C::AllBrokersDown
            | C::BrokerTransportFailure
            | C::Resolve
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::TimedOutQueue
            | C::BrokerNotAvailable
            | C::LeaderNotAvailable
            | C::NotLeaderForPartition
            | C::ReplicaNotAvailable
            | C::NetworkException
            | C::NotEnoughReplicas
            | C::NotEnoughReplicasAfterAppend
            | C::CoordinatorLoadInProgress
            | C::CoordinatorNotAvailable
            | C::NotCoordinator
            | C::WaitingForCoordinator
            | C::RebalanceInProgress
            | C::IllegalGeneration
            | C::UnknownMemberId
            | C::FencedLeaderEpoch
            | C::PreferredLeaderNotAvailable
            | C::Retry,
        ) => LogError::Unavailable(format!("kafka {context}: {err}")),
        _ => match err {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) => {
                LogError::Config(format!("kafka {context}: {err}"))
            }
            _ => LogError::Internal(format!("kafka {context}: {err}")),
        },
    }
}

fn join_error(err: tokio::task::JoinError) -> LogError {
    LogError::Internal(format!("kafka: blocking task failed: {err}"))
}

/// A failed look-up: librdkafka's error (kept, so the caller can tell whether to retry)
/// or one of ours.
enum LookupError {
    Kafka {
        context: &'static str,
        topic: String,
        err: KafkaError,
    },
    Log(LogError),
}

impl From<LogError> for LookupError {
    fn from(e: LogError) -> Self {
        LookupError::Log(e)
    }
}

impl LookupError {
    fn kafka(context: &'static str, topic: &str, err: KafkaError) -> LookupError {
        LookupError::Kafka {
            context,
            topic: topic.to_string(),
            err,
        }
    }

    /// Errors that pass once the partition has a leader again (new topic, election).
    fn leader_moving(&self) -> bool {
        matches!(
            self,
            LookupError::Kafka { err, .. } if matches!(
                err.rdkafka_error_code(),
                Some(
                    RDKafkaErrorCode::NotLeaderForPartition
                        | RDKafkaErrorCode::LeaderNotAvailable
                        | RDKafkaErrorCode::FencedLeaderEpoch
                )
            )
        )
    }

    fn into_log_error(self) -> LogError {
        match self {
            LookupError::Kafka {
                context,
                topic,
                err,
            } => kafka_error(context, Some(&topic), &err),
            LookupError::Log(e) => e,
        }
    }
}

type LookupResult<T> = std::result::Result<T, LookupError>;

fn partition_i32(partition: u32) -> Result<i32> {
    i32::try_from(partition)
        .map_err(|_| LogError::Config(format!("partition {partition} is out of range")))
}

fn partition_u32(partition: i32) -> u32 {
    u32::try_from(partition).unwrap_or(0)
}

/// Kafka's topic name rule (also refused by librdkafka's C strings: no NUL).
fn check_topic_name(topic: &str) -> Result<()> {
    let legal = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if legal {
        Ok(())
    } else {
        Err(LogError::Config(format!(
            "illegal topic name {topic:?}: use 1 to 249 characters of [a-zA-Z0-9._-]"
        )))
    }
}

// ------------------------------------------------------------------------------------ config

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    Producer,
    Consumer,
    Admin,
}

#[derive(Debug, Clone)]
struct Settings {
    brokers: String,
    options: EngineOptions,
    request_timeout: Duration,
}

impl Settings {
    /// The config of one client: defaults, then the pass-through options.
    fn config(&self, client: Client, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (key, value) in &self.options {
            if key.starts_with("fleet.") {
                continue;
            }
            let (target, key) = if let Some(k) = key.strip_prefix("producer.") {
                (Some(Client::Producer), k)
            } else if let Some(k) = key.strip_prefix("consumer.") {
                (Some(Client::Consumer), k)
            } else if let Some(k) = key.strip_prefix("admin.") {
                (Some(Client::Admin), k)
            } else {
                (None, key.as_str())
            };
            if target.is_none_or(|t| t == client) {
                config.set(key, value);
            }
        }
        config
    }

    /// A consumer for look-ups only (metadata, watermarks, offsets); no group unless given.
    fn lookup_consumer(&self, group: Option<&str>) -> Result<BaseConsumer> {
        let mut config = self.config(Client::Consumer, &[("enable.auto.commit", "false")]);
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config
            .create()
            .map_err(|e| kafka_error("creating a consumer", None, &e))
    }
}

// ---------------------------------------------------------------------------------- the log

/// The event log on Apache Kafka. See the [module documentation](self).
pub struct KafkaLog {
    settings: Settings,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
    lookup: Arc<BaseConsumer>,
    /// Topics known to exist (produce checks once per topic, not per call).
    known_topics: RwLock<HashSet<String>>,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog")
            .field("brokers", &self.settings.brokers)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Creates the clients for `brokers` (`host:port[,host:port...]`). Nothing is contacted
    /// yet: use [`KafkaLog::check_connection`] to find out whether a broker answers.
    pub fn connect(brokers: &str, options: &EngineOptions) -> Result<KafkaLog> {
        if brokers.trim().is_empty() {
            return Err(LogError::Config(
                "no Kafka brokers given: use kafka://host:9092".into(),
            ));
        }
        let request_timeout = match options.get("fleet.request.timeout.ms") {
            Some(ms) => Duration::from_millis(ms.parse().map_err(|_| {
                LogError::Config(format!(
                    "fleet.request.timeout.ms must be milliseconds, not {ms:?}"
                ))
            })?),
            None => DEFAULT_REQUEST_TIMEOUT,
        };
        let settings = Settings {
            brokers: brokers.to_string(),
            options: options.clone(),
            request_timeout,
        };
        let producer: FutureProducer = settings
            .config(
                Client::Producer,
                &[
                    ("enable.idempotence", "true"),
                    ("acks", "all"),
                    ("partitioner", "murmur2_random"),
                    ("linger.ms", "5"),
                    ("message.timeout.ms", "30000"),
                    ("allow.auto.create.topics", "false"),
                ],
            )
            .create()
            .map_err(|e| kafka_error("creating the producer", None, &e))?;
        let admin: AdminClient<DefaultClientContext> = settings
            .config(Client::Admin, &[])
            .create()
            .map_err(|e| kafka_error("creating the admin client", None, &e))?;
        let lookup = Arc::new(settings.lookup_consumer(None)?);
        info!(brokers, "Kafka event log configured.");
        Ok(KafkaLog {
            settings,
            producer,
            admin,
            lookup,
            known_topics: RwLock::new(HashSet::new()),
        })
    }

    /// Asks the cluster for its metadata: `Ok` when a broker answered within `timeout`.
    #[instrument(skip(self), fields(engine = ENGINE))]
    pub async fn check_connection(&self, timeout: Duration) -> Result<()> {
        let lookup = Arc::clone(&self.lookup);
        let brokers = self.settings.brokers.clone();
        tokio::task::spawn_blocking(move || {
            lookup
                .fetch_metadata(None, timeout)
                .map(|_| ())
                .map_err(|e| {
                    LogError::Unavailable(format!(
                        "no Kafka broker answered at {brokers} within {timeout:?}: {e}"
                    ))
                })
        })
        .await
        .map_err(join_error)?
    }

    /// Runs a blocking look-up on the blocking pool. While a partition has no leader (a
    /// topic just created, a leader election) the look-up is retried until the request
    /// timeout.
    async fn lookup<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&BaseConsumer, Duration) -> LookupResult<T> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        loop {
            let lookup = Arc::clone(&self.lookup);
            let timeout = self.settings.request_timeout;
            let call = Arc::clone(&f);
            let result = tokio::task::spawn_blocking(move || call(&lookup, timeout))
                .await
                .map_err(join_error)?;
            match result {
                Ok(value) => return Ok(value),
                Err(e) if e.leader_moving() && tokio::time::Instant::now() < deadline => {
                    debug!("Partition leader moving; retrying the look-up.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into_log_error()),
            }
        }
    }

    /// Partition count from fresh metadata.
    async fn fetch_partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.fetch_topic(topic).await?.0)
    }

    /// Partition count, and whether every partition has a leader, from fresh metadata.
    async fn fetch_topic(&self, topic: &str) -> Result<(u32, bool)> {
        check_topic_name(topic).map_err(|_| LogError::UnknownTopic(topic.to_string()))?;
        let name = topic.to_string();
        let (count, led) = self
            .lookup(move |c, timeout| {
                let metadata = c
                    .fetch_metadata(Some(&name), timeout)
                    .map_err(|e| LookupError::kafka("metadata", &name, e))?;
                let Some(t) = metadata.topics().iter().find(|t| t.name() == name) else {
                    return Err(LogError::UnknownTopic(name.clone()).into());
                };
                match t.error().map(RDKafkaErrorCode::from) {
                    None => {
                        let led = t
                            .partitions()
                            .iter()
                            .all(|p| p.error().is_none() && p.leader() >= 0);
                        Ok((u32::try_from(t.partitions().len()).unwrap_or(0), led))
                    }
                    Some(
                        RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                    ) => Err(LogError::UnknownTopic(name.clone()).into()),
                    Some(code) => Err(LookupError::kafka(
                        "metadata",
                        &name,
                        KafkaError::MetadataFetch(code),
                    )),
                }
            })
            .await?;
        if count == 0 {
            // A topic that is being created or deleted.
            return Err(LogError::UnknownTopic(topic.to_string()));
        }
        self.known_topics
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_string());
        Ok((count, led))
    }

    async fn ensure_known(&self, topic: &str) -> Result<()> {
        let known = self
            .known_topics
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(topic);
        if !known {
            self.fetch_partition_count(topic).await?;
        }
        Ok(())
    }

    async fn high_watermarks(&self, topic: &str, partitions: u32) -> Result<Vec<i64>> {
        let name = topic.to_string();
        self.lookup(move |c, timeout| {
            (0..partitions)
                .map(|p| {
                    let (_low, high) = c
                        .fetch_watermarks(&name, partition_i32(p)?, timeout)
                        .map_err(|e| LookupError::kafka("watermarks", &name, e))?;
                    Ok(high)
                })
                .collect()
        })
        .await
    }
}

#[async_trait]
impl EventLog for KafkaLog {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()> {
        check_topic_name(topic)?;
        let partitions = i32::try_from(spec.partitions)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| {
                LogError::Config(format!("topic {topic}: {} partitions", spec.partitions))
            })?;
        // Replication -1: the broker's default.replication.factor.
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1));
        if spec.compacted {
            new_topic = new_topic.set("cleanup.policy", "compact");
        }
        let options = AdminOptions::new().operation_timeout(Some(self.settings.request_timeout));
        let results = self
            .admin
            .create_topics([&new_topic], &options)
            .await
            .map_err(|e| kafka_error("create topic", Some(topic), &e))?;
        for result in results {
            match result {
                Ok(_) => info!(
                    topic,
                    partitions,
                    compacted = spec.compacted,
                    "Topic created."
                ),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => debug!(topic, "Topic exists."),
                Err((_, code)) => {
                    return Err(kafka_error(
                        "create topic",
                        Some(topic),
                        &KafkaError::AdminOp(code),
                    ))
                }
            }
        }
        // Wait until the metadata shows the topic with a leader for every partition, so the
        // next call (produce, watermarks) can use it.
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        loop {
            let ready = match self.fetch_topic(topic).await {
                Ok((_, led)) => led,
                Err(LogError::UnknownTopic(_)) => false,
                Err(e) => return Err(e),
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LogError::Unavailable(format!(
                    "topic {topic} was created but its partitions got no leader in time"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn partition_count(&self, topic: &str) -> Result<u32> {
        self.fetch_partition_count(topic).await
    }

    #[instrument(skip(self, records), fields(engine = ENGINE, records = records.len()))]
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        self.ensure_known(topic).await?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.produce_known(topic, &records).await;
        match &result {
            Ok(_) => metrics::counter!(m::PRODUCED_RECORDS, "engine" => ENGINE, "topic" => topic.to_string())
                .increment(records.len() as u64),
            Err(e) => {
                warn!(topic, error = %e, "Produce failed.");
                metrics::counter!(m::PRODUCE_ERRORS, "engine" => ENGINE, "topic" => topic.to_string()).increment(1);
            }
        }
        result
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let partitions = self.fetch_partition_count(topic).await?;
        self.high_watermarks(topic, partitions).await
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<i64>> {
        let partitions = self.fetch_partition_count(topic).await?;
        // Negative values mean "latest" / "earliest" to Kafka: no record has a timestamp
        // below 0 there, so 0 gives the same answer.
        let timestamp = timestamp_ms.max(0);
        // "No record at or after the timestamp" means the end of the partition *as of the
        // lookup*: take the ends first. Taken after, they could include records appended
        // (or made visible) meanwhile, and a reader starting there would skip them.
        let ends = self.high_watermarks(topic, partitions).await?;
        let name = topic.to_string();
        let found: Vec<Option<i64>> = self
            .lookup(move |c, timeout| {
                let mut tpl = TopicPartitionList::new();
                for p in 0..partitions {
                    tpl.add_partition_offset(&name, partition_i32(p)?, Offset::Offset(timestamp))
                        .map_err(|e| LookupError::kafka("offsets for time", &name, e))?;
                }
                let tpl = c
                    .offsets_for_times(tpl, timeout)
                    .map_err(|e| LookupError::kafka("offsets for time", &name, e))?;
                (0..partitions)
                    .map(|p| {
                        let elem =
                            tpl.find_partition(&name, partition_i32(p)?)
                                .ok_or_else(|| {
                                    LogError::Internal(format!(
                                        "kafka offsets for time: no answer for {name}/{p}"
                                    ))
                                })?;
                        elem.error()
                            .map_err(|e| LookupError::kafka("offsets for time", &name, e))?;
                        Ok(match elem.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None, // no record at or after the timestamp
                        })
                    })
                    .collect()
            })
            .await?;
        Ok(found
            .into_iter()
            .zip(ends)
            .map(|(f, end)| f.unwrap_or(end))
            .collect())
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<Option<i64>>> {
        let partitions = self.fetch_partition_count(topic).await?;
        let settings = self.settings.clone();
        let (group, name) = (group.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || {
            let consumer = settings.lookup_consumer(Some(&group))?;
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&name, partition_i32(p)?);
            }
            let tpl = consumer
                .committed_offsets(tpl, settings.request_timeout)
                .map_err(|e| kafka_error("committed offsets", Some(&name), &e))?;
            (0..partitions)
                .map(|p| {
                    Ok(
                        match tpl
                            .find_partition(&name, partition_i32(p)?)
                            .map(|e| e.offset())
                        {
                            Some(Offset::Offset(o)) => Some(o),
                            _ => None,
                        },
                    )
                })
                .collect()
        })
        .await
        .map_err(join_error)?
    }

    #[instrument(skip(self, options), fields(engine = ENGINE))]
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        crate::check_subscription(group, topics)?;
        let mut partitions = HashMap::new();
        for topic in topics {
            partitions.insert(topic.to_string(), self.fetch_partition_count(topic).await?);
        }
        let session_ms = options.session_timeout.as_millis().max(1);
        let heartbeat_ms = (session_ms / 3).clamp(1, 3000);
        let (session, heartbeat) = (session_ms.to_string(), heartbeat_ms.to_string());
        let reset = match options.start {
            StartFrom::Earliest => "earliest",
            StartFrom::Latest => "latest",
        };
        // One topic: cooperative-sticky (no stop-the-world rebalance). Several topics:
        // `range`, which gives each member the same partition numbers of every topic
        // (co-partitioning, as Kafka Streams relies on), so one agent's records of every
        // topic (all keyed by agent id, same partition counts) meet in one member, and
        // each topic is split evenly on its own. cooperative-sticky balances only the
        // total count: with two topics of 6 partitions and two members it may give one
        // member all of one topic. The embedded log co-partitions the same way.
        let strategy = if topics.len() > 1 {
            "range"
        } else {
            "cooperative-sticky"
        };
        let mut config = self.settings.config(
            Client::Consumer,
            &[
                ("enable.auto.commit", "false"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", reset),
                ("session.timeout.ms", &session),
                ("heartbeat.interval.ms", &heartbeat),
                ("partition.assignment.strategy", strategy),
            ],
        );
        config.set("group.id", group);
        let consumer: StreamConsumer = config
            .create()
            .map_err(|e| kafka_error("creating a consumer", None, &e))?;
        consumer
            .subscribe(topics)
            .map_err(|e| kafka_error("subscribe", None, &e))?;
        debug!(group, ?topics, "Consumer subscribed.");
        Ok(Box::new(KafkaConsumer {
            consumer: Some(Arc::new(consumer)),
            group: group.to_string(),
            partitions,
            pending_seeks: HashMap::new(),
            fetch_wait: options.fetch_wait,
        }))
    }
}

impl KafkaLog {
    async fn produce_known(
        &self,
        topic: &str,
        records: &[ProduceRecord],
    ) -> Result<Vec<RecordPosition>> {
        // Enqueue in order (librdkafka keeps per-partition order, idempotence keeps it on
        // retries), then await every delivery report.
        let mut deliveries = Vec::with_capacity(records.len());
        for record in records {
            let mut future_record =
                FutureRecord::<[u8], [u8]>::to(topic).payload(record.value.as_slice());
            if let Some(key) = &record.key {
                future_record = future_record.key(key.as_slice());
            }
            if let Some(ts) = record.timestamp_ms {
                future_record = future_record.timestamp(ts);
            }
            let mut waited = Duration::ZERO;
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                        if waited < QUEUE_FULL_WAIT =>
                    {
                        future_record = back;
                        let pause = Duration::from_millis(10);
                        tokio::time::sleep(pause).await;
                        waited += pause;
                    }
                    Err((e, _)) => return Err(kafka_error("produce", Some(topic), &e)),
                }
            }
        }
        let mut positions = Vec::with_capacity(deliveries.len());
        for delivery in futures::future::join_all(deliveries).await {
            match delivery {
                Ok(Ok(d)) => positions.push(RecordPosition {
                    partition: partition_u32(d.partition),
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => return Err(kafka_error("produce", Some(topic), &e)),
                Err(_canceled) => {
                    return Err(LogError::Internal(
                        "kafka produce: the producer was dropped".into(),
                    ))
                }
            }
        }
        Ok(positions)
    }
}

// -------------------------------------------------------------------------------- consumers

/// A member of a Kafka consumer group; closes (leaves the group) when dropped.
struct KafkaConsumer {
    /// `Some` until dropped (the drop moves it to a blocking thread).
    consumer: Option<Arc<StreamConsumer>>,
    group: String,
    partitions: HashMap<String, u32>,
    /// Seeks librdkafka could not apply yet: (topic, partition) -> offset.
    pending_seeks: HashMap<(String, i32), i64>,
    /// [`ConsumerOptions::fetch_wait`].
    fetch_wait: Duration,
}

impl fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaConsumer")
            .field("group", &self.group)
            .field("pending_seeks", &self.pending_seeks)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaConsumer {
    fn drop(&mut self) {
        // Closing leaves the group and waits for the broker: not on an async worker.
        if let Some(consumer) = self.consumer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(handle) => {
                    drop(handle.spawn_blocking(move || drop(consumer)));
                }
                Err(_) => drop(consumer),
            }
        }
    }
}

fn to_record(message: &BorrowedMessage<'_>) -> ConsumedRecord {
    ConsumedRecord {
        topic: Arc::from(message.topic()),
        partition: partition_u32(message.partition()),
        offset: message.offset(),
        timestamp_ms: message.timestamp().to_millis().unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
    }
}

impl KafkaConsumer {
    fn consumer(&self) -> Result<&Arc<StreamConsumer>> {
        self.consumer
            .as_ref()
            .ok_or_else(|| LogError::Internal("kafka consumer already closed".into()))
    }

    fn assigned(&self) -> HashSet<(String, i32)> {
        let Some(consumer) = &self.consumer else {
            return HashSet::new();
        };
        match consumer.assignment() {
            Ok(tpl) => tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_string(), e.partition()))
                .collect(),
            Err(_) => HashSet::new(),
        }
    }

    /// Seeks on the blocking pool; `Ok(false)` when librdkafka cannot seek that partition now.
    async fn try_seek(&self, topic: &str, partition: i32, offset: i64) -> Result<bool> {
        let consumer = Arc::clone(self.consumer()?);
        let topic = topic.to_string();
        let result = tokio::task::spawn_blocking(move || {
            consumer.seek(&topic, partition, Offset::Offset(offset), SEEK_TIMEOUT)
        })
        .await
        .map_err(join_error)?;
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                debug!(error = %e, partition, offset, "Seek not possible yet; kept pending.");
                Ok(false)
            }
        }
    }

    /// Applies pending seeks on partitions assigned now.
    async fn apply_pending_seeks(&mut self) -> Result<()> {
        if self.pending_seeks.is_empty() {
            return Ok(());
        }
        let assigned = self.assigned();
        let ready: Vec<((String, i32), i64)> = self
            .pending_seeks
            .iter()
            .filter(|(k, _)| assigned.contains(*k))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for ((topic, partition), offset) in ready {
            if self.try_seek(&topic, partition, offset).await? {
                self.pending_seeks.remove(&(topic, partition));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Consumer for KafkaConsumer {
    #[instrument(skip(self), fields(engine = ENGINE, group = %self.group))]
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        if max == 0 {
            return Ok(Vec::new());
        }
        self.apply_pending_seeks().await?;
        let deadline = tokio::time::Instant::now() + timeout;
        let consumer = Arc::clone(self.consumer()?);
        let mut out: Vec<ConsumedRecord> = Vec::new();
        // librdkafka reports transient trouble (brokers down, transport errors) as error
        // events in the message queue and recovers by itself. Errors queued during an
        // outage are drained here, within this call, rather than one per call: returning
        // at the first one made callers back off once per queued error and resume long
        // after the broker was back. An error is returned only when the whole timeout
        // brought errors and no record.
        let mut last_error = None;
        let mut errors = 0u64;
        let mut fetch_until = None;
        while out.len() < max {
            // Wait for the first record; after that take only what is there already, or
            // what comes within the fetch wait (measured from the first record).
            let next = if out.is_empty() {
                tokio::time::timeout_at(deadline, consumer.recv())
                    .await
                    .ok()
            } else if let Some(until) = fetch_until {
                tokio::time::timeout_at(until, consumer.recv()).await.ok()
            } else {
                consumer.recv().now_or_never()
            };
            let record = match next {
                None => break,
                Some(Ok(message)) => to_record(&message),
                Some(Err(e)) if out.is_empty() => {
                    errors += 1;
                    metrics::counter!(m::CONSUMER_ERRORS, "engine" => ENGINE).increment(1);
                    last_error = Some(e);
                    continue;
                }
                Some(Err(e)) => {
                    warn!(error = %e, "Consumer error after records; returning those.");
                    break;
                }
            };
            let key = (record.topic.to_string(), partition_i32(record.partition)?);
            if let Some(offset) = self.pending_seeks.get(&key).copied() {
                // The partition is fetching now: seek, and drop this record (from before).
                if self.try_seek(&key.0, key.1, offset).await? {
                    self.pending_seeks.remove(&key);
                }
                continue;
            }
            if out.is_empty() && !self.fetch_wait.is_zero() {
                fetch_until = Some((tokio::time::Instant::now() + self.fetch_wait).min(deadline));
            }
            out.push(record);
        }
        if out.is_empty() {
            if let Some(e) = last_error {
                return Err(kafka_error("poll", None, &e));
            }
        } else if errors > 0 {
            debug!(errors, "Consumer errors drained before records arrived.");
        }
        if !out.is_empty() {
            let mut per_topic: HashMap<&str, u64> = HashMap::new();
            for r in &out {
                *per_topic.entry(&r.topic).or_default() += 1;
            }
            for (topic, n) in per_topic {
                metrics::counter!(m::CONSUMED_RECORDS, "engine" => ENGINE, "topic" => topic.to_string()).increment(n);
            }
        }
        Ok(out)
    }

    #[instrument(skip(self, offsets), fields(engine = ENGINE, group = %self.group, offsets = offsets.len()))]
    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for o in offsets {
            check_topic_name(&o.topic).map_err(|_| LogError::UnknownTopic(o.topic.clone()))?;
            tpl.add_partition_offset(
                &o.topic,
                partition_i32(o.partition)?,
                Offset::Offset(o.next_offset),
            )
            .map_err(|e| kafka_error("commit", Some(&o.topic), &e))?;
        }
        let consumer = Arc::clone(self.consumer()?);
        tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
            .await
            .map_err(join_error)?
            .map_err(|e| kafka_error("commit", None, &e))?;
        metrics::counter!(m::COMMITS, "engine" => ENGINE).increment(1);
        Ok(())
    }

    #[instrument(skip(self), fields(engine = ENGINE, group = %self.group))]
    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        let Some(&partitions) = self.partitions.get(topic) else {
            return Err(LogError::Config(format!(
                "seek on {topic}: this consumer is not subscribed to it"
            )));
        };
        if partition >= partitions {
            return Err(LogError::UnknownPartition {
                topic: topic.to_string(),
                partition,
                partitions,
            });
        }
        if offset < 0 {
            return Err(LogError::Config(format!(
                "cannot seek {topic}/{partition} to negative offset {offset}"
            )));
        }
        let p = partition_i32(partition)?;
        let key = (topic.to_string(), p);
        if self.assigned().contains(&key) && self.try_seek(topic, p, offset).await? {
            self.pending_seeks.remove(&key);
        } else {
            self.pending_seeks.insert(key, offset);
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .assigned()
            .into_iter()
            .map(|(t, p)| (t, partition_u32(p)))
            .collect();
        out.sort();
        out
    }
}
