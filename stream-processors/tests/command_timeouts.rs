//! Command timeouts over the real embedded log: a command without result times out
//! once; a completed one, and one still waiting for approval, never; neither a restart
//! nor a replay in a new group writes a second TIMED_OUT.

mod support;

use fleet_stream_processors::config::CommandTimeoutsSettings;
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::EventLog;
use fleet_schemas::{fixtures, ids, topics, CommandEvent, CommandEventKind};
use fleet_stream_processors::command_timeouts::run_command_timeouts;
use fleet_stream_processors::ProcessorsConfig;
use support::{open_log, produce, read_all, wait_committed, wait_for, Running};

fn config(group: &str) -> ProcessorsConfig {
    ProcessorsConfig {
        command_timeouts: CommandTimeoutsSettings {
            group: group.into(),
            grace: Duration::from_secs(1),
            check_interval: Duration::from_secs(1),
            ..CommandTimeoutsSettings::default()
        },
        ..ProcessorsConfig::default()
    }
}

fn start(log: &Arc<dyn EventLog>, group: &str) -> Running {
    let log = log.clone();
    let cfg = config(group);
    Running::start(move |ready, shutdown| {
        run_command_timeouts(log, fleet_schemas::Wire::plain(), cfg, ready, shutdown)
    })
}

fn command(id: &str, kind: CommandEventKind, approval: bool) -> CommandEvent {
    let now = fleet_schemas::time::now_micros();
    let mut ev = fixtures::command_completed("t1", "a1", now);
    ev.command_id = id.into();
    ev.event_id = ids::v5(&[id, &format!("{kind:?}"), "0"]).to_string();
    ev.kind = kind;
    ev.timeout_secs = 1;
    ev.requires_approval = approval;
    if kind != CommandEventKind::Completed {
        ev.status = None;
        ev.exit_code = None;
        ev.stdout = None;
        ev.stderr = None;
    }
    ev
}

fn timed_out(events: &[CommandEvent]) -> Vec<&str> {
    events
        .iter()
        .filter(|e| e.kind == CommandEventKind::TimedOut)
        .map(|e| e.command_id.as_str())
        .collect()
}

/// Gives a running processor several checks to do something wrong.
async fn let_it_check() {
    tokio::time::sleep(Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_out_once_and_never_a_completed_command() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let (_dir, log) = open_log().await;
    let l = log.as_ref();
    produce(l, &command("c-lost", CommandEventKind::Requested, false)).await;
    produce(l, &command("c-done", CommandEventKind::Requested, false)).await;
    produce(l, &command("c-done", CommandEventKind::Dispatched, false)).await;
    produce(l, &command("c-done", CommandEventKind::Completed, false)).await;
    produce(l, &command("c-waits", CommandEventKind::Requested, true)).await;

    let p = start(&log, "ct-1");
    p.ready().await;
    let events = wait_for::<CommandEvent>(l, "TIMED_OUT", |e| !timed_out(e).is_empty()).await;
    let t = events
        .iter()
        .find(|e| e.kind == CommandEventKind::TimedOut)
        .expect("timed out");
    assert_eq!(t.command_id, "c-lost");
    assert_eq!(
        t.event_id,
        ids::v5(&["c-lost", "TIMED_OUT", "0"]).to_string()
    );
    assert_eq!(t.agent_id, "a1");
    let_it_check().await;
    p.stop().await;

    // Restart in the same group, then a new group replaying the lookback window.
    let p = start(&log, "ct-1");
    p.ready().await;
    let_it_check().await;
    p.stop().await;
    let p = start(&log, "ct-replay");
    p.ready().await;
    wait_committed(l, "ct-replay", topics::COMMANDS).await;
    let_it_check().await;
    p.stop().await;

    let events = read_all::<CommandEvent>(l).await;
    assert_eq!(timed_out(&events), vec!["c-lost"], "{events:?}");

    let rendered = prometheus.render();
    for name in fleet_stream_processors::metrics::COMMAND_TIMEOUTS {
        assert!(rendered.contains(name), "/metrics lacks {name}");
    }
}
