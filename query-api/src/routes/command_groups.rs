//! Fleet-wide commands (command groups): one request names a command and a target (the
//! tenant's agents with a tag, at a location, or a list of agents); it fans out to one
//! command per agent, approved (or rejected, or cancelled) once for the whole group.
//!
//! `POST /api/v1/command-groups?tenant=` with `{"target": {"tag"|"location"|"agents"},
//! "command_type", "args"?, "timeout_secs"?, "requires_approval"?}`: the command fields
//! are those of a single command and are checked by the same code
//! ([`crate::routes::commands::CheckedRequest`]); the target names exactly one of `tag`,
//! `location` and `agents` (1 to [`MAX_TARGET_AGENTS`] agent ids). It is resolved from
//! the read model at request time to the tenant's enrolled, not deactivated agents, at
//! most [`MAX_GROUP_AGENTS`] (422 `too_many_agents` beyond); a target that resolves to no
//! agent is 422 `no_agents`, and a listed agent that is unknown, another tenant's or
//! deactivated is 422 `unknown_agents` (naming `target.agents`). Requesting needs an
//! operator of the tenant (an admin names it with `tenant`; 422 otherwise). The group is
//! stored (`command_groups`), then one REQUESTED per agent is written with the group's id
//! and the command id UUIDv5(group id, agent id). An `Idempotency-Key` names the group
//! (UUIDv5 of tenant and key, bound to the request as for single commands,
//! [`crate::routes::commands::request_id`]): a retry writes the same events, which the
//! gateway and the read model ignore as repeats; a retry also resolves the target again,
//! so an agent tagged in between joins. If writing the events fails (503), retry with the
//! same key.
//!
//! Approval is once per group: `POST .../approve` by an operator of the tenant or an admin
//! who is not the requester writes APPROVED for every member awaiting approval; `reject`
//! (same rules) writes REJECTED for them. `cancel`, by any operator of the tenant or an
//! admin, writes CANCELLED for every member no gateway has dispatched yet; members already
//! dispatched or running are left to finish, and the answer says how many of each. Each
//! member is judged by the rule of a single command
//! ([`crate::routes::commands::Decision`]); 409 when no member qualifies. A member whose
//! REQUESTED the read model has not projected yet is not decided (the answer counts it as
//! `not_projected`): decide again once it is.
//!
//! A group's status counts its members by where they are: `pending` (requested or approved
//! and not dispatched, or not projected yet), `awaiting_approval`, `dispatched`, `running`,
//! `succeeded`, `failed`, `refused`, `timed_out`, `rejected`, `cancelled`: one query.
//! Another tenant's group is 404, as an unknown one. Each request, approval, rejection and
//! cancel is in the audit log (`command_group.request`, `.approve`, `.reject`, `.cancel`).
//!
//! | route | what |
//! | --- | --- |
//! | `POST /api/v1/command-groups?tenant=` | request a command for many agents (202) |
//! | `GET /api/v1/command-groups?tenant=&limit=&after=` | the groups, newest first |
//! | `GET /api/v1/command-groups/{group_id}?tenant=` | one group with its counts and approval |
//! | `GET /api/v1/command-groups/{group_id}/commands?tenant=&limit=&after=` | its commands, by command id |
//! | `POST /api/v1/command-groups/{group_id}/approve` | approve every member awaiting approval |
//! | `POST /api/v1/command-groups/{group_id}/reject` | reject every member awaiting approval |
//! | `POST /api/v1/command-groups/{group_id}/cancel` | cancel every member not dispatched yet |

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use fleet_read_model::{
    CommandGroup, CommandGroupMembersQuery, CommandGroupSummary, CommandStatus, CommandTarget,
    StoreError, MAX_GROUP_AGENTS,
};
use fleet_schemas::ids;
use fleet_service::ApiError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{
    not_found, read_scope, require_operator, require_operator_of, require_writer, Principal,
};
use crate::error::{invalid_combination, reply, store_error};
use crate::input::{idempotency_key, object_body, MAX_NAME_BYTES};
use crate::query::{limit, Limit, Params};
use crate::routes::agents::TenantParams;
use crate::routes::commands::{
    request_id, write_command_events, CheckedRequest, CommandList, CommandRequest, Decision,
};
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/command-groups",
            post(request_group).get(list_groups),
        )
        .route("/api/v1/command-groups/{group_id}", get(get_group))
        .route(
            "/api/v1/command-groups/{group_id}/commands",
            get(group_commands),
        )
        .route(
            "/api/v1/command-groups/{group_id}/approve",
            post(approve_group),
        )
        .route(
            "/api/v1/command-groups/{group_id}/reject",
            post(reject_group),
        )
        .route(
            "/api/v1/command-groups/{group_id}/cancel",
            post(cancel_group),
        )
}

