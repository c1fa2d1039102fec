//! `fleetstream-agent`: the Fleetstream agent alone, for the machines of a fleet.
//!
//! The all-in-one `fleetstream` binary runs the same agent as `fleetstream agent`; this
//! one carries no server code, so it is a fraction of the size and of the memory.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "fleetstream-agent",
    version,
    about = "The Fleetstream agent: collects this machine's metrics, heartbeats, events and \
software inventory, spools them on disk and sends them to the ingest gateway; runs the \
remote commands its configuration allows.",
    long_about = None,
    after_help = "First enroll with a one-time token from your administrator:\n  \
fleetstream-agent enroll --server https://gateway:8080 --token fst_...\nthen run:\n  \
fleetstream-agent --config /etc/fleetstream/agent.toml\n\n\
Every setting is documented in agent.example.toml; environment variables \
FLEET_AGENT__<KEY> override the file (e.g. FLEET_AGENT__COLLECT_INTERVAL_SECS=30). \
RUST_LOG sets the log filter (default info); FLEET_LOG_FORMAT=json writes JSON lines."
)]
struct Cli {
    #[command(subcommand)]
    action: Option<Action>,
    /// The agent's TOML file (see agent.example.toml). Without one, defaults and
    /// FLEET_AGENT__* variables apply.
    #[arg(long, short, global = true, env = "FLEET_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The gateway URL (overrides `server-url`).
    #[arg(long, global = true)]
    server: Option<String>,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Enroll this machine with a one-time registration token; stores the credential
    /// (mode 0600) in the state directory.
    Enroll {
        /// The registration token (`fst_...`).
        #[arg(long, env = "FLEET_AGENT_TOKEN", hide_env_values = true)]
        token: String,
    },
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("FLEET_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[allow(clippy::print_stdout)] // enrollment's outcome is the command's output
fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.action {
            Some(Action::Enroll { token }) => {
                let text = fleet_agent::cli::enroll_and_describe(
                    "fleetstream-agent",
                    cli.config.as_deref(),
                    cli.server.as_deref(),
                    &token,
                )
                .await?;
                println!("{text}");
                Ok(())
            }
            None => {
                fleet_agent::cli::run_until_signal(cli.config.as_deref(), cli.server.as_deref())
                    .await
                    .map(|_| ())
            }
        }
    })
}
