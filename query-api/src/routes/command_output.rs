//! A command's live output: the progress chunks the read model keeps (`command_output`,
//! projected from `fleet.commands.v1` PROGRESS as they arrive), paged or as a stream.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/v1/commands/{command_id}/output?tenant=&after=&limit=` | chunks after sequence `after`, in order |
//! | `GET /api/v1/commands/{command_id}/stream?tenant=` | Server-Sent Events: the chunks so far, new ones as they come, then `result` |
//!
//! Both are reads of the command, with the tenancy of `GET /api/v1/commands/{command_id}`:
//! a viewer may read, another tenant's command is 404 like a missing one.
//!
//! The stream polls the read model every [`POLL_EVERY`] (the API has no notification of
//! what the projection applied; a poll is two indexed queries). Each poll reads the
//! command's status first, then the chunks after the last one sent: a chunk applied before
//! the result is therefore sent before it, so `result` is always the last event. Events:
//! `output` (id: the chunk's sequence, data: the chunk as JSON), `result` (data: the
//! command as `GET /api/v1/commands/{command_id}` shows it, without the audit trail),
//! then the stream ends. A client that reconnects with `Last-Event-ID: <sequence>` gets
//! the chunks after it. Bounds: a stream lasts at most the command's timeout plus
//! [`STREAM_MARGIN`] (the timeout processor's grace is within it); then it sends `end`
//! (`{"reason": "lifetime"}`) and closes, and the client reconnects with `Last-Event-ID`
//! (a command awaiting approval never times out, so its stream ends this way). At most
//! [`MAX_STREAMS_PER_USER`] streams per user (or the bootstrap key) are open at once; one
//! more is 429.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::{Json, Router};
use fleet_read_model::{CommandOutputChunk, CommandOutputQuery, CommandRow};
use fleet_service::ApiError;
use futures::Stream;
use serde::{Deserialize, Deserializer, Serialize};
use tokio::time::Instant;

use crate::auth::{not_found, read_scope, Principal};
use crate::error::store_error;
use crate::query::{limit, Limit, Params};
use crate::routes::agents::TenantParams;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/commands/{command_id}/output", get(command_output))
        .route("/api/v1/commands/{command_id}/stream", get(stream_command))
}

/// How often a stream reads the read model.
pub const POLL_EVERY: Duration = Duration::from_millis(250);
/// How long a stream lasts beyond the command's timeout.
pub const STREAM_MARGIN: Duration = Duration::from_secs(120);
/// Most streams one user has open at once.
pub const MAX_STREAMS_PER_USER: usize = 8;
/// Chunks read per poll.
const PAGE: u32 = 1000;

/// A chunk's sequence number: a whole number, 0 or more (the `after` parameter and
/// `Last-Event-ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequence(pub i64);

impl Sequence {
    const EXPECTED: &'static str = "must be a whole number from 0 to 9223372036854775807";

    fn parse(v: &str) -> Option<Sequence> {
        // Digits only: `+1`, ` 1` and `-0` are not sequence numbers.
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        v.parse::<i64>().ok().map(Sequence)
    }
}

impl<'de> Deserialize<'de> for Sequence {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Sequence, D::Error> {
        let v = String::deserialize(d)?;
        Sequence::parse(&v).ok_or_else(|| serde::de::Error::custom(Sequence::EXPECTED))
    }
}

/// Parameters of a command's output.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct OutputParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Only chunks with a greater sequence (default 0: from the first)
    #[param(value_type = Option<i64>, minimum = 0)]
    pub after: Option<Sequence>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
}

/// A page of a command's output.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CommandOutput {
    /// The command.
    pub command_id: String,
    /// Its status when the page was read.
    #[schema(value_type = String, example = "running")]
    pub status: fleet_read_model::CommandStatus,
    /// Chunks in sequence order.
    pub chunks: Vec<CommandOutputChunk>,
    /// Pass as `after` for the next page; absent when this page was not full.
    pub next_after: Option<i64>,
}

