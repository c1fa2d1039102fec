//! Series of the standard write protocols (`fleet.samples.v1`): a series' canonical text,
//! and its *source*, the unit the gateway shards by and the time-series engine stores
//! together.
//!
//! * **Series text** ([`series_text`]): `metric{a="x",b="y"}`, labels sorted by name (as
//!   [`LabeledSample::labels`] are), no spaces, values quoted as Prometheus prints them
//!   (`\\`, `\"`, `\n`, `\t`, `\r`, other control characters as `\xNN`); a series without
//!   labels is its metric name alone. One series has one text and two series never share
//!   one (quotes and backslashes in values are escaped), so the text is the series' name
//!   in the time-series engine and its key in the read model's series index.
//! * **Source** ([`Source::of`]): the labels `instance` and `job` (those present) when
//!   either is there (a Prometheus scrape target, an OpenTelemetry service instance), else
//!   `host` (Telegraf's default tag), else the series itself. One target's or one host's
//!   series share a source: the gateway puts them in one shard (so one partition), and the
//!   engine stores them as one unit whose samples share scrape timestamps.
//! * **Unit id** ([`unit_id`]): the source as the engine's agent id: `~` then the source
//!   labels in series-text form with an empty metric name (`~{instance="a:9100",job="node"}`,
//!   `~{host="web-1"}`), or `~` then the series text for a series that is its own source
//!   (`~up{zone="a"}`). Agent ids are letters, digits, `.`, `_` and `-`, so a unit id
//!   never names an agent, and the quoting makes it unambiguous (`/` in a job name cannot
//!   shift the split between job and instance).

use std::fmt::Write as _;

use crate::{Label, LabeledSample};

/// The prefix of every unit id ([`unit_id`]): a character no agent id contains.
pub const UNIT_PREFIX: char = '~';

/// The source of a series ([module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A scrape target or service instance: its `instance` and `job` labels, at least one
    /// present.
    Target {
        /// The `instance` label.
        instance: Option<&'a Label>,
        /// The `job` label.
        job: Option<&'a Label>,
    },
    /// A host: its `host` label (neither `instance` nor `job` present).
    Host(&'a Label),
    /// None of those labels: the series is its own source.
    Series,
}

impl<'a> Source<'a> {
    /// The source of a series with these labels (sorted by name, as in a sample).
    pub fn of(labels: &'a [Label]) -> Source<'a> {
        let find = |name: &str| {
            labels
                .binary_search_by(|l| l.name.as_str().cmp(name))
                .ok()
                .map(|i| &labels[i])
        };
        let (instance, job) = (find("instance"), find("job"));
        if instance.is_some() || job.is_some() {
            return Source::Target { instance, job };
        }
        match find("host") {
            Some(host) => Source::Host(host),
            None => Source::Series,
        }
    }

    /// The labels naming the source, sorted by name (none for [`Source::Series`]).
    pub fn labels(&self) -> impl Iterator<Item = &'a Label> {
        let pair = match *self {
            Source::Target { instance, job } => [instance, job],
            Source::Host(host) => [Some(host), None],
            Source::Series => [None, None],
        };
        pair.into_iter().flatten()
    }
}

/// Appends a label value quoted as Prometheus prints it.
fn push_quoted(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Appends `metric{a="x",...}` (`metric` alone without labels) to `out`.
fn push_series<'l>(out: &mut String, metric: &str, labels: impl IntoIterator<Item = &'l Label>) {
    out.push_str(metric);
    let mut labels = labels.into_iter().peekable();
    if labels.peek().is_none() {
        return;
    }
    out.push('{');
    for (i, l) in labels.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&l.name);
        out.push('=');
        push_quoted(out, &l.value);
    }
    out.push('}');
}

/// The canonical text of a series: `metric{a="x",b="y"}` ([module docs](self)).
pub fn series_text(metric: &str, labels: &[Label]) -> String {
    let mut out = String::with_capacity(metric.len() + labels.len() * 24);
    push_series(&mut out, metric, labels);
    out
}

/// The engine's unit (agent id) of a series: `~` and its source ([module docs](self)).
pub fn unit_id(metric: &str, labels: &[Label]) -> String {
    let mut out = String::with_capacity(48);
    out.push(UNIT_PREFIX);
    match Source::of(labels) {
        Source::Series => push_series(&mut out, metric, labels),
        source => push_series(&mut out, "", source.labels()),
    }
    out
}

