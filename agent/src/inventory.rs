//! Software inventory: the installed packages, sent at start and whenever the list
//! changed.
//!
//! The list comes from `dpkg-query -W -f='${Package}\t${Version}\t${Architecture}\n'`,
//! else `rpm -qa --qf '%{NAME}\t%{VERSION}-%{RELEASE}\t%{ARCH}\n'`, else it is empty with
//! source `none`. [`parse_packages`] reads either format (garbage lines skipped), sorted
//! and without duplicates; [`digest`] fingerprints the list, and the inventory loop reads
//! it every `inventory-interval` and sends it (socket or `POST .../inventory`,
//! retried until acknowledged) only when the digest differs from the last one sent.
//! Only the digest is kept between reads, not the list.

use std::time::Duration;

use chrono::Utc;
use fleet_schemas::api::{InventoryIn, PackageIn};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::retry::{deliver_until_acked, Backoff, Delivered};
use crate::stats::{inc, Stats};
use crate::transport::Transport;
use std::sync::Arc;

/// Longest a package manager query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest accepted name, version or architecture (longer lines are garbage).
const MAX_FIELD: usize = 512;

/// The package managers tried, in order: (source, program, arguments).
const SOURCES: [(&str, &str, &[&str]); 2] = [
    (
        "dpkg",
        "dpkg-query",
        &["-W", "-f=${Package}\\t${Version}\\t${Architecture}\\n"],
    ),
    (
        "rpm",
        "rpm",
        &[
            "-qa",
            "--qf",
            "%{NAME}\\t%{VERSION}-%{RELEASE}\\t%{ARCH}\\n",
        ],
    ),
];

/// Parses `name\tversion\tarch` lines. Lines without exactly three tab-separated fields,
/// with an empty name or version, or with control characters are skipped. An empty
/// architecture or rpm's `(none)` becomes `None`. The result is sorted, duplicates
/// removed.
pub fn parse_packages(text: &str) -> Vec<PackageIn> {
    let mut packages: Vec<PackageIn> = text
        .lines()
        .filter_map(|line| {
            let mut fields = line.trim_end_matches('\r').split('\t');
            let (name, version, arch) = (fields.next()?, fields.next()?, fields.next()?);
            if fields.next().is_some() {
                return None;
            }
            let ok = |f: &str| f.len() <= MAX_FIELD && !f.chars().any(char::is_control);
            let (name, version, arch) = (name.trim(), version.trim(), arch.trim());
            if name.is_empty() || version.is_empty() || !ok(name) || !ok(version) || !ok(arch) {
                return None;
            }
            Some(PackageIn {
                name: name.to_owned(),
                version: version.to_owned(),
                arch: (!arch.is_empty() && arch != "(none)").then(|| arch.to_owned()),
            })
        })
        .collect();
    packages.sort();
    packages.dedup();
    packages
}

/// A fingerprint of a package list (FNV-1a, 64 bit, over every field), to tell whether
/// it changed. Not a security digest.
pub fn digest(packages: &[PackageIn]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for p in packages {
        feed(p.name.as_bytes());
        feed(b"\t");
        feed(p.version.as_bytes());
        feed(b"\t");
        feed(p.arch.as_deref().unwrap_or("").as_bytes());
        feed(b"\n");
    }
    hash
}

/// Reads the inventory now: the first package manager that runs and succeeds, else an
/// empty list with source `none`.
pub async fn read_inventory() -> InventoryIn {
    for (source, program, args) in SOURCES {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("LC_ALL", "C")
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        match tokio::time::timeout(QUERY_TIMEOUT, command.output()).await {
            Ok(Ok(out)) if out.status.success() => {
                return InventoryIn {
                    collected_at: Utc::now(),
                    source: source.to_owned(),
                    packages: parse_packages(&String::from_utf8_lossy(&out.stdout)),
                };
            }
            Ok(Ok(out)) => debug!(program, status = %out.status, "Package query failed."),
            Ok(Err(e)) => debug!(program, error = %e, "Package query cannot run."),
            Err(_) => warn!(program, timeout = ?QUERY_TIMEOUT, "Package query timed out."),
        }
    }
    InventoryIn {
        collected_at: Utc::now(),
        source: "none".to_owned(),
        packages: Vec::new(),
    }
}

/// Reads the inventory at start and every `interval`; sends it when its digest differs
/// from the last one sent (always at start). A send is retried until acknowledged; a
/// newer read never waits behind an older one, since a change is only looked for once
/// the previous list went out.
pub(crate) async fn inventory_loop(
    transport: Arc<dyn Transport>,
    agent_id: String,
    interval: Duration,
    mut backoff: Backoff,
    auth_retry: Duration,
    stats: Arc<Stats>,
    cancel: CancellationToken,
) {
    let mut sent: Option<u64> = None;
    loop {
        let inventory = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            i = read_inventory() => i,
        };
        let d = digest(&inventory.packages);
        if sent != Some(d) {
            let delivered = deliver_until_acked(
                "inventory",
                || transport.inventory(&agent_id, &inventory),
                &mut backoff,
                auth_retry,
                &cancel,
            )
            .await;
            match delivered {
                Delivered::Acked => {
                    inc(&stats.inventories_sent);
                    info!(source = %inventory.source, packages = inventory.packages.len(), "Inventory sent.");
                    sent = Some(d);
                }
                // Refused for good: do not resend the same list every interval.
                Delivered::Rejected => sent = Some(d),
                Delivered::Stopped => return,
            }
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dpkg_and_rpm_lines_and_skips_garbage() {
        let text = "zlib1g\t1:1.2.13.dfsg-1\tamd64\n\
                    adduser\t3.134\tall\n\
                    \n\
                    garbage without tabs\n\
                    too\tmany\tfields\there\n\
                    \t1.0\tamd64\n\
                    noversion\t\tamd64\n\
                    gpg-pubkey\t4520afa9-50ab914c\t(none)\n\
                    bash\t5.2.15-2+b7\tamd64\r\n\
                    adduser\t3.134\tall\n\
                    ctl\t1\u{7}\tx\n\
                    libc6\t2.36-9\t\n";
        let p = parse_packages(text);
        let names: Vec<&str> = p.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["adduser", "bash", "gpg-pubkey", "libc6", "zlib1g"]);
        assert_eq!(p[1].version, "5.2.15-2+b7");
        assert_eq!(p[1].arch.as_deref(), Some("amd64"));
        assert_eq!(p[2].arch, None, "rpm (none)");
        assert_eq!(p[3].arch, None, "empty arch");
        assert!(parse_packages("").is_empty());
    }

    #[test]
    fn digest_changes_with_any_field() {
        let a = parse_packages("a\t1\tamd64\nb\t2\tall\n");
        let same = parse_packages("b\t2\tall\na\t1\tamd64\n");
        assert_eq!(
            digest(&a),
            digest(&same),
            "order of the input does not matter"
        );
        assert_ne!(
            digest(&a),
            digest(&parse_packages("a\t1\tamd64\nb\t3\tall\n"))
        );
        assert_ne!(digest(&a), digest(&parse_packages("a\t1\tamd64\n")));
        assert_ne!(
            digest(&a),
            digest(&parse_packages("a\t1\ti386\nb\t2\tall\n"))
        );
    }

    #[tokio::test]
    async fn reads_this_machine() {
        let inv = read_inventory().await;
        assert!(["dpkg", "rpm", "none"].contains(&inv.source.as_str()));
        assert!(inv.packages.windows(2).all(|w| w[0] < w[1]), "sorted");
        if inv.source == "none" {
            assert!(inv.packages.is_empty());
        }
    }
}
