//! PromQL over Fleetstream's stored samples.
//!
//! The seam is [`SeriesSource`]: what the evaluator needs from storage (the series of a
//! tenant that match label matchers, with their raw samples in a time range). The query
//! API implements it over the read model's series index and the time-series store; the
//! evaluator and the Prometheus HTTP API handlers only see the trait, and the unit tests
//! use an in-memory source ([`memory::MemorySource`], feature `test-util`).
//!
//! Evaluation ([`instant_query`], [`range_query`]) parses with `promql-parser` and follows
//! the semantics of Prometheus 2.42 (the version Debian ships, which the comparison tests
//! run): closed range windows `[t - range, t]`, a 5 minute lookback that still counts a
//! sample exactly 5 minutes old, `rate`/`increase`/`delta` extrapolation, `__name__`
//! dropped by functions and arithmetic. Constructs outside the supported subset answer
//! [`EvalError::Unsupported`] naming them.

pub mod api;
pub mod eval;
mod functions;
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod source;
pub mod value;

pub use eval::{instant_query, range_query, range_steps, EvalOptions, MAX_POINTS_PER_SERIES};
pub use source::{
    Labels, MatchOp, Matcher, SelectLimits, Selector, SeriesData, SeriesSource, SourceError,
};
pub use value::{ErrorType, EvalError, InstantSample, QueryValue, RangeSeries};
