//! Command timeouts: TIMED_OUT for commands whose result never came, driven by a timer.
//!
//! Consumes `fleet.commands.v1` in group `command-timeouts.group`. On start and on every
//! rebalance the newly held partitions are replayed from `command-timeouts.lookback` ago
//! (seek by time), rebuilding the pending commands. Every `command-timeouts.check-interval`,
//! once a partition is consumed up to the end offsets taken at the check (so a COMPLETED
//! already written is seen first), a command on it with no COMPLETED by its start +
//! `timeout_secs` + `command-timeouts.grace` gets CommandEvent TIMED_OUT with `event_id` =
//! v5(command id, "TIMED_OUT", "0").
//!
//! Only the first REQUESTED of a command id counts, as in the gateway.
//!
//! The start is the latest step that handed the command on: DISPATCHED, else APPROVED,
//! else REQUESTED (for a command that needs no approval). A command still waiting for its
//! approval has no deadline (the gateway does not deliver it either). COMPLETED or
//! TIMED_OUT (anyone's, this processor's own included) ends a command for good, so it is
//! never timed out twice, nor after its result. REJECTED and CANCELLED end a command that
//! was not dispatched (the gateway never delivers it, so no result will come); read after
//! a DISPATCHED they change nothing (the command was delivered and may still run).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::{ConsumedRecord, EventLog};
use fleet_schemas::{topics, CommandEvent, CommandEventKind};

use fleet_schemas::Wire;

use crate::timed::{decode_counted, run_timed, Timed, TimedSettings};
use crate::{metrics, ProcessorsConfig, Readiness};
use fleet_consumer::deadletter::DeadLetters;

const NAME: &str = "command-timeouts";

/// One unfinished command.
#[derive(Debug, Clone, PartialEq)]
struct Pending {
    /// The first event seen of it (carries type, arguments, timeout).
    template: CommandEvent,
    partition: u32,
    requested_at: Option<i64>,
    approved_at: Option<i64>,
    dispatched_at: Option<i64>,
}

impl Pending {
    /// When the command's clock started, if it did.
    fn started_at(&self) -> Option<i64> {
        let requested = (!self.template.requires_approval)
            .then_some(self.requested_at)
            .flatten();
        [requested, self.approved_at, self.dispatched_at]
            .into_iter()
            .flatten()
            .max()
    }
}

/// The timeout decisions (pure: no I/O, time passed in).
#[derive(Debug, Clone)]
pub struct CommandTimeouts {
    grace_micros: i64,
    keep_finished_micros: i64,
    pending: HashMap<String, Pending>,
    /// Ended commands: partition and when, so a replayed REQUESTED does not revive one.
    finished: HashMap<String, (u32, i64)>,
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX / 4)
}

impl CommandTimeouts {
    /// Times out a command `grace` after its own timeout; remembers ended commands for
    /// twice `lookback` (longer than any replay window).
    pub fn new(grace: Duration, lookback: Duration) -> CommandTimeouts {
        CommandTimeouts {
            grace_micros: micros(grace),
            keep_finished_micros: micros(lookback).saturating_mul(2),
            pending: HashMap::new(),
            finished: HashMap::new(),
        }
    }

    /// Applies one event consumed from `partition`.
    pub fn observe(&mut self, ev: &CommandEvent, partition: u32) {
        if self.finished.contains_key(&ev.command_id) {
            return;
        }
        // A REJECTED or CANCELLED command is never delivered, so it gets no deadline; one
        // read after its DISPATCHED was delivered all the same and keeps its deadline.
        let undelivered_end = matches!(
            ev.kind,
            CommandEventKind::Rejected | CommandEventKind::Cancelled
        ) && self
            .pending
            .get(&ev.command_id)
            .is_none_or(|p| p.dispatched_at.is_none());
        if undelivered_end
            || matches!(
                ev.kind,
                CommandEventKind::Completed | CommandEventKind::TimedOut
            )
        {
            self.pending.remove(&ev.command_id);
            self.finished
                .insert(ev.command_id.clone(), (partition, ev.occurred_at));
            return;
        }
        let p = self
            .pending
            .entry(ev.command_id.clone())
            .or_insert_with(|| Pending {
                template: ev.clone(),
                partition,
                requested_at: None,
                approved_at: None,
                dispatched_at: None,
            });
        p.partition = partition;
        let latest = |slot: &mut Option<i64>| {
            *slot = Some(slot.map_or(ev.occurred_at, |t| t.max(ev.occurred_at)));
        };
        match ev.kind {
            // Only the first REQUESTED of an id counts (a second one, from a reused
            // idempotency key, changes neither the timeout nor the approval).
            CommandEventKind::Requested if p.requested_at.is_some() => {}
            CommandEventKind::Requested => {
                p.template = ev.clone();
                latest(&mut p.requested_at);
            }
            CommandEventKind::Approved => latest(&mut p.approved_at),
            CommandEventKind::Dispatched => latest(&mut p.dispatched_at),
            CommandEventKind::Progress
            | CommandEventKind::Completed
            | CommandEventKind::TimedOut
            | CommandEventKind::Rejected
            | CommandEventKind::Cancelled => {}
        }
    }

