//! Collects one [`ReportIn`] from the machine: CPU, memory, disks, disk and network I/O,
//! load, uptime, processes and watched services.
//!
//! Only what a report needs is refreshed (no per-process scan), so a collection costs a
//! handful of small `/proc` and `/sys` reads plus, when services are watched, one
//! `systemctl` call for all of them. Parsers of text sources are pure functions, tested
//! with fixed inputs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use fleet_schemas::api::{DiskIn, InterfaceIn, ReportIn, ServiceIn};
use sysinfo::{DiskRefreshKind, Disks, Networks, System};

/// Longest a `systemctl` call may take before its services are reported `unknown`.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(3);

/// Interfaces left out of the network totals and the interface list.
const LOOPBACK: &str = "lo";

/// Most disks and most interfaces listed in one report (the gateway's limits; totals still
/// cover every interface).
pub const MAX_LISTED: usize = 256;

/// Longest mount or interface name the gateway accepts, bytes.
const MAX_NAME_LEN: usize = 512;

/// Owns the sysinfo handles and the previous counters that interval deltas need. Build it
/// once and call [`Collector::collect`] every interval; the constructor takes the first
/// sample so the first report already has a CPU figure and I/O deltas.
///
/// Collection does blocking file reads and may run `systemctl`: call it from
/// `spawn_blocking` in async code.
#[derive(Debug)]
pub struct Collector {
    system: System,
    disks: Disks,
    networks: Networks,
    /// Cumulative (read, written) bytes per whole block device at the last collection.
    prev_disk_io: BTreeMap<String, (u64, u64)>,
    services: Vec<String>,
}

impl Collector {
    /// A collector watching the given systemd units (already validated by the config).
    pub fn new(services: Vec<String>) -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        system.refresh_memory();
        Self {
            system,
            disks: Disks::new_with_refreshed_list_specifics(disk_refresh_kind()),
            networks: Networks::new_with_refreshed_list(),
            prev_disk_io: read_disk_io(),
            services,
        }
    }

    /// Watches these units from the next collection on (already validated).
    pub fn set_services(&mut self, services: Vec<String>) {
        self.services = services;
    }

    /// Samples the machine now. I/O figures cover the time since the previous call (or
    /// since construction). Every percentage is finite and within 0..=100.
    pub fn collect(&mut self) -> ReportIn {
        let collected_at = Utc::now();

        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        let cpu_percent = percent(f64::from(self.system.global_cpu_usage()));
        let cpu_per_core = self
            .system
            .cpus()
            .iter()
            .map(|cpu| percent(f64::from(cpu.cpu_usage())))
            .collect();
        let memory_total_bytes = self.system.total_memory();
        let memory_used_bytes = self.system.used_memory().min(memory_total_bytes);

        self.disks.refresh_specifics(true, disk_refresh_kind());
        let disks = disk_list(mount_samples(&self.disks));

        let disk_io = read_disk_io();
        let (disk_read_bytes, disk_write_bytes) = io_delta(&self.prev_disk_io, &disk_io);
        self.prev_disk_io = disk_io;

        self.networks.refresh(true);
        let (net_rx_bytes, net_tx_bytes, interfaces) = interface_list(
            self.networks
                .list()
                .iter()
                .map(|(name, data)| InterfaceIn {
                    name: name.clone(),
                    rx_bytes: data.received(),
                    tx_bytes: data.transmitted(),
                })
                .collect(),
        );

        let load = System::load_average();

        ReportIn {
            collected_at,
            cpu_percent,
            cpu_per_core,
            memory_used_bytes,
            memory_total_bytes,
            memory_percent: ratio_percent(memory_used_bytes, memory_total_bytes),
            swap_used_bytes: self.system.used_swap(),
            swap_total_bytes: self.system.total_swap(),
            disks,
            disk_read_bytes,
            disk_write_bytes,
            load_1: non_negative(load.one),
            load_5: non_negative(load.five),
            load_15: non_negative(load.fifteen),
            uptime_seconds: System::uptime(),
            net_rx_bytes,
            net_tx_bytes,
            interfaces,
            process_count: self.process_count(),
            services: service_statuses(&self.services),
            security: None,
            custom: BTreeMap::new(),
        }
    }

    #[cfg(target_os = "linux")]
    fn process_count(&mut self) -> u32 {
        // Counting /proc entries is far cheaper than a sysinfo process refresh, which
        // opens and parses files for every process.
        count_pid_dirs().unwrap_or(0)
    }

    #[cfg(not(target_os = "linux"))]
    fn process_count(&mut self) -> u32 {
        self.system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::All,
            true,
            sysinfo::ProcessRefreshKind::nothing(),
        );
        u32::try_from(self.system.processes().len()).unwrap_or(u32::MAX)
    }
}

