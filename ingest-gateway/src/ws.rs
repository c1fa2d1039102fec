//! `GET /api/v1/agents/ws`: the agent channel.
//!
//! The agent names itself with the `x-fleet-agent-id` header (or `?agent_id=`) and sends
//! its credential as on every agent endpoint; the gateway admits it as every agent
//! request (the id, the address's failure budget, the credential, the rate limit) **before**
//! the upgrade, so a refused agent gets the usual JSON error (401, 403, 429). After the upgrade the agent sends JSON text frames
//! ([`AgentMessage`]); each is handled by the same code as the HTTP endpoint of the same
//! name and answered, once the event log acknowledged the write, with
//! [`ServerMessage::Ack`], or with [`ServerMessage::Error`] carrying the HTTP status the
//! request would have got (400 naming the field within the frame, 413, 415 for binary
//! frames, 422, 429, 503). A bad frame never closes the socket. The gateway pushes
//! commands as [`ServerMessage::Command`], pings every `ws-ping-interval` and closes
//! a socket that sent nothing for `ws-idle-timeout`. The credential of an
//! authenticated socket is checked again every `auth-cache`: a deactivated agent's
//! socket closes (1008) even if the AgentDeactivated event never reached this gateway.
//!
//! The session is written over any `Sink`/`Stream` of messages, so tests drive it with
//! channels.

use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use fleet_schemas::api::{
    CommandProgressIn, CommandResultIn, EventBatch, HeartbeatIn, InventoryIn, MetricBatch,
    ServerMessage, AGENT_ID_HEADER,
};
use fleet_service::ApiError;
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::Value;
use tracing::Instrument as _;

use crate::hub::CloseReason;
use crate::{admit, commands, metrics, AgentIdentity, ClientAddr, GatewayState};

/// Query parameters of the upgrade request.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct WsQuery {
    agent_id: Option<String>,
}

/// Handler of `GET /api/v1/agents/ws`.
pub(crate) async fn get_ws(
    State(state): State<GatewayState>,
    client: ClientAddr,
    headers: HeaderMap,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let started = Instant::now();
    let admitted = async {
        let from_header = headers
            .get(AGENT_ID_HEADER)
            .map(|v| v.to_str().map(str::to_owned));
        let agent_id = match from_header {
            Some(Ok(id)) => id,
            Some(Err(_)) => {
                return Err(ApiError::invalid_field(
                    "agent_id",
                    format!("the {AGENT_ID_HEADER} header is not valid text"),
                ))
            }
            None => query.ok().and_then(|q| q.0.agent_id).ok_or_else(|| {
                ApiError::invalid_field(
                    "agent_id",
                    format!("name the agent with the {AGENT_ID_HEADER} header or ?agent_id="),
                )
            })?,
        };
        let who = admit(&state, &agent_id, client, &headers).await?;
        let upgrade = upgrade.map_err(|r| {
            ApiError::new(
                r.status(),
                "websocket_required",
                format!("this endpoint needs a WebSocket upgrade: {}", r.body_text()),
            )
        })?;
        Ok((agent_id, who, upgrade))
    }
    .await;
    let (agent_id, who, upgrade) = match admitted {
        Ok(v) => v,
        Err(e) => {
            metrics::record_status("ws", e.status().as_u16(), started.elapsed());
            return e.into_response();
        }
    };
    metrics::record_status("ws", 101, started.elapsed());
    // Frames up to the inventory limit are read (and then refused with 413 if too large
    // for their type); beyond it the connection is dropped by the protocol layer.
    let cfg = &state.config;
    let limit = frame_limit(cfg);
    upgrade
        .read_buffer_size(cfg.ws_read_buffer_bytes.max(1024))
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| {
            let (write, read) = socket.split();
            agent_session(state, agent_id, who, write, read)
        })
}

fn frame_limit(cfg: &crate::GatewayConfig) -> usize {
    cfg.max_body_bytes
        .max(cfg.max_inventory_bytes)
        .saturating_add(1024)
}

