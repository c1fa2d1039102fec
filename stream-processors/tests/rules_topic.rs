//! Rules from `fleet.rules.v1` over the real embedded log: for-duration, recovery
//! threshold, a restart in the middle of the for-duration (the seek-back replay rebuilds
//! it), a replay of everything by a new group (nothing twice), and a rule defined while
//! the evaluator runs.

use fleet_stream_processors::config::AlertEvaluatorSettings;
use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::log::read_to_end;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::{
    codec, fixtures, ids, topics, AlertEvent, AlertEventKind, AlertSeverity, Record, RuleEvent,
    RuleEventKind, RuleScope,
};
use fleet_stream_processors::{run_alert_evaluator, ProcessorsConfig, Readiness};
use tokio::sync::watch;

const S: i64 = 1_000_000;

async fn produce<T: Record>(log: &dyn EventLog, v: &T) {
    let rec = ProduceRecord {
        key: Some(v.key().as_bytes().to_vec()),
        value: codec::Wire::plain().encode(v).expect("encode"),
        // As the gateway does: the record time is the sample time.
        timestamp_ms: Some(v.occurred_at().div_euclid(1000)),
    };
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

async fn report(log: &dyn EventLog, agent: &str, t: i64, cpu: f64) {
    let mut r = fixtures::metric_report("t1", agent, t);
    r.cpu_percent = cpu;
    produce(log, &r).await;
}

/// cpu > 80 warning, > 95 critical, recovery 70, for 60 s.
fn cpu_rule(rule_id: &str, at: i64) -> RuleEvent {
    let mut ev = fixtures::rule_defined("t1", rule_id, at);
    if let Some(d) = ev.rule.as_mut() {
        d.for_secs = 60;
        d.renotify_secs = 0;
    }
    ev
}

async fn alerts(log: &dyn EventLog) -> Vec<AlertEvent> {
    let mut out = Vec::new();
    read_to_end(log, &fleet_schemas::Wire::plain(), topics::ALERTS, |r| {
        out.push(
            codec::Wire::plain()
                .decode_known::<AlertEvent>(&r.value)
                .expect("alert"),
        )
    })
    .await
    .expect("read");
    out.sort_by_key(|a| (a.occurred_at, a.kind as u8));
    out
}

async fn wait_for_alerts(log: &dyn EventLog, n: usize) -> Vec<AlertEvent> {
    for _ in 0..200 {
        let a = alerts(log).await;
        if a.len() >= n {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("expected {n} alert events, have {:?}", alerts(log).await);
}

/// Waits until `group` committed `n` metric records in all.
async fn wait_committed(log: &dyn EventLog, group: &str, n: i64) {
    for _ in 0..200 {
        let c = log
            .committed_offsets(group, topics::METRICS)
            .await
            .expect("committed");
        if c.iter().flatten().sum::<i64>() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("group {group} did not commit {n} records");
}

fn start(
    log: Arc<dyn EventLog>,
    group: &str,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(false);
    let cfg = ProcessorsConfig {
        alert_evaluator: AlertEvaluatorSettings {
            group: group.into(),
            ..AlertEvaluatorSettings::default()
        },
        rules: Vec::new(),
        ..ProcessorsConfig::default()
    };
    let h = tokio::spawn(async move {
        run_alert_evaluator(
            log,
            fleet_schemas::Wire::plain(),
            cfg,
            Readiness::default(),
            async move {
                let _ = rx.wait_for(|v| *v).await;
            },
        )
        .await
        .expect("evaluator");
    });
    (tx, h)
}

async fn stop(stop: watch::Sender<bool>, h: tokio::task::JoinHandle<()>) {
    let _ = stop.send(true);
    h.await.expect("stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_rule_for_duration_restart_recovery_and_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("open");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    // Sample times a little in the past, within the replay window (60 s + 120 s margin).
    let base = fleet_schemas::time::now_micros() - 90 * S;
    produce(log.as_ref(), &cpu_rule("cpu-rule", base - S)).await;

    // 50 s of breach: shorter than for_secs, nothing raised.
    let (tx, h) = start(log.clone(), "g1");
    for n in 0..6 {
        report(log.as_ref(), "a1", base + n * 10 * S, 90.0).await;
    }
    wait_committed(log.as_ref(), "g1", 6).await;
    assert!(
        alerts(log.as_ref()).await.is_empty(),
        "below for_secs: nothing"
    );
    // Restart in the middle of the for-duration: a new evaluator in the same group.
    stop(tx, h).await;
    let (tx, h) = start(log.clone(), "g1");
    report(log.as_ref(), "a1", base + 60 * S, 91.0).await;
    let raised = wait_for_alerts(log.as_ref(), 1).await;
    assert_eq!(raised.len(), 1, "{raised:?}");
    let a = &raised[0];
    assert_eq!(a.kind, AlertEventKind::Raised);
    assert_eq!(a.rule_id, "cpu-rule");
    assert_eq!(a.severity, AlertSeverity::Warning);
    assert_eq!((a.value, a.threshold), (91.0, 80.0));
    assert_eq!(
        a.occurred_at,
        base + 60 * S,
        "raised when the for-duration completed: the replay rebuilt its start"
    );
    assert_eq!(
        a.alert_id,
        ids::v5(&["cpu-rule", "a1", "", &base.to_string()]).to_string(),
        "the alert id names the first breaching sample, before the restart"
    );

    // Below warning but above the recovery threshold: still open; then past it.
    report(log.as_ref(), "a1", base + 70 * S, 75.0).await;
    wait_committed(log.as_ref(), "g1", 8).await;
    assert_eq!(
        alerts(log.as_ref()).await.len(),
        1,
        "75 > recovery 70: open"
    );
    report(log.as_ref(), "a1", base + 80 * S, 65.0).await;
    let all = wait_for_alerts(log.as_ref(), 2).await;
    assert_eq!(all[1].kind, AlertEventKind::Resolved);
    assert_eq!(all[1].alert_id, a.alert_id);
    assert_eq!((all[1].value, all[1].threshold), (65.0, 70.0));
    stop(tx, h).await;

    // A new group replays the whole metrics topic: nothing new.
    let (tx, h) = start(log.clone(), "g2-replays-everything");
    wait_committed(log.as_ref(), "g2-replays-everything", 9).await;
    assert_eq!(alerts(log.as_ref()).await.len(), 2, "nothing twice");

    // A rule defined while it runs applies at once (no restart).
    let mut svc = fixtures::rule_defined("t1", "a2-memory", base + 85 * S);
    if let Some(d) = svc.rule.as_mut() {
        d.metric = "memory.percent".into();
        d.scope = RuleScope::Agent;
        d.scope_value = Some("a2".into());
        d.warning = None;
        d.critical = Some(30.0); // the fixture's memory is 37.5
        d.recovery = None;
        d.for_secs = 0;
    }
    produce(log.as_ref(), &svc).await;
    report(log.as_ref(), "a2", base + 86 * S, 10.0).await;
    let all = wait_for_alerts(log.as_ref(), 3).await;
    let m = all
        .iter()
        .find(|a| a.rule_id == "a2-memory")
        .expect("memory alert");
    assert_eq!(m.agent_id, "a2");
    assert_eq!(m.severity, AlertSeverity::Critical);
    assert_eq!((m.value, m.threshold), (37.5, 30.0));

    // Deleting the rule resolves its open alert.
    let mut del = fixtures::rule_defined("t1", "a2-memory", base + 87 * S);
    del.kind = RuleEventKind::Deleted;
    del.rule = None;
    produce(log.as_ref(), &del).await;
    report(log.as_ref(), "a2", base + 88 * S, 10.0).await;
    let all = wait_for_alerts(log.as_ref(), 4).await;
    let r = all
        .iter()
        .find(|a| a.rule_id == "a2-memory" && a.kind == AlertEventKind::Resolved)
        .expect("resolved by deletion");
    assert_eq!(r.alert_id, m.alert_id);
    assert_eq!(r.occurred_at, base + 87 * S);
    stop(tx, h).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(alerts(log.as_ref()).await.len(), 4, "no more events");
}
