//! Dead letters end to end, as real processes, on both engines.
//!
//! Corrupt records (garbage, a truncated Avro datum, a valid record of another type) are
//! written between valid ones into every topic that has a consumer. Each lands in
//! `fleet.deadletter.v1` once per consumer that reads it (read model, time series, alert
//! evaluator, ticketer, liveness, command timeouts, the gateway's command dispatcher), with
//! the right source topic, partition, offset, reason and bytes; the valid records around
//! them are processed (agents and alerts in the read model, tickets raised); the
//! `fleet_deadletters_total` counters on `/metrics` move. Then `fleetstream deadletter list`
//! shows them and `fleetstream deadletter replay` writes back a dead letter whose bytes are
//! valid (what a consumer with a bug, since fixed, gave up on), which the consumers then
//! process; a second replay of it is refused.
//!
//! * Embedded: `fleetstream up` on a data directory the test filled first (the embedded
//!   log is open in one process at a time), stopped for `list` / `replay`, started again.
//! * Kafka: a private broker, the gateway, processors and projections roles running while
//!   the test writes the records and runs `list` / `replay`.

#![allow(clippy::print_stdout)] // what the run did, for --nocapture

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fleet_e2e::{api_client, free_port, get_json, run_to_end, wait_for, write_file, Proc};
use fleet_event_log::{EventLog, ProduceRecord, RecordPosition};
use fleet_schemas::{
    codec, fixtures, topics, AvroBytes, CommandEvent, CommandEventKind, DeadLetter, DeadLetterKind,
    Record,
};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

fn test_dir() -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new().prefix("fleet-e2e-dl-").tempdir()?;
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test directory (kept): {}", dir.path().display());
    }
    Ok(dir)
}

fn now() -> i64 {
    fleet_e2e::now_micros()
}

/// (consumer, source topic, partition, offset).
type Key = (String, String, u32, i64);

/// What the test wrote.
#[derive(Debug, Default)]
struct Injected {
    /// Every dead letter that must appear.
    expected: BTreeSet<Key>,
    /// The raw bytes of each corrupt record.
    raw: BTreeMap<(String, u32, i64), Vec<u8>>,
    /// Agents whose valid reports surround the corrupt metrics (each raises `cpu-high`).
    agents: Vec<String>,
}

impl Injected {
    /// Dead letters expected per (consumer, topic).
    fn per_consumer_topic(&self) -> BTreeMap<(String, String), usize> {
        let mut out = BTreeMap::new();
        for (c, t, _, _) in &self.expected {
            *out.entry((c.clone(), t.clone())).or_default() += 1;
        }
        out
    }
}

async fn produce_raw(
    log: &dyn EventLog,
    topic: &str,
    key: &str,
    value: Vec<u8>,
) -> anyhow::Result<RecordPosition> {
    let pos = log
        .produce(
            topic,
            vec![ProduceRecord {
                key: Some(key.as_bytes().to_vec()),
                value,
                timestamp_ms: Some(now() / 1000),
            }],
        )
        .await?;
    pos.first().copied().context("no position")
}

async fn produce<T: Record>(log: &dyn EventLog, v: &T) -> anyhow::Result<RecordPosition> {
    produce_raw(log, T::TOPIC, v.key(), codec::Wire::plain().encode(v)?).await
}

/// Writes `valid_a`, garbage, `valid_a` cut in half, a valid record of another type and
/// `valid_b` to `T`'s topic; the three in the middle must become dead letters of every
/// one of `consumers`.
async fn surround<T: Record>(
    log: &dyn EventLog,
    inj: &mut Injected,
    consumers: &[&str],
    valid_a: &T,
    valid_b: &T,
) -> anyhow::Result<()> {
    produce(log, valid_a).await?;
    let good = codec::Wire::plain().encode(valid_a)?;
    let other = if T::TOPIC == topics::METRICS {
        codec::Wire::plain().encode(&fixtures::heartbeat("t1", "e2e-x", now(), 1))?
    } else {
        codec::Wire::plain().encode(&fixtures::metric_report("t1", "e2e-x", now()))?
    };
    for bytes in [
        b"e2e garbage \xff\xfe: not an Avro record".to_vec(),
        good[..good.len() / 2].to_vec(),
        other,
    ] {
        let at = produce_raw(log, T::TOPIC, valid_a.key(), bytes.clone()).await?;
        for c in consumers {
            inj.expected.insert((
                (*c).to_owned(),
                T::TOPIC.to_owned(),
                at.partition,
                at.offset,
            ));
        }
        inj.raw
            .insert((T::TOPIC.to_owned(), at.partition, at.offset), bytes);
    }
    produce(log, valid_b).await?;
    Ok(())
}

