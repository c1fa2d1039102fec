//! Tenancy of every API route: an operator or viewer of tenant A never sees or changes
//! tenant B's data, and cannot tell B's objects from missing ones. One table of requests
//! covers every operation of the OpenAPI document (a route added without a case here fails
//! `every_documented_route_has_a_tenancy_case`). For every write:
//!
//! * A's operator gets the same answer (status and body) for B's object as for a made-up
//!   id: 404 for an object named by id, 403 for a tenant or an admin-only route; no id of
//!   B in the body;
//! * A's viewer gets 403 for a made-up id, for A's own object and for B's alike: the role
//!   is checked before anything is looked up.
//!
//! The API runs over the real SQLite read model and registry, the embedded log and the
//! embedded time-series store; B's data is real rows and events, so a leak would show.

mod support;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::world::{world, World};
use support::{call, ADMIN};

/// One request of the table: which documented operation it exercises, and the statuses
/// A's operator may get for it (never a 2xx that touches B).
struct Case {
    /// `METHOD /documented/{path}`.
    operation: &'static str,
    method: &'static str,
    /// The request naming B's object or tenant.
    uri: String,
    /// Writes: the same request naming a made-up id or tenant.
    random: Option<String>,
    /// Writes a viewer of A may not make: the same request naming A's own object or
    /// tenant.
    own: Option<String>,
    body: Option<Value>,
    /// Writes that name the tenant in the body: the bodies sent with `random` and `own`
    /// (None: `body`).
    random_body: Option<Value>,
    own_body: Option<Value>,
    /// Allowed answers to A's operator.
    expect: &'static [StatusCode],
}

const DENIED: &[StatusCode] = &[StatusCode::FORBIDDEN, StatusCode::NOT_FOUND];
const FORBIDDEN: &[StatusCode] = &[StatusCode::FORBIDDEN];
const NOT_FOUND: &[StatusCode] = &[StatusCode::NOT_FOUND];

