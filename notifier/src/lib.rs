//! The notifier: alerts reach people.
//!
//! Two halves in one role (`fleetstream notifier`, and inside `fleetstream up`):
//!
//! * **Routing** ([`run_notifier`]'s consumer, group `notifier.group`, on
//!   `fleet.alerts.v1`, on the one consumer runtime): each alert event is matched against
//!   its tenant's silences (a match drops it) and routes (severity, agent tag, location,
//!   agent, rule; raises always, acknowledgements and resolutions when the route says
//!   `send_resolved`), and one delivery per (alert event, channel) is put in the read
//!   model's outbox (`notification_deliveries`, id UUIDv5 of the event id and channel, so
//!   a record read twice enqueues nothing new). The offsets are committed only after
//!   the outbox took the batch: an alert is never lost between the log and the outbox.
//! * **Delivery** (`worker.rs`): claims due deliveries (a lease per delivery, so two
//!   instances never send the same one at once), groups those of one route and channel
//!   into one message, sends it (`send.rs`), and records every attempt (status, latency,
//!   error) with what follows it: delivered, retried after an exponential back-off with
//!   jitter, or, after `max-attempts` (or a permanent refusal), given up with a dead
//!   letter on `fleet.deadletter.v1` naming the reason. At least once: the idempotency
//!   key (the alert event id, `Idempotency-Key` and the body's `id`) lets receivers
//!   drop a repeat, which happens only when the notifier dies between a receiver's
//!   answer and the record of it.

pub mod config;
pub mod message;
pub mod send;
mod worker;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fleet_consumer::deadletter::{DeadLetters, Reason};
use fleet_consumer::log::ensure_topics;
use fleet_consumer::runtime::{ConsumerRuntime, Output, Processor, Settings};
use fleet_consumer::Backoff;
use fleet_event_log::{ConsumedRecord, EventLog, StartFrom};
use fleet_read_model::{
    alert_payload, AlertFacts, DeliverySource, NewDelivery, NotificationRoute, ReadModel, Silence,
    StoreError,
};
use fleet_schemas::{topics, AlertEvent, AlertEventKind, Wire};

pub use config::NotifierConfig;
pub use worker::run_deliveries;

/// The consumer's name in dead letters and metrics.
pub const NAME: &str = "notifier";

/// Metrics on the role's `/metrics`.
pub mod metrics {
    /// Alert events read, by what became of them (`routed`, `silenced`, `unrouted`).
    pub const ALERTS: &str = "fleet_notifier_alerts_total";
    /// Delivery attempts, by channel kind and outcome (`delivered`, `retry`, `dead`).
    pub const ATTEMPTS: &str = "fleet_notifier_attempts_total";
    /// Time of one attempt (seconds), by channel kind.
    pub const ATTEMPT_SECONDS: &str = "fleet_notifier_attempt_seconds";
    /// Time to route one batch.
    pub const BATCH_SECONDS: &str = "fleet_notifier_batch_seconds";
}

