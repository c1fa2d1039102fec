//! PromQL over Fleetstream's stored samples.
//!
//! The seam is [`SeriesSource`]: what the evaluator needs from storage (the series of a
//! tenant that match label matchers, with their raw samples in a time range). The query
//! API implements it over the read model's series index and the time-series store; the
//! evaluator and the Prometheus HTTP API handlers only see the trait, and the unit tests
//! use an in-memory source.

pub mod source;

pub use source::{Labels, MatchOp, Matcher, SelectLimits, SeriesData, SeriesSource, SourceError};
