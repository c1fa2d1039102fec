//! Blocks: round trips, determinism, canonical form, merge, header, and decoding of
//! corrupt bytes.

use fleet_schemas::fixtures::{fleet_reports, metric_report, SplitMix64};
use fleet_schemas::samples::for_each_sample;
use fleet_timeseries::{chunk, Block, ChunkError, Series};

const T0: i64 = 1_790_000_000_000_000;

fn bits(b: &Block) -> Vec<(String, i64, u64)> {
    b.samples()
        .map(|(s, t, v)| (s.to_owned(), t, v.to_bits()))
        .collect()
}

fn round_trip(b: &Block) -> Vec<u8> {
    let bytes = chunk::encode(b);
    let back = chunk::decode(&bytes).expect("decodes");
    assert_eq!(&back, b);
    assert_eq!(bits(&back), bits(b));
    assert_eq!(
        chunk::encode(&back),
        bytes,
        "re-encoding gives the same bytes"
    );
    bytes
}

/// One hour of `agents` agents of the realistic fleet, a block each.
fn agent_hour(seed: u64, agents: usize) -> Vec<Block> {
    let mut by_agent: std::collections::BTreeMap<String, Vec<(i64, String, f64)>> =
        Default::default();
    for r in fleet_reports(seed, agents, T0, 10_000_000, 360) {
        let e = by_agent.entry(r.agent_id.clone()).or_default();
        for_each_sample(&r, |m, s, v| {
            e.push((r.occurred_at, fleet_schemas::samples::series_name(m, s), v))
        });
    }
    by_agent
        .into_values()
        .map(|s| Block::from_samples(s).expect("block"))
        .collect()
}

#[test]
fn realistic_fleet_blocks_round_trip_and_are_small() {
    let blocks = agent_hour(11, 20);
    assert_eq!(blocks.len(), 20);
    let mut bytes = 0;
    let mut samples = 0;
    for b in &blocks {
        assert!(b.timestamps().len() == 360);
        assert!(b.series().len() >= 17);
        bytes += round_trip(b).len();
        samples += b.sample_count();
    }
    // Not a benchmark: a loose bound that catches a broken encoder (raw f64 + i64 would
    // be 16 bytes a sample).
    assert!(
        (bytes as f64) < samples as f64 * 2.0,
        "{bytes} bytes for {samples} samples"
    );
}

#[test]
fn edge_values_round_trip_bit_exactly() {
    let edge = [
        -0.0,
        0.0,
        5e-324,
        -5e-324,
        f64::MIN_POSITIVE,
        2.225_073_858_507_201e-308, // largest subnormal
        1e300,
        -1e300,
        f64::MAX,
        f64::MIN,
        0.1 + 0.2,
        1.0 / 3.0,
        123_456_789.012_345_68,
        9_007_199_254_740_993.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0xfff0_0000_0000_0001), // a negative signalling NaN
        42.5,
    ];
    // One series per edge value, constant; one series with all of them; one alternating
    // with a plain decimal.
    let ts: Vec<i64> = (0..edge.len() as i64)
        .map(|i| T0 + i * 10_000_000)
        .collect();
    let mut series: Vec<Series> = edge
        .iter()
        .enumerate()
        .map(|(i, &v)| Series::new(format!("edge.{i:02}"), vec![Some(v); ts.len()]))
        .collect();
    series.push(Series::new("all", edge.iter().map(|&v| Some(v)).collect()));
    series.push(Series::new(
        "mixed",
        edge.iter()
            .enumerate()
            .map(|(i, &v)| Some(if i % 2 == 0 { v } else { 12.34 }))
            .collect(),
    ));
    let b = Block::new(ts, series).expect("block");
    round_trip(&b);
    // Extreme timestamps too.
    let b = Block::from_samples([(i64::MIN, "a", 1.0), (i64::MAX, "a", 2.0), (0, "b", 3.0)])
        .expect("block");
    round_trip(&b);
    round_trip(&Block::default());
}

