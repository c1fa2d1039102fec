//! The Prometheus HTTP API (`/api/v1/query`, `query_range`, `series`, `labels`,
//! `label/{name}/values`, `status/buildinfo`) over an in-memory sample source: the
//! envelope, value and time formats, GET and form POST, errors and their types, limits,
//! and that a key reads its own tenant only.

mod support;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_promql::memory::MemorySource;
use fleet_query_api::app;
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use support::world::user;
use support::{create_tenant, stores, ADMIN};
use tower::ServiceExt as _;

struct Env {
    _stores: support::Stores,
    /// The API with the in-memory source.
    app: Router,
    /// The API over a source whose store is down.
    down: Router,
    a: String,
    b: String,
    viewer_a: String,
}

/// A source whose store is down.
#[derive(Debug)]
struct Down;

#[async_trait::async_trait]
impl fleet_promql::SeriesSource for Down {
    async fn select(
        &self,
        _: &str,
        _: &[fleet_promql::Matcher],
        _: i64,
        _: i64,
        _: &fleet_promql::SelectLimits,
    ) -> Result<Vec<fleet_promql::SeriesData>, fleet_promql::SourceError> {
        Err(fleet_promql::SourceError::Unavailable(
            "the store is down".into(),
        ))
    }

    async fn series(
        &self,
        _: &str,
        _: &[fleet_promql::Matcher],
        _: i64,
        _: i64,
        _: usize,
    ) -> Result<Vec<fleet_promql::Labels>, fleet_promql::SourceError> {
        Err(fleet_promql::SourceError::Unavailable(
            "the store is down".into(),
        ))
    }
}

/// Tenants A and B, each with `up{job="api"}` (A: 1, B: 100) and A with a counter,
/// samples every 15 s from t = 1000 s; a viewer of A.
async fn env() -> Env {
    let stores = stores().await;
    let down = app(stores.state(ADMIN).with_series_source(Arc::new(Down)));
    let a = create_tenant(&down, "prom-a").await;
    let b = create_tenant(&down, "prom-b").await;
    let (_, viewer_a) = user(&down, "prom-viewer-a", "viewer", &a).await;
    let mut src = MemorySource::new();
    let every_15s = |f: &dyn Fn(i64) -> f64| -> Vec<(i64, f64)> {
        (0..=40).map(|i| (1_000_000 + i * 15_000, f(i))).collect()
    };
    src.add(
        &a,
        &[("__name__", "up"), ("job", "api"), ("instance", "h1")],
        &every_15s(&|_| 1.0),
    );
    src.add(
        &a,
        &[("__name__", "up"), ("job", "api"), ("instance", "h2")],
        &every_15s(&|_| 0.5),
    );
    src.add(
        &b,
        &[("__name__", "up"), ("job", "api"), ("instance", "h9")],
        &every_15s(&|_| 100.0),
    );
    src.add(
        &a,
        &[
            ("__name__", "requests_total"),
            ("job", "api"),
            ("instance", "h1"),
        ],
        &every_15s(&|i| i as f64 * 30.0),
    );
    let app = app(stores.state(ADMIN).with_series_source(Arc::new(src)));
    Env {
        _stores: stores,
        app,
        down,
        a,
        b,
        viewer_a,
    }
}

/// A request: GET with `params` in the URL, or POST with them form-encoded.
async fn prom(
    app: &Router,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    key: Option<&str>,
    tenant: Option<&str>,
) -> (StatusCode, Value) {
    let encoded: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let (uri, body) = if method == "GET" {
        (format!("{path}?{encoded}"), Vec::new())
    } else {
        (path.to_owned(), encoded.into_bytes())
    };
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    if let Some(t) = tenant {
        req = req.header("X-Scope-OrgID", t);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("request"))
        .await
        .expect("response");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn instant_queries_answer_prometheus_vectors_of_the_callers_tenant() {
    let e = env().await;
    for method in ["GET", "POST"] {
        let (s, v) = prom(
            &e.app,
            method,
            "/api/v1/query",
            &[("query", "up"), ("time", "1300")],
            Some(&e.viewer_a),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v,
            json!({"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": "up", "instance": "h1", "job": "api"}, "value": [1300, "1"]},
                {"metric": {"__name__": "up", "instance": "h2", "job": "api"}, "value": [1300, "0.5"]},
            ]}})
        );
    }
    // RFC 3339 time, a fractional second, a scalar.
    let (s, v) = prom(
        &e.app,
        "GET",
        "/api/v1/query",
        &[("query", "sum(up) * 2"), ("time", "1970-01-01T00:21:40.5Z")],
        Some(&e.viewer_a),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"]["result"],
        json!([{"metric": {}, "value": [1300.5, "3"]}])
    );
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/query",
        &[("query", "1/0"), ("time", "1300")],
        Some(&e.viewer_a),
        None,
    )
    .await;
    assert_eq!(
        v["data"],
        json!({"resultType": "scalar", "result": [1300, "+Inf"]})
    );
    // rate over the counter: 30 per 15 s.
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/query",
        &[("query", "rate(requests_total[1m])"), ("time", "1300")],
        Some(&e.viewer_a),
        None,
    )
    .await;
    assert_eq!(
        v["data"]["result"],
        json!([{"metric": {"instance": "h1", "job": "api"}, "value": [1300, "2"]}])
    );
}

