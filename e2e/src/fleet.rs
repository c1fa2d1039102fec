//! Talking to a running Fleetstream as an operator and an agent would: admin keys,
//! tenants and registration tokens, enrollment, what an agent's spool holds, history
//! answers and times as the API writes them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use fleet_test_support::process::{free_port, run_to_end, wait_for, write_file, Proc};

/// `fleetstream up` on free loopback ports, its data in `<dir>/data`.
#[derive(Debug)]
pub struct LocalUp {
    /// The process (named `up`, its log in `dir`).
    pub proc: Proc,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub gateway: String,
    /// `http://127.0.0.1:<port>` of the query API.
    pub api: String,
    /// The data directory.
    pub data: PathBuf,
    /// The admin key `up` generated.
    pub admin_key: String,
}

impl LocalUp {
    /// Starts `up` with a configuration of the two listen addresses and `extra` (TOML
    /// tables appended), and waits for its admin key.
    pub async fn start(dir: &Path, extra: &str) -> anyhow::Result<LocalUp> {
        let (gw_port, api_port) = (free_port()?, free_port()?);
        let cfg = write_file(
            dir,
            "fleetstream.toml",
            &format!(
                "[gateway]\nlisten = \"127.0.0.1:{gw_port}\"\n\n[projections]\nlisten = \"127.0.0.1:{api_port}\"\n{extra}"
            ),
        )?;
        let data = dir.join("data");
        let utf8 = |p: &Path| p.to_str().map(str::to_owned).context("utf-8 path");
        let proc = Proc::start(
            "up",
            dir,
            &["up", "--data-dir", &utf8(&data)?, "--config", &utf8(&cfg)?],
            &[],
        )?;
        let admin_key = up_admin_key(&data, &[&proc]).await?;
        Ok(LocalUp {
            proc,
            gateway: format!("http://127.0.0.1:{gw_port}"),
            api: format!("http://127.0.0.1:{api_port}"),
            data,
            admin_key,
        })
    }
}

impl LocalUp {
    /// A tenant named `name` and an ingest key for it, through the admin API (waiting up
    /// to 120 s for the API to answer): (tenant id, key).
    pub async fn tenant_with_ingest_key(
        &self,
        client: &reqwest::Client,
        name: &str,
    ) -> anyhow::Result<(String, String)> {
        let (api, admin) = (&self.api, &self.admin_key);
        let tenant: serde_json::Value = wait_for(
            "the admin API",
            Duration::from_secs(120),
            &[&self.proc],
            || async {
                let r = client
                    .post(format!("{api}/api/v1/tenants"))
                    .bearer_auth(admin)
                    .json(&serde_json::json!({ "name": name }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => Ok(Some(r.json().await?)),
                    Ok(r) => bail!("create tenant: {}", r.status()),
                    Err(_) => Ok(None),
                }
            },
        )
        .await?;
        let tenant_id = tenant["tenant_id"]
            .as_str()
            .context("tenant id")?
            .to_owned();
        let resp = client
            .post(format!("{api}/api/v1/admin/ingest-keys"))
            .bearer_auth(admin)
            .json(&serde_json::json!({"name": name, "tenant_id": tenant_id}))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("create ingest key: {}", resp.status());
        }
        let created: serde_json::Value = resp.json().await?;
        let key = created["key"]
            .as_str()
            .with_context(|| format!("no key in {created}"))?
            .to_owned();
        Ok((tenant_id, key))
    }
}

/// A whole number from the environment (a bench's knob), `default` when unset.
pub fn env_num(name: &str, default: usize) -> anyhow::Result<usize> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{name}={v:?} is not a whole number")),
        Err(_) => Ok(default),
    }
}

/// A fresh admin API key strong enough for the API's start-up check (32+ characters of
/// randomness).
pub fn new_admin_key() -> String {
    format!("fsk_e2e_{}", uuid::Uuid::new_v4().simple())
}

