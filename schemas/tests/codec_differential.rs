//! The codec's direct datum path (`serde_avro_fast`, straight into the record types) against
//! the apache-avro path it replaced (`Codec::decode_resolving`: generic `Value`, schema
//! resolution, `from_value`; `apache_avro::write_avro_datum_ref` for encoding), on the same
//! bytes: for every record type, the fixtures and randomised values (empty and unicode
//! strings, empty and long lists and maps, None and Some, extreme longs and ints, NaN,
//! infinities, -0.0 and subnormal doubles), written with the current schema, with every
//! released older one and with foreign registry schemas; and hostile bytes (every
//! truncation, every bit flip, random bytes, huge length prefixes), which must never panic
//! and must fail exactly where the old path fails. (The old path now reads a datum with
//! `serde_avro_fast` before apache-avro decodes it, refusing lengths beyond the datum: so
//! hostile counts no longer make it reserve gigabytes, and no allocation bound is needed
//! here; `tests/hostile_lengths.rs`.)
//!
//! Seeded: `FLEET_CODEC_SEED=<u64>` replays a run (the seed is printed on failure).

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;
use fleet_schemas::codec::{
    self, Catalog, CodecError, LookupError, Record, RegistryFraming, SchemaLookup,
};
use fleet_schemas::fixtures::comparable;
use fleet_schemas::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

const T0: i64 = 1_763_900_000_123_456;
const RANDOM_VALUES: usize = 150;
const RANDOM_MUTATIONS: usize = 400;

fn seed() -> u64 {
    std::env::var("FLEET_CODEC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x00f1_ee75_7ea3)
}

// ---- random values ----

struct Gen(StdRng);

impl Gen {
    fn new(salt: u64) -> Gen {
        Gen(StdRng::seed_from_u64(seed() ^ salt))
    }

    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.0.random_range(0..items.len())].clone()
    }

    fn string(&mut self) -> String {
        match self.0.random_range(0..7) {
            0 => String::new(),
            1 => "a".into(),
            2 => "żółć 🚀 日本語 \u{0} \u{7f} \u{10FFFF}".into(),
            // Longer than 63 bytes: a two-byte length prefix.
            3 => "x".repeat(self.0.random_range(64..300)),
            4 => {
                let pool = [
                    'a', 'Z', '0', ' ', 'é', 'ß', '€', '𝄞', '\u{200B}', '"', '\\',
                ];
                (0..self.0.random_range(1..20))
                    .map(|_| self.pick(&pool))
                    .collect()
            }
            _ => format!("id-{}", self.0.random::<u32>()),
        }
    }

    fn long(&mut self) -> i64 {
        match self.0.random_range(0..3) {
            0 => self.pick(&[
                0,
                -1,
                1,
                63,
                64,
                -64,
                -65,
                i64::MIN,
                i64::MAX,
                i64::MIN + 1,
                i64::from(i32::MAX) + 1,
                i64::from(i32::MIN) - 1,
            ]),
            1 => self.0.random::<i64>(),
            _ => self.0.random_range(-1_000_000..1_000_000),
        }
    }

    fn int(&mut self) -> i32 {
        match self.0.random_range(0..3) {
            0 => self.pick(&[0, -1, 1, 63, 64, -64, -65, i32::MIN, i32::MAX]),
            1 => self.0.random::<i32>(),
            _ => self.0.random_range(-1000..1000),
        }
    }

    fn double(&mut self) -> f64 {
        match self.0.random_range(0..3) {
            0 => self.pick(&[
                0.0,
                -0.0,
                f64::NAN,
                -f64::NAN,
                f64::from_bits(0x7ff8_0000_dead_beef),
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MIN_POSITIVE,
                5e-324,
                f64::MAX,
                f64::MIN,
                f64::EPSILON,
            ]),
            1 => f64::from_bits(self.0.random::<u64>()),
            _ => self.0.random_range(-1e6..1e6),
        }
    }

    fn bool(&mut self) -> bool {
        self.0.random()
    }

    fn opt<T>(&mut self, f: impl FnOnce(&mut Gen) -> T) -> Option<T> {
        self.0.random_bool(0.5).then(|| f(self))
    }

    fn len(&mut self) -> usize {
        match self.0.random_range(0..6) {
            0 | 1 => 0,
            // More than 63 items: a two-byte count.
            2 => self.0.random_range(64..80),
            _ => self.0.random_range(1..5),
        }
    }

    fn vec<T>(&mut self, mut f: impl FnMut(&mut Gen) -> T) -> Vec<T> {
        let n = self.len();
        (0..n).map(|_| f(self)).collect()
    }

    fn map<V>(&mut self, mut f: impl FnMut(&mut Gen) -> V) -> HashMap<String, V> {
        let n = self.len();
        (0..n).map(|_| (self.string(), f(self))).collect()
    }

    fn bytes(&mut self) -> AvroBytes {
        let n = self.len();
        AvroBytes((0..n).map(|_| self.0.random()).collect())
    }
}

/// A record type with a generator of arbitrary values and its fixtures.
trait Arbitrary: Record + Clone + std::fmt::Debug {
    fn arbitrary(g: &mut Gen) -> Self;
    fn fixtures() -> Vec<Self>;
}

