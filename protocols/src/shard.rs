//! Series shards: the key of `fleet.samples.v1` is `{tenant}/{shard}`
//! ([`fleet_schemas::SampleBatch::key_for`]), where the shard is a stable hash of the
//! series (metric name and sorted labels) modulo a shard count the gateway fixes. A series
//! always hashes to the same shard, so its samples stay in one partition and in order;
//! a tenant's series spread over every shard.
//!
//! The hash is XXH3-64 (a specified algorithm: the same on every build and platform) over
//! the name and each label name and value, each followed by a `0xFF` byte (which UTF-8
//! never contains, so `a`+`bc` and `ab`+`c` differ).

use fleet_schemas::{Label, LabeledSample};
use xxhash_rust::xxh3::Xxh3;

/// The stable 64-bit hash of a series.
pub fn series_hash(metric: &str, labels: &[Label]) -> u64 {
    let mut h = Xxh3::new();
    h.update(metric.as_bytes());
    h.update(&[0xFF]);
    for l in labels {
        h.update(l.name.as_bytes());
        h.update(&[0xFF]);
        h.update(l.value.as_bytes());
        h.update(&[0xFF]);
    }
    h.digest()
}

/// The shard of a series among `shards` (0 is taken as 1).
pub fn shard_of(metric: &str, labels: &[Label], shards: u32) -> u32 {
    // The remainder is below `shards`, a u32.
    (series_hash(metric, labels) % u64::from(shards.max(1))) as u32
}

/// Splits `samples` into one group per shard (ascending shard), keeping the request order
/// within each group, so each series' samples keep their order.
pub fn split_by_shard(samples: Vec<LabeledSample>, shards: u32) -> Vec<(u32, Vec<LabeledSample>)> {
    let mut groups: std::collections::BTreeMap<u32, Vec<LabeledSample>> = Default::default();
    for s in samples {
        groups
            .entry(shard_of(&s.metric, &s.labels, shards))
            .or_default()
            .push(s);
    }
    groups.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(metric: &str, instance: &str, t: i64) -> LabeledSample {
        LabeledSample {
            metric: metric.into(),
            labels: vec![Label {
                name: "instance".into(),
                value: instance.into(),
            }],
            timestamp: t,
            value: 1.0,
        }
    }

    #[test]
    fn a_series_keeps_its_shard_and_its_order_and_series_spread() {
        let mut samples = Vec::new();
        for t in 0..5 {
            for i in 0..64 {
                samples.push(sample("up", &format!("host-{i}"), t));
            }
        }
        let groups = split_by_shard(samples, 8);
        assert!(
            groups.len() > 4,
            "64 series use most of 8 shards: {}",
            groups.len()
        );
        let total: usize = groups.iter().map(|g| g.1.len()).sum();
        assert_eq!(total, 320);
        for (shard, group) in &groups {
            for s in group {
                assert_eq!(shard_of(&s.metric, &s.labels, 8), *shard);
            }
            let mut last = std::collections::HashMap::new();
            for s in group {
                let prev = last.insert(s.labels[0].value.clone(), s.timestamp);
                assert!(prev.is_none_or(|p| p < s.timestamp), "order kept");
            }
        }
        assert_eq!(shard_of("up", &[], 0), 0);
    }

    const PINNED_UP: u64 = 10_675_507_204_603_677_264;

    #[test]
    fn the_hash_is_stable_and_separates_fields() {
        // Pinned: the shard of a series must not change between builds.
        assert_eq!(series_hash("up", &[]), series_hash("up", &[]));
        let ab = series_hash(
            "a",
            &[Label {
                name: "b".into(),
                value: "c".into(),
            }],
        );
        let a_bc = series_hash(
            "ab",
            &[Label {
                name: "".into(),
                value: "c".into(),
            }],
        );
        assert_ne!(ab, a_bc);
        assert_eq!(series_hash("up", &[]), PINNED_UP);
    }
}
