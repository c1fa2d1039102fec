//! Software inventory over HTTP and the WebSocket, against the real embedded log.

mod common;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use common::*;
use fleet_ingest_gateway::{app, GatewayConfig, GatewayState};
use fleet_schemas::api::ServerMessage;
use fleet_schemas::{ids, SoftwareInventory};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use tower::ServiceExt as _;

async fn post_inventory(router: &Router, agent: &str, body: &Value) -> (StatusCode, Value) {
    let resp = router
        .clone()
        .oneshot(
            Request::post(format!("/api/v1/agents/{agent}/inventory"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn inventory(packages: Value) -> Value {
    json!({"collected_at": now(), "source": "dpkg", "packages": packages})
}

/// The digest, computed here independently: SHA-256 hex of the sorted lines.
fn expected_digest(lines: &[&str]) -> String {
    let mut lines = lines.to_vec();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn inventory_over_http_and_ws_is_written_with_its_digest() {
    let (_d, log) = embedded().await;
    let state = GatewayState::new(log.clone(), fleet_schemas::Wire::plain(), open_config());
    let router = app(state.clone());
    let packages = json!([
        {"name": "zlib1g", "version": "1:1.2.13", "arch": "amd64"},
        {"name": "bash", "version": "5.2.15-2"},
        {"name": "openssl", "version": "3.0.11", "arch": "amd64"}
    ]);
    let (status, v) = post_inventory(&router, "host-1", &inventory(packages)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1);
    let digest = expected_digest(&[
        "zlib1g\t1:1.2.13\tamd64\n",
        "bash\t5.2.15-2\t\n",
        "openssl\t3.0.11\tamd64\n",
    ]);
    let written = read_topic::<SoftwareInventory>(&log).await;
    assert_eq!(written.len(), 1);
    let rec = &written[0];
    assert_eq!(rec.digest, digest);
    assert_eq!(
        rec.event_id,
        ids::v5(&["host-1", "inventory", &digest]).to_string()
    );
    assert_eq!(
        (rec.agent_id.as_str(), rec.source.as_str()),
        ("host-1", "dpkg")
    );
    let names: Vec<&str> = rec.packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, vec!["bash", "openssl", "zlib1g"]);
    assert_eq!(rec.packages[0].arch, None);

    // The same set in another order over the socket: same digest, same event id.
    let mut agent = Agent::connect(&state, "host-1").await;
    let reordered = json!([
        {"name": "openssl", "version": "3.0.11", "arch": "amd64"},
        {"name": "bash", "version": "5.2.15-2"},
        {"name": "zlib1g", "version": "1:1.2.13", "arch": "amd64"}
    ]);
    let ack = agent
        .request(json!({"type": "inventory", "id": 1, "inventory": inventory(reordered)}))
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
    let written = read_topic::<SoftwareInventory>(&log).await;
    assert_eq!(written.len(), 2);
    assert_eq!(written[1].digest, digest);
    assert_eq!(written[1].event_id, written[0].event_id);

    // A bad package over the socket names the path within the frame.
    let bad = json!([{"name": "", "version": "1"}]);
    let answer = agent
        .request(json!({"type": "inventory", "id": 2, "inventory": inventory(bad)}))
        .await;
    match answer {
        ServerMessage::Error { status, error, .. } => {
            assert_eq!(status, 400);
            assert_eq!(error.field.as_deref(), Some("inventory.packages[0].name"));
        }
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_inventories_are_refused_naming_the_field() {
    let (_d, log) = embedded().await;
    let router = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let ok = json!([{"name": "bash", "version": "5"}]);

    let mut body = inventory(ok.clone());
    body["source"] = json!("apt");
    let (status, v) = post_inventory(&router, "h", &body).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("source"))
    );

    let body = inventory(json!([{"name": "bash", "version": "5"}, {"name": "", "version": "1"}]));
    let (status, v) = post_inventory(&router, "h", &body).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("packages[1].name"))
    );

    let body = inventory(json!([{"name": "bash", "version": "v".repeat(257)}]));
    let (status, v) = post_inventory(&router, "h", &body).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("packages[0].version"))
    );

    let mut body = inventory(ok.clone());
    body["collected_at"] = json!((chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339());
    let (status, v) = post_inventory(&router, "h", &body).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("collected_at"))
    );

    let many: Vec<Value> = (0..50_001)
        .map(|i| json!({"name": format!("p{i}"), "version": "1"}))
        .collect();
    let (status, v) = post_inventory(&router, "h", &inventory(Value::Array(many))).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("packages"))
    );
    assert!(read_topic::<SoftwareInventory>(&log).await.is_empty());

    // Inventories have their own body limit.
    let small = app(GatewayState::new(
        log,
        fleet_schemas::Wire::plain(),
        GatewayConfig {
            max_inventory_bytes: 512,
            ..open_config()
        },
    ));
    let many: Vec<Value> = (0..50)
        .map(|i| json!({"name": format!("p{i}"), "version": "1"}))
        .collect();
    let (status, _) = post_inventory(&small, "h", &inventory(Value::Array(many))).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}
