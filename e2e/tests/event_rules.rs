//! Event rules end to end. Under `fleetstream up`: an enrolled agent's credential posts a
//! `service_failed` event to the gateway as the agent does; an event rule made through
//! the API raises one alert, visible in the API; the same event sent again raises nothing
//! more; a `service_recovered` event resolves it. Distributed on Kafka: a static event rule
//! of `fleetstream processors` raises once across a SIGKILL of the processors and the
//! events sent again, and resolves on the recovery.

use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file, Proc};
use fleet_event_log::EventLog;
use fleet_schemas::{codec, AlertEvent, AlertEventKind, Record};
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
    let rule_id = fleet_e2e::create_rule(
        &api,
        &up.api,
        &tenant_id,
        &json!({
            "name": "nginx failed",
            "event": {
                "kind": "service_failed",
                "attributes": {"service": "nginx"},
                "subject_attribute": "service",
                "recovery_kinds": ["service_recovered"],
                "alert_severity": "critical"
            }
        }),
    )
    .await?;
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

/// The alert events of `rule_id` on the log.
async fn alert_events(log: &dyn EventLog, rule_id: &str) -> anyhow::Result<Vec<AlertEvent>> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(log, &fleet_schemas::Wire::plain(), AlertEvent::TOPIC, |r| {
        if let Ok(a) = codec::Wire::plain().decode_known::<AlertEvent>(&r.value) {
            if a.rule_id == rule_id {
                out.push(a);
            }
        }
    })
    .await?;
    Ok(out)
}

/// `/readyz` of `base` answers 200.
async fn ready(client: &reqwest::Client, base: &str) -> bool {
    matches!(
        client.get(format!("{base}/readyz")).send().await,
        Ok(r) if r.status().is_success()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_a_static_event_rule_raises_once_across_a_processors_sigkill_and_resolves(
) -> anyhow::Result<()> {
    let kafka = fleet_e2e::PrivateKafka::start().await?;
    let log_url = kafka.url();
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let id = uuid::Uuid::new_v4().simple().to_string();
    let gw_port = free_port()?;
    let gateway = format!("http://127.0.0.1:{gw_port}");
    let gw_cfg = write_file(
        d,
        "gateway.toml",
        &format!(
            "listen = \"127.0.0.1:{gw_port}\"\nauth = \"off\"\ndefault-tenant = \"e2e-ev-{id}\"\nrate-limit-per-second = 0\n[event-log]\nurl = \"{log_url}\"\n"
        ),
    )?;
    let rule_id = format!("e2e-nginx-{id}");
    let pr_port = free_port()?;
    let processors_url = format!("http://127.0.0.1:{pr_port}");
    let pr_cfg = write_file(
        d,
        "processors.toml",
        &format!(
            r#"listen = "127.0.0.1:{pr_port}"

[event-log]
url = "{log_url}"
session-timeout = "6s"

[alert-evaluator]
group = "e2e-ev-alerts-{id}"

[ticketer]
group = "e2e-ev-tickets-{id}"

[liveness]
group = "e2e-ev-liveness-{id}"

[command-timeouts]
group = "e2e-ev-cmd-{id}"

[[rules]]
id = "{rule_id}"
name = "nginx failed"
event = {{ kind = "service_failed", attributes = {{ service = "nginx" }}, subject-attribute = "service", recovery-kinds = ["service_recovered"] }}
"#
        ),
    )?;
    let utf8 = |p: &std::path::Path| p.to_str().map(str::to_owned).context("utf-8 path");
    let gw = Proc::start("gateway", d, &["gateway", "--config", &utf8(&gw_cfg)?], &[])?;
    let processors_args = ["processors", "--config", &utf8(&pr_cfg)?];
    let mut pr = Proc::start("processors", d, &processors_args, &[])?;
    let client = reqwest::Client::new();
    wait_for("the processors to be ready", WAIT, &[&gw, &pr], || async {
        Ok(ready(&client, &processors_url).await.then_some(()))
    })
    .await?;
    let log = fleet_event_log::open(&log_url, &Default::default()).await?;

    let agent = format!("e2e-ev-agent-{id}");
    // With `auth = "off"` the gateway takes an agent's events without a credential.
    let post = |event: Value| {
        let (client, gateway, agent) = (client.clone(), gateway.clone(), agent.clone());
        async move {
            let resp = client
                .post(format!("{gateway}/api/v1/agents/{agent}/events"))
                .json(&json!({ "events": [event] }))
                .send()
                .await?;
            anyhow::ensure!(
                resp.status() == reqwest::StatusCode::ACCEPTED,
                "post event: {} {}",
                resp.status(),
                resp.text().await.unwrap_or_default()
            );
            anyhow::Ok(())
        }
    };
    let now = chrono::Utc::now();
    let at = |secs_ago: i64| (now - chrono::Duration::seconds(secs_ago)).to_rfc3339();
    let failed = service_event("service_failed", "critical", &at(30));
    post(failed.clone()).await?;
    let raised = wait_for("the RAISED on Kafka", WAIT, &[&gw, &pr], || async {
        let all = alert_events(log.as_ref(), &rule_id).await?;
        Ok((!all.is_empty()).then_some(all))
    })
    .await?;
    assert_eq!(raised.len(), 1, "{raised:?}");
    assert_eq!(raised[0].kind, AlertEventKind::Raised);
    assert_eq!(raised[0].agent_id, agent);
    assert_eq!(raised[0].subject.as_deref(), Some("nginx"));

    // SIGKILL, a new process, and the agent sending the event again plus one more
    // failure: nothing raised twice.
    pr.kill()?;
    let pr = Proc::start("processors-2", d, &processors_args, &[])?;
    wait_for(
        "the restarted processors to be ready",
        WAIT,
        &[&gw, &pr],
        || async { Ok(ready(&client, &processors_url).await.then_some(())) },
    )
    .await?;
    post(failed).await?;
    post(service_event("service_failed", "critical", &at(20))).await?;
    // Then the recovery: the one alert resolves, and nothing else was written.
    let mut recovered = service_event("service_recovered", "info", &at(10));
    recovered["attributes"]["current"] = json!("running");
    post(recovered).await?;
    let all = wait_for("the RESOLVED on Kafka", WAIT, &[&gw, &pr], || async {
        let all = alert_events(log.as_ref(), &rule_id).await?;
        Ok(all
            .iter()
            .any(|a| a.kind == AlertEventKind::Resolved)
            .then_some(all))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_now = alert_events(log.as_ref(), &rule_id).await?;
    assert_eq!(all_now.len(), 2, "{all_now:?}");
    assert_eq!(
        all.iter()
            .map(|a| (a.alert_id.clone(), a.kind))
            .collect::<Vec<_>>(),
        [
            (raised[0].alert_id.clone(), AlertEventKind::Raised),
            (raised[0].alert_id.clone(), AlertEventKind::Resolved)
        ]
    );
    Ok(())
}
