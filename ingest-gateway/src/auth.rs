//! Agent authentication and per-agent rate limits.
//!
//! An agent sends `Authorization: Bearer <credential>`; the gateway looks the agent's
//! credential record up in the registry (cached for `auth-cache-secs`), compares the
//! SHA-256 of what was sent with the stored hash in constant time, and refuses a
//! deactivated agent. With `auth = "off"` a request without the header is accepted and
//! attributed to `default-tenant` (single-machine use); a request with the header is
//! still checked.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use fleet_ops::ApiError;
use fleet_stores::registry::{verify_secret, AgentCredential, Registry};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Whether agents must present a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every agent request needs a valid credential (enrolled agents only).
    #[default]
    Required,
    /// Requests without a credential are accepted as `default-tenant` (single machine).
    Off,
}

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// Tenant the data is attributed to.
    pub tenant_id: String,
    /// Whether a credential was verified.
    pub authenticated: bool,
}

/// Credential checks with a small cache in front of the registry.
#[derive(Debug)]
pub struct Authenticator {
    mode: AuthMode,
    default_tenant: String,
    registry: Option<Arc<dyn Registry>>,
    ttl: Duration,
    cache: Mutex<HashMap<String, (AgentCredential, Instant)>>,
}

impl Authenticator {
    /// A checker; `registry` may be absent only with `AuthMode::Off`.
    pub fn new(
        mode: AuthMode,
        default_tenant: &str,
        registry: Option<Arc<dyn Registry>>,
        ttl: Duration,
    ) -> Self {
        Authenticator {
            mode,
            default_tenant: default_tenant.to_owned(),
            registry,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets a cached credential (after a deactivation event).
    pub fn invalidate(&self, agent_id: &str) {
        self.cache.lock().remove(agent_id);
    }

    /// Checks the caller of an agent endpoint.
    pub async fn authenticate(
        &self,
        agent_id: &str,
        headers: &HeaderMap,
    ) -> Result<AgentIdentity, ApiError> {
        let bearer = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        unauthorized("Authorization must be `Bearer <agent credential>`")
                    })?,
            ),
        };
        let Some(secret) = bearer else {
            return match self.mode {
                AuthMode::Off => Ok(AgentIdentity { tenant_id: self.default_tenant.clone(), authenticated: false }),
                AuthMode::Required => Err(unauthorized(
                    "missing agent credential: enroll with `fleetstream agent enroll --token ...` and send Authorization: Bearer <credential>",
                )),
            };
        };
        let cred = self.credential(agent_id).await?;
        let Some(cred) = cred else {
            return Err(unauthorized("unknown agent or wrong credential"));
        };
        if !verify_secret(secret, &cred.credential_hash) {
            return Err(unauthorized("unknown agent or wrong credential"));
        }
        if !cred.active {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "agent_deactivated",
                "this agent was deactivated; enroll it again",
            ));
        }
        Ok(AgentIdentity {
            tenant_id: cred.tenant_id,
            authenticated: true,
        })
    }

    async fn credential(&self, agent_id: &str) -> Result<Option<AgentCredential>, ApiError> {
        if let Some((c, at)) = self.cache.lock().get(agent_id) {
            if at.elapsed() < self.ttl {
                return Ok(Some(c.clone()));
            }
        }
        let Some(registry) = &self.registry else {
            return Err(ApiError::unavailable(
                "agent credentials cannot be checked: no registry configured",
                30,
            ));
        };
        let found = registry
            .agent_credential(agent_id)
            .await
            .map_err(|e| match e {
                fleet_stores::StoreError::Unavailable(m) => {
                    ApiError::unavailable(format!("registry unavailable: {m}"), 5)
                }
                other => ApiError::internal(other),
            })?;
        if let Some(c) = &found {
            let mut cache = self.cache.lock();
            if cache.len() > 100_000 {
                cache.retain(|_, (_, at)| at.elapsed() < self.ttl);
            }
            cache.insert(agent_id.to_owned(), (c.clone(), Instant::now()));
        }
        Ok(found)
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

/// Per-agent request rate limit (token bucket).
#[derive(Debug)]
pub struct AgentRateLimit {
    limiter: Option<DefaultKeyedRateLimiter<String>>,
}

impl AgentRateLimit {
    /// `per_second` requests per second per agent with bursts of `burst`; 0 disables.
    pub fn new(per_second: u32, burst: u32) -> AgentRateLimit {
        let limiter = NonZeroU32::new(per_second).map(|rate| {
            let burst = NonZeroU32::new(burst.max(per_second)).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        AgentRateLimit { limiter }
    }

    /// Takes one request from the agent's bucket, or answers 429 with Retry-After.
    pub fn check(&self, agent_id: &str) -> Result<(), ApiError> {
        let Some(l) = &self.limiter else {
            return Ok(());
        };
        match l.check_key(&agent_id.to_owned()) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Err(ApiError::too_many_requests(
                    format!("rate limit for agent {agent_id} exceeded; retry after {secs} s"),
                    secs.max(1),
                ))
            }
        }
    }

    /// Drops the state of agents that have been idle (bounded memory).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
        }
    }
}
