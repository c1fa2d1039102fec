//! The `.avsc` files are the source of truth: the Rust types must derive the same schema,
//! and records round-trip through the single-object codec.

use apache_avro::Schema;
use fleet_schemas::codec::{self, Catalog, CodecError, Record};
use fleet_schemas::{
    fixtures, AgentEvent, AgentLifecycle, AlertEvent, CommandEvent, DeadLetter, DeadLetterKind,
    Heartbeat, MetricReport, RemoteConfigEvent, RuleEvent, RuleEventKind, SampleBatch,
    SoftwareInventory, TicketEvent,
};

fn assert_matches_avsc<T: Record>() {
    let known = Catalog::get()
        .current(T::FULL_NAME)
        .unwrap_or_else(|| panic!("no .avsc for {}", T::FULL_NAME));
    let derived = T::get_schema();
    assert_eq!(
        derived.canonical_form(),
        known.canonical_form,
        "Rust type {} differs from schemas/avro/{}",
        T::FULL_NAME,
        known.file
    );
}

#[test]
fn rust_types_match_avsc_canonical_form() {
    assert_matches_avsc::<MetricReport>();
    assert_matches_avsc::<Heartbeat>();
    assert_matches_avsc::<AgentEvent>();
    assert_matches_avsc::<AlertEvent>();
    assert_matches_avsc::<AgentLifecycle>();
    assert_matches_avsc::<CommandEvent>();
    assert_matches_avsc::<SoftwareInventory>();
    assert_matches_avsc::<TicketEvent>();
    assert_matches_avsc::<RuleEvent>();
    assert_matches_avsc::<DeadLetter>();
    assert_matches_avsc::<SampleBatch>();
    assert_matches_avsc::<RemoteConfigEvent>();
}

#[test]
fn every_avsc_parses_and_has_unique_fingerprint() {
    let all = Catalog::get().all();
    assert_eq!(all.len(), codec::AVSC_FILES.len());
    let mut fps: Vec<u64> = all.iter().map(|s| s.fingerprint).collect();
    fps.sort_unstable();
    fps.dedup();
    assert_eq!(fps.len(), all.len(), "two schemas share a fingerprint");
    for s in all {
        assert!(
            matches!(s.schema, Schema::Record(_)),
            "{} is not a record",
            s.file
        );
    }
}

fn roundtrip<T: Record + PartialEq + std::fmt::Debug>(v: &T) {
    let bytes = codec::Wire::plain().encode(v).expect("encode");
    assert_eq!(&bytes[..2], &codec::MAGIC);
    let fp = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    assert_eq!(fp, T::codec().fingerprint());
    let back: T = codec::Wire::plain().decode_known(&bytes).expect("decode");
    assert_eq!(&back, v);
}

#[test]
fn records_roundtrip() {
    let t = 1_763_900_000_123_456;
    roundtrip(&fixtures::metric_report("t1", "a1", t));
    roundtrip(&fixtures::heartbeat("t1", "a1", t, 7));
    roundtrip(&fixtures::agent_event("t1", "a1", t));
    roundtrip(&fixtures::alert_raised("t1", "a1", t));
    roundtrip(&fixtures::agent_registered("t1", "a1", t));
    roundtrip(&fixtures::command_completed("t1", "a1", t));
    roundtrip(&fixtures::software_inventory("t1", "a1", t));
    roundtrip(&fixtures::ticket_requested("t1", "a1", t));
    roundtrip(&fixtures::rule_defined("t1", "rule-1", t));
    roundtrip(&fixtures::sample_batch("t1", t));
    roundtrip(&fixtures::remote_config("t1", "a1", t));
    let mut deleted = fixtures::rule_defined("t1", "rule-1", t);
    deleted.kind = RuleEventKind::Deleted;
    deleted.rule = None;
    deleted.actor = None;
    roundtrip(&deleted);
    let dead = fixtures::dead_letter("readmodel", t);
    roundtrip(&dead);
    // The raw bytes are Avro `bytes`, kept byte for byte (also empty, also without a key).
    let mut replayed = dead.clone();
    replayed.kind = DeadLetterKind::Replayed;
    replayed.value.0.clear();
    replayed.source_key = None;
    replayed.replayed_partition = Some(2);
    replayed.replayed_offset = Some(99);
    roundtrip(&replayed);
    let mut bare = fixtures::metric_report("t1", "a1", t);
    bare.security = None;
    bare.disks.clear();
    bare.custom.clear();
    bare.services[0].pid = None;
    roundtrip(&bare);
}