/// Most agents a request may list in `target.agents`.
pub const MAX_TARGET_AGENTS: usize = 1000;

/// Body of a command-group request: a target and the fields of a single command
/// ([`CommandRequest`]). Parsed by hand ([`parse_request`]); this type is its schema.
#[derive(Debug)]
pub struct CommandGroupRequest;

/// The target's schema: exactly one of `tag`, `location`, `agents`.
fn target_schema() -> Value {
    serde_json::json!({
        "type": "object",
        "description": "Exactly one of: the tenant's agents with a tag, at a location, or a list of agents",
        "additionalProperties": false,
        "minProperties": 1,
        "maxProperties": 1,
        "properties": {
            "tag": { "type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,64}$" },
            "location": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": "fleet:text" },
            "agents": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_TARGET_AGENTS,
                "items": { "type": "string", "minLength": 1, "maxLength": MAX_NAME_BYTES, "pattern": "fleet:text" },
            },
        },
    })
}

impl utoipa::PartialSchema for CommandGroupRequest {
    /// [`CommandRequest`]'s schema (one variant per command type), each variant with the
    /// required `target`.
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let mut variants = crate::routes::commands::request_variants();
        for v in &mut variants {
            if let Some(props) = v.get_mut("properties").and_then(Value::as_object_mut) {
                props.insert("target".into(), target_schema());
            }
            if let Some(req) = v.get_mut("required").and_then(Value::as_array_mut) {
                req.push("target".into());
            }
        }
        let schema = serde_json::json!({
            "description": "A command for every agent of a target: `target` and the fields of a single command",
            "oneOf": variants,
        });
        serde_json::from_value(schema).unwrap_or_else(|e| {
            tracing::error!(error = %e, "The command group request schema does not parse.");
            utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::default())
        })
    }
}

impl utoipa::ToSchema for CommandGroupRequest {}

/// A string at `field` of the target: 1 to 200 characters without hidden ones.
fn target_text(field: &str, v: &Value) -> Result<String, ApiError> {
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::invalid_field(field, "must be a string"))?;
    let n = s.chars().count();
    if n == 0 || n > MAX_NAME_BYTES || s.chars().any(fleet_schemas::text::is_hidden) {
        return Err(ApiError::invalid_field(
            field,
            format!(
                "must be 1 to {MAX_NAME_BYTES} characters without control, invisible or \
                 bidirectional-formatting characters"
            ),
        ));
    }
    Ok(s.to_owned())
}

/// Checks a target object: exactly one of `tag`, `location`, `agents` (1 to
/// [`MAX_TARGET_AGENTS`] ids, repeats dropped). Pure.
pub fn parse_target(v: &Value) -> Result<CommandTarget, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::invalid_field("target", "must be an object"))?;
    let mut entries = obj.iter();
    let (Some((kind, value)), None) = (entries.next(), entries.next()) else {
        return Err(ApiError::invalid_field(
            "target",
            "must name exactly one of tag, location and agents",
        ));
    };
    match kind.as_str() {
        "tag" => {
            let tag = value
                .as_str()
                .ok_or_else(|| ApiError::invalid_field("target.tag", "must be a string"))?;
            crate::routes::tags::check_tag("target.tag", tag)?;
            Ok(CommandTarget::Tag(tag.to_owned()))
        }
        "location" => Ok(CommandTarget::Location(target_text(
            "target.location",
            value,
        )?)),
        "agents" => {
            let list = value
                .as_array()
                .ok_or_else(|| ApiError::invalid_field("target.agents", "must be an array"))?;
            if list.is_empty() || list.len() > MAX_TARGET_AGENTS {
                return Err(ApiError::invalid_field(
                    "target.agents",
                    format!("must list 1 to {MAX_TARGET_AGENTS} agent ids"),
                ));
            }
            let mut seen = BTreeSet::new();
            let mut ids = Vec::with_capacity(list.len());
            for (i, id) in list.iter().enumerate() {
                let id = target_text(&format!("target.agents[{i}]"), id)?;
                if seen.insert(id.clone()) {
                    ids.push(id);
                }
            }
            Ok(CommandTarget::Agents(ids))
        }
        other => Err(ApiError::invalid_field(
            format!("target.{other}"),
            "a target is one of tag, location and agents",
        )),
    }
}

