//! Notifications (issue 15 §1): the channels, routes and silences of a tenant, written by
//! the API, and the notifier's outbox of deliveries with every attempt. None of it is
//! derived from topics: a rebuild keeps these tables (`NOT_PROJECTED_TABLES`).

use serde::{Deserialize, Serialize};

/// How a channel delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// JSON body (versioned shape), HMAC-SHA256 signature header.
    Webhook,
    /// A Slack-compatible incoming webhook (`{"text": ...}`; Mattermost, Rocket.Chat).
    Slack,
    /// Email over SMTP.
    Email,
}

impl ChannelKind {
    /// Lower-case name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Webhook => "webhook",
            ChannelKind::Slack => "slack",
            ChannelKind::Email => "email",
        }
    }

    /// The kind a stored name names.
    pub fn parse(s: &str) -> Option<ChannelKind> {
        match s {
            "webhook" => Some(ChannelKind::Webhook),
            "slack" => Some(ChannelKind::Slack),
            "email" => Some(ChannelKind::Email),
            _ => None,
        }
    }
}

/// How an email channel reaches its SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain SMTP, upgraded with STARTTLS (refused when the server does not offer it).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No TLS at all (a relay on loopback or a private network).
    None,
}

/// An email channel's SMTP settings (the password is kept apart and never shown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EmailSettings {
    /// SMTP server host name.
    pub host: String,
    /// SMTP server port.
    pub port: u16,
    /// STARTTLS, TLS or none.
    #[serde(default)]
    pub tls: SmtpTls,
    /// User name for SMTP authentication (none: no authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    pub to: Vec<String>,
}

/// What a channel sends to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChannelSettings {
    /// Webhook and Slack channels: the URL posted to (http or https).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Email channels: the SMTP settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSettings>,
}

/// A notification channel of a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationChannel {
    /// Channel id.
    pub channel_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Name.
    pub name: String,
    /// Webhook, Slack or email.
    pub kind: ChannelKind,
    /// Where it sends.
    pub settings: ChannelSettings,
    /// The webhook's signing secret or the SMTP password: never serialized (the API shows
    /// a webhook secret once, at creation).
    #[serde(skip)]
    pub secret: Option<String>,
    /// When it was made (µs).
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
}

/// Which alerts a route or a silence takes: every listed dimension must match (an empty
/// list matches anything); within one list any value matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertMatcher {
    /// Severities (`info`, `warning`, `critical`).
    #[serde(default)]
    pub severities: Vec<String>,
    /// Agent tags: the agent carries at least one of them.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Location ids of the agent.
    #[serde(default)]
    pub location_ids: Vec<String>,
    /// Agent ids.
    #[serde(default)]
    pub agent_ids: Vec<String>,
    /// Rule ids.
    #[serde(default)]
    pub rule_ids: Vec<String>,
}

/// The facts of an alert a matcher looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFacts<'a> {
    /// `info`, `warning` or `critical`.
    pub severity: &'a str,
    /// The agent's tags.
    pub tags: &'a [String],
    /// The agent's location.
    pub location_id: Option<&'a str>,
    /// The agent.
    pub agent_id: &'a str,
    /// The rule.
    pub rule_id: &'a str,
}

impl AlertMatcher {
    /// Whether an alert with `facts` is taken.
    pub fn matches(&self, facts: &AlertFacts<'_>) -> bool {
        let any = |list: &[String], v: &str| list.is_empty() || list.iter().any(|x| x == v);
        any(&self.severities, facts.severity)
            && any(&self.agent_ids, facts.agent_id)
            && any(&self.rule_ids, facts.rule_id)
            && (self.location_ids.is_empty()
                || facts
                    .location_id
                    .is_some_and(|l| self.location_ids.iter().any(|x| x == l)))
            && (self.tags.is_empty() || facts.tags.iter().any(|t| self.tags.contains(t)))
    }

    /// Whether the matcher looks at the agent's tags or location (which need a lookup).
    pub fn needs_agent(&self) -> bool {
        !self.tags.is_empty() || !self.location_ids.is_empty()
    }
}

/// A route: alerts it matches go to its channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NotificationRoute {
    /// Route id.
    pub route_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Name.
    pub name: String,
    /// Channels the matched alerts go to.
    pub channel_ids: Vec<String>,
    /// Which alerts.
    pub matcher: AlertMatcher,
    /// Alerts for this route and a channel arriving within this many milliseconds of the
    /// first go in one message (0: each alone, at once).
    pub group_window_ms: i64,
    /// Whether resolutions (and acknowledgements) are sent too, not only raises.
    pub send_resolved: bool,
    /// When it was made (µs).
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
}

/// A silence (maintenance window): alerts it matches between its start and expiry are not
/// sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Silence {
    /// Silence id.
    pub silence_id: String,
    /// Owning tenant.
    pub tenant_id: String,
    /// Why.
    pub comment: String,
    /// Which alerts.
    pub matcher: AlertMatcher,
    /// From (µs).
    pub starts_at: i64,
    /// Until (µs, exclusive).
    pub expires_at: i64,
    /// When it was made (µs).
    pub created_at: i64,
    /// Who made it.
    pub created_by: String,
}

