//! Alert rules as written on `fleet.rules.v1`: what a valid [`RuleDefinition`] is. The API
//! checks every rule before writing it, and the evaluator checks every rule it reads (the
//! topic is a contract anyone may write to), with this one function.
//!
//! A rule takes one path: people write a [`RuleSpec`] (the body of the API's rule routes,
//! and a static rule of the processors' configuration), [`RuleSpec::definition`] checks it
//! and makes the [`RuleDefinition`] a [`crate::RuleEvent`] carries, and the evaluator runs
//! rule events only (static rules become rule events when it starts).
//!
//! Semantics (the evaluator in `fleet-stream-processors` implements them):
//!
//! * A sample **breaches** a level when `value operator threshold` holds; critical wins
//!   over warning.
//! * The alert is **raised** once the breach held for `for_secs` of sample time (measured
//!   from the first breaching sample; a non-breaching sample, or a gap in the samples
//!   longer than the evaluator's replay margin, starts over).
//! * It **resolves** once `value operator recovery` no longer holds (hysteresis), or, with
//!   no recovery threshold, once no level is breached.
//! * `heartbeat.absent` is not a sample metric: its value is the number of heartbeat
//!   intervals missed in a row (operator `>=`, the critical threshold, usually 3, is the
//!   number of misses that makes an agent offline). The liveness processor decides when an
//!   agent is offline (`liveness.offline-after`) and writes OFFLINE / ONLINE; the alert
//!   evaluator raises an alert per enabled rule in scope on OFFLINE (value: seconds since
//!   last seen, as no record carries the heartbeat interval) and resolves it on ONLINE.

use serde::{Deserialize, Serialize};

use crate::records::{RuleDefinition, RuleScope};
use crate::samples;

/// Rule metric of agent liveness: heartbeat intervals missed in a row (alerts follow the
/// liveness processor's OFFLINE / ONLINE, see the module docs).
pub const HEARTBEAT_ABSENT: &str = "heartbeat.absent";

/// Comparison operators a rule may use.
pub const OPERATORS: &[&str] = &[">", ">=", "<", "<=", "==", "!="];

/// Built-in metrics whose samples have a subject (mount point, service name); `custom.*`
/// metrics with labels have their labels as the subject.
pub const METRICS_WITH_SUBJECT: &[&str] = &["disk.percent", "disk.used_bytes", "service.up"];

/// Longest `for_secs` and `renotify_secs` a rule may have (7 days).
pub const MAX_SECS: i64 = 7 * 86_400;

/// What is wrong with a rule, naming the field (API paths such as `critical`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RuleFieldError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong and what would be right.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> RuleFieldError {
    RuleFieldError {
        field,
        message: message.into(),
    }
}

/// Whether a rule may name `metric`: a sample metric or [`HEARTBEAT_ABSENT`].
pub fn is_rule_metric(metric: &str) -> bool {
    metric == HEARTBEAT_ABSENT || samples::is_known_metric(metric)
}

/// Whether a rule with `labels` may name `metric`: a metric name of the standard write
/// protocols of at most 256 bytes.
pub fn is_series_metric(metric: &str) -> bool {
    metric.len() <= 256 && crate::series::is_metric_name(metric)
}

/// Whether `op` breaches "upwards" (`>`, `>=`): larger values are worse.
fn upward(op: &str) -> Option<bool> {
    match op {
        ">" | ">=" => Some(true),
        "<" | "<=" => Some(false),
        _ => None,
    }
}

/// Checks a rule definition; the first problem found names its field: first each field
/// alone ([`check_fields`]), then how they fit together ([`check_combination`]).
pub fn check_definition(d: &RuleDefinition) -> Result<(), RuleFieldError> {
    check_fields(d)?;
    check_combination(d)
}

