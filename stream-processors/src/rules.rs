//! Threshold rules and their evaluation: pure logic, no I/O.
//!
//! A rule compares one metric (see `fleet_schemas::samples`) against a threshold. For
//! metrics with a subject (a disk's mount, a service) the rule applies to each subject
//! separately, or only to `subject` when the rule names one. One alert is open at most per
//! (rule, agent, subject). The alert id is a UUIDv5 of (rule, agent, subject, time of the
//! first breaching sample), so re-evaluating the same reports after a restart or a replay
//! yields the same ids.

use std::collections::HashMap;

use fleet_schemas::samples::{self, Sample};
use fleet_schemas::{ids, AlertEvent, AlertEventKind, AlertSeverity, MetricReport};
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

/// Severity as written in configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational.
    Info,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

impl From<Severity> for AlertSeverity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Info => AlertSeverity::Info,
            Severity::Warning => AlertSeverity::Warning,
            Severity::Critical => AlertSeverity::Critical,
        }
    }
}

/// A threshold rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Rule {
    /// Stable id (part of every alert id).
    pub id: String,
    /// Name shown to people.
    pub name: String,
    /// Metric name, for example `cpu.percent`, `disk.percent`, `custom.queue_depth`.
    pub metric: String,
    /// Only this mount point or service (metrics with subjects); all when absent.
    #[serde(default)]
    pub subject: Option<String>,
    /// Comparison.
    pub operator: Operator,
    /// Threshold.
    pub threshold: f64,
    /// Severity of the alerts it raises.
    pub severity: Severity,
    /// Only this tenant's agents; every tenant when absent.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// Why a rule is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {message}")]
pub struct RuleError {
    /// Rule id.
    pub rule: String,
    /// What is wrong.
    pub message: String,
}

/// Checks a rule set: known metrics, finite thresholds, unique ids.
pub fn validate_rules(rules: &[Rule]) -> Result<(), RuleError> {
    let mut seen = std::collections::HashSet::new();
    for r in rules {
        let e = |m: String| RuleError {
            rule: r.id.clone(),
            message: m,
        };
        if r.id.is_empty() {
            return Err(e("id must not be empty".into()));
        }
        if !seen.insert(r.id.as_str()) {
            return Err(e("two rules share this id".into()));
        }
        if !samples::is_known_metric(&r.metric) {
            return Err(e(format!(
                "unknown metric {:?}; known: {} or custom.<name>",
                r.metric,
                samples::BUILTIN_METRICS.join(", ")
            )));
        }
        if !r.threshold.is_finite() {
            return Err(e("threshold must be a finite number".into()));
        }
    }
    Ok(())
}

/// The rules shipped as defaults: CPU, memory and disk thresholds.
pub fn default_rules() -> Vec<Rule> {
    let rule = |id: &str, name: &str, metric: &str, threshold: f64, severity| Rule {
        id: id.into(),
        name: name.into(),
        metric: metric.into(),
        subject: None,
        operator: Operator::Gt,
        threshold,
        severity,
        tenant: None,
    };
    vec![
        rule(
            "cpu-critical",
            "CPU above 95%",
            "cpu.percent",
            95.0,
            Severity::Critical,
        ),
        rule(
            "memory-critical",
            "Memory above 95%",
            "memory.percent",
            95.0,
            Severity::Critical,
        ),
        rule(
            "disk-warning",
            "Disk above 90%",
            "disk.percent",
            90.0,
            Severity::Warning,
        ),
    ]
}

type AlertKey = (String, String, Option<String>);

#[derive(Debug, Clone)]
struct OpenAlert {
    alert_id: String,
}

/// Evaluates reports against rules, holding the open alerts (state rebuilt from
/// `fleet.alerts.v1` with [`Evaluator::observe`] on start).
#[derive(Debug, Default)]
pub struct Evaluator {
    rules: Vec<Rule>,
    by_metric: HashMap<String, Vec<usize>>,
    open: HashMap<AlertKey, OpenAlert>,
    last_sample_at: HashMap<AlertKey, i64>,
}

