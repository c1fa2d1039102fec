//! The agent's own life as events: `agent_started` says how the previous run ended
//! (none, clean, unclean), a clean stop sends `agent_stopped`.

mod support;

use std::path::Path;
use std::time::Duration;

use fleet_agent::{Agent, AgentConfig};
use fleet_schemas::api::{AgentMessage, EventIn};
use support::{init_tracing, wait_until, Gateway, Mode};
use tokio::sync::oneshot;

/// The events of `kind` the gateway received, in time order, each once: a delivery
/// repeated after a slow answer (the agent retries when its request times out) is the
/// same event, with the same time.
fn events_of(gw: &Gateway, kind: &str) -> Vec<EventIn> {
    let mut events: Vec<EventIn> = gw.events().into_iter().filter(|e| e.kind == kind).collect();
    events.sort_by_key(|e| e.occurred_at);
    events.dedup_by_key(|e| e.occurred_at);
    events
}

/// One `agent_started` per run, in the order of the runs.
fn started(gw: &Gateway) -> Vec<EventIn> {
    events_of(gw, "agent_started")
}

fn config(gw: &Gateway, state: &Path) -> AgentConfig {
    AgentConfig {
        server_url: gw.url(),
        agent_id: Some("life-agent".into()),
        state_dir: Some(state.to_owned()),
        collect_interval: Some(Duration::from_secs_f64(0.2)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        inventory: false,
        ..AgentConfig::default()
    }
}

/// Runs an agent until it sent its `agent_started` (the `n`th the gateway saw), then stops
/// it cleanly.
async fn run_once(gw: &Gateway, state: &Path, n: usize) -> anyhow::Result<()> {
    let agent = Agent::new(config(gw, state))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    wait_until("agent_started", || started(gw).len() >= n).await?;
    let _ = stop.send(());
    run.await??;
    Ok(())
}

#[tokio::test]
async fn starts_and_stops_are_events_that_say_how_the_last_run_ended() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("agent");
    let gw = Gateway::start(Mode::Accept).await?;

    run_once(&gw, &state, 1).await?;
    let first = &started(&gw)[0];
    assert_eq!(first.attributes["previous_stop"], "none");
    assert_eq!(first.severity, "info");
    let stopped = events_of(&gw, "agent_stopped");
    assert_eq!(
        stopped.len(),
        1,
        "a clean stop sends agent_stopped: {stopped:?}"
    );
    assert_eq!(stopped[0].attributes["agent_id"], "life-agent");

    run_once(&gw, &state, 2).await?;
    assert_eq!(started(&gw)[1].attributes["previous_stop"], "clean");

    // A run that never stopped (kill -9, power loss) left `running`.
    let file = state.join(fleet_agent::events::RUN_STATE_FILE);
    let left: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
    assert_eq!(left["running"], false, "a clean stop writes it: {left}");
    let mut crashed = left.clone();
    crashed["running"] = serde_json::Value::Bool(true);
    std::fs::write(&file, serde_json::to_vec(&crashed)?)?;
    run_once(&gw, &state, 3).await?;
    let third = &started(&gw)[2];
    assert_eq!(third.attributes["previous_stop"], "unclean");
    assert_eq!(third.severity, "warning");
    assert!(
        !gw.events().iter().any(|e| e.kind == "host_rebooted"),
        "the host did not reboot between these runs"
    );
    Ok(())
}

/// A report goes as soon as it is collected: it reaches the gateway before the next
/// collection (the default has no flush interval; with one equal to the collect interval,
/// as before, the first report waited for the second collection).
#[tokio::test]
async fn a_report_is_sent_as_soon_as_it_is_collected() -> anyhow::Result<()> {
    init_tracing();
    let dir = tempfile::tempdir()?;
    let gw = Gateway::start(Mode::Accept).await?;
    let mut config = config(&gw, &dir.path().join("agent"));
    config.collect_interval = Some(Duration::from_secs(2));
    let agent = Agent::new(config)?;
    let stats = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let reports = || {
        let over_ws: usize = gw
            .ws_frames()
            .into_iter()
            .map(|f| match f {
                AgentMessage::Metrics { reports, .. } => reports.len(),
                _ => 0,
            })
            .sum();
        over_ws
            + gw.seen()
                .iter()
                .map(|r| r.batch.reports.len())
                .sum::<usize>()
    };
    let waited = wait_until("the first report", || reports() >= 1).await;
    let collected = stats.snapshot().collected;
    let arrived = reports();
    let _ = stop.send(());
    run.await??;
    waited?;
    assert_eq!(
        (collected, arrived),
        (1, 1),
        "the first report arrives before the second collection"
    );
    Ok(())
}
