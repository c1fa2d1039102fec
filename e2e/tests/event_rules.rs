//! Event rules end to end under `fleetstream up`: an enrolled agent's credential posts a
//! `service_failed` event to the gateway as the agent does; an event rule made through
//! the API raises one alert, visible in the API; the same event sent again raises nothing
//! more; a `service_recovered` event resolves it.

use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{api_client, get_json, wait_for, write_file, Proc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// Posts one event as the agent would (`POST /api/v1/agents/{id}/events`, its
/// credential as bearer).
async fn post_event(
    client: &reqwest::Client,
    gateway: &str,
    agent_id: &str,
    credential: &str,
    event: Value,
) -> anyhow::Result<()> {
    let resp = client
        .post(format!("{gateway}/api/v1/agents/{agent_id}/events"))
        .bearer_auth(credential)
        .json(&json!({ "events": [event] }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::ACCEPTED,
        "post event: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    Ok(())
}

/// The agent's alerts of `rule_id`.
async fn alerts_of(
    api: &reqwest::Client,
    url: &str,
    agent_id: &str,
    rule_id: &str,
) -> anyhow::Result<Vec<Value>> {
    let a = get_json(api, &format!("{url}/api/v1/alerts?agent_id={agent_id}"))
        .await?
        .unwrap_or_default();
    Ok(a["alerts"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|x| x["rule_id"] == rule_id)
                .cloned()
                .collect()
        })
        .unwrap_or_default())
}

fn service_event(kind: &str, severity: &str, at: &str) -> Value {
    json!({
        "occurred_at": at,
        "kind": kind,
        "severity": severity,
        "message": format!("nginx: {kind}"),
        "attributes": {"service": "nginx", "previous": "running", "current": "failed"}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_event_raises_an_alert_visible_in_the_api_and_its_recovery_resolves_it(
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-event-rules-")
        .tempdir()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let up = fleet_e2e::LocalUp::start(dir.path(), "").await?;
    let procs: [&Proc; 1] = [&up.proc];
    let token = fleet_e2e::create_tenant_and_token(
        &up.api,
        &up.admin_key,
        &format!("e2e-events-{id}"),
        &procs,
    )
    .await?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "server-url = \"{}\"\nstate-dir = \"{}\"\n",
            up.gateway,
            state_dir.display()
        ),
    )?;
    let agent_id =
        fleet_e2e::enroll_agent(dir.path(), &ag_cfg, &state_dir, &up.gateway, &token, &procs)
            .await?;
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant_id = creds["tenant_id"].as_str().context("tenant_id")?.to_owned();
    let credential = creds["credential"]
        .as_str()
        .context("credential")?
        .to_owned();

    // The event rule, through the API.
    let api = api_client(&up.admin_key)?;
    let resp = api
        .post(format!("{}/api/v1/tenants/{tenant_id}/rules", up.api))
        .json(&json!({
            "name": "nginx failed",
            "event": {
                "kind": "service_failed",
                "attributes": {"service": "nginx"},
                "subject_attribute": "service",
                "recovery_kinds": ["service_recovered"],
                "alert_severity": "critical"
            }
        }))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::CREATED,
        "create rule: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let rule: Value = resp.json().await?;
    let rule_id = rule["rule_id"].as_str().context("rule_id")?.to_owned();
    // Once projected, the evaluator (which reads the rules topic first) has it too.
    let rules_url = format!("{}/api/v1/tenants/{tenant_id}/rules", up.api);
    wait_for("the rule to be listed", WAIT, &procs, || async {
        let list = get_json(&api, &rules_url).await?.unwrap_or_default();
        Ok(list["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["rule_id"] == rule_id.as_str()))
            .then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let client = reqwest::Client::new();
    let now = chrono::Utc::now();
    let failed_at = (now - chrono::Duration::seconds(30)).to_rfc3339();
    let failed = service_event("service_failed", "critical", &failed_at);
    post_event(&client, &up.gateway, &agent_id, &credential, failed.clone()).await?;
    let alert = wait_for("the event rule's alert, open", WAIT, &procs, || async {
        let mine = alerts_of(&api, &up.api, &agent_id, &rule_id).await?;
        Ok(mine.into_iter().find(|a| a["status"] == "open"))
    })
    .await?;
    assert_eq!(alert["metric"], "event.service_failed", "{alert}");
    assert_eq!(alert["subject"], "nginx", "{alert}");
    assert_eq!(alert["severity"], "critical", "{alert}");

    // The agent retries the same event: still one alert.
    post_event(&client, &up.gateway, &agent_id, &credential, failed).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mine = alerts_of(&api, &up.api, &agent_id, &rule_id).await?;
    assert_eq!(mine.len(), 1, "{mine:?}");

    // Recovered: the alert resolves.
    let recovered_at = (now - chrono::Duration::seconds(10)).to_rfc3339();
    let mut recovered = service_event("service_recovered", "info", &recovered_at);
    recovered["attributes"]["previous"] = json!("failed");
    recovered["attributes"]["current"] = json!("running");
    post_event(&client, &up.gateway, &agent_id, &credential, recovered).await?;
    let resolved = wait_for("the alert, resolved", WAIT, &procs, || async {
        let mine = alerts_of(&api, &up.api, &agent_id, &rule_id).await?;
        Ok(mine
            .into_iter()
            .find(|a| a["status"] == "resolved" && a["alert_id"] == alert["alert_id"]))
    })
    .await?;
    assert!(resolved["resolved_at"].as_i64().is_some(), "{resolved}");
    let mine = alerts_of(&api, &up.api, &agent_id, &rule_id).await?;
    assert_eq!(mine.len(), 1, "one incident: {mine:?}");
    Ok(())
}