impl Evaluator {
    /// An evaluator over `rules` (validate them first with [`validate_rules`]).
    pub fn new(rules: Vec<Rule>) -> Evaluator {
        let mut by_metric: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, r) in rules.iter().enumerate() {
            by_metric.entry(r.metric.clone()).or_default().push(i);
        }
        Evaluator {
            rules,
            by_metric,
            ..Default::default()
        }
    }

    /// Number of open alerts held.
    pub fn open_alerts(&self) -> usize {
        self.open.len()
    }

    /// Folds an alert event from the log into the state (rebuild on start). The time of
    /// the sample behind the event becomes the key's high-water mark, so reports up to it
    /// that are read again (a replay, or a restart before the offsets were committed)
    /// are not evaluated a second time.
    pub fn observe(&mut self, ev: &AlertEvent) {
        let key = (ev.rule_id.clone(), ev.agent_id.clone(), ev.subject.clone());
        let mark = self
            .last_sample_at
            .entry(key.clone())
            .or_insert(ev.occurred_at);
        *mark = (*mark).max(ev.occurred_at);
        match ev.kind {
            AlertEventKind::Raised => {
                self.open.insert(
                    key,
                    OpenAlert {
                        alert_id: ev.alert_id.clone(),
                    },
                );
            }
            AlertEventKind::Resolved => {
                if self
                    .open
                    .get(&key)
                    .is_some_and(|o| o.alert_id == ev.alert_id)
                {
                    self.open.remove(&key);
                }
            }
            AlertEventKind::Acknowledged => {}
        }
    }

    /// Evaluates one report; returns the alert events it causes, in order.
    pub fn evaluate(&mut self, report: &MetricReport, now_micros: i64) -> Vec<AlertEvent> {
        let mut out = Vec::new();
        for sample in samples::samples(report) {
            let Some(rule_ids) = self.by_metric.get(&sample.metric) else {
                continue;
            };
            for &i in rule_ids {
                let rule = &self.rules[i];
                if rule.tenant.as_ref().is_some_and(|t| *t != report.tenant_id) {
                    continue;
                }
                if rule.subject.is_some() && rule.subject != sample.subject {
                    continue;
                }
                let key: AlertKey = (
                    rule.id.clone(),
                    report.agent_id.clone(),
                    sample.subject.clone(),
                );
                // Reports may arrive late or twice: only the newest sample decides.
                match self.last_sample_at.get(&key) {
                    Some(&last) if last >= report.occurred_at => continue,
                    _ => {}
                }
                self.last_sample_at.insert(key.clone(), report.occurred_at);
                let breach = rule.operator.holds(sample.value, rule.threshold);
                match (breach, self.open.contains_key(&key)) {
                    (true, false) => {
                        let ev = transition(
                            rule,
                            report,
                            &sample,
                            None,
                            AlertEventKind::Raised,
                            now_micros,
                        );
                        self.open.insert(
                            key,
                            OpenAlert {
                                alert_id: ev.alert_id.clone(),
                            },
                        );
                        out.push(ev);
                    }
                    (false, true) => {
                        if let Some(open) = self.open.remove(&key) {
                            out.push(transition(
                                rule,
                                report,
                                &sample,
                                Some(open.alert_id),
                                AlertEventKind::Resolved,
                                now_micros,
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
        out
    }
}

fn transition(
    rule: &Rule,
    report: &MetricReport,
    sample: &Sample,
    alert_id: Option<String>,
    kind: AlertEventKind,
    now_micros: i64,
) -> AlertEvent {
    let subject = sample.subject.as_deref().unwrap_or("");
    let alert_id = alert_id.unwrap_or_else(|| {
        ids::v5(&[
            &rule.id,
            &report.agent_id,
            subject,
            &report.occurred_at.to_string(),
        ])
        .to_string()
    });
    let event_id = ids::v5(&[&alert_id, kind.as_str()]).to_string();
    let series = sample.series();
    let message = match kind {
        AlertEventKind::Raised => format!(
            "{}: {series} is {} ({} {})",
            rule.name,
            sample.value,
            rule.operator.symbol(),
            rule.threshold
        ),
        _ => format!(
            "{}: {series} back to {} (threshold {})",
            rule.name, sample.value, rule.threshold
        ),
    };
    AlertEvent {
        event_id,
        alert_id,
        tenant_id: report.tenant_id.clone(),
        agent_id: report.agent_id.clone(),
        kind,
        rule_id: rule.id.clone(),
        rule_name: rule.name.clone(),
        metric: sample.metric.clone(),
        subject: sample.subject.clone(),
        severity: rule.severity.into(),
        operator: rule.operator.symbol().to_owned(),
        threshold: rule.threshold,
        value: sample.value,
        message,
        actor: None,
        occurred_at: report.occurred_at,
        ingested_at: now_micros,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::fixtures;

    fn cpu_rule(threshold: f64) -> Rule {
        Rule {
            id: "cpu".into(),
            name: "CPU".into(),
            metric: "cpu.percent".into(),
            subject: None,
            operator: Operator::Gt,
            threshold,
            severity: Severity::Critical,
            tenant: None,
        }
    }

    fn report(t: i64, cpu: f64) -> MetricReport {
        let mut r = fixtures::metric_report("t1", "a1", t);
        r.cpu_percent = cpu;
        r
    }

    #[test]
    fn raises_once_and_resolves() {
        let mut ev = Evaluator::new(vec![cpu_rule(90.0)]);
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
    fn ids_are_deterministic_across_evaluators() {
        let mut a = Evaluator::new(vec![cpu_rule(90.0)]);
        let mut b = Evaluator::new(vec![cpu_rule(90.0)]);
        let ra = a.evaluate(&report(2, 95.0), 111);
        let rb = b.evaluate(&report(2, 95.0), 222);
        assert_eq!(ra[0].alert_id, rb[0].alert_id);
        assert_eq!(ra[0].event_id, rb[0].event_id);
    }

    #[test]
    fn rebuilt_state_prevents_duplicate_raise_and_allows_resolve() {
        let mut first = Evaluator::new(vec![cpu_rule(90.0)]);
        let raised = first.evaluate(&report(2, 95.0), 0);
        let mut restarted = Evaluator::new(vec![cpu_rule(90.0)]);
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
        let mut first = Evaluator::new(vec![cpu_rule(90.0)]);
        let mut emitted = Vec::new();
        for (t, cpu) in [(1, 50.0), (2, 95.0), (3, 99.0)] {
            emitted.extend(first.evaluate(&report(t, cpu), 0));
        }
        assert_eq!(emitted.len(), 1);
        let mut replaying = Evaluator::new(vec![cpu_rule(90.0)]);
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

    #[test]
    fn late_and_repeated_reports_do_not_flap() {
        let mut ev = Evaluator::new(vec![cpu_rule(90.0)]);
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
        let rule = Rule {
            metric: "disk.percent".into(),
            threshold: 15.0,
            ..cpu_rule(0.0)
        };
        let mut ev = Evaluator::new(vec![rule]);
        let out = ev.evaluate(&fixtures::metric_report("t", "a", 1), 0);
        // fixture: "/" at 20% breaches, "/var" at 10% does not
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].subject.as_deref(), Some("/"));
        assert_eq!(ev.open_alerts(), 1);
    }

    #[test]
    fn tenant_scoped_rule_ignores_other_tenants() {
        let rule = Rule {
            tenant: Some("other".into()),
            ..cpu_rule(10.0)
        };
        let mut ev = Evaluator::new(vec![rule]);
        assert!(ev.evaluate(&report(1, 99.0), 0).is_empty());
    }

    #[test]
    fn validation_names_the_problem() {
        let bad = Rule {
            metric: "cpu.nope".into(),
            ..cpu_rule(1.0)
        };
        let e = validate_rules(&[bad]).expect_err("unknown metric");
        assert!(e.message.contains("unknown metric"));
        let e = validate_rules(&[cpu_rule(1.0), cpu_rule(2.0)]).expect_err("dup");
        assert!(e.message.contains("share"));
        assert!(validate_rules(&default_rules()).is_ok());
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
}
