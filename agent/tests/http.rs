//! The run loop against a real HTTP server on 127.0.0.1:0: retries after 503 deliver every
//! report exactly once and in order; a 400 drops the batch and counts it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use fleet_agent::{
    Agent, AgentConfig, HttpTransport, SendOutcome, Stats, StatsSnapshot, Transport,
};
use fleet_schemas::api::{ErrorBody, ErrorDetail, IngestAccepted, MetricBatch};
use tokio::sync::oneshot;

/// How the fake gateway answers.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// 503 with `Retry-After: 1` for the first N requests, then 202.
    UnavailableFirst(usize),
    /// 400 with an error body, always.
    BadRequest,
}

#[derive(Debug, Clone)]
struct Recorded {
    agent_id: String,
    status: u16,
    batch: MetricBatch,
}

#[derive(Debug, Clone)]
struct Gateway {
    mode: Mode,
    seen: Arc<Mutex<Vec<Recorded>>>,
}

impl Gateway {
    fn seen(&self) -> Vec<Recorded> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn metrics(
    State(gw): State<Gateway>,
    Path(agent_id): Path<String>,
    Json(batch): Json<MetricBatch>,
) -> Response {
    let mut seen = gw.seen.lock().expect("lock");
    let n = seen.len();
    let (status, response) = match gw.mode {
        Mode::UnavailableFirst(k) if n < k => {
            let mut r = (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(ErrorBody {
                    error: ErrorDetail {
                        code: "unavailable".into(),
                        message: "log unavailable".into(),
                        field: None,
                        items: vec![],
                    },
                }),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            (503, r)
        }
        Mode::UnavailableFirst(_) => (
            202,
            (
                StatusCode::ACCEPTED,
                Json(IngestAccepted {
                    accepted: batch.reports.len(),
                    rejected: vec![],
                }),
            )
                .into_response(),
        ),
        Mode::BadRequest => (
            400,
            (
                StatusCode::BAD_REQUEST,
                Json(ErrorBody {
                    error: ErrorDetail {
                        code: "invalid_field".into(),
                        message: "must be within 0..=100".into(),
                        field: Some("reports[0].cpu_percent".into()),
                        items: vec![],
                    },
                }),
            )
                .into_response(),
        ),
    };
    seen.push(Recorded {
        agent_id,
        status,
        batch,
    });
    response
}

async fn start_gateway(mode: Mode) -> anyhow::Result<(SocketAddr, Gateway)> {
    let gw = Gateway {
        mode,
        seen: Arc::default(),
    };
    let app = Router::new()
        .route("/api/v1/agents/{agent_id}/metrics", post(metrics))
        .with_state(gw.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, gw))
}

fn config(addr: SocketAddr) -> AgentConfig {
    AgentConfig {
        server_url: format!("http://{addr}"),
        agent_id: Some("it-agent".into()),
        collect_interval_secs: 0.2,
        batch_max_reports: 3,
        request_timeout_secs: 5.0,
        retry_initial_backoff_secs: 0.05,
        retry_max_backoff_secs: 0.5,
        shutdown_flush_timeout_secs: 5.0,
        ..AgentConfig::default()
    }
}

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "fleet_agent=debug".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Polls `cond` every 20 ms for at most 30 s (a bound, not a timing assertion).
async fn wait_until(what: &str, cond: impl Fn() -> bool) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out waiting for {what}"))
}

/// Runs the agent until `done(gateway, stats)` holds, then shuts it down.
async fn run_agent_until(
    config: AgentConfig,
    gw: &Gateway,
    done: impl Fn(&[Recorded], &StatsSnapshot) -> bool,
) -> anyhow::Result<StatsSnapshot> {
    let agent = Agent::new(config)?;
    let stats: Arc<Stats> = agent.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let waited = wait_until("the agent to make progress", || {
        done(&gw.seen(), &stats.snapshot())
    })
    .await;
    let _ = stop.send(());
    let snapshot = run.await??;
    waited?;
    Ok(snapshot)
}

#[tokio::test]
async fn after_503s_every_report_arrives_exactly_once_in_order() -> anyhow::Result<()> {
    init_tracing();
    let (addr, gw) = start_gateway(Mode::UnavailableFirst(2)).await?;

    let snapshot = run_agent_until(config(addr), &gw, |seen, _| {
        let accepted = seen.iter().filter(|r| r.status == 202);
        accepted.clone().count() >= 2 && accepted.map(|r| r.batch.reports.len()).sum::<usize>() >= 5
    })
    .await?;

    let seen = gw.seen();
    assert!(seen.iter().all(|r| r.agent_id == "it-agent"));
    assert_eq!(seen.iter().filter(|r| r.status == 503).count(), 2);
    let delivered: Vec<_> = seen
        .iter()
        .filter(|r| r.status == 202)
        .flat_map(|r| r.batch.reports.iter().map(|rep| rep.collected_at))
        .collect();
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "delivered in order, no duplicates: {delivered:?}"
    );
    // The batches refused with 503 were delivered later.
    for r in seen.iter().filter(|r| r.status == 503) {
        for rep in &r.batch.reports {
            assert!(delivered.contains(&rep.collected_at));
        }
    }
    assert!(seen.iter().all(|r| r.batch.reports.len() <= 3));
    assert_eq!(delivered.len() as u64, snapshot.collected);
    assert_eq!(snapshot.sent, snapshot.collected);
    assert_eq!(snapshot.retries, 2);
    assert_eq!(
        (
            snapshot.rejected,
            snapshot.dropped_oldest,
            snapshot.lost_on_shutdown,
            snapshot.queued
        ),
        (0, 0, 0, 0)
    );
    Ok(())
}

#[tokio::test]
async fn bad_request_drops_the_batch_and_counts_it() -> anyhow::Result<()> {
    init_tracing();
    let (addr, gw) = start_gateway(Mode::BadRequest).await?;

    let config = AgentConfig {
        batch_max_reports: 1,
        shutdown_flush_timeout_secs: 0.5,
        ..config(addr)
    };
    let snapshot = run_agent_until(config, &gw, |_, s| s.rejected_batches >= 3).await?;

    let seen = gw.seen();
    assert!(seen.iter().all(|r| r.status == 400));
    // Never retried: every request carries a different report.
    let mut times: Vec<_> = seen
        .iter()
        .flat_map(|r| r.batch.reports.iter().map(|rep| rep.collected_at))
        .collect();
    let n = times.len();
    times.dedup();
    assert_eq!(times.len(), n, "a rejected batch was sent again");
    assert_eq!(snapshot.sent, 0);
    assert_eq!(snapshot.retries, 0);
    assert_eq!(snapshot.rejected, n as u64);
    assert_eq!(snapshot.rejected_batches, seen.len() as u64);
    assert_eq!(
        snapshot.collected,
        snapshot.rejected + snapshot.lost_on_shutdown
    );
    Ok(())
}

#[tokio::test]
async fn unreachable_gateway_means_retry_later() -> anyhow::Result<()> {
    // Bind then drop a listener to get a port nothing listens on.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await?
        .local_addr()?;
    let transport = HttpTransport::new(&format!("http://{addr}"), Duration::from_secs(2))?;
    let outcome = transport
        .send("it-agent", &MetricBatch { reports: vec![] })
        .await;
    assert!(
        matches!(
            outcome,
            SendOutcome::RetryLater {
                retry_after: None,
                ..
            }
        ),
        "{outcome:?}"
    );
    Ok(())
}
