//! The processors role end to end, as real processes on Kafka: alerts become tickets, and
//! crashes lose and double nothing.
//!
//! * A ticketing system written in another language (Python: confluent-kafka + fastavro,
//!   `tests/ticketing/ticket_consumer.py`) reads `fleet.tickets.v1` from the beginning and
//!   sees exactly one REQUESTED and one UPDATED `resolved` per incident, although the
//!   processors were SIGKILLed in the middle and restarted with the same groups (shared
//!   Kafka, a fresh Postgres database, a real enrolled agent).
//! * Two processors instances in one set of consumer groups split the partitions; one is
//!   SIGKILLed while agents keep reporting, the other takes its partitions over, and every
//!   agent's incident is raised once, resolved once and ticketed once (a private Kafka
//!   broker, so the topics hold this test's records only; the gateway runs with
//!   `auth = "off"` and the test posts the reports of synthetic agents itself).

#![allow(clippy::print_stdout)] // what the run did, for --nocapture

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{free_port, wait_for, write_file, Proc};
use fleet_event_log::EventLog;
use fleet_schemas::{codec, ids, AlertEvent, AlertEventKind, Record, TicketEvent, TicketEventKind};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(90);

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

/// Every record of `T`'s topic that decodes and that `keep` selects, in topic order per
/// partition. Records that do not decode are counted in the second value.
async fn read_topic<T: Record>(
    log: &dyn EventLog,
    keep: impl Fn(&T) -> bool,
) -> anyhow::Result<(Vec<T>, usize)> {
    let mut out = Vec::new();
    let mut undecodable = 0usize;
    fleet_ops::log::read_to_end(log, T::TOPIC, |r| match codec::decode::<T>(&r.value) {
        Ok(v) if keep(&v) => out.push(v),
        Ok(_) => {}
        Err(_) => undecodable += 1,
    })
    .await?;
    Ok((out, undecodable))
}

/// `/readyz` answers 200.
async fn is_ready(client: &reqwest::Client, base: &str) -> bool {
    matches!(
        client.get(format!("{base}/readyz")).send().await,
        Ok(r) if r.status().is_success()
    )
}

async fn metrics_text(client: &reqwest::Client, base: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The partitions of `fleet.metrics.v1` the alert evaluator of a processors process
/// (run with `FLEET_LOG_FORMAT=json`) holds now, from its "Partition taken" and
/// "Partitions given up" log lines.
fn metric_partitions_held(p: &Proc) -> anyhow::Result<BTreeSet<u32>> {
    fn numbers(v: &Value) -> Vec<u32> {
        match v {
            Value::Number(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .into_iter()
                .collect(),
            Value::Array(a) => a.iter().flat_map(numbers).collect(),
            Value::String(s) => s
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|d| d.parse().ok())
                .collect(),
            _ => Vec::new(),
        }
    }
    let mut held = BTreeSet::new();
    for line in fleet_e2e::json_lines(p, "Partition")? {
        let fields = &line["fields"];
        let msg = fields["message"].as_str().unwrap_or_default();
        if msg.starts_with("Partition taken") {
            held.extend(numbers(&fields["partition"]));
        } else if msg.starts_with("Partitions given up") {
            for n in numbers(&fields["lost"]) {
                held.remove(&n);
            }
        }
    }
    Ok(held)
}

// ------------------------------------------------------------------ the Python consumer

fn ticket_consumer_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ticketing/ticket_consumer.py")
}

fn avro_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/avro")
}

/// Starts the Python ticketing consumer: group `group`, tickets of `tenant`, JSON lines
/// to `{dir}/{name}.jsonl` (its diagnostics to `{dir}/{name}.log`).
fn start_ticket_consumer(
    dir: &Path,
    name: &str,
    brokers: &str,
    group: &str,
    tenant: &str,
    until_end: bool,
) -> anyhow::Result<(Proc, PathBuf)> {
    let python = fleet_e2e::python_bin()?;
    let out = dir.join(format!("{name}.jsonl"));
    let (script, schemas, out_s) = (
        path(&ticket_consumer_script())?,
        path(&avro_dir())?,
        path(&out)?,
    );
    let mut args = vec![
        "-u",
        &script,
        "--brokers",
        brokers,
        "--group",
        group,
        "--tenant",
        tenant,
        "--schemas",
        &schemas,
        "--out",
        &out_s,
        "--max-secs",
        "240",
    ];
    if until_end {
        args.push("--until-end");
    }
    let proc = Proc::start_program(name, dir, &python, &args, &[])?;
    Ok((proc, out))
}

