//! Remote commands requested by operators: `POST /api/v1/agents/{agent_id}/commands`
//! writes CommandRequested on `fleet.commands.v1`. The gateway instance holding the
//! agent's WebSocket delivers it (or the agent picks it up on its next poll); the agent
//! runs it only if the type is on its own allow-list, and its result comes back on the
//! same topic as CommandCompleted.
//!
//! Body: `{"command_type", "args"?, "timeout_secs"?, "requires_approval"?}`. Types:
//! `restart_service` (`args.service`), `run_script` (`args.script`, a name from the
//! agent's configuration), `collect_diagnostics`, `update_config` (interval keys).
//! An `Idempotency-Key` header makes a retried request name the same command (and answer
//! the same); the same key with a different request (type, arguments, timeout, approval,
//! requester) is 409 `idempotency_key_reused` and writes nothing, since the key names one
//! command id and the gateway and the read model keep the first REQUESTED of an id. The
//! key is bound to its request in the registry (`idempotency_keys`) before the event is
//! written, so concurrent requests under one key cannot both pass. Requesting needs an
//! operator of the agent's tenant (or an admin); the requester is the event's actor.
//!
//! Approval: a command needs it when the request says `requires_approval: true` or its
//! type is in the projections' `approval-required-commands` (default `["run_script"]`).
//! Such a command waits (the gateway delivers it only after CommandApproved) until
//! `POST /api/v1/commands/{command_id}/approve` by an operator of its tenant or an admin
//! who is not the requester (409 otherwise, and 409 if it does not await approval or was
//! approved already; 404 for an unknown command). The command is looked up in the read
//! model (its projection of `fleet.commands.v1`): a command requested a moment ago can be
//! approved once projected. Two approvals racing may both write APPROVED; the event id
//! is the same, and the gateway treats the second as a no-op.
//!
//! Rejection and cancel ([`Decision`]): `POST /api/v1/commands/{command_id}/reject` is the
//! other answer to an approval request (same rules as approve: another user than the
//! requester, a command still awaiting approval) and writes REJECTED;
//! `POST /api/v1/commands/{command_id}/cancel`, by any operator of the tenant or an admin
//! (the requester included), writes CANCELLED for a command no gateway has dispatched yet
//! (requested, awaiting approval or approved; 409 `already_dispatched` or
//! `already_finished` otherwise). Both take an optional `{"reason"}`, kept as the event's
//! message. Gateways never deliver a rejected or cancelled command; a dispatch that raced
//! the cancel (the read model was behind) wins, and the command runs to its end.
//!
//! Fleet-wide commands (one request for many agents) are [`crate::routes::command_groups`],
//! built on the same pieces: [`CheckedRequest`], [`request_id`], [`Decision`] and
//! [`write_command_events`].
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/agents/{agent_id}/commands` | request a command (202) |
//! | `GET /api/v1/agents/{agent_id}/commands?tenant=&limit=&after=` | an agent's commands, newest first; `after` is the last command id of the previous page |
//! | `GET /api/v1/commands/{command_id}?tenant=` | one command with its audit trail |
//! | `POST /api/v1/commands/{command_id}/approve` | approve a command awaiting approval |
//! | `POST /api/v1/commands/{command_id}/reject` | reject a command awaiting approval |
//! | `POST /api/v1/commands/{command_id}/cancel` | cancel a command not dispatched yet |

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_event_log::ProduceRecord;
use fleet_read_model::{CommandDetail, CommandQuery, CommandRow, CommandStatus, StoreError};
use fleet_schemas::{ids, CommandEvent, CommandEventKind, Record};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::auth::{not_found, read_scope, require_operator_of, require_writer, Principal};
use crate::error::{reply, store_error};
use crate::input::{idempotency_key, object_body};
use crate::query::{limit, Limit, Params};
use crate::routes::agents::{agent_of, find_agent, TenantParams};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/agents/{agent_id}/commands",
            post(request_command).get(agent_commands),
        )
        .route("/api/v1/commands/{command_id}", get(get_command))
        .route(
            "/api/v1/commands/{command_id}/approve",
            post(approve_command),
        )
        .route("/api/v1/commands/{command_id}/reject", post(reject_command))
        .route("/api/v1/commands/{command_id}/cancel", post(cancel_command))
}

/// Command types an operator may request (each agent has its own allow-list too).
pub const COMMAND_TYPES: &[&str] = &fleet_schemas::remote_config::COMMAND_TYPES;

/// Default timeout when the request names none.
pub const DEFAULT_TIMEOUT_SECS: u64 = 60;
/// Longest timeout a request may ask for.
pub const MAX_TIMEOUT_SECS: u64 = 3_600;

/// Body of a command request.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRequest {
    /// One of [`COMMAND_TYPES`].
    pub command_type: String,
    /// Arguments of the type.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Seconds the agent lets it run (default 60, at most 3600).
    #[serde(default, deserialize_with = "crate::input::whole_number")]
    pub timeout_secs: Option<i64>,
    /// Whether a second user must approve it before it is delivered (default false).
    #[serde(default)]
    pub requires_approval: Option<bool>,
}

/// Most arguments of a command.
pub const MAX_ARGS: usize = 32;
/// Longest argument name, in characters.
pub const MAX_ARG_NAME: usize = 64;
/// Longest argument value, in characters.
pub const MAX_ARG_VALUE: usize = 1024;

/// The arguments a command type needs (each a name: not blank, no hidden characters).
fn required_args(command_type: &str) -> &'static [&'static str] {
    match command_type {
        "restart_service" => &["service"],
        "run_script" => &["script"],
        _ => &[],
    }
}

impl utoipa::PartialSchema for CommandRequest {
    /// One variant per command type, each with the arguments it needs ([`check_request`]
    /// as a schema).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let schema = serde_json::json!({
            "description": "A command: `restart_service` needs `args.service`, `run_script` `args.script` (a name from the agent's configuration)",
            "oneOf": request_variants(),
        });
        serde_json::from_value(schema).unwrap_or_else(|e| {
            tracing::error!(error = %e, "The command request schema does not parse.");
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::default())
        })
    }
}

/// The JSON schema of each command type's request (one object schema per type), which
/// the group request extends with its `target`.
pub(crate) fn request_variants() -> Vec<serde_json::Value> {
    {
        use serde_json::json;
        COMMAND_TYPES
            .iter()
            .map(|t| {
                let needed = required_args(t);
                let mut args = json!({
                    "type": "object",
                    "maxProperties": MAX_ARGS,
                    "propertyNames": { "type": "string", "minLength": 1, "maxLength": MAX_ARG_NAME, "pattern": "fleet:text" },
                    "additionalProperties": { "type": "string", "maxLength": MAX_ARG_VALUE, "pattern": "fleet:text" },
                    "description": "Arguments by name",
                });
                let mut required = vec!["command_type"];
                if !needed.is_empty() {
                    let props: serde_json::Map<String, serde_json::Value> = needed
                        .iter()
                        .map(|k| ((*k).to_owned(), json!({ "type": "string", "maxLength": MAX_ARG_VALUE, "pattern": "fleet:name" })))
                        .collect();
                    args["properties"] = serde_json::Value::Object(props);
                    args["required"] = json!(needed);
                    required.push("args");
                }
                json!({
                    "type": "object",
                    "additionalProperties": false,
                    "required": required,
                    "properties": {
                        "command_type": { "type": "string", "enum": [t] },
                        "args": args,
                        "timeout_secs": { "type": ["integer", "null"], "minimum": 1, "maximum": MAX_TIMEOUT_SECS, "description": "Seconds the agent lets it run (default 60)" },
                        "requires_approval": { "type": ["boolean", "null"], "description": "Whether a second user must approve it before it is delivered" },
                    },
                })
            })
            .collect()
    }
}

impl utoipa::ToSchema for CommandRequest {}

/// Answer of a command request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandAccepted {
    /// The command's id (results and history name it).
    pub command_id: String,
    /// The agent.
    pub agent_id: String,
    /// `requested`, or `awaiting_approval`.
    pub status: String,
}

/// Checks a request; returns the normalised timeout. Pure, so it is tested with values.
pub fn check_request(req: &CommandRequest) -> Result<u64, ApiError> {
    if !COMMAND_TYPES.contains(&req.command_type.as_str()) {
        return Err(ApiError::invalid_field(
            "command_type",
            format!("must be one of {}", COMMAND_TYPES.join(", ")),
        ));
    }
    for key in required_args(&req.command_type) {
        let Some(v) = req.args.get(*key) else {
            return Err(ApiError::invalid_field(
                format!("args.{key}"),
                format!("{} needs args.{key}", req.command_type),
            ));
        };
        fleet_schemas::text::check_name(v, MAX_ARG_VALUE)
            .map_err(|m| ApiError::invalid_field(format!("args.{key}"), m))?;
    }
    if req.args.len() > MAX_ARGS {
        return Err(ApiError::invalid_field(
            "args",
            format!("at most {MAX_ARGS} arguments"),
        ));
    }
    for (k, v) in &req.args {
        let hidden = |t: &str| t.chars().any(fleet_schemas::text::is_hidden);
        let long = |t: &str, max: usize| t.chars().count() > max;
        if k.is_empty() || long(k, MAX_ARG_NAME) || long(v, MAX_ARG_VALUE) || hidden(k) || hidden(v)
        {
            return Err(ApiError::invalid_field(
                format!("args.{k}"),
                format!(
                    "names are 1 to {MAX_ARG_NAME} characters, values at most \
                     {MAX_ARG_VALUE}, without control, invisible or bidirectional-formatting \
                     characters"
                ),
            ));
        }
    }
    let timeout = match req.timeout_secs {
        None => DEFAULT_TIMEOUT_SECS,
        Some(t) => u64::try_from(t).unwrap_or(0),
    };
    if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
        return Err(ApiError::invalid_field(
            "timeout_secs",
            format!("must be 1 to {MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(timeout)
}

/// A command request after [`check_request`]: what each of its REQUESTED events carries.
/// One code path for single commands and command groups.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedRequest {
    /// One of [`COMMAND_TYPES`].
    pub command_type: String,
    /// Arguments of the type.
    pub args: BTreeMap<String, String>,
    /// Seconds the agent lets it run.
    pub timeout_secs: u64,
    /// Whether a second user must approve it: asked for, or the type is in the
    /// projections' `approval-required-commands`.
    pub requires_approval: bool,
}

impl CheckedRequest {
    /// Checks `req` ([`check_request`]) and decides whether it needs approval.
    pub(crate) fn new(s: &AppState, req: CommandRequest) -> Result<CheckedRequest, ApiError> {
        let timeout_secs = check_request(&req)?;
        let requires_approval = req.requires_approval.unwrap_or(false)
            || s.approval_required.contains(&req.command_type);
        Ok(CheckedRequest {
            command_type: req.command_type,
            args: req.args,
            timeout_secs,
            requires_approval,
        })
    }

    /// The request as an `Idempotency-Key` binds it: `scope` (what it targets) then the
    /// command and the requester, in this order (a retry must be the same text).
    pub(crate) fn canonical(
        &self,
        scope: serde_json::Map<String, serde_json::Value>,
        actor: &str,
    ) -> serde_json::Value {
        let mut m = scope;
        m.insert("command_type".into(), self.command_type.clone().into());
        m.insert("args".into(), serde_json::json!(self.args));
        m.insert("timeout_secs".into(), self.timeout_secs.into());
        m.insert("requires_approval".into(), self.requires_approval.into());
        m.insert("actor".into(), actor.into());
        serde_json::Value::Object(m)
    }

    /// Its REQUESTED event for one agent.
    pub(crate) fn requested(
        &self,
        command_id: &str,
        tenant_id: &str,
        agent_id: &str,
        actor: &str,
        group_id: Option<&str>,
        now: i64,
    ) -> CommandEvent {
        CommandEvent {
            command_type: self.command_type.clone(),
            args: self.args.clone().into_iter().collect::<HashMap<_, _>>(),
            requires_approval: self.requires_approval,
            timeout_secs: i64::try_from(self.timeout_secs).unwrap_or(i64::MAX),
            actor: Some(actor.to_owned()),
            group_id: group_id.map(str::to_owned),
            ..CommandEvent::step(
                CommandEventKind::Requested,
                command_id,
                tenant_id,
                agent_id,
                now,
            )
        }
    }

    /// The status a new request answers: `awaiting_approval` or `requested`.
    pub(crate) fn status(&self) -> &'static str {
        if self.requires_approval {
            "awaiting_approval"
        } else {
            "requested"
        }
    }
}

/// The id a request names: with an `Idempotency-Key`, UUIDv5 of `scope` and the key,
/// bound to `canonical` in the registry first (another request under the key is 409 and
/// writes nothing); without one, a new UUIDv7.
pub(crate) async fn request_id(
    s: &AppState,
    key: Option<&str>,
    scope: &[&str],
    canonical: &serde_json::Value,
) -> Result<String, ApiError> {
    let Some(key) = key else {
        return Ok(uuid::Uuid::now_v7().to_string());
    };
    let mut parts = scope.to_vec();
    parts.push(key);
    let id = ids::v5(&parts).to_string();
    s.claim_idempotent(&id, canonical).await?;
    Ok(id)
}

/// Most command events written in one produce call (a group's are written in pieces).
const PRODUCE_CHUNK: usize = 500;

/// Writes command events to `fleet.commands.v1`, each keyed by its agent (all of an
/// agent's events in its partition, in order). `what` names them in the 503 answer.
pub(crate) async fn write_command_events(
    s: &AppState,
    events: &[CommandEvent],
    what: &str,
) -> Result<(), ApiError> {
    for chunk in events.chunks(PRODUCE_CHUNK) {
        let records = chunk
            .iter()
            .map(|ev| {
                Ok(ProduceRecord {
                    key: Some(ev.agent_id.as_bytes().to_vec()),
                    value: s.wire.encode(ev).map_err(ApiError::internal)?,
                    timestamp_ms: Some(ev.occurred_at / 1000),
                })
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        s.log
            .produce(CommandEvent::TOPIC, records)
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("the {what} was not written: {e}; retry"), 5)
            })?;
    }
    Ok(())
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/commands",
    tag = "commands",
    summary = "Ask an agent to run a command",
    params(("agent_id" = String, Path, description = "Agent id"), ("Idempotency-Key" = Option<String>, Header, description = "Names the command: a retry with the same request answers the same; another request under the same key is 409", pattern = "^[!-~]{1,200}$")),
    request_body = CommandRequest,
    responses((status = 202, description = "Accepted", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%agent_id))]
pub(crate) async fn request_command(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    p: Principal,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let req: CommandRequest = object_body(&body)?;
        let req = CheckedRequest::new(&s, req)?;
        let key = idempotency_key(&headers)?;
        let cred = agent_of(&s, &p, &agent_id).await?;
        if !cred.active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "agent_deactivated",
                "the agent is deactivated",
            )
            .with_field("agent_id"));
        }
        // The request as it would be written: a retry of it is the same command; anything
        // else under this key (another type, arguments, approval, or requester) is
        // refused, so the id never names two requests.
        let mut scope = serde_json::Map::new();
        scope.insert("agent_id".into(), agent_id.clone().into());
        let canonical = req.canonical(scope, &actor);
        let command_id =
            request_id(&s, key.as_deref(), &[&agent_id, "command"], &canonical).await?;
        let now = fleet_schemas::time::now_micros();
        let ev = req.requested(&command_id, &cred.tenant_id, &agent_id, &actor, None, now);
        write_command_events(&s, &[ev], "command").await?;
        tracing::info!(%agent_id, %command_id, command_type = %req.command_type, %actor, requires_approval = req.requires_approval, "Command requested.");
        s.audit(&p, Some(&cred.tenant_id), "command.request", &command_id, Some(serde_json::json!({ "agent_id": agent_id, "command_type": req.command_type }))).await;
        Ok(CommandAccepted {
            command_id,
            agent_id,
            status: req.status().into(),
        })
    }
    .await;
    reply(StatusCode::ACCEPTED, r)
}

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message).with_field("command_id")
}

/// What a second user (or the requester, to cancel) decides about commands that were
/// not delivered yet; the same rules for one command and for a group's members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver it: APPROVED.
    Approve,
    /// Never deliver it: REJECTED (the other answer to the approval).
    Reject,
    /// Never deliver it: CANCELLED (before a gateway dispatched it).
    Cancel,
}

impl Decision {
    /// The event it writes.
    pub fn kind(self) -> CommandEventKind {
        match self {
            Decision::Approve => CommandEventKind::Approved,
            Decision::Reject => CommandEventKind::Rejected,
            Decision::Cancel => CommandEventKind::Cancelled,
        }
    }

    /// Its name in routes and audit actions (`approve`, `reject`, `cancel`).
    pub fn verb(self) -> &'static str {
        match self {
            Decision::Approve => "approve",
            Decision::Reject => "reject",
            Decision::Cancel => "cancel",
        }
    }

    /// The status it leads to (`approved`, `rejected`, `cancelled`).
    pub fn status(self) -> &'static str {
        match self {
            Decision::Approve => "approved",
            Decision::Reject => "rejected",
            Decision::Cancel => "cancelled",
        }
    }

    /// Whether `actor` may decide this about command `c` now. Approve and reject: a
    /// different user than the requester, of a command awaiting approval
    /// ([`check_approvable`]). Cancel: anyone who may act on it, while no gateway has
    /// dispatched it ([`check_cancellable`]). Pure.
    pub fn check(self, c: &CommandRow, actor: &str) -> Result<(), ApiError> {
        match self {
            Decision::Approve | Decision::Reject => check_approvable(c, actor),
            Decision::Cancel => check_cancellable(c),
        }
    }

    /// Its event for command `c`, with the command's request fields.
    pub(crate) fn event(
        self,
        c: &CommandRow,
        actor: &str,
        reason: Option<&str>,
        now: i64,
    ) -> CommandEvent {
        CommandEvent {
            command_type: c.command_type.clone(),
            args: c.args.clone().into_iter().collect(),
            requires_approval: c.requires_approval,
            timeout_secs: c.timeout_secs,
            actor: Some(actor.to_owned()),
            message: reason.map(str::to_owned),
            group_id: c.group_id.clone(),
            ..CommandEvent::step(self.kind(), &c.command_id, &c.tenant_id, &c.agent_id, now)
        }
    }
}

/// Answer of an approval.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandApproved {
    /// The command.
    pub command_id: String,
    /// The agent.
    pub agent_id: String,
    /// `approved`.
    pub status: String,
    /// Who approved it.
    pub approved_by: String,
}

/// Answer of a rejection or a cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandEnded {
    /// The command.
    pub command_id: String,
    /// The agent.
    pub agent_id: String,
    /// `rejected` or `cancelled`.
    pub status: String,
    /// Who rejected or cancelled it.
    pub by: String,
}

/// Looks the command up, checks `decision` is allowed, writes its event and the audit
/// entry; the command as it was.
async fn decide(
    s: &AppState,
    p: &Principal,
    command_id: &str,
    decision: Decision,
    reason: Option<String>,
) -> Result<CommandRow, ApiError> {
    require_writer(p)?;
    let actor = p.actor();
    let missing = || not_found("command", "command_id");
    // The read model keeps the first REQUESTED of an id (a later one, under a reused
    // key, is ignored by the gateway and the read model alike); a command of which
    // only later events were seen has no request yet.
    let c = s
        .read_model
        .get_command(None, command_id)
        .await
        .map_err(store_error)?
        .map(|d| d.command)
        .filter(|c| c.requested_at.is_some())
        .ok_or_else(missing)?;
    require_operator_of(p, &c.tenant_id, missing)?;
    decision.check(&c, &actor)?;
    let now = fleet_schemas::time::now_micros();
    let ev = decision.event(&c, &actor, reason.as_deref(), now);
    write_command_events(s, &[ev], decision.status()).await?;
    tracing::info!(agent_id = %c.agent_id, %command_id, %actor, decision = decision.verb(), "Command decided.");
    s.audit(
        p,
        Some(&c.tenant_id),
        &format!("command.{}", decision.verb()),
        command_id,
        reason.map(|r| serde_json::json!({ "reason": r })),
    )
    .await;
    Ok(c)
}

#[utoipa::path(
    post,
    path = "/api/v1/commands/{command_id}/approve",
    tag = "commands",
    summary = "Approve a command awaiting approval",
    params(("command_id" = String, Path, description = "Command id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%command_id))]
pub(crate) async fn approve_command(
    State(s): State<AppState>,
    Path(command_id): Path<String>,
    p: Principal,
) -> Response {
    let r = async {
        let c = decide(&s, &p, &command_id, Decision::Approve, None).await?;
        Ok(CommandApproved {
            command_id,
            agent_id: c.agent_id,
            status: Decision::Approve.status().into(),
            approved_by: p.actor(),
        })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/commands/{command_id}/reject",
    tag = "commands",
    summary = "Reject a command awaiting approval: it is never delivered",
    params(("command_id" = String, Path, description = "Command id")),
    request_body(content = Option<crate::input::ReasonBody>, description = "Optional: nothing, or a reason"),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%command_id))]
pub(crate) async fn reject_command(
    State(s): State<AppState>,
    Path(command_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    end_command(s, command_id, p, body, Decision::Reject).await
}

#[utoipa::path(
    post,
    path = "/api/v1/commands/{command_id}/cancel",
    tag = "commands",
    summary = "Cancel a command no gateway has dispatched yet: it is never delivered",
    params(("command_id" = String, Path, description = "Command id")),
    request_body(content = Option<crate::input::ReasonBody>, description = "Optional: nothing, or a reason"),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%command_id))]
pub(crate) async fn cancel_command(
    State(s): State<AppState>,
    Path(command_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    end_command(s, command_id, p, body, Decision::Cancel).await
}

async fn end_command(
    s: AppState,
    command_id: String,
    p: Principal,
    body: axum::body::Bytes,
    decision: Decision,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let reason = crate::input::optional_reason(&body)?;
        let c = decide(&s, &p, &command_id, decision, reason).await?;
        Ok(CommandEnded {
            command_id,
            agent_id: c.agent_id,
            status: decision.status().into(),
            by: p.actor(),
        })
    }
    .await;
    reply(StatusCode::OK, r)
}

/// Whether `actor` may approve (or reject) command `c` now: a different user than the
/// requester, of a command that needs approval and has not been approved or gone further.
/// Pure.
pub fn check_approvable(c: &CommandRow, actor: &str) -> Result<(), ApiError> {
    let id = &c.command_id;
    if c.requested_by.as_deref() == Some(actor) {
        return Err(conflict(
            "same_user",
            format!("approval must come from a different user: {actor} requested command {id}"),
        ));
    }
    if !c.requires_approval {
        return Err(conflict(
            "not_awaiting_approval",
            format!("command {id} does not need approval"),
        ));
    }
    if c.approved_at.is_some() {
        return Err(conflict(
            "already_approved",
            format!(
                "command {id} was approved already by {}",
                c.approved_by.as_deref().unwrap_or("someone")
            ),
        ));
    }
    if c.status != CommandStatus::AwaitingApproval {
        return Err(conflict(
            "not_awaiting_approval",
            format!(
                "command {id} is not awaiting approval (it is {})",
                c.status.as_str()
            ),
        ));
    }
    Ok(())
}

/// Whether command `c` may be cancelled now: no gateway dispatched it yet (as far as the
/// read model knows; a dispatch racing the cancel wins, and the command runs). Pure.
pub fn check_cancellable(c: &CommandRow) -> Result<(), ApiError> {
    if c.status.is_undelivered() {
        return Ok(());
    }
    let id = &c.command_id;
    let code = if c.status.is_final() {
        "already_finished"
    } else {
        "already_dispatched"
    };
    Err(conflict(
        code,
        format!(
            "command {id} cannot be cancelled: it is {} (only a command no gateway has \
             dispatched can be)",
            c.status.as_str()
        ),
    ))
}

/// Answer of an agent's command history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandList {
    /// Commands of this page, newest first.
    pub commands: Vec<CommandRow>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

/// Parameters of an agent's command history.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
    /// Last command id of the previous page (404 if the agent has no such command)
    #[param(min_length = 1)]
    pub after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/api/v1/agents/{agent_id}/commands",
    tag = "query",
    summary = "An agent's commands, newest first",
    params(("agent_id" = String, Path, description = "Agent id"), CommandParams),
    responses((status = 200, description = "Done", body = CommandList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn agent_commands(
    Path(agent_id): Path<String>,
    Params(q): Params<CommandParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let limit = limit(q.limit);
    let query = CommandQuery {
        tenant_id: tenant.clone(),
        agent_id,
        limit,
        after: q.after,
    };
    let commands = s
        .read_model
        .list_commands(&query)
        .await
        .map_err(|e| match e {
            // A cursor that names no command of this agent.
            StoreError::InvalidQuery(_) => not_found("command", "after"),
            other => store_error(other),
        })?;
    if commands.is_empty() && query.after.is_none() {
        // An unknown agent, or another tenant's, is not found rather than empty.
        find_agent(&s, tenant.as_deref(), &query.agent_id).await?;
    }
    let page = limit.unwrap_or(100) as usize;
    let next_after = (commands.len() == page)
        .then(|| commands.last().map(|c| c.command_id.clone()))
        .flatten();
    Ok(Json(CommandList {
        commands,
        next_after,
    }))
}

#[utoipa::path(
    get,
    path = "/api/v1/commands/{command_id}",
    tag = "query",
    summary = "One command with its audit trail",
    params(("command_id" = String, Path, description = "Command id"), TenantParams),
    responses((status = 200, description = "Done", body = fleet_read_model::CommandDetail), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_command(
    Path(command_id): Path<String>,
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandDetail>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    s.read_model
        .get_command(tenant.as_deref(), &command_id)
        .await
        .map_err(store_error)?
        .map(Json)
        .ok_or_else(|| not_found("command", "command_id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: &str, args: &[(&str, &str)], timeout: Option<i64>) -> CommandRequest {
        CommandRequest {
            command_type: t.into(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout_secs: timeout,
            requires_approval: None,
        }
    }

    fn field(e: ApiError) -> Option<String> {
        let status = e.status();
        assert!(status.is_client_error(), "{status}");
        let body = futures_body(e);
        body["error"]["field"].as_str().map(str::to_owned)
    }

    fn futures_body(e: ApiError) -> serde_json::Value {
        use axum::response::IntoResponse as _;
        use http_body_util::BodyExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let bytes = rt
            .block_on(e.into_response().into_body().collect())
            .expect("body")
            .to_bytes();
        serde_json::from_slice(&bytes).expect("json error body")
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        assert_eq!(
            check_request(&req("collect_diagnostics", &[], None)).ok(),
            Some(60)
        );
        assert_eq!(
            check_request(&req("restart_service", &[("service", "nginx")], Some(5))).ok(),
            Some(5)
        );
        let bad = check_request(&req("rm_rf", &[], None))
            .err()
            .and_then(field);
        assert_eq!(bad.as_deref(), Some("command_type"));
        let missing = check_request(&req("run_script", &[], None))
            .err()
            .and_then(field);
        assert_eq!(missing.as_deref(), Some("args.script"));
        let timeout = check_request(&req("collect_diagnostics", &[], Some(0)))
            .err()
            .and_then(field);
        assert_eq!(timeout.as_deref(), Some("timeout_secs"));
        let long = check_request(&req("collect_diagnostics", &[], Some(3_601)))
            .err()
            .and_then(field);
        assert_eq!(long.as_deref(), Some("timeout_secs"));
        let ctl = check_request(&req("run_script", &[("script", "a\nb")], None))
            .err()
            .and_then(field);
        assert_eq!(ctl.as_deref(), Some("args.script"));
    }
}
