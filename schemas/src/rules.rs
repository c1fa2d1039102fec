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
//! * An **event rule** (`event` set, [`EventRule`]) watches the agent events of
//!   `fleet.events.v1`, not samples: an event of `event.kind` whose attributes equal every
//!   one of `event.attributes` (and at least `event.min_severity`, when set) raises an
//!   alert at once for (rule, agent, subject), the subject being the event's attribute
//!   named `event.subject_attribute` (none when unset). Its metric is `event.<kind>`, its
//!   severity the rule's one level (`event.alert_severity` in a [`RuleSpec`]; warning or
//!   critical = 1 in the definition), its value 1. An open alert is not raised again. It
//!   resolves on an event of one of `event.recovery_kinds` with the same attributes and
//!   subject, or `event.resolve_after_secs` of event time after the last matching event
//!   when none came since (the resolve carries that time), or when a user resolves it.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use crate::api::AGENT_EVENT_KINDS;
use crate::records::{EventRule, RuleDefinition, RuleScope};
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

/// Prefix of an event rule's metric: `event.<kind>`.
pub const EVENT_METRIC_PREFIX: &str = "event.";

/// Event severities an event rule may ask for at least, least severe first.
pub const EVENT_SEVERITIES: &[&str] = &["info", "warning", "critical"];

/// Most attributes an event rule may match.
pub const MAX_EVENT_ATTRIBUTES: usize = 16;

/// Most recovery kinds of an event rule.
pub const MAX_RECOVERY_KINDS: usize = 8;

/// Longest attribute name an event rule may name.
pub const MAX_ATTRIBUTE_NAME: usize = 64;

/// Longest attribute value an event rule may match, in characters.
pub const MAX_ATTRIBUTE_VALUE: usize = 256;

/// The metric of an event rule on `kind` (`event.<kind>`): alerts carry it.
pub fn event_metric(kind: &str) -> String {
    format!("{EVENT_METRIC_PREFIX}{kind}")
}

/// Whether `kind` is an event kind the agent sends (an event rule may name it).
pub fn is_event_kind(kind: &str) -> bool {
    AGENT_EVENT_KINDS.contains(&kind)
}

/// Whether `metric` is an event rule's metric, `event.<known kind>`.
pub fn is_event_metric(metric: &str) -> bool {
    metric
        .strip_prefix(EVENT_METRIC_PREFIX)
        .is_some_and(is_event_kind)
}

/// Checks an attribute name of an event rule: 1 to [`MAX_ATTRIBUTE_NAME`] of `a-z A-Z 0-9
/// _ . -`.
fn check_attribute_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_ATTRIBUTE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "attribute name {name:?}: 1 to {MAX_ATTRIBUTE_NAME} of a-z A-Z 0-9 _ . -"
        ))
    }
}

