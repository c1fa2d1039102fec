//! The notifier against real receivers on loopback: an HTTP receiver (axum) that checks
//! the webhook signature and counts deliveries (one fails the first N times), a
//! Slack-compatible one, and a real SMTP server (PyPI `aiosmtpd`, from the services venv:
//! `scripts/services.sh up`; the email test fails without it). The notifier runs on the
//! embedded log and a SQLite read model, as under `fleetstream up`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_notifier::message::verify;
use fleet_notifier::{NotifierConfig, Readiness};
use fleet_read_model::{
    AlertMatcher, ChannelKind, ChannelSettings, Delivery, DeliveryQuery, DeliveryStatus,
    EmailSettings, NotificationChannel, NotificationRoute, ReadModel, Silence, SmtpTls,
};
use fleet_schemas::{fixtures, AlertEvent, AlertEventKind, DeadLetter, Record as _, Wire};

const SECRET: &str = "whsec_test_secret";
const DEADLINE: Duration = Duration::from_secs(60);

/// What a receiver got.
#[derive(Debug, Clone)]
struct Received {
    idempotency_key: String,
    body: serde_json::Value,
    signature_ok: bool,
}

#[derive(Clone, Default)]
struct Receiver {
    /// Requests answered 503 before the first 200.
    fail_first: usize,
    /// Always 503.
    always_fail: bool,
    requests: Arc<AtomicUsize>,
    acked: Arc<parking_lot_free::Mutex<Vec<Received>>>,
}

/// A tiny mutex wrapper (std) so the test needs no extra crate.
mod parking_lot_free {
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(std::sync::Mutex<T>);
    impl<T: Clone> Mutex<T> {
        pub(crate) fn push_with(&self, f: impl FnOnce(&mut T)) {
            f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()));
        }
        pub(crate) fn get(&self) -> T {
            self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
        }
    }
}

async fn hook(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::SeqCst);
    if r.always_fail || n < r.fail_first {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature_ok = verify(
        SECRET,
        &h("x-fleet-timestamp"),
        &body,
        &h("x-fleet-signature"),
    );
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    r.acked.push_with(|v| {
        v.push(Received {
            idempotency_key: h("idempotency-key"),
            body: json,
            signature_ok,
        })
    });
    StatusCode::OK
}

async fn start_receiver(r: Receiver) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route("/hook", post(hook)).with_state(r);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}/hook")
}

struct World {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    store: Arc<dyn ReadModel>,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl World {
    async fn start(config: NotifierConfig) -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = fleet_event_log::open(
            dir.path().join("log").to_str().expect("utf-8"),
            &Default::default(),
        )
        .await
        .expect("log");
        fleet_consumer::log::ensure_topics(log.as_ref())
            .await
            .expect("topics");
        let store =
            fleet_read_model::open_read_model(dir.path().join("rm.db").to_str().expect("utf-8"))
                .await
                .expect("read model");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = World::spawn(log.clone(), store.clone(), config, rx);
        World {
            _dir: dir,
            log,
            store,
            stop,
            task,
        }
    }