/// Maps are written in key order: a record has one encoding, whatever the order its maps
/// iterate in (each `HashMap` has its own random order), so a rebuild writes the same bytes.
#[test]
fn maps_are_written_in_key_order() {
    let t = 1_763_900_000_123_456;
    let keys: Vec<String> = (0..32).map(|i| format!("m{i:02}")).collect();
    let mut a = fixtures::metric_report("t1", "a1", t);
    let mut b = a.clone();
    a.custom = keys.iter().map(|k| (k.clone(), 1.0)).collect();
    b.custom = keys.iter().rev().map(|k| (k.clone(), 1.0)).collect();
    let wire = codec::Wire::plain();
    assert_eq!(
        wire.encode(&a).expect("encode"),
        wire.encode(&b).expect("encode")
    );
    let json = serde_json::to_string(&a).expect("json");
    assert_eq!(json, serde_json::to_string(&b).expect("json"));
    let at = |k: &str| json.find(&format!("\"{k}\"")).expect("key written");
    assert!(at("m00") < at("m01") && at("m30") < at("m31"), "{json}");
    let mut e1 = fixtures::agent_event("t1", "a1", t);
    let mut e2 = e1.clone();
    e1.attributes = keys.iter().map(|k| (k.clone(), k.clone())).collect();
    e2.attributes = keys.iter().rev().map(|k| (k.clone(), k.clone())).collect();
    assert_eq!(
        wire.encode(&e1).expect("encode"),
        wire.encode(&e2).expect("encode")
    );
}

#[test]
fn decode_rejects_garbage_with_clear_errors() {
    assert!(matches!(
        codec::Wire::plain().decode_known::<Heartbeat>(b"xx"),
        Err(CodecError::Truncated(2))
    ));
    assert!(matches!(
        codec::Wire::plain().decode_known::<Heartbeat>(b"{\"not\":\"avro\"}"),
        Err(CodecError::BadMagic(_))
    ));
    let mut unknown = vec![0xC3, 0x01];
    unknown.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(matches!(
        codec::Wire::plain().decode_known::<Heartbeat>(&unknown),
        Err(CodecError::UnknownSchema(_))
    ));
    let hb = codec::Wire::plain()
        .encode(&fixtures::heartbeat("t", "a", 1, 1))
        .expect("encode");
    assert!(matches!(
        codec::Wire::plain().decode_known::<MetricReport>(&hb),
        Err(CodecError::WrongRecord { .. })
    ));
    let truncated = &hb[..hb.len() - 3];
    assert!(codec::Wire::plain()
        .decode_known::<Heartbeat>(truncated)
        .is_err());
    let mut trailing = hb.clone();
    trailing.push(0);
    assert!(matches!(
        codec::Wire::plain().decode_known::<Heartbeat>(&trailing),
        Err(CodecError::TrailingBytes(1))
    ));
}

#[test]
fn samples_name_every_metric() {
    let r = fixtures::metric_report("t", "a", 1);
    let s = fleet_schemas::samples::samples(&r);
    let names: Vec<String> = s.iter().map(|s| s.series()).collect();
    for expected in [
        "cpu.percent",
        "disk.percent:/",
        "disk.percent:/var",
        "service.up:sshd",
        "custom.queue_depth",
        "load.per_core",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "missing {expected} in {names:?}"
        );
    }
    // The fixture's posture: firewall on, 3 pending updates, security count unknown.
    let value = |series: &str| s.iter().find(|x| x.series() == series).map(|x| x.value);
    assert_eq!(value("security.firewall_active"), Some(1.0));
    assert_eq!(value("security.pending_updates"), Some(3.0));
    assert_eq!(
        value("security.pending_security_updates"),
        None,
        "absent, not 0"
    );
    // v2's posture: reboot asked for, root login by key only (still root login: 1),
    // no passwords, ClamAV with day-old signatures.
    assert_eq!(value("security.reboot_required"), Some(1.0));
    assert_eq!(value("security.ssh_root_login_permitted"), Some(1.0));
    assert_eq!(value("security.ssh_password_authentication"), Some(0.0));
    assert_eq!(value("security.antivirus_present"), Some(1.0));
    assert_eq!(value("security.antivirus_signature_age_hours"), Some(26.5));
    let mut r = r;
    if let Some(sec) = r.security.as_mut() {
        sec.ssh_permit_root_login = Some("no".into());
        sec.reboot_required = None;
    }
    let s = fleet_schemas::samples::samples(&r);
    let value = |series: &str| s.iter().find(|x| x.series() == series).map(|x| x.value);
    assert_eq!(
        value("security.ssh_root_login_permitted"),
        Some(0.0),
        "only `no` is 0"
    );
    assert_eq!(value("security.reboot_required"), None, "absent, not 0");
    for sample in &s {
        assert!(
            fleet_schemas::samples::is_known_metric(&sample.metric),
            "{}",
            sample.metric
        );
    }
}

