//! The event-log seam.
//!
//! Topics with partitions, keyed records, consumer groups with committed offsets, seek by
//! offset and by time. Two engines implement [`EventLog`], chosen by URL ([`open`]):
//!
//! * `kafka://host:9092[,host:9092...]`: Apache Kafka through `rdkafka`
//!   (idempotent producer, `acks=all`; consumers store offsets only after processing).
//! * `file:///path/to/dir` (or a bare path): the embedded durable log in a data directory.
//!
//! Both place a keyed record on the partition Kafka's default partitioner would choose
//! (murmur2 of the key, see [`partition_for_key`]), and both pass the conformance suite in
//! `tests/conformance.rs`.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

pub mod metrics;
pub mod murmur2;
pub use murmur2::partition_for_key;

/// Errors of the event log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The topic does not exist; create it first.
    #[error("topic {0} does not exist: create it first (fleetstream creates its topics at start)")]
    UnknownTopic(String),
    /// A partition number outside the topic.
    #[error("partition {partition} out of range for topic {topic} ({partitions} partitions)")]
    UnknownPartition {
        /// Topic.
        topic: String,
        /// Requested partition.
        partition: u32,
        /// Partition count of the topic.
        partitions: u32,
    },
    /// The log cannot take writes or reads now (broker down, timeout); retry later.
    #[error("event log unavailable: {0}")]
    Unavailable(String),
    /// The URL or the configuration is wrong.
    #[error("event log configuration: {0}")]
    Config(String),
    /// Any other engine failure.
    #[error("event log: {0}")]
    Internal(String),
}

impl LogError {
    /// Whether the same call may succeed later (answer 503 / retry rather than fail).
    pub fn is_retriable(&self) -> bool {
        matches!(self, LogError::Unavailable(_))
    }
}

/// Result alias of this crate.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// How to create a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicSpec {
    /// Number of partitions.
    pub partitions: u32,
    /// Log compaction (Kafka `cleanup.policy=compact`); the embedded log keeps everything.
    pub compacted: bool,
}

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProduceRecord {
    /// Partition key; records with one key stay ordered on one partition.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub value: Vec<u8>,
    /// Record timestamp (ms since the epoch, CreateTime); `None` means now.
    pub timestamp_ms: Option<i64>,
}

impl ProduceRecord {
    /// A keyed record stamped now.
    pub fn keyed(key: impl Into<Vec<u8>>, value: Vec<u8>) -> ProduceRecord {
        ProduceRecord {
            key: Some(key.into()),
            value,
            timestamp_ms: None,
        }
    }
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPosition {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: i64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Topic.
    pub topic: Arc<str>,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Record timestamp, ms since the epoch.
    pub timestamp_ms: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Payload.
    pub value: Vec<u8>,
}

/// An offset to commit: the next offset the group should consume (last processed + 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOffset {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Next offset to consume.
    pub next_offset: i64,
}

/// Where a consumer starts on partitions that have no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still in the log.
    #[default]
    Earliest,
    /// Only records appended after the consumer joined.
    Latest,
}

/// Options of a group consumer.
#[derive(Debug, Clone, PartialEq)]
pub struct ConsumerOptions {
    /// Start position for partitions without a committed offset.
    pub start: StartFrom,
    /// Group session timeout (Kafka `session.timeout.ms`); a dead member's partitions move
    /// to the others after this long.
    pub session_timeout: Duration,
    /// How long a poll may wait for more records when fewer than it asked for are there
    /// (Kafka's `fetch.wait.max.ms` with `fetch.min.bytes`): larger, fewer batches for a
    /// consumer whose cost is per batch (a transaction, an offset commit), at the price of
    /// that much delay. Zero (the default): a poll returns what is there at once.
    pub fetch_wait: Duration,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            start: StartFrom::Earliest,
            session_timeout: Duration::from_secs(10),
            fetch_wait: Duration::ZERO,
        }
    }
}