impl LabeledSample {
    /// [`series_text`] of this sample's series.
    pub fn series_text(&self) -> String {
        series_text(&self.metric, &self.labels)
    }

    /// [`unit_id`] of this sample's series.
    pub fn unit_id(&self) -> String {
        unit_id(&self.metric, &self.labels)
    }
}

/// Whether `s` is a valid label name (`[a-zA-Z_][a-zA-Z0-9_]*`, Prometheus' charset).
pub fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Whether `s` is a valid metric name (`[a-zA-Z_:][a-zA-Z0-9_:]*`).
pub fn is_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// Most matchers one rule may have.
pub const MAX_MATCHERS: usize = 20;
/// Longest matcher value or regular expression, characters.
pub const MAX_MATCHER_VALUE_CHARS: usize = 1024;
/// Largest compiled regular expression (the `regex` crate's size limit), bytes.
const MAX_REGEX_BYTES: usize = 1 << 20;

/// Checks the form of each matcher alone (what a schema can say): at most
/// [`MAX_MATCHERS`], a label name, one of `=`, `!=`, `=~`, `!~`, a value of at most
/// [`MAX_MATCHER_VALUE_CHARS`] characters. [`Matchers::compile`] checks the rest.
pub fn check_matcher_forms(matchers: &[crate::LabelMatcher]) -> Result<(), (usize, String)> {
    if matchers.len() > MAX_MATCHERS {
        return Err((MAX_MATCHERS, format!("at most {MAX_MATCHERS} matchers")));
    }
    for (i, m) in matchers.iter().enumerate() {
        if !is_label_name(&m.name) || m.name.len() > 256 {
            return Err((
                i,
                format!(
                    "name {:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*, at most 256 bytes)",
                    m.name
                ),
            ));
        }
        if !matches!(m.op.as_str(), "=" | "!=" | "=~" | "!~") {
            return Err((i, format!("op {:?}: must be one of = != =~ !~", m.op)));
        }
        if m.value.chars().count() > MAX_MATCHER_VALUE_CHARS {
            return Err((
                i,
                format!("value longer than {MAX_MATCHER_VALUE_CHARS} characters"),
            ));
        }
    }
    Ok(())
}

/// How one matcher compares.
#[derive(Debug, Clone)]
enum Test {
    Equal(String),
    NotEqual(String),
    Regex(regex::Regex),
    NotRegex(regex::Regex),
}

/// Label matchers compiled for matching (rules on the standard protocols' series): every
/// one must hold; a missing label has the value `""`, as in PromQL.
#[derive(Debug, Clone, Default)]
pub struct Matchers {
    source: Vec<crate::LabelMatcher>,
    tests: Vec<(String, Test)>,
}

/// Matchers compiled from the same list are equal.
impl PartialEq for Matchers {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Matchers {
    /// Compiles `matchers` (a [`crate::LabelMatcher`] list), or says which one is wrong:
    /// (index, message). First each matcher's form ([`check_matcher_forms`]), then what
    /// only the whole can say: `__name__` (the rule's metric names it) and whether a
    /// regular expression compiles.
    pub fn compile(matchers: &[crate::LabelMatcher]) -> Result<Matchers, (usize, String)> {
        check_matcher_forms(matchers)?;
        let mut out = Vec::with_capacity(matchers.len());
        for (i, m) in matchers.iter().enumerate() {
            if m.name == "__name__" {
                return Err((i, "the metric name is the rule's `metric`".into()));
            }
            let regex = || {
                regex::RegexBuilder::new(&format!("^(?s:{})$", m.value))
                    .size_limit(MAX_REGEX_BYTES)
                    .build()
                    .map_err(|e| (i, format!("not a regular expression: {e}")))
            };
            let test = match m.op.as_str() {
                "=" => Test::Equal(m.value.clone()),
                "!=" => Test::NotEqual(m.value.clone()),
                "=~" => Test::Regex(regex()?),
                _ => Test::NotRegex(regex()?),
            };
            out.push((m.name.clone(), test));
        }
        Ok(Matchers {
            source: matchers.to_vec(),
            tests: out,
        })
    }

