//! Stored samples for PromQL: [`StoredSamples`] implements `fleet_promql::SeriesSource`
//! over the read model's series index and the time-series store.
//!
//! Two kinds of series answer a selector, each with Prometheus labels (`__name__` the
//! metric name):
//!
//! * **Samples of the standard write protocols** (`fleet.samples.v1`): the read model's
//!   index (`ReadModel::list_sample_series`) lists a tenant's series with their labels and
//!   unit; their samples are the engine's series named by the series text in that unit.
//! * **Agents' own metrics** (`fleet.metrics.v1`): engine series `metric[:subject]` of each
//!   agent of the tenant, as `metric` with every character outside `[a-zA-Z0-9_:]` made
//!   `_` (`cpu.percent` → `cpu_percent`), labels `agent_id`, `hostname` (from the read
//!   model's agent row, when known) and `subject` (when the series has one):
//!   `disk_percent{agent_id="a1",hostname="web-1",subject="/var"}`.
//!
//! Costs: an equality matcher on `__name__` narrows the index query to that metric, and
//! skips agents unless the name is one an agent metric maps to (a built-in one or
//! `custom_*`); an equality matcher on `agent_id` takes that agent only. Other matchers
//! are applied here: regular expressions anchored (`^(?:...)$`), compiled once per call
//! with bounded size. Samples are read per unit, all asked series of a unit in one
//! store read. The engine stores finite values only: Prometheus' staleness markers
//! (NaN) are not kept, so a series that stops is seen up to the lookback after its last
//! sample. Times: the store keeps µs, PromQL ms; a sample's time is rounded down to the
//! ms (of two in one ms, the later is kept).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use fleet_promql::{
    Labels, Matcher, SelectLimits, Selector, SeriesData, SeriesSource, SourceError,
};
use fleet_read_model::{AgentQuery, AgentRow, ReadModel, SampleSeriesQuery, MAX_SERIES_LIMIT};
use fleet_timeseries::TimeSeriesStore;

/// Agents listed per read-model page.
const AGENT_PAGE: u32 = 1000;

/// [`SeriesSource`] over the read model (series index, agents) and the time-series store.
#[derive(Debug, Clone)]
pub struct StoredSamples {
    read_model: Arc<dyn ReadModel>,
    timeseries: Arc<dyn TimeSeriesStore>,
}

impl StoredSamples {
    /// The source over these stores.
    pub fn new(read_model: Arc<dyn ReadModel>, timeseries: Arc<dyn TimeSeriesStore>) -> Self {
        StoredSamples {
            read_model,
            timeseries,
        }
    }
}

/// A selected series: its labels and where its samples are.
#[derive(Debug)]
struct Candidate {
    labels: Labels,
    unit: String,
    series: String,
}

/// Labels sorted by name, `__name__` among them.
fn labels_with_name(metric: &str, labels: impl IntoIterator<Item = (String, String)>) -> Labels {
    let mut out: Labels = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    out.push(("__name__".to_owned(), metric.to_owned()));
    out.sort();
    out
}

