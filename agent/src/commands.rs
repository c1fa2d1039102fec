//! The command executor: runs the commands the server sends (pushed on the WebSocket or
//! polled from `GET .../commands` while it is down), within the agent's allow-list.
//!
//! # What may run
//!
//! Only command types listed in `allowed-commands` (default `collect_diagnostics` only);
//! anything else is answered `refused` without running anything. [`plan`] decides, as a
//! pure function:
//!
//! * `restart_service` (arg `service`, one of the configured watched `services`):
//!   `systemctl restart -- <unit>`;
//! * `run_script` (arg `script`, a name from the `[scripts]` table): that script's
//!   command line with `/bin/sh -c`. The server never sends a command line;
//! * `collect_diagnostics` (no args): a fixed, compiled-in set ([`DIAGNOSTICS`]):
//!   `uname -a`, `uptime`, `df -h`, `free -m`, each falling back to `/proc` reads;
//! * `update_config` (args `metrics_interval_secs` and/or `heartbeat_interval_secs`):
//!   changes the running agent's intervals and keeps them in `{state-dir}/intervals.json`.
//!
//! # How it runs
//!
//! Each process runs in its own process group with a timeout: the smaller of the
//! command's `timeout_secs` (0: no own limit) and `command-max-timeout`. When it
//! passes, or the agent stops, the whole group is killed (`killpg`, also when the task
//! is dropped). Stdout and stderr are read as they come, each kept up to
//! `command-output-max-bytes` (the rest read and discarded, `output_truncated` set), and
//! streamed as [`CommandProgressIn`] chunks: at most one frame per [`PROGRESS_EVERY`] per
//! command, not retried (the result carries the whole bounded output). Then the
//! [`CommandResultIn`] (`succeeded`, `failed`, `timed_out` or `refused`) is stored and
//! sent until acknowledged. At most [`MAX_CONCURRENT`] commands run at once.
//!
//! # Once only
//!
//! The ids of the last [`RECENT_COMMANDS`] commands and their results are kept in
//! `{state-dir}/commands.json`, written (atomically, fsync'ed) before a command starts
//! and when it ends. A command id seen before never runs again, even across a restart:
//! its stored result is sent again instead. A command that was running when the agent
//! died is reported `failed` at the next start, never re-run. If the id cannot be
//! recorded, the command is refused rather than risk running it twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_schemas::api::{CommandProgressIn, CommandResultIn, CommandSpec, ConfigUpdate};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{valid_secs, AgentConfig, COMMAND_TYPES};
use crate::intervals::LiveIntervals;
use crate::retry::{deliver_until_acked, Backoff, Delivered};
use crate::state;
use crate::stats::{inc, Stats};
use crate::sync::lock;
use crate::transport::{SendOutcome, Transport};

/// File of the recent command ids and results in the state directory.
pub const COMMANDS_FILE: &str = "commands.json";

/// How many command ids (with their results) are remembered.
pub const RECENT_COMMANDS: usize = 512;

/// At most one progress frame per command this often.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Largest progress chunk, bytes.
const PROGRESS_CHUNK: usize = 16 * 1024;

/// Most commands running at once; more wait for a slot.
pub const MAX_CONCURRENT: usize = 4;

/// After a process ended (or was killed), how long its output pipes may stay open (held
/// by a process that left the group) before the agent stops reading them.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// On shutdown, how long running commands get to be killed and report.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// The fixed diagnostics script: no input from the server.
pub const DIAGNOSTICS: &str = "\
echo '== uname -a =='; uname -a 2>/dev/null || cat /proc/version
echo '== uptime =='; uptime 2>/dev/null || cat /proc/uptime /proc/loadavg
echo '== df -h =='; df -h 2>/dev/null || cat /proc/mounts
echo '== free -m =='; free -m 2>/dev/null || head -n 5 /proc/meminfo
exit 0";

/// What the agent allows, from its configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    allowed: BTreeSet<String>,
    services: Vec<String>,
    scripts: BTreeMap<String, String>,
    max_timeout: Duration,
}

impl Policy {
    /// The policy of `config`.
    pub fn from_config(config: &AgentConfig) -> Self {
        Self {
            allowed: config.allowed_commands.iter().cloned().collect(),
            services: config.services.clone(),
            scripts: config.scripts.clone(),
            max_timeout: config.command_max_timeout(),
        }
    }
}

