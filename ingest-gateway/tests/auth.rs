//! Enrollment and agent authentication against a real registry (SQLite) and the real
//! embedded log.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::ws::Message;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_ingest_gateway::{app, AuthMode, GatewayConfig, GatewayState};
use fleet_registry::{hash_secret, NewToken, Registry};
use fleet_schemas::{codec, AgentLifecycle, AgentLifecycleKind, MetricReport, Record};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    registry: Arc<dyn Registry>,
    tenant_id: String,
    app: Router,
    state: GatewayState,
}

async fn env() -> Env {
    env_with(GatewayConfig {
        auth: AuthMode::Required,
        ..GatewayConfig::default()
    })
    .await
}

async fn env_with(cfg: GatewayConfig) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(
        dir.path().join("log").to_str().expect("utf-8"),
        &Default::default(),
    )
    .await
    .expect("log");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let registry: Arc<dyn Registry> =
        fleet_registry::open_registry(dir.path().join("registry.db").to_str().expect("utf-8"))
            .await
            .expect("registry");
    let tenant = registry.create_tenant("Acme", now()).await.expect("tenant");
    let state = GatewayState::with_registry(
        log.clone(),
        fleet_schemas::Wire::plain(),
        Some(registry.clone()),
        cfg,
    );
    Env {
        _dir: dir,
        log,
        registry,
        tenant_id: tenant.tenant_id,
        app: app(state.clone()),
        state,
    }
}

fn now() -> i64 {
    fleet_schemas::time::now_micros()
}

async fn token(e: &Env, secret: &str, expires_in_micros: i64) {
    let t = NewToken {
        tenant_id: e.tenant_id.clone(),
        location_id: None,
        device_name: Some("web-1".into()),
        expires_at: now() + expires_in_micros,
        created_by: "test".into(),
        created_at: now() - 7_200_000_000,
    };
    e.registry
        .create_token(&t, hash_secret(secret))
        .await
        .expect("token");
}

fn register_body(token: &str) -> Value {
    json!({"token": token, "facts": {
        "hostname": "web-1", "os_type": "linux", "os_version": "Debian 12", "kernel_version": "6.1",
        "architecture": "x86_64", "ip_addresses": ["10.0.0.5"], "mac_addresses": ["02:00:00:00:00:01"],
        "cpu_model": "Xeon", "cpu_cores": 2, "memory_total_bytes": 8589934592u64, "disk_total_bytes": 107374182400u64,
        "agent_version": "0.1.0"
    }})
}

async fn call(app: &Router, uri: &str, body: &Value, bearer: Option<&str>) -> (StatusCode, Value) {
    let mut req = Request::post(uri).header(header::CONTENT_TYPE, "application/json");
    if let Some(b) = bearer {
        req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
    }
    let resp = app
        .clone()
        .oneshot(
            req.body(Body::from(serde_json::to_vec(body).expect("json")))
                .expect("request"),
        )
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn report() -> Value {
    json!({"reports": [{
        "collected_at": chrono::Utc::now().to_rfc3339(), "cpu_percent": 5.0,
        "memory_used_bytes": 1, "memory_total_bytes": 2, "memory_percent": 50.0,
        "load_1": 0.1, "load_5": 0.1, "load_15": 0.1, "uptime_seconds": 5
    }]})
}

async fn topic<T: Record>(log: &Arc<dyn EventLog>) -> Vec<T> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(log.as_ref(), &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        out.push(
            codec::Wire::plain()
                .decode_known::<T>(&r.value)
                .expect("avro"),
        )
    })
    .await
    .expect("read");
    out
}

