//! Child processes of a test: `fleetstream` roles and peers (VictoriaMetrics, a Python
//! consumer), each with its output in a log file whose tail is shown when a check fails,
//! killed on drop; polling with a deadline; runs to the end.

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
    let root = crate::repo_root();
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
    // `cargo test -p fleet-e2e` does not build the binary: refuse to test an old one.
    let built = std::fs::metadata(&bin)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading {}", bin.display()))?;
    if let Some(newer) = newest_source(&root, built) {
        bail!(
            "{} is older than {}: rebuild it with `cargo build -p fleetstream` (scripts/test.sh \
             does), or set FLEETSTREAM_BIN",
            bin.display(),
            newer.display()
        );
    }
    Ok(bin)
}

/// A source file of the workspace the `fleetstream` binary is built from (its crates'
/// `src`, migrations, schemas and assets, `Cargo.toml`s and `Cargo.lock`; not tests,
/// benches, the test harness or the fuzz targets) changed after `built`, if there is one.
fn newest_source(root: &Path, built: std::time::SystemTime) -> Option<PathBuf> {
    const SKIP: &[&str] = &[
        "target",
        "tests",
        "benches",
        "e2e",
        "test-support",
        "fuzz",
        "docs",
        "scripts",
        "compose",
        "packaging",
        "node_modules",
    ];
    let newer = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > built)
    };
    if newer(&root.join("Cargo.lock")) {
        return Some(root.join("Cargo.lock"));
    }
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                if !name.starts_with('.') && !SKIP.contains(&name.as_ref()) {
                    dirs.push(path);
                }
            } else if dir != root
                && matches!(
                    path.extension().and_then(|e| e.to_str()),
                    Some("rs" | "toml" | "sql" | "avsc" | "html" | "js" | "css" | "json")
                )
                && newer(&path)
            {
                return Some(path);
            }
        }
    }
    None
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
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

    /// CPU time the process used so far (user + system, seconds), from
    /// `/proc/<pid>/stat`; `None` once it exited or off Linux. Linux reports it in
    /// clock ticks of 1/100 s (`USER_HZ`) on every architecture.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime 14 and stime 15.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3)?.parse::<u64>().ok();
        Some((ticks(14)? + ticks(15)?) as f64 / 100.0)
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
    run_program_to_end(&fleetstream_bin()?, args, dir)
}

/// Runs `program <args>` in `dir` to its end (at most 60 s; then it is killed and this
/// fails).
pub fn run_program_to_end(program: &Path, args: &[&str], dir: &Path) -> anyhow::Result<Finished> {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} {args:?} did not finish within 60 s", program.display());
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
