//! The Prometheus HTTP API over the stored samples, so Grafana's Prometheus data source,
//! `promtool query` and other Prometheus clients read Fleetstream:
//!
//! * `GET|POST /api/v1/query` (`query`, `time`, `timeout`),
//! * `GET|POST /api/v1/query_range` (`query`, `start`, `end`, `step`, `timeout`),
//! * `GET|POST /api/v1/series` (`match[]`, `start`, `end`),
//! * `GET|POST /api/v1/labels` and `/api/v1/label/{name}/values` (`match[]`, `start`, `end`),
//! * `GET /api/v1/status/buildinfo`;
//! * `GET /api/v1/metadata` and `GET|POST /api/v1/query_exemplars`, which Grafana asks
//!   for: always empty (no metric metadata or exemplars are stored).
//!
//! POST takes the parameters form-encoded (`application/x-www-form-urlencoded`, as Grafana
//! sends them), merged with the URL's. Answers use Prometheus' envelope:
//! `{"status":"success","data":...}` or `{"status":"error","errorType":...,"error":...}`
//! with 400 `bad_data`, 422 `execution`, 503 `timeout`/`unavailable`. PromQL is evaluated
//! by `fleet-promql` (its docs list the supported subset; anything else is a `bad_data`
//! naming the construct).
//!
//! Authenticated with the API keys (`Authorization: Bearer`, any role): an operator's or
//! viewer's key reads its own tenant; an admin key names the tenant in the
//! `X-Scope-OrgID` header (as Grafana sends for Mimir/Cortex), which other keys may send
//! only with their own tenant.
//!
//! Bounds: [`MAX_QUERY_BYTES`] per query, [`MAX_FORM_BYTES`] per form body, 11,000 points
//! per series, [`DEFAULT_TIMEOUT`] (a `timeout` parameter may ask for another, at most
//! [`MAX_TIMEOUT`]), [`MAX_SERIES`] series per selector and per metadata answer,
//! [`MAX_SAMPLES`] samples per selector and per evaluation node over all its steps.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use fleet_promql::{
    api, ErrorType, EvalError, EvalOptions, Labels, Matcher, SelectLimits, SeriesSource,
    SourceError,
};
use fleet_service::ApiError;
use serde_json::{json, Value};

use crate::auth::{require_viewer, Principal};
use crate::state::AppState;

/// Longest PromQL expression or `match[]` selector, in bytes.
pub const MAX_QUERY_BYTES: usize = 16 * 1024;
/// Largest form-encoded POST body, in bytes.
pub const MAX_FORM_BYTES: usize = 64 * 1024;
/// Timeout of a query without a `timeout` parameter.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest timeout a `timeout` parameter may ask for.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(120);
/// Most series one selector may match, and most series a metadata route reads.
pub const MAX_SERIES: usize = 10_000;
/// Most samples one selector may load, and one evaluation node may hold over its steps.
pub const MAX_SAMPLES: usize = 10_000_000;
/// Most `match[]` selectors per request.
pub const MAX_MATCHERS: usize = 32;
/// Default `start` of the metadata routes: the epoch.
const DEFAULT_START_MS: i64 = 0;
/// Default `end` of the metadata routes: 2100-01-01.
const DEFAULT_END_MS: i64 = 4_102_444_800_000;
/// The header naming the tenant (an admin key must send it).
pub const TENANT_HEADER: &str = "x-scope-orgid";

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/metadata", get(metadata))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
}

/// A Prometheus-style error answer.
#[derive(Debug)]
struct PromError {
    kind: ErrorType,
    message: String,
}

impl PromError {
    fn bad_data(message: impl Into<String>) -> Self {
        PromError {
            kind: ErrorType::BadData,
            message: message.into(),
        }
    }

    fn param(name: &str, message: impl std::fmt::Display) -> Self {
        Self::bad_data(format!("invalid parameter \"{name}\": {message}"))
    }
}

