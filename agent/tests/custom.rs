//! Custom metrics end to end in the agent: a `*.prom` file in `textfile-directory` and a
//! script's stdout arrive at the (stub) gateway in the reports' `custom` map, labels kept
//! as `name{k="v"}` keys; a textfile change shows in the next reports; a script that
//! starts failing has its values dropped; a hanging script is killed (with what it
//! started) at its timeout.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::config::CustomScript;
use fleet_agent::{Agent, AgentConfig, Stats};
use fleet_schemas::api::ReportIn;
use support::{init_tracing, wait_until, Gateway, Mode};
use tokio::sync::oneshot;

fn script(path: &Path, body: &str) -> anyhow::Result<()> {
    support::write_script(path, body)
}

use support::replace_file as set;

fn last_report(gw: &Gateway) -> Option<ReportIn> {
    gw.seen()
        .into_iter()
        .flat_map(|r| r.batch.reports)
        .max_by_key(|r| r.collected_at)
}

fn last_custom(gw: &Gateway, key: &str) -> Option<f64> {
    last_report(gw).and_then(|r| r.custom.get(key).copied())
}

/// Whether a process with this pid is alive (not a zombie).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

fn config(gw: &Gateway, state_dir: &Path) -> AgentConfig {
    AgentConfig {
        server_url: gw.url(),
        agent_id: Some("custom-agent".into()),
        state_dir: Some(state_dir.to_path_buf()),
        collect_interval: Some(Duration::from_secs_f64(0.1)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        websocket: false,
        inventory: false,
        security: false,
        ..AgentConfig::default()
    }
}

#[tokio::test]
async fn textfiles_and_scripts_arrive_as_custom_metrics_with_their_labels() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let textfiles = dir.path().join("textfiles");
    std::fs::create_dir(&textfiles)?;
    set(
        &textfiles.join("backup.prom"),
        "# HELP backup_age_seconds Age of the last backup.\n\
         # TYPE backup_age_seconds gauge\n\
         backup_age_seconds 3600\n\
         raid_degraded{md=\"md0\",array=\"data\"} 0\n\
         this line is bad\n",
    )?;
    std::fs::write(textfiles.join("ignored.txt"), "not_read 1\n")?;
    let flag = dir.path().join("fail");
    let queues = dir.path().join("queues.sh");
    script(
        &queues,
        &format!(
            "[ -e {flag} ] && {{ echo broken >&2; exit 1; }}\n\
             echo 'queue_depth{{queue=\"high\"}} 7'\n\
             echo 'queue_depth{{queue=\"low\"}} 1'\n",
            flag = flag.display()
        ),
    )?;
    let state_dir = dir.path().join("state");
    let config = AgentConfig {
        textfile_directory: Some(textfiles.clone()),
        custom_scripts: vec![CustomScript {
            interval: Duration::from_secs(1),
            ..CustomScript::new("queues", &queues, &[])
        }],
        ..config(&gw, &state_dir)
    };
    let agent = Agent::new(config)?;
    let stats: Arc<Stats> = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    wait_until("textfile and script metrics", || {
        last_report(&gw).is_some_and(|r| {
            r.custom.contains_key("backup_age_seconds")
                && r.custom.contains_key(r#"queue_depth{queue="high"}"#)
        })
    })
    .await?;
    let r = last_report(&gw).expect("a report");
    assert_eq!(r.custom.get("backup_age_seconds"), Some(&3600.0));
    assert_eq!(
        r.custom.get(r#"raid_degraded{array="data",md="md0"}"#),
        Some(&0.0),
        "labels sorted by name: {:?}",
        r.custom
    );
    assert_eq!(r.custom.get(r#"queue_depth{queue="high"}"#), Some(&7.0));
    assert_eq!(r.custom.get(r#"queue_depth{queue="low"}"#), Some(&1.0));
    assert_eq!(r.custom.len(), 4, "{:?}", r.custom);
    for key in r.custom.keys() {
        fleet_schemas::samples::check_custom_key(key)
            .map_err(|e| anyhow::anyhow!("{key}: the gateway would refuse it: {e}"))?;
    }
    assert!(
        stats.snapshot().custom_series_skipped >= 1,
        "the bad line is counted"
    );

    // The textfile is read again at every collection.
    set(&textfiles.join("backup.prom"), "backup_age_seconds 60\n")?;
    wait_until("the textfile's new value", || {
        last_custom(&gw, "backup_age_seconds") == Some(60.0)
    })
    .await?;

    // A script that starts failing: a warning, a count, and its values are dropped.
    std::fs::write(&flag, "")?;
    wait_until("the failed script's values to be dropped", || {
        stats.snapshot().custom_script_failures >= 1
            && last_report(&gw).is_some_and(|r| {
                !r.custom.contains_key(r#"queue_depth{queue="high"}"#)
                    && r.custom.contains_key("backup_age_seconds")
            })
    })
    .await?;
    // And they come back with the next good run.
    std::fs::remove_file(&flag)?;
    wait_until("the script's values back", || {
        last_custom(&gw, r#"queue_depth{queue="high"}"#) == Some(7.0)
    })
    .await?;

    let _ = stop.send(());
    run.await??;
    Ok(())
}

#[tokio::test]
async fn a_hanging_script_is_killed_with_its_children_at_its_timeout() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let pids = dir.path().join("pids");
    let hang = dir.path().join("hang.sh");
    // Prints a value, starts a child, then never ends: only a group kill ends both, and
    // the value of a run that timed out is not used.
    script(
        &hang,
        &format!(
            "echo 'hung 1'\n\
             sleep 300 &\n\
             echo $$ $! > {pids}.tmp && mv {pids}.tmp {pids}\n\
             wait\n",
            pids = pids.display()
        ),
    )?;
    let state_dir = dir.path().join("state");
    let config = AgentConfig {
        custom_scripts: vec![CustomScript {
            interval: Duration::from_secs(60),
            timeout: Duration::from_millis(500),
            ..CustomScript::new("hang", &hang, &[])
        }],
        ..config(&gw, &state_dir)
    };
    let agent = Agent::new(config)?;
    let stats = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    wait_until("the script to start", || pids.exists()).await?;
    let text = std::fs::read_to_string(&pids)?;
    let started: Vec<&str> = text.split_whitespace().collect();
    assert_eq!(started.len(), 2, "{text}");
    wait_until("the timeout to count as a failure", || {
        stats.snapshot().custom_script_failures >= 1
    })
    .await?;
    wait_until("the script and its child to be gone", || {
        started.iter().all(|pid| !alive(pid))
    })
    .await?;
    wait_until("reports after the timeout", || {
        gw.seen()
            .iter()
            .map(|r| r.batch.reports.len())
            .sum::<usize>()
            >= 2
    })
    .await?;
    let reports: Vec<ReportIn> = gw
        .seen()
        .into_iter()
        .flat_map(|r| r.batch.reports)
        .collect();
    assert!(
        reports.iter().all(|r| !r.custom.contains_key("hung")),
        "a run that timed out gives nothing"
    );
    let _ = stop.send(());
    run.await??;
    Ok(())
}
