//! An in-memory [`SeriesSource`] for tests (feature `test-util`).

use std::collections::HashMap;

use async_trait::async_trait;

use crate::source::{
    Labels, MatchOp, Matcher, SelectLimits, Selector, SeriesData, SeriesSource, SourceError,
};

/// A matcher `name op value`.
pub fn matcher(name: &str, op: MatchOp, value: &str) -> Matcher {
    Matcher {
        name: name.into(),
        op,
        value: value.into(),
    }
}

/// Labels from `(name, value)` pairs, sorted by name.
pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    let mut l: Labels = pairs
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
    l.sort();
    l
}

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
        let selector = Selector::compile(matchers)?;
        Ok(self
            .tenants
            .get(tenant)
            .map(|all| all.iter().filter(|s| selector.matches(&s.labels)).collect())
            .unwrap_or_default())
    }
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
