//! The collector on this machine: values are sane and survive the JSON wire format.

use std::time::Duration;

use fleet_agent::Collector;
use fleet_schemas::api::{MetricBatch, ReportIn};

fn in_range(p: f64) -> bool {
    p.is_finite() && (0.0..=100.0).contains(&p)
}

#[test]
fn collector_reports_sane_values_and_round_trips_json() -> anyhow::Result<()> {
    let mut collector = Collector::new(vec!["definitely-not-a-unit-xyz".to_owned()]);
    // CPU usage needs two samples some time apart (sysinfo's minimum is 200 ms).
    std::thread::sleep(Duration::from_millis(300));
    let first = collector.collect();
    std::thread::sleep(Duration::from_millis(300));
    let report = collector.collect();

    for r in [&first, &report] {
        assert!(in_range(r.cpu_percent), "cpu {}", r.cpu_percent);
        assert!(!r.cpu_per_core.is_empty());
        assert!(r.cpu_per_core.iter().copied().all(in_range));
        assert!(r.memory_total_bytes > 0);
        assert!(r.memory_used_bytes <= r.memory_total_bytes);
        assert!(in_range(r.memory_percent));
        assert!(
            r.swap_used_bytes <= r.swap_total_bytes,
            "swap used {} of {}",
            r.swap_used_bytes,
            r.swap_total_bytes
        );
        assert!(r.disks.iter().any(|d| d.total_bytes > 0), "{:?}", r.disks);
        for d in &r.disks {
            assert!(d.total_bytes > 0 && d.used_bytes <= d.total_bytes, "{d:?}");
            assert!(in_range(d.percent), "{d:?}");
        }
        let mut mounts: Vec<&str> = r.disks.iter().map(|d| d.mount.as_str()).collect();
        mounts.sort_unstable();
        mounts.dedup();
        assert_eq!(
            mounts.len(),
            r.disks.len(),
            "mounts are unique: {:?}",
            r.disks
        );
        assert!(r.uptime_seconds > 0);
        assert!([r.load_1, r.load_5, r.load_15]
            .iter()
            .all(|l| l.is_finite() && *l >= 0.0));
        assert!(r.process_count > 0);
        assert!(r.interfaces.iter().all(|i| i.name != "lo"));
        assert_eq!(
            r.net_rx_bytes,
            r.interfaces.iter().map(|i| i.rx_bytes).sum::<u64>()
        );
        assert_eq!(r.services.len(), 1);
        assert_eq!(r.services[0].name, "definitely-not-a-unit-xyz");
        assert!(["unknown", "stopped"].contains(&r.services[0].status.as_str()));
    }
    assert!(report.collected_at > first.collected_at);

    let batch = MetricBatch {
        reports: vec![first, report],
    };
    let json = serde_json::to_string(&batch)?;
    let back: MetricBatch = serde_json::from_str(&json)?;
    assert_eq!(back, batch);
    // A single report too (the gateway reads reports with deny_unknown_fields).
    let one: ReportIn = serde_json::from_str(&serde_json::to_string(&batch.reports[1])?)?;
    assert_eq!(one, batch.reports[1]);
    Ok(())
}
