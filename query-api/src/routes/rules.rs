//! Alert rules and alert handling through the admin API. Every route needs an API key
//! (see [`crate::auth`]): listing a tenant's rules needs a viewer of the tenant; changing
//! rules, and acknowledging or resolving an alert, an operator of the rule's or alert's
//! tenant (or an admin); a viewer is refused before anything is looked up, and another
//! tenant's rule or alert is the same 404 as an unknown id. An `Idempotency-Key` on rule
//! creation names the rule id; another rule body under the same key is 409. Rules are events: each change
//! writes a RuleEvent to `fleet.rules.v1` (key: rule id, compacted), which the alert
//! evaluators follow, so a change applies without a restart.
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/tenants/{tenant_id}/rules` [`RuleBody`] | create a rule (201, RuleDefined) |
//! | `GET /api/v1/tenants/{tenant_id}/rules` | the tenant's rules |
//! | `POST /api/v1/tenants/{tenant_id}/rules/defaults` | (re)write the default rule set |
//! | `PUT /api/v1/rules/{rule_id}` [`RuleBody`] | replace a rule's definition (RuleDefined) |
//! | `POST /api/v1/rules/{rule_id}/disable`, `/enable` | RuleDefined with `enabled` false / true |
//! | `DELETE /api/v1/rules/{rule_id}` | RuleDeleted (its open alerts resolve) |
//! | `GET /api/v1/alerts?tenant=&agent_id=&status=&limit=` | alerts, newest first |
//! | `POST /api/v1/alerts/{alert_id}/acknowledge`, `/resolve` | AlertEvent ACKNOWLEDGED / RESOLVED with the caller as actor |
//!
//! A rule body: `{"name", "metric", "operator"?, "warning"?, "critical"?, "recovery"?,
//! "for_secs"?, "renotify_secs"?, "scope"?, "scope_value"?, "subject"?, "enabled"?}`;
//! `scope` is `tenant` (default), `agent` (`scope_value`: agent id) or `tag`
//! (`scope_value`: tag); `operator` defaults to `>`. Every bad field is a 400 naming it.
//! An event rule is `{"name", "event": {"kind", "attributes"?, "min_severity"?,
//! "subject_attribute"?, "recovery_kinds"?, "resolve_after_secs"?, "alert_severity"?},
//! "scope"?, "scope_value"?, "enabled"?}` (see `fleet_schemas::rules`); its view shows
//! `metric` `event.<kind>` and the `event` part.
//!
//! A new tenant gets [`default_rules`] (hooked into tenant creation). Their ids are
//! UUIDv5 of (tenant, rule key), so writing them again changes nothing.
//!
//! Current state comes from the read model, which projects `fleet.rules.v1` and
//! `fleet.alerts.v1` (no topic is read on a request): a rule or alert written a moment
//! ago can be changed once projected. Two concurrent updates of one rule: the last one
//! written wins.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_read_model::{AlertQuery, AlertRow, AlertStatus};
use fleet_schemas::rules::{SpecError, HEARTBEAT_ABSENT};
use fleet_schemas::{
    ids, AlertEvent, AlertEventKind, AlertSeverity, Record, RuleDefinition, RuleEvent,
    RuleEventKind, RuleScope, Wire,
};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{
    not_found, read_scope, require_operator, require_operator_of, require_viewer, require_writer,
    Principal,
};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::{idempotency_key, object_body};
use crate::query::{chosen, limit, Limit, OneOf, Params};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/tenants/{tenant_id}/rules",
            post(create_rule).get(list_rules),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/rules/defaults",
            post(write_defaults),
        )
        .route(
            "/api/v1/rules/{rule_id}",
            put(update_rule).delete(delete_rule),
        )
        .route("/api/v1/rules/{rule_id}/disable", post(disable_rule))
        .route("/api/v1/rules/{rule_id}/enable", post(enable_rule))
        .route("/api/v1/alerts", get(list_alerts))
        .route(
            "/api/v1/alerts/{alert_id}/acknowledge",
            post(acknowledge_alert),
        )
        .route("/api/v1/alerts/{alert_id}/resolve", post(resolve_alert))
}