#[tokio::test]
async fn range_queries_answer_matrices_stepped_from_start() {
    let e = env().await;
    for (method, step) in [("GET", "15s"), ("POST", "15"), ("POST", "15000ms")] {
        let params = [
            ("query", "up{instance=\"h2\"}"),
            ("start", "1000"),
            ("end", "1030"),
            ("step", step),
        ];
        let (s, v) = prom(
            &e.app,
            method,
            "/api/v1/query_range",
            &params,
            Some(&e.viewer_a),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{step}: {v}");
        assert_eq!(
            v["data"],
            json!({"resultType": "matrix", "result": [{
                "metric": {"__name__": "up", "instance": "h2", "job": "api"},
                "values": [[1000, "0.5"], [1015, "0.5"], [1030, "0.5"]],
            }]}),
            "{step}"
        );
    }
}

/// Path, parameters, and the status, `errorType` and a part of the message expected.
type ErrorCase<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    StatusCode,
    &'a str,
    &'a str,
);

#[tokio::test]
async fn errors_use_prometheus_error_types_and_statuses() {
    let e = env().await;
    let k = Some(e.viewer_a.as_str());
    let cases: &[ErrorCase] = &[
        (
            "/api/v1/query",
            &[("query", "sum(")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "",
        ),
        (
            "/api/v1/query",
            &[("query", "rate(up[5m:1m])")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "subqueries",
        ),
        (
            "/api/v1/query",
            &[("query", "absent(up)")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "absent()",
        ),
        (
            "/api/v1/query",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "\"query\"",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "noon")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "\"time\"",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("timeout", "soon")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "\"timeout\"",
        ),
        (
            "/api/v1/query_range",
            &[("query", "up"), ("start", "1000"), ("end", "1030")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "\"step\"",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "0"),
                ("end", "11001"),
                ("step", "1"),
            ],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "11,000 points",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up"),
                ("start", "10"),
                ("end", "0"),
                ("step", "1"),
            ],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "before start",
        ),
        (
            "/api/v1/query_range",
            &[
                ("query", "up[1m]"),
                ("start", "0"),
                ("end", "10"),
                ("step", "1"),
            ],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "range vector",
        ),
        (
            "/api/v1/query",
            &[("query", "up / on(job) up"), ("time", "1300")],
            StatusCode::UNPROCESSABLE_ENTITY,
            "execution",
            "many-to-many",
        ),
        (
            "/api/v1/query",
            &[("query", "up"), ("time", "1300"), ("timeout", "0s")],
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            "",
        ),
        (
            "/api/v1/series",
            &[],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "match[]",
        ),
        (
            "/api/v1/series",
            &[("match[]", "rate(up[1m])")],
            StatusCode::BAD_REQUEST,
            "bad_data",
            "match[]",
        ),
    ];
    for (path, params, status, kind, needle) in cases {
        let (s, v) = prom(&e.app, "GET", path, params, k, None).await;
        assert_eq!(s, *status, "{path} {params:?}: {v}");
        assert_eq!(v["status"], "error", "{v}");
        assert_eq!(v["errorType"], *kind, "{path} {params:?}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|m| m.contains(needle)),
            "{path} {params:?}: {v}"
        );
    }
    // A query over the length limit, and a form body over 64 KiB.
    for (query, needle) in [("up".repeat(10_000), ""), ("x".repeat(70_000), "form body")] {
        let (s, v) = prom(
            &e.app,
            "POST",
            "/api/v1/query",
            &[("query", &query)],
            k,
            None,
        )
        .await;
        assert_eq!(
            (s, v["errorType"].as_str()),
            (StatusCode::BAD_REQUEST, Some("bad_data")),
            "{v}"
        );
        assert!(
            v["error"].as_str().is_some_and(|m| m.contains(needle)),
            "{v}"
        );
    }
    // A store that cannot answer: unavailable.
    let (s, v) = prom(&e.down, "GET", "/api/v1/query", &[("query", "up")], k, None).await;
    assert_eq!(
        (s, v["errorType"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("unavailable")),
        "{v}"
    );
}

#[tokio::test]
async fn metadata_routes_list_series_labels_and_values() {
    let e = env().await;
    let k = Some(e.viewer_a.as_str());
    let (s, v) = prom(
        &e.app,
        "POST",
        "/api/v1/series",
        &[
            ("match[]", "up"),
            ("match[]", "requests_total{instance=\"h1\"}"),
        ],
        k,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["data"],
        json!([
            {"__name__": "requests_total", "instance": "h1", "job": "api"},
            {"__name__": "up", "instance": "h1", "job": "api"},
            {"__name__": "up", "instance": "h2", "job": "api"},
        ])
    );
    // Outside the time range: nothing.
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/series",
        &[("match[]", "up"), ("start", "0"), ("end", "999")],
        k,
        None,
    )
    .await;
    assert_eq!(v["data"], json!([]));
    let (_, v) = prom(&e.app, "GET", "/api/v1/labels", &[], k, None).await;
    assert_eq!(v["data"], json!(["__name__", "instance", "job"]));
    let (_, v) = prom(&e.app, "GET", "/api/v1/label/__name__/values", &[], k, None).await;
    assert_eq!(v["data"], json!(["requests_total", "up"]));
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/label/instance/values",
        &[("match[]", "up")],
        k,
        None,
    )
    .await;
    assert_eq!(v["data"], json!(["h1", "h2"]));
    let (s, v) = prom(&e.app, "GET", "/api/v1/status/buildinfo", &[], k, None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["data"]["version"], "2.42.0");
    // What Grafana also asks for: answered, empty.
    let (s, v) = prom(&e.app, "GET", "/api/v1/metadata", &[], k, None).await;
    assert_eq!((s, &v["data"]), (StatusCode::OK, &json!({})), "{v}");
    let (s, v) = prom(
        &e.app,
        "POST",
        "/api/v1/query_exemplars",
        &[("query", "up"), ("start", "0"), ("end", "1")],
        k,
        None,
    )
    .await;
    assert_eq!((s, &v["data"]), (StatusCode::OK, &json!([])), "{v}");
}

