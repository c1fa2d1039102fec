//! A stored time-series block (`fleet_timeseries::chunk`), corrupted or hostile. Beyond
//! not panicking and staying within the allocation limits:
//! * a decoded block is canonical (building it again from its columns changes nothing),
//!   and `header` reads the same counts, range and names from the bytes;
//! * decode -> encode -> decode gives the same block (every f64 bit pattern) and encoding
//!   is deterministic;
//! * merging a block with itself changes nothing; its rollups encode and decode to
//!   themselves.
#![no_main]

use fleet_fuzz::init;
use fleet_timeseries::{chunk, rollup, Block};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("ts_chunk"), |data: &[u8]| {
    let header = chunk::header(data);
    let Ok(block) = chunk::decode(data) else {
        return;
    };
    let header = header.expect("the header of a block that decodes");
    assert_eq!(header.timestamps, block.timestamps().len());
    assert_eq!(header.samples, block.sample_count());
    assert_eq!(header.time_range, block.time_range());
    let names: Vec<&str> = block.series().iter().map(|s| s.name()).collect();
    assert_eq!(header.series, names);
    let rebuilt = Block::new(block.timestamps().to_vec(), block.series().to_vec())
        .expect("a decoded block is valid");
    assert_eq!(rebuilt, block, "a decoded block is canonical");
    let bytes = chunk::encode(&block);
    let again = chunk::decode(&bytes).expect("a re-encoded block decodes");
    assert_eq!(again, block);
    assert_eq!(chunk::encode(&again), bytes, "deterministic");
    assert_eq!(chunk::merge(&block, &block).expect("merge"), block);
    for width in [1, 300_000_000, 3_600_000_000] {
        if let Ok(set) = rollup::compute(&block, width) {
            let rows: u64 = set.series().iter().flat_map(|s| s.rows()).map(|r| r.count).sum();
            assert_eq!(rows, block.sample_count() as u64, "every sample in one bucket");
            let back = rollup::decode(&rollup::encode(&set)).expect("rollups decode");
            assert_eq!(back, set);
        }
    }
});
