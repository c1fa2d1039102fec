//! The agent's command line, shared by the `fleetstream-agent` binary and the
//! `fleetstream agent` subcommand of the all-in-one binary.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::{enroll, AgentConfig, StatsSnapshot};

/// Loads the configuration (compiled-in defaults, then `config`, then `FLEET_AGENT__*`)
/// and applies a `--server` override.
pub fn load_config(config: Option<&Path>, server: Option<&str>) -> anyhow::Result<AgentConfig> {
    let mut cfg = AgentConfig::load(config)?;
    if let Some(s) = server {
        cfg.server_url = s.to_owned();
    }
    Ok(cfg)
}

/// Resolves when the process gets Ctrl-C or SIGTERM (systemd's stop).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "No SIGTERM handler; stopping on Ctrl-C only.");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("Shutdown requested.");
}

/// Runs the agent until Ctrl-C or SIGTERM.
pub async fn run_until_signal(
    config: Option<&Path>,
    server: Option<&str>,
) -> anyhow::Result<StatsSnapshot> {
    let cfg = load_config(config, server)?;
    crate::run(cfg, shutdown_signal()).await
}

/// Enrolls this machine with `token` and says what happened and how to start the agent
/// (`program` is how the caller is invoked, for example `fleetstream-agent`).
pub async fn enroll_and_describe(
    program: &str,
    config: Option<&Path>,
    server: Option<&str>,
    token: &str,
) -> anyhow::Result<String> {
    let cfg = AgentConfig::load(config)?;
    let server = server.map_or_else(|| cfg.server_url.clone(), str::to_owned);
    let state_dir = cfg.resolved_state_dir();
    let tls = crate::ClientTls::for_config(&cfg)?;
    let e = enroll::enroll_with_tls(&server, token, &state_dir, &tls)
        .await
        .with_context(|| format!("enrolling with {server}"))?;
    Ok(format!(
        "Enrolled as agent {} in tenant {}; credential stored in {}.\nStart the agent with: {program}{}",
        e.agent_id,
        e.tenant_id,
        enroll::Enrollment::path(&state_dir).display(),
        config
            .map(|c: &Path| format!(" --config {}", PathBuf::from(c).display()))
            .unwrap_or_default()
    ))
}
