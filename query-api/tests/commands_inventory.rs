//! Commands, software inventories and tickets: records written to the embedded log flow
//! through the read-model projection into SQLite and come back from the query API.

mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_projections::project::{run_read_model, Readiness};
use fleet_projections::ProjectionsConfig;
use fleet_schemas::{
    fixtures, CommandEvent, CommandEventKind, Record, SoftwareInventory, SoftwarePackage,
    TicketEvent, TicketEventKind,
};
use http_body_util::BodyExt as _;
use serde_json::Value;
use tokio::sync::watch;
use tower::ServiceExt as _;

const T0: i64 = 1_795_400_000_000_000; // µs, a fixed instant
const SECOND: i64 = 1_000_000;

struct Env {
    _dir: tempfile::TempDir,
    log: Arc<dyn EventLog>,
    rm: Arc<dyn fleet_read_model::ReadModel>,
    api: Router,
}

async fn env() -> Env {
    let stores = support::stores().await;
    let api = stores.api();
    let support::Stores {
        dir,
        log,
        read_model: rm,
        ..
    } = stores;
    Env {
        _dir: dir,
        log,
        rm,
        api,
    }
}

use support::{produce, ADMIN};

/// Runs the read-model projection until the returned sender fires.
fn start(e: &Env) -> (watch::Sender<bool>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = watch::channel(false);
    let (log, rm) = (e.log.clone(), e.rm.clone());
    let handle = tokio::spawn(async move {
        let stop = async move {
            let _ = rx.wait_for(|v| *v).await;
        };
        run_read_model(
            log,
            fleet_schemas::Wire::plain(),
            rm,
            ProjectionsConfig::default(),
            Readiness::default(),
            stop,
        )
        .await
        .expect("read model projection");
    });
    (tx, handle)
}

