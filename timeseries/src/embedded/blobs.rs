//! Append-only blob files: where the embedded store keeps the bytes of its chunks and
//! checkpoint segments. redb keeps only the keys and where each blob is ([`BlobRef`]).
//!
//! Why not the values in redb: a chunk is a few KiB, so in a B-tree every one is an
//! overflow leaf rounded up to a power of two of pages, every seal copies the pages it
//! touches (copy-on-write), and the file grows by doubling below 4 GiB. On the storage
//! bench that made the file 1.1-2.3x VictoriaMetrics' directory while the bytes of the
//! chunks were 0.8x. Here a blob costs its length: files are appended to, never written
//! in place, in the manner of VictoriaMetrics' parts and Prometheus' chunk files.
//!
//! * A file belongs to a **group** (`raw-<day>`, `5m-<week>`, `1h-<4 weeks>`, `seg`):
//!   chunks that expire together live together, so retention deletes whole files.
//! * `blob_files` (in redb) holds each file's group, its **committed length** and the
//!   bytes still referenced (**live**). Blobs are appended and `fsync`ed before the redb
//!   transaction that references them commits; a crash in between leaves bytes past the
//!   committed length, cut off when the store opens. A file with no row is an orphan (a
//!   crash after a new file was created, or after a compaction committed and before the
//!   old file was unlinked) and is deleted at open.
//! * Replacing or deleting a blob only lowers its file's live count. A file with nothing
//!   live is deleted; one at least half garbage (and past [`COMPACT_MIN_BYTES`], or any
//!   size at a clean stop) has its live blobs copied to a new file of its group and is
//!   deleted ([`super::EmbeddedChunks`] does the copy, since it owns the key tables).
//! * Every blob carries its CRC-32: a read that does not match is an error, never
//!   wrong data.
//!
//! Readers look a blob's reference up in a redb read transaction, then read the file. A
//! compaction may delete the file in between; the read then finds no file and the caller
//! looks the reference up again (file ids only grow while a store is open, so an old
//! reference never reads another file's bytes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, MutexGuard, RwLock};
use redb::{ReadableTable, TableDefinition, WriteTransaction};

use super::Fail;
use crate::store::ChunkKind;

/// Sub-directory of the store holding the blob files.
pub const DIR: &str = "blobs";

/// Where a blob is: (file id, offset, length, CRC-32 of its bytes).
pub(super) type BlobRef = (u32, u64, u32, u32);

/// file id → (group, committed length, live bytes).
pub(super) const FILES: TableDefinition<u32, (&str, u64, u64)> = TableDefinition::new("blob_files");

/// A group's file takes no more appends past this size (64 MiB).
const MAX_FILE_BYTES: u64 = 64 << 20;
/// While running, only files at least this large (1 MiB) are compacted.
pub(super) const COMPACT_MIN_BYTES: u64 = 1 << 20;

const DAY: i64 = 86_400_000_000;

/// The group of a chunk: its kind and a period of its window, so that what expires
/// together is in the same files.
pub(super) fn chunk_group(kind: ChunkKind, window: i64) -> String {
    let (prefix, days) = match kind {
        ChunkKind::Raw => ("raw", 1),
        ChunkKind::Rollup5m => ("5m", 7),
        ChunkKind::Rollup1h => ("1h", 28),
    };
    format!("{prefix}-{}", window.div_euclid(DAY * days))
}

/// The group of checkpoint segments (short-lived: sealing drops them).
pub(super) const SEGMENT_GROUP: &str = "seg";

/// The kind a group's bytes count under in `stored_bytes` (`raw`, `5m`, `1h`, `segments`).
pub(super) fn group_kind(group: &str) -> &'static str {
    match group.split('-').next() {
        Some("raw") => "raw",
        Some("5m") => "5m",
        Some("1h") => "1h",
        _ => "segments",
    }
}

