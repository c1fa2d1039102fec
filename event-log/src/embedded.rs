//! The embedded event log: a durable on-disk log in a data directory, on [`redb`].
//!
//! One redb file (`event-log.redb`) holds five tables:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `topics` | topic name | (topic id, partitions, compacted) |
//! | `records` | (topic id, partition, first offset) | a chunk: the records one commit appended to the partition |
//! | `time_index` | (topic id, partition, max timestamp so far) | first offset with that max |
//! | `group_offsets` | (group, topic id, partition) | committed next offset |
//! | `meta` | `"format"` | layout version ([`FORMAT_VERSION`]) |
//!
//! **Writes** (produce, offset commits, topic creation) go to one writer thread that folds
//! every request waiting in its queue into one write transaction and commits it durably
//! (`Durability::Immediate`: fsynced before any caller is answered). This is group commit:
//! many concurrent producers share one fsync, so throughput grows with concurrency while each
//! call still returns only after its records are on disk. When more than one request was
//! already waiting, the writer waits once more (1 ms, [`GROUP_COMMIT_DELAY`]) for the
//! others on their way before committing; a lone request is written at once. Offsets are
//! assigned by that one
//! writer, so they are dense (0, 1, 2, ...) per partition.
//!
//! **Reads** run on tokio's blocking pool in read transactions (redb is MVCC: readers never
//! wait for the writer). Consumers wait for new records on a per-topic `watch` channel the
//! writer bumps after each commit; there is no polling loop.
//!
//! **Time index**: like Kafka's, an entry is added whenever a record's timestamp exceeds the
//! partition's largest timestamp so far, so the first entry whose timestamp is `>= t` names
//! exactly the first offset whose timestamp is `>= t`, also when timestamps (CreateTime)
//! are not monotonic.
//!
//! **Consumer groups** live in this process: members of one group split the partitions of
//! each topic (Kafka's range assignment, members in join order) and the split is redone when
//! a member joins or is dropped. Committed offsets are durable and survive restarts; group
//! membership does not need to (a restarted process re-joins).
//!
//! The data directory is locked while open: a second process (or a second open in this one)
//! gets [`LogError::Config`] naming the directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, instrument, warn};

use crate::metrics as m;
use crate::{
    partition_for_key, CommitOffset, ConsumedRecord, Consumer, ConsumerOptions, EventLog, LogError,
    ProduceRecord, RecordPosition, Result, StartFrom, TopicSpec,
};

const ENGINE: &str = "embedded";
/// The redb file inside the data directory.
pub const DB_FILE: &str = "event-log.redb";

/// topic name -> (topic id, partitions, compacted)
const TOPICS: TableDefinition<&str, (u32, u32, bool)> = TableDefinition::new("topics");
/// (topic id, partition, offset of the first record) -> a chunk of records (see [`ChunkBuilder`])
const RECORDS: TableDefinition<(u32, u32, u64), &[u8]> = TableDefinition::new("records");
/// (topic id, partition, new max timestamp) -> offset of the record that raised the max
const TIME_INDEX: TableDefinition<(u32, u32, i64), u64> = TableDefinition::new("time_index");
/// (group, topic id, partition) -> committed next offset
const GROUP_OFFSETS: TableDefinition<(&str, u32, u32), u64> = TableDefinition::new("group_offsets");
/// "format" -> [`FORMAT_VERSION`]
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Version of the table layout above; a file of another version is refused, not misread.
pub const FORMAT_VERSION: u64 = 1;

/// Requests the writer folds into one transaction at most (then it commits and goes on).
const MAX_BATCH_REQUESTS: usize = 4096;
/// Payload bytes the writer folds into one transaction at most.
const MAX_BATCH_BYTES: usize = 32 << 20;
/// How long the writer waits for more requests before committing, when it found more
/// than one already queued (concurrent producers: PostgreSQL's `commit_delay` with
/// `commit_siblings`). A lone request is never delayed. Fewer, fuller commits cost less
/// per record (each commit is a redb transaction and an `fdatasync`): in the live shape
/// of `storage_vs_vm` (256 connections, one report per request) it cut the CPU per
/// sample by about 10% for at most 1 ms more before the answer (docs/BENCHMARKS.md).
const GROUP_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);
/// Capacity of the writer's queue; producers wait (backpressure) when it is full.
const QUEUE_CAPACITY: usize = 8192;
/// Largest partition count a topic may have.
const MAX_PARTITIONS: u32 = 10_000;

// ------------------------------------------------------------------------------------ errors

fn storage_error(context: &str, err: impl Into<redb::Error>) -> LogError {
    match err.into() {
        redb::Error::Io(e) => {
            LogError::Unavailable(format!("embedded log: {context}: storage I/O error: {e}"))
        }
        redb::Error::PreviousIo => LogError::Unavailable(format!(
            "embedded log: {context}: an earlier storage I/O error left the log read-only; \
             restart the process"
        )),
        other => LogError::Internal(format!("embedded log: {context}: {other}")),
    }
}

/// `map_err` adapter for any redb error.
fn storage<E: Into<redb::Error>>(context: &'static str) -> impl FnOnce(E) -> LogError {
    move |e| storage_error(context, e)
}

fn writer_gone() -> LogError {
    LogError::Internal("embedded log writer thread stopped (see earlier errors)".into())
}

fn join_error(err: tokio::task::JoinError) -> LogError {
    LogError::Internal(format!("embedded log read task failed: {err}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

// --------------------------------------------------------------------------- record format

/// The records of one partition appended by one write transaction, stored as one value
/// under the offset of its first record (like a Kafka record batch): one B-tree entry per
/// partition and commit instead of one per record keeps pages full and writes cheap.
///
/// `count (u32 LE)`, then per record `timestamp (i64 LE) | key length (u32 LE, u32::MAX =
/// no key) | value length (u32 LE) | key | value`.
struct ChunkBuilder {
    base: u64,
    count: u32,
    buf: Vec<u8>,
}

/// A chunk is closed (a new one starts) once it holds this many bytes.
const MAX_CHUNK_BYTES: usize = 256 << 10;

impl ChunkBuilder {
    fn new(base: u64) -> ChunkBuilder {
        ChunkBuilder {
            base,
            count: 0,
            buf: vec![0; 4],
        }
    }

    fn push(&mut self, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) -> Result<()> {
        let too_long = || LogError::Config("a record key or value is 4 GiB or longer".into());
        let key_len = match key {
            Some(k) => u32::try_from(k.len())
                .ok()
                .filter(|l| *l != u32::MAX)
                .ok_or_else(too_long)?,
            None => u32::MAX,
        };
        let value_len = u32::try_from(value.len()).map_err(|_| too_long())?;
        self.buf.extend_from_slice(&timestamp_ms.to_le_bytes());
        self.buf.extend_from_slice(&key_len.to_le_bytes());
        self.buf.extend_from_slice(&value_len.to_le_bytes());
        if let Some(k) = key {
            self.buf.extend_from_slice(k);
        }
        self.buf.extend_from_slice(value);
        self.count += 1;
        Ok(())
    }

    fn finish(mut self) -> (u64, Vec<u8>) {
        self.buf[..4].copy_from_slice(&self.count.to_le_bytes());
        (self.base, self.buf)
    }
}

/// One record of a chunk, borrowed from it.
type ChunkRecord<'a> = (i64, Option<&'a [u8]>, &'a [u8]);

/// Number of records in a chunk.
fn chunk_count(bytes: &[u8]) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?))
}

