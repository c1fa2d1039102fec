//! Liveness: offline detection driven by time, not by record arrival.
//!
//! Consumes `fleet.heartbeats.v1` in group `liveness.group` and follows `fleet.agents.v1`
//! from its start (a throw-away group) for each agent's last ONLINE / OFFLINE, its
//! registration and its deactivation. Every `liveness.check-interval` a timer
//! judges the agents on the partitions this instance holds: one silent for longer than
//! its threshold gets AgentLifecycle OFFLINE; a heartbeat from an agent marked offline
//! gets ONLINE. The threshold follows each agent's own heartbeat interval, which its
//! heartbeats carry: `liveness.missed-heartbeats` × that interval, at least
//! `liveness.min-offline-after` ([`Threshold`]); an agent whose heartbeats do not say
//! their interval (older agents), or one known only from the agents topic, gets the
//! global `liveness.offline-after`. On start and on every rebalance the newly held partitions are
//! replayed from `liveness.lookback` ago (seek by time), and a partition is judged
//! only once it is consumed up to the end offsets taken at the check, so a replay or a
//! lagging consumer never reports a live agent offline.
//!
//! Time: "last seen" is the gateway's `ingested_at` of a heartbeat (the server clock the
//! check compares with), so an agent's skewed clock does not make it look silent. OFFLINE
//! carries `occurred_at` = that last-seen time and `event_id` = v5(agent, "OFFLINE",
//! last seen); ONLINE carries `occurred_at` = the heartbeat's `ingested_at` and `event_id`
//! = v5(agent, "ONLINE", heartbeat `occurred_at`). Both are deterministic, and each
//! agent's status changes only forward in time, so neither a restart nor a replay nor a
//! lagging follower emits a transition twice. A deactivated agent is never judged.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::{partition_for_key, ConsumedRecord, EventLog};
use fleet_schemas::{ids, topics, AgentLifecycle, AgentLifecycleKind, Heartbeat};

use fleet_schemas::Wire;

use crate::timed::{decode_counted, run_timed, Timed, TimedSettings};
use crate::{metrics, ProcessorsConfig, Readiness};
use fleet_consumer::deadletter::DeadLetters;

const NAME: &str = "liveness";

/// Status of an agent as the agents topic (and this processor) last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Never reported online or offline.
    Unknown,
    /// ONLINE since (µs).
    Online(i64),
    /// OFFLINE; last seen at (µs).
    Offline(i64),
}

impl Status {
    fn at(self) -> Option<i64> {
        match self {
            Status::Unknown => None,
            Status::Online(t) | Status::Offline(t) => Some(t),
        }
    }
}

/// What the agents topic says of one agent.
#[derive(Debug, Clone, PartialEq)]
struct Known {
    tenant_id: String,
    partition: u32,
    location_id: Option<String>,
    device_name: Option<String>,
    registered_at: Option<i64>,
    status: Status,
    deactivated: bool,
}

/// Heartbeats of one agent on a held partition.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    tenant_id: String,
    partition: u32,
    last_seen: i64,
    /// The interval the newest heartbeat announced (µs), if it did.
    interval_micros: Option<i64>,
}

/// When an agent is judged silent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    /// For an agent whose interval is unknown.
    pub offline_after: Duration,
    /// Intervals without a heartbeat (at least 1).
    pub missed_heartbeats: u32,
    /// Lower bound of the per-agent threshold.
    pub min_offline_after: Duration,
}

impl Threshold {
    /// Only the global timeout, whatever the heartbeats say.
    pub fn global(offline_after: Duration) -> Self {
        Threshold {
            offline_after,
            missed_heartbeats: 3,
            min_offline_after: offline_after,
        }
    }

    /// The threshold of an agent whose heartbeats announce `interval_micros` (µs),
    /// in µs; saturating, so a huge interval is a huge threshold, never an overflow.
    pub fn micros(&self, interval_micros: Option<i64>) -> i64 {
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        match interval_micros.filter(|i| *i > 0) {
            None => micros(self.offline_after),
            Some(i) => i
                .saturating_mul(i64::from(self.missed_heartbeats.max(1)))
                .max(micros(self.min_offline_after)),
        }
    }
}

/// A heartbeat's announced interval in µs (`None`: absent or not a sane number).
fn interval_micros(hb: &Heartbeat) -> Option<i64> {
    let secs = hb.heartbeat_interval_secs?;
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| !d.is_zero())
        .and_then(|d| i64::try_from(d.as_micros()).ok())
}

