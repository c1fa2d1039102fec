//! Tenancy of every API route: an operator or viewer of tenant A never sees or changes
//! tenant B's data. One table of requests covers every operation of the OpenAPI document
//! (a route added without a case here fails `every_documented_route_has_a_tenancy_case`).
//!
//! The API runs over the real SQLite read model and registry, the embedded log and the
//! embedded time-series store; B's data is real rows and events, so a leak would show.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_projections::admin::{router, AdminState};
use fleet_projections::api::{app, ApiState};
use fleet_schemas::{codec, fixtures, CommandEventKind, Record};
use fleet_stores::{Change, Point, ReadModel, TimeSeriesStore};
use serde_json::{json, Value};
use support::{call, create_tenant, enroll, ADMIN};

struct World {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    app: Router,
    a: String,
    b: String,
    /// Agent of A and agent of B.
    a1: String,
    b1: String,
    /// Keys of A's operator and A's viewer.
    op_a: String,
    viewer_a: String,
    /// B's objects.
    b_alert: String,
    b_command: String,
    b_rule: String,
    b_user: String,
}

async fn produce<T: Record>(log: &dyn EventLog, v: &T) {
    let rec = ProduceRecord::keyed(
        v.key().as_bytes().to_vec(),
        codec::encode(v).expect("encode"),
    );
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

async fn user(app: &Router, name: &str, role: &str, tenant: &str) -> (String, String) {
    let (s, v) = call(
        app,
        "POST",
        "/api/v1/users",
        Some(json!({ "name": name, "role": role, "tenant_id": tenant })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["user"]["user_id"].as_str().expect("user id").to_owned(),
        v["api_key"]["key"].as_str().expect("key").to_owned(),
    )
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_owned();
    let log = fleet_event_log::open(&p("log"), &Default::default())
        .await
        .expect("log");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let sql = fleet_stores::open_sql(&p("rm.db")).await.expect("sql");
    let rm: Arc<dyn ReadModel> = sql.clone();
    let registry: Arc<dyn fleet_stores::registry::Registry> = sql.clone();
    let ts: Arc<dyn TimeSeriesStore> = fleet_stores::open_timeseries(&p("ts")).await.expect("ts");
    let admin = AdminState::new(
        registry.clone(),
        log.clone(),
        ADMIN,
        "http://gw.example:8080",
    )
    .with_audit(rm.clone());
    let app = app(ApiState::new(rm.clone(), ts.clone(), admin.clone())).merge(router(admin));

    let a = create_tenant(&app, "tenant-a").await;
    let b = create_tenant(&app, "tenant-b").await;
    let a1 = enroll(&registry, &a, None).await;
    let b1 = enroll(&registry, &b, None).await;
    let now = fleet_schemas::time::now_micros();

    // Read-model rows and time series of both tenants.
    let mut changes = Vec::new();
    for (t, agent) in [(&a, &a1), (&b, &b1)] {
        changes.push(Change::Lifecycle(fixtures::agent_registered(t, agent, now)));
        changes.push(Change::Report(Box::new(fixtures::metric_report(
            t, agent, now,
        ))));
        changes.push(Change::Alert(fixtures::alert_raised(t, agent, now)));
        changes.push(Change::Inventory(Box::new(fixtures::software_inventory(
            t, agent, now,
        ))));
        changes.push(Change::Ticket(Box::new(fixtures::ticket_requested(
            t, agent, now,
        ))));
        let mut cmd = fixtures::command_completed(t, agent, now);
        cmd.kind = CommandEventKind::Requested;
        changes.push(Change::Command(Box::new(cmd)));
        ts.write(&[Point {
            tenant_id: t.clone(),
            agent_id: agent.clone(),
            series: "cpu.percent".into(),
            ts_micros: now - 30_000_000,
            value: 12.5,
        }])
        .await
        .expect("points");
    }
    rm.apply("test", &changes, &[]).await.expect("apply");
    // The alert routes find alerts on the topic.
    let b_raised = fixtures::alert_raised(&b, &b1, now);
    produce(log.as_ref(), &b_raised).await;
    produce(log.as_ref(), &fixtures::alert_raised(&a, &a1, now)).await;

    let (_, op_a) = user(&app, "op-a", "operator", &a).await;
    let (_, viewer_a) = user(&app, "viewer-a", "viewer", &a).await;
    let (b_user, _) = user(&app, "op-b", "operator", &b).await;

    // A command of B awaiting approval, and a rule of B.
    let (s, v) = call(
        &app,
        "POST",
        &format!("/api/v1/agents/{b1}/commands"),
        Some(json!({ "command_type": "run_script", "args": { "script": "x" }, "requires_approval": true })),
        Some(ADMIN),
    )
    .await;
    assert!(s.is_success(), "{v}");
    let b_command = v["command_id"].as_str().expect("command id").to_owned();
    let (s, v) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{b}/rules"),
        Some(json!({ "name": "b-cpu", "metric": "cpu.percent", "warning": 80.0 })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let b_rule = v["rule_id"].as_str().expect("rule id").to_owned();

    World {
        _dir: dir,
        log,
        app,
        a,
        b,
        a1,
        b1,
        op_a,
        viewer_a,
        b_alert: b_raised.alert_id,
        b_command,
        b_rule,
        b_user,
    }
}

/// One request of the table: which documented operation it exercises, and the statuses
/// A's operator may get for it (never a 2xx that touches B).
struct Case {
    /// `METHOD /documented/{path}`.
    operation: &'static str,
    method: &'static str,
    uri: String,
    body: Option<Value>,
    /// Allowed answers to A's operator.
    expect: &'static [StatusCode],
}

const DENIED: &[StatusCode] = &[StatusCode::FORBIDDEN, StatusCode::NOT_FOUND];

fn cases(w: &World) -> Vec<Case> {
    let (b, b1) = (&w.b, &w.b1);
    let c = |operation, method, uri: String, body, expect| Case {
        operation,
        method,
        uri,
        body,
        expect,
    };
    vec![
        // Reads that name B's tenant: 403.
        c(
            "GET /api/v1/overview",
            "GET",
            format!("/api/v1/overview?tenant={b}"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/agents",
            "GET",
            format!("/api/v1/agents?tenant={b}"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/alerts",
            "GET",
            format!("/api/v1/alerts?tenant={b}"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/tickets",
            "GET",
            format!("/api/v1/tickets?tenant={b}"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/audit",
            "GET",
            format!("/api/v1/audit?tenant={b}"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        // Reads of B's objects by id: 404, as if they did not exist (or 403 naming the tenant).
        c(
            "GET /api/v1/agents/{agent_id}",
            "GET",
            format!("/api/v1/agents/{b1}"),
            None,
            DENIED,
        ),
        c(
            "GET /api/v1/agents/{agent_id}",
            "GET",
            format!("/api/v1/agents/{b1}?tenant={b}"),
            None,
            DENIED,
        ),
        c(
            "GET /api/v1/agents/{agent_id}/metrics",
            "GET",
            format!("/api/v1/agents/{b1}/metrics?metric=cpu.percent&start=1h"),
            None,
            DENIED,
        ),
        c(
            "GET /api/v1/agents/{agent_id}/commands",
            "GET",
            format!("/api/v1/agents/{b1}/commands"),
            None,
            DENIED,
        ),
        c(
            "GET /api/v1/agents/{agent_id}/software",
            "GET",
            format!("/api/v1/agents/{b1}/software"),
            None,
            DENIED,
        ),
        c(
            "GET /api/v1/commands/{command_id}",
            "GET",
            format!("/api/v1/commands/{}", w.b_command),
            None,
            DENIED,
        ),
        // Admin-only reads.
        c(
            "GET /api/v1/tenants",
            "GET",
            "/api/v1/tenants".into(),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/users",
            "GET",
            "/api/v1/users".into(),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/tenants/{tenant_id}/locations",
            "GET",
            format!("/api/v1/tenants/{b}/locations"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/tenants/{tenant_id}/registration-tokens",
            "GET",
            format!("/api/v1/tenants/{b}/registration-tokens"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "GET /api/v1/tenants/{tenant_id}/rules",
            "GET",
            format!("/api/v1/tenants/{b}/rules"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        // Changes to B.
        c(
            "POST /api/v1/tenants",
            "POST",
            "/api/v1/tenants".into(),
            Some(json!({"name": "x"})),
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/tenants/{tenant_id}/locations",
            "POST",
            format!("/api/v1/tenants/{b}/locations"),
            Some(json!({"name": "x"})),
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/tenants/{tenant_id}/registration-tokens",
            "POST",
            format!("/api/v1/tenants/{b}/registration-tokens"),
            Some(json!({})),
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/agents/{agent_id}/deactivate",
            "POST",
            format!("/api/v1/agents/{b1}/deactivate"),
            None,
            DENIED,
        ),
        c(
            "PUT /api/v1/agents/{agent_id}/tags",
            "PUT",
            format!("/api/v1/agents/{b1}/tags"),
            Some(json!({"tags": ["x"]})),
            DENIED,
        ),
        c(
            "POST /api/v1/agents/{agent_id}/commands",
            "POST",
            format!("/api/v1/agents/{b1}/commands"),
            Some(json!({"command_type": "restart_service", "args": {"service": "nginx"}})),
            DENIED,
        ),
        c(
            "POST /api/v1/commands/{command_id}/approve",
            "POST",
            format!("/api/v1/commands/{}/approve", w.b_command),
            None,
            DENIED,
        ),
        c(
            "POST /api/v1/users",
            "POST",
            "/api/v1/users".into(),
            Some(json!({"name": "evil", "role": "operator", "tenant_id": b})),
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/users/{user_id}/keys",
            "POST",
            format!("/api/v1/users/{}/keys", w.b_user),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/users/{user_id}/disable",
            "POST",
            format!("/api/v1/users/{}/disable", w.b_user),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/tenants/{tenant_id}/rules",
            "POST",
            format!("/api/v1/tenants/{b}/rules"),
            Some(json!({"name": "x", "metric": "cpu.percent", "warning": 1.0})),
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "POST /api/v1/tenants/{tenant_id}/rules/defaults",
            "POST",
            format!("/api/v1/tenants/{b}/rules/defaults"),
            None,
            &[StatusCode::FORBIDDEN],
        ),
        c(
            "PUT /api/v1/rules/{rule_id}",
            "PUT",
            format!("/api/v1/rules/{}", w.b_rule),
            Some(json!({"name": "x", "metric": "cpu.percent", "warning": 1.0})),
            DENIED,
        ),
        c(
            "DELETE /api/v1/rules/{rule_id}",
            "DELETE",
            format!("/api/v1/rules/{}", w.b_rule),
            None,
            DENIED,
        ),
        c(
            "POST /api/v1/rules/{rule_id}/disable",
            "POST",
            format!("/api/v1/rules/{}/disable", w.b_rule),
            None,
            DENIED,
        ),
        c(
            "POST /api/v1/rules/{rule_id}/enable",
            "POST",
            format!("/api/v1/rules/{}/enable", w.b_rule),
            None,
            DENIED,
        ),
        c(
            "POST /api/v1/alerts/{alert_id}/acknowledge",
            "POST",
            format!("/api/v1/alerts/{}/acknowledge", w.b_alert),
            None,
            DENIED,
        ),
        c(
            "POST /api/v1/alerts/{alert_id}/resolve",
            "POST",
            format!("/api/v1/alerts/{}/resolve", w.b_alert),
            None,
            DENIED,
        ),
        // The caller itself: their own identity, nothing of B.
        c(
            "GET /api/v1/me",
            "GET",
            "/api/v1/me".into(),
            None,
            &[StatusCode::OK],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_of_a_never_sees_or_changes_b() {
    let w = world().await;
    for case in cases(&w) {
        let (s, v) = call(
            &w.app,
            case.method,
            &case.uri,
            case.body.clone(),
            Some(&w.op_a),
        )
        .await;
        assert!(
            case.expect.contains(&s),
            "{} {}: A's operator got {s} {v}, expected one of {:?}",
            case.method,
            case.uri,
            case.expect
        );
        if s.is_success() {
            let text = v.to_string();
            assert!(
                !text.contains(&w.b) && !text.contains(&w.b1),
                "{}: leaks B: {text}",
                case.uri
            );
        }
    }
    // Nothing of B changed: its alert is open, its command awaits approval, its rule is
    // enabled, its agent active, and B's audit log holds only the admin's changes.
    let (_, alerts) = call(
        &w.app,
        "GET",
        &format!("/api/v1/alerts?tenant={}", w.b),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(alerts["alerts"][0]["status"], "open", "{alerts}");
    // No event on any topic was written by A's operator.
    let by_op_a = |actor: &Option<String>| actor.as_deref() == Some("op-a");
    let commands = support::read::<fleet_schemas::CommandEvent>(w.log.as_ref()).await;
    assert!(commands.iter().any(|c| c.command_id == w.b_command));
    assert!(
        !commands.iter().any(|c| by_op_a(&c.actor)),
        "a command event by op-a"
    );
    let alerts = support::read::<fleet_schemas::AlertEvent>(w.log.as_ref()).await;
    assert!(
        !alerts.iter().any(|a| by_op_a(&a.actor)),
        "an alert event by op-a"
    );
    let agents = support::read::<fleet_schemas::AgentLifecycle>(w.log.as_ref()).await;
    assert!(
        !agents.iter().any(|a| by_op_a(&a.actor)),
        "an agent event by op-a"
    );
    let (_, audit) = call(
        &w.app,
        "GET",
        &format!("/api/v1/audit?tenant={}", w.b),
        None,
        Some(ADMIN),
    )
    .await;
    let actors: BTreeSet<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["actor"].as_str())
        .collect();
    assert_eq!(actors, BTreeSet::from(["admin"]), "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_show_only_the_callers_tenant() {
    let w = world().await;
    for key in [&w.op_a, &w.viewer_a] {
        for uri in [
            "/api/v1/agents".to_owned(),
            "/api/v1/agents?q=a".to_owned(),
            "/api/v1/alerts".to_owned(),
            "/api/v1/tickets".to_owned(),
            "/api/v1/overview".to_owned(),
            "/api/v1/audit".to_owned(),
            format!("/api/v1/agents?tenant={}", w.a),
            format!("/api/v1/agents/{}", w.a1),
            format!(
                "/api/v1/agents/{}/metrics?metric=cpu.percent&start=1h&interval=1m",
                w.a1
            ),
            format!("/api/v1/agents/{}/commands", w.a1),
            format!("/api/v1/agents/{}/software", w.a1),
        ] {
            let (s, v) = call(&w.app, "GET", &uri, None, Some(key)).await;
            assert_eq!(s, StatusCode::OK, "{uri}: {v}");
            let text = v.to_string();
            assert!(
                !text.contains(&w.b) && !text.contains(&w.b1),
                "{uri} leaks B: {text}"
            );
        }
    }
    // A's own data is there.
    let (_, v) = call(&w.app, "GET", "/api/v1/agents", None, Some(&w.op_a)).await;
    let ids: Vec<&str> = v["agents"]
        .as_array()
        .expect("agents")
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(ids, vec![w.a1.as_str()], "{v}");
    let (_, v) = call(&w.app, "GET", "/api/v1/overview", None, Some(&w.viewer_a)).await;
    assert_eq!(v["tenant_id"], w.a.as_str());
    assert_eq!(v["agents"]["total"], 1, "{v}");
    assert_eq!(v["open_alerts"]["total"], 1, "{v}");
    let (_, v) = call(
        &w.app,
        "GET",
        &format!(
            "/api/v1/agents/{}/metrics?metric=cpu.percent&start=1h&interval=1m",
            w.a1
        ),
        None,
        Some(&w.op_a),
    )
    .await;
    assert_eq!(v["series"][0]["buckets"][0]["avg"], 12.5, "{v}");
    assert_eq!(v["resolution"], "1m");
    // The admin sees both tenants.
    let (_, v) = call(&w.app, "GET", "/api/v1/agents", None, Some(ADMIN)).await;
    assert_eq!(v["agents"].as_array().map(Vec::len), Some(2), "{v}");
    // No key: 401 on every read.
    for uri in [
        "/api/v1/agents",
        "/api/v1/overview",
        "/api/v1/me",
        "/api/v1/alerts",
    ] {
        let (s, _) = call(&w.app, "GET", uri, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{uri}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_of_a_cannot_change_a() {
    let w = world().await;
    let (a, a1) = (&w.a, &w.a1);
    let (s, v) = call(&w.app, "GET", "/api/v1/alerts", None, Some(&w.viewer_a)).await;
    assert_eq!(s, StatusCode::OK);
    let a_alert = v["alerts"][0]["alert_id"]
        .as_str()
        .expect("A's alert")
        .to_owned();
    for (method, uri, body) in [
        (
            "POST",
            format!("/api/v1/alerts/{a_alert}/acknowledge"),
            None,
        ),
        (
            "PUT",
            format!("/api/v1/agents/{a1}/tags"),
            Some(json!({"tags": ["x"]})),
        ),
        (
            "POST",
            format!("/api/v1/agents/{a1}/commands"),
            Some(json!({"command_type": "restart_service", "args": {"service": "nginx"}})),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/rules"),
            Some(json!({"name": "x", "metric": "cpu.percent", "warning": 1.0})),
        ),
        (
            "POST",
            format!("/api/v1/tenants/{a}/registration-tokens"),
            Some(json!({})),
        ),
    ] {
        let (s, v) = call(&w.app, method, &uri, body, Some(&w.viewer_a)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
    }
    // The operator of A may acknowledge A's alert (the alert routes read the topic).
    let (s, v) = call(
        &w.app,
        "PUT",
        &format!("/api/v1/agents/{a1}/tags"),
        Some(json!({"tags": ["web"]})),
        Some(&w.op_a),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, audit) = call(&w.app, "GET", "/api/v1/audit", None, Some(&w.viewer_a)).await;
    assert_eq!(audit["entries"][0]["action"], "agent.tags", "{audit}");
    assert_eq!(audit["entries"][0]["actor"], "op-a", "{audit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_has_a_tenancy_case() {
    let w = world().await;
    let (s, doc) = call(&w.app, "GET", "/api/openapi.json", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{doc}"
    );
    let mut documented = BTreeSet::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for method in ops.as_object().expect("operations").keys() {
            documented.insert(format!("{} {path}", method.to_uppercase()));
        }
    }
    let covered: BTreeSet<String> = cases(&w).iter().map(|c| c.operation.to_owned()).collect();
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "documented routes without a tenancy case: {missing:?}"
    );
    let stale: Vec<_> = covered.difference(&documented).collect();
    assert!(
        stale.is_empty(),
        "tenancy cases of undocumented routes: {stale:?}"
    );
    // Each case's request really reaches a route (not the fallback 404 of an unknown path):
    // as the admin, none answers 404 with an empty body.
    for case in cases(&w) {
        let (s, v) = call(
            &w.app,
            case.method,
            &case.uri,
            case.body.clone(),
            Some(ADMIN),
        )
        .await;
        assert!(
            !(s == StatusCode::NOT_FOUND && v.is_null()) && s != StatusCode::METHOD_NOT_ALLOWED,
            "{} {} is not routed: {s}",
            case.method,
            case.uri
        );
    }
    // Every operation documents the shared error answers with their body.
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for (method, op) in ops.as_object().expect("operations") {
            for status in ["400", "401", "403", "404"] {
                let schema = &op["responses"][status]["content"]["application/json"]["schema"];
                assert!(
                    schema["$ref"]
                        .as_str()
                        .is_some_and(|r| r.ends_with("/ErrorBody")),
                    "{method} {path}: no {status} ErrorBody: {}",
                    op["responses"]
                );
            }
        }
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(
        doc["components"]["schemas"]["AgentRow"].is_object(),
        "schemas come from the types"
    );
}
