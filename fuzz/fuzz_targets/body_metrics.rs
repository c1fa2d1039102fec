//! `POST /api/v1/agents/{id}/metrics`: the body parsed and checked as the handler does.
//! Beyond not panicking: a refusal names the field; every report is accepted or refused
//! by index; an accepted report keeps the values sent and respects every documented
//! bound (percentages, byte counts, names, list lengths, the time window, the per-agent
//! subject cap); and it encodes to the record written to the log.
#![no_main]

use std::collections::HashSet;

use fleet_fuzz::*;
use fleet_ingest_gateway::fuzzing::{self, AGENT, TENANT};
use fleet_ingest_gateway::validate::{MAX_CORES, MAX_NAME_LEN};
use fleet_ingest_gateway::GatewayConfig;
use fleet_schemas::api::{MetricBatch, ReportIn};
use fleet_schemas::MetricReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("body_metrics"), |data: &[u8]| {
    let (valid, rejected) = match fuzzing::metrics(data, NOW) {
        Ok(v) => v,
        Err((status, e)) => return assert_refusal(status, &e, &[400, 422]),
    };
    let batch: MetricBatch = serde_json::from_slice(data).expect("the gateway parsed it");
    let cfg = GatewayConfig::default();
    assert!(!valid.is_empty() && batch.reports.len() <= cfg.max_reports_per_batch);
    assert_batch("reports", batch.reports.len(), valid.len(), &rejected);
    let refused: HashSet<usize> = rejected.iter().map(|r| r.index).collect();
    let sent = (0..batch.reports.len()).filter(|i| !refused.contains(i));
    let mut names: [HashSet<&str>; 4] = Default::default();
    for (i, rec) in sent.zip(&valid) {
        check(&batch.reports[i], rec, &cfg);
        names[0].extend(rec.disks.iter().map(|d| d.mount.as_str()));
        names[1].extend(rec.interfaces.iter().map(|n| n.name.as_str()));
        names[2].extend(rec.services.iter().map(|s| s.name.as_str()));
        names[3].extend(rec.custom.keys().map(String::as_str));
        assert_writes(rec);
    }
    for kind in &names {
        assert!(kind.len() <= cfg.subjects.max_per_agent, "subject cap");
    }
});

fn percent(what: &str, v: f64) {
    assert!(v.is_finite() && (0.0..=100.0).contains(&v), "{what} = {v}");
}

fn same_count(what: &str, sent: u64, written: i64) {
    assert_count(what, written);
    assert_eq!(u64::try_from(written).ok(), Some(sent), "{what}");
}

