//! Command delivery against the real embedded log: the dispatcher follows
//! fleet.commands.v1, pushes to connected agents, answers polls, and turns progress and
//! results (WebSocket or HTTP) into command events.

mod common;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::*;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_ingest_gateway::{app, GatewayState};
use fleet_schemas::api::ServerMessage;
use fleet_schemas::{ids, CommandEvent, CommandEventKind, Record as _};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

fn command(kind: CommandEventKind, id: &str, agent: &str, approval: bool, at: i64) -> CommandEvent {
    CommandEvent {
        event_id: ids::v5(&[id, &format!("{kind:?}"), "0"]).to_string(),
        command_type: "restart_service".into(),
        args: HashMap::from([("service".to_owned(), "nginx".to_owned())]),
        requires_approval: approval,
        timeout_secs: 30,
        actor: Some("alice".into()),
        ..CommandEvent::step(kind, id, "t1", agent, at)
    }
}

async fn write(log: &Arc<dyn EventLog>, ev: &CommandEvent) {
    log.produce(
        CommandEvent::TOPIC,
        vec![ProduceRecord {
            key: Some(ev.agent_id.as_bytes().to_vec()),
            value: fleet_schemas::codec::Wire::plain()
                .encode(ev)
                .expect("encode"),
            timestamp_ms: Some(ev.occurred_at / 1000),
        }],
    )
    .await
    .expect("produce");
}

fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The command dispatcher of a test. [`Dispatcher::stop`] stops it and fails the test if
/// it ended with an error; an error before that is printed when it happens, so a test
/// that then times out waiting for a command shows why.
struct Dispatcher {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Dispatcher {
    fn start(state: &GatewayState) -> Dispatcher {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let run = fleet_ingest_gateway::commands::run_dispatcher(state.clone(), async {
            let _ = rx.await;
        });
        let task = tokio::spawn(async move {
            let result = run.await;
            if let Err(e) = &result {
                eprintln!("the command dispatcher failed: {e:#}");
            }
            result
        });
        Dispatcher { stop, task }
    }

    /// Stops it; fails if it had stopped with an error (or does not stop in 10 s).
    async fn stop(self) {
        let early = self.task.is_finished();
        let _ = self.stop.send(());
        tokio::time::timeout(std::time::Duration::from_secs(10), self.task)
            .await
            .expect("the dispatcher stops within 10 s")
            .expect("the dispatcher task does not panic")
            .expect("the dispatcher ends without an error");
        assert!(!early, "the dispatcher stopped before the test asked it to");
    }
}

async fn next_command(agent: &mut Agent) -> fleet_schemas::api::CommandSpec {
    match agent.next_message().await {
        ServerMessage::Command { command } => command,
        other => panic!("expected a command, got {other:?}"),
    }
}

async fn wait_event(
    log: &Arc<dyn EventLog>,
    command_id: &str,
    kind: CommandEventKind,
) -> CommandEvent {
    wait_for::<CommandEvent, _>(log, |all| {
        all.iter()
            .find(|e| e.command_id == command_id && e.kind == kind)
            .cloned()
    })
    .await
}

async fn http(
    router: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    let req = match body {
        Some(b) => req.body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .expect("request");
    let resp = router.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Polls until the list satisfies `done` (the dispatcher may still be reading).
async fn poll_until(router: &Router, agent: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, v) = http(
            router,
            "GET",
            &format!("/api/v1/agents/{agent}/commands"),
            None,
        )
        .await;
        if status == StatusCode::OK {
            let ids: Vec<String> = v["commands"]
                .as_array()
                .expect("commands")
                .iter()
                .map(|c| c["command_id"].as_str().expect("id").to_owned())
                .collect();
            if done(&ids) {
                return ids;
            }
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        }
        assert!(tokio::time::Instant::now() < deadline, "poll never matched");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn result_body(id: &str, exit_code: i32, stdout: &str) -> Value {
    json!({
        "command_id": id, "status": if exit_code == 0 { "succeeded" } else { "failed" },
        "exit_code": exit_code, "stdout": stdout, "stderr": "",
        "started_at": now(), "finished_at": now()
    })
}

#[tokio::test]
async fn requested_command_reaches_the_connected_agent_and_is_dispatched() {
    let handle = fleet_service::endpoints::metrics_handle();
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let mut agent = Agent::connect(&state, "cmd-agent").await;
    let id = new_id();
    let now = fleet_schemas::time::now_micros();
    write(
        &log,
        &command(CommandEventKind::Requested, &id, "cmd-agent", false, now),
    )
    .await;
    let got = next_command(&mut agent).await;
    assert_eq!(got.command_id, id);
    assert_eq!(got.command_type, "restart_service");
    assert_eq!(got.args.get("service").map(String::as_str), Some("nginx"));
    assert_eq!(got.timeout_secs, 30);
    let d = wait_event(&log, &id, CommandEventKind::Dispatched).await;
    assert_eq!(d.event_id, ids::v5(&[&id, "DISPATCHED", "0"]).to_string());
    assert_eq!(d.agent_id, "cmd-agent");
    assert_eq!(d.tenant_id, "t1");
    assert!(d.actor.is_some_and(|a| a.starts_with("gateway")));
    assert!(handle
        .render()
        .contains(fleet_ingest_gateway::metrics::COMMANDS_DISPATCHED));
    dispatcher.stop().await;
}

#[tokio::test]
async fn command_needing_approval_waits_until_approved() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let mut agent = Agent::connect(&state, "careful").await;
    let (needs, free) = (new_id(), new_id());
    let now = fleet_schemas::time::now_micros();
    write(
        &log,
        &command(CommandEventKind::Requested, &needs, "careful", true, now),
    )
    .await;
    // Same agent, same partition: once this one arrives, the first was seen and held back.
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &free,
            "careful",
            false,
            now + 1,
        ),
    )
    .await;
    assert_eq!(next_command(&mut agent).await.command_id, free);
    let pending: Vec<String> = state
        .commands()
        .pending_for("careful")
        .into_iter()
        .map(|c| c.command_id)
        .collect();
    assert_eq!(
        pending,
        vec![free.clone()],
        "the unapproved one is not pending"
    );
    write(
        &log,
        &command(CommandEventKind::Approved, &needs, "careful", true, now + 2),
    )
    .await;
    assert_eq!(next_command(&mut agent).await.command_id, needs);
    dispatcher.stop().await;
}

