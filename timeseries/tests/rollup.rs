//! Rollups: equal to `fleet_timeseries::aggregate_buckets`, round trips,
//! determinism, merge, and decoding of corrupt bytes.

use fleet_schemas::fixtures::{fleet_reports, SplitMix64};
use fleet_schemas::samples::{for_each_sample, series_name};
use fleet_timeseries::aggregate_buckets;
use fleet_timeseries::{rollup, Block, ChunkError, RollupRow, RollupSet, SeriesRollup};

const T0: i64 = 1_790_000_000_000_000;
const FIVE_MIN: i64 = 300_000_000;
const HOUR: i64 = 3_600_000_000;

/// `hours` of `agents` agents of the realistic fleet, one block per agent.
fn fleet_blocks(seed: u64, agents: usize, hours: usize) -> Vec<Block> {
    let mut by_agent: std::collections::BTreeMap<String, Vec<(i64, String, f64)>> =
        Default::default();
    for r in fleet_reports(seed, agents, T0 + 1_234_567, 10_000_000, 360 * hours) {
        let e = by_agent.entry(r.agent_id.clone()).or_default();
        for_each_sample(&r, |m, s, v| e.push((r.occurred_at, series_name(m, s), v)));
    }
    by_agent
        .into_values()
        .map(|s| Block::from_samples(s).expect("block"))
        .collect()
}

fn round_trip(set: &RollupSet) -> Vec<u8> {
    let bytes = rollup::encode(set);
    let back = rollup::decode(&bytes).expect("decodes");
    assert_eq!(&back, set);
    assert_eq!(
        rollup::encode(&back),
        bytes,
        "re-encoding gives the same bytes"
    );
    bytes
}

#[test]
fn rollups_equal_aggregate_buckets_bit_for_bit() {
    let mut blocks = fleet_blocks(21, 6, 2);
    // Awkward values too: float sums that are not decimals, -0.0 first, NaN-free extremes.
    blocks.push(
        Block::from_samples([
            (-1, "neg", -0.0),
            (0, "neg", 0.1),
            (1, "neg", 0.2),
            (FIVE_MIN - 1, "neg", 1e300),
            (FIVE_MIN, "neg", -1e300),
            (-FIVE_MIN - 7, "neg", 5e-324),
        ])
        .expect("block"),
    );
    for width in [FIVE_MIN, HOUR, 60_000_000, 7] {
        for b in &blocks {
            let set = rollup::compute(b, width).expect("rollup");
            assert_eq!(set.width_micros(), width);
            assert_eq!(set.series().len(), b.series().len());
            for s in b.series() {
                let expected = aggregate_buckets(b.points(s.name()), width);
                let rows = set.get(s.name()).expect("series").rows();
                assert_eq!(rows.len(), expected.len());
                for (r, e) in rows.iter().zip(&expected) {
                    assert_eq!(r.start_micros, e.start_micros);
                    assert_eq!(r.min.to_bits(), e.min.to_bits(), "min {}", s.name());
                    assert_eq!(r.max.to_bits(), e.max.to_bits(), "max {}", s.name());
                    assert_eq!(r.sum.to_bits(), e.sum.to_bits(), "sum {}", s.name());
                    assert_eq!(r.count, e.count);
                    assert_eq!(r.last.to_bits(), e.last.to_bits());
                    assert_eq!(r.avg().to_bits(), e.avg.to_bits());
                    // The time of last is the latest sample of the bucket.
                    let latest = b
                        .points(s.name())
                        .filter(|(t, _)| t.div_euclid(width) * width == r.start_micros)
                        .map(|(t, _)| t)
                        .max();
                    assert_eq!(Some(r.last_micros), latest);
                }
            }
            round_trip(&set);
        }
    }
}

