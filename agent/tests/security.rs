//! The security posture is collected by running the host's tools: here fake `ufw`,
//! `apt-get`, `sshd` and `clamscan` are the only programs on `PATH` (this test binary
//! holds one test, so changing the process environment races with nothing). The posture
//! is collected once per `security-interval`, not with every report, and every report
//! carries the last value.

mod support;

use std::path::Path;
use std::time::Duration;

use fleet_agent::security::{self, Sources};
use fleet_agent::{Agent, AgentConfig};
use fleet_schemas::api::{ReportIn, SecurityIn};
use support::{init_tracing, wait_until, Gateway, Mode};
use tokio::sync::oneshot;

fn script(bin: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    support::write_script(&bin.join(name), body)
}

use support::replace_file as set;

fn reports(gw: &Gateway) -> Vec<ReportIn> {
    gw.seen()
        .into_iter()
        .flat_map(|r| r.batch.reports)
        .collect()
}

/// The posture without its signature age (which grows with the clock), and that age.
fn split_age(s: &SecurityIn) -> (SecurityIn, Option<f64>) {
    let age = s.antivirus_signature_age_hours;
    let rest = SecurityIn {
        antivirus_signature_age_hours: None,
        ..s.clone()
    };
    (rest, age)
}

/// Whether a report carries `expected` and a signature age of the fake `clamscan`'s
/// database (dated November 2023: more than 300 days).
fn carries(r: &ReportIn, expected: &SecurityIn) -> bool {
    r.security
        .as_ref()
        .map(split_age)
        .is_some_and(|(rest, age)| &rest == expected && age.is_some_and(|h| h > 300.0 * 24.0))
}

