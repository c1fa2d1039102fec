//! The WebSocket channel to the gateway (`GET /api/v1/agents/ws`).
//!
//! # Protocol
//!
//! JSON text frames tagged by `type` ([`AgentMessage`], [`ServerMessage`]). Every agent
//! frame carries an `id`; the gateway answers each with `ack` or `error` of the same id
//! once the event log took the write, `error.status` being the HTTP status the same
//! request would have got. The gateway also pushes `command` and `config` frames.
//!
//! # Pieces
//!
//! * [`WsSession`]: one background task owning the socket. It connects (with
//!   `Authorization: Bearer <credential>` and `x-fleet-agent-id`), writes queued frames,
//!   matches `ack` / `error` replies to the waiting requests by id, answers the
//!   gateway's pings, sends its own every `websocket-ping-interval` and drops the
//!   socket when the previous ping is still unanswered, and reconnects with jittered
//!   exponential backoff (full jitter, capped). Between frames it only waits on the
//!   socket, the request queue and the ping timer: no polling. A connected socket is
//!   split into its `Sink` and `Stream` halves and served over those alone (as the
//!   gateway's session is), so tests drive a session with channels.
//! * [`WsLink`]: the cheap, cloneable handle requests go through; each request waits at
//!   most the request timeout for its reply.
//! * [`WsTransport`]: the [`Transport`] the run loop uses: the socket while it is up,
//!   else (and when a request finds it gone) the [`HttpTransport`]. Replies are
//!   classified with [`classify`] like HTTP answers, so the spool keeps its semantics on
//!   both paths: a report is deleted only after an `ack` or a 2xx.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fleet_schemas::api::{
    AgentMessage, CommandProgressIn, CommandResultIn, CommandSpec, ConfigUpdate, ErrorBody,
    ErrorDetail, EventBatch, HeartbeatIn, IngestAccepted, InventoryIn, ItemError, MetricBatch,
    ServerMessage, AGENT_ID_HEADER,
};
use futures::{Sink, SinkExt as _, Stream, StreamExt as _};
use reqwest::StatusCode;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::retry::Backoff;
use crate::stats::{inc, Stats};
use crate::tls::ClientTls;
use crate::transport::{
    api_url, base_url, classify, error_chain, parse_retry_after, HttpTransport, SendOutcome,
    Transport, TransportError, MAX_RETRY_AFTER,
};

/// Requests waiting for the session task to write them.
const QUEUE: usize = 64;

/// Server pushes (commands, config) waiting for the agent to take them.
const PUSHED_QUEUE: usize = 256;

/// Largest frame the agent accepts from the gateway (commands and acks are small).
const MAX_INCOMING: usize = 4 * 1024 * 1024;

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Where the agent's WebSocket goes, so that its credential only ever goes where
/// `server_url` points:
///
/// 1. `configured` (the `ws-url` setting), when set;
/// 2. `suggested` (the enrollment's `websocket_url`), only when it has the origin of
///    `server_url` with `http`→`ws`, `https`→`wss` (same scheme, host and port); a URL
///    naming another host (such as the gateway's own `127.0.0.1` listen address, which
///    on this machine is this machine) or a `ws://` for an `https://` server is ignored;
/// 3. else `server_url` with `http`→`ws`, `https`→`wss` and `/api/v1/agents/ws` (any
///    path prefix kept).
///
/// An `https://` server never gets a `ws://` socket.
pub fn websocket_url(
    server_url: &str,
    configured: Option<&str>,
    suggested: Option<&str>,
) -> Result<reqwest::Url, TransportError> {
    let invalid = |url: &str, message: &str| TransportError::InvalidUrl {
        url: url.to_owned(),
        message: message.to_owned(),
    };
    let server = base_url(server_url)?;
    let mut derived = api_url(&server, &["agents", "ws"])?;
    let scheme = if server.scheme() == "https" {
        "wss"
    } else {
        "ws"
    };
    derived
        .set_scheme(scheme)
        .map_err(|()| invalid(server_url, "cannot derive a WebSocket URL"))?;
    if let Some(url) = configured.map(str::trim).filter(|u| !u.is_empty()) {
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(url, &e.to_string()))?;
        if !matches!(parsed.scheme(), "ws" | "wss") || !parsed.has_host() {
            return Err(invalid(url, "ws-url must be a ws:// or wss:// URL"));
        }
        if scheme == "wss" && parsed.scheme() != "wss" {
            return Err(invalid(
                url,
                "ws-url must be wss:// when server-url is https://",
            ));
        }
        return Ok(parsed);
    }
    if let Some(url) = suggested.map(str::trim).filter(|u| !u.is_empty()) {
        match reqwest::Url::parse(url) {
            Ok(u) if u.origin() == derived.origin() => return Ok(u),
            _ => warn!(
                url,
                server_url,
                "Ignoring the WebSocket URL the server suggested: it is not on the server URL's \
                 scheme, host and port. Set ws-url to use another one."
            ),
        }
    }
    Ok(derived)
}

