//! The agent against a WebSocket stub gateway on 127.0.0.1:0: reports over the socket,
//! HTTP fallback and reconnects, commands (output, exit code, timeouts, refusals, once
//! only), inventory, events and pushed intervals.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fleet_agent::{Agent, AgentConfig, Stats, StatsSnapshot};
use fleet_schemas::api::{AgentMessage, CommandResultIn, CommandSpec, ConfigUpdate, ServerMessage};
use support::{init_tracing, wait_until, Gateway, Mode};
use tokio::sync::oneshot;

fn config(gw: &Gateway, state_dir: &Path) -> AgentConfig {
    AgentConfig {
        server_url: gw.url(),
        agent_id: Some("ws-agent".into()),
        state_dir: Some(state_dir.to_owned()),
        collect_interval: Some(Duration::from_secs_f64(0.2)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        batch_max_reports: 3,
        request_timeout: Duration::from_secs_f64(5.0),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        shutdown_flush_timeout: Duration::from_secs_f64(5.0),
        websocket_ping_interval: Duration::from_secs_f64(0.3),
        websocket_reconnect_initial: Duration::from_secs_f64(0.05),
        websocket_reconnect_max: Duration::from_secs_f64(0.2),
        command_poll_interval: Duration::from_secs_f64(3600.0),
        inventory: false,
        ..AgentConfig::default()
    }
}

/// A running agent; `stop` shuts it down and returns its final counters.
struct Running {
    stats: Arc<Stats>,
    stop: oneshot::Sender<()>,
    run: tokio::task::JoinHandle<anyhow::Result<StatsSnapshot>>,
}

impl Running {
    fn start(config: AgentConfig) -> anyhow::Result<Self> {
        let agent = Agent::new(config)?;
        let stats = agent.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let run = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Ok(Self { stats, stop, run })
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    async fn stop(self) -> anyhow::Result<StatsSnapshot> {
        let _ = self.stop.send(());
        self.run.await?
    }
}

fn command(id: &str, kind: &str, args: &[(&str, &str)], timeout_secs: u64) -> ServerMessage {
    ServerMessage::Command {
        command: CommandSpec {
            command_id: id.into(),
            command_type: kind.into(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout_secs,
            requested_at: Utc::now(),
        },
    }
}

async fn connected(gw: &Gateway) -> anyhow::Result<()> {
    wait_until("the agent's socket", || gw.ws_open() >= 1).await
}

async fn result_of(gw: &Gateway, id: &str) -> anyhow::Result<CommandResultIn> {
    wait_until("the command result", || {
        gw.ws_results().iter().any(|r| r.command_id == id)
    })
    .await?;
    Ok(gw
        .ws_results()
        .into_iter()
        .find(|r| r.command_id == id)
        .unwrap())
}

#[tokio::test]
async fn metrics_go_over_the_socket_are_acked_and_the_spool_empties() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let agent = Running::start(config(&gw, dir.path()))?;
    wait_until("reports over the socket", || gw.ws_delivered().len() >= 6).await?;
    let live = agent.stats();
    let snapshot = agent.stop().await?;

    // Pings were answered all along: the socket never dropped.
    assert_eq!((live.ws_connects, live.ws_disconnects), (1, 0), "{live:?}");
    assert_eq!(gw.ws_upgrades(), vec![Some("ws-agent".to_owned())]);
    assert!(gw.seen().is_empty(), "no report went over HTTP");
    let delivered = gw.ws_delivered();
    support::assert_strictly_increasing("over the socket", &delivered);
    assert_eq!(delivered.len() as u64, snapshot.collected);
    assert_eq!(snapshot.sent, snapshot.collected);
    assert_eq!((snapshot.spooled, snapshot.lost), (0, 0));
    assert!(
        support::spooled(dir.path())?.is_empty(),
        "the spool is empty"
    );
    // The start event arrived (over HTTP when sent before the socket was up).
    let on_socket = gw.ws_frames().iter().any(|f| {
        matches!(
            f,
            AgentMessage::Events { events, .. } if events.iter().any(|e| e.kind == "agent_started")
        )
    });
    assert!(on_socket || gw.http_events().iter().any(|e| e.kind == "agent_started"));
    Ok(())
}

#[tokio::test]
async fn a_dropped_socket_falls_back_to_http_then_reconnects() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let agent = Running::start(config(&gw, dir.path()))?;
    wait_until("reports over the socket", || !gw.ws_delivered().is_empty()).await?;

    gw.set_ws_refuse(Some(503));
    gw.drop_sockets();
    wait_until("reports over HTTP", || gw.delivered(202).len() >= 6).await?;
    assert!(agent.stats().http_fallbacks > 0);

    let before = gw.ws_delivered().len();
    gw.set_ws_refuse(None);
    wait_until("a reconnect", || agent.stats().ws_connects >= 2).await?;
    wait_until("reports over the new socket", || {
        gw.ws_delivered().len() >= before + 3
    })
    .await?;
    let snapshot = agent.stop().await?;

    assert!(
        snapshot.ws_connects >= 2 && snapshot.ws_disconnects >= 1,
        "{snapshot:?}"
    );
    // Every report arrived (at least once: one in flight when the socket dropped may
    // arrive on both paths), and nothing is left.
    let mut all: Vec<_> = gw.ws_delivered();
    all.extend(gw.delivered(202));
    all.sort();
    all.dedup();
    assert_eq!(all.len() as u64, snapshot.collected);
    assert_eq!(snapshot.sent + snapshot.spooled, snapshot.collected);
    assert_eq!(snapshot.spooled, 0);
    Ok(())
}

fn with_scripts(mut c: AgentConfig, allowed: &[&str], scripts: &[(&str, &str)]) -> AgentConfig {
    c.allowed_commands = allowed.iter().map(|s| (*s).to_owned()).collect();
    c.scripts = scripts
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect::<BTreeMap<_, _>>();
    c
}

#[tokio::test]
async fn run_script_streams_progress_then_reports_exit_code_and_output() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let c = with_scripts(
        config(&gw, dir.path()),
        &["run_script"],
        &[("hello", "echo hello; exit 3")],
    );
    let agent = Running::start(c)?;
    connected(&gw).await?;
    gw.push(&command("cmd-1", "run_script", &[("script", "hello")], 30));
    let result = result_of(&gw, "cmd-1").await?;
    agent.stop().await?;

    assert_eq!(result.status, "failed");
    assert_eq!(result.exit_code, Some(3));
    assert_eq!(result.stdout, "hello\n");
    assert!(!result.output_truncated);
    assert!(result.started_at.is_some());
    let frames = gw.ws_frames();
    let result_at = frames
        .iter()
        .position(|f| matches!(f, AgentMessage::CommandResult { .. }))
        .unwrap();
    let progress: Vec<_> = frames[..result_at]
        .iter()
        .filter_map(|f| match f {
            AgentMessage::CommandProgress { progress, .. } if progress.command_id == "cmd-1" => {
                Some(progress.clone())
            }
            _ => None,
        })
        .collect();
    assert!(
        !progress.is_empty(),
        "progress frames come before the result"
    );
    assert!(progress
        .windows(2)
        .all(|w| w[1].sequence == w[0].sequence + 1));
    let streamed: String = progress
        .iter()
        .filter(|p| p.stream == "stdout")
        .map(|p| p.chunk.as_str())
        .collect();
    assert_eq!(streamed, "hello\n");
    Ok(())
}