impl Arbitrary for MetricReport {
    fn arbitrary(g: &mut Gen) -> Self {
        MetricReport {
            event_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            occurred_at: g.long(),
            ingested_at: g.long(),
            cpu_percent: g.double(),
            cpu_per_core: g.vec(Gen::double),
            memory_used_bytes: g.long(),
            memory_total_bytes: g.long(),
            memory_percent: g.double(),
            swap_used_bytes: g.long(),
            swap_total_bytes: g.long(),
            disks: g.vec(|g| DiskUsage {
                mount: g.string(),
                used_bytes: g.long(),
                total_bytes: g.long(),
                percent: g.double(),
            }),
            disk_read_bytes: g.long(),
            disk_write_bytes: g.long(),
            load_1: g.double(),
            load_5: g.double(),
            load_15: g.double(),
            uptime_seconds: g.long(),
            net_rx_bytes: g.long(),
            net_tx_bytes: g.long(),
            interfaces: g.vec(|g| NetInterface {
                name: g.string(),
                rx_bytes: g.long(),
                tx_bytes: g.long(),
            }),
            process_count: g.int(),
            services: g.vec(|g| ServiceStatus {
                name: g.string(),
                status: g.string(),
                pid: g.opt(Gen::int),
            }),
            security: g.opt(|g| SecurityPosture {
                firewall_enabled: g.opt(Gen::bool),
                pending_updates: g.opt(Gen::int),
                pending_security_updates: g.opt(Gen::int),
                reboot_required: g.opt(Gen::bool),
                ssh_permit_root_login: g.opt(Gen::string),
                ssh_password_authentication: g.opt(Gen::bool),
                antivirus_present: g.opt(Gen::bool),
                antivirus_signature_age_hours: g.opt(Gen::double),
            }),
            custom: g.map(Gen::double),
        }
    }
    fn fixtures() -> Vec<Self> {
        let full = fixtures::metric_report("t1", "a1", T0);
        let mut bare = full.clone();
        bare.security = None;
        bare.disks.clear();
        bare.custom.clear();
        bare.services[0].pid = None;
        vec![full, bare]
    }
}

impl Arbitrary for Heartbeat {
    fn arbitrary(g: &mut Gen) -> Self {
        Heartbeat {
            event_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            occurred_at: g.long(),
            ingested_at: g.long(),
            agent_version: g.string(),
            uptime_seconds: g.long(),
            sequence: g.long(),
            heartbeat_interval_secs: g.opt(Gen::double),
            config_version: g.opt(Gen::long),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::heartbeat("t1", "a1", T0, 7)]
    }
}

impl Arbitrary for AgentEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        AgentEvent {
            event_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            occurred_at: g.long(),
            ingested_at: g.long(),
            kind: g.string(),
            severity: g.pick(&[
                EventSeverity::Info,
                EventSeverity::Warning,
                EventSeverity::Critical,
            ]),
            message: g.string(),
            attributes: g.map(Gen::string),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::agent_event("t1", "a1", T0)]
    }
}

impl Arbitrary for AlertEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        AlertEvent {
            event_id: g.string(),
            alert_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            kind: g.pick(&[
                AlertEventKind::Raised,
                AlertEventKind::Resolved,
                AlertEventKind::Acknowledged,
            ]),
            rule_id: g.string(),
            rule_name: g.string(),
            metric: g.string(),
            subject: g.opt(Gen::string),
            severity: g.pick(&[
                AlertSeverity::Info,
                AlertSeverity::Warning,
                AlertSeverity::Critical,
            ]),
            operator: g.string(),
            threshold: g.double(),
            value: g.double(),
            message: g.string(),
            actor: g.opt(Gen::string),
            occurred_at: g.long(),
            ingested_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::alert_raised("t1", "a1", T0)]
    }
}

impl Arbitrary for AgentLifecycle {
    fn arbitrary(g: &mut Gen) -> Self {
        AgentLifecycle {
            event_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            kind: g.pick(&[
                AgentLifecycleKind::Registered,
                AgentLifecycleKind::Updated,
                AgentLifecycleKind::Online,
                AgentLifecycleKind::Offline,
                AgentLifecycleKind::Deactivated,
            ]),
            location_id: g.opt(Gen::string),
            device_name: g.opt(Gen::string),
            facts: g.opt(|g| AgentFacts {
                hostname: g.string(),
                os_type: g.string(),
                os_version: g.string(),
                kernel_version: g.string(),
                architecture: g.string(),
                ip_addresses: g.vec(Gen::string),
                mac_addresses: g.vec(Gen::string),
                cpu_model: g.string(),
                cpu_cores: g.int(),
                memory_total_bytes: g.long(),
                disk_total_bytes: g.long(),
                agent_version: g.string(),
            }),
            actor: g.opt(Gen::string),
            reason: g.opt(Gen::string),
            tags: g.opt(|g| g.vec(Gen::string)),
            occurred_at: g.long(),
            ingested_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        let registered = fixtures::agent_registered("t1", "a1", T0);
        let mut tagged = registered.clone();
        tagged.tags = Some(vec!["web".into(), "eu".into()]);
        let mut untagged = registered.clone();
        untagged.tags = Some(Vec::new());
        vec![registered, tagged, untagged]
    }
}

impl Arbitrary for CommandEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        CommandEvent {
            event_id: g.string(),
            command_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            kind: g.pick(&[
                CommandEventKind::Requested,
                CommandEventKind::Approved,
                CommandEventKind::Dispatched,
                CommandEventKind::Progress,
                CommandEventKind::Completed,
                CommandEventKind::TimedOut,
                CommandEventKind::Rejected,
                CommandEventKind::Cancelled,
            ]),
            command_type: g.string(),
            args: g.map(Gen::string),
            requires_approval: g.bool(),
            timeout_secs: g.long(),
            actor: g.opt(Gen::string),
            sequence: g.long(),
            stream: g.opt(Gen::string),
            chunk: g.opt(Gen::string),
            status: g.opt(Gen::string),
            exit_code: g.opt(Gen::int),
            stdout: g.opt(Gen::string),
            stderr: g.opt(Gen::string),
            output_truncated: g.bool(),
            message: g.opt(Gen::string),
            started_at: g.opt(Gen::long),
            finished_at: g.opt(Gen::long),
            occurred_at: g.long(),
            ingested_at: g.long(),
            group_id: g.opt(Gen::string),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::command_completed("t1", "a1", T0)]
    }
}