/// What the session needs to connect.
#[derive(Clone)]
pub struct WsSettings {
    /// The `ws://` or `wss://` URL.
    pub url: reqwest::Url,
    /// Sent as `x-fleet-agent-id`.
    pub agent_id: String,
    /// Sent as `Authorization: Bearer ...` when set.
    pub credential: Option<String>,
    /// How a `wss://` server's certificate is checked.
    pub tls: ClientTls,
    /// Bound of the connect handshake, of one write, and of a request waiting for its
    /// reply.
    pub request_timeout: Duration,
    /// The agent's ping period; a ping unanswered by the next one marks the socket dead.
    pub ping_interval: Duration,
    /// First reconnect delay bound (full jitter).
    pub reconnect_initial: Duration,
    /// Largest reconnect delay bound.
    pub reconnect_max: Duration,
    /// Delay after the gateway refused the credential (401/403).
    pub auth_retry: Duration,
}

impl fmt::Debug for WsSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSettings")
            .field("url", &self.url.as_str())
            .field("agent_id", &self.agent_id)
            .field(
                "credential",
                &self.credential.as_ref().map(|_| "<redacted>"),
            )
            .field("request_timeout", &self.request_timeout)
            .field("ping_interval", &self.ping_interval)
            .finish_non_exhaustive()
    }
}

/// Something the gateway pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// Run this command.
    Command(CommandSpec),
    /// Apply these intervals.
    Config(ConfigUpdate),
}

/// The gateway's answer to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// `ack`.
    Ack {
        /// Items written.
        accepted: usize,
        /// Items refused.
        rejected: Vec<ItemError>,
    },
    /// `error`.
    Error {
        /// Equivalent HTTP status.
        status: u16,
        /// The error.
        error: ErrorDetail,
        /// `retry_after_secs`.
        retry_after_secs: Option<u64>,
    },
}

/// Why a request got no reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The socket was down; nothing was written.
    NotConnected,
    /// The socket went away after the frame was (maybe) written.
    Lost,
    /// No reply within the request timeout.
    TimedOut,
}

/// What the session tells a waiting request.
enum Answer {
    Reply(Reply),
    Failed(Failure),
}

struct Outgoing {
    id: u64,
    text: String,
    reply: oneshot::Sender<Answer>,
}

/// Handle for sending requests over the session's socket.
#[derive(Debug, Clone)]
pub struct WsLink {
    tx: mpsc::Sender<Outgoing>,
    connected: watch::Receiver<bool>,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
}

impl WsLink {
    /// True while the socket is up.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// A receiver that changes whenever the socket goes up or down.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }

