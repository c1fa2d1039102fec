//! The gateway's HTTP contract, against the real embedded event log: what is accepted is
//! in the log as Avro; what is refused gets a 4xx naming the field; a log that cannot
//! take writes gives 503 with Retry-After.

mod common;

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::{ConsumerOptions, EventLog};
use fleet_ingest_gateway::{app, GatewayConfig, GatewayState};
use fleet_schemas::{codec, topics, MetricReport};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

async fn embedded() -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("open");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    (dir, log)
}

fn report(collected_at: &str, cpu: Value) -> Value {
    json!({
        "collected_at": collected_at,
        "cpu_percent": cpu,
        "memory_used_bytes": 1_000, "memory_total_bytes": 4_000, "memory_percent": 25.0,
        "disks": [{"mount": "/", "used_bytes": 10, "total_bytes": 100, "percent": 10.0}],
        "load_1": 0.5, "load_5": 0.4, "load_15": 0.3, "uptime_seconds": 100,
        "services": [{"name": "sshd", "status": "running", "pid": 10}],
        "custom": {"queue_depth": 3.0}
    })
}

/// Unauthenticated gateway (auth = off); the auth tests build their own.
fn open_config() -> GatewayConfig {
    GatewayConfig {
        auth: fleet_ingest_gateway::AuthMode::Off,
        ..GatewayConfig::default()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

async fn post(
    app: &Router,
    agent: &str,
    body: Vec<u8>,
    extra: &[(&str, &str)],
) -> (StatusCode, Value, Option<String>) {
    let mut req = Request::post(format!("/api/v1/agents/{agent}/metrics"))
        .header(header::CONTENT_TYPE, "application/json");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let retry = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value, retry)
}

async fn read_all(log: &Arc<dyn EventLog>) -> Vec<MetricReport> {
    let ends = log.end_offsets(topics::METRICS).await.expect("ends");
    let total: i64 = ends.iter().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut c = log
        .subscribe(
            &format!("t-{}", uuid_like()),
            &[topics::METRICS],
            ConsumerOptions::default(),
        )
        .await
        .expect("subscribe");
    let mut out = Vec::new();
    while (out.len() as i64) < total {
        for r in c.poll(100, Duration::from_secs(5)).await.expect("poll") {
            out.push(
                codec::Wire::plain()
                    .decode_known::<MetricReport>(&r.value)
                    .expect("avro"),
            );
        }
    }
    out
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[tokio::test]
async fn valid_batch_is_written_as_avro_and_acknowledged() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let t1 = now();
    let body =
        json!({"reports": [report(&t1, json!(12.5)), report("2026-01-01T00:00:00Z", json!(99.0))]});
    // The second report is old but within max-age only if "now" is near it; use two fresh ones.
    let body2 = json!({"reports": [report(&t1, json!(12.5)), report(&now(), json!(99.0))]});
    let _ = body;
    let (status, v, _) = post(
        &app,
        "agent-1",
        serde_json::to_vec(&body2).expect("json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 2);
    assert_eq!(v["rejected"], json!([]));
    let written = read_all(&log).await;
    assert_eq!(written.len(), 2);
    for r in &written {
        assert_eq!(r.agent_id, "agent-1");
        assert_eq!(r.tenant_id, "default");
        assert_eq!(r.disks[0].mount, "/");
        assert_eq!(r.custom.get("queue_depth"), Some(&3.0));
    }
    let mut cpus: Vec<f64> = written.iter().map(|r| r.cpu_percent).collect();
    cpus.sort_by(f64::total_cmp);
    assert_eq!(cpus, vec![12.5, 99.0]);
}

#[tokio::test]
async fn repeated_report_gets_the_same_event_id() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let t = now();
    let body = serde_json::to_vec(&json!({"reports": [report(&t, json!(1.0))]})).expect("json");
    assert_eq!(
        post(&app, "agent-r", body.clone(), &[]).await.0,
        StatusCode::ACCEPTED
    );
    assert_eq!(
        post(&app, "agent-r", body, &[]).await.0,
        StatusCode::ACCEPTED
    );
    let written = read_all(&log).await;
    assert_eq!(written.len(), 2);
    assert_eq!(
        written[0].event_id, written[1].event_id,
        "downstream deduplicates on event id"
    );
}

#[tokio::test]
async fn wrong_type_names_the_field() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let body = json!({"reports": [report(&now(), json!(1.0)), report(&now(), json!("high"))]});
    let (status, v, _) = post(&app, "a", serde_json::to_vec(&body).expect("json"), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "invalid_field");
    assert_eq!(v["error"]["field"], "reports[1].cpu_percent");
    assert!(
        read_all(&log).await.is_empty(),
        "a body that does not parse writes nothing"
    );
}

#[tokio::test]
async fn missing_field_unknown_field_and_bad_json() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log,
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let mut r = report(&now(), json!(1.0));
    r.as_object_mut().expect("object").remove("memory_percent");
    let (status, v, _) = post(
        &app,
        "a",
        serde_json::to_vec(&json!({"reports": [r]})).expect("json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "reports[0]");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("memory_percent"),
        "{v}"
    );

    let mut r = report(&now(), json!(1.0));
    r.as_object_mut()
        .expect("object")
        .insert("cpu_pct".into(), json!(1));
    let (status, v, _) = post(
        &app,
        "a",
        serde_json::to_vec(&json!({"reports": [r]})).expect("json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("cpu_pct"),
        "{v}"
    );

    let (status, v, _) = post(&app, "a", b"{\"reports\": [".to_vec(), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("malformed JSON"),
        "{v}"
    );

    let (status, v, _) = post(&app, "a", vec![0xff, 0xfe, 0x00], &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "invalid UTF-8: {v}");

    let (status, v, _) = post(
        &app,
        "a",
        serde_json::to_vec(&json!({"reports": []})).expect("json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "reports");
}

#[tokio::test]
async fn invalid_values_are_refused_per_item_and_valid_ones_kept() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let future = (chrono::Utc::now() + chrono::Duration::days(2)).to_rfc3339();
    let mut negative_disk = report(&now(), json!(1.0));
    negative_disk["disks"][0]["percent"] = json!(-3.0);
    let body = json!({"reports": [
        report(&now(), json!(150.0)),
        report(&now(), json!(5.0)),
        report(&future, json!(5.0)),
        negative_disk,
    ]});
    let (status, v, _) = post(&app, "a", serde_json::to_vec(&body).expect("json"), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1);
    let fields: Vec<&str> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        vec![
            "reports[0].cpu_percent",
            "reports[2].collected_at",
            "reports[3].disks[0].percent"
        ]
    );
    assert_eq!(read_all(&log).await.len(), 1);

    // Nothing valid: 422 naming the first field.
    let body = json!({"reports": [report(&now(), json!(101.0))]});
    let (status, v, _) = post(&app, "a", serde_json::to_vec(&body).expect("json"), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["field"], "reports[0].cpu_percent");
}

/// Custom metrics with labels travel as `name{labels}` keys in canonical series-text
/// form: accepted and written as sent; a key that is not canonical is refused naming it.
#[tokio::test]
async fn labelled_custom_metrics_are_checked_and_written() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let labelled = r#"queue_depth{queue="high",region="eu"}"#;
    let mut good = report(&now(), json!(1.0));
    good["custom"][labelled] = json!(9.0);
    let mut unsorted = report(&now(), json!(1.0));
    unsorted["custom"][r#"queue_depth{region="eu",queue="high"}"#] = json!(1.0);
    let mut bad_escape = report(&now(), json!(1.0));
    bad_escape["custom"][r#"m{a="\q"}"#] = json!(1.0);
    let mut colon = report(&now(), json!(1.0));
    colon["custom"]["a:b"] = json!(1.0);
    let body = json!({"reports": [good, unsorted, bad_escape, colon]});
    let (status, v, _) = post(&app, "a", serde_json::to_vec(&body).expect("json"), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1, "{v}");
    let rejected = v["rejected"].as_array().expect("rejected");
    let fields: Vec<&str> = rejected
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        vec![
            r#"reports[1].custom.queue_depth{region="eu",queue="high"}"#,
            r#"reports[2].custom.m{a="\q"}"#,
            "reports[3].custom.a:b",
        ],
        "{v}"
    );
    assert!(
        rejected[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("sorted")),
        "{v}"
    );
    let written = read_all(&log).await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].custom.get(labelled), Some(&9.0));
    let samples = fleet_schemas::samples::samples(&written[0]);
    assert!(samples.iter().any(|s| s.metric == "custom.queue_depth"
        && s.subject.as_deref() == Some(r#"{queue="high",region="eu"}"#)
        && s.value == 9.0));
}

#[tokio::test]
async fn the_security_posture_is_checked_and_written_whole() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let mut full = report(&now(), json!(1.0));
    full["security"] = json!({
        "firewall_enabled": false, "pending_updates": 5, "pending_security_updates": 2,
        "reboot_required": true, "ssh_permit_root_login": "prohibit-password",
        "ssh_password_authentication": true, "antivirus_present": true,
        "antivirus_signature_age_hours": 49.25
    });
    // A v1 agent's posture: the v2 fields absent.
    let mut v1 = report(&now(), json!(2.0));
    v1["security"] =
        json!({"firewall_enabled": true, "pending_updates": 0, "pending_security_updates": 0});
    let mut too_old = report(&now(), json!(3.0));
    too_old["security"] = json!({"antivirus_signature_age_hours": 87_600.5});
    let mut shouting = report(&now(), json!(4.0));
    shouting["security"] = json!({"ssh_permit_root_login": "YES"});
    let body = json!({"reports": [full, v1, too_old, shouting]});
    let (status, v, _) = post(&app, "a", serde_json::to_vec(&body).expect("json"), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 2, "{v}");
    let fields: Vec<&str> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "reports[2].security.antivirus_signature_age_hours",
            "reports[3].security.ssh_permit_root_login"
        ],
        "{v}"
    );
    let mut written = read_all(&log).await;
    written.sort_by(|a, b| a.cpu_percent.total_cmp(&b.cpu_percent));
    assert_eq!(written.len(), 2);
    assert_eq!(
        written[0].security,
        Some(fleet_schemas::SecurityPosture {
            firewall_enabled: Some(false),
            pending_updates: Some(5),
            pending_security_updates: Some(2),
            reboot_required: Some(true),
            ssh_permit_root_login: Some("prohibit-password".into()),
            ssh_password_authentication: Some(true),
            antivirus_present: Some(true),
            antivirus_signature_age_hours: Some(49.25),
        })
    );
    assert_eq!(
        written[1].security,
        Some(fleet_schemas::SecurityPosture {
            firewall_enabled: Some(true),
            pending_updates: Some(0),
            pending_security_updates: Some(0),
            ..Default::default()
        })
    );
}

