//! What the fuzz targets share: the fixed clock, the checks of a refusal and of a
//! written record, the schema registry of the Avro target, and the seed corpus
//! ([`seeds`]).
//!
//! Every target starts with [`init`]: run with `FLEET_FUZZ_WRITE_SEEDS=<dir>`, a target
//! binary replaces its seeds in `<dir>/<target>/` (`seed-*`; inputs that once failed a
//! target, `regression-*`, stay) and exits. `scripts/fuzz.sh seeds` regenerates
//! `fuzz/corpus/` that way, so no second build of the crates is needed.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use fleet_schemas::api::{ErrorBody, ErrorDetail, ItemError};
use fleet_schemas::codec::{
    self, Catalog, LookupError, Record, RegistryFraming, SchemaLookup, Wire,
};
use serde::Serialize;

pub mod seeds;

/// The gateway's clock in the targets (µs; 2025-11-23T12:13:20Z): fixed, so an input
/// means the same on every run and the seeds stay inside the accepted time window.
pub const NOW: i64 = 1_763_900_000_000_000;

/// Writes this target's seeds and exits when `FLEET_FUZZ_WRITE_SEEDS` names a directory.
pub fn init(target: &str) {
    let Some(dir) = std::env::var_os("FLEET_FUZZ_WRITE_SEEDS") else {
        return;
    };
    let dir = std::path::Path::new(&dir).join(target);
    let seeds = seeds::for_target(target);
    assert!(!seeds.is_empty(), "no seeds for {target}");
    std::fs::create_dir_all(&dir).expect("create the seed directory");
    // Seeds are `seed-*`; other files there (inputs that once failed) stay.
    for entry in std::fs::read_dir(&dir).expect("read the seed directory") {
        let path = entry.expect("entry").path();
        if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with("seed-")) {
            std::fs::remove_file(&path).expect("remove an old seed");
        }
    }
    for (name, bytes) in &seeds {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
    eprintln!("{target}: {} seeds in {}", seeds.len(), dir.display());
    std::process::exit(0);
}

/// A value as JSON, for comparisons that ignore map order (NaN becomes null).
pub fn json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).expect("serializes to JSON")
}

/// A refusal the client can act on: one of the `allowed` statuses, a code, a message and
/// the field to blame; a 422 lists the refused items, the first one named as the field;
/// and the body survives the trip through JSON (what the agent reads).
pub fn assert_refusal(status: u16, e: &ErrorDetail, allowed: &[u16]) {
    assert!(allowed.contains(&status), "status {status}: {e:?}");
    assert!(!e.code.is_empty() && !e.message.is_empty(), "{e:?}");
    let field = e.field.as_deref().unwrap_or_default();
    assert!(!field.is_empty(), "a refusal names the field: {e:?}");
    if status == 422 {
        assert_eq!(e.code, "invalid_batch");
        let first = e.items.first().expect("a 422 lists the refused items");
        assert_eq!(field, first.field);
    }
    let body = ErrorBody { error: e.clone() };
    let text = serde_json::to_string(&body).expect("error body serializes");
    let back: ErrorBody = serde_json::from_str(&text).expect("error body parses");
    assert_eq!(back, body);
}

/// The items of a batch of `len` that were refused: each names an item of the batch
/// (`list[i].field`), in order, and `accepted` + refused = `len`.
pub fn assert_batch(list: &str, len: usize, accepted: usize, rejected: &[ItemError]) {
    assert_eq!(accepted + rejected.len(), len, "every item is accounted for");
    let mut last = None;
    for item in rejected {
        assert!(item.index < len);
        assert!(last < Some(item.index), "refusals in order, once each");
        last = Some(item.index);
        let prefix = format!("{list}[{}].", item.index);
        assert!(item.field.starts_with(&prefix), "{item:?}");
        assert!(!item.message.is_empty());
    }
}