/// Body of rule creation and update: the one way people write a rule.
pub use fleet_schemas::rules::RuleSpec as RuleBody;

/// A rule as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RuleView {
    /// Rule id.
    pub rule_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// `tenant`, `agent` or `tag`.
    pub scope: String,
    /// Agent id or tag.
    pub scope_value: Option<String>,
    /// Name.
    pub name: String,
    /// Metric.
    pub metric: String,
    /// Mount point, service, or a custom metric's labels.
    pub subject: Option<String>,
    /// Operator.
    pub operator: String,
    /// Warning threshold.
    pub warning: Option<f64>,
    /// Critical threshold.
    pub critical: Option<f64>,
    /// Recovery threshold.
    pub recovery: Option<f64>,
    /// For-duration, seconds.
    pub for_secs: i64,
    /// Re-notify interval, seconds (0: never).
    pub renotify_secs: i64,
    /// Whether it is evaluated.
    pub enabled: bool,
    /// Label matchers of a rule on the standard protocols' series; absent for a rule on
    /// an agent metric.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<fleet_schemas::LabelMatcher>>,
    /// What an event rule matches and what resolves it; absent for a rule on samples.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<fleet_schemas::EventRule>,
    /// Time of the last change (µs).
    pub updated_at: i64,
}

impl RuleView {
    fn new(ev: &RuleEvent, d: &RuleDefinition) -> RuleView {
        RuleView {
            rule_id: ev.rule_id.clone(),
            tenant_id: ev.tenant_id.clone(),
            scope: d.scope.as_str().to_owned(),
            scope_value: d.scope_value.clone(),
            name: d.name.clone(),
            metric: d.metric.clone(),
            subject: d.subject.clone(),
            operator: d.operator.clone(),
            warning: d.warning,
            critical: d.critical,
            recovery: d.recovery,
            for_secs: d.for_secs,
            renotify_secs: d.renotify_secs,
            enabled: d.enabled,
            labels: d.labels.clone(),
            event: d.event.clone(),
            updated_at: ev.occurred_at,
        }
    }
}

/// Checks a body and turns it into a definition; `enabled` fills in an absent flag. Each
/// field alone is a 400; fields that contradict each other a 422.
pub fn definition(body: &RuleBody, enabled: bool) -> Result<RuleDefinition, ApiError> {
    body.definition(enabled).map_err(|e| match e {
        SpecError::Field(e) => ApiError::invalid_field(e.field, e.message),
        SpecError::Combination(e) => invalid_combination(e.field, e.message),
    })
}

fn def(
    name: &str,
    metric: &str,
    operator: &str,
    levels: (Option<f64>, Option<f64>),
    recovery: Option<f64>,
    for_secs: i64,
) -> RuleDefinition {
    RuleDefinition {
        name: name.into(),
        scope: RuleScope::Tenant,
        scope_value: None,
        metric: metric.into(),
        subject: None,
        operator: operator.into(),
        warning: levels.0,
        critical: levels.1,
        recovery,
        for_secs,
        renotify_secs: 0,
        enabled: true,
        labels: None,
        event: None,
    }
}

