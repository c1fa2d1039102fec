//! Notifications (issue 15 §1): a tenant's channels, routes and silences, the deliveries
//! the notifier made, and a channel test. The notifier (`fleet-notifier`) reads the same
//! tables; the API writes no topic here.
//!
//! | route | who | what |
//! | --- | --- | --- |
//! | `POST /api/v1/tenants/{tenant_id}/notification-channels` | admins, operators of the tenant | create a channel: `webhook` (the signing secret is in the answer, once), `slack` or `email` |
//! | `GET /api/v1/tenants/{tenant_id}/notification-channels` | and viewers | list (never secrets or passwords) |
//! | `DELETE /api/v1/notification-channels/{channel_id}` | admins, operators | delete (its pending deliveries are given up) |
//! | `POST /api/v1/notification-channels/{channel_id}/test` | admins, operators | queue a test message (202; see the deliveries) |
//! | `POST /api/v1/tenants/{tenant_id}/notification-routes` | admins, operators | which alerts go to which channels |
//! | `GET /api/v1/tenants/{tenant_id}/notification-routes` | and viewers | list |
//! | `DELETE /api/v1/notification-routes/{route_id}` | admins, operators | delete |
//! | `POST /api/v1/tenants/{tenant_id}/silences` | admins, operators | a maintenance window with an expiry |
//! | `GET /api/v1/tenants/{tenant_id}/silences` | and viewers | the silences not expired |
//! | `DELETE /api/v1/silences/{silence_id}` | admins, operators | end a silence |
//! | `GET /api/v1/notification-deliveries?tenant=&channel_id=&alert_id=&status=&limit=` | every role, own tenant | deliveries with every attempt, newest first |
//!
//! As everywhere: a viewer's write is 403 before any lookup; another tenant's object is
//! the 404 of a made-up id; a tenant other than the caller's is 403. Every change is in
//! the audit log (`notification_channel.create`, `.delete`, `.test`,
//! `notification_route.create`, `.delete`, `silence.create`, `.delete`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{delete, get, post};
use axum::Router;
use fleet_read_model::{
    AlertMatcher, ChannelKind, ChannelSettings, Delivery, DeliveryQuery, DeliveryStatus,
    EmailSettings, NewDelivery, NotificationChannel, NotificationRoute, Silence, SmtpTls,
};
use fleet_service::{ApiError, FieldJson};
use serde::{Deserialize, Serialize};

use crate::auth::{
    not_found, read_scope, require_operator, require_operator_of, require_viewer, require_writer,
    Principal,
};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::name_field;
use crate::query::{chosen, limit, Limit, OneOf, Params};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/tenants/{tenant_id}/notification-channels",
            post(create_channel).get(list_channels),
        )
        .route(
            "/api/v1/notification-channels/{channel_id}",
            delete(delete_channel),
        )
        .route(
            "/api/v1/notification-channels/{channel_id}/test",
            post(test_channel),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/notification-routes",
            post(create_route).get(list_routes),
        )
        .route(
            "/api/v1/notification-routes/{route_id}",
            delete(delete_route),
        )
        .route(
            "/api/v1/tenants/{tenant_id}/silences",
            post(create_silence).get(list_silences),
        )
        .route("/api/v1/silences/{silence_id}", delete(delete_silence))
        .route("/api/v1/notification-deliveries", get(list_deliveries))
}

/// Most channels one tenant may have.
pub const MAX_CHANNELS: usize = 50;
/// Most routes one tenant may have.
pub const MAX_ROUTES: usize = 100;
/// Most silences not expired one tenant may have.
pub const MAX_SILENCES: usize = 100;
/// Longest channel URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Most recipients of an email channel.
pub const MAX_RECIPIENTS: usize = 20;
/// Most values in one list of a matcher.
pub const MAX_MATCH_VALUES: usize = 50;
/// Most channels of one route.
pub const MAX_ROUTE_CHANNELS: usize = 10;
/// Longest grouping window, in seconds.
pub const MAX_GROUP_WINDOW_SECS: u32 = 3600;
/// Longest silence, in seconds (a year).
pub const MAX_SILENCE_SECS: u64 = 31_536_000;

