//! An in-memory [`SeriesSource`] for tests (feature `test-util`).

use std::collections::HashMap;

use async_trait::async_trait;
use regex::Regex;

use crate::source::{
    Labels, MatchOp, Matcher, SelectLimits, SeriesData, SeriesSource, SourceError,
};

/// Series per tenant, held in memory.
#[derive(Debug, Default, Clone)]
pub struct MemorySource {
    tenants: HashMap<String, Vec<SeriesData>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a series (labels as pairs, `__name__` for the metric name; samples as
    /// `(ms, value)` in any order).
    pub fn add(&mut self, tenant: &str, labels: &[(&str, &str)], samples: &[(i64, f64)]) {
        let mut labels: Labels = labels
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        labels.sort();
        let mut samples = samples.to_vec();
        samples.sort_by_key(|(t, _)| *t);
        let series = self.tenants.entry(tenant.to_string()).or_default();
        series.push(SeriesData { labels, samples });
        series.sort_by(|a, b| a.labels.cmp(&b.labels));
    }

    fn matching(
        &self,
        tenant: &str,
        matchers: &[Matcher],
    ) -> Result<Vec<&SeriesData>, SourceError> {
        let compiled = compile(matchers)?;
        if !compiled.iter().any(|(_, m)| !m.matches("")) {
            return Err(SourceError::BadQuery(
                "vector selector must contain at least one non-empty matcher".into(),
            ));
        }
        Ok(self
            .tenants
            .get(tenant)
            .map(|all| {
                all.iter()
                    .filter(|s| {
                        compiled.iter().all(|(name, m)| {
                            let value = s
                                .labels
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, v)| v.as_str())
                                .unwrap_or("");
                            m.matches(value)
                        })
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

enum Compiled {
    Equal(String),
    NotEqual(String),
    Regex(Regex, bool),
}

impl Compiled {
    fn matches(&self, value: &str) -> bool {
        match self {
            Compiled::Equal(v) => v == value,
            Compiled::NotEqual(v) => v != value,
            Compiled::Regex(re, positive) => re.is_match(value) == *positive,
        }
    }
}

fn compile(matchers: &[Matcher]) -> Result<Vec<(&str, Compiled)>, SourceError> {
    matchers
        .iter()
        .map(|m| {
            let compiled = match m.op {
                MatchOp::Equal => Compiled::Equal(m.value.clone()),
                MatchOp::NotEqual => Compiled::NotEqual(m.value.clone()),
                MatchOp::Regex | MatchOp::NotRegex => Compiled::Regex(
                    Regex::new(&format!("^(?s:{})$", m.value)).map_err(|e| {
                        SourceError::BadQuery(format!("bad regular expression {:?}: {e}", m.value))
                    })?,
                    m.op == MatchOp::Regex,
                ),
            };
            Ok((m.name.as_str(), compiled))
        })
        .collect()
}

#[async_trait]
impl SeriesSource for MemorySource {
    async fn select(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: &SelectLimits,
    ) -> Result<Vec<SeriesData>, SourceError> {
        let mut out = Vec::new();
        let mut samples = 0usize;
        for s in self.matching(tenant, matchers)? {
            let in_range: Vec<(i64, f64)> = s
                .samples
                .iter()
                .filter(|(t, _)| *t >= start_ms && *t <= end_ms)
                .copied()
                .collect();
            if in_range.is_empty() {
                continue;
            }
            samples += in_range.len();
            out.push(SeriesData {
                labels: s.labels.clone(),
                samples: in_range,
            });
            if out.len() > limits.max_series {
                return Err(SourceError::TooMany(format!(
                    "the selector matches more than {} series",
                    limits.max_series
                )));
            }
            if samples > limits.max_samples {
                return Err(SourceError::TooMany(format!(
                    "the selector loads more than {} samples",
                    limits.max_samples
                )));
            }
        }
        Ok(out)
    }

    async fn series(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<Labels>, SourceError> {
        Ok(self
            .matching(tenant, matchers)?
            .into_iter()
            .filter(|s| {
                s.samples
                    .iter()
                    .any(|(t, _)| *t >= start_ms && *t <= end_ms)
            })
            .take(limit)
            .map(|s| s.labels.clone())
            .collect())
    }
}
