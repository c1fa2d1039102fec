//! Interop with another Avro implementation: Python `fastavro` decodes records written by
//! the Rust codec (checking the single-object header and its fingerprint), and the Rust
//! codec decodes records that fastavro wrote.
//!
//! Needs a Python with fastavro: `$FLEET_PYTHON` (set by `scripts/services.sh env`), else
//! `python3`. Without fastavro the test fails and says how to install it.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context as _};
use fleet_schemas::codec::{self, Record};
use fleet_schemas::{
    fixtures, AgentEvent, AgentLifecycle, AlertEvent, CommandEvent, DeadLetter, Heartbeat,
    MetricReport, RemoteConfigEvent, RuleEvent, SampleBatch, SoftwareInventory, TicketEvent,
};
use serde_json::Value;

const T: i64 = 1_763_900_000_123_456;

fn python() -> String {
    std::env::var("FLEET_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn write<T: Record>(dir: &Path, name: &str, v: &T) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("rust").join(format!("{name}.bin")),
        codec::Wire::plain().encode(v)?,
    )?;
    Ok(())
}

fn read_back<T: Record + PartialEq + std::fmt::Debug + Clone>(
    dir: &Path,
    name: &str,
    original: &T,
    set_agent: impl Fn(&mut T, String),
) -> anyhow::Result<Value> {
    let bytes = std::fs::read(dir.join("python").join(format!("{name}.bin")))?;
    let decoded: T = codec::Wire::plain()
        .decode_known(&bytes)
        .with_context(|| format!("Rust decoding fastavro's {name}"))?;
    let mut expected = original.clone();
    set_agent(&mut expected, format!("py-{name}"));
    assert_eq!(
        decoded, expected,
        "{name}: fastavro's record decodes to something else"
    );
    let json = std::fs::read_to_string(dir.join("decoded").join(format!("{name}.json")))?;
    Ok(serde_json::from_str(&json)?)
}

