//! Schema registry interop against a real registry and a real Kafka on loopback: Fleetstream
//! registers its schemas, switches to the Confluent wire format and produces records with
//! its own encoder; a third-party consumer (Python `confluent-kafka` with its
//! `AvroDeserializer` and `SchemaRegistryClient`) decodes them, and the fields match. Our
//! decoder reads a topic that holds both framings, and resolves an id some other producer
//! registered by fetching that schema from the registry.
//!
//! Needs `FLEET_SCHEMA_REGISTRY_URL` (the registry's Confluent API, e.g.
//! `http://127.0.0.1:18081/apis/ccompat/v7`), `FLEET_KAFKA_BROKERS` and `FLEET_PYTHON` (a
//! Python with `confluent-kafka[avro]`): `bash scripts/services.sh up`, then
//! `eval "$(bash scripts/services.sh env)"`. Without the registry URL the test fails and says
//! how to start one; it never skips.
//!
//! Runs never collide: every subject and topic carries a fresh run id
//! (`<topic>.it-<run>` and `<topic>.it-<run>-value`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use fleet_event_log::{EventLog, ProduceRecord, TopicSpec};
use fleet_schema_registry::{
    self as schema_registry, value_subject, RegistryError, SchemaRegistryClient, COMPATIBILITY,
};
use fleet_schemas::codec::{self, Record, Wire, CONFLUENT_HEADER_LEN, CONFLUENT_MAGIC, MAGIC};
use fleet_schemas::{fixtures, AgentLifecycle, AlertEvent, CommandEvent, Heartbeat, MetricReport};
use serde::de::DeserializeOwned;
use serde_json::Value;

const T: i64 = 1_763_900_000_123_456;

/// The registry's URL; fails with how to start one when it is not configured (never skips).
fn registry_url() -> Result<String> {
    match std::env::var("FLEET_SCHEMA_REGISTRY_URL") {
        Ok(url) if !url.trim().is_empty() => Ok(url.trim().to_owned()),
        _ => bail!(
            "FLEET_SCHEMA_REGISTRY_URL is not set, so the schema registry interop test cannot \
             run: run `bash scripts/services.sh up` and `eval \"$(bash scripts/services.sh env)\"` first"
        ),
    }
}

fn env(name: &str) -> Result<String> {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .with_context(|| {
            format!(
                "{name} is not set: run `bash scripts/services.sh up` and \
             `eval \"$(bash scripts/services.sh env)\"`"
            )
        })
}

