//! Both framings, with explicit registry framings and wires.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::*;
use crate::fixtures;

const T: i64 = 1_763_900_000_123_456;

/// A registry stand-in: answers `id` with `text`, counts the calls.
#[derive(Debug)]
struct FakeRegistry {
    id: u32,
    text: String,
    calls: AtomicUsize,
}

impl FakeRegistry {
    fn new(id: u32, text: impl Into<String>) -> Arc<FakeRegistry> {
        Arc::new(FakeRegistry {
            id,
            text: text.into(),
            calls: AtomicUsize::new(0),
        })
    }
}

#[async_trait::async_trait]
impl SchemaLookup for FakeRegistry {
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if id == self.id {
            Ok(self.text.clone())
        } else if id == 503 {
            Err(LookupError {
                message: "the registry is unreachable".into(),
                retriable: true,
            })
        } else {
            Err(LookupError {
                message: format!("schema {id} not found (404)"),
                retriable: false,
            })
        }
    }
}

fn ours(lookup: Option<Arc<dyn SchemaLookup>>) -> RegistryFraming {
    RegistryFraming::new(
        [
            (Heartbeat::FULL_NAME, 7),
            (MetricReport::FULL_NAME, 8),
            (AgentLifecycle::FULL_NAME, 9),
        ],
        lookup,
    )
    .expect("known records")
}

fn avsc(file: &str) -> &'static str {
    AVSC_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, text)| *text)
        .expect("avsc")
}

#[test]
fn single_object_framing_is_the_default_and_reads_without_a_registry() {
    let hb = fixtures::heartbeat("t", "a", T, 3);
    let bytes = Wire::plain().encode(&hb).expect("encode");
    assert_eq!(&bytes[..2], &MAGIC);
    assert_eq!(
        &bytes[2..HEADER_LEN],
        &Heartbeat::codec().fingerprint().to_le_bytes()
    );
    assert_eq!(bytes, Heartbeat::codec().encode_single_object(&hb).unwrap());
    assert_eq!(Heartbeat::codec().decode_with(None, &bytes).unwrap(), hb);
    // A process with a registry reads single-object records as before.
    assert_eq!(
        Heartbeat::codec()
            .decode_with(Some(&ours(None)), &bytes)
            .unwrap(),
        hb
    );
}

#[test]
fn confluent_framing_is_magic_zero_big_endian_id_and_the_same_datum() {
    let report = fixtures::metric_report("t", "a", T);
    let codec = MetricReport::codec();
    let confluent = codec.encode_confluent(0x0102_0304, &report).unwrap();
    let single = codec.encode_single_object(&report).unwrap();
    assert_eq!(&confluent[..CONFLUENT_HEADER_LEN], &[0, 1, 2, 3, 4]);
    assert_eq!(
        &confluent[CONFLUENT_HEADER_LEN..],
        &single[HEADER_LEN..],
        "the datum is the same in both framings"
    );
    let framing = RegistryFraming::new([(MetricReport::FULL_NAME, 0x0102_0304)], None).unwrap();
    assert_eq!(framing.id_of(MetricReport::FULL_NAME), Some(0x0102_0304));
    assert_eq!(
        codec.decode_with(Some(&framing), &confluent).unwrap(),
        report
    );
    assert_eq!(codec.decode_with(Some(&framing), &single).unwrap(), report);
    let (writer, body) = split_header_with(Some(&framing), &confluent).unwrap();
    assert_eq!(writer.full_name, MetricReport::FULL_NAME);
    assert_eq!(body, &single[HEADER_LEN..]);
}

#[test]
fn an_unknown_id_without_a_registry_is_a_clear_error() {
    let hb = fixtures::heartbeat("t", "a", T, 1);
    let bytes = Heartbeat::codec().encode_confluent(41, &hb).unwrap();
    let err = Heartbeat::codec().decode_with(None, &bytes).unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId(41)), "{err}");
    assert!(err.to_string().contains("schema-registry-url"), "{err}");
    // Registered ids of other records do not help either.
    let err = Heartbeat::codec()
        .decode_with(Some(&ours(None)), &bytes)
        .unwrap_err();
    assert!(matches!(err, CodecError::UnknownSchemaId(41)), "{err}");
}