#[test]
fn fastavro_reads_rust_records_and_rust_reads_fastavro_records() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::create_dir(dir.path().join("rust"))?;
    let report = fixtures::metric_report("tenant-1", "agent-1", T);
    let hb = fixtures::heartbeat("tenant-1", "agent-1", T, 42);
    let ev = fixtures::agent_event("tenant-1", "agent-1", T);
    let alert = fixtures::alert_raised("tenant-1", "agent-1", T);
    write(dir.path(), "metric_report", &report)?;
    write(dir.path(), "heartbeat", &hb)?;
    write(dir.path(), "agent_event", &ev)?;
    write(dir.path(), "alert_event", &alert)?;
    let mut registered = fixtures::agent_registered("tenant-1", "agent-1", T);
    registered.tags = Some(vec!["web".into(), "eu".into()]);
    write(dir.path(), "agent_lifecycle", &registered)?;
    let completed = fixtures::command_completed("tenant-1", "agent-1", T);
    write(dir.path(), "command_event", &completed)?;
    let inventory = fixtures::software_inventory("tenant-1", "agent-1", T);
    write(dir.path(), "software_inventory", &inventory)?;
    let ticket = fixtures::ticket_requested("tenant-1", "agent-1", T);
    write(dir.path(), "ticket_event", &ticket)?;
    let rule = fixtures::rule_defined("tenant-1", "rule-1", T);
    write(dir.path(), "rule_event", &rule)?;
    let dead = fixtures::dead_letter("readmodel", T);
    write(dir.path(), "dead_letter", &dead)?;
    let samples = fixtures::sample_batch("tenant-1", T);
    write(dir.path(), "sample_batch", &samples)?;
    let config = fixtures::remote_config("tenant-1", "agent-1", T);
    write(dir.path(), "remote_config", &config)?;

    let avro_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("avro");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/avro_interop.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(&avro_dir)
        .arg(dir.path())
        .output()
        .with_context(|| {
            format!(
                "running {} (set FLEET_PYTHON, or run scripts/services.sh up)",
                python()
            )
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No module named 'fastavro'") {
        bail!("fastavro is not installed for {}: run `scripts/services.sh up` and `eval \"$(scripts/services.sh env)\"`", python());
    }
    if !out.status.success() {
        bail!("fastavro side failed: {stderr}");
    }

    let r = read_back(dir.path(), "metric_report", &report, |r, a| r.agent_id = a)?;
    assert_eq!(r["cpu_percent"], 42.5);
    assert_eq!(r["disks"][1]["mount"], "/var");
    assert_eq!(r["services"][0]["pid"], 812);
    assert_eq!(r["custom"]["queue_depth"], 7.0);
    assert_eq!(
        r["occurred_at"]["timestamp_micros"], T,
        "timestamp-micros read as a time by fastavro"
    );
    let h = read_back(dir.path(), "heartbeat", &hb, |r, a| r.agent_id = a)?;
    assert_eq!(h["sequence"], 42);
    let e = read_back(dir.path(), "agent_event", &ev, |r, a| r.agent_id = a)?;
    assert_eq!(e["severity"], "WARNING");
    let a = read_back(dir.path(), "alert_event", &alert, |r, a| r.agent_id = a)?;
    assert_eq!(a["kind"], "RAISED");
    assert_eq!(a["severity"], "CRITICAL");
    assert_eq!(a["subject"], Value::Null);
    let l = read_back(dir.path(), "agent_lifecycle", &registered, |r, a| {
        r.agent_id = a
    })?;
    assert_eq!(l["kind"], "REGISTERED");
    assert_eq!(l["facts"]["cpu_cores"], 2);
    assert_eq!(l["tags"], serde_json::json!(["web", "eu"]));
    let c = read_back(dir.path(), "command_event", &completed, |r, a| {
        r.agent_id = a
    })?;
    assert_eq!(c["kind"], "COMPLETED");
    assert_eq!(c["exit_code"], 0);
    assert_eq!(c["args"]["service"], "nginx");
    let i = read_back(dir.path(), "software_inventory", &inventory, |r, a| {
        r.agent_id = a
    })?;
    assert_eq!(i["packages"][1]["name"], "nginx");
    assert_eq!(i["packages"][2]["arch"], Value::Null);
    let tk = read_back(dir.path(), "ticket_event", &ticket, |r, a| r.agent_id = a)?;
    assert_eq!(tk["kind"], "REQUESTED");
    assert_eq!(tk["priority"], "P1");
    // The rule event has no agent: the script's `agent_id` is ignored by the schema, so
    // fastavro's record must decode to the very fixture.
    let ru = read_back(dir.path(), "rule_event", &rule, |_, _| {})?;
    assert_eq!(ru["kind"], "DEFINED");
    assert_eq!(ru["rule"]["scope"], "TENANT");
    assert_eq!(ru["rule"]["critical"], 95.0);
    assert_eq!(ru["rule"]["scope_value"], Value::Null);
    // The dead letter has no agent either; its raw bytes are Avro `bytes` on both sides.
    let dl = read_back(dir.path(), "dead_letter", &dead, |_, _| {})?;
    assert_eq!(dl["kind"], "DECODE");
    assert_eq!(dl["source_offset"], 41);
    assert_eq!(dl["value"]["bytes_hex"], "6761726200ffc3");
    assert_eq!(dl["source_key"]["bytes_hex"], "6167656e742d31");
    assert_eq!(dl["replayed_offset"], Value::Null);
    // The sample batch has no agent either; labels stay an ordered array of pairs.
    let sb = read_back(dir.path(), "sample_batch", &samples, |_, _| {})?;
    assert_eq!(sb["source"], "PROMETHEUS_REMOTE_WRITE");
    assert_eq!(sb["partition_key"], "tenant-1/3");
    assert_eq!(sb["samples"][2]["metric"], "node_cpu_seconds_total");
    assert_eq!(sb["samples"][2]["labels"][3]["name"], "mode");
    assert_eq!(sb["samples"][2]["labels"][3]["value"], "idle");
    assert_eq!(sb["samples"][2]["value"], 12_345.5);
    assert_eq!(sb["samples"][1]["timestamp"]["timestamp_micros"], T);
    // The config event has no agent_id field: the script's is ignored by the schema.
    let rc = read_back(dir.path(), "remote_config", &config, |_, _| {})?;
    assert_eq!(rc["scope"], "AGENT");
    assert_eq!(rc["services"], serde_json::json!(["nginx.service"]));
    assert_eq!(rc["textfile_dir"], Value::Null);
    // Every record type the catalog knows went through the other implementation.
    assert_eq!(
        [
            MetricReport::FULL_NAME,
            Heartbeat::FULL_NAME,
            AgentEvent::FULL_NAME,
            AlertEvent::FULL_NAME,
            AgentLifecycle::FULL_NAME,
            CommandEvent::FULL_NAME,
            SoftwareInventory::FULL_NAME,
            TicketEvent::FULL_NAME,
            RuleEvent::FULL_NAME,
            DeadLetter::FULL_NAME,
            SampleBatch::FULL_NAME,
            RemoteConfigEvent::FULL_NAME,
        ]
        .len(),
        codec::AVSC_FILES
            .iter()
            .filter(|(file, _)| !file.starts_with("history/"))
            .count()
    );
    Ok(())
}
