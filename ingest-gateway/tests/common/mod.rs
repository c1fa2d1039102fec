//! Helpers shared by the gateway's integration tests: the real embedded log in a
//! tempdir, and an agent socket driven through channels.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::ws::Message;
use fleet_event_log::{
    Consumer, ConsumerOptions, EventLog, LogError, ProduceRecord, RecordPosition, TopicSpec,
};
use fleet_ingest_gateway::{AgentIdentity, GatewayConfig, GatewayState};
use fleet_schemas::api::ServerMessage;
use fleet_schemas::codec;
use futures::channel::mpsc;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};

/// Bound on every wait, so a broken test fails instead of hanging (not a timing check).
pub const PATIENCE: Duration = Duration::from_secs(30);

pub async fn embedded() -> (tempfile::TempDir, Arc<dyn EventLog>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = fleet_event_log::open(dir.path().to_str().expect("utf-8"), &Default::default())
        .await
        .expect("open");
    fleet_consumer::log::ensure_topics(log.as_ref())
        .await
        .expect("topics");
    (dir, log)
}

/// Unauthenticated gateway (auth = off).
pub fn open_config() -> GatewayConfig {
    GatewayConfig {
        auth: fleet_ingest_gateway::AuthMode::Off,
        ..GatewayConfig::default()
    }
}

pub fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

pub fn report(collected_at: &str, cpu: Value) -> Value {
    json!({
        "collected_at": collected_at,
        "cpu_percent": cpu,
        "memory_used_bytes": 1_000, "memory_total_bytes": 4_000, "memory_percent": 25.0,
        "load_1": 0.5, "load_5": 0.4, "load_15": 0.3, "uptime_seconds": 100
    })
}

pub fn heartbeat(sequence: u64) -> Value {
    json!({"sent_at": now(), "sequence": sequence, "uptime_seconds": 5, "agent_version": "0.1.0"})
}

/// Every record of the record's topic present now.
pub async fn read_topic<T: fleet_schemas::Record>(log: &Arc<dyn EventLog>) -> Vec<T> {
    let mut out = Vec::new();
    fleet_consumer::log::read_to_end(log.as_ref(), &fleet_schemas::Wire::plain(), T::TOPIC, |r| {
        out.push(
            codec::Wire::plain()
                .decode_known::<T>(&r.value)
                .expect("avro"),
        )
    })
    .await
    .expect("read");
    out
}

/// Reads the topic until `found` picks something out of it (the writer may lag).
pub async fn wait_for<T: fleet_schemas::Record, R>(
    log: &Arc<dyn EventLog>,
    mut found: impl FnMut(&[T]) -> Option<R>,
) -> R {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let all = read_topic::<T>(log).await;
        if let Some(r) = found(&all) {
            return r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expected record never appeared on {}",
            T::TOPIC
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn anonymous() -> AgentIdentity {
    AgentIdentity {
        tenant_id: "default".into(),
        authenticated: false,
    }
}

/// One agent socket: the test writes what the agent sends and reads what the gateway
/// sends, through channels into the same session code a real socket runs.
pub struct Agent {
    pub id: String,
    to_server: mpsc::Sender<Result<Message, axum::Error>>,
    from_server: mpsc::Receiver<Message>,
    pub session: tokio::task::JoinHandle<()>,
}

impl Agent {
    /// Starts a session and waits until the hub knows it.
    pub async fn connect(state: &GatewayState, agent_id: &str) -> Agent {
        Agent::connect_as(state, agent_id, anonymous()).await
    }

    /// Starts a session of an agent admitted as `who`.
    pub async fn connect_as(state: &GatewayState, agent_id: &str, who: AgentIdentity) -> Agent {
        let (to_server, server_read) = mpsc::channel(64);
        let (server_write, from_server) = mpsc::channel(64);
        let session = tokio::spawn(fleet_ingest_gateway::ws::agent_session(
            state.clone(),
            agent_id.to_owned(),
            who,
            server_write,
            server_read,
        ));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        // (A replacing session: the older one's close frame tells when this one is in.)
        while !state.hub().is_connected(agent_id) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "session never registered"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Agent {
            id: agent_id.to_owned(),
            to_server,
            from_server,
            session,
        }
    }

    pub async fn send_text(&mut self, text: String) {
        self.to_server
            .send(Ok(Message::Text(text.into())))
            .await
            .expect("session reads");
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.to_server.send(Ok(msg)).await.expect("session reads");
    }

    /// The next frame the gateway sent (pings included); None once it closed the channel.
    pub async fn next_frame(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, self.from_server.next())
            .await
            .expect("the gateway sent nothing")
    }

    /// The next JSON message, skipping pings.
    pub async fn next_message(&mut self) -> ServerMessage {
        loop {
            match self.next_frame().await {
                Some(Message::Text(t)) => {
                    return serde_json::from_str(t.as_str()).expect("a ServerMessage")
                }
                Some(Message::Ping(_)) | Some(Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a frame and returns the answer, skipping pushed commands.
    pub async fn request(&mut self, frame: Value) -> ServerMessage {
        self.send(frame).await;
        loop {
            match self.next_message().await {
                ServerMessage::Command { .. } => continue,
                m => return m,
            }
        }
    }
}

/// An event log that cannot take writes (a broker outage).
#[derive(Debug)]
pub struct DownLog;

#[async_trait]
impl EventLog for DownLog {
    fn engine(&self) -> &'static str {
        "down"
    }
    async fn create_topic(&self, _: &str, _: TopicSpec) -> fleet_event_log::Result<()> {
        Ok(())
    }
    async fn partition_count(&self, _: &str) -> fleet_event_log::Result<u32> {
        Err(LogError::Unavailable("broker down".into()))
    }
    async fn produce(
        &self,
        _: &str,
        _: Vec<ProduceRecord>,
    ) -> fleet_event_log::Result<Vec<RecordPosition>> {
        Err(LogError::Unavailable("broker down".into()))
    }
    async fn end_offsets(&self, _: &str) -> fleet_event_log::Result<Vec<i64>> {
        Err(LogError::Unavailable("broker down".into()))
    }
    async fn offsets_for_time(&self, _: &str, _: i64) -> fleet_event_log::Result<Vec<i64>> {
        Err(LogError::Unavailable("broker down".into()))
    }
    async fn committed_offsets(
        &self,
        _: &str,
        _: &str,
    ) -> fleet_event_log::Result<Vec<Option<i64>>> {
        Err(LogError::Unavailable("broker down".into()))
    }
    async fn subscribe(
        &self,
        _: &str,
        _: &[&str],
        _: ConsumerOptions,
    ) -> fleet_event_log::Result<Box<dyn Consumer>> {
        Err(LogError::Unavailable("broker down".into()))
    }
}