impl Arbitrary for SoftwareInventory {
    fn arbitrary(g: &mut Gen) -> Self {
        SoftwareInventory {
            event_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            occurred_at: g.long(),
            ingested_at: g.long(),
            source: g.string(),
            digest: g.string(),
            packages: g.vec(|g| SoftwarePackage {
                name: g.string(),
                version: g.string(),
                arch: g.opt(Gen::string),
            }),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::software_inventory("t1", "a1", T0)]
    }
}

impl Arbitrary for TicketEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        TicketEvent {
            event_id: g.string(),
            ticket_id: g.string(),
            alert_id: g.string(),
            tenant_id: g.string(),
            agent_id: g.string(),
            kind: g.pick(&[TicketEventKind::Requested, TicketEventKind::Updated]),
            status: g.string(),
            priority: g.string(),
            severity: g.pick(&[
                TicketSeverity::Info,
                TicketSeverity::Warning,
                TicketSeverity::Critical,
            ]),
            title: g.string(),
            description: g.string(),
            location_id: g.opt(Gen::string),
            rule_id: g.string(),
            metric: g.string(),
            subject: g.opt(Gen::string),
            value: g.double(),
            threshold: g.double(),
            actor: g.opt(Gen::string),
            occurred_at: g.long(),
            ingested_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::ticket_requested("t1", "a1", T0)]
    }
}

impl Arbitrary for RuleEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        RuleEvent {
            event_id: g.string(),
            rule_id: g.string(),
            tenant_id: g.string(),
            kind: g.pick(&[RuleEventKind::Defined, RuleEventKind::Deleted]),
            rule: g.opt(|g| RuleDefinition {
                name: g.string(),
                scope: g.pick(&[RuleScope::Tenant, RuleScope::Agent, RuleScope::Tag]),
                scope_value: g.opt(Gen::string),
                metric: g.string(),
                subject: g.opt(Gen::string),
                operator: g.string(),
                warning: g.opt(Gen::double),
                critical: g.opt(Gen::double),
                recovery: g.opt(Gen::double),
                for_secs: g.long(),
                renotify_secs: g.long(),
                enabled: g.bool(),
                labels: g.opt(|g| {
                    (0..g.len())
                        .map(|_| fleet_schemas::LabelMatcher {
                            name: g.string(),
                            op: g.string(),
                            value: g.string(),
                        })
                        .collect()
                }),
                event: g.opt(|g| fleet_schemas::EventRule {
                    kind: g.string(),
                    attributes: g.map(Gen::string),
                    min_severity: g.opt(Gen::string),
                    subject_attribute: g.opt(Gen::string),
                    recovery_kinds: (0..g.len()).map(|_| g.string()).collect(),
                    resolve_after_secs: g.opt(Gen::long),
                }),
            }),
            actor: g.opt(Gen::string),
            occurred_at: g.long(),
            ingested_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        let defined = fixtures::rule_defined("t1", "rule-1", T0);
        let mut deleted = defined.clone();
        deleted.kind = RuleEventKind::Deleted;
        deleted.rule = None;
        deleted.actor = None;
        let mut event_rule = defined.clone();
        event_rule.rule = Some(fixtures::event_rule_definition());
        vec![defined, deleted, event_rule]
    }
}

