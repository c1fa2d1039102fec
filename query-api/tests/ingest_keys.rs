//! Ingest keys through the admin API over a real SQLite registry: created with the secret
//! shown once, listed without it, revoked, audited; scoped to one tenant (an operator of
//! B neither sees nor revokes A's keys); bad requests name the field. What the gateway
//! makes of a key is `ingest-gateway/tests/ingest_auth.rs`.

mod support;

use axum::http::StatusCode;
use fleet_registry::{IngestKeyRefusal, INGEST_KEY_PREFIX};
use serde_json::{json, Value};
use support::{admin_env, call, create_tenant, world::user, AdminEnv, ADMIN};

const KEYS: &str = "/api/v1/admin/ingest-keys";

/// Creates a key as `key` with `body`; returns the answer (201 asserted).
async fn create(e: &AdminEnv, body: Value, key: &str) -> Value {
    let (s, v) = call(&e.app, "POST", KEYS, Some(body), Some(key)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

async fn list(e: &AdminEnv, query: &str, key: &str) -> Vec<Value> {
    let (s, v) = call(&e.app, "GET", &format!("{KEYS}{query}"), None, Some(key)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v["keys"].as_array().expect("keys").clone()
}

fn ids(keys: &[Value]) -> Vec<&str> {
    keys.iter().filter_map(|k| k["key_id"].as_str()).collect()
}

#[tokio::test]
async fn a_key_is_shown_once_listed_without_its_secret_revoked_and_audited() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    let created = create(
        &e,
        json!({"name": "prometheus-eu", "description": "remote-write", "tenant_id": a}),
        ADMIN,
    )
    .await;
    let secret = created["key"].as_str().expect("the secret").to_owned();
    let key_id = created["key_id"].as_str().expect("id").to_owned();
    assert!(secret.starts_with(INGEST_KEY_PREFIX), "{secret}");
    assert_eq!(created["last4"], secret[secret.len() - 4..]);
    assert_eq!(created["tenant_id"], a.as_str());
    assert_eq!(created["name"], "prometheus-eu");
    assert_eq!(created["description"], "remote-write");
    assert_eq!(created["created_by"], "admin");
    assert_eq!(created["revoked_at"], Value::Null);

    // The key writes for A.
    let now = fleet_schemas::time::now_micros();
    let auth = e
        .registry
        .authenticate_ingest_key(&secret, now)
        .await
        .expect("registry")
        .expect("accepted");
    assert_eq!(
        (auth.tenant_id.as_str(), auth.key_id.as_str()),
        (a.as_str(), key_id.as_str())
    );

    // Listed (with its last use now), never with the secret.
    let (s, listed) = call(
        &e.app,
        "GET",
        &format!("{KEYS}?tenant={a}"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{listed}");
    assert_eq!(
        ids(listed["keys"].as_array().expect("keys")),
        [key_id.as_str()]
    );
    assert_eq!(listed["keys"][0]["last_used_at"], json!(now));
    assert!(!listed.to_string().contains(&secret), "{listed}");
    assert!(listed["keys"][0].get("key").is_none(), "{listed}");

    // Revoked: the registry refuses it; revoking again answers alike.
    for _ in 0..2 {
        let (s, v) = call(
            &e.app,
            "DELETE",
            &format!("{KEYS}/{key_id}"),
            None,
            Some(ADMIN),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v, json!({"key_id": key_id, "revoked": true}));
    }
    let refused = e
        .registry
        .authenticate_ingest_key(&secret, now + 1)
        .await
        .expect("registry");
    assert_eq!(refused, Err(IngestKeyRefusal::Revoked));
    let keys = list(&e, &format!("?tenant={a}"), ADMIN).await;
    assert!(keys[0]["revoked_at"].is_i64(), "{keys:?}");

    // Unknown id: 404 naming the field.
    let (s, v) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/no-such-key"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "key_id");

    // Audited, in A's log, with who and which key.
    let (_, audit) = call(
        &e.app,
        "GET",
        &format!("/api/v1/audit?tenant={a}"),
        None,
        Some(ADMIN),
    )
    .await;
    let entries: Vec<(&str, &str, &str)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|x| {
            x["action"]
                .as_str()
                .is_some_and(|a| a.starts_with("ingest_key."))
        })
        .map(|x| {
            (
                x["action"].as_str().unwrap_or_default(),
                x["target"].as_str().unwrap_or_default(),
                x["actor"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        entries,
        [
            ("ingest_key.revoke", key_id.as_str(), "admin"),
            ("ingest_key.revoke", key_id.as_str(), "admin"),
            ("ingest_key.create", key_id.as_str(), "admin"),
        ],
        "{audit}"
    );
    assert!(!audit.to_string().contains(&secret), "{audit}");
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    // A missing field is named by the message, at the object that lacks it (`body`), as
    // everywhere in the API.
    for (body, status, field, says) in [
        (
            json!({"tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "body",
            "name",
        ),
        (
            json!({"name": "x", "tenant_id": a, "role": "admin"}),
            StatusCode::BAD_REQUEST,
            "role",
            "role",
        ),
        (
            json!({"name": " ", "tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "name",
            "",
        ),
        (
            json!({"name": "x\u{202E}y", "tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "name",
            "U+202E",
        ),
        (
            json!({"name": 5, "tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "name",
            "",
        ),
        (
            json!({"name": "x", "description": "", "tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "description",
            "",
        ),
        (
            json!({"name": "x", "description": "a\u{0007}", "tenant_id": a}),
            StatusCode::BAD_REQUEST,
            "description",
            "U+0007",
        ),
        (
            json!({"name": "x", "tenant_id": ""}),
            StatusCode::BAD_REQUEST,
            "tenant_id",
            "",
        ),
        // The admin belongs to no tenant: it must name one, an existing one.
        (
            json!({"name": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tenant_id",
            "tenant",
        ),
        (
            json!({"name": "x", "tenant_id": "no-such-tenant"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "tenant_id",
            "no such tenant",
        ),
    ] {
        let (s, v) = call(&e.app, "POST", KEYS, Some(body.clone()), Some(ADMIN)).await;
        assert_eq!(s, status, "{body}: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        let message = v["error"]["message"].as_str().expect("a message");
        assert!(message.contains(says), "{body}: {v}");
    }
    let (s, v) = call(
        &e.app,
        "GET",
        &format!("{KEYS}?tenant_id={a}"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(
        (s, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &json!("tenant_id")),
        "{v}"
    );
    for (method, uri) in [
        ("POST", KEYS.to_owned()),
        ("GET", KEYS.to_owned()),
        ("DELETE", format!("{KEYS}/x")),
    ] {
        let (s, v) = call(
            &e.app,
            method,
            &uri,
            Some(json!({"name": "x", "tenant_id": a})),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri}: {v}");
        // An ingest key is no API key.
        let created = create(&e, json!({"name": "k", "tenant_id": a}), ADMIN).await;
        let ingest = created["key"].as_str().expect("key");
        let (s, v) = call(
            &e.app,
            method,
            &uri,
            Some(json!({"name": "x", "tenant_id": a})),
            Some(ingest),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {uri}: {v}");
    }
    assert!(
        list(&e, &format!("?tenant={a}"), ADMIN).await.len() == 3,
        "refusals store nothing"
    );
}

/// Tenant isolation: operators make and revoke keys of their own tenant only; B's
/// operator neither sees A's keys nor revokes them (the same 404 as a made-up id), and
/// A's key keeps working; viewers list but never write.
#[tokio::test]
async fn an_operator_of_b_neither_sees_nor_revokes_a_key_of_a() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    let b = create_tenant(&e.app, "B").await;
    let (_, op_a) = user(&e.app, "op-a", "operator", &a).await;
    let (_, op_b) = user(&e.app, "op-b", "operator", &b).await;
    let (_, viewer_a) = user(&e.app, "viewer-a", "viewer", &a).await;

    // An operator's key is for its own tenant, named or not.
    let a_key = create(&e, json!({"name": "telegraf"}), &op_a).await;
    assert_eq!(a_key["tenant_id"], a.as_str());
    assert_eq!(a_key["created_by"], "op-a");
    let a_id = a_key["key_id"].as_str().expect("id").to_owned();
    let a_secret = a_key["key"].as_str().expect("secret").to_owned();
    let again = create(&e, json!({"name": "otel", "tenant_id": a}), &op_a).await;
    let b_key = create(&e, json!({"name": "prom"}), &op_b).await;
    assert_eq!(b_key["tenant_id"], b.as_str());

    // B's operator: its own keys only; naming A is 403 like naming a made-up tenant.
    assert_eq!(
        ids(&list(&e, "", &op_b).await),
        [b_key["key_id"].as_str().expect("id")]
    );
    let (s1, v1) = call(
        &e.app,
        "GET",
        &format!("{KEYS}?tenant={a}"),
        None,
        Some(&op_b),
    )
    .await;
    let (s2, v2) = call(
        &e.app,
        "GET",
        &format!("{KEYS}?tenant=made-up"),
        None,
        Some(&op_b),
    )
    .await;
    assert_eq!((s1, &v1), (StatusCode::FORBIDDEN, &v2), "{s2}");
    let (s1, v1) = call(
        &e.app,
        "POST",
        KEYS,
        Some(json!({"name": "x", "tenant_id": a})),
        Some(&op_b),
    )
    .await;
    let (s2, v2) = call(
        &e.app,
        "POST",
        KEYS,
        Some(json!({"name": "x", "tenant_id": "made-up"})),
        Some(&op_b),
    )
    .await;
    assert_eq!((s1, &v1), (s2, &v2));
    assert_eq!(
        (s1, &v1["error"]["field"]),
        (StatusCode::FORBIDDEN, &json!("tenant_id")),
        "{v1}"
    );
    let (s1, v1) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/{a_id}"),
        None,
        Some(&op_b),
    )
    .await;
    let (s2, v2) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/{}", uuid::Uuid::new_v4()),
        None,
        Some(&op_b),
    )
    .await;
    assert_eq!((s1, &v1), (StatusCode::NOT_FOUND, &v2), "{s2}");
    assert!(!v1.to_string().contains(&a_id), "{v1}");
    // A's key still works and is not revoked.
    assert!(e
        .registry
        .authenticate_ingest_key(&a_secret, fleet_schemas::time::now_micros())
        .await
        .expect("registry")
        .is_ok());

    // A's viewer lists A's keys, but makes and revokes none (403 before any lookup).
    let seen = list(&e, "", &viewer_a).await;
    assert_eq!(
        ids(&seen),
        [again["key_id"].as_str().expect("id"), a_id.as_str()]
    );
    assert!(!serde_json::to_string(&seen)
        .expect("json")
        .contains(&a_secret));
    let (s, v) = call(
        &e.app,
        "POST",
        KEYS,
        Some(json!({"name": "x"})),
        Some(&viewer_a),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    let (s, v) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/{a_id}"),
        None,
        Some(&viewer_a),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");

    // A's operator revokes its own key; the admin sees every tenant's keys.
    let (s, v) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/{a_id}"),
        None,
        Some(&op_a),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(list(&e, "", ADMIN).await.len(), 3);
    // B's audit log holds none of A's key changes, A's names op-a.
    let (_, audit_b) = call(
        &e.app,
        "GET",
        &format!("/api/v1/audit?tenant={b}"),
        None,
        Some(ADMIN),
    )
    .await;
    assert!(!audit_b.to_string().contains(&a_id), "{audit_b}");
    let (_, audit_a) = call(
        &e.app,
        "GET",
        &format!("/api/v1/audit?tenant={a}"),
        None,
        Some(&op_a),
    )
    .await;
    assert_eq!(
        audit_a["entries"][0]["action"], "ingest_key.revoke",
        "{audit_a}"
    );
    assert_eq!(audit_a["entries"][0]["actor"], "op-a", "{audit_a}");
}

#[tokio::test]
async fn unrevoked_keys_per_tenant_are_capped() {
    let e = admin_env(ADMIN, None).await;
    let a = create_tenant(&e.app, "A").await;
    let max = fleet_query_api::routes::ingest_keys::MAX_ACTIVE_INGEST_KEYS;
    let mut first = None;
    for i in 0..max {
        let v = create(&e, json!({"name": format!("k{i}"), "tenant_id": a}), ADMIN).await;
        first.get_or_insert(v["key_id"].as_str().expect("id").to_owned());
    }
    let over = json!({"name": "one more", "tenant_id": a});
    let (s, v) = call(&e.app, "POST", KEYS, Some(over.clone()), Some(ADMIN)).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "too_many_keys");
    let first = first.expect("made");
    let (s, _) = call(
        &e.app,
        "DELETE",
        &format!("{KEYS}/{first}"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    create(&e, over, ADMIN).await;
}
