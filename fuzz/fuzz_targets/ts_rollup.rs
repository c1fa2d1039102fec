//! A stored rollup set (`fleet_timeseries::rollup`), corrupted or hostile. Beyond not
//! panicking and staying within the allocation limits: a decoded set is valid (building
//! it again checks every row), decode -> encode -> decode gives the same set (floats by
//! their bits), encoding is deterministic, and merging a set with itself changes nothing.
#![no_main]

use fleet_fuzz::init;
use fleet_timeseries::{rollup, RollupSet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("ts_rollup"), |data: &[u8]| {
    let Ok(set) = rollup::decode(data) else {
        return;
    };
    let rebuilt = RollupSet::new(set.width_micros(), set.series().to_vec())
        .expect("a decoded set is valid");
    assert_eq!(rebuilt, set);
    let bytes = rollup::encode(&set);
    let again = rollup::decode(&bytes).expect("a re-encoded set decodes");
    assert_eq!(again, set);
    assert_eq!(rollup::encode(&again), bytes, "deterministic");
    assert_eq!(rollup::merge(&set, &set).expect("merge"), set);
});
