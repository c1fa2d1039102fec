//! Sample records for tests, benches and interop checks.
//!
//! [`metric_report`] is one constant report; [`fleet_reports`] is a deterministic fleet
//! of agents reporting believable, varying values over time (the data the time-series
//! benches of every crate share).

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
            reboot_required: Some(true),
            ssh_permit_root_login: Some("prohibit-password".into()),
            ssh_password_authentication: Some(false),
            antivirus_present: Some(true),
            antivirus_signature_age_hours: Some(26.5),
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
        heartbeat_interval_secs: None,
        config_version: None,
    }
}

/// A desired remote configuration of one agent.
pub fn remote_config(tenant: &str, agent: &str, occurred_at: i64) -> RemoteConfigEvent {
    RemoteConfigEvent {
        event_id: crate::ids::v7_at(occurred_at, &[agent, "config"]).to_string(),
        config_key: RemoteConfigEvent::key_for(tenant, ConfigScope::Agent, agent),
        tenant_id: tenant.into(),
        scope: ConfigScope::Agent,
        target: agent.into(),
        version: occurred_at,
        heartbeat_interval_secs: Some(15.0),
        metrics_interval_secs: Some(5.0),
        services: Some(vec!["nginx.service".into()]),
        textfile_dir: None,
        allowed_commands: Some(vec!["restart_service".into()]),
        actor: Some("ops@example.com".into()),
        occurred_at,
        ingested_at: occurred_at + 1_000,
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
        group_id: None,
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
        labels: None,
        event: None,
    }
}

