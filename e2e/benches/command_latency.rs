//! Remote command latency: from `POST /api/v1/agents/{id}/commands` (the query API,
//! admin key) to the agent starting the command, with the agent connected over the
//! WebSocket.
//!
//! `fleetstream up` runs gateway, processors, projections and API in one process on a
//! temporary data directory (embedded log and stores, loopback ports). The bench creates a
//! tenant and a one-time token through the admin API, enrolls an agent with `fleetstream
//! agent enroll` and runs it as its own process (`websocket = true`, `allowed-commands =
//! ["run_script"]`, a `[scripts]` entry `mark = "date +%s%N >> FILE"`). Once the socket is
//! up it sends BENCH_COMMANDS requests one after another; each waits for the previous
//! command to have ended ("Command ended." in the agent's log).
//!
//! Two figures per command, both against the wall clock taken just before the POST:
//!
//! * **script start**: the time the script itself wrote (`date +%s%N`): API → log
//!   (`fleet.commands.v1`) → the gateway's dispatcher → the socket → the agent's executor
//!   → `/bin/sh -c` → `date`;
//! * **agent start**: the timestamp of the agent's "Running command." log line (before the
//!   spawn), from its JSON log.
//!
//! usage: cargo build --release -p fleetstream && \
//!        FLEETSTREAM_BIN=$PWD/target/release/fleetstream cargo bench -p fleet-e2e --bench command_latency
//! Environment: BENCH_COMMANDS (measured commands, default 50), BENCH_WARMUP (unmeasured
//! commands first, 3), FLEETSTREAM_BIN (else target/debug/fleetstream). Every child is
//! killed when the bench ends or fails.

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use fleet_e2e::{env_num, free_port, wait_for, write_file, Proc};

fn now_nanos() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

/// The start times (ns since the epoch) the script wrote so far.
fn marks(file: &Path) -> anyhow::Result<Vec<i128>> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| l.trim().parse::<i128>().ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// The timestamp (ns) of the agent's JSON log line `message` for `command_id`.
fn agent_log_time(agent: &Proc, message: &str, command_id: &str) -> anyhow::Result<Option<i128>> {
    let line = fleet_e2e::json_lines(agent, message)?
        .into_iter()
        .find(|l| l["fields"]["command_id"] == command_id);
    let Some(line) = line else {
        return Ok(None);
    };
    let ts = line["timestamp"]
        .as_str()
        .context("timestamp of a log line")?;
    let t = chrono::DateTime::parse_from_rfc3339(ts)
        .with_context(|| format!("log timestamp {ts:?}"))?;
    Ok(t.timestamp_nanos_opt().map(i128::from))
}