impl Policy {
    /// This policy with only the command types of `allowed` that it allows already (the
    /// remote configuration's list, itself within the local one): never wider.
    pub fn narrowed(&self, allowed: &[String]) -> Self {
        Self {
            allowed: self
                .allowed
                .iter()
                .filter(|c| allowed.contains(c))
                .cloned()
                .collect(),
            ..self.clone()
        }
    }
}

/// What a command becomes once allowed.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Run this program (no shell unless the argv says so), with this timeout.
    Run {
        /// Program and arguments.
        argv: Vec<String>,
        /// When to kill it.
        timeout: Duration,
    },
    /// Change the intervals.
    UpdateConfig(ConfigUpdate),
}

/// Decides whether `spec` may run here and how; `Err` is the refusal message. Pure.
pub fn plan(spec: &CommandSpec, policy: &Policy) -> Result<Plan, String> {
    let kind = spec.command_type.as_str();
    if !COMMAND_TYPES.contains(&kind) {
        return Err(format!("unknown command type {kind:?}"));
    }
    if !policy.allowed.contains(kind) {
        return Err(format!("`{kind}` is not in this agent's allowed-commands"));
    }
    let timeout = command_timeout(spec.timeout_secs, policy.max_timeout);
    let only = |allowed: &[&str]| match spec.args.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("`{kind}` takes no argument `{k}`")),
        None => Ok(()),
    };
    match kind {
        "restart_service" => {
            only(&["service"])?;
            let asked = spec
                .args
                .get("service")
                .ok_or("`restart_service` needs the argument `service`")?;
            let unit = policy
                .services
                .iter()
                .find(|s| same_unit(s, asked))
                .ok_or_else(|| {
                    format!("service {asked:?} is not one of this agent's watched services")
                })?;
            Ok(Plan::Run {
                argv: restart_argv(unit),
                timeout,
            })
        }
        "run_script" => {
            only(&["script"])?;
            let name = spec
                .args
                .get("script")
                .ok_or("`run_script` needs the argument `script` (a script name)")?;
            let line = policy
                .scripts
                .get(name)
                .ok_or_else(|| format!("no script named {name:?} in this agent's [scripts]"))?;
            Ok(Plan::Run {
                argv: shell_argv(line),
                timeout,
            })
        }
        "collect_diagnostics" => {
            only(&[])?;
            Ok(Plan::Run {
                argv: shell_argv(DIAGNOSTICS),
                timeout,
            })
        }
        _ => parse_config_update(&spec.args).map(Plan::UpdateConfig),
    }
}

/// The command's timeout: its own (0 meaning none) cut to `max`.
pub fn command_timeout(requested_secs: u64, max: Duration) -> Duration {
    if requested_secs == 0 {
        max
    } else {
        Duration::from_secs(requested_secs).min(max)
    }
}

/// True when `configured` and `asked` name the same systemd unit (`nginx` is
/// `nginx.service`).
pub fn same_unit(configured: &str, asked: &str) -> bool {
    let full = |s: &str| {
        if s.contains('.') {
            s.to_owned()
        } else {
            format!("{s}.service")
        }
    };
    full(configured) == full(asked)
}

/// `systemctl restart -- <unit>`.
pub fn restart_argv(unit: &str) -> Vec<String> {
    ["systemctl", "restart", "--", unit]
        .map(str::to_owned)
        .to_vec()
}

/// `/bin/sh -c <line>`: only for command lines from the agent's own configuration.
pub fn shell_argv(line: &str) -> Vec<String> {
    ["/bin/sh", "-c", line].map(str::to_owned).to_vec()
}

/// The interval changes `update_config` carries: `metrics_interval_secs` (alias
/// `collect_interval_secs`) and `heartbeat_interval_secs`, kebab-case accepted too.
pub fn parse_config_update(args: &BTreeMap<String, String>) -> Result<ConfigUpdate, String> {
    let mut update = ConfigUpdate::default();
    for (key, value) in args {
        let normalized = key.replace('-', "_");
        if !matches!(
            normalized.as_str(),
            "metrics_interval_secs" | "collect_interval_secs" | "heartbeat_interval_secs"
        ) {
            return Err(format!(
                "`{key}` cannot be changed remotely; only metrics_interval_secs and \
                 heartbeat_interval_secs can"
            ));
        }
        let secs = value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| valid_secs(*v).is_some())
            .ok_or_else(|| {
                format!("`{key}` is {value:?}: expected seconds, more than 0 and at most 86400")
            })?;
        if normalized == "heartbeat_interval_secs" {
            update.heartbeat_interval_secs = Some(secs);
        } else {
            update.metrics_interval_secs = Some(secs);
        }
    }
    if update == ConfigUpdate::default() {
        return Err(
            "`update_config` needs metrics_interval_secs or heartbeat_interval_secs".to_owned(),
        );
    }
    Ok(update)
}