/// The records of a chunk in offset order; `None` if it is malformed.
fn decode_chunk(bytes: &[u8]) -> Option<Vec<ChunkRecord<'_>>> {
    let count = chunk_count(bytes)? as usize;
    let mut out = Vec::with_capacity(count.min(bytes.len() / 16));
    let mut rest = bytes.get(4..)?;
    for _ in 0..count {
        let ts = i64::from_le_bytes(rest.get(0..8)?.try_into().ok()?);
        let key_len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        let value_len =
            usize::try_from(u32::from_le_bytes(rest.get(12..16)?.try_into().ok()?)).ok()?;
        rest = rest.get(16..)?;
        let key = if key_len == u32::MAX {
            None
        } else {
            let key_len = usize::try_from(key_len).ok()?;
            let key = rest.get(..key_len)?;
            rest = rest.get(key_len..)?;
            Some(key)
        };
        let value = rest.get(..value_len)?;
        rest = rest.get(value_len..)?;
        out.push((ts, key, value));
    }
    rest.is_empty().then_some(out)
}

/// The largest offset a record can have: offsets are Kafka's, `i64`.
const MAX_OFFSET: u64 = i64::MAX as u64;

/// The offset after `count` records from `base`, if every one is at most [`MAX_OFFSET`].
fn end_offset(base: u64, count: u64) -> Option<u64> {
    base.checked_add(count).filter(|end| *end <= MAX_OFFSET + 1)
}

/// The records of the chunk stored under offset `base`, each with its offset; `None` if
/// the chunk is malformed or its offsets would pass [`MAX_OFFSET`] (a corrupt key: the
/// writer never gets there).
fn chunk_records(base: u64, bytes: &[u8]) -> Option<impl Iterator<Item = (u64, ChunkRecord<'_>)>> {
    let records = decode_chunk(bytes)?;
    let end = end_offset(base, u64::try_from(records.len()).ok()?)?;
    Some((base..end).zip(records))
}

/// The offset after the chunk stored under `base` (what recovery reads from the last
/// chunk of a partition); `None` if its count cannot be read or its offsets would pass
/// [`MAX_OFFSET`].
fn chunk_end(base: u64, bytes: &[u8]) -> Option<u64> {
    end_offset(base, u64::from(chunk_count(bytes)?))
}

/// The chunk format's reader and writer, for the fuzz targets in `fuzz/` (cargo feature
/// `fuzzing`); not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::{ChunkBuilder, LogError};

    /// A record as the reader returns it: (offset, timestamp ms, key, value).
    pub type Record<'a> = (u64, i64, Option<&'a [u8]>, &'a [u8]);
    /// A record as the writer takes it: (timestamp ms, key, value).
    pub type Entry<'a> = (i64, Option<&'a [u8]>, &'a [u8]);

    /// The records of a chunk stored under offset `base`, as a read returns them;
    /// `None` when the read would fail with "chunk ... is corrupt".
    pub fn chunk_records(base: u64, bytes: &[u8]) -> Option<Vec<Record<'_>>> {
        Some(
            super::chunk_records(base, bytes)?
                .map(|(offset, (ts, key, value))| (offset, ts, key, value))
                .collect(),
        )
    }

    /// The offset recovery takes for the partition's next record when this is its last
    /// chunk.
    pub fn chunk_end(base: u64, bytes: &[u8]) -> Option<u64> {
        super::chunk_end(base, bytes)
    }

    /// The chunk the writer stores for these records (timestamp ms, key, value).
    pub fn encode_chunk(records: &[Entry<'_>]) -> Result<Vec<u8>, LogError> {
        let mut chunk = ChunkBuilder::new(0);
        for (ts, key, value) in records {
            chunk.push(*ts, *key, value)?;
        }
        Ok(chunk.finish().1)
    }
}

// ----------------------------------------------------------------------------- shared state

/// A topic as readers see it: partition ends advance after each durable commit.
struct TopicState {
    id: u32,
    name: Arc<str>,
    /// Per partition, the offset the next record gets (everything below is committed).
    ends: Vec<AtomicU64>,
    /// Bumped after every commit that appended to this topic; consumers wait on it.
    appended: watch::Sender<u64>,
}

impl TopicState {
    fn new(id: u32, name: &str, ends: Vec<u64>) -> TopicState {
        TopicState {
            id,
            name: Arc::from(name),
            ends: ends.into_iter().map(AtomicU64::new).collect(),
            appended: watch::Sender::new(0),
        }
    }

    fn partitions(&self) -> u32 {
        // Bounded by MAX_PARTITIONS at creation.
        u32::try_from(self.ends.len()).unwrap_or(u32::MAX)
    }

    fn end(&self, partition: u32) -> u64 {
        self.ends
            .get(partition as usize)
            .map_or(0, |e| e.load(Ordering::Acquire))
    }

    fn check_partition(&self, partition: u32) -> Result<()> {
        if partition < self.partitions() {
            Ok(())
        } else {
            Err(LogError::UnknownPartition {
                topic: self.name.to_string(),
                partition,
                partitions: self.partitions(),
            })
        }
    }
}

impl fmt::Debug for TopicState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicState")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("partitions", &self.ends.len())
            .finish()
    }
}

type TopicMap = Arc<RwLock<HashMap<String, Arc<TopicState>>>>;

fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Shared {
    db: Arc<Database>,
    dir: PathBuf,
    topics: TopicMap,
    requests: mpsc::Sender<Request>,
    writer: Mutex<Option<JoinHandle<()>>>,
    groups: Groups,
}

impl Shared {
    fn topic(&self, name: &str) -> Result<Arc<TopicState>> {
        read_lock(&self.topics)
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T>>) -> Request,
    ) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// Runs `f` with the database on tokio's blocking pool.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(join_error)?
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Close the queue (replace the sender by one whose receiver is gone), then wait for
        // the writer to finish its last transaction and release the database file.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.requests, closed));
        if let Some(handle) = lock(&self.writer).take() {
            if handle.join().is_err() {
                error!(dir = %self.dir.display(), "Embedded log writer thread panicked.");
            }
        }
        debug!(dir = %self.dir.display(), "Embedded log closed.");
    }
}

