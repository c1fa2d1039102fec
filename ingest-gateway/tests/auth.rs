//! Enrollment and agent authentication against a real registry (SQLite) and the real
//! embedded log.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_ingest_gateway::{app, AuthMode, GatewayConfig, GatewayState};
use fleet_schemas::{codec, AgentLifecycle, AgentLifecycleKind, MetricReport, Record};
use fleet_stores::registry::{hash_secret, NewToken, Registry};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    registry: Arc<dyn Registry>,
    tenant_id: String,
    app: Router,
    state: GatewayState,
}

async fn env() -> Env {
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
        fleet_stores::open_sql(dir.path().join("registry.db").to_str().expect("utf-8"))
            .await
            .expect("registry");
    let tenant = registry.create_tenant("Acme", now()).await.expect("tenant");
    let cfg = GatewayConfig {
        auth: AuthMode::Required,
        ..GatewayConfig::default()
    };
    let state = GatewayState::with_registry(log.clone(), Some(registry.clone()), cfg);
    Env {
        _dir: dir,
        log,
        registry,
        tenant_id: tenant.tenant_id,
        app: app(state.clone()),
        state,
    }
}

fn now() -> i64 {
    fleet_schemas::time::now_micros()
}

async fn token(e: &Env, secret: &str, expires_in_micros: i64) {
    let t = NewToken {
        tenant_id: e.tenant_id.clone(),
        location_id: None,
        device_name: Some("web-1".into()),
        expires_at: now() + expires_in_micros,
        created_by: "test".into(),
        created_at: now() - 7_200_000_000,
    };
    e.registry
        .create_token(&t, hash_secret(secret))
        .await
        .expect("token");
}

fn register_body(token: &str) -> Value {
    json!({"token": token, "facts": {
        "hostname": "web-1", "os_type": "linux", "os_version": "Debian 12", "kernel_version": "6.1",
        "architecture": "x86_64", "ip_addresses": ["10.0.0.5"], "mac_addresses": ["02:00:00:00:00:01"],
        "cpu_model": "Xeon", "cpu_cores": 2, "memory_total_bytes": 8589934592u64, "disk_total_bytes": 107374182400u64,
        "agent_version": "0.1.0"
    }})
}

async fn call(app: &Router, uri: &str, body: &Value, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(Body::from(serde_json::to_vec(body).expect("json")))
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

fn report() -> Value {
    json!({"reports": [{
        "collected_at": chrono::Utc::now().to_rfc3339(), "cpu_percent": 5.0,
        "memory_used_bytes": 1, "memory_total_bytes": 2, "memory_percent": 50.0,
        "load_1": 0.1, "load_5": 0.1, "load_15": 0.1, "uptime_seconds": 5
    }]})
}

async fn topic<T: Record>(log: &Arc<dyn EventLog>) -> Vec<T> {
    let mut out = Vec::new();
    fleet_ops::log::read_to_end(log.as_ref(), T::TOPIC, |r| {
        out.push(codec::decode::<T>(&r.value).expect("avro"))
    })
    .await
    .expect("read");
    out
}

#[tokio::test]
async fn enroll_then_send_with_the_credential() {
    let e = env().await;
    token(&e, "fst_secret-1", 3_600_000_000).await;
    let (status, reg) = call(
        &e.app,
        "/api/v1/agents/register",
        &register_body("fst_secret-1"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let agent_id = reg["agent_id"].as_str().expect("agent id").to_owned();
    let credential = reg["credential"].as_str().expect("credential").to_owned();
    assert_eq!(reg["tenant_id"], e.tenant_id.as_str());
    assert_eq!(reg["device_name"], "web-1");
    // No public-url configured: no socket URL is handed out (never the listen address);
    // the agent derives it from its own server URL.
    assert_eq!(reg["config"]["websocket_url"], "");

    // Reports are attributed to the agent's tenant.
    let uri = format!("/api/v1/agents/{agent_id}/metrics");
    let (status, v) = call(&e.app, &uri, &report(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let written = topic::<MetricReport>(&e.log).await;
    assert_eq!(written[0].tenant_id, e.tenant_id);

    // AgentRegistered reaches fleet.agents.v1 with the facts.
    let mut lifecycle = Vec::new();
    for _ in 0..100 {
        lifecycle = topic::<AgentLifecycle>(&e.log).await;
        if !lifecycle.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lifecycle.len(), 1);
    assert_eq!(lifecycle[0].kind, AgentLifecycleKind::Registered);
    assert_eq!(lifecycle[0].agent_id, agent_id);
    assert_eq!(lifecycle[0].facts.as_ref().map(|f| f.cpu_cores), Some(2));

    // Missing, malformed, wrong, or another agent's credential: 401.
    assert_eq!(
        call(&e.app, &uri, &report(), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&e.app, &uri, &report(), Some("fsa_wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let other = format!("/api/v1/agents/{}/metrics", uuid::Uuid::new_v4());
    assert_eq!(
        call(&e.app, &other, &report(), Some(&credential)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Deactivated: 403 once the cache entry is dropped (the gateway does that when it
    // reads AgentDeactivated from fleet.agents.v1).
    assert!(e
        .registry
        .deactivate_agent(None, &agent_id, now())
        .await
        .expect("deactivate"));
    e.state.authenticator().invalidate(&agent_id);
    let (status, v) = call(&e.app, &uri, &report(), Some(&credential)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "agent_deactivated");
}

#[tokio::test]
async fn bad_tokens_get_clear_errors() {
    let e = env().await;
    token(&e, "fst_once", 3_600_000_000).await;
    token(&e, "fst_expired", -1_000_000).await;
    assert_eq!(
        call(
            &e.app,
            "/api/v1/agents/register",
            &register_body("fst_once"),
            None
        )
        .await
        .0,
        StatusCode::CREATED
    );
    for (secret, status, code) in [
        ("fst_once", StatusCode::CONFLICT, "token_used"),
        ("fst_expired", StatusCode::GONE, "token_expired"),
        (
            "fst_never_issued",
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
    ] {
        let (s, v) = call(
            &e.app,
            "/api/v1/agents/register",
            &register_body(secret),
            None,
        )
        .await;
        assert_eq!(s, status, "{secret}: {v}");
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["field"], "token");
    }
    let mut bad = register_body("fst_x");
    bad["facts"]["hostname"] = json!("");
    let (s, v) = call(&e.app, "/api/v1/agents/register", &bad, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "facts.hostname");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redemptions_of_one_token_enroll_one_agent() {
    let e = env().await;
    token(&e, "fst_race", 3_600_000_000).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = e.app.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &app,
                "/api/v1/agents/register",
                &register_body("fst_race"),
                None,
            )
            .await
            .0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}