/// The Prometheus name of an agent metric: `.` and any character outside
/// `[a-zA-Z0-9_:]` become `_`.
pub fn agent_metric_name(metric: &str) -> String {
    metric
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether some agent metric has the Prometheus name `name`.
fn may_be_agent_metric(name: &str) -> bool {
    name.starts_with("custom_")
        || fleet_schemas::samples::BUILTIN_METRICS
            .iter()
            .any(|m| agent_metric_name(m) == name)
}

/// µs of a PromQL time in ms (saturating: the store clamps its ranges).
fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> SourceError {
    SourceError::Unavailable(format!("{what}: {e}"))
}

fn too_many_series(max: usize) -> SourceError {
    SourceError::TooMany(format!(
        "the selector matches more than {max} series (the query's series limit)"
    ))
}

impl StoredSamples {
    /// The series of `tenant` that `selector` selects and that may have samples in
    /// `[start_ms, end_ms]`, at most `max + 1` (more is over the limit for the caller).
    async fn candidates(
        &self,
        tenant: &str,
        selector: &Selector,
        start_ms: i64,
        end_ms: i64,
        max: usize,
    ) -> Result<Vec<Candidate>, SourceError> {
        let mut out: Vec<Candidate> = Vec::new();
        let name = selector.equal("__name__");
        let indexed = self
            .read_model
            .list_sample_series(&SampleSeriesQuery {
                tenant_id: tenant.to_owned(),
                metric: name.map(str::to_owned),
                start: micros(start_ms),
                end: micros(end_ms).saturating_add(999),
                limit: MAX_SERIES_LIMIT,
            })
            .await
            .map_err(|e| unavailable("the series index", e))?;
        if indexed.len() >= MAX_SERIES_LIMIT {
            return Err(SourceError::TooMany(format!(
                "the selector reaches more than {MAX_SERIES_LIMIT} indexed series; select a metric name"
            )));
        }
        for s in indexed {
            let labels = labels_with_name(&s.metric, s.labels);
            if selector.matches(&labels) {
                out.push(Candidate {
                    labels,
                    unit: s.unit_id,
                    series: s.series,
                });
                if out.len() > max {
                    return Ok(out);
                }
            }
        }
        if name.is_none_or(may_be_agent_metric) {
            self.agent_candidates(tenant, selector, start_ms, end_ms, max, &mut out)
                .await?;
        }
        Ok(out)
    }

    /// Adds the agents' series `selector` selects to `out` (up to `max + 1` in all).
    async fn agent_candidates(
        &self,
        tenant: &str,
        selector: &Selector,
        start_ms: i64,
        end_ms: i64,
        max: usize,
        out: &mut Vec<Candidate>,
    ) -> Result<(), SourceError> {
        let (start, end) = (micros(start_ms), micros(end_ms));
        let mut agents: Vec<AgentRow> = Vec::new();
        if let Some(id) = selector.equal("agent_id") {
            let agent = self
                .read_model
                .get_agent(Some(tenant), id)
                .await
                .map_err(|e| unavailable("the agents", e))?;
            agents.extend(agent);
        } else {
            let mut after: Option<String> = None;
            loop {
                let page = self
                    .read_model
                    .list_agents(&AgentQuery {
                        tenant_id: Some(tenant.to_owned()),
                        limit: Some(AGENT_PAGE),
                        after: after.clone(),
                        ..AgentQuery::default()
                    })
                    .await
                    .map_err(|e| unavailable("the agents", e))?;
                let full = page.len() >= AGENT_PAGE as usize;
                after = page.last().map(|a| a.agent_id.clone());
                agents.extend(page);
                if !full || after.is_none() {
                    break;
                }
            }
        }
        for agent in agents {
            // Heard of only outside the range: no samples in it.
            if agent.first_seen_at > end.saturating_add(999) || agent.last_seen_at < start {
                continue;
            }
            let names = self
                .timeseries
                .series(tenant, &agent.agent_id)
                .await
                .map_err(|e| unavailable("the time-series store", e))?;
            for series in names {
                let (metric, subject) = fleet_schemas::samples::split_series(&series);
                let mut pairs = vec![("agent_id".to_owned(), agent.agent_id.clone())];
                if let Some(h) = &agent.hostname {
                    pairs.push(("hostname".to_owned(), h.clone()));
                }
                if let Some(s) = subject {
                    pairs.push(("subject".to_owned(), s.to_owned()));
                }
                let labels = labels_with_name(&agent_metric_name(metric), pairs);
                if selector.matches(&labels) {
                    out.push(Candidate {
                        labels,
                        unit: agent.agent_id.clone(),
                        series,
                    });
                    if out.len() > max {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl SeriesSource for StoredSamples {
    #[tracing::instrument(skip(self, matchers, limits), fields(matchers = matchers.len()))]
    async fn select(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limits: &SelectLimits,
    ) -> Result<Vec<SeriesData>, SourceError> {
        let selector = Selector::compile(matchers)?;
        if end_ms < start_ms {
            return Ok(Vec::new());
        }
        let candidates = self
            .candidates(tenant, &selector, start_ms, end_ms, limits.max_series)
            .await?;
        if candidates.len() > limits.max_series {
            return Err(too_many_series(limits.max_series));
        }
        let mut by_unit: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
        for c in &candidates {
            by_unit.entry(c.unit.as_str()).or_default().push(c);
        }
        // [start_ms, end_ms] in ms holds the µs times [start_ms * 1000, (end_ms + 1) * 1000).
        let (from, to) = (micros(start_ms), micros(end_ms.saturating_add(1)));
        let mut out: Vec<SeriesData> = Vec::with_capacity(candidates.len());
        let mut loaded = 0usize;
        for (unit, series) in by_unit {
            let names: Vec<&str> = series.iter().map(|c| c.series.as_str()).collect();
            let points = self
                .timeseries
                .points(tenant, unit, &names, from, to)
                .await
                .map_err(|e| unavailable("the time-series store", e))?;
            for (c, points) in series.into_iter().zip(points) {
                let mut samples: Vec<(i64, f64)> = Vec::with_capacity(points.len());
                for (t, v) in points {
                    let ms = t.div_euclid(1000);
                    match samples.last_mut() {
                        Some(last) if last.0 == ms => last.1 = v,
                        _ => samples.push((ms, v)),
                    }
                }
                if samples.is_empty() {
                    continue;
                }
                loaded = loaded.saturating_add(samples.len());
                if loaded > limits.max_samples {
                    return Err(SourceError::TooMany(format!(
                        "the selector loads more than {} samples (the query's sample limit)",
                        limits.max_samples
                    )));
                }
                out.push(SeriesData {
                    labels: c.labels.clone(),
                    samples,
                });
            }
        }
        out.sort_by(|a, b| a.labels.cmp(&b.labels));
        out.dedup_by(|a, b| a.labels == b.labels);
        Ok(out)
    }

    #[tracing::instrument(skip(self, matchers), fields(matchers = matchers.len()))]
    async fn series(
        &self,
        tenant: &str,
        matchers: &[Matcher],
        start_ms: i64,
        end_ms: i64,
        limit: usize,
    ) -> Result<Vec<Labels>, SourceError> {
        let selector = Selector::compile(matchers)?;
        if end_ms < start_ms {
            return Ok(Vec::new());
        }
        let max = limit.min(MAX_SERIES_LIMIT);
        let candidates = self
            .candidates(tenant, &selector, start_ms, end_ms, max)
            .await?;
        let mut out: Vec<Labels> = candidates.into_iter().map(|c| c.labels).collect();
        out.sort();
        out.dedup();
        out.truncate(limit);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_metric_names_map_to_prometheus_names() {
        assert_eq!(agent_metric_name("cpu.percent"), "cpu_percent");
        assert_eq!(
            agent_metric_name("custom.queue-depth"),
            "custom_queue_depth"
        );
        assert!(may_be_agent_metric("disk_percent"));
        assert!(may_be_agent_metric("custom_x"));
        assert!(!may_be_agent_metric("node_load1"));
    }
}
