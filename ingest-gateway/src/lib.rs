//! The ingest gateway: a thin axum server between agents and the event log.
//!
//! `POST /api/v1/agents/{agent_id}/metrics` takes a batch of reports (JSON, see
//! `fleet_schemas::api::MetricBatch`), validates each, writes one Avro record per valid
//! report to `fleet.metrics.v1` keyed by agent id, and answers **202 only after the log
//! acknowledged the write**.
//!
//! Batch policy: valid reports are written and invalid ones are listed in the answer
//! (`rejected`, each with the field path and reason). A batch with no valid report gets
//! 422 naming the first offending field; a body that does not parse gets 400 naming the
//! field; a log that cannot take the write gets 503 with `Retry-After` (the agent keeps
//! the batch and retries).

pub mod config;
pub mod metrics;
pub mod validate;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleet_event_log::{EventLog, LogError, ProduceRecord};
use fleet_ops::{ApiError, FieldJson};
use fleet_schemas::api::{IngestAccepted, MetricBatch};
use fleet_schemas::{codec, topics, MetricReport};
use tower_http::decompression::RequestDecompressionLayer;
use tower_http::trace::TraceLayer;

pub use config::GatewayConfig;

/// Shared state of the gateway's handlers.
#[derive(Debug, Clone)]
pub struct GatewayState {
    log: Arc<dyn EventLog>,
    config: Arc<GatewayConfig>,
}

impl GatewayState {
    /// State over an event log.
    pub fn new(log: Arc<dyn EventLog>, config: GatewayConfig) -> GatewayState {
        GatewayState {
            log,
            config: Arc::new(config),
        }
    }
}

/// The gateway's API routes (without `/healthz`, `/readyz`, `/metrics`).
pub fn app(state: GatewayState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/api/v1/agents/{agent_id}/metrics", post(post_metrics))
        .layer(DefaultBodyLimit::max(limit))
        .layer(RequestDecompressionLayer::new())
        .layer(TraceLayer::new_for_http().make_span_with(fleet_ops::endpoints::http_span))
        .with_state(state)
}

#[tracing::instrument(name = "ingest_metrics", skip_all, fields(%agent_id, reports))]
async fn post_metrics(
    State(state): State<GatewayState>,
    Path(agent_id): Path<String>,
    body: Result<FieldJson<MetricBatch>, ApiError>,
) -> Response {
    let started = Instant::now();
    let result = ingest_metrics(&state, &agent_id, body).await;
    metrics::record_request("metrics", &result, started.elapsed());
    match result {
        Ok(accepted) => (StatusCode::ACCEPTED, Json(accepted)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn ingest_metrics(
    state: &GatewayState,
    agent_id: &str,
    body: Result<FieldJson<MetricBatch>, ApiError>,
) -> Result<IngestAccepted, ApiError> {
    validate::agent_id(agent_id)?;
    let FieldJson(batch) = body?;
    tracing::Span::current().record("reports", batch.reports.len());
    let cfg = &state.config;
    validate::batch_len(batch.reports.len(), cfg.max_reports_per_batch)?;
    let now = fleet_schemas::time::now_micros();
    let limits = validate::Limits::from_config(cfg);
    let mut valid: Vec<MetricReport> = Vec::with_capacity(batch.reports.len());
    let mut rejected = Vec::new();
    for (index, report) in batch.reports.iter().enumerate() {
        match validate::report(&cfg.default_tenant, agent_id, report, now, &limits) {
            Ok(r) => valid.push(r),
            Err((field, message)) => rejected.push(fleet_schemas::api::ItemError {
                index,
                field: format!("reports[{index}].{field}"),
                message,
            }),
        }
    }
    metrics::reports_rejected(rejected.len());
    if valid.is_empty() {
        return Err(ApiError::invalid_batch(rejected));
    }
    let mut records = Vec::with_capacity(valid.len());
    for r in &valid {
        let value = codec::encode(r).map_err(ApiError::internal)?;
        records.push(ProduceRecord {
            key: Some(agent_id.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(r.occurred_at.div_euclid(1000)),
        });
    }
    produce(state, topics::METRICS, records).await?;
    metrics::reports_accepted(valid.len());
    if !rejected.is_empty() {
        tracing::warn!(%agent_id, rejected = rejected.len(), first = %rejected[0].field, "Reports refused.");
    }
    Ok(IngestAccepted {
        accepted: valid.len(),
        rejected,
    })
}

/// Writes records and waits for the log's acknowledgement, bounded by the configured
/// timeout; a log that cannot take the write becomes 503 with `Retry-After`.
async fn produce(
    state: &GatewayState,
    topic: &str,
    records: Vec<ProduceRecord>,
) -> Result<(), ApiError> {
    let cfg = &state.config;
    let timeout = Duration::from_millis(cfg.produce_timeout_ms);
    let started = Instant::now();
    let outcome = tokio::time::timeout(timeout, state.log.produce(topic, records)).await;
    metrics::produce_latency(started.elapsed());
    match outcome {
        Ok(Ok(_positions)) => Ok(()),
        Ok(Err(e @ LogError::Unavailable(_))) => {
            tracing::warn!(error = %e, "Event log unavailable.");
            metrics::produce_failed("unavailable");
            Err(ApiError::unavailable(
                "the event log cannot take writes now; keep the batch and retry",
                cfg.retry_after_secs,
            ))
        }
        Ok(Err(e)) => {
            metrics::produce_failed("error");
            tracing::error!(error = %e, "Produce failed.");
            Err(ApiError::unavailable(
                "the event log refused the write; keep the batch and retry",
                cfg.retry_after_secs,
            ))
        }
        Err(_) => {
            metrics::produce_failed("timeout");
            tracing::warn!(timeout_ms = cfg.produce_timeout_ms, "Produce timed out.");
            Err(ApiError::unavailable(
                "the event log did not acknowledge the write in time; keep the batch and retry",
                cfg.retry_after_secs,
            ))
        }
    }
}
