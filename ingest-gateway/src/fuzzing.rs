//! Entry points of the fuzz targets in `fuzz/` (cargo feature `fuzzing`; not an API): the
//! parsing and checks the handlers run on a body or a WebSocket frame, without a server,
//! an event log or a clock. Each calls the code the handler calls, with the default
//! configuration and the tenant and agent below.

use fleet_schemas::api::{
    EventBatch, HeartbeatIn, InventoryIn, ItemError, MetricBatch, RegisterRequest, ServerMessage,
};
use fleet_schemas::{AgentEvent, AgentFacts, Heartbeat, MetricReport, SoftwareInventory};
use fleet_service::error::parse_json;
use fleet_service::ApiError;

use crate::subjects::SubjectTracker;
use crate::ws::{self, Payload};
use crate::{validate, GatewayConfig};

/// Tenant the bodies are checked for.
pub const TENANT: &str = "tenant-fuzz";
/// Agent the bodies are checked for.
pub const AGENT: &str = "agent-fuzz";

/// A refusal as the client sees it: the HTTP status and the error body's `error`.
pub type Refusal = (u16, fleet_schemas::api::ErrorDetail);

fn refusal(e: ApiError) -> Refusal {
    let (status, detail, _) = e.into_parts();
    (status.as_u16(), detail)
}

/// Records to write and refused items of a batch.
pub type Checked<T> = (Vec<T>, Vec<ItemError>);

/// `POST .../metrics` at `now` (µs): the body parsed as the handler parses it, then
/// checked (with a fresh subject tracker).
pub fn metrics(body: &[u8], now: i64) -> Result<Checked<MetricReport>, Refusal> {
    let cfg = GatewayConfig::default();
    let batch: MetricBatch = parse_json(body).map_err(refusal)?;
    let subjects = SubjectTracker::new(&cfg.subjects);
    crate::check_metrics(&cfg, &subjects, TENANT, AGENT, &batch, now).map_err(refusal)
}

/// `POST .../events` at `now` (µs).
pub fn events(body: &[u8], now: i64) -> Result<Checked<AgentEvent>, Refusal> {
    let batch: EventBatch = parse_json(body).map_err(refusal)?;
    crate::check_events(&GatewayConfig::default(), TENANT, AGENT, &batch, now).map_err(refusal)
}

fn field_error((field, message): (String, String)) -> Refusal {
    refusal(ApiError::invalid_field(field, message))
}

/// `POST .../heartbeat` at `now` (µs).
pub fn heartbeat(body: &[u8], now: i64) -> Result<Heartbeat, Refusal> {
    let hb: HeartbeatIn = parse_json(body).map_err(refusal)?;
    let limits = validate::Limits::from_config(&GatewayConfig::default());
    validate::heartbeat(TENANT, AGENT, &hb, now, &limits).map_err(field_error)
}

/// `POST .../inventory` at `now` (µs).
pub fn inventory(body: &[u8], now: i64) -> Result<SoftwareInventory, Refusal> {
    let inv: InventoryIn = parse_json(body).map_err(refusal)?;
    let limits = validate::Limits::from_config(&GatewayConfig::default());
    validate::inventory(TENANT, AGENT, &inv, now, &limits).map_err(field_error)
}

/// `POST /api/v1/agents/register`, up to the registry: the facts written to the log.
pub fn register(body: &[u8]) -> Result<AgentFacts, Refusal> {
    let req: RegisterRequest = parse_json(body).map_err(refusal)?;
    crate::register::check_request(&req).map_err(refusal)
}

/// What the gateway makes of one WebSocket text frame before the frame's core runs.
#[derive(Debug)]
pub enum Frame {
    /// Read and parsed: the request id, the frame type and the payload (as JSON, in the
    /// shape of the agent's `AgentMessage` without `id` and `type`).
    Decoded {
        /// Request id.
        id: u64,
        /// Frame type.
        kind: &'static str,
        /// The payload's key (`heartbeat`, ...); `None` for batches, whose fields are
        /// the frame's own.
        payload_key: Option<&'static str>,
        /// The parsed payload.
        payload: serde_json::Value,
    },
    /// Refused with this error frame.
    Refused(ServerMessage),
}

/// Reads a frame as the gateway does (the rate limit admits it).
pub fn ws_frame(text: &str) -> Frame {
    match ws::decode_frame(&GatewayConfig::default(), text, || Ok(())) {
        Err(refused) => Frame::Refused(refused.answer),
        Ok(d) => {
            let payload = match &d.payload {
                Payload::Metrics(b) => serde_json::to_value(b),
                Payload::Heartbeat(h) => serde_json::to_value(h),
                Payload::Events(b) => serde_json::to_value(b),
                Payload::Inventory(i) => serde_json::to_value(i),
                Payload::Progress(p) => serde_json::to_value(p),
                Payload::Result(r) => serde_json::to_value(r),
            };
            Frame::Decoded {
                id: d.id,
                kind: d.kind,
                payload_key: d.payload_key,
                payload: payload.unwrap_or(serde_json::Value::Null),
            }
        }
    }
}