    /// Sends the frame `build(id)` and waits (at most the request timeout) for its reply.
    pub async fn request(&self, build: impl FnOnce(u64) -> AgentMessage) -> Result<Reply, Failure> {
        if !self.is_connected() {
            return Err(Failure::NotConnected);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let text = serde_json::to_string(&build(id)).map_err(|e| {
            warn!(error = %e, "Cannot encode a WebSocket frame.");
            Failure::NotConnected
        })?;
        let (reply, answer) = oneshot::channel();
        let outgoing = Outgoing { id, text, reply };
        let waited = tokio::time::timeout(self.timeout, async {
            self.tx
                .send(outgoing)
                .await
                .map_err(|_| Failure::NotConnected)?;
            match answer.await {
                Ok(Answer::Reply(r)) => Ok(r),
                Ok(Answer::Failed(f)) => Err(f),
                Err(_) => Err(Failure::Lost),
            }
        })
        .await;
        waited.unwrap_or(Err(Failure::TimedOut))
    }
}

/// The background task owning the socket; run it with [`WsSession::run`].
pub struct WsSession {
    settings: WsSettings,
    rx: mpsc::Receiver<Outgoing>,
    connected: watch::Sender<bool>,
    pushed: mpsc::Sender<Pushed>,
    stats: Arc<Stats>,
}

impl fmt::Debug for WsSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsSession")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A session, the link to it, and the receiver of what the gateway pushes.
pub fn channel(
    settings: WsSettings,
    stats: Arc<Stats>,
) -> (WsLink, WsSession, mpsc::Receiver<Pushed>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let (connected_tx, connected_rx) = watch::channel(false);
    let (pushed_tx, pushed_rx) = mpsc::channel(PUSHED_QUEUE);
    let link = WsLink {
        tx,
        connected: connected_rx,
        next_id: Arc::new(AtomicU64::new(0)),
        timeout: settings.request_timeout,
    };
    let session = WsSession {
        settings,
        rx,
        connected: connected_tx,
        pushed: pushed_tx,
        stats,
    };
    (link, session, pushed_rx)
}

/// Why a connection attempt failed.
struct ConnectFailure {
    reason: String,
    retry_after: Option<Duration>,
    auth: bool,
}

impl WsSession {
    /// The URL it connects to.
    pub fn url(&self) -> &str {
        self.settings.url.as_str()
    }

    /// Connects, serves and reconnects until `cancel` fires.
    pub async fn run(mut self, cancel: CancellationToken) {
        let s = &self.settings;
        let mut backoff = Backoff::full_jitter(s.reconnect_initial, s.reconnect_max);
        let mut failing = false;
        loop {
            let attempt = tokio::select! {
                biased;
                () = cancel.cancelled() => return,
                a = self.connect() => a,
            };
            let delay = match attempt {
                Ok(socket) => {
                    let (sink, stream) = socket.split();
                    let connects = self.stats.ws_connects.fetch_add(1, Ordering::Relaxed) + 1;
                    info!(url = %self.settings.url, connects, "WebSocket connected.");
                    failing = false;
                    self.connected.send_replace(true);
                    let since = Instant::now();
                    let reason = self.serve(sink, stream, &cancel).await;
                    self.connected.send_replace(false);
                    inc(&self.stats.ws_disconnects);
                    if cancel.is_cancelled() {
                        return;
                    }
                    // A socket that stayed up a while resets the backoff; one the gateway
                    // drops at once keeps growing it.
                    if since.elapsed() >= self.settings.ping_interval {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay(None);
                    warn!(%reason, reconnect_in = ?delay, "WebSocket lost; using HTTP until it is back.");
                    delay
                }
                Err(f) => {
                    let delay = if f.auth {
                        self.settings.auth_retry.max(backoff.next_delay(None))
                    } else {
                        backoff.next_delay(f.retry_after)
                    };
                    if failing {
                        debug!(reason = %f.reason, retry_in = ?delay, "WebSocket connect failed again.");
                    } else {
                        warn!(reason = %f.reason, retry_in = ?delay, "WebSocket connect failed; using HTTP.");
                        failing = true;
                    }
                    delay
                }
            };
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => return,
                    () = &mut sleep => break,
                    queued = self.rx.recv() => match queued {
                        // Raced with the disconnect: let the caller use HTTP.
                        Some(o) => { let _ = o.reply.send(Answer::Failed(Failure::NotConnected)); }
                        None => return,
                    },
                }
            }
        }
    }

