//! Starting each role, alone or all together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use fleet_event_log::EventLog;
use fleet_ingest_gateway::GatewayConfig;
use fleet_projections::ProjectionsConfig;
use fleet_query_api::ApiConfig;
use fleet_schemas::Wire;
use fleet_service::config::{load, load_part, load_with_table, redact_url, EventLogSettings};
use fleet_service::endpoints::ReadyCheck;
use fleet_stream_processors::ProcessorsConfig;
use tokio::sync::watch;

use crate::tasks::Tasks;

/// A shutdown signal every task can wait on.
#[derive(Clone)]
struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }
    async fn wait(mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}

fn on_signal(tx: watch::Sender<bool>) {
    tokio::spawn(async move {
        fleet_service::shutdown_signal().await;
        let _ = tx.send(true);
    });
}

pub(crate) async fn open_log(settings: &EventLogSettings) -> anyhow::Result<Arc<dyn EventLog>> {
    let url = &settings.url;
    let opts = settings
        .options
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    fleet_event_log::open(url, &opts)
        .await
        .with_context(|| format!("opening the event log at {url}"))
}

/// The role's [`Wire`], built once at start and passed to everything that writes or reads
/// records: with `schema-registry-url` set, every record schema is registered (under
/// `<topic>-value`, BACKWARD) and records are written in the Confluent wire format; empty,
/// they are single-object encoded.
async fn role_wire(url: &str) -> anyhow::Result<Wire> {
    let url = url.trim();
    if url.is_empty() {
        return Ok(Wire::plain());
    }
    fleet_schema_registry::start(url)
        .await
        .with_context(|| format!("schema-registry-url = {url:?}: registering the record schemas"))
}

/// Checks the log every few seconds; the flag backs `/readyz`.
fn watch_log(log: Arc<dyn EventLog>, flag: Arc<AtomicBool>) {
    tokio::spawn(async move {
        loop {
            let ok = matches!(
                tokio::time::timeout(
                    Duration::from_secs(5),
                    log.partition_count(fleet_schemas::topics::METRICS)
                )
                .await,
                Ok(Ok(_))
            );
            flag.store(ok, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_secs(if ok { 5 } else { 1 })).await;
        }
    });
}

/// Serves `app` on `addr` with the role's listener settings (timeouts, connection cap,
/// TLS) until shutdown; `server` names it in logs and the `fleet_http_*` metrics.
async fn serve(
    server: &'static str,
    addr: SocketAddr,
    http: fleet_service::serve::HttpSettings,
    app: Router,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let listener = fleet_service::serve::HttpServer::bind(server, addr, &http).await?;
    listener
        .serve(app, shutdown.wait())
        .await
        .with_context(|| format!("{server} server"))
}

fn ready_flag(flag: &Arc<AtomicBool>, what: &'static str) -> ReadyCheck {
    let flag = flag.clone();
    Arc::new(move || {
        if flag.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(format!("{what} not reachable"))
        }
    })
}

pub(crate) async fn gateway(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg: GatewayConfig = load("gateway", config.as_deref())?;
    cfg.check_public_url().map_err(anyhow::Error::msg)?;
    let wire = role_wire(&cfg.event_log.schema_registry_url).await?;
    let log = open_log(&cfg.event_log).await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let registry = if cfg.registry.is_empty() {
        None
    } else {
        let r = fleet_registry::open_registry(&cfg.registry)
            .await
            .with_context(|| format!("opening the registry ({})", redact_url(&cfg.registry)))?;
        Some(r)
    };
    if registry.is_none() && cfg.auth == fleet_ingest_gateway::AuthMode::Required {
        anyhow::bail!(
            "auth = \"required\" needs a registry to check agent credentials: set `registry` \
             (postgres://... or sqlite://path) in the gateway configuration, or auth = \"off\" \
             for a single machine"
        );
    }
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);
    run_gateway(cfg, log, wire, registry, shutdown).await
}

