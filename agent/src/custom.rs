//! Custom metrics: Prometheus text-format files in a directory (node_exporter's textfile
//! collector convention, `textfile-directory`) and scripts (`[[custom-scripts]]`) whose
//! stdout is the same format. Both go through one parser ([`parse`]) into the report's
//! `custom` map, keyed as `fleet_schemas::samples::custom_key` says: a series
//! `queue_depth{queue="high"} 7` becomes the metric `custom.queue_depth` with the subject
//! `{queue="high"}` (its labels, sorted by name, in Prometheus' quoting).
//!
//! * **Textfiles** are read at every collection: `*.prom` files only (others, such as the
//!   `*.prom.$$` a writer renames into place, are ignored), in name order, at most
//!   [`MAX_FILES`] files of at most [`MAX_FILE_BYTES`] each and [`MAX_TOTAL_BYTES`] in all
//!   per collection. A file past a bound, unreadable or not UTF-8 is skipped whole.
//! * **Scripts** run on their own `interval` ([`script_loop`]), directly (no shell), with
//!   a `timeout` that kills their process group and a bound on the output read
//!   (`max-output-bytes`), through [`crate::process`] like the security probes. Each
//!   report carries the values of a script's last good run. A run that cannot start,
//!   exits non-zero, times out or prints more than the bound is a warning and a count
//!   (`custom_script_failures`), and the script's last values are dropped (not repeated
//!   forever) until a run succeeds again.
//! * **The parser** is strict and line by line: a bad line is skipped (the rest of the
//!   source is kept), a warning names the first one per source (again only when a textfile
//!   changes), and every skipped line or series is counted (`custom_series_skipped`).
//!   `# HELP`, `# TYPE` and other comments are ignored; so histograms and summaries need
//!   no special case: each of their lines is a series of its own (`x_bucket{le="0.5"}`,
//!   `x_sum`, `x_count`, `x{quantile="0.9"}`). A timestamp after the value is accepted and
//!   ignored (the report's time is the sample's). Values that are not finite (`NaN`,
//!   `+Inf`, `-Inf`) are skipped (the gateway takes finite values only). Labels with an
//!   empty value are dropped (as in Prometheus, where they mean "absent"). A name with `:`
//!   (recording rules' convention) is not a custom metric name: skipped.
//! * **Bounds**: lines of at most [`MAX_LINE_BYTES`], [`MAX_LINES`] lines per source; the
//!   labels as `fleet_schemas::samples` bounds them (the gateway checks the same); a series
//!   seen twice keeps its first value (files before scripts); at most `custom-max-series`
//!   series per report, the rest dropped and counted.
//!
//! Why our own parser: the crates found (`prometheus-parse`, `openmetrics-parser`,
//! `prom_text_format_parser`) parse a whole document into one `Result`, so one bad line
//! loses a file, and pull regex/pest/chrono into the agent's small binary; the format's
//! line grammar is small enough to parse strictly here, with unit tests.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use fleet_schemas::samples::{check_custom_key, custom_key, MAX_CUSTOM_LABELS};
use fleet_schemas::Label;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn, Instrument as _};

use crate::config::CustomScript;
use crate::process;
use crate::stats::{add, inc, Stats};
use crate::sync::lock;

/// Most `*.prom` files read per collection.
pub const MAX_FILES: usize = 256;

/// Largest textfile read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Most bytes of textfiles read per collection, all files together.
pub const MAX_TOTAL_BYTES: u64 = 8 * 1024 * 1024;

/// Longest line parsed.
pub const MAX_LINE_BYTES: usize = 4096;

/// Most lines parsed per source (file or script output).
pub const MAX_LINES: usize = 20_000;

/// What one source gave: series keyed as the report's `custom` map, and what was skipped.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    /// (key, value), in the order read, each key once.
    pub series: Vec<(String, f64)>,
    /// Lines or series skipped.
    pub skipped: usize,
    /// The first skipped line: (line number from 1, why).
    pub first_problem: Option<(usize, String)>,
}

impl Parsed {
    fn skip(&mut self, line: usize, why: impl Into<String>) {
        self.skipped = self.skipped.saturating_add(1);
        if self.first_problem.is_none() {
            self.first_problem = Some((line, why.into()));
        }
    }
}

