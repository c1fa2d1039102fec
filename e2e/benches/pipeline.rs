//! Whole-pipeline figures, in one process over real HTTP on loopback:
//!
//! * ingest throughput: reports/s and samples/s through the gateway into the log, with
//!   concurrent agents posting batches (the load generator runs on the same cores);
//! * alert latency: from sending a metrics POST to seeing the AlertRaised record on
//!   `fleet.alerts.v1` (p50, p99), one report at a time.
//!
//! usage: cargo bench -p fleet-e2e --bench pipeline -- [embedded|kafka|all]
//! Environment: BENCH_REPORTS (total reports, default 20000), BENCH_BATCH (reports per
//! request, 50), BENCH_CLIENTS (concurrent agents, 16), BENCH_LATENCY_SAMPLES (200),
//! FLEET_KAFKA_BROKERS (127.0.0.1:9092).

#![allow(clippy::print_stdout)] // a bench prints its figures

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use fleet_event_log::{ConsumerOptions, EventLog, StartFrom};
use fleet_ingest_gateway::{app, GatewayConfig, GatewayState};
use fleet_schemas::rules::RuleSpec;
use fleet_schemas::{codec, topics, AlertEvent, AlertEventKind};
use fleet_service::config::EventLogSettings;
use fleet_stream_processors::config::AlertEvaluatorSettings;
use fleet_stream_processors::rules::StaticRule;
use fleet_stream_processors::{run_alert_evaluator, ProcessorsConfig, Readiness};
use serde_json::{json, Value};

fn env_num(name: &str, default: usize) -> usize {
    fleet_e2e::env_num(name, default).unwrap_or(default)
}

fn report(cpu: f64) -> Value {
    json!({
        "collected_at": chrono::Utc::now().to_rfc3339(),
        "cpu_percent": cpu, "cpu_per_core": [cpu, cpu],
        "memory_used_bytes": 3_000_000_000u64, "memory_total_bytes": 8_000_000_000u64, "memory_percent": 37.5,
        "swap_used_bytes": 0, "swap_total_bytes": 1_000_000_000u64,
        "disks": [{"mount": "/", "used_bytes": 20_000_000_000u64, "total_bytes": 100_000_000_000u64, "percent": 20.0},
                  {"mount": "/var", "used_bytes": 5_000_000_000u64, "total_bytes": 50_000_000_000u64, "percent": 10.0}],
        "disk_read_bytes": 4096, "disk_write_bytes": 8192,
        "load_1": 0.5, "load_5": 0.4, "load_15": 0.3, "uptime_seconds": 86400,
        "net_rx_bytes": 1000, "net_tx_bytes": 2000,
        "interfaces": [{"name": "eth0", "rx_bytes": 1000, "tx_bytes": 2000}],
        "process_count": 123,
        "services": [{"name": "sshd", "status": "running", "pid": 812}]
    })
}

fn samples_per_report() -> usize {
    // Count what the time-series projection would store for one such report.
    let r: fleet_schemas::api::ReportIn = serde_json::from_value(report(1.0)).expect("report");
    let limits = fleet_ingest_gateway::validate::Limits {
        max_future_micros: i64::MAX / 4,
        max_age_micros: i64::MAX / 4,
        ..fleet_ingest_gateway::validate::Limits::from_config(&Default::default())
    };
    let rec = fleet_ingest_gateway::validate::report(
        "t",
        "a",
        &r,
        fleet_schemas::time::now_micros(),
        &limits,
    )
    .expect("valid");
    fleet_schemas::samples::samples(&rec).len()
}

