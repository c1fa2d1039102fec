//! Bytes per sample: our blocks and rollups against VictoriaMetrics on the same samples.
//!
//! For each data set (the realistic generated fleet, `fixtures::fleet_reports`, and the
//! constant fixture, `fixtures::metric_report`), `BENCH_AGENTS` agents report every 10 s
//! for `BENCH_HOURS` hours. The bench
//! * starts `victoria-metrics` (from PATH; Debian: `apt-get install -y victoria-metrics`)
//!   with `fleet_test_support::victoria` (the runner the end-to-end storage bench uses),
//!   posts every sample as Influx line protocol to `/write` (one line per measurement and
//!   subject, as Telegraf sends them: `victoria::influx_lines`), calls
//!   `/internal/force_flush` and `/internal/force_merge`, waits until the data directory
//!   stops changing, and measures it;
//! * cuts the same samples into blocks of one agent-hour, encodes them (timing the encode
//!   on one core), and computes and encodes their 5-minute and 1-hour rollups, one rollup
//!   set per agent, day and width (the blocks' sets merged);
//! * prints samples, bytes per sample of each, and the ratios.
//!
//! usage: cargo bench -p fleet-timeseries --bench disk_vs_vm
//! Environment: BENCH_AGENTS (default 200), BENCH_HOURS (default 6).

#![allow(clippy::print_stdout)] // a bench prints its figures

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use fleet_schemas::samples::{for_each_sample, series_name};
use fleet_test_support::victoria::{self, VictoriaMetrics};
use fleet_timeseries::{chunk, rollup, Block, RollupSet};
use support::{env_usize, reports, Cutter, Kind, Shape, HOUR_MICROS};

const DAY_MICROS: i64 = 24 * HOUR_MICROS;
/// Line-protocol bytes per POST.
const BATCH_BYTES: usize = 8 << 20;