/// The mounted file systems as [`disk_list`] takes them.
fn mount_samples(disks: &Disks) -> Vec<MountSample> {
    disks
        .list()
        .iter()
        .map(|d| MountSample {
            device: d.name().to_string_lossy().into_owned(),
            mount: d.mount_point().to_string_lossy().into_owned(),
            total: d.total_space(),
            available: d.available_space(),
        })
        .collect()
}

/// The disks a report would list right now (pseudo file systems and bind mounts left
/// out). Blocking: reads the mount table and `statvfs`s every mount.
pub(crate) fn current_disks() -> Vec<DiskIn> {
    disk_list(mount_samples(&Disks::new_with_refreshed_list_specifics(
        disk_refresh_kind(),
    )))
}

/// Only sizes are refreshed: disk kind and per-mount I/O are not reported.
fn disk_refresh_kind() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage()
}

#[cfg(target_os = "linux")]
fn count_pid_dirs() -> Option<u32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    let n = entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name();
            let name = name.as_encoded_bytes();
            !name.is_empty() && name.iter().all(u8::is_ascii_digit)
        })
        .count();
    Some(u32::try_from(n).unwrap_or(u32::MAX))
}

/// Clamps to 0..=100 and rounds to 0.01; NaN becomes 0.
///
/// Rounding keeps the JSON short and makes it read back exactly (serde_json's default
/// float parser can be off by one ulp on 17-digit values such as widened `f32`s).
pub(crate) fn percent(value: f64) -> f64 {
    if value.is_nan() {
        0.0
    } else {
        (value.clamp(0.0, 100.0) * 100.0).round() / 100.0
    }
}

/// `part / whole` as a clamped percentage; 0 when `whole` is 0.
pub(crate) fn ratio_percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        // Precision loss above 2^53 bytes is irrelevant for a percentage.
        #[allow(clippy::cast_precision_loss)]
        percent(part as f64 / whole as f64 * 100.0)
    }
}

fn non_negative(value: f64) -> f64 {
    if value.is_finite() {
        value.max(0.0)
    } else {
        0.0
    }
}

/// One mounted file system as sysinfo lists it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MountSample {
    pub(crate) device: String,
    pub(crate) mount: String,
    pub(crate) total: u64,
    pub(crate) available: u64,
}

