//! Dead letters of the processors, over the real embedded log: corrupt records (garbage,
//! a truncated datum, a valid record of another type) between valid ones on every topic a
//! processor reads (metrics, agents, rules and alerts for the alert evaluator; alerts,
//! agents and tickets for the ticketer; heartbeats and agents for liveness; commands for
//! command timeouts), and a rule the evaluator refuses, all land in `fleet.deadletter.v1`
//! with their coordinates and reason, once per consumer; the valid records around them
//! are processed (alerts raised, tickets requested, agents reported offline, commands
//! timed out); the counters move.

mod support;

use fleet_stream_processors::config::{
    AlertEvaluatorSettings, CommandTimeoutsSettings, LivenessSettings, TicketerSettings,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fleet_consumer::log::read_to_end;
use fleet_event_log::{EventLog, ProduceRecord, RecordPosition};
use fleet_schemas::{
    codec, fixtures, ids, topics, AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind,
    CommandEvent, CommandEventKind, DeadLetter, DeadLetterKind, Record, RuleEvent, TicketEvent,
};
use fleet_stream_processors::command_timeouts::run_command_timeouts;
use fleet_stream_processors::liveness::run_liveness;
use fleet_stream_processors::ticketer::run_ticketer;
use fleet_stream_processors::{run_alert_evaluator, ProcessorsConfig};
use support::{open_log, Running, DEADLINE};

/// (consumer, topic, partition, offset, kind).
type Key = (String, String, u32, i64, DeadLetterKind);

fn now() -> i64 {
    fleet_schemas::time::now_micros()
}

async fn produce_raw(log: &dyn EventLog, topic: &str, key: &str, value: Vec<u8>) -> RecordPosition {
    log.produce(
        topic,
        vec![ProduceRecord {
            key: Some(key.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(now() / 1000),
        }],
    )
    .await
    .expect("produce")[0]
}

async fn produce<T: Record>(log: &dyn EventLog, v: &T) -> RecordPosition {
    produce_raw(
        log,
        T::TOPIC,
        v.key(),
        codec::Wire::plain().encode(v).expect("encode"),
    )
    .await
}

/// Garbage, `sample` cut in half and a valid record of another type, on `T`'s topic.
async fn corrupt<T: Record>(log: &dyn EventLog, sample: &T) -> Vec<(RecordPosition, Vec<u8>)> {
    let good = codec::Wire::plain().encode(sample).expect("encode");
    let other = if T::TOPIC == topics::METRICS {
        codec::Wire::plain()
            .encode(&fixtures::heartbeat("t1", "x", now(), 1))
            .expect("encode")
    } else {
        codec::Wire::plain()
            .encode(&fixtures::metric_report("t1", "x", now()))
            .expect("encode")
    };
    let mut out = Vec::new();
    for bytes in [
        b"garbage \xff\xfe: not an Avro record at all".to_vec(),
        good[..good.len() / 2].to_vec(),
        other,
    ] {
        out.push((
            produce_raw(log, T::TOPIC, sample.key(), bytes.clone()).await,
            bytes,
        ));
    }
    out
}

/// Every record of `T`'s topic that decodes.
async fn decoded<T: Record>(log: &dyn EventLog) -> Vec<T> {
    let mut out = Vec::new();
    read_to_end(log, &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        if let Ok(v) = codec::Wire::plain().decode_known::<T>(&r.value) {
            out.push(v);
        }
    })
    .await
    .expect("read");
    out
}

fn key_of(d: &DeadLetter) -> Key {
    (
        d.consumer.clone(),
        d.source_topic.clone(),
        u32::try_from(d.source_partition).expect("partition"),
        d.source_offset,
        d.kind,
    )
}

/// Waits until `check` holds for `T`'s topic (panics after [`DEADLINE`]).
async fn wait_topic<T: Record + std::fmt::Debug>(
    log: &dyn EventLog,
    what: &str,
    check: impl Fn(&[T]) -> bool,
) {
    let until = tokio::time::Instant::now() + DEADLINE;
    loop {
        let all = decoded::<T>(log).await;
        if check(&all) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "waited in vain for {what}; have {all:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `fleet_deadletters_total` per (consumer, topic, reason), from the Prometheus text.
fn counters(rendered: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for line in rendered.lines() {
        let Some((labels, value)) = line
            .strip_prefix("fleet_deadletters_total{")
            .and_then(|rest| rest.split_once("} "))
        else {
            continue;
        };
        let l: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        let get = |k: &str| l.get(k).copied().unwrap_or_default().to_owned();
        out.insert(
            (get("consumer"), get("topic"), get("reason")),
            value.trim().parse().unwrap_or(0.0),
        );
    }
    out
}

fn config() -> ProcessorsConfig {
    ProcessorsConfig {
        alert_evaluator: AlertEvaluatorSettings {
            group: "dl-alerts".into(),
            ..AlertEvaluatorSettings::default()
        },
        ticketer: TicketerSettings {
            group: "dl-tickets".into(),
            ..TicketerSettings::default()
        },
        liveness: LivenessSettings {
            group: "dl-liveness".into(),
            offline_after: Duration::from_secs(1),
            check_interval: Duration::from_secs(1),
            ..LivenessSettings::default()
        },
        command_timeouts: CommandTimeoutsSettings {
            group: "dl-timeouts".into(),
            grace: Duration::ZERO,
            check_interval: Duration::from_secs(1),
            ..CommandTimeoutsSettings::default()
        },
        ..ProcessorsConfig::default()
    }
}

fn rule(id: &str, metric: &str, critical: Option<f64>, warning: Option<f64>) -> RuleEvent {
    let mut r = fixtures::rule_defined("t1", id, now());
    let def = r.rule.as_mut().expect("a defined rule");
    def.name = id.into();
    def.metric = metric.into();
    def.critical = critical;
    def.warning = warning;
    def.recovery = None;
    def.for_secs = 0;
    def.renotify_secs = 0;
    r
}

fn requested(id: &str) -> CommandEvent {
    let mut ev = CommandEvent::step(CommandEventKind::Requested, id, "t1", "cmd-agent", now());
    ev.command_type = "collect_diagnostics".into();
    ev.timeout_secs = 1;
    ev
}

fn registered(agent: &str) -> AgentLifecycle {
    let mut ev = fixtures::agent_registered("t1", agent, now());
    ev.event_id = ids::v5(&[agent, "REGISTERED"]).to_string();
    ev
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_on_every_input_become_dead_letters_and_the_rest_is_processed() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let (_dir, log) = open_log().await;
    let l = log.as_ref();
    let mut expected: BTreeSet<Key> = BTreeSet::new();
    let mut raw: BTreeMap<(String, u32, i64), Vec<u8>> = BTreeMap::new();
    let mut expect =
        |consumers: &[&str], topic: &str, bad: Vec<(RecordPosition, Vec<u8>)>, kind| {
            for (at, bytes) in bad {
                for c in consumers {
                    expected.insert(((*c).into(), topic.into(), at.partition, at.offset, kind));
                }
                raw.insert((topic.to_owned(), at.partition, at.offset), bytes);
            }
        };

    // Before the processors start: the tickets topic (the ticketer rebuilds its state from
    // it) and the rules (the evaluator reads them from the start).
    let bad = corrupt(l, &fixtures::ticket_requested("t1", "old", now())).await;
    expect(&["ticketer"], topics::TICKETS, bad, DeadLetterKind::Decode);
    produce(l, &rule("cpu-high", "cpu.percent", Some(90.0), None)).await;
    let bad = corrupt(l, &rule("x", "cpu.percent", Some(1.0), None)).await;
    expect(
        &["alert-evaluator"],
        topics::RULES,
        bad,
        DeadLetterKind::Decode,
    );
    let mut invalid = rule("no-rule", "cpu.percent", Some(1.0), None);
    invalid.rule = None;
    let at = produce(l, &invalid).await;
    expect(
        &["alert-evaluator"],
        topics::RULES,
        vec![(at, codec::Wire::plain().encode(&invalid).expect("encode"))],
        DeadLetterKind::Process,
    );
    produce(l, &rule("memory-high", "memory.percent", None, Some(10.0))).await;

    let cfg = config();
    let procs = {
        let (a, b, c, d) = (log.clone(), log.clone(), log.clone(), log.clone());
        let (ca, cb, cc, cd) = (cfg.clone(), cfg.clone(), cfg.clone(), cfg.clone());
        [
            Running::start(move |r, s| {
                run_alert_evaluator(a, fleet_schemas::Wire::plain(), ca, r, s)
            }),
            Running::start(move |r, s| run_ticketer(b, fleet_schemas::Wire::plain(), cb, r, s)),
            Running::start(move |r, s| run_liveness(c, fleet_schemas::Wire::plain(), cc, r, s)),
            Running::start(move |r, s| {
                run_command_timeouts(d, fleet_schemas::Wire::plain(), cd, r, s)
            }),
        ]
    };
    for p in &procs {
        p.ready().await;
    }

    // While they run: valid, three corrupt, valid, on every other input topic.
    produce(l, &registered("live-a")).await;
    let bad = corrupt(l, &registered("live-x")).await;
    expect(
        &["alert-evaluator", "ticketer", "liveness"],
        topics::AGENTS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(l, &registered("live-b")).await;

    let hb = |agent: &str| {
        let mut h = fixtures::heartbeat("t1", agent, now(), 1);
        h.ingested_at = now();
        h
    };
    produce(l, &hb("hb-a")).await;
    let bad = corrupt(l, &hb("hb-x")).await;
    expect(
        &["liveness"],
        topics::HEARTBEATS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(l, &hb("hb-b")).await;

    produce(l, &requested("c-a")).await;
    let bad = corrupt(l, &requested("c-x")).await;
    expect(
        &["command-timeouts"],
        topics::COMMANDS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(l, &requested("c-b")).await;

    let ext_a = fixtures::alert_raised("t1", "ext-a", now());
    let ext_b = fixtures::alert_raised("t1", "ext-b", now());
    produce(l, &ext_a).await;
    let bad = corrupt(l, &ext_a).await;
    expect(
        &["alert-evaluator", "ticketer"],
        topics::ALERTS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(l, &ext_b).await;

    let report = |agent: &str| {
        let mut r = fixtures::metric_report("t1", agent, now());
        r.cpu_percent = 97.0;
        r
    };
    produce(l, &report("a1")).await;
    let bad = corrupt(l, &report("a1")).await;
    expect(
        &["alert-evaluator"],
        topics::METRICS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(l, &report("a2")).await;

    // The valid records around the corrupt ones were processed.
    wait_topic::<AlertEvent>(l, "both rules raised for a1 and a2", |all| {
        ["a1", "a2"].iter().all(|a| {
            ["cpu-high", "memory-high"].iter().all(|r| {
                all.iter().any(|e| {
                    e.agent_id == *a && e.rule_id == *r && e.kind == AlertEventKind::Raised
                })
            })
        })
    })
    .await;
    wait_topic::<TicketEvent>(l, "tickets for the alerts around the corrupt ones", |all| {
        [&ext_a.alert_id, &ext_b.alert_id]
            .iter()
            .all(|id| all.iter().any(|t| &&t.alert_id == id))
    })
    .await;
    wait_topic::<AgentLifecycle>(l, "OFFLINE for every valid agent", |all| {
        ["live-a", "live-b", "hb-a", "hb-b"].iter().all(|a| {
            all.iter()
                .any(|e| e.agent_id == *a && e.kind == AgentLifecycleKind::Offline)
        })
    })
    .await;
    wait_topic::<CommandEvent>(l, "TIMED_OUT for both commands", |all| {
        ["c-a", "c-b"].iter().all(|c| {
            all.iter()
                .any(|e| e.command_id == *c && e.kind == CommandEventKind::TimedOut)
        })
    })
    .await;

    // Every corrupt record is a dead letter of every consumer that read it, once.
    let until = tokio::time::Instant::now() + DEADLINE;
    let got = loop {
        let mut got = Vec::new();
        read_to_end(l, &fleet_schemas::Wire::plain(), topics::DEADLETTER, |r| {
            got.push(
                codec::Wire::plain()
                    .decode_known::<DeadLetter>(&r.value)
                    .expect("a dead letter"),
            );
        })
        .await
        .expect("read");
        let keys: BTreeSet<Key> = got.iter().map(key_of).collect();
        if expected.is_subset(&keys) {
            break got;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "missing dead letters: {:#?}",
            expected.difference(&keys).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let keys: Vec<Key> = got.iter().map(key_of).collect();
    assert_eq!(
        keys.iter().collect::<BTreeSet<_>>().len(),
        keys.len(),
        "no dead letter twice: {keys:#?}"
    );
    assert_eq!(
        keys.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "exactly the corrupt and refused records"
    );
    for d in &got {
        let coords = (
            d.source_topic.clone(),
            u32::try_from(d.source_partition).expect("partition"),
            d.source_offset,
        );
        assert_eq!(
            Some(&d.value.0),
            raw.get(&coords),
            "raw bytes of {coords:?}"
        );
        assert!(!d.reason.is_empty());
        if d.kind == DeadLetterKind::Process {
            assert!(d.reason.contains("no-rule"), "{}", d.reason);
            assert_eq!(d.tenant_id.as_deref(), Some("t1"));
        }
        let group = match d.consumer.as_str() {
            "alert-evaluator" => "dl-alerts",
            "ticketer" => "dl-tickets",
            "liveness" => "dl-liveness",
            "command-timeouts" => "dl-timeouts",
            other => panic!("unexpected consumer {other}"),
        };
        assert_eq!(d.group, group);
    }

    // Counted on /metrics, per consumer, topic and reason.
    let c = counters(&prometheus.render());
    let mut want: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    for (consumer, topic, _, _, kind) in &expected {
        *want
            .entry((consumer.clone(), topic.clone(), kind.as_str().to_owned()))
            .or_default() += 1.0;
    }
    assert_eq!(c, want);

    for p in procs {
        p.stop().await;
    }
}