fn command(id: &str) -> CommandEvent {
    let mut ev = CommandEvent::step(CommandEventKind::Requested, id, "t1", "e2e-cmd", now());
    ev.command_type = "collect_diagnostics".into();
    ev.timeout_secs = 600;
    ev
}

/// Writes the corrupt records, surrounded by valid ones, into every topic with a consumer
/// (`before_up`: written before `up` starts, so the notifier reads the alerts too, and the
/// gateway's remote-configuration watcher, which reads fleet.agents.v1 from its start,
/// gives up on the corrupt agents records).
async fn inject(log: &dyn EventLog, tag: &str, before_up: bool) -> anyhow::Result<Injected> {
    let mut inj = Injected::default();
    let t = now();
    // A rule of tenant t1 the alert evaluator reads from fleet.rules.v1 (raising on the
    // reports below at once).
    let rule = |id: &str| {
        let mut r = fixtures::rule_defined("t1", id, t);
        if let Some(d) = r.rule.as_mut() {
            d.name = "E2E CPU high".into();
            d.warning = None;
            d.critical = Some(90.0);
            d.recovery = None;
            d.for_secs = 0;
            d.renotify_secs = 0;
        }
        r
    };
    surround(
        log,
        &mut inj,
        &["readmodel", "alert-evaluator"],
        &rule(&format!("cpu-high-{tag}")),
        &rule(&format!("cpu-high-b-{tag}")),
    )
    .await?;
    let agent = |name: &str| format!("e2e-{name}-{tag}");
    let agents_readers: &[&str] = if before_up {
        &[
            "readmodel",
            "alert-evaluator",
            "ticketer",
            "liveness",
            "gateway-config",
        ]
    } else {
        &["readmodel", "alert-evaluator", "ticketer", "liveness"]
    };
    surround(
        log,
        &mut inj,
        agents_readers,
        &fixtures::agent_registered("t1", &agent("r-a"), t),
        &fixtures::agent_registered("t1", &agent("r-b"), t),
    )
    .await?;
    surround(
        log,
        &mut inj,
        &["readmodel", "liveness"],
        &fixtures::heartbeat("t1", &agent("h-a"), t, 1),
        &fixtures::heartbeat("t1", &agent("h-b"), t, 1),
    )
    .await?;
    surround(
        log,
        &mut inj,
        &["readmodel", "command-timeouts", "gateway-commands"],
        &command(&format!("e2e-c-a-{tag}")),
        &command(&format!("e2e-c-b-{tag}")),
    )
    .await?;
    surround(
        log,
        &mut inj,
        &["readmodel"],
        &fixtures::software_inventory("t1", &agent("s-a"), t),
        &fixtures::software_inventory("t1", &agent("s-b"), t),
    )
    .await?;
    let alert_readers: &[&str] = if before_up {
        &["readmodel", "alert-evaluator", "ticketer", "notifier"]
    } else {
        &["readmodel", "alert-evaluator", "ticketer"]
    };
    surround(
        log,
        &mut inj,
        alert_readers,
        &fixtures::alert_raised("t1", &agent("al-a"), t),
        &fixtures::alert_raised("t1", &agent("al-b"), t),
    )
    .await?;
    surround(
        log,
        &mut inj,
        &["readmodel", "ticketer"],
        &fixtures::ticket_requested("t1", &agent("tk-a"), t),
        &fixtures::ticket_requested("t1", &agent("tk-b"), t),
    )
    .await?;
    let report = |a: &str| {
        let mut r = fixtures::metric_report("t1", a, t);
        r.cpu_percent = 97.0;
        r
    };
    let (m_a, m_b) = (agent("m-a"), agent("m-b"));
    surround(
        log,
        &mut inj,
        &["readmodel", "timeseries", "alert-evaluator"],
        &report(&m_a),
        &report(&m_b),
    )
    .await?;
    inj.agents = vec![m_a, m_b];
    Ok(inj)
}

