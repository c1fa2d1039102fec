//! The seed corpus of each target: valid inputs (and a few refused ones) that the fuzzer
//! mutates, built from the project's fixtures so they stay valid as the types evolve.
//! `scripts/fuzz.sh seeds` writes them to `fuzz/corpus/<target>/`.

use std::collections::BTreeMap;

use fleet_schemas::api::*;
use fleet_schemas::codec::{self, Catalog, Record, CONFLUENT_MAGIC, MAGIC};
use fleet_schemas::fixtures::{self, SplitMix64};
use fleet_schemas::time::from_micros;
use fleet_timeseries::{chunk, rollup, Block};

use crate::NOW;

/// (file name, bytes).
pub type Seed = (String, Vec<u8>);

/// The seeds of a target (empty for an unknown one).
pub fn for_target(target: &str) -> Vec<Seed> {
    match target {
        "body_metrics" => body_metrics(),
        "body_heartbeat" => body_heartbeat(),
        "body_events" => body_events(),
        "body_inventory" => body_inventory(),
        "body_register" => body_register(),
        "ws_frame" => ws_frame(),
        "avro_decode" => avro_decode(),
        "log_chunk" => log_chunk(),
        "ts_chunk" => ts_chunk(),
        "ts_rollup" => ts_rollup(),
        "ts_roundtrip" => ts_roundtrip(),
        "proto_remote_write" => proto_remote_write(),
        "proto_otlp" => proto_otlp(),
        "proto_influx" => proto_influx(),
        _ => Vec::new(),
    }
}

fn seed(name: &str, bytes: Vec<u8>) -> Seed {
    (name.to_owned(), bytes)
}

fn json_seed<T: serde::Serialize>(name: &str, v: &T) -> Seed {
    seed(
        &format!("{name}.json"),
        serde_json::to_vec(v).expect("serializes"),
    )
}

/// `secs` seconds before [`NOW`].
fn ago(secs: i64) -> chrono::DateTime<chrono::Utc> {
    from_micros(NOW - secs * 1_000_000)
}

// ------------------------------------------------------------------------ gateway bodies

fn report() -> ReportIn {
    ReportIn {
        collected_at: ago(10),
        cpu_percent: 42.5,
        cpu_per_core: vec![40.0, 45.0],
        memory_used_bytes: 3 << 30,
        memory_total_bytes: 8 << 30,
        memory_percent: 37.5,
        swap_used_bytes: 0,
        swap_total_bytes: 1 << 30,
        disks: vec![
            DiskIn {
                mount: "/".into(),
                used_bytes: 20 << 30,
                total_bytes: 100 << 30,
                percent: 20.0,
            },
            DiskIn {
                mount: "/var/lib/postgresql".into(),
                used_bytes: 5 << 30,
                total_bytes: 50 << 30,
                percent: 10.0,
            },
        ],
        disk_read_bytes: 4096,
        disk_write_bytes: 8192,
        load_1: 0.52,
        load_5: 0.48,
        load_15: 0.4,
        uptime_seconds: 86_400,
        net_rx_bytes: 123_456,
        net_tx_bytes: 65_432,
        interfaces: vec![InterfaceIn {
            name: "eth0".into(),
            rx_bytes: 123_456,
            tx_bytes: 65_432,
        }],
        process_count: 187,
        services: vec![
            ServiceIn {
                name: "nginx".into(),
                status: "running".into(),
                pid: Some(812),
            },
            ServiceIn {
                name: "cron".into(),
                status: "failed".into(),
                pid: None,
            },
        ],
        security: Some(SecurityIn {
            firewall_enabled: Some(true),
            pending_updates: Some(3),
            pending_security_updates: Some(1),
            reboot_required: Some(true),
            ssh_permit_root_login: Some("prohibit-password".into()),
            ssh_password_authentication: Some(false),
            antivirus_present: Some(true),
            antivirus_signature_age_hours: Some(30.5),
        }),
        custom: BTreeMap::from([("queue_depth".to_owned(), 7.0), ("app.rps".into(), 1.5)]),
    }
}

