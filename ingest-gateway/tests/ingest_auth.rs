//! Ingest keys at the gateway, through a test-only router whose one handler takes the
//! [`IngestCaller`] extractor and then the body (no gateway endpoint uses it yet), over a
//! real SQLite registry: Bearer, Basic and Token; wrong, missing and revoked keys (401
//! JSON); a registry outage (503 naming nothing internal, while cached keys keep working);
//! the per-address failure limit; no body read before the key is checked.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use fleet_event_log::EventLog;
use fleet_ingest_gateway::{GatewayConfig, GatewayState, IngestCaller};
use fleet_registry::{
    hash_secret, new_secret, Database, NewIngestKey, Registry, SqlRegistry, INGEST_KEY_PREFIX,
};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

struct Env {
    _dir: tempfile::TempDir,
    _log: Arc<dyn EventLog>,
    db: Database,
    registry: Arc<dyn Registry>,
    state: GatewayState,
    app: Router,
    tenant_a: String,
    tenant_b: String,
}

/// What the test endpoint answers: whom the key writes for, and how much body it read.
async fn whoami(caller: IngestCaller, body: Bytes) -> Json<Value> {
    Json(json!({ "tenant_id": caller.tenant_id, "key_id": caller.key_id, "bytes": body.len() }))
}

fn router(state: GatewayState) -> Router {
    Router::new()
        .route("/ingest", post(whoami))
        .with_state(state)
}

async fn env(auth_cache: Duration) -> Env {
    let (dir, log) = common::embedded().await;
    let db = Database::connect(dir.path().join("registry.db").to_str().expect("utf-8"))
        .await
        .expect("database");
    let registry: Arc<dyn Registry> =
        Arc::new(SqlRegistry::open(db.clone()).await.expect("registry"));
    let now = fleet_schemas::time::now_micros();
    let a = registry.create_tenant("A", now).await.expect("tenant");
    let b = registry.create_tenant("B", now).await.expect("tenant");
    let state = GatewayState::with_registry(
        log.clone(),
        fleet_schemas::Wire::plain(),
        Some(registry.clone()),
        GatewayConfig {
            auth_cache,
            ..GatewayConfig::default()
        },
    );
    Env {
        _dir: dir,
        _log: log,
        db,
        registry,
        app: router(state.clone()),
        state,
        tenant_a: a.tenant_id,
        tenant_b: b.tenant_id,
    }
}

/// A new ingest key of `tenant`: (secret, key id).
async fn key(e: &Env, tenant: &str) -> (String, String) {
    let secret = new_secret(INGEST_KEY_PREFIX);
    let info = e
        .registry
        .create_ingest_key(
            &NewIngestKey {
                tenant_id: tenant.to_owned(),
                name: "prometheus".into(),
                description: None,
                created_by: "test".into(),
                created_at: fleet_schemas::time::now_micros(),
            },
            hash_secret(&secret),
            &secret[secret.len() - 4..],
        )
        .await
        .expect("key");
    (secret, info.key_id)
}

fn bearer(k: &str) -> String {
    format!("Bearer {k}")
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// POSTs `body` with `Authorization: authorization` (if any): status, JSON answer and
/// headers.
async fn send(
    app: &Router,
    authorization: Option<&str>,
) -> (StatusCode, Value, axum::http::HeaderMap) {
    let mut req = Request::post("/ingest");
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from("samples")).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        parts.headers,
    )
}

#[tokio::test]
async fn bearer_basic_and_token_carry_the_keys_tenant() {
    let e = env(Duration::from_secs(30)).await;
    let (a_key, a_id) = key(&e, &e.tenant_a).await;
    let (b_key, b_id) = key(&e, &e.tenant_b).await;
    for (authorization, tenant, id) in [
        (bearer(&a_key), &e.tenant_a, &a_id),
        (format!("bearer {a_key}"), &e.tenant_a, &a_id),
        (basic("prometheus", &a_key), &e.tenant_a, &a_id),
        (basic("", &a_key), &e.tenant_a, &a_id),
        (format!("Token {b_key}"), &e.tenant_b, &b_id),
        (basic("telegraf", &b_key), &e.tenant_b, &b_id),
    ] {
        let (status, v, _) = send(&e.app, Some(&authorization)).await;
        assert_eq!(status, StatusCode::OK, "{authorization}: {v}");
        assert_eq!(
            v,
            json!({ "tenant_id": tenant, "key_id": id, "bytes": 7 }),
            "{authorization}"
        );
    }
    // The use is recorded in the registry.
    let listed = e
        .registry
        .list_ingest_keys(&e.tenant_a)
        .await
        .expect("list");
    assert!(listed[0].last_used_at.is_some(), "{listed:?}");
}

