//! Sample records for tests, benches and interop checks.

use std::collections::HashMap;

use crate::records::*;

/// A realistic metric report for `agent` at `occurred_at` (µs).
pub fn metric_report(tenant: &str, agent: &str, occurred_at: i64) -> MetricReport {
    MetricReport {
        event_id: crate::ids::v7_at(occurred_at, &[agent, "metrics"]).to_string(),
        tenant_id: tenant.to_owned(),
        agent_id: agent.to_owned(),
        occurred_at,
        ingested_at: occurred_at + 1_500,
        cpu_percent: 42.5,
        cpu_per_core: vec![40.0, 45.0],
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 8 << 30,
        memory_percent: 37.5,
        swap_used_bytes: 0,
        swap_total_bytes: 1 << 30,
        disks: vec![
            DiskUsage {
                mount: "/".into(),
                used_bytes: 20 << 30,
                total_bytes: 100 << 30,
                percent: 20.0,
            },
            DiskUsage {
                mount: "/var".into(),
                used_bytes: 5 << 30,
                total_bytes: 50 << 30,
                percent: 10.0,
            },
        ],
        disk_read_bytes: 4096,
        disk_write_bytes: 8192,
        load_1: 0.5,
        load_5: 0.4,
        load_15: 0.3,
        uptime_seconds: 86_400,
        net_rx_bytes: 1_000,
        net_tx_bytes: 2_000,
        interfaces: vec![NetInterface {
            name: "eth0".into(),
            rx_bytes: 1_000,
            tx_bytes: 2_000,
        }],
        process_count: 123,
        services: vec![ServiceStatus {
            name: "sshd".into(),
            status: "running".into(),
            pid: Some(812),
        }],
        security: Some(SecurityPosture {
            firewall_enabled: Some(true),
            pending_updates: Some(3),
            pending_security_updates: None,
        }),
        custom: HashMap::from([("queue_depth".to_owned(), 7.0)]),
    }
}

/// A heartbeat.
pub fn heartbeat(tenant: &str, agent: &str, occurred_at: i64, sequence: i64) -> Heartbeat {
    Heartbeat {
        event_id: crate::ids::v7_at(occurred_at, &[agent, "heartbeat"]).to_string(),
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        occurred_at,
        ingested_at: occurred_at + 1_000,
        agent_version: "0.1.0".into(),
        uptime_seconds: 3_600,
        sequence,
    }
}

/// An agent event.
pub fn agent_event(tenant: &str, agent: &str, occurred_at: i64) -> AgentEvent {
    AgentEvent {
        event_id: crate::ids::v7_at(occurred_at, &[agent, "event"]).to_string(),
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        occurred_at,
        ingested_at: occurred_at + 1_000,
        kind: "service_crashed".into(),
        severity: EventSeverity::Warning,
        message: "nginx exited with status 1".into(),
        attributes: HashMap::from([("service".to_owned(), "nginx".to_owned())]),
    }
}

/// An AlertRaised event.
pub fn alert_raised(tenant: &str, agent: &str, occurred_at: i64) -> AlertEvent {
    let alert_id = crate::ids::v5(&["rule-cpu", agent, "", &occurred_at.to_string()]).to_string();
    AlertEvent {
        event_id: crate::ids::v5(&[&alert_id, "RAISED"]).to_string(),
        alert_id,
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        kind: AlertEventKind::Raised,
        rule_id: "rule-cpu".into(),
        rule_name: "CPU high".into(),
        metric: "cpu.percent".into(),
        subject: None,
        severity: AlertSeverity::Critical,
        operator: ">".into(),
        threshold: 90.0,
        value: 97.0,
        message: "cpu.percent 97 > 90".into(),
        actor: None,
        occurred_at,
        ingested_at: occurred_at + 2_000,
    }
}

/// An AgentRegistered event.
pub fn agent_registered(tenant: &str, agent: &str, occurred_at: i64) -> AgentLifecycle {
    AgentLifecycle {
        event_id: crate::ids::v5(&[agent, "REGISTERED", &occurred_at.to_string()]).to_string(),
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        kind: AgentLifecycleKind::Registered,
        location_id: Some("loc-1".into()),
        device_name: None,
        facts: Some(AgentFacts {
            hostname: "web-1".into(),
            os_type: "linux".into(),
            os_version: "Debian GNU/Linux 12".into(),
            kernel_version: "6.1.0".into(),
            architecture: "x86_64".into(),
            ip_addresses: vec!["10.0.0.5".into()],
            mac_addresses: vec!["02:00:00:00:00:01".into()],
            cpu_model: "Xeon".into(),
            cpu_cores: 2,
            memory_total_bytes: 8 << 30,
            disk_total_bytes: 100 << 30,
            agent_version: "0.1.0".into(),
        }),
        actor: None,
        reason: None,
        tags: None,
        occurred_at,
        ingested_at: occurred_at + 1_000,
    }
}

