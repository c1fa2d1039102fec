//! Dead letters of the gateway's readers, over the real embedded log: corrupt records
//! (garbage, a truncated datum, a valid record of another type) in `fleet.commands.v1`
//! (the dispatcher's replayed window and its live tail) and in `fleet.agents.v1` (the
//! deactivation watcher) land in `fleet.deadletter.v1` with their coordinates, and the
//! valid records around them still work: the commands are delivered, the deactivation
//! closes the agent's socket.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Message;
use common::*;
use fleet_event_log::{EventLog, ProduceRecord, RecordPosition};
use fleet_ingest_gateway::GatewayState;
use fleet_schemas::api::ServerMessage;
use fleet_schemas::{
    codec, fixtures, ids, topics, AgentLifecycleKind, CommandEvent, CommandEventKind, DeadLetter,
    DeadLetterKind, Record as _,
};

async fn produce_raw(
    log: &Arc<dyn EventLog>,
    topic: &str,
    key: &str,
    value: Vec<u8>,
) -> RecordPosition {
    log.produce(
        topic,
        vec![ProduceRecord {
            key: Some(key.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(fleet_schemas::time::now_micros() / 1000),
        }],
    )
    .await
    .expect("produce")[0]
}

/// Garbage, `good` cut in half, and a metric report (a record of another type).
fn corrupt_values(good: &[u8]) -> [Vec<u8>; 3] {
    [
        b"garbage \xff\xfe: not an Avro record at all".to_vec(),
        good[..good.len() / 2].to_vec(),
        codec::Wire::plain()
            .encode(&fixtures::metric_report(
                "t1",
                "x",
                fleet_schemas::time::now_micros(),
            ))
            .expect("encode"),
    ]
}

fn requested(id: &str, agent: &str) -> CommandEvent {
    CommandEvent {
        command_type: "restart_service".into(),
        args: HashMap::from([("service".to_owned(), "nginx".to_owned())]),
        timeout_secs: 30,
        ..CommandEvent::step(
            CommandEventKind::Requested,
            id,
            "t1",
            agent,
            fleet_schemas::time::now_micros(),
        )
    }
}

async fn dead_letters(log: &Arc<dyn EventLog>) -> Vec<DeadLetter> {
    read_topic::<DeadLetter>(log).await
}

/// Waits until a dead letter of `consumer` names each of `positions` of `topic`.
async fn wait_dead(
    log: &Arc<dyn EventLog>,
    consumer: &str,
    topic: &str,
    positions: &[RecordPosition],
) -> Vec<DeadLetter> {
    let want: BTreeSet<(u32, i64)> = positions.iter().map(|p| (p.partition, p.offset)).collect();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mine: Vec<DeadLetter> = dead_letters(log)
            .await
            .into_iter()
            .filter(|d| d.consumer == consumer && d.source_topic == topic)
            .collect();
        let have: BTreeSet<(u32, i64)> = mine
            .iter()
            .map(|d| {
                (
                    u32::try_from(d.source_partition).expect("p"),
                    d.source_offset,
                )
            })
            .collect();
        if want.is_subset(&have) {
            return mine;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{consumer}: no dead letters for {:?} (have {have:?})",
            want.difference(&have).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatcher_and_the_deactivation_watcher_send_corrupt_records_to_the_dead_letters() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());

    // The dispatcher's replayed window: valid, corrupt ×3, valid.
    let c_a = requested(&ids::v5(&["dl", "a"]).to_string(), "dl-agent");
    let c_b = requested(&ids::v5(&["dl", "b"]).to_string(), "dl-agent");
    produce_raw(
        &log,
        topics::COMMANDS,
        "dl-agent",
        codec::Wire::plain().encode(&c_a).expect("encode"),
    )
    .await;
    let mut bad = Vec::new();
    for v in corrupt_values(&codec::Wire::plain().encode(&c_a).expect("encode")) {
        bad.push((
            produce_raw(&log, topics::COMMANDS, "dl-agent", v.clone()).await,
            v,
        ));
    }
    produce_raw(
        &log,
        topics::COMMANDS,
        "dl-agent",
        codec::Wire::plain().encode(&c_b).expect("encode"),
    )
    .await;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let dispatcher = tokio::spawn(fleet_ingest_gateway::commands::run_dispatcher(
        state.clone(),
        stop(stop_rx.clone()),
    ));
    let watcher = tokio::spawn(fleet_ingest_gateway::watch_deactivations(
        state.clone(),
        stop(stop_rx),
    ));

    let positions: Vec<RecordPosition> = bad.iter().map(|(p, _)| *p).collect();
    let got = wait_dead(&log, "gateway-commands", topics::COMMANDS, &positions).await;
    assert_eq!(got.len(), 3, "once each: {got:#?}");
    for d in &got {
        let (_, bytes) = bad
            .iter()
            .find(|(p, _)| {
                i64::from(p.partition) == i64::from(d.source_partition)
                    && p.offset == d.source_offset
            })
            .expect("one of ours");
        assert_eq!(&d.value.0, bytes);
        assert_eq!(d.kind, DeadLetterKind::Decode);
        assert!(
            d.group.starts_with("fleet-gateway-commands-"),
            "{}",
            d.group
        );
    }
    // Both valid commands around them are delivered to the agent.
    let mut agent = Agent::connect(&state, "dl-agent").await;
    let mut delivered = BTreeSet::new();
    while delivered.len() < 2 {
        match tokio::time::timeout(PATIENCE, agent.next_message()).await {
            Ok(ServerMessage::Command { command }) => {
                delivered.insert(command.command_id);
            }
            Ok(_) => {}
            Err(_) => panic!("commands not delivered: {delivered:?}"),
        }
    }
    assert_eq!(
        delivered,
        [c_a.command_id.clone(), c_b.command_id.clone()].into()
    );

    // The deactivation watcher reads from "now on": write garbage until it says it read
    // some, then the other two kinds of corrupt record and a valid DEACTIVATED.
    let mut revoked = Agent::connect(&state, "dl-revoked").await;
    let mut garbage = Vec::new();
    let first = 'found: {
        for _ in 0..300 {
            garbage.push(
                produce_raw(
                    &log,
                    topics::AGENTS,
                    "dl-revoked",
                    b"garbage \xff\xfe".to_vec(),
                )
                .await,
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let seen: BTreeSet<i64> = dead_letters(&log)
                .await
                .iter()
                .filter(|d| d.consumer == "gateway-deactivations")
                .map(|d| d.source_offset)
                .collect();
            if let Some(p) = garbage.iter().find(|p| seen.contains(&p.offset)) {
                break 'found *p;
            }
        }
        panic!("the deactivation watcher never read the agents topic");
    };
    let mut deactivated =
        fixtures::agent_registered("t1", "dl-revoked", fleet_schemas::time::now_micros());
    deactivated.kind = AgentLifecycleKind::Deactivated;
    deactivated.facts = None;
    let good = codec::Wire::plain().encode(&deactivated).expect("encode");
    let mut later = Vec::new();
    for v in corrupt_values(&good).into_iter().skip(1) {
        later.push(produce_raw(&log, topics::AGENTS, "dl-revoked", v).await);
    }
    produce_raw(&log, topics::AGENTS, deactivated.key(), good).await;
    let mut read: Vec<RecordPosition> = garbage
        .iter()
        .copied()
        .filter(|p| p.partition == first.partition && p.offset >= first.offset)
        .collect();
    read.extend(&later);
    let got = wait_dead(&log, "gateway-deactivations", topics::AGENTS, &read).await;
    assert!(got.iter().all(|d| d.kind == DeadLetterKind::Decode));
    // ... and the valid DEACTIVATED after them still closes the socket.
    let frame = tokio::time::timeout(PATIENCE, async {
        loop {
            match revoked.next_frame().await {
                Some(Message::Close(c)) => return c,
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .expect("the socket closes");
    assert_eq!(frame.map(|c| c.code), Some(1008));

    let _ = stop_tx.send(true);
    dispatcher.await.expect("join").expect("dispatcher");
    watcher.await.expect("join").expect("watcher");
}