/// Parses a request body into its target and its command (checked as a single command's).
pub(crate) fn parse_request(
    s: &AppState,
    body: &[u8],
) -> Result<(CommandTarget, CheckedRequest), ApiError> {
    let mut fields: serde_json::Map<String, Value> = object_body(body)?;
    let target = fields
        .remove("target")
        .ok_or_else(|| ApiError::invalid_field("target", "a command group needs a target"))?;
    let target = parse_target(&target)?;
    let rest = serde_json::to_vec(&Value::Object(fields)).map_err(ApiError::internal)?;
    let req: CommandRequest = fleet_service::error::parse_json(&rest)?;
    Ok((target, CheckedRequest::new(s, req)?))
}

/// The tenant a group is requested in: the named one (the caller must be its operator or
/// an admin), else the caller's own; an admin must name one.
fn request_tenant(p: &Principal, named: Option<&str>) -> Result<String, ApiError> {
    require_writer(p)?;
    match (named, p.tenant_id.as_deref()) {
        (Some(t), _) => {
            require_operator(p, t)?;
            Ok(t.to_owned())
        }
        (None, Some(own)) => Ok(own.to_owned()),
        (None, None) => Err(invalid_combination(
            "tenant",
            "an admin key belongs to no tenant: name the group's tenant with ?tenant=",
        )),
    }
}

/// The command id of a group's member: UUIDv5 of the group id and the agent id.
pub fn member_id(group_id: &str, agent_id: &str) -> String {
    ids::v5(&[group_id, agent_id]).to_string()
}

/// Answer of a command-group request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandGroupAccepted {
    /// The group's id.
    pub group_id: String,
    /// How many agents the target resolved to (one command each).
    pub agent_count: i64,
    /// `requested`, or `awaiting_approval`.
    pub status: String,
}

#[utoipa::path(
    post,
    path = "/api/v1/command-groups",
    tag = "commands",
    summary = "Ask every agent of a tag, a location or a list to run a command",
    params(TenantParams, ("Idempotency-Key" = Option<String>, Header, description = "Names the group: a retry with the same request writes the same commands; another request under the same key is 409", pattern = "^[!-~]{1,200}$")),
    request_body = CommandGroupRequest,
    responses((status = 202, description = "Accepted", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all)]
pub(crate) async fn request_group(
    State(s): State<AppState>,
    Params(q): Params<TenantParams>,
    p: Principal,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let key = idempotency_key(&headers)?;
        // The tenant before the body, as a single command looks up its agent first: an
        // unknown tenant is 404 whatever the body.
        let tenant = request_tenant(&p, q.tenant.as_deref())?;
        crate::routes::tenants::known_tenant(&s, &tenant, "tenant").await?;
        let (target, req) = parse_request(&s, &body)?;
        let agents = s
            .read_model
            .command_targets(&tenant, &target, MAX_GROUP_AGENTS.saturating_add(1))
            .await
            .map_err(store_error)?;
        check_resolved(&target, &agents)?;
        let mut scope = serde_json::Map::new();
        scope.insert("tenant".into(), tenant.clone().into());
        scope.insert(
            "target".into(),
            serde_json::to_value(&target).map_err(ApiError::internal)?,
        );
        let canonical = req.canonical(scope, &actor);
        let group_id =
            request_id(&s, key.as_deref(), &[&tenant, "command-group"], &canonical).await?;
        let now = fleet_schemas::time::now_micros();
        let agent_count = i64::try_from(agents.len()).unwrap_or(i64::MAX);
        let group = CommandGroup {
            group_id: group_id.clone(),
            tenant_id: tenant.clone(),
            target: target.clone(),
            command_type: req.command_type.clone(),
            args: req.args.clone(),
            timeout_secs: i64::try_from(req.timeout_secs).unwrap_or(i64::MAX),
            requires_approval: req.requires_approval,
            requested_by: actor.clone(),
            requested_at: now,
            agent_count,
        };
        // The group first, so that no command names a group the API does not know.
        s.read_model
            .create_command_group(&group)
            .await
            .map_err(store_error)?;
        let events: Vec<_> = agents
            .iter()
            .map(|agent| {
                let id = member_id(&group_id, agent);
                req.requested(&id, &tenant, agent, &actor, Some(&group_id), now)
            })
            .collect();
        write_command_events(&s, &events, "command group").await?;
        tracing::info!(%group_id, %tenant, agents = agent_count, command_type = %req.command_type, %actor, requires_approval = req.requires_approval, "Command group requested.");
        s.audit(
            &p,
            Some(&tenant),
            "command_group.request",
            &group_id,
            Some(serde_json::json!({
                "target": target,
                "command_type": req.command_type,
                "agents": agent_count,
            })),
        )
        .await;
        Ok(CommandGroupAccepted {
            group_id,
            agent_count,
            status: req.status().into(),
        })
    }
    .await;
    reply(StatusCode::ACCEPTED, r)
}

