//! Label and metric name rules shared by every format, and the accumulator that counts a
//! request's samples and series against the [`Limits`].
//!
//! * Label names match `[a-zA-Z_][a-zA-Z0-9_]*`, metric names `[a-zA-Z_:][a-zA-Z0-9_:]*`
//!   (Prometheus' charsets). Remote-write sends Prometheus names, so a name outside the
//!   charset is refused; OTLP and Influx names are free text, so they are sanitized
//!   ([`sanitize_label_name`], [`sanitize_metric_name`]).
//! * A label with an empty value is dropped: Prometheus treats it as absent.
//! * A label name twice in one series is refused (after sanitizing, OTLP joins the values
//!   with `;` instead, as Prometheus' OTLP translator does).
//! * Output labels are sorted by name, so one series always has one byte form.

use fleet_schemas::{Label, LabeledSample};

use crate::{Limits, Parsed, ProtocolError};

pub use fleet_schemas::series::{is_label_name, is_metric_name};

fn sanitize(s: &str, keep: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(s.len() + 1);
    if s.chars().next().is_none_or(|c| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(s.chars().map(|c| if keep(c) { c } else { '_' }));
    out
}

/// `s` in the label charset: every other character becomes `_`, and a leading digit (or an
/// empty name) gets a `_` in front (`http.method` → `http_method`, `2xx` → `_2xx`).
pub fn sanitize_label_name(s: &str) -> String {
    if is_label_name(s) {
        return s.to_owned();
    }
    sanitize(s, |c| c.is_ascii_alphanumeric() || c == '_')
}

/// `s` in the metric-name charset, as [`sanitize_label_name`] but keeping `:`.
pub fn sanitize_metric_name(s: &str) -> String {
    if is_metric_name(s) {
        return s.to_owned();
    }
    sanitize(s, |c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Refuses a metric name that is empty, outside the charset or too long.
pub(crate) fn check_metric(
    limits: &Limits,
    name: &str,
    field: impl Fn() -> String,
) -> Result<(), ProtocolError> {
    if name.len() > limits.max_metric_name_bytes {
        return Err(ProtocolError::limit(
            field(),
            format!(
                "metric name longer than {} bytes",
                limits.max_metric_name_bytes
            ),
            "max-metric-name-bytes",
            limits.max_metric_name_bytes,
        ));
    }
    if !is_metric_name(name) {
        return Err(ProtocolError::malformed(
            field(),
            format!("metric name {name:?} is not [a-zA-Z_:][a-zA-Z0-9_:]*"),
        ));
    }
    Ok(())
}

fn check_lengths(
    limits: &Limits,
    name: &str,
    value: &str,
    field: &impl Fn(&str) -> String,
) -> Result<(), ProtocolError> {
    if name.len() > limits.max_label_name_bytes {
        return Err(ProtocolError::limit(
            field("name"),
            format!("longer than {} bytes", limits.max_label_name_bytes),
            "max-label-name-bytes",
            limits.max_label_name_bytes,
        ));
    }
    if value.len() > limits.max_label_value_bytes {
        return Err(ProtocolError::limit(
            field("value"),
            format!("longer than {} bytes", limits.max_label_value_bytes),
            "max-label-value-bytes",
            limits.max_label_value_bytes,
        ));
    }
    Ok(())
}

fn too_many_labels(limits: &Limits, field: String) -> ProtocolError {
    ProtocolError::limit(
        field,
        format!(
            "more than {} labels (the metric name included)",
            limits.max_labels_per_series
        ),
        "max-labels-per-series",
        limits.max_labels_per_series,
    )
}

/// Adds a label as the client sent it: the name must already be in the charset.
/// `field("name")` / `field("value")` name the label's parts in errors.
pub(crate) fn push_strict(
    labels: &mut Vec<Label>,
    limits: &Limits,
    name: &str,
    value: &str,
    field: impl Fn(&str) -> String,
) -> Result<(), ProtocolError> {
    check_lengths(limits, name, value, &field)?;
    if !is_label_name(name) {
        return Err(ProtocolError::malformed(
            field("name"),
            format!("label name {name:?} is not [a-zA-Z_][a-zA-Z0-9_]*"),
        ));
    }
    if value.is_empty() {
        return Ok(());
    }
    if labels.len() + 2 > limits.max_labels_per_series {
        return Err(too_many_labels(limits, field("name")));
    }
    labels.push(Label {
        name: name.to_owned(),
        value: value.to_owned(),
    });
    Ok(())
}

/// Sorts `labels` by name and refuses a name that occurs twice.
pub(crate) fn seal(labels: &mut [Label], field: impl Fn() -> String) -> Result<(), ProtocolError> {
    labels.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = labels.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(ProtocolError::malformed(
            field(),
            format!("label {:?} occurs twice", w[0].name),
        ));
    }
    Ok(())
}

/// Labels of free-text names (OTLP attributes, Influx tags), sanitized and kept sorted. A
/// later [`Sanitized::set`] of the same sanitized name replaces the value; within one
/// attribute list, [`Sanitized::join`] joins colliding values with `;`.
#[derive(Debug, Clone, Default)]
pub(crate) struct Sanitized(std::collections::BTreeMap<String, String>);

impl Sanitized {
    /// Sets `name` (sanitized) to `value`, replacing an earlier value.
    pub(crate) fn set(&mut self, name: &str, value: String) {
        self.0.insert(sanitize_label_name(name), value);
    }

    /// Sets `name` (sanitized) to `value`, or appends `;value` when an attribute of this
    /// list already sanitized to the same name.
    pub(crate) fn join(&mut self, name: &str, value: String) {
        match self.0.entry(sanitize_label_name(name)) {
            std::collections::btree_map::Entry::Occupied(mut e) => {
                let v = e.get_mut();
                v.push(';');
                v.push_str(&value);
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(value);
            }
        }
    }

    /// Sets every label of `other` here, replacing.
    pub(crate) fn extend(&mut self, other: &Sanitized) {
        self.0
            .extend(other.0.iter().map(|(k, v)| (k.clone(), v.clone())));
    }

    /// The sorted labels with their values checked (empty values dropped, `__name__` is
    /// never a label here).
    pub(crate) fn labels(
        &self,
        limits: &Limits,
        field: impl Fn() -> String,
    ) -> Result<Vec<Label>, ProtocolError> {
        let mut out = Vec::with_capacity(self.0.len());
        for (name, value) in &self.0 {
            if value.is_empty() || name == "__name__" {
                continue;
            }
            check_lengths(limits, name, value, &|part| {
                format!("{}.{name}.{part}", field())
            })?;
            if out.len() + 2 > limits.max_labels_per_series {
                return Err(too_many_labels(limits, field()));
            }
            out.push(Label {
                name: name.clone(),
                value: value.clone(),
            });
        }
        Ok(out)
    }
}

/// A request's samples and series, counted against the limits as they come.
#[derive(Debug)]
pub(crate) struct Out<'a> {
    limits: &'a Limits,
    parsed: Parsed,
}

impl<'a> Out<'a> {
    pub(crate) fn new(limits: &'a Limits) -> Out<'a> {
        Out {
            limits,
            parsed: Parsed::default(),
        }
    }

    pub(crate) fn limits(&self) -> &'a Limits {
        self.limits
    }

    pub(crate) fn skipped(&mut self) -> &mut crate::Skipped {
        &mut self.parsed.skipped
    }

    /// Counts one more series.
    pub(crate) fn series(&mut self, field: impl Fn() -> String) -> Result<(), ProtocolError> {
        if self.parsed.series >= self.limits.max_series {
            return Err(ProtocolError::limit(
                field(),
                format!("more than {} series in one request", self.limits.max_series),
                "max-series",
                self.limits.max_series,
            ));
        }
        self.parsed.series += 1;
        Ok(())
    }

    /// Refuses `n` more samples over the limit (before they are built).
    pub(crate) fn reserve(
        &self,
        n: usize,
        field: impl Fn() -> String,
    ) -> Result<(), ProtocolError> {
        if self.parsed.samples.len().saturating_add(n) > self.limits.max_samples {
            return Err(ProtocolError::limit(
                field(),
                format!(
                    "more than {} samples in one request",
                    self.limits.max_samples
                ),
                "max-samples",
                self.limits.max_samples,
            ));
        }
        Ok(())
    }

    /// Adds a sample (metric name and labels already checked).
    pub(crate) fn push(
        &mut self,
        metric: String,
        labels: Vec<Label>,
        timestamp: i64,
        value: f64,
        field: impl Fn() -> String,
    ) -> Result<(), ProtocolError> {
        self.reserve(1, field)?;
        self.parsed.samples.push(LabeledSample {
            metric,
            labels,
            timestamp,
            value,
        });
        Ok(())
    }

    pub(crate) fn finish(self) -> Parsed {
        self.parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_prometheus_charsets() {
        assert!(is_label_name("_a1") && is_label_name("job") && is_label_name("__name__"));
        assert!(!is_label_name("") && !is_label_name("1a") && !is_label_name("a:b"));
        assert!(!is_label_name("a-b") && !is_label_name("é"));
        assert!(is_metric_name("a:b_c") && is_metric_name(":x"));
        assert!(!is_metric_name("") && !is_metric_name("9x") && !is_metric_name("a.b"));
    }

    #[test]
    fn sanitizing_maps_into_the_charset() {
        assert_eq!(sanitize_label_name("http.method"), "http_method");
        assert_eq!(sanitize_label_name("2xx"), "_2xx");
        assert_eq!(sanitize_label_name(""), "_");
        assert_eq!(sanitize_label_name("é"), "_");
        assert_eq!(
            sanitize_metric_name("http.server:duration"),
            "http_server:duration"
        );
        for s in ["a.b", "1", "", "x y", "ü", ":"] {
            assert!(is_label_name(&sanitize_label_name(s)), "{s}");
            assert!(is_metric_name(&sanitize_metric_name(s)), "{s}");
        }
    }

    #[test]
    fn strict_labels_are_sorted_and_duplicates_refused() {
        let limits = Limits::default();
        let mut labels = Vec::new();
        for (n, v) in [("b", "2"), ("a", "1"), ("empty", "")] {
            push_strict(&mut labels, &limits, n, v, |p| format!("l.{p}")).expect("valid");
        }
        seal(&mut labels, || "l".into()).expect("unique");
        let names: Vec<&str> = labels.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["a", "b"], "sorted, the empty one dropped");
        push_strict(&mut labels, &limits, "a", "3", |p| format!("l.{p}")).expect("valid");
        let err = seal(&mut labels, || "series[0]".into()).unwrap_err();
        assert_eq!(err.to_string(), "series[0]: label \"a\" occurs twice");
        assert_eq!(err.status(), 400);
    }

    #[test]
    fn label_limits_name_the_field_and_answer_413() {
        let limits = Limits {
            max_label_name_bytes: 4,
            max_labels_per_series: 2,
            ..Limits::default()
        };
        let mut labels = Vec::new();
        let err = push_strict(&mut labels, &limits, "toolong", "v", |p| {
            format!("timeseries[3].labels[1].{p}")
        })
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "timeseries[3].labels[1].name: longer than 4 bytes (limit `max-label-name-bytes` = 4)"
        );
        assert_eq!(err.status(), 413);
        push_strict(&mut labels, &limits, "a", "1", |p| p.into()).expect("one label + name");
        let err = push_strict(&mut labels, &limits, "b", "1", |p| p.into()).unwrap_err();
        assert!(matches!(
            err,
            ProtocolError::Limit {
                limit: "max-labels-per-series",
                ..
            }
        ));
    }

    #[test]
    fn sanitized_labels_join_within_a_list_and_replace_across_lists() {
        let mut resource = Sanitized::default();
        resource.join("a.b", "1".into());
        resource.join("a_b", "2".into());
        let mut point = Sanitized::default();
        point.set("x", "p".into());
        let mut all = Sanitized::default();
        all.set("x", "r".into());
        all.extend(&resource);
        all.extend(&point);
        let labels = all
            .labels(&Limits::default(), || "f".into())
            .expect("valid");
        assert_eq!(
            labels,
            vec![
                Label {
                    name: "a_b".into(),
                    value: "1;2".into()
                },
                Label {
                    name: "x".into(),
                    value: "p".into()
                },
            ]
        );
    }
}
