//! The rules and alert-handling routes over a real SQLite registry and the embedded log:
//! CRUD writes the right RuleEvents, bad fields are named, a new tenant gets the default
//! rules, acknowledge / resolve write alert events with the actor.

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::ProduceRecord;
use fleet_query_api::routes::rules::{default_rule_id, default_rules};
use fleet_schemas::{
    codec, fixtures, topics, AlertEvent, AlertEventKind, Record, RuleEvent, RuleEventKind,
    RuleScope,
};
use serde_json::{json, Value};

mod support;

use support::read;

async fn env() -> support::AdminEnv {
    support::admin_env(support::ADMIN, None).await
}

async fn call(app: &Router, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
    support::call(app, method, uri, body, Some(support::ADMIN)).await
}

async fn tenant(app: &Router) -> (String, Value) {
    let (s, t) = call(
        app,
        "POST",
        "/api/v1/tenants",
        Some(json!({"name": "Acme"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    (t["tenant_id"].as_str().expect("id").to_owned(), t)
}

#[tokio::test]
async fn a_new_tenant_gets_the_default_rules() {
    let env = env().await;
    let (log, app) = (env.log.clone(), env.app.clone());
    let (tenant_id, t) = tenant(&app).await;
    let rules: Vec<RuleEvent> = read(log.as_ref()).await;
    assert_eq!(rules.len(), default_rules().len());
    assert_eq!(
        t["default_rules"].as_array().map(Vec::len),
        Some(rules.len())
    );
    let by_metric = |m: &str| {
        rules
            .iter()
            .find(|r| r.rule.as_ref().is_some_and(|d| d.metric == m))
            .unwrap_or_else(|| panic!("no default rule on {m}"))
    };
    for ev in &rules {
        assert_eq!(ev.kind, RuleEventKind::Defined);
        assert_eq!(ev.tenant_id, tenant_id);
        assert_eq!(ev.actor.as_deref(), Some("admin"));
    }
    let cpu = by_metric("cpu.percent").rule.clone().expect("rule");
    assert_eq!(
        (cpu.warning, cpu.critical, cpu.for_secs),
        (Some(80.0), Some(95.0), 300)
    );
    let mem = by_metric("memory.percent").rule.clone().expect("rule");
    assert_eq!((mem.warning, mem.critical), (Some(85.0), Some(95.0)));
    let disk = by_metric("disk.percent").rule.clone().expect("rule");
    assert_eq!(
        (disk.warning, disk.critical, disk.subject),
        (Some(75.0), Some(90.0), None)
    );
    let svc = by_metric("service.up").rule.clone().expect("rule");
    assert_eq!((svc.operator.as_str(), svc.critical), ("==", Some(0.0)));
    let hb = by_metric("heartbeat.absent").rule.clone().expect("rule");
    assert_eq!((hb.operator.as_str(), hb.critical), (">=", Some(3.0)));
    assert!(rules
        .iter()
        .any(|r| r.rule.as_ref().is_some_and(|d| d.metric == "load.per_core")));
    assert_eq!(
        by_metric("cpu.percent").rule_id,
        default_rule_id(&tenant_id, "cpu"),
        "stable ids"
    );
    // Listed; writing them again changes nothing visible.
    let (s, _) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{tenant_id}/rules/defaults"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    env.project().await;
    let (s, list) = call(
        &app,
        "GET",
        &format!("/api/v1/tenants/{tenant_id}/rules"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        list["rules"].as_array().map(Vec::len),
        Some(default_rules().len())
    );
}

#[tokio::test]
async fn crud_writes_rule_events_and_bad_fields_are_named() {
    let env = env().await;
    let (log, app) = (env.log.clone(), env.app.clone());
    let (tenant_id, _) = tenant(&app).await;
    let before = read::<RuleEvent>(log.as_ref()).await.len();
    let uri = format!("/api/v1/tenants/{tenant_id}/rules");
    let body = json!({
        "name": "Queue deep", "metric": "custom.queue_depth", "operator": ">",
        "warning": 100.0, "critical": 500.0, "recovery": 50.0, "for_secs": 120,
        "renotify_secs": 3600, "scope": "agent", "scope_value": "agent-7"
    });
    let (s, created) = call(&app, "POST", &uri, Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let rule_id = created["rule_id"].as_str().expect("id").to_owned();
    assert_eq!(created["enabled"], true);
    let events: Vec<RuleEvent> = read(log.as_ref()).await;
    let ev = events.last().expect("written");
    assert_eq!(events.len(), before + 1);
    assert_eq!(
        (ev.kind, ev.rule_id.as_str()),
        (RuleEventKind::Defined, rule_id.as_str())
    );
    let d = ev.rule.clone().expect("definition");
    assert_eq!(d.scope, RuleScope::Agent);
    assert_eq!(d.scope_value.as_deref(), Some("agent-7"));
    assert_eq!(
        (d.warning, d.critical, d.recovery),
        (Some(100.0), Some(500.0), Some(50.0))
    );
    assert_eq!((d.for_secs, d.renotify_secs), (120, 3600));

    // Bad fields: 400 naming each; fields each valid that contradict each other: 422.
    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const CLASH: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
    for (patch, field, status) in [
        (json!({"metric": "cpu.nope"}), "metric", BAD),
        (json!({"operator": "=>"}), "operator", BAD),
        (json!({"critical": 50.0}), "critical", CLASH),
        (json!({"recovery": 200.0}), "recovery", CLASH),
        (json!({"scope": "planet"}), "scope", BAD),
        (
            json!({"scope": "tag", "scope_value": null}),
            "scope_value",
            CLASH,
        ),
        (json!({"for_secs": -5}), "for_secs", BAD),
        (json!({"for_secs": 1.5}), "for_secs", BAD),
        (json!({"renotify_secs": 99_999_999}), "renotify_secs", BAD),
        (json!({"name": " "}), "name", BAD),
        (json!({"warning": "high"}), "warning", BAD),
        (json!({"subject": "/var"}), "subject", CLASH),
        (json!({"colour": "red"}), "colour", BAD),
    ] {
        let mut b = body.clone();
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        let (s, e) = call(&app, "POST", &uri, Some(b)).await;
        assert_eq!(s, status, "{field}: {e}");
        let named = e["error"]["field"].as_str().unwrap_or_default();
        assert!(named.contains(field), "expected field {field}, got {e}");
    }
    let (s, _) = call(
        &app,
        "POST",
        "/api/v1/tenants/nope/rules",
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Update, disable, enable, delete.
    let mut changed = body.clone();
    changed["critical"] = json!(900.0);
    env.project().await;
    let (s, u) = call(
        &app,
        "PUT",
        &format!("/api/v1/rules/{rule_id}"),
        Some(changed),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{u}");
    assert_eq!(u["critical"], 900.0);
    env.project().await;
    let (s, _) = call(
        &app,
        "POST",
        &format!("/api/v1/rules/{rule_id}/disable"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    env.project().await;
    let (s, e) = call(
        &app,
        "POST",
        &format!("/api/v1/rules/{rule_id}/enable"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(e["enabled"], true);
    assert_eq!(e["critical"], 900.0, "enable keeps the definition");
    env.project().await;
    let (s, _) = call(&app, "DELETE", &format!("/api/v1/rules/{rule_id}"), None).await;
    assert_eq!(s, StatusCode::OK);
    let events: Vec<RuleEvent> = read(log.as_ref()).await;
    let mine: Vec<_> = events.iter().filter(|e| e.rule_id == rule_id).collect();
    let steps: Vec<_> = mine
        .iter()
        .map(|e| (e.kind, e.rule.as_ref().map(|d| (d.enabled, d.critical))))
        .collect();
    assert_eq!(
        steps,
        vec![
            (RuleEventKind::Defined, Some((true, Some(500.0)))),
            (RuleEventKind::Defined, Some((true, Some(900.0)))),
            (RuleEventKind::Defined, Some((false, Some(900.0)))),
            (RuleEventKind::Defined, Some((true, Some(900.0)))),
            (RuleEventKind::Deleted, None),
        ]
    );
    assert!(mine.iter().all(|e| e.tenant_id == tenant_id));
    // Gone: 404 naming the rule, and not listed.
    env.project().await;
    let (s, e) = call(
        &app,
        "POST",
        &format!("/api/v1/rules/{rule_id}/enable"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["field"], "rule_id");
    env.project().await;
    let (_, list) = call(&app, "GET", &uri, None).await;
    assert!(list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .all(|r| r["rule_id"] != rule_id.as_str()));
}

#[tokio::test]
async fn rules_on_the_standard_protocols_series_take_label_matchers() {
    let env = env().await;
    let (log, app) = (env.log.clone(), env.app.clone());
    let (tenant_id, _) = tenant(&app).await;
    let uri = format!("/api/v1/tenants/{tenant_id}/rules");
    let body = json!({
        "name": "Node load", "metric": "node_load1", "operator": ">", "critical": 8.0,
        "labels": [
            {"name": "job", "op": "=", "value": "node"},
            {"name": "instance", "op": "=~", "value": "web-.*"}
        ]
    });
    let (s, created) = call(&app, "POST", &uri, Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["labels"], body["labels"]);
    let events: Vec<RuleEvent> = read(log.as_ref()).await;
    let d = events
        .last()
        .and_then(|e| e.rule.clone())
        .expect("definition");
    assert_eq!(d.metric, "node_load1");
    let labels = d.labels.expect("labels");
    assert_eq!(
        (
            labels[1].name.as_str(),
            labels[1].op.as_str(),
            labels[1].value.as_str()
        ),
        ("instance", "=~", "web-.*")
    );
    env.project().await;
    let (_, list) = call(&app, "GET", &uri, None).await;
    let listed: Vec<&Value> = list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["metric"] == "node_load1")
        .collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["labels"], body["labels"]);

    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const CLASH: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
    for (patch, field, status) in [
        (json!({"metric": "node load"}), "metric", BAD),
        (
            json!({"labels": [{"name": "job", "op": "=~", "value": "("}]}),
            "labels",
            CLASH,
        ),
        (
            json!({"labels": [{"name": "job", "op": "~", "value": "x"}]}),
            "labels",
            BAD,
        ),
        (
            json!({"labels": [{"name": "__name__", "op": "=", "value": "x"}]}),
            "labels",
            CLASH,
        ),
        (json!({"metric": "cpu.percent"}), "metric", CLASH),
        (json!({"labels": null}), "metric", CLASH),
        (json!({"labels": [{"name": "job"}]}), "labels", BAD),
        (
            json!({"scope": "agent", "scope_value": "a1"}),
            "scope",
            CLASH,
        ),
    ] {
        let mut b = body.clone();
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        let (s, e) = call(&app, "POST", &uri, Some(b)).await;
        assert_eq!(s, status, "{field}: {e}");
        let named = e["error"]["field"].as_str().unwrap_or_default();
        assert!(named.contains(field), "expected field {field}, got {e}");
    }
}

#[tokio::test]
async fn acknowledge_and_resolve_write_alert_events_with_the_actor() {
    let env = env().await;
    let (log, app) = (env.log.clone(), env.app.clone());
    let raised = fixtures::alert_raised("t1", "a1", 1_796_000_000_000_000);
    log.produce(
        topics::ALERTS,
        vec![ProduceRecord::keyed(
            raised.key().as_bytes().to_vec(),
            codec::Wire::plain().encode(&raised).expect("encode"),
        )],
    )
    .await
    .expect("produce");
    env.project().await;
    let id = &raised.alert_id;
    let (s, e) = call(&app, "POST", "/api/v1/alerts/nope/acknowledge", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(e["error"]["field"], "alert_id");
    let (s, a) = call(
        &app,
        "POST",
        &format!("/api/v1/alerts/{id}/acknowledge"),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "acknowledged");
    env.project().await;
    let (s, a) = call(
        &app,
        "POST",
        &format!("/api/v1/alerts/{id}/acknowledge"),
        None,
    )
    .await;
    assert_eq!(
        (s, &a["changed"]),
        (StatusCode::OK, &json!(false)),
        "idempotent"
    );
    env.project().await;
    let (s, _) = call(&app, "POST", &format!("/api/v1/alerts/{id}/resolve"), None).await;
    assert_eq!(s, StatusCode::OK);
    env.project().await;
    let (s, e) = call(&app, "POST", &format!("/api/v1/alerts/{id}/resolve"), None).await;
    assert_eq!(s, StatusCode::CONFLICT, "{e}");
    let events: Vec<AlertEvent> = read(log.as_ref()).await;
    let kinds: Vec<_> = events.iter().map(|e| (e.kind, e.actor.clone())).collect();
    assert_eq!(
        kinds,
        vec![
            (AlertEventKind::Raised, None),
            (AlertEventKind::Acknowledged, Some("admin".to_owned())),
            (AlertEventKind::Resolved, Some("admin".to_owned())),
        ]
    );
    for ev in &events[1..] {
        assert_eq!(ev.alert_id, raised.alert_id);
        assert_eq!((ev.tenant_id.as_str(), ev.agent_id.as_str()), ("t1", "a1"));
        assert_eq!(
            (ev.rule_id.as_str(), ev.value, ev.threshold),
            ("rule-cpu", 97.0, 90.0)
        );
    }
}

/// Rule changes and alert handling answer from the read model, never from the topics: a
/// rule or an alert that is on its topic but not yet projected is not found; once the read
/// model has it, the same request succeeds.
#[tokio::test]
async fn rules_and_alerts_are_found_in_the_read_model_not_on_the_topics() {
    let env = env().await;
    let app = env.app.clone();
    let (tenant_id, _) = tenant(&app).await;
    let body = json!({"name": "CPU", "metric": "cpu.percent", "warning": 80.0});
    let (s, created) = call(
        &app,
        "POST",
        &format!("/api/v1/tenants/{tenant_id}/rules"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let update = format!("/api/v1/rules/{}", created["rule_id"].as_str().expect("id"));
    let raised = fixtures::alert_raised(&tenant_id, "a1", 1_796_000_000_000_000);
    env.log
        .produce(
            topics::ALERTS,
            vec![ProduceRecord::keyed(
                raised.key().as_bytes().to_vec(),
                codec::Wire::plain().encode(&raised).expect("encode"),
            )],
        )
        .await
        .expect("produce");
    let ack = format!("/api/v1/alerts/{}/acknowledge", raised.alert_id);

    // On the topics only.
    let (s, e) = call(&app, "PUT", &update, Some(body.clone())).await;
    assert_eq!(
        (s, &e["error"]["field"]),
        (StatusCode::NOT_FOUND, &json!("rule_id"))
    );
    let (s, e) = call(&app, "POST", &ack, None).await;
    assert_eq!(
        (s, &e["error"]["field"]),
        (StatusCode::NOT_FOUND, &json!("alert_id"))
    );

    // Projected.
    env.project().await;
    let (s, u) = call(&app, "PUT", &update, Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{u}");
    let (s, a) = call(&app, "POST", &ack, None).await;
    assert_eq!(
        (s, &a["status"]),
        (StatusCode::OK, &json!("acknowledged")),
        "{a}"
    );
}

#[tokio::test]
async fn event_rules_are_written_shown_audited_and_bad_fields_are_named() {
    let env = env().await;
    let (log, app) = (env.log.clone(), env.app.clone());
    let (tenant_id, _) = tenant(&app).await;
    let uri = format!("/api/v1/tenants/{tenant_id}/rules");
    let body = json!({
        "name": "nginx failed",
        "event": {
            "kind": "service_failed",
            "attributes": {"service": "nginx"},
            "min_severity": "warning",
            "subject_attribute": "service",
            "recovery_kinds": ["service_recovered"],
            "resolve_after_secs": 3600,
            "alert_severity": "critical"
        }
    });
    let (s, created) = call(&app, "POST", &uri, Some(body.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created["metric"], "event.service_failed");
    assert_eq!(created["critical"], 1.0);
    assert_eq!(created["event"]["kind"], "service_failed");
    assert_eq!(created["event"]["attributes"], json!({"service": "nginx"}));
    assert_eq!(
        created["event"]["recovery_kinds"],
        json!(["service_recovered"])
    );
    assert_eq!(created["event"]["resolve_after_secs"], 3600);
    let rule_id = created["rule_id"].as_str().expect("id").to_owned();
    let events: Vec<RuleEvent> = read(log.as_ref()).await;
    let d = events
        .last()
        .and_then(|e| e.rule.clone())
        .expect("definition");
    let mut want = fixtures::event_rule_definition();
    want.name = "nginx failed".into();
    assert_eq!(d, want);

    // Listed from the read model with its event part.
    env.project().await;
    let (_, list) = call(&app, "GET", &uri, None).await;
    let listed: Vec<&Value> = list["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| r["rule_id"] == rule_id.as_str())
        .collect();
    assert_eq!(listed.len(), 1, "{list}");
    assert_eq!(listed[0]["event"], created["event"]);

    // Updated to `agent_started` after an unexpected stop, warning, no timed resolve.
    let update = json!({
        "name": "Unexpected restart",
        "event": {"kind": "agent_started", "attributes": {"previous_stop": "unclean"}}
    });
    let (s, updated) = call(
        &app,
        "PUT",
        &format!("/api/v1/rules/{rule_id}"),
        Some(update),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["metric"], "event.agent_started");
    assert_eq!(updated["warning"], 1.0);
    assert_eq!(updated["event"]["recovery_kinds"], json!([]));
    assert!(updated["event"]["resolve_after_secs"].is_null());

    // Audited as metric rules are.
    let (_, audit) = call(
        &app,
        "GET",
        &format!("/api/v1/audit?tenant={tenant_id}"),
        None,
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|x| x["target"] == rule_id.as_str())
        .filter_map(|x| x["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"rule.create") && actions.contains(&"rule.update"),
        "{audit}"
    );

    const BAD: StatusCode = StatusCode::BAD_REQUEST;
    const CLASH: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;
    let long = "x".repeat(257);
    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("a{i}"), json!("x"))).collect();
    for (patch, field, status) in [
        (json!({"kind": "service_exploded"}), "event.kind", BAD),
        (json!({"kind": null}), "event", BAD),
        (json!({"attributes": many}), "event.attributes", BAD),
        (json!({"attributes": {"a b": "x"}}), "event.attributes", BAD),
        (
            json!({"attributes": {"service": long}}),
            "event.attributes",
            BAD,
        ),
        (
            json!({"attributes": {"service": ""}}),
            "event.attributes",
            BAD,
        ),
        (json!({"min_severity": "loud"}), "event.min_severity", BAD),
        (
            json!({"subject_attribute": ""}),
            "event.subject_attribute",
            BAD,
        ),
        (
            json!({"recovery_kinds": ["nope"]}),
            "event.recovery_kinds",
            BAD,
        ),
        (
            json!({"recovery_kinds": ["service_failed"]}),
            "event.recovery_kinds",
            CLASH,
        ),
        (
            json!({"resolve_after_secs": 0}),
            "event.resolve_after_secs",
            BAD,
        ),
        (
            json!({"resolve_after_secs": 604801}),
            "event.resolve_after_secs",
            BAD,
        ),
        (
            json!({"resolve_after_secs": 1.5}),
            "event.resolve_after_secs",
            BAD,
        ),
        (
            json!({"alert_severity": "info"}),
            "event.alert_severity",
            BAD,
        ),
        (json!({"nonsense": 1}), "event", BAD),
    ] {
        let mut b = body.clone();
        for (k, v) in patch.as_object().expect("object") {
            b["event"][k] = v.clone();
        }
        let (s, e) = call(&app, "POST", &uri, Some(b)).await;
        assert_eq!(s, status, "{field}: {e}");
        let named = e["error"]["field"].as_str().unwrap_or_default();
        assert!(named.starts_with(field), "expected field {field}, got {e}");
    }
    // Fields of rules on samples do not fit an event rule.
    for (patch, field) in [
        (json!({"critical": 3.0}), "critical"),
        (json!({"metric": "cpu.percent"}), "metric"),
        (json!({"operator": ">"}), "operator"),
        (json!({"for_secs": 60}), "for_secs"),
        (json!({"subject": "nginx"}), "subject"),
        (json!({"recovery": 1.0}), "recovery"),
    ] {
        let mut b = body.clone();
        for (k, v) in patch.as_object().expect("object") {
            b[k] = v.clone();
        }
        let (s, e) = call(&app, "POST", &uri, Some(b)).await;
        assert_eq!(s, CLASH, "{field}: {e}");
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    // An event rule's metric without the event part, and neither metric nor event.
    let (s, e) = call(
        &app,
        "POST",
        &uri,
        Some(json!({"name": "x", "metric": "event.service_failed", "critical": 1})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (CLASH, Some("event")),
        "{e}"
    );
    let (s, e) = call(
        &app,
        "POST",
        &uri,
        Some(json!({"name": "x", "critical": 1})),
    )
    .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (CLASH, Some("metric")),
        "{e}"
    );

    // The OpenAPI document states what a schema can: the known kinds, the attributes'
    // bounds.
    let (_, doc) = call(&app, "GET", "/api/openapi.json", None).await;
    let schema = &doc["components"]["schemas"]["EventRuleBody"];
    let props = &schema["properties"];
    assert!(
        props["kind"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("service_failed")),
        "{schema}"
    );
    assert_eq!(props["attributes"]["maxProperties"], 16, "{schema}");
    assert!(
        props["attributes"]["propertyNames"]["pattern"].is_string(),
        "{schema}"
    );
    assert!(
        props["recovery_kinds"]["items"]["pattern"]
            .as_str()
            .is_some_and(|p| p.contains("service_recovered")),
        "{schema}"
    );
    assert_eq!(schema["required"], json!(["kind"]), "{schema}");
}