/// Checks each field of a definition on its own (what a schema can say: lengths, names,
/// known metrics and operators, finite numbers, ranges).
pub fn check_fields(d: &RuleDefinition) -> Result<(), RuleFieldError> {
    crate::text::check_name(&d.name, 200).map_err(|m| bad("name", m))?;
    if let Some(v) = d.scope_value.as_deref() {
        crate::text::check_name(v, 200).map_err(|m| bad("scope_value", m))?;
    }
    if !is_rule_metric(&d.metric) && !is_series_metric(&d.metric) {
        return Err(bad(
            "metric",
            format!(
                "unknown metric {:?}; known: {}, {HEARTBEAT_ABSENT}, custom.<name>, or (with `labels`) a metric name of the standard write protocols",
                d.metric,
                samples::BUILTIN_METRICS.join(", ")
            ),
        ));
    }
    if let Some(matchers) = &d.labels {
        crate::series::check_matcher_forms(matchers)
            .map_err(|(i, m)| bad("labels", format!("labels[{i}]: {m}")))?;
    }
    if let Some(s) = &d.subject {
        crate::text::check_name(s, 500).map_err(|m| bad("subject", m))?;
    }
    if !OPERATORS.contains(&d.operator.as_str()) {
        return Err(bad(
            "operator",
            format!("must be one of {}", OPERATORS.join(" ")),
        ));
    }
    for (field, v) in [
        ("warning", d.warning),
        ("critical", d.critical),
        ("recovery", d.recovery),
    ] {
        if v.is_some_and(|v| !v.is_finite()) {
            return Err(bad(field, "must be a finite number"));
        }
    }
    if !(0..=MAX_SECS).contains(&d.for_secs) {
        return Err(bad("for_secs", format!("must be 0 to {MAX_SECS} seconds")));
    }
    if !(0..=MAX_SECS).contains(&d.renotify_secs) {
        return Err(bad(
            "renotify_secs",
            format!("must be 0 (never) to {MAX_SECS} seconds"),
        ));
    }
    Ok(())
}

/// Checks how the fields of a definition (each valid alone) fit together: the scope and
/// its value, a subject only for metrics that have one, the operator of
/// `heartbeat.absent`, at least one threshold, and the order of the thresholds.
pub fn check_combination(d: &RuleDefinition) -> Result<(), RuleFieldError> {
    match (d.scope, d.scope_value.as_deref()) {
        (RuleScope::Tenant, None) | (RuleScope::Agent | RuleScope::Tag, Some(_)) => {}
        (RuleScope::Tenant, Some(_)) => {
            return Err(bad("scope_value", "must be absent for scope tenant"))
        }
        (RuleScope::Agent, None) => {
            return Err(bad("scope_value", "scope agent needs the agent id"))
        }
        (RuleScope::Tag, None) => return Err(bad("scope_value", "scope tag needs the tag")),
    }
    match &d.labels {
        Some(matchers) => {
            if !is_series_metric(&d.metric) {
                return Err(bad(
                    "metric",
                    format!(
                        "{:?} is an agent metric; a rule with `labels` names a metric of the standard write protocols ([a-zA-Z_:][a-zA-Z0-9_:]*)",
                        d.metric
                    ),
                ));
            }
            crate::series::Matchers::compile(matchers)
                .map_err(|(i, m)| bad("labels", format!("labels[{i}]: {m}")))?;
        }
        None if !is_rule_metric(&d.metric) => {
            return Err(bad(
                "metric",
                format!(
                    "{:?} is not an agent metric; to watch a series of the standard write protocols, add `labels` (an empty list matches every series of the metric)",
                    d.metric
                ),
            ));
        }
        None => {}
    }
    if d.labels.is_some() {
        if d.scope != RuleScope::Tenant {
            return Err(bad(
                "scope",
                "a rule on the standard protocols' series (with `labels`) has scope tenant: narrow it with label matchers",
            ));
        }
        if d.subject.is_some() {
            return Err(bad(
                "subject",
                "a rule with `labels` has no subject: each matching series is watched separately",
            ));
        }
    }
    if let (Some(s), true) = (&d.subject, d.metric.starts_with("custom.")) {
        crate::samples::check_custom_subject(s).map_err(|m| {
            bad(
                "subject",
                format!("a custom metric's subject is its labels, {{k=\"v\",...}}: {m}"),
            )
        })?;
    }
    if d.subject.is_some()
        && !METRICS_WITH_SUBJECT.contains(&d.metric.as_str())
        && !d.metric.starts_with("custom.")
    {
        return Err(bad(
            "subject",
            format!(
                "only {} and custom.<name> have a subject (mount point, service, or a custom metric's labels {{k=\"v\",...}})",
                METRICS_WITH_SUBJECT.join(", ")
            ),
        ));
    }
    if d.metric == HEARTBEAT_ABSENT && upward(&d.operator) != Some(true) {
        return Err(bad(
            "operator",
            "heartbeat.absent counts missed heartbeats: use > or >=",
        ));
    }
    let (warning, critical) = match (d.warning, d.critical) {
        (None, None) => {
            return Err(bad(
                "critical",
                "set a warning or a critical threshold (or both)",
            ))
        }
        other => other,
    };
    let up = upward(&d.operator);
    if let (Some(w), Some(c), Some(up)) = (warning, critical, up) {
        if (up && c < w) || (!up && c > w) {
            return Err(bad(
                "critical",
                format!(
                    "with operator {} the critical threshold must be {} the warning threshold",
                    d.operator,
                    if up { "at or above" } else { "at or below" }
                ),
            ));
        }
    }
    if let Some(r) = d.recovery {
        let Some(up) = up else {
            return Err(bad(
                "recovery",
                "a recovery threshold needs one of > >= < <=",
            ));
        };
        // The least severe level set: the recovery threshold lies on its safe side.
        let first = warning.or(critical).unwrap_or(r);
        if (up && r > first) || (!up && r < first) {
            return Err(bad(
                "recovery",
                format!(
                    "must be {} the lowest threshold ({first}) so an alert can resolve",
                    if up { "at or below" } else { "at or above" }
                ),
            ));
        }
    }
    Ok(())
}

