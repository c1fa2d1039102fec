//! Replay, verify and export end to end, as real processes.
//!
//! The system runs (`fleetstream up` on the embedded log and stores; and every role as its
//! own process on a private Kafka broker and Postgres), an enrolled agent reports this
//! machine, an API-made rule raises an alert that is acknowledged and ticketed, a command
//! runs, the agent is tagged, and Influx line protocol with an ingest key writes samples of
//! a host and of a scrape target over two hours (`fleet.samples.v1`). Once the live projections have applied everything in the
//! topics, `fleetstream replay` rebuilds both projections into fresh stores, and
//! `fleetstream verify` finds the rebuilt read model and time series equal to the live
//! ones; a row altered in the rebuilt read model and a sample added to the rebuilt time
//! series are then reported as differences (exit status 1). `fleetstream export` writes the
//! metric topic as JSONL and as an Avro object container file, which fastavro
//! (`FLEET_PYTHON`) reads back with the same record count and fields.

#![allow(clippy::print_stdout)] // what the run did, for --nocapture

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _};
use fleet_e2e::{free_port, run_to_end, wait_for, write_file, Finished, Proc};
use fleet_event_log::EventLog;
use fleet_projections::project::{READ_MODEL_PROJECTION, READ_MODEL_TOPICS, TIMESERIES_TOPICS};
use fleet_read_model::ReadModel as _;
use fleet_timeseries::TimeSeriesStore as _;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const SERVICE: &str = "fleet-e2e-replay.service";

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

/// Runs `fleetstream <args>` to its end, printing what it said.
fn fleetstream(dir: &Path, args: &[&str]) -> anyhow::Result<Finished> {
    let out = run_to_end(dir, args)?;
    println!(
        "$ fleetstream {}\n{}(exit: {})",
        args.join(" "),
        out.output,
        if out.success { "0" } else { "non-zero" }
    );
    Ok(out)
}

async fn get(client: &reqwest::Client, key: &str, url: &str) -> anyhow::Result<Option<Value>> {
    let resp = client.get(url).bearer_auth(key).send().await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status.is_success(), "GET {url}: {status} {text}");
    Ok(Some(serde_json::from_str(&text)?))
}

