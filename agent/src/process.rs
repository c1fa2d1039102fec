//! Running a short external program to read its output: the security probes and the
//! custom-metric scripts. One way, so both get the same guarantees:
//!
//! * the program runs directly (no shell), in its own process group, stdin closed, with
//!   `LC_ALL=C`;
//! * stdout and stderr are read concurrently, each kept up to a bound and the rest read and
//!   dropped (so a chatty program never stalls on a full pipe), and the answer says
//!   whether stdout was cut;
//! * past its timeout, or as soon as the agent stops (`cancel`), the whole process group is
//!   killed (what the program started too), which also closes the pipes and ends the reads.
//!
//! Blocking: call it from the blocking pool.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// How long a program may run and how much of its output is kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest run before the process group is killed.
    pub timeout: Duration,
    /// Most bytes of stdout, and of stderr, kept.
    pub max_output: usize,
}

/// A program's outcome: exit code and bounded output.
#[derive(Debug)]
pub struct Output {
    /// Exit code (`None` if a signal ended it).
    pub code: Option<i32>,
    /// Stdout, at most [`Limits::max_output`] bytes, lossily decoded.
    pub stdout: String,
    /// Stdout was longer than the bound (the rest was dropped).
    pub stdout_truncated: bool,
    /// Stderr, likewise bounded.
    pub stderr: String,
}

/// Why a program gave no output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// It could not be started (absent, not executable, ...).
    #[error("cannot start: {0}")]
    Spawn(#[from] std::io::Error),
    /// It ran past its timeout; its process group was killed.
    #[error("timed out after {0:?}; killed")]
    TimedOut(Duration),
    /// The agent stopped while it ran; its process group was killed.
    #[error("the agent is stopping; killed")]
    Cancelled,
}

/// Runs `program args` ([module docs](self)); a `program` without `/` is looked up on `PATH`.
pub fn run(
    program: &str,
    args: &[&str],
    limits: Limits,
    cancel: &CancellationToken,
) -> Result<Output, RunError> {
    if cancel.is_cancelled() {
        return Err(RunError::Cancelled);
    }
    let mut command = Command::new(program);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        // Its own process group, so a timeout kills what it started too (and the pipes
        // close, ending the reads).
        command.process_group(0);
    }
    let mut child = command
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        kill_group(&mut child);
        return Err(RunError::Spawn(std::io::Error::other("no pipes")));
    };
    let deadline = Instant::now() + limits.timeout;
    let max = limits.max_output;
    std::thread::scope(|scope| {
        let out = scope.spawn(move || read_bounded(stdout, max));
        let err = scope.spawn(move || read_bounded(stderr, max));
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() < deadline && !cancel.is_cancelled() => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(None) | Err(_) => {
                    kill_group(&mut child);
                    break Err(if cancel.is_cancelled() {
                        RunError::Cancelled
                    } else {
                        RunError::TimedOut(limits.timeout)
                    });
                }
            }
        };
        // The reads end at EOF: the program exited or its group was killed. (A daemon it
        // left behind holding the pipe keeps a read open; the group kill covers those that
        // stayed in the group.)
        let (stdout, stdout_truncated) = out.join().unwrap_or_default();
        let (stderr, _) = err.join().unwrap_or_default();
        let status = status?;
        Ok(Output {
            code: status.code(),
            stdout,
            stdout_truncated,
            stderr,
        })
    })
}

fn kill_group(child: &mut std::process::Child) {
    #[cfg(unix)]
    if let Ok(pid) = i32::try_from(child.id()) {
        use nix::sys::signal::{killpg, Signal};
        use nix::unistd::Pid;
        // ESRCH (already gone) is fine.
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads `r` to its end, keeping the first `max` bytes: (text, whether more came).
fn read_bounded(mut r: impl Read, max: usize) -> (String, bool) {
    let mut kept = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX);
    let _ = (&mut r).take(limit).read_to_end(&mut kept);
    // Drain the rest so the child can finish; ends at EOF.
    let rest = std::io::copy(&mut r, &mut std::io::sink()).unwrap_or(0);
    (String::from_utf8_lossy(&kept).into_owned(), rest > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        timeout: Duration::from_secs(10),
        max_output: 1000,
    };

    #[test]
    fn output_is_bounded_and_marked_cut() {
        let never = CancellationToken::new();
        let o = run(
            "sh",
            &["-c", "head -c 3000 /dev/zero; exit 3"],
            LIMITS,
            &never,
        )
        .expect("sh runs");
        assert_eq!(o.code, Some(3));
        assert_eq!(o.stdout.len(), 1000);
        assert!(o.stdout_truncated);
        let o = run("sh", &["-c", "printf abc"], LIMITS, &never).expect("sh runs");
        assert_eq!((o.stdout.as_str(), o.stdout_truncated), ("abc", false));
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let never = CancellationToken::new();
        let started = Instant::now();
        let limits = Limits {
            timeout: Duration::from_millis(200),
            ..LIMITS
        };
        // The child's own child keeps the pipe open: only a group kill ends the reads.
        let r = run("sh", &["-c", "sleep 30 & sleep 30"], limits, &never);
        assert!(matches!(r, Err(RunError::TimedOut(_))), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(
            run("/no/such/program", &[], LIMITS, &never),
            Err(RunError::Spawn(_))
        ));
    }
}