fn body_metrics() -> Vec<Seed> {
    let full = report();
    let mut hot = report();
    hot.cpu_percent = 150.0;
    let mut disk = report();
    disk.disks[0].used_bytes = disk.disks[0].total_bytes + 1;
    let mut old = report();
    old.collected_at = ago(31 * 86_400);
    let mut root = report();
    if let Some(s) = root.security.as_mut() {
        s.ssh_permit_root_login = Some("maybe".into());
        s.antivirus_signature_age_hours = Some(-1.0);
    }
    let minimal = format!(
        r#"{{"reports":[{{"collected_at":"{}","cpu_percent":3,"memory_used_bytes":1,"memory_total_bytes":2,"memory_percent":50,"load_1":0,"load_5":0,"load_15":0,"uptime_seconds":9}}]}}"#,
        ago(1).to_rfc3339()
    );
    vec![
        json_seed("full", &MetricBatch {
            reports: vec![full.clone()],
        }),
        seed("minimal.json", minimal.into_bytes()),
        json_seed("partial", &MetricBatch {
            reports: vec![full, hot.clone(), disk],
        }),
        json_seed("refused", &MetricBatch {
            reports: vec![hot, old, root],
        }),
        seed("empty.json", br#"{"reports":[]}"#.to_vec()),
    ]
}

fn heartbeat_in() -> HeartbeatIn {
    HeartbeatIn {
        sent_at: ago(1),
        sequence: 42,
        uptime_seconds: 86_400,
        agent_version: "0.1.0".into(),
        heartbeat_interval_secs: Some(30.0),
        config_version: Some(1_763_900_000_000_000),
    }
}

fn body_heartbeat() -> Vec<Seed> {
    let mut future = heartbeat_in();
    future.sent_at = from_micros(NOW + 3_600_000_000);
    vec![
        json_seed("valid", &heartbeat_in()),
        json_seed("future", &future),
        seed(
            "unknown_field.json",
            br#"{"sent_at":"2025-11-23T12:13:19Z","sequence":1,"uptime_seconds":1,"agent_version":"x","extra":1}"#
                .to_vec(),
        ),
    ]
}

fn events() -> Vec<EventIn> {
    vec![
        EventIn {
            occurred_at: ago(30),
            kind: "service_crashed".into(),
            severity: "warning".into(),
            message: "nginx exited with status 1".into(),
            attributes: BTreeMap::from([
                ("service".to_owned(), "nginx".to_owned()),
                ("exit_code".into(), "1".into()),
            ]),
        },
        EventIn {
            occurred_at: ago(20),
            kind: "login.failed".into(),
            severity: "critical".into(),
            message: String::new(),
            attributes: BTreeMap::new(),
        },
        EventIn {
            occurred_at: ago(10),
            kind: "Bad Kind".into(),
            severity: "info".into(),
            message: "refused: the kind".into(),
            attributes: BTreeMap::new(),
        },
    ]
}

fn body_events() -> Vec<Seed> {
    let all = events();
    vec![
        json_seed("batch", &EventBatch { events: all.clone() }),
        json_seed("one", &EventBatch {
            events: all[..1].to_vec(),
        }),
        json_seed("refused", &EventBatch {
            events: all[2..].to_vec(),
        }),
    ]
}

fn inventory_in() -> InventoryIn {
    InventoryIn {
        collected_at: ago(60),
        source: "dpkg".into(),
        packages: vec![
            PackageIn {
                name: "bash".into(),
                version: "5.2.15-2+b7".into(),
                arch: Some("amd64".into()),
            },
            PackageIn {
                name: "tzdata".into(),
                version: "2024a-0+deb12u1".into(),
                arch: None,
            },
            PackageIn {
                name: "nginx".into(),
                version: "".into(),
                arch: Some("all".into()),
            },
        ],
    }
}

fn body_inventory() -> Vec<Seed> {
    let none = InventoryIn {
        collected_at: ago(60),
        source: "none".into(),
        packages: Vec::new(),
    };
    let mut rpm = inventory_in();
    rpm.source = "rpm".into();
    rpm.packages[0].name = "bash\tx".into();
    vec![
        json_seed("dpkg", &inventory_in()),
        json_seed("none", &none),
        json_seed("refused", &rpm),
    ]
}

fn facts() -> MachineFacts {
    MachineFacts {
        hostname: "web-1".into(),
        os_type: "linux".into(),
        os_version: "Debian GNU/Linux 12".into(),
        kernel_version: "6.1.0-18-amd64".into(),
        architecture: "x86_64".into(),
        ip_addresses: vec!["10.0.0.5".into(), "fe80::1".into()],
        mac_addresses: vec!["02:00:00:00:00:01".into()],
        cpu_model: "Intel(R) Xeon(R) CPU".into(),
        cpu_cores: 8,
        memory_total_bytes: 8 << 30,
        disk_total_bytes: 100 << 30,
        agent_version: "0.1.0".into(),
    }
}

fn body_register() -> Vec<Seed> {
    vec![
        json_seed("full", &RegisterRequest {
            token: "fst_4f1c2b9e8d7a6c5b4a39281706f5e4d3".into(),
            facts: facts(),
        }),
        seed(
            "minimal.json",
            br#"{"token":"t","facts":{"hostname":"h","os_type":"linux","agent_version":"1"}}"#
                .to_vec(),
        ),
        seed(
            "refused.json",
            br#"{"token":"","facts":{"hostname":"","os_type":"linux","agent_version":"1"}}"#
                .to_vec(),
        ),
    ]
}

// ------------------------------------------------------------------------------ frames

fn ws_frame() -> Vec<Seed> {
    let command_id = "0190f5a4-1c2d-7e3f-8a9b-0c1d2e3f4a5b".to_owned();
    let messages = [
        (
            "metrics",
            AgentMessage::Metrics {
                id: 1,
                reports: vec![report()],
            },
        ),
        (
            "heartbeat",
            AgentMessage::Heartbeat {
                id: 2,
                heartbeat: heartbeat_in(),
            },
        ),
        (
            "events",
            AgentMessage::Events {
                id: 3,
                events: events(),
            },
        ),
        (
            "inventory",
            AgentMessage::Inventory {
                id: 4,
                inventory: inventory_in(),
            },
        ),
        (
            "command_progress",
            AgentMessage::CommandProgress {
                id: 5,
                progress: CommandProgressIn {
                    command_id: command_id.clone(),
                    sequence: 1,
                    stream: "stdout".into(),
                    chunk: "restarting nginx\n".into(),
                    at: ago(2),
                },
            },
        ),
        (
            "command_result",
            AgentMessage::CommandResult {
                id: 6,
                result: CommandResultIn {
                    command_id,
                    status: "succeeded".into(),
                    exit_code: Some(0),
                    stdout: "ok\n".into(),
                    stderr: String::new(),
                    output_truncated: false,
                    message: None,
                    started_at: Some(ago(3)),
                    finished_at: ago(1),
                },
            },
        ),
    ];
    let mut out: Vec<Seed> = messages.iter().map(|(n, m)| json_seed(n, m)).collect();
    out.push(seed(
        "unknown_type.json",
        br#"{"id":7,"type":"reboot"}"#.to_vec(),
    ));
    out.push(seed("no_id.json", br#"{"type":"heartbeat"}"#.to_vec()));
    out.push(seed(
        "extra_key.json",
        br#"{"id":8,"type":"heartbeat","heartbeat":{},"x":1}"#.to_vec(),
    ));
    out
}

// -------------------------------------------------------------------------------- Avro

/// One fixture record of each type, as (full name, single-object bytes, datum).
fn fixture_records() -> Vec<(&'static str, Vec<u8>, apache_avro::types::Value)> {
    const T: i64 = 1_763_900_000_123_456;
    fn one<R: Record>(r: R) -> (&'static str, Vec<u8>, apache_avro::types::Value) {
        let bytes = R::codec().encode_single_object(&r).expect("encode");
        let value = apache_avro::to_value(&r).expect("to value");
        (R::FULL_NAME, bytes, value)
    }
    vec![
        one(fixtures::metric_report("t1", "a1", T)),
        one(fixtures::heartbeat("t1", "a1", T, 7)),
        one(fixtures::agent_event("t1", "a1", T)),
        one(fixtures::alert_raised("t1", "a1", T)),
        one(fixtures::agent_registered("t1", "a1", T)),
        one(fixtures::command_completed("t1", "a1", T)),
        one(fixtures::software_inventory("t1", "a1", T)),
        one(fixtures::ticket_requested("t1", "a1", T)),
        one(fixtures::rule_defined("t1", "rule-1", T)),
        one(fixtures::dead_letter("read-model", T)),
        one(fixtures::sample_batch("t1", T)),
    ]
}

fn confluent(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = vec![CONFLUENT_MAGIC];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

fn stem(full_name: &str) -> String {
    full_name.rsplit('.').next().unwrap_or(full_name).to_owned()
}

fn avro_decode() -> Vec<Seed> {
    let framing = crate::framing();
    let names = crate::record_names();
    let catalog = Catalog::get();
    let mut out = Vec::new();
    for (name, single, value) in fixture_records() {
        let i = names.iter().position(|n| *n == name).expect("known");
        let i32_ = u32::try_from(i).expect("few");
        let stem = stem(name);
        let datum = &single[codec::HEADER_LEN..];
        out.push(seed(&format!("{stem}.single"), single.clone()));
        out.push(seed(
            &format!("{stem}.confluent"),
            confluent(framing.id_of(name).expect("registered"), datum),
        ));
        // Every schema version of this record, fetched from the registry by id, and
        // written with the released older ones (single-object).
        for (j, s) in catalog.all().iter().enumerate() {
            if s.full_name != name {
                continue;
            }
            let id = crate::CATALOG_IDS + u32::try_from(j).expect("few");
            let file = s.file.replace(['/', '.'], "_");
            let own = s.fingerprint == catalog.current(name).expect("current").fingerprint;
            let datum = if own {
                datum.to_vec()
            } else {
                older_datum(&s.schema, value.clone())
            };
            out.push(seed(&format!("{stem}.registry_{file}"), confluent(id, &datum)));
            if !own {
                let mut bytes = MAGIC.to_vec();
                bytes.extend_from_slice(&s.fingerprint.to_le_bytes());
                bytes.extend_from_slice(&datum);
                out.push(seed(&format!("{stem}.single_{file}"), bytes));
            }
        }
        // Foreign versions: fields added around ours (read directly), and `event_id`
        // written as bytes (resolved by apache-avro); the same datum with x_first = ""
        // before and x_last = null (union branch 0) after for the first.
        let mut wrapped = vec![0u8];
        wrapped.extend_from_slice(datum);
        wrapped.push(0);
        out.push(seed(
            &format!("{stem}.foreign_direct"),
            confluent(crate::FOREIGN_DIRECT_IDS + i32_, &wrapped),
        ));
        out.push(seed(
            &format!("{stem}.foreign_resolved"),
            confluent(crate::FOREIGN_RESOLVED_IDS + i32_, datum),
        ));
    }
    for (name, bytes) in &out {
        assert!(
            crate::wire().decode_value(bytes).is_ok(),
            "seed {name} does not decode"
        );
    }
    out
}

/// A record's value (of the current schema) written with an older schema of it: its
/// fields only, in its order.
fn older_datum(writer: &apache_avro::Schema, value: apache_avro::types::Value) -> Vec<u8> {
    let value = writer_fields(writer, value);
    apache_avro::to_avro_datum(writer, value).expect("write with the older schema")
}

/// `value` with the fields of `writer` in its order, in records at any depth (an older
/// schema may lack fields of a nested record too, as metric_report v1's SecurityPosture
/// lacks v2's posture fields).
fn writer_fields(
    writer: &apache_avro::Schema,
    value: apache_avro::types::Value,
) -> apache_avro::types::Value {
    use apache_avro::types::Value;
    use apache_avro::Schema;
    match (writer, value) {
        (Schema::Record(r), Value::Record(fields)) => {
            let mut fields: BTreeMap<String, Value> = fields.into_iter().collect();
            Value::Record(
                r.fields
                    .iter()
                    .map(|f| {
                        let v = fields.remove(&f.name).expect("field");
                        (f.name.clone(), writer_fields(&f.schema, v))
                    })
                    .collect(),
            )
        }
        (Schema::Union(u), Value::Union(i, inner)) => {
            let branch = usize::try_from(i).ok().and_then(|i| u.variants().get(i));
            match branch {
                Some(s) => Value::Union(i, Box::new(writer_fields(s, *inner))),
                None => Value::Union(i, inner),
            }
        }
        (Schema::Array(a), Value::Array(items)) => Value::Array(
            items
                .into_iter()
                .map(|v| writer_fields(&a.items, v))
                .collect(),
        ),
        (Schema::Map(m), Value::Map(items)) => Value::Map(
            items
                .into_iter()
                .map(|(k, v)| (k, writer_fields(&m.types, v)))
                .collect(),
        ),
        (_, v) => v,
    }
}

// ----------------------------------------------------------------------------- log chunk

fn log_chunk() -> Vec<Seed> {
    use fleet_event_log::embedded::fuzzing::encode_chunk;
    let with_base = |base: u64, records: &[(i64, Option<&[u8]>, &[u8])]| {
        let mut out = base.to_le_bytes().to_vec();
        out.extend(encode_chunk(records).expect("encode"));
        out
    };
    let records = fixture_records();
    let values: Vec<(i64, Option<&[u8]>, &[u8])> = records
        .iter()
        .enumerate()
        .map(|(i, (_, bytes, _))| {
            let key: Option<&[u8]> = (i % 3 != 0).then_some(b"agent-1".as_slice());
            (1_763_900_000_000 + i as i64, key, bytes.as_slice())
        })
        .collect();
    vec![
        seed("empty", with_base(0, &[])),
        seed(
            "one",
            with_base(7, &[(1_763_900_000_000, None, b"hello".as_slice())]),
        ),
        seed(
            "edge_values",
            with_base(
                42,
                &[
                    (0, None, b"v".as_slice()),
                    (-5, Some(b"".as_slice()), b"".as_slice()),
                    (i64::MAX, None, b"".as_slice()),
                ],
            ),
        ),
        seed("records", with_base(1_000_000, &values)),
    ]
}

// ------------------------------------------------------------------------- time series

/// An agent's reports flattened into one block, as the time-series store makes it.
fn fleet_block(seed: u64, reports: usize) -> Block {
    let start = 1_763_899_200_000_000;
    let samples: Vec<(i64, String, f64)> = fixtures::fleet_reports(seed, 1, start, 10_000_000, reports)
        .flat_map(|r| {
            fleet_schemas::samples::samples(&r)
                .into_iter()
                .map(move |s| (r.occurred_at, s.series(), s.value))
        })
        .collect();
    Block::from_samples(samples).expect("a block")
}

fn odd_block() -> Block {
    Block::from_samples([
        (0, "a", f64::NAN),
        (1, "a", -0.0),
        (2, "a", f64::from_bits(1)),
        (3, "a", f64::INFINITY),
        (1, "b", 0.1),
        (5, "b", 1e300),
        (i64::MAX, "c", 1.0),
        (i64::MIN, "c", -1.0),
    ])
    .expect("a block")
}

fn ts_chunk() -> Vec<Seed> {
    let tiny = Block::from_samples([(1_000_000, "cpu.percent", 12.5)]).expect("a block");
    vec![
        seed("hour", chunk::encode(&fleet_block(7, 360))),
        seed("minutes", chunk::encode(&fleet_block(8, 12))),
        seed("tiny", chunk::encode(&tiny)),
        seed("odd", chunk::encode(&odd_block())),
        seed("empty", chunk::encode(&Block::default())),
    ]
}

fn ts_rollup() -> Vec<Seed> {
    let hour = fleet_block(7, 360);
    let mut out = Vec::new();
    for (name, block) in [("hour", &hour), ("odd", &odd_block())] {
        for width in [1, 300_000_000, 3_600_000_000] {
            if let Ok(set) = rollup::compute(block, width) {
                out.push(seed(&format!("{name}_{width}"), rollup::encode(&set)));
            }
        }
    }
    out
}

fn ts_roundtrip() -> Vec<Seed> {
    let mut rng = SplitMix64::new(11);
    (0..8)
        .map(|i| {
            let len = 32 << (i % 4);
            let bytes = (0..len).map(|_| rng.next_u64() as u8).collect();
            seed(&format!("random_{i}"), bytes)
        })
        .collect()
}

// --------------------------------------------------------------------------- Protocols

/// `mode` then `body`: the protocol targets read their first byte as the variant.
fn moded(name: &str, mode: u8, body: &[u8]) -> Seed {
    let mut bytes = vec![mode];
    bytes.extend_from_slice(body);
    seed(name, bytes)
}

const RW_SNAPPY: &[u8] = include_bytes!("../../protocols/tests/fixtures/remote_write_v1.snappy");
const RW_PROMETHEUS: &[u8] =
    include_bytes!("../../protocols/tests/fixtures/remote_write_prometheus.snappy");

fn proto_remote_write() -> Vec<Seed> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(RW_SNAPPY)
        .expect("fixture is snappy");
    // A 2.0 request: symbols ["", "__name__", "up", "job", "node"], one series, one sample.
    let mut v2 = Vec::new();
    for s in ["", "__name__", "up", "job", "node"] {
        v2.extend_from_slice(&[0x22, s.len() as u8]);
        v2.extend_from_slice(s.as_bytes());
    }
    v2.extend_from_slice(&[
        0x2A, 0x13, 0x0A, 0x04, 1, 2, 3, 4, 0x12, 0x0B, 0x09, 0, 0, 0, 0, 0, 0, 0xF0, 0x3F, 0x10,
        0x01,
    ]);
    vec![
        moded("v1.snappy", 0, RW_SNAPPY),
        moded("prometheus.snappy", 0, RW_PROMETHEUS),
        moded("v1.raw", 1, &raw),
        moded("v2.raw", 2, &v2),
        moded(
            "v2.snappy",
            3,
            &snap::raw::Encoder::new()
                .compress_vec(&v2)
                .expect("compress"),
        ),
    ]
}

fn proto_otlp() -> Vec<Seed> {
    vec![
        moded(
            "sdk.pb",
            0,
            include_bytes!("../../protocols/tests/fixtures/otlp_metrics.pb"),
        ),
        moded(
            "sdk.json",
            1,
            include_bytes!("../../protocols/tests/fixtures/otlp_metrics.json"),
        ),
    ]
}

fn proto_influx() -> Vec<Seed> {
    vec![
        moded(
            "ns",
            0,
            include_bytes!("../../protocols/tests/fixtures/influx_ns.lp"),
        ),
        moded(
            "s",
            3,
            include_bytes!("../../protocols/tests/fixtures/influx_s.lp"),
        ),
        moded("bad", 0, b"m,a=1,a=2 f=1\nm f=\"s\" 1\n# c\n"),
    ]
}
