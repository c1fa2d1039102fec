//! The embedded chunk store: one `redb` file in the data directory.
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `raw`, `rollup_5m`, `rollup_1h` | (tenant, agent, window start µs) | encoded chunk |
//! | `segments` | (tenant, agent, window start, seq) | (holds the whole window, encoded block) |
//! | `partitions` | (topic, partition) | encoded [`PartitionState`] |
//! | `series` | (tenant, agent, series) | — |
//!
//! Keys order by agent then time, so the chunks of one agent over a range are one range
//! scan. A seal and a checkpoint are each one write transaction (atomic and durable:
//! redb fsyncs on commit). redb calls block, so they run in `spawn_blocking`.
//!
//! redb reuses freed pages but never gives the file's space back on its own: the file
//! grows in steps and keeps its size after retention deletes. [`EmbeddedChunks::compact`]
//! moves the pages to the front and truncates the file; a clean stop does it when more
//! than half of the file is free and the file is at most [`COMPACT_AT_STOP_MAX_BYTES`]
//! (compaction rewrites what it moves, so a larger file is left to `fleetstream compact`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use crate::state::{decode_state, encode_state};
use crate::store::{
    AgentKey, CheckpointWrite, ChunkKind, ChunkStore, PartitionState, SealWrite, Segment,
    StoredSeries,
};
use crate::{Error, Result, Retention};

/// File name of the store inside its directory.
pub const FILE_NAME: &str = "chunks.redb";

type ChunkTable = TableDefinition<'static, (&'static str, &'static str, i64), &'static [u8]>;
const RAW: ChunkTable = TableDefinition::new("raw");
const ROLLUP_5M: ChunkTable = TableDefinition::new("rollup_5m");
const ROLLUP_1H: ChunkTable = TableDefinition::new("rollup_1h");
/// (tenant, agent, window start, seq) → (holds the whole window, encoded block).
type SegmentKey = (&'static str, &'static str, i64, u64);
type SegmentValue = (bool, &'static [u8]);
const SEGMENTS: TableDefinition<SegmentKey, SegmentValue> = TableDefinition::new("segments");
const PARTITIONS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("partitions");
const SERIES: TableDefinition<(&str, &str, &str), ()> = TableDefinition::new("series");

fn table(kind: ChunkKind) -> ChunkTable {
    match kind {
        ChunkKind::Raw => RAW,
        ChunkKind::Rollup5m => ROLLUP_5M,
        ChunkKind::Rollup1h => ROLLUP_1H,
    }
}

/// A clean stop compacts files up to this size (1 GiB) when more than half of them is free.
pub const COMPACT_AT_STOP_MAX_BYTES: u64 = 1 << 30;

/// What [`EmbeddedChunks::compact`] did: the file's size before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// File size before (bytes).
    pub before: u64,
    /// File size after (bytes).
    pub after: u64,
}

/// The chunk store embedded in a data directory (`<dir>/chunks.redb`).
pub struct EmbeddedChunks {
    db: Arc<Database>,
    path: PathBuf,
}

