//! Fleet-wide commands (command groups) and the rejection and cancel of single commands,
//! over a real SQLite registry and read model and the embedded log: what each route writes
//! to `fleet.commands.v1`, who may do what (another tenant's operator 404, a viewer 403,
//! the requester cannot approve), the bounds of a target, an idempotent retry, the counts
//! of a group once its events are projected, and the audit log.

use axum::http::StatusCode;
use axum::Router;
use fleet_schemas::{
    fixtures, ids, AgentLifecycle, AgentLifecycleKind, CommandEvent, CommandEventKind,
};
use serde_json::{json, Value};

mod support;

use support::world::user;
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

/// Enrolled agents in the read model (REGISTERED, then tags), as the gateway and the tags
/// route write them.
async fn agent(e: &AdminEnv, tenant: &str, tags: &[&str]) -> String {
    let id = uuid::Uuid::new_v4().to_string();
    let now = fleet_schemas::time::now_micros();
    let reg = fixtures::agent_registered(tenant, &id, now);
    support::produce(e.log.as_ref(), &reg).await;
    if !tags.is_empty() {
        let tagged = AgentLifecycle {
            kind: AgentLifecycleKind::Updated,
            facts: None,
            tags: Some(tags.iter().map(|t| (*t).to_owned()).collect()),
            occurred_at: now + 1,
            event_id: uuid::Uuid::new_v4().to_string(),
            ..reg
        };
        support::produce(e.log.as_ref(), &tagged).await;
    }
    id
}

async fn commands(e: &AdminEnv) -> Vec<CommandEvent> {
    read::<CommandEvent>(e.log.as_ref()).await
}

fn of_kind(all: &[CommandEvent], kind: CommandEventKind) -> Vec<&CommandEvent> {
    all.iter().filter(|c| c.kind == kind).collect()
}

fn backup_for(target: Value) -> Value {
    json!({"target": target, "command_type": "run_script", "args": {"script": "backup"}})
}

struct Setup {
    e: AdminEnv,
    a: String,
    b: String,
    op1: String,
    op2: String,
    viewer: String,
    op_b: String,
    web1: String,
    web2: String,
    plain: String,
    b_web: String,
}

async fn setup() -> Setup {
    let e = support::admin_env(ADMIN, None).await;
    let a = support::create_tenant(&e.app, "A").await;
    let b = support::create_tenant(&e.app, "B").await;
    let (_, op1) = user(&e.app, "op-1", "operator", &a).await;
    let (_, op2) = user(&e.app, "op-2", "operator", &a).await;
    let (_, viewer) = user(&e.app, "viewer-a", "viewer", &a).await;
    let (_, op_b) = user(&e.app, "op-b", "operator", &b).await;
    let web1 = agent(&e, &a, &["web"]).await;
    let web2 = agent(&e, &a, &["web", "eu"]).await;
    let plain = agent(&e, &a, &[]).await;
    let b_web = agent(&e, &b, &["web"]).await;
    e.project().await;
    Setup {
        e,
        a,
        b,
        op1,
        op2,
        viewer,
        op_b,
        web1,
        web2,
        plain,
        b_web,
    }
}