/// The admin key `fleetstream up` keeps in `<data_dir>/admin-key`, waiting (up to
/// 120 s) for `up` to write it.
pub async fn up_admin_key(data_dir: &Path, procs: &[&Proc]) -> anyhow::Result<String> {
    let path = data_dir.join("admin-key");
    wait_for(
        "`fleetstream up` to write its admin key",
        Duration::from_secs(120),
        procs,
        || async {
            Ok(std::fs::read_to_string(&path)
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()))
        },
    )
    .await
}

/// `fleetstream up --with-local-agent` in `dir` with the configuration file `config`
/// (its `[agent]` table's `state-dir` is `state_dir`), data in `dir/data`: the process,
/// its admin key and the local agent's id once it enrolled.
pub async fn up_with_local_agent(
    dir: &Path,
    config: &Path,
    state_dir: &Path,
) -> anyhow::Result<(Proc, String, String)> {
    up_with_local_agent_env(dir, config, state_dir, &[]).await
}

/// [`up_with_local_agent`] with `env` added to the process's environment (a `PATH` of
/// fake tools for the local agent's probes, for example).
pub async fn up_with_local_agent_env(
    dir: &Path,
    config: &Path,
    state_dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Proc, String, String)> {
    let data = dir.join("data");
    let args = [
        "up",
        "--data-dir",
        data.to_str().context("utf-8")?,
        "--config",
        config.to_str().context("utf-8")?,
        "--with-local-agent",
    ];
    let up = Proc::start("up", dir, &args, env)?;
    let procs = [&up];
    let admin_key = up_admin_key(&data, &procs).await?;
    let credentials = state_dir.join("credentials.json");
    let agent_id = wait_for(
        "the local agent to enroll",
        Duration::from_secs(120),
        &procs,
        || async {
            let Ok(text) = std::fs::read_to_string(&credentials) else {
                return Ok(None);
            };
            let v: serde_json::Value = serde_json::from_str(&text)?;
            Ok(v["agent_id"].as_str().map(str::to_owned))
        },
    )
    .await?;
    Ok((up, admin_key, agent_id))
}

/// Creates a tenant named `name` and a registration token for it through the admin API
/// at `api` (waiting for the API to answer); returns the token.
pub async fn create_tenant_and_token(
    api: &str,
    admin_key: &str,
    name: &str,
    procs: &[&Proc],
) -> anyhow::Result<String> {
    let tenant_id = create_tenant(api, admin_key, name, procs).await?;
    create_token(api, admin_key, &tenant_id).await
}

/// Creates a tenant named `name` through the admin API at `api`, waiting (up to 120 s)
/// for the API to answer; returns its id.
pub async fn create_tenant(
    api: &str,
    admin_key: &str,
    name: &str,
    procs: &[&Proc],
) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let tenant: serde_json::Value =
        wait_for("the admin API", Duration::from_secs(120), procs, || async {
            let resp = client
                .post(format!("{api}/api/v1/tenants"))
                .bearer_auth(admin_key)
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == reqwest::StatusCode::CREATED => Ok(Some(r.json().await?)),
                Ok(r) => bail!(
                    "create tenant: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => Ok(None), // not listening yet
            }
        })
        .await?;
    Ok(tenant["tenant_id"]
        .as_str()
        .context("tenant id")?
        .to_owned())
}