/// A dead letter whose bytes are a valid metric report of `agent`: what a consumer with a
/// bug (since fixed) would have given up on. Written straight to the dead-letter topic.
async fn fixable_dead_letter(log: &dyn EventLog, agent: &str) -> anyhow::Result<RecordPosition> {
    let report = fixtures::metric_report("t1", agent, now());
    let d = DeadLetter {
        event_id: DeadLetter::failure_id("readmodel", topics::METRICS, 0, 1_000_000_000),
        kind: DeadLetterKind::Process,
        reason: "store: a bug in the build of the day (fixed since)".into(),
        consumer: "readmodel".into(),
        group: "fleet-readmodel".into(),
        tenant_id: Some("t1".into()),
        source_topic: topics::METRICS.into(),
        source_partition: 0,
        source_offset: 1_000_000_000,
        source_key: Some(AvroBytes(agent.as_bytes().to_vec())),
        source_timestamp: now() / 1000,
        value: AvroBytes(codec::Wire::plain().encode(&report)?),
        replayed_partition: None,
        replayed_offset: None,
        occurred_at: now(),
    };
    produce_raw(
        log,
        topics::DEADLETTER,
        &d.event_id,
        codec::Wire::plain().encode(&d)?,
    )
    .await
}

async fn dead_letters(log: &dyn EventLog) -> anyhow::Result<Vec<DeadLetter>> {
    let mut out = Vec::new();
    let mut bad = 0;
    fleet_consumer::log::read_to_end(
        log,
        &fleet_schemas::Wire::plain(),
        topics::DEADLETTER,
        |r| match codec::Wire::plain().decode_known::<DeadLetter>(&r.value) {
            Ok(d) => out.push(d),
            Err(_) => bad += 1,
        },
    )
    .await?;
    ensure!(
        bad == 0,
        "{bad} records of fleet.deadletter.v1 do not decode"
    );
    Ok(out)
}

fn key_of(d: &DeadLetter) -> Key {
    (
        d.consumer.clone(),
        d.source_topic.clone(),
        u32::try_from(d.source_partition).unwrap_or(u32::MAX),
        d.source_offset,
    )
}

/// Checks the dead letters (`DeadLetter`s or `list --format json` objects turned into
/// keys) against what was injected: every expected one once, with its bytes.
fn check_dead_letters(inj: &Injected, got: &[DeadLetter]) -> anyhow::Result<()> {
    let mut seen = BTreeSet::new();
    for d in got.iter().filter(|d| d.kind != DeadLetterKind::Replayed) {
        let k = key_of(d);
        if !inj.expected.contains(&k) {
            continue; // the fixable one, or a replayed record's
        }
        ensure!(seen.insert(k.clone()), "dead letter twice: {k:?}");
        ensure!(d.kind == DeadLetterKind::Decode, "{k:?} is {:?}", d.kind);
        ensure!(!d.reason.is_empty(), "{k:?} has no reason");
        let raw = inj.raw.get(&(k.1.clone(), k.2, k.3)).context("raw bytes")?;
        ensure!(&d.value.0 == raw, "{k:?}: the bytes differ");
    }
    let missing: Vec<&Key> = inj.expected.difference(&seen).collect();
    ensure!(missing.is_empty(), "missing dead letters: {missing:#?}");
    Ok(())
}

/// `fleet_deadletters_total` per (consumer, topic), summed over reasons, from the
/// Prometheus text of every URL.
async fn counters(
    client: &reqwest::Client,
    urls: &[String],
) -> anyhow::Result<BTreeMap<(String, String), usize>> {
    let mut out = BTreeMap::new();
    for url in urls {
        let text = client
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        for line in text.lines() {
            let Some((labels, value)) = line
                .strip_prefix("fleet_deadletters_total{")
                .and_then(|r| r.split_once("} "))
            else {
                continue;
            };
            let l: BTreeMap<&str, &str> = labels
                .split(',')
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            let n: f64 = value.trim().parse().unwrap_or(0.0);
            *out.entry((
                l.get("consumer").copied().unwrap_or_default().to_owned(),
                l.get("topic").copied().unwrap_or_default().to_owned(),
            ))
            .or_default() += n as usize;
        }
    }
    Ok(out)
}

