//! Agent events: `agent_started` at start, and a service event when a watched service
//! changes status between two collections.
//!
//! | transition | kind | severity |
//! | --- | --- | --- |
//! | running → stopped | `service_stopped` | `warning` |
//! | running or stopped → failed | `service_failed` | `critical` |
//! | stopped or failed → running | `service_recovered` | `info` |
//!
//! `unknown` (no systemd, unit missing) never produces an event, and neither does the
//! first collection. Each event carries the attributes `service`, `previous` and
//! `current`. Severities are spelled as on the wire (`info`, `warning`, `critical`; the
//! topic records them as `INFO` / `WARNING` / `CRITICAL`).
//!
//! Events wait in a bounded **in-memory** [`EventQueue`] ([`MAX_QUEUED_EVENTS`]; when
//! full the oldest is dropped and counted) and are sent in batches over the socket or
//! `POST .../events`, retried until acknowledged. They are not spooled to disk: events
//! still queued when the agent stops are lost (the next collection's report carries the
//! services' status anyway).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use fleet_schemas::api::{EventBatch, EventIn, ServiceIn};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::retry::{deliver_until_acked, Backoff, Delivered};
use crate::stats::{add, Stats};
use crate::sync::lock;
use crate::transport::Transport;

/// Most events held in memory while the gateway cannot take them.
pub const MAX_QUEUED_EVENTS: usize = 1000;

/// Most events per request.
const BATCH: usize = 100;

/// Events waiting to be sent, oldest first.
#[derive(Debug)]
pub struct EventQueue {
    items: Mutex<VecDeque<EventIn>>,
    capacity: usize,
    wake: Notify,
    stats: Arc<Stats>,
}

impl EventQueue {
    /// An empty queue of at most `capacity` events.
    pub(crate) fn new(capacity: usize, stats: Arc<Stats>) -> Self {
        Self {
            items: Mutex::new(VecDeque::new()),
            capacity: capacity.max(1),
            wake: Notify::new(),
            stats,
        }
    }

    /// Queues `event`; drops (and counts) the oldest when full.
    pub(crate) fn push(&self, event: EventIn) {
        let dropped = {
            let mut items = lock(&self.items);
            let dropped = if items.len() >= self.capacity {
                items.pop_front()
            } else {
                None
            };
            items.push_back(event);
            dropped
        };
        if let Some(old) = dropped {
            let total = self.stats.events_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            warn!(kind = %old.kind, dropped_total = total, "Event queue full; dropped the oldest event.");
        }
        self.wake.notify_one();
    }

    /// Number of queued events.
    pub fn len(&self) -> usize {
        lock(&self.items).len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn head(&self, max: usize) -> Vec<EventIn> {
        lock(&self.items).iter().take(max).cloned().collect()
    }

    /// Removes the sent events `head` from the front (some may have been dropped while
    /// they were in flight).
    fn remove_head(&self, head: &[EventIn]) {
        let mut items = lock(&self.items);
        while items.front().is_some_and(|e| head.contains(e)) {
            items.pop_front();
        }
    }
}

/// The `agent_started` event.
pub fn agent_started(agent_id: &str) -> EventIn {
    EventIn {
        occurred_at: Utc::now(),
        kind: "agent_started".to_owned(),
        severity: "info".to_owned(),
        message: format!("Agent {} started.", env!("CARGO_PKG_VERSION")),
        attributes: BTreeMap::from([
            ("agent_id".to_owned(), agent_id.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ]),
    }
}

/// Events for the services whose status changed from `previous` (name → status) to
/// `current`; updates `previous`. Pure apart from the timestamp.
pub fn service_transitions(
    previous: &mut BTreeMap<String, String>,
    current: &[ServiceIn],
) -> Vec<EventIn> {
    let mut events = Vec::new();
    for service in current {
        let before = previous.insert(service.name.clone(), service.status.clone());
        let Some(before) = before else { continue };
        let (kind, severity) = match (before.as_str(), service.status.as_str()) {
            ("running", "stopped") => ("service_stopped", "warning"),
            ("running" | "stopped", "failed") => ("service_failed", "critical"),
            ("stopped" | "failed", "running") => ("service_recovered", "info"),
            _ => continue,
        };
        events.push(EventIn {
            occurred_at: Utc::now(),
            kind: kind.to_owned(),
            severity: severity.to_owned(),
            message: format!(
                "Service {} is {} (was {before}).",
                service.name, service.status
            ),
            attributes: BTreeMap::from([
                ("service".to_owned(), service.name.clone()),
                ("previous".to_owned(), before),
                ("current".to_owned(), service.status.clone()),
            ]),
        });
    }
    events
}

/// Sends queued events until cancelled, a batch at a time, each retried until
/// acknowledged (a batch the gateway rejects for good is dropped and logged).
pub(crate) async fn event_loop(
    queue: Arc<EventQueue>,
    transport: Arc<dyn Transport>,
    agent_id: String,
    mut backoff: Backoff,
    auth_retry: Duration,
    cancel: CancellationToken,
) {
    loop {
        let head = queue.head(BATCH);
        if head.is_empty() {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                () = queue.wake.notified() => continue,
            }
        }
        let batch = EventBatch { events: head };
        let delivered = deliver_until_acked(
            "events",
            || transport.events(&agent_id, &batch),
            &mut backoff,
            auth_retry,
            &cancel,
        )
        .await;
        match delivered {
            Delivered::Acked => add(&queue.stats.events_sent, batch.events.len()),
            Delivered::Rejected => add(&queue.stats.events_dropped, batch.events.len()),
            Delivered::Stopped => return,
        }
        queue.remove_head(&batch.events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn services(list: &[(&str, &str)]) -> Vec<ServiceIn> {
        list.iter()
            .map(|(n, s)| ServiceIn {
                name: (*n).into(),
                status: (*s).into(),
                pid: None,
            })
            .collect()
    }

    #[test]
    fn transitions_map_to_kinds_and_severities() {
        let mut prev = BTreeMap::new();
        assert!(
            service_transitions(&mut prev, &services(&[("a", "running"), ("b", "running")]))
                .is_empty(),
            "first sight is no transition"
        );
        let ev = service_transitions(&mut prev, &services(&[("a", "stopped"), ("b", "failed")]));
        let kinds: Vec<(&str, &str)> = ev
            .iter()
            .map(|e| (e.kind.as_str(), e.severity.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("service_stopped", "warning"),
                ("service_failed", "critical")
            ]
        );
        assert_eq!(ev[1].attributes["service"], "b");
        assert_eq!(ev[1].attributes["previous"], "running");
        assert_eq!(ev[1].attributes["current"], "failed");
        let ev = service_transitions(&mut prev, &services(&[("a", "running"), ("b", "unknown")]));
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, "service_recovered");
        assert_eq!(ev[0].severity, "info");
        // unknown → running is no recovery; running → running nothing.
        let ev = service_transitions(&mut prev, &services(&[("a", "running"), ("b", "running")]));
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn queue_drops_the_oldest_when_full_and_removes_only_what_was_sent() {
        let stats = Arc::new(Stats::default());
        let q = EventQueue::new(2, Arc::clone(&stats));
        let mk = |k: &str| EventIn {
            kind: k.into(),
            ..agent_started("a")
        };
        q.push(mk("one"));
        q.push(mk("two"));
        let head = q.head(10);
        q.push(mk("three")); // drops "one" while "one, two" are in flight
        assert_eq!(stats.snapshot().events_dropped, 1);
        q.remove_head(&head); // removes "two", keeps "three"
        assert_eq!(q.len(), 1);
        assert_eq!(q.head(10)[0].kind, "three");
    }
}
