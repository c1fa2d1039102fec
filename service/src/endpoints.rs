//! `/healthz` (the process runs), `/readyz` (the role can do its work: its log and stores
//! answer) and `/metrics` (Prometheus text format) for every service.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// A readiness check: `Ok` when the role can serve, `Err(reason)` otherwise.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Installs the process-wide Prometheus recorder (once) and returns its handle.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (only in odd test setups): keep a detached
                // one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

#[derive(Clone)]
struct OpsState {
    role: &'static str,
    metrics: PrometheusHandle,
    ready: ReadyCheck,
}

/// Router with `/healthz`, `/readyz` and `/metrics` for `role`.
pub fn router(role: &'static str, ready: ReadyCheck) -> Router {
    let state = OpsState {
        role,
        metrics: metrics_handle(),
        ready,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<OpsState>) -> Response {
    Json(serde_json::json!({"status": "ok", "role": s.role})).into_response()
}

async fn readyz(State(s): State<OpsState>) -> Response {
    match (s.ready)() {
        Ok(()) => Json(serde_json::json!({"status": "ready", "role": s.role})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "not_ready", "role": s.role, "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<OpsState>) -> Response {
    s.metrics.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

/// Span for one HTTP request, named by the matched route (for `TraceLayer::make_span_with`).
pub fn http_span<B>(req: &axum::http::Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| req.uri().path().to_owned());
    tracing::info_span!("http", method = %req.method(), route = %route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    async fn get_body(app: Router, path: &str) -> (StatusCode, String) {
        let resp = app
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let not_ready: ReadyCheck = Arc::new(|| Err("log down".into()));
        let (s, b) = get_body(router("test", not_ready.clone()), "/readyz").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert!(b.contains("log down"));
        let (s, _) = get_body(router("test", not_ready), "/healthz").await;
        assert_eq!(s, StatusCode::OK);
        metrics::counter!("fleet_service_test_total").increment(3);
        let (s, b) = get_body(router("test", Arc::new(|| Ok(()))), "/metrics").await;
        assert_eq!(s, StatusCode::OK);
        assert!(b.contains("fleet_service_test_total 3"), "{b}");
    }
}
