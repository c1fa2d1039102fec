//! Validation of what agents send: pure functions, no I/O.

use std::collections::HashMap;

use fleet_schemas::api::{
    EventIn, HeartbeatIn, ReportIn, SecurityIn, MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS,
    SSH_PERMIT_ROOT_LOGIN_VALUES,
};
use fleet_schemas::{
    ids, AgentEvent, DiskUsage, EventSeverity, Heartbeat, MetricReport, NetInterface,
    SecurityPosture, ServiceStatus,
};
use fleet_service::ApiError;

use crate::GatewayConfig;

/// Most per-core values in one report.
pub const MAX_CORES: usize = 4096;
/// Longest name (mount, service, interface, custom metric), bytes.
pub const MAX_NAME_LEN: usize = 512;
const SERVICE_STATES: &[&str] = &["running", "stopped", "failed", "unknown"];

/// Limits what agents send must respect: times, and list lengths of a report.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Microseconds a report may be ahead of the gateway's clock.
    pub max_future_micros: i64,
    /// Microseconds a report may be behind it.
    pub max_age_micros: i64,
    /// Most disks in one report.
    pub max_disks: usize,
    /// Most interfaces in one report.
    pub max_interfaces: usize,
    /// Most services in one report.
    pub max_services: usize,
    /// Most custom metrics in one report.
    pub max_custom: usize,
}

impl Limits {
    /// From the gateway configuration.
    pub fn from_config(cfg: &GatewayConfig) -> Limits {
        let s = &cfg.subjects;
        Limits {
            max_future_micros: fleet_schemas::time::duration_micros(cfg.max_future_skew),
            max_age_micros: fleet_schemas::time::duration_micros(cfg.max_age),
            max_disks: s.max_disks_per_report,
            max_interfaces: s.max_interfaces_per_report,
            max_services: s.max_services_per_report,
            max_custom: s.max_custom_per_report,
        }
    }
}

/// Agent ids: 1 to 128 characters of `A-Z a-z 0-9 . _ -`.
pub fn agent_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            "agent_id",
            "agent id must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}

/// A batch (`list` names its field) must have 1..=max items.
pub fn batch_len(list: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if len == 0 {
        return Err(ApiError::invalid_field(list, "the batch is empty"));
    }
    if len > max {
        return Err(ApiError::invalid_field(
            list,
            format!("{len} items in one batch, at most {max}"),
        ));
    }
    Ok(())
}

type FieldError = (String, String);

/// A field path written only when a value is refused: reports are validated by the
/// million, and formatting each field's path up front cost a tenth of the gateway's time.
#[derive(Clone, Copy)]
enum Path<'a> {
    /// `list[index]`
    Item(&'static str, usize),
    /// `list[index].key`
    ItemField(&'static str, usize, &'static str),
    /// `map.key`
    Key(&'static str, &'a str),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Item(list, i) => write!(f, "{list}[{i}]"),
            Path::ItemField(list, i, key) => write!(f, "{list}[{i}].{key}"),
            Path::Key(map, key) => write!(f, "{map}.{key}"),
        }
    }
}

fn err(field: impl std::fmt::Display, message: impl Into<String>) -> FieldError {
    (field.to_string(), message.into())
}

fn percent(field: impl std::fmt::Display, v: f64) -> Result<f64, FieldError> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(err(
            field,
            format!("must be a percentage between 0 and 100, got {v}"),
        ))
    }
}

fn non_negative(field: impl std::fmt::Display, v: f64) -> Result<f64, FieldError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(err(field, format!("must be a finite number >= 0, got {v}")))
    }
}

fn long(field: impl std::fmt::Display, v: u64) -> Result<i64, FieldError> {
    i64::try_from(v).map_err(|_| err(field, format!("{v} is larger than {}", i64::MAX)))
}

fn int(field: impl std::fmt::Display, v: u32) -> Result<i32, FieldError> {
    i32::try_from(v).map_err(|_| err(field, format!("{v} is larger than {}", i32::MAX)))
}

