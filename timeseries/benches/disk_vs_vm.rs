//! Bytes per sample: our blocks and rollups against VictoriaMetrics on the same samples.
//!
//! For each data set (the realistic generated fleet, `fixtures::fleet_reports`, and the
//! constant fixture, `fixtures::metric_report`), `BENCH_AGENTS` agents report every 10 s
//! for `BENCH_HOURS` hours. The bench
//! * starts `victoria-metrics` (from PATH; Debian: `apt-get install -y victoria-metrics`)
//!   on a free loopback port with a fresh `-storageDataPath`, posts every sample as Influx
//!   line protocol to `/write` (measurement = metric, tags tenant, agent and subject where
//!   there is one, field `value`, nanosecond timestamps), calls `/internal/force_flush`
//!   and `/internal/force_merge`, waits until the data directory stops changing, and
//!   measures it;
//! * cuts the same samples into blocks of one agent-hour, encodes them (timing the encode
//!   on one core), and computes and encodes their 5-minute and 1-hour rollups, one rollup
//!   set per agent, day and width (the blocks' sets merged);
//! * prints samples, bytes per sample of each, and the ratios.
//!
//! usage: cargo bench -p fleet-timeseries --bench disk_vs_vm
//! Environment: BENCH_AGENTS (default 200), BENCH_HOURS (default 6), VM_BIN (default
//! `victoria-metrics`).

#![allow(clippy::print_stdout)] // a bench prints its figures

mod support;

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use fleet_schemas::samples::{for_each_sample, series_name};
use fleet_timeseries::{chunk, rollup, Block, RollupSet};
use support::{env_usize, reports, Cutter, Kind, Shape, HOUR_MICROS};

const DAY_MICROS: i64 = 24 * HOUR_MICROS;
/// Line-protocol bytes per POST.
const BATCH_BYTES: usize = 8 << 20;