impl From<EvalError> for PromError {
    fn from(e: EvalError) -> Self {
        let kind = e.error_type();
        if kind == ErrorType::Unavailable {
            tracing::warn!(error = %e, "Sample store unavailable for PromQL.");
            return PromError {
                kind,
                message: "the sample store is unavailable; retry".into(),
            };
        }
        PromError {
            kind,
            message: e.to_string(),
        }
    }
}

impl From<SourceError> for PromError {
    fn from(e: SourceError) -> Self {
        EvalError::Source(e).into()
    }
}

impl IntoResponse for PromError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.kind.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(api::error(self.kind, &self.message))).into_response()
    }
}

fn success(data: Value) -> Response {
    Json(api::success(data)).into_response()
}

/// The request's parameters: the URL's, then a form body's.
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<Self, PromError> {
        let mut out: Vec<(String, String)> = Vec::new();
        if let Some(q) = query {
            out.extend(url::form_urlencoded::parse(q.as_bytes()).into_owned());
        }
        if !body.is_empty() {
            let form = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
            if !form {
                return Err(PromError::bad_data(
                    "a POST body must be application/x-www-form-urlencoded",
                ));
            }
            out.extend(url::form_urlencoded::parse(body).into_owned());
        }
        Ok(Params(out))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn required(&self, name: &str) -> Result<&str, PromError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| PromError::bad_data(format!("invalid parameter \"{name}\": missing")))
    }

    fn time(&self, name: &str) -> Result<Option<i64>, PromError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .map(|v| api::parse_time(v).map_err(|e| PromError::param(name, e)))
            .transpose()
    }

    fn query(&self) -> Result<&str, PromError> {
        let q = self.required("query")?;
        if q.len() > MAX_QUERY_BYTES {
            return Err(PromError::param(
                "query",
                format!("longer than {MAX_QUERY_BYTES} bytes"),
            ));
        }
        Ok(q)
    }

    /// The evaluation options, with the deadline of the `timeout` parameter.
    fn options(&self) -> Result<(EvalOptions, Duration), PromError> {
        let timeout = match self.get("timeout").filter(|v| !v.is_empty()) {
            None => DEFAULT_TIMEOUT,
            Some(v) => {
                let ms = api::parse_duration(v).map_err(|e| PromError::param("timeout", e))?;
                let ms = u64::try_from(ms)
                    .map_err(|_| PromError::param("timeout", "must not be negative"))?;
                Duration::from_millis(ms).min(MAX_TIMEOUT)
            }
        };
        let options = EvalOptions {
            select: SelectLimits {
                max_series: MAX_SERIES,
                max_samples: MAX_SAMPLES,
            },
            max_samples: MAX_SAMPLES,
            deadline: Instant::now().checked_add(timeout),
            ..EvalOptions::default()
        };
        Ok((options, timeout))
    }

    /// `start` and `end` of a metadata route (defaults: the epoch and the year 2100).
    fn span(&self) -> Result<(i64, i64), PromError> {
        let start = self.time("start")?.unwrap_or(DEFAULT_START_MS);
        let end = self.time("end")?.unwrap_or(DEFAULT_END_MS);
        if end < start {
            return Err(PromError::param(
                "end",
                "end timestamp must not be before start time",
            ));
        }
        Ok((start, end))
    }

    /// The `match[]` selectors, each as matchers.
    fn selectors(&self) -> Result<Vec<Vec<Matcher>>, PromError> {
        let raw = self.all("match[]");
        if raw.len() > MAX_MATCHERS {
            return Err(PromError::param(
                "match[]",
                format!("at most {MAX_MATCHERS} selectors"),
            ));
        }
        raw.into_iter()
            .map(|s| {
                if s.len() > MAX_QUERY_BYTES {
                    return Err(PromError::param(
                        "match[]",
                        format!("longer than {MAX_QUERY_BYTES} bytes"),
                    ));
                }
                fleet_promql::eval::selector_matchers(s).map_err(|e| PromError::param("match[]", e))
            })
            .collect()
    }
}

