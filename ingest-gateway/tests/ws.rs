//! The agent WebSocket, against the real embedded log: sessions driven through channels,
//! plus one real socket on 127.0.0.1:0 with a tungstenite client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::Message;
use axum::http::{Request, StatusCode};
use common::*;
use fleet_ingest_gateway::{app, GatewayConfig, GatewayState};
use fleet_schemas::api::{ServerMessage, AGENT_ID_HEADER};
use fleet_schemas::{Heartbeat, MetricReport};
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tower::ServiceExt as _;

fn error_of(m: &ServerMessage) -> (Option<u64>, u16, Option<String>, Option<u64>) {
    match m {
        ServerMessage::Error {
            id,
            status,
            error,
            retry_after_secs,
        } => (*id, *status, error.field.clone(), *retry_after_secs),
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test]
async fn metrics_frame_is_acked_and_on_the_topic() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let mut agent = Agent::connect(&state, "ws-agent").await;
    let answer = agent
        .request(json!({"type": "metrics", "id": 1, "reports": [report(&now(), json!(12.5)), report(&now(), json!(99.0))]}))
        .await;
    assert_eq!(
        answer,
        ServerMessage::Ack {
            id: 1,
            accepted: 2,
            rejected: Vec::new()
        }
    );
    // Acked means written: the reports are on the topic now, no waiting.
    let written = read_topic::<MetricReport>(&log).await;
    assert_eq!(written.len(), 2);
    assert!(written.iter().all(|r| r.agent_id == "ws-agent"));
    let answer = agent
        .request(json!({"type": "heartbeat", "id": 2, "heartbeat": heartbeat(4)}))
        .await;
    assert!(
        matches!(
            answer,
            ServerMessage::Ack {
                id: 2,
                accepted: 1,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(read_topic::<Heartbeat>(&log).await[0].sequence, 4);
}

#[tokio::test]
async fn bad_frames_get_errors_naming_the_field_and_the_socket_keeps_working() {
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        max_body_bytes: 4096,
        max_inventory_bytes: 8192,
        ..open_config()
    };
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), cfg);
    let mut agent = Agent::connect(&state, "clumsy").await;

    let bad_type = json!({"type": "metrics", "id": 1, "reports": [report(&now(), json!(1.0)), report(&now(), json!("high"))]});
    let (id, status, field, _) = error_of(&agent.request(bad_type).await);
    assert_eq!((id, status), (Some(1), 400));
    assert_eq!(
        field.as_deref(),
        Some("reports[1].cpu_percent"),
        "as HTTP names it"
    );

    agent
        .send_text("{\"type\": \"metrics\", \"id\": ".into())
        .await;
    let (id, status, field, _) = error_of(&agent.next_message().await);
    assert_eq!((id, status, field.as_deref()), (None, 400, Some("body")));

    let (id, status, field, _) =
        error_of(&agent.request(json!({"type": "telemetry", "id": 3})).await);
    assert_eq!((id, status, field.as_deref()), (Some(3), 400, Some("type")));

    let mut hb = heartbeat(1);
    hb["sent_at"] = json!(17);
    let (_, status, field, _) = error_of(
        &agent
            .request(json!({"type": "heartbeat", "id": 4, "heartbeat": hb}))
            .await,
    );
    assert_eq!((status, field.as_deref()), (400, Some("heartbeat.sent_at")));

    // Validation (not parsing) errors name the path within the frame too.
    let mut hb = heartbeat(1);
    hb["sent_at"] = json!("2020-01-01T00:00:00Z");
    let (_, status, field, _) = error_of(
        &agent
            .request(json!({"type": "heartbeat", "id": 5, "heartbeat": hb}))
            .await,
    );
    assert_eq!((status, field.as_deref()), (400, Some("heartbeat.sent_at")));

    let (_, status, field, _) = error_of(
        &agent
            .request(json!({"type": "metrics", "id": 6, "reports": [report(&now(), json!(150.0))]}))
            .await,
    );
    assert_eq!(
        (status, field.as_deref()),
        (422, Some("reports[0].cpu_percent"))
    );

    agent.send_raw(Message::Binary(vec![1, 2, 3].into())).await;
    let (id, status, _, _) = error_of(&agent.next_message().await);
    assert_eq!((id, status), (None, 415));

    let big =
        json!({"type": "heartbeat", "id": 7, "heartbeat": heartbeat(1), "pad": "x".repeat(5000)});
    let (id, status, _, _) = error_of(&agent.request(big).await);
    assert_eq!((id, status), (Some(7), 413));

    // After all that, the socket still works.
    let ok = agent
        .request(json!({"type": "heartbeat", "id": 8, "heartbeat": heartbeat(2)}))
        .await;
    assert!(
        matches!(
            ok,
            ServerMessage::Ack {
                id: 8,
                accepted: 1,
                ..
            }
        ),
        "{ok:?}"
    );
    assert_eq!(read_topic::<Heartbeat>(&log).await.len(), 1);
    assert!(!agent.session.is_finished());
}

