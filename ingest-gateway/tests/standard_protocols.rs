//! The standard write protocols through the gateway's real routes, over a real SQLite
//! registry and the embedded log: a remote-write body captured from Prometheus, OTLP
//! protobuf (gzip) and JSON bodies made by the OpenTelemetry Python SDK, Influx lines
//! (both write APIs, with a precision), each with an ingest key. What the log holds on
//! `fleet.samples.v1` afterwards must be exactly the samples the body carries (the
//! protocol parser's output), for the key's tenant, each record keyed by its series'
//! shard and within `samples-per-record`. Refusals: a malformed body is 400 naming the
//! field, a body over a limit 413 naming the limit, an unknown encoding 415, no key 401:
//! and none of them writes anything.

mod common;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_ingest_gateway::{GatewayConfig, GatewayState};
use fleet_protocols::{influx, otlp, remote_write, shard, Limits};
use fleet_registry::{
    hash_secret, new_secret, Database, NewIngestKey, Registry, SqlRegistry, INGEST_KEY_PREFIX,
};
use fleet_schemas::{LabeledSample, SampleBatch, SampleSource};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tower::ServiceExt as _;

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    app: Router,
    tenant: String,
    key: String,
    config: GatewayConfig,
}

async fn env(config: GatewayConfig) -> Env {
    let (dir, log) = common::embedded().await;
    let db = Database::connect(dir.path().join("registry.db").to_str().expect("utf-8"))
        .await
        .expect("database");
    let registry: Arc<dyn Registry> = Arc::new(SqlRegistry::open(db).await.expect("registry"));
    let now = fleet_schemas::time::now_micros();
    let tenant = registry.create_tenant("A", now).await.expect("tenant");
    let key = new_secret(INGEST_KEY_PREFIX);
    registry
        .create_ingest_key(
            &NewIngestKey {
                tenant_id: tenant.tenant_id.clone(),
                name: "collectors".into(),
                description: None,
                created_by: "test".into(),
                created_at: now,
            },
            hash_secret(&key),
            &key[key.len() - 4..],
        )
        .await
        .expect("key");
    let state = GatewayState::with_registry(
        log.clone(),
        fleet_schemas::Wire::plain(),
        Some(registry),
        config.clone(),
    );
    let app = fleet_ingest_gateway::app(state).layer(MockConnectInfo(std::net::SocketAddr::from(
        ([127, 0, 0, 1], 40000),
    )));
    Env {
        _dir: dir,
        log,
        app,
        tenant: tenant.tenant_id,
        key,
        config,
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../protocols/tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).expect("gzip");
    enc.finish().expect("gzip")
}