#[tokio::test]
async fn enroll_then_send_with_the_credential() {
    let e = env().await;
    token(&e, "fst_secret-1", 3_600_000_000).await;
    let (status, reg) = call(
        &e.app,
        "/api/v1/agents/register",
        &register_body("fst_secret-1"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    let agent_id = reg["agent_id"].as_str().expect("agent id").to_owned();
    let credential = reg["credential"].as_str().expect("credential").to_owned();
    assert_eq!(reg["tenant_id"], e.tenant_id.as_str());
    assert_eq!(reg["device_name"], "web-1");
    // No public-url configured: no socket URL is handed out (never the listen address);
    // the agent derives it from its own server URL.
    assert_eq!(reg["config"]["websocket_url"], "");

    // Reports are attributed to the agent's tenant.
    let uri = format!("/api/v1/agents/{agent_id}/metrics");
    let (status, v) = call(&e.app, &uri, &report(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let written = topic::<MetricReport>(&e.log).await;
    assert_eq!(written[0].tenant_id, e.tenant_id);

    // AgentRegistered reaches fleet.agents.v1 with the facts.
    let mut lifecycle = Vec::new();
    for _ in 0..100 {
        lifecycle = topic::<AgentLifecycle>(&e.log).await;
        if !lifecycle.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(lifecycle.len(), 1);
    assert_eq!(lifecycle[0].kind, AgentLifecycleKind::Registered);
    assert_eq!(lifecycle[0].agent_id, agent_id);
    assert_eq!(lifecycle[0].facts.as_ref().map(|f| f.cpu_cores), Some(2));

    // Missing, malformed, wrong, or another agent's credential: 401.
    assert_eq!(
        call(&e.app, &uri, &report(), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&e.app, &uri, &report(), Some("fsa_wrong")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let other = format!("/api/v1/agents/{}/metrics", uuid::Uuid::new_v4());
    assert_eq!(
        call(&e.app, &other, &report(), Some(&credential)).await.0,
        StatusCode::UNAUTHORIZED
    );

    // Deactivated: 403 once the cache entry is dropped (the gateway does that when it
    // reads AgentDeactivated from fleet.agents.v1).
    assert!(e
        .registry
        .deactivate_agent(None, &agent_id, now())
        .await
        .expect("deactivate"));
    e.state.authenticator().invalidate(&agent_id);
    let (status, v) = call(&e.app, &uri, &report(), Some(&credential)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["code"], "agent_deactivated");
}

#[tokio::test]
async fn bad_tokens_get_clear_errors() {
    let e = env().await;
    token(&e, "fst_once", 3_600_000_000).await;
    token(&e, "fst_expired", -1_000_000).await;
    assert_eq!(
        call(
            &e.app,
            "/api/v1/agents/register",
            &register_body("fst_once"),
            None
        )
        .await
        .0,
        StatusCode::CREATED
    );
    for (secret, status, code) in [
        ("fst_once", StatusCode::CONFLICT, "token_used"),
        ("fst_expired", StatusCode::GONE, "token_expired"),
        (
            "fst_never_issued",
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
    ] {
        let (s, v) = call(
            &e.app,
            "/api/v1/agents/register",
            &register_body(secret),
            None,
        )
        .await;
        assert_eq!(s, status, "{secret}: {v}");
        assert_eq!(v["error"]["code"], code);
        assert_eq!(v["error"]["field"], "token");
    }
    let mut bad = register_body("fst_x");
    bad["facts"]["hostname"] = json!("");
    let (s, v) = call(&e.app, "/api/v1/agents/register", &bad, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "facts.hostname");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_redemptions_of_one_token_enroll_one_agent() {
    let e = env().await;
    token(&e, "fst_race", 3_600_000_000).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let app = e.app.clone();
        tasks.push(tokio::spawn(async move {
            call(
                &app,
                "/api/v1/agents/register",
                &register_body("fst_race"),
                None,
            )
            .await
            .0
        }));
    }
    let mut created = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::CREATED => created += 1,
            StatusCode::CONFLICT => {}
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(created, 1);
}

/// Enrolls one agent: (agent id, credential).
async fn enroll(e: &Env, secret: &str) -> (String, String) {
    token(e, secret, 3_600_000_000).await;
    let (status, reg) = call(
        &e.app,
        "/api/v1/agents/register",
        &register_body(secret),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{reg}");
    (
        reg["agent_id"].as_str().expect("id").to_owned(),
        reg["credential"].as_str().expect("credential").to_owned(),
    )
}

fn heartbeat() -> Value {
    json!({"sent_at": chrono::Utc::now().to_rfc3339(), "sequence": 1, "uptime_seconds": 5, "agent_version": "0.1.0"})
}

/// Repeats a request refused with 401 until it is refused with 429 instead; returns that
/// answer (and fails if it never comes).
async fn until_limited<F, Fut>(mut request: F) -> Value
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (StatusCode, Value)>,
{
    for _ in 0..500 {
        let (status, v) = request().await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["error"]["code"], "rate_limited");
            return v;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    }
    panic!("never limited");
}

/// The app as seen from one client address.
fn from(e: &Env, addr: &str) -> Router {
    let addr: SocketAddr = addr.parse().expect("address");
    app(e.state.clone()).layer(MockConnectInfo(addr))
}

/// Finding 3: 60 failed requests naming a victim used to leave the victim's own valid
/// request at 429.
#[tokio::test]
async fn failed_attempts_never_use_up_the_victims_rate_limit() {
    let e = env().await;
    let (victim, credential) = enroll(&e, "fst_victim").await;
    let uri = format!("/api/v1/agents/{victim}/heartbeat");
    for i in 0..60 {
        let bearer = if i % 2 == 0 { Some("fsa_wrong") } else { None };
        let (status, v) = call(&e.app, &uri, &heartbeat(), bearer).await;
        assert!(
            matches!(
                status,
                StatusCode::UNAUTHORIZED | StatusCode::TOO_MANY_REQUESTS
            ),
            "{status}: {v}"
        );
    }
    let (status, v) = call(&e.app, &uri, &heartbeat(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
}

/// Failed authentications are limited per client address: a guesser is slowed down
/// (429), other addresses are not, and an agent whose credential is known (cached) still
/// gets in even from the guesser's address (a NAT, a proxy).
#[tokio::test]
async fn failed_authentications_are_limited_per_client_address() {
    let handle = fleet_service::endpoints::metrics_handle();
    let e = env().await;
    let (victim, credential) = enroll(&e, "fst_nat").await;
    let attacker = from(&e, "203.0.113.7:40000");
    let other = from(&e, "198.51.100.9:50000");
    let victim_uri = format!("/api/v1/agents/{victim}/heartbeat");
    let (status, v) = call(&other, &victim_uri, &heartbeat(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");

    until_limited(|| {
        let uri = format!("/api/v1/agents/{}/heartbeat", uuid::Uuid::new_v4());
        let attacker = attacker.clone();
        async move { call(&attacker, &uri, &heartbeat(), Some("fsa_guess")).await }
    })
    .await;
    // Another address still gets its answer from the registry.
    let uri = format!("/api/v1/agents/{}/heartbeat", uuid::Uuid::new_v4());
    assert_eq!(
        call(&other, &uri, &heartbeat(), Some("fsa_guess")).await.0,
        StatusCode::UNAUTHORIZED
    );
    // The victim behind the guesser's address is not locked out.
    let (status, v) = call(&attacker, &victim_uri, &heartbeat(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert!(handle
        .render()
        .contains(fleet_ingest_gateway::metrics::AUTH_FAILURES));
}

/// Behind a reverse proxy, X-Forwarded-For names the client only when the peer is a
/// listed `trusted-proxies` address.
#[tokio::test]
async fn forwarded_for_is_trusted_only_from_listed_proxies() {
    let e = env_with(GatewayConfig {
        auth: AuthMode::Required,
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("net")],
        ..GatewayConfig::default()
    })
    .await;
    let proxy = from(&e, "10.1.2.3:443");
    until_limited(|| guess_forwarded(&proxy, "192.0.2.1, 10.9.9.9")).await;
    // Another client behind the same proxy is not limited.
    let (status, _) = guess_forwarded(&proxy, "192.0.2.2, 10.9.9.9").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // From an untrusted peer the header is ignored: the peer itself is the client.
    let direct = from(&e, "192.0.2.50:1234");
    let (status, _) = guess_forwarded(&direct, "192.0.2.1").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// A wrong credential for a made-up agent, with `X-Forwarded-For: forwarded`.
async fn guess_forwarded(app: &Router, forwarded: &str) -> (StatusCode, Value) {
    let req = Request::post(format!("/api/v1/agents/{}/heartbeat", uuid::Uuid::new_v4()))
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer fsa_guess")
        .header("x-forwarded-for", forwarded)
        .body(Body::from(heartbeat().to_string()))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Finding 4: the body is read (and inflated) only once the caller is authenticated. The
/// body here is a gzip bomb (8 MiB of JSON, more than max-body-bytes once inflated): an
/// enrolled agent sending it gets 413, a stranger 401 without a byte of it read.
#[tokio::test]
async fn an_unauthenticated_body_is_not_read() {
    use std::io::Write as _;
    let e = env().await;
    let (agent_id, credential) = enroll(&e, "fst_bomb").await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(b"{\"reports\": [").expect("gzip");
    gz.write_all(&vec![b' '; 8 << 20]).expect("gzip");
    gz.write_all(b"]}").expect("gzip");
    let bomb = gz.finish().expect("gzip");
    let send = |bearer: Option<String>| {
        let app = e.app.clone();
        let bomb = bomb.clone();
        let uri = format!("/api/v1/agents/{agent_id}/metrics");
        async move {
            let read = Arc::new(AtomicUsize::new(0));
            let counter = read.clone();
            let body = futures::stream::once(async move {
                counter.fetch_add(bomb.len(), Ordering::SeqCst);
                Ok::<_, std::io::Error>(axum::body::Bytes::from(bomb))
            });
            let mut req = Request::post(uri)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "gzip");
            if let Some(b) = bearer {
                req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
            }
            let resp = app
                .oneshot(req.body(Body::from_stream(body)).expect("request"))
                .await
                .expect("response");
            (resp.status(), read.load(Ordering::SeqCst))
        }
    };
    let (status, read) = send(None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(read, 0, "the body of an unauthenticated request was read");
    let (status, read) = send(Some("fsa_wrong".into())).await;
    assert_eq!((status, read), (StatusCode::UNAUTHORIZED, 0));
    let (status, read) = send(Some(credential)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(read > 0);
}

/// Every registration is a registry transaction: limited per client address.
#[tokio::test]
async fn registration_is_rate_limited_per_client_address() {
    let e = env().await;
    let a = from(&e, "203.0.113.8:1000");
    let b = from(&e, "198.51.100.10:1000");
    let body = register_body("fst_nope");
    until_limited(|| call(&a, "/api/v1/agents/register", &body, None)).await;
    let (status, v) = call(
        &b,
        "/api/v1/agents/register",
        &register_body("fst_nope"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
}

/// Finding 9: with `auth = "off"`, an agent id that has a credential in the registry
/// still needs it; ids never enrolled are accepted as `default-tenant`.
#[tokio::test]
async fn with_auth_off_an_enrolled_agent_still_needs_its_credential() {
    let e = env_with(GatewayConfig {
        auth: AuthMode::Off,
        ..GatewayConfig::default()
    })
    .await;
    let (agent_id, credential) = enroll(&e, "fst_off").await;
    let uri = format!("/api/v1/agents/{agent_id}/heartbeat");
    let (status, v) = call(&e.app, &uri, &heartbeat(), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    let (status, v) = call(&e.app, &uri, &heartbeat(), Some(&credential)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (status, v) = call(
        &e.app,
        "/api/v1/agents/never-enrolled/heartbeat",
        &heartbeat(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    // Nor through the WebSocket upgrade.
    let req = Request::get("/api/v1/agents/ws")
        .header(fleet_schemas::api::AGENT_ID_HEADER, agent_id.as_str())
        .body(Body::empty())
        .expect("request");
    let resp = e.app.clone().oneshot(req).await.expect("response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Finding 9: deactivation closes the agent's socket even when AgentDeactivated never
/// reaches the gateway (its write failed): the socket's credential is checked again
/// every `auth-cache`.
#[tokio::test]
async fn a_deactivated_agents_socket_closes_without_the_event() {
    let e = env_with(GatewayConfig {
        auth: AuthMode::Required,
        auth_cache: std::time::Duration::from_secs(1),
        ..GatewayConfig::default()
    })
    .await;
    let (agent_id, credential) = enroll(&e, "fst_ws").await;
    let mut headers = axum::http::HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {credential}").parse().expect("header"),
    );
    let who = e
        .state
        .authenticator()
        .authenticate(&agent_id, &headers)
        .await
        .expect("authenticated");
    let mut agent = common::Agent::connect_as(&e.state, &agent_id, who).await;
    assert!(e
        .registry
        .deactivate_agent(None, &agent_id, now())
        .await
        .expect("deactivate"));
    // No watcher runs and no event is written.
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket stayed open"
        );
        match agent.next_frame().await {
            Some(Message::Close(Some(f))) => {
                assert_eq!(f.code, 1008);
                break;
            }
            Some(_) => continue,
            None => panic!("closed without a close frame"),
        }
    }
    assert!(!e.state.hub().is_connected(&agent_id));
}
