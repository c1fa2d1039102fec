//! VictoriaMetrics as a peer to measure against: the Debian package's `victoria-metrics`
//! binary started on a loopback port with a temporary storage directory, fed the same
//! samples as Fleetstream stores, as Influx line protocol (the way Telegraf sends them).
//!
//! A report becomes one line per (measurement, subject): the metric name up to its first
//! `.` is the measurement, the rest the field (`cpu.percent` → measurement `cpu`, field
//! `percent`, which VictoriaMetrics stores as the series `cpu_percent`), tagged with the
//! tenant, the agent and the subject where the metric has one. So both systems hold the
//! same series and the same number of samples.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use fleet_schemas::samples::for_each_sample;
use fleet_schemas::MetricReport;

use crate::process::{free_port, wait_ready, Proc};

/// A running VictoriaMetrics single-node server; killed on drop.
#[derive(Debug)]
pub struct VictoriaMetrics {
    proc: Proc,
    url: String,
    storage: PathBuf,
    version: String,
}

/// The `victoria-metrics` binary on PATH (`apt-get install victoria-metrics`).
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join("victoria-metrics");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "victoria-metrics is not on PATH: install Debian's package first \
         (`apt-get install -y victoria-metrics`); the benches never install it"
    )
}

/// What `victoria-metrics -version` prints, or the Debian package's version when it
/// prints nothing (Debian's build does not stamp one).
pub fn version(bin: &Path) -> String {
    let run = |program: &Path, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let version = run(bin, &["-version"]);
    if !version.is_empty() {
        return version;
    }
    let pkg = run(
        Path::new("dpkg-query"),
        &["-W", "-f", "${Version}", "victoria-metrics"],
    );
    if pkg.is_empty() {
        "unknown version".into()
    } else {
        format!("victoria-metrics {pkg} (Debian package)")
    }
}

impl VictoriaMetrics {
    /// Starts VictoriaMetrics with its storage in `dir/vm-data` and waits for `/health`.
    /// The result cache is off, so repeated queries cost what the first one does (the
    /// Fleetstream API has no result cache).
    pub async fn start(dir: &Path) -> anyhow::Result<VictoriaMetrics> {
        let bin = binary()?;
        let version = version(&bin);
        let storage = dir.join("vm-data");
        std::fs::create_dir_all(&storage)?;
        let port = free_port()?;
        let storage_arg = format!("-storageDataPath={}", storage.display());
        let listen_arg = format!("-httpListenAddr=127.0.0.1:{port}");
        let proc = Proc::start_program(
            "victoria-metrics",
            dir,
            &bin,
            &[
                &storage_arg,
                &listen_arg,
                "-retentionPeriod=100y",
                "-search.disableCache",
                "-loggerLevel=ERROR",
                // Samples older than the default (search.cacheTimestampOffset) are fine;
                // accept any timestamp the generator makes.
                "-search.latencyOffset=0s",
            ],
            &[],
        )?;
        let url = format!("http://127.0.0.1:{port}");
        let vm = VictoriaMetrics {
            proc,
            url,
            storage,
            version,
        };
        wait_ready(
            &format!("{}/health", vm.url),
            Duration::from_secs(30),
            &[&vm.proc],
        )
        .await?;
        Ok(vm)
    }

    /// Base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What `victoria-metrics -version` printed.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The server process (for log tails).
    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// `/internal/force_flush`: makes every received sample searchable and written.
    pub async fn force_flush(&self, client: &reqwest::Client) -> anyhow::Result<()> {
        let r = client
            .get(format!("{}/internal/force_flush", self.url))
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("force_flush answered {}", r.status());
        }
        Ok(())
    }

    /// Bytes under the storage directory now.
    pub fn storage_bytes(&self) -> anyhow::Result<u64> {
        dir_bytes(&self.storage)
    }

    /// Waits until the storage directory's size has not changed for `quiet` (background
    /// merges done), at most `timeout`; returns the size.
    pub async fn settled_bytes(&self, quiet: Duration, timeout: Duration) -> anyhow::Result<u64> {
        settled_dir_bytes(&self.storage, quiet, timeout).await
    }

    /// Stops the server (SIGTERM, then SIGKILL after 30 s).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.proc.stop()
    }
}

/// Total size of the regular files under `dir` (what `du --apparent-size` counts).
pub fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            // Parts come and go while a store merges.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", d.display())),
        };
        for entry in entries {
            let Ok(entry) = entry else { continue };
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                stack.push(entry.path());
            } else if meta.is_file() {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Polls [`dir_bytes`] every 500 ms until it has not changed for `quiet` (or `timeout`
/// passed); returns the last size.
pub async fn settled_dir_bytes(
    dir: &Path,
    quiet: Duration,
    timeout: Duration,
) -> anyhow::Result<u64> {
    let start = std::time::Instant::now();
    let mut last = dir_bytes(dir)?;
    let mut since = std::time::Instant::now();
    while start.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = dir_bytes(dir)?;
        if now != last {
            last = now;
            since = std::time::Instant::now();
        } else if since.elapsed() >= quiet {
            break;
        }
    }
    Ok(last)
}

/// Influx-escapes a tag value (commas, spaces and equals signs).
fn tag(out: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, ',' | ' ' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Appends `report` as Influx line protocol (nanosecond timestamps): one line per
/// (measurement, subject). Returns the number of samples (fields) written.
pub fn influx_lines(report: &MetricReport, out: &mut String) -> usize {
    // (measurement, subject) → fields, in the report's sample order.
    // (measurement, subject) → fields of one line.
    type Lines = BTreeMap<(String, Option<String>), Vec<(String, f64)>>;
    let mut lines: Lines = BTreeMap::new();
    let mut samples = 0;
    for_each_sample(report, |metric, subject, value| {
        let (measurement, field) = metric.split_once('.').unwrap_or((metric, "value"));
        lines
            .entry((measurement.to_owned(), subject.map(str::to_owned)))
            .or_default()
            .push((field.replace('.', "_"), value));
        samples += 1;
    });
    let ns = i128::from(report.occurred_at) * 1000;
    for ((measurement, subject), fields) in lines {
        out.push_str(&measurement);
        out.push_str(",tenant=");
        tag(out, &report.tenant_id);
        out.push_str(",agent=");
        tag(out, &report.agent_id);
        if let Some(s) = subject {
            out.push_str(",subject=");
            tag(out, &s);
        }
        out.push(' ');
        for (i, (field, value)) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            // `{:?}` prints the shortest text that parses back to the same f64.
            let _ = write!(out, "{field}={value:?}");
        }
        let _ = writeln!(out, " {ns}");
    }
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_becomes_one_line_per_measurement_and_subject() {
        let r = fleet_schemas::fixtures::metric_report("t1", "a1", 1_700_000_000_000_000);
        let mut text = String::new();
        let n = influx_lines(&r, &mut text);
        assert_eq!(n, fleet_schemas::samples::samples(&r).len());
        let fields: usize = text
            .lines()
            .map(|l| l.split(' ').nth(1).map_or(0, |f| f.split(',').count()))
            .sum();
        assert_eq!(fields, n, "{text}");
        assert!(text.contains("disk,tenant=t1,agent=a1,subject=/var percent=10.0,used_bytes="));
        assert!(text.lines().all(|l| l.ends_with(" 1700000000000000000")));
    }

    #[test]
    fn tag_values_are_escaped() {
        let mut out = String::new();
        tag(&mut out, "a b,c=d");
        assert_eq!(out, "a\\ b\\,c\\=d");
    }
}
