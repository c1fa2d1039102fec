//! The embedded chunk store: a directory holding one `redb` file of keys and append-only
//! blob files of bytes ([`blobs`]).
//!
//! | redb table | key | value |
//! | --- | --- | --- |
//! | `raw_blobs`, `rollup_5m_blobs`, `rollup_1h_blobs` | (tenant, agent, window start µs) | where the encoded chunk is |
//! | `segment_blobs` | (tenant, agent, window start, seq) | (holds the whole window, where the encoded block is) |
//! | `blob_files` | file id | (group, committed length, live bytes) |
//! | `partitions` | (topic, partition) | encoded [`PartitionState`] |
//! | `agent_series` | (tenant, agent) | the agent's series names, sorted |
//!
//! Keys order by agent then time, so the chunks of one agent over a range are one range
//! scan, then one positioned read per chunk. A seal and a checkpoint are each one write:
//! the bytes are appended to the blob files and synced, then one redb transaction
//! (fsynced on commit) references them, so nothing is ever half written. redb and file
//! calls block, so they run in `spawn_blocking`.
//!
//! Space: a blob costs its length. Replaced and expired blobs are garbage in their file
//! until the file is deleted (nothing in it is live: retention deletes whole files, since
//! a file holds one kind's chunks of one period) or compacted (at least half garbage and
//! at least 1 MiB while running; at a clean stop, any file at least a tenth garbage). The
//! redb file keeps only keys, so it stays small; a clean stop compacts it when more than
//! half of it is free and it is at most [`COMPACT_AT_STOP_MAX_BYTES`].
//!
//! A store written before the blob files (chunk bytes in the tables `raw`, `rollup_5m`,
//! `rollup_1h` and `segments`) is moved to them when it opens, 4,096 entries a
//! transaction.

mod blobs;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{
    Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, WriteTransaction,
};

pub use blobs::DIR as BLOB_DIR;
use blobs::{chunk_group, BlobRef, BlobWrite, Blobs, FileState, COMPACT_MIN_BYTES, SEGMENT_GROUP};

use crate::state::{decode_state, encode_state};
use crate::store::{
    AgentKey, CheckpointWrite, ChunkKind, ChunkStore, PartitionState, SealWrite, Segment,
    StoredSeries,
};
use crate::{Error, Result, Retention};

/// File name of the key store inside its directory.
pub const FILE_NAME: &str = "chunks.redb";

type ChunkKey = (&'static str, &'static str, i64);
type ChunkTable = TableDefinition<'static, ChunkKey, BlobRef>;
const RAW: ChunkTable = TableDefinition::new("raw_blobs");
const ROLLUP_5M: ChunkTable = TableDefinition::new("rollup_5m_blobs");
const ROLLUP_1H: ChunkTable = TableDefinition::new("rollup_1h_blobs");
/// (tenant, agent, window start, seq) → (holds the whole window, where the block is).
type SegmentKey = (&'static str, &'static str, i64, u64);
type SegmentTable = TableDefinition<'static, SegmentKey, (bool, BlobRef)>;
const SEGMENTS: SegmentTable = TableDefinition::new("segment_blobs");
const PARTITIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("partitions");
/// (tenant, agent) → the agent's series names ([`encode_names`]): one entry per agent, not
/// per series (a fleet's keys were most of the key file).
const SERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("agent_series");

/// The tables of stores written before the blob files: bytes in the values.
mod before_blobs {
    use redb::TableDefinition;
    pub(super) type ChunkTable =
        TableDefinition<'static, (&'static str, &'static str, i64), &'static [u8]>;
    pub(super) const RAW: ChunkTable = TableDefinition::new("raw");
    pub(super) const ROLLUP_5M: ChunkTable = TableDefinition::new("rollup_5m");
    pub(super) const ROLLUP_1H: ChunkTable = TableDefinition::new("rollup_1h");
    pub(super) const SERIES: TableDefinition<
        'static,
        (&'static str, &'static str, &'static str),
        (),
    > = TableDefinition::new("series");
    pub(super) const SEGMENTS: TableDefinition<'static, super::SegmentKey, (bool, &'static [u8])> =
        TableDefinition::new("segments");
}

