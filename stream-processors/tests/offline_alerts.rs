//! `heartbeat.absent` rules over the real embedded log: the alert evaluator follows
//! `fleet.agents.v1` in its group; an OFFLINE raises one alert per rule in scope (and the
//! ticketer one ticket), the ONLINE after it resolves it, a DEACTIVATED resolves too. A
//! restart, a re-written OFFLINE and a new group replaying both input topics emit nothing
//! twice; another tenant's agent and an agent-scoped rule of another agent stay quiet.

mod support;

use fleet_stream_processors::config::TicketerSettings;
use std::sync::Arc;

use fleet_event_log::EventLog;
use fleet_schemas::rules::HEARTBEAT_ABSENT;
use fleet_schemas::{
    fixtures, ids, topics, AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind,
    AlertSeverity, RuleEvent, RuleScope, TicketEvent, TicketEventKind,
};
use fleet_stream_processors::config::Severity;
use fleet_stream_processors::ticketer::run_ticketer;
use fleet_stream_processors::ProcessorsConfig;
use support::{open_log, produce, read_all, wait_committed, wait_for, Running};

const S: i64 = 1_000_000;

fn evaluator(log: &Arc<dyn EventLog>, group: &str) -> Running {
    support::evaluator(log, group, Vec::new())
}

fn ticketer(log: &Arc<dyn EventLog>, group: &str) -> Running {
    let log = log.clone();
    let cfg = ProcessorsConfig {
        ticketer: TicketerSettings {
            group: group.into(),
            min_severity: Severity::Critical,
        },
        ..ProcessorsConfig::default()
    };
    Running::start(move |ready, shutdown| {
        run_ticketer(log, fleet_schemas::Wire::plain(), cfg, ready, shutdown)
    })
}

/// The default offline rule: `heartbeat.absent >= 3`, critical.
fn heartbeat_rule(tenant: &str, rule_id: &str, at: i64) -> RuleEvent {
    let mut ev = fixtures::rule_defined(tenant, rule_id, at);
    if let Some(d) = ev.rule.as_mut() {
        d.name = "Agent offline (3 missed heartbeats)".into();
        d.metric = HEARTBEAT_ABSENT.into();
        d.operator = ">=".into();
        d.warning = None;
        d.critical = Some(3.0);
        d.recovery = None;
        d.for_secs = 0;
        d.renotify_secs = 0;
    }
    ev
}

/// A lifecycle event as liveness writes it: OFFLINE at the last-seen time `t`, written
/// 95 s later; ONLINE and DEACTIVATED at `t`.
fn lifecycle(tenant: &str, agent: &str, kind: AgentLifecycleKind, t: i64) -> AgentLifecycle {
    let mut ev = fixtures::agent_registered(tenant, agent, t);
    ev.kind = kind;
    ev.facts = None;
    ev.event_id =
        ids::v5(&[agent, &format!("{kind:?}").to_uppercase(), &t.to_string()]).to_string();
    if kind == AgentLifecycleKind::Offline {
        ev.ingested_at = t + 95 * S;
    }
    ev
}