async fn serve(log: Arc<dyn EventLog>) -> anyhow::Result<String> {
    let router = app(GatewayState::new(
        log,
        fleet_schemas::Wire::plain(),
        GatewayConfig {
            max_body_bytes: 16 << 20,
            // Ingest cost alone; credential checks are cached lookups measured elsewhere.
            auth: fleet_ingest_gateway::AuthMode::Off,
            rate_limit_per_second: 0,
            ..GatewayConfig::default()
        },
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(format!("http://{addr}"))
}

async fn throughput(engine: &str, base: &str) -> anyhow::Result<()> {
    let total = env_num("BENCH_REPORTS", 20_000);
    let batch = env_num("BENCH_BATCH", 50);
    let clients = env_num("BENCH_CLIENTS", 16);
    let body = serde_json::to_vec(&json!({"reports": vec![report(42.0); batch]}))?;
    let requests = total.div_ceil(batch);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let run = format!("{:x}", rand_u64());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (client, body, base, run) =
            (client.clone(), body.clone(), base.to_owned(), run.clone());
        let mine = (c..requests).step_by(clients).count();
        tasks.push(tokio::spawn(async move {
            let url = format!("{base}/api/v1/agents/bench-{run}-{c}/metrics");
            for _ in 0..mine {
                let resp = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status() == reqwest::StatusCode::ACCEPTED,
                    "status {}",
                    resp.status()
                );
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = requests * batch;
    let spr = samples_per_report();
    println!(
        "{engine:8} ingest: {sent} reports in {secs:.2} s = {:.0} reports/s, {:.0} samples/s ({spr} samples/report; batch {batch}, {clients} clients, {:.0} requests/s)",
        sent as f64 / secs,
        (sent * spr) as f64 / secs,
        requests as f64 / secs
    );
    Ok(())
}

fn rand_u64() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            & u128::from(u64::MAX),
    )
    .unwrap_or(0)
}

async fn latency(engine: &str, log: Arc<dyn EventLog>, base: &str) -> anyhow::Result<()> {
    let samples = env_num("BENCH_LATENCY_SAMPLES", 200);
    let run = format!("{:x}", rand_u64());
    let cfg = ProcessorsConfig {
        alert_evaluator: AlertEvaluatorSettings {
            group: format!("bench-evaluator-{run}"),
            ..AlertEvaluatorSettings::default()
        },
        event_log: EventLogSettings {
            session_timeout: std::time::Duration::from_secs(6),
            ..EventLogSettings::default()
        },
        rules: vec![StaticRule::new(
            format!("bench-cpu-{run}"),
            RuleSpec {
                name: "bench".into(),
                metric: "cpu.percent".into(),
                operator: Some(">".into()),
                critical: Some(90.0),
                ..RuleSpec::default()
            },
        )],
        batch_size: 500,
        ..ProcessorsConfig::default()
    };
    let ready = Readiness::default();
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let eval_log = log.clone();
    let eval_ready = ready.clone();
    let evaluator = tokio::spawn(async move {
        run_alert_evaluator(
            eval_log,
            fleet_schemas::Wire::plain(),
            cfg,
            eval_ready,
            async move {
                let _ = stop_rx.wait_for(|v| *v).await;
            },
        )
        .await
    });
    let mut alerts = log
        .subscribe(
            &format!("bench-alerts-{run}"),
            &[topics::ALERTS],
            ConsumerOptions {
                start: StartFrom::Latest,
                session_timeout: Duration::from_secs(6),
                ..ConsumerOptions::default()
            },
        )
        .await?;
    let client = reqwest::Client::new();
    let body = serde_json::to_vec(&json!({"reports": [report(99.0)]}))?;
    // Warm up: the evaluator joins and catches up with what the topic already holds.
    let mut lat = Vec::with_capacity(samples);
    for i in 0..=samples {
        let agent = format!("lat-{run}-{i}");
        let t0 = Instant::now();
        let resp = client
            .post(format!("{base}/api/v1/agents/{agent}/metrics"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        anyhow::ensure!(
            resp.status() == reqwest::StatusCode::ACCEPTED,
            "status {}",
            resp.status()
        );
        let deadline = Instant::now() + Duration::from_secs(if i == 0 { 120 } else { 30 });
        'wait: loop {
            anyhow::ensure!(Instant::now() < deadline, "no AlertRaised for {agent}");
            for r in alerts.poll(100, Duration::from_millis(200)).await? {
                let ev: AlertEvent = codec::Wire::plain()
                    .decode_known(&r.value)
                    .context("alert")?;
                if ev.agent_id == agent && ev.kind == AlertEventKind::Raised {
                    break 'wait;
                }
            }
        }
        if i > 0 {
            lat.push(t0.elapsed());
        }
    }
    let _ = stop_tx.send(true);
    evaluator.await??;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "{engine:8} POST -> AlertRaised: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples, one at a time)",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
        lat.len()
    );
    Ok(())
}

async fn bench(engine: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match engine {
        "kafka" => format!("kafka://{}", fleet_e2e::kafka_brokers()),
        _ => dir.path().join("log").to_str().context("utf-8")?.to_owned(),
    };
    if engine == "kafka" {
        fleet_e2e::require_service("Kafka", &fleet_e2e::kafka_brokers())?;
    }
    let log = fleet_event_log::open(&url, &Default::default()).await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let base = serve(log.clone()).await?;
    throughput(engine, &base).await?;
    latency(engine, log, &base).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let which = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "all".into());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        if which == "embedded" || which == "all" {
            bench("embedded").await?;
        }
        if which == "kafka" || which == "all" {
            bench("kafka").await?;
        }
        anyhow::Ok(())
    })
}