#[tokio::test]
async fn bad_agent_id_content_type_and_size() {
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        max_body_bytes: 2048,
        ..open_config()
    };
    let app = app(GatewayState::new(log, fleet_schemas::Wire::plain(), cfg));
    let body = serde_json::to_vec(&json!({"reports": [report(&now(), json!(1.0))]})).expect("json");
    let (status, v, _) = post(&app, "bad%20id", body.clone(), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "agent_id");

    let resp = app
        .clone()
        .oneshot(
            Request::post("/api/v1/agents/a/metrics")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(body))
                .expect("req"),
        )
        .await
        .expect("resp");
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let many: Vec<Value> = (0..40).map(|_| report(&now(), json!(1.0))).collect();
    let (status, v, _) = post(
        &app,
        "a",
        serde_json::to_vec(&json!({"reports": many})).expect("json"),
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["code"], "body_too_large");
}

#[tokio::test]
async fn gzip_body_is_accepted() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let body = serde_json::to_vec(&json!({"reports": [report(&now(), json!(7.0))]})).expect("json");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&body).expect("gzip");
    let (status, v, _) = post(
        &app,
        "a",
        gz.finish().expect("gzip"),
        &[("content-encoding", "gzip")],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(read_all(&log).await[0].cpu_percent, 7.0);
}