/// `bytes` as text of at most `max` bytes (invalid UTF-8 replaced, cut at a character
/// boundary); true when something was cut.
pub fn bound_output(bytes: &[u8], max: usize) -> (String, bool) {
    let text = String::from_utf8_lossy(bytes);
    if text.len() <= max {
        return (text.into_owned(), false);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_owned(), true)
}

/// Length of the longest prefix of `bytes` that does not end inside a UTF-8 sequence,
/// so a chunk boundary never splits a character (invalid bytes elsewhere pass through).
pub fn complete_utf8_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(4) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // a continuation byte: look for its lead
        }
        let need = match b {
            0xF0..=0xF7 => 4,
            0xE0..=0xEF => 3,
            0xC0..=0xDF => 2,
            _ => 1,
        };
        return if need > back { len - back } else { len };
    }
    len
}

/// The result of a command that did not run.
pub fn refused(command_id: &str, message: String) -> CommandResultIn {
    CommandResultIn {
        command_id: command_id.to_owned(),
        status: "refused".to_owned(),
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        output_truncated: false,
        message: Some(message),
        started_at: None,
        finished_at: Utc::now(),
    }
}

// ---------------------------------------------------------------------------------------
// The store of recent command ids.

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    command_id: String,
    received_at: DateTime<Utc>,
    #[serde(default)]
    result: Option<CommandResultIn>,
    #[serde(default)]
    acked: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    commands: Vec<Stored>,
}

/// What [`CommandStore::begin`] found.
#[derive(Debug)]
enum Begin {
    New,
    Running,
    Done(CommandResultIn),
}

/// The recent command ids and their results, in `{state-dir}/commands.json`. Methods do
/// blocking file I/O (small file): call them from `spawn_blocking`.
#[derive(Debug)]
struct CommandStore {
    path: PathBuf,
    file: Mutex<StoreFile>,
}

impl CommandStore {
    fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(COMMANDS_FILE);
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                error!(path = %path.display(), error = %e, "Unreadable command history; starting a new one.");
                StoreFile::default()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => StoreFile::default(),
            Err(e) => {
                error!(path = %path.display(), error = %e, "Cannot read the command history; starting a new one.");
                StoreFile::default()
            }
        };
        Self {
            path,
            file: Mutex::new(file),
        }
    }

    fn save(&self, file: &StoreFile) -> std::io::Result<()> {
        if let Some(dir) = self.path.parent() {
            state::ensure_dir(dir)?;
        }
        let json = serde_json::to_vec(file).map_err(std::io::Error::other)?;
        state::write_atomic(&self.path, &json, 0o600)
    }

    /// Records `id` as running unless it is known.
    fn begin(&self, id: &str) -> std::io::Result<Begin> {
        let mut file = lock(&self.file);
        if let Some(s) = file.commands.iter().find(|s| s.command_id == id) {
            return Ok(match &s.result {
                Some(r) => Begin::Done(r.clone()),
                None => Begin::Running,
            });
        }
        file.commands.push(Stored {
            command_id: id.to_owned(),
            received_at: Utc::now(),
            result: None,
            acked: false,
        });
        while file.commands.len() > RECENT_COMMANDS {
            // Forget the oldest finished and acknowledged one; else the oldest.
            let at = file.commands.iter().position(|s| s.acked).unwrap_or(0);
            file.commands.remove(at);
        }
        match self.save(&file) {
            Ok(()) => Ok(Begin::New),
            Err(e) => {
                file.commands.retain(|s| s.command_id != id);
                Err(e)
            }
        }
    }

    fn update(&self, id: &str, f: impl FnOnce(&mut Stored)) {
        let mut file = lock(&self.file);
        let Some(s) = file.commands.iter_mut().find(|s| s.command_id == id) else {
            return;
        };
        f(s);
        if let Err(e) = self.save(&file) {
            error!(path = %self.path.display(), error = %e, "Cannot write the command history.");
        }
    }

    fn finish(&self, result: &CommandResultIn) {
        self.update(&result.command_id, |s| s.result = Some(result.clone()));
    }

    fn acked(&self, id: &str) {
        self.update(id, |s| s.acked = true);
    }

    /// Results not acknowledged yet; commands that were running when the agent stopped
    /// get a `failed` result first.
    fn unacked(&self) -> Vec<CommandResultIn> {
        let mut file = lock(&self.file);
        let mut changed = false;
        for s in file.commands.iter_mut().filter(|s| s.result.is_none()) {
            s.result = Some(CommandResultIn {
                status: "failed".to_owned(),
                message: Some(
                    "the agent stopped while the command ran; it is not run again".to_owned(),
                ),
                ..refused(&s.command_id, String::new())
            });
            changed = true;
        }
        if changed {
            if let Err(e) = self.save(&file) {
                error!(path = %self.path.display(), error = %e, "Cannot write the command history.");
            }
        }
        file.commands
            .iter()
            .filter(|s| !s.acked)
            .filter_map(|s| s.result.clone())
            .collect()
    }
}