/// A member of a consumer group.
///
/// Records are delivered at least once: a record is processed, then its offset is
/// committed. A member that restarts resumes at the group's committed offsets.
#[async_trait]
pub trait Consumer: Send + Debug {
    /// Waits up to `timeout` for records and returns up to `max` of them (maybe none).
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>>;

    /// Commits the next offsets to consume for the group, durably.
    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()>;

    /// Moves this member's position on an assigned partition; the next poll returns
    /// records from `offset` on.
    ///
    /// A seek on a partition of a subscribed topic that this member does not hold yet (with
    /// Kafka, a fresh member holds nothing until its first polls ran the group protocol) is
    /// remembered and applied when the partition is assigned to it. A topic this member did
    /// not subscribe to is [`LogError::Config`], a partition outside the topic
    /// [`LogError::UnknownPartition`].
    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()>;

    /// The partitions this member holds now.
    fn assignment(&self) -> Vec<(String, u32)>;
}

/// The event log.
#[async_trait]
pub trait EventLog: Send + Sync + Debug {
    /// Short engine name for logs and metrics (`kafka`, `embedded`).
    fn engine(&self) -> &'static str;

    /// Creates a topic; succeeds if it already exists (its partition count is not changed).
    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()>;

    /// Number of partitions of a topic.
    async fn partition_count(&self, topic: &str) -> Result<u32>;

    /// Appends records and returns once the log acknowledged every one of them (Kafka:
    /// `acks=all`). On error some records may have been written: producers retry, and
    /// consumers are idempotent.
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>>;

    /// Per partition, the offset the next appended record will get (high watermark).
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>>;

    /// Per partition, the first offset whose timestamp is at or after `timestamp_ms`, or
    /// the end offset when there is none.
    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<i64>>;

    /// Per partition, the group's committed next offset (`None`: nothing committed).
    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<Option<i64>>>;

    /// Joins consumer group `group` on `topics`. Members of one group split the partitions.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>>;
}

/// Engine-specific settings passed through (for Kafka: raw librdkafka properties such as
/// `security.protocol`, `linger.ms`).
pub type EngineOptions = HashMap<String, String>;

/// Opens the event log a URL names: `kafka://host:port[,host:port]` or
/// `file:///dir` / a bare directory path for the embedded log.
pub async fn open(url: &str, options: &EngineOptions) -> Result<Arc<dyn EventLog>> {
    if let Some(brokers) = url.strip_prefix("kafka://") {
        #[cfg(feature = "kafka")]
        {
            let log = kafka::KafkaLog::connect(brokers, options)?;
            return Ok(Arc::new(log));
        }
        #[cfg(not(feature = "kafka"))]
        {
            let _ = (brokers, options);
            return Err(LogError::Config(
                "this build has no Kafka support (feature `kafka`)".into(),
            ));
        }
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    if path.contains("://") {
        return Err(LogError::Config(format!(
            "unsupported event log URL {url:?}: use kafka://host:9092 or file:///path/to/dir"
        )));
    }
    let _ = options;
    let dir = std::path::PathBuf::from(path);
    // Opening recovers each partition's end from disk: keep that off the async workers.
    let log = tokio::task::spawn_blocking(move || embedded::EmbeddedLog::open(&dir))
        .await
        .map_err(|e| LogError::Internal(format!("opening the embedded log failed: {e}")))??;
    Ok(Arc::new(log))
}

/// Checks the arguments of [`EventLog::subscribe`] (shared by every engine).
pub(crate) fn check_subscription(group: &str, topics: &[&str]) -> Result<()> {
    if topics.is_empty() {
        return Err(LogError::Config(
            "subscribe needs at least one topic".into(),
        ));
    }
    if group.is_empty() {
        return Err(LogError::Config(
            "a consumer group name must not be empty".into(),
        ));
    }
    Ok(())
}

/// Creates every topic in `topics` (idempotent).
pub async fn ensure_topics(log: &dyn EventLog, topics: &[(&str, TopicSpec)]) -> Result<()> {
    for (name, spec) in topics {
        log.create_topic(name, *spec).await?;
    }
    Ok(())
}

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