async fn send(
    req: reqwest::RequestBuilder,
    key: &str,
    body: Option<Value>,
    expected: reqwest::StatusCode,
) -> anyhow::Result<Value> {
    let req = req.bearer_auth(key);
    let req = match body {
        Some(b) => req.json(&b),
        None => req,
    };
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(status == expected, "{status} (expected {expected}): {text}");
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// What the scenario made.
struct Fed {
    agent_id: String,
    agent: Proc,
}

/// Enrolls and runs an agent, and makes through the API everything the read model shows:
/// a rule whose alert is acknowledged and ticketed, a finished command, tags. Returns once
/// the read model shows all of it (the agent keeps running).
async fn feed(
    dir: &Path,
    api: &str,
    gateway: &str,
    admin_key: &str,
    server: &[&Proc],
) -> anyhow::Result<Fed> {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let token =
        fleet_e2e::create_tenant_and_token(api, admin_key, &format!("e2e-replay-{id}"), server)
            .await?;
    let state_dir = dir.join("agent-state");
    let ag_cfg = write_file(
        dir,
        "agent.toml",
        &format!(
            "server-url = \"{gateway}\"\nstate-dir = \"{}\"\ncollect-interval = \"500ms\"\nbatch-max-reports = 2\nheartbeat-interval = \"1s\"\nservices = [\"{SERVICE}\"]\nallowed-commands = [\"collect_diagnostics\"]\n",
            state_dir.display()
        ),
    )?;
    let agent_id =
        fleet_e2e::enroll_agent(dir, &ag_cfg, &state_dir, gateway, &token, server).await?;
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant_id = creds["tenant_id"].as_str().context("tenant_id")?.to_owned();
    let agent = Proc::start("agent", dir, &["agent", "--config", &path(&ag_cfg)?], &[])?;
    let mut procs: Vec<&Proc> = server.to_vec();
    procs.push(&agent);
    let client = reqwest::Client::new();
    let ok = reqwest::StatusCode::OK;

    let rule = send(
        client.post(format!("{api}/api/v1/tenants/{tenant_id}/rules")),
        admin_key,
        Some(json!({"name": "e2e replay: CPU in use", "metric": "cpu.percent", "operator": ">", "critical": -1.0})),
        reqwest::StatusCode::CREATED,
    )
    .await?;
    let rule_id = rule["rule_id"].as_str().context("rule_id")?.to_owned();
    let alerts_url = format!("{api}/api/v1/alerts?agent_id={agent_id}");
    let alert = wait_for("the rule's alert", WAIT, &procs, || async {
        Ok(get(&client, admin_key, &alerts_url).await?.and_then(|a| {
            a["alerts"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["rule_id"] == rule_id.as_str()).cloned())
        }))
    })
    .await?;
    let alert_id = alert["alert_id"].as_str().context("alert_id")?.to_owned();
    send(
        client.post(format!("{api}/api/v1/alerts/{alert_id}/acknowledge")),
        admin_key,
        None,
        ok,
    )
    .await?;
    let command = send(
        client.post(format!("{api}/api/v1/agents/{agent_id}/commands")),
        admin_key,
        Some(json!({"command_type": "collect_diagnostics"})),
        reqwest::StatusCode::ACCEPTED,
    )
    .await?;
    let command_id = command["command_id"]
        .as_str()
        .context("command_id")?
        .to_owned();
    send(
        client.put(format!("{api}/api/v1/agents/{agent_id}/tags")),
        admin_key,
        Some(json!({"tags": ["e2e", "replay"]})),
        ok,
    )
    .await?;
    let command_url = format!("{api}/api/v1/commands/{command_id}");
    wait_for("the command to finish", WAIT, &procs, || async {
        Ok(get(&client, admin_key, &command_url).await?.filter(|c| {
            ["succeeded", "failed", "timed_out", "refused"]
                .contains(&c["status"].as_str().unwrap_or(""))
        }))
    })
    .await?;
    let tickets_url = format!("{api}/api/v1/tickets?tenant={tenant_id}");
    wait_for("the alert's ticket, acknowledged", WAIT, &procs, || async {
        Ok(get(&client, admin_key, &tickets_url).await?.filter(|t| {
            t["tickets"].as_array().is_some_and(|t| {
                t.iter()
                    .any(|x| x["alert_id"] == alert_id.as_str() && x["status"] == "acknowledged")
            })
        }))
    })
    .await?;
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    wait_for("the agent tagged, with metrics", WAIT, &procs, || async {
        Ok(get(&client, admin_key, &agent_url)
            .await?
            .filter(|a| a["tags"] == json!(["e2e", "replay"]) && a["cpu_percent"].is_number()))
    })
    .await?;
    if Path::new("/usr/bin/dpkg-query").exists() {
        let software_url = format!("{api}/api/v1/agents/{agent_id}/software");
        wait_for("the agent's software", WAIT, &procs, || async {
            get(&client, admin_key, &software_url).await
        })
        .await?;
    }
    write_samples(&client, api, gateway, admin_key, &tenant_id).await?;
    // More reports, so that the series span some samples.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(procs);
    Ok(Fed { agent_id, agent })
}

/// The line-protocol samples [`write_samples`] writes: 3 series of 2 sources.
const SAMPLE_SERIES: usize = 3;

/// Writes samples with Influx line protocol (an ingest key of `tenant_id`): a host's two
/// fields and a scrape target's one, at times over the last two hours.
async fn write_samples(
    client: &reqwest::Client,
    api: &str,
    gateway: &str,
    admin_key: &str,
    tenant_id: &str,
) -> anyhow::Result<()> {
    let created = send(
        client.post(format!("{api}/api/v1/admin/ingest-keys")),
        admin_key,
        Some(json!({"name": "e2e replay", "tenant_id": tenant_id})),
        reqwest::StatusCode::CREATED,
    )
    .await?;
    let key = created["key"].as_str().context("ingest key")?;
    let now = fleet_schemas::time::now_micros() / 1_000_000;
    let t = now - 7200;
    let body = format!(
        "cpu,host=db-1 usage_idle=90.5,usage_user=3 {t}\n\
         cpu,host=db-1 usage_idle=91 {}\n\
         node,instance=web-1:9100,job=node load1=0.5 {t}\n\
         node,instance=web-1:9100,job=node load1=0.7 {}\n",
        t + 1800,
        t + 5400
    );
    let resp = client
        .post(format!("{gateway}/api/v2/write?precision=s"))
        .bearer_auth(key)
        .body(body)
        .send()
        .await?;
    ensure!(
        resp.status() == reqwest::StatusCode::NO_CONTENT,
        "line protocol: {} {}",
        resp.status(),
        resp.text().await?
    );
    Ok(())
}