/// The JSON lines the consumer wrote so far (a torn last line is left for later).
fn ticket_lines(out: &Path) -> anyhow::Result<Vec<Value>> {
    let text = match std::fs::read_to_string(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

/// Asserts what a ticketing system must see of one tenant: no event twice (by event id,
/// nor by ticket, kind and status), and for the incident `alert_id` exactly one
/// REQUESTED `open` and one UPDATED `resolved`, on the ticket id derived from the alert id.
fn check_ticket_lines(lines: &[Value], alert_id: &str, rule_id: &str, what: &str) {
    let ticket_id = ids::v5(&[alert_id, "ticket"]).to_string();
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let mut by_event: HashMap<String, usize> = HashMap::new();
    let mut by_step: HashMap<(String, String, String), usize> = HashMap::new();
    for l in lines {
        *by_event.entry(s(l, "event_id")).or_default() += 1;
        *by_step
            .entry((s(l, "ticket_id"), s(l, "kind"), s(l, "status")))
            .or_default() += 1;
    }
    let twice: Vec<_> = by_event.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: event ids seen twice: {twice:?}\n{lines:#?}"
    );
    let twice: Vec<_> = by_step.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "{what}: ticket steps seen twice: {twice:?}\n{lines:#?}"
    );
    let mine: Vec<&Value> = lines.iter().filter(|l| l["rule_id"] == rule_id).collect();
    let requested: Vec<&&Value> = mine.iter().filter(|l| l["kind"] == "REQUESTED").collect();
    let updated: Vec<&&Value> = mine.iter().filter(|l| l["kind"] == "UPDATED").collect();
    assert_eq!(
        requested.len(),
        1,
        "{what}: one REQUESTED for the incident: {mine:#?}"
    );
    assert_eq!(
        updated.len(),
        1,
        "{what}: one UPDATED (resolved): {mine:#?}"
    );
    let (req, upd) = (requested[0], updated[0]);
    assert_eq!(req["alert_id"], alert_id, "{what}: {req}");
    assert_eq!(
        req["ticket_id"], ticket_id,
        "{what}: ticket id = v5(alert id, \"ticket\"): {req}"
    );
    assert_eq!(req["status"], "open", "{what}: {req}");
    assert_eq!(req["priority"], "P1", "critical is P1: {req}");
    assert_eq!(req["severity"], "CRITICAL", "{what}: {req}");
    assert_eq!(
        req["event_id"],
        ids::v5(&[&ticket_id, "REQUESTED", "open"]).to_string(),
        "{what}: {req}"
    );
    assert_eq!(upd["ticket_id"], ticket_id, "{what}: {upd}");
    assert_eq!(upd["alert_id"], alert_id, "{what}: {upd}");
    assert_eq!(upd["status"], "resolved", "{what}: {upd}");
    assert_eq!(upd["title"], req["title"], "an update keeps the title");
    assert!(
        req["occurred_at"].as_i64().is_some()
            && upd["occurred_at"].as_i64() >= req["occurred_at"].as_i64(),
        "{what}: times in microseconds, resolved after requested: {req} {upd}"
    );
}

// ----------------------------------------------------- 1: Python ticketing consumer

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ticketing_consumer_sees_one_ticket_per_incident_across_a_processors_sigkill(
) -> anyhow::Result<()> {
    let brokers = fleet_e2e::kafka_brokers();
    fleet_e2e::require_service("Kafka", &brokers)?;
    fleet_e2e::python_bin()?;
    let db = fleet_e2e::fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port, pr_port) = (free_port()?, free_port()?, free_port()?);
    let gateway_url = format!("http://127.0.0.1:{gw_port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let pr_url = format!("http://127.0.0.1:{pr_port}");
    let admin_key = format!("fsk_e2e_{id}");
    let log_url = format!("kafka://{brokers}");
    let gw_cfg = write_file(
        d,
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nevent-log = \"{log_url}\"\nauth = \"required\"\nregistry = \"{db}\"\n"
        ),
    )?;
    let pj_cfg = write_file(
        d,
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nevent-log = \"{log_url}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-tk-rm-{id}\"\ntimeseries-group = \"e2e-tk-ts-{id}\"\nsession-timeout-ms = 6000\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"{gateway_url}\"\n",
            d.join("ts").display()
        ),
    )?;
    let state_dir = d.join("agent-state");
    let ag_cfg = write_file(
        d,
        "agent.toml",
        &format!(
            "state-dir = \"{}\"\ncollect-interval-secs = 0.5\nbatch-max-reports = 2\nheartbeat-interval-secs = 1.0\ninventory = false\n",
            state_dir.display()
        ),
    )?;
    let gateway = Proc::start("gateway", d, &["gateway", "--config", &path(&gw_cfg)?], &[])?;
    let projections = Proc::start(
        "projections",
        d,
        &["projections", "--config", &path(&pj_cfg)?],
        &[],
    )?;
    let token = fleet_e2e::create_tenant_and_token(
        &api,
        &admin_key,
        &format!("e2e-tickets-{id}"),
        &[&gateway, &projections],
    )
    .await?;
    let agent_id = fleet_e2e::enroll_agent(
        d,
        &ag_cfg,
        &state_dir,
        &gateway_url,
        &token,
        &[&gateway, &projections],
    )
    .await?;
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant_id = creds["tenant_id"]
        .as_str()
        .context("tenant_id in credentials.json")?
        .to_owned();
    let agent = Proc::start(
        "agent",
        d,
        &["agent", "--config", &path(&ag_cfg)?],
        &[("FLEET_LOG_FORMAT", "json")],
    )?;

    // The ticketing system follows the topic from the beginning with its own group.
    let (mut follower, follow_out) = start_ticket_consumer(
        d,
        "ticket-consumer",
        &brokers,
        &format!("e2e-py-tickets-{id}"),
        &tenant_id,
        false,
    )?;

    // An always-breaching rule, scoped to this test's tenant (the shared topics hold other
    // tests' agents too).
    let rule_id = format!("e2e-ticket-rule-{id}");
    let processors_cfg = |threshold: f64| {
        format!(
            r#"listen = "127.0.0.1:{pr_port}"
event-log = "{log_url}"
group = "e2e-tk-alerts-{id}"
ticketer-group = "e2e-tk-tickets-{id}"
liveness-group = "e2e-tk-liveness-{id}"
command-timeouts-group = "e2e-tk-cmd-{id}"
session-timeout-ms = 6000
ticket-min-severity = "warning"

[[rules]]
id = "{rule_id}"
name = "E2E CPU at or above {threshold}"
metric = "cpu.percent"
operator = ">="
threshold = {threshold:.1}
severity = "critical"
tenant = "{tenant_id}"
"#
        )
    };
    let pr_cfg = write_file(d, "processors.toml", &processors_cfg(0.0))?;
    let pr_args = ["processors", "--config", &path(&pr_cfg)?];
    let json_log = [("FLEET_LOG_FORMAT", "json")];
    let mut processors = Proc::start("processors-1", d, &pr_args, &json_log)?;
    let log = fleet_event_log::open(&log_url, &Default::default()).await?;
    let client = reqwest::Client::new();
    let mine = |a: &AlertEvent| a.agent_id == agent_id && a.rule_id == rule_id;

    let raised = wait_for(
        "AlertRaised of the agent on fleet.alerts.v1",
        WAIT,
        &[&gateway, &processors, &agent],
        || async {
            let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), mine).await?;
            Ok(alerts
                .into_iter()
                .find(|a| a.kind == AlertEventKind::Raised))
        },
    )
    .await?;
    // A crash in the middle: the alert is written; the evaluator's offsets, the ticket and
    // the ticketer's offsets may or may not be.
    processors.kill()?;
    let mut processors = Proc::start("processors-2", d, &pr_args, &json_log)?;
    wait_for(
        "the restarted processors to be ready and evaluate the agent's new reports",
        WAIT,
        &[&processors, &agent],
        || async {
            if !is_ready(&client, &pr_url).await {
                return Ok(None);
            }
            let m = metrics_text(&client, &pr_url).await?;
            let evaluated = fleet_e2e::prometheus_sum_labeled(
                &m,
                "fleet_processor_records_total",
                &[("processor", "alerts")],
            );
            let tickets_read = fleet_e2e::prometheus_sum_labeled(
                &m,
                "fleet_processor_records_total",
                &[("processor", "ticketer")],
            );
            Ok((evaluated >= 6.0 && tickets_read >= 1.0).then_some(()))
        },
    )
    .await?;
    wait_for(
        "the Python consumer to see the REQUESTED ticket",
        WAIT,
        &[&processors, &follower],
        || async {
            Ok(ticket_lines(&follow_out)?
                .iter()
                .any(|l| l["rule_id"] == rule_id.as_str() && l["kind"] == "REQUESTED")
                .then_some(()))
        },
    )
    .await?;
    let m = metrics_text(&client, &pr_url).await?;
    assert_eq!(
        fleet_e2e::prometheus_sum(&m, "fleet_processor_alerts_emitted_total"),
        0.0,
        "the restarted evaluator (same rule, same groups) raised nothing again:\n{m}"
    );
    println!(
        "after the SIGKILL the restarted ticketer wrote {} ticket event(s)",
        fleet_e2e::prometheus_sum(&m, "fleet_processor_tickets_emitted_total") as u64
    );
    processors.kill()?;

    // Raise the threshold: the breach clears, the alert resolves, the ticket is updated.
    write_file(d, "processors.toml", &processors_cfg(1000.0))?;
    let processors = Proc::start("processors-3", d, &pr_args, &json_log)?;
    let resolved = wait_for(
        "AlertResolved of the incident on fleet.alerts.v1",
        WAIT,
        &[&processors, &agent],
        || async {
            let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), mine).await?;
            Ok(alerts
                .into_iter()
                .find(|a| a.kind == AlertEventKind::Resolved))
        },
    )
    .await?;
    assert_eq!(resolved.alert_id, raised.alert_id, "one incident");
    wait_for(
        "the Python consumer to see the UPDATED resolved ticket",
        WAIT,
        &[&processors, &follower],
        || async {
            Ok(ticket_lines(&follow_out)?
                .iter()
                .any(|l| {
                    l["rule_id"] == rule_id.as_str()
                        && l["kind"] == "UPDATED"
                        && l["status"] == "resolved"
                })
                .then_some(()))
        },
    )
    .await?;

    // The alert topic: one raise, one resolve, nothing twice.
    let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), mine).await?;
    let count = |k: AlertEventKind| alerts.iter().filter(|a| a.kind == k).count();
    assert_eq!(count(AlertEventKind::Raised), 1, "{alerts:#?}");
    assert_eq!(count(AlertEventKind::Resolved), 1, "{alerts:#?}");
    assert!(
        alerts.iter().all(|a| a.alert_id == raised.alert_id),
        "{alerts:#?}"
    );

    // What the live consumer printed, and what a replay of the whole topic with a new
    // group prints.
    follower.stop()?;
    let live = ticket_lines(&follow_out)?;
    check_ticket_lines(&live, &raised.alert_id, &rule_id, "the live consumer");
    let (mut replay, replay_out) = start_ticket_consumer(
        d,
        "ticket-replay",
        &brokers,
        &format!("e2e-py-replay-{id}"),
        &tenant_id,
        true,
    )?;
    let status = replay.wait_exit(Duration::from_secs(120))?;
    anyhow::ensure!(
        status.success(),
        "the replaying consumer failed ({status}):\n{}",
        replay.log_tail(40)
    );
    let replayed = ticket_lines(&replay_out)?;
    check_ticket_lines(
        &replayed,
        &raised.alert_id,
        &rule_id,
        "a replay from the start",
    );

    // Interop: fastavro decoded what the Rust codec decodes.
    let (rust_side, undecodable) =
        read_topic::<TicketEvent>(log.as_ref(), |t| t.tenant_id == tenant_id).await?;
    let key = |e: &str, t: &str, k: &str, s: &str, title: &str| {
        (
            e.to_owned(),
            t.to_owned(),
            k.to_owned(),
            s.to_owned(),
            title.to_owned(),
        )
    };
    let from_rust: BTreeSet<_> = rust_side
        .iter()
        .map(|t| {
            let kind = match t.kind {
                TicketEventKind::Requested => "REQUESTED",
                TicketEventKind::Updated => "UPDATED",
            };
            key(&t.event_id, &t.ticket_id, kind, &t.status, &t.title)
        })
        .collect();
    let s = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let from_python: BTreeSet<_> = replayed
        .iter()
        .map(|l| {
            key(
                &s(l, "event_id"),
                &s(l, "ticket_id"),
                &s(l, "kind"),
                &s(l, "status"),
                &s(l, "title"),
            )
        })
        .collect();
    assert_eq!(
        from_python, from_rust,
        "the Python consumer and the Rust codec read the same ticket events"
    );
    assert_eq!(replayed.len(), rust_side.len());
    let _ = undecodable; // other tests' records; the tenant filter is on decoded records
    let _ = (agent, gateway, projections);
    Ok(())
}