impl std::fmt::Debug for EmbeddedChunks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChunks")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl EmbeddedChunks {
    /// Opens (or creates) the store in `dir`. Blocks on file I/O (and recovery after an
    /// unclean shutdown): call it at start-up. [`Error::Unavailable`] when another
    /// process has the file open.
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
        let init = || -> Result<(), redb::Error> {
            let tx = db.begin_write()?;
            for k in ChunkKind::ALL {
                tx.open_table(table(k))?;
            }
            tx.open_table(SEGMENTS)?;
            tx.open_table(PARTITIONS)?;
            tx.open_table(SERIES)?;
            tx.commit()?;
            Ok(())
        };
        init().map_err(|e| internal(&path, e))?;
        Ok(EmbeddedChunks {
            db: Arc::new(db),
            path,
        })
    }

    /// Path of the store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size and the bytes its pages take (the rest is free space redb reuses).
    /// Writes two empty commits first (see inside).
    pub fn usage(&self) -> Result<(u64, u64)> {
        let file = std::fs::metadata(&self.path)
            .map_err(|e| Error::Internal(format!("{}: {e}", self.path.display())))?
            .len();
        let used = (|| -> Result<u64, redb::Error> {
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
        .map_err(|e| internal(&self.path, e))?;
        Ok((file, used))
    }

    /// Moves the pages to the front of the file and truncates it. Needs the store to
    /// itself: [`Error::Unavailable`] while a read or write of another handle is in
    /// flight. Blocks for as long as it rewrites (call it off the async workers).
    pub fn compact(&mut self) -> Result<Compaction> {
        let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        let before = size(&self.path);
        let Some(db) = Arc::get_mut(&mut self.db) else {
            return Err(Error::Unavailable(
                "the time-series store is in use: compaction needs it to itself".into(),
            ));
        };
        db.compact().map_err(|e| match e {
            redb::CompactionError::TransactionInProgress => Error::Unavailable(
                "a transaction is in flight: compaction needs the store to itself".into(),
            ),
            e => internal(&self.path, e.into()),
        })?;
        Ok(Compaction {
            before,
            after: size(&self.path),
        })
    }

    /// At a clean stop (the last handle dropped): compacts when more than half of the
    /// file is free and the file is small enough to do it quickly.
    fn compact_at_stop(&mut self) {
        let (file, used) = match self.usage() {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "time-series store not compacted at stop");
                return;
            }
        };
        if !worth_compacting_at_stop(file, used) {
            tracing::debug!(file, used, "time-series store not worth compacting at stop");
            return;
        }
        match self.compact() {
            Ok(c) => tracing::info!(
                path = %self.path.display(),
                before = c.before,
                after = c.after,
                "time-series store compacted at stop"
            ),
            Err(e) => tracing::warn!(error = %e, "time-series store not compacted at stop"),
        }
    }

    async fn blocking<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Database) -> Result<T, redb::Error> + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || work(&db).map_err(|e| internal(&path, e)))
            .await
            .map_err(|e| Error::Internal(format!("time-series task failed: {e}")))?
    }
}

/// More than half of a file of at most [`COMPACT_AT_STOP_MAX_BYTES`] is free. (redb's
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

fn internal(path: &Path, e: redb::Error) -> Error {
    Error::Internal(format!("time-series store {}: {e}", path.display()))
}

/// Removes every segment of (tenant, agent, window).
fn drop_segments(
    t: &mut redb::Table<SegmentKey, SegmentValue>,
    tenant: &str,
    agent: &str,
    window: i64,
) -> Result<(), redb::Error> {
    let keys: Vec<u64> = t
        .range((tenant, agent, window, 0)..=(tenant, agent, window, u64::MAX))?
        .map(|e| e.map(|(k, _)| k.value().3))
        .collect::<Result<_, _>>()?;
    for seq in keys {
        t.remove((tenant, agent, window, seq))?;
    }
    Ok(())
}