async fn run_gateway(
    cfg: GatewayConfig,
    log: Arc<dyn EventLog>,
    wire: Wire,
    registry: Option<Arc<dyn fleet_registry::Registry>>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let log_ok = Arc::new(AtomicBool::new(true));
    watch_log(log.clone(), log_ok.clone());
    let addr = cfg.listen;
    let http = cfg.http.clone();
    let state = fleet_ingest_gateway::GatewayState::with_registry(log.clone(), wire, registry, cfg);
    let housekeeping = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            housekeeping.forget_idle();
        }
    });
    // Deactivations drop cached credentials and close sockets; the dispatcher delivers
    // commands (both follow their topic with a throw-away group).
    let watcher = fleet_ingest_gateway::watch_deactivations(state.clone(), shutdown.clone().wait());
    let dispatcher =
        fleet_ingest_gateway::commands::run_dispatcher(state.clone(), shutdown.clone().wait());
    // Remote configurations: pushed to sockets, and answered to heartbeats.
    let configs = fleet_ingest_gateway::remote_config::run_config_watcher(
        state.clone(),
        shutdown.clone().wait(),
    );
    let app = fleet_ingest_gateway::app(state).merge(fleet_service::endpoints::router(
        "gateway",
        ready_flag(&log_ok, "event log"),
    ));
    Tasks::new()
        .add(
            "gateway server",
            serve("gateway", addr, http, app, shutdown),
        )
        .add("deactivation watcher", watcher)
        .add("command dispatcher", dispatcher)
        .add("remote-configuration watcher", configs)
        .run()
        .await
}

pub(crate) async fn processors(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg: ProcessorsConfig = load("processors", config.as_deref())?;
    let wire = role_wire(&cfg.event_log.schema_registry_url).await?;
    let log = open_log(&cfg.event_log).await?;
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);
    let ready = ProcessorsReady::default();
    let ops = serve(
        "processors",
        cfg.listen,
        cfg.http.clone(),
        fleet_service::endpoints::router("processors", ready.check()),
        shutdown.clone(),
    );
    let all = run_processors(log, wire, cfg, ready, shutdown);
    Tasks::new()
        .add("processors server", ops)
        .add("processors", all)
        .run()
        .await
}

/// Readiness of each processor of the processors role.
#[derive(Clone, Default)]
struct ProcessorsReady {
    evaluator: fleet_stream_processors::Readiness,
    ticketer: fleet_stream_processors::Readiness,
    liveness: fleet_stream_processors::Readiness,
    command_timeouts: fleet_stream_processors::Readiness,
}

impl ProcessorsReady {
    /// `/readyz`: ready once every processor rebuilt its state and consumes.
    fn check(&self) -> ReadyCheck {
        let r = self.clone();
        Arc::new(move || {
            let waiting: Vec<&str> = [
                ("alert evaluator", &r.evaluator),
                ("ticketer", &r.ticketer),
                ("liveness", &r.liveness),
                ("command timeouts", &r.command_timeouts),
            ]
            .into_iter()
            .filter(|(_, ready)| !ready.is_ready())
            .map(|(name, _)| name)
            .collect();
            if waiting.is_empty() {
                Ok(())
            } else {
                Err(format!("not running: {}", waiting.join(", ")))
            }
        })
    }
}

/// The processors role: alert evaluator, ticketer, liveness and command timeouts, until
/// shutdown; the first to fail stops the others.
async fn run_processors(
    log: Arc<dyn EventLog>,
    wire: Wire,
    cfg: ProcessorsConfig,
    ready: ProcessorsReady,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    use fleet_stream_processors::{command_timeouts, liveness, ticketer};
    let eval = fleet_stream_processors::run_alert_evaluator(
        log.clone(),
        wire.clone(),
        cfg.clone(),
        ready.evaluator,
        shutdown.clone().wait(),
    );
    let tickets = ticketer::run_ticketer(
        log.clone(),
        wire.clone(),
        cfg.clone(),
        ready.ticketer,
        shutdown.clone().wait(),
    );
    let live = liveness::run_liveness(
        log.clone(),
        wire.clone(),
        cfg.clone(),
        ready.liveness,
        shutdown.clone().wait(),
    );
    let timeouts = command_timeouts::run_command_timeouts(
        log,
        wire,
        cfg,
        ready.command_timeouts,
        shutdown.wait(),
    );
    Tasks::new()
        .add("alert evaluator", eval)
        .add("ticketer", tickets)
        .add("liveness", live)
        .add("command timeouts", timeouts)
        .run()
        .await
}