// ------------------------------------------- 2: two instances in one consumer group

/// A metric report of a synthetic agent (what `fleetstream agent` sends, fewer fields).
fn report(cpu: f64) -> Value {
    json!({
        "collected_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "cpu_percent": cpu,
        "memory_used_bytes": 2_000_000_000u64, "memory_total_bytes": 8_000_000_000u64,
        "memory_percent": 25.0,
        "load_1": 0.2, "load_5": 0.2, "load_15": 0.2, "uptime_seconds": 1000
    })
}

/// One report of every agent (`cpu_of` gives its CPU), posted concurrently; fails
/// unless the gateway took them all.
async fn send_round(
    client: &reqwest::Client,
    gateway: &str,
    agents: &[String],
    cpu_of: impl Fn(&str) -> f64,
) -> anyhow::Result<()> {
    let posts = agents.iter().map(|a| {
        let body = json!({ "reports": [report(cpu_of(a))] });
        let url = format!("{gateway}/api/v1/agents/{a}/metrics");
        async move {
            let resp = client.post(url).json(&body).send().await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "metrics of {a}: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            anyhow::Ok(())
        }
    });
    for r in futures::future::join_all(posts).await {
        r?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processors_in_one_group_raise_resolve_and_ticket_every_incident_once_when_one_is_sigkilled(
) -> anyhow::Result<()> {
    const PARTITIONS: u32 = 6;
    let kafka = fleet_e2e::PrivateKafka::start().await?;
    let log_url = kafka.url();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let tenant = format!("e2e-cg-{id}");
    let gw_port = free_port()?;
    let gateway_url = format!("http://127.0.0.1:{gw_port}");
    let gw_cfg = write_file(
        d,
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nevent-log = \"{log_url}\"\nauth = \"off\"\ndefault-tenant = \"{tenant}\"\nrate-limit-per-second = 0\n"
        ),
    )?;
    // Two agents on every partition of fleet.metrics.v1: one breaches from the start
    // ("early"), the other only after an instance was killed ("late").
    let mut on: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for n in 0.. {
        if on.len() == PARTITIONS as usize && on.values().all(|v| v.len() == 2) {
            break;
        }
        let a = format!("e2e-cg-{id}-agent-{n}");
        let p = fleet_event_log::partition_for_key(a.as_bytes(), PARTITIONS);
        let v = on.entry(p).or_default();
        if v.len() < 2 {
            v.push(a);
        }
    }
    let agents: Vec<String> = on.values().flatten().cloned().collect();
    let early: HashSet<String> = on.values().map(|v| v[0].clone()).collect();
    let partition_of = |a: &str| fleet_event_log::partition_for_key(a.as_bytes(), PARTITIONS);

    let rule_id = format!("e2e-cg-cpu-{id}");
    let processors_cfg = |port: u16| {
        format!(
            r#"listen = "127.0.0.1:{port}"
event-log = "{log_url}"
group = "e2e-cg-alerts-{id}"
ticketer-group = "e2e-cg-tickets-{id}"
liveness-group = "e2e-cg-liveness-{id}"
command-timeouts-group = "e2e-cg-cmd-{id}"
session-timeout-ms = 6000
ticket-min-severity = "warning"

[[rules]]
id = "{rule_id}"
name = "E2E CPU at or above 90"
metric = "cpu.percent"
operator = ">="
threshold = 90.0
severity = "critical"
"#
        )
    };
    let (a_port, b_port) = (free_port()?, free_port()?);
    let (a_url, b_url) = (
        format!("http://127.0.0.1:{a_port}"),
        format!("http://127.0.0.1:{b_port}"),
    );
    let a_cfg = write_file(d, "processors-a.toml", &processors_cfg(a_port))?;
    let b_cfg = write_file(d, "processors-b.toml", &processors_cfg(b_port))?;
    let json_log = [("FLEET_LOG_FORMAT", "json")];
    let gateway = Proc::start("gateway", d, &["gateway", "--config", &path(&gw_cfg)?], &[])?;
    let a = Proc::start(
        "processors-a",
        d,
        &["processors", "--config", &path(&a_cfg)?],
        &json_log,
    )?;
    let mut b = Proc::start(
        "processors-b",
        d,
        &["processors", "--config", &path(&b_cfg)?],
        &json_log,
    )?;
    let client = reqwest::Client::new();

    // Both instances are ready and split the partitions between them.
    let (held_a, held_b) = wait_for(
        "both processors instances to be ready and to split fleet.metrics.v1",
        WAIT,
        &[&a, &b],
        || async {
            if !(is_ready(&client, &a_url).await && is_ready(&client, &b_url).await) {
                return Ok(None);
            }
            let (ha, hb) = (metric_partitions_held(&a)?, metric_partitions_held(&b)?);
            let all: BTreeSet<u32> = ha.union(&hb).copied().collect();
            Ok((!ha.is_empty()
                && !hb.is_empty()
                && ha.is_disjoint(&hb)
                && all.len() == PARTITIONS as usize)
                .then_some((ha, hb)))
        },
    )
    .await?;
    println!("instance A holds {held_a:?}, instance B holds {held_b:?}");
    let b_early = early
        .iter()
        .filter(|x| held_b.contains(&partition_of(x)))
        .count();
    assert!(b_early > 0, "B holds partitions with breaching agents");

    let log = fleet_event_log::open(&log_url, &Default::default()).await?;
    let alerts_of_rule = |x: &AlertEvent| x.rule_id == rule_id;
    let agents_with = |alerts: &[AlertEvent], kind: AlertEventKind| -> HashSet<String> {
        alerts
            .iter()
            .filter(|x| x.kind == kind)
            .map(|x| x.agent_id.clone())
            .collect()
    };

    // Phase 1: the early agents breach; both instances raise alerts.
    wait_for(
        "AlertRaised of every early agent (reports keep coming)",
        WAIT,
        &[&gateway, &a, &b],
        || async {
            send_round(&client, &gateway_url, &agents, |x| {
                if early.contains(x) {
                    99.0
                } else {
                    10.0
                }
            })
            .await?;
            let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), alerts_of_rule).await?;
            let raised = agents_with(&alerts, AlertEventKind::Raised);
            Ok(early.is_subset(&raised).then_some(()))
        },
    )
    .await?;
    // B wrote the alerts of its partitions' early agents: kill it now, in the middle (its
    // tickets and commits may be in flight).
    let m = metrics_text(&client, &b_url).await?;
    let b_raised = fleet_e2e::prometheus_sum_labeled(
        &m,
        "fleet_processor_alerts_emitted_total",
        &[("kind", "raised")],
    );
    b.kill()?;
    assert!(
        b_raised >= 1.0,
        "B raised alerts before it was killed:\n{m}"
    );

    // Phase 2: every agent breaches; A takes B's partitions over after the session
    // timeout and raises the late agents of B's partitions, and nothing twice.
    wait_for(
        "AlertRaised of every agent after B was killed",
        WAIT,
        &[&gateway, &a],
        || async {
            send_round(&client, &gateway_url, &agents, |_| 99.0).await?;
            let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), alerts_of_rule).await?;
            let raised = agents_with(&alerts, AlertEventKind::Raised);
            Ok((raised.len() == agents.len()).then_some(()))
        },
    )
    .await?;
    let held_a_after = metric_partitions_held(&a)?;
    assert_eq!(
        held_a_after.len(),
        PARTITIONS as usize,
        "A took over B's partitions: {held_a_after:?}"
    );

    // Phase 3: every agent recovers.
    wait_for(
        "AlertResolved of every agent",
        WAIT,
        &[&gateway, &a],
        || async {
            send_round(&client, &gateway_url, &agents, |_| 10.0).await?;
            let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), alerts_of_rule).await?;
            let resolved = agents_with(&alerts, AlertEventKind::Resolved);
            Ok((resolved.len() == agents.len()).then_some(()))
        },
    )
    .await?;
    let tickets = wait_for(
        "REQUESTED and UPDATED resolved tickets of every incident",
        WAIT,
        &[&a],
        || async {
            let (t, _) = read_topic::<TicketEvent>(log.as_ref(), |t| t.rule_id == rule_id).await?;
            let resolved: HashSet<&str> = t
                .iter()
                .filter(|t| t.kind == TicketEventKind::Updated && t.status == "resolved")
                .map(|t| t.agent_id.as_str())
                .collect();
            Ok((resolved.len() == agents.len()).then_some(t))
        },
    )
    .await?;

    // Exactly once, from the topics (this broker holds this test's records only).
    let (alerts, bad) = read_topic::<AlertEvent>(log.as_ref(), |_| true).await?;
    assert_eq!(bad, 0, "every alert record decodes");
    let mut alert_of: HashMap<String, String> = HashMap::new();
    for agent in &agents {
        let of: Vec<&AlertEvent> = alerts.iter().filter(|x| &x.agent_id == agent).collect();
        let raised: Vec<&&AlertEvent> = of
            .iter()
            .filter(|x| x.kind == AlertEventKind::Raised)
            .collect();
        let resolved: Vec<&&AlertEvent> = of
            .iter()
            .filter(|x| x.kind == AlertEventKind::Resolved)
            .collect();
        assert_eq!(raised.len(), 1, "one AlertRaised of {agent}: {of:#?}");
        assert_eq!(resolved.len(), 1, "one AlertResolved of {agent}: {of:#?}");
        assert_eq!(of.len(), 2, "nothing else of {agent}: {of:#?}");
        assert_eq!(raised[0].alert_id, resolved[0].alert_id, "{of:#?}");
        assert_eq!(raised[0].tenant_id, tenant);
        alert_of.insert(agent.clone(), raised[0].alert_id.clone());
    }
    let distinct: HashSet<&String> = alert_of.values().collect();
    assert_eq!(distinct.len(), agents.len(), "one incident per agent");
    let event_ids: HashSet<&str> = alerts.iter().map(|x| x.event_id.as_str()).collect();
    assert_eq!(event_ids.len(), alerts.len(), "no alert event twice");

    let (all_tickets, bad) = read_topic::<TicketEvent>(log.as_ref(), |_| true).await?;
    assert_eq!(bad, 0, "every ticket record decodes");
    assert_eq!(all_tickets.len(), tickets.len(), "only this rule's tickets");
    let event_ids: HashSet<&str> = all_tickets.iter().map(|t| t.event_id.as_str()).collect();
    assert_eq!(
        event_ids.len(),
        all_tickets.len(),
        "no ticket event twice: {all_tickets:#?}"
    );
    for (agent, alert_id) in &alert_of {
        let ticket_id = ids::v5(&[alert_id, "ticket"]).to_string();
        let of: Vec<&TicketEvent> = all_tickets
            .iter()
            .filter(|t| &t.agent_id == agent)
            .collect();
        let requested: Vec<&&TicketEvent> = of
            .iter()
            .filter(|t| t.kind == TicketEventKind::Requested)
            .collect();
        assert_eq!(
            requested.len(),
            1,
            "one ticket REQUESTED for {agent}: {of:#?}"
        );
        assert_eq!(of.len(), 2, "REQUESTED and UPDATED resolved only: {of:#?}");
        assert!(
            of.iter()
                .all(|t| t.ticket_id == ticket_id && &t.alert_id == alert_id),
            "ticket id = v5(alert id, \"ticket\") for {agent}: {of:#?}"
        );
    }
    let m = metrics_text(&client, &a_url).await?;
    println!(
        "{} agents: {} alert events, {} ticket events; B raised {b_raised} before the kill, \
         A raised {} and wrote {} ticket events",
        agents.len(),
        alerts.len(),
        all_tickets.len(),
        fleet_e2e::prometheus_sum_labeled(
            &m,
            "fleet_processor_alerts_emitted_total",
            &[("kind", "raised")]
        ),
        fleet_e2e::prometheus_sum(&m, "fleet_processor_tickets_emitted_total"),
    );
    let _ = (gateway, kafka);
    Ok(())
}
