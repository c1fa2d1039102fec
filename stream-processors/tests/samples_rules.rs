//! Rules with label matchers over the real embedded log: the alert evaluator reads the
//! samples of the standard write protocols (`fleet.samples.v1`), raises one alert per
//! matching series (not for series whose labels do not match), raises nothing twice
//! after a restart that replays the window, and resolves when the series recovers.

mod support;

use std::sync::Arc;

use fleet_event_log::EventLog;
use fleet_schemas::rules::RuleSpec;
use fleet_schemas::{
    fixtures, topics, AlertEvent, AlertEventKind, Label, LabelMatcher, LabeledSample, SampleBatch,
};
use fleet_stream_processors::rules::StaticRule;
use support::{open_log, produce, read_all, wait_committed, wait_for, Running};

const S: i64 = 1_000_000;

fn evaluator(log: &Arc<dyn EventLog>, group: &str) -> Running {
    // A static rule takes the same path as a rule of the topic (a rule event).
    support::evaluator(
        log,
        group,
        vec![StaticRule::new(
            "disk-io",
            RuleSpec {
                name: "Disk busy".into(),
                metric: "node_disk_busy_ratio".into(),
                operator: Some(">".into()),
                critical: Some(0.9),
                for_secs: Some(20),
                labels: Some(vec![
                    LabelMatcher {
                        name: "job".into(),
                        op: "=".into(),
                        value: "node".into(),
                    },
                    LabelMatcher {
                        name: "device".into(),
                        op: "!~".into(),
                        value: "loop.*".into(),
                    },
                ]),
                ..RuleSpec::default()
            },
        )],
    )
}

/// One request's samples of `node_disk_busy_ratio` of instance `web-1`, per device.
fn busy(tenant: &str, t: i64, devices: &[(&str, f64)]) -> SampleBatch {
    let mut b = fixtures::sample_batch(tenant, t);
    b.samples = devices
        .iter()
        .map(|(device, v)| LabeledSample {
            metric: "node_disk_busy_ratio".into(),
            labels: [
                ("device", *device),
                ("instance", "web-1:9100"),
                ("job", "node"),
            ]
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
            timestamp: t,
            value: *v,
        })
        .collect();
    b.event_id = format!("batch-{tenant}-{t}");
    b
}

fn raised(alerts: &[AlertEvent]) -> Vec<String> {
    alerts
        .iter()
        .filter(|a| a.kind == AlertEventKind::Raised)
        .map(|a| a.subject.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_matcher_rules_raise_per_series_once_and_resolve() {
    let (_dir, log) = open_log().await;
    let t0 = fleet_schemas::time::now_micros() - 120 * S;
    // sda breaches for 30 s (past the 20 s for-duration), sdb for 10 s only, the loop
    // devices are excluded by `device!~"loop.*"` (the static rule is every tenant's).
    for (i, t) in [t0, t0 + 10 * S, t0 + 20 * S, t0 + 30 * S]
        .iter()
        .enumerate()
    {
        let sdb = if i >= 2 { 0.95 } else { 0.1 };
        produce(
            log.as_ref(),
            &busy("t1", *t, &[("sda", 0.97), ("sdb", sdb), ("loop0", 1.0)]),
        )
        .await;
        produce(log.as_ref(), &busy("t2", *t, &[("loop1", 0.99)])).await;
    }
    let run = evaluator(&log, "g");
    let alerts = wait_for::<AlertEvent>(log.as_ref(), "the sda alert", |a| !a.is_empty()).await;
    wait_committed(log.as_ref(), "g", topics::SAMPLES).await;
    run.stop().await;
    let sda = r#"{device="sda",instance="web-1:9100",job="node"}"#;
    assert_eq!(raised(&alerts), [sda], "{alerts:?}");
    let a = &alerts[0];
    assert_eq!(a.tenant_id, "t1");
    assert_eq!(a.agent_id, r#"~{instance="web-1:9100",job="node"}"#);
    assert_eq!(a.rule_id, "disk-io");

    // A restart replays the window: nothing twice. Then sdb has held 30 s as well, and sda
    // recovers.
    let run = evaluator(&log, "g");
    run.ready().await;
    produce(
        log.as_ref(),
        &busy("t1", t0 + 40 * S, &[("sda", 0.2), ("sdb", 0.96)]),
    )
    .await;
    wait_for::<AlertEvent>(log.as_ref(), "sda resolved, sdb raised", |a| a.len() >= 3).await;
    wait_committed(log.as_ref(), "g", topics::SAMPLES).await;
    run.stop().await;
    let alerts = read_all::<AlertEvent>(log.as_ref()).await;
    let sdb = r#"{device="sdb",instance="web-1:9100",job="node"}"#;
    assert_eq!(raised(&alerts), [sda, sdb], "{alerts:?}");
    let resolved: Vec<_> = alerts
        .iter()
        .filter(|a| a.kind == AlertEventKind::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{alerts:?}");
    assert_eq!(resolved[0].alert_id, a.alert_id);
}