/// `fleetstream notifier`: alerts to the channels of each tenant's routes, with
/// `/healthz`, `/readyz` and `/metrics` on `listen`. Ready while its consumer runs.
pub(crate) async fn notifier(config: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg: fleet_notifier::NotifierConfig = load("notifier", config.as_deref())?;
    cfg.check().map_err(anyhow::Error::msg)?;
    let wire = role_wire(&cfg.event_log.schema_registry_url).await?;
    let log = open_log(&cfg.event_log).await?;
    let store: Arc<dyn fleet_read_model::ReadModel> = Arc::new(
        fleet_read_model::SqlReadModel::connect(&cfg.read_model)
            .await
            .with_context(|| format!("opening the read model ({})", redact_url(&cfg.read_model)))?,
    );
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);
    let ready = fleet_notifier::Readiness::default();
    let r = ready.clone();
    let check: ReadyCheck = Arc::new(move || {
        if r.is_ready() {
            Ok(())
        } else {
            Err("notifier not consuming yet".into())
        }
    });
    let ops = serve(
        "notifier",
        cfg.listen,
        cfg.http.clone(),
        fleet_service::endpoints::router("notifier", check),
        shutdown.clone(),
    );
    let run = fleet_notifier::run_notifier(log, wire, store, cfg, ready, shutdown.wait());
    Tasks::new()
        .add("notifier server", ops)
        .add("notifier", run)
        .run()
        .await
}

struct Stores {
    read_model: Arc<dyn fleet_read_model::ReadModel>,
    registry: Arc<dyn fleet_registry::Registry>,
    timeseries: Arc<fleet_timeseries::TimeSeries>,
}

async fn open_stores(cfg: &ProjectionsConfig) -> anyhow::Result<Stores> {
    // The registry lives in the read model's database: one pool serves both.
    let db = fleet_read_model::Database::connect(&cfg.read_model)
        .await
        .with_context(|| format!("opening the read model ({})", redact_url(&cfg.read_model)))?;
    let registry: Arc<dyn fleet_registry::Registry> = Arc::new(
        fleet_registry::SqlRegistry::open(db.clone())
            .await
            .with_context(|| format!("opening the registry ({})", redact_url(&cfg.read_model)))?,
    );
    let read_model: Arc<dyn fleet_read_model::ReadModel> = Arc::new(
        fleet_read_model::SqlReadModel::open(db)
            .await
            .with_context(|| format!("opening the read model ({})", redact_url(&cfg.read_model)))?,
    );
    let timeseries = fleet_timeseries::open(
        &cfg.timeseries,
        cfg.timeseries_retention,
        cfg.timeseries_engine.clone(),
    )
    .await
    .with_context(|| format!("opening the time-series store ({})", cfg.timeseries))?;
    Ok(Stores {
        read_model,
        registry,
        timeseries,
    })
}

/// The projections' settings of a projections file and its `[api]` table (the query
/// API's, environment `FLEET_API__*`).
fn load_projections(file: Option<&Path>) -> anyhow::Result<(ProjectionsConfig, ApiConfig)> {
    let cfg = load_part("projections", file, None, &["api"])?;
    let api = load_with_table("api", file, Some("api"))?;
    Ok((cfg, api))
}

pub(crate) async fn projections(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (cfg, api) = load_projections(config.as_deref())?;
    let wire = role_wire(&cfg.event_log.schema_registry_url).await?;
    let log = open_log(&cfg.event_log).await?;
    let stores = open_stores(&cfg).await?;
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);
    run_projections(cfg, &api, log, wire, stores, shutdown).await
}

/// The query API and the admin routes over the stores (without `/healthz`, `/readyz`,
/// `/metrics`): served by `fleetstream api`, and by `fleetstream projections` unless
/// `serve-api = false`. Refuses a weak `admin-api-key`.
fn query_api(
    cfg: &ApiConfig,
    log: &Arc<dyn EventLog>,
    wire: &Wire,
    stores: &Stores,
) -> anyhow::Result<Router> {
    fleet_query_api::auth::check_admin_key(&cfg.admin_api_key)
        .map_err(|e| anyhow::anyhow!("api.admin-api-key: {e}"))?;
    let state = fleet_query_api::AppState::new(
        stores.registry.clone(),
        stores.read_model.clone(),
        stores.timeseries.clone() as Arc<dyn fleet_timeseries::TimeSeriesStore>,
        log.clone(),
        wire.clone(),
    )
    .with_config(cfg);
    let housekeeping = state.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            housekeeping.forget_idle();
        }
    });
    Ok(fleet_query_api::app(state))
}

