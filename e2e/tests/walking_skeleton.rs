//! The walking skeleton end to end, as real processes: an agent reports this machine
//! through the gateway; the API shows the agent, its latest metrics and history; a rule
//! with a low threshold raises an alert, and raising the threshold back resolves it.
//!
//! Runs twice: `fleetstream up` on the embedded defaults, and every role as its own
//! process on Kafka + Postgres.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file, Proc};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

fn rules_toml(rule_id: &str, threshold: f64) -> String {
    format!(
        r#"
[[rules]]
id = "{rule_id}"
name = "E2E CPU at or above {threshold}"
metric = "cpu.percent"
operator = ">="
critical = {threshold:.1}
"#
    )
}

fn agent_toml(state_dir: &Path) -> String {
    format!(
        r#"
state-dir = "{}"
collect-interval = "500ms"
batch-max-reports = 2
heartbeat-interval = "1s"
"#,
        state_dir.display()
    )
}

/// The enrolled agent's id and credential, from the credentials file the agent wrote.
async fn enrolled_agent_id(state_dir: &Path, procs: &[&Proc]) -> anyhow::Result<(String, String)> {
    let path = state_dir.join("credentials.json");
    wait_for("the agent to enroll", WAIT, procs, || async {
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(None);
        };
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["agent_id"]
            .as_str()
            .zip(v["credential"].as_str())
            .map(|(a, c)| (a.to_owned(), c.to_owned())))
    })
    .await
}

struct Run {
    agent_id: String,
    credential: String,
    rule_id: String,
    gateway: String,
    api: String,
    /// The admin key: every query API call sends it.
    admin_key: String,
}

/// Embedded: one `fleetstream up` process with a local agent.
struct Embedded {
    dir: tempfile::TempDir,
    run: Run,
    gateway_port: u16,
    api_port: u16,
    proc: Option<Proc>,
}

impl Embedded {
    fn config(&self, threshold: f64) -> String {
        format!(
            "[gateway]\nlisten = \"127.0.0.1:{}\"\n\n[projections]\nlisten = \"127.0.0.1:{}\"\n\n[processors]\n{}\n[agent]\n{}",
            self.gateway_port,
            self.api_port,
            rules_toml(&self.run.rule_id, threshold).replace("[[rules]]", "[[processors.rules]]"),
            agent_toml(&self.dir.path().join("agent-state")),
        )
    }

