//! Dead letters of the projections, over the real embedded log into SQLite and the
//! embedded time-series store: corrupt records (garbage, a truncated datum, a valid record
//! of another type) between valid ones on every topic the projections read, and records
//! the stores refuse as invalid, all land in `fleet.deadletter.v1` with their coordinates
//! and reason; every valid record around them is projected; the counters move; a restart
//! (and a new group reading everything again) writes no dead letter twice.

use fleet_timeseries::TimeSeriesStore as _;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::{EventLog, ProduceRecord, RecordPosition};
use fleet_projections::project::{run_read_model, Readiness};
use fleet_projections::timeseries::run_timeseries;
use fleet_projections::ProjectionsConfig;
use fleet_read_model::{AlertQuery, CommandQuery, SoftwareQuery, TicketQuery};
use fleet_schemas::{codec, fixtures, topics, DeadLetter, DeadLetterKind, Record};
use tokio::sync::watch;

/// (consumer, topic, partition, offset, kind).
type Expected = BTreeSet<(String, String, u32, i64, DeadLetterKind)>;

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    rm: Arc<dyn fleet_read_model::ReadModel>,
    ts: Arc<fleet_timeseries::TimeSeries>,
}

async fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_owned();
    let log = fleet_event_log::open(&p("log"), &Default::default())
        .await
        .expect("log");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let rm: Arc<dyn fleet_read_model::ReadModel> = fleet_read_model::open_read_model(&p("rm.db"))
        .await
        .expect("read model");
    let ts = fleet_timeseries::open(&p("ts"), Default::default(), Default::default())
        .await
        .expect("ts");
    Env {
        _dir: dir,
        log,
        rm,
        ts,
    }
}

async fn produce_raw(log: &dyn EventLog, topic: &str, key: &str, value: Vec<u8>) -> RecordPosition {
    let pos = log
        .produce(
            topic,
            vec![ProduceRecord::keyed(key.as_bytes().to_vec(), value)],
        )
        .await
        .expect("produce");
    pos[0]
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

/// Writes garbage, a truncated `sample` and a valid record of another type to `T`'s topic;
/// returns where each landed with the kind of dead letter it must get.
async fn corrupt<T: Record>(log: &dyn EventLog, sample: &T) -> Vec<(RecordPosition, Vec<u8>)> {
    let good = codec::Wire::plain().encode(sample).expect("encode");
    let truncated = good[..good.len() / 2].to_vec();
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
        truncated,
        other,
    ] {
        let at = produce_raw(log, T::TOPIC, "corrupt", bytes.clone()).await;
        out.push((at, bytes));
    }
    out
}

fn now() -> i64 {
    fleet_schemas::time::now_micros()
}

async fn dead_letters(log: &dyn EventLog) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(
        log,
        &fleet_schemas::Wire::plain(),
        topics::DEADLETTER,
        |r| {
            out.push(
                codec::Wire::plain()
                    .decode_known::<DeadLetter>(&r.value)
                    .expect("a dead letter"),
            );
        },
    )
    .await
    .expect("read");
    out
}

fn key(d: &DeadLetter) -> (String, String, u32, i64, DeadLetterKind) {
    (
        d.consumer.clone(),
        d.source_topic.clone(),
        u32::try_from(d.source_partition).expect("partition"),
        d.source_offset,
        d.kind,
    )
}