#[test]
fn encoding_is_deterministic() {
    let blocks = agent_hour(5, 3);
    for b in &blocks {
        assert_eq!(chunk::encode(b), chunk::encode(b));
        // A block built in another order from the same samples is the same block.
        let mut samples: Vec<(i64, String, f64)> =
            b.samples().map(|(s, t, v)| (t, s.to_owned(), v)).collect();
        samples.reverse();
        let other = Block::from_samples(samples).expect("block");
        assert_eq!(&other, b);
        assert_eq!(chunk::encode(&other), chunk::encode(b));
    }
    // Pinned bytes of a small block: a change of format shows up here (bump the version).
    let b = Block::from_samples([
        (T0, "cpu.percent", 42.5),
        (T0 + 10_000_000, "cpu.percent", 43.25),
        (T0, "disk.percent:/", 20.0),
    ])
    .expect("block");
    let bytes = chunk::encode(&b);
    assert_eq!(
        bytes,
        [
            1, 0, // version, flags (not compressed)
            2, 2, 3, // timestamps, series, samples
            128, 128, 175, 162, 219, 255, 173, 6, // first timestamp (zigzag)
            128, 173, 226, 4, // last - first
            0, 11, 99, 112, 117, 46, 112, 101, 114, 99, 101, 110, 116, // "cpu.percent"
            0, 14, 100, 105, 115, 107, 46, 112, 101, 114, 99, 101, 110, 116, 58,
            47, // "disk.percent:/"
            5, 0, 128, 218, 196, 9, // timestamps: step mode, 0, +10 s
            0, 0, 3, 5, 180, 66, 150, 1, // cpu: dense, decimal 10^-2, step 4250 +75
            1, 1, 0, 2, 0, 4, // disk: bitmap 0b01, decimal 10^1, constant 2
        ]
    );
}

#[test]
fn canonical_form_and_invalid_input() {
    // Series sorted, empty series and empty timestamps dropped.
    let b = Block::new(
        vec![1, 2, 3],
        vec![
            Series::new("z", vec![Some(1.0), None, None]),
            Series::new("a", vec![None, None, Some(2.0)]),
            Series::new("empty", vec![None, None, None]),
        ],
    )
    .expect("block");
    assert_eq!(b.timestamps(), &[1, 3]);
    let names: Vec<&str> = b.series().iter().map(Series::name).collect();
    assert_eq!(names, ["a", "z"]);
    assert_eq!(b.sample_count(), 2);
    assert_eq!(b.points("z").collect::<Vec<_>>(), [(1, 1.0)]);
    assert_eq!(b.points("nope").count(), 0);

    let err = |r: Result<Block, ChunkError>| matches!(r, Err(ChunkError::Invalid(_)));
    assert!(err(Block::new(vec![2, 1], vec![])));
    assert!(err(Block::new(vec![1, 1], vec![])));
    assert!(err(Block::new(vec![1], vec![Series::new("a", vec![])])));
    assert!(err(Block::new(
        vec![1],
        vec![
            Series::new("a", vec![Some(1.0)]),
            Series::new("a", vec![Some(2.0)])
        ]
    )));
    assert!(err(Block::new(
        vec![1],
        vec![Series::new("x".repeat(5000), vec![Some(1.0)])]
    )));
    assert!(matches!(
        Block::new((0..2_000_000).collect(), vec![]),
        Err(ChunkError::TooLarge { .. })
    ));
}

#[test]
fn from_samples_keeps_the_later_duplicate() {
    let b = Block::from_samples([
        (10, "a", 1.0),
        (20, "a", 2.0),
        (10, "a", 3.0),
        (10, "b", 4.0),
    ])
    .expect("block");
    assert_eq!(b.points("a").collect::<Vec<_>>(), [(10, 3.0), (20, 2.0)]);
    assert_eq!(b.points("b").collect::<Vec<_>>(), [(10, 4.0)]);
}

#[test]
fn merge_takes_the_union_and_newer_values_win() {
    let older = Block::from_samples([
        (10, "cpu", 1.0),
        (20, "cpu", 2.0),
        (20, "disk:/mnt", 50.0),
        (30, "cpu", 3.0),
    ])
    .expect("block");
    let newer = Block::from_samples([
        (20, "cpu", 20.0), // a correction of an existing sample
        (25, "cpu", 2.5),  // a late sample between two others
        (25, "mem", 7.0),  // a new series
        (40, "cpu", -0.0), // after the end
    ])
    .expect("block");
    let m = chunk::merge(&older, &newer).expect("merge");
    assert_eq!(m.timestamps(), &[10, 20, 25, 30, 40]);
    assert_eq!(
        m.points("cpu")
            .map(|(t, v)| (t, v.to_bits()))
            .collect::<Vec<_>>(),
        [(10, 1.0), (20, 20.0), (25, 2.5), (30, 3.0), (40, -0.0)]
            .map(|(t, v): (i64, f64)| (t, v.to_bits()))
    );
    assert_eq!(m.points("disk:/mnt").collect::<Vec<_>>(), [(20, 50.0)]);
    assert_eq!(m.points("mem").collect::<Vec<_>>(), [(25, 7.0)]);
    // The same as building one block from all samples, newer last.
    let all: Vec<_> = older
        .samples()
        .chain(newer.samples())
        .map(|(s, t, v)| (t, s.to_owned(), v))
        .collect();
    assert_eq!(m, Block::from_samples(all).expect("block"));
    // Merging with an empty block or with itself changes nothing.
    assert_eq!(
        chunk::merge(&older, &Block::default()).expect("merge"),
        older
    );
    assert_eq!(
        chunk::merge(&Block::default(), &older).expect("merge"),
        older
    );
    assert_eq!(chunk::merge(&older, &older).expect("merge"), older);
    round_trip(&m);
}

