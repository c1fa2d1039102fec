//! Holes found by the security audit (issue 11), each shown closed through the real routes
//! over the real stores: a reused `Idempotency-Key` with another body, out-of-range time
//! parameters, API keys revoked one by one and on every API instance within the cache
//! TTL, bidi and invisible characters in names, and the audit of every change.

mod support;

use std::time::Duration;

use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_read_model::Change;
use fleet_schemas::{CommandEvent, CommandEventKind, RuleEvent};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use support::world::{user, world, World};
use support::{call, read, ADMIN};
use tower::ServiceExt as _;

/// A request with an `Idempotency-Key`.
async fn call_keyed(
    app: &Router,
    uri: &str,
    body: Value,
    api_key: &str,
    idempotency_key: &str,
) -> (StatusCode, Value) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, format!("Bearer {api_key}"))
        .header("idempotency-key", idempotency_key)
        .body(axum::body::Body::from(body.to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Projects every command event on the log into the read model (what the projection
/// does), so the query routes show what was written.
async fn project_commands(w: &World) {
    let changes: Vec<Change> = read::<CommandEvent>(w.log.as_ref())
        .await
        .into_iter()
        .map(|e| Change::Command(Box::new(e)))
        .collect();
    w.read_model
        .apply("security-test", &changes, &[])
        .await
        .expect("apply");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_idempotency_key_with_another_body_is_409_and_writes_nothing() {
    let w = world().await;
    let uri = format!("/api/v1/agents/{}/commands", w.a1);
    let script = json!({"command_type": "run_script", "args": {"script": "cleanup"}});
    let (s, first) = call_keyed(&w.app, &uri, script.clone(), &w.op_a, "key-1").await;
    assert_eq!(s, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "awaiting_approval", "{first}");
    let id = first["command_id"].as_str().expect("id").to_owned();

    // The same request again: the same answer (a retry).
    let (s, again) = call_keyed(&w.app, &uri, script.clone(), &w.op_a, "key-1").await;
    assert_eq!((s, &again), (StatusCode::ACCEPTED, &first));

    // The attack: the same key, a harmless-looking type without approval. And variants:
    // other arguments, another timeout, another requester.
    let requested = |log: Vec<CommandEvent>| {
        log.into_iter()
            .filter(|e| e.command_id == id && e.kind == CommandEventKind::Requested)
            .collect::<Vec<_>>()
    };
    let before = requested(read::<CommandEvent>(w.log.as_ref()).await);
    for (body, by) in [
        (json!({"command_type": "collect_diagnostics"}), &w.op_a),
        (
            json!({"command_type": "run_script", "args": {"script": "other"}}),
            &w.op_a,
        ),
        (
            json!({"command_type": "run_script", "args": {"script": "cleanup"}, "timeout_secs": 5}),
            &w.op_a,
        ),
        (script.clone(), &ADMIN.to_owned()),
    ] {
        let (s, v) = call_keyed(&w.app, &uri, body.clone(), by, "key-1").await;
        assert_eq!(s, StatusCode::CONFLICT, "{body}: {v}");
        assert_eq!(v["error"]["code"], "idempotency_key_reused", "{v}");
        assert_eq!(v["error"]["field"], "Idempotency-Key", "{v}");
    }
    let after = requested(read::<CommandEvent>(w.log.as_ref()).await);
    assert_eq!(after, before, "a refused request writes nothing");
    assert!(after
        .iter()
        .all(|e| e.command_type == "run_script" && e.requires_approval));

    // What the API shows is the first request, awaiting approval.
    project_commands(&w).await;
    let (s, c) = call(
        &w.app,
        "GET",
        &format!("/api/v1/commands/{id}"),
        None,
        Some(&w.op_a),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["command_type"], "run_script", "{c}");
    assert_eq!(c["status"], "awaiting_approval", "{c}");
    assert_eq!(c["requires_approval"], true, "{c}");

    // The same key on another agent is another command.
    let (s, v) = call_keyed(
        &w.app,
        &format!("/api/v1/agents/{}/commands", w.b1),
        json!({"command_type": "collect_diagnostics"}),
        ADMIN,
        "key-1",
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_ne!(v["command_id"], first["command_id"]);

    // Rules: the same key with another definition is refused too, and nothing is written.
    let rules = format!("/api/v1/tenants/{}/rules", w.a);
    let rule = json!({"name": "disk", "metric": "disk.percent", "warning": 80.0});
    let (s, r1) = call_keyed(&w.app, &rules, rule.clone(), &w.op_a, "rule-key").await;
    assert_eq!(s, StatusCode::CREATED, "{r1}");
    let (s, r2) = call_keyed(&w.app, &rules, rule, &w.op_a, "rule-key").await;
    assert_eq!((s, &r2["rule_id"]), (StatusCode::CREATED, &r1["rule_id"]));
    let written = read::<RuleEvent>(w.log.as_ref()).await.len();
    let other = json!({"name": "disk", "metric": "disk.percent", "warning": 99.0});
    let (s, v) = call_keyed(&w.app, &rules, other, &w.op_a, "rule-key").await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(read::<RuleEvent>(w.log.as_ref()).await.len(), written);

    // A key that is no visible text is refused, naming the header.
    let (s, v) = call_keyed(&w.app, &uri, script, &w.op_a, &"k".repeat(201)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "Idempotency-Key", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_parameters_out_of_range_are_400_naming_them() {
    let w = world().await;
    let base = format!("/api/v1/agents/{}/metrics?metric=cpu.percent", w.a1);
    for (query, field) in [
        ("&start=300000y", "start"),
        ("&start=-300000y", "start"),
        ("&end=300000y", "end"),
        ("&start=200000y", "start"),
        ("&start=99999999999999999999s", "start"),
        ("&start=", "start"),
        ("&interval=0s", "interval"),
    ] {
        let (s, v) = call(&w.app, "GET", &format!("{base}{query}"), None, Some(ADMIN)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {v}");
        assert_eq!(v["error"]["field"], field, "{query}: {v}");
    }
    // Each valid, together not: 422.
    let (s, v) = call(
        &w.app,
        "GET",
        &format!("{base}&end=0001-01-01T00:00:00Z&start=2h"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "end", "{v}");
    // Far but in range, and the longest interval: answered.
    for query in ["&start=100y&interval=30d", "&start=99999y&interval=99999y"] {
        let (s, v) = call(&w.app, "GET", &format!("{base}{query}"), None, Some(ADMIN)).await;
        assert_eq!(s, StatusCode::OK, "{query}: {v}");
    }
    // Token lifetimes are bounded the same way.
    let (s, v) = call(
        &w.app,
        "POST",
        &format!("/api/v1/tenants/{}/registration-tokens", w.a),
        Some(json!({"expires_in": "300000y"})),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "expires_in", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_revoked_one_by_one_on_every_instance_within_the_cache_ttl() {
    let w = world().await;
    // Two API instances over one SQL store, each with its own key cache.
    let ttl = Duration::from_millis(300);
    let (one, two) = (w.instance(ttl).await, w.instance(ttl).await);
    let (bob_id, bob) = user(&one, "bob", "operator", &w.a).await;
    let (s, k) = call(
        &one,
        "POST",
        &format!("/api/v1/users/{bob_id}/keys"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{k}");
    let bob2 = k["key"].as_str().expect("key").to_owned();
    let me = |app: &Router, key: &str| {
        let (app, key) = (app.clone(), key.to_owned());
        async move { call(&app, "GET", "/api/v1/me", None, Some(&key)).await.0 }
    };
    // Both keys work on both instances (and are now cached there).
    for app in [&one, &two] {
        for key in [&bob, &bob2] {
            assert_eq!(me(app, key).await, StatusCode::OK);
        }
    }

    // The listing shows both keys, without secrets; bob may list his own, not others'.
    let keys_uri = format!("/api/v1/users/{bob_id}/keys");
    let (s, list) = call(&one, "GET", &keys_uri, None, Some(&bob)).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let keys = list["keys"].as_array().expect("keys");
    assert_eq!(keys.len(), 2, "{list}");
    assert!(!list.to_string().contains(&bob) && !list.to_string().contains(&bob2));
    let first_key = keys[1]["key_id"].as_str().expect("key id").to_owned();
    let (s, _) = call(
        &one,
        "GET",
        &format!("/api/v1/users/{}/keys", w.op_a_id),
        None,
        Some(&bob),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Revoke bob's first key on instance one: refused there at once, and on instance two
    // once its cached entry is older than the TTL. The second key still works.
    let (s, v) = call(
        &one,
        "DELETE",
        &format!("{keys_uri}/{first_key}"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(me(&one, &bob).await, StatusCode::UNAUTHORIZED);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(me(&two, &bob).await, StatusCode::UNAUTHORIZED);
    let (_, v) = call(&two, "GET", "/api/v1/me", None, Some(&bob)).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{v}"
    );
    for app in [&one, &two] {
        assert_eq!(me(app, &bob2).await, StatusCode::OK);
    }
    let (_, list) = call(&two, "GET", &keys_uri, None, Some(&bob2)).await;
    assert!(
        list["keys"][1]["revoked_at"].is_i64(),
        "the listing says so: {list}"
    );
    // Unknown key ids, and another user's key id, are 404.
    let (s, _) = call(
        &one,
        "DELETE",
        &format!("{keys_uri}/nope"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Disabled on instance one: refused on two within the TTL; enabled again: accepted.
    let (s, _) = call(
        &one,
        "POST",
        &format!("/api/v1/users/{bob_id}/disable"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(me(&two, &bob2).await, StatusCode::UNAUTHORIZED);
    let (s, v) = call(
        &one,
        "POST",
        &format!("/api/v1/users/{bob_id}/enable"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["disabled"], false, "{v}");
    for app in [&one, &two] {
        assert_eq!(me(app, &bob2).await, StatusCode::OK, "enabled again");
        assert_eq!(
            me(app, &bob).await,
            StatusCode::UNAUTHORIZED,
            "still revoked"
        );
    }

    // A user revokes its own key (a leak it noticed); it cannot mint a new one.
    let own = list["keys"][0]["key_id"].as_str().expect("id").to_owned();
    let (s, _) = call(
        &two,
        "DELETE",
        &format!("{keys_uri}/{own}"),
        None,
        Some(&bob2),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me(&two, &bob2).await, StatusCode::UNAUTHORIZED);

    // At most 10 unrevoked keys per user, even for an admin.
    let (carol_id, _) = user(&one, "carol", "viewer", &w.a).await;
    let mut last = StatusCode::CREATED;
    for _ in 0..10 {
        last = call(
            &one,
            "POST",
            &format!("/api/v1/users/{carol_id}/keys"),
            None,
            Some(ADMIN),
        )
        .await
        .0;
    }
    assert_eq!(last, StatusCode::CONFLICT, "the 11th key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_and_invisible_characters_are_refused_in_every_name() {
    let w = world().await;
    let (a, a1) = (&w.a, &w.a1);
    for bad in [
        "acme\u{202E}fdp.exe",
        "web\u{200B}01",
        "\u{FEFF}x",
        "a\u{2066}b",
    ] {
        let cases = [
            (
                "POST",
                "/api/v1/tenants".to_owned(),
                json!({"name": bad}),
                "name",
            ),
            (
                "POST",
                format!("/api/v1/tenants/{a}/locations"),
                json!({"name": bad}),
                "name",
            ),
            (
                "POST",
                "/api/v1/users".to_owned(),
                json!({"name": bad, "role": "viewer", "tenant_id": a}),
                "name",
            ),
            (
                "POST",
                format!("/api/v1/tenants/{a}/registration-tokens"),
                json!({"device_name": bad}),
                "device_name",
            ),
            (
                "POST",
                format!("/api/v1/tenants/{a}/rules"),
                json!({"name": bad, "metric": "cpu.percent", "warning": 1.0}),
                "name",
            ),
            (
                "POST",
                format!("/api/v1/tenants/{a}/rules"),
                json!({"name": "x", "metric": "cpu.percent", "warning": 1.0, "scope": "tag", "scope_value": bad}),
                "scope_value",
            ),
            (
                "POST",
                format!("/api/v1/agents/{a1}/commands"),
                json!({"command_type": "run_script", "args": {"script": bad}}),
                "args.script",
            ),
            (
                "POST",
                format!("/api/v1/agents/{a1}/commands"),
                json!({"command_type": "restart_service", "args": {"service": bad}}),
                "args.service",
            ),
            (
                "POST",
                format!("/api/v1/agents/{a1}/deactivate"),
                json!({"reason": bad}),
                "reason",
            ),
        ];
        for (method, uri, body, field) in cases {
            let (s, v) = call(&w.app, method, &uri, Some(body.clone()), Some(ADMIN)).await;
            assert_eq!(s, StatusCode::BAD_REQUEST, "{uri} {body}: {v}");
            assert_eq!(v["error"]["field"], field, "{uri} {body}: {v}");
        }
    }
    // Tags allow only [A-Za-z0-9_.:-] anyway.
    let (s, v) = call(
        &w.app,
        "PUT",
        &format!("/api/v1/agents/{a1}/tags"),
        Some(json!({"tags": ["web\u{200B}"]})),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    // Ordinary non-ASCII names pass.
    let (s, v) = call(
        &w.app,
        "POST",
        &format!("/api/v1/tenants/{a}/locations"),
        Some(json!({"name": "Zürich – 東京"})),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locations_and_default_rules_are_audited() {
    let w = world().await;
    let (s, loc) = call(
        &w.app,
        "POST",
        &format!("/api/v1/tenants/{}/locations", w.a),
        Some(json!({"name": "HQ"})),
        Some(&w.op_a),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{loc}");
    let (s, v) = call(
        &w.app,
        "POST",
        &format!("/api/v1/tenants/{}/rules/defaults", w.a),
        None,
        Some(&w.op_a),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, audit) = call(
        &w.app,
        "GET",
        "/api/v1/audit?actor=op-a",
        None,
        Some(&w.op_a),
    )
    .await;
    let entries: Vec<(&str, &str)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap_or_default(),
                e["target"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        vec![
            ("rule.defaults", w.a.as_str()),
            ("location.create", loc["location_id"].as_str().expect("id")),
        ],
        "{audit}"
    );
}

/// One GET from `peer` with an optional key; the status.
async fn get_from(app: &Router, peer: &str, uri: &str, key: Option<&str>) -> StatusCode {
    let mut req = Request::get(uri);
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let mut req = req.body(axum::body::Body::empty()).expect("request");
    let addr: std::net::SocketAddr = peer.parse().expect("peer");
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    app.clone().oneshot(req).await.expect("response").status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_keys_are_limited_per_address_and_requests_per_user() {
    // Issue 11: the query API had no limit on failed keys (each made-up key cost a
    // registry lookup) and none per user.
    let w = world().await;
    let state = |limits: &fleet_query_api::AuthLimits| {
        fleet_query_api::app(
            fleet_query_api::AppState::new(
                w.registry.clone(),
                w.read_model.clone(),
                w.timeseries.clone(),
                w.log.clone(),
                fleet_schemas::Wire::plain(),
            )
            .with_admin_key(ADMIN)
            .with_auth_limits(limits),
        )
    };
    let app = state(&fleet_query_api::AuthLimits {
        failures_per_minute: 5,
        failure_burst: 5,
        requests_per_second: 0,
        request_burst: 0,
        trusted_proxies: Vec::new(),
    });
    let (attacker, neighbour) = ("198.51.100.7:4000", "203.0.113.9:4000");
    // A viewer's key is resolved (and cached) once before the attack.
    assert_eq!(
        get_from(&app, attacker, "/api/v1/me", Some(&w.viewer_a)).await,
        StatusCode::OK
    );
    for i in 0..6 {
        let made_up = format!("fsu_made_up_{i}");
        assert_eq!(
            get_from(&app, attacker, "/api/v1/me", Some(&made_up)).await,
            StatusCode::UNAUTHORIZED,
            "attempt {i}"
        );
    }
    // Past the budget: made-up keys and keys not yet resolved get 429 from that address,
    // keys known without the registry still work, other addresses are not affected.
    assert_eq!(
        get_from(&app, attacker, "/api/v1/me", Some("fsu_made_up_x")).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get_from(&app, attacker, "/api/v1/me", Some(&w.op_a)).await,
        StatusCode::TOO_MANY_REQUESTS,
        "an unresolved key costs a lookup: refused while blocked"
    );
    assert_eq!(
        get_from(&app, attacker, "/api/v1/me", Some(&w.viewer_a)).await,
        StatusCode::OK
    );
    assert_eq!(
        get_from(&app, attacker, "/api/v1/me", Some(ADMIN)).await,
        StatusCode::OK
    );
    assert_eq!(
        get_from(&app, neighbour, "/api/v1/me", Some("fsu_made_up_y")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get_from(&app, neighbour, "/api/v1/me", Some(&w.op_a)).await,
        StatusCode::OK
    );

    // Per user: past the burst, 429 with Retry-After for that user only.
    let app = state(&fleet_query_api::AuthLimits {
        failures_per_minute: 0,
        failure_burst: 0,
        requests_per_second: 1,
        request_burst: 3,
        trusted_proxies: Vec::new(),
    });
    for _ in 0..3 {
        assert_eq!(
            get_from(&app, neighbour, "/api/v1/me", Some(&w.viewer_a)).await,
            StatusCode::OK
        );
    }
    assert_eq!(
        get_from(&app, neighbour, "/api/v1/me", Some(&w.viewer_a)).await,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        get_from(&app, neighbour, "/api/v1/me", Some(&w.op_a)).await,
        StatusCode::OK,
        "another user keeps its own budget"
    );
}
