//! Event rules over the real embedded log: the alert evaluator follows `fleet.events.v1`
//! in its group. A matching agent event raises one alert (and the ticketer one ticket); the
//! same event again, another matching event while it is open, a restart of the evaluator
//! and a new group replaying every topic raise nothing twice; a recovery event resolves it;
//! an event rule with `resolve_after_secs` resolves by itself at the last matching event's
//! time plus that, once; an event of another service or tenant stays quiet.

mod support;

use std::sync::Arc;

use fleet_event_log::EventLog;
use fleet_schemas::{
    fixtures, ids, topics, AgentEvent, AlertEvent, AlertEventKind, AlertSeverity, EventSeverity,
    RuleEvent, TicketEvent,
};
use fleet_stream_processors::config::{Severity, TicketerSettings};
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

/// `service_failed` of nginx: critical, per service, resolved by `service_recovered`.
fn nginx_rule(at: i64) -> RuleEvent {
    let mut ev = fixtures::rule_defined("t1", "nginx-failed", at);
    let mut d = fixtures::event_rule_definition();
    if let Some(e) = d.event.as_mut() {
        e.resolve_after_secs = None;
    }
    ev.rule = Some(d);
    ev
}

/// `agent_started` after an unexpected stop: warning, resolved 60 s after the restart.
fn unclean_rule(at: i64) -> RuleEvent {
    let mut ev = fixtures::rule_defined("t1", "unclean-restart", at);
    let mut d = fixtures::event_rule_definition();
    d.name = "Agent restarted after an unexpected stop".into();
    d.metric = "event.agent_started".into();
    d.warning = Some(1.0);
    d.critical = None;
    d.event = Some(fleet_schemas::EventRule {
        kind: "agent_started".into(),
        attributes: [("previous_stop".to_owned(), "unclean".to_owned())].into(),
        min_severity: None,
        subject_attribute: None,
        recovery_kinds: Vec::new(),
        resolve_after_secs: Some(60),
    });
    ev.rule = Some(d);
    ev
}

fn event(tenant: &str, agent: &str, kind: &str, t: i64, attrs: &[(&str, &str)]) -> AgentEvent {
    let mut ev = fixtures::agent_event(tenant, agent, t);
    ev.kind = kind.into();
    ev.severity = EventSeverity::Critical;
    ev.event_id = ids::v5(&[agent, kind, &t.to_string()]).to_string();
    ev.attributes = attrs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ev
}

