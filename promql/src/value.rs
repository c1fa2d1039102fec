//! What a query answers, and the errors it can fail with.

use crate::source::{Labels, SourceError};

/// The answer of a query, in the Prometheus HTTP API's four result types.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    /// `scalar`: one value at the evaluation time.
    Scalar {
        /// Evaluation time, ms.
        t_ms: i64,
        /// Value.
        v: f64,
    },
    /// `string`: a string literal at the evaluation time.
    String {
        /// Evaluation time, ms.
        t_ms: i64,
        /// The string.
        s: String,
    },
    /// `vector`: one sample per series at the evaluation time, in evaluation order (as
    /// Prometheus keeps it: selectors by labels, aggregations by first group seen,
    /// `sort`/`sort_desc` by value).
    Vector(Vec<InstantSample>),
    /// `matrix`: series with points, ordered by labels.
    Matrix(Vec<RangeSeries>),
}

/// One series' sample of a `vector` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct InstantSample {
    /// Labels, sorted by name.
    pub labels: Labels,
    /// Time, ms.
    pub t_ms: i64,
    /// Value.
    pub v: f64,
}

/// One series of a `matrix` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeSeries {
    /// Labels, sorted by name.
    pub labels: Labels,
    /// `(time ms, value)`, oldest first.
    pub points: Vec<(i64, f64)>,
}

/// How an [`EvalError`] is reported by the Prometheus HTTP API (`errorType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    /// `bad_data`, HTTP 400: the query or a parameter is wrong.
    BadData,
    /// `execution`, HTTP 422: the query is valid but cannot be evaluated on this data
    /// (many-to-many matching, a limit).
    Execution,
    /// `timeout`, HTTP 503.
    Timeout,
    /// `unavailable`, HTTP 503: the store failed.
    Unavailable,
}

impl ErrorType {
    /// The `errorType` string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::BadData => "bad_data",
            ErrorType::Execution => "execution",
            ErrorType::Timeout => "timeout",
            ErrorType::Unavailable => "unavailable",
        }
    }

    /// The HTTP status Prometheus answers with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorType::BadData => 400,
            ErrorType::Execution => 422,
            ErrorType::Timeout | ErrorType::Unavailable => 503,
        }
    }
}

/// Why a query could not be answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The query does not parse (the parser's message).
    #[error("{0}")]
    Parse(String),
    /// The query uses a construct this evaluator does not implement, named in the message.
    #[error("{0}")]
    Unsupported(String),
    /// The query or its parameters are not acceptable (a range query over a range
    /// vector, too many points).
    #[error("{0}")]
    BadQuery(String),
    /// Evaluation failed on this data (many-to-many matching, duplicate label sets, a
    /// limit).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its deadline.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// The store could not answer.
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl EvalError {
    /// How the HTTP API reports it.
    pub fn error_type(&self) -> ErrorType {
        match self {
            EvalError::Parse(_) | EvalError::Unsupported(_) | EvalError::BadQuery(_) => {
                ErrorType::BadData
            }
            EvalError::Execution(_) => ErrorType::Execution,
            EvalError::Timeout(_) => ErrorType::Timeout,
            EvalError::Source(SourceError::BadQuery(_)) => ErrorType::BadData,
            EvalError::Source(SourceError::TooMany(_)) => ErrorType::Execution,
            EvalError::Source(SourceError::Unavailable(_)) => ErrorType::Unavailable,
        }
    }
}