/// A CommandCompleted event.
pub fn command_completed(tenant: &str, agent: &str, occurred_at: i64) -> CommandEvent {
    let command_id = crate::ids::v5(&[agent, "restart nginx"]).to_string();
    CommandEvent {
        event_id: crate::ids::v5(&[&command_id, "COMPLETED", "0"]).to_string(),
        command_id,
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        kind: CommandEventKind::Completed,
        command_type: "restart_service".into(),
        args: HashMap::from([("service".to_owned(), "nginx".to_owned())]),
        requires_approval: false,
        timeout_secs: 60,
        actor: None,
        sequence: 0,
        stream: None,
        chunk: None,
        status: Some("succeeded".into()),
        exit_code: Some(0),
        stdout: Some("restarted\n".into()),
        stderr: Some(String::new()),
        output_truncated: false,
        message: None,
        started_at: Some(occurred_at - 2_000_000),
        finished_at: Some(occurred_at),
        occurred_at,
        ingested_at: occurred_at + 1_000,
    }
}

/// A software inventory of three packages.
pub fn software_inventory(tenant: &str, agent: &str, occurred_at: i64) -> SoftwareInventory {
    SoftwareInventory {
        event_id: crate::ids::v5(&[agent, "inventory", "d1"]).to_string(),
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        occurred_at,
        ingested_at: occurred_at + 1_000,
        source: "dpkg".into(),
        digest: "d1".into(),
        packages: vec![
            SoftwarePackage {
                name: "bash".into(),
                version: "5.2.15-2+b7".into(),
                arch: Some("amd64".into()),
            },
            SoftwarePackage {
                name: "nginx".into(),
                version: "1.22.1-9".into(),
                arch: Some("amd64".into()),
            },
            SoftwarePackage {
                name: "tzdata".into(),
                version: "2024a-0+deb12u1".into(),
                arch: None,
            },
        ],
    }
}

/// A TicketRequested event for [`alert_raised`].
pub fn ticket_requested(tenant: &str, agent: &str, occurred_at: i64) -> TicketEvent {
    let alert = alert_raised(tenant, agent, occurred_at);
    let ticket_id = crate::ids::v5(&[&alert.alert_id, "ticket"]).to_string();
    TicketEvent {
        event_id: crate::ids::v5(&[&ticket_id, "REQUESTED", "open"]).to_string(),
        ticket_id,
        alert_id: alert.alert_id,
        tenant_id: tenant.into(),
        agent_id: agent.into(),
        kind: TicketEventKind::Requested,
        status: "open".into(),
        priority: "P1".into(),
        severity: TicketSeverity::Critical,
        title: "CPU high on web-1".into(),
        description: "cpu.percent 97 > 90 on agent web-1 (tenant Acme, location HQ)".into(),
        location_id: Some("loc-1".into()),
        rule_id: alert.rule_id,
        metric: alert.metric,
        subject: None,
        value: 97.0,
        threshold: 90.0,
        actor: None,
        occurred_at,
        ingested_at: occurred_at + 3_000,
    }
}

/// A rule: CPU warning above 80, critical above 95, for 5 minutes, recovery below 70.
pub fn rule_definition() -> RuleDefinition {
    RuleDefinition {
        name: "CPU high".into(),
        scope: RuleScope::Tenant,
        scope_value: None,
        metric: "cpu.percent".into(),
        subject: None,
        operator: ">".into(),
        warning: Some(80.0),
        critical: Some(95.0),
        recovery: Some(70.0),
        for_secs: 300,
        renotify_secs: 3_600,
        enabled: true,
    }
}

/// A RuleDefined event carrying [`rule_definition`].
pub fn rule_defined(tenant: &str, rule_id: &str, occurred_at: i64) -> RuleEvent {
    RuleEvent {
        event_id: crate::ids::v7_at(occurred_at, &[rule_id, "DEFINED"]).to_string(),
        rule_id: rule_id.into(),
        tenant_id: tenant.into(),
        kind: RuleEventKind::Defined,
        rule: Some(rule_definition()),
        actor: Some("admin".into()),
        occurred_at,
        ingested_at: occurred_at + 1_000,
    }
}

/// A dead letter: the read model gave up on garbage at `fleet.metrics.v1` partition 2,
/// offset 41.
pub fn dead_letter(consumer: &str, occurred_at: i64) -> DeadLetter {
    DeadLetter {
        event_id: DeadLetter::failure_id(consumer, crate::topics::METRICS, 2, 41),
        kind: DeadLetterKind::Decode,
        reason: "not an Avro single-object record: expected marker C3 01, got [67, 61]".into(),
        consumer: consumer.into(),
        group: format!("fleet-{consumer}"),
        tenant_id: None,
        source_topic: crate::topics::METRICS.into(),
        source_partition: 2,
        source_offset: 41,
        source_key: Some(AvroBytes(b"agent-1".to_vec())),
        source_timestamp: occurred_at.div_euclid(1000) - 5,
        value: AvroBytes(vec![0x67, 0x61, 0x72, 0x62, 0x00, 0xff, 0xc3]),
        replayed_partition: None,
        replayed_offset: None,
        occurred_at,
    }
}
