//! The admin API over a real SQLite registry and the embedded log.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::EventLog;
use fleet_registry::Registry;
use fleet_schemas::{
    codec, AgentLifecycle, AgentLifecycleKind, CommandEvent, CommandEventKind, Record,
};
use serde_json::json;

mod support;

use support::{call, enroll, AdminEnv, ADMIN as KEY};

async fn env(
    key: &str,
) -> (
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
    } = support::admin_env(key, None).await;
    (_dir, log, registry, app)
}

/// Enrolls `agent-1` in a new tenant; returns the tenant id.
async fn enroll_agent_1(registry: &Arc<dyn Registry>) -> String {
    let now = fleet_schemas::time::now_micros();
    let tenant = registry.create_tenant("Acme", now).await.expect("tenant");
    enroll(registry, &tenant.tenant_id, Some("agent-1")).await;
    tenant.tenant_id
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
    // The token never rides on a command line (the process list shows those).
    let cmd = tok["install_command"].as_str().expect("cmd");
    assert!(!cmd.contains("--token"), "{cmd}");
    assert!(
        cmd.contains(&format!("FLEET_AGENT_TOKEN={secret}")),
        "{cmd}"
    );
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
    fleet_consumer::log::read_to_end(
        log.as_ref(),
        &fleet_schemas::Wire::plain(),
        AgentLifecycle::TOPIC,
        |r| {
            events.push(
                codec::Wire::plain()
                    .decode_known::<AgentLifecycle>(&r.value)
                    .expect("avro"),
            )
        },
    )
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
    fleet_consumer::log::read_to_end(
        log.as_ref(),
        &fleet_schemas::Wire::plain(),
        CommandEvent::TOPIC,
        |r| {
            events.push(
                codec::Wire::plain()
                    .decode_known::<CommandEvent>(&r.value)
                    .expect("avro"),
            )
        },
    )
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
