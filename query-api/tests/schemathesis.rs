//! The OpenAPI document matches the API: Schemathesis (pinned in
//! `scripts/services/requirements.txt`, installed into the test venv by
//! `scripts/services.sh`) generates requests from `/api/openapi.json` for every operation,
//! valid and invalid, sends them with the admin key to the real API on 127.0.0.1 (over the
//! seeded two-tenant world: SQLite read model and registry, embedded log and time series),
//! and runs every check: no server error, every status code and response body as
//! documented, what the document allows is accepted, what it forbids is refused, no route
//! works without the key. Any failure fails this test, with Schemathesis' report.
//!
//! Bounded: a fixed seed and a few examples per operation (`FLEET_SCHEMATHESIS_EXAMPLES`,
//! default 50; the seed `FLEET_SCHEMATHESIS_SEED`), so a run takes well under a minute on two cores. Settings in
//! `tests/schemathesis.toml` (why 422 counts as an answer to a well-formed request).

mod support;

use std::path::PathBuf;
use std::process::Stdio;

use support::world::world;
use support::ADMIN;

/// The `schemathesis` command of the test venv (beside `$FLEET_PYTHON`).
fn schemathesis() -> PathBuf {
    let python = std::env::var("FLEET_PYTHON").unwrap_or_else(|_| {
        panic!(
            "FLEET_PYTHON is not set: run `scripts/services.sh up` and \
             `eval \"$(scripts/services.sh env)\"` (the venv has schemathesis)"
        )
    });
    let bin = PathBuf::from(python).with_file_name("schemathesis");
    assert!(
        bin.is_file(),
        "{} is missing: run `scripts/services.sh up` (it installs \
         scripts/services/requirements.txt into the venv)",
        bin.display()
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_matches_the_api() {
    let bin = schemathesis();
    let w = world().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let app = w.app.clone();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let examples = std::env::var("FLEET_SCHEMATHESIS_EXAMPLES").unwrap_or_else(|_| "50".into());
    let seed = std::env::var("FLEET_SCHEMATHESIS_SEED").unwrap_or_else(|_| "20261123".into());
    let report = tempfile::tempdir().expect("report dir");
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis.toml");
    let output = tokio::process::Command::new(&bin)
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{addr}/api/openapi.json"))
        .args(["--checks", "all"])
        .args(["--max-examples", &examples])
        .args(["--seed", &seed])
        // One worker: Hypothesis describes strategies by parsing lambda sources, which is
        // not thread-safe (with two workers a run failed now and then with "AST constructor
        // recursion depth mismatch", a Runtime Error of the tool, not of the API).
        .args(["--workers", "1"])
        .args(["--request-timeout", "30"])
        .args(["--header", &format!("Authorization: Bearer {ADMIN}")])
        .args(["--report", "junit"])
        .arg("--report-dir")
        .arg(report.path())
        .args(["--generation-database", "none"])
        .arg("--no-color")
        // Its replay files go to the temporary directory, not the source tree.
        .current_dir(report.path())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run schemathesis");
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found failures ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // It really ran: every documented operation was tested.
    assert!(
        stdout.contains("passed") || stdout.contains("Passed"),
        "no summary in the output:\n{stdout}\n{stderr}"
    );
}
