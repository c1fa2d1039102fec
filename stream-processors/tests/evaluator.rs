//! The alert evaluator over the real embedded log: raise, restart with a full replay of
//! the metrics topic (no duplicate AlertRaised), resolve.

use fleet_stream_processors::config::AlertEvaluatorSettings;
use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::log::read_to_end;
use fleet_event_log::{ConsumerOptions, EventLog, ProduceRecord};
use fleet_schemas::rules::RuleSpec;
use fleet_schemas::{codec, fixtures, topics, AlertEvent, AlertEventKind, Record};
use fleet_stream_processors::rules::StaticRule;
use fleet_stream_processors::{run_alert_evaluator, ProcessorsConfig, Readiness};
use tokio::sync::watch;

const T0: i64 = 1_795_400_000_000_000;

async fn report(log: &dyn EventLog, agent: &str, t: i64, cpu: f64) {
    let mut r = fixtures::metric_report("t1", agent, t);
    r.cpu_percent = cpu;
    let rec = ProduceRecord::keyed(
        r.key().as_bytes().to_vec(),
        codec::Wire::plain().encode(&r).expect("encode"),
    );
    log.produce(topics::METRICS, vec![rec])
        .await
        .expect("produce");
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

fn config(group: &str) -> ProcessorsConfig {
    ProcessorsConfig {
        alert_evaluator: AlertEvaluatorSettings {
            group: group.into(),
            ..AlertEvaluatorSettings::default()
        },
        rules: vec![StaticRule::new(
            "cpu-90",
            RuleSpec {
                name: "CPU above 90".into(),
                metric: "cpu.percent".into(),
                operator: Some(">".into()),
                critical: Some(90.0),
                ..RuleSpec::default()
            },
        )],
        ..ProcessorsConfig::default()
    }
}

/// Runs the evaluator until the sender fires.
fn start(
    log: Arc<dyn EventLog>,
    group: &str,
) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(false);
    let cfg = config(group);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raises_once_across_restart_and_replay_then_resolves() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("open");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    report(log.as_ref(), "a1", T0, 50.0).await;
    report(log.as_ref(), "a1", T0 + 10_000_000, 97.0).await;
    report(log.as_ref(), "a1", T0 + 20_000_000, 99.0).await;
    report(log.as_ref(), "a2", T0, 10.0).await;

    let (stop, h) = start(log.clone(), "g1");
    let first = wait_for_alerts(log.as_ref(), 1).await;
    let _ = stop.send(true);
    h.await.expect("stopped");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].kind, AlertEventKind::Raised);
    assert_eq!(first[0].agent_id, "a1");
    assert_eq!(first[0].value, 97.0);
    assert_eq!(first[0].threshold, 90.0);

    // A new group replays the whole metrics topic: the rebuilt state knows the alert is
    // open, so no second AlertRaised is written.
    let (stop, h) = start(log.clone(), "g2-replays-everything");
    report(log.as_ref(), "a1", T0 + 30_000_000, 20.0).await;
    let after = wait_for_alerts(log.as_ref(), 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop.send(true);
    h.await.expect("stopped");
    let after_all = alerts(log.as_ref()).await;
    assert_eq!(
        after_all.len(),
        2,
        "exactly one raise and one resolve: {after_all:?}"
    );
    assert_eq!(after[1].kind, AlertEventKind::Resolved);
    assert_eq!(after[1].alert_id, first[0].alert_id);
    assert_eq!(after[1].value, 20.0);
    // Consumer offsets were committed for the group after processing.
    let committed = log
        .committed_offsets("g1", topics::METRICS)
        .await
        .expect("committed");
    assert_eq!(
        committed.iter().flatten().sum::<i64>(),
        4,
        "g1 committed every report it evaluated"
    );
    let _ = ConsumerOptions::default();

    // The evaluator emits the metrics it promises.
    let rendered = prometheus.render();
    for name in fleet_stream_processors::metrics::ALL {
        if name.contains("decode_errors") {
            continue; // only once a record fails to decode
        }
        assert!(rendered.contains(name), "/metrics lacks {name}");
    }
}