    async fn connect(&self) -> Result<Socket, ConnectFailure> {
        let fail = |reason: String| ConnectFailure {
            reason,
            retry_after: None,
            auth: false,
        };
        let mut request = self
            .settings
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| fail(e.to_string()))?;
        let headers = request.headers_mut();
        if let Some(c) = &self.settings.credential {
            let mut value = HeaderValue::try_from(format!("Bearer {c}"))
                .map_err(|_| fail("credential not usable in a header".to_owned()))?;
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
        headers.insert(
            AGENT_ID_HEADER,
            HeaderValue::try_from(self.settings.agent_id.as_str())
                .map_err(|_| fail("agent id not usable in a header".to_owned()))?,
        );
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_INCOMING))
            .max_frame_size(Some(MAX_INCOMING));
        let connecting = tokio_tungstenite::connect_async_tls_with_config(
            request,
            Some(config),
            true,
            Some(tokio_tungstenite::Connector::Rustls(
                self.settings.tls.rustls(),
            )),
        );
        match tokio::time::timeout(self.settings.request_timeout, connecting).await {
            Err(_) => Err(fail("connect timed out".to_owned())),
            Ok(Ok((socket, _))) => Ok(socket),
            Ok(Err(tungstenite::Error::Http(response))) => {
                let status = response.status();
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default();
                let message = serde_json::from_str::<ErrorBody>(&body)
                    .map(|b| b.error.message)
                    .unwrap_or_else(|_| crate::transport::truncate(&body, 200).to_owned());
                Err(ConnectFailure {
                    reason: format!("upgrade refused with {status}: {message}"),
                    retry_after: parse_retry_after(response.headers(), chrono::Utc::now()),
                    auth: status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN,
                })
            }
            Ok(Err(e)) => Err(fail(error_chain(&e))),
        }
    }

    /// Serves one connected socket, given as its write half `sink` and read half
    /// `stream`, until it fails or `cancel` fires; returns why it ended.
    async fn serve<W, R, E>(
        &mut self,
        mut sink: W,
        mut stream: R,
        cancel: &CancellationToken,
    ) -> String
    where
        W: Sink<Message> + Unpin,
        W::Error: std::error::Error,
        R: Stream<Item = Result<Message, E>> + Unpin,
        E: std::error::Error,
    {
        let timeout = self.settings.request_timeout;
        let mut pending: HashMap<u64, oneshot::Sender<Answer>> = HashMap::new();
        let period = self.settings.ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        let reason = loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
                    break "agent stopping".to_owned();
                }
                frame = stream.next() => match frame {
                    None => break "closed by the gateway".to_owned(),
                    Some(Err(e)) => break format!("read failed: {}", error_chain(&e)),
                    Some(Ok(Message::Text(text))) => self.on_text(text.as_str(), &mut pending),
                    Some(Ok(Message::Ping(_))) => {
                        // tungstenite queued the pong (on a real socket); write it out now.
                        match tokio::time::timeout(timeout, sink.flush()).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break format!("pong failed: {}", error_chain(&e)),
                            Err(_) => break "pong write timed out".to_owned(),
                        }
                    }
                    Some(Ok(Message::Pong(_))) => awaiting_pong = false,
                    Some(Ok(Message::Close(frame))) => {
                        break match frame {
                            Some(f) => format!("closed by the gateway ({} {})", f.code, f.reason),
                            None => "closed by the gateway".to_owned(),
                        };
                    }
                    Some(Ok(_)) => debug!("Ignoring a binary WebSocket frame."),
                },
                queued = self.rx.recv() => {
                    let Some(out) = queued else { break "agent stopping".to_owned() };
                    match tokio::time::timeout(timeout, sink.send(Message::text(out.text))).await {
                        Ok(Ok(())) => { pending.insert(out.id, out.reply); }
                        Ok(Err(e)) => {
                            let _ = out.reply.send(Answer::Failed(Failure::NotConnected));
                            break format!("write failed: {}", error_chain(&e));
                        }
                        Err(_) => {
                            let _ = out.reply.send(Answer::Failed(Failure::Lost));
                            break "write timed out".to_owned();
                        }
                    }
                }
                _ = ping.tick() => {
                    if awaiting_pong {
                        break format!("no pong within {period:?}: the connection is dead");
                    }
                    // Requests that gave up waiting no longer need their slot.
                    pending.retain(|_, tx| !tx.is_closed());
                    match tokio::time::timeout(timeout, sink.send(Message::Ping(Vec::new().into()))).await {
                        Ok(Ok(())) => awaiting_pong = true,
                        Ok(Err(e)) => break format!("ping failed: {}", error_chain(&e)),
                        Err(_) => break "ping write timed out".to_owned(),
                    }
                }
            }
        };
        for (_, tx) in pending.drain() {
            let _ = tx.send(Answer::Failed(Failure::Lost));
        }
        reason
    }

    fn on_text(&self, text: &str, pending: &mut HashMap<u64, oneshot::Sender<Answer>>) {
        let message = match serde_json::from_str::<ServerMessage>(text) {
            Ok(m) => m,
            Err(e) => {
                warn!(error = %e, frame = crate::transport::truncate(text, 200), "Ignoring an unreadable WebSocket frame.");
                return;
            }
        };
        let (id, reply) = match message {
            ServerMessage::Ack {
                id,
                accepted,
                rejected,
            } => (id, Reply::Ack { accepted, rejected }),
            ServerMessage::Error {
                id: Some(id),
                status,
                error,
                retry_after_secs,
            } => (
                id,
                Reply::Error {
                    status,
                    error,
                    retry_after_secs,
                },
            ),
            ServerMessage::Error {
                id: None,
                status,
                error,
                ..
            } => {
                warn!(status, code = %error.code, message = %error.message, "The gateway could not read a frame.");
                return;
            }
            ServerMessage::Command { command } => {
                self.push(Pushed::Command(command));
                return;
            }
            ServerMessage::Config { config } => {
                self.push(Pushed::Config(config));
                return;
            }
        };
        match pending.remove(&id) {
            Some(tx) => {
                let _ = tx.send(Answer::Reply(reply));
            }
            None => debug!(id, "Reply to a request that gave up waiting."),
        }
    }

    fn push(&self, pushed: Pushed) {
        if let Err(e) = self.pushed.try_send(pushed) {
            warn!(error = %e, "Too many pushed commands waiting; dropped one (the gateway redelivers pending commands).");
        }
    }
}