/// Every file's committed state, from `blob_files`.
fn load_files(
    table: &impl ReadableTable<u32, (&'static str, u64, u64)>,
) -> Result<BTreeMap<u32, FileState>, Fail> {
    let mut files = BTreeMap::new();
    for e in table.iter()? {
        let (k, v) = e?;
        let (group, len, live) = v.value();
        files.insert(
            k.value(),
            FileState {
                group: group.to_owned(),
                len,
                live,
            },
        );
    }
    Ok(files)
}

fn file_name(id: u32) -> String {
    format!("{id:08}.blob")
}

fn parse_name(name: &str) -> Option<u32> {
    name.strip_suffix(".blob")?.parse().ok()
}

/// A file as the appender sees it.
#[derive(Debug, Clone)]
pub(super) struct FileState {
    pub(super) group: String,
    /// Bytes written (committed or about to be).
    pub(super) len: u64,
    /// Bytes referenced.
    pub(super) live: u64,
}

impl FileState {
    /// At least half of it is garbage.
    pub(super) fn half_garbage(&self) -> bool {
        self.live.saturating_mul(2) <= self.len
    }
}

#[derive(Debug)]
struct Appender {
    files: BTreeMap<u32, FileState>,
    /// The file each group appends to.
    active: HashMap<String, u32>,
    next_id: u32,
    /// Open handles of the files written to.
    writers: HashMap<u32, File>,
}

/// The blob files of one store.
#[derive(Debug)]
pub(super) struct Blobs {
    dir: PathBuf,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    appender: Mutex<Appender>,
}

impl Blobs {
    /// Opens the directory: cuts every file to its committed length and deletes files
    /// no row knows. Called with the store's first write transaction.
    pub(super) fn open(dir: &Path, tx: &WriteTransaction) -> Result<Blobs, Fail> {
        std::fs::create_dir_all(dir)?;
        let table = tx.open_table(FILES)?;
        let files = load_files(&table)?;
        let mut on_disk = BTreeSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            match name.to_str().and_then(parse_name) {
                Some(id) if files.contains_key(&id) => {
                    on_disk.insert(id);
                }
                Some(id) => {
                    tracing::info!(file = id, "deleting an orphan blob file (a crash left it)");
                    std::fs::remove_file(entry.path())?;
                }
                None => {}
            }
        }
        for (id, f) in &files {
            if !on_disk.contains(id) {
                return Err(Fail::Corrupt(format!(
                    "blob file {} of group {} is missing ({} bytes, {} live)",
                    dir.join(file_name(*id)).display(),
                    f.group,
                    f.len,
                    f.live
                )));
            }
            let path = dir.join(file_name(*id));
            let actual = std::fs::metadata(&path)?.len();
            if actual < f.len {
                return Err(Fail::Corrupt(format!(
                    "blob file {} is {actual} bytes, {} were committed",
                    path.display(),
                    f.len
                )));
            }
            if actual > f.len {
                tracing::info!(
                    file = %path.display(),
                    uncommitted = actual - f.len,
                    "cutting uncommitted bytes a crash left in a blob file"
                );
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(f.len)?;
                file.sync_all()?;
            }
        }
        let next_id = files.keys().next_back().map_or(1, |id| id + 1);
        Ok(Blobs {
            dir: dir.to_owned(),
            readers: RwLock::new(HashMap::new()),
            appender: Mutex::new(Appender {
                files,
                active: HashMap::new(),
                next_id,
                writers: HashMap::new(),
            }),
        })
    }

    /// The bytes of `r`; `None` when its file is gone (compacted since the reference was
    /// read: look it up again).
    pub(super) fn read(&self, r: BlobRef) -> Result<Option<Vec<u8>>, Fail> {
        let (id, offset, len, crc) = r;
        let file = self.readers.read().get(&id).cloned();
        let file = match file {
            Some(f) => f,
            None => match File::open(self.dir.join(file_name(id))) {
                Ok(f) => {
                    let f = Arc::new(f);
                    self.readers.write().insert(id, Arc::clone(&f));
                    f
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        let mut buf = vec![0u8; len as usize];
        read_exact_at(&file, &mut buf, offset)?;
        if crc32fast::hash(&buf) != crc {
            return Err(Fail::Corrupt(format!(
                "blob at {offset} (+{len}) of {} fails its checksum",
                self.dir.join(file_name(id)).display()
            )));
        }
        Ok(Some(buf))
    }

    /// Starts a write: holds the appender until [`BlobWrite::finish`] or drop.
    pub(super) fn write(&self) -> BlobWrite<'_> {
        BlobWrite {
            blobs: self,
            app: self.appender.lock(),
            pending: BTreeMap::new(),
            created: false,
            touched: BTreeSet::new(),
        }
    }

    /// Live bytes per kind (`raw`, `5m`, `1h`, `segments`), and every file's length.
    pub(super) fn stored(&self) -> (BTreeMap<&'static str, u64>, u64) {
        let app = self.appender.lock();
        let mut by_kind = BTreeMap::new();
        let mut total = 0;
        for f in app.files.values() {
            *by_kind.entry(group_kind(&f.group)).or_insert(0) += f.live;
            total += f.len;
        }
        (by_kind, total)
    }

    /// Drops the cached handle of a deleted file and unlinks it (after the transaction
    /// that removed its row committed).
    fn unlink(&self, id: u32) {
        self.readers.write().remove(&id);
        let path = self.dir.join(file_name(id));
        if let Err(e) = std::fs::remove_file(&path) {
            // It is an orphan now: the next open deletes it.
            tracing::warn!(file = %path.display(), error = %e, "cannot delete a blob file");
        }
    }
}

/// One write's appends and releases; [`BlobWrite::finish`] makes them durable and records
/// the files' new state in the caller's transaction, which the caller then commits. If
/// the transaction does not commit, [`BlobWrite::abort`] puts the appender back.
pub(super) struct BlobWrite<'a> {
    blobs: &'a Blobs,
    app: MutexGuard<'a, Appender>,
    /// Bytes to append per file.
    pending: BTreeMap<u32, Vec<u8>>,
    created: bool,
    /// Files whose row changes.
    touched: BTreeSet<u32>,
}

impl BlobWrite<'_> {
    /// Appends `bytes` to `group`'s file (buffered until [`BlobWrite::finish`]).
    pub(super) fn put(&mut self, group: &str, bytes: &[u8]) -> Result<BlobRef, Fail> {
        let len = u32::try_from(bytes.len())
            .map_err(|_| Fail::Corrupt(format!("a blob of {} bytes is too large", bytes.len())))?;
        let id = match self.app.active.get(group).copied() {
            Some(id)
                if self
                    .app
                    .files
                    .get(&id)
                    .is_some_and(|f| f.len < MAX_FILE_BYTES) =>
            {
                id
            }
            _ => self.new_file(group)?,
        };
        let file = self
            .app
            .files
            .get_mut(&id)
            .ok_or_else(|| Fail::Corrupt(format!("blob file {id} has no state")))?;
        let offset = file.len;
        file.len += u64::from(len);
        file.live += u64::from(len);
        self.pending.entry(id).or_default().extend_from_slice(bytes);
        self.touched.insert(id);
        Ok((id, offset, len, crc32fast::hash(bytes)))
    }

    /// Bytes of every file, and of the blobs in them still referenced.
    pub(super) fn totals(&self) -> (u64, u64) {
        self.app
            .files
            .values()
            .fold((0, 0), |(f, l), s| (f + s.len, l + s.live))
    }

    /// The blob `r` is no longer referenced.
    pub(super) fn release(&mut self, r: BlobRef) {
        if let Some(f) = self.app.files.get_mut(&r.0) {
            f.live = f.live.saturating_sub(u64::from(r.2));
            self.touched.insert(r.0);
        }
    }

    /// The files `pick` chooses, with their state.
    pub(super) fn to_compact(&self, pick: &dyn Fn(&FileState) -> bool) -> BTreeMap<u32, FileState> {
        self.app
            .files
            .iter()
            .filter(|(_, f)| pick(f))
            .map(|(id, f)| (*id, f.clone()))
            .collect()
    }

    /// Stops appending to `ids` (a compaction copies their blobs to new files); once
    /// nothing in them is live, [`BlobWrite::finish`] deletes them.
    pub(super) fn retire(&mut self, ids: &BTreeSet<u32>) {
        self.app.active.retain(|_, id| !ids.contains(id));
        self.touched.extend(ids.iter().copied());
    }

    /// Reads a blob of a file this write holds (for compaction).
    pub(super) fn read(&self, r: BlobRef) -> Result<Vec<u8>, Fail> {
        self.blobs
            .read(r)?
            .ok_or_else(|| Fail::Corrupt(format!("blob file {} vanished", r.0)))
    }

    fn new_file(&mut self, group: &str) -> Result<u32, Fail> {
        let id = self.app.next_id;
        self.app.next_id = id
            .checked_add(1)
            .ok_or_else(|| Fail::Corrupt("blob file ids exhausted".into()))?;
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(self.blobs.dir.join(file_name(id)))?;
        self.app.writers.insert(id, file);
        self.app.files.insert(
            id,
            FileState {
                group: group.to_owned(),
                len: 0,
                live: 0,
            },
        );
        self.app.active.insert(group.to_owned(), id);
        self.created = true;
        self.touched.insert(id);
        Ok(id)
    }

    /// Writes and syncs the appended bytes, then records every touched file's state in
    /// `tx` (and removes the rows of files with nothing live). Returns the files to
    /// unlink once `tx` committed ([`Blobs::unlink_all`]).
    pub(super) fn finish(&mut self, tx: &WriteTransaction) -> Result<Vec<u32>, Fail> {
        let pending = std::mem::take(&mut self.pending);
        for (id, bytes) in &pending {
            let file = match self.app.writers.get_mut(id) {
                Some(f) => f,
                None => {
                    let f = OpenOptions::new()
                        .append(true)
                        .open(self.blobs.dir.join(file_name(*id)))?;
                    self.app.writers.entry(*id).or_insert(f)
                }
            };
            file.write_all(bytes)?;
        }
        for id in pending.keys() {
            if let Some(f) = self.app.writers.get(id) {
                f.sync_data()?;
            }
        }
        if self.created {
            // The new files' directory entries must survive a crash too.
            File::open(&self.blobs.dir)?.sync_all()?;
            self.created = false;
        }
        let mut dead = Vec::new();
        let mut table = tx.open_table(FILES)?;
        for id in std::mem::take(&mut self.touched) {
            let Some(f) = self.app.files.get(&id) else {
                continue;
            };
            if f.live == 0 {
                table.remove(id)?;
                dead.push(id);
            } else {
                table.insert(id, (f.group.as_str(), f.len, f.live))?;
            }
        }
        for id in &dead {
            self.app.files.remove(id);
            self.app.writers.remove(id);
        }
        self.app.active.retain(|_, id| !dead.contains(id));
        Ok(dead)
    }

    /// After a transaction that did not commit: reloads the files' state from the last
    /// commit and cuts what this write appended.
    pub(super) fn abort(&mut self, db: &redb::Database) {
        if let Err(e) = self.reload(db) {
            tracing::error!(error = %e, "cannot reload the blob files' state after a failed write");
        }
    }

    fn reload(&mut self, db: &redb::Database) -> Result<(), Fail> {
        self.pending.clear();
        self.touched.clear();
        let tx = redb::ReadableDatabase::begin_read(db)?;
        let table = tx.open_table(FILES)?;
        let files = load_files(&table)?;
        for (id, f) in &files {
            let path = self.blobs.dir.join(file_name(*id));
            if std::fs::metadata(&path)?.len() > f.len {
                OpenOptions::new().write(true).open(&path)?.set_len(f.len)?;
            }
        }
        // Files created by the failed write have no row: drop them.
        let created: Vec<u32> = self
            .app
            .files
            .keys()
            .filter(|id| !files.contains_key(id))
            .copied()
            .collect();
        for id in created {
            self.app.writers.remove(&id);
            self.blobs.unlink(id);
        }
        self.app.active.retain(|_, id| files.contains_key(id));
        self.app.files = files;
        Ok(())
    }
}