#[async_trait]
impl ChunkStore for EmbeddedChunks {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    async fn seal(&self, write: SealWrite) -> Result<()> {
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            for k in ChunkKind::ALL {
                let mut t = tx.open_table(table(k))?;
                for c in write.chunks.iter().filter(|c| c.kind == k) {
                    t.insert(
                        (&*c.agent.tenant, &*c.agent.agent, c.window),
                        c.bytes.as_slice(),
                    )?;
                }
            }
            {
                let mut segs = tx.open_table(SEGMENTS)?;
                for (a, w) in &write.sealed {
                    drop_segments(&mut segs, &a.tenant, &a.agent, *w)?;
                }
            }
            tx.commit()?;
            Ok(())
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
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(table(kind))?;
            let mut out = Vec::new();
            for e in
                t.range((&*agent.tenant, &*agent.agent, from)..(&*agent.tenant, &*agent.agent, to))?
            {
                let (k, v) = e?;
                out.push((k.value().2, v.value().to_vec()));
            }
            Ok(out)
        })
        .await
    }

    async fn checkpoint(&self, write: CheckpointWrite) -> Result<()> {
        self.blocking(move |db| {
            let tx = db.begin_write()?;
            {
                let mut segs = tx.open_table(SEGMENTS)?;
                for s in &write.segments {
                    if s.full {
                        drop_segments(&mut segs, &s.agent.tenant, &s.agent.agent, s.window)?;
                    }
                    segs.insert(
                        (&*s.agent.tenant, &*s.agent.agent, s.window, s.seq),
                        (s.full, s.bytes.as_slice()),
                    )?;
                }
                let mut series = tx.open_table(SERIES)?;
                for (a, name) in &write.series {
                    series.insert((&*a.tenant, &*a.agent, name.as_str()), ())?;
                }
                let mut parts = tx.open_table(PARTITIONS)?;
                for p in &write.partitions {
                    parts.insert((p.topic.as_str(), p.partition), encode_state(p).as_slice())?;
                }
            }
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn partition_state(&self, topic: &str, partition: u32) -> Result<Option<PartitionState>> {
        let topic = topic.to_owned();
        let topic_name = topic.clone();
        let bytes = self
            .blocking(move |db| {
                let tx = db.begin_read()?;
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
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SEGMENTS)?;
            let mut out = Vec::new();
            for e in t.range(
                (&*agent.tenant, &*agent.agent, from, 0)..(&*agent.tenant, &*agent.agent, to, 0),
            )? {
                let (k, v) = e?;
                let (_, _, window, seq) = k.value();
                let (full, bytes) = v.value();
                out.push(Segment {
                    agent: agent.clone(),
                    window,
                    seq,
                    full,
                    bytes: bytes.to_vec(),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn series(&self, agent: &AgentKey) -> Result<Vec<String>> {
        let agent = agent.clone();
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SERIES)?;
            let mut out = Vec::new();
            for e in t.range((&*agent.tenant, &*agent.agent, "")..)? {
                let (k, _) = e?;
                let (tenant, a, s) = k.value();
                if tenant != &*agent.tenant || a != &*agent.agent {
                    break;
                }
                out.push(s.to_owned());
            }
            Ok(out)
        })
        .await
    }

    async fn list_series(&self, limit: usize) -> Result<Vec<StoredSeries>> {
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let t = tx.open_table(SERIES)?;
            let mut out = Vec::new();
            for e in t.iter()?.take(limit) {
                let (k, _) = e?;
                let (tenant, agent, series) = k.value();
                out.push(StoredSeries {
                    agent: AgentKey::new(tenant, agent),
                    series: series.to_owned(),
                });
            }
            Ok(out)
        })
        .await
    }

    async fn expire(&self, now_micros: i64, retention: &Retention) -> Result<u64> {
        let retention = *retention;
        self.blocking(move |db| {
            let tx = db.begin_write()?;
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
                            let (tenant, agent, w) = k.value();
                            (w.saturating_add(kind.window_micros()) <= cutoff)
                                .then(|| Ok((tenant.to_owned(), agent.to_owned(), w)))
                        }
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()?;
                for (tenant, agent, w) in &old {
                    t.remove((tenant.as_str(), agent.as_str(), *w))?;
                }
                removed += old.len() as u64;
            }
            // Segments of windows past the raw retention (left by an agent that never
            // came back and a process that stopped before sealing it).
            {
                let keep = i64::try_from(retention.raw.as_micros()).unwrap_or(i64::MAX);
                let cutoff = now_micros.saturating_sub(keep);
                let mut segs = tx.open_table(SEGMENTS)?;
                let old: Vec<(String, String, i64, u64)> = segs
                    .iter()?
                    .filter_map(|e| match e {
                        Ok((k, _)) => {
                            let (tenant, agent, w, seq) = k.value();
                            (w.saturating_add(ChunkKind::Raw.window_micros()) <= cutoff)
                                .then(|| Ok((tenant.to_owned(), agent.to_owned(), w, seq)))
                        }
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()?;
                for (tenant, agent, w, seq) in &old {
                    segs.remove((tenant.as_str(), agent.as_str(), *w, *seq))?;
                }
                removed += old.len() as u64;
            }
            tx.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn stored_bytes(&self) -> Result<Vec<(&'static str, u64)>> {
        self.blocking(move |db| {
            let tx = db.begin_read()?;
            let mut out = Vec::new();
            for kind in ChunkKind::ALL {
                out.push((
                    kind.as_str(),
                    tx.open_table(table(kind))?.stats()?.stored_bytes(),
                ));
            }
            out.push(("segments", tx.open_table(SEGMENTS)?.stats()?.stored_bytes()));
            Ok(out)
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