/// Maps a WebSocket reply to the outcome an HTTP answer with the same status would get
/// (see [`classify`]); `Retry-After` is `retry_after_secs`, capped like the header.
pub fn reply_outcome(reply: Reply, batch_len: usize) -> SendOutcome {
    match reply {
        Reply::Ack { accepted, rejected } => SendOutcome::Sent(IngestAccepted {
            accepted,
            rejected,
            config: None,
        }),
        Reply::Error {
            status,
            error,
            retry_after_secs,
        } => match StatusCode::from_u16(status) {
            Ok(code) => {
                let body = serde_json::to_string(&ErrorBody { error }).unwrap_or_default();
                let retry_after =
                    retry_after_secs.map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER));
                classify(code, retry_after, &body, batch_len)
            }
            Err(_) => SendOutcome::RetryLater {
                retry_after: None,
                reason: format!(
                    "WebSocket error with invalid status {status}: {}",
                    error.message
                ),
            },
        },
    }
}

/// The WebSocket [`Transport`]: each request goes over the socket while it is up, and
/// over HTTP when it is down or goes away under the request. A request the socket did
/// not answer in time is "retry later" (not re-sent over HTTP at once, which would only
/// double the wait).
#[derive(Debug, Clone)]
pub struct WsTransport {
    link: WsLink,
    http: HttpTransport,
    stats: Arc<Stats>,
}

impl WsTransport {
    /// Requests over `link`, falling back to `http`.
    pub fn new(link: WsLink, http: HttpTransport, stats: Arc<Stats>) -> Self {
        Self { link, http, stats }
    }

    /// The link (to know whether the socket is up).
    pub fn link(&self) -> &WsLink {
        &self.link
    }

    async fn deliver(
        &self,
        len: usize,
        frame: impl FnOnce(u64) -> AgentMessage + Send,
        http: impl Future<Output = SendOutcome> + Send,
    ) -> SendOutcome {
        match self.link.request(frame).await {
            Ok(reply) => reply_outcome(reply, len),
            Err(Failure::TimedOut) => SendOutcome::RetryLater {
                retry_after: None,
                reason: "no answer on the WebSocket within the request timeout".to_owned(),
            },
            Err(Failure::NotConnected | Failure::Lost) => {
                inc(&self.stats.http_fallbacks);
                http.await
            }
        }
    }
}