#[test]
fn one_series_decodes_and_computes_like_the_whole_set() {
    for b in &fleet_blocks(31, 4, 2) {
        for width in rollup::DEFAULT_WIDTHS_MICROS {
            let set = rollup::compute(b, width).expect("rollup");
            let bytes = rollup::encode(&set);
            let mut names: Vec<&str> = set.series().iter().map(|s| s.name()).collect();
            names.reverse();
            names.insert(1, "no.such");
            let picked = rollup::decode_series(&bytes, &names).expect("decodes");
            assert_eq!(picked.len(), names.len());
            for (name, got) in names.iter().zip(&picked) {
                assert_eq!(got.as_ref(), set.get(name), "{name}");
                if let Some(s) = got {
                    let one = rollup::compute_series(name, b.points(name), width)
                        .expect("rollup of one series");
                    assert_eq!(&one, s, "{name}: compute_series equals compute");
                }
            }
            assert!(rollup::compute_series("x", [], width)
                .expect("no samples")
                .rows()
                .is_empty());
        }
    }
}

#[test]
fn rollup_encoding_is_compact_and_deterministic() {
    let blocks = fleet_blocks(4, 5, 1);
    for b in &blocks {
        for width in rollup::DEFAULT_WIDTHS_MICROS {
            let set = rollup::compute(b, width).expect("rollup");
            let bytes = round_trip(&set);
            assert_eq!(bytes, rollup::encode(&set));
            // Loose bound that catches a broken encoder: 6 fields of 8 bytes a row raw.
            assert!(
                bytes.len() < set.row_count() * 24,
                "{} bytes, {} rows",
                bytes.len(),
                set.row_count()
            );
        }
    }
    round_trip(&RollupSet::new(FIVE_MIN, vec![]).expect("empty set"));
}

fn row(start: i64, v: f64) -> RollupRow {
    RollupRow {
        start_micros: start,
        min: v,
        max: v,
        sum: v,
        count: 1,
        last: v,
        last_micros: start,
    }
}

#[test]
fn merge_later_wins_per_bucket() {
    let older = RollupSet::new(
        FIVE_MIN,
        vec![
            SeriesRollup::new("cpu", vec![row(0, 1.0), row(FIVE_MIN, 2.0)]),
            SeriesRollup::new("disk", vec![row(0, 9.0)]),
        ],
    )
    .expect("set");
    let newer = RollupSet::new(
        FIVE_MIN,
        vec![
            SeriesRollup::new("cpu", vec![row(FIVE_MIN, 20.0), row(3 * FIVE_MIN, 4.0)]),
            SeriesRollup::new("mem", vec![row(2 * FIVE_MIN, 5.0)]),
        ],
    )
    .expect("set");
    let m = rollup::merge(&older, &newer).expect("merge");
    assert_eq!(
        m.get("cpu").expect("cpu").rows(),
        &[row(0, 1.0), row(FIVE_MIN, 20.0), row(3 * FIVE_MIN, 4.0)]
    );
    assert_eq!(m.get("disk").expect("disk").rows(), &[row(0, 9.0)]);
    assert_eq!(m.get("mem").expect("mem").rows(), &[row(2 * FIVE_MIN, 5.0)]);
    round_trip(&m);
    let other = RollupSet::new(HOUR, vec![]).expect("set");
    assert!(matches!(
        rollup::merge(&older, &other),
        Err(ChunkError::Invalid(_))
    ));

    // The flow for late data: the stored rollups span two blocks; a late sample lands in
    // the first; its block is merged and rolled up again, and that set merged over the
    // stored one equals the rollup of every sample.
    let first =
        Block::from_samples([(10, "cpu", 1.0), (FIVE_MIN + 10, "cpu", 5.0)]).expect("block");
    let second = Block::from_samples([(HOUR + 10, "cpu", 7.0)]).expect("block");
    let late = Block::from_samples([(20, "cpu", 3.0)]).expect("block");
    let stored = rollup::merge(
        &rollup::compute(&first, FIVE_MIN).expect("rollup"),
        &rollup::compute(&second, FIVE_MIN).expect("rollup"),
    )
    .expect("merge");
    let redone = rollup::compute(
        &fleet_timeseries::chunk::merge(&first, &late).expect("merge"),
        FIVE_MIN,
    )
    .expect("rollup");
    let all = fleet_timeseries::chunk::merge(
        &fleet_timeseries::chunk::merge(&first, &second).expect("merge"),
        &late,
    )
    .expect("merge");
    let expected = rollup::compute(&all, FIVE_MIN).expect("rollup");
    assert_eq!(rollup::merge(&stored, &redone).expect("merge"), expected);
    assert_eq!(expected.get("cpu").expect("cpu").rows()[0].count, 2);
}