#[tokio::test]
async fn log_down_gives_503_with_retry_after() {
    let app = app(GatewayState::new(
        Arc::new(common::DownLog),
        fleet_schemas::Wire::plain(),
        GatewayConfig {
            retry_after: std::time::Duration::from_secs(7),
            ..open_config()
        },
    ));
    let body = serde_json::to_vec(&json!({"reports": [report(&now(), json!(1.0))]})).expect("json");
    let (status, v, retry) = post(&app, "a", body, &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["code"], "unavailable");
    assert_eq!(retry.as_deref(), Some("7"));
}

#[tokio::test]
async fn real_listener_roundtrip() {
    let (_d, log) = embedded().await;
    let router = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ))
    .merge(fleet_service::endpoints::router(
        "gateway",
        Arc::new(|| Ok(())),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{addr}/api/v1/agents/net-agent/metrics"))
        .json(&json!({"reports": [report(&now(), json!(3.0))]}))
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let hb =
        json!({"sent_at": now(), "sequence": 1, "uptime_seconds": 5, "agent_version": "0.1.0"});
    let resp = client
        .post(format!("http://{addr}/api/v1/agents/net-agent/heartbeat"))
        .json(&hb)
        .send()
        .await
        .expect("hb");
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let ev = json!({"events": [{"occurred_at": now(), "kind": "service_crashed", "severity": "warning", "message": "nginx died"}]});
    let resp = client
        .post(format!("http://{addr}/api/v1/agents/net-agent/events"))
        .json(&ev)
        .send()
        .await
        .expect("events");
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let inv = json!({"collected_at": now(), "source": "dpkg", "packages": [{"name": "bash", "version": "5.2"}]});
    let resp = client
        .post(format!("http://{addr}/api/v1/agents/net-agent/inventory"))
        .json(&inv)
        .send()
        .await
        .expect("inventory");
    assert_eq!(resp.status(), reqwest::StatusCode::ACCEPTED);
    let metrics = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in fleet_ingest_gateway::metrics::ALL {
        if name.ends_with("_failures_total")
            || name.ends_with("_rejected_total")
            || name.ends_with("_refused_total")
            || name.ends_with("_rate_limited_total")
            || name.ends_with("_registrations_total")
            || name.contains("_ws_")
            || name.contains("_command")
            || name.contains("_samples_")
        {
            // only emitted once something fails, or by enrollment (tests/auth.rs), the
            // WebSocket (tests/ws.rs), commands (tests/commands.rs) or the write
            // protocols (e2e/tests/standard_protocols.rs reads it from /metrics)
            continue;
        }
        assert!(metrics.contains(name), "/metrics lacks {name}");
    }
    assert_eq!(read_all(&log).await[0].agent_id, "net-agent");
    server.abort();
}

async fn read_topic<T: fleet_schemas::Record>(log: &Arc<dyn EventLog>) -> Vec<T> {
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
async fn heartbeat_and_events_are_written() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let hb =
        json!({"sent_at": now(), "sequence": 7, "uptime_seconds": 50, "agent_version": "0.1.0"});
    let (status, v, _) = post_to(
        &app,
        "/api/v1/agents/a1/heartbeat",
        serde_json::to_vec(&hb).expect("json"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let hbs = read_topic::<fleet_schemas::Heartbeat>(&log).await;
    assert_eq!(
        (hbs.len(), hbs[0].sequence, hbs[0].agent_id.as_str()),
        (1, 7, "a1")
    );

    let events = json!({"events": [
        {"occurred_at": now(), "kind": "login_failed", "severity": "critical", "message": "ssh root", "attributes": {"user": "root"}},
        {"occurred_at": now(), "kind": "Bad Kind!", "severity": "warning", "message": "x"},
        {"occurred_at": now(), "kind": "ok", "severity": "fatal", "message": "x"}
    ]});
    let (status, v, _) = post_to(
        &app,
        "/api/v1/agents/a1/events",
        serde_json::to_vec(&events).expect("json"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["accepted"], 1);
    let fields: Vec<&str> = v["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, vec!["events[1].kind", "events[2].severity"]);
    let evs = read_topic::<fleet_schemas::AgentEvent>(&log).await;
    assert_eq!(evs.len(), 1);
    assert_eq!(
        evs[0].attributes.get("user").map(String::as_str),
        Some("root")
    );
    assert_eq!(evs[0].severity, fleet_schemas::EventSeverity::Critical);

    let bad = json!({"sent_at": "2020-01-01T00:00:00Z", "sequence": 1, "uptime_seconds": 1, "agent_version": "0.1.0"});
    let (status, v, _) = post_to(
        &app,
        "/api/v1/agents/a1/heartbeat",
        serde_json::to_vec(&bad).expect("json"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"]["field"], "sent_at");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let (_d, log) = embedded().await;
    let cfg = GatewayConfig {
        rate_limit_per_second: 1,
        rate_limit_burst: 2,
        ..open_config()
    };
    let app = app(GatewayState::new(log, fleet_schemas::Wire::plain(), cfg));
    let hb = serde_json::to_vec(
        &json!({"sent_at": now(), "sequence": 1, "uptime_seconds": 1, "agent_version": "0.1.0"}),
    )
    .expect("json");
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let (status, v, retry) = post_to(&app, "/api/v1/agents/busy/heartbeat", hb.clone()).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(v["error"]["code"], "rate_limited");
            assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));
        }
        statuses.push(status);
    }
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // Another agent has its own bucket.
    assert_eq!(
        post_to(&app, "/api/v1/agents/calm/heartbeat", hb).await.0,
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn auth_required_without_registry_refuses_unauthenticated() {
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log,
        fleet_schemas::Wire::plain(),
        GatewayConfig::default(),
    ));
    let body = serde_json::to_vec(&json!({"reports": [report(&now(), json!(1.0))]})).expect("json");
    let (status, v, _) = post(&app, "a", body, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("enroll"),
        "{v}"
    );
}

async fn post_to(app: &Router, uri: &str, body: Vec<u8>) -> (StatusCode, Value, Option<String>) {
    let req = Request::post(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("response");
    let status = resp.status();
    let retry = resp
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        retry,
    )
}

/// A report with `n` disks named `{prefix}{i}`.
fn report_with_mounts(prefix: &str, n: usize) -> Value {
    let mut r = report(&now(), json!(1.0));
    r["disks"] = (0..n)
        .map(|i| json!({"mount": format!("{prefix}{i}"), "used_bytes": 1, "total_bytes": 2, "percent": 50.0}))
        .collect();
    r
}

/// Finding 6: one agent sending fresh mount names batch after batch used to create a new
/// series for each. Past the per-agent limit of distinct names (1024 by default) a report
/// with a new name is refused, naming the field; names already seen, and other agents,
/// are still accepted.
#[tokio::test]
async fn one_agent_cannot_create_subjects_without_bound() {
    let handle = fleet_service::endpoints::metrics_handle();
    let (_d, log) = embedded().await;
    let app = app(GatewayState::new(
        log.clone(),
        fleet_schemas::Wire::plain(),
        open_config(),
    ));
    let batch = |r: Value| serde_json::to_vec(&json!({ "reports": [r] })).expect("json");
    for b in 0..4 {
        let (status, v, _) = post(
            &app,
            "churn",
            batch(report_with_mounts(&format!("/m{b}_"), 256)),
            &[],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "batch {b}: {v}");
        assert_eq!(v["accepted"], 1);
    }
    let (status, v, _) = post(&app, "churn", batch(report_with_mounts("/m4_", 256)), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "reports[0].disks[0].mount", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("distinct"),
        "{v}"
    );
    // Known names still pass; so does another agent.
    let (status, v, _) = post(&app, "churn", batch(report_with_mounts("/m0_", 256)), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (status, v, _) = post(&app, "calm", batch(report_with_mounts("/m4_", 256)), &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    // The per-report limit: more entries than allowed in one list.
    let (status, v, _) = post(&app, "calm", batch(report_with_mounts("/x", 257)), &[]).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["field"], "reports[0].disks", "{v}");
    assert_eq!(read_all(&log).await.len(), 6);
    assert!(handle
        .render()
        .contains(fleet_ingest_gateway::metrics::SUBJECTS_REFUSED));
}
