//! Which embedded storage engine backs the embedded event log: redb or fjall?
//!
//! Appends `RECORDS` records of `VALUE_BYTES` bytes in batches of `BATCH`, one durable
//! commit per batch (redb `Durability::Immediate`, fjall `PersistMode::SyncData`; both end
//! in `fdatasync`), then reads them all back in key order. Then the same volume through
//! `EmbeddedLog` (redb + group commit): sequential batches, and many concurrent
//! single-record produce calls (the gateway's shape). Prints figures; asserts nothing.
//!
//! ```text
//! cargo bench -p fleet-event-log --bench engine_choice
//! ENGINE_BENCH_RECORDS=20000 ENGINE_BENCH_DIR=/var/tmp cargo bench -p fleet-event-log --bench engine_choice
//! ```
//! The results and the choice are in `docs/EVENT_LOG.md`.

// A bench binary reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use fleet_event_log::{ConsumerOptions, EventLog, ProduceRecord, StartFrom, TopicSpec};

const VALUE_BYTES: usize = 400;
const BATCH: usize = 100;
const PARTITIONS: u32 = 6;
const CONCURRENT_PRODUCERS: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Incompressible bytes (like Avro records with ids and floats), so fjall's block
/// compression gets no unfair advantage from a repeated filler.
fn value(i: usize) -> Vec<u8> {
    let mut x = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v = Vec::with_capacity(VALUE_BYTES);
    while v.len() < VALUE_BYTES {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(VALUE_BYTES);
    v
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

struct Figures {
    name: &'static str,
    write: Duration,
    read: Duration,
    records: usize,
    commits: usize,
    disk_bytes: u64,
}

impl Figures {
    fn print(&self) {
        let mb = (self.records * VALUE_BYTES) as f64 / 1e6;
        println!(
            "{:<44} write {:>8.2} s {:>9.0} rec/s {:>6.1} MB/s {:>7.2} ms/commit | read {:>6.3} s {:>10.0} rec/s | disk {:>6.1} MB",
            self.name,
            self.write.as_secs_f64(),
            self.records as f64 / self.write.as_secs_f64(),
            mb / self.write.as_secs_f64(),
            self.write.as_secs_f64() * 1e3 / self.commits.max(1) as f64,
            self.read.as_secs_f64(),
            self.records as f64 / self.read.as_secs_f64().max(1e-9),
            self.disk_bytes as f64 / 1e6,
        );
    }
}

/// Key layout shared by both raw runs: (partition, offset), as the log uses.
fn redb_raw(dir: &Path, records: usize) -> Result<Figures> {
    use redb::{Database, Durability, ReadableDatabase, TableDefinition};
    const TABLE: TableDefinition<(u32, u32, u64), &[u8]> = TableDefinition::new("records");
    let db = Database::create(dir.join("bench.redb"))?;
    let start = Instant::now();
    let mut commits = 0;
    for batch in 0..records.div_ceil(BATCH) {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(TABLE)?;
            for i in batch * BATCH..((batch + 1) * BATCH).min(records) {
                let partition = (i as u32) % PARTITIONS;
                table.insert(
                    (0, partition, (i / PARTITIONS as usize) as u64),
                    value(i).as_slice(),
                )?;
            }
        }
        txn.commit()?;
        commits += 1;
    }
    let write = start.elapsed();
    let start = Instant::now();
    let txn = db.begin_read()?;
    let table = txn.open_table(TABLE)?;
    let mut n = 0usize;
    let mut bytes = 0usize;
    for partition in 0..PARTITIONS {
        for entry in table.range((0, partition, 0)..=(0, partition, u64::MAX))? {
            let (_k, v) = entry?;
            bytes += v.value().len();
            n += 1;
        }
    }
    let read = start.elapsed();
    assert_eq!(n, records);
    assert_eq!(bytes, records * VALUE_BYTES);
    drop(table);
    drop(txn);
    drop(db);
    Ok(Figures {
        name: "redb 3 (B-tree, COW)",
        write,
        read,
        records,
        commits,
        disk_bytes: dir_size(dir),
    })
}

fn fjall_raw(dir: &Path, records: usize) -> Result<Figures> {
    use fjall::{Database, KeyspaceCreateOptions, PersistMode};
    let db = Database::builder(dir.join("fjall")).open()?;
    let keyspace = db.keyspace("records", KeyspaceCreateOptions::default)?;
    let key = |partition: u32, offset: u64| {
        let mut k = [0u8; 16];
        k[4..8].copy_from_slice(&partition.to_be_bytes());
        k[8..].copy_from_slice(&offset.to_be_bytes());
        k
    };
    let start = Instant::now();
    let mut commits = 0;
    for batch in 0..records.div_ceil(BATCH) {
        let mut wb = db.batch().durability(Some(PersistMode::SyncData));
        for i in batch * BATCH..((batch + 1) * BATCH).min(records) {
            let partition = (i as u32) % PARTITIONS;
            wb.insert(
                &keyspace,
                key(partition, (i / PARTITIONS as usize) as u64),
                value(i),
            );
        }
        wb.commit()?;
        commits += 1;
    }
    let write = start.elapsed();
    let start = Instant::now();
    let mut n = 0usize;
    let mut bytes = 0usize;
    for partition in 0..PARTITIONS {
        for guard in keyspace.range(key(partition, 0)..=key(partition, u64::MAX)) {
            bytes += guard.value()?.len();
            n += 1;
        }
    }
    let read = start.elapsed();
    assert_eq!(n, records);
    assert_eq!(bytes, records * VALUE_BYTES);
    drop(keyspace);
    drop(db);
    Ok(Figures {
        name: "fjall 3 (LSM, journal)",
        write,
        read,
        records,
        commits,
        disk_bytes: dir_size(dir),
    })
}

async fn read_all(log: &Arc<dyn EventLog>, topic: &str, records: usize) -> Result<Duration> {
    let mut consumer = log
        .subscribe(
            "bench",
            &[topic],
            ConsumerOptions {
                start: StartFrom::Earliest,
                ..Default::default()
            },
        )
        .await?;
    let start = Instant::now();
    let mut n = 0;
    while n < records {
        let got = consumer.poll(1000, Duration::from_secs(5)).await?;
        anyhow::ensure!(!got.is_empty(), "read back stalled at {n} of {records}");
        n += got.len();
    }
    Ok(start.elapsed())
}

/// `EmbeddedLog`, produce calls of `BATCH` records one after another.
async fn log_sequential(dir: &Path, records: usize) -> Result<Figures> {
    let log = fleet_event_log::open(&dir.display().to_string(), &Default::default()).await?;
    log.create_topic(
        "bench",
        TopicSpec {
            partitions: PARTITIONS,
            compacted: false,
        },
    )
    .await?;
    let start = Instant::now();
    let mut commits = 0;
    for batch in 0..records.div_ceil(BATCH) {
        let batch_records = (batch * BATCH..((batch + 1) * BATCH).min(records))
            .map(|i| ProduceRecord::keyed(format!("agent-{}", i % 1000), value(i)))
            .collect();
        log.produce("bench", batch_records).await?;
        commits += 1;
    }
    let write = start.elapsed();
    let read = read_all(&log, "bench", records).await?;
    drop(log);
    Ok(Figures {
        name: "EmbeddedLog: sequential produce(100 records)",
        write,
        read,
        records,
        commits,
        disk_bytes: dir_size(dir),
    })
}

/// `EmbeddedLog`, many tasks each producing one record per call: group commit at work.
async fn log_concurrent(dir: &Path, records: usize) -> Result<Figures> {
    let log = fleet_event_log::open(&dir.display().to_string(), &Default::default()).await?;
    log.create_topic(
        "bench",
        TopicSpec {
            partitions: PARTITIONS,
            compacted: false,
        },
    )
    .await?;
    let start = Instant::now();
    let per_task = records / CONCURRENT_PRODUCERS;
    let mut tasks = Vec::new();
    for t in 0..CONCURRENT_PRODUCERS {
        let log = Arc::clone(&log);
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let n = t * per_task + i;
                log.produce(
                    "bench",
                    vec![ProduceRecord::keyed(
                        format!("agent-{}", n % 1000),
                        value(n),
                    )],
                )
                .await?;
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let write = start.elapsed();
    let total = per_task * CONCURRENT_PRODUCERS;
    let read = read_all(&log, "bench", total).await?;
    drop(log);
    Ok(Figures {
        name: "EmbeddedLog: 64 tasks x produce(1 record)",
        write,
        read,
        records: total,
        // Commits are not visible from outside; report per-call latency instead.
        commits: per_task,
        disk_bytes: dir_size(dir),
    })
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; any other argument is ignored.
    let records = env_usize("ENGINE_BENCH_RECORDS", 100_000);
    let base = std::env::var("ENGINE_BENCH_DIR")
        .unwrap_or_else(|_| std::env::temp_dir().display().to_string());
    println!(
        "{records} records x {VALUE_BYTES} B, batches of {BATCH}, one durable commit per batch, {PARTITIONS} partitions, in {base}"
    );
    let dir = tempfile::tempdir_in(&base)?;
    redb_raw(dir.path(), records)?.print();
    let dir = tempfile::tempdir_in(&base)?;
    fjall_raw(dir.path(), records)?.print();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir_in(&base)?;
        log_sequential(dir.path(), records).await?.print();
        let dir = tempfile::tempdir_in(&base)?;
        let figures = log_concurrent(dir.path(), records).await?;
        figures.print();
        println!("  (last line: ms/commit column = wall time / produce calls per task, i.e. one call's latency)");
        anyhow::Ok(())
    })?;
    Ok(())
}