/// True for names the gateway accepts: 1 to 512 bytes, no control characters.
fn is_reportable_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// Network totals over every interface but loopback, and the interface list: sorted by
/// name, at most [`MAX_LISTED`] (the busiest kept), names the gateway would refuse left
/// out of the list (not of the totals).
pub(crate) fn interface_list(mut all: Vec<InterfaceIn>) -> (u64, u64, Vec<InterfaceIn>) {
    all.retain(|i| i.name != LOOPBACK);
    let rx = all.iter().map(|i| i.rx_bytes).fold(0, u64::saturating_add);
    let tx = all.iter().map(|i| i.tx_bytes).fold(0, u64::saturating_add);
    all.retain(|i| is_reportable_name(&i.name));
    if all.len() > MAX_LISTED {
        all.sort_by_key(|i| std::cmp::Reverse(i.rx_bytes.saturating_add(i.tx_bytes)));
        all.truncate(MAX_LISTED);
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    (rx, tx, all)
}

/// Turns mounts into report disks: pseudo file systems (size 0) are skipped, a mount point
/// appears once, and bind mounts of a file system already listed (same device and size)
/// are dropped, keeping the shortest mount point. At most [`MAX_LISTED`] are kept
/// (shortest mount points first); names the gateway would refuse are left out.
pub(crate) fn disk_list(mut mounts: Vec<MountSample>) -> Vec<DiskIn> {
    mounts.retain(|m| m.total > 0 && is_reportable_name(&m.mount));
    // Shortest mount point first, so `/` wins over `/etc/hosts` bind mounts of its device.
    mounts.sort_by(|a, b| {
        a.mount
            .len()
            .cmp(&b.mount.len())
            .then(a.mount.cmp(&b.mount))
    });
    let mut seen_mounts = BTreeSet::new();
    let mut seen_filesystems = BTreeSet::new();
    let mut disks: Vec<DiskIn> = Vec::new();
    for m in mounts {
        if !seen_mounts.insert(m.mount.clone()) {
            continue;
        }
        if !m.device.is_empty() && !seen_filesystems.insert((m.device.clone(), m.total)) {
            continue;
        }
        let used = m.total.saturating_sub(m.available);
        disks.push(DiskIn {
            percent: ratio_percent(used, m.total),
            mount: m.mount,
            used_bytes: used,
            total_bytes: m.total,
        });
        if disks.len() == MAX_LISTED {
            break;
        }
    }
    disks.sort_by(|a, b| a.mount.cmp(&b.mount));
    disks
}

/// Cumulative (read, written) bytes per whole block device, from `/proc/diskstats`.
/// Empty where the file does not exist (non-Linux), so I/O figures are then 0.
fn read_disk_io() -> BTreeMap<String, (u64, u64)> {
    let Ok(text) = std::fs::read_to_string("/proc/diskstats") else {
        return BTreeMap::new();
    };
    let whole_devices: Option<BTreeSet<String>> = std::fs::read_dir("/sys/block").ok().map(|d| {
        d.filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    });
    parse_diskstats(&text, whole_devices.as_ref())
}

/// Parses `/proc/diskstats` into cumulative (read, written) bytes per physical whole
/// device. Sectors there are always 512 bytes. Partitions are left out (their I/O is in
/// their device's), and so are loop, RAM, zram, optical, device-mapper and md devices
/// (virtual, or stacked on devices already counted).
///
/// `whole_devices` is the list of `/sys/block` when readable; without it a name is taken
/// for a partition when another listed name plus digits (or `p` and digits) spells it.
pub(crate) fn parse_diskstats(
    text: &str,
    whole_devices: Option<&BTreeSet<String>>,
) -> BTreeMap<String, (u64, u64)> {
    let mut all = BTreeMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // major minor name reads merged sectors_read ms writes merged sectors_written ...
        if fields.len() < 10 {
            continue;
        }
        let (Ok(read), Ok(written)) = (fields[5].parse::<u64>(), fields[9].parse::<u64>()) else {
            continue;
        };
        all.insert(
            fields[2].to_owned(),
            (read.saturating_mul(512), written.saturating_mul(512)),
        );
    }
    let names: BTreeSet<&str> = all.keys().map(String::as_str).collect();
    let keep: BTreeSet<String> = all
        .keys()
        .filter(|name| !is_virtual_device(name))
        .filter(|name| match whole_devices {
            Some(whole) => whole.contains(*name),
            None => !is_partition_name(name, &names),
        })
        .cloned()
        .collect();
    all.retain(|name, _| keep.contains(name));
    all
}

