//! Harness for end-to-end tests: runs the real `fleetstream` binary as separate processes
//! against real services, and talks to it over HTTP only.
//!
//! The binary is `$FLEETSTREAM_BIN` or `target/debug/fleetstream` (build it first:
//! `cargo build -p fleetstream`). Kafka and Postgres come from `FLEET_KAFKA_BROKERS` and
//! `FLEET_POSTGRES_URL` (loopback defaults); start them with `scripts/services.sh up`.
//!
//! For outage tests: [`PrivateKafka`] is a broker of the test's own (from the jars
//! `scripts/services.sh up` cached) that can be stopped and started again;
//! [`GatewayProxy`] sits between an agent and the gateway, records every metric batch and
//! can hold answers back or play an unavailable gateway; [`spool_reports`] reads what an
//! agent's spool holds.

pub mod load;
pub mod victoria;

use std::future::Future;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Path of the binary under test.
pub fn fleetstream_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("FLEETSTREAM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let bin = target.join("debug").join("fleetstream");
    if !bin.exists() {
        bail!(
            "{} not found: build it first with `cargo build -p fleetstream` (scripts/test.sh does)",
            bin.display()
        );
    }
    Ok(bin)
}

/// A fresh admin API key strong enough for the API's start-up check (32+ characters of
/// randomness).
pub fn new_admin_key() -> String {
    format!("fsk_e2e_{}", uuid::Uuid::new_v4().simple())
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The Python interpreter for interop consumers: `$FLEET_PYTHON` (a venv with
/// `fastavro` and `confluent-kafka`, made by `scripts/services.sh up`).
pub fn python_bin() -> anyhow::Result<PathBuf> {
    let p = std::env::var_os("FLEET_PYTHON")
        .map(PathBuf::from)
        .context(
            "FLEET_PYTHON is not set: run `eval \"$(scripts/services.sh env)\"` (after \
         `scripts/services.sh up`, which makes a venv with fastavro and confluent-kafka)",
        )?;
    if !p.exists() {
        bail!(
            "FLEET_PYTHON={} does not exist: run `scripts/services.sh up`",
            p.display()
        );
    }
    Ok(p)
}

/// Kafka brokers for tests.
pub fn kafka_brokers() -> String {
    std::env::var("FLEET_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Postgres URL for tests (a server URL; tests create their own database).
pub fn postgres_url() -> String {
    std::env::var("FLEET_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://fleet:fleet@127.0.0.1:5432/fleet?sslmode=disable".into())
}

/// Fails with instructions when a TCP service is not listening.
pub fn require_service(what: &str, host_port: &str) -> anyhow::Result<()> {
    let addr = host_port.split(',').next().unwrap_or(host_port);
    let ok = std::net::TcpStream::connect_timeout(
        &addr
            .parse()
            .with_context(|| format!("{what} address {addr:?}"))?,
        Duration::from_secs(2),
    )
    .is_ok();
    if !ok {
        bail!("{what} is not reachable at {addr}: start the test services with `scripts/services.sh up` (or run `scripts/test.sh`)");
    }
    Ok(())
}

/// Creates a fresh Postgres database and returns its URL.
pub async fn fresh_database() -> anyhow::Result<String> {
    use sqlx::Connection as _;
    let base = postgres_url();
    let hostport = base
        .split('@')
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("127.0.0.1:5432");
    require_service("PostgreSQL", hostport)?;
    let name = format!("fleet_e2e_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&base)
        .await
        .context("connecting to Postgres")?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let (head, tail) = base
        .split_once('?')
        .map(|(h, t)| (h, Some(t)))
        .unwrap_or((&base, None));
    let prefix = head.rsplit_once('/').map(|(p, _)| p).unwrap_or(head);
    Ok(match tail {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    })
}

/// A running `fleetstream` process; killed on drop. Its output goes to a log file whose
/// tail is printed when a check fails.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `fleetstream <args>` with extra environment.
    pub fn start(
        name: &str,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        Proc::start_program(name, dir, &fleetstream_bin()?, args, env)
    }

    /// Starts another program (a consumer in another language, say) the same way:
    /// output to `{dir}/{name}.log`, killed on drop.
    pub fn start_program(
        name: &str,
        dir: &Path,
        program: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Proc> {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(dir)
            .env("RUST_BACKTRACE", "0")
            .env("RUST_LIB_BACKTRACE", "0")
            .env(
                "RUST_LOG",
                std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The last lines of the process's output.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit; then SIGKILL.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        bail!("{} did not stop within 30 s of SIGTERM; killed", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `check` until it returns `Some`, or fails after `timeout` with `what` and the
/// processes' log tails.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    procs: &[&Proc],
    mut check: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            let mut msg = format!("timed out after {timeout:?} waiting for {what}");
            if let Some(e) = last_err {
                msg.push_str(&format!("\nlast error: {e:#}"));
            }
            for p in procs {
                msg.push_str(&format!(
                    "\n--- {} (last lines) ---\n{}",
                    p.name,
                    p.log_tail(40)
                ));
            }
            bail!(msg);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until `url` (a `/readyz` or health endpoint) answers 2xx, failing early with the
/// logs when one of `procs` exits.
pub async fn wait_ready(url: &str, timeout: Duration, procs: &[&Proc]) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    wait_for(url, timeout, procs, || {
        let client = client.clone();
        async move {
            Ok(client
                .get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ()))
        }
    })
    .await
}

/// GET a JSON document; `None` on 404.
pub async fn get_json(
    client: &reqwest::Client,
    url: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let resp = client.get(url).send().await?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let status = resp.status();
    let body: serde_json::Value = resp.json().await?;
    if !status.is_success() {
        bail!("GET {url}: {status} {body}");
    }
    Ok(Some(body))
}

/// A client for the query API: every request carries `Authorization: Bearer <admin_key>`
/// unless it sets its own (reqwest adds a default header only when the request has none,
/// so `.bearer_auth(agent credential)` for the gateway keeps the agent's).
pub fn api_client(admin_key: &str) -> anyhow::Result<reqwest::Client> {
    let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {admin_key}"))
        .context("the admin key is not a valid header value")?;
    auth.set_sensitive(true);
    let headers = reqwest::header::HeaderMap::from_iter([(reqwest::header::AUTHORIZATION, auth)]);
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .build()?)
}

/// The admin key `fleetstream up` keeps in `<data_dir>/admin-key`, waiting (up to
/// 120 s) for `up` to write it.
pub async fn up_admin_key(data_dir: &Path, procs: &[&Proc]) -> anyhow::Result<String> {
    let path = data_dir.join("admin-key");
    wait_for(
        "`fleetstream up` to write its admin key",
        Duration::from_secs(120),
        procs,
        || async {
            Ok(std::fs::read_to_string(&path)
                .ok()
                .map(|k| k.trim().to_owned())
                .filter(|k| !k.is_empty()))
        },
    )
    .await
}

/// Writes a file in `dir`.
pub fn write_file(dir: &Path, name: &str, text: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path)?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// Output of a `fleetstream` command run to its end.
#[derive(Debug)]
pub struct Finished {
    /// Whether it exited with status 0.
    pub success: bool,
    /// stdout and stderr together.
    pub output: String,
}

/// Runs `fleetstream <args>` to its end (at most 60 s).
pub fn run_to_end(dir: &Path, args: &[&str]) -> anyhow::Result<Finished> {
    let mut child = Command::new(fleetstream_bin()?)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("fleetstream {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    Ok(Finished {
        success: out.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Microseconds since the epoch, now.
pub fn now_micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0),
    )
    .unwrap_or(i64::MAX)
}

/// The last JSON log line of a process (run with `FLEET_LOG_FORMAT=json`) whose message
/// contains `message`.
pub fn last_json_line(proc: &Proc, message: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(&proc.log)?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
        })
        .with_context(|| format!("no log line of {} says {message:?}", proc.name))
}

impl Proc {
    /// The name the process was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file its stdout and stderr go to (appended to across restarts under one name).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Waits up to `timeout` for the process to exit on its own and returns its status;
    /// after that it is killed and this fails with the log tail.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "{} did not exit within {timeout:?}; killed\n--- last lines ---\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, and waits for the exit: a crash, nothing flushed.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child
            .kill()
            .with_context(|| format!("SIGKILL {}", self.name))?;
        self.child.wait()?;
        Ok(())
    }
}

/// Every JSON log line of a process (run with `FLEET_LOG_FORMAT=json`) whose message
/// contains `message`, oldest first.
pub fn json_lines(proc: &Proc, message: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(&proc.log)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(message))
        })
        .collect())
}