/// Parses Prometheus text format ([module docs](self)).
pub fn parse(text: &str) -> Parsed {
    let mut out = Parsed::default();
    let mut seen: HashSet<String> = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let n = i.saturating_add(1);
        if i >= MAX_LINES {
            out.skip(
                n,
                format!("more than {MAX_LINES} lines; the rest is ignored"),
            );
            break;
        }
        if line.len() > MAX_LINE_BYTES {
            out.skip(n, format!("line longer than {MAX_LINE_BYTES} bytes"));
            continue;
        }
        let line = line.trim_matches(|c| c == ' ' || c == '\t');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(None) => {
                out.skipped = out.skipped.saturating_add(1);
            }
            Ok(Some((key, value))) => {
                if seen.contains(&key) {
                    out.skip(n, format!("duplicate series {key}; the first is kept"));
                } else {
                    seen.insert(key.clone());
                    out.series.push((key, value));
                }
            }
            Err(why) => out.skip(n, why),
        }
    }
    out
}

/// One sample line: `Ok(None)` for a well-formed sample whose value is not finite.
fn parse_line(line: &str) -> Result<Option<(String, f64)>, String> {
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !fleet_schemas::series::is_metric_name(name) {
        return Err("expected a metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)".to_owned());
    }
    if name.contains(':') {
        return Err(format!(
            "{name}: names with ':' are not custom metric names (letters, digits, '_')"
        ));
    }
    let mut rest = line[name_end..].trim_start_matches([' ', '\t']);
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(after).map_err(|e| format!("{name}: {e}"))?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = parse_value(value).ok_or_else(|| format!("{name}: {value:?} is not a number"))?;
    if let Some(ts) = fields.next() {
        if ts.parse::<i64>().is_err() {
            return Err(format!("{name}: {ts:?} is not a timestamp (ms)"));
        }
    }
    if fields.next().is_some() {
        return Err(format!("{name}: text after the value and timestamp"));
    }
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    if labels.windows(2).any(|w| w[0].name == w[1].name) {
        return Err(format!("{name}: a label name appears twice"));
    }
    labels.retain(|l| !l.value.is_empty());
    if labels.len() > MAX_CUSTOM_LABELS {
        return Err(format!("{name}: more than {MAX_CUSTOM_LABELS} labels"));
    }
    let key = custom_key(name, &labels);
    // The gateway's own check, so what is sent is accepted.
    check_custom_key(&key).map_err(|e| format!("{name}: {e}"))?;
    Ok(value.is_finite().then_some((key, value)))
}

/// `name="value",...}` (after the `{`): the labels and what follows the `}`. Whitespace
/// between tokens and a trailing comma are allowed; values escape only `\\`, `\"`, `\n`.
fn parse_labels(mut s: &str) -> Result<(Vec<Label>, &str), String> {
    let ws = [' ', '\t'];
    let mut labels = Vec::new();
    loop {
        s = s.trim_start_matches(ws);
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let name_end = s
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .ok_or("unterminated labels")?;
        let name = &s[..name_end];
        if !fleet_schemas::series::is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        if name.starts_with("__") {
            return Err(format!("label {name}: names starting with __ are reserved"));
        }
        s = s[name_end..].trim_start_matches(ws);
        s = s
            .strip_prefix('=')
            .ok_or_else(|| format!("label {name}: expected ="))?
            .trim_start_matches(ws);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: expected a quoted value"))?;
        let (value, end) = fleet_schemas::series::read_quoted(
            s,
            name,
            fleet_schemas::series::Escapes::Exposition,
        )?;
        labels.push(Label {
            name: name.to_owned(),
            value,
        });
        s = s[end..].trim_start_matches(ws);
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("label {name}: expected , or }}"));
        }
    }
}

/// A sample value: a float, `NaN`, `+Inf`, `-Inf` (Prometheus' spellings; Rust's parser
/// also takes `inf` and `infinity` in any case, which are refused here).
fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && !matches!(b, b'e' | b'E')) =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

/// The custom metrics of the agent: the textfile directory (read by [`Self::collect`]),
/// the scripts' last good outputs (set by [`script_loop`]) and the bound per report.
#[derive(Debug)]
pub struct CustomMetrics {
    /// Changed live by the remote configuration ([`Self::set_textfile_directory`]).
    textfile_directory: Mutex<Option<PathBuf>>,
    max_series: usize,
    stats: Arc<Stats>,
    /// Script name → its last good run's series.
    scripts: Mutex<BTreeMap<String, Vec<(String, f64)>>>,
    /// Textfile → the modification time of the version last warned about, so a broken
    /// file warns once per change, not at every collection.
    warned: Mutex<HashMap<PathBuf, Option<SystemTime>>>,
    /// Series dropped past `custom-max-series` at the last collection.
    last_over: AtomicUsize,
}