/// The resolved agents are usable: at least one, at most [`MAX_GROUP_AGENTS`], and every
/// listed agent among them. Pure.
pub fn check_resolved(target: &CommandTarget, agents: &[String]) -> Result<(), ApiError> {
    let unprocessable = |code, field: &str, message: String| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, message).with_field(field)
    };
    if agents.len() > MAX_GROUP_AGENTS as usize {
        return Err(unprocessable(
            "too_many_agents",
            "target",
            format!("the target names more than {MAX_GROUP_AGENTS} agents: narrow it"),
        ));
    }
    if let CommandTarget::Agents(listed) = target {
        let found: BTreeSet<&str> = agents.iter().map(String::as_str).collect();
        let missing: Vec<&str> = listed
            .iter()
            .map(String::as_str)
            .filter(|a| !found.contains(a))
            .collect();
        if let Some(first) = missing.first() {
            return Err(unprocessable(
                "unknown_agents",
                "target.agents",
                format!(
                    "{} listed agent(s) are unknown, deactivated or not enrolled in this tenant, \
                     for example {first}",
                    missing.len()
                ),
            ));
        }
    }
    if agents.is_empty() {
        return Err(unprocessable(
            "no_agents",
            "target",
            "the target names no enrolled, active agent of the tenant".into(),
        ));
    }
    Ok(())
}

/// The approval of a group: `not_required`, `awaiting_approval` (some member awaits it),
/// `approved`, `rejected`, or `cancelled` (withdrawn before an answer).
fn approval_state(g: &CommandGroup, c: &CommandGroupSummary, approved: bool) -> &'static str {
    if !g.requires_approval {
        "not_required"
    } else if c.awaiting_approval > 0 {
        "awaiting_approval"
    } else if approved {
        "approved"
    } else if c.rejected > 0 {
        "rejected"
    } else if c.cancelled > 0 {
        "cancelled"
    } else {
        "awaiting_approval"
    }
}

/// A command group with where its members are.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CommandGroupDetail {
    /// The group as requested.
    #[serde(flatten)]
    pub group: CommandGroup,
    /// `open` while a member is pending, awaiting approval, dispatched or running, else
    /// `finished`.
    pub state: String,
    /// `not_required`, `awaiting_approval`, `approved`, `rejected` or `cancelled`.
    pub approval: String,
    /// Who approved the group.
    pub approved_by: Option<String>,
    /// When (µs).
    pub approved_at: Option<i64>,
    /// The members by where they are.
    pub counts: CommandGroupSummary,
}

/// The group `group_id` as `p` may see it (404 otherwise), with its counts.
async fn group_detail(
    s: &AppState,
    tenant: Option<&str>,
    group_id: &str,
) -> Result<CommandGroupDetail, ApiError> {
    let group = s
        .read_model
        .get_command_group(tenant, group_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("command group", "group_id"))?;
    let raw = s
        .read_model
        .command_group_counts(group_id)
        .await
        .map_err(store_error)?;
    let counts = raw.summary(group.agent_count);
    let open = [
        counts.pending,
        counts.awaiting_approval,
        counts.dispatched,
        counts.running,
    ]
    .iter()
    .any(|n| *n > 0);
    Ok(CommandGroupDetail {
        state: if open { "open" } else { "finished" }.into(),
        approval: approval_state(&group, &counts, raw.approved_at.is_some()).into(),
        approved_by: raw.approved_by,
        approved_at: raw.approved_at,
        counts,
        group,
    })
}

