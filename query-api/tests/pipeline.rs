//! Projections over the real embedded log into SQLite and the embedded time-series
//! store, queried through the API router.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_projections::project::{run_read_model, Readiness};
use fleet_projections::timeseries::run_timeseries;
use fleet_projections::ProjectionsConfig;
use fleet_schemas::{fixtures, topics};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt as _;

const T0: i64 = 1_795_400_000_000_000; // µs, a fixed instant

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    rm: Arc<dyn fleet_read_model::ReadModel>,
    ts: Arc<fleet_timeseries::TimeSeries>,
    api: Router,
}

async fn env() -> Env {
    let stores = support::stores().await;
    let api = stores.api();
    let support::Stores {
        dir,
        log,
        read_model: rm,
        timeseries: ts,
        ..
    } = stores;
    Env {
        _dir: dir,
        log,
        rm,
        ts,
        api,
    }
}

use support::{produce, ADMIN};

/// Runs both projections until the returned sender fires.
fn start(e: &Env) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(false);
    let (log, rm, ts) = (e.log.clone(), e.rm.clone(), e.ts.clone());
    let handle = tokio::spawn(async move {
        let cfg = ProjectionsConfig::default();
        let ready = Readiness::default();
        let stop = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        let a = run_read_model(
            log.clone(),
            fleet_schemas::Wire::plain(),
            rm,
            cfg.clone(),
            ready.clone(),
            stop(rx.clone()),
        );
        let b = run_timeseries(log, fleet_schemas::Wire::plain(), ts, cfg, ready, stop(rx));
        let (ra, rb) = tokio::join!(a, b);
        ra.expect("read model projection");
        rb.expect("time-series projection");
    });
    (tx, handle)
}

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(
            Request::get(uri)
                .header("authorization", format!("Bearer {ADMIN}"))
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("resp");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn eventually(app: &Router, uri: &str, mut ok: impl FnMut(&Value) -> bool) -> Value {
    for _ in 0..200 {
        let (status, v) = get(app, uri).await;
        if status == StatusCode::OK && ok(&v) {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{uri} never satisfied the condition; last: {:?}",
        get(app, uri).await
    );
}

fn history_uri(start_s: i64) -> String {
    let start =
        fleet_schemas::time::from_micros(T0).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let end = fleet_schemas::time::from_micros(T0 + start_s * 1_000_000)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!("/api/v1/agents/a1/metrics?metric=cpu.percent&metric=disk.percent:/var&start={start}&end={end}&interval=1m")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_topics_into_stores_and_survives_a_restart() {
    let prometheus = fleet_service::endpoints::metrics_handle();
    let e = env().await;
    for (i, cpu) in [10.0, 50.0, 30.0].into_iter().enumerate() {
        let mut r = fixtures::metric_report("t1", "a1", T0 + i as i64 * 10_000_000);
        r.cpu_percent = cpu;
        if let Some(sec) = r.security.as_mut() {
            sec.pending_updates = Some(i as i32 + 10);
        }
        produce(e.log.as_ref(), &r).await;
    }
    // Garbage on the topic is skipped; valid records around it are kept.
    e.log
        .produce(
            topics::METRICS,
            vec![ProduceRecord::keyed(b"a1".to_vec(), b"not avro".to_vec())],
        )
        .await
        .expect("produce");
    let mut late = fixtures::metric_report("t1", "a1", T0 - 60_000_000);
    late.cpu_percent = 99.0;
    produce(e.log.as_ref(), &late).await; // older than the others: not the latest
    produce(
        e.log.as_ref(),
        &fixtures::heartbeat("t1", "a1", T0 + 100_000_000, 1),
    )
    .await;
    produce(e.log.as_ref(), &fixtures::metric_report("t2", "b1", T0)).await;
    let alert = fixtures::alert_raised("t1", "a1", T0);
    produce(e.log.as_ref(), &alert).await;

    let api = e.api.clone();
    let (stop, handle) = start(&e);
    let agent = eventually(&api, "/api/v1/agents/a1", |v| {
        v["cpu_percent"] == 30.0 && v["open_alerts"].as_array().is_some_and(|a| a.len() == 1)
    })
    .await;
    assert_eq!(agent["tenant_id"], "t1");
    // The agent's security posture is shown, from the newest report.
    let security = &agent["latest_report"]["security"];
    assert_eq!(security["firewall_enabled"], true, "{agent}");
    assert_eq!(security["pending_updates"], 12, "{agent}");
    assert!(security["pending_security_updates"].is_null(), "{agent}");
    // The whole posture (report schema v2), as the fixture has it.
    assert_eq!(security["reboot_required"], true, "{agent}");
    assert_eq!(
        security["ssh_permit_root_login"], "prohibit-password",
        "{agent}"
    );
    assert_eq!(security["ssh_password_authentication"], false, "{agent}");
    assert_eq!(security["antivirus_present"], true, "{agent}");
    assert_eq!(security["antivirus_signature_age_hours"], 26.5, "{agent}");
    assert_eq!(
        agent["last_seen_at"],
        T0 + 100_000_000,
        "heartbeat moves last seen"
    );
    // The time-series projection runs on its own: wait for it too.
    eventually(&api, "/api/v1/agents/a1", |v| {
        v["series"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == "disk.percent:/var"))
    })
    .await;
    let history = eventually(&api, &history_uri(120), |v| {
        v["series"][0]["buckets"].as_array().is_some_and(|b| {
            b.iter()
                .map(|b| b["count"].as_u64().unwrap_or(0))
                .sum::<u64>()
                == 3
        })
    })
    .await;
    let b = &history["series"][0]["buckets"][0];
    assert_eq!(
        (
            b["min"].as_f64(),
            b["max"].as_f64(),
            b["count"].as_u64(),
            b["last"].as_f64()
        ),
        (Some(10.0), Some(50.0), Some(3), Some(30.0))
    );
    assert_eq!(history["series"][1]["metric"], "disk.percent:/var");

    let (_, tenant1) = get(&api, "/api/v1/agents?tenant=t1").await;
    assert_eq!(
        tenant1["agents"].as_array().map(Vec::len),
        Some(1),
        "tenant filter: {tenant1}"
    );
    let (_, all) = get(&api, "/api/v1/agents").await;
    assert_eq!(all["agents"].as_array().map(Vec::len), Some(2));
    let (status, _) = get(&api, "/api/v1/agents/a1?tenant=t2").await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another tenant's agent is not found"
    );
    let (_, alerts) = get(&api, "/api/v1/alerts?status=open").await;
    assert_eq!(alerts["alerts"][0]["alert_id"], alert.alert_id.as_str());

    // Restart the projections: nothing is applied twice.
    let _ = stop.send(true);
    handle.await.expect("stopped");
    let (stop, handle) = start(&e);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = eventually(&api, &history_uri(120), |_| true).await;
    assert_eq!(
        again["series"][0]["buckets"][0]["count"], 3,
        "idempotent after restart"
    );
    let (_, alerts) = get(&api, "/api/v1/alerts").await;
    assert_eq!(alerts["alerts"].as_array().map(Vec::len), Some(1));
    let _ = stop.send(true);
    handle.await.expect("stopped");

    // The projections emit the metrics they promise.
    use fleet_projections::metrics as m;
    let rendered = prometheus.render();
    for name in [
        m::RECORDS,
        m::DECODE_ERRORS,
        m::BATCH_SECONDS,
        fleet_query_api::metrics::API_REQUESTS,
        fleet_query_api::metrics::API_SECONDS,
        m::CONSUMER_LAG,
    ] {
        assert!(rendered.contains(name), "/metrics lacks {name}");
    }
    // API requests are labelled with their route template, never an id.
    let labelled = |route: &str| {
        rendered.lines().any(|l| {
            l.starts_with(fleet_query_api::metrics::API_REQUESTS)
                && l.contains(&format!("route=\"{route}\""))
        })
    };
    assert!(labelled("/api/v1/agents/{agent_id}"), "{rendered}");
    assert!(!labelled("/api/v1/agents/a1"), "{rendered}");
}

#[tokio::test]
async fn api_refuses_bad_queries_naming_the_parameter() {
    let e = env().await;
    let api = e.api.clone();
    e.rm.apply(
        "test",
        &[fleet_read_model::Change::Report(Box::new(
            fixtures::metric_report("t1", "a1", T0),
        ))],
        &[],
    )
    .await
    .expect("apply");
    for (uri, field) in [
        ("/api/v1/agents?limit=0", "limit"),
        ("/api/v1/agents?colour=red", "colour"),
        ("/api/v1/agents/a1/metrics", "metric"),
        ("/api/v1/agents/a1/metrics?metric=cpu.bogus", "metric"),
        (
            "/api/v1/agents/a1/metrics?metric=cpu.percent&interval=soon",
            "interval",
        ),
        (
            "/api/v1/agents/a1/metrics?metric=cpu.percent&start=yesterday",
            "start",
        ),
        ("/api/v1/alerts?status=closed", "status"),
    ] {
        let (status, v) = get(&api, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["error"]["field"], field, "{uri}: {v}");
    }
    // Parameters each valid that contradict each other: 422 naming one.
    for (uri, field) in [
        (
            "/api/v1/agents/a1/metrics?metric=cpu.percent&start=1h&end=2h",
            "end",
        ),
        (
            "/api/v1/agents/a1/metrics?metric=cpu.percent&start=30d&interval=1s",
            "interval",
        ),
    ] {
        let (status, v) = get(&api, uri).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}: {v}");
        assert_eq!(v["error"]["field"], field, "{uri}: {v}");
    }
    let (status, v) = get(&api, "/api/v1/agents/nobody/metrics?metric=cpu.percent").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_are_projected_into_the_read_model() {
    let e = env().await;
    produce(e.log.as_ref(), &fixtures::rule_defined("t1", "r1", T0)).await;
    produce(e.log.as_ref(), &fixtures::rule_defined("t2", "r2", T0)).await;
    let (stop, handle) = start(&e);
    let mut rules = Vec::new();
    for _ in 0..200 {
        rules = e.rm.list_rules(Some("t1")).await.expect("rules");
        if !rules.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert_eq!(rules[0].rule_id, "r1");
    stop.send(true).expect("stop");
    handle.await.expect("projections");
}

/// The read model stores its next offsets in the transaction of the rows: after a crash
/// between that transaction and the log's commit, the records below the stored offsets
/// come again and are skipped, whatever the log says (here it has nothing committed).
#[tokio::test]
async fn records_below_the_offsets_stored_with_the_rows_are_skipped() {
    let e = env().await;
    let partitions = e
        .log
        .partition_count(topics::AGENTS)
        .await
        .expect("partitions");
    let agents: Vec<String> = (0..)
        .map(|i| format!("agent-{i}"))
        .filter(|a| fleet_event_log::partition_for_key(a.as_bytes(), partitions) == 0)
        .take(3)
        .collect();
    for a in &agents {
        produce(e.log.as_ref(), &fixtures::agent_registered("t1", a, T0)).await;
    }
    // As if a run applied the first two and crashed before committing to the log.
    e.rm.apply(
        fleet_projections::project::READ_MODEL_PROJECTION,
        &[],
        &[fleet_read_model::StoredOffset {
            topic: topics::AGENTS.to_owned(),
            partition: 0,
            next_offset: 2,
        }],
    )
    .await
    .expect("store offsets");
    let cfg = ProjectionsConfig::default();
    assert_eq!(
        e.log
            .committed_offsets(&cfg.read_model_group, topics::AGENTS)
            .await
            .expect("committed")[0],
        None
    );
    let (tx, rx) = watch::channel(false);
    let run = tokio::spawn(run_read_model(
        e.log.clone(),
        fleet_schemas::Wire::plain(),
        e.rm.clone(),
        cfg.clone(),
        Readiness::default(),
        async move {
            let mut rx = rx;
            let _ = rx.wait_for(|v| *v).await;
        },
    ));
    let mut applied = None;
    for _ in 0..600 {
        applied = e.rm.get_agent(None, &agents[2]).await.expect("query");
        if applied.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        applied.is_some(),
        "the record at the stored offset is applied"
    );
    let _ = tx.send(true);
    run.await.expect("join").expect("read model projection");
    for skipped in &agents[..2] {
        assert!(
            e.rm.get_agent(None, skipped)
                .await
                .expect("query")
                .is_none(),
            "{skipped} is below the stored offset: skipped"
        );
    }
    assert_eq!(
        e.rm.offsets(fleet_projections::project::READ_MODEL_PROJECTION)
            .await
            .expect("offsets")
            .iter()
            .find(|o| o.topic == topics::AGENTS && o.partition == 0)
            .map(|o| o.next_offset),
        Some(3)
    );
    // The log gets the same offsets as a hint of where to resume.
    assert_eq!(
        e.log
            .committed_offsets(&cfg.read_model_group, topics::AGENTS)
            .await
            .expect("committed")[0],
        Some(3)
    );
}