async fn wait_for_dead_letters(log: &dyn EventLog, expected: &Expected) -> Vec<DeadLetter> {
    for _ in 0..400 {
        let got = dead_letters(log).await;
        let keys: Expected = got.iter().map(key).collect();
        if expected.is_subset(&keys) {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got: Expected = dead_letters(log).await.iter().map(key).collect();
    panic!(
        "missing dead letters: {:?}\nhave: {got:?}",
        expected.difference(&got).collect::<Vec<_>>()
    );
}

/// Runs both projections (timeseries group `ts_group`) until the sender fires.
fn start(e: &Env, ts_group: &str) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let (log, rm, ts) = (e.log.clone(), e.rm.clone(), e.ts.clone());
    let cfg = ProjectionsConfig {
        timeseries_group: ts_group.to_owned(),
        ..ProjectionsConfig::default()
    };
    let handle = tokio::spawn(async move {
        let ready = Readiness::default();
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let a = run_read_model(
            log.clone(),
            fleet_schemas::Wire::plain(),
            rm,
            cfg.clone(),
            ready.clone(),
            stop(rx.clone()),
        );
        let b = run_timeseries(log, fleet_schemas::Wire::plain(), ts, cfg, ready, stop(rx));
        let (ra, rb) = tokio::join!(a, b);
        ra.expect("read model projection");
        rb.expect("time-series projection");
    });
    (tx, handle)
}

/// `fleet_deadletters_total` per (consumer, topic, reason), from the Prometheus text.
fn counters(rendered: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for line in rendered.lines() {
        let Some(rest) = line.strip_prefix("fleet_deadletters_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let mut l: BTreeMap<&str, &str> = BTreeMap::new();
        for pair in labels.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                l.insert(k, v.trim_matches('"'));
            }
        }
        let get = |k: &str| l.get(k).copied().unwrap_or_default().to_owned();
        out.insert(
            (get("consumer"), get("topic"), get("reason")),
            value.trim().parse().unwrap_or(0.0),
        );
    }
    out
}