#[test]
fn a_confluent_record_of_another_type_is_refused() {
    let hb = fixtures::heartbeat("t", "a", T, 1);
    let bytes = Heartbeat::codec().encode_confluent(7, &hb).unwrap();
    let err = MetricReport::codec()
        .decode_with(Some(&ours(None)), &bytes)
        .unwrap_err();
    assert!(
        matches!(&err, CodecError::WrongRecord { found, .. } if found == Heartbeat::FULL_NAME),
        "{err}"
    );
}

#[test]
fn truncated_and_garbage_confluent_records() {
    let framing = ours(None);
    for short in [&[0u8][..], &[0, 0], &[0, 0, 0, 7]] {
        assert!(matches!(
            Heartbeat::codec().decode_with(Some(&framing), short),
            Err(CodecError::Truncated(n)) if n == short.len()
        ));
    }
    // Header only: the datum is missing.
    assert!(matches!(
        Heartbeat::codec().decode_with(Some(&framing), &[0, 0, 0, 0, 7]),
        Err(CodecError::Avro(_))
    ));
    let hb = fixtures::heartbeat("t", "a", T, 1);
    let mut trailing = Heartbeat::codec().encode_confluent(7, &hb).unwrap();
    trailing.push(0);
    assert!(matches!(
        Heartbeat::codec().decode_with(Some(&framing), &trailing),
        Err(CodecError::TrailingBytes(1))
    ));
    let err = Heartbeat::codec()
        .decode_with(Some(&framing), b"\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a")
        .unwrap_err();
    assert!(matches!(err, CodecError::BadMagic(_)), "{err}");
    assert!(err.to_string().contains("Confluent"), "{err}");
}