#[async_trait]
impl Transport for WsTransport {
    async fn send(&self, agent_id: &str, batch: &MetricBatch) -> SendOutcome {
        self.deliver(
            batch.reports.len(),
            |id| AgentMessage::Metrics {
                id,
                reports: batch.reports.clone(),
            },
            self.http.send(agent_id, batch),
        )
        .await
    }

    async fn heartbeat(&self, agent_id: &str, heartbeat: &HeartbeatIn) -> SendOutcome {
        self.deliver(
            1,
            |id| AgentMessage::Heartbeat {
                id,
                heartbeat: heartbeat.clone(),
            },
            self.http.heartbeat(agent_id, heartbeat),
        )
        .await
    }

    async fn events(&self, agent_id: &str, events: &EventBatch) -> SendOutcome {
        self.deliver(
            events.events.len(),
            |id| AgentMessage::Events {
                id,
                events: events.events.clone(),
            },
            self.http.events(agent_id, events),
        )
        .await
    }

    async fn inventory(&self, agent_id: &str, inventory: &InventoryIn) -> SendOutcome {
        self.deliver(
            1,
            |id| AgentMessage::Inventory {
                id,
                inventory: inventory.clone(),
            },
            self.http.inventory(agent_id, inventory),
        )
        .await
    }

    async fn command_progress(&self, agent_id: &str, progress: &CommandProgressIn) -> SendOutcome {
        self.deliver(
            1,
            |id| AgentMessage::CommandProgress {
                id,
                progress: progress.clone(),
            },
            self.http.command_progress(agent_id, progress),
        )
        .await
    }

    async fn command_result(&self, agent_id: &str, result: &CommandResultIn) -> SendOutcome {
        self.deliver(
            1,
            |id| AgentMessage::CommandResult {
                id,
                result: result.clone(),
            },
            self.http.command_result(agent_id, result),
        )
        .await
    }