/// Body of channel creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelBody {
    /// Name.
    #[schema(max_length = 200, pattern = "fleet:name")]
    pub name: String,
    /// `webhook`, `slack` or `email`.
    pub kind: ChannelKind,
    /// Webhook and Slack: the URL to post to (http or https).
    #[serde(default)]
    #[schema(max_length = 2048, pattern = "^https?://[!-~]+$")]
    pub url: Option<String>,
    /// Email: the SMTP settings.
    #[serde(default)]
    pub email: Option<EmailBody>,
}

/// SMTP settings of an email channel.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailBody {
    /// SMTP server host name or address.
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9.:-]+$")]
    pub host: String,
    /// SMTP server port (587 for STARTTLS, 465 for TLS).
    #[serde(default, deserialize_with = "crate::input::whole_number")]
    #[schema(value_type = u16, required = true, minimum = 1, maximum = 65535)]
    pub port: Option<i64>,
    /// `starttls` (default), `tls` or `none`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name for SMTP authentication.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200, pattern = "^[!-~]+$")]
    pub username: Option<String>,
    /// Password for SMTP authentication (stored, never shown).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 200)]
    pub password: Option<String>,
    /// Sender address.
    #[schema(max_length = 254, pattern = "^[!-;=?A-~]+@[!-;=?A-~]+$")]
    pub from: String,
    /// Recipient addresses (1 to 20).
    #[schema(min_items = 1, max_items = 20)]
    pub to: Vec<EmailAddress>,
}

/// An email address.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct EmailAddress(pub String);

/// A string schema with bounds and a pattern (for the newtypes of list items).
fn string_schema(
    min: usize,
    max: usize,
    pattern: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(pattern))
        .into()
}

impl utoipa::PartialSchema for EmailAddress {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(3, 254, "^[!-;=?A-~]+@[!-;=?A-~]+$")
    }
}

impl utoipa::ToSchema for EmailAddress {}

/// A new channel: for a webhook, the signing secret, shown here only.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedChannel {
    /// The channel as listed later.
    #[serde(flatten)]
    pub channel: NotificationChannel,
    /// Webhook: the secret of its `X-Fleet-Signature` header; it cannot be shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Answer of a channel listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ChannelList {
    /// Channels, by name (never secrets or passwords).
    pub channels: Vec<NotificationChannel>,
}

/// Which alerts a route or silence takes: each list non-empty narrows (any of its values
/// matches); an empty or absent list matches anything.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchBody {
    /// Severities: `info`, `warning`, `critical`.
    #[serde(default)]
    #[schema(max_items = 3)]
    pub severities: Vec<SeverityName>,
    /// Agent tags (any of).
    #[serde(default)]
    #[schema(max_items = 50)]
    pub tags: Vec<MatchValue>,
    /// Location ids.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub location_ids: Vec<MatchValue>,
    /// Agent ids.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub agent_ids: Vec<MatchValue>,
    /// Rule ids.
    #[serde(default)]
    #[schema(max_items = 50)]
    pub rule_ids: Vec<MatchValue>,
}

/// A severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SeverityName {
    /// Informational.
    Info,
    /// Warning.
    Warning,
    /// Critical.
    Critical,
}

impl SeverityName {
    fn as_str(self) -> &'static str {
        match self {
            SeverityName::Info => "info",
            SeverityName::Warning => "warning",
            SeverityName::Critical => "critical",
        }
    }
}

/// A value a matcher compares with.
#[derive(Debug, Clone, Deserialize)]
#[serde(transparent)]
pub struct MatchValue(pub String);

impl utoipa::PartialSchema for MatchValue {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(1, 200, "fleet:name")
    }
}

impl utoipa::ToSchema for MatchValue {}

