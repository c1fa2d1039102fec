//! A seeded world of two tenants over the real stores (SQLite read model and registry, the
//! embedded log and time-series store in a tempdir), with the query and admin routes of
//! one API instance: the tenancy, security and schemathesis tests run against it.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::Router;
use fleet_event_log::{EventLog, ProduceRecord};
use fleet_query_api::{app, AppState};
use fleet_read_model::{Change, ReadModel};
use fleet_registry::Registry;
use fleet_schemas::{codec, fixtures, CommandEventKind, Record};
use fleet_timeseries::{Point, TimeSeriesStore};
use serde_json::json;

use super::{call, create_tenant, enroll, ADMIN};

/// Two tenants, A and B, each with an agent, metrics, an open alert, a command awaiting
/// approval, a rule, and users.
pub struct World {
    pub dir: tempfile::TempDir,
    pub log: Arc<dyn EventLog>,
    pub registry: Arc<dyn Registry>,
    pub read_model: Arc<dyn ReadModel>,
    pub timeseries: Arc<dyn TimeSeriesStore>,
    /// The query and admin routes of one API instance (key cache TTL: the default).
    pub app: Router,
    pub a: String,
    pub b: String,
    /// Agent of A and agent of B.
    pub a1: String,
    pub b1: String,
    /// Keys of A's operator and A's viewer, and their user ids.
    pub op_a: String,
    pub op_a_id: String,
    pub viewer_a: String,
    pub viewer_a_id: String,
    /// A's objects.
    pub a_alert: String,
    pub a_command: String,
    pub a_group: String,
    pub a_rule: String,
    /// B's objects.
    pub b_alert: String,
    pub b_command: String,
    pub b_group: String,
    pub b_rule: String,
    pub b_user: String,
    /// The id of B's user's key.
    pub b_key_id: String,
    /// Ingest keys of A and of B (ids), made by the admin.
    pub a_ingest_key: String,
    pub b_ingest_key: String,
    /// Notification channels, routes and silences of A and of B (ids), made by the admin;
    /// B's channel has a test delivery.
    pub a_channel: String,
    pub b_channel: String,
    pub a_route: String,
    pub b_route: String,
    pub a_silence: String,
    pub b_silence: String,
}