    async fn pending_commands(&self, agent_id: &str) -> Result<Vec<CommandSpec>, SendOutcome> {
        self.http.pending_commands(agent_id).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc as chan;

    /// A session served over channels: what it writes, what it reads, its link and its
    /// pushes. The session counts as connected (as `run` marks it before serving).
    struct Served {
        written: chan::UnboundedReceiver<Message>,
        read: chan::UnboundedSender<Result<Message, tungstenite::Error>>,
        link: WsLink,
        pushed: mpsc::Receiver<Pushed>,
        cancel: CancellationToken,
        ended: tokio::task::JoinHandle<String>,
    }

    fn serve_over_channels() -> Served {
        let settings = WsSettings {
            url: reqwest::Url::parse("ws://gw.invalid/api/v1/agents/ws").unwrap(),
            agent_id: "ws-unit".into(),
            credential: None,
            tls: ClientTls::system_roots().unwrap(),
            request_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(3600),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(1),
            auth_retry: Duration::from_secs(1),
        };
        let (link, mut session, pushed) = channel(settings, Arc::new(Stats::default()));
        let (sink, written) = chan::unbounded();
        let (read, stream) = chan::unbounded();
        let cancel = CancellationToken::new();
        session.connected.send_replace(true);
        let ended = tokio::spawn({
            let cancel = cancel.clone();
            async move { session.serve(sink, stream, &cancel).await }
        });
        Served {
            written,
            read,
            link,
            pushed,
            cancel,
            ended,
        }
    }

    /// `f`'s output; fails the test instead of hanging when the session never answers.
    async fn soon<T>(f: impl Future<Output = T>) -> T {
        tokio::time::timeout(Duration::from_secs(20), f)
            .await
            .expect("the session did not act within 20 s")
    }

    fn heartbeat(sequence: u64) -> HeartbeatIn {
        HeartbeatIn {
            sent_at: chrono::Utc::now(),
            sequence,
            uptime_seconds: 1,
            agent_version: "test".into(),
            heartbeat_interval_secs: None,
            config_version: None,
        }
    }

    /// Sends a heartbeat request; returns the frame the session wrote and the request.
    async fn request(
        s: &mut Served,
        sequence: u64,
    ) -> (
        AgentMessage,
        tokio::task::JoinHandle<Result<Reply, Failure>>,
    ) {
        let link = s.link.clone();
        let beat = heartbeat(sequence);
        let waiting = tokio::spawn(async move {
            link.request(|id| AgentMessage::Heartbeat {
                id,
                heartbeat: beat,
            })
            .await
        });
        let frame = match soon(s.written.next()).await {
            Some(Message::Text(text)) => serde_json::from_str(text.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        };
        (frame, waiting)
    }

    fn server_frame(message: &ServerMessage) -> Result<Message, tungstenite::Error> {
        Ok(Message::text(serde_json::to_string(message).unwrap()))
    }

    #[tokio::test]
    async fn replies_are_matched_to_requests_by_id_and_pushes_are_handed_over() {
        let mut s = serve_over_channels();
        let (first, first_reply) = request(&mut s, 1).await;
        let (second, second_reply) = request(&mut s, 2).await;
        let id = |m: &AgentMessage| match m {
            AgentMessage::Heartbeat { id, heartbeat } => (*id, heartbeat.sequence),
            other => panic!("expected a heartbeat frame, got {other:?}"),
        };
        let ((first_id, 1), (second_id, 2)) = (id(&first), id(&second)) else {
            panic!("frames out of order: {first:?}, {second:?}");
        };
        assert_ne!(first_id, second_id);
        // Answered in the other order: each reply still reaches its own request.
        s.read
            .unbounded_send(server_frame(&ServerMessage::Error {
                id: Some(second_id),
                status: 503,
                error: ErrorDetail {
                    code: "unavailable".into(),
                    message: "log down".into(),
                    field: None,
                    items: vec![],
                },
                retry_after_secs: Some(3),
            }))
            .unwrap();
        s.read
            .unbounded_send(server_frame(&ServerMessage::Ack {
                id: first_id,
                accepted: 1,
                rejected: vec![],
            }))
            .unwrap();
        assert_eq!(
            soon(first_reply).await.unwrap(),
            Ok(Reply::Ack {
                accepted: 1,
                rejected: vec![]
            })
        );
        assert!(matches!(
            soon(second_reply).await.unwrap(),
            Ok(Reply::Error {
                status: 503,
                retry_after_secs: Some(3),
                ..
            })
        ));
        // A pushed config reaches the receiver of pushes; an unreadable frame is skipped.
        let update = ConfigUpdate {
            heartbeat_interval_secs: Some(5.0),
            metrics_interval_secs: None,
            ..ConfigUpdate::default()
        };
        s.read
            .unbounded_send(Ok(Message::text("not json")))
            .unwrap();
        s.read
            .unbounded_send(server_frame(&ServerMessage::Config {
                config: update.clone(),
            }))
            .unwrap();
        assert_eq!(soon(s.pushed.recv()).await, Some(Pushed::Config(update)));
        // The gateway goes away: a request still waiting learns that its frame was lost.
        let (_, waiting) = request(&mut s, 3).await;
        s.read.close_channel();
        assert_eq!(soon(waiting).await.unwrap(), Err(Failure::Lost));
        assert_eq!(soon(s.ended).await.unwrap(), "closed by the gateway");
    }

    #[tokio::test]
    async fn stopping_sends_a_close_frame() {
        let mut s = serve_over_channels();
        s.cancel.cancel();
        assert_eq!(soon(s.ended).await.unwrap(), "agent stopping");
        assert!(matches!(
            soon(s.written.next()).await,
            Some(Message::Close(None))
        ));
    }

    #[test]
    fn websocket_url_follows_the_server_url_origin() {
        let url = |server, configured, suggested| {
            websocket_url(server, configured, suggested)
                .map(|u| u.to_string())
                .unwrap()
        };
        // Derived from the server URL, path prefix kept.
        assert_eq!(
            url("http://gw:8080", None, None),
            "ws://gw:8080/api/v1/agents/ws"
        );
        assert_eq!(
            url("https://proxy/fleet/", None, Some("")),
            "wss://proxy/fleet/api/v1/agents/ws"
        );
        // Finding 2: a gateway without public-url handed out its listen address; on the
        // agent's machine that is the agent's own machine. Ignored (the old code took it).
        assert_eq!(
            url(
                "https://gw.example.com",
                None,
                Some("ws://127.0.0.1:8080/api/v1/agents/ws")
            ),
            "wss://gw.example.com/api/v1/agents/ws"
        );
        // Another host, even over wss: ignored.
        assert_eq!(
            url(
                "http://gw:8080",
                None,
                Some("wss://edge:443/api/v1/agents/ws")
            ),
            "ws://gw:8080/api/v1/agents/ws"
        );
        // Same host and port but ws:// for an https:// server: never a downgrade.
        assert_eq!(
            url(
                "https://gw.example.com",
                None,
                Some("ws://gw.example.com:443/api/v1/agents/ws")
            ),
            "wss://gw.example.com/api/v1/agents/ws"
        );
        // Another port of the same host: another origin.
        assert_eq!(
            url("http://gw:8080", None, Some("ws://gw:9090/ws")),
            "ws://gw:8080/api/v1/agents/ws"
        );
        // The same origin (default port spelled out, another path): taken.
        assert_eq!(
            url(
                "https://gw.example.com/",
                None,
                Some("wss://gw.example.com:443/fleet/api/v1/agents/ws")
            ),
            "wss://gw.example.com/fleet/api/v1/agents/ws"
        );
        assert_eq!(
            url("http://gw:8080", None, Some("http://gw:8080/not-ws")),
            "ws://gw:8080/api/v1/agents/ws"
        );
        // An explicit ws-url wins over both; a downgrade is refused.
        assert_eq!(
            url(
                "https://gw.example.com",
                Some("wss://ws.example.com/socket"),
                Some("wss://gw.example.com/api/v1/agents/ws")
            ),
            "wss://ws.example.com/socket"
        );
        assert!(
            websocket_url("https://gw.example.com", Some("ws://ws.example.com/"), None).is_err()
        );
        assert!(websocket_url("nope", None, None).is_err());
    }

    fn error(status: u16, retry_after_secs: Option<u64>) -> Reply {
        Reply::Error {
            status,
            error: ErrorDetail {
                code: "c".into(),
                message: "m".into(),
                field: Some("reports[0].cpu_percent".into()),
                items: vec![],
            },
            retry_after_secs,
        }
    }

    #[test]
    fn replies_map_like_http_statuses() {
        assert_eq!(
            reply_outcome(
                Reply::Ack {
                    accepted: 2,
                    rejected: vec![]
                },
                2
            ),
            SendOutcome::Sent(IngestAccepted {
                accepted: 2,
                config: None,
                rejected: vec![]
            })
        );
        assert!(matches!(
            reply_outcome(error(503, Some(7)), 1),
            SendOutcome::RetryLater { retry_after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            reply_outcome(error(429, None), 1),
            SendOutcome::RetryLater { retry_after: Some(d), .. } if d == crate::transport::DEFAULT_RETRY_AFTER
        ));
        assert!(matches!(
            reply_outcome(error(503, Some(99_999)), 1),
            SendOutcome::RetryLater { retry_after: Some(d), .. } if d == MAX_RETRY_AFTER
        ));
        assert!(matches!(
            reply_outcome(error(403, None), 1),
            SendOutcome::Unauthorized {
                status: 403,
                error: Some(_)
            }
        ));
        match reply_outcome(error(400, None), 1) {
            SendOutcome::Rejected {
                status: 400,
                error: Some(e),
                ..
            } => assert_eq!(e.error.field.as_deref(), Some("reports[0].cpu_percent")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            reply_outcome(error(413, None), 4),
            SendOutcome::Rejected { status: 413, .. }
        ));
        assert!(matches!(
            reply_outcome(error(404, None), 1),
            SendOutcome::RetryLater { .. }
        ));
        assert!(matches!(
            reply_outcome(error(2000, None), 1),
            SendOutcome::RetryLater { .. }
        ));
    }
}
