//! Users, API keys, roles and command approval over a real SQLite registry and the
//! embedded log: an operator of tenant A cannot act in tenant B (one case per operator
//! route), a viewer cannot write, user keys authenticate (wrong key and disabled user 401),
//! and a command awaiting approval needs a second user.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_registry::Registry;
use fleet_schemas::{
    codec, fixtures, topics, AlertEvent, AlertEventKind, CommandEvent, CommandEventKind, Record,
    RuleEvent,
};
use serde_json::{json, Value};

mod support;

use support::{read, AdminEnv, ADMIN};

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: &str,
) -> (StatusCode, Value) {
    support::call(app, method, uri, body, Some(key)).await
}

async fn create_tenant(app: &Router, name: &str) -> String {
    support::create_tenant(app, name).await
}

async fn enroll(registry: &Arc<dyn Registry>, tenant: &str) -> String {
    support::enroll(registry, tenant, None).await
}

type Env = AdminEnv;

async fn env_with(approval_required: Option<Vec<String>>) -> Env {
    support::admin_env(ADMIN, approval_required).await
}

async fn env() -> Env {
    env_with(None).await
}

/// A user made through the API; returns (user id, key).
async fn create_user(
    app: &Router,
    name: &str,
    role: &str,
    tenant: Option<&str>,
) -> (String, String) {
    let mut body = json!({ "name": name, "role": role });
    if let Some(t) = tenant {
        body["tenant_id"] = json!(t);
    }
    let (s, u) = call(app, "POST", "/api/v1/users", Some(body), ADMIN).await;
    assert_eq!(s, StatusCode::CREATED, "{u}");
    assert_eq!(u["user"]["name"], name);
    assert_eq!(u["user"]["role"], role);
    let key = u["api_key"]["key"].as_str().expect("key").to_owned();
    assert!(key.starts_with("fsu_"), "{key}");
    assert_eq!(u["api_key"]["last4"], key[key.len() - 4..]);
    (u["user"]["user_id"].as_str().expect("id").to_owned(), key)
}

/// Raises an alert in `tenant`; returns its id.
async fn raise_alert(log: &dyn EventLog, tenant: &str, agent: &str) -> String {
    let raised = fixtures::alert_raised(tenant, agent, 1_796_000_000_000_000);
    log.produce(
        topics::ALERTS,
        vec![ProduceRecord::keyed(
            raised.key().as_bytes().to_vec(),
            codec::Wire::plain().encode(&raised).expect("encode"),
        )],
    )
    .await
    .expect("produce");
    raised.alert_id
}