/// True once `pid` no longer runs (gone, or a zombie waiting for its reaper).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

#[tokio::test]
async fn a_command_past_its_timeout_is_killed_with_its_process_group() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    // The sleep is a grandchild (background job): only a group kill reaches it.
    let c = with_scripts(
        config(&gw, dir.path()),
        &["run_script"],
        &[("slow", "sleep 30 & echo $!; wait")],
    );
    let agent = Running::start(c)?;
    connected(&gw).await?;
    gw.push(&command("cmd-slow", "run_script", &[("script", "slow")], 1));
    let result = result_of(&gw, "cmd-slow").await?;
    agent.stop().await?;

    assert_eq!(result.status, "timed_out", "{result:?}");
    assert_eq!(result.exit_code, None);
    let pid: u32 = result.stdout.trim().parse()?;
    wait_until("the sleep to be killed", || process_gone(pid)).await?;
    Ok(())
}

#[tokio::test]
async fn a_command_off_the_allow_list_is_refused_without_running() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("ran");
    let line = format!("touch {}", marker.display());
    // The script exists, but run_script is not allowed (default: diagnostics only).
    let c = with_scripts(
        config(&gw, dir.path()),
        &["collect_diagnostics"],
        &[("touch", &line)],
    );
    let agent = Running::start(c)?;
    connected(&gw).await?;
    gw.push(&command("cmd-no", "run_script", &[("script", "touch")], 10));
    gw.push(&command("cmd-unknown", "shell", &[("line", "id")], 10));
    let result = result_of(&gw, "cmd-no").await?;
    let unknown = result_of(&gw, "cmd-unknown").await?;
    let snapshot = agent.stop().await?;

    assert_eq!(result.status, "refused");
    assert!(result.message.unwrap().contains("allowed-commands"));
    assert_eq!(result.started_at, None);
    assert_eq!(unknown.status, "refused");
    assert!(!marker.exists(), "nothing ran");
    assert_eq!(snapshot.commands_run, 0);
    assert_eq!(snapshot.commands_refused, 2);
    Ok(())
}