/// One agent's socket: reads frames and answers them, sends queued commands, pings, and
/// closes on idleness, replacement or deactivation. Generic over the transport.
pub async fn agent_session<W, R>(
    state: GatewayState,
    agent_id: String,
    who: AgentIdentity,
    mut write: W,
    mut read: R,
) where
    W: Sink<Message> + Unpin,
    W::Error: std::fmt::Display,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let span = tracing::info_span!("ws_session", %agent_id);
    async move {
        let _gauge = metrics::WsConnectionGauge::open();
        let mut conn = commands::connect(&state, &agent_id).await;
        tracing::info!("Agent connected.");
        let ping_every = state.config.ws_ping_interval.max(Duration::from_secs(1));
        let idle_after = state.config.ws_idle_timeout.max(Duration::from_secs(1));
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let idle = tokio::time::sleep(idle_after);
        tokio::pin!(idle);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recheck_every = state.config.auth_cache.max(Duration::from_secs(1));
        let mut recheck =
            tokio::time::interval_at(tokio::time::Instant::now() + recheck_every, recheck_every);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let why = loop {
            tokio::select! {
                biased;
                reason = &mut conn.closed => {
                    let reason = reason.unwrap_or(CloseReason::Replaced);
                    break close(&mut write, reason).await;
                }
                _ = recheck.tick(), if who.authenticated => {
                    match state.auth.still_active(&agent_id).await {
                        Ok(true) => {}
                        Ok(false) => break close(&mut write, CloseReason::Deactivated).await,
                        Err(e) => tracing::debug!(error = %e, "Credential not checked again now; the socket stays open."),
                    }
                }
                out = conn.outbox.recv() => {
                    let Some(out) = out else { break "queue closed".to_owned() };
                    if let Err(e) = send(&mut write, &out).await {
                        break format!("write failed: {e}");
                    }
                }
                incoming = read.next() => {
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    let msg = match incoming {
                        None => break "the agent went away".to_owned(),
                        Some(Err(e)) => break format!("read failed: {e}"),
                        Some(Ok(m)) => m,
                    };
                    let answer = match msg {
                        Message::Text(text) => Some(handle_frame(&state, &agent_id, &who, text.as_str()).await),
                        Message::Binary(_) => {
                            metrics::ws_frame("binary", "415");
                            Some(error_frame(None, None, ApiError::new(
                                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                                "unsupported_media_type",
                                "binary frames are not accepted; send JSON text frames",
                            )))
                        }
                        Message::Ping(_) | Message::Pong(_) => None,
                        Message::Close(_) => break "the agent closed the socket".to_owned(),
                    };
                    // Work on the frame may have taken a while: it still counts as activity.
                    idle.as_mut().reset(tokio::time::Instant::now() + idle_after);
                    if let Some(answer) = answer {
                        if let Err(e) = send(&mut write, &answer).await {
                            break format!("write failed: {e}");
                        }
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = write.send(Message::Ping(Default::default())).await {
                        break format!("write failed: {e}");
                    }
                }
                _ = &mut idle => {
                    let _ = write.send(Message::Close(Some(CloseFrame {
                        code: 1001,
                        reason: "idle: nothing received within ws-idle-timeout".into(),
                    }))).await;
                    break "idle timeout".to_owned();
                }
            }
        };
        state.hub.disconnect(&agent_id, conn.conn);
        let _ = write.close().await;
        tracing::info!(why = %why, "Agent disconnected.");
    }
    .instrument(span)
    .await;
}

/// Sends the close frame of `reason`; returns why the session ended.
async fn close<W>(write: &mut W, reason: CloseReason) -> String
where
    W: Sink<Message> + Unpin,
{
    let code = match reason {
        CloseReason::Replaced => 1000,
        CloseReason::Deactivated => 1008,
    };
    let frame = CloseFrame {
        code,
        reason: reason.as_str().into(),
    };
    let _ = write.send(Message::Close(Some(frame))).await;
    reason.as_str().to_owned()
}

async fn send<W>(write: &mut W, msg: &ServerMessage) -> Result<(), W::Error>
where
    W: Sink<Message> + Unpin,
{
    let text = serde_json::to_string(msg).unwrap_or_else(|_| "{}".to_owned());
    write.send(Message::Text(text.into())).await
}