/// Where a delivery's alert came from (for its dead letter).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliverySource {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: i64,
    /// Log timestamp (ms).
    pub timestamp_ms: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// The record's bytes.
    pub value: Vec<u8>,
}

/// A delivery to put in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    /// Delivery id (UUIDv5 of the alert event id and the channel: enqueuing twice is one).
    pub delivery_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Channel.
    pub channel_id: String,
    /// Route that matched (none: a channel test).
    pub route_id: Option<String>,
    /// The alert event id: the idempotency key.
    pub event_id: String,
    /// The alert id.
    pub alert_id: String,
    /// `raised`, `acknowledged`, `resolved` or `test`.
    pub kind: String,
    /// The alert as JSON (the webhook's `alerts[]` entry).
    pub alert: serde_json::Value,
    /// The grouping window of the route (ms): a pending, untried delivery of the same route
    /// and channel due later than now lends its due time, else now + window.
    pub group_window_ms: i64,
    /// Now (µs).
    pub now: i64,
    /// Where the alert came from.
    pub source: Option<DeliverySource>,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not delivered yet (waiting for its grouping window or its next attempt).
    Pending,
    /// A receiver acknowledged it.
    Delivered,
    /// Given up (attempts exhausted, or the channel is gone); a dead letter names it.
    Dead,
}

impl DeliveryStatus {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// The status a stored name names.
    pub fn parse(s: &str) -> Option<DeliveryStatus> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One attempt to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub attempt: u32,
    /// The idempotency key of the message sent (the alert event id; for a group of
    /// alerts, the group's key).
    pub message_id: String,
    /// When it was made (µs).
    pub at: i64,
    /// `ok` or `failed`.
    pub outcome: String,
    /// The HTTP status (or SMTP reply code) the receiver answered, if any.
    pub status_code: Option<u16>,
    /// How long it took (ms).
    pub latency_ms: u64,
    /// What went wrong.
    pub error: Option<String>,
}

/// A delivery with its attempts, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Delivery id.
    pub delivery_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Channel.
    pub channel_id: String,
    /// Route (none: a channel test).
    pub route_id: Option<String>,
    /// The delivery that opened the route's grouping window (itself when alone):
    /// deliveries of one group go out in one message.
    pub group_id: String,
    /// The alert event id (the idempotency key).
    pub event_id: String,
    /// The alert.
    pub alert_id: String,
    /// `raised`, `acknowledged`, `resolved` or `test`.
    pub kind: String,
    /// The alert as sent.
    #[schema(value_type = Object)]
    pub alert: serde_json::Value,
    /// Pending, delivered or dead.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When it may be sent next (µs).
    pub due_at: i64,
    /// The last error.
    pub last_error: Option<String>,
    /// When it was enqueued (µs).
    pub created_at: i64,
    /// When a receiver acknowledged it (µs).
    pub delivered_at: Option<i64>,
    /// Every attempt, first first.
    pub attempt_log: Vec<DeliveryAttempt>,
    /// Where the alert came from (not shown).
    #[serde(skip)]
    pub source: Option<DeliverySource>,
}

/// What follows an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptNext {
    /// Delivered.
    Delivered,
    /// Try again at this time (µs).
    Retry(i64),
    /// Give up with this reason.
    Dead(String),
}

/// Filter of the deliveries list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryQuery {
    /// Tenant (`None`: every tenant).
    pub tenant_id: Option<String>,
    /// Channel.
    pub channel_id: Option<String>,
    /// Alert.
    pub alert_id: Option<String>,
    /// Status.
    pub status: Option<DeliveryStatus>,
    /// Page size.
    pub limit: Option<u32>,
}

/// The webhook body's version (`{"version": 1, ...}`); a change of shape makes it 2.
pub const WEBHOOK_BODY_VERSION: u32 = 1;

/// An alert as a notification carries it (the webhook body's `alerts[]` entry, version
/// [`WEBHOOK_BODY_VERSION`]): the alert event's fields, times as RFC 3339 and as µs.
pub fn alert_payload(alert: &fleet_schemas::AlertEvent) -> serde_json::Value {
    let time = |micros: i64| fleet_schemas::time::from_micros(micros).to_rfc3339();
    serde_json::json!({
        "event_id": alert.event_id,
        "alert_id": alert.alert_id,
        "kind": alert.kind.as_str(),
        "severity": alert.severity.as_str(),
        "tenant_id": alert.tenant_id,
        "agent_id": alert.agent_id,
        "rule_id": alert.rule_id,
        "rule_name": alert.rule_name,
        "metric": alert.metric,
        "subject": alert.subject,
        "operator": alert.operator,
        "threshold": alert.threshold,
        "value": alert.value,
        "message": alert.message,
        "actor": alert.actor,
        "occurred_at": time(alert.occurred_at),
        "occurred_at_us": alert.occurred_at,
    })
}