// ---------------------------------------------------------------------------------------
// Running.

/// Output kept of one stream.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
    /// Bytes not yet streamed as progress.
    pending: Vec<u8>,
}

/// Both streams of a running command, shared by the readers and the progress sender.
#[derive(Debug)]
struct Output {
    max: usize,
    streams: [Captured; 2],
}

const STREAM_NAMES: [&str; 2] = ["stdout", "stderr"];

impl Output {
    fn new(max: usize) -> Self {
        Self {
            max,
            streams: Default::default(),
        }
    }

    fn push(&mut self, which: usize, data: &[u8]) {
        let s = &mut self.streams[which];
        let room = self.max.saturating_sub(s.bytes.len());
        let take = room.min(data.len());
        s.bytes.extend_from_slice(&data[..take]);
        s.pending.extend_from_slice(&data[..take]);
        if take < data.len() {
            s.truncated = true;
        }
    }

    /// The next progress chunk, `prefer`'s stream first; at the end (`last`) a partial
    /// character is sent too.
    fn next_chunk(&mut self, prefer: usize, last: bool) -> Option<(usize, String)> {
        for which in [prefer, 1 - prefer] {
            let pending = &mut self.streams[which].pending;
            let take = pending.len().min(PROGRESS_CHUNK);
            let n = if last && take == pending.len() {
                take
            } else {
                complete_utf8_prefix(&pending[..take])
            };
            if n > 0 {
                let chunk: Vec<u8> = pending.drain(..n).collect();
                return Some((which, String::from_utf8_lossy(&chunk).into_owned()));
            }
        }
        None
    }
}

/// Kills a process group when dropped (the task cancelled or aborted) unless disarmed.
struct GroupKill(Option<u32>);

impl GroupKill {
    fn kill(&mut self) {
        if let Some(pid) = self.0.take() {
            kill_group(pid);
        }
    }
}

impl Drop for GroupKill {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(unix)]
fn kill_group(pid: u32) {
    use nix::sys::signal::{killpg, Signal};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

#[cfg(not(unix))]
fn kill_group(_pid: u32) {}

/// Runs commands; one per agent.
pub(crate) struct Executor {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) agent_id: String,
    pub(crate) policy: Policy,
    store: CommandStoreHandle,
    pub(crate) output_max: usize,
    pub(crate) intervals: Arc<LiveIntervals>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) auth_retry: Duration,
    slots: Semaphore,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("agent_id", &self.agent_id)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

type CommandStoreHandle = Arc<CommandStore>;

/// Everything an [`Executor`] is built from.
pub(crate) struct ExecutorParts {
    pub(crate) transport: Arc<dyn Transport>,
    pub(crate) agent_id: String,
    pub(crate) config: AgentConfig,
    pub(crate) state_dir: PathBuf,
    pub(crate) intervals: Arc<LiveIntervals>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
}

