//! A length or count larger than the datum is refused before apache-avro decodes it.
//! apache-avro reserves what a string length or an array or map count announces before
//! reading the items, so a record of a few dozen bytes could make a process ask for
//! gigabytes and abort: `fleetstream export` (the generic `decode_value`), and any
//! consumer reading a writer schema that does not read directly. Found by
//! `fuzz/fuzz_targets/avro_decode.rs` (a 60-byte record asked for 3.7 GB).
//!
//! Measured as the growth of the process's peak virtual memory (`VmPeak`, which counts a
//! reservation even if it is never touched), in a test binary of its own.

use std::collections::HashMap;
use std::sync::Arc;

use fleet_schemas::codec::{self, LookupError, Record, RegistryFraming, SchemaLookup};
use fleet_schemas::{fixtures, MetricReport};

const T0: i64 = 1_763_900_000_123_456;

fn vm_peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPeak")
}

fn varint(n: i64) -> Vec<u8> {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    let mut out = Vec::new();
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    out
}

/// `bytes` with the first occurrence of `what` replaced by `with`.
fn replace(bytes: &[u8], what: &[u8], with: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(what.len())
        .position(|w| w == what)
        .expect("pattern in the datum");
    [&bytes[..at], with, &bytes[at + what.len()..]].concat()
}

#[derive(Debug)]
struct Registry(HashMap<u32, String>);

#[async_trait::async_trait]
impl SchemaLookup for Registry {
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        self.0.get(&id).cloned().ok_or(LookupError {
            message: format!("schema {id} not found"),
            retriable: false,
        })
    }
}

#[test]
fn a_length_or_count_beyond_the_datum_is_refused_before_anything_is_reserved() {
    let mut report = fixtures::metric_report("t", "a", T0);
    report.cpu_per_core = vec![1.5];
    let single = MetricReport::codec()
        .encode_single_object(&report)
        .expect("encode");
    let datum = &single[codec::HEADER_LEN..];
    // Another producer's MetricReport with `event_id` as bytes (the same datum): only
    // apache-avro's resolution reads it.
    let file = codec::Catalog::get()
        .current(MetricReport::FULL_NAME)
        .expect("current")
        .file;
    let text = codec::AVSC_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, t)| *t)
        .expect("avsc");
    let mut json: serde_json::Value = serde_json::from_str(text).expect("json");
    for f in json["fields"].as_array_mut().expect("fields") {
        if f["name"] == "event_id" {
            f["type"] = "bytes".into();
        }
    }
    let framing = RegistryFraming::new(
        [],
        Some(Arc::new(Registry(HashMap::from([(77, json.to_string())])))),
    )
    .expect("framing");
    assert!(!resolved(&framing, 77).reads_directly());
    let confluent = |datum: &[u8]| [&[0, 0, 0, 0, 77][..], datum].concat();

    // The valid record reads on both paths.
    let (_, value) = codec::Wire::plain()
        .decode_value(&single)
        .expect("generic decode");
    assert!(matches!(value, apache_avro::types::Value::Record(_)));
    let back = MetricReport::codec()
        .decode_with(Some(&framing), &confluent(datum))
        .expect("resolved decode");
    assert_eq!(back, report);

    // 2^24 per-core values, and an event id of 2^28 bytes, in a record of ~600 bytes.
    let one_item = [varint(1), 1.5f64.to_le_bytes().to_vec(), varint(0)].concat();
    let many_items = [varint(1 << 24), 1.5f64.to_le_bytes().to_vec(), varint(0)].concat();
    let huge_list = replace(&single, &one_item, &many_items);
    let id_len = varint(report.event_id.len() as i64);
    let huge_string = replace(&single, &id_len, &varint(1 << 28));
    let before = vm_peak_kib();
    for hostile in [&huge_list, &huge_string] {
        assert!(codec::Wire::plain().decode_value(hostile).is_err());
        let datum = &hostile[codec::HEADER_LEN..];
        assert!(MetricReport::codec()
            .decode_with(Some(&framing), &confluent(datum))
            .is_err());
    }
    let grown_mib = (vm_peak_kib() - before) / 1024;
    assert!(
        grown_mib < 64,
        "decoding four hostile records of ~{} bytes reserved {grown_mib} MiB",
        huge_list.len()
    );
}

/// Fetches the writer schema of `id` through the framing's lookup (as the consumer runtime
/// does before decoding), so that synchronous decodes know it.
fn resolved(framing: &RegistryFraming, id: u32) -> &'static codec::KnownSchema {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(framing.resolve(id))
        .expect("fetched")
}