fn table(kind: ChunkKind) -> ChunkTable {
    match kind {
        ChunkKind::Raw => RAW,
        ChunkKind::Rollup5m => ROLLUP_5M,
        ChunkKind::Rollup1h => ROLLUP_1H,
    }
}

/// A clean stop compacts key files up to this size (1 GiB) when more than half of them
/// is free, and blob files up to this size in all.
pub const COMPACT_AT_STOP_MAX_BYTES: u64 = 1 << 30;

/// Entries moved per transaction when a store from before the blob files opens.
const MIGRATE_BATCH: usize = 4096;

/// What [`EmbeddedChunks::compact`] did: the store's size on disk before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Bytes before (key file and blob files).
    pub before: u64,
    /// Bytes after.
    pub after: u64,
}

/// How much of the store is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// The key file's size.
    pub key_file: u64,
    /// Bytes the key file's pages take (the rest is free space redb reuses).
    pub key_used: u64,
    /// The blob files' sizes, summed.
    pub blob_files: u64,
    /// Bytes of blobs still referenced.
    pub blob_live: u64,
}

impl Usage {
    /// Bytes on disk (key file and blob files).
    pub fn total(&self) -> u64 {
        self.key_file + self.blob_files
    }
}

/// Bytes a closed store takes on disk in `dir` (its key file and blob files).
pub fn disk_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = std::fs::metadata(dir.join(FILE_NAME))?.len();
    match std::fs::read_dir(dir.join(blobs::DIR)) {
        Ok(entries) => {
            for e in entries {
                total += e?.metadata()?.len();
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(total)
}

/// Why a blocking store call failed.
#[derive(Debug)]
pub(crate) enum Fail {
    Db(redb::Error),
    Io(std::io::Error),
    Corrupt(String),
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Db(e) => e.fmt(f),
            Fail::Io(e) => e.fmt(f),
            Fail::Corrupt(m) => f.write_str(m),
        }
    }
}

macro_rules! fail_from {
    ($($t:ty),*) => {$(
        impl From<$t> for Fail {
            fn from(e: $t) -> Fail {
                Fail::Db(e.into())
            }
        }
    )*};
}
fail_from!(
    redb::Error,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Fail {
        Fail::Io(e)
    }
}

fn store_error(path: &Path, e: Fail) -> Error {
    match e {
        Fail::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => {
            Error::Unavailable(format!("time-series store {}: {e}", path.display()))
        }
        e => Error::Internal(format!("time-series store {}: {e}", path.display())),
    }
}

/// The chunk store embedded in a data directory (`<dir>/chunks.redb`, `<dir>/blobs/`).
pub struct EmbeddedChunks {
    shared: Arc<Shared>,
}

