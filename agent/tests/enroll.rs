//! Enrollment against a stub gateway: the credential file (mode 0600) round-trips, a 4xx
//! surfaces the server's message, a token is not spent when the state directory is
//! unusable; an enrolled agent sends `Authorization: Bearer` on metrics and heartbeats,
//! takes its id and intervals from the enrollment, and keeps its reports through 401s.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_agent::{Agent, AgentConfig, EnrollError, Enrollment, Stats};
use support::{
    assert_strictly_increasing, init_tracing, registration, spooled, wait_until, Gateway, Mode,
    RegisterMode,
};
use tokio::sync::oneshot;

#[tokio::test]
async fn enroll_stores_private_credentials_that_round_trip() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    gw.set_register(RegisterMode::Accept(registration(
        "agent-42",
        "cred-secret-42",
        15.0,
    )));
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");

    let enrollment = fleet_agent::enroll(&gw.url(), " token-1 \n", &state_dir).await?;
    assert_eq!(enrollment.agent_id, "agent-42");
    assert_eq!(enrollment.credential, "cred-secret-42");
    assert_eq!(enrollment.tenant_id, "tenant-1");
    assert_eq!(enrollment.location_id.as_deref(), Some("loc-1"));
    assert_eq!(enrollment.server_url, gw.url());
    assert_eq!(enrollment.config.heartbeat_interval_secs, 15.0);

    let path = Enrollment::path(&state_dir);
    assert_eq!(path, state_dir.join("credentials.json"));
    let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "credentials.json is private: {mode:o}");
    let dir_mode = std::fs::metadata(&state_dir)?.permissions().mode() & 0o777;
    assert_eq!(dir_mode, 0o700, "state directory is private: {dir_mode:o}");
    assert_eq!(Enrollment::load(&state_dir)?, Some(enrollment.clone()));
    assert!(!format!("{enrollment:?}").contains("cred-secret-42"));

    let requests = gw.registrations();
    assert_eq!(requests.len(), 1);
    assert_eq!(requests[0].token, "token-1", "token sent trimmed");
    let facts = &requests[0].facts;
    assert_eq!(facts.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(facts.os_type, std::env::consts::OS);
    assert!(facts.cpu_cores > 0 && facts.memory_total_bytes > 0);
    Ok(())
}