/// The rank of an event severity (`info` < `warning` < `critical`).
pub fn event_severity_rank(severity: &str) -> Option<usize> {
    EVENT_SEVERITIES
        .iter()
        .position(|s| s.eq_ignore_ascii_case(severity))
}

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
    if let Some(e) = &d.event {
        check_event_fields(e)?;
    }
    // No metric at all is a matter of combination: an event rule needs none.
    if !d.metric.is_empty()
        && !is_rule_metric(&d.metric)
        && !is_series_metric(&d.metric)
        && !is_event_metric(&d.metric)
    {
        return Err(bad(
            "metric",
            format!(
                "unknown metric {:?}; known: {}, {HEARTBEAT_ABSENT}, custom.<name>, or (with `labels`) a metric name of the standard write protocols (leave it out for an event rule)",
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

/// Checks the fields of an event rule on their own: a known kind, bounded attributes, a
/// known severity, known recovery kinds, a resolve-after in range.
fn check_event_fields(e: &EventRule) -> Result<(), RuleFieldError> {
    let known = || AGENT_EVENT_KINDS.join(", ");
    if !is_event_kind(&e.kind) {
        return Err(bad(
            "event.kind",
            format!("unknown event kind {:?}; known: {}", e.kind, known()),
        ));
    }
    if e.attributes.len() > MAX_EVENT_ATTRIBUTES {
        return Err(bad(
            "event.attributes",
            format!("at most {MAX_EVENT_ATTRIBUTES} attributes"),
        ));
    }
    // In name order, so the first problem reported is the same every time.
    let sorted: BTreeMap<&String, &String> = e.attributes.iter().collect();
    for (name, value) in sorted {
        check_attribute_name(name).map_err(|m| bad("event.attributes", m))?;
        crate::text::check_name(value, MAX_ATTRIBUTE_VALUE)
            .map_err(|m| bad("event.attributes", format!("attribute {name:?}: {m}")))?;
    }
    if let Some(s) = e.min_severity.as_deref() {
        if !EVENT_SEVERITIES.contains(&s) {
            return Err(bad(
                "event.min_severity",
                format!("must be one of {}", EVENT_SEVERITIES.join(", ")),
            ));
        }
    }
    if let Some(a) = e.subject_attribute.as_deref() {
        check_attribute_name(a).map_err(|m| bad("event.subject_attribute", m))?;
    }
    if e.recovery_kinds.len() > MAX_RECOVERY_KINDS {
        return Err(bad(
            "event.recovery_kinds",
            format!("at most {MAX_RECOVERY_KINDS} kinds"),
        ));
    }
    if let Some(k) = e.recovery_kinds.iter().find(|k| !is_event_kind(k)) {
        return Err(bad(
            "event.recovery_kinds",
            format!("unknown event kind {k:?}; known: {}", known()),
        ));
    }
    if e.resolve_after_secs
        .is_some_and(|s| !(1..=MAX_SECS).contains(&s))
    {
        return Err(bad(
            "event.resolve_after_secs",
            format!("must be 1 to {MAX_SECS} seconds (leave it out: no timed resolve)"),
        ));
    }
    Ok(())
}

/// How the fields of an event rule fit together: its metric is `event.<kind>`, its one
/// level is 1 with `>=`, and the fields of sample rules are at their defaults.
fn check_event_combination(d: &RuleDefinition, e: &EventRule) -> Result<(), RuleFieldError> {
    if d.metric != event_metric(&e.kind) {
        return Err(bad(
            "metric",
            format!(
                "an event rule's metric is {} (leave it out)",
                event_metric(&e.kind)
            ),
        ));
    }
    let unused = |field: &'static str, what: &str| {
        bad(
            field,
            format!("an event rule has no {what}: leave {field} out"),
        )
    };
    if d.labels.is_some() {
        return Err(unused("labels", "label matchers"));
    }
    if d.subject.is_some() {
        return Err(bad(
            "subject",
            "an event rule has no subject: its alerts' subject is the event's attribute named by event.subject_attribute",
        ));
    }
    if d.recovery.is_some() {
        return Err(unused(
            "recovery",
            "recovery threshold (see event.recovery_kinds)",
        ));
    }
    if d.for_secs != 0 {
        return Err(unused("for_secs", "for-duration (an event raises at once)"));
    }
    if d.renotify_secs != 0 {
        return Err(unused("renotify_secs", "re-notify interval"));
    }
    if d.operator != ">=" {
        return Err(bad(
            "operator",
            "an event rule's operator is >= (leave it out)",
        ));
    }
    match (d.warning, d.critical) {
        (Some(1.0), None) | (None, Some(1.0)) => {}
        _ => {
            return Err(bad(
                "critical",
                "an event rule has no thresholds: its alerts' severity is event.alert_severity",
            ))
        }
    }
    if e.recovery_kinds.contains(&e.kind) {
        return Err(bad(
            "event.recovery_kinds",
            "must not contain the kind that raises",
        ));
    }
    Ok(())
}

/// Checks how the fields of a definition (each valid alone) fit together: the scope and
/// its value, a subject only for metrics that have one, the operator of
/// `heartbeat.absent`, at least one threshold, and the order of the thresholds; an event
/// rule's fields ([`EventRule`]).
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
    if let Some(e) = &d.event {
        return check_event_combination(d, e);
    }
    if d.metric.is_empty() {
        return Err(bad(
            "metric",
            "set metric (a rule on samples) or event (an event rule)",
        ));
    }
    if is_event_metric(&d.metric) {
        return Err(bad(
            "event",
            format!(
                "{:?} is the metric of an event rule: set event (and leave metric out)",
                d.metric
            ),
        ));
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
    /// Metric name, for example `cpu.percent`, `disk.percent`, `service.up`, `custom.x`;
    /// left out for an event rule (it is `event.<kind>`).
    #[serde(default)]
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
    /// Present: an event rule, watching the agents' events (see [`EventRuleSpec`]); leave
    /// `metric`, `operator`, the thresholds, `recovery`, `subject`, `labels`,
    /// `for_secs` and `renotify_secs` out.
    #[serde(default)]
    pub event: Option<EventRuleSpec>,
}

/// The event part of a rule body: what events raise an alert and what resolves it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = EventRuleBody))]
#[serde(deny_unknown_fields)]
pub struct EventRuleSpec {
    /// The event kind that raises an alert: `agent_started`, `agent_stopped`,
    /// `host_rebooted`, `service_failed`, `service_recovered` or `service_stopped`.
    #[cfg_attr(feature = "openapi", schema(pattern = "fleet:event-kind"))]
    pub kind: String,
    /// Only events whose attributes equal every one of these (for example `{"service":
    /// "nginx"}`, or `{"previous_stop": "unclean"}` for `agent_started` after an
    /// unexpected stop); at most 16, names of 1 to 64 `a-z A-Z 0-9 _ . -`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = attributes_schema))]
    pub attributes: Option<BTreeMap<String, String>>,
    /// Only events at least this severe: `info`, `warning` or `critical` (default: any).
    #[serde(default, alias = "min-severity")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(info|warning|critical)$"))]
    pub min_severity: Option<String>,
    /// The event attribute whose value is the alert's subject: one alert per value (for
    /// example `service`); default: one alert per agent.
    #[serde(default, alias = "subject-attribute")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-zA-Z0-9_.-]{1,64}$"))]
    pub subject_attribute: Option<String>,
    /// Events of these kinds with the same attributes (and subject) resolve the open alert
    /// (for example `service_recovered`); at most 8.
    #[serde(default, alias = "recovery-kinds")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_items = 8, pattern = "fleet:event-kind")
    )]
    pub recovery_kinds: Option<Vec<String>>,
    /// The open alert resolves this many seconds of event time after the last matching
    /// event when none came since (default: only a recovery event or a user resolves it).
    #[serde(
        default,
        alias = "resolve-after-secs",
        deserialize_with = "crate::text::whole_number"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 604800))]
    pub resolve_after_secs: Option<i64>,
    /// The alert's severity: `warning` (default) or `critical`.
    #[serde(default, alias = "alert-severity")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^(warning|critical)$"))]
    pub alert_severity: Option<String>,
}