impl Executor {
    /// Opens the command history (blocking: call from `spawn_blocking`).
    pub(crate) fn new(p: ExecutorParts) -> Self {
        Self {
            store: Arc::new(CommandStore::open(&p.state_dir)),
            policy: Policy::from_config(&p.config),
            output_max: p.config.command_output_max_bytes,
            backoff: (
                p.config.retry_initial_backoff(),
                p.config.retry_max_backoff(),
            ),
            auth_retry: p.config.auth_retry(),
            transport: p.transport,
            agent_id: p.agent_id,
            intervals: p.intervals,
            stats: p.stats,
            cancel: p.cancel,
            slots: Semaphore::new(MAX_CONCURRENT),
        }
    }

    /// Takes commands from `commands` until cancelled; first re-sends results a previous
    /// run did not get acknowledged.
    pub(crate) async fn run(self: Arc<Self>, mut commands: mpsc::Receiver<CommandSpec>) {
        let mut tasks = JoinSet::new();
        let store = Arc::clone(&self.store);
        let unacked = tokio::task::spawn_blocking(move || store.unacked())
            .await
            .unwrap_or_default();
        for result in unacked {
            info!(command_id = %result.command_id, "Sending a command result not acknowledged before.");
            tasks.spawn(Arc::clone(&self).deliver(result));
        }
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                spec = commands.recv() => match spec {
                    Some(spec) => { tasks.spawn(Arc::clone(&self).handle(spec)); }
                    None => break,
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Running commands see the cancellation, kill their group and store a result.
        let _ = tokio::time::timeout(STOP_GRACE, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
    }

    async fn on_store<R: Send + 'static>(
        &self,
        f: impl FnOnce(&CommandStore) -> R + Send + 'static,
    ) -> Option<R> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store)).await.ok()
    }

    async fn handle(self: Arc<Self>, spec: CommandSpec) {
        inc(&self.stats.commands_received);
        let id = spec.command_id.clone();
        let begun = self.on_store(move |s| s.begin(&id)).await;
        let result = match begun {
            Some(Ok(Begin::New)) => self.execute(&spec).await,
            Some(Ok(Begin::Running)) => {
                inc(&self.stats.commands_duplicate);
                debug!(command_id = %spec.command_id, "Command already running; ignoring the copy.");
                return;
            }
            Some(Ok(Begin::Done(result))) => {
                inc(&self.stats.commands_duplicate);
                info!(command_id = %spec.command_id, status = %result.status, "Command already ran; sending its result again.");
                self.deliver(result).await;
                return;
            }
            Some(Err(e)) => {
                inc(&self.stats.commands_refused);
                error!(command_id = %spec.command_id, error = %e, "Cannot record the command id; refusing it.");
                let result = refused(
                    &spec.command_id,
                    format!("the agent cannot record the command id ({e}), so it does not run it"),
                );
                self.deliver(result).await;
                return;
            }
            None => return,
        };
        let stored = result.clone();
        self.on_store(move |s| s.finish(&stored)).await;
        self.deliver(result).await;
    }

    async fn execute(&self, spec: &CommandSpec) -> CommandResultIn {
        let policy = self
            .policy
            .narrowed(&self.intervals.settings().allowed_commands);
        match plan(spec, &policy) {
            Err(message) => {
                inc(&self.stats.commands_refused);
                warn!(command_id = %spec.command_id, command_type = %spec.command_type, %message, "Command refused.");
                refused(&spec.command_id, message)
            }
            Ok(Plan::UpdateConfig(update)) => {
                let started_at = Utc::now();
                inc(&self.stats.commands_run);
                let applied = self.intervals.apply(update).await;
                let (status, stdout, message) = match applied {
                    Ok(summary) => ("succeeded", summary, None),
                    Err(e) => ("failed", String::new(), Some(e)),
                };
                CommandResultIn {
                    status: status.to_owned(),
                    stdout,
                    message,
                    started_at: Some(started_at),
                    finished_at: Utc::now(),
                    ..refused(&spec.command_id, String::new())
                }
            }
            Ok(Plan::Run { argv, timeout }) => {
                let Ok(_slot) = self.slots.acquire().await else {
                    return refused(&spec.command_id, "the agent is stopping".to_owned());
                };
                inc(&self.stats.commands_run);
                info!(command_id = %spec.command_id, command_type = %spec.command_type, ?timeout, "Running command.");
                self.run_process(&spec.command_id, &argv, timeout).await
            }
        }
    }

    /// Runs `argv` with `timeout`, streaming progress; returns its result.
    async fn run_process(
        &self,
        command_id: &str,
        argv: &[String],
        timeout: Duration,
    ) -> CommandResultIn {
        let base = refused(command_id, String::new());
        let started_at = Utc::now();
        let mut command = tokio::process::Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        #[cfg(unix)]
        command.process_group(0);
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                return CommandResultIn {
                    status: "failed".to_owned(),
                    message: Some(format!("cannot start {}: {e}", argv[0])),
                    started_at: Some(started_at),
                    finished_at: Utc::now(),
                    ..base
                }
            }
        };
        let mut group = GroupKill(child.id());
        let output = Arc::new(Mutex::new(Output::new(self.output_max)));
        let mut readers = JoinSet::new();
        if let Some(out) = child.stdout.take() {
            readers.spawn(pump(out, 0, Arc::clone(&output)));
        }
        if let Some(err) = child.stderr.take() {
            readers.spawn(pump(err, 1, Arc::clone(&output)));
        }
        let done = CancellationToken::new();
        let progress = tokio::spawn(progress_loop(
            Arc::clone(&self.transport),
            self.agent_id.clone(),
            command_id.to_owned(),
            Arc::clone(&output),
            done.clone(),
            self.cancel.clone(),
        ));

        enum End {
            Exited(std::process::ExitStatus),
            WaitFailed(std::io::Error),
            TimedOut,
            Stopped,
        }
        let end = tokio::select! {
            r = tokio::time::timeout(timeout, child.wait()) => match r {
                Ok(Ok(status)) => End::Exited(status),
                Ok(Err(e)) => End::WaitFailed(e),
                Err(_) => End::TimedOut,
            },
            () = self.cancel.cancelled() => End::Stopped,
        };
        if !matches!(end, End::Exited(_)) {
            group.kill();
            let _ = child.kill().await;
        }
        // Read what is left; a pipe kept open by a process that left the group is
        // abandoned after a grace period.
        let _ = tokio::time::timeout(PIPE_GRACE, async {
            while readers.join_next().await.is_some() {}
        })
        .await;
        readers.abort_all();
        done.cancel();
        let _ = tokio::time::timeout(STOP_GRACE, progress).await;

        let (stdout, stderr, truncated) = {
            let out = lock(&output);
            let (o, t1) = bound_output(&out.streams[0].bytes, self.output_max);
            let (e, t2) = bound_output(&out.streams[1].bytes, self.output_max);
            (o, e, t1 || t2 || out.streams.iter().any(|s| s.truncated))
        };
        let (status, exit_code, message) = match end {
            End::Exited(s) => match s.code() {
                Some(0) => ("succeeded", Some(0), None),
                Some(code) => (
                    "failed",
                    Some(code),
                    Some(format!("exited with code {code}")),
                ),
                None => ("failed", None, Some(format!("ended by a signal ({s})"))),
            },
            End::WaitFailed(e) => (
                "failed",
                None,
                Some(format!("waiting for the process failed: {e}")),
            ),
            End::TimedOut => (
                "timed_out",
                None,
                Some(format!(
                    "did not finish within {}s; its process group was killed",
                    timeout.as_secs_f64()
                )),
            ),
            End::Stopped => (
                "failed",
                None,
                Some("the agent stopped; the command was killed".to_owned()),
            ),
        };
        info!(command_id, status, ?exit_code, "Command ended.");
        CommandResultIn {
            status: status.to_owned(),
            exit_code,
            stdout,
            stderr,
            output_truncated: truncated,
            message,
            started_at: Some(started_at),
            finished_at: Utc::now(),
            ..base
        }
    }

    /// Sends `result` until acknowledged (or rejected for good), then marks it so.
    async fn deliver(self: Arc<Self>, result: CommandResultIn) {
        let mut backoff = Backoff::new(self.backoff.0, self.backoff.1);
        let delivered = deliver_until_acked(
            "command result",
            || self.transport.command_result(&self.agent_id, &result),
            &mut backoff,
            self.auth_retry,
            &self.cancel,
        )
        .await;
        match delivered {
            Delivered::Acked | Delivered::Rejected => {
                if delivered == Delivered::Acked {
                    inc(&self.stats.command_results_sent);
                }
                let id = result.command_id.clone();
                self.on_store(move |s| s.acked(&id)).await;
            }
            Delivered::Stopped => {
                debug!(command_id = %result.command_id, "Result kept for the next start.");
            }
        }
    }
}

