//! Ticketer: one ticket per incident, for ticketing systems.
//!
//! Consumes `fleet.alerts.v1` in group `ticketer.group`. An AlertRaised at or above
//! `ticketer.min-severity` gets TicketEvent REQUESTED (status `open`); an acknowledgement
//! of an alert that got a ticket gets UPDATED `acknowledged`, a resolution UPDATED
//! `resolved`. Ids are deterministic: ticket id = v5(alert id, "ticket"), event id =
//! v5(ticket id, kind, status).
//!
//! Exactly once per incident: the ticket states are rebuilt from `fleet.tickets.v1` at
//! start and again whenever this instance takes partitions another one may have worked
//! on (a rebalance), and a ticket event already on the topic is never written again; the
//! alert offsets are committed only after the tickets are written. Locations and device
//! names come from following `fleet.agents.v1` (a throw-away group, from its start).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use fleet_consumer::deadletter::DeadLetters;
use fleet_consumer::follow::Follower;
use fleet_consumer::log::{ensure_topics, read_to_end};
use fleet_consumer::runtime::{Assignment, ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{ConsumedRecord, EventLog, StartFrom};
use fleet_schemas::{
    ids, topics, AgentLifecycle, AlertEvent, AlertEventKind, AlertSeverity, TicketEvent,
    TicketEventKind, TicketSeverity,
};

use fleet_schemas::Wire;

use crate::timed::decode_counted;
use crate::{metrics, ProcessorsConfig, Readiness};

const NAME: &str = "ticketer";

/// Ticket status, in the order a ticket moves through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Status {
    Open,
    Acknowledged,
    Resolved,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
        }
    }
    fn parse(s: &str) -> Option<Status> {
        match s {
            "open" => Some(Status::Open),
            "acknowledged" => Some(Status::Acknowledged),
            "resolved" => Some(Status::Resolved),
            _ => None,
        }
    }
}

/// What the tickets topic says of one ticket.
#[derive(Debug, Clone, PartialEq)]
struct Ticket {
    status: Status,
    /// The REQUESTED event (title, priority, value that raised it).
    requested: Option<TicketEvent>,
    emitted: HashSet<String>,
}

/// Where an agent is, from `fleet.agents.v1`.
#[derive(Debug, Clone, Default, PartialEq)]
struct Place {
    location_id: Option<String>,
    device_name: Option<String>,
    hostname: Option<String>,
}

/// The ticket decisions (pure: no I/O, time passed in).
#[derive(Debug, Clone)]
pub struct Ticketer {
    min_severity: AlertSeverity,
    tickets: HashMap<String, Ticket>,
    places: HashMap<String, Place>,
}

/// The ticket id of an alert.
pub fn ticket_id(alert_id: &str) -> String {
    ids::v5(&[alert_id, "ticket"]).to_string()
}

/// The event id of a ticket step.
pub fn ticket_event_id(ticket_id: &str, kind: TicketEventKind, status: &str) -> String {
    let kind = match kind {
        TicketEventKind::Requested => "REQUESTED",
        TicketEventKind::Updated => "UPDATED",
    };
    ids::v5(&[ticket_id, kind, status]).to_string()
}

/// `P1` critical, `P2` warning, `P3` info.
pub fn priority(severity: AlertSeverity) -> &'static str {
    match severity {
        AlertSeverity::Critical => "P1",
        AlertSeverity::Warning => "P2",
        AlertSeverity::Info => "P3",
    }
}

impl Ticketer {
    /// Opens tickets for alerts at or above `min_severity`.
    pub fn new(min_severity: AlertSeverity) -> Ticketer {
        Ticketer {
            min_severity,
            tickets: HashMap::new(),
            places: HashMap::new(),
        }
    }

    /// Tickets known.
    pub fn tickets(&self) -> usize {
        self.tickets.len()
    }

    /// Applies an event of `fleet.tickets.v1` (rebuild, or one just written).
    pub fn observe_ticket(&mut self, ev: &TicketEvent) {
        let status = Status::parse(&ev.status).unwrap_or(Status::Open);
        let t = self
            .tickets
            .entry(ev.ticket_id.clone())
            .or_insert_with(|| Ticket {
                status,
                requested: None,
                emitted: HashSet::new(),
            });
        t.status = t.status.max(status);
        if ev.kind == TicketEventKind::Requested && t.requested.is_none() {
            t.requested = Some(ev.clone());
        }
        t.emitted.insert(ev.event_id.clone());
    }

    /// Applies an event of `fleet.agents.v1`: location, device name, host name.
    pub fn observe_agent(&mut self, ev: &AgentLifecycle) {
        let p = self.places.entry(ev.agent_id.clone()).or_default();
        if ev.location_id.is_some() {
            p.location_id.clone_from(&ev.location_id);
        }
        if ev.device_name.is_some() {
            p.device_name.clone_from(&ev.device_name);
        }
        if let Some(f) = &ev.facts {
            p.hostname = Some(f.hostname.clone());
        }
    }

