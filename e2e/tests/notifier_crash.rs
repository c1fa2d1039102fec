//! The notifier as a real process (`fleetstream notifier`) on a private Kafka broker and a
//! fresh PostgreSQL database, SIGKILLed while a receiver holds a delivery unanswered:
//! after a restart every alert reaches the receiver, and none that the receiver
//! acknowledged before the crash is sent again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use fleet_e2e::kafka::PrivateKafka;
use fleet_e2e::{free_port, wait_for, write_file, Proc};
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_read_model::{
    AlertMatcher, ChannelKind, ChannelSettings, DeliveryQuery, DeliveryStatus, NotificationChannel,
    NotificationRoute, ReadModel,
};
use fleet_schemas::{fixtures, AlertEvent, Record as _, Wire};

const WAIT: Duration = Duration::from_secs(90);

/// Acknowledged requests per idempotency key; while `hold` is set a request is kept
/// unanswered (and never acknowledged).
#[derive(Clone, Default)]
struct Receiver {
    hold: Arc<AtomicBool>,
    holding: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, usize>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    if r.hold.load(Ordering::SeqCst) {
        r.holding.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(120)).await;
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    *r.acked
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
    StatusCode::OK
}

fn acked(r: &Receiver) -> BTreeMap<String, usize> {
    r.acked.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn produce(log: &dyn EventLog, alert: &AlertEvent) -> anyhow::Result<()> {
    let rec = ProduceRecord {
        key: Some(alert.key().as_bytes().to_vec()),
        value: Wire::plain().encode(alert)?,
        timestamp_ms: Some(alert.occurred_at.div_euclid(1000)),
    };
    log.produce(AlertEvent::TOPIC, vec![rec]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sigkilled_notifier_loses_nothing_and_resends_nothing_acknowledged() -> anyhow::Result<()>
{
    let kafka = PrivateKafka::start().await?;
    let db = fleet_e2e::fresh_database().await?;
    let store: Arc<dyn ReadModel> = fleet_read_model::open_read_model(&db).await?;
    let log = fleet_event_log::open(&kafka.url(), &Default::default()).await?;

    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let channel = NotificationChannel {
        channel_id: uuid::Uuid::new_v4().to_string(),
        tenant_id: "t1".into(),
        name: "hook".into(),
        kind: ChannelKind::Webhook,
        settings: ChannelSettings {
            url: Some(url),
            email: None,
        },
        secret: Some("whsec_e2e".into()),
        created_at: 0,
        created_by: "e2e".into(),
    };
    store.create_channel(&channel).await?;
    store
        .create_route(&NotificationRoute {
            route_id: "r1".into(),
            tenant_id: "t1".into(),
            name: "all".into(),
            channel_ids: vec![channel.channel_id.clone()],
            matcher: AlertMatcher::default(),
            group_window_ms: 0,
            send_resolved: true,
            created_at: 0,
            created_by: "e2e".into(),
        })
        .await?;

    let dir = tempfile::tempdir()?;
    let port = free_port()?;
    let cfg = write_file(
        dir.path(),
        "notifier.toml",
        &format!(
            "listen = \"127.0.0.1:{port}\"\nread-model = \"{db}\"\nallow-private-targets = true\n\
             retry-initial = \"200ms\"\nretry-max = \"1s\"\nrequest-timeout = \"3s\"\n\
             lease = \"4s\"\npoll-interval = \"100ms\"\n[event-log]\nurl = \"{}\"\n",
            kafka.url()
        ),
    )?;
    let cfg = cfg.to_str().context("utf-8 path")?.to_owned();
    let args = ["notifier", "--config", cfg.as_str()];
    let ready = format!("http://127.0.0.1:{port}/readyz");
    let mut first = Proc::start("notifier-1", dir.path(), &args, &[])?;
    fleet_e2e::wait_ready(&ready, WAIT, &[&first]).await?;

    let now = fleet_schemas::time::now_micros();
    let alerts: Vec<AlertEvent> = (1..=5)
        .map(|i| fixtures::alert_raised("t1", &format!("agent-{i}"), now + i))
        .collect();
    for a in &alerts[..3] {
        produce(log.as_ref(), a).await?;
    }
    wait_for("three acknowledged", WAIT, &[&first], || async {
        let got = acked(&receiver);
        anyhow::ensure!(got.len() == 3, "acknowledged: {got:?}");
        Ok(Some(()))
    })
    .await?;

    // The fourth is held unanswered; the notifier dies mid-delivery.
    receiver.hold.store(true, Ordering::SeqCst);
    produce(log.as_ref(), &alerts[3]).await?;
    wait_for("the fourth held", WAIT, &[&first], || async {
        Ok(receiver.holding.load(Ordering::SeqCst).then_some(()))
    })
    .await?;
    first.kill()?;
    receiver.hold.store(false, Ordering::SeqCst);
    // The fifth comes while no notifier runs.
    produce(log.as_ref(), &alerts[4]).await?;

    let second = Proc::start("notifier-2", dir.path(), &args, &[])?;
    fleet_e2e::wait_ready(&ready, WAIT, &[&second]).await?;
    wait_for("all five acknowledged", WAIT, &[&second], || async {
        let got = acked(&receiver);
        anyhow::ensure!(got.len() == 5, "acknowledged: {got:?}");
        Ok(Some(()))
    })
    .await?;
    // Time for any duplicate to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = acked(&receiver);
    for a in &alerts {
        assert_eq!(
            got.get(&a.event_id),
            Some(&1),
            "{} once: {got:?}",
            a.event_id
        );
    }
    let list = store
        .list_deliveries(&DeliveryQuery {
            channel_id: Some(channel.channel_id.clone()),
            ..DeliveryQuery::default()
        })
        .await?;
    assert_eq!(list.len(), 5, "{list:#?}");
    assert!(
        list.iter().all(|d| d.status == DeliveryStatus::Delivered),
        "{list:#?}"
    );
    let held = list
        .iter()
        .find(|d| d.event_id == alerts[3].event_id)
        .context("the held one")?;
    assert_eq!(
        held.attempt_log
            .iter()
            .filter(|a| a.outcome == "ok")
            .count(),
        1,
        "{held:#?}"
    );
    drop(second);
    Ok(())
}
