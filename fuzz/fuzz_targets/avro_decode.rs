//! Record bytes from a topic, decoded as every record type by `Wire::decode_known` with a
//! registry wire (as in a role with `schema-registry-url`, ids resolved first), so both
//! framings are read: single-object (`C3 01`, fingerprint) and Confluent (`00`, schema
//! id), the ids being this process's own, every catalog schema served by the registry,
//! foreign schemas that read directly and foreign ones only apache-avro resolves. Also
//! the generic `Wire::decode_value` of the export and dead-letter tools. Beyond not panicking:
//! * the header decides the type: the bytes decode as one record type at most;
//! * a decoded record is what apache-avro's resolution (the reference path) reads;
//! * it re-encodes in both framings and decodes to itself (NaN payloads and -0.0 kept).
#![no_main]

use fleet_fuzz::*;
use fleet_schemas::codec::{Record, RegistryFraming};
use fleet_schemas::fixtures::comparable;
use fleet_schemas::*;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: { init("avro_decode"); framing(); }, |data: &[u8]| {
    let framing = framing();
    let decoded = [
        check::<MetricReport>(data, framing),
        check::<Heartbeat>(data, framing),
        check::<AgentEvent>(data, framing),
        check::<AlertEvent>(data, framing),
        check::<AgentLifecycle>(data, framing),
        check::<CommandEvent>(data, framing),
        check::<SoftwareInventory>(data, framing),
        check::<TicketEvent>(data, framing),
        check::<RuleEvent>(data, framing),
        check::<DeadLetter>(data, framing),
        check::<SampleBatch>(data, framing),
    ];
    let types = decoded.iter().filter(|d| **d).count();
    assert!(types <= 1, "decoded as {types} record types");
    let _ = wire().decode_value(data);
});

/// Decodes `data` as a `T`; true if it is one.
fn check<T: Record + std::fmt::Debug>(data: &[u8], framing: &RegistryFraming) -> bool {
    let Ok(record) = wire().decode_known::<T>(data) else {
        return false;
    };
    let want = comparable(&record);
    // The datum held every item it announced (the direct path reads only what is there),
    // so the reference path's allocations are bounded here.
    match T::codec().decode_resolving(Some(framing), data) {
        Ok(reference) => assert_eq!(comparable(&reference), want, "reference path differs"),
        Err(e) => panic!("the direct path read {record:?}, the reference refused: {e}"),
    }
    let single = T::codec()
        .encode_single_object(&record)
        .expect("a decoded record encodes");
    let back = wire()
        .decode_known::<T>(&single)
        .expect("re-encoded single-object decodes");
    assert_eq!(comparable(&back), want, "single-object round trip");
    let id = framing.id_of(T::FULL_NAME).expect("registered");
    let confluent = T::codec()
        .encode_confluent(id, &record)
        .expect("a decoded record encodes");
    let back = wire()
        .decode_known::<T>(&confluent)
        .expect("re-encoded Confluent decodes");
    assert_eq!(comparable(&back), want, "Confluent round trip");
    true
}