/// Sum of every sample of a Prometheus metric (all label sets) in a `/metrics` text.
pub fn prometheus_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            // `name{labels} value` or `name value`, not `name_bucket ...`.
            let value = match rest.chars().next()? {
                '{' => rest.rsplit_once('}')?.1,
                ' ' => rest,
                _ => return None,
            };
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// Sum of a Prometheus metric's samples whose labels include every `labels` pair.
pub fn prometheus_sum_labeled(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (label_text, value) = match rest.chars().next()? {
                '{' => rest[1..].rsplit_once('}')?,
                ' ' => ("", rest),
                _ => return None,
            };
            labels
                .iter()
                .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")))
                .then_some(value)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum()
}

/// Creates a tenant named `name` and a registration token for it through the admin API
/// at `api` (waiting for the API to answer); returns the token.
pub async fn create_tenant_and_token(
    api: &str,
    admin_key: &str,
    name: &str,
    procs: &[&Proc],
) -> anyhow::Result<String> {
    let client = reqwest::Client::new();
    let tenant: serde_json::Value =
        wait_for("the admin API", Duration::from_secs(120), procs, || async {
            let resp = client
                .post(format!("{api}/api/v1/tenants"))
                .bearer_auth(admin_key)
                .json(&serde_json::json!({ "name": name }))
                .send()
                .await;
            match resp {
                Ok(r) if r.status() == reqwest::StatusCode::CREATED => Ok(Some(r.json().await?)),
                Ok(r) => bail!(
                    "create tenant: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                ),
                Err(_) => Ok(None), // not listening yet
            }
        })
        .await?;
    let tenant_id = tenant["tenant_id"].as_str().context("tenant id")?;
    let resp = client
        .post(format!(
            "{api}/api/v1/tenants/{tenant_id}/registration-tokens"
        ))
        .bearer_auth(admin_key)
        .json(&serde_json::json!({"device_name": "e2e", "expires_in": "10m"}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status() == reqwest::StatusCode::CREATED,
        "create token: {} {}",
        resp.status(),
        resp.text().await.unwrap_or_default()
    );
    let token: serde_json::Value = resp.json().await?;
    Ok(token["token"].as_str().context("token")?.to_owned())
}

/// Enrolls an agent (`fleetstream agent enroll`) with `token` at the gateway `server`,
/// retrying while the gateway does not listen yet; returns the agent id from the
/// credentials file the agent wrote in `state_dir`.
pub async fn enroll_agent(
    dir: &Path,
    agent_config: &Path,
    state_dir: &Path,
    server: &str,
    token: &str,
    procs: &[&Proc],
) -> anyhow::Result<String> {
    let config = agent_config.to_str().context("utf-8 path")?;
    let args = [
        "agent", "enroll", "--config", config, "--server", server, "--token", token,
    ];
    let enroll = wait_for(
        "the gateway to enroll the agent",
        Duration::from_secs(120),
        procs,
        || async {
            let out = run_to_end(dir, &args)?;
            // Until the gateway listens, enrollment cannot connect: try again.
            Ok((!out.output.to_lowercase().contains("connect")).then_some(out))
        },
    )
    .await?;
    anyhow::ensure!(enroll.success, "enroll failed: {}", enroll.output);
    let path = state_dir.join("credentials.json");
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    Ok(v["agent_id"].as_str().context("agent_id")?.to_owned())
}

/// Microseconds since the epoch of an RFC 3339 time, as the gateway keys it.
pub fn rfc3339_micros(s: &str) -> anyhow::Result<i64> {
    Ok(chrono::DateTime::parse_from_rfc3339(s)
        .with_context(|| format!("not RFC 3339: {s:?}"))?
        .timestamp_micros())
}

/// RFC 3339 (UTC, microseconds, `Z`) of microseconds since the epoch, for query strings.
pub fn micros_rfc3339(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The reports an agent's spool holds, as (collection time µs, cpu percent), oldest first.
/// Reads a copy of `{state_dir}/spool.redb`, so the agent's own file is left exactly as
/// the agent left it; call it only while no agent runs on `state_dir` (a copy taken
/// while an agent writes could be torn).
pub fn spool_reports(state_dir: &Path) -> anyhow::Result<Vec<(i64, f64)>> {
    let file = state_dir.join(fleet_agent::spool::SPOOL_FILE);
    if !file.exists() {
        return Ok(Vec::new());
    }
    let copy_dir = tempfile::tempdir()?;
    let copy = copy_dir.path().join(fleet_agent::spool::SPOOL_FILE);
    std::fs::copy(&file, &copy).with_context(|| format!("copying {}", file.display()))?;
    let spool = fleet_agent::Spool::open(&copy, u64::MAX)
        .with_context(|| format!("opening a copy of {}", file.display()))?;
    anyhow::ensure!(
        spool.recovered_from().is_none(),
        "the spool {} was unreadable",
        file.display()
    );
    Ok(spool
        .peek(usize::MAX)?
        .map(|b| {
            b.reports
                .iter()
                .map(|r| (r.collected_at.timestamp_micros(), r.cpu_percent))
                .collect()
        })
        .unwrap_or_default())
}

// ----------------------------------------------------------------------------- gateway proxy

/// How a [`GatewayProxy`] treats metric batches (every other request is passed through).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward to the gateway and answer with its answer.
    Pass,
    /// Forward to the gateway, and when it accepted the batch (2xx) hold the answer back
    /// until the mode changes: the gateway has the batch, the agent does not know yet.
    HoldAccepted,
    /// Answer 503 with `Retry-After: 1` without forwarding.
    Unavailable,
}

/// One metric batch an agent sent through a [`GatewayProxy`].
#[derive(Debug, Clone, PartialEq)]
pub struct ProxiedBatch {
    /// The reports: (collection time µs, cpu percent).
    pub reports: Vec<(i64, f64)>,
    /// Whether it went on to the gateway.
    pub forwarded: bool,
    /// The status answered (the gateway's, 503 when `Unavailable`, 502 when the gateway
    /// could not be reached); `None` while the gateway has not answered yet.
    pub status: Option<u16>,
    /// Whether the proxy finished answering (false: held, or the agent went away).
    pub answered: bool,
    /// Whether the answer is being held back now ([`ProxyMode::HoldAccepted`]).
    pub held: bool,
}

impl ProxiedBatch {
    /// The gateway took the batch (2xx).
    pub fn accepted(&self) -> bool {
        self.forwarded && self.status.is_some_and(|s| (200..300).contains(&s))
    }
}

#[derive(Debug)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    mode: std::sync::Mutex<ProxyMode>,
    batches: std::sync::Mutex<Vec<ProxiedBatch>>,
}

impl ProxyState {
    fn mode(&self) -> ProxyMode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn update(&self, index: usize, f: impl FnOnce(&mut ProxiedBatch)) {
        let mut batches = self
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(b) = batches.get_mut(index) {
            f(b);
        }
    }
}

/// Clears `held` when a request handler ends (answered, or dropped because the agent
/// went away).
struct HeldGuard<'a> {
    state: &'a ProxyState,
    index: usize,
}

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.state.update(self.index, |b| b.held = false);
    }
}

