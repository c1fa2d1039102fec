//! The run loop against a real HTTP server on 127.0.0.1:0: retries after 503 deliver every
//! report exactly once and in order; a 400 drops the batch and counts it; an unreachable
//! gateway means "retry later".

mod support;

use std::sync::Arc;
use std::time::Duration;

use fleet_agent::{
    Agent, AgentConfig, HttpTransport, SendOutcome, Stats, StatsSnapshot, Transport,
};
use fleet_schemas::api::MetricBatch;
use support::{init_tracing, wait_until, Gateway, Mode, Recorded};
use tokio::sync::oneshot;

fn config(gw: &Gateway, state_dir: &std::path::Path) -> AgentConfig {
    AgentConfig {
        server_url: gw.url(),
        agent_id: Some("it-agent".into()),
        state_dir: Some(state_dir.to_owned()),
        collect_interval: Some(Duration::from_secs_f64(0.2)),
        heartbeat_interval: Some(Duration::from_secs_f64(3600.0)),
        batch_max_reports: 3,
        request_timeout: Duration::from_secs_f64(5.0),
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.5),
        shutdown_flush_timeout: Duration::from_secs_f64(5.0),
        // These tests are about the HTTP path (the WebSocket one is in tests/ws.rs).
        websocket: false,
        ..AgentConfig::default()
    }
}

/// Runs the agent until `done(gateway, stats)` holds, then shuts it down.
async fn run_agent_until(
    config: AgentConfig,
    gw: &Gateway,
    done: impl Fn(&[Recorded], &StatsSnapshot) -> bool,
) -> anyhow::Result<StatsSnapshot> {
    let agent = Agent::new(config)?;
    let stats: Arc<Stats> = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let waited = wait_until("the agent to make progress", || {
        done(&gw.seen(), &stats.snapshot())
    })
    .await;
    let _ = stop.send(());
    let snapshot = run.await??;
    waited?;
    Ok(snapshot)
}

#[tokio::test]
async fn after_503s_every_report_arrives_exactly_once_in_order() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::UnavailableFirst(2)).await?;
    let dir = tempfile::tempdir()?;

    let snapshot = run_agent_until(config(&gw, dir.path()), &gw, |seen, _| {
        let accepted = seen.iter().filter(|r| r.status == 202);
        accepted.clone().count() >= 2 && accepted.map(|r| r.batch.reports.len()).sum::<usize>() >= 5
    })
    .await?;

    let seen = gw.seen();
    assert!(seen.iter().all(|r| r.agent_id == "it-agent"));
    assert!(
        seen.iter().all(|r| r.authorization.is_none()),
        "not enrolled: no Authorization header"
    );
    assert_eq!(seen.iter().filter(|r| r.status == 503).count(), 2);
    let delivered = gw.delivered(202);
    support::assert_strictly_increasing("delivered", &delivered);
    // The batches refused with 503 were delivered later.
    for r in seen.iter().filter(|r| r.status == 503) {
        for rep in &r.batch.reports {
            assert!(delivered.contains(&rep.collected_at));
        }
    }
    assert!(seen.iter().all(|r| r.batch.reports.len() <= 3));
    assert_eq!(delivered.len() as u64, snapshot.collected);
    assert_eq!(snapshot.sent, snapshot.collected);
    assert_eq!(snapshot.retries, 2);
    assert_eq!(
        (
            snapshot.rejected,
            snapshot.dropped_oldest,
            snapshot.lost,
            snapshot.spooled
        ),
        (0, 0, 0, 0)
    );
    Ok(())
}

#[tokio::test]
async fn bad_request_drops_the_batch_and_counts_it() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::BadRequest).await?;
    let dir = tempfile::tempdir()?;

    let config = AgentConfig {
        batch_max_reports: 1,
        shutdown_flush_timeout: Duration::from_secs_f64(0.5),
        ..config(&gw, dir.path())
    };
    let snapshot = run_agent_until(config, &gw, |_, s| s.rejected_batches >= 3).await?;

    let seen = gw.seen();
    assert!(seen.iter().all(|r| r.status == 400));
    // Never retried: every request carries a different report.
    let times = gw.delivered(400);
    support::assert_strictly_increasing("rejected", &times);
    assert_eq!(snapshot.sent, 0);
    assert_eq!(snapshot.retries, 0);
    assert_eq!(snapshot.rejected, times.len() as u64);
    assert_eq!(snapshot.rejected_batches, seen.len() as u64);
    assert_eq!(snapshot.collected, snapshot.rejected + snapshot.spooled);
    Ok(())
}

#[tokio::test]
async fn unreachable_gateway_means_retry_later() -> anyhow::Result<()> {
    // Bind then drop a listener to get a port nothing listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let transport = HttpTransport::new(
        &format!("http://{addr}"),
        Duration::from_secs(2),
        &fleet_agent::ClientTls::system_roots()?,
    )?;
    let outcome = transport
        .send("it-agent", &MetricBatch { reports: vec![] })
        .await;
    assert!(
        matches!(
            outcome,
            SendOutcome::RetryLater {
                retry_after: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    Ok(())
}
