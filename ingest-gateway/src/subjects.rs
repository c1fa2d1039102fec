//! Bounds on the subjects one agent can make the pipeline track.
//!
//! Every distinct mount, interface, service or custom metric key (name and labels: each
//! label set is its own) becomes a series in the time-series store and state in the alert
//! evaluator, so an agent making names up would grow both without end. Two bounds, per kind of subject:
//!
//! * **Per report**: at most `max-<kind>-per-report` entries in one list; a longer list
//!   refuses the report, naming the list (checked in [`crate::validate::report`]).
//! * **Per agent**: at most `max-per-agent` distinct names of each kind seen within the
//!   last `window`. A report bringing a new name past that is refused, naming the
//!   field of the first such name; names already seen keep being accepted, and a name
//!   unused for the window frees its place. Refusals are counted in
//!   `fleet_gateway_subjects_refused_total` by kind.
//!
//! Memory is bounded: per agent and kind a map of at most `max-per-agent` 64-bit name
//! hashes (keyed with a random per-process key, so names cannot be crafted to collide)
//! ordered by last use, and at most `max-tracked-agents` agents (least recently reporting
//! forgotten first: an agent forgotten starts afresh). Each instance tracks the agents
//! that report to it.

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;

use fleet_schemas::MetricReport;
use hashlink::{LinkedHashMap, LruCache};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The `[subjects]` settings of the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SubjectLimits {
    /// Most disks in one report.
    pub max_disks_per_report: usize,
    /// Most network interfaces in one report.
    pub max_interfaces_per_report: usize,
    /// Most services in one report.
    pub max_services_per_report: usize,
    /// Most custom metrics in one report.
    pub max_custom_per_report: usize,
    /// Most distinct names of each kind one agent may use within `window`; 0
    /// disables the per-agent bound.
    pub max_per_agent: usize,
    /// How long a name counts after its last use.
    #[serde(with = "humantime_serde")]
    pub window: std::time::Duration,
    /// Most agents whose names an instance tracks (the least recently reporting are
    /// forgotten first).
    pub max_tracked_agents: usize,
}

impl Default for SubjectLimits {
    fn default() -> Self {
        SubjectLimits {
            max_disks_per_report: 256,
            max_interfaces_per_report: 256,
            max_services_per_report: 512,
            max_custom_per_report: 256,
            max_per_agent: 1024,
            window: std::time::Duration::from_secs(3600),
            max_tracked_agents: 20_000,
        }
    }
}

/// The kinds of subject, in the order of a report's lists.
const KINDS: [(&str, &str); 4] = [
    ("disks", "mount"),
    ("interfaces", "interface"),
    ("services", "service"),
    ("custom", "custom metric"),
];

/// Per kind: name hash → last use (µs), least recently used first.
type Seen = [LinkedHashMap<u64, i64>; 4];

/// The names each agent used recently (see the module docs).
#[derive(Debug)]
pub struct SubjectTracker {
    max_per_agent: usize,
    window_micros: i64,
    hasher: RandomState,
    agents: Mutex<LruCache<String, Seen>>,
}

impl SubjectTracker {
    /// A tracker with these limits.
    pub fn new(limits: &SubjectLimits) -> SubjectTracker {
        let agents = NonZeroUsize::new(limits.max_tracked_agents).map_or(1, NonZeroUsize::get);
        SubjectTracker {
            max_per_agent: limits.max_per_agent,
            window_micros: fleet_schemas::time::duration_micros(limits.window),
            hasher: RandomState::new(),
            agents: Mutex::new(LruCache::new(agents)),
        }
    }

    /// Admits the subject names of one report of `agent_id` at `now_micros` (the
    /// gateway's clock) and records them; or refuses the whole report, recording nothing:
    /// (field path within the report, reason).
    pub fn admit(
        &self,
        agent_id: &str,
        report: &MetricReport,
        now_micros: i64,
    ) -> Result<(), (String, String)> {
        if self.max_per_agent == 0 {
            return Ok(());
        }
        // Each kind's names (custom metrics sorted, so the field named on a refusal is the
        // same whatever the map's order). The field path is written only for a refusal.
        let mut custom: Vec<&str> = report.custom.keys().map(String::as_str).collect();
        custom.sort_unstable();
        let names: [Vec<&str>; 4] = [
            report.disks.iter().map(|d| d.mount.as_str()).collect(),
            report.interfaces.iter().map(|n| n.name.as_str()).collect(),
            report.services.iter().map(|s| s.name.as_str()).collect(),
            custom,
        ];
        let field = |kind: usize, i: usize| match kind {
            0 => format!("disks[{i}].mount"),
            1 => format!("interfaces[{i}].name"),
            2 => format!("services[{i}].name"),
            _ => format!("custom.{}", names[3][i]),
        };
        let hashes: Vec<Vec<u64>> = names
            .iter()
            .map(|list| list.iter().map(|n| self.hasher.hash_one(n)).collect())
            .collect();
        let cutoff = now_micros.saturating_sub(self.window_micros);
        let mut agents = self.agents.lock();
        if agents.get(agent_id).is_none() {
            agents.insert(agent_id.to_owned(), Seen::default());
        }
        let Some(seen) = agents.get_mut(agent_id) else {
            return Ok(());
        };
        // Check every kind first: a refused report records nothing.
        for (k, map) in seen.iter_mut().enumerate() {
            while map.front().is_some_and(|(_, at)| *at < cutoff) {
                map.pop_front();
            }
            if map.capacity() > 4 * map.len() + 16 {
                map.shrink_to_fit();
            }
            let mut new: Vec<u64> = Vec::new();
            for (i, h) in hashes[k].iter().enumerate() {
                if map.contains_key(h) || new.contains(h) {
                    continue;
                }
                new.push(*h);
                if map.len().saturating_add(new.len()) > self.max_per_agent {
                    let (list, noun) = KINDS[k];
                    crate::metrics::subjects_refused(list);
                    return Err((
                        field(k, i),
                        format!(
                            "a new {noun} name past the limit of {} distinct {noun} names per agent within {} s (subjects.max-per-agent); the report was refused",
                            self.max_per_agent,
                            self.window_micros / 1_000_000
                        ),
                    ));
                }
            }
        }
        for (k, map) in seen.iter_mut().enumerate() {
            for h in &hashes[k] {
                map.insert(*h, now_micros);
            }
        }
        Ok(())
    }