async fn run_projections(
    cfg: ProjectionsConfig,
    api: &ApiConfig,
    log: Arc<dyn EventLog>,
    wire: Wire,
    stores: Stores,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let ready = fleet_projections::project::Readiness::default();
    let r = ready.clone();
    let check: ReadyCheck = Arc::new(move || r.check());
    let ops = fleet_service::endpoints::router("projections", check);
    let app = if cfg.serve_api {
        query_api(api, &log, &wire, &stores)?.merge(ops)
    } else {
        ops
    };
    let server = serve(
        "projections",
        cfg.listen,
        cfg.http.clone(),
        app,
        shutdown.clone(),
    );
    let sweeps = fleet_projections::project::run_retention_sweeps(
        stores.timeseries.clone() as Arc<dyn fleet_timeseries::TimeSeriesStore>,
        stores.read_model.clone(),
        cfg.clone(),
        shutdown.clone().wait(),
    );
    let rm = fleet_projections::project::run_read_model(
        log.clone(),
        wire.clone(),
        stores.read_model,
        cfg.clone(),
        ready.clone(),
        shutdown.clone().wait(),
    );
    let ts = fleet_projections::timeseries::run_timeseries(
        log,
        wire,
        stores.timeseries,
        cfg,
        ready,
        shutdown.wait(),
    );
    Tasks::new()
        .add("projections server", server)
        .add("read-model projection", rm)
        .add("time-series projection", ts)
        .add("retention sweeps", sweeps)
        .run()
        .await
}

/// `fleetstream api`: the query API, the admin routes and `/healthz`, `/readyz`,
/// `/metrics` over the stores of a projections configuration, without projection loops.
/// Ready while the event log (where commands and rules are written) answers.
pub(crate) async fn api(config: Option<PathBuf>) -> anyhow::Result<()> {
    let (cfg, api) = load_projections(config.as_deref())?;
    let wire = role_wire(&cfg.event_log.schema_registry_url).await?;
    let log = open_log(&cfg.event_log).await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let stores = open_stores(&cfg).await?;
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);
    let log_ok = Arc::new(AtomicBool::new(true));
    watch_log(log.clone(), log_ok.clone());
    let app = query_api(&api, &log, &wire, &stores)?.merge(fleet_service::endpoints::router(
        "api",
        ready_flag(&log_ok, "event log"),
    ));
    serve("api", cfg.listen, cfg.http.clone(), app, shutdown).await
}

pub(crate) async fn agent(config: Option<PathBuf>, server: Option<String>) -> anyhow::Result<()> {
    fleet_agent::cli::run_until_signal(config.as_deref(), server.as_deref())
        .await
        .map(|_| ())
}

#[allow(clippy::print_stdout)] // the outcome is the command's output
pub(crate) async fn agent_enroll(
    config: Option<PathBuf>,
    server: Option<String>,
    token: String,
) -> anyhow::Result<()> {
    let text = fleet_agent::cli::enroll_and_describe(
        "fleetstream agent",
        config.as_deref(),
        server.as_deref(),
        &token,
    )
    .await?;
    println!("{text}");
    Ok(())
}

/// Enrolls the local agent of `fleetstream up` once: a "default" tenant and a short-lived
/// token are made in the registry, then the agent redeems it through the gateway like
/// any other agent.
async fn enroll_local_agent(
    registry: &dyn fleet_registry::Registry,
    log: &dyn EventLog,
    wire: &Wire,
    gateway_url: &str,
    state_dir: &Path,
) -> anyhow::Result<()> {
    use fleet_registry::{hash_secret, new_secret, NewToken};
    if fleet_agent::enroll::Enrollment::load(state_dir)?.is_some() {
        return Ok(());
    }
    let now = fleet_schemas::time::now_micros();
    let tenant = match registry
        .list_tenants()
        .await?
        .into_iter()
        .find(|t| t.name == "default")
    {
        Some(t) => t,
        None => {
            let t = registry.create_tenant("default", now).await?;
            // Like a tenant made through the API, it starts with the default rule set.
            fleet_query_api::routes::rules::write_default_rules(
                log,
                wire,
                &t.tenant_id,
                "fleetstream up",
            )
            .await
            .map_err(|e| anyhow::anyhow!("writing the default rules: {e}"))?;
            t
        }
    };
    let secret = new_secret("fst_");
    let token = NewToken {
        tenant_id: tenant.tenant_id,
        location_id: None,
        device_name: Some("local".into()),
        expires_at: now + 600_000_000,
        created_by: "fleetstream up".into(),
        created_at: now,
    };
    registry.create_token(&token, hash_secret(&secret)).await?;
    // The gateway starts beside us: wait until it listens.
    let addr = gateway_url.trim_start_matches("http://").to_owned();
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet_agent::enroll::enroll(gateway_url, &secret, state_dir)
        .await
        .context("enrolling the local agent")?;
    Ok(())
}

