//! Helpers shared by the API tests: the API over a real SQLite registry and read model and
//! the embedded log and time-series store in a tempdir, an HTTP call through `oneshot`,
//! reading a topic, projecting the topics into the read model, enrolling an agent.
#![allow(dead_code, unreachable_pub)]

pub mod world;

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use fleet_event_log::EventLog;
use fleet_query_api::{app, AppState};
use fleet_read_model::ReadModel;
use fleet_registry::{hash_secret, new_secret, NewAgent, NewToken, Registry};
use fleet_schemas::{codec, Record};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use tower::ServiceExt as _;

/// The bootstrap admin key of every test app.
pub const ADMIN: &str = "fsk_test-admin-key";

/// A test app and what it runs on.
pub struct AdminEnv {
    pub _dir: tempfile::TempDir,
    pub log: Arc<dyn EventLog>,
    pub registry: Arc<dyn Registry>,
    pub read_model: Arc<dyn ReadModel>,
    pub app: Router,
}

impl AdminEnv {
    /// Brings the read model up to the topics (what the projection does in a running
    /// system), so that the API sees what was written.
    pub async fn project(&self) {
        project(self.log.as_ref(), self.read_model.as_ref()).await;
    }
}

/// The stores of a test API in a new temporary directory: the embedded log (with the
/// topics), one SQLite file as registry and read model, the embedded time-series store.
pub struct Stores {
    pub dir: tempfile::TempDir,
    pub log: Arc<dyn EventLog>,
    pub registry: Arc<dyn Registry>,
    pub read_model: Arc<dyn ReadModel>,
    pub timeseries: Arc<fleet_timeseries::TimeSeries>,
}

pub async fn stores() -> Stores {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_owned();
    let log = fleet_event_log::open(&p("log"), &Default::default())
        .await
        .expect("log");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    let db = fleet_read_model::Database::connect(&p("rm.db"))
        .await
        .expect("database");
    let registry = fleet_registry::SqlRegistry::open(db.clone())
        .await
        .expect("registry");
    let read_model = fleet_read_model::SqlReadModel::open(db)
        .await
        .expect("read model");
    let timeseries = fleet_timeseries::open(&p("ts"), Default::default(), Default::default())
        .await
        .expect("ts");
    Stores {
        dir,
        log,
        registry: Arc::new(registry),
        read_model: Arc::new(read_model),
        timeseries,
    }
}

impl Stores {
    /// The API's state over these stores, with bootstrap key `key` (empty: none).
    pub fn state(&self, key: &str) -> AppState {
        AppState::new(
            self.registry.clone(),
            self.read_model.clone(),
            self.timeseries.clone(),
            self.log.clone(),
            fleet_schemas::Wire::plain(),
        )
        .with_admin_key(key)
    }

    /// The API over these stores, with bootstrap key [`ADMIN`].
    pub fn api(&self) -> Router {
        app(self.state(ADMIN))
    }
}

/// Writes `v` to its topic, keyed as the gateway keys it.
pub async fn produce<T: Record>(log: &dyn EventLog, v: &T) {
    let rec = fleet_event_log::ProduceRecord::keyed(
        v.key().as_bytes().to_vec(),
        codec::Wire::plain().encode(v).expect("encode"),
    );
    log.produce(T::TOPIC, vec![rec]).await.expect("produce");
}

/// The API with bootstrap key `key` (empty: none) and, if given, the command types that
/// need approval.
pub async fn admin_env(key: &str, approval_required: Option<Vec<String>>) -> AdminEnv {
    let stores = stores().await;
    let mut state = stores.state(key).with_gateway_url("http://gw.example:8080");
    let Stores {
        dir,
        log,
        registry,
        read_model,
        ..
    } = stores;
    if let Some(types) = approval_required {
        state = state.with_approval_required(types);
    }
    AdminEnv {
        _dir: dir,
        log,
        registry,
        read_model,
        app: app(state),
    }
}

/// Applies every record of the read model's topics to `rm` that it has not applied yet
/// (by the offsets stored under the projection `test-sync`), as the read-model projection
/// does.
pub async fn project(log: &dyn EventLog, rm: &dyn ReadModel) {
    const SYNC: &str = "test-sync";
    let stored = rm.offsets(SYNC).await.expect("offsets");
    let next = |topic: &str, partition: u32| {
        stored
            .iter()
            .find(|o| o.topic == topic && o.partition == partition)
            .map_or(0, |o| o.next_offset)
    };
    for topic in fleet_projections::project::READ_MODEL_TOPICS {
        let mut changes = Vec::new();
        let mut offsets: std::collections::BTreeMap<u32, i64> = Default::default();
        fleet_consumer::log::read_to_end(log, &fleet_schemas::Wire::plain(), topic, |r| {
            if r.offset < next(topic, r.partition) {
                return;
            }
            if let Ok(change) =
                fleet_projections::project::to_change(&fleet_schemas::Wire::plain(), r)
            {
                changes.push(change);
            }
            offsets.insert(r.partition, r.offset + 1);
        })
        .await
        .expect("read a topic");
        let offsets: Vec<fleet_read_model::StoredOffset> = offsets
            .into_iter()
            .map(|(partition, next_offset)| fleet_read_model::StoredOffset {
                topic: (*topic).to_owned(),
                partition,
                next_offset,
            })
            .collect();
        rm.apply(SYNC, &changes, &offsets).await.expect("apply");
    }
}

/// One request with an optional Bearer key; the status and the JSON body (null if none).
pub async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(k) = key {
        req = req.header(header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let body = body
        .map(|b| serde_json::to_vec(&b).expect("json"))
        .unwrap_or_default();
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body)).expect("req"))
        .await
        .expect("resp");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Every record of `T`'s topic.
pub async fn read<T: Record>(log: &dyn EventLog) -> Vec<T> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(log, &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        out.push(
            codec::Wire::plain()
                .decode_known::<T>(&r.value)
                .expect("decode"),
        )
    })
    .await
    .expect("read");
    out
}

/// Creates a tenant through the API with the admin key; returns its id.
pub async fn create_tenant(app: &Router, name: &str) -> String {
    let (s, t) = call(
        app,
        "POST",
        "/api/v1/tenants",
        Some(json!({ "name": name })),
        Some(ADMIN),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{t}");
    t["tenant_id"].as_str().expect("id").to_owned()
}

/// Enrolls an agent in `tenant` through the registry (a token, then its redemption);
/// returns the agent id (`agent_id`, or a random one).
pub async fn enroll(registry: &Arc<dyn Registry>, tenant: &str, agent_id: Option<&str>) -> String {
    let now = fleet_schemas::time::now_micros();
    let secret = new_secret("fst_");
    let t = NewToken {
        tenant_id: tenant.to_owned(),
        location_id: None,
        device_name: None,
        expires_at: now + 3_600_000_000,
        created_by: "t".into(),
        created_at: now,
    };
    registry
        .create_token(&t, hash_secret(&secret))
        .await
        .expect("token");
    let agent_id = agent_id.map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let agent = NewAgent {
        agent_id: agent_id.clone(),
        credential_hash: hash_secret(&new_secret("fsa_")),
        facts_json: "{}".into(),
        now,
    };
    registry
        .redeem_token(hash_secret(&secret), &agent)
        .await
        .expect("redeem")
        .expect("redeemed");
    agent_id
}