impl CustomMetrics {
    /// Custom metrics from `textfile_directory` (if set) and the scripts that report here.
    pub fn new(textfile_directory: Option<PathBuf>, max_series: usize, stats: Arc<Stats>) -> Self {
        Self {
            textfile_directory: Mutex::new(textfile_directory),
            max_series,
            stats,
            scripts: Mutex::new(BTreeMap::new()),
            warned: Mutex::new(HashMap::new()),
            last_over: AtomicUsize::new(0),
        }
    }

    /// The `custom` map of a report: the textfiles read now, then the scripts' last
    /// values, at most `custom-max-series` series (blocking: reads files).
    pub fn collect(&self) -> BTreeMap<String, f64> {
        let dir = lock(&self.textfile_directory).clone();
        let mut sources = match dir {
            Some(dir) => self.read_textfiles(&dir),
            None => Vec::new(),
        };
        sources.extend(
            lock(&self.scripts)
                .iter()
                .map(|(name, series)| (format!("script {name}"), series.clone())),
        );
        let mut out = BTreeMap::new();
        let mut over = 0usize;
        for (source, series) in sources {
            for (key, value) in series {
                if out.contains_key(&key) {
                    add(&self.stats.custom_series_skipped, 1);
                    debug!(%source, %key, "Custom metric already given by an earlier source; skipped.");
                } else if out.len() >= self.max_series {
                    over = over.saturating_add(1);
                } else {
                    out.insert(key, value);
                }
            }
        }
        if over > 0 {
            add(&self.stats.custom_series_skipped, over);
        }
        // Logged when the number dropped changes, not at every collection.
        if self.last_over.swap(over, Ordering::Relaxed) != over && over > 0 {
            warn!(
                dropped = over,
                max = self.max_series,
                "More custom metrics than custom-max-series; the rest were dropped."
            );
        }
        out
    }

    /// Reads textfiles from `dir` from the next collection on (`None`: none).
    pub fn set_textfile_directory(&self, dir: Option<PathBuf>) {
        let mut current = lock(&self.textfile_directory);
        if *current != dir {
            info!(textfile_directory = ?dir, "Textfile directory changed.");
            *current = dir;
        }
    }

    /// Reads and parses the `*.prom` files of `dir`: (source name, series) per file.
    fn read_textfiles(&self, dir: &Path) -> Vec<(String, Vec<(String, f64)>)> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) => {
                inc(&self.stats.custom_series_skipped);
                self.warn_once(dir, None, || {
                    warn!(dir = %dir.display(), error = %e, "Textfile directory cannot be read.");
                });
                return Vec::new();
            }
        };
        lock(&self.warned).remove(dir);
        let mut files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "prom"))
            .collect();
        files.sort();
        if files.len() > MAX_FILES {
            add(&self.stats.custom_series_skipped, files.len() - MAX_FILES);
            warn!(dir = %dir.display(), files = files.len(), max = MAX_FILES, "Too many textfiles; those past the bound (in name order) were skipped.");
            files.truncate(MAX_FILES);
        }
        let mut budget = MAX_TOTAL_BYTES;
        let mut out = Vec::with_capacity(files.len());
        for path in files {
            let meta = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => m,
                _ => continue,
            };
            let mtime = meta.modified().ok();
            let problem = if meta.len() > MAX_FILE_BYTES {
                Some(format!("larger than {MAX_FILE_BYTES} bytes"))
            } else if meta.len() > budget {
                Some(format!(
                    "the textfiles read this collection passed {MAX_TOTAL_BYTES} bytes"
                ))
            } else {
                None
            };
            let text = match problem {
                Some(p) => Err(p),
                None => read_bounded(&path, MAX_FILE_BYTES),
            };
            let text = match text {
                Ok(t) => t,
                Err(why) => {
                    inc(&self.stats.custom_series_skipped);
                    self.warn_once(&path, mtime, || {
                        warn!(file = %path.display(), %why, "Textfile skipped.");
                    });
                    continue;
                }
            };
            budget = budget.saturating_sub(u64::try_from(text.len()).unwrap_or(u64::MAX));
            let parsed = parse(&text);
            if parsed.skipped > 0 {
                add(&self.stats.custom_series_skipped, parsed.skipped);
                if let Some((line, why)) = &parsed.first_problem {
                    self.warn_once(&path, mtime, || {
                        warn!(file = %path.display(), skipped = parsed.skipped, line, %why, "Textfile lines skipped.");
                    });
                }
            } else {
                lock(&self.warned).remove(&path);
            }
            out.push((path.display().to_string(), parsed.series));
        }
        out
    }

    /// Runs `log` unless `path` was already warned about at this modification time.
    fn warn_once(&self, path: &Path, mtime: Option<SystemTime>, log: impl FnOnce()) {
        let mut warned = lock(&self.warned);
        if warned.len() > MAX_FILES.saturating_mul(2) {
            warned.clear();
        }
        if warned.get(path) != Some(&mtime) {
            warned.insert(path.to_owned(), mtime);
            log();
        }
    }

    fn set_script(&self, name: &str, series: Option<Vec<(String, f64)>>) {
        let mut scripts = lock(&self.scripts);
        match series {
            Some(s) => {
                scripts.insert(name.to_owned(), s);
            }
            None => {
                scripts.remove(name);
            }
        }
    }
}