fn is_virtual_device(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "fd", "dm-", "md"]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn is_partition_name(name: &str, names: &BTreeSet<&str>) -> bool {
    names.iter().any(|&parent| {
        if parent == name || !name.starts_with(parent) {
            return false;
        }
        let rest = &name[parent.len()..];
        let digits = match rest.strip_prefix('p') {
            Some(d) if parent.ends_with(|c: char| c.is_ascii_digit()) => d,
            _ => rest,
        };
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Bytes (read, written) between two counter snapshots. Devices new since `prev` count 0
/// (their whole history is not this interval's), and a counter that went backwards (device
/// replaced) counts 0.
pub(crate) fn io_delta(
    prev: &BTreeMap<String, (u64, u64)>,
    now: &BTreeMap<String, (u64, u64)>,
) -> (u64, u64) {
    now.iter()
        .filter_map(|(name, &(r, w))| {
            let &(pr, pw) = prev.get(name)?;
            Some((r.saturating_sub(pr), w.saturating_sub(pw)))
        })
        .fold((0, 0), |(ar, aw), (r, w)| {
            (ar.saturating_add(r), aw.saturating_add(w))
        })
}

/// Status and main pid of each named systemd unit, in the given order, from one
/// `systemctl show` call. Every unit is `unknown` (without pid) when `systemctl` is
/// missing, fails (no systemd as PID 1) or hangs past a short timeout.
pub fn service_statuses(names: &[String]) -> Vec<ServiceIn> {
    if names.is_empty() {
        return Vec::new();
    }
    match systemctl_show(names) {
        Some(output) => parse_systemctl_show(&output, names),
        None => names.iter().map(|n| unknown_service(n)).collect(),
    }
}

fn unknown_service(name: &str) -> ServiceIn {
    ServiceIn {
        name: name.to_owned(),
        status: "unknown".to_owned(),
        pid: None,
    }
}

/// Runs `systemctl show -p Id,LoadState,ActiveState,MainPID -- <names>`; `None` when it
/// cannot run, exits non-zero or exceeds [`SYSTEMCTL_TIMEOUT`].
fn systemctl_show(names: &[String]) -> Option<String> {
    let mut child = Command::new("systemctl")
        .args([
            "show",
            "--no-pager",
            "-p",
            "Id,LoadState,ActiveState,MainPID",
            "--",
        ])
        .args(names)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::debug!(error = %e, "systemctl cannot run; services are unknown."))
        .ok()?;
    let mut stdout = child.stdout.take()?;
    let deadline = Instant::now() + SYSTEMCTL_TIMEOUT;
    std::thread::scope(|scope| {
        // Read concurrently so a large output cannot fill the pipe and stall the child.
        let reader = scope.spawn(move || {
            let mut out = String::new();
            stdout.read_to_string(&mut out).map(|_| out)
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) | Err(_) => {
                    tracing::warn!(timeout = ?SYSTEMCTL_TIMEOUT, "systemctl did not answer; services are unknown.");
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let out = reader.join().ok()?.ok()?;
        match status {
            Some(s) if s.success() => Some(out),
            Some(s) => {
                tracing::debug!(status = %s, "systemctl failed; services are unknown.");
                None
            }
            None => None,
        }
    })
}

/// Parses `systemctl show` output for several units: one block of `Key=value` lines per
/// unit, blocks separated by a blank line, in the order the units were named. If the
/// block count does not match the names, nothing can be attributed and every unit is
/// `unknown`.
pub fn parse_systemctl_show(output: &str, names: &[String]) -> Vec<ServiceIn> {
    let blocks: Vec<HashMap<&str, &str>> = output
        .split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter_map(|line| line.split_once('='))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect::<HashMap<_, _>>()
        })
        .filter(|props| !props.is_empty())
        .collect();
    if blocks.len() != names.len() {
        tracing::debug!(
            blocks = blocks.len(),
            services = names.len(),
            "Unexpected systemctl output; services are unknown."
        );
        return names.iter().map(|n| unknown_service(n)).collect();
    }
    names
        .iter()
        .zip(blocks)
        .map(|(name, props)| {
            let status = service_status(
                props.get("LoadState").copied(),
                props.get("ActiveState").copied(),
            );
            let pid = props
                .get("MainPID")
                .and_then(|p| p.parse::<u32>().ok())
                .filter(|&p| p != 0);
            ServiceIn {
                name: name.clone(),
                status: status.to_owned(),
                pid,
            }
        })
        .collect()
}

/// Maps systemd's LoadState / ActiveState to `running`, `stopped`, `failed` or `unknown`.
/// A unit that does not exist is `unknown`; one starting, stopping or in maintenance is
/// `stopped` (as `systemctl is-active` fails for it too).
pub fn service_status(load_state: Option<&str>, active_state: Option<&str>) -> &'static str {
    if matches!(load_state, Some("not-found") | None) {
        return "unknown";
    }
    match active_state {
        Some("active" | "reloading" | "refreshing") => "running",
        Some("inactive" | "activating" | "deactivating" | "maintenance") => "stopped",
        Some("failed") => "failed",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn systemctl_show_blocks_map_in_order() {
        let out = "MainPID=812\nId=nginx.service\nLoadState=loaded\nActiveState=active\n\n\
                   MainPID=0\nId=cron.service\nLoadState=loaded\nActiveState=inactive\n\n\
                   MainPID=0\nId=bad.service\nLoadState=loaded\nActiveState=failed\n\n\
                   MainPID=0\nId=nope.service\nLoadState=not-found\nActiveState=inactive\n";
        let got = parse_systemctl_show(out, &names(&["nginx", "cron", "bad", "nope"]));
        let summary: Vec<(&str, &str, Option<u32>)> = got
            .iter()
            .map(|s| (s.name.as_str(), s.status.as_str(), s.pid))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("nginx", "running", Some(812)),
                ("cron", "stopped", None),
                ("bad", "failed", None),
                ("nope", "unknown", None),
            ]
        );
    }

    #[test]
    fn systemctl_show_mismatch_or_garbage_is_unknown() {
        let got = parse_systemctl_show("Id=a\nActiveState=active\n", &names(&["a", "b"]));
        assert!(got.iter().all(|s| s.status == "unknown" && s.pid.is_none()));
        let got = parse_systemctl_show("", &names(&["a"]));
        assert_eq!(got[0].status, "unknown");
        let got = parse_systemctl_show(
            "LoadState=loaded\nActiveState=weird\nMainPID=x",
            &names(&["a"]),
        );
        assert_eq!((got[0].status.as_str(), got[0].pid), ("unknown", None));
    }

    #[test]
    fn service_status_mapping() {
        assert_eq!(service_status(Some("loaded"), Some("reloading")), "running");
        assert_eq!(
            service_status(Some("loaded"), Some("activating")),
            "stopped"
        );
        assert_eq!(service_status(Some("not-found"), Some("active")), "unknown");
        assert_eq!(service_status(None, Some("active")), "unknown");
    }

    #[test]
    fn services_without_systemd_are_unknown_not_errors() {
        // On this machine systemctl may be missing or unable to reach systemd; either way
        // every service gets a status.
        let got = service_statuses(&names(&["definitely-not-a-unit-xyz"]));
        assert_eq!(got.len(), 1);
        assert!(
            ["unknown", "stopped"].contains(&got[0].status.as_str()),
            "{got:?}"
        );
    }

    const DISKSTATS: &str = "\
   7       0 loop0 10 0 80 0 0 0 0 0 0 0 0 0 0 0 0 0 0
   8       0 sda 100 0 2000 0 50 0 1000 0 0 0 0 0 0 0 0 0 0
   8       1 sda1 90 0 1900 0 40 0 900 0 0 0 0 0 0 0 0 0 0
 259       0 nvme0n1 5 0 10 0 5 0 20 0 0 0 0 0 0 0 0 0 0
 259       1 nvme0n1p1 5 0 10 0 5 0 20 0 0 0 0 0 0 0 0 0 0
 253       0 dm-0 5 0 999 0 5 0 999 0 0 0 0 0 0 0 0 0 0
   1       0 ram0 5 0 999 0 5 0 999 0 0 0 0 0 0 0 0 0 0
 254       0 zram0 5 0 999 0 5 0 999 0 0 0 0 0 0 0 0 0 0
garbage line
";

    #[test]
    fn diskstats_counts_whole_physical_devices_only() {
        let got = parse_diskstats(DISKSTATS, None);
        assert_eq!(
            got.into_iter().collect::<Vec<_>>(),
            vec![
                ("nvme0n1".to_owned(), (10 * 512, 20 * 512)),
                ("sda".to_owned(), (2000 * 512, 1000 * 512)),
            ]
        );
        // With /sys/block known, it decides what is whole.
        let whole: BTreeSet<String> = ["sda", "loop0"].iter().map(|s| (*s).to_owned()).collect();
        let got = parse_diskstats(DISKSTATS, Some(&whole));
        assert_eq!(got.keys().collect::<Vec<_>>(), vec!["sda"]);
    }

    #[test]
    fn io_delta_sums_and_ignores_new_or_reset_devices() {
        let prev: BTreeMap<String, (u64, u64)> = [
            ("sda".to_owned(), (1000, 500)),
            ("sdb".to_owned(), (900, 900)),
        ]
        .into();
        let now: BTreeMap<String, (u64, u64)> = [
            ("sda".to_owned(), (1500, 700)),
            ("sdb".to_owned(), (100, 100)),
            ("sdc".to_owned(), (7777, 7777)),
        ]
        .into();
        assert_eq!(io_delta(&prev, &now), (500, 200));
        assert_eq!(io_delta(&BTreeMap::new(), &now), (0, 0));
    }

    #[test]
    fn disk_list_skips_pseudo_and_dedupes() {
        let m = |device: &str, mount: &str, total, available| MountSample {
            device: device.into(),
            mount: mount.into(),
            total,
            available,
        };
        let got = disk_list(vec![
            m("/dev/vda1", "/etc/hosts", 100, 40),
            m("overlay", "/", 100, 25),
            m("/dev/vda1", "/data", 100, 40),
            m("proc", "/proc", 0, 0),
            m("/dev/vdb", "/data", 50, 10),
            m("/dev/vdc", "/srv", 10, 20),
        ]);
        let summary: Vec<(&str, u64, u64, f64)> = got
            .iter()
            .map(|d| (d.mount.as_str(), d.used_bytes, d.total_bytes, d.percent))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/", 75, 100, 75.0),
                ("/data", 60, 100, 60.0),
                ("/srv", 0, 10, 0.0),
            ]
        );
    }

    #[test]
    fn interface_list_excludes_loopback_and_caps() {
        let i = |name: &str, rx, tx| InterfaceIn {
            name: name.into(),
            rx_bytes: rx,
            tx_bytes: tx,
        };
        let (rx, tx, list) = interface_list(vec![
            i("eth1", 5, 6),
            i("lo", 1000, 1000),
            i("eth0", 1, 2),
            i("bad\nname", 10, 10),
        ]);
        assert_eq!((rx, tx), (16, 18));
        let names: Vec<&str> = list.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["eth0", "eth1"]);

        let many: Vec<InterfaceIn> = (0..300u64)
            .map(|n| i(&format!("veth{n:03}"), n, 0))
            .collect();
        let (rx, _, list) = interface_list(many);
        assert_eq!(rx, (0..300).sum::<u64>());
        assert_eq!(list.len(), MAX_LISTED);
        assert_eq!(list[0].name, "veth044", "the busiest are kept");
    }

    #[test]
    fn percentages_are_clamped_and_finite() {
        assert_eq!(percent(f64::NAN), 0.0);
        assert_eq!(percent(120.0), 100.0);
        assert_eq!(percent(-1.0), 0.0);
        assert_eq!(ratio_percent(5, 0), 0.0);
        assert_eq!(ratio_percent(1, 4), 25.0);
        assert_eq!(ratio_percent(1, 3), 33.33);
        assert_eq!(percent(f64::from(20.689_655_f32)), 20.69);
        assert_eq!(non_negative(f64::INFINITY), 0.0);
    }
}
