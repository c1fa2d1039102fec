//! Agent events: its own start and stop, a reboot of its host, and a service event when a
//! watched service changes status between two collections.
//!
//! | when | kind | severity |
//! | --- | --- | --- |
//! | start | `agent_started`, attribute `previous_stop` = `none` (first run), `clean` or `unclean` (the previous run did not stop: crash, kill, power loss) | `info`, `warning` when `unclean` |
//! | start, the host's boot time moved since the previous run | `host_rebooted` (attributes `boot_time`, `previous_boot_time`, RFC 3339) | `info` |
//! | clean stop | `agent_stopped` (sent within `shutdown-flush-timeout`) | `info` |
//!
//! How the previous run ended is read from [`RUN_STATE_FILE`] in the state directory,
//! written `running` at start and `stopped` at a clean stop.
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

/// File in the state directory saying whether the agent runs ([`RunState`]).
pub const RUN_STATE_FILE: &str = "run-state.json";

/// What the agent leaves in [`RUN_STATE_FILE`]: `running` from start to a clean stop.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Set at start, cleared at a clean stop.
    pub running: bool,
    /// The host's boot time (seconds since the epoch) when the state was written.
    pub boot_time: u64,
}

impl RunState {
    /// The state a previous run left in `state_dir`; `None` when there is none (or it does
    /// not parse: then it is logged and taken as a first run).
    pub fn load(state_dir: &std::path::Path) -> Option<RunState> {
        let path = state_dir.join(RUN_STATE_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot read the run state.");
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Ignoring an unreadable run state.");
                None
            }
        }
    }

    /// Writes the state (atomically: a temporary file renamed over it). A failure is
    /// logged: the events of the next start are then less precise, nothing more.
    pub fn store(&self, state_dir: &std::path::Path) {
        let path = state_dir.join(RUN_STATE_FILE);
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            std::fs::write(
                &tmp,
                serde_json::to_vec(self).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            warn!(path = %path.display(), error = %e, "Cannot write the run state.");
        }
    }
}

/// Boot times closer than this (seconds) are the same boot (the host's boot time is
/// derived from its uptime and may move by a second).
const SAME_BOOT_SECS: u64 = 60;

fn rfc3339(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
        .map_or_else(|| secs.to_string(), |t| t.to_rfc3339())
}

/// The events of a start: `agent_started`, saying how the previous run ended, and
/// `host_rebooted` when the host booted since. Pure apart from the timestamp.
pub fn start_events(agent_id: &str, previous: Option<&RunState>, boot_time: u64) -> Vec<EventIn> {
    let version = env!("CARGO_PKG_VERSION");
    let (previous_stop, severity, message) = match previous {
        None => ("none", "info", format!("Agent {version} started.")),
        Some(p) if p.running => (
            "unclean",
            "warning",
            format!(
                "Agent {version} started; its previous run did not stop cleanly (crash, kill or power loss)."
            ),
        ),
        Some(_) => ("clean", "info", format!("Agent {version} started.")),
    };
    let mut events = vec![EventIn {
        occurred_at: Utc::now(),
        kind: "agent_started".to_owned(),
        severity: severity.to_owned(),
        message,
        attributes: BTreeMap::from([
            ("agent_id".to_owned(), agent_id.to_owned()),
            ("version".to_owned(), version.to_owned()),
            ("previous_stop".to_owned(), previous_stop.to_owned()),
        ]),
    }];
    if let Some(p) = previous.filter(|p| p.boot_time.abs_diff(boot_time) > SAME_BOOT_SECS) {
        events.push(EventIn {
            occurred_at: Utc::now(),
            kind: "host_rebooted".to_owned(),
            severity: "info".to_owned(),
            message: format!("The host booted at {}.", rfc3339(boot_time)),
            attributes: BTreeMap::from([
                ("boot_time".to_owned(), rfc3339(boot_time)),
                ("previous_boot_time".to_owned(), rfc3339(p.boot_time)),
            ]),
        });
    }
    events
}

/// The `agent_stopped` event of a clean stop.
pub fn agent_stopped(agent_id: &str) -> EventIn {
    let version = env!("CARGO_PKG_VERSION");
    EventIn {
        occurred_at: Utc::now(),
        kind: "agent_stopped".to_owned(),
        severity: "info".to_owned(),
        message: format!("Agent {version} stopped cleanly."),
        attributes: BTreeMap::from([
            ("agent_id".to_owned(), agent_id.to_owned()),
            ("version".to_owned(), version.to_owned()),
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

/// At a clean stop, after [`event_loop`] ended: sends what is queued, one attempt per
/// batch, until `deadline`. What is left is lost (events are not spooled) and counted.
pub(crate) async fn final_flush(
    queue: &EventQueue,
    transport: &dyn Transport,
    agent_id: &str,
    deadline: tokio::time::Instant,
) {
    loop {
        let head = queue.head(BATCH);
        if head.is_empty() {
            return;
        }
        let batch = EventBatch { events: head };
        match tokio::time::timeout_at(deadline, transport.events(agent_id, &batch)).await {
            Ok(crate::transport::SendOutcome::Sent(_)) => {
                add(&queue.stats.events_sent, batch.events.len());
                queue.remove_head(&batch.events);
            }
            Ok(other) => {
                warn!(outcome = ?other, left = queue.len(), "Events not sent at shutdown.");
                return;
            }
            Err(_) => {
                warn!(
                    left = queue.len(),
                    "Sending the events timed out at shutdown."
                );
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_says_how_the_previous_run_ended() {
        let first = start_events("a", None, 1_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].kind, "agent_started");
        assert_eq!(first[0].attributes["previous_stop"], "none");
        assert_eq!(first[0].severity, "info");

        let clean = RunState {
            running: false,
            boot_time: 1_000,
        };
        let ev = start_events("a", Some(&clean), 1_030);
        assert_eq!(ev.len(), 1, "the same boot (30 s of drift): {ev:?}");
        assert_eq!(ev[0].attributes["previous_stop"], "clean");

        let crashed = RunState {
            running: true,
            boot_time: 1_000,
        };
        let ev = start_events("a", Some(&crashed), 90_000);
        assert_eq!(ev[0].attributes["previous_stop"], "unclean");
        assert_eq!(ev[0].severity, "warning");
        assert_eq!(ev[1].kind, "host_rebooted");
        assert_eq!(ev[1].attributes["boot_time"], "1970-01-02T01:00:00+00:00");
        assert_eq!(
            ev[1].attributes["previous_boot_time"],
            "1970-01-01T00:16:40+00:00"
        );
    }

    #[test]
    fn the_run_state_round_trips_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunState::load(dir.path()), None);
        let s = RunState {
            running: true,
            boot_time: 7,
        };
        s.store(dir.path());
        assert_eq!(RunState::load(dir.path()), Some(s));
        std::fs::write(dir.path().join(RUN_STATE_FILE), b"{not json").unwrap();
        assert_eq!(RunState::load(dir.path()), None);
    }

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
            ..agent_stopped("a")
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
