//! Remote commands requested by operators: `POST /api/v1/agents/{agent_id}/commands`
//! writes CommandRequested on `fleet.commands.v1`. The gateway instance holding the
//! agent's WebSocket delivers it (or the agent picks it up on its next poll); the agent
//! runs it only if the type is on its own allow-list, and its result comes back on the
//! same topic as CommandCompleted.
//!
//! Body: `{"command_type", "args"?, "timeout_secs"?, "requires_approval"?}`. Types:
//! `restart_service` (`args.service`), `run_script` (`args.script`, a name from the
//! agent's configuration), `collect_diagnostics`, `update_config` (interval keys).
//! An `Idempotency-Key` header makes a retried request name the same command. Requesting
//! needs an operator of the agent's tenant (or an admin); the requester is the event's
//! actor.
//!
//! Approval: a command needs it when the request says `requires_approval: true` or its
//! type is in the projections' `approval-required-commands` (default `["run_script"]`).
//! Such a command waits (the gateway delivers it only after CommandApproved) until
//! `POST /api/v1/commands/{command_id}/approve` by an operator of its tenant or an admin
//! who is not the requester (409 otherwise, and 409 if it does not await approval or was
//! approved already; 404 for an unknown command). The command's REQUESTED event is found
//! by reading `fleet.commands.v1` to its end: simple, but a read of the topic per
//! approval. Two approvals racing may both write APPROVED; the event id is the same, and
//! the gateway treats the second as a no-op.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use fleet_event_log::ProduceRecord;
use fleet_schemas::{codec, ids, CommandEvent, CommandEventKind, Record};
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};

use crate::admin::{reply, store_error, AdminState};
use crate::auth::require_operator;