async fn call(app: &Router, method: Method, uri: &str) -> (StatusCode, Value) {
    let resp = app
        .clone()
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
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

async fn get(app: &Router, uri: &str) -> (StatusCode, Value) {
    call(app, Method::GET, uri).await
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

fn step(tenant: &str, agent: &str, id: &str, kind: CommandEventKind, at: i64) -> CommandEvent {
    let done = fixtures::command_completed(tenant, agent, at);
    let ended = kind == CommandEventKind::Completed;
    CommandEvent {
        event_id: fleet_schemas::ids::v5(&[id, kind.as_str(), &at.to_string()]).to_string(),
        command_id: id.to_owned(),
        kind,
        requires_approval: true,
        actor: match kind {
            CommandEventKind::Requested => Some("alice@example.com".into()),
            CommandEventKind::Approved => Some("bob@example.com".into()),
            CommandEventKind::Dispatched => Some("gateway-1".into()),
            _ => None,
        },
        stream: (kind == CommandEventKind::Progress).then(|| "stdout".into()),
        chunk: (kind == CommandEventKind::Progress).then(|| "restarting\n".into()),
        status: done.status.filter(|_| ended),
        exit_code: done.exit_code.filter(|_| ended),
        stdout: done.stdout.filter(|_| ended),
        stderr: done.stderr.filter(|_| ended),
        started_at: done.started_at.filter(|_| ended),
        finished_at: done.finished_at.filter(|_| ended),
        ..done
    }
}

fn ticket(tenant: &str, agent: &str, status: &str, at: i64) -> TicketEvent {
    TicketEvent {
        event_id: format!("{agent}/{status}"),
        kind: if status == "open" {
            TicketEventKind::Requested
        } else {
            TicketEventKind::Updated
        },
        status: status.into(),
        occurred_at: at,
        ..fixtures::ticket_requested(tenant, agent, T0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_software_and_tickets_flow_to_the_api() {
    use CommandEventKind::*;
    let e = env().await;
    let log = e.log.as_ref();

    // c1: the whole lifecycle in order. c2: its result was written before its request
    // (another partition's timing, a replay): the request must not move it back.
    for (kind, at) in [
        (Requested, T0),
        (Approved, T0 + SECOND),
        (Dispatched, T0 + 2 * SECOND),
        (Progress, T0 + 3 * SECOND),
        (Completed, T0 + 5 * SECOND),
    ] {
        produce(log, &step("t1", "a1", "c1", kind, at)).await;
    }
    produce(log, &step("t1", "a1", "c2", Completed, T0 + 20 * SECOND)).await;
    produce(log, &step("t1", "a1", "c2", Requested, T0 + 10 * SECOND)).await;
    produce(log, &step("t2", "b1", "c3", Requested, T0)).await;
    // Garbage on the topic is skipped; the records around it are kept.
    log.produce(
        CommandEvent::TOPIC,
        vec![ProduceRecord::keyed(b"a1".to_vec(), b"not avro".to_vec())],
    )
    .await
    .expect("produce");

    // The newer inventory first, then an older one: the newer stays.
    let newer = SoftwareInventory {
        digest: "d2".into(),
        packages: vec![
            SoftwarePackage {
                name: "nginx".into(),
                version: "1.24.0-1".into(),
                arch: Some("amd64".into()),
            },
            SoftwarePackage {
                name: "nginx-common".into(),
                version: "1.24.0-1".into(),
                arch: None,
            },
            SoftwarePackage {
                name: "openssl".into(),
                version: "3.0.11-1".into(),
                arch: Some("amd64".into()),
            },
        ],
        ..fixtures::software_inventory("t1", "a1", T0 + 3600 * SECOND)
    };
    produce(log, &newer).await;
    produce(log, &fixtures::software_inventory("t1", "a1", T0)).await;

    produce(log, &ticket("t1", "a1", "open", T0)).await;
    produce(log, &ticket("t1", "a1", "resolved", T0 + 60 * SECOND)).await;
    produce(log, &ticket("t1", "a1", "open", T0)).await; // replayed request: stays resolved
    produce(log, &ticket("t1", "a2", "open", T0 + SECOND)).await;
    produce(log, &ticket("t2", "b1", "open", T0 + 2 * SECOND)).await;

    let api = &e.api;
    let (stop, handle) = start(&e);

    let detail = eventually(api, "/api/v1/commands/c1", |v| v["status"] == "succeeded").await;
    assert_eq!(detail["command_type"], "restart_service");
    assert_eq!(detail["args"]["service"], "nginx");
    assert_eq!(detail["requested_by"], "alice@example.com");
    assert_eq!(detail["approved_by"], "bob@example.com");
    assert_eq!(detail["exit_code"], 0);
    assert_eq!(detail["stdout"], "restarted\n");
    assert_eq!(detail["requires_approval"], true);
    let audit: Vec<(&str, &str)> = detail["audit"]
        .as_array()
        .expect("audit")
        .iter()
        .map(|a| {
            (
                a["kind"].as_str().unwrap_or(""),
                a["actor"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        audit,
        [
            ("requested", "alice@example.com"),
            ("approved", "bob@example.com"),
            ("dispatched", "gateway-1"),
            ("completed", "")
        ],
        "who requested, who approved; no PROGRESS"
    );

    let c2 = eventually(api, "/api/v1/commands/c2", |v| {
        v["requested_by"] == "alice@example.com"
    })
    .await;
    assert_eq!(
        c2["status"], "succeeded",
        "a late request does not move it back"
    );

    // History: newest first, paged with `after`.
    let page = eventually(api, "/api/v1/agents/a1/commands?limit=1", |v| {
        v["commands"].as_array().is_some_and(|c| c.len() == 1)
    })
    .await;
    assert_eq!(page["commands"][0]["command_id"], "c2");
    assert_eq!(page["next_after"], "c2");
    let (_, rest) = get(api, "/api/v1/agents/a1/commands?limit=1&after=c2").await;
    assert_eq!(rest["commands"][0]["command_id"], "c1");
    let (_, end) = get(api, "/api/v1/agents/a1/commands?after=c1").await;
    assert_eq!(end["commands"].as_array().map(Vec::len), Some(0));
    assert!(end["next_after"].is_null());

    // Tenants see only their own: another tenant's agent is not found.
    let (status, other) = get(api, "/api/v1/agents/a1/commands?tenant=t2").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{other}");
    let (status, _) = get(api, "/api/v1/commands/c1?tenant=t2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, v) = get(api, "/api/v1/commands/c3?tenant=t2").await;
    assert_eq!(
        (status, &v["status"]),
        (StatusCode::OK, &Value::from("awaiting_approval"))
    );

    // Software: the newest inventory, filtered by name.
    let sw = eventually(api, "/api/v1/agents/a1/software", |v| v["digest"] == "d2").await;
    assert_eq!(sw["package_count"], 3);
    let sw = eventually(api, "/api/v1/agents/a1/software?name=NGINX", |_| true).await;
    let names: Vec<&str> = sw["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(names, ["nginx", "nginx-common"]);
    assert!(sw["packages"][1]["arch"].is_null());
    let (status, _) = get(api, "/api/v1/agents/a1/software?tenant=t2").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Tickets by tenant and status.
    let t1 = eventually(api, "/api/v1/tickets?tenant=t1", |v| {
        v["tickets"].as_array().is_some_and(|t| t.len() == 2)
    })
    .await;
    let resolved = t1["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .find(|t| t["agent_id"] == "a1")
        .expect("a1's ticket");
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["severity"], "critical");
    let (_, open) = get(api, "/api/v1/tickets?status=open").await;
    let agents: Vec<&str> = open["tickets"]
        .as_array()
        .expect("tickets")
        .iter()
        .filter_map(|t| t["agent_id"].as_str())
        .collect();
    assert_eq!(
        agents,
        ["b1", "a2"],
        "open tickets of every tenant, newest first"
    );
    let (_, one) = get(api, "/api/v1/tickets?tenant=t2&status=open&limit=1").await;
    assert_eq!(one["tickets"].as_array().map(Vec::len), Some(1));

    // Restart: the stored offsets skip what was applied; a replay would change nothing.
    let _ = stop.send(true);
    handle.await.expect("stopped");
    produce(log, &step("t1", "a1", "c1", Progress, T0 + 30 * SECOND)).await;
    let (stop, handle) = start(&e);
    eventually(api, "/api/v1/commands/c1", |v| {
        v["updated_at"] == T0 + 30 * SECOND
    })
    .await;
    let (_, again) = get(api, "/api/v1/commands/c1").await;
    assert_eq!(
        again["status"], "succeeded",
        "a late PROGRESS does not reopen it"
    );
    assert_eq!(again["audit"].as_array().map(Vec::len), Some(4));
    let _ = stop.send(true);
    handle.await.expect("stopped");
}

#[tokio::test]
async fn bad_queries_name_the_parameter() {
    let e = env().await;
    let api = &e.api;
    for (uri, field) in [
        ("/api/v1/agents/a1/commands?limit=0", "limit"),
        ("/api/v1/agents/a1/commands?limit=many", "limit"),
        ("/api/v1/agents/a1/commands?after=", "after"),
        ("/api/v1/agents/a1/commands?page=2", "page"),
        ("/api/v1/commands/c1?verbose=1", "verbose"),
        ("/api/v1/agents/a1/software?name=", "name"),
        ("/api/v1/agents/a1/software?version=1", "version"),
        ("/api/v1/agents/a1/software?name=%ZZ", "name"),
        ("/api/v1/tickets?status=closed", "status"),
        ("/api/v1/tickets?limit=1001", "limit"),
        ("/api/v1/tickets?tenant=", "tenant"),
        ("/api/v1/tickets?agent=a1", "agent"),
    ] {
        let (status, v) = get(api, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert_eq!(v["error"]["field"], field, "{uri}: {v}");
    }
    let long = format!("/api/v1/agents/a1/software?name={}", "x".repeat(201));
    let (status, v) = get(api, &long).await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::BAD_REQUEST, &Value::from("name"))
    );
    for uri in ["/api/v1/commands/nope", "/api/v1/agents/nobody/software"] {
        let (status, v) = get(api, uri).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{uri}: {v}");
    }
    // A cursor naming no command of the agent: not found, naming the parameter.
    let (status, v) = get(api, "/api/v1/agents/a1/commands?after=no-such-command").await;
    assert_eq!(
        (status, &v["error"]["field"]),
        (StatusCode::NOT_FOUND, &Value::from("after"))
    );
    let (status, v) = get(api, "/api/v1/agents/nobody/commands").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "agent_id", "{v}");
}

/// `/api/v1/agents/{agent_id}/commands` has the history (GET) and the request (POST) in
/// one router: each method reaches its handler.
#[tokio::test]
async fn history_and_request_share_their_path() {
    let e = env().await;
    // The POST reaches the request handler (not 405): an empty body is not a JSON object.
    let (status, v) = call(&e.api, Method::POST, "/api/v1/agents/a1/commands").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["field"], "body", "{v}");
    // The GET reaches the history handler: an agent the read model does not know is 404
    // naming the agent.
    let (status, v) = call(&e.api, Method::GET, "/api/v1/agents/a1/commands").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["error"]["field"], "agent_id", "{v}");
    let (status, v) = call(&e.api, Method::DELETE, "/api/v1/agents/a1/commands").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{v}");
}
