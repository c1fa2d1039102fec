//! Runs the agent alone, without the `fleetstream` CLI, until Ctrl-C or SIGTERM: for
//! profiling (RSS, CPU) and trying configurations.
//!
//! ```text
//! cargo run -p fleet-agent --release --example run_agent -- path/to/agent.toml
//! ```
//!
//! `RUST_LOG` sets the log filter (default `fleet_agent=info`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fleet_agent=info".into()),
        )
        .init();
    let path = std::env::args_os().nth(1).map(PathBuf::from);
    let config = fleet_agent::AgentConfig::load(path.as_deref())?;
    let stats = fleet_agent::run(config, async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    })
    .await?;
    tracing::info!(?stats, "Final counters.");
    Ok(())
}
