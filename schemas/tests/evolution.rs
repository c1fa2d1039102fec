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

/// `v` as data of `schema`: fields the schema does not have are dropped, fields it has that
/// `v` lacks take their defaults (what a build with that schema would have written).
fn as_written_by(v: &Value, schema: &Schema) -> Value {
    let Value::Record(fields) = v else {
        panic!("not a record: {v:?}")
    };
    let Schema::Record(rs) = schema else {
        panic!("not a record schema")
    };
    let names: Vec<&str> = rs.fields.iter().map(|f| f.name.as_str()).collect();
    let kept = Value::Record(
        fields
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .cloned()
            .collect(),
    );
    kept.resolve(schema)
        .expect("the fixture fits the older schema")
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