/// A registration token of `tenant_id` (one enrollment), through the admin API at `api`.
pub async fn create_token(api: &str, admin_key: &str, tenant_id: &str) -> anyhow::Result<String> {
    let resp = reqwest::Client::new()
        .post(format!(
            "{api}/api/v1/tenants/{tenant_id}/registration-tokens"
        ))
        .bearer_auth(admin_key)
        .json(&serde_json::json!({"device_name": "e2e", "expires_in": "10m"}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::CREATED,
        "create token: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let token: serde_json::Value = resp.json().await?;
    Ok(token["token"].as_str().context("token")?.to_owned())
}

/// One `fleetstream agent` process of [`start_agents`].
#[derive(Debug)]
pub struct RunningAgent {
    /// The process (named `agent-<i>`, its log in the test directory).
    pub proc: Proc,
    /// Its id, from the enrollment.
    pub agent_id: String,
    /// Its state directory (`<dir>/agent-<i>`), which also holds its `agent.toml`.
    pub state_dir: PathBuf,
}

/// Enrolls `n` agents in `tenant_id` with `up` (a registration token each, through its
/// admin API), and starts each as its own `fleetstream agent` process. Agent `i` lives in
/// `<dir>/agent-<i>`; its configuration is `up`'s gateway, its state directory, one-second
/// collection and heartbeats, no inventory, then `extra(i, state_dir)` (TOML keys and
/// tables appended: allowed commands, scripts, ...).
pub async fn start_agents(
    up: &LocalUp,
    dir: &Path,
    tenant_id: &str,
    n: usize,
    extra: impl Fn(usize, &Path) -> String,
) -> anyhow::Result<Vec<RunningAgent>> {
    let (api, gateway, admin_key) = (&up.api, &up.gateway, &up.admin_key);
    let procs = [&up.proc];
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let state_dir = dir.join(format!("agent-{i}"));
        std::fs::create_dir_all(&state_dir)?;
        let config = format!(
            "server-url = \"{gateway}\"\nstate-dir = \"{}\"\ncollect-interval = \"1s\"\n\
             heartbeat-interval = \"1s\"\ninventory = false\nsecurity = false\n{}\n",
            state_dir.display(),
            extra(i, &state_dir)
        );
        let cfg = write_file(&state_dir, "agent.toml", &config)?;
        let token = create_token(api, admin_key, tenant_id).await?;
        let agent_id = enroll_agent(dir, &cfg, &state_dir, gateway, &token, &procs).await?;
        let cfg = cfg.to_str().context("utf-8 path")?.to_owned();
        let proc = Proc::start(
            &format!("agent-{i}"),
            dir,
            &["agent", "--config", &cfg],
            &[],
        )?;
        agents.push(RunningAgent {
            proc,
            agent_id,
            state_dir,
        });
    }
    Ok(agents)
}

/// Creates a rule in `tenant` through the API at `api` (`client` carries the key);
/// returns its id.
pub async fn create_rule(
    client: &reqwest::Client,
    api: &str,
    tenant: &str,
    body: &serde_json::Value,
) -> anyhow::Result<String> {
    let resp = client
        .post(format!("{api}/api/v1/tenants/{tenant}/rules"))
        .json(body)
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::CREATED,
        "create rule: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let rule: serde_json::Value = resp.json().await?;
    Ok(rule["rule_id"].as_str().context("rule_id")?.to_owned())
}

/// Enrolls an agent (`fleetstream agent enroll`) with `token` at the gateway `server`,
/// retrying while the gateway does not listen yet; returns the agent id from the
/// credentials file the agent wrote in `state_dir`.
pub async fn enroll_agent(
    dir: &Path,
    agent_config: &Path,
    state_dir: &Path,
    server: &str,
    token: &str,
    procs: &[&Proc],
) -> anyhow::Result<String> {
    let config = agent_config.to_str().context("utf-8 path")?;
    let args = [
        "agent", "enroll", "--config", config, "--server", server, "--token", token,
    ];
    let enroll = wait_for(
        "the gateway to enroll the agent",
        Duration::from_secs(120),
        procs,
        || async {
            let out = run_to_end(dir, &args)?;
            // Until the gateway listens, enrollment cannot connect: try again.
            Ok((!out.output.to_lowercase().contains("connect")).then_some(out))
        },
    )
    .await?;
    anyhow::ensure!(enroll.success, "enroll failed: {}", enroll.output);
    let path = state_dir.join("credentials.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(v["agent_id"].as_str().context("agent_id")?.to_owned())
}

/// Microseconds since the epoch of an RFC 3339 time, as the gateway keys it.
pub fn rfc3339_micros(s: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("not RFC 3339: {s:?}"))?
        .timestamp_micros())
}