/// A second REQUESTED with the id of a command that waits for its approval (a reused
/// idempotency key with another body) neither skips the approval nor changes what runs.
#[tokio::test]
async fn a_second_requested_cannot_skip_the_approval_or_change_the_command() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let mut agent = Agent::connect(&state, "guarded").await;
    let (needs, marker) = (new_id(), new_id());
    let now = fleet_schemas::time::now_micros();
    let mut first = command(CommandEventKind::Requested, &needs, "guarded", true, now);
    first.command_type = "run_script".into();
    first.args = HashMap::from([("script".to_owned(), "cleanup".to_owned())]);
    write(&log, &first).await;
    let mut second = command(
        CommandEventKind::Requested,
        &needs,
        "guarded",
        false,
        now + 1,
    );
    second.event_id = ids::v5(&[&needs, "REQUESTED", "again"]).to_string();
    second.command_type = "collect_diagnostics".into();
    second.args = HashMap::new();
    write(&log, &second).await;
    // Same agent, same partition: once this one arrives, both above were applied.
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &marker,
            "guarded",
            false,
            now + 2,
        ),
    )
    .await;
    assert_eq!(
        next_command(&mut agent).await.command_id,
        marker,
        "the command waiting for approval was not delivered"
    );
    write(
        &log,
        &command(CommandEventKind::Approved, &needs, "guarded", true, now + 3),
    )
    .await;
    let got = next_command(&mut agent).await;
    assert_eq!(got.command_id, needs);
    assert_eq!(got.command_type, "run_script");
    assert_eq!(
        got.args.get("script").map(String::as_str),
        Some("cleanup"),
        "exactly the first request"
    );
    dispatcher.stop().await;
}

#[tokio::test]
async fn poll_rebuilds_from_the_window_and_lists_pending_oldest_first() {
    let (_d, log) = embedded().await;
    let now = fleet_schemas::time::now_micros();
    let (old, done, first, second) = (new_id(), new_id(), new_id(), new_id());
    // Older than the lookback: not replayed.
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &old,
            "poller",
            false,
            now - 7_200_000_000,
        ),
    )
    .await;
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &done,
            "poller",
            false,
            now - 3_000_000,
        ),
    )
    .await;
    write(
        &log,
        &command(
            CommandEventKind::Completed,
            &done,
            "poller",
            false,
            now - 2_000_000,
        ),
    )
    .await;
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &first,
            "poller",
            false,
            now - 1_000_000,
        ),
    )
    .await;
    write(
        &log,
        &command(CommandEventKind::Requested, &second, "poller", false, now),
    )
    .await;
    // The dispatcher starts after the events were written: it finds them by replaying.
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let router = app(state);
    let ids = poll_until(&router, "poller", |ids| ids.len() >= 2).await;
    assert_eq!(ids, vec![first.clone(), second.clone()]);
    for id in [&first, &second] {
        let d = wait_event(&log, id, CommandEventKind::Dispatched).await;
        assert_eq!(d.event_id, ids::v5(&[id, "DISPATCHED", "0"]).to_string());
    }
    // Another agent has nothing.
    let (status, v) = http(&router, "GET", "/api/v1/agents/other/commands", None).await;
    assert_eq!((status, v), (StatusCode::OK, json!({"commands": []})));
    dispatcher.stop().await;
}