/// A rule as people write it: the body of `POST /api/v1/tenants/{tenant_id}/rules` and
/// `PUT /api/v1/rules/{rule_id}`, and the fields of a static rule in the processors'
/// configuration (`[[rules]]`, where the snake_case names may also be written in
/// kebab-case). Absent fields take their defaults in [`RuleSpec::definition`].
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = RuleBody))]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Name shown to people.
    #[cfg_attr(feature = "openapi", schema(max_length = 200, pattern = "fleet:name"))]
    pub name: String,
    /// `tenant` (default), `agent` or `tag`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(tenant|agent|tag)$"))]
    pub scope: Option<String>,
    /// Agent id (scope `agent`) or tag (scope `tag`); absent for scope `tenant` (422
    /// otherwise).
    #[serde(default, alias = "scope-value")]
    #[cfg_attr(feature = "openapi", schema(max_length = 200, pattern = "fleet:name"))]
    pub scope_value: Option<String>,
    /// Metric name, for example `cpu.percent`, `disk.percent`, `service.up`, `custom.x`.
    #[cfg_attr(feature = "openapi", schema(pattern = "fleet:rule-metric"))]
    pub metric: String,
    /// Only this mount point, service, or label set of a custom metric (`{k="v",...}`,
    /// labels sorted by name) (metrics that have one: 422 otherwise).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_length = 500, pattern = "fleet:name"))]
    pub subject: Option<String>,
    /// `>` (default), `>=`, `<`, `<=`, `==`, `!=`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(>|>=|<|<=|==|!=)$"))]
    pub operator: Option<String>,
    /// Warning threshold (a warning or a critical threshold is needed; with `>` or `>=`
    /// the critical one is at or above it, with `<` or `<=` at or below: 422 otherwise).
    #[serde(default)]
    pub warning: Option<f64>,
    /// Critical threshold.
    #[serde(default)]
    pub critical: Option<f64>,
    /// Recovery threshold (hysteresis), on the safe side of the lowest threshold.
    #[serde(default)]
    pub recovery: Option<f64>,
    /// For-duration in seconds (default 0).
    #[serde(
        default,
        alias = "for-secs",
        deserialize_with = "crate::text::whole_number"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 604800))]
    pub for_secs: Option<i64>,
    /// Re-notify interval in seconds (default 0: never).
    #[serde(
        default,
        alias = "renotify-secs",
        deserialize_with = "crate::text::whole_number"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 604800))]
    pub renotify_secs: Option<i64>,
    /// Whether it is evaluated (default: true on create, unchanged on update).
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Absent: `metric` is an agent metric. Present (possibly empty): the rule watches the
    /// series of the standard write protocols (Prometheus remote-write, OTLP, Influx)
    /// named `metric` whose labels match every matcher (`{"name": "job", "op": "=",
    /// "value": "node"}`; ops `=`, `!=`, `=~`, `!~`, regular expressions anchored), each
    /// series separately; scope must be `tenant`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(max_items = 20))]
    pub labels: Option<Vec<crate::records::LabelMatcher>>,
}

/// Why a [`RuleSpec`] is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A field alone is wrong ([`check_fields`]; the API answers 400).
    #[error("{0}")]
    Field(RuleFieldError),
    /// Fields valid alone contradict each other ([`check_combination`]; 422).
    #[error("{0}")]
    Combination(RuleFieldError),
}