/// Next offsets per (topic, partition) of the read-model and time-series topics: the end
/// offsets of the log, for comparing with what a projection applied.
async fn ends(log: &dyn EventLog) -> anyhow::Result<BTreeMap<(String, u32), i64>> {
    let mut out = BTreeMap::new();
    for topic in READ_MODEL_TOPICS {
        for (p, end) in log.end_offsets(topic).await?.into_iter().enumerate() {
            if end > 0 {
                out.insert(((*topic).to_owned(), u32::try_from(p)?), end);
            }
        }
    }
    Ok(out)
}

/// Whether the live projections applied every record in the log: the read model's stored
/// offsets and the time-series group's committed offsets equal the end offsets.
async fn caught_up(
    log: &dyn EventLog,
    read_model_url: &str,
    timeseries_group: &str,
) -> anyhow::Result<bool> {
    let ends = ends(log).await?;
    let store = fleet_read_model::SqlReadModel::connect(read_model_url).await?;
    let applied: BTreeMap<(String, u32), i64> = store
        .offsets(READ_MODEL_PROJECTION)
        .await?
        .into_iter()
        .map(|o| ((o.topic, o.partition), o.next_offset))
        .collect();
    store.close().await;
    let rm_done = ends.iter().all(|(k, end)| applied.get(k) == Some(end));
    let mut ts_done = true;
    for topic in TIMESERIES_TOPICS {
        let committed = log.committed_offsets(timeseries_group, topic).await?;
        for (p, end) in log.end_offsets(topic).await?.into_iter().enumerate() {
            let c = committed.get(p).copied().flatten().unwrap_or(0);
            ts_done &= c >= end;
        }
    }
    if !(rm_done && ts_done) {
        println!("live projections behind: ends {ends:?}, read model applied {applied:?}, time series caught up: {ts_done}");
    }
    Ok(rm_done && ts_done)
}

/// The tenant of an agent, from the read model.
async fn tenant_of(rm: &fleet_read_model::SqlReadModel, agent_id: &str) -> anyhow::Result<String> {
    Ok(rm
        .get_agent(None, agent_id)
        .await?
        .context("the agent in the read model")?
        .tenant_id)
}

/// Checks that `out` failed and says each of `needles`.
fn expect_failure(out: &Finished, needles: &[&str]) -> anyhow::Result<()> {
    ensure!(!out.success, "expected a failure:\n{}", out.output);
    for n in needles {
        ensure!(out.output.contains(n), "expected {n:?} in:\n{}", out.output);
    }
    Ok(())
}