fn data_url(dir: &Path, name: &str) -> anyhow::Result<String> {
    let p = dir.join(name);
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("data directory {} is not valid UTF-8", dir.display()))
}

#[allow(clippy::print_stdout)] // the URLs are the command's output
pub(crate) async fn up(
    data_dir: PathBuf,
    config: Option<PathBuf>,
    with_local_agent: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let data_dir = data_dir.canonicalize()?;
    let file = config.as_deref();
    let mut gw: GatewayConfig = load_with_table("gateway", file, Some("gateway"))?;
    let mut pr: ProcessorsConfig = load_with_table("processors", file, Some("processors"))?;
    let mut pj: ProjectionsConfig = load_with_table("projections", file, Some("projections"))?;
    let mut api: ApiConfig = load_with_table("api", file, Some("api"))?;
    let mut nt: fleet_notifier::NotifierConfig =
        load_with_table("notifier", file, Some("notifier"))?;
    // One process, one log and one framing: the shared [event-log] table, on the
    // embedded log of the data directory.
    let mut event_log: EventLogSettings = load_with_table("event-log", file, Some("event-log"))?;
    event_log.url = format!("file://{}", data_url(&data_dir, "log")?);
    for (role, own) in [
        ("gateway", &mut gw.event_log),
        ("processors", &mut pr.event_log),
        ("projections", &mut pj.event_log),
        ("notifier", &mut nt.event_log),
    ] {
        if *own != EventLogSettings::default() {
            tracing::warn!(
                role,
                "`up` uses the shared [event-log] table: ignoring [{role}.event-log]."
            );
        }
        own.clone_from(&event_log);
    }
    pj.read_model = format!("sqlite://{}", data_url(&data_dir, "readmodel.db")?);
    pj.timeseries = format!("file://{}", data_url(&data_dir, "timeseries")?);
    // One process: nothing else would serve the API.
    pj.serve_api = true;
    // On loopback, plain HTTP: the local agent and the printed URLs are http://.
    for (role, http) in [
        ("gateway", &mut gw.http),
        ("projections", &mut pj.http),
        ("processors", &mut pr.http),
    ] {
        if http.tls_cert.take().is_some() | http.tls_key.take().is_some() {
            tracing::warn!(
                role,
                "`up` serves plain HTTP on loopback: ignoring http.tls-cert and http.tls-key."
            );
        }
    }

    let gateway_url = format!("http://{}", gw.listen);
    if api.gateway_url == ApiConfig::default().gateway_url {
        api.gateway_url = gateway_url.clone();
    }
    if api.admin_api_key.is_empty() {
        api.admin_api_key = admin_key(&data_dir)?;
    }

    let wire = role_wire(&event_log.schema_registry_url).await?;
    let log = open_log(&event_log).await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let stores = open_stores(&pj).await?;
    let (tx, shutdown) = Shutdown::new();
    on_signal(tx);

    let api_url = format!("http://{}", pj.listen);
    println!("Fleetstream is up (data in {}).", data_dir.display());
    println!(
        "  ingest gateway: {gateway_url}   (agents: fleetstream agent --server {gateway_url})"
    );
    println!("  dashboard:      {api_url}/dashboard/   (sign in with the admin key, or open {api_url}/dashboard/#key=$(cat {}))",
        data_dir.join(ADMIN_KEY_FILE).display()
    );
    println!("  query API:      {api_url}/api/v1/agents   (OpenAPI: {api_url}/api/openapi.json)");
    println!("  metrics:        {gateway_url}/metrics  {api_url}/metrics");
    println!(
        "  admin key:      in {} (Authorization: Bearer <key> on every API route)",
        data_dir.join(ADMIN_KEY_FILE).display()
    );
    println!("Press Ctrl-C to stop.");

    let pr_ready = ProcessorsReady::default();
    let registry = stores.registry.clone();
    let gateway = run_gateway(
        gw,
        log.clone(),
        wire.clone(),
        Some(registry.clone()),
        shutdown.clone(),
    );
    let processors = run_processors(log.clone(), wire.clone(), pr, pr_ready, shutdown.clone());
    // The notifier reads channels and writes deliveries in up's read model.
    let notifier = fleet_notifier::run_notifier(
        log.clone(),
        wire.clone(),
        stores.read_model.clone(),
        nt,
        fleet_notifier::Readiness::default(),
        shutdown.clone().wait(),
    );
    let rules_log = log.clone();
    let (pj_wire, pj_shutdown) = (wire.clone(), shutdown.clone());
    let projections =
        async move { run_projections(pj, &api, log, pj_wire, stores, pj_shutdown).await };
    let agent_file = config.clone();
    let agent = async move {
        if !with_local_agent {
            return Ok(());
        }
        let mut cfg: fleet_agent::AgentConfig = if let Some(f) = agent_file.as_deref() {
            load_with_table("agent", Some(f), Some("agent"))?
        } else {
            fleet_agent::AgentConfig::load(None)?
        };
        cfg.server_url = gateway_url.clone();
        // One local agent: send each report as soon as it is collected, so the machine
        // shows up within one interval (a fleet agent batches to save requests).
        if cfg.batch_max_reports == fleet_agent::AgentConfig::default().batch_max_reports {
            cfg.batch_max_reports = 1;
        }
        let state_dir = cfg
            .state_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("agent"));
        cfg.state_dir = Some(state_dir.clone());
        enroll_local_agent(
            registry.as_ref(),
            rules_log.as_ref(),
            &wire,
            &gateway_url,
            &state_dir,
        )
        .await?;
        let agent_id = fleet_agent::enroll::Enrollment::load(&state_dir)?
            .map(|e| e.agent_id)
            .unwrap_or_else(|| cfg.resolved_agent_id());
        println!(
            "  local agent:    {agent_id} reporting every {:?}",
            cfg.collect_interval()
        );
        fleet_agent::run(cfg, shutdown.clone().wait())
            .await
            .map(|_| ())
    };
    // The first role to fail stops the others: a half-running system is worse than none.
    Tasks::new()
        .add("gateway", gateway)
        .add("processors", processors)
        .add("projections", projections)
        .add("notifier", notifier)
        .add("local agent", agent)
        .run()
        .await
}

