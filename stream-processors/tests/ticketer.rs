//! The ticketer over the real embedded log: a raised alert requests one ticket, an
//! acknowledgement and a resolution update it, and neither a restart in the same group,
//! nor a replay from the start in a new group, nor two instances sharing a group write
//! anything twice. A warning below the minimum severity gets no ticket.

mod support;

use fleet_stream_processors::config::TicketerSettings;
use std::sync::Arc;

use fleet_event_log::EventLog;
use fleet_schemas::{
    fixtures, ids, topics, AlertEvent, AlertEventKind, AlertSeverity, TicketEvent, TicketEventKind,
};
use fleet_stream_processors::config::Severity;
use fleet_stream_processors::ticketer::run_ticketer;
use fleet_stream_processors::ProcessorsConfig;
use support::{open_log, produce, read_all, wait_committed, wait_for, Running};

const T0: i64 = 1_795_400_000_000_000;

fn config(group: &str) -> ProcessorsConfig {
    ProcessorsConfig {
        ticketer: TicketerSettings {
            group: group.into(),
            min_severity: Severity::Critical,
        },
        ..ProcessorsConfig::default()
    }
}

fn start(log: &Arc<dyn EventLog>, group: &str) -> Running {
    let log = log.clone();
    let cfg = config(group);
    Running::start(move |ready, shutdown| {
        run_ticketer(log, fleet_schemas::Wire::plain(), cfg, ready, shutdown)
    })
}

fn step(raised: &AlertEvent, kind: AlertEventKind, at: i64) -> AlertEvent {
    let mut a = raised.clone();
    a.kind = kind;
    a.event_id = ids::v5(&[&a.alert_id, &format!("{kind:?}")]).to_string();
    a.occurred_at = at;
    a.actor = Some("ops@acme".into());
    a
}

fn summary(tickets: &[TicketEvent]) -> Vec<(String, TicketEventKind, String)> {
    let mut s: Vec<_> = tickets
        .iter()
        .map(|t| (t.alert_id.clone(), t.kind, t.status.clone()))
        .collect();
    s.sort_by(|a, b| (&a.0, &a.2).cmp(&(&b.0, &b.2)));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ticket_per_incident_across_restart_replay_and_shared_group() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let (_dir, log) = open_log().await;
    let mut reg = fixtures::agent_registered("t1", "a1", T0 - 1_000_000);
    reg.device_name = Some("web-1".into());
    produce(log.as_ref(), &reg).await;

    let raised = fixtures::alert_raised("t1", "a1", T0); // critical
    let mut warning = fixtures::alert_raised("t1", "a2", T0);
    warning.severity = AlertSeverity::Warning;
    produce(log.as_ref(), &raised).await;
    produce(log.as_ref(), &warning).await;

    let p = start(&log, "tk-1");
    p.ready().await;
    let first = wait_for::<TicketEvent>(log.as_ref(), "REQUESTED", |t| !t.is_empty()).await;
    assert_eq!(first.len(), 1);
    let req = &first[0];
    assert_eq!(req.kind, TicketEventKind::Requested);
    assert_eq!(req.alert_id, raised.alert_id);
    assert_eq!(
        req.ticket_id,
        ids::v5(&[&raised.alert_id, "ticket"]).to_string()
    );
    assert_eq!(req.priority, "P1");
    assert_eq!(req.location_id.as_deref(), Some("loc-1"));
    assert!(req.description.contains("web-1"), "{}", req.description);

    produce(
        log.as_ref(),
        &step(&raised, AlertEventKind::Acknowledged, T0 + 1),
    )
    .await;
    produce(
        log.as_ref(),
        &step(&warning, AlertEventKind::Acknowledged, T0 + 1),
    )
    .await;
    wait_for::<TicketEvent>(log.as_ref(), "acknowledged", |t| t.len() >= 2).await;
    wait_committed(log.as_ref(), "tk-1", topics::ALERTS).await;
    p.stop().await;

    // A new instance in the same group: resumes after the committed offsets.
    let p = start(&log, "tk-1");
    p.ready().await;
    produce(
        log.as_ref(),
        &step(&raised, AlertEventKind::Resolved, T0 + 2),
    )
    .await;
    produce(
        log.as_ref(),
        &step(&warning, AlertEventKind::Resolved, T0 + 2),
    )
    .await;
    wait_for::<TicketEvent>(log.as_ref(), "resolved", |t| t.len() >= 3).await;
    wait_committed(log.as_ref(), "tk-1", topics::ALERTS).await;
    p.stop().await;

    // A new group replays the whole alert topic; then two instances share a third group.
    let p = start(&log, "tk-replay");
    p.ready().await;
    wait_committed(log.as_ref(), "tk-replay", topics::ALERTS).await;
    p.stop().await;
    let a = start(&log, "tk-shared");
    let b = start(&log, "tk-shared");
    a.ready().await;
    b.ready().await;
    wait_committed(log.as_ref(), "tk-shared", topics::ALERTS).await;
    a.stop().await;
    b.stop().await;

    let all = read_all::<TicketEvent>(log.as_ref()).await;
    let rid = raised.alert_id.clone();
    assert_eq!(
        summary(&all),
        vec![
            (rid.clone(), TicketEventKind::Updated, "acknowledged".into()),
            (rid.clone(), TicketEventKind::Requested, "open".into()),
            (rid, TicketEventKind::Updated, "resolved".into()),
        ],
        "one request and one update per step, none for the warning: {all:?}"
    );
    let ids: std::collections::HashSet<&str> = all.iter().map(|t| t.event_id.as_str()).collect();
    assert_eq!(ids.len(), all.len());

    let rendered = prometheus.render();
    for name in fleet_stream_processors::metrics::TICKETER {
        assert!(rendered.contains(name), "/metrics lacks {name}");
    }
}
