//! The topic catalog: names, the record type each holds, and their default partition
//! counts. Everything that maps a topic to its record (the schema registry's subjects, the
//! export, the read model's projection) reads it from here.

/// One metric report per record (high volume).
pub const METRICS: &str = "fleet.metrics.v1";
/// Heartbeats.
pub const HEARTBEATS: &str = "fleet.heartbeats.v1";
/// Agent events (service crashed, login failed, ...).
pub const EVENTS: &str = "fleet.events.v1";
/// Agent lifecycle: registered, updated, online, offline, deactivated.
pub const AGENTS: &str = "fleet.agents.v1";
/// Installed software per agent (key: agent id), compacted: the latest record is current.
pub const INVENTORY: &str = "fleet.inventory.v1";
/// Alert rules defined / deleted (key: rule id), compacted.
pub const RULES: &str = "fleet.rules.v1";
/// Alerts raised / resolved / acknowledged (key: agent id).
pub const ALERTS: &str = "fleet.alerts.v1";
/// Tickets requested / updated (key: ticket id).
pub const TICKETS: &str = "fleet.tickets.v1";
/// Remote commands and their lifecycle.
pub const COMMANDS: &str = "fleet.commands.v1";
/// Samples of the standard write protocols (remote-write, OTLP, Influx), batched per
/// request and source shard (key: `{tenant}/{shard}`, see [`crate::SampleBatch::key_for`]:
/// keeps each series in order and spreads one tenant over every partition).
pub const SAMPLES: &str = "fleet.samples.v1";
/// Desired remote configuration per agent, tag and location (key:
/// `{tenant}/{scope}/{target}`), compacted: the latest record of a key is current.
pub const CONFIG: &str = "fleet.config.v1";
/// Records a consumer could not process, with the reason and source offset.
pub const DEADLETTER: &str = "fleet.deadletter.v1";

/// The record type a topic holds (each topic holds one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    /// [`crate::MetricReport`].
    MetricReport,
    /// [`crate::Heartbeat`].
    Heartbeat,
    /// [`crate::AgentEvent`].
    AgentEvent,
    /// [`crate::AgentLifecycle`].
    AgentLifecycle,
    /// [`crate::SoftwareInventory`].
    SoftwareInventory,
    /// [`crate::RuleEvent`].
    RuleEvent,
    /// [`crate::AlertEvent`].
    AlertEvent,
    /// [`crate::TicketEvent`].
    TicketEvent,
    /// [`crate::CommandEvent`].
    CommandEvent,
    /// [`crate::DeadLetter`].
    DeadLetter,
    /// [`crate::SampleBatch`].
    SampleBatch,
    /// [`crate::RemoteConfigEvent`].
    RemoteConfigEvent,
}

impl RecordType {
    /// The record's Avro full name (`io.fleetstream.MetricReport`).
    pub const fn full_name(self) -> &'static str {
        use crate::codec::Record;
        match self {
            RecordType::MetricReport => crate::MetricReport::FULL_NAME,
            RecordType::Heartbeat => crate::Heartbeat::FULL_NAME,
            RecordType::AgentEvent => crate::AgentEvent::FULL_NAME,
            RecordType::AgentLifecycle => crate::AgentLifecycle::FULL_NAME,
            RecordType::SoftwareInventory => crate::SoftwareInventory::FULL_NAME,
            RecordType::RuleEvent => crate::RuleEvent::FULL_NAME,
            RecordType::AlertEvent => crate::AlertEvent::FULL_NAME,
            RecordType::TicketEvent => crate::TicketEvent::FULL_NAME,
            RecordType::CommandEvent => crate::CommandEvent::FULL_NAME,
            RecordType::DeadLetter => crate::DeadLetter::FULL_NAME,
            RecordType::SampleBatch => crate::SampleBatch::FULL_NAME,
            RecordType::RemoteConfigEvent => crate::RemoteConfigEvent::FULL_NAME,
        }
    }
}

/// A topic of the catalog: its record type and default partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDef {
    /// Topic name.
    pub name: &'static str,
    /// The record type it holds.
    pub record: RecordType,
    /// Partition count used when Fleetstream creates the topic.
    pub partitions: u32,
    /// Whether the topic should be log-compacted.
    pub compacted: bool,
}

/// Every topic Fleetstream uses, in creation order.
pub const ALL: &[TopicDef] = &[
    TopicDef {
        name: METRICS,
        record: RecordType::MetricReport,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: HEARTBEATS,
        record: RecordType::Heartbeat,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: EVENTS,
        record: RecordType::AgentEvent,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: AGENTS,
        record: RecordType::AgentLifecycle,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: INVENTORY,
        record: RecordType::SoftwareInventory,
        partitions: 6,
        compacted: true,
    },
    TopicDef {
        name: RULES,
        record: RecordType::RuleEvent,
        partitions: 1,
        compacted: true,
    },
    TopicDef {
        name: ALERTS,
        record: RecordType::AlertEvent,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: TICKETS,
        record: RecordType::TicketEvent,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: COMMANDS,
        record: RecordType::CommandEvent,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: SAMPLES,
        record: RecordType::SampleBatch,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: CONFIG,
        record: RecordType::RemoteConfigEvent,
        partitions: 1,
        compacted: true,
    },
    TopicDef {
        name: DEADLETTER,
        record: RecordType::DeadLetter,
        partitions: 1,
        compacted: false,
    },
];

/// Looks a topic up by name.
pub fn find(name: &str) -> Option<&'static TopicDef> {
    ALL.iter().find(|t| t.name == name)
}

/// The record type `topic` holds, if it is in the catalog.
pub fn record_of(topic: &str) -> Option<RecordType> {
    find(topic).map(|t| t.record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Record;

    fn holds<T: Record>(record: RecordType) {
        assert_eq!(record_of(T::TOPIC), Some(record), "{}", T::FULL_NAME);
        assert_eq!(record.full_name(), T::FULL_NAME);
    }

    #[test]
    fn the_catalog_names_the_record_each_record_type_is_written_to() {
        holds::<crate::MetricReport>(RecordType::MetricReport);
        holds::<crate::Heartbeat>(RecordType::Heartbeat);
        holds::<crate::AgentEvent>(RecordType::AgentEvent);
        holds::<crate::AgentLifecycle>(RecordType::AgentLifecycle);
        holds::<crate::SoftwareInventory>(RecordType::SoftwareInventory);
        holds::<crate::RuleEvent>(RecordType::RuleEvent);
        holds::<crate::AlertEvent>(RecordType::AlertEvent);
        holds::<crate::TicketEvent>(RecordType::TicketEvent);
        holds::<crate::CommandEvent>(RecordType::CommandEvent);
        holds::<crate::DeadLetter>(RecordType::DeadLetter);
        holds::<crate::SampleBatch>(RecordType::SampleBatch);
        holds::<crate::RemoteConfigEvent>(RecordType::RemoteConfigEvent);
        let mut seen = std::collections::HashSet::new();
        assert!(
            ALL.iter().all(|t| seen.insert(t.record)),
            "one topic per record type"
        );
    }
}