impl Arbitrary for DeadLetter {
    fn arbitrary(g: &mut Gen) -> Self {
        DeadLetter {
            event_id: g.string(),
            kind: g.pick(&[
                DeadLetterKind::Decode,
                DeadLetterKind::Process,
                DeadLetterKind::Replayed,
            ]),
            reason: g.string(),
            consumer: g.string(),
            group: g.string(),
            tenant_id: g.opt(Gen::string),
            source_topic: g.string(),
            source_partition: g.int(),
            source_offset: g.long(),
            source_key: g.opt(Gen::bytes),
            source_timestamp: g.long(),
            value: g.bytes(),
            replayed_partition: g.opt(Gen::int),
            replayed_offset: g.opt(Gen::long),
            occurred_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        // Random values cover the REPLAYED shape (empty value, no key).
        vec![fixtures::dead_letter("readmodel", T0)]
    }
}

impl Arbitrary for SampleBatch {
    fn arbitrary(g: &mut Gen) -> Self {
        SampleBatch {
            event_id: g.string(),
            tenant_id: g.string(),
            partition_key: g.string(),
            source: g.pick(&[
                SampleSource::PrometheusRemoteWrite,
                SampleSource::Otlp,
                SampleSource::Influx,
            ]),
            received_at: g.long(),
            samples: g.vec(|g| LabeledSample {
                metric: g.string(),
                labels: g.vec(|g| Label {
                    name: g.string(),
                    value: g.string(),
                }),
                timestamp: g.long(),
                value: g.double(),
            }),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::sample_batch("t1", T0)]
    }
}

impl Arbitrary for RemoteConfigEvent {
    fn arbitrary(g: &mut Gen) -> Self {
        RemoteConfigEvent {
            event_id: g.string(),
            config_key: g.string(),
            tenant_id: g.string(),
            scope: g.pick(&[ConfigScope::Agent, ConfigScope::Tag, ConfigScope::Location]),
            target: g.string(),
            version: g.long(),
            heartbeat_interval_secs: g.opt(Gen::double),
            metrics_interval_secs: g.opt(Gen::double),
            services: g.opt(|g| g.vec(Gen::string)),
            textfile_dir: g.opt(Gen::string),
            allowed_commands: g.opt(|g| g.vec(Gen::string)),
            actor: g.opt(Gen::string),
            occurred_at: g.long(),
            ingested_at: g.long(),
        }
    }
    fn fixtures() -> Vec<Self> {
        vec![fixtures::remote_config("t1", "a1", T0)]
    }
}

/// Runs `check::<T>` for every record type of the catalog (and fails if one is missing).
macro_rules! for_every_record {
    ($check:ident) => {{
        let names = [
            $check::<MetricReport>(),
            $check::<Heartbeat>(),
            $check::<AgentEvent>(),
            $check::<AlertEvent>(),
            $check::<AgentLifecycle>(),
            $check::<CommandEvent>(),
            $check::<SoftwareInventory>(),
            $check::<TicketEvent>(),
            $check::<RuleEvent>(),
            $check::<DeadLetter>(),
            $check::<SampleBatch>(),
            $check::<RemoteConfigEvent>(),
        ];
        for known in Catalog::get().all() {
            assert!(
                names.contains(&known.full_name.as_str()),
                "{} has no generator here",
                known.full_name
            );
        }
    }};
}

fn values<T: Arbitrary>(salt: u64) -> Vec<T> {
    let mut g = Gen::new(salt);
    let mut out = T::fixtures();
    out.extend((0..RANDOM_VALUES).map(|_| T::arbitrary(&mut g)));
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes `bytes` both ways and requires the same outcome: equal records, or errors of the
/// same kind. Never panics silently: a panic in either path fails with the input.
fn same_outcome<T: Record + std::fmt::Debug>(
    framing: Option<&RegistryFraming>,
    bytes: &[u8],
    what: &str,
) -> Result<T, CodecError> {
    let codec = T::codec();
    let new =
        catch_unwind(AssertUnwindSafe(|| codec.decode_with(framing, bytes))).unwrap_or_else(|_| {
            panic!(
                "{what}: the codec panicked on {} (seed {})",
                hex(bytes),
                seed()
            )
        });
    let old = catch_unwind(AssertUnwindSafe(|| codec.decode_resolving(framing, bytes)));
    let ctx = || format!("{what}: {} (seed {})", hex(bytes), seed());
    match (old, &new) {
        (Ok(Ok(old)), Ok(new)) => {
            assert_eq!(comparable(&old), comparable(new), "{}", ctx());
        }
        (Ok(Err(old)), Err(new)) => assert_eq!(
            std::mem::discriminant(&old),
            std::mem::discriminant(new),
            "{}: old {old}, new {new}",
            ctx()
        ),
        (Ok(Err(old)), Ok(new)) => panic!("{}: old path refused ({old}), new read {new:?}", ctx()),
        (Ok(Ok(old)), Err(new)) => {
            panic!("{}: old path read {old:?}, new refused ({new})", ctx())
        }
        (Err(_), new) => panic!("{}: the old path panicked; new: {new:?}", ctx()),
    }
    new
}

// ---- the current schema ----

fn current_schema_datums<T: Arbitrary>() -> &'static str {
    let codec = T::codec();
    let current = Catalog::get().current(T::FULL_NAME).expect("current");
    assert!(current.reads_directly(), "{} reads directly", current.file);
    for (i, v) in values::<T>(1).iter().enumerate() {
        let bytes = codec.encode_single_object(v).expect("encode");
        // The wire does not change: the datum is apache-avro's, byte for byte.
        let mut old = bytes[..codec::HEADER_LEN].to_vec();
        apache_avro::write_avro_datum_ref(codec.schema(), v, &mut old).expect("old encode");
        assert_eq!(hex(&bytes), hex(&old), "{} value {i}: {v:?}", T::FULL_NAME);
        let back = same_outcome::<T>(None, &bytes, T::FULL_NAME).expect("decodes");
        assert_eq!(comparable(&back), comparable(v), "round trip of {v:?}");
        // The Confluent framing carries the same datum.
        let framing = RegistryFraming::new([(T::FULL_NAME, 12)], None).expect("framing");
        let confluent = codec.encode_confluent(12, v).expect("encode");
        same_outcome::<T>(Some(&framing), &confluent, T::FULL_NAME).expect("decodes");
    }
    T::FULL_NAME
}

#[test]
fn every_record_type_decodes_and_encodes_like_apache_avro() {
    for_every_record!(current_schema_datums);
}

// ---- older and foreign writer schemas ----

/// `value` (of the current schema) as a value of `writer`: the writer's fields in its
/// order, taken from `value` or, for fields the current schema lacks, from `extra`.
fn as_writer_value(value: Value, writer: &Schema, extra: &mut HashMap<String, Value>) -> Value {
    match (writer, value) {
        (Schema::Record(r), Value::Record(fields)) => {
            let mut fields: HashMap<String, Value> = fields.into_iter().collect();
            Value::Record(
                r.fields
                    .iter()
                    .map(|f| {
                        let v = match fields.remove(&f.name) {
                            Some(v) => as_writer_value(v, &f.schema, &mut HashMap::new()),
                            None => extra
                                .remove(&f.name)
                                .unwrap_or_else(|| panic!("no value for field {}", f.name)),
                        };
                        (f.name.clone(), v)
                    })
                    .collect(),
            )
        }
        (Schema::Union(u), value) => {
            // `to_value` writes an Option as a union with null first; the writer's union
            // may order its branches otherwise.
            let inner = match value {
                Value::Union(_, inner) => *inner,
                other => other,
            };
            let is_null = matches!(inner, Value::Null);
            let (i, s) = u
                .variants()
                .iter()
                .enumerate()
                .find(|(_, s)| matches!(s, Schema::Null) == is_null)
                .expect("a branch for the value");
            let i = u32::try_from(i).expect("small union");
            Value::Union(i, Box::new(as_writer_value(inner, s, extra)))
        }
        (Schema::Array(a), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|v| as_writer_value(v, &a.items, extra))
                .collect(),
        ),
        (Schema::Map(m), Value::Map(items)) => Value::Map(
            items
                .into_iter()
                .map(|(k, v)| (k, as_writer_value(v, &m.types, extra)))
                .collect(),
        ),
        (Schema::Int, Value::Long(n)) => Value::Int(i32::try_from(n).expect("fits an int")),
        (_, v) => v,
    }
}