/// The tenant the caller reads: its own, or (admins) the one `X-Scope-OrgID` names.
fn tenant_of(p: &Principal, headers: &HeaderMap) -> Result<String, ApiError> {
    let named = match headers.get(TENANT_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(t)) if !t.trim().is_empty() => Some(t.trim()),
        Some(_) => return Err(ApiError::invalid_field(TENANT_HEADER, "must name a tenant")),
    };
    match (named, p.tenant_id.as_deref()) {
        (Some(t), _) => {
            require_viewer(p, t)?;
            Ok(t.to_owned())
        }
        (None, Some(own)) => Ok(own.to_owned()),
        (None, None) => Err(ApiError::invalid_field(
            TENANT_HEADER,
            "an admin key reads one tenant at a time: name it in the X-Scope-OrgID header",
        )),
    }
}

/// A request to one of these routes: the caller (or why it is refused), the headers, the
/// URL's parameters and the body (`None`: larger than [`MAX_FORM_BYTES`] or unreadable).
#[derive(Debug)]
struct PromRequest {
    principal: Result<Principal, ApiError>,
    headers: HeaderMap,
    query: Option<String>,
    body: Option<Bytes>,
}

impl FromRequest<AppState> for PromRequest {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let principal = Principal::from_request_parts(&mut parts, state).await;
        let body = axum::body::to_bytes(body, MAX_FORM_BYTES).await.ok();
        Ok(PromRequest {
            principal,
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers,
            body,
        })
    }
}

impl PromRequest {
    /// Answers the request: checks the caller and its tenant, parses the parameters, runs
    /// `answer` on them and wraps its data in Prometheus' envelope.
    async fn respond<Fut>(self, answer: impl FnOnce(String, Params) -> Fut) -> Response
    where
        Fut: std::future::Future<Output = Result<Value, PromError>>,
    {
        let p = match self.principal {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        };
        let tenant = match tenant_of(&p, &self.headers) {
            Ok(t) => t,
            Err(e) => return e.into_response(),
        };
        let Some(body) = self.body else {
            return PromError::bad_data(format!(
                "the form body is larger than {MAX_FORM_BYTES} bytes"
            ))
            .into_response();
        };
        let params = match Params::parse(self.query.as_deref(), &self.headers, &body) {
            Ok(params) => params,
            Err(e) => return e.into_response(),
        };
        match answer(tenant.clone(), params).await {
            Ok(data) => success(data),
            Err(e) => {
                tracing::debug!(%tenant, error_type = e.kind.as_str(), error = %e.message, "Prometheus API request refused.");
                e.into_response()
            }
        }
    }
}

/// Runs `fut` within `timeout`.
async fn bounded<T>(
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, EvalError>>,
) -> Result<T, PromError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r.map_err(PromError::from),
        Err(_) => Err(EvalError::Timeout("reading samples").into()),
    }
}

fn now_ms() -> i64 {
    fleet_schemas::time::now_micros() / 1000
}

/// `GET|POST /api/v1/query`: an instant query.
async fn query(State(s): State<AppState>, r: PromRequest) -> Response {
    r.respond(|tenant, params| async move {
        let q = params.query()?;
        let t = params.time("time")?.unwrap_or_else(now_ms);
        let (options, timeout) = params.options()?;
        let value = bounded(timeout, async {
            fleet_promql::instant_query(s.series_source.as_ref(), &tenant, q, t, &options).await
        })
        .await?;
        Ok(api::query_data(&value))
    })
    .await
}

/// `GET|POST /api/v1/query_range`: a range query.
async fn query_range(State(s): State<AppState>, r: PromRequest) -> Response {
    r.respond(|tenant, params| async move {
        let q = params.query()?;
        let start = params
            .time("start")?
            .ok_or_else(|| PromError::param("start", "missing"))?;
        let end = params
            .time("end")?
            .ok_or_else(|| PromError::param("end", "missing"))?;
        let step = api::parse_duration(params.required("step")?)
            .map_err(|e| PromError::param("step", e))?;
        let (options, timeout) = params.options()?;
        let source = s.series_source.as_ref();
        let value = bounded(timeout, async {
            fleet_promql::range_query(source, &tenant, q, start, end, step, &options).await
        })
        .await?;
        Ok(api::query_data(&value))
    })
    .await
}