/// Replays both projections into fresh stores, verifies them equal to the live ones, then
/// alters the rebuilt ones and verifies that the differences are reported.
async fn replay_and_verify(
    dir: &Path,
    log_args: &[&str],
    live_read_model: &str,
    live_timeseries: &str,
    rebuilt_read_model: &str,
    agent_id: &str,
    alter: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let rebuilt_ts = format!("file://{}", dir.join("rebuilt-ts").display());
    let mut args = vec![
        "replay",
        "--projection",
        "all",
        "--into",
        rebuilt_read_model,
        "--into",
        &rebuilt_ts,
        "--batch-size",
        "50",
    ];
    args.extend_from_slice(log_args);
    let out = fleetstream(dir, &args)?;
    ensure!(out.success, "replay failed:\n{}", out.output);
    for needle in [
        "Replay finished",
        "records/s",
        "fleet.metrics.v1",
        "changes applied",
        "points written",
        "not derived from topics",
    ] {
        ensure!(
            out.output.contains(needle),
            "replay said no {needle:?}:\n{}",
            out.output
        );
    }

    // A target that is not empty is refused, unless --force (which rebuilds it).
    let again = fleetstream(dir, &args)?;
    expect_failure(&again, &["not empty", "--force"])?;
    let mut forced = args.clone();
    forced.push("--force");
    let out = fleetstream(dir, &forced)?;
    ensure!(out.success, "replay --force failed:\n{}", out.output);

    let verify_rm = [
        "verify",
        "--projection",
        "read-model",
        "--live",
        live_read_model,
        "--rebuilt",
        rebuilt_read_model,
    ];
    let out = fleetstream(dir, &verify_rm)?;
    ensure!(
        out.success,
        "the rebuilt read model differs:\n{}",
        out.output
    );
    ensure!(out.output.contains("equals the live one"), "{}", out.output);
    for table in [
        "agents",
        "alerts",
        "alert_rules",
        "commands",
        "command_audit",
        "command_output",
        "tickets",
    ] {
        let line = out
            .output
            .lines()
            .find(|l| l.starts_with(&format!("{table}: ")))
            .with_context(|| format!("no line for {table}:\n{}", out.output))?;
        ensure!(
            !line.starts_with(&format!("{table}: 0 rows")),
            "{table} is empty, the scenario should have filled it: {line}"
        );
    }
    let verify_ts = [
        "verify",
        "--projection",
        "timeseries",
        "--live",
        live_timeseries,
        "--rebuilt",
        &rebuilt_ts,
    ];
    let out = fleetstream(dir, &verify_ts)?;
    ensure!(
        out.success,
        "the rebuilt time series differ:\n{}",
        out.output
    );
    ensure!(out.output.contains("equal the live ones"), "{}", out.output);

    // Deliberate differences are reported, with exit status 1.
    alter.await?;
    let out = fleetstream(dir, &verify_rm)?;
    expect_failure(
        &out,
        &[
            "different agent_id=",
            "cpu_percent: live",
            "missing event_id=",
            "command_audit",
            "extra ticket_id=e2e-extra-ticket",
            "differences",
        ],
    )?;
    ensure!(out.output.contains(agent_id), "{}", out.output);
    {
        let ts = fleet_timeseries::open(
            &rebuilt_ts,
            fleet_timeseries::Retention::default(),
            fleet_timeseries::EngineConfig::default(),
        )
        .await?;
        let series = ts.list_series(usize::MAX).await?;
        let s = series
            .iter()
            .find(|s| s.agent_id == agent_id && s.series == "cpu.percent")
            .context("cpu.percent of the agent in the rebuilt time series")?;
        ts.write(&[fleet_timeseries::Point {
            tenant_id: s.tenant_id.clone(),
            agent_id: s.agent_id.clone(),
            series: s.series.clone(),
            // After the agent stopped: a sample no live store has.
            ts_micros: fleet_e2e::now_micros() - 1_000,
            value: 42.0,
        }])
        .await?;
    }
    let out = fleetstream(dir, &verify_ts)?;
    expect_failure(
        &out,
        &[
            "extra raw (1 s) bucket",
            "1h bucket",
            "cpu.percent",
            "differences",
        ],
    )?;
    Ok(())
}

