//! Threshold rules and their evaluation: pure logic, no I/O.
//!
//! A rule compares one metric (see `fleet_schemas::samples`) against a threshold. For
//! metrics with a subject (a disk's mount, a service) the rule applies to each subject
//! separately, or only to `subject` when the rule names one. One alert is open at most per
//! (rule, agent, subject). The alert id is a UUIDv5 of (rule, agent, subject, time of the
//! first breaching sample), so re-evaluating the same reports after a restart or a replay
//! yields the same ids.
//!
//! Rules come from two places, and take one path: the rules of `fleet.rules.v1`
//! ([`RuleEvent`], see [`fleet_schemas::rules`] for their meaning), and the static rules of
//! the configuration ([`StaticRule`]: an id, an optional tenant and the same fields the API
//! takes), which become rule events when the evaluator starts ([`static_rule_events`]). A
//! rule of the topic replaces a static rule of the same id. Each runs as a [`RuleDef`].
//! Choices made here:
//!
//! * **For-duration**: the breach must hold for `for_secs` of sample time, from the first
//!   breaching sample; a non-breaching sample, or a gap between two samples longer than
//!   the max gap ([`Evaluator::with_max_gap`], the loop's replay margin), starts it over.
//!   So a flapping value raises nothing.
//! * **Levels**: warning and critical. The alert is raised at the most severe level whose
//!   breach held for the for-duration. An open warning alert whose critical breach then
//!   holds for the for-duration is **escalated**: a second RAISED with the same alert id
//!   and severity CRITICAL (event id UUIDv5 of (alert id, `raised`, `critical`)). Severity
//!   never steps down on an open alert.
//! * **Recovery** (hysteresis): an open alert resolves only once `value op recovery` no
//!   longer holds; without a recovery threshold, once no level is breached. The RESOLVED
//!   event carries the recovery threshold (or the alert's) and the value.
//! * **Re-notify**: an open, unacknowledged alert whose value still breaches is raised
//!   again every `renotify_secs` of sample time: RAISED with the same alert id (event id
//!   UUIDv5 of (alert id, `raised`, `renotify`, sample time)). Consumers key on alert id.
//! * **Disabled or deleted rule**: not evaluated any more; its open alerts are resolved
//!   ([`Evaluator::resolve_retired`]), stamped with the time of the change.
//! * **Scope**: tenant (static rules without a tenant: every tenant), one agent, or the
//!   agents with a tag. An agent's tags come from the AgentLifecycle events of
//!   `fleet.agents.v1` that state them (`tags` set: UPDATED from the admin API; an empty
//!   list removes them, no `tags` leaves them as they are) through
//!   [`Evaluator::lifecycle`] ([`Evaluator::observe_agent_tags`]); an agent with no stated
//!   tags matches no tag-scoped rule.
//! * **Idle state**: the state of a (rule, agent, subject) with no open alert and nothing
//!   seen for a while is dropped ([`Evaluator::evict_idle`], at least the longest
//!   for-duration plus the max gap): its next sample starts afresh, as it would after
//!   such a gap anyway. Open alerts are kept until resolved.
//! * **Rules with label matchers** (`labels` set) watch the samples of the standard write
//!   protocols ([`Evaluator::evaluate_samples`]): every series named `metric` whose labels
//!   match is a key of its own, keyed by its unit id (as the agent) and its labels text (as
//!   the subject), with the same levels, durations, hysteresis and re-notify. They match
//!   no agent report, and agent rules match no sample of `fleet.samples.v1`.
//! * `heartbeat.absent` rules match no sample. They follow the liveness processor's
//!   AgentLifecycle events ([`Evaluator::lifecycle`]): OFFLINE raises, for every enabled
//!   rule in scope, one alert per (rule, agent) with id UUIDv5 of (rule, agent, `""`, the
//!   OFFLINE's `occurred_at`, i.e. the last-seen time) and the rule's most severe level
//!   (critical when it has one, else warning), no for-duration and no re-notify;
//!   the value is the seconds from last seen to the detection (OFFLINE's
//!   `ingested_at − occurred_at`): the heartbeat interval, needed for a count of missed
//!   heartbeats, is on no record. The threshold is carried, not compared: liveness's
//!   `liveness.offline-after` decided. The next ONLINE (after the alert's time) or a
//!   DEACTIVATED resolves it. The raise carries the OFFLINE's time, the resolve the
//!   ONLINE's (or DEACTIVATED's), so the marks rebuilt from `fleet.alerts.v1` make a
//!   re-read lifecycle event do nothing twice.
//! * **Event rules** (`event` set, see [`fleet_schemas::rules`]) match no sample. They
//!   follow the agent events of `fleet.events.v1` ([`Evaluator::agent_event`]): an event of
//!   the rule's kind whose attributes match (and severe enough) raises at once, for every
//!   enabled rule in scope, one alert per (rule, agent, subject) (the subject: the event's
//!   attribute named by `subject_attribute`), id UUIDv5 of (rule, agent, subject, the
//!   event's `occurred_at`), the rule's level as severity, value 1. While it is open, more
//!   matching events raise nothing (they move the resolve-after deadline). It resolves on
//!   a matching event of a recovery kind (stamped with that event's time) or, with
//!   `resolve_after_secs`, at (last matching event, or the raise, + resolve-after)
//!   ([`Evaluator::resolve_expired`], called with the wall clock, stamped with that
//!   deadline, so the same events give the same resolve). Every decision follows the
//!   events' times: an event not newer than its key's high-water mark (the newest event
//!   or alert event of the key) is ignored, so an agent's re-sent event, or events read
//!   again after a restart (the marks come back from `fleet.alerts.v1`), raise nothing
//!   twice. The last matching event's time is running state like a for-duration: dropped
//!   with [`Evaluator::forget_pending`], rebuilt by replaying the events of the longest
//!   resolve-after ([`Evaluator::longest_resolve_after_micros`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use fleet_schemas::rules::{event_severity_rank, RuleFieldError, RuleSpec, HEARTBEAT_ABSENT};
use fleet_schemas::samples::{self, Sample};
use fleet_schemas::series::{self, Matchers};
use fleet_schemas::{
    ids, AgentEvent, AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind, AlertSeverity,
    EventSeverity, MetricReport, RuleDefinition, RuleEvent, RuleEventKind, RuleScope, SampleBatch,
};
use serde::{Deserialize, Serialize};

/// Comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    /// `>`
    #[serde(rename = ">")]
    Gt,
    /// `>=`
    #[serde(rename = ">=")]
    Ge,
    /// `<`
    #[serde(rename = "<")]
    Lt,
    /// `<=`
    #[serde(rename = "<=")]
    Le,
    /// `==`
    #[serde(rename = "==")]
    Eq,
    /// `!=`
    #[serde(rename = "!=")]
    Ne,
}

impl Operator {
    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Operator::Gt => value > threshold,
            Operator::Ge => value >= threshold,
            Operator::Lt => value < threshold,
            Operator::Le => value <= threshold,
            Operator::Eq => value == threshold,
            Operator::Ne => value != threshold,
        }
    }

    /// The symbol.
    pub fn symbol(self) -> &'static str {
        match self {
            Operator::Gt => ">",
            Operator::Ge => ">=",
            Operator::Lt => "<",
            Operator::Le => "<=",
            Operator::Eq => "==",
            Operator::Ne => "!=",
        }
    }
}

/// A static rule of the configuration (`[[rules]]`): an id, an optional tenant (every
/// tenant when absent), and the fields of a [`RuleSpec`] as the API takes them. The
/// evaluator runs it as a rule event ([`StaticRule::event`]), as it runs the rules of
/// `fleet.rules.v1`.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticRule {
    /// Stable id (part of every alert id).
    pub id: String,
    /// Only this tenant's agents; every tenant when absent.
    pub tenant: Option<String>,
    /// The rule.
    pub spec: RuleSpec,
}

/// The table a static rule is written as: `id`, `tenant`, and the rest is the spec's.
#[derive(Serialize, Deserialize)]
struct StaticRuleTable {
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(flatten)]
    spec: serde_json::Map<String, serde_json::Value>,
}

impl<'de> Deserialize<'de> for StaticRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let t = StaticRuleTable::deserialize(d)?;
        // The spec refuses unknown fields, so a typo in a rule is an error naming it.
        let spec = RuleSpec::deserialize(serde_json::Value::Object(t.spec))
            .map_err(|e| D::Error::custom(format!("rule {:?}: {e}", t.id)))?;
        Ok(StaticRule {
            id: t.id,
            tenant: t.tenant,
            spec,
        })
    }
}

impl Serialize for StaticRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error as _;
        let spec = match serde_json::to_value(&self.spec).map_err(S::Error::custom)? {
            serde_json::Value::Object(m) => m,
            _ => return Err(S::Error::custom("a rule spec is an object")),
        };
        StaticRuleTable {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            spec: without_nulls(spec),
        }
        .serialize(s)
    }
}

/// The object without its null members, at every depth (TOML has no null: an absent key
/// reads as none).
fn without_nulls(
    m: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    m.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            serde_json::Value::Object(inner) => {
                (k, serde_json::Value::Object(without_nulls(inner)))
            }
            other => (k, other),
        })
        .collect()
}

/// Why a static rule is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {message}")]
pub struct RuleError {
    /// Rule id.
    pub rule: String,
    /// What is wrong.
    pub message: String,
}

impl StaticRule {
    /// A rule for every tenant.
    pub fn new(id: impl Into<String>, spec: RuleSpec) -> StaticRule {
        StaticRule {
            id: id.into(),
            tenant: None,
            spec,
        }
    }

    /// The rule event the evaluator runs: DEFINED, the spec checked as the API checks it,
    /// written by `config`, with time 0 (so any rule of the topic with the same id
    /// replaces it). An event of a rule for every tenant has an empty tenant id, which
    /// [`Evaluator::new`] alone reads as every tenant.
    pub fn event(&self) -> Result<RuleEvent, RuleError> {
        let e = |message: String| RuleError {
            rule: self.id.clone(),
            message,
        };
        if self.id.trim().is_empty() {
            return Err(e("id must not be empty".into()));
        }
        if self.tenant.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err(e(
                "tenant must not be empty (leave it out for every tenant)".into(),
            ));
        }
        let d = self
            .spec
            .definition(true)
            .map_err(|err| e(err.problem().to_string()))?;
        Ok(RuleEvent {
            event_id: ids::v5(&["static-rule", &self.id]).to_string(),
            rule_id: self.id.clone(),
            tenant_id: self.tenant.clone().unwrap_or_default(),
            kind: RuleEventKind::Defined,
            rule: Some(d),
            actor: Some("config".into()),
            occurred_at: 0,
            ingested_at: 0,
        })
    }
}

/// The rule events of a static rule set, checked: each rule as the API checks it, and
/// unique ids.
pub fn static_rule_events(rules: &[StaticRule]) -> Result<Vec<RuleEvent>, RuleError> {
    let mut seen = std::collections::HashSet::new();
    rules
        .iter()
        .map(|r| {
            if !seen.insert(r.id.as_str()) {
                return Err(RuleError {
                    rule: r.id.clone(),
                    message: "two rules share this id".into(),
                });
            }
            r.event()
        })
        .collect()
}

impl Operator {
    /// Parses `>`, `>=`, `<`, `<=`, `==`, `!=`.
    pub fn parse(s: &str) -> Option<Operator> {
        Some(match s {
            ">" => Operator::Gt,
            ">=" => Operator::Ge,
            "<" => Operator::Lt,
            "<=" => Operator::Le,
            "==" => Operator::Eq,
            "!=" => Operator::Ne,
            _ => return None,
        })
    }
}

/// Which agents a rule watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every agent (of the rule's tenant, or of every tenant for a tenant-less rule).
    All,
    /// One agent.
    Agent(String),
    /// The agents carrying this tag (see [`Evaluator::set_agent_tags`]).
    Tag(String),
}

/// A rule as the evaluator runs it: a static rule of the configuration or a rule of
/// `fleet.rules.v1`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleDef {
    /// Stable id (part of every alert id).
    pub id: String,
    /// Only this tenant's agents; every tenant when absent (static rules only).
    pub tenant: Option<String>,
    /// Name shown to people.
    pub name: String,
    /// Which agents.
    pub scope: Scope,
    /// Metric name.
    pub metric: String,
    /// Only this mount point or service.
    pub subject: Option<String>,
    /// Comparison.
    pub operator: Operator,
    /// Levels from the least to the most severe (one or two).
    pub levels: Vec<(AlertSeverity, f64)>,
    /// Hysteresis threshold.
    pub recovery: Option<f64>,
    /// For-duration, µs of sample time.
    pub for_micros: i64,
    /// Re-notify interval, µs (0: never).
    pub renotify_micros: i64,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// `Some`: the rule watches the standard protocols' series named `metric` that match
    /// these (each series separately); `None`: an agent metric.
    pub matchers: Option<Matchers>,
    /// `Some`: an event rule, watching the agent events of `fleet.events.v1`.
    pub event: Option<EventMatch>,
}

/// What an event rule matches, compiled from its [`fleet_schemas::EventRule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventMatch {
    /// The kind that raises.
    pub kind: String,
    /// Attributes the event must have, with these values (name order).
    pub attributes: Vec<(String, String)>,
    /// Least severity of a raising event (0 info, 1 warning, 2 critical).
    pub min_severity: usize,
    /// The attribute whose value is the alert's subject.
    pub subject_attribute: Option<String>,
    /// Kinds that resolve.
    pub recovery_kinds: Vec<String>,
    /// Resolve-after, µs of event time.
    pub resolve_after_micros: Option<i64>,
}

/// Rank of an event's severity, as [`EventMatch::min_severity`] counts.
fn severity_rank(s: EventSeverity) -> usize {
    match s {
        EventSeverity::Info => 0,
        EventSeverity::Warning => 1,
        EventSeverity::Critical => 2,
    }
}

/// What an event does to an event rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventEffect {
    /// It raises (or, on an open alert, keeps it open).
    Raise,
    /// It resolves.
    Recover,
}

