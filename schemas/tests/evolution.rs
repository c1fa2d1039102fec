//! Schema evolution: every released version of each record schema is kept, and each
//! newer version reads data written with every older one (BACKWARD compatibility, as the
//! schema registry enforces it on `<topic>-value`).
//!
//! `schemas/avro/history/RELEASED` lists every released version: `<stem> <version>
//! <fingerprint>`, one line each, the newest version of a stem being the current
//! `schemas/avro/<stem>.avsc` and the older ones `schemas/avro/history/<stem>.v<N>.avsc`.
//! Changing a current `.avsc` therefore fails `released_versions_are_all_kept` until the
//! previous text is copied to `history/` and the new version is listed, and the new one is
//! checked against all of its predecessors here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use apache_avro::schema_compatibility::SchemaCompatibility;
use apache_avro::types::Value;
use apache_avro::Schema;
use fleet_schemas::{codec, fixtures};

fn avro_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("avro")
}

/// (stem → [(version, fingerprint)]) from `history/RELEASED`, versions ascending.
fn released() -> BTreeMap<String, Vec<(u32, u64)>> {
    let text = std::fs::read_to_string(avro_dir().join("history/RELEASED")).expect("RELEASED");
    let mut out: BTreeMap<String, Vec<(u32, u64)>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(parts.len(), 3, "RELEASED line {}: {line:?}", n + 1);
        let version: u32 = parts[1].parse().expect("version number");
        let fp =
            u64::from_str_radix(parts[2].trim_start_matches("0x"), 16).expect("hex fingerprint");
        out.entry(parts[0].to_owned())
            .or_default()
            .push((version, fp));
    }
    for (stem, versions) in &mut out {
        versions.sort();
        let numbers: Vec<u32> = versions.iter().map(|v| v.0).collect();
        let expected: Vec<u32> = (1..=versions.len() as u32).collect();
        assert_eq!(
            numbers, expected,
            "{stem}: versions are 1, 2, ... without gaps"
        );
    }
    out
}

/// Text of version `version` of `stem`: the current file for the newest, else history.
fn version_text(stem: &str, version: u32, newest: u32) -> String {
    let path = if version == newest {
        avro_dir().join(format!("{stem}.avsc"))
    } else {
        avro_dir().join(format!("history/{stem}.v{version}.avsc"))
    };
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn current_stems() -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(avro_dir())
        .expect("avro dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".avsc").map(str::to_owned)
        })
        .collect();
    stems.sort();
    stems
}

#[test]
fn released_versions_are_all_kept() {
    let released = released();
    for stem in current_stems() {
        let versions = released.get(&stem).unwrap_or_else(|| {
            let text = version_text(&stem, 1, 1);
            let (_, fp) = codec::canonical_form_and_fingerprint(&text).expect("fingerprint");
            panic!("{stem}.avsc is not in history/RELEASED: add the line `{stem} 1 {fp:016x}`")
        });
        let newest = versions.last().map_or(0, |v| v.0);
        for &(version, fp) in versions {
            let text = version_text(&stem, version, newest);
            let (_, got) = codec::canonical_form_and_fingerprint(&text).expect("fingerprint");
            assert_eq!(
                got, fp,
                "{stem} v{version} changed (fingerprint {got:016x}, released {fp:016x}). A released \
                 schema never changes: copy the released text to history/{stem}.v{version}.avsc, \
                 make the change in {stem}.avsc and list it as `{stem} {} {got:016x}`",
                version + 1
            );
        }
    }
    for stem in released.keys() {
        assert!(
            current_stems().contains(stem),
            "{stem} is released but schemas/avro/{stem}.avsc is gone"
        );
    }
}

#[test]
fn every_released_version_is_in_the_codec_catalog() {
    // Records written with any released version decode: the codec knows them all.
    let catalog = codec::Catalog::get();
    for (stem, versions) in released() {
        let newest = versions.last().map_or(0, |v| v.0);
        for (version, fp) in versions {
            let known = catalog.by_fingerprint(fp).unwrap_or_else(|| {
                panic!("{stem} v{version} ({fp:016x}) is not in codec::AVSC_FILES")
            });
            let _ = version_text(&stem, version, newest);
            assert!(!known.full_name.is_empty());
        }
    }
}

/// A value of every record type, as the current Rust type writes it.
fn fixture_value(stem: &str) -> Value {
    let t0 = 1_763_900_000_123_456;
    let v = match stem {
        "metric_report" => apache_avro::to_value(fixtures::metric_report("t", "a", t0)),
        "heartbeat" => apache_avro::to_value(fixtures::heartbeat("t", "a", t0, 1)),
        "agent_event" => apache_avro::to_value(fixtures::agent_event("t", "a", t0)),
        "alert_event" => apache_avro::to_value(fixtures::alert_raised("t", "a", t0)),
        "agent_lifecycle" => apache_avro::to_value(fixtures::agent_registered("t", "a", t0)),
        "command_event" => apache_avro::to_value(fixtures::command_completed("t", "a", t0)),
        "software_inventory" => apache_avro::to_value(fixtures::software_inventory("t", "a", t0)),
        "ticket_event" => apache_avro::to_value(fixtures::ticket_requested("t", "a", t0)),
        "rule_event" => apache_avro::to_value(fixtures::rule_defined("t", "r", t0)),
        "dead_letter" => apache_avro::to_value(fixtures::dead_letter("readmodel", t0)),
        "sample_batch" => apache_avro::to_value(fixtures::sample_batch("t", t0)),
        "remote_config" => apache_avro::to_value(fixtures::remote_config("t", "a", t0)),
        other => panic!("no fixture for {other}: add one to fixture_value in this test"),
    };
    v.expect("fixture to Avro value")
}