/// The liveness decisions (pure: no I/O, time passed in).
#[derive(Debug, Clone)]
pub struct Liveness {
    threshold: Threshold,
    partitions: u32,
    known: HashMap<String, Known>,
    seen: HashMap<String, Seen>,
}

impl Liveness {
    /// Judges agents silent for longer than their `threshold`; heartbeats have
    /// `partitions` partitions (an agent's partition is its key's, as the log places it).
    pub fn new(threshold: Threshold, partitions: u32) -> Liveness {
        Liveness {
            threshold,
            partitions: partitions.max(1),
            known: HashMap::new(),
            seen: HashMap::new(),
        }
    }

    fn known_mut(&mut self, agent_id: &str, tenant_id: &str) -> &mut Known {
        let partitions = self.partitions;
        self.known
            .entry(agent_id.to_owned())
            .or_insert_with(|| Known {
                tenant_id: tenant_id.to_owned(),
                partition: partition_for_key(agent_id.as_bytes(), partitions),
                location_id: None,
                device_name: None,
                registered_at: None,
                status: Status::Unknown,
                deactivated: false,
            })
    }

    /// Applies an event of `fleet.agents.v1` (anyone's, this processor's own included).
    /// ONLINE / OFFLINE only move an agent's status forward in time.
    pub fn observe_lifecycle(&mut self, ev: &AgentLifecycle) {
        let k = self.known_mut(&ev.agent_id, &ev.tenant_id);
        if ev.location_id.is_some() {
            k.location_id.clone_from(&ev.location_id);
        }
        if ev.device_name.is_some() {
            k.device_name.clone_from(&ev.device_name);
        }
        let newer = k.status.at().is_none_or(|at| ev.occurred_at > at);
        match ev.kind {
            AgentLifecycleKind::Registered => {
                k.tenant_id.clone_from(&ev.tenant_id);
                k.registered_at = Some(
                    k.registered_at
                        .map_or(ev.occurred_at, |r| r.max(ev.occurred_at)),
                );
            }
            AgentLifecycleKind::Updated => {}
            AgentLifecycleKind::Deactivated => k.deactivated = true,
            AgentLifecycleKind::Online if newer => k.status = Status::Online(ev.occurred_at),
            AgentLifecycleKind::Offline if newer => k.status = Status::Offline(ev.occurred_at),
            AgentLifecycleKind::Online | AgentLifecycleKind::Offline => {}
        }
    }

    /// Takes a heartbeat consumed from `partition`; returns ONLINE if the agent was marked
    /// offline before this heartbeat reached the gateway.
    pub fn observe_heartbeat(
        &mut self,
        hb: &Heartbeat,
        partition: u32,
        now: i64,
    ) -> Option<AgentLifecycle> {
        let seen_at = hb.ingested_at;
        let s = self
            .seen
            .entry(hb.agent_id.clone())
            .or_insert_with(|| Seen {
                tenant_id: hb.tenant_id.clone(),
                partition,
                last_seen: seen_at,
                interval_micros: None,
            });
        // The newest heartbeat says the interval (an agent may change it; a replayed
        // older one does not undo that).
        if seen_at >= s.last_seen {
            s.interval_micros = interval_micros(hb);
        }
        s.last_seen = s.last_seen.max(seen_at);
        s.partition = partition;
        let k = self.known_mut(&hb.agent_id, &hb.tenant_id);
        let Status::Offline(last_seen) = k.status else {
            return None;
        };
        if k.deactivated || seen_at <= last_seen {
            return None;
        }
        k.status = Status::Online(seen_at);
        Some(AgentLifecycle {
            event_id: ids::v5(&[&hb.agent_id, "ONLINE", &hb.occurred_at.to_string()]).to_string(),
            tenant_id: hb.tenant_id.clone(),
            agent_id: hb.agent_id.clone(),
            kind: AgentLifecycleKind::Online,
            location_id: k.location_id.clone(),
            device_name: k.device_name.clone(),
            facts: None,
            actor: None,
            reason: Some(format!(
                "heartbeat received after being offline since {}",
                fleet_schemas::time::from_micros(last_seen).to_rfc3339()
            )),
            tags: None,
            occurred_at: seen_at,
            ingested_at: now,
        })
    }