/// The command, within the caller's read scope; 404 for a missing one or another
/// tenant's.
async fn command_in_scope(
    s: &AppState,
    tenant: Option<&str>,
    command_id: &str,
) -> Result<CommandRow, ApiError> {
    s.read_model
        .get_command(tenant, command_id)
        .await
        .map_err(store_error)?
        .map(|d| d.command)
        .ok_or_else(|| not_found("command", "command_id"))
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{command_id}/output",
    tag = "query",
    summary = "A command's output chunks so far, in order",
    params(("command_id" = String, Path, description = "Command id"), OutputParams),
    responses((status = 200, description = "Done", body = CommandOutput), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn command_output(
    Path(command_id): Path<String>,
    Params(q): Params<OutputParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandOutput>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let command = command_in_scope(&s, tenant.as_deref(), &command_id).await?;
    let limit = limit(q.limit);
    let chunks = s
        .read_model
        .command_output(&CommandOutputQuery {
            tenant_id: tenant,
            command_id: command_id.clone(),
            after: q.after.map_or(0, |a| a.0),
            limit,
        })
        .await
        .map_err(store_error)?;
    let page = limit.unwrap_or(fleet_read_model::DEFAULT_LIMIT) as usize;
    let next_after = (chunks.len() == page)
        .then(|| chunks.last().map(|c| c.sequence))
        .flatten();
    Ok(Json(CommandOutput {
        command_id,
        status: command.status,
        chunks,
        next_after,
    }))
}

/// Open streams per user.
#[derive(Debug, Default)]
pub(crate) struct StreamSlots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream of a user; frees its slot when dropped (the stream ended or the client
/// went away).
#[derive(Debug)]
struct StreamSlot {
    slots: Arc<StreamSlots>,
    user: String,
}

impl StreamSlots {
    fn take(self: &Arc<Self>, user: &str) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(user.to_owned()).or_default();
        if *n >= MAX_STREAMS_PER_USER {
            return Err(ApiError::too_many_requests(
                format!("at most {MAX_STREAMS_PER_USER} command streams per user are open at once"),
                5,
            ));
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user: user.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// `Last-Event-ID`: the sequence of the last chunk the client has (0 when absent).
fn last_event_id(headers: &HeaderMap) -> Result<i64, ApiError> {
    let Some(v) = headers.get("last-event-id") else {
        return Ok(0);
    };
    v.to_str()
        .ok()
        .and_then(Sequence::parse)
        .map(|s| s.0)
        .ok_or_else(|| ApiError::invalid_field("Last-Event-ID", Sequence::EXPECTED))
}

/// A stream's state between polls.
#[derive(Debug)]
struct Follow {
    s: AppState,
    tenant: Option<String>,
    command_id: String,
    /// The last sequence sent.
    after: i64,
    deadline: Instant,
    /// Poll again at once (a full page was read, or nothing was read yet).
    now: bool,
    done: bool,
    _slot: StreamSlot,
}

fn json_event(kind: &str, value: &impl Serialize) -> Event {
    Event::default()
        .event(kind)
        .json_data(value)
        .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()))
}

/// One poll: the events to send (possibly none) and whether the stream is over.
async fn poll(f: &mut Follow) -> Vec<Event> {
    if Instant::now() >= f.deadline {
        f.done = true;
        return vec![json_event(
            "end",
            &serde_json::json!({ "reason": "lifetime" }),
        )];
    }
    // Status first, then chunks: every chunk applied before the result is read after it.
    let command = match f
        .s
        .read_model
        .get_command(f.tenant.as_deref(), &f.command_id)
        .await
    {
        Ok(Some(d)) => d.command,
        Ok(None) => {
            f.done = true;
            return Vec::new();
        }
        Err(e) => {
            tracing::warn!(command_id = %f.command_id, error = %e, "Command stream: the read model did not answer; retrying.");
            return Vec::new();
        }
    };
    let query = CommandOutputQuery {
        tenant_id: f.tenant.clone(),
        command_id: f.command_id.clone(),
        after: f.after,
        limit: Some(PAGE),
    };
    let chunks = match f.s.read_model.command_output(&query).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(command_id = %f.command_id, error = %e, "Command stream: the read model did not answer; retrying.");
            return Vec::new();
        }
    };
    let full = chunks.len() == PAGE as usize;
    let mut events: Vec<Event> = chunks
        .iter()
        .map(|c| json_event("output", c).id(c.sequence.to_string()))
        .collect();
    if let Some(last) = chunks.last() {
        f.after = last.sequence;
    }
    f.now = full;
    if command.status.is_final() && !full {
        events.push(json_event("result", &command));
        f.done = true;
    }
    events
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{command_id}/stream",
    tag = "query",
    summary = "A command's output as Server-Sent Events, ending with its result",
    description = "Events: `output` (id: the chunk's sequence; data: a CommandOutputChunk), then `result` (data: the command) and the stream ends; `end` (data: `{\"reason\":\"lifetime\"}`) when the stream outlived the command's timeout plus 120 s: reconnect with `Last-Event-ID`. At most 8 streams per user at once (429).",
    params(
        ("command_id" = String, Path, description = "Command id"),
        TenantParams,
        ("Last-Event-ID" = Option<String>, Header, nullable = false, description = "Sequence of the last chunk received: only later chunks are sent", pattern = "^[0-9]{1,18}$"),
    ),
    responses(
        (status = 200, description = "The event stream", content_type = "text/event-stream", body = String),
        crate::openapi::ApiErrors
    ),
    security(("bearer" = []))
)]
pub(crate) async fn stream_command(
    Path(command_id): Path<String>,
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let after = last_event_id(&headers)?;
    let command = command_in_scope(&s, tenant.as_deref(), &command_id).await?;
    let slot = s.streams.take(&p.user_id)?;
    let timeout = u64::try_from(command.timeout_secs)
        .unwrap_or(0)
        .min(crate::routes::commands::MAX_TIMEOUT_SECS);
    let lifetime = Duration::from_secs(timeout).saturating_add(STREAM_MARGIN);
    tracing::debug!(%command_id, after, user = %p.user_id, "Command stream opened.");
    let follow = Follow {
        s,
        tenant,
        command_id,
        after,
        deadline: Instant::now() + lifetime,
        now: true,
        done: false,
        _slot: slot,
    };
    let events = futures::stream::unfold(follow, |mut f| async move {
        if f.done {
            return None;
        }
        if !f.now {
            tokio::time::sleep(POLL_EVERY).await;
        }
        let events = poll(&mut f).await;
        Some((futures::stream::iter(events.into_iter().map(Ok)), f))
    });
    use futures::StreamExt as _;
    Ok(Sse::new(events.flatten()).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_are_plain_whole_numbers() {
        assert_eq!(Sequence::parse("0"), Some(Sequence(0)));
        assert_eq!(Sequence::parse("42"), Some(Sequence(42)));
        assert_eq!(
            Sequence::parse("9223372036854775807"),
            Some(Sequence(i64::MAX))
        );
        for bad in ["", "-1", "+1", " 1", "1.0", "9223372036854775808", "x"] {
            assert_eq!(Sequence::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_user_has_at_most_so_many_streams() {
        let slots = Arc::new(StreamSlots::default());
        let held: Vec<_> = (0..MAX_STREAMS_PER_USER)
            .map(|_| slots.take("u1").expect("a slot"))
            .collect();
        assert!(slots.take("u1").is_err(), "one more is refused");
        assert!(slots.take("u2").is_ok(), "another user has their own");
        drop(held);
        assert!(slots.take("u1").is_ok(), "closed streams free their slots");
    }
}
