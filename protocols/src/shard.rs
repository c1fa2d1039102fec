//! Source shards: the key of `fleet.samples.v1` is `{tenant}/{shard}`
//! ([`fleet_schemas::SampleBatch::key_for`]), where the shard is a stable hash of the
//! series' *source* ([`fleet_schemas::series::Source`]: its `job` and `instance` labels
//! when either is present, else its `host` label, else the whole series) modulo a shard
//! count the gateway fixes. One Prometheus target's (or one host's) series hash to one
//! shard, so they land on one partition, in order, and share their scrape timestamps: the
//! time-series engine stores them as one unit with one timestamp column. A series keeps
//! its shard (its source labels are part of it); a tenant's sources spread over every
//! shard.
//!
//! The hash is XXH3-64 (a specified algorithm: the same on every build and platform) over
//! the name and each label name and value, each followed by a `0xFF` byte (which UTF-8
//! never contains, so `a`+`bc` and `ab`+`c` differ): the metric name and all labels for a
//! series that is its own source, an empty name and the source labels otherwise.

use fleet_schemas::series::Source;
use fleet_schemas::{Label, LabeledSample};
use xxhash_rust::xxh3::Xxh3;

fn hash<'l>(metric: &str, labels: impl IntoIterator<Item = &'l Label>) -> u64 {
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

/// The stable 64-bit hash of a series.
pub fn series_hash(metric: &str, labels: &[Label]) -> u64 {
    hash(metric, labels)
}

/// The stable 64-bit hash of a series' source: [`series_hash`] when the series is its
/// own source.
pub fn source_hash(metric: &str, labels: &[Label]) -> u64 {
    match Source::of(labels) {
        Source::Series => series_hash(metric, labels),
        source => hash("", source.labels()),
    }
}

/// The shard of a series (of its source) among `shards` (0 is taken as 1).
pub fn shard_of(metric: &str, labels: &[Label], shards: u32) -> u32 {
    // The remainder is below `shards`, a u32.
    (source_hash(metric, labels) % u64::from(shards.max(1))) as u32
}

/// Splits `samples` into one group per shard (ascending shard), keeping the request order
/// within each group, so each series' samples keep their order and each source's samples
/// are in one group.
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

    fn series(metric: &str, pairs: &[(&str, &str)]) -> LabeledSample {
        fleet_schemas::fixtures::labeled_sample(metric, pairs, 0, 1.0)
    }

    #[test]
    fn a_sources_series_share_a_shard_and_sources_spread() {
        let mut samples = Vec::new();
        for i in 0..64 {
            let instance = format!("host-{i}:9100");
            for cpu in ["0", "1", "2"] {
                samples.push(series(
                    "node_cpu_seconds_total",
                    &[("cpu", cpu), ("instance", &instance), ("job", "node")],
                ));
            }
            samples.push(series("up", &[("instance", &instance), ("job", "node")]));
            // Telegraf: the host tag is the source.
            let host = format!("web-{i}");
            samples.push(series(
                "cpu_usage_idle",
                &[("cpu", "cpu0"), ("host", &host)],
            ));
            samples.push(series("mem_used", &[("host", &host)]));
        }
        let groups = split_by_shard(samples, 8);
        assert!(groups.len() > 4, "128 sources use most of 8 shards");
        let mut shard_of_source: std::collections::HashMap<String, u32> = Default::default();
        for (shard, group) in &groups {
            for s in group {
                let source = s.unit_id();
                let prev = shard_of_source.insert(source.clone(), *shard);
                assert!(
                    prev.is_none_or(|p| p == *shard),
                    "{source} in shards {prev:?} and {shard}"
                );
            }
        }
        assert_eq!(shard_of_source.len(), 128, "64 targets and 64 hosts");
        // Without a source label, series of one metric spread.
        let spread: std::collections::HashSet<u32> = (0..64)
            .map(|i| shard_of("up", &series("up", &[("zone", &i.to_string())]).labels, 8))
            .collect();
        assert!(spread.len() > 4);
        // The source labels alone decide: job+instance, then host.
        let target = series("a", &[("instance", "i"), ("job", "j"), ("x", "1")]);
        let same = series("b", &[("host", "h"), ("instance", "i"), ("job", "j")]);
        assert_eq!(
            source_hash(&target.metric, &target.labels),
            source_hash(&same.metric, &same.labels)
        );
    }

    const PINNED_UP: u64 = 10_675_507_204_603_677_264;
    const PINNED_TARGET: u64 = 3_487_056_457_202_976_155;

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
        assert_eq!(source_hash("up", &[]), PINNED_UP);
        let target = series("up", &[("instance", "a:9100"), ("job", "node")]);
        assert_eq!(source_hash(&target.metric, &target.labels), PINNED_TARGET);
    }
}