/// Command types an operator may request (each agent has its own allow-list too).
pub const COMMAND_TYPES: &[&str] = &[
    "restart_service",
    "run_script",
    "collect_diagnostics",
    "update_config",
];

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
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Whether a second user must approve it before it is delivered.
    #[serde(default)]
    pub requires_approval: bool,
}

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
    let required: &[&str] = match req.command_type.as_str() {
        "restart_service" => &["service"],
        "run_script" => &["script"],
        _ => &[],
    };
    for key in required {
        if req.args.get(*key).is_none_or(|v| v.trim().is_empty()) {
            return Err(ApiError::invalid_field(
                format!("args.{key}"),
                format!("{} needs args.{key}", req.command_type),
            ));
        }
    }
    if req.args.len() > 32 {
        return Err(ApiError::invalid_field("args", "at most 32 arguments"));
    }
    for (k, v) in &req.args {
        if k.is_empty() || k.len() > 64 || v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(ApiError::invalid_field(
                format!("args.{k}"),
                "keys are 1 to 64 characters, values at most 1024, no control characters",
            ));
        }
    }
    let timeout = req.timeout_secs.unwrap_or(DEFAULT_TIMEOUT_SECS);
    if timeout == 0 || timeout > MAX_TIMEOUT_SECS {
        return Err(ApiError::invalid_field(
            "timeout_secs",
            format!("must be 1 to {MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(timeout)
}

#[utoipa::path(
    post,
    path = "/api/v1/agents/{agent_id}/commands",
    tag = "commands",
    summary = "Ask an agent to run a command",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body = serde_json::Value,
    responses((status = 202, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn request_command(
    State(s): State<AdminState>,
    Path(agent_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        let actor = p.actor();
        let req: CommandRequest = fleet_service::error::parse_json(&body)?;
        let timeout = check_request(&req)?;
        let cred = s
            .registry
            .agent_credential(&agent_id)
            .await
            .map_err(store_error)?
            .ok_or_else(|| {
                ApiError::not_found(format!("no enrolled agent {agent_id}")).with_field("agent_id")
            })?;
        require_operator(&p, &cred.tenant_id)?;
        if !cred.active {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "agent_deactivated",
                format!("agent {agent_id} is deactivated"),
            )
            .with_field("agent_id"));
        }
        let command_id = match headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
        {
            Some(key) if !key.trim().is_empty() => {
                ids::v5(&[&agent_id, "command", key.trim()]).to_string()
            }
            _ => uuid::Uuid::now_v7().to_string(),
        };
        let requires_approval =
            req.requires_approval || s.approval_required.contains(&req.command_type);
        let now = fleet_schemas::time::now_micros();
        let ev = CommandEvent {
            command_type: req.command_type.clone(),
            args: req.args.clone().into_iter().collect::<HashMap<_, _>>(),
            requires_approval,
            timeout_secs: i64::try_from(timeout).unwrap_or(i64::MAX),
            actor: Some(actor.clone()),
            ..CommandEvent::step(
                CommandEventKind::Requested,
                &command_id,
                &cred.tenant_id,
                &agent_id,
                now,
            )
        };
        let value = codec::encode(&ev).map_err(ApiError::internal)?;
        let rec = ProduceRecord {
            key: Some(agent_id.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(now / 1000),
        };
        s.log
            .produce(CommandEvent::TOPIC, vec![rec])
            .await
            .map_err(|e| ApiError::unavailable(format!("the command was not written: {e}"), 5))?;
        tracing::info!(%agent_id, %command_id, command_type = %req.command_type, %actor, requires_approval, "Command requested.");
        s.audit(&p, Some(&cred.tenant_id), "command.request", &command_id, Some(serde_json::json!({ "agent_id": agent_id, "command_type": req.command_type }))).await;
        Ok(CommandAccepted {
            command_id,
            agent_id,
            status: if requires_approval {
                "awaiting_approval".into()
            } else {
                "requested".into()
            },
        })
    }
    .await;
    reply(StatusCode::ACCEPTED, r)
}

fn conflict(code: &'static str, message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, code, message).with_field("command_id")
}

/// Every event of one command on `fleet.commands.v1`, in log order.
async fn command_events(
    log: &dyn fleet_event_log::EventLog,
    command_id: &str,
) -> Result<Vec<CommandEvent>, ApiError> {
    let mut events = Vec::new();
    fleet_consumer::log::read_to_end(log, CommandEvent::TOPIC, |r| {
        if let Ok(ev) = codec::decode::<CommandEvent>(&r.value) {
            if ev.command_id == command_id {
                events.push(ev);
            }
        }
    })
    .await
    .map_err(|e| ApiError::unavailable(format!("commands could not be read: {e}"), 5))?;
    Ok(events)
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

#[utoipa::path(
    post,
    path = "/api/v1/commands/{command_id}/approve",
    tag = "commands",
    summary = "Approve a command awaiting approval",
    params(("command_id" = String, Path, description = "Command id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn approve_command(
    State(s): State<AdminState>,
    Path(command_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let r = async {
        let p = s.principal(&headers).await?;
        let actor = p.actor();
        let events = command_events(s.log.as_ref(), &command_id).await?;
        let requested = events
            .iter()
            .find(|e| e.kind == CommandEventKind::Requested)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(format!("no command {command_id}")).with_field("command_id")
            })?;
        require_operator(&p, &requested.tenant_id)?;
        if requested.actor.as_deref() == Some(actor.as_str()) {
            return Err(conflict(
                "same_user",
                format!(
                    "approval must come from a different user: {actor} requested command {command_id}"
                ),
            ));
        }
        if !requested.requires_approval {
            return Err(conflict(
                "not_awaiting_approval",
                format!("command {command_id} does not need approval"),
            ));
        }
        if let Some(done) = events.iter().find(|e| e.kind == CommandEventKind::Approved) {
            return Err(conflict(
                "already_approved",
                format!(
                    "command {command_id} was approved already by {}",
                    done.actor.as_deref().unwrap_or("someone")
                ),
            ));
        }
        if let Some(later) = events.iter().find(|e| e.kind != CommandEventKind::Requested) {
            return Err(conflict(
                "not_awaiting_approval",
                format!(
                    "command {command_id} is not awaiting approval (it is {})",
                    later.kind.symbol()
                ),
            ));
        }
        let now = fleet_schemas::time::now_micros();
        let ev = CommandEvent {
            command_type: requested.command_type.clone(),
            args: requested.args.clone(),
            requires_approval: true,
            timeout_secs: requested.timeout_secs,
            actor: Some(actor.clone()),
            ..CommandEvent::step(
                CommandEventKind::Approved,
                &command_id,
                &requested.tenant_id,
                &requested.agent_id,
                now,
            )
        };
        let rec = ProduceRecord {
            key: Some(requested.agent_id.as_bytes().to_vec()),
            value: codec::encode(&ev).map_err(ApiError::internal)?,
            timestamp_ms: Some(now / 1000),
        };
        s.log
            .produce(CommandEvent::TOPIC, vec![rec])
            .await
            .map_err(|e| ApiError::unavailable(format!("the approval was not written: {e}; retry"), 5))?;
        tracing::info!(agent_id = %requested.agent_id, %command_id, %actor, "Command approved.");
        s.audit(&p, Some(&requested.tenant_id), "command.approve", &command_id, None).await;
        Ok(CommandApproved {
            command_id,
            agent_id: requested.agent_id,
            status: "approved".into(),
            approved_by: actor,
        })
    }
    .await;
    reply(StatusCode::OK, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(t: &str, args: &[(&str, &str)], timeout: Option<u64>) -> CommandRequest {
        CommandRequest {
            command_type: t.into(),
            args: args
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            timeout_secs: timeout,
            requires_approval: false,
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
        let long = check_request(&req("collect_diagnostics", &[], Some(MAX_TIMEOUT_SECS + 1)))
            .err()
            .and_then(field);
        assert_eq!(long.as_deref(), Some("timeout_secs"));
        let ctl = check_request(&req("run_script", &[("script", "a\nb")], None))
            .err()
            .and_then(field);
        assert_eq!(ctl.as_deref(), Some("args.script"));
    }
}