/// What the blocking calls share.
struct Shared {
    db: Database,
    blobs: Blobs,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChunks")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedChunks {
    /// Opens (or creates) the store in `dir`. Blocks on file I/O (and recovery after an
    /// unclean shutdown, and moving a store from before the blob files): call it at
    /// start-up. [`Error::Unavailable`] when another process has the store open.
    pub fn open(dir: &Path) -> Result<EmbeddedChunks> {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::Config(format!(
                "cannot create the time-series directory {}: {e}",
                dir.display()
            ))
        })?;
        let path = dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::Unavailable(format!(
                "time-series store {} is open in another process",
                path.display()
            )),
            e => Error::Internal(format!(
                "cannot open the time-series store {}: {e}",
                path.display()
            )),
        })?;
        let init = || -> Result<Blobs, Fail> {
            let tx = db.begin_write()?;
            for k in ChunkKind::ALL {
                tx.open_table(table(k))?;
            }
            tx.open_table(SEGMENTS)?;
            tx.open_table(PARTITIONS)?;
            tx.open_table(SERIES)?;
            // Under the key file's lock: no other process is in the directory.
            let blobs = Blobs::open(&dir.join(blobs::DIR), &tx)?;
            tx.commit()?;
            Ok(blobs)
        };
        let blobs = init().map_err(|e| store_error(&path, e))?;
        let shared = Shared { db, blobs, path };
        shared
            .move_into_blobs()
            .map_err(|e| store_error(&shared.path, e))?;
        Ok(EmbeddedChunks {
            shared: Arc::new(shared),
        })
    }

    /// Path of the key file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// What the store takes on disk and how much of it is in use. Writes two empty
    /// commits first (see inside).
    pub fn usage(&self) -> Result<Usage> {
        self.shared.usage()
    }

    /// Copies the live blobs of every blob file with any garbage to new files, then moves
    /// the key file's pages to the front and truncates it. Needs the store to itself:
    /// [`Error::Unavailable`] while a read or write of another handle is in flight.
    /// Blocks for as long as it rewrites (call it off the async workers).
    pub fn compact(&mut self) -> Result<Compaction> {
        let before = self.usage()?.total();
        self.shared.compact_blobs(|f| f.len > f.live)?;
        self.compact_keys()?;
        Ok(Compaction {
            before,
            after: self.usage()?.total(),
        })
    }

    fn compact_keys(&mut self) -> Result<()> {
        let Some(shared) = Arc::get_mut(&mut self.shared) else {
            return Err(Error::Unavailable(
                "the time-series store is in use: compaction needs it to itself".into(),
            ));
        };
        let path = &shared.path;
        shared.db.compact().map_err(|e| match e {
            redb::CompactionError::TransactionInProgress => Error::Unavailable(
                "a transaction is in flight: compaction needs the store to itself".into(),
            ),
            e => store_error(path, Fail::Db(e.into())),
        })?;
        Ok(())
    }

    /// At a clean stop (the last handle dropped): compacts blob files at least a tenth
    /// garbage (up to [`COMPACT_AT_STOP_MAX_BYTES`] of them), then the key file when more
    /// than half of it is free and it is small enough to do it quickly.
    fn compact_at_stop(&mut self) {
        let budget = std::cell::Cell::new(COMPACT_AT_STOP_MAX_BYTES);
        let picked = self.shared.compact_blobs(|f| {
            let worth = f.len > f.live
                && (f.len - f.live).saturating_mul(10) >= f.len
                && f.live <= budget.get();
            if worth {
                budget.set(budget.get() - f.live);
            }
            worth
        });
        if let Err(e) = picked {
            tracing::warn!(error = %e, "time-series blob files not compacted at stop");
        }
        let usage = match self.usage() {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "time-series store not compacted at stop");
                return;
            }
        };
        if !worth_compacting_at_stop(usage.key_file, usage.key_used) {
            tracing::debug!(?usage, "time-series key file not worth compacting at stop");
            return;
        }
        match self.compact_keys() {
            Ok(()) => tracing::info!(
                path = %self.shared.path.display(),
                before = usage.key_file,
                "time-series key file compacted at stop"
            ),
            Err(e) => tracing::warn!(error = %e, "time-series key file not compacted at stop"),
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Shared) -> Result<T, Fail> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || work(&shared).map_err(|e| store_error(&shared.path, e)))
            .await
            .map_err(|e| Error::Internal(format!("time-series task failed: {e}")))?
    }
}

impl Shared {
    fn usage(&self) -> Result<Usage> {
        let key_file = std::fs::metadata(&self.path)
            .map_err(|e| Error::Internal(format!("{}: {e}", self.path.display())))?
            .len();
        let key_used = (|| -> Result<u64, Fail> {
            // Pages a commit frees stay allocated until a later commit finds no reader
            // needing them: two empty commits release them, so they count as free.
            for _ in 0..2 {
                self.db.begin_write()?.commit()?;
            }
            let tx = self.db.begin_write()?;
            let stats = tx.stats()?;
            tx.abort()?;
            Ok(stats.allocated_pages() * stats.page_size() as u64)
        })()
        .map_err(|e| store_error(&self.path, e))?;
        let (by_kind, blob_files) = self.blobs.stored();
        Ok(Usage {
            key_file,
            key_used,
            blob_files,
            blob_live: by_kind.values().sum(),
        })
    }

    /// Compacts the blob files `pick` chooses (among those with something live).
    fn compact_blobs(&self, pick: impl Fn(&FileState) -> bool) -> Result<()> {
        let mut w = self.blobs.write();
        compact_files(&self.db, &self.blobs, &mut w, &pick).map_err(|e| store_error(&self.path, e))
    }