    /// The ticket event an alert event calls for, if any (it is then known as written).
    pub fn on_alert(&mut self, alert: &AlertEvent, now: i64) -> Option<TicketEvent> {
        let ticket_id = ticket_id(&alert.alert_id);
        let (kind, status) = match alert.kind {
            AlertEventKind::Raised => {
                if alert.severity < self.min_severity || self.tickets.contains_key(&ticket_id) {
                    return None;
                }
                (TicketEventKind::Requested, Status::Open)
            }
            AlertEventKind::Acknowledged => (TicketEventKind::Updated, Status::Acknowledged),
            AlertEventKind::Resolved => (TicketEventKind::Updated, Status::Resolved),
        };
        let event_id = ticket_event_id(&ticket_id, kind, status.as_str());
        if kind == TicketEventKind::Updated {
            // Only alerts that got a ticket; only forward; never the same step twice.
            let t = self.tickets.get(&ticket_id)?;
            if t.status >= status || t.emitted.contains(&event_id) {
                return None;
            }
        }
        let ev = self.ticket_event(alert, ticket_id, event_id, kind, status, now);
        self.observe_ticket(&ev);
        Some(ev)
    }

    fn ticket_event(
        &self,
        alert: &AlertEvent,
        ticket_id: String,
        event_id: String,
        kind: TicketEventKind,
        status: Status,
        now: i64,
    ) -> TicketEvent {
        let place = self
            .places
            .get(&alert.agent_id)
            .cloned()
            .unwrap_or_default();
        let requested = self
            .tickets
            .get(&ticket_id)
            .and_then(|t| t.requested.as_ref());
        // An update keeps the ticket's title, priority and the value that raised it.
        let (severity, value, threshold) = match requested {
            Some(r) => (r.severity, r.value, r.threshold),
            None => (
                TicketSeverity::from(alert.severity),
                alert.value,
                alert.threshold,
            ),
        };
        let priority = requested.map_or_else(
            || priority(alert.severity).to_owned(),
            |r| r.priority.clone(),
        );
        let device = place
            .device_name
            .clone()
            .or_else(|| place.hostname.clone())
            .unwrap_or_else(|| alert.agent_id.clone());
        let subject = alert
            .subject
            .as_deref()
            .map(|s| format!(" [{s}]"))
            .unwrap_or_default();
        let title = requested.map_or_else(
            || {
                format!(
                    "[{priority}] {} on {device}: {}{subject} {} {} {}",
                    alert.rule_name, alert.metric, value, alert.operator, threshold
                )
            },
            |r| r.title.clone(),
        );
        let location = place.location_id.as_deref().unwrap_or("unknown");
        let base = format!(
            "Alert \"{}\" ({}) for tenant {}, location {location}, agent {} ({device}): {}{subject} \
             was {} ({} {}). Alert id {}.",
            alert.rule_name,
            alert.severity.as_str(),
            alert.tenant_id,
            alert.agent_id,
            alert.metric,
            value,
            alert.operator,
            threshold,
            alert.alert_id,
        );
        let by = alert
            .actor
            .as_deref()
            .map(|a| format!(" by {a}"))
            .unwrap_or_default();
        let description = match status {
            Status::Open => base,
            Status::Acknowledged => format!("Acknowledged{by}. {base}"),
            Status::Resolved => format!("Resolved{by} at value {}. {base}", alert.value),
        };
        TicketEvent {
            event_id,
            ticket_id,
            alert_id: alert.alert_id.clone(),
            tenant_id: alert.tenant_id.clone(),
            agent_id: alert.agent_id.clone(),
            kind,
            status: status.as_str().to_owned(),
            priority,
            severity,
            title,
            description,
            location_id: place.location_id.clone(),
            rule_id: alert.rule_id.clone(),
            metric: alert.metric.clone(),
            subject: alert.subject.clone(),
            value,
            threshold,
            actor: alert.actor.clone(),
            occurred_at: alert.occurred_at,
            ingested_at: now,
        }
    }
}

async fn rebuild(
    log: &dyn EventLog,
    ticketer: &mut Ticketer,
    dead: &DeadLetters,
) -> anyhow::Result<u64> {
    let n = read_to_end(log, dead.wire(), topics::TICKETS, |r| {
        if let Some(ev) = decode_counted::<TicketEvent>(NAME, dead, r) {
            ticketer.observe_ticket(&ev);
        }
    })
    .await?;
    dead.flush().await;
    tracing::info!(
        records = n,
        tickets = ticketer.tickets(),
        "Ticket state rebuilt."
    );
    Ok(n)
}