fn python() -> String {
    std::env::var("FLEET_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The test topic of a record type in this run.
fn topic_of(run: &str, topic: &str) -> String {
    format!("{topic}.it-{run}")
}

/// What the third-party consumer printed for one record.
#[derive(Debug, serde::Deserialize)]
struct Consumed {
    topic: String,
    key: Option<String>,
    schema_id: u32,
    value: Value,
}

/// Runs the Python consumer over `topics`, `per_topic` records each.
fn third_party_consume(
    brokers: &str,
    url: &str,
    per_topic: usize,
    topics: &[String],
) -> Result<Vec<Consumed>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/registry/consume.py");
    let out = Command::new(python())
        .arg(&script)
        .arg(brokers)
        .arg(url)
        .arg(per_topic.to_string())
        .args(topics)
        .output()
        .with_context(|| format!("running {} (set FLEET_PYTHON)", python()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("ModuleNotFoundError") {
        bail!(
            "{} lacks confluent-kafka[avro] (run `bash scripts/services.sh up` and use its \
             FLEET_PYTHON): {stderr}",
            python()
        );
    }
    ensure!(out.status.success(), "the Python consumer failed: {stderr}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("consumer line {l:?}")))
        .collect()
}

/// The record the third party decoded, as our type (every field must carry over).
fn as_record<T: DeserializeOwned>(c: &Consumed) -> Result<T> {
    serde_json::from_value(c.value.clone())
        .with_context(|| format!("the third party's {} record: {}", c.topic, c.value))
}

async fn produce<T: Record>(
    wire: &Wire,
    log: &dyn EventLog,
    topic: &str,
    values: &[T],
) -> Result<()> {
    let records = values
        .iter()
        .map(|v| Ok(ProduceRecord::keyed(v.key(), wire.encode(v)?)))
        .collect::<Result<Vec<_>>>()?;
    log.produce(topic, records).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_party_consumer_decodes_what_fleetstream_produced_with_the_registry() -> Result<()>
{
    let url = registry_url()?;
    let brokers = env("FLEET_KAFKA_BROKERS")?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let client = SchemaRegistryClient::new(&url)?;
    let outcome = scenario(&url, &brokers, &run, &client).await;
    // Best effort: leave no subjects behind (registries may refuse deletes; that is fine).
    for (_, topic) in schema_registry::records() {
        delete_subject(&url, &value_subject(&topic_of(&run, topic))).await;
    }
    outcome
}

/// Deletes a subject (soft, then permanently), warning on failure.
async fn delete_subject(url: &str, subject: &str) {
    let http = reqwest::Client::new();
    for query in ["", "?permanent=true"] {
        let target = format!("{url}/subjects/{subject}{query}");
        match http.delete(&target).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => eprintln!("note: DELETE {target}: {}", r.status()),
            Err(e) => eprintln!("note: DELETE {target}: {e}"),
        }
    }
}

async fn scenario(
    url: &str,
    brokers: &str,
    run: &str,
    client: &SchemaRegistryClient,
) -> Result<()> {
    let (url, brokers) = (url.to_owned(), brokers.to_owned());

    // Register every record schema under this run's subjects, set BACKWARD, make the wire.
    let registered = client
        .register_records(|topic| value_subject(&topic_of(run, topic)))
        .await
        .with_context(|| format!("registering with the registry at {url}"))?;
    assert_eq!(registered.len(), schema_registry::records().len());
    for r in &registered {
        assert_eq!(r.subject, format!("{}.it-{run}-value", r.topic));
        assert_eq!(
            client.compatibility(&r.subject).await?.as_deref(),
            Some(COMPATIBILITY),
            "{}",
            r.subject
        );
        // The registry holds the very .avsc text under the id it gave.
        let text = client.schema_by_id(r.id).await?;
        let (_, fp) = codec::canonical_form_and_fingerprint(&text)?;
        assert_eq!(
            Some(fp),
            codec::Catalog::get()
                .current(r.record)
                .map(|s| s.fingerprint),
            "{}",
            r.record
        );
    }
    // Registering again is idempotent: the same ids.
    let again = client
        .register_records(|topic| value_subject(&topic_of(run, topic)))
        .await?;
    assert_eq!(again, registered);
    let wire = schema_registry::wire(client, &registered)?;
    let id_of = |name: &str| {
        registered
            .iter()
            .find(|r| r.record == name)
            .map(|r| r.id)
            .context("registered")
    };

    // The wire writes the Confluent wire format; a plain one, in the same process, still
    // writes single-object.
    let report = fixtures::metric_report("tenant-1", "agent-1", T);
    let bytes = wire.encode(&report)?;
    assert_eq!(Wire::plain().encode(&report)?[..2], MAGIC);
    assert_eq!(bytes[0], CONFLUENT_MAGIC);
    assert_eq!(
        bytes[1..CONFLUENT_HEADER_LEN],
        id_of(MetricReport::FULL_NAME)?.to_be_bytes()
    );

    // Produce with Fleetstream's encoder to the real Kafka.
    let log = fleet_event_log::open(&format!("kafka://{brokers}"), &Default::default()).await?;
    let spec = TopicSpec {
        partitions: 1,
        compacted: false,
    };
    let mut second = fixtures::metric_report("tenant-1", "agent-2", T + 10_000_000);
    second.cpu_percent = 7.25;
    second.security = None;
    let reports = vec![report.clone(), second];
    let heartbeats = vec![fixtures::heartbeat("tenant-1", "agent-1", T, 42)];
    let alerts = vec![fixtures::alert_raised("tenant-1", "agent-1", T)];
    let mut registered_agent = fixtures::agent_registered("tenant-1", "agent-1", T);
    registered_agent.tags = Some(vec!["web".into(), "eu".into()]);
    let lifecycles = vec![registered_agent];
    let commands = vec![fixtures::command_completed("tenant-1", "agent-1", T)];
    let topics = [
        topic_of(run, MetricReport::TOPIC),
        topic_of(run, Heartbeat::TOPIC),
        topic_of(run, AlertEvent::TOPIC),
        topic_of(run, AgentLifecycle::TOPIC),
        topic_of(run, CommandEvent::TOPIC),
    ];
    for t in &topics {
        log.create_topic(t, spec).await?;
    }
    produce(&wire, log.as_ref(), &topics[0], &reports).await?;
    produce(&wire, log.as_ref(), &topics[1], &heartbeats).await?;
    produce(&wire, log.as_ref(), &topics[2], &alerts).await?;
    produce(&wire, log.as_ref(), &topics[3], &lifecycles).await?;
    produce(&wire, log.as_ref(), &topics[4], &commands).await?;
    // The metrics topic got two records, the others one: read one from each, then the rest.
    let mut consumed = third_party_consume(&brokers, &url, 1, &topics)?;
    consumed.retain(|c| c.topic != topics[0]);
    consumed.extend(third_party_consume(&brokers, &url, 2, &topics[..1])?);

    // The third party decoded every field.
    let on = |t: &str| -> Vec<&Consumed> { consumed.iter().filter(|c| c.topic == t).collect() };
    let metrics = on(&topics[0]);
    assert_eq!(metrics.len(), 2);
    for (c, want) in metrics.iter().zip(&reports) {
        assert_eq!(c.schema_id, id_of(MetricReport::FULL_NAME)?);
        assert_eq!(c.key.as_deref(), Some(want.agent_id.as_str()));
        assert_eq!(as_record::<MetricReport>(c)?, *want);
    }
    let m = &metrics[0].value;
    assert_eq!(m["cpu_percent"], 42.5);
    assert_eq!(m["disks"][1]["mount"], "/var");
    assert_eq!(m["services"][0]["pid"], 812);
    assert_eq!(m["custom"]["queue_depth"], 7.0);
    assert_eq!(m["occurred_at"], T, "timestamp-micros read as a time");
    assert_eq!(metrics[1].value["cpu_percent"], 7.25);
    assert_eq!(metrics[1].value["security"], Value::Null);

    let h = on(&topics[1]);
    ensure!(h.len() == 1, "heartbeats: {h:?}");
    assert_eq!(h[0].schema_id, id_of(Heartbeat::FULL_NAME)?);
    assert_eq!(as_record::<Heartbeat>(h[0])?, heartbeats[0]);
    assert_eq!(h[0].value["sequence"], 42);
    let a = on(&topics[2]);
    ensure!(a.len() == 1, "alerts: {a:?}");
    assert_eq!(as_record::<AlertEvent>(a[0])?, alerts[0]);
    assert_eq!(a[0].value["kind"], "RAISED");
    assert_eq!(a[0].value["severity"], "CRITICAL");
    let l = on(&topics[3]);
    ensure!(l.len() == 1, "lifecycle: {l:?}");
    assert_eq!(as_record::<AgentLifecycle>(l[0])?, lifecycles[0]);
    assert_eq!(l[0].value["tags"], serde_json::json!(["web", "eu"]));
    let c = on(&topics[4]);
    ensure!(c.len() == 1, "commands: {c:?}");
    assert_eq!(as_record::<CommandEvent>(c[0])?, commands[0]);
    assert_eq!(c[0].value["args"]["service"], "nginx");

    // A topic written before and after the switch: a single-object record and a
    // Confluent-framed one of the same value both decode, with our decoder, from Kafka.
    let mixed = format!("{}.mixed", topics[1]);
    log.create_topic(&mixed, spec).await?;
    let hb = fixtures::heartbeat("tenant-1", "agent-9", T, 7);
    let single = Heartbeat::codec().encode_single_object(&hb)?;
    let confluent = wire.encode(&hb)?;
    assert_eq!(single[..2], MAGIC);
    assert_eq!(confluent[0], CONFLUENT_MAGIC);
    log.produce(
        &mixed,
        vec![
            ProduceRecord::keyed(hb.key(), single.clone()),
            ProduceRecord::keyed(hb.key(), confluent.clone()),
        ],
    )
    .await?;
    let mut read = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read.len() < 2 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "read {} of 2 records back from {mixed}",
            read.len()
        );
        read.clear();
        fleet_consumer::log::read_to_end(log.as_ref(), &wire, &mixed, |r| {
            read.push(r.value.clone())
        })
        .await?;
    }
    assert_eq!(read, [single.clone(), confluent.clone()]);
    for bytes in &read {
        assert_eq!(wire.decode::<Heartbeat>(bytes).await?, hb);
    }

    // Another producer registers a newer Heartbeat (one more field, with a default: BACKWARD
    // accepts it) and writes with it: our decoder fetches that writer schema from the
    // registry by id and resolves it into ours.
    let heartbeat_subject = value_subject(&topics[1]);
    let mut newer: Value =
        serde_json::from_str(schema_registry::current_avsc(Heartbeat::FULL_NAME)?)?;
    newer["fields"]
        .as_array_mut()
        .context("fields")?
        .push(serde_json::json!({"name": "region", "type": "string", "default": ""}));
    let newer_id = client
        .register(&heartbeat_subject, &newer.to_string())
        .await?;
    assert_ne!(newer_id, id_of(Heartbeat::FULL_NAME)?);
    let mut foreign = Heartbeat::codec().encode_confluent(newer_id, &hb)?;
    foreign.push(8); // the string "eu-1": zig-zag length 4, then the bytes
    foreign.extend_from_slice(b"eu-1");
    let decoded = wire.decode::<Heartbeat>(&foreign).await?;
    assert_eq!(decoded, hb);
    let writer = wire
        .framing()
        .context("registry framing")?
        .writer_schema(newer_id)?;
    assert_eq!(writer.file, "(schema registry)");

    // An incompatible schema (a new field without a default) is refused, with a clear error.
    let mut incompatible = newer.clone();
    incompatible["fields"]
        .as_array_mut()
        .context("fields")?
        .push(serde_json::json!({"name": "rack", "type": "string"}));
    let err = client
        .register(&heartbeat_subject, &incompatible.to_string())
        .await
        .expect_err("BACKWARD refuses a new field without a default");
    assert!(
        matches!(&err, RegistryError::Incompatible { subject, record, .. }
            if *subject == heartbeat_subject && record == Heartbeat::FULL_NAME),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("incompatible"), "{message}");
    assert!(message.contains(&heartbeat_subject), "{message}");

    // An id the registry does not have is a clear decode error naming it.
    let missing = Heartbeat::codec().encode_confluent(u32::MAX - 7, &hb)?;
    let err = wire
        .decode::<Heartbeat>(&missing)
        .await
        .expect_err("no such schema id");
    assert!(
        matches!(err, codec::CodecError::Registry { id, .. } if id == u32::MAX - 7),
        "{err}"
    );
    assert!(!err.is_retriable(), "the registry answered: no such schema");
    Ok(())
}
