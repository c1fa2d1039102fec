//! `POST /api/v1/agents/register`: redeem a one-time registration token.
//!
//! The token's hash is looked up and marked used, and the new agent's credential hash is
//! stored, in one registry transaction (of two concurrent redemptions exactly one wins).
//! Then AgentRegistered is written to `fleet.agents.v1`; if the log cannot take it now,
//! the gateway keeps retrying in the background (the agent is enrolled either way).

use std::time::Instant;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use fleet_event_log::ProduceRecord;
use fleet_registry::{hash_secret, new_secret, NewAgent, RedeemRefusal};
use fleet_schemas::api::{MachineFacts, RegisterRequest, RegisterResponse, RemoteConfig};
use fleet_schemas::{ids, AgentFacts, AgentLifecycle, AgentLifecycleKind, Record};
use fleet_service::{ApiError, FieldJson};

use crate::{metrics, ClientAddr, GatewayState};

/// Handler of `POST /api/v1/agents/register`.
#[tracing::instrument(name = "register", skip_all, fields(agent_id))]
pub(crate) async fn post_register(
    State(state): State<GatewayState>,
    client: ClientAddr,
    req: Request,
) -> Response {
    let started = Instant::now();
    // Each registration is a registry transaction: limited per client address
    // (`register-per-minute`), before the body is read.
    let body = match state.registrations.check(client.key()) {
        Ok(()) => FieldJson::<RegisterRequest>::from_request(req, &state).await,
        Err(e) => Err(e),
    };
    let result = register(&state, body).await;
    metrics::record_request("register", &result, started.elapsed());
    match result {
        Ok(r) => {
            metrics::registration("registered");
            (StatusCode::CREATED, Json(r)).into_response()
        }
        Err(e) => {
            metrics::registration("refused");
            e.into_response()
        }
    }
}

fn facts_record(f: &MachineFacts) -> Result<AgentFacts, ApiError> {
    let text = |field: &str, v: &str, max: usize| {
        if v.len() > max || v.chars().any(char::is_control) {
            Err(ApiError::invalid_field(
                format!("facts.{field}"),
                format!("at most {max} bytes, no control characters"),
            ))
        } else {
            Ok(v.to_owned())
        }
    };
    let list = |field: &str, v: &[String]| {
        if v.len() > 64 {
            return Err(ApiError::invalid_field(
                format!("facts.{field}"),
                "at most 64 entries",
            ));
        }
        v.iter()
            .enumerate()
            .map(|(i, s)| text(&format!("{field}[{i}]"), s, 64))
            .collect::<Result<Vec<_>, _>>()
    };
    if f.hostname.is_empty() {
        return Err(ApiError::invalid_field(
            "facts.hostname",
            "must not be empty",
        ));
    }
    let long = |field: &str, v: u64| {
        i64::try_from(v).map_err(|_| ApiError::invalid_field(format!("facts.{field}"), "too large"))
    };
    Ok(AgentFacts {
        hostname: text("hostname", &f.hostname, 255)?,
        os_type: text("os_type", &f.os_type, 64)?,
        os_version: text("os_version", &f.os_version, 255)?,
        kernel_version: text("kernel_version", &f.kernel_version, 255)?,
        architecture: text("architecture", &f.architecture, 64)?,
        ip_addresses: list("ip_addresses", &f.ip_addresses)?,
        mac_addresses: list("mac_addresses", &f.mac_addresses)?,
        cpu_model: text("cpu_model", &f.cpu_model, 255)?,
        cpu_cores: i32::try_from(f.cpu_cores)
            .map_err(|_| ApiError::invalid_field("facts.cpu_cores", "too large"))?,
        memory_total_bytes: long("memory_total_bytes", f.memory_total_bytes)?,
        disk_total_bytes: long("disk_total_bytes", f.disk_total_bytes)?,
        agent_version: text("agent_version", &f.agent_version, 64)?,
    })
}

/// Checks a registration body before any registry work: the token's length and the
/// facts ([`facts_record`], the facts as written to the log).
pub(crate) fn check_request(req: &RegisterRequest) -> Result<AgentFacts, ApiError> {
    if req.token.is_empty() || req.token.len() > 256 {
        return Err(ApiError::invalid_field(
            "token",
            "must be 1 to 256 characters",
        ));
    }
    facts_record(&req.facts)
}