/// An event rule: `service_failed` of service `nginx` raises a critical alert per service,
/// `service_recovered` resolves it, or an hour without another failure.
pub fn event_rule_definition() -> RuleDefinition {
    RuleDefinition {
        name: "nginx failed".into(),
        scope: RuleScope::Tenant,
        scope_value: None,
        metric: "event.service_failed".into(),
        subject: None,
        operator: ">=".into(),
        warning: None,
        critical: Some(1.0),
        recovery: None,
        for_secs: 0,
        renotify_secs: 0,
        enabled: true,
        labels: None,
        event: Some(crate::records::EventRule {
            kind: "service_failed".into(),
            attributes: [("service".to_owned(), "nginx".to_owned())].into(),
            min_severity: Some("warning".into()),
            subject_attribute: Some("service".into()),
            recovery_kinds: vec!["service_recovered".into()],
            resolve_after_secs: Some(3_600),
        }),
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

/// A batch of three remote-write samples of two series (one a NaN staleness marker).
pub fn sample_batch(tenant: &str, received_at: i64) -> SampleBatch {
    let label = |name: &str, value: &str| Label {
        name: name.into(),
        value: value.into(),
    };
    let node = vec![label("instance", "web-1:9100"), label("job", "node")];
    SampleBatch {
        event_id: crate::ids::v5(&[tenant, "samples", &received_at.to_string()]).to_string(),
        tenant_id: tenant.into(),
        partition_key: SampleBatch::key_for(tenant, 3),
        source: SampleSource::PrometheusRemoteWrite,
        received_at,
        samples: vec![
            LabeledSample {
                metric: "node_load1".into(),
                labels: node.clone(),
                timestamp: received_at - 15_000_000,
                value: 0.25,
            },
            LabeledSample {
                metric: "node_load1".into(),
                labels: node.clone(),
                timestamp: received_at,
                value: 0.5,
            },
            LabeledSample {
                metric: "node_cpu_seconds_total".into(),
                labels: vec![
                    label("cpu", "0"),
                    label("instance", "web-1:9100"),
                    label("job", "node"),
                    label("mode", "idle"),
                ],
                timestamp: received_at,
                value: 12_345.5,
            },
        ],
    }
}

/// [`sample_batch`] of a Telegraf-like host: every sample labelled `host="db-1"` alone.
pub fn host_sample_batch(tenant: &str, received_at: i64) -> SampleBatch {
    let mut b = sample_batch(tenant, received_at);
    for s in &mut b.samples {
        s.labels = vec![Label {
            name: "host".into(),
            value: "db-1".into(),
        }];
    }
    b
}

/// A sample of `metric` with labels `pairs` (given sorted by name).
pub fn labeled_sample(
    metric: &str,
    pairs: &[(&str, &str)],
    timestamp: i64,
    value: f64,
) -> LabeledSample {
    LabeledSample {
        metric: metric.into(),
        labels: pairs
            .iter()
            .map(|(n, v)| Label {
                name: (*n).into(),
                value: (*v).into(),
            })
            .collect(),
        timestamp,
        value,
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

/// A small, fast, deterministic pseudo-random generator (SplitMix64). Fixtures and tests
/// use it instead of `rand` so that a seed gives the same values with every version of
/// every dependency, on every machine: it uses integer arithmetic and, for floats, only
/// `+`, `-`, `*` and `/` (which IEEE 754 rounds the same everywhere), never a libm
/// function.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[0, n)`; 0 when `n` is 0.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            // Multiply-shift: unbiased enough for fixtures, and branch-free.
            ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
        }
    }

    /// Uniform in `[lo, hi]` (inclusive); `lo` when `hi < lo`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi as i128 - lo as i128 + 1) as u128;
        let pick = if span > u128::from(u64::MAX) {
            u128::from(self.next_u64())
        } else {
            u128::from(self.below(span as u64))
        };
        (lo as i128 + pick as i128) as i64
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.next_f64() < p
    }

    /// Roughly normal with mean 0 and standard deviation `sd` (Irwin-Hall: the sum of
    /// four uniforms, so no libm call and bounded tails at ±3.5 sd).
    pub fn normal(&mut self, sd: f64) -> f64 {
        let s = self.next_f64() + self.next_f64() + self.next_f64() + self.next_f64();
        // The sum has mean 2 and variance 4/12.
        (s - 2.0) * sd * 1.732_050_807_568_877_2
    }

    /// One element of a non-empty slice.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// Rounds to 2 decimals the way the agent does (`(v * 100).round() / 100`).
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `part / whole` as a percentage with 2 decimals, as the agent computes it.
fn ratio_percent(part: i64, whole: i64) -> f64 {
    if whole <= 0 {
        0.0
    } else {
        round2((part as f64 / whole as f64 * 100.0).clamp(0.0, 100.0))
    }
}

const KIB: i64 = 1 << 10;
const GIB: i64 = 1 << 30;
/// Largest clock jitter of an agent's collection time, µs (the agent ticks on a fixed
/// grid; scheduling delays move each tick by a few milliseconds).
const JITTER_MICROS: i64 = 3_000;

/// One simulated machine of [`fleet_reports`].
#[derive(Debug, Clone)]
struct SimAgent {
    rng: SplitMix64,
    tenant: String,
    agent: String,
    /// Offset of this agent's collection grid inside the interval, µs.
    phase: i64,
    cores: usize,
    cpu_base: f64,
    cpu: f64,
    memory_total: i64,
    memory_used: i64,
    swap_total: i64,
    swap_used: i64,
    /// (mount, total, used); a removable mount is only reported part of the time.
    disks: Vec<(String, i64, i64)>,
    removable: Option<(String, i64, i64)>,
    disk_write_rate: i64,
    net_rate: i64,
    load: [f64; 3],
    uptime: i64,
    processes: i32,
    /// (name, intervals left in a failed state).
    services: Vec<(String, u32)>,
    queue_depth: Option<f64>,
}

impl SimAgent {
    fn new(seed: u64, index: usize, tenant: &str, interval_micros: i64) -> SimAgent {
        // Each agent has its own stream: its values do not depend on the fleet size.
        let mut rng = SplitMix64::new(seed ^ (index as u64).wrapping_mul(0xA24B_AED4_963E_E407));
        let jitter = JITTER_MICROS.min(interval_micros / 4);
        let phase = rng.range(jitter, interval_micros - jitter - 1);
        // Cloud machines mostly have a power of two of cores, bare metal often not.
        let cores = *rng.pick(&[1usize, 2, 2, 4, 4, 4, 8, 8, 16, 6, 12, 24]);
        let memory_total = *rng.pick(&[2i64, 4, 8, 8, 16, 16, 32, 64]) * GIB;
        let memory_used = memory_total / 100 * rng.range(15, 70) / KIB * KIB;
        let swap_total = *rng.pick(&[0i64, GIB, 2 * GIB, 4 * GIB]);
        let swap_used = if swap_total > 0 && rng.chance(0.4) {
            rng.range(0, swap_total / 8) / KIB * KIB
        } else {
            0
        };
        let mut disks = vec![{
            let total = *rng.pick(&[20i64, 50, 100, 250, 500]) * GIB;
            (
                "/".to_owned(),
                total,
                total / 100 * rng.range(10, 80) / 4096 * 4096,
            )
        }];
        for mount in ["/var", "/data"] {
            if rng.chance(if mount == "/var" { 0.7 } else { 0.3 }) {
                let total = *rng.pick(&[50i64, 100, 500, 1000, 2000]) * GIB;
                disks.push((
                    mount.to_owned(),
                    total,
                    total / 100 * rng.range(5, 90) / 4096 * 4096,
                ));
            }
        }
        let removable = rng.chance(0.05).then(|| {
            let total = 1000 * GIB;
            (
                "/mnt/backup".to_owned(),
                total,
                total / 100 * rng.range(20, 60) / 4096 * 4096,
            )
        });
        let cpu_base = rng.range(200, 6_000) as f64 / 100.0;
        let load_base = cpu_base / 100.0 * cores as f64;
        let mut services = vec![(
            rng.pick(&["sshd", "nginx", "postgresql", "docker", "cron"])
                .to_string(),
            0,
        )];
        if rng.chance(0.5) {
            let second = rng
                .pick(&["node-exporter", "redis", "containerd"])
                .to_string();
            services.push((second, 0));
        }
        let queue_depth = rng.chance(0.1).then(|| rng.range(0, 50) as f64);
        SimAgent {
            tenant: tenant.to_owned(),
            agent: crate::ids::v5(&["fixture-agent", &seed.to_string(), &index.to_string()])
                .to_string(),
            phase,
            cores,
            cpu_base,
            cpu: cpu_base,
            memory_total,
            memory_used,
            swap_total,
            swap_used,
            disks,
            removable,
            disk_write_rate: rng.range(2, 400) * KIB,
            net_rate: rng.range(1, 2_000) * KIB,
            load: [round2(load_base), round2(load_base), round2(load_base)],
            uptime: rng.range(600, 200 * 86_400),
            processes: rng.range(90, 400) as i32,
            services,
            queue_depth,
            rng,
        }
    }

    /// Collection time of report `k` (µs): this agent's grid point plus jitter.
    fn time_of(&mut self, start_micros: i64, interval_micros: i64, k: i64) -> i64 {
        let jitter = JITTER_MICROS.min(interval_micros / 4);
        start_micros
            .saturating_add(interval_micros.saturating_mul(k))
            .saturating_add(self.phase)
            .saturating_add(self.rng.range(-jitter, jitter))
    }

    /// Advances the machine by one interval and reports it at `occurred_at`.
    fn report(&mut self, k: i64, occurred_at: i64, interval_micros: i64) -> MetricReport {
        let rng = &mut self.rng;
        let secs = (interval_micros / 1_000_000).max(1);

        // CPU: a mean-reverting random walk, 2 decimals as the agent rounds it.
        self.cpu =
            (self.cpu + (self.cpu_base - self.cpu) * 0.2 + rng.normal(4.0)).clamp(0.0, 100.0);
        let cpu_percent = round2(self.cpu);
        let cpu_per_core = (0..self.cores)
            .map(|_| round2((self.cpu + rng.normal(6.0)).clamp(0.0, 100.0)))
            .collect();

        // Memory moves by a few MiB, in KiB as /proc/meminfo reports it.
        let step = rng.normal(4.0 * 1024.0) as i64 * KIB;
        self.memory_used =
            (self.memory_used + step).clamp(self.memory_total / 20, self.memory_total);
        if self.swap_total > 0 && rng.chance(0.02) {
            self.swap_used =
                (self.swap_used + rng.range(-256, 512) * 4 * KIB).clamp(0, self.swap_total);
        }

        // Disks fill slowly (4 KiB blocks); log rotation frees space now and then.
        for (_, total, used) in self.disks.iter_mut().chain(self.removable.iter_mut()) {
            let grow = rng.range(0, 64) * 4096;
            let freed = if rng.chance(0.002) {
                rng.range(1, 50_000) * 4096
            } else {
                0
            };
            *used = (*used + grow - freed).clamp(0, *total);
        }
        // The backup disk is mounted for a third of every hour.
        let backup_mounted = (occurred_at.div_euclid(1_200_000_000)) % 3 == 0;

        // Disk I/O in 512-byte sectors; reads are often served from the cache.
        let disk_read_bytes = if rng.chance(0.4) {
            0
        } else {
            rng.range(1, 2_000) * 512 * secs
        };
        let disk_write_bytes = (self.disk_write_rate * secs / 512 + rng.range(0, 800)) * 512;

        // Load averages: exponentially damped, 2 decimals as in /proc/loadavg.
        let running = (self.cpu / 100.0 * self.cores as f64 + rng.normal(0.5)).max(0.0);
        self.load[0] = self.load[0] * 0.85 + running * 0.15;
        self.load[1] = self.load[1] * 0.967 + self.load[0] * 0.033;
        self.load[2] = self.load[2] * 0.989 + self.load[1] * 0.011;
        let [load_1, load_5, load_15] = self.load.map(round2);

        self.uptime += secs;
        let net_rx_bytes = (self.net_rate * secs) / 2 + rng.range(0, self.net_rate * secs);
        let net_tx_bytes = (self.net_rate * secs) / 4 + rng.range(0, self.net_rate * secs / 2);
        self.processes = (self.processes + rng.range(-2, 2) as i32).clamp(50, 2_000);

        for (_, failed) in self.services.iter_mut() {
            if *failed > 0 {
                *failed -= 1;
            } else if rng.chance(0.0005) {
                *failed = rng.range(1, 30) as u32;
            }
        }
        if let Some(q) = self.queue_depth.as_mut() {
            *q = (*q + rng.range(-3, 3) as f64).max(0.0);
        }

        let mut disks: Vec<DiskUsage> = self
            .disks
            .iter()
            .map(|(mount, total, used)| DiskUsage {
                mount: mount.clone(),
                used_bytes: *used,
                total_bytes: *total,
                percent: ratio_percent(*used, *total),
            })
            .collect();
        if let Some((mount, total, used)) = self.removable.as_ref().filter(|_| backup_mounted) {
            disks.push(DiskUsage {
                mount: mount.clone(),
                used_bytes: *used,
                total_bytes: *total,
                percent: ratio_percent(*used, *total),
            });
        }
        MetricReport {
            event_id: crate::ids::v7_at(occurred_at, &[&self.agent, "metrics", &k.to_string()])
                .to_string(),
            tenant_id: self.tenant.clone(),
            agent_id: self.agent.clone(),
            occurred_at,
            ingested_at: occurred_at + self.rng.range(800, 40_000),
            cpu_percent,
            cpu_per_core,
            memory_used_bytes: self.memory_used,
            memory_total_bytes: self.memory_total,
            memory_percent: ratio_percent(self.memory_used, self.memory_total),
            swap_used_bytes: self.swap_used,
            swap_total_bytes: self.swap_total,
            disks,
            disk_read_bytes,
            disk_write_bytes,
            load_1,
            load_5,
            load_15,
            uptime_seconds: self.uptime,
            net_rx_bytes,
            net_tx_bytes,
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                rx_bytes: net_rx_bytes,
                tx_bytes: net_tx_bytes,
            }],
            process_count: self.processes,
            services: self
                .services
                .iter()
                .map(|(name, failed)| ServiceStatus {
                    name: name.clone(),
                    status: if *failed > 0 { "failed" } else { "running" }.into(),
                    pid: (*failed == 0).then_some(1_000 + name.len() as i32),
                })
                .collect(),
            security: Some(SecurityPosture {
                firewall_enabled: Some(true),
                pending_updates: Some(3),
                pending_security_updates: Some(0),
                ..SecurityPosture::default()
            }),
            custom: self
                .queue_depth
                .map(|q| HashMap::from([("queue_depth".to_owned(), q)]))
                .unwrap_or_default(),
        }
    }
}

