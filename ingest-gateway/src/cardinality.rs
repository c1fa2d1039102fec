//! The per-tenant bound on active series of the standard write protocols.
//!
//! Every distinct series (metric name and labels) becomes a column in the time-series
//! store, a row in the series index and state in every consumer, so a client inventing
//! label values (a request id, a timestamp in a label) would grow all of them without
//! end. A tenant may have at most `max-series-per-tenant` series *active* at a gateway:
//! written within the last `window`. A sample of an active series is always accepted; a
//! sample of a new series past the bound is refused and the rest of the request written,
//! and the answer names the limit (see `standard.rs`: 400 for remote-write and Influx,
//! which their senders drop instead of retrying; an OTLP partial success). A series
//! unused for the window frees its place.
//!
//! Memory is bounded: per tenant a map of at most `max-series-per-tenant` 64-bit series
//! hashes (keyed with a random per-process key, so series cannot be crafted to collide)
//! ordered by last use, so expiry pops from the front. Each tenant has its own lock:
//! one tenant's large request never waits on another's. Each gateway instance counts the
//! series written through it; behind a load balancer that spreads a tenant's requests,
//! each instance sees about all of them, so the bound holds per instance.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use fleet_schemas::LabeledSample;
use hashlink::LinkedHashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The `[series-limits]` settings of the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SeriesLimits {
    /// Most series one tenant may have active (written within `window`) through the
    /// standard write protocols; 0 disables the bound.
    pub max_series_per_tenant: usize,
    /// How long a series counts as active after its last sample arrived.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            max_series_per_tenant: 1_000_000,
            window: Duration::from_secs(3600),
        }
    }
}

/// Series hash → last use (µs), least recently used first.
type Active = LinkedHashMap<u64, i64>;

/// The active series of each tenant (see the module docs).
#[derive(Debug)]
pub struct SeriesTracker {
    limits: SeriesLimits,
    window_micros: i64,
    hasher: RandomState,
    tenants: Mutex<HashMap<String, Arc<Mutex<Active>>>>,
}

/// What [`SeriesTracker::admit`] refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refused {
    /// Samples removed from the request.
    pub samples: usize,
    /// Distinct new series they belonged to.
    pub series: usize,
}

