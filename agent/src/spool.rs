//! The on-disk spool: every report is written here, durably, before it is sent, and
//! removed only once the gateway answered 2xx. Reports therefore survive gateway and log
//! outages, agent restarts and crashes (`kill -9` in the middle of a send); on start the
//! agent sends what the spool holds first, oldest first.
//!
//! # Storage: one redb file
//!
//! The spool is `{state-dir}/spool.redb`, a [redb](https://docs.rs/redb) database with one
//! table `reports: u64 sequence → entry` and one `meta` table (the byte total). redb was
//! chosen over a directory of fsync'ed files with atomic renames because:
//!
//! * each operation is one ACID transaction committed with `fsync` (copy-on-write B-tree,
//!   checksummed pages, a crash leaves the last committed state, repaired on open), so
//!   "append then drop the oldest to stay under the bound" and "remove a sent batch" are
//!   atomic without rename / directory-fsync choreography of our own;
//! * it is one file and one file lock: a second agent on the same state directory is
//!   refused ([`SpoolError::InUse`]) instead of both sending the same reports;
//! * it is pure Rust, already a workspace dependency (the embedded event log uses it),
//!   and its cache is bounded (set to [`CACHE_BYTES`] here), so the agent's memory does
//!   not grow with the backlog.
//!
//! A file per batch would have been simpler to inspect with `ls`, but every append would
//! cost a create, an `fsync`, a rename and a directory `fsync`, and bounding, ordering and
//! recovering a half-written file would be code of ours to get right.
//!
//! # Entries
//!
//! One entry per report (not per batch), so the batch size can change between sends (413
//! halves it) and the bound drops single reports. An entry is
//! `[format 1][crc32 of the rest, LE][collected_at µs, i64 LE][report JSON]`: the report as
//! collected, `collected_at` included, so a report sent again after a crash is the same
//! report and the gateway's deterministic event ids make the resend a no-op downstream.
//! An entry that fails its checksum or does not parse is removed, counted
//! ([`Spool::corrupt_total`]) and logged; it never stops the agent. A spool file that
//! cannot be opened at all (not a redb file) is moved aside as
//! `spool.redb.corrupt-<time>` and a fresh one is started, logged at error.
//!
//! # Bound
//!
//! The spool holds at most `spool-max-bytes` of entries. The file itself can reach about
//! twice that (copy-on-write B-tree pages and free space; measured 9.4 MB for a full 4 MiB
//! bound) and shrinks again as the spool drains. Appending past the bound first removes the oldest reports,
//! in the same transaction; they are counted ([`Spool::dropped_total`]) and the caller logs
//! them at warn.
//!
//! All methods block on disk I/O: call them from `spawn_blocking` in async code.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use fleet_schemas::api::ReportIn;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, StorageError,
    TableDefinition,
};
use tracing::{error, warn};

/// File name of the spool inside the state directory.
pub const SPOOL_FILE: &str = "spool.redb";

/// Memory redb may use for its page cache.
pub const CACHE_BYTES: usize = 4 * 1024 * 1024;

const REPORTS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("reports");
const META: TableDefinition<'_, &str, u64> = TableDefinition::new("meta");
const META_BYTES: &str = "bytes";

