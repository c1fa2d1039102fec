//! The security posture end to end, as real processes: `fleetstream up` with its local
//! agent, whose probes are pointed at fixtures: the reboot flag file, the sshd
//! configuration and the ClamAV database directory through the agent's `security-*`
//! settings, and a `PATH` holding only a fake `apt-get` (two pending updates, one from a
//! security origin), so no tool of the host answers. The whole posture reaches the API in
//! the agent's latest report and its history, and a rule `security.reboot_required > 0`
//! created through the API raises an alert.

use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use fleet_e2e::{api_client, free_port, get_json, wait_for, write_file};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// A fake tool: a shell script using only the shell's builtins (`PATH` holds nothing else).
fn fake_tool(dir: &std::path::Path, name: &str, body: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = write_file(dir, name, &format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_posture_reaches_the_api_and_a_rule_on_it_fires() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (gateway_port, api_port) = (free_port()?, free_port()?);
    let fx = dir.path().join("fixtures");
    let (bin, ssh, clamav) = (fx.join("bin"), fx.join("ssh"), fx.join("clamav"));
    for d in [&bin, &ssh, &clamav] {
        std::fs::create_dir_all(d)?;
    }
    fake_tool(
        &bin,
        "apt-get",
        "[ \"$1\" = -s ] || exit 1\n\
         printf 'NOTE: This is only a simulation!\\n'\n\
         printf 'Inst openssl [3.0.1] (3.0.2 Debian-Security:12/stable-security [amd64])\\n'\n\
         printf 'Inst tzdata [2024a] (2024b Debian:12/stable [all])\\n'\n",
    )?;
    let reboot = write_file(&fx, "reboot-required", "*** System restart required ***\n")?;
    let sshd_config = write_file(
        &ssh,
        "sshd_config",
        "Include sshd_config.d/*.conf\nPasswordAuthentication no\n",
    )?;
    std::fs::create_dir(ssh.join("sshd_config.d"))?;
    write_file(
        &ssh.join("sshd_config.d"),
        "50-root.conf",
        "PermitRootLogin yes\n",
    )?;
    let db = std::fs::File::create(clamav.join("daily.cvd"))?;
    db.set_modified(SystemTime::now() - Duration::from_secs(72 * 3600))?;

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
security-reboot-required-file = "{reboot}"
security-sshd-config = "{sshd}"
security-clamav-database = "{clamav}"
"#,
        state = state_dir.display(),
        reboot = reboot.display(),
        sshd = sshd_config.display(),
        clamav = clamav.display(),
    );
    let cfg = write_file(dir.path(), "fleetstream.toml", &config)?;
    let path = bin.to_str().context("utf-8 path")?;
    let (mut up, admin_key, agent_id) =
        fleet_e2e::up_with_local_agent_env(dir.path(), &cfg, &state_dir, &[("PATH", path)]).await?;
    let procs = [&up];
    let client = api_client(&admin_key)?;
    let api = format!("http://127.0.0.1:{api_port}");
    let agent_url = format!("{api}/api/v1/agents/{agent_id}");

    // The latest report carries every finding.
    let agent: Value = wait_for("the posture in the latest report", WAIT, &procs, || {
        let (client, url) = (&client, &agent_url);
        async move {
            Ok(get_json(client, url)
                .await?
                .filter(|a| a["latest_report"]["security"]["reboot_required"] == true))
        }
    })
    .await?;
    let security = &agent["latest_report"]["security"];
    assert_eq!(security["pending_updates"], 2, "{security}");
    assert_eq!(security["pending_security_updates"], 1, "{security}");
    assert_eq!(security["ssh_permit_root_login"], "yes", "{security}");
    assert_eq!(security["ssh_password_authentication"], false, "{security}");
    assert_eq!(security["antivirus_present"], true, "{security}");
    let age = security["antivirus_signature_age_hours"]
        .as_f64()
        .context("signature age")?;
    assert!((72.0..74.0).contains(&age), "{security}");
    assert_eq!(
        security["firewall_enabled"],
        Value::Null,
        "no firewall tool on PATH: {security}"
    );

    // The posture is a metric: a rule on it, created through the API, fires.
    let creds: Value = serde_json::from_str(&std::fs::read_to_string(
        state_dir.join("credentials.json"),
    )?)?;
    let tenant_id = creds["tenant_id"]
        .as_str()
        .context("tenant_id in credentials.json")?;
    let rule_id = fleet_e2e::create_rule(
        &client,
        &api,
        tenant_id,
        &json!({
            "name": "e2e reboot pending",
            "metric": "security.reboot_required",
            "operator": ">",
            "critical": 0.0
        }),
    )
    .await?;
    let alert = fleet_e2e::wait_for_alert(&client, &api, &agent_id, &rule_id, WAIT, &procs).await?;
    assert_eq!(alert["status"], "open", "{alert}");
    assert_eq!(alert["metric"], "security.reboot_required", "{alert}");
    assert_eq!(alert["value"], 1.0, "{alert}");

    // And its history: the new metrics are series like any other.
    let history = fleet_e2e::wait_for_history(
        &client,
        &agent_url,
        (
            "security.ssh_root_login_permitted,security.antivirus_signature_age_hours",
            2,
        ),
        WAIT,
        &procs,
    )
    .await?;
    let series = history["series"].as_array().context("series")?;
    let max_of = |s: &Value| {
        s["buckets"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["count"].as_u64() > Some(0)))
            .and_then(|b| b["max"].as_f64())
    };
    assert_eq!(max_of(&series[0]), Some(1.0), "{history}");
    let max_age = max_of(&series[1]).context("age bucket")?;
    assert!((72.0..74.0).contains(&max_age), "{history}");
    up.stop()?;
    Ok(())
}