impl SeriesTracker {
    /// A tracker with these limits.
    pub fn new(limits: &SeriesLimits) -> SeriesTracker {
        SeriesTracker {
            limits: *limits,
            window_micros: fleet_schemas::time::duration_micros(limits.window),
            hasher: RandomState::new(),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The configured limits.
    pub fn limits(&self) -> &SeriesLimits {
        &self.limits
    }

    fn series_hash(&self, s: &LabeledSample) -> u64 {
        let mut h = self.hasher.build_hasher();
        s.metric.hash(&mut h);
        s.labels.hash(&mut h);
        h.finish()
    }

    /// Keeps the samples of `tenant` whose series is active or fits under the bound at
    /// `now_micros` (the gateway's clock), recording them as used; removes the others and
    /// says how many went.
    pub fn admit(
        &self,
        tenant: &str,
        samples: &mut Vec<LabeledSample>,
        now_micros: i64,
    ) -> Refused {
        let max = self.limits.max_series_per_tenant;
        if max == 0 || samples.is_empty() {
            return Refused::default();
        }
        let hashes: Vec<u64> = samples.iter().map(|s| self.series_hash(s)).collect();
        let active = {
            let mut tenants = self.tenants.lock();
            match tenants.get(tenant) {
                Some(a) => a.clone(),
                None => {
                    let a = Arc::new(Mutex::new(Active::new()));
                    tenants.insert(tenant.to_owned(), a.clone());
                    a
                }
            }
        };
        let cutoff = now_micros.saturating_sub(self.window_micros);
        let mut refused_series: Vec<u64> = Vec::new();
        let keep: Vec<bool> = {
            let mut active = active.lock();
            while active.front().is_some_and(|(_, at)| *at < cutoff) {
                active.pop_front();
            }
            if active.capacity() > 4 * active.len() + 16 {
                active.shrink_to_fit();
            }
            hashes
                .iter()
                .map(|h| {
                    if active.contains_key(h) || active.len() < max {
                        // Moves a known series to the back (most recently used).
                        active.insert(*h, now_micros);
                        true
                    } else {
                        if !refused_series.contains(h) && refused_series.len() < 1024 {
                            refused_series.push(*h);
                        }
                        false
                    }
                })
                .collect()
        };
        let before = samples.len();
        let mut flags = keep.iter();
        samples.retain(|_| flags.next().copied().unwrap_or(true));
        let refused = Refused {
            samples: before - samples.len(),
            series: refused_series.len(),
        };
        if refused.samples > 0 {
            crate::metrics::series_refused(refused.samples);
        }
        refused
    }

    /// Series active for `tenant` now (expired ones are dropped on the next write).
    pub fn active(&self, tenant: &str) -> usize {
        let tenants = self.tenants.lock();
        tenants.get(tenant).map_or(0, |a| a.lock().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleet_schemas::Label;

    const S: i64 = 1_000_000;

    fn sample(metric: &str, id: usize) -> LabeledSample {
        LabeledSample {
            metric: metric.into(),
            labels: vec![Label {
                name: "id".into(),
                value: id.to_string(),
            }],
            timestamp: 0,
            value: 1.0,
        }
    }

    fn tracker(max: usize) -> SeriesTracker {
        SeriesTracker::new(&SeriesLimits {
            max_series_per_tenant: max,
            window: Duration::from_secs(60),
        })
    }

    #[test]
    fn new_series_past_the_bound_are_refused_and_known_ones_kept() {
        let t = tracker(3);
        let mut first: Vec<_> = (0..3).map(|i| sample("m", i)).collect();
        assert_eq!(t.admit("a", &mut first, 0), Refused::default());
        assert_eq!(first.len(), 3);
        // Two samples of one new series and one of another, between known ones.
        let mut next = vec![
            sample("m", 0),
            sample("m", 7),
            sample("m", 1),
            sample("m", 7),
            sample("other", 0),
            sample("m", 2),
        ];
        let refused = t.admit("a", &mut next, S);
        assert_eq!(
            refused,
            Refused {
                samples: 3,
                series: 2
            }
        );
        assert_eq!(next, vec![sample("m", 0), sample("m", 1), sample("m", 2)]);
        assert_eq!(t.active("a"), 3);
    }

    #[test]
    fn tenants_are_bounded_separately() {
        let t = tracker(2);
        let mut a: Vec<_> = (0..5).map(|i| sample("m", i)).collect();
        assert_eq!(t.admit("a", &mut a, 0).samples, 3);
        let mut b: Vec<_> = (0..2).map(|i| sample("m", i)).collect();
        assert_eq!(t.admit("b", &mut b, 0).samples, 0);
        assert_eq!((t.active("a"), t.active("b")), (2, 2));
    }

    #[test]
    fn a_series_unused_for_the_window_frees_its_place() {
        let t = tracker(2);
        let mut first = vec![sample("m", 0), sample("m", 1)];
        t.admit("a", &mut first, 0);
        // Series 1 keeps being written; series 0 goes quiet.
        let mut again = vec![sample("m", 1)];
        t.admit("a", &mut again, 30 * S);
        let mut new = vec![sample("m", 2)];
        assert_eq!(
            t.admit("a", &mut new, 45 * S).samples,
            1,
            "0 is still active"
        );
        let mut new = vec![sample("m", 2)];
        assert_eq!(t.admit("a", &mut new, 61 * S).samples, 0, "0 expired");
        assert_eq!(t.active("a"), 2);
    }

    #[test]
    fn zero_disables_the_bound() {
        let t = tracker(0);
        let mut many: Vec<_> = (0..100).map(|i| sample("m", i)).collect();
        assert_eq!(t.admit("a", &mut many, 0), Refused::default());
        assert_eq!(many.len(), 100);
    }
}
