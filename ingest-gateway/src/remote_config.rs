//! Remote configuration: delivery of each agent's desired configuration.
//!
//! The watcher follows `fleet.config.v1` (the desired configuration per agent, tag and
//! location, compacted) and `fleet.agents.v1` (each agent's tags and location) from the
//! earliest record, with its own throw-away group, so its only state, the
//! [`ConfigBook`], is rebuilt from the log at every start; until it has read up to the
//! end offsets it found at start it delivers nothing (an agent is never told to drop its
//! configuration because this instance has not read it yet).
//!
//! Delivery: a heartbeat whose `config_version` differs from the agent's effective
//! version ([`fleet_schemas::remote_config::effective_for`]) gets the configuration in
//! its answer (the HTTP body's `config`; over the WebSocket a `config` frame beside the
//! `ack`), and a change that applies to an agent with a socket on this instance is pushed
//! at once. An agent with no applicable record runs version 0 (its local values).
//!
//! Cost: one record per configured scope plus tags and location per agent, in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleet_consumer::backoff::retry_until;
use fleet_consumer::deadletter::DeadLetters;
use fleet_consumer::runtime::{ConsumerRuntime, Output, Processor, Settings};
use fleet_event_log::{ConsumedRecord, StartFrom};
use fleet_schemas::api::ConfigUpdate;
use fleet_schemas::codec::Record;
use fleet_schemas::remote_config::effective_for;
use fleet_schemas::{topics, AgentLifecycle, RemoteConfigEvent};
use parking_lot::Mutex;

use crate::GatewayState;

/// What an agent's configuration depends on besides the records.
#[derive(Debug, Clone, Default, PartialEq)]
struct AgentScopes {
    tenant_id: String,
    tags: Vec<String>,
    location_id: Option<String>,
}

/// The desired configuration records and each agent's tags and location.
#[derive(Debug, Default)]
pub struct ConfigBook {
    /// Record key → the latest record.
    records: HashMap<String, RemoteConfigEvent>,
    agents: HashMap<String, AgentScopes>,
}

impl ConfigBook {
    /// Applies a configuration record (the latest of a key wins).
    pub fn apply_config(&mut self, r: RemoteConfigEvent) {
        self.records.insert(r.config_key.clone(), r);
    }

    /// Applies a lifecycle event: its location (when stated) and tags (when stated).
    pub fn apply_lifecycle(&mut self, ev: &AgentLifecycle) {
        let a = self.agents.entry(ev.agent_id.clone()).or_default();
        a.tenant_id.clone_from(&ev.tenant_id);
        if ev.location_id.is_some() {
            a.location_id.clone_from(&ev.location_id);
        }
        if let Some(tags) = &ev.tags {
            a.tags.clone_from(tags);
        }
    }

    /// The configuration `agent_id` of `tenant_id` should run (version 0: none).
    pub fn desired(&self, tenant_id: &str, agent_id: &str) -> ConfigUpdate {
        let scopes = self
            .agents
            .get(agent_id)
            .filter(|a| a.tenant_id == tenant_id);
        let (tags, location) = scopes.map_or((&[][..], None), |a| {
            (a.tags.as_slice(), a.location_id.as_deref())
        });
        let e = effective_for(
            self.records.values().filter(|r| r.tenant_id == tenant_id),
            agent_id,
            tags,
            location,
        );
        ConfigUpdate::remote(&e.config, e.version)
    }

