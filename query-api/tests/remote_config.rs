//! Remote configuration over a real SQLite registry and read model and the embedded log:
//! PUT per agent, tag and location writes RemoteConfigEvent records (bad fields named,
//! viewers refused, another tenant's agent 404), and GET merges them agent > tag >
//! location with the version the agent acknowledged in its heartbeats.

use axum::http::StatusCode;
use fleet_schemas::{fixtures, ConfigScope, RemoteConfigEvent};
use serde_json::{json, Value};

mod support;

use support::{create_tenant, AdminEnv, ADMIN};

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: &str,
) -> (StatusCode, Value) {
    support::call(app, method, uri, body, Some(key)).await
}

/// A user of `role` in `tenant`; returns its key.
async fn user(app: &axum::Router, name: &str, role: &str, tenant: &str) -> String {
    let body = json!({ "name": name, "role": role, "tenant_id": tenant });
    let (s, u) = call(app, "POST", "/api/v1/users", Some(body), ADMIN).await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    u["api_key"]["key"].as_str().expect("key").to_owned()
}

#[tokio::test]
async fn put_validates_scopes_roles_and_get_shows_desired_versus_applied() {
    let env: AdminEnv = support::admin_env(ADMIN, None).await;
    let app = &env.app;
    let a = create_tenant(app, "A").await;
    let b = create_tenant(app, "B").await;
    let op_a = user(app, "op-a", "operator", &a).await;
    let op_b = user(app, "op-b", "operator", &b).await;
    let viewer_a = user(app, "view-a", "viewer", &a).await;
    let agent = support::enroll(&env.registry, &a, None).await;
    // The agent in the read model, with a tag.
    let mut reg = fixtures::agent_registered(&a, &agent, 1_000);
    reg.tags = Some(vec!["web".into()]);
    support::produce(env.log.as_ref(), &reg).await;

    let agent_uri = format!("/api/v1/agents/{agent}/config");
    // Bad fields are named; nothing is written.
    for (body, field) in [
        (
            json!({"heartbeat_interval_secs": 0.5}),
            "heartbeat_interval_secs",
        ),
        (json!({"services": ["ok.service", "-x"]}), "services[1]"),
        (
            json!({"allowed_commands": ["rm_rf"]}),
            "allowed_commands[0]",
        ),
        (json!({"textfile_dir": "relative"}), "textfile_dir"),
    ] {
        let (s, v) = call(app, "PUT", &agent_uri, Some(body.clone()), &op_a).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (s, v) = call(app, "PUT", &agent_uri, Some(json!({"nope": 1})), &op_a).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Viewers read only; another tenant's operator sees no such agent.
    let body = json!({"heartbeat_interval_secs": 5.0});
    let (s, _) = call(app, "PUT", &agent_uri, Some(body.clone()), &viewer_a).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(app, "PUT", &agent_uri, Some(body.clone()), &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        app,
        "PUT",
        &format!("/api/v1/tenants/{a}/config/tags/web"),
        Some(body.clone()),
        &op_b,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(support::read::<RemoteConfigEvent>(env.log.as_ref())
        .await
        .is_empty());

    // Tag, then agent: the agent's field wins, the tag's others apply.
    let (s, v) = call(
        app,
        "PUT",
        &format!("/api/v1/tenants/{a}/config/tags/web"),
        Some(json!({"heartbeat_interval_secs": 60.0, "services": ["nginx.service"]})),
        &op_a,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, v) = call(app, "PUT", &agent_uri, Some(body), &op_a).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = call(
        app,
        "PUT",
        &format!("/api/v1/tenants/{a}/config/locations/nowhere"),
        Some(json!({})),
        &op_a,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "unknown location");
    let written = support::read::<RemoteConfigEvent>(env.log.as_ref()).await;
    assert_eq!(written.len(), 2);
    let agent_rec = &written[1];
    assert_eq!(agent_rec.scope, ConfigScope::Agent);
    assert_eq!(agent_rec.actor.as_deref(), Some("op-a"));
    env.project().await;

    let (s, v) = call(app, "GET", &agent_uri, None, &viewer_a).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["desired"]["heartbeat_interval_secs"], 5.0, "{v}");
    assert_eq!(v["desired"]["services"], json!(["nginx.service"]), "{v}");
    assert_eq!(v["sources"]["heartbeat_interval_secs"]["scope"], "agent");
    assert_eq!(v["sources"]["services"]["target"], "web");
    assert_eq!(v["desired_version"], agent_rec.version);
    assert_eq!(v["applied_version"], Value::Null);
    assert_eq!(v["in_sync"], false);

    // The agent acknowledges the version in a heartbeat: in sync.
    let mut hb = fixtures::heartbeat(&a, &agent, 2_000, 1);
    hb.config_version = Some(agent_rec.version);
    hb.heartbeat_interval_secs = Some(5.0);
    support::produce(env.log.as_ref(), &hb).await;
    env.project().await;
    let (s, v) = call(
        app,
        "GET",
        &format!("/api/v1/agents/{agent}"),
        None,
        &viewer_a,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["config"]["in_sync"], true, "{v}");
    assert_eq!(v["config"]["applied_version"], agent_rec.version);
    assert_eq!(v["config"]["heartbeat_interval_secs"], 5.0);
    // Another tenant's viewer: 404.
    let (s, _) = call(app, "GET", &agent_uri, None, &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Audited.
    let (s, v) = call(app, "GET", "/api/v1/audit?limit=50", None, ADMIN).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v.to_string().contains("config.set"), "{v}");
}
