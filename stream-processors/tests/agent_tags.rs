//! Tag-scoped rules over the real embedded log: the alert evaluator takes agent tags from
//! the AgentLifecycle UPDATED records of `fleet.agents.v1`; a rule scoped to a tag fires
//! for the tagged agents only, and after a restart (the group starts `fleet.agents.v1` at
//! its committed offset) the tags stated before still apply.

mod support;

use std::sync::Arc;

use fleet_event_log::EventLog;
use fleet_schemas::{
    fixtures, ids, topics, AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind,
    RuleEvent, RuleScope,
};
use support::{open_log, produce, read_all, wait_committed, Running};

const S: i64 = 1_000_000;

fn evaluator(log: &Arc<dyn EventLog>, group: &str) -> Running {
    support::evaluator(log, group, Vec::new())
}

/// cpu.percent > 80 / 95 on the agents tagged `web`, no for-duration.
fn web_rule(at: i64) -> RuleEvent {
    let mut ev = fixtures::rule_defined("t1", "web-cpu", at);
    if let Some(d) = ev.rule.as_mut() {
        d.for_secs = 0;
        d.renotify_secs = 0;
        d.scope = RuleScope::Tag;
        d.scope_value = Some("web".into());
    }
    ev
}

/// An UPDATED stating the agent's tags, as the admin API writes it.
fn tagged(agent: &str, tags: &[&str], t: i64) -> AgentLifecycle {
    let mut ev = fixtures::agent_registered("t1", agent, t);
    ev.kind = AgentLifecycleKind::Updated;
    ev.facts = None;
    ev.actor = Some("ops@acme".into());
    ev.tags = Some(tags.iter().map(|s| (*s).to_owned()).collect());
    ev.event_id = ids::v5(&[agent, "UPDATED", &t.to_string()]).to_string();
    ev
}

async fn breach(log: &dyn EventLog, agent: &str, t: i64) {
    let mut r = fixtures::metric_report("t1", agent, t);
    r.cpu_percent = 99.0;
    produce(log, &r).await;
}

fn raised_for(alerts: &[AlertEvent]) -> Vec<&str> {
    let mut v: Vec<&str> = alerts
        .iter()
        .filter(|a| a.kind == AlertEventKind::Raised && a.metric == "cpu.percent")
        .map(|a| a.agent_id.as_str())
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_rule_fires_for_tagged_agents_only_and_survives_a_restart() {
    let (_dir, log) = open_log().await;
    let base = fleet_schemas::time::now_micros() - 60 * S;
    produce(log.as_ref(), &web_rule(base - 10 * S)).await;

    let ev = evaluator(&log, "ev-tags");
    ev.ready().await;
    // a1 and a3 tagged web; a4 was, then its tags were cleared; a2 never stated any.
    produce(log.as_ref(), &tagged("a1", &["web", "eu"], base)).await;
    produce(log.as_ref(), &tagged("a3", &["web"], base)).await;
    produce(log.as_ref(), &tagged("a4", &["web"], base)).await;
    produce(log.as_ref(), &tagged("a4", &[], base + S)).await;
    wait_committed(log.as_ref(), "ev-tags", topics::AGENTS).await;

    breach(log.as_ref(), "a1", base + 2 * S).await;
    breach(log.as_ref(), "a2", base + 2 * S).await;
    wait_committed(log.as_ref(), "ev-tags", topics::METRICS).await;
    let alerts = read_all::<AlertEvent>(log.as_ref()).await;
    assert_eq!(raised_for(&alerts), vec!["a1"], "{alerts:?}");
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].rule_id, "web-cpu");

    // Restart: every tag record is below the committed offset now.
    ev.stop().await;
    let ev = evaluator(&log, "ev-tags");
    ev.ready().await;
    for agent in ["a1", "a2", "a3", "a4"] {
        breach(log.as_ref(), agent, base + 10 * S).await;
    }
    wait_committed(log.as_ref(), "ev-tags", topics::METRICS).await;
    wait_committed(log.as_ref(), "ev-tags", topics::AGENTS).await;
    let alerts = read_all::<AlertEvent>(log.as_ref()).await;
    assert_eq!(
        raised_for(&alerts),
        vec!["a1", "a3"],
        "tags stated before the restart still apply (a1 already open): {alerts:?}"
    );
    assert_eq!(alerts.len(), 2, "nothing twice: {alerts:?}");
    ev.stop().await;
}