fn of_rule<'a>(alerts: &'a [AlertEvent], rule: &str) -> Vec<&'a AlertEvent> {
    alerts.iter().filter(|a| a.rule_id == rule).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_raises_once_across_duplicates_restarts_and_replays_and_resolves() {
    let (_dir, log) = open_log().await;
    let now = fleet_schemas::time::now_micros();
    let base = now - 3600 * S;
    produce(log.as_ref(), &nginx_rule(base)).await;
    let ev = evaluator(&log, "ev-1");
    let tk = ticketer(&log, "tk-1");
    ev.ready().await;
    tk.ready().await;

    let failed = |t: i64| event("t1", "a1", "service_failed", t, &[("service", "nginx")]);
    produce(log.as_ref(), &failed(base + 10 * S)).await;
    // Quiet: another service, another tenant's agent.
    produce(
        log.as_ref(),
        &event(
            "t1",
            "a1",
            "service_failed",
            base + 11 * S,
            &[("service", "cron")],
        ),
    )
    .await;
    produce(
        log.as_ref(),
        &event(
            "t2",
            "b1",
            "service_failed",
            base + 11 * S,
            &[("service", "nginx")],
        ),
    )
    .await;
    let raised = wait_for::<AlertEvent>(log.as_ref(), "RAISED", |a| !a.is_empty()).await;
    wait_committed(log.as_ref(), "ev-1", topics::EVENTS).await;
    let alert_id =
        ids::v5(&["nginx-failed", "a1", "nginx", &(base + 10 * S).to_string()]).to_string();
    assert_eq!(raised.len(), 1, "{raised:?}");
    let a = &raised[0];
    assert_eq!(a.kind, AlertEventKind::Raised);
    assert_eq!(a.alert_id, alert_id);
    assert_eq!((a.tenant_id.as_str(), a.agent_id.as_str()), ("t1", "a1"));
    assert_eq!(a.metric, "event.service_failed");
    assert_eq!(a.subject.as_deref(), Some("nginx"));
    assert_eq!(a.severity, AlertSeverity::Critical);
    assert_eq!(a.occurred_at, base + 10 * S, "the event's time");
    let tickets = wait_for::<TicketEvent>(log.as_ref(), "ticket", |t| !t.is_empty()).await;
    assert_eq!(tickets[0].alert_id, alert_id);

    // The agent re-sends the event, and fails again while the alert is open: nothing.
    produce(log.as_ref(), &failed(base + 10 * S)).await;
    produce(log.as_ref(), &failed(base + 20 * S)).await;
    wait_committed(log.as_ref(), "ev-1", topics::EVENTS).await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 1);

    // A restart, and the events once more: nothing.
    ev.stop().await;
    let ev = evaluator(&log, "ev-1");
    ev.ready().await;
    produce(log.as_ref(), &failed(base + 10 * S)).await;
    produce(log.as_ref(), &failed(base + 20 * S)).await;
    wait_committed(log.as_ref(), "ev-1", topics::EVENTS).await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 1);

    // Recovered: resolved, at the recovery's time.
    let recovered = event(
        "t1",
        "a1",
        "service_recovered",
        base + 30 * S,
        &[("service", "nginx")],
    );
    produce(log.as_ref(), &recovered).await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "RESOLVED", |a| a.len() >= 2).await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (all[1].alert_id.as_str(), all[1].kind, all[1].occurred_at),
        (alert_id.as_str(), AlertEventKind::Resolved, base + 30 * S)
    );
    wait_committed(log.as_ref(), "ev-1", topics::EVENTS).await;
    ev.stop().await;

    // A new group replays every topic from the start: nothing twice.
    let ev = evaluator(&log, "ev-replay");
    ev.ready().await;
    wait_committed(log.as_ref(), "ev-replay", topics::EVENTS).await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 2);

    // Failing again after the recovery: a second alert.
    produce(log.as_ref(), &failed(base + 40 * S)).await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "second RAISED", |a| a.len() >= 3).await;
    assert_ne!(all[2].alert_id, alert_id);
    assert_eq!(all[2].kind, AlertEventKind::Raised);
    wait_committed(log.as_ref(), "ev-replay", topics::EVENTS).await;
    ev.stop().await;
    wait_committed(log.as_ref(), "tk-1", topics::ALERTS).await;
    tk.stop().await;
    assert_eq!(read_all::<AlertEvent>(log.as_ref()).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_after_resolves_once_at_the_event_time_deadline() {
    let (_dir, log) = open_log().await;
    let now = fleet_schemas::time::now_micros();
    produce(log.as_ref(), &unclean_rule(now - 3600 * S)).await;

    let started =
        |stop: &str, t: i64| event("t1", "a1", "agent_started", t, &[("previous_stop", stop)]);
    // A clean restart is no incident.
    produce(log.as_ref(), &started("clean", now - 200 * S)).await;
    // An unexpected one 100 s ago, another 90 s ago: open until 60 s after the second.
    produce(log.as_ref(), &started("unclean", now - 100 * S)).await;
    produce(log.as_ref(), &started("unclean", now - 90 * S)).await;
    // Written before the evaluator starts, so it reads all three in one poll: both past
    // events count (a matching event read after its alert's deadline passed on the wall
    // clock comes too late to keep it open).
    let ev = evaluator(&log, "ev-1");
    ev.ready().await;
    let all = wait_for::<AlertEvent>(log.as_ref(), "RAISED and RESOLVED", |a| a.len() >= 2).await;
    let rule = of_rule(&all, "unclean-restart");
    assert_eq!(rule.len(), 2, "{all:?}");
    assert_eq!(rule[0].kind, AlertEventKind::Raised);
    assert_eq!(rule[0].severity, AlertSeverity::Warning);
    assert_eq!(rule[0].subject, None);
    assert_eq!(rule[0].occurred_at, now - 100 * S);
    assert_eq!(rule[1].kind, AlertEventKind::Resolved);
    assert_eq!(rule[1].alert_id, rule[0].alert_id);
    assert_eq!(
        rule[1].occurred_at,
        now - 30 * S,
        "the last matching event + resolve-after"
    );
    wait_committed(log.as_ref(), "ev-1", topics::EVENTS).await;
    ev.stop().await;

    // A restart (the events are in its replay window) and a new group: nothing twice.
    for group in ["ev-1", "ev-replay"] {
        let ev = evaluator(&log, group);
        ev.ready().await;
        wait_committed(log.as_ref(), group, topics::EVENTS).await;
        // A few idle polls, when timed resolves are looked at.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        ev.stop().await;
        assert_eq!(
            read_all::<AlertEvent>(log.as_ref()).await.len(),
            2,
            "{group}"
        );
    }
}