#[tokio::test]
async fn refused_registration_shows_the_server_message_and_stores_nothing() -> anyhow::Result<()> {
    let gw = Gateway::start(Mode::Accept).await?;
    gw.set_register(RegisterMode::Refuse(
        410,
        "token_expired",
        "registration token expired",
    ));
    let dir = tempfile::tempdir()?;
    let err = fleet_agent::enroll(&gw.url(), "old-token", dir.path())
        .await
        .expect_err("refused");
    assert!(
        matches!(&err, EnrollError::Refused { status: 410, code, .. } if code == "token_expired"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("registration token expired"),
        "{err}"
    );
    assert_eq!(Enrollment::load(dir.path())?, None);

    let err = fleet_agent::enroll(&gw.url(), "  ", dir.path())
        .await
        .expect_err("empty token");
    assert!(matches!(err, EnrollError::EmptyToken), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn an_unusable_state_dir_does_not_spend_the_token() -> anyhow::Result<()> {
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "")?;
    let err = fleet_agent::enroll(&gw.url(), "token", &file.join("state"))
        .await
        .expect_err("unusable state dir");
    assert!(matches!(err, EnrollError::State { .. }), "{err:?}");
    assert!(gw.registrations().is_empty(), "the token was not sent");
    Ok(())
}

/// Enrolls an agent in `state_dir` with intervals of 0.1 s.
async fn enrolled(gw: &Gateway, state_dir: &Path) -> anyhow::Result<Enrollment> {
    gw.set_register(RegisterMode::Accept(registration(
        "enrolled-agent",
        "cred-xyz",
        0.1,
    )));
    Ok(fleet_agent::enroll(&gw.url(), "token", state_dir).await?)
}

/// An enrolled agent's configuration: server URL, id and intervals are left unset so they
/// come from the enrollment.
fn enrolled_config(state_dir: &Path) -> AgentConfig {
    AgentConfig {
        state_dir: Some(state_dir.to_owned()),
        batch_max_reports: 2,
        retry_initial_backoff: Duration::from_secs_f64(0.05),
        retry_max_backoff: Duration::from_secs_f64(0.2),
        auth_retry: Duration::from_secs_f64(0.1),
        shutdown_flush_timeout: Duration::from_secs_f64(0.5),
        // These tests follow the HTTP path (agent/tests/ws.rs the socket). The stub's
        // suggested socket URL (another port) no longer diverts the agent from it.
        websocket: false,
        ..AgentConfig::default()
    }
}

#[tokio::test]
async fn enrolled_agent_authenticates_metrics_and_heartbeats() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Accept).await?;
    let dir = tempfile::tempdir()?;
    enrolled(&gw, dir.path()).await?;

    let agent = Agent::new(enrolled_config(dir.path()))?;
    assert!(agent.is_enrolled());
    assert_eq!(agent.agent_id(), "enrolled-agent");
    assert_eq!(agent.server_url(), gw.url(), "the enrollment's URL");
    assert_eq!(agent.collect_interval().as_millis(), 100, "remote config");
    assert_eq!(agent.heartbeat_interval().as_millis(), 100, "remote config");
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let waited = wait_until("metrics and heartbeats", || {
        gw.seen().len() >= 2 && gw.heartbeats().len() >= 2
    })
    .await;
    let _ = stop.send(());
    run.await??;
    waited?;

    for r in gw.seen() {
        assert_eq!(r.agent_id, "enrolled-agent");
        assert_eq!(r.authorization.as_deref(), Some("Bearer cred-xyz"));
    }
    let beats = gw.heartbeats();
    for h in &beats {
        assert_eq!(h.agent_id, "enrolled-agent");
        assert_eq!(h.authorization.as_deref(), Some("Bearer cred-xyz"));
    }
    let seqs: Vec<u64> = beats.iter().map(|h| h.heartbeat.sequence).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    Ok(())
}

#[tokio::test]
async fn unauthorized_keeps_every_report_spooled_until_accepted() -> anyhow::Result<()> {
    init_tracing();
    let gw = Gateway::start(Mode::Unauthorized).await?;
    let dir = tempfile::tempdir()?;
    enrolled(&gw, dir.path()).await?;

    let agent = Agent::new(enrolled_config(dir.path()))?;
    let stats: Arc<Stats> = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let waited = wait_until("several 401s", || {
        let s = stats.snapshot();
        s.auth_failures >= 3 && s.collected >= 4
    })
    .await;
    let _ = stop.send(());
    let first = run.await??;
    waited?;
    assert_eq!(
        (first.sent, first.rejected, first.dropped_oldest, first.lost),
        (0, 0, 0, 0)
    );
    assert!(first.heartbeat_failures >= 1);
    assert_eq!(first.spooled, first.collected);
    assert!(gw.seen().iter().all(|r| r.status == 401));
    let kept = spooled(dir.path())?;
    assert_eq!(kept.len() as u64, first.collected);

    // The credential is accepted again (agent reactivated): everything arrives, once.
    gw.set_mode(Mode::Accept);
    let agent = Agent::new(enrolled_config(dir.path()))?;
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let waited = wait_until("the kept reports", || {
        let delivered = gw.delivered(202);
        kept.iter().all(|t| delivered.contains(t))
    })
    .await;
    let _ = stop.send(());
    run.await??;
    waited?;
    let delivered = gw.delivered(202);
    assert_strictly_increasing("delivered", &delivered);
    assert_eq!(&delivered[..kept.len()], &kept[..]);
    Ok(())
}