/// The OpenAPI schema of an event rule's attributes: at most [`MAX_EVENT_ATTRIBUTES`],
/// the names' and values' bounds (`fleet:name` is filled in by the API's document).
#[cfg(feature = "openapi")]
fn attributes_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .max_properties(Some(MAX_EVENT_ATTRIBUTES))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[a-zA-Z0-9_.-]{{1,{MAX_ATTRIBUTE_NAME}}}$"))),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_ATTRIBUTE_VALUE))
                .pattern(Some("fleet:name")),
        ))
        .build()
}

impl EventRuleSpec {
    /// The event rule of the definition, and the rule's levels (warning, critical).
    #[allow(clippy::type_complexity)]
    fn rule(&self) -> Result<(EventRule, (Option<f64>, Option<f64>)), SpecError> {
        let levels = match self.alert_severity.as_deref().unwrap_or("warning") {
            "warning" => (Some(1.0), None),
            "critical" => (None, Some(1.0)),
            _ => {
                return Err(SpecError::Field(bad(
                    "event.alert_severity",
                    "must be warning or critical",
                )))
            }
        };
        let rule = EventRule {
            kind: self.kind.clone(),
            attributes: self
                .attributes
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            min_severity: self.min_severity.clone(),
            subject_attribute: self.subject_attribute.clone(),
            recovery_kinds: self.recovery_kinds.clone().unwrap_or_default(),
            resolve_after_secs: self.resolve_after_secs,
        };
        Ok((rule, levels))
    }
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
        let event = self.event.as_ref().map(EventRuleSpec::rule).transpose()?;
        let (metric, operator, (warning, critical)) = match &event {
            None => (
                self.metric.clone(),
                self.operator.clone().unwrap_or_else(|| ">".into()),
                (self.warning, self.critical),
            ),
            Some((e, levels)) => (
                if self.metric.is_empty() {
                    event_metric(&e.kind)
                } else {
                    self.metric.clone()
                },
                self.operator.clone().unwrap_or_else(|| ">=".into()),
                *levels,
            ),
        };
        let mut d = RuleDefinition {
            name: self.name.clone(),
            scope,
            scope_value: self.scope_value.clone(),
            metric,
            subject: self.subject.clone(),
            operator,
            warning,
            critical,
            recovery: self.recovery,
            for_secs: self.for_secs.unwrap_or(0),
            renotify_secs: self.renotify_secs.unwrap_or(0),
            enabled: self.enabled.unwrap_or(enabled),
            labels: self.labels.clone(),
            event: event.map(|(e, _)| e),
        };
        check_fields(&d).map_err(SpecError::Field)?;
        if d.event.is_some() {
            for (field, set) in [
                ("warning", self.warning.is_some()),
                ("critical", self.critical.is_some()),
            ] {
                if set {
                    return Err(SpecError::Combination(bad(
                        field,
                        "an event rule has no thresholds: its alerts' severity is event.alert_severity",
                    )));
                }
            }
        }
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

    fn event_spec(f: impl FnOnce(&mut EventRuleSpec)) -> RuleSpec {
        let mut e = EventRuleSpec {
            kind: "service_failed".into(),
            attributes: Some([("service".to_owned(), "nginx".to_owned())].into()),
            recovery_kinds: Some(vec!["service_recovered".into()]),
            ..EventRuleSpec::default()
        };
        f(&mut e);
        RuleSpec {
            name: "nginx failed".into(),
            event: Some(e),
            ..RuleSpec::default()
        }
    }

