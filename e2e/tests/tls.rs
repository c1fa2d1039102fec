//! The real agent against the real gateway over TLS: the gateway (its router, the
//! embedded log, a SQLite registry) is served by the roles' listener
//! ([`fleet_service::serve::HttpServer`]) with a certificate from a CA the test makes; the
//! agent enrolls (HTTPS), then reports over the WebSocket (`wss://`) and HTTPS, trusting
//! only that CA (`ca-file`). With another CA the agent refuses the server, saying why.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use fleet_event_log::EventLog;
use fleet_ingest_gateway::{AuthMode, GatewayConfig, GatewayState};
use fleet_registry::{hash_secret, NewToken, Registry};
use fleet_schemas::{codec, MetricReport, Record};
use fleet_service::serve::{HttpServer, HttpSettings};
use fleet_test_support::pki::TestCa;

const WAIT: Duration = Duration::from_secs(60);

struct Gateway {
    addr: SocketAddr,
    log: Arc<dyn EventLog>,
    registry: Arc<dyn Registry>,
    tenant_id: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn tls_gateway(dir: &Path, cert: &Path, key: &Path) -> anyhow::Result<Gateway> {
    let log = fleet_event_log::open(
        &format!("file://{}", dir.join("log").display()),
        &Default::default(),
    )
    .await?;
    fleet_consumer::log::ensure_topics(log.as_ref()).await?;
    let registry: Arc<dyn Registry> =
        fleet_registry::open_registry(&format!("sqlite://{}", dir.join("registry.db").display()))
            .await?;
    let tenant = registry
        .create_tenant("tls", fleet_e2e::now_micros())
        .await?;
    let cfg = GatewayConfig {
        auth: AuthMode::Required,
        http: HttpSettings {
            tls_cert: Some(cert.to_owned()),
            tls_key: Some(key.to_owned()),
            ..HttpSettings::default()
        },
        ..GatewayConfig::default()
    };
    let server = HttpServer::bind("gateway", "127.0.0.1:0".parse()?, &cfg.http).await?;
    let addr = server.local_addr()?;
    let state = GatewayState::with_registry(
        log.clone(),
        fleet_schemas::Wire::plain(),
        Some(registry.clone()),
        cfg,
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(fleet_ingest_gateway::app(state), async {
        let _ = rx.await;
    }));
    Ok(Gateway {
        addr,
        log,
        registry,
        tenant_id: tenant.tenant_id,
        _stop: tx,
    })
}

async fn token(gw: &Gateway, secret: &str) -> anyhow::Result<()> {
    let now = fleet_e2e::now_micros();
    let t = NewToken {
        tenant_id: gw.tenant_id.clone(),
        location_id: None,
        device_name: Some("tls-agent".into()),
        expires_at: now + 600_000_000,
        created_by: "test".into(),
        created_at: now,
    };
    gw.registry.create_token(&t, hash_secret(secret)).await?;
    Ok(())
}

async fn reports_of(log: &Arc<dyn EventLog>, agent_id: &str) -> anyhow::Result<usize> {
    let mut n = 0;
    fleet_consumer::log::read_to_end(
        log.as_ref(),
        &fleet_schemas::Wire::plain(),
        MetricReport::TOPIC,
        |r| {
            if codec::Wire::plain()
                .decode_known::<MetricReport>(&r.value)
                .is_ok_and(|m| m.agent_id == agent_id)
            {
                n += 1;
            }
        },
    )
    .await?;
    Ok(n)
}

fn agent_config(server_url: &str, ca_file: &Path, state_dir: &Path) -> fleet_agent::AgentConfig {
    fleet_agent::AgentConfig {
        server_url: server_url.to_owned(),
        ca_file: Some(ca_file.to_owned()),
        state_dir: Some(state_dir.to_owned()),
        collect_interval: Some(Duration::from_secs_f64(0.2)),
        batch_max_reports: 1,
        inventory: false,
        ..fleet_agent::AgentConfig::default()
    }
}

#[tokio::test]
async fn the_agent_reports_to_a_tls_gateway_and_refuses_an_unknown_ca() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("fleet e2e CA")?;
    let (cert, key) = ca
        .server_cert(&["localhost", "127.0.0.1"])?
        .write(dir.path())?;
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.cert_pem())?;
    let gw = tls_gateway(dir.path(), &cert, &key).await?;
    let server_url = format!("https://localhost:{}", gw.addr.port());

    // Another CA: enrollment and sends refuse the server, naming the certificate.
    let other = TestCa::new("someone else's CA")?;
    let other_file = dir.path().join("other-ca.pem");
    std::fs::write(&other_file, other.cert_pem())?;
    token(&gw, "fst_tls-1").await?;
    let wrong = agent_config(&server_url, &other_file, &dir.path().join("wrong"));
    let err = fleet_agent::enroll_with_tls(
        &server_url,
        "fst_tls-1",
        &dir.path().join("wrong"),
        &fleet_agent::ClientTls::for_config(&wrong)?,
    )
    .await
    .expect_err("an unknown CA must be refused");
    assert!(
        err.to_string().contains("certificate"),
        "the error says why: {err}"
    );
    let transport = fleet_agent::HttpTransport::new(
        &server_url,
        Duration::from_secs(5),
        &fleet_agent::ClientTls::for_config(&wrong)?,
    )?;
    let outcome = fleet_agent::Transport::send(
        &transport,
        "nobody",
        &fleet_schemas::api::MetricBatch { reports: vec![] },
    )
    .await;
    assert!(
        matches!(&outcome, fleet_agent::SendOutcome::RetryLater { reason, .. } if reason.contains("certificate")),
        "{outcome:?}"
    );

    // The right CA: enroll (the token was not spent above), then run until reports land.
    let state_dir = dir.path().join("agent");
    let cfg = agent_config(&server_url, &ca_file, &state_dir);
    let enrollment = fleet_agent::enroll_with_tls(
        &server_url,
        "fst_tls-1",
        &state_dir,
        &fleet_agent::ClientTls::for_config(&cfg)?,
    )
    .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(fleet_agent::run(cfg, async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + WAIT;
    while reports_of(&gw.log, &enrollment.agent_id).await? < 3 {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no reports from the agent over TLS within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop.send(());
    let stats = agent.await??;
    assert!(
        stats.ws_connects >= 1,
        "the WebSocket connected over wss://: {stats:?}"
    );
    Ok(())
}