/// The whole file as UTF-8, refused past `max` bytes.
fn read_bounded(path: &Path, max: u64) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > max {
        return Err(format!("larger than {max} bytes"));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())
}

/// Runs `script` now and every `interval` until cancelled (a run in progress is killed
/// then), keeping its last good output in `metrics` ([module docs](self)).
pub async fn script_loop(
    metrics: Arc<CustomMetrics>,
    script: CustomScript,
    cancel: CancellationToken,
) {
    let span = info_span!("custom_script", script = %script.name);
    async move {
        let script = Arc::new(script);
        let mut ticker = tokio::time::interval(script.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let job_script = Arc::clone(&script);
            let job_cancel = cancel.clone();
            let job = tokio::task::spawn_blocking(move || run_script(&job_script, &job_cancel));
            let result = tokio::select! {
                () = cancel.cancelled() => return,
                r = job => r.map_err(|e| e.to_string()).and_then(|r| r),
            };
            match result {
                Ok(parsed) => {
                    if parsed.skipped > 0 {
                        add(&metrics.stats.custom_series_skipped, parsed.skipped);
                        if let Some((line, why)) = &parsed.first_problem {
                            warn!(skipped = parsed.skipped, line, %why, "Custom script output lines skipped.");
                        }
                    }
                    debug!(series = parsed.series.len(), "Custom script ran.");
                    metrics.set_script(&script.name, Some(parsed.series));
                }
                Err(why) => {
                    inc(&metrics.stats.custom_script_failures);
                    warn!(%why, "Custom script failed; its metrics are dropped until it succeeds.");
                    metrics.set_script(&script.name, None);
                }
            }
        }
    }
    .instrument(span)
    .await;
}

/// One run of a script (blocking): its parsed output, or why it gave none.
fn run_script(script: &CustomScript, cancel: &CancellationToken) -> Result<Parsed, String> {
    let program = script
        .command
        .to_str()
        .ok_or("the command path is not UTF-8")?;
    let args: Vec<&str> = script.args.iter().map(String::as_str).collect();
    let limits = process::Limits {
        timeout: script.timeout,
        max_output: script.max_output_bytes,
    };
    let out = process::run(program, &args, limits, cancel).map_err(|e| e.to_string())?;
    if out.code != Some(0) {
        let stderr: String = out.stderr.trim().chars().take(200).collect();
        return Err(format!("exited with {:?}: {stderr}", out.code));
    }
    if out.stdout_truncated {
        return Err(format!(
            "printed more than max-output-bytes ({}); output refused",
            script.max_output_bytes
        ));
    }
    Ok(parse(&out.stdout))
}

