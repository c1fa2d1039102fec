//! `fleetstream gateway` refuses a `public-url` that would point agents on other machines
//! at themselves (finding 2 of issue 11), before it opens anything.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the gateway; `None` when it was still running after 30 s (then it is killed).
fn gateway_with(listen: &str, public_url: &str) -> Option<std::process::Output> {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = \"{listen}\"\npublic-url = \"{public_url}\"\nauth = \"off\"\n\
             [event-log]\nurl = \"file://{}\"\n",
            dir.path().join("log").display()
        ),
    )
    .expect("config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_fleetstream"))
        .args(["gateway", "--config"])
        .arg(&cfg)
        .env_remove("FLEET_GATEWAY__PUBLIC_URL")
        .env_remove("FLEET_GATEWAY__LISTEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fleetstream");
    let started = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(child.wait_with_output().expect("output"))
}

#[test]
fn a_loopback_public_url_on_a_public_listener_is_refused() {
    for public_url in ["http://127.0.0.1:8080", "http://0.0.0.0:8080"] {
        let Some(out) = gateway_with("0.0.0.0:0", public_url) else {
            panic!("{public_url}: the gateway started and kept running");
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{public_url}: started: {stderr}");
        assert!(
            stderr.contains("public-url") && stderr.contains("credential"),
            "{public_url}: {stderr}"
        );
    }
}