#[tokio::test]
async fn a_key_reads_its_own_tenant_only() {
    let e = env().await;
    let q = [("query", "sum(up)"), ("time", "1300")];
    // No key: 401 on every route.
    for path in [
        "/api/v1/query",
        "/api/v1/query_range",
        "/api/v1/series",
        "/api/v1/labels",
        "/api/v1/label/job/values",
        "/api/v1/status/buildinfo",
        "/api/v1/metadata",
        "/api/v1/query_exemplars",
    ] {
        let (s, _) = prom(&e.app, "GET", path, &q, None, None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{path}");
    }
    // A's viewer naming B: 403; naming A: its data.
    let (s, _) = prom(
        &e.app,
        "GET",
        "/api/v1/query",
        &q,
        Some(&e.viewer_a),
        Some(&e.b),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = prom(
        &e.app,
        "GET",
        "/api/v1/label/job/values",
        &[],
        Some(&e.viewer_a),
        Some(&e.b),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/query",
        &q,
        Some(&e.viewer_a),
        Some(&e.a),
    )
    .await;
    assert_eq!(v["data"]["result"][0]["value"][1], "1.5");
    // The admin names the tenant; without one it is refused.
    let (s, v) = prom(&e.app, "GET", "/api/v1/query", &q, Some(ADMIN), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (_, v) = prom(&e.app, "GET", "/api/v1/query", &q, Some(ADMIN), Some(&e.b)).await;
    assert_eq!(v["data"]["result"][0]["value"][1], "100");
    let (_, v) = prom(
        &e.app,
        "GET",
        "/api/v1/series",
        &[("match[]", "up")],
        Some(ADMIN),
        Some(&e.b),
    )
    .await;
    assert_eq!(
        v["data"],
        json!([{"__name__": "up", "instance": "h9", "job": "api"}])
    );
}

/// `promtool` (Debian's `prometheus` package, installed by `scripts/services.sh up`).
fn promtool() -> std::path::PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("promtool"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("`promtool` is not installed: run `scripts/services.sh up` (Debian's prometheus package)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_reads_range_queries_from_a_real_listener() {
    let promtool = promtool();
    let e = env().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = e.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    // Prometheus' own Go client (promtool 2.42 sends headers for range queries only).
    let out = tokio::process::Command::new(&promtool)
        .args([
            "query",
            "range",
            "-o",
            "json",
            "--start=1000",
            "--end=1060",
            "--step=30s",
        ])
        .arg(format!("--header=Authorization=Bearer {}", e.viewer_a))
        .arg(format!("http://{addr}"))
        .arg("sum by (job) (rate(requests_total[1m])) or up")
        .output()
        .await
        .expect("run promtool");
    server.abort();
    assert!(
        out.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed: Value = serde_json::from_slice(&out.stdout).expect("promtool's JSON");
    // Its JSON is the matrix it decoded: the same series and points as ours.
    let (_, ours) = prom(
        &e.app,
        "GET",
        "/api/v1/query_range",
        &[
            ("query", "sum by (job) (rate(requests_total[1m])) or up"),
            ("start", "1000"),
            ("end", "1060"),
            ("step", "30"),
        ],
        Some(&e.viewer_a),
        None,
    )
    .await;
    assert_eq!(parsed, ours["data"]["result"], "promtool read {parsed}");
    assert_eq!(parsed.as_array().map(Vec::len), Some(3), "{parsed}");
}