/// The ticketer on the consumer runtime.
struct TicketLoop {
    log: Arc<dyn EventLog>,
    ticketer: Ticketer,
    dead: DeadLetters,
    /// `fleet.agents.v1`, followed for locations and device names.
    agents: Follower,
}

impl TicketLoop {
    async fn follow_agents(&mut self) {
        let (ticketer, dead) = (&mut self.ticketer, &self.dead);
        self.agents
            .poll_now(Duration::from_millis(1), |r| {
                if let Some(ev) = decode_counted::<AgentLifecycle>(NAME, dead, r) {
                    ticketer.observe_agent(&ev);
                }
            })
            .await;
    }
}

impl Processor for TicketLoop {
    /// Partitions taken from another instance: it may have written tickets since our
    /// rebuild, so read them before handling their alerts (at start too).
    async fn on_assigned(&mut self, assignment: &mut Assignment<'_>) -> anyhow::Result<Output> {
        let now_held = assignment.partitions(topics::ALERTS);
        let before: HashSet<u32> = assignment
            .previous()
            .iter()
            .filter(|(t, _)| t == topics::ALERTS)
            .map(|(_, p)| *p)
            .collect();
        if !now_held.iter().all(|p| before.contains(p)) {
            tracing::info!(held = ?now_held, "Assignment changed; rebuilding ticket state.");
            rebuild(self.log.as_ref(), &mut self.ticketer, &self.dead).await?;
        }
        Ok(Output::new())
    }

    async fn handle(&mut self, batch: &[ConsumedRecord]) -> Output {
        self.follow_agents().await;
        let events = handle_batch(&mut self.ticketer, &self.dead, batch);
        let mut out = Output::new();
        if events.is_empty() {
            return out;
        }
        // The offsets are committed only after the tickets are written.
        out.write_records(self.dead.wire(), &events);
        out.when_written(move || {
            for ev in &events {
                ::metrics::counter!(metrics::TICKETS_EMITTED, "status" => ev.status.clone())
                    .increment(1);
                tracing::info!(ticket_id = %ev.ticket_id, alert_id = %ev.alert_id, status = %ev.status, "Ticket event.");
            }
        });
        out
    }

    /// On an idle poll, what `handle` does before a batch.
    async fn on_tick(&mut self, handled: usize) -> Output {
        if handled == 0 {
            self.follow_agents().await;
        }
        Output::new()
    }
}

/// Runs the ticketer until `shutdown` resolves.
pub async fn run_ticketer(
    log: Arc<dyn EventLog>,
    wire: Wire,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    ensure_topics(log.as_ref()).await?;
    let group = config.ticketer.group.clone();
    let dead = DeadLetters::open(log.clone(), wire, NAME, &group).await?;
    let mut ticketer = Ticketer::new(config.ticketer.min_severity.into());
    let mut agents = Follower::open(
        log.as_ref(),
        dead.wire(),
        &format!("{NAME}-follow"),
        &[topics::AGENTS],
    )
    .await?;
    agents
        .catch_up(log.as_ref(), |r| {
            if let Some(ev) = decode_counted::<AgentLifecycle>(NAME, &dead, r) {
                ticketer.observe_agent(&ev);
            }
        })
        .await?;
    dead.flush().await;
    let settings = Settings::group(&group, &[topics::ALERTS])
        .start(StartFrom::Earliest)
        .session_timeout(config.event_log.session_timeout)
        .batch_size(config.batch_size)
        .batch_histogram(metrics::BATCH_SECONDS, "processor", NAME);
    let runtime = ConsumerRuntime::subscribe(log.clone(), settings, dead.clone())
        .await?
        .readiness(ready.flag());
    tracing::info!(%group, min_severity = ?config.ticketer.min_severity, "Ticketer starting.");
    let mut tickets = TicketLoop {
        log,
        ticketer,
        dead,
        agents,
    };
    runtime.run(&mut tickets, shutdown).await;
    Ok(())
}

