//! The event timeline over the real SQLite read model fed from the embedded log: events
//! written to `fleet.events.v1` are projected once each and listed newest first, filtered,
//! paged with `next_until`; bad parameters are 400s naming the field.

use axum::http::StatusCode;
use fleet_schemas::{fixtures, EventSeverity};
use serde_json::Value;

mod support;

const SECOND: i64 = 1_000_000;

async fn get(env: &support::AdminEnv, uri: &str) -> (StatusCode, Value) {
    support::call(&env.app, "GET", uri, None, Some(support::ADMIN)).await
}

fn times(v: &Value, t0: i64) -> Vec<i64> {
    v["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["occurred_at"].as_i64())
        .map(|t| (t - t0) / SECOND)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timeline_lists_filters_and_pages() {
    let env = support::admin_env(support::ADMIN, None).await;
    let t0 = fleet_schemas::time::now_micros() - 3600 * SECOND;
    for (agent, i) in [("a1", 0), ("a1", 1), ("a1", 2), ("a2", 3)] {
        let mut ev = fixtures::agent_event("t1", agent, t0 + i * SECOND);
        if i == 1 {
            ev.kind = "agent_started".into();
            ev.severity = EventSeverity::Info;
        }
        support::produce(env.log.as_ref(), &ev).await;
        // Sent twice (an agent's retry): kept once.
        support::produce(env.log.as_ref(), &ev).await;
    }
    support::produce(env.log.as_ref(), &fixtures::agent_event("t2", "b1", t0)).await;
    for (t, a) in [("t1", "a1"), ("t1", "a2"), ("t2", "b1")] {
        support::produce(env.log.as_ref(), &fixtures::agent_registered(t, a, t0)).await;
    }
    env.project().await;

    let (s, all) = get(&env, "/api/v1/events?tenant=t1").await;
    assert_eq!(s, StatusCode::OK, "{all}");
    assert_eq!(times(&all, t0), vec![3, 2, 1, 0], "{all}");
    assert!(
        all.get("next_until").is_none(),
        "a short page has no next: {all}"
    );
    let first = &all["events"][0];
    assert_eq!(first["agent_id"], "a2");
    assert_eq!(first["kind"], "service_crashed");
    assert_eq!(first["severity"], "WARNING");
    assert_eq!(first["attributes"]["service"], "nginx");

    let (_, a1) = get(&env, "/api/v1/agents/a1/events?severity=WARNING").await;
    assert_eq!(times(&a1, t0), vec![2, 0], "{a1}");
    let (_, started) = get(&env, "/api/v1/events?kind=agent_started").await;
    assert_eq!(times(&started, t0), vec![1], "{started}");
    let (_, page) = get(&env, "/api/v1/agents/a1/events?limit=2").await;
    assert_eq!(times(&page, t0), vec![2, 1], "{page}");
    let next = page["next_until"].as_str().expect("a full page has a next");
    let (_, older) = get(
        &env,
        &format!("/api/v1/agents/a1/events?limit=2&until={}", urlencode(next)),
    )
    .await;
    assert_eq!(times(&older, t0), vec![0], "{older}");
    let (_, recent) = get(&env, "/api/v1/events?tenant=t1&since=10m").await;
    assert_eq!(
        times(&recent, t0),
        Vec::<i64>::new(),
        "an hour old: {recent}"
    );
    let (_, hour) = get(&env, "/api/v1/events?tenant=t1&since=2h&agent=a2").await;
    assert_eq!(times(&hour, t0), vec![3], "{hour}");

    let (s, v) = get(&env, "/api/v1/agents/nobody/events").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, v) = get(&env, "/api/v1/agents/a1/events?tenant=t2").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's agent: {v}");
    for (uri, field) in [
        ("/api/v1/events?severity=loud", "severity"),
        ("/api/v1/events?since=yesterday", "since"),
        ("/api/v1/events?until=99999999y", "until"),
        ("/api/v1/events?limit=0", "limit"),
        ("/api/v1/agents/a1/events?agent=a2", "agent"),
        ("/api/v1/events?agent=", "agent"),
    ] {
        let (s, v) = get(&env, uri).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{uri}: {v}");
        assert!(v.to_string().contains(field), "{uri} names {field}: {v}");
    }
    let long_kind = format!("/api/v1/events?kind={}", "k".repeat(200));
    let (s, v) = get(&env, &long_kind).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.to_string().contains("kind"), "{v}");
}

fn urlencode(s: &str) -> String {
    s.replace(':', "%3A").replace('+', "%2B")
}
