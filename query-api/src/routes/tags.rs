//! `PUT /api/v1/agents/{agent_id}/tags` `{"tags": ["web", "eu"]}`: sets an agent's tags
//! (replacing them; `[]` removes them) by writing AgentLifecycle UPDATED with the tags
//! and the actor on `fleet.agents.v1`. The alert evaluator follows them for tag-scoped
//! rules. For operators of the agent's tenant (and admins).
//!
//! A tag is 1 to 64 characters of `[A-Za-z0-9_.:-]`; at most 32 tags (a repeated
//! tag is kept once). A bad one answers 400 naming `tags[i]`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::put;
use axum::Router;
use fleet_event_log::ProduceRecord;
use fleet_schemas::{ids, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_service::ApiError;
use serde::Deserialize;

use crate::auth::{require_writer, Principal};
use crate::error::reply;
use crate::input::object_body;
use crate::routes::agents::agent_of;
use crate::state::AppState;

/// The routes of this module.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/api/v1/agents/{agent_id}/tags", put(put_tags))
}

/// Most tags an agent may carry.
pub const MAX_TAGS: usize = 32;
/// Longest tag, in characters.
pub const MAX_TAG_LEN: usize = 64;

/// Body of `PUT /api/v1/agents/{agent_id}/tags`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TagsBody {
    /// The agent's tags from now on.
    #[schema(max_items = 32, inline)]
    pub tags: Vec<Tag>,
}

/// A tag: 1 to 64 characters of `A-Z a-z 0-9 _ . : -`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(pattern = "^[A-Za-z0-9_.:-]{1,64}$")]
pub struct Tag(pub String);

/// Checks one tag ([`Tag`]'s pattern); 400 naming `field` otherwise.
pub fn check_tag(field: &str, t: &str) -> Result<(), ApiError> {
    let ok = (1..=MAX_TAG_LEN).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid_field(
            field,
            format!("a tag is 1 to {MAX_TAG_LEN} characters of A-Z a-z 0-9 _ . : -"),
        ))
    }
}

/// Checks the tags (see the module docs); returns them without repeats, in order.
pub fn validate_tags(tags: &[String]) -> Result<Vec<String>, ApiError> {
    if tags.len() > MAX_TAGS {
        return Err(ApiError::invalid_field(
            format!("tags[{MAX_TAGS}]"),
            format!("at most {MAX_TAGS} tags"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        check_tag(&format!("tags[{i}]"), t)?;
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    Ok(out)
}

#[utoipa::path(
    put,
    path = "/api/v1/agents/{agent_id}/tags",
    tag = "admin",
    summary = "Set an agent's tags",
    params(("agent_id" = String, Path, description = "Agent id")),
    request_body = TagsBody,
    responses((status = 200, description = "Done", body = serde_json::Value), crate::openapi::ApiErrors),
    security(("bearer" = []))
)]
pub(crate) async fn put_tags(
    State(s): State<AppState>,
    Path(agent_id): Path<String>,
    p: Principal,
    body: axum::body::Bytes,
) -> Response {
    let r = async {
        require_writer(&p)?;
        let actor = p.actor();
        let body = object_body::<TagsBody>(&body)?;
        let tags: Vec<String> = body.tags.into_iter().map(|t| t.0).collect();
        let tags = validate_tags(&tags)?;
        let cred = agent_of(&s, &p, &agent_id).await?;
        let now = fleet_schemas::time::now_micros();
        let ev = AgentLifecycle {
            event_id: ids::v5(&[&agent_id, "UPDATED", &now.to_string()]).to_string(),
            tenant_id: cred.tenant_id.clone(),
            agent_id: agent_id.clone(),
            kind: AgentLifecycleKind::Updated,
            location_id: cred.location_id.clone(),
            device_name: None,
            facts: None,
            actor: Some(actor.clone()),
            reason: None,
            tags: Some(tags.clone()),
            occurred_at: now,
            ingested_at: now,
        };
        let value = s.wire.encode(&ev).map_err(ApiError::internal)?;
        let rec = ProduceRecord {
            key: Some(agent_id.as_bytes().to_vec()),
            value,
            timestamp_ms: Some(now / 1000),
        };
        s.log
            .produce(AgentLifecycle::TOPIC, vec![rec])
            .await
            .map_err(|e| {
                ApiError::unavailable(format!("the tags could not be written: {e}; retry"), 5)
            })?;
        tracing::info!(%agent_id, %actor, ?tags, "Agent tags set.");
        s.audit(
            &p,
            Some(&cred.tenant_id),
            "agent.tags",
            &agent_id,
            Some(serde_json::json!({ "tags": tags })),
        )
        .await;
        Ok(serde_json::json!({ "agent_id": agent_id, "tags": tags }))
    }
    .await;
    reply(StatusCode::OK, r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(tags: &[&str]) -> Vec<String> {
        tags.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn tags_are_checked_and_name_their_index() {
        assert_eq!(
            validate_tags(&v(&["web", "eu", "web", "k8s:node-1_a.b"])).expect("valid"),
            v(&["web", "eu", "k8s:node-1_a.b"])
        );
        assert!(validate_tags(&[]).expect("none").is_empty());
        let long = "x".repeat(MAX_TAG_LEN + 1);
        for (bad, i) in [
            (v(&["web", ""]), 1),
            (v(&["has space"]), 0),
            (v(&["ok", "ok2", "é"]), 2),
            (v(&["a", long.as_str()]), 1),
        ] {
            let e = validate_tags(&bad).expect_err("invalid");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            let body = format!("{e:?}");
            assert!(body.contains(&format!("tags[{i}]")), "{body}");
        }
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        assert!(validate_tags(&many).is_err());
        assert!(validate_tags(&many[..MAX_TAGS]).is_ok());
    }
}