    /// TIMED_OUT for every pending command on `partitions` whose deadline is before
    /// `now`; ends them.
    pub fn due(&mut self, now: i64, partitions: &BTreeSet<u32>) -> Vec<CommandEvent> {
        let grace = self.grace_micros;
        let mut out: Vec<CommandEvent> = Vec::new();
        for (id, p) in &self.pending {
            if !partitions.contains(&p.partition) {
                continue;
            }
            let Some(start) = p.started_at() else {
                continue; // waiting for approval
            };
            let allowed = p
                .template
                .timeout_secs
                .max(0)
                .saturating_mul(1_000_000)
                .saturating_add(grace);
            if now <= start.saturating_add(allowed) {
                continue;
            }
            let t = &p.template;
            out.push(CommandEvent {
                command_type: t.command_type.clone(),
                args: t.args.clone(),
                requires_approval: t.requires_approval,
                timeout_secs: t.timeout_secs,
                message: Some(format!(
                    "no result within {} s + {} s grace of being {}",
                    t.timeout_secs,
                    grace / 1_000_000,
                    if p.dispatched_at.is_some() {
                        "dispatched"
                    } else {
                        "requested"
                    }
                )),
                ..CommandEvent::step(
                    CommandEventKind::TimedOut,
                    id,
                    &t.tenant_id,
                    &t.agent_id,
                    now,
                )
            });
        }
        out.sort_by(|a, b| a.command_id.cmp(&b.command_id));
        for ev in &out {
            if let Some(p) = self.pending.remove(&ev.command_id) {
                self.finished
                    .insert(ev.command_id.clone(), (p.partition, now));
            }
        }
        let keep = self.keep_finished_micros;
        self.finished
            .retain(|_, (_, at)| now.saturating_sub(*at) <= keep);
        out
    }

    /// Forgets the commands of partitions no longer held.
    pub fn forget(&mut self, partitions: &BTreeSet<u32>) {
        self.pending
            .retain(|_, p| !partitions.contains(&p.partition));
        self.finished.retain(|_, (p, _)| !partitions.contains(p));
    }

    /// Commands waiting for a result.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

struct TimeoutsProcessor(CommandTimeouts);

impl Timed for TimeoutsProcessor {
    type Out = CommandEvent;
    const NAME: &'static str = NAME;
    const INPUT: &'static str = topics::COMMANDS;

    fn on_input(&mut self, batch: &[ConsumedRecord], dead: &DeadLetters) -> Vec<CommandEvent> {
        for r in batch {
            if let Some(ev) = decode_counted::<CommandEvent>(NAME, dead, r) {
                self.0.observe(&ev, r.partition);
            }
        }
        Vec::new()
    }

    fn forget(&mut self, partitions: &BTreeSet<u32>) {
        self.0.forget(partitions);
    }

    fn due(&mut self, now: i64, partitions: &BTreeSet<u32>) -> Vec<CommandEvent> {
        let out = self.0.due(now, partitions);
        for ev in &out {
            tracing::info!(command_id = %ev.command_id, agent_id = %ev.agent_id, timeout_secs = ev.timeout_secs, "Command timed out.");
        }
        if !out.is_empty() {
            ::metrics::counter!(metrics::COMMANDS_TIMED_OUT).increment(out.len() as u64);
        }
        out
    }

    fn report(&self) {
        ::metrics::gauge!(metrics::PENDING_COMMANDS).set(self.0.pending() as f64);
    }
}

/// Runs the command-timeout processor until `shutdown` resolves.
pub async fn run_command_timeouts(
    log: Arc<dyn EventLog>,
    wire: Wire,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let lookback = config.command_timeouts.lookback;
    let proc = TimeoutsProcessor(CommandTimeouts::new(
        config.command_timeouts.grace,
        lookback,
    ));
    let settings = TimedSettings {
        group: config.command_timeouts.group.clone(),
        lookback,
        check_interval: config
            .command_timeouts
            .check_interval
            .max(Duration::from_millis(100)),
        batch_size: config.batch_size,
        session_timeout: config.event_log.session_timeout,
        follow: None,
    };
    run_timed(log, wire, proc, settings, ready, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::{fixtures, ids};

    const S: i64 = 1_000_000;
    const T0: i64 = 1_795_400_000_000_000;

    fn all() -> BTreeSet<u32> {
        (0..6).collect()
    }

    fn ev(id: &str, kind: CommandEventKind, at: i64) -> CommandEvent {
        let mut e = fixtures::command_completed("t1", "a1", at);
        e.command_id = id.into();
        e.kind = kind;
        e.timeout_secs = 60;
        e.status = None;
        e
    }

    fn timeouts() -> CommandTimeouts {
        CommandTimeouts::new(Duration::from_secs(30), Duration::from_secs(3600))
    }

    #[test]
    fn a_command_without_result_times_out_once() {
        let mut c = timeouts();
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        assert!(
            c.due(T0 + 90 * S, &all()).is_empty(),
            "60 s + 30 s not yet passed"
        );
        let out = c.due(T0 + 91 * S, &all());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].kind, CommandEventKind::TimedOut);
        assert_eq!(
            out[0].event_id,
            ids::v5(&["c1", "TIMED_OUT", "0"]).to_string()
        );
        assert_eq!(out[0].command_type, "restart_service");
        assert!(c.due(T0 + 500 * S, &all()).is_empty(), "never twice");
        // Its own TIMED_OUT and a replayed REQUESTED change nothing.
        c.observe(&out[0], 0);
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        assert!(c.due(T0 + 900 * S, &all()).is_empty());
        assert_eq!(c.pending(), 0);
    }