/// Frame types, and the key holding the payload (None: the rest of the frame is the body,
/// as for the HTTP batch endpoints).
const KINDS: &[(&str, Option<&str>)] = &[
    ("metrics", None),
    ("heartbeat", Some("heartbeat")),
    ("events", None),
    ("inventory", Some("inventory")),
    ("command_progress", Some("progress")),
    ("command_result", Some("result")),
];

/// Handles one text frame: the answer to send.
async fn handle_frame(
    state: &GatewayState,
    agent_id: &str,
    who: &AgentIdentity,
    text: &str,
) -> ServerMessage {
    let (kind, answer) = frame_answer(state, agent_id, who, text).await;
    let outcome = match &answer {
        ServerMessage::Error { status, .. } => status.to_string(),
        _ => "ack".to_owned(),
    };
    metrics::ws_frame(kind, &outcome);
    answer
}

async fn frame_answer(
    state: &GatewayState,
    agent_id: &str,
    who: &AgentIdentity,
    text: &str,
) -> (&'static str, ServerMessage) {
    // Rate limit once the envelope is read, before the payload, as HTTP admits a caller
    // before reading the body.
    let decoded = decode_frame(&state.config, text, || {
        state
            .rate
            .check(&agent_id.to_owned())
            .inspect_err(|_| metrics::rate_limited())
    });
    let frame = match decoded {
        Ok(f) => f,
        Err(refused) => return (refused.kind, refused.answer),
    };
    let span = tracing::debug_span!("ws_frame", id = frame.id, r#type = frame.kind);
    let answer = match dispatch(state, agent_id, who, frame.payload)
        .instrument(span)
        .await
    {
        Ok(a) => {
            // A heartbeat's answer may carry the remote configuration: a `config` frame.
            if let Some(config) = a.config {
                state.hub.push(agent_id, ServerMessage::Config { config });
            }
            ServerMessage::Ack {
                id: frame.id,
                accepted: a.accepted,
                rejected: a.rejected,
            }
        }
        Err(e) => error_frame(Some(frame.id), frame.payload_key, e),
    };
    (frame.kind, answer)
}

/// A frame read and parsed, for its core.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub(crate) id: u64,
    pub(crate) kind: &'static str,
    pub(crate) payload_key: Option<&'static str>,
    pub(crate) payload: Payload,
}

/// A frame refused before its core: its type (`invalid` when unknown, the metrics label)
/// and the error frame answered.
#[derive(Debug)]
pub(crate) struct Refused {
    pub(crate) kind: &'static str,
    pub(crate) answer: ServerMessage,
}

/// Reads one text frame up to its typed payload: the size bounds, the envelope
/// ([`frame_head`]), `admit` (the rate limit), then the payload ([`take_payload`],
/// [`parse_payload`]). Pure but for `admit`.
pub(crate) fn decode_frame(
    cfg: &crate::GatewayConfig,
    text: &str,
    admit: impl FnOnce() -> Result<(), ApiError>,
) -> Result<Decoded, Box<Refused>> {
    if text.len() > cfg.max_body_bytes.max(cfg.max_inventory_bytes) {
        return Err(Box::new(Refused {
            kind: "invalid",
            answer: error_frame(None, None, too_large()),
        }));
    }
    let (id, kind, payload_key, obj) = frame_head(text).map_err(|b| {
        let (id, e) = *b;
        Box::new(Refused {
            kind: "invalid",
            answer: error_frame(id, None, e),
        })
    })?;
    let refuse = |key: Option<&str>, e: ApiError| {
        Box::new(Refused {
            kind,
            answer: error_frame(Some(id), key, e),
        })
    };
    if text.len() > cfg.max_body_bytes && kind != "inventory" {
        return Err(refuse(None, too_large()));
    }
    admit().map_err(|e| refuse(None, e))?;
    let payload = take_payload(payload_key, obj).map_err(|e| refuse(None, e))?;
    let payload = parse_payload(kind, payload_key, &payload).map_err(|e| refuse(payload_key, e))?;
    Ok(Decoded {
        id,
        kind,
        payload_key,
        payload,
    })
}

fn too_large() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "frame exceeds the size limit (max-body-bytes; max-inventory-bytes for inventory)",
    )
}