/// Exports the metric topic as JSONL and Avro and reads both back (fastavro for Avro).
fn export_and_read_back(
    dir: &Path,
    log_args: &[&str],
    metric_records: usize,
    agent_id: &str,
) -> anyhow::Result<Vec<Value>> {
    let jsonl = dir.join("metrics.jsonl");
    let avro = dir.join("metrics.avro");
    let mut args = vec!["export", "--topic", "fleet.metrics.v1", "--format", "jsonl"];
    let jsonl_s = path(&jsonl)?;
    args.extend_from_slice(&["--out", &jsonl_s]);
    args.extend_from_slice(log_args);
    let out = fleetstream(dir, &args)?;
    ensure!(out.success, "export jsonl failed:\n{}", out.output);
    ensure!(
        out.output
            .contains(&format!("Exported {metric_records} records")),
        "{}",
        out.output
    );
    let text = std::fs::read_to_string(&jsonl)?;
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("a JSONL line is not JSON")?;
    ensure!(
        lines.len() == metric_records,
        "{} lines, {metric_records} records",
        lines.len()
    );
    for l in &lines {
        ensure!(l["topic"] == "fleet.metrics.v1", "{l}");
        ensure!(l["partition"].is_u64() && l["offset"].is_u64(), "{l}");
        ensure!(
            l["timestamp"].is_string() && l["timestamp_ms"].is_i64(),
            "{l}"
        );
        ensure!(l["schema"] == "io.fleetstream.MetricReport", "{l}");
        ensure!(l["record"]["agent_id"] == agent_id, "{l}");
        ensure!(l["record"]["cpu_percent"].is_number(), "{l}");
    }

    // A time window: from the median record's timestamp on.
    let mut times: Vec<i64> = lines
        .iter()
        .filter_map(|l| l["timestamp_ms"].as_i64())
        .collect();
    times.sort_unstable();
    let from_ms = times[times.len() / 2];
    let expected = times.iter().filter(|t| **t >= from_ms).count();
    let from = chrono::DateTime::from_timestamp_millis(from_ms)
        .context("time")?
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let windowed = dir.join("window.jsonl");
    let windowed_s = path(&windowed)?;
    let mut args = vec![
        "export",
        "--topic",
        "fleet.metrics.v1",
        "--format",
        "jsonl",
        "--from",
        &from,
        "--to",
        "now",
        "--out",
        &windowed_s,
    ];
    args.extend_from_slice(log_args);
    let out = fleetstream(dir, &args)?;
    ensure!(out.success, "export of a window failed:\n{}", out.output);
    let n = std::fs::read_to_string(&windowed)?.lines().count();
    ensure!(
        n == expected,
        "window from {from}: {n} lines, expected {expected}"
    );

    let avro_s = path(&avro)?;
    let mut args = vec![
        "export",
        "--topic",
        "fleet.metrics.v1",
        "--format",
        "avro",
        "--out",
        &avro_s,
    ];
    args.extend_from_slice(log_args);
    let out = fleetstream(dir, &args)?;
    ensure!(out.success, "export avro failed:\n{}", out.output);
    let python = fleet_e2e::python_bin()?;
    let script = r#"
import json, sys, fastavro
with open(sys.argv[1], "rb") as f:
    reader = fastavro.reader(f)
    records = list(reader)
    print(json.dumps({
        "count": len(records),
        "schema": reader.writer_schema["name"],
        "topic": reader.metadata.get("fleetstream.topic"),
        "agents": sorted({r["agent_id"] for r in records}),
        "fields": sorted(records[0].keys()) if records else [],
        "cpu_is_number": all(isinstance(r["cpu_percent"], float) for r in records),
        "event_ids": len({r["event_id"] for r in records}),
    }))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, &avro_s])
        .output()
        .context("running fastavro")?;
    ensure!(
        out.status.success(),
        "fastavro failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got: Value = serde_json::from_slice(&out.stdout)?;
    println!("fastavro read: {got}");
    ensure!(got["count"] == metric_records, "{got}");
    ensure!(
        got["event_ids"] == metric_records,
        "every record once: {got}"
    );
    ensure!(got["schema"] == "io.fleetstream.MetricReport", "{got}");
    ensure!(got["topic"] == "fleet.metrics.v1", "{got}");
    ensure!(got["agents"] == json!([agent_id]), "{got}");
    ensure!(got["cpu_is_number"] == true, "{got}");
    let fields = got["fields"].as_array().context("fields")?;
    for f in [
        "event_id",
        "tenant_id",
        "agent_id",
        "occurred_at",
        "cpu_percent",
        "disks",
        "services",
    ] {
        ensure!(fields.iter().any(|x| x == f), "no field {f}: {got}");
    }
    Ok(lines)
}

/// `replay --from TIME` starts each partition at its first record at or after TIME
/// (`lines`: the metric topic as exported, with positions and timestamps).
fn replay_from(dir: &Path, log_args: &[&str], lines: &[Value]) -> anyhow::Result<()> {
    let mut times: Vec<i64> = lines
        .iter()
        .filter_map(|l| l["timestamp_ms"].as_i64())
        .collect();
    times.sort_unstable();
    let from_ms = times[times.len() / 2];
    // Per partition: records from the first one at or after the time to the end.
    let mut per_partition: BTreeMap<u64, Vec<(u64, i64)>> = BTreeMap::new();
    for l in lines {
        if let (Some(p), Some(o), Some(t)) = (
            l["partition"].as_u64(),
            l["offset"].as_u64(),
            l["timestamp_ms"].as_i64(),
        ) {
            per_partition.entry(p).or_default().push((o, t));
        }
    }
    let expected: usize = per_partition
        .values_mut()
        .map(|records| {
            records.sort_unstable();
            records
                .iter()
                .position(|(_, t)| *t >= from_ms)
                .map_or(0, |first| records.len() - first)
        })
        .sum();
    let from = chrono::DateTime::from_timestamp_millis(from_ms)
        .context("time")?
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let into = format!("file://{}", dir.join("from-ts").display());
    let mut args = vec![
        "replay",
        "--projection",
        "timeseries",
        "--from",
        &from,
        "--into",
        &into,
    ];
    args.extend_from_slice(log_args);
    let out = fleetstream(dir, &args)?;
    ensure!(out.success, "replay --from failed:\n{}", out.output);
    let needle = format!("fleet.metrics.v1       {expected} records");
    ensure!(
        out.output.contains(&needle),
        "expected {needle:?} (from {from}):\n{}",
        out.output
    );
    Ok(())
}