/// An HTTP proxy in front of the gateway that agents talk to: it records every metric
/// batch (what was collected, as the agent sent it) and can hold answers back or play
/// an unavailable gateway, to put an agent in a chosen state before it is killed. Runs on
/// the test's runtime; stops on drop.
#[derive(Debug)]
pub struct GatewayProxy {
    url: String,
    state: std::sync::Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

impl GatewayProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> anyhow::Result<GatewayProxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = std::sync::Arc::new(ProxyState {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            mode: std::sync::Mutex::new(ProxyMode::Pass),
            batches: std::sync::Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(proxy_handler)
            .with_state(std::sync::Arc::clone(&state));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(GatewayProxy { url, state, task })
    }

    /// The URL agents should use as `server-url`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Switches the mode; a change releases answers held by [`ProxyMode::HoldAccepted`].
    pub fn set_mode(&self, mode: ProxyMode) {
        *self
            .state
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
    }

    /// Every metric batch so far, in arrival order.
    pub fn batches(&self) -> Vec<ProxiedBatch> {
        self.state
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for GatewayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn is_metric_batch(method: &axum::http::Method, path: &str) -> bool {
    method == axum::http::Method::POST
        && path.starts_with("/api/v1/agents/")
        && path.ends_with("/metrics")
}

/// The reports of a metric batch body: (collection time µs, cpu percent).
fn batch_reports(body: &[u8]) -> anyhow::Result<Vec<(i64, f64)>> {
    let v: serde_json::Value =
        serde_json::from_slice(body).context("metric batch is not JSON (compressed?)")?;
    v["reports"]
        .as_array()
        .context("metric batch without `reports`")?
        .iter()
        .map(|r| {
            let t = rfc3339_micros(r["collected_at"].as_str().context("collected_at")?)?;
            Ok((t, r["cpu_percent"].as_f64().context("cpu_percent")?))
        })
        .collect()
}

async fn proxy_handler(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse as _;
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, 64 << 20).await else {
        return (StatusCode::BAD_REQUEST, "proxy: unreadable body").into_response();
    };
    let path = parts.uri.path().to_owned();
    let batch = if is_metric_batch(&parts.method, &path) {
        let reports = match batch_reports(&body) {
            Ok(r) => r,
            Err(e) => {
                // The test cannot see what was sent: fail loudly rather than guess.
                return (StatusCode::BAD_REQUEST, format!("proxy: {e:#}")).into_response();
            }
        };
        let mut batches = state
            .batches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        batches.push(ProxiedBatch {
            reports,
            forwarded: false,
            status: None,
            answered: false,
            held: false,
        });
        Some(batches.len() - 1)
    } else {
        None
    };
    if let Some(index) = batch {
        if state.mode() == ProxyMode::Unavailable {
            state.update(index, |b| {
                b.status = Some(503);
                b.answered = true;
            });
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                axum::Json(serde_json::json!({"error": {
                    "code": "unavailable", "message": "e2e proxy: gateway unavailable"
                }})),
            )
                .into_response();
        }
        state.update(index, |b| b.forwarded = true);
    }
    let target = format!(
        "{}{}",
        state.upstream,
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut forward = state
        .client
        .request(parts.method.clone(), target)
        .body(body);
    for (name, value) in &parts.headers {
        if name != header::HOST && name != header::CONTENT_LENGTH {
            forward = forward.header(name, value);
        }
    }
    let (status, headers, bytes) = match forward.send().await {
        Ok(resp) => {
            let status = resp.status();
            let headers = resp.headers().clone();
            match resp.bytes().await {
                Ok(b) => (status, headers, b),
                Err(_) => (
                    StatusCode::BAD_GATEWAY,
                    axum::http::HeaderMap::new(),
                    Default::default(),
                ),
            }
        }
        Err(_) => (
            StatusCode::BAD_GATEWAY,
            axum::http::HeaderMap::new(),
            Default::default(),
        ),
    };
    let _guard = batch.map(|index| {
        state.update(index, |b| b.status = Some(status.as_u16()));
        HeldGuard {
            state: &state,
            index,
        }
    });
    if let Some(index) = batch {
        if status.is_success() && state.mode() == ProxyMode::HoldAccepted {
            state.update(index, |b| b.held = true);
            let deadline = Instant::now() + Duration::from_secs(120);
            while state.mode() == ProxyMode::HoldAccepted && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        state.update(index, |b| {
            b.held = false;
            b.answered = true;
        });
    }
    let mut response = (status, bytes).into_response();
    for name in [header::CONTENT_TYPE, header::RETRY_AFTER] {
        if let Some(v) = headers.get(&name) {
            response.headers_mut().insert(name, v.clone());
        }
    }
    response
}

// ----------------------------------------------------------------------------- private Kafka

/// A Kafka broker of the test's own: one KRaft broker+controller JVM from the jars
/// `scripts/services.sh up` cached, on free loopback ports, its data and logs in a
/// temporary directory. It can be stopped (a broker outage) and started again on the same
/// ports and data, which the shared test broker must never be.
///
/// It is configured like the shared broker (`scripts/services/server.properties.in`,
/// `scripts/services/log4j2.xml`, the same heap): the storage is formatted with
/// `kafka.tools.StorageTool format --standalone`, the broker runs as `kafka.Kafka
/// server.properties`. It is killed on drop, and (through `setpriv --pdeathsig`) when the
/// thread that started it ends, so a test that dies leaves no JVM behind: start it from
/// the test's own thread (the test body), not from `spawn_blocking`.
#[derive(Debug)]
pub struct PrivateKafka {
    dir: tempfile::TempDir,
    port: u16,
    controller_port: u16,
    libs: PathBuf,
    child: Option<Child>,
}

/// How long a start may take until every topic has a leader.
const KAFKA_START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a stop waits after SIGTERM before SIGKILL.
const KAFKA_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The heap `scripts/services.sh` gives the shared broker.
const KAFKA_HEAP: [&str; 2] = ["-Xmx512m", "-Xms256m"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Kafka version `scripts/services.sh` pins (its `KAFKA_VERSION=` line).
fn pinned_kafka_version() -> anyhow::Result<String> {
    let script = repo_root().join("scripts/services.sh");
    let text = std::fs::read_to_string(&script)
        .with_context(|| format!("reading {}", script.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .with_context(|| format!("no KAFKA_VERSION= line in {}", script.display()))
}

/// The directory of Kafka jars `scripts/services.sh up` fetched.
fn kafka_libs() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("FLEET_SERVICES_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/fleetstream-services"),
    };
    let version = pinned_kafka_version()?;
    let libs = base.join(format!("kafka-{version}")).join("libs");
    if !libs.join(".complete").exists() {
        bail!(
            "the Kafka {version} jars are missing from {}: run `scripts/services.sh up` \
             (it fetches them from Maven Central) and try again",
            libs.display()
        );
    }
    Ok(libs)
}

fn java_bin() -> PathBuf {
    match std::env::var_os("JAVA_HOME") {
        Some(home) if Path::new(&home).join("bin/java").exists() => {
            Path::new(&home).join("bin/java")
        }
        _ => PathBuf::from("java"),
    }
}

/// A KRaft cluster id: 16 random bytes in URL-safe base64 without padding, as
/// `StorageTool random-uuid` prints (never starting with `-`).
fn kafka_cluster_id() -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    loop {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        let mut bits = 0u32;
        let mut nbits = 0;
        let mut out = String::new();
        for b in bytes {
            bits = (bits << 8) | u32::from(b);
            nbits += 8;
            while nbits >= 6 {
                nbits -= 6;
                out.push(char::from(ALPHABET[((bits >> nbits) & 63) as usize]));
            }
        }
        if nbits > 0 {
            out.push(char::from(ALPHABET[((bits << (6 - nbits)) & 63) as usize]));
        }
        if !out.starts_with('-') {
            return out;
        }
    }
}

impl PrivateKafka {
    /// Formats a fresh broker on free ports, starts it and creates every topic of the
    /// catalog (`fleet_schemas::topics::ALL`) explicitly. Fails with instructions when
    /// the jars are missing.
    pub async fn start() -> anyhow::Result<PrivateKafka> {
        let libs = kafka_libs()?;
        let dir = tempfile::Builder::new().prefix("fleet-kafka-").tempdir()?;
        let (port, controller_port) = (free_port()?, free_port()?);
        anyhow::ensure!(port != controller_port, "free_port gave one port twice");
        let mut kafka = PrivateKafka {
            dir,
            port,
            controller_port,
            libs,
            child: None,
        };
        kafka.write_config()?;
        kafka.format()?;
        kafka.start_again().await?;
        Ok(kafka)
    }

    /// `127.0.0.1:<port>`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `kafka://127.0.0.1:<port>`, the event-log URL of the roles.
    pub fn url(&self) -> String {
        format!("kafka://{}", self.brokers())
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("server.properties")
    }

    fn logs_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let template = repo_root().join("scripts/services/server.properties.in");
        let text = std::fs::read_to_string(&template)
            .with_context(|| format!("reading {}", template.display()))?;
        let data = self.dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(self.logs_dir())?;
        let mut config = text
            .replace("@KAFKA_VERSION@", &pinned_kafka_version()?)
            .replace("@HOST@", "127.0.0.1")
            .replace("@KAFKA_PORT@", &self.port.to_string())
            .replace("@CONTROLLER_PORT@", &self.controller_port.to_string())
            .replace("@DATA_DIR@", data.to_str().context("utf-8 path")?);
        if let Some(left) = config
            .lines()
            .find(|l| !l.starts_with('#') && l.contains('@'))
        {
            bail!(
                "{} has a placeholder this harness does not know: {left}",
                template.display()
            );
        }
        // A private single-test broker: fewer offsets partitions start faster (the last
        // value of a key wins in a properties file).
        config.push_str("\n# e2e PrivateKafka\noffsets.topic.num.partitions=3\n");
        std::fs::write(self.config_path(), config)?;
        Ok(())
    }

    fn java(&self) -> Command {
        let mut cmd = Command::new(java_bin());
        cmd.arg("-Djava.awt.headless=true")
            .arg("-cp")
            .arg(self.libs.join("*"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        cmd
    }

    fn format(&self) -> anyhow::Result<()> {
        let tools_log = repo_root().join("scripts/services/tools-log4j2.xml");
        let out = self
            .java()
            .arg("-Xmx256m")
            .arg(format!(
                "-Dlog4j2.configurationFile=file:{}",
                tools_log.display()
            ))
            .args(["kafka.tools.StorageTool", "format", "--standalone", "-t"])
            .arg(kafka_cluster_id())
            .arg("-c")
            .arg(self.config_path())
            .output()
            .with_context(|| format!("running {} (Java 17+ needed)", java_bin().display()))?;
        if !out.status.success() {
            bail!(
                "StorageTool format failed ({}):\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Whether the JVM runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Starts the broker again on the same ports and data (after [`PrivateKafka::stop`])
    /// and waits until every topic has a leader.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.is_running(), "the private Kafka broker already runs");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs_dir().join("kafka.out"))?;
        let err = out.try_clone()?;
        let log4j = repo_root().join("scripts/services/log4j2.xml");
        let java = self.java();
        let mut cmd = if Path::new("/usr/bin/setpriv").exists() {
            let mut c = Command::new("/usr/bin/setpriv");
            c.args(["--pdeathsig", "KILL", "--"])
                .arg(java.get_program())
                .args(java.get_args())
                .current_dir(self.dir.path())
                .stdin(Stdio::null());
            c
        } else {
            java
        };
        cmd.args(KAFKA_HEAP)
            .args([
                "-server",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-XX:InitiatingHeapOccupancyPercent=35",
                "-XX:+ExplicitGCInvokesConcurrent",
            ])
            .arg(format!("-Dkafka.logs.dir={}", self.logs_dir().display()))
            .arg(format!(
                "-Dlog4j2.configurationFile=file:{}",
                log4j.display()
            ))
            .arg("kafka.Kafka")
            .arg(self.config_path())
            .stdout(out)
            .stderr(err);
        self.child = Some(cmd.spawn().context("starting the Kafka JVM")?);
        self.wait_ready().await
    }

    /// Waits for the port, then creates the topics (which waits for their leaders).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + KAFKA_START_TIMEOUT;
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if !self.is_running() {
                bail!(
                    "the private Kafka broker exited while starting\n{}",
                    self.log_tail(40)
                );
            }
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "the private Kafka broker did not listen on {addr} within {KAFKA_START_TIMEOUT:?}\n{}",
                    self.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let mut last = None;
        while Instant::now() < deadline {
            match self.create_topics().await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            if !self.is_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        bail!(
            "the private Kafka broker at {} did not become ready: {:#}\n{}",
            self.brokers(),
            last.unwrap_or_else(|| anyhow::anyhow!("exited")),
            self.log_tail(40)
        )
    }

    /// Creates every topic of the catalog (idempotent; waits for their leaders).
    pub async fn create_topics(&self) -> anyhow::Result<()> {
        let options: fleet_event_log::EngineOptions =
            [("fleet.request.timeout.ms".to_owned(), "15000".to_owned())].into();
        let log = fleet_event_log::open(&self.url(), &options).await?;
        for t in fleet_schemas::topics::ALL {
            log.create_topic(
                t.name,
                fleet_event_log::TopicSpec {
                    partitions: t.partitions,
                    compacted: t.compacted,
                },
            )
            .await
            .with_context(|| format!("creating topic {}", t.name))?;
        }
        Ok(())
    }

    /// Stops the broker: SIGTERM (a controlled shutdown) and waits; SIGKILL if it has not
    /// exited after 30 s (then errs, after the kill).
    pub fn stop(&mut self) -> anyhow::Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        // The child is setpriv exec'ed into java: one pid.
        let pid = Pid::from_raw(i32::try_from(child.id())?);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + KAFKA_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                self.child = None;
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.child = None;
        bail!("the private Kafka broker did not stop within {KAFKA_STOP_TIMEOUT:?} of SIGTERM; killed")
    }

    /// The last lines of the broker's output and server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let mut out = String::new();
        for name in ["kafka.out", "server.log"] {
            let text = std::fs::read_to_string(self.logs_dir().join(name)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- private Kafka {name} (last lines) ---\n{}\n",
                all[all.len().saturating_sub(lines)..].join("\n")
            ));
        }
        out
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Samples counted over every bucket of the first series of a history answer
/// (`GET /api/v1/agents/{id}/metrics`).
pub fn history_sample_count(history: &serde_json::Value) -> u64 {
    history["series"][0]["buckets"]
        .as_array()
        .map(|b| b.iter().map(|b| b["count"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}
