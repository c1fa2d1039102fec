//! Helpers shared by the admin-route tests: the admin router over a real SQLite registry
//! and the embedded log in a tempdir, an HTTP call through `oneshot`, reading a topic,
//! enrolling an agent.
#![allow(dead_code, unreachable_pub)]

pub mod world;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_projections::admin::{router, AdminState};
use fleet_schemas::{codec, Record};
use fleet_stores::registry::{hash_secret, new_secret, NewAgent, NewToken, Registry};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

/// The bootstrap admin key of every test app.
pub const ADMIN: &str = "fsk_test-admin-key";

/// A test app and what it runs on.
pub struct AdminEnv {
    pub _dir: tempfile::TempDir,
    pub log: Arc<dyn EventLog>,
    pub registry: Arc<dyn Registry>,
    pub app: Router,
}

/// The admin routes with bootstrap key `key` (empty: none) and, if given, the command
/// types that need approval.
pub async fn admin_env(key: &str, approval_required: Option<Vec<String>>) -> AdminEnv {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(
        dir.path().join("log").to_str().expect("utf-8"),
        &Default::default(),
    )
    .await
    .expect("log");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let registry: Arc<dyn Registry> =
        fleet_stores::open_sql(dir.path().join("rm.db").to_str().expect("utf-8"))
            .await
            .expect("sql");
    let mut state = AdminState::new(registry.clone(), log.clone(), key, "http://gw.example:8080");
    if let Some(types) = approval_required {
        state = state.with_approval_required(types);
    }
    AdminEnv {
        _dir: dir,
        log,
        registry,
        app: router(state),
    }
}

/// One request with an optional Bearer key; the status and the JSON body (null if none).
pub async fn call(
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

/// Every record of `T`'s topic.
pub async fn read<T: Record>(log: &dyn EventLog) -> Vec<T> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(log, T::TOPIC, |r| {
        out.push(codec::decode::<T>(&r.value).expect("decode"))
    })
    .await
    .expect("read");
    out
}

/// Creates a tenant through the API with the admin key; returns its id.
pub async fn create_tenant(app: &Router, name: &str) -> String {
    let (s, t) = call(
        app,
        "POST",
        "/api/v1/tenants",
        Some(json!({ "name": name })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    t["tenant_id"].as_str().expect("id").to_owned()
}

/// Enrolls an agent in `tenant` through the registry (a token, then its redemption);
/// returns the agent id (`agent_id`, or a random one).
pub async fn enroll(registry: &Arc<dyn Registry>, tenant: &str, agent_id: Option<&str>) -> String {
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
    let agent_id = agent_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
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