#[tokio::test]
async fn rate_limit_answers_429_frames() {
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        rate_limit_per_second: 1,
        rate_limit_burst: 1,
        ..open_config()
    };
    let state = GatewayState::new(log, fleet_schemas::Wire::plain(), cfg);
    let mut agent = Agent::connect(&state, "chatty").await;
    let mut limited = None;
    for id in 1..=3 {
        let answer = agent
            .request(json!({"type": "heartbeat", "id": id, "heartbeat": heartbeat(id)}))
            .await;
        if let ServerMessage::Error { .. } = answer {
            limited = Some(error_of(&answer));
            break;
        }
    }
    let (id, status, _, retry) = limited.expect("a 429 frame within 3 frames at 1/s");
    assert!(id.is_some());
    assert_eq!(status, 429);
    assert!(retry.is_some_and(|s| s >= 1), "{retry:?}");
}

#[tokio::test]
async fn log_down_answers_503_frames_with_retry_after() {
    let state = GatewayState::new(
        Arc::new(DownLog),
        fleet_schemas::Wire::plain(),
        GatewayConfig {
            retry_after: std::time::Duration::from_secs(7),
            ..open_config()
        },
    );
    let mut agent = Agent::connect(&state, "patient").await;
    let (id, status, _, retry) = error_of(
        &agent
            .request(json!({"type": "heartbeat", "id": 9, "heartbeat": heartbeat(1)}))
            .await,
    );
    assert_eq!((id, status, retry), (Some(9), 503, Some(7)));
}

#[tokio::test]
async fn idle_socket_is_pinged_then_closed() {
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        ws_ping_interval: Duration::from_secs(1),
        ws_idle_timeout: Duration::from_secs(3),
        ..open_config()
    };
    let state = GatewayState::new(log, fleet_schemas::Wire::plain(), cfg);
    let mut agent = Agent::connect(&state, "quiet").await;
    let mut pinged = false;
    let close = loop {
        match agent.next_frame().await {
            Some(Message::Ping(_)) => pinged = true,
            Some(Message::Close(c)) => break c,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(pinged, "pinged before the idle close");
    assert_eq!(close.map(|c| c.code), Some(1001));
    tokio::time::timeout(PATIENCE, &mut agent.session)
        .await
        .expect("session ends")
        .expect("no panic");
    assert!(!state.hub().is_connected("quiet"));
}

#[tokio::test]
async fn a_second_connection_replaces_the_first() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log, fleet_schemas::Wire::plain(), open_config());
    let mut first = Agent::connect(&state, "twice").await;
    let mut second = Agent::connect(&state, "twice").await;
    match first.next_frame().await {
        Some(Message::Close(Some(c))) => assert_eq!(c.code, 1000),
        other => panic!("expected a close frame, got {other:?}"),
    }
    tokio::time::timeout(PATIENCE, &mut first.session)
        .await
        .expect("old session ends")
        .expect("no panic");
    assert!(state.hub().is_connected("twice"), "the newer socket stays");
    assert!(state.hub().push(
        "twice",
        ServerMessage::Ack {
            id: 42,
            accepted: 0,
            rejected: Vec::new()
        }
    ));
    assert!(matches!(
        second.next_message().await,
        ServerMessage::Ack { id: 42, .. }
    ));
}

