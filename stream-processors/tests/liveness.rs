//! Liveness over the real embedded log: an agent that stops heartbeating goes OFFLINE
//! once although nothing more arrives on its partition (the check is driven by time),
//! comes back ONLINE once with its next heartbeat, and neither a restart nor a replay in
//! a new group repeats either. A deactivated agent is never reported; two instances in
//! one group each judge their own partitions.

mod support;

use fleet_stream_processors::config::LivenessSettings;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::{partition_for_key, EventLog};
use fleet_schemas::{fixtures, ids, topics, AgentLifecycle, AgentLifecycleKind, Heartbeat};
use fleet_stream_processors::liveness::run_liveness;
use fleet_stream_processors::ProcessorsConfig;
use support::{open_log, produce, read_all, wait_for, Running};

fn config(group: &str) -> ProcessorsConfig {
    ProcessorsConfig {
        liveness: LivenessSettings {
            group: group.into(),
            offline_after: Duration::from_secs(3),
            check_interval: Duration::from_secs(1),
            ..LivenessSettings::default()
        },
        ..ProcessorsConfig::default()
    }
}

fn start(log: &Arc<dyn EventLog>, group: &str) -> Running {
    let log = log.clone();
    let cfg = config(group);
    Running::start(move |ready, shutdown| {
        run_liveness(log, fleet_schemas::Wire::plain(), cfg, ready, shutdown)
    })
}

async fn heartbeat(log: &dyn EventLog, agent: &str, seq: i64) -> Heartbeat {
    let now = fleet_schemas::time::now_micros();
    let mut hb = fixtures::heartbeat("t1", agent, now, seq);
    hb.ingested_at = now;
    hb.event_id = ids::v7_at(now, &[agent, &seq.to_string()]).to_string();
    produce(log, &hb).await;
    hb
}