/// The first rule of a tenant (a new tenant has the default rules), once the read model
/// has what was written (rules, and alerts and commands raised or requested before).
async fn a_rule_of(e: &Env, tenant: &str) -> String {
    e.project().await;
    let (s, r) = call(
        &e.app,
        "GET",
        &format!("/api/v1/tenants/{tenant}/rules"),
        None,
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    r["rules"][0]["rule_id"].as_str().expect("rule").to_owned()
}

fn rule_body() -> Value {
    json!({"name": "CPU", "metric": "cpu.percent", "warning": 50.0})
}

#[tokio::test]
async fn user_keys_authenticate_wrong_and_disabled_are_401() {
    let e = env().await;
    let a = create_tenant(&e.app, "A").await;
    let (bob_id, bob) = create_user(&e.app, "bob", "operator", Some(&a)).await;
    let locations = format!("/api/v1/tenants/{a}/locations");

    let (s, v) = call(&e.app, "GET", &locations, None, &bob).await;
    assert_eq!(s, StatusCode::OK, "a user key works: {v}");
    let (s, v) = call(
        &e.app,
        "POST",
        &locations,
        Some(json!({"name": "HQ"})),
        &bob,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, v) = call(&e.app, "GET", &locations, None, "fsu_wrong").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_eq!(v["error"]["code"], "unauthorized");
    let (s, _) = call(&e.app, "GET", &locations, None, &bob[..bob.len() - 1]).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a prefix of a key is no key");
    // HTTP basic auth with the key as the password (promtool, Grafana): the same key.
    let basic = |user: &str, key: &str| {
        use base64::Engine as _;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{key}"))
        )
    };
    for (authorization, want) in [
        (basic("anyone", &bob), StatusCode::OK),
        (basic("bob", "fsu_wrong"), StatusCode::UNAUTHORIZED),
        (basic(&bob, ""), StatusCode::UNAUTHORIZED),
        ("Basic !!!".to_owned(), StatusCode::UNAUTHORIZED),
    ] {
        let resp = tower::ServiceExt::oneshot(
            e.app.clone(),
            axum::http::Request::get(&locations)
                .header("authorization", &authorization)
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
        assert_eq!(resp.status(), want, "{authorization}");
    }

    // Only an admin makes keys: not the user for itself (a leaked key cannot mint more),
    // nor for another user.
    let (carol_id, carol) = create_user(&e.app, "carol", "operator", Some(&a)).await;
    let (s, k) = call(
        &e.app,
        "POST",
        &format!("/api/v1/users/{bob_id}/keys"),
        None,
        &bob,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{k}");
    let (s, k) = call(
        &e.app,
        "POST",
        &format!("/api/v1/users/{bob_id}/keys"),
        None,
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let bob2 = k["key"].as_str().expect("key").to_owned();
    assert_ne!(bob2, bob);
    let (s, _) = call(&e.app, "GET", &locations, None, &bob2).await;
    assert_eq!(s, StatusCode::OK, "the second key works too");
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/v1/users/{carol_id}/keys"),
        None,
        &bob,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/v1/users/{carol_id}/keys"),
        None,
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(&e.app, "POST", "/api/v1/users/nobody/keys", None, ADMIN).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Listing users is for admins, and shows no secrets.
    let (s, _) = call(&e.app, "GET", "/api/v1/users", None, &bob).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, list) = call(&e.app, "GET", "/api/v1/users", None, ADMIN).await;
    assert_eq!(s, StatusCode::OK);
    let names: Vec<&str> = list["users"]
        .as_array()
        .expect("users")
        .iter()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert_eq!(names, vec!["bob", "carol"]);
    assert!(!list.to_string().contains(&bob), "no keys in the listing");

    // Disabled through the route: at once, even though bob's key was cached.
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/v1/users/{bob_id}/disable"),
        None,
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    for key in [&bob, &bob2] {
        let (s, v) = call(&e.app, "GET", &locations, None, key).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("disabled"),
            "{v}"
        );
    }
    // Disabled in the registry before the key was ever used.
    e.registry
        .set_user_disabled(&carol_id, true)
        .await
        .expect("disable");
    let (s, _) = call(&e.app, "GET", &locations, None, &carol).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    // User creation checks its fields: a bad one is 400, a role and tenant that do not go
    // together 422, the bootstrap admin's name 409.
    for (body, field, status) in [
        (
            json!({"name": "x", "role": "root"}),
            "role",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "role": "viewer", "tenant_id": ""}),
            "tenant_id",
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "x", "role": "operator"}),
            "tenant_id",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "x", "role": "admin", "tenant_id": a}),
            "tenant_id",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"name": "admin", "role": "admin"}),
            "name",
            StatusCode::CONFLICT,
        ),
    ] {
        let (s, v) = call(&e.app, "POST", "/api/v1/users", Some(body.clone()), ADMIN).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    let (s, v) = call(
        &e.app,
        "POST",
        "/api/v1/users",
        Some(json!({"name": "bob", "role": "viewer", "tenant_id": a})),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _) = call(
        &e.app,
        "POST",
        "/api/v1/users",
        Some(json!({"name": "y", "role": "viewer", "tenant_id": "nope"})),
        ADMIN,
    )
    .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a body naming no tenant"
    );
    // An operator cannot make users.
    let (_, dave) = create_user(&e.app, "dave", "operator", Some(&a)).await;
    let (s, _) = call(
        &e.app,
        "POST",
        "/api/v1/users",
        Some(json!({"name": "z", "role": "admin"})),
        &dave,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // A user admin may do what the bootstrap admin does.
    let (_, root) = create_user(&e.app, "root", "admin", None).await;
    let (s, _) = call(&e.app, "GET", "/api/v1/tenants", None, &root).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn an_operator_of_a_cannot_act_in_b() {
    let e = env().await;
    let a = create_tenant(&e.app, "A").await;
    let b = create_tenant(&e.app, "B").await;
    let (_, op) = create_user(&e.app, "op-a", "operator", Some(&a)).await;
    let agent_a = enroll(&e.registry, &a).await;
    let agent_b = enroll(&e.registry, &b).await;
    let alert_a = raise_alert(e.log.as_ref(), &a, &agent_a).await;
    let alert_b = raise_alert(e.log.as_ref(), &b, &agent_b).await;
    let rule_a = a_rule_of(&e, &a).await;
    let rule_b = a_rule_of(&e, &b).await;
    // A command in B, awaiting approval, requested by the admin.
    let (s, c) = call(
        &e.app,
        "POST",
        &format!("/api/v1/agents/{agent_b}/commands"),
        Some(json!({"command_type": "collect_diagnostics", "requires_approval": true})),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{c}");
    let command_b = c["command_id"].as_str().expect("id").to_owned();
    e.project().await;
    let rules_before = read::<RuleEvent>(e.log.as_ref()).await.len();
    let alerts_before = read::<AlertEvent>(e.log.as_ref()).await.len();
    let commands_before = read::<CommandEvent>(e.log.as_ref()).await.len();

    // Routes naming tenant B: 403; routes naming B's objects: 404 as an unknown id would
    // get. Neither answer names B or its objects.
    const NO: StatusCode = StatusCode::FORBIDDEN;
    const GONE: StatusCode = StatusCode::NOT_FOUND;
    let cases: Vec<(&str, String, Option<Value>, StatusCode)> = vec![
        (
            "POST",
            format!("/api/v1/tenants/{b}/locations"),
            Some(json!({"name": "HQ"})),
            NO,
        ),
        ("GET", format!("/api/v1/tenants/{b}/locations"), None, NO),
        (
            "POST",
            format!("/api/v1/tenants/{b}/registration-tokens"),
            Some(json!({})),
            NO,
        ),
        (
            "GET",
            format!("/api/v1/tenants/{b}/registration-tokens"),
            None,
            NO,
        ),
        (
            "POST",
            format!("/api/v1/agents/{agent_b}/deactivate"),
            None,
            GONE,
        ),
        (
            "POST",
            format!("/api/v1/agents/{agent_b}/commands"),
            Some(json!({"command_type": "collect_diagnostics"})),
            GONE,
        ),
        (
            "POST",
            format!("/api/v1/commands/{command_b}/approve"),
            None,
            GONE,
        ),
        (
            "POST",
            format!("/api/v1/tenants/{b}/rules"),
            Some(rule_body()),
            NO,
        ),
        ("GET", format!("/api/v1/tenants/{b}/rules"), None, NO),
        (
            "POST",
            format!("/api/v1/tenants/{b}/rules/defaults"),
            None,
            NO,
        ),
        (
            "PUT",
            format!("/api/v1/rules/{rule_b}"),
            Some(rule_body()),
            GONE,
        ),
        (
            "POST",
            format!("/api/v1/rules/{rule_b}/disable"),
            None,
            GONE,
        ),
        ("POST", format!("/api/v1/rules/{rule_b}/enable"), None, GONE),
        ("DELETE", format!("/api/v1/rules/{rule_b}"), None, GONE),
        (
            "POST",
            format!("/api/v1/alerts/{alert_b}/acknowledge"),
            None,
            GONE,
        ),
        (
            "POST",
            format!("/api/v1/alerts/{alert_b}/resolve"),
            None,
            GONE,
        ),
    ];
    for (method, uri, body, expected) in &cases {
        let (s, v) = call(&e.app, method, uri, body.clone(), &op).await;
        assert_eq!(s, *expected, "{method} {uri}: {v}");
        let text = v.to_string();
        for id in [&b, &agent_b, &command_b, &rule_b, &alert_b] {
            assert!(
                !text.contains(id.as_str()),
                "{method} {uri}: names {id}: {v}"
            );
        }
    }
    // Admin-only routes.
    for (method, uri, body) in [
        ("POST", "/api/v1/tenants", Some(json!({"name": "C"}))),
        ("GET", "/api/v1/tenants", None),
    ] {
        let (s, v) = call(&e.app, method, uri, body, &op).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
    }
    // Nothing was written, and B's agent is still active.
    assert_eq!(read::<RuleEvent>(e.log.as_ref()).await.len(), rules_before);
    assert_eq!(
        read::<AlertEvent>(e.log.as_ref()).await.len(),
        alerts_before
    );
    assert_eq!(
        read::<CommandEvent>(e.log.as_ref()).await.len(),
        commands_before
    );
    assert!(
        e.registry
            .agent_credential(&agent_b)
            .await
            .expect("read")
            .expect("stored")
            .active
    );
    assert!(e
        .registry
        .list_locations(&b)
        .await
        .expect("list")
        .is_empty());

    // The same routes in A work, with the operator as the actor.
    let ok: Vec<(&str, String, Option<Value>, StatusCode)> = vec![
        (
            "POST",
            format!("/api/v1/tenants/{a}/registration-tokens"),
            Some(json!({})),
            StatusCode::CREATED,
        ),
        (
            "GET",
            format!("/api/v1/tenants/{a}/registration-tokens"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/agents/{agent_a}/commands"),
            Some(json!({"command_type": "collect_diagnostics"})),
            StatusCode::ACCEPTED,
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/rules"),
            Some(rule_body()),
            StatusCode::CREATED,
        ),
        (
            "GET",
            format!("/api/v1/tenants/{a}/rules"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/rules/defaults"),
            None,
            StatusCode::OK,
        ),
        (
            "PUT",
            format!("/api/v1/rules/{rule_a}"),
            Some(rule_body()),
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/rules/{rule_a}/disable"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/rules/{rule_a}/enable"),
            None,
            StatusCode::OK,
        ),
        (
            "DELETE",
            format!("/api/v1/rules/{rule_a}"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/alerts/{alert_a}/acknowledge"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/alerts/{alert_a}/resolve"),
            None,
            StatusCode::OK,
        ),
        (
            "POST",
            format!("/api/v1/agents/{agent_a}/deactivate"),
            None,
            StatusCode::OK,
        ),
    ];
    for (method, uri, body, want) in ok {
        let (s, v) = call(&e.app, method, &uri, body, &op).await;
        assert_eq!(s, want, "{method} {uri}: {v}");
    }
    let rules = read::<RuleEvent>(e.log.as_ref()).await;
    assert!(rules[rules_before..]
        .iter()
        .all(|r| r.tenant_id == a && r.actor.as_deref() == Some("op-a")));
    let alerts = read::<AlertEvent>(e.log.as_ref()).await;
    assert!(alerts[alerts_before..]
        .iter()
        .any(|ev| ev.kind == AlertEventKind::Resolved && ev.actor.as_deref() == Some("op-a")));
    let commands = read::<CommandEvent>(e.log.as_ref()).await;
    assert_eq!(commands.len(), commands_before + 1);
    // The log is read partition by partition (the agents' ids are random): find it by
    // tenant, not by position.
    let in_a: Vec<&CommandEvent> = commands.iter().filter(|c| c.tenant_id == a).collect();
    assert_eq!(in_a.len(), 1, "{commands:?}");
    assert_eq!(in_a[0].actor.as_deref(), Some("op-a"));
}

#[tokio::test]
async fn a_viewer_cannot_write() {
    let e = env().await;
    let a = create_tenant(&e.app, "A").await;
    let (_, viewer) = create_user(&e.app, "vic", "viewer", Some(&a)).await;
    let agent_a = enroll(&e.registry, &a).await;
    let alert_a = raise_alert(e.log.as_ref(), &a, &agent_a).await;
    let rule_a = a_rule_of(&e, &a).await;
    let (s, c) = call(
        &e.app,
        "POST",
        &format!("/api/v1/agents/{agent_a}/commands"),
        Some(json!({"command_type": "collect_diagnostics", "requires_approval": true})),
        ADMIN,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{c}");
    let command_a = c["command_id"].as_str().expect("id").to_owned();
    e.project().await;

    for uri in [
        format!("/api/v1/tenants/{a}/locations"),
        format!("/api/v1/tenants/{a}/registration-tokens"),
        format!("/api/v1/tenants/{a}/rules"),
    ] {
        let (s, v) = call(&e.app, "GET", &uri, None, &viewer).await;
        assert_eq!(s, StatusCode::OK, "a viewer reads {uri}: {v}");
    }
    let writes: Vec<(&str, String, Option<Value>)> = vec![
        (
            "POST",
            format!("/api/v1/tenants/{a}/locations"),
            Some(json!({"name": "HQ"})),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/registration-tokens"),
            Some(json!({})),
        ),
        ("POST", format!("/api/v1/agents/{agent_a}/deactivate"), None),
        (
            "POST",
            format!("/api/v1/agents/{agent_a}/commands"),
            Some(json!({"command_type": "collect_diagnostics"})),
        ),
        (
            "POST",
            format!("/api/v1/commands/{command_a}/approve"),
            None,
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/rules"),
            Some(rule_body()),
        ),
        ("POST", format!("/api/v1/tenants/{a}/rules/defaults"), None),
        ("PUT", format!("/api/v1/rules/{rule_a}"), Some(rule_body())),
        ("POST", format!("/api/v1/rules/{rule_a}/disable"), None),
        ("DELETE", format!("/api/v1/rules/{rule_a}"), None),
        (
            "POST",
            format!("/api/v1/alerts/{alert_a}/acknowledge"),
            None,
        ),
        ("POST", format!("/api/v1/alerts/{alert_a}/resolve"), None),
    ];
    for (method, uri, body) in &writes {
        let (s, v) = call(&e.app, method, uri, body.clone(), &viewer).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("read"),
            "{method} {uri}: {v}"
        );
    }
    assert!(
        e.registry
            .agent_credential(&agent_a)
            .await
            .expect("read")
            .expect("stored")
            .active
    );
    let commands = read::<CommandEvent>(e.log.as_ref()).await;
    assert_eq!(commands.len(), 1, "only the admin's request");
}

#[tokio::test]
async fn approval_needs_a_different_user() {
    let e = env().await;
    let a = create_tenant(&e.app, "A").await;
    let (_, op1) = create_user(&e.app, "op-1", "operator", Some(&a)).await;
    let (_, op2) = create_user(&e.app, "op-2", "operator", Some(&a)).await;
    let agent = enroll(&e.registry, &a).await;

    // run_script needs approval by default (approval-required-commands).
    let (s, c) = call(
        &e.app,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(json!({"command_type": "run_script", "args": {"script": "backup"}})),
        &op1,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{c}");
    assert_eq!(c["status"], "awaiting_approval");
    let id = c["command_id"].as_str().expect("id").to_owned();
    let requested = read::<CommandEvent>(e.log.as_ref()).await;
    assert_eq!(requested.len(), 1);
    assert_eq!(requested[0].kind, CommandEventKind::Requested);
    assert!(requested[0].requires_approval);
    assert_eq!(requested[0].actor.as_deref(), Some("op-1"));

    let approve = format!("/api/v1/commands/{id}/approve");
    // The command is found in the read model, not on the topic: not yet projected, it is
    // not found (and nothing is written).
    let (s, v) = call(&e.app, "POST", &approve, None, &op2).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(read::<CommandEvent>(e.log.as_ref()).await.len(), 1);
    e.project().await;
    let (s, v) = call(&e.app, "POST", &approve, None, &op1).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("approval must come from a different user"),
        "{v}"
    );
    assert_eq!(
        read::<CommandEvent>(e.log.as_ref()).await.len(),
        1,
        "nothing written"
    );

    let (s, v) = call(&e.app, "POST", &approve, None, &op2).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "approved");
    assert_eq!(v["approved_by"], "op-2");
    let events = read::<CommandEvent>(e.log.as_ref()).await;
    assert_eq!(events.len(), 2);
    let approved = &events[1];
    assert_eq!(approved.kind, CommandEventKind::Approved);
    assert_eq!(approved.command_id, id);
    assert_eq!(approved.actor.as_deref(), Some("op-2"));
    assert_eq!(approved.tenant_id, a);
    assert_eq!(approved.agent_id, agent);
    assert_eq!(approved.command_type, "run_script");
    assert_eq!(
        approved.args.get("script").map(String::as_str),
        Some("backup")
    );

    e.project().await;
    // Twice: 409, by anyone.
    for key in [&op2, ADMIN] {
        let (s, v) = call(&e.app, "POST", &approve, None, key).await;
        assert_eq!(s, StatusCode::CONFLICT, "{v}");
        assert_eq!(v["error"]["code"], "already_approved", "{v}");
    }
    assert_eq!(read::<CommandEvent>(e.log.as_ref()).await.len(), 2);

    // Unknown command: 404.
    let (s, _) = call(&e.app, "POST", "/api/v1/commands/nope/approve", None, &op2).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A command that needs no approval: 409.
    let (s, c) = call(
        &e.app,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(json!({"command_type": "collect_diagnostics"})),
        &op1,
    )
    .await;
    assert_eq!(
        (s, &c["status"]),
        (StatusCode::ACCEPTED, &json!("requested"))
    );
    let plain = c["command_id"].as_str().expect("id");
    e.project().await;
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/v1/commands/{plain}/approve"),
        None,
        &op2,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "not_awaiting_approval");

    // The bootstrap admin's request needs another user too; an operator may approve it.
    let (s, c) = call(
        &e.app,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(json!({"command_type": "collect_diagnostics", "requires_approval": true})),
        ADMIN,
    )
    .await;
    assert_eq!(
        (s, &c["status"]),
        (StatusCode::ACCEPTED, &json!("awaiting_approval"))
    );
    e.project().await;
    let by_admin = format!(
        "/api/v1/commands/{}/approve",
        c["command_id"].as_str().expect("id")
    );
    let (s, _) = call(&e.app, "POST", &by_admin, None, ADMIN).await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(&e.app, "POST", &by_admin, None, &op1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
}

#[tokio::test]
async fn approval_required_commands_come_from_the_configuration() {
    let e = env_with(Some(vec!["restart_service".into()])).await;
    let a = create_tenant(&e.app, "A").await;
    let agent = enroll(&e.registry, &a).await;
    for (body, want) in [
        (
            json!({"command_type": "run_script", "args": {"script": "x"}}),
            "requested",
        ),
        (
            json!({"command_type": "restart_service", "args": {"service": "nginx"}}),
            "awaiting_approval",
        ),
    ] {
        let (s, c) = call(
            &e.app,
            "POST",
            &format!("/api/v1/agents/{agent}/commands"),
            Some(body.clone()),
            ADMIN,
        )
        .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{c}");
        assert_eq!(c["status"], want, "{body}");
    }
    let events = read::<CommandEvent>(e.log.as_ref()).await;
    let flags: Vec<bool> = events.iter().map(|e| e.requires_approval).collect();
    assert_eq!(flags, vec![false, true]);
}