    /// OFFLINE for every agent on `partitions` silent for longer than the threshold at
    /// `now`, not already offline and not deactivated; marks them offline.
    pub fn due(&mut self, now: i64, partitions: &BTreeSet<u32>) -> Vec<AgentLifecycle> {
        let mut candidates: BTreeSet<&str> = self
            .seen
            .iter()
            .filter(|(_, s)| partitions.contains(&s.partition))
            .map(|(a, _)| a.as_str())
            .collect();
        candidates.extend(
            self.known
                .iter()
                .filter(|(_, k)| partitions.contains(&k.partition))
                .map(|(a, _)| a.as_str()),
        );
        let mut out = Vec::new();
        let mut offline = Vec::new();
        for agent in candidates {
            let seen = self.seen.get(agent);
            let known = self.known.get(agent);
            if known.is_some_and(|k| k.deactivated || matches!(k.status, Status::Offline(_))) {
                continue;
            }
            // The latest sign of life: a heartbeat, else the last ONLINE or registration.
            let last_seen = [
                seen.map(|s| s.last_seen),
                known.and_then(|k| k.status.at()),
                known.and_then(|k| k.registered_at),
            ]
            .into_iter()
            .flatten()
            .max();
            let Some(last_seen) = last_seen else { continue };
            let threshold = self.threshold.micros(seen.and_then(|s| s.interval_micros));
            if now.saturating_sub(last_seen) <= threshold {
                continue;
            }
            let tenant_id = seen
                .map(|s| s.tenant_id.clone())
                .or_else(|| known.map(|k| k.tenant_id.clone()))
                .unwrap_or_default();
            out.push(AgentLifecycle {
                event_id: ids::v5(&[agent, "OFFLINE", &last_seen.to_string()]).to_string(),
                tenant_id,
                agent_id: agent.to_owned(),
                kind: AgentLifecycleKind::Offline,
                location_id: known.and_then(|k| k.location_id.clone()),
                device_name: known.and_then(|k| k.device_name.clone()),
                facts: None,
                actor: None,
                reason: Some(format!(
                    "no heartbeat for {} s (last seen {})",
                    now.saturating_sub(last_seen) / 1_000_000,
                    fleet_schemas::time::from_micros(last_seen).to_rfc3339()
                )),
                tags: None,
                occurred_at: last_seen,
                ingested_at: now,
            });
            offline.push((agent.to_owned(), last_seen));
        }
        for (agent, last_seen) in offline {
            let tenant = self
                .seen
                .get(&agent)
                .map(|s| s.tenant_id.clone())
                .unwrap_or_default();
            self.known_mut(&agent, &tenant).status = Status::Offline(last_seen);
        }
        out
    }

    /// Forgets the heartbeats of partitions no longer held (the agents topic view stays).
    pub fn forget(&mut self, partitions: &BTreeSet<u32>) {
        self.seen.retain(|_, s| !partitions.contains(&s.partition));
    }

    /// Agents on `partitions` held as offline (deactivated ones not counted).
    pub fn offline_on(&self, partitions: &BTreeSet<u32>) -> usize {
        self.known
            .values()
            .filter(|k| {
                !k.deactivated
                    && matches!(k.status, Status::Offline(_))
                    && partitions.contains(&k.partition)
            })
            .count()
    }
}

struct LivenessProcessor {
    state: Liveness,
    held: BTreeSet<u32>,
}

impl Timed for LivenessProcessor {
    type Out = AgentLifecycle;
    const NAME: &'static str = NAME;
    const INPUT: &'static str = topics::HEARTBEATS;

    fn on_input(&mut self, batch: &[ConsumedRecord], dead: &DeadLetters) -> Vec<AgentLifecycle> {
        let now = fleet_schemas::time::now_micros();
        let mut out = Vec::new();
        for r in batch {
            if let Some(hb) = decode_counted::<Heartbeat>(NAME, dead, r) {
                if let Some(ev) = self.state.observe_heartbeat(&hb, r.partition, now) {
                    tracing::info!(agent_id = %ev.agent_id, "Agent online again.");
                    ::metrics::counter!(metrics::LIVENESS_EMITTED, "kind" => "online").increment(1);
                    out.push(ev);
                }
            }
        }
        out
    }

    fn on_follow(&mut self, r: &ConsumedRecord, dead: &DeadLetters) {
        if let Some(ev) = decode_counted::<AgentLifecycle>(NAME, dead, r) {
            self.state.observe_lifecycle(&ev);
        }
    }

    fn forget(&mut self, partitions: &BTreeSet<u32>) {
        self.state.forget(partitions);
    }

    fn assigned(&mut self, held: &BTreeSet<u32>) {
        self.held.clone_from(held);
    }

    fn due(&mut self, now: i64, partitions: &BTreeSet<u32>) -> Vec<AgentLifecycle> {
        let out = self.state.due(now, partitions);
        for ev in &out {
            tracing::info!(agent_id = %ev.agent_id, last_seen = ev.occurred_at, "Agent offline.");
            ::metrics::counter!(metrics::LIVENESS_EMITTED, "kind" => "offline").increment(1);
        }
        out
    }