/// Heartbeats `agent` every 300 ms until the flag is cleared.
fn keep_alive(log: &Arc<dyn EventLog>, agent: &'static str) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    let (log, flag) = (log.clone(), on.clone());
    tokio::spawn(async move {
        let mut seq = 1000;
        while flag.load(Ordering::Relaxed) {
            heartbeat(log.as_ref(), agent, seq).await;
            seq += 1;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    on
}

fn count(events: &[AgentLifecycle], agent: &str, kind: AgentLifecycleKind) -> usize {
    events
        .iter()
        .filter(|e| e.agent_id == agent && e.kind == kind)
        .count()
}

fn part(agent: &str) -> u32 {
    partition_for_key(agent.as_bytes(), 6)
}

/// Gives a running processor several checks to do something wrong.
async fn let_it_check() {
    tokio::time::sleep(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_once_by_time_online_once_and_no_repeats() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let (_dir, log) = open_log().await;
    // `quiet` and `alive` are on different partitions: nothing more arrives on quiet's.
    let quiet = "agent-quiet";
    let alive = [
        "agent-alive-0",
        "agent-alive-1",
        "agent-alive-2",
        "agent-alive-3",
    ]
    .into_iter()
    .find(|a| part(a) != part(quiet))
    .expect("an agent on another partition");
    let gone = "agent-deactivated";
    let mut deactivated = fixtures::agent_registered("t1", gone, fleet_schemas::time::now_micros());
    deactivated.kind = AgentLifecycleKind::Deactivated;
    deactivated.event_id = ids::v5(&[gone, "DEACTIVATED"]).to_string();
    produce(log.as_ref(), &deactivated).await;
    heartbeat(log.as_ref(), gone, 1).await;
    let alive_on = keep_alive(&log, alive);
    let last = heartbeat(log.as_ref(), quiet, 1).await;

    let p = start(&log, "lv-1");
    p.ready().await;
    let events = wait_for::<AgentLifecycle>(log.as_ref(), "OFFLINE", |e| {
        count(e, quiet, AgentLifecycleKind::Offline) > 0
    })
    .await;
    let off = events
        .iter()
        .find(|e| e.agent_id == quiet)
        .expect("offline event");
    assert_eq!(off.kind, AgentLifecycleKind::Offline);
    assert_eq!(
        off.event_id,
        ids::v5(&[quiet, "OFFLINE", &last.ingested_at.to_string()]).to_string()
    );
    let_it_check().await;
    p.stop().await;

    // A restart in the same group: quiet is still silent, and already offline.
    let p = start(&log, "lv-1");
    p.ready().await;
    let_it_check().await;
    let events = read_all::<AgentLifecycle>(log.as_ref()).await;
    assert_eq!(
        count(&events, quiet, AgentLifecycleKind::Offline),
        1,
        "{events:?}"
    );

    // It comes back.
    let back = heartbeat(log.as_ref(), quiet, 2).await;
    let quiet_on = keep_alive(&log, quiet);
    let events = wait_for::<AgentLifecycle>(log.as_ref(), "ONLINE", |e| {
        count(e, quiet, AgentLifecycleKind::Online) > 0
    })
    .await;
    let on = events
        .iter()
        .find(|e| e.agent_id == quiet && e.kind == AgentLifecycleKind::Online)
        .expect("online");
    assert_eq!(
        on.event_id,
        ids::v5(&[quiet, "ONLINE", &back.occurred_at.to_string()]).to_string()
    );
    p.stop().await;

    // A new group replays every heartbeat of the lookback window.
    let p = start(&log, "lv-replay");
    p.ready().await;
    let_it_check().await;
    p.stop().await;
    alive_on.store(false, Ordering::Relaxed);
    quiet_on.store(false, Ordering::Relaxed);

    let events = read_all::<AgentLifecycle>(log.as_ref()).await;
    assert_eq!(
        count(&events, quiet, AgentLifecycleKind::Offline),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(&events, quiet, AgentLifecycleKind::Online),
        1,
        "{events:?}"
    );
    assert_eq!(
        count(&events, alive, AgentLifecycleKind::Offline),
        0,
        "{events:?}"
    );
    assert_eq!(
        count(&events, gone, AgentLifecycleKind::Offline),
        0,
        "{events:?}"
    );

    let rendered = prometheus.render();
    for name in fleet_stream_processors::metrics::LIVENESS {
        assert!(rendered.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_agent_is_judged_by_its_own_heartbeat_interval() {
    let (_dir, log) = open_log().await;
    let (fast, slow) = ("agent-every-5s", "agent-every-60s");
    let mut last = Vec::new();
    for (agent, secs) in [(fast, 5.0), (slow, 60.0)] {
        let now = fleet_schemas::time::now_micros();
        let mut hb = fixtures::heartbeat("t1", agent, now, 1);
        hb.ingested_at = now;
        hb.heartbeat_interval_secs = Some(secs);
        produce(log.as_ref(), &hb).await;
        last.push(hb);
    }
    let cfg = ProcessorsConfig {
        liveness: LivenessSettings {
            group: "lv-interval".into(),
            // Shorter than both agents' thresholds: not what decides here.
            offline_after: Duration::from_secs(3),
            missed_heartbeats: 3,
            min_offline_after: Duration::from_secs(1),
            check_interval: Duration::from_secs(1),
            ..LivenessSettings::default()
        },
        ..ProcessorsConfig::default()
    };
    let log2 = log.clone();
    let p = Running::start(move |ready, shutdown| {
        run_liveness(log2, fleet_schemas::Wire::plain(), cfg, ready, shutdown)
    });
    p.ready().await;
    let events = wait_for::<AgentLifecycle>(log.as_ref(), "the 5 s agent OFFLINE", |e| {
        count(e, fast, AgentLifecycleKind::Offline) > 0
    })
    .await;
    let off = events
        .iter()
        .find(|e| e.agent_id == fast && e.kind == AgentLifecycleKind::Offline)
        .expect("offline");
    // Judged after 3 × 5 s of silence, not after the global 3 s.
    let judged_after = off.ingested_at - last[0].ingested_at;
    assert!(
        judged_after > 15_000_000,
        "offline after {judged_after} µs, before 3 × 5 s"
    );
    assert_eq!(
        count(&events, slow, AgentLifecycleKind::Offline),
        0,
        "the 60 s agent is not offline after ~15 s: {events:?}"
    );
    let_it_check().await;
    p.stop().await;
    let events = read_all::<AgentLifecycle>(log.as_ref()).await;
    assert_eq!(count(&events, slow, AgentLifecycleKind::Offline), 0);
    assert_eq!(count(&events, fast, AgentLifecycleKind::Offline), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_in_one_group_each_judge_their_partitions_once() {
    let (_dir, log) = open_log().await;
    // One agent per partition.
    let mut agents: Vec<String> = Vec::new();
    for i in 0.. {
        let a = format!("agent-{i}");
        if !agents.iter().any(|b| part(b) == part(&a)) {
            agents.push(a);
        }
        if agents.len() == 6 {
            break;
        }
    }
    let a = start(&log, "lv-shared");
    a.ready().await;
    let b = start(&log, "lv-shared"); // a rebalance: `a` gives up half its partitions
    b.ready().await;
    for agent in &agents {
        heartbeat(log.as_ref(), agent, 1).await;
    }
    wait_for::<AgentLifecycle>(log.as_ref(), "every agent OFFLINE", |e| {
        agents
            .iter()
            .all(|a| count(e, a, AgentLifecycleKind::Offline) > 0)
    })
    .await;
    let_it_check().await;
    a.stop().await;
    b.stop().await;
    let events = read_all::<AgentLifecycle>(log.as_ref()).await;
    for agent in &agents {
        assert_eq!(
            count(&events, agent, AgentLifecycleKind::Offline),
            1,
            "{agent}: {events:?}"
        );
    }
    assert_eq!(events.len(), agents.len(), "{events:?}");
    let _ = topics::HEARTBEATS;
}
