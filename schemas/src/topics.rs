//! The topic catalog: names, what they carry, and their default partition counts.

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
/// Records a consumer could not process, with the reason and source offset.
pub const DEADLETTER: &str = "fleet.deadletter.v1";

/// A topic of the catalog with its default partition count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicDef {
    /// Topic name.
    pub name: &'static str,
    /// Partition count used when Fleetstream creates the topic.
    pub partitions: u32,
    /// Whether the topic should be log-compacted.
    pub compacted: bool,
}

/// Every topic Fleetstream uses, in creation order.
pub const ALL: &[TopicDef] = &[
    TopicDef {
        name: METRICS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: HEARTBEATS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: EVENTS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: AGENTS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: INVENTORY,
        partitions: 6,
        compacted: true,
    },
    TopicDef {
        name: RULES,
        partitions: 1,
        compacted: true,
    },
    TopicDef {
        name: ALERTS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: TICKETS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: COMMANDS,
        partitions: 6,
        compacted: false,
    },
    TopicDef {
        name: DEADLETTER,
        partitions: 1,
        compacted: false,
    },
];

/// Looks a topic up by name.
pub fn find(name: &str) -> Option<&'static TopicDef> {
    ALL.iter().find(|t| t.name == name)
}
