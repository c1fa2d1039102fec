//! A command's live output: `GET /api/v1/commands/{id}/output` pages the stored chunks,
//! `GET /api/v1/commands/{id}/stream` sends them as Server-Sent Events as they are
//! applied, ends with `result`, resumes after `Last-Event-ID`, and keeps the tenancy of
//! `GET /api/v1/commands/{id}`.

mod support;

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_read_model::Change;
use fleet_schemas::{fixtures, CommandEvent, CommandEventKind};
use http_body_util::BodyExt as _;
use serde_json::Value;
use support::world::user;
use support::{admin_env, call, create_tenant, AdminEnv, ADMIN};
use tower::ServiceExt as _;

const SECOND: i64 = 1_000_000;

fn event(tenant: &str, id: &str, kind: CommandEventKind, sequence: i64) -> CommandEvent {
    let now = fleet_schemas::time::now_micros();
    let done = fixtures::command_completed(tenant, "agent-1", now);
    let ended = kind == CommandEventKind::Completed;
    CommandEvent {
        event_id: format!("{id}/{}/{sequence}", kind.as_str()),
        command_id: id.to_owned(),
        kind,
        actor: (kind == CommandEventKind::Requested).then(|| "alice".into()),
        sequence,
        stream: (kind == CommandEventKind::Progress).then(|| "stdout".into()),
        chunk: (kind == CommandEventKind::Progress).then(|| format!("line {sequence}\n")),
        status: done.status.clone().filter(|_| ended),
        exit_code: done.exit_code.filter(|_| ended),
        stdout: done.stdout.clone().filter(|_| ended),
        started_at: done.started_at.filter(|_| ended),
        finished_at: done.finished_at.filter(|_| ended),
        occurred_at: now + sequence * SECOND,
        ..done
    }
}

async fn apply(e: &AdminEnv, ev: CommandEvent) {
    e.read_model
        .apply("test", &[Change::Command(Box::new(ev))], &[])
        .await
        .expect("apply");
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq)]
struct Sse {
    event: String,
    id: Option<String>,
    data: Value,
}

/// An open event stream: reads events as they come.
#[derive(Debug)]
struct Reader {
    body: Body,
    buf: String,
    ended: bool,
}

impl Reader {
    /// The next event within `wait`; None when the stream ended.
    async fn next(&mut self, wait: Duration) -> Option<Sse> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut ev = Sse {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                    continue; // a keep-alive comment
                }
                ev.data = serde_json::from_str(&data).unwrap_or(Value::String(data));
                return Some(ev);
            }
            if self.ended {
                return None;
            }
            let frame = tokio::time::timeout(wait, self.body.frame())
                .await
                .expect("an event in time");
            match frame {
                None => self.ended = true,
                Some(f) => {
                    let f = f.expect("frame");
                    if let Some(d) = f.data_ref() {
                        self.buf.push_str(std::str::from_utf8(d).expect("utf-8"));
                    }
                }
            }
        }
    }
}