    fn start(&mut self, threshold: f64) -> anyhow::Result<()> {
        let cfg = write_file(self.dir.path(), "fleetstream.toml", &self.config(threshold))?;
        let data = self.dir.path().join("data");
        let args = [
            "up",
            "--data-dir",
            data.to_str().context("utf-8")?,
            "--config",
            cfg.to_str().context("utf-8")?,
            "--with-local-agent",
        ];
        self.proc = Some(Proc::start("up", self.dir.path(), &args, &[])?);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_walking_skeleton() -> anyhow::Result<()> {
    let (gateway_port, api_port) = (free_port()?, free_port()?);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut e = Embedded {
        dir: tempfile::tempdir()?,
        run: Run {
            agent_id: String::new(),
            credential: String::new(),
            rule_id: format!("e2e-rule-{id}"),
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            admin_key: String::new(),
        },
        gateway_port,
        api_port,
        proc: None,
    };
    e.start(0.0)?;
    let procs = [e.proc.as_ref().context("started")?];
    // `up` makes an admin key once and keeps it in the data directory.
    e.run.admin_key = fleet_e2e::up_admin_key(&e.dir.path().join("data"), &procs).await?;
    // `up` enrolls its local agent through the gateway like any other agent.
    (e.run.agent_id, e.run.credential) =
        enrolled_agent_id(&e.dir.path().join("agent-state"), &procs).await?;
    check_agent_metrics_and_alert(&e.run, &procs).await?;
    // Raise the threshold back: stop, reconfigure, start on the same data directory.
    e.proc.as_mut().context("started")?.stop()?;
    e.start(1000.0)?;
    let procs = [e.proc.as_ref().context("started")?];
    assert_eq!(
        fleet_e2e::up_admin_key(&e.dir.path().join("data"), &procs).await?,
        e.run.admin_key,
        "a restart on the same data directory keeps the admin key"
    );
    check_alert_resolved(&e.run, &procs).await?;
    e.proc.as_mut().context("started")?.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_walking_skeleton_on_kafka_and_postgres() -> anyhow::Result<()> {
    let brokers = fleet_e2e::kafka_brokers();
    fleet_e2e::require_service("Kafka", &brokers)?;
    let db = fleet_e2e::fresh_database().await?;
    let dir = tempfile::tempdir()?;
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (gw_port, api_port, pr_port) = (free_port()?, free_port()?, free_port()?);
    let mut run = Run {
        agent_id: String::new(),
        credential: String::new(),
        rule_id: format!("e2e-rule-{id}"),
        gateway: format!("http://127.0.0.1:{gw_port}"),
        api: format!("http://127.0.0.1:{api_port}"),
        admin_key: fleet_e2e::new_admin_key(),
    };
    let admin_key = run.admin_key.clone();
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
            "listen = \"127.0.0.1:{api_port}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-rm-{id}\"\ntimeseries-group = \"e2e-ts-{id}\"\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[api]\nadmin-api-key = \"{admin_key}\"\ngateway-url = \"http://127.0.0.1:{gw_port}\"\n",
            dir.path().join("ts").display()
        ),
    )?;
    let processors_cfg = |threshold: f64| {
        format!(
            "listen = \"127.0.0.1:{pr_port}\"\n{}\n[event-log]\nurl = \"{log}\"\nsession-timeout = \"6000ms\"\n[alert-evaluator]\ngroup = \"e2e-alerts-{id}\"\n[ticketer]\ngroup = \"e2e-tickets-{id}\"\n[liveness]\ngroup = \"e2e-liveness-{id}\"\n[command-timeouts]\ngroup = \"e2e-timeouts-{id}\"",
            rules_toml(&run.rule_id, threshold)
        )
    };
    let pr_cfg = write_file(dir.path(), "processors.toml", &processors_cfg(0.0))?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(dir.path(), "agent.toml", &agent_toml(&state_dir))?;
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
    let mut processors = Proc::start(
        "processors",
        dir.path(),
        &["processors", "--config", &path(&pr_cfg)?],
        &[],
    )?;
    // Enrollment: an administrator makes a tenant and a one-time token; the agent redeems it.
    let token = fleet_e2e::create_tenant_and_token(
        &run.api,
        &admin_key,
        &format!("e2e-{id}"),
        &[&gateway, &projections],
    )
    .await?;
    let enroll_args = [
        "agent",
        "enroll",
        "--config",
        &path(&ag_cfg)?,
        "--server",
        &run.gateway,
        "--token",
        &token,
    ];
    let enroll = wait_for(
        "the gateway to enroll the agent",
        WAIT,
        &[&gateway],
        || async {
            let out = fleet_e2e::run_to_end(dir.path(), &enroll_args)?;
            // Until the gateway listens, enrollment cannot connect: try again.
            Ok((!out.output.to_lowercase().contains("connect")).then_some(out))
        },
    )
    .await?;
    anyhow::ensure!(enroll.success, "enroll failed: {}", enroll.output);
    (run.agent_id, run.credential) = enrolled_agent_id(&state_dir, &[&gateway]).await?;
    let again = fleet_e2e::run_to_end(dir.path(), &enroll_args)?;
    assert!(!again.success, "a token is single-use");
    assert!(
        again.output.contains("already used"),
        "clear message for a used token: {}",
        again.output
    );
    let mut agent = Proc::start(
        "agent",
        dir.path(),
        &["agent", "--config", &path(&ag_cfg)?],
        &[("FLEET_LOG_FORMAT", "json")],
    )?;
    check_agent_metrics_and_alert(&run, &[&gateway, &projections, &processors, &agent]).await?;
    processors.stop()?;
    write_file(dir.path(), "processors.toml", &processors_cfg(1000.0))?;
    let processors = Proc::start(
        "processors",
        dir.path(),
        &["processors", "--config", &path(&pr_cfg)?],
        &[],
    )?;
    check_alert_resolved(&run, &[&gateway, &projections, &processors, &agent]).await?;
    check_api_rule_ack_and_ticket(
        &run,
        &admin_key,
        &state_dir,
        &[&gateway, &projections, &processors, &agent],
    )
    .await?;

    // A gateway outage in the middle of the run: the agent keeps its reports in the spool
    // and sends them when the gateway is back; every report it collected ends up in the
    // time series, once.
    let mut gateway = gateway;
    gateway.stop()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let gateway = Proc::start(
        "gateway",
        dir.path(),
        &["gateway", "--config", &path(&gw_cfg)?],
        &[],
    )?;
    let client = api_client(&run.admin_key)?;
    let agent_url = format!("{}/api/v1/agents/{}", run.api, run.agent_id);
    let restarted_at = fleet_e2e::now_micros();
    wait_for(
        "a report collected after the gateway came back",
        WAIT,
        &[&gateway, &agent],
        || async {
            let a = get_json(&client, &agent_url).await?;
            Ok(a.and_then(|a| a["last_metrics_at"].as_i64())
                .filter(|&t| t > restarted_at)
                .map(|_| ()))
        },
    )
    .await?;
    agent.stop()?;
    let stats = fleet_e2e::last_json_line(&agent, "Agent stopped")?;
    let collected = stats["fields"]["collected"].as_u64().context("collected")?;
    let still_spooled = stats["fields"]["spooled"].as_u64().context("spooled")?;
    assert_eq!(
        still_spooled, 0,
        "the agent delivered its spool before stopping: {stats}"
    );
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
    assert_eq!(
        count(&history),
        collected,
        "every report collected arrives once, none twice"
    );
    Ok(())
}

async fn check_agent_metrics_and_alert(run: &Run, procs: &[&Proc]) -> anyhow::Result<()> {
    let client = api_client(&run.admin_key)?;
    let agent_url = format!("{}/api/v1/agents/{}", run.api, run.agent_id);

    // The agent appears with its latest metrics.
    let agent: Value = wait_for("the agent to appear with metrics", WAIT, procs, || async {
        Ok(get_json(&client, &agent_url)
            .await?
            .filter(|a| a["cpu_percent"].is_number()))
    })
    .await?;
    assert_eq!(
        agent["enrollment"], "enrolled",
        "AgentRegistered reached the read model: {agent}"
    );
    assert!(
        agent["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{agent}"
    );
    let cpu = agent["cpu_percent"].as_f64().context("cpu_percent")?;
    assert!((0.0..=100.0).contains(&cpu), "cpu_percent {cpu}");
    assert!(
        agent["latest_report"]["memory_total_bytes"]
            .as_i64()
            .unwrap_or(0)
            > 0,
        "{agent}"
    );
    // The agent's start event reached the timeline (fleet.events.v1 → read model).
    let events_url = format!("{agent_url}/events?kind=agent_started");
    let events: Value = wait_for(
        "the agent_started event in the timeline",
        WAIT,
        procs,
        || async {
            Ok(get_json(&client, &events_url)
                .await?
                .filter(|v| v["events"].as_array().is_some_and(|e| !e.is_empty())))
        },
    )
    .await?;
    let started = &events["events"][0];
    assert_eq!(started["agent_id"], run.agent_id.as_str(), "{events}");
    assert_eq!(started["severity"], "INFO", "{events}");
    let list_url = format!("{}/api/v1/agents", run.api);
    let list = get_json(&client, &list_url).await?.context("agent list")?;
    let row = list["agents"]
        .as_array()
        .context("agents")?
        .iter()
        .find(|a| a["agent_id"] == run.agent_id.as_str())
        .with_context(|| format!("agent missing from the list: {list}"))?;
    assert_eq!(
        row["status"], "online",
        "a reporting agent is online: {row}"
    );
    assert!(row["tags"].is_array(), "tags: {row}");

    // The query API wants a key: none, or one it does not know, is 401.
    check_unauthorized(run, &[&list_url, &agent_url]).await?;
    let me = get_json(&client, &format!("{}/api/v1/me", run.api))
        .await?
        .context("me")?;
    assert_eq!(me["user_id"], "admin", "the admin key is the admin: {me}");
    assert_eq!(me["role"], "admin", "{me}");

    // History: several samples of two metrics in buckets.
    let history_url =
        format!("{agent_url}/metrics?metric=cpu.percent,memory.percent&start=10m&interval=1m");
    let history: Value = wait_for("two samples of history", WAIT, procs, || async {
        let h = get_json(&client, &history_url).await?;
        Ok(h.filter(|h| {
            h["series"].as_array().is_some_and(|s| {
                s.len() == 2
                    && s.iter().all(|s| {
                        s["buckets"].as_array().is_some_and(|b| {
                            b.iter()
                                .map(|b| b["count"].as_u64().unwrap_or(0))
                                .sum::<u64>()
                                >= 2
                        })
                    })
            })
        }))
    })
    .await?;
    for s in history["series"].as_array().context("series")? {
        for b in s["buckets"].as_array().context("buckets")? {
            let (min, max, avg) = (b["min"].as_f64(), b["max"].as_f64(), b["avg"].as_f64());
            assert!(min <= avg && avg <= max, "bucket out of order: {b}");
        }
    }

    // The always-breaching rule raised an alert for this agent.
    let alerts_url = format!("{}/api/v1/alerts?agent_id={}", run.api, run.agent_id);
    let alert: Value = wait_for("the alert to be raised", WAIT, procs, || async {
        let a = get_json(&client, &alerts_url).await?;
        Ok(a.and_then(|a| {
            a["alerts"].as_array().and_then(|v| {
                v.iter()
                    .find(|x| x["rule_id"] == run.rule_id.as_str())
                    .cloned()
            })
        }))
    })
    .await?;
    assert_eq!(alert["status"], "open", "{alert}");
    assert_eq!(alert["severity"], "critical");
    assert!(alert["value"].as_f64().is_some_and(|v| v >= 0.0));
    check_overview_and_open_alerts(run, &client, &alert, procs).await?;

    // Bad input to the gateway gets a 4xx naming the field (a client without the admin
    // key: "no credential" means none at all).
    let client = reqwest::Client::new();
    let bad = serde_json::json!({"reports": [{
        "collected_at": "2026-01-01T00:00:00Z", "cpu_percent": "very high",
        "memory_used_bytes": 1, "memory_total_bytes": 2, "memory_percent": 50.0,
        "load_1": 0.1, "load_5": 0.1, "load_15": 0.1, "uptime_seconds": 5
    }]});
    let resp = client
        .post(format!(
            "{}/api/v1/agents/{}/metrics",
            run.gateway, run.agent_id
        ))
        .json(&bad)
        .send()
        .await?;
    assert_eq!(
        resp.status(),
        reqwest::StatusCode::UNAUTHORIZED,
        "no credential"
    );
    let resp = client
        .post(format!(
            "{}/api/v1/agents/{}/metrics",
            run.gateway, run.agent_id
        ))
        .bearer_auth(&run.credential)
        .json(&bad)
        .send()
        .await?;
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["field"], "reports[0].cpu_percent", "{body}");
    Ok(())
}

/// Without a key, or with one the API does not know, every URL answers 401.
async fn check_unauthorized(run: &Run, urls: &[&str]) -> anyhow::Result<()> {
    let plain = reqwest::Client::new();
    let wrong_key = format!("{}-not-it", run.admin_key);
    for url in urls {
        for key in [None, Some(wrong_key.as_str())] {
            let mut req = plain.get(*url);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            let resp = req.send().await?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            assert_eq!(
                status,
                reqwest::StatusCode::UNAUTHORIZED,
                "GET {url} with {}: {body}",
                if key.is_some() {
                    "a wrong key"
                } else {
                    "no key"
                }
            );
            let body: Value = serde_json::from_str(&body)
                .with_context(|| format!("401 body of {url} is not JSON: {body}"))?;
            assert_eq!(body["error"]["code"], "unauthorized", "{body}");
        }
    }
    Ok(())
}

/// With `alert` open: the overview counts the agent and the alert; the agent's list row
/// counts the alert and its detail lists it (under one `open_alerts` key).
async fn check_overview_and_open_alerts(
    run: &Run,
    client: &reqwest::Client,
    alert: &Value,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    let overview_url = format!("{}/api/v1/overview", run.api);
    let overview = wait_for(
        "the overview to count the open alert",
        WAIT,
        procs,
        || async {
            let o = get_json(client, &overview_url).await?.context("overview")?;
            let counted = o["agents"]["total"].as_u64().is_some_and(|n| n >= 1)
                && o["open_alerts"]["total"].as_u64().is_some_and(|n| n >= 1)
                && o["open_alerts"]["critical"]
                    .as_u64()
                    .is_some_and(|n| n >= 1);
            anyhow::ensure!(counted, "overview so far: {o}");
            Ok(Some(o))
        },
    )
    .await?;
    assert!(
        overview["agents"]["online"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "the reporting agent counts as online: {overview}"
    );
    assert!(
        overview["pending_commands"].is_u64(),
        "pending commands: {overview}"
    );

    let list_url = format!("{}/api/v1/agents", run.api);
    let row = wait_for(
        "the agent row to count the open alert",
        WAIT,
        procs,
        || async {
            let list = get_json(client, &list_url).await?.context("agent list")?;
            let row = list["agents"]
                .as_array()
                .context("agents")?
                .iter()
                .find(|a| a["agent_id"] == run.agent_id.as_str())
                .cloned()
                .with_context(|| format!("agent missing from the list: {list}"))?;
            // The row's count of unresolved alerts (`open_alert_count`; `open_alerts` in rows
            // that carry no alert list).
            let count = row
                .get("open_alert_count")
                .or_else(|| row.get("open_alerts"))
                .and_then(Value::as_u64);
            anyhow::ensure!(count.is_some_and(|n| n >= 1), "agent row so far: {row}");
            Ok(Some(row))
        },
    )
    .await?;
    assert_eq!(row["status"], "online", "{row}");

    let agent_url = format!("{}/api/v1/agents/{}", run.api, run.agent_id);
    let resp = client.get(&agent_url).send().await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "GET {agent_url}: {}",
        resp.status()
    );
    let text = resp.text().await?;
    assert_eq!(
        text.matches("\"open_alerts\":").count(),
        1,
        "the agent detail has one `open_alerts` key (the row's count and the detail's \
         alert list must not both be emitted): {text}"
    );
    let detail: Value = serde_json::from_str(&text)?;
    let open = detail["open_alerts"]
        .as_array()
        .with_context(|| format!("the detail's open_alerts is the alert list: {detail}"))?;
    assert!(
        open.iter().any(|a| a["alert_id"] == alert["alert_id"]),
        "the open alert is in the agent detail: {detail}"
    );
    assert_eq!(detail["status"], "online", "{detail}");
    Ok(())
}

async fn check_alert_resolved(run: &Run, procs: &[&Proc]) -> anyhow::Result<()> {
    let client = api_client(&run.admin_key)?;
    let alerts_url = format!("{}/api/v1/alerts?agent_id={}", run.api, run.agent_id);
    let alerts: Vec<Value> = wait_for("the alert to be resolved", WAIT, procs, || async {
        let a = get_json(&client, &alerts_url).await?;
        Ok(a.and_then(|a| {
            let mine: Vec<Value> = a["alerts"]
                .as_array()?
                .iter()
                .filter(|x| x["rule_id"] == run.rule_id.as_str())
                .cloned()
                .collect();
            (!mine.is_empty() && mine.iter().all(|x| x["status"] == "resolved")).then_some(mine)
        }))
    })
    .await?;
    assert_eq!(
        alerts.len(),
        1,
        "one incident, one alert (no duplicate after the restart): {alerts:?}"
    );
    assert!(alerts[0]["resolved_at"].as_i64().is_some());
    assert!(alerts[0]["resolved_value"]
        .as_f64()
        .is_some_and(|v| v < 1000.0));
    Ok(())
}

/// A rule made through the API (an event on `fleet.rules.v1`) applies without a restart;
/// an operator acknowledges its alert through the API; the ticketer opens exactly one
/// ticket for the incident and marks it acknowledged; all of it read back from the read
/// model.
async fn check_api_rule_ack_and_ticket(
    run: &Run,
    admin_key: &str,
    state_dir: &Path,
    procs: &[&Proc],
) -> anyhow::Result<()> {
    let client = api_client(admin_key)?;
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant = creds["tenant_id"]
        .as_str()
        .context("tenant_id in credentials.json")?;
    let rule_id = fleet_e2e::create_rule(
        &client,
        &run.api,
        tenant,
        &serde_json::json!({
            "name": "e2e: memory in use",
            "metric": "memory.percent",
            "operator": ">=",
            "critical": 0.0,
            "for_secs": 1
        }),
    )
    .await?;
    let alerts_url = format!("{}/api/v1/alerts?agent_id={}", run.api, run.agent_id);
    let alert = wait_for(
        "an alert of the rule made through the API",
        WAIT,
        procs,
        || async {
            let a = get_json(&client, &alerts_url).await?;
            Ok(a.and_then(|a| {
                a["alerts"]
                    .as_array()?
                    .iter()
                    .find(|x| x["rule_id"] == rule_id.as_str())
                    .cloned()
            }))
        },
    )
    .await?;
    assert_eq!(alert["severity"], "critical", "{alert}");
    let alert_id = alert["alert_id"].as_str().context("alert_id")?.to_owned();
    let resp = client
        .post(format!("{}/api/v1/alerts/{alert_id}/acknowledge", run.api))
        .bearer_auth(admin_key)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::OK,
        "acknowledge: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let tickets_url = format!("{}/api/v1/tickets?tenant={tenant}", run.api);
    let tickets = wait_for(
        "the incident's ticket, acknowledged",
        WAIT,
        procs,
        || async {
            let t = get_json(&client, &tickets_url).await?;
            Ok(t.and_then(|t| {
                let mine: Vec<Value> = t["tickets"]
                    .as_array()?
                    .iter()
                    .filter(|x| x["alert_id"] == alert_id.as_str())
                    .cloned()
                    .collect();
                mine.iter()
                    .any(|x| x["status"] == "acknowledged")
                    .then_some(mine)
            }))
        },
    )
    .await?;
    assert_eq!(tickets.len(), 1, "one ticket per incident: {tickets:?}");
    let acked = wait_for(
        "the alert acknowledged in the read model",
        WAIT,
        procs,
        || async {
            let a = get_json(&client, &alerts_url).await?;
            Ok(a.and_then(|a| {
                a["alerts"]
                    .as_array()?
                    .iter()
                    .find(|x| x["alert_id"] == alert_id.as_str() && x["status"] == "acknowledged")
                    .cloned()
            }))
        },
    )
    .await?;
    assert_eq!(acked["rule_id"], rule_id.as_str());
    Ok(())
}
