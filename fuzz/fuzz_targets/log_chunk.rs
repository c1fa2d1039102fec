//! A stored chunk of the embedded event log (`event-log/src/embedded.rs`), corrupted: the
//! first 8 bytes are the offset it is stored under (little-endian), the rest its bytes.
//! Beyond not panicking (a corrupt chunk is an error, never a misread):
//! * the records read carry consecutive offsets from the base, as many as the chunk
//!   announces, and recovery's next offset is the one after the last;
//! * the format has no slack: writing the records read gives back the same bytes.
#![no_main]

use fleet_event_log::embedded::fuzzing::{chunk_end, chunk_records, encode_chunk};
use fleet_fuzz::init;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: init("log_chunk"), |data: &[u8]| {
    let Some((base, bytes)) = data.split_first_chunk::<8>() else {
        return;
    };
    let base = u64::from_le_bytes(*base);
    let end = chunk_end(base, bytes);
    let Some(records) = chunk_records(base, bytes) else {
        return;
    };
    let count = u64::try_from(records.len()).expect("fits");
    assert_eq!(end, base.checked_add(count), "recovery's next offset");
    for (i, r) in records.iter().enumerate() {
        assert_eq!(Some(r.0), base.checked_add(i as u64), "offsets are consecutive");
        assert!(i64::try_from(r.0).is_ok(), "offsets are Kafka offsets (i64)");
    }
    let again: Vec<(i64, Option<&[u8]>, &[u8])> =
        records.iter().map(|&(_, ts, k, v)| (ts, k, v)).collect();
    assert_eq!(encode_chunk(&again).expect("re-encodes"), bytes, "canonical");
});
