//! Bytes per sample on disk in the embedded time-series store: `BENCH_AGENTS` agents
//! report every 10 s for `BENCH_HOURS` hours (every series of a realistic report:
//! `fleet_schemas::fixtures::metric_report`, flattened the way the time-series projection
//! does), written through `TimeSeriesStore::write` in batches of 1,000 reports like a
//! projection batch. Then the file size divided by the samples written, as written and
//! after `redb` compaction, with each table's rows and pages (raw samples and the 1m, 5m,
//! 1h rollups), the pages redb allocated and the bytes of keys and values they hold. The
//! file is sparse (its length runs ahead of the allocated blocks), so both the length and
//! the allocated size are shown.
//!
//! usage: cargo bench -p fleet-stores --bench ts_disk
//! Environment: BENCH_AGENTS (default 10), BENCH_HOURS (default 24).

#![allow(clippy::print_stdout)] // a bench prints its figures

mod support;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::Result;
use fleet_schemas::{fixtures, samples::samples};
use fleet_stores::Point;
use redb::{ReadableDatabase as _, ReadableTableMetadata as _, TableHandle as _};
use support::{env_num, machine};

const TENANT: &str = "bench-tenant";
const STEP_MICROS: i64 = 10_000_000;

fn points_of(agent: &str, ts: i64, seed: f64) -> Vec<Point> {
    let mut r = fixtures::metric_report(TENANT, agent, ts);
    // Values that change like real ones (a constant would compress nothing here anyway:
    // redb stores every value in full).
    r.cpu_percent = 50.0 + 40.0 * (seed / 37.0).sin();
    r.memory_percent = 30.0 + (seed / 101.0).cos();
    r.load_1 = seed % 7.0;
    samples(&r)
        .into_iter()
        .map(|s| Point {
            tenant_id: r.tenant_id.clone(),
            agent_id: r.agent_id.clone(),
            series: s.series(),
            ts_micros: r.occurred_at,
            value: s.value,
        })
        .collect()
}

/// (size in bytes, allocated bytes on disk) of a file.
fn sizes(path: &Path) -> Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.blocks() * 512))
}

fn per(bytes: u64, samples: usize) -> f64 {
    bytes as f64 / samples as f64
}

#[tokio::main]
async fn main() -> Result<()> {
    let agents = env_num("BENCH_AGENTS", 10).max(1);
    let hours = env_num("BENCH_HOURS", 24).max(1);
    println!("machine: {}", machine());
    let dir = tempfile::tempdir()?;
    let store = fleet_stores::open_timeseries(&format!("file://{}", dir.path().display())).await?;
    let now = fleet_schemas::time::now_micros();
    let steps = hours as i64 * 360;
    let start = now - steps * STEP_MICROS;
    let series = points_of("a", start, 0.0).len();
    let mut batch = Vec::with_capacity(1_000 * series);
    let mut reports_in_batch = 0;
    let mut written = 0usize;
    let started = Instant::now();
    for step in 0..steps {
        let ts = start + step * STEP_MICROS;
        for a in 0..agents {
            batch.extend(points_of(
                &format!("agent-{a:05}"),
                ts,
                (step + a as i64) as f64,
            ));
            reports_in_batch += 1;
            if reports_in_batch == 1_000 {
                store.write(&batch).await?;
                written += batch.len();
                batch.clear();
                reports_in_batch = 0;
            }
        }
    }
    if !batch.is_empty() {
        store.write(&batch).await?;
        written += batch.len();
    }
    let secs = started.elapsed().as_secs_f64();
    drop(store);
    println!(
        "wrote {written} samples ({agents} agents x {series} series x {hours} h @ 10 s) in {secs:.1} s = {:.0} samples/s",
        written as f64 / secs
    );

    let path = dir.path().join(fleet_stores::timeseries::FILE_NAME);
    let (len, allocated) = sizes(&path)?;
    println!(
        "file as written:  {:.1} MiB ({:.1} MiB allocated) = {:.1} bytes/sample",
        len as f64 / 1048576.0,
        allocated as f64 / 1048576.0,
        per(len, written)
    );
    let mut db = redb::Database::open(&path)?;
    let db_stats = |db: &redb::Database| -> Result<String> {
        let tx = db.begin_write()?;
        let st = tx.stats()?;
        let page = st.page_size() as u64;
        let used = (st.leaf_pages() + st.branch_pages()) * page;
        let line = format!(
            "{} allocated pages ({:.1} MiB, {:.1} bytes/sample); B-tree pages {:.1} MiB = {:.1} bytes/sample, holding {:.1} MiB of keys and values = {:.1} bytes/sample ({:.0}% full)",
            st.allocated_pages(),
            (st.allocated_pages() * page) as f64 / 1048576.0,
            per(st.allocated_pages() * page, written),
            used as f64 / 1048576.0,
            per(used, written),
            st.stored_bytes() as f64 / 1048576.0,
            per(st.stored_bytes(), written),
            100.0 * st.stored_bytes() as f64 / used.max(1) as f64
        );
        tx.abort()?;
        Ok(line)
    };
    println!("  {}", db_stats(&db)?);
    {
        let tx = db.begin_read()?;
        let mut tables: Vec<_> = tx.list_tables()?.collect();
        tables.sort_by(|a, b| a.name().cmp(b.name()));
        for handle in tables {
            let name = handle.name().to_owned();
            let t = tx.open_untyped_table(handle)?;
            let stats = t.stats()?;
            let rows = t.len()?;
            let pages = stats.leaf_pages() + stats.branch_pages();
            println!(
                "  table {name:10} {rows:>9} rows  {pages:>6} pages  {:>7.1} MiB stored  {:>5.1} bytes/row",
                stats.stored_bytes() as f64 / 1048576.0,
                if rows == 0 { 0.0 } else { stats.stored_bytes() as f64 / rows as f64 }
            );
        }
    }
    let t = Instant::now();
    db.compact()?;
    println!("  after compaction: {}", db_stats(&db)?);
    drop(db);
    let (len, allocated) = sizes(&path)?;
    println!(
        "file compacted:   {:.1} MiB ({:.1} MiB allocated) = {:.1} bytes/sample (compaction {:.1} s)",
        len as f64 / 1048576.0,
        allocated as f64 / 1048576.0,
        per(len, written),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