/// Reads one output stream into `output` until EOF.
async fn pump(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    which: usize,
    output: Arc<Mutex<Output>>,
) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => lock(&output).push(which, &buf[..n]),
        }
    }
}

/// Streams progress: a `status` chunk first, then output chunks, at most one frame per
/// [`PROGRESS_EVERY`]; after `done`, what is left, then it ends. Frames that fail are not
/// retried.
async fn progress_loop(
    transport: Arc<dyn Transport>,
    agent_id: String,
    command_id: String,
    output: Arc<Mutex<Output>>,
    done: CancellationToken,
    cancel: CancellationToken,
) {
    let mut sequence = 0u64;
    let mut prefer = 0usize;
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let finished = done.is_cancelled();
        let (stream, chunk) = if first {
            first = false;
            ("status".to_owned(), "started".to_owned())
        } else {
            let next = lock(&output).next_chunk(prefer, finished);
            match next {
                Some((which, chunk)) => {
                    prefer = 1 - which;
                    (STREAM_NAMES[which].to_owned(), chunk)
                }
                None if finished => return,
                None => {
                    // Nothing new: sleep until output or the end rather than tick idly.
                    tokio::select! {
                        biased;
                        () = cancel.cancelled() => return,
                        () = done.cancelled() => {}
                        () = tokio::time::sleep(PROGRESS_EVERY * 4) => {}
                    }
                    continue;
                }
            }
        };
        sequence += 1;
        let progress = CommandProgressIn {
            command_id: command_id.clone(),
            sequence,
            stream,
            chunk,
            at: Utc::now(),
        };
        match transport.command_progress(&agent_id, &progress).await {
            SendOutcome::Sent(_) => {}
            other => {
                debug!(command_id, sequence, outcome = ?other, "Progress frame not delivered (not retried).")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, args: &[(&str, &str)], timeout_secs: u64) -> CommandSpec {
        CommandSpec {
            command_id: "c-1".into(),
            command_type: kind.into(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout_secs,
            requested_at: Utc::now(),
        }
    }

    fn policy(allowed: &[&str]) -> Policy {
        Policy {
            allowed: allowed.iter().map(|s| (*s).to_owned()).collect(),
            services: vec!["nginx".into(), "cron.service".into()],
            scripts: [("hello".to_owned(), "echo hello; exit 3".to_owned())].into(),
            max_timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn only_allowed_types_with_known_targets_run() {
        let all = policy(&COMMAND_TYPES);
        let p = plan(
            &spec("restart_service", &[("service", "nginx.service")], 10),
            &all,
        )
        .unwrap();
        assert_eq!(
            p,
            Plan::Run {
                argv: restart_argv("nginx"),
                timeout: Duration::from_secs(10)
            }
        );
        assert_eq!(
            restart_argv("nginx"),
            ["systemctl", "restart", "--", "nginx"]
        );
        assert!(
            plan(&spec("restart_service", &[("service", "sshd")], 10), &all)
                .unwrap_err()
                .contains("not one of this agent's watched services")
        );
        assert!(plan(&spec("restart_service", &[], 10), &all).is_err());
        let p = plan(&spec("run_script", &[("script", "hello")], 0), &all).unwrap();
        assert_eq!(
            p,
            Plan::Run {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hello; exit 3".into()],
                timeout: Duration::from_secs(300)
            }
        );
        // A command line from the server is never run.
        let e = plan(&spec("run_script", &[("script", "rm -rf /")], 10), &all).unwrap_err();
        assert!(e.contains("no script named"), "{e}");
        let e = plan(
            &spec("run_script", &[("script", "hello"), ("command", "id")], 10),
            &all,
        )
        .unwrap_err();
        assert!(e.contains("no argument `command`"), "{e}");
        assert!(matches!(
            plan(&spec("collect_diagnostics", &[], 5000), &all),
            Ok(Plan::Run { timeout, .. }) if timeout == Duration::from_secs(300)
        ));
        let e = plan(&spec("shell", &[], 1), &all).unwrap_err();
        assert!(e.contains("unknown command type"), "{e}");
        let only_diag = policy(&["collect_diagnostics"]);
        let e = plan(&spec("run_script", &[("script", "hello")], 1), &only_diag).unwrap_err();
        assert!(e.contains("not in this agent's allowed-commands"), "{e}");
        assert!(matches!(
            plan(&spec("update_config", &[("metrics_interval_secs", "5")], 1), &all),
            Ok(Plan::UpdateConfig(ConfigUpdate {
                metrics_interval_secs: Some(m),
                heartbeat_interval_secs: None,
                version: None,
                ..
            })) if m == 5.0
        ));
    }

    #[test]
    fn update_config_takes_only_intervals() {
        let args = |l: &[(&str, &str)]| -> BTreeMap<String, String> {
            l.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let u = parse_config_update(&args(&[
            ("heartbeat-interval-secs", "15"),
            ("collect_interval_secs", "2.5"),
        ]))
        .unwrap();
        assert_eq!(u.heartbeat_interval_secs, Some(15.0));
        assert_eq!(u.metrics_interval_secs, Some(2.5));
        assert!(parse_config_update(&args(&[("server-url", "http://evil")]))
            .unwrap_err()
            .contains("cannot be changed remotely"));
        assert!(parse_config_update(&args(&[("heartbeat_interval_secs", "0")])).is_err());
        assert!(parse_config_update(&args(&[("heartbeat_interval_secs", "NaN")])).is_err());
        assert!(parse_config_update(&args(&[])).is_err());
    }

    #[test]
    fn timeouts_are_capped() {
        let max = Duration::from_secs(300);
        assert_eq!(command_timeout(1, max), Duration::from_secs(1));
        assert_eq!(command_timeout(0, max), max);
        assert_eq!(command_timeout(100_000, max), max);
    }

    #[test]
    fn output_is_bounded_at_char_boundaries() {
        assert_eq!(bound_output(b"hello\n", 100), ("hello\n".into(), false));
        assert_eq!(bound_output(b"hello", 3), ("hel".into(), true));
        assert_eq!(bound_output("héllo".as_bytes(), 2), ("h".into(), true));
        // Invalid bytes are replaced, and the bound still holds.
        let (s, cut) = bound_output(&[0xff, 0xff, b'a'], 4);
        assert!(s.len() <= 4 && cut, "{s:?}");
    }

    #[test]
    fn chunks_never_split_a_character() {
        let s = "aé€😀".as_bytes(); // 1 + 2 + 3 + 4 bytes
        assert_eq!(complete_utf8_prefix(s), s.len());
        for cut in 0..=s.len() {
            let n = complete_utf8_prefix(&s[..cut]);
            assert!(std::str::from_utf8(&s[..n]).is_ok(), "cut {cut}: {n}");
            assert!(cut - n < 4);
        }
        assert_eq!(complete_utf8_prefix(&[b'a', 0xff]), 2, "invalid bytes pass");
        let mut out = Output::new(10);
        out.push(0, "abcdefgh€€".as_bytes());
        assert!(out.streams[0].truncated);
        assert_eq!(out.streams[0].bytes.len(), 10);
        // 10 bytes = "abcdefgh" + 2 of the 3 bytes of "€": the partial char waits.
        assert_eq!(out.next_chunk(0, false), Some((0, "abcdefgh".into())));
        assert_eq!(out.next_chunk(0, false), None);
        let (_, last) = out.next_chunk(0, true).unwrap();
        assert_eq!(last, "\u{fffd}");
    }

    #[test]
    fn store_remembers_ids_across_reopen_and_fails_interrupted_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = CommandStore::open(dir.path());
        assert!(matches!(store.begin("a").unwrap(), Begin::New));
        assert!(matches!(store.begin("a").unwrap(), Begin::Running));
        assert!(matches!(store.begin("b").unwrap(), Begin::New));
        let mut r = refused("a", "x".into());
        r.status = "succeeded".into();
        store.finish(&r);
        drop(store);

        let store = CommandStore::open(dir.path());
        assert!(matches!(store.begin("a").unwrap(), Begin::Done(d) if d.status == "succeeded"));
        let unacked = store.unacked();
        let statuses: BTreeMap<String, String> = unacked
            .iter()
            .map(|r| (r.command_id.clone(), r.status.clone()))
            .collect();
        assert_eq!(statuses["a"], "succeeded");
        assert_eq!(statuses["b"], "failed", "interrupted: never run again");
        store.acked("a");
        store.acked("b");
        assert!(store.unacked().is_empty());
        for n in 0..RECENT_COMMANDS + 10 {
            assert!(matches!(store.begin(&format!("x{n}")).unwrap(), Begin::New));
        }
        assert_eq!(lock(&store.file).commands.len(), RECENT_COMMANDS);
    }
}
