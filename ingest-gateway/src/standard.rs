//! The standard write protocols on the gateway, for collectors that already run on a fleet:
//!
//! | route | protocol | success |
//! | --- | --- | --- |
//! | `POST /api/v1/write` | Prometheus remote-write 1.0 and 2.0 (snappy + protobuf) | 204 |
//! | `POST /v1/metrics` | OTLP/HTTP metrics (protobuf or JSON, gzip or not) | 200 and an `ExportMetricsServiceResponse` |
//! | `POST /api/v2/write`, `POST /write` | Influx line protocol (`precision`), gzip or not | 204 |
//!
//! Each takes an ingest key ([`IngestCaller`], checked before the body is read), parses the
//! body with `fleet-protocols` under `[protocol-limits]` (off the async workers when it is
//! large), and writes the samples to `fleet.samples.v1` as [`SampleBatch`] records keyed by
//! `{tenant}/{source shard}`: acknowledged only once the log has them, like the agent
//! path. A malformed body is 400 and a body over a limit 413, both JSON naming the field
//! (remote-write senders drop a 4xx instead of retrying it); a log that cannot take the
//! write is 503 with `Retry-After`, which every one of these clients retries.

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use fleet_protocols::{influx, otlp, remote_write, shard, Limits, Parsed, ProtocolError};
use fleet_schemas::{LabeledSample, SampleBatch, SampleSource};
use fleet_service::error::ApiError;
use tower_http::decompression::RequestDecompressionLayer;

use crate::{metrics, produce_all, GatewayState, IngestCaller};

/// Bodies up to this size are parsed on the async worker; larger ones on the blocking pool
/// (a 16 MiB body takes tens of milliseconds to parse).
const INLINE_PARSE_BYTES: usize = 256 << 10;

/// The routes of the standard write protocols.
pub(crate) fn routes(state: &GatewayState) -> Router<GatewayState> {
    Router::new()
        .route("/api/v1/write", post(post_remote_write))
        .route("/v1/metrics", post(post_otlp))
        .route("/api/v2/write", post(post_influx))
        .route("/write", post(post_influx))
        .layer(DefaultBodyLimit::max(
            state.config.protocol_limits.max_body_bytes,
        ))
        // gzip (the OpenTelemetry Collector's default, Telegraf's option) is inflated
        // here, under the body limit; remote-write's snappy passes through to its parser,
        // which checks the declared length first.
        .layer(RequestDecompressionLayer::new().pass_through_unaccepted(true))
}

/// What a request wrote.
struct Written {
    samples: usize,
    skipped: fleet_protocols::Skipped,
}

#[tracing::instrument(name = "ingest_remote_write", skip_all, fields(tenant = %caller.tenant_id, samples))]
async fn post_remote_write(
    State(state): State<GatewayState>,
    caller: IngestCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let version = remote_write::Version::from_content_type(content_type(&headers));
    let result = async {
        if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
            if encoding.as_bytes() != b"snappy" {
                return Err(ApiError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_encoding",
                    "remote-write bodies are snappy-compressed (Content-Encoding: snappy)",
                )
                .with_field("Content-Encoding"));
            }
        }
        let parsed = parse(&state, body, move |b, l| remote_write::parse(b, version, l)).await?;
        write(&state, &caller, SampleSource::PrometheusRemoteWrite, parsed).await
    }
    .await;
    answer("remote_write", started, result, |w| {
        let mut r = StatusCode::NO_CONTENT.into_response();
        if version == remote_write::Version::V2 {
            // Remote-write 2.0: what was written, so the sender need not assume.
            let h = r.headers_mut();
            h.insert(
                "X-Prometheus-Remote-Write-Samples-Written",
                w.samples.into(),
            );
            h.insert("X-Prometheus-Remote-Write-Histograms-Written", 0.into());
            h.insert("X-Prometheus-Remote-Write-Exemplars-Written", 0.into());
        }
        r
    })
}

#[tracing::instrument(name = "ingest_otlp", skip_all, fields(tenant = %caller.tenant_id, samples))]
async fn post_otlp(
    State(state): State<GatewayState>,
    caller: IngestCaller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let encoding = match content_type(&headers).split(';').next().map(str::trim) {
        Some("application/json") => Ok(otlp::Encoding::Json),
        Some("application/x-protobuf" | "application/protobuf" | "") | None => {
            Ok(otlp::Encoding::Protobuf)
        }
        Some(other) => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("{other:?}: OTLP/HTTP bodies are application/x-protobuf or application/json"),
        )
        .with_field("Content-Type")),
    };
    let answered = encoding.as_ref().map_or(otlp::Encoding::Protobuf, |e| *e);
    let result = async {
        let encoding = encoding?;
        let parsed = parse(&state, body, move |b, l| otlp::parse(b, encoding, l)).await?;
        write(&state, &caller, SampleSource::Otlp, parsed).await
    }
    .await;
    let encoding = answered;
    answer("otlp", started, result, |w| otlp_response(encoding, w))
}

/// `?precision=` of both Influx write APIs (`org`, `bucket`, `db` and the rest are
/// accepted and ignored: the tenant is the key's).
#[derive(Debug, serde::Deserialize)]
struct InfluxParams {
    precision: Option<String>,
}

