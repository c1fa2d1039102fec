//! Remote configuration end to end, as real processes: `fleetstream up` with its local
//! agent. An operator PUTs a new heartbeat interval and watched service for the agent;
//! the gateway delivers it, the agent applies it (its reports watch the service, its
//! heartbeats carry the interval and the version) and the API shows it in sync.

use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_config_reaches_the_agent_and_the_api_shows_it_in_sync() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (gateway_port, api_port) = (free_port()?, free_port()?);
    let state_dir = dir.path().join("agent-state");
    let config = format!(
        r#"[gateway]
listen = "127.0.0.1:{gateway_port}"

[projections]
listen = "127.0.0.1:{api_port}"

[agent]
state-dir = "{state}"
collect-interval = "500ms"
heartbeat-interval = "1s"
"#,
        state = state_dir.display(),
    );
    let cfg = write_file(dir.path(), "fleetstream.toml", &config)?;
    let (mut up, admin_key, agent_id) =
        fleet_e2e::up_with_local_agent(dir.path(), &cfg, &state_dir).await?;
    let procs = [&up];
    let client = api_client(&admin_key)?;
    let api = format!("http://127.0.0.1:{api_port}");
    let config_url = format!("{api}/api/v1/agents/{agent_id}/config");
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    // The agent is in the read model before its configuration is set.
    wait_for("the agent in the read model", WAIT, &procs, || {
        let (client, url) = (&client, &agent_url);
        async move { get_json(client, url).await }
    })
    .await?;

    let put = client
        .put(&config_url)
        .json(&json!({
            "heartbeat_interval_secs": 2.0,
            "services": ["fleet-e2e-remote.service"]
        }))
        .send()
        .await?;
    let status = put.status();
    let written: Value = put.json().await?;
    assert!(status.is_success(), "{status}: {written}");
    let version = written["version"].as_i64().context("version")?;

    let view: Value = wait_for("the agent in sync", WAIT, &procs, || {
        let (client, url) = (&client, &config_url);
        async move {
            Ok(get_json(client, url)
                .await?
                .filter(|v| v["in_sync"] == true && v["applied_version"] == version))
        }
    })
    .await?;
    assert_eq!(view["desired"]["heartbeat_interval_secs"], 2.0, "{view}");
    assert_eq!(view["heartbeat_interval_secs"], 2.0, "{view}");
    assert_eq!(view["sources"]["services"]["scope"], "agent", "{view}");

    // Its reports now watch the service (unknown here: no such unit).
    let agent: Value = wait_for("a report watching the service", WAIT, &procs, || {
        let (client, url) = (&client, &agent_url);
        async move {
            Ok(get_json(client, url).await?.filter(|a| {
                a["latest_report"]["services"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["name"] == "fleet-e2e-remote.service"))
            }))
        }
    })
    .await?;
    assert_eq!(agent["config"]["in_sync"], true, "{}", agent["config"]);
    // Persisted by the agent.
    let stored: Value =
        serde_json::from_slice(&std::fs::read(state_dir.join("remote-config.json"))?)?;
    assert_eq!(stored["version"], version, "{stored}");
    up.stop()?;
    Ok(())
}
