//! The agent's WebSocket channel end to end, on Kafka + Postgres with real processes:
//! enrollment through the admin API, then heartbeats and metrics over the socket into the
//! read model and the time series (each report exactly once), and a remote command from
//! the API through the gateway's socket to the agent and its result back on
//! `fleet.commands.v1`.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{free_port, get_json, wait_for, write_file, Proc};
use fleet_schemas::{codec, CommandEvent, CommandEventKind, Record};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

async fn gateway_metrics(client: &reqwest::Client, gateway: &str) -> anyhow::Result<String> {
    Ok(client
        .get(format!("{gateway}/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

#[tokio::test]
async fn enrollment_heartbeats_metrics_and_a_command_over_the_websocket() -> anyhow::Result<()> {
    let brokers = fleet_e2e::kafka_brokers();
    fleet_e2e::require_service("Kafka", &brokers)?;
    let db = fleet_e2e::fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port) = (free_port()?, free_port()?);
    let gateway_url = format!("http://127.0.0.1:{gw_port}");
    let api = format!("http://127.0.0.1:{api_port}");
    let admin_key = fleet_e2e::new_admin_key();
    let log = format!("kafka://{brokers}");
    let gw_cfg = write_file(
        dir.path(),
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"required\"\nregistry = \"{db}\"\n[event-log]\nurl = \"{log}\"\n"
        ),
    )?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-ws-rm-{id}\"\ntimeseries-group = \"e2e-ws-ts-{id}\"\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"{gateway_url}\"\n# This test runs run_script at once: no second user approves it.\napproval-required-commands = []\n",
            dir.path().join("ts").display()
        ),
    )?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            r#"
state-dir = "{}"
collect-interval = "500ms"
batch-max-reports = 2
heartbeat-interval = "1s"
websocket = true
allowed-commands = ["run_script"]
inventory = false

[scripts]
greet = "echo hello-from-e2e; echo to-stderr >&2"
"#,
            state_dir.display()
        ),
    )?;
    let path = |p: &Path| p.to_str().map(str::to_owned).context("utf-8 path");
    let gateway = Proc::start(
        "gateway",
        dir.path(),
        &["gateway", "--config", &path(&gw_cfg)?],
        &[],
    )?;
    let projections = Proc::start(
        "projections",
        dir.path(),
        &["projections", "--config", &path(&pj_cfg)?],
        &[],
    )?;
    let token = fleet_e2e::create_tenant_and_token(
        &api,
        &admin_key,
        &format!("e2e-ws-{id}"),
        &[&gateway, &projections],
    )
    .await?;
    let agent_id = fleet_e2e::enroll_agent(
        dir.path(),
        &ag_cfg,
        &state_dir,
        &gateway_url,
        &token,
        &[&gateway, &projections],
    )
    .await?;
    let mut agent = Proc::start(
        "agent",
        dir.path(),
        &["agent", "--config", &path(&ag_cfg)?],
        &[("FLEET_LOG_FORMAT", "json")],
    )?;
    let procs = [&gateway, &projections, &agent];
    // Sends the admin key: the query API wants one (the gateway's /metrics ignores it).
    let client = fleet_e2e::api_client(&admin_key)?;

    // The socket is up and carries heartbeats and metrics.
    wait_for(
        "the agent's socket, heartbeats and metrics frames",
        WAIT,
        &procs,
        || async {
            let m = gateway_metrics(&client, &gateway_url).await?;
            let connected = fleet_e2e::prometheus_sum(&m, "fleet_gateway_ws_connections");
            let hb = fleet_e2e::prometheus_sum_labeled(
                &m,
                "fleet_gateway_ws_frames_total",
                &[("type", "heartbeat"), ("outcome", "ack")],
            );
            let reports = fleet_e2e::prometheus_sum_labeled(
                &m,
                "fleet_gateway_ws_frames_total",
                &[("type", "metrics"), ("outcome", "ack")],
            );
            Ok((connected == 1.0 && hb >= 2.0 && reports >= 2.0).then_some(()))
        },
    )
    .await?;
    // ... and what it carried reaches the read model.
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    let since = fleet_e2e::now_micros();
    let row = wait_for(
        "the read model to show reports sent over the socket",
        WAIT,
        &procs,
        || async {
            let a = get_json(&client, &agent_url).await?;
            Ok(a.filter(|a| a["last_metrics_at"].as_i64().is_some_and(|t| t > since)))
        },
    )
    .await?;
    assert!(
        row["cpu_percent"].as_f64().is_some(),
        "latest metrics: {row}"
    );

    // A remote command: API → fleet.commands.v1 → the gateway holding the socket → the
    // agent runs the configured script → result back over the socket.
    let resp = client
        .post(format!("{agent_url}/commands"))
        .bearer_auth(&admin_key)
        .json(&serde_json::json!({"command_type": "run_script", "args": {"script": "greet"}, "timeout_secs": 20}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::ACCEPTED,
        "request command: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let accepted: Value = resp.json().await?;
    let command_id = accepted["command_id"]
        .as_str()
        .context("command id")?
        .to_owned();
    let log_handle = fleet_event_log::open(&log, &Default::default()).await?;
    let events = wait_for(
        "the command's result on fleet.commands.v1",
        WAIT,
        &procs,
        || async {
            let mut mine = Vec::new();
            fleet_consumer::log::read_to_end(
                log_handle.as_ref(),
                &fleet_schemas::Wire::plain(),
                CommandEvent::TOPIC,
                |r| {
                    if let Ok(ev) = codec::Wire::plain().decode_known::<CommandEvent>(&r.value) {
                        if ev.command_id == command_id {
                            mine.push(ev);
                        }
                    }
                },
            )
            .await?;
            Ok(mine
                .iter()
                .any(|e| e.kind == CommandEventKind::Completed)
                .then_some(mine))
        },
    )
    .await?;
    let kinds: Vec<CommandEventKind> = events.iter().map(|e| e.kind).collect();
    assert!(kinds.contains(&CommandEventKind::Requested), "{kinds:?}");
    assert!(
        kinds.contains(&CommandEventKind::Dispatched),
        "the gateway holding the socket dispatched it: {kinds:?}"
    );
    let done: Vec<&CommandEvent> = events
        .iter()
        .filter(|e| e.kind == CommandEventKind::Completed)
        .collect();
    assert_eq!(done.len(), 1, "one result: {done:?}");
    let done = done[0];
    assert_eq!(done.status.as_deref(), Some("succeeded"), "{done:?}");
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.stdout.as_deref(), Some("hello-from-e2e\n"));
    assert_eq!(done.stderr.as_deref(), Some("to-stderr\n"));
    assert_eq!(done.agent_id, agent_id);
    assert_eq!(done.command_type, "run_script");
    let m = gateway_metrics(&client, &gateway_url).await?;
    assert!(
        fleet_e2e::prometheus_sum_labeled(
            &m,
            "fleet_gateway_ws_frames_total",
            &[("type", "command_result"), ("outcome", "ack")]
        ) >= 1.0,
        "the result came over the socket"
    );

    // Every report the agent collected is in the time series exactly once.
    agent.stop()?;
    let stats = fleet_e2e::last_json_line(&agent, "Agent stopped")?;
    let collected = stats["fields"]["collected"].as_u64().context("collected")?;
    assert_eq!(stats["fields"]["spooled"].as_u64(), Some(0), "{stats}");
    assert_eq!(stats["fields"]["lost"].as_u64(), Some(0), "{stats}");
    let history_url = format!("{agent_url}/metrics?metric=cpu.percent&start=1h&interval=1h");
    let count = fleet_e2e::history_sample_count;
    let history = wait_for(
        "every collected report in the time series",
        WAIT,
        &[&projections],
        || async {
            Ok(get_json(&client, &history_url)
                .await?
                .filter(|h| count(h) >= collected))
        },
    )
    .await?;
    assert_eq!(count(&history), collected, "each report once");
    Ok(())
}
