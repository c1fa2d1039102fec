//! A command's live output end to end: `fleetstream up` with its local agent, a script
//! that prints lines with pauses, and an SSE client on `GET /api/v1/commands/{id}/stream`
//! that sees the lines arrive while the script runs, then the result, then the end of the
//! stream; the same chunks are paged by `GET /api/v1/commands/{id}/output`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);
/// The script's pause between lines.
const PAUSE_SECS: u64 = 2;

/// One Server-Sent Event and when it was read.
#[derive(Debug)]
struct Received {
    event: String,
    id: Option<String>,
    data: Value,
    at: Instant,
}

/// Reads the whole event stream (until the server closes it), noting when each event came.
async fn read_events(mut resp: reqwest::Response) -> anyhow::Result<Vec<Received>> {
    let mut buf = String::new();
    let mut out = Vec::new();
    while let Some(bytes) = tokio::time::timeout(WAIT, resp.chunk())
        .await
        .context("the stream went quiet")??
    {
        buf.push_str(std::str::from_utf8(&bytes)?);
        while let Some(i) = buf.find("\n\n") {
            let block: String = buf.drain(..i + 2).collect();
            let (mut event, mut id, mut data) = (None, None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    event = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let Some(event) = event else { continue }; // a keep-alive comment
            out.push(Received {
                event,
                id,
                data: serde_json::from_str(&data)?,
                at: Instant::now(),
            });
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_scripts_lines_stream_to_the_client_before_its_result() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (gateway_port, api_port) = (free_port()?, free_port()?);
    let state_dir = dir.path().join("agent-state");
    let config = format!(
        r#"[gateway]
listen = "127.0.0.1:{gateway_port}"

[projections]
listen = "127.0.0.1:{api_port}"

[api]
# No second user approves the script here.
approval-required-commands = []

[agent]
state-dir = "{state}"
collect-interval = "1s"
heartbeat-interval = "1s"
websocket = true
allowed-commands = ["run_script"]
inventory = false

[agent.scripts]
lines = "for i in 1 2 3; do echo line-$i; sleep {PAUSE_SECS}; done; echo done >&2"
"#,
        state = state_dir.display(),
    );
    let cfg = write_file(dir.path(), "fleetstream.toml", &config)?;
    let (up, admin_key, agent_id) =
        fleet_e2e::up_with_local_agent(dir.path(), &cfg, &state_dir).await?;
    let procs = [&up];
    let client = api_client(&admin_key)?;
    let api = format!("http://127.0.0.1:{api_port}");
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");
    wait_for("the agent in the read model", WAIT, &procs, || async {
        get_json(&client, &agent_url).await
    })
    .await?;

    let resp = client
        .post(format!("{agent_url}/commands"))
        .json(&serde_json::json!({"command_type": "run_script", "args": {"script": "lines"}, "timeout_secs": 60}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::ACCEPTED,
        "request command: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let accepted: Value = resp.json().await?;
    let command_id = accepted["command_id"].as_str().context("command id")?;

    // Open the stream as soon as the command is projected (404 until then).
    let stream_url = format!("{api}/api/v1/commands/{command_id}/stream");
    let resp = wait_for("the command's stream", WAIT, &procs, || async {
        let r = client.get(&stream_url).send().await?;
        Ok((r.status() == reqwest::StatusCode::OK).then_some(r))
    })
    .await?;
    let events = read_events(resp).await?;
    let kinds: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    let result = events.last().context("events")?;
    assert_eq!(
        result.event, "result",
        "the stream ends with the result: {kinds:?}"
    );
    assert_eq!(result.data["status"], "succeeded", "{:?}", result.data);
    assert_eq!(
        kinds.iter().filter(|k| **k == "result").count(),
        1,
        "{kinds:?}"
    );
    let outputs: Vec<&Received> = events.iter().filter(|e| e.event == "output").collect();
    let stdout: String = outputs
        .iter()
        .filter(|e| e.data["stream"] == "stdout")
        .filter_map(|e| e.data["chunk"].as_str())
        .collect();
    assert_eq!(stdout, "line-1\nline-2\nline-3\n", "{events:?}");
    assert!(
        outputs
            .iter()
            .any(|e| e.data["stream"] == "stderr" && e.data["chunk"] == "done\n"),
        "{events:?}"
    );
    let ids: Vec<i64> = outputs
        .iter()
        .map(|e| e.id.as_deref().and_then(|i| i.parse().ok()))
        .collect::<Option<_>>()
        .context("every output event has its sequence as id")?;
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    // Live: the first line came while the script still slept, well before the result.
    let first = outputs
        .iter()
        .find(|e| {
            e.data["chunk"]
                .as_str()
                .is_some_and(|c| c.contains("line-1"))
        })
        .context("line-1")?;
    let ahead = result.at.duration_since(first.at);
    assert!(
        ahead >= Duration::from_secs(PAUSE_SECS),
        "line-1 came only {ahead:?} before the result: {events:?}"
    );

    // The same chunks, paged; resuming after the first gives the rest.
    let output: Value = get_json(
        &client,
        &format!("{api}/api/v1/commands/{command_id}/output?limit=1000"),
    )
    .await?
    .context("output")?;
    let paged: Vec<i64> = output["chunks"]
        .as_array()
        .context("chunks")?
        .iter()
        .filter_map(|c| c["sequence"].as_i64())
        .collect();
    assert!(ids.iter().all(|i| paged.contains(i)), "{paged:?} {ids:?}");
    let resumed = client
        .get(&stream_url)
        .header("last-event-id", ids[0].to_string())
        .send()
        .await?;
    let again = read_events(resumed).await?;
    let again_ids: Vec<&str> = again.iter().filter_map(|e| e.id.as_deref()).collect();
    let expected: Vec<String> = paged.iter().skip(1).map(|i| i.to_string()).collect();
    assert_eq!(again_ids, expected, "after Last-Event-ID");
    assert_eq!(again.last().map(|e| e.event.as_str()), Some("result"));
    drop(up);
    Ok(())
}
