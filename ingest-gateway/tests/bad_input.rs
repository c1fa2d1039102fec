//! A corpus of malformed requests: each gets a clear 4xx in the error format, naming the
//! field where one is to blame, and the gateway keeps serving (no panic, nothing written).

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use fleet_ingest_gateway::{app, AuthMode, GatewayConfig, GatewayState};
use fleet_registry::{hash_secret, NewAgent, NewToken, Registry};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

fn report() -> Value {
    json!({"collected_at": now(), "cpu_percent": 5.0, "memory_used_bytes": 1, "memory_total_bytes": 2,
           "memory_percent": 50.0, "load_1": 0.1, "load_5": 0.1, "load_15": 0.1, "uptime_seconds": 5})
}

fn with(mut v: Value, key: &str, x: Value) -> Value {
    v[key] = x;
    v
}

struct Case {
    name: &'static str,
    path: String,
    body: Vec<u8>,
    bearer: Option<String>,
    status: StatusCode,
    field: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &str,
    body: Value,
    status: StatusCode,
    field: Option<&'static str>,
) -> Case {
    Case {
        name,
        path: path.into(),
        body: serde_json::to_vec(&body).expect("json"),
        bearer: None,
        status,
        field,
    }
}

#[tokio::test]
async fn every_malformed_request_gets_a_clear_4xx() {
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
        fleet_registry::open_registry(dir.path().join("reg.db").to_str().expect("utf-8"))
            .await
            .expect("registry");
    let now_us = fleet_schemas::time::now_micros();
    let acme = registry
        .create_tenant("Acme", now_us)
        .await
        .expect("tenant");
    let other = registry
        .create_tenant("Other", now_us)
        .await
        .expect("tenant");
    for (tenant, secret, agent, cred) in [
        (&acme, "fst_a", "agent-a", "fsa_a"),
        (&other, "fst_b", "agent-b", "fsa_b"),
    ] {
        let t = NewToken {
            tenant_id: tenant.tenant_id.clone(),
            location_id: None,
            device_name: None,
            expires_at: now_us + 3_600_000_000,
            created_by: "t".into(),
            created_at: now_us,
        };
        registry
            .create_token(&t, hash_secret(secret))
            .await
            .expect("token");
        let a = NewAgent {
            agent_id: agent.into(),
            credential_hash: hash_secret(cred),
            facts_json: "{}".into(),
            now: now_us,
        };
        registry
            .redeem_token(hash_secret(secret), &a)
            .await
            .expect("redeem")
            .expect("redeemed");
    }
    let cfg = GatewayConfig {
        auth: AuthMode::Required,
        max_body_bytes: 64 * 1024,
        ..GatewayConfig::default()
    };
    let router = app(GatewayState::with_registry(
        log.clone(),
        fleet_schemas::Wire::plain(),
        Some(registry),
        cfg,
    ));
    let m = "/api/v1/agents/agent-a/metrics";
    let future = (chrono::Utc::now() + chrono::Duration::days(1)).to_rfc3339();
    let huge: Vec<Value> = (0..2000).map(|_| report()).collect();
    let mut cases = vec![
        case(
            "wrong type",
            m,
            json!({"reports": [with(report(), "cpu_percent", json!("high"))]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0].cpu_percent"),
        ),
        case(
            "missing field",
            m,
            json!({"reports": [{"collected_at": now()}]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0]"),
        ),
        case(
            "not an object",
            m,
            json!([1, 2, 3]),
            StatusCode::BAD_REQUEST,
            Some("body"),
        ),
        case(
            "reports not a list",
            m,
            json!({"reports": 5}),
            StatusCode::BAD_REQUEST,
            Some("reports"),
        ),
        case(
            "empty batch",
            m,
            json!({"reports": []}),
            StatusCode::BAD_REQUEST,
            Some("reports"),
        ),
        case(
            "negative percentage",
            m,
            json!({"reports": [with(report(), "memory_percent", json!(-1.0))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].memory_percent"),
        ),
        case(
            "percentage over 100",
            m,
            json!({"reports": [with(report(), "cpu_percent", json!(100.5))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].cpu_percent"),
        ),
        case(
            "unknown sshd PermitRootLogin",
            m,
            json!({"reports": [with(report(), "security", json!({"ssh_permit_root_login": "sometimes"}))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].security.ssh_permit_root_login"),
        ),
        case(
            "negative signature age",
            m,
            json!({"reports": [with(report(), "security", json!({"antivirus_signature_age_hours": -1.0}))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].security.antivirus_signature_age_hours"),
        ),
        case(
            "signature age beyond ten years",
            m,
            json!({"reports": [with(report(), "security", json!({"antivirus_signature_age_hours": 1e9}))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].security.antivirus_signature_age_hours"),
        ),
        case(
            "reboot flag not a boolean",
            m,
            json!({"reports": [with(report(), "security", json!({"reboot_required": "yes"}))]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0].security.reboot_required"),
        ),
        case(
            "unknown posture field",
            m,
            json!({"reports": [with(report(), "security", json!({"selinux": "enforcing"}))]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0].security.selinux"),
        ),
        case(
            "negative counter",
            m,
            json!({"reports": [with(report(), "uptime_seconds", json!(-5))]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0].uptime_seconds"),
        ),
        case(
            "far future",
            m,
            json!({"reports": [with(report(), "collected_at", json!(future))]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("reports[0].collected_at"),
        ),
        case(
            "bad timestamp",
            m,
            json!({"reports": [with(report(), "collected_at", json!("yesterday"))]}),
            StatusCode::BAD_REQUEST,
            Some("reports[0].collected_at"),
        ),
        case(
            "huge body",
            m,
            json!({"reports": huge}),
            StatusCode::PAYLOAD_TOO_LARGE,
            None,
        ),
        case(
            "bad agent id",
            "/api/v1/agents/..%2F..%2Fetc/metrics",
            json!({"reports": [report()]}),
            StatusCode::BAD_REQUEST,
            Some("agent_id"),
        ),
        case(
            "unknown agent",
            "/api/v1/agents/nobody/metrics",
            json!({"reports": [report()]}),
            StatusCode::UNAUTHORIZED,
            None,
        ),
        case(
            "bad heartbeat",
            "/api/v1/agents/agent-a/heartbeat",
            json!({"sent_at": now(), "sequence": "one", "uptime_seconds": 1, "agent_version": "x"}),
            StatusCode::BAD_REQUEST,
            Some("sequence"),
        ),
        case(
            "bad event severity",
            "/api/v1/agents/agent-a/events",
            json!({"events": [{"occurred_at": now(), "kind": "x", "severity": "doom", "message": ""}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("events[0].severity"),
        ),
        case(
            "replayed registration token",
            "/api/v1/agents/register",
            json!({"token": "fst_a", "facts": {"hostname": "h", "os_type": "linux", "agent_version": "1"}}),
            StatusCode::CONFLICT,
            Some("token"),
        ),
        case(
            "unknown registration token",
            "/api/v1/agents/register",
            json!({"token": "fst_zzz", "facts": {"hostname": "h", "os_type": "linux", "agent_version": "1"}}),
            StatusCode::UNAUTHORIZED,
            Some("token"),
        ),
    ];
    for c in &mut cases {
        if c.path.starts_with("/api/v1/agents/agent-a/") {
            c.bearer = Some("fsa_a".into());
        }
    }
    // NaN and invalid UTF-8 cannot be written as JSON values: raw bodies.
    cases.push(Case {
        name: "NaN",
        path: m.into(),
        body: br#"{"reports": [{"collected_at": "2026-01-01T00:00:00Z", "cpu_percent": NaN}]}"#
            .to_vec(),
        bearer: Some("fsa_a".into()),
        status: StatusCode::BAD_REQUEST,
        field: None,
    });
    cases.push(Case {
        name: "invalid UTF-8",
        path: m.into(),
        body: b"{\"reports\": [\"\xff\xfe\"]}".to_vec(),
        bearer: Some("fsa_a".into()),
        status: StatusCode::BAD_REQUEST,
        field: None,
    });
    cases.push(Case {
        name: "another tenant's credential",
        path: m.into(),
        body: serde_json::to_vec(&json!({"reports": [report()]})).expect("json"),
        bearer: Some("fsa_b".into()),
        status: StatusCode::UNAUTHORIZED,
        field: None,
    });
    cases.push(Case {
        name: "no credential",
        path: m.into(),
        body: serde_json::to_vec(&json!({"reports": [report()]})).expect("json"),
        bearer: None,
        status: StatusCode::UNAUTHORIZED,
        field: None,
    });

    for c in cases {
        let mut req =
            Request::post(c.path.as_str()).header(header::CONTENT_TYPE, "application/json");
        if let Some(b) = &c.bearer {
            req = req.header(header::AUTHORIZATION, format!("Bearer {b}"));
        }
        let resp = router
            .clone()
            .oneshot(req.body(Body::from(c.body)).expect("req"))
            .await
            .expect("resp");
        let status = resp.status();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert_eq!(status, c.status, "{}: {v}", c.name);
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{}: error format: {v}",
            c.name
        );
        if let Some(f) = c.field {
            assert_eq!(v["error"]["field"], f, "{}: {v}", c.name);
        }
    }
    // Nothing was written, and the gateway still serves a good request.
    assert_eq!(
        log.end_offsets(fleet_schemas::topics::METRICS)
            .await
            .expect("ends")
            .iter()
            .sum::<i64>(),
        0
    );
    let good = Request::post(m)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::AUTHORIZATION, "Bearer fsa_a")
        .body(Body::from(
            serde_json::to_vec(&json!({"reports": [report()]})).expect("json"),
        ))
        .expect("req");
    assert_eq!(
        router.oneshot(good).await.expect("resp").status(),
        StatusCode::ACCEPTED
    );
}