/// The valid records around the corrupt ones were processed: both report agents are in
/// the read model, each with a `cpu-high` alert (rules topic, metrics, alert evaluator),
/// and a ticket was requested for each (alerts topic, ticketer, tickets topic).
async fn valid_records_processed(
    client: &reqwest::Client,
    api: &str,
    inj: &Injected,
) -> anyhow::Result<Option<()>> {
    let Some(agents) = get_json(client, &format!("{api}/api/v1/agents?limit=500")).await? else {
        return Ok(None);
    };
    let ids: BTreeSet<&str> = agents["agents"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    if !inj.agents.iter().all(|a| ids.contains(a.as_str())) {
        return Ok(None);
    }
    let Some(alerts) = get_json(client, &format!("{api}/api/v1/alerts?limit=500")).await? else {
        return Ok(None);
    };
    let alerting: Vec<(&str, &str)> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| Some((a["agent_id"].as_str()?, a["alert_id"].as_str()?)))
        .collect();
    let Some(tickets) = get_json(client, &format!("{api}/api/v1/tickets?limit=500")).await? else {
        return Ok(None);
    };
    let ticketed: BTreeSet<&str> = tickets["tickets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["alert_id"].as_str())
        .collect();
    let ok = inj.agents.iter().all(|a| {
        alerting
            .iter()
            .any(|(agent, alert)| agent == a && ticketed.contains(alert))
    });
    Ok(ok.then_some(()))
}

fn list_json(dir: &Path, log_args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec![
        "deadletter",
        "list",
        "--format",
        "json",
        "--limit",
        "100000",
    ];
    args.extend_from_slice(log_args);
    let out = run_to_end(dir, &args)?;
    ensure!(out.success, "deadletter list failed:\n{}", out.output);
    let start = out.output.find('[').context("no JSON array")?;
    let end = out.output.rfind(']').context("no JSON array")?;
    Ok(serde_json::from_str(&out.output[start..=end])?)
}

/// The `list --format json` entry of the dead letter at `at` in fleet.deadletter.v1.
fn listed(items: &[Value], at: RecordPosition) -> Option<&Value> {
    items.iter().find(|v| {
        v["dead_letter_partition"] == at.partition && v["dead_letter_offset"] == at.offset
    })
}

/// Checks `list` against the injected records, and the fixable dead letter's entry.
fn check_list(items: &[Value], inj: &Injected, fixable: RecordPosition) -> anyhow::Result<()> {
    let keys: BTreeSet<Key> = items
        .iter()
        .filter_map(|v| {
            Some((
                v["consumer"].as_str()?.to_owned(),
                v["source_topic"].as_str()?.to_owned(),
                u32::try_from(v["source_partition"].as_u64()?).ok()?,
                v["source_offset"].as_i64()?,
            ))
        })
        .collect();
    let missing: Vec<&Key> = inj.expected.difference(&keys).collect();
    ensure!(missing.is_empty(), "list lacks {missing:#?}");
    for v in items {
        if v["kind"] == "decode" {
            ensure!(v["size"].as_u64().is_some_and(|s| s > 0), "{v}");
            ensure!(v["reason"].as_str().is_some_and(|r| !r.is_empty()), "{v}");
        }
    }
    let f = listed(items, fixable).context("the fixable dead letter is listed")?;
    ensure!(f["replayed"].is_null(), "not replayed yet: {f}");
    Ok(())
}

async fn list_and_replay_the_fixable_one(
    dir: &Path,
    log_args: &[&str],
    inj: &Injected,
    fixable: RecordPosition,
) -> anyhow::Result<()> {
    let items = list_json(dir, log_args)?;
    check_list(&items, inj, fixable)?;
    // The table names the source coordinates, the consumer and the reason.
    let mut args = vec!["deadletter", "list", "--topic", topics::METRICS];
    args.extend_from_slice(log_args);
    let table = run_to_end(dir, &args)?;
    ensure!(table.success, "{}", table.output);
    for needle in [
        "DL",
        "SOURCE",
        "CONSUMER",
        "timeseries",
        "readmodel",
        "fleet.metrics.v1/",
    ] {
        ensure!(
            table.output.contains(needle),
            "{needle} not in:\n{}",
            table.output
        );
    }
    ensure!(
        !table.output.contains("fleet.rules.v1/"),
        "--topic filters:\n{}",
        table.output
    );
    println!("{}", table.output);

    let dl = fixable.offset.to_string();
    let replay = |extra: &[&str]| {
        let mut args = vec!["deadletter", "replay", "--offset", &dl];
        args.extend_from_slice(extra);
        args.extend_from_slice(log_args);
        run_to_end(dir, &args)
    };
    let dry = replay(&["--dry-run"])?;
    ensure!(dry.success, "{}", dry.output);
    ensure!(dry.output.contains("would write"), "{}", dry.output);
    ensure!(
        listed(&list_json(dir, log_args)?, fixable).is_some_and(|v| v["replayed"].is_null()),
        "a dry run writes nothing"
    );
    let done = replay(&[])?;
    ensure!(done.success, "{}", done.output);
    ensure!(
        done.output.contains("wrote fleet.metrics.v1/0/1000000000"),
        "{}",
        done.output
    );
    println!("{}", done.output);
    let again = replay(&[])?;
    ensure!(
        !again.success,
        "a second replay must be refused:\n{}",
        again.output
    );
    ensure!(
        again.output.contains("already replayed"),
        "{}",
        again.output
    );
    let forced = replay(&["--force", "--dry-run"])?;
    ensure!(
        forced.success && forced.output.contains("would write"),
        "{}",
        forced.output
    );
    let items = list_json(dir, log_args)?;
    let f = listed(&items, fixable).context("listed")?;
    ensure!(
        f["replayed"]["offset"].as_i64().is_some(),
        "marked replayed: {f}"
    );
    Ok(())
}

async fn wait_agent(
    client: &reqwest::Client,
    api: &str,
    agent: &str,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    wait_for(
        &format!("the replayed report of {agent} in the read model"),
        WAIT,
        procs,
        || async {
            Ok(get_json(client, &format!("{api}/api/v1/agents/{agent}"))
                .await?
                // In the read model (its latest report) and in the time series.
                .filter(|a| {
                    a["cpu_percent"].is_number()
                        && a["series"].as_array().is_some_and(|s| !s.is_empty())
                })
                .map(|_| ()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_corrupt_records_become_dead_letters_and_a_replay_brings_one_back(
) -> anyhow::Result<()> {
    let dir = test_dir()?;
    let d = dir.path();
    let data = d.join("data");
    std::fs::create_dir_all(&data)?;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let fixed_agent = format!("e2e-replayed-{tag}");

    // The embedded log is open in one process at a time: fill it before `up` starts.
    let (inj, fixable) = {
        let log = fleet_event_log::open(&path(&data.join("log"))?, &Default::default()).await?;
        fleet_consumer::log::ensure_topics(log.as_ref()).await?;
        let inj = inject(log.as_ref(), &tag, true).await?;
        let fixable = fixable_dead_letter(log.as_ref(), &fixed_agent).await?;
        (inj, fixable)
    };

    let (gw_port, api_port) = (free_port()?, free_port()?);
    let api = format!("http://127.0.0.1:{api_port}");
    let admin_key = fleet_e2e::new_admin_key();
    let cfg = write_file(
        d,
        "fleetstream.toml",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n\n[processors]\nlisten = \"127.0.0.1:{}\"\n[api]\nadmin-api-key = \"{admin_key}\"\n",
            free_port()?
        ),
    )?;
    let up_args = ["up", "--data-dir", &path(&data)?, "--config", &path(&cfg)?];
    let mut up = Proc::start("up", d, &up_args, &[])?;
    let client = api_client(&admin_key)?;
    wait_for("every valid record processed", WAIT, &[&up], || {
        valid_records_processed(&client, &api, &inj)
    })
    .await?;
    // One process: its /metrics counts every consumer's dead letters.
    let want = inj.per_consumer_topic();
    let metrics = [format!("{api}/metrics")];
    wait_for("the dead-letter counters", WAIT, &[&up], || async {
        let c = counters(&client, &metrics).await?;
        Ok((c == want).then_some(()))
    })
    .await
    .with_context(|| format!("want {want:#?}"))?;
    up.stop()?;

    {
        let log = fleet_event_log::open(&path(&data.join("log"))?, &Default::default()).await?;
        check_dead_letters(&inj, &dead_letters(log.as_ref()).await?)?;
    }
    let data_s = path(&data)?;
    list_and_replay_the_fixable_one(d, &["--data-dir", &data_s], &inj, fixable).await?;

    // Started again, the consumers read the replayed report; the records they gave up on
    // before are not dead-lettered twice.
    let before = {
        let log = fleet_event_log::open(&path(&data.join("log"))?, &Default::default()).await?;
        dead_letters(log.as_ref()).await?.len()
    };
    let mut up = Proc::start("up-2", d, &up_args, &[])?;
    wait_agent(&client, &api, &fixed_agent, &[&up]).await?;
    up.stop()?;
    let log = fleet_event_log::open(&path(&data.join("log"))?, &Default::default()).await?;
    let after = dead_letters(log.as_ref()).await?;
    ensure!(
        after.len() == before,
        "the restart wrote dead letters again: {} then {}",
        before,
        after.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_corrupt_records_become_dead_letters_and_a_replay_brings_one_back(
) -> anyhow::Result<()> {
    let kafka = fleet_e2e::PrivateKafka::start().await?;
    let url = kafka.url();
    let dir = test_dir()?;
    let d = dir.path();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let (gw_port, api_port, pr_port) = (free_port()?, free_port()?, free_port()?);
    let api = format!("http://127.0.0.1:{api_port}");
    let admin_key = fleet_e2e::new_admin_key();
    let gw_cfg = write_file(
        d,
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\n[event-log]\nurl = \"{url}\"\n"
        ),
    )?;
    let pj_cfg = write_file(
        d,
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"sqlite://{}\"\ntimeseries = \"file://{}\"\n[event-log]\nurl = \"{url}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\n",
            d.join("rm.db").display(),
            d.join("ts").display()
        ),
    )?;
    let pr_cfg = write_file(
        d,
        "processors.toml",
        &format!(
            "listen = \"127.0.0.1:{pr_port}\"\n[event-log]\nurl = \"{url}\"\nsession-timeout = \"6000ms\"\n"
        ),
    )?;
    let gateway = Proc::start("gateway", d, &["gateway", "--config", &path(&gw_cfg)?], &[])?;
    let projections = Proc::start(
        "projections",
        d,
        &["projections", "--config", &path(&pj_cfg)?],
        &[],
    )?;
    let processors = Proc::start(
        "processors",
        d,
        &["processors", "--config", &path(&pr_cfg)?],
        &[],
    )?;
    let procs = [&gateway, &projections, &processors];
    for base in [
        format!("http://127.0.0.1:{gw_port}"),
        api.clone(),
        format!("http://127.0.0.1:{pr_port}"),
    ] {
        fleet_e2e::wait_ready(&format!("{base}/readyz"), WAIT, &procs).await?;
    }

    // While every role runs.
    let log: Arc<dyn EventLog> = fleet_event_log::open(&url, &Default::default()).await?;
    let mut inj = inject(log.as_ref(), &tag, false).await?;
    // The ticketer reads fleet.tickets.v1 only to rebuild its state (at start and when it
    // takes partitions): records written while it runs wait for its next rebuild.
    let rebuild = ("ticketer".to_owned(), topics::TICKETS.to_owned());
    inj.expected
        .retain(|(c, t, _, _)| (c, t) != (&rebuild.0, &rebuild.1));
    let client = api_client(&admin_key)?;
    wait_for("every valid record processed", WAIT, &procs, || {
        valid_records_processed(&client, &api, &inj)
    })
    .await?;
    wait_for("every dead letter", WAIT, &procs, || async {
        let got = dead_letters(log.as_ref()).await?;
        let keys: BTreeSet<Key> = got.iter().map(key_of).collect();
        Ok(inj.expected.is_subset(&keys).then_some(()))
    })
    .await?;
    check_dead_letters(&inj, &dead_letters(log.as_ref()).await?)?;
    let want = inj.per_consumer_topic();
    let metrics = [
        format!("http://127.0.0.1:{gw_port}/metrics"),
        format!("{api}/metrics"),
        format!("http://127.0.0.1:{pr_port}/metrics"),
    ];
    let mut c = counters(&client, &metrics).await?;
    // The deactivation watcher reads fleet.agents.v1 from the moment its group joined: it
    // gave up on the corrupt agents records too if it had joined before they were written.
    let watcher = (
        "gateway-deactivations".to_owned(),
        topics::AGENTS.to_owned(),
    );
    // The remote-configuration watcher reads it from its start, once it started (it waits
    // for its topics, which this test creates after the gateway started).
    let config_watcher = ("gateway-config".to_owned(), topics::AGENTS.to_owned());
    // Likewise the ticketer's rebuild after a rebalance, if one happened.
    for optional in [watcher, config_watcher, rebuild] {
        if let Some(n) = c.remove(&optional) {
            ensure!(n <= 3, "{optional:?} gave up on {n} records");
        }
    }
    if c != want {
        bail!("counters {c:#?}\nwant {want:#?}");
    }

    // `list` and `replay` against the running system (Kafka takes many clients).
    let fixed_agent = format!("e2e-replayed-{tag}");
    let fixable = fixable_dead_letter(log.as_ref(), &fixed_agent).await?;
    list_and_replay_the_fixable_one(d, &["--event-log", &url], &inj, fixable).await?;
    wait_agent(&client, &api, &fixed_agent, &procs).await?;
    // A role's own config file names the same log.
    let by_config = list_json(d, &["--config", &path(&pr_cfg)?])?;
    ensure!(
        by_config == list_json(d, &["--event-log", &url])?,
        "--config reads the log its event-log names"
    );
    Ok(())
}