type Head<'a> = (u64, &'static str, Option<&'static str>, Fields<'a>);

/// A frame's top-level fields, each still unparsed JSON text (borrowed from the frame):
/// the envelope is read without building a tree of the payload, which is then parsed once,
/// straight into its type.
type Fields<'a> = BTreeMap<String, &'a RawValue>;

/// Reads a frame's envelope: the JSON object, its `id` and `type`.
fn frame_head(text: &str) -> Result<Head<'_>, Box<(Option<u64>, ApiError)>> {
    let mut obj: Fields<'_> = serde_json::from_str(text).map_err(|e| {
        let message = if e.classify() == serde_json::error::Category::Data {
            "a frame must be a JSON object".to_owned()
        } else {
            format!("malformed JSON: {e}")
        };
        Box::new((None, ApiError::invalid_field("body", message)))
    })?;
    let id = match obj.remove("id") {
        Some(v) => serde_json::from_str::<u64>(v.get()).ok().ok_or_else(|| {
            Box::new((
                None,
                ApiError::invalid_field("id", "must be an unsigned integer"),
            ))
        })?,
        None => {
            return Err(Box::new((
                None,
                ApiError::invalid_field("id", "missing field `id` (the request id)"),
            )))
        }
    };
    let names = || KINDS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ");
    let kind = match obj
        .remove("type")
        .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    {
        Some(t) => t,
        None => {
            return Err(Box::new((
                Some(id),
                ApiError::invalid_field("type", format!("must be one of {}", names())),
            )))
        }
    };
    let Some((kind, key)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        return Err(Box::new((
            Some(id),
            ApiError::invalid_field(
                "type",
                format!("unknown frame type `{kind}`; one of {}", names()),
            ),
        )));
    };
    Ok((id, *kind, *key, obj))
}

/// The payload of a frame, as JSON text: the rest of the frame (batches), or the value
/// under its key.
fn take_payload(payload_key: Option<&str>, mut obj: Fields<'_>) -> Result<String, ApiError> {
    let Some(key) = payload_key else {
        // The remaining fields as one object: a copy of their text, parsed once later.
        let mut out = String::from("{");
        for (i, (k, v)) in obj.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&Value::String(k.clone()).to_string());
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        return Ok(out);
    };
    let payload = obj
        .remove(key)
        .ok_or_else(|| ApiError::invalid_field(key, format!("missing field `{key}`")))?;
    if let Some(extra) = obj.keys().next() {
        return Err(ApiError::invalid_field(
            extra.clone(),
            format!("unknown field `{extra}`, expected `{key}`"),
        ));
    }
    Ok(payload.get().to_owned())
}

/// A frame's payload, parsed into its type (not validated yet).
#[derive(Debug)]
pub(crate) enum Payload {
    Metrics(MetricBatch),
    Heartbeat(HeartbeatIn),
    Events(EventBatch),
    Inventory(InventoryIn),
    Progress(CommandProgressIn),
    Result(CommandResultIn),
}

/// Parses the payload text ([`take_payload`]) of a frame of type `kind`; an error names
/// the field relative to the payload (the error frame prefixes the payload key).
pub(crate) fn parse_payload(
    kind: &str,
    payload_key: Option<&str>,
    payload: &str,
) -> Result<Payload, ApiError> {
    Ok(match kind {
        "metrics" => Payload::Metrics(parse_value(payload, None)?),
        "events" => Payload::Events(parse_value(payload, None)?),
        "heartbeat" => Payload::Heartbeat(parse_value(payload, payload_key)?),
        "inventory" => Payload::Inventory(parse_value(payload, payload_key)?),
        "command_progress" => Payload::Progress(parse_value(payload, payload_key)?),
        "command_result" => Payload::Result(parse_value(payload, payload_key)?),
        other => {
            return Err(ApiError::invalid_field(
                "type",
                format!("unknown frame type `{other}`"),
            ))
        }
    })
}