    /// Moves the chunks and segments of a store from before the blob files into them.
    fn move_into_blobs(&self) -> Result<(), Fail> {
        let old: Vec<String> = {
            let tx = self.db.begin_read()?;
            let names = tx.list_tables()?.map(|t| t.name().to_owned()).collect();
            names
        };
        let has = |name: &str| old.iter().any(|t| t == name);
        let mut moved = 0usize;
        for kind in ChunkKind::ALL {
            let def = match kind {
                ChunkKind::Raw => before_blobs::RAW,
                ChunkKind::Rollup5m => before_blobs::ROLLUP_5M,
                ChunkKind::Rollup1h => before_blobs::ROLLUP_1H,
            };
            if !has(def.name()) {
                continue;
            }
            loop {
                let n = self.write(|tx, w| {
                    let mut from = tx.open_table(def)?;
                    let mut to = tx.open_table(table(kind))?;
                    let batch: Vec<(String, String, i64, Vec<u8>)> = from
                        .iter()?
                        .take(MIGRATE_BATCH)
                        .map(|e| {
                            e.map(|(k, v)| {
                                let (t, a, win) = k.value();
                                (t.to_owned(), a.to_owned(), win, v.value().to_vec())
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    for (t, a, win, bytes) in &batch {
                        let r = w.put(&chunk_group(kind, *win), bytes)?;
                        if let Some(old) = to.insert((t.as_str(), a.as_str(), *win), r)? {
                            w.release(old.value());
                        }
                        from.remove((t.as_str(), a.as_str(), *win))?;
                    }
                    drop((from, to));
                    if batch.is_empty() {
                        tx.delete_table(def)?;
                    }
                    Ok(batch.len())
                })?;
                moved += n;
                if n == 0 {
                    break;
                }
            }
        }
        if has(before_blobs::SEGMENTS.name()) {
            loop {
                let n = self.write(|tx, w| {
                    let mut from = tx.open_table(before_blobs::SEGMENTS)?;
                    let mut to = tx.open_table(SEGMENTS)?;
                    let batch: Vec<(String, String, i64, u64, bool, Vec<u8>)> = from
                        .iter()?
                        .take(MIGRATE_BATCH)
                        .map(|e| {
                            e.map(|(k, v)| {
                                let (t, a, win, seq) = k.value();
                                let (full, bytes) = v.value();
                                (t.to_owned(), a.to_owned(), win, seq, full, bytes.to_vec())
                            })
                        })
                        .collect::<Result<_, _>>()?;
                    for (t, a, win, seq, full, bytes) in &batch {
                        let r = w.put(SEGMENT_GROUP, bytes)?;
                        let key = (t.as_str(), a.as_str(), *win, *seq);
                        if let Some(old) = to.insert(key, (*full, r))? {
                            w.release(old.value().1);
                        }
                        from.remove(key)?;
                    }
                    drop((from, to));
                    if batch.is_empty() {
                        tx.delete_table(before_blobs::SEGMENTS)?;
                    }
                    Ok(batch.len())
                })?;
                moved += n;
                if n == 0 {
                    break;
                }
            }
        }
        if has(before_blobs::SERIES.name()) {
            moved += self.write(|tx, _| {
                let old = tx.open_table(before_blobs::SERIES)?;
                let mut by_agent: std::collections::BTreeMap<(String, String), Vec<String>> =
                    Default::default();
                for e in old.iter()? {
                    let (k, _) = e?;
                    let (tenant, agent, name) = k.value();
                    by_agent
                        .entry((tenant.to_owned(), agent.to_owned()))
                        .or_default()
                        .push(name.to_owned());
                }
                drop(old);
                let mut new = tx.open_table(SERIES)?;
                for ((tenant, agent), names) in &by_agent {
                    add_series(&mut new, tenant, agent, names.iter().map(String::as_str))?;
                }
                drop(new);
                tx.delete_table(before_blobs::SERIES)?;
                Ok(by_agent.values().map(Vec::len).sum::<usize>())
            })?;
        }
        if moved > 0 {
            tracing::info!(
                path = %self.path.display(),
                moved,
                "moved the chunks of a store from before the blob files into them"
            );
        }
        Ok(())
    }

    /// One write: `work` appends blobs and changes keys in `tx`; then the blobs are
    /// synced, the files' state recorded and `tx` committed. Files left with nothing live
    /// are deleted after the commit; a failed write leaves the files as they were.
    /// Afterwards, files at least half garbage (and at least 1 MiB) are compacted.
    fn write<T>(
        &self,
        work: impl FnOnce(&WriteTransaction, &mut BlobWrite<'_>) -> Result<T, Fail>,
    ) -> Result<T, Fail> {
        let mut w = self.blobs.write();
        let out = commit(&self.db, &self.blobs, &mut w, work)?;
        compact_files(&self.db, &self.blobs, &mut w, &|f: &FileState| {
            f.len >= COMPACT_MIN_BYTES && f.half_garbage()
        })?;
        let (file, live) = w.totals();
        crate::metrics::blob_bytes(file, live);
        Ok(out)
    }

    /// Reads blobs by references taken in a read transaction (`refs`), looking them up
    /// again when a compaction deleted a file in between.
    fn read_blobs<K>(
        &self,
        refs: impl Fn(&Database) -> Result<Vec<(K, BlobRef)>, Fail>,
    ) -> Result<Vec<(K, Vec<u8>)>, Fail> {
        for _ in 0..8 {
            let mut out = Vec::new();
            let mut gone = false;
            for (k, r) in refs(&self.db)? {
                match self.blobs.read(r)? {
                    Some(bytes) => out.push((k, bytes)),
                    None => {
                        gone = true;
                        break;
                    }
                }
            }
            if !gone {
                return Ok(out);
            }
        }
        Err(Fail::Corrupt(
            "a blob file vanished under eight reads in a row".into(),
        ))
    }
}

/// `work`, then the blob files' state, in one committed transaction (see
/// [`EmbeddedChunks::write`]).
fn commit<T>(
    db: &Database,
    blobs: &Blobs,
    w: &mut BlobWrite<'_>,
    work: impl FnOnce(&WriteTransaction, &mut BlobWrite<'_>) -> Result<T, Fail>,
) -> Result<T, Fail> {
    let attempt = (|| {
        let tx = db.begin_write()?;
        let out = work(&tx, w)?;
        let dead = w.finish(&tx)?;
        tx.commit()?;
        Ok((out, dead))
    })();
    match attempt {
        Ok((out, dead)) => {
            blobs.unlink_all(&dead);
            Ok(out)
        }
        Err(e) => {
            w.abort(db);
            Err(e)
        }
    }
}

/// Copies the live blobs of the files `pick` chooses to new files of their groups and
/// deletes them, in one transaction.
fn compact_files(
    db: &Database,
    blobs: &Blobs,
    w: &mut BlobWrite<'_>,
    pick: &dyn Fn(&FileState) -> bool,
) -> Result<(), Fail> {
    let victims = w.to_compact(pick);
    if victims.is_empty() {
        return Ok(());
    }
    let ids: BTreeSet<u32> = victims.keys().copied().collect();
    let kinds: BTreeSet<&'static str> = victims
        .values()
        .map(|f| blobs::group_kind(&f.group))
        .collect();
    let started = std::time::Instant::now();
    w.retire(&ids);
    let moved = commit(db, blobs, w, |tx, w| {
        let mut moved = 0u64;
        for kind in ChunkKind::ALL {
            if !kinds.contains(kind.as_str()) {
                continue;
            }
            let mut t = tx.open_table(table(kind))?;
            let refs: Vec<((String, String, i64), BlobRef)> = t
                .iter()?
                .filter_map(|e| match e {
                    Ok((k, v)) => {
                        let r = v.value();
                        ids.contains(&r.0).then(|| {
                            let (tenant, agent, win) = k.value();
                            Ok(((tenant.to_owned(), agent.to_owned(), win), r))
                        })
                    }
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for ((tenant, agent, win), r) in refs {
                let group = &victims[&r.0].group;
                let bytes = w.read(r)?;
                let new = w.put(group, &bytes)?;
                w.release(r);
                t.insert((tenant.as_str(), agent.as_str(), win), new)?;
                moved += u64::from(r.2);
            }
        }
        if kinds.contains("segments") {
            let mut t = tx.open_table(SEGMENTS)?;
            type Owned = (String, String, i64, u64);
            let refs: Vec<(Owned, bool, BlobRef)> = t
                .iter()?
                .filter_map(|e| match e {
                    Ok((k, v)) => {
                        let (full, r) = v.value();
                        ids.contains(&r.0).then(|| {
                            let (tenant, agent, win, seq) = k.value();
                            Ok(((tenant.to_owned(), agent.to_owned(), win, seq), full, r))
                        })
                    }
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()?;
            for ((tenant, agent, win, seq), full, r) in refs {
                let bytes = w.read(r)?;
                let new = w.put(SEGMENT_GROUP, &bytes)?;
                w.release(r);
                t.insert((tenant.as_str(), agent.as_str(), win, seq), (full, new))?;
                moved += u64::from(r.2);
            }
        }
        Ok(moved)
    })?;
    crate::metrics::blobs_compacted(ids.len(), moved);
    tracing::debug!(
        files = ids.len(),
        moved,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "time-series blob files compacted"
    );
    Ok(())
}

/// More than half of a key file of at most [`COMPACT_AT_STOP_MAX_BYTES`] is free. (redb's
/// close writes its allocator state in one more commit; on a compacted file, with no free
/// page left, that commit grows the file, and below 4 GiB growth doubles it: compacting a
/// file less than half free would leave it larger than it was.)
fn worth_compacting_at_stop(file: u64, used: u64) -> bool {
    file <= COMPACT_AT_STOP_MAX_BYTES && used < file / 2
}

impl Drop for EmbeddedChunks {
    fn drop(&mut self) {
        self.compact_at_stop();
    }
}

/// Series names as stored: sorted, each a `u32` (little-endian) length and its bytes.
fn encode_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let mut out = Vec::new();
    for n in names {
        // Names are bounded far below 4 GiB by the engine (`name_too_long`).
        out.extend_from_slice(&(n.len() as u32).to_le_bytes());
        out.extend_from_slice(n.as_bytes());
    }
    out
}

fn decode_names(mut bytes: &[u8]) -> Result<Vec<String>, Fail> {
    let bad = || Fail::Corrupt("a stored series list does not decode".into());
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (len, rest) = bytes.split_first_chunk::<4>().ok_or_else(bad)?;
        let len = u32::from_le_bytes(*len) as usize;
        let name = rest.get(..len).ok_or_else(bad)?;
        out.push(String::from_utf8(name.to_vec()).map_err(|_| bad())?);
        bytes = &rest[len..];
    }
    Ok(out)
}

/// Adds `names` to the series of (tenant, agent); writes only when one is new.
fn add_series<'n>(
    t: &mut redb::Table<(&str, &str), &[u8]>,
    tenant: &str,
    agent: &str,
    names: impl IntoIterator<Item = &'n str>,
) -> Result<(), Fail> {
    let old = match t.get((tenant, agent))? {
        Some(v) => decode_names(v.value())?,
        None => Vec::new(),
    };
    let mut all: BTreeSet<String> = old.into_iter().collect();
    let before = all.len();
    all.extend(names.into_iter().map(str::to_owned));
    if all.len() != before {
        t.insert(
            (tenant, agent),
            encode_names(all.iter().map(String::as_str)).as_slice(),
        )?;
    }
    Ok(())
}

/// Removes every segment of (tenant, agent, window).
fn drop_segments(
    t: &mut redb::Table<SegmentKey, (bool, BlobRef)>,
    w: &mut BlobWrite<'_>,
    tenant: &str,
    agent: &str,
    window: i64,
) -> Result<(), Fail> {
    let keys: Vec<u64> = t
        .range((tenant, agent, window, 0)..=(tenant, agent, window, u64::MAX))?
        .map(|e| e.map(|(k, _)| k.value().3))
        .collect::<Result<_, _>>()?;
    for seq in keys {
        if let Some(old) = t.remove((tenant, agent, window, seq))? {
            w.release(old.value().1);
        }
    }
    Ok(())
}

#[async_trait]
impl ChunkStore for EmbeddedChunks {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    async fn seal(&self, write: SealWrite) -> Result<()> {
        self.blocking(move |s| {
            s.write(|tx, w| {
                for k in ChunkKind::ALL {
                    let mut t = tx.open_table(table(k))?;
                    for c in write.chunks.iter().filter(|c| c.kind == k) {
                        let r = w.put(&chunk_group(k, c.window), &c.bytes)?;
                        if let Some(old) =
                            t.insert((&*c.agent.tenant, &*c.agent.agent, c.window), r)?
                        {
                            w.release(old.value());
                        }
                    }
                }
                let mut segs = tx.open_table(SEGMENTS)?;
                for (a, win) in &write.sealed {
                    drop_segments(&mut segs, w, &a.tenant, &a.agent, *win)?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn chunks(
        &self,
        kind: ChunkKind,
        agent: &AgentKey,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let agent = agent.clone();
        self.blocking(move |s| {
            s.read_blobs(|db| {
                let tx = db.begin_read()?;
                let t = tx.open_table(table(kind))?;
                let mut out = Vec::new();
                for e in t.range(
                    (&*agent.tenant, &*agent.agent, from)..(&*agent.tenant, &*agent.agent, to),
                )? {
                    let (k, v) = e?;
                    out.push((k.value().2, v.value()));
                }
                Ok(out)
            })
        })
        .await
    }

    async fn checkpoint(&self, write: CheckpointWrite) -> Result<()> {
        self.blocking(move |s| {
            s.write(|tx, w| {
                let mut segs = tx.open_table(SEGMENTS)?;
                for seg in &write.segments {
                    if seg.full {
                        drop_segments(
                            &mut segs,
                            w,
                            &seg.agent.tenant,
                            &seg.agent.agent,
                            seg.window,
                        )?;
                    }
                    let r = w.put(SEGMENT_GROUP, &seg.bytes)?;
                    let key = (&*seg.agent.tenant, &*seg.agent.agent, seg.window, seg.seq);
                    if let Some(old) = segs.insert(key, (seg.full, r))? {
                        w.release(old.value().1);
                    }
                }
                let mut series = tx.open_table(SERIES)?;
                let mut by_agent: std::collections::BTreeMap<&AgentKey, Vec<&str>> =
                    Default::default();
                for (a, name) in &write.series {
                    by_agent.entry(a).or_default().push(name);
                }
                for (a, names) in by_agent {
                    add_series(&mut series, &a.tenant, &a.agent, names)?;
                }
                let mut parts = tx.open_table(PARTITIONS)?;
                for p in &write.partitions {
                    parts.insert((p.topic.as_str(), p.partition), encode_state(p).as_slice())?;
                }
                Ok(())
            })
        })
        .await
    }

    async fn partition_state(&self, topic: &str, partition: u32) -> Result<Option<PartitionState>> {
        let topic = topic.to_owned();
        let topic_name = topic.clone();
        let bytes = self
            .blocking(move |s| {
                let tx = s.db.begin_read()?;
                let t = tx.open_table(PARTITIONS)?;
                Ok(t.get((topic.as_str(), partition))?
                    .map(|v| v.value().to_vec()))
            })
            .await?;
        bytes
            .map(|b| decode_state(&b, &topic_name, partition))
            .transpose()
            .map_err(|e| Error::Internal(format!("a stored partition state does not decode: {e}")))
    }

    async fn segments(&self, agent: &AgentKey, from: i64, to: i64) -> Result<Vec<Segment>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let agent = agent.clone();
        self.blocking(move |s| {
            let found = s.read_blobs(|db| {
                let tx = db.begin_read()?;
                let t = tx.open_table(SEGMENTS)?;
                let mut out = Vec::new();
                for e in t.range(
                    (&*agent.tenant, &*agent.agent, from, 0)
                        ..(&*agent.tenant, &*agent.agent, to, 0),
                )? {
                    let (k, v) = e?;
                    let (_, _, window, seq) = k.value();
                    let (full, r) = v.value();
                    out.push(((window, seq, full), r));
                }
                Ok(out)
            })?;
            Ok(found
                .into_iter()
                .map(|((window, seq, full), bytes)| Segment {
                    agent: agent.clone(),
                    window,
                    seq,
                    full,
                    bytes,
                })
                .collect())
        })
        .await
    }

    async fn series(&self, agent: &AgentKey) -> Result<Vec<String>> {
        let agent = agent.clone();
        self.blocking(move |s| {
            let tx = s.db.begin_read()?;
            let t = tx.open_table(SERIES)?;
            match t.get((&*agent.tenant, &*agent.agent))? {
                Some(v) => decode_names(v.value()),
                None => Ok(Vec::new()),
            }
        })
        .await
    }

    async fn list_series(&self, limit: usize) -> Result<Vec<StoredSeries>> {
        self.blocking(move |s| {
            let tx = s.db.begin_read()?;
            let t = tx.open_table(SERIES)?;
            let mut out = Vec::new();
            for e in t.iter()? {
                if out.len() >= limit {
                    break;
                }
                let (k, v) = e?;
                let (tenant, agent) = k.value();
                let key = AgentKey::new(tenant, agent);
                for series in decode_names(v.value())? {
                    if out.len() >= limit {
                        break;
                    }
                    out.push(StoredSeries {
                        agent: key.clone(),
                        series,
                    });
                }
            }
            Ok(out)
        })
        .await
    }

    async fn expire(&self, now_micros: i64, retention: &Retention) -> Result<u64> {
        let retention = *retention;
        self.blocking(move |s| {
            s.write(|tx, w| {
                let mut removed = 0u64;
                for kind in ChunkKind::ALL {
                    let keep =
                        i64::try_from(kind.retention(&retention).as_micros()).unwrap_or(i64::MAX);
                    let cutoff = now_micros.saturating_sub(keep);
                    let mut t = tx.open_table(table(kind))?;
                    let old: Vec<(String, String, i64)> = t
                        .iter()?
                        .filter_map(|e| match e {
                            Ok((k, _)) => {
                                let (tenant, agent, win) = k.value();
                                (win.saturating_add(kind.window_micros()) <= cutoff)
                                    .then(|| Ok((tenant.to_owned(), agent.to_owned(), win)))
                            }
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<_, _>>()?;
                    for (tenant, agent, win) in &old {
                        if let Some(r) = t.remove((tenant.as_str(), agent.as_str(), *win))? {
                            w.release(r.value());
                        }
                    }
                    removed += old.len() as u64;
                }
                // Segments of windows past the raw retention (left by an agent that never
                // came back and a process that stopped before sealing it).
                let keep = i64::try_from(retention.raw.as_micros()).unwrap_or(i64::MAX);
                let cutoff = now_micros.saturating_sub(keep);
                let mut segs = tx.open_table(SEGMENTS)?;
                let old: Vec<(String, String, i64, u64)> = segs
                    .iter()?
                    .filter_map(|e| match e {
                        Ok((k, _)) => {
                            let (tenant, agent, win, seq) = k.value();
                            (win.saturating_add(ChunkKind::Raw.window_micros()) <= cutoff)
                                .then(|| Ok((tenant.to_owned(), agent.to_owned(), win, seq)))
                        }
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()?;
                for (tenant, agent, win, seq) in &old {
                    if let Some(r) = segs.remove((tenant.as_str(), agent.as_str(), *win, *seq))? {
                        w.release(r.value().1);
                    }
                }
                removed += old.len() as u64;
                Ok(removed)
            })
        })
        .await
    }

    async fn stored_bytes(&self) -> Result<Vec<(&'static str, u64)>> {
        // Off the async workers: it waits for a write in flight.
        self.blocking(|s| {
            let (by_kind, _) = s.blobs.stored();
            Ok(["raw", "5m", "1h", "segments"]
                .into_iter()
                .map(|k| (k, by_kind.get(k).copied().unwrap_or(0)))
                .collect())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_stop_compacts_small_files_more_than_half_free() {
        assert!(worth_compacting_at_stop(8 << 20, 3 << 20));
        assert!(worth_compacting_at_stop(8 << 20, (4 << 20) - 1));
        assert!(!worth_compacting_at_stop(8 << 20, 4 << 20));
        assert!(!worth_compacting_at_stop(8 << 20, 6 << 20));
        assert!(!worth_compacting_at_stop(8 << 20, 8 << 20));
        // Larger files wait for `fleetstream compact`.
        assert!(!worth_compacting_at_stop(COMPACT_AT_STOP_MAX_BYTES + 1, 0));
        assert!(worth_compacting_at_stop(COMPACT_AT_STOP_MAX_BYTES, 0));
    }
}