#[test]
fn invalid_sets_are_refused() {
    let bad = |rows: Vec<RollupRow>| RollupSet::new(FIVE_MIN, vec![SeriesRollup::new("a", rows)]);
    assert!(bad(vec![row(1, 1.0)]).is_err()); // not aligned
    assert!(bad(vec![row(FIVE_MIN, 1.0), row(0, 1.0)]).is_err()); // not ordered
    assert!(bad(vec![RollupRow {
        count: 0,
        ..row(0, 1.0)
    }])
    .is_err());
    assert!(bad(vec![RollupRow {
        last_micros: FIVE_MIN,
        ..row(0, 1.0)
    }])
    .is_err());
    assert!(RollupSet::new(0, vec![]).is_err());
    assert!(rollup::compute(&Block::default(), -5).is_err());
    let edge = Block::from_samples([(i64::MIN, "a", 1.0)]).expect("block");
    assert!(
        rollup::compute(&edge, 7).is_err(),
        "no aligned bucket start fits in i64"
    );
}

#[test]
fn corrupt_rollup_bytes_never_panic() {
    let mut rng = SplitMix64::new(77);
    let mut seeds: Vec<Vec<u8>> = fleet_blocks(8, 3, 1)
        .iter()
        .map(|b| rollup::encode(&rollup::compute(b, FIVE_MIN).expect("rollup")))
        .collect();
    seeds.push(rollup::encode(
        &RollupSet::new(
            FIVE_MIN,
            vec![SeriesRollup::new(
                "a",
                vec![row(0, 0.5), row(FIVE_MIN, 1.0 / 3.0)],
            )],
        )
        .expect("set"),
    ));
    for round in 0..4_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        match rng.below(3) {
            0 => bytes.truncate(rng.below(bytes.len() as u64 + 1) as usize),
            1 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            _ => {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next_u64() as u8;
            }
        }
        // Decoding some series only never panics either, and agrees with the whole set.
        let picked = rollup::decode_series(&bytes, &["cpu.percent", "a"]);
        if let Ok(set) = rollup::decode(&bytes) {
            let picked = picked.expect("what decodes whole decodes in part");
            assert_eq!(picked[0].as_ref(), set.get("cpu.percent"));
            assert_eq!(picked[1].as_ref(), set.get("a"));
            assert_eq!(
                rollup::decode(&rollup::encode(&set)).expect("re-encodes"),
                set
            );
        }
    }
}

#[test]
fn buckets_spanning_more_than_i64_max_round_trip() {
    // Found by fuzz/fuzz_targets/ts_roundtrip.rs: the encoder took the distance from the
    // first bucket in wrapping i64 arithmetic, so buckets further apart than i64::MAX µs
    // (a block with far-off timestamps) encoded to bytes that did not decode.
    for width in [1, FIVE_MIN, 3_600_000_000] {
        let lowest = i64::MIN.div_euclid(width).saturating_add(1) * width;
        let highest = (i64::MAX / width - 1) * width;
        let set = RollupSet::new(
            width,
            vec![
                SeriesRollup::new("a", vec![row(lowest, 1.0), row(0, 2.0), row(highest, 3.0)]),
                SeriesRollup::new("b", vec![row(highest, 4.0)]),
            ],
        )
        .expect("set");
        round_trip(&set);
        // The same from a block, as the store computes rollups.
        let block = Block::from_samples([
            (lowest, "a", 1.0),
            (-1, "a", 2.0),
            (highest + width - 1, "b", 3.0),
        ])
        .expect("block");
        round_trip(&rollup::compute(&block, width).expect("rollups"));
    }
}