/// A live fleet: `agents` machines of one tenant, each reporting every `interval_micros`
/// from `start_micros` on, `count_per_agent` reports each, yielded in time order across
/// agents (by `occurred_at`, as the gateway would see them).
///
/// The values are believable and vary: CPU as a mean-reverting random walk with 2
/// decimals (and per-core values around it), memory in KiB that drifts by a few MiB,
/// disks that fill slowly in 4 KiB blocks (and sometimes free space; 5% of the agents
/// have a backup disk mounted for a third of every hour, so its series has gaps),
/// percentages and load averages with 2 decimals, uptime growing by the interval, disk
/// I/O in 512-byte sectors and network bytes per interval as random integers, a process
/// count, one or two services that fail now and then, and collection times on each
/// agent's own grid with ±3 ms of jitter (µs precision), like the agent's ticker.
/// Core counts, memory and disk sizes differ per agent. The same seed gives the same
/// reports on every machine; an agent's reports do not depend on how many agents there
/// are. Turn a report into named samples with [`crate::samples::samples`].
pub fn fleet_reports(
    seed: u64,
    agents: usize,
    start_micros: i64,
    interval_micros: i64,
    count_per_agent: usize,
) -> impl Iterator<Item = MetricReport> {
    let interval_micros = interval_micros.max(4);
    let tenant = crate::ids::v5(&["fixture-tenant", &seed.to_string()]).to_string();
    let mut sims: Vec<SimAgent> = (0..agents)
        .map(|i| SimAgent::new(seed, i, &tenant, interval_micros))
        .collect();
    let mut round: Vec<(i64, usize)> = Vec::with_capacity(agents);
    let mut k = 0usize;
    let mut next = 0usize;
    std::iter::from_fn(move || {
        if next == round.len() {
            if k >= count_per_agent || sims.is_empty() {
                return None;
            }
            // The phases keep every round inside its interval, so sorting each round
            // orders the whole stream.
            round.clear();
            for (i, sim) in sims.iter_mut().enumerate() {
                round.push((sim.time_of(start_micros, interval_micros, k as i64), i));
            }
            round.sort_unstable();
            k += 1;
            next = 0;
        }
        let (at, i) = round[next];
        next += 1;
        Some(sims[i].report(k as i64 - 1, at, interval_micros))
    })
}

