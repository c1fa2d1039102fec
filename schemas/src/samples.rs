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
//! | `security.reboot_required` | | 1 the system asks for a reboot, 0 not (reports that say) |
//! | `security.ssh_root_login_permitted` | | 1 sshd's `PermitRootLogin` lets root log in in any form (`yes`, `prohibit-password`, `forced-commands-only`), 0 `no` (reports that say) |
//! | `security.ssh_password_authentication` | | 1 sshd accepts passwords, 0 not (reports that say) |
//! | `security.antivirus_present` | | 1 ClamAV installed, 0 not (reports that say) |
//! | `security.antivirus_signature_age_hours` | | h, age of the newest ClamAV signature database (reports that say) |
//! | `custom.<name>` | its labels, `{k="v",...}` (none without labels) | as sent |
//!
//! A series is named `metric` or, with a subject, `metric:subject` (`disk.percent:/var`).
//!
//! **Custom metrics** travel in the report's `custom` map keyed by their series text
//! ([`custom_key`]): the name alone, or the name and its labels in the canonical form of
//! [`crate::series::series_text`] (`queue_depth{queue="high",region="eu"}`: labels sorted
//! by name, values quoted as Prometheus prints them). The sample is `custom.<name>` with
//! the labels text as its subject (`custom.queue_depth:{queue="high",region="eu"}`), the
//! same form an alert on a standard protocols' series has as its subject. Keys with labels
//! need a gateway that knows them (older ones refuse the report naming the key), so
//! servers are upgraded before agents that send labelled custom metrics.

use crate::records::{Label, MetricReport};
use crate::series;

/// Longest custom metric name (`[A-Za-z0-9._-]`).
pub const MAX_CUSTOM_NAME_LEN: usize = 128;

/// Most labels of one custom metric.
pub const MAX_CUSTOM_LABELS: usize = 16;

/// Longest labels text (the subject, `{k="v",...}`) of one custom metric, in bytes (a
/// rule may name a subject of at most 500 characters).
pub const MAX_CUSTOM_SUBJECT_LEN: usize = 500;

/// Whether `name` is a custom metric name: 1 to [`MAX_CUSTOM_NAME_LEN`] characters of
/// letters, digits, `.`, `_` or `-`.
pub fn is_custom_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CUSTOM_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `custom` map key of a custom metric: `name`, or `name{labels}` with `labels`
/// sorted by name (the caller sorts them).
pub fn custom_key(name: &str, labels: &[Label]) -> String {
    series::series_text(name, labels)
}

/// Splits a `custom` map key into the metric's name and its labels text (the subject).
pub fn split_custom_key(key: &str) -> (&str, Option<&str>) {
    match key.find('{') {
        Some(i) => (&key[..i], Some(&key[i..])),
        None => (key, None),
    }
}

/// Checks a `custom` map key: a valid name ([`is_custom_name`]), and labels (if any) in
/// canonical series-text form: 1 to [`MAX_CUSTOM_LABELS`] labels, sorted by name without
/// repeats, at most [`MAX_CUSTOM_SUBJECT_LEN`] bytes. The error says what is wrong.
pub fn check_custom_key(key: &str) -> Result<(), String> {
    let (name, labels) = split_custom_key(key);
    if !is_custom_name(name) {
        return Err(format!(
            "custom metric names are 1 to {MAX_CUSTOM_NAME_LEN} characters of letters, digits, '.', '_' or '-', optionally followed by labels {{k=\"v\",...}}"
        ));
    }
    labels.map_or(Ok(()), check_custom_subject)
}

/// Checks the subject of a custom metric: its labels in canonical series-text form
/// (`{a="x",b="y"}`: 1 to [`MAX_CUSTOM_LABELS`] labels, sorted by name without repeats,
/// values quoted as Prometheus prints them, at most [`MAX_CUSTOM_SUBJECT_LEN`] bytes).
pub fn check_custom_subject(text: &str) -> Result<(), String> {
    if text.len() > MAX_CUSTOM_SUBJECT_LEN {
        return Err(format!(
            "labels of a custom metric take at most {MAX_CUSTOM_SUBJECT_LEN} bytes"
        ));
    }
    let parsed = series::parse_labels_text(text)?;
    if parsed.len() > MAX_CUSTOM_LABELS {
        return Err(format!(
            "a custom metric has at most {MAX_CUSTOM_LABELS} labels"
        ));
    }
    if parsed.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err("labels are sorted by name, each name once".to_owned());
    }
    if series::labels_text(&parsed) != text {
        return Err("label values are quoted as Prometheus prints them (\\\\, \\\", \\n, \\t, \\r, \\xNN for other control characters)".to_owned());
    }
    Ok(())
}

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
    "security.reboot_required",
    "security.ssh_root_login_permitted",
    "security.ssh_password_authentication",
    "security.antivirus_present",
    "security.antivirus_signature_age_hours",
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

