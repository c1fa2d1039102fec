//! SIGHUP reloads the listener's certificate (its own test binary: the signal goes to the
//! whole process).

use std::time::Duration;

use fleet_service::serve::{HttpServer, HttpSettings};
use fleet_test_support::pki::TestCa;

#[tokio::test]
async fn sighup_reloads_the_certificate() -> anyhow::Result<()> {
    // Our own SIGHUP handler first: from here on the signal no longer ends the process.
    let _keep = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let dir = tempfile::tempdir()?;
    let ca = TestCa::new("fleet test CA")?;
    let first = ca.server_cert(&["localhost"])?;
    let (cert, key) = first.write(dir.path())?;
    let server = HttpServer::bind(
        "test",
        "127.0.0.1:0".parse()?,
        &HttpSettings {
            tls_cert: Some(cert),
            tls_key: Some(key),
            // No file polling: only the signal can reload.
            tls_reload_check: std::time::Duration::ZERO,
            ..HttpSettings::default()
        },
    )
    .await?;
    let handle = server.certificate().expect("TLS server");
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.serve(axum::Router::new(), async {
        let _ = stopped.await;
    }));
    assert_eq!(handle.chain()[0].as_ref(), first.der.as_slice());

    let second = ca.server_cert(&["localhost"])?;
    second.write(dir.path())?;
    // The files changed, but nothing polls them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.chain()[0].as_ref(), first.der.as_slice());

    // Signal until the watcher (registered when the server task first ran) reloads.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while handle.chain()[0].as_ref() != second.der.as_slice() {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not reload the certificate"
        );
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -HUP failed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}