fn write_with(writer: &Schema, v: &impl Serialize, extra: &mut HashMap<String, Value>) -> Vec<u8> {
    try_write_with(writer, v, extra).expect("write with the writer schema")
}

/// `v` written with `writer`, if that schema can hold it (an older version cannot hold an
/// enum symbol added after it).
fn try_write_with(
    writer: &Schema,
    v: &impl Serialize,
    extra: &mut HashMap<String, Value>,
) -> Result<Vec<u8>, apache_avro::Error> {
    let value = as_writer_value(apache_avro::to_value(v).expect("to value"), writer, extra);
    apache_avro::to_avro_datum(writer, value)
}

fn released_writer_datums<T: Arbitrary>() -> &'static str {
    let catalog = Catalog::get();
    let current = catalog.current(T::FULL_NAME).expect("current");
    for writer in catalog.all().iter().filter(|s| s.full_name == T::FULL_NAME) {
        // Every released version reads directly today; one that stops doing so is still
        // checked here, through whichever path it takes.
        assert!(writer.reads_directly(), "{}", writer.file);
        if writer.fingerprint == current.fingerprint {
            continue;
        }
        let mut written = 0;
        for v in values::<T>(2) {
            // A value the older version cannot hold (a later enum symbol) was never
            // written with it.
            let Ok(datum) = try_write_with(&writer.schema, &v, &mut HashMap::new()) else {
                continue;
            };
            let mut bytes = codec::MAGIC.to_vec();
            bytes.extend_from_slice(&writer.fingerprint.to_le_bytes());
            bytes.extend(datum);
            same_outcome::<T>(None, &bytes, writer.file).expect("decodes");
            written += 1;
        }
        assert!(written > 0, "{}: no value fits it", writer.file);
    }
    T::FULL_NAME
}

#[test]
fn every_released_writer_schema_decodes_like_apache_avro_resolution() {
    for_every_record!(released_writer_datums);
    // AgentLifecycle v1 (no `tags`) is one of them, and reads directly into tags = None.
    let v1 = Catalog::get()
        .all()
        .iter()
        .find(|s| s.file == "history/agent_lifecycle.v1.avsc")
        .expect("v1");
    assert!(v1.reads_directly());
}