/// Entry format version (first byte of every entry).
const FORMAT: u8 = 1;
/// Format byte, CRC-32, `collected_at` in microseconds.
const HEADER_LEN: usize = 1 + 4 + 8;

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// Another process (or another agent in this process) has the spool open.
    #[error(
        "spool {path} is in use by another agent: only one agent may run per state \
         directory (stop the other one, or give this one its own `state-dir`)"
    )]
    InUse {
        /// The spool file.
        path: PathBuf,
    },
    /// The spool file or its directory cannot be created or opened.
    #[error("cannot open the spool {path}: {source}; set `state-dir` to a writable directory")]
    Open {
        /// The spool file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A report is larger than the whole spool may be.
    #[error("a report of {size} bytes does not fit a spool of at most {max} bytes")]
    TooLarge {
        /// Encoded size of the report.
        size: u64,
        /// `spool-max-bytes`.
        max: u64,
    },
    /// The storage engine failed (disk full, I/O error, ...).
    #[error("spool {path}: {message}")]
    Storage {
        /// The spool file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// What [`Spool::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Appended {
    /// Sequence number of the new entry.
    pub seq: u64,
    /// Oldest reports removed to stay under the bound.
    pub dropped: u64,
    /// Collection times of the first and last report dropped, when any was.
    pub dropped_range: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Reports copied from the head of the spool, still in it until [`Spool::ack`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpoolBatch {
    /// Sequence number of the last report in the batch: pass it to [`Spool::ack`].
    pub through: u64,
    /// The reports, oldest first.
    pub reports: Vec<ReportIn>,
}

/// The on-disk spool (see the module documentation).
pub struct Spool {
    db: Database,
    path: PathBuf,
    max_bytes: u64,
    /// Serializes writers, so the counters below always match the last commit.
    writer: Mutex<()>,
    len: AtomicU64,
    bytes: AtomicU64,
    /// Sequence number of the oldest entry (meaningless when `len` is 0).
    head: AtomicU64,
    next_seq: AtomicU64,
    dropped: AtomicU64,
    corrupt: AtomicU64,
    recovered_from: Option<PathBuf>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("path", &self.path)
            .field("max_bytes", &self.max_bytes)
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

/// What the write transactions report back, to update the counters after commit.
struct Committed {
    len: u64,
    bytes: u64,
    head: Option<u64>,
}

impl Spool {
    /// Opens (or creates) the spool file at `path`, holding at most `max_bytes` of entries.
    /// The parent directory is created (mode 0700) when missing.
    ///
    /// A file that is not a readable redb database is moved aside (see
    /// [`Spool::recovered_from`]) and a fresh spool is started; a file another agent holds
    /// open is refused with [`SpoolError::InUse`].
    pub fn open(path: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            crate::state::ensure_dir(parent).map_err(|source| SpoolError::Open {
                path: path.to_owned(),
                source,
            })?;
        }
        let mut recovered_from = None;
        let db = match create_db(path) {
            Ok(db) => db,
            Err(DatabaseError::DatabaseAlreadyOpen) => {
                return Err(SpoolError::InUse {
                    path: path.to_owned(),
                })
            }
            Err(DatabaseError::Storage(StorageError::Io(e)))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(SpoolError::Open {
                    path: path.to_owned(),
                    source: e,
                })
            }
            Err(e) => {
                // Not a redb file, or damaged beyond repair: keep it for inspection and
                // start over rather than never running again.
                let aside = aside_path(path);
                error!(
                    path = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "Spool file unreadable; moved aside, starting an empty spool. \
                     The reports it held are not sent."
                );
                std::fs::rename(path, &aside).map_err(|source| SpoolError::Open {
                    path: path.to_owned(),
                    source,
                })?;
                recovered_from = Some(aside);
                create_db(path).map_err(|e| storage(path, e))?
            }
        };
        let spool = Self {
            db,
            path: path.to_owned(),
            max_bytes,
            writer: Mutex::new(()),
            len: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            head: AtomicU64::new(0),
            next_seq: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            corrupt: AtomicU64::new(0),
            recovered_from,
        };
        spool.load().map_err(|e| storage(path, e))?;
        Ok(spool)
    }

    /// Reads the counters from the file (and creates the tables of a new one).
    fn load(&self) -> Result<(), redb::Error> {
        let _writer = self.lock_writer();
        let tx = self.db.begin_write()?;
        let next_seq;
        let committed;
        {
            let reports = tx.open_table(REPORTS)?;
            let mut meta = tx.open_table(META)?;
            let len = reports.len()?;
            let stored = meta.get(META_BYTES)?.map(|v| v.value());
            let bytes = match stored {
                Some(bytes) if len > 0 || bytes == 0 => bytes,
                _ => {
                    // No total yet (new file) or an inconsistent one: recount.
                    let mut total = 0u64;
                    for entry in reports.iter()? {
                        let (_, value) = entry?;
                        total += value.value().len() as u64;
                    }
                    meta.insert(META_BYTES, total)?;
                    total
                }
            };
            next_seq = reports.last()?.map_or(0, |(k, _)| k.value() + 1);
            committed = Committed {
                len,
                bytes,
                head: reports.first()?.map(|(k, _)| k.value()),
            };
        }
        tx.commit()?;
        self.next_seq.store(next_seq, Ordering::Relaxed);
        self.publish(&committed);
        Ok(())
    }

    /// Writes `report` durably (the call returns after `fsync`). When the spool would then
    /// exceed its bound, the oldest reports are removed in the same transaction and
    /// reported in [`Appended`].
    pub fn append(&self, report: &ReportIn) -> Result<Appended, SpoolError> {
        let value = encode(report).map_err(|e| SpoolError::Storage {
            path: self.path.clone(),
            message: format!("cannot encode the report: {e}"),
        })?;
        let size = value.len() as u64;
        if size > self.max_bytes {
            return Err(SpoolError::TooLarge {
                size,
                max: self.max_bytes,
            });
        }
        let _writer = self.lock_writer();
        let seq = self.next_seq.load(Ordering::Relaxed);
        let mut appended = Appended {
            seq,
            dropped: 0,
            dropped_range: None,
        };
        let result = (|| -> Result<Committed, redb::Error> {
            let tx = self.db.begin_write()?;
            let committed;
            {
                let mut reports = tx.open_table(REPORTS)?;
                let mut meta = tx.open_table(META)?;
                let mut bytes = self.bytes.load(Ordering::Relaxed);
                while bytes + size > self.max_bytes {
                    let Some((_, old)) = reports.pop_first()? else {
                        bytes = 0;
                        break;
                    };
                    let old = old.value();
                    bytes = bytes.saturating_sub(old.len() as u64);
                    appended.dropped += 1;
                    if let Some(at) = header_time(old) {
                        appended.dropped_range = Some(match appended.dropped_range {
                            Some((first, _)) => (first, at),
                            None => (at, at),
                        });
                    }
                }
                reports.insert(seq, value.as_slice())?;
                bytes += size;
                meta.insert(META_BYTES, bytes)?;
                committed = Committed {
                    len: reports.len()?,
                    bytes,
                    head: reports.first()?.map(|(k, _)| k.value()),
                };
            }
            tx.commit()?;
            Ok(committed)
        })();
        let committed = result.map_err(|e| storage(&self.path, e))?;
        self.next_seq.store(seq + 1, Ordering::Relaxed);
        self.dropped.fetch_add(appended.dropped, Ordering::Relaxed);
        self.publish(&committed);
        Ok(appended)
    }

    /// Copies up to `max` reports from the head, oldest first, or `None` when the spool is
    /// empty. Entries that fail their checksum or do not parse are removed on the way,
    /// counted and logged.
    pub fn peek(&self, max: usize) -> Result<Option<SpoolBatch>, SpoolError> {
        let max = max.max(1);
        let mut reports = Vec::new();
        let mut through = None;
        let mut corrupt: Vec<(u64, &'static str)> = Vec::new();
        (|| -> Result<(), redb::Error> {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(REPORTS)?;
            for entry in table.iter()? {
                let (key, value) = entry?;
                match decode(value.value()) {
                    Ok(report) => {
                        reports.push(report);
                        through = Some(key.value());
                        if reports.len() >= max {
                            break;
                        }
                    }
                    Err(reason) => corrupt.push((key.value(), reason)),
                }
            }
            Ok(())
        })()
        .map_err(|e| storage(&self.path, e))?;
        if let (Some((first, reason)), Some((last, _))) = (corrupt.first(), corrupt.last()) {
            warn!(
                entries = corrupt.len(),
                first_seq = first,
                last_seq = last,
                reason,
                spool = %self.path.display(),
                "Corrupt spool entries skipped and removed."
            );
            let keys: Vec<u64> = corrupt.iter().map(|(k, _)| *k).collect();
            let removed = self.remove(|tx_reports| {
                let mut n = (0, 0);
                for key in &keys {
                    if let Some(v) = tx_reports.remove(key)? {
                        n.0 += 1;
                        n.1 += v.value().len() as u64;
                    }
                }
                Ok(n)
            })?;
            self.corrupt.fetch_add(removed, Ordering::Relaxed);
        }
        Ok(through.map(|through| SpoolBatch { through, reports }))
    }

    /// Removes every entry up to and including sequence number `through` (some may have
    /// been dropped meanwhile); returns how many were removed. Durable on return.
    pub fn ack(&self, through: u64) -> Result<u64, SpoolError> {
        self.remove(|reports| {
            let mut n = (0, 0);
            for entry in reports.extract_from_if(..=through, |_, _| true)? {
                let (_, value) = entry?;
                n.0 += 1;
                n.1 += value.value().len() as u64;
            }
            Ok(n)
        })
    }

    /// Runs `f` (returning entries and bytes removed) in a write transaction and updates
    /// the byte total and counters.
    fn remove(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> Result<(u64, u64), redb::Error>,
    ) -> Result<u64, SpoolError> {
        let _writer = self.lock_writer();
        let result = (|| -> Result<(u64, Committed), redb::Error> {
            let tx = self.db.begin_write()?;
            let removed;
            let committed;
            {
                let mut reports = tx.open_table(REPORTS)?;
                let mut meta = tx.open_table(META)?;
                let (n, freed) = f(&mut reports)?;
                removed = n;
                let len = reports.len()?;
                let bytes = if len == 0 {
                    0
                } else {
                    self.bytes.load(Ordering::Relaxed).saturating_sub(freed)
                };
                meta.insert(META_BYTES, bytes)?;
                committed = Committed {
                    len,
                    bytes,
                    head: reports.first()?.map(|(k, _)| k.value()),
                };
            }
            tx.commit()?;
            Ok((removed, committed))
        })();
        let (removed, committed) = result.map_err(|e| storage(&self.path, e))?;
        self.publish(&committed);
        Ok(removed)
    }

    fn publish(&self, c: &Committed) {
        self.len.store(c.len, Ordering::Relaxed);
        self.bytes.store(c.bytes, Ordering::Relaxed);
        if let Some(head) = c.head {
            self.head.store(head, Ordering::Relaxed);
        }
    }

    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reports in the spool (as of the last commit; no I/O).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// True when the spool holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of entries in the spool (no I/O).
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// The bound given to [`Spool::open`].
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Sequence number of the oldest report, `None` when empty (no I/O).
    pub fn head_seq(&self) -> Option<u64> {
        (!self.is_empty()).then(|| self.head.load(Ordering::Relaxed))
    }

    /// Reports dropped to stay under the bound since this spool was opened.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Corrupt entries skipped (and removed) since this spool was opened.
    pub fn corrupt_total(&self) -> u64 {
        self.corrupt.load(Ordering::Relaxed)
    }

    /// Where an unreadable spool file was moved when this one was opened, if it was.
    pub fn recovered_from(&self) -> Option<&Path> {
        self.recovered_from.as_deref()
    }

    /// The spool file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn create_db(path: &Path) -> Result<Database, DatabaseError> {
    let mut builder = redb::Builder::new();
    builder.set_cache_size(CACHE_BYTES);
    builder.create(path)
}

fn storage(path: &Path, e: impl Into<redb::Error>) -> SpoolError {
    SpoolError::Storage {
        path: path.to_owned(),
        message: e.into().to_string(),
    }
}

/// `spool.redb.corrupt-20250101T000000.000000Z`, beside the original.
fn aside_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        ".corrupt-{}",
        Utc::now().format("%Y%m%dT%H%M%S%.6fZ")
    ));
    path.with_file_name(name)
}