    fn spec_error(s: &RuleSpec) -> Option<(bool, &'static str)> {
        s.definition(true)
            .err()
            .map(|e| (matches!(e, SpecError::Combination(_)), e.problem().field))
    }

    #[test]
    fn event_rules_are_made_and_checked() {
        let d = event_spec(|e| e.alert_severity = Some("critical".into()))
            .definition(true)
            .expect("valid");
        assert_eq!(d.metric, "event.service_failed");
        assert_eq!(d.operator, ">=");
        assert_eq!((d.warning, d.critical), (None, Some(1.0)));
        assert_eq!(field(&d), None);
        assert_eq!(d, fixtures_like(d.clone()));
        let d = event_spec(|_| {}).definition(true).expect("valid");
        assert_eq!(
            (d.warning, d.critical),
            (Some(1.0), None),
            "warning by default"
        );

        let cases: Vec<(RuleSpec, (bool, &str))> = vec![
            (
                event_spec(|e| e.kind = "nope".into()),
                (false, "event.kind"),
            ),
            (
                event_spec(|e| {
                    e.attributes = Some((0..17).map(|i| (format!("a{i}"), "x".into())).collect())
                }),
                (false, "event.attributes"),
            ),
            (
                event_spec(|e| e.attributes = Some([("a b".into(), "x".into())].into())),
                (false, "event.attributes"),
            ),
            (
                event_spec(|e| e.attributes = Some([("a".into(), "x".repeat(257))].into())),
                (false, "event.attributes"),
            ),
            (
                event_spec(|e| e.attributes = Some([("a".into(), "\u{202E}x".into())].into())),
                (false, "event.attributes"),
            ),
            (
                event_spec(|e| e.min_severity = Some("loud".into())),
                (false, "event.min_severity"),
            ),
            (
                event_spec(|e| e.subject_attribute = Some(String::new())),
                (false, "event.subject_attribute"),
            ),
            (
                event_spec(|e| e.recovery_kinds = Some(vec!["x".into()])),
                (false, "event.recovery_kinds"),
            ),
            (
                event_spec(|e| e.recovery_kinds = Some(vec!["service_failed".into()])),
                (true, "event.recovery_kinds"),
            ),
            (
                event_spec(|e| e.resolve_after_secs = Some(0)),
                (false, "event.resolve_after_secs"),
            ),
            (
                event_spec(|e| e.resolve_after_secs = Some(MAX_SECS + 1)),
                (false, "event.resolve_after_secs"),
            ),
            (
                event_spec(|e| e.alert_severity = Some("info".into())),
                (false, "event.alert_severity"),
            ),
        ];
        for (spec, want) in cases {
            assert_eq!(spec_error(&spec), Some(want), "{spec:?}");
        }
        let mut s = event_spec(|_| {});
        s.critical = Some(3.0);
        assert_eq!(spec_error(&s), Some((true, "critical")));
        let mut s = event_spec(|_| {});
        s.metric = "cpu.percent".into();
        assert_eq!(spec_error(&s), Some((true, "metric")));
        let mut s = event_spec(|_| {});
        s.for_secs = Some(60);
        assert_eq!(spec_error(&s), Some((true, "for_secs")));
        let mut s = event_spec(|_| {});
        s.subject = Some("nginx".into());
        assert_eq!(spec_error(&s), Some((true, "subject")));
        let mut s = event_spec(|_| {});
        s.operator = Some(">".into());
        assert_eq!(spec_error(&s), Some((true, "operator")));
        // An event rule's metric without the event part: valid alone, not together.
        let s = RuleSpec {
            name: "x".into(),
            metric: "event.service_failed".into(),
            critical: Some(1.0),
            ..RuleSpec::default()
        };
        assert_eq!(spec_error(&s), Some((true, "event")));
        // No metric and no event: one of them is missing.
        let s = RuleSpec {
            name: "x".into(),
            critical: Some(1.0),
            ..RuleSpec::default()
        };
        assert_eq!(spec_error(&s), Some((true, "metric")));
        let mut d = fixtures::rule_definition();
        d.metric = String::new();
        assert_eq!(field(&d), Some("metric"));
    }

    fn fixtures_like(d: RuleDefinition) -> RuleDefinition {
        // Through JSON (the read model keeps rule events as JSON) and back.
        serde_json::from_str(&serde_json::to_string(&d).expect("json")).expect("json")
    }

    #[test]
    fn the_event_rule_fixture_is_valid() {
        assert_eq!(field(&fixtures::event_rule_definition()), None);
    }
}