/// Splits a comma-separated list of series names, leaving commas inside a custom
/// metric's labels (`custom.q:{a="1",b="x,y"}`) alone: a comma splits only outside
/// braces and quotes (a backslash escapes the next character inside quotes).
pub fn split_series_list(list: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    let mut start = 0;
    for (i, c) in list.char_indices() {
        if quoted {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match c {
            '"' if depth > 0 => quoted = true,
            '{' => depth = depth.saturating_add(1),
            '}' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&list[start..]);
    out
}

/// Checks one series name a query may ask for: a built-in metric or `custom.<name>`
/// ([`is_custom_name`]), optionally `:` and a subject: a custom metric's labels as
/// [`crate::series::parse_labels_text`] reads them, or any text without `{` (a mount or a
/// service). The query API's OpenAPI pattern `fleet:metrics` says the same.
pub fn check_series_name(series: &str) -> Result<(), String> {
    let (metric, subject) = split_series(series);
    let known = BUILTIN_METRICS.contains(&metric)
        || metric.strip_prefix("custom.").is_some_and(is_custom_name);
    if !known {
        return Err(format!(
            "unknown metric {metric:?}: a built-in name or custom.<name> (letters, digits, '.', '_', '-')"
        ));
    }
    match subject {
        Some(s) if s.contains('{') => series::parse_labels_text(s)
            .map(|_| ())
            .map_err(|e| format!("subject {s:?}: {e}")),
        _ => Ok(()),
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
            f("security.firewall_active", None, flag(on));
        }
        if let Some(n) = sec.pending_updates {
            f("security.pending_updates", None, f64::from(n));
        }
        if let Some(n) = sec.pending_security_updates {
            f("security.pending_security_updates", None, f64::from(n));
        }
        if let Some(on) = sec.reboot_required {
            f("security.reboot_required", None, flag(on));
        }
        if let Some(v) = &sec.ssh_permit_root_login {
            // Any form of root login counts, a key-only or command-only one too: `no` is
            // the only 0.
            f("security.ssh_root_login_permitted", None, flag(v != "no"));
        }
        if let Some(on) = sec.ssh_password_authentication {
            f("security.ssh_password_authentication", None, flag(on));
        }
        if let Some(on) = sec.antivirus_present {
            f("security.antivirus_present", None, flag(on));
        }
        if let Some(h) = sec.antivirus_signature_age_hours {
            f("security.antivirus_signature_age_hours", None, h);
        }
    }
    for (key, v) in &r.custom {
        let (name, subject) = split_custom_key(key);
        f(&format!("custom.{name}"), subject, *v);
    }
}

/// A yes/no fact as a sample value: 1 or 0.
fn flag(on: bool) -> f64 {
    if on {
        1.0
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(name: &str, value: &str) -> Label {
        Label {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn custom_keys_carry_labels_as_the_subject() {
        let mut r = crate::fixtures::metric_report("t", "a", 0);
        r.custom.clear();
        r.custom.insert("plain".to_owned(), 1.0);
        let key = custom_key(
            "queue_depth",
            &[label("queue", "high"), label("region", "eu:\"1\"")],
        );
        assert_eq!(key, r#"queue_depth{queue="high",region="eu:\"1\""}"#);
        assert_eq!(check_custom_key(&key), Ok(()));
        r.custom.insert(key, 7.0);
        let mut custom: Vec<Sample> = samples(&r)
            .into_iter()
            .filter(|s| s.metric.starts_with("custom."))
            .collect();
        custom.sort_by(|a, b| a.metric.cmp(&b.metric));
        assert_eq!(
            custom,
            vec![
                Sample {
                    metric: "custom.plain".into(),
                    subject: None,
                    value: 1.0
                },
                Sample {
                    metric: "custom.queue_depth".into(),
                    subject: Some(r#"{queue="high",region="eu:\"1\""}"#.into()),
                    value: 7.0
                },
            ]
        );
        // The series name splits back at the first ':' (names have none).
        assert_eq!(
            split_series(&custom[1].series()),
            (
                "custom.queue_depth",
                Some(r#"{queue="high",region="eu:\"1\""}"#)
            )
        );
    }

    #[test]
    fn series_lists_split_outside_labels_only() {
        assert_eq!(
            split_series_list(
                r#"cpu.percent,disk.percent:/var,custom.q:{a="1",b="x,\"}y"},custom.p"#
            ),
            vec![
                "cpu.percent",
                "disk.percent:/var",
                r#"custom.q:{a="1",b="x,\"}y"}"#,
                "custom.p"
            ]
        );
        assert_eq!(split_series_list(""), vec![""]);
        assert_eq!(split_series_list("a,,b"), vec!["a", "", "b"]);
    }

    #[test]
    fn series_names_of_queries_are_checked() {
        for ok in [
            "cpu.percent",
            "disk.percent:/var",
            "service.up:",
            "custom.q",
            r#"custom.q:{a="1",b="x,\"}"}"#,
        ] {
            assert_eq!(check_series_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "cpu.bogus",
            "custom.",
            "custom.a b",
            "custom.q:{a",
            "disk.percent:a{b",
        ] {
            assert!(check_series_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_keys_are_checked_strictly() {
        assert!(check_custom_key("a.b-c_d").is_ok());
        assert!(check_custom_key(r#"m{a="1",b="2"}"#).is_ok());
        let long_name = "x".repeat(MAX_CUSTOM_NAME_LEN + 1);
        let many: Vec<Label> = (0..=MAX_CUSTOM_LABELS)
            .map(|i| label(&format!("l{i:02}"), "v"))
            .collect();
        let many = custom_key("m", &many);
        let long_subject = format!("m{{a=\"{}\"}}", "v".repeat(MAX_CUSTOM_SUBJECT_LEN));
        for bad in [
            "",
            "a b",
            "a:b",
            long_name.as_str(),
            "m{}",
            r#"m{b="1",a="2"}"#,
            r#"m{a="1",a="2"}"#,
            r#"m{a="\x41"}"#,
            r#"m{a="1"}x"#,
            r#"{a="1"}"#,
            many.as_str(),
            long_subject.as_str(),
        ] {
            assert!(check_custom_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
