//! Notification channels, routes, silences and deliveries through the admin API over a
//! real SQLite read model: a webhook's secret shown once and never listed, bounds and
//! bad input answered 4xx naming the field, viewers refused every write, every change
//! audited, a channel test queued as a delivery the list shows. What the notifier does
//! with them is `notifier/tests/delivery.rs`.

mod support;

use axum::http::StatusCode;
use serde_json::{json, Value};
use support::{admin_env, call, create_tenant, world::user, ADMIN};

fn channels(t: &str) -> String {
    format!("/api/v1/tenants/{t}/notification-channels")
}

#[tokio::test]
async fn channels_routes_and_silences_are_made_listed_tested_and_audited() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    let (_, viewer) = user(&e.app, "viewer-a", "viewer", &a).await;
    let (_, operator) = user(&e.app, "op-a", "operator", &a).await;

    let (s, hook) = call(
        &e.app,
        "POST",
        &channels(&a),
        Some(json!({"name": "ops hook", "kind": "webhook", "url": "https://hooks.example.com/fleet"})),
        Some(&operator),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("the secret, once")
        .to_owned();
    assert!(
        secret.starts_with("whsec_") && secret.len() > 40,
        "{secret}"
    );
    assert_eq!(hook["kind"], "webhook");
    assert_eq!(hook["settings"]["url"], "https://hooks.example.com/fleet");
    let hook_id = hook["channel_id"].as_str().expect("id").to_owned();
    let (s, mail) = call(
        &e.app,
        "POST",
        &channels(&a),
        Some(json!({"name": "ops mail", "kind": "email", "email": {
            "host": "smtp.example.com", "port": 587, "username": "fleet", "password": "hunter2",
            "from": "fleet@example.com", "to": ["ops@example.com"]}})),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{mail}");
    assert!(
        mail.get("secret").is_none(),
        "an SMTP password is never shown: {mail}"
    );
    assert!(!mail.to_string().contains("hunter2"));
    assert_eq!(mail["settings"]["email"]["tls"], "starttls");

    // Listed by every role of the tenant, never with a secret.
    let (s, list) = call(&e.app, "GET", &channels(&a), None, Some(&viewer)).await;
    assert_eq!(s, StatusCode::OK, "{list}");
    assert_eq!(list["channels"].as_array().map(Vec::len), Some(2));
    assert!(!list.to_string().contains(&secret) && !list.to_string().contains("hunter2"));
    // The notifier reads the secret from the store.
    let stored = e
        .read_model
        .get_channel(Some(&a), &hook_id)
        .await
        .expect("read")
        .expect("there");
    assert_eq!(stored.secret.as_deref(), Some(secret.as_str()));

    // A route to the hook; a silence.
    let (s, route) = call(
        &e.app,
        "POST",
        &format!("/api/v1/tenants/{a}/notification-routes"),
        Some(json!({"name": "critical", "channel_ids": [hook_id],
            "match": {"severities": ["critical"], "tags": ["db"]}, "group_window_secs": 30})),
        Some(&operator),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{route}");
    assert_eq!(route["group_window_ms"], 30_000);
    assert_eq!(route["send_resolved"], true);
    assert_eq!(route["matcher"]["tags"], json!(["db"]));
    let (s, silence) = call(
        &e.app,
        "POST",
        &format!("/api/v1/tenants/{a}/silences"),
        Some(json!({"comment": "db upgrade", "match": {"tags": ["db"]}, "duration_secs": 600.0})),
        Some(&operator),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{silence}");
    let expires = silence["expires_at"].as_i64().expect("expiry");
    let starts = silence["starts_at"].as_i64().expect("start");
    assert_eq!(expires - starts, 600_000_000);

    // A channel test is queued as a delivery of kind "test".
    let (s, queued) = call(
        &e.app,
        "POST",
        &format!("/api/v1/notification-channels/{hook_id}/test"),
        None,
        Some(&operator),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{queued}");
    let (s, list) = call(
        &e.app,
        "GET",
        &format!("/api/v1/notification-deliveries?channel_id={hook_id}&status=pending"),
        None,
        Some(&viewer),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{list}");
    let d = &list["deliveries"][0];
    assert_eq!(d["delivery_id"], queued["delivery_id"]);
    assert_eq!(d["kind"], "test");
    assert_eq!(d["status"], "pending");
    assert_eq!(d["alert"]["event_id"], queued["event_id"]);

    // Viewers write nothing.
    for (method, uri, body) in [
        (
            "POST",
            channels(&a),
            Some(json!({"name": "x", "kind": "slack", "url": "https://x.example"})),
        ),
        (
            "POST",
            format!("/api/v1/notification-channels/{hook_id}/test"),
            None,
        ),
        (
            "DELETE",
            format!("/api/v1/notification-channels/{hook_id}"),
            None,
        ),
        (
            "DELETE",
            format!(
                "/api/v1/silences/{}",
                silence["silence_id"].as_str().unwrap_or_default()
            ),
            None,
        ),
    ] {
        let (s, v) = call(&e.app, method, &uri, body, Some(&viewer)).await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {uri}: {v}");
    }

    // Deletes, then the audit log has every change.
    for uri in [
        format!(
            "/api/v1/silences/{}",
            silence["silence_id"].as_str().unwrap_or_default()
        ),
        format!(
            "/api/v1/notification-routes/{}",
            route["route_id"].as_str().unwrap_or_default()
        ),
        format!("/api/v1/notification-channels/{hook_id}"),
    ] {
        let (s, v) = call(&e.app, "DELETE", &uri, None, Some(&operator)).await;
        assert_eq!(s, StatusCode::OK, "{uri}: {v}");
        let (s, _) = call(&e.app, "DELETE", &uri, None, Some(&operator)).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{uri} twice");
    }
    let (_, audit) = call(
        &e.app,
        "GET",
        &format!("/api/v1/audit?tenant={a}"),
        None,
        Some(ADMIN),
    )
    .await;
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|x| x["action"].as_str())
        .collect();
    for action in [
        "notification_channel.create",
        "notification_channel.test",
        "notification_channel.delete",
        "notification_route.create",
        "notification_route.delete",
        "silence.create",
        "silence.delete",
    ] {
        assert!(actions.contains(&action), "{action} in {actions:?}");
    }
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    let long = format!("https://hooks.example.com/{}", "a".repeat(2100));
    let cases: Vec<(String, Value, StatusCode, &str)> = vec![
        (
            channels(&a),
            json!({"name": "x", "kind": "webhook", "url": "ftp://hooks.example.com/x"}),
            StatusCode::BAD_REQUEST,
            "url",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "webhook", "url": long}),
            StatusCode::BAD_REQUEST,
            "url",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "webhook"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "webhook", "url": "https://u:p@hooks.example.com/"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "url",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "pager", "url": "https://x.example"}),
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            channels(&a),
            json!({"name": "a\u{202e}b", "kind": "slack", "url": "https://x.example"}),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "email"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "email", "email": {"host": "smtp.example.com", "port": 25,
            "from": "fleet@example.com", "to": ["not-an-address"]}}),
            StatusCode::BAD_REQUEST,
            "email.to[0]",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "email", "email": {"host": "smtp.example.com", "port": 25,
            "from": "fleet@example.com", "to": []}}),
            StatusCode::BAD_REQUEST,
            "email.to",
        ),
        (
            channels(&a),
            json!({"name": "x", "kind": "email", "email": {"host": "smtp.example.com", "port": 25,
            "username": "u", "from": "fleet@example.com", "to": ["a@b.c"]}}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "email.password",
        ),
        (
            format!("/api/v1/tenants/{a}/notification-routes"),
            json!({"name": "r", "channel_ids": ["nope"]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "channel_ids[0]",
        ),
        (
            format!("/api/v1/tenants/{a}/notification-routes"),
            json!({"name": "r", "channel_ids": []}),
            StatusCode::BAD_REQUEST,
            "channel_ids",
        ),
        (
            format!("/api/v1/tenants/{a}/notification-routes"),
            json!({"name": "r", "channel_ids": ["x"], "group_window_secs": 3601}),
            StatusCode::BAD_REQUEST,
            "group_window_secs",
        ),
        (
            format!("/api/v1/tenants/{a}/notification-routes"),
            json!({"name": "r", "channel_ids": ["x"], "match": {"severities": ["loud"]}}),
            StatusCode::BAD_REQUEST,
            "match.severities[0]",
        ),
        (
            format!("/api/v1/tenants/{a}/notification-routes"),
            json!({"name": "r", "channel_ids": ["x"], "match": {"tags": vec!["t"; 51]}}),
            StatusCode::BAD_REQUEST,
            "match.tags",
        ),
        (
            format!("/api/v1/tenants/{a}/silences"),
            json!({"comment": "c", "match": {}, "duration_secs": 600}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "match",
        ),
        (
            format!("/api/v1/tenants/{a}/silences"),
            json!({"comment": "c", "match": {"tags": ["x"]}, "duration_secs": 5}),
            StatusCode::BAD_REQUEST,
            "duration_secs",
        ),
        (
            format!("/api/v1/tenants/{a}/silences"),
            json!({"comment": "c", "match": {"tags": ["x"]}}),
            StatusCode::BAD_REQUEST,
            "duration_secs",
        ),
        (
            format!("/api/v1/tenants/{a}/silences"),
            json!({"comment": "c", "match": {"severities": ["info", "info", "info", "info"]}, "duration_secs": 60}),
            StatusCode::BAD_REQUEST,
            "match.severities",
        ),
        (
            format!("/api/v1/tenants/{a}/silences"),
            json!({"comment": "c", "match": {"tags": ["x"]}, "duration_secs": 99_999_999_999_u64}),
            StatusCode::BAD_REQUEST,
            "duration_secs",
        ),
    ];
    for (uri, body, status, field) in cases {
        let (s, v) = call(&e.app, "POST", &uri, Some(body.clone()), Some(ADMIN)).await;
        assert_eq!(s, status, "{uri} {body}: {v}");
        assert_eq!(v["error"]["field"], field, "{uri} {body}: {v}");
    }
    let (s, v) = call(
        &e.app,
        "GET",
        "/api/v1/notification-deliveries?status=lost",
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (s, v["error"]["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("status")),
        "{v}"
    );
}