fn random() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn cases(w: &World) -> Vec<Case> {
    let (a, a1, b, b1) = (&w.a, &w.a1, &w.b, &w.b1);
    let read = |operation, uri: String, expect| Case {
        operation,
        method: "GET",
        uri,
        random: None,
        own: None,
        body: None,
        random_body: None,
        own_body: None,
        expect,
    };
    // A write naming an object or tenant: `path(id)` is the URI; B's id, a made-up one,
    // A's own (None: the viewer may do it to its own, as revoking its own key).
    let write = |operation,
                 method,
                 path: &dyn Fn(&str) -> String,
                 ids: [Option<&str>; 2],
                 body: Option<Value>,
                 expect| {
        let [b_id, own] = ids;
        let b_id = b_id.unwrap_or_default();
        Case {
            operation,
            method,
            uri: path(b_id),
            random: Some(path(&random())),
            own: own.map(path),
            body,
            random_body: None,
            own_body: None,
            expect,
        }
    };
    // A write to one route naming the tenant in its body: `body(tenant)`.
    let write_in_body = |operation, uri: &str, body: &dyn Fn(&str) -> Value, expect| Case {
        operation,
        method: "POST",
        uri: uri.to_owned(),
        random: Some(uri.to_owned()),
        own: Some(uri.to_owned()),
        body: Some(body(b)),
        random_body: Some(body(&random())),
        own_body: Some(body(a)),
        expect,
    };
    let tags = json!({"tags": ["x"]});
    let command = json!({"command_type": "restart_service", "args": {"service": "nginx"}});
    let rule = json!({"name": "x", "metric": "cpu.percent", "warning": 1.0});
    vec![
        // Reads that name B's tenant: 403.
        read(
            "GET /api/v1/overview",
            format!("/api/v1/overview?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/agents",
            format!("/api/v1/agents?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/alerts",
            format!("/api/v1/alerts?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tickets",
            format!("/api/v1/tickets?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/events",
            format!("/api/v1/events?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/audit",
            format!("/api/v1/audit?tenant={b}"),
            FORBIDDEN,
        ),
        // Reads of B's objects by id: 404, as if they did not exist (or 403 naming the tenant).
        read(
            "GET /api/v1/agents/{agent_id}",
            format!("/api/v1/agents/{b1}"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/agents/{agent_id}",
            format!("/api/v1/agents/{b1}?tenant={b}"),
            DENIED,
        ),
        read(
            "GET /api/v1/agents/{agent_id}/metrics",
            format!("/api/v1/agents/{b1}/metrics?metric=cpu.percent&start=1h"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/agents/{agent_id}/commands",
            format!("/api/v1/agents/{b1}/commands"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/agents/{agent_id}/software",
            format!("/api/v1/agents/{b1}/software"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/agents/{agent_id}/events",
            format!("/api/v1/agents/{b1}/events"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/agents/{agent_id}/config",
            format!("/api/v1/agents/{b1}/config"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/events",
            format!("/api/v1/events?agent={b1}"),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/commands/{command_id}",
            format!("/api/v1/commands/{}", w.b_command),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/commands/{command_id}/output",
            format!("/api/v1/commands/{}/output", w.b_command),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/commands/{command_id}/stream",
            format!("/api/v1/commands/{}/stream", w.b_command),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/command-groups",
            format!("/api/v1/command-groups?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/command-groups/{group_id}",
            format!("/api/v1/command-groups/{}", w.b_group),
            NOT_FOUND,
        ),
        read(
            "GET /api/v1/command-groups/{group_id}",
            format!("/api/v1/command-groups/{}?tenant={b}", w.b_group),
            DENIED,
        ),
        read(
            "GET /api/v1/command-groups/{group_id}/commands",
            format!("/api/v1/command-groups/{}/commands", w.b_group),
            NOT_FOUND,
        ),
        // Admin-only reads, and reads of B's tenant.
        read("GET /api/v1/tenants", "/api/v1/tenants".into(), FORBIDDEN),
        read("GET /api/v1/users", "/api/v1/users".into(), FORBIDDEN),
        read(
            "GET /api/v1/users/{user_id}/keys",
            format!("/api/v1/users/{}/keys", w.b_user),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/locations",
            format!("/api/v1/tenants/{b}/locations"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/registration-tokens",
            format!("/api/v1/tenants/{b}/registration-tokens"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/rules",
            format!("/api/v1/tenants/{b}/rules"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/admin/ingest-keys",
            format!("/api/v1/admin/ingest-keys?tenant={b}"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/notification-channels",
            format!("/api/v1/tenants/{b}/notification-channels"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/notification-routes",
            format!("/api/v1/tenants/{b}/notification-routes"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/tenants/{tenant_id}/silences",
            format!("/api/v1/tenants/{b}/silences"),
            FORBIDDEN,
        ),
        read(
            "GET /api/v1/notification-deliveries",
            format!("/api/v1/notification-deliveries?tenant={b}"),
            FORBIDDEN,
        ),
        // The caller itself: their own identity, nothing of B.
        read("GET /api/v1/me", "/api/v1/me".into(), &[StatusCode::OK]),
        // Writes naming a tenant, or for admins only: 403 whatever the id.
        write(
            "POST /api/v1/tenants",
            "POST",
            &|_| "/api/v1/tenants".into(),
            [None, Some("")],
            Some(json!({"name": "x"})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/locations",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/locations"),
            [Some(b), Some(a)],
            Some(json!({"name": "x"})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/registration-tokens",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/registration-tokens"),
            [Some(b), Some(a)],
            Some(json!({})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/rules",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/rules"),
            [Some(b), Some(a)],
            Some(rule.clone()),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/rules/defaults",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/rules/defaults"),
            [Some(b), Some(a)],
            None,
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/users",
            "POST",
            &|_| "/api/v1/users".into(),
            [None, Some("")],
            Some(json!({"name": "evil", "role": "operator", "tenant_id": b})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/users/{user_id}/keys",
            "POST",
            &|u| format!("/api/v1/users/{u}/keys"),
            [Some(&w.b_user), Some(&w.viewer_a_id)],
            None,
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/users/{user_id}/disable",
            "POST",
            &|u| format!("/api/v1/users/{u}/disable"),
            [Some(&w.b_user), Some(&w.viewer_a_id)],
            None,
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/users/{user_id}/enable",
            "POST",
            &|u| format!("/api/v1/users/{u}/enable"),
            [Some(&w.b_user), Some(&w.viewer_a_id)],
            None,
            FORBIDDEN,
        ),
        write(
            "DELETE /api/v1/users/{user_id}/keys/{key_id}",
            "DELETE",
            &|k| format!("/api/v1/users/{}/keys/{k}", w.b_user),
            [Some(&w.b_key_id), None],
            None,
            FORBIDDEN,
        ),
        write_in_body(
            "POST /api/v1/admin/ingest-keys",
            "/api/v1/admin/ingest-keys",
            &|t| json!({"name": "x", "tenant_id": t}),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/notification-channels",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/notification-channels"),
            [Some(b), Some(a)],
            Some(json!({"name": "x", "kind": "slack", "url": "https://hooks.example.com/y"})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/notification-routes",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/notification-routes"),
            [Some(b), Some(a)],
            Some(json!({"name": "x", "channel_ids": [w.b_channel]})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/tenants/{tenant_id}/silences",
            "POST",
            &|t| format!("/api/v1/tenants/{t}/silences"),
            [Some(b), Some(a)],
            Some(json!({"comment": "x", "match": {"agent_ids": ["x"]}, "duration_secs": 60})),
            FORBIDDEN,
        ),
        // Writes naming an object by id: B's is the same 404 as a made-up id.
        write(
            "DELETE /api/v1/notification-channels/{channel_id}",
            "DELETE",
            &|id| format!("/api/v1/notification-channels/{id}"),
            [Some(&w.b_channel), Some(&w.a_channel)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/notification-channels/{channel_id}/test",
            "POST",
            &|id| format!("/api/v1/notification-channels/{id}/test"),
            [Some(&w.b_channel), Some(&w.a_channel)],
            None,
            NOT_FOUND,
        ),
        write(
            "DELETE /api/v1/notification-routes/{route_id}",
            "DELETE",
            &|id| format!("/api/v1/notification-routes/{id}"),
            [Some(&w.b_route), Some(&w.a_route)],
            None,
            NOT_FOUND,
        ),
        write(
            "DELETE /api/v1/silences/{silence_id}",
            "DELETE",
            &|id| format!("/api/v1/silences/{id}"),
            [Some(&w.b_silence), Some(&w.a_silence)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/agents/{agent_id}/deactivate",
            "POST",
            &|id| format!("/api/v1/agents/{id}/deactivate"),
            [Some(b1), Some(a1)],
            None,
            NOT_FOUND,
        ),
        write(
            "PUT /api/v1/agents/{agent_id}/tags",
            "PUT",
            &|id| format!("/api/v1/agents/{id}/tags"),
            [Some(b1), Some(a1)],
            Some(tags),
            NOT_FOUND,
        ),
        write(
            "PUT /api/v1/agents/{agent_id}/config",
            "PUT",
            &|id| format!("/api/v1/agents/{id}/config"),
            [Some(b1), Some(a1)],
            Some(json!({"heartbeat_interval_secs": 10.0})),
            NOT_FOUND,
        ),
        write(
            "PUT /api/v1/tenants/{tenant_id}/config/tags/{tag}",
            "PUT",
            &|t| format!("/api/v1/tenants/{t}/config/tags/web"),
            [Some(b), Some(a)],
            Some(json!({"heartbeat_interval_secs": 10.0})),
            FORBIDDEN,
        ),
        write(
            "PUT /api/v1/tenants/{tenant_id}/config/locations/{location_id}",
            "PUT",
            &|t| format!("/api/v1/tenants/{t}/config/locations/somewhere"),
            [Some(b), Some(a)],
            Some(json!({"heartbeat_interval_secs": 10.0})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/agents/{agent_id}/commands",
            "POST",
            &|id| format!("/api/v1/agents/{id}/commands"),
            [Some(b1), Some(a1)],
            Some(command),
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/commands/{command_id}/approve",
            "POST",
            &|id| format!("/api/v1/commands/{id}/approve"),
            [Some(&w.b_command), Some(&w.a_command)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/commands/{command_id}/reject",
            "POST",
            &|id| format!("/api/v1/commands/{id}/reject"),
            [Some(&w.b_command), Some(&w.a_command)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/commands/{command_id}/cancel",
            "POST",
            &|id| format!("/api/v1/commands/{id}/cancel"),
            [Some(&w.b_command), Some(&w.a_command)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/command-groups",
            "POST",
            &|t| format!("/api/v1/command-groups?tenant={t}"),
            [Some(b), Some(a)],
            Some(json!({"target": {"tag": "web"}, "command_type": "collect_diagnostics"})),
            FORBIDDEN,
        ),
        write(
            "POST /api/v1/command-groups/{group_id}/approve",
            "POST",
            &|id| format!("/api/v1/command-groups/{id}/approve"),
            [Some(&w.b_group), Some(&w.a_group)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/command-groups/{group_id}/reject",
            "POST",
            &|id| format!("/api/v1/command-groups/{id}/reject"),
            [Some(&w.b_group), Some(&w.a_group)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/command-groups/{group_id}/cancel",
            "POST",
            &|id| format!("/api/v1/command-groups/{id}/cancel"),
            [Some(&w.b_group), Some(&w.a_group)],
            None,
            NOT_FOUND,
        ),
        write(
            "PUT /api/v1/rules/{rule_id}",
            "PUT",
            &|id| format!("/api/v1/rules/{id}"),
            [Some(&w.b_rule), Some(&w.a_rule)],
            Some(rule),
            NOT_FOUND,
        ),
        write(
            "DELETE /api/v1/admin/ingest-keys/{key_id}",
            "DELETE",
            &|id| format!("/api/v1/admin/ingest-keys/{id}"),
            [Some(&w.b_ingest_key), Some(&w.a_ingest_key)],
            None,
            NOT_FOUND,
        ),
        write(
            "DELETE /api/v1/rules/{rule_id}",
            "DELETE",
            &|id| format!("/api/v1/rules/{id}"),
            [Some(&w.b_rule), Some(&w.a_rule)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/rules/{rule_id}/disable",
            "POST",
            &|id| format!("/api/v1/rules/{id}/disable"),
            [Some(&w.b_rule), Some(&w.a_rule)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/rules/{rule_id}/enable",
            "POST",
            &|id| format!("/api/v1/rules/{id}/enable"),
            [Some(&w.b_rule), Some(&w.a_rule)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/alerts/{alert_id}/acknowledge",
            "POST",
            &|id| format!("/api/v1/alerts/{id}/acknowledge"),
            [Some(&w.b_alert), Some(&w.a_alert)],
            None,
            NOT_FOUND,
        ),
        write(
            "POST /api/v1/alerts/{alert_id}/resolve",
            "POST",
            &|id| format!("/api/v1/alerts/{id}/resolve"),
            [Some(&w.b_alert), Some(&w.a_alert)],
            None,
            NOT_FOUND,
        ),
    ]
}

/// Whether `v` names any of B's ids.
fn names_b(w: &World, v: &Value) -> bool {
    let text = v.to_string();
    [
        &w.b,
        &w.b1,
        &w.b_alert,
        &w.b_command,
        &w.b_rule,
        &w.b_user,
        &w.b_key_id,
        &w.b_ingest_key,
        &w.b_channel,
        &w.b_route,
        &w.b_silence,
    ]
    .iter()
    .any(|id| text.contains(id.as_str()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_objects_are_indistinguishable_from_missing_ones_on_every_write() {
    let w = world().await;
    let mut checked = 0;
    for case in cases(&w).iter().filter(|c| c.method != "GET") {
        let random = case
            .random
            .as_deref()
            .expect("a write names a made-up id too");
        let (s_b, v_b) = call(
            &w.app,
            case.method,
            &case.uri,
            case.body.clone(),
            Some(&w.op_a),
        )
        .await;
        let (s_r, v_r) = call(
            &w.app,
            case.method,
            random,
            case.random_body.clone().or_else(|| case.body.clone()),
            Some(&w.op_a),
        )
        .await;
        assert!(
            case.expect.contains(&s_b),
            "{} {}: A's operator got {s_b} {v_b}, expected {:?}",
            case.method,
            case.uri,
            case.expect
        );
        assert_eq!(
            (s_b, &v_b),
            (s_r, &v_r),
            "{}: B's object and a made-up id answer alike",
            case.operation
        );
        assert!(
            !names_b(&w, &v_b),
            "{}: the answer names B: {v_b}",
            case.operation
        );
        checked += 1;
    }
    assert!(checked >= 20, "every write is checked: {checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_is_refused_every_write_before_any_lookup() {
    let w = world().await;
    for case in cases(&w).iter().filter(|c| c.method != "GET") {
        let Some(own) = case.own.as_deref() else {
            continue;
        };
        let random = case.random.as_deref().expect("a made-up id");
        let mut bodies = Vec::new();
        for (uri, body) in [
            (random, case.random_body.as_ref()),
            (own, case.own_body.as_ref()),
            (case.uri.as_str(), None),
        ] {
            let (s, v) = call(
                &w.app,
                case.method,
                uri,
                body.or(case.body.as_ref()).cloned(),
                Some(&w.viewer_a),
            )
            .await;
            assert_eq!(
                s,
                StatusCode::FORBIDDEN,
                "{} {uri}: a viewer got {s} {v}",
                case.method
            );
            assert!(!names_b(&w, &v), "{uri}: {v}");
            bodies.push(v);
        }
        assert!(
            bodies.windows(2).all(|p| p[0] == p[1]),
            "{}: one answer whatever the id: {bodies:?}",
            case.operation
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_of_a_never_sees_or_changes_b() {
    let w = world().await;
    // B's rule and agent as the admin sees them before A's operator tries every route.
    let b_rule = || async {
        let uri = format!("/api/v1/tenants/{}/rules", w.b);
        let (s, v) = call(&w.app, "GET", &uri, None, Some(ADMIN)).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v["rules"]
            .as_array()
            .and_then(|rules| rules.iter().find(|r| r["rule_id"] == w.b_rule.as_str()))
            .cloned()
            .unwrap_or_else(|| panic!("B's rule {} is listed: {v}", w.b_rule))
    };
    let b_agent_uri = format!("/api/v1/agents/{}?tenant={}", w.b1, w.b);
    let b_rule_before = b_rule().await;
    let (s, b_agent_before) = call(&w.app, "GET", &b_agent_uri, None, Some(ADMIN)).await;
    assert_eq!(s, StatusCode::OK, "{b_agent_before}");
    assert_eq!(b_rule_before["enabled"], true, "{b_rule_before}");
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
    assert_eq!(b_rule().await, b_rule_before, "B's rule changed");
    let (_, b_agent_after) = call(&w.app, "GET", &b_agent_uri, None, Some(ADMIN)).await;
    assert_eq!(b_agent_after, b_agent_before, "B's agent changed");
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
            "/api/v1/events".to_owned(),
            "/api/v1/overview".to_owned(),
            "/api/v1/audit".to_owned(),
            "/api/v1/command-groups".to_owned(),
            format!("/api/v1/command-groups/{}", w.a_group),
            format!("/api/v1/command-groups/{}/commands", w.a_group),
            "/api/v1/admin/ingest-keys".to_owned(),
            "/api/v1/notification-deliveries".to_owned(),
            format!("/api/v1/notification-deliveries?channel_id={}", w.b_channel),
            format!("/api/v1/tenants/{}/notification-channels", w.a),
            format!("/api/v1/tenants/{}/notification-routes", w.a),
            format!("/api/v1/tenants/{}/silences", w.a),
            format!("/api/v1/agents?tenant={}", w.a),
            format!("/api/v1/agents/{}", w.a1),
            format!(
                "/api/v1/agents/{}/metrics?metric=cpu.percent&start=1h&interval=1m",
                w.a1
            ),
            format!("/api/v1/agents/{}/commands", w.a1),
            format!("/api/v1/agents/{}/software", w.a1),
            format!("/api/v1/agents/{}/events", w.a1),
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
    // A's own data is there: the agents and events lists hold A's agent only.
    for (uri, list, key) in [
        ("/api/v1/agents", "agents", &w.op_a),
        ("/api/v1/events", "events", &w.viewer_a),
    ] {
        let (_, v) = call(&w.app, "GET", uri, None, Some(key)).await;
        let ids: Vec<&str> = v[list]
            .as_array()
            .expect("a list")
            .iter()
            .filter_map(|a| a["agent_id"].as_str())
            .collect();
        assert_eq!(ids, vec![w.a1.as_str()], "{uri}: {v}");
    }
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
    // 1-minute buckets come from the raw samples.
    assert_eq!(v["resolution"], "raw");
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
        (
            "POST",
            "/api/v1/command-groups".to_owned(),
            Some(json!({"target": {"agents": [a1]}, "command_type": "collect_diagnostics"})),
        ),
        (
            "POST",
            format!("/api/v1/command-groups/{}/approve", w.a_group),
            None,
        ),
        (
            "POST",
            format!("/api/v1/command-groups/{}/cancel", w.a_group),
            None,
        ),
        (
            "POST",
            format!("/api/v1/commands/{}/cancel", w.a_command),
            None,
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
    // as the admin, none answers 404 with an empty body. (A command's stream lasts until
    // its result, and B's awaits approval: the admin asks for it in A's tenant, which the
    // route answers with its JSON 404.)
    for case in cases(&w) {
        let uri = if case.operation.ends_with("/stream") {
            format!("{}?tenant={}", case.uri, w.a)
        } else {
            case.uri.clone()
        };
        let (s, v) = call(&w.app, case.method, &uri, case.body.clone(), Some(ADMIN)).await;
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
