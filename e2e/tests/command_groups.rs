//! Fleet-wide commands end to end: `fleetstream up` and three real agents (separate
//! `fleetstream agent` processes, one on its WebSocket, one polling over HTTP, one left out
//! of the target). Two are tagged; an operator asks the tag to run a script that needs
//! approval. Nothing runs until an admin approves the group once; then both tagged agents
//! run it (their marker files appear, the third agent's does not) and the group counts say
//! succeeded 2. A second group, cancelled while it waits for approval, is never delivered:
//! no marker, no dispatch, and it can no longer be approved.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use fleet_e2e::{api_client, get_json, wait_for, LocalUp, Proc};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
/// How long the agents get to (wrongly) run a command that must not run: the socket
/// agent would get it at once, the polling one polls every second.
const QUIET: Duration = Duration::from_secs(6);

/// POSTs `body` and checks the status; the answer.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Option<Value>,
    want: reqwest::StatusCode,
) -> anyhow::Result<Value> {
    let mut req = client.post(url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let text = resp.text().await?;
    ensure!(
        status == want,
        "POST {url}: {status} (wanted {want}) {text}"
    );
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn marker(state_dir: &Path, script: &str) -> std::path::PathBuf {
    state_dir.join(format!("ran-{script}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_runs_on_the_tagged_agents_after_one_approval_and_a_cancelled_one_never_does(
) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("fleet-e2e-groups-")
        .tempdir()?;
    let up = LocalUp::start(
        dir.path(),
        "\n[api]\napproval-required-commands = [\"run_script\"]\n",
    )
    .await?;
    let tenant =
        fleet_e2e::create_tenant(&up.api, &up.admin_key, "e2e-command-groups", &[&up.proc]).await?;
    // Agent 1 has no WebSocket: it polls for commands every second (the HTTP path).
    let agents = fleet_e2e::start_agents(&up, dir.path(), &tenant, 3, |i, state| {
        format!(
            "allowed-commands = [\"run_script\"]\nwebsocket = {}\ncommand-poll-interval = \"1s\"\n\n\
             [scripts]\nmark = \"echo ran > {m1} && echo marked-{i}\"\nmark2 = \"echo ran > {m2}\"\n",
            i != 1,
            m1 = marker(state, "mark").display(),
            m2 = marker(state, "mark2").display(),
        )
    })
    .await?;
    let mut procs: Vec<&Proc> = vec![&up.proc];
    procs.extend(agents.iter().map(|a| &a.proc));
    let api = up.api.clone();
    let admin = api_client(&up.admin_key)?;

    // An operator of the tenant requests; the admin, another user, approves.
    let user = post(
        &admin,
        &format!("{api}/api/v1/users"),
        Some(json!({"name": "e2e-operator", "role": "operator", "tenant_id": tenant})),
        reqwest::StatusCode::CREATED,
    )
    .await?;
    let operator = api_client(user["api_key"]["key"].as_str().context("operator key")?)?;

    // Agents 0 and 1 get the tag.
    for a in &agents[..2] {
        let resp = admin
            .put(format!("{api}/api/v1/agents/{}/tags", a.agent_id))
            .json(&json!({"tags": ["canary"]}))
            .send()
            .await?;
        ensure!(resp.status().is_success(), "tag: {}", resp.status());
    }
    wait_for(
        "the tagged agents in the read model",
        WAIT,
        &procs,
        || async {
            let v = get_json(
                &admin,
                &format!("{api}/api/v1/agents?tenant={tenant}&tag=canary"),
            )
            .await?;
            Ok(v.filter(|v| v["agents"].as_array().map_or(0, Vec::len) == 2))
        },
    )
    .await?;

    let request = |script: &'static str| {
        let operator = operator.clone();
        let url = format!("{api}/api/v1/command-groups");
        async move {
            let g = post(
                &operator,
                &url,
                Some(json!({
                    "target": {"tag": "canary"},
                    "command_type": "run_script",
                    "args": {"script": script},
                    "timeout_secs": 60,
                })),
                reqwest::StatusCode::ACCEPTED,
            )
            .await?;
            ensure!(g["status"] == "awaiting_approval", "{g}");
            ensure!(g["agent_count"] == 2, "{g}");
            anyhow::Ok(format!(
                "{url}/{}",
                g["group_id"].as_str().context("group id")?
            ))
        }
    };
    let counts_when = |url: String, what: &'static str, ok: fn(&Value) -> bool| {
        let admin = admin.clone();
        let procs = procs.clone();
        async move {
            wait_for(what, WAIT, &procs, || async {
                Ok(get_json(&admin, &url).await?.filter(|d| ok(&d["counts"])))
            })
            .await
        }
    };

    // 1. Requested for the tag; both members wait for the approval, and nothing runs.
    let group = request("mark").await?;
    counts_when(group.clone(), "both members awaiting approval", |c| {
        c["awaiting_approval"] == 2
    })
    .await?;
    tokio::time::sleep(QUIET).await;
    let d = get_json(&admin, &group).await?.context("the group")?;
    ensure!(
        d["counts"]["awaiting_approval"] == 2 && d["counts"]["dispatched"] == 0,
        "nothing is delivered before the approval: {d}"
    );
    for a in &agents {
        ensure!(
            !marker(&a.state_dir, "mark").exists(),
            "agent {} ran the script before the approval",
            a.agent_id
        );
    }
    // The requester cannot approve its own group; the admin approves it once.
    post(
        &operator,
        &format!("{group}/approve"),
        None,
        reqwest::StatusCode::CONFLICT,
    )
    .await?;
    let approved = post(
        &admin,
        &format!("{group}/approve"),
        None,
        reqwest::StatusCode::OK,
    )
    .await?;
    ensure!(approved["commands"] == 2, "{approved}");
    let d = counts_when(group.clone(), "both members succeeded", |c| {
        c["succeeded"] == 2
    })
    .await?;
    ensure!(
        d["state"] == "finished" && d["approval"] == "approved",
        "{d}"
    );
    ensure!(
        d["counts"]["failed"] == 0 && d["counts"]["total"] == 2,
        "{d}"
    );
    for (i, a) in agents.iter().enumerate() {
        ensure!(
            marker(&a.state_dir, "mark").exists() == (i < 2),
            "agent {i} ran the script: {}, but it is tagged: {}",
            marker(&a.state_dir, "mark").exists(),
            i < 2
        );
    }
    let members = get_json(&admin, &format!("{group}/commands"))
        .await?
        .context("members")?;
    let members = members["commands"].as_array().context("commands")?;
    ensure!(members.len() == 2, "{members:?}");
    for m in members {
        let agent = m["agent_id"].as_str().context("agent")?;
        let i = agents
            .iter()
            .position(|a| a.agent_id == agent)
            .context("a member of an unknown agent")?;
        ensure!(i < 2, "agent {i} is not tagged: {m}");
        ensure!(m["status"] == "succeeded", "{m}");
        ensure!(
            m["stdout"]
                .as_str()
                .unwrap_or("")
                .contains(&format!("marked-{i}")),
            "{m}"
        );
        ensure!(!m["dispatched_at"].is_null(), "{m}");
    }

    // 2. Another group, cancelled by its requester while it waits for approval.
    let group = request("mark2").await?;
    counts_when(group.clone(), "the second group awaiting approval", |c| {
        c["awaiting_approval"] == 2
    })
    .await?;
    let cancelled = post(
        &operator,
        &format!("{group}/cancel"),
        None,
        reqwest::StatusCode::OK,
    )
    .await?;
    ensure!(
        cancelled["commands"] == 2 && cancelled["already_dispatched"] == 0,
        "{cancelled}"
    );
    counts_when(group.clone(), "both members cancelled", |c| {
        c["cancelled"] == 2
    })
    .await?;
    post(
        &admin,
        &format!("{group}/approve"),
        None,
        reqwest::StatusCode::CONFLICT,
    )
    .await?;
    tokio::time::sleep(QUIET).await;
    for a in &agents {
        ensure!(
            !marker(&a.state_dir, "mark2").exists(),
            "agent {} ran a cancelled command",
            a.agent_id
        );
    }
    let members = get_json(&admin, &format!("{group}/commands"))
        .await?
        .context("members")?;
    let members = members["commands"].as_array().context("commands")?;
    ensure!(members.len() == 2, "{members:?}");
    for m in members {
        ensure!(
            m["status"] == "cancelled" && m["dispatched_at"].is_null(),
            "never delivered: {m}"
        );
    }
    let d = get_json(&admin, &group).await?.context("the group")?;
    ensure!(
        d["counts"]["cancelled"] == 2 && d["state"] == "finished",
        "{d}"
    );
    Ok(())
}