#[tokio::test]
async fn the_same_command_id_runs_once_even_across_a_restart() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("runs.log");
    let line = format!("echo run >> {}; echo done", log.display());
    let c = with_scripts(config(&gw, dir.path()), &["run_script"], &[("once", &line)]);

    let agent = Running::start(c.clone())?;
    connected(&gw).await?;
    gw.push(&command(
        "cmd-once",
        "run_script",
        &[("script", "once")],
        10,
    ));
    result_of(&gw, "cmd-once").await?;
    gw.push(&command(
        "cmd-once",
        "run_script",
        &[("script", "once")],
        10,
    ));
    wait_until("the result sent again", || gw.ws_results().len() >= 2).await?;
    let first = agent.stop().await?;
    assert_eq!((first.commands_run, first.commands_duplicate), (1, 1));

    // A new agent on the same state directory.
    let agent = Running::start(c)?;
    wait_until("the new socket", || {
        gw.ws_upgrades().len() >= 2 && gw.ws_open() >= 1
    })
    .await?;
    gw.push(&command(
        "cmd-once",
        "run_script",
        &[("script", "once")],
        10,
    ));
    wait_until("the result sent a third time", || {
        gw.ws_results().len() >= 3
    })
    .await?;
    let second = agent.stop().await?;
    assert_eq!(second.commands_run, 0);

    assert_eq!(std::fs::read_to_string(&log)?, "run\n", "ran exactly once");
    let results = gw.ws_results();
    assert!(
        results.iter().all(|r| r == &results[0]),
        "the stored result each time"
    );
    assert_eq!(results[0].stdout, "done\n");
    assert_eq!(results[0].status, "succeeded");
    Ok(())
}

#[tokio::test]
async fn inventory_goes_over_the_socket() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let c = AgentConfig {
        inventory: true,
        ..config(&gw, dir.path())
    };
    let agent = Running::start(c)?;
    let inventory = || {
        gw.ws_frames().into_iter().find_map(|f| match f {
            AgentMessage::Inventory { inventory, .. } => Some(inventory),
            _ => None,
        })
    };
    // At start the socket may not be up yet: HTTP is as good.
    // The stub records before it acks: wait for the agent to have the ack.
    wait_until("an acknowledged inventory", || {
        agent.stats().inventories_sent >= 1
    })
    .await?;
    let snapshot = agent.stop().await?;
    let inv = inventory().or_else(|| gw.http_inventory().pop()).unwrap();
    assert!(
        ["dpkg", "rpm", "none"].contains(&inv.source.as_str()),
        "{}",
        inv.source
    );
    assert!(inv.packages.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert_eq!(snapshot.inventories_sent, 1, "sent once: unchanged since");
    Ok(())
}

