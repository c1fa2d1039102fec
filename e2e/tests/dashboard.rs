//! The web dashboard in a real browser, end to end: `fleetstream up` (embedded log and
//! stores) serves the dashboard beside the query API; a tenant is made and an agent
//! enrolled through the admin API, and the agent reports this machine; a rule that always
//! fires raises an alert, and a `collect_diagnostics` command runs. Then Debian's
//! Chromium, driven by `e2e/browser/dashboard.mjs` (playwright-core), signs in with the
//! admin key, finds the agent in the table, opens its page (charts, services, the
//! command's output), acknowledges the alert in the alert list and sees its status
//! change. The API must then show the alert acknowledged by the admin, and the final
//! screenshot is kept in `target/e2e-artifacts/dashboard.png`.
//!
//! `scripts/browser.sh` installs what the browser part needs (Chromium from Debian when
//! `/usr/bin/chromium` is missing, `npm ci` in `e2e/browser`); this test runs it first.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use fleet_e2e::{wait_for, write_file, Proc};
use serde_json::{json, Value};

/// How long one wait of the test may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(180);
/// How long the browser script may run in all (each of its expectations waits up to
/// `DASHBOARD_TIMEOUT_SECS`).
const BROWSER_RUN: Duration = Duration::from_secs(900);
/// A watched service the agent reports (unknown without systemd; listed all the same).
const SERVICE: &str = "fleet-e2e-dashboard.service";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

fn path(p: &Path) -> anyhow::Result<String> {
    p.to_str().map(str::to_owned).context("utf-8 path")
}

/// Runs `scripts/browser.sh` (idempotent installs) and returns the Chromium it printed.
fn browser_setup() -> anyhow::Result<String> {
    let script = repo_root().join("scripts/browser.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): the dashboard test needs Debian's chromium and `npm ci` in \
             e2e/browser, which that script installs (as root, from Debian and npm)\n{}{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let chromium = stdout.lines().last().unwrap_or("").trim().to_owned();
    anyhow::ensure!(
        Path::new(&chromium).exists(),
        "{} printed no Chromium path: {stdout}",
        script.display()
    );
    Ok(chromium)
}

/// GET with the API key; the JSON answer, or an error naming the status and body.
async fn get(client: &reqwest::Client, key: &str, url: &str) -> anyhow::Result<Value> {
    let resp = client.get(url).bearer_auth(key).send().await?;
    let status = resp.status();
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url}: not JSON: {body}"))
}

/// POST JSON with the API key; the JSON answer if the status is `expected`.
async fn post(
    client: &reqwest::Client,
    key: &str,
    url: &str,
    body: &Value,
    expected: reqwest::StatusCode,
) -> anyhow::Result<Value> {
    let resp = client.post(url).bearer_auth(key).json(body).send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    if status != expected {
        bail!("POST {url}: {status} (expected {expected}) {text}");
    }
    serde_json::from_str(&text).with_context(|| format!("POST {url}: not JSON: {text}"))
}

