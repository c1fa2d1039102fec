//! `PUT /api/v1/agents/{agent_id}/tags` over a real SQLite registry and the embedded log:
//! it writes AgentLifecycle UPDATED with the tags and the actor, a bad tag names
//! `tags[i]`, and an operator of another tenant gets 403 (and writes nothing).

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::EventLog;
use fleet_registry::Registry;
use fleet_schemas::{AgentLifecycle, AgentLifecycleKind};
use serde_json::{json, Value};

mod support;

use support::{create_tenant, AdminEnv, ADMIN};

async fn env() -> (
    tempfile::TempDir,
    Arc<dyn EventLog>,
    Arc<dyn Registry>,
    Router,
) {
    let AdminEnv {
        _dir,
        log,
        registry,
        app,
        ..
    } = support::admin_env(ADMIN, None).await;
    (_dir, log, registry, app)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: &str,
) -> (StatusCode, Value) {
    support::call(app, method, uri, body, Some(key)).await
}

async fn lifecycle_events(log: &dyn EventLog) -> Vec<AgentLifecycle> {
    support::read(log).await
}

async fn enroll(registry: &Arc<dyn Registry>, tenant: &str) -> String {
    support::enroll(registry, tenant, None).await
}

/// An operator of `tenant`; returns (user id, key).
async fn operator(app: &Router, name: &str, tenant: &str) -> (String, String) {
    let body = json!({ "name": name, "role": "operator", "tenant_id": tenant });
    let (s, u) = call(app, "POST", "/api/v1/users", Some(body), ADMIN).await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    (
        u["user"]["user_id"].as_str().expect("id").to_owned(),
        u["api_key"]["key"].as_str().expect("key").to_owned(),
    )
}

#[tokio::test]
async fn put_tags_writes_updated_checks_tags_and_tenant() {
    let (_d, log, registry, app) = env().await;
    let a = create_tenant(&app, "A").await;
    let b = create_tenant(&app, "B").await;
    let (_, op_a) = operator(&app, "op-a", &a).await;
    let (_, op_b) = operator(&app, "op-b", &b).await;
    let agent = enroll(&registry, &a).await;
    let uri = format!("/api/v1/agents/{agent}/tags");
    let before = lifecycle_events(log.as_ref()).await.len();

    // The tenant's operator sets them: one UPDATED with the tags and the actor.
    let (s, v) = call(
        &app,
        "PUT",
        &uri,
        Some(json!({"tags": ["web", "eu"]})),
        &op_a,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["tags"], json!(["web", "eu"]));
    let events = lifecycle_events(log.as_ref()).await;
    assert_eq!(events.len(), before + 1, "{events:?}");
    let ev = events.last().expect("event");
    assert_eq!(ev.kind, AgentLifecycleKind::Updated);
    assert_eq!(
        (ev.tenant_id.as_str(), ev.agent_id.as_str()),
        (a.as_str(), agent.as_str())
    );
    assert_eq!(ev.tags, Some(vec!["web".to_owned(), "eu".to_owned()]));
    assert_eq!(ev.actor.as_deref(), Some("op-a"));
    assert_eq!(ev.facts, None);

    // An empty list is "no tags", stated.
    let (s, v) = call(&app, "PUT", &uri, Some(json!({"tags": []})), &op_a).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let events = lifecycle_events(log.as_ref()).await;
    assert_eq!(events.last().expect("event").tags, Some(Vec::new()));
    let written = events.len();

    // A bad tag names its index; too many tags too; nothing is written.
    for (body, field) in [
        (json!({"tags": ["web", "has space"]}), "tags[1]"),
        (json!({"tags": [""]}), "tags[0]"),
        (json!({"tags": ["ok", "x".repeat(65)]}), "tags[1]"),
        (
            json!({"tags": (0..33).map(|i| format!("t{i}")).collect::<Vec<_>>()}),
            "tags[32]",
        ),
    ] {
        let (s, v) = call(&app, "PUT", &uri, Some(body.clone()), &op_a).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (s, v) = call(&app, "PUT", &uri, Some(json!({"tags": "web"})), &op_a).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "tags", "{v}");

    // Another tenant's operator: 404 as for an unknown agent, nothing written.
    let (s, v) = call(&app, "PUT", &uri, Some(json!({"tags": ["web"]})), &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(lifecycle_events(log.as_ref()).await.len(), written);

    // Unknown agent: 404.
    let (s, _) = call(
        &app,
        "PUT",
        "/api/v1/agents/nobody/tags",
        Some(json!({"tags": ["web"]})),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