/// A checked record is what the gateway writes: it encodes (no 500 after validation) and
/// reads back as itself.
pub fn assert_writes<T: Record>(rec: &T) {
    let bytes = T::codec()
        .encode_single_object(rec)
        .expect("a checked record encodes");
    let back = T::codec()
        .decode_with(None, &bytes)
        .expect("a written record decodes");
    assert_eq!(json(&back), json(rec));
}

/// A name the gateway documents: 1 to `max` bytes without control characters.
pub fn assert_name(what: &str, v: &str, max: usize) {
    assert!(
        !v.is_empty() && v.len() <= max && !v.chars().any(char::is_control),
        "{what} = {v:?}"
    );
}

/// A count the gateway turned from an unsigned number into a signed field.
pub fn assert_count(what: &str, v: i64) {
    assert!(v >= 0, "{what} = {v}");
}

/// A time inside the window the gateway accepts (default configuration) around [`NOW`].
pub fn assert_in_window(what: &str, micros: i64) {
    let cfg = fleet_ingest_gateway::GatewayConfig::default();
    let ahead = fleet_schemas::time::duration_micros(cfg.max_future_skew);
    let behind = fleet_schemas::time::duration_micros(cfg.max_age);
    assert!(
        (NOW - behind..=NOW + ahead).contains(&micros),
        "{what} = {micros} outside the window"
    );
}

/// Event ids are UUIDs.
pub fn assert_uuid(what: &str, v: &str) {
    assert!(uuid::Uuid::parse_str(v).is_ok(), "{what} = {v:?}");
}

// ------------------------------------------------------------------------- Protocols

/// The limits the protocol targets parse with: small, so inputs of a few KB reach them.
pub fn protocol_limits() -> fleet_protocols::Limits {
    fleet_protocols::Limits {
        max_body_bytes: 1 << 16,
        max_samples: 64,
        max_series: 32,
        max_labels_per_series: 8,
        max_label_name_bytes: 32,
        max_label_value_bytes: 64,
        max_metric_name_bytes: 64,
    }
}

/// A protocol parser's answer: a refusal names a field and is a 400 or a 413; accepted
/// samples are inside every limit, their names in the Prometheus charsets, their labels
/// sorted, unique and non-empty.
pub fn assert_protocol(
    result: &Result<fleet_protocols::Parsed, fleet_protocols::ProtocolError>,
    limits: &fleet_protocols::Limits,
) {
    use fleet_protocols::labels::{is_label_name, is_metric_name};
    let parsed = match result {
        Err(e) => {
            assert!([400, 413].contains(&e.status()), "{e}");
            assert!(!e.field().is_empty() && !e.to_string().is_empty(), "{e:?}");
            return;
        }
        Ok(p) => p,
    };
    assert!(parsed.samples.len() <= limits.max_samples);
    assert!(parsed.series <= limits.max_series);
    for s in &parsed.samples {
        assert!(
            is_metric_name(&s.metric) && s.metric.len() <= limits.max_metric_name_bytes,
            "{s:?}"
        );
        assert!(s.labels.len() < limits.max_labels_per_series, "{s:?}");
        for l in &s.labels {
            assert!(
                is_label_name(&l.name) && l.name.len() <= limits.max_label_name_bytes,
                "{s:?}"
            );
            assert!(
                !l.value.is_empty() && l.value.len() <= limits.max_label_value_bytes,
                "{s:?}"
            );
        }
        assert!(
            s.labels.windows(2).all(|w| w[0].name < w[1].name),
            "sorted, unique: {s:?}"
        );
    }
}

// ------------------------------------------------------------------------------ Avro

/// Schema id the Avro target's registry framing writes for record `i` of [`record_names`].
pub fn own_id(i: usize) -> u32 {
    1 + u32::try_from(i).expect("few record types")
}