/// Encodes one entry (see the module documentation).
fn encode(report: &ReportIn) -> Result<Vec<u8>, serde_json::Error> {
    let json = serde_json::to_vec(report)?;
    let mut out = Vec::with_capacity(HEADER_LEN + json.len());
    out.push(FORMAT);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&report.collected_at.timestamp_micros().to_le_bytes());
    out.extend_from_slice(&json);
    let crc = crc32(&out[5..]);
    out[1..5].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Decodes one entry, or says why it is corrupt.
fn decode(bytes: &[u8]) -> Result<ReportIn, &'static str> {
    if bytes.len() < HEADER_LEN {
        return Err("entry shorter than its header");
    }
    if bytes[0] != FORMAT {
        return Err("unknown entry format");
    }
    let stored = u32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    if crc32(&bytes[5..]) != stored {
        return Err("checksum mismatch");
    }
    let report: ReportIn =
        serde_json::from_slice(&bytes[HEADER_LEN..]).map_err(|_| "report does not parse")?;
    let header_micros = bytes
        .get(5..HEADER_LEN)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes);
    if header_micros != Some(report.collected_at.timestamp_micros()) {
        return Err("collection time differs from the header");
    }
    Ok(report)
}

/// The collection time in an entry's header, without checking the rest.
fn header_time(bytes: &[u8]) -> Option<DateTime<Utc>> {
    let micros = bytes.get(5..HEADER_LEN)?.try_into().ok()?;
    DateTime::from_timestamp_micros(i64::from_le_bytes(micros))
}