/// Status, headers and body of a POST.
async fn post(
    e: &Env,
    uri: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let mut req = Request::post(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = e
        .app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

/// The gateway's error object of a refusal.
fn error(body: &[u8]) -> Value {
    json(body)["error"].clone()
}

/// Every sample on the topic, after checking each record's tenant, source, key and size.
async fn stored(e: &Env, source: SampleSource) -> Vec<LabeledSample> {
    let records = common::read_topic::<SampleBatch>(&e.log).await;
    let mut out = Vec::new();
    for r in records {
        assert_eq!(r.tenant_id, e.tenant);
        assert_eq!(r.source, source);
        assert!(!r.samples.is_empty());
        assert!(
            r.samples.len() <= e.config.samples_per_record,
            "{} samples in one record",
            r.samples.len()
        );
        for s in &r.samples {
            let shard = shard::shard_of(&s.metric, &s.labels, e.config.sample_shards);
            assert_eq!(r.partition_key, SampleBatch::key_for(&e.tenant, shard));
        }
        out.extend(r.samples);
    }
    out
}

/// Samples in a comparable order (the log groups them by shard).
fn sorted(mut v: Vec<LabeledSample>) -> Vec<String> {
    let mut out: Vec<String> = v.drain(..).map(|s| format!("{s:?}")).collect();
    out.sort();
    out
}

fn small_records() -> GatewayConfig {
    GatewayConfig {
        samples_per_record: 7,
        ..GatewayConfig::default()
    }
}

#[tokio::test]
async fn a_prometheus_remote_write_body_lands_on_the_topic_sample_for_sample() {
    let e = env(small_records()).await;
    let body = fixture("remote_write_prometheus.snappy");
    let want = remote_write::parse(&body, remote_write::Version::V1, &Limits::default())
        .expect("fixture parses")
        .samples;
    assert!(want.len() > 100, "{} samples", want.len());
    let auth = format!("Bearer {}", e.key);
    let (status, _, text) = post(
        &e,
        "/api/v1/write",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
            ("x-prometheus-remote-write-version", "0.1.0"),
        ],
        body,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(
        sorted(stored(&e, SampleSource::PrometheusRemoteWrite).await),
        sorted(want)
    );
}

#[tokio::test]
async fn otlp_protobuf_gzipped_and_json_land_on_the_topic() {
    let e = env(GatewayConfig::default()).await;
    let pb = fixture("otlp_metrics.pb");
    let want = otlp::parse(&pb, otlp::Encoding::Protobuf, &Limits::default())
        .expect("fixture parses")
        .samples;
    assert!(!want.is_empty());
    let auth = format!("Bearer {}", e.key);
    let (status, headers, body) = post(
        &e,
        "/v1/metrics",
        &[
            ("authorization", &auth),
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "gzip"),
        ],
        gzip(&pb),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes()),
        Some(&b"application/x-protobuf"[..])
    );
    // Everything had a sample form: an empty ExportMetricsServiceResponse.
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(
        sorted(stored(&e, SampleSource::Otlp).await),
        sorted(want.clone())
    );

    let (status, _, body) = post(
        &e,
        "/v1/metrics",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        fixture("otlp_metrics.json"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body), serde_json::json!({}));
    let both = stored(&e, SampleSource::Otlp).await;
    assert_eq!(
        both.len(),
        2 * want.len(),
        "the JSON body carries the same samples"
    );
}

