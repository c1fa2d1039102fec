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