/// Body of route creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteBody {
    /// Name.
    #[schema(max_length = 200, pattern = "fleet:name")]
    pub name: String,
    /// Channels of the tenant the matched alerts go to (1 to 10).
    #[schema(min_items = 1, max_items = 10)]
    pub channel_ids: Vec<String>,
    /// Which alerts (absent: every alert of the tenant).
    #[serde(default, rename = "match")]
    pub matcher: MatchBody,
    /// Alerts of this route arriving within this many seconds of the first go in one
    /// message (0, the default: each at once).
    #[serde(default, deserialize_with = "crate::input::whole_number")]
    #[schema(value_type = Option<u32>, minimum = 0, maximum = 3600)]
    pub group_window_secs: Option<i64>,
    /// Send acknowledgements and resolutions too (default true).
    #[serde(default = "yes")]
    pub send_resolved: bool,
}

fn yes() -> bool {
    true
}

/// Answer of a route listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RouteList {
    /// Routes, by name.
    pub routes: Vec<NotificationRoute>,
}

/// Body of silence creation.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SilenceBody {
    /// Why (shown in the list).
    #[schema(max_length = 1000, pattern = "fleet:name")]
    pub comment: String,
    /// Which alerts (at least one list must be given: a silence of everything is refused).
    #[serde(rename = "match")]
    pub matcher: MatchBody,
    /// How long from now, in seconds (60 to a year).
    #[serde(default, deserialize_with = "crate::input::whole_number")]
    #[schema(value_type = u64, required = true, minimum = 60, maximum = 31536000)]
    pub duration_secs: Option<i64>,
}

/// Answer of a silence listing.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SilenceList {
    /// Silences not expired, soonest expiry first.
    pub silences: Vec<Silence>,
}

/// Parameters of the deliveries list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Only this channel
    #[param(min_length = 1)]
    pub channel_id: Option<String>,
    /// Only this alert
    #[param(min_length = 1)]
    pub alert_id: Option<String>,
    /// pending, delivered or dead
    #[param(value_type = Option<String>, pattern = "^(pending|delivered|dead)$")]
    pub status: Option<OneOf<DeliveryStatus>>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
}

/// Answer of the deliveries list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryList {
    /// Deliveries, newest first, each with every attempt.
    pub deliveries: Vec<Delivery>,
}

fn check_channel_url(url: Option<&str>) -> Result<String, ApiError> {
    let Some(url) = url else {
        return Err(invalid_combination(
            "url",
            "a webhook or Slack channel needs a url",
        ));
    };
    if url.len() > MAX_URL_BYTES {
        return Err(ApiError::invalid_field(
            "url",
            format!("at most {MAX_URL_BYTES} bytes"),
        ));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid_field(
            "url",
            "the scheme must be http or https",
        ));
    }
    let bad = |m: &str| invalid_combination("url", m.to_owned());
    let u = url::Url::parse(url).map_err(|e| bad(&format!("not a URL: {e}")))?;
    if u.host_str().is_none_or(str::is_empty) {
        return Err(bad("the URL names no host"));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad("credentials in the URL are not allowed"));
    }
    Ok(u.to_string())
}

fn check_address(field: &str, v: &str) -> Result<String, ApiError> {
    let ok = v.len() <= 254
        && v.split_once('@')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && !b.contains('@'))
        && v.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'<' && c != b'>');
    if !ok {
        return Err(ApiError::invalid_field(
            field,
            "must be an email address (local@domain, at most 254 characters)",
        ));
    }
    Ok(v.to_owned())
}

fn check_email(e: EmailBody) -> Result<(EmailSettings, Option<String>), ApiError> {
    let host_ok = !e.host.is_empty()
        && e.host.len() <= 253
        && e.host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':'));
    if !host_ok {
        return Err(ApiError::invalid_field(
            "email.host",
            "must be a host name or address (at most 253 characters)",
        ));
    }
    let port = e
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .ok_or_else(|| ApiError::invalid_field("email.port", "required, 1 to 65535"))?;
    if let Some(u) = &e.username {
        if u.is_empty() || u.len() > 200 || !u.bytes().all(|c| c.is_ascii_graphic()) {
            return Err(ApiError::invalid_field(
                "email.username",
                "1 to 200 visible ASCII characters",
            ));
        }
    }
    if let Some(p) = &e.password {
        if p.is_empty() || p.chars().count() > 200 {
            return Err(ApiError::invalid_field(
                "email.password",
                "1 to 200 characters",
            ));
        }
    }
    if e.username.is_some() != e.password.is_some() {
        return Err(invalid_combination(
            "email.password",
            "give both username and password, or neither",
        ));
    }
    if e.to.is_empty() || e.to.len() > MAX_RECIPIENTS {
        return Err(ApiError::invalid_field(
            "email.to",
            format!("1 to {MAX_RECIPIENTS} addresses"),
        ));
    }
    let from = check_address("email.from", &e.from)?;
    let to =
        e.to.iter()
            .enumerate()
            .map(|(i, a)| check_address(&format!("email.to[{i}]"), &a.0))
            .collect::<Result<Vec<_>, _>>()?;
    Ok((
        EmailSettings {
            host: e.host,
            port,
            tls: e.tls,
            username: e.username,
            from,
            to,
        },
        e.password,
    ))
}

