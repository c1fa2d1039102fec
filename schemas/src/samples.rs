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
//! | `uptime.seconds` | | s |
//! | `net.rx_bytes`, `net.tx_bytes` | | bytes per interval |
//! | `processes.count` | | |
//! | `service.up` | service name | 1 running, 0 otherwise |
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
    "uptime.seconds",
    "net.rx_bytes",
    "net.tx_bytes",
    "processes.count",
    "service.up",
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
    let mut out = Vec::with_capacity(16 + 2 * r.disks.len() + r.services.len() + r.custom.len());
    let mut push = |metric: &str, subject: Option<&str>, value: f64| {
        out.push(Sample {
            metric: metric.to_owned(),
            subject: subject.map(str::to_owned),
            value,
        })
    };
    push("cpu.percent", None, r.cpu_percent);
    push("memory.percent", None, r.memory_percent);
    push("memory.used_bytes", None, r.memory_used_bytes as f64);
    push("swap.used_bytes", None, r.swap_used_bytes as f64);
    for d in &r.disks {
        push("disk.percent", Some(&d.mount), d.percent);
        push("disk.used_bytes", Some(&d.mount), d.used_bytes as f64);
    }
    push("disk.read_bytes", None, r.disk_read_bytes as f64);
    push("disk.write_bytes", None, r.disk_write_bytes as f64);
    push("load.1", None, r.load_1);
    push("load.5", None, r.load_5);
    push("load.15", None, r.load_15);
    push("uptime.seconds", None, r.uptime_seconds as f64);
    push("net.rx_bytes", None, r.net_rx_bytes as f64);
    push("net.tx_bytes", None, r.net_tx_bytes as f64);
    push("processes.count", None, f64::from(r.process_count));
    for s in &r.services {
        let up = if s.status == "running" { 1.0 } else { 0.0 };
        push("service.up", Some(&s.name), up);
    }
    for (name, v) in &r.custom {
        push(&format!("custom.{name}"), None, *v);
    }
    out
}