impl EventMatch {
    fn compile(e: &fleet_schemas::EventRule) -> EventMatch {
        let mut attributes: Vec<(String, String)> = e
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        attributes.sort();
        EventMatch {
            kind: e.kind.clone(),
            attributes,
            min_severity: e
                .min_severity
                .as_deref()
                .and_then(event_severity_rank)
                .unwrap_or(0),
            subject_attribute: e.subject_attribute.clone(),
            recovery_kinds: e.recovery_kinds.clone(),
            resolve_after_micros: e.resolve_after_secs.map(|s| s.saturating_mul(1_000_000)),
        }
    }

    /// What `ev` does to this rule (pure): `None` when it does not match. A raising event
    /// has the rule's kind, every attribute and at least the severity; a recovering one a
    /// recovery kind and every attribute (whatever its severity).
    pub fn effect(&self, ev: &AgentEvent) -> Option<EventEffect> {
        let effect = if ev.kind == self.kind {
            EventEffect::Raise
        } else if self.recovery_kinds.contains(&ev.kind) {
            EventEffect::Recover
        } else {
            return None;
        };
        let attributes_match = self
            .attributes
            .iter()
            .all(|(k, v)| ev.attributes.get(k) == Some(v));
        if !attributes_match {
            return None;
        }
        if effect == EventEffect::Raise && severity_rank(ev.severity) < self.min_severity {
            return None;
        }
        Some(effect)
    }

    /// The subject of `ev`'s alert: the value of the subject attribute (`""`: none).
    pub fn subject<'a>(&self, ev: &'a AgentEvent) -> &'a str {
        self.subject_attribute
            .as_ref()
            .and_then(|a| ev.attributes.get(a))
            .map_or("", String::as_str)
    }
}

impl RuleDef {
    /// The rule a DEFINED event carries, checked with
    /// [`fleet_schemas::rules::check_definition`].
    pub fn from_definition(
        rule_id: &str,
        tenant_id: &str,
        d: &RuleDefinition,
    ) -> Result<RuleDef, RuleFieldError> {
        Self::compile(rule_id, Some(tenant_id), d)
    }

    /// The rule of a definition; `tenant` `None`: every tenant (static rules only).
    fn compile(
        rule_id: &str,
        tenant: Option<&str>,
        d: &RuleDefinition,
    ) -> Result<RuleDef, RuleFieldError> {
        fleet_schemas::rules::check_definition(d)?;
        let operator = Operator::parse(&d.operator).ok_or_else(|| RuleFieldError {
            field: "operator",
            message: "unknown operator".into(),
        })?;
        let scope_value = d.scope_value.clone().unwrap_or_default();
        let scope = match d.scope {
            RuleScope::Tenant => Scope::All,
            RuleScope::Agent => Scope::Agent(scope_value),
            RuleScope::Tag => Scope::Tag(scope_value),
        };
        let levels = [
            (AlertSeverity::Warning, d.warning),
            (AlertSeverity::Critical, d.critical),
        ]
        .into_iter()
        .filter_map(|(s, t)| t.map(|t| (s, t)))
        .collect();
        Ok(RuleDef {
            id: rule_id.to_owned(),
            tenant: tenant.map(str::to_owned),
            name: d.name.trim().to_owned(),
            scope,
            metric: d.metric.clone(),
            subject: d.subject.clone(),
            operator,
            levels,
            recovery: d.recovery,
            for_micros: d.for_secs.saturating_mul(1_000_000),
            renotify_micros: d.renotify_secs.saturating_mul(1_000_000),
            enabled: d.enabled,
            matchers: match &d.labels {
                Some(list) => Some(Matchers::compile(list).map_err(|(i, m)| RuleFieldError {
                    field: "labels",
                    message: format!("labels[{i}]: {m}"),
                })?),
                None => None,
            },
            event: d.event.as_ref().map(EventMatch::compile),
        })
    }

    /// Whether the rule watches this agent of this tenant.
    fn applies_to(&self, tenant: &str, agent: &str, tags: Option<&Vec<String>>) -> bool {
        if self.tenant.as_deref().is_some_and(|t| t != tenant) {
            return false;
        }
        match &self.scope {
            Scope::All => true,
            Scope::Agent(a) => a == agent,
            Scope::Tag(t) => tags.is_some_and(|tags| tags.iter().any(|x| x == t)),
        }
    }
}

/// Longest gap between two samples of one series that keeps a for-duration running, unless
/// set with [`Evaluator::with_max_gap`] (the replay margin of the loop).
pub const DEFAULT_MAX_GAP_MICROS: i64 = 120_000_000;

/// An alert open on one (rule, agent, subject).
#[derive(Debug, Clone)]
struct OpenAlert {
    alert_id: String,
    tenant_id: String,
    rule_name: String,
    metric: String,
    operator: String,
    severity: AlertSeverity,
    threshold: f64,
    /// Latest value seen (the value of a resolve by rule deletion).
    value: f64,
    /// Sample time of the latest RAISED (first raise, escalation or re-notify).
    notified_at: i64,
    acknowledged: bool,
}

/// State of one (rule, agent, subject).
#[derive(Debug, Clone, Default)]
struct KeyState {
    /// High-water mark: the newest sample evaluated or alert event written by an
    /// evaluator; older (or equal) samples are not evaluated again.
    mark: Option<i64>,
    /// Time of the previous evaluated sample (gap detection).
    prev_at: Option<i64>,
    /// Per level, since when it has been breached without interruption.
    since: [Option<i64>; 2],
    open: Option<OpenAlert>,
    /// Id of the latest alert raised on this key (`heartbeat.absent` keys only): an OFFLINE
    /// read again after its alert was resolved by a user raises nothing.
    last_alert: Option<String>,
}

impl KeyState {
    fn reset_pending(&mut self) {
        self.prev_at = None;
        self.since = [None; 2];
    }

    /// Time of the newest sample or alert event seen on this key.
    fn newest(&self) -> Option<i64> {
        self.mark.max(self.prev_at)
    }
}

/// Shrinks a map that is mostly empty space after entries were dropped (a map keeps its
/// largest capacity otherwise, so a burst of names would hold its memory for good).
fn shrink<K: std::hash::Hash + Eq, V>(m: &mut HashMap<K, V>) {
    if m.capacity() > 4 * m.len() + 16 {
        m.shrink_to_fit();
    }
}

/// State per agent: rule id, then subject (`""` for none).
type AgentState = HashMap<Arc<str>, HashMap<String, KeyState>>;

/// Evaluates reports against rules. Pure: no I/O, no clock (times come in as arguments).
///
/// Its state, open alerts and running for-durations, is rebuilt by the loop: open alerts
/// from `fleet.alerts.v1` ([`Evaluator::observe`]), for-durations by evaluating again the
/// reports of the replay window (the high-water marks make that emit nothing twice).
#[derive(Debug)]
pub struct Evaluator {
    static_rules: Vec<RuleDef>,
    /// Rules of `fleet.rules.v1`, by id.
    topic_rules: HashMap<String, RuleDef>,
    /// When a topic rule was deleted or disabled (µs), for the resolves that follow.
    retired_at: HashMap<String, i64>,
    /// Enabled rules, indexed below.
    active: Vec<RuleDef>,
    global: HashMap<String, Vec<usize>>,
    by_tenant: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Rules on the standard protocols' series, indexed like the two above.
    sample_global: HashMap<String, Vec<usize>>,
    sample_by_tenant: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Event rules (indexes into `active`).
    event_rules: Vec<usize>,
    state: HashMap<String, AgentState>,
    tags: HashMap<String, Vec<String>>,
    open_count: usize,
    max_gap: i64,
}

impl Default for Evaluator {
    fn default() -> Self {
        Evaluator::with_static(Vec::new())
    }
}