/// Alters the rebuilt read model: one column of the agent, one command audit entry
/// removed, one ticket added.
async fn alter_read_model(url: &str, agent_id: &str) -> anyhow::Result<()> {
    use sqlx::Connection as _;
    let statements = [
        format!("UPDATE agents SET cpu_percent = cpu_percent + 1 WHERE agent_id = '{agent_id}'"),
        "DELETE FROM command_audit WHERE event_id = (SELECT MIN(event_id) FROM command_audit)"
            .to_owned(),
        "INSERT INTO tickets SELECT 'e2e-extra-ticket', alert_id, tenant_id, agent_id, status, \
         status_rank, content_rank, priority, severity, title, description, location_id, \
         created_at, updated_at FROM tickets WHERE ticket_id = (SELECT MIN(ticket_id) FROM tickets)"
            .to_owned(),
    ];
    if url.starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(url).await?;
        for s in &statements {
            let n = sqlx::query(s).execute(&mut conn).await?.rows_affected();
            ensure!(n > 0, "{s} changed nothing");
        }
    } else {
        let mut conn = sqlx::SqliteConnection::connect(url).await?;
        for s in &statements {
            let n = sqlx::query(s).execute(&mut conn).await?.rows_affected();
            ensure!(n > 0, "{s} changed nothing");
        }
    }
    Ok(())
}