#[tokio::test]
async fn a_group_fans_out_is_approved_once_and_counts_its_members() {
    let Setup {
        e,
        a,
        b,
        op1,
        op2,
        viewer,
        op_b,
        web1,
        web2,
        ..
    } = setup().await;
    let body = backup_for(json!({"tag": "web"}));

    // A viewer may not; another tenant's operator may not request in A; nothing written.
    let (s, v) = call(
        &e.app,
        "POST",
        "/api/v1/command-groups",
        Some(body.clone()),
        &viewer,
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let uri_a = format!("/api/v1/command-groups?tenant={a}");
    let (s, v) = call(&e.app, "POST", &uri_a, Some(body.clone()), &op_b).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert!(commands(&e).await.is_empty());

    // The operator requests it for the tag: one REQUESTED per agent of A with the tag (not
    // B's), each with the group id and the command id UUIDv5(group, agent), awaiting approval
    // (run_script needs it by default).
    let (s, g) = call(
        &e.app,
        "POST",
        "/api/v1/command-groups",
        Some(body.clone()),
        &op1,
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{g}");
    assert_eq!(g["status"], "awaiting_approval");
    assert_eq!(g["agent_count"], 2);
    let group = g["group_id"].as_str().expect("group id").to_owned();
    let all = commands(&e).await;
    let requested = of_kind(&all, CommandEventKind::Requested);
    assert_eq!(requested.len(), 2, "{all:#?}");
    let mut agents: Vec<&str> = requested.iter().map(|c| c.agent_id.as_str()).collect();
    agents.sort_unstable();
    let mut expected = vec![web1.as_str(), web2.as_str()];
    expected.sort_unstable();
    assert_eq!(agents, expected);
    for c in &requested {
        assert_eq!(c.group_id.as_deref(), Some(group.as_str()));
        assert_eq!(c.command_id, ids::v5(&[&group, &c.agent_id]).to_string());
        assert_eq!(c.tenant_id, a);
        assert!(c.requires_approval);
        assert_eq!(c.actor.as_deref(), Some("op-1"));
        assert_eq!(c.args.get("script").map(String::as_str), Some("backup"));
    }

    e.project().await;
    let uri = format!("/api/v1/command-groups/{group}");
    // Another tenant's operator: 404, as an unknown group; naming A: 403.
    let (s, _) = call(&e.app, "GET", &uri, None, &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&e.app, "GET", &format!("{uri}?tenant={a}"), None, &op_b).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, d) = call(&e.app, "GET", &uri, None, &viewer).await;
    assert_eq!(s, StatusCode::OK, "{d}");
    assert_eq!(d["counts"]["awaiting_approval"], 2, "{d}");
    assert_eq!(d["counts"]["total"], 2, "{d}");
    assert_eq!(d["approval"], "awaiting_approval");
    assert_eq!(d["state"], "open");
    assert_eq!(d["target"], json!({"tag": "web"}));
    assert_eq!(d["requested_by"], "op-1");
    let (s, m) = call(
        &e.app,
        "GET",
        &format!("{uri}/commands?limit=1"),
        None,
        &viewer,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(m["commands"].as_array().map(Vec::len), Some(1));
    let after = m["next_after"].as_str().expect("a second page").to_owned();
    let (_, m2) = call(
        &e.app,
        "GET",
        &format!("{uri}/commands?after={after}"),
        None,
        &viewer,
    )
    .await;
    assert_eq!(m2["commands"].as_array().map(Vec::len), Some(1), "{m2}");
    assert_ne!(
        m2["commands"][0]["command_id"],
        m["commands"][0]["command_id"]
    );

    // Approval: not by the requester (409), not by B's operator (404), not by a viewer
    // (403); nothing written. Then once by a second operator, for both members.
    let approve = format!("{uri}/approve");
    let (s, v) = call(&e.app, "POST", &approve, None, &op1).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "same_user");
    let (s, _) = call(&e.app, "POST", &approve, None, &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(&e.app, "POST", &approve, None, &viewer).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    assert!(of_kind(&commands(&e).await, CommandEventKind::Approved).is_empty());
    let (s, v) = call(&e.app, "POST", &approve, None, &op2).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["commands"], 2);
    assert_eq!(v["by"], "op-2");
    let all = commands(&e).await;
    let approved = of_kind(&all, CommandEventKind::Approved);
    assert_eq!(approved.len(), 2);
    assert!(approved.iter().all(
        |c| c.group_id.as_deref() == Some(group.as_str()) && c.actor.as_deref() == Some("op-2")
    ));
    e.project().await;
    let (_, d) = call(&e.app, "GET", &uri, None, &op1).await;
    assert_eq!(d["approval"], "approved", "{d}");
    assert_eq!(d["approved_by"], "op-2");
    assert_eq!(d["counts"]["pending"], 2, "approved, not dispatched: {d}");
    // Twice: nothing awaits approval any more.
    let (s, v) = call(&e.app, "POST", &approve, None, ADMIN).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(
        of_kind(&commands(&e).await, CommandEventKind::Approved).len(),
        2
    );

    // One member was dispatched already: a cancel cancels the other and says so.
    let member = approved[0];
    let dispatched = CommandEvent {
        actor: Some("gateway-1".into()),
        ..CommandEvent::step(
            CommandEventKind::Dispatched,
            &member.command_id,
            &a,
            &member.agent_id,
            fleet_schemas::time::now_micros(),
        )
    };
    support::produce(e.log.as_ref(), &dispatched).await;
    e.project().await;
    let (s, v) = call(&e.app, "POST", &format!("{uri}/cancel"), None, &op1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["commands"], 1, "{v}");
    assert_eq!(v["already_dispatched"], 1, "{v}");
    let all = commands(&e).await;
    let cancelled = of_kind(&all, CommandEventKind::Cancelled);
    assert_eq!(cancelled.len(), 1);
    assert_ne!(cancelled[0].command_id, member.command_id);
    e.project().await;
    let (_, d) = call(&e.app, "GET", &uri, None, &op1).await;
    assert_eq!(d["counts"]["cancelled"], 1, "{d}");
    assert_eq!(d["counts"]["dispatched"], 1, "{d}");

    // The list, newest first, per tenant.
    let (s, l) = call(&e.app, "GET", "/api/v1/command-groups", None, &viewer).await;
    assert_eq!(s, StatusCode::OK, "{l}");
    assert_eq!(l["groups"][0]["group_id"], group.as_str());
    let (_, l) = call(
        &e.app,
        "GET",
        &format!("/api/v1/command-groups?tenant={b}"),
        None,
        ADMIN,
    )
    .await;
    assert_eq!(l["groups"], json!([]), "{l}");

    // Audited.
    let (_, audit) = call(
        &e.app,
        "GET",
        &format!("/api/v1/audit?tenant={a}"),
        None,
        ADMIN,
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|x| x["target"] == group.as_str())
        .filter_map(|x| x["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "command_group.cancel",
            "command_group.approve",
            "command_group.request"
        ],
        "{audit}"
    );
}

#[tokio::test]
async fn a_group_awaiting_approval_cancelled_is_never_approved() {
    let Setup {
        e,
        op1,
        op2,
        web1,
        plain,
        ..
    } = setup().await;
    let body = backup_for(json!({"agents": [web1, plain]}));
    let (s, g) = call(&e.app, "POST", "/api/v1/command-groups", Some(body), &op1).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{g}");
    assert_eq!(g["agent_count"], 2);
    let uri = format!(
        "/api/v1/command-groups/{}",
        g["group_id"].as_str().expect("id")
    );
    e.project().await;
    // The requester withdraws it.
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("{uri}/cancel"),
        Some(json!({"reason": "wrong script"})),
        &op1,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["commands"], 2);
    assert_eq!(v["already_dispatched"], 0);
    let all = commands(&e).await;
    let cancelled = of_kind(&all, CommandEventKind::Cancelled);
    assert_eq!(cancelled.len(), 2);
    assert!(cancelled
        .iter()
        .all(|c| c.message.as_deref() == Some("wrong script")));
    e.project().await;
    let (_, d) = call(&e.app, "GET", &uri, None, &op2).await;
    assert_eq!(d["counts"]["cancelled"], 2, "{d}");
    assert_eq!(d["state"], "finished");
    assert_eq!(d["approval"], "cancelled");
    // Nothing is left to approve, reject or cancel.
    for what in ["approve", "reject", "cancel"] {
        let (s, v) = call(&e.app, "POST", &format!("{uri}/{what}"), None, &op2).await;
        assert_eq!(s, StatusCode::CONFLICT, "{what}: {v}");
    }
    assert!(of_kind(&commands(&e).await, CommandEventKind::Approved).is_empty());
}

