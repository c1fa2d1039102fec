//! `fleetstream`: one binary for every role.
//!
//! * `fleetstream up` runs gateway, processors, projections and the query API in one
//!   process on the embedded defaults (event log, SQLite read model and time-series store
//!   in a data directory); `--with-local-agent` adds an agent reporting this machine.
//! * `fleetstream gateway | processors | projections | api` run one role each, for a
//!   distributed deployment on Kafka, Postgres and ScyllaDB (`api` serves the query API
//!   from a projections configuration without running the projection loops).
//! * `fleetstream agent` runs the agent.

mod deadletter;
mod replay;
mod roles;
mod tasks;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// jemalloc instead of the system allocator: the roles allocate and free many small
/// buffers per record (JSON, Avro, rows), and under load glibc's malloc took about a
/// sixth of `up`'s CPU time (docs/BENCHMARKS.md). Not on MSVC, which jemalloc lacks.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
#[command(
    name = "fleetstream",
    version,
    about = "Fleetstream: telemetry pipeline for server fleets",
    long_about = "Fleetstream: agents push metrics through an ingest gateway into an event log \
(Kafka, or an embedded log); stream processors raise alerts; projections keep a read model \
and time series that the query API serves.\n\n\
Quick start: `fleetstream up --with-local-agent`, then open the printed API URL.\n\n\
Every role reads a TOML file (--config) and environment variables FLEET_<ROLE>__<KEY> \
(for example FLEET_GATEWAY__LISTEN=0.0.0.0:8080). See config/*.example.toml for every key.",
    after_help = "Run `fleetstream <COMMAND> --help` for the options of each command."
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "FLEET_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every server role in one process on the embedded defaults.
    #[command(
        long_about = "Run the gateway, the stream processors, the notifier, the projections \
and the query API in one process. The event log, the read model (SQLite) and the time-series store \
live in --data-dir; nothing else is needed.\n\n\
Settings come from --config (a TOML file with [gateway], [processors], [projections], \
[notifier] and [agent] tables, each as in config/<role>.example.toml) and environment variables \
FLEET_<ROLE>__<KEY>. Storage URLs are always the embedded ones in --data-dir."
    )]
    Up(UpArgs),
    /// Run the ingest gateway (agents push here).
    Gateway(RoleArgs),
    /// Run the stream processors (alert evaluation).
    Processors(RoleArgs),
    /// Run the notifier: alerts to webhooks, Slack-compatible webhooks and email.
    #[command(
        long_about = "Run the notifier: read fleet.alerts.v1 in its own consumer group, match \
each alert against its tenant's silences and notification routes (made through the API), \
and deliver it to the routes' channels (webhook with a signed, versioned JSON body; \
Slack-compatible incoming webhook; email over SMTP), grouped per route, at least once with \
the alert event id as idempotency key, retried with back-off and jitter up to \
`max-attempts`, then given up with a dead letter. Every attempt is recorded in the read \
model (GET /api/v1/notification-deliveries). /healthz, /readyz and /metrics on `listen`.\n\n\
Settings: --config (see config/notifier.example.toml) and FLEET_NOTIFIER__<KEY>."
    )]
    Notifier(RoleArgs),
    /// Run the projections (read model, time series) and, unless `serve-api = false`,
    /// the query API.
    #[command(
        long_about = "Run the read-model and time-series projections: consume the topics \
into the read model and the time-series store, and remove time series and agent events \
past retention (`events-retention`) every `retention-sweep-interval`. With `serve-api = true` (the default) `listen` also \
serves the query API and the admin routes; with `serve-api = false` it answers only \
/healthz, /readyz and /metrics, and `fleetstream api` instances serve the API.\n\n\
Settings: --config (see config/projections.example.toml) and FLEET_PROJECTIONS__<KEY>."
    )]
    Projections(RoleArgs),
    /// Run the query API and admin routes only (no projection loops).
    #[command(
        long_about = "Serve the query API, the admin routes, the dashboard, /healthz, /readyz \
and /metrics on `listen`, over the stores of a projections configuration, without running the \
projection loops (run `fleetstream projections` with `serve-api = false` beside it). \
Any number of instances can run against a shared read model (postgres://) and time-series \
store (scylla://); an embedded file:// time-series store can be open in one process only. \
/readyz reports whether the event log, where commands and rules are written, answers.\n\n\
Settings: the projections keys, from --config (see config/projections.example.toml; \
`serve-api`, the consumer groups, `batch-size` and `retention-sweep-interval` are unused) \
and FLEET_PROJECTIONS__<KEY>."
    )]
    Api(RoleArgs),
    /// Run the agent on this machine.
    Agent(AgentArgs),
    // about and long_about: on `DeadletterArgs` (a doc comment here would hide the latter).
    Deadletter(deadletter::DeadletterArgs),
    // replay, verify, export: their help (about, long_about, examples) is on the Args.
    Replay(replay::ReplayArgs),
    Verify(replay::VerifyArgs),
    Export(replay::ExportArgs),
    /// Give an embedded time-series store's free space back to the file system.
    #[command(
        long_about = "Compact the embedded time-series store (its key file chunks.redb and its blob files in blobs/): copy the live chunks of every blob file holding replaced or expired ones to new files and delete the old, then move the key file's pages to the front and truncate it. While running, the store deletes blob files with nothing live and compacts those at least half garbage (and at least 1 MiB); a clean stop of `up` or `projections` compacts blob files at least a tenth garbage (up to 1 GiB of them) and a key file up to 1 GiB more than half free; this command does it all, for any size (the size printed after is the closed store's: redb's close writes its allocator state, which on a key file with little free space can grow it again). The store must not be open: stop the process that serves it first.

