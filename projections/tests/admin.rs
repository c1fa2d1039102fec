//! The admin API over a real SQLite registry and the embedded log.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_projections::admin::{router, AdminState};
use fleet_schemas::{
    codec, AgentLifecycle, AgentLifecycleKind, CommandEvent, CommandEventKind, Record,
};
use fleet_stores::registry::{hash_secret, NewAgent, Registry};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

const KEY: &str = "fsk_test-admin-key";

async fn env(
    key: &str,
) -> (
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
        key,
        "http://gw.example:8080",
    ));
    (dir, log, registry, app)
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
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

#[tokio::test]
async fn tenants_locations_tokens() {
    let (_d, _log, _registry, app) = env(KEY).await;
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "Acme"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "Acme"})),
        Some("wrong"),
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, t) = call(
        &app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "Acme"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    let tenant = t["tenant_id"].as_str().expect("id").to_owned();
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "Acme"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": ""})),
        Some(KEY),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("name"))
    );

    let (s, loc) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{tenant}/locations"),
        Some(json!({"name": "HQ"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{loc}");
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/tenants/nope/locations",
        Some(json!({"name": "HQ"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let body =
        json!({"location_id": loc["location_id"], "device_name": "web-1", "expires_in": "2h"});
    let (s, tok) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{tenant}/registration-tokens"),
        Some(body),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{tok}");
    let secret = tok["token"].as_str().expect("secret");
    assert!(secret.starts_with("fst_"));
    assert!(tok["install_command"]
        .as_str()
        .expect("cmd")
        .contains("--server http://gw.example:8080"));
    let (_, list) = call(
        &app,
        "GET",
        &format!("/api/v1/tenants/{tenant}/registration-tokens"),
        None,
        Some(KEY),
    )
    .await;
    assert_eq!(list["tokens"].as_array().map(Vec::len), Some(1));
    assert!(
        !list.to_string().contains(secret),
        "listing never shows the secret"
    );
    let (s, v) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{tenant}/registration-tokens"),
        Some(json!({"expires_in": "90d"})),
        Some(KEY),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("expires_in"))
    );
}

#[tokio::test]
async fn without_a_bootstrap_key_no_key_is_the_admin() {
    let (_d, _log, _registry, app) = env("").await;
    for key in ["anything", ""] {
        let (s, v) = call(&app, "GET", "/api/v1/tenants", None, Some(key)).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{key:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
    }
}

/// Enrolls `agent-1` in a new tenant; returns the tenant id.
async fn enroll_agent_1(registry: &Arc<dyn Registry>) -> String {
    let now = fleet_schemas::time::now_micros();
    let tenant = registry.create_tenant("Acme", now).await.expect("tenant");
    let t = fleet_stores::registry::NewToken {
        tenant_id: tenant.tenant_id.clone(),
        location_id: None,
        device_name: None,
        expires_at: now + 3_600_000_000,
        created_by: "t".into(),
        created_at: now,
    };
    registry
        .create_token(&t, hash_secret("fst_a"))
        .await
        .expect("token");
    let agent = NewAgent {
        agent_id: "agent-1".into(),
        credential_hash: hash_secret("fsa_c"),
        facts_json: "{}".into(),
        now,
    };
    registry
        .redeem_token(hash_secret("fst_a"), &agent)
        .await
        .expect("redeem")
        .expect("redeemed");
    tenant.tenant_id
}

#[tokio::test]
async fn deactivation_is_an_event() {
    let (_d, log, registry, app) = env(KEY).await;
    let tenant_id = enroll_agent_1(&registry).await;
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/agents/agent-1/deactivate",
        Some(json!({"reason": "stolen laptop"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        !registry
            .agent_credential("agent-1")
            .await
            .expect("cred")
            .expect("exists")
            .active
    );
    let mut events = Vec::new();
    fleet_ops::log::read_to_end(log.as_ref(), AgentLifecycle::TOPIC, |r| {
        events.push(codec::decode::<AgentLifecycle>(&r.value).expect("avro"))
    })
    .await
    .expect("read");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, AgentLifecycleKind::Deactivated);
    assert_eq!(events[0].reason.as_deref(), Some("stolen laptop"));
    assert_eq!(events[0].tenant_id, tenant_id);
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/agents/nobody/deactivate",
        None,
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn command_request_is_an_event_and_bad_requests_name_the_field() {
    let (_d, log, registry, app) = env(KEY).await;
    let tenant_id = enroll_agent_1(&registry).await;
    let (s, v) = call(
        &app,
        "POST",
        "/api/v1/agents/agent-1/commands",
        Some(json!({"command_type": "restart_service", "args": {"service": "nginx"}, "timeout_secs": 30})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "requested");
    let command_id = v["command_id"].as_str().expect("command id").to_owned();
    for (body, field) in [
        (json!({"command_type": "format_disk"}), "command_type"),
        (json!({"command_type": "run_script"}), "args.script"),
        (
            json!({"command_type": "collect_diagnostics", "timeout_secs": 0}),
            "timeout_secs",
        ),
        (
            json!({"command_type": "collect_diagnostics", "shell": "rm -rf /"}),
            "shell",
        ),
    ] {
        let (s, v) = call(
            &app,
            "POST",
            "/api/v1/agents/agent-1/commands",
            Some(body),
            Some(KEY),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/agents/nobody/commands",
        Some(json!({"command_type": "collect_diagnostics"})),
        Some(KEY),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/agents/agent-1/commands",
        Some(json!({"command_type": "collect_diagnostics"})),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let mut events = Vec::new();
    fleet_ops::log::read_to_end(log.as_ref(), CommandEvent::TOPIC, |r| {
        events.push(codec::decode::<CommandEvent>(&r.value).expect("avro"))
    })
    .await
    .expect("read");
    assert_eq!(events.len(), 1, "only the valid request is written");
    let ev = &events[0];
    assert_eq!(ev.kind, CommandEventKind::Requested);
    assert_eq!(ev.command_id, command_id);
    assert_eq!(ev.tenant_id, tenant_id);
    assert_eq!(ev.args.get("service").map(String::as_str), Some("nginx"));
    assert_eq!(ev.timeout_secs, 30);
    assert_eq!(ev.actor.as_deref(), Some("admin"));
}