/// Registry ids of every schema in the catalog (current and released), `100 + i`.
pub const CATALOG_IDS: u32 = 100;
/// Registry ids of foreign schemas that read directly (ours plus fields), `200 + i`.
pub const FOREIGN_DIRECT_IDS: u32 = 200;
/// Registry ids of foreign schemas only apache-avro's resolution reads (fields in
/// reverse order), `300 + i`.
pub const FOREIGN_RESOLVED_IDS: u32 = 300;
/// The id whose lookup fails as an unreachable registry would.
pub const UNREACHABLE_ID: u32 = 503;

/// The record types' full names, in a fixed order.
pub fn record_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Catalog::get()
        .all()
        .iter()
        .map(|s| s.full_name.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The current schema of `full_name` as JSON.
fn current_json(full_name: &str) -> serde_json::Value {
    let file = Catalog::get().current(full_name).expect("current").file;
    let text = codec::AVSC_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, t)| *t)
        .expect("avsc");
    serde_json::from_str(text).expect("avsc is JSON")
}

/// Another producer's version of a record: ours with a field added first and last, of
/// types the direct path reads through (an added array or map is resolved instead).
pub fn foreign_direct(full_name: &str) -> serde_json::Value {
    let mut json = current_json(full_name);
    let fields = json["fields"].as_array_mut().expect("fields");
    fields.insert(
        0,
        serde_json::json!({"name": "x_first", "type": "string", "default": ""}),
    );
    fields.push(serde_json::json!({"name": "x_last", "default": null, "type": ["null",
        {"type": "enum", "name": "XKind", "symbols": ["A", "B"]}]}));
    json
}

/// Another producer's version of a record with `event_id` written as `bytes` (the same
/// binary datum), a promotion only apache-avro's resolution reads.
pub fn foreign_resolved(full_name: &str) -> serde_json::Value {
    let mut json = current_json(full_name);
    let fields = json["fields"].as_array_mut().expect("fields");
    let event_id = fields
        .iter_mut()
        .find(|f| f["name"] == "event_id")
        .expect("every record has an event_id");
    event_id["type"] = "bytes".into();
    json
}

/// A schema registry holding every catalog schema and the foreign versions, by id.
#[derive(Debug)]
struct FuzzRegistry(HashMap<u32, String>);

#[async_trait::async_trait]
impl SchemaLookup for FuzzRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        if id == UNREACHABLE_ID {
            return Err(LookupError {
                message: "unreachable".into(),
                retriable: true,
            });
        }
        self.0.get(&id).cloned().ok_or(LookupError {
            message: format!("schema {id} not found (404)"),
            retriable: false,
        })
    }
}

/// The wire of the Avro target, built once (as a role with `schema-registry-url` builds
/// it at start), every id the registry holds resolved up front (as the consumer runtime
/// resolves a batch's ids before its handlers decode), so that [`Wire::decode_known`]
/// reads the Confluent framing exactly as in production.
pub fn wire() -> &'static Wire {
    static WIRE: OnceLock<Wire> = OnceLock::new();
    WIRE.get_or_init(|| {
        let names = record_names();
        let mut schemas = HashMap::new();
        for (i, s) in Catalog::get().all().iter().enumerate() {
            schemas.insert(
                CATALOG_IDS + u32::try_from(i).expect("few"),
                s.canonical_form.clone(),
            );
        }
        for (i, name) in names.iter().enumerate() {
            let i = u32::try_from(i).expect("few");
            schemas.insert(FOREIGN_DIRECT_IDS + i, foreign_direct(name).to_string());
            schemas.insert(FOREIGN_RESOLVED_IDS + i, foreign_resolved(name).to_string());
        }
        let ids: Vec<u32> = schemas.keys().copied().collect();
        let framing = RegistryFraming::new(
            names.iter().enumerate().map(|(i, n)| (*n, own_id(i))),
            Some(Arc::new(FuzzRegistry(schemas))),
        )
        .expect("framing of known records");
        for id in ids {
            futures::executor::block_on(framing.resolve(id)).expect("the registry's schema");
        }
        Wire::registry(framing)
    })
}

/// The registry framing of [`wire`].
pub fn framing() -> &'static RegistryFraming {
    wire().framing().expect("a registry wire")
}
