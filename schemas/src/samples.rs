//! Metric names: how a [`MetricReport`] flattens into named samples. Rules, the
//! time-series store and the query API all use these names.
//!
//! | metric | subject | unit |
//! | --- | --- | --- |
//! | `cpu.percent` | | % |
//! | `memory.percent`, `memory.used_bytes` | | %, bytes |
//! | `swap.used_bytes` | | bytes |
//! | `disk.percent`, `disk.used_bytes` | mount point | %, bytes |
//! | `disk.read_bytes`, `disk.write_bytes` | | bytes per interval |
//! | `load.1`, `load.5`, `load.15` | | |
//! | `load.per_core` | | `load.1` divided by the number of cores (reports with per-core CPU only) |
//! | `uptime.seconds` | | s |
//! | `net.rx_bytes`, `net.tx_bytes` | | bytes per interval |
//! | `processes.count` | | |
//! | `service.up` | service name | 1 running, 0 otherwise |
//! | `security.firewall_active` | | 1 a host firewall filters input, 0 none (reports that say) |
//! | `security.pending_updates`, `security.pending_security_updates` | | packages (reports that say) |
//! | `custom.<name>` | | as sent |
//!
//! A series is named `metric` or, with a subject, `metric:subject` (`disk.percent:/var`).

use crate::records::MetricReport;

/// Every metric name a report without custom metrics can carry.
pub const BUILTIN_METRICS: &[&str] = &[
    "cpu.percent",
    "memory.percent",
    "memory.used_bytes",
    "swap.used_bytes",
    "disk.percent",
    "disk.used_bytes",
    "disk.read_bytes",
    "disk.write_bytes",
    "load.1",
    "load.5",
    "load.15",
    "load.per_core",
    "uptime.seconds",
    "net.rx_bytes",
    "net.tx_bytes",
    "processes.count",
    "service.up",
    "security.firewall_active",
    "security.pending_updates",
    "security.pending_security_updates",
];

/// One named value of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name.
    pub metric: String,
    /// Mount point or service name, for metrics that have one.
    pub subject: Option<String>,
    /// Value.
    pub value: f64,
}

impl Sample {
    /// Series name: `metric` or `metric:subject`.
    pub fn series(&self) -> String {
        series_name(&self.metric, self.subject.as_deref())
    }
}

/// Series name for a metric and optional subject.
pub fn series_name(metric: &str, subject: Option<&str>) -> String {
    match subject {
        Some(s) => format!("{metric}:{s}"),
        None => metric.to_owned(),
    }
}

/// Splits a series name into metric and subject (the inverse of [`series_name`]).
pub fn split_series(series: &str) -> (&str, Option<&str>) {
    match series.split_once(':') {
        Some((m, s)) => (m, Some(s)),
        None => (series, None),
    }
}

/// Whether `metric` is a name a report can carry (built-in or `custom.*`).
pub fn is_known_metric(metric: &str) -> bool {
    BUILTIN_METRICS.contains(&metric)
        || metric
            .strip_prefix("custom.")
            .is_some_and(|n| !n.is_empty())
}

/// Flattens a report into its samples.
pub fn samples(r: &MetricReport) -> Vec<Sample> {
    let mut out = Vec::with_capacity(20 + 2 * r.disks.len() + r.services.len() + r.custom.len());
    for_each_sample(r, |metric, subject, value| {
        out.push(Sample {
            metric: metric.to_owned(),
            subject: subject.map(str::to_owned),
            value,
        })
    });
    out
}

/// Hands every sample of a report to `f` as (metric, subject, value), in the order of
/// [`samples`], without allocating (except the names of custom metrics).
pub fn for_each_sample(r: &MetricReport, mut f: impl FnMut(&str, Option<&str>, f64)) {
    f("cpu.percent", None, r.cpu_percent);
    f("memory.percent", None, r.memory_percent);
    f("memory.used_bytes", None, r.memory_used_bytes as f64);
    f("swap.used_bytes", None, r.swap_used_bytes as f64);
    for d in &r.disks {
        f("disk.percent", Some(&d.mount), d.percent);
        f("disk.used_bytes", Some(&d.mount), d.used_bytes as f64);
    }
    f("disk.read_bytes", None, r.disk_read_bytes as f64);
    f("disk.write_bytes", None, r.disk_write_bytes as f64);
    f("load.1", None, r.load_1);
    f("load.5", None, r.load_5);
    f("load.15", None, r.load_15);
    if !r.cpu_per_core.is_empty() {
        f(
            "load.per_core",
            None,
            r.load_1 / r.cpu_per_core.len() as f64,
        );
    }
    f("uptime.seconds", None, r.uptime_seconds as f64);
    f("net.rx_bytes", None, r.net_rx_bytes as f64);
    f("net.tx_bytes", None, r.net_tx_bytes as f64);
    f("processes.count", None, f64::from(r.process_count));
    for s in &r.services {
        let up = if s.status == "running" { 1.0 } else { 0.0 };
        f("service.up", Some(&s.name), up);
    }
    if let Some(sec) = &r.security {
        if let Some(on) = sec.firewall_enabled {
            f("security.firewall_active", None, if on { 1.0 } else { 0.0 });
        }
        if let Some(n) = sec.pending_updates {
            f("security.pending_updates", None, f64::from(n));
        }
        if let Some(n) = sec.pending_security_updates {
            f("security.pending_security_updates", None, f64::from(n));
        }
    }
    for (name, v) in &r.custom {
        f(&format!("custom.{name}"), None, *v);
    }
}
