//! Samples (structured input: timestamps on a jittered grid or anywhere, a few series,
//! decimal, integer or arbitrary f64 values) made into a block as the time-series store
//! makes them. The block holds exactly the samples given (the later of two for the same
//! series and time), encodes and decodes to itself bit for bit, and its rollups at any
//! width count every sample once and decode to themselves.
#![no_main]

use std::collections::BTreeMap;

use fleet_fuzz::init;
use fleet_timeseries::{chunk, rollup, Block};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    start: i64,
    step: u32,
    width: u32,
    samples: Vec<SampleIn>,
}

#[derive(Debug, Arbitrary)]
struct SampleIn {
    slot: u16,
    jitter: i16,
    series: u8,
    time: TimeIn,
    value: ValueIn,
}

#[derive(Debug, Arbitrary)]
enum TimeIn {
    Grid,
    Anywhere(i64),
}

#[derive(Debug, Arbitrary)]
enum ValueIn {
    Decimal(i32, u8),
    Int(i64),
    Bits(u64),
    Same,
}

const NAMES: [&str; 6] = [
    "cpu.percent",
    "memory.used_bytes",
    "disk.percent:/",
    "disk.percent:/var",
    "load.per_core",
    "service.up:nginx",
];

fuzz_target!(init: init("ts_roundtrip"), |input: Input| {
    let mut want: BTreeMap<(String, i64), u64> = BTreeMap::new();
    let samples: Vec<(i64, String, f64)> = input
        .samples
        .iter()
        .map(|s| {
            let ts = match s.time {
                TimeIn::Grid => input
                    .start
                    .wrapping_add(i64::from(s.slot) * i64::from(input.step))
                    .wrapping_add(i64::from(s.jitter)),
                TimeIn::Anywhere(t) => t,
            };
            let name = match NAMES.get(usize::from(s.series)) {
                Some(n) => (*n).to_owned(),
                None => format!("custom.m{}", s.series % 16),
            };
            let value = match s.value {
                ValueIn::Decimal(m, e) => f64::from(m) / 10f64.powi(i32::from(e % 8)),
                ValueIn::Int(n) => n as f64,
                ValueIn::Bits(b) => f64::from_bits(b),
                ValueIn::Same => 42.5,
            };
            want.insert((name.clone(), ts), value.to_bits());
            (ts, name, value)
        })
        .collect();
    let Ok(block) = Block::from_samples(samples) else {
        return;
    };
    let got: BTreeMap<(String, i64), u64> = block
        .samples()
        .map(|(n, t, v)| ((n.to_owned(), t), v.to_bits()))
        .collect();
    assert_eq!(got, want, "the block holds the samples given");
    assert_eq!(block.sample_count(), want.len());
    let bytes = chunk::encode(&block);
    assert_eq!(chunk::decode(&bytes).expect("decodes"), block);
    for width in [1, 300_000_000, i64::from(input.width) + 1] {
        let Ok(set) = rollup::compute(&block, width) else {
            continue;
        };
        let rows: u64 = set.series().iter().flat_map(|s| s.rows()).map(|r| r.count).sum();
        assert_eq!(rows, want.len() as u64, "every sample in one bucket");
        assert_eq!(rollup::decode(&rollup::encode(&set)).expect("decodes"), set);
    }
});