/// CRC-32 (IEEE 802.3, as zlib), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            table[i] = c;
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for &b in data {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::collections::BTreeMap;

    /// A minimal valid report; `n` sets both its collection time and `uptime_seconds`.
    pub(crate) fn report(n: u64) -> ReportIn {
        ReportIn {
            collected_at: Utc
                .timestamp_opt(1_700_000_000 + i64::try_from(n).unwrap(), 0)
                .single()
                .unwrap(),
            cpu_percent: 1.0,
            cpu_per_core: vec![],
            memory_used_bytes: 1,
            memory_total_bytes: 2,
            memory_percent: 50.0,
            swap_used_bytes: 0,
            swap_total_bytes: 0,
            disks: vec![],
            disk_read_bytes: 0,
            disk_write_bytes: 0,
            load_1: 0.0,
            load_5: 0.0,
            load_15: 0.0,
            uptime_seconds: n,
            net_rx_bytes: 0,
            net_tx_bytes: 0,
            interfaces: vec![],
            process_count: 1,
            services: vec![],
            security: None,
            custom: BTreeMap::new(),
        }
    }

    fn ids(batch: &SpoolBatch) -> Vec<u64> {
        batch.reports.iter().map(|r| r.uptime_seconds).collect()
    }

    fn entry_len() -> u64 {
        encode(&report(0)).unwrap().len() as u64
    }

    fn open(dir: &tempfile::TempDir, max: u64) -> Spool {
        Spool::open(&dir.path().join(SPOOL_FILE), max).unwrap()
    }

    #[test]
    fn sub_microsecond_collection_times_round_trip() {
        let mut r = report(1);
        r.collected_at += chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(decode(&encode(&r).unwrap()), Ok(r));
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn append_peek_ack_keep_order_and_counters() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(&dir, 1 << 20);
        assert!(spool.peek(3).unwrap().is_none());
        assert_eq!(spool.head_seq(), None);
        for n in 0..5 {
            let a = spool.append(&report(n)).unwrap();
            assert_eq!((a.seq, a.dropped), (n, 0));
        }
        assert_eq!(spool.len(), 5);
        assert_eq!(spool.bytes(), 5 * entry_len());
        assert_eq!(spool.head_seq(), Some(0));

        let b = spool.peek(2).unwrap().unwrap();
        assert_eq!(ids(&b), vec![0, 1]);
        assert_eq!(b.reports[0], report(0), "the report round-trips exactly");
        // Not acked (a retry): the same head again.
        assert_eq!(spool.peek(2).unwrap().unwrap(), b);
        assert_eq!(spool.ack(b.through).unwrap(), 2);
        assert_eq!(spool.head_seq(), Some(2));
        let rest = spool.peek(10).unwrap().unwrap();
        assert_eq!(ids(&rest), vec![2, 3, 4]);
        assert_eq!(spool.ack(rest.through).unwrap(), 3);
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(spool.peek(10).unwrap().is_none());
        // Acking again is harmless.
        assert_eq!(spool.ack(rest.through).unwrap(), 0);
    }

    #[test]
    fn bound_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(&dir, 3 * entry_len());
        for n in 0..3 {
            assert_eq!(spool.append(&report(n)).unwrap().dropped, 0);
        }
        let a = spool.append(&report(3)).unwrap();
        assert_eq!(a.dropped, 1);
        assert_eq!(
            a.dropped_range,
            Some((report(0).collected_at, report(0).collected_at))
        );
        assert_eq!(spool.len(), 3);
        assert!(spool.bytes() <= spool.max_bytes());
        assert_eq!(ids(&spool.peek(10).unwrap().unwrap()), vec![1, 2, 3]);
        assert_eq!(spool.dropped_total(), 1);

        // A batch in flight loses its head to the bound: the ack removes what remains.
        let in_flight = spool.peek(2).unwrap().unwrap(); // 1, 2
        spool.append(&report(4)).unwrap(); // drops 1
        assert_eq!(spool.ack(in_flight.through).unwrap(), 1); // removes 2 only
        assert_eq!(ids(&spool.peek(10).unwrap().unwrap()), vec![3, 4]);
        assert_eq!(spool.dropped_total(), 2);

        let too_small = Spool::open(&dir.path().join("small.redb"), 10).unwrap();
        assert!(matches!(
            too_small.append(&report(0)),
            Err(SpoolError::TooLarge { .. })
        ));
    }

    #[test]
    fn reopening_keeps_contents_order_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = open(&dir, 1 << 20);
            for n in 0..4 {
                spool.append(&report(n)).unwrap();
            }
            let b = spool.peek(1).unwrap().unwrap();
            spool.ack(b.through).unwrap();
        }
        let spool = open(&dir, 1 << 20);
        assert_eq!(spool.len(), 3);
        assert_eq!(spool.bytes(), 3 * entry_len());
        assert_eq!(spool.head_seq(), Some(1));
        assert_eq!(
            spool.append(&report(9)).unwrap().seq,
            4,
            "sequence continues"
        );
        assert_eq!(ids(&spool.peek(10).unwrap().unwrap()), vec![1, 2, 3, 9]);
        assert!(spool.recovered_from().is_none());
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_is_open() {
        let dir = tempfile::tempdir().unwrap();
        let first = open(&dir, 1 << 20);
        let err = Spool::open(first.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("state-dir"), "{err}");
        drop(first);
        open(&dir, 1 << 20);
    }

    /// Writes a raw value under `seq`, bypassing the encoder (a torn or damaged entry).
    fn insert_raw(spool: &Spool, seq: u64, value: &[u8]) {
        let tx = spool.db.begin_write().unwrap();
        {
            let mut t = tx.open_table(REPORTS).unwrap();
            t.insert(seq, value).unwrap();
            let mut meta = tx.open_table(META).unwrap();
            meta.insert(META_BYTES, spool.bytes() + value.len() as u64)
                .unwrap();
        }
        tx.commit().unwrap();
        // Reload the counters as a reopen would.
        spool.load().unwrap();
    }

    #[test]
    fn corrupt_entries_are_skipped_removed_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let spool = open(&dir, 1 << 20);
        spool.append(&report(0)).unwrap();
        let mut flipped = encode(&report(1)).unwrap();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01; // one bit of the JSON
        insert_raw(&spool, 1, &flipped);
        insert_raw(&spool, 2, b"\x01\x02"); // torn: shorter than a header
        let mut bad_json = vec![FORMAT, 0, 0, 0, 0];
        bad_json.extend_from_slice(&0i64.to_le_bytes());
        bad_json.extend_from_slice(b"{\"not\":\"a report\"}");
        let crc = crc32(&bad_json[5..]);
        bad_json[1..5].copy_from_slice(&crc.to_le_bytes());
        insert_raw(&spool, 3, &bad_json);
        insert_raw(&spool, 4, &encode(&report(4)).unwrap());
        let mut future_format = encode(&report(5)).unwrap();
        future_format[0] = 9;
        insert_raw(&spool, 5, &future_format);
        spool.next_seq.store(6, Ordering::Relaxed);
        spool.append(&report(6)).unwrap();
        assert_eq!(spool.len(), 7);

        let b = spool.peek(10).unwrap().unwrap();
        assert_eq!(ids(&b), vec![0, 4, 6]);
        assert_eq!(spool.corrupt_total(), 4);
        assert_eq!(spool.len(), 3, "corrupt entries were removed");
        assert_eq!(spool.bytes(), 3 * entry_len());
        spool.ack(b.through).unwrap();
        assert!(spool.is_empty());
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_and_a_new_spool_starts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SPOOL_FILE);
        std::fs::write(&path, vec![0xAB; 8192]).unwrap();
        let spool = Spool::open(&path, 1 << 20).unwrap();
        let aside = spool.recovered_from().expect("moved aside").to_owned();
        assert!(aside.exists());
        assert_eq!(std::fs::read(&aside).unwrap(), vec![0xAB; 8192]);
        assert!(spool.is_empty());
        spool.append(&report(1)).unwrap();
        assert_eq!(ids(&spool.peek(1).unwrap().unwrap()), vec![1]);
    }

    #[test]
    fn an_unwritable_directory_is_an_open_error_naming_state_dir() {
        let err = Spool::open(Path::new("/proc/fleet-agent-test/spool.redb"), 1 << 20).unwrap_err();
        assert!(matches!(err, SpoolError::Open { .. }), "{err}");
        assert!(err.to_string().contains("state-dir"), "{err}");
    }
}