#[tokio::test]
async fn deactivation_closes_the_socket() {
    use fleet_schemas::{AgentLifecycle, AgentLifecycleKind, Record as _};
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        ws_ping_interval: Duration::from_secs(3600),
        ..open_config()
    };
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), cfg);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let watcher = tokio::spawn(fleet_ingest_gateway::watch_deactivations(
        state.clone(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let mut agent = Agent::connect(&state, "revoked").await;
    // The watcher reads from "now on" once subscribed: write the event until it lands.
    let mut frame = None;
    for attempt in 0..600 {
        let now = fleet_schemas::time::now_micros();
        let ev = AgentLifecycle {
            event_id: uuid_for(attempt),
            tenant_id: "default".into(),
            agent_id: "revoked".into(),
            kind: AgentLifecycleKind::Deactivated,
            location_id: None,
            device_name: None,
            facts: None,
            actor: Some("test".into()),
            reason: None,
            tags: None,
            occurred_at: now,
            ingested_at: now,
        };
        log.produce(
            AgentLifecycle::TOPIC,
            vec![fleet_event_log::ProduceRecord::keyed(
                "revoked",
                fleet_schemas::codec::Wire::plain()
                    .encode(&ev)
                    .expect("encode"),
            )],
        )
        .await
        .expect("produce");
        if let Ok(f) = tokio::time::timeout(Duration::from_millis(100), agent.next_frame()).await {
            frame = f;
            break;
        }
    }
    match frame {
        Some(Message::Close(Some(c))) => assert_eq!(c.code, 1008),
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(!state.hub().is_connected("revoked"));
    let _ = stop_tx.send(());
    watcher.await.expect("join").expect("watcher");
}

fn uuid_for(n: u32) -> String {
    fleet_schemas::ids::v5(&["deactivate", &n.to_string()]).to_string()
}

#[tokio::test]
async fn unauthenticated_upgrade_gets_401_json() {
    let (_d, log) = embedded().await;
    let router = app(GatewayState::new(
        log,
        fleet_schemas::Wire::plain(),
        GatewayConfig::default(),
    ));
    let resp = router
        .clone()
        .oneshot(
            Request::get("/api/v1/agents/ws")
                .header(AGENT_ID_HEADER, "stranger")
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");

    let resp = router
        .oneshot(
            Request::get("/api/v1/agents/ws")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value =
        serde_json::from_slice(&resp.into_body().collect().await.expect("body").to_bytes())
            .expect("json");
    assert_eq!(body["error"]["field"], "agent_id");
}

#[tokio::test]
async fn real_socket_roundtrip_and_refusal() {
    let (_d, log) = embedded().await;
    let serve = |state: GatewayState| async move {
        let router = app(state).merge(fleet_service::endpoints::router(
            "gateway",
            Arc::new(|| Ok(())),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        (addr, server)
    };

    // auth = required and no credential: refused before the upgrade.
    let (addr, locked) = serve(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        GatewayConfig::default(),
    ))
    .await;
    let mut req = format!("ws://{addr}/api/v1/agents/ws")
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert(AGENT_ID_HEADER, "stranger".parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 401);
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    locked.abort();

    let (addr, open) = serve(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ))
    .await;
    let (mut socket, resp) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/api/v1/agents/ws?agent_id=net-ws"))
            .await
            .expect("upgrade");
    assert_eq!(resp.status().as_u16(), 101);
    let frame = json!({"type": "metrics", "id": 5, "reports": [report(&now(), json!(3.0))]});
    socket
        .send(tungstenite::Message::Text(frame.to_string().into()))
        .await
        .expect("send");
    let answer = loop {
        match socket.next().await.expect("a frame").expect("ok") {
            tungstenite::Message::Text(t) => {
                break serde_json::from_str::<ServerMessage>(t.as_str()).expect("message")
            }
            tungstenite::Message::Ping(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(
        matches!(
            answer,
            ServerMessage::Ack {
                id: 5,
                accepted: 1,
                ..
            }
        ),
        "{answer:?}"
    );
    assert_eq!(read_topic::<MetricReport>(&log).await[0].agent_id, "net-ws");

    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        fleet_ingest_gateway::metrics::WS_CONNECTIONS,
        fleet_ingest_gateway::metrics::WS_FRAMES,
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    socket.close(None).await.expect("close");
    open.abort();
}