fn main() -> Result<()> {
    let vm_bin = std::env::var("VM_BIN").unwrap_or_else(|_| "victoria-metrics".to_owned());
    let version = vm_version(&vm_bin)?;
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
        rows.push(run(kind, shape, &vm_bin)?);
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

fn vm_version(bin: &str) -> Result<String> {
    let out = Command::new(bin)
        .arg("-version")
        .output()
        .with_context(|| {
            format!(
                "cannot run `{bin}`: this bench needs VictoriaMetrics on PATH \
             (Debian: `apt-get install -y victoria-metrics`), or VM_BIN=/path/to/victoria-metrics"
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let text = if text.is_empty() {
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    } else {
        text
    };
    // The Debian build prints nothing for -version; its package version is the figure.
    if text.is_empty() {
        let dpkg = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "victoria-metrics"])
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|v| !v.is_empty());
        return Ok(dpkg.map_or_else(
            || "(version unknown)".to_owned(),
            |v| format!("{v} (Debian package)"),
        ));
    }
    Ok(text)
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

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn run(kind: Kind, shape: Shape, vm_bin: &str) -> Result<Row> {
    println!("\n== {}", kind.name());
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("vm-data");
    let mut vm = Vm::start(vm_bin, &data, &dir.path().join("vm.log"))?;
    let addr = vm.addr;

    // A sender thread posts batches while this one generates the next.
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4);
    let sender = std::thread::spawn(move || -> Result<()> {
        for body in rx {
            let (status, text) = http(addr, "POST", "/write", &body)?;
            if status / 100 != 2 {
                bail!("VictoriaMetrics /write answered {status}: {text}");
            }
        }
        Ok(())
    });

    let mut ours = Ours::default();
    let mut body = Vec::with_capacity(BATCH_BYTES + 4096);
    let ingest = Instant::now();
    for r in reports(kind, shape) {
        let tags = format!(
            "agent={},tenant={}",
            escape(&r.agent_id),
            escape(&r.tenant_id)
        );
        let ns = r.occurred_at * 1_000;
        let mut failed = None;
        for_each_sample(&r, |metric, subject, value| {
            let _ = match subject {
                Some(s) => writeln!(
                    body,
                    "{},{tags},subject={} value={value} {ns}",
                    escape(metric),
                    escape(s)
                ),
                None => writeln!(body, "{},{tags} value={value} {ns}", escape(metric)),
            };
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
            tx.send(std::mem::replace(
                &mut body,
                Vec::with_capacity(BATCH_BYTES + 4096),
            ))
            .context("sender stopped")?;
        }
    }
    if !body.is_empty() {
        tx.send(body).context("sender stopped")?;
    }
    drop(tx);
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    ours.finish()?;
    let (status, text) = http(addr, "GET", "/internal/force_flush", b"")?;
    if status / 100 != 2 {
        bail!("force_flush answered {status}: {text}");
    }
    let posted = ingest.elapsed();
    // Merges run in the background; settle() waits for them.
    let (status, text) = http(addr, "GET", "/internal/force_merge", b"")?;
    if status / 100 != 2 {
        println!("(force_merge answered {status}: {text}; waiting for background merges only)");
    }
    let (vm_apparent, vm_allocated) = vm.settle(&data)?;
    let samples = ours.samples;
    let vm_count = vm.count_samples(shape.hours)?;
    vm.stop();

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
        "VictoriaMetrics data directory: {vm_apparent} bytes in files ({:.3} bytes/sample), {vm_allocated} bytes allocated ({:.3})",
        bps(vm_apparent as usize),
        bps(vm_allocated as usize)
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
        vm_apparent as f64 * 168.0 / agent_hours / 1e6,
    );
    if vm_count != samples as u64 {
        bail!("VictoriaMetrics holds {vm_count} samples, {samples} were posted");
    }
    Ok(Row {
        kind,
        samples,
        vm_bps: bps(vm_apparent as usize),
        raw_bps: bps(raw),
        rollup_bps: bps(rollup_bytes),
        encode_sps: samples as f64 / ours.encode_time.as_secs_f64(),
        decode_sps: samples as f64 / decode_time.as_secs_f64(),
    })
}

/// A VictoriaMetrics process of the bench's own.
struct Vm {
    child: Child,
    addr: SocketAddr,
}

impl Vm {
    fn start(bin: &str, data: &Path, log: &Path) -> Result<Vm> {
        // A free port: bind one, release it, hand it to VM.
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let log = std::fs::File::create(log)?;
        let child = Command::new(bin)
            .arg(format!("-httpListenAddr={addr}"))
            .arg(format!("-storageDataPath={}", data.display()))
            .arg("-retentionPeriod=100y")
            .arg("-loggerLevel=ERROR")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        let mut vm = Vm { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _)) = http(addr, "GET", "/health", b"") {
                return Ok(vm);
            }
            if let Some(status) = vm.child.try_wait()? {
                bail!("{bin} exited at start-up ({status}); see its log");
            }
            if Instant::now() > deadline {
                vm.stop();
                bail!("{bin} did not answer /health within 30 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the data directory stops changing (background merges done): the size
    /// the same for 5 polls 1 s apart, at most 2 minutes. Returns (bytes in files,
    /// bytes allocated).
    fn settle(&mut self, data: &Path) -> Result<(u64, u64)> {
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = dir_size(data)?;
        let mut stable = 0;
        while stable < 5 {
            std::thread::sleep(Duration::from_secs(1));
            let now = dir_size(data)?;
            if now == last {
                stable += 1;
            } else {
                stable = 0;
                last = now;
            }
            if Instant::now() > deadline {
                println!(
                    "(VictoriaMetrics still changing its directory after 2 min; measuring now)"
                );
                break;
            }
        }
        Ok(last)
    }

    /// Samples VM holds, by its own count (a `count_over_time` query over the whole range).
    fn count_samples(&self, hours: usize) -> Result<u64> {
        // A window longer than the data, measured from now ([100y] finds nothing).
        let q = format!("sum(count_over_time({{__name__=~\".+\"}}[{}h]))", hours + 2);
        let path = format!("/api/v1/query?query={}", urlencode(&q));
        let (status, text) = http(self.addr, "GET", &path, b"")?;
        if status != 200 {
            bail!("query answered {status}: {text}");
        }
        // ..."value":[<time>,"<count>"]...
        let v = text
            .rsplit('"')
            .nth(1)
            .context("no value in the query answer")?;
        v.parse::<f64>()
            .map(|f| f as u64)
            .with_context(|| format!("count {v:?} in {text}"))
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sizes of every file under `dir`: (bytes in files, bytes allocated on disk).
fn dir_size(dir: &Path) -> Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt as _;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue; // a part directory removed by a merge meanwhile
        };
        for e in entries.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    Ok((apparent, allocated))
}

/// One HTTP/1.1 request on a fresh loopback connection (the bench needs no async client):
/// (status, body as text).
fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP answer: {text:.200}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