#[tracing::instrument(name = "ingest_influx", skip_all, fields(tenant = %caller.tenant_id, samples))]
async fn post_influx(
    State(state): State<GatewayState>,
    caller: IngestCaller,
    Query(params): Query<InfluxParams>,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let result = async {
        let precision = match params.precision.as_deref() {
            Some(p) => influx::Precision::parse(p).map_err(refusal)?,
            None => influx::Precision::default(),
        };
        let now = fleet_schemas::time::now_micros();
        let parsed = parse(&state, body, move |b, l| {
            influx::parse(b, precision, now, l)
        })
        .await?;
        write(&state, &caller, SampleSource::Influx, parsed).await
    }
    .await;
    answer("influx", started, result, |_| {
        StatusCode::NO_CONTENT.into_response()
    })
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A refused body as the gateway's JSON error: 400 (malformed) or 413 (over a limit),
/// naming the field.
fn refusal(e: ProtocolError) -> ApiError {
    let (status, code) = match e.refusal() {
        fleet_protocols::Refusal::Client => (StatusCode::BAD_REQUEST, "invalid_body"),
        fleet_protocols::Refusal::Limit => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
    };
    let field = e.field().to_owned();
    ApiError::new(status, code, e.to_string()).with_field(field)
}

/// Parses `body` with `parser` under the configured limits, on the blocking pool when the
/// body is large.
async fn parse<F>(state: &GatewayState, body: Bytes, parser: F) -> Result<Parsed, ApiError>
where
    F: FnOnce(&[u8], &Limits) -> Result<Parsed, ProtocolError> + Send + 'static,
{
    let limits = state.config.protocol_limits;
    let parsed = if body.len() <= INLINE_PARSE_BYTES {
        parser(&body, &limits)
    } else {
        tokio::task::spawn_blocking(move || parser(&body, &limits))
            .await
            .map_err(ApiError::internal)?
    };
    let parsed = parsed.map_err(refusal)?;
    tracing::Span::current().record("samples", parsed.samples.len());
    Ok(parsed)
}

/// Writes a request's samples to `fleet.samples.v1`: one group per source shard, each in
/// records of at most `samples-per-record` samples; answers once the log has them all.
async fn write(
    state: &GatewayState,
    caller: &IngestCaller,
    source: SampleSource,
    parsed: Parsed,
) -> Result<Written, ApiError> {
    let cfg = &state.config;
    let samples = parsed.samples.len();
    let received_at = fleet_schemas::time::now_micros();
    let per_record = cfg.samples_per_record.max(1);
    let mut records = Vec::new();
    for (shard, group) in shard::split_by_shard(parsed.samples, cfg.sample_shards) {
        let key = SampleBatch::key_for(&caller.tenant_id, shard);
        let mut group = group.into_iter().peekable();
        while group.peek().is_some() {
            let part: Vec<LabeledSample> = group.by_ref().take(per_record).collect();
            records.push(SampleBatch {
                event_id: uuid::Uuid::now_v7().to_string(),
                tenant_id: caller.tenant_id.clone(),
                partition_key: key.clone(),
                source,
                received_at,
                samples: part,
            });
        }
    }
    if !records.is_empty() {
        produce_all(state, &records).await?;
    }
    metrics::samples_accepted(source_label(source), samples);
    if parsed.skipped.any() {
        tracing::info!(key_id = %caller.key_id, skipped = ?parsed.skipped, "Data points without a sample form skipped.");
    }
    Ok(Written {
        samples,
        skipped: parsed.skipped,
    })
}

fn source_label(source: SampleSource) -> &'static str {
    match source {
        SampleSource::PrometheusRemoteWrite => "remote_write",
        SampleSource::Otlp => "otlp",
        SampleSource::Influx => "influx",
    }
}

/// Counts the request and answers: `ok` on success, the JSON error otherwise.
fn answer<T>(
    route: &'static str,
    started: Instant,
    result: Result<T, ApiError>,
    ok: impl FnOnce(T) -> Response,
) -> Response {
    let response = match result {
        Ok(w) => ok(w),
        Err(e) => e.into_response(),
    };
    metrics::record_status(route, response.status().as_u16(), started.elapsed());
    response
}

/// OTLP's answer: an `ExportMetricsServiceResponse` in the request's encoding, with a
/// partial success counting the data points that have no sample form here (delta sums,
/// exponential histograms).
fn otlp_response(encoding: otlp::Encoding, w: Written) -> Response {
    use opentelemetry_proto::tonic::collector::metrics::v1::{
        ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
    };
    let rejected = w.skipped.delta_points + w.skipped.native_histograms;
    let partial_success = (rejected > 0).then(|| ExportMetricsPartialSuccess {
        rejected_data_points: i64::try_from(rejected).unwrap_or(i64::MAX),
        error_message: format!(
            "{} delta-temporality points and {} exponential histogram points were not stored \
             (Fleetstream stores cumulative sums and explicit-bucket histograms; see docs/PROTOCOLS.md)",
            w.skipped.delta_points, w.skipped.native_histograms
        ),
    });
    let (content_type, body) = match encoding {
        otlp::Encoding::Protobuf => {
            let msg = ExportMetricsServiceResponse { partial_success };
            (
                "application/x-protobuf",
                prost::Message::encode_to_vec(&msg),
            )
        }
        otlp::Encoding::Json => {
            let json = match partial_success {
                Some(p) => serde_json::json!({"partialSuccess": {
                    "rejectedDataPoints": p.rejected_data_points.to_string(),
                    "errorMessage": p.error_message,
                }}),
                None => serde_json::json!({}),
            };
            ("application/json", json.to_string().into_bytes())
        }
    };
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}