/// The series matching any of `selectors` (all series with a name without any), sorted,
/// at most [`MAX_SERIES`].
async fn matching_series(
    source: &Arc<dyn SeriesSource>,
    tenant: &str,
    params: &Params,
) -> Result<Vec<Labels>, PromError> {
    let mut selectors = params.selectors()?;
    let (start, end) = params.span()?;
    if selectors.is_empty() {
        selectors.push(vec![Matcher {
            name: "__name__".into(),
            op: fleet_promql::MatchOp::Regex,
            value: ".+".into(),
        }]);
    }
    let mut all: BTreeSet<Labels> = BTreeSet::new();
    for matchers in selectors {
        let found = tokio::time::timeout(
            DEFAULT_TIMEOUT,
            source.series(tenant, &matchers, start, end, MAX_SERIES + 1),
        )
        .await
        .map_err(|_| PromError::from(EvalError::Timeout("reading series")))??;
        all.extend(found);
        if all.len() > MAX_SERIES {
            return Err(PromError {
                kind: ErrorType::Execution,
                message: format!(
                    "more than {MAX_SERIES} series match: narrow the match[] selectors or the time range"
                ),
            });
        }
    }
    Ok(all.into_iter().collect())
}

/// `GET|POST /api/v1/series`: the label sets of the series matching `match[]`.
async fn series(State(s): State<AppState>, r: PromRequest) -> Response {
    r.respond(|tenant, params| async move {
        if params.all("match[]").is_empty() {
            return Err(PromError::bad_data("no match[] parameter provided"));
        }
        let found = matching_series(&s.series_source, &tenant, &params).await?;
        Ok(Value::Array(found.iter().map(api::labels_json).collect()))
    })
    .await
}

/// `GET|POST /api/v1/labels`: the label names of the matching series.
async fn labels(State(s): State<AppState>, r: PromRequest) -> Response {
    r.respond(|tenant, params| async move {
        let found = matching_series(&s.series_source, &tenant, &params).await?;
        let names: BTreeSet<&str> = found
            .iter()
            .flat_map(|l| l.iter().map(|(n, _)| n.as_str()))
            .collect();
        Ok(json!(names))
    })
    .await
}

/// `GET /api/v1/label/{name}/values`: the values of a label over the matching series.
async fn label_values(
    State(s): State<AppState>,
    Path(name): Path<String>,
    r: PromRequest,
) -> Response {
    r.respond(|tenant, params| async move {
        let valid = !name.is_empty()
            && name
                .chars()
                .enumerate()
                .all(|(i, c)| c == '_' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit()));
        if !valid {
            return Err(PromError::bad_data(format!("invalid label name: {name:?}")));
        }
        let found = matching_series(&s.series_source, &tenant, &params).await?;
        let values: BTreeSet<&str> = found
            .iter()
            .filter_map(|l| l.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()))
            .filter(|v| !v.is_empty())
            .collect();
        Ok(json!(values))
    })
    .await
}

/// `GET /api/v1/status/buildinfo`: the Prometheus version whose PromQL semantics the
/// evaluator follows (clients such as Grafana pick features by it), and Fleetstream's.
async fn buildinfo(p: Result<Principal, ApiError>) -> Response {
    if let Err(e) = p {
        return e.into_response();
    }
    success(json!({
        "version": "2.42.0",
        "revision": concat!("fleetstream-", env!("CARGO_PKG_VERSION")),
        "branch": "fleetstream",
        "buildUser": "fleetstream",
        "buildDate": "",
        "goVersion": "",
    }))
}

/// `GET /api/v1/metadata`: no metric metadata is stored, so none (Grafana's metric browser
/// asks).
async fn metadata(State(_): State<AppState>, r: PromRequest) -> Response {
    r.respond(|_, _| async { Ok(json!({})) }).await
}

/// `GET|POST /api/v1/query_exemplars`: no exemplars are stored, so none (Grafana asks when
/// exemplars are on).
async fn query_exemplars(State(_): State<AppState>, r: PromRequest) -> Response {
    r.respond(|_, params| async move {
        params.query()?;
        Ok(json!([]))
    })
    .await
}