#[tokio::test]
async fn a_foreign_writer_schema_is_fetched_once_and_resolved_into_ours() {
    // Another producer registered a newer Heartbeat with one more field (id 1234); ours
    // (the reader) ignores it.
    let mut json: serde_json::Value = serde_json::from_str(avsc("heartbeat.avsc")).unwrap();
    json["fields"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "region", "type": "string", "default": ""}));
    let registry = FakeRegistry::new(1234, json.to_string());
    let wire = Wire::registry(ours(Some(registry.clone())));
    let framing = wire.framing().expect("registry framing");
    let hb = fixtures::heartbeat("t", "a", T, 5);
    // Avro record datums are their fields in order: the newer datum is ours plus the
    // string "eu-1" (zig-zag length 8, then the bytes).
    let mut bytes = Heartbeat::codec().encode_confluent(1234, &hb).unwrap();
    bytes.push(8);
    bytes.extend_from_slice(b"eu-1");
    // Not fetched yet: a synchronous decode does not ask the registry, it says so.
    let err = wire.decode_known::<Heartbeat>(&bytes).unwrap_err();
    assert!(matches!(err, CodecError::Unresolved(1234)), "{err}");
    assert!(err.is_retriable());
    assert_eq!(registry.calls.load(Ordering::SeqCst), 0);
    for _ in 0..3 {
        assert_eq!(wire.decode::<Heartbeat>(&bytes).await.unwrap(), hb);
        assert_eq!(wire.decode_known::<Heartbeat>(&bytes).unwrap(), hb);
    }
    assert_eq!(
        registry.calls.load(Ordering::SeqCst),
        1,
        "cached after the first"
    );
    let writer = framing.writer_schema(1234).unwrap();
    assert_eq!(writer.full_name, Heartbeat::FULL_NAME);
    assert_eq!(writer.file, "(schema registry)");
    // Our own ids never reach the registry.
    let own = Heartbeat::codec().encode_confluent(7, &hb).unwrap();
    assert_eq!(wire.decode::<Heartbeat>(&own).await.unwrap(), hb);
    assert_eq!(registry.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_fetched_schema_this_build_knows_is_the_catalog_entry() {
    // Another process registered the released v1 AgentLifecycle (id 77): it is one of our
    // .avsc files, found by fingerprint.
    let registry = FakeRegistry::new(77, avsc("history/agent_lifecycle.v1.avsc"));
    let framing = ours(Some(registry));
    let writer = framing.resolve(77).await.unwrap();
    assert!(std::ptr::eq(writer, framing.writer_schema(77).unwrap()));
    assert_eq!(writer.file, "history/agent_lifecycle.v1.avsc");
    assert!(std::ptr::eq(
        writer,
        Catalog::get().by_fingerprint(writer.fingerprint).unwrap()
    ));
}

#[tokio::test]
async fn registry_failures_name_the_id() {
    let registry = FakeRegistry::new(5, "\"string\"");
    let wire = Wire::registry(ours(Some(registry.clone())));
    let hb = fixtures::heartbeat("t", "a", T, 1);
    let missing = Heartbeat::codec().encode_confluent(6, &hb).unwrap();
    let err = wire.decode::<Heartbeat>(&missing).await.unwrap_err();
    assert!(
        matches!(&err, CodecError::Registry { id: 6, message, retriable: false } if message.contains("404")),
        "{err}"
    );
    assert!(!err.is_retriable());
    // A synchronous decode reports the registry's answer (it does not ask again) ...
    let calls = registry.calls.load(Ordering::SeqCst);
    let err = wire.decode_known::<Heartbeat>(&missing).unwrap_err();
    assert!(
        matches!(
            &err,
            CodecError::Registry {
                id: 6,
                retriable: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(registry.calls.load(Ordering::SeqCst), calls);
    // ... and the next resolve asks again.
    assert!(wire.resolve(&missing).await.is_err());
    assert_eq!(registry.calls.load(Ordering::SeqCst), calls + 1);
    let unreachable = Heartbeat::codec().encode_confluent(503, &hb).unwrap();
    let err = wire.decode::<Heartbeat>(&unreachable).await.unwrap_err();
    assert!(err.is_retriable(), "{err}");
    // A failed lookup is not cached: the next decode asks again.
    assert!(wire
        .decode::<Heartbeat>(&unreachable)
        .await
        .unwrap_err()
        .is_retriable());
    assert!(matches!(
        wire.decode_known::<Heartbeat>(&unreachable),
        Err(CodecError::Unresolved(503))
    ));
    let not_a_record = Heartbeat::codec().encode_confluent(5, &hb).unwrap();
    let err = wire.decode::<Heartbeat>(&not_a_record).await.unwrap_err();
    assert!(
        matches!(&err, CodecError::Registry { id: 5, message, retriable: false } if message.contains("not an Avro record")),
        "{err}"
    );
    let garbage = ours(Some(FakeRegistry::new(5, "{not json")));
    assert!(matches!(
        garbage.resolve(5).await,
        Err(CodecError::Registry { id: 5, .. })
    ));
}

#[test]
fn framing_ids_must_name_known_records() {
    let err = RegistryFraming::new([("io.fleetstream.Nope", 1)], None).unwrap_err();
    assert!(matches!(err, CodecError::UnknownRecord(ref n) if n == "io.fleetstream.Nope"));
    let framing = ours(None);
    let mut ids: Vec<_> = framing.ids().collect();
    ids.sort_by_key(|(_, id)| *id);
    assert_eq!(
        ids,
        [
            (Heartbeat::FULL_NAME, 7),
            (MetricReport::FULL_NAME, 8),
            (AgentLifecycle::FULL_NAME, 9)
        ]
    );
}

#[tokio::test]
async fn a_field_the_reader_skips_is_read_as_the_reference_reads_it() {
    // Found by the avro_decode fuzz target: a foreign writer's field that our reader lacks
    // was skipped by the direct path without being read (a string's UTF-8 unchecked, an
    // array block jumped over by the byte size it announces, whatever its items), so the
    // direct path accepted datums that apache-avro's resolution (and `decode_value`)
    // refuses, or read the fields after a lying block size from elsewhere.
    let writer = |extra: serde_json::Value| {
        let mut json: serde_json::Value = serde_json::from_str(avsc("heartbeat.avsc")).unwrap();
        json["fields"]
            .as_array_mut()
            .unwrap()
            .extend(extra.as_array().unwrap().clone());
        json.to_string()
    };
    let region = serde_json::json!({"name": "region", "type": "string", "default": ""});
    let tags = serde_json::json!({"name": "tags", "default": [],
        "type": {"type": "array", "items": "string"}});
    let hb = fixtures::heartbeat("t", "a", T, 5);
    for (schema, direct_path, cases) in [
        (
            writer(serde_json::json!([region])),
            true,
            vec![
                ("region eu", &[4, b'e', b'u'][..], true),
                ("region not UTF-8", &[4, 0xff, 0xfe][..], false),
            ],
        ),
        (
            writer(serde_json::json!([region, tags])),
            false,
            vec![
                // A block of -1 items then its byte size, as writers that allow skipping
                // write it, then the end of the array.
                ("tags [x]", &[0, 1, 4, 2, b'x', 0][..], true),
                ("a tag of negative length", &[0, 1, 4, 1, 0, 0][..], false),
                // apache-avro reads the items and ignores the size.
                ("a block size that lies", &[0, 1, 2, 2, b'x', 0][..], true),
            ],
        ),
    ] {
        let framing = ours(Some(FakeRegistry::new(1234, schema)));
        let known = framing.resolve(1234).await.unwrap();
        assert_eq!(
            known.reads_directly(),
            direct_path,
            "{}",
            known.canonical_form
        );
        for (what, extra, valid) in cases {
            let mut bytes = Heartbeat::codec().encode_confluent(1234, &hb).unwrap();
            bytes.extend_from_slice(extra);
            let codec = Heartbeat::codec();
            let direct = codec.decode_with(Some(&framing), &bytes);
            let reference = codec.decode_resolving(Some(&framing), &bytes);
            assert_eq!(reference.is_ok(), valid, "{what}: {reference:?}");
            assert_eq!(direct.is_ok(), valid, "{what}: the decoder read {direct:?}");
            if valid {
                assert_eq!(
                    (direct.unwrap(), reference.unwrap()),
                    (hb.clone(), hb.clone())
                );
            }
        }
    }
}

/// A registry stand-in that answers only after another task signalled it.
#[derive(Debug)]
struct GatedRegistry {
    text: String,
    gate: Arc<tokio::sync::Notify>,
}

#[async_trait::async_trait]
impl SchemaLookup for GatedRegistry {
    async fn schema_by_id(&self, _id: u32) -> Result<String, LookupError> {
        self.gate.notified().await;
        Ok(self.text.clone())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn decoding_an_unknown_id_waits_without_blocking_the_runtime_thread() {
    // One thread: while the decode waits for the registry, the other task must run, and
    // the registry answers only once it has. A decode that blocked the thread for the
    // lookup would never see the answer.
    let gate = Arc::new(tokio::sync::Notify::new());
    let lookup = Arc::new(GatedRegistry {
        // Another producer registered our Heartbeat under its own subject (id 1234).
        text: avsc("heartbeat.avsc").to_owned(),
        gate: gate.clone(),
    });
    let wire = Wire::registry(ours(Some(lookup)));
    let progress = Arc::new(AtomicUsize::new(0));
    let other = tokio::spawn({
        let progress = progress.clone();
        async move {
            for _ in 0..3 {
                progress.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
            }
            gate.notify_one();
        }
    });
    let hb = fixtures::heartbeat("t", "a", T, 9);
    let bytes = Heartbeat::codec().encode_confluent(1234, &hb).unwrap();
    assert_eq!(wire.decode::<Heartbeat>(&bytes).await.unwrap(), hb);
    assert_eq!(progress.load(Ordering::SeqCst), 3, "the other task ran");
    other.await.unwrap();
}

#[test]
fn wires_are_values_two_framings_live_in_one_process() {
    let hb = fixtures::heartbeat("t", "a", T, 2);
    let plain = Wire::plain();
    let first = Wire::registry(ours(None));
    let second = Wire::registry(RegistryFraming::new([(Heartbeat::FULL_NAME, 70)], None).unwrap());
    let a = plain.encode(&hb).unwrap();
    let b = first.encode(&hb).unwrap();
    let c = second.clone().encode(&hb).unwrap();
    assert_eq!(&a[..2], &MAGIC);
    assert_eq!(&b[..CONFLUENT_HEADER_LEN], &[0, 0, 0, 0, 7]);
    assert_eq!(&c[..CONFLUENT_HEADER_LEN], &[0, 0, 0, 0, 70]);
    // Each reads its own ids and single-object records; another wire's id is unknown to it.
    for (wire, own) in [(&first, &b), (&second, &c)] {
        assert_eq!(wire.decode_known::<Heartbeat>(own).unwrap(), hb);
        assert_eq!(wire.decode_known::<Heartbeat>(&a).unwrap(), hb);
    }
    assert!(matches!(
        first.decode_known::<Heartbeat>(&c),
        Err(CodecError::UnknownSchemaId(70))
    ));
    assert!(matches!(
        plain.decode_known::<Heartbeat>(&b),
        Err(CodecError::UnknownSchemaId(7))
    ));
    // A record type the framing has no id for is refused, not written single-object.
    let report = fixtures::metric_report("t", "a", T);
    assert!(matches!(
        second.encode(&report),
        Err(CodecError::NotRegistered(n)) if n == MetricReport::FULL_NAME
    ));
}
