//! Remote configuration delivery against the real embedded log: the watcher reads
//! fleet.config.v1 and the agents' tags; a heartbeat that acknowledges another version gets
//! the configuration in its HTTP answer (and over the socket as a `config` frame), one that
//! acknowledges the desired version gets none, a change is pushed to a connected agent, and
//! bad heartbeat fields are refused naming them.

mod common;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::*;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_ingest_gateway::{app, GatewayState};
use fleet_schemas::api::ServerMessage;
use fleet_schemas::{fixtures, AgentLifecycleKind, ConfigScope, Record, RemoteConfigEvent};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

async fn write<T: Record>(log: &Arc<dyn EventLog>, v: &T) {
    let rec = ProduceRecord::keyed(
        v.key().as_bytes().to_vec(),
        fleet_schemas::Wire::plain().encode(v).expect("encode"),
    );
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

async fn post(app: &Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn heartbeat_acking(version: Option<i64>) -> Value {
    let mut hb = heartbeat(1);
    hb["heartbeat_interval_secs"] = json!(30.0);
    if let Some(v) = version {
        hb["config_version"] = json!(v);
    }
    hb
}

#[tokio::test]
async fn heartbeats_get_the_desired_config_until_they_acknowledge_it() {
    let (_d, log) = embedded().await;
    // An agent of tenant "default" (auth off) with tag web, and a config for that tag.
    let mut tagged = fixtures::agent_registered("default", "a1", 1_000);
    tagged.kind = AgentLifecycleKind::Updated;
    tagged.tags = Some(vec!["web".into()]);
    write(&log, &tagged).await;
    let mut tag_config = fixtures::remote_config("default", "web", 5_000);
    tag_config.scope = ConfigScope::Tag;
    tag_config.config_key = RemoteConfigEvent::key_for("default", ConfigScope::Tag, "web");
    write(&log, &tag_config).await;

    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(fleet_ingest_gateway::remote_config::run_config_watcher(
        state.clone(),
        async {
            let _ = stopped.await;
        },
    ));
    let app = app(state.clone());
    let uri = "/api/v1/agents/a1/heartbeat";
    // Once rebuilt, a heartbeat without a version gets the tag's configuration.
    let answer: Value = wait_for_value(|| async {
        let (status, v) = post(&app, uri, heartbeat_acking(None)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        v.get("config").is_some().then_some(v)
    })
    .await;
    assert_eq!(answer["config"]["version"], 5_000, "{answer}");
    assert_eq!(answer["config"]["services"], json!(["nginx.service"]));
    assert_eq!(answer["accepted"], 1);
    // Acknowledged: nothing more.
    let (_, v) = post(&app, uri, heartbeat_acking(Some(5_000))).await;
    assert_eq!(v.get("config"), None, "{v}");
    // Another agent of the tenant without the tag: nothing desired, nothing sent.
    let (_, v) = post(&app, "/api/v1/agents/a2/heartbeat", heartbeat_acking(None)).await;
    assert_eq!(v.get("config"), None, "{v}");
    // The record written keeps the interval and the version.
    let hbs = read_topic::<fleet_schemas::Heartbeat>(&log).await;
    let acked = hbs
        .iter()
        .find(|h| h.config_version == Some(5_000))
        .expect("acked");
    assert_eq!(acked.heartbeat_interval_secs, Some(30.0));

    // Bad fields are named.
    for (field, value) in [
        ("heartbeat_interval_secs", json!(0.0)),
        ("heartbeat_interval_secs", json!(86_401.0)),
        ("config_version", json!(-1)),
    ] {
        let mut hb = heartbeat(2);
        hb[field] = value;
        let (status, v) = post(&app, uri, hb).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }

    // Over the socket: the heartbeat's ack comes with a `config` frame; then a change of
    // the agent's own record is pushed at once.
    let mut agent = Agent::connect(&state, "a1").await;
    let mut hb = heartbeat_acking(Some(1));
    hb["sequence"] = json!(3);
    agent
        .send(json!({"type": "heartbeat", "id": 1, "heartbeat": hb}))
        .await;
    // The ack and the config frame, in either order.
    let (mut acked, mut configured) = (false, false);
    while !(acked && configured) {
        match agent.next_message().await {
            ServerMessage::Ack { id: 1, .. } => acked = true,
            ServerMessage::Config { config } => {
                assert_eq!(config.version, Some(5_000));
                configured = true;
            }
            other => panic!("expected the ack and a config frame, got {other:?}"),
        }
    }
    let mut own = fixtures::remote_config("default", "a1", 9_000);
    own.heartbeat_interval_secs = Some(7.0);
    write(&log, &own).await;
    match agent.next_message().await {
        ServerMessage::Config { config } => {
            assert_eq!(config.version, Some(9_000));
            assert_eq!(
                config.heartbeat_interval_secs,
                Some(7.0),
                "the agent's own wins"
            );
            assert_eq!(config.services, Some(vec!["nginx.service".to_owned()]));
        }
        other => panic!("expected a pushed config, got {other:?}"),
    }
    drop(stop);
}

/// Polls `f` until it gives a value (bounded by [`PATIENCE`]).
async fn wait_for_value<F, Fut>(f: F) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<Value>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no configuration in the heartbeat answer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