async fn wait_until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..400 {
        if done().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("waited in vain for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_refused_records_become_dead_letters_and_the_rest_is_projected() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let e = env().await;
    let log = e.log.as_ref();
    let t = now() - 60_000_000;
    let mut expected = Expected::new();
    let mut raw: BTreeMap<(String, u32, i64), Vec<u8>> = BTreeMap::new();
    let mut expect = |consumers: &[&str],
                      topic: &str,
                      bad: Vec<(RecordPosition, Vec<u8>)>,
                      kind: DeadLetterKind| {
        for (at, bytes) in bad {
            for c in consumers {
                expected.insert((
                    (*c).to_owned(),
                    topic.to_owned(),
                    at.partition,
                    at.offset,
                    kind,
                ));
            }
            raw.insert((topic.to_owned(), at.partition, at.offset), bytes);
        }
    };

    // Every topic the read model reads: valid, three corrupt, valid. The metrics topic is
    // also the time series'.
    let m_a = fixtures::metric_report("t1", "m-a", t);
    produce(log, &m_a).await;
    let bad = corrupt(log, &m_a).await;
    expect(
        &["readmodel", "timeseries"],
        topics::METRICS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(log, &fixtures::metric_report("t1", "m-b", t + 1_000_000)).await;
    // A report the time-series store refuses (a sample time beyond ±2^62 µs); the read
    // model takes it.
    let far = fixtures::metric_report("t1", "m-far", (1_i64 << 62) + 1_000_000);
    let at = produce(log, &far).await;
    expect(
        &["timeseries"],
        topics::METRICS,
        vec![(at, codec::Wire::plain().encode(&far).expect("encode"))],
        DeadLetterKind::Process,
    );

    let h = fixtures::heartbeat("t1", "h-a", t, 1);
    produce(log, &h).await;
    let bad = corrupt(log, &h).await;
    expect(
        &["readmodel"],
        topics::HEARTBEATS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(log, &fixtures::heartbeat("t1", "h-b", t, 1)).await;

    let a = fixtures::alert_raised("t1", "al-a", t);
    produce(log, &a).await;
    let bad = corrupt(log, &a).await;
    expect(&["readmodel"], topics::ALERTS, bad, DeadLetterKind::Decode);
    produce(log, &fixtures::alert_raised("t1", "al-b", t)).await;

    let r = fixtures::agent_registered("t1", "r-a", t);
    produce(log, &r).await;
    let bad = corrupt(log, &r).await;
    expect(&["readmodel"], topics::AGENTS, bad, DeadLetterKind::Decode);
    produce(log, &fixtures::agent_registered("t1", "r-b", t)).await;

    let c = fixtures::command_completed("t1", "c-a", t);
    produce(log, &c).await;
    let bad = corrupt(log, &c).await;
    expect(
        &["readmodel"],
        topics::COMMANDS,
        bad,
        DeadLetterKind::Decode,
    );
    produce(log, &fixtures::command_completed("t1", "c-b", t)).await;

    let s = fixtures::software_inventory("t1", "s-a", t);
    produce(log, &s).await;
    let bad = corrupt(log, &s).await;
    expect(
        &["readmodel"],
        topics::INVENTORY,
        bad,
        DeadLetterKind::Decode,
    );
    produce(log, &fixtures::software_inventory("t1", "s-b", t)).await;

    let tk = fixtures::ticket_requested("t1", "tk-a", t);
    produce(log, &tk).await;
    let bad = corrupt(log, &tk).await;
    expect(&["readmodel"], topics::TICKETS, bad, DeadLetterKind::Decode);
    // A ticket the read model refuses (a status no producer writes).
    let mut bogus = fixtures::ticket_requested("t1", "tk-bad", t);
    bogus.status = "exploded".into();
    let at = produce(log, &bogus).await;
    expect(
        &["readmodel"],
        topics::TICKETS,
        vec![(at, codec::Wire::plain().encode(&bogus).expect("encode"))],
        DeadLetterKind::Process,
    );
    produce(log, &fixtures::ticket_requested("t1", "tk-b", t)).await;

    let ru = fixtures::rule_defined("t1", "rule-a", t);
    produce(log, &ru).await;
    let bad = corrupt(log, &ru).await;
    expect(&["readmodel"], topics::RULES, bad, DeadLetterKind::Decode);
    produce(log, &fixtures::rule_defined("t1", "rule-b", t)).await;

    // The samples topic (both projections'): a valid batch, three corrupt, a batch with a
    // series text over the engine's limit beside a good sample (stored; the batch is a
    // time-series dead letter naming the refused one; the series index leaves it out), a
    // valid batch of a host.
    let sb = fixtures::sample_batch("t1", t);
    produce(log, &sb).await;
    let bad = corrupt(log, &sb).await;
    expect(
        &["readmodel", "timeseries"],
        topics::SAMPLES,
        bad,
        DeadLetterKind::Decode,
    );
    let mut long = fixtures::sample_batch("t1", t + 1_000_000);
    long.samples[0].metric = "x".repeat(fleet_timeseries::limits::MAX_NAME_BYTES + 1);
    long.samples[1].labels[0].value = "web-2:9100".into();
    let at = produce(log, &long).await;
    expect(
        &["timeseries"],
        topics::SAMPLES,
        vec![(at, codec::Wire::plain().encode(&long).expect("encode"))],
        DeadLetterKind::Process,
    );
    let host = fixtures::host_sample_batch("t1", t + 2_000_000);
    produce(log, &host).await;

    let (stop, handle) = start(&e, "dl-ts-1");
    let got = wait_for_dead_letters(log, &expected).await;
    // Every valid record around them was projected.
    let rm = e.rm.as_ref();
    wait_until("every valid record in the read model", async || {
        let agents_ok = {
            let mut ok = true;
            for a in ["m-a", "m-b", "m-far", "h-a", "h-b", "r-a", "r-b"] {
                ok &= rm.get_agent(None, a).await.expect("agent").is_some();
            }
            ok
        };
        let alerts = rm
            .list_alerts(&AlertQuery::default())
            .await
            .expect("alerts");
        let alerts_ok = ["al-a", "al-b"]
            .iter()
            .all(|a| alerts.iter().any(|x| x.agent_id == *a));
        let mut commands_ok = true;
        let mut software_ok = true;
        for (c, s) in [("c-a", "s-a"), ("c-b", "s-b")] {
            let q = CommandQuery {
                tenant_id: None,
                agent_id: c.into(),
                limit: None,
                after: None,
            };
            commands_ok &= !rm.list_commands(&q).await.expect("commands").is_empty();
            let q = SoftwareQuery {
                tenant_id: None,
                agent_id: s.into(),
                name: None,
            };
            software_ok &= rm.agent_software(&q).await.expect("software").is_some();
        }
        let tickets = rm
            .list_tickets(&TicketQuery::default())
            .await
            .expect("tickets");
        let tickets_ok = tickets.len() == 2
            && ["tk-a", "tk-b"]
                .iter()
                .all(|a| tickets.iter().any(|x| x.agent_id == *a));
        let rules = rm.list_rules(None).await.expect("rules");
        let rules_ok = ["rule-a", "rule-b"]
            .iter()
            .all(|r| rules.iter().any(|x| x.rule_id == *r));
        let series = rm
            .list_sample_series(&fleet_read_model::SampleSeriesQuery {
                tenant_id: "t1".into(),
                metric: None,
                start: i64::MIN,
                end: i64::MAX,
                limit: 100,
            })
            .await
            .expect("series");
        let series_ok = series.len() == 5;
        agents_ok && alerts_ok && commands_ok && software_ok && tickets_ok && rules_ok && series_ok
    })
    .await;
    let ts = e.ts.as_ref();
    wait_until("both valid reports in the time series", async || {
        !ts.series("t1", "m-a").await.expect("series").is_empty()
            && !ts.series("t1", "m-b").await.expect("series").is_empty()
    })
    .await;
    assert!(ts.series("t1", "m-far").await.expect("series").is_empty());
    // The samples: one unit per source, each series named by its text.
    let web1 = r#"~{instance="web-1:9100",job="node"}"#;
    let web2 = r#"~{instance="web-2:9100",job="node"}"#;
    let db1 = r#"~{host="db-1"}"#;
    wait_until("the valid samples in the time series", async || {
        !ts.series("t1", db1).await.expect("series").is_empty()
            && !ts.series("t1", web2).await.expect("series").is_empty()
    })
    .await;
    assert_eq!(
        ts.series("t1", web1).await.expect("series"),
        [
            r#"node_cpu_seconds_total{cpu="0",instance="web-1:9100",job="node",mode="idle"}"#,
            r#"node_load1{instance="web-1:9100",job="node"}"#,
        ]
    );
    assert_eq!(
        ts.series("t1", web2).await.expect("series"),
        [r#"node_load1{instance="web-2:9100",job="node"}"#],
        "the good sample of the refused batch is stored"
    );
    assert_eq!(
        ts.series("t1", db1).await.expect("series"),
        [
            r#"node_cpu_seconds_total{host="db-1"}"#,
            r#"node_load1{host="db-1"}"#
        ]
    );
    let q = fleet_timeseries::RangeQuery {
        tenant_id: "t1".into(),
        agent_id: web1.into(),
        series: r#"node_load1{instance="web-1:9100",job="node"}"#.into(),
        start_micros: t - 60_000_000,
        end_micros: t + 60_000_000,
        interval_micros: 1_000_000,
    };
    let b = ts
        .query_resolution(&q, fleet_timeseries::Resolution::Raw)
        .await
        .expect("query");
    let points: Vec<(i64, f64)> = b.iter().map(|b| (b.start_micros, b.last)).collect();
    let second = |t: i64| t - t.rem_euclid(1_000_000);
    assert_eq!(points, [(second(t - 15_000_000), 0.25), (second(t), 0.5)]);

    // Each dead letter names its record exactly and carries its raw bytes and reason.
    assert_eq!(got.len(), expected.len(), "one dead letter each: {got:#?}");
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
        assert!(d.source_key.is_some());
        assert_eq!(
            d.event_id,
            DeadLetter::failure_id(&d.consumer, &d.source_topic, coords.1, d.source_offset)
        );
        match d.kind {
            DeadLetterKind::Process => {
                assert_eq!(d.tenant_id.as_deref(), Some("t1"));
                if d.consumer == "readmodel" {
                    assert!(d.reason.contains("exploded"), "{}", d.reason);
                } else if d.source_topic == topics::SAMPLES {
                    assert!(d.reason.contains("over the limit"), "{}", d.reason);
                } else {
                    assert!(d.reason.contains("2^62"), "{}", d.reason);
                }
            }
            DeadLetterKind::Decode => assert_eq!(d.tenant_id, None),
            DeadLetterKind::Replayed => panic!("no replay here"),
        }
        let group = if d.consumer == "readmodel" {
            ProjectionsConfig::default().read_model_group
        } else {
            "dl-ts-1".to_owned()
        };
        assert_eq!(d.group, group);
    }
    // Counted on /metrics.
    let c = counters(&prometheus.render());
    let count = |consumer: &str, topic: &str, reason: &str| {
        c.get(&(consumer.into(), topic.into(), reason.into()))
            .copied()
            .unwrap_or(0.0)
    };
    assert_eq!(count("readmodel", topics::METRICS, "decode"), 3.0, "{c:?}");
    assert_eq!(count("timeseries", topics::METRICS, "decode"), 3.0, "{c:?}");
    assert_eq!(
        count("timeseries", topics::METRICS, "process"),
        1.0,
        "{c:?}"
    );
    assert_eq!(count("readmodel", topics::TICKETS, "process"), 1.0, "{c:?}");
    assert_eq!(count("timeseries", topics::SAMPLES, "decode"), 3.0, "{c:?}");
    assert_eq!(count("readmodel", topics::SAMPLES, "decode"), 3.0, "{c:?}");
    assert_eq!(
        count("timeseries", topics::SAMPLES, "process"),
        1.0,
        "{c:?}"
    );
    for topic in [
        topics::HEARTBEATS,
        topics::ALERTS,
        topics::AGENTS,
        topics::COMMANDS,
        topics::INVENTORY,
        topics::TICKETS,
        topics::RULES,
    ] {
        assert_eq!(count("readmodel", topic, "decode"), 3.0, "{topic}: {c:?}");
    }
    // Everything is committed / stored past the bad records.
    let stored: BTreeMap<(String, u32), i64> =
        e.rm.offsets("readmodel")
            .await
            .expect("offsets")
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.next_offset))
            .collect();
    for (topic, p, o) in raw
        .keys()
        .filter(|k| fleet_projections::project::READ_MODEL_TOPICS.contains(&k.0.as_str()))
    {
        assert!(
            stored.get(&(topic.clone(), *p)).is_some_and(|n| n > o),
            "readmodel stored {topic}/{p} past {o}: {stored:?}"
        );
    }
    let _ = stop.send(true);
    handle.await.expect("stopped");

    // A restart, with a new time-series group that reads the metrics topic again from the
    // start: no dead letter is written twice.
    let before = dead_letters(log).await.len();
    let (stop, handle) = start(&e, "dl-ts-2");
    let ends = log.end_offsets(topics::METRICS).await.expect("ends");
    wait_until("the new group to commit the metrics topic", async || {
        let committed = log
            .committed_offsets("dl-ts-2", topics::METRICS)
            .await
            .expect("committed");
        ends.iter()
            .zip(&committed)
            .all(|(e, c)| *e == 0 || c.unwrap_or(0) >= *e)
    })
    .await;
    let _ = stop.send(true);
    handle.await.expect("stopped");
    assert_eq!(
        dead_letters(log).await.len(),
        before,
        "the same consumer gives up on a record once"
    );
}