/// `v` as data of `schema`: fields the schema does not have are dropped (in nested records
/// too), fields it has that `v` lacks take their defaults (what a build with that schema
/// would have written).
fn as_written_by(v: &Value, schema: &Schema) -> Value {
    assert!(matches!(v, Value::Record(_)), "not a record: {v:?}");
    keep_fields(v, schema)
        .resolve(schema)
        .expect("the fixture fits the older schema")
}

/// `v` with only the fields `schema` has, in records at any depth (nested records, the
/// branches of unions, array items, map values).
fn keep_fields(v: &Value, schema: &Schema) -> Value {
    match (v, schema) {
        (Value::Record(fields), Schema::Record(rs)) => Value::Record(
            fields
                .iter()
                .filter_map(|(n, fv)| {
                    let f = rs.fields.iter().find(|f| &f.name == n)?;
                    Some((n.clone(), keep_fields(fv, &f.schema)))
                })
                .collect(),
        ),
        (Value::Union(i, inner), Schema::Union(u)) => {
            let is_null = matches!(**inner, Value::Null);
            match u
                .variants()
                .iter()
                .find(|s| matches!(s, Schema::Null) == is_null)
            {
                Some(branch) => Value::Union(*i, Box::new(keep_fields(inner, branch))),
                None => v.clone(),
            }
        }
        (Value::Array(items), Schema::Array(a)) => {
            Value::Array(items.iter().map(|x| keep_fields(x, &a.items)).collect())
        }
        (Value::Map(m), Schema::Map(ms)) => Value::Map(
            m.iter()
                .map(|(k, x)| (k.clone(), keep_fields(x, &ms.types)))
                .collect(),
        ),
        _ => v.clone(),
    }
}

#[test]
fn each_version_reads_data_written_with_every_older_one() {
    for (stem, versions) in released() {
        let newest = versions.last().map_or(0, |v| v.0);
        let schemas: Vec<(u32, Schema)> = versions
            .iter()
            .map(|&(v, _)| {
                let text = version_text(&stem, v, newest);
                (v, Schema::parse_str(&text).expect("parses"))
            })
            .collect();
        let fixture = fixture_value(&stem);
        for (i, (old_v, old)) in schemas.iter().enumerate() {
            for (new_v, new) in &schemas[i..] {
                SchemaCompatibility::can_read(old, new).unwrap_or_else(|e| {
                    panic!("{stem}: v{new_v} cannot read data written with v{old_v}: {e}")
                });
                let written = as_written_by(&fixture, old);
                let bytes = apache_avro::to_avro_datum(old, written).expect("write old");
                let mut body = &bytes[..];
                let read = apache_avro::from_avro_datum(old, &mut body, Some(new))
                    .unwrap_or_else(|e| panic!("{stem}: v{new_v} reading v{old_v} data: {e}"));
                assert!(
                    body.is_empty(),
                    "{stem}: v{new_v} left bytes of v{old_v} data"
                );
                assert!(matches!(read, Value::Record(_)));
            }
        }
    }
}

#[test]
fn metric_report_v2_adds_the_posture_fields_and_v1_readers_skip_them() {
    // The project's rule is BACKWARD (above). v2 only adds nullable fields with null
    // defaults to SecurityPosture, so it is FORWARD compatible too: a v1 reader that gets
    // the writer schema (from a schema registry) reads v2 data, dropping the new fields.
    let released = released();
    let versions = released
        .get("metric_report")
        .expect("metric_report released");
    assert!(versions.len() >= 2, "metric_report v2 is released");
    let v1 = Schema::parse_str(&version_text("metric_report", 1, 2)).expect("v1");
    let v2 = Schema::parse_str(&version_text("metric_report", 2, 2)).expect("v2");
    SchemaCompatibility::can_read(&v2, &v1).expect("v1 reads v2 data");
    let fixture = fixture_value("metric_report");
    let bytes = apache_avro::to_avro_datum(&v2, fixture.clone().resolve(&v2).expect("fits v2"))
        .expect("write v2");
    let read = apache_avro::from_avro_datum(&v2, &mut &bytes[..], Some(&v1)).expect("v1 reads");
    let Value::Record(fields) = read else {
        panic!("not a record")
    };
    let security = fields
        .iter()
        .find(|(n, _)| n == "security")
        .map(|(_, v)| v.clone());
    let Some(Value::Union(1, posture)) = security else {
        panic!("the posture is kept: {security:?}")
    };
    let Value::Record(posture) = *posture else {
        panic!("a record")
    };
    let names: Vec<&str> = posture.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "firewall_enabled",
            "pending_updates",
            "pending_security_updates"
        ]
    );

    // And v2 reads v1 data with the new fields null.
    let written = as_written_by(&fixture, &v1);
    let bytes = apache_avro::to_avro_datum(&v1, written).expect("write v1");
    let read = apache_avro::from_avro_datum(&v1, &mut &bytes[..], Some(&v2)).expect("v2 reads");
    let report: fleet_schemas::MetricReport = apache_avro::from_value(&read).expect("a report");
    let posture = report.security.expect("posture");
    assert_eq!(posture.pending_updates, Some(3));
    assert_eq!(posture.reboot_required, None);
    assert_eq!(posture.ssh_permit_root_login, None);
    assert_eq!(posture.antivirus_signature_age_hours, None);
}