/// A record as an apache-avro value with every double and float replaced by its bits, so
/// `==` compares NaN payloads and -0.0 exactly, and maps regardless of order (for tests
/// and fuzz targets comparing records).
pub fn comparable<T: serde::Serialize>(v: &T) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    fn canon(v: Value) -> Value {
        match v {
            Value::Double(d) => Value::String(format!("f64 {:016x}", d.to_bits())),
            Value::Float(f) => Value::String(format!("f32 {:08x}", f.to_bits())),
            Value::Record(fields) => {
                Value::Record(fields.into_iter().map(|(n, v)| (n, canon(v))).collect())
            }
            Value::Array(items) => Value::Array(items.into_iter().map(canon).collect()),
            Value::Map(m) => Value::Map(m.into_iter().map(|(k, v)| (k, canon(v))).collect()),
            Value::Union(i, v) => Value::Union(i, Box::new(canon(*v))),
            other => other,
        }
    }
    canon(apache_avro::to_value(v).expect("records convert to Avro values"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::samples::samples;

    #[test]
    fn fleet_reports_are_deterministic_ordered_and_believable() {
        let a: Vec<_> = fleet_reports(7, 30, 1_700_000_000_000_000, 10_000_000, 50).collect();
        let b: Vec<_> = fleet_reports(7, 30, 1_700_000_000_000_000, 10_000_000, 50).collect();
        assert_eq!(a, b);
        assert_eq!(a.len(), 30 * 50);
        assert!(a.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at));
        let other: Vec<_> = fleet_reports(8, 30, 1_700_000_000_000_000, 10_000_000, 50).collect();
        assert_ne!(a, other);

        let agents: std::collections::BTreeSet<_> = a.iter().map(|r| &r.agent_id).collect();
        assert_eq!(agents.len(), 30);
        for r in &a {
            assert!((0.0..=100.0).contains(&r.cpu_percent));
            assert_eq!(round2(r.cpu_percent), r.cpu_percent);
            assert_eq!(round2(r.load_1), r.load_1);
            assert_eq!(r.memory_used_bytes % KIB, 0);
            assert!(r.memory_used_bytes <= r.memory_total_bytes);
            assert_eq!(r.disk_read_bytes % 512, 0);
            assert!(!r.disks.is_empty() && !r.services.is_empty());
            let n = samples(r).len();
            assert!((17..=26).contains(&n), "{n} samples");
        }
        // Uptime grows by the interval; values change over time.
        let first: Vec<_> = a.iter().filter(|r| r.agent_id == a[0].agent_id).collect();
        assert!(first
            .windows(2)
            .all(|w| w[1].uptime_seconds == w[0].uptime_seconds + 10));
        let cpus: std::collections::BTreeSet<_> =
            first.iter().map(|r| r.cpu_percent.to_bits()).collect();
        assert!(cpus.len() > 10);
        // Collection times sit on the agent's grid within the jitter.
        let grid = first[0].occurred_at;
        for (k, r) in first.iter().enumerate() {
            let off = r.occurred_at - grid - 10_000_000 * k as i64;
            assert!(off.abs() <= 2 * JITTER_MICROS, "offset {off}");
        }
    }

    #[test]
    fn an_agent_does_not_depend_on_the_fleet_size() {
        let small: Vec<_> = fleet_reports(3, 2, 0, 10_000_000, 20).collect();
        let large: Vec<_> = fleet_reports(3, 9, 0, 10_000_000, 20).collect();
        let of = |v: &[MetricReport], id: &str| -> Vec<MetricReport> {
            v.iter().filter(|r| r.agent_id == id).cloned().collect()
        };
        let id = small[0].agent_id.clone();
        assert_eq!(of(&small, &id), of(&large, &id));
    }

    #[test]
    fn splitmix_is_stable() {
        // Reference values of SplitMix64 for seed 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        for _ in 0..1000 {
            let v = r.range(-5, 5);
            assert!((-5..=5).contains(&v));
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
    }
}