/// The rules a new tenant gets, by stable key: CPU 80 / 95 %, memory 85 / 95 %, disk
/// 75 / 90 % per mount (each for 5 minutes, with recovery 5 points below warning), load
/// per core 1.5 / 3 for 5 minutes, a watched service stopped (`service.up == 0`, for one
/// minute), and the agent offline after three missed heartbeats (`heartbeat.absent >= 3`,
/// honoured by the liveness processor).
pub fn default_rules() -> Vec<(&'static str, RuleDefinition)> {
    vec![
        (
            "cpu",
            def(
                "CPU high",
                "cpu.percent",
                ">",
                (Some(80.0), Some(95.0)),
                Some(75.0),
                300,
            ),
        ),
        (
            "memory",
            def(
                "Memory high",
                "memory.percent",
                ">",
                (Some(85.0), Some(95.0)),
                Some(80.0),
                300,
            ),
        ),
        (
            "disk",
            def(
                "Disk filling up",
                "disk.percent",
                ">",
                (Some(75.0), Some(90.0)),
                Some(70.0),
                300,
            ),
        ),
        (
            "load",
            def(
                "Load per core high",
                "load.per_core",
                ">",
                (Some(1.5), Some(3.0)),
                Some(1.0),
                300,
            ),
        ),
        (
            "service-stopped",
            def(
                "Watched service stopped",
                "service.up",
                "==",
                (None, Some(0.0)),
                None,
                60,
            ),
        ),
        (
            "agent-offline",
            def(
                "Agent offline (3 missed heartbeats)",
                HEARTBEAT_ABSENT,
                ">=",
                (None, Some(3.0)),
                None,
                0,
            ),
        ),
    ]
}

/// Id of a tenant's default rule.
pub fn default_rule_id(tenant_id: &str, key: &str) -> String {
    ids::v5(&[tenant_id, "default-rule", key]).to_string()
}

async fn write_rules(
    log: &dyn EventLog,
    wire: &Wire,
    events: &[RuleEvent],
) -> Result<(), ApiError> {
    let mut records = Vec::with_capacity(events.len());
    for ev in events {
        records.push(ProduceRecord {
            key: Some(ev.rule_id.as_bytes().to_vec()),
            value: wire.encode(ev).map_err(ApiError::internal)?,
            timestamp_ms: Some(ev.occurred_at.div_euclid(1000)),
        });
    }
    log.produce(RuleEvent::TOPIC, records)
        .await
        .map_err(|e| ApiError::unavailable(format!("the rule was not written: {e}; retry"), 5))?;
    Ok(())
}

fn rule_event(
    rule_id: &str,
    tenant_id: &str,
    rule: Option<RuleDefinition>,
    actor: &str,
    now: i64,
) -> RuleEvent {
    RuleEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        rule_id: rule_id.to_owned(),
        tenant_id: tenant_id.to_owned(),
        kind: if rule.is_some() {
            RuleEventKind::Defined
        } else {
            RuleEventKind::Deleted
        },
        rule,
        actor: Some(actor.to_owned()),
        occurred_at: now,
        ingested_at: now,
    }
}

/// Writes a tenant's default rules (encoded with `wire`); returns their ids.
pub async fn write_default_rules(
    log: &dyn EventLog,
    wire: &Wire,
    tenant_id: &str,
    actor: &str,
) -> Result<Vec<String>, ApiError> {
    let now = fleet_schemas::time::now_micros();
    let events: Vec<RuleEvent> = default_rules()
        .into_iter()
        .map(|(key, d)| {
            rule_event(
                &default_rule_id(tenant_id, key),
                tenant_id,
                Some(d),
                actor,
                now,
            )
        })
        .collect();
    write_rules(log, wire, &events).await?;
    Ok(events.into_iter().map(|e| e.rule_id).collect())
}