#[utoipa::path(
    get,
    path = "/api/v1/command-groups/{group_id}",
    tag = "query",
    summary = "One command group with its approval and its members' counts",
    params(("group_id" = String, Path, description = "Command group id"), TenantParams),
    responses((status = 200, description = "Done", body = CommandGroupDetail), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn get_group(
    Path(group_id): Path<String>,
    Params(q): Params<TenantParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandGroupDetail>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    Ok(Json(group_detail(&s, tenant.as_deref(), &group_id).await?))
}

/// Parameters of the group list and of a group's commands.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct GroupPageParams {
    /// Tenant (admins: optional, every tenant if absent; others: their own, the default)
    #[param(min_length = 1)]
    pub tenant: Option<String>,
    /// Page size, 1 to 1000 (default 100)
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<Limit>,
    /// The last id of the previous page (404 if there is no such one)
    #[param(min_length = 1)]
    pub after: Option<String>,
}

/// Answer of the group list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CommandGroupList {
    /// Groups of this page, newest first.
    pub groups: Vec<CommandGroup>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_after: Option<String>,
}

fn next_after<T>(page: &[T], limit: Option<u32>, id: impl Fn(&T) -> &str) -> Option<String> {
    let size = limit.unwrap_or(fleet_read_model::DEFAULT_LIMIT) as usize;
    (page.len() == size)
        .then(|| page.last().map(|t| id(t).to_owned()))
        .flatten()
}