#[tokio::test]
async fn results_and_progress_over_ws_and_http_become_command_events() {
    let _ = fleet_service::endpoints::metrics_handle();
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let router = app(state.clone());
    let mut agent = Agent::connect(&state, "worker").await;
    let (a, b) = (new_id(), new_id());
    let now = fleet_schemas::time::now_micros();
    write(
        &log,
        &command(CommandEventKind::Requested, &a, "worker", false, now),
    )
    .await;
    write(
        &log,
        &command(CommandEventKind::Requested, &b, "worker", false, now + 1),
    )
    .await;
    assert_eq!(next_command(&mut agent).await.command_id, a);
    assert_eq!(next_command(&mut agent).await.command_id, b);

    // Over the socket.
    let ack = agent
        .request(json!({"type": "command_progress", "id": 1, "progress": {
            "command_id": a, "sequence": 1, "stream": "stdout", "chunk": "restarting", "at": now_rfc()}}))
        .await;
    assert!(
        matches!(
            ack,
            ServerMessage::Ack {
                id: 1,
                accepted: 1,
                ..
            }
        ),
        "{ack:?}"
    );
    let ack = agent
        .request(json!({"type": "command_result", "id": 2, "result": result_body(&a, 0, "ok\n")}))
        .await;
    assert!(
        matches!(
            ack,
            ServerMessage::Ack {
                id: 2,
                accepted: 1,
                ..
            }
        ),
        "{ack:?}"
    );
    let p = wait_event(&log, &a, CommandEventKind::Progress).await;
    assert_eq!(p.event_id, ids::v5(&[&a, "PROGRESS", "1"]).to_string());
    assert_eq!((p.sequence, p.chunk.as_deref()), (1, Some("restarting")));
    assert_eq!(
        p.command_type, "restart_service",
        "filled from the pending command"
    );
    let c = wait_event(&log, &a, CommandEventKind::Completed).await;
    assert_eq!(c.event_id, ids::v5(&[&a, "COMPLETED", "0"]).to_string());
    assert_eq!((c.exit_code, c.stdout.as_deref()), (Some(0), Some("ok\n")));
    assert_eq!(c.status.as_deref(), Some("succeeded"));
    assert_eq!((c.timeout_secs, c.tenant_id.as_str()), (30, "t1"));

    // Over HTTP.
    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/worker/commands/{b}/progress"),
        Some(json!({"command_id": b, "sequence": 2, "stream": "stderr", "chunk": "warn", "at": now_rfc()})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/worker/commands/{b}/result"),
        Some(result_body(&b, 3, "partial")),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1);
    let p = wait_event(&log, &b, CommandEventKind::Progress).await;
    assert_eq!(p.event_id, ids::v5(&[&b, "PROGRESS", "2"]).to_string());
    assert_eq!(p.stream.as_deref(), Some("stderr"));
    let c = wait_event(&log, &b, CommandEventKind::Completed).await;
    assert_eq!(
        (c.exit_code, c.stdout.as_deref()),
        (Some(3), Some("partial"))
    );
    assert_eq!(c.args.get("service").map(String::as_str), Some("nginx"));
    // Both are done: nothing pending any more.
    assert!(state.commands().pending_for("worker").is_empty());
    let rendered = fleet_service::endpoints::metrics_handle().render();
    assert!(rendered.contains(fleet_ingest_gateway::metrics::COMMAND_UPDATES));
    dispatcher.stop().await;
}

#[tokio::test]
async fn results_naming_the_wrong_command_are_refused() {
    let handle = fleet_service::endpoints::metrics_handle();
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let dispatcher = Dispatcher::start(&state);
    let router = app(state.clone());
    let mine = new_id();
    write(
        &log,
        &command(
            CommandEventKind::Requested,
            &mine,
            "owner",
            false,
            fleet_schemas::time::now_micros(),
        ),
    )
    .await;
    poll_until(&router, "owner", |ids| ids.contains(&mine)).await;

    let other = new_id();
    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/owner/commands/{other}/result"),
        Some(result_body(&mine, 0, "")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "command_id");

    // Another agent's command looks like one that does not exist (no oracle).
    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/intruder/commands/{mine}/result"),
        Some(result_body(&mine, 0, "")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "command_id");
    let (status, unknown) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/intruder/commands/{other}/result"),
        Some(result_body(&other, 0, "")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
    assert_eq!(unknown["error"], v["error"], "the same answer either way");
    // Progress for a command the gateway never dispatched: refused too, both transports.
    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/owner/commands/{other}/progress"),
        Some(json!({"command_id": other, "sequence": 1, "stream": "stdout", "chunk": "x", "at": now_rfc()})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    let mut intruder = Agent::connect(&state, "intruder").await;
    let answer = intruder
        .request(json!({"type": "command_result", "id": 9, "result": result_body(&mine, 0, "")}))
        .await;
    assert!(
        matches!(answer, ServerMessage::Error { status: 404, .. }),
        "{answer:?}"
    );
    assert!(handle
        .render()
        .contains(fleet_ingest_gateway::metrics::COMMAND_UPDATES_REFUSED));

    let (status, v) = http(
        &router,
        "POST",
        &format!("/api/v1/agents/owner/commands/{mine}/progress"),
        Some(json!({"command_id": mine, "sequence": 1, "stream": "video", "chunk": "", "at": now_rfc()})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "stream");
    // None of that was written.
    let events = read_topic::<CommandEvent>(&log).await;
    assert!(events.iter().all(|e| matches!(
        e.kind,
        CommandEventKind::Requested | CommandEventKind::Dispatched
    )));
    dispatcher.stop().await;
}

fn now_rfc() -> String {
    now()
}