    fn report(&self) {
        ::metrics::gauge!(metrics::AGENTS_OFFLINE).set(self.state.offline_on(&self.held) as f64);
    }
}

/// Runs the liveness processor until `shutdown` resolves.
pub async fn run_liveness(
    log: Arc<dyn EventLog>,
    wire: Wire,
    config: ProcessorsConfig,
    ready: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let partitions = log.partition_count(topics::HEARTBEATS).await?;
    let proc = LivenessProcessor {
        state: Liveness::new(
            Threshold {
                offline_after: config.liveness.offline_after,
                missed_heartbeats: config.liveness.missed_heartbeats,
                min_offline_after: config.liveness.min_offline_after,
            },
            partitions,
        ),
        held: BTreeSet::new(),
    };
    let settings = TimedSettings {
        group: config.liveness.group.clone(),
        lookback: config.liveness.lookback,
        check_interval: config
            .liveness
            .check_interval
            .max(Duration::from_millis(100)),
        batch_size: config.batch_size,
        session_timeout: config.event_log.session_timeout,
        follow: Some(topics::AGENTS),
    };
    run_timed(log, wire, proc, settings, ready, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::fixtures;

    const S: i64 = 1_000_000;
    const T0: i64 = 1_795_400_000_000_000;

    fn all() -> BTreeSet<u32> {
        (0..6).collect()
    }

    fn hb(agent: &str, at: i64) -> Heartbeat {
        let mut h = fixtures::heartbeat("t1", agent, at, 1);
        h.ingested_at = at;
        h
    }

    fn state() -> Liveness {
        Liveness::new(Threshold::global(Duration::from_secs(90)), 6)
    }

    #[test]
    fn the_threshold_follows_each_agents_interval() {
        let mut l = Liveness::new(
            Threshold {
                offline_after: Duration::from_secs(90),
                missed_heartbeats: 3,
                min_offline_after: Duration::from_secs(10),
            },
            6,
        );
        let with = |agent: &str, secs: Option<f64>| {
            let mut h = hb(agent, T0);
            h.heartbeat_interval_secs = secs;
            h
        };
        for (agent, secs) in [
            ("fast", Some(5.0)),
            ("slow", Some(60.0)),
            ("old", None),
            ("tiny", Some(1.0)),
            ("nan", Some(f64::NAN)),
        ] {
            assert!(l
                .observe_heartbeat(&with(agent, secs), part(agent), T0)
                .is_none());
        }
        let offline_at = |l: &mut Liveness, at: i64| -> Vec<String> {
            let mut v: Vec<String> = l.due(at, &all()).into_iter().map(|e| e.agent_id).collect();
            v.sort();
            v
        };
        // 3 × 1 s is below the 10 s floor; 3 × 5 s = 15 s.
        assert!(offline_at(&mut l, T0 + 10 * S).is_empty());
        assert_eq!(offline_at(&mut l, T0 + 11 * S), vec!["tiny"]);
        assert!(offline_at(&mut l, T0 + 15 * S).is_empty());
        assert_eq!(offline_at(&mut l, T0 + 16 * S), vec!["fast"]);
        // Unknown interval (older agent, or not a number): the global 90 s.
        assert!(offline_at(&mut l, T0 + 90 * S).is_empty());
        assert_eq!(offline_at(&mut l, T0 + 91 * S), vec!["nan", "old"]);
        // 3 × 60 s = 180 s.
        assert!(offline_at(&mut l, T0 + 180 * S).is_empty());
        assert_eq!(offline_at(&mut l, T0 + 181 * S), vec!["slow"]);
        // A huge interval saturates rather than overflowing.
        let t = Threshold {
            offline_after: Duration::from_secs(90),
            missed_heartbeats: u32::MAX,
            min_offline_after: Duration::ZERO,
        };
        assert_eq!(t.micros(Some(i64::MAX / 2)), i64::MAX);
        assert_eq!(t.micros(Some(0)), 90 * S);
    }

    fn part(agent: &str) -> u32 {
        partition_for_key(agent.as_bytes(), 6)
    }

    fn lifecycle(agent: &str, kind: AgentLifecycleKind, at: i64) -> AgentLifecycle {
        let mut ev = fixtures::agent_registered("t1", agent, at);
        ev.kind = kind;
        ev.facts = None;
        ev
    }

    #[test]
    fn a_silent_agent_goes_offline_once_and_online_with_its_next_heartbeat() {
        let mut l = state();
        assert!(l.observe_heartbeat(&hb("a1", T0), part("a1"), T0).is_none());
        assert!(
            l.due(T0 + 90 * S, &all()).is_empty(),
            "90 s is not more than 90 s"
        );
        let off = l.due(T0 + 91 * S, &all());
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].kind, AgentLifecycleKind::Offline);
        assert_eq!(off[0].occurred_at, T0);
        assert_eq!(
            off[0].event_id,
            ids::v5(&["a1", "OFFLINE", &T0.to_string()]).to_string()
        );
        assert!(l.due(T0 + 200 * S, &all()).is_empty(), "offline once");
        assert_eq!(l.offline_on(&all()), 1);

        let back = hb("a1", T0 + 300 * S);
        let on = l
            .observe_heartbeat(&back, part("a1"), T0 + 300 * S)
            .expect("online");
        assert_eq!(on.kind, AgentLifecycleKind::Online);
        assert_eq!(
            on.event_id,
            ids::v5(&["a1", "ONLINE", &back.occurred_at.to_string()]).to_string()
        );
        assert!(l
            .observe_heartbeat(&hb("a1", T0 + 330 * S), part("a1"), T0)
            .is_none());
        assert_eq!(l.offline_on(&all()), 0);
    }

    #[test]
    fn a_rebuilt_state_does_not_repeat_transitions() {
        // The agents topic says: offline since T0, then online at T0 + 300 s.
        let mut l = state();
        let mut off = lifecycle("a1", AgentLifecycleKind::Offline, T0);
        off.occurred_at = T0;
        l.observe_lifecycle(&off);
        // Replayed heartbeats from before the OFFLINE: no ONLINE.
        assert!(l
            .observe_heartbeat(&hb("a1", T0 - 30 * S), part("a1"), T0)
            .is_none());
        assert!(l.observe_heartbeat(&hb("a1", T0), part("a1"), T0).is_none());
        assert!(l.due(T0 + 500 * S, &all()).is_empty(), "already offline");
        l.observe_lifecycle(&lifecycle("a1", AgentLifecycleKind::Online, T0 + 300 * S));
        // The heartbeat behind that ONLINE, replayed: nothing.
        assert!(l
            .observe_heartbeat(&hb("a1", T0 + 300 * S), part("a1"), T0)
            .is_none());
    }

    #[test]
    fn a_lagging_follower_does_not_move_the_status_back() {
        let mut l = state();
        l.observe_heartbeat(&hb("a1", T0), part("a1"), T0);
        let off = l.due(T0 + 100 * S, &all());
        assert_eq!(off.len(), 1);
        let on = l.observe_heartbeat(&hb("a1", T0 + 120 * S), part("a1"), T0 + 120 * S);
        assert!(on.is_some());
        // Our own OFFLINE arrives through the follower after we went online again.
        l.observe_lifecycle(&off[0]);
        assert!(l
            .observe_heartbeat(&hb("a1", T0 + 150 * S), part("a1"), T0)
            .is_none());
    }

    #[test]
    fn deactivated_agents_and_other_partitions_are_not_judged() {
        let mut l = state();
        l.observe_heartbeat(&hb("a1", T0), part("a1"), T0);
        l.observe_heartbeat(&hb("a2", T0), part("a2"), T0);
        l.observe_lifecycle(&lifecycle("a1", AgentLifecycleKind::Deactivated, T0 + S));
        let others: BTreeSet<u32> = all().into_iter().filter(|p| *p != part("a2")).collect();
        assert!(l.due(T0 + 500 * S, &others).is_empty());
        let off = l.due(T0 + 500 * S, &all());
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].agent_id, "a2");
    }

    #[test]
    fn a_registered_agent_that_never_heartbeats_goes_offline() {
        let mut l = state();
        let mut reg = lifecycle("a1", AgentLifecycleKind::Registered, T0);
        reg.location_id = Some("loc-1".into());
        l.observe_lifecycle(&reg);
        let off = l.due(T0 + 100 * S, &all());
        assert_eq!(off.len(), 1);
        assert_eq!(off[0].location_id.as_deref(), Some("loc-1"));
        assert_eq!(off[0].occurred_at, T0);
    }

    #[test]
    fn forgetting_a_partition_drops_its_heartbeats() {
        let mut l = state();
        l.observe_heartbeat(&hb("a1", T0), part("a1"), T0);
        l.forget(&[part("a1")].into());
        // Only the agents topic view is left, which knows nothing of a1's last sign.
        assert!(l.due(T0 + 500 * S, &all()).is_empty());
    }
}
