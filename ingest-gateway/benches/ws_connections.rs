//! Memory per idle agent WebSocket.
//!
//! The bench re-executes itself as a child process (`FLEET_WS_BENCH_CHILD=1`) that serves
//! only the gateway app over an embedded log in a tempdir (auth off, no rate limit), so
//! the memory measured belongs to the server alone. The parent opens
//! `WS_BENCH_CONNECTIONS` (default 5,000) idle sockets on loopback, each answering the
//! gateway's pings, waits until the child's `fleet_gateway_ws_connections` gauge shows
//! them all, and prints the child's VmRSS before and after: total and per connection.
//! Everything is bounded in time; the child stops when the parent closes its stdin.
//!
//! `cargo bench -p fleet-ingest-gateway --bench ws_connections`
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use fleet_ingest_gateway::{app, AuthMode, GatewayConfig, GatewayState};
use futures::StreamExt as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

const CHILD_ENV: &str = "FLEET_WS_BENCH_CHILD";
/// The child never outlives this, even if the parent vanished without closing stdin.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(900);
/// The whole measurement is abandoned after this.
const BENCH_DEADLINE: Duration = Duration::from_secs(600);

fn main() -> anyhow::Result<()> {
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var_os(CHILD_ENV).is_some() {
        rt.block_on(child())
    } else {
        // `cargo bench` passes `--bench`; filters are ignored.
        rt.block_on(async {
            tokio::time::timeout(BENCH_DEADLINE, parent())
                .await
                .context("the bench did not finish in time")?
        })
    }
}

/// Soft RLIMIT_NOFILE up to the hard limit (the child inherits it, and raises its own).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn nofile() -> u64 {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(0)
}

async fn child() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let log = fleet_event_log::open(
        dir.path().to_str().context("tempdir is not UTF-8")?,
        &Default::default(),
    )
    .await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let cfg = GatewayConfig {
        auth: AuthMode::Off,
        rate_limit_per_second: 0,
        ..GatewayConfig::default()
    };
    let router = app(GatewayState::new(log, fleet_schemas::Wire::plain(), cfg)).merge(
        fleet_service::endpoints::router("gateway", Arc::new(|| Ok(()))),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("PORT {}", listener.local_addr()?.port());
    // Stop when the parent closes our stdin (or after the maximum lifetime).
    let stop = async {
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        let _ = tokio::time::timeout(CHILD_MAX_LIFETIME, async {
            while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        })
        .await;
    };
    axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await?;
    Ok(())
}

fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

async fn gauge(port: u16) -> anyhow::Result<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("fleet_gateway_ws_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0))
}

async fn wait_gauge(port: u16, want: f64) -> anyhow::Result<()> {
    for _ in 0..600 {
        if (gauge(port).await? - want).abs() < 0.5 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the gateway never reported {want} open sockets")
}

/// Opens one idle agent socket; the task answers pings until the server goes away.
async fn open_socket(port: u16, i: usize) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let url = format!("ws://127.0.0.1:{port}/api/v1/agents/ws?agent_id=bench-{i}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .with_context(|| format!("connection {i}"))?;
    Ok(tokio::spawn(async move {
        // Reading makes tungstenite answer the gateway's pings.
        while let Some(Ok(_)) = ws.next().await {}
    }))
}

async fn parent() -> anyhow::Result<()> {
    let n: usize = std::env::var("WS_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let exe = std::env::current_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the server process")?;
    let pid = child.id().context("child pid")?;
    let stdout = child.stdout.take().context("child stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let port: u16 = loop {
        let line = lines
            .next_line()
            .await?
            .context("the server exited before listening")?;
        if let Some(p) = line.strip_prefix("PORT ") {
            break p.trim().parse()?;
        }
    };
    println!(
        "ws_connections: server pid {pid} on 127.0.0.1:{port}; {n} idle sockets (RLIMIT_NOFILE {})",
        nofile()
    );

    // Warm up (runtime, allocator, hub), then take the baseline.
    let warm = open_socket(port, usize::MAX).await?;
    wait_gauge(port, 1.0).await?;
    warm.abort();
    wait_gauge(port, 0.0).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = vm_rss_kib(pid)?;

    let started = std::time::Instant::now();
    let sockets: Vec<_> = futures::stream::iter(0..n)
        .map(|i| open_socket(port, i))
        .buffer_unordered(128)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let opened_in = started.elapsed();
    wait_gauge(port, n as f64).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = vm_rss_kib(pid)?;
    let delta = after.saturating_sub(before);
    println!(
        "ws_connections: opened {n} sockets in {:.1} s",
        opened_in.as_secs_f64()
    );
    println!(
        "ws_connections: server VmRSS before {:.1} MiB, after {:.1} MiB, delta {:.1} MiB",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        delta as f64 / 1024.0
    );
    println!(
        "ws_connections: {:.1} KiB RSS per idle connection",
        delta as f64 / n as f64
    );

    for s in &sockets {
        s.abort();
    }
    drop(child.stdin.take());
    if tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .is_err()
    {
        child.kill().await?;
    }
    Ok(())
}