#[tokio::main]
async fn main() -> Result<()> {
    let version = victoria::version(&victoria::binary()?);
    let hours = env_usize("BENCH_HOURS", 6);
    let now = fleet_schemas::time::now_micros();
    // Recent data (VictoriaMetrics refuses samples outside its retention), on an hour.
    let start = (now / HOUR_MICROS - hours as i64 - 1) * HOUR_MICROS;
    let shape = Shape {
        agents: env_usize("BENCH_AGENTS", 200),
        hours,
        interval_micros: 10_000_000,
        start_micros: start,
    };
    println!(
        "VictoriaMetrics {version}; {} agents x {} h at 10 s; blocks of one agent-hour",
        shape.agents, shape.hours
    );
    let mut rows = Vec::new();
    for kind in [Kind::Realistic, Kind::Constant] {
        rows.push(run(kind, shape).await?);
    }
    println!();
    println!("| data | samples | VM bytes/sample | ours raw | ours 5m+1h rollups | raw / VM | (raw + rollups) / VM | encode samples/s (1 core) | decode samples/s |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.0} | {:.0} |",
            r.kind.name(),
            r.samples,
            r.vm_bps,
            r.raw_bps,
            r.rollup_bps,
            r.raw_bps / r.vm_bps,
            (r.raw_bps + r.rollup_bps) / r.vm_bps,
            r.encode_sps,
            r.decode_sps
        );
    }
    for r in &rows {
        let raw_ok = r.raw_bps <= r.vm_bps;
        let both_ok = r.raw_bps + r.rollup_bps <= 2.0 * r.vm_bps;
        println!(
            "{}: raw <= VM: {}; raw + rollups <= 2x VM: {}",
            r.kind.name(),
            if raw_ok { "met" } else { "NOT met" },
            if both_ok { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

struct Row {
    kind: Kind,
    samples: usize,
    vm_bps: f64,
    raw_bps: f64,
    rollup_bps: f64,
    encode_sps: f64,
    decode_sps: f64,
}

/// Our side, fed sample by sample: blocks of one agent-hour and their rollups.
#[derive(Default)]
struct Ours {
    cutter: Cutter,
    /// (agent, day) → merged rollup sets, one per width.
    rollups: HashMap<(String, i64), Vec<RollupSet>>,
    encoded: Vec<Vec<u8>>,
    encode_time: Duration,
    samples: usize,
}

impl Ours {
    fn add(&mut self, agent: &str, ts: i64, series: String, value: f64) -> Result<()> {
        self.samples += 1;
        match self.cutter.add(agent, ts, series, value) {
            Some(block) => self.close(agent, &block),
            None => Ok(()),
        }
    }

    fn close(&mut self, agent: &str, block: &Block) -> Result<()> {
        let t = Instant::now();
        let bytes = chunk::encode(block);
        self.encode_time += t.elapsed();
        self.encoded.push(bytes);
        let day = block.timestamps()[0].div_euclid(DAY_MICROS);
        let sets: Vec<RollupSet> = rollup::DEFAULT_WIDTHS_MICROS
            .iter()
            .map(|&w| rollup::compute(block, w))
            .collect::<Result<_, _>>()?;
        match self.rollups.get_mut(&(agent.to_owned(), day)) {
            Some(stored) => {
                for (s, new) in stored.iter_mut().zip(&sets) {
                    *s = rollup::merge(s, new)?;
                }
            }
            None => {
                self.rollups.insert((agent.to_owned(), day), sets);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        for (agent, block) in std::mem::take(&mut self.cutter).finish() {
            self.close(&agent, &block)?;
        }
        Ok(())
    }
}

async fn run(kind: Kind, shape: Shape) -> Result<Row> {
    println!("\n== {}", kind.name());
    let dir = tempfile::tempdir()?;
    let mut vm = VictoriaMetrics::start(dir.path()).await?;
    let client = reqwest::Client::new();

    // A sender task posts batches while this one generates the next.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
    let sender = {
        let (client, url) = (client.clone(), format!("{}/write", vm.url()));
        tokio::spawn(async move {
            while let Some(body) = rx.recv().await {
                let r = client.post(&url).body(body).send().await?;
                if !r.status().is_success() {
                    bail!("VictoriaMetrics /write answered {}", r.status());
                }
            }
            Ok(())
        })
    };

    let mut ours = Ours::default();
    let mut body = String::with_capacity(BATCH_BYTES + 4096);
    let ingest = Instant::now();
    for r in reports(kind, shape) {
        victoria::influx_lines(&r, &mut body);
        let mut failed = None;
        for_each_sample(&r, |metric, subject, value| {
            if let Err(e) = ours.add(
                &r.agent_id,
                r.occurred_at,
                series_name(metric, subject),
                value,
            ) {
                failed = Some(e);
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if body.len() >= BATCH_BYTES {
            let full = std::mem::replace(&mut body, String::with_capacity(BATCH_BYTES + 4096));
            tx.send(full).await.context("sender stopped")?;
        }
    }
    if !body.is_empty() {
        tx.send(body).await.context("sender stopped")?;
    }
    drop(tx);
    sender.await??;
    ours.finish()?;
    vm.force_flush(&client).await?;
    let posted = ingest.elapsed();
    // Merges run in the background; settled_bytes waits for them.
    let merge = client
        .get(format!("{}/internal/force_merge", vm.url()))
        .send()
        .await?;
    if !merge.status().is_success() {
        println!(
            "(force_merge answered {}; waiting for background merges only)",
            merge.status()
        );
    }
    let vm_bytes = vm
        .settled_bytes(Duration::from_secs(5), Duration::from_secs(120))
        .await?;
    let samples = ours.samples;
    let vm_count = count_samples(&client, vm.url(), shape.hours).await?;
    vm.stop()?;

    let raw: usize = ours.encoded.iter().map(Vec::len).sum();
    // Per width (5 min, 1 h), summed over the agent-day sets.
    let mut by_width = [0usize; 2];
    for sets in ours.rollups.values() {
        for (total, set) in by_width.iter_mut().zip(sets) {
            *total += rollup::encode(set).len();
        }
    }
    let rollup_bytes: usize = by_width.iter().sum();
    let t = Instant::now();
    let mut decoded = 0usize;
    for b in &ours.encoded {
        decoded += chunk::decode(b)?.sample_count();
    }
    let decode_time = t.elapsed();
    if decoded != samples {
        bail!("decoded {decoded} samples of {samples}");
    }
    let bps = |b: usize| b as f64 / samples as f64;
    println!(
        "samples: {samples} (VictoriaMetrics counts {vm_count}); generated and posted in {:.1} s",
        posted.as_secs_f64()
    );
    println!(
        "VictoriaMetrics data directory: {vm_bytes} bytes in files ({:.3} bytes/sample)",
        bps(vm_bytes as usize),
    );
    println!(
        "ours: {} blocks, {raw} bytes ({:.3} bytes/sample); rollups 5m + 1h: {} sets, {rollup_bytes} bytes ({:.3} bytes/sample)",
        ours.encoded.len(),
        bps(raw),
        ours.rollups.len() * 2,
        bps(rollup_bytes)
    );
    // One agent at the default retention (raw 7 d, 5 min 90 d, 1 h 400 d), scaled from
    // this run's bytes per agent-hour (the 1-hour sets span only this run's hours, so
    // their per-set overhead makes this an upper bound).
    let agent_hours = (shape.agents * shape.hours) as f64;
    let per_agent = (raw as f64 * 7.0 * 24.0
        + by_width[0] as f64 * 90.0 * 24.0
        + by_width[1] as f64 * 400.0 * 24.0)
        / agent_hours;
    println!(
        "one agent at the default retention (raw 7 d, 5m 90 d, 1h 400 d): {:.1} MB (raw {:.1}, 5m {:.1}, 1h {:.1}); VictoriaMetrics for 7 d raw: {:.1} MB",
        per_agent / 1e6,
        raw as f64 * 168.0 / agent_hours / 1e6,
        by_width[0] as f64 * 2160.0 / agent_hours / 1e6,
        by_width[1] as f64 * 9600.0 / agent_hours / 1e6,
        vm_bytes as f64 * 168.0 / agent_hours / 1e6,
    );
    if vm_count != samples as u64 {
        bail!("VictoriaMetrics holds {vm_count} samples, {samples} were posted");
    }
    Ok(Row {
        kind,
        samples,
        vm_bps: bps(vm_bytes as usize),
        raw_bps: bps(raw),
        rollup_bps: bps(rollup_bytes),
        encode_sps: samples as f64 / ours.encode_time.as_secs_f64(),
        decode_sps: samples as f64 / decode_time.as_secs_f64(),
    })
}

/// Samples VictoriaMetrics holds, by its own count (a `count_over_time` query over the
/// whole range).
async fn count_samples(client: &reqwest::Client, url: &str, hours: usize) -> Result<u64> {
    // A window longer than the data, measured from now ([100y] finds nothing).
    let q = format!("sum(count_over_time({{__name__=~\".+\"}}[{}h]))", hours + 2);
    let r = client
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .await?;
    let status = r.status();
    let v: serde_json::Value = r.json().await?;
    if !status.is_success() {
        bail!("query answered {status}: {v}");
    }
    // {"data":{"result":[{"value":[<time>,"<count>"]}]}}
    let count = v["data"]["result"][0]["value"][1]
        .as_str()
        .with_context(|| format!("no value in the query answer {v}"))?;
    count
        .parse::<f64>()
        .map(|f| f as u64)
        .with_context(|| format!("count {count:?}"))
}