/// `fleetstream compact`: compacts the embedded time-series store in `dir` (or in an `up`
/// data directory's `timeseries/`), printing the file's size before and after.
#[allow(clippy::print_stdout)] // the sizes are the command's output
pub(crate) async fn compact(dir: PathBuf) -> anyhow::Result<()> {
    use fleet_timeseries::embedded::{EmbeddedChunks, FILE_NAME};
    let dir = if dir.join(FILE_NAME).exists() {
        dir
    } else if dir.join("timeseries").join(FILE_NAME).exists() {
        dir.join("timeseries")
    } else {
        anyhow::bail!(
            "no time-series store in {}: give the directory holding {FILE_NAME} or an `up` data directory",
            dir.display()
        );
    };
    let c = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut store = EmbeddedChunks::open(&dir)?;
        println!("compacting {} ...", dir.display());
        let mut c = store.compact()?;
        // The close writes redb's allocator state, which may grow a full key file again.
        drop(store);
        c.after = fleet_timeseries::embedded::disk_bytes(&dir)?;
        Ok(c)
    })
    .await??;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "compacted: {:.1} MiB -> {:.1} MiB ({:.1} MiB given back)",
        mib(c.before),
        mib(c.after),
        mib(c.before.saturating_sub(c.after))
    );
    Ok(())
}

/// File in the data directory holding the generated admin key.
const ADMIN_KEY_FILE: &str = "admin-key";

/// The admin key of an `up` data directory (see
/// [`fleet_query_api::auth::admin_key_file`]).
fn admin_key(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    fleet_query_api::auth::admin_key_file(&path)
        .with_context(|| format!("the admin key file {}", path.display()))
}