async fn register(
    state: &GatewayState,
    body: Result<FieldJson<RegisterRequest>, ApiError>,
) -> Result<RegisterResponse, ApiError> {
    let FieldJson(req) = body?;
    let Some(registry) = &state.registry else {
        return Err(ApiError::unavailable(
            "enrollment is not configured on this gateway (set `registry` in its configuration)",
            60,
        ));
    };
    let facts = check_request(&req)?;
    let agent_id = uuid::Uuid::new_v4().to_string();
    tracing::Span::current().record("agent_id", agent_id.as_str());
    let credential = new_secret("fsa_");
    let now = fleet_schemas::time::now_micros();
    let facts_json = serde_json::to_string(&req.facts).map_err(ApiError::internal)?;
    let new_agent = NewAgent {
        agent_id: agent_id.clone(),
        credential_hash: hash_secret(&credential),
        facts_json,
        now,
    };
    let redeemed = registry
        .redeem_token(hash_secret(&req.token), &new_agent)
        .await
        .map_err(crate::auth::registry_error)?;
    let redeemed = redeemed.map_err(|refusal| match refusal {
        RedeemRefusal::Unknown => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            "unknown registration token",
        )
        .with_field("token"),
        RedeemRefusal::Expired => ApiError::new(
            StatusCode::GONE,
            "token_expired",
            "registration token expired; ask for a new one",
        )
        .with_field("token"),
        RedeemRefusal::Used => ApiError::new(
            StatusCode::CONFLICT,
            "token_used",
            "registration token already used; tokens are single-use",
        )
        .with_field("token"),
    })?;
    let event = AgentLifecycle {
        event_id: ids::v5(&[&agent_id, "REGISTERED", &now.to_string()]).to_string(),
        tenant_id: redeemed.tenant_id.clone(),
        agent_id: agent_id.clone(),
        kind: AgentLifecycleKind::Registered,
        location_id: redeemed.location_id.clone(),
        device_name: redeemed.device_name.clone(),
        facts: Some(facts),
        actor: None,
        reason: None,
        tags: None,
        occurred_at: now,
        ingested_at: now,
    };
    publish_in_background(state, event);
    tracing::info!(%agent_id, tenant_id = %redeemed.tenant_id, "Agent registered.");
    let cfg = &state.config;
    Ok(RegisterResponse {
        agent_id,
        credential,
        tenant_id: redeemed.tenant_id,
        location_id: redeemed.location_id,
        device_name: redeemed.device_name,
        config: RemoteConfig {
            heartbeat_interval_secs: cfg.agent_heartbeat_interval.as_secs_f64(),
            metrics_interval_secs: cfg.agent_metrics_interval.as_secs_f64(),
            websocket_url: websocket_url(&cfg.public_url),
        },
    })
}

/// The WebSocket URL handed out at enrollment: derived from `public-url`, or empty when
/// it is unset. The listen address is never handed out: it may be a wildcard or
/// loopback address, which on the agent's machine names the agent's machine (it would
/// send its credential there); with an empty URL each agent derives the socket's URL
/// from the server URL it was given.
fn websocket_url(public_url: &str) -> String {
    let base = public_url.trim();
    if base.is_empty() {
        return String::new();
    }
    let ws_base = base
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    format!("{}/api/v1/agents/ws", ws_base.trim_end_matches('/'))
}

/// Writes the lifecycle event, retrying until the log takes it.
fn publish_in_background(state: &GatewayState, event: AgentLifecycle) {
    let log = state.log.clone();
    let value = match state.wire.encode(&event) {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "AgentRegistered could not be encoded.");
            return;
        }
    };
    let record = ProduceRecord {
        key: Some(event.key().as_bytes().to_vec()),
        value,
        timestamp_ms: Some(event.occurred_at.div_euclid(1000)),
    };
    tokio::spawn(async move {
        fleet_consumer::log::produce_until_written(
            log.as_ref(),
            AgentLifecycle::TOPIC,
            vec![record],
        )
        .await;
    });
}

#[cfg(test)]
mod tests {
    use super::websocket_url;

    #[test]
    fn the_listen_address_is_never_handed_out() {
        assert_eq!(websocket_url(""), "");
        assert_eq!(
            websocket_url("https://gw.example.com/fleet/"),
            "wss://gw.example.com/fleet/api/v1/agents/ws"
        );
        assert_eq!(
            websocket_url("http://10.0.0.5:8080"),
            "ws://10.0.0.5:8080/api/v1/agents/ws"
        );
    }
}