    /// Number of agents tracked now.
    pub fn agents(&self) -> usize {
        self.agents.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::{fixtures, DiskUsage, ServiceStatus};

    const S: i64 = 1_000_000;

    fn with_mounts(names: impl IntoIterator<Item = String>) -> MetricReport {
        let mut r = fixtures::metric_report("t", "a", 0);
        r.interfaces.clear();
        r.services.clear();
        r.custom.clear();
        r.disks = names
            .into_iter()
            .map(|mount| DiskUsage {
                mount,
                used_bytes: 1,
                total_bytes: 2,
                percent: 50.0,
            })
            .collect();
        r
    }

    fn limits(max_per_agent: usize, max_tracked_agents: usize) -> SubjectLimits {
        SubjectLimits {
            max_per_agent,
            window: std::time::Duration::from_secs(60),
            max_tracked_agents,
            ..SubjectLimits::default()
        }
    }

    #[test]
    fn new_names_past_the_limit_are_refused_and_a_refusal_records_nothing() {
        let t = SubjectTracker::new(&limits(3, 10));
        let mounts = |v: &[&str]| with_mounts(v.iter().map(|s| (*s).to_owned()));
        assert_eq!(t.admit("a", &mounts(&["/", "/var", "/"]), 0), Ok(()));
        let (field, message) = t
            .admit("a", &mounts(&["/", "/x", "/y"]), S)
            .expect_err("two new, one place");
        assert_eq!(field, "disks[2].mount");
        assert!(message.contains("max-per-agent"), "{message}");
        // The refused report took no place: one new name still fits.
        assert_eq!(t.admit("a", &mounts(&["/x"]), 2 * S), Ok(()));
        assert!(t.admit("a", &mounts(&["/y"]), 3 * S).is_err());
        // Names already seen are always fine; other agents and kinds are separate.
        assert_eq!(t.admit("a", &mounts(&["/", "/var", "/x"]), 4 * S), Ok(()));
        assert_eq!(t.admit("b", &mounts(&["/y", "/z", "/w"]), 4 * S), Ok(()));
        let mut services = mounts(&[]);
        services.services = (0..3)
            .map(|i| ServiceStatus {
                name: format!("svc{i}"),
                status: "running".into(),
                pid: None,
            })
            .collect();
        assert_eq!(t.admit("a", &services, 4 * S), Ok(()));
        let mut custom = mounts(&[]);
        custom.custom = (0..4).map(|i| (format!("m{i}"), 1.0)).collect();
        assert_eq!(
            t.admit("a", &custom, 4 * S).map_err(|e| e.0),
            Err("custom.m3".to_owned())
        );
        // Each label set of a custom metric is a subject of its own.
        let mut labelled = mounts(&[]);
        labelled.custom = (0..4).map(|i| (format!("m{{q=\"{i}\"}}"), 1.0)).collect();
        assert_eq!(
            t.admit("b", &labelled, 4 * S).map_err(|e| e.0),
            Err("custom.m{q=\"3\"}".to_owned())
        );
    }

    #[test]
    fn names_unused_for_the_window_free_their_place() {
        let t = SubjectTracker::new(&limits(2, 10));
        let one = |n: &str| with_mounts([n.to_owned()]);
        assert_eq!(t.admit("a", &one("/a"), 0), Ok(()));
        assert_eq!(t.admit("a", &one("/b"), 30 * S), Ok(()));
        assert!(t.admit("a", &one("/c"), 40 * S).is_err());
        // "/a" was last used at 0: gone after 60 s; "/b" (30 s) is still there.
        assert_eq!(t.admit("a", &one("/c"), 61 * S), Ok(()));
        assert!(t.admit("a", &one("/d"), 62 * S).is_err());
        // Use refreshes a name.
        assert_eq!(t.admit("a", &one("/b"), 85 * S), Ok(()));
        assert_eq!(
            t.admit("a", &one("/d"), 122 * S),
            Ok(()),
            "/c went at 121 s"
        );
        assert!(t.admit("a", &one("/e"), 123 * S).is_err(), "/b is recent");
    }

    /// Memory stays bounded under a churn of fresh names and fresh agents.
    #[test]
    fn memory_is_bounded_under_churn() {
        let t = SubjectTracker::new(&limits(100, 50));
        for round in 0..200 {
            let agent = format!("agent-{round}");
            let names = (0..150).map(|i| format!("/r{round}/{i}"));
            assert!(t.admit(&agent, &with_mounts(names), round * S).is_err());
            let names = (0..100).map(|i| format!("/r{round}/{i}"));
            assert_eq!(t.admit(&agent, &with_mounts(names), round * S), Ok(()));
            assert!(t.agents() <= 50);
        }
        let agents = t.agents.lock();
        let held: usize = agents
            .iter()
            .map(|(_, s)| s.iter().map(|m| m.len()).sum::<usize>())
            .sum();
        assert!(held <= 50 * 100, "{held} names held");
    }
}