#[test]
fn websocket_frames_are_tagged_json_and_reject_unknown_fields() {
    use fleet_schemas::api::{AgentMessage, HeartbeatIn, ServerMessage};
    let hb = AgentMessage::Heartbeat {
        id: 7,
        heartbeat: HeartbeatIn {
            sent_at: chrono::DateTime::from_timestamp(1_763_900_000, 0).expect("valid time"),
            sequence: 3,
            uptime_seconds: 60,
            agent_version: "0.1.0".into(),
            heartbeat_interval_secs: None,
            config_version: None,
        },
    };
    let text = serde_json::to_string(&hb).expect("serialize");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["type"], "heartbeat");
    assert_eq!(v["id"], 7);
    assert_eq!(v["heartbeat"]["sequence"], 3);
    let back: AgentMessage = serde_json::from_str(&text).expect("parse back");
    assert_eq!(back, hb);
    assert!(serde_json::from_str::<AgentMessage>(
        r#"{"type":"metrics","id":1,"reports":[],"extra":1}"#
    )
    .is_err());
    assert!(serde_json::from_str::<AgentMessage>(r#"{"type":"launch","id":1}"#).is_err());
    let ack: ServerMessage =
        serde_json::from_str(r#"{"type":"ack","id":7,"accepted":1}"#).expect("ack parses");
    assert_eq!(
        ack,
        ServerMessage::Ack {
            id: 7,
            accepted: 1,
            rejected: vec![]
        }
    );
}

// ---- Evolution of AgentLifecycle: v1 (no `tags`) to the current schema ----

const AGENT_LIFECYCLE_V1: &str = include_str!("../avro/history/agent_lifecycle.v1.avsc");
const AGENT_LIFECYCLE: &str = include_str!("../avro/agent_lifecycle.avsc");

/// The fixture as an Avro value of the v1 schema: the current value without `tags`.
fn lifecycle_v1_value(v: &AgentLifecycle) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    match apache_avro::to_value(v).expect("to value") {
        Value::Record(fields) => {
            Value::Record(fields.into_iter().filter(|(n, _)| n != "tags").collect())
        }
        other => panic!("not a record: {other:?}"),
    }
}

#[test]
fn agent_lifecycle_v1_data_reads_with_the_current_schema() {
    let old = Schema::parse_str(AGENT_LIFECYCLE_V1).expect("v1 parses");
    let new = Schema::parse_str(AGENT_LIFECYCLE).expect("current parses");
    let v = fixtures::agent_registered("t1", "a1", 1_763_900_000_123_456);
    let bytes = apache_avro::to_avro_datum(&old, lifecycle_v1_value(&v)).expect("write v1");
    let mut body = &bytes[..];
    let value = apache_avro::from_avro_datum(&old, &mut body, Some(&new)).expect("resolve");
    assert!(body.is_empty());
    let back: AgentLifecycle = apache_avro::from_value(&value).expect("deserialize");
    assert_eq!(back, v, "v1 data reads as tags = None (the default)");
    assert_eq!(back.tags, None);
}

#[test]
fn codec_decodes_agent_lifecycle_written_with_v1() {
    let catalog = Catalog::get();
    let current = catalog
        .current(AgentLifecycle::FULL_NAME)
        .expect("current schema");
    assert_eq!(
        current.file, "agent_lifecycle.avsc",
        "history does not replace it"
    );
    let (_, v1_fp) = codec::canonical_form_and_fingerprint(AGENT_LIFECYCLE_V1).expect("v1");
    assert_ne!(v1_fp, current.fingerprint);
    let v1 = catalog.by_fingerprint(v1_fp).expect("v1 is in the catalog");
    assert_eq!(v1.file, "history/agent_lifecycle.v1.avsc");
    assert_eq!(v1.full_name, AgentLifecycle::FULL_NAME);

    // A record as a build before `tags` wrote it: v1 fingerprint in the header.
    let v = fixtures::agent_registered("t1", "a1", 1_763_900_000_123_456);
    let mut bytes = codec::MAGIC.to_vec();
    bytes.extend_from_slice(&v1_fp.to_le_bytes());
    bytes.extend(apache_avro::to_avro_datum(&v1.schema, lifecycle_v1_value(&v)).expect("write"));
    let back: AgentLifecycle = codec::Wire::plain()
        .decode_known(&bytes)
        .expect("decode v1 record");
    assert_eq!(back, v);
    assert_eq!(back.tags, None);

    // And the current writer carries tags through.
    let mut tagged = v.clone();
    tagged.tags = Some(vec!["web".into(), "eu".into()]);
    roundtrip(&tagged);
    tagged.tags = Some(Vec::new());
    roundtrip(&tagged);
}