#[tokio::test]
async fn wrong_missing_and_malformed_keys_are_401_json() {
    let e = env(Duration::from_secs(30)).await;
    let (a_key, _) = key(&e, &e.tenant_a).await;
    for authorization in [
        None,
        Some(bearer(&new_secret(INGEST_KEY_PREFIX))),
        Some(bearer(&a_key[..a_key.len() - 1])),
        Some(bearer(&new_secret("fsu_"))),
        Some(format!("Token {}", new_secret("fsa_"))),
        Some(basic(&a_key, "")),
        Some(format!("Digest {a_key}")),
        Some("Basic not-base64!".to_owned()),
        Some(a_key.clone()),
    ] {
        let (status, v, _) = send(&e.app, authorization.as_deref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
}

/// Revocation reaches the gateway when its cached answer expires: with a long
/// `auth-cache` the revoked key is still accepted right after (the cache answered, not
/// the registry), with a short one it is refused once the entry expired.
#[tokio::test]
async fn a_revoked_key_is_refused_once_its_cached_answer_expires() {
    let long = env(Duration::from_secs(3600)).await;
    let (k, id) = key(&long, &long.tenant_a).await;
    assert_eq!(send(&long.app, Some(&bearer(&k))).await.0, StatusCode::OK);
    assert!(long
        .registry
        .revoke_ingest_key(None, &id, fleet_schemas::time::now_micros())
        .await
        .expect("revoke")
        .is_some());
    let (status, v, _) = send(&long.app, Some(&bearer(&k))).await;
    assert_eq!(status, StatusCode::OK, "cached for auth-cache: {v}");

    let short = env(Duration::from_millis(200)).await;
    let (k, id) = key(&short, &short.tenant_a).await;
    assert_eq!(send(&short.app, Some(&bearer(&k))).await.0, StatusCode::OK);
    short
        .registry
        .revoke_ingest_key(
            Some(&short.tenant_a),
            &id,
            fleet_schemas::time::now_micros(),
        )
        .await
        .expect("revoke");
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    let v = loop {
        let (status, v, _) = send(&short.app, Some(&bearer(&k))).await;
        if status == StatusCode::UNAUTHORIZED {
            break v;
        }
        assert_eq!(status, StatusCode::OK, "{v}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the revoked key was never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(v["error"]["code"], "unauthorized");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("revoked")),
        "{v}"
    );
}

/// A registry that cannot answer: a key the cache holds still works (so a collector's
/// requests do not reach the database), any other gets 503 with Retry-After and a body
/// that names nothing internal.
#[tokio::test]
async fn a_registry_outage_is_503_without_internals_and_cached_keys_keep_working() {
    let e = env(Duration::from_secs(3600)).await;
    let (cached, _) = key(&e, &e.tenant_a).await;
    let (uncached, _) = key(&e, &e.tenant_a).await;
    assert_eq!(send(&e.app, Some(&bearer(&cached))).await.0, StatusCode::OK);
    e.db.close().await;

    let (status, v, _) = send(&e.app, Some(&bearer(&cached))).await;
    assert_eq!(status, StatusCode::OK, "answered from the cache: {v}");
    for k in [uncached, new_secret(INGEST_KEY_PREFIX)] {
        let (status, v, headers) = send(&e.app, Some(&bearer(&k))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert!(headers.contains_key(header::RETRY_AFTER));
        assert_eq!(v["error"]["code"], "unavailable", "{v}");
        let text = v.to_string();
        for internal in [
            "registry.db",
            "sqlite",
            e._dir.path().to_str().expect("utf-8"),
        ] {
            assert!(!text.contains(internal), "{internal} in {text}");
        }
    }
    // An outage is no failed authentication: the address is not charged for it.
    for _ in 0..40 {
        let (status, _, _) = send(&e.app, Some(&bearer(&new_secret(INGEST_KEY_PREFIX)))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// The app as seen from one client address.
fn from(e: &Env, addr: &str) -> Router {
    let addr: SocketAddr = addr.parse().expect("address");
    router(e.state.clone()).layer(MockConnectInfo(addr))
}

/// Failed keys are limited per client address (the agents' limit): a guesser gets 429,
/// another address does not, and a collector whose key the cache holds still gets in from
/// the guesser's address (a NAT, a proxy).
#[tokio::test]
async fn failed_keys_are_limited_per_client_address() {
    let e = env(Duration::from_secs(3600)).await;
    let (good, _) = key(&e, &e.tenant_a).await;
    let attacker = from(&e, "203.0.113.7:40000");
    let other = from(&e, "198.51.100.9:50000");
    assert_eq!(
        send(&attacker, Some(&bearer(&good))).await.0,
        StatusCode::OK
    );
    let mut limited = None;
    for _ in 0..500 {
        let guess = bearer(&new_secret(INGEST_KEY_PREFIX));
        let (status, v, headers) = send(&attacker, Some(&guess)).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers.contains_key(header::RETRY_AFTER));
            limited = Some(v);
            break;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    let limited = limited.expect("the guesser was never limited");
    assert_eq!(limited["error"]["code"], "rate_limited", "{limited}");
    let (status, _, _) = send(&other, Some(&bearer(&new_secret(INGEST_KEY_PREFIX)))).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "another address is not limited"
    );
    let (status, v, _) = send(&attacker, Some(&basic("prom", &good))).await;
    assert_eq!(status, StatusCode::OK, "a cached key gets in: {v}");
}

/// The key is checked from the headers: a body sent with no key or a wrong one is never
/// read.
#[tokio::test]
async fn no_body_is_read_before_the_key_is_checked() {
    let e = env(Duration::from_secs(30)).await;
    let (good, _) = key(&e, &e.tenant_a).await;
    let send_streamed = |authorization: Option<String>| {
        let app = e.app.clone();
        async move {
            let read = Arc::new(AtomicUsize::new(0));
            let counter = read.clone();
            let body = futures::stream::once(async move {
                counter.fetch_add(1 << 16, Ordering::SeqCst);
                Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; 1 << 16]))
            });
            let mut req = Request::post("/ingest");
            if let Some(a) = authorization {
                req = req.header(header::AUTHORIZATION, a);
            }
            let resp = app
                .oneshot(req.body(Body::from_stream(body)).expect("request"))
                .await
                .expect("response");
            (resp.status(), read.load(Ordering::SeqCst))
        }
    };
    assert_eq!(send_streamed(None).await, (StatusCode::UNAUTHORIZED, 0));
    assert_eq!(
        send_streamed(Some(bearer(&new_secret(INGEST_KEY_PREFIX)))).await,
        (StatusCode::UNAUTHORIZED, 0)
    );
    let (status, read) = send_streamed(Some(bearer(&good))).await;
    assert_eq!((status, read), (StatusCode::OK, 1 << 16));
}