    /// The agents of `tenant_id` known here.
    fn agents_of(&self, tenant_id: &str) -> Vec<String> {
        self.agents
            .iter()
            .filter(|(_, a)| a.tenant_id == tenant_id)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The gateway's remote-configuration state.
#[derive(Debug, Default)]
pub struct RemoteConfigs {
    book: Mutex<ConfigBook>,
    live: AtomicBool,
}

impl RemoteConfigs {
    /// Whether the log was read up to where it ended at start.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The configuration to send with a heartbeat that acknowledged `applied`: `None` when
    /// the agent runs the desired version, or while the state is still being rebuilt.
    pub fn for_heartbeat(
        &self,
        tenant_id: &str,
        agent_id: &str,
        applied: Option<i64>,
    ) -> Option<ConfigUpdate> {
        if !self.is_live() {
            return None;
        }
        let desired = self.book.lock().desired(tenant_id, agent_id);
        (desired.version != Some(applied.unwrap_or(0))).then_some(desired)
    }
}

/// Follows `fleet.config.v1` and `fleet.agents.v1` from the earliest record and pushes
/// changed configurations to the sockets on this instance. Each instance reads with its
/// own throw-away group.
pub async fn run_config_watcher(
    state: GatewayState,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    let topics_read = [RemoteConfigEvent::TOPIC, AgentLifecycle::TOPIC];
    let start = || {
        let (log, wire) = (state.log.clone(), state.wire.clone());
        async move {
            let mut behind = HashMap::new();
            for topic in topics_read {
                for (p, end) in (0u32..).zip(log.end_offsets(topic).await?) {
                    if end > 0 {
                        behind.insert((topic.to_owned(), p), end);
                    }
                }
            }
            let settings = Settings::throwaway("gateway-config", &topics_read)
                .start(StartFrom::Earliest)
                .batch_size(500)
                .poll_timeout(Duration::from_secs(1));
            let dead =
                DeadLetters::open(log.clone(), wire, "gateway-config", settings.group_name())
                    .await?;
            let runtime = ConsumerRuntime::subscribe(log, settings, dead.clone()).await?;
            anyhow::Ok((runtime, behind, dead))
        }
    };
    let Some((runtime, behind, dead)) = retry_until(
        "starting the remote-configuration watcher",
        &mut shutdown,
        start,
    )
    .await
    else {
        return Ok(());
    };
    let mut watcher = ConfigWatcher {
        state,
        dead,
        behind,
        idle_polls: 0,
    };
    if watcher.behind.is_empty() {
        watcher.go_live();
    }
    runtime.run(&mut watcher, shutdown).await;
    Ok(())
}

/// The watcher on the consumer runtime.
struct ConfigWatcher {
    state: GatewayState,
    dead: DeadLetters,
    /// (topic, partition) → end offset still to reach at start.
    behind: HashMap<(String, u32), i64>,
    /// Polls in a row without records while behind.
    idle_polls: u32,
}

impl ConfigWatcher {
    fn go_live(&self) {
        self.state
            .remote_configs
            .live
            .store(true, Ordering::Release);
        tracing::info!("Remote configurations rebuilt; delivering.");
    }

    /// Pushes the desired configuration to `agents` that have a socket here.
    fn push(&self, tenant_id: &str, agents: &[String]) {
        let book = self.state.remote_configs.book.lock();
        for agent_id in agents {
            if self.state.hub.is_connected(agent_id) {
                let config = book.desired(tenant_id, agent_id);
                let version = config.version;
                if self.state.hub.push(
                    agent_id,
                    fleet_schemas::api::ServerMessage::Config { config },
                ) {
                    tracing::info!(%agent_id, ?version, "Remote configuration pushed.");
                }
            }
        }
    }
}

impl Processor for ConfigWatcher {
    async fn handle(&mut self, records: &[ConsumedRecord]) -> Output {
        let live = self.state.remote_configs.is_live();
        // (tenant, agents) whose configuration may have changed.
        let mut changed: Vec<(String, Vec<String>)> = Vec::new();
        for r in records {
            let key = (r.topic.to_string(), r.partition);
            if self
                .behind
                .get(&key)
                .is_some_and(|end| r.offset + 1 >= *end)
            {
                self.behind.remove(&key);
            }
            if *r.topic == *topics::CONFIG {
                if let Some(ev) = self.dead.decode_or_note::<RemoteConfigEvent>(r) {
                    let mut book = self.state.remote_configs.book.lock();
                    let tenant = ev.tenant_id.clone();
                    book.apply_config(ev);
                    if live {
                        changed.push((tenant.clone(), book.agents_of(&tenant)));
                    }
                }
            } else if let Some(ev) = self.dead.decode_or_note::<AgentLifecycle>(r) {
                self.state.remote_configs.book.lock().apply_lifecycle(&ev);
                // Only an event that states tags or a location can change the config.
                if live && (ev.tags.is_some() || ev.location_id.is_some()) {
                    changed.push((ev.tenant_id.clone(), vec![ev.agent_id.clone()]));
                }
            }
        }
        for (tenant, agents) in &changed {
            self.push(tenant, agents);
        }
        self.dead.flush().await;
        // A throw-away group: nothing is committed.
        Output::new()
    }

    async fn on_tick(&mut self, handled: usize) -> Output {
        if !self.state.remote_configs.is_live() {
            self.idle_polls = if handled == 0 { self.idle_polls + 1 } else { 0 };
            // Offsets can have gaps (Kafka transactions, compaction): give up waiting for
            // the exact end after a while of nothing.
            if self.behind.is_empty() || self.idle_polls >= 20 {
                self.go_live();
            }
        }
        Output::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::{fixtures, AgentLifecycleKind, ConfigScope};

    #[test]
    fn desired_follows_tags_and_location_and_other_tenants_do_not_leak() {
        let mut book = ConfigBook::default();
        let mut tag = fixtures::remote_config("t1", "web", 10);
        tag.scope = ConfigScope::Tag;
        tag.config_key = RemoteConfigEvent::key_for("t1", ConfigScope::Tag, "web");
        book.apply_config(tag);
        let mut other = fixtures::remote_config("t2", "a1", 20);
        other.heartbeat_interval_secs = Some(99.0);
        book.apply_config(other);
        // Unknown agent: version 0, nothing set.
        assert_eq!(book.desired("t1", "a1").version, Some(0));
        let mut ev = fixtures::agent_registered("t1", "a1", 1);
        ev.kind = AgentLifecycleKind::Updated;
        ev.tags = Some(vec!["web".into()]);
        book.apply_lifecycle(&ev);
        let d = book.desired("t1", "a1");
        assert_eq!(d.version, Some(10));
        assert_eq!(d.heartbeat_interval_secs, Some(15.0));
        // An online event (no tags stated) keeps the tags.
        let mut online = fixtures::agent_registered("t1", "a1", 2);
        online.kind = AgentLifecycleKind::Online;
        online.tags = None;
        online.location_id = None;
        book.apply_lifecycle(&online);
        assert_eq!(book.desired("t1", "a1").version, Some(10));
        // Each tenant sees its own records only.
        assert_eq!(book.desired("t2", "a1").heartbeat_interval_secs, Some(99.0));
        assert_eq!(book.desired("t1", "a1").heartbeat_interval_secs, Some(15.0));
    }

    #[test]
    fn a_heartbeat_gets_the_config_only_when_live_and_out_of_sync() {
        let rc = RemoteConfigs::default();
        rc.book
            .lock()
            .apply_config(fixtures::remote_config("t1", "a1", 10));
        assert_eq!(rc.for_heartbeat("t1", "a1", None), None, "not live yet");
        rc.live.store(true, Ordering::Release);
        assert_eq!(
            rc.for_heartbeat("t1", "a1", None).and_then(|c| c.version),
            Some(10)
        );
        assert_eq!(rc.for_heartbeat("t1", "a1", Some(10)), None, "in sync");
        // An agent with nothing desired that runs an old version is told version 0.
        assert_eq!(
            rc.for_heartbeat("t1", "a2", Some(3))
                .and_then(|c| c.version),
            Some(0)
        );
        assert_eq!(rc.for_heartbeat("t1", "a2", None), None);
    }
}