#[utoipa::path(
    get,
    path = "/api/v1/command-groups",
    tag = "query",
    summary = "Command groups, newest first",
    params(GroupPageParams),
    responses((status = 200, description = "Done", body = CommandGroupList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn list_groups(
    Params(q): Params<GroupPageParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandGroupList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    let limit = limit(q.limit);
    let groups = s
        .read_model
        .list_command_groups(tenant.as_deref(), limit, q.after.as_deref())
        .await
        .map_err(|e| match e {
            StoreError::InvalidQuery(_) => not_found("command group", "after"),
            other => store_error(other),
        })?;
    let next_after = next_after(&groups, limit, |g| g.group_id.as_str());
    Ok(Json(CommandGroupList { groups, next_after }))
}

#[utoipa::path(
    get,
    path = "/api/v1/command-groups/{group_id}/commands",
    tag = "query",
    summary = "A command group's commands, by command id",
    params(("group_id" = String, Path, description = "Command group id"), GroupPageParams),
    responses((status = 200, description = "Done", body = CommandList), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn group_commands(
    Path(group_id): Path<String>,
    Params(q): Params<GroupPageParams>,
    State(s): State<AppState>,
    p: Principal,
) -> Result<Json<CommandList>, ApiError> {
    let tenant = read_scope(&p, q.tenant.as_deref())?;
    s.read_model
        .get_command_group(tenant.as_deref(), &group_id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found("command group", "group_id"))?;
    let limit = limit(q.limit);
    let commands = s
        .read_model
        .command_group_members(&CommandGroupMembersQuery {
            group_id,
            statuses: Vec::new(),
            limit: Some(limit.unwrap_or(fleet_read_model::DEFAULT_LIMIT)),
            after: q.after,
        })
        .await
        .map_err(store_error)?;
    let next_after = next_after(&commands, limit, |c| c.command_id.as_str());
    Ok(Json(CommandList {
        commands,
        next_after,
    }))
}

/// Answer of a group's approval, rejection or cancel.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CommandGroupDecided {
    /// The group.
    pub group_id: String,
    /// `approved`, `rejected` or `cancelled`.
    pub status: String,
    /// Who decided.
    pub by: String,
    /// Members that got the decision (one event each).
    pub commands: i64,
    /// Members a gateway had dispatched already, or that are running: left to finish.
    pub already_dispatched: i64,
    /// Members that had finished already.
    pub finished: i64,
    /// Members not projected yet (their request was written a moment ago): not decided;
    /// decide again once they are.
    pub not_projected: i64,
}

/// Looks the group up, decides for each member the single-command rule allows, writes the
/// events and the audit entry.
async fn decide_group(
    s: &AppState,
    p: &Principal,
    group_id: &str,
    decision: Decision,
    reason: Option<String>,
) -> Result<CommandGroupDecided, ApiError> {
    require_writer(p)?;
    let actor = p.actor();
    let missing = || not_found("command group", "group_id");
    let group = s
        .read_model
        .get_command_group(None, group_id)
        .await
        .map_err(store_error)?
        .ok_or_else(missing)?;
    require_operator_of(p, &group.tenant_id, missing)?;
    let conflict = |code: &'static str, message: String| {
        ApiError::new(StatusCode::CONFLICT, code, message).with_field("group_id")
    };
    if decision != Decision::Cancel && group.requested_by == actor {
        return Err(conflict(
            "same_user",
            format!(
                "approval must come from a different user: {actor} requested command group \
                 {group_id}"
            ),
        ));
    }
    if decision != Decision::Cancel && !group.requires_approval {
        return Err(conflict(
            "not_awaiting_approval",
            format!("command group {group_id} does not need approval"),
        ));
    }
    let statuses = match decision {
        Decision::Approve | Decision::Reject => vec![CommandStatus::AwaitingApproval],
        Decision::Cancel => vec![
            CommandStatus::Requested,
            CommandStatus::AwaitingApproval,
            CommandStatus::Approved,
        ],
    };
    let raw = s
        .read_model
        .command_group_counts(group_id)
        .await
        .map_err(store_error)?;
    let counts = raw.summary(group.agent_count);
    let not_projected = group.agent_count.saturating_sub(raw.projected()).max(0);
    let members = s
        .read_model
        .command_group_members(&CommandGroupMembersQuery {
            group_id: group_id.to_owned(),
            statuses,
            limit: Some(MAX_GROUP_AGENTS),
            after: None,
        })
        .await
        .map_err(store_error)?;
    let now = fleet_schemas::time::now_micros();
    let events: Vec<_> = members
        .iter()
        .filter(|c| decision.check(c, &actor).is_ok())
        .map(|c| decision.event(c, &actor, reason.as_deref(), now))
        .collect();
    let already_dispatched = counts.dispatched.saturating_add(counts.running);
    let finished = [
        counts.succeeded,
        counts.failed,
        counts.refused,
        counts.timed_out,
        counts.rejected,
        counts.cancelled,
    ]
    .iter()
    .fold(0i64, |a, b| a.saturating_add(*b));
    if events.is_empty() {
        let (code, what) = match decision {
            Decision::Approve | Decision::Reject => ("not_awaiting_approval", "awaits approval"),
            Decision::Cancel => ("nothing_to_cancel", "is still undispatched"),
        };
        return Err(conflict(
            code,
            format!(
                "no member of command group {group_id} {what} ({already_dispatched} dispatched \
                 or running, {finished} finished, {not_projected} not projected yet)"
            ),
        ));
    }
    write_command_events(s, &events, &format!("command group {}", decision.verb())).await?;
    let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
    tracing::info!(%group_id, %actor, decision = decision.verb(), commands = n, already_dispatched, "Command group decided.");
    s.audit(
        p,
        Some(&group.tenant_id),
        &format!("command_group.{}", decision.verb()),
        group_id,
        Some(serde_json::json!({
            "commands": n,
            "already_dispatched": already_dispatched,
            "reason": reason,
        })),
    )
    .await;
    Ok(CommandGroupDecided {
        group_id: group_id.to_owned(),
        status: decision.status().into(),
        by: actor,
        commands: n,
        already_dispatched,
        finished,
        not_projected,
    })
}

async fn group_answer(
    s: AppState,
    group_id: String,
    p: Principal,
    body: axum::body::Bytes,
    decision: Decision,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let reason = crate::input::optional_reason(&body)?;
        decide_group(&s, &p, &group_id, decision, reason).await
    }
    .await;
    reply(StatusCode::OK, r)
}

#[utoipa::path(
    post,
    path = "/api/v1/command-groups/{group_id}/approve",
    tag = "commands",
    summary = "Approve a command group: every member awaiting approval",
    params(("group_id" = String, Path, description = "Command group id")),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%group_id))]
pub(crate) async fn approve_group(
    State(s): State<AppState>,
    Path(group_id): Path<String>,
    p: Principal,
) -> Response {
    group_answer(s, group_id, p, axum::body::Bytes::new(), Decision::Approve).await
}

#[utoipa::path(
    post,
    path = "/api/v1/command-groups/{group_id}/reject",
    tag = "commands",
    summary = "Reject a command group: no member awaiting approval is ever delivered",
    params(("group_id" = String, Path, description = "Command group id")),
    request_body(content = Option<crate::input::ReasonBody>, description = "Optional: nothing, or a reason"),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%group_id))]
