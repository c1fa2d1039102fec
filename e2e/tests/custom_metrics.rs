//! Custom metrics end to end, as real processes: `fleetstream up` with its local agent
//! reading a textfile directory. A labelled series in a `*.prom` file reaches the API as
//! `custom.<name>` with its labels as the subject: in the agent's latest report, in the
//! history (a subject with commas inside the `metric` list), and in an alert raised by a
//! rule that names that subject.

use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

const SUBJECT: &str = r#"{queue="high",region="eu"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn textfile_metrics_reach_the_api_with_their_labels() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (gateway_port, api_port) = (free_port()?, free_port()?);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let rule_id = format!("e2e-custom-{id}");
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir(&textfiles)?;
    write_file(
        &textfiles,
        "queues.prom",
        "# HELP e2e_queue_depth Jobs waiting.\n\
         # TYPE e2e_queue_depth gauge\n\
         e2e_queue_depth{region=\"eu\",queue=\"high\"} 42\n\
         e2e_queue_depth{queue=\"low\",region=\"eu\"} 1\n\
         e2e_plain 7\n",
    )?;
    let state_dir = dir.path().join("agent-state");
    let config = format!(
        r#"[gateway]
listen = "127.0.0.1:{gateway_port}"

[projections]
listen = "127.0.0.1:{api_port}"

[processors]
[[processors.rules]]
id = "{rule_id}"
name = "E2E queue high too deep"
metric = "custom.e2e_queue_depth"
subject = '{SUBJECT}'
operator = ">="
critical = 40.0

[agent]
state-dir = "{state}"
collect-interval = "500ms"
heartbeat-interval = "1s"
textfile-directory = "{textfiles}"
"#,
        state = state_dir.display(),
        textfiles = textfiles.display(),
    );
    let cfg = write_file(dir.path(), "fleetstream.toml", &config)?;
    let (mut up, admin_key, agent_id) =
        fleet_e2e::up_with_local_agent(dir.path(), &cfg, &state_dir).await?;
    let procs = [&up];
    let client = api_client(&admin_key)?;
    let api = format!("http://127.0.0.1:{api_port}");
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");

    // The latest report carries the series under their canonical keys.
    let key = format!("e2e_queue_depth{SUBJECT}");
    let agent: Value = wait_for(
        "the custom metrics in the latest report",
        WAIT,
        &procs,
        || {
            let (client, url, key) = (&client, &agent_url, &key);
            async move {
                Ok(get_json(client, url)
                    .await?
                    .filter(|a| a["latest_report"]["custom"][key.as_str()].is_number()))
            }
        },
    )
    .await?;
    let custom = &agent["latest_report"]["custom"];
    assert_eq!(custom[key.as_str()], 42.0, "{custom}");
    assert_eq!(
        custom[r#"e2e_queue_depth{queue="low",region="eu"}"#], 1.0,
        "{custom}"
    );
    assert_eq!(custom["e2e_plain"], 7.0, "{custom}");

    // History: the labelled series (commas inside its subject) and the plain one.
    let series = format!("custom.e2e_queue_depth:{SUBJECT},custom.e2e_plain");
    let history =
        fleet_e2e::wait_for_history(&client, &agent_url, (&series, 2), WAIT, &procs).await?;
    let all = history["series"].as_array().context("series")?;
    assert_eq!(
        all[0]["metric"],
        format!("custom.e2e_queue_depth:{SUBJECT}"),
        "{history}"
    );
    assert_eq!(all[0]["buckets"][0]["max"], 42.0, "{history}");
    assert_eq!(all[1]["buckets"][0]["max"], 7.0, "{history}");

    // The rule on that one subject raised an alert for it (and not for queue="low").
    let alert = fleet_e2e::wait_for_alert(&client, &api, &agent_id, &rule_id, WAIT, &procs).await?;
    assert_eq!(alert["status"], "open", "{alert}");
    assert_eq!(alert["metric"], "custom.e2e_queue_depth", "{alert}");
    assert_eq!(alert["subject"], SUBJECT, "{alert}");
    assert_eq!(alert["value"], 42.0, "{alert}");
    up.stop()?;
    Ok(())
}
