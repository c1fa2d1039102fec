//! The walking skeleton end to end, as real processes: an agent reports this machine
//! through the gateway; the API shows the agent, its latest metrics and history; a rule
//! with a low threshold raises an alert, and raising the threshold back resolves it.
//!
//! Runs twice: `fleetstream up` on the embedded defaults, and every role as its own
//! process on Kafka + Postgres.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use fleet_e2e::{free_port, get_json, wait_for, write_file, Proc};
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
threshold = {threshold:.1}
severity = "critical"
"#
    )
}

fn agent_toml(agent_id: &str) -> String {
    format!(
        r#"
agent-id = "{agent_id}"
collect-interval-secs = 0.5
batch-max-reports = 2
"#
    )
}

struct Run {
    agent_id: String,
    rule_id: String,
    gateway: String,
    api: String,
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
            agent_toml(&self.run.agent_id),
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
            agent_id: format!("e2e-agent-{id}"),
            rule_id: format!("e2e-rule-{id}"),
            gateway: format!("http://127.0.0.1:{gateway_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
        },
        gateway_port,
        api_port,
        proc: None,
    };
    e.start(0.0)?;
    let procs = [e.proc.as_ref().context("started")?];
    check_agent_metrics_and_alert(&e.run, &procs).await?;
    // Raise the threshold back: stop, reconfigure, start on the same data directory.
    e.proc.as_mut().context("started")?.stop()?;
    e.start(1000.0)?;
    let procs = [e.proc.as_ref().context("started")?];
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
    let run = Run {
        agent_id: format!("e2e-agent-{id}"),
        rule_id: format!("e2e-rule-{id}"),
        gateway: format!("http://127.0.0.1:{gw_port}"),
        api: format!("http://127.0.0.1:{api_port}"),
    };
    let log = format!("kafka://{brokers}");
    let gw_cfg = write_file(
        dir.path(),
        "gateway.toml",
        &format!("listen = \"127.0.0.1:{gw_port}\"\nevent-log = \"{log}\"\n"),
    )?;
    let pj_cfg = write_file(
        dir.path(),
        "projections.toml",
        &format!(
            "listen = \"127.0.0.1:{api_port}\"\nevent-log = \"{log}\"\nread-model = \"{db}\"\ntimeseries = \"file://{}\"\nread-model-group = \"e2e-rm-{id}\"\ntimeseries-group = \"e2e-ts-{id}\"\nsession-timeout-ms = 6000\n",
            dir.path().join("ts").display()
        ),
    )?;
    let processors_cfg = |threshold: f64| {
        format!(
            "listen = \"127.0.0.1:{pr_port}\"\nevent-log = \"{log}\"\ngroup = \"e2e-alerts-{id}\"\nsession-timeout-ms = 6000\n{}",
            rules_toml(&run.rule_id, threshold)
        )
    };
    let pr_cfg = write_file(dir.path(), "processors.toml", &processors_cfg(0.0))?;
    let ag_cfg = write_file(dir.path(), "agent.toml", &agent_toml(&run.agent_id))?;
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
    let agent = Proc::start(
        "agent",
        dir.path(),
        &[
            "agent",
            "--config",
            &path(&ag_cfg)?,
            "--server",
            &run.gateway,
        ],
        &[],
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
    Ok(())
}

async fn check_agent_metrics_and_alert(run: &Run, procs: &[&Proc]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let agent_url = format!("{}/api/v1/agents/{}", run.api, run.agent_id);

    // The agent appears with its latest metrics.
    let agent: Value = wait_for("the agent to appear with metrics", WAIT, procs, || async {
        Ok(get_json(&client, &agent_url)
            .await?
            .filter(|a| a["cpu_percent"].is_number()))
    })
    .await?;
    let cpu = agent["cpu_percent"].as_f64().context("cpu_percent")?;
    assert!((0.0..=100.0).contains(&cpu), "cpu_percent {cpu}");
    assert!(
        agent["latest_report"]["memory_total_bytes"]
            .as_i64()
            .unwrap_or(0)
            > 0,
        "{agent}"
    );
    let list = get_json(&client, &format!("{}/api/v1/agents", run.api))
        .await?
        .context("agent list")?;
    assert!(
        list["agents"]
            .as_array()
            .context("agents")?
            .iter()
            .any(|a| a["agent_id"] == run.agent_id.as_str()),
        "agent missing from the list: {list}"
    );

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

    // Bad input to the gateway gets a 4xx naming the field.
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
    assert_eq!(resp.status(), reqwest::StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["field"], "reports[0].cpu_percent", "{body}");
    Ok(())
}

async fn check_alert_resolved(run: &Run, procs: &[&Proc]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
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
