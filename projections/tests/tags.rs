//! `PUT /api/v1/agents/{agent_id}/tags` over a real SQLite registry and the embedded log:
//! it writes AgentLifecycle UPDATED with the tags and the actor, a bad tag names
//! `tags[i]`, and an operator of another tenant gets 403 (and writes nothing).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_projections::admin::{router, AdminState};
use fleet_schemas::{codec, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_stores::registry::{hash_secret, new_secret, NewAgent, NewToken, Registry};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const ADMIN: &str = "fsk_test-admin-key";

async fn env() -> (
    tempfile::TempDir,
    Arc<dyn EventLog>,
    Arc<dyn Registry>,
    Router,
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(
        dir.path().join("log").to_str().expect("utf-8"),
        &Default::default(),
    )
    .await
    .expect("log");
    fleet_ops::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let registry: Arc<dyn Registry> =
        fleet_stores::open_sql(dir.path().join("rm.db").to_str().expect("utf-8"))
            .await
            .expect("sql");
    let app = router(AdminState::new(
        registry.clone(),
        log.clone(),
        ADMIN,
        "http://gw.example:8080",
    ));
    (dir, log, registry, app)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: &str,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {key}"));
    let body = body
        .map(|b| serde_json::to_vec(&b).expect("json"))
        .unwrap_or_default();
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("req"))
        .await
        .expect("resp");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn lifecycle_events(log: &dyn EventLog) -> Vec<AgentLifecycle> {
    let mut out = Vec::new();
    fleet_ops::log::read_to_end(log, AgentLifecycle::TOPIC, |r| {
        out.push(codec::decode::<AgentLifecycle>(&r.value).expect("decode"))
    })
    .await
    .expect("read");
    out
}

async fn create_tenant(app: &Router, name: &str) -> String {
    let (s, t) = call(
        app,
        "POST",
        "/api/v1/tenants",
        Some(json!({ "name": name })),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    t["tenant_id"].as_str().expect("id").to_owned()
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

/// Enrolls an agent in `tenant`; returns its id.
async fn enroll(registry: &Arc<dyn Registry>, tenant: &str) -> String {
    let now = fleet_schemas::time::now_micros();
    let secret = new_secret("fst_");
    let t = NewToken {
        tenant_id: tenant.to_owned(),
        location_id: None,
        device_name: None,
        expires_at: now + 3_600_000_000,
        created_by: "t".into(),
        created_at: now,
    };
    registry
        .create_token(&t, hash_secret(&secret))
        .await
        .expect("token");
    let agent_id = uuid::Uuid::new_v4().to_string();
    let agent = NewAgent {
        agent_id: agent_id.clone(),
        credential_hash: hash_secret(&new_secret("fsa_")),
        facts_json: "{}".into(),
        now,
    };
    registry
        .redeem_token(hash_secret(&secret), &agent)
        .await
        .expect("redeem")
        .expect("redeemed");
    agent_id
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

    // Another tenant's operator: 403, nothing written.
    let (s, v) = call(&app, "PUT", &uri, Some(json!({"tags": ["web"]})), &op_b).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
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