#[test]
fn metric_report_v1_reads_directly_with_the_v2_posture_fields_empty() {
    // v1's SecurityPosture lacks the five fields v2 added (null defaults): its datums take
    // the direct path, and both paths read them as None.
    let v1 = Catalog::get()
        .all()
        .iter()
        .find(|s| s.file == "history/metric_report.v1.avsc")
        .expect("metric_report v1");
    assert!(v1.reads_directly());
    let report = fixtures::metric_report("t1", "a1", T0);
    assert!(
        report
            .security
            .as_ref()
            .is_some_and(|s| s.reboot_required.is_some()),
        "the fixture has the v2 fields, so dropping them shows"
    );
    let mut bytes = codec::MAGIC.to_vec();
    bytes.extend_from_slice(&v1.fingerprint.to_le_bytes());
    bytes.extend(write_with(&v1.schema, &report, &mut HashMap::new()));
    let back = same_outcome::<MetricReport>(None, &bytes, v1.file).expect("decodes");
    let sec = back.security.expect("v1 carries the posture");
    assert_eq!(sec.firewall_enabled, Some(true));
    assert_eq!(sec.pending_updates, Some(3));
    assert_eq!(
        sec,
        SecurityPosture {
            firewall_enabled: Some(true),
            pending_updates: Some(3),
            ..SecurityPosture::default()
        },
        "the v2 fields read as None"
    );
}

/// A schema registry holding foreign versions of our records, by id.
#[derive(Debug)]
struct Registry(HashMap<u32, String>);

#[async_trait::async_trait]
impl SchemaLookup for Registry {
    async fn schema_by_id(&self, id: u32) -> Result<String, LookupError> {
        self.0.get(&id).cloned().ok_or(LookupError {
            message: format!("schema {id} not found (404)"),
            retriable: false,
        })
    }
}

fn current_json<T: Record>() -> serde_json::Value {
    let file = Catalog::get().current(T::FULL_NAME).expect("current").file;
    let text = codec::AVSC_FILES
        .iter()
        .find(|(f, _)| *f == file)
        .map(|(_, t)| *t)
        .expect("avsc");
    serde_json::from_str(text).expect("json")
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

/// Another producer's newer schema: ours plus fields of every kind the reader must skip,
/// first, in the middle and last.
/// Ours with fields added first, in the middle and (`with_blocks`: an array of maps) last.
fn with_foreign_fields(mut json: serde_json::Value, with_blocks: bool) -> serde_json::Value {
    let fields = json["fields"].as_array_mut().expect("fields");
    fields.insert(
        0,
        serde_json::json!({"name": "x_first", "type": "string", "default": ""}),
    );
    let middle = fields.len() / 2;
    fields.insert(
        middle,
        serde_json::json!({"name": "x_middle", "default": null, "type": ["null", {
        "type": "record", "name": "XForeign", "fields": [
            {"name": "b", "type": "bytes"},
            {"name": "e", "type": {"type": "enum", "name": "XKind", "symbols": ["A", "B"]}},
            {"name": "f", "type": {"type": "fixed", "name": "XFixed", "size": 3}},
            {"name": "r", "type": "float"},
            {"name": "t", "type": "boolean"},
            {"name": "i", "type": "int"}
        ]}]}),
    );
    if with_blocks {
        fields.push(
            serde_json::json!({"name": "x_last", "default": [], "type": {
            "type": "array", "items": {"type": "map", "values": ["null", "long"]}}}),
        );
    }
    json
}

fn foreign_values(g: &mut Gen) -> HashMap<String, Value> {
    let first = Value::String(g.string());
    let middle = match g.0.random_bool(0.5) {
        false => Value::Union(0, Box::new(Value::Null)),
        true => Value::Union(
            1,
            Box::new(Value::Record(vec![
                ("b".into(), Value::Bytes(g.bytes().0)),
                ("e".into(), Value::Enum(1, "B".into())),
                ("f".into(), Value::Fixed(3, vec![1, 2, 3])),
                ("r".into(), Value::Float(f32::NAN)),
                ("t".into(), Value::Boolean(g.bool())),
                ("i".into(), Value::Int(g.int())),
            ])),
        ),
    };
    let last = Value::Array(
        (0..g.len())
            .map(|_| {
                Value::Map(
                    (0..g.len())
                        .map(|_| {
                            let v = match g.opt(Gen::long) {
                                None => Value::Union(0, Box::new(Value::Null)),
                                Some(n) => Value::Union(1, Box::new(Value::Long(n))),
                            };
                            (g.string(), v)
                        })
                        .collect(),
                )
            })
            .collect(),
    );
    HashMap::from([
        ("x_first".to_owned(), first),
        ("x_middle".to_owned(), middle),
        ("x_last".to_owned(), last),
    ])
}

fn foreign_writer_datums<T: Arbitrary>() -> &'static str {
    // Added fields without arrays or maps are read through by the direct path; an added
    // array or map sends the writer to apache-avro (serde would jump over its blocks by
    // the byte size the datum announces).
    for with_blocks in [false, true] {
        let text = with_foreign_fields(current_json::<T>(), with_blocks).to_string();
        let writer = Schema::parse_str(&text).expect("foreign schema parses");
        let framing =
            RegistryFraming::new([], Some(Arc::new(Registry(HashMap::from([(900, text)])))))
                .expect("framing");
        assert_eq!(
            resolved(&framing, 900).reads_directly(),
            !with_blocks,
            "added fields without blocks are read through by the direct path"
        );
        let mut g = Gen::new(3);
        for v in values::<T>(3) {
            let mut bytes = vec![0, 0, 0, 3, 132]; // Confluent, id 900
            bytes.extend(write_with(&writer, &v, &mut foreign_values(&mut g)));
            let back = same_outcome::<T>(Some(&framing), &bytes, "foreign").expect("decodes");
            assert_eq!(comparable(&back), comparable(&v));
        }
    }
    T::FULL_NAME
}