pub async fn produce<T: Record>(log: &dyn EventLog, v: &T) {
    let rec = ProduceRecord::keyed(
        v.key().as_bytes().to_vec(),
        codec::Wire::plain().encode(v).expect("encode"),
    );
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

/// A user made through the API; returns (user id, key).
pub async fn user(app: &Router, name: &str, role: &str, tenant: &str) -> (String, String) {
    let (s, v) = call(
        app,
        "POST",
        "/api/v1/users",
        Some(json!({ "name": name, "role": role, "tenant_id": tenant })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    (
        v["user"]["user_id"].as_str().expect("user id").to_owned(),
        v["api_key"]["key"].as_str().expect("key").to_owned(),
    )
}

impl World {
    /// The SQLite file of the read model and registry.
    pub fn db_path(&self) -> String {
        self.dir
            .path()
            .join("rm.db")
            .to_str()
            .expect("utf-8")
            .to_owned()
    }

    /// Another API instance over the same stores (its own key cache, remembering keys
    /// for `key_cache_ttl`).
    pub async fn instance(&self, key_cache_ttl: std::time::Duration) -> Router {
        let db = fleet_read_model::Database::connect(&self.db_path())
            .await
            .expect("database");
        let registry: Arc<dyn Registry> = Arc::new(
            fleet_registry::SqlRegistry::open(db.clone())
                .await
                .expect("registry"),
        );
        let rm: Arc<dyn ReadModel> = Arc::new(
            fleet_read_model::SqlReadModel::open(db)
                .await
                .expect("read model"),
        );
        instance(
            rm,
            registry,
            self.timeseries.clone(),
            self.log.clone(),
            key_cache_ttl,
        )
    }
}

fn instance(
    rm: Arc<dyn ReadModel>,
    registry: Arc<dyn Registry>,
    ts: Arc<dyn TimeSeriesStore>,
    log: Arc<dyn EventLog>,
    key_cache_ttl: std::time::Duration,
) -> Router {
    app(
        AppState::new(registry, rm, ts, log, fleet_schemas::Wire::plain())
            .with_admin_key(ADMIN)
            .with_gateway_url("http://gw.example:8080")
            .with_key_cache_ttl(key_cache_ttl),
    )
}

/// A command awaiting approval of `agent`, requested by the admin; returns its id.
async fn command_awaiting_approval(app: &Router, agent: &str) -> String {
    let (s, v) = call(
        app,
        "POST",
        &format!("/api/v1/agents/{agent}/commands"),
        Some(json!({ "command_type": "run_script", "args": { "script": "x" }, "requires_approval": true })),
        Some(ADMIN),
    )
    .await;
    assert!(s.is_success(), "{v}");
    v["command_id"].as_str().expect("command id").to_owned()
}

/// A command group of `tenant` for its agent `agent`, awaiting approval, requested by the
/// admin; returns its id.
async fn group_awaiting_approval(app: &Router, tenant: &str, agent: &str) -> String {
    let (s, v) = call(
        app,
        "POST",
        &format!("/api/v1/command-groups?tenant={tenant}"),
        Some(json!({ "target": { "agents": [agent] }, "command_type": "run_script", "args": { "script": "x" }, "requires_approval": true })),
        Some(ADMIN),
    )
    .await;
    assert!(s.is_success(), "{v}");
    v["group_id"].as_str().expect("group id").to_owned()
}

/// An ingest key of `tenant` made by the admin; returns its id.
async fn ingest_key(app: &Router, tenant: &str) -> String {
    let (s, v) = call(
        app,
        "POST",
        "/api/v1/admin/ingest-keys",
        Some(json!({ "name": "prometheus", "tenant_id": tenant })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["key_id"].as_str().expect("key id").to_owned()
}

/// A webhook channel, a route to it and a silence in `tenant` (ids), by the admin.
async fn notifications(app: &Router, tenant: &str) -> (String, String, String) {
    let made = |uri: String, body: serde_json::Value, id: &'static str| async move {
        let (s, v) = call(app, "POST", &uri, Some(body), Some(ADMIN)).await;
        assert_eq!(s, StatusCode::CREATED, "{uri}: {v}");
        v[id].as_str().expect("an id").to_owned()
    };
    let channel = made(
        format!("/api/v1/tenants/{tenant}/notification-channels"),
        json!({ "name": "ops", "kind": "webhook", "url": "https://hooks.example.com/x" }),
        "channel_id",
    )
    .await;
    let route = made(
        format!("/api/v1/tenants/{tenant}/notification-routes"),
        json!({ "name": "all", "channel_ids": [channel] }),
        "route_id",
    )
    .await;
    let silence = made(
        format!("/api/v1/tenants/{tenant}/silences"),
        json!({ "comment": "maintenance", "match": { "tags": ["db"] }, "duration_secs": 3600 }),
        "silence_id",
    )
    .await;
    (channel, route, silence)
}

async fn rule(app: &Router, tenant: &str, name: &str) -> String {
    let (s, v) = call(
        app,
        "POST",
        &format!("/api/v1/tenants/{tenant}/rules"),
        Some(json!({ "name": name, "metric": "cpu.percent", "warning": 80.0 })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v["rule_id"].as_str().expect("rule id").to_owned()
}

pub async fn world() -> World {
    let super::Stores {
        dir,
        log,
        registry,
        read_model: rm,
        timeseries,
    } = super::stores().await;
    let ts: Arc<dyn TimeSeriesStore> = timeseries;
    let app = instance(
        rm.clone(),
        registry.clone(),
        ts.clone(),
        log.clone(),
        fleet_query_api::auth::DEFAULT_CACHE_TTL,
    );

    let a = create_tenant(&app, "tenant-a").await;
    let b = create_tenant(&app, "tenant-b").await;
    let a1 = enroll(&registry, &a, None).await;
    let b1 = enroll(&registry, &b, None).await;
    let now = fleet_schemas::time::now_micros();

    // Read-model rows and time series of both tenants.
    let mut changes = Vec::new();
    for (t, agent) in [(&a, &a1), (&b, &b1)] {
        changes.push(Change::Lifecycle(fixtures::agent_registered(t, agent, now)));
        changes.push(Change::Report(Box::new(fixtures::metric_report(
            t, agent, now,
        ))));
        changes.push(Change::Alert(fixtures::alert_raised(t, agent, now)));
        changes.push(Change::Inventory(Box::new(fixtures::software_inventory(
            t, agent, now,
        ))));
        changes.push(Change::Ticket(Box::new(fixtures::ticket_requested(
            t, agent, now,
        ))));
        changes.push(Change::Event(Box::new(fixtures::agent_event(
            t, agent, now,
        ))));
        let mut cmd = fixtures::command_completed(t, agent, now);
        cmd.kind = CommandEventKind::Requested;
        changes.push(Change::Command(Box::new(cmd)));
        ts.write(&[Point {
            tenant_id: t.clone(),
            agent_id: agent.clone(),
            series: "cpu.percent".into(),
            ts_micros: now - 30_000_000,
            value: 12.5,
        }])
        .await
        .expect("points");
    }
    rm.apply("test", &changes, &[]).await.expect("apply");
    // Alerts raised on the topic (the projection below puts them in the read model).
    let b_raised = fixtures::alert_raised(&b, &b1, now);
    let a_raised = fixtures::alert_raised(&a, &a1, now);
    produce(log.as_ref(), &b_raised).await;
    produce(log.as_ref(), &a_raised).await;

    let (op_a_id, op_a) = user(&app, "op-a", "operator", &a).await;
    let (viewer_a_id, viewer_a) = user(&app, "viewer-a", "viewer", &a).await;
    let (b_user, _) = user(&app, "op-b", "operator", &b).await;

    let b_command = command_awaiting_approval(&app, &b1).await;
    let a_command = command_awaiting_approval(&app, &a1).await;
    let b_group = group_awaiting_approval(&app, &b, &b1).await;
    let a_group = group_awaiting_approval(&app, &a, &a1).await;
    let b_rule = rule(&app, &b, "b-cpu").await;
    let a_rule = rule(&app, &a, "a-cpu").await;
    let b_ingest_key = ingest_key(&app, &b).await;
    let a_ingest_key = ingest_key(&app, &a).await;
    let (b_channel, b_route, b_silence) = notifications(&app, &b).await;
    let (a_channel, a_route, a_silence) = notifications(&app, &a).await;
    let (s, v) = call(
        &app,
        "POST",
        &format!("/api/v1/notification-channels/{b_channel}/test"),
        None,
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    // The read model sees what was written to the topics (commands, rules, alerts).
    super::project(log.as_ref(), rm.as_ref()).await;
    let b_key_id = registry
        .list_api_keys(&b_user)
        .await
        .expect("keys")
        .first()
        .expect("B's user has a key")
        .key_id
        .clone();

    World {
        dir,
        log,
        registry,
        read_model: rm,
        timeseries: ts,
        app,
        a,
        b,
        a1,
        b1,
        op_a,
        op_a_id,
        viewer_a,
        viewer_a_id,
        a_alert: a_raised.alert_id,
        a_command,
        a_group,
        a_rule,
        b_alert: b_raised.alert_id,
        b_command,
        b_group,
        b_rule,
        b_user,
        b_key_id,
        a_ingest_key,
        b_ingest_key,
        a_channel,
        b_channel,
        a_route,
        b_route,
        a_silence,
        b_silence,
    }
}