/// Opens the stream; the status and, on 200, a reader (else the error body).
async fn open(
    app: &Router,
    uri: &str,
    key: &str,
    last_event_id: Option<&str>,
) -> (StatusCode, Result<Reader, Value>) {
    let mut req = Request::get(uri).header(header::AUTHORIZATION, format!("Bearer {key}"));
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).expect("req"))
        .await
        .expect("resp");
    let status = resp.status();
    if status != StatusCode::OK {
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        return (
            status,
            Err(serde_json::from_slice(&bytes).unwrap_or(Value::Null)),
        );
    }
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    (
        status,
        Ok(Reader {
            body: resp.into_body(),
            buf: String::new(),
            ended: false,
        }),
    )
}

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_live_resumes_and_ends_with_the_result() {
    use CommandEventKind::*;
    let e = admin_env(ADMIN, None).await;
    let t1 = create_tenant(&e.app, "one").await;
    let t2 = create_tenant(&e.app, "two").await;
    let (_, viewer) = user(&e.app, "viewer-one", "viewer", &t1).await;
    let (_, other) = user(&e.app, "operator-two", "operator", &t2).await;
    let id = uuid::Uuid::new_v4().to_string();
    apply(&e, event(&t1, &id, Requested, 0)).await;
    apply(&e, event(&t1, &id, Progress, 1)).await;
    apply(&e, event(&t1, &id, Progress, 2)).await;

    // Paged output: a viewer of the tenant may read it.
    let uri = format!("/api/v1/commands/{id}/output?limit=1");
    let (s, v) = call(&e.app, "GET", &uri, None, Some(&viewer)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["chunks"][0]["chunk"], "line 1\n", "{v}");
    assert_eq!(v["next_after"], 1, "{v}");
    let uri = format!("/api/v1/commands/{id}/output?after=1");
    let (_, v) = call(&e.app, "GET", &uri, None, Some(&viewer)).await;
    assert_eq!(v["chunks"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["chunks"][0]["sequence"], 2, "{v}");
    assert!(v["next_after"].is_null(), "{v}");
    for bad in ["after=-1", "after=x", "after=", "limit=0"] {
        let uri = format!("/api/v1/commands/{id}/output?{bad}");
        let (s, v) = call(&e.app, "GET", &uri, None, Some(&viewer)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }

    // Another tenant: 404, as a missing command; output and stream alike.
    let stream_uri = format!("/api/v1/commands/{id}/stream");
    for uri in [format!("/api/v1/commands/{id}/output"), stream_uri.clone()] {
        let (s, _) = call(&e.app, "GET", &uri, None, Some(&other)).await;
        let (missing, _) = call(
            &e.app,
            "GET",
            &uri.replace(&id, "no-such-command"),
            None,
            Some(&viewer),
        )
        .await;
        assert_eq!((s, missing), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    }
    let (s, _) = open(&e.app, &stream_uri, &viewer, Some("soon")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "Last-Event-ID is a sequence");

    // The stream: what is stored, then what comes while it is open, then the result.
    let (s, r) = open(&e.app, &stream_uri, &viewer, None).await;
    assert_eq!(s, StatusCode::OK);
    let mut r = r.expect("a stream");
    for n in [1, 2] {
        let ev = r.next(WAIT).await.expect("a chunk");
        assert_eq!(ev.event, "output", "{ev:?}");
        assert_eq!(ev.id.as_deref(), Some(n.to_string().as_str()), "{ev:?}");
        assert_eq!(ev.data["chunk"], format!("line {n}\n"), "{ev:?}");
    }
    apply(&e, event(&t1, &id, Progress, 3)).await;
    let ev = r.next(WAIT).await.expect("a live chunk");
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("output", Some("3")));
    // The last chunk and the result applied together: the chunk still comes first.
    e.read_model
        .apply(
            "test",
            &[
                Change::Command(Box::new(event(&t1, &id, Progress, 4))),
                Change::Command(Box::new(event(&t1, &id, Completed, 5))),
            ],
            &[],
        )
        .await
        .expect("apply");
    let ev = r.next(WAIT).await.expect("the last chunk");
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("output", Some("4")));
    let ev = r.next(WAIT).await.expect("the result");
    assert_eq!(ev.event, "result", "{ev:?}");
    assert_eq!(ev.data["status"], "succeeded", "{ev:?}");
    assert_eq!(ev.data["command_id"], id.as_str(), "{ev:?}");
    assert_eq!(r.next(WAIT).await, None, "the stream ends after the result");

    // Resuming: only the chunks after Last-Event-ID, then the result.
    let (_, r) = open(&e.app, &stream_uri, &viewer, Some("3")).await;
    let mut r = r.expect("a stream");
    let ev = r.next(WAIT).await.expect("chunk 4");
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("output", Some("4")));
    let ev = r.next(WAIT).await.expect("the result");
    assert_eq!(ev.event, "result");
    assert_eq!(r.next(WAIT).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_has_a_bounded_number_of_open_streams() {
    let e = admin_env(ADMIN, None).await;
    let t1 = create_tenant(&e.app, "one").await;
    let (_, viewer) = user(&e.app, "viewer-one", "viewer", &t1).await;
    let (_, viewer2) = user(&e.app, "viewer-two", "viewer", &t1).await;
    let id = uuid::Uuid::new_v4().to_string();
    apply(&e, event(&t1, &id, CommandEventKind::Requested, 0)).await;
    let uri = format!("/api/v1/commands/{id}/stream");
    let max = fleet_query_api::routes::command_output::MAX_STREAMS_PER_USER;
    let mut open_streams = Vec::new();
    for _ in 0..max {
        let (s, r) = open(&e.app, &uri, &viewer, None).await;
        assert_eq!(s, StatusCode::OK);
        open_streams.push(r.expect("a stream"));
    }
    let (s, v) = open(&e.app, &uri, &viewer, None).await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS, "{v:?}");
    let (s, _) = open(&e.app, &uri, &viewer2, None).await;
    assert_eq!(s, StatusCode::OK, "another user has their own streams");
    // A client that goes away frees its stream.
    drop(open_streams.pop());
    let (s, _) = open(&e.app, &uri, &viewer, None).await;
    assert_eq!(s, StatusCode::OK);
}