impl Blobs {
    /// Unlinks files whose rows a committed transaction removed.
    pub(super) fn unlink_all(&self, ids: &[u32]) {
        for id in ids {
            self.unlink(*id);
        }
    }
}

#[cfg(unix)]
fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
}

#[cfg(windows)]
fn read_exact_at(file: &File, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        let n = std::os::windows::fs::FileExt::seek_read(file, buf, offset)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf = &mut buf[n..];
        offset += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_that_expire_together_share_a_group() {
        let h = 3_600_000_000;
        assert_eq!(chunk_group(ChunkKind::Raw, 0), "raw-0");
        assert_eq!(chunk_group(ChunkKind::Raw, 23 * h), "raw-0");
        assert_eq!(chunk_group(ChunkKind::Raw, 24 * h), "raw-1");
        assert_eq!(chunk_group(ChunkKind::Raw, -h), "raw--1");
        assert_eq!(chunk_group(ChunkKind::Rollup5m, 6 * DAY), "5m-0");
        assert_eq!(chunk_group(ChunkKind::Rollup5m, 7 * DAY), "5m-1");
        assert_eq!(chunk_group(ChunkKind::Rollup1h, 27 * DAY), "1h-0");
        assert_eq!(group_kind("raw--1"), "raw");
        assert_eq!(group_kind("5m-3"), "5m");
        assert_eq!(group_kind("1h-3"), "1h");
        assert_eq!(group_kind(SEGMENT_GROUP), "segments");
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_name(&file_name(42)), Some(42));
        assert_eq!(parse_name("00000042.tmp"), None);
        assert_eq!(parse_name("x.blob"), None);
    }
}