#[test]
fn header_reads_counts_range_and_names() {
    let b = agent_hour(3, 1).remove(0);
    let bytes = chunk::encode(&b);
    let h = chunk::header(&bytes).expect("header");
    assert_eq!(h.version, chunk::FORMAT_VERSION);
    assert_eq!(h.timestamps, b.timestamps().len());
    assert_eq!(h.samples, b.sample_count());
    assert_eq!(h.time_range, b.time_range());
    let names: Vec<String> = b.series().iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(h.series, names);
    let empty = chunk::header(&chunk::encode(&Block::default())).expect("header");
    assert_eq!(
        (empty.timestamps, empty.samples, empty.time_range),
        (0, 0, None)
    );
}

#[test]
fn constant_fixture_blocks_are_tiny() {
    let mut samples = Vec::new();
    for k in 0..360 {
        let r = metric_report("t", "a", T0 + k * 10_000_000);
        for_each_sample(&r, |m, s, v| {
            samples.push((r.occurred_at, fleet_schemas::samples::series_name(m, s), v))
        });
    }
    let series: std::collections::BTreeSet<&str> =
        samples.iter().map(|(_, s, _)| s.as_str()).collect();
    let series = series.len();
    let b = Block::from_samples(samples).expect("block");
    let bytes = round_trip(&b);
    // An hour of a constant series costs a few bytes (its header and first value), however
    // many series the fixture report has.
    assert!(
        bytes.len() < 16 * series,
        "{} bytes for {series} series",
        bytes.len()
    );
}

/// Decoding corrupted, truncated or random bytes returns (`Ok` or `Err`) without panicking;
/// whatever decodes is a valid block that re-encodes.
#[test]
fn corrupt_bytes_never_panic() {
    let mut rng = SplitMix64::new(0xC0FFEE);
    let mut seeds: Vec<Vec<u8>> = agent_hour(9, 4).iter().map(chunk::encode).collect();
    // Small uncompressed blocks too, whose structure the mutations reach directly.
    for n in 1..6 {
        let b = Block::from_samples((0..n).flat_map(|i| {
            [
                (i * 7, format!("s{}", i % 3), i as f64 * 0.5),
                (i * 7 + 1, "gorilla".to_owned(), 1.0 / (i as f64 + 3.0)),
            ]
        }))
        .expect("block");
        seeds.push(chunk::encode(&b));
    }
    let mut decoded = 0;
    for round in 0..6_000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        match rng.below(5) {
            0 => {
                let cut = rng.below(bytes.len() as u64 + 1) as usize;
                bytes.truncate(cut);
            }
            1 => {
                for _ in 0..=rng.below(4) {
                    let i = rng.below(bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << rng.below(8);
                }
            }
            2 => {
                let i = rng.below(bytes.len() as u64) as usize;
                bytes[i] = rng.next_u64() as u8;
            }
            3 => {
                let i = rng.below(bytes.len() as u64 + 1) as usize;
                let junk: Vec<u8> = (0..rng.below(16)).map(|_| rng.next_u64() as u8).collect();
                bytes.splice(i..i, junk);
            }
            _ => {
                let n = rng.below(64) as usize;
                bytes = (0..n).map(|_| rng.next_u64() as u8).collect();
                if !bytes.is_empty() && rng.chance(0.5) {
                    bytes[0] = chunk::FORMAT_VERSION;
                }
            }
        }
        let _ = chunk::header(&bytes);
        if let Ok(b) = chunk::decode(&bytes) {
            decoded += 1;
            let again = chunk::decode(&chunk::encode(&b)).expect("a decoded block re-encodes");
            assert_eq!(again, b);
        }
    }
    // Some mutations (a flipped bit in a value) still decode; most do not.
    assert!(decoded > 0);
}

#[test]
fn claims_of_huge_counts_are_refused_before_allocating() {
    // version, flags, 2^20 timestamps, 5 series (over MAX_CELLS), ...
    let mut bytes = vec![chunk::FORMAT_VERSION, 0, 0x80, 0x80, 0x40, 5, 5];
    bytes.extend([0, 0]);
    assert!(matches!(
        chunk::decode(&bytes),
        Err(ChunkError::TooLarge { .. })
    ));
    // 1,000 timestamps and 1 series whose payload is missing.
    let bytes = [chunk::FORMAT_VERSION, 0, 0xe8, 0x07, 1, 0xe8, 0x07, 0, 10];
    assert!(chunk::decode(&bytes).is_err());
    // A zstd flag with an announced length far past what the frame holds.
    let bytes = [
        chunk::FORMAT_VERSION,
        1,
        1,
        1,
        1,
        0,
        0,
        0x80,
        0x80,
        0x80,
        0x10,
        0x28,
        0xb5,
    ];
    assert!(chunk::decode(&bytes).is_err());
}