#[test]
fn foreign_writer_schemas_with_added_fields_decode_directly_like_apache_avro() {
    for_every_record!(foreign_writer_datums);
}

#[test]
fn writer_schemas_the_direct_path_does_not_cover_are_resolved_by_apache_avro() {
    // Each differs from the current MetricReport in a way serde alone would read
    // differently or not at all: a missing field with a non-null default, a promoted
    // type (int written, long read), a union in another order.
    let base = current_json::<MetricReport>();
    let field = |json: &serde_json::Value, name: &str| -> usize {
        json["fields"]
            .as_array()
            .expect("fields")
            .iter()
            .position(|f| f["name"] == name)
            .expect("field")
    };
    let mut missing_default = base.clone();
    let i = field(&missing_default, "swap_used_bytes");
    missing_default["fields"]
        .as_array_mut()
        .expect("fields")
        .remove(i);
    let mut promoted = base.clone();
    let i = field(&promoted, "uptime_seconds");
    promoted["fields"][i]["type"] = "int".into();
    // [SecurityPosture, "null"] instead of ["null", SecurityPosture].
    let mut union_changed = base.clone();
    let i = field(&union_changed, "security");
    union_changed["fields"][i]["type"]
        .as_array_mut()
        .expect("union")
        .reverse();
    union_changed["fields"][i]
        .as_object_mut()
        .expect("field")
        .remove("default");

    let mut g = Gen::new(4);
    for (id, json) in [
        (901u32, missing_default),
        (902, promoted),
        (903, union_changed),
    ] {
        let text = json.to_string();
        let writer = Schema::parse_str(&text).expect("parses");
        let framing = RegistryFraming::new(
            [],
            Some(Arc::new(Registry(HashMap::from([(id, text.clone())])))),
        )
        .expect("framing");
        let known = resolved(&framing, id);
        assert!(!known.reads_directly(), "{text}");
        for _ in 0..50 {
            let mut v = MetricReport::arbitrary(&mut g);
            v.uptime_seconds = i64::from(g.int()); // fits the int the promoted writer has
            let mut bytes = vec![0];
            bytes.extend_from_slice(&id.to_be_bytes());
            let mut extra = HashMap::new();
            bytes.extend(write_with(&writer, &v, &mut extra));
            let back =
                same_outcome::<MetricReport>(Some(&framing), &bytes, "resolved").expect("decodes");
            if id == 901 {
                assert_eq!(back.swap_used_bytes, 0, "the reader's default");
            } else {
                assert_eq!(comparable(&back), comparable(&v));
            }
        }
    }
}

// ---- hostile bytes ----

/// Zig-zag varint of `n`.
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

fn hostile<T: Arbitrary>() -> &'static str {
    let codec = T::codec();
    let huge: Vec<Vec<u8>> = [
        -1,
        -2,
        i64::MIN,
        i64::MAX,
        1 << 31,
        1 << 40,
        (1 << 20) + 1,
        64,
        i64::from(i32::MAX),
    ]
    .into_iter()
    .map(varint)
    .chain([vec![0xff; 10], vec![0xff; 11], vec![0x80; 9]])
    .collect();
    let mut g = Gen::new(5);
    let fixtures = T::fixtures();
    let randoms: Vec<T> = (0..3).map(|_| T::arbitrary(&mut g)).collect();
    for (n, v) in fixtures.iter().chain(&randoms).enumerate() {
        let bytes = codec.encode_single_object(v).expect("encode");
        let what = format!("{} input {n}", T::FULL_NAME);
        if n < fixtures.len() {
            // Every truncation, header included.
            for len in 0..bytes.len() {
                assert!(same_outcome::<T>(None, &bytes[..len], &what).is_err());
            }
            // Every bit flip.
            for i in 0..bytes.len() {
                for bit in 0..8 {
                    let mut b = bytes.clone();
                    b[i] ^= 1 << bit;
                    let _ = same_outcome::<T>(None, &b, &what);
                }
            }
            // Huge, negative and overlong length prefixes and counts, at every datum
            // position (the first is the event id's length).
            for i in codec::HEADER_LEN..bytes.len() {
                for h in &huge {
                    let mut b = bytes[..i].to_vec();
                    b.extend_from_slice(h);
                    b.extend_from_slice(&bytes[i + 1..]);
                    let _ = same_outcome::<T>(None, &b, &what);
                }
            }
        }
        // Random bytes overwritten, inserted, appended.
        for _ in 0..RANDOM_MUTATIONS {
            let mut b = bytes.clone();
            for _ in 0..g.0.random_range(1..4) {
                let i = g.0.random_range(codec::HEADER_LEN..b.len());
                match g.0.random_range(0..3) {
                    0 => b[i] = g.0.random(),
                    1 => b.insert(i, g.0.random()),
                    _ => b.push(g.0.random()),
                }
            }
            let _ = same_outcome::<T>(None, &b, &what);
        }
    }
    T::FULL_NAME
}