fn handle_batch(
    ticketer: &mut Ticketer,
    dead: &DeadLetters,
    batch: &[ConsumedRecord],
) -> Vec<TicketEvent> {
    let now = fleet_schemas::time::now_micros();
    batch
        .iter()
        .filter_map(|r| decode_counted::<AlertEvent>(NAME, dead, r))
        .filter_map(|alert| ticketer.on_alert(&alert, now))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::fixtures;

    const T0: i64 = 1_795_400_000_000_000;

    fn alert(kind: AlertEventKind, severity: AlertSeverity) -> AlertEvent {
        let mut a = fixtures::alert_raised("t1", "a1", T0);
        a.kind = kind;
        a.severity = severity;
        a
    }

    #[test]
    fn a_raised_alert_requests_one_ticket_naming_its_context() {
        let mut t = Ticketer::new(AlertSeverity::Warning);
        let mut reg = fixtures::agent_registered("t1", "a1", T0 - 1);
        reg.device_name = Some("web-1".into());
        t.observe_agent(&reg);
        let raised = alert(AlertEventKind::Raised, AlertSeverity::Critical);
        let ev = t.on_alert(&raised, T0 + 5).expect("ticket");
        assert_eq!(ev.kind, TicketEventKind::Requested);
        assert_eq!(ev.status, "open");
        assert_eq!(ev.priority, "P1");
        assert_eq!(
            ev.ticket_id,
            ids::v5(&[&raised.alert_id, "ticket"]).to_string()
        );
        assert_eq!(
            ev.event_id,
            ids::v5(&[&ev.ticket_id, "REQUESTED", "open"]).to_string()
        );
        assert_eq!(ev.location_id.as_deref(), Some("loc-1"));
        for part in ["t1", "loc-1", "a1", "web-1", "cpu.percent", "97", "90"] {
            assert!(
                ev.description.contains(part),
                "{part} missing: {}",
                ev.description
            );
        }
        assert!(ev.title.contains("web-1") && ev.title.contains("cpu.percent"));
        assert!(
            t.on_alert(&raised, T0 + 6).is_none(),
            "one ticket per incident"
        );
        // The fixture of the schemas crate agrees on the ids.
        let f = fixtures::ticket_requested("t1", "a1", T0);
        assert_eq!((ev.ticket_id, ev.event_id), (f.ticket_id, f.event_id));
    }

    #[test]
    fn acknowledged_and_resolved_update_the_ticket_once() {
        let mut t = Ticketer::new(AlertSeverity::Warning);
        let req = t
            .on_alert(&alert(AlertEventKind::Raised, AlertSeverity::Warning), T0)
            .expect("ticket");
        assert_eq!(req.priority, "P2");
        let mut ack = alert(AlertEventKind::Acknowledged, AlertSeverity::Warning);
        ack.actor = Some("ops@acme".into());
        let up = t.on_alert(&ack, T0).expect("ack");
        assert_eq!(
            (up.kind, up.status.as_str()),
            (TicketEventKind::Updated, "acknowledged")
        );
        assert_eq!(
            up.event_id,
            ids::v5(&[&req.ticket_id, "UPDATED", "acknowledged"]).to_string()
        );
        assert_eq!(up.title, req.title);
        assert!(up.description.contains("ops@acme"));
        assert!(t.on_alert(&ack, T0).is_none());
        let mut res = alert(AlertEventKind::Resolved, AlertSeverity::Warning);
        res.value = 20.0;
        let done = t.on_alert(&res, T0).expect("resolved");
        assert_eq!(done.status, "resolved");
        assert_eq!(done.value, req.value, "keeps the value that raised it");
        assert!(t.on_alert(&res, T0).is_none());
        assert!(
            t.on_alert(&ack, T0).is_none(),
            "no acknowledgement after resolution"
        );
    }

    #[test]
    fn below_min_severity_no_ticket_and_no_updates() {
        let mut t = Ticketer::new(AlertSeverity::Warning);
        assert!(t
            .on_alert(&alert(AlertEventKind::Raised, AlertSeverity::Info), T0)
            .is_none());
        assert!(t
            .on_alert(
                &alert(AlertEventKind::Acknowledged, AlertSeverity::Info),
                T0
            )
            .is_none());
        assert!(t
            .on_alert(&alert(AlertEventKind::Resolved, AlertSeverity::Info), T0)
            .is_none());
        assert_eq!(priority(AlertSeverity::Info), "P3");
    }

    #[test]
    fn a_rebuilt_state_emits_nothing_twice() {
        let mut first = Ticketer::new(AlertSeverity::Warning);
        let raised = alert(AlertEventKind::Raised, AlertSeverity::Critical);
        let ack = alert(AlertEventKind::Acknowledged, AlertSeverity::Critical);
        let written = [
            first.on_alert(&raised, T0).expect("req"),
            first.on_alert(&ack, T0).expect("ack"),
        ];
        let mut again = Ticketer::new(AlertSeverity::Warning);
        for ev in &written {
            again.observe_ticket(ev);
        }
        assert!(again.on_alert(&raised, T0).is_none());
        assert!(again.on_alert(&ack, T0).is_none());
        let res = alert(AlertEventKind::Resolved, AlertSeverity::Critical);
        let done = again.on_alert(&res, T0).expect("resolve still comes");
        assert_eq!(done.priority, "P1");
        assert_eq!(done.title, written[0].title);
    }
}