fn name(field: impl std::fmt::Display, v: &str) -> Result<String, FieldError> {
    if v.is_empty() || v.len() > MAX_NAME_LEN || v.chars().any(char::is_control) {
        return Err(err(
            field,
            format!("must be 1 to {MAX_NAME_LEN} bytes without control characters"),
        ));
    }
    Ok(v.to_owned())
}

fn at_most(field: impl std::fmt::Display, len: usize, max: usize) -> Result<(), FieldError> {
    if len > max {
        return Err(err(field, format!("{len} entries, at most {max}")));
    }
    Ok(())
}

/// Validates one report and converts it to the record written to the log. On error
/// returns (field path within the report, reason).
pub fn report(
    tenant_id: &str,
    agent_id: &str,
    r: &ReportIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<MetricReport, FieldError> {
    let occurred_at = r.collected_at.timestamp_micros();
    if occurred_at > now_micros.saturating_add(limits.max_future_micros) {
        return Err(err(
            "collected_at",
            "is in the future beyond the allowed clock skew; check the agent's clock",
        ));
    }
    if occurred_at < now_micros.saturating_sub(limits.max_age_micros) {
        return Err(err(
            "collected_at",
            "is older than the retention window accepted by this gateway",
        ));
    }
    let cpu_percent = percent("cpu_percent", r.cpu_percent)?;
    at_most("cpu_per_core", r.cpu_per_core.len(), MAX_CORES)?;
    let cpu_per_core = r
        .cpu_per_core
        .iter()
        .enumerate()
        .map(|(i, v)| percent(Path::Item("cpu_per_core", i), *v))
        .collect::<Result<Vec<_>, _>>()?;
    let memory_used_bytes = long("memory_used_bytes", r.memory_used_bytes)?;
    let memory_total_bytes = long("memory_total_bytes", r.memory_total_bytes)?;
    if r.memory_used_bytes > r.memory_total_bytes {
        return Err(err(
            "memory_used_bytes",
            "is larger than memory_total_bytes",
        ));
    }
    let memory_percent = percent("memory_percent", r.memory_percent)?;
    at_most("disks", r.disks.len(), limits.max_disks)?;
    let mut disks = Vec::with_capacity(r.disks.len());
    for (i, d) in r.disks.iter().enumerate() {
        let f = |k| Path::ItemField("disks", i, k);
        if d.used_bytes > d.total_bytes {
            return Err(err(f("used_bytes"), "is larger than total_bytes"));
        }
        disks.push(DiskUsage {
            mount: name(f("mount"), &d.mount)?,
            used_bytes: long(f("used_bytes"), d.used_bytes)?,
            total_bytes: long(f("total_bytes"), d.total_bytes)?,
            percent: percent(f("percent"), d.percent)?,
        });
    }
    at_most("interfaces", r.interfaces.len(), limits.max_interfaces)?;
    let mut interfaces = Vec::with_capacity(r.interfaces.len());
    for (i, n) in r.interfaces.iter().enumerate() {
        let f = |k| Path::ItemField("interfaces", i, k);
        interfaces.push(NetInterface {
            name: name(f("name"), &n.name)?,
            rx_bytes: long(f("rx_bytes"), n.rx_bytes)?,
            tx_bytes: long(f("tx_bytes"), n.tx_bytes)?,
        });
    }
    at_most("services", r.services.len(), limits.max_services)?;
    let mut services = Vec::with_capacity(r.services.len());
    for (i, s) in r.services.iter().enumerate() {
        let f = |k| Path::ItemField("services", i, k);
        if !SERVICE_STATES.contains(&s.status.as_str()) {
            return Err(err(
                f("status"),
                format!("must be one of {}", SERVICE_STATES.join(", ")),
            ));
        }
        services.push(ServiceStatus {
            name: name(f("name"), &s.name)?,
            status: s.status.clone(),
            pid: s.pid.map(|p| int(f("pid"), p)).transpose()?,
        });
    }
    at_most("custom", r.custom.len(), limits.max_custom)?;
    let mut custom = HashMap::with_capacity(r.custom.len());
    for (k, v) in &r.custom {
        let f = Path::Key("custom", k);
        // `name` or `name{labels}` (see `fleet_schemas::samples`).
        fleet_schemas::samples::check_custom_key(k).map_err(|m| err(f, m))?;
        if !v.is_finite() {
            return Err(err(f, "must be a finite number"));
        }
        custom.insert(k.clone(), *v);
    }
    let security = r.security.as_ref().map(security_posture).transpose()?;
    Ok(MetricReport {
        event_id: ids::v7_at(
            occurred_at,
            &[agent_id, "metrics", &occurred_at.to_string()],
        )
        .to_string(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        occurred_at,
        ingested_at: now_micros,
        cpu_percent,
        cpu_per_core,
        memory_used_bytes,
        memory_total_bytes,
        memory_percent,
        swap_used_bytes: long("swap_used_bytes", r.swap_used_bytes)?,
        swap_total_bytes: long("swap_total_bytes", r.swap_total_bytes)?,
        disks,
        disk_read_bytes: long("disk_read_bytes", r.disk_read_bytes)?,
        disk_write_bytes: long("disk_write_bytes", r.disk_write_bytes)?,
        load_1: non_negative("load_1", r.load_1)?,
        load_5: non_negative("load_5", r.load_5)?,
        load_15: non_negative("load_15", r.load_15)?,
        uptime_seconds: long("uptime_seconds", r.uptime_seconds)?,
        net_rx_bytes: long("net_rx_bytes", r.net_rx_bytes)?,
        net_tx_bytes: long("net_tx_bytes", r.net_tx_bytes)?,
        interfaces,
        process_count: int("process_count", r.process_count)?,
        services,
        security,
        custom,
    })
}

/// The report's security posture: counts that fit the record's int, sshd's
/// `PermitRootLogin` from the values sshd knows, a signature age that is a number of hours
/// from 0 to [`MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS`].
fn security_posture(s: &SecurityIn) -> Result<SecurityPosture, FieldError> {
    let ssh_permit_root_login = match s.ssh_permit_root_login.as_deref() {
        None => None,
        Some(v) if SSH_PERMIT_ROOT_LOGIN_VALUES.contains(&v) => Some(v.to_owned()),
        Some(_) => {
            return Err(err(
                "security.ssh_permit_root_login",
                format!("must be one of {}", SSH_PERMIT_ROOT_LOGIN_VALUES.join(", ")),
            ))
        }
    };
    let age = s.antivirus_signature_age_hours;
    if age
        .is_some_and(|h| !(h.is_finite() && (0.0..=MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS).contains(&h)))
    {
        return Err(err(
            "security.antivirus_signature_age_hours",
            format!("must be hours, from 0 to {MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS}"),
        ));
    }
    Ok(SecurityPosture {
        firewall_enabled: s.firewall_enabled,
        pending_updates: s
            .pending_updates
            .map(|v| int("security.pending_updates", v))
            .transpose()?,
        pending_security_updates: s
            .pending_security_updates
            .map(|v| int("security.pending_security_updates", v))
            .transpose()?,
        reboot_required: s.reboot_required,
        ssh_permit_root_login,
        ssh_password_authentication: s.ssh_password_authentication,
        antivirus_present: s.antivirus_present,
        antivirus_signature_age_hours: age,
    })
}

fn time_in_window(
    field: &str,
    micros: i64,
    now_micros: i64,
    limits: &Limits,
) -> Result<(), FieldError> {
    if micros > now_micros.saturating_add(limits.max_future_micros) {
        return Err(err(
            field,
            "is in the future beyond the allowed clock skew; check the agent's clock",
        ));
    }
    if micros < now_micros.saturating_sub(limits.max_age_micros) {
        return Err(err(
            field,
            "is older than the retention window accepted by this gateway",
        ));
    }
    Ok(())
}

/// Longest heartbeat interval an agent may announce (one day, the agent's own bound).
pub const MAX_HEARTBEAT_INTERVAL_SECS: f64 = 86_400.0;

/// Validates a heartbeat and converts it to the record written to the log.
pub fn heartbeat(
    tenant_id: &str,
    agent_id: &str,
    h: &HeartbeatIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<Heartbeat, FieldError> {
    let occurred_at = h.sent_at.timestamp_micros();
    time_in_window("sent_at", occurred_at, now_micros, limits)?;
    let sequence = long("sequence", h.sequence)?;
    if h.agent_version.is_empty() || h.agent_version.len() > 64 {
        return Err(err("agent_version", "must be 1 to 64 bytes"));
    }
    let interval = h.heartbeat_interval_secs;
    if interval.is_some_and(|v| !(v.is_finite() && v > 0.0 && v <= MAX_HEARTBEAT_INTERVAL_SECS)) {
        return Err(err(
            "heartbeat_interval_secs",
            format!("must be seconds, more than 0 and at most {MAX_HEARTBEAT_INTERVAL_SECS}"),
        ));
    }
    if h.config_version.is_some_and(|v| v < 0) {
        return Err(err("config_version", "must be at least 0"));
    }
    Ok(Heartbeat {
        event_id: ids::v7_at(
            occurred_at,
            &[
                agent_id,
                "heartbeat",
                &sequence.to_string(),
                &occurred_at.to_string(),
            ],
        )
        .to_string(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        occurred_at,
        ingested_at: now_micros,
        agent_version: h.agent_version.clone(),
        uptime_seconds: long("uptime_seconds", h.uptime_seconds)?,
        sequence,
        heartbeat_interval_secs: interval,
        config_version: h.config_version,
    })
}

/// Most attributes on one event.
pub const MAX_ATTRIBUTES: usize = 64;
/// Longest event message, bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Validates an agent event and converts it to the record written to the log.
pub fn event(
    tenant_id: &str,
    agent_id: &str,
    e: &EventIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<AgentEvent, FieldError> {
    let occurred_at = e.occurred_at.timestamp_micros();
    time_in_window("occurred_at", occurred_at, now_micros, limits)?;
    let kind_ok = !e.kind.is_empty()
        && e.kind.len() <= 64
        && e.kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.'));
    if !kind_ok {
        return Err(err(
            "kind",
            "must be 1 to 64 characters of a-z, 0-9, '_' or '.'",
        ));
    }
    let severity = match e.severity.as_str() {
        "info" => EventSeverity::Info,
        "warning" => EventSeverity::Warning,
        "critical" => EventSeverity::Critical,
        _ => return Err(err("severity", "must be info, warning or critical")),
    };
    if e.message.len() > MAX_MESSAGE_LEN {
        return Err(err(
            "message",
            format!("longer than {MAX_MESSAGE_LEN} bytes"),
        ));
    }
    at_most("attributes", e.attributes.len(), MAX_ATTRIBUTES)?;
    let mut attributes = HashMap::with_capacity(e.attributes.len());
    for (k, v) in &e.attributes {
        let f = Path::Key("attributes", k);
        name(f, k)?;
        if v.len() > MAX_NAME_LEN {
            return Err(err(f, format!("value longer than {MAX_NAME_LEN} bytes")));
        }
        attributes.insert(k.clone(), v.clone());
    }
    Ok(AgentEvent {
        event_id: ids::v7_at(
            occurred_at,
            &[
                agent_id,
                "event",
                &e.kind,
                &occurred_at.to_string(),
                &e.message,
            ],
        )
        .to_string(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        occurred_at,
        ingested_at: now_micros,
        kind: e.kind.clone(),
        severity,
        message: e.message.clone(),
        attributes,
    })
}

/// Most packages in one inventory.
pub const MAX_PACKAGES: usize = 50_000;
/// Longest package name, version or architecture, bytes.
pub const MAX_PACKAGE_FIELD_LEN: usize = 256;
const INVENTORY_SOURCES: &[&str] = &["dpkg", "rpm", "none"];

fn package_text(
    field: impl std::fmt::Display,
    v: &str,
    allow_empty: bool,
) -> Result<(), FieldError> {
    // Tabs and newlines would make the digest's lines ambiguous.
    if (!allow_empty && v.is_empty())
        || v.len() > MAX_PACKAGE_FIELD_LEN
        || v.chars().any(char::is_control)
    {
        let min = if allow_empty { 0 } else { 1 };
        return Err(err(
            field,
            format!("must be {min} to {MAX_PACKAGE_FIELD_LEN} bytes without control characters"),
        ));
    }
    Ok(())
}

/// SHA-256 (lower-case hex) of the sorted lines `name\tversion\tarch\n` (an absent arch is
/// empty): the same package set always has the same digest, whatever the order sent.
pub fn inventory_digest(packages: &[fleet_schemas::api::PackageIn]) -> String {
    use sha2::{Digest as _, Sha256};
    let mut lines: Vec<String> = packages.iter().map(package_line).collect();
    lines.sort_unstable();
    let mut h = Sha256::new();
    for l in &lines {
        h.update(l.as_bytes());
    }
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

fn package_line(p: &fleet_schemas::api::PackageIn) -> String {
    format!(
        "{}\t{}\t{}\n",
        p.name,
        p.version,
        p.arch.as_deref().unwrap_or("")
    )
}

/// Validates a software inventory and converts it to the record written to the log (the
/// packages in digest order).
pub fn inventory(
    tenant_id: &str,
    agent_id: &str,
    inv: &fleet_schemas::api::InventoryIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<fleet_schemas::SoftwareInventory, FieldError> {
    let occurred_at = inv.collected_at.timestamp_micros();
    time_in_window("collected_at", occurred_at, now_micros, limits)?;
    if !INVENTORY_SOURCES.contains(&inv.source.as_str()) {
        return Err(err(
            "source",
            format!("must be one of {}", INVENTORY_SOURCES.join(", ")),
        ));
    }
    at_most("packages", inv.packages.len(), MAX_PACKAGES)?;
    for (i, p) in inv.packages.iter().enumerate() {
        package_text(Path::ItemField("packages", i, "name"), &p.name, false)?;
        package_text(Path::ItemField("packages", i, "version"), &p.version, true)?;
        if let Some(a) = &p.arch {
            package_text(Path::ItemField("packages", i, "arch"), a, true)?;
        }
    }
    let digest = inventory_digest(&inv.packages);
    let mut sorted: Vec<(String, &fleet_schemas::api::PackageIn)> =
        inv.packages.iter().map(|p| (package_line(p), p)).collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(fleet_schemas::SoftwareInventory {
        event_id: ids::v5(&[agent_id, "inventory", &digest]).to_string(),
        tenant_id: tenant_id.to_owned(),
        agent_id: agent_id.to_owned(),
        occurred_at,
        ingested_at: now_micros,
        source: inv.source.clone(),
        digest,
        packages: sorted
            .into_iter()
            .map(|(_, p)| fleet_schemas::SoftwarePackage {
                name: p.name.clone(),
                version: p.version.clone(),
                arch: p.arch.clone(),
            })
            .collect(),
    })
}

/// Longest progress chunk, bytes.
pub const MAX_CHUNK_LEN: usize = fleet_schemas::api::MAX_PROGRESS_CHUNK_BYTES;
/// Longest captured stdout or stderr in a result, bytes.
pub const MAX_OUTPUT_LEN: usize = fleet_schemas::api::MAX_COMMAND_OUTPUT_BYTES;
const PROGRESS_STREAMS: &[&str] = &["stdout", "stderr", "status"];
const RESULT_STATUSES: &[&str] = &["succeeded", "failed", "timed_out", "refused"];

/// Command ids are UUIDs.
pub fn command_id(field: &str, id: &str) -> Result<(), FieldError> {
    uuid::Uuid::parse_str(id)
        .map(|_| ())
        .map_err(|_| err(field, "must be a command id (a UUID)"))
}

/// What a progress chunk carries once checked (the command's details come from the
/// dispatcher's state).
#[derive(Debug, Clone, PartialEq)]
pub struct ProgressChecked {
    /// Chunk number, from 1.
    pub sequence: i64,
    /// When it was produced (µs).
    pub at: i64,
}

/// Validates a command progress chunk.
pub fn command_progress(
    p: &fleet_schemas::api::CommandProgressIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<ProgressChecked, FieldError> {
    command_id("command_id", &p.command_id)?;
    if p.sequence == 0 {
        return Err(err("sequence", "chunks are numbered from 1"));
    }
    let sequence = long("sequence", p.sequence)?;
    if !PROGRESS_STREAMS.contains(&p.stream.as_str()) {
        return Err(err(
            "stream",
            format!("must be one of {}", PROGRESS_STREAMS.join(", ")),
        ));
    }
    if p.chunk.len() > MAX_CHUNK_LEN {
        return Err(err("chunk", format!("longer than {MAX_CHUNK_LEN} bytes")));
    }
    let at = p.at.timestamp_micros();
    time_in_window("at", at, now_micros, limits)?;
    Ok(ProgressChecked { sequence, at })
}

/// Validates a command result; returns (started_at, finished_at) in µs.
pub fn command_result(
    r: &fleet_schemas::api::CommandResultIn,
    now_micros: i64,
    limits: &Limits,
) -> Result<(Option<i64>, i64), FieldError> {
    command_id("command_id", &r.command_id)?;
    if !RESULT_STATUSES.contains(&r.status.as_str()) {
        return Err(err(
            "status",
            format!("must be one of {}", RESULT_STATUSES.join(", ")),
        ));
    }
    if r.stdout.len() > MAX_OUTPUT_LEN {
        return Err(err("stdout", format!("longer than {MAX_OUTPUT_LEN} bytes")));
    }
    if r.stderr.len() > MAX_OUTPUT_LEN {
        return Err(err("stderr", format!("longer than {MAX_OUTPUT_LEN} bytes")));
    }
    if r.message
        .as_ref()
        .is_some_and(|m| m.len() > MAX_MESSAGE_LEN)
    {
        return Err(err(
            "message",
            format!("longer than {MAX_MESSAGE_LEN} bytes"),
        ));
    }
    let finished_at = r.finished_at.timestamp_micros();
    time_in_window("finished_at", finished_at, now_micros, limits)?;
    let started_at = r.started_at.map(|t| t.timestamp_micros());
    if started_at.is_some_and(|s| s > finished_at) {
        return Err(err("started_at", "is after finished_at"));
    }
    Ok((started_at, finished_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::api::PackageIn;

    fn pkg(name: &str, version: &str, arch: Option<&str>) -> PackageIn {
        PackageIn {
            name: name.into(),
            version: version.into(),
            arch: arch.map(Into::into),
        }
    }

    #[test]
    fn digest_ignores_order_and_hashes_the_sorted_lines() {
        let a = vec![pkg("zlib", "1.2", Some("amd64")), pkg("bash", "5.2", None)];
        let b = vec![pkg("bash", "5.2", None), pkg("zlib", "1.2", Some("amd64"))];
        assert_eq!(inventory_digest(&a), inventory_digest(&b));
        // sha256("bash\t5.2\t\nzlib\t1.2\tamd64\n")
        use sha2::{Digest as _, Sha256};
        let want: String = Sha256::digest(b"bash\t5.2\t\nzlib\t1.2\tamd64\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(inventory_digest(&a), want);
        assert_ne!(
            inventory_digest(&a),
            inventory_digest(&[pkg("bash", "5.3", None)])
        );
    }
}