/// Logs the custom-metric sources at start.
pub fn log_sources(dir: Option<&Path>, scripts: &[CustomScript]) {
    if dir.is_some() || !scripts.is_empty() {
        info!(
            textfile_directory = ?dir,
            scripts = scripts.len(),
            "Custom metrics configured."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys(p: &Parsed) -> Vec<(&str, f64)> {
        p.series.iter().map(|(k, v)| (k.as_str(), *v)).collect()
    }

    #[test]
    fn good_input_with_help_type_labels_and_timestamps() {
        let text = "# HELP backup_age_seconds Age of the last backup.\n\
                    # TYPE backup_age_seconds gauge\n\
                    backup_age_seconds 3600\n\
                    \n\
                    queue_depth{region=\"eu\",queue=\"high\"} 7 1700000000000\n\
                    queue_depth{ queue = \"low\" , } -2.5e1\n\
                    odd{path=\"C:\\\\tmp\",msg=\"say \\\"hi\\\"\\nbye\",empty=\"\"} 1\n\
                    # TYPE lat histogram\n\
                    lat_bucket{le=\"0.5\"} 3\n\
                    lat_bucket{le=\"+Inf\"} 4\n\
                    lat_sum 1.5\n\
                    lat_count 4\n";
        let p = parse(text);
        assert_eq!(p.skipped, 0, "{:?}", p.first_problem);
        assert_eq!(
            keys(&p),
            vec![
                ("backup_age_seconds", 3600.0),
                (r#"queue_depth{queue="high",region="eu"}"#, 7.0),
                (r#"queue_depth{queue="low"}"#, -25.0),
                (r#"odd{msg="say \"hi\"\nbye",path="C:\\tmp"}"#, 1.0),
                (r#"lat_bucket{le="0.5"}"#, 3.0),
                (r#"lat_bucket{le="+Inf"}"#, 4.0),
                ("lat_sum", 1.5),
                ("lat_count", 4.0),
            ]
        );
    }

    #[test]
    fn bad_lines_are_skipped_and_the_rest_kept() {
        let text = "ok 1\n\
                    9starts_with_digit 1\n\
                    no_value\n\
                    word_value abc\n\
                    inf_word inf\n\
                    bad_escape{a=\"\\t\"} 1\n\
                    unterminated{a=\"x} 1\n\
                    no_quotes{a=x} 1\n\
                    twice{a=\"1\",a=\"2\"} 1\n\
                    reserved{__name__=\"x\"} 1\n\
                    rule:recorded 1\n\
                    trailing 1 2 3\n\
                    bad_ts 1 soon\n\
                    ok 2\n\
                    also_ok 3\n";
        let p = parse(text);
        assert_eq!(keys(&p), vec![("ok", 1.0), ("also_ok", 3.0)]);
        assert_eq!(p.skipped, 13);
        assert_eq!(p.first_problem.as_ref().map(|(l, _)| *l), Some(2));
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let p = parse("a NaN\nb +Inf\nc -Inf\nd 1e400\ne 0\n");
        assert_eq!(keys(&p), vec![("e", 0.0)]);
        assert_eq!(p.skipped, 4);
        assert_eq!(p.first_problem, None, "not finite is not a bad line");
    }

    #[test]
    fn duplicate_series_keep_the_first() {
        let p = parse("a{x=\"1\"} 1\na{x=\"1\"} 2\na{x=\"2\"} 3\n");
        assert_eq!(keys(&p), vec![(r#"a{x="1"}"#, 1.0), (r#"a{x="2"}"#, 3.0)]);
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn hostile_input_is_bounded() {
        let huge = format!("big{{a=\"{}\"}} 1\nsmall 1\n", "x".repeat(MAX_LINE_BYTES));
        let p = parse(&huge);
        assert_eq!(keys(&p), vec![("small", 1.0)]);
        let long_value = format!("m{{a=\"{}\"}} 1\n", "x".repeat(600));
        assert_eq!(parse(&long_value).skipped, 1, "subject past its bound");
        let many_labels: String = (0..=MAX_CUSTOM_LABELS)
            .map(|i| format!("l{i}=\"v\","))
            .collect();
        assert_eq!(parse(&format!("m{{{many_labels}}} 1\n")).skipped, 1);
        let lines: String = (0..MAX_LINES + 5).map(|i| format!("m{i} 1\n")).collect();
        let p = parse(&lines);
        assert_eq!(p.series.len(), MAX_LINES);
        assert_eq!(p.skipped, 1);
        let long_name = format!("{} 1\n", "n".repeat(200));
        assert_eq!(parse(&long_name).skipped, 1);
        // Not UTF-8-safe slicing anywhere: multi-byte label values and names nearby.
        let p = parse("m{a=\"é€😀\"} 1\nné 1\n");
        assert_eq!(keys(&p), vec![(r#"m{a="é€😀"}"#, 1.0)]);
        assert_eq!(p.skipped, 1);
    }

    #[test]
    fn random_input_never_panics_and_gives_only_keys_the_gateway_takes() {
        use rand::{Rng as _, SeedableRng as _};
        const ALPHABET: &[&str] = &[
            "a", "Z", "_", ":", "{", "}", "=", "\"", "\\", ",", " ", "\t", "\n", "#", "+", "-",
            ".", "e", "1", "0", "9", "NaN", "Inf", "é", "😀", "\u{0}", "\r", "__", "le",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(15);
        for _ in 0..3000 {
            let len = rng.random_range(0..80);
            let text: String = (0..len)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
                .collect();
            for candidate in [
                text.clone(),
                format!("m{{{text}}} 1\n"),
                format!("m {text}\n"),
            ] {
                let p = parse(&candidate);
                for (key, value) in &p.series {
                    assert!(value.is_finite(), "{candidate:?}");
                    assert_eq!(check_custom_key(key), Ok(()), "{candidate:?} gave {key:?}");
                }
            }
        }
    }

    #[test]
    fn textfiles_are_read_bounded_and_merged_with_scripts() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.prom"), "m 1\ndup 1\nbroken{\n").expect("write");
        std::fs::write(dir.path().join("b.prom"), "dup 2\nn{x=\"y\"} 2\n").expect("write");
        std::fs::write(dir.path().join("c.prom.123"), "ignored 1\n").expect("write");
        std::fs::write(dir.path().join("d.prom"), [0xff, 0xfe, b'\n']).expect("write");
        let big = vec![b'#'; usize::try_from(MAX_FILE_BYTES).expect("fits") + 1];
        std::fs::write(dir.path().join("e.prom"), big).expect("write");
        let stats = Arc::new(Stats::default());
        let m = CustomMetrics::new(Some(dir.path().to_owned()), 3, Arc::clone(&stats));
        m.set_script(
            "s",
            Some(vec![("from_script".into(), 5.0), ("m".into(), 9.0)]),
        );
        let got = m.collect();
        // a.prom: m, dup; b.prom: dup (skipped, seen), n{x="y"}; the script's m is a
        // duplicate, from_script is past the bound of 3.
        assert_eq!(
            got,
            BTreeMap::from([
                ("m".to_owned(), 1.0),
                ("dup".to_owned(), 1.0),
                (r#"n{x="y"}"#.to_owned(), 2.0),
            ])
        );
        let s = stats.snapshot();
        // broken line, dup, d.prom (not UTF-8), e.prom (too big), script's m, from_script.
        assert_eq!(s.custom_series_skipped, 6);
        m.set_script("s", None);
        let missing = CustomMetrics::new(Some(dir.path().join("nope")), 10, stats);
        assert!(missing.collect().is_empty());
    }

    #[test]
    fn scripts_fail_on_exit_code_timeout_and_oversized_output() {
        let never = CancellationToken::new();
        let ok = CustomScript::new("ok", "/bin/sh", &["-c", "echo 'm{a=\"b\"} 1'"]);
        let p = run_script(&ok, &never).expect("runs");
        assert_eq!(keys(&p), vec![(r#"m{a="b"}"#, 1.0)]);
        let failing = CustomScript::new("f", "/bin/sh", &["-c", "echo m 1; echo oops >&2; exit 2"]);
        let err = run_script(&failing, &never).unwrap_err();
        assert!(err.contains("Some(2)") && err.contains("oops"), "{err}");
        let chatty = CustomScript {
            max_output_bytes: 10,
            ..CustomScript::new("c", "/bin/sh", &["-c", "echo m 1; echo n 2; echo o 3"])
        };
        assert!(run_script(&chatty, &never)
            .unwrap_err()
            .contains("max-output-bytes"));
        let hanging = CustomScript {
            timeout: Duration::from_millis(200),
            ..CustomScript::new("h", "/bin/sh", &["-c", "echo m 1; sleep 30"])
        };
        assert!(run_script(&hanging, &never)
            .unwrap_err()
            .contains("timed out"));
        let absent = CustomScript::new("a", "/no/such/script", &[]);
        assert!(run_script(&absent, &never)
            .unwrap_err()
            .contains("cannot start"));
    }
}