    fn spawn(
        log: Arc<dyn EventLog>,
        store: Arc<dyn ReadModel>,
        config: NotifierConfig,
        mut rx: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<anyhow::Result<()>> {
        tokio::spawn(async move {
            fleet_notifier::run_notifier(
                log,
                Wire::plain(),
                store,
                config,
                Readiness::default(),
                async move {
                    let _ = rx.wait_for(|v| *v).await;
                },
            )
            .await
        })
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("stops in time");
        r.expect("joined").expect("ran without error");
    }

    async fn produce(&self, alert: &AlertEvent) {
        let rec = ProduceRecord {
            key: Some(alert.key().as_bytes().to_vec()),
            value: Wire::plain().encode(alert).expect("encode"),
            timestamp_ms: Some(alert.occurred_at.div_euclid(1000)),
        };
        self.log
            .produce(AlertEvent::TOPIC, vec![rec])
            .await
            .expect("produce");
    }

    async fn channel(
        &self,
        kind: ChannelKind,
        settings: ChannelSettings,
        secret: Option<&str>,
    ) -> String {
        let c = NotificationChannel {
            channel_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: "t1".into(),
            name: format!("{kind:?}"),
            kind,
            settings,
            secret: secret.map(str::to_owned),
            created_at: 0,
            created_by: "test".into(),
        };
        self.store.create_channel(&c).await.expect("channel");
        c.channel_id
    }

    async fn route(
        &self,
        channels: &[&str],
        matcher: AlertMatcher,
        window_ms: i64,
        resolved: bool,
    ) {
        self.store
            .create_route(&NotificationRoute {
                route_id: uuid::Uuid::new_v4().to_string(),
                tenant_id: "t1".into(),
                name: "r".into(),
                channel_ids: channels.iter().map(|c| (*c).to_owned()).collect(),
                matcher,
                group_window_ms: window_ms,
                send_resolved: resolved,
                created_at: 0,
                created_by: "test".into(),
            })
            .await
            .expect("route");
    }

    /// Waits until the deliveries of `channel` satisfy `done`.
    async fn deliveries_until(
        &self,
        channel: &str,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Vec<Delivery> {
        let until = tokio::time::Instant::now() + DEADLINE;
        loop {
            let list = self
                .store
                .list_deliveries(&DeliveryQuery {
                    channel_id: Some(channel.into()),
                    ..DeliveryQuery::default()
                })
                .await
                .expect("list");
            if done(&list) {
                return list;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "waited in vain; have {list:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn fast_config() -> NotifierConfig {
    NotifierConfig {
        allow_private_targets: true,
        retry_initial: Duration::from_millis(200),
        retry_max: Duration::from_millis(400),
        poll_interval: Duration::from_millis(50),
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        ..NotifierConfig::default()
    }
}

fn webhook(url: &str) -> ChannelSettings {
    ChannelSettings {
        url: Some(url.into()),
        email: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_alert_after_retries_signed_and_keyed_by_the_event_id() {
    let receiver = Receiver {
        fail_first: 2,
        ..Receiver::default()
    };
    let url = start_receiver(receiver.clone()).await;
    let w = World::start(fast_config()).await;
    let ch = w
        .channel(ChannelKind::Webhook, webhook(&url), Some(SECRET))
        .await;
    w.route(&[&ch], AlertMatcher::default(), 0, true).await;
    let alert = fixtures::alert_raised("t1", "a1", fleet_schemas::time::now_micros());
    w.produce(&alert).await;
    let list = w
        .deliveries_until(&ch, |l| {
            l.iter().any(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    assert_eq!(list.len(), 1, "{list:#?}");
    let d = &list[0];
    assert_eq!(d.event_id, alert.event_id);
    assert_eq!(d.attempts, 3);
    let outcomes: Vec<(u32, &str, Option<u16>)> = d
        .attempt_log
        .iter()
        .map(|a| (a.attempt, a.outcome.as_str(), a.status_code))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, "failed", Some(503)),
            (2, "failed", Some(503)),
            (3, "ok", Some(200))
        ]
    );
    assert!(d.attempt_log[0]
        .error
        .as_deref()
        .unwrap_or_default()
        .contains("503"));
    // The back-off: the second attempt came at least half the initial wait after the first.
    assert!(
        d.attempt_log[1].at - d.attempt_log[0].at >= 100_000,
        "{:?}",
        d.attempt_log
    );
    let got = receiver.acked.get();
    assert_eq!(got.len(), 1, "acknowledged once: {got:#?}");
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 3);
    let r = &got[0];
    assert!(
        r.signature_ok,
        "HMAC-SHA256 over timestamp.body with the channel's secret"
    );
    assert_eq!(r.idempotency_key, alert.event_id);
    assert_eq!(r.body["version"], 1);
    assert_eq!(r.body["id"], alert.event_id.as_str());
    assert_eq!(r.body["alerts"][0]["event_id"], alert.event_id.as_str());
    assert_eq!(r.body["alerts"][0]["severity"], "critical");
    assert_eq!(r.body["alerts"][0]["kind"], "raised");
    // The alert read again (a new member, a replay) enqueues nothing new and sends nothing.
    w.produce(&alert).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(receiver.acked.get().len(), 1);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_never_answers_ok_gets_a_bounded_number_of_attempts_then_a_dead_letter() {
    let receiver = Receiver {
        always_fail: true,
        ..Receiver::default()
    };
    let url = start_receiver(receiver.clone()).await;
    let w = World::start(NotifierConfig {
        max_attempts: 3,
        ..fast_config()
    })
    .await;
    let ch = w
        .channel(ChannelKind::Webhook, webhook(&url), Some(SECRET))
        .await;
    w.route(&[&ch], AlertMatcher::default(), 0, true).await;
    let alert = fixtures::alert_raised("t1", "a1", fleet_schemas::time::now_micros());
    w.produce(&alert).await;
    let list = w
        .deliveries_until(&ch, |l| l.iter().any(|d| d.status == DeliveryStatus::Dead))
        .await;
    assert_eq!(list[0].attempts, 3);
    assert_eq!(list[0].attempt_log.len(), 3);
    assert!(list[0]
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("gave up after 3 attempts"));
    // The dead letter names the consumer, the reason and the alert's coordinates.
    let until = tokio::time::Instant::now() + DEADLINE;
    let dead = loop {
        let mut all = Vec::new();
        fleet_consumer::log::read_to_end(w.log.as_ref(), &Wire::plain(), DeadLetter::TOPIC, |r| {
            all.push(
                Wire::plain()
                    .decode_known::<DeadLetter>(&r.value)
                    .expect("decode"),
            )
        })
        .await
        .expect("read");
        if !all.is_empty() || tokio::time::Instant::now() > until {
            break all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead.len(), 1, "{dead:#?}");
    let dl = &dead[0];
    assert_eq!(dl.consumer, "notifier");
    assert_eq!(dl.source_topic, "fleet.alerts.v1");
    assert_eq!(dl.source_offset, 0);
    assert_eq!(dl.tenant_id.as_deref(), Some("t1"));
    assert!(
        dl.reason.contains(&ch) && dl.reason.contains("gave up after 3 attempts"),
        "{}",
        dl.reason
    );
    assert_eq!(
        Wire::plain()
            .decode_known::<AlertEvent>(&dl.value.0)
            .expect("the alert's bytes"),
        alert
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        receiver.requests.load(Ordering::SeqCst),
        3,
        "no attempt past the bound"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_group_silence_and_send_resolutions_to_webhook_and_slack() {
    let hook_rx = Receiver::default();
    let slack_rx = Receiver::default();
    let hook_url = start_receiver(hook_rx.clone()).await;
    let slack_url = start_receiver(slack_rx.clone()).await;
    let w = World::start(fast_config()).await;
    let hook = w
        .channel(ChannelKind::Webhook, webhook(&hook_url), Some(SECRET))
        .await;
    let slack = w
        .channel(ChannelKind::Slack, webhook(&slack_url), None)
        .await;
    // Critical alerts to the webhook, grouped over 1.5 s, resolutions too; warnings to Slack only.
    w.route(
        &[&hook],
        AlertMatcher {
            severities: vec!["critical".into()],
            ..AlertMatcher::default()
        },
        1500,
        true,
    )
    .await;
    w.route(
        &[&slack],
        AlertMatcher {
            severities: vec!["warning".into()],
            ..AlertMatcher::default()
        },
        0,
        false,
    )
    .await;
    // Agent a9 is in maintenance.
    let now = fleet_schemas::time::now_micros();
    w.store
        .create_silence(&Silence {
            silence_id: "s1".into(),
            tenant_id: "t1".into(),
            comment: "maintenance".into(),
            matcher: AlertMatcher {
                agent_ids: vec!["a9".into()],
                ..AlertMatcher::default()
            },
            starts_at: now - 1_000_000,
            expires_at: now + 3_600_000_000,
            created_at: now,
            created_by: "test".into(),
        })
        .await
        .expect("silence");
    let raised: Vec<AlertEvent> = ["a1", "a2", "a3", "a9"]
        .iter()
        .map(|a| fixtures::alert_raised("t1", a, now))
        .collect();
    for a in &raised {
        w.produce(a).await;
    }
    let mut warning = fixtures::alert_raised("t1", "a4", now);
    warning.severity = fleet_schemas::AlertSeverity::Warning;
    w.produce(&warning).await;
    let grouped = w
        .deliveries_until(&hook, |l| {
            l.len() == 3 && l.iter().all(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    let got = hook_rx.acked.get();
    assert_eq!(
        got.len(),
        1,
        "three alerts within the window: one message; {got:#?}"
    );
    let alerts = got[0].body["alerts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let agents: std::collections::BTreeSet<&str> = alerts
        .iter()
        .filter_map(|a| a["agent_id"].as_str())
        .collect();
    assert_eq!(
        agents,
        ["a1", "a2", "a3"].into_iter().collect(),
        "a9 is silenced"
    );
    let key = fleet_notifier::message::group_key(
        &raised[..3]
            .iter()
            .map(|a| a.event_id.as_str())
            .collect::<Vec<_>>(),
    );
    assert_eq!(got[0].idempotency_key, key);
    assert!(grouped.iter().all(|d| d.attempt_log[0].message_id == key));
    // Slack got the warning as {"text"} and nothing else.
    w.deliveries_until(&slack, |l| {
        l.len() == 1 && l[0].status == DeliveryStatus::Delivered
    })
    .await;
    let s = slack_rx.acked.get();
    assert_eq!(s.len(), 1);
    let text = s[0].body["text"].as_str().unwrap_or_default();
    assert!(text.contains("[WARNING] RAISED CPU high on a4"), "{text}");
    assert_eq!(
        s[0].body.as_object().map(|o| o.len()),
        Some(1),
        "only text: {}",
        s[0].body
    );
    // A resolution goes to the webhook (send_resolved), not to Slack.
    let mut resolved = raised[0].clone();
    resolved.kind = AlertEventKind::Resolved;
    resolved.event_id = fleet_schemas::ids::v5(&[&resolved.alert_id, "RESOLVED"]).to_string();
    w.produce(&resolved).await;
    let mut warning_resolved = warning.clone();
    warning_resolved.kind = AlertEventKind::Resolved;
    warning_resolved.event_id =
        fleet_schemas::ids::v5(&[&warning.alert_id, "RESOLVED"]).to_string();
    w.produce(&warning_resolved).await;
    w.deliveries_until(&hook, |l| {
        l.len() == 4 && l.iter().all(|d| d.status == DeliveryStatus::Delivered)
    })
    .await;
    let got = hook_rx.acked.get();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].body["alerts"][0]["kind"], "resolved");
    assert_eq!(got[1].idempotency_key, resolved.event_id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slack_rx.acked.get().len(),
        1,
        "no resolution to the Slack route"
    );
    w.stop().await;
}

/// A real SMTP server (aiosmtpd, `tests/smtp_sink.py`) on a free loopback port, stopped
/// when dropped.
struct SmtpSink {
    port: u16,
    /// Where the server appends each message it accepted (one JSON line).
    out: std::path::PathBuf,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl SmtpSink {
    /// Starts `smtp_sink.py PORT OUT_FILE ARGS...` and waits until it listens.
    async fn start<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> SmtpSink {
        use tokio::io::AsyncBufReadExt as _;
        let python = fleet_test_support::services::python_bin().expect(
            "the services venv with aiosmtpd (scripts/services.sh up; eval \"$(scripts/services.sh env)\")",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("mail.jsonl");
        let port = fleet_test_support::process::free_port().expect("port");
        let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/smtp_sink.py");
        let mut child = tokio::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(&out)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start aiosmtpd");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(DEADLINE, lines.next_line())
            .await
            .expect("aiosmtpd starts in time")
            .expect("read");
        assert_eq!(
            first.as_deref(),
            Some("ready"),
            "aiosmtpd did not start (is it in the venv?)"
        );
        SmtpSink {
            port,
            out,
            _dir: dir,
            _child: child,
        }
    }

    /// The messages received so far.
    fn mails(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Channel settings for this server: user `mailer`, from `fleet@example.com`, to `to`.
    fn channel(&self, tls: SmtpTls, to: &[&str]) -> ChannelSettings {
        ChannelSettings {
            url: None,
            email: Some(EmailSettings {
                host: "127.0.0.1".into(),
                port: self.port,
                tls,
                username: Some("mailer".into()),
                from: "fleet@example.com".into(),
                to: to.iter().map(|t| (*t).to_owned()).collect(),
            }),
        }
    }
}

/// Asserts that `m` is the email of `alert` to `to`, sent after AUTH.
fn assert_alert_mail(m: &serde_json::Value, alert: &AlertEvent, to: &[&str]) {
    assert_eq!(m["mail_from"], "fleet@example.com");
    assert_eq!(m["rcpt_tos"], serde_json::json!(to));
    assert_eq!(m["authenticated"], true, "{m:#}");
    let data = m["data"].as_str().unwrap_or_default();
    assert!(
        data.contains(&format!(
            "Subject: [Fleetstream] [CRITICAL] RAISED CPU high on {}",
            alert.agent_id
        )),
        "{data}"
    );
    assert!(
        data.contains(&format!("Message-ID: <{}@fleetstream>", alert.event_id)),
        "{data}"
    );
    assert!(data.contains(&alert.alert_id), "{data}");
}

/// Starts a notifier with `config` and one email channel (`tls`, password `password`)
/// routed everything, raises an alert on `agent`, and waits until its delivery is
/// delivered or dead.
async fn email_once(
    sink: &SmtpSink,
    config: NotifierConfig,
    tls: SmtpTls,
    password: &str,
    agent: &str,
) -> (AlertEvent, Delivery) {
    let w = World::start(config).await;
    let ch = w
        .channel(
            ChannelKind::Email,
            sink.channel(tls, &["ops@example.com"]),
            Some(password),
        )
        .await;
    w.route(&[&ch], AlertMatcher::default(), 0, true).await;
    let alert = fixtures::alert_raised("t1", agent, fleet_schemas::time::now_micros());
    w.produce(&alert).await;
    let list = w
        .deliveries_until(&ch, |l| {
            l.iter()
                .any(|d| matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Dead))
        })
        .await;
    w.stop().await;
    assert_eq!(list.len(), 1, "{list:#?}");
    (alert, list[0].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_channel_delivers_through_a_real_smtp_server_with_auth() {
    let sink = SmtpSink::start(&["--auth", "mailer", "mail-pass"]).await;
    let w = World::start(fast_config()).await;
    let ch = w
        .channel(
            ChannelKind::Email,
            sink.channel(SmtpTls::None, &["ops@example.com", "oncall@example.com"]),
            Some("mail-pass"),
        )
        .await;
    w.route(&[&ch], AlertMatcher::default(), 0, true).await;
    let alert = fixtures::alert_raised("t1", "web-1", fleet_schemas::time::now_micros());
    w.produce(&alert).await;
    let list = w
        .deliveries_until(&ch, |l| {
            l.iter().any(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    assert_eq!(list[0].attempt_log[0].status_code, Some(250));
    let got = sink.mails();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_alert_mail(&got[0], &alert, &["ops@example.com", "oncall@example.com"]);
    assert_eq!(got[0]["tls"], false, "plain SMTP: {:#}", got[0]);
    w.stop().await;

    // A recipient the server refuses (550) is a permanent failure: dead after one attempt.
    let w = World::start(fast_config()).await;
    let bad = w
        .channel(
            ChannelKind::Email,
            sink.channel(SmtpTls::None, &["nobody@example.com"]),
            Some("mail-pass"),
        )
        .await;
    w.route(&[&bad], AlertMatcher::default(), 0, true).await;
    w.produce(&fixtures::alert_raised(
        "t1",
        "web-2",
        fleet_schemas::time::now_micros(),
    ))
    .await;
    let list = w
        .deliveries_until(&bad, |l| l.iter().any(|d| d.status == DeliveryStatus::Dead))
        .await;
    assert_eq!(list[0].attempts, 1, "{list:#?}");
    assert_eq!(list[0].attempt_log[0].status_code, Some(550), "{list:#?}");
    assert_eq!(sink.mails().len(), 1, "nothing more received");
    w.stop().await;
}

/// A throw-away CA (written to `dir/ca.pem`) and an SMTP server certificate it signed for
/// 127.0.0.1: the arguments `--starttls`/`--tls` take, and the CA file.
fn smtp_pki(dir: &std::path::Path) -> (std::path::PathBuf, [String; 2]) {
    let ca = fleet_test_support::pki::TestCa::new("Fleetstream SMTP test CA").expect("CA");
    let (cert, key) = ca
        .server_cert(&["127.0.0.1", "localhost"])
        .expect("server certificate")
        .write(dir)
        .expect("write certificate");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem()).expect("write CA");
    let path = |p: &std::path::Path| p.to_str().expect("utf-8").to_owned();
    (ca_file, [path(&cert), path(&key)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_required_starttls_with_auth_trusts_the_configured_ca_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_file, [cert, key]) = smtp_pki(dir.path());
    let sink = SmtpSink::start(&["--auth", "mailer", "mail-pass", "--starttls", &cert, &key]).await;
    let trusting = NotifierConfig {
        smtp_ca_file: Some(ca_file),
        ..fast_config()
    };

    // STARTTLS, then AUTH, then the mail: the server saw both.
    let (alert, d) = email_once(
        &sink,
        trusting.clone(),
        SmtpTls::Starttls,
        "mail-pass",
        "web-1",
    )
    .await;
    assert_eq!(d.status, DeliveryStatus::Delivered, "{d:#?}");
    assert_eq!(d.attempt_log[0].status_code, Some(250), "{d:#?}");
    let got = sink.mails();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_alert_mail(&got[0], &alert, &["ops@example.com"]);
    assert_eq!(
        got[0]["tls"], true,
        "the session was upgraded: {:#}",
        got[0]
    );
    assert!(
        got[0]["tls_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{:#}",
        got[0]
    );

    // A wrong password: the server answers 535, a permanent failure, no mail.
    let (_, d) = email_once(
        &sink,
        trusting.clone(),
        SmtpTls::Starttls,
        "wrong-pass",
        "web-2",
    )
    .await;
    assert_eq!(d.status, DeliveryStatus::Dead, "{d:#?}");
    assert_eq!(d.attempts, 1, "{d:#?}");
    assert_eq!(d.attempt_log[0].status_code, Some(535), "{d:#?}");
    assert!(
        d.attempt_log[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("535")),
        "{d:#?}"
    );
    assert_eq!(sink.mails().len(), 1, "no mail with a wrong password");

    // A channel without TLS to this server: AUTH is offered only after STARTTLS, so the
    // notifier finds no mechanism and sends neither the password nor the mail.
    let (_, d) = email_once(&sink, trusting, SmtpTls::None, "mail-pass", "web-3").await;
    assert_eq!(d.status, DeliveryStatus::Dead, "{d:#?}");
    assert!(
        d.attempt_log[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("No compatible authentication mechanism")),
        "{d:#?}"
    );
    assert_eq!(sink.mails().len(), 1, "no mail without STARTTLS");

    // Without smtp-ca-file the certificate is not trusted (the built-in roots only): every
    // attempt fails at the handshake, names the certificate, and sends nothing.
    let (_, d) = email_once(
        &sink,
        NotifierConfig {
            max_attempts: 2,
            ..fast_config()
        },
        SmtpTls::Starttls,
        "mail-pass",
        "web-4",
    )
    .await;
    assert_eq!(d.status, DeliveryStatus::Dead, "{d:#?}");
    assert_eq!(d.attempt_log.len(), 2, "{d:#?}");
    for a in &d.attempt_log {
        let e = a.error.as_deref().unwrap_or_default();
        assert!(
            e.starts_with(&format!("SMTP 127.0.0.1:{} (starttls): ", sink.port))
                && e.contains("invalid peer certificate: UnknownIssuer"),
            "the error names the server and the untrusted certificate: {d:#?}"
        );
    }
    assert_eq!(sink.mails().len(), 1, "no mail to an untrusted server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_over_implicit_tls_with_auth_trusts_the_configured_ca_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_file, [cert, key]) = smtp_pki(dir.path());
    let sink = SmtpSink::start(&["--auth", "mailer", "mail-pass", "--tls", &cert, &key]).await;
    let (alert, d) = email_once(
        &sink,
        NotifierConfig {
            smtp_ca_file: Some(ca_file),
            ..fast_config()
        },
        SmtpTls::Tls,
        "mail-pass",
        "web-1",
    )
    .await;
    assert_eq!(d.status, DeliveryStatus::Delivered, "{d:#?}");
    let got = sink.mails();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_alert_mail(&got[0], &alert, &["ops@example.com"]);
    assert_eq!(got[0]["tls"], true, "TLS from the first byte: {:#}", got[0]);

    let (_, d) = email_once(
        &sink,
        NotifierConfig {
            max_attempts: 1,
            ..fast_config()
        },
        SmtpTls::Tls,
        "mail-pass",
        "web-2",
    )
    .await;
    assert_eq!(d.status, DeliveryStatus::Dead, "{d:#?}");
    assert!(
        d.attempt_log[0].error.as_deref().is_some_and(|e| e
            .starts_with(&format!("SMTP 127.0.0.1:{} (tls): ", sink.port))
            && e.contains("invalid peer certificate: UnknownIssuer")),
        "{d:#?}"
    );
    assert_eq!(sink.mails().len(), 1, "no mail to an untrusted server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renotified_alert_is_sent_again_under_its_own_key() {
    // The evaluator re-raises an open alert every `renotify_secs`: RAISED with the same
    // alert id and a new event id. Each is a notification of its own.
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let w = World::start(fast_config()).await;
    let ch = w
        .channel(ChannelKind::Webhook, webhook(&url), Some(SECRET))
        .await;
    w.route(&[&ch], AlertMatcher::default(), 0, true).await;
    let first = fixtures::alert_raised("t1", "a1", fleet_schemas::time::now_micros());
    let mut again = first.clone();
    again.event_id =
        fleet_schemas::ids::v5(&[&first.alert_id, "raised", "renotify", "1"]).to_string();
    w.produce(&first).await;
    w.produce(&again).await;
    let list = w
        .deliveries_until(&ch, |l| {
            l.len() == 2 && l.iter().all(|d| d.status == DeliveryStatus::Delivered)
        })
        .await;
    assert!(list.iter().all(|d| d.alert_id == first.alert_id));
    let keys: std::collections::BTreeSet<String> = receiver
        .acked
        .get()
        .into_iter()
        .map(|r| r.idempotency_key)
        .collect();
    assert_eq!(
        keys,
        [first.event_id.clone(), again.event_id.clone()]
            .into_iter()
            .collect()
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_test_is_sent_alone_marked_as_a_test() {
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let w = World::start(fast_config()).await;
    let ch = w
        .channel(ChannelKind::Webhook, webhook(&url), Some(SECRET))
        .await;
    // What POST /api/v1/notification-channels/{id}/test enqueues: no route, kind "test".
    let now = fleet_schemas::time::now_micros();
    let mut alert = fixtures::alert_raised("t1", "test", now);
    alert.event_id = uuid::Uuid::new_v4().to_string();
    w.store
        .enqueue_deliveries(&[fleet_read_model::NewDelivery {
            delivery_id: uuid::Uuid::new_v4().to_string(),
            tenant_id: "t1".into(),
            channel_id: ch.clone(),
            route_id: None,
            event_id: alert.event_id.clone(),
            alert_id: alert.alert_id.clone(),
            kind: "test".into(),
            alert: fleet_read_model::alert_payload(&alert),
            group_window_ms: 0,
            now,
            source: None,
        }])
        .await
        .expect("enqueue");
    w.deliveries_until(&ch, |l| {
        l.len() == 1 && l[0].status == DeliveryStatus::Delivered
    })
    .await;
    let got = receiver.acked.get();
    assert_eq!(got.len(), 1);
    assert!(got[0].signature_ok);
    assert_eq!(got[0].body["test"], true);
    assert_eq!(got[0].body["route_id"], serde_json::Value::Null);
    assert_eq!(got[0].idempotency_key, alert.event_id);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_deleted_channel_enqueues_nothing_for_it() {
    let receiver = Receiver::default();
    let url = start_receiver(receiver.clone()).await;
    let w = World::start(fast_config()).await;
    let kept = w.channel(ChannelKind::Slack, webhook(&url), None).await;
    let gone = w.channel(ChannelKind::Slack, webhook(&url), None).await;
    w.route(&[&gone, &kept], AlertMatcher::default(), 0, true)
        .await;
    w.store
        .delete_channel(Some("t1"), &gone)
        .await
        .expect("delete")
        .expect("there");
    w.produce(&fixtures::alert_raised(
        "t1",
        "a1",
        fleet_schemas::time::now_micros(),
    ))
    .await;
    w.deliveries_until(&kept, |l| {
        l.len() == 1 && l[0].status == DeliveryStatus::Delivered
    })
    .await;
    let gone_list = w
        .store
        .list_deliveries(&DeliveryQuery {
            channel_id: Some(gone.clone()),
            ..DeliveryQuery::default()
        })
        .await
        .expect("list");
    assert!(gone_list.is_empty(), "{gone_list:#?}");
    assert_eq!(receiver.acked.get().len(), 1);
    w.stop().await;
}