Example: fleetstream compact fleetstream-data   (an `up` data directory)
         fleetstream compact /var/lib/fleetstream/timeseries"
    )]
    Compact(CompactArgs),
}

#[derive(Debug, clap::Args)]
struct CompactArgs {
    /// The time-series directory (holding chunks.redb), or an `up` data directory.
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Data directory for the embedded log and stores (created if missing).
    #[arg(long, env = "FLEET_DATA_DIR", default_value = "fleetstream-data")]
    data_dir: PathBuf,
    /// TOML file with [gateway], [processors], [projections] and [agent] tables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Also run an agent in this process that reports this machine to the gateway.
    #[arg(long)]
    with_local_agent: bool,
}

#[derive(Debug, clap::Args)]
struct RoleArgs {
    /// The role's TOML file (see config/<role>.example.toml); defaults apply without one.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AgentArgs {
    #[command(subcommand)]
    action: Option<AgentAction>,
    /// The agent's TOML file (see agent/agent.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Gateway URL, overriding the file (for example http://gateway:8080).
    #[arg(long)]
    server: Option<String>,
}

#[derive(Debug, Subcommand)]
enum AgentAction {
    /// Enroll this machine with a one-time registration token; stores the agent's
    /// credential (mode 0600) in the state directory for `fleetstream agent` to use.
    Enroll {
        /// The registration token an administrator created for this machine.
        #[arg(long, env = "FLEET_AGENT_TOKEN", hide_env_values = true)]
        token: String,
        /// Gateway URL, overriding the file.
        #[arg(long)]
        server: Option<String>,
        /// The agent's TOML file (its `state-dir` says where the credential goes).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    fleet_service::init_tracing(matches!(cli.log_format, LogFormat::Json));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Up(a) => roles::up(a.data_dir, a.config, a.with_local_agent).await,
            Command::Gateway(a) => roles::gateway(a.config).await,
            Command::Processors(a) => roles::processors(a.config).await,
            Command::Projections(a) => roles::projections(a.config).await,
            Command::Api(a) => roles::api(a.config).await,
            Command::Notifier(a) => roles::notifier(a.config).await,
            Command::Agent(AgentArgs {
                action:
                    Some(AgentAction::Enroll {
                        token,
                        server,
                        config,
                    }),
                ..
            }) => roles::agent_enroll(config, server, token).await,
            Command::Agent(a) => roles::agent(a.config, a.server).await,
            Command::Deadletter(a) => deadletter::run(a).await,
            Command::Replay(a) => replay::replay(a).await,
            Command::Verify(a) => replay::verify(a).await,
            Command::Export(a) => replay::export(a).await,
            Command::Compact(a) => roles::compact(a.dir).await,
        }
    })
}

/// The command a command line (without the program name) names, for tests of the argument
/// parsing.
#[cfg(test)]
fn parse(line: &str) -> Result<Command, clap::Error> {
    Cli::try_parse_from(std::iter::once("fleetstream").chain(line.split_whitespace()))
        .map(|cli| cli.command)
}