/// The record written for `sent`: its values unchanged, inside the bounds.
fn check(sent: &ReportIn, rec: &MetricReport, cfg: &GatewayConfig) {
    let s = &cfg.subjects;
    assert_eq!((rec.tenant_id.as_str(), rec.agent_id.as_str()), (TENANT, AGENT));
    assert_uuid("event_id", &rec.event_id);
    assert_eq!(rec.ingested_at, NOW);
    assert_eq!(rec.occurred_at, sent.collected_at.timestamp_micros());
    assert_in_window("collected_at", rec.occurred_at);
    percent("cpu_percent", rec.cpu_percent);
    percent("memory_percent", rec.memory_percent);
    assert_eq!(rec.cpu_percent.to_bits(), sent.cpu_percent.to_bits());
    assert!(rec.cpu_per_core.len() <= MAX_CORES);
    assert_eq!(rec.cpu_per_core, sent.cpu_per_core);
    for v in &rec.cpu_per_core {
        percent("cpu_per_core", *v);
    }
    same_count("memory_used_bytes", sent.memory_used_bytes, rec.memory_used_bytes);
    same_count("memory_total_bytes", sent.memory_total_bytes, rec.memory_total_bytes);
    assert!(rec.memory_used_bytes <= rec.memory_total_bytes);
    same_count("swap_used_bytes", sent.swap_used_bytes, rec.swap_used_bytes);
    same_count("swap_total_bytes", sent.swap_total_bytes, rec.swap_total_bytes);
    same_count("disk_read_bytes", sent.disk_read_bytes, rec.disk_read_bytes);
    same_count("disk_write_bytes", sent.disk_write_bytes, rec.disk_write_bytes);
    same_count("uptime_seconds", sent.uptime_seconds, rec.uptime_seconds);
    same_count("net_rx_bytes", sent.net_rx_bytes, rec.net_rx_bytes);
    same_count("net_tx_bytes", sent.net_tx_bytes, rec.net_tx_bytes);
    same_count(
        "process_count",
        u64::from(sent.process_count),
        i64::from(rec.process_count),
    );
    for (what, v, w) in [
        ("load_1", rec.load_1, sent.load_1),
        ("load_5", rec.load_5, sent.load_5),
        ("load_15", rec.load_15, sent.load_15),
    ] {
        assert!(v.is_finite() && v >= 0.0, "{what} = {v}");
        assert_eq!(v.to_bits(), w.to_bits(), "{what}");
    }
    assert!(rec.disks.len() <= s.max_disks_per_report);
    assert_eq!(rec.disks.len(), sent.disks.len());
    for (d, sd) in rec.disks.iter().zip(&sent.disks) {
        assert_name("disk mount", &d.mount, MAX_NAME_LEN);
        assert_eq!(d.mount, sd.mount);
        same_count("disk used_bytes", sd.used_bytes, d.used_bytes);
        same_count("disk total_bytes", sd.total_bytes, d.total_bytes);
        assert!(d.used_bytes <= d.total_bytes);
        percent("disk percent", d.percent);
    }
    assert!(rec.interfaces.len() <= s.max_interfaces_per_report);
    assert_eq!(rec.interfaces.len(), sent.interfaces.len());
    for (n, sn) in rec.interfaces.iter().zip(&sent.interfaces) {
        assert_name("interface", &n.name, MAX_NAME_LEN);
        assert_eq!(n.name, sn.name);
        same_count("rx_bytes", sn.rx_bytes, n.rx_bytes);
        same_count("tx_bytes", sn.tx_bytes, n.tx_bytes);
    }
    assert!(rec.services.len() <= s.max_services_per_report);
    assert_eq!(rec.services.len(), sent.services.len());
    for (v, sv) in rec.services.iter().zip(&sent.services) {
        assert_name("service", &v.name, MAX_NAME_LEN);
        assert_eq!((&v.name, &v.status), (&sv.name, &sv.status));
        assert!(["running", "stopped", "failed", "unknown"].contains(&v.status.as_str()));
        assert_eq!(v.pid.map(i64::from), sv.pid.map(i64::from));
        assert!(v.pid.is_none_or(|p| p >= 0));
    }
    assert!(rec.custom.len() <= s.max_custom_per_report);
    assert_eq!(rec.custom.len(), sent.custom.len());
    for (k, v) in &rec.custom {
        assert!(
            !k.is_empty()
                && k.len() <= 128
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)),
            "custom metric name {k:?}"
        );
        assert!(v.is_finite());
        assert_eq!(sent.custom.get(k).map(|x| x.to_bits()), Some(v.to_bits()));
    }
    match (&rec.security, &sent.security) {
        (None, None) => {}
        (Some(r), Some(s)) => {
            assert_eq!(r.firewall_enabled, s.firewall_enabled);
            assert_eq!(
                r.pending_updates.map(i64::from),
                s.pending_updates.map(i64::from)
            );
            assert_eq!(
                r.pending_security_updates.map(i64::from),
                s.pending_security_updates.map(i64::from)
            );
            assert!(r.pending_updates.is_none_or(|n| n >= 0));
            assert!(r.pending_security_updates.is_none_or(|n| n >= 0));
            assert_eq!(r.reboot_required, s.reboot_required);
            assert_eq!(r.ssh_permit_root_login, s.ssh_permit_root_login);
            assert!(r.ssh_permit_root_login.as_deref().is_none_or(|v| {
                fleet_schemas::api::SSH_PERMIT_ROOT_LOGIN_VALUES.contains(&v)
            }));
            assert_eq!(r.ssh_password_authentication, s.ssh_password_authentication);
            assert_eq!(r.antivirus_present, s.antivirus_present);
            assert_eq!(
                r.antivirus_signature_age_hours.map(f64::to_bits),
                s.antivirus_signature_age_hours.map(f64::to_bits)
            );
            assert!(r.antivirus_signature_age_hours.is_none_or(|h| h.is_finite()
                && (0.0..=fleet_schemas::api::MAX_ANTIVIRUS_SIGNATURE_AGE_HOURS).contains(&h)));
        }
        other => panic!("security changed: {other:?}"),
    }
}