/// (min, p50, p99, max) in ms, nearest rank.
fn summary(ns: &[i128]) -> (f64, f64, f64, f64) {
    let mut v: Vec<i128> = ns.to_vec();
    v.sort_unstable();
    let rank = |q: f64| {
        let i = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i] as f64 / 1e6
    };
    (
        v[0] as f64 / 1e6,
        rank(0.50),
        rank(0.99),
        v[v.len() - 1] as f64 / 1e6,
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let commands = env_num("BENCH_COMMANDS", 50)?;
    let warmup = env_num("BENCH_WARMUP", 3)?;
    if commands == 0 {
        bail!("BENCH_COMMANDS must be at least 1");
    }
    let bin = fleet_e2e::fleetstream_bin()?;
    if !bin.is_absolute() {
        // The processes run in a temporary directory.
        bail!(
            "FLEETSTREAM_BIN={} must be an absolute path (e.g. $PWD/target/release/fleetstream)",
            bin.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("fleet-command-bench-")
        .tempdir()?;
    let d = dir.path();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port) = (free_port()?, free_port()?);
    let gateway = format!("http://127.0.0.1:{gw_port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let admin_key = fleet_e2e::new_admin_key();
    let up_cfg = write_file(
        d,
        "fleetstream.toml",
        &format!(
            "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n[api]\nadmin-api-key = \"{admin_key}\"\n# measured: request to start, without the approval step\napproval-required-commands = []\n"
        ),
    )?;
    let data = d.join("data");
    let up = Proc::start(
        "up",
        d,
        &[
            "up",
            "--data-dir",
            &path(&data)?,
            "--config",
            &path(&up_cfg)?,
        ],
        &[],
    )?;
    let token =
        fleet_e2e::create_tenant_and_token(&api, &admin_key, &format!("bench-{id}"), &[&up])
            .await?;
    let state_dir = d.join("agent-state");
    let mark_file = d.join("started.txt");
    let ag_cfg = write_file(
        d,
        "agent.toml",
        &format!(
            r#"state-dir = "{}"
collect-interval = "10s"
websocket = true
allowed-commands = ["run_script"]
inventory = false

[scripts]
mark = "date +%s%N >> {}"
"#,
            state_dir.display(),
            mark_file.display()
        ),
    )?;
    let agent_id =
        fleet_e2e::enroll_agent(d, &ag_cfg, &state_dir, &gateway, &token, &[&up]).await?;
    let agent = Proc::start(
        "agent",
        d,
        &["agent", "--config", &path(&ag_cfg)?],
        &[("FLEET_LOG_FORMAT", "json")],
    )?;
    let client = reqwest::Client::new();
    wait_for(
        "the agent's WebSocket to the gateway",
        Duration::from_secs(60),
        &[&up, &agent],
        || async {
            let m = client
                .get(format!("{gateway}/metrics"))
                .send()
                .await?
                .text()
                .await?;
            Ok(
                (fleet_e2e::prometheus_sum(&m, "fleet_gateway_ws_connections") >= 1.0)
                    .then_some(()),
            )
        },
    )
    .await?;

    let url = format!("{api}/api/v1/agents/{agent_id}/commands");
    let body = serde_json::json!({"command_type": "run_script", "args": {"script": "mark"}, "timeout_secs": 30});
    let mut script_ns = Vec::with_capacity(commands);
    let mut agent_ns = Vec::with_capacity(commands);
    let mut post_ns = Vec::with_capacity(commands);
    let run_started = Instant::now();
    for i in 0..warmup + commands {
        let before = marks(&mark_file)?.len();
        let t0 = now_nanos();
        let resp = client
            .post(&url)
            .bearer_auth(&admin_key)
            .json(&body)
            .send()
            .await?;
        let t_answer = now_nanos();
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::ACCEPTED {
            bail!("request command: {status} {text}");
        }
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let command_id = v["command_id"].as_str().context("command_id")?.to_owned();
        let started = wait_for(
            "the agent to start the command",
            Duration::from_secs(30),
            &[&up, &agent],
            || async {
                let m = marks(&mark_file)?;
                Ok(m.get(before).copied())
            },
        )
        .await?;
        // The next request only once this command ended.
        let logged = wait_for(
            "the agent to log the command's start and end",
            Duration::from_secs(30),
            &[&agent],
            || async {
                if agent_log_time(&agent, "Command ended.", &command_id)?.is_none() {
                    return Ok(None);
                }
                agent_log_time(&agent, "Running command.", &command_id)
            },
        )
        .await?;
        if i >= warmup {
            script_ns.push(started - t0);
            agent_ns.push(logged - t0);
            post_ns.push(t_answer - t0);
        }
    }
    let elapsed = run_started.elapsed();
    println!(
        "command latency, {commands} sequential run_script commands over the WebSocket \
         ({warmup} warm-up), `fleetstream up` (embedded) + agent process, binary {}:",
        bin.display()
    );
    for (name, v) in [
        ("POST answered (202)", &post_ns),
        ("agent start (\"Running command.\" log line)", &agent_ns),
        ("script start (date +%s%N in the script)", &script_ns),
    ] {
        let (min, p50, p99, max) = summary(v);
        println!(
            "  {name:<45} min {min:>7.2} ms  p50 {p50:>7.2} ms  p99 {p99:>7.2} ms  max {max:>7.2} ms"
        );
    }
    println!("  ({:.1} s for the whole run)", elapsed.as_secs_f64());
    drop(agent);
    drop(up);
    Ok(())
}
