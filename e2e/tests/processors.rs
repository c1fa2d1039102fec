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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{free_port, wait_for, write_file, Proc};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_schemas::api::HeartbeatIn;
use fleet_schemas::{
    codec, ids, AgentLifecycle, AgentLifecycleKind, AlertEvent, AlertEventKind, CommandEvent,
    CommandEventKind, Record, TicketEvent, TicketEventKind,
};
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
    fleet_consumer::log::read_to_end(log, &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        match codec::Wire::plain().decode_known::<T>(&r.value) {
            Ok(v) if keep(&v) => out.push(v),
            Ok(_) => {}
            Err(_) => undecodable += 1,
        }
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

/// The numbers in a logged field: a number, an array of them, or a Debug string such as
/// `"{0, 1, 2}"`.
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

/// The partitions of `fleet.metrics.v1` the alert evaluator of a processors process
/// (run with `FLEET_LOG_FORMAT=json`) holds now, from its "Partition taken" and
/// "Partitions given up" log lines. Its group also reads `fleet.agents.v1` (for
/// `heartbeat.absent` rules): those partitions are not counted.
fn metric_partitions_held(p: &Proc) -> anyhow::Result<BTreeSet<u32>> {
    let metrics_topic = <fleet_schemas::MetricReport as Record>::TOPIC;
    let mut held = BTreeSet::new();
    for line in fleet_e2e::json_lines(p, "Partition")? {
        let fields = &line["fields"];
        let msg = fields["message"].as_str().unwrap_or_default();
        if msg.starts_with("Partition taken") {
            if fields["topic"] == metrics_topic {
                held.extend(numbers(&fields["partition"]));
            }
        } else if msg.starts_with("Partitions given up") {
            // `lost` is the Debug form of `[("topic", partition), ...]`.
            let lost = fields["lost"].as_str().unwrap_or_default();
            for pair in lost.split('(').skip(1) {
                let pair = pair.split(')').next().unwrap_or_default();
                let mut it = pair.split(',');
                let topic = it.next().unwrap_or_default().trim().trim_matches('"');
                let partition = it.next().and_then(|n| n.trim().parse::<u32>().ok());
                if let (true, Some(n)) = (topic == metrics_topic, partition) {
                    held.remove(&n);
                }
            }
        }
    }
    Ok(held)
}

/// The partitions of its input topic a timer-driven processor (`liveness`,
/// `command-timeouts`) of a processors process holds now, from its last "Assignment
/// changed" log line.
fn timed_partitions_held(p: &Proc, processor: &str) -> anyhow::Result<BTreeSet<u32>> {
    Ok(fleet_e2e::json_lines(p, "Assignment changed")?
        .iter()
        .rev()
        .find(|l| l["fields"]["processor"] == processor)
        .map(|l| numbers(&l["fields"]["held"]).into_iter().collect())
        .unwrap_or_default())
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
    let admin_key = fleet_e2e::new_admin_key();
    let log_url = format!("kafka://{brokers}");
    let gw_cfg = write_file(
        d,
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"required\"\nregistry = \"{db}\"\n[event-log]\nurl = \"{log_url}\"\n"
        ),
    )?;
    let pj_cfg = write_file(
        d,
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-tk-rm-{id}\"\ntimeseries-group = \"e2e-tk-ts-{id}\"\n[event-log]\nurl = \"{log_url}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"{gateway_url}\"\n",
            d.join("ts").display()
        ),
    )?;
    let state_dir = d.join("agent-state");
    let ag_cfg = write_file(
        d,
        "agent.toml",
        &format!(
            "state-dir = \"{}\"\ncollect-interval = \"500ms\"\nbatch-max-reports = 2\nheartbeat-interval = \"1s\"\ninventory = false\n",
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

[event-log]
url = "{log_url}"
session-timeout = "6s"

[alert-evaluator]
group = "e2e-tk-alerts-{id}"

[ticketer]
group = "e2e-tk-tickets-{id}"
min-severity = "warning"

[liveness]
group = "e2e-tk-liveness-{id}"

[command-timeouts]
group = "e2e-tk-cmd-{id}"

[[rules]]
id = "{rule_id}"
name = "E2E CPU at or above {threshold}"
metric = "cpu.percent"
operator = ">="
critical = {threshold:.1}
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
    // Only this incident's events count: on the shared broker the restarted processors
    // may rightly raise alerts for other tests' tenants (their agents went offline).
    let (alerts, _) = read_topic::<AlertEvent>(log.as_ref(), mine).await?;
    assert_eq!(
        alerts.len(),
        1,
        "the restarted evaluator (same rule, same groups) raised nothing again: {alerts:#?}"
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

/// Synthetic agents' heartbeats: every half second, one heartbeat of every agent in
/// `beating` (the test adds and removes agents while it runs). The first failure is kept
/// for the test to report.
#[derive(Clone, Default)]
struct Heartbeats {
    beating: Arc<Mutex<BTreeSet<String>>>,
    first_error: Arc<Mutex<Option<String>>>,
}

impl Heartbeats {
    fn set(&self, agents: impl IntoIterator<Item = String>, on: bool) {
        let mut b = self.beating.lock().unwrap_or_else(|e| e.into_inner());
        for a in agents {
            if on {
                b.insert(a);
            } else {
                b.remove(&a);
            }
        }
    }

    fn first_error(&self) -> Option<String> {
        self.first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Posts heartbeats until the task is aborted.
    fn spawn(&self, client: reqwest::Client, gateway: String) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            for sequence in 1u64.. {
                let now: Vec<String> = me
                    .beating
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect();
                let posts = now.iter().map(|a| {
                    let body = HeartbeatIn {
                        sent_at: chrono::Utc::now(),
                        sequence,
                        uptime_seconds: 1000 + sequence,
                        agent_version: "0.0.0-e2e".into(),
                        heartbeat_interval_secs: None,
                        config_version: None,
                    };
                    let (client, url) = (&client, format!("{gateway}/api/v1/agents/{a}/heartbeat"));
                    async move {
                        match client.post(url).json(&body).send().await {
                            Ok(r) if r.status().is_success() => None,
                            Ok(r) => Some(format!("heartbeat of {a}: {}", r.status())),
                            Err(e) => Some(format!("heartbeat of {a}: {e}")),
                        }
                    }
                });
                for err in futures::future::join_all(posts).await.into_iter().flatten() {
                    me.first_error
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(err);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    }
}

/// Writes a REQUESTED command (`timeout_secs` 1) for each agent straight to
/// `fleet.commands.v1`, keyed by agent id, with a COMPLETED right behind it for the
/// agents in `completed`. Returns the command ids by agent.
async fn request_commands(
    log: &dyn EventLog,
    tenant: &str,
    agents: &[String],
    completed: &HashSet<String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut records = Vec::new();
    let mut ids_of = BTreeMap::new();
    for agent in agents {
        let command_id = uuid::Uuid::new_v4().to_string();
        let now = fleet_e2e::now_micros();
        let mut events = vec![CommandEvent {
            command_type: "restart_service".into(),
            args: [("service".to_owned(), "e2e".to_owned())].into(),
            timeout_secs: 1,
            actor: Some("e2e".into()),
            ..CommandEvent::step(CommandEventKind::Requested, &command_id, tenant, agent, now)
        }];
        if completed.contains(agent) {
            events.push(CommandEvent {
                status: Some("succeeded".into()),
                exit_code: Some(0),
                ..CommandEvent::step(
                    CommandEventKind::Completed,
                    &command_id,
                    tenant,
                    agent,
                    now + 1,
                )
            });
        }
        for ev in &events {
            records.push(ProduceRecord {
                key: Some(agent.as_bytes().to_vec()),
                value: codec::Wire::plain().encode(ev)?,
                timestamp_ms: Some(ev.occurred_at.div_euclid(1000)),
            });
        }
        ids_of.insert(agent.clone(), command_id);
    }
    log.produce(CommandEvent::TOPIC, records).await?;
    Ok(ids_of)
}

/// Agents with an AgentLifecycle of `kind` on `fleet.agents.v1`.
async fn agents_marked(
    log: &dyn EventLog,
    kind: AgentLifecycleKind,
) -> anyhow::Result<HashSet<String>> {
    let (events, _) = read_topic::<AgentLifecycle>(log, |e| e.kind == kind).await?;
    Ok(events.into_iter().map(|e| e.agent_id).collect())
}

/// Commands with a TIMED_OUT on `fleet.commands.v1`.
async fn commands_timed_out(log: &dyn EventLog) -> anyhow::Result<HashSet<String>> {
    let (events, _) =
        read_topic::<CommandEvent>(log, |e| e.kind == CommandEventKind::TimedOut).await?;
    Ok(events.into_iter().map(|e| e.command_id).collect())
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
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\ndefault-tenant = \"{tenant}\"\nrate-limit-per-second = 0\n[event-log]\nurl = \"{log_url}\"\n"
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

[event-log]
url = "{log_url}"
session-timeout = "6s"

[alert-evaluator]
group = "e2e-cg-alerts-{id}"

[ticketer]
group = "e2e-cg-tickets-{id}"
min-severity = "warning"

[liveness]
group = "e2e-cg-liveness-{id}"
offline-after = "3s"
check-interval = "1s"

[command-timeouts]
group = "e2e-cg-cmd-{id}"
grace = "1s"
check-interval = "1s"

[[rules]]
id = "{rule_id}"
name = "E2E CPU at or above 90"
metric = "cpu.percent"
operator = ">="
critical = 90.0
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
    // Liveness and command timeouts (their own groups) split their topics too.
    let split = |processor: &'static str| {
        let (a, b) = (&a, &b);
        move || async move {
            let (ha, hb) = (
                timed_partitions_held(a, processor)?,
                timed_partitions_held(b, processor)?,
            );
            let all: BTreeSet<u32> = ha.union(&hb).copied().collect();
            Ok((!ha.is_empty()
                && !hb.is_empty()
                && ha.is_disjoint(&hb)
                && all.len() == PARTITIONS as usize)
                .then_some((ha, hb)))
        }
    };
    let (live_a, live_b) = wait_for(
        "A and B to split fleet.heartbeats.v1 (liveness)",
        WAIT,
        &[&a, &b],
        split("liveness"),
    )
    .await?;
    let (cmd_a, cmd_b) = wait_for(
        "A and B to split fleet.commands.v1 (command timeouts)",
        WAIT,
        &[&a, &b],
        split("command-timeouts"),
    )
    .await?;
    println!(
        "liveness: A holds {live_a:?}, B {live_b:?}; command timeouts: A {cmd_a:?}, B {cmd_b:?}"
    );

    let log = fleet_event_log::open(&log_url, &Default::default()).await?;

    // Liveness: every agent heartbeats. Two agents (one on a heartbeat partition of A, one
    // of B) fall silent before the kill and come back after it; two others fall silent
    // when B is killed (the one on B's partition is judged by A once it took over) and come
    // back later; the rest heartbeat throughout and must never be reported.
    let heartbeats = Heartbeats::default();
    heartbeats.set(agents.iter().cloned(), true);
    let heartbeat_task = heartbeats.spawn(client.clone(), gateway_url.clone());
    let first = |s: &BTreeSet<u32>| s.first().copied().unwrap_or_default();
    let last = |s: &BTreeSet<u32>| s.last().copied().unwrap_or_default();
    let silent_before: BTreeSet<String> = [&live_a, &live_b]
        .into_iter()
        .map(|s| on[&first(s)][1].clone())
        .collect();
    let silent_after: BTreeSet<String> = [&live_a, &live_b]
        .into_iter()
        .map(|s| on[&last(s)][0].clone())
        .collect();
    let went_silent: BTreeSet<String> = silent_before.union(&silent_after).cloned().collect();
    wait_for(
        "a heartbeat of every agent on fleet.heartbeats.v1",
        WAIT,
        &[&gateway],
        || async {
            if let Some(e) = heartbeats.first_error() {
                anyhow::bail!("a heartbeat was refused: {e}");
            }
            let (hbs, _) = read_topic::<fleet_schemas::Heartbeat>(log.as_ref(), |_| true).await?;
            let seen: HashSet<&str> = hbs.iter().map(|h| h.agent_id.as_str()).collect();
            Ok(agents
                .iter()
                .all(|x| seen.contains(x.as_str()))
                .then_some(()))
        },
    )
    .await?;
    heartbeats.set(silent_before.iter().cloned(), false);

    // Command timeouts: one command per partition of fleet.commands.v1 (a late agent of
    // each) before the kill, one more per partition (an early agent) after it; on a
    // partition of B each time one gets its COMPLETED at once and must never time out.
    let late: Vec<String> = on.values().map(|v| v[1].clone()).collect();
    let early_agents: Vec<String> = on.values().map(|v| v[0].clone()).collect();
    let completed: HashSet<String> =
        [on[&first(&cmd_b)][1].clone(), on[&first(&cmd_b)][0].clone()].into();
    let mut commands = request_commands(log.as_ref(), &tenant, &late, &completed).await?;
    let open_commands = |commands: &BTreeMap<String, String>| -> HashSet<String> {
        commands
            .iter()
            .filter(|(agent, _)| !completed.contains(*agent))
            .map(|(_, c)| c.clone())
            .collect()
    };
    let due_before = open_commands(&commands);
    wait_for(
        "OFFLINE on fleet.agents.v1 of the agents silent before the kill",
        WAIT,
        &[&a, &b],
        || async {
            let offline = agents_marked(log.as_ref(), AgentLifecycleKind::Offline).await?;
            Ok(silent_before
                .iter()
                .all(|x| offline.contains(x))
                .then_some(()))
        },
    )
    .await?;
    wait_for(
        "TIMED_OUT of the commands requested before the kill",
        WAIT,
        &[&a, &b],
        || async {
            let timed_out = commands_timed_out(log.as_ref()).await?;
            Ok(due_before.is_subset(&timed_out).then_some(()))
        },
    )
    .await?;
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
    heartbeats.set(silent_before.iter().cloned(), true);
    heartbeats.set(silent_after.iter().cloned(), false);
    commands.extend(request_commands(log.as_ref(), &tenant, &early_agents, &completed).await?);
    let due_all = open_commands(&commands);

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
    wait_for(
        "ONLINE of the agents back after the kill, OFFLINE of those silent since it, \
         TIMED_OUT of the commands requested after it (A alone)",
        WAIT,
        &[&gateway, &a],
        || async {
            let online = agents_marked(log.as_ref(), AgentLifecycleKind::Online).await?;
            let offline = agents_marked(log.as_ref(), AgentLifecycleKind::Offline).await?;
            let timed_out = commands_timed_out(log.as_ref()).await?;
            Ok((silent_before.iter().all(|x| online.contains(x))
                && silent_after.iter().all(|x| offline.contains(x))
                && due_all.is_subset(&timed_out))
            .then_some(()))
        },
    )
    .await?;
    heartbeats.set(silent_after.iter().cloned(), true);
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
    // Liveness, exactly once: one OFFLINE and one ONLINE of each agent that fell silent
    // (one incident each), nothing of the agents that kept heartbeating.
    wait_for(
        "ONLINE of the agents silent since the kill, back now",
        WAIT,
        &[&gateway, &a],
        || async {
            let online = agents_marked(log.as_ref(), AgentLifecycleKind::Online).await?;
            Ok(silent_after
                .iter()
                .all(|x| online.contains(x))
                .then_some(()))
        },
    )
    .await?;
    let (lifecycle, bad) = read_topic::<AgentLifecycle>(log.as_ref(), |_| true).await?;
    assert_eq!(bad, 0, "every agents record decodes");
    let event_ids: HashSet<&str> = lifecycle.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        event_ids.len(),
        lifecycle.len(),
        "no lifecycle event twice: {lifecycle:#?}"
    );
    let mut by_pair: BTreeMap<(&str, &str), Vec<&AgentLifecycle>> = BTreeMap::new();
    for e in &lifecycle {
        let kind = match e.kind {
            AgentLifecycleKind::Offline => "OFFLINE",
            AgentLifecycleKind::Online => "ONLINE",
            _ => "other",
        };
        by_pair.entry((&e.agent_id, kind)).or_default().push(e);
    }
    for agent in &agents {
        let of = |kind| {
            by_pair
                .get(&(agent.as_str(), kind))
                .map_or(&[][..], Vec::as_slice)
        };
        let (offline, online, other) = (of("OFFLINE"), of("ONLINE"), of("other"));
        assert!(
            other.is_empty(),
            "only OFFLINE / ONLINE of {agent}: {other:#?}"
        );
        if !went_silent.contains(agent) {
            assert!(
                offline.is_empty() && online.is_empty(),
                "{agent} kept heartbeating: no lifecycle event: {offline:#?} {online:#?}"
            );
            continue;
        }
        assert_eq!(offline.len(), 1, "one OFFLINE of {agent}: {offline:#?}");
        assert_eq!(online.len(), 1, "one ONLINE of {agent}: {online:#?}");
        let (off, on_again) = (offline[0], online[0]);
        assert_eq!(off.tenant_id, tenant, "{off:?}");
        assert_eq!(on_again.tenant_id, tenant, "{on_again:?}");
        assert_eq!(
            off.event_id,
            ids::v5(&[agent, "OFFLINE", &off.occurred_at.to_string()]).to_string(),
            "OFFLINE id = v5(agent, OFFLINE, last seen): {off:?}"
        );
        assert!(
            on_again.occurred_at > off.occurred_at,
            "{agent} came back after it was last seen: {off:?} {on_again:?}"
        );
    }
    assert_eq!(
        lifecycle.len(),
        2 * went_silent.len(),
        "nothing else on fleet.agents.v1: {lifecycle:#?}"
    );

    // Command timeouts, exactly once: one TIMED_OUT of each command without a result,
    // none of the completed ones, nothing else written to the topic.
    let (command_events, bad) = read_topic::<CommandEvent>(log.as_ref(), |_| true).await?;
    assert_eq!(bad, 0, "every command record decodes");
    let event_ids: HashSet<&str> = command_events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(
        event_ids.len(),
        command_events.len(),
        "no command event twice: {command_events:#?}"
    );
    for (agent, command_id) in &commands {
        let of: Vec<&CommandEvent> = command_events
            .iter()
            .filter(|e| &e.command_id == command_id)
            .collect();
        let timed_out: Vec<&&CommandEvent> = of
            .iter()
            .filter(|e| e.kind == CommandEventKind::TimedOut)
            .collect();
        if completed.contains(agent) {
            assert!(
                timed_out.is_empty(),
                "the completed command of {agent} never times out: {of:#?}"
            );
            assert_eq!(of.len(), 2, "REQUESTED and COMPLETED only: {of:#?}");
            continue;
        }
        assert_eq!(
            timed_out.len(),
            1,
            "one TIMED_OUT of the command of {agent}: {of:#?}"
        );
        assert_eq!(of.len(), 2, "REQUESTED and TIMED_OUT only: {of:#?}");
        let t = timed_out[0];
        assert_eq!(
            t.event_id,
            ids::v5(&[command_id, "TIMED_OUT", "0"]).to_string(),
            "{t:?}"
        );
        assert_eq!((&t.agent_id, &t.tenant_id), (agent, &tenant), "{t:?}");
        assert_eq!(t.timeout_secs, 1, "{t:?}");
    }
    assert_eq!(
        command_events.len(),
        2 * commands.len(),
        "nothing else on fleet.commands.v1: {command_events:#?}"
    );
    heartbeat_task.abort();
    assert_eq!(
        heartbeats.first_error(),
        None,
        "every heartbeat was accepted"
    );
    let lines = |p: &Proc, msg: &str| fleet_e2e::json_lines(p, msg).map_or(0, |l| l.len());
    println!(
        "liveness: {} agents went silent; B wrote {} OFFLINE / {} ONLINE before its kill, A \
         {} / {}; command timeouts: {} TIMED_OUT, B wrote {}, A {}",
        went_silent.len(),
        lines(&b, "Agent offline."),
        lines(&b, "Agent online again."),
        lines(&a, "Agent offline."),
        lines(&a, "Agent online again."),
        due_all.len(),
        lines(&b, "Command timed out."),
        lines(&a, "Command timed out."),
    );

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
