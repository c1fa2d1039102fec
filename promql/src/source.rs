//! The storage seam of PromQL evaluation.

use std::fmt::Debug;

use async_trait::async_trait;

/// A series' labels, sorted by name, unique names, the metric name as `__name__`.
pub type Labels = Vec<(String, String)>;

/// How a [`Matcher`] compares a label's value (a missing label has the value `""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`: the whole value matches the regular expression (anchored at both ends).
    Regex,
    /// `!~`: the whole value does not match.
    NotRegex,
}

/// One label matcher of a selector (`job="api"`, `__name__=~"http_.*"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matcher {
    /// Label name (`__name__` for the metric name).
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
    /// Value or regular expression (Rust `regex` syntax, which accepts what Prometheus'
    /// RE2 accepts).
    pub value: String,
}

/// Bounds on one [`SeriesSource::select`] call, so one query cannot exhaust the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectLimits {
    /// Most series one selector may match ([`SourceError::TooMany`] beyond).
    pub max_series: usize,
    /// Most samples one selector may load over all its series ([`SourceError::TooMany`]
    /// beyond).
    pub max_samples: usize,
}

impl Default for SelectLimits {
    fn default() -> Self {
        SelectLimits {
            max_series: 10_000,
            max_samples: 50_000_000,
        }
    }
}

/// One series with its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    /// Labels, `__name__` included.
    pub labels: Labels,
    /// `(timestamp ms, value)`, oldest first, one per timestamp.
    pub samples: Vec<(i64, f64)>,
}

/// Why a source could not answer.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The query is not acceptable (a bad regular expression, no matcher that selects
    /// anything): the client's fault, HTTP 400 `bad_data`.
    #[error("{0}")]
    BadQuery(String),
    /// The selector matches more series or samples than the limits allow: HTTP 422
    /// `execution`, naming the limit.
    #[error("{0}")]
    TooMany(String),
    /// The store failed: HTTP 503 `unavailable`.
    #[error("{0}")]
    Unavailable(String),
}

/// What PromQL evaluation reads from storage, one tenant at a time.
#[async_trait]
pub trait SeriesSource: Send + Sync + Debug {
    /// The series of `tenant` matching every matcher (at least one matcher must select a
    /// non-empty value, as in Prometheus) that have samples in `[start_ms, end_ms]`, each
    /// with its samples in that range, oldest first. Ordered by labels.
    async fn select(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: &SelectLimits,
    ) -> Result<Vec<SeriesData>, SourceError>;

    /// The labels of the series of `tenant` matching every matcher that may have samples
    /// in `[start_ms, end_ms]` (a source may answer from an index of when each series was
    /// seen first and last), at most `limit`, ordered by labels. Serves `/api/v1/series`,
    /// `/api/v1/labels` and `/api/v1/label/{name}/values`.
    async fn series(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<Labels>, SourceError>;
}

/// Largest compiled regular expression of a matcher, bytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A matcher ready to test values.
#[derive(Debug, Clone)]
enum Test {
    Equal(String),
    NotEqual(String),
    Regex(regex::Regex),
    NotRegex(regex::Regex),
}

impl Test {
    fn matches(&self, value: &str) -> bool {
        match self {
            Test::Equal(v) => value == v,
            Test::NotEqual(v) => value != v,
            Test::Regex(r) => r.is_match(value),
            Test::NotRegex(r) => !r.is_match(value),
        }
    }
}

/// A selector's matchers, compiled: how every source (and the in-memory one of the tests)
/// tests labels against them, with Prometheus' rules (a regular expression matches the
/// whole value, `.` matches a newline too; a missing label has the value `""`).
#[derive(Debug, Clone)]
pub struct Selector {
    tests: Vec<(String, Test)>,
}

impl Selector {
    /// Compiles `matchers`: a bad or oversized regular expression, or no matcher that
    /// needs a non-empty value (a selector that would match every series), is a
    /// [`SourceError::BadQuery`].
    pub fn compile(matchers: &[Matcher]) -> Result<Selector, SourceError> {
        let mut tests = Vec::with_capacity(matchers.len());
        for m in matchers {
            let regex = |v: &str| {
                regex::RegexBuilder::new(&format!("^(?s:{v})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| {
                        SourceError::BadQuery(format!(
                            "invalid regular expression for label {}: {e}",
                            m.name
                        ))
                    })
            };
            let test = match m.op {
                MatchOp::Equal => Test::Equal(m.value.clone()),
                MatchOp::NotEqual => Test::NotEqual(m.value.clone()),
                MatchOp::Regex => Test::Regex(regex(&m.value)?),
                MatchOp::NotRegex => Test::NotRegex(regex(&m.value)?),
            };
            tests.push((m.name.clone(), test));
        }
        if !tests.iter().any(|(_, t)| !t.matches("")) {
            return Err(SourceError::BadQuery(
                "vector selector must contain at least one non-empty matcher".into(),
            ));
        }
        Ok(Selector { tests })
    }

    /// The value an equality matcher on `name` requires, if any.
    pub fn equal(&self, name: &str) -> Option<&str> {
        self.tests.iter().find_map(|(n, t)| match t {
            Test::Equal(v) if n == name => Some(v.as_str()),
            _ => None,
        })
    }

    /// Whether a series with these labels (sorted; a missing label is `""`) is selected.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.tests.iter().all(|(name, test)| {
            let value = labels
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, v)| v.as_str());
            test.matches(value)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{labels, matcher as m};

    #[test]
    fn matchers_follow_prometheus() {
        let l = labels(&[("__name__", "up"), ("job", "node"), ("zone", "")]);
        let sel = |ms: &[Matcher]| Selector::compile(ms).map(|s| s.matches(&l));
        assert!(sel(&[m("__name__", MatchOp::Equal, "up")]).unwrap());
        assert!(!sel(&[m("__name__", MatchOp::Equal, "u")]).unwrap());
        // Anchored at both ends.
        assert!(!sel(&[m("job", MatchOp::Regex, "no")]).unwrap());
        assert!(sel(&[m("job", MatchOp::Regex, "no.*|x")]).unwrap());
        assert!(sel(&[
            m("job", MatchOp::NotRegex, "api"),
            m("job", MatchOp::Regex, ".+")
        ])
        .unwrap());
        // A missing label is "".
        assert!(sel(&[
            m("up", MatchOp::Equal, "1"),
            m("missing", MatchOp::Equal, "")
        ])
        .is_ok_and(|x| !x));
        assert!(sel(&[
            m("job", MatchOp::Equal, "node"),
            m("missing", MatchOp::Equal, "")
        ])
        .unwrap());
        assert!(sel(&[
            m("job", MatchOp::Equal, "node"),
            m("missing", MatchOp::NotEqual, "")
        ])
        .is_ok_and(|x| !x));
        // Every matcher accepting "": refused, as Prometheus does.
        assert!(matches!(
            Selector::compile(&[m("job", MatchOp::Regex, ".*")]),
            Err(SourceError::BadQuery(_))
        ));
        assert!(matches!(
            Selector::compile(&[m("job", MatchOp::Regex, "(")]),
            Err(SourceError::BadQuery(e)) if e.contains("job")
        ));
        // Over the size limit.
        assert!(matches!(
            Selector::compile(&[m("job", MatchOp::Regex, "a{1000}{1000}")]),
            Err(SourceError::BadQuery(_))
        ));
    }
}