    /// Whether a series with these labels (sorted by name) matches every matcher.
    pub fn matches(&self, labels: &[Label]) -> bool {
        self.tests.iter().all(|(name, test)| {
            let value = labels
                .binary_search_by(|l| l.name.as_str().cmp(name))
                .map_or("", |i| labels[i].value.as_str());
            match test {
                Test::Equal(v) => value == v,
                Test::NotEqual(v) => value != v,
                Test::Regex(r) => r.is_match(value),
                Test::NotRegex(r) => !r.is_match(value),
            }
        })
    }
}

/// Appends the labels of a series in series-text form (`{a="x",b="y"}`, empty without
/// labels): the subject of an alert on a standard protocols' series.
pub fn labels_text(labels: &[Label]) -> String {
    let mut out = String::new();
    push_series(&mut out, "", labels);
    out
}

/// Parses labels in series-text form (`{a="x",b="y"}`, what [`labels_text`] writes for at
/// least one label) back into labels, in the order written. Strict: only the escapes
/// [`labels_text`] writes (`\\`, `\"`, `\n`, `\t`, `\r`, `\xNN`); whether the text is
/// canonical (sorted, unique names, minimal escapes) is for the caller to check by
/// comparing [`labels_text`] of the result with the input.
pub fn parse_labels_text(text: &str) -> Result<Vec<Label>, String> {
    const FORM: &str = r#"labels are written {name="value",...}"#;
    let body = text
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or(FORM)?;
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let (name, after) = rest.split_once("=\"").ok_or(FORM)?;
        if !is_label_name(name) {
            return Err(format!("label name {name:?} is not [a-zA-Z_][a-zA-Z0-9_]*"));
        }
        let (value, end) = read_quoted(after, name, Escapes::SeriesText)?;
        out.push(Label {
            name: name.to_owned(),
            value,
        });
        rest = &after[end..];
        if rest.is_empty() {
            return Ok(out);
        }
        rest = rest.strip_prefix(',').ok_or(FORM)?;
    }
}

/// Which escapes a quoted label value may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// Prometheus' text exposition format: `\\`, `\"` and `\n`.
    Exposition,
    /// What [`labels_text`] writes: also `\t`, `\r` and `\xNN` (ASCII).
    SeriesText,
}