/// Runs the same core as the HTTP endpoint on a parsed payload.
async fn dispatch(
    state: &GatewayState,
    agent_id: &str,
    who: &AgentIdentity,
    payload: Payload,
) -> Result<fleet_schemas::api::IngestAccepted, ApiError> {
    match payload {
        Payload::Metrics(b) => crate::ingest_metrics(state, who, agent_id, b).await,
        Payload::Events(b) => crate::ingest_events(state, who, agent_id, b).await,
        Payload::Heartbeat(h) => crate::ingest_heartbeat(state, who, agent_id, h).await,
        Payload::Inventory(i) => crate::ingest_inventory(state, who, agent_id, i).await,
        Payload::Progress(p) => commands::ingest_progress(state, who, agent_id, None, p).await,
        Payload::Result(r) => commands::ingest_result(state, who, agent_id, None, r).await,
    }
}

/// Like [`fleet_service::error::parse_json`]: the error names the field path (relative to the
/// payload; the caller prefixes the payload key).
fn parse_value<T: DeserializeOwned>(json: &str, payload_key: Option<&str>) -> Result<T, ApiError> {
    fleet_service::error::deserialize_json(json.as_bytes()).map_err(|(field, e)| {
        let field = field
            .unwrap_or_else(|| payload_key.map_or_else(|| "body".to_owned(), |_| String::new()));
        ApiError::invalid_field(field, e.to_string())
    })
}

/// The error frame of an [`ApiError`]: status, body and `Retry-After` exactly as HTTP
/// would answer. Fields of payloads nested under a key are prefixed with it.
fn error_frame(id: Option<u64>, payload_key: Option<&str>, e: ApiError) -> ServerMessage {
    let (status, mut error, retry_after_secs) = e.into_parts();
    if let (Some(key), Some(field)) = (payload_key, error.field.as_mut()) {
        *field = if field.is_empty() {
            key.to_owned()
        } else {
            format!("{key}.{field}")
        };
    }
    ServerMessage::Error {
        id,
        status: status.as_u16(),
        error,
        retry_after_secs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_head_names_what_is_wrong() {
        let (id, e) = *frame_head("{\"id\": 1, \"type\"").expect_err("syntax");
        assert_eq!((id, e.status().as_u16()), (None, 400));
        let (id, _) = *frame_head(r#"{"id": 7, "type": "nope"}"#).expect_err("type");
        assert_eq!(id, Some(7));
        let (id, _) = *frame_head(r#"{"type": "metrics"}"#).expect_err("no id");
        assert_eq!(id, None);
        let (id, kind, key, obj) =
            frame_head(r#"{"id": 3, "type": "heartbeat", "heartbeat": {}}"#).expect("ok");
        assert_eq!((id, kind, key), (3, "heartbeat", Some("heartbeat")));
        assert!(obj.contains_key("heartbeat"));
    }

    #[test]
    fn a_field_named_empty_is_not_named_empty() {
        // Found by fuzz/fuzz_targets/ws_frame.rs: `""` as an unknown field gave field "".
        let cfg = crate::GatewayConfig::default();
        for (frame, want) in [
            (r#"{"id": 1, "type": "metrics", "": 1}"#, "body"),
            (
                r#"{"id": 2, "type": "heartbeat", "heartbeat": {"": 1}}"#,
                "heartbeat",
            ),
            (
                r#"{"id": 3, "type": "events", "events": [{"": 1}]}"#,
                "events[0]",
            ),
        ] {
            let refused = decode_frame(&cfg, frame, || Ok(())).expect_err(frame);
            let ServerMessage::Error { error, .. } = refused.answer else {
                panic!("an error frame");
            };
            assert_eq!(error.field.as_deref(), Some(want), "{frame}");
        }
    }

    #[test]
    fn nested_fields_are_prefixed_with_the_payload_key() {
        let e = parse_value::<fleet_schemas::api::HeartbeatIn>(
            r#"{"sent_at": 1, "sequence": 1, "uptime_seconds": 1, "agent_version": "x"}"#,
            Some("heartbeat"),
        )
        .expect_err("bad time");
        let ServerMessage::Error { error, status, .. } = error_frame(Some(1), Some("heartbeat"), e)
        else {
            panic!("an error frame");
        };
        assert_eq!(status, 400);
        assert_eq!(error.field.as_deref(), Some("heartbeat.sent_at"));
    }
}