#[tokio::test]
async fn targets_are_bounded_checked_and_retries_are_idempotent() {
    let Setup {
        e, a, op1, b_web, ..
    } = setup().await;
    let post = |body: Value, key: String| {
        let app = e.app.clone();
        async move { call(&app, "POST", "/api/v1/command-groups", Some(body), &key).await }
    };
    let many: Vec<String> = (0..1001).map(|i| format!("agent-{i}")).collect();
    for (body, status, field) in [
        (
            backup_for(json!({"tag": "web", "location": "loc-1"})),
            400,
            "target",
        ),
        (backup_for(json!({})), 400, "target"),
        (
            json!({"command_type": "collect_diagnostics"}),
            400,
            "target",
        ),
        (backup_for(json!({"agents": many})), 400, "target.agents"),
        (backup_for(json!({"agents": []})), 400, "target.agents"),
        (backup_for(json!({"tag": "bad tag"})), 400, "target.tag"),
        (
            json!({"target": {"tag": "web"}, "command_type": "rm_rf"}),
            400,
            "command_type",
        ),
        (
            json!({"target": {"tag": "web"}, "command_type": "run_script"}),
            400,
            "args.script",
        ),
        (
            json!({"target": {"tag": "web"}, "command_type": "collect_diagnostics", "timeout_secs": 0}),
            400,
            "timeout_secs",
        ),
        (
            json!({"target": {"tag": "web"}, "command_type": "collect_diagnostics", "extra": 1}),
            400,
            "extra",
        ),
        (backup_for(json!({"tag": "nobody-has-it"})), 422, "target"),
        (backup_for(json!({"agents": [b_web]})), 422, "target.agents"),
    ] {
        let (s, v) = post(body.clone(), op1.clone()).await;
        assert_eq!(s.as_u16(), status, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
    }
    // An admin names the tenant.
    let (s, v) = post(backup_for(json!({"tag": "web"})), ADMIN.to_owned()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "tenant");
    assert!(commands(&e).await.is_empty(), "nothing written");

    // A retry under the same key names the same group and writes the same events.
    let keyed = |body: Value, key: &str| {
        let app = e.app.clone();
        let op1 = op1.clone();
        let key = key.to_owned();
        async move {
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/api/v1/command-groups")
                .header("content-type", "application/json")
                .header("authorization", format!("Bearer {op1}"))
                .header("idempotency-key", key)
                .body(axum::body::Body::from(
                    serde_json::to_vec(&body).expect("json"),
                ))
                .expect("request");
            let resp = tower::ServiceExt::oneshot(app, req)
                .await
                .expect("response");
            let status = resp.status();
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .expect("body")
                .to_bytes();
            (
                status,
                serde_json::from_slice::<Value>(&bytes).unwrap_or(Value::Null),
            )
        }
    };
    let body = json!({"target": {"tag": "web"}, "command_type": "collect_diagnostics"});
    let (s, first) = keyed(body.clone(), "retry-1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "requested");
    let (s, again) = keyed(body.clone(), "retry-1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{again}");
    assert_eq!(again["group_id"], first["group_id"]);
    let all = commands(&e).await;
    assert_eq!(all.len(), 4, "two agents, twice");
    let mut ids: Vec<&str> = all.iter().map(|c| c.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 2, "the retry wrote the same events: {all:#?}");
    // Another request under that key: 409, nothing written.
    let mut other = body.clone();
    other["timeout_secs"] = json!(30);
    let (s, v) = keyed(other, "retry-1").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "idempotency_key_reused");
    assert_eq!(commands(&e).await.len(), 4);
    e.project().await;
    let uri = format!(
        "/api/v1/command-groups/{}",
        first["group_id"].as_str().expect("id")
    );
    let (_, d) = call(&e.app, "GET", &uri, None, &op1).await;
    assert_eq!(d["counts"]["total"], 2, "{d}");
    assert_eq!(d["counts"]["pending"], 2, "{d}");
    assert_eq!(d["approval"], "not_required");
    assert_eq!(d["tenant_id"], a.as_str());
}

#[tokio::test]
async fn a_single_command_is_rejected_or_cancelled() {
    let Setup {
        e,
        a,
        op1,
        op2,
        op_b,
        ..
    } = setup().await;
    // A single command names an agent with credentials (the registry's).
    let plain = support::enroll(&e.registry, &a, None).await;
    let request = |key: String| {
        let app = e.app.clone();
        let plain = plain.clone();
        async move {
            let (s, c) = call(
                &app,
                "POST",
                &format!("/api/v1/agents/{plain}/commands"),
                Some(json!({"command_type": "run_script", "args": {"script": "backup"}})),
                &key,
            )
            .await;
            assert_eq!(s, StatusCode::ACCEPTED, "{c}");
            c["command_id"].as_str().expect("id").to_owned()
        }
    };
    let id = request(op1.clone()).await;
    e.project().await;
    let reject = format!("/api/v1/commands/{id}/reject");
    let (s, v) = call(&e.app, "POST", &reject, None, &op1).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "the requester does not answer its own request: {v}"
    );
    let (s, _) = call(&e.app, "POST", &reject, None, &op_b).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &e.app,
        "POST",
        &reject,
        Some(json!({"reason": "not in the window"})),
        &op2,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "rejected");
    let all = commands(&e).await;
    let rejected = of_kind(&all, CommandEventKind::Rejected);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].message.as_deref(), Some("not in the window"));
    assert_eq!(rejected[0].actor.as_deref(), Some("op-2"));
    e.project().await;
    let (_, c) = call(&e.app, "GET", &format!("/api/v1/commands/{id}"), None, &op1).await;
    assert_eq!(c["status"], "rejected", "{c}");
    // Rejected is final: no approval, no cancel.
    let (s, _) = call(
        &e.app,
        "POST",
        &format!("/api/v1/commands/{id}/approve"),
        None,
        &op2,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/v1/commands/{id}/cancel"),
        None,
        &op1,
    )
    .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_eq!(v["error"]["code"], "already_finished");

    // The requester cancels another one before anyone approved it.
    let id = request(op1.clone()).await;
    e.project().await;
    let (s, v) = call(
        &e.app,
        "POST",
        &format!("/api/v1/commands/{id}/cancel"),
        None,
        &op1,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
    assert_eq!(
        of_kind(&commands(&e).await, CommandEventKind::Cancelled).len(),
        1
    );
    e.project().await;
    let (_, c) = call(&e.app, "GET", &format!("/api/v1/commands/{id}"), None, &op1).await;
    assert_eq!(c["status"], "cancelled", "{c}");
    let (_, audit) = call(&e.app, "GET", "/api/v1/audit", None, &op1).await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|x| x["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"command.reject") && actions.contains(&"command.cancel"),
        "{actions:?}"
    );
}