/// Reads a label value whose opening quote is already consumed: `s` starts with the
/// value's first character. Returns the unescaped value and the length of `s` up to and
/// including the closing quote. `name` names the label in errors.
pub fn read_quoted(s: &str, name: &str, escapes: Escapes) -> Result<(String, usize), String> {
    let mut value = String::new();
    let mut chars = s.char_indices();
    loop {
        match chars.next() {
            None => return Err(format!("label {name}: unterminated value")),
            Some((i, '"')) => return Ok((value, i + 1)),
            Some((_, '\\')) => match (chars.next().map(|(_, c)| c), escapes) {
                (Some('\\'), _) => value.push('\\'),
                (Some('"'), _) => value.push('"'),
                (Some('n'), _) => value.push('\n'),
                (Some('t'), Escapes::SeriesText) => value.push('\t'),
                (Some('r'), Escapes::SeriesText) => value.push('\r'),
                (Some('x'), Escapes::SeriesText) => {
                    let hex: String = chars.by_ref().take(2).map(|(_, c)| c).collect();
                    let byte = (hex.len() == 2 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                        .then(|| u8::from_str_radix(&hex, 16).ok())
                        .flatten()
                        .filter(u8::is_ascii)
                        .ok_or_else(|| format!("label {name}: bad \\x escape"))?;
                    value.push(char::from(byte));
                }
                (_, Escapes::Exposition) => {
                    return Err(format!(
                        "label {name}: bad escape (only \\\\, \\\" and \\n)"
                    ))
                }
                (_, Escapes::SeriesText) => return Err(format!("label {name}: unknown escape")),
            },
            Some((_, c)) => value.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
        pairs
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect()
    }

    #[test]
    fn series_text_is_prometheus_form_with_quoted_values() {
        assert_eq!(series_text("up", &[]), "up");
        assert_eq!(
            series_text("up", &labels(&[("a", "x"), ("b", "y")])),
            r#"up{a="x",b="y"}"#
        );
        assert_eq!(
            series_text("m", &labels(&[("a", "q\"b\\n\nt\t\u{1}é")])),
            r#"m{a="q\"b\\n\nt\t\x01é"}"#
        );
        // Quoting keeps distinct series distinct.
        assert_ne!(
            series_text("m", &labels(&[("a", "1\",b=\"2")])),
            series_text("m", &labels(&[("a", "1"), ("b", "2")]))
        );
    }

    #[test]
    fn the_source_is_the_target_else_the_host_else_the_series() {
        let target = labels(&[("cpu", "0"), ("instance", "a:9100"), ("job", "node")]);
        assert_eq!(
            unit_id("node_cpu", &target),
            r#"~{instance="a:9100",job="node"}"#
        );
        assert_eq!(
            unit_id("other", &labels(&[("instance", "a:9100"), ("job", "node")])),
            unit_id("node_cpu", &target),
            "one target, one unit"
        );
        assert_eq!(
            unit_id("m", &labels(&[("host", "h"), ("job", "j")])),
            r#"~{job="j"}"#,
            "job wins over host"
        );
        assert_eq!(
            unit_id("m", &labels(&[("host", "web-1"), ("path", "/")])),
            r#"~{host="web-1"}"#
        );
        assert_eq!(unit_id("up", &labels(&[("zone", "a")])), r#"~up{zone="a"}"#);
        assert_eq!(unit_id("up", &[]), "~up");
        // A '/' in a job cannot be mistaken for the split between job and instance.
        assert_ne!(
            unit_id("m", &labels(&[("instance", "c"), ("job", "a/b")])),
            unit_id("m", &labels(&[("instance", "b/c"), ("job", "a")]))
        );
        assert_eq!(Source::of(&target).labels().count(), 2);
        assert_eq!(Source::of(&labels(&[("zone", "a")])), Source::Series);
    }

    fn matcher(name: &str, op: &str, value: &str) -> crate::LabelMatcher {
        crate::LabelMatcher {
            name: name.into(),
            op: op.into(),
            value: value.into(),
        }
    }

    #[test]
    fn matchers_follow_promql() {
        let labels = labels(&[("instance", "web-1:9100"), ("job", "node")]);
        let m = |list: &[crate::LabelMatcher]| Matchers::compile(list).expect("valid");
        assert!(m(&[]).matches(&labels));
        assert!(m(&[matcher("job", "=", "node")]).matches(&labels));
        assert!(!m(&[matcher("job", "!=", "node")]).matches(&labels));
        // Anchored at both ends.
        assert!(m(&[matcher("instance", "=~", "web-.*")]).matches(&labels));
        assert!(!m(&[matcher("instance", "=~", "web")]).matches(&labels));
        assert!(m(&[matcher("instance", "!~", "db-.*")]).matches(&labels));
        // A missing label is "".
        assert!(m(&[matcher("zone", "=", "")]).matches(&labels));
        assert!(!m(&[matcher("zone", "=~", ".+")]).matches(&labels));
        for (bad, at) in [
            (vec![matcher("job", "==", "x")], 0),
            (vec![matcher("job", "=", "x"), matcher("1x", "=", "")], 1),
            (vec![matcher("job", "=~", "(")], 0),
            (vec![matcher("__name__", "=", "up")], 0),
        ] {
            assert_eq!(
                Matchers::compile(&bad).map(|_| ()).map_err(|e| e.0),
                Err(at)
            );
        }
        assert_eq!(
            labels_text(&labels),
            r#"{instance="web-1:9100",job="node"}"#
        );
        assert_eq!(labels_text(&[]), "");
    }

    #[test]
    fn labels_text_parses_back_strictly() {
        for pairs in [
            vec![("a", "x")],
            vec![("a", "x"), ("b", "")],
            vec![("a", "q\"b\\n\nt\t\u{1}é,}=")],
        ] {
            let ls = labels(&pairs);
            let text = labels_text(&ls);
            assert_eq!(parse_labels_text(&text).unwrap(), ls, "{text}");
        }
        for bad in [
            "",
            "{}",
            "a=\"x\"",
            "{a=\"x\"",
            "{a=x}",
            "{1a=\"x\"}",
            "{a=\"x\",}",
            "{a=\"x\"b=\"y\"}",
            "{a=\"x\\q\"}",
            "{a=\"x\\x9\"}",
            "{a=\"x\\x+f\"}",
            "{a=\"x\\xff\"}",
            "{a=\"x}",
        ] {
            assert!(parse_labels_text(bad).is_err(), "{bad:?} parsed");
        }
    }
}