impl SpecError {
    /// The field and what is wrong with it.
    pub fn problem(&self) -> &RuleFieldError {
        match self {
            SpecError::Field(e) | SpecError::Combination(e) => e,
        }
    }
}

impl RuleSpec {
    /// Checks the spec and makes its definition; `enabled` fills in an absent flag. Names
    /// and scope values are trimmed.
    pub fn definition(&self, enabled: bool) -> Result<RuleDefinition, SpecError> {
        let scope = match self.scope.as_deref().unwrap_or("tenant") {
            "tenant" => RuleScope::Tenant,
            "agent" => RuleScope::Agent,
            "tag" => RuleScope::Tag,
            _ => {
                return Err(SpecError::Field(bad(
                    "scope",
                    "must be tenant, agent or tag",
                )))
            }
        };
        let mut d = RuleDefinition {
            name: self.name.clone(),
            scope,
            scope_value: self.scope_value.clone(),
            metric: self.metric.clone(),
            subject: self.subject.clone(),
            operator: self.operator.clone().unwrap_or_else(|| ">".into()),
            warning: self.warning,
            critical: self.critical,
            recovery: self.recovery,
            for_secs: self.for_secs.unwrap_or(0),
            renotify_secs: self.renotify_secs.unwrap_or(0),
            enabled: self.enabled.unwrap_or(enabled),
            labels: self.labels.clone(),
        };
        check_fields(&d).map_err(SpecError::Field)?;
        check_combination(&d).map_err(SpecError::Combination)?;
        d.name = d.name.trim().to_owned();
        d.scope_value = d.scope_value.map(|v| v.trim().to_owned());
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    fn field(d: &RuleDefinition) -> Option<&'static str> {
        check_definition(d).err().map(|e| e.field)
    }

    #[test]
    fn checks_name_their_field() {
        let ok = fixtures::rule_definition();
        assert_eq!(field(&ok), None);
        let mut d = ok.clone();
        d.metric = "cpu.nope".into();
        assert_eq!(field(&d), Some("metric"));
        let mut d = ok.clone();
        d.operator = "=>".into();
        assert_eq!(field(&d), Some("operator"));
        let mut d = ok.clone();
        d.warning = None;
        d.critical = None;
        assert_eq!(field(&d), Some("critical"));
        let mut d = ok.clone();
        d.critical = Some(10.0);
        assert_eq!(field(&d), Some("critical"), "critical below warning");
        let mut d = ok.clone();
        d.recovery = Some(99.0);
        assert_eq!(field(&d), Some("recovery"), "recovery above warning");
        let mut d = ok.clone();
        d.warning = Some(f64::NAN);
        assert_eq!(field(&d), Some("warning"));
        let mut d = ok.clone();
        d.scope = RuleScope::Agent;
        assert_eq!(field(&d), Some("scope_value"));
        let mut d = ok.clone();
        d.name = "CPU \u{202E}hgih".into();
        assert_eq!(field(&d), Some("name"), "a bidi override");
        let mut d = ok.clone();
        d.scope = RuleScope::Tag;
        d.scope_value = Some("web\u{200B}".into());
        assert_eq!(field(&d), Some("scope_value"), "a zero-width space");
        let mut d = ok.clone();
        d.subject = Some("/".into());
        assert_eq!(field(&d), Some("subject"), "cpu has no subject");
        let mut d = ok.clone();
        d.metric = "custom.queue_depth".into();
        d.subject = Some(r#"{queue="high"}"#.into());
        assert_eq!(
            field(&d),
            None,
            "custom metrics have their labels as subject"
        );
        d.subject = Some("/var".into());
        assert_eq!(field(&d), Some("subject"), "not labels");
        d.subject = Some(r#"{region="eu",queue="high"}"#.into());
        assert_eq!(field(&d), Some("subject"), "not sorted");
        let mut d = ok.clone();
        d.for_secs = -1;
        assert_eq!(field(&d), Some("for_secs"));
        let mut d = ok.clone();
        d.renotify_secs = MAX_SECS + 1;
        assert_eq!(field(&d), Some("renotify_secs"));
        let mut d = ok;
        d.metric = HEARTBEAT_ABSENT.into();
        d.operator = "<".into();
        d.recovery = None;
        d.warning = None;
        d.critical = Some(3.0);
        assert_eq!(field(&d), Some("operator"));
        d.operator = ">=".into();
        assert_eq!(field(&d), None);
    }
}