fn check_match(m: MatchBody) -> Result<AlertMatcher, ApiError> {
    let list = |field: &str, v: Vec<MatchValue>| -> Result<Vec<String>, ApiError> {
        if v.len() > MAX_MATCH_VALUES {
            return Err(ApiError::invalid_field(
                format!("match.{field}"),
                format!("at most {MAX_MATCH_VALUES} values"),
            ));
        }
        v.into_iter()
            .enumerate()
            .map(|(i, x)| name_field(&format!("match.{field}[{i}]"), &x.0))
            .collect()
    };
    if m.severities.len() > 3 {
        return Err(ApiError::invalid_field(
            "match.severities",
            "at most 3 values",
        ));
    }
    let mut severities: Vec<String> = Vec::new();
    for s in &m.severities {
        if !severities.iter().any(|x| x == s.as_str()) {
            severities.push(s.as_str().to_owned());
        }
    }
    Ok(AlertMatcher {
        severities,
        tags: list("tags", m.tags)?,
        location_ids: list("location_ids", m.location_ids)?,
        agent_ids: list("agent_ids", m.agent_ids)?,
        rule_ids: list("rule_ids", m.rule_ids)?,
    })
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/notification-channels",
    tag = "notifications",
    summary = "Create a notification channel: webhook (the signing secret is shown once), Slack-compatible webhook or email over SMTP",
    params(("tenant_id" = String, Path, description = "Tenant")),
    request_body = ChannelBody,
    responses((status = 201, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_channel(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    body: Result<FieldJson<ChannelBody>, ApiError>,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let b = body?.0;
        let name = name_field("name", &b.name)?;
        let (settings, secret) = match b.kind {
            ChannelKind::Webhook | ChannelKind::Slack => {
                if b.email.is_some() {
                    return Err(invalid_combination("email", "only email channels take SMTP settings"));
                }
                let url = check_channel_url(b.url.as_deref())?;
                let secret = (b.kind == ChannelKind::Webhook)
                    .then(|| fleet_registry::new_secret("whsec_"));
                (ChannelSettings { url: Some(url), email: None }, secret)
            }
            ChannelKind::Email => {
                if b.url.is_some() {
                    return Err(invalid_combination("url", "email channels take no url"));
                }
                let Some(e) = b.email else {
                    return Err(invalid_combination("email", "an email channel needs its SMTP settings"));
                };
                let (email, password) = check_email(e)?;
                (ChannelSettings { url: None, email: Some(email) }, password)
            }
        };
        crate::routes::tenants::known_tenant(&s, &tenant_id, "tenant_id").await?;
        let count = s.read_model.list_channels(Some(&tenant_id)).await.map_err(store_error)?.len();
        if count >= MAX_CHANNELS {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_channels",
                format!("the tenant has {count} channels, the most allowed: delete one first"),
            )
            .with_field("tenant_id"));
        }
        let channel = NotificationChannel {
            channel_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.clone(),
            name,
            kind: b.kind,
            settings,
            secret: secret.clone(),
            created_at: fleet_schemas::time::now_micros(),
            created_by: p.actor(),
        };
        s.read_model.create_channel(&channel).await.map_err(store_error)?;
        tracing::info!(channel_id = %channel.channel_id, %tenant_id, kind = channel.kind.as_str(), actor = %p.actor(), "Notification channel created.");
        s.audit(
            &p,
            Some(&tenant_id),
            "notification_channel.create",
            &channel.channel_id,
            Some(serde_json::json!({ "name": channel.name, "kind": channel.kind.as_str() })),
        )
        .await;
        // Only a webhook's signing secret is shown (once); an SMTP password never.
        let shown = (channel.kind == ChannelKind::Webhook).then_some(secret).flatten();
        Ok(CreatedChannel { channel, secret: shown })
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/notification-channels",
    tag = "notifications",
    summary = "List a tenant's notification channels (never secrets)",
    params(("tenant_id" = String, Path, description = "Tenant")),
    responses((status = 200, description = "Done", body = ChannelList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_channels(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
        let channels = s
            .read_model
            .list_channels(Some(&tenant_id))
            .await
            .map_err(store_error)?;
        Ok(ChannelList { channels })
    }
    .await;
    reply(StatusCode::OK, r)
}

/// The channel `channel_id` if `p` may act on it (after [`require_writer`]).
async fn find_channel(
    s: &AppState,
    p: &Principal,
    channel_id: &str,
) -> Result<NotificationChannel, ApiError> {
    let missing = || not_found("channel", "channel_id");
    let c = s
        .read_model
        .get_channel(p.tenant_id.as_deref(), channel_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    require_operator_of(p, &c.tenant_id, missing)?;
    Ok(c)
}

#[utoipa::path(
    delete,
    path = "/api/v1/notification-channels/{channel_id}",
    tag = "notifications",
    summary = "Delete a notification channel (its pending deliveries are given up)",
    params(("channel_id" = String, Path, description = "Channel id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn delete_channel(
    State(s): State<AppState>,
    Path(channel_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let c = find_channel(&s, &p, &channel_id).await?;
        s.read_model
            .delete_channel(Some(&c.tenant_id), &channel_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("channel", "channel_id"))?;
        s.audit(
            &p,
            Some(&c.tenant_id),
            "notification_channel.delete",
            &channel_id,
            Some(serde_json::json!({ "name": c.name })),
        )
        .await;
        Ok(serde_json::json!({ "channel_id": channel_id, "deleted": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/notification-channels/{channel_id}/test",
    tag = "notifications",
    summary = "Queue a test message to a channel; the notifier sends it at once (see the deliveries for the result)",
    params(("channel_id" = String, Path, description = "Channel id")),
    responses((status = 202, description = "Queued", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn test_channel(
    State(s): State<AppState>,
    Path(channel_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let c = find_channel(&s, &p, &channel_id).await?;
        let now = fleet_schemas::time::now_micros();
        let event_id = uuid::Uuid::new_v4().to_string();
        let alert = fleet_schemas::AlertEvent {
            event_id: event_id.clone(),
            alert_id: format!("test-{event_id}"),
            tenant_id: c.tenant_id.clone(),
            agent_id: "test".into(),
            kind: fleet_schemas::AlertEventKind::Raised,
            rule_id: "test".into(),
            rule_name: "Test notification".into(),
            metric: "test".into(),
            subject: None,
            severity: fleet_schemas::AlertSeverity::Info,
            operator: ">".into(),
            threshold: 0.0,
            value: 1.0,
            message: format!("A test of channel {} by {}", c.name, p.actor()),
            actor: Some(p.actor()),
            occurred_at: now,
            ingested_at: now,
        };
        let delivery = NewDelivery {
            delivery_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: c.tenant_id.clone(),
            channel_id: channel_id.clone(),
            route_id: None,
            event_id: event_id.clone(),
            alert_id: alert.alert_id.clone(),
            kind: "test".into(),
            alert: fleet_read_model::alert_payload(&alert),
            group_window_ms: 0,
            now,
            source: None,
        };
        s.read_model.enqueue_deliveries(std::slice::from_ref(&delivery)).await.map_err(store_error)?;
        s.audit(&p, Some(&c.tenant_id), "notification_channel.test", &channel_id, Some(serde_json::json!({ "delivery_id": delivery.delivery_id })))
            .await;
        Ok(serde_json::json!({ "delivery_id": delivery.delivery_id, "event_id": event_id, "alert_id": alert.alert_id }))
    }
    .await;
    reply(StatusCode::ACCEPTED, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/notification-routes",
    tag = "notifications",
    summary = "Create a notification route: which alerts (severity, tag, location, agent, rule) go to which channels, with a grouping window",
    params(("tenant_id" = String, Path, description = "Tenant")),
    request_body = RouteBody,
    responses((status = 201, description = "Done", body = NotificationRoute), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_route(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    body: Result<FieldJson<RouteBody>, ApiError>,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let b = body?.0;
        let name = name_field("name", &b.name)?;
        if b.channel_ids.is_empty() || b.channel_ids.len() > MAX_ROUTE_CHANNELS {
            return Err(ApiError::invalid_field(
                "channel_ids",
                format!("1 to {MAX_ROUTE_CHANNELS} channels"),
            ));
        }
        let window = b.group_window_secs.unwrap_or(0);
        if !(0..=i64::from(MAX_GROUP_WINDOW_SECS)).contains(&window) {
            return Err(ApiError::invalid_field(
                "group_window_secs",
                format!("0 to {MAX_GROUP_WINDOW_SECS}"),
            ));
        }
        let matcher = check_match(b.matcher)?;
        crate::routes::tenants::known_tenant(&s, &tenant_id, "tenant_id").await?;
        let channels = s
            .read_model
            .list_channels(Some(&tenant_id))
            .await
            .map_err(store_error)?;
        let mut channel_ids: Vec<String> = Vec::new();
        for (i, id) in b.channel_ids.iter().enumerate() {
            if !channels.iter().any(|c| &c.channel_id == id) {
                return Err(invalid_combination(
                    &format!("channel_ids[{i}]"),
                    "no such channel in the tenant",
                ));
            }
            if !channel_ids.contains(id) {
                channel_ids.push(id.clone());
            }
        }
        let count = s
            .read_model
            .list_routes(Some(&tenant_id))
            .await
            .map_err(store_error)?
            .len();
        if count >= MAX_ROUTES {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_routes",
                format!("the tenant has {count} routes, the most allowed"),
            )
            .with_field("tenant_id"));
        }
        let route = NotificationRoute {
            route_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.clone(),
            name,
            channel_ids,
            matcher,
            // At most 3600: no overflow.
            group_window_ms: window.saturating_mul(1000),
            send_resolved: b.send_resolved,
            created_at: fleet_schemas::time::now_micros(),
            created_by: p.actor(),
        };
        s.read_model
            .create_route(&route)
            .await
            .map_err(store_error)?;
        s.audit(
            &p,
            Some(&tenant_id),
            "notification_route.create",
            &route.route_id,
            Some(serde_json::json!({ "name": route.name })),
        )
        .await;
        Ok(route)
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/notification-routes",
    tag = "notifications",
    summary = "List a tenant's notification routes",
    params(("tenant_id" = String, Path, description = "Tenant")),
    responses((status = 200, description = "Done", body = RouteList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_routes(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
        let routes = s
            .read_model
            .list_routes(Some(&tenant_id))
            .await
            .map_err(store_error)?;
        Ok(RouteList { routes })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    delete,
    path = "/api/v1/notification-routes/{route_id}",
    tag = "notifications",
    summary = "Delete a notification route",
    params(("route_id" = String, Path, description = "Route id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn delete_route(
    State(s): State<AppState>,
    Path(route_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let route = s
            .read_model
            .delete_route(p.tenant_id.as_deref(), &route_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("route", "route_id"))?;
        s.audit(
            &p,
            Some(&route.tenant_id),
            "notification_route.delete",
            &route_id,
            Some(serde_json::json!({ "name": route.name })),
        )
        .await;
        Ok(serde_json::json!({ "route_id": route_id, "deleted": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/tenants/{tenant_id}/silences",
    tag = "notifications",
    summary = "Create a silence (maintenance window): matching alerts are not sent until it expires",
    params(("tenant_id" = String, Path, description = "Tenant")),
    request_body = SilenceBody,
    responses((status = 201, description = "Done", body = Silence), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn create_silence(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
    body: Result<FieldJson<SilenceBody>, ApiError>,
) -> Response {
    let r = async {
        require_operator(&p, &tenant_id)?;
        let b = body?.0;
        let comment = fleet_schemas::text::check_name(&b.comment, 1000)
            .map(str::to_owned)
            .map_err(|m| ApiError::invalid_field("comment", m))?;
        let secs = b
            .duration_secs
            .filter(|d| u64::try_from(*d).is_ok_and(|d| (60..=MAX_SILENCE_SECS).contains(&d)))
            .ok_or_else(|| {
                ApiError::invalid_field(
                    "duration_secs",
                    format!("required, 60 to {MAX_SILENCE_SECS}"),
                )
            })?;
        let matcher = check_match(b.matcher)?;
        if matcher == AlertMatcher::default() {
            return Err(invalid_combination(
                "match",
                "a silence names what it silences: give at least one list",
            ));
        }
        crate::routes::tenants::known_tenant(&s, &tenant_id, "tenant_id").await?;
        let now = fleet_schemas::time::now_micros();
        let count = s
            .read_model
            .list_silences(Some(&tenant_id), Some(now))
            .await
            .map_err(store_error)?
            .len();
        if count >= MAX_SILENCES {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "too_many_silences",
                format!("the tenant has {count} silences, the most allowed"),
            )
            .with_field("tenant_id"));
        }
        // duration_secs is at most a year: no overflow.
        let micros = secs.saturating_mul(1_000_000);
        let silence = Silence {
            silence_id: uuid::Uuid::now_v7().to_string(),
            tenant_id: tenant_id.clone(),
            comment,
            matcher,
            starts_at: now,
            expires_at: now.saturating_add(micros),
            created_at: now,
            created_by: p.actor(),
        };
        s.read_model
            .create_silence(&silence)
            .await
            .map_err(store_error)?;
        s.audit(
            &p,
            Some(&tenant_id),
            "silence.create",
            &silence.silence_id,
            Some(serde_json::json!({ "expires_at": silence.expires_at })),
        )
        .await;
        Ok(silence)
    }
    .await;
    reply(StatusCode::CREATED, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/tenants/{tenant_id}/silences",
    tag = "notifications",
    summary = "List a tenant's silences that have not expired",
    params(("tenant_id" = String, Path, description = "Tenant")),
    responses((status = 200, description = "Done", body = SilenceList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_silences(
    State(s): State<AppState>,
    Path(tenant_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_viewer(&p, &tenant_id)?;
        let silences = s
            .read_model
            .list_silences(Some(&tenant_id), Some(fleet_schemas::time::now_micros()))
            .await
            .map_err(store_error)?;
        Ok(SilenceList { silences })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    delete,
    path = "/api/v1/silences/{silence_id}",
    tag = "notifications",
    summary = "End a silence",
    params(("silence_id" = String, Path, description = "Silence id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn delete_silence(
    State(s): State<AppState>,
    Path(silence_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let silence = s
            .read_model
            .delete_silence(p.tenant_id.as_deref(), &silence_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found("silence", "silence_id"))?;
        s.audit(
            &p,
            Some(&silence.tenant_id),
            "silence.delete",
            &silence_id,
            None,
        )
        .await;
        Ok(serde_json::json!({ "silence_id": silence_id, "deleted": true }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    get,
    path = "/api/v1/notification-deliveries",
    tag = "notifications",
    summary = "Notification deliveries with every attempt (status, latency, error), newest first",
    params(DeliveryParams),
    responses((status = 200, description = "Done", body = DeliveryList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_deliveries(
    State(s): State<AppState>,
    p: Principal,
    Params(q): Params<DeliveryParams>,
) -> Response {
    let r = async {
        let tenant_id = read_scope(&p, q.tenant.as_deref())?;
        let deliveries = s
            .read_model
            .list_deliveries(&DeliveryQuery {
                tenant_id,
                channel_id: q.channel_id,
                alert_id: q.alert_id,
                status: chosen(q.status),
                limit: limit(q.limit),
            })
            .await
            .map_err(store_error)?;
        Ok(DeliveryList { deliveries })
    }
    .await;
    reply(StatusCode::OK, r)
}