/// RFC 3339 (UTC, microseconds, `Z`) of microseconds since the epoch, for query strings.
pub fn micros_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The reports an agent's spool holds, as (collection time µs, cpu percent), oldest first.
/// Reads a copy of `{state_dir}/spool.redb`, so the agent's own file is left exactly as
/// the agent left it; call it only while no agent runs on `state_dir` (a copy taken
/// while an agent writes could be torn).
pub fn spool_reports(state_dir: &Path) -> anyhow::Result<Vec<(i64, f64)>> {
    let file = state_dir.join(fleet_agent::spool::SPOOL_FILE);
    if !file.exists() {
        return Ok(Vec::new());
    }
    let copy_dir = tempfile::tempdir()?;
    let copy = copy_dir.path().join(fleet_agent::spool::SPOOL_FILE);
    std::fs::copy(&file, &copy).with_context(|| format!("copying {}", file.display()))?;
    let spool = fleet_agent::Spool::open(&copy, u64::MAX)
        .with_context(|| format!("opening a copy of {}", file.display()))?;
    anyhow::ensure!(
        spool.recovered_from().is_none(),
        "the spool {} was unreadable",
        file.display()
    );
    Ok(spool
        .peek(usize::MAX)?
        .map(|b| {
            b.reports
                .iter()
                .map(|r| (r.collected_at.timestamp_micros(), r.cpu_percent))
                .collect()
        })
        .unwrap_or_default())
}

/// Samples counted over every bucket of the first series of a history answer
/// (`GET /api/v1/agents/{id}/metrics`).
pub fn history_sample_count(history: &serde_json::Value) -> u64 {
    history["series"][0]["buckets"]
        .as_array()
        .map(|b| b.iter().map(|b| b["count"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

/// Waits (up to `timeout`) until the agent's history (`{agent_url}/metrics`, the last 10
/// minutes at 1-minute buckets) answers `series` series for `metrics` (comma-separated,
/// as the API takes them; a labelled subject may hold commas too), each with samples, and
/// returns that answer.
pub async fn wait_for_history(
    client: &reqwest::Client,
    agent_url: &str,
    (metrics, series): (&str, usize),
    timeout: Duration,
    procs: &[&Proc],
) -> anyhow::Result<serde_json::Value> {
    let url = reqwest::Url::parse_with_params(
        &format!("{agent_url}/metrics"),
        [("metric", metrics), ("start", "10m"), ("interval", "1m")],
    )?;
    wait_for(&format!("history of {metrics}"), timeout, procs, || {
        let (client, url) = (client, url.as_str());
        async move {
            Ok(fleet_test_support::http::get_json(client, url)
                .await?
                .filter(|h| {
                    h["series"].as_array().is_some_and(|s| {
                        s.len() == series
                            && s.iter().all(|s| {
                                s["buckets"].as_array().is_some_and(|b| {
                                    b.iter().any(|b| b["count"].as_u64() > Some(0))
                                })
                            })
                    })
                }))
        }
    })
    .await
}

/// Waits (up to `timeout`) until `{api}/api/v1/alerts?agent_id=` lists an alert of
/// `rule_id` for the agent, and returns it.
pub async fn wait_for_alert(
    client: &reqwest::Client,
    api: &str,
    agent_id: &str,
    rule_id: &str,
    timeout: Duration,
    procs: &[&Proc],
) -> anyhow::Result<serde_json::Value> {
    let url =
        reqwest::Url::parse_with_params(&format!("{api}/api/v1/alerts"), [("agent_id", agent_id)])?;
    wait_for(
        &format!("an alert of rule {rule_id}"),
        timeout,
        procs,
        || {
            let (client, url) = (client, url.as_str());
            async move {
                Ok(fleet_test_support::http::get_json(client, url)
                    .await?
                    .and_then(|a| {
                        a["alerts"]
                            .as_array()
                            .and_then(|v| v.iter().find(|x| x["rule_id"] == rule_id).cloned())
                    }))
            }
        },
    )
    .await
}