#[tokio::test]
async fn influx_lines_land_on_the_topic_through_both_write_apis() {
    let e = env(GatewayConfig::default()).await;
    let lines = fixture("influx_s.lp");
    let mut want = influx::parse(&lines, influx::Precision::Seconds, 0, &Limits::default())
        .expect("fixture parses")
        .samples;
    assert!(!want.is_empty());
    let token = format!("Token {}", e.key);
    // The v1 API with basic auth (the key as the password) and gzip.
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("telegraf:{}", e.key))
    );
    let v1_in_url = format!("/write?db=x&u=telegraf&p={}&precision=s", e.key);
    let v2_in_url = format!("/api/v2/write?p={}&precision=s", e.key);
    // (why, path, headers, body, status): three writes land, the rest are refused.
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Vec<u8>,
        StatusCode,
    );
    let requests: [Case<'_>; 5] = [
        (
            "v2 with a token",
            "/api/v2/write?org=o&bucket=b&precision=s",
            vec![("authorization", &token)],
            lines.clone(),
            StatusCode::NO_CONTENT,
        ),
        (
            "v1 with basic auth and gzip",
            "/write?db=x&precision=s",
            vec![("authorization", &basic), ("content-encoding", "gzip")],
            gzip(&lines),
            StatusCode::NO_CONTENT,
        ),
        (
            "InfluxDB 1.x clients' query-string credentials, on `/write` only",
            &v1_in_url,
            vec![],
            lines.clone(),
            StatusCode::NO_CONTENT,
        ),
        (
            "v2 takes no key in the URL",
            &v2_in_url,
            vec![],
            lines.clone(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a wrong key in the URL",
            "/write?p=fsi_wrong&precision=s",
            vec![],
            lines.clone(),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    for (why, path, headers, body, want_status) in requests {
        let (status, _, answer) = post(&e, path, &headers, body).await;
        assert_eq!(
            status,
            want_status,
            "{why}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    let once = want.clone();
    want.extend(once.clone());
    want.extend(once);
    assert_eq!(sorted(stored(&e, SampleSource::Influx).await), sorted(want));
}

#[tokio::test]
async fn refused_bodies_name_what_is_wrong_and_write_nothing() {
    let e = env(GatewayConfig {
        protocol_limits: Limits {
            max_samples: 3,
            ..Limits::default()
        },
        ..GatewayConfig::default()
    })
    .await;
    let auth = format!("Bearer {}", e.key);
    // Not snappy: 400 (remote-write senders drop it rather than retry).
    let (status, _, body) = post(
        &e,
        "/api/v1/write",
        &[("authorization", &auth), ("content-encoding", "snappy")],
        b"not snappy at all".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error(&body)["field"],
        "body",
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Over max-samples: 413 naming the limit.
    let (status, _, body) = post(
        &e,
        "/api/v1/write",
        &[("authorization", &auth), ("content-encoding", "snappy")],
        fixture("remote_write_prometheus.snappy"),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        error(&body)["message"]
            .as_str()
            .is_some_and(|m| m.contains("max-samples")),
        "{}",
        String::from_utf8_lossy(&body)
    );
    // A bad line: 400 naming the line.
    let (status, _, body) = post(
        &e,
        "/api/v2/write?precision=s",
        &[("authorization", &auth)],
        b"cpu,host=a usage=1 1765000000\ncpu,host=a usage= 1765000000\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        error(&body)["field"],
        "line 2",
        "{}",
        String::from_utf8_lossy(&body)
    );
    // An unknown precision, an unknown remote-write encoding, an unknown OTLP media type.
    let (status, _, body) = post(
        &e,
        "/write?precision=weeks",
        &[("authorization", &auth)],
        b"cpu usage=1\n".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error(&body)["field"], "precision");
    let (status, _, _) = post(
        &e,
        "/api/v1/write",
        &[("authorization", &auth), ("content-encoding", "lz4")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _, body) = post(
        &e,
        "/v1/metrics",
        &[("authorization", &auth), ("content-type", "text/plain")],
        b"x".to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error(&body)["field"], "Content-Type");
    // No key: 401.
    let (status, _, _) = post(&e, "/write", &[], b"cpu usage=1\n".to_vec()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(common::read_topic::<SampleBatch>(&e.log).await.is_empty());
}

#[tokio::test]
async fn new_series_past_the_tenant_bound_are_refused_and_the_rest_written() {
    let mut config = GatewayConfig::default();
    config.series_limits.max_series_per_tenant = 3;
    let e = env(config).await;
    let token = format!("Token {}", e.key);
    let lines = |hosts: &[u32]| -> Vec<u8> {
        hosts
            .iter()
            .map(|h| format!("load,host=h{h} v=1 1700000000\n"))
            .collect::<String>()
            .into_bytes()
    };
    // Five new series: the first three fit, two are refused; Influx clients get a 400
    // (dropped, not retried) naming the limit, and the three are written.
    let (status, _, body) = post(
        &e,
        "/api/v2/write?precision=s",
        &[("authorization", &token)],
        lines(&[1, 2, 3, 4, 5]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let err = error(&body);
    assert_eq!(err["code"], "series_limit", "{err}");
    assert_eq!(err["field"], "series-limits.max-series-per-tenant");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(message.contains("2 samples of 2 new series"), "{message}");
    let hosts = |samples: Vec<LabeledSample>| -> Vec<String> {
        let mut v: Vec<String> = samples
            .iter()
            .flat_map(|s| s.labels.iter().filter(|l| l.name == "host"))
            .map(|l| l.value.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        hosts(stored(&e, SampleSource::Influx).await),
        ["h1", "h2", "h3"]
    );
    // Known series keep being accepted.
    let (status, _, body) = post(
        &e,
        "/write?precision=s",
        &[("authorization", &token)],
        lines(&[3, 1]),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NO_CONTENT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        hosts(stored(&e, SampleSource::Influx).await),
        ["h1", "h1", "h2", "h3", "h3"]
    );
    // OTLP answers 200 with a partial success counting what was refused: every series of
    // this body is new to the tenant, so all its samples are.
    let auth = format!("Bearer {}", e.key);
    let json_body = fixture("otlp_metrics.json");
    let n = otlp::parse(&json_body, otlp::Encoding::Json, &Limits::default())
        .expect("fixture parses")
        .samples
        .len();
    let (status, _, body) = post(
        &e,
        "/v1/metrics",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json_body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let partial = &json(&body)["partialSuccess"];
    assert_eq!(partial["rejectedDataPoints"], n.to_string(), "{partial}");
    assert!(
        partial["errorMessage"]
            .as_str()
            .is_some_and(|m| m.contains("max-series-per-tenant")),
        "{partial}"
    );
    // Nothing of it was written: every record on the topic is still an Influx one.
    assert_eq!(hosts(stored(&e, SampleSource::Influx).await).len(), 5);
}