/// The current rule `rule_id`, if `p` may change it (after [`require_writer`]): unknown,
/// deleted and another tenant's are the same 404.
async fn existing_rule(s: &AppState, p: &Principal, rule_id: &str) -> Result<RuleEvent, ApiError> {
    let missing = || not_found("rule", "rule_id");
    let rule = s
        .read_model
        .get_rule(rule_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    require_operator_of(p, &rule.tenant_id, missing)?;
    Ok(rule)
}

fn view(ev: &RuleEvent) -> Option<RuleView> {
    ev.rule.as_ref().map(|d| RuleView::new(ev, d))
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/rules",
    tag = "rules",
    summary = "Create an alert rule",
    params(("tenant_id" = String, Path, description = "Tenant id"), ("Idempotency-Key" = Option<String>, Header, description = "Names the rule: a retry with the same definition answers the same; another definition under the same key is 409", pattern = "^[!-~]{1,200}$")),
    request_body = RuleBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_rule(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let actor = p.actor();
        let b: RuleBody = object_body(&body)?;
        let d = definition(&b, true)?;
        let key = idempotency_key(&headers)?;
        crate::routes::tenants::known_tenant(&s, &tenant_id, "tenant_id").await?;
        let rule_id = match key {
            Some(k) => {
                let rule_id = ids::v5(&[&tenant_id, "rule", &k]).to_string();
                let canonical =
                    serde_json::json!({ "tenant_id": tenant_id, "rule": d, "actor": actor });
                s.claim_idempotent(&rule_id, &canonical).await?;
                rule_id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        let ev = rule_event(
            &rule_id,
            &tenant_id,
            Some(d),
            &actor,
            fleet_schemas::time::now_micros(),
        );
        write_rules(s.log.as_ref(), &s.wire, std::slice::from_ref(&ev)).await?;
        tracing::info!(%rule_id, %tenant_id, %actor, "Rule created.");
        s.audit(&p, Some(&tenant_id), "rule.create", &rule_id, None)
            .await;
        view(&ev).ok_or_else(|| ApiError::internal("a defined rule without definition"))
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/rules",
    tag = "rules",
    summary = "A tenant's alert rules",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_rules(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
        // The read model's projection of the topic (eventually consistent: a rule written
        // a moment ago shows once projected).
        let rules: Vec<RuleView> = s
            .read_model
            .list_rules(Some(&tenant_id))
            .await
            .map_err(store_error)?
            .iter()
            .filter_map(view)
            .collect();
        Ok(serde_json::json!({ "rules": rules }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/rules/defaults",
    tag = "rules",
    summary = "Write the default rule set",
    params(("tenant_id" = String, Path, description = "Tenant id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn write_defaults(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let actor = p.actor();
        crate::routes::tenants::known_tenant(&s, &tenant_id, "tenant_id").await?;
        let ids = write_default_rules(s.log.as_ref(), &s.wire, &tenant_id, &actor).await?;
        tracing::info!(%tenant_id, %actor, "Default rules written.");
        s.audit(
            &p,
            Some(&tenant_id),
            "rule.defaults",
            &tenant_id,
            Some(serde_json::json!({ "rule_ids": ids })),
        )
        .await;
        Ok(serde_json::json!({ "tenant_id": tenant_id, "default_rules": ids }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    put,
    path = "/api/v1/rules/{rule_id}",
    tag = "rules",
    summary = "Replace a rule",
    params(("rule_id" = String, Path, description = "Rule id")),
    request_body = RuleBody,
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn update_rule(
    State(s): State<AppState>,
    Path(rule_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let b: RuleBody = object_body(&body)?;
        let old = existing_rule(&s, &p, &rule_id).await?;
        let enabled = old.rule.as_ref().is_none_or(|d| d.enabled);
        let d = definition(&b, enabled)?;
        let ev = rule_event(
            &rule_id,
            &old.tenant_id,
            Some(d),
            &actor,
            fleet_schemas::time::now_micros(),
        );
        write_rules(s.log.as_ref(), &s.wire, std::slice::from_ref(&ev)).await?;
        tracing::info!(%rule_id, %actor, "Rule updated.");
        s.audit(&p, Some(&old.tenant_id), "rule.update", &rule_id, None)
            .await;
        view(&ev).ok_or_else(|| ApiError::internal("a defined rule without definition"))
    }
    .await;
    reply(StatusCode::OK, r)
}

async fn set_enabled(
    s: &AppState,
    p: &Principal,
    rule_id: &str,
    enabled: bool,
) -> Result<RuleView, ApiError> {
    require_writer(p)?;
    let actor = p.actor();
    let old = existing_rule(s, p, rule_id).await?;
    let mut d = old
        .rule
        .clone()
        .ok_or_else(|| ApiError::internal("a defined rule without definition"))?;
    d.enabled = enabled;
    let ev = rule_event(
        rule_id,
        &old.tenant_id,
        Some(d),
        &actor,
        fleet_schemas::time::now_micros(),
    );
    write_rules(s.log.as_ref(), &s.wire, std::slice::from_ref(&ev)).await?;
    tracing::info!(%rule_id, enabled, %actor, "Rule switched.");
    s.audit(
        p,
        Some(&old.tenant_id),
        if enabled {
            "rule.enable"
        } else {
            "rule.disable"
        },
        rule_id,
        None,
    )
    .await;
    view(&ev).ok_or_else(|| ApiError::internal("a defined rule without definition"))
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/{rule_id}/disable",
    tag = "rules",
    summary = "Disable a rule",
    params(("rule_id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn disable_rule(
    State(s): State<AppState>,
    Path(rule_id): Path<String>,
    p: Principal,
) -> Response {
    reply(StatusCode::OK, set_enabled(&s, &p, &rule_id, false).await)
}

#[utoipa::path(
    post,
    path = "/api/v1/rules/{rule_id}/enable",
    tag = "rules",
    summary = "Enable a rule",
    params(("rule_id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn enable_rule(
    State(s): State<AppState>,
    Path(rule_id): Path<String>,
    p: Principal,
) -> Response {
    reply(StatusCode::OK, set_enabled(&s, &p, &rule_id, true).await)
}

#[utoipa::path(
    delete,
    path = "/api/v1/rules/{rule_id}",
    tag = "rules",
    summary = "Delete a rule",
    params(("rule_id" = String, Path, description = "Rule id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn delete_rule(
    State(s): State<AppState>,
    Path(rule_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let old = existing_rule(&s, &p, &rule_id).await?;
        let ev = rule_event(
            &rule_id,
            &old.tenant_id,
            None,
            &actor,
            fleet_schemas::time::now_micros(),
        );
        write_rules(s.log.as_ref(), &s.wire, std::slice::from_ref(&ev)).await?;
        tracing::info!(%rule_id, %actor, "Rule deleted.");
        s.audit(&p, Some(&old.tenant_id), "rule.delete", &rule_id, None)
            .await;
        Ok(serde_json::json!({ "rule_id": rule_id, "deleted": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}

/// The alert `alert_id` if `p` may act on it (after [`require_writer`]): unknown and
/// another tenant's are the same 404.
async fn find_alert(s: &AppState, p: &Principal, alert_id: &str) -> Result<AlertRow, ApiError> {
    let missing = || not_found("alert", "alert_id");
    let alert = s
        .read_model
        .get_alert(None, alert_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    require_operator_of(p, &alert.tenant_id, missing)?;
    Ok(alert)
}

/// The severity the read model shows, as the event carries it.
fn severity(alert: &AlertRow) -> Result<AlertSeverity, ApiError> {
    [
        AlertSeverity::Info,
        AlertSeverity::Warning,
        AlertSeverity::Critical,
    ]
    .into_iter()
    .find(|s| s.as_str() == alert.severity)
    .ok_or_else(|| ApiError::internal(format!("alert severity {:?}", alert.severity)))
}

async fn alert_action(
    s: &AppState,
    p: &Principal,
    alert_id: &str,
    kind: AlertEventKind,
) -> Result<serde_json::Value, ApiError> {
    require_writer(p)?;
    let actor = p.actor();
    let alert = find_alert(s, p, alert_id).await?;
    if alert.status == AlertStatus::Resolved {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "alert_resolved",
            "the alert is resolved already",
        )
        .with_field("alert_id"));
    }
    if kind == AlertEventKind::Acknowledged && alert.acknowledged_at.is_some() {
        return Ok(
            serde_json::json!({ "alert_id": alert_id, "status": "acknowledged", "changed": false }),
        );
    }
    let now = fleet_schemas::time::now_micros();
    let verb = match kind {
        AlertEventKind::Acknowledged => "acknowledged",
        _ => "resolved",
    };
    let ev = AlertEvent {
        event_id: ids::v5(&[alert_id, kind.as_str(), &actor]).to_string(),
        alert_id: alert.alert_id.clone(),
        tenant_id: alert.tenant_id.clone(),
        agent_id: alert.agent_id.clone(),
        kind,
        rule_id: alert.rule_id.clone(),
        severity: severity(&alert)?,
        message: format!("{}: {verb} by {actor}", alert.rule_name),
        rule_name: alert.rule_name,
        metric: alert.metric,
        subject: alert.subject,
        operator: alert.operator,
        threshold: alert.threshold,
        value: alert.value,
        actor: Some(actor.clone()),
        occurred_at: now,
        ingested_at: now,
    };
    let rec = ProduceRecord {
        key: Some(ev.key().as_bytes().to_vec()),
        value: s.wire.encode(&ev).map_err(ApiError::internal)?,
        timestamp_ms: Some(now / 1000),
    };
    s.log
        .produce(AlertEvent::TOPIC, vec![rec])
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("the alert event was not written: {e}; retry"), 5)
        })?;
    tracing::info!(%alert_id, %actor, kind = kind.as_str(), "Alert handled by a user.");
    s.audit(
        p,
        Some(&ev.tenant_id),
        &format!("alert.{verb}"),
        alert_id,
        None,
    )
    .await;
    Ok(serde_json::json!({ "alert_id": alert_id, "status": verb, "changed": true }))
}

#[utoipa::path(
    post,
    path = "/api/v1/alerts/{alert_id}/acknowledge",
    tag = "alerts",
    summary = "Acknowledge an alert",
    params(("alert_id" = String, Path, description = "Alert id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn acknowledge_alert(
    State(s): State<AppState>,
    Path(alert_id): Path<String>,
    p: Principal,
) -> Response {
    reply(
        StatusCode::OK,
        alert_action(&s, &p, &alert_id, AlertEventKind::Acknowledged).await,
    )
}

#[utoipa::path(
    post,
    path = "/api/v1/alerts/{alert_id}/resolve",
    tag = "alerts",
    summary = "Resolve an alert by hand",
    params(("alert_id" = String, Path, description = "Alert id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn resolve_alert(
    State(s): State<AppState>,
    Path(alert_id): Path<String>,
    p: Principal,
) -> Response {
    reply(
        StatusCode::OK,
        alert_action(&s, &p, &alert_id, AlertEventKind::Resolved).await,
    )
}

/// Parameters of the alert list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AlertParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Only this agent
    #[param(min_length = 1)]
    pub agent_id: Option<String>,
    /// open, acknowledged or resolved
    #[param(value_type = Option<String>, pattern = "^(open|acknowledged|resolved)$")]
    pub status: Option<OneOf<AlertStatus>>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
}

/// Answer of the alert list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Alerts, newest raise first.
    pub alerts: Vec<AlertRow>,
}

#[utoipa::path(
    get,
    path = "/api/v1/alerts",
    tag = "query",
    summary = "Alerts, newest first",
    params(AlertParams),
    responses((status = 200, description = "Done", body = AlertList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_alerts(
    Params(q): Params<AlertParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<AlertList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let query = AlertQuery {
        tenant_id: tenant,
        agent_id: q.agent_id,
        status: chosen(q.status),
        limit: limit(q.limit),
    };
    let alerts = s
        .read_model
        .list_alerts(&query)
        .await
        .map_err(store_error)?;
    Ok(Json(AlertList { alerts }))
}