impl Evaluator {
    /// An evaluator over the static rules, as rule events ([`static_rule_events`]); an
    /// event with an empty tenant id is a rule for every tenant. A rule that is not valid
    /// is refused.
    pub fn new(static_rules: &[RuleEvent]) -> Result<Evaluator, RuleError> {
        let static_rules = static_rules
            .iter()
            .map(|ev| {
                let tenant = Some(ev.tenant_id.as_str()).filter(|t| !t.is_empty());
                let d = match (ev.kind, &ev.rule) {
                    (RuleEventKind::Defined, Some(d)) => d,
                    _ => {
                        return Err(RuleError {
                            rule: ev.rule_id.clone(),
                            message: "a static rule is a DEFINED event with its rule".into(),
                        })
                    }
                };
                RuleDef::compile(&ev.rule_id, tenant, d).map_err(|e| RuleError {
                    rule: ev.rule_id.clone(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Evaluator::with_static(static_rules))
    }

    fn with_static(static_rules: Vec<RuleDef>) -> Evaluator {
        let mut ev = Evaluator {
            static_rules,
            topic_rules: HashMap::new(),
            retired_at: HashMap::new(),
            active: Vec::new(),
            global: HashMap::new(),
            by_tenant: HashMap::new(),
            sample_global: HashMap::new(),
            sample_by_tenant: HashMap::new(),
            event_rules: Vec::new(),
            state: HashMap::new(),
            tags: HashMap::new(),
            open_count: 0,
            max_gap: DEFAULT_MAX_GAP_MICROS,
        };
        ev.reindex();
        ev
    }

    /// Sets the longest gap between two samples of a series that keeps its for-duration
    /// running (a longer gap starts it over). The loop sets its replay margin here, so a
    /// replay of (longest for-duration + margin) rebuilds exactly the running durations.
    pub fn with_max_gap(mut self, micros: i64) -> Evaluator {
        self.max_gap = micros.max(0);
        self
    }

    /// Adds or replaces one rule (tests, benches; the loop uses [`Evaluator::apply_rule_event`]).
    pub fn upsert_rule(&mut self, rule: RuleDef) {
        if rule.enabled {
            self.retired_at.remove(&rule.id);
        }
        self.topic_rules.insert(rule.id.clone(), rule);
        self.reindex();
    }

    /// Folds a rule event of `fleet.rules.v1`: DEFINED adds or replaces the rule (a
    /// disabled one stops being evaluated), DELETED removes it. The open alerts of a
    /// deleted or disabled rule are resolved by [`Evaluator::resolve_retired`]. A rule that
    /// is not valid is refused (and a previous version of it stays).
    pub fn apply_rule_event(&mut self, ev: &RuleEvent) -> Result<(), RuleFieldError> {
        match (ev.kind, &ev.rule) {
            (RuleEventKind::Defined, Some(d)) => {
                let rule = RuleDef::from_definition(&ev.rule_id, &ev.tenant_id, d)?;
                if rule.enabled {
                    self.retired_at.remove(&rule.id);
                } else {
                    self.retired_at
                        .entry(rule.id.clone())
                        .or_insert(ev.occurred_at);
                }
                self.topic_rules.insert(rule.id.clone(), rule);
            }
            (RuleEventKind::Defined, None) => {
                return Err(RuleFieldError {
                    field: "rule",
                    message: "a DEFINED event must carry the rule".into(),
                })
            }
            (RuleEventKind::Deleted, _) => {
                if self.topic_rules.remove(&ev.rule_id).is_some() {
                    self.retired_at.insert(ev.rule_id.clone(), ev.occurred_at);
                }
            }
        }
        self.reindex();
        Ok(())
    }

    /// Tags of an agent, for rules scoped to a tag.
    pub fn set_agent_tags(&mut self, agent_id: &str, tags: Vec<String>) {
        self.tags.insert(agent_id.to_owned(), tags);
    }

    /// Takes the agent's tags from a lifecycle event that states them (`tags: Some`, an
    /// empty list meaning none); an event without `tags` leaves them as they are. The loop
    /// also calls this alone when it rebuilds the tags from `fleet.agents.v1`.
    pub fn observe_agent_tags(&mut self, ev: &AgentLifecycle) {
        if let Some(tags) = &ev.tags {
            self.set_agent_tags(&ev.agent_id, tags.clone());
        }
    }

    fn reindex(&mut self) {
        let mut by_id: HashMap<&str, &RuleDef> = HashMap::new();
        for r in &self.static_rules {
            by_id.insert(&r.id, r);
        }
        // A rule of the topic replaces a static rule of the same id.
        for r in self.topic_rules.values() {
            by_id.insert(&r.id, r);
        }
        let mut active: Vec<RuleDef> = by_id.into_values().filter(|r| r.enabled).cloned().collect();
        active.sort_by(|a, b| a.id.cmp(&b.id));
        self.global.clear();
        self.by_tenant.clear();
        self.sample_global.clear();
        self.sample_by_tenant.clear();
        self.event_rules.clear();
        for (i, r) in active.iter().enumerate() {
            if r.event.is_some() {
                self.event_rules.push(i);
                continue;
            }
            let (global, by_tenant) = if r.matchers.is_some() {
                (&mut self.sample_global, &mut self.sample_by_tenant)
            } else {
                (&mut self.global, &mut self.by_tenant)
            };
            let m = match &r.tenant {
                None => global,
                Some(t) => by_tenant.entry(t.clone()).or_default(),
            };
            m.entry(r.metric.clone()).or_default().push(i);
        }
        self.active = active;
    }

    /// The rules evaluated now (enabled ones).
    pub fn active_rules(&self) -> &[RuleDef] {
        &self.active
    }

    /// The longest for-duration of the active rules, µs.
    pub fn longest_for_micros(&self) -> i64 {
        self.active.iter().map(|r| r.for_micros).max().unwrap_or(0)
    }

    /// The longest resolve-after of the active event rules, µs: the events replayed when a
    /// partition is taken, to find each open alert's last matching event again.
    pub fn longest_resolve_after_micros(&self) -> i64 {
        self.active
            .iter()
            .filter_map(|r| r.event.as_ref()?.resolve_after_micros)
            .max()
            .unwrap_or(0)
    }

    /// Number of open alerts held.
    pub fn open_alerts(&self) -> usize {
        self.open_count
    }

    /// Forgets the state of the (rule, agent, subject) series with no open alert and
    /// nothing seen (sample or alert event) since `now_micros − idle_micros`, so subjects
    /// and agents that went away (a removed mount, a retired machine, names an agent
    /// made up) do not hold memory for good. The idle time is raised to at least the
    /// longest for-duration plus the max gap: such a series' next sample would start its
    /// for-duration over anyway (the gap), and a replay window never reaches back to it.
    /// An open alert is never dropped (its recovery must resolve it). Returns how many
    /// series were dropped.
    pub fn evict_idle(&mut self, now_micros: i64, idle_micros: i64) -> usize {
        let longest = self
            .longest_for_micros()
            .max(self.longest_resolve_after_micros());
        let idle = idle_micros.max(longest.saturating_add(self.max_gap));
        let before = now_micros.saturating_sub(idle);
        let mut dropped = 0;
        self.state.retain(|_, rules| {
            rules.retain(|_, subjects| {
                let n = subjects.len();
                subjects.retain(|_, k| k.open.is_some() || k.newest().is_some_and(|t| t >= before));
                dropped += n - subjects.len();
                shrink(subjects);
                !subjects.is_empty()
            });
            shrink(rules);
            !rules.is_empty()
        });
        shrink(&mut self.state);
        dropped
    }

    /// Number of (rule, agent, subject) series the evaluator holds state for.
    pub fn tracked_series(&self) -> usize {
        self.state
            .values()
            .flat_map(|rules| rules.values())
            .map(HashMap::len)
            .sum()
    }

    /// Whether the evaluator holds state (running durations, marks, open alerts) of this
    /// agent or unit.
    pub fn tracks(&self, agent: &str) -> bool {
        self.state.contains_key(agent)
    }

    /// Drops the running for-durations of the agents `which` selects (their partition moved
    /// here or away: the replay rebuilds them). Open alerts and marks stay.
    pub fn forget_pending(&mut self, mut which: impl FnMut(&str) -> bool) {
        for (agent, rules) in &mut self.state {
            if which(agent) {
                for k in rules.values_mut().flat_map(|s| s.values_mut()) {
                    k.reset_pending();
                }
            }
        }
    }

    /// Folds an alert event from the log into the state (rebuild on start, and the events
    /// of other writers while running: other evaluator instances, users acknowledging or
    /// resolving). Events an evaluator wrote move the key's high-water mark to the time of
    /// the sample behind them, so reports up to it that are read again (a replay, or a
    /// restart before the offsets were committed) are not evaluated a second time. Events
    /// of users (with an actor) carry wall-clock times and do not move it.
    pub fn observe(&mut self, ev: &AlertEvent) {
        let subject = ev.subject.as_deref().unwrap_or("");
        let mut opened = 0isize;
        let key = key_mut(&mut self.state, &ev.rule_id, &ev.agent_id, subject);
        if ev.actor.is_none() {
            key.mark = Some(key.mark.map_or(ev.occurred_at, |m| m.max(ev.occurred_at)));
        }
        match ev.kind {
            AlertEventKind::Raised => match &mut key.open {
                Some(o) if o.alert_id == ev.alert_id => {
                    // An escalation or a re-notification of the open alert.
                    if ev.severity > o.severity {
                        o.severity = ev.severity;
                        o.threshold = ev.threshold;
                    }
                    o.notified_at = o.notified_at.max(ev.occurred_at);
                    o.value = ev.value;
                }
                other => {
                    if other.is_none() {
                        opened = 1;
                    }
                    if ev.metric == HEARTBEAT_ABSENT {
                        key.last_alert = Some(ev.alert_id.clone());
                    }
                    *other = Some(OpenAlert {
                        alert_id: ev.alert_id.clone(),
                        tenant_id: ev.tenant_id.clone(),
                        rule_name: ev.rule_name.clone(),
                        metric: ev.metric.clone(),
                        operator: ev.operator.clone(),
                        severity: ev.severity,
                        threshold: ev.threshold,
                        value: ev.value,
                        notified_at: ev.occurred_at,
                        acknowledged: false,
                    });
                    key.reset_pending();
                }
            },
            AlertEventKind::Resolved => {
                if key.open.as_ref().is_some_and(|o| o.alert_id == ev.alert_id) {
                    key.open = None;
                    key.reset_pending();
                    opened = -1;
                }
            }
            AlertEventKind::Acknowledged => {
                if let Some(o) = key.open.as_mut().filter(|o| o.alert_id == ev.alert_id) {
                    o.acknowledged = true;
                }
            }
        }
        self.open_count = self.open_count.saturating_add_signed(opened);
    }

    /// Resolves the open alerts of rules that were deleted or disabled (or are gone from
    /// the configuration), for the (agent, alert metric) pairs `owned` selects (those on
    /// this instance's partitions: of `fleet.agents.v1` for `heartbeat.absent`, of
    /// `fleet.metrics.v1` otherwise). Stamped with the time of the deletion (or
    /// `now_micros` when unknown).
    pub fn resolve_retired(
        &mut self,
        now_micros: i64,
        mut owned: impl FnMut(&str, &str) -> bool,
    ) -> Vec<AlertEvent> {
        let active: HashSet<&str> = self.active.iter().map(|r| r.id.as_str()).collect();
        let mut out = Vec::new();
        for (agent, rules) in &mut self.state {
            for (rule_id, subjects) in rules.iter_mut() {
                if active.contains(&**rule_id) {
                    continue;
                }
                let at = self
                    .retired_at
                    .get(&**rule_id)
                    .copied()
                    .unwrap_or(now_micros);
                let deleted = !self.topic_rules.contains_key(&**rule_id);
                for (subject, key) in subjects.iter_mut() {
                    if !key.open.as_ref().is_some_and(|o| owned(agent, &o.metric)) {
                        continue;
                    }
                    let Some(open) = key.open.take() else {
                        continue;
                    };
                    key.reset_pending();
                    key.mark = Some(key.mark.map_or(at, |m| m.max(at)));
                    self.open_count = self.open_count.saturating_sub(1);
                    let subject = (!subject.is_empty()).then(|| subject.clone());
                    let series = samples::series_name(&open.metric, subject.as_deref());
                    let why = if deleted { "deleted" } else { "disabled" };
                    out.push(AlertEvent {
                        event_id: ids::v5(&[&open.alert_id, AlertEventKind::Resolved.as_str()])
                            .to_string(),
                        message: format!("{}: {series}: rule {why}", open.rule_name),
                        alert_id: open.alert_id,
                        tenant_id: open.tenant_id,
                        agent_id: agent.clone(),
                        kind: AlertEventKind::Resolved,
                        rule_id: rule_id.to_string(),
                        rule_name: open.rule_name,
                        metric: open.metric,
                        subject,
                        severity: open.severity,
                        operator: open.operator,
                        threshold: open.threshold,
                        value: open.value,
                        actor: None,
                        occurred_at: at,
                        ingested_at: now_micros,
                    });
                }
            }
        }
        out
    }

    /// Evaluates one report; returns the alert events it causes, in order.
    pub fn evaluate(&mut self, report: &MetricReport, now_micros: i64) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let tenant_rules = self.by_tenant.get(&report.tenant_id);
        if self.global.is_empty() && tenant_rules.is_none() {
            return out;
        }
        let Evaluator {
            active,
            global,
            state,
            tags,
            open_count,
            max_gap,
            ..
        } = self;
        let tags = tags.get(&report.agent_id);
        let at = At {
            tenant: &report.tenant_id,
            agent: &report.agent_id,
            t: report.occurred_at,
        };
        samples::for_each_sample(report, |metric, subject, value| {
            for i in [global.get(metric), tenant_rules.and_then(|m| m.get(metric))]
                .into_iter()
                .flatten()
                .flatten()
            {
                let rule = &active[*i];
                if rule.subject.is_some() && rule.subject.as_deref() != subject {
                    continue;
                }
                if !rule.applies_to(&report.tenant_id, &report.agent_id, tags) {
                    continue;
                }
                let opened = step(
                    rule,
                    state,
                    *max_gap,
                    &at,
                    (metric, subject, value),
                    now_micros,
                    &mut out,
                );
                *open_count = open_count.saturating_add_signed(opened);
            }
        });
        out
    }

    /// Evaluates the samples of one batch of `fleet.samples.v1` against the rules with
    /// label matchers: each matching series is a key of its own (its unit id as the
    /// agent, its labels as the subject, see `fleet_schemas::series`). NaN samples
    /// (Prometheus' staleness markers) and infinities are not evaluated. Returns the alert
    /// events, in order.
    ///
    /// `on_unit` is called with the unit id of each series a rule watched (the loop
    /// remembers which partition it came from, for ownership).
    pub fn evaluate_samples(
        &mut self,
        batch: &SampleBatch,
        now_micros: i64,
        mut on_unit: impl FnMut(&str),
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let tenant_rules = self.sample_by_tenant.get(&batch.tenant_id);
        if self.sample_global.is_empty() && tenant_rules.is_none() {
            return out;
        }
        let Evaluator {
            active,
            sample_global,
            state,
            open_count,
            max_gap,
            ..
        } = self;
        for s in &batch.samples {
            if !s.value.is_finite() {
                continue;
            }
            let mut keyed: Option<(String, String)> = None;
            for i in [
                sample_global.get(&s.metric),
                tenant_rules.and_then(|m| m.get(&s.metric)),
            ]
            .into_iter()
            .flatten()
            .flatten()
            {
                let rule = &active[*i];
                if rule.tenant.as_deref().is_some_and(|t| t != batch.tenant_id)
                    || !rule.matchers.as_ref().is_some_and(|m| m.matches(&s.labels))
                {
                    continue;
                }
                let (unit, subject) = keyed.get_or_insert_with(|| {
                    let unit = series::unit_id(&s.metric, &s.labels);
                    on_unit(&unit);
                    (unit, series::labels_text(&s.labels))
                });
                let at = At {
                    tenant: &batch.tenant_id,
                    agent: unit,
                    t: s.timestamp,
                };
                let subject = Some(subject.as_str()).filter(|x| !x.is_empty());
                let opened = step(
                    rule,
                    state,
                    *max_gap,
                    &at,
                    (&s.metric, subject, s.value),
                    now_micros,
                    &mut out,
                );
                *open_count = open_count.saturating_add_signed(opened);
            }
        }
        out
    }

    /// Folds an AgentLifecycle event of `fleet.agents.v1` into the `heartbeat.absent`
    /// rules (see the module docs): OFFLINE raises one alert per enabled rule in scope for
    /// the agent, unless the (rule, agent) has one open, already raised this one, or has
    /// seen something newer; ONLINE resolves the open ones older than it; DEACTIVATED
    /// resolves the open ones; other kinds do nothing. An event that states the agent's
    /// tags sets them first ([`Evaluator::observe_agent_tags`]), whatever its kind.
    /// Returns the alert events, in order.
    pub fn lifecycle(&mut self, ev: &AgentLifecycle, now_micros: i64) -> Vec<AlertEvent> {
        self.observe_agent_tags(ev);
        match ev.kind {
            AgentLifecycleKind::Offline => self.offline(ev, now_micros),
            AgentLifecycleKind::Online => self.resolve_absent(ev, now_micros, true),
            AgentLifecycleKind::Deactivated => self.resolve_absent(ev, now_micros, false),
            AgentLifecycleKind::Registered | AgentLifecycleKind::Updated => Vec::new(),
        }
    }

    fn offline(&mut self, ev: &AgentLifecycle, now_micros: i64) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let Evaluator {
            active,
            global,
            by_tenant,
            state,
            tags,
            open_count,
            ..
        } = self;
        let tags = tags.get(&ev.agent_id);
        let t = ev.occurred_at;
        let at = t.to_string();
        // Seconds from last seen to the detection.
        let value = (ev.ingested_at.saturating_sub(t).max(0) / 1_000_000) as f64;
        for i in [
            global.get(HEARTBEAT_ABSENT),
            by_tenant
                .get(&ev.tenant_id)
                .and_then(|m| m.get(HEARTBEAT_ABSENT)),
        ]
        .into_iter()
        .flatten()
        .flatten()
        {
            let rule = &active[*i];
            if !rule.applies_to(&ev.tenant_id, &ev.agent_id, tags) {
                continue;
            }
            let alert_id = ids::v5(&[&rule.id, &ev.agent_id, "", &at]).to_string();
            let key = key_mut(state, &rule.id, &ev.agent_id, "");
            if key.open.is_some()
                || key.last_alert.as_deref() == Some(alert_id.as_str())
                || key.mark.is_some_and(|m| m > t)
            {
                continue;
            }
            let (severity, threshold) = rule
                .levels
                .last()
                .copied()
                .unwrap_or((AlertSeverity::Warning, 0.0));
            let operator = rule.operator.symbol().to_owned();
            let since = fleet_schemas::time::from_micros(t).to_rfc3339();
            out.push(AlertEvent {
                event_id: ids::v5(&[&alert_id, AlertEventKind::Raised.as_str()]).to_string(),
                alert_id: alert_id.clone(),
                tenant_id: ev.tenant_id.clone(),
                agent_id: ev.agent_id.clone(),
                kind: AlertEventKind::Raised,
                rule_id: rule.id.clone(),
                rule_name: rule.name.clone(),
                metric: HEARTBEAT_ABSENT.to_owned(),
                subject: None,
                severity,
                operator: operator.clone(),
                threshold,
                value,
                message: format!(
                    "{}: agent offline, no heartbeat for {value} s (last seen {since})",
                    rule.name
                ),
                actor: None,
                occurred_at: t,
                ingested_at: now_micros,
            });
            key.open = Some(OpenAlert {
                alert_id: alert_id.clone(),
                tenant_id: ev.tenant_id.clone(),
                rule_name: rule.name.clone(),
                metric: HEARTBEAT_ABSENT.to_owned(),
                operator,
                severity,
                threshold,
                value,
                notified_at: t,
                acknowledged: false,
            });
            key.last_alert = Some(alert_id);
            key.mark = Some(key.mark.map_or(t, |m| m.max(t)));
            *open_count = open_count.saturating_add(1);
        }
        out
    }

    /// Resolves the agent's open `heartbeat.absent` alerts: those older than an ONLINE
    /// (`online`), or all of them (DEACTIVATED).
    fn resolve_absent(
        &mut self,
        ev: &AgentLifecycle,
        now_micros: i64,
        online: bool,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let Some(rules) = self.state.get_mut(&ev.agent_id) else {
            return out;
        };
        let t = ev.occurred_at;
        let why = if online {
            "agent back online"
        } else {
            "agent deactivated"
        };
        let mut keys: Vec<_> = rules.iter_mut().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (rule_id, subjects) in keys {
            let Some(key) = subjects.get_mut("") else {
                continue;
            };
            let due = key
                .open
                .as_ref()
                .is_some_and(|o| o.metric == HEARTBEAT_ABSENT)
                && (!online || key.mark.is_none_or(|m| m < t));
            if !due {
                continue;
            }
            let Some(open) = key.open.take() else {
                continue;
            };
            key.reset_pending();
            key.mark = Some(key.mark.map_or(t, |m| m.max(t)));
            self.open_count = self.open_count.saturating_sub(1);
            out.push(AlertEvent {
                event_id: ids::v5(&[&open.alert_id, AlertEventKind::Resolved.as_str()]).to_string(),
                message: format!("{}: {why}", open.rule_name),
                alert_id: open.alert_id,
                tenant_id: open.tenant_id,
                agent_id: ev.agent_id.clone(),
                kind: AlertEventKind::Resolved,
                rule_id: rule_id.to_string(),
                rule_name: open.rule_name,
                metric: open.metric,
                subject: None,
                severity: open.severity,
                operator: open.operator,
                threshold: open.threshold,
                value: 0.0,
                actor: None,
                occurred_at: t,
                ingested_at: now_micros,
            });
        }
        out
    }

    /// Folds an agent event of `fleet.events.v1` into the event rules (see the module
    /// docs): for every enabled event rule in scope the event matches, an open alert whose
    /// resolve-after deadline passed before the event resolves first (at the deadline);
    /// then a raising event raises unless the key has one open (which it keeps open
    /// longer), a recovering one resolves the open one. An event not newer than its key's
    /// mark does nothing. Returns the alert events, in order.
    pub fn agent_event(&mut self, ev: &AgentEvent, now_micros: i64) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let Evaluator {
            active,
            event_rules,
            state,
            tags,
            open_count,
            ..
        } = self;
        let tags = tags.get(&ev.agent_id);
        let t = ev.occurred_at;
        for i in event_rules.iter() {
            let rule = &active[*i];
            let Some(m) = rule.event.as_ref() else {
                continue;
            };
            let Some(effect) = m.effect(ev) else {
                continue;
            };
            if !rule.applies_to(&ev.tenant_id, &ev.agent_id, tags) {
                continue;
            }
            let subject = m.subject(ev);
            let key = key_mut(state, &rule.id, &ev.agent_id, subject);
            if key.mark.is_some_and(|mark| mark >= t) {
                continue;
            }
            if let Some(deadline) = expiry(key, m).filter(|d| *d <= t) {
                let why = Resolution::Quiet(m);
                if let Some(r) =
                    resolve_event(rule, &ev.agent_id, subject, key, deadline, now_micros, why)
                {
                    out.push(r);
                    *open_count = open_count.saturating_sub(1);
                }
            }
            key.mark = Some(t);
            match effect {
                EventEffect::Raise if key.open.is_some() => {
                    key.prev_at = Some(t);
                }
                EventEffect::Raise => {
                    key.prev_at = Some(t);
                    let alert_id =
                        ids::v5(&[&rule.id, &ev.agent_id, subject, &t.to_string()]).to_string();
                    let (severity, threshold) = rule
                        .levels
                        .last()
                        .copied()
                        .unwrap_or((AlertSeverity::Warning, 1.0));
                    let subject = (!subject.is_empty()).then(|| subject.to_owned());
                    let on = subject
                        .as_deref()
                        .map(|s| format!(" ({s})"))
                        .unwrap_or_default();
                    out.push(AlertEvent {
                        event_id: ids::v5(&[&alert_id, AlertEventKind::Raised.as_str()])
                            .to_string(),
                        alert_id: alert_id.clone(),
                        tenant_id: ev.tenant_id.clone(),
                        agent_id: ev.agent_id.clone(),
                        kind: AlertEventKind::Raised,
                        rule_id: rule.id.clone(),
                        rule_name: rule.name.clone(),
                        metric: rule.metric.clone(),
                        subject,
                        severity,
                        operator: rule.operator.symbol().to_owned(),
                        threshold,
                        value: 1.0,
                        message: format!("{}: {}{on}: {}", rule.name, ev.kind, ev.message),
                        actor: None,
                        occurred_at: t,
                        ingested_at: now_micros,
                    });
                    key.open = Some(OpenAlert {
                        alert_id,
                        tenant_id: ev.tenant_id.clone(),
                        rule_name: rule.name.clone(),
                        metric: rule.metric.clone(),
                        operator: rule.operator.symbol().to_owned(),
                        severity,
                        threshold,
                        value: 1.0,
                        notified_at: t,
                        acknowledged: false,
                    });
                    *open_count = open_count.saturating_add(1);
                }
                EventEffect::Recover => {
                    let why = Resolution::Recovered(&ev.kind);
                    if let Some(r) =
                        resolve_event(rule, &ev.agent_id, subject, key, t, now_micros, why)
                    {
                        out.push(r);
                        *open_count = open_count.saturating_sub(1);
                    }
                }
            }
        }
        out
    }

    /// Resolves the open alerts of event rules whose resolve-after deadline (last matching
    /// event, or the raise, + resolve-after) is at or before `now_micros`, for the agents
    /// `ready` selects (those whose events this member has read up to where it stood when
    /// it took their partition: a deadline is only known once the replay is done). Each
    /// resolve carries the deadline as its time.
    pub fn resolve_expired(
        &mut self,
        now_micros: i64,
        mut ready: impl FnMut(&str) -> bool,
    ) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        let rules: HashMap<&str, &RuleDef> = self
            .event_rules
            .iter()
            .map(|i| &self.active[*i])
            .filter(|r| {
                r.event
                    .as_ref()
                    .is_some_and(|m| m.resolve_after_micros.is_some())
            })
            .map(|r| (r.id.as_str(), r))
            .collect();
        if rules.is_empty() {
            return out;
        }
        let mut agents: Vec<(&String, &mut AgentState)> = self.state.iter_mut().collect();
        agents.sort_by(|a, b| a.0.cmp(b.0));
        for (agent, by_rule) in agents {
            if !ready(agent) {
                continue;
            }
            for (rule_id, subjects) in by_rule.iter_mut() {
                let Some(rule) = rules.get(&**rule_id) else {
                    continue;
                };
                let Some(m) = rule.event.as_ref() else {
                    continue;
                };
                for (subject, key) in subjects.iter_mut() {
                    let Some(deadline) = expiry(key, m).filter(|d| *d <= now_micros) else {
                        continue;
                    };
                    let why = Resolution::Quiet(m);
                    if let Some(r) =
                        resolve_event(rule, agent, subject, key, deadline, now_micros, why)
                    {
                        out.push(r);
                        self.open_count = self.open_count.saturating_sub(1);
                    }
                }
            }
        }
        out
    }
}