pub(crate) async fn reject_group(
    State(s): State<AppState>,
    Path(group_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    group_answer(s, group_id, p, body, Decision::Reject).await
}

#[utoipa::path(
    post,
    path = "/api/v1/command-groups/{group_id}/cancel",
    tag = "commands",
    summary = "Cancel a command group: members not dispatched yet are never delivered; dispatched ones finish",
    params(("group_id" = String, Path, description = "Command group id")),
    request_body(content = Option<crate::input::ReasonBody>, description = "Optional: nothing, or a reason"),
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
#[tracing::instrument(skip_all, fields(%group_id))]
pub(crate) async fn cancel_group(
    State(s): State<AppState>,
    Path(group_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    group_answer(s, group_id, p, body, Decision::Cancel).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(e: ApiError) -> Option<String> {
        use axum::response::IntoResponse as _;
        use http_body_util::BodyExt as _;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let bytes = rt
            .block_on(e.into_response().into_body().collect())
            .expect("body")
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).expect("json");
        v["error"]["field"].as_str().map(str::to_owned)
    }

    #[test]
    fn the_documented_request_is_an_object_per_command_type_with_a_target() {
        // A schema that failed to build used to fall back to an empty one (anything valid).
        let schema = serde_json::to_value(<CommandGroupRequest as utoipa::PartialSchema>::schema())
            .expect("schema");
        let variants = schema["oneOf"].as_array().expect("oneOf");
        assert_eq!(variants.len(), crate::routes::commands::COMMAND_TYPES.len());
        for v in variants {
            assert_eq!(v["type"], "object", "{v}");
            assert!(v["required"]
                .as_array()
                .expect("required")
                .contains(&json!("target")));
            assert_eq!(v["properties"]["target"]["maxProperties"], 1, "{v}");
        }
    }

    #[test]
    fn a_target_names_exactly_one_kind_within_bounds() {
        assert_eq!(
            parse_target(&json!({"tag": "web"})).ok(),
            Some(CommandTarget::Tag("web".into()))
        );
        assert_eq!(
            parse_target(&json!({"agents": ["a", "b", "a"]})).ok(),
            Some(CommandTarget::Agents(vec!["a".into(), "b".into()])),
            "repeats dropped"
        );
        let bad = |v: Value| parse_target(&v).err().and_then(field);
        assert_eq!(bad(json!({})).as_deref(), Some("target"));
        assert_eq!(
            bad(json!({"tag": "web", "location": "l"})).as_deref(),
            Some("target")
        );
        assert_eq!(
            bad(json!({"tag": "has space"})).as_deref(),
            Some("target.tag")
        );
        assert_eq!(bad(json!({"tag": null})).as_deref(), Some("target.tag"));
        assert_eq!(bad(json!({"agents": []})).as_deref(), Some("target.agents"));
        let many: Vec<String> = (0..=MAX_TARGET_AGENTS).map(|i| format!("a{i}")).collect();
        assert_eq!(
            bad(json!({"agents": many})).as_deref(),
            Some("target.agents")
        );
        assert_eq!(
            bad(json!({"agents": ["ok", "a\u{202e}b"]})).as_deref(),
            Some("target.agents[1]")
        );
        assert_eq!(bad(json!({"host": "x"})).as_deref(), Some("target.host"));
    }

    #[test]
    fn a_resolved_target_is_bounded_and_complete() {
        let agents = |n: usize| (0..n).map(|i| format!("a{i}")).collect::<Vec<_>>();
        let tag = CommandTarget::Tag("web".into());
        assert!(check_resolved(&tag, &agents(2)).is_ok());
        let e = check_resolved(&tag, &[]).expect_err("none");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let e = check_resolved(&tag, &agents(MAX_GROUP_AGENTS as usize + 1)).expect_err("many");
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let listed = CommandTarget::Agents(vec!["a0".into(), "zz".into()]);
        let e = check_resolved(&listed, &agents(1)).expect_err("zz is unknown");
        assert_eq!(field(e).as_deref(), Some("target.agents"));
    }

    #[test]
    fn member_ids_are_stable_per_group_and_agent() {
        assert_eq!(member_id("g1", "a1"), member_id("g1", "a1"));
        assert_ne!(member_id("g1", "a1"), member_id("g1", "a2"));
        assert_ne!(member_id("g1", "a1"), member_id("g2", "a1"));
    }
}