#[test]
fn hostile_bytes_never_panic_and_fail_where_apache_avro_fails() {
    for_every_record!(hostile);
}

#[test]
fn a_length_prefix_beyond_the_datum_fails_without_allocating_it() {
    // An event id claiming 2^40 bytes: refused from the bytes at hand, not by trying to
    // allocate a terabyte (no allocation bound needs to be configured for that).
    let hb = codec::Wire::plain()
        .encode(&fixtures::heartbeat("t", "a", T0, 1))
        .expect("encode");
    let mut b = hb[..codec::HEADER_LEN].to_vec();
    b.extend(varint(1 << 40));
    b.extend_from_slice(&hb[codec::HEADER_LEN + 1..]);
    let err = codec::Wire::plain()
        .decode_known::<Heartbeat>(&b)
        .unwrap_err();
    assert!(matches!(err, CodecError::Avro(_)), "{err}");
    // A list claiming 2^40 items of a MetricReport likewise.
    let mut r = fixtures::metric_report("t", "a", T0);
    r.cpu_per_core = vec![1.5];
    let bytes = codec::Wire::plain().encode(&r).expect("encode");
    let one_item = [varint(1), 1.5f64.to_le_bytes().to_vec(), varint(0)].concat();
    let at = bytes
        .windows(one_item.len())
        .position(|w| w == one_item.as_slice())
        .expect("cpu_per_core in the datum");
    let mut b = bytes[..at].to_vec();
    b.extend(varint(1 << 40));
    b.extend_from_slice(&bytes[at + 1..]);
    assert!(matches!(
        codec::Wire::plain().decode_known::<MetricReport>(&b),
        Err(CodecError::Avro(_))
    ));
    // Counts within apache-avro's default bound (which made the old path reserve them and
    // abort), for the list and for the map of custom metrics.
    let mut b = bytes[..at].to_vec();
    b.extend(varint(500_000_000));
    b.extend_from_slice(&bytes[at + 1..]);
    assert!(codec::Wire::plain()
        .decode_known::<MetricReport>(&b)
        .is_err());
    let custom = [varint(1), varint(11), b"queue_depth".to_vec()].concat();
    let at = bytes
        .windows(custom.len())
        .position(|w| w == custom.as_slice())
        .expect("custom in the datum");
    let mut b = bytes[..at].to_vec();
    b.extend(varint(500_000_000));
    b.extend_from_slice(&bytes[at + 1..]);
    assert!(codec::Wire::plain()
        .decode_known::<MetricReport>(&b)
        .is_err());
}

#[test]
fn a_long_with_bits_beyond_the_64th_is_refused() {
    // A varint of ten bytes whose last one is above 1 encodes more than 64 bits: no Avro
    // writer produces it. apache-avro alone drops the extra bits and reads a number; the
    // direct path refuses the record (a DECODE dead letter rather than a silently wrong
    // value), and so does the resolving path, whose datum `serde_avro_fast` reads first
    // (the length check before apache-avro, `tests/hostile_lengths.rs`).
    let mut hb = fixtures::heartbeat("t", "a", T0, 1);
    hb.config_version = Some(1);
    let hb = codec::Wire::plain().encode(&hb).expect("encode");
    let sequence = varint(1); // the last field's long (config_version)
    assert!(hb.ends_with(&sequence));
    let mut b = hb[..hb.len() - sequence.len()].to_vec();
    b.extend_from_slice(&[0x82, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    let err = Heartbeat::codec().decode_resolving(None, &b).unwrap_err();
    assert!(matches!(err, CodecError::Avro(_)), "{err}");
    let err = codec::Wire::plain()
        .decode_known::<Heartbeat>(&b)
        .unwrap_err();
    assert!(matches!(err, CodecError::Avro(_)), "{err}");
    // With the tenth byte at 1 (bit 64 of the varint) it is a valid long for both.
    let last = b.len() - 1;
    b[last] = 0x01;
    assert_eq!(
        codec::Wire::plain()
            .decode_known::<Heartbeat>(&b)
            .expect("valid"),
        Heartbeat::codec()
            .decode_resolving(None, &b)
            .expect("valid")
    );
}

#[test]
fn a_report_head_is_the_whole_reports_and_a_truncated_one_fails() {
    let codec = MetricReport::codec();
    let framing = RegistryFraming::new([(MetricReport::FULL_NAME, 12)], None).expect("framing");
    let fixtures = MetricReport::fixtures().len();
    for (n, v) in values::<MetricReport>(9).into_iter().enumerate() {
        let want = ReportHead::from(v.clone());
        for (framing, bytes) in [
            (None, codec.encode_single_object(&v).expect("encode")),
            (
                Some(&framing),
                codec.encode_confluent(12, &v).expect("encode"),
            ),
        ] {
            let head: ReportHead = codec
                .decode_part(framing, &bytes, ReportHead::from)
                .expect("head");
            assert_eq!(head, want);
            if n >= fixtures {
                continue;
            }
            for len in 0..bytes.len() {
                assert!(
                    codec
                        .decode_part(framing, &bytes[..len], ReportHead::from)
                        .is_err(),
                    "a report cut at {len} of {} bytes",
                    bytes.len()
                );
            }
        }
    }
}