/// When the open alert of an event rule's key resolves by itself: the last matching event
/// (or the raise) plus the rule's resolve-after; `None` without either.
fn expiry(key: &KeyState, m: &EventMatch) -> Option<i64> {
    let open = key.open.as_ref()?;
    let after = m.resolve_after_micros?;
    let last = key
        .prev_at
        .map_or(open.notified_at, |p| p.max(open.notified_at));
    Some(last.saturating_add(after))
}

/// Why an event rule's alert resolves.
#[derive(Debug, Clone, Copy)]
enum Resolution<'a> {
    /// An event of this recovery kind.
    Recovered(&'a str),
    /// No matching event for the rule's resolve-after.
    Quiet(&'a EventMatch),
}

/// Takes the key's open alert, if any, and returns its RESOLVED at `t` (which becomes the
/// key's mark). The caller counts the open alert gone.
fn resolve_event(
    rule: &RuleDef,
    agent: &str,
    subject: &str,
    key: &mut KeyState,
    t: i64,
    now_micros: i64,
    why: Resolution<'_>,
) -> Option<AlertEvent> {
    let open = key.open.take()?;
    key.reset_pending();
    key.mark = Some(key.mark.map_or(t, |m| m.max(t)));
    let OpenAlert {
        alert_id,
        tenant_id,
        severity,
        threshold,
        ..
    } = open;
    let subject = (!subject.is_empty()).then(|| subject.to_owned());
    let on = subject
        .as_deref()
        .map(|s| format!(" ({s})"))
        .unwrap_or_default();
    let message = match why {
        Resolution::Recovered(kind) => format!("{}{on}: {kind}", rule.name),
        Resolution::Quiet(m) => format!(
            "{}{on}: no {} for {} s",
            rule.name,
            m.kind,
            m.resolve_after_micros.unwrap_or(0) / 1_000_000
        ),
    };
    Some(AlertEvent {
        event_id: ids::v5(&[&alert_id, AlertEventKind::Resolved.as_str()]).to_string(),
        alert_id,
        tenant_id,
        agent_id: agent.to_owned(),
        kind: AlertEventKind::Resolved,
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        metric: rule.metric.clone(),
        subject,
        severity,
        operator: rule.operator.symbol().to_owned(),
        threshold,
        value: 0.0,
        message,
        actor: None,
        occurred_at: t,
        ingested_at: now_micros,
    })
}

/// The state of one (rule, agent, subject), created when missing.
fn key_mut<'a>(
    state: &'a mut HashMap<String, AgentState>,
    rule: &str,
    agent: &str,
    subject: &str,
) -> &'a mut KeyState {
    if !state.contains_key(agent) {
        state.insert(agent.to_owned(), AgentState::new());
    }
    let rules = state.get_mut(agent).expect("inserted above");
    if !rules.contains_key(rule) {
        rules.insert(Arc::from(rule), HashMap::new());
    }
    let subjects = rules.get_mut(rule).expect("inserted above");
    if !subjects.contains_key(subject) {
        subjects.insert(subject.to_owned(), KeyState::default());
    }
    subjects.get_mut(subject).expect("inserted above")
}

/// Where and when a sample was taken: its tenant, its agent (or the unit id of a
/// standard protocols' series, `fleet_schemas::series::unit_id`) and its time (µs).
#[derive(Debug, Clone, Copy)]
struct At<'a> {
    tenant: &'a str,
    agent: &'a str,
    t: i64,
}

/// One sample against one rule; returns the change of the open-alert count.
fn step(
    rule: &RuleDef,
    state: &mut HashMap<String, AgentState>,
    max_gap: i64,
    at: &At<'_>,
    (metric, sample_subject, v): (&str, Option<&str>, f64),
    now_micros: i64,
    out: &mut Vec<AlertEvent>,
) -> isize {
    let t = at.t;
    let subject = sample_subject.unwrap_or("");
    // Built only when an event is written.
    let sample = || Sample {
        metric: metric.to_owned(),
        subject: sample_subject.map(str::to_owned),
        value: v,
    };
    let key = key_mut(state, &rule.id, at.agent, subject);
    // Reports may arrive late or twice: only the newest sample decides.
    if key.mark.is_some_and(|m| m >= t) {
        return 0;
    }
    key.mark = Some(t);
    if key.prev_at.is_some_and(|p| t.saturating_sub(p) > max_gap) {
        key.since = [None; 2];
    }
    key.prev_at = Some(t);
    for (lvl, (_, threshold)) in rule.levels.iter().enumerate().take(2) {
        if rule.operator.holds(v, *threshold) {
            key.since[lvl].get_or_insert(t);
        } else {
            key.since[lvl] = None;
        }
    }
    let breaching = key.since.iter().any(Option::is_some);
    // The most severe level whose breach held for the for-duration.
    let held = (0..rule.levels.len().min(2))
        .rev()
        .find(|&l| key.since[l].is_some_and(|s| t.saturating_sub(s) >= rule.for_micros));
    let mut opened = 0isize;
    match &mut key.open {
        None => {
            if let Some(l) = held {
                let first = key.since.iter().flatten().min().copied().unwrap_or(t);
                let (severity, threshold) = rule.levels[l];
                let alert_id =
                    ids::v5(&[&rule.id, at.agent, subject, &first.to_string()]).to_string();
                let ev = event(
                    rule,
                    at,
                    &sample(),
                    &alert_id,
                    AlertEventKind::Raised,
                    Note::Raised,
                    severity,
                    threshold,
                    now_micros,
                );
                key.open = Some(OpenAlert {
                    alert_id,
                    tenant_id: at.tenant.to_owned(),
                    rule_name: rule.name.clone(),
                    metric: metric.to_owned(),
                    operator: rule.operator.symbol().to_owned(),
                    severity,
                    threshold,
                    value: v,
                    notified_at: t,
                    acknowledged: false,
                });
                opened = 1;
                out.push(ev);
            }
        }
        Some(open) => {
            open.value = v;
            let recovered = match rule.recovery {
                Some(r) => !rule.operator.holds(v, r),
                None => !breaching,
            };
            if recovered {
                let threshold = rule.recovery.unwrap_or(open.threshold);
                let ev = event(
                    rule,
                    at,
                    &sample(),
                    &open.alert_id,
                    AlertEventKind::Resolved,
                    Note::Resolved,
                    open.severity,
                    threshold,
                    now_micros,
                );
                key.open = None;
                key.since = [None; 2];
                opened = -1;
                out.push(ev);
            } else if let Some((severity, threshold)) = held
                .map(|l| rule.levels[l])
                .filter(|(s, _)| *s > open.severity)
            {
                open.severity = severity;
                open.threshold = threshold;
                open.notified_at = t;
                out.push(event(
                    rule,
                    at,
                    &sample(),
                    &open.alert_id,
                    AlertEventKind::Raised,
                    Note::Escalated,
                    severity,
                    threshold,
                    now_micros,
                ));
            } else if rule.renotify_micros > 0
                && breaching
                && !open.acknowledged
                && t.saturating_sub(open.notified_at) >= rule.renotify_micros
            {
                open.notified_at = t;
                let (severity, threshold) = (open.severity, open.threshold);
                out.push(event(
                    rule,
                    at,
                    &sample(),
                    &open.alert_id,
                    AlertEventKind::Raised,
                    Note::Renotify,
                    severity,
                    threshold,
                    now_micros,
                ));
            }
        }
    }
    opened
}

/// Which transition an event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Note {
    Raised,
    Escalated,
    Renotify,
    Resolved,
}