#[tokio::test]
async fn pushed_config_changes_the_intervals_and_is_persisted() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let c = AgentConfig {
        collect_interval: Some(Duration::from_secs_f64(3600.0)),
        ..config(&gw, dir.path())
    };
    let agent = Running::start(c)?;
    connected(&gw).await?;
    gw.push(&ServerMessage::Config {
        config: ConfigUpdate {
            heartbeat_interval_secs: None,
            metrics_interval_secs: Some(0.1),
            ..ConfigUpdate::default()
        },
    });
    // With a 3600 s interval nothing would be collected; after the change, reports flow.
    wait_until("reports at the new interval", || {
        gw.ws_delivered().len() >= 3
    })
    .await?;
    let snapshot = agent.stop().await?;
    assert_eq!(snapshot.config_updates, 1);
    let stored: ConfigUpdate = serde_json::from_slice(&std::fs::read(
        dir.path().join(fleet_agent::INTERVALS_FILE),
    )?)?;
    assert_eq!(stored.metrics_interval_secs, Some(0.1));
    Ok(())
}

/// The heartbeats the stub got over the socket.
fn ws_heartbeats(gw: &Gateway) -> Vec<fleet_schemas::api::HeartbeatIn> {
    gw.ws_frames()
        .into_iter()
        .filter_map(|f| match f {
            AgentMessage::Heartbeat { heartbeat, .. } => Some(heartbeat),
            _ => None,
        })
        .collect()
}

/// A versioned remote configuration.
fn remote(version: i64, allowed: &[&str]) -> ConfigUpdate {
    ConfigUpdate {
        version: Some(version),
        heartbeat_interval_secs: Some(1.0),
        metrics_interval_secs: Some(1.0),
        services: Some(vec!["fleet-remote-test.service".into()]),
        textfile_dir: None,
        allowed_commands: Some(allowed.iter().map(|s| (*s).to_owned()).collect()),
    }
}

#[tokio::test]
async fn remote_config_applies_persists_is_acked_and_never_widens_the_allow_list(
) -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("ran");
    let line = format!("touch {}", marker.display());
    // Locally: diagnostics and restart_service; run_script is not allowed.
    let c = with_scripts(
        config(&gw, dir.path()),
        &["collect_diagnostics", "restart_service"],
        &[("touch", &line)],
    );
    let agent = Running::start(c)?;
    connected(&gw).await?;
    // Remotely: restart_service and run_script: run_script must stay refused (local
    // bound), collect_diagnostics is narrowed away.
    gw.push(&ServerMessage::Config {
        config: remote(5, &["restart_service", "run_script"]),
    });
    // The heartbeat interval of 1 s (from 3600 s) makes heartbeats flow; they carry the
    // version and the interval.
    wait_until("a heartbeat acknowledging version 5", || {
        ws_heartbeats(&gw)
            .iter()
            .any(|h| h.config_version == Some(5) && h.heartbeat_interval_secs == Some(1.0))
    })
    .await?;
    wait_until("a report watching the remote service", || {
        gw.ws_frames().iter().any(|f| match f {
            AgentMessage::Metrics { reports, .. } => reports.iter().any(|r| {
                r.services
                    .iter()
                    .any(|s| s.name == "fleet-remote-test.service")
            }),
            _ => false,
        })
    })
    .await?;
    gw.push(&command(
        "cmd-script",
        "run_script",
        &[("script", "touch")],
        10,
    ));
    gw.push(&command("cmd-diag", "collect_diagnostics", &[], 10));
    let script = result_of(&gw, "cmd-script").await?;
    let diag = result_of(&gw, "cmd-diag").await?;
    agent.stop().await?;
    assert_eq!(script.status, "refused", "{script:?}");
    assert_eq!(
        diag.status, "refused",
        "narrowed by the remote list: {diag:?}"
    );
    assert!(!marker.exists(), "nothing ran");
    let stored: ConfigUpdate = serde_json::from_slice(&std::fs::read(
        dir.path().join(fleet_agent::REMOTE_CONFIG_FILE),
    )?)?;
    assert_eq!(stored, remote(5, &["restart_service", "run_script"]));

    // After a restart, the persisted version runs and is acknowledged at once.
    let gw2 = Gateway::start(Mode::Accept).await?;
    let agent = Running::start(config(&gw2, dir.path()))?;
    wait_until("the first heartbeat after the restart", || {
        !ws_heartbeats(&gw2).is_empty() || !gw2.heartbeats().is_empty()
    })
    .await?;
    agent.stop().await?;
    let first = ws_heartbeats(&gw2)
        .into_iter()
        .chain(gw2.heartbeats().into_iter().map(|h| h.heartbeat))
        .next()
        .unwrap();
    assert_eq!(first.config_version, Some(5));
    Ok(())
}