/// The alert of `rule_id` for `agent_id`, once the read model has one.
async fn find_alert(
    client: &reqwest::Client,
    key: &str,
    api: &str,
    agent_id: &str,
    rule_id: &str,
) -> anyhow::Result<Option<Value>> {
    let alerts = get(
        client,
        key,
        &format!("{api}/api/v1/alerts?agent_id={agent_id}"),
    )
    .await?;
    Ok(alerts["alerts"].as_array().and_then(|a| {
        a.iter()
            .find(|x| x["rule_id"] == rule_id && x["agent_id"] == agent_id)
            .cloned()
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_browser_acknowledges_an_alert() -> anyhow::Result<()> {
    let chromium = browser_setup()?;
    let mut dir = tempfile::Builder::new()
        .prefix("fleet-e2e-dashboard-")
        .tempdir()?;
    if std::env::var_os("E2E_KEEP_DIR").is_some() {
        dir.disable_cleanup(true);
        eprintln!("test directory (kept): {}", dir.path().display());
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    // `up` and the admin key it generated (in <data>/admin-key, as a person reads it).
    let fleet_e2e::LocalUp {
        proc: mut up,
        gateway,
        api,
        data: _,
        admin_key,
    } = fleet_e2e::LocalUp::start(dir.path(), "").await?;

    // A tenant, an enrolled agent reporting every second with one watched service.
    let token =
        fleet_e2e::create_tenant_and_token(&api, &admin_key, &format!("e2e-dash-{id}"), &[&up])
            .await?;
    let state_dir = dir.path().join("agent-state");
    let ag_cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "server-url = \"{gateway}\"\nstate-dir = \"{}\"\ncollect-interval = \"1s\"\nbatch-max-reports = 1\nheartbeat-interval = \"1s\"\nservices = [\"{SERVICE}\"]\n",
            state_dir.display()
        ),
    )?;
    let agent_id =
        fleet_e2e::enroll_agent(dir.path(), &ag_cfg, &state_dir, &gateway, &token, &[&up]).await?;
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant_id = creds["tenant_id"]
        .as_str()
        .context("tenant_id in credentials.json")?
        .to_owned();
    let mut agent = Proc::start(
        "agent",
        dir.path(),
        &["agent", "--config", &path(&ag_cfg)?],
        &[],
    )?;
    let client = reqwest::Client::new();

    // A rule that always fires (CPU use is never below 0), and its open alert.
    let rule = post(
        &client,
        &admin_key,
        &format!("{api}/api/v1/tenants/{tenant_id}/rules"),
        &json!({
            "name": "e2e dashboard: CPU in use",
            "metric": "cpu.percent",
            "operator": ">",
            "critical": -1.0
        }),
        reqwest::StatusCode::CREATED,
    )
    .await?;
    let rule_id = rule["rule_id"].as_str().context("rule_id")?.to_owned();
    let alert = wait_for("the rule's alert, open", WAIT, &[&up, &agent], || async {
        Ok(find_alert(&client, &admin_key, &api, &agent_id, &rule_id)
            .await?
            .filter(|a| a["status"] == "open"))
    })
    .await?;
    let alert_id = alert["alert_id"].as_str().context("alert_id")?.to_owned();

    // A command with a result to show (202: written to the log, delivered later).
    let command = post(
        &client,
        &admin_key,
        &format!("{api}/api/v1/agents/{agent_id}/commands"),
        &json!({ "command_type": "collect_diagnostics" }),
        reqwest::StatusCode::ACCEPTED,
    )
    .await?;
    let command_id = command["command_id"]
        .as_str()
        .with_context(|| format!("command_id in {command}"))?
        .to_owned();
    let command_url = format!("{api}/api/v1/commands/{command_id}");
    wait_for("the command to finish", WAIT, &[&up, &agent], || async {
        let c = get(&client, &admin_key, &command_url).await.ok();
        Ok(c.filter(|c| {
            ["succeeded", "failed", "timed_out", "refused"]
                .contains(&c["status"].as_str().unwrap_or(""))
        }))
    })
    .await?;

    // The browser.
    let artifacts = target_dir().join("e2e-artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let screenshot = artifacts.join("dashboard.png");
    let _ = std::fs::remove_file(&screenshot);
    let script = repo_root().join("e2e/browser/dashboard.mjs");
    let url = format!("{api}/dashboard/");
    let mut browser = Proc::start_program(
        "browser",
        dir.path(),
        Path::new("node"),
        &[&path(&script)?],
        &[
            ("DASHBOARD_URL", &url),
            ("DASHBOARD_API_KEY", &admin_key),
            ("EXPECT_AGENT_ID", &agent_id),
            ("EXPECT_TENANT_ID", &tenant_id),
            ("EXPECT_ALERT_ID", &alert_id),
            ("EXPECT_SERVICE", SERVICE),
            ("EXPECT_COMMAND_ID", &command_id),
            ("SCREENSHOT", &path(&screenshot)?),
            ("CHROMIUM", &chromium),
            ("DASHBOARD_TIMEOUT_SECS", "180"),
        ],
    )?;
    let status = browser.wait_exit(BROWSER_RUN)?;
    let output = std::fs::read_to_string(browser.log_path()).unwrap_or_default();
    if !status.success() {
        bail!(
            "the dashboard check in the browser failed ({status}):\n{output}\n--- up (last lines) ---\n{}\n--- agent (last lines) ---\n{}",
            up.log_tail(40),
            agent.log_tail(20)
        );
    }
    eprintln!("{output}");

    // What the browser did is what the API shows.
    let acked = wait_for(
        "the alert acknowledged in the API",
        WAIT,
        &[&up],
        || async {
            Ok(find_alert(&client, &admin_key, &api, &agent_id, &rule_id)
                .await?
                .filter(|a| a["status"] == "acknowledged"))
        },
    )
    .await?;
    assert_eq!(acked["alert_id"], alert_id.as_str(), "{acked}");
    assert_eq!(
        acked["acknowledged_by"], "admin",
        "the admin key acknowledged it: {acked}"
    );

    let png = std::fs::read(&screenshot)
        .with_context(|| format!("the screenshot {} is missing", screenshot.display()))?;
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
        "{} is not a PNG ({} bytes)",
        screenshot.display(),
        png.len()
    );
    eprintln!("screenshot: {}", screenshot.display());

    agent.stop()?;
    up.stop()?;
    Ok(())
}