async fn run_agent(
    gw: &Gateway,
    state_dir: &Path,
    sources: &Sources,
    security_interval: Duration,
    until: impl Fn(&[ReportIn]) -> bool,
    what: &str,
) -> anyhow::Result<()> {
    let config = AgentConfig {
        server_url: gw.url(),
        agent_id: Some("sec-agent".into()),
        state_dir: Some(state_dir.to_path_buf()),
        collect_interval: Some(Duration::from_secs_f64(0.05)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        flush_interval: Some(Duration::from_secs_f64(0.05)),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        websocket: false,
        inventory: false,
        security_interval,
        security_reboot_required_file: sources.reboot_required.clone(),
        security_sshd_config: sources.sshd_config.clone(),
        security_clamav_database: sources.clamav_db.clone(),
        ..AgentConfig::default()
    };
    let agent = Agent::new(config)?;
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    wait_until(what, || until(&reports(gw))).await?;
    let _ = stop.send(());
    run.await??;
    Ok(())
}

#[tokio::test]
async fn posture_from_fake_tools_is_cached_and_follows_changes() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let updates = dir.path().join("updates");
    let apt_log = dir.path().join("apt.log");
    let ufw_state = dir.path().join("ufw");
    set(&ufw_state, "active")?;
    set(
        &updates,
        "Inst libssl3 [1] (2 Ubuntu:22.04/jammy-security [amd64])\n\
         Inst tzdata [1] (2 Ubuntu:22.04/jammy-updates [all])\n",
    )?;
    script(
        &bin,
        "apt-get",
        &format!(
            "echo run >> {log}\n\
             [ \"$1\" = -s ] || exit 1\n\
             echo 'NOTE: This is only a simulation!'\n\
             while IFS= read -r l; do printf '%s\\n' \"$l\"; done < {updates}\n",
            log = apt_log.display(),
            updates = updates.display()
        ),
    )?;
    script(
        &bin,
        "ufw",
        &format!(
            "read -r s < {state}\nprintf 'Status: %s\\n' \"$s\"\n",
            state = ufw_state.display()
        ),
    )?;
    script(
        &bin,
        "sshd",
        "[ \"$1\" = -T ] || exit 1\nprintf 'port 22\\npermitrootlogin no\\npasswordauthentication yes\\n'\n",
    )?;
    script(
        &bin,
        "clamscan",
        "printf 'ClamAV 1.0.3/27099/Tue Nov 14 09:28:39 2023\\n'\n",
    )?;
    // A tool that never answers: its probe times out, its field stays empty.
    script(&bin, "firewall-cmd", "exec /bin/sleep 30\n")?;
    // Only the fakes: the host's own tools cannot leak into the result.
    std::env::set_var("PATH", bin.display().to_string());

    // The collector alone: every field from the fakes, nothing from absent tools
    // (nft, iptables, dnf, needs-restarting), files from a scratch directory.
    let sources = Sources {
        reboot_required: dir.path().join("reboot-required"),
        sshd_config: dir.path().join("no-sshd_config"),
        clamav_db: dir.path().join("no-clamav"),
        change_triggers: vec![],
        timeout: Duration::from_millis(500),
    };
    let p = tokio::task::spawn_blocking({
        let sources = sources.clone();
        move || security::collect(&sources)
    })
    .await?;
    assert_eq!(p.firewall_active, Some(true));
    assert_eq!(p.pending_updates, Some(2));
    assert_eq!(p.pending_security_updates, Some(1));
    assert_eq!(
        p.reboot_required,
        Some(false),
        "apt host without the flag file"
    );
    assert_eq!(p.ssh_permit_root_login.as_deref(), Some("no"));
    assert_eq!(p.ssh_password_authentication, Some(true));
    assert_eq!(p.antivirus_present, Some(true));
    assert!(p.antivirus_signature_age_seconds.unwrap_or(0) > 86_400 * 300);
    std::fs::write(
        &sources.reboot_required,
        "*** System restart required ***\n",
    )?;
    let p = tokio::task::spawn_blocking({
        let sources = sources.clone();
        move || security::collect(&sources)
    })
    .await?;
    assert_eq!(p.reboot_required, Some(true));
    std::fs::remove_file(&apt_log)?;
    // The agent's probes wait 20 s for a hung tool: keep the rest of the test quick.
    std::fs::remove_file(bin.join("firewall-cmd"))?;

    // The agent: hourly posture, reports every 50 ms, all carrying the cached value.
    let gw = Gateway::start(Mode::Accept).await?;
    // Every finding travels: the reboot flag file (now there), sshd, ClamAV.
    let expected = SecurityIn {
        firewall_enabled: Some(true),
        pending_updates: Some(2),
        pending_security_updates: Some(1),
        reboot_required: Some(true),
        ssh_permit_root_login: Some("no".into()),
        ssh_password_authentication: Some(true),
        antivirus_present: Some(true),
        antivirus_signature_age_hours: None,
    };
    run_agent(
        &gw,
        &dir.path().join("agent"),
        &sources,
        Duration::from_secs(3600),
        |r| r.iter().filter(|r| carries(r, &expected)).count() >= 8,
        "eight reports with the posture",
    )
    .await?;
    let runs = std::fs::read_to_string(&apt_log)?.lines().count();
    assert_eq!(runs, 1, "collected once per interval, not per report");
    let all = reports(&gw);
    let first_with = all.iter().position(|r| r.security.is_some());
    let first_with = first_with.unwrap_or(all.len());
    assert!(
        all[first_with..].iter().all(|r| carries(r, &expected)),
        "once known, every report carries it"
    );
    let ages: Vec<Option<f64>> = all[first_with..]
        .iter()
        .map(|r| {
            r.security
                .as_ref()
                .and_then(|s| s.antivirus_signature_age_hours)
        })
        .collect();
    assert!(
        ages.windows(2).all(|w| w[0] == w[1]),
        "one collection, one age in every report: {ages:?}"
    );

    // A short interval: a change on the host shows up in the following reports.
    set(&ufw_state, "inactive")?;
    set(&updates, "")?;
    let gw = Gateway::start(Mode::Accept).await?;
    std::fs::remove_file(&sources.reboot_required)?;
    let changed = SecurityIn {
        firewall_enabled: Some(false),
        pending_updates: Some(0),
        pending_security_updates: Some(0),
        reboot_required: Some(false),
        ..expected
    };
    run_agent(
        &gw,
        &dir.path().join("agent"),
        &sources,
        Duration::from_secs_f64(0.2),
        |r| r.iter().any(|r| carries(r, &changed)),
        "the changed posture",
    )
    .await?;
    let runs = std::fs::read_to_string(&apt_log)?.lines().count();
    assert!(runs >= 2, "collected again: {runs}");
    Ok(())
}