    #[test]
    fn a_completed_command_never_times_out() {
        let mut c = timeouts();
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        c.observe(&ev("c1", CommandEventKind::Dispatched, T0 + S), 0);
        c.observe(&ev("c1", CommandEventKind::Completed, T0 + 5 * S), 0);
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        assert!(c.due(T0 + 1000 * S, &all()).is_empty());
    }

    #[test]
    fn cancelled_and_rejected_commands_never_time_out_unless_dispatched() {
        let mut c = timeouts();
        // Requested (no approval needed: its clock runs), cancelled before dispatch.
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        c.observe(&ev("c1", CommandEventKind::Cancelled, T0 + S), 0);
        // Approved, then rejected by a racing second user.
        c.observe(&ev("c2", CommandEventKind::Requested, T0), 0);
        c.observe(&ev("c2", CommandEventKind::Rejected, T0 + S), 0);
        c.observe(&ev("c2", CommandEventKind::Approved, T0 + 2 * S), 0);
        assert!(c.due(T0 + 1000 * S, &all()).is_empty());
        assert_eq!(c.pending(), 0);
        // Dispatched before the cancel was read: delivered, so it keeps its deadline.
        c.observe(&ev("c3", CommandEventKind::Requested, T0), 0);
        c.observe(&ev("c3", CommandEventKind::Dispatched, T0 + S), 0);
        c.observe(&ev("c3", CommandEventKind::Cancelled, T0 + 2 * S), 0);
        let out = c.due(T0 + 1000 * S, &all());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].command_id, "c3");
    }

    #[test]
    fn the_clock_starts_at_dispatch_and_waits_for_approval() {
        let mut c = timeouts();
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 0);
        c.observe(&ev("c1", CommandEventKind::Dispatched, T0 + 50 * S), 0);
        assert!(c.due(T0 + 100 * S, &all()).is_empty());
        assert_eq!(c.due(T0 + 141 * S, &all()).len(), 1);

        let mut needs = ev("c2", CommandEventKind::Requested, T0);
        needs.requires_approval = true;
        c.observe(&needs, 1);
        assert!(
            c.due(T0 + 10_000 * S, &all()).is_empty(),
            "awaiting approval"
        );
        let mut approved = needs.clone();
        approved.kind = CommandEventKind::Approved;
        approved.occurred_at = T0 + 10_000 * S;
        c.observe(&approved, 1);
        assert!(c.due(T0 + 10_090 * S, &all()).is_empty());
        assert_eq!(c.due(T0 + 10_091 * S, &all()).len(), 1);
    }

    /// A second REQUESTED with the id of a command waiting for its approval (a reused
    /// idempotency key) does not start its clock: only the first REQUESTED counts.
    #[test]
    fn a_second_requested_does_not_change_the_command() {
        let mut c = timeouts();
        let mut first = ev("c1", CommandEventKind::Requested, T0);
        first.requires_approval = true;
        c.observe(&first, 0);
        let mut second = ev("c1", CommandEventKind::Requested, T0 + S);
        second.requires_approval = false;
        second.timeout_secs = 1;
        c.observe(&second, 0);
        assert!(
            c.due(T0 + 10_000 * S, &all()).is_empty(),
            "still waiting for its approval"
        );
        let mut approved = ev("c1", CommandEventKind::Approved, T0 + 10_000 * S);
        approved.timeout_secs = 1;
        c.observe(&approved, 0);
        assert!(
            c.due(T0 + 10_090 * S, &all()).is_empty(),
            "the first request's 60 s timeout applies"
        );
        assert_eq!(c.due(T0 + 10_091 * S, &all()).len(), 1);
    }

    #[test]
    fn only_held_partitions_are_judged_and_forget_drops_them() {
        let mut c = timeouts();
        c.observe(&ev("c1", CommandEventKind::Requested, T0), 2);
        assert!(c.due(T0 + 500 * S, &[0, 1].into()).is_empty());
        c.forget(&[2].into());
        assert_eq!(c.pending(), 0);
        assert!(c.due(T0 + 500 * S, &all()).is_empty());
    }
}