fn keep_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    let mut dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test directory (kept): {}", dir.path().display());
    }
    Ok(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_replay_rebuilds_equal_views_and_exports() -> anyhow::Result<()> {
    let dir = keep_dir("fleet-e2e-replay-")?;
    let fleet_e2e::LocalUp {
        proc: mut up,
        gateway,
        api,
        data,
        admin_key,
    } = fleet_e2e::LocalUp::start(dir.path(), "").await?;
    let mut fed = feed(dir.path(), &api, &gateway, &admin_key, &[&up]).await?;
    fed.agent.stop()?;
    up.stop()?;

    // The live projections may be a batch behind what the log took last: let the
    // projections role alone (nothing produces any more) apply the rest.
    let log_url = format!("file://{}", data.join("log").display());
    let live_rm = format!("sqlite://{}", data.join("readmodel.db").display());
    let live_ts = format!("file://{}", data.join("timeseries").display());
    let pj_port = free_port()?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{pj_port}\"\nserve-api = false\nread-model = \"{live_rm}\"\ntimeseries = \"{live_ts}\"\n[event-log]\nurl = \"{log_url}\"\n"
        ),
    )?;
    let mut metric_records = 0usize;
    for attempt in 0.. {
        let log = fleet_event_log::open(&log_url, &Default::default()).await?;
        let done = caught_up(log.as_ref(), &live_rm, "fleet-projection-timeseries").await?;
        metric_records = log
            .end_offsets(fleet_schemas::topics::METRICS)
            .await?
            .iter()
            .map(|e| usize::try_from(*e).unwrap_or(0))
            .sum();
        drop(log);
        if done {
            break;
        }
        if attempt >= 5 {
            bail!("the live projections did not catch up with the log");
        }
        let mut pj = Proc::start(
            "projections",
            dir.path(),
            &["projections", "--config", &path(&pj_cfg)?],
            &[],
        )?;
        tokio::time::sleep(Duration::from_secs(5)).await;
        pj.stop()?;
    }
    ensure!(metric_records > 5, "only {metric_records} metric reports");
    // The line-protocol samples are in the live series index and time series.
    let rm = fleet_read_model::SqlReadModel::connect(&live_rm).await?;
    let series = rm
        .list_sample_series(&fleet_read_model::SampleSeriesQuery {
            tenant_id: tenant_of(&rm, &fed.agent_id).await?,
            metric: None,
            start: i64::MIN,
            end: i64::MAX,
            limit: 100,
        })
        .await?;
    rm.close().await;
    ensure!(series.len() == SAMPLE_SERIES, "{series:#?}");
    let ts = fleet_timeseries::open(&live_ts, Default::default(), Default::default()).await?;
    let load = ts
        .points(
            &series[0].tenant_id,
            r#"~{instance="web-1:9100",job="node"}"#,
            &[r#"node_load1{instance="web-1:9100",job="node"}"#],
            i64::MIN,
            i64::MAX,
        )
        .await?;
    ensure!(load[0].len() == 2, "{load:?}");
    drop(ts);

    let rebuilt_rm = format!("sqlite://{}", dir.path().join("rebuilt.db").display());
    let log_args = ["--event-log", log_url.as_str()];
    replay_and_verify(
        dir.path(),
        &log_args,
        &live_rm,
        &live_ts,
        &rebuilt_rm,
        &fed.agent_id,
        alter_read_model(&rebuilt_rm, &fed.agent_id),
    )
    .await?;
    let lines = export_and_read_back(dir.path(), &log_args, metric_records, &fed.agent_id)?;
    replay_from(dir.path(), &log_args, &lines)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_postgres_replay_rebuilds_equal_views() -> anyhow::Result<()> {
    let kafka = fleet_e2e::PrivateKafka::start().await?;
    let db = fleet_e2e::fresh_database().await?;
    let rebuilt_db = fleet_e2e::fresh_database().await?;
    let dir = keep_dir("fleet-e2e-replay-kafka-")?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port, pr_port) = (free_port()?, free_port()?, free_port()?);
    let gateway = format!("http://127.0.0.1:{gw_port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let admin_key = fleet_e2e::new_admin_key();
    let log = kafka.url();
    let ts_dir: PathBuf = dir.path().join("ts");
    let live_ts = format!("file://{}", ts_dir.display());
    let ts_group = format!("e2e-ts-{id}");
    let gw_cfg = write_file(
        dir.path(),
        "gateway.toml",
        &format!("listen = \"127.0.0.1:{gw_port}\"\nauth = \"required\"\nregistry = \"{db}\"\n[event-log]\nurl = \"{log}\"\n"),
    )?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"{live_ts}\"\nread-model-group = \"e2e-rm-{id}\"\ntimeseries-group = \"{ts_group}\"\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"{gateway}\"\n"
        ),
    )?;
    let pr_cfg = write_file(
        dir.path(),
        "processors.toml",
        &format!(
            "listen = \"127.0.0.1:{pr_port}\"\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[alert-evaluator]\ngroup = \"e2e-alerts-{id}\"\n[ticketer]\ngroup = \"e2e-tickets-{id}\"\n[liveness]\ngroup = \"e2e-liveness-{id}\"\n[command-timeouts]\ngroup = \"e2e-timeouts-{id}\"\n"
        ),
    )?;
    let mut projections = Proc::start(
        "projections",
        dir.path(),
        &["projections", "--config", &path(&pj_cfg)?],
        &[],
    )?;
    let mut gateway_proc = Proc::start(
        "gateway",
        dir.path(),
        &["gateway", "--config", &path(&gw_cfg)?],
        &[],
    )?;
    let mut processors = Proc::start(
        "processors",
        dir.path(),
        &["processors", "--config", &path(&pr_cfg)?],
        &[],
    )?;
    let mut fed = feed(
        dir.path(),
        &api,
        &gateway,
        &admin_key,
        &[&projections, &gateway_proc, &processors],
    )
    .await?;
    // Stop what produces; the projections apply the rest.
    fed.agent.stop()?;
    gateway_proc.stop()?;
    processors.stop()?;
    let client_log = fleet_event_log::open(&log, &Default::default()).await?;
    wait_for(
        "the live projections to catch up",
        WAIT,
        &[&projections],
        || async {
            Ok(caught_up(client_log.as_ref(), &db, &ts_group)
                .await?
                .then_some(()))
        },
    )
    .await?;
    projections.stop()?;

    let log_args = ["--event-log", log.as_str()];
    replay_and_verify(
        dir.path(),
        &log_args,
        &db,
        &live_ts,
        &rebuilt_db,
        &fed.agent_id,
        alter_read_model(&rebuilt_db, &fed.agent_id),
    )
    .await?;
    let metric_records: usize = client_log
        .end_offsets(fleet_schemas::topics::METRICS)
        .await?
        .iter()
        .map(|e| usize::try_from(*e).unwrap_or(0))
        .sum();
    let lines = export_and_read_back(dir.path(), &log_args, metric_records, &fed.agent_id)?;
    replay_from(dir.path(), &log_args, &lines)?;
    Ok(())
}