/// The notifier's readiness, for `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Whether the consumer runs.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The deliveries an alert calls for, given its tenant's routes and silences (pure).
/// `None` when a silence active at `now` matches it.
pub fn plan(
    alert: &AlertEvent,
    facts: &AlertFacts<'_>,
    routes: &[NotificationRoute],
    silences: &[Silence],
    now: i64,
) -> Option<Vec<(String, String, i64)>> {
    if silences
        .iter()
        .any(|s| s.starts_at <= now && now < s.expires_at && s.matcher.matches(facts))
    {
        return None;
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in routes {
        if alert.kind != AlertEventKind::Raised && !r.send_resolved {
            continue;
        }
        if !r.matcher.matches(facts) {
            continue;
        }
        for c in &r.channel_ids {
            if seen.insert(c.clone()) {
                out.push((r.route_id.clone(), c.clone(), r.group_window_ms));
            }
        }
    }
    Some(out)
}

/// The id of the delivery of an alert event to a channel.
pub fn delivery_id(event_id: &str, channel_id: &str) -> String {
    fleet_schemas::ids::v5(&["notification", event_id, channel_id]).to_string()
}

/// The routing half, on the consumer runtime.
struct Router {
    store: Arc<dyn ReadModel>,
    dead: DeadLetters,
}

/// A tenant's routes and silences, and agents' tags and locations, read once per batch.
#[derive(Default)]
struct BatchCache {
    tenants: HashMap<String, (Vec<NotificationRoute>, Vec<Silence>)>,
    agents: HashMap<(String, String), (Vec<String>, Option<String>)>,
}

/// Retries a store call while the store is unavailable; other errors are returned.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut backoff = Backoff::new();
    loop {
        match f().await {
            Err(StoreError::Unavailable(m)) => {
                tracing::warn!(what, error = %m, attempt = backoff.attempt(), "Store unavailable; retrying.");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

impl Router {
    async fn route(
        &self,
        cache: &mut BatchCache,
        record: &ConsumedRecord,
        alert: &AlertEvent,
        now: i64,
    ) -> Result<Vec<NewDelivery>, StoreError> {
        let store = &self.store;
        let tenant = alert.tenant_id.clone();
        if !cache.tenants.contains_key(&tenant) {
            let routes = retrying("routes", || store.list_routes(Some(&tenant))).await?;
            let silences =
                retrying("silences", || store.list_silences(Some(&tenant), Some(now))).await?;
            // A route naming a channel deleted since skips it (no delivery bound to fail).
            let channels: HashSet<String> =
                retrying("channels", || store.list_channels(Some(&tenant)))
                    .await?
                    .into_iter()
                    .map(|c| c.channel_id)
                    .collect();
            let routes = routes
                .into_iter()
                .map(|mut r| {
                    r.channel_ids.retain(|c| channels.contains(c));
                    r
                })
                .collect();
            cache.tenants.insert(tenant.clone(), (routes, silences));
        }
        let (routes, silences) = &cache.tenants[&tenant];
        let needs_agent = routes.iter().any(|r| r.matcher.needs_agent())
            || silences.iter().any(|s| s.matcher.needs_agent());
        let key = (tenant.clone(), alert.agent_id.clone());
        if needs_agent && !cache.agents.contains_key(&key) {
            let agent =
                retrying("agent", || store.get_agent(Some(&tenant), &alert.agent_id)).await?;
            let facts = agent.map(|a| (a.tags, a.location_id)).unwrap_or_default();
            cache.agents.insert(key.clone(), facts);
        }
        let (tags, location) = cache.agents.get(&key).cloned().unwrap_or_default();
        let facts = AlertFacts {
            severity: alert.severity.as_str(),
            tags: &tags,
            location_id: location.as_deref(),
            agent_id: &alert.agent_id,
            rule_id: &alert.rule_id,
        };
        let Some(plan) = plan(alert, &facts, routes, silences, now) else {
            ::metrics::counter!(metrics::ALERTS, "result" => "silenced").increment(1);
            tracing::info!(event_id = %alert.event_id, tenant_id = %alert.tenant_id, "Alert silenced.");
            return Ok(Vec::new());
        };
        let result = if plan.is_empty() {
            "unrouted"
        } else {
            "routed"
        };
        ::metrics::counter!(metrics::ALERTS, "result" => result).increment(1);
        let payload = alert_payload(alert);
        let source = DeliverySource {
            topic: record.topic.to_string(),
            partition: record.partition,
            offset: record.offset,
            timestamp_ms: record.timestamp_ms,
            key: record.key.clone(),
            value: record.value.clone(),
        };
        Ok(plan
            .into_iter()
            .map(|(route_id, channel_id, window)| NewDelivery {
                delivery_id: delivery_id(&alert.event_id, &channel_id),
                tenant_id: alert.tenant_id.clone(),
                channel_id,
                route_id: Some(route_id),
                event_id: alert.event_id.clone(),
                alert_id: alert.alert_id.clone(),
                kind: alert.kind.as_str().to_owned(),
                alert: payload.clone(),
                group_window_ms: window,
                now,
                source: Some(source.clone()),
            })
            .collect())
    }
}

impl Processor for Router {
    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        let now = fleet_schemas::time::now_micros();
        let mut cache = BatchCache::default();
        let mut deliveries = Vec::new();
        for record in batch {
            let Some(alert) = self.dead.decode_or_note::<AlertEvent>(record) else {
                continue;
            };
            match self.route(&mut cache, record, &alert, now).await {
                Ok(d) => deliveries.extend(d),
                Err(e) => {
                    self.dead.note(
                        record,
                        Reason::process(format!("routing: {e}")).tenant(&alert.tenant_id),
                    );
                }
            }
        }
        if !deliveries.is_empty() {
            let store = &self.store;
            match retrying("enqueue", || store.enqueue_deliveries(&deliveries)).await {
                Ok(added) => {
                    tracing::debug!(added, deliveries = deliveries.len(), "Deliveries enqueued.")
                }
                Err(e) => {
                    // Refused, not unavailable: the batch's alerts are dead letters.
                    for record in batch {
                        self.dead
                            .note(record, Reason::process(format!("enqueue: {e}")));
                    }
                }
            }
        }
        // Committed once the outbox holds the batch (the default: what was read).
        Output::new()
    }
}

/// Runs the notifier (routing and delivery) until `shutdown` resolves.
pub async fn run_notifier(
    log: Arc<dyn EventLog>,
    wire: Wire,
    store: Arc<dyn ReadModel>,
    config: NotifierConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    config.check().map_err(anyhow::Error::msg)?;
    ensure_topics(log.as_ref()).await?;
    let config = Arc::new(config);
    let dead = DeadLetters::open(log.clone(), wire, NAME, &config.group).await?;
    let settings = Settings::group(&config.group, &[topics::ALERTS])
        .start(StartFrom::Earliest)
        .session_timeout(config.event_log.session_timeout)
        .batch_size(config.batch_size)
        .batch_histogram(metrics::BATCH_SECONDS, "processor", NAME);
    let runtime = ConsumerRuntime::subscribe(log, settings, dead.clone())
        .await?
        .readiness(ready.0.clone());
    tracing::info!(group = %config.group, "Notifier starting.");
    let sender = send::Sender::new(config.clone())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let deliveries = run_deliveries(store.clone(), sender, dead.clone(), config.clone(), stop_rx);
    let mut router = Router { store, dead };
    let routing = async {
        runtime.run(&mut router, shutdown).await;
        let _ = stop_tx.send(true);
    };
    tokio::join!(routing, deliveries);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_read_model::AlertMatcher;

    fn route(
        id: &str,
        channels: &[&str],
        matcher: AlertMatcher,
        resolved: bool,
    ) -> NotificationRoute {
        NotificationRoute {
            route_id: id.into(),
            tenant_id: "t1".into(),
            name: id.into(),
            channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
            matcher,
            group_window_ms: 0,
            send_resolved: resolved,
            created_at: 0,
            created_by: "x".into(),
        }
    }

    #[test]
    fn routes_match_on_every_dimension_and_silences_win() {
        let alert = fleet_schemas::fixtures::alert_raised("t1", "a1", 1_000);
        let tags = vec!["db".to_owned()];
        let facts = AlertFacts {
            severity: alert.severity.as_str(),
            tags: &tags,
            location_id: Some("loc-1"),
            agent_id: &alert.agent_id,
            rule_id: &alert.rule_id,
        };
        let m = |f: fn(&mut AlertMatcher)| {
            let mut m = AlertMatcher::default();
            f(&mut m);
            m
        };
        let routes = vec![
            route("all", &["c1"], AlertMatcher::default(), false),
            route(
                "db",
                &["c1", "c2"],
                m(|m| m.tags = vec!["db".into()]),
                false,
            ),
            route("web", &["c3"], m(|m| m.tags = vec!["web".into()]), true),
            route(
                "info",
                &["c4"],
                m(|m| m.severities = vec!["info".into()]),
                true,
            ),
            route(
                "loc",
                &["c5"],
                m(|m| m.location_ids = vec!["loc-1".into()]),
                true,
            ),
            route(
                "other-agent",
                &["c6"],
                m(|m| m.agent_ids = vec!["a2".into()]),
                true,
            ),
            route(
                "other-rule",
                &["c7"],
                m(|m| m.rule_ids = vec!["r-x".into()]),
                true,
            ),
        ];
        let planned = plan(&alert, &facts, &routes, &[], 0).expect("not silenced");
        let channels: Vec<&str> = planned.iter().map(|(_, c, _)| c.as_str()).collect();
        assert_eq!(
            channels,
            ["c1", "c2", "c5"],
            "each channel once, first route wins"
        );
        let mut resolved = alert.clone();
        resolved.kind = AlertEventKind::Resolved;
        let planned = plan(&resolved, &facts, &routes, &[], 0).expect("not silenced");
        let channels: Vec<&str> = planned.iter().map(|(_, c, _)| c.as_str()).collect();
        assert_eq!(channels, ["c5"], "resolutions only where send_resolved");
        let silence = |starts_at, expires_at, matcher| Silence {
            silence_id: "s".into(),
            tenant_id: "t1".into(),
            comment: String::new(),
            matcher,
            starts_at,
            expires_at,
            created_at: 0,
            created_by: "x".into(),
        };
        assert!(plan(
            &alert,
            &facts,
            &routes,
            &[silence(0, 10, m(|m| m.tags = vec!["db".into()]))],
            5
        )
        .is_none());
        assert!(
            plan(
                &alert,
                &facts,
                &routes,
                &[silence(0, 10, AlertMatcher::default())],
                10
            )
            .is_some(),
            "expired"
        );
        assert!(
            plan(
                &alert,
                &facts,
                &routes,
                &[silence(6, 10, AlertMatcher::default())],
                5
            )
            .is_some(),
            "not started"
        );
        assert!(
            plan(
                &alert,
                &facts,
                &routes,
                &[silence(0, 10, m(|m| m.tags = vec!["web".into()]))],
                5
            )
            .is_some(),
            "no match"
        );
    }
}