/// (alert id, kind) of every alert event, in log order per agent.
fn kinds(alerts: &[AlertEvent]) -> Vec<(String, AlertEventKind)> {
    alerts
        .iter()
        .map(|a| (a.alert_id.clone(), a.kind))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_raises_online_resolves_once_across_restart_and_replay() {
    let (_dir, log) = open_log().await;
    let base = fleet_schemas::time::now_micros() - 3600 * S;
    produce(log.as_ref(), &heartbeat_rule("t1", "t1-offline", base)).await;
    // Scoped to another agent of t1: never fires for a1.
    let mut scoped = heartbeat_rule("t1", "t1-a9-offline", base);
    if let Some(d) = scoped.rule.as_mut() {
        d.scope = RuleScope::Agent;
        d.scope_value = Some("a9".into());
    }
    produce(log.as_ref(), &scoped).await;
    // Another tenant's agent going offline is no business of t1's rules (t2 has none).
    produce(log.as_ref(), &heartbeat_rule("t3", "t3-offline", base)).await;

    let ev = evaluator(&log, "ev-1");
    let tk = ticketer(&log, "tk-1");
    ev.ready().await;
    tk.ready().await;

    let off = lifecycle("t1", "a1", AgentLifecycleKind::Offline, base + 10 * S);
    produce(log.as_ref(), &off).await;
    produce(
        log.as_ref(),
        &lifecycle("t2", "b1", AgentLifecycleKind::Offline, base + 10 * S),
    )
    .await;
    wait_committed(log.as_ref(), "ev-1", topics::AGENTS).await;
    let raised = wait_for::<AlertEvent>(log.as_ref(), "RAISED", |a| !a.is_empty()).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    let a = &raised[0];
    let alert_id = ids::v5(&["t1-offline", "a1", "", &(base + 10 * S).to_string()]).to_string();
    assert_eq!(a.kind, AlertEventKind::Raised);
    assert_eq!(a.alert_id, alert_id);
    assert_eq!((a.tenant_id.as_str(), a.agent_id.as_str()), ("t1", "a1"));
    assert_eq!(a.rule_id, "t1-offline");
    assert_eq!(a.metric, HEARTBEAT_ABSENT);
    assert_eq!(a.severity, AlertSeverity::Critical);
    assert_eq!(
        (a.value, a.threshold),
        (95.0, 3.0),
        "seconds since last seen"
    );
    assert_eq!(a.occurred_at, off.occurred_at);

    // The ticketer turns it into one ticket.
    let tickets = wait_for::<TicketEvent>(log.as_ref(), "ticket", |t| !t.is_empty()).await;
    assert_eq!(tickets.len(), 1);
    assert_eq!(tickets[0].kind, TicketEventKind::Requested);
    assert_eq!(tickets[0].alert_id, alert_id);

    // A restart of the evaluator, then liveness writing the same OFFLINE again (as a
    // liveness restart could): nothing.
    ev.stop().await;
    let ev = evaluator(&log, "ev-1");
    ev.ready().await;
    produce(log.as_ref(), &off).await;
    wait_committed(log.as_ref(), "ev-1", topics::AGENTS).await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 1);

    // Back online: resolved.
    let on = lifecycle("t1", "a1", AgentLifecycleKind::Online, base + 200 * S);
    produce(log.as_ref(), &on).await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "RESOLVED", |a| a.len() >= 2).await;
    assert_eq!(
        kinds(&all),
        vec![
            (alert_id.clone(), AlertEventKind::Raised),
            (alert_id.clone(), AlertEventKind::Resolved)
        ]
    );
    assert_eq!(all[1].occurred_at, on.occurred_at);
    wait_committed(log.as_ref(), "ev-1", topics::AGENTS).await;
    ev.stop().await;

    // A new group replays both input topics from the start: nothing twice.
    let ev = evaluator(&log, "ev-replay");
    ev.ready().await;
    wait_committed(log.as_ref(), "ev-replay", topics::AGENTS).await;
    wait_committed(log.as_ref(), "ev-replay", topics::METRICS).await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 2);

    // Silent again after that heartbeat, then deactivated: a second incident, resolved
    // by the deactivation.
    let off2 = lifecycle("t1", "a1", AgentLifecycleKind::Offline, on.occurred_at);
    produce(log.as_ref(), &off2).await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "second RAISED", |a| a.len() >= 3).await;
    let second = ids::v5(&["t1-offline", "a1", "", &on.occurred_at.to_string()]).to_string();
    assert_eq!(
        kinds(&all[2..]),
        vec![(second.clone(), AlertEventKind::Raised)]
    );
    let mut deactivated = lifecycle("t1", "a1", AgentLifecycleKind::Deactivated, base + 400 * S);
    deactivated.actor = Some("ops@acme".into());
    produce(log.as_ref(), &deactivated).await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "deactivation", |a| a.len() >= 4).await;
    assert_eq!(
        kinds(&all[3..]),
        vec![(second.clone(), AlertEventKind::Resolved)]
    );
    wait_committed(log.as_ref(), "ev-replay", topics::AGENTS).await;
    ev.stop().await;

    wait_committed(log.as_ref(), "tk-1", topics::ALERTS).await;
    tk.stop().await;
    let all = read_all::<AlertEvent>(log.as_ref()).await;
    assert_eq!(all.len(), 4, "{all:?}");
    assert!(all
        .iter()
        .all(|a| a.agent_id == "a1" && a.rule_id == "t1-offline"));
    let ids: std::collections::HashSet<&str> = all.iter().map(|a| a.event_id.as_str()).collect();
    assert_eq!(ids.len(), 4, "distinct event ids");
    let tickets = read_all::<TicketEvent>(log.as_ref()).await;
    let mut want = vec![alert_id.as_str(), second.as_str()];
    want.sort_unstable();
    let mut requested: Vec<&str> = tickets
        .iter()
        .filter(|t| t.kind == TicketEventKind::Requested)
        .map(|t| t.alert_id.as_str())
        .collect();
    requested.sort_unstable();
    assert_eq!(requested, want, "one ticket per incident: {tickets:?}");
    let mut resolved: Vec<&str> = tickets
        .iter()
        .filter(|t| t.kind == TicketEventKind::Updated && t.status == "resolved")
        .map(|t| t.alert_id.as_str())
        .collect();
    resolved.sort_unstable();
    assert_eq!(resolved, want, "{tickets:?}");
}