#[tokio::test]
async fn an_invalid_remote_config_changes_nothing() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let agent = Running::start(config(&gw, dir.path()))?;
    connected(&gw).await?;
    let mut bad = remote(9, &["restart_service"]);
    bad.services = Some(vec!["--now".into()]);
    gw.push(&ServerMessage::Config { config: bad });
    // Then a valid one of another version, so the test knows the first was handled.
    gw.push(&ServerMessage::Config {
        config: remote(10, &[]),
    });
    wait_until("version 10 acknowledged", || {
        ws_heartbeats(&gw)
            .iter()
            .any(|h| h.config_version == Some(10))
    })
    .await?;
    agent.stop().await?;
    assert!(
        ws_heartbeats(&gw)
            .iter()
            .all(|h| h.config_version != Some(9)),
        "the invalid version never ran"
    );
    Ok(())
}

#[tokio::test]
async fn the_heartbeat_answer_delivers_remote_config_and_an_empty_answer_is_fine(
) -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let c = AgentConfig {
        websocket: false,
        heartbeat_interval: Some(Duration::from_secs_f64(0.2)),
        ..config(&gw, dir.path())
    };
    let agent = Running::start(c)?;
    // An older gateway's empty 202: heartbeats go on, without a version.
    wait_until("heartbeats to an older gateway", || {
        gw.heartbeats().len() >= 2
    })
    .await?;
    assert!(gw
        .heartbeats()
        .iter()
        .all(|h| h.heartbeat.config_version.is_none()));
    gw.set_heartbeat_config(Some(remote(7, &["collect_diagnostics"])));
    wait_until("version 7 acknowledged", || {
        gw.heartbeats()
            .iter()
            .any(|h| h.heartbeat.config_version == Some(7))
    })
    .await?;
    let snapshot = agent.stop().await?;
    // Applied once, though every answer repeats it.
    assert_eq!(snapshot.config_updates, 1);
    Ok(())
}

#[tokio::test]
async fn without_a_socket_commands_are_polled_and_answered_over_http() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    gw.set_pending_commands(vec![CommandSpec {
        command_id: "cmd-diag".into(),
        command_type: "collect_diagnostics".into(),
        args: BTreeMap::new(),
        timeout_secs: 30,
        requested_at: Utc::now(),
    }]);
    let c = AgentConfig {
        websocket: false,
        command_poll_interval: Duration::from_secs_f64(0.2),
        ..config(&gw, dir.path())
    };
    let agent = Running::start(c)?;
    wait_until("the diagnostics result", || !gw.http_results().is_empty()).await?;
    // The gateway keeps listing it; it is not run again.
    wait_until("more polls", || gw.command_polls() >= 3).await?;
    let snapshot = agent.stop().await?;

    let results = gw.http_results();
    assert_eq!(results[0].command_id, "cmd-diag");
    assert_eq!(results[0].status, "succeeded", "{:?}", results[0]);
    assert!(results[0].stdout.contains("== uname -a =="));
    assert!(results[0].stdout.contains("== free -m =="));
    assert_eq!(snapshot.commands_run, 1);
    assert!(!gw.http_progress().is_empty(), "progress over HTTP");
    assert!(gw.ws_upgrades().is_empty(), "websocket = false");
    assert!(gw.http_events().iter().any(|e| e.kind == "agent_started"));
    Ok(())
}
