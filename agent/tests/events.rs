//! Service transitions become events, and `restart_service` runs `systemctl restart`,
//! against a fake `systemctl` put first on `PATH` (this test binary holds one test, so
//! changing the process environment races with nothing).

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::Duration;

use chrono::Utc;
use fleet_agent::{Agent, AgentConfig};
use fleet_schemas::api::{CommandSpec, ServerMessage};
use support::{init_tracing, wait_until, Gateway, Mode};
use tokio::sync::oneshot;

/// A `systemctl` answering `show` with the state in `state_file`, and logging `restart`.
fn fake_systemctl(bin: &Path, state_file: &Path, log: &Path) -> anyhow::Result<()> {
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
         show) printf 'Id=fake.service\\nLoadState=loaded\\nActiveState=%s\\nMainPID=42\\n' \"$(cat {state})\" ;;\n\
         restart) echo \"$*\" >> {log}; echo restarted ;;\n\
         *) exit 1 ;;\n\
         esac\n",
        state = state_file.display(),
        log = log.display()
    );
    let path = bin.join("systemctl");
    std::fs::write(&path, script)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Replaces the state atomically, so `systemctl show` never reads it half-written.
fn set_state(state: &Path, value: &str) -> anyhow::Result<()> {
    let tmp = state.with_extension("tmp");
    std::fs::write(&tmp, value)?;
    std::fs::rename(&tmp, state)?;
    Ok(())
}

#[tokio::test]
async fn service_transitions_become_events_and_restart_runs_systemctl() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin)?;
    let state = dir.path().join("state");
    let log = dir.path().join("systemctl.log");
    set_state(&state, "active")?;
    fake_systemctl(&bin, &state, &log)?;
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::set_var("PATH", format!("{}:{path}", bin.display()));

    let gw = Gateway::start(Mode::Accept).await?;
    let config = AgentConfig {
        server_url: gw.url(),
        agent_id: Some("ev-agent".into()),
        state_dir: Some(dir.path().join("agent")),
        collect_interval: Some(Duration::from_secs_f64(0.1)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        services: vec!["fake".into()],
        allowed_commands: vec!["restart_service".into()],
        inventory: false,
        ..AgentConfig::default()
    };
    let agent = Agent::new(config)?;
    let stats = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));

    wait_until("a collection", || stats.snapshot().collected >= 2).await?;
    set_state(&state, "failed")?;
    wait_until("service_failed", || {
        gw.events().iter().any(|e| e.kind == "service_failed")
    })
    .await?;
    set_state(&state, "active")?;
    wait_until("service_recovered", || {
        gw.events().iter().any(|e| e.kind == "service_recovered")
    })
    .await?;

    wait_until("the socket", || gw.ws_open() >= 1).await?;
    gw.push(&ServerMessage::Command {
        command: CommandSpec {
            command_id: "restart-1".into(),
            command_type: "restart_service".into(),
            args: [("service".to_owned(), "fake.service".to_owned())].into(),
            timeout_secs: 10,
            requested_at: Utc::now(),
        },
    });
    wait_until("the restart result", || {
        gw.ws_results().iter().any(|r| r.command_id == "restart-1")
    })
    .await?;
    let _ = stop.send(());
    run.await??;

    let events = gw.events();
    assert!(events.iter().any(|e| e.kind == "agent_started"));
    let failed = events.iter().find(|e| e.kind == "service_failed").unwrap();
    assert_eq!(failed.severity, "critical");
    assert_eq!(failed.attributes["service"], "fake");
    assert_eq!(failed.attributes["previous"], "running");
    assert_eq!(failed.attributes["current"], "failed");
    let recovered = events
        .iter()
        .find(|e| e.kind == "service_recovered")
        .unwrap();
    assert_eq!(recovered.severity, "info");
    assert_eq!(recovered.attributes["previous"], "failed");
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind.starts_with("service_"))
            .count(),
        2,
        "one event per transition: {events:?}"
    );

    let result = gw
        .ws_results()
        .into_iter()
        .find(|r| r.command_id == "restart-1")
        .unwrap();
    assert_eq!(result.status, "succeeded", "{result:?}");
    assert_eq!(result.stdout, "restarted\n");
    assert_eq!(std::fs::read_to_string(&log)?, "restart -- fake\n");
    Ok(())
}