// ---------------------------------------------------------------------------------- the log

/// The embedded event log. See the [module documentation](self).
pub struct EmbeddedLog {
    shared: Arc<Shared>,
}

impl fmt::Debug for EmbeddedLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedLog")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

impl EmbeddedLog {
    /// Opens (creating if needed) the log in data directory `dir`.
    ///
    /// Blocks on disk I/O (recovery reads each partition's last offset): call it from a
    /// blocking context ([`crate::open`] does).
    ///
    /// Errors: [`LogError::Config`] when the directory cannot be created or another process
    /// (or another open log in this process) uses it.
    pub fn open(dir: &Path) -> Result<EmbeddedLog> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LogError::Config(format!(
                "cannot create the data directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => LogError::Config(format!(
                "the data directory {} is in use by another process (its event log {} is \
                 locked): stop that process or give this one another data directory",
                dir.display(),
                path.display()
            )),
            DatabaseError::Storage(redb::StorageError::Io(io)) => LogError::Config(format!(
                "cannot open the event log {}: {io}",
                path.display()
            )),
            other => LogError::Internal(format!(
                "cannot open the event log {}: {other}",
                path.display()
            )),
        })?;

        // Make sure every table exists, so readers never see TableDoesNotExist, and that
        // the file has this build's layout.
        let txn = db.begin_write().map_err(storage("open"))?;
        {
            let topics = txn.open_table(TOPICS).map_err(storage("open"))?;
            txn.open_table(RECORDS).map_err(storage("open"))?;
            txn.open_table(TIME_INDEX).map_err(storage("open"))?;
            txn.open_table(GROUP_OFFSETS).map_err(storage("open"))?;
            let mut meta = txn.open_table(META).map_err(storage("open"))?;
            let format = meta
                .get("format")
                .map_err(storage("open"))?
                .map(|v| v.value());
            match format {
                Some(FORMAT_VERSION) => {}
                None if topics.is_empty().map_err(storage("open"))? => {
                    meta.insert("format", FORMAT_VERSION)
                        .map_err(storage("open"))?;
                }
                found => {
                    return Err(LogError::Config(format!(
                        "the event log {} has layout version {}, this build reads version \
                         {FORMAT_VERSION}: use another data directory (or remove that file if its \
                         data can go)",
                        path.display(),
                        found.map_or_else(|| "0 (unversioned)".to_string(), |v| v.to_string()),
                    )))
                }
            }
        }
        txn.commit().map_err(storage("open"))?;

        let (topics, writer_state) = recover(&db)?;
        let topic_count = topics.len();
        let topics: TopicMap = Arc::new(RwLock::new(topics));
        let db = Arc::new(db);
        let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            db: Arc::clone(&db),
            topics: Arc::clone(&topics),
            state: writer_state,
        };
        let handle = std::thread::Builder::new()
            .name("fleet-log-writer".into())
            .spawn(move || writer.run(queue))
            .map_err(|e| LogError::Internal(format!("cannot start the event log writer: {e}")))?;
        info!(dir = %dir.display(), topics = topic_count, "Embedded event log open.");
        Ok(EmbeddedLog {
            shared: Arc::new(Shared {
                db,
                dir: dir.to_path_buf(),
                topics,
                requests,
                writer: Mutex::new(Some(handle)),
                groups: Groups::default(),
            }),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

/// Reads the topics and, per partition, the next offset and the largest timestamp.
fn recover(db: &Database) -> Result<(HashMap<String, Arc<TopicState>>, WriterState)> {
    let txn = db.begin_read().map_err(storage("recovery"))?;
    let topics_table = txn.open_table(TOPICS).map_err(storage("recovery"))?;
    let records = txn.open_table(RECORDS).map_err(storage("recovery"))?;
    let time_index = txn.open_table(TIME_INDEX).map_err(storage("recovery"))?;
    let mut topics = HashMap::new();
    let mut state = WriterState::default();
    for entry in topics_table.iter().map_err(storage("recovery"))? {
        let (name, meta) = entry.map_err(storage("recovery"))?;
        let (id, partitions, _compacted) = meta.value();
        let mut parts = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let next = match records
                .range((id, p, 0)..=(id, p, u64::MAX))
                .map_err(storage("recovery"))?
                .next_back()
            {
                Some(last) => {
                    let (key, chunk) = last.map_err(storage("recovery"))?;
                    chunk_end(key.value().2, chunk.value()).ok_or_else(|| {
                        LogError::Internal(format!(
                            "embedded log: the last chunk of {}/{p} is corrupt",
                            name.value()
                        ))
                    })?
                }
                None => 0,
            };
            let max_ts = match time_index
                .range((id, p, i64::MIN)..=(id, p, i64::MAX))
                .map_err(storage("recovery"))?
                .next_back()
            {
                Some(last) => last.map_err(storage("recovery"))?.0.value().2,
                None => i64::MIN,
            };
            parts.push(PartitionCursor { next, max_ts });
        }
        let ends = parts.iter().map(|p| p.next).collect();
        state.next_topic_id = state.next_topic_id.max(id + 1);
        state.partitions.insert(id, parts);
        topics.insert(
            name.value().to_string(),
            Arc::new(TopicState::new(id, name.value(), ends)),
        );
    }
    Ok((topics, state))
}

#[async_trait]
impl EventLog for EmbeddedLog {
    fn engine(&self) -> &'static str {
        ENGINE
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn create_topic(&self, topic: &str, spec: TopicSpec) -> Result<()> {
        if read_lock(&self.shared.topics).contains_key(topic) {
            return Ok(());
        }
        if topic.is_empty() {
            return Err(LogError::Config("a topic name must not be empty".into()));
        }
        if spec.partitions == 0 || spec.partitions > MAX_PARTITIONS {
            return Err(LogError::Config(format!(
                "topic {topic}: partitions must be between 1 and {MAX_PARTITIONS}, not {}",
                spec.partitions
            )));
        }
        let name = topic.to_string();
        self.shared
            .submit(|reply| Request::CreateTopic { name, spec, reply })
            .await?;
        Ok(())
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn partition_count(&self, topic: &str) -> Result<u32> {
        Ok(self.shared.topic(topic)?.partitions())
    }

    #[instrument(skip(self, records), fields(engine = ENGINE, records = records.len()))]
    async fn produce(
        &self,
        topic: &str,
        records: Vec<ProduceRecord>,
    ) -> Result<Vec<RecordPosition>> {
        let state = self.shared.topic(topic)?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        // Refuse what the record format cannot hold here, not in the shared transaction.
        let limit = u32::MAX as usize - 1;
        if records
            .iter()
            .any(|r| r.value.len() > limit || r.key.as_ref().is_some_and(|k| k.len() > limit))
        {
            return Err(LogError::Config(format!(
                "{topic}: a record key or value is 4 GiB or longer"
            )));
        }
        let count = records.len() as u64;
        let result = self
            .shared
            .submit(|reply| Request::Produce {
                topic: state,
                records,
                reply,
            })
            .await;
        match &result {
            Ok(_) => metrics::counter!(m::PRODUCED_RECORDS, "engine" => ENGINE, "topic" => topic.to_string())
                .increment(count),
            Err(e) => {
                warn!(topic, error = %e, "Produce failed.");
                metrics::counter!(m::PRODUCE_ERRORS, "engine" => ENGINE, "topic" => topic.to_string())
                    .increment(1);
            }
        }
        result
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn end_offsets(&self, topic: &str) -> Result<Vec<i64>> {
        let state = self.shared.topic(topic)?;
        Ok((0..state.partitions())
            .map(|p| to_i64(state.end(p)))
            .collect())
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn offsets_for_time(&self, topic: &str, timestamp_ms: i64) -> Result<Vec<i64>> {
        let state = self.shared.topic(topic)?;
        // Ends first: an index entry of a commit that lands after this read is above them.
        let ends: Vec<u64> = (0..state.partitions()).map(|p| state.end(p)).collect();
        let id = state.id;
        self.shared
            .blocking(move |db| {
                let txn = db.begin_read().map_err(storage("offsets_for_time"))?;
                let index = txn
                    .open_table(TIME_INDEX)
                    .map_err(storage("offsets_for_time"))?;
                let mut out = Vec::with_capacity(ends.len());
                for (p, end) in (0u32..).zip(ends) {
                    let found = match index
                        .range((id, p, timestamp_ms)..=(id, p, i64::MAX))
                        .map_err(storage("offsets_for_time"))?
                        .next()
                    {
                        Some(entry) => entry.map_err(storage("offsets_for_time"))?.1.value(),
                        None => end,
                    };
                    out.push(to_i64(found.min(end)));
                }
                Ok(out)
            })
            .await
    }

    #[instrument(skip(self), fields(engine = ENGINE))]
    async fn committed_offsets(&self, group: &str, topic: &str) -> Result<Vec<Option<i64>>> {
        let state = self.shared.topic(topic)?;
        let partitions: Vec<u32> = (0..state.partitions()).collect();
        let group = group.to_string();
        let id = state.id;
        let found = self
            .shared
            .blocking(move |db| read_committed(db, &group, id, &partitions))
            .await?;
        Ok(found.into_iter().map(|o| o.map(to_i64)).collect())
    }

    #[instrument(skip(self, options), fields(engine = ENGINE))]
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: ConsumerOptions,
    ) -> Result<Box<dyn Consumer>> {
        crate::check_subscription(group, topics)?;
        let mut states = Vec::with_capacity(topics.len());
        let mut seen = HashSet::new();
        for name in topics {
            if seen.insert(*name) {
                states.push(self.shared.topic(name)?);
            }
        }
        let (member, generation) = self.shared.groups.join(group, states.clone());
        let mut consumer = EmbeddedConsumer {
            shared: Arc::clone(&self.shared),
            group: group.to_string(),
            member,
            wakers: states.iter().map(|t| t.appended.subscribe()).collect(),
            topics: states,
            start: options.start,
            fetch_wait: options.fetch_wait,
            generation,
            synced_generation: None,
            positions: BTreeMap::new(),
            pending_seeks: HashMap::new(),
            rotate: 0,
        };
        // Take the assignment now, so `Latest` means "after subscribe returned".
        consumer.sync_assignment().await?;
        debug!(group, member, assignment = ?consumer.assignment(), "Consumer joined.");
        Ok(Box::new(consumer))
    }
}

fn to_i64(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn read_committed(
    db: &Database,
    group: &str,
    topic_id: u32,
    partitions: &[u32],
) -> Result<Vec<Option<u64>>> {
    let txn = db.begin_read().map_err(storage("committed offsets"))?;
    let table = txn
        .open_table(GROUP_OFFSETS)
        .map_err(storage("committed offsets"))?;
    partitions
        .iter()
        .map(|&p| {
            Ok(table
                .get((group, topic_id, p))
                .map_err(storage("committed offsets"))?
                .map(|v| v.value()))
        })
        .collect()
}

// ------------------------------------------------------------------------ the writer thread

enum Request {
    CreateTopic {
        name: String,
        spec: TopicSpec,
        reply: oneshot::Sender<Result<()>>,
    },
    Produce {
        topic: Arc<TopicState>,
        records: Vec<ProduceRecord>,
        reply: oneshot::Sender<Result<Vec<RecordPosition>>>,
    },
    Commit {
        group: String,
        offsets: Vec<(u32, u32, u64)>,
        reply: oneshot::Sender<Result<()>>,
    },
}

impl Request {
    fn payload_bytes(&self) -> usize {
        match self {
            Request::Produce { records, .. } => records
                .iter()
                .map(|r| 12 + r.value.len() + r.key.as_ref().map_or(0, Vec::len))
                .sum(),
            Request::Commit { offsets, .. } => offsets.len() * 16,
            Request::CreateTopic { .. } => 64,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct PartitionCursor {
    /// Offset of the next record.
    next: u64,
    /// Largest timestamp in the partition (`i64::MIN` when empty).
    max_ts: i64,
}

#[derive(Debug, Default)]
struct WriterState {
    next_topic_id: u32,
    partitions: HashMap<u32, Vec<PartitionCursor>>,
    /// Round-robin counters for records without a key.
    round_robin: HashMap<u32, u32>,
}

/// What one request did inside the open transaction; applied to memory after the commit.
enum Outcome {
    Created {
        name: String,
        state: Arc<TopicState>,
    },
    Done,
    Produced {
        topic: Arc<TopicState>,
        positions: Vec<RecordPosition>,
    },
    Committed {
        offsets: usize,
    },
    Rejected(LogError),
}

struct Writer {
    db: Arc<Database>,
    topics: TopicMap,
    state: WriterState,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<Request>) {
        while let Some(first) = queue.blocking_recv() {
            let mut bytes = first.payload_bytes();
            let mut batch = vec![first];
            let mut waited = false;
            loop {
                while batch.len() < MAX_BATCH_REQUESTS && bytes < MAX_BATCH_BYTES {
                    match queue.try_recv() {
                        Ok(request) => {
                            bytes += request.payload_bytes();
                            batch.push(request);
                        }
                        Err(_) => break,
                    }
                }
                // A lone request is written at once; when others were already waiting,
                // more are on their way, so wait once for them (see GROUP_COMMIT_DELAY).
                if waited || batch.len() < 2 || batch.len() >= MAX_BATCH_REQUESTS {
                    break;
                }
                waited = true;
                std::thread::sleep(GROUP_COMMIT_DELAY);
            }
            self.write_batch(batch);
        }
        debug!("Embedded log writer stopped.");
    }

    /// One durable transaction for the whole batch, then every caller is answered.
    fn write_batch(&mut self, batch: Vec<Request>) {
        let mut pending = Pending::default();
        let result = self.apply(&batch, &mut pending);
        match result {
            Ok(outcomes) => {
                let records: usize = outcomes
                    .iter()
                    .map(|o| match o {
                        Outcome::Produced { positions, .. } => positions.len(),
                        _ => 0,
                    })
                    .sum();
                metrics::histogram!(m::GROUP_COMMIT_REQUESTS).record(batch.len() as f64);
                metrics::histogram!(m::GROUP_COMMIT_RECORDS).record(records as f64);
                self.publish(pending, &outcomes);
                for (request, outcome) in batch.into_iter().zip(outcomes) {
                    answer(request, outcome);
                }
            }
            Err(e) => {
                error!(error = %e, requests = batch.len(), "Embedded log write transaction failed.");
                for request in batch {
                    answer(request, Outcome::Rejected(clone_error(&e)));
                }
            }
        }
    }

    /// Writes every request into one transaction and commits it; memory is not touched.
    fn apply(&mut self, batch: &[Request], pending: &mut Pending) -> Result<Vec<Outcome>> {
        let mut txn = self.db.begin_write().map_err(storage("write"))?;
        txn.set_durability(Durability::Immediate)
            .map_err(|e| LogError::Internal(format!("embedded log: durability: {e}")))?;
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let mut topics = txn.open_table(TOPICS).map_err(storage("write"))?;
            let mut records = txn.open_table(RECORDS).map_err(storage("write"))?;
            let mut time_index = txn.open_table(TIME_INDEX).map_err(storage("write"))?;
            let mut group_offsets = txn.open_table(GROUP_OFFSETS).map_err(storage("write"))?;
            let now = now_ms();
            // Open chunk per (topic id, partition); written when full and at the end.
            let mut chunks: HashMap<(u32, u32), ChunkBuilder> = HashMap::new();
            for request in batch {
                let outcome = match request {
                    Request::CreateTopic { name, spec, .. } => {
                        if read_lock(&self.topics).contains_key(name)
                            || pending.topics.iter().any(|(n, _)| n == name)
                        {
                            Outcome::Done
                        } else {
                            let id = self.state.next_topic_id + pending.topics.len() as u32;
                            topics
                                .insert(name.as_str(), (id, spec.partitions, spec.compacted))
                                .map_err(storage("write"))?;
                            let state = Arc::new(TopicState::new(
                                id,
                                name,
                                vec![0; spec.partitions as usize],
                            ));
                            pending.topics.push((name.clone(), Arc::clone(&state)));
                            Outcome::Created {
                                name: name.clone(),
                                state,
                            }
                        }
                    }
                    Request::Produce {
                        topic,
                        records: batch_records,
                        ..
                    } => {
                        let partitions = topic.partitions();
                        let mut positions = Vec::with_capacity(batch_records.len());
                        for record in batch_records {
                            let partition = match &record.key {
                                Some(key) => partition_for_key(key, partitions),
                                None => {
                                    let counter = self
                                        .state
                                        .round_robin
                                        .entry(topic.id)
                                        .or_insert_with(rand::random::<u32>);
                                    *counter = counter.wrapping_add(1);
                                    *counter % partitions
                                }
                            };
                            let Some(cursor) = pending.cursor(&self.state, topic.id, partition)
                            else {
                                return Err(LogError::Internal(format!(
                                    "embedded log: topic {} partition {partition} has no writer state",
                                    topic.name
                                )));
                            };
                            let offset = cursor.next;
                            cursor.next += 1;
                            let ts = record.timestamp_ms.unwrap_or(now);
                            let new_max = ts > cursor.max_ts;
                            if new_max {
                                cursor.max_ts = ts;
                            }
                            let chunk = chunks
                                .entry((topic.id, partition))
                                .or_insert_with(|| ChunkBuilder::new(offset));
                            chunk.push(ts, record.key.as_deref(), &record.value)?;
                            if chunk.buf.len() >= MAX_CHUNK_BYTES {
                                if let Some(full) = chunks.remove(&(topic.id, partition)) {
                                    let (base, bytes) = full.finish();
                                    records
                                        .insert((topic.id, partition, base), bytes.as_slice())
                                        .map_err(storage("write"))?;
                                }
                            }
                            if new_max {
                                time_index
                                    .insert((topic.id, partition, ts), offset)
                                    .map_err(storage("write"))?;
                            }
                            positions.push(RecordPosition {
                                partition,
                                offset: to_i64(offset),
                            });
                        }
                        Outcome::Produced {
                            topic: Arc::clone(topic),
                            positions,
                        }
                    }
                    Request::Commit { group, offsets, .. } => {
                        for &(topic_id, partition, next) in offsets {
                            group_offsets
                                .insert((group.as_str(), topic_id, partition), next)
                                .map_err(storage("write"))?;
                        }
                        Outcome::Committed {
                            offsets: offsets.len(),
                        }
                    }
                };
                outcomes.push(outcome);
            }
            for ((topic_id, partition), chunk) in chunks {
                let (base, bytes) = chunk.finish();
                records
                    .insert((topic_id, partition, base), bytes.as_slice())
                    .map_err(storage("write"))?;
            }
        }
        txn.commit().map_err(storage("write"))?;
        Ok(outcomes)
    }

    /// After a durable commit: advance the writer state and make the data visible.
    fn publish(&mut self, pending: Pending, outcomes: &[Outcome]) {
        for (name, state) in pending.topics {
            self.state.next_topic_id = self.state.next_topic_id.max(state.id + 1);
            self.state.partitions.insert(
                state.id,
                vec![
                    PartitionCursor {
                        next: 0,
                        max_ts: i64::MIN
                    };
                    state.ends.len()
                ],
            );
            write_lock(&self.topics).insert(name, state);
        }
        for ((topic_id, partition), cursor) in pending.cursors {
            if let Some(slot) = self
                .state
                .partitions
                .get_mut(&topic_id)
                .and_then(|v| v.get_mut(partition as usize))
            {
                *slot = cursor;
            }
        }
        let mut touched: HashMap<u32, &Arc<TopicState>> = HashMap::new();
        for outcome in outcomes {
            if let Outcome::Produced { topic, .. } = outcome {
                touched.insert(topic.id, topic);
            }
        }
        for (id, topic) in touched {
            if let Some(cursors) = self.state.partitions.get(&id) {
                for (end, cursor) in topic.ends.iter().zip(cursors) {
                    end.store(cursor.next, Ordering::Release);
                }
            }
            topic.appended.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

/// Changes of the open transaction, applied to the writer state only after it commits.
#[derive(Default)]
struct Pending {
    topics: Vec<(String, Arc<TopicState>)>,
    cursors: HashMap<(u32, u32), PartitionCursor>,
}

impl Pending {
    fn cursor(
        &mut self,
        state: &WriterState,
        topic_id: u32,
        partition: u32,
    ) -> Option<&mut PartitionCursor> {
        let committed = state
            .partitions
            .get(&topic_id)?
            .get(partition as usize)
            .copied()?;
        Some(
            self.cursors
                .entry((topic_id, partition))
                .or_insert(committed),
        )
    }
}

fn clone_error(e: &LogError) -> LogError {
    match e {
        LogError::Unavailable(s) => LogError::Unavailable(s.clone()),
        LogError::Config(s) => LogError::Config(s.clone()),
        LogError::UnknownTopic(s) => LogError::UnknownTopic(s.clone()),
        LogError::UnknownPartition {
            topic,
            partition,
            partitions,
        } => LogError::UnknownPartition {
            topic: topic.clone(),
            partition: *partition,
            partitions: *partitions,
        },
        LogError::Internal(s) => LogError::Internal(s.clone()),
    }
}

fn answer(request: Request, outcome: Outcome) {
    // A caller that gave up (dropped its future) no longer listens: ignore send errors.
    match (request, outcome) {
        (Request::CreateTopic { reply, .. }, Outcome::Created { name, state }) => {
            info!(topic = %name, partitions = state.ends.len(), "Topic created.");
            let _ = reply.send(Ok(()));
        }
        (Request::CreateTopic { reply, .. }, Outcome::Done) => {
            let _ = reply.send(Ok(()));
        }
        (Request::Produce { reply, .. }, Outcome::Produced { positions, .. }) => {
            let _ = reply.send(Ok(positions));
        }
        (Request::Commit { reply, .. }, Outcome::Committed { offsets }) => {
            metrics::counter!(m::COMMITS, "engine" => ENGINE).increment(1);
            debug!(offsets, "Offsets committed.");
            let _ = reply.send(Ok(()));
        }
        (Request::CreateTopic { reply, .. }, Outcome::Rejected(e))
        | (Request::Commit { reply, .. }, Outcome::Rejected(e)) => {
            let _ = reply.send(Err(e));
        }
        (Request::Produce { reply, .. }, Outcome::Rejected(e)) => {
            let _ = reply.send(Err(e));
        }
        (Request::CreateTopic { reply, .. }, _) | (Request::Commit { reply, .. }, _) => {
            let _ = reply.send(Err(LogError::Internal(
                "embedded log: mismatched write outcome".into(),
            )));
        }
        (Request::Produce { reply, .. }, _) => {
            let _ = reply.send(Err(LogError::Internal(
                "embedded log: mismatched write outcome".into(),
            )));
        }
    }
}

// -------------------------------------------------------------------------- consumer groups

/// The consumer groups of this process.
#[derive(Debug, Default)]
struct Groups {
    groups: Mutex<HashMap<String, Group>>,
}

#[derive(Debug)]
struct Group {
    next_member: u64,
    /// Members in join order, with their subscriptions.
    members: BTreeMap<u64, Vec<Arc<TopicState>>>,
    assignment: HashMap<u64, Vec<(Arc<TopicState>, u32)>>,
    generation: watch::Sender<u64>,
}

impl Group {
    /// Kafka's range assignment, per topic, over the members subscribed to it.
    fn rebalance(&mut self) {
        let mut topics: BTreeMap<&str, (&Arc<TopicState>, Vec<u64>)> = BTreeMap::new();
        for (member, subscribed) in &self.members {
            for topic in subscribed {
                topics
                    .entry(&topic.name)
                    .or_insert_with(|| (topic, Vec::new()))
                    .1
                    .push(*member);
            }
        }
        let mut assignment: HashMap<u64, Vec<(Arc<TopicState>, u32)>> =
            self.members.keys().map(|m| (*m, Vec::new())).collect();
        for (topic, members) in topics.into_values() {
            let n = topic.partitions() as usize;
            let per = n / members.len();
            let extra = n % members.len();
            for (i, member) in members.iter().enumerate() {
                let start = i * per + i.min(extra);
                let len = per + usize::from(i < extra);
                let parts = assignment.entry(*member).or_default();
                for p in start..start + len {
                    parts.push((Arc::clone(topic), p as u32));
                }
            }
        }
        self.assignment = assignment;
        self.generation.send_modify(|g| *g += 1);
        metrics::counter!(m::REBALANCES, "engine" => ENGINE).increment(1);
    }
}

impl Groups {
    fn join(&self, group: &str, topics: Vec<Arc<TopicState>>) -> (u64, watch::Receiver<u64>) {
        let mut groups = lock(&self.groups);
        let g = groups.entry(group.to_string()).or_insert_with(|| Group {
            next_member: 0,
            members: BTreeMap::new(),
            assignment: HashMap::new(),
            generation: watch::Sender::new(0),
        });
        let member = g.next_member;
        g.next_member += 1;
        g.members.insert(member, topics);
        g.rebalance();
        (member, g.generation.subscribe())
    }

    fn leave(&self, group: &str, member: u64) {
        let mut groups = lock(&self.groups);
        let Some(g) = groups.get_mut(group) else {
            return;
        };
        g.members.remove(&member);
        if g.members.is_empty() {
            groups.remove(group);
        } else {
            g.rebalance();
        }
    }

    fn assignment(&self, group: &str, member: u64) -> Vec<(Arc<TopicState>, u32)> {
        lock(&self.groups)
            .get(group)
            .and_then(|g| g.assignment.get(&member))
            .cloned()
            .unwrap_or_default()
    }
}

/// A member of an embedded consumer group; leaves the group when dropped.
struct EmbeddedConsumer {
    shared: Arc<Shared>,
    group: String,
    member: u64,
    topics: Vec<Arc<TopicState>>,
    start: StartFrom,
    /// [`ConsumerOptions::fetch_wait`].
    fetch_wait: Duration,
    generation: watch::Receiver<u64>,
    synced_generation: Option<u64>,
    /// Next offset to return, per assigned partition.
    positions: BTreeMap<(Arc<str>, u32), (Arc<TopicState>, u64)>,
    /// Seeks on partitions not (yet) assigned to this member, applied on assignment.
    pending_seeks: HashMap<(Arc<str>, u32), u64>,
    wakers: Vec<watch::Receiver<u64>>,
    rotate: usize,
}

impl fmt::Debug for EmbeddedConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedConsumer")
            .field("group", &self.group)
            .field("member", &self.member)
            .field("topics", &self.topics)
            .field(
                "positions",
                &self
                    .positions
                    .iter()
                    .map(|(k, v)| (k, v.1))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedConsumer {
    fn drop(&mut self) {
        self.shared.groups.leave(&self.group, self.member);
        debug!(group = %self.group, member = self.member, "Consumer left.");
    }
}

struct ReadSpan {
    topic: Arc<TopicState>,
    partition: u32,
    from: u64,
    end: u64,
}

impl EmbeddedConsumer {
    /// Takes over the group's current assignment for this member if it changed: partitions
    /// kept keep their position, new ones start at the committed offset (or `start`).
    async fn sync_assignment(&mut self) -> Result<()> {
        let generation = *self.generation.borrow_and_update();
        if self.synced_generation == Some(generation) {
            return Ok(());
        }
        let assigned = self.shared.groups.assignment(&self.group, self.member);
        let keys: HashSet<(Arc<str>, u32)> = assigned
            .iter()
            .map(|(t, p)| (Arc::clone(&t.name), *p))
            .collect();
        self.positions.retain(|k, _| keys.contains(k));

        let mut new_by_topic: BTreeMap<u32, (Arc<TopicState>, Vec<u32>)> = BTreeMap::new();
        for (topic, p) in &assigned {
            if !self.positions.contains_key(&(Arc::clone(&topic.name), *p)) {
                new_by_topic
                    .entry(topic.id)
                    .or_insert_with(|| (Arc::clone(topic), Vec::new()))
                    .1
                    .push(*p);
            }
        }
        if !new_by_topic.is_empty() {
            let group = self.group.clone();
            let wanted: Vec<(u32, Vec<u32>)> = new_by_topic
                .iter()
                .map(|(id, (_, parts))| (*id, parts.clone()))
                .collect();
            let committed = self
                .shared
                .blocking(move |db| {
                    wanted
                        .iter()
                        .map(|(id, parts)| read_committed(db, &group, *id, parts))
                        .collect::<Result<Vec<_>>>()
                })
                .await?;
            for ((topic, parts), offsets) in new_by_topic.into_values().zip(committed) {
                for (p, committed) in parts.into_iter().zip(offsets) {
                    let key = (Arc::clone(&topic.name), p);
                    let position = match self.pending_seeks.remove(&key) {
                        Some(seek) => seek,
                        None => committed.unwrap_or_else(|| match self.start {
                            StartFrom::Earliest => 0,
                            StartFrom::Latest => topic.end(p),
                        }),
                    };
                    self.positions.insert(key, (Arc::clone(&topic), position));
                }
            }
        }
        self.synced_generation = Some(generation);
        Ok(())
    }

    /// A topic this consumer subscribed to.
    fn subscribed(&self, name: &str, what: &str) -> Result<Arc<TopicState>> {
        self.topics
            .iter()
            .find(|t| &*t.name == name)
            .cloned()
            .ok_or_else(|| {
                LogError::Config(format!(
                    "{what} on {name}: this consumer is not subscribed to it"
                ))
            })
    }
}

#[async_trait]
impl Consumer for EmbeddedConsumer {
    #[instrument(skip(self), fields(engine = ENGINE, group = %self.group, member = self.member))]
    async fn poll(&mut self, max: usize, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        let deadline = tokio::time::Instant::now() + timeout;
        if max == 0 {
            self.sync_assignment().await?;
            return Ok(Vec::new());
        }
        // Set when records are first seen, if fewer than `max`: the fetch wait runs from
        // there (never past the poll's deadline).
        let mut fetch_until: Option<tokio::time::Instant> = None;
        loop {
            self.sync_assignment().await?;
            // Mark the append signals seen before looking at the ends: a commit after this
            // point wakes the wait below.
            for waker in &mut self.wakers {
                waker.borrow_and_update();
            }
            let mut spans: Vec<ReadSpan> = self
                .positions
                .iter()
                .filter_map(|((_, partition), (topic, from))| {
                    let end = topic.end(*partition);
                    (*from < end).then(|| ReadSpan {
                        topic: Arc::clone(topic),
                        partition: *partition,
                        from: *from,
                        end,
                    })
                })
                .collect();
            let available = spans
                .iter()
                .fold(0u64, |n, s| n.saturating_add(s.end.saturating_sub(s.from)));
            if !spans.is_empty()
                && !self.fetch_wait.is_zero()
                && available < u64::try_from(max).unwrap_or(u64::MAX)
            {
                let until = *fetch_until.get_or_insert_with(|| {
                    (tokio::time::Instant::now() + self.fetch_wait).min(deadline)
                });
                if tokio::time::Instant::now() < until {
                    // Fewer than asked for: wait for more, or until the fetch wait ends.
                    let wakers = &mut self.wakers;
                    tokio::select! {
                        () = tokio::time::sleep_until(until) => {}
                        _ = futures::future::select_all(wakers.iter_mut().map(|w| Box::pin(w.changed()))) => {}
                    }
                    continue;
                }
            }
            if !spans.is_empty() && max > 0 {
                // Rotate the starting partition so one busy partition cannot starve others.
                self.rotate = self.rotate.wrapping_add(1);
                let by = self.rotate % spans.len();
                spans.rotate_left(by);
                let records = self
                    .shared
                    .blocking(move |db| read_spans(db, &spans, max))
                    .await?;
                for record in &records {
                    if let Some(pos) = self
                        .positions
                        .get_mut(&(Arc::clone(&record.topic), record.partition))
                    {
                        pos.1 = pos.1.max(u64::try_from(record.offset).unwrap_or(0) + 1);
                    }
                }
                if !records.is_empty() {
                    let mut per_topic: HashMap<&str, u64> = HashMap::new();
                    for r in &records {
                        *per_topic.entry(&r.topic).or_default() += 1;
                    }
                    for (topic, n) in per_topic {
                        metrics::counter!(m::CONSUMED_RECORDS, "engine" => ENGINE, "topic" => topic.to_string())
                            .increment(n);
                    }
                    return Ok(records);
                }
            }
            let generation = &mut self.generation;
            let wakers = &mut self.wakers;
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => return Ok(Vec::new()),
                _ = generation.changed() => {}
                _ = futures::future::select_all(wakers.iter_mut().map(|w| Box::pin(w.changed()))) => {}
            }
        }
    }

    #[instrument(skip(self, offsets), fields(engine = ENGINE, group = %self.group, offsets = offsets.len()))]
    async fn commit(&mut self, offsets: &[CommitOffset]) -> Result<()> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut resolved = Vec::with_capacity(offsets.len());
        for o in offsets {
            // Like Kafka, a group may commit offsets of any topic.
            let topic = self.shared.topic(&o.topic)?;
            topic.check_partition(o.partition)?;
            let next = u64::try_from(o.next_offset).map_err(|_| {
                LogError::Config(format!(
                    "cannot commit negative offset {} for {}/{}",
                    o.next_offset, o.topic, o.partition
                ))
            })?;
            resolved.push((topic.id, o.partition, next));
        }
        let group = self.group.clone();
        self.shared
            .submit(|reply| Request::Commit {
                group,
                offsets: resolved,
                reply,
            })
            .await
    }

    #[instrument(skip(self), fields(engine = ENGINE, group = %self.group))]
    async fn seek(&mut self, topic: &str, partition: u32, offset: i64) -> Result<()> {
        let state = self.subscribed(topic, "seek")?;
        state.check_partition(partition)?;
        let offset = u64::try_from(offset).map_err(|_| {
            LogError::Config(format!(
                "cannot seek {topic}/{partition} to negative offset {offset}"
            ))
        })?;
        self.sync_assignment().await?;
        let key = (Arc::clone(&state.name), partition);
        match self.positions.get_mut(&key) {
            Some(pos) => pos.1 = offset,
            None => {
                debug!(
                    topic,
                    partition,
                    offset,
                    "Seek on a partition not assigned (yet): kept for its assignment."
                );
                self.pending_seeks.insert(key, offset);
            }
        }
        Ok(())
    }

    fn assignment(&self) -> Vec<(String, u32)> {
        let mut out: Vec<(String, u32)> = self
            .shared
            .groups
            .assignment(&self.group, self.member)
            .into_iter()
            .map(|(t, p)| (t.name.to_string(), p))
            .collect();
        out.sort();
        out
    }
}

fn read_spans(db: &Database, spans: &[ReadSpan], max: usize) -> Result<Vec<ConsumedRecord>> {
    let txn = db.begin_read().map_err(storage("read"))?;
    let table = txn.open_table(RECORDS).map_err(storage("read"))?;
    let mut out = Vec::new();
    for span in spans {
        if out.len() >= max {
            break;
        }
        let (id, partition) = (span.topic.id, span.partition);
        // The chunk holding `from` starts at or before it.
        let first = match table
            .range((id, partition, 0)..=(id, partition, span.from))
            .map_err(storage("read"))?
            .next_back()
        {
            Some(entry) => entry.map_err(storage("read"))?.0.value().2,
            None => span.from,
        };
        'chunks: for entry in table
            .range((id, partition, first)..(id, partition, span.end))
            .map_err(storage("read"))?
        {
            let (key, chunk) = entry.map_err(storage("read"))?;
            let base = key.value().2;
            let records = chunk_records(base, chunk.value()).ok_or_else(|| {
                LogError::Internal(format!(
                    "embedded log: chunk {}/{partition}/{base} is corrupt",
                    span.topic.name
                ))
            })?;
            for (offset, (timestamp_ms, key, value)) in records {
                if offset < span.from {
                    continue;
                }
                if offset >= span.end || out.len() >= max {
                    break 'chunks;
                }
                out.push(ConsumedRecord {
                    topic: Arc::clone(&span.topic.name),
                    partition,
                    offset: to_i64(offset),
                    timestamp_ms,
                    key: key.map(<[u8]>::to_vec),
                    value: value.to_vec(),
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_encoding_roundtrips() {
        let records: [ChunkRecord<'static>; 4] = [
            (0, None, b"v"),
            (-5, Some(b""), b""),
            (1_700_000_000_000, Some(b"agent-1"), &[7u8; 1000]),
            (i64::MAX, None, b""),
        ];
        let mut chunk = ChunkBuilder::new(42);
        for (ts, key, value) in records {
            chunk.push(ts, key, value).expect("push");
        }
        let (base, bytes) = chunk.finish();
        assert_eq!(base, 42);
        assert_eq!(chunk_count(&bytes), Some(4));
        assert_eq!(decode_chunk(&bytes), Some(records.to_vec()));
        // Truncated or padded chunks are rejected, never misread.
        assert_eq!(decode_chunk(&bytes[..bytes.len() - 1]), None);
        let mut padded = bytes.clone();
        padded.push(0);
        assert_eq!(decode_chunk(&padded), None);
        assert_eq!(decode_chunk(&[1, 2, 3]), None);
    }

    #[test]
    fn a_chunk_whose_offsets_pass_the_largest_offset_is_corrupt() {
        // Found by `fuzz/fuzz_targets/log_chunk.rs`: a chunk stored under a corrupt offset
        // near u64::MAX made the reader's and recovery's offset arithmetic overflow (a
        // panic with overflow checks, wrapped or saturated offsets without).
        let mut chunk = ChunkBuilder::new(0);
        chunk.push(1, None, b"v").expect("push");
        chunk.push(2, Some(b"k"), b"w").expect("push");
        let (_, bytes) = chunk.finish();
        let last = i64::MAX as u64; // offsets are Kafka's: i64
        let offsets = |base| chunk_records(base, &bytes).map(|r| r.map(|(o, _)| o).collect());
        assert_eq!(offsets(last - 1), Some(vec![last - 1, last]));
        assert_eq!(chunk_end(last - 1, &bytes), Some(last + 1));
        for base in [last, u64::MAX - 1, u64::MAX] {
            assert_eq!(offsets(base), None::<Vec<u64>>, "base {base}");
            assert_eq!(chunk_end(base, &bytes), None, "base {base}");
        }
    }

    fn topic(name: &str, partitions: usize) -> Arc<TopicState> {
        Arc::new(TopicState::new(0, name, vec![0; partitions]))
    }

    #[test]
    fn a_file_of_another_layout_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            // An unversioned file that already holds a topic (the layout before chunks).
            let db = Database::create(dir.path().join(DB_FILE)).expect("create");
            let txn = db.begin_write().expect("txn");
            txn.open_table(TOPICS)
                .expect("table")
                .insert("t", (0, 1, false))
                .expect("insert");
            txn.commit().expect("commit");
        }
        match EmbeddedLog::open(dir.path()) {
            Err(LogError::Config(message)) => {
                assert!(message.contains("layout version"), "{message}")
            }
            other => panic!("opened a file of another layout: {other:?}"),
        }
        // A fresh directory gets the current version and reopens.
        let fresh = tempfile::tempdir().expect("tempdir");
        drop(EmbeddedLog::open(fresh.path()).expect("open"));
        drop(EmbeddedLog::open(fresh.path()).expect("reopen"));
    }

    #[test]
    fn range_assignment_splits_like_kafka() {
        let groups = Groups::default();
        let t = topic("t", 5);
        let (a, _) = groups.join("g", vec![Arc::clone(&t)]);
        assert_eq!(groups.assignment("g", a).len(), 5);
        let (b, _) = groups.join("g", vec![Arc::clone(&t)]);
        let pa: Vec<u32> = groups.assignment("g", a).iter().map(|x| x.1).collect();
        let pb: Vec<u32> = groups.assignment("g", b).iter().map(|x| x.1).collect();
        assert_eq!(pa, vec![0, 1, 2]);
        assert_eq!(pb, vec![3, 4]);
        groups.leave("g", a);
        assert_eq!(groups.assignment("g", b).len(), 5);
        groups.leave("g", b);
        assert!(lock(&groups.groups).is_empty());
    }
}