#[allow(clippy::too_many_arguments)]
fn event(
    rule: &RuleDef,
    at: &At<'_>,
    sample: &Sample,
    alert_id: &str,
    kind: AlertEventKind,
    note: Note,
    severity: AlertSeverity,
    threshold: f64,
    now_micros: i64,
) -> AlertEvent {
    let time = at.t.to_string();
    let event_id = match note {
        Note::Raised | Note::Resolved => ids::v5(&[alert_id, kind.as_str()]),
        Note::Escalated => ids::v5(&[alert_id, kind.as_str(), severity.as_str()]),
        Note::Renotify => ids::v5(&[alert_id, kind.as_str(), "renotify", &time]),
    }
    .to_string();
    // A standard protocols' series reads `metric{labels}`, an agent's `metric:subject`.
    let series = match &sample.subject {
        Some(labels) if rule.matchers.is_some() => format!("{}{labels}", sample.metric),
        _ => sample.series(),
    };
    let op = rule.operator.symbol();
    let v = sample.value;
    let message = match note {
        Note::Raised => format!("{}: {series} is {v} ({op} {threshold})", rule.name),
        Note::Escalated => format!(
            "{}: {series} is {v}, now {} ({op} {threshold})",
            rule.name,
            severity.as_str()
        ),
        Note::Renotify => format!("{}: {series} still {v} ({op} {threshold})", rule.name),
        Note::Resolved => format!(
            "{}: {series} back to {v} (threshold {threshold})",
            rule.name
        ),
    };
    AlertEvent {
        event_id,
        alert_id: alert_id.to_owned(),
        tenant_id: at.tenant.to_owned(),
        agent_id: at.agent.to_owned(),
        kind,
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        metric: sample.metric.clone(),
        subject: sample.subject.clone(),
        severity,
        operator: op.to_owned(),
        threshold,
        value: v,
        message,
        actor: None,
        occurred_at: at.t,
        ingested_at: now_micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::fixtures;

    /// A static rule for every tenant: `metric > threshold` is critical.
    fn rule_on(metric: &str, threshold: f64) -> StaticRule {
        StaticRule {
            id: "cpu".into(),
            tenant: None,
            spec: RuleSpec {
                name: "CPU".into(),
                metric: metric.into(),
                operator: Some(">".into()),
                critical: Some(threshold),
                ..RuleSpec::default()
            },
        }
    }

    fn cpu_rule(threshold: f64) -> StaticRule {
        rule_on("cpu.percent", threshold)
    }

    fn evaluator(rules: &[StaticRule]) -> Evaluator {
        Evaluator::new(&static_rule_events(rules).expect("valid rules")).expect("valid rules")
    }

    fn def_of(r: &StaticRule) -> RuleDef {
        let d = r.spec.definition(true).expect("valid rule");
        RuleDef::compile(&r.id, r.tenant.as_deref(), &d).expect("valid rule")
    }

    fn report(t: i64, cpu: f64) -> MetricReport {
        let mut r = fixtures::metric_report("t1", "a1", t);
        r.cpu_percent = cpu;
        r
    }

    #[test]
    fn raises_once_and_resolves() {
        let mut ev = evaluator(&[cpu_rule(90.0)]);
        assert!(ev.evaluate(&report(1, 50.0), 0).is_empty());
        let raised = ev.evaluate(&report(2, 95.0), 0);
        assert_eq!(raised.len(), 1);
        assert_eq!(raised[0].kind, AlertEventKind::Raised);
        assert_eq!(raised[0].value, 95.0);
        assert_eq!(raised[0].threshold, 90.0);
        assert!(
            ev.evaluate(&report(3, 99.0), 0).is_empty(),
            "still breaching: no second raise"
        );
        let resolved = ev.evaluate(&report(4, 10.0), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(resolved[0].alert_id, raised[0].alert_id);
        assert_ne!(resolved[0].event_id, raised[0].event_id);
    }

    #[test]
    fn security_posture_metrics_can_raise() {
        // `security.pending_updates > 0`: the report's posture is a metric like any other.
        let mut ev = evaluator(&[rule_on("security.pending_updates", 0.0)]);
        let with = |t: i64, pending: Option<i32>| {
            let mut r = report(t, 1.0);
            if let Some(s) = r.security.as_mut() {
                s.pending_updates = pending;
            }
            r
        };
        assert!(ev.evaluate(&with(1, Some(0)), 0).is_empty());
        let raised = ev.evaluate(&with(2, Some(4)), 0);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].metric, "security.pending_updates");
        assert_eq!(raised[0].value, 4.0);
        let resolved = ev.evaluate(&with(3, Some(0)), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
    }

    #[test]
    fn posture_v2_metrics_can_raise() {
        // `security.reboot_required > 0`, `security.ssh_root_login_permitted > 0` and
        // `security.antivirus_signature_age_hours > 48`: the v2 posture fields as metrics.
        let mut ev = evaluator(&[
            rule_on("security.reboot_required", 0.0),
            StaticRule {
                id: "root".into(),
                ..rule_on("security.ssh_root_login_permitted", 0.0)
            },
            StaticRule {
                id: "clamav".into(),
                ..rule_on("security.antivirus_signature_age_hours", 48.0)
            },
        ]);
        let with = |t: i64, reboot: Option<bool>, root: &str, age: f64| {
            let mut r = report(t, 1.0);
            if let Some(s) = r.security.as_mut() {
                s.reboot_required = reboot;
                s.ssh_permit_root_login = Some(root.to_owned());
                s.antivirus_signature_age_hours = Some(age);
            }
            r
        };
        assert!(ev.evaluate(&with(1, Some(false), "no", 2.0), 0).is_empty());
        // Unknown reboot flag: no sample, no alert.
        assert!(ev.evaluate(&with(2, None, "no", 2.0), 0).is_empty());
        let mut raised = ev.evaluate(&with(3, Some(true), "prohibit-password", 72.5), 0);
        raised.sort_by(|a, b| a.metric.cmp(&b.metric));
        let got: Vec<(&str, f64, AlertEventKind)> = raised
            .iter()
            .map(|a| (a.metric.as_str(), a.value, a.kind))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "security.antivirus_signature_age_hours",
                    72.5,
                    AlertEventKind::Raised
                ),
                ("security.reboot_required", 1.0, AlertEventKind::Raised),
                (
                    "security.ssh_root_login_permitted",
                    1.0,
                    AlertEventKind::Raised
                ),
            ]
        );
        let resolved = ev.evaluate(&with(4, Some(false), "no", 1.0), 0);
        assert_eq!(resolved.len(), 3, "{resolved:?}");
        assert!(resolved.iter().all(|a| a.kind == AlertEventKind::Resolved));
    }

    #[test]
    fn custom_metrics_alert_per_label_set_or_for_one() {
        // A labelled custom metric's key `name{labels}` is the metric `custom.name` with
        // the labels text as its subject: one alert per label set, or only the one named.
        let with = |t: i64, high: f64, low: f64| {
            let mut r = report(t, 1.0);
            r.custom.clear();
            r.custom.insert(r#"q{queue="high"}"#.to_owned(), high);
            r.custom.insert(r#"q{queue="low"}"#.to_owned(), low);
            r
        };
        let mut every = evaluator(&[rule_on("custom.q", 10.0)]);
        let mut subjects: Vec<Option<String>> = every
            .evaluate(&with(1, 50.0, 60.0), 0)
            .into_iter()
            .map(|e| e.subject)
            .collect();
        subjects.sort();
        assert_eq!(
            subjects,
            vec![
                Some(r#"{queue="high"}"#.to_owned()),
                Some(r#"{queue="low"}"#.to_owned())
            ]
        );
        let mut one_rule = rule_on("custom.q", 10.0);
        one_rule.spec.subject = Some(r#"{queue="high"}"#.to_owned());
        let mut one = evaluator(&[one_rule]);
        assert!(
            one.evaluate(&with(1, 1.0, 60.0), 0).is_empty(),
            "low is not watched"
        );
        let raised = one.evaluate(&with(2, 50.0, 60.0), 0);
        assert_eq!(raised.len(), 1, "{raised:?}");
        assert_eq!(raised[0].metric, "custom.q");
        assert_eq!(raised[0].subject.as_deref(), Some(r#"{queue="high"}"#));
    }

    #[test]
    fn ids_are_deterministic_across_evaluators() {
        let mut a = evaluator(&[cpu_rule(90.0)]);
        let mut b = evaluator(&[cpu_rule(90.0)]);
        let ra = a.evaluate(&report(2, 95.0), 111);
        let rb = b.evaluate(&report(2, 95.0), 222);
        assert_eq!(ra[0].alert_id, rb[0].alert_id);
        assert_eq!(ra[0].event_id, rb[0].event_id);
    }

    #[test]
    fn rebuilt_state_prevents_duplicate_raise_and_allows_resolve() {
        let mut first = evaluator(&[cpu_rule(90.0)]);
        let raised = first.evaluate(&report(2, 95.0), 0);
        let mut restarted = evaluator(&[cpu_rule(90.0)]);
        restarted.observe(&raised[0]);
        assert!(
            restarted.evaluate(&report(2, 95.0), 0).is_empty(),
            "replayed report"
        );
        let resolved = restarted.evaluate(&report(5, 1.0), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert_id, raised[0].alert_id);
    }

    #[test]
    fn replay_from_the_start_after_rebuild_emits_nothing_twice() {
        let mut first = evaluator(&[cpu_rule(90.0)]);
        let mut emitted = Vec::new();
        for (t, cpu) in [(1, 50.0), (2, 95.0), (3, 99.0)] {
            emitted.extend(first.evaluate(&report(t, cpu), 0));
        }
        assert_eq!(emitted.len(), 1);
        let mut replaying = evaluator(&[cpu_rule(90.0)]);
        replaying.observe(&emitted[0]);
        for (t, cpu) in [(1, 50.0), (2, 95.0), (3, 99.0)] {
            assert!(
                replaying.evaluate(&report(t, cpu), 0).is_empty(),
                "replayed report at {t}"
            );
        }
        assert_eq!(
            replaying.evaluate(&report(4, 5.0), 0).len(),
            1,
            "then resolves"
        );
    }

    /// Sample times come from agents (through the log): extreme ones must not overflow
    /// the gap, for-duration or re-notify arithmetic.
    #[test]
    fn extreme_sample_times_do_not_overflow() {
        let mut rule = def_of(&cpu_rule(90.0));
        rule.for_micros = 60_000_000;
        rule.renotify_micros = 60_000_000;
        let mut ev = Evaluator::default();
        ev.upsert_rule(rule);
        assert!(ev.evaluate(&report(i64::MIN + 1, 95.0), 0).is_empty());
        // (The fixture adds a little to the time for its ingestion time.)
        let raised = ev.evaluate(&report(i64::MAX - 20_000, 95.0), 0);
        assert!(raised.is_empty(), "the gap starts the for-duration over");
        assert!(ev.evaluate(&report(i64::MAX - 10_000, 95.0), 0).is_empty());
    }

    #[test]
    fn late_and_repeated_reports_do_not_flap() {
        let mut ev = evaluator(&[cpu_rule(90.0)]);
        assert_eq!(ev.evaluate(&report(10, 95.0), 0).len(), 1);
        assert!(
            ev.evaluate(&report(5, 1.0), 0).is_empty(),
            "older report ignored"
        );
        assert!(
            ev.evaluate(&report(10, 1.0), 0).is_empty(),
            "same time ignored"
        );
    }

    #[test]
    fn per_subject_alerts_for_disks() {
        let rule = rule_on("disk.percent", 15.0);
        let mut ev = evaluator(&[rule]);
        let out = ev.evaluate(&fixtures::metric_report("t", "a", 1), 0);
        // fixture: "/" at 20% breaches, "/var" at 10% does not
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject.as_deref(), Some("/"));
        assert_eq!(ev.open_alerts(), 1);
    }

    const MIN: i64 = 60_000_000;

    fn disk_rule(for_micros: i64) -> RuleDef {
        let mut r = def_of(&rule_on("disk.percent", 90.0));
        r.for_micros = for_micros;
        r
    }

    /// A report of agent `a1` at `t` whose disks are `names`, each at `percent`.
    fn disks_report(t: i64, names: impl IntoIterator<Item = String>, percent: f64) -> MetricReport {
        let mut r = fixtures::metric_report("t1", "a1", t);
        r.disks = names
            .into_iter()
            .map(|mount| fleet_schemas::DiskUsage {
                mount,
                used_bytes: 1,
                total_bytes: 2,
                percent,
            })
            .collect();
        r
    }

    /// Finding 6: an agent making up fresh subject names every minute used to grow the
    /// evaluator's state without end; with eviction it stays within what the idle time
    /// holds, whatever the number of names seen.
    #[test]
    fn state_of_idle_subjects_is_dropped_under_a_churn_of_names() {
        let mut ev = Evaluator::default().with_max_gap(2 * MIN);
        ev.upsert_rule(disk_rule(0));
        let t0 = 1_700_000_000_000_000;
        let idle = 10 * MIN;
        // Names seen within the idle time: at most 11 minutes of 100 names.
        let bound = 11 * 100;
        for minute in 0..120 {
            let t = t0 + minute * MIN;
            let names = (0..100).map(|i| format!("/churn/{minute}/{i}"));
            assert!(ev.evaluate(&disks_report(t, names, 10.0), t).is_empty());
            ev.evict_idle(t, idle);
            assert!(
                ev.tracked_series() <= bound,
                "minute {minute}: {} series held",
                ev.tracked_series()
            );
        }
        assert!(ev.tracked_series() >= 100, "recent names are kept");
        // Everything idle goes in the end.
        ev.evict_idle(t0 + 1000 * MIN, idle);
        assert_eq!(ev.tracked_series(), 0);
        assert!(ev.state.is_empty(), "no empty agent maps left behind");
    }

    /// Eviction keeps what the semantics need: an open alert stays until its recovery
    /// resolves it, and a running for-duration is never cut (the idle time is at least the
    /// longest for-duration plus the max gap).
    #[test]
    fn eviction_keeps_open_alerts_and_running_for_durations() {
        let mut ev = Evaluator::default().with_max_gap(2 * MIN);
        ev.upsert_rule(disk_rule(10 * MIN));
        let t0 = 1_700_000_000_000_000;
        let one = |name: &str| std::iter::once(name.to_owned());
        // A breach that holds, one sample a minute, evicting aggressively in between.
        let mut raised = Vec::new();
        for minute in 0..=10 {
            let t = t0 + minute * MIN;
            raised.extend(ev.evaluate(&disks_report(t, one("/data"), 95.0), t));
            assert_eq!(ev.evict_idle(t + MIN, 0), 0, "minute {minute}");
        }
        assert_eq!(
            raised.len(),
            1,
            "raised after 10 minutes, as without eviction"
        );
        assert_eq!(raised[0].occurred_at, t0 + 10 * MIN);
        // Long silent with its alert open: kept, and the recovery resolves it.
        let later = t0 + 1000 * MIN;
        assert_eq!(ev.evict_idle(later, MIN), 0);
        assert_eq!(ev.open_alerts(), 1);
        let resolved = ev.evaluate(&disks_report(later, one("/data"), 10.0), later);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(resolved[0].alert_id, raised[0].alert_id);
        // Resolved and then silent: dropped.
        assert_eq!(ev.evict_idle(later + 100 * MIN, MIN), 1);
        assert_eq!(ev.tracked_series(), 0);
    }

    #[test]
    fn tenant_scoped_rule_ignores_other_tenants() {
        let rule = StaticRule {
            tenant: Some("other".into()),
            ..cpu_rule(10.0)
        };
        let mut ev = evaluator(&[rule]);
        assert!(ev.evaluate(&report(1, 99.0), 0).is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = rule_on("cpu.nope", 1.0);
        let e = static_rule_events(&[bad]).expect_err("unknown metric");
        assert!(e.message.contains("unknown metric"), "{e}");
        let e = static_rule_events(&[cpu_rule(1.0), cpu_rule(2.0)]).expect_err("dup");
        assert!(e.message.contains("share"), "{e}");
        let mut bad = cpu_rule(1.0);
        bad.spec.warning = Some(5.0);
        let e = static_rule_events(&[bad]).expect_err("critical below warning");
        assert!(e.message.starts_with("critical:"), "{e}");
    }

    /// Static rules are written as the API's fields, in snake_case or kebab-case, with an
    /// id and an optional tenant; a typo is an error naming the field.
    #[test]
    fn static_rules_parse_from_toml() {
        #[derive(Debug, Deserialize)]
        struct C {
            rules: Vec<StaticRule>,
        }
        let c: C = toml::from_str(
            "[[rules]]\nid = \"disk\"\ntenant = \"t1\"\nname = \"Disk\"\nmetric = \"disk.percent\"\nsubject = \"/\"\noperator = \">=\"\nwarning = 80.0\ncritical = 90\nfor-secs = 300\nrenotify_secs = 60.0\n",
        )
        .expect("parses");
        let ev = &static_rule_events(&c.rules).expect("valid")[0];
        assert_eq!(ev.tenant_id, "t1");
        let d = ev.rule.as_ref().expect("defined");
        assert_eq!((d.warning, d.critical), (Some(80.0), Some(90.0)));
        assert_eq!((d.for_secs, d.renotify_secs), (300, 60));
        assert_eq!(d.subject.as_deref(), Some("/"));
        let back = toml::to_string(&c.rules[0]).expect("writes");
        assert_eq!(
            toml::from_str::<StaticRule>(&back).expect("reads"),
            c.rules[0]
        );
        let e = toml::from_str::<C>(
            "[[rules]]\nid = \"x\"\nname = \"X\"\nmetric = \"cpu.percent\"\nthreshold = 9\n",
        )
        .expect_err("unknown field");
        assert!(e.to_string().contains("threshold"), "{e}");
    }

    #[test]
    fn static_event_rules_parse_from_toml() {
        #[derive(Debug, Deserialize)]
        struct C {
            rules: Vec<StaticRule>,
        }
        let c: C = toml::from_str(
            "[[rules]]\nid = \"unclean\"\nname = \"Unexpected restart\"\n[rules.event]\nkind = \"agent_started\"\nattributes = { previous_stop = \"unclean\" }\nresolve-after-secs = 600\n",
        )
        .expect("parses");
        let ev = &static_rule_events(&c.rules).expect("valid")[0];
        let d = ev.rule.as_ref().expect("defined");
        assert_eq!(d.metric, "event.agent_started");
        let e = d.event.as_ref().expect("event rule");
        assert_eq!(e.resolve_after_secs, Some(600));
        assert_eq!(e.attributes["previous_stop"], "unclean");
        let back = toml::to_string(&c.rules[0]).expect("writes");
        assert_eq!(
            toml::from_str::<StaticRule>(&back).expect("reads"),
            c.rules[0]
        );
    }

    #[test]
    fn operators() {
        assert!(Operator::Ge.holds(1.0, 1.0));
        assert!(!Operator::Gt.holds(1.0, 1.0));
        assert!(Operator::Lt.holds(0.5, 1.0));
        assert!(Operator::Le.holds(1.0, 1.0));
        assert!(Operator::Eq.holds(1.0, 1.0));
        assert!(Operator::Ne.holds(2.0, 1.0));
    }

    // ---- rules of fleet.rules.v1: for-duration, levels, hysteresis, re-notify, scope ----

    const S: i64 = 1_000_000;

    fn topic_rule(id: &str, f: impl FnOnce(&mut RuleDefinition)) -> RuleEvent {
        let mut ev = fixtures::rule_defined("t1", id, 0);
        if let Some(d) = ev.rule.as_mut() {
            // cpu > 80 warning, > 95 critical, recovery 70, for 300 s, re-notify 3600 s
            f(d);
        }
        ev
    }

    fn with_rule(ev: RuleEvent) -> Evaluator {
        let mut e = Evaluator::default();
        e.apply_rule_event(&ev).expect("valid rule");
        e
    }

    /// Feeds cpu values at 10 s intervals from `start` (s); returns every event.
    fn feed(e: &mut Evaluator, start: i64, values: &[f64]) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for (n, v) in values.iter().enumerate() {
            out.extend(e.evaluate(&report((start + 10 * n as i64) * S, *v), 0));
        }
        out
    }

    #[test]
    fn for_duration_must_hold_before_the_raise() {
        let mut e = with_rule(topic_rule("r", |_| {}));
        // 290 s of breach (30 samples from 0 to 290): not yet.
        assert!(feed(&mut e, 0, &[85.0; 30]).is_empty());
        let raised = feed(&mut e, 300, &[85.0]);
        assert_eq!(raised.len(), 1, "raised once the breach held 300 s");
        let a = &raised[0];
        assert_eq!(a.kind, AlertEventKind::Raised);
        assert_eq!(a.severity, AlertSeverity::Warning);
        assert_eq!((a.value, a.threshold), (85.0, 80.0));
        assert_eq!(a.occurred_at, 300 * S);
        // The id names the first breaching sample (t = 0), not the raising one.
        assert_eq!(a.alert_id, ids::v5(&["r", "a1", "", "0"]).to_string());
        assert!(feed(&mut e, 310, &[86.0; 5]).is_empty(), "one alert only");
    }

    #[test]
    fn flapping_never_raises() {
        let mut e = with_rule(topic_rule("r", |_| {}));
        let values: Vec<f64> = (0..100)
            .map(|i| if i % 20 == 19 { 50.0 } else { 90.0 })
            .collect();
        assert!(feed(&mut e, 0, &values).is_empty());
        assert_eq!(e.open_alerts(), 0);
    }

    #[test]
    fn a_gap_in_the_samples_starts_the_duration_over() {
        let mut e = with_rule(topic_rule("r", |_| {})).with_max_gap(60 * S);
        assert!(feed(&mut e, 0, &[90.0; 20]).is_empty()); // 0..190 s
                                                          // Silent for 10 minutes, then breaching again: 300 s more are needed.
        assert!(feed(&mut e, 800, &[90.0; 30]).is_empty()); // 800..1090 s
        assert_eq!(feed(&mut e, 1100, &[90.0]).len(), 1);
    }

    #[test]
    fn recovery_needs_the_recovery_threshold() {
        let mut e = with_rule(topic_rule("r", |d| d.for_secs = 0));
        assert_eq!(feed(&mut e, 0, &[90.0]).len(), 1);
        // Below warning (80) but above recovery (70): still open.
        assert!(feed(&mut e, 10, &[75.0, 71.0, 70.5]).is_empty());
        assert_eq!(e.open_alerts(), 1);
        let resolved = feed(&mut e, 40, &[69.0]);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!((resolved[0].value, resolved[0].threshold), (69.0, 70.0));
        assert_eq!(e.open_alerts(), 0);
    }

    #[test]
    fn escalates_to_critical_on_the_same_alert() {
        let mut e = with_rule(topic_rule("r", |d| d.for_secs = 20));
        let out = feed(&mut e, 0, &[85.0, 85.0, 85.0, 97.0, 97.0, 97.0, 97.0]);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].severity, AlertSeverity::Warning);
        assert_eq!(out[0].occurred_at, 20 * S);
        assert_eq!(out[1].kind, AlertEventKind::Raised);
        assert_eq!(out[1].severity, AlertSeverity::Critical);
        assert_eq!(out[1].alert_id, out[0].alert_id);
        assert_ne!(out[1].event_id, out[0].event_id);
        assert_eq!((out[1].value, out[1].threshold), (97.0, 95.0));
        assert_eq!(out[1].occurred_at, 50 * S, "critical held 20 s from 30 s");
        // Back to warning level: no step down, no new event.
        assert!(feed(&mut e, 70, &[85.0, 85.0]).is_empty());
    }

    #[test]
    fn renotifies_while_breaching_until_acknowledged() {
        let mut e = with_rule(topic_rule("r", |d| {
            d.for_secs = 0;
            d.renotify_secs = 60;
        }));
        let out = feed(&mut e, 0, &[90.0; 13]); // 0..120 s
        let kinds: Vec<_> = out.iter().map(|a| (a.kind, a.occurred_at / S)).collect();
        assert_eq!(
            kinds,
            vec![
                (AlertEventKind::Raised, 0),
                (AlertEventKind::Raised, 60),
                (AlertEventKind::Raised, 120)
            ]
        );
        assert!(out.iter().all(|a| a.alert_id == out[0].alert_id));
        let mut ids: Vec<_> = out.iter().map(|a| a.event_id.clone()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "each notification has its own event id");
        // Between recovery (70) and warning: not breaching, no re-notify.
        assert!(feed(&mut e, 130, &[75.0; 10]).is_empty());
        let mut ack = out[0].clone();
        ack.kind = AlertEventKind::Acknowledged;
        ack.actor = Some("ops@example".into());
        ack.occurred_at = 1; // wall clock of a user: does not move the mark
        e.observe(&ack);
        assert!(feed(&mut e, 230, &[90.0; 20]).is_empty(), "acknowledged");
        assert_eq!(e.open_alerts(), 1);
    }

    #[test]
    fn rebuilt_from_its_events_a_renotifying_alert_goes_on_where_it_was() {
        let rule = topic_rule("r", |d| {
            d.for_secs = 0;
            d.renotify_secs = 60;
        });
        let mut first = with_rule(rule.clone());
        let out = feed(&mut first, 0, &[90.0; 8]); // raise at 0, re-notify at 60
        assert_eq!(out.len(), 2);
        let mut again = with_rule(rule);
        for ev in &out {
            again.observe(ev);
        }
        assert!(feed(&mut again, 0, &[90.0; 12]).is_empty(), "up to 110 s");
        assert_eq!(feed(&mut again, 120, &[90.0]).len(), 1, "next re-notify");
    }

    #[test]
    fn scope_by_agent_and_tag() {
        let mut e = with_rule(topic_rule("one", |d| {
            d.for_secs = 0;
            d.scope = RuleScope::Agent;
            d.scope_value = Some("a2".into());
        }));
        e.apply_rule_event(&topic_rule("tagged", |d| {
            d.for_secs = 0;
            d.scope = RuleScope::Tag;
            d.scope_value = Some("db".into());
        }))
        .expect("valid");
        let mut r = report(S, 99.0);
        assert!(
            e.evaluate(&r, 0).is_empty(),
            "a1: neither agent a2 nor tag db"
        );
        r.agent_id = "a2".into();
        let out = e.evaluate(&r, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule_id, "one");
        e.set_agent_tags("a3", vec!["web".into(), "db".into()]);
        r.agent_id = "a3".into();
        let out = e.evaluate(&r, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule_id, "tagged");
        // Another tenant's agent with the same id and tag: not this tenant's rule.
        r.tenant_id = "t2".into();
        r.occurred_at += S;
        assert!(e.evaluate(&r, 0).is_empty());
    }

    #[test]
    fn tags_come_from_updated_lifecycle_events() {
        let mut e = with_rule(topic_rule("tagged", |d| {
            d.for_secs = 0;
            d.scope = RuleScope::Tag;
            d.scope_value = Some("web".into());
        }));
        let mut r = report(S, 99.0);
        assert!(e.evaluate(&r, 0).is_empty(), "no tags stated yet");
        let mut updated = lifecycle("t1", "a1", AgentLifecycleKind::Updated, 2 * S);
        updated.tags = Some(vec!["web".into(), "eu".into()]);
        assert!(e.lifecycle(&updated, 0).is_empty());
        r.occurred_at = 3 * S;
        let out = e.evaluate(&r, 0);
        assert_eq!(out.len(), 1, "a1 is tagged web now");
        assert_eq!(out[0].rule_id, "tagged");
        assert_eq!(out[0].agent_id, "a1");
        let mut other = report(3 * S, 99.0);
        other.agent_id = "a2".into();
        assert!(e.evaluate(&other, 0).is_empty(), "a2 has no tags");
        // An event without tags (liveness, facts) leaves them.
        let mut offline = lifecycle("t1", "a1", AgentLifecycleKind::Offline, 4 * S);
        offline.ingested_at = 5 * S;
        e.lifecycle(&offline, 0);
        e.lifecycle(&online("a1", 6 * S), 0);
        assert_eq!(e.tags.get("a1").map(Vec::len), Some(2));
        // An empty list removes them: the open alert stays open, nothing new is raised.
        let mut cleared = lifecycle("t1", "a1", AgentLifecycleKind::Updated, 7 * S);
        cleared.tags = Some(Vec::new());
        e.lifecycle(&cleared, 0);
        let mut later = report(8 * S, 99.0);
        later.agent_id = "a3".into();
        e.observe_agent_tags(&{
            let mut u = lifecycle("t1", "a3", AgentLifecycleKind::Updated, 8 * S);
            u.tags = Some(vec!["db".into()]);
            u
        });
        assert!(e.evaluate(&later, 0).is_empty(), "a3 is not tagged web");
        assert_eq!(e.tags.get("a1"), Some(&Vec::new()));
    }

    #[test]
    fn disabled_rule_stops_and_resolves_its_alerts() {
        let rule = topic_rule("r", |d| d.for_secs = 0);
        let mut e = with_rule(rule.clone());
        assert_eq!(feed(&mut e, 0, &[90.0]).len(), 1);
        let mut disabled = rule.clone();
        if let Some(d) = disabled.rule.as_mut() {
            d.enabled = false;
        }
        disabled.occurred_at = 5 * S;
        e.apply_rule_event(&disabled).expect("valid");
        assert!(
            e.resolve_retired(99, |a, _| a != "a1").is_empty(),
            "not owned"
        );
        let resolved = e.resolve_retired(99, |_, _| true);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(resolved[0].occurred_at, 5 * S, "stamped with the change");
        assert!(resolved[0].message.contains("disabled"));
        assert_eq!(e.open_alerts(), 0);
        assert!(feed(&mut e, 10, &[99.0; 5]).is_empty(), "not evaluated");
        // Enabled again: evaluated again.
        e.apply_rule_event(&rule).expect("valid");
        assert_eq!(feed(&mut e, 100, &[99.0]).len(), 1);
    }

    #[test]
    fn deleted_rule_resolves_its_alerts_once() {
        let mut e = with_rule(topic_rule("r", |d| d.for_secs = 0));
        assert_eq!(feed(&mut e, 0, &[90.0]).len(), 1);
        let mut del = fixtures::rule_defined("t1", "r", 7 * S);
        del.kind = RuleEventKind::Deleted;
        del.rule = None;
        e.apply_rule_event(&del).expect("delete");
        assert!(e.active_rules().is_empty());
        let resolved = e.resolve_retired(99, |_, _| true);
        assert_eq!(resolved.len(), 1);
        assert!(resolved[0].message.contains("deleted"));
        assert!(e.resolve_retired(99, |_, _| true).is_empty(), "only once");
    }

    #[test]
    fn invalid_rule_events_are_refused_and_the_previous_version_stays() {
        let mut e = with_rule(topic_rule("r", |d| d.for_secs = 0));
        let bad = topic_rule("r", |d| d.metric = "nope".into());
        let err = e.apply_rule_event(&bad).expect_err("unknown metric");
        assert_eq!(err.field, "metric");
        assert_eq!(e.active_rules().len(), 1);
        assert_eq!(e.active_rules()[0].metric, "cpu.percent");
    }

    #[test]
    fn disk_rule_per_mount_and_service_rule() {
        let mut e = with_rule(topic_rule("disk", |d| {
            d.metric = "disk.percent".into();
            d.for_secs = 0;
            d.warning = Some(15.0);
            d.critical = Some(90.0);
            d.recovery = None;
        }));
        e.apply_rule_event(&topic_rule("svc", |d| {
            d.metric = "service.up".into();
            d.subject = Some("sshd".into());
            d.operator = "==".into();
            d.warning = None;
            d.critical = Some(0.0);
            d.recovery = None;
            d.for_secs = 0;
        }))
        .expect("valid");
        let mut r = fixtures::metric_report("t1", "a1", S);
        let out = e.evaluate(&r, 0);
        assert_eq!(out.len(), 1, "/ at 20% breaches, /var at 10% does not");
        assert_eq!(out[0].subject.as_deref(), Some("/"));
        r.occurred_at += S;
        r.services[0].status = "stopped".into();
        let out = e.evaluate(&r, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].rule_id, "svc");
        assert_eq!(out[0].severity, AlertSeverity::Critical);
        assert_eq!(out[0].value, 0.0);
    }

    // ---- heartbeat.absent: OFFLINE raises, ONLINE / DEACTIVATED resolve ----

    fn heartbeat_rule(id: &str, f: impl FnOnce(&mut RuleDefinition)) -> RuleEvent {
        topic_rule(id, |d| {
            d.name = "Agent offline".into();
            d.metric = HEARTBEAT_ABSENT.into();
            d.operator = ">=".into();
            d.warning = None;
            d.critical = Some(3.0);
            d.recovery = None;
            d.for_secs = 0;
            d.renotify_secs = 0;
            f(d);
        })
    }

    /// As liveness writes them: OFFLINE at the last-seen time, detected `after` s later;
    /// ONLINE / DEACTIVATED at `t`.
    fn lifecycle(tenant: &str, agent: &str, kind: AgentLifecycleKind, t: i64) -> AgentLifecycle {
        let mut ev = fixtures::agent_registered(tenant, agent, t);
        ev.kind = kind;
        ev.facts = None;
        ev.event_id = ids::v5(&[agent, &format!("{kind:?}"), &t.to_string()]).to_string();
        ev
    }

    fn offline(agent: &str, last_seen: i64, after: i64) -> AgentLifecycle {
        let mut ev = lifecycle("t1", agent, AgentLifecycleKind::Offline, last_seen);
        ev.ingested_at = last_seen + after * S;
        ev
    }

    fn online(agent: &str, t: i64) -> AgentLifecycle {
        lifecycle("t1", agent, AgentLifecycleKind::Online, t)
    }

    #[test]
    fn offline_raises_once_and_online_resolves() {
        let mut e = with_rule(heartbeat_rule("hb", |_| {}));
        let raised = e.lifecycle(&offline("a1", 100 * S, 95), 7);
        assert_eq!(raised.len(), 1, "{raised:?}");
        let a = &raised[0];
        assert_eq!(a.kind, AlertEventKind::Raised);
        assert_eq!(
            a.alert_id,
            ids::v5(&["hb", "a1", "", &(100 * S).to_string()]).to_string()
        );
        assert_eq!(
            a.event_id,
            ids::v5(&[&a.alert_id, AlertEventKind::Raised.as_str()]).to_string()
        );
        assert_eq!(a.metric, HEARTBEAT_ABSENT);
        assert_eq!(a.subject, None);
        assert_eq!(a.severity, AlertSeverity::Critical);
        assert_eq!(
            (a.value, a.threshold),
            (95.0, 3.0),
            "seconds since last seen"
        );
        assert_eq!(a.operator, ">=");
        assert_eq!((a.occurred_at, a.ingested_at), (100 * S, 7));
        assert_eq!((a.tenant_id.as_str(), a.rule_id.as_str()), ("t1", "hb"));
        assert_eq!(e.open_alerts(), 1);
        assert!(
            e.lifecycle(&offline("a1", 100 * S, 95), 8).is_empty(),
            "the same OFFLINE again"
        );
        assert!(
            e.lifecycle(&offline("a1", 150 * S, 95), 8).is_empty(),
            "one open alert per (rule, agent)"
        );
        let resolved = e.lifecycle(&online("a1", 300 * S), 9);
        assert_eq!(resolved.len(), 1);
        let r = &resolved[0];
        assert_eq!(r.kind, AlertEventKind::Resolved);
        assert_eq!(r.alert_id, a.alert_id);
        assert_eq!(
            r.event_id,
            ids::v5(&[&a.alert_id, AlertEventKind::Resolved.as_str()]).to_string()
        );
        assert_eq!(
            (r.occurred_at, r.severity),
            (300 * S, AlertSeverity::Critical)
        );
        assert!(r.message.contains("online"));
        assert_eq!(e.open_alerts(), 0);
        assert!(e.lifecycle(&online("a1", 300 * S), 9).is_empty(), "again");
        assert!(
            e.lifecycle(&online("a1", 400 * S), 9).is_empty(),
            "none open"
        );
        // Silent again right after that one heartbeat: last seen = the ONLINE's time.
        let again = e.lifecycle(&offline("a1", 300 * S, 91), 10);
        assert_eq!(again.len(), 1, "a new incident");
        assert_ne!(again[0].alert_id, a.alert_id);
        assert!(e
            .lifecycle(
                &lifecycle("t1", "a1", AgentLifecycleKind::Registered, 500 * S),
                0
            )
            .is_empty());
    }

    #[test]
    fn offline_severity_scope_and_tenants() {
        let mut e = with_rule(heartbeat_rule("hb-warn", |d| {
            d.warning = Some(2.0);
            d.critical = None;
        }));
        e.apply_rule_event(&heartbeat_rule("hb-a2", |d| {
            d.scope = RuleScope::Agent;
            d.scope_value = Some("a2".into());
        }))
        .expect("valid");
        e.apply_rule_event(&heartbeat_rule("hb-off", |d| d.enabled = false))
            .expect("valid");
        // A cpu rule of the same tenant: not a heartbeat rule.
        e.apply_rule_event(&topic_rule("cpu", |_| {}))
            .expect("valid");
        let out = e.lifecycle(&offline("a1", S, 90), 0);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].rule_id, "hb-warn");
        assert_eq!(
            (out[0].severity, out[0].threshold),
            (AlertSeverity::Warning, 2.0)
        );
        let mut out: Vec<_> = e
            .lifecycle(&offline("a2", S, 90), 0)
            .into_iter()
            .map(|a| a.rule_id)
            .collect();
        out.sort();
        assert_eq!(
            out,
            vec!["hb-a2", "hb-warn"],
            "tenant-wide and agent-scoped"
        );
        let mut other = offline("b1", S, 90);
        other.tenant_id = "t2".into();
        assert!(e.lifecycle(&other, 0).is_empty(), "another tenant's agent");
        assert_eq!(e.open_alerts(), 3);
    }

    #[test]
    fn rebuilt_from_its_events_lifecycle_replay_emits_nothing_twice() {
        let rule = heartbeat_rule("hb", |_| {});
        let history = [
            offline("a1", 100 * S, 95),
            online("a1", 300 * S),
            offline("a1", 400 * S, 95),
        ];
        let mut first = with_rule(rule.clone());
        let emitted: Vec<_> = history
            .iter()
            .flat_map(|ev| first.lifecycle(ev, 0))
            .collect();
        assert_eq!(
            emitted.iter().map(|a| a.kind).collect::<Vec<_>>(),
            vec![
                AlertEventKind::Raised,
                AlertEventKind::Resolved,
                AlertEventKind::Raised
            ]
        );
        // A restart, or a new group replaying the agents topic from the start.
        let mut again = with_rule(rule.clone());
        emitted.iter().for_each(|a| again.observe(a));
        assert_eq!(again.open_alerts(), 1);
        for ev in &history {
            assert!(again.lifecycle(ev, 0).is_empty(), "replayed {:?}", ev.kind);
        }
        // The old ONLINE did not resolve the newer alert; the next one does.
        let resolved = again.lifecycle(&online("a1", 600 * S), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert_id, emitted[2].alert_id);

        // Resolved by a user while still offline: the OFFLINE read again raises nothing.
        let mut by_user = emitted[2].clone();
        by_user.kind = AlertEventKind::Resolved;
        by_user.actor = Some("ops@example".into());
        by_user.occurred_at = 1;
        let mut third = with_rule(rule);
        emitted.iter().for_each(|a| third.observe(a));
        third.observe(&by_user);
        assert_eq!(third.open_alerts(), 0);
        for ev in &history {
            assert!(third.lifecycle(ev, 0).is_empty(), "replayed {:?}", ev.kind);
        }
    }

    #[test]
    fn deactivation_resolves_and_retired_heartbeat_rules_follow_agent_partitions() {
        let rule = heartbeat_rule("hb", |_| {});
        let mut e = with_rule(rule.clone());
        e.apply_rule_event(&topic_rule("cpu", |d| d.for_secs = 0))
            .expect("valid");
        assert_eq!(e.lifecycle(&offline("a1", 100 * S, 95), 0).len(), 1);
        let deactivated = lifecycle("t1", "a1", AgentLifecycleKind::Deactivated, 50 * S);
        let out = e.lifecycle(&deactivated, 0);
        assert_eq!(out.len(), 1, "resolved whatever its time");
        assert_eq!(out[0].kind, AlertEventKind::Resolved);
        assert!(out[0].message.contains("deactivated"));
        assert_eq!(e.open_alerts(), 0);
        assert!(e.lifecycle(&deactivated, 0).is_empty());

        // Deleting the rule resolves its alerts where `owned` says the metric is held.
        assert_eq!(e.lifecycle(&offline("a2", 100 * S, 95), 0).len(), 1);
        assert_eq!(feed(&mut e, 0, &[90.0]).len(), 1, "a cpu alert on a1");
        let mut del = fixtures::rule_defined("t1", "hb", 7 * S);
        del.kind = RuleEventKind::Deleted;
        del.rule = None;
        e.apply_rule_event(&del).expect("delete");
        let mut del = fixtures::rule_defined("t1", "cpu", 7 * S);
        del.kind = RuleEventKind::Deleted;
        del.rule = None;
        e.apply_rule_event(&del).expect("delete");
        assert!(e
            .resolve_retired(0, |_, m| m != HEARTBEAT_ABSENT && m != "cpu.percent")
            .is_empty());
        let out = e.resolve_retired(0, |_, m| m == HEARTBEAT_ABSENT);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].agent_id.as_str(), out[0].kind),
            ("a2", AlertEventKind::Resolved)
        );
        assert_eq!(
            e.resolve_retired(0, |_, _| true).len(),
            1,
            "then the cpu one"
        );
    }

    fn load_rule() -> RuleEvent {
        topic_rule("load", |d| {
            d.metric = "node_load1".into();
            d.labels = Some(vec![
                fleet_schemas::LabelMatcher {
                    name: "job".into(),
                    op: "=".into(),
                    value: "node".into(),
                },
                fleet_schemas::LabelMatcher {
                    name: "instance".into(),
                    op: "=~".into(),
                    value: "web-.*".into(),
                },
            ]);
            d.operator = ">".into();
            d.warning = Some(2.0);
            d.critical = None;
            d.recovery = None;
            d.for_secs = 0;
            d.renotify_secs = 0;
        })
    }

    fn load(tenant: &str, instance: &str, t: i64, v: f64) -> SampleBatch {
        let mut b = fixtures::sample_batch(tenant, t);
        b.samples = vec![fleet_schemas::LabeledSample {
            metric: "node_load1".into(),
            labels: vec![
                fleet_schemas::Label {
                    name: "instance".into(),
                    value: instance.into(),
                },
                fleet_schemas::Label {
                    name: "job".into(),
                    value: "node".into(),
                },
            ],
            timestamp: t,
            value: v,
        }];
        b
    }

    #[test]
    fn rules_with_label_matchers_watch_each_matching_series() {
        let mut e = with_rule(load_rule());
        let mut units = Vec::new();
        let mut feed = |e: &mut Evaluator, b: SampleBatch| {
            e.evaluate_samples(&b, 0, |u| units.push(u.to_owned()))
        };
        // Not matching: another instance, another tenant, a NaN staleness marker.
        assert!(feed(&mut e, load("t1", "db-1", 1, 9.0)).is_empty());
        assert!(feed(&mut e, load("t2", "web-1", 1, 9.0)).is_empty());
        assert!(feed(&mut e, load("t1", "web-1", 1, f64::NAN)).is_empty());
        let raised = feed(&mut e, load("t1", "web-1", 2, 3.0));
        assert_eq!(raised.len(), 1, "{raised:?}");
        let a = &raised[0];
        assert_eq!(a.kind, AlertEventKind::Raised);
        assert_eq!(a.agent_id, r#"~{instance="web-1",job="node"}"#);
        assert_eq!(
            a.subject.as_deref(),
            Some(r#"{instance="web-1",job="node"}"#)
        );
        assert_eq!(a.metric, "node_load1");
        assert!(
            a.message
                .contains(r#"node_load1{instance="web-1",job="node"} is 3"#),
            "{}",
            a.message
        );
        // Another series of the same rule is a key of its own.
        assert_eq!(feed(&mut e, load("t1", "web-2", 2, 5.0)).len(), 1);
        assert_eq!(e.open_alerts(), 2);
        let resolved = feed(&mut e, load("t1", "web-1", 3, 1.0));
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(resolved[0].alert_id, a.alert_id);
        assert!(units.iter().all(|u| u.starts_with('~')));
        assert!(units.contains(&r#"~{instance="web-2",job="node"}"#.to_owned()));
        // An agent report with the same metric name is not a sample of this rule.
        assert!(e.evaluate(&report(5, 99.0), 0).is_empty());
    }

    #[test]
    fn a_rule_with_labels_is_checked() {
        let mut e = Evaluator::default();
        let bad = |f: fn(&mut RuleDefinition)| {
            let mut ev = load_rule();
            if let Some(d) = ev.rule.as_mut() {
                f(d);
            }
            ev
        };
        for (ev, field) in [
            (bad(|d| d.metric = "node load".into()), "metric"),
            (
                bad(|d| {
                    if let Some(l) = d.labels.as_mut() {
                        l[1].value = "(".into();
                    }
                }),
                "labels",
            ),
            (
                bad(|d| {
                    d.scope = RuleScope::Agent;
                    d.scope_value = Some("a1".into());
                }),
                "scope",
            ),
        ] {
            let err = e.apply_rule_event(&ev).expect_err(field);
            assert_eq!(err.field, field, "{err}");
        }
        assert!(e.active_rules().is_empty());
    }

    /// An event rule of tenant t1: `service_failed` of nginx raises a critical alert per
    /// service, `service_recovered` resolves it, and so does an hour without a failure.
    fn nginx_rule(f: impl FnOnce(&mut fleet_schemas::EventRule)) -> RuleEvent {
        topic_rule("nginx", |d| {
            *d = fixtures::event_rule_definition();
            if let Some(e) = d.event.as_mut() {
                f(e);
            }
        })
    }

    fn agent_event(agent: &str, kind: &str, t: i64, attrs: &[(&str, &str)]) -> AgentEvent {
        let mut ev = fixtures::agent_event("t1", agent, t);
        ev.kind = kind.into();
        ev.severity = EventSeverity::Critical;
        ev.attributes = attrs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ev
    }

    fn failed(agent: &str, service: &str, t: i64) -> AgentEvent {
        agent_event(agent, "service_failed", t, &[("service", service)])
    }

    fn recovered(agent: &str, service: &str, t: i64) -> AgentEvent {
        agent_event(agent, "service_recovered", t, &[("service", service)])
    }

    #[test]
    fn event_matching_is_by_kind_attributes_and_severity() {
        let d = fixtures::event_rule_definition();
        let m = EventMatch::compile(d.event.as_ref().expect("event rule"));
        assert_eq!(
            m.effect(&failed("a1", "nginx", 1)),
            Some(EventEffect::Raise)
        );
        assert_eq!(
            m.effect(&recovered("a1", "nginx", 1)),
            Some(EventEffect::Recover)
        );
        assert_eq!(
            m.effect(&failed("a1", "postgres", 1)),
            None,
            "other service"
        );
        assert_eq!(
            m.effect(&agent_event(
                "a1",
                "service_stopped",
                1,
                &[("service", "nginx")]
            )),
            None,
            "other kind"
        );
        assert_eq!(m.effect(&agent_event("a1", "service_failed", 1, &[])), None);
        let mut info = failed("a1", "nginx", 1);
        info.severity = EventSeverity::Info;
        assert_eq!(m.effect(&info), None, "below min_severity (warning)");
        let mut info = recovered("a1", "nginx", 1);
        info.severity = EventSeverity::Info;
        assert_eq!(
            m.effect(&info),
            Some(EventEffect::Recover),
            "a recovery of any severity"
        );
        assert_eq!(m.subject(&failed("a1", "nginx", 1)), "nginx");
        // agent_started after an unexpected stop.
        let unclean = EventMatch::compile(&fleet_schemas::EventRule {
            kind: "agent_started".into(),
            attributes: [("previous_stop".to_owned(), "unclean".to_owned())].into(),
            min_severity: None,
            subject_attribute: None,
            recovery_kinds: Vec::new(),
            resolve_after_secs: None,
        });
        let started =
            |stop: &str| agent_event("a1", "agent_started", 1, &[("previous_stop", stop)]);
        assert_eq!(
            unclean.effect(&started("unclean")),
            Some(EventEffect::Raise)
        );
        assert_eq!(unclean.effect(&started("clean")), None);
        assert_eq!(unclean.subject(&started("unclean")), "");
    }

    #[test]
    fn an_event_raises_once_and_a_recovery_event_resolves() {
        let mut e = with_rule(nginx_rule(|_| {}));
        let raised = e.agent_event(&failed("a1", "nginx", 10 * S), 99);
        assert_eq!(raised.len(), 1);
        let r = &raised[0];
        assert_eq!(r.kind, AlertEventKind::Raised);
        assert_eq!(r.severity, AlertSeverity::Critical);
        assert_eq!(r.metric, "event.service_failed");
        assert_eq!(r.subject.as_deref(), Some("nginx"));
        assert_eq!(
            (r.occurred_at, r.ingested_at),
            (10 * S, 99),
            "the event's time"
        );
        assert_eq!(r.value, 1.0);
        assert_eq!(
            r.alert_id,
            ids::v5(&["nginx", "a1", "nginx", &(10 * S).to_string()]).to_string()
        );
        assert_eq!(e.open_alerts(), 1);
        assert!(
            e.agent_event(&failed("a1", "nginx", 10 * S), 0).is_empty(),
            "the same event again"
        );
        assert!(
            e.agent_event(&failed("a1", "nginx", 20 * S), 0).is_empty(),
            "open: not raised twice"
        );
        assert!(e
            .agent_event(&failed("a2", "postgres", 20 * S), 0)
            .is_empty());
        assert!(
            e.agent_event(&recovered("a1", "nginx", 15 * S), 0)
                .is_empty(),
            "older than the newest event of the key"
        );
        let resolved = e.agent_event(&recovered("a1", "nginx", 30 * S), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(resolved[0].alert_id, r.alert_id);
        assert_eq!(resolved[0].occurred_at, 30 * S);
        assert_eq!(e.open_alerts(), 0);
        assert!(e
            .agent_event(&recovered("a1", "nginx", 40 * S), 0)
            .is_empty());
        let again = e.agent_event(&failed("a1", "nginx", 50 * S), 0);
        assert_eq!(again.len(), 1, "a new failure is a new alert");
        assert_ne!(again[0].alert_id, r.alert_id);
        // Scope: another tenant's agent raises nothing.
        let mut other = failed("b1", "nginx", 60 * S);
        other.tenant_id = "t2".into();
        assert!(e.agent_event(&other, 0).is_empty());
    }

    #[test]
    fn event_alerts_rebuilt_from_their_events_raise_nothing_twice() {
        let events = [
            failed("a1", "nginx", 10 * S),
            failed("a1", "nginx", 20 * S),
            recovered("a1", "nginx", 30 * S),
            failed("a1", "nginx", 40 * S),
        ];
        let mut first = with_rule(nginx_rule(|e| e.resolve_after_secs = None));
        let written: Vec<AlertEvent> = events
            .iter()
            .flat_map(|ev| first.agent_event(ev, 0))
            .collect();
        assert_eq!(
            written.iter().map(|a| a.kind).collect::<Vec<_>>(),
            [
                AlertEventKind::Raised,
                AlertEventKind::Resolved,
                AlertEventKind::Raised
            ]
        );
        // A restart: state from fleet.alerts.v1, then every event read again.
        let mut second = with_rule(nginx_rule(|e| e.resolve_after_secs = None));
        for a in &written {
            second.observe(a);
        }
        assert_eq!(second.open_alerts(), 1);
        for ev in &events {
            assert!(second.agent_event(ev, 0).is_empty(), "{ev:?}");
        }
        let resolved = second.agent_event(&recovered("a1", "nginx", 50 * S), 0);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].alert_id, written[2].alert_id);
        // A user resolved it: the next failure raises anew.
        let mut third = with_rule(nginx_rule(|e| e.resolve_after_secs = None));
        for a in &written {
            third.observe(a);
        }
        let mut by_user = written[2].clone();
        by_user.kind = AlertEventKind::Resolved;
        by_user.actor = Some("ops".into());
        third.observe(&by_user);
        assert!(
            third.agent_event(&events[3], 0).is_empty(),
            "acted on already"
        );
        assert_eq!(
            third.agent_event(&failed("a1", "nginx", 60 * S), 0).len(),
            1
        );
    }

    #[test]
    fn resolve_after_counts_event_time_from_the_last_matching_event() {
        let mut e = with_rule(nginx_rule(|e| e.resolve_after_secs = Some(60)));
        assert_eq!(e.longest_resolve_after_micros(), 60 * S);
        let raised = e.agent_event(&failed("a1", "nginx", 100 * S), 0);
        assert_eq!(raised.len(), 1);
        assert!(e.resolve_expired(159 * S, |_| true).is_empty());
        // Another failure moves the deadline to 190 s.
        assert!(e.agent_event(&failed("a1", "nginx", 130 * S), 0).is_empty());
        assert!(e.resolve_expired(170 * S, |_| true).is_empty());
        assert!(
            e.resolve_expired(500 * S, |_| false).is_empty(),
            "not for agents whose events are still replaying"
        );
        let resolved = e.resolve_expired(500 * S, |_| true);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].kind, AlertEventKind::Resolved);
        assert_eq!(
            (resolved[0].occurred_at, resolved[0].ingested_at),
            (190 * S, 500 * S),
            "stamped with the deadline"
        );
        assert!(e.resolve_expired(600 * S, |_| true).is_empty(), "once");
        assert_eq!(e.open_alerts(), 0);
        // A late failure from before the deadline changes nothing.
        assert!(e.agent_event(&failed("a1", "nginx", 180 * S), 0).is_empty());

        // An event past the deadline read before the clock looked: the resolve (at the
        // deadline) comes first, then the new alert.
        let mut e = with_rule(nginx_rule(|e| e.resolve_after_secs = Some(60)));
        let first = e.agent_event(&failed("a1", "nginx", 100 * S), 0);
        let out = e.agent_event(&failed("a1", "nginx", 200 * S), 0);
        assert_eq!(
            out.iter()
                .map(|a| (a.kind, a.occurred_at))
                .collect::<Vec<_>>(),
            [
                (AlertEventKind::Resolved, 160 * S),
                (AlertEventKind::Raised, 200 * S)
            ]
        );
        assert_eq!(out[0].alert_id, first[0].alert_id);
        assert_eq!(e.open_alerts(), 1);

        // Rebuilt from its alert events, with the replayed failure: the same deadline.
        let mut e = with_rule(nginx_rule(|e| e.resolve_after_secs = Some(60)));
        e.observe(&raised[0]);
        e.forget_pending(|_| true);
        assert!(e.agent_event(&failed("a1", "nginx", 100 * S), 0).is_empty());
        assert!(e.agent_event(&failed("a1", "nginx", 130 * S), 0).is_empty());
        let again = e.resolve_expired(500 * S, |_| true);
        assert_eq!(again, resolved, "identical resolve");
    }

    #[test]
    fn a_deleted_event_rule_resolves_its_alerts_on_the_events_partition() {
        let mut e = with_rule(nginx_rule(|_| {}));
        assert_eq!(e.agent_event(&failed("a1", "nginx", 10 * S), 0).len(), 1);
        let mut deleted = nginx_rule(|_| {});
        deleted.kind = RuleEventKind::Deleted;
        deleted.rule = None;
        deleted.occurred_at = 20 * S;
        e.apply_rule_event(&deleted).expect("delete");
        let mut metrics = Vec::new();
        let out = e.resolve_retired(0, |_, metric| {
            metrics.push(metric.to_owned());
            true
        });
        assert_eq!(out.len(), 1);
        assert_eq!(metrics, ["event.service_failed"]);
        assert!(e.agent_event(&failed("a1", "nginx", 30 * S), 0).is_empty());
    }
}
